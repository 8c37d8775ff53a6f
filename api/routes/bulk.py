"""``POST /api/v1/agents/bulk-operation``: one operator's command for up to 10,000 agents.

The same commands as the single-agent routes (quarantine, release, maintenance and
its end, decommission, restart), as the same ``agents.control`` events, one per
agent: the answer says, per id and in the order given, whether its event was
published (``accepted``) or why not (``refused``). An id the caller may not act on
(another tenant's agent) is refused exactly as an unknown one, so a bulk request
cannot probe which agents exist elsewhere; one whose last recorded lifecycle state
does not take the command (a release of an agent that is not quarantined) is refused
with the lifecycle table's reason, as the single routes answer 409.

How it stays fast for 10,000 ids: the tenants of all ids come from one call of a
:class:`api.tenants.TenantLookup` (one ClickHouse query, or the in-memory
projection when the runtime has one), and the events go to the broker as one batch
with one flush (:meth:`api.publisher.EventPublisher.publish_many`).

Accepted means published, not applied: the dataflow applies each event through the
lifecycle table (``agentwatch.lifecycle``) in the agent's state at that moment, which
may have changed since it was last recorded; a refusal then is dead-lettered with its
reason, as for the single routes.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, HTTPException
from fastapi.responses import Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from agentwatch.identity import ALL_TENANTS, Permission, authorize
from api.errors import error_responses, unprocessable
from api.identity import actor_of
from api.routes.agents import lifecycle_refusal
from api.runtime import API_PREFIX, ActorHeader, Operator, RuntimeDep
from api.tenants import tenant_lookup
from schemas.events import (
    DECOMMISSION_REQUESTED,
    FLEET,
    MAINTENANCE_ENDED,
    MAINTENANCE_REQUESTED,
    QUARANTINE_REQUESTED,
    RELEASED,
    RESTART_REQUESTED,
)
from schemas.models import EpochSeconds, Identifier, LifecycleEvent

log = logging.getLogger("api.bulk")

router = APIRouter(tags=["agents"])

#: Most agents one bulk request may name (the seed's figure).
BULK_MAX_AGENTS = 10_000

#: The event each operation publishes (the single-agent routes publish the same).
EVENT_TYPES: dict[str, str] = {
    "quarantine": QUARANTINE_REQUESTED,
    "release": RELEASED,
    "maintenance": MAINTENANCE_REQUESTED,
    "end_maintenance": MAINTENANCE_ENDED,
    "decommission": DECOMMISSION_REQUESTED,
    "restart": RESTART_REQUESTED,
}

#: What ``accepted`` means (said in every answer).
ACCEPTED_MEANS = (
    "accepted: the command is published on agents.control; the dataflow applies it through "
    "the lifecycle table in the agent's state of that moment, which may still refuse it if "
    "the state changed since it was last recorded: see the agent's status and the "
    "dead-letter topic"
)


def _unique(agent_ids: list[str]) -> list[str]:
    """The ids, if none repeats (a repeated id would be commanded twice)."""
    if len(set(agent_ids)) != len(agent_ids):
        seen: set[str] = set()
        repeated = next(a for a in agent_ids if a in seen or seen.add(a))
        raise ValueError(f"{repeated!r} is named more than once; name each agent once")
    return agent_ids


AgentIds = Annotated[
    list[Identifier],
    Field(
        min_length=1,
        max_length=BULK_MAX_AGENTS,
        json_schema_extra={"uniqueItems": True},
        description=f"The agents, each once (1 to {BULK_MAX_AGENTS:,}); results keep this order.",
    ),
    AfterValidator(_unique),
]
Reason = Annotated[str, Field(min_length=1, max_length=2000, description="Why, in words.")]
OptionalReason = Annotated[str, Field(max_length=2000, description="Why, in words.")]


class _Bulk(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_ids: AgentIds


class BulkQuarantine(_Bulk):
    """Quarantine the agents (``quarantine_requested``), until an expiry if given."""

    operation: Literal["quarantine"]
    reason: Reason
    until: EpochSeconds | None = Field(
        None,
        description="When the quarantine ends by itself (epoch seconds or ISO-8601); "
        "without it, only a release ends it.",
    )


class BulkRelease(_Bulk):
    """Release the agents from quarantine (``released``)."""

    operation: Literal["release"]
    reason: OptionalReason = ""


class BulkMaintenance(_Bulk):
    """Put the agents in maintenance (``maintenance_requested``)."""

    operation: Literal["maintenance"]
    reason: Reason


class BulkEndMaintenance(_Bulk):
    """End the agents' maintenance (``maintenance_ended``)."""

    operation: Literal["end_maintenance"]
    reason: OptionalReason = ""


class BulkDecommission(_Bulk):
    """Decommission the agents (``decommission_requested``): drain, then decommissioned."""

    operation: Literal["decommission"]
    reason: Reason


class BulkRestart(_Bulk):
    """Order the agents to restart (``restart_requested``)."""

    operation: Literal["restart"]
    reason: Reason


BulkOperation = Annotated[
    BulkQuarantine | BulkRelease | BulkMaintenance | BulkEndMaintenance | BulkDecommission
    | BulkRestart,
    Field(discriminator="operation"),
]  # fmt: skip


class BulkItem(BaseModel):
    """What became of one agent of the request."""

    agent_id: str
    status: Literal["accepted", "refused"]
    reason: str | None = Field(None, description="Why it was refused (None when accepted).")


class BulkTotals(BaseModel):
    requested: int
    successful: int = Field(description="Accepted: published on agents.control.")
    failed: int = Field(
        description="Refused: unknown agent, refused by the lifecycle table, or not published."
    )


class BulkOperationResult(BaseModel):
    """The answer to a bulk operation: one result per agent, in the order of the request."""

    operation: str
    event_type: str = Field(description="The agents.control event published per agent.")
    actor: str = Field(description="Who the events are recorded as (the audit trail's actor).")
    totals: BulkTotals
    results: list[BulkItem]
    note: str = Field(ACCEPTED_MEANS, description="What accepted means.")


def _unknown(agent_id: str) -> str:
    return f"agent {agent_id!r} is unknown: no registration, heartbeat or baseline stored for it"


@router.post(
    f"{API_PREFIX}/agents/bulk-operation",
    response_model=BulkOperationResult,
    responses=error_responses(403, 422, 503),
)
def bulk_operation(
    request: BulkOperation, runtime: RuntimeDep, caller: Operator, actor: ActorHeader = "api"
) -> Response:
    """Quarantine, release, put in or out of maintenance, decommission or restart up to
    10,000 agents at once: one ``agents.control`` event per agent, as the single-agent
    routes publish them, with one result per id in the order given.

    An id is refused when the agent is unknown, or when it belongs to a tenant the key
    may not act on (said the same way: unknown), or when the lifecycle table refuses
    the command in the agent's last recorded state (its reason, as the single routes'
    409). **accepted means published**: the dataflow applies each event in the agent's
    state of that moment and may still refuse it; the answer's ``note`` says so.

    A reason is required for quarantine, maintenance, decommission and restart; ``until``
    (quarantine only) is its expiry, which must be in the future (otherwise 422). 503
    when the broker took none of them.
    """
    started = time.perf_counter()
    until = request.until if isinstance(request, BulkQuarantine) else None
    if until is not None and until <= time.time():
        raise unprocessable(
            f"until={datetime.fromtimestamp(until, UTC).isoformat()} has passed: a "
            "quarantine's expiry must be in the future; give a later one, or none",
            "body", "until",
        )  # fmt: skip
    ids = request.agent_ids
    lookup = tenant_lookup(runtime)
    tenants = lookup.tenants_of(ids, None if caller.tenant_id == ALL_TENANTS else caller.tenant_id)
    who = actor_of(caller, actor)
    kind = EVENT_TYPES[request.operation]
    payload: dict[str, object] = {"reason": request.reason}
    if until is not None:
        payload["until"] = until
    command = LifecycleEvent(
        type=kind, agent_id=FLEET, tenant_id=FLEET, actor=who, timestamp=time.time(),
        payload=payload,
    )  # fmt: skip
    template = command.model_dump(mode="json")
    refused: dict[str, str] = {}
    allowed: list[tuple[str, str]] = []
    for agent_id in ids:
        tenant_id = tenants.get(agent_id)
        if (
            tenant_id is None
            or agent_id == FLEET
            or authorize(caller, Permission.OPERATE, tenant_id) is not None
        ):
            refused[agent_id] = _unknown(agent_id)
        else:
            allowed.append((agent_id, tenant_id))
    states = lookup.states_of([agent_id for agent_id, _ in allowed]) if allowed else {}
    events: list[tuple[dict, str]] = []
    takes: dict[str | None, bool] = {}  # per state: does the table take the command?
    for agent_id, tenant_id in allowed:
        state = states.get(agent_id)
        if state not in takes:
            takes[state] = lifecycle_refusal(agent_id, tenant_id, state, command) is None
        if not takes[state]:  # the reason names the agent: asked again for each
            refused[agent_id] = lifecycle_refusal(agent_id, tenant_id, state, command)
            continue
        events.append(({**template, "agent_id": agent_id, "tenant_id": tenant_id}, agent_id))
    if events:
        outcome = runtime.publisher.publish_many(events)
        failures = {
            key: f"not published ({reason}); retry this agent"
            for (_, key), reason in zip(events, outcome, strict=True)
            if reason is not None
        }
        if len(failures) == len(events):
            first = next(iter(failures.values()))
            raise HTTPException(
                503,
                detail=f"no command was published to agents.control: {first}; check that the "
                "broker runs (AGENTWATCH_BOOTSTRAP_SERVERS) and retry",
            )
        refused.update(failures)
    accepted = {"status": "accepted", "reason": None}
    results = [
        {"agent_id": a, "status": "refused", "reason": refused[a]}
        if a in refused
        else {"agent_id": a, **accepted}
        for a in ids
    ]
    failed = len(refused)
    log.info(
        "bulk_operation operation=%s type=%s actor=%s requested=%d accepted=%d refused=%d "
        "seconds=%.3f",
        request.operation, kind, who, len(ids), len(ids) - failed, failed,
        time.perf_counter() - started,
    )  # fmt: skip
    # Serialised here (orjson, ~10x faster than validating 10,000 BulkItem models again);
    # the shape is BulkOperationResult's, which tests/test_bulk.py checks.
    body = {
        "operation": request.operation,
        "event_type": kind,
        "actor": who,
        "totals": {"requested": len(ids), "successful": len(ids) - failed, "failed": failed},
        "results": results,
        "note": ACCEPTED_MEANS,
    }
    return Response(orjson.dumps(body), media_type="application/json")
