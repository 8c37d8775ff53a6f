"""Threat rules: conditions on an agent's heartbeats, judged per agent in event time.

A rule is data (:class:`schemas.models.ThreatRuleSpec`): a condition, how long
it must hold (``for_s``), a category and a severity. Operators add, change,
disable and delete rules at runtime (:meth:`RuleSet.apply`); the seed's five
rules are the default set (:func:`default_rules`, every number from settings).

A :class:`RuleSet` keeps the state of every rule for every agent of a shard as
rows of numpy arrays, like :class:`agentwatch.fleet.FleetBaselines`, so a batch
of thousands of heartbeats is judged in a few array operations per rule; Python
only loops over the heartbeats whose rule starts to hold, stops holding, or
fires. Within a batch an agent's heartbeats are taken in order (one pass per
heartbeat of an agent), so the result does not depend on where batches are cut.

Time is the heartbeats' own (event time). Per agent and rule the state is a
few numbers:

- Every rule keeps the time its condition began to hold (NaN: it does not
  hold) and whether this episode has fired, for the agents whose condition
  holds (few at a time: nothing for the others); ``last`` conditions keep
  nothing more.
- A baseline condition holds while any metric is beyond ``sigma`` of its
  baseline, but its ``for_s`` counts per metric: it keeps how long each metric
  has been beyond on every heartbeat, and fires once one of them has been for
  ``for_s`` (metrics taking turns beyond 3σ are noise, not a pattern).
- Windowed aggregates (``avg``, ``sum``, ``max``, ``min``, ``rate_of_change``,
  ``count_changes``) keep a ring of ``buckets`` event-time buckets of width
  ``window_s / buckets``, aligned to the epoch. At an agent's clock ``c`` the
  window holds the buckets from ``floor(c / width) - buckets + 1`` to
  ``floor(c / width)``: it reaches back between ``(buckets - 1) / buckets`` of
  ``window_s`` and all of it (11/12 to 12/12 with the default 12 buckets).
  Over that bucket-aligned window the aggregate is exact, not estimated: a
  sum can miss at most the heartbeats of the oldest ``1 / buckets`` of
  ``window_s``. A bucket's count saturates at 65535 heartbeats.
- ``rate_of_change`` is the change per second between the average of the
  newest and of the oldest non-empty bucket in the window.

Heartbeats out of order: one with the agent's latest timestamp is a duplicate
and is ignored; an older one is added to a windowed aggregate if its bucket is
still in the window (the rule is then judged at the agent's clock), and is
ignored by ``last``, ``count_changes`` and baseline conditions.

>>> import orjson
>>> from agentwatch.settings import Settings
>>> from schemas.heartbeats import parse_heartbeats
>>> def beat(t, cpu):
...     return orjson.dumps({"agent_id": "a1", "tenant_id": "t1", "timestamp": t,
...         "cpu_usage": cpu, "memory_usage": 50.0, "disk_usage": 30.0,
...         "network_latency": 10.0, "active_tasks": 2, "completed_tasks": 0,
...         "failed_tasks": 0, "error_rate": 0.0, "response_time_avg": 100.0,
...         "uptime_seconds": 60, "bytes_out": 1000})
>>> rules = RuleSet.default(Settings())
>>> t0 = 1.8e9
>>> out = rules.observe(parse_heartbeats([beat(t0 + 30 * i, 99.0) for i in range(20)])[0])
>>> out.threats
[]
>>> out = rules.observe(parse_heartbeats([beat(t0 + 600, 99.0)])[0])
>>> [(t["rule"], t["severity"], t["first_seen"] - t0, t["last_seen"] - t0) for t in out.threats]
[('resource_abuse', 'HIGH', 0.0, 600.0)]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from agentwatch.baselines import FEATURES, deviations
from agentwatch.rows import (
    AgentIndex,
    ArraySpec,
    RowArrays,
    allocate,
    bytes_per_row,
    grow,
    trimmed,
)
from agentwatch.settings import Settings
from schemas.heartbeats import HeartbeatBatch
from schemas.models import (
    AGENT_STATES,
    BaselineCondition,
    MetricCondition,
    RuleChange,
    ThreatRuleSpec,
)

if TYPE_CHECKING:  # (the API checks rules without loading the detector and River)
    from agentwatch.fleet import FleetBaselines, FleetOutput

_OPS = {">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal}
#: ``status`` as a number: its index among the lifecycle states, NaN when absent.
_STATUS_CODE = {None: np.nan, **{state: float(i) for i, state in enumerate(AGENT_STATES)}}
_COUNT_MAX = np.iinfo(np.uint16).max
_CHANGES_MAX = np.iinfo(np.uint8).max


class RuleChangeError(ValueError):
    """A rule change that cannot apply (unknown name, name taken, metric without baseline)."""


#: The names of the seed's default rules (what ``POST /api/v1/rules/restore`` may name).
DEFAULT_RULE_NAMES = (
    "excessive_errors",
    "resource_abuse",
    "abnormal_patterns",
    "rapid_changes",
    "data_exfiltration",
)


def default_rules(settings: Settings) -> list[ThreatRuleSpec]:
    """The seed's five threat rules, every number taken from ``settings``.

    >>> [(r.name, r.severity, r.for_s) for r in default_rules(Settings())][:2]
    [('excessive_errors', 'HIGH', 0.0), ('resource_abuse', 'HIGH', 600.0)]
    >>> tuple(r.name for r in default_rules(Settings())) == DEFAULT_RULE_NAMES
    True
    """
    s = settings
    rules = [
        {
            "name": "excessive_errors",
            "description": "Error rate above the limit over a window (seed: > 20 %).",
            "condition": {
                "metric": "error_rate",
                "aggregate": "avg",
                "window_s": s.threat_error_rate_window_s,
                "op": ">",
                "value": s.threat_error_rate_max,
            },
            "category": "PERFORMANCE",
            "severity": "HIGH",
        },
        {
            "name": "resource_abuse",
            "description": "CPU or memory above the limit, sustained (seed: > 95 % for 10+ min).",
            "condition": {
                "metric": ["cpu_usage", "memory_usage"],
                "op": ">",
                "value": s.threat_resource_max_percent,
            },
            "for_s": s.threat_resource_for_s,
            "category": "SECURITY",
            "severity": "HIGH",
        },
        {
            "name": "abnormal_patterns",
            "description": "A metric far from the agent's own baseline (seed: 3σ), once warm.",
            "condition": {
                "baseline_sigma": s.threat_abnormal_sigma,
                "log_metrics": s.threat_abnormal_log_metrics or None,
            },
            "for_s": s.threat_abnormal_for_s,
            "category": "SECURITY",
            "severity": "WARNING",
        },
        {
            "name": "rapid_changes",
            "description": "Status changing too often (seed: > 10 changes in 5 minutes).",
            "condition": {
                "metric": "status",
                "aggregate": "count_changes",
                "window_s": s.threat_status_changes_window_s,
                "op": ">",
                "value": s.threat_status_changes_max,
            },
            "category": "SECURITY",
            "severity": "HIGH",
        },
        {
            "name": "data_exfiltration",
            "description": "Too many bytes sent within a window (seed: > 1 GB in 1 hour).",
            "condition": {
                "metric": "bytes_out",
                "aggregate": "sum",
                "window_s": s.threat_exfiltration_window_s,
                "op": ">",
                "value": s.threat_exfiltration_bytes,
            },
            "category": "SECURITY",
            "severity": "CRITICAL",
        },
    ]
    return [ThreatRuleSpec.model_validate(rule) for rule in rules]


def restoring_changes(
    current: Iterable[ThreatRuleSpec],
    defaults: Iterable[ThreatRuleSpec],
    names: Iterable[str] | None = None,
) -> list[RuleChange]:
    """The changes that put the default rules (all, or those in ``names``) back as they
    were shipped, enabled: ``add`` for a deleted one, ``update`` for a changed or
    disabled one, nothing for one already as shipped. Other rules are left alone.

    Raises :class:`RuleChangeError` for a name that is not a default rule.

    >>> defaults = default_rules(Settings())
    >>> current = [r for r in defaults if r.name != "data_exfiltration"]
    >>> current[0] = current[0].model_copy(update={"enabled": False})
    >>> [(c.action, c.target) for c in restoring_changes(current, defaults)]
    [('update', 'excessive_errors'), ('add', 'data_exfiltration')]
    >>> restoring_changes(current, defaults, ["resource_abuse"])
    []
    """
    shipped = {rule.name: rule for rule in defaults}
    wanted = list(shipped) if names is None else list(dict.fromkeys(names))
    unknown = [name for name in wanted if name not in shipped]
    if unknown:
        raise RuleChangeError(
            f"{', '.join(map(repr, unknown))} is not a default rule; the default rules are: "
            f"{', '.join(shipped)}"
        )
    present = {rule.name: rule for rule in current}
    changes = []
    for name in wanted:
        if name not in present:
            changes.append(RuleChange(action="add", rule=shipped[name]))
        elif present[name] != shipped[name]:
            changes.append(RuleChange(action="update", rule=shipped[name]))
    return changes


def categories_left_unwatched(
    before: Iterable[ThreatRuleSpec],
    after: Iterable[ThreatRuleSpec],
    defaults: Iterable[ThreatRuleSpec],
) -> list[str]:
    """The categories of the default rules that had an enabled rule ``before`` a change
    and have none ``after`` it: such a change stops a whole kind of threat from being
    seen, so it is made only when the operator confirms it.

    >>> defaults = default_rules(Settings())
    >>> after = [r for r in defaults if r.name != "excessive_errors"]
    >>> categories_left_unwatched(defaults, after, defaults)
    ['PERFORMANCE']
    >>> categories_left_unwatched(defaults, defaults[1:] + defaults[:1], defaults)
    []
    """
    watched = {rule.category for rule in defaults}

    def enabled(rules: Iterable[ThreatRuleSpec]) -> set[str]:
        return {rule.category for rule in rules if rule.enabled} & watched

    return sorted(enabled(before) - enabled(after))


@dataclass(frozen=True, slots=True)
class BaselineInputs:
    """The baseline each heartbeat of a batch is judged against (one row per batch row).

    ``mean`` and ``std`` are ``n × len(features)``; ``warm`` says whether the
    agent's baseline had finished warming up. Baseline conditions only hold on
    warm rows.

    >>> inputs = BaselineInputs(mean=np.array([[50.0]]), std=np.array([[2.0]]),
    ...                         warm=np.array([True]), features=("cpu_usage",))
    >>> inputs.take(np.array([0, 0])).mean.tolist()
    [[50.0], [50.0]]
    """

    mean: np.ndarray
    std: np.ndarray
    warm: np.ndarray
    features: tuple[str, ...] = FEATURES

    @classmethod
    def from_fleet(cls, fleet: FleetBaselines, batch: HeartbeatBatch) -> BaselineInputs:
        """The baselines ``fleet`` holds now for the agents of ``batch``, with the
        detector's std floors. Call it before ``fleet.observe(batch)``, so no
        heartbeat is judged against a baseline that has already learned it. Every
        heartbeat of an agent gets the same row: for a batch with several heartbeats
        of an agent, :meth:`met` gives each the baseline as its turn came."""
        rows = fleet.rows(batch)
        return cls.of(fleet, fleet.mean[rows], fleet.var[rows], fleet.warm[rows])

    @classmethod
    def met(cls, scored: FleetOutput) -> BaselineInputs:
        """The baseline each heartbeat met in ``FleetBaselines.observe`` (``scored`` is
        what it returned), with the detector's std floors: just before that heartbeat was
        learned, after the agent's earlier heartbeats of the batch. A heartbeat is judged
        against the same baseline however the heartbeats were cut into batches (a batch of
        one heartbeat per agent gets what :meth:`from_fleet` gives before it)."""
        return cls(mean=scored.met_mean, std=scored.met_std, warm=scored.met_warm)

    @classmethod
    def of(
        cls, fleet: FleetBaselines, mean: np.ndarray, var: np.ndarray, warm: np.ndarray
    ) -> BaselineInputs:
        """Means and variances of ``fleet``'s baselines, with the detector's std floors."""
        params = fleet.config.params
        _, std = deviations(mean, var, mean, params.std_floor, params.rel_floor)
        return cls(mean=mean, std=std, warm=warm)

    def take(self, positions: np.ndarray) -> BaselineInputs:
        """The rows at ``positions``."""
        return BaselineInputs(
            self.mean[positions], self.std[positions], self.warm[positions], self.features
        )


@dataclass(slots=True)
class RuleOutput:
    """What one batch produced.

    ``threats``: a dict in the layout of :class:`schemas.models.Threat` for
    every (agent, rule) whose condition has now held for the rule's ``for_s``
    (once per episode). ``transitions``: every change of a condition's truth,
    ``{agent_id, tenant_id, rule, holds, at, first_seen, fired}``, for an alert
    state machine (pending when it starts to hold, resolved when it stops).
    """

    threats: list[dict] = field(default_factory=list)
    transitions: list[dict] = field(default_factory=list)


@dataclass(slots=True)
class _Pass:
    """One pass of a batch: at most one heartbeat per agent row."""

    rows: np.ndarray
    ts: np.ndarray
    clock_before: np.ndarray  # the agent's latest event time before this heartbeat
    clock: np.ndarray  # ... and after it
    in_order: np.ndarray
    columns: dict[str, np.ndarray]
    baseline: BaselineInputs | None


@dataclass(slots=True)
class _Judgement:
    """A condition's verdict on the rows of a pass (``values``: what it judged, n × metrics)."""

    holds: np.ndarray
    judged: np.ndarray
    values: np.ndarray
    z: np.ndarray | None = None
    baseline: BaselineInputs | None = None
    # how long the condition has held, as the rule's ``for_s`` counts it (None: since
    # the condition as a whole began to hold; a baseline condition counts per metric)
    held_s: np.ndarray | None = None


class _Condition:
    """State and verdict of one condition for every agent row (subclasses per kind)."""

    metrics: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._arrays: dict[str, ArraySpec] = {}
        self._rings: list[str] = []  # arrays of shape (agents, metrics, buckets)

    def _array(
        self, name: str, dtype: type, fill: float, shape: tuple[int, ...] = (), ring: bool = False
    ) -> None:
        self._arrays[name] = (np.dtype(dtype), fill, shape)
        if ring:
            self._rings.append(name)

    def allocate(self, capacity: int) -> None:
        allocate(self, self._arrays, capacity)

    def grow(self, capacity: int) -> None:
        grow(self, self._arrays, capacity)

    def bytes_per_agent(self) -> int:
        return bytes_per_row(self._arrays)

    def judge(self, p: _Pass) -> _Judgement:
        raise NotImplementedError

    def window_start(self, clock: float) -> float | None:
        """Start of the aggregation window at ``clock`` (None: not windowed)."""
        return None


class _Last(_Condition):
    """``op`` on each in-order heartbeat's own value; holds if any metric does."""

    def __init__(self, condition: MetricCondition) -> None:
        super().__init__()
        self.metrics = tuple(condition.metric)
        self.op, self.value = _OPS[condition.op], condition.value
        self.text = f"{' or '.join(self.metrics)} {condition.op} {condition.value:g}"

    def judge(self, p: _Pass) -> _Judgement:
        values = np.column_stack([p.columns[m] for m in self.metrics])
        holds = self.op(values, self.value).any(axis=1)
        return _Judgement(holds, p.in_order, values)


class _Ring(_Condition):
    """A window of ``buckets`` event-time buckets per agent and metric (see module doc)."""

    def __init__(self, condition: MetricCondition, buckets: int) -> None:
        super().__init__()
        self.metrics = tuple(condition.metric)
        self.op, self.value = _OPS[condition.op], condition.value
        self.buckets = buckets
        self.width = condition.window_s / buckets
        self._back = np.arange(buckets)
        self.text = (
            f"{condition.aggregate}({', '.join(self.metrics)}) over {condition.window_s:g} s "
            f"{condition.op} {condition.value:g}"
        )

    def window_start(self, clock: float) -> float:
        return (np.floor(clock / self.width) - self.buckets + 1) * self.width

    def _advance(self, p: _Pass) -> np.ndarray:
        """Empty the buckets the agents' clocks moved past; the head bucket of each row."""
        head_before = np.floor(p.clock_before / self.width)
        head = np.floor(p.clock / self.width)
        # bucket ids head, head-1, … above head_before are stale: as many as the head
        # moved (at most all of them; a first heartbeat's head_before is -inf). Most rows
        # move by 0 or 1, so the stale cells are listed, not found in a rows × buckets mask.
        moved = np.minimum(head - head_before, self.buckets).astype(np.intp)
        stale = int(moved.sum())
        if stale:
            rows = np.repeat(p.rows, moved)
            ends = np.cumsum(moved)
            back = np.arange(stale) - np.repeat(ends - moved, moved)
            slots = ((np.repeat(head, moved) - back) % self.buckets).astype(np.intp)
            for name in self._rings:
                getattr(self, name)[rows, :, slots] = self._arrays[name][1]
        return head

    def _slots(self, p: _Pass, head: np.ndarray, take: np.ndarray) -> tuple[np.ndarray, ...]:
        """Rows, bucket slots and positions of the heartbeats (among ``take``) inside the window."""
        bucket = np.floor(p.ts / self.width)
        inside = take & (bucket > head - self.buckets)
        return p.rows[inside], (bucket[inside] % self.buckets).astype(np.intp), inside


class _Window(_Ring):
    """``avg``, ``sum``, ``max``, ``min`` or ``rate_of_change`` over the window."""

    def __init__(self, condition: MetricCondition, buckets: int) -> None:
        super().__init__(condition, buckets)
        self.aggregate = condition.aggregate
        shape = (len(self.metrics), buckets)
        # an average's buckets in float32 (7 significant digits, summed over the window in
        # float64): 4 bytes an agent, metric and bucket instead of 8; a sum's stay exact
        # (a byte over a limit is over it)
        if self.aggregate in ("avg", "sum", "rate_of_change"):
            exact = self.aggregate == "sum"
            self._array("total", np.float64 if exact else np.float32, 0.0, shape, ring=True)
        if self.aggregate in ("avg", "rate_of_change"):
            self._array("count", np.uint16, 0, shape, ring=True)
        if self.aggregate in ("max", "min"):
            self._array(
                "extreme",
                np.float64,
                -np.inf if self.aggregate == "max" else np.inf,
                shape,
                ring=True,
            )

    def judge(self, p: _Pass) -> _Judgement:
        head = self._advance(p)
        values = np.column_stack([p.columns[m] for m in self.metrics])
        rows, slots, inside = self._slots(p, head, np.ones(len(p.rows), dtype=bool))
        added = values[inside]
        if "total" in self._arrays:
            self.total[rows, :, slots] += added
        if "count" in self._arrays:
            count = self.count[rows, :, slots]
            self.count[rows, :, slots] = count + (count < _COUNT_MAX)
        if "extreme" in self._arrays:
            pick = np.maximum if self.aggregate == "max" else np.minimum
            self.extreme[rows, :, slots] = pick(self.extreme[rows, :, slots], added)
        aggregated = self._aggregate(p.rows, head)
        holds = self.op(aggregated, self.value).any(axis=1)
        return _Judgement(holds, np.ones(len(p.rows), dtype=bool), aggregated)

    def _aggregate(self, rows: np.ndarray, head: np.ndarray) -> np.ndarray:
        """The aggregate of each row's window, ``n × metrics`` (NaN when it has no value)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.aggregate == "sum":
                return self.total[rows].sum(axis=2, dtype=np.float64)
            if self.aggregate == "avg":
                return self.total[rows].sum(axis=2, dtype=np.float64) / self.count[rows].sum(axis=2)
            if self.aggregate in ("max", "min"):
                reduce = np.max if self.aggregate == "max" else np.min
                extreme = reduce(self.extreme[rows], axis=2).astype(np.float64)
                return np.where(np.isinf(extreme), np.nan, extreme)
            # rate_of_change: buckets newest first, then (newest mean - oldest mean) / time
            slots = ((head[:, None] - self._back) % self.buckets).astype(np.intp)
            total = self.total[rows[:, None], :, slots].astype(np.float64)  # n × buckets × metrics
            count = self.count[rows[:, None], :, slots].astype(np.float64)
            mean = total / count
            filled = count > 0
            newest = filled.argmax(axis=1)  # n × metrics
            oldest = self.buckets - 1 - filled[:, ::-1].argmax(axis=1)
            pick = np.take_along_axis
            rise = (
                pick(mean, newest[:, None], axis=1)[:, 0]
                - pick(mean, oldest[:, None], axis=1)[:, 0]
            )
            seconds = (oldest - newest) * self.width
            return np.where(seconds > 0, rise / seconds, np.nan)


class _Changes(_Ring):
    """How often a metric's value changed within the window (``count_changes``)."""

    def __init__(self, condition: MetricCondition, buckets: int) -> None:
        super().__init__(condition, buckets)
        self.codes = self.metrics == ("status",)  # a state's index fits a byte
        if self.codes:
            self._array("last", np.int8, -1, (1,))
        else:
            self._array("last", np.float64, np.nan, (len(self.metrics),))
        # a bucket counts up to 255 changes (a byte an agent, metric and bucket)
        self._array("changes", np.uint8, 0, (len(self.metrics), buckets), ring=True)

    def judge(self, p: _Pass) -> _Judgement:
        head = self._advance(p)
        values = np.column_stack([p.columns[m] for m in self.metrics])
        previous = self.last[p.rows].astype(np.float64)
        if self.codes:
            previous[previous < 0] = np.nan
        seen = p.in_order[:, None] & ~np.isnan(values)
        changed = (seen & ~np.isnan(previous) & (values != previous)).astype(np.uint16)
        latest = np.where(seen, values, previous)
        self.last[p.rows] = np.where(np.isnan(latest), -1, latest) if self.codes else latest
        rows, slots, inside = self._slots(p, head, p.in_order)
        count = self.changes[rows, :, slots]
        self.changes[rows, :, slots] = np.minimum(count + changed[inside], _CHANGES_MAX)
        counted = self.changes[p.rows].sum(axis=2, dtype=np.float64)
        holds = self.op(counted, self.value).any(axis=1)
        return _Judgement(holds, np.ones(len(p.rows), dtype=bool), counted)


class _Sigma(_Condition):
    """Any metric more than ``sigma`` std from the agent's warm baseline.

    The rule's ``for_s`` is counted per metric: it fires once *one* metric has
    been beyond on every heartbeat for ``for_s`` (``held``: how long each metric
    has been, NaN when it is not). The condition holds (a pending alert opens,
    from the time that metric went beyond) once one metric is beyond on two
    heartbeats in a row — or on one, for a rule with ``for_s = 0``. A single
    reading beyond is no news, and a run of heartbeats on which different metrics
    take turns beyond ``sigma`` is noise, not a pattern: with eight metrics, some
    of them heavy-tailed, one of them is beyond 3σ on ~3 % of normal heartbeats,
    and three such heartbeats in a row were every false alert on the simulated fleet.
    """

    def __init__(self, condition: BaselineCondition, for_s: float = 0.0) -> None:
        super().__init__()
        self.instant = for_s == 0
        self.metrics = tuple(condition.metric or FEATURES)
        self._array("held", np.float32, np.nan, (len(self.metrics),))
        unknown = [m for m in self.metrics if m not in FEATURES]
        if unknown:
            raise RuleChangeError(
                f"metric {', '.join(unknown)} has no baseline; baselines are kept for "
                f"{', '.join(FEATURES)}"
            )
        stray = [m for m in condition.log_metrics or () if m not in self.metrics]
        if stray:
            raise RuleChangeError(
                f"log_metrics {', '.join(stray)} not watched by the rule; "
                f"it watches {', '.join(self.metrics)}"
            )
        self.sigma = condition.baseline_sigma
        self.log = np.array([m in (condition.log_metrics or ()) for m in self.metrics])
        watched = "a metric" if condition.metric is None else " or ".join(self.metrics)
        self.text = f"{watched} beyond {self.sigma:g}σ of the agent's baseline"
        if self.log.any():
            rising = ", ".join(m for m, log in zip(self.metrics, self.log, strict=True) if log)
            self.text += f" (a rise of {rising} on a log scale)"

    def judge(self, p: _Pass) -> _Judgement:
        values = np.column_stack([p.columns[m] for m in self.metrics])
        if p.baseline is None:  # nothing to judge against: keep the last verdict
            none = np.zeros(len(p.rows), dtype=bool)
            return _Judgement(none, none, values)
        mean, std = p.baseline.mean, p.baseline.std
        if self.metrics != p.baseline.features:
            columns = [p.baseline.features.index(m) for m in self.metrics]
            mean, std = mean[:, columns], std[:, columns]
        with np.errstate(invalid="ignore", divide="ignore"):
            z = (values - mean) / std
        logged = np.flatnonzero(self.log)
        if logged.size:  # (a rise of these metrics is judged on the log scale)
            v, m = values[:, logged], mean[:, logged]
            rise = (v > m) & (m > 0)
            if rise.any():
                z[:, logged] = np.where(
                    rise, log_normal_deviations(v, m, std[:, logged]), z[:, logged]
                )
        beyond = p.baseline.warm[:, None] & (np.abs(z) > self.sigma)
        judged = p.in_order
        before = self.held[p.rows].astype(np.float64)
        step = (p.clock - p.clock_before)[:, None]
        held = np.where(beyond, np.where(np.isnan(before), 0.0, before + step), np.nan)
        self.held[p.rows[judged]] = held[judged]
        longest = np.where(beyond, held, -np.inf).max(axis=1)  # -inf: no metric is beyond
        holds = beyond.any(axis=1) if self.instant else longest > 0
        return _Judgement(holds, judged, values, z=z, baseline=p.baseline, held_s=longest)


def log_normal_deviations(values: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Deviations of ``values`` on the log scale of the log-normal law with this
    ``mean`` and ``std`` (all > 0): as many std as a normal law's, for the same rarity.

    A right-skewed metric with mean 100 and std 30 reaches 200 on ~1 % of
    heartbeats: 3.3σ on a linear scale, 2.5σ on this one.

    >>> z = log_normal_deviations(np.array([200.0, 250.0]), np.array([100.0]), np.array([30.0]))
    >>> [round(float(v), 2) for v in z]
    [2.51, 3.27]
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = np.sqrt(np.log1p((std / mean) ** 2))
        return (np.log(values) - np.log(mean) + spread**2 / 2) / spread


def _compile(spec: ThreatRuleSpec, buckets: int) -> _Condition:
    condition = spec.condition
    if isinstance(condition, BaselineCondition):
        return _Sigma(condition, spec.for_s)
    if condition.aggregate == "last":
        return _Last(condition)
    if condition.aggregate == "count_changes":
        return _Changes(condition, buckets)
    return _Window(condition, buckets)


class _Held:
    """When each agent's condition began to hold (NaN: it does not hold) and whether
    this episode has fired, kept only for the rows where either is set, sorted by row:
    at any time a condition holds for few of a fleet's agents, and arrays of every
    agent cost 9 bytes an agent per rule.

    >>> held = _Held()
    >>> held.put(np.array([4, 2]), np.array([10.0, np.nan]), np.array([True, False]))
    >>> since, fired = held.get(np.array([2, 4, 7]))
    >>> since.tolist(), fired.tolist(), held.rows.tolist()
    ([nan, 10.0, nan], [False, True, False], [4])
    """

    __slots__ = ("rows", "since", "fired")

    def __init__(
        self,
        rows: np.ndarray | None = None,
        since: np.ndarray | None = None,
        fired: np.ndarray | None = None,
    ) -> None:
        self.rows = np.empty(0, np.int64) if rows is None else rows
        self.since = np.empty(0, np.float64) if since is None else since
        self.fired = np.empty(0, np.bool_) if fired is None else fired

    def __getstate__(self) -> tuple:
        return self.rows, self.since, self.fired

    def __setstate__(self, state: tuple) -> None:
        self.rows, self.since, self.fired = state

    @classmethod
    def of(cls, since: np.ndarray, fired: np.ndarray) -> _Held:
        """From one value per row (the arrays a snapshot of the release before kept)."""
        rows = np.flatnonzero(~np.isnan(since) | fired)
        return cls(rows.astype(np.int64), since[rows].astype(np.float64), fired[rows].astype(bool))

    def _find(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        at = np.searchsorted(self.rows, rows)
        at[at == len(self.rows)] = 0
        return at, self.rows[at] == rows

    def get(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``since`` and ``fired`` of each of ``rows``."""
        if not len(self.rows):
            return np.full(len(rows), np.nan), np.zeros(len(rows), dtype=bool)
        at, hit = self._find(rows)
        return np.where(hit, self.since[at], np.nan), hit & self.fired[at]

    def put(self, rows: np.ndarray, since: np.ndarray, fired: np.ndarray) -> None:
        """Set ``since`` and ``fired`` of ``rows`` (each row once)."""
        kept = ~np.isnan(since) | fired
        if not len(self.rows):
            if kept.any():
                order = np.argsort(rows[kept], kind="stable")
                self.rows = rows[kept][order].astype(np.int64)
                self.since, self.fired = since[kept][order], fired[kept][order]
            return
        at, hit = self._find(rows)
        if not kept[~hit].any() and kept[hit].all():  # (the same rows: values change)
            self.since[at[hit]], self.fired[at[hit]] = since[hit], fired[hit]
            return
        stay = np.ones(len(self.rows), dtype=bool)
        stay[at[hit]] = False
        merged = np.concatenate([self.rows[stay], rows[kept]])
        order = np.argsort(merged, kind="stable")
        self.rows = merged[order].astype(np.int64)
        self.since = np.concatenate([self.since[stay], since[kept]])[order]
        self.fired = np.concatenate([self.fired[stay], fired[kept]])[order]


@dataclass(slots=True)
class _LiveRule:
    """An enabled rule with its per-agent state: the condition's, and when it began to
    hold and whether this episode has fired (:class:`_Held`)."""

    spec: ThreatRuleSpec
    condition: _Condition
    held: _Held

    def __setstate__(self, state: tuple | dict) -> None:
        slots = dict(state[1] if isinstance(state, tuple) else state)
        if "since" in slots:  # (a snapshot from before: one value per row)
            slots["held"] = _Held.of(slots.pop("since"), slots.pop("fired"))
        for name, value in slots.items():
            setattr(self, name, value)

    @classmethod
    def start(cls, spec: ThreatRuleSpec, buckets: int, capacity: int) -> _LiveRule:
        condition = _compile(spec, buckets)
        condition.allocate(capacity)
        return cls(spec, condition, _Held())

    def grow(self, capacity: int) -> None:
        self.condition.grow(capacity)

    def bytes_per_agent(self) -> int:
        return self.condition.bytes_per_agent()

    def trimmed(self, count: int) -> _LiveRule:
        """The rule with its state's first ``count`` rows (views), for a snapshot."""
        condition = object.__new__(type(self.condition))
        vars(condition).update(trimmed(self.condition, self.condition._arrays, count))
        return _LiveRule(self.spec, condition, self.held)

    def describe(self) -> str:
        text = self.condition.text
        return f"{text} for {self.spec.for_s:g} s" if self.spec.for_s else text


class RuleSet(RowArrays):
    """The threat rules of one shard of agents, with their state (one row per agent).

    >>> rules = RuleSet([], buckets=12)
    >>> rules.apply({"action": "add", "rule": {"name": "hot", "condition":
    ...     {"metric": "cpu_usage", "op": ">", "value": 90}, "category": "PERFORMANCE",
    ...     "severity": "WARNING"}})
    >>> rules.apply({"action": "disable", "name": "hot"})
    >>> [(r.name, r.enabled) for r in rules.rules()]
    [('hot', False)]
    >>> rules.apply({"action": "delete", "name": "nope"})
    Traceback (most recent call last):
    ...
    agentwatch.rules.RuleChangeError: no rule 'nope' to delete; the rules are: hot
    """

    #: A rule's ``for_s`` must also span this many of the agent's heartbeats: it fires
    #: once its condition has held for ``for_s`` and for (this − 1) times the agent's
    #: latest interval (``threat_for_min_heartbeats``; 1: ``for_s`` alone).
    min_heartbeats: int = 1

    def __init__(
        self,
        rules: Iterable[ThreatRuleSpec] = (),
        buckets: int = 12,
        index: AgentIndex | None = None,
        capacity: int = 64,
    ):
        self.buckets = buckets
        self._specs: dict[str, ThreatRuleSpec] = {}
        self._live: dict[str, _LiveRule] = {}
        # each agent's clock: its latest event time
        self._setup({"latest": (np.dtype(np.float64), -np.inf, ())}, index, capacity)
        for rule in rules:
            self.apply(RuleChange(action="add", rule=rule))

    @classmethod
    def default(cls, settings: Settings, index: AgentIndex | None = None) -> RuleSet:
        """The seed's rules (:func:`default_rules`) with the settings' bucket count."""
        rules = cls(default_rules(settings), settings.threat_window_buckets, index)
        rules.min_heartbeats = settings.threat_for_min_heartbeats
        return rules

    def rules(self) -> list[ThreatRuleSpec]:
        """Every rule, enabled or not, in the order they were added."""
        return list(self._specs.values())

    def apply(self, change: RuleChange | dict) -> None:
        """Add, update, enable, disable or delete a rule.

        A rule that is added, updated or enabled starts with empty state for
        every agent; a disabled rule keeps its definition but no state.
        Raises :class:`RuleChangeError` when the change cannot apply (the rule
        set is then unchanged), ``pydantic.ValidationError`` for a malformed one.
        """
        if isinstance(change, dict):
            change = RuleChange.model_validate(change)
        name, action = change.target, change.action
        if action == "add" and name in self._specs:
            raise RuleChangeError(f"rule {name!r} exists; send action 'update' to change it")
        if action != "add" and name not in self._specs:
            known = ", ".join(self._specs) or "(none)"
            raise RuleChangeError(f"no rule {name!r} to {action}; the rules are: {known}")
        if action in ("add", "update"):
            spec = change.rule
        elif action == "delete":
            del self._specs[name]
            self._live.pop(name, None)
            return
        else:
            spec = self._specs[name].model_copy(update={"enabled": action == "enable"})
            if spec == self._specs[name]:
                return  # enabling an enabled rule keeps its state
        live = _LiveRule.start(spec, self.buckets, self.capacity) if spec.enabled else None
        self._specs[name] = spec
        if live is None:
            self._live.pop(name, None)
        else:
            self._live[name] = live

    def observe(self, batch: HeartbeatBatch, baselines: BaselineInputs | None = None) -> RuleOutput:
        """Judge every enabled rule on every heartbeat of ``batch``, in each agent's order.

        ``baselines`` (one row per batch row) feeds the baseline conditions;
        without it they keep their last verdict.
        """
        out = RuleOutput()
        if not len(batch) or not self._live:
            return out
        rows = self._rows(batch.agent_id, batch.tenant_id)
        columns = self._columns(batch)
        for positions in self.index.passes_of(rows):
            fresh = batch.timestamp[positions] != self.latest[rows[positions]]
            positions = positions[fresh]  # a repeat of the latest heartbeat is a duplicate
            if not len(positions):
                continue
            pass_rows, ts = rows[positions], batch.timestamp[positions]
            before = self.latest[pass_rows]
            p = _Pass(
                rows=pass_rows,
                ts=ts,
                clock_before=before,
                clock=np.maximum(before, ts),
                in_order=ts > before,
                columns={name: col[positions] for name, col in columns.items()},
                baseline=None if baselines is None else baselines.take(positions),
            )
            for live in self._live.values():
                self._judge(live, p, out)
            self.latest[pass_rows] = p.clock
        return out

    def _judge(self, live: _LiveRule, p: _Pass, out: RuleOutput) -> None:
        verdict = live.condition.judge(p)
        judged = np.flatnonzero(verdict.judged)
        if not len(judged):
            return
        if not len(live.held.rows) and not verdict.holds[judged].any():
            return  # (the usual pass: it holds for no agent, before or now)
        rows, clock, holds = p.rows[judged], p.clock[judged], verdict.holds[judged]
        since_before, fired_before = live.held.get(rows)
        held = ~np.isnan(since_before)
        # a condition that counts how long it has held (per metric) began that long ago
        began = clock if verdict.held_s is None else clock - np.maximum(verdict.held_s[judged], 0)
        since = np.where(holds, np.where(held, since_before, began), np.nan)
        held_for = clock - since if verdict.held_s is None else verdict.held_s[judged]
        for_s = live.spec.for_s
        if for_s > 0 and self.min_heartbeats > 1:  # as many readings at a slower heartbeat
            interval = clock - p.clock_before[judged]
            for_s = np.maximum(for_s, (self.min_heartbeats - 1) * interval)
        fire = holds & ~fired_before & (held_for >= for_s)
        live.held.put(rows, since, (fired_before | fire) & holds)
        for k in np.flatnonzero(holds != held).tolist():
            row = int(rows[k])
            out.transitions.append(
                {
                    **self.index.agent(row),
                    "rule": live.spec.name,
                    "holds": bool(holds[k]),
                    "at": float(clock[k]),
                    "first_seen": float(since[k] if holds[k] else since_before[k]),
                    "fired": bool(fire[k] or fired_before[k]),
                }
            )
        for k in np.flatnonzero(fire).tolist():
            out.threats.append(
                self._threat(live, verdict, int(judged[k]), int(rows[k]), since[k], clock[k])
            )

    def _threat(
        self,
        live: _LiveRule,
        verdict: _Judgement,
        i: int,
        row: int,
        since: float,
        clock: float,
    ) -> dict:
        """A ``Threat`` dict for pass position ``i`` (agent ``row``)."""
        metrics = live.condition.metrics
        values = verdict.values[i]
        deviating = []
        if verdict.z is not None:
            b = verdict.baseline
            for j, metric in enumerate(metrics):
                if abs(verdict.z[i, j]) > live.condition.sigma:
                    column = b.features.index(metric)
                    deviating.append(
                        {
                            "feature": metric,
                            "value": float(values[j]),
                            "baseline_mean": float(b.mean[i, column]),
                            "baseline_std": float(b.std[i, column]),
                            "z": float(verdict.z[i, j]),
                        }
                    )
            shown = {d["feature"]: d["value"] for d in deviating}
        else:
            shown = dict(zip(metrics, values.tolist(), strict=True))
        start = live.condition.window_start(clock)
        return {
            **self.index.agent(row),
            "rule": live.spec.name,
            "category": live.spec.category,
            "severity": live.spec.severity,
            "evidence": {
                "condition": live.describe(),
                "values": shown,
                "baseline": deviating,
                "window_start": float(since if start is None else min(start, since)),
                "window_end": float(clock),
            },
            "first_seen": float(since),
            "last_seen": float(clock),
        }

    def _columns(self, batch: HeartbeatBatch) -> dict[str, np.ndarray]:
        """The batch's columns that some enabled rule reads (``status`` as state codes)."""
        needed = {m for live in self._live.values() for m in live.condition.metrics}
        columns = {m: batch.metrics[m] for m in needed if m != "status"}
        if "status" in needed:
            status = batch.status or [None] * len(batch)
            columns["status"] = np.fromiter(map(_STATUS_CODE.__getitem__, status), np.float64)
        return columns

    def holding(self, name: str) -> dict[str, float]:
        """Agents whose condition of rule ``name`` holds now, with the time it began to.

        >>> RuleSet.default(Settings()).holding("resource_abuse")
        {}
        """
        live = self._live.get(name)
        if live is None:
            return {}
        agent_ids, held = self.index.agent_ids, live.held
        holding = ~np.isnan(held.since)
        return dict(
            zip(
                [agent_ids[r] for r in held.rows[holding].tolist()],
                held.since[holding].tolist(),
                strict=True,
            )
        )

    def bytes_per_agent(self) -> int:
        """Bytes of numeric state per agent: its clock and every enabled rule's state
        (not counting the agent-id index, which a shard shares, nor when a condition
        began to hold: kept for the agents it holds for only). Of the default rules'
        221 bytes, windows take most (an average's buckets in float32, a sum's in
        float64, a change count's in one byte); abnormal patterns keeps 4 bytes per
        metric (how long each has been beyond its baseline).

        >>> RuleSet.default(Settings()).bytes_per_agent()
        221
        """
        return super().bytes_per_agent() + sum(
            live.bytes_per_agent() for live in self._live.values()
        )

    def __getstate__(self) -> dict:
        """The rules and the first rows of their state (see :meth:`RowArrays.__getstate__`)."""
        state = super().__getstate__()
        if "index" not in vars(self):  # (an older layout's)
            return state
        count = len(self.index)
        state["_live"] = {name: live.trimmed(count) for name, live in self._live.items()}
        return state

    def _grow(self, capacity: int) -> None:
        super()._grow(capacity)
        for live in self._live.values():
            live.grow(capacity)
