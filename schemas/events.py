"""Lifecycle events, and the channel each kind may travel on.

Three topics carry :class:`~schemas.models.LifecycleEvent` records, named by what
flows on them (:data:`CHANNELS`):

- ``agents.events``: what agents say about themselves (``conversation``,
  ``task_completed``, ``task_failed``). Anything that runs as an agent may write it.
- ``agents.control``: operators' commands (``rule_changed``, ``silence_created``,
  ``released``, …). Only the API writes it.
- ``agents.state``: what the dataflow derives (``status_changed``). Only the
  dataflow writes it.

An event is accepted only on its own channel (:func:`refusal` says why not),
so an agent cannot release itself from quarantine, delete the threat rules or
forge a status change by writing the agents' topic: the dataflow dead-letters
such an event and the loader does not store it.

A change of the threat rules is a command like any other: the API publishes
it, the dataflow applies it to every shard's rule set, the loader keeps the
``rules`` projection for the API. Fleet-wide events use the agent and tenant id
``*`` (so they share one key, hence one partition, and keep their order).

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
#: ``type`` of an operator's order to restart an agent (payload: ``{"reason": …}``); the
#: dataflow turns it into an ``AgentCommand`` (``restart``) on ``agents.commands``.
RESTART_REQUESTED = "restart_requested"
#: ``type`` of an agent's registration (payload: ``schemas.models.Registration``); the
#: only trigger an unknown agent accepts.
REGISTERED = "registered"
#: ``type`` of an operator's release of an agent from quarantine.
RELEASED = "released"
#: ``type`` of an operator's request to quarantine an agent (payload: ``{"reason": …}``).
QUARANTINE_REQUESTED = "quarantine_requested"
#: ``type`` of an operator's lifecycle commands (payload: ``{"reason": …}``); the dataflow
#: applies them through ``agentwatch.lifecycle.on_command`` (which maps each to its trigger).
MAINTENANCE_REQUESTED = "maintenance_requested"
MAINTENANCE_ENDED = "maintenance_ended"
COMPROMISE_DECLARED = "compromise_declared"
DECOMMISSION_REQUESTED = "decommission_requested"
#: ``type`` of an exchange of an agent with a counterpart (payload: ``ConversationPayload``).
CONVERSATION = "conversation"
#: ``type`` of an agent's report that it finished a task, or that the task failed.
TASK_COMPLETED = "task_completed"
TASK_FAILED = "task_failed"
#: ``type`` of the dataflow's record that an agent's status changed (e.g. to quarantined).
STATUS_CHANGED = "status_changed"
#: ``type`` of the dataflow's warning that an agent missed heartbeats (not yet offline).
HEARTBEAT_LATE = "heartbeat_late"
#: ``type`` of the dataflow's record that an agent's health score moved to another band
#: (payload: ``{"health": 0…100, "band": …}``).
HEALTH_CHANGED = "health_changed"

#: Orchestration (docs/orchestration.md). ``type`` of the API's assignment of a task to an
#: agent (payload: ``schemas.models.TaskAssignment``; key = the chosen agent): the agent's
#: shard accepts it or refuses it (no free capacity) with a ``task_changed``.
TASK_ASSIGNED = "task_assigned"
#: ``type`` of the API's withdrawal of a task from an agent (payload: ``{"task_id": …,
#: "reason": …}``): a load-balancing move or a cancellation; the shard frees the slot.
TASK_RELEASED = "task_released"
#: ``type`` of an operator's change of the assignment weights (payload:
#: ``schemas.models.ScoringWeights``; agent and tenant id ``*``).
WEIGHTS_CHANGED = "weights_changed"
#: ``type`` of the dataflow's record of a task's new status (payload:
#: ``schemas.models.TaskRecord``, the whole task as the shard knows it).
TASK_CHANGED = "task_changed"
#: ``type`` of the dataflow's record that an agent moved to another behaviour cluster
#: (payload: ``{"cluster": int, "distance": float}``).
CLUSTER_CHANGED = "cluster_changed"
#: ``type`` of the dataflow's description of the behaviour clusters (payload:
#: ``{"clusters": [{"cluster", "description", "centroid", "profile", "records"}, …]}``,
#: ``agentwatch.clusters.BehaviourClusters.summary``; agent and tenant id ``*``).
CLUSTER_SUMMARY = "cluster_summary"
#: ``type`` of a shard's report of its online models' rolling accuracy (payload:
#: ``schemas.models.ModelStats``; tenant ``*``, agent id ``shard:<key>``: SHARD_REPORTER).
MODEL_STATS = "model_stats"
#: ``agent_id`` of a shard's own reports (``model_stats``): ``shard:<shard>``. Every shard
#: reports on the same clock tick, so they must not share one id (``*``): rows of one
#: agent, type and time are one row in ``agent_events``.
SHARD_REPORTER = "shard:"

#: ``type`` of an operator's making or revoking of an API key (payload: the key's id,
#: role, tenant, agent, name, times; never its secret nor the secret's hash).
KEY_CREATED = "key_created"
KEY_REVOKED = "key_revoked"
#: ``type`` of a key's expiry brought forward (payload as ``key_created``'s, with the new
#: ``expires_at`` and the one it replaces, ``expires_before``): an agent's older keys when
#: its credential is rotated (they stay good for the overlap window only).
KEY_EXPIRY_CHANGED = "key_expiry_changed"

#: Logical topic of agents' facts, of operators' commands, of the dataflow's derived facts.
AGENT_CHANNEL = "events"
CONTROL_CHANNEL = "control"
STATE_CHANNEL = "state"

#: The event types accepted on each channel (logical topic name → types). A type is
#: listed under one channel only; a new kind of event is added here, and nowhere else
#: decides where it may travel.
CHANNELS: dict[str, frozenset[str]] = {
    AGENT_CHANNEL: frozenset({CONVERSATION, TASK_COMPLETED, TASK_FAILED}),
    CONTROL_CHANNEL: frozenset(
        {
            RULE_CHANGED,
            REGISTERED,
            RESTART_REQUESTED,
            SILENCE_CREATED,
            SILENCE_EXPIRED,
            RELEASED,
            QUARANTINE_REQUESTED,
            MAINTENANCE_REQUESTED,
            MAINTENANCE_ENDED,
            COMPROMISE_DECLARED,
            DECOMMISSION_REQUESTED,
            KEY_CREATED,
            KEY_REVOKED,
            KEY_EXPIRY_CHANGED,
            TASK_ASSIGNED,
            TASK_RELEASED,
            WEIGHTS_CHANGED,
        }
    ),
    STATE_CHANNEL: frozenset(
        {
            STATUS_CHANGED,
            HEARTBEAT_LATE,
            HEALTH_CHANGED,
            TASK_CHANGED,
            CLUSTER_CHANGED,
            MODEL_STATS,
            CLUSTER_SUMMARY,
        }
    ),
}

#: What each channel carries and who writes it, for the reasons of refusals.
_CHANNEL_ROLES = {
    AGENT_CHANNEL: ("an agent's fact", "which agents write"),
    CONTROL_CHANNEL: ("an operator's command", "which only the API writes"),
    STATE_CHANNEL: ("a fact the dataflow derives", "which only the dataflow writes"),
}


class EventError(ValueError):
    """An event that cannot be accepted; the message says why (for the dead-letter topic)."""


def channel_of(event_type: str) -> str | None:
    """The channel an event type belongs on; None for a type no channel accepts.

    >>> channel_of("released"), channel_of("conversation"), channel_of("teleported")
    ('control', 'events', None)
    """
    for channel, types in CHANNELS.items():
        if event_type in types:
            return channel
    return None


def refusal(channel: str, event_type: str) -> str | None:
    """Why an event of ``event_type`` may not arrive on ``channel`` (a logical topic
    name); None when it may.

    >>> refusal("control", "released") is None
    True
    >>> print(refusal("events", "released"))
    'released' is an operator's command; it is accepted only on agents.control, which \
only the API writes
    >>> print(refusal("control", "conversation"))
    'conversation' is an agent's fact; it is accepted only on agents.events, which \
agents write
    >>> print(refusal("events", "teleported"))
    unknown event type 'teleported' on agents.events; accepted there: conversation, \
task_completed, task_failed
    """
    allowed = CHANNELS.get(channel)
    if allowed is None:
        raise ValueError(f"no channel {channel!r}; the channels are {', '.join(CHANNELS)}")
    if event_type in allowed:
        return None
    home = channel_of(event_type)
    if home is None:
        return (
            f"unknown event type {event_type!r} on agents.{channel}; accepted there: "
            f"{', '.join(sorted(allowed))}"
        )
    what, writers = _CHANNEL_ROLES[home]
    return f"{event_type!r} is {what}; it is accepted only on agents.{home}, {writers}"


def check_channel(channel: str, event: LifecycleEvent) -> LifecycleEvent:
    """``event`` if its type may arrive on ``channel``; else :class:`EventError` says why.

    >>> event = LifecycleEvent(type="released", agent_id="a1", tenant_id="t1",
    ...     actor="a1", timestamp=1.8e9)
    >>> check_channel("control", event).type
    'released'
    >>> check_channel("events", event)
    Traceback (most recent call last):
    ...
    schemas.events.EventError: 'released' is an operator's command; it is accepted only on \
agents.control, which only the API writes
    """
    reason = refusal(channel, event.type)
    if reason is not None:
        raise EventError(reason)
    return event


def rule_change_event(change: RuleChange | dict, actor: str, timestamp: float) -> dict:
    """The ``agents.control`` record of a rule change (validated)."""
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


def parse_event(value: bytes | None, channel: str | None = None) -> LifecycleEvent:
    """Validate one message of a lifecycle channel, and, given the ``channel`` it
    arrived on, that its type may travel there; :class:`EventError` says what is wrong."""
    if value is None:
        raise EventError("empty message (no value)")
    try:
        event = LifecycleEvent.model_validate_json(value)
    except ValidationError as exc:
        raise EventError(_first_error(exc)) from None
    return event if channel is None else check_channel(channel, event)


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
