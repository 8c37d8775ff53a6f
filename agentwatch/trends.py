"""Trend alerts: a bounded metric on course to cross its limit raises a WARNING first.

For every agent and every watched metric (``trend_limits``: CPU, memory and
disk in percent, error rate as a share), :class:`TrendWatch` keeps a straight
line fitted to the metric against event time by exponentially weighted least
squares: a heartbeat's weight halves every ``trend_half_life_s``, but over no fewer
than ``trend_min_half_life_heartbeats`` heartbeats (an agent beating every 5 minutes
is fitted over as many heartbeats as one beating every 30 s, not over two). When the line
is good (at least ``trend_min_samples`` heartbeats, R² of at least
``trend_min_r2``), rises, and reaches the limit within ``trend_horizon_s``
while both the fitted and the latest value are still below it, the agent gets
one WARNING threat ``trend_<metric>`` (category PERFORMANCE) with the current
value, the slope per hour, the time left (``eta_s``) and the limit. One per
episode: the metric warns again only after its trend went away (turned down,
or no longer reaches the limit within ``trend_rearm_factor`` horizons).

The fit is online and small: with ``x`` the age of a heartbeat before the
agent's clock, an agent keeps ``Σw``, ``Σw·x`` and ``Σw·x²`` (shared by its
metrics) and per metric ``Σw·y``, ``Σw·y²`` and ``Σw·x·y``; a heartbeat ages
and decays the sums, then adds itself at ``x = 0``. So the fitted value at
the clock, the slope and R² are a few array operations per pass of a batch
(one heartbeat per agent per pass, as in :mod:`agentwatch.fleet`), and the
result does not depend on where batches are cut. A heartbeat not newer than
its agent's clock (late or repeated) is ignored.

Daily cycles and noise do not warn: a cycle's slope is a few points per hour,
far from reaching a limit within the horizon, and noise leaves R² low.

>>> from agentwatch.settings import Settings
>>> from schemas.heartbeats import NUMERIC_FIELDS, HeartbeatBatch
>>> def beats(memory, t0=1.8e9):
...     n = len(memory)
...     metrics = {f: np.full(n, 10.0) for f in NUMERIC_FIELDS}
...     metrics["memory_usage"] = np.asarray(memory, dtype=float)
...     return HeartbeatBatch(np.arange(n), ["a1"] * n, ["t1"] * n,
...                           t0 + 30.0 * np.arange(n), metrics, [None] * n)
>>> trends = TrendWatch.from_settings(Settings())
>>> flat = trends.observe(beats([50.0 + (i % 2) for i in range(40)]))
>>> flat
[]
>>> leak = trends.observe(beats([50.0 + 0.5 * i for i in range(40)], t0=1.8e9 + 1200))
>>> [(t["rule"], t["severity"], round(t["evidence"]["values"]["current"])) for t in leak]
[('trend_memory_usage', 'WARNING', 62)]
>>> leak[0]["evidence"]["values"]["eta_s"] < 3600
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agentwatch.rows import AgentIndex, ArraySpec, RowArrays
from agentwatch.settings import Settings
from schemas.heartbeats import FLOAT_FIELDS, HeartbeatBatch

_COUNT_MAX = np.iinfo(np.uint16).max
#: Share of a fit's weight that lies within the window an evidence names (90 %).
_WINDOW_WEIGHT = 0.9


@dataclass(frozen=True, slots=True)
class TrendConfig:
    """The trend watch's tunables, taken from :class:`Settings`.

    >>> TrendConfig.from_settings(Settings()).metrics
    ('cpu_usage', 'memory_usage', 'disk_usage', 'error_rate')
    """

    metrics: tuple[str, ...]
    limits: tuple[float, ...]
    horizon_s: float
    half_life_s: float
    min_half_life_heartbeats: int
    min_samples: int
    min_r2: float
    rearm_factor: float

    @classmethod
    def from_settings(cls, settings: Settings) -> TrendConfig:
        """Pick the trend watch's numbers out of the settings; a clear error for a metric
        that is not a bounded heartbeat metric."""
        limits = dict(settings.trend_limits)
        unknown = sorted(set(limits) - set(FLOAT_FIELDS))
        if unknown:
            raise ValueError(
                f"trend_limits names {', '.join(unknown)}, which heartbeats do not carry as "
                f"numbers; use some of {', '.join(FLOAT_FIELDS)}"
            )
        return cls(
            metrics=tuple(limits),
            limits=tuple(float(v) for v in limits.values()),
            horizon_s=settings.trend_horizon_s,
            half_life_s=settings.trend_half_life_s,
            min_half_life_heartbeats=settings.trend_min_half_life_heartbeats,
            min_samples=settings.trend_min_samples,
            min_r2=settings.trend_min_r2,
            rearm_factor=settings.trend_rearm_factor,
        )


class TrendWatch(RowArrays):
    """Online trend lines of the watched metrics of one shard of agents (one row per agent).

    >>> TrendWatch.from_settings(Settings()).bytes_per_agent()
    131
    """

    def __init__(self, config: TrendConfig, index: AgentIndex | None = None, capacity: int = 64):
        self._setup(_layout(config), index, capacity)
        self.config = config
        self.configure(config)

    def configure(self, config: TrendConfig) -> None:
        """Go on with new tunables (settings changed across a restart); other watched
        metrics start every trend over.

        >>> trends = TrendWatch.from_settings(Settings())
        >>> trends.configure(TrendConfig.from_settings(Settings(trend_limits={"cpu_usage": 95})))
        >>> trends.swy.shape
        (64, 1)
        """
        again = config.metrics != self.config.metrics
        self.config = config
        self._limit = np.asarray(config.limits)
        self._decay_per_s = math.log(2.0) / config.half_life_s
        #: The least a weight decays by per heartbeat (halving over min_half_life_heartbeats).
        self._decay_floor = 0.5 ** (1.0 / config.min_half_life_heartbeats)
        #: How far back the window an evidence names reaches (90 % of the weight).
        self._window_s = -math.log(1.0 - _WINDOW_WEIGHT) / self._decay_per_s
        layout = _layout(config)
        self._relayout(layout, fresh=layout if again else ())

    @classmethod
    def from_settings(cls, settings: Settings, index: AgentIndex | None = None) -> TrendWatch:
        """An empty shard with the settings' tunables (rows from ``index`` if given)."""
        return cls(TrendConfig.from_settings(settings), index)

    def observe(self, batch: HeartbeatBatch) -> list[dict]:
        """Learn every heartbeat of ``batch`` in each agent's order; the WARNING threats
        (``Threat`` dicts) of the trends that now reach their limit within the horizon."""
        threats: list[dict] = []
        if not len(batch):
            return threats
        rows = self._rows(batch.agent_id, batch.tenant_id)
        values = np.column_stack([batch.metrics[m] for m in self.config.metrics])
        for positions in self.index.passes_of(rows):
            fresh = batch.timestamp[positions] > self.clock[rows[positions]]
            positions = positions[fresh]  # late or repeated heartbeats are ignored
            if len(positions):
                sums = self._learn(rows[positions], batch.timestamp[positions], values[positions])
                self._judge(rows[positions], values[positions], threats, sums)
        return threats

    def _learn(self, rows: np.ndarray, ts: np.ndarray, y: np.ndarray) -> _Sums:
        """Age the sums of each row to ``ts`` (decay and shift x), then add the heartbeat;
        the rows' new sums (what :meth:`fit` would read back)."""
        age = ts - self.clock[rows]
        age = np.where(np.isfinite(age), age, 0.0)  # an agent's first heartbeat
        decay = np.maximum(np.exp(-self._decay_per_s * age), self._decay_floor)
        sw, swx, swxx, swy = self.sw[rows], self.swx[rows], self.swxx[rows], self.swy[rows]
        d, column_decay = age[:, None], decay[:, None]
        sums = _Sums(
            sw=decay * sw + 1.0,
            swx=decay * (swx - age * sw),
            swxx=decay * (swxx - 2.0 * age * swx + age * age * sw),
            swy=column_decay * swy + y,
            swyy=column_decay * self.swyy[rows] + y * y,
            swxy=column_decay * (self.swxy[rows] - d * swy),
        )
        for name in _Sums.__slots__:
            getattr(self, name)[rows] = getattr(sums, name)
        self.clock[rows] = ts
        count = self.count[rows]
        self.count[rows] = count + (count < _COUNT_MAX)
        return sums

    def fit(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fitted value at the clock, slope per second and R² of every metric of ``rows``
        (each ``len(rows) × metrics``; slope 0 and R² 0 where the times do not vary)."""
        return _Sums(*(getattr(self, name)[rows] for name in _Sums.__slots__)).fit()

    def _judge(
        self, rows: np.ndarray, latest: np.ndarray, threats: list[dict], sums: _Sums
    ) -> None:
        cfg = self.config
        fitted, slope, r2 = sums.fit()
        limit = self._limit
        rising = slope > 0
        below = (fitted < limit) & (latest < limit)
        reach_s = np.where(rising, (limit - fitted) / np.where(rising, slope, 1.0), np.inf)
        warm = (self.count[rows] >= cfg.min_samples)[:, None]
        on_course = warm & rising & below & (r2 >= cfg.min_r2) & (reach_s <= cfg.horizon_s)
        heading = rising & (~below | (reach_s <= cfg.rearm_factor * cfg.horizon_s))
        bits = np.left_shift(1, np.arange(len(cfg.metrics))).astype(np.uint8)
        warned = (self.warned[rows][:, None] & bits) != 0
        fire = on_course & ~warned
        keep = (warned | fire) & heading
        self.warned[rows] = (keep * bits).sum(axis=1).astype(np.uint8)
        for i, j in zip(*np.nonzero(fire), strict=True):
            threats.append(
                self._threat(
                    int(rows[i]),
                    int(j),
                    latest[i, j],
                    fitted[i, j],
                    slope[i, j],
                    reach_s[i, j],
                    r2[i, j],
                )  # fmt: skip
            )

    def _threat(
        self,
        row: int,
        j: int,
        latest: float,
        fitted: float,
        slope: float,
        reach_s: float,
        r2: float,
    ) -> dict:
        cfg = self.config
        metric, limit, clock = cfg.metrics[j], cfg.limits[j], float(self.clock[row])
        return {
            **self.index.agent(row),
            "rule": f"trend_{metric}",
            "category": "PERFORMANCE",
            "severity": "WARNING",
            "evidence": {
                "condition": (
                    f"{metric} trend reaches {limit:g} within {cfg.horizon_s:g} s "
                    f"(R² ≥ {cfg.min_r2:g}, half-life {cfg.half_life_s:g} s)"
                ),
                "values": {
                    "current": float(latest),
                    "fitted": float(fitted),
                    "slope_per_hour": float(slope * 3600.0),
                    "eta_s": float(reach_s),
                    "limit": float(limit),
                    "r2": float(r2),
                },
                "baseline": [],
                "window_start": clock - self._window(row),
                "window_end": clock,
            },
            "first_seen": clock,
            "last_seen": clock,
        }

    def _window(self, row: int) -> float:
        """How far back the fit of ``row`` reaches (90 % of its weight): the half-life's
        window, or longer where heartbeats are sparse and the decay floor holds."""
        mean_age = -float(self.swx[row]) / float(self.sw[row])
        return max(self._window_s, -math.log(1.0 - _WINDOW_WEIGHT) * mean_age)


@dataclass(slots=True)
class _Sums:
    """The weighted sums of some rows (Σw, Σw·x, Σw·x² per row; Σw·y, Σw·y², Σw·x·y per
    row and metric), as :class:`TrendWatch` keeps them."""

    sw: np.ndarray
    swx: np.ndarray
    swxx: np.ndarray
    swy: np.ndarray
    swyy: np.ndarray
    swxy: np.ndarray

    def fit(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fitted value at the clock, slope per second and R² of every metric (see
        :meth:`TrendWatch.fit`)."""
        sw = self.sw[:, None]
        mean_x = self.swx[:, None] / sw
        mean_y = self.swy / sw
        sxx = self.swxx[:, None] - sw * mean_x**2
        sxy = self.swxy - sw * mean_x * mean_y
        syy = self.swyy - sw * mean_y**2
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = np.where(sxx > 0, sxy / sxx, 0.0)
            r2 = np.where((sxx > 0) & (syy > 0), slope * sxy / syy, 0.0)
        fitted = mean_y - slope * mean_x
        return fitted, slope, np.clip(r2, 0.0, 1.0)


def _layout(config: TrendConfig) -> dict[str, ArraySpec]:
    """The per-agent arrays of :class:`TrendWatch` under ``config``."""
    m = len(config.metrics)
    return {
        "clock": (np.dtype(np.float64), -np.inf, ()),
        "count": (np.dtype(np.uint16), 0, ()),
        "sw": (np.dtype(np.float64), 0.0, ()),  # Σw
        "swx": (np.dtype(np.float64), 0.0, ()),  # Σw·x, x = t - clock ≤ 0
        "swxx": (np.dtype(np.float64), 0.0, ()),  # Σw·x²
        "swy": (np.dtype(np.float64), 0.0, (m,)),  # Σw·y per metric
        "swyy": (np.dtype(np.float64), 0.0, (m,)),
        "swxy": (np.dtype(np.float64), 0.0, (m,)),
        "warned": (np.dtype(np.uint8), 0, ()),  # bit j: metric j warned this episode
    }
