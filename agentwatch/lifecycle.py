"""The seed's agent lifecycle: 12 states, one transition table, and the fold that replays it.

An agent's lifecycle state changes only here: something happens to the agent
(a :class:`Trigger`: it registered, a heartbeat came, its health fell, it went
quiet, an operator quarantined it, …), :func:`transition` looks up
``(state, trigger)`` in :data:`TRANSITIONS` and answers with a
:class:`Transition` (the agent's new :class:`AgentRecord` and, when the state
changed, the ``status_changed`` event that says so) or a :class:`Refusal` that
says why not (an API answers it with 409; the dataflow dead-letters it). The
dataflow keeps one record per agent and publishes the events on
``agents.state``; :func:`project` folds those events back into the ``agents``
projection (latest state per agent), so a replay of the log rebuilds the same
rows as the live run.

Semantics (from the seed, made explicit):

- An agent exists from its registration: ``registered`` is the only trigger an
  unknown agent accepts. Provisioning (``provisioning_started`` →
  ``provisioned``) is optional: an agent whose heartbeats come first is up.
- ``active``, ``idle`` and ``busy`` are the *running* states. Among them the
  agent's own word decides: a heartbeat's ``status`` of active/idle/busy moves
  it there (:func:`heartbeat_trigger`); a heartbeat with no status or another
  status (an agent cannot declare itself degraded, quarantined, …) only says
  it is alive. Every other state is agentwatch's to decide.
- ``degraded`` follows health: below the threshold a running agent is degraded,
  and back to active when it recovers; its heartbeats' claims don't lift it.
- A late heartbeat is a warning only (an alert, not a state). A heartbeat
  timeout makes a running or degraded agent ``offline``; its next heartbeat
  brings it back (to the state it reports, else active): the heartbeat *is*
  the return, there is no separate trigger for it.
- ``maintenance`` is an operator's: started from a running, degraded or
  offline agent, ended back to active. Heartbeats, health and timeouts don't
  move an agent in maintenance.
- ``quarantined`` (automatic, from the security score, or an operator's, with
  an optional expiry) is reached from any state but compromised and
  decommissioned; heartbeats, health and timeouts don't move a quarantined
  agent. It ends by an operator's ``released`` or, if it has an expiry, by
  ``quarantine_expired`` at or after that time — to active (its next
  heartbeat says idle or busy; the health check must judge it again). A
  second quarantine of a quarantined agent changes nothing.
- ``compromised`` (a confirmed critical threat, or an operator's word) is
  reached from every state but decommissioned and left only by an operator's
  ``released`` (to active) or by decommissioning; a quarantine's expiry does
  not end it.
- Decommissioning drains: a running, degraded or in-maintenance agent goes to
  ``decommissioning`` until it reports no active task (``drained``) or goes
  silent past the timeout; an agent that cannot drain (registered,
  provisioning, offline, quarantined, compromised) is ``decommissioned`` at
  once. A quarantine or compromise while draining wins (security first); the
  operator asks for the decommission again, which then ends it at once.
- ``decommissioned`` is terminal: nothing leaves it, not even a heartbeat
  (the dataflow dead-letters it with the refusal's reason).
- A trigger that makes sense in a state but does not change it (a heartbeat
  of a quarantined agent) is in the table as a self-loop: accepted, no event.
  A trigger not in the table for a state is refused.
- Event time only moves forward per agent: a trigger older than the record's
  ``since`` takes effect at ``since`` (as the security score does), so
  records and events never go back in time.

>>> agent = AgentRecord.unregistered("agent-7", "t1")
>>> t0 = 1_800_000_000.0
>>> step = transition(agent, Trigger.REGISTERED, t0, actor="ops-1")
>>> agent = step.record
>>> str(agent.state), step.event["payload"]["from"], step.event["payload"]["to"]
('registered', None, 'registered')
>>> agent = observe_heartbeat(agent, t0 + 30, status="busy").record
>>> str(agent.state), str(agent.previous)
('busy', 'registered')
>>> refused = transition(agent, Trigger.RELEASED, t0 + 40, actor="ops-1")
>>> print(refused.reason)
agent-7 is busy; released is accepted only when it is quarantined or compromised
>>> refused.record is agent
True

Regenerate the diagrams and tables of ``docs/lifecycle.md`` from the table with
``python -m agentwatch.lifecycle --write docs/lifecycle.md`` (without
``--write`` the generated part is printed).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from schemas.events import STATUS_CHANGED
from schemas.models import AGENT_STATES, LifecycleEvent


class State(StrEnum):
    """The seed's 12 lifecycle states, in the order of ``schemas.models.AGENT_STATES``
    (the wire contract, which heartbeats are validated against; the security score and
    the rules keep a state as its index there, in snapshots too, so the order is fixed).

    >>> State("busy") is State.BUSY, len(State)
    (True, 12)
    """

    REGISTERED = "registered"
    PROVISIONING = "provisioning"
    ACTIVE = "active"
    IDLE = "idle"
    BUSY = "busy"
    DEGRADED = "degraded"
    MAINTENANCE = "maintenance"
    QUARANTINED = "quarantined"
    COMPROMISED = "compromised"
    OFFLINE = "offline"
    DECOMMISSIONING = "decommissioning"
    DECOMMISSIONED = "decommissioned"


if tuple(State) != AGENT_STATES:  # schemas may not import the domain: check here
    raise ImportError(
        "agentwatch.lifecycle.State and schemas.models.AGENT_STATES disagree; "
        "make them list the same states in the same order"
    )


class Trigger(StrEnum):
    """What can happen to an agent (the second key of :data:`TRANSITIONS`).

    >>> Trigger("heartbeat_timeout").name
    'HEARTBEAT_TIMEOUT'
    """

    REGISTERED = "registered"
    PROVISIONING_STARTED = "provisioning_started"
    PROVISIONED = "provisioned"
    PROVISIONING_FAILED = "provisioning_failed"
    HEARTBEAT = "heartbeat"
    REPORTED_ACTIVE = "reported_active"
    REPORTED_IDLE = "reported_idle"
    REPORTED_BUSY = "reported_busy"
    HEALTH_DEGRADED = "health_degraded"
    HEALTH_RECOVERED = "health_recovered"
    HEARTBEAT_LATE = "heartbeat_late"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    MAINTENANCE_STARTED = "maintenance_started"
    MAINTENANCE_ENDED = "maintenance_ended"
    QUARANTINED = "quarantined"
    RELEASED = "released"
    QUARANTINE_EXPIRED = "quarantine_expired"
    COMPROMISED = "compromised"
    DECOMMISSION_REQUESTED = "decommission_requested"
    DRAINED = "drained"


S, T = State, Trigger  # short names for the table below
#: The states in which an agent works, and reports which of them it is in.
RUNNING = (S.ACTIVE, S.IDLE, S.BUSY)
#: Every state but the terminal one.
LIVE = tuple(s for s in State if s is not S.DECOMMISSIONED)


def _stay(*states: State) -> dict[State, State]:
    return {s: s for s in states}


def _to(target: State, *states: State) -> dict[State, State]:
    return dict.fromkeys(states, target)


def _reported(target: State) -> dict[State, State]:
    """A heartbeat that reports ``target``: a running, new or returning agent goes there."""
    return {
        **_to(target, S.REGISTERED, S.PROVISIONING, S.OFFLINE, *RUNNING),
        **_stay(S.DEGRADED, S.MAINTENANCE, S.QUARANTINED, S.COMPROMISED, S.DECOMMISSIONING),
    }


#: Per trigger: the state it is accepted in → the state it leads to (the same state:
#: accepted, nothing changes). ``None`` stands for an agent not registered yet.
_BY_TRIGGER: dict[Trigger, dict[State | None, State]] = {
    T.REGISTERED: {None: S.REGISTERED},
    T.PROVISIONING_STARTED: {S.REGISTERED: S.PROVISIONING, **_stay(S.PROVISIONING)},
    T.PROVISIONED: {S.PROVISIONING: S.ACTIVE, **_stay(*RUNNING, S.DEGRADED)},
    T.PROVISIONING_FAILED: {S.PROVISIONING: S.REGISTERED},
    T.HEARTBEAT: {
        **_to(S.ACTIVE, S.REGISTERED, S.PROVISIONING, S.OFFLINE),
        **_stay(*RUNNING, S.DEGRADED, S.MAINTENANCE, S.QUARANTINED, S.COMPROMISED),
        **_stay(S.DECOMMISSIONING),
    },
    T.REPORTED_ACTIVE: _reported(S.ACTIVE),
    T.REPORTED_IDLE: _reported(S.IDLE),
    T.REPORTED_BUSY: _reported(S.BUSY),
    T.HEALTH_DEGRADED: {
        **_to(S.DEGRADED, *RUNNING),
        **_stay(*(s for s in LIVE if s not in RUNNING)),
    },
    T.HEALTH_RECOVERED: {S.DEGRADED: S.ACTIVE, **_stay(*(s for s in LIVE if s is not S.DEGRADED))},
    T.HEARTBEAT_LATE: _stay(*LIVE),
    T.HEARTBEAT_TIMEOUT: {
        **_to(S.OFFLINE, *RUNNING, S.DEGRADED),
        S.DECOMMISSIONING: S.DECOMMISSIONED,
        **_stay(S.REGISTERED, S.PROVISIONING, S.MAINTENANCE, S.QUARANTINED, S.COMPROMISED),
        **_stay(S.OFFLINE),
    },
    T.MAINTENANCE_STARTED: {
        **_to(S.MAINTENANCE, *RUNNING, S.DEGRADED, S.OFFLINE),
        **_stay(S.MAINTENANCE),
    },
    T.MAINTENANCE_ENDED: {S.MAINTENANCE: S.ACTIVE},
    T.QUARANTINED: {
        **_to(S.QUARANTINED, *(s for s in LIVE if s not in (S.QUARANTINED, S.COMPROMISED))),
        **_stay(S.QUARANTINED, S.COMPROMISED),
    },
    T.RELEASED: _to(S.ACTIVE, S.QUARANTINED, S.COMPROMISED),
    T.QUARANTINE_EXPIRED: {S.QUARANTINED: S.ACTIVE, **_stay(S.COMPROMISED)},
    T.COMPROMISED: {
        **_to(S.COMPROMISED, *(s for s in LIVE if s is not S.COMPROMISED)),
        **_stay(S.COMPROMISED),
    },
    T.DECOMMISSION_REQUESTED: {
        **_to(S.DECOMMISSIONING, *RUNNING, S.DEGRADED, S.MAINTENANCE),
        **_to(S.DECOMMISSIONED, S.REGISTERED, S.PROVISIONING, S.OFFLINE),
        **_to(S.DECOMMISSIONED, S.QUARANTINED, S.COMPROMISED),
        **_stay(S.DECOMMISSIONING),
    },
    T.DRAINED: {S.DECOMMISSIONING: S.DECOMMISSIONED},
}

#: The transition table: ``(state, trigger) → next state``; the state ``None`` is an
#: agent not registered yet. A pair that is not here is refused; a pair that leads
#: to its own state is accepted and changes nothing.
TRANSITIONS: Mapping[tuple[State | None, Trigger], State] = {
    (source, trigger): target
    for trigger, edges in _BY_TRIGGER.items()
    for source, target in edges.items()
}

#: What each trigger means, and which component emits it (for the docs).
TRIGGERS: Mapping[Trigger, tuple[str, str]] = {
    Trigger.REGISTERED: (
        "the agent was registered (name, type, tenant, owner, …)",
        "API `POST /api/v1/agents/register` → dataflow",
    ),
    Trigger.PROVISIONING_STARTED: (
        "its resources and credential are being set up",
        "registration (API → dataflow)",
    ),
    Trigger.PROVISIONED: ("provisioning finished; it may work", "registration (API → dataflow)"),
    Trigger.PROVISIONING_FAILED: (
        "provisioning failed; it stays registered and may be provisioned again",
        "registration (API → dataflow)",
    ),
    Trigger.HEARTBEAT: (
        "a heartbeat with no status, or one an agent may not claim (it is alive)",
        "dataflow: heartbeats",
    ),
    Trigger.REPORTED_ACTIVE: ("a heartbeat with `status: active`", "dataflow: heartbeats"),
    Trigger.REPORTED_IDLE: ("a heartbeat with `status: idle`", "dataflow: heartbeats"),
    Trigger.REPORTED_BUSY: ("a heartbeat with `status: busy`", "dataflow: heartbeats"),
    Trigger.HEALTH_DEGRADED: (
        "its health score fell below the threshold",
        "dataflow: health",
    ),
    Trigger.HEALTH_RECOVERED: ("its health score is back above the threshold", "dataflow: health"),
    Trigger.HEARTBEAT_LATE: (
        "no heartbeat for a while, not yet the grace (a warning, not a state)",
        "dataflow: clock (heartbeat timeouts)",
    ),
    Trigger.HEARTBEAT_TIMEOUT: (
        "no heartbeat for the grace (interval × missed count)",
        "dataflow: clock (heartbeat timeouts)",
    ),
    Trigger.MAINTENANCE_STARTED: (
        "an operator put it into maintenance",
        "API → `agents.control` `maintenance_requested`",
    ),
    Trigger.MAINTENANCE_ENDED: (
        "an operator ended its maintenance",
        "API → `agents.control` `maintenance_ended`",
    ),
    Trigger.QUARANTINED: (
        "quarantine: its security score fell below the threshold, or an operator's "
        "(optionally until an expiry)",
        "dataflow: security; API → `agents.control` `quarantine_requested`",
    ),
    Trigger.RELEASED: (
        "an operator released it from quarantine (or cleared a compromise)",
        "API → `agents.control` `released`",
    ),
    Trigger.QUARANTINE_EXPIRED: (
        "the expiry of its quarantine passed",
        "dataflow: clock (expiries)",
    ),
    Trigger.COMPROMISED: (
        "a critical threat confirmed, or an operator's word",
        "dataflow: security; API → `agents.control` `compromise_declared`",
    ),
    Trigger.DECOMMISSION_REQUESTED: (
        "an operator asked for it to be retired",
        "API → `agents.control` `decommission_requested`",
    ),
    Trigger.DRAINED: (
        "while decommissioning, it reported no active task",
        "dataflow: heartbeats",
    ),
}

#: Default reasons, when the caller gives none.
_REASONS: Mapping[Trigger, str] = {
    Trigger.REGISTERED: "registered",
    Trigger.PROVISIONING_STARTED: "provisioning started",
    Trigger.PROVISIONED: "provisioned",
    Trigger.PROVISIONING_FAILED: "provisioning failed",
    Trigger.HEARTBEAT: "heartbeat received",
    Trigger.REPORTED_ACTIVE: "heartbeat reported active",
    Trigger.REPORTED_IDLE: "heartbeat reported idle",
    Trigger.REPORTED_BUSY: "heartbeat reported busy",
    Trigger.HEALTH_DEGRADED: "health below the threshold",
    Trigger.HEALTH_RECOVERED: "health recovered",
    Trigger.HEARTBEAT_LATE: "heartbeat late",
    Trigger.HEARTBEAT_TIMEOUT: "no heartbeat within the grace",
    Trigger.MAINTENANCE_STARTED: "maintenance started",
    Trigger.MAINTENANCE_ENDED: "maintenance ended",
    Trigger.QUARANTINED: "quarantined",
    Trigger.RELEASED: "released",
    Trigger.QUARANTINE_EXPIRED: "quarantine expired",
    Trigger.COMPROMISED: "compromised",
    Trigger.DECOMMISSION_REQUESTED: "decommission requested",
    Trigger.DRAINED: "drained: no active task left",
}

#: Operators' commands on ``agents.control`` → the trigger each one is.
COMMANDS: Mapping[str, Trigger] = {
    "quarantine_requested": Trigger.QUARANTINED,
    "released": Trigger.RELEASED,
    "maintenance_requested": Trigger.MAINTENANCE_STARTED,
    "maintenance_ended": Trigger.MAINTENANCE_ENDED,
    "compromise_declared": Trigger.COMPROMISED,
    "decommission_requested": Trigger.DECOMMISSION_REQUESTED,
}


@dataclass(slots=True)
class AgentRecord:
    """One agent's lifecycle: its state and since when, where it came from and why,
    who moved it, when its quarantine ends, and how many transitions it made. An
    agent not registered yet has ``state`` None. About 100 bytes (the strings are shared
    with the shard's index and the reasons' constants).

    >>> import sys
    >>> AgentRecord.unregistered("a1", "t1").state is None
    True
    >>> sys.getsizeof(AgentRecord("a1", "t1")) <= 120
    True
    """

    agent_id: str
    tenant_id: str
    state: State | None = None
    since: float = float("-inf")
    previous: State | None = None
    reason: str = ""
    actor: str = ""
    quarantine_until: float | None = None
    transitions: int = 0

    @classmethod
    def unregistered(cls, agent_id: str, tenant_id: str) -> AgentRecord:
        """The record of an agent nothing has happened to yet."""
        return cls(agent_id, tenant_id)

    @classmethod
    def from_row(cls, row: Mapping) -> AgentRecord:
        """The record of a row of the ``agents`` projection (the inverse of :meth:`row`).

        >>> record = AgentRecord("a1", "t1", State.BUSY, 1.8e9, State.IDLE, "x", "system")
        >>> AgentRecord.from_row(record.row()) == record
        True
        """

        def state(name: str | None) -> State | None:
            return None if name is None else State(name)

        return cls(
            agent_id=row["agent_id"],
            tenant_id=row["tenant_id"],
            state=state(row["state"]),
            since=float(row["since"]),
            previous=state(row["previous_state"]),
            reason=row["reason"],
            actor=row["actor"],
            quarantine_until=row["quarantine_until"],
            transitions=int(row["transitions"]),
        )

    def row(self) -> dict:
        """The agent's row of the ``agents`` projection.

        >>> step = transition(AgentRecord.unregistered("a1", "t1"), Trigger.REGISTERED, 1.8e9)
        >>> step.record.row()  # doctest: +NORMALIZE_WHITESPACE
        {'agent_id': 'a1', 'tenant_id': 't1', 'state': 'registered', 'since': 1800000000.0,
         'previous_state': None, 'reason': 'registered', 'actor': 'system',
         'quarantine_until': None, 'transitions': 1}
        """
        return {
            "agent_id": self.agent_id,
            "tenant_id": self.tenant_id,
            "state": None if self.state is None else str(self.state),
            "since": self.since,
            "previous_state": None if self.previous is None else str(self.previous),
            "reason": self.reason,
            "actor": self.actor,
            "quarantine_until": self.quarantine_until,
            "transitions": self.transitions,
        }


@dataclass(frozen=True, slots=True)
class Transition:
    """An accepted trigger: the agent's ``record`` after it, and the ``status_changed``
    event (a ``LifecycleEvent`` dict for ``agents.state``) when the state changed, None
    when the trigger was accepted but changed nothing (then ``record`` is the same object).
    """

    record: AgentRecord
    trigger: Trigger
    event: dict | None

    @property
    def changed(self) -> bool:
        """Whether the state changed (and there is an event to publish)."""
        return self.event is not None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused trigger: the ``record`` as it was (the same object) and why not."""

    record: AgentRecord
    trigger: Trigger
    reason: str

    changed = False


def accepted_in(trigger: Trigger) -> list[State | None]:
    """The states in which ``trigger`` is accepted, in the order of :class:`State`.

    >>> [str(s) for s in accepted_in(Trigger.RELEASED)]
    ['quarantined', 'compromised']
    >>> accepted_in(Trigger.REGISTERED)
    [None]
    """
    sources = {source for source, t in TRANSITIONS if t is trigger}
    return ([None] if None in sources else []) + [s for s in State if s in sources]


def transition(
    record: AgentRecord,
    trigger: Trigger | str,
    at: float,
    actor: str = "system",
    reason: str = "",
    until: float | None = None,
) -> Transition | Refusal:
    """What ``trigger`` at event time ``at`` does to the agent of ``record`` (which is
    not modified): a :class:`Transition` to the state :data:`TRANSITIONS` names, or a
    :class:`Refusal` with the reason. ``until`` is a quarantine's expiry (only with
    :attr:`Trigger.QUARANTINED`).

    >>> agent = AgentRecord(agent_id="a1", tenant_id="t1", state=State.ACTIVE, since=1.8e9)
    >>> step = transition(agent, "quarantined", 1.8e9 + 60, "ops-1", "leaked a key",
    ...                   until=1.8e9 + 3600)
    >>> step.event["payload"]  # doctest: +NORMALIZE_WHITESPACE
    {'from': 'active', 'to': 'quarantined', 'reason': 'leaked a key',
     'trigger': 'quarantined', 'transitions': 1, 'quarantine_until': 1800003600.0}
    >>> print(transition(step.record, "quarantine_expired", 1.8e9 + 120).reason)
    a1's quarantine lasts until 2027-01-15T09:00:00Z; quarantine_expired at \
2027-01-15T08:02:00Z is too early
    >>> transition(step.record, "quarantine_expired", 1.8e9 + 3600).record.state
    <State.ACTIVE: 'active'>
    """
    if type(trigger) is not Trigger:
        trigger = Trigger(trigger)
    if until is not None and trigger is not Trigger.QUARANTINED:
        raise ValueError(f"an expiry (until) goes with a quarantine, not with {trigger}")
    target = TRANSITIONS.get((record.state, trigger))
    if target is None:
        return Refusal(record, trigger, _why_not(record, trigger))
    at = float(at) if at > record.since else record.since
    if trigger in _GUARDED:
        refused = _guard(record, trigger, at, until)
        if refused is not None:
            return Refusal(record, trigger, refused)
    if target == record.state:
        return Transition(record, trigger, None)
    reason = reason or _REASONS[trigger]
    actor = actor or "system"
    kept_until = until if target is State.QUARANTINED else None
    after = dataclasses.replace(
        record,
        state=target,
        since=at,
        previous=record.state,
        reason=reason,
        actor=actor,
        quarantine_until=kept_until,
        transitions=record.transitions + 1,
    )
    payload: dict[str, object] = {
        "from": None if record.state is None else str(record.state),
        "to": str(target),
        "reason": reason,
        "trigger": str(trigger),
        "transitions": after.transitions,
    }
    if kept_until is not None:
        payload["quarantine_until"] = float(kept_until)
    event = {
        "type": STATUS_CHANGED,
        "agent_id": record.agent_id,
        "tenant_id": record.tenant_id,
        "actor": actor,
        "timestamp": at,
        "payload": payload,
    }
    return Transition(after, trigger, event)


_GUARDED = frozenset({Trigger.QUARANTINED, Trigger.QUARANTINE_EXPIRED})


def _why_not(record: AgentRecord, trigger: Trigger) -> str:
    agent = record.agent_id
    if record.state is None:
        return f"{agent} is not registered; register it first ({trigger} needs a registered agent)"
    if record.state == State.DECOMMISSIONED:
        return f"{agent} is decommissioned; no transition leaves decommissioned"
    if trigger is Trigger.REGISTERED:
        return f"{agent} is already registered (it is {record.state})"
    states = [str(s) for s in accepted_in(trigger) if s is not None]
    listed = ", ".join(states[:-1]) + f" or {states[-1]}" if len(states) > 1 else states[0]
    return f"{agent} is {record.state}; {trigger} is accepted only when it is {listed}"


def _guard(record: AgentRecord, trigger: Trigger, at: float, until: float | None) -> str | None:
    """Why a trigger the table accepts cannot happen now (times), None when it can."""
    agent = record.agent_id
    if trigger is Trigger.QUARANTINE_EXPIRED and record.state == State.QUARANTINED:
        if record.quarantine_until is None:
            return f"{agent}'s quarantine has no expiry; only an operator's release ends it"
        if at < record.quarantine_until:
            return (
                f"{agent}'s quarantine lasts until {_iso(record.quarantine_until)}; "
                f"{trigger} at {_iso(at)} is too early"
            )
    if trigger is Trigger.QUARANTINED and until is not None and until <= at:
        return (
            f"{agent}'s quarantine until {_iso(until)} would end before it begins "
            f"({_iso(at)}); give a later expiry or none"
        )
    return None


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def heartbeat_trigger(
    state: State | None, status: str | None = None, active_tasks: int | None = None
) -> Trigger:
    """The trigger a heartbeat is for an agent in ``state``: ``drained`` for a
    decommissioning agent that reports no active task, else what it reports (active,
    idle or busy), else a plain ``heartbeat`` (an agent cannot claim other states).

    >>> heartbeat_trigger(State.ACTIVE, "busy"), heartbeat_trigger(State.ACTIVE, "quarantined")
    (<Trigger.REPORTED_BUSY: 'reported_busy'>, <Trigger.HEARTBEAT: 'heartbeat'>)
    >>> heartbeat_trigger(State.DECOMMISSIONING, "busy", active_tasks=0)
    <Trigger.DRAINED: 'drained'>
    """
    if state == State.DECOMMISSIONING and active_tasks == 0:
        return Trigger.DRAINED
    return _REPORTED.get(status, Trigger.HEARTBEAT)


_REPORTED = {
    "active": Trigger.REPORTED_ACTIVE,
    "idle": Trigger.REPORTED_IDLE,
    "busy": Trigger.REPORTED_BUSY,
}


def observe_heartbeat(
    record: AgentRecord, at: float, status: str | None = None, active_tasks: int | None = None
) -> Transition | Refusal:
    """What a heartbeat (its time, reported ``status`` and ``active_tasks``) does to the
    agent: the dataflow's one call per heartbeat.

    >>> agent = AgentRecord("a1", "t1", State.OFFLINE, since=1.8e9)
    >>> step = observe_heartbeat(agent, 1.8e9 + 5, status="idle")
    >>> step.record.state, step.event["payload"]["reason"]
    (<State.IDLE: 'idle'>, 'heartbeat reported idle')
    """
    return transition(record, heartbeat_trigger(record.state, status, active_tasks), at)


def on_command(record: AgentRecord, event: LifecycleEvent | Mapping) -> Transition | Refusal:
    """What an operator's command from ``agents.control`` (:data:`COMMANDS`) does to the
    agent: the dataflow's one call per command. The payload's ``reason`` and, for a
    quarantine, ``until`` (epoch seconds) are used when present.

    >>> agent = AgentRecord("a1", "t1", State.ACTIVE, since=1.8e9)
    >>> step = on_command(agent, {"type": "maintenance_requested", "agent_id": "a1",
    ...     "tenant_id": "t1", "actor": "ops-1", "timestamp": 1.8e9 + 10,
    ...     "payload": {"reason": "kernel upgrade"}})
    >>> step.record.state, step.record.actor, step.record.reason
    (<State.MAINTENANCE: 'maintenance'>, 'ops-1', 'kernel upgrade')
    """
    if not isinstance(event, LifecycleEvent):
        event = LifecycleEvent.model_validate(event)
    trigger = COMMANDS.get(event.type)
    if trigger is None:
        raise ValueError(
            f"{event.type!r} is not a lifecycle command; the lifecycle commands are "
            f"{', '.join(COMMANDS)}"
        )
    reason = event.payload.get("reason")
    until = event.payload.get("until") if trigger is Trigger.QUARANTINED else None
    return transition(
        record,
        trigger,
        event.timestamp,
        event.actor,
        reason if isinstance(reason, str) else "",
        float(until) if isinstance(until, int | float) and not isinstance(until, bool) else None,
    )


# --- the projection --------------------------------------------------------------
def apply(record: AgentRecord | None, event: LifecycleEvent | Mapping) -> AgentRecord:
    """The record after one ``status_changed`` event (the fold's step; ``record`` is not
    modified). The previous state is the fold's own, so events written before this
    module existed (the security score's quarantines, whose ``from`` is the agent's
    reported status) fold the same way.

    >>> record = apply(None, {"type": "status_changed", "agent_id": "a1", "tenant_id": "t1",
    ...     "actor": "system", "timestamp": 1.8e9, "payload": {"to": "quarantined",
    ...     "from": "busy", "reason": "score 10 below 20"}})
    >>> record.state, record.previous, record.transitions
    (<State.QUARANTINED: 'quarantined'>, None, 1)
    """
    if isinstance(event, LifecycleEvent):
        event = event.model_dump()
    if event["type"] != STATUS_CHANGED:
        raise ValueError(f"only {STATUS_CHANGED} events fold into the agents projection")
    payload = event["payload"]
    try:
        state = State(payload["to"])
    except (KeyError, ValueError):
        raise ValueError(
            f"status_changed of {event['agent_id']}: 'to' must be one of {', '.join(State)}"
        ) from None
    if record is None:
        record = AgentRecord.unregistered(event["agent_id"], event["tenant_id"])
    until = payload.get("quarantine_until") if state is State.QUARANTINED else None
    return dataclasses.replace(
        record,
        tenant_id=event["tenant_id"],
        state=state,
        since=max(float(event["timestamp"]), record.since),
        previous=record.state,
        reason=str(payload.get("reason") or ""),
        actor=event["actor"],
        quarantine_until=None if until is None else float(until),
        transitions=record.transitions + 1,
    )


def project(
    events: Iterable[LifecycleEvent | Mapping], into: dict[str, AgentRecord] | None = None
) -> dict[str, AgentRecord]:
    """Fold lifecycle events (in log order per agent) into the latest record per agent:
    ``into`` (updated in place, to fold batch by batch) or a new dict. Events of other
    types are skipped.

    >>> agent = AgentRecord.unregistered("a1", "t1")
    >>> events = []
    >>> for trigger in ("registered", "reported_busy", "health_degraded"):
    ...     step = transition(agent, trigger, 1.8e9 + len(events))
    ...     agent = step.record
    ...     events.append(step.event)
    >>> project(events)["a1"] == agent
    True
    """
    records = {} if into is None else into
    for event in events:
        kind = event.type if isinstance(event, LifecycleEvent) else event["type"]
        if kind != STATUS_CHANGED:
            continue
        agent_id = event.agent_id if isinstance(event, LifecycleEvent) else event["agent_id"]
        records[agent_id] = apply(records.get(agent_id), event)
    return records


# --- the docs ----------------------------------------------------------------------
#: Views of the table for the docs: a name and the triggers it draws.
VIEWS: Mapping[str, tuple[Trigger, ...]] = {
    "Running: registration, heartbeats, health, timeouts, maintenance": (
        Trigger.REGISTERED,
        Trigger.PROVISIONING_STARTED,
        Trigger.PROVISIONED,
        Trigger.PROVISIONING_FAILED,
        Trigger.HEARTBEAT,
        Trigger.REPORTED_ACTIVE,
        Trigger.REPORTED_IDLE,
        Trigger.REPORTED_BUSY,
        Trigger.HEALTH_DEGRADED,
        Trigger.HEALTH_RECOVERED,
        Trigger.HEARTBEAT_LATE,
        Trigger.HEARTBEAT_TIMEOUT,
        Trigger.MAINTENANCE_STARTED,
        Trigger.MAINTENANCE_ENDED,
    ),
    "Security and retirement: quarantine, compromise, decommission": (
        Trigger.QUARANTINED,
        Trigger.RELEASED,
        Trigger.QUARANTINE_EXPIRED,
        Trigger.COMPROMISED,
        Trigger.DECOMMISSION_REQUESTED,
        Trigger.DRAINED,
    ),
}


def mermaid_diagram(triggers: Iterable[Trigger] | None = None) -> str:
    """The state diagram (Mermaid ``stateDiagram-v2``) of the table's changes for
    ``triggers`` (all by default): one arrow per pair of states, labelled with the
    triggers that take it; self-loops (accepted, no change) are left out.

    >>> print(mermaid_diagram([Trigger.RELEASED, Trigger.DRAINED]))
    stateDiagram-v2
        quarantined --> active : released
        compromised --> active : released
        decommissioning --> decommissioned : drained
        decommissioned --> [*]
    """
    chosen = list(Trigger) if triggers is None else list(triggers)
    arrows: dict[tuple[State | None, State], list[str]] = {}
    for source in [None, *State]:
        for trigger in chosen:
            target = TRANSITIONS.get((source, trigger))
            if target is not None and target is not source:
                arrows.setdefault((source, target), []).append(str(trigger))
    lines = ["stateDiagram-v2"]
    for (source, target), labels in arrows.items():
        lines.append(f"    {source or '[*]'} --> {target} : {', '.join(labels)}")
    if any(target is State.DECOMMISSIONED for _, target in arrows):
        lines.append(f"    {State.DECOMMISSIONED} --> [*]")
    return "\n".join(lines)


def generated_docs() -> str:
    """The generated part of ``docs/lifecycle.md``: a diagram per view, the table of
    triggers, and where each trigger is accepted without a change."""
    parts = []
    for title, triggers in VIEWS.items():
        parts += [f"### {title}", "", "```mermaid", mermaid_diagram(triggers), "```", ""]
    parts += [
        "<details><summary>The whole table in one diagram</summary>",
        "",
        "```mermaid",
        mermaid_diagram(),
        "```",
        "",
        "</details>",
        "",
    ]
    parts += [
        "### Triggers",
        "",
        "| trigger | meaning | emitted by | changes | accepted, no change in |",
        "| --- | --- | --- | --- | --- |",
    ]
    for trigger, (meaning, emitter) in TRIGGERS.items():
        moves, stays = [], []
        for source in accepted_in(trigger):
            target = TRANSITIONS[source, trigger]
            if target is source:
                stays.append(str(source))
            else:
                moves.append(f"{source or '(new)'} → {target}")
        parts.append(
            f"| `{trigger}` | {meaning} | {emitter} | {'<br>'.join(moves) or '—'} "
            f"| {', '.join(stays) or '—'} |"
        )
    return "\n".join(parts) + "\n"


BEGIN = "<!-- BEGIN generated by `python -m agentwatch.lifecycle --write docs/lifecycle.md` -->"
END = "<!-- END generated -->"


def generated_part(text: str) -> str:
    """The generated part of a doc (between :data:`BEGIN` and :data:`END`)."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no generated part: the doc needs the lines {BEGIN} and {END}")
    return text[start + len(BEGIN) : end].strip("\n") + "\n"


def write_docs(path: Path) -> None:
    """Replace the generated part of the doc at ``path`` with :func:`generated_docs`."""
    text = path.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{path}: no generated part; add the lines {BEGIN} and {END}")
    head, tail = text[: start + len(BEGIN)], text[end:]
    path.write_text(f"{head}\n{generated_docs()}{tail}")


def main(argv: list[str]) -> None:
    """``python -m agentwatch.lifecycle [--write DOC]``: print or write the generated docs."""
    if argv[:1] == ["--write"] and len(argv) == 2:
        write_docs(Path(argv[1]))
    elif not argv:
        sys.stdout.write(generated_docs())
    else:
        raise SystemExit("usage: python -m agentwatch.lifecycle [--write docs/lifecycle.md]")


if __name__ == "__main__":
    main(sys.argv[1:])
