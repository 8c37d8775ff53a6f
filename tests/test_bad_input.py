"""1,000 malformed heartbeats mixed into a valid stream, through the real pipeline.

Every bad one must land in ClickHouse ``deadletter`` with its reason, every
valid one must be processed (stored in ``metrics`` and learned by its agent's
baseline), and the dataflow must keep running.
"""

from __future__ import annotations

import base64
import random
from pathlib import Path

import orjson
import pytest

from agentwatch.settings import Settings
from infra.broker import ensure_topics
from sinks.clickhouse import connect, create_schema
from sinks.loader import Loader
from tests.conftest import wait_until
from tests.test_dataflow import heartbeat
from tests.test_dataflow_kafka import DataflowProcess

pytestmark = [pytest.mark.integration, pytest.mark.e2e]  # the dataflow runs as a process

AGENTS = 20
STEPS = 60


def malformed(i: int, rng: random.Random) -> tuple[bytes | None, str]:
    """The i-th bad message and the start of the reason it must get."""
    good = heartbeat(i % AGENTS, 0)
    kinds = [
        (b'{"agent_id": "a", "cpu_usage": ', "invalid JSON"),
        (b"\xff\xfe not utf-8 \x00", "invalid JSON"),
        (b"", "invalid JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b'"just a string"', "not a JSON object"),
        (b"42", "not a JSON object"),
        (orjson.dumps({k: v for k, v in good.items() if k != "cpu_usage"}), "missing fields"),
        (orjson.dumps({"agent_id": "x"}), "missing fields"),
        (orjson.dumps({**good, "cpu_usage": "45.2"}), "cpu_usage"),
        (orjson.dumps({**good, "active_tasks": 2.5}), "active_tasks"),
        (orjson.dumps({**good, "memory_usage": True}), "memory_usage"),
        (orjson.dumps({**good, "agent_id": 17}), "agent_id"),
        (orjson.dumps({**good, "timestamp": "yesterday"}), "timestamp"),
        (orjson.dumps({**good, "timestamp": "2026-11-25T12:00:00"}), "timestamp"),
        (orjson.dumps({**good, "timestamp": 5.0}), "timestamp"),
        (orjson.dumps({**good, "cpu_usage": 100.5}), "cpu_usage"),
        (orjson.dumps({**good, "memory_usage": -3.0}), "memory_usage"),
        (orjson.dumps({**good, "disk_usage": 1e9}), "disk_usage"),
        (orjson.dumps({**good, "error_rate": 1.5}), "error_rate"),
        (orjson.dumps({**good, "failed_tasks": -1}), "failed_tasks"),
        (orjson.dumps({**good, "shell": "rm -rf /"}), "unknown fields"),
        (orjson.dumps({**good, "status": "exploded"}), "status"),
        (orjson.dumps({**good, "status": ["active"]}), "status"),
        (orjson.dumps({**good, "agent_id": ""}), "agent_id"),
        (orjson.dumps({**good, "blob": "x" * 200_000}), "message of"),
        (b'{"nested": ' * 50 + b"1" + b"}" * 50, "missing fields"),
        (None, "empty message"),
    ]
    return kinds[i % len(kinds)]


@pytest.mark.timeout(300)  # its own deadlines add up to more than the default
def test_thousand_malformed_messages_are_dead_lettered_and_the_rest_processed(
    settings: Settings, tmp_path: Path
):
    settings = settings.model_copy(update={"baseline_publish_interval_s": 1e-6})
    ensure_topics(settings)
    client = connect(settings)
    create_schema(client, settings)
    rng = random.Random(3)

    valid = [orjson.dumps(heartbeat(a, s)) for s in range(STEPS) for a in range(AGENTS)]
    bad = [malformed(i, rng) for i in range(1000)]
    stream: list[tuple[bytes | None, str | None]] = [(v, None) for v in valid]
    for value, reason in bad:
        stream.insert(rng.randrange(len(stream) + 1), (value, reason))
    stream += [(orjson.dumps(heartbeat(a, STEPS)), None) for a in range(AGENTS)]  # after junk
    n_valid = len(valid) + AGENTS

    from confluent_kafka import Producer

    producer = Producer({**settings.kafka_config(), "linger.ms": 5})
    for i, (value, reason) in enumerate(stream):
        key = f"junk-{i % 7}" if reason else orjson.loads(value)["agent_id"]  # contract: agent key
        producer.produce(settings.topic("metrics"), key=key.encode(), value=value)
    producer.flush()

    flow = DataflowProcess(settings, tmp_path / "dataflow.log")
    loader = Loader(settings, client)
    db = settings.clickhouse_database
    flow.start()
    loader.start()
    try:

        def count(sql: str) -> int:
            return client.query(sql).result_rows[0][0]

        wait_until(lambda: count(f"SELECT count() FROM {db}.deadletter FINAL") >= 1000, 90,
                   "1000 dead letters")  # fmt: skip
        wait_until(
            lambda: count(f"SELECT sum(heartbeats) FROM (SELECT max(heartbeats) AS heartbeats "
                          f"FROM {db}.baselines GROUP BY agent_id)") == n_valid,
            90, "every valid heartbeat learned by its agent's baseline",
        )  # fmt: skip
        wait_until(lambda: count(f"SELECT count() FROM {db}.metrics FINAL") == n_valid, 60,
                   "every valid heartbeat stored")  # fmt: skip
        assert flow.process.poll() is None, "the dataflow must still be running"

        rows = client.query(
            f"SELECT offset, reason, value_b64, value_bytes FROM {db}.deadletter FINAL"
        ).result_rows
        assert len(rows) == 1000
        expected = {
            offset: (value or b"", reason)
            for offset, (value, reason) in enumerate(stream)
            if reason is not None
        }
        got = sorted((base64.b64decode(v), r) for _, r, v, _ in rows)
        want = sorted(expected.values())
        assert [g[0] for g in got] == [w[0] for w in want], "original bytes kept"
        for (value, reason), (_, want_reason) in zip(got, want, strict=True):
            assert reason.startswith(want_reason), (value[:60], reason, want_reason)
    finally:
        loader.stop()
        flow.stop()
