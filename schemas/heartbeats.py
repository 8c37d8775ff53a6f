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

from dataclasses import dataclass, field

import numpy as np
import orjson
import pandas as pd

from schemas.models import AGENT_STATES, TIMESTAMP_RANGE, Heartbeat

#: Float metrics with their allowed range (inclusive).
FLOAT_FIELDS: dict[str, tuple[float, float]] = {
    "cpu_usage": (0.0, 100.0),
    "memory_usage": (0.0, 100.0),
    "disk_usage": (0.0, 100.0),
    "network_latency": (0.0, np.inf),
    "error_rate": (0.0, 1.0),
    "response_time_avg": (0.0, np.inf),
    "uptime_seconds": (0.0, np.inf),
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
_NUMBER_TYPES = (int, float)
_MAX_INT = 2**63 - 1


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

    def __len__(self) -> int:
        return len(self.agent_id)

    def take(self, rows: np.ndarray) -> HeartbeatBatch:
        """The sub-batch of the given row positions."""
        return HeartbeatBatch(
            index=self.index[rows],
            agent_id=[self.agent_id[i] for i in rows],
            tenant_id=[self.tenant_id[i] for i in rows],
            timestamp=self.timestamp[rows],
            metrics={name: col[rows] for name, col in self.metrics.items()},
            status=[self.status[i] for i in rows],
        )

    def to_frame(self) -> pd.DataFrame:
        """Columns as a DataFrame in the ``metrics`` table's layout."""
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
    rejected message, ``(position, reason)``.
    """
    rejected: dict[int, str] = {}
    docs = _decode(values, max_message_bytes, rejected)
    positions = [i for i, doc in enumerate(docs) if i not in rejected]
    for i in positions:
        _check_keys(i, docs[i], rejected)
    positions = [i for i in positions if i not in rejected]
    rows = [docs[i] for i in positions]

    columns: dict[str, np.ndarray] = {}
    bad = np.zeros(len(rows), dtype=bool)
    reasons: dict[int, str] = {}
    for name in NUMERIC_FIELDS:
        raw = [row.get(name, 0) for row in rows]
        col = _numeric_column(name, raw, reasons)
        low, high = FLOAT_FIELDS.get(name) or INT_FIELDS[name]
        out = ~((col >= low) & (col <= high))  # NaN lands here too
        for r in np.flatnonzero(out & ~bad):
            reasons.setdefault(int(r), _range_reason(name, raw[r]))
        columns[name] = col
    timestamps = _timestamp_column([row["timestamp"] for row in rows], reasons)
    agent_ids = [row["agent_id"] for row in rows]
    tenant_ids = [row["tenant_id"] for row in rows]
    statuses = [row.get("status") for row in rows]
    for r, (agent, tenant, status) in enumerate(zip(agent_ids, tenant_ids, statuses, strict=True)):
        reason = _text_reason(agent, tenant, status)
        if reason:
            reasons.setdefault(r, reason)

    for r, reason in reasons.items():
        rejected[positions[r]] = reason
        bad[r] = True
    keep = np.flatnonzero(~bad)
    batch = HeartbeatBatch(
        index=np.asarray(positions, dtype=np.int64)[keep],
        agent_id=[agent_ids[r] for r in keep],
        tenant_id=[tenant_ids[r] for r in keep],
        timestamp=timestamps[keep],
        metrics={name: col[keep] for name, col in columns.items()},
        status=[statuses[r] for r in keep],
    )
    return batch, sorted(rejected.items())


def _decode(values: list[bytes], max_bytes: int, rejected: dict[int, str]) -> list[object]:
    """JSON-decode every value; one orjson call when the whole batch is clean."""
    sizes_ok = all(v is not None and len(v) <= max_bytes for v in values)
    if sizes_ok and values:
        try:
            docs = orjson.loads(b"[" + b",".join(values) + b"]")
            if len(docs) == len(values):
                for i, doc in enumerate(docs):
                    if not isinstance(doc, dict):
                        rejected[i] = f"not a JSON object: {type(doc).__name__}"
                return docs
        except orjson.JSONDecodeError:
            pass
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


def _numeric_column(name: str, raw: list[object], reasons: dict[int, str]) -> np.ndarray:
    """Float64 column of ``raw``; non-numbers become NaN with a reason."""
    types = set(map(type, raw))
    wanted = (int,) if name in INT_FIELDS else _NUMBER_TYPES
    if types <= set(wanted):
        try:
            return np.asarray(raw, dtype=np.float64)
        except OverflowError:
            pass
    col = np.empty(len(raw), dtype=np.float64)
    for r, value in enumerate(raw):
        if type(value) in wanted and abs(value) <= _MAX_INT:
            col[r] = value
        else:
            col[r] = 0.0
            kind = "an integer" if name in INT_FIELDS else "a number"
            reasons.setdefault(r, f"{name}: {_show(value)} is not {kind}")
    return col


def _timestamp_column(raw: list[object], reasons: dict[int, str]) -> np.ndarray:
    col = np.full(len(raw), np.nan)
    text_rows: list[int] = []
    for r, value in enumerate(raw):
        kind = type(value)
        if kind is float or kind is int:
            col[r] = value
        elif kind is str:
            text_rows.append(r)
        else:
            reasons.setdefault(r, f"timestamp: {_show(value)} is not ISO-8601 or epoch seconds")
    if text_rows:
        texts = [raw[r] for r in text_rows]
        parsed = pd.to_datetime(pd.Series(texts), utc=True, format="ISO8601", errors="coerce")
        stamps = parsed.to_numpy(dtype="datetime64[us]")
        epoch = stamps.astype(np.int64) / 1e6
        unparsed = np.isnat(stamps)
        for j, r in enumerate(text_rows):
            if unparsed[j] or not _has_zone(texts[j]):
                reasons.setdefault(
                    r, f"timestamp: {_show(texts[j])} is not ISO-8601 with a zone (e.g. …Z)"
                )
            else:
                col[r] = epoch[j]
    low, high = TIMESTAMP_RANGE
    for r in np.flatnonzero(~((col >= low) & (col <= high))):
        reasons.setdefault(int(r), f"timestamp: {_show(raw[r])} is outside years 2000–2100")
    return col


def _has_zone(text: str) -> bool:
    return text.endswith(("Z", "z")) or (len(text) > 6 and text[-6] in "+-" and text[-3] == ":")


def _text_reason(agent: object, tenant: object, status: object) -> str | None:
    for name, value in (("agent_id", agent), ("tenant_id", tenant)):
        if type(value) is not str or not 1 <= len(value) <= 128:
            return f"{name}: {_show(value)} is not a string of 1–128 characters"
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
