"""Validate a batch of raw heartbeat messages into numpy columns.

The hot path of agentwatch: one call parses thousands of heartbeats with one
``orjson`` call and checks them column by column with numpy, applying the
same rules as :class:`schemas.models.Heartbeat`. Rejected messages come back
with a reason an operator can act on; they never stop the batch.

>>> ok = b'{"agent_id":"a1","tenant_id":"t1","timestamp":1764072000,"cpu_usage":45.2,'\\
...      b'"memory_usage":62.1,"disk_usage":35.0,"network_latency":12.5,"active_tasks":3,'\\
...      b'"completed_tasks":150,"failed_tasks":2,"error_rate":0.013,'\\
...      b'"response_time_avg":234.5,"uptime_seconds":86400,"bytes_out":1024}'
>>> batch, rejected = parse_heartbeats([ok, b'{"agent_id": 7}', ok.replace(b'45.2', b'140')])
>>> batch.agent_id, batch.index.tolist()
(['a1'], [0])
>>> [(i, reason.split(':')[0]) for i, reason in rejected]
[(1, 'missing fields'), (2, 'cpu_usage')]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
import numpy as np
import orjson

from schemas.models import (
    AGENT_STATES,
    MAX_MILLISECONDS,
    MAX_UPTIME_S,
    TIMESTAMP_RANGE,
    Heartbeat,
    addressable,
)

if TYPE_CHECKING:
    import pandas as pd

#: Float metrics with their allowed range (inclusive).
FLOAT_FIELDS: dict[str, tuple[float, float]] = {
    "cpu_usage": (0.0, 100.0),
    "memory_usage": (0.0, 100.0),
    "disk_usage": (0.0, 100.0),
    "network_latency": (0.0, MAX_MILLISECONDS),
    "error_rate": (0.0, 1.0),
    "response_time_avg": (0.0, MAX_MILLISECONDS),
    "uptime_seconds": (0.0, MAX_UPTIME_S),
}
#: Integer counters (must be JSON integers) with their allowed range (inclusive); the
#: upper bounds are what the ``metrics`` table's columns hold.
INT_FIELDS: dict[str, tuple[int, int]] = {
    "active_tasks": (0, 2**32 - 1),
    "completed_tasks": (0, 2**53),
    "failed_tasks": (0, 2**53),
    "bytes_out": (0, 2**53),
}
NUMERIC_FIELDS = (*FLOAT_FIELDS, *INT_FIELDS)
REQUIRED = frozenset(name for name, f in Heartbeat.model_fields.items() if f.is_required())
ALLOWED = frozenset(Heartbeat.model_fields)
_STATES = frozenset(AGENT_STATES)
_STATES_OR_NONE = _STATES | {None}
#: Every field with the value it takes when missing (only optional fields may be missing).
_FIELD_DEFAULTS = {
    name: None if f.is_required() else f.default for name, f in Heartbeat.model_fields.items()
}
#: The fields an object of each size has when it has no unknown one: the required, or all.
_FIELDS_OF_SIZE = {
    len(REQUIRED): tuple(name for name in Heartbeat.model_fields if name in REQUIRED),
    len(ALLOWED): tuple(Heartbeat.model_fields),
}
_FIELD_GETTERS = {name: itemgetter(name) for name in Heartbeat.model_fields}
#: Messages decoded per ``orjson`` call: small enough for the decoded objects to stay in
#: the CPU cache until their values are taken out (measured: 250 or 1000 rows beat 5000
#: by 5–15 %).
_DECODE_SLICE = 500
_NUMBER_TYPES = (int, float)


#: An id as the typed decoder reads it: a string of 1–128 characters (code points, as
#: ``len`` counts them).
_WireId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


def _wire_type(name: str) -> object:
    """The type the typed decoder reads a field as (:func:`_typed_batch`). The ids'
    lengths and the states are checked by the decoder as it reads; the numbers' ranges
    and the timestamp's form after, on the columns, as on the general path."""
    if name in FLOAT_FIELDS:
        return float
    if name in INT_FIELDS:
        return int
    if name == "timestamp":
        return str | float
    if name == "status":
        return Literal[*AGENT_STATES] | None
    return _WireId


#: A heartbeat as the typed decoder reads it: the model's fields, unknown ones refused,
#: the optional ones with the model's defaults.
_Wire = msgspec.defstruct(
    "_Wire",
    [
        (name, _wire_type(name)) if f.is_required() else (name, _wire_type(name), f.default)
        for name, f in Heartbeat.model_fields.items()
    ],
    forbid_unknown_fields=True,
    gc=False,  # (only texts and numbers: no cycles, and ~6 % cheaper to make)
)
_WIRE_DECODER = msgspec.json.Decoder(_Wire)
_WIRE_NUMBERS = tuple(
    (name, attrgetter(name), FLOAT_FIELDS.get(name) or INT_FIELDS[name]) for name in NUMERIC_FIELDS
)
_WIRE_TEXTS = tuple(
    (name, attrgetter(name)) for name in Heartbeat.model_fields if name not in NUMERIC_FIELDS
)


@dataclass(slots=True)
class HeartbeatBatch:
    """Valid heartbeats of one batch, as columns.

    ``index[i]`` is the position of row ``i`` in the input sequence, so callers
    can find the Kafka offset of each row.
    """

    index: np.ndarray
    agent_id: list[str]
    tenant_id: list[str]
    timestamp: np.ndarray  # epoch seconds, float64
    metrics: dict[str, np.ndarray]  # NUMERIC_FIELDS → float64 column
    status: list[str | None] = field(default_factory=list)
    #: The source partition the batch was read from (a partition is read in order: the
    #: shards' event clocks are kept per partition, see :mod:`agentwatch.liveness`).
    partition: int = 0
    #: The raw messages the batch was parsed from (the dataflow's ``RawBatch``: topic,
    #: partition, offsets, keys, values), so a heartbeat refused later (by the shard's
    #: registry) can be dead-lettered with its original bytes; None when not known.
    #: Pickled (to another worker), it keeps only the messages of the batch's rows.
    source: object | None = None

    def __len__(self) -> int:
        return len(self.agent_id)

    def __getstate__(self) -> dict:
        state = {name: getattr(self, name) for name in self.__slots__}
        if self.source is not None:  # (not a whole raw batch for every sub-batch)
            state["source"] = self.source.only(self.index.tolist())
            state["index"] = np.arange(len(self.index), dtype=np.int64)
        return state

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)

    def take(self, rows: np.ndarray) -> HeartbeatBatch:
        """The sub-batch of the given row positions."""
        positions = rows.tolist()
        return HeartbeatBatch(
            index=self.index[rows],
            agent_id=[self.agent_id[i] for i in positions],
            tenant_id=[self.tenant_id[i] for i in positions],
            timestamp=self.timestamp[rows],
            metrics={name: col[rows] for name, col in self.metrics.items()},
            status=[self.status[i] for i in positions],
            partition=self.partition,
            source=self.source,
        )

    def to_frame(self) -> pd.DataFrame:
        """Columns as a DataFrame in the ``metrics`` table's layout."""
        import pandas as pd  # (not at the top: the dataflow never needs pandas)

        frame = pd.DataFrame(
            {
                "agent_id": self.agent_id,
                "tenant_id": self.tenant_id,
                "timestamp": pd.to_datetime(self.timestamp, unit="s", utc=True),
                **{name: self.metrics[name] for name in FLOAT_FIELDS},
                **{name: self.metrics[name].astype(np.int64) for name in INT_FIELDS},
                "status": [s or "" for s in self.status],
            }
        )
        return frame


def parse_heartbeats(
    values: list[bytes], max_message_bytes: int = 64 * 1024
) -> tuple[HeartbeatBatch, list[tuple[int, str]]]:
    """Parse and validate raw heartbeat values.

    Returns the valid rows as a :class:`HeartbeatBatch` and, for every
    rejected message, ``(position, reason)``. A row's reason is the first
    rule it breaks, checking fields in this order: the set of fields, the
    numbers (in ``NUMERIC_FIELDS`` order), the timestamp, then the texts.

    A batch of well-typed messages (the usual one) is decoded by a typed
    decoder and checked by the same rules; if any message is not well typed
    or breaks a rule, the whole batch takes the general path, which finds the
    reasons (so the decisions and reasons never depend on the fast path).
    """
    batch = _typed_batch(values, max_message_bytes)
    if batch is not None:
        return batch, []
    return _parse_general(values, max_message_bytes)


def _parse_general(
    values: list[bytes], max_message_bytes: int
) -> tuple[HeartbeatBatch, list[tuple[int, str]]]:
    """:func:`parse_heartbeats` for any batch: every message decoded to what JSON says
    and each rule checked on it, finding the reasons."""
    rejected: dict[int, str] = {}
    raw = _uniform_columns(values, max_message_bytes)
    if raw is not None:
        positions = list(range(len(values)))
    else:
        docs = _decode(values, max_message_bytes, rejected)
        positions, raw = _columns(docs, rejected)
    return _checked(positions, raw, rejected)


def _checked(
    positions: list[int], raw: dict[str, list[object]], rejected: dict[int, str]
) -> tuple[HeartbeatBatch, list[tuple[int, str]]]:
    """The rows of ``raw`` (from the messages at ``positions``) that keep every rule, and
    the reasons of those that do not, with those already in ``rejected``."""
    columns: dict[str, np.ndarray] = {}
    reasons: dict[int, str] = {}
    for name in NUMERIC_FIELDS:
        col = _numeric_column(name, raw[name], reasons)
        low, high = FLOAT_FIELDS.get(name) or INT_FIELDS[name]
        out = ~((col >= low) & (col <= high))  # NaN lands here too
        if out.any():
            for r in np.flatnonzero(out):
                reasons.setdefault(int(r), _range_reason(name, raw[name][r]))
        columns[name] = col
    timestamps = _timestamp_column(raw["timestamp"], reasons)
    agent_ids, tenant_ids, statuses = raw["agent_id"], raw["tenant_id"], raw["status"]
    _text_reasons(agent_ids, tenant_ids, statuses, reasons)

    if not reasons:
        batch = HeartbeatBatch(
            index=np.asarray(positions, dtype=np.int64),
            agent_id=agent_ids,
            tenant_id=tenant_ids,
            timestamp=timestamps,
            metrics=columns,
            status=statuses,
        )
        return batch, sorted(rejected.items())
    bad = np.zeros(len(positions), dtype=bool)
    for r, reason in reasons.items():
        rejected[positions[r]] = reason
        bad[r] = True
    keep = np.flatnonzero(~bad)
    rows = keep.tolist()
    batch = HeartbeatBatch(
        index=np.asarray(positions, dtype=np.int64)[keep],
        agent_id=[agent_ids[r] for r in rows],
        tenant_id=[tenant_ids[r] for r in rows],
        timestamp=timestamps[keep],
        metrics={name: col[keep] for name, col in columns.items()},
        status=[statuses[r] for r in rows],
    )
    return batch, sorted(rejected.items())


def _typed_batch(values: list[bytes], max_bytes: int) -> HeartbeatBatch | None:
    """The batch, if every message is well typed and keeps every rule; else None.

    Well typed: the typed decoder takes it (a JSON object with the allowed fields, the
    required ones present, texts where texts belong, ids of 1–128 characters, a state
    or null as the status, integers where integers do, numbers where numbers do). The
    decoder builds no dict per message and checks the types, the ids' lengths and the
    states as it reads, so the columns come without a check of each value: ~40 %
    cheaper than decoding to dicts and checking after (``docs/benchmarks.md``).
    It only decides the fast path: what it takes, the general path takes with the same
    values (numbers are read to the nearest double by both; a duplicated field keeps
    its last value in both), and a batch with any message it refuses, or that breaks a
    rule, takes the general path, which finds the reasons.
    """
    try:
        if not values or max(map(len, values)) > max_bytes:
            return None
        wires = list(map(_WIRE_DECODER.decode, values))
    except (TypeError, msgspec.DecodeError):  # (msgspec.ValidationError is a DecodeError)
        return None
    count = len(wires)
    metrics: dict[str, np.ndarray] = {}
    for name, getter, (low, high) in _WIRE_NUMBERS:
        try:
            col = np.fromiter(map(getter, wires), np.float64, count)
        except OverflowError:  # an integer beyond a double
            return None
        if not ((col >= low) & (col <= high)).all():
            return None
        metrics[name] = col
    text = {name: list(map(getter, wires)) for name, getter in _WIRE_TEXTS}
    reasons: dict[int, str] = {}
    timestamps = _timestamp_column(text["timestamp"], reasons)
    if reasons:
        return None
    agent_ids, tenant_ids, statuses = text["agent_id"], text["tenant_id"], text["status"]
    if not _addressable(agent_ids):
        return None
    return HeartbeatBatch(
        index=np.arange(count, dtype=np.int64),
        agent_id=agent_ids,
        tenant_id=tenant_ids,
        timestamp=timestamps,
        metrics=metrics,
        status=statuses,
    )


def _decode(values: list[bytes], max_bytes: int, rejected: dict[int, str]) -> list[object]:
    """JSON-decode every value, each on its own (never by joining values: two broken
    messages could join into valid JSON); the per-message reasons only when one fails."""
    try:
        sizes_ok = bool(values) and max(map(len, values)) <= max_bytes
    except TypeError:  # a None among them
        sizes_ok = False
    if sizes_ok:
        try:
            docs = list(map(orjson.loads, values))
        except orjson.JSONDecodeError:
            pass
        else:
            if set(map(type, docs)) != {dict}:
                for i, doc in enumerate(docs):
                    if not isinstance(doc, dict):
                        rejected[i] = f"not a JSON object: {type(doc).__name__}"
            return docs
    docs: list[object] = []
    for i, value in enumerate(values):
        if value is None:
            rejected[i] = "empty message (no value)"
        elif len(value) > max_bytes:
            rejected[i] = f"message of {len(value)} bytes exceeds max_message_bytes={max_bytes}"
        else:
            try:
                doc = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                rejected[i] = f"invalid JSON: {exc}"
                doc = None
            else:
                if not isinstance(doc, dict):
                    rejected[i] = f"not a JSON object: {type(doc).__name__}"
        docs.append(doc if i not in rejected else None)
    return docs


def _uniform_columns(values: list[bytes], max_bytes: int) -> dict[str, list[object]] | None:
    """Values by field of a batch in the common shape, or None to take the general path.

    The common shape: every message is a JSON object of at most ``max_bytes``
    and all have the same allowed fields, either all of them or only the
    required ones. Such a batch is checked without a loop in Python (same
    size, and taking the fields raises ``KeyError`` if one is missing, so
    none can be unknown) and decoded a slice at a time, each field's values
    taken out of the slice's objects while they are still in the CPU cache,
    straight into that field's column (a row tuple per object, transposed
    after, cost twice as much: 2.2 against 4.3 µs a heartbeat).
    """
    try:
        if not values or max(map(len, values)) > max_bytes:
            return None
    except TypeError:  # a None among them
        return None
    fields: tuple[str, ...] | None = None
    columns: dict[str, list[object]] = {}
    for lo in range(0, len(values), _DECODE_SLICE):
        chunk = values[lo : lo + _DECODE_SLICE]
        try:
            docs = list(map(orjson.loads, chunk))
        except orjson.JSONDecodeError:
            return None
        sizes = set(map(len, docs)) if set(map(type, docs)) == {dict} else set()
        if len(sizes) != 1:
            return None
        shape = _FIELDS_OF_SIZE.get(sizes.pop())
        if shape is None or fields not in (None, shape):
            return None
        if fields is None:
            fields = shape
            columns = {name: [] for name in fields}
        try:
            for name, column in columns.items():
                column += map(_FIELD_GETTERS[name], docs)
        except KeyError:
            return None
    for name, default in _FIELD_DEFAULTS.items():
        if name not in columns:
            columns[name] = [default] * len(values)
    return columns


def _columns(
    docs: list[object], rejected: dict[int, str]
) -> tuple[list[int], dict[str, list[object]]]:
    """Positions of the objects with an allowed set of fields, and their values by field.

    Missing optional fields take their defaults (``bytes_out`` 0, ``status`` None).
    """
    positions = [i for i in range(len(docs)) if i not in rejected]
    for i in positions:
        _check_keys(i, docs[i], rejected)
    positions = [i for i in positions if i not in rejected]
    rows = [docs[i] for i in positions]
    return positions, {
        name: [row.get(name, default) for row in rows] for name, default in _FIELD_DEFAULTS.items()
    }


def _check_keys(i: int, doc: dict, rejected: dict[int, str]) -> None:
    keys = doc.keys()
    if keys <= ALLOWED and keys >= REQUIRED:
        return
    missing = sorted(REQUIRED - keys)
    unknown = sorted(keys - ALLOWED)
    parts = []
    if missing:
        parts.append(f"missing fields: {', '.join(missing)}")
    if unknown:
        parts.append(f"unknown fields: {', '.join(k[:40] for k in unknown[:10])}")
    rejected[i] = "; ".join(parts)


def _numeric_column(name: str, raw: Sequence[object], reasons: dict[int, str]) -> np.ndarray:
    """Float64 column of ``raw``; non-numbers become 0 with a reason, integers beyond a
    double NaN (so out of every range). A value's reason never depends on its
    neighbours: each is read as it would be in a column of numbers alone."""
    types = set(map(type, raw))
    wanted = (int,) if name in INT_FIELDS else _NUMBER_TYPES
    if types <= set(wanted):
        try:
            return np.asarray(raw, dtype=np.float64)
        except OverflowError:
            pass
    col = np.empty(len(raw), dtype=np.float64)
    for r, value in enumerate(raw):
        if type(value) in wanted:
            try:
                col[r] = value
            except OverflowError:
                col[r] = np.nan
        else:
            col[r] = 0.0
            kind = "an integer" if name in INT_FIELDS else "a number"
            reasons.setdefault(r, f"{name}: {_show(value)} is not {kind}")
    return col


def _timestamp_column(raw: Sequence[object], reasons: dict[int, str]) -> np.ndarray:
    """Epoch seconds of ISO-8601 texts or epoch numbers; NaN with a reason when invalid."""
    kinds = set(map(type, raw))
    if kinds <= {float, int}:
        col = np.asarray(raw, dtype=np.float64)
        text_rows: list[int] = []
    elif kinds == {str}:
        col = np.full(len(raw), np.nan)
        text_rows = list(range(len(raw)))
    else:
        col = np.full(len(raw), np.nan)
        text_rows = []
        for r, value in enumerate(raw):
            kind = type(value)
            if kind is float or kind is int:
                col[r] = value
            elif kind is str:
                text_rows.append(r)
            else:
                reasons.setdefault(r, f"timestamp: {_show(value)} is not ISO-8601 or epoch seconds")
    if text_rows:
        texts = [raw[r] for r in text_rows] if len(text_rows) < len(raw) else list(raw)
        epoch = _utc_iso_epoch(texts)
        slow = np.flatnonzero(np.isnan(epoch))
        if len(slow):
            _parse_iso_texts([texts[j] for j in slow.tolist()], slow, epoch, text_rows, reasons)
        col[text_rows] = epoch
    low, high = TIMESTAMP_RANGE
    out = ~((col >= low) & (col <= high))
    if out.any():
        for r in np.flatnonzero(out):
            reasons.setdefault(int(r), f"timestamp: {_show(raw[r])} is outside years 2000–2100")
    return col


def _parse_iso_texts(
    texts: list[str],
    slots: np.ndarray,
    epoch: np.ndarray,
    text_rows: list[int],
    reasons: dict[int, str],
) -> None:
    """Parse any ISO-8601 form with pandas into ``epoch[slots]`` (reasons for failures)."""
    import pandas as pd  # (not at the top: loading it costs the dataflow ~0.3 s at start)

    parsed = pd.to_datetime(pd.Series(texts), utc=True, format="ISO8601", errors="coerce")
    stamps = parsed.to_numpy(dtype="datetime64[us]")
    seconds = stamps.astype(np.int64) / 1e6
    unparsed = np.isnat(stamps)
    for j, slot in enumerate(slots.tolist()):
        if unparsed[j] or not _has_zone(texts[j]):
            reasons.setdefault(
                text_rows[slot],
                f"timestamp: {_show(texts[j])} is not ISO-8601 with a zone (e.g. …Z)",
            )
        else:
            epoch[slot] = seconds[j]


#: Text lengths of ``YYYY-MM-DDTHH:MM:SSZ`` and of ``YYYY-MM-DDTHH:MM:SS.fZ`` with 1–6
#: fraction digits: the forms :func:`_utc_iso_epoch` reads itself.
_FAST_ISO_LENGTHS = frozenset({20, *range(22, 28)})
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
#: The first microsecond of year 2000 and of year 2101, since the epoch.
_FIRST_MICROS = int(np.datetime64("2000-01-01", "us").view(np.int64))
_END_MICROS = int(np.datetime64("2101-01-01", "us").view(np.int64))


def _utc_iso_epoch(texts: list[str]) -> np.ndarray:
    """Epoch seconds of texts in the common UTC form, NaN for every other text.

    Reads ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` (years 2000–2100, a valid date and
    time), giving the value pandas gives; anything else is left NaN for the
    general (pandas) parser. The texts' shape is checked on their bytes
    (:func:`_iso_shaped`), their values read by numpy's ISO-8601 parser; when
    it refuses one (an invalid date or time), :func:`_iso_arithmetic` reads
    them all and says which.

    >>> _utc_iso_epoch(["2026-11-25T12:00:00.250Z", "2024-02-29T00:00:00Z",
    ...                 "2023-02-29T00:00:00Z", "2026-11-25T12:00:00+00:00"]).tolist()
    [1795608000.25, 1709164800.0, nan, nan]
    """
    epoch = np.full(len(texts), np.nan)
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    for length in np.unique(lengths).tolist():
        if length not in _FAST_ISO_LENGTHS:
            continue
        rows = np.flatnonzero(lengths == length)
        same = texts if len(rows) == len(texts) else [texts[r] for r in rows.tolist()]
        try:
            chars = np.array(same, dtype=f"S{length}").view(np.uint8).reshape(len(same), length)
        except UnicodeEncodeError:
            continue  # not ASCII: the general parser decides
        shaped = _iso_shaped(chars, length)
        parsed = _iso_parsed(chars[shaped], length)
        if parsed is None:
            ok, micros = _iso_arithmetic(chars, length)
        else:
            micros = np.zeros(len(same), dtype=np.int64)
            micros[shaped] = parsed
            ok = shaped & (micros >= _FIRST_MICROS) & (micros < _END_MICROS)
        epoch[rows[ok]] = micros[ok] / 1e6
    return epoch


def _iso_shaped(chars: np.ndarray, length: int) -> np.ndarray:
    """Which rows of ``chars`` (ASCII bytes, one text of ``length`` per row) have the
    shape ``YYYY-MM-DDTHH:MM:SS[.f…]Z``: digits, separators and the zone where they
    belong (not whether the date or time exists)."""
    digits = chars[:, [*_DATE_DIGITS, *range(20, length - 1)]]
    ok = ((digits >= ord("0")) & (digits <= ord("9"))).all(axis=1)
    ok &= chars[:, length - 1] == ord("Z")
    for at, sep in _SEPARATORS:
        ok &= chars[:, at] == ord(sep)
    if length > 20:
        ok &= chars[:, 19] == ord(".")
    return ok


def _iso_parsed(chars: np.ndarray, length: int) -> np.ndarray | None:
    """Microseconds since the epoch of rows of the right shape (:func:`_iso_shaped`),
    read by numpy without their ``Z``; None if numpy refuses one (a month 13, a
    February 30th, an hour 24, a leap second: :func:`_iso_arithmetic` finds which)."""
    local = np.ascontiguousarray(chars[:, : length - 1]).view(f"S{length - 1}").reshape(-1)
    try:
        return local.astype("datetime64[us]").view(np.int64)
    except ValueError:
        return None


def _iso_arithmetic(chars: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Which rows are ``YYYY-MM-DDTHH:MM:SS[.f…]Z`` texts of a valid date and time in
    years 2000–2100, and their microseconds since the epoch, by array arithmetic."""
    digit = chars.astype(np.int64) - ord("0")
    fraction = range(20, length - 1)
    ok = _iso_shaped(chars, length)
    year = _decimal(digit, range(0, 4))
    month = _decimal(digit, range(5, 7))
    day = _decimal(digit, range(8, 10))
    hour = _decimal(digit, range(11, 13))
    minute = _decimal(digit, range(14, 16))
    second = _decimal(digit, range(17, 19))
    micros = _decimal(digit, fraction) * 10 ** (6 - len(fraction))
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_days = _DAYS_IN_MONTH[np.clip(month, 0, 12)] + (leap & (month == 2))
    ok &= (year >= 2000) & (year <= 2100) & (month >= 1) & (month <= 12)
    ok &= (day >= 1) & (day <= month_days) & (hour <= 23) & (minute <= 59) & (second <= 59)
    # days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil)
    y = year - (month <= 2)
    era = y // 400
    year_of_era = y - era * 400
    day_of_year = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    days = era * 146_097 + day_of_era - 719_468
    micros += (((days * 24 + hour) * 60 + minute) * 60 + second) * 1_000_000
    return ok, micros


def _decimal(digit: np.ndarray, columns: range) -> np.ndarray:
    """The number written by the digit columns ``columns`` of each row."""
    value = np.zeros(len(digit), dtype=np.int64)
    for i in columns:
        value = value * 10 + digit[:, i]
    return value


#: Positions of the date and time digits, and of the separators, in ``YYYY-MM-DDTHH:MM:SS``.
_DATE_DIGITS = (0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18)
_SEPARATORS = ((4, "-"), (7, "-"), (10, "T"), (13, ":"), (16, ":"))


def _has_zone(text: str) -> bool:
    return text.endswith(("Z", "z")) or (len(text) > 6 and text[-6] in "+-" and text[-3] == ":")


def _text_reasons(
    agent_ids: Sequence[object],
    tenant_ids: Sequence[object],
    statuses: Sequence[object],
    reasons: dict[int, str],
) -> None:
    """Reasons for rows whose ids or status break the rules (one pass per column first)."""
    if (
        _identifiers(agent_ids)
        and _addressable(agent_ids)
        and _identifiers(tenant_ids)
        and _states(statuses)
    ):
        return
    for r, (agent, tenant, status) in enumerate(zip(agent_ids, tenant_ids, statuses, strict=True)):
        reason = _text_reason(agent, tenant, status)
        if reason:
            reasons.setdefault(r, reason)


def _identifiers(column: Sequence[object]) -> bool:
    """Whether every value is a string of 1–128 characters."""
    if not column or set(map(type, column)) != {str}:
        return not column
    lengths = list(map(len, column))
    return min(lengths) >= 1 and max(lengths) <= 128


def _addressable(agent_ids: list[str]) -> bool:
    """Whether every agent id (strings) can name its agent in a URL path
    (:func:`schemas.models.addressable`), in three passes in C: ~15 ns an id."""
    return "/" not in "".join(agent_ids) and "." not in agent_ids and ".." not in agent_ids


def _states(column: Sequence[object]) -> bool:
    """Whether every value is None or one of the lifecycle states."""
    if not set(map(type, column)) <= {str, type(None)}:
        return False
    return set(column) <= _STATES_OR_NONE


def _text_reason(agent: object, tenant: object, status: object) -> str | None:
    for name, value in (("agent_id", agent), ("tenant_id", tenant)):
        if type(value) is not str or not 1 <= len(value) <= 128:
            return f"{name}: {_show(value)} is not a string of 1–128 characters"
    unaddressable = addressable(agent)
    if unaddressable is not None:
        return f"agent_id: {_show(agent)} {unaddressable}"
    if status is not None and (type(status) is not str or status not in _STATES):
        return f"status: {_show(status)} is not one of {', '.join(AGENT_STATES)}"
    return None


def _range_reason(name: str, value: object) -> str:
    low, high = FLOAT_FIELDS.get(name) or INT_FIELDS[name]
    bounds = f"[{low:g}, {high:g}]" if np.isfinite(high) else f"≥ {low:g}"
    return f"{name}: {_show(value)} is out of range {bounds}"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
