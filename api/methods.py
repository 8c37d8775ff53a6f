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

from collections import OrderedDict
from collections.abc import Sequence

from fastapi.routing import iter_route_contexts
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Router
from starlette.types import ASGIApp, Receive, Scope, Send


def flat_routes(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    """Every route of ``routes``, with those of the included routers in their place
    (``app.routes`` holds an included router as one entry without a path; our routers
    have no prefix, so their routes keep their own full paths).

    >>> from fastapi import APIRouter, FastAPI
    >>> app, router = FastAPI(), APIRouter()
    >>> _ = router.get("/items")(lambda: [])
    >>> app.include_router(router)
    >>> [r.path for r in flat_routes(app.routes) if r.path.startswith("/items")]
    ['/items']
    """
    return [context.original_route for context in iter_route_contexts(routes)]


def allowed_methods(router: Router, path: str) -> list[str]:
    """The methods the routes of ``router`` take on ``path`` (with OPTIONS); [] if none.

    As OpenAPI matches paths, the most concrete template wins: ``/rules/restore`` is
    the path of that name, not ``/rules/{name}`` with the name ``restore``.
    """
    return _methods_on(flat_routes(router.routes), path)


def _methods_on(routes: Sequence[BaseRoute], path: str) -> list[str]:
    """:func:`allowed_methods` over routes already flattened (:func:`flat_routes`)."""
    matching: dict[int, set[str]] = {}
    probe = {"type": "http", "path": path, "root_path": "", "method": "OPTIONS"}
    for route in routes:
        route_methods = getattr(route, "methods", None)
        if route_methods and route.matches(probe)[0] != Match.NONE:
            parameters = getattr(route, "path_format", "").count("{")
            matching.setdefault(parameters, set()).update(route_methods)
    if not matching:
        return []
    return sorted(matching[min(matching)] | {"OPTIONS"})


#: How many paths' answers :class:`AllowedMethods` keeps (a path names an agent, so
#: there are as many as agents; the few the API answers most stay).
PATHS_KEPT = 4096


class AllowedMethods:
    """ASGI middleware: ``OPTIONS`` → 204 with ``Allow``; a method not taken → 405 with it.

    Every request asks which methods its path takes, so the answer is kept per path (the
    last :data:`PATHS_KEPT` paths) and the routes are flattened once; both are made again
    if a route is added.
    """

    def __init__(self, app: ASGIApp, router: Router) -> None:
        self.app = app
        self.router = router
        self._routes_seen = -1
        self._flat: list[BaseRoute] = []
        self._by_path: OrderedDict[str, list[str]] = OrderedDict()

    def methods(self, path: str) -> list[str]:
        """:func:`allowed_methods` of ``path``, from what is kept when it can be."""
        if len(self.router.routes) != self._routes_seen:
            self._routes_seen = len(self.router.routes)
            self._flat = flat_routes(self.router.routes)
            self._by_path.clear()
        methods = self._by_path.get(path)
        if methods is None:
            methods = self._by_path[path] = _methods_on(self._flat, path)
            if len(self._by_path) > PATHS_KEPT:
                self._by_path.popitem(last=False)
        else:
            self._by_path.move_to_end(path)
        return methods

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            methods = self.methods(scope["path"])
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
