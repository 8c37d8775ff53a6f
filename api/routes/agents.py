"""Routes of one agent: its status, anomalies, threats, alerts and security score (read),
and the operators' requests about it (quarantine, release), published on agents.control."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from agentwatch.identity import Permission, Principal
from api import queries
from api.errors import error_responses
from api.identity import actor_of
from api.params import AgentId, CategoryFilter, Limit, SeverityFilter, StateFilter, TimeRangeDep
from api.publisher import PublishError
from api.responses import AgentSecurity, AgentStatus, AlertList, AnomalyList, ThreatList
from api.runtime import API_PREFIX, ActorHeader, Operator, Reader, Runtime, RuntimeDep
from api.scope import in_scope, quarantine_state, scope_agent, tenant_of, unknown_agent
from schemas.models import LifecycleEvent

log = logging.getLogger("api.app")

router = APIRouter()

#: How many of an agent's latest threats its status shows.
STATUS_RECENT_THREATS = 5
#: How many of an agent's latest score changes its security view shows.
SECURITY_RECENT_CHANGES = 20


class QuarantineRequest(BaseModel):
    """The body of ``POST /api/v1/agents/{id}/quarantine``."""

    reason: str = Field(min_length=1, max_length=2000, description="Why, in words.")


class ReleaseRequest(BaseModel):
    """The body of ``POST /api/v1/agents/{id}/release`` (optional)."""

    reason: str = Field("", max_length=2000, description="Why, in words.")


@router.get(
    f"{API_PREFIX}/agents/{{agent_id}}/status",
    response_model=AgentStatus,
    responses=error_responses(404, 422, 503),
    tags=["agents"],
)
def agent_status(agent_id: AgentId, runtime: RuntimeDep, caller: Reader) -> AgentStatus:
    """Latest heartbeat, baseline, anomaly score (with its reasons) and threats of one agent."""
    database = runtime.settings.clickhouse_database
    with runtime.clients.client() as client:
        latest = queries.latest_metrics(client, database, agent_id)
        baseline = queries.latest_baseline(client, database, agent_id)
        if latest is None and baseline is None:
            raise HTTPException(404, detail=unknown_agent(agent_id))
        in_scope(caller, Permission.READ, latest[0] if latest else baseline[0], agent_id)
        anomaly = queries.latest_anomaly(client, database, agent_id)
        threats = queries.threats_between(
            client, database, agent_id, None, None, STATUS_RECENT_THREATS
        )
        scores = queries.score_changes(client, database, agent_id, 1)
        quarantine = quarantine_state(queries.quarantine_events(client, database, agent_id))
        lifecycle = queries.lifecycle_state(client, database, agent_id)
    tenant_id = latest[0] if latest else baseline[0]
    metrics = latest[1] if latest else None
    last_heartbeat = metrics.timestamp if metrics else None
    return AgentStatus(
        agent_id=agent_id,
        tenant_id=tenant_id,
        last_heartbeat=last_heartbeat,
        seconds_since_heartbeat=(
            round(time.time() - last_heartbeat.timestamp(), 3) if last_heartbeat else None
        ),
        metrics=metrics,
        baseline=baseline[1] if baseline else None,
        latest_anomaly=anomaly,
        recent_threats=threats,
        security_score=scores[0].score if scores else runtime.settings.security_initial_score,
        quarantined=quarantine["quarantined"],
        lifecycle_state=lifecycle,
    )


@router.get(
    f"{API_PREFIX}/agents/{{agent_id}}/anomalies",
    response_model=AnomalyList,
    responses=error_responses(404, 422, 503),
    tags=["agents"],
)
def agent_anomalies(
    agent_id: AgentId, runtime: RuntimeDep, span: TimeRangeDep, caller: Reader
) -> AnomalyList:
    """Scored heartbeats of one agent in a time range, newest first."""
    database = runtime.settings.clickhouse_database
    with runtime.clients.client() as client:
        scope_agent(client, database, caller, Permission.READ, agent_id)
        found = queries.anomalies_between(
            client, database, agent_id, span.since, span.until, span.limit
        )
        if not found and not queries.agent_is_known(client, database, agent_id):
            raise HTTPException(404, detail=unknown_agent(agent_id))
    return AnomalyList(
        agent_id=agent_id,
        since=span.since,
        until=span.until,
        limit=span.limit,
        count=len(found),
        anomalies=found,
    )


@router.get(
    f"{API_PREFIX}/agents/{{agent_id}}/threats",
    response_model=ThreatList,
    responses=error_responses(404, 422, 503),
    tags=["agents"],
)
def agent_threats(
    agent_id: AgentId,
    runtime: RuntimeDep,
    span: TimeRangeDep,
    caller: Reader,
    severity: SeverityFilter = None,
    category: CategoryFilter = None,
) -> ThreatList:
    """Threats of one agent that began (``first_seen``) in a time range, newest first,
    each with its evidence: the values judged, the baseline, the window."""
    database = runtime.settings.clickhouse_database
    with runtime.clients.client() as client:
        scope_agent(client, database, caller, Permission.READ, agent_id)
        found = queries.threats_between(
            client, database, agent_id, span.since, span.until, span.limit, severity, category
        )
        if not found and not queries.agent_is_known(client, database, agent_id):
            raise HTTPException(404, detail=unknown_agent(agent_id))
    return ThreatList(
        agent_id=agent_id,
        since=span.since,
        until=span.until,
        severity=severity,
        category=category,
        limit=span.limit,
        count=len(found),
        threats=found,
    )


@router.get(
    f"{API_PREFIX}/agents/{{agent_id}}/security",
    response_model=AgentSecurity,
    responses=error_responses(404, 422, 503),
    tags=["agents"],
)
def agent_security(
    agent_id: AgentId,
    runtime: RuntimeDep,
    caller: Reader,
    limit: Limit = SECURITY_RECENT_CHANGES,
) -> AgentSecurity:
    """The agent's security score, the latest changes that made it (which threats
    took what), and whether it is quarantined."""
    database = runtime.settings.clickhouse_database
    with runtime.clients.client() as client:
        changes = queries.score_changes(client, database, agent_id, limit)
        tenant_id = tenant_of(client, database, agent_id)
        if not changes and tenant_id is None:
            raise HTTPException(404, detail=unknown_agent(agent_id))
        in_scope(caller, Permission.READ, tenant_id or changes[0].tenant_id, agent_id)
        quarantine = quarantine_state(queries.quarantine_events(client, database, agent_id))
    deductions: dict[str, float] = {}
    for change in changes:
        if change.delta < 0:
            deductions[change.cause] = deductions.get(change.cause, 0.0) - change.delta
    return AgentSecurity(
        agent_id=agent_id,
        tenant_id=tenant_id,
        score=changes[0].score if changes else runtime.settings.security_initial_score,
        as_of=changes[0].timestamp if changes else None,
        deductions=deductions,
        changes=changes,
        **quarantine,
    )


@router.get(
    f"{API_PREFIX}/agents/{{agent_id}}/alerts",
    response_model=AlertList,
    responses=error_responses(404, 422, 503),
    tags=["agents", "alerts"],
)
def agent_alerts(
    agent_id: AgentId,
    runtime: RuntimeDep,
    caller: Reader,
    state: StateFilter = None,
    limit: Limit = 100,
) -> AlertList:
    """One agent's alerts in their current state, most recently changed first."""
    database = runtime.settings.clickhouse_database
    with runtime.clients.client() as client:
        scope_agent(client, database, caller, Permission.READ, agent_id)
        found = queries.current_alerts(client, database, limit, agent_id=agent_id, states=state)
        if not found and not queries.agent_is_known(client, database, agent_id):
            raise HTTPException(404, detail=unknown_agent(agent_id))
    return AlertList(count=len(found), alerts=found)


def publish_request(
    runtime: Runtime, caller: Principal, agent_id: str, kind: str, said: str, payload: dict
) -> LifecycleEvent:
    with runtime.clients.client() as client:
        tenant_id = tenant_of(client, runtime.settings.clickhouse_database, agent_id)
    if tenant_id is None:
        raise HTTPException(404, detail=unknown_agent(agent_id))
    in_scope(caller, Permission.OPERATE, tenant_id, agent_id)
    actor = actor_of(caller, said)
    event = LifecycleEvent(
        type=kind, agent_id=agent_id, tenant_id=tenant_id, actor=actor,
        timestamp=time.time(), payload=payload,
    )  # fmt: skip
    try:
        runtime.publisher.publish(event.model_dump(mode="json"), agent_id)
    except PublishError as exc:
        raise HTTPException(503, detail=str(exc)) from None
    log.info("agent_request type=%s agent_id=%s actor=%s", kind, agent_id, actor)
    return event


@router.post(
    f"{API_PREFIX}/agents/{{agent_id}}/quarantine",
    response_model=LifecycleEvent,
    status_code=202,
    responses=error_responses(403, 404, 422, 503),
    tags=["agents"],
)
def quarantine_agent(
    agent_id: AgentId,
    request: QuarantineRequest,
    runtime: RuntimeDep,
    caller: Operator,
    actor: ActorHeader = "api",
) -> LifecycleEvent:
    """Ask for the agent to be quarantined: publishes a ``quarantine_requested`` command
    on agents.control (202: the request is in the log). The dataflow carries it out: a
    ``status_changed`` to quarantined and a quarantine order on agents.commands."""
    payload = {"reason": request.reason}
    return publish_request(runtime, caller, agent_id, "quarantine_requested", actor, payload)


@router.post(
    f"{API_PREFIX}/agents/{{agent_id}}/release",
    response_model=LifecycleEvent,
    status_code=202,
    responses=error_responses(403, 404, 422, 503),
    tags=["agents"],
)
def release_agent(
    agent_id: AgentId,
    runtime: RuntimeDep,
    caller: Operator,
    request: ReleaseRequest | None = None,
    actor: ActorHeader = "api",
) -> LifecycleEvent:
    """Release the agent from quarantine: publishes a ``released`` command on
    agents.control."""
    payload = {"reason": request.reason if request is not None else ""}
    return publish_request(runtime, caller, agent_id, "released", actor, payload)
