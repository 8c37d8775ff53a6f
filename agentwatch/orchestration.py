"""Assignment-score components, task bookkeeping and online outcome models, per shard.

The shard is the authority on an agent's capacity (docs/orchestration-shard.md). The API
decides fast from memory and publishes ``task_assigned`` keyed by the chosen agent; the
agent's shard keeps the truth here, in :class:`Orchestration`:

- **Accept or refuse.** A ``task_assigned`` (:class:`TaskAssigned`) is accepted when the
  agent is registered (or auto-registered), of the task's tenant, in state active, idle or
  busy, and has a free slot (open tasks < capacity: the registration's
  ``max_concurrent_tasks``; ``orchestration_default_capacity`` for an agent registered by
  its heartbeats or before this component existed). Either way a ``task_changed``
  (payload: the whole ``TaskRecord``, with ``agent_active_tasks`` after the change) goes to
  ``agents.state``; only an accepted task becomes an ``AgentCommand`` ``run_task`` (with
  ``task_id``) on ``agents.commands``. A replay of the same ``(task_id, attempt)`` changes
  nothing (the shard remembers its open tasks and the last ``orchestration_finished_tasks_kept``
  finished ones); a higher attempt of a task open here moves it (the old slot is freed).
- **Release** (``task_released``, :class:`TaskReleased`): the slot is freed, the task is
  ``released`` and the agent gets ``cancel_task``.
- **Outcome** (``task_completed`` / ``task_failed`` from the agent, :class:`TaskFinished`):
  the slot is freed; the duration (the agent's ``duration_s``, else the time since
  acceptance) and the SLA (finished by the deadline) are recorded; the agent's smoothed
  rates and the models learn. A second outcome changes nothing.
- **Expiry**: an open task without an outcome ``orchestration_task_timeout_s`` after its
  acceptance (shard event time, checked on heartbeats and clock ticks like quarantine
  expiry) is ``expired``: its slot is freed, it counts as a failure (and a missed deadline,
  if it had one), and the agent gets ``cancel_task``.

Command ids are deterministic (``uuid5`` of the command, tenant, agent, task and attempt):
a replay sends the same commands.

**Components** (each 0…1, published in ``AssignmentScore``; ``k`` =
``orchestration_prior_weight``, ``d = 1 − 1/orchestration_outcome_memory``):

- smoothed success rate ``r = (S + p₀·k) / (N + k)``, where ``N ← d·N + 1`` and
  ``S ← d·S + y`` per outcome (y = 1 completed, 0 failed or expired), ``p₀`` =
  ``orchestration_success_prior``;
- speed ``v = ref / (ref + rt)``, ``rt`` the EWMA (α = ``orchestration_metrics_alpha``) of
  the heartbeats' ``response_time_avg`` and ``ref`` = ``orchestration_response_time_ref_ms``
  (0.5 at the reference, → 1 for fast agents);
- **performance** ``= (1 − s)·r + s·v``, s = ``orchestration_speed_share``;
- **cost** ``= 1 − ((1 − c)·u + c·h / (h + h_ref))``: ``u`` the EWMA of
  (cpu_usage + memory_usage) / 200, ``h`` the declared ``resources["cost_per_hour"]``
  (0.5 for the declared part when none is declared), ``h_ref`` =
  ``orchestration_cost_reference_per_hour``, c = ``orchestration_cost_declared_share``:
  idle and cheap is 1;
- **availability** ``= max(0, capacity − open) / capacity`` in states active/idle/busy, else 0;
- **sla** ``= (M + k) / (D + k)``: decayed count of deadlines met M over tasks with a
  deadline D (prior: met);
- **score** ``= Σ wᵢcᵢ / Σ wᵢ`` with the weights of the last ``weights_changed`` (the
  settings' ``orchestration_weight_*`` until then).

An agent's score is published at once on a change of one of its tasks (``cause`` task), of
its lifecycle state (state) and for every agent on new weights (weights). On heartbeats
(heartbeat) it is judged at most every ``orchestration_score_interval_s`` and published only
when it moved by ``orchestration_score_min_change`` since the last published one; it is
judged at the agent's last heartbeat of a batch, so on heartbeats alone *when* it is
published may depend on where batches are cut (what it says does not).

**Models** (River, one set per shard, not per agent):

- success: ``LogisticRegression`` on the task type (one-hot) and the agent's own smoothed
  success rate, its rate on that type (shrunk towards its overall rate), its load, speed,
  usage, error rate and SLA rate, all scaled to about −1…1;
- completion time: ``LinearRegression`` of the residual of log(1 + duration) from the agent's
  own EWMA of log durations on that type (the shard's mean for the type when the agent has
  none), on the same kind of features; completed tasks only;
- failure within ``orchestration_failure_horizon_s``: ``LogisticRegression`` on a feature
  vector sampled per agent (usage, error rate, speed, success rate, load) at its first
  heartbeat in a running state; labelled 1 when the agent enters degraded, offline,
  quarantined or compromised before the horizon passes, 0 when it passes (delayed labels);
  then sampled again.

Each model scores before it learns; the rolling accuracy (p ≥ 0.5), log loss and duration
MAE over the last ``orchestration_model_window`` outcomes go out as ``model_stats`` (tenant
``*``; the dataflow signs it with agent id ``shard:<key>``) at most every
``orchestration_model_stats_interval_s`` per shard. Until a shard has learnt from
``orchestration_model_min_outcomes`` outcomes, ``by_type`` gives the agent's smoothed rate
and its own duration average instead of the models' answers (and ``p_fail`` is absent until
as many failure labels).

Per agent: 59 bytes of columns (:meth:`Orchestration.bytes_per_agent`), plus 8 per task type
the shard has seen (up to ``orchestration_max_task_types``); open tasks and the memory of
finished ones are kept only for the tasks themselves.

>>> from agentwatch.settings import Settings
>>> orch = Orchestration.from_settings(Settings())
>>> out = OrchestrationOutput()
>>> orch.register("a1", "t1", max_concurrent_tasks=1)
>>> orch.state_changed("a1", "t1", State.ACTIVE, 1.8e9, out)
>>> order = TaskAssigned("a1", "t1", 1.8e9 + 1, "api", TaskAssignment(task_id="k1",
...     score=0.9, components=dict(performance=1, cost=1, availability=1, sla=1),
...     weights={}, assigned_by="api-1"))
>>> orch.assign(order, registered=True, out=out)
>>> [e["payload"]["status"] for e in out.events], [c["command"] for c in out.commands]
(['accepted'], ['run_task'])
>>> orch.assign(order, registered=True, out=out)   # a replay: nothing new
>>> second = TaskAssigned("a1", "t1", 1.8e9 + 2, "api", order.assignment.model_copy(
...     update={"task_id": "k2"}))
>>> orch.assign(second, registered=True, out=out)
>>> print(out.events[-1]["payload"]["status"], out.events[-1]["payload"]["reason"])
refused agent a1 is at capacity: 1/1 tasks open
"""

from __future__ import annotations

import math
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from agentwatch.lifecycle import State
from agentwatch.rows import AgentIndex, ArraySpec, RowArrays
from agentwatch.settings import Settings
from schemas.events import FLEET, MODEL_STATS, TASK_CHANGED, TASK_FAILED, EventError
from schemas.heartbeats import HeartbeatBatch
from schemas.models import (
    MAX_TASK_DURATION_S,
    LifecycleEvent,
    ScoringWeights,
    TaskAssignment,
    TaskOutcome,
)

#: The log-duration no prediction goes beyond (``log1p`` of the longest task a
#: ``TaskOutcome`` may state): a learnt correction that runs away predicts the longest
#: task, not an overflow.
MAX_LOG_DURATION = math.log1p(MAX_TASK_DURATION_S)


def seconds_of(log_duration: float) -> float:
    """Seconds from a log-duration (``log1p`` of seconds), held to 0 … the longest task.

    >>> seconds_of(math.log1p(30.0)), seconds_of(-1.0), round(seconds_of(1e6) / MAX_TASK_DURATION_S)
    (30.0, 0.0, 1)
    """
    return float(math.expm1(min(max(log_duration, 0.0), MAX_LOG_DURATION)))


#: Namespace of the deterministic ids of ``run_task`` and ``cancel_task`` orders.
TASK_COMMAND_NAMESPACE = uuid.UUID("9c1e5b7a-2f4d-4a8b-b6e3-7d0f2c9a4e61")
#: States in which an agent takes tasks (availability is 0 in the others).
RUNNING = frozenset({State.ACTIVE, State.IDLE, State.BUSY})
#: States that count as a failure for the failure-within-horizon model.
FAILING = frozenset({State.DEGRADED, State.OFFLINE, State.QUARANTINED, State.COMPROMISED})
_STATES = list(State)
_CODE = {state: k for k, state in enumerate(_STATES)}
#: Whether a state's code (+ 1: -1 is a row not met) is running, as a look-up table.
_RUNNING_TABLE = np.array([False] + [s in RUNNING for s in _STATES], dtype=np.bool_)
_UNKNOWN = -1  # (state code of a row the component has not met: no score)
_FINISHED = ("completed", "failed", "released", "expired", "refused")


# --- what the dataflow hands a shard -------------------------------------------------
@dataclass(frozen=True, slots=True)
class TaskAssigned:
    """The API assigned a task to ``agent_id`` (``task_assigned`` on ``agents.control``)."""

    agent_id: str
    tenant_id: str
    at: float
    actor: str
    assignment: TaskAssignment

    @classmethod
    def from_event(cls, event: LifecycleEvent) -> TaskAssigned:
        """The assignment a ``task_assigned`` event carries (pydantic's ``ValidationError``
        if its payload is not a :class:`~schemas.models.TaskAssignment`)."""
        assignment = TaskAssignment.model_validate(event.payload)
        return cls(event.agent_id, event.tenant_id, event.timestamp, event.actor, assignment)


@dataclass(frozen=True, slots=True)
class TaskReleased:
    """The API withdrew ``task_id`` from ``agent_id`` (a move or a cancellation)."""

    agent_id: str
    tenant_id: str
    at: float
    actor: str
    task_id: str
    reason: str = ""

    @classmethod
    def from_event(cls, event: LifecycleEvent) -> TaskReleased:
        """The release a ``task_released`` event carries.

        >>> event = LifecycleEvent(type="task_released", agent_id="a1", tenant_id="t1",
        ...     actor="ops-1", timestamp=1.8e9, payload={"task_id": "k1", "reason": "moved"})
        >>> TaskReleased.from_event(event).task_id
        'k1'
        """
        task_id, reason = event.payload.get("task_id"), event.payload.get("reason", "")
        if not isinstance(task_id, str) or not task_id:
            raise EventError(f"{event.type} payload: task_id must be a non-empty string")
        if not isinstance(reason, str):
            raise EventError(f"{event.type} payload: reason must be a string")
        return cls(event.agent_id, event.tenant_id, event.timestamp, event.actor, task_id, reason)


@dataclass(frozen=True, slots=True)
class TaskFinished:
    """An agent reported the outcome of a task (``task_completed`` / ``task_failed`` on
    ``agents.events``)."""

    agent_id: str
    tenant_id: str
    at: float
    outcome: TaskOutcome
    succeeded: bool

    @classmethod
    def from_event(cls, event: LifecycleEvent) -> TaskFinished:
        """The outcome an event carries (``ValidationError`` if it is not a ``TaskOutcome``).

        >>> event = LifecycleEvent(type="task_failed", agent_id="a1", tenant_id="t1",
        ...     actor="a1", timestamp=1.8e9, payload={"task_id": "k1", "duration_s": 3})
        >>> TaskFinished.from_event(event).succeeded
        False
        """
        outcome = TaskOutcome.model_validate(event.payload)
        return cls(
            event.agent_id, event.tenant_id, event.timestamp, outcome, event.type != TASK_FAILED
        )


@dataclass(frozen=True, slots=True)
class WeightsChange:
    """An operator changed the assignment score's weights (``weights_changed``)."""

    at: float
    actor: str
    weights: ScoringWeights

    @classmethod
    def from_event(cls, event: LifecycleEvent) -> WeightsChange:
        """The weights a ``weights_changed`` event carries."""
        return cls(event.timestamp, event.actor, ScoringWeights.model_validate(event.payload))


# --- tunables ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OrchestrationConfig:
    """The orchestration's tunables, taken from :class:`Settings`.

    >>> OrchestrationConfig.from_settings(Settings()).weights
    (0.4, 0.3, 0.2, 0.1)
    """

    weights: tuple[float, float, float, float]
    default_capacity: int
    task_timeout_s: float
    score_interval_s: float
    score_min_change: float
    failure_horizon_s: float
    response_time_ref_ms: float
    speed_share: float
    cost_reference_per_hour: float
    cost_declared_share: float
    outcome_decay: float
    success_prior: float
    prior_weight: float
    metrics_alpha: float
    max_task_types: int
    model_window: int
    model_min_outcomes: int
    learning_rate: float
    model_stats_interval_s: float
    finished_tasks_kept: int

    @classmethod
    def from_settings(cls, settings: Settings) -> OrchestrationConfig:
        s = settings
        w = s.scoring_weights()
        return cls(
            weights=(w["performance"], w["cost"], w["availability"], w["sla"]),
            default_capacity=s.orchestration_default_capacity,
            task_timeout_s=s.orchestration_task_timeout_s,
            score_interval_s=s.orchestration_score_interval_s,
            score_min_change=s.orchestration_score_min_change,
            failure_horizon_s=s.orchestration_failure_horizon_s,
            response_time_ref_ms=s.orchestration_response_time_ref_ms,
            speed_share=s.orchestration_speed_share,
            cost_reference_per_hour=s.orchestration_cost_reference_per_hour,
            cost_declared_share=s.orchestration_cost_declared_share,
            outcome_decay=1.0 - 1.0 / s.orchestration_outcome_memory,
            success_prior=s.orchestration_success_prior,
            prior_weight=s.orchestration_prior_weight,
            metrics_alpha=s.orchestration_metrics_alpha,
            max_task_types=s.orchestration_max_task_types,
            model_window=s.orchestration_model_window,
            model_min_outcomes=s.orchestration_model_min_outcomes,
            learning_rate=s.orchestration_model_learning_rate,
            model_stats_interval_s=s.orchestration_model_stats_interval_s,
            finished_tasks_kept=s.orchestration_finished_tasks_kept,
        )


@dataclass(slots=True)
class OrchestrationOutput:
    """``events``: ``task_changed`` and ``model_stats`` ``LifecycleEvent`` dicts
    (agents.state); ``commands``: ``run_task`` / ``cancel_task`` ``AgentCommand`` dicts;
    ``scores``: ``AssignmentScore`` dicts; ``refusals``: outcomes and releases that changed
    nothing, in the layout of the shard's refusals (logged, published nowhere)."""

    events: list[dict] = field(default_factory=list)
    commands: list[dict] = field(default_factory=list)
    scores: list[dict] = field(default_factory=list)
    refusals: list[dict] = field(default_factory=list)


@dataclass(slots=True)
class Beats:
    """The agents of a heartbeat batch (rows) and the time of each one's latest heartbeat."""

    rows: np.ndarray
    times: np.ndarray


# --- the models ------------------------------------------------------------------------
class _Learners:
    """A shard's River models and their rolling metrics (see :class:`OutcomeModels`)."""

    def __init__(self, learning_rate: float, window: int):
        from river import linear_model, metrics, optim, utils  # (on first use: see learnt)

        self.success = linear_model.LogisticRegression(
            optimizer=optim.SGD(learning_rate), intercept_lr=learning_rate
        )
        self.duration = linear_model.LinearRegression(
            optimizer=optim.SGD(learning_rate / 10), intercept_lr=learning_rate / 10
        )
        self.failure = linear_model.LogisticRegression(
            optimizer=optim.SGD(learning_rate), intercept_lr=learning_rate
        )
        self.success_accuracy = utils.Rolling(metrics.Accuracy, window_size=window)
        self.success_log_loss = utils.Rolling(metrics.LogLoss, window_size=window)
        self.duration_mae = utils.Rolling(metrics.MAE, window_size=window)
        self.failure_accuracy = utils.Rolling(metrics.Accuracy, window_size=window)


class OutcomeModels:
    """A shard's online models (River) and their rolling accuracy (see the module doc).

    >>> models = OutcomeModels(learning_rate=0.1, window=100)
    >>> x = {"type=etl": 1.0, "rate": 0.4}
    >>> for _ in range(50):
    ...     models.learn_success(x, True)
    >>> models.p_success(x) > 0.8, models.outcomes
    (True, 50)
    """

    def __init__(self, learning_rate: float, window: int):
        self.learning_rate = learning_rate
        self.window = window
        #: The River models and rolling metrics, made when first needed (:attr:`learnt`).
        self.learners: _Learners | None = None
        self.outcomes = 0
        self.durations = 0
        self.failure_samples = 0
        #: Per task type: [count, mean of log(1 + duration)] over the shard's completions.
        self.type_durations: dict[str, list[float]] = {}

    @property
    def learnt(self) -> _Learners:
        """The models, made on first use: a shard that never sees a task outcome never
        imports River's linear models and metrics (~0.6 s of a process's start-up)."""
        if self.learners is None:
            self.learners = _Learners(self.learning_rate, self.window)
        return self.learners

    def p_success(self, x: dict[str, float]) -> float:
        return float(self.learnt.success.predict_proba_one(x).get(True, 0.5))

    def learn_success(self, x: dict[str, float], succeeded: bool) -> None:
        """Score ``x`` (rolling accuracy, log loss), then learn from it."""
        p = self.p_success(x)
        self.learnt.success_accuracy.update(succeeded, p >= 0.5)
        self.learnt.success_log_loss.update(succeeded, {True: p, False: 1.0 - p})
        self.learnt.success.learn_one(x, succeeded)
        self.outcomes += 1

    def type_log_duration(self, task_type: str) -> float | None:
        seen = self.type_durations.get(task_type)
        return None if seen is None else seen[1]

    def expected_duration(self, x: dict[str, float], base: float) -> float:
        """Seconds, from the log-duration baseline ``base`` and its learnt correction."""
        return seconds_of(base + self.learnt.duration.predict_one(x))

    def learn_duration(self, x: dict[str, float], base: float, task_type: str, seconds: float):
        """Score, then learn a completion time (``base``: its log baseline, NaN for the
        first of a type in the shard: nothing to predict or correct yet)."""
        if not math.isnan(base):
            self.learnt.duration_mae.update(seconds, self.expected_duration(x, base))
            self.learnt.duration.learn_one(x, math.log1p(seconds) - base)
            self.durations += 1
        seen = self.type_durations.setdefault(task_type, [0.0, 0.0])
        seen[0] += 1
        seen[1] += (math.log1p(seconds) - seen[1]) / seen[0]

    def p_fail(self, x: dict[str, float]) -> float:
        return float(self.learnt.failure.predict_proba_one(x).get(True, 0.0))

    def learn_failure(self, x: dict[str, float], failed: bool) -> None:
        self.learnt.failure_accuracy.update(failed, self.p_fail(x) >= 0.5)
        self.learnt.failure.learn_one(x, failed)
        self.failure_samples += 1

    def stats(self, at: float) -> dict:
        """The ``ModelStats`` payload (without the shard's name: the dataflow knows it)."""

        def rolling(name: str, count: int) -> float | None:
            if not count or self.learners is None:
                return None
            return round(float(getattr(self.learners, name).get()), 6)

        return {
            "shard": "",
            "outcomes": self.outcomes,
            "success_accuracy": rolling("success_accuracy", self.outcomes),
            "success_log_loss": rolling("success_log_loss", self.outcomes),
            "duration_mae_s": rolling("duration_mae", self.durations),
            "failure_accuracy": rolling("failure_accuracy", self.failure_samples),
            "failure_samples": self.failure_samples,
            "window": self.window,
            "timestamp": at,
        }


# --- the component -----------------------------------------------------------------------
class Orchestration(RowArrays):
    """The orchestration state of one shard's agents (see the module doc).

    >>> Orchestration.from_settings(Settings()).bytes_per_agent()
    59
    """

    def __init__(
        self, config: OrchestrationConfig, index: AgentIndex | None = None, capacity: int = 64
    ):
        self.config = config
        self._setup(dict(_LAYOUT), index, capacity)
        self.weights = config.weights
        self.types: dict[str, int] = {}  # task type → its column in the per-type arrays
        self.open: dict[str, dict] = {}  # task id → its TaskRecord (accepted, not finished)
        self.finished: OrderedDict[str, int] = OrderedDict()  # task id → last attempt
        self.next_task_expiry = math.inf
        self.next_label_at = math.inf
        self.models = OutcomeModels(config.learning_rate, config.model_window)
        self.stats_at = -math.inf
        self.stats_reported = (0, 0)

    @classmethod
    def from_settings(cls, settings: Settings, index: AgentIndex | None = None) -> Orchestration:
        return cls(OrchestrationConfig.from_settings(settings), index)

    def configure(self, config: OrchestrationConfig) -> None:
        """Go on with new tunables (settings changed across a restart; the weights of a
        ``weights_changed`` stay)."""
        if self.weights == self.config.weights:
            self.weights = config.weights
        self.config = config

    # --- registration and state ---------------------------------------------------------
    def register(
        self,
        agent_id: str,
        tenant_id: str,
        max_concurrent_tasks: int,
        cost_per_hour: float | None = None,
    ) -> None:
        """The agent was registered: its capacity and declared cost."""
        row = self._row(agent_id, tenant_id)
        self.capacity_of[row] = max_concurrent_tasks
        self.cost[row] = np.nan if cost_per_hour is None else cost_per_hour
        if self.state[row] == _UNKNOWN:
            self.state[row] = _CODE[State.REGISTERED]

    def state_changed(
        self, agent_id: str, tenant_id: str, state: State, at: float, out: OrchestrationOutput
    ) -> None:
        """The lifecycle table moved the agent to ``state`` at ``at``: availability
        follows, the failure model gets its label if the agent is failing, and the score
        is published."""
        row = self._row(agent_id, tenant_id)
        self.state[row] = _CODE[state]
        if state in FAILING and self.sample_at[row]:
            self.models.learn_failure(self._sampled(row), True)
            self.sample_at[row] = 0
        self._publish(np.array([row]), at, "state", out)

    def seed_states(self, states: list[tuple[str, str, State]]) -> None:
        """Take the states of agents known before this component (a snapshot's)."""
        for agent_id, tenant_id, state in states:
            self.state[self._row(agent_id, tenant_id)] = _CODE[state]

    def set_weights(self, change: WeightsChange, out: OrchestrationOutput) -> None:
        """New weights: every agent's score is published with them."""
        w = change.weights
        self.weights = (w.performance, w.cost, w.availability, w.sla)
        self._fit()
        rows = np.flatnonzero(self.state[: len(self.index)] != _UNKNOWN)
        self._publish(rows, change.at, "weights", out)

    # --- heartbeats -------------------------------------------------------------------------
    def observe(self, batch: HeartbeatBatch) -> Beats:
        """Fold a batch's response times, usage and error rates into each agent's EWMA
        (in batch order, as if one at a time: the result does not depend on where batches
        are cut) and note each agent's latest heartbeat, for :meth:`settle`. Call it while
        the index still knows the batch's rows."""
        n = len(batch)
        rows = self._rows(batch.agent_id, batch.tenant_id)
        order = np.argsort(rows, kind="stable")
        ranked = rows[order]
        starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
        counts = np.diff(np.r_[starts, n])
        uniq = ranked[starts]
        a = self.config.metrics_alpha
        from_end = np.repeat(starts + counts - 1, counts) - np.arange(n)
        weight = a * (1.0 - a) ** from_end
        keep = (1.0 - a) ** counts
        m = batch.metrics
        firsts = order[starts]
        for name, values in (
            ("response_ms", m["response_time_avg"]),
            ("usage", (m["cpu_usage"] + m["memory_usage"]) / 2.0),
            ("errors", m["error_rate"]),
        ):
            column = getattr(self, name)
            old = column[uniq].astype(np.float64)
            fresh = np.isnan(old)
            if fresh.any():
                old[fresh] = values[firsts[fresh]]
            column[uniq] = keep * old + np.add.reduceat(weight * values[order], starts)
        unknown = self.state[uniq] == _UNKNOWN
        if unknown.any():  # (an agent without a lifecycle record is active)
            self.state[uniq[unknown]] = _CODE[State.ACTIVE]
        return Beats(uniq, np.maximum.reduceat(batch.timestamp[order], starts))

    def settle(
        self, now: float, out: OrchestrationOutput, beats: Beats | None = None, report: bool = False
    ) -> None:
        """What time passing decides: open tasks expire, failure samples are labelled
        (and new ones taken at heartbeats), heartbeats publish scores (rate-limited), and
        with ``report`` (the clock's ticks) the models' stats go out. Costs a few
        comparisons when nothing is due."""
        if now >= self.next_task_expiry:
            self._expire(now, out)
        if now >= self.next_label_at:
            self._label(now)
        if beats is not None and len(beats.rows):
            self._sample(beats)
            self._heartbeat_scores(beats, out)
        if report:
            self._report(now, out)

    def _heartbeat_scores(self, beats: Beats, out: OrchestrationOutput) -> None:
        """Judge the score of each agent whose last judgement is ``score_interval_s`` old
        (or that has none): published if it moved by ``score_min_change`` since the last
        published one. (One judgement an interval, published or not: the numpy work is
        for the agents due, not for every heartbeat.)"""
        cfg = self.config
        last = self.published_at[beats.rows].astype(np.float64)
        due = (last == 0) | (beats.times - last >= cfg.score_interval_s)
        if not due.any():
            return
        rows, times = beats.rows[due], beats.times[due]
        parts = self.components(rows)
        moved = np.abs(parts["score"] - self.published[rows]) >= cfg.score_min_change
        moved |= self.published_at[rows] == 0
        self.published_at[rows] = np.maximum(times, 1).astype(np.uint32)
        if moved.any():
            picked = np.flatnonzero(moved)
            self._emit(
                rows[picked],
                times[picked],
                "heartbeat",
                out,
                {k: v[picked] for k, v in parts.items()},
            )

    def _sample(self, beats: Beats) -> None:
        rows = beats.rows
        due = (self.sample_at[rows] == 0) & _RUNNING_TABLE[self.state[rows] + 1]
        if not due.any():
            return
        rows, times = rows[due], beats.times[due]
        cfg = self.config
        features = self._failure_features(rows)
        for name, values in features.items():
            getattr(self, f"f_{name}")[rows] = values
        self.sample_at[rows] = np.maximum(times, 1).astype(np.uint32)
        self.next_label_at = min(self.next_label_at, float(times.min()) + cfg.failure_horizon_s)

    def _label(self, now: float) -> None:
        horizon = self.config.failure_horizon_s
        count = len(self.index)
        sampled = self.sample_at[:count].astype(np.float64)
        due = np.flatnonzero((sampled > 0) & (sampled + horizon <= now))
        for row in due[np.argsort(sampled[due], kind="stable")].tolist():
            self.models.learn_failure(self._sampled(row), False)
        self.sample_at[due] = 0
        left = sampled[(sampled > 0) & (sampled + horizon > now)]
        self.next_label_at = float(left.min()) + horizon if len(left) else math.inf

    # --- tasks --------------------------------------------------------------------------------
    def assign(
        self,
        order: TaskAssigned,
        registered: bool,
        out: OrchestrationOutput,
        state: State | None = None,
    ) -> None:
        """Accept or refuse a ``task_assigned`` (see the module doc). ``registered``: the
        agent has a standing in the shard's registry; ``state``: its lifecycle state (the
        component's own copy if None)."""
        task = order.assignment
        known = self.open.get(task.task_id)
        if known is not None and known["attempt"] >= task.attempt:
            return  # (a replay)
        if self.finished.get(task.task_id, 0) >= task.attempt:
            return
        if known is not None:  # (placed again while open here: the old slot is freed)
            self._close(
                known,
                "released",
                order.at,
                out,
                f"placed again: attempt {task.attempt} on {order.agent_id}",
            )
        row = self.index.row(order.agent_id)
        if row is not None:
            self._fit()
        if state is None and row is not None and self.state[row] != _UNKNOWN:
            state = _STATES[int(self.state[row])]
        record = self._record(order)
        reason = self._refusal(order, row, registered, state)
        if reason:
            record.update(status="refused", reason=reason)
            if row is not None:
                record.update(
                    agent_active_tasks=int(self.open_count[row]), capacity=self._capacity(row)
                )
            self._remember(task.task_id, task.attempt)
            out.events.append(self._event(record, order.at))
            return
        self.open_count[row] += 1
        record.update(
            status="accepted",
            accepted_at=order.at,
            capacity=self._capacity(row),
            agent_active_tasks=int(self.open_count[row]),
        )
        self._predict_into(record, row)
        self.open[task.task_id] = record
        self.next_task_expiry = min(self.next_task_expiry, order.at + self.config.task_timeout_s)
        out.events.append(self._event(record, order.at))
        out.commands.append(
            self._command(
                "run_task",
                record,
                order.at,
                order.actor,
                f"run task {task.task_id} ({task.task_type}, {task.priority})",
            )
        )
        self._publish(np.array([row]), order.at, "task", out)

    def _refusal(
        self, order: TaskAssigned, row: int | None, registered: bool, state: State | None
    ) -> str:
        agent = order.agent_id
        if row is None or not registered:
            return f"agent {agent} is not registered"
        tenant = self.index.tenant_of(row)
        if tenant != order.tenant_id:
            return f"agent {agent} belongs to tenant {tenant}, the task to {order.tenant_id}"
        if state not in RUNNING:
            return (
                f"agent {agent} is {state or 'unknown'}; it takes tasks when active, idle or busy"
            )
        capacity, open_ = self._capacity(row), int(self.open_count[row])
        if open_ >= capacity:
            return f"agent {agent} is at capacity: {open_}/{capacity} tasks open"
        return ""

    def release(self, order: TaskReleased, out: OrchestrationOutput) -> None:
        """Free the slot of a task withdrawn by the API (``cancel_task`` to the agent)."""
        record = self.open.get(order.task_id)
        if record is None or record["agent_id"] != order.agent_id:
            out.refusals.append(
                self._refused(
                    order.agent_id,
                    order.tenant_id,
                    "task_released",
                    order.task_id,
                    order.at,
                    order.actor,
                )
            )
            return
        reason = order.reason or f"released by {order.actor}"
        self._close(record, "released", order.at, out, reason, actor=order.actor)

    def finish(self, report: TaskFinished, out: OrchestrationOutput) -> None:
        """An agent's outcome: the slot is freed, duration and SLA recorded, the agent's
        rates and the models learn. An outcome of a task the shard never assigned still
        teaches; a second one (the task is finished here) changes nothing."""
        outcome = report.outcome
        record = self.open.get(outcome.task_id)
        if record is not None and record["agent_id"] != report.agent_id:
            record = None
        if record is None:
            row = self.index.row(report.agent_id)
            if row is not None:
                self._fit()
            known = row is not None and self.state[row] != _UNKNOWN
            if not known or outcome.task_id in self.finished or outcome.task_id in self.open:
                kind = "task_completed" if report.succeeded else TASK_FAILED
                out.refusals.append(
                    self._refused(
                        report.agent_id,
                        report.tenant_id,
                        kind,
                        outcome.task_id,
                        report.at,
                        report.agent_id,
                    )
                )
                return
            self._learn(
                row,
                outcome.task_type or "default",
                report.succeeded,
                outcome.duration_s,
                None,
                report.at,
            )
            self._remember(outcome.task_id, 1)
            self._publish(np.array([row]), report.at, "task", out)
            return
        status = "completed" if report.succeeded else "failed"
        duration = outcome.duration_s
        if duration is None:
            duration = max(report.at - record["accepted_at"], 0.0)
        self._close(record, status, report.at, out, outcome.reason, duration=float(duration))

    def _expire(self, now: float, out: OrchestrationOutput) -> None:
        timeout = self.config.task_timeout_s
        due = sorted(
            (r for r in self.open.values() if r["accepted_at"] + timeout <= now),
            key=lambda r: (r["accepted_at"], r["task_id"]),
        )
        for record in due:
            at = record["accepted_at"] + timeout
            self._close(record, "expired", at, out, f"no outcome within {timeout:g} s")
        self.next_task_expiry = min(
            (r["accepted_at"] + timeout for r in self.open.values()), default=math.inf
        )

    def _close(
        self,
        record: dict,
        status: str,
        at: float,
        out: OrchestrationOutput,
        reason: str,
        duration: float | None = None,
        actor: str = "system",
    ) -> None:
        """A task open here ends with ``status`` at ``at``."""
        del self.open[record["task_id"]]
        self._remember(record["task_id"], record["attempt"])
        row = self._row(record["agent_id"], record["tenant_id"])
        self.open_count[row] = max(int(self.open_count[row]) - 1, 0)
        deadline = record["deadline"]
        record.update(
            status=status,
            finished_at=at,
            reason=reason,
            agent_active_tasks=int(self.open_count[row]),
            updated_at=at,
        )
        if status in ("completed", "failed", "expired"):
            record["duration_s"] = duration
            record["sla_met"] = None if deadline is None else bool(at <= deadline)
            self._learn(
                row,
                record["task_type"],
                status == "completed",
                duration if status == "completed" else None,
                record["sla_met"],
                at,
            )
        out.events.append(self._event(record, at))
        if status in ("released", "expired"):
            out.commands.append(self._command("cancel_task", record, at, actor, reason))
        self._publish(np.array([row]), at, "task", out)

    def _learn(
        self,
        row: int,
        task_type: str,
        succeeded: bool,
        duration: float | None,
        sla_met: bool | None,
        at: float,
    ) -> None:
        """An outcome: the models score, then learn (features from before it); then the
        agent's own rates move. (A type past ``max_task_types`` is ``other`` to the models,
        so agents cannot grow them without bound.)"""
        models, cfg = self.models, self.config
        if self._type_column(task_type) is None:
            task_type = _OTHER
        models.learn_success(self._success_features(row, task_type), succeeded)
        if duration is not None:
            x, base = self._duration_features(row, task_type)
            models.learn_duration(x, base, task_type, duration)
        d = cfg.outcome_decay
        self.success_n[row] = d * float(self.success_n[row]) + 1.0
        self.success_s[row] = d * float(self.success_s[row]) + succeeded
        if sla_met is not None:
            self.sla_n[row] = d * float(self.sla_n[row]) + 1.0
            self.sla_s[row] = d * float(self.sla_s[row]) + sla_met
        if succeeded:
            self.completed[row] += 1
        else:
            self.failed[row] += 1
        column = self._type_column(task_type)
        if column is None:
            return
        count = int(self.type_count[row, column])
        self.type_n[row, column] = d * float(self.type_n[row, column]) + 1.0
        self.type_s[row, column] = d * float(self.type_s[row, column]) + succeeded
        if duration is not None:
            log_d = math.log1p(duration)
            timed = float(self.type_log_duration[row, column])
            step = max(1.0 / (count + 1), 1.0 - d)
            self.type_log_duration[row, column] = (
                log_d if math.isnan(timed) else timed + step * (log_d - timed)
            )
        self.type_count[row, column] = min(count + 1, 65535)

    # --- the score --------------------------------------------------------------------------------
    def components(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Each component, the score, the success and SLA rates of ``rows`` (numpy).

        >>> orch = Orchestration.from_settings(Settings())
        >>> rows = orch._rows(["a1"], ["t1"])
        >>> parts = orch.components(rows)
        >>> [round(float(parts[k][0]), 3) for k in ("performance", "cost", "availability", "sla")]
        [0.71, 0.5, 0.0, 1.0]
        """
        cfg = self.config
        k = cfg.prior_weight
        f64 = np.float64
        success = (self.success_s[rows].astype(f64) + cfg.success_prior * k) / (
            self.success_n[rows].astype(f64) + k
        )
        response = self.response_ms[rows].astype(f64)
        np.nan_to_num(response, copy=False, nan=cfg.response_time_ref_ms)
        speed = cfg.response_time_ref_ms / (cfg.response_time_ref_ms + np.maximum(response, 0))
        performance = (1 - cfg.speed_share) * success + cfg.speed_share * speed
        usage = self.usage[rows].astype(f64)
        np.nan_to_num(usage, copy=False, nan=50.0)
        usage = np.clip(usage / 100.0, 0.0, 1.0)
        declared = self.cost[rows].astype(f64)
        factor = declared / (declared + cfg.cost_reference_per_hour)
        factor[np.isnan(declared)] = 0.5
        cost = 1.0 - ((1 - cfg.cost_declared_share) * usage + cfg.cost_declared_share * factor)
        capacity = self._capacities(rows)
        free = np.maximum(capacity - self.open_count[rows], 0) / capacity
        availability = np.where(_RUNNING_TABLE[self.state[rows] + 1], free, 0.0)
        sla = (self.sla_s[rows].astype(f64) + k) / (self.sla_n[rows].astype(f64) + k)
        w = self.weights
        score = (w[0] * performance + w[1] * cost + w[2] * availability + w[3] * sla) / sum(w)
        return {
            "performance": np.clip(performance, 0, 1),
            "cost": np.clip(cost, 0, 1),
            "availability": availability,
            "sla": np.clip(sla, 0, 1),
            "score": np.clip(score, 0, 1),
            "success": np.clip(success, 0, 1),
            "speed": speed,
            "capacity": capacity,
        }

    def _publish(self, rows: np.ndarray, at: float, cause: str, out: OrchestrationOutput) -> None:
        self._fit()
        if len(rows):
            self._emit(rows, np.full(len(rows), at), cause, out, self.components(rows))

    def _emit(
        self,
        rows: np.ndarray,
        times: np.ndarray,
        cause: str,
        out: OrchestrationOutput,
        parts: dict[str, np.ndarray],
    ) -> None:
        """One ``AssignmentScore`` per row (``parts``: :meth:`components` of ``rows``)."""
        w = self.weights
        weights = dict(zip(("performance", "cost", "availability", "sla"), w, strict=True))
        columns = {
            name: np.round(parts[name], 4).tolist()
            for name in ("score", "performance", "cost", "availability", "sla", "success")
        }
        self.published[rows] = parts["score"]
        self.published_at[rows] = np.maximum(times, 1).astype(np.uint32)
        index, models = self.index, self.models
        failure_known = models.failure_samples >= self.config.model_min_outcomes
        tenants = index.tenant_names
        response = np.round(np.nan_to_num(self.response_ms[rows].astype(np.float64)), 1).tolist()
        names = [str(state) for state in _STATES]
        by_type = bool(self.types)
        for j, (row, at, tenant, state, open_, capacity, done, failed) in enumerate(
            zip(
                rows.tolist(),
                times.tolist(),
                index.tenant[rows].tolist(),
                self.state[rows].tolist(),
                self.open_count[rows].tolist(),
                parts["capacity"].tolist(),
                self.completed[rows].tolist(),
                self.failed[rows].tolist(),
                strict=True,
            )
        ):
            out.scores.append(
                {
                    "agent_id": index.agent_ids[row],
                    "tenant_id": tenants[tenant],
                    "timestamp": at,
                    "score": columns["score"][j],
                    "performance": columns["performance"][j],
                    "cost": columns["cost"][j],
                    "availability": columns["availability"][j],
                    "sla": columns["sla"][j],
                    "weights": weights,
                    "state": "unknown" if state == _UNKNOWN else names[state],
                    "active_tasks": open_,
                    "capacity": int(capacity),
                    "success_rate": columns["success"][j],
                    "response_time_ms": response[j],
                    "sla_met_rate": columns["sla"][j],
                    "tasks_completed": done,
                    "tasks_failed": failed,
                    "p_fail": (
                        round(models.p_fail(self._failure_one(row)), 4) if failure_known else None
                    ),
                    "by_type": self.by_type(row) if by_type else {},
                    "cause": cause,
                }
            )

    def by_type(self, row: int) -> dict[str, dict]:
        """The ``TypeEstimate`` of each task type the agent has outcomes of."""
        estimates = {}
        for task_type, column in self.types.items():
            count = int(self.type_count[row, column])
            if count:
                p, seconds = self.predict(row, task_type)
                estimates[task_type] = {
                    "p_success": round(p, 4),
                    "expected_duration_s": None if seconds is None else round(seconds, 3),
                    "outcomes": count,
                }
        return estimates

    def predict(self, row: int, task_type: str) -> tuple[float, float | None]:
        """Predicted success and completion time (s; None: nothing known) of the agent
        of ``row`` on ``task_type``: the models' once they have learnt enough, the agent's
        own smoothed figures before."""
        models, cfg = self.models, self.config
        x = self._success_features(row, task_type)
        if models.outcomes >= cfg.model_min_outcomes:
            p = models.p_success(x)
        else:
            p = x["type_rate"] + 0.5
        x, base = self._duration_features(row, task_type)
        if math.isnan(base):
            return p, None
        if models.durations >= cfg.model_min_outcomes:
            return p, models.expected_duration(x, base)
        return p, seconds_of(base)

    def _predict_into(self, record: dict, row: int) -> None:
        p, seconds = self.predict(row, record["task_type"])
        if record["p_success"] is None:
            record["p_success"] = round(p, 4)
        if record["expected_duration_s"] is None and seconds is not None:
            record["expected_duration_s"] = round(seconds, 3)

    # --- features -------------------------------------------------------------------------------
    def _success_features(self, row: int, task_type: str) -> dict[str, float]:
        cfg = self.config
        k = cfg.prior_weight
        rate = (float(self.success_s[row]) + cfg.success_prior * k) / (
            float(self.success_n[row]) + k
        )
        column = self.types.get(task_type)
        type_rate = rate
        if column is not None:
            n, s = float(self.type_n[row, column]), float(self.type_s[row, column])
            type_rate = (s + rate * k) / (n + k)
        x = self._load_features(row)
        one_hot = f"type={task_type if column is not None else _OTHER}"
        x.update({one_hot: 1.0, "rate": rate - 0.5, "type_rate": type_rate - 0.5})
        x["sla"] = (float(self.sla_s[row]) + k) / (float(self.sla_n[row]) + k) - 0.5
        return x

    def _duration_features(self, row: int, task_type: str) -> tuple[dict[str, float], float]:
        column = self.types.get(task_type)
        own = math.nan if column is None else float(self.type_log_duration[row, column])
        shard = self.models.type_log_duration(task_type if column is not None else _OTHER)
        base = own if not math.isnan(own) else (math.nan if shard is None else shard)
        x = self._load_features(row)
        one_hot = f"type={task_type if column is not None else _OTHER}"
        x.update({one_hot: 1.0, "own": 0.0 if math.isnan(own) else 1.0})
        return x, base

    def _load_features(self, row: int) -> dict[str, float]:
        cfg = self.config
        response = float(np.nan_to_num(self.response_ms[row], nan=cfg.response_time_ref_ms))
        capacity = float(self._capacity(row))
        return {
            "load": float(self.open_count[row]) / capacity,
            "speed": cfg.response_time_ref_ms / (cfg.response_time_ref_ms + max(response, 0.0))
            - 0.5,
            "usage": float(np.nan_to_num(self.usage[row], nan=50.0)) / 100.0 - 0.5,
            "errors": min(float(np.nan_to_num(self.errors[row])) * 10.0, 1.0),
        }

    def _failure_features(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        cfg = self.config
        k = cfg.prior_weight
        response = np.nan_to_num(self.response_ms[rows], nan=cfg.response_time_ref_ms)
        return {
            "usage": np.nan_to_num(self.usage[rows], nan=50.0) / 100.0 - 0.5,
            "errors": np.minimum(np.nan_to_num(self.errors[rows]) * 10.0, 1.0),
            "speed": cfg.response_time_ref_ms / (cfg.response_time_ref_ms + np.maximum(response, 0))
            - 0.5,
            "success": (self.success_s[rows] + cfg.success_prior * k) / (self.success_n[rows] + k)
            - 0.5,
            "load": self.open_count[rows] / self._capacities(rows),
        }

    def _failure_one(self, row: int) -> dict[str, float]:
        return {k: float(v[0]) for k, v in self._failure_features(np.array([row])).items()}

    def _sampled(self, row: int) -> dict[str, float]:
        return {name: float(getattr(self, f"f_{name}")[row]) for name in _FAILURE_FEATURES}

    # --- model stats ---------------------------------------------------------------------------
    def _report(self, now: float, out: OrchestrationOutput) -> None:
        models = self.models
        seen = (models.outcomes, models.failure_samples)
        if seen == self.stats_reported or now < self.stats_at + self.config.model_stats_interval_s:
            return
        self.stats_at, self.stats_reported = now, seen
        out.events.append(
            {
                "type": MODEL_STATS,
                "agent_id": FLEET,
                "tenant_id": FLEET,
                "actor": "system",
                "timestamp": now,
                "payload": models.stats(now),
            }
        )

    # --- bookkeeping ---------------------------------------------------------------------------
    def _row(self, agent_id: str, tenant_id: str | None) -> int:
        row = self.index.row(agent_id)
        if row is None:
            row = int(self.index.rows_for([agent_id], [tenant_id or ""])[0])
            self.index.forget()
        self._fit()
        return row

    def _capacity(self, row: int) -> int:
        declared = int(self.capacity_of[row])
        return declared if declared else self.config.default_capacity

    def _capacities(self, rows: np.ndarray) -> np.ndarray:
        declared = self.capacity_of[rows].astype(np.float64)
        return np.where(declared > 0, declared, float(self.config.default_capacity))

    def _type_column(self, task_type: str) -> int | None:
        column = self.types.get(task_type)
        if column is not None or len(self.types) >= self.config.max_task_types:
            return column
        column = self.types[task_type] = len(self.types)
        self._widen(len(self.types))
        return column

    def _widen(self, width: int) -> None:
        """Give the per-type arrays ``width`` columns (new columns fresh)."""
        capacity = self.capacity
        for name in _PER_TYPE:
            dtype, fill, _ = self._arrays[name]
            old = getattr(self, name)
            new = np.full((capacity, width), fill, dtype=dtype)
            new[:, : old.shape[1]] = old
            setattr(self, name, new)
            self._arrays[name] = (dtype, fill, (width,))

    def _remember(self, task_id: str, attempt: int) -> None:
        finished = self.finished
        finished[task_id] = max(attempt, finished.pop(task_id, 0))
        while len(finished) > self.config.finished_tasks_kept:
            finished.popitem(last=False)

    def _record(self, order: TaskAssigned) -> dict:
        task = order.assignment
        return {
            "task_id": task.task_id,
            "agent_id": order.agent_id,
            "tenant_id": order.tenant_id,
            "task_type": task.task_type,
            "priority": task.priority,
            "status": "assigned",
            "attempt": task.attempt,
            "required_capabilities": list(task.required_capabilities),
            "score": task.score,
            "components": task.components.model_dump(),
            "p_success": task.p_success,
            "expected_duration_s": task.expected_duration_s,
            "deadline": task.deadline,
            "assigned_at": order.at,
            "accepted_at": None,
            "finished_at": None,
            "duration_s": None,
            "sla_met": None,
            "reason": "",
            "agent_active_tasks": 0,
            "capacity": 0,
            "assigned_by": task.assigned_by,
            "updated_at": order.at,
        }

    @staticmethod
    def _event(record: dict, at: float) -> dict:
        return {
            "type": TASK_CHANGED,
            "agent_id": record["agent_id"],
            "tenant_id": record["tenant_id"],
            "actor": "system",
            "timestamp": at,
            "payload": dict(record),
        }

    @staticmethod
    def _command(command: str, record: dict, at: float, actor: str, reason: str) -> dict:
        key = (
            f"{command}|{record['tenant_id']}|{record['agent_id']}|{record['task_id']}|"
            f"{record['attempt']}"
        )
        return {
            "command_id": str(uuid.uuid5(TASK_COMMAND_NAMESPACE, key)),
            "agent_id": record["agent_id"],
            "tenant_id": record["tenant_id"],
            "command": command,
            "reason": reason or command,
            "issued_at": at,
            "actor": actor or "system",
            "task_id": record["task_id"],
        }

    @staticmethod
    def _refused(
        agent: str, tenant: str, trigger: str, task_id: str, at: float, actor: str
    ) -> dict:
        return {
            "agent_id": agent,
            "tenant_id": tenant,
            "trigger": trigger,
            "reason": f"task {task_id} is not open on {agent}; nothing changed",
            "actor": actor or "system",
            "timestamp": at,
        }

    def open_tasks(self, agent_id: str) -> list[str]:
        """The ids of the agent's open tasks (introspection, tests)."""
        return [t for t, r in self.open.items() if r["agent_id"] == agent_id]

    def state_bytes(self) -> int:
        """Bytes of numeric columns in use (rows of the index, per-type columns included)."""
        return self.bytes_per_agent() * len(self.index)


_FAILURE_FEATURES = ("usage", "errors", "speed", "success", "load")
#: What the models call a task type past ``orchestration_max_task_types`` (or not yet seen).
_OTHER = "(other)"
_F16, _F32, _U32 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.uint32)
_PER_TYPE = ("type_n", "type_s", "type_log_duration", "type_count")
_LAYOUT: dict[str, ArraySpec] = {
    "capacity_of": (_U32, 0, ()),  # max_concurrent_tasks (0: the default)
    "open_count": (_U32, 0, ()),  # tasks accepted and not finished
    "cost": (_F32, np.nan, ()),  # declared cost_per_hour (NaN: none)
    "state": (np.dtype(np.int8), _UNKNOWN, ()),  # lifecycle state's code (-1: not met)
    "response_ms": (_F32, np.nan, ()),  # EWMA of response_time_avg
    "usage": (_F16, np.nan, ()),  # EWMA of (cpu + memory) / 2, percent
    "errors": (_F16, np.nan, ()),  # EWMA of error_rate
    "success_n": (_F16, 0, ()),  # decayed outcomes
    "success_s": (_F16, 0, ()),  # decayed successes
    "sla_n": (_F16, 0, ()),  # decayed outcomes with a deadline
    "sla_s": (_F16, 0, ()),  # decayed deadlines met
    "completed": (_U32, 0, ()),
    "failed": (_U32, 0, ()),
    "published": (_F32, 0, ()),  # last published score
    "published_at": (_U32, 0, ()),  # event time (s) of the last publication or judgement
    "sample_at": (_U32, 0, ()),  # failure sample's time (s; 0: none pending)
    **{f"f_{name}": (_F16, 0, ()) for name in _FAILURE_FEATURES},  # the sample
    "type_n": (_F16, 0, (0,)),  # per task type: decayed outcomes
    "type_s": (_F16, 0, (0,)),  # decayed successes
    "type_log_duration": (_F16, np.nan, (0,)),  # EWMA of log(1 + duration s)
    "type_count": (np.dtype(np.uint16), 0, (0,)),  # outcomes seen (saturating)
}
