"""The state of a shard of agents, and what one batch of heartbeats does to it.

A :class:`FleetBaselines` holds the baselines of every agent of one shard as
rows of numpy arrays (a few hundred bytes per agent), so a batch of thousands
of heartbeats is scored and learned in a handful of array operations. Within
a batch an agent's heartbeats are taken in order: the first heartbeat of every
agent in one pass, the second in the next, and so on.

>>> import orjson
>>> from agentwatch.settings import Settings
>>> from schemas.heartbeats import parse_heartbeats
>>> def beat(t, cpu):
...     return orjson.dumps({"agent_id": "a1", "tenant_id": "t1", "timestamp": t,
...         "cpu_usage": cpu, "memory_usage": 50.0, "disk_usage": 30.0,
...         "network_latency": 10.0, "active_tasks": 2, "completed_tasks": 0,
...         "failed_tasks": 0, "error_rate": 0.0, "response_time_avg": 100.0,
...         "uptime_seconds": t - 1.8e9, "bytes_out": 1000})
>>> fleet = FleetBaselines(DetectorConfig.from_settings(
...     Settings(baseline_warmup_s=0, baseline_warmup_heartbeats=20)))
>>> normal = [beat(1.8e9 + 30 * i, 40.0 + i % 3) for i in range(30)]
>>> out = fleet.observe(parse_heartbeats(normal)[0])
>>> out.anomalies
[]
>>> out = fleet.observe(parse_heartbeats([beat(1.8e9 + 900, 99.0)])[0])
>>> [(a["agent_id"], a["is_anomaly"], a["reasons"][0]["feature"]) for a in out.anomalies]
[('a1', True, 'cpu_usage')]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from agentwatch.baselines import FEATURES, clip_limits, deviations, learn
from agentwatch.detector import reasons, scores_from_deviations
from agentwatch.settings import Settings
from schemas.heartbeats import HeartbeatBatch

DETECTOR_NAME = "baseline_z"


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """The detector's tunables, taken from :class:`Settings`."""

    warmup_s: float
    warmup_heartbeats: int
    memory_heartbeats: int
    threshold: float
    report_threshold: float
    rel_floor: float
    std_floor: tuple[float, ...]
    reason_sigma: float
    clip_sigma: float
    publish_interval_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> DetectorConfig:
        """Pick the detector's numbers out of the settings."""
        return cls(
            warmup_s=settings.baseline_warmup_s,
            warmup_heartbeats=settings.baseline_warmup_heartbeats,
            memory_heartbeats=settings.baseline_memory_heartbeats,
            threshold=settings.anomaly_threshold,
            report_threshold=min(settings.anomaly_report_threshold, settings.anomaly_threshold),
            rel_floor=settings.anomaly_min_relative_std,
            std_floor=tuple(settings.anomaly_std_floor.get(f, 0.0) for f in FEATURES),
            reason_sigma=settings.anomaly_reason_sigma,
            clip_sigma=settings.baseline_learn_clip_sigma,
            publish_interval_s=settings.baseline_publish_interval_s,
        )


@dataclass(slots=True)
class FleetOutput:
    """What one batch produced: anomaly records and baseline snapshots (plain dicts
    in the layout of :class:`schemas.models.AnomalyRecord` and ``BaselineRecord``)."""

    anomalies: list[dict] = field(default_factory=list)
    baselines: list[dict] = field(default_factory=list)


class FleetBaselines:
    """Baselines and detector state of one shard of agents (one row per agent)."""

    def __init__(self, config: DetectorConfig, capacity: int = 64):
        self.config = config
        self._floor = np.asarray(config.std_floor)
        self.row_of: dict[str, int] = {}
        self.tenant_names: list[str] = []
        self._tenant_index: dict[str, int] = {}
        features = len(FEATURES)
        self.agent_ids: list[str] = []
        self.tenant = np.zeros(capacity, dtype=np.int32)
        self.mean = np.zeros((capacity, features))
        self.var = np.zeros((capacity, features))
        self.count = np.zeros(capacity)
        self.first_ts = np.zeros(capacity)
        self.last_ts = np.zeros(capacity)
        self.published_ts = np.full(capacity, -np.inf)
        self.warm = np.zeros(capacity, dtype=bool)

    def __len__(self) -> int:
        return len(self.agent_ids)

    def observe(self, batch: HeartbeatBatch) -> FleetOutput:
        """Score every heartbeat of ``batch`` against its agent's baseline, then learn it."""
        out = FleetOutput()
        if not len(batch):
            return out
        rows = self._rows_for(batch.agent_id, batch.tenant_id)
        values = np.column_stack([batch.metrics[f] for f in FEATURES])
        for positions in _passes(rows):
            self._observe_pass(rows[positions], values[positions], batch.timestamp[positions], out)
        return out

    def _observe_pass(
        self, rows: np.ndarray, values: np.ndarray, ts: np.ndarray, out: FleetOutput
    ) -> None:
        cfg = self.config
        fresh = self.count[rows] == 0
        self.first_ts[rows[fresh]] = ts[fresh]
        warm = (self.count[rows] >= cfg.warmup_heartbeats) & (
            ts - self.first_ts[rows] >= cfg.warmup_s
        )
        mean, var = self.mean[rows], self.var[rows]
        z, std = deviations(mean, var, values, self._floor, cfg.rel_floor)
        scores = np.where(warm, scores_from_deviations(z), 0.0)
        for i in np.flatnonzero(scores >= cfg.report_threshold):
            row = rows[i]
            out.anomalies.append(
                {
                    "agent_id": self.agent_ids[row],
                    "tenant_id": self.tenant_names[self.tenant[row]],
                    "timestamp": float(ts[i]),
                    "score": float(scores[i]),
                    "threshold": cfg.threshold,
                    "is_anomaly": bool(scores[i] >= cfg.threshold),
                    "detector": DETECTOR_NAME,
                    "reasons": reasons(
                        FEATURES, values[i], mean[i], std[i], z[i], cfg.reason_sigma
                    ),
                }
            )
        learn(self.mean, self.var, self.count, rows, values, cfg.memory_heartbeats,
              clip_limits(std, warm, cfg.clip_sigma))  # fmt: skip
        self.last_ts[rows] = np.maximum(self.last_ts[rows], ts)
        changed = warm != self.warm[rows]
        self.warm[rows] = warm
        due = changed | (ts - self.published_ts[rows] >= cfg.publish_interval_s)
        if due.any():
            out.baselines.extend(self.baseline_records(rows[due]))
            self.published_ts[rows[due]] = ts[due]

    def baseline_records(self, rows: np.ndarray) -> list[dict]:
        """The baselines of these agent rows, as ``BaselineRecord`` dicts."""
        agent_ids, tenant_names = self.agent_ids, self.tenant_names
        return [
            {
                "agent_id": agent_ids[row],
                "tenant_id": tenant_names[tenant],
                "timestamp": timestamp,
                "heartbeats": int(count),
                "warmed_up": warm,
                "mean": dict(zip(FEATURES, mean, strict=True)),
                "std": dict(zip(FEATURES, std, strict=True)),
            }
            for row, tenant, timestamp, count, warm, mean, std in zip(
                rows.tolist(),
                self.tenant[rows].tolist(),
                self.last_ts[rows].tolist(),
                self.count[rows].tolist(),
                self.warm[rows].tolist(),
                self.mean[rows].tolist(),
                np.sqrt(self.var[rows]).tolist(),
                strict=True,
            )
        ]

    def _rows_for(self, agent_ids: list[str], tenant_ids: list[str]) -> np.ndarray:
        """Row of each agent, adding rows for agents seen for the first time."""
        rows = np.fromiter(map(self.row_of.get, agent_ids, repeat(-1)), np.int64, len(agent_ids))
        for i in np.flatnonzero(rows < 0):
            agent = agent_ids[i]
            row = self.row_of.get(agent)
            if row is None:
                row = self._add_agent(agent, tenant_ids[i])
            rows[i] = row
        return rows

    def _add_agent(self, agent_id: str, tenant_id: str) -> int:
        row = len(self.agent_ids)
        if row == len(self.count):
            self._grow()
        tenant = self._tenant_index.get(tenant_id)
        if tenant is None:
            tenant = self._tenant_index[tenant_id] = len(self.tenant_names)
            self.tenant_names.append(tenant_id)
        self.row_of[agent_id] = row
        self.agent_ids.append(agent_id)
        self.tenant[row] = tenant
        return row

    def _grow(self) -> None:
        for name in ("tenant", "mean", "var", "count", "first_ts", "last_ts", "published_ts",
                     "warm"):  # fmt: skip
            old = getattr(self, name)
            new = np.zeros((2 * len(old), *old.shape[1:]), dtype=old.dtype)
            if name == "published_ts":
                new[:] = -np.inf
            new[: len(old)] = old
            setattr(self, name, new)


def _passes(rows: np.ndarray) -> list[np.ndarray]:
    """Positions of a batch split into passes in which no agent row repeats.

    Pass ``k`` holds the ``k``-th heartbeat of every agent, in batch order.

    >>> [p.tolist() for p in _passes(np.array([7, 3, 7, 7, 3]))]
    [[0, 1], [2, 4], [3]]
    """
    n = len(rows)
    order = np.argsort(rows, kind="stable")
    ranked = rows[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    occurrence = np.empty(n, dtype=np.int64)
    occurrence[order] = np.arange(n) - group_start
    if occurrence.max() == 0:
        return [np.arange(n)]
    return [np.flatnonzero(occurrence == k) for k in range(occurrence.max() + 1)]
