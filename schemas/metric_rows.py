"""``agents.metric_rows``: the heartbeats the dataflow took, as Arrow record batches.

Decode once. The dataflow parses and validates every heartbeat
(:func:`schemas.heartbeats.parse_heartbeats`) and its shards decide which to take
(registered, right tenant, not decommissioned); what they take goes on this topic as
Arrow IPC streams (:func:`encode`, of about :data:`MESSAGE_BYTES` each, in the
``metrics`` table's layout). The loader hands them to ClickHouse as they are
(``FORMAT ArrowStream``) after a vectorised check (:func:`decode`): no JSON is parsed
a second time and no Python object is made per row. A heartbeat the dataflow refused
is in ``agents.deadletter``, never in ``metrics``.

>>> from schemas.heartbeats import parse_heartbeats
>>> beat = b'{"agent_id":"a1","tenant_id":"t1","timestamp":1764072000.5,"cpu_usage":45.2,'\\
...        b'"memory_usage":62.1,"disk_usage":35.0,"network_latency":12.5,"active_tasks":3,'\\
...        b'"completed_tasks":150,"failed_tasks":2,"error_rate":0.013,'\\
...        b'"response_time_avg":234.5,"uptime_seconds":86400}'
>>> batch, _ = parse_heartbeats([beat, beat.replace(b'"a1"', b'"a2"')])
>>> [message] = encode(batch)
>>> table = decode(message)
>>> table.num_rows, table.column("agent_id").to_pylist(), table.column("status").to_pylist()
(2, ['a1', 'a2'], ['', ''])
>>> decode(b"not arrow")
Traceback (most recent call last):
...
ValueError: not an Arrow IPC stream: ...
"""

from __future__ import annotations

import importlib.abc
import sys

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from schemas.heartbeats import FLOAT_FIELDS, INT_FIELDS, HeartbeatBatch, parse_heartbeats
from schemas.models import TIMESTAMP_RANGE

#: What a message aims at: half of the 1 MB that brokers and librdkafka take by default
#: (``message.max.bytes``), so that a batch read by the loader is a few messages. Rows
#: are ~140 B with short ids (~3,700 rows a message) and up to ~1.1 KB with ids of 128
#: four-byte characters, which the parser admits.
MESSAGE_BYTES = 512 * 1024
#: No message is larger than this (a message that comes out larger, its rows longer than
#: the batch's average, is cut in two again): librdkafka's default ``message.max.bytes``.
MAX_MESSAGE_BYTES = 1_000_000

_TEXT = ("agent_id", "tenant_id")
#: The layout of a message: the ``metrics`` table's columns in its order. Counters are
#: int64 here (ClickHouse narrows them to the table's UInt32/UInt64 on insert, after
#: :func:`decode` checked that they fit); times are milliseconds, as the table keeps them.
SCHEMA = pa.schema(
    [
        pa.field("agent_id", pa.string(), nullable=False),
        pa.field("tenant_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("ms", tz="UTC"), nullable=False),
        *(pa.field(name, pa.float64(), nullable=False) for name in FLOAT_FIELDS),
        *(pa.field(name, pa.int64(), nullable=False) for name in INT_FIELDS),
        pa.field("status", pa.string(), nullable=False),
    ]
)
_TIME_RANGE_MS = tuple(int(bound * 1000) for bound in TIMESTAMP_RANGE)
#: What :func:`decode` holds each numeric column to (times in milliseconds).
_BOUNDS = {**FLOAT_FIELDS, **INT_FIELDS, "timestamp": _TIME_RANGE_MS}


def encode(batch: HeartbeatBatch, compression: str = "none") -> list[bytes]:
    """The batch's rows as Arrow IPC streams of about :data:`MESSAGE_BYTES` each before
    compression, none over :data:`MAX_MESSAGE_BYTES` (none for an empty batch), in the
    batch's order; ``compression`` (``none``, ``lz4`` or ``zstd``) compresses each column's
    buffers in the stream (Arrow's IPC body compression: pyarrow and ClickHouse's
    ``ArrowStream`` read it as they read a plain one)."""
    options = _OPTIONS[compression]
    rows = len(batch)
    if not rows:
        return []
    columns = [
        pa.array(batch.agent_id, pa.string()),
        pa.array(batch.tenant_id, pa.string()),
        utc_millis(batch.timestamp),
        *(pa.array(batch.metrics[name], pa.float64()) for name in FLOAT_FIELDS),
        *(pa.array(batch.metrics[name].astype(np.int64), pa.int64()) for name in INT_FIELDS),
        pa.array([status or "" for status in batch.status], pa.string()),
    ]
    table = pa.Table.from_arrays(columns, schema=SCHEMA)
    per_message = max(1, MESSAGE_BYTES * rows // max(table.nbytes, 1))
    return [
        stream
        for part in table.to_batches(max_chunksize=per_message)
        for stream in _streams(part, options)
    ]


#: The IPC write options of each ``metric_rows_compression``.
_OPTIONS = {
    "none": ipc.IpcWriteOptions(),
    "lz4": ipc.IpcWriteOptions(compression="lz4"),
    "zstd": ipc.IpcWriteOptions(compression="zstd"),
}


def _streams(part: pa.RecordBatch, options: ipc.IpcWriteOptions) -> list[bytes]:
    """``part`` as one stream, or as several if that one would be over
    :data:`MAX_MESSAGE_BYTES` (cut in halves until each fits; one row always fits: a
    heartbeat is at most ``max_message_bytes``, 64 KB by default)."""
    stream = _stream(part, options)
    if len(stream) <= MAX_MESSAGE_BYTES or part.num_rows == 1:
        return [stream]
    half = part.num_rows // 2
    return _streams(part.slice(0, half), options) + _streams(part.slice(half), options)


def pyarrow_without_pandas() -> bool:
    """Have pyarrow take pandas as absent, before its first conversion of a Python list;
    whether it now does (False: pandas was imported already, nothing changed).

    The first time pyarrow converts a list (:func:`encode`'s ids) it imports pandas, to
    see whether it was handed pandas objects: ~0.2 s of the dataflow's first batch, for a
    process that hands it lists of ``str``. pyarrow asks once and keeps the answer, so
    an import refused at that moment makes it skip pandas from then on; pandas itself
    stays importable (the parser's rare paths, ``HeartbeatBatch.to_frame``, still load
    it when they need it). For the dataflow's process only: the loader writes pandas
    frames through pyarrow.
    """
    shim = getattr(pa.lib, "_pandas_api", None)  # (pyarrow's own; absent: nothing to do)
    if "pandas" in sys.modules or shim is None:
        return False

    class _RefusePandas(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: object = None, target: object = None) -> None:
            if name.partition(".")[0] == "pandas":
                raise ImportError("left out of pyarrow's conversions by pyarrow_without_pandas")

    refuse = _RefusePandas()
    sys.meta_path.insert(0, refuse)
    try:
        return not getattr(shim, "have_pandas", True)  # (asks, and keeps the answer)
    finally:
        sys.meta_path.remove(refuse)


def utc_millis(seconds: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    """Epoch seconds (finite, after 1970) as an Arrow column of UTC times in whole
    milliseconds, cut as the tables written through pandas get them: pandas' conversion
    to nanoseconds (whole seconds, plus the fraction rounded to 9 digits), then the
    milliseconds. Done here with numpy, so the dataflow does not load pandas;
    ``tests/test_metric_rows.py`` holds it equal to pandas'. Where ``mask`` is true the
    time is null (whatever ``seconds`` holds there).

    >>> utc_millis(np.array([1795608000.0005, 1795608000.9996])).to_pylist()[1].microsecond
    999000
    """
    whole = seconds.astype(np.int64)
    nanos = whole * 1_000_000_000 + (np.round(seconds - whole, 9) * 1e9).astype(np.int64)
    return pa.array(nanos // 1_000_000, pa.timestamp("ms", tz="UTC"), mask=mask)


def encode_json(values: list[bytes]) -> list[bytes]:
    """The messages the dataflow would publish for raw heartbeat values if its shards took
    every valid one (for tests and benchmarks that feed the loader without a dataflow);
    invalid values are left out.

    >>> encode_json([b"{}", b"not json"])
    []
    """
    return encode(parse_heartbeats(values)[0])


def _stream(batch: pa.RecordBatch, options: ipc.IpcWriteOptions) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, SCHEMA, options=options) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def decode(value: bytes | None) -> pa.Table:
    """The rows of one message, checked to be what the ``metrics`` table can hold (the
    layout of :data:`SCHEMA`, no nulls, every number in its field's range, times in
    ``TIMESTAMP_RANGE``, ids not empty); ``ValueError`` saying what is wrong otherwise.
    Vectorised: a few array operations per message, whatever its rows."""
    source = pa.BufferReader(value or b"")
    try:
        table = ipc.open_stream(source).read_all()
    except (pa.ArrowException, OSError) as exc:  # (any of pyarrow's: a bad message, not a bug)
        raise ValueError(f"not an Arrow IPC stream: {exc}") from None
    if source.tell() != len(value):
        # (the reader stops at the first end marker; ClickHouse, reading the messages joined
        # as one stream, would stop there too, and lose the rows of the messages after it)
        raise ValueError(
            f"not one Arrow IPC stream: {len(value) - source.tell()} bytes after its end"
        )
    if not table.schema.equals(SCHEMA):
        raise ValueError(f"not the metric_rows layout: {table.schema.to_string()[:300]}")
    if not table.num_rows:
        return table
    for name in SCHEMA.names:
        if table.column(name).null_count:
            raise ValueError(f"{name}: null values")
    for name, (low, high) in _BOUNDS.items():
        for chunk in _chunks(table, name):
            _require_within(name, _numbers(chunk), low, high)
    for name in _TEXT:
        if any(_has_empty(chunk) for chunk in _chunks(table, name)):
            raise ValueError(f"{name}: empty")
    return table


#: The end of an Arrow IPC stream: a continuation marker and a metadata length of 0.
_END = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def one_stream(values: list[bytes]) -> bytes | None:
    """Messages that :func:`decode` took, as one Arrow IPC stream (what ClickHouse's
    ``ArrowStream`` format reads: a stream ends at its first end marker) without a batch
    decoded or written again: the first message's schema message, then the record
    batches of every message, as they came, then one end marker. None if the messages do
    not all begin with that very schema message (written by another pyarrow, say) or do
    not end with the marker: the caller then writes the decoded tables anew.

    >>> from schemas.heartbeats import parse_heartbeats
    >>> beats = [b'{"agent_id":"a%d","tenant_id":"t1","timestamp":1764072000,"cpu_usage":1,'
    ...     b'"memory_usage":1,"disk_usage":1,"network_latency":1,"active_tasks":1,'
    ...     b'"completed_tasks":1,"failed_tasks":0,"error_rate":0,"response_time_avg":1,'
    ...     b'"uptime_seconds":1}' % i for i in range(3)]
    >>> messages = [m for beat in beats for m in encode(parse_heartbeats([beat])[0])]
    >>> decode(one_stream(messages)).column("agent_id").to_pylist()
    ['a0', 'a1', 'a2']
    >>> one_stream([messages[0], b"not arrow"]) is None
    True
    """
    first = values[0]
    if first[:4] != _END[:4]:  # (not the stream format of Arrow ≥ 0.15)
        return None
    # the schema message: marker, metadata length, metadata (a schema has no body)
    schema = first[: 8 + int.from_bytes(first[4:8], "little")]
    if not all(value.startswith(schema) and value.endswith(_END) for value in values):
        return None
    start, views = len(schema), map(memoryview, values)
    return b"".join([schema, *(view[start:-8] for view in views), _END])


def _require_within(name: str, values: np.ndarray, low: float, high: float) -> None:
    """Refuse values outside ``[low, high]``, or NaN: numpy's reductions, a few µs a
    column (pyarrow's compute functions cost ~20 µs a call, 270 µs a message)."""
    lowest, highest = values.min(), values.max()
    if not (low <= lowest and highest <= high):  # (NaN is neither: a NaN is refused too)
        kind = "NaN" if np.isnan(lowest) or np.isnan(highest) else f"values {lowest}..{highest}"
        raise ValueError(f"{name}: {kind} outside [{low:g}, {high:g}]")


def _chunks(table: pa.Table, name: str) -> list[pa.Array]:
    """The column's chunks that hold rows (an empty one may have no buffers)."""
    return [chunk for chunk in table.column(name).chunks if len(chunk)]


def _numbers(chunk: pa.Array) -> np.ndarray:
    """A numeric chunk without nulls as numpy sees it: a view of its values' buffer (times:
    their int64 milliseconds). Not ``to_numpy()``: it would import pandas, which the
    dataflow's process keeps out (:func:`pyarrow_without_pandas`)."""
    dtype = np.float64 if pa.types.is_floating(chunk.type) else np.int64
    return np.frombuffer(chunk.buffers()[1], dtype)[chunk.offset : chunk.offset + len(chunk)]


def _has_empty(strings: pa.StringArray) -> bool:
    """Whether any string of the array is empty: two equal offsets in a row."""
    offsets = np.frombuffer(strings.buffers()[1], np.int32)
    offsets = offsets[strings.offset : strings.offset + len(strings) + 1]
    return bool((offsets[1:] == offsets[:-1]).any())
