"""Webhook delivery on real parts (Tansu, chDB) against a local HTTP receiver that fails
on purpose: every alert that should be notified arrives exactly once after the retries."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agentwatch.settings import Settings
from infra.broker import ensure_topics
from sinks.clickhouse import connect, create_schema
from sinks.webhooks import WebhookDeliverer
from tests.conftest import LOOPBACK_CLIENT, wait_until
from tests.test_loader import alert, by_agent, produce

pytestmark = pytest.mark.integration


class Receiver:
    """An HTTP receiver on 127.0.0.1 that answers 500 to its first ``failures`` POSTs."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0
        self.received: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts += 1
                if receiver.attempts <= receiver.failures:
                    self.send_response(500)
                else:
                    receiver.received.append(json.loads(body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for receiver in made:
        receiver.close()


def test_alerts_arrive_once_after_retries_in_slack_and_generic_layouts(
    make_settings, broker, chdb_dir, receivers
):
    slack, plain = Receiver(failures=2), Receiver(failures=0)
    receivers += [slack, plain]
    settings: Settings = make_settings(
        bootstrap_servers=broker.bootstrap_servers,
        clickhouse_dsn=f"chdb://{chdb_dir}",
        alert_webhooks=[f"slack:{slack.url}", plain.url],
        webhook_retry_attempts=3,
        webhook_retry_base_s=0.05,
        webhook_retry_max_s=0.2,
    )
    ensure_topics(settings)
    client = connect(settings)
    create_schema(client, settings)
    events = [
        alert(1, "pending"),  # not delivered: never fired
        alert(1, "firing"),
        alert(2, "firing", silenced=True),  # not delivered: silenced
        alert(1, "resolved"),
        b"{not json",
    ]
    produce(settings, "alerts", events, key=by_agent)
    deliverer = WebhookDeliverer(settings, client)
    try:
        wait_until(
            lambda: (
                deliverer.poll_once() >= 0
                and deliverer.stats().delivered == 4
                and deliverer.stats().skipped_invalid == 1
            ),  # (its partition may be read last)
            30,
            "two alerts delivered to two webhooks, the bad message skipped",
        )
        stats = deliverer.stats()
        assert (stats.alerts_read, stats.skipped_invalid, stats.retries, stats.dropped) == (
            4, 1, 2, 0
        )  # fmt: skip
    finally:
        deliverer.stop()
    assert slack.attempts == 4  # two failures, then one success per alert
    assert [m["text"] for m in slack.received] == [
        "[FIRING] HIGH r1 on agent agent-1 (tenant tenant-0)",
        "[RESOLVED] HIGH r1 on agent agent-1 (tenant tenant-0)",
    ]
    attachment = slack.received[0]["attachments"][0]
    assert attachment["color"] == "#ff7800" and attachment["footer"].endswith(f"{1:016x}")
    assert slack.received[1]["attachments"][0]["color"] == "#2eb886"
    assert [(m["status"], m["alert"]["rule"]) for m in plain.received] == [
        ("firing", "r1"),
        ("resolved", "r1"),
    ]

    # a restart resumes after what was delivered: nothing arrives twice
    again = WebhookDeliverer(settings, client)
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            again.poll_once()
        assert again.stats().alerts_read == 0
    finally:
        again.stop()
        client.close()
    assert len(slack.received) == 2 and len(plain.received) == 2


def test_a_receiver_that_never_answers_well_is_dropped_after_the_retries(
    make_settings, broker, chdb_dir, receivers
):
    down = Receiver(failures=1000)
    receivers.append(down)
    settings: Settings = make_settings(
        bootstrap_servers=broker.bootstrap_servers,
        clickhouse_dsn=f"chdb://{chdb_dir}",
        alert_webhooks=[down.url],
        webhook_retry_attempts=2,
        webhook_retry_base_s=0.01,
    )
    ensure_topics(settings)
    client = connect(settings)
    create_schema(client, settings)
    produce(settings, "alerts", [alert(1, "firing"), alert(2, "firing")])
    deliverer = WebhookDeliverer(settings, client)
    try:
        wait_until(
            lambda: deliverer.poll_once() >= 0 and deliverer.stats().dropped == 2, 30, "drops"
        )
    finally:
        deliverer.stop()
        client.close()
    assert down.attempts == 6 and down.received == []


def test_the_api_process_runs_the_deliverer_next_to_the_loader(
    make_settings, broker, chdb_dir, receivers
):
    from fastapi.testclient import TestClient

    from api.app import create_app

    hook = Receiver(failures=1)
    receivers.append(hook)
    settings: Settings = make_settings(
        bootstrap_servers=broker.bootstrap_servers,
        clickhouse_dsn=f"chdb://{chdb_dir}",
        alert_webhooks=[f"slack:{hook.url}"],
        webhook_retry_base_s=0.05,
    )
    ensure_topics(settings)
    produce(settings, "alerts", [alert(7, "firing")], key=by_agent)
    with TestClient(create_app(settings), client=LOOPBACK_CLIENT) as api:
        wait_until(lambda: hook.received, 30, "the alert at the webhook")
        alerts = wait_until(
            lambda: api.get("/api/v1/alerts").json()["alerts"], 30, "the loader to load the alert"
        )
        assert [a["fingerprint"] for a in alerts] == [f"{7:016x}"]
    assert [m["text"] for m in hook.received] == [
        "[FIRING] HIGH r7 on agent agent-1 (tenant tenant-0)"
    ]


@pytest.mark.e2e  # starts a process
def test_the_loader_alone_runs_the_deliverer(make_settings, broker, tmp_path, receivers):
    """The cluster profile runs the loader as its own process (``python -m sinks.loader``)
    and the API's replicas run none: the loader's process delivers the webhooks there."""
    import signal
    import subprocess
    import sys

    from tests.test_loader import loader_env

    hook = Receiver(failures=1)
    receivers.append(hook)
    settings: Settings = make_settings(
        bootstrap_servers=broker.bootstrap_servers,
        clickhouse_dsn=f"chdb://{tmp_path / 'chdb'}",
        loader_group_id=f"loader-{tmp_path.name}",
    )
    ensure_topics(settings)
    produce(settings, "alerts", [alert(9, "firing")], key=by_agent)
    env = loader_env(
        settings,
        AGENTWATCH_ALERT_WEBHOOKS=json.dumps([hook.url]),
        AGENTWATCH_WEBHOOK_RETRY_BASE_S="0.05",
    )
    log_path = tmp_path / "loader.log"
    with log_path.open("wb") as log:
        loader = subprocess.Popen(
            [sys.executable, "-m", "sinks.loader"], cwd=tmp_path, env=env, stdout=log, stderr=log
        )
    try:
        wait_until(lambda: hook.received, 60, "the alert at the webhook")
    finally:
        loader.send_signal(signal.SIGTERM)
        try:
            loader.wait(30)
        except subprocess.TimeoutExpired:
            loader.kill()
            loader.wait(10)
    assert [(m["status"], m["alert"]["fingerprint"]) for m in hook.received] == [
        ("firing", f"{9:016x}")
    ], log_path.read_text()[-2000:]
    assert hook.attempts == 2  # the first answered 500, retried once
    assert hook.url not in log_path.read_text()  # the URL is a credential: never logged
