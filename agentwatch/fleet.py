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
>>> normal = [beat(1.8e9 + 30 * i, 40.0 + i % 3) for i in range(50)]
>>> out = fleet.observe(parse_heartbeats(normal)[0])
>>> out.anomalies
[]
>>> out = fleet.observe(parse_heartbeats([beat(1.8e9 + 1500, 99.0)])[0])
>>> [(a["agent_id"], a["is_anomaly"], a["reasons"][0]["feature"]) for a in out.anomalies]
[('a1', True, 'cpu_usage')]
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from agentwatch.baselines import FEATURES
from agentwatch.detector import (
    SURPRISE_PRIOR_MEAN,
    DetectorParams,
    Judgement,
    judge,
    learn_judged,
    reasons,
)
from agentwatch.rows import AgentIndex, ArraySpec, RowArrays, allocate
from agentwatch.settings import Settings
from schemas.heartbeats import HeartbeatBatch

DETECTOR_NAME = "baseline_likelihood"


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """The detector's tunables, taken from :class:`Settings`: the detector's own numbers
    (``params``) and what the fleet adds around them."""

    params: DetectorParams
    warmup_s: float
    report_threshold: float
    reason_sigma: float
    publish_interval_s: float

    def __setstate__(self, state: list) -> None:
        # A snapshot from before ``params`` held the numbers one by one. Any config is
        # replaced by the current settings' when a shard is restored
        # (``ShardState.restore``); until then an old one stands for the defaults.
        if len(state) != len(fields(self)) or not isinstance(state[0], DetectorParams):
            defaults = DetectorConfig.from_settings(Settings.model_construct())
            state = [getattr(defaults, f.name) for f in fields(self)]
        for f, value in zip(fields(self), state, strict=True):
            object.__setattr__(self, f.name, value)

    @classmethod
    def from_settings(cls, settings: Settings) -> DetectorConfig:
        """Pick the detector's numbers out of the settings."""
        floor = [settings.anomaly_std_floor[f] for f in FEATURES]  # (every metric has one)
        return cls(
            params=DetectorParams.from_settings(settings, np.array(floor), FEATURES),
            warmup_s=settings.baseline_warmup_s,
            report_threshold=min(settings.anomaly_report_threshold, settings.anomaly_threshold),
            reason_sigma=settings.anomaly_reason_sigma,
            publish_interval_s=settings.baseline_publish_interval_s,
        )


@dataclass(slots=True)
class FleetOutput:
    """What one batch produced: anomaly records and baseline snapshots (plain dicts
    in the layout of :class:`schemas.models.AnomalyRecord` and ``BaselineRecord``)."""

    anomalies: list[dict] = field(default_factory=list)
    baselines: list[dict] = field(default_factory=list)
    #: The slow baseline each heartbeat of the batch met (one row per heartbeat: mean and
    #: std per feature, the std with the detector's floors, and whether it was warm), as
    #: it stood just before that heartbeat was learned — after its agent's earlier
    #: heartbeats of the same batch, so what a heartbeat is judged against does not depend
    #: on where batches are cut (the threat rules' baseline conditions read it:
    #: ``BaselineInputs.met``). None for an empty batch.
    met_mean: np.ndarray | None = None
    met_std: np.ndarray | None = None
    met_warm: np.ndarray | None = None


class FleetBaselines(RowArrays):
    """Baselines and detector state of one shard of agents (one row per agent)."""

    def __init__(self, config: DetectorConfig, index: AgentIndex | None = None, capacity: int = 64):
        self.config = config
        f64, per_feature = np.dtype(np.float64), (len(FEATURES),)
        arrays: dict[str, ArraySpec] = {
            "mean": (f64, 0.0, per_feature),
            "var": (f64, 0.0, per_feature),
            "count": (f64, 0.0, ()),
            "first_ts": (f64, 0.0, ()),
            "last_ts": (f64, 0.0, ()),
            "published_ts": (f64, -np.inf, ()),
            "warm": (np.dtype(np.bool_), False, ()),
        }
        self._setup({**arrays, **self._detector_arrays()}, index, capacity)

    def _detector_arrays(self) -> dict[str, ArraySpec]:
        return self.config.params.arrays_for(len(FEATURES))

    def _upgrade(self) -> None:
        """Bring a state pickled before the local level and the anomaly likelihood up to
        date: their arrays start from what the slow baseline knows (level = mean,
        spread = variance, range = mean ± clip_sigma std) and the surprise history
        from its prior."""
        missing = {name: spec for name, spec in self._detector_arrays().items()
                   if not _fits(getattr(self, name, None), spec)}  # fmt: skip
        for name, spec in list(missing.items()):
            kept = getattr(self, name, None)  # (a float array of another width: cast, kept)
            if kept is not None and kept.shape[1:] == spec[2] and kept.dtype.kind == "f":
                setattr(self, name, kept.astype(spec[0]))
                del missing[name]
        if missing and "level" in vars(self):
            # a state from before the detector's tails and the quiet period in seconds:
            # fresh tails, and no quiet period (its end was a heartbeat count); or from
            # before episodes: none open; or from before the daily profile (or with another
            # number of harmonics): a fresh one, learned again
            allocate(self, missing, len(self.count))
            if "quiet_metrics" in missing:
                self.quiet_until[:] = 0.0
        elif missing:
            allocate(self, missing, len(self.count))
            self.level[:] = self.mean
            self.resid_var[:] = self.var
            reach = self.config.params.clip_sigma * np.sqrt(self.var)
            known = (self.count > 0)[:, None]
            self.low[:] = np.where(known, self.mean - reach, np.nan)
            self.high[:] = np.where(known, self.mean + reach, np.nan)
            self.surprise_avg[:] = self.surprise_mean[:] = SURPRISE_PRIOR_MEAN
            self.surprise_var[:] = self.config.params.likelihood_prior_std**2
        self._arrays = {**self._arrays, **self._detector_arrays()}

    def configure(self, config: DetectorConfig) -> None:
        """Go on with new tunables (settings changed across a restart)."""
        self.config = config
        vars(self).pop("_params", None)  # kept by snapshots of the detector's first version
        if self._outdated():
            self._upgrade()

    def _outdated(self) -> bool:
        """Whether some detector array is missing or laid out otherwise (a state pickled by
        an older version, or with another number of daily harmonics)."""
        arrays = vars(self)
        return any(
            not _fits(arrays.get(name), spec) for name, spec in self._detector_arrays().items()
        )

    def rows(self, batch: HeartbeatBatch) -> np.ndarray:
        """The row of each heartbeat's agent (new agents get fresh, cold rows)."""
        return self._rows(batch.agent_id, batch.tenant_id)

    def observe(self, batch: HeartbeatBatch) -> FleetOutput:
        """Score every heartbeat of ``batch`` against its agent's baseline, then learn it."""
        out = FleetOutput()
        if not len(batch):
            return out
        if self._outdated():
            self._upgrade()
        rows = self.rows(batch)
        values = np.column_stack([batch.metrics[f] for f in FEATURES])
        out.met_mean, out.met_std = np.empty_like(values), np.empty_like(values)
        out.met_warm = np.empty(len(rows), dtype=bool)
        for positions in self.index.passes_of(rows):
            pass_rows = rows[positions]
            out.met_warm[positions] = self.warm[pass_rows]
            j = self._observe_pass(pass_rows, values[positions], batch.timestamp[positions], out)
            out.met_mean[positions] = j.before.mean  # (read once, by judge, before learning)
            out.met_std[positions] = j.base_std  # (the floored std of the slow baseline)
        return out

    def _observe_pass(
        self, rows: np.ndarray, values: np.ndarray, ts: np.ndarray, out: FleetOutput
    ) -> Judgement:
        """Judge and learn one pass (one heartbeat per agent); the judgement."""
        cfg = self.config
        count = self.count[rows]
        fresh = count == 0
        self.first_ts[rows[fresh]] = ts[fresh]
        elapsed = ts - self.first_ts[rows]
        warm = (count >= cfg.params.warmup) & (elapsed >= cfg.warmup_s)
        # since the agent's previous heartbeat (its last_ts; NaN for a first): the weights
        # of a slow agent's heartbeats are shares of durations (detector.point_weights)
        interval = np.where(fresh, np.nan, ts - self.last_ts[rows])
        j = judge(self, rows, values, warm, cfg.params, elapsed, ts, interval)
        daily = isinstance(j.season, np.ndarray)  # (else 0.0: no daily profile counts)
        reported = np.flatnonzero(j.scores >= cfg.report_threshold)
        stands_out = (
            j.fire[reported]
            | j.extreme_rows[reported]
            | (np.abs(j.z[reported]).max(axis=1) >= cfg.reason_sigma)
        )
        standing = np.zeros(len(rows), dtype=bool)
        standing[reported[stands_out]] = True
        # the heartbeat that closes an episode says so (the episode's start and end): in
        # its record, or in a record of its own (no reasons) when it does not stand out
        ep, first_ts = j.episode, self.first_ts
        for i in np.flatnonzero(standing | ep.ended).tolist():
            row = rows[i]
            if ep.ended[i]:
                episode = {
                    "episode_start": float(first_ts[row] + ep.began[i]),
                    "episode_end": float(first_ts[row] + ep.end[i]),
                }
            elif ep.start[i] == ep.start[i]:  # (not NaN: in an episode)
                episode = {"episode_start": float(first_ts[row] + ep.start[i])}
            else:
                episode = {}
            out.anomalies.append(
                {
                    **self.index.agent(row),
                    "timestamp": float(ts[i]),
                    "score": float(j.scores[i]),
                    "threshold": cfg.params.threshold,
                    "is_anomaly": bool(j.fire[i]),
                    "detector": DETECTOR_NAME,
                    "reasons": reasons(
                        FEATURES,
                        values[i],
                        # what each metric was expected at
                        j.before.level[i] + (j.season[i] if daily else j.season),
                        j.std[i],
                        j.z[i],
                        cfg.reason_sigma,
                        beyond=j.extreme[i],
                        weighted=j.weighted[i],
                    )
                    if standing[i]
                    else [],  # fmt: skip
                    **episode,
                }
            )
        learn_judged(self, rows, values, warm, j, cfg.params, elapsed)
        self.last_ts[rows] = np.maximum(self.last_ts[rows], ts)
        changed = warm != self.warm[rows]
        self.warm[rows] = warm
        due = changed | (ts - self.published_ts[rows] >= cfg.publish_interval_s)
        if due.any():
            out.baselines.extend(self.baseline_records(rows[due]))
            self.published_ts[rows[due]] = ts[due]
        return j

    def baseline_records(self, rows: np.ndarray) -> list[dict]:
        """The baselines of these agent rows, as ``BaselineRecord`` dicts."""
        agent_ids, tenant_names = self.index.agent_ids, self.index.tenant_names
        return [
            {
                "agent_id": agent_ids[row],
                "tenant_id": tenant_names[tenant],
                "timestamp": timestamp,
                "heartbeats": int(count),
                "warmed_up": warm,
                # (zip's strict check doubles the cost of these dicts; a row has F values)
                "mean": dict(zip(FEATURES, mean, strict=False)),
                "std": dict(zip(FEATURES, std, strict=False)),
            }
            for row, tenant, timestamp, count, warm, mean, std in zip(
                rows.tolist(),
                self.index.tenant[rows].tolist(),
                self.last_ts[rows].tolist(),
                self.count[rows].tolist(),
                self.warm[rows].tolist(),
                self.mean[rows].tolist(),
                np.sqrt(self.var[rows]).tolist(),
                strict=True,
            )
        ]


def _fits(array: np.ndarray | None, spec: ArraySpec) -> bool:
    """Whether a state's ``array`` has the layout of ``spec`` (dtype, shape of a row)."""
    return array is not None and array.dtype == spec[0] and array.shape[1:] == spec[2]
