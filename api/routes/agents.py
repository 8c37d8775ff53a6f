"""Routes of one agent: its status, anomalies, threats, alerts and security score (read),
and the operators' requests about it (quarantine, release), published on agents.control."""

from __future__ import annotations

import logging
import time
from functools import partial

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from agentwatch import lifecycle
from agentwatch.identity import ALL_TENANTS, Permission, Principal
from agentwatch.lifecycle import AgentRecord, Refusal, State
from api import queries, status
from api.errors import error_responses, unprocessable
from api.identity import actor_of
from api.params import AgentId, CategoryFilter, Limit, SeverityFilter, StateFilter, TimeRangeDep
from api.publisher import PublishError
from api.responses import (
    AgentSecurity,
    AgentStatus,
    AlertList,
    AnomalyList,
    EpisodeList,
    ThreatList,
)
from api.runtime import API_PREFIX, ActorHeader, Operator, Reader, Runtime, RuntimeDep
from api.scope import (
    agent_rows,
    in_scope,
    own_tenant,
    quarantine_state,
    tenant_of,
    unknown_agent,
)
from api.tenants import tenant_lookup
from schemas.events import (
    COMPROMISE_DECLARED,
    DECOMMISSION_REQUESTED,
    MAINTENANCE_ENDED,
    MAINTENANCE_REQUESTED,
    RESTART_REQUESTED,
)
from schemas.models import EpochSeconds, LifecycleEvent

log = logging.getLogger("api.app")

router = APIRouter()

#: How many of an agent's latest score changes its security view shows.
SECURITY_RECENT_CHANGES = 20


class QuarantineRequest(BaseModel):
    """The body of ``POST /api/v1/agents/{id}/quarantine``."""

    reason: str = Field(min_length=1, max_length=2000, description="Why, in words.")
    until: EpochSeconds | None = Field(
        None,
        description="When the quarantine ends by itself (ISO-8601 with zone, or epoch "
        "seconds; must be in the future); none: until an operator releases the agent.",
    )


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
    """Lifecycle state, health, registration, latest heartbeat, baseline, anomaly score
    (with its reasons) and threats of one agent, from the in-memory projection."""
    return status.agent_status(runtime, caller, agent_id)


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
        read = partial(
            queries.anomalies_between, client, database, agent_id, span.since, span.until,
            span.limit,
        )  # fmt: skip
        found = agent_rows(client, database, caller, agent_id, read)
    return AnomalyList(
        agent_id=agent_id,
        since=span.since,
        until=span.until,
        limit=span.limit,
        count=len(found),
        anomalies=found,
    )


@router.get(
    f"{API_PREFIX}/agents/{{agent_id}}/episodes",
    response_model=EpisodeList,
    responses=error_responses(404, 422, 503),
    tags=["agents"],
)
def agent_episodes(
    agent_id: AgentId, runtime: RuntimeDep, span: TimeRangeDep, caller: Reader
) -> EpisodeList:
    """Anomaly episodes of one agent that began in a time range, newest first: a sustained
    anomaly as one entry with its start, its end (null while open), how many records and
    anomalies it had, its peak score and the metrics that broke."""
    database = runtime.settings.clickhouse_database
    with runtime.clients.client() as client:
        read = partial(
            queries.episodes_between, client, database, agent_id, span.since, span.until,
            span.limit,
        )  # fmt: skip
        found = agent_rows(client, database, caller, agent_id, read)
    return EpisodeList(
        agent_id=agent_id,
        since=span.since,
        until=span.until,
        limit=span.limit,
        count=len(found),
        episodes=found,
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
        read = partial(
            queries.threats_between, client, database, agent_id, span.since, span.until,
            span.limit, severity, category,
        )  # fmt: skip
        found = agent_rows(client, database, caller, agent_id, read)
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
        tenant_id = tenant_of(client, database, agent_id, own_tenant(caller))
        changes = queries.score_changes(client, database, agent_id, limit, tenant_id=tenant_id)
        if tenant_id is None and (not changes or caller.tenant_id != ALL_TENANTS):
            raise HTTPException(404, detail=unknown_agent(agent_id))
        if tenant_id is not None:
            in_scope(caller, Permission.READ, tenant_id, agent_id)
        quarantine = quarantine_state(
            queries.quarantine_events(client, database, agent_id, tenant_id=tenant_id)
        )
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
        read = partial(
            queries.current_alerts, client, database, limit, agent_id=agent_id, states=state
        )
        found = agent_rows(client, database, caller, agent_id, read)
    return AlertList(count=len(found), alerts=found)


def publish_request(
    runtime: Runtime, caller: Principal, agent_id: str, kind: str, said: str, payload: dict
) -> LifecycleEvent:
    """Publish an operator's command about one agent on agents.control (202), after
    checking the caller may operate on its tenant (404 otherwise) and that the lifecycle
    table accepts the command in the agent's state as last recorded (409 with the
    table's reason otherwise). The dataflow applies the command and has the last word:
    a state that changed meanwhile may still refuse it (logged, ``lifecycle_refused``)."""
    lookup = tenant_lookup(runtime)
    tenant_id = lookup.tenants_of([agent_id], own_tenant(caller)).get(agent_id)
    if tenant_id is None:
        raise HTTPException(404, detail=unknown_agent(agent_id))
    in_scope(caller, Permission.OPERATE, tenant_id, agent_id)
    state = lookup.states_of([agent_id]).get(agent_id)
    actor = actor_of(caller, said)
    event = LifecycleEvent(
        type=kind, agent_id=agent_id, tenant_id=tenant_id, actor=actor,
        timestamp=time.time(), payload=payload,
    )  # fmt: skip
    refusal = lifecycle_refusal(agent_id, tenant_id, state, event)
    if refusal is not None:
        raise HTTPException(409, detail=refusal)
    try:
        runtime.publisher.publish(event.model_dump(mode="json"), agent_id)
    except PublishError as exc:
        raise HTTPException(503, detail=str(exc)) from None
    log.info("agent_request type=%s agent_id=%s actor=%s", kind, agent_id, actor)
    return event


_STATES = frozenset(s.value for s in State)


def lifecycle_refusal(
    agent_id: str, tenant_id: str, state: str | None, event: LifecycleEvent
) -> str | None:
    """Why the lifecycle table refuses ``event`` (an operator's command) for an agent in
    ``state`` (None: no recorded change, so active); None when it accepts it. A restart
    is not a transition: it is refused only once the agent is decommissioned.

    >>> event = LifecycleEvent(type="released", agent_id="a1", tenant_id="t1",
    ...     actor="ops", timestamp=1.8e9, payload={"reason": ""})
    >>> print(lifecycle_refusal("a1", "t1", None, event))
    a1 is active; released is accepted only when it is quarantined or compromised
    >>> lifecycle_refusal("a1", "t1", "quarantined", event) is None
    True
    """
    current = State(state) if state in _STATES else State.ACTIVE
    if event.type == RESTART_REQUESTED:
        if current is State.DECOMMISSIONED:
            return f"{agent_id} is decommissioned; there is nothing to restart"
        return None
    record = AgentRecord(agent_id, tenant_id, current)
    result = lifecycle.on_command(record, event)
    return result.reason if isinstance(result, Refusal) else None


@router.post(
    f"{API_PREFIX}/agents/{{agent_id}}/quarantine",
    response_model=LifecycleEvent,
    status_code=202,
    responses=error_responses(403, 404, 409, 422, 503),
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
    if request.until is not None:  # (the table refuses an expiry before the quarantine)
        if request.until <= time.time():
            raise unprocessable("until must be in the future (or absent)", "body", "until")
        payload["until"] = request.until
    return publish_request(runtime, caller, agent_id, "quarantine_requested", actor, payload)


@router.post(
    f"{API_PREFIX}/agents/{{agent_id}}/release",
    response_model=LifecycleEvent,
    status_code=202,
    responses=error_responses(403, 404, 409, 422, 503),
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


class CommandRequest(BaseModel):
    """The body of an operator's lifecycle command about one agent."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000, description="Why, in words.")


#: The operators' lifecycle commands with a route of their own: (path, method, event
#: type, summary). Quarantine and release have theirs above.
LIFECYCLE_ROUTES = (
    ("maintenance", "POST", MAINTENANCE_REQUESTED,
     "Put the agent in maintenance: no remediation, no timeouts, no assignments."),
    ("maintenance", "DELETE", MAINTENANCE_ENDED, "End the agent's maintenance (back to active)."),
    ("compromise", "POST", COMPROMISE_DECLARED,
     "Declare the agent compromised (left only by a release or a decommission)."),
    ("decommission", "POST", DECOMMISSION_REQUESTED,
     "Retire the agent: decommissioning until its tasks drain, then decommissioned."),
    ("restart", "POST", RESTART_REQUESTED,
     "Order the agent's runtime to restart (an AgentCommand on agents.commands)."),
)  # fmt: skip


def _command_route(kind: str, summary: str, with_body: bool):
    def with_reason(
        agent_id: AgentId,
        request: CommandRequest,
        runtime: RuntimeDep,
        caller: Operator,
        actor: ActorHeader = "api",
    ) -> LifecycleEvent:
        payload = {"reason": request.reason}
        return publish_request(runtime, caller, agent_id, kind, actor, payload)

    def without_body(
        agent_id: AgentId, runtime: RuntimeDep, caller: Operator, actor: ActorHeader = "api"
    ) -> LifecycleEvent:
        return publish_request(runtime, caller, agent_id, kind, actor, {"reason": ""})

    route = with_reason if with_body else without_body
    route.__doc__ = (
        f"{summary} Publishes ``{kind}`` on agents.control (202: the command is in the "
        "log; the dataflow applies it). 409 when the lifecycle table refuses it in the "
        "agent's current state, with the reason."
    )
    route.__name__ = kind
    return route


for _path, _method, _kind, _summary in LIFECYCLE_ROUTES:
    router.add_api_route(
        f"{API_PREFIX}/agents/{{agent_id}}/{_path}",
        _command_route(_kind, _summary, with_body=_method == "POST"),
        methods=[_method],
        response_model=LifecycleEvent,
        status_code=202,
        responses=error_responses(403, 404, 409, 422, 503),
        tags=["agents"],
    )
