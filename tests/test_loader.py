"""The ClickHouse loader on real parts: the session's Tansu broker and chDB.

Each test gets its own topics and database (see ``conftest.py``). The kill -9
test runs ``python -m sinks.loader`` as a child process with its own chDB
directory, because a process can open only one chDB path.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from agentwatch.settings import Settings
from infra.broker import ensure_topics, free_port, partitions
from schemas.heartbeats import parse_heartbeats
from schemas.metric_rows import encode as encode_rows
from sinks.clickhouse import connect, create_schema
from sinks.loader import (
    CLUSTER_CHECK_INTERVAL_S,
    LOADED,
    LOADED_TOPICS,
    Loader,
    insert_rows,
)
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
#: Heartbeat timestamps start here: recent, so the tables' TTL keeps them.
T0 = float(int(time.time()) - 3600)


def heartbeat(seq: int, agents: int = 50, **overrides: object) -> dict:
    """A valid heartbeat; ``(agent_id, timestamp)`` is unique per ``seq``."""
    doc = {
        "agent_id": f"agent-{seq % agents:04d}",
        "tenant_id": f"tenant-{seq % 3}",
        "timestamp": T0 + seq,
        "cpu_usage": 10.0 + seq % 80,
        "memory_usage": 40.5,
        "disk_usage": 35.0,
        "network_latency": 12.5,
        "active_tasks": seq % 7,
        "completed_tasks": seq,
        "failed_tasks": 2,
        "error_rate": 0.013,
        "response_time_avg": 234.5,
        "uptime_seconds": 86400.0,
        "bytes_out": 1024 * (seq % 5),
    }
    doc.update(overrides)
    return doc


def anomaly(seq: int, reasons: int = 2) -> dict:
    return {
        "agent_id": f"agent-{seq % 7}",
        "tenant_id": "tenant-0",
        "timestamp": T0 + seq,
        "score": 0.9995,
        "threshold": 0.999,
        "is_anomaly": True,
        "detector": "half_space_trees",
        "reasons": [
            {
                "feature": f"f{r}",
                "value": 99.0,
                "baseline_mean": 40.0,
                "baseline_std": 5.0,
                "z": 11.8,
            }
            for r in range(reasons)
        ],
    }


def produce(
    settings: Settings,
    topic: str,
    docs: list,
    key: Callable = lambda d: None,
    keys: list[bytes] | None = None,
) -> None:
    """Produce JSON documents (or raw bytes) to a logical topic and wait for delivery;
    each keyed by ``key(doc)``, or by ``keys`` (one per doc) when given."""
    producer = Producer({**settings.kafka_config(), "linger.ms": 5})
    if keys is None:
        keys = [None if isinstance(doc, bytes) else key(doc) for doc in docs]
    for doc, doc_key in zip(docs, keys, strict=True):
        value = doc if isinstance(doc, bytes) else orjson.dumps(doc)
        producer.produce(settings.topic(topic), value=value, key=doc_key)
        producer.poll(0)
    assert producer.flush(10) == 0


def by_agent(doc: dict) -> bytes:
    return doc["agent_id"].encode()


def produce_heartbeats(
    settings: Settings, docs: list[dict], rows_per_message: int = 1, compression: str = "none"
) -> int:
    """Produce heartbeats as the dataflow hands them to the loader: validated, as Arrow
    batches of ``rows_per_message`` rows on ``agents.metric_rows``, each keyed by its
    first heartbeat's agent (so the messages spread over the partitions by their keys:
    keyless, the producer may put a quick burst all on one); messages produced."""
    messages, keys = [], []
    for lo in range(0, len(docs), rows_per_message):
        batch, rejected = parse_heartbeats(
            list(map(orjson.dumps, docs[lo : lo + rows_per_message]))
        )
        assert not rejected, rejected
        encoded = encode_rows(batch, compression)
        messages += encoded
        keys += [docs[lo]["agent_id"].encode()] * len(encoded)
    produce(settings, "metric_rows", messages, keys=keys)
    return len(messages)


@pytest.fixture
def client(settings: Settings) -> Iterator[object]:
    """A ClickHouse client on this test's database, with the schema created."""
    ch = connect(settings)
    create_schema(ch, settings)
    try:
        yield ch
    finally:
        ch.close()


@pytest.fixture
def topics(settings: Settings) -> Settings:
    ensure_topics(settings)
    return settings


@pytest.fixture
def loaders() -> Iterator[list[Loader]]:
    """Loaders a test creates; each is stopped at the end even if the test fails."""
    created: list[Loader] = []
    yield created
    for loader in created:
        loader.stop()


def count(client, settings: Settings, table: str, final: bool = True) -> int:
    db = settings.clickhouse_database
    return client.command(f"SELECT count() FROM {db}.{table}{' FINAL' if final else ''}")


def poll_until(loader: Loader, predicate: Callable[[], object], what: str, timeout_s=30.0):
    """Drive the loader by hand until ``predicate`` holds."""

    def step() -> object:
        loader.poll_once()
        return predicate()

    return wait_until(step, timeout_s, what)


def test_heartbeats_land_in_metrics_with_their_values(settings, client, topics, loaders):
    docs = [heartbeat(seq) for seq in range(500)]
    docs[7]["status"] = "busy"
    docs[8]["timestamp"] = datetime.fromtimestamp(T0 + 8, UTC).isoformat()
    produce_heartbeats(settings, docs)
    loader = Loader(settings, client)
    loaders.append(loader)

    poll_until(loader, lambda: count(client, settings, "metrics") == 500, "500 metrics rows")

    db = settings.clickhouse_database
    rows = client.query(
        f"SELECT agent_id, tenant_id, toFloat64(timestamp), cpu_usage, active_tasks, "
        f"completed_tasks, bytes_out, status FROM {db}.metrics FINAL "
        f"WHERE completed_tasks IN (3, 7, 8) ORDER BY completed_tasks"
    ).result_rows
    assert rows == [
        ("agent-0003", "tenant-0", T0 + 3, 13.0, 3, 3, 3072, ""),
        ("agent-0007", "tenant-1", T0 + 7, 17.0, 0, 7, 2048, "busy"),
        ("agent-0008", "tenant-2", T0 + 8, 18.0, 1, 8, 3072, ""),
    ]
    stats = loader.stats()
    assert stats.rows_inserted["metric_rows"] == 500
    assert stats.messages_read["metric_rows"] == 500
    assert stats.batches_inserted >= 1
    assert stats.batch_rows_sum == 500
    assert stats.last_insert_at is not None
    assert stats.errors == 0
    wait_until(
        lambda: loader.poll_once() >= 0 and loader.stats().lag["metric_rows"] == 0, 10, "zero lag"
    )


class CountedInserts:
    """A client that counts its Arrow inserts by kind: the messages' own stream
    (``raw_insert``) or a table written anew (``insert_arrow``)."""

    def __init__(self, client) -> None:
        self._client = client
        self.calls = {"raw_insert": 0, "insert_arrow": 0}

    def raw_insert(self, *args, **kwargs):
        self.calls["raw_insert"] += 1
        return self._client.raw_insert(*args, **kwargs)

    def insert_arrow(self, *args, **kwargs):
        self.calls["insert_arrow"] += 1
        return self._client.insert_arrow(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._client, name)


def rewritten(message: bytes, metadata: dict[bytes, bytes]) -> bytes:
    """The same rows in a stream whose schema message carries ``metadata`` (as another
    writer's might): still the layout :func:`schemas.metric_rows.decode` takes, but not
    byte for byte the dataflow's schema message."""
    table = pa.ipc.open_stream(message).read_all()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema.with_metadata(metadata)) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_the_messages_own_arrow_batches_are_inserted_without_being_written_again(
    settings, client, topics, loaders
):
    counted = CountedInserts(client)
    produce_heartbeats(settings, [heartbeat(seq) for seq in range(400)], rows_per_message=40)
    loader = Loader(settings, counted)
    loaders.append(loader)

    poll_until(loader, lambda: count(client, settings, "metrics") == 400, "400 metrics rows")

    assert counted.calls["raw_insert"] >= 1 and counted.calls["insert_arrow"] == 0


def test_compressed_messages_land_as_plain_ones_do(settings, client, topics, loaders):
    """``metric_rows_compression``: lz4 and zstd messages, mixed with plain ones in one
    batch of the loader, land whole in ClickHouse, every row once."""
    docs = [heartbeat(seq) for seq in range(300)]
    for part, compression in enumerate(("lz4", "none", "zstd")):
        produce_heartbeats(settings, docs[100 * part : 100 * part + 100], 25, compression)
    loader = Loader(settings, client)
    loaders.append(loader)

    poll_until(loader, lambda: count(client, settings, "metrics") == 300, "300 metrics rows")
    db = settings.clickhouse_database
    stored = client.query(
        f"SELECT count(), uniqExact(completed_tasks), sum(completed_tasks) FROM {db}.metrics"
    ).result_rows
    assert stored == [(300, 300, sum(range(300)))]
    assert loader.stats().skipped_invalid["metric_rows"] == 0


def first_of_month(i: int) -> float:
    """The first of the i-th month from 2030-01 (each in a monthly partition of its own)."""
    return datetime(2030 + i // 12, 1 + i % 12, 1, tzinfo=UTC).timestamp()


def test_rows_of_more_than_100_months_in_one_insert_land(settings, client, topics, loaders):
    """Found by a fuzzer: ClickHouse refuses by default an insert block touching more than
    100 partitions, and the tables are monthly; 101 valid heartbeats (or anomalies) a month
    apart failed at every retry, holding back every topic of the loader's lane."""
    docs = [heartbeat(i, agents=1, timestamp=first_of_month(i)) for i in range(101)]
    produce_heartbeats(settings, docs, rows_per_message=101)
    spread = [{**anomaly(i), "timestamp": first_of_month(i)} for i in range(101)]
    produce(settings, "anomalies", spread, key=by_agent)
    loader = Loader(settings, client)
    loaders.append(loader)
    poll_until(
        loader,
        lambda: (
            count(client, settings, "metrics") == 101
            and count(client, settings, "anomalies") == 101
        ),
        "101 metrics and 101 anomalies rows, a month apart",
    )


def test_a_message_with_a_second_stream_after_its_end_is_refused(settings, client, topics, loaders):
    """Found by a fuzzer: ``decode`` read a message up to its first end marker, so one with a
    second stream after it passed, and joined with the next messages into one stream it made
    ClickHouse stop at that marker: the rows of the messages after it were lost, their offsets
    committed."""
    batch, _ = parse_heartbeats([orjson.dumps(heartbeat(seq)) for seq in range(6)])
    first, hidden = (encode_rows(batch.take(np.array(i))) for i in ([0, 1, 2], [3, 4, 5]))
    head = 8 + int.from_bytes(first[0][4:8], "little")  # (the schema message's length)
    produce(settings, "metric_rows", [first[0] + hidden[0][head:]], keys=[b"agent-0000"])
    produce_heartbeats(settings, [heartbeat(seq) for seq in range(100, 115)], rows_per_message=3)
    loader = Loader(settings, client)
    loaders.append(loader)
    poll_until(loader, lambda: count(client, settings, "metrics") == 15, "the 15 good rows")
    assert loader.stats().skipped_invalid["metric_rows"] == 1


def test_batches_of_another_writer_land_whole_too(settings, client, topics, loaders):
    """Messages whose schema message differs in its bytes (not in its layout) from the
    first one of a batch cannot be joined into one stream as they are: that batch's
    tables are written anew, and every row lands once."""
    docs = [heartbeat(seq) for seq in range(300)]
    produce_heartbeats(settings, docs[:100], rows_per_message=25)
    batch, _ = parse_heartbeats(list(map(orjson.dumps, docs[100:200])))
    other = [rewritten(message, {b"writer": b"other"}) for message in encode_rows(batch)]
    produce(settings, "metric_rows", other, keys=[b"agent-0100"] * len(other))
    produce_heartbeats(settings, docs[200:], rows_per_message=50)
    loader = Loader(settings, client)
    loaders.append(loader)

    poll_until(loader, lambda: count(client, settings, "metrics") == 300, "300 metrics rows")

    db = settings.clickhouse_database
    stored = client.query(
        f"SELECT count(), uniqExact(completed_tasks), min(completed_tasks), "
        f"max(completed_tasks) FROM {db}.metrics"
    ).result_rows
    assert stored == [(300, 300, 0, 299)]
    assert loader.stats().skipped_invalid["metric_rows"] == 0


def forged(column: str, value: object, rows: int = 3, nullable: bool = False) -> bytes:
    """A metric_rows message of ``rows`` valid heartbeats but ``column`` set to ``value``
    (in a column declared ``nullable`` or not)."""
    batch, _ = parse_heartbeats([orjson.dumps(heartbeat(5000 + i)) for i in range(rows)])
    [message] = encode_rows(batch)
    table = pa.ipc.open_stream(message).read_all()
    position = table.schema.get_field_index(column)
    field = table.schema.field(position).with_nullable(nullable)
    forged_column = pa.array([value] * rows, field.type)
    table = table.set_column(position, field, forged_column)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_messages_that_are_not_storable_metric_rows_are_skipped_and_counted(
    settings, client, topics, loaders
):
    """The loader stores what the dataflow validated, but checks that each message is
    what the table can hold: anything else is refused whole, logged and counted, and
    never retried forever (no row of it is stored)."""
    refused = [
        b"{not arrow",
        b"",
        orjson.dumps(heartbeat(1)),  # a raw heartbeat on the wrong topic
        forged("cpu_usage", 140.0),
        forged("error_rate", float("nan")),
        forged("active_tasks", 5_000_000_000),  # an int64, but UInt32 in the table
        forged("bytes_out", -1),
        forged("agent_id", ""),
        forged("timestamp", datetime(1990, 1, 1, tzinfo=UTC)),
        forged("agent_id", None),  # nulls where the layout says there are none
        forged("status", "", nullable=True),  # another layout: a nullable column
    ]
    produce_heartbeats(settings, [heartbeat(seq) for seq in range(100)], rows_per_message=25)
    produce(settings, "metric_rows", refused)
    produce_heartbeats(settings, [heartbeat(seq) for seq in range(100, 200)], rows_per_message=50)
    loader = Loader(settings, client)
    loaders.append(loader)

    poll_until(
        loader,
        lambda: loader.stats().messages_read["metric_rows"] == 4 + len(refused) + 2,
        "every message read",
    )
    loader.flush()

    assert count(client, settings, "metrics") == 200
    stats = loader.stats()
    assert stats.skipped_invalid["metric_rows"] == len(refused)
    assert stats.rows_inserted["metric_rows"] == 200
    assert stats.errors == 0


def test_derived_topics_land_in_their_tables(settings, client, topics, loaders):
    anomalies = [anomaly(seq) for seq in range(30)] + [anomaly(99, reasons=0)]
    baselines = [
        {
            "agent_id": f"agent-{i}",
            "tenant_id": "tenant-0",
            "timestamp": T0 + i,
            "heartbeats": 100 + i,
            "warmed_up": i % 2 == 0,
            "mean": {"cpu_usage": 40.0 + i},
            "std": {"cpu_usage": 5.0},
        }
        for i in range(5)
    ]
    original = b'{"agent_id": 7}'
    deadletters = [
        {
            "topic": settings.topic("metrics"),
            "partition": 1,
            "offset": 40 + i,
            "reason": "agent_id: 7 is not a string of 1-128 characters",
            "key": None if i == 0 else "k",
            "value_b64": base64.b64encode(original).decode(),
            "value_bytes": len(original),
            "received_at": T0 + i,
        }
        for i in range(3)
    ]
    produce(settings, "anomalies", anomalies + [b"{broken", b'{"agent_id": "a"}'])
    produce(settings, "baselines", baselines + [b"null"])
    produce(settings, "deadletter", deadletters + [{**deadletters[0], "offset": -1}])
    loader = Loader(settings, client)
    loaders.append(loader)

    poll_until(
        loader,
        lambda: (
            (count(client, settings, "anomalies"), count(client, settings, "baselines")) == (31, 5)
            and count(client, settings, "deadletter") == 3
        ),
        "derived rows",
    )
    db = settings.clickhouse_database
    top, reasons = client.query(
        f"SELECT top_feature, reasons FROM {db}.anomalies FINAL "
        f"WHERE timestamp = toDateTime64({T0 + 3}, 3, 'UTC') AND agent_id = 'agent-3'"
    ).result_rows[0]
    assert top == "f0"
    assert json.loads(reasons) == anomaly(3)["reasons"]
    assert client.query(
        f"SELECT count() FROM {db}.anomalies FINAL WHERE top_feature = ''"
    ).result_rows == [(1,)]
    assert client.query(
        f"SELECT heartbeats, warmed_up, mean['cpu_usage'] FROM {db}.baselines FINAL "
        f"WHERE agent_id = 'agent-3'"
    ).result_rows == [(103, False, 43.0)]
    rows = client.query(
        f"SELECT offset, key, value_b64, value_bytes FROM {db}.deadletter FINAL ORDER BY offset"
    ).result_rows
    assert [(o, k) for o, k, _, _ in rows] == [(40, None), (41, "k"), (42, "k")]
    assert base64.b64decode(rows[0][2]) == original
    stats = loader.stats()
    none = dict.fromkeys(LOADED_TOPICS, 0)
    assert stats.skipped_invalid == {**none, "anomalies": 2, "baselines": 1, "deadletter": 1}
    assert stats.rows_inserted == {**none, "anomalies": 31, "baselines": 5, "deadletter": 3}


def threat(seq: int, **overrides: object) -> dict:
    """A threat episode of agent-<seq % 3>, starting at ``T0 + 60 * seq``."""
    doc = {
        "agent_id": f"agent-{seq % 3}",
        "tenant_id": "tenant-0",
        "rule": "abnormal_metric" if seq % 2 else "high_error_rate",
        "category": "SECURITY" if seq % 2 else "PERFORMANCE",
        "severity": "HIGH" if seq % 2 else "CRITICAL",
        "evidence": {
            "condition": "error_rate avg over 300s > 0.2",
            "values": {"error_rate": 0.3 + seq / 100},
            "baseline": [
                {
                    "feature": "error_rate",
                    "value": 0.3,
                    "baseline_mean": 0.01,
                    "baseline_std": 0.005,
                    "z": 58.0,
                }
            ],  # fmt: skip
            "window_start": T0 + 60 * seq - 300,
            "window_end": T0 + 60 * seq,
            "excerpts": [],  # conversations' redacted excerpts; stored empty for the others
        },
        "first_seen": T0 + 60 * seq,
        "last_seen": T0 + 60 * seq + 30,
    }
    doc.update(overrides)
    return doc


def test_threats_land_once_even_when_replayed(settings, client, topics, loaders):
    threats = [threat(seq) for seq in range(12)]
    invalid = [
        b"{broken",
        orjson.dumps(threat(50, severity="SEVERE")),
        orjson.dumps(threat(51, category="security")),
        orjson.dumps(threat(52, first_seen=1e12)),
        orjson.dumps({**threat(53), "evidence": {"condition": "x"}}),
    ]
    produce(settings, "threats", threats + invalid, key=by_agent)
    loader = Loader(settings, client)
    loaders.append(loader)
    poll_until(loader, lambda: count(client, settings, "threats") == 12, "12 threats")
    # a dataflow that crashed publishes again what it had sent: a later batch, a new part
    produce(settings, "threats", threats[:4], key=by_agent)
    poll_until(loader, lambda: loader.stats().rows_inserted["threats"] == 16, "the replay inserted")

    assert count(client, settings, "threats") == 12  # collapsed on (agent_id, first_seen, rule)
    db = settings.clickhouse_database
    rows = client.query(
        f"SELECT agent_id, tenant_id, rule, category, severity, toFloat64(first_seen), "
        f"toFloat64(last_seen), condition, evidence FROM {db}.threats FINAL "
        f"WHERE agent_id = 'agent-1' ORDER BY first_seen LIMIT 1"
    ).result_rows
    *columns, evidence = rows[0]
    assert columns == [
        "agent-1", "tenant-0", "abnormal_metric", "SECURITY", "HIGH", T0 + 60, T0 + 90,
        "error_rate avg over 300s > 0.2",
    ]  # fmt: skip
    assert json.loads(evidence) == threat(1)["evidence"]
    stats = loader.stats()
    assert stats.skipped_invalid["threats"] == len(invalid)
    assert stats.rows_inserted["threats"] == 16


def alert(seq: int, state: str = "firing", **overrides: object) -> dict:
    """A change of state of agent-<seq % 3>'s alert of rule r<seq>."""
    fired = state != "pending"
    doc = {
        "fingerprint": f"{seq:016x}",
        "agent_id": f"agent-{seq % 3}",
        "tenant_id": "tenant-0",
        "rule": f"r{seq}",
        "category": "SECURITY" if fired else None,
        "severity": "HIGH" if fired else None,
        "state": state,
        "started_at": T0 + seq,
        "fired_at": T0 + seq + 60 if fired else None,
        "resolved_at": T0 + seq + 600 if state == "resolved" else None,
        "last_seen": T0 + seq + 60,
        "updated_at": T0 + seq + {"pending": 0, "firing": 60, "resolved": 900}[state],
        "flapping": False,
        "flap_count": 0,
        "summary": f"r{seq} {state} on agent-{seq % 3}",
        "evidence": threat(seq)["evidence"] if fired else None,
        "silenced": False,
    }
    doc.update(overrides)
    return doc


def test_alerts_scores_commands_incidents_and_events_land_once(settings, client, topics, loaders):
    alerts = [alert(1, "pending"), alert(1, "firing"), alert(1, "resolved"), alert(2)]
    scores = [
        {"agent_id": "agent-1", "tenant_id": "tenant-0", "timestamp": T0 + 60 * i,
         "score": 100.0 - 20 * (i + 1), "delta": -20.0, "cause": "excessive_errors",
         "first_seen": T0 + 60 * i - 300}
        for i in range(3)
    ] + [{"agent_id": "agent-1", "tenant_id": "tenant-0", "timestamp": T0 + 900,
          "score": 45.0, "delta": 5.0, "cause": "recovery", "first_seen": None}]  # fmt: skip
    command = {
        "command_id": "c-1", "agent_id": "agent-1", "tenant_id": "tenant-0",
        "command": "quarantine", "reason": "score 10 < 20", "issued_at": T0 + 120,
        "actor": "system", "score": 10.0,
    }  # fmt: skip
    incident = {
        "incident_id": "i-1", "tenant_id": "tenant-0", "rule": "data_exfiltration",
        "category": "SECURITY", "severity": "EMERGENCY", "agent_ids": ["a1", "a2", "a3"],
        "truncated": False, "first_seen": T0, "last_seen": T0 + 60, "revision": 0,
    }  # fmt: skip
    joined = {**incident, "agent_ids": ["a1", "a2", "a3", "a4"], "revision": 1}
    changed = {"type": "status_changed", "agent_id": "agent-1", "tenant_id": "tenant-0",
               "actor": "system", "timestamp": T0 + 120,
               "payload": {"from": "active", "to": "quarantined", "score": 10.0}}  # fmt: skip
    rule = {"type": "rule_changed", "agent_id": "*", "tenant_id": "*", "actor": "ops",
            "timestamp": T0 + 5, "payload": {"action": "disable", "name": "x"}}  # fmt: skip
    said = {"type": "conversation", "agent_id": "agent-2", "tenant_id": "tenant-0",
            "actor": "agent-2", "timestamp": T0 + 7,
            "payload": {"counterpart": "agent-1", "text": "hi"}}  # fmt: skip
    # what an agent may not write on its topic: forged commands and a forged status change
    forged = [
        {**changed, "timestamp": T0 + 130, "payload": {"from": "quarantined", "to": "active"}},
        {**rule, "timestamp": T0 + 6, "payload": {"action": "delete", "name": "y"}},
        {**changed, "type": "released", "timestamp": T0 + 140, "payload": {}},
    ]
    produce(settings, "alerts", alerts + [b"{", orjson.dumps({**alert(3), "state": "gone"})])
    produce(settings, "security", scores + [orjson.dumps({**scores[0], "score": 101})])
    produce(settings, "commands", [command, command, b"null"])
    produce(settings, "incidents", [incident, joined, orjson.dumps({**incident, "revision": -1})])
    produce(settings, "state", [changed, orjson.dumps({**changed, "actor": ""}), rule])
    # what the dataflow dead-letters is not stored either: a conversation with no words, a
    # silence's expiry that names no silence
    wordless = {**said, "timestamp": T0 + 8, "payload": {"counterpart": "agent-1", "text": ""}}
    nameless = {**rule, "type": "silence_expired", "timestamp": T0 + 9, "payload": {}}
    produce(settings, "control", [rule, said, nameless])
    produce(settings, "events", [said, *forged, wordless])
    loader = Loader(settings, client)
    loaders.append(loader)
    expected = {"alerts": 4, "security": 4, "commands": 2, "incidents": 2, "events": 1,
                "control": 1, "state": 1}  # fmt: skip
    poll_until(
        loader,
        lambda: all(loader.stats().rows_inserted[t] == n for t, n in expected.items()),
        "rows of every new topic",
    )
    db = settings.clickhouse_database
    assert count(client, settings, "alerts") == 4
    assert count(client, settings, "security_scores") == 4
    assert count(client, settings, "commands") == 1  # the replayed command collapsed
    assert count(client, settings, "agent_events") == 3
    assert client.query(
        f"SELECT state, category, fired_at IS NULL, evidence = '' FROM {db}.alerts FINAL "
        f"WHERE rule = 'r1' ORDER BY updated_at"
    ).result_rows == [
        ("pending", "", True, True), ("firing", "SECURITY", False, False),
        ("resolved", "SECURITY", False, False),
    ]  # fmt: skip
    assert client.query(
        f"SELECT toFloat64(resolved_at), evidence FROM {db}.alerts FINAL WHERE state = 'resolved'"
    ).result_rows == [(T0 + 601, orjson.dumps(threat(1)["evidence"]).decode())]
    assert client.query(
        f"SELECT score, delta, cause, first_seen IS NULL FROM {db}.security_scores FINAL "
        f"ORDER BY timestamp"
    ).result_rows == [
        (80.0, -20.0, "excessive_errors", False), (60.0, -20.0, "excessive_errors", False),
        (40.0, -20.0, "excessive_errors", False), (45.0, 5.0, "recovery", True),
    ]  # fmt: skip
    assert client.query(f"SELECT command, score FROM {db}.commands FINAL").result_rows == [
        ("quarantine", 10.0)
    ]
    assert client.query(f"SELECT agent_ids, revision FROM {db}.incidents FINAL").result_rows == [
        (["a1", "a2", "a3", "a4"], 1)
    ]  # the newest revision
    rows = client.query(
        f"SELECT type, agent_id, channel, payload FROM {db}.agent_events FINAL ORDER BY timestamp"
    ).result_rows
    assert [(t, a, c) for t, a, c, _ in rows] == [
        ("rule_changed", "*", "control"), ("conversation", "agent-2", "events"),
        ("status_changed", "agent-1", "state"),
    ]  # fmt: skip
    assert json.loads(rows[2][3])["to"] == "quarantined"
    skipped = loader.stats().skipped_invalid
    assert {t: skipped[t] for t in expected} == {
        "alerts": 2, "security": 1, "commands": 1, "incidents": 1, "events": 4, "control": 2,
        "state": 2,
    }  # fmt: skip


def test_restart_resumes_from_stored_offsets_without_duplicates(settings, client, topics):
    produce_heartbeats(settings, [heartbeat(seq) for seq in range(1000)])
    first = Loader(settings, client)
    first.start()
    try:
        wait_until(lambda: count(client, settings, "metrics") == 1000, 30, "first 1000 rows")
    finally:
        first.stop()
    produce_heartbeats(settings, [heartbeat(seq) for seq in range(1000, 1700)])

    second = Loader(settings, client)
    second.start()
    try:
        wait_until(lambda: count(client, settings, "metrics") == 1700, 30, "all 1700 rows")
        wait_until(lambda: second.stats().lag["metric_rows"] == 0, 10, "zero lag")
    finally:
        second.stop()

    db = settings.clickhouse_database
    assert count(client, settings, "metrics", final=False) == 1700  # nothing read twice
    assert client.command(f"SELECT uniqExact(agent_id, timestamp) FROM {db}.metrics") == 1700
    assert second.stats().rows_inserted["metric_rows"] == 700
    assert second.stats().messages_read["metric_rows"] == 700


def test_offsets_of_another_cluster_restart_from_the_beginning(
    settings, client, topics, loaders, caplog
):
    produce_heartbeats(settings, [heartbeat(seq) for seq in range(100)])
    _store_offsets(client, settings, "some-other-cluster", next_offset=10)
    loader = Loader(settings, client)
    loaders.append(loader)

    with caplog.at_level(logging.WARNING, logger="sinks.loader"):
        poll_until(loader, lambda: count(client, settings, "metrics") == 100, "all 100 rows")

    assert "stored_cluster_id=some-other-cluster" in caplog.text
    assert "reading the partition from the beginning" in caplog.text
    db = settings.clickhouse_database

    def stored() -> list:
        return client.query(
            f"SELECT DISTINCT cluster_id FROM {db}.loader_offsets FINAL "
            f"WHERE topic = '{settings.topic('metric_rows')}'"
        ).result_rows

    # the offsets are written just after the rows they cover
    poll_until(loader, lambda: stored() == [(_cluster_id(settings),)], "offsets of this cluster")


def test_offset_past_the_end_restarts_from_the_beginning(settings, client, topics, loaders, caplog):
    produce_heartbeats(settings, [heartbeat(seq) for seq in range(100)])
    _store_offsets(client, settings, _cluster_id(settings), next_offset=1_000_000)
    loader = Loader(settings, client)
    loaders.append(loader)

    with caplog.at_level(logging.WARNING, logger="sinks.loader"):
        poll_until(loader, lambda: count(client, settings, "metrics") == 100, "all 100 rows")

    assert "stored_offset=1000000" in caplog.text
    assert "past the end of the partition" in caplog.text


def test_topics_created_after_start_are_picked_up(settings, client, loaders):
    loader = Loader(settings, client)
    loaders.append(loader)
    loader.start()
    time.sleep(0.3)  # the loader is now waiting for topics that do not exist
    ensure_topics(settings)
    produce_heartbeats(settings, [heartbeat(seq) for seq in range(50)])

    wait_until(lambda: count(client, settings, "metrics") == 50, 30, "50 rows")
    assert loader.stats().errors == 0


def test_insert_errors_are_retried_without_losing_rows(settings, client, topics, loaders):
    produce_heartbeats(settings, [heartbeat(seq) for seq in range(300)])
    flaky = FlakyClient(client, failures=2)
    loader = Loader(settings, flaky)
    loaders.append(loader)
    loader.start()

    wait_until(lambda: count(client, settings, "metrics") == 300, 30, "300 rows after retries")
    assert loader.stats().errors == 2
    assert flaky.failed == 2
    loader.stop()
    assert count(client, settings, "metrics", final=False) == 300


def _constrain(client, settings: Settings, table: str, check: str | None) -> None:
    """Make ClickHouse refuse rows of ``table`` that fail ``check`` (None: take any)."""
    db = settings.clickhouse_database
    if check is None:
        client.command(f"ALTER TABLE {db}.{table} DROP CONSTRAINT IF EXISTS refuse")
    else:
        client.command(f"ALTER TABLE {db}.{table} ADD CONSTRAINT refuse CHECK {check}")


def test_a_row_clickhouse_refuses_is_skipped_and_the_rest_land(settings, client, topics,
                                                               loaders, caplog):  # fmt: skip
    """A row ClickHouse refuses for its value (here a CHECK constraint: VIOLATED_CONSTRAINT)
    failed its insert at every retry and held back the whole lane. After
    ``loader_isolate_after`` such refusals the batch is split until the row is alone: it is
    skipped (logged, counted), every other row lands, and the lane moves on."""
    settings = settings.model_copy(update={"loader_isolate_after": 2})
    _constrain(client, settings, "threats", "agent_id != 'poison'")
    threats = [threat(seq) for seq in range(12)]
    threats.insert(5, threat(40, agent_id="poison"))
    produce(settings, "threats", threats, keys=[b"one key"] * len(threats))  # one batch
    beats = [heartbeat(seq) for seq in range(300)]
    beats[77]["cpu_usage"] = 99.5
    _constrain(client, settings, "metrics", "cpu_usage < 99")
    produce_heartbeats(settings, beats, rows_per_message=100)  # Arrow batches: rows split
    loader = Loader(settings, client)
    loaders.append(loader)
    with caplog.at_level(logging.WARNING, logger="sinks.loader"):
        poll_until(
            loader,
            lambda: (
                count(client, settings, "threats") == 12
                and count(client, settings, "metrics") == 299
            ),
            "every row but the two refused",
        )
    refused = [r.getMessage() for r in caplog.records if "clickhouse_row_refused" in r.msg]
    assert len(refused) == 2 and any("agent_id=poison" in line for line in refused)
    assert all("VIOLATED_CONSTRAINT" in line for line in refused)
    stats = loader.stats()
    assert stats.skipped_invalid["threats"] == 1 and stats.skipped_invalid["metric_rows"] == 1
    assert stats.failing_since is None
    db = settings.clickhouse_database
    assert client.command(f"SELECT count() FROM {db}.threats WHERE agent_id = 'poison'") == 0
    # the lane moves on: later rows land, and the offsets stored cover the refused rows
    produce(settings, "threats", [threat(60)], key=by_agent)
    poll_until(loader, lambda: count(client, settings, "threats") == 13, "a later threat")
    stored = client.command(
        f"SELECT sum(next_offset) FROM {db}.loader_offsets FINAL "
        f"WHERE topic = '{settings.topic('threats')}'"
    )
    assert stored == len(threats) + 1


def test_a_refusal_of_every_row_keeps_the_batch_and_loses_nothing(settings, client, topics,
                                                                  loaders):  # fmt: skip
    """ClickHouse refusing every row is not one bad row (a changed column, a wrong
    constraint): past ``loader_max_refused_rows`` the batch is kept and retried whole, and
    lands once the cause is gone."""
    settings = settings.model_copy(update={"loader_isolate_after": 1, "loader_max_refused_rows": 2})
    _constrain(client, settings, "threats", "agent_id = 'nobody'")
    threats = [threat(seq) for seq in range(10)]
    produce(settings, "threats", threats, keys=[b"one key"] * len(threats))
    loader = Loader(settings, client)
    loaders.append(loader)
    poll_until(
        loader,
        lambda: "loader_max_refused_rows=2" in (loader.stats().last_error or ""),
        "a try in halves that gave up",
    )
    stats = loader.stats()
    assert count(client, settings, "threats") == 0 and stats.skipped_invalid["threats"] == 0
    assert stats.failing_since is not None
    _constrain(client, settings, "threats", None)
    poll_until(loader, lambda: count(client, settings, "threats") == 10, "all ten, once fixed")
    assert loader.stats().skipped_invalid["threats"] == 0


def test_batches_respect_the_row_limit(make_settings, broker, chdb_dir, loaders):
    settings = make_settings(
        bootstrap_servers=broker.bootstrap_servers,
        clickhouse_dsn=f"chdb://{chdb_dir}",
        loader_batch_rows=100,
        loader_consume_messages=50,
        loader_batch_age_s=30.0,
    )
    ensure_topics(settings)
    ch = connect(settings)
    create_schema(ch, settings)
    produce_heartbeats(settings, [heartbeat(seq) for seq in range(1000)])
    loader = Loader(settings, ch)
    loaders.append(loader)

    poll_until(loader, lambda: count(ch, settings, "metrics") == 1000, "1000 rows in batches")
    stats = loader.stats()
    assert stats.batches_inserted == 10
    assert stats.last_batch_rows == 100
    ch.close()


def test_findings_are_inserted_without_waiting_for_the_heartbeats_batch(
    make_settings, broker, chdb_dir, loaders
):
    """Threats (a finding) go in after loader_findings_batch_age_s; heartbeats wait for theirs."""
    settings = make_settings(
        bootstrap_servers=broker.bootstrap_servers,
        clickhouse_dsn=f"chdb://{chdb_dir}",
        loader_batch_age_s=60.0,
        loader_findings_batch_age_s=0.05,
    )
    ensure_topics(settings)
    ch = connect(settings)
    try:
        create_schema(ch, settings)
        produce_heartbeats(settings, [heartbeat(seq) for seq in range(100)])
        produce(settings, "threats", [threat(seq) for seq in range(3)], key=by_agent)
        loader = Loader(settings, ch)
        loaders.append(loader)

        poll_until(
            loader,
            lambda: (
                loader.stats().messages_read["metric_rows"] == 100
                and count(ch, settings, "threats") == 3
            ),
            "the 100 heartbeats read and the 3 threats inserted",
        )
        assert count(ch, settings, "metrics", final=False) == 0  # held back: not due for 60 s
        assert loader.flush() == 100  # the heartbeats' batch, when it is due (here: by hand)
    finally:
        ch.close()


def test_crash_between_rows_and_offsets_replays_without_duplicates(
    settings, client, topics, loaders
):
    """Rows inserted but their offsets never written: the next loader reads them again."""
    produce_heartbeats(settings, [heartbeat(seq) for seq in range(400)])
    crashing = Loader(settings, OffsetsNeverWritten(client))
    loaders.append(crashing)
    poll_until(crashing, lambda: count(client, settings, "metrics") == 400, "400 rows, once")
    assert crashing.stats().errors >= 1  # the offsets write failed and was counted

    successor = Loader(settings, client)
    loaders.append(successor)
    poll_until(
        successor,
        lambda: successor.stats().rows_inserted["metric_rows"] == 400,
        "the successor to read the same 400 rows again",
    )

    db = settings.clickhouse_database
    assert count(client, settings, "metrics", final=False) == 800  # inserted twice...
    assert count(client, settings, "metrics") == 400  # ...but one row per identity
    client.command(f"OPTIMIZE TABLE {db}.metrics FINAL")
    assert count(client, settings, "metrics", final=False) == 400


def test_a_replay_in_the_same_insert_as_its_original_is_one_row_by_identity(
    settings, client, topics, loaders
):
    """The dataflow re-emitted heartbeats after a crash and the loader read both copies
    in one batch: the block is written as it is (not collapsed at insert), and ``FINAL``
    counts each identity once, as it does for a replay in another block."""
    docs = [heartbeat(seq) for seq in range(300)]
    produce_heartbeats(settings, docs + docs[:100], rows_per_message=50)
    loader = Loader(settings.model_copy(update={"loader_batch_age_s": 60.0}), client)
    loaders.append(loader)
    poll_until(loader, lambda: sum(loader.stats().messages_read.values()) == 8, "8 read")
    assert loader.flush() == 400  # one insert of both copies
    assert count(client, settings, "metrics", final=False) == 400
    assert count(client, settings, "metrics") == 300
    db = settings.clickhouse_database
    client.command(f"OPTIMIZE TABLE {db}.metrics FINAL")
    assert count(client, settings, "metrics", final=False) == 300


def test_one_flush_writes_the_offsets_of_every_table_in_one_insert(
    settings, client, topics, loaders
):
    """Heartbeats, threats and anomalies flushed together: one insert into
    loader_offsets covers all three topics (an insert costs tens of ms whatever its rows),
    and a successor reads none of them again."""
    produce_heartbeats(settings, [heartbeat(seq) for seq in range(50)])
    produce(settings, "threats", [threat(seq) for seq in range(3)], key=by_agent)
    produce(settings, "anomalies", [anomaly(seq) for seq in range(4)], key=by_agent)
    counting = OffsetsCounted(client)
    held = {"loader_batch_age_s": 60.0, "loader_findings_batch_age_s": 60.0}
    loader = Loader(settings.model_copy(update=held), counting)
    loaders.append(loader)
    poll_until(loader, lambda: sum(loader.stats().messages_read.values()) == 57, "57 read")
    assert counting.offsets_inserts == 0  # nothing due yet
    assert loader.flush() == 57
    assert counting.offsets_inserts == 1
    db = settings.clickhouse_database
    stored = client.query(
        f"SELECT topic, sum(next_offset) FROM {db}.loader_offsets FINAL GROUP BY topic"
    ).result_rows
    assert dict(stored) == {
        settings.topic("metric_rows"): 50, settings.topic("threats"): 3,
        settings.topic("anomalies"): 4,
    }  # fmt: skip


def test_a_failed_offsets_write_is_tried_again_without_new_rows(settings, client, topics, loaders):
    """The rows went in but their offsets did not: the tables stay due, and the next try
    writes the offsets (no row of them is inserted twice, none read again)."""
    produce(settings, "threats", [threat(seq) for seq in range(3)], key=by_agent)
    failing = OffsetsFailOnce(client)
    loader = Loader(settings, failing)
    loaders.append(loader)
    db = settings.clickhouse_database

    def offsets_stored() -> int:
        return client.command(
            f"SELECT count() FROM {db}.loader_offsets FINAL "
            f"WHERE topic = '{settings.topic('threats')}'"
        )

    poll_until(loader, lambda: failing.failed and offsets_stored() > 0, "the offsets, retried")
    assert loader.stats().errors >= 1
    assert count(client, settings, "threats", final=False) == 3  # inserted once


def test_broker_restart_reads_the_new_log_from_its_start(make_settings, chdb_dir, caplog):
    """An in-memory broker restarted on the same port: new cluster id, offsets from 0."""
    from infra.broker import start_broker

    port = free_port()
    broker = start_broker("127.0.0.1", port)
    settings = make_settings(
        bootstrap_servers=broker.bootstrap_servers, clickhouse_dsn=f"chdb://{chdb_dir}"
    )
    ch = connect(settings)
    create_schema(ch, settings)
    loader = Loader(settings, ch)
    try:
        ensure_topics(settings)
        produce_heartbeats(settings, [heartbeat(seq) for seq in range(300)])
        loader.start()
        wait_until(lambda: count(ch, settings, "metrics") == 300, 30, "300 rows before restart")

        broker.stop()
        with caplog.at_level(logging.WARNING, logger="sinks.loader"):
            broker = start_broker("127.0.0.1", port)
            ensure_topics(settings)
            produce_heartbeats(settings, [heartbeat(seq) for seq in range(1000, 1100)])
            wait_until(
                lambda: count(ch, settings, "metrics") == 400,
                30,
                "the 100 heartbeats of the new log (offsets 0..99, below the old ones)",
            )
        assert "broker_cluster_changed" in caplog.text
    finally:
        loader.stop()
        broker.stop()
        ch.close()


#: ``deadletter`` and ``agent_events`` as the release before the control topic made them.
PREVIOUS_RELEASE_TABLES = (
    """CREATE TABLE {db}.deadletter (
        topic LowCardinality(String), partition UInt32, offset UInt64, reason String,
        key Nullable(String), value_b64 String, value_bytes UInt32,
        received_at DateTime64(3, 'UTC'))
    ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(received_at)
    ORDER BY (topic, partition, offset, cityHash64(value_b64))
    TTL toDateTime(received_at) + INTERVAL 90 DAY""",
    """CREATE TABLE {db}.agent_events (
        type LowCardinality(String), agent_id String, tenant_id LowCardinality(String),
        actor String, timestamp DateTime64(3, 'UTC'), payload String)
    ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(timestamp)
    ORDER BY (agent_id, timestamp, type)
    TTL toDateTime(timestamp) + INTERVAL 90 DAY""",
)


def test_tables_of_the_previous_release_are_upgraded_in_place(make_settings, chdb_dir):
    """A database made before dead letters carried their log and events their channel:
    the schema step adds both columns (the cluster id to the end of the sort key),
    keeps the rows, and a second dead letter at a reused offset no longer merges away."""
    settings = make_settings(clickhouse_dsn=f"chdb://{chdb_dir}")
    db = settings.clickhouse_database
    ch = connect(settings)
    try:
        ch.command(f"CREATE DATABASE {db}")
        for statement in PREVIOUS_RELEASE_TABLES:
            ch.command(statement.format(db=db))
        letter = ("agents.metrics", 0, 7, "invalid JSON", None, "e30=", 2, datetime.now(UTC))
        ch.insert("deadletter", [letter], database=db)
        ch.insert("agent_events", [("released", "a1", "t1", "ops", datetime.now(UTC), "{}")],
                  database=db)  # fmt: skip

        create_schema(ch, settings)
        create_schema(ch, settings)  # again: nothing left to do

        keys = dict(ch.query(
            f"SELECT name, sorting_key FROM system.tables WHERE database = '{db}'"
        ).result_rows)  # fmt: skip
        assert keys["deadletter"].endswith("cityHash64(value_b64), cluster_id")
        assert ch.query(f"SELECT cluster_id FROM {db}.deadletter").result_rows == [("",)]
        assert ch.query(f"SELECT type, channel FROM {db}.agent_events").result_rows == [
            ("released", "")
        ]
        again = dict(zip(DEAD_LETTER_COLUMNS, letter, strict=True)) | {"cluster_id": "new-log"}
        ch.insert("deadletter", [tuple(again.values())], column_names=list(again), database=db)
        assert count(ch, settings, "deadletter") == 2
    finally:
        ch.command(f"DROP DATABASE IF EXISTS {db}")
        ch.close()


DEAD_LETTER_COLUMNS = (
    "topic", "partition", "offset", "reason", "key", "value_b64", "value_bytes", "received_at",
)  # fmt: skip


def test_dead_letters_without_a_cluster_id_get_the_one_the_loader_reads_under(
    settings, client, topics, loaders
):
    original = b"{not json"
    letter = {
        "topic": settings.topic("metrics"), "partition": 0, "offset": 3, "reason": "bad",
        "key": None, "value_b64": base64.b64encode(original).decode(),
        "value_bytes": len(original), "received_at": T0,
    }  # fmt: skip
    produce(settings, "deadletter", [letter, {**letter, "cluster_id": "the-old-log"}])
    loader = Loader(settings, client)
    loaders.append(loader)
    poll_until(loader, lambda: count(client, settings, "deadletter") == 2, "both dead letters")
    rows = client.query(
        f"SELECT cluster_id FROM {settings.clickhouse_database}.deadletter ORDER BY cluster_id"
    ).result_rows
    assert sorted(r[0] for r in rows) == sorted([_cluster_id(settings), "the-old-log"])


class OffsetsNeverWritten:
    """A ClickHouse client that inserts rows but fails to write loader offsets (a crash)."""

    def __init__(self, client) -> None:
        self._client = client

    def insert(self, table, *args, **kwargs):
        if table == "loader_offsets":
            raise ConnectionError("the process died here (injected)")
        return self._client.insert(table, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._client, name)


class OffsetsCounted:
    """A ClickHouse client that counts its inserts into loader_offsets."""

    def __init__(self, client) -> None:
        self._client = client
        self.offsets_inserts = 0

    def insert(self, table, *args, **kwargs):
        self.offsets_inserts += table == "loader_offsets"
        return self._client.insert(table, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._client, name)


class OffsetsFailOnce(OffsetsCounted):
    """A ClickHouse client whose first write of loader offsets fails."""

    failed = False

    def insert(self, table, *args, **kwargs):
        if table == "loader_offsets" and not self.failed:
            self.failed = True
            raise ConnectionError("ClickHouse went away between the rows and the offsets")
        return super().insert(table, *args, **kwargs)


class FlakyClient:
    """A ClickHouse client whose first ``failures`` inserts fail like a server that is down."""

    def __init__(self, client, failures: int) -> None:
        self._client = client
        self._left = failures
        self.failed = 0

    def insert_df(self, *args, **kwargs):
        self._maybe_fail()
        return self._client.insert_df(*args, **kwargs)

    def insert_arrow(self, *args, **kwargs):
        self._maybe_fail()
        return self._client.insert_arrow(*args, **kwargs)

    def raw_insert(self, *args, **kwargs):
        self._maybe_fail()
        return self._client.raw_insert(*args, **kwargs)

    def _maybe_fail(self) -> None:
        if self._left:
            self._left -= 1
            self.failed += 1
            raise ConnectionError("ClickHouse is down (injected)")

    def __getattr__(self, name: str):
        return getattr(self._client, name)


def _cluster_id(settings: Settings) -> str:
    from infra.broker import cluster_id

    return cluster_id(settings.bootstrap_servers)


def _store_offsets(client, settings: Settings, cluster: str, next_offset: int) -> None:
    topic = settings.topic("metric_rows")
    client.insert(
        "loader_offsets",
        [
            (cluster, topic, p, next_offset, datetime.now(UTC))
            for p in range(partitions(settings, "metric_rows"))
        ],
        column_names=("cluster_id", "topic", "partition", "next_offset", "updated_at"),
        database=settings.clickhouse_database,
    )


# --- kill -9 of a standalone loader ---------------------------------------------

COUNT_SCRIPT = """
import json
from agentwatch.settings import Settings
from sinks.clickhouse import connect
s = Settings()
c = connect(s)
db = s.clickhouse_database
print(json.dumps({
    "metrics_final": c.command(f"SELECT count() FROM {db}.metrics FINAL"),
    "metrics_distinct": c.command(f"SELECT uniqExact(agent_id, timestamp) FROM {db}.metrics"),
    "metrics_raw": c.command(f"SELECT count() FROM {db}.metrics"),
    "anomalies_final": c.command(f"SELECT count() FROM {db}.anomalies FINAL"),
    "anomalies_distinct": c.command(
        f"SELECT uniqExact(agent_id, timestamp) FROM {db}.anomalies"),
}))
"""


def loader_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a child process running the loader (``python -m sinks.loader`` or
    the API with its loader) on ``settings``' broker, topics, database and group."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "AGENTWATCH_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "AGENTWATCH_TOPIC_PREFIX": settings.topic_prefix,
        "AGENTWATCH_CLICKHOUSE_DSN": settings.clickhouse_dsn.get_secret_value(),
        "AGENTWATCH_CLICKHOUSE_DATABASE": settings.clickhouse_database,
        "AGENTWATCH_LOADER_GROUP_ID": settings.loader_group_id,
        **extra,
    }


@pytest.mark.e2e  # starts processes
@pytest.mark.parametrize(
    "process", ["sinks.loader", "api"], ids=["loader-alone", "api-with-its-loader"]
)
def test_kill_9_mid_stream_loses_and_duplicates_nothing(make_settings, broker, tmp_path, process):
    chdb_path = tmp_path / "child-chdb"
    settings = make_settings(
        bootstrap_servers=broker.bootstrap_servers,
        clickhouse_dsn=f"chdb://{chdb_path}",
        loader_group_id=f"loader-{tmp_path.name}",
        loader_batch_rows=2000,
        loader_consume_messages=1000,
        loader_batch_age_s=0.2,
    )
    ensure_topics(settings)
    env = loader_env(
        settings,
        AGENTWATCH_LOADER_BATCH_ROWS=str(settings.loader_batch_rows),
        AGENTWATCH_LOADER_CONSUME_MESSAGES=str(settings.loader_consume_messages),
        AGENTWATCH_LOADER_BATCH_AGE_S=str(settings.loader_batch_age_s),
        AGENTWATCH_API_PORT=str(free_port()),
    )
    heartbeats, anomalies = 60_000, 3_000

    def start_loader(name: str) -> tuple[subprocess.Popen, Path]:
        log_path = tmp_path / f"{name}.log"
        with log_path.open("wb") as log:
            started = subprocess.Popen(
                [sys.executable, "-m", process], cwd=tmp_path, env=env, stdout=log, stderr=log
            )
        return started, log_path

    producing_done = threading.Event()

    def produce_slowly() -> None:
        """About 15k heartbeats/s in steps, with an anomaly every 20th, for ~4 s."""
        try:
            for start in range(0, heartbeats, 3000):
                produce_heartbeats(
                    settings,
                    [heartbeat(s) for s in range(start, start + 3000)],
                    rows_per_message=100,
                )
                produce(settings, "anomalies", [anomaly(s) for s in range(start, start + 3000, 20)])
                time.sleep(0.2)
        finally:
            producing_done.set()

    first, first_log = start_loader("first")
    try:
        wait_until(lambda: b"loader_assigned" in first_log.read_bytes(), 60, "first loader ready")
        producer = threading.Thread(target=produce_slowly, daemon=True)
        producer.start()
        wait_until(
            lambda: first_log.read_bytes().count(b"batch_inserted table=metrics") >= 3,
            30,
            "first loader inserting",
        )
        assert not producing_done.is_set(), "the kill must happen while messages flow"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()

    second, second_log = start_loader("second")
    try:
        producer.join(60)
        assert producing_done.is_set()
        wait_until(
            lambda: (
                _committed(settings, "metric_rows") == heartbeats // 100
                and _committed(settings, "anomalies") == anomalies
            ),
            60,
            "the second loader to catch up (its Kafka commits)",
        )
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        if second.poll() is None:
            second.kill()
    assert b"loader_stopped" in second_log.read_bytes()

    counted = subprocess.run(
        [sys.executable, "-c", COUNT_SCRIPT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        check=True,
        timeout=60,
    )
    counts = json.loads(counted.stdout.decode().strip().splitlines()[-1])
    assert counts["metrics_final"] == heartbeats
    assert counts["metrics_distinct"] == heartbeats
    assert counts["anomalies_final"] == anomalies
    assert counts["anomalies_distinct"] == anomalies


def _committed(settings: Settings, topic: str) -> int:
    """Sum of the loader group's committed offsets on a logical topic."""
    consumer = Consumer({**settings.kafka_config(), "group.id": settings.loader_group_id})
    try:
        name = settings.topic(topic)
        partitions = consumer.list_topics(name, timeout=5).topics[name].partitions
        committed = consumer.committed([TopicPartition(name, p) for p in partitions], timeout=5)
        return sum(max(tp.offset, 0) for tp in committed)
    finally:
        consumer.close()


def test_the_agents_projection_keeps_the_newest_state_and_the_registry_its_cards(
    settings, client, topics, loaders
):
    from agentwatch.lifecycle import AgentRecord, Trigger, observe_heartbeat, transition

    card = {"name": "Agent-1", "agent_type": "bot", "owner": "team-ml", "tags": {"zone": "eu"}}
    record = AgentRecord.unregistered("agent-1", "tenant-0")
    steps = [transition(record, Trigger.REGISTERED, T0, "ops-1")]
    steps[0].event["payload"]["registration"] = card
    steps.append(observe_heartbeat(steps[-1].record, T0 + 30, status="busy"))
    steps.append(transition(steps[-1].record, "quarantined", T0 + 60, "ops-1", "leaked a key",
                            until=T0 + 3600))  # fmt: skip
    events = [step.event for step in steps]
    late = {
        "type": "heartbeat_late",
        "agent_id": "agent-1",
        "tenant_id": "tenant-0",
        "actor": "system",
        "timestamp": T0 + 90,
        "payload": {"last_heartbeat": T0 + 30},
    }
    # the newest first, then the older ones and a replay: the newest still wins
    produce(settings, "state", [events[2], late, events[0], events[1], *events], key=by_agent)
    loader = Loader(settings, client)
    loaders.append(loader)
    db = settings.clickhouse_database
    poll_until(loader, lambda: count(client, settings, "agent_events") == 4, "the events")
    rows = list(client.query(f"SELECT * FROM {db}.agents FINAL").named_results())
    assert len(rows) == 1 and rows[0]["trigger"] == "quarantined"
    rows[0]["since"] = rows[0]["since"].timestamp()
    rows[0]["quarantine_until"] = rows[0]["quarantine_until"].timestamp()
    assert AgentRecord.from_row(rows[0]) == steps[-1].record
    assert client.query(
        f"SELECT tenant_id, agent_id, name, agent_type, owner, tags, actor, "
        f"toUnixTimestamp64Milli(registered_at) / 1000 FROM {db}.agent_registry FINAL"
    ).result_rows == [
        ("tenant-0", "agent-1", "Agent-1", "bot", "team-ml", {"zone": "eu"}, "ops-1", T0)
    ]


# --- orchestration: assignment scores and tasks -----------------------------------------

WEIGHTS = {"performance": 0.4, "cost": 0.3, "availability": 0.2, "sla": 0.1}
COMPONENTS = {"performance": 0.9, "cost": 0.5, "availability": 0.75, "sla": 1.0}


def assignment_score(agent: str, at: float, score: float, **overrides: object) -> dict:
    """An ``AssignmentScore`` of ``agent`` (tenant-0) at ``at``."""
    doc = {
        "agent_id": agent, "tenant_id": "tenant-0", "timestamp": at, "score": score,
        **COMPONENTS, "weights": WEIGHTS, "state": "active", "active_tasks": 1, "capacity": 4,
        "success_rate": 0.9, "response_time_ms": 120.0, "sla_met_rate": 1.0,
        "tasks_completed": 9, "tasks_failed": 1, "p_fail": 0.05,
        "by_type": {"etl": {"p_success": 0.9, "expected_duration_s": 30.0, "outcomes": 10}},
        "cause": "heartbeat",
    }  # fmt: skip
    doc.update(overrides)
    return doc


def test_assignment_scores_land_in_the_history_and_the_latest_per_agent(
    settings, client, topics, loaders
):
    first = [assignment_score("agent-1", T0 + 60 * i, 0.5 + i / 10) for i in range(3)]
    other = assignment_score("agent-2", T0, 0.4, p_fail=None, by_type={}, cause="state")
    bad = [
        orjson.dumps(assignment_score("agent-1", T0 + 999, 1.5)),  # a score above 1
        orjson.dumps(assignment_score("agent-1", T0 + 999, 0.5, capacity=-1)),
        b"{",
    ]
    # the newest first, then the rest and a replay: the newest still wins the latest table
    produce(settings, "assignment_scores", [first[2], other, first[0], first[1], *first, *bad],
            key=lambda d: d["agent_id"].encode())  # fmt: skip
    loader = Loader(settings, client)
    loaders.append(loader)
    poll_until(  # (the bad ones, unkeyed, may sit on a partition read later)
        loader,
        lambda: (
            loader.stats().rows_inserted["assignment_scores"] == 7
            and loader.stats().messages_read["assignment_scores"] == 10
        ),
        "the assignment scores",
    )
    db = settings.clickhouse_database
    assert count(client, settings, "assignment_scores") == 4  # the replays collapsed
    latest = client.query(
        f"SELECT agent_id, round(toFloat64(score), 3), toFloat64(timestamp), weights, by_type, "
        f"p_fail, cause FROM {db}.assignment_scores_latest FINAL ORDER BY agent_id"
    ).result_rows
    assert [(a, s, t, c) for a, s, t, _, _, _, c in latest] == [
        ("agent-1", 0.7, T0 + 120, "heartbeat"), ("agent-2", 0.4, T0, "state")
    ]  # fmt: skip
    assert json.loads(latest[0][3]) == WEIGHTS
    assert json.loads(latest[0][4]) == first[2]["by_type"]
    assert (json.loads(latest[1][4]), latest[1][5]) == ({}, None)
    assert loader.stats().skipped_invalid["assignment_scores"] == len(bad)


def task_assigned(task: str, agent: str, at: float, **payload: object) -> dict:
    """The API's ``task_assigned`` of ``task`` to ``agent`` (tenant-0), on agents.control."""
    return {
        "type": "task_assigned", "agent_id": agent, "tenant_id": "tenant-0", "actor": "api",
        "timestamp": at,
        "payload": {"task_id": task, "task_type": "etl", "priority": "high",
                    "required_capabilities": ["etl"], "deadline": at + 600, "score": 0.8,
                    "components": COMPONENTS, "weights": WEIGHTS, "p_success": 0.9,
                    "expected_duration_s": 30.0, "assigned_by": "api-1", **payload},
    }  # fmt: skip


def task_changed(task: str, agent: str, status: str, assigned_at: float, at: float,
                 **fields: object) -> dict:  # fmt: skip
    """A shard's ``task_changed`` (the whole ``TaskRecord``), on agents.state."""
    record = {
        "task_id": task, "agent_id": agent, "tenant_id": "tenant-0", "task_type": "etl",
        "priority": "high", "status": status, "required_capabilities": ["etl"], "score": 0.8,
        "components": COMPONENTS, "p_success": 0.9, "expected_duration_s": 30.0,
        "deadline": assigned_at + 600, "assigned_at": assigned_at, "accepted_at": assigned_at,
        "agent_active_tasks": 1, "capacity": 4, "assigned_by": "api-1", "updated_at": at,
        **fields,
    }  # fmt: skip
    return {"type": "task_changed", "agent_id": agent, "tenant_id": "tenant-0",
            "actor": "system", "timestamp": at, "payload": record}  # fmt: skip


def lifecycle_of(task: str, at: float) -> tuple[dict, dict, dict]:
    """A task's assigned (control), accepted (state, at the same time) and completed."""
    return (
        task_assigned(task, "agent-1", at),
        task_changed(task, "agent-1", "accepted", at, at),
        task_changed(task, "agent-1", "completed", at, at + 25, finished_at=at + 25,
                     duration_s=25.0, sla_met=True, agent_active_tasks=0),
    )  # fmt: skip


def inserted(loader: Loader, *topics: str) -> int:
    """Rows the loader inserted from these topics (their projections' rows with them)."""
    rows = loader.stats().rows_inserted
    return sum(rows[topic] for topic in topics)


def task_rows(client, settings: Settings) -> dict[str, dict]:
    rows = client.query(
        f"SELECT * FROM {settings.clickhouse_database}.tasks FINAL ORDER BY task_id"
    ).named_results()
    return {row["task_id"]: row for row in rows}


def test_a_tasks_changes_end_in_one_row_with_its_latest_status(settings, client, topics, loaders):
    assigned, accepted, completed = lifecycle_of("task-1", T0)
    produce(settings, "control", [assigned], key=by_agent)
    produce(settings, "state", [accepted, completed, accepted], key=by_agent)  # and a replay
    # only assigned and accepted so far (same millisecond): accepted wins
    only_accepted = lifecycle_of("task-2", T0 + 10)[:2]
    produce(settings, "control", [only_accepted[0]], key=by_agent)
    produce(settings, "state", [only_accepted[1]], key=by_agent)
    loader = Loader(settings, client)
    loaders.append(loader)
    # (a projection's rows are inserted with the rows of their topic, before the offsets)
    poll_until(loader, lambda: inserted(loader, "control", "state") == 6, "the task events")
    rows = task_rows(client, settings)
    assert {task: row["status"] for task, row in rows.items()} == {
        "task-1": "completed", "task-2": "accepted"
    }  # fmt: skip
    done = rows["task-1"]
    assert (done["agent_id"], done["tenant_id"], done["task_type"], done["priority"]) == (
        "agent-1", "tenant-0", "etl", "high"
    )  # fmt: skip
    assert (done["duration_s"], done["sla_met"], done["attempt"]) == (25.0, True, 1)
    assert done["finished_at"].timestamp() == T0 + 25
    assert done["assigned_at"].timestamp() == done["accepted_at"].timestamp() == T0
    assert json.loads(done["components"]) == COMPONENTS
    assert round(done["p_success"], 3) == 0.9
    assert done["version"] == round((T0 + 25) * 1000) * 8 + 3  # completed's rank


def test_a_tasks_latest_status_wins_whatever_order_the_topics_are_read_in(
    settings, client, topics, loaders
):
    assigned, accepted, completed = lifecycle_of("task-1", T0)
    loader = Loader(settings, client)
    loaders.append(loader)
    # the shard's verdicts are loaded first, the API's assignment later (another topic)
    produce(settings, "state", [completed, accepted], key=by_agent)
    poll_until(loader, lambda: inserted(loader, "state") == 2, "the shard's rows")
    assert task_rows(client, settings)["task-1"]["status"] == "completed"
    produce(settings, "control", [assigned], key=by_agent)
    poll_until(loader, lambda: inserted(loader, "control") == 1, "the assignment")
    row = task_rows(client, settings)["task-1"]
    assert (row["status"], row["agent_active_tasks"], row["capacity"]) == ("completed", 0, 4)


def test_task_events_that_do_not_hold_a_task_are_refused(settings, client, topics, loaders):
    good = task_assigned("task-ok", "agent-1", T0)
    no_status = task_changed("task-x", "agent-1", "accepted", T0, T0)
    del no_status["payload"]["status"]
    bad_assignments = [
        task_assigned("task-y", "agent-1", T0, score=2.0),  # a score above 1
        {**good, "payload": {"task_id": "task-z"}},  # no score, components, weights…
    ]
    bad_changes = [
        no_status,
        task_changed("task-x", "agent-1", "lost", T0, T0),  # not a status
        task_changed("task-x", "agent-1", "accepted", T0, T0, attempt=70_000),  # > UInt16
    ]
    produce(settings, "control", [*bad_assignments, good], key=by_agent)
    produce(settings, "state", bad_changes, key=by_agent)
    loader = Loader(settings, client)
    loaders.append(loader)
    poll_until(
        loader,
        lambda: (
            sum(loader.stats().skipped_invalid[t] for t in ("control", "state")) == 5
            and loader.stats().rows_inserted["control"] == 1
        ),
        "the refusals and the one good assignment",
    )
    assert list(task_rows(client, settings)) == ["task-ok"]
    assert count(client, settings, "agent_events") == 1  # refused whole, not only its task
    assert loader.stats().errors == 0


def test_anomalies_with_episode_times_out_of_range_are_refused(settings, client, topics, loaders):
    """An episode's start or end outside the years the tables hold is refused like an
    anomaly's own timestamp would be (it could not be written: the batch would fail at
    every retry and hold back every anomaly after it)."""
    good = {**anomaly(1), "episode_start": T0 - 60.0}
    bad = [{**anomaly(2), "episode_start": 1e300}, {**anomaly(3), "episode_end": -1.0}]
    produce(settings, "anomalies", [*bad, good], key=by_agent)
    loader = Loader(settings, client)
    loaders.append(loader)
    poll_until(
        loader,
        lambda: (
            loader.stats().skipped_invalid["anomalies"] == 2
            and loader.stats().rows_inserted["anomalies"] == 1
        ),
        "the two refusals and the good anomaly",
    )
    assert count(client, settings, "anomalies") == 1
    assert loader.stats().errors == 0


# --- the security scores' old topic (agents.scores → agents.security) ----------------------


def score_change(agent: str, at: float, score: float) -> dict:
    return {"agent_id": agent, "tenant_id": "tenant-0", "timestamp": at, "score": score,
            "delta": score - 100.0, "cause": "excessive_errors", "first_seen": at - 60}  # fmt: skip


def test_security_scores_left_on_the_old_topic_are_loaded_too(settings, client, topics, loaders):
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(settings.kafka_config())
    legacy = settings.topic("scores")
    admin.create_topics([NewTopic(legacy, 2, 1)])[legacy].result(10)
    before = [score_change("agent-1", T0 + i, 90.0 - i) for i in range(3)]
    after = [score_change("agent-1", T0 + 100, 70.0)]
    produce(settings, "scores", [*before, before[0], b"{"], key=by_agent)  # and a replay
    produce(settings, "security", [*after, before[2]], key=by_agent)  # one copied before too
    loader = Loader(settings, client)
    loaders.append(loader)
    poll_until(
        loader,
        lambda: (
            loader.stats().rows_inserted["scores"] == 4
            and loader.stats().rows_inserted["security"] == 2
            # the malformed one may sit on another partition, read after the rows landed
            and loader.stats().skipped_invalid["scores"] >= 1
        ),
        "both topics and the malformed score",
    )
    db = settings.clickhouse_database
    assert client.query(
        f"SELECT toFloat64(timestamp), score FROM {db}.security_scores FINAL ORDER BY timestamp"
    ).result_rows == [(T0, 90.0), (T0 + 1, 89.0), (T0 + 2, 88.0), (T0 + 100, 70.0)]
    assert loader.stats().skipped_invalid["scores"] == 1


def test_a_new_deployment_neither_waits_nor_asks_for_the_old_topic(
    settings, client, topics, loaders, caplog
):
    loader = Loader(settings, client)
    loaders.append(loader)
    produce(settings, "security", [score_change("agent-1", T0, 80.0)], key=by_agent)
    with caplog.at_level(logging.INFO, logger="sinks.loader"):
        poll_until(loader, lambda: count(client, settings, "security_scores") == 1, "the score")
    assert "loader_waiting_for_topics" not in caplog.text
    assert settings.topic("scores") not in loader._assigned
    # every topic it needs is there: it looks for new ones at the slow pace, not every second
    now = time.monotonic()
    loader._check_metadata(now)
    assert loader._next_metadata_check == now + CLUSTER_CHECK_INTERVAL_S


def test_a_loader_on_its_own_serves_its_figures_to_prometheus(settings, client, topics, loaders):
    """python -m sinks.loader (the cluster profile's loader service) serves the same
    agentwatch_loader_* families the API's /metrics has for a loader in its process."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from sinks.loader_metrics import LoaderFigures, serve

    loader = Loader(settings, client)
    loaders.append(loader)
    port = free_port()
    server = serve(lambda: LoaderFigures.of(loader.stats(), loader.running), "127.0.0.1", port)
    try:
        loader.start()
        produce_heartbeats(settings, [heartbeat(seq) for seq in range(120)], rows_per_message=40)

        def scrape() -> dict:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            return {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }

        rows = ("agentwatch_loader_rows_inserted_total", (("topic", "metric_rows"),))
        samples = wait_until(
            lambda: (s := scrape()).get(rows) == 120 and s, 30, "120 rows in the loader's metrics"
        )
        assert samples[("agentwatch_loader_running", ())] == 1
        assert samples[("agentwatch_loader_batch_rows_sum", ())] == 120
        assert samples[("agentwatch_loader_errors_total", ())] == 0
        assert samples[("agentwatch_loader_last_insert_timestamp_seconds", ())] > T0
        loader.stop()
        assert scrape()[("agentwatch_loader_running", ())] == 0
    finally:
        server.shutdown()


def test_assignment_scores_as_arrow_store_what_the_dataframe_path_stored(settings, client):
    """The loader hands ``assignment_scores`` rows to ClickHouse as Arrow; every column
    stores what the DataFrame path (pandas, the client's Native encoding) stored: times
    cut to whole milliseconds the same way, Float32 and UInt columns narrowed the same
    way, an absent p_fail NULL, the two JSON texts as they are."""
    from schemas.models import AssignmentScore
    from sinks.loader import assignment_score_row, insert_rows

    def record(i: int, at: float, **overrides: object) -> bytes:
        doc = {
            "agent_id": f"a{i}", "tenant_id": "t1", "timestamp": at, "score": 1 / 3,
            "performance": 0.1, "cost": 0.7, "availability": 1, "sla": 0.5,
            "weights": {"performance": 0.4, "cost": 0.3, "availability": 0.2, "sla": 0.1},
            "state": "active", "active_tasks": 1, "capacity": 4, "success_rate": 0.9,
            "response_time_ms": 120.25, "sla_met_rate": 1, "tasks_completed": 9,
            "tasks_failed": 1, "by_type": {"etl": {"p_success": 0.9, "outcomes": 10}},
            "cause": "heartbeat", **overrides,
        }  # fmt: skip
        return orjson.dumps(doc)

    values = [
        record(0, 1_795_608_000.0005),
        record(1, 1_795_608_000.9996, p_fail=0.25, by_type={}),
        record(2, 1_795_608_000.123456, tasks_completed=2**64 - 1, active_tasks=2**32 - 1),
        record(3, 1_795_608_000, capacity=0, response_time_ms=1e9, cause="task", state="busy"),
    ]
    rows = [assignment_score_row(value) for value in values]
    db = settings.clickhouse_database
    reference = pandas_frame(tuple(AssignmentScore.model_fields), ("timestamp",))
    client.insert_df("assignment_scores", reference(rows), database=db)
    arrow = LOADED["assignment_scores"].frame(rows)
    assert isinstance(arrow, pa.Table)
    insert_rows(client, "assignment_scores_latest", arrow, db)

    def stored(table: str) -> list[tuple]:
        return client.query(f"SELECT * FROM {db}.{table} FINAL ORDER BY agent_id").result_rows

    assert stored("assignment_scores_latest") == stored("assignment_scores")
    assert len(stored("assignment_scores")) == len(values)


def test_the_column_types_are_asked_once_per_table_and_again_after_forget(settings, client):
    """Given no types, clickhouse-connect asks the server (DESCRIBE TABLE) before each
    insert of a DataFrame; the loader keeps them instead, and after a failed write asks
    again (a column altered meanwhile is then inserted with its new type)."""
    from sinks.clickhouse import ColumnTypes

    asked: list[str] = []

    class Counting:
        def create_insert_context(self, table, *args, **kwargs):
            asked.append(table)
            return client.create_insert_context(table, *args, **kwargs)

    db = settings.clickhouse_database
    client.command(f"CREATE TABLE {db}.kept (a UInt8, b String) ENGINE = Memory")
    types = ColumnTypes(Counting(), db)
    first = types.of("kept", ["a", "b"])
    assert [t.name for t in first] == ["UInt8", "String"]
    assert types.of("kept", ("a", "b")) is first and asked == ["kept"]
    assert [t.name for t in types.of("kept", ["b"])] == ["String"]  # (other columns: asked)
    client.command(f"ALTER TABLE {db}.kept MODIFY COLUMN a UInt32")
    assert types.of("kept", ["a", "b"]) is first  # (kept until told)
    types.forget()
    assert [t.name for t in types.of("kept", ["a", "b"])] == ["UInt32", "String"]
    assert asked == ["kept"] * 3


class HeldInserts:
    """A client whose Arrow inserts (the heartbeats' rows, as the messages' own Arrow
    stream) wait until ``release`` is set, like an insert that takes long on a loaded
    machine."""

    def __init__(self, client) -> None:
        self._client = client
        self.waiting = threading.Event()
        self.release = threading.Event()

    def raw_insert(self, *args, **kwargs):
        self.waiting.set()
        assert self.release.wait(30), "never released"
        return self._client.raw_insert(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._client, name)


@pytest.mark.parametrize("findings_lane", [True, False])
def test_a_threat_is_inserted_while_the_heartbeats_insert_is_held_in_its_own_lane(
    settings, client, topics, loaders, findings_lane: bool
):
    """With the findings lane, a threat lands while the heartbeats' insert is still under
    way (it does not queue behind it); without it, the threat waits for that insert.
    Then everything lands once, and the lanes' figures add up."""
    from sinks.loader import LoaderLanes

    held = HeldInserts(client)
    lanes = LoaderLanes(
        settings.model_copy(update={"loader_findings_lane": findings_lane}),
        held,
        lambda: connect(settings),
    )
    loaders.append(lanes)
    assert len(lanes.lanes) == (2 if findings_lane else 1)
    produce_heartbeats(settings, [heartbeat(seq) for seq in range(100)])
    lanes.start()
    assert held.waiting.wait(30), "the heartbeats' insert never started"
    produce(settings, "threats", [threat(seq) for seq in range(3)], key=by_agent)
    try:
        if findings_lane:
            wait_until(lambda: count(client, settings, "threats") == 3, 30, "the 3 threats")
            assert count(client, settings, "metrics", final=False) == 0  # still held
        else:
            time.sleep(1.0)  # (a threat that could land has had 20 times its batch age)
            assert count(client, settings, "threats") == 0
    finally:
        held.release.set()

    def landed() -> tuple[int, int]:
        return count(client, settings, "metrics"), count(client, settings, "threats")

    wait_until(lambda: landed() == (100, 3), 30, "every row once")
    stats = lanes.stats()
    assert (stats.rows_inserted["metric_rows"], stats.rows_inserted["threats"]) == (100, 3)
    assert lanes.running


def pandas_frame(columns: tuple[str, ...], time_columns: tuple[str, ...]) -> Callable:
    """The reference: the DataFrame of row dicts the loader inserted (through the client's
    own encoding) before it wrote every table as Arrow; epoch seconds → UTC timestamps."""
    import pandas as pd

    def build(records: list[dict]) -> pd.DataFrame:
        frame = pd.DataFrame.from_records(records, columns=list(columns))
        for name in time_columns:
            frame[name] = pd.to_datetime(frame[name], unit="s", utc=True)
        return frame

    return build


def rows_of_every_table() -> dict[str, list[dict]]:
    """Rows of each table the loader writes from row dicts, made by its row functions from
    messages with the edge values: nulls and not, the largest counts, maps, lists, times
    with fractions of a millisecond."""
    from sinks.loader import (
        agent_row,
        alert_row,
        anomaly_row,
        baseline_row,
        command_row,
        deadletter_row,
        event_row,
        incident_row,
        registry_row,
        score_row,
        task_row,
        threat_row,
    )

    def each(make: Callable[[int], dict], n: int = 4) -> list[bytes]:
        return [orjson.dumps(make(i)) for i in range(n)]

    events = [
        event_row("state", value)
        for value in each(lambda i: {
            "type": "status_changed", "agent_id": f"agent-{i}", "tenant_id": "tenant-0",
            "actor": "system", "timestamp": T0 + i * 1.0005,
            "payload": {"from": None if i == 0 else "active", "to": "quarantined",
                        "reason": "score", "trigger": "quarantined", "transitions": 2**32 - 1,
                        "quarantine_until": None if i % 2 else T0 + 3600.25},
        })
    ]  # fmt: skip
    registrations = [
        event_row("state", value)
        for value in each(lambda i: {
            "type": "status_changed", "agent_id": f"agent-{i}", "tenant_id": "tenant-0",
            "actor": "ops-1", "timestamp": T0 + i / 3,
            "payload": {"from": None, "to": "registered", "trigger": "registered",
                        "registration": {
                            "name": f"A-{i}", "agent_type": "bot", "owner": "team",
                            "capabilities": [] if i else ["etl", "gpu"],
                            "max_concurrent_tasks": 100_000 if i == 1 else 1,
                            "resources": {"cpu": 2, "gpu": 0.5} if i % 2 else {},
                            "tags": {"zone": "eu"} if i else {},
                            **({"endpoint": "http://a.example/x"} if i == 2 else {})}},
        })
    ]  # fmt: skip
    components = {"performance": 1, "cost": 0.25, "availability": 0.5, "sla": 0}
    tasks = [
        {"type": "task_assigned", "agent_id": "agent-0", "tenant_id": "tenant-0",
         "actor": "api", "timestamp": T0 + 0.0005, "payload": orjson.dumps({
             "task_id": "k0", "score": 1 / 3, "assigned_by": "api-1", "weights": {},
             "components": components, "required_capabilities": ["etl"],
             "deadline": T0 + 60.125}).decode()},
        *({"type": "task_changed", "agent_id": f"agent-{i}", "tenant_id": "tenant-0",
           "actor": "system", "timestamp": T0 + i, "payload": orjson.dumps({
               "task_id": f"k{i}", "agent_id": f"agent-{i}", "tenant_id": "tenant-0",
               "status": "completed" if i % 2 else "accepted", "attempt": 2**16 - 1,
               "score": None if i == 2 else 0.7, "components": None if i == 2 else components,
               "p_success": 1 / 3, "assigned_at": T0, "accepted_at": T0 + 0.5,
               "finished_at": T0 + i if i % 2 else None, "duration_s": i if i % 2 else None,
               "sla_met": True if i == 1 else None, "agent_active_tasks": 2**32 - 1,
               "capacity": 4, "updated_at": T0 + i + 0.0004}).decode()}
          for i in (1, 2, 3)),
    ]  # fmt: skip
    evidence = {"condition": "avg(error_rate) over 300s > 0.2", "values": {"error_rate": 0.31},
                "window_start": T0 - 300, "window_end": T0}  # fmt: skip
    return {
        "baselines": [baseline_row(value) for value in each(lambda i: {
            "agent_id": f"agent-{i}", "tenant_id": "tenant-0", "timestamp": T0 + i / 7,
            "heartbeats": 2**63 + i, "warmed_up": i % 2 == 0,
            "mean": {"cpu_usage": 40.0 + i, "error_rate": 0.01}, "std": {} if i else {"a": 1.5},
        })],
        "agent_events": events,
        "agents": [agent_row(event) for event in events],
        "agent_registry": [registry_row(event) for event in registrations],
        "tasks": [task_row(event) for event in tasks],
        "anomalies": [anomaly_row(value) for value in each(lambda i: {
            "agent_id": f"agent-{i}", "tenant_id": "tenant-0", "timestamp": T0 + i / 7,
            "score": (1 + i) / 7, "threshold": 0.99, "is_anomaly": i % 2 == 0, "detector": "d",
            "reasons": [] if i == 3 else [{"feature": "cpu_usage", "value": 99,
                        "baseline_mean": 40, "baseline_std": 5, "z": 11.8}],
            "episode_start": None if i % 2 else T0 - 0.0004,
            "episode_end": T0 + 1.5 if i == 2 else None,
        })],
        "threats": [threat_row(value) for value in each(lambda i: {
            "agent_id": f"agent-{i}", "tenant_id": "tenant-0", "rule": "high_error_rate",
            "category": "PERFORMANCE", "severity": "HIGH", "first_seen": T0 + i / 3,
            "last_seen": T0 + i + 0.0006, "evidence": evidence,
        })],
        "alerts": [alert_row(value) for value in each(lambda i: {
            "fingerprint": f"{i:04x}", "agent_id": f"agent-{i}", "tenant_id": "tenant-0",
            "rule": "hot", "category": None if i == 0 else "PERFORMANCE",
            "severity": None if i == 0 else "HIGH", "state": "pending" if i == 0 else "firing",
            "started_at": T0 + i / 7, "fired_at": None if i == 0 else T0 + i,
            "resolved_at": T0 + 9.9995 if i == 3 else None, "last_seen": T0 + i,
            "updated_at": T0 + i + 0.001, "flapping": i == 2,
            "flap_count": 2**32 - 1 if i == 2 else i, "summary": f"hot on agent-{i}",
            "evidence": None if i == 0 else evidence, "silenced": i == 1,
        })],
        "security_scores": [score_row(value) for value in each(lambda i: {
            "agent_id": f"agent-{i}", "tenant_id": "tenant-0", "timestamp": T0 + i / 7,
            "score": 80 - i, "delta": -20, "cause": "excessive_errors",
            "first_seen": None if i % 2 else T0 - 300.0005,
        })],
        "commands": [command_row(value) for value in each(lambda i: {
            "command_id": f"c{i}", "agent_id": f"agent-{i}", "tenant_id": "tenant-0",
            "command": "quarantine", "reason": "score 10 < 20", "issued_at": T0 + i / 7,
            "actor": "system", "score": None if i % 2 else 10.5,
            "task_id": f"k{i}" if i == 2 else None,
        })],
        "incidents": [incident_row(value) for value in each(lambda i: {
            "incident_id": f"i{i}", "tenant_id": "tenant-0", "rule": "data_exfiltration",
            "category": "SECURITY", "agent_ids": [f"agent-{j}" for j in range(i + 1)],
            "truncated": i == 3, "first_seen": T0 + i / 7, "last_seen": T0 + i,
            "revision": 2**32 - 1 if i == 1 else i,
        })],
        "deadletter": [deadletter_row(value) for value in each(lambda i: {
            "topic": "agents.metrics", "partition": 2**32 - 1 if i == 1 else i,
            "offset": 2**64 - 1 if i == 2 else i, "reason": "invalid JSON",
            "key": None if i % 2 else f"agent-{i}", "value_b64": "e30=", "value_bytes": 2,
            "received_at": T0 + i / 7, "cluster_id": "" if i else "log-1",
        })],
    }  # fmt: skip


def test_rows_written_as_arrow_are_the_rows_pandas_wrote(settings, client):
    """Every table the loader writes from row dicts is written as an Arrow table, no longer
    through pandas: the same rows, read back, are what the pandas frames stored (times cut
    to the same millisecond, nulls kept, maps, lists and the largest counts as they were)."""
    from sinks.loader import CHANNEL_PROJECTIONS, TASKS, _event_frame

    old = settings.model_copy(update={"clickhouse_database": settings.clickhouse_database + "_pd"})
    create_schema(client, old)
    arrow_frames = {
        **{loaded.table: loaded.frame for loaded in LOADED.values() if loaded.frame},
        **{p.table: p.frame for ps in CHANNEL_PROJECTIONS.values() for p in ps},
        "agent_events": _event_frame,
        "tasks": TASKS.frame,
    }
    every = rows_of_every_table()
    written_from_dicts = {t for t in arrow_frames if not t.startswith("assignment_scores")}
    assert set(every) == written_from_dicts  # (assignment scores: the test above)
    for table, rows in every.items():
        assert all(row is not None for row in rows), table
        arrow = arrow_frames[table](rows)
        assert isinstance(arrow, pa.Table)
        insert_rows(client, table, arrow, settings.clickhouse_database)
        times = tuple(f.name for f in arrow.schema if pa.types.is_timestamp(f.type))
        reference = pandas_frame(tuple(arrow.schema.names), times)
        client.insert_df(table, reference(rows), database=old.clickhouse_database)
        stored = [
            client.query(f"SELECT * FROM {db}.{table} ORDER BY tuple(*)").result_rows
            for db in (settings.clickhouse_database, old.clickhouse_database)
        ]
        assert stored[0] == stored[1] and len(stored[0]) == len(rows), table


def test_rows_whose_values_do_not_fit_their_columns_are_dropped_alone(caplog):
    """The net under the row functions' range checks: a row whose values cannot be written
    (a count beyond its column, a null where the column takes none) is dropped and logged
    alone; the rest of its batch is written."""
    from sinks.loader import framed

    rows = rows_of_every_table()["alerts"]
    rows[1] = {**rows[1], "flap_count": 2**32}
    rows[3] = {**rows[3], "summary": None}
    with caplog.at_level(logging.WARNING, logger="sinks.loader"):
        table, dropped = framed("alerts", LOADED["alerts"].frame, rows)
    assert dropped == 2
    assert table.column("fingerprint").to_pylist() == [
        rows[0]["fingerprint"],
        rows[2]["fingerprint"],
    ]
    assert [r.getMessage()[:24] for r in caplog.records] == ["row_dropped table=alerts"] * 2
