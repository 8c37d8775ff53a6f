"""What an operator can tell a shard besides heartbeats, as the shard takes it.

The events of ``agents.control`` and ``agents.events`` become these commands
(:func:`agentwatch.inbox.shard_command`); a shard applies them
(:class:`agentwatch.shard.ShardState`). They live apart from the shard so that the
processes that only read or check the events (the API and its loader) do not load the
shard's models (the detector and River).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from agentwatch.conversations import Conversation
from agentwatch.orchestration import TaskAssigned, TaskFinished, TaskReleased, WeightsChange
from agentwatch.security import COMMAND_NAMESPACE
from schemas.events import EventError
from schemas.models import TIMESTAMP_RANGE, LifecycleEvent, Registration, RuleChange, Silence


@dataclass(frozen=True, slots=True)
class SilenceExpiry:
    """An operator ended silence ``silence_id`` at ``at`` (event time)."""

    silence_id: str
    at: float


@dataclass(frozen=True, slots=True)
class Release:
    """An operator (``actor``) released ``agent_id`` from quarantine at ``at``."""

    agent_id: str
    at: float
    tenant_id: str = ""
    actor: str = "system"
    reason: str = ""


@dataclass(frozen=True, slots=True)
class QuarantineOrder:
    """An operator (``actor``) asked at ``at`` for ``agent_id`` to be quarantined."""

    agent_id: str
    tenant_id: str
    at: float
    reason: str
    actor: str
    until: float | None = None

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
        until = event.payload.get("until")
        if until is not None and (
            isinstance(until, bool)
            or not isinstance(until, int | float)
            or not TIMESTAMP_RANGE[0] <= until <= TIMESTAMP_RANGE[1]  # (NaN fails too)
        ):
            raise EventError(
                f"{event.type} payload: until must be epoch seconds from {TIMESTAMP_RANGE[0]:.0f} "
                f"to {TIMESTAMP_RANGE[1]:.0f}, or absent"
            )
        return cls(
            event.agent_id, event.tenant_id, event.timestamp, reason, event.actor,
            None if until is None else float(until),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class RestartOrder:
    """An operator (``actor``) asked at ``at`` for ``agent_id`` to be restarted
    (``restart_requested`` on ``agents.control``)."""

    agent_id: str
    tenant_id: str
    at: float
    reason: str
    actor: str

    @classmethod
    def from_event(cls, event: LifecycleEvent) -> RestartOrder:
        """The order a ``restart_requested`` event carries (its reason may be empty).

        >>> event = LifecycleEvent(type="restart_requested", agent_id="a1", tenant_id="t1",
        ...     actor="ops-1", timestamp=1.8e9, payload={"reason": "stuck"})
        >>> RestartOrder.from_event(event).actor
        'ops-1'
        """
        reason = event.payload.get("reason", "")
        if not isinstance(reason, str):
            raise EventError(f"{event.type} payload: reason must be a string")
        return cls(event.agent_id, event.tenant_id, event.timestamp, reason, event.actor)

    def command(self) -> dict:
        """The ``AgentCommand`` (``restart``) it becomes, with a deterministic id."""
        key = f"restart|{self.tenant_id}|{self.agent_id}|{self.at!r}|{self.actor}"
        return {
            "command_id": str(uuid.uuid5(COMMAND_NAMESPACE, key)),
            "agent_id": self.agent_id,
            "tenant_id": self.tenant_id,
            "command": "restart",
            "reason": self.reason or "restart requested by an operator",
            "issued_at": self.at,
            "actor": self.actor,
        }


@dataclass(frozen=True, slots=True)
class LifecycleCommand:
    """An operator's other lifecycle command (``maintenance_requested``,
    ``maintenance_ended``, ``compromise_declared``, ``decommission_requested``), as read
    from ``agents.control``; the lifecycle table's :func:`~agentwatch.lifecycle.on_command`
    decides what it does."""

    event: LifecycleEvent

    @property
    def agent_id(self) -> str:
        return self.event.agent_id


@dataclass(frozen=True, slots=True)
class AgentRegistration:
    """An operator (``actor``) registered ``agent_id`` to ``tenant_id`` at ``at`` with
    what ``registration`` declares (a ``registered`` event on ``agents.control``)."""

    agent_id: str
    tenant_id: str
    at: float
    actor: str
    registration: Registration

    @classmethod
    def from_event(cls, event: LifecycleEvent) -> AgentRegistration:
        """The registration a ``registered`` event carries (pydantic's ``ValidationError``
        if its payload is not a :class:`~schemas.models.Registration`).

        >>> event = LifecycleEvent(type="registered", agent_id="a1", tenant_id="t1",
        ...     actor="ops-1", timestamp=1.8e9,
        ...     payload={"name": "Agent-001", "agent_type": "bot", "owner": "team-ml"})
        >>> AgentRegistration.from_event(event).registration.owner
        'team-ml'
        """
        registration = Registration.model_validate(event.payload)
        return cls(event.agent_id, event.tenant_id, event.timestamp, event.actor, registration)


#: What an operator can tell a shard, besides heartbeats.
ShardCommand = (
    RuleChange | Silence | SilenceExpiry | Release | QuarantineOrder | LifecycleCommand
    | AgentRegistration | Conversation | RestartOrder
    | TaskAssigned | TaskReleased | TaskFinished | WeightsChange
)  # fmt: skip
