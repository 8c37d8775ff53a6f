"""The REST bridge: agents that cannot speak Kafka post their heartbeats and events.

- ``POST /api/v1/agents/{agent_id}/metrics``: one heartbeat (the fields of
  :class:`schemas.models.Heartbeat`) or a list of up to :data:`MAX_BATCH`; ``agent_id``
  and ``tenant_id`` may be left out (the path and the key say them) and, when given,
  must agree. Each is checked by the dataflow's own parser
  (:func:`schemas.heartbeats.parse_heartbeats`): a heartbeat the dataflow would
  dead-letter is a 422 with its reason here. Accepted ones are written to
  ``agents.metrics`` keyed by the agent id: 202.
- ``POST /api/v1/agents/{agent_id}/events``: an agent's fact (``conversation``,
  ``task_completed``, ``task_failed``: what ``schemas.events.CHANNELS`` allows on
  ``agents.events``), written there: 202. Any other type is a 422 that says where it
  belongs.

An agent's key speaks only for its own agent (403 for another); an operator of the
agent's tenant may post for it too. Remote callers are accepted with an agent key
(:func:`api.routes.credentials.remote_agents_only`).
"""

from __future__ import annotations

import time
from typing import Annotated

import orjson
from fastapi import APIRouter, Body, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from agentwatch.identity import ALL_TENANTS, Permission, Principal, Role
from api.errors import error_responses, unprocessable
from api.identity import needs_any
from api.params import AgentId
from api.publisher import PublishError
from api.relay import METRICS_CHANNEL
from api.routes.credentials import (
    agent_tenant,
    check_agent_scope,
    remote_agents_only,
)
from api.runtime import API_PREFIX, Runtime, RuntimeDep
from schemas.events import (
    AGENT_CHANNEL,
    CHANNELS,
    CONVERSATION,
    EventError,
    conversation_of,
    refusal,
)
from schemas.heartbeats import parse_heartbeats
from schemas.models import AgentIdentifier, EpochSeconds, Heartbeat, Identifier, LifecycleEvent

router = APIRouter(tags=["bridge"])

#: Most heartbeats one request may carry.
MAX_BATCH = 1000

#: The agent itself, or an operator of its tenant.
AgentOrOperator = Annotated[Principal, needs_any(Permission.OPERATE, Permission.REPORT_SELF)]


class BridgeHeartbeat(Heartbeat):
    """A heartbeat posted to the bridge: ``agent_id`` and ``tenant_id`` may be left out
    (the path and the key say them)."""

    agent_id: AgentIdentifier | None = None
    tenant_id: Identifier | None = None


class AgentEvent(BaseModel):
    """An agent's fact posted to the bridge (the envelope's ids come from the path)."""

    model_config = ConfigDict(extra="forbid")

    type: Identifier = Field(
        description="An agent's fact: what agents.events accepts (schemas.events.CHANNELS).",
        json_schema_extra={"enum": sorted(CHANNELS[AGENT_CHANNEL])},
    )
    payload: dict[str, object] = Field(
        default_factory=dict,
        max_length=64,  # (a fact has a handful; 500,000 cost 4.5 s to refuse: a review)
        description="The fact's fields (schemas.events; at most 64).",
    )
    timestamp: EpochSeconds | None = Field(None, description="Default: when it arrives.")


class Accepted(BaseModel):
    """What the bridge wrote."""

    accepted: int = Field(description="Messages written.")
    topic: str


def posting_tenant(
    request: Request, runtime: Runtime, caller: Principal, agent_id: str, said_tenant: str | None
) -> str:
    """The tenant the caller posts for ``agent_id`` as (403/404 when it may not; 422 when
    an operator posts for an agent not known yet without saying its tenant). The OTLP
    receiver (:mod:`api.routes.otlp`) asks it too."""
    remote_agents_only(request, caller, runtime.settings)
    if caller.role is Role.AGENT:
        tenant = check_agent_scope(caller, Permission.REPORT_SELF, agent_id, caller.tenant_id)
    else:
        with runtime.clients.client() as client:
            known = agent_tenant(client, runtime, agent_id)
        if known is None:  # not yet known: the tenant it names (auto-registration decides)
            known = said_tenant or (None if caller.tenant_id == ALL_TENANTS else caller.tenant_id)
            if known is None:
                raise unprocessable(
                    f"agent {agent_id!r} is not known yet: say its tenant_id", "body", "tenant_id"
                )
        tenant = check_agent_scope(caller, Permission.OPERATE, agent_id, known)
    if said_tenant is not None and said_tenant != tenant:
        raise HTTPException(
            403, detail=f"agent {agent_id} belongs to tenant {tenant}, not {said_tenant}"
        )
    return tenant


@router.post(
    f"{API_PREFIX}/agents/{{agent_id}}/metrics",
    response_model=Accepted,
    status_code=202,
    responses=error_responses(404, 422, 503),
)
def post_metrics(
    agent_id: AgentId,
    request: Request,
    runtime: RuntimeDep,
    caller: AgentOrOperator,
    body: Annotated[
        BridgeHeartbeat | list[BridgeHeartbeat],
        Body(description=f"One heartbeat, or a list of up to {MAX_BATCH}."),
    ],
) -> Accepted:
    """Send the agent's heartbeats (for agents that cannot write agents.metrics)."""
    beats = body if isinstance(body, list) else [body]
    if not 1 <= len(beats) <= MAX_BATCH:
        raise unprocessable(f"send 1 to {MAX_BATCH} heartbeats, not {len(beats)}", "body")
    for i, beat in enumerate(beats):
        if beat.agent_id is not None and beat.agent_id != agent_id:
            where = ("body", i, "agent_id") if isinstance(body, list) else ("body", "agent_id")
            raise unprocessable(
                f"agent_id {beat.agent_id!r} is not the agent of the path ({agent_id!r})", *where
            )
    said = {beat.tenant_id for beat in beats if beat.tenant_id is not None}
    if len(said) > 1:
        raise unprocessable(f"one agent, one tenant: the heartbeats say {sorted(said)}", "body")
    tenant = posting_tenant(request, runtime, caller, agent_id, next(iter(said), None))
    values = [
        beat.model_dump(mode="json", exclude_none=True)
        | {"agent_id": agent_id, "tenant_id": tenant}
        for beat in beats
    ]
    _, rejected = parse_heartbeats([orjson.dumps(v) for v in values])
    if rejected:
        i, reason = rejected[0]
        raise (
            unprocessable(reason, "body", i)
            if isinstance(body, list)
            else unprocessable(reason, "body")
        )
    try:
        runtime.relay.send(METRICS_CHANNEL, agent_id, values)
    except PublishError as exc:
        raise HTTPException(503, detail=str(exc)) from None
    return Accepted(accepted=len(values), topic=runtime.settings.topic(METRICS_CHANNEL))


@router.post(
    f"{API_PREFIX}/agents/{{agent_id}}/events",
    response_model=Accepted,
    status_code=202,
    responses=error_responses(404, 422, 503),
)
def post_event(
    agent_id: AgentId,
    body: AgentEvent,
    request: Request,
    runtime: RuntimeDep,
    caller: AgentOrOperator,
) -> Accepted:
    """Send one of the agent's facts: a conversation, a finished or a failed task."""
    reason = refusal(AGENT_CHANNEL, body.type)
    if reason is not None:
        raise unprocessable(reason, "body", "type")
    tenant = posting_tenant(request, runtime, caller, agent_id, None)
    actor = agent_id if caller.role is Role.AGENT else f"key:{caller.key_id}"
    event = LifecycleEvent(
        type=body.type, agent_id=agent_id, tenant_id=tenant, actor=actor,
        timestamp=body.timestamp or time.time(), payload=body.payload,
    )  # fmt: skip
    if body.type == CONVERSATION:
        try:
            conversation_of(event)
        except EventError as exc:
            raise unprocessable(str(exc), "body", "payload") from None
    try:
        runtime.relay.send(AGENT_CHANNEL, agent_id, [event.model_dump(mode="json")])
    except PublishError as exc:
        raise HTTPException(503, detail=str(exc)) from None
    return Accepted(accepted=1, topic=runtime.settings.topic(AGENT_CHANNEL))
