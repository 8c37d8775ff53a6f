"""Everything the dataflow keeps for one shard of agents, and one batch's way through it.

A shard's state is its agents' baselines and detector (:class:`FleetBaselines`),
the threat rules' state (:class:`RuleSet`), the trend fits
(:class:`TrendWatch`), the security scores (:class:`SecurityScores`), the
alerts (:class:`AlertBook`), the conversation checks
(:class:`ConversationMonitor`) and the health scores (:class:`HealthWatch`, which
also sends remediation orders to degraded agents). For each batch: rules judge every heartbeat
against the baseline as it stood before that heartbeat (not the batch: see
``FleetOutput.met_mean``), trends look ahead, the
detector scores and learns, threats cost security points (and may quarantine
an agent), and alerts follow the rules' conditions. A conversation's threats
take the same way to the security score and the alerts.

An agent's status has one owner, the lifecycle table (:mod:`agentwatch.lifecycle`):
the shard keeps each agent's :class:`~agentwatch.lifecycle.AgentRecord`
(:class:`Lifecycles`) and gives the table every trigger — a heartbeat, a heartbeat
timeout from the ladder (:mod:`agentwatch.liveness`), a quarantine by the security
score, an operator's command — in event-time order; only the table emits
``status_changed``. A refused trigger changes nothing and is reported in
``ShardOutput.refusals`` (the dataflow logs each one).

An agent exists from its registration (:class:`AgentRegistration`, the table's
``registered`` trigger); the shard's :class:`~agentwatch.registry.Registry` keeps
its registered tenant (one byte per agent beside the index) and screens every
batch first: a heartbeat of an agent that was never registered (unless
``agents_auto_register``), of another tenant than its registration's, or of a
decommissioned agent, goes no further and is reported in ``ShardOutput.rejected``
(the dataflow dead-letters it with the reason).

>>> from agentwatch.settings import Settings
>>> shard = ShardState.new(Settings())
>>> len(shard.rules.rules()), len(shard.baselines)
(5, 0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from agentwatch import lifecycle
from agentwatch.alerts import AlertBook
from agentwatch.commands import (  # (also found here: snapshots name them so)
    AgentRegistration,
    LifecycleCommand,
    QuarantineOrder,
    Release,
    RestartOrder,
    ShardCommand,
    SilenceExpiry,
)
from agentwatch.conversations import Conversation, ConversationConfig, ConversationMonitor
from agentwatch.fleet import DetectorConfig, FleetBaselines
from agentwatch.health import HealthConfig, HealthOutput, HealthPending, HealthWatch, Move
from agentwatch.lifecycle import AgentRecord, Refusal, State, Transition, Trigger
from agentwatch.liveness import OFFLINE, Liveness, LivenessConfig, LivenessOutput
from agentwatch.orchestration import (
    Beats,
    Orchestration,
    OrchestrationConfig,
    OrchestrationOutput,
    TaskAssigned,
    TaskFinished,
    TaskReleased,
    WeightsChange,
)
from agentwatch.registry import AUTO, REGISTERED, UNKNOWN, Registry
from agentwatch.rows import AgentIndex
from agentwatch.rules import BaselineInputs, RuleSet
from agentwatch.security import SecurityConfig, SecurityScores
from agentwatch.settings import Settings
from agentwatch.trends import TrendConfig, TrendWatch
from schemas.events import STATUS_CHANGED
from schemas.heartbeats import HeartbeatBatch
from schemas.models import RuleChange, Silence


@dataclass(slots=True)
class ShardOutput:
    """What one batch produced, as plain dicts in the layouts of :mod:`schemas.models`.

    ``anomalies``: ``AnomalyRecord``; ``baselines``: ``BaselineRecord``;
    ``threats``: ``Threat``; ``alerts``: ``Alert``; ``scores``: ``ScoreChange``;
    ``commands``: ``AgentCommand`` (quarantine, remediation, an operator's restart);
    ``events``: ``LifecycleEvent`` (``status_changed`` from the lifecycle table,
    ``heartbeat_late``, ``health_changed``, for ``agents.state``); ``refusals``:
    the triggers the lifecycle table refused (agent and tenant ids, ``trigger``,
    ``reason``, ``actor``, ``timestamp``), logged by the dataflow, published nowhere;
    ``rejected``: the heartbeats the registry refused, as ``(position, reason)`` (the
    position in the raw batch they were read from: ``HeartbeatBatch.index``);
    ``dead_letters``: the ``DeadLetter`` records the dataflow made of them (it has the
    raw messages); ``assignment_scores``: ``AssignmentScore`` (the orchestration's
    components, for ``agents.assignment_scores``; its ``task_changed`` and ``model_stats``
    go with ``events``, its ``run_task`` and ``cancel_task`` with ``commands``).
    """

    anomalies: list[dict] = field(default_factory=list)
    baselines: list[dict] = field(default_factory=list)
    threats: list[dict] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)
    scores: list[dict] = field(default_factory=list)
    commands: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    refusals: list[dict] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    dead_letters: list[dict] = field(default_factory=list)
    assignment_scores: list[dict] = field(default_factory=list)
    #: The heartbeats of the step the registry let in (for the ``metrics`` table); None
    #: when the step took none.
    accepted: HeartbeatBatch | None = None


#: Heartbeat statuses that may move an agent whose record is active (``active`` and the
#: states an agent may not claim leave an active agent as it is).
_CLAIMS = frozenset({"idle", "busy"})
#: What a trigger's own event may not carry over from the component that asked for it.
_OWN = frozenset({"from", "to", "reason", "trigger", "quarantine_until"})


class Lifecycles:
    """The lifecycle records of one shard's agents, and the way every trigger goes
    through the table. An agent without a record is active (no heartbeat, timeout,
    quarantine or command has moved it yet): records are made on an agent's first
    trigger that is not a plain heartbeat of an active agent. ``unsettled`` names the
    agents whose state is not active, the only ones whose every heartbeat the table
    must see (the others' only when they claim idle or busy): the hot path stays a
    set look-up per heartbeat.

    >>> book = Lifecycles()
    >>> out = ShardOutput()
    >>> book.step(book.record("a1", "t1"), "quarantined", 1.8e9, out, reason="score 10")
    True
    >>> book.step(book.record("a1", "t1"), "heartbeat_timeout", 1.8e9 + 120, out)
    False
    >>> book.step(book.record("a1", "t1"), "released", 1.8e9 + 200, out, actor="ops-1")
    True
    >>> [(e["payload"]["from"], e["payload"]["to"]) for e in out.events], book.unsettled
    ([('active', 'quarantined'), ('quarantined', 'active')], set())
    >>> book.step(book.record("a1", "t1"), "released", 1.8e9 + 300, out, actor="ops-1")
    False
    >>> print(out.refusals[0]["reason"])
    a1 is active; released is accepted only when it is quarantined or compromised
    """

    __slots__ = ("records", "unsettled", "next_expiry", "retired")

    def __init__(self) -> None:
        self.records: dict[str, AgentRecord] = {}
        self.unsettled: set[str] = set()
        #: The earliest quarantine expiry of the records (inf: none).
        self.next_expiry = math.inf
        #: Agents decommissioned since the shard last looked (it refuses their heartbeats).
        self.retired: list[str] = []

    def __getstate__(self) -> dict:
        """The records as columns (pickled, about 40 bytes an agent besides its id, against
        85 as objects: every registered agent has one)."""
        records = list(self.records.values())
        states = list(State)
        code = {state: k for k, state in enumerate(states)}
        return {
            "columns": {
                "agent_id": [r.agent_id for r in records],
                "tenant_id": _coded([r.tenant_id for r in records]),
                "state": np.array([code.get(r.state, -1) for r in records], np.int8),
                "since": np.array([r.since for r in records], np.float64),
                "previous": np.array([code.get(r.previous, -1) for r in records], np.int8),
                "reason": _coded([r.reason for r in records]),
                "actor": _coded([r.actor for r in records]),
                "quarantine_until": np.array(
                    [np.nan if r.quarantine_until is None else r.quarantine_until for r in records],
                    np.float64,
                ),
                "transitions": np.array([r.transitions for r in records], np.uint32),
            }
        }

    def __setstate__(self, state: dict) -> None:
        if "columns" in state:
            state = {"records": _records_of(state["columns"])}
        self.records = state["records"]
        self.unsettled = {a for a, r in self.records.items() if r.state is not State.ACTIVE}
        self.next_expiry = math.inf
        self._note_expiries(self.records.values())
        self.retired = [
            a for a, r in self.records.items() if r.state is State.DECOMMISSIONED
        ]  # (told again after a restore: retiring is idempotent)

    def _note_expiries(self, records: Iterable[AgentRecord]) -> None:
        for record in records:
            if record.state is State.QUARANTINED and record.quarantine_until is not None:
                self.next_expiry = min(self.next_expiry, record.quarantine_until)

    def expired(self, now: float) -> list[AgentRecord]:
        """The quarantined records whose expiry is at or before ``now`` (event time),
        earliest first. Costs one comparison while none is due.

        >>> book = Lifecycles()
        >>> book.step(book.record("a1", "t1"), "quarantined", 100.0, ShardOutput(),
        ...           reason="leak", until=160.0)
        True
        >>> book.expired(150.0), [r.agent_id for r in book.expired(160.0)]
        ([], ['a1'])
        """
        if now < self.next_expiry:
            return []
        due, self.next_expiry = [], math.inf
        for agent_id in self.unsettled:
            record = self.records[agent_id]
            if record.state is not State.QUARANTINED or record.quarantine_until is None:
                continue
            if record.quarantine_until <= now:
                due.append(record)
            else:
                self.next_expiry = min(self.next_expiry, record.quarantine_until)
        return sorted(due, key=lambda r: (r.quarantine_until, r.agent_id))

    def __len__(self) -> int:
        return len(self.records)

    def record(self, agent_id: str, tenant_id: str) -> AgentRecord:
        """The agent's record (a new one, active, for an agent without)."""
        record = self.records.get(agent_id)
        if record is None:
            record = AgentRecord(agent_id, tenant_id, State.ACTIVE)
        return record

    def state_of(self, agent_id: str) -> State:
        """The agent's state (active for an agent without a record)."""
        record = self.records.get(agent_id)
        return State.ACTIVE if record is None else record.state

    def seed(self, agents: Iterable[tuple[str, str, State]]) -> None:
        """Records for agents known before the lifecycle existed (a snapshot's)."""
        for agent_id, tenant_id, state in agents:
            if agent_id not in self.records and state is not State.ACTIVE:
                self.records[agent_id] = AgentRecord(agent_id, tenant_id, state)
                self.unsettled.add(agent_id)

    def step(
        self,
        record: AgentRecord,
        trigger: Trigger | str,
        at: float,
        out: ShardOutput,
        actor: str = "",
        reason: str = "",
        until: float | None = None,
        extra: dict | None = None,
    ) -> bool:
        """Give the table ``trigger`` for ``record``'s agent; keep the record it answers,
        put its ``status_changed`` (with ``extra`` payload fields) or its refusal in
        ``out``. True when the state changed."""
        result = lifecycle.transition(record, trigger, at, actor, reason, until)
        self.settle(result, out, extra, at, actor)
        return result.changed

    def settle(
        self,
        result: Transition | Refusal,
        out: ShardOutput,
        extra: dict | None = None,
        at: float | None = None,
        actor: str = "",
    ) -> None:
        """Keep what the table answered (see :meth:`step`)."""
        record = result.record
        if isinstance(result, Refusal):
            out.refusals.append(
                {
                    "agent_id": record.agent_id,
                    "tenant_id": record.tenant_id,
                    "trigger": str(result.trigger),
                    "reason": result.reason,
                    "actor": actor or "system",
                    "timestamp": at,
                }
            )
            return
        if result.event is None:
            return
        agent_id = record.agent_id
        self.records[agent_id] = record
        if record.state is State.ACTIVE:
            self.unsettled.discard(agent_id)
        else:
            self.unsettled.add(agent_id)
            if record.quarantine_until is not None:
                self._note_expiries((record,))
            if record.state is State.DECOMMISSIONED:
                self.retired.append(agent_id)
        if extra:
            payload = result.event["payload"]
            payload.update({k: v for k, v in extra.items() if k not in _OWN})
        out.events.append(result.event)


def _coded(values: list[str]) -> tuple[list[str], np.ndarray]:
    """A column of few distinct strings as (those strings, each value's code)."""
    code: dict[str, int] = {}
    codes = np.fromiter((code.setdefault(v, len(code)) for v in values), np.int32, len(values))
    return list(code), codes


def _decoded(column: tuple[list[str], np.ndarray]) -> list[str]:
    names, codes = column
    return [names[k] for k in codes.tolist()]


def _records_of(columns: dict) -> dict[str, AgentRecord]:
    """The records :meth:`Lifecycles.__getstate__` wrote as columns."""
    states = list(State)
    records = {}
    for agent_id, tenant_id, state, since, previous, reason, actor, until, transitions in zip(
        columns["agent_id"], _decoded(columns["tenant_id"]), columns["state"].tolist(),
        columns["since"].tolist(), columns["previous"].tolist(), _decoded(columns["reason"]),
        _decoded(columns["actor"]), columns["quarantine_until"].tolist(),
        columns["transitions"].tolist(),
        strict=True,
    ):  # fmt: skip
        records[agent_id] = AgentRecord(
            agent_id, tenant_id, None if state < 0 else states[state], since,
            None if previous < 0 else states[previous], reason, actor,
            None if until != until else until, transitions,
        )  # fmt: skip
    return records


@dataclass(frozen=True, slots=True)
class ShardConfig:
    """The tunables of every part of a shard, made once per ``Settings`` object (so a
    shard tells by identity whether its parts have them)."""

    settings: Settings
    detector: DetectorConfig
    trends: TrendConfig
    security: SecurityConfig
    conversations: ConversationConfig
    liveness: LivenessConfig
    health: HealthConfig
    orchestration: OrchestrationConfig

    @classmethod
    def of(cls, settings: Settings) -> ShardConfig:
        """The config of ``settings`` (the same object each time for the same settings,
        as long as no other settings came between: a process runs with one)."""
        made = _LAST_CONFIG[0]
        if made is None or made.settings is not settings:
            made = _LAST_CONFIG[0] = cls(
                settings,
                DetectorConfig.from_settings(settings),
                TrendConfig.from_settings(settings),
                SecurityConfig.from_settings(settings),
                ConversationConfig.from_settings(settings),
                LivenessConfig.from_settings(settings),
                HealthConfig.from_settings(settings),
                OrchestrationConfig.from_settings(settings),
            )
        return made


_LAST_CONFIG: list[ShardConfig | None] = [None]


@dataclass(slots=True)
class ShardState:
    """The per-agent state of one shard of agents (its components share one index)."""

    index: AgentIndex
    baselines: FleetBaselines
    rules: RuleSet
    trends: TrendWatch
    security: SecurityScores
    alerts: AlertBook
    conversations: ConversationMonitor
    liveness: Liveness
    lifecycle: Lifecycles
    health: HealthWatch
    registry: Registry
    orchestration: Orchestration

    @classmethod
    def new(cls, settings: Settings) -> ShardState:
        """An empty shard with the default rule set of ``settings``."""
        config = ShardConfig.of(settings)
        index = AgentIndex()
        rules = RuleSet.default(settings, index)
        return cls(
            index,
            FleetBaselines(config.detector, index),
            rules,
            TrendWatch(config.trends, index),
            SecurityScores(config.security, index),
            AlertBook(settings, rules.rules()),
            ConversationMonitor(config.conversations),
            Liveness(config.liveness, index),
            Lifecycles(),
            HealthWatch(config.health, index),
            Registry(index, settings.agents_auto_register),
            Orchestration(config.orchestration, index),
        )

    @classmethod
    def restore(cls, state: object | None, settings: Settings) -> ShardState:
        """The state a shard goes on with: a new one for None, what :meth:`carry_over`
        makes of a snapshot of an earlier version, and ``state`` itself otherwise —
        with the tunables of ``settings`` (which may have changed across a restart).

        >>> old = ShardState.new(Settings(security_quarantine_threshold=20))
        >>> state = ShardState.restore(old, Settings(security_quarantine_threshold=30))
        >>> state.security.config.quarantine_threshold
        30.0
        """
        if state is None:
            return cls.new(settings)
        if not isinstance(state, cls) or not all(hasattr(state, n) for n in cls.__slots__):
            state = cls.carry_over(state, settings)
        config = ShardConfig.of(settings)
        if state.security.config is not config.security:
            state.configure(config)
        return state

    def configure(self, config: ShardConfig) -> None:
        """Give every part its tunables from ``config``."""
        self.baselines.configure(config.detector)
        self.trends.configure(config.trends)
        self.security.configure(config.security)
        self.conversations.configure(config.conversations)
        self.alerts.configure(config.settings)
        if self.liveness.config != config.liveness:
            self.liveness.configure(config.liveness)
        self.health.configure(config.health)
        self.registry.auto_register = config.settings.agents_auto_register
        self.rules.min_heartbeats = config.settings.threat_for_min_heartbeats
        self.orchestration.configure(config.orchestration)

    @classmethod
    def carry_over(cls, state: object, settings: Settings) -> ShardState:
        """A shard state from a recovery snapshot of an earlier version: what it holds
        is kept, what it lacks starts empty."""
        fresh = cls.new(settings)
        if isinstance(state, FleetBaselines):
            state = {"baselines": state}
        old = state if isinstance(state, dict) else {
            name: getattr(state, name) for name in cls.__slots__ if hasattr(state, name)
        }  # fmt: skip
        if "baselines" in old and not hasattr(old["baselines"], "index"):
            _share_one_index(old, fresh)
        for name, part in old.items():
            setattr(fresh, name, part)
        if "liveness" not in old:  # (snapshots from before the heartbeat timeouts)
            fresh.liveness = Liveness.resume(
                ShardConfig.of(settings).liveness, fresh.index, fresh.security.clock
            )
        if "lifecycle" not in old:  # (snapshots from before the lifecycle table owned status)
            fresh.lifecycle.seed(fresh.known_states())
        if "health" not in old:  # (snapshots from before the health score)
            fresh.health = HealthWatch(ShardConfig.of(settings).health, fresh.index)
        if "registry" not in old:  # (snapshots from before registration: known = registered)
            fresh.registry = Registry.of_known(fresh.index, settings.agents_auto_register)
            fresh.lifecycle.retired = [
                a for a, r in fresh.lifecycle.records.items() if r.state is State.DECOMMISSIONED
            ]
        if "orchestration" not in old:  # (snapshots from before orchestration)
            fresh.orchestration = Orchestration(ShardConfig.of(settings).orchestration, fresh.index)
            fresh.orchestration.seed_states(fresh.registered_states())
        fresh.alerts.set_rules(fresh.rules.rules())
        return fresh

    def registered_states(self) -> list[tuple[str, str, State]]:
        """Each agent with a standing (registered, or by its heartbeats) and its state."""
        count = len(self.index)
        self.registry._fit()
        standing = self.registry.standing[:count].tolist()
        return [
            (agent["agent_id"], agent["tenant_id"], self.lifecycle.state_of(agent["agent_id"]))
            for row in range(count)
            if standing[row] in (REGISTERED, AUTO) and (agent := self.index.agent(row))
        ]

    def known_states(self) -> list[tuple[str, str, State]]:
        """Each agent's state as the parts of the shard know it without a lifecycle
        record: quarantined if its security score quarantined it, offline if the
        heartbeat ladder says so, else active."""
        count = len(self.index)
        self.security._fit()
        self.liveness._fit()
        quarantined = self.security.quarantined[:count].tolist()
        offline = (self.liveness.level[:count] >= OFFLINE).tolist()
        states = []
        for row in range(count):
            state = (
                State.QUARANTINED if quarantined[row]
                else State.OFFLINE if offline[row]
                else State.ACTIVE
            )  # fmt: skip
            agent = self.index.agent(row)
            states.append((agent["agent_id"], agent["tenant_id"], state))
        return states

    def observe(self, batch: HeartbeatBatch, wall: float | None = None) -> ShardOutput:
        """Every step of the shard for every heartbeat of ``batch``, read at processing
        time ``wall`` (None: the batch's latest event time, for callers without a clock
        such as a replay benchmark). Heartbeats the registry refuses go no further (see
        :meth:`screen`)."""
        if not len(batch):
            return ShardOutput()
        batch, rejected = self.screen(batch)
        if not len(batch):
            return ShardOutput(rejected=rejected)
        scored = self.baselines.observe(batch)  # (then the rules: each heartbeat is judged
        # against the baseline it met, so the verdicts do not depend on the batch's cut)
        judged = self.rules.observe(batch, BaselineInputs.met(scored))
        threats = judged.threats + self.trends.observe(batch)
        security = self.security.observe(batch, threats)
        if wall is None:
            wall = float(batch.timestamp.max())
        live = self.liveness.observe(
            batch.agent_id, batch.tenant_id, batch.timestamp, batch.partition, wall
        )
        health = self.health.score(batch)
        beats = self.orchestration.observe(batch)
        self.index.forget()
        out = ShardOutput(
            anomalies=scored.anomalies,
            baselines=scored.baselines,
            threats=threats,
            scores=security.score_changes,
            commands=security.commands,
            events=live.events,
            rejected=rejected,
            accepted=batch,
        )
        walked = self._lifecycle(out, live.timeouts, security.lifecycle_events, batch, health)
        conditions, raised = judged.transitions + live.transitions, threats + live.threats
        if walked is not None:  # (the agent_unhealthy alert, with the batch's time)
            conditions, raised = conditions + walked.transitions, raised + walked.threats
        out.alerts = self.alerts.observe(conditions, raised, batch.agent_id, batch.timestamp)
        if self.lifecycle.next_expiry <= self.liveness.clock.latest():
            self._expire(out)
        self._orchestrate(out, beats)
        return out

    def _orchestrate(
        self, out: ShardOutput, beats: Beats | None = None, report: bool = False
    ) -> None:
        """Give the orchestration the lifecycle's changes of state of this step (an
        agent's availability depends on it) and the time that passed (task expiry,
        failure labels, heartbeats' scores; on the clock's ticks, ``report``, model stats)."""
        orchestration = self.orchestration
        done = self._orchestration_output(out)
        changes = [e for e in out.events if e["type"] == STATUS_CHANGED]
        for event in changes:
            orchestration.state_changed(
                event["agent_id"], event["tenant_id"], State(event["payload"]["to"]),
                event["timestamp"], done,
            )  # fmt: skip
        now = self.liveness.clock.latest()
        if math.isfinite(now):
            orchestration.settle(now, done, beats, report)

    def _orchestration_output(self, out: ShardOutput) -> OrchestrationOutput:
        return OrchestrationOutput(out.events, out.commands, out.assignment_scores, out.refusals)

    def _health_walk(self, out: ShardOutput) -> tuple[HealthOutput, Move]:
        """Where the health walk's records go (``out``'s events and commands, in step
        with the lifecycle's), and its way to give the lifecycle table a trigger."""
        book = self.lifecycle

        def move(agent_id: str, tenant_id: str, trigger: Trigger, at: float, reason: str) -> State:
            book.step(book.record(agent_id, tenant_id), trigger, at, out, reason=reason)
            return book.state_of(agent_id)

        return HealthOutput(events=out.events, commands=out.commands), move

    def _expire(self, out: ShardOutput) -> None:
        """End the quarantines whose expiry the shard's event clock has passed, each at
        its expiry (so the event does not depend on when the check ran)."""
        for record in self.lifecycle.expired(self.liveness.clock.latest()):
            at = record.quarantine_until
            if self.lifecycle.step(record, Trigger.QUARANTINE_EXPIRED, at, out):
                out.scores += self.security.release(record.agent_id, at).score_changes
                self._still_silent(record.agent_id, record.tenant_id, at, out)

    def _still_silent(self, agent_id: str, tenant_id: str, at: float, out: ShardOutput) -> None:
        """An agent made active at ``at`` by an expiry or an operator while the heartbeat
        ladder has it offline (it went silent while held) is offline again at once: the
        ladder times an agent out once per silence, and the silence goes on."""
        self.liveness._fit()
        if self.liveness.state_of(agent_id) != "offline":
            return
        last = self.liveness.last_heartbeat(agent_id)
        record = self.lifecycle.record(agent_id, tenant_id)
        reason = f"no heartbeat for {self.liveness.config.offline_after_s:g} s"
        extra = {"last_heartbeat": last}
        self.lifecycle.step(record, Trigger.HEARTBEAT_TIMEOUT, at, out, reason=reason, extra=extra)

    def screen_fact(self, agent_id: str, tenant_id: str) -> str | None:
        """Why an agent's fact (a conversation, a task's outcome) is refused, as its
        heartbeat would be (:meth:`screen`: never registered, another tenant than its
        registration's, decommissioned); None when it is taken."""
        self._retire()
        keep, refused = self.registry.screen([agent_id], [tenant_id])
        return refused[0][1] if keep is not None and not keep[0] else None

    def screen(self, batch: HeartbeatBatch) -> tuple[HeartbeatBatch, list[tuple[int, str]]]:
        """The heartbeats of ``batch`` the registry accepts (the batch itself when it
        accepts all), and ``(position, reason)`` of each refused one (its position in the
        raw batch: ``batch.index``): never registered (unless ``agents_auto_register``),
        of another tenant than its registration's, or decommissioned."""
        self._retire()
        keep, refused = self.registry.screen(batch.agent_id, batch.tenant_id)
        if keep is None:
            return batch, []
        positions = batch.index.tolist()
        rejected = [(positions[k], reason) for k, reason in refused]
        return batch.take(np.flatnonzero(keep)), rejected

    def _retire(self) -> None:
        """Tell the registry of the agents decommissioned since it was last asked."""
        if self.lifecycle.retired:
            for agent_id in self.lifecycle.retired:
                self.registry.retire(agent_id)
            self.lifecycle.retired.clear()

    def _lifecycle(
        self,
        out: ShardOutput,
        timeouts: list[dict],
        quarantines: list[dict],
        batch: HeartbeatBatch | None = None,
        health: HealthPending | None = None,
    ) -> HealthOutput | None:
        """Give the lifecycle table the triggers of one step in event-time order
        (at one time: timeouts, quarantines, heartbeats, health): the ladder's timeouts,
        the security score's quarantines (its ``status_changed`` proposals: the table
        decides, and its event keeps their score and threats), the heartbeats of
        agents that are not active or claim idle or busy, and the heartbeats the health
        score picked (bands, health triggers, remediation: :mod:`agentwatch.health`).
        Returns what the health walk left for the alert book (None if it did not walk)."""
        book = self.lifecycle
        pending: list[tuple[float, int, int, object]] = []
        for k, timeout in enumerate(timeouts):
            pending.append((timeout["at"], 0, k, timeout))
        for k, proposal in enumerate(quarantines):
            pending.append((proposal["timestamp"], 1, k, proposal))
        if batch is not None and len(batch):
            touched = book.unsettled
            if timeouts or quarantines:
                touched = touched | {t["agent_id"] for t in timeouts + quarantines}
            n = len(batch)
            wanted = np.zeros(n, dtype=bool)
            if batch.status:
                wanted |= np.fromiter(map(_CLAIMS.__contains__, batch.status), bool, n)
            if touched:
                wanted |= np.fromiter(map(touched.__contains__, batch.agent_id), bool, n)
            rows = np.flatnonzero(wanted).tolist()
            if rows:
                times = batch.timestamp.tolist()
                pending += [(times[k], 2, k, None) for k in rows]
        if health is not None and len(health):
            pending += [(at, 3, k, None) for k, at in enumerate(health.times)]
        if not pending:
            return None
        pending.sort(key=lambda p: p[:3])
        walked: HealthOutput | None = None
        for at, kind, k, what in pending:
            if kind == 0:
                record = book.record(what["agent_id"], what["tenant_id"])
                reason = f"no heartbeat for {self.liveness.config.offline_after_s:g} s"
                book.step(record, Trigger.HEARTBEAT_TIMEOUT, at, out, reason=reason,
                          extra={"last_heartbeat": what["last_heartbeat"]})  # fmt: skip
            elif kind == 1:
                record = book.record(what["agent_id"], what["tenant_id"])
                book.step(record, Trigger.QUARANTINED, at, out, what["actor"],
                          what["payload"]["reason"], extra=what["payload"])  # fmt: skip
            elif kind == 2:
                self._heartbeat(batch, k, at, out)
            else:
                if walked is None:
                    walked, move = self._health_walk(out)
                self.health.step(health, k, book.state_of, move, walked)
        return walked

    def _heartbeat(self, batch: HeartbeatBatch, k: int, at: float, out: ShardOutput) -> None:
        agent_id = batch.agent_id[k]
        book = self.lifecycle
        record = book.record(agent_id, batch.tenant_id[k])
        status = batch.status[k] if batch.status else None
        if record.state is not State.DECOMMISSIONING and status == record.state:
            return  # (the table's self-loop, without the call)
        tasks = None
        if record.state is State.DECOMMISSIONING and "active_tasks" in batch.metrics:
            tasks = int(batch.metrics["active_tasks"][k])
        book.settle(lifecycle.observe_heartbeat(record, at, status, tasks), out, None, at)

    def tick(self, wall: float) -> ShardOutput:
        """The clock ticked at processing time ``wall``: the heartbeat timeouts of agents
        left behind by their partition's clock (see :mod:`agentwatch.liveness`). Costs one
        comparison when no agent is due. The alert book's clock moves with it: alerts whose
        hold passed while their agent said nothing more resolve, and so do those of agents
        silent for ``alert_silent_resolve_s``."""
        live = self.liveness.tick(wall)
        out = self._timed_out(live)
        now = self.liveness.clock.latest()
        if self.lifecycle.next_expiry <= now:
            self._expire(out)
        if math.isfinite(now):
            out.alerts += self.alerts.tick(now)
        self._orchestrate(out, report=True)
        return out

    def _timed_out(self, live: LivenessOutput) -> ShardOutput:
        if not (live.events or live.transitions or live.timeouts):
            return ShardOutput()
        alerts = self.alerts.observe(live.transitions, live.threats)
        out = ShardOutput(alerts=alerts, events=live.events)
        self._lifecycle(out, live.timeouts, [])
        return out

    def apply(self, command: ShardCommand) -> ShardOutput:
        """Apply an operator's command (a ``RuleChange`` may raise ``RuleChangeError``),
        a task's assignment, release or outcome, or check an agent's conversation; the
        orchestration learns the changes of state it made."""
        out = self._apply(command)
        self._orchestrate(out)
        return out

    def _apply(self, command: ShardCommand) -> ShardOutput:
        if isinstance(command, TaskAssigned | TaskReleased | TaskFinished | WeightsChange):
            return self._task(command)
        if isinstance(command, Conversation):
            return self.converse(command)
        if isinstance(command, RuleChange):
            return self.change_rules(command)
        if isinstance(command, Silence):
            return ShardOutput(alerts=self.alerts.apply_silence(command, command.starts_at))
        if isinstance(command, SilenceExpiry):
            return ShardOutput(alerts=self.alerts.expire(command.silence_id, command.at))
        out = ShardOutput()
        if isinstance(command, QuarantineOrder):
            record = self.lifecycle.record(command.agent_id, command.tenant_id)
            step = lifecycle.transition(
                record, Trigger.QUARANTINED, command.at, command.actor, command.reason,
                command.until,
            )  # fmt: skip
            extra = None
            if step.changed:  # (the security score's flag and the order to the agent)
                done = self.security.quarantine(
                    command.agent_id, command.tenant_id, command.at, command.reason,
                    command.actor,
                )  # fmt: skip
                out.scores, out.commands = done.score_changes, done.commands
                extra = done.lifecycle_events[0]["payload"] if done.lifecycle_events else None
            self.lifecycle.settle(step, out, extra, command.at, command.actor)
        elif isinstance(command, Release):
            tenant = command.tenant_id or self._tenant_of(command.agent_id)
            record = self.lifecycle.record(command.agent_id, tenant)
            released = self.lifecycle.step(
                record, Trigger.RELEASED, command.at, out, command.actor, command.reason
            )
            if released:  # (the score may quarantine it again; with the setting, reset)
                done = self.security.release(command.agent_id, command.at)
                out.scores = done.score_changes
                self._still_silent(command.agent_id, tenant, command.at, out)
        elif isinstance(command, RestartOrder):
            record = self.lifecycle.record(command.agent_id, command.tenant_id)
            if record.state is State.DECOMMISSIONED:
                out.refusals.append(
                    {
                        "agent_id": command.agent_id,
                        "tenant_id": command.tenant_id,
                        "trigger": "restart_requested",
                        "reason": f"{command.agent_id} is decommissioned; it cannot restart",
                        "actor": command.actor,
                        "timestamp": command.at,
                    }
                )
            else:
                out.commands.append(command.command())
        elif isinstance(command, AgentRegistration):
            self.register(command, out)
        elif isinstance(command, LifecycleCommand):
            event = command.event
            record = self.lifecycle.record(event.agent_id, event.tenant_id)
            step = lifecycle.on_command(record, event)
            self.lifecycle.settle(step, out, None, event.timestamp, event.actor)
            if step.changed and step.record.state is State.ACTIVE:  # (maintenance ended)
                self._still_silent(event.agent_id, event.tenant_id, step.record.since, out)
        return out

    def _task(self, command: TaskAssigned | TaskReleased | TaskFinished | WeightsChange):
        out = ShardOutput()
        done = self._orchestration_output(out)
        orchestration = self.orchestration
        if isinstance(command, TaskAssigned):
            standing = self.registry.standing_of(command.agent_id)
            state = self.lifecycle.state_of(command.agent_id)
            orchestration.assign(command, standing in (REGISTERED, AUTO), done, state)
        elif isinstance(command, TaskReleased):
            orchestration.release(command, done)
        elif isinstance(command, TaskFinished):
            orchestration.finish(command, done)
        else:
            orchestration.set_weights(command, done)
        return out

    def register(self, command: AgentRegistration, out: ShardOutput) -> None:
        """Give the table the agent's ``registered`` trigger: an agent the shard has never
        known is registered (its record made, in state registered, and its tenant kept);
        a second registration is refused (an agent known by its heartbeats, with
        ``agents_auto_register``, is already registered: active). The ``status_changed``
        carries the registration (``payload["registration"]``) for the projections."""
        book = self.lifecycle
        record = book.records.get(command.agent_id)
        if record is None:
            if self.registry.standing_of(command.agent_id) == UNKNOWN:
                record = AgentRecord.unregistered(command.agent_id, command.tenant_id)
            else:
                record = book.record(command.agent_id, self._tenant_of(command.agent_id))
        step = lifecycle.transition(record, Trigger.REGISTERED, command.at, command.actor)
        if step.changed:
            self.registry.register(command.agent_id, command.tenant_id)
            declared = command.registration
            self.orchestration.register(
                command.agent_id, command.tenant_id, declared.max_concurrent_tasks,
                declared.resources.get("cost_per_hour"),
            )  # fmt: skip
        registration = command.registration.model_dump()
        book.settle(step, out, {"registration": registration}, command.at, command.actor)

    def _tenant_of(self, agent_id: str) -> str:
        row = self.index.row(agent_id)
        return "" if row is None else self.index.agent(row)["tenant_id"]

    def converse(self, conversation: Conversation) -> ShardOutput:
        """Check an agent's conversation: its threats cost security points (and may
        quarantine the agent) and open alerts, like the threats of a heartbeat."""
        threats = self.conversations.check(conversation)
        if not threats:
            return ShardOutput()
        security = self.security.apply_threats(threats)
        # Conversations and heartbeats come from two topics: the agent's heartbeats after
        # this conversation may have been read first (one topic replayed faster after a
        # restart). The latest of them passes the alert's hold as it would have in time
        # order, instead of leaving the alert firing until a heartbeat that may not come.
        agent = conversation.agent_id
        heard = self.liveness.last_heartbeat(agent)
        agents, times = ([agent], [heard]) if heard > conversation.at else ((), ())
        out = ShardOutput(
            threats=threats,
            alerts=self.alerts.observe(threats=threats, agent_ids=agents, timestamps=times),
            scores=security.score_changes,
            commands=security.commands,
        )
        self._lifecycle(out, [], security.lifecycle_events)
        return out

    def change_rules(self, change: RuleChange) -> ShardOutput:
        """Apply a rule change (raises ``RuleChangeError`` if it does not fit); a rule
        disabled or deleted resolves its alerts."""
        self.rules.apply(change)
        self.alerts.set_rules(self.rules.rules())
        retired = []
        if change.action in ("disable", "delete"):
            retired = self.alerts.retire_rule(change.target)
        return ShardOutput(alerts=retired)


def _share_one_index(old: dict, fresh: ShardState) -> None:
    """Give the parts of a snapshot from before the index was shared (each kept its own
    ``row_of``, ``agent_ids``, ``tenant_names`` and ``tenant``) the baselines' index.
    A part whose agents were in another order starts empty."""
    index = fresh.index = AgentIndex.adopt(old["baselines"])
    for name in ("baselines", "rules", "trends", "security"):
        part, new = old.get(name), getattr(fresh, name)
        if part is None or getattr(part, "agent_ids", None) != index.agent_ids:
            part = new
        for stale in ("row_of", "agent_ids", "tenant_names", "_tenant_index", "tenant"):
            vars(part).pop(stale, None)
        part._arrays = new._arrays
        part.index = index
        part._fit()
        old[name] = part
