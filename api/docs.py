"""The API's documentation pages, ``/docs`` (Swagger UI) and ``/redoc``, with no network.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (and ReDoc its fonts
from Google), so on a machine without internet they stay blank. Here every
asset comes from an installed package, fastapi-offline, which ships Swagger
UI's bundle and stylesheet, ReDoc's standalone bundle and FastAPI's favicon;
they are served under ``/static/docs``. Create the app with ``docs_url=None,
redoc_url=None`` and call :func:`install`.

>>> from fastapi import FastAPI
>>> app = FastAPI(docs_url=None, redoc_url=None)
>>> install(app)
>>> sorted(r.path for r in app.routes if "doc" in r.path)
['/docs', '/redoc', '/static/docs']

Both pages carry a Content-Security-Policy that lets them load only this origin's assets
(ReDoc's bundle draws a logo from its vendor's site: refused, as any other host), run
only their own inline start-up script (by its hash), and never be framed by another
site; as the console's pages do (:mod:`api.routes.console`).
"""

from __future__ import annotations

import base64
import hashlib
from html.parser import HTMLParser
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

#: Where the assets are served.
STATIC_URL = "/static/docs"
#: The installed assets: swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png.
ASSETS = files("fastapi_offline") / "static"
DOCS_URL, REDOC_URL = "/docs", "/redoc"
#: What the pages may load and do; ``{scripts}``: the hashes of their inline scripts.
POLICY = (
    "default-src 'none'; script-src 'self' {scripts}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src blob:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class _InlineScripts(HTMLParser):
    """The text of each ``<script>`` without ``src`` in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script" and not any(name == "src" for name, _ in attrs):
            self._inside = True
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._inside = False

    def handle_data(self, data: str) -> None:
        if self._inside:
            self.scripts[-1] += data


def _guarded(page: HTMLResponse) -> HTMLResponse:
    """``page`` with the headers of :data:`POLICY`, its own inline scripts allowed.

    >>> guarded = _guarded(HTMLResponse("<script>go()</script><script src='/a.js'></script>"))
    >>> guarded.headers["content-security-policy"].split(";")[1]
    " script-src 'self' 'sha256-5KYv+PUboo5h+0+YAtGRPbwv5d/QxzHslP4YGnUaxRw='"
    """
    parser = _InlineScripts()
    parser.feed(page.body.decode())
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in parser.scripts
    )
    page.headers["Content-Security-Policy"] = POLICY.format(scripts=hashes).replace("  ", " ")
    page.headers["X-Content-Type-Options"] = "nosniff"
    page.headers["Referrer-Policy"] = "no-referrer"
    return page


def _root(request: Request) -> str:
    """The path the app is mounted under (behind a proxy), '' at the root."""
    return request.scope.get("root_path", "").rstrip("/")


def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI on the app's OpenAPI document, from local assets."""
    root, app = _root(request), request.app
    return _guarded(get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - Swagger UI",
        swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
        oauth2_redirect_url=None,  # (keys, not OAuth2: no redirect page)
        # no badge fetched from the public validator service
        swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})},
    ))  # fmt: skip


def redoc(request: Request) -> HTMLResponse:
    """ReDoc on the app's OpenAPI document, from local assets and without Google's fonts."""
    root, app = _root(request), request.app
    return _guarded(get_redoc_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - ReDoc",
        redoc_js_url=f"{root}{STATIC_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{STATIC_URL}/favicon.png",
        with_google_fonts=False,
    ))  # fmt: skip


def install(app: FastAPI) -> None:
    """Serve the assets under :data:`STATIC_URL` and the pages at /docs and /redoc."""
    app.mount(STATIC_URL, StaticFiles(directory=str(ASSETS)), name="docs-assets")
    for path, page in ((DOCS_URL, swagger_ui), (REDOC_URL, redoc)):
        app.add_api_route(path, page, response_class=HTMLResponse, include_in_schema=False)
