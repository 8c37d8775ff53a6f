"""Routes of alerts, silences and incidents across agents."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from agentwatch.identity import Permission
from api import queries
from api.errors import error_responses, unprocessable
from api.identity import LOOPBACK_OPERATOR, actor_of, tenant_filter
from api.params import CategoryFilter, Limit, SeverityFilter, StateFilter, TenantFilter
from api.publisher import PublishError
from api.responses import AlertList, IncidentList
from api.runtime import API_PREFIX, ActorHeader, Operator, Reader, RuntimeDep
from api.scope import in_scope
from api.silences import NewSilence, SilenceBook, SilenceNotFound, StoredSilence
from schemas.events import FLEET
from schemas.models import Silence

router = APIRouter()


@router.get(
    f"{API_PREFIX}/alerts",
    response_model=AlertList,
    responses=error_responses(422, 503),
    tags=["alerts"],
)
def list_alerts(
    runtime: RuntimeDep,
    caller: Reader,
    state: StateFilter = None,
    severity: SeverityFilter = None,
    category: CategoryFilter = None,
    tenant: TenantFilter = None,
    limit: Limit = 100,
) -> AlertList:
    """Every alert (agent + rule) in its current state, most recently changed first;
    the filters apply to the current state."""
    tenant = tenant_filter(caller, tenant)
    with runtime.clients.client() as client:
        found = queries.current_alerts(
            client, runtime.settings.clickhouse_database, limit, tenant_id=tenant, states=state,
            severities=severity, categories=category,
        )  # fmt: skip
    return AlertList(count=len(found), alerts=found)


@router.post(
    f"{API_PREFIX}/silences",
    response_model=Silence,
    status_code=201,
    responses=error_responses(403, 422, 503),
    tags=["alerts"],
)
def create_silence(
    body: NewSilence, runtime: RuntimeDep, caller: Operator, actor: ActorHeader = "api"
):
    """Mute the alerts a silence matches from ``starts_at`` (default now) to ``ends_at``,
    which must be after it (otherwise 422).

    The silence gets an id, is recorded, and is published on agents.control as a
    ``silence_created`` event (agent ``*``, the silence's tenant, so the tenant reads its
    audit row) for the dataflow's alert book. ``created_by`` is the caller's key.
    """
    values = body.model_dump()
    in_scope(caller, Permission.OPERATE, values["tenant_id"], None, status=403)
    actor = actor_of(caller, actor)
    values["starts_at"] = values["starts_at"] or time.time()
    if values["created_by"] not in (None, actor) and caller != LOOPBACK_OPERATOR:
        raise unprocessable(
            f"created_by is who makes the silence, the key: {actor} (leave it out)",
            "body", "created_by",
        )  # fmt: skip
    values["created_by"] = values["created_by"] or actor
    try:
        silence = Silence(id=SilenceBook.new_id(), **values)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None
    try:
        with runtime.clients.client() as client:
            runtime.silences.create(client, silence, actor)
    except PublishError as exc:
        raise HTTPException(503, detail=str(exc)) from None
    return silence


@router.get(
    f"{API_PREFIX}/silences",
    response_model=list[StoredSilence],
    responses=error_responses(422, 503),
    tags=["alerts"],
)
def list_silences(
    runtime: RuntimeDep,
    caller: Reader,
    include_expired: Annotated[
        bool, Query(description="Also list silences whose end has passed.")
    ] = False,
) -> list[StoredSilence]:
    """The silences not expired through DELETE, newest first."""
    with runtime.clients.client() as client:
        found = runtime.silences.list(client, include_expired)
    own = tenant_filter(caller, None)
    return [s for s in found if own is None or s.tenant_id in (own, FLEET)]


@router.delete(
    f"{API_PREFIX}/silences/{{silence_id}}",
    status_code=204,
    responses=error_responses(403, 404, 422, 503),
    tags=["alerts"],
)
def expire_silence(
    silence_id: Annotated[str, Path(min_length=1, max_length=128)],
    runtime: RuntimeDep,
    caller: Operator,
    actor: ActorHeader = "api",
) -> Response:
    """Expire a silence now (published as ``silence_expired``)."""
    try:
        with runtime.clients.client() as client:
            runtime.silences.expire(
                client, silence_id, actor_of(caller, actor),
                allowed=lambda s: in_scope(caller, Permission.OPERATE, s.tenant_id, None),
            )  # fmt: skip
    except SilenceNotFound as exc:
        raise HTTPException(404, detail=str(exc)) from None
    except PublishError as exc:
        raise HTTPException(503, detail=str(exc)) from None
    return Response(status_code=204)


@router.get(
    f"{API_PREFIX}/incidents",
    response_model=IncidentList,
    responses=error_responses(422, 503),
    tags=["alerts"],
)
def list_incidents(
    runtime: RuntimeDep, caller: Reader, tenant: TenantFilter = None, limit: Limit = 100
) -> IncidentList:
    """Coordinated incidents (many agents of a tenant, one kind of threat), newest first."""
    tenant = tenant_filter(caller, tenant)
    with runtime.clients.client() as client:
        found = queries.incidents(client, runtime.settings.clickhouse_database, tenant, limit)
    return IncidentList(count=len(found), incidents=found)
