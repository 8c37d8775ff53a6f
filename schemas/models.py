"""Pydantic models of every message agentwatch reads or writes.

These models are the contract: the JSON Schema files beside this module are
exported from them (``agentwatch schemas``) and a test keeps the two equal.
The hot path validates heartbeats in batches (:mod:`schemas.heartbeats`) with
exactly these rules; a property test checks that both agree.

>>> hb = Heartbeat.model_validate({"agent_id": "a1", "tenant_id": "t1",
...     "timestamp": "2026-11-25T12:00:00Z", "cpu_usage": 45.2, "memory_usage": 62.1,
...     "disk_usage": 35.0, "network_latency": 12.5, "active_tasks": 3,
...     "completed_tasks": 150, "failed_tasks": 2, "error_rate": 0.013,
...     "response_time_avg": 234.5, "uptime_seconds": 86400, "bytes_out": 1024})
>>> hb.timestamp
1795608000.0
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr

#: Seconds since the epoch that a heartbeat's timestamp must lie between (2000 … 2100).
TIMESTAMP_RANGE = (946_684_800.0, 4_102_444_800.0)

#: The seed's lifecycle states (an optional ``status`` in a heartbeat must be one of them).
AGENT_STATES = (
    "registered",
    "provisioning",
    "active",
    "idle",
    "busy",
    "degraded",
    "maintenance",
    "quarantined",
    "compromised",
    "offline",
    "decommissioning",
    "decommissioned",
)


def _epoch_seconds(value: object) -> float:
    """ISO-8601 text or epoch seconds → epoch seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("timestamp must be ISO-8601 text or epoch seconds, not a boolean")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"timestamp {value[:40]!r} is not ISO-8601") from None
        if parsed.tzinfo is None:
            raise ValueError(f"timestamp {value[:40]!r} has no time zone (add Z or +00:00)")
        return parsed.timestamp()
    raise ValueError("timestamp must be ISO-8601 text or epoch seconds")


EpochSeconds = Annotated[
    float,
    BeforeValidator(_epoch_seconds),
    Field(ge=TIMESTAMP_RANGE[0], le=TIMESTAMP_RANGE[1]),
]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Percent = Annotated[float, Field(strict=True, ge=0, le=100, allow_inf_nan=False)]
Count = Annotated[StrictInt, Field(ge=0, le=2**53)]
Identifier = Annotated[StrictStr, Field(min_length=1, max_length=128)]


class Heartbeat(BaseModel):
    """One heartbeat on ``agents.metrics`` (key = ``agent_id``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent_id: Identifier
    tenant_id: Identifier
    timestamp: EpochSeconds = Field(description="ISO-8601 with zone, or epoch seconds.")
    cpu_usage: Percent
    memory_usage: Percent
    disk_usage: Percent
    network_latency: Annotated[Number, Field(ge=0)] = Field(description="Milliseconds.")
    active_tasks: Annotated[StrictInt, Field(ge=0, le=2**32 - 1)]
    completed_tasks: Count
    failed_tasks: Count
    error_rate: Annotated[Number, Field(ge=0, le=1)] = Field(description="Share 0…1.")
    response_time_avg: Annotated[Number, Field(ge=0)] = Field(description="Milliseconds.")
    uptime_seconds: Annotated[Number, Field(ge=0)]
    bytes_out: Count = Field(0, description="Bytes sent since the previous heartbeat.")
    status: Literal[AGENT_STATES] | None = None  # type: ignore[valid-type]


class LifecycleEvent(BaseModel):
    """One command or fact on ``agents.events`` (key = ``agent_id``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Identifier = Field(description="registered, status_changed, quarantine_requested, …")
    agent_id: Identifier
    tenant_id: Identifier
    actor: Identifier = Field(description="Who asked: a user id, or 'system'.")
    timestamp: EpochSeconds
    payload: dict[str, object] = Field(default_factory=dict)


class FeatureDeviation(BaseModel):
    """How far one metric of a heartbeat stood from the agent's baseline."""

    feature: str
    value: float
    baseline_mean: float
    baseline_std: float
    z: float = Field(description="(value - mean) / std, signed.")


class AnomalyRecord(BaseModel):
    """A scored heartbeat on ``agents.anomalies`` (published when the score is high)."""

    agent_id: str
    tenant_id: str
    timestamp: float = Field(description="Event time of the heartbeat, epoch seconds.")
    score: float = Field(ge=0, le=1)
    threshold: float = Field(description="Score at or above which it counts as anomalous.")
    is_anomaly: bool
    detector: str
    reasons: list[FeatureDeviation] = Field(description="Features that drove the score.")


class BaselineRecord(BaseModel):
    """An agent's learned baseline on ``agents.baselines`` (published periodically)."""

    agent_id: str
    tenant_id: str
    timestamp: float = Field(description="Event time of the last heartbeat it has seen.")
    heartbeats: int
    warmed_up: bool
    mean: dict[str, float]
    std: dict[str, float]


class DeadLetter(BaseModel):
    """A message agentwatch could not accept, on ``agents.deadletter``."""

    topic: str
    partition: int
    offset: int
    reason: str
    key: str | None = Field(description="The original key, decoded as UTF-8 with replacement.")
    value_b64: str = Field(description="The original value bytes, base64.")
    value_bytes: int = Field(description="Size of the original value.")
    received_at: float = Field(description="When the dataflow rejected it, epoch seconds.")


#: Every exported model, by file name under ``schemas/``.
EXPORTED = {
    "heartbeat": Heartbeat,
    "lifecycle_event": LifecycleEvent,
    "anomaly": AnomalyRecord,
    "baseline": BaselineRecord,
    "deadletter": DeadLetter,
}
