"""The methods middleware's kept answers (pure logic: no server, no broker)."""

from fastapi import FastAPI

from api import methods
from api.methods import AllowedMethods, allowed_methods


def test_kept_answers_match_a_fresh_look_and_see_routes_added_later() -> None:
    app = FastAPI()
    app.get("/items")(lambda: [])
    middleware = AllowedMethods(app, app.router)
    assert middleware.methods("/items") == ["GET", "OPTIONS"]
    app.post("/items")(lambda: {})  # a route added after the first request
    app.put("/items/{name}")(lambda name: {})
    for path in ("/items", "/items/one", "/nowhere"):
        assert middleware.methods(path) == allowed_methods(app.router, path)
    assert middleware.methods("/items") == ["GET", "OPTIONS", "POST"]


def test_the_paths_kept_are_bounded(monkeypatch) -> None:
    monkeypatch.setattr(methods, "PATHS_KEPT", 3)
    app = FastAPI()
    app.get("/agents/{agent_id}")(lambda agent_id: {})
    middleware = AllowedMethods(app, app.router)
    for i in range(10):
        assert middleware.methods(f"/agents/a{i}") == ["GET", "OPTIONS"]
    assert list(middleware._by_path) == ["/agents/a7", "/agents/a8", "/agents/a9"]


def test_no_route_of_the_api_hides_another() -> None:
    """Each route of the API answers its own paths: for every route and method, the first
    route that takes a path of its template is that route. So the routers' order (assign
    first, for its latency: ``api/app.py``) decides nothing but how soon a route is found."""
    import re

    from starlette.routing import Match

    from agentwatch.settings import Settings
    from api.app import create_app
    from api.methods import flat_routes

    routes = [r for r in flat_routes(create_app(Settings()).router.routes) if hasattr(r, "methods")]
    assert len(routes) > 50
    for route in routes:
        path = re.sub(r"\{[^}]+\}", "p", route.path)
        for method in route.methods:
            scope = {"type": "http", "path": path, "root_path": "", "method": method}
            first = next(r for r in routes if r.matches(scope)[0] == Match.FULL)
            assert (first.path, method) == (route.path, method), (method, path)
