"""``agents.metric_rows`` (schemas/metric_rows.py): the dataflow's validated heartbeats as
Arrow batches, and the loader's check of them. Pure logic; the loader's handling on the real
broker and chDB is in tests/test_loader.py."""

from __future__ import annotations

import contextlib

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pytest

from schemas.heartbeats import FLOAT_FIELDS, INT_FIELDS, parse_heartbeats
from schemas.metric_rows import (
    MAX_MESSAGE_BYTES,
    MESSAGE_BYTES,
    SCHEMA,
    decode,
    encode,
    one_stream,
    utc_millis,
)
from sinks.loader import LOADED

T0 = 1_764_072_000.0


def beats(n: int, **overrides: object) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "agent_id": f"agent-{i:05d}",
                "tenant_id": f"tenant-{i % 3}",
                "timestamp": T0 + i * 0.0017,  # milliseconds and below, to check rounding
                "cpu_usage": i % 100,
                "memory_usage": 50.5,
                "disk_usage": 30.0,
                "network_latency": 12.5,
                "active_tasks": i % 7,
                "completed_tasks": 2**53 - i,  # the largest counters the parser admits
                "failed_tasks": 2,
                "error_rate": 0.013,
                "response_time_avg": 234.5,
                "uptime_seconds": 86400.0,
                "bytes_out": i,
                **({"status": "busy"} if i % 2 else {}),
                **overrides,
            }
        )
        for i in range(n)
    ]


def test_the_rows_come_back_as_the_parser_made_them():
    batch, rejected = parse_heartbeats(beats(500))
    assert not rejected
    [message] = encode(batch)
    table = decode(message)
    assert table.schema.equals(SCHEMA)
    assert table.column("agent_id").to_pylist() == batch.agent_id
    assert table.column("tenant_id").to_pylist() == batch.tenant_id
    assert table.column("status").to_pylist() == [s or "" for s in batch.status]
    for name in FLOAT_FIELDS:
        np.testing.assert_array_equal(table.column(name).to_numpy(), batch.metrics[name])
    for name in INT_FIELDS:
        assert table.column(name).to_pylist() == batch.metrics[name].astype(np.int64).tolist()


def test_times_are_the_milliseconds_every_other_table_stores():
    """The loader's other tables get times from their row dicts' epoch seconds (Arrow, as
    pandas and clickhouse-connect cut them before: whole milliseconds, floor): the same
    heartbeat must have the same time in ``metrics`` and in ``anomalies`` to be joined."""
    batch, _ = parse_heartbeats(beats(300))
    table = decode(encode(batch)[0])
    rows = [
        {"agent_id": "a", "tenant_id": "t", "timestamp": t, "score": 0.5, "threshold": 0.99,
         "is_anomaly": False, "detector": "d", "top_feature": "", "reasons": "[]",
         "episode_start": None, "episode_end": None}
        for t in batch.timestamp.tolist()
    ]  # fmt: skip
    anomalies = LOADED["anomalies"].frame(rows)
    stored = table.column("timestamp").cast(pa.int64()).to_pylist()
    assert anomalies.column("timestamp").cast(pa.int64()).to_pylist() == stored
    floor_ms = pd.to_datetime(pd.Series(batch.timestamp), unit="s", utc=True)
    assert (floor_ms.dt.as_unit("ns").astype("int64") // 1_000_000).tolist() == stored


def test_a_large_batch_is_cut_into_messages_of_bounded_size():
    batch, _ = parse_heartbeats(beats(10_000))
    messages = encode(batch)
    assert len(messages) > 1
    assert max(map(len, messages)) <= MESSAGE_BYTES * 1.1
    assert pd.concat([decode(m).to_pandas() for m in messages])["agent_id"].tolist() == (
        batch.agent_id
    )
    assert encode(parse_heartbeats([])[0]) == []


def test_no_message_is_over_the_brokers_limit_even_with_the_longest_ids():
    """Ids of 128 four-byte characters (the parser admits them) make rows of ~1.1 KB: the
    messages are cut by bytes, not rows, and a part whose rows are longer than the batch's
    average is cut again (here: 3,000 short rows, then 1,000 long ones)."""
    long_ids = [
        orjson.dumps(
            {
                **orjson.loads(value),
                "agent_id": "\U0001f600" * 127 + str(i % 10),
                "tenant_id": "\U0001f601" * 128,
            }
        )  # fmt: skip
        for i, value in enumerate(beats(1000))
    ]
    batch, rejected = parse_heartbeats(beats(3000) + long_ids)
    assert not rejected and len(batch) == 4000
    messages = encode(batch)
    assert max(map(len, messages)) <= MAX_MESSAGE_BYTES
    assert sum(decode(m).num_rows for m in messages) == 4000
    assert pd.concat([decode(m).to_pandas() for m in messages])["agent_id"].tolist() == (
        batch.agent_id
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "not an Arrow IPC stream"),
        (b"", "not an Arrow IPC stream"),
        (b"\xff" * 64, "not an Arrow IPC stream"),
        (b'{"agent_id": "a"}', "not an Arrow IPC stream"),
    ],
)
def test_what_is_not_an_arrow_stream_is_refused_with_a_reason(value, reason):
    with pytest.raises(ValueError, match=reason):
        decode(value)


def test_a_damaged_message_is_refused_with_a_reason_whatever_byte_broke():
    """Every byte of a message flipped three ways: each result is taken or refused with
    ``ValueError``, the loader's "skip it, with its reason". Before, some flips raised
    pyarrow's ArrowNotImplementedError, which the loader took for a failed insert and
    retried forever, holding back every topic of its lane (found by a fuzzer)."""
    [message] = encode(parse_heartbeats(beats(5))[0])
    for at in range(len(message)):
        for bits in (0xFF, 0x01, 0x80):
            damaged = bytearray(message)
            damaged[at] ^= bits
            with contextlib.suppress(ValueError):  # (refused with its reason)
                decode(bytes(damaged))


def test_another_layout_is_refused():
    table = pa.table({"agent_id": ["a"], "cpu_usage": [1.0]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    with pytest.raises(ValueError, match="not the metric_rows layout"):
        decode(sink.getvalue().to_pybytes())


def test_times_are_cut_to_milliseconds_exactly_as_pandas_cuts_them():
    """``utc_millis`` does pandas' conversion with numpy (the dataflow does not load
    pandas): equal at random times, whole and half milliseconds and their neighbours."""
    rng = np.random.default_rng(5)
    low, high = 946_684_800, 4_102_444_800  # (2000–2100, the heartbeats' range)
    whole = np.floor(rng.uniform(low, high, 50_000))
    millis = rng.integers(0, 1000, len(whole)) / 1000
    nudges = rng.choice([0.0, 5e-4, 4.999e-4, 5.001e-4, 1e-7, -1e-7, 1e-9], len(whole))
    for seconds in (rng.uniform(low, high, 50_000), whole + millis, whole + millis + nudges):
        expected = pd.to_datetime(seconds, unit="s", utc=True).as_unit("ns").asi8 // 1_000_000
        got = utc_millis(seconds).cast(pa.int64()).to_numpy()
        assert np.array_equal(got, expected)


_WITHOUT_PANDAS = """
import sys
from schemas.heartbeats import parse_heartbeats
from schemas.metric_rows import decode, encode, pyarrow_without_pandas

beat = (b'{"agent_id":"a1","tenant_id":"t1","timestamp":"%s","cpu_usage":45.2,'
        b'"memory_usage":62.1,"disk_usage":35.0,"network_latency":12.5,"active_tasks":3,'
        b'"completed_tasks":150,"failed_tasks":2,"error_rate":0.013,'
        b'"response_time_avg":234.5,"uptime_seconds":86400}')
assert pyarrow_without_pandas()
batch, rejected = parse_heartbeats([beat % b"2026-12-07T06:35:44.5Z"])
utc = float(batch.timestamp[0])
assert not rejected and "pandas" not in sys.modules, "pyarrow still imported pandas"
assert decode(encode(batch)[0]).column("agent_id").to_pylist() == ["a1"]
assert "pandas" not in sys.modules
# the parser's rare path for other ISO-8601 forms still loads pandas, which still imports
batch, rejected = parse_heartbeats([beat % b"2026-12-07T07:35:44.5+01:00"])
assert not rejected and float(batch.timestamp[0]) == utc, (rejected, batch.timestamp)
assert "pandas" in sys.modules
assert not pyarrow_without_pandas()  # (pandas is in: nothing to do)
print("ok")
"""


@pytest.mark.e2e
def test_the_dataflows_pyarrow_converts_without_pandas_and_pandas_still_imports():
    """The dataflow tells pyarrow to leave pandas out of its conversions (~0.2 s of its
    start): encoding then imports no pandas, and a parser path that needs pandas gets it.
    In a process of its own, as the dataflow's: this one has pandas loaded already."""
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PANDAS],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_compressed_messages_hold_the_same_rows_in_fewer_bytes(compression):
    batch, _ = parse_heartbeats(beats(5000))
    plain, packed = encode(batch), encode(batch, compression)
    assert sum(map(len, packed)) < 0.7 * sum(map(len, plain))
    assert decode(one_stream(packed)).equals(decode(one_stream(plain)))


def test_messages_join_into_one_stream_of_all_their_rows_or_none():
    """The loader hands ClickHouse the messages' own batches as one stream: every row of
    every message, in order; messages whose schema messages differ in their bytes are
    not joined (the loader then writes the tables anew)."""
    batch, _ = parse_heartbeats(beats(5000))
    messages = encode(batch) + encode(parse_heartbeats(beats(10))[0])
    assert len(messages) >= 3
    joined = decode(one_stream(messages))
    expected = pa.concat_tables([decode(m) for m in messages])
    assert joined.equals(expected) and joined.num_rows == 5010

    table = decode(messages[0])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema.with_metadata({b"writer": b"other"})) as w:
        w.write_table(table)
    other = sink.getvalue().to_pybytes()
    assert decode(other).num_rows == table.num_rows  # (the same layout)
    assert one_stream([messages[0], other]) is None
    assert one_stream([other, messages[0]]) is None
    assert one_stream([other, other]) is not None
