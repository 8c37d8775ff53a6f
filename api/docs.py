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
['/docs', '/docs/oauth2-redirect', '/redoc', '/static/docs']
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

#: Where the assets are served.
STATIC_URL = "/static/docs"
#: The installed assets: swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png.
ASSETS = files("fastapi_offline") / "static"
DOCS_URL, REDOC_URL = "/docs", "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"


def _root(request: Request) -> str:
    """The path the app is mounted under (behind a proxy), '' at the root."""
    return request.scope.get("root_path", "").rstrip("/")


def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI on the app's OpenAPI document, from local assets."""
    root, app = _root(request), request.app
    return get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - Swagger UI",
        swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
        oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
        # no badge fetched from the public validator service
        swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})},
    )


def swagger_ui_oauth2_redirect() -> HTMLResponse:
    """The page Swagger UI's OAuth2 flow returns to (for when the API has authentication)."""
    return get_swagger_ui_oauth2_redirect_html()


def redoc(request: Request) -> HTMLResponse:
    """ReDoc on the app's OpenAPI document, from local assets and without Google's fonts."""
    root, app = _root(request), request.app
    return get_redoc_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - ReDoc",
        redoc_js_url=f"{root}{STATIC_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{STATIC_URL}/favicon.png",
        with_google_fonts=False,
    )


def install(app: FastAPI) -> None:
    """Serve the assets under :data:`STATIC_URL` and the pages at /docs and /redoc."""
    app.mount(STATIC_URL, StaticFiles(directory=str(ASSETS)), name="docs-assets")
    for path, page in (
        (DOCS_URL, swagger_ui),
        (OAUTH2_REDIRECT_URL, swagger_ui_oauth2_redirect),
        (REDOC_URL, redoc),
    ):
        app.add_api_route(path, page, response_class=HTMLResponse, include_in_schema=False)
