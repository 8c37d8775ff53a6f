"""Events on ``agents.events`` that change how the fleet is watched.

A change of the threat rules is an event like any other change: the API
publishes it, the dataflow applies it to every shard's rule set, the loader
keeps the ``rules`` projection for the API. Fleet-wide events use the agent
and tenant id ``*`` (so they share one key, hence one partition, and keep
their order).

>>> import orjson
>>> event = rule_change_event({"action": "disable", "name": "excessive_errors"},
...                           actor="ops-1", timestamp=1_795_608_000.0)
>>> event["type"], event["agent_id"], event["payload"]["name"]
('rule_changed', '*', 'excessive_errors')
>>> parsed = parse_rule_change(orjson.dumps(event))
>>> parsed.action, parsed.target
('disable', 'excessive_errors')
"""

from __future__ import annotations

from pydantic import ValidationError

from schemas.models import ConversationPayload, LifecycleEvent, RuleChange

#: Agent and tenant id of events about the whole fleet.
FLEET = "*"
#: ``type`` of an event that adds, updates, enables, disables or deletes a threat rule.
RULE_CHANGED = "rule_changed"
#: ``type`` of the events of silences (payload: the ``Silence``; or ``{"id": …}``).
SILENCE_CREATED = "silence_created"
SILENCE_EXPIRED = "silence_expired"
#: ``type`` of an operator's release of an agent from quarantine.
RELEASED = "released"
#: ``type`` of an operator's request to quarantine an agent (payload: ``{"reason": …}``).
QUARANTINE_REQUESTED = "quarantine_requested"
#: ``type`` of an exchange of an agent with a counterpart (payload: ``ConversationPayload``).
CONVERSATION = "conversation"


class EventError(ValueError):
    """An event that cannot be accepted; the message says why (for the dead-letter topic)."""


def rule_change_event(change: RuleChange | dict, actor: str, timestamp: float) -> dict:
    """The ``agents.events`` record of a rule change (validated)."""
    if isinstance(change, dict):
        change = RuleChange.model_validate(change)
    event = LifecycleEvent(
        type=RULE_CHANGED,
        agent_id=FLEET,
        tenant_id=FLEET,
        actor=actor,
        timestamp=timestamp,
        payload=change.model_dump(mode="json", exclude_none=True),
    )
    return event.model_dump(mode="json")


def parse_event(value: bytes | None) -> LifecycleEvent:
    """Validate one ``agents.events`` message; :class:`EventError` says what is wrong."""
    if value is None:
        raise EventError("empty message (no value)")
    try:
        return LifecycleEvent.model_validate_json(value)
    except ValidationError as exc:
        raise EventError(_first_error(exc)) from None


def parse_rule_change(value: bytes | None) -> RuleChange | None:
    """The rule change an event carries, None for events of other types."""
    event = parse_event(value)
    if event.type != RULE_CHANGED:
        return None
    try:
        return RuleChange.model_validate(event.payload)
    except ValidationError as exc:
        raise EventError(f"rule_changed payload: {_first_error(exc)}") from None


def conversation_event(
    agent_id: str,
    tenant_id: str,
    conversation: ConversationPayload | dict,
    timestamp: float,
    actor: str | None = None,
) -> dict:
    """The ``agents.events`` record of an agent's conversation (validated); the actor
    defaults to the agent itself.

    >>> event = conversation_event("a1", "t1", {"counterpart": "a2", "text": "hi"}, 1.8e9)
    >>> event["type"], event["actor"], event["payload"]["tokens_in"]
    ('conversation', 'a1', 0)
    """
    if isinstance(conversation, dict):
        conversation = ConversationPayload.model_validate(conversation)
    event = LifecycleEvent(
        type=CONVERSATION,
        agent_id=agent_id,
        tenant_id=tenant_id,
        actor=actor or agent_id,
        timestamp=timestamp,
        payload=conversation.model_dump(mode="json"),
    )
    return event.model_dump(mode="json")


def conversation_of(event: LifecycleEvent) -> ConversationPayload:
    """The conversation a ``conversation`` event carries; :class:`EventError` says what
    is wrong with it.

    >>> event = LifecycleEvent(type="conversation", agent_id="a1", tenant_id="t1",
    ...     actor="a1", timestamp=1.8e9, payload={"counterpart": "a2"})
    >>> conversation_of(event)
    Traceback (most recent call last):
    ...
    schemas.events.EventError: conversation payload: a conversation needs its text or a \
summary (both are empty)
    """
    if event.agent_id == FLEET:
        raise EventError(
            f"conversation payload: a conversation belongs to one agent, not to {FLEET!r}: "
            "set agent_id to the agent that talked"
        )
    try:
        return ConversationPayload.model_validate(event.payload)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = "".join(f"{part}: " for part in error["loc"][:1])
        message = error["msg"].removeprefix("Value error, ")
        raise EventError(f"conversation payload: {where}{message}") from None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "message"
    return f"{where}: {error['msg']}"
