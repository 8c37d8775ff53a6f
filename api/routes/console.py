"""The built-in console at ``/``: a page for people without Grafana (docs/console.md).

One HTML page, one hand-written script and one stylesheet, shipped in the package
(``api/console/``) and served from here: nothing comes from another host, so it works
with the network off, and its Content-Security-Policy says so to the browser too (a
reference to another host would not load). The page reads the JSON API with the key
the person types in (kept in the tab's sessionStorage), so it sees what that key sees:
its tenant, and the actions its role may do (``GET /api/v1/whoami``).

>>> sorted(ASSETS)
['console.css', 'console.js', 'favicon.svg']
>>> "connect-src 'self'" in SECURITY_HEADERS["Content-Security-Policy"]
True
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

router = APIRouter(include_in_schema=False)

#: Where the console's files are, in the installed package.
CONSOLE_DIR = files("api") / "console"
#: The files the page loads, under ``/console/``, and their media types.
ASSETS = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
#: Only this origin: no script, style, image or request to another host.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@router.get("/", response_class=HTMLResponse)
def console_page() -> HTMLResponse:
    """The console (its API reference stays at /docs)."""
    html = (CONSOLE_DIR / "index.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers=SECURITY_HEADERS)


@router.get("/console/{name}")
def console_asset(name: str) -> Response:
    """One of the console's files (404 for any other name)."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, detail=f"no console file {name!r}")
    body = (CONSOLE_DIR / name).read_bytes()
    return Response(body, media_type=media_type, headers=SECURITY_HEADERS)
