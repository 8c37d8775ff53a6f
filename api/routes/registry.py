"""The agent registry over HTTP: ``POST /api/v1/agents/register`` and
``GET /api/v1/agents/search``, both answered from the in-memory agent projection
(:mod:`api.projection`), which must have read the registry's topics to their end
first (else 503: the registry is not complete yet, so neither a duplicate nor a
search can be judged).

A registration publishes ``registered`` on ``agents.control`` (the dataflow applies
it) and makes the agent's credential: an API key of role ``agent`` for that agent,
valid ``AGENTWATCH_AGENT_CREDENTIAL_TTL_S``. Without a client-chosen ``agent_id`` the
id is derived from (tenant, name) (:func:`agentwatch.directory.agent_id_for`), so two
API processes racing on one name make one agent.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field, field_validator

from agentwatch.directory import (
    SORT_KEYS,
    AgentSearch,
    AgentView,
    Directory,
    agent_id_for,
    matching,
    ordered,
    orphan_reason,
)
from agentwatch.identity import Permission, Role, authorize
from api.errors import error_responses
from api.identity import actor_of, tenant_filter
from api.publisher import PublishError
from api.runtime import API_PREFIX, ActorHeader, Operator, Reader, Runtime, RuntimeDep
from api.scope import check_free_for
from schemas.events import FLEET, REGISTERED
from schemas.models import (
    AGENT_STATES,
    AgentIdentifier,
    Identifier,
    Label,
    LifecycleEvent,
    Registration,
)

log = logging.getLogger("api.routes.registry")

router = APIRouter(tags=["agents"])

#: URL schemes an agent's endpoint may have.
ENDPOINT_SCHEMES = ("http", "https", "grpc", "ws")


class RegistrationRequest(Registration):
    """The body of ``POST /api/v1/agents/register``: the registration, its tenant, and
    optionally the agent id (default: derived from tenant and name)."""

    tenant_id: Identifier = Field(description="The tenant the agent belongs to.")
    agent_id: AgentIdentifier | None = Field(
        None, description="The agent's id, if the client chooses it (default: derived from "
        "tenant and name, the same for the same pair).",
    )  # fmt: skip

    @field_validator("tenant_id")
    @classmethod
    def _one_tenant(cls, value: str) -> str:
        if value == FLEET:
            raise ValueError(f"an agent belongs to one tenant, not to {FLEET!r}")
        return value

    @field_validator("agent_id")
    @classmethod
    def _one_agent(cls, value: str | None) -> str | None:
        if value == FLEET:
            raise ValueError(f"{FLEET!r} is not an agent id (it names the fleet)")
        return value

    @field_validator("endpoint")
    @classmethod
    def _reachable(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ENDPOINT_SCHEMES or not parts.netloc:
            raise ValueError(
                f"endpoint must be a URL with a host and one of the schemes "
                f"{', '.join(ENDPOINT_SCHEMES)} (e.g. https://agent-7.internal:8443)"
            )
        return value


class Credential(BaseModel):
    """The agent's API key (role ``agent``): its token is shown once, here."""

    key_id: str
    token: str = Field(description="'Authorization: Bearer <token>'; shown only now.")
    expires_at: datetime | None


class RegisteredAgent(BaseModel):
    """The answer to a registration."""

    agent_id: str
    tenant_id: str
    name: str
    state: Literal["registered"] = "registered"
    credential: Credential


class AgentSummary(BaseModel):
    """One agent as the registry knows it."""

    agent_id: str
    tenant_id: str
    name: str | None
    agent_type: str | None
    owner: str | None
    version: str | None
    capabilities: list[str]
    tags: dict[str, str]
    endpoint: str | None
    registered_at: datetime | None = Field(description="Null: it registered itself by beating.")
    lifecycle_state: str | None
    lifecycle_since: datetime | None
    health: float | None
    health_band: str | None
    security_score: float
    quarantined: bool
    orphaned: bool
    orphan_reason: str | None
    cluster: int | None = Field(None, description="Its behaviour cluster (null: not yet).")


class AgentPage(BaseModel):
    """A page of a search: how many agents match, and those of the page."""

    total: int = Field(description="Agents matching the filters (all pages).")
    limit: int
    offset: int
    items: list[AgentSummary]


def _projection(runtime: Runtime):
    """The projection, once complete; else a 503 that says to retry."""
    projection = runtime.projection
    if projection is None or not projection.wait_ready(
        runtime.settings.api_projection_ready_timeout_s
    ):
        raise HTTPException(
            503,
            detail="the agent registry is still being read from the topics (or the broker "
            "does not answer: check AGENTWATCH_BOOTSTRAP_SERVERS); retry in a few seconds",
            headers={"Retry-After": "2"},
        )
    return projection


@router.post(
    f"{API_PREFIX}/agents/register",
    response_model=RegisteredAgent,
    status_code=201,
    responses=error_responses(401, 403, 409, 422, 503),
)
def register_agent(
    body: RegistrationRequest, runtime: RuntimeDep, caller: Operator, actor: ActorHeader = "api"
) -> RegisteredAgent:
    """Register an agent: validated; a name already taken in the tenant, or a tenant at
    its agent limit (``AGENTWATCH_AGENTS_PER_TENANT_LIMIT``), is a 409 saying what to do.
    Publishes ``registered`` and answers the agent id and its credential (an API key of
    role ``agent``, shown once)."""
    reason = authorize(caller, Permission.OPERATE, body.tenant_id, caller.agent_id)
    if reason is not None:
        raise HTTPException(403, detail=reason)
    settings = runtime.settings
    projection = _projection(runtime)
    tenant, name = body.tenant_id, body.name
    agent_id = body.agent_id or agent_id_for(tenant, name)
    who = actor_of(caller, actor)
    registration = Registration.model_validate(
        body.model_dump(exclude={"tenant_id", "agent_id"})
    ).model_dump(mode="json")
    event = LifecycleEvent(
        type=REGISTERED, agent_id=agent_id, tenant_id=tenant, actor=who,
        timestamp=time.time(), payload=registration,
    ).model_dump(mode="json")  # fmt: skip
    with projection.registering:  # judge, publish and record as one: no race in-process
        _judge(projection.directory, tenant, name, agent_id, settings.agents_per_tenant_limit)
        try:  # the registration and its credential's key_created: one wait for the broker
            with runtime.clients.client() as client:
                # (an id the registry does not hold may still be another tenant's: its
                # credential's or heartbeats')
                check_free_for(client, runtime, agent_id, tenant)
                stored, token = runtime.keys.create(
                    client, Role.AGENT, tenant, who, name=f"agent {name}", agent_id=agent_id,
                    ttl_s=settings.agent_credential_ttl_s, along=[(event, agent_id)],
                )  # fmt: skip
        except PublishError as exc:
            raise HTTPException(503, detail=str(exc)) from None
        projection.record(event)
    log.info("agent_registered agent_id=%s tenant_id=%s actor=%s", agent_id, tenant, who)
    expires = None if stored.expires_at is None else datetime.fromtimestamp(stored.expires_at, UTC)
    return RegisteredAgent(
        agent_id=agent_id,
        tenant_id=tenant,
        name=name,
        credential=Credential(key_id=stored.key_id, token=token, expires_at=expires),
    )


def _judge(directory: Directory, tenant: str, name: str, agent_id: str, limit: int) -> None:
    """409 for a name or id taken, or a tenant at its limit."""
    taken = directory.agent_named(tenant, name)
    if taken is not None:
        raise HTTPException(
            409,
            detail=f"tenant {tenant!r} already has an agent named {name!r} ({taken}); "
            "choose another name",
        )
    if agent_id in directory.views:  # the dataflow registers only an agent it does not know
        raise HTTPException(
            409, detail=f"agent id {agent_id!r} is known already; choose another agent_id"
        )
    held = directory.counted(tenant)
    if held >= limit:
        raise HTTPException(
            409,
            detail=f"tenant {tenant!r} has {held}/{limit} agents; decommission agents it no "
            "longer needs or raise AGENTWATCH_AGENTS_PER_TENANT_LIMIT",
        )


TagFilter = Annotated[
    list[Annotated[str, Query(pattern=r"^[A-Za-z0-9_.:/-]+=.*$", max_length=400)]] | None,
    Query(description="key=value; repeat for several (all must match)."),
]


@router.get(
    f"{API_PREFIX}/agents/search",
    response_model=AgentPage,
    responses=error_responses(401, 403, 422, 503),
)
def search_agents(
    runtime: RuntimeDep,
    caller: Reader,
    state: Annotated[
        list[Literal[AGENT_STATES]] | None,  # type: ignore[valid-type]
        Query(description="Lifecycle states (any)."),
    ] = None,
    agent_type: Annotated[
        list[Label] | None, Query(alias="type", description="Agent types (any).")
    ] = None,
    tenant: Annotated[Identifier | None, Query(description="Tenant (default: the key's).")] = None,
    tag: TagFilter = None,
    capability: Annotated[list[Label] | None, Query(description="All must be declared.")] = None,
    min_score: Annotated[float | None, Query(ge=0, le=100)] = None,
    max_score: Annotated[float | None, Query(ge=0, le=100)] = None,
    text: Annotated[
        str | None, Query(min_length=1, max_length=128, description="In name, owner or id.")
    ] = None,
    orphaned: bool | None = None,
    cluster: Annotated[
        int | None,
        Query(ge=0, le=31, description="Behaviour cluster (GET /api/v1/orchestration/clusters)."),
    ] = None,
    sort: Annotated[Literal[SORT_KEYS], Query()] = "name",  # type: ignore[valid-type]
    order: Literal["asc", "desc"] = "asc",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> AgentPage:
    """Agents of the registry that match every filter given, sorted (ties by agent id),
    a page of them and how many match."""
    tenant = tenant_filter(caller, tenant)
    settings = runtime.settings
    projection = _projection(runtime)
    query = AgentSearch(
        tenant_id=tenant,
        states=frozenset(state) if state else None,
        agent_types=frozenset(agent_type) if agent_type else None,
        tags=tuple(tuple(t.split("=", 1)) for t in tag or ()),
        capabilities=tuple(capability or ()),
        min_score=min_score,
        max_score=max_score,
        text=text,
        orphaned=orphaned,
        cluster=cluster,
        sort=sort,
        descending=order == "desc",
    )
    now, horizon = time.time(), settings.agent_orphan_after_s
    initial = settings.security_initial_score

    def why_orphaned(view: AgentView) -> str | None:
        return orphan_reason(view, now, horizon, projection.heartbeat_at(view.agent_id))

    found = matching(projection.views(tenant), query, initial, why_orphaned)
    page = ordered(found, query, initial, limit, offset)
    items = [_summary(v, initial, why_orphaned(v)) for v in page]
    return AgentPage(total=len(found), limit=limit, offset=offset, items=items)


def _summary(view: AgentView, initial_score: float, orphaned: str | None) -> AgentSummary:
    def utc(epoch: float | None) -> datetime | None:
        return None if epoch is None else datetime.fromtimestamp(epoch, UTC)

    return AgentSummary(
        agent_id=view.agent_id,
        tenant_id=view.tenant_id,
        name=view.name or None,
        agent_type=view.agent_type or None,
        owner=view.owner or None,
        version=view.version or None,
        capabilities=list(view.capabilities),
        tags=view.tags,
        endpoint=view.endpoint,
        registered_at=utc(view.registered_at),
        lifecycle_state=view.state,
        lifecycle_since=utc(view.state_since),
        health=view.health,
        health_band=view.health_band,
        security_score=initial_score if view.security_score is None else view.security_score,
        quarantined=view.state == "quarantined",
        orphaned=orphaned is not None,
        orphan_reason=orphaned,
        cluster=view.cluster,
    )
