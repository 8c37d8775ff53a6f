"""Secrets stay secret: a DSN's password and webhook URLs are used, never shown.

The settings hold them as secret types (masked ``str``/``repr``); every log
handler the processes set up redacts the known secret values, tracebacks
included. The proof at the end runs the real stack (``agentwatch up``: broker,
dataflow, API with its loader and webhook deliverer) with webhook URLs that
carry tokens, makes deliveries fail and requests go wrong, then greps every log
file and everything printed for the secrets.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

import api.__main__
import infra.cli
from agentwatch.secrets import RedactSecrets, SecretDsn, SecretUrl, redact
from agentwatch.settings import Settings
from infra.broker import free_port
from tests.conftest import wait_until
from tests.test_cli import agentwatch, run_up, stack_env  # noqa: F401 (fixtures)
from tests.test_loader import alert, by_agent, produce

PASSWORD = "pw-" + uuid.uuid4().hex  # unique per run: a hit can only come from this test
TOKEN = "xoxbTOKEN" + uuid.uuid4().hex
DSN = f"http://agentwatch:{PASSWORD}@clickhouse.internal:8123/agentwatch"
SLACK = f"slack:https://hooks.slack.com/services/T0SECRET/B0SECRET/{TOKEN}"


def clean_env() -> dict[str, str]:
    """This process's environment without any AGENTWATCH_* variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AGENTWATCH_")}


# --- the types --------------------------------------------------------------------------


@pytest.mark.e2e  # starts processes
def test_settings_show_masked_secrets_and_children_get_the_real_ones() -> None:
    settings = Settings(clickhouse_dsn=DSN, alert_webhooks=[SLACK, "http://127.0.0.1:9/h"])
    shown = [repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())]
    for text in shown:
        assert PASSWORD not in text and TOKEN not in text
    assert str(settings.clickhouse_dsn) == (
        "http://agentwatch:***@clickhouse.internal:8123/agentwatch"
    )
    assert [str(url) for url in settings.alert_webhooks] == [
        "slack:https://hooks.slack.com/***",
        "http://127.0.0.1:9/***",
    ]
    env = settings.as_env()
    assert env["AGENTWATCH_CLICKHOUSE_DSN"] == DSN
    assert json.loads(env["AGENTWATCH_ALERT_WEBHOOKS"])[0] == SLACK
    rebuilt = subprocess.run(
        [sys.executable, "-c", "from agentwatch.settings import Settings; s = Settings(); "
         "print(s.clickhouse_dsn.get_secret_value(), s.alert_webhooks[0].get_secret_value())"],
        env={**clean_env(), **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert rebuilt.stdout.split() == [DSN, SLACK], rebuilt.stderr
    assert {PASSWORD, DSN, SLACK, SLACK.removeprefix("slack:")} <= set(settings.secret_values())


@pytest.mark.e2e  # starts processes
@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("AGENTWATCH_CLICKHOUSE_DSN", f"clickhouse://agentwatch:{PASSWORD}@h:9000", "neither"),
        ("AGENTWATCH_ALERT_WEBHOOKS", json.dumps([SLACK.replace("https", "htps")]), "http(s)"),
        ("AGENTWATCH_ALERT_WEBHOOKS", f"[{SLACK!r}]", "alert_webhooks"),  # not JSON
        ("AGENTWATCH_API_PORT", "not-a-port", "api_port"),  # errors quote no input at all
    ],
    # ids without the values: the password is random per run, and parallel workers must
    # collect the same test names
    ids=["dsn-scheme", "webhook-scheme", "webhooks-not-json", "port-not-a-number"],
)
def test_a_refused_setting_is_reported_without_its_value(variable, value, says) -> None:
    env = {
        **clean_env(),
        "AGENTWATCH_CLICKHOUSE_DSN": DSN,
        "AGENTWATCH_ALERT_WEBHOOKS": json.dumps([SLACK]),
        variable: value,
    }
    done = subprocess.run(
        [sys.executable, "-m", "api"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert says in done.stderr
    assert PASSWORD not in done.stdout + done.stderr and TOKEN not in done.stdout + done.stderr


def test_every_log_format_redacts_messages_and_tracebacks() -> None:
    secrets = Settings(clickhouse_dsn=DSN, alert_webhooks=[SLACK]).secret_values()
    try:
        raise RuntimeError(f"POST {SLACK.removeprefix('slack:')} failed; auth {PASSWORD}")
    except RuntimeError:
        exc_info = sys.exc_info()
    for formatter in (
        api.__main__.KeyValueFormatter(),
        infra.cli.KeyValueFormatter(),
        logging.Formatter("%(levelname)s %(message)s"),  # the loader's and dataflow's
    ):
        record = logging.LogRecord(
            "x", logging.ERROR, "", 0, "failed dsn=%s pw=%s", (DSN, PASSWORD), exc_info
        )
        assert RedactSecrets(secrets).filter(record)
        line = formatter.format(record)
        assert "failed dsn=*** pw=***" in line and "RuntimeError: POST *** failed; auth ***" in line
        assert PASSWORD not in line and TOKEN not in line


def test_redaction_ignores_values_too_short_to_search_for() -> None:
    settings = Settings(clickhouse_dsn="http://u:pw@h:8123")  # a 2-character password
    assert settings.secret_values() == ["http://u:pw@h:8123"]
    assert redact("pw is not searched; http://u:pw@h:8123 is", settings.secret_values()) == (
        "pw is not searched; *** is"
    )
    assert str(SecretDsn("http://u:pw@h:8123")) == "http://u:***@h:8123"
    assert str(SecretUrl("http://h:1")) == "http://h:1"  # nothing after the host to hide


@pytest.mark.parametrize(
    ("dsn", "secret"),
    [  # base64 passwords hold / and +; a token may come in the query (clickhouse-connect)
        ("http://reader:Zq8x/Lo+ng/Se=cret@127.0.0.1:8123/db", "Zq8x/Lo+ng/Se=cret"),
        ("http://reader:ab?cd#ef@127.0.0.1:8123", "ab?cd#ef"),
        ("https://127.0.0.1:8443/?access_token=t0k3n-abcdef&compress=false", "t0k3n-abcdef"),
    ],
)
def test_a_dsn_whose_secret_a_url_parser_misses_is_masked_too(dsn: str, secret: str) -> None:
    """urlsplit ends the host part at the first /, ? or #: such a password was no password
    to it, so the DSN was printed and logged whole (found by a review)."""
    settings = Settings(clickhouse_dsn=dsn)
    assert secret in settings.secret_values()
    assert secret not in str(settings.clickhouse_dsn) and "***" in str(settings.clickhouse_dsn)
    assert secret not in redact(f"cannot open ClickHouse at {dsn}", settings.secret_values())


# --- processes that fail to reach ClickHouse ------------------------------------------------


class EchoingServer:
    """An HTTP server on 127.0.0.1 that answers every request with ``status`` and a body
    quoting the request line and headers back (as some proxies and gateways do): the
    credentials the client sent end up in the client's exception text."""

    def __init__(self, status: int) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                server.requests.append((self.path, dict(self.headers)))
                body = f"refused {self.command} {self.path} headers={dict(self.headers)}"
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body.encode())))
                self.end_headers()
                self.wfile.write(body.encode())

            do_GET = do_POST = _answer  # noqa: N815 (http.server's names)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def echoing_clickhouse() -> Iterator[EchoingServer]:
    server = EchoingServer(401)
    yield server
    server.close()


@pytest.mark.e2e  # starts processes
def test_the_api_and_the_sql_command_name_a_dsn_they_cannot_open_without_its_password(
    echoing_clickhouse: EchoingServer, tmp_path: Path
) -> None:
    dsn = f"http://agentwatch:{PASSWORD}@127.0.0.1:{echoing_clickhouse.port}/"
    env = {
        **clean_env(),
        "AGENTWATCH_CLICKHOUSE_DSN": dsn,
        "AGENTWATCH_API_PORT": str(free_port()),
        "AGENTWATCH_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
    }
    started = subprocess.run(
        [sys.executable, "-m", "api"], env=env, capture_output=True, text=True, timeout=60,
        cwd=tmp_path,
    )  # fmt: skip
    assert started.returncode == 1
    assert echoing_clickhouse.requests, "the API never tried the server"
    said = started.stdout + started.stderr
    port = echoing_clickhouse.port
    assert f"cannot open ClickHouse at http://agentwatch:***@127.0.0.1:{port}/" in said
    assert "refused" in said and PASSWORD not in said  # the server's echo, redacted

    sql = agentwatch("sql", "SELECT 1", env=env, cwd=tmp_path)
    assert sql.returncode == 1
    assert "cannot be opened here" in sql.stderr, sql.stderr
    assert PASSWORD not in sql.stdout + sql.stderr


# --- the whole stack ----------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(300)  # its own deadlines add up to more than the default
def test_a_running_stack_never_writes_or_answers_its_secrets(
    run_up,  # noqa: F811
    stack_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    hooks = EchoingServer(500)  # every delivery fails, and the answer quotes the URL back
    try:
        closed = free_port()  # nothing listens: httpx's connection error
        webhooks = [
            f"slack:http://127.0.0.1:{hooks.port}/services/T0SECRET/B0SECRET/{TOKEN}",
            f"http://hookuser:{PASSWORD}@127.0.0.1:{hooks.port}/generic?token={TOKEN}q",
            f"http://127.0.0.1:{closed}/down/{TOKEN}c",
        ]
        stack_env.update(
            AGENTWATCH_ALERT_WEBHOOKS=json.dumps(webhooks),
            AGENTWATCH_WEBHOOK_RETRY_ATTEMPTS="1",
            AGENTWATCH_WEBHOOK_RETRY_BASE_S="0.05",
        )
        secrets = Settings(alert_webhooks=webhooks).secret_values() + [PASSWORD, TOKEN]
        up = run_up()
        state = up.wait_ready(timeout_s=90)
        logs = Path(stack_env["AGENTWATCH_VAR_DIR"]) / "logs"
        bootstrap = state["broker"]["bootstrap_servers"]
        produce(Settings(bootstrap_servers=bootstrap), "alerts", [alert(1)], key=by_agent)

        # the stack's own secret: the password of the chDB its loader serves to the API
        run = Path(stack_env["AGENTWATCH_VAR_DIR"]) / "run"
        secrets.append((run / "clickhouse.password").read_text().strip())

        def dropped() -> int:  # webhooks are delivered where the loader runs
            return (logs / "loader.log").read_text().count("webhook_dropped")

        wait_until(lambda: dropped() == 3, 60, "three failed deliveries in loader.log")
        # each webhook was called with its real URL: the loader got the secrets, not ***
        paths = {path for path, _ in hooks.requests}
        assert {f"/services/T0SECRET/B0SECRET/{TOKEN}", f"/generic?token={TOKEN}q"} <= paths

        api_url = f"http://127.0.0.1:{stack_env['AGENTWATCH_API_PORT']}"
        answers = []
        for method, path, body in [
            ("GET", "/api/v1/system/health", None),
            ("GET", "/api/v1/agents/agent-404/status", None),
            ("GET", "/api/v1/alerts?limit=-1", None),
            ("POST", "/api/v1/sql", {"query": "SELECT no_such_column FROM metrics"}),
            ("POST", "/api/v1/sql", {"query": "DROP TABLE metrics"}),
            ("POST", "/api/v1/silences", {"matchers": "everything"}),
            ("GET", "/openapi.json", None),
        ]:
            response = httpx.request(method, api_url + path, json=body, timeout=10)
            answers.append(f"{method} {path} -> {response.status_code} {response.text}")
        assert any(" -> 4" in answer for answer in answers), answers
        status = agentwatch("status", env=stack_env, cwd=tmp_path)
        assert up.interrupt() < 10 and up.process.returncode == 0
    finally:
        hooks.close()

    log_files = sorted(logs.iterdir())
    assert {p.name for p in log_files} >= {
        "api.log",
        "loader.log",
        "dataflow.log",
        "supervisor.log",
    }
    everything = {p.name: p.read_text(errors="replace") for p in log_files}
    everything |= {
        "up output": up.output(),
        "status": status.stdout + status.stderr,
        "answers": "\n".join(answers),
    }
    for where, text in everything.items():
        found = [secret for secret in secrets if secret in text]
        assert not found, f"{where} holds {found}"
    loader_log = everything["loader.log"]
    for index, shown in enumerate(
        [
            f"slack:http://127.0.0.1:{hooks.port}/***",
            f"http://***@127.0.0.1:{hooks.port}/***",
            f"http://127.0.0.1:{closed}/***",
        ]
    ):
        assert f"webhook_dropped webhook=#{index} {shown} " in loader_log, loader_log
    assert "error='ConnectError: " in loader_log and "error='HTTP 500'" in loader_log
