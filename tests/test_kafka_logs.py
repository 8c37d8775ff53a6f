"""librdkafka's lines go through Python logging, not to stderr (agentwatch/kafka_logs.py).

The API's projection consumer of a test app with no broker used to write librdkafka's
"Connection refused" lines on the suite's stderr, outside any test's capture.
"""

from __future__ import annotations

import logging
import time

import pytest

from agentwatch.kafka_logs import LIBRDKAFKA_LOG, RepeatFilter
from infra.broker import free_port
from sinks.background import assigned_consumer


def test_a_client_with_no_broker_logs_through_python_logging_not_stderr(
    make_settings, caplog, capfd, monkeypatch
):
    # a fresh filter: another test may have let this kind of line through a moment ago
    monkeypatch.setattr(LIBRDKAFKA_LOG, "filters", [RepeatFilter(interval_s=60.0)])
    settings = make_settings(bootstrap_servers=f"127.0.0.1:{free_port()}")  # nothing listens
    caplog.set_level(logging.DEBUG, logger=LIBRDKAFKA_LOG.name)
    consumer = assigned_consumer(settings, "projection")
    try:
        deadline = time.monotonic() + 15.0
        refused: list[logging.LogRecord] = []
        while not refused and time.monotonic() < deadline:
            consumer.poll(0.1)  # (serves the client's log lines on this thread)
            refused = [r for r in caplog.records if "refused" in r.getMessage().lower()]
        assert refused, "librdkafka's refused connection never reached Python logging"
        # librdkafka retries the connection every 100 ms at first: a second of polls
        # brings more attempts, and the filter holds back their lines
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            consumer.poll(0.1)
    finally:
        consumer.close()
    refused = [r for r in caplog.records if "refused" in r.getMessage().lower()]
    assert len(refused) == 1, [r.getMessage() for r in refused]
    assert refused[0].name == "agentwatch.librdkafka"
    assert refused[0].levelno >= logging.WARNING
    assert "refused" not in capfd.readouterr().err.lower()


@pytest.mark.parametrize("client", ["publisher", "loader", "dataflow source"])
def test_every_kind_of_client_starts_from_the_logged_config(make_settings, client):
    """The clients that build their own configuration keep the logger of
    ``Settings.kafka_config``."""
    settings = make_settings()
    if client == "publisher":
        from api.publisher import EventPublisher

        config = EventPublisher(settings)._config()
    elif client == "loader":
        from sinks.loader import _consumer_config

        config = _consumer_config(settings)
    else:
        from dataflows.kafka_source import KafkaBatchSource

        config = KafkaBatchSource("b:1", "t", "g", client_config=settings.kafka_config())._config
    assert config["logger"] is LIBRDKAFKA_LOG
