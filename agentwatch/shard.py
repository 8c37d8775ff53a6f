"""Everything the dataflow keeps for one shard of agents, and one batch's way through it.

A shard's state is its agents' baselines and detector (:class:`FleetBaselines`),
the threat rules' state (:class:`RuleSet`), the trend fits
(:class:`TrendWatch`), the security scores (:class:`SecurityScores`), the
alerts (:class:`AlertBook`) and the conversation checks
(:class:`ConversationMonitor`). For each batch: rules judge every heartbeat
against the baseline as it stood before the batch, trends look ahead, the
detector scores and learns, threats cost security points (and may quarantine
an agent), and alerts follow the rules' conditions. A conversation's threats
take the same way to the security score and the alerts.

>>> from agentwatch.settings import Settings
>>> shard = ShardState.new(Settings())
>>> len(shard.rules.rules()), len(shard.baselines)
(5, 0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agentwatch.alerts import AlertBook
from agentwatch.conversations import Conversation, ConversationConfig, ConversationMonitor
from agentwatch.fleet import DetectorConfig, FleetBaselines
from agentwatch.liveness import Liveness, LivenessConfig, LivenessOutput
from agentwatch.rows import AgentIndex
from agentwatch.rules import BaselineInputs, RuleSet
from agentwatch.security import SecurityConfig, SecurityScores
from agentwatch.settings import Settings
from agentwatch.trends import TrendConfig, TrendWatch
from schemas.events import EventError
from schemas.heartbeats import HeartbeatBatch
from schemas.models import LifecycleEvent, RuleChange, Silence


@dataclass(slots=True)
class ShardOutput:
    """What one batch produced, as plain dicts in the layouts of :mod:`schemas.models`.

    ``anomalies``: ``AnomalyRecord``; ``baselines``: ``BaselineRecord``;
    ``threats``: ``Threat``; ``alerts``: ``Alert``; ``scores``: ``ScoreChange``;
    ``commands``: ``AgentCommand``; ``events``: ``LifecycleEvent`` (quarantines, for
    ``agents.state``).
    """

    anomalies: list[dict] = field(default_factory=list)
    baselines: list[dict] = field(default_factory=list)
    threats: list[dict] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)
    scores: list[dict] = field(default_factory=list)
    commands: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SilenceExpiry:
    """An operator ended silence ``silence_id`` at ``at`` (event time)."""

    silence_id: str
    at: float


@dataclass(frozen=True, slots=True)
class Release:
    """An operator released ``agent_id`` from quarantine at ``at``."""

    agent_id: str
    at: float


@dataclass(frozen=True, slots=True)
class QuarantineOrder:
    """An operator (``actor``) asked at ``at`` for ``agent_id`` to be quarantined."""

    agent_id: str
    tenant_id: str
    at: float
    reason: str
    actor: str

    @classmethod
    def from_event(cls, event: LifecycleEvent) -> QuarantineOrder:
        """The order a ``quarantine_requested`` event carries (:class:`EventError` if its
        payload has no reason).

        >>> event = LifecycleEvent(type="quarantine_requested", agent_id="a1", tenant_id="t1",
        ...     actor="ops-1", timestamp=1.8e9, payload={"reason": "leaked a key"})
        >>> QuarantineOrder.from_event(event).reason
        'leaked a key'
        >>> QuarantineOrder.from_event(event.model_copy(update={"payload": {}}))
        Traceback (most recent call last):
        ...
        schemas.events.EventError: quarantine_requested payload: reason must be a non-empty string
        """
        reason = event.payload.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise EventError(f"{event.type} payload: reason must be a non-empty string")
        return cls(event.agent_id, event.tenant_id, event.timestamp, reason, event.actor)


#: What an operator can tell a shard, besides heartbeats.
ShardCommand = RuleChange | Silence | SilenceExpiry | Release | QuarantineOrder | Conversation


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
        fresh.alerts.set_rules(fresh.rules.rules())
        return fresh

    def observe(self, batch: HeartbeatBatch, wall: float | None = None) -> ShardOutput:
        """Every step of the shard for every heartbeat of ``batch``, read at processing
        time ``wall`` (None: the batch's latest event time, for callers without a clock
        such as a replay benchmark)."""
        if not len(batch):
            return ShardOutput()
        before = BaselineInputs.from_fleet(self.baselines, batch)
        judged = self.rules.observe(batch, before)
        threats = judged.threats + self.trends.observe(batch)
        scored = self.baselines.observe(batch)
        security = self.security.observe(batch, threats)
        if wall is None:
            wall = float(batch.timestamp.max())
        live = self.liveness.observe(
            batch.agent_id, batch.tenant_id, batch.timestamp, batch.partition, wall,
            self.security.quarantined,
        )  # fmt: skip
        self.index.forget()
        alerts = self.alerts.observe(
            judged.transitions + live.transitions, threats + live.threats,
            batch.agent_id, batch.timestamp,
        )  # fmt: skip
        return ShardOutput(
            anomalies=scored.anomalies,
            baselines=scored.baselines,
            threats=threats,
            alerts=alerts,
            scores=security.score_changes,
            commands=security.commands,
            events=security.lifecycle_events + live.events,
        )

    def tick(self, wall: float) -> ShardOutput:
        """The clock ticked at processing time ``wall``: the heartbeat timeouts of agents
        left behind by their partition's clock (see :mod:`agentwatch.liveness`). Costs one
        comparison when no agent is due."""
        live = self.liveness.tick(wall, self.security.quarantined)
        return self._timed_out(live)

    def _timed_out(self, live: LivenessOutput) -> ShardOutput:
        if not (live.events or live.transitions):
            return ShardOutput()
        alerts = self.alerts.observe(live.transitions, live.threats)
        return ShardOutput(alerts=alerts, events=live.events)

    def apply(self, command: ShardCommand) -> ShardOutput:
        """Apply an operator's command (a ``RuleChange`` may raise ``RuleChangeError``),
        or check an agent's conversation."""
        if isinstance(command, Conversation):
            return self.converse(command)
        if isinstance(command, RuleChange):
            return self.change_rules(command)
        if isinstance(command, Silence):
            return ShardOutput(alerts=self.alerts.apply_silence(command, command.starts_at))
        if isinstance(command, SilenceExpiry):
            return ShardOutput(alerts=self.alerts.expire(command.silence_id, command.at))
        if isinstance(command, QuarantineOrder):
            done = self.security.quarantine(
                command.agent_id, command.tenant_id, command.at, command.reason, command.actor
            )
        else:
            done = self.security.release(command.agent_id, command.at)
        return ShardOutput(
            scores=done.score_changes, commands=done.commands, events=done.lifecycle_events
        )

    def converse(self, conversation: Conversation) -> ShardOutput:
        """Check an agent's conversation: its threats cost security points (and may
        quarantine the agent) and open alerts, like the threats of a heartbeat."""
        threats = self.conversations.check(conversation)
        if not threats:
            return ShardOutput()
        security = self.security.apply_threats(threats)
        return ShardOutput(
            threats=threats,
            alerts=self.alerts.observe(threats=threats),
            scores=security.score_changes,
            commands=security.commands,
            events=security.lifecycle_events,
        )

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
