"""``/docs`` and ``/redoc`` work offline: every asset a page references is served by the app.

The pages are fetched from the app in this process (no lifespan is needed for
them) and from a running ``python -m api`` over HTTP; every ``src``/``href`` and
every URL quoted in their inline scripts must point at the app itself, and each
must answer 200 with a body of the right type.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from agentwatch.settings import Settings
from api.app import create_app
from infra.broker import free_port
from tests.conftest import wait_until

#: Content type each kind of asset must be served with.
TYPES = {
    ".js": "javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".json": "application/json",
    "redirect": "text/html",
}


class References(HTMLParser):
    """Collects the URLs a page loads: src, href and *url attributes, URLs quoted in scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_script = tag == "script"
        self.urls += [
            value
            for name, value in attrs
            if value and (name in ("src", "href") or name.endswith("url"))  # <redoc spec-url>
        ]

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:  # url: '/openapi.json', oauth2RedirectUrl: ..., or any "http..."
            self.urls += re.findall(r"""["'`]((?:https?:)?//[^"'`\s]+|/[^"'`\s]*)["'`]""", data)


@pytest.fixture(scope="module")
def app_client() -> TestClient:
    return TestClient(create_app(Settings(), run_loader=False), base_url="http://testserver")


@pytest.fixture(scope="module")
def api_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A real ``python -m api`` (no broker: the docs need none), and a client on it."""
    tmp, port = tmp_path_factory.mktemp("docs-api"), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTWATCH_")}
    env |= {
        "AGENTWATCH_API_PORT": str(port),
        "AGENTWATCH_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "AGENTWATCH_CLICKHOUSE_DSN": f"chdb://{tmp / 'chdb'}",
        "AGENTWATCH_VAR_DIR": str(tmp / "var"),
    }
    log_path = tmp / "api.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "api"], env=env, cwd=tmp, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:

        def answers() -> bool:
            assert process.poll() is None, Path(log_path).read_text()
            try:
                return client.get("/docs").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, 60, "python -m api to serve /docs")
        yield client
    finally:
        client.close()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture(params=["in-process", pytest.param("python -m api", marks=pytest.mark.e2e)])
def docs_client(request: pytest.FixtureRequest) -> TestClient | httpx.Client:
    return request.getfixturevalue("app_client" if request.param == "in-process" else "api_process")


def referenced(client: TestClient | httpx.Client, page: str) -> list[str]:
    response = client.get(page)
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    parser = References()
    parser.feed(response.text)
    return parser.urls


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png", "openapi.json"}),
        ("/redoc", {"redoc.standalone.js", "favicon.png", "openapi.json"}),
    ],
)
def test_a_docs_page_loads_everything_from_the_app_itself(
    docs_client: TestClient | httpx.Client, page: str, expected: set[str]
) -> None:
    urls = referenced(docs_client, page)
    assert expected <= {urlsplit(url).path.rsplit("/", 1)[-1] for url in urls}, urls
    base = str(docs_client.base_url).rstrip("/")
    for url in urls:
        absolute = urljoin(base + page, url)
        assert urlsplit(absolute).netloc == urlsplit(base).netloc, f"{page} loads {url}"
        response = docs_client.get(absolute)
        assert response.status_code == 200, url
        assert response.content, f"{url} is empty"
        path = urlsplit(absolute).path
        kind = "redirect" if path.endswith("oauth2-redirect") else "." + path.rsplit(".", 1)[-1]
        assert TYPES[kind] in response.headers["content-type"], (url, response.headers)


def test_redoc_asks_no_fonts_of_google_and_swagger_ui_no_validator(app_client) -> None:
    redoc, swagger = app_client.get("/redoc").text, app_client.get("/docs").text
    assert "fonts.googleapis" not in redoc and "fonts.gstatic" not in redoc
    assert "validatorUrl" in swagger and '"validatorUrl": null' in swagger
    assert "cdn.jsdelivr" not in redoc + swagger


def test_the_docs_pages_are_not_part_of_the_api_description(app_client) -> None:
    paths = app_client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if "docs" in path or "redoc" in path]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_a_docs_page_runs_only_its_own_scripts_and_is_never_framed(app_client, page) -> None:
    """The docs pages had none of the console's headers: they could be framed by another
    site (Swagger's "Try it out" clickjacked, keyless), and ReDoc fetched its vendor's logo
    from another host (found by a review). Their policy allows this origin's assets and
    their own inline start-up script only (by its hash)."""
    answer = app_client.get(page)
    policy = answer.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
    assert "img-src 'self' data:" in policy  # (not https://cdn.redoc.ly)
    assert answer.headers["x-content-type-options"] == "nosniff"
    script_src = next(d for d in policy.split(";") if d.strip().startswith("script-src"))
    assert "unsafe-inline" not in script_src
    inline = re.findall(r"<script>(.*?)</script>", answer.text, re.S)
    for script in inline:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in script_src
    assert app_client.get("/docs/oauth2-redirect").status_code == 404  # (keys, not OAuth2)
