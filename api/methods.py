"""Which methods a path takes: ``OPTIONS`` answers them, a wrong method gets all of them.

Starlette matches routes one by one, and each of our routes has one method, so
on its own it answers ``OPTIONS /api/v1/rules`` with a 405 whose ``Allow``
names only the first route it tried (``GET``), while the path also takes
``POST``. This middleware looks at every route: ``OPTIONS`` on a known path is a
204 with ``Allow`` listing all of its methods (the API has no CORS; a browser's
preflight gets the same answer), and a method the path does not take is a 405
with that same list and a body that says so. Unknown paths go on to the 404.

>>> from fastapi import FastAPI
>>> app = FastAPI()
>>> _ = app.get("/items")(lambda: [])
>>> _ = app.post("/items")(lambda: {})
>>> allowed_methods(app.router, "/items")
['GET', 'OPTIONS', 'POST']
>>> _ = app.put("/items/{name}")(lambda name: {})
>>> allowed_methods(app.router, "/items/first"), allowed_methods(app.router, "/items")[-1]
(['OPTIONS', 'PUT'], 'POST')
>>> allowed_methods(app.router, "/nowhere")
[]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Router
from starlette.types import ASGIApp, Receive, Scope, Send


def every_route(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """The routes of an app, with those of the routers it includes (FastAPI keeps an
    included ``APIRouter`` as one entry of ``app.routes``, its routes inside).

    >>> from fastapi import APIRouter, FastAPI
    >>> router = APIRouter()
    >>> _ = router.get("/inside")(lambda: 1)
    >>> app = FastAPI()
    >>> app.include_router(router)
    >>> [route.path for route in every_route(app.routes) if route.path == "/inside"]
    ['/inside']
    >>> allowed_methods(app.router, "/inside")
    ['GET', 'OPTIONS']
    """
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from every_route(included.routes)
        else:
            yield route


def allowed_methods(router: Router, path: str) -> list[str]:
    """The methods the routes of ``router`` take on ``path`` (with OPTIONS); [] if none.

    As OpenAPI matches paths, the most concrete template wins: ``/rules/restore`` is
    the path of that name, not ``/rules/{name}`` with the name ``restore``.
    """
    matching: dict[int, set[str]] = {}
    probe = {"type": "http", "path": path, "root_path": "", "method": "OPTIONS"}
    for route in every_route(router.routes):
        route_methods = getattr(route, "methods", None)
        if route_methods and route.matches(probe)[0] != Match.NONE:
            parameters = getattr(route, "path_format", "").count("{")
            matching.setdefault(parameters, set()).update(route_methods)
    if not matching:
        return []
    return sorted(matching[min(matching)] | {"OPTIONS"})


class AllowedMethods:
    """ASGI middleware: ``OPTIONS`` → 204 with ``Allow``; a method not taken → 405 with it."""

    def __init__(self, app: ASGIApp, router: Router) -> None:
        self.app = app
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            methods = allowed_methods(self.router, scope["path"])
            method = scope["method"].upper()
            if methods and method == "OPTIONS":
                response = Response(status_code=204, headers={"Allow": ", ".join(methods)})
                await response(scope, receive, send)
                return
            if methods and method not in methods:
                taken = ", ".join(methods)
                detail = f"{method} is not allowed on {scope['path']}; it takes {taken}"
                response = JSONResponse(
                    {"detail": detail}, status_code=405, headers={"Allow": ", ".join(methods)}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
