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

from schemas.models import LifecycleEvent, RuleChange

#: Agent and tenant id of events about the whole fleet.
FLEET = "*"
#: ``type`` of an event that adds, updates, enables, disables or deletes a threat rule.
RULE_CHANGED = "rule_changed"
#: ``type`` of the events of silences (payload: the ``Silence``; or ``{"id": …}``).
SILENCE_CREATED = "silence_created"
SILENCE_EXPIRED = "silence_expired"
#: ``type`` of an operator's release of an agent from quarantine.
RELEASED = "released"


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


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "message"
    return f"{where}: {error['msg']}"
