"""What an accepted event asks of the shards: one decision, shared by the dataflow (which
applies it) and the loader (which stores only what the dataflow accepts).

An agent's event (``agents.events``) or an operator's command (``agents.control``) is
parsed and checked for its channel by :func:`schemas.events.parse_event`; its payload is
checked here, by building the command the shards apply. A rule change, a silence or new
weights go to every shard; a release, a quarantine or restart order, a lifecycle command,
a registration, a task's assignment, release or outcome, and a conversation to the agent's
shard. Types the shards have nothing to do with give ``None``.
"""

from __future__ import annotations

from typing import Literal

from agentwatch.commands import (
    AgentRegistration,
    LifecycleCommand,
    QuarantineOrder,
    Release,
    RestartOrder,
    ShardCommand,
    SilenceExpiry,
)
from agentwatch.conversations import Conversation
from agentwatch.lifecycle import COMMANDS
from agentwatch.orchestration import TaskAssigned, TaskFinished, TaskReleased, WeightsChange
from schemas.events import (
    CONVERSATION,
    QUARANTINE_REQUESTED,
    REGISTERED,
    RELEASED,
    RESTART_REQUESTED,
    RULE_CHANGED,
    SILENCE_CREATED,
    SILENCE_EXPIRED,
    TASK_ASSIGNED,
    TASK_COMPLETED,
    TASK_FAILED,
    TASK_RELEASED,
    WEIGHTS_CHANGED,
    EventError,
    conversation_of,
)
from schemas.models import LifecycleEvent, RuleChange, Silence

#: The operators' lifecycle commands besides a release and a quarantine (which the
#: security score takes part in): the lifecycle table alone decides what they do.
LIFECYCLE_COMMANDS = frozenset(COMMANDS) - {RELEASED, QUARANTINE_REQUESTED}

Route = tuple[Literal["agent", "every"], ShardCommand]


def shard_command(event: LifecycleEvent) -> Route | None:
    """Where ``event`` goes and what it asks: ``("agent", command)`` for its agent's
    shard, ``("every", command)`` for every shard, ``None`` when no shard acts on it.
    An invalid payload raises :class:`EventError` or pydantic's ``ValidationError``
    (both ``ValueError``), saying what is wrong.

    >>> event = LifecycleEvent(type="conversation", agent_id="a1", tenant_id="t1",
    ...     actor="a1", timestamp=1.8e9, payload={"counterpart": "a2", "text": ""})
    >>> shard_command(event)
    Traceback (most recent call last):
    ...
    schemas.events.EventError: conversation payload: a conversation needs its text or a \
summary (both are empty)
    >>> hello = {"counterpart": "a2", "text": "hi"}
    >>> route, command = shard_command(event.model_copy(update={"payload": hello}))
    >>> route, type(command).__name__
    ('agent', 'Conversation')
    """
    kind = event.type
    if kind == RULE_CHANGED:
        return "every", RuleChange.model_validate(event.payload)
    if kind == SILENCE_CREATED:
        return "every", Silence.model_validate(event.payload)
    if kind == SILENCE_EXPIRED:
        silence_id = str(event.payload.get("id", ""))
        if not silence_id:
            raise EventError("silence_expired payload: id is missing")
        return "every", SilenceExpiry(silence_id, event.timestamp)
    if kind == RELEASED:
        reason = event.payload.get("reason")
        return "agent", Release(
            event.agent_id, event.timestamp, event.tenant_id, event.actor,
            reason if isinstance(reason, str) else "",
        )  # fmt: skip
    if kind in LIFECYCLE_COMMANDS:
        return "agent", LifecycleCommand(event)
    if kind == QUARANTINE_REQUESTED:
        return "agent", QuarantineOrder.from_event(event)
    if kind == RESTART_REQUESTED:
        return "agent", RestartOrder.from_event(event)
    if kind == REGISTERED:
        return "agent", AgentRegistration.from_event(event)
    if kind == TASK_ASSIGNED:
        return "agent", TaskAssigned.from_event(event)
    if kind == TASK_RELEASED:
        return "agent", TaskReleased.from_event(event)
    if kind in (TASK_COMPLETED, TASK_FAILED):
        return "agent", TaskFinished.from_event(event)
    if kind == WEIGHTS_CHANGED:
        return "every", WeightsChange.from_event(event)
    if kind == CONVERSATION:
        conversation = conversation_of(event)
        return "agent", Conversation(event.agent_id, event.tenant_id, event.timestamp, conversation)
    return None
