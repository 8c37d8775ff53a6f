"""The console at ``/`` (docs/console.md): served with its files, nothing from another host,
and the two routes it reads besides the others (``/whoami``, ``/agents/{id}/series``).

"Nothing from another host" is checked by parsing, not by looking for a substring: the
HTML's URL-bearing attributes and inline code, every string, template and regular
expression literal of the script (comments are not code), the stylesheet's ``url()`` and
``@import``, and the SVG's attributes (its namespace declaration names a namespace, which
is never fetched: the XML parser takes it as one, not as an attribute). The checker is
itself tested on pages that do reach out, in each of those ways.
(The real browser, with every request elsewhere aborted: tests/test_console_browser.py.)
"""

from __future__ import annotations

import re
import tomllib
import xml.etree.ElementTree as ElementTree
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient

from agentwatch.identity import Role
from agentwatch.settings import Settings
from api import queries
from api.app import create_app
from api.routes.console import ASSETS, CONSOLE_DIR
from tests.conftest import LOOPBACK_CLIENT
from tests.test_api import api, ch, fleet, offline_settings  # noqa: F401

ORIGIN = "http://127.0.0.1:8000/"

# --- the checker -------------------------------------------------------------------------

#: HTML attributes whose value is fetched or followed as a URL.
URL_ATTRIBUTES = frozenset({
    "href", "src", "srcset", "action", "formaction", "poster", "data", "cite", "background",
    "manifest", "icon", "codebase", "longdesc", "ping", "xlink:href",
})  # fmt: skip


def elsewhere(reference: str) -> bool:
    """True if ``reference``, resolved against this API's origin, names another host (or a
    scheme that leaves the page: javascript:, data: are not fetched from a host but are
    refused too, so that every reference stays a plain relative path).

    >>> [elsewhere(r) for r in ("console/console.js", "#/agents/a1", "docs", "/console/x")]
    [False, False, False, False]
    >>> [elsewhere(r) for r in ("//cdn.example/x.js", "https://cdn.example/x", " HTTP://a/b",
    ...     "https:cdn.example", "\\\\\\\\cdn.example/x", "javascript:alert(1)")]
    [True, True, True, True, True, True]
    """
    reference = reference.strip()
    resolved = urlsplit(urljoin(ORIGIN, reference))
    origin = urlsplit(ORIGIN)
    if resolved.scheme != origin.scheme or resolved.netloc != origin.netloc:
        return True
    return urlsplit(reference.replace("\\", "/")).scheme != "" or reference.startswith(("//", "\\"))


class _Page(HTMLParser):
    """The references and inline code of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.references: list[str] = []
        self.inline: list[str] = []  # inline script or style (the CSP refuses them anyway)
        self.problems: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name, value in attrs:
            if value is None:
                continue
            if name in URL_ATTRIBUTES:
                parts = value.split(",") if name == "srcset" else [value]
                self.references += [p.strip().split(" ")[0] for p in parts]
            elif name == "style" or name.startswith("on"):
                self.inline.append(value)
        if tag == "base":
            self.problems.append("a <base> element")
        if tag == "meta" and (values.get("http-equiv") or "").lower() == "refresh":
            self.problems.append("a <meta http-equiv=refresh>")
        if tag in ("script", "style"):
            self._in = tag

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in and data.strip():
            self.inline.append(data)


def js_literals(source: str) -> list[str]:
    """The string, template and regular-expression literals of a script, comments left out
    (a small lexer: enough for a hand-written script, and it fails loudly when lost).

    >>> js_literals('a = "x//y"; // "not me"\\n/* "nor me" */ f(`t${1}`, /re\\\\/x/g, 4 / 2);')
    ['x//y', 't${1}', 're\\\\/x']
    """
    literals: list[str] = []
    i, n = 0, len(source)
    last = ""  # the last significant character of code, to tell a regex from a division
    while i < n:
        c = source[i]
        if source.startswith("//", i):
            i = source.find("\n", i)
            i = n if i < 0 else i
        elif source.startswith("/*", i):
            end = source.find("*/", i + 2)
            assert end >= 0, "unterminated comment"
            i = end + 2
        elif c in "'\"`" or (c == "/" and (last == "" or last in "(,=:[!&|?{};+-*%<>~^")):
            j, in_class = i + 1, False
            while j < n:
                if source[j] == "\\":
                    j += 2
                    continue
                if c == "/" and source[j] == "[":
                    in_class = True
                elif c == "/" and source[j] == "]":
                    in_class = False
                elif source[j] == c and not in_class:
                    break
                elif c in "'\"/" and source[j] == "\n":
                    raise AssertionError(f"unterminated literal at {i}: {source[i : i + 40]!r}")
                j += 1
            assert j < n, f"unterminated literal at {i}"
            literals.append(source[i + 1 : j])
            i, last = j + 1, "a"
        else:
            if not c.isspace():
                last = c
            i += 1
    return literals


def css_references(source: str) -> list[str]:
    """What a stylesheet would fetch: its ``url(…)`` and ``@import`` targets (comments out).

    >>> css_references('/* url(x) */ a { background: url( "i.png" ) } @import "https://f/c.css";')
    ['i.png', 'https://f/c.css']
    """
    source = re.sub(r"/\*.*?\*/", "", source, flags=re.S)
    found = re.findall(r"url\(\s*(?:\"([^\"]*)\"|'([^']*)'|([^)\s]*))\s*\)", source, re.I)
    found += re.findall(r"@import\s+(?:\"([^\"]*)\"|'([^']*)')", source, re.I)
    return ["".join(groups) for groups in found]


#: A script's literal that holds a URL with a host (``//host``, with a scheme or without),
#: or begins with a scheme that fetches or runs something (``https:host``, ``data:``…).
JS_URL = re.compile(
    r"(?i)(?:^|[^a-z0-9+.-])(?:[a-z][a-z0-9+.-]*:)?//[^/\s]"
    r"|^\s*(?:https?|wss?|ftp|file|data|blob|javascript)\s*:"
)


def external_references(name: str, text: str) -> list[str]:
    """Every reference of a console file (by its kind) that reaches another host."""
    if name.endswith(".html"):
        page = _Page()
        page.feed(text)
        page.close()
        found = [r for r in page.references if elsewhere(r)]
        found += page.problems
        found += [f"inline code: {code[:40]!r}" for code in page.inline]
        return found
    if name.endswith(".js"):
        # a literal that is, or holds, a URL with a host or a scheme
        return [lit for lit in js_literals(text) if JS_URL.search(lit)]
    if name.endswith(".css"):
        return [r for r in css_references(text) if elsewhere(r)]
    if name.endswith(".svg"):
        found = []
        for element in ElementTree.fromstring(text).iter():
            for attribute, value in element.attrib.items():
                if attribute.rsplit("}", 1)[-1] in URL_ATTRIBUTES and elsewhere(value):
                    found.append(value)
            if element.tag.rsplit("}", 1)[-1] in ("script", "style", "foreignObject"):
                found.append(f"<{element.tag}> in an SVG")
        return found
    raise AssertionError(f"no checker for {name}")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("page.html", '<img src="//cdn.example/logo.png">'),
        ("page.html", '<link rel="stylesheet" href="https://cdn.example/x.css">'),
        ("page.html", '<script src=" HTTPS://cdn.example/x.js"></script>'),
        ("page.html", '<img srcset="a.png 1x, https://cdn.example/b.png 2x">'),
        ("page.html", "<script>fetch('/x')</script>"),
        ("page.html", '<base href="/">'),
        ("page.html", '<a href="javascript:fetch(1)">x</a>'),
        ("c.js", 'fetch("https://api.example/v1");'),
        ("c.js", "const cdn = '//cdn.example/lib.js';"),
        ("c.js", "load(`https://${host}/x`);"),
        ("c.js", 'a = 1 / 2; fetch("http://10.0.0.1:8000/x");'),
        ("c.css", "a { background: url(https://cdn.example/i.png) }"),
        ("c.css", "@import '//fonts.example/f.css';"),
        (
            "i.svg",
            '<svg xmlns="http://www.w3.org/2000/svg"><image href="https://x.example/i"/></svg>',
        ),
    ],
)
def test_the_checker_finds_a_reference_to_another_host(name: str, text: str) -> None:
    assert external_references(name, text), text


def test_the_checker_lets_local_references_and_namespaces_pass() -> None:
    assert external_references("p.html", '<a href="#/agents/x">a</a><a href="docs">d</a>') == []
    assert external_references("c.js", 'fetch("api/v1/" + path); x = "a//b".length;') == []
    svg = '<svg xmlns="http://www.w3.org/2000/svg"><circle r="1"/></svg>'
    assert external_references("i.svg", svg) == []


# --- the console as served ----------------------------------------------------------------


@pytest.fixture
def plain_app() -> TestClient:
    """The app without ClickHouse: the console's files need none."""
    app = create_app(Settings(api_auth_required=False), client=None, run_loader=False)
    return TestClient(app, client=LOOPBACK_CLIENT)  # no lifespan: nothing is opened


def test_the_console_is_at_the_root_with_its_files_and_the_docs_stay(plain_app) -> None:
    page = plain_app.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    parsed = _Page()
    parsed.feed(page.text)
    local = [r for r in parsed.references if not r.startswith("#")]
    assert {"console/console.js", "console/console.css", "console/favicon.svg"} <= set(local)
    for reference in local:
        answer = plain_app.get(urljoin("/", reference))
        assert answer.status_code == 200, reference
    for name, media_type in ASSETS.items():
        answer = plain_app.get(f"/console/{name}")
        assert answer.status_code == 200 and answer.headers["content-type"] == media_type
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert plain_app.get("/console/../app.py").status_code == 404
    assert plain_app.get("/console/index.htm").status_code == 404
    assert plain_app.get("/docs").status_code == 200
    assert "/" not in plain_app.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("name", ["/", *(f"/console/{name}" for name in ASSETS)])
def test_no_console_file_refers_to_another_host(plain_app, name: str) -> None:
    text = plain_app.get(name).text
    assert external_references("index.html" if name == "/" else name, text) == []


def test_every_console_file_is_package_data() -> None:
    """A wheel carries the console: pyproject's package-data matches every file in it."""
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["api"]
    for path in Path(str(CONSOLE_DIR)).iterdir():
        assert any(fnmatch(f"console/{path.name}", p) for p in patterns), path.name


def test_the_scripts_metrics_are_the_series_metrics() -> None:
    script = (CONSOLE_DIR / "console.js").read_text()
    listed = re.search(r"const METRICS = \[(.*?)\];", script, re.S)
    assert listed, "console.js has no METRICS list"
    assert tuple(re.findall(r'"(\w+)"', listed.group(1))) == queries.SERIES_METRICS


# --- the routes the console reads ---------------------------------------------------------


def test_whoami_without_keys_is_the_loopback_admin(api) -> None:
    body = api.get("/api/v1/whoami").json()
    assert body["role"] == "admin" and body["tenant_id"] == "*"
    assert "operate" in body["permissions"] and "report self" not in body["permissions"]


def test_whoami_names_the_key_and_what_its_role_may_do(settings: Settings) -> None:
    from sinks.clickhouse import connect

    settings = settings.model_copy(update={"api_auth_required": True})
    client = connect(settings)
    try:
        app = create_app(settings, client=client, run_loader=False)
        with TestClient(app, client=LOOPBACK_CLIENT) as api_client:
            book = app.state.runtime.keys
            stored, token = book.create(client, Role.ANALYST, "t1", "test", name="who")
            body = api_client.get(
                "/api/v1/whoami", headers={"Authorization": f"Bearer {token}"}
            ).json()
            assert body == {
                "key_id": stored.key_id, "role": "analyst", "tenant_id": "t1",
                "agent_id": None, "permissions": ["read", "query sql"],
            }  # fmt: skip
            assert api_client.get("/api/v1/whoami").status_code == 401
    finally:
        client.close()


def test_the_series_is_oldest_first_with_the_baseline_band(api, fleet) -> None:
    answer = api.get("/api/v1/agents/a1/series?metric=cpu_usage")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [p["value"] for p in body["points"]] == [35.0, 38.0, 97.0]
    assert body["count"] == 3 and body["tenant_id"] == "t1"
    sigmas = Settings().anomaly_reason_sigma
    band = body["band"]
    assert (band["mean"], band["std"], band["sigmas"]) == (40.0, 5.0, sigmas)
    assert (band["low"], band["high"]) == (40.0 - sigmas * 5.0, 40.0 + sigmas * 5.0)
    assert band["warmed_up"] is True
    newest = api.get("/api/v1/agents/a1/series?metric=cpu_usage&limit=2").json()
    assert [p["value"] for p in newest["points"]] == [38.0, 97.0]  # the newest two


def test_the_series_of_a_metric_without_baseline_and_of_unknown_agents(api, fleet) -> None:
    body = api.get("/api/v1/agents/a1/series?metric=bytes_out").json()
    assert body["band"] is None and [p["value"] for p in body["points"]] == [1024.0] * 3
    assert api.get("/api/v1/agents/a3/series").json()["points"] == []  # baseline only
    assert api.get("/api/v1/agents/nobody/series").status_code == 404
    refused = api.get("/api/v1/agents/a1/series?metric=status")
    assert refused.status_code == 422
