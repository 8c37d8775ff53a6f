"""The HTTP API: agent status, anomalies, threats, alerts, security scores and incidents
from ClickHouse; silences and quarantine requests published on ``agents.control``; read-only
SQL, health, Prometheus.

``create_app(settings)`` builds the FastAPI app. Its lifespan opens
ClickHouse (in the embedded profile this process is the one that owns the
chDB directory), creates the schema, and runs the ClickHouse loader in a
background thread, next to the webhook deliverer (:mod:`sinks.webhooks`) when
webhooks are configured; on shutdown (SIGTERM, Ctrl-C) it stops both (the
loader flushes what it holds).

Endpoints are plain ``def`` functions: clickhouse-connect and the Kafka client
block, so FastAPI runs them in its thread pool and the event loop stays free.

>>> app = create_app(Settings(), client=None, run_loader=False)
>>> paths = {r.path for r in app.routes}
>>> {"/api/v1/agents/{agent_id}/status", "/api/v1/system/health", "/docs"} <= paths
True
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from agentwatch.identity import ALL_TENANTS, Permission, Principal, authorize
from agentwatch.rules import DEFAULT_RULE_NAMES
from agentwatch.secrets import redact
from agentwatch.settings import Settings
from api import audit, docs, keys, prometheus, queries, sql, status
from api.access import LoopbackMutations
from api.errors import error_responses, unprocessable
from api.identity import actor_of, document_key_errors, tenant_filter
from api.methods import AllowedMethods
from api.params import (
    AgentId,
    CategoryFilter,
    Limit,
    SeverityFilter,
    StateFilter,
    TenantFilter,
    TimeRangeDep,
)
from api.publisher import PublishError
from api.responses import (
    AgentSecurity,
    AgentStatus,
    AlertList,
    AnomalyList,
    IncidentList,
    SystemHealth,
    ThreatList,
)
from api.routes import registry
from api.rules import (
    RuleChangeError,
    RuleExists,
    RuleNeedsConfirmation,
    RuleNotFound,
)
from api.runtime import (
    API_PREFIX,
    ActorHeader,
    FleetOperator,
    Operator,
    Reader,
    Runtime,
    RuntimeDep,
    SqlAnalyst,
    get_runtime,
)
from api.silences import NewSilence, SilenceBook, SilenceNotFound, StoredSilence
from schemas.events import FLEET
from schemas.models import LifecycleEvent, RuleChange, Silence, ThreatRuleSpec

log = logging.getLogger(__name__)

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


#: The name of one of the seed's default rules.
DefaultRuleName = Literal[DEFAULT_RULE_NAMES]  # type: ignore[valid-type]


class RestoreRequest(BaseModel):
    """The body of ``POST /api/v1/rules/restore`` (optional: without it, every default rule)."""

    model_config = ConfigDict(extra="forbid")

    names: list[DefaultRuleName] | None = Field(
        None, min_length=1, description="The default rules to restore (default: all of them)."
    )


class RestoredRules(BaseModel):
    """The answer to a restore: which rules changed, and the rule set now in force."""

    restored: list[str] = Field(description="Rules put back (empty: all were as shipped).")
    rules: list[ThreatRuleSpec]


Confirm = Annotated[
    bool,
    Query(
        description="Confirm a change that leaves a category of the default rules "
        "(SECURITY, PERFORMANCE) without any enabled rule."
    ),
]


def create_app(
    settings: Settings, client: Client | None = None, run_loader: bool = True
) -> FastAPI:
    """The agentwatch API.

    ``client``: a clickhouse-connect client to read with, shared by all
    requests and left open (default: a pool of clients on
    ``settings.clickhouse_dsn``, one per concurrent request, closed on shutdown).
    ``run_loader``: run the Kafka → ClickHouse loader in this process (the
    embedded profile does).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await run_in_threadpool(Runtime.start, settings, client, run_loader)
        app.state.runtime = runtime
        try:
            yield
        finally:
            await run_in_threadpool(runtime.stop)

    app = FastAPI(
        title="agentwatch",
        summary="Surveillance of a fleet of AI agents: status, anomalies, pipeline health.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from api.docs, with local assets
        redoc_url=None,
    )
    app.add_middleware(LoopbackMutations, settings=settings)
    app.add_middleware(AllowedMethods, router=app.router)
    docs.install(app)
    audit.install(app, settings)
    app.exception_handler(RequestValidationError)(_validation_error)
    app.exception_handler(ClickHouseError)(_clickhouse_error)
    app.exception_handler(StarletteHTTPException)(_http_error)

    @app.get(
        f"{API_PREFIX}/agents/{{agent_id}}/status",
        response_model=AgentStatus,
        responses=error_responses(404, 422, 503),
        tags=["agents"],
    )
    def agent_status(agent_id: AgentId, runtime: RuntimeDep, caller: Reader) -> AgentStatus:
        """Lifecycle state, health, registration, latest heartbeat, baseline, anomaly score
        (with its reasons) and threats of one agent, from the in-memory projection."""
        return status.agent_status(runtime, caller, agent_id)

    @app.get(
        f"{API_PREFIX}/agents/{{agent_id}}/anomalies",
        response_model=AnomalyList,
        responses=error_responses(404, 422, 503),
        tags=["agents"],
    )
    def agent_anomalies(
        agent_id: AgentId, runtime: RuntimeDep, span: TimeRangeDep, caller: Reader
    ) -> AnomalyList:
        """Scored heartbeats of one agent in a time range, newest first."""
        database = settings.clickhouse_database
        with runtime.clients.client() as client:
            scope_agent(client, database, caller, Permission.READ, agent_id)
            found = queries.anomalies_between(
                client, database, agent_id, span.since, span.until, span.limit
            )
            if not found and not queries.agent_is_known(client, database, agent_id):
                raise HTTPException(404, detail=_unknown_agent(agent_id))
        return AnomalyList(
            agent_id=agent_id,
            since=span.since,
            until=span.until,
            limit=span.limit,
            count=len(found),
            anomalies=found,
        )

    @app.get(
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
        database = settings.clickhouse_database
        with runtime.clients.client() as client:
            scope_agent(client, database, caller, Permission.READ, agent_id)
            found = queries.threats_between(
                client, database, agent_id, span.since, span.until, span.limit, severity, category
            )
            if not found and not queries.agent_is_known(client, database, agent_id):
                raise HTTPException(404, detail=_unknown_agent(agent_id))
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

    @app.get(
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
                client, settings.clickhouse_database, limit, tenant_id=tenant, states=state,
                severities=severity, categories=category,
            )  # fmt: skip
        return AlertList(count=len(found), alerts=found)

    @app.get(
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
        database = settings.clickhouse_database
        with runtime.clients.client() as client:
            scope_agent(client, database, caller, Permission.READ, agent_id)
            found = queries.current_alerts(client, database, limit, agent_id=agent_id, states=state)
            if not found and not queries.agent_is_known(client, database, agent_id):
                raise HTTPException(404, detail=_unknown_agent(agent_id))
        return AlertList(count=len(found), alerts=found)

    @app.get(
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
        database = settings.clickhouse_database
        with runtime.clients.client() as client:
            changes = queries.score_changes(client, database, agent_id, limit)
            tenant_id = _tenant_of(client, database, agent_id)
            if not changes and tenant_id is None:
                raise HTTPException(404, detail=_unknown_agent(agent_id))
            in_scope(caller, Permission.READ, tenant_id or changes[0].tenant_id, agent_id)
            quarantine = quarantine_state(queries.quarantine_events(client, database, agent_id))
        deductions: dict[str, float] = {}
        for change in changes:
            if change.delta < 0:
                deductions[change.cause] = deductions.get(change.cause, 0.0) - change.delta
        return AgentSecurity(
            agent_id=agent_id,
            tenant_id=tenant_id,
            score=changes[0].score if changes else settings.security_initial_score,
            as_of=changes[0].timestamp if changes else None,
            deductions=deductions,
            changes=changes,
            **quarantine,
        )

    def publish_request(
        runtime: Runtime, caller: Principal, agent_id: str, kind: str, said: str, payload: dict
    ) -> LifecycleEvent:
        with runtime.clients.client() as client:
            tenant_id = _tenant_of(client, settings.clickhouse_database, agent_id)
        if tenant_id is None:
            raise HTTPException(404, detail=_unknown_agent(agent_id))
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

    @app.post(
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

    @app.post(
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

    @app.post(
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
        ``silence_created`` event (agent and tenant ``*``) for the dataflow's alert book.
        """
        values = body.model_dump()
        in_scope(caller, Permission.OPERATE, values["tenant_id"], None, status=403)
        actor = actor_of(caller, actor)
        values["starts_at"] = values["starts_at"] or time.time()
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

    @app.get(
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

    @app.delete(
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

    @app.get(
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
            found = queries.incidents(client, settings.clickhouse_database, tenant, limit)
        return IncidentList(count=len(found), incidents=found)

    @app.post(
        f"{API_PREFIX}/sql",
        response_model=sql.SqlAnswer,
        responses={
            200: {"content": {"text/csv": {}, "text/tab-separated-values": {}}},
            **error_responses(400, 403, 422, 429, 503, 504),
        },
        tags=["sql"],
    )
    def run_sql(request: sql.SqlRequest, runtime: RuntimeDep, caller: SqlAnalyst) -> Response:
        """Run one read-only query on the ClickHouse data; answer in json, csv or tsv.

        Off unless ``AGENTWATCH_API_SQL_ENABLED``; once the API has authentication, for
        the analyst role only. Allowed: one SELECT (WITH, JOIN, subqueries, UNION) on the
        project's tables with allowlisted functions, SHOW TABLES, DESCRIBE <table>; no
        table functions, ``system.*``, other databases, SETTINGS, FORMAT or INTO OUTFILE
        (docs/sql.md). A refusal is a 403 that says what and why; a query that cannot be
        parsed, or that hits a limit (memory, threads, rows and bytes read, result size,
        time: ``AGENTWATCH_API_SQL_MAX_*``), a 400 that names it; 429 when
        ``AGENTWATCH_API_SQL_MAX_CONCURRENT_QUERIES`` queries run already.
        """
        if runtime.sql_sandbox is None:
            raise HTTPException(
                403,
                detail="SQL through the API is switched off (AGENTWATCH_API_SQL_ENABLED=false); "
                "ask the operator, or stop the stack and run `agentwatch sql` on its data",
            )
        try:
            result = runtime.sql_sandbox.run(request.query)
        except sql.SqlRefused as refused:
            log.info("sql_refused status=%d query=%r", refused.status, request.query[:200])
            headers = {"Retry-After": "1"} if refused.status == 429 else None
            raise HTTPException(refused.status, detail=refused.message, headers=headers) from None
        log.info(
            "sql_query rows=%d elapsed_s=%.3f query=%r",
            len(result.rows),
            result.elapsed_s,
            request.query[:200],
        )
        body = sql.render(result, request.format)
        return Response(body, media_type=sql.MEDIA_TYPES[request.format])

    def change_rules(
        runtime: Runtime, change: RuleChange, actor: str, confirm: bool = False
    ) -> ThreatRuleSpec | None:
        try:
            with runtime.clients.client() as client:
                return runtime.rule_book.apply(client, change, actor, confirm)
        except RuleNotFound as exc:
            raise HTTPException(404, detail=str(exc)) from None
        except (RuleExists, RuleNeedsConfirmation) as exc:
            raise HTTPException(409, detail=str(exc)) from None
        except RuleChangeError as exc:  # fits the schema, not the rule set
            loc = ("body",) if change.rule is not None else ("path", "name")
            raise unprocessable(str(exc), *loc) from None
        except PublishError as exc:
            raise HTTPException(503, detail=str(exc)) from None

    @app.get(
        f"{API_PREFIX}/rules",
        response_model=list[ThreatRuleSpec],
        responses=error_responses(503),
        tags=["rules"],
    )
    def list_rules(runtime: RuntimeDep, caller: Reader) -> list[ThreatRuleSpec]:
        """The threat rules in force: the seed's defaults and every change made since."""
        with runtime.clients.client() as client:
            return runtime.rule_book.rules(client)

    @app.post(
        f"{API_PREFIX}/rules", response_model=ThreatRuleSpec, status_code=201, tags=["rules"],
        responses=error_responses(403, 409, 422, 503),
    )  # fmt: skip
    def add_rule(
        rule: ThreatRuleSpec, runtime: RuntimeDep, caller: FleetOperator, actor: ActorHeader = "api"
    ):
        """Add a rule; the dataflow applies it from the next heartbeat on, without a restart.
        Rules apply to every tenant: changing them takes a key of every tenant."""
        return change_rules(runtime, RuleChange(action="add", rule=rule), actor_of(caller, actor))

    @app.put(
        f"{API_PREFIX}/rules/{{name}}", response_model=ThreatRuleSpec, tags=["rules"],
        responses=error_responses(403, 404, 409, 422, 503),
    )  # fmt: skip
    def update_rule(
        name: str,
        rule: ThreatRuleSpec,
        runtime: RuntimeDep,
        caller: FleetOperator,
        actor: ActorHeader = "api",
        confirm: Confirm = False,
    ):
        """Replace a rule (its state starts afresh); the body names the rule of the path
        (otherwise 422)."""
        if rule.name != name:
            message = f"the body names rule {rule.name!r}, the path {name!r}"
            raise unprocessable(message, "body", "name")
        change = RuleChange(action="update", rule=rule)
        return change_rules(runtime, change, actor_of(caller, actor), confirm)

    @app.post(
        f"{API_PREFIX}/rules/restore",
        response_model=RestoredRules,
        tags=["rules"],
        responses=error_responses(403, 422, 503),
    )
    def restore_rules(
        runtime: RuntimeDep,
        caller: FleetOperator,
        request: RestoreRequest | None = None,
        actor: ActorHeader = "api",
    ) -> RestoredRules:
        """Put the seed's default rules back as shipped and enabled: all of them, or those
        in ``names``. A deleted one is added again, a changed or disabled one replaced;
        rules of your own are left alone. Each restored rule is a recorded rule change."""
        names = request.names if request is not None else None
        return restore(runtime, names, actor_of(caller, actor))

    @app.post(
        f"{API_PREFIX}/rules/{{name}}/restore",
        response_model=RestoredRules,
        tags=["rules"],
        responses=error_responses(403, 404, 422, 503),
    )
    def restore_rule(
        name: str, runtime: RuntimeDep, caller: FleetOperator, actor: ActorHeader = "api"
    ) -> RestoredRules:
        """Put one of the seed's default rules back as shipped and enabled (404 for a name
        that is not one of them)."""
        if name not in DEFAULT_RULE_NAMES:
            raise HTTPException(
                404,
                detail=f"{name!r} is not a default rule; the default rules are: "
                f"{', '.join(DEFAULT_RULE_NAMES)}",
            )
        return restore(runtime, [name], actor_of(caller, actor))

    def restore(runtime: Runtime, names: list[str] | None, actor: str) -> RestoredRules:
        try:
            with runtime.clients.client() as client:
                restored = runtime.rule_book.restore(client, actor, names)
                rules = runtime.rule_book.rules(client)
        except RuleChangeError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        except PublishError as exc:
            raise HTTPException(503, detail=str(exc)) from None
        log.info("rules_restored actor=%s restored=%s", actor, ",".join(restored) or "-")
        return RestoredRules(restored=restored, rules=rules)

    @app.post(
        f"{API_PREFIX}/rules/{{name}}/{{action}}", response_model=ThreatRuleSpec, tags=["rules"],
        responses=error_responses(403, 404, 409, 422, 503),
    )  # fmt: skip
    def switch_rule(
        name: str,
        action: Literal["enable", "disable"],
        runtime: RuntimeDep,
        caller: FleetOperator,
        actor: ActorHeader = "api",
        confirm: Confirm = False,
    ):
        """Enable or disable a rule (disabling the last enabled rule of a default category
        needs ``?confirm=true``)."""
        change = RuleChange(action=action, name=name)
        return change_rules(runtime, change, actor_of(caller, actor), confirm)

    @app.delete(
        f"{API_PREFIX}/rules/{{name}}", status_code=204, tags=["rules"],
        responses=error_responses(403, 404, 409, 422, 503),
    )  # fmt: skip
    def delete_rule(
        name: str,
        runtime: RuntimeDep,
        caller: FleetOperator,
        actor: ActorHeader = "api",
        confirm: Confirm = False,
    ) -> Response:
        """Delete a rule (deleting the last enabled rule of a default category needs
        ``?confirm=true``; ``POST /api/v1/rules/restore`` puts the default rules back)."""
        change = RuleChange(action="delete", name=name)
        change_rules(runtime, change, actor_of(caller, actor), confirm)
        return Response(status_code=204)

    @app.get(f"{API_PREFIX}/system/health", response_model=SystemHealth, tags=["system"])
    def system_health(runtime: RuntimeDep, caller: Reader) -> SystemHealth:
        """Broker, dataflow lag, loader, ClickHouse and uptime; ``status`` is ok or degraded.

        Answers within about a second even when the broker is down (its answer is cached
        for ``AGENTWATCH_API_HEALTH_CACHE_S``).
        """
        return runtime.monitor.health()

    @app.get(
        "/metrics",
        response_class=Response,
        tags=["system"],
        responses={200: {"content": {prometheus.CONTENT_TYPE: {}}}},
    )
    def prometheus_metrics(runtime: RuntimeDep, caller: Reader) -> Response:
        """Ingest rate, lags, dead letters, batch sizes and more in Prometheus text format."""
        body = prometheus.render(runtime.monitor.health())
        return Response(body, media_type=prometheus.CONTENT_TYPE)

    app.include_router(registry.router)
    keys.install(app)
    document_key_errors(app)
    return app


def in_scope(
    caller: Principal,
    permission: Permission,
    tenant_id: str,
    agent_id: str | None,
    status: int = 404,
) -> None:
    """Refuse a caller whose key may not act on ``tenant_id``: 404 for an agent (as if it
    did not exist, so other tenants' agents cannot be probed), ``status`` otherwise."""
    reason = authorize(caller, permission, tenant_id, caller.agent_id)
    if reason is None:
        return
    if agent_id is not None:
        raise HTTPException(404, detail=_unknown_agent(agent_id))
    raise HTTPException(status, detail=reason)


def scope_agent(
    client: Client, database: str, caller: Principal, permission: Permission, agent_id: str
) -> None:
    """:func:`in_scope` for an agent whose tenant is to be looked up (not for keys of every
    tenant, which may read any agent: no lookup then)."""
    if caller.tenant_id == ALL_TENANTS:
        return
    tenant_id = _tenant_of(client, database, agent_id)
    if tenant_id is None:
        raise HTTPException(404, detail=_unknown_agent(agent_id))
    in_scope(caller, permission, tenant_id, agent_id)


def _tenant_of(client: Client, database: str, agent_id: str) -> str | None:
    """The agent's tenant from its latest heartbeat or baseline; None if it is unknown."""
    latest = queries.latest_metrics(client, database, agent_id)
    if latest is not None:
        return latest[0]
    baseline = queries.latest_baseline(client, database, agent_id)
    return baseline[0] if baseline is not None else None


def quarantine_state(events: list[dict]) -> dict:
    """The quarantine fields of :class:`AgentSecurity` from the agent's quarantine events,
    newest first (:func:`api.queries.quarantine_events`). A ``quarantine_requested`` is a
    request until the dataflow's ``status_changed`` (or a ``released``) follows it.

    >>> from datetime import UTC, datetime
    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> state = quarantine_state([
    ...     {"type": "quarantine_requested", "timestamp": t, "payload": {"reason": "again"}},
    ...     {"type": "status_changed", "timestamp": t, "payload": {"to": "quarantined",
    ...      "reason": "score 10 < 20"}}])
    >>> state["quarantined"], state["quarantine_reason"], state["quarantine_requested"]
    (True, 'score 10 < 20', True)
    >>> quarantine_state([{"type": "released", "timestamp": t, "payload": {}}])["quarantined"]
    False
    """
    requested = False
    for event in events:
        if event["type"] == "quarantine_requested":
            requested = True
            continue
        if event["type"] == "status_changed" and event["payload"].get("to") == "quarantined":
            return {
                "quarantined": True,
                "quarantined_since": event["timestamp"],
                "quarantine_reason": event["payload"].get("reason"),
                "quarantine_requested": requested,
            }
        break  # released, or a status change out of quarantine
    return {
        "quarantined": False,
        "quarantined_since": None,
        "quarantine_reason": None,
        "quarantine_requested": requested,
    }


def _unknown_agent(agent_id: str) -> str:
    return f"agent {agent_id!r} is unknown: no heartbeat and no baseline stored for it"


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with FastAPI's error list plus one sentence a person can read."""
    errors = exc.errors()
    sentences = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ())[1:]) or "request"
        sentences.append(f"{where}: {error.get('msg', 'invalid')}")
    body = {"message": "; ".join(sentences), "detail": jsonable_encoder(errors)}
    return JSONResponse(body, status_code=422)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's answers to HTTP errors, but a body it could not decode (FastAPI's bare 400
    "There was an error parsing the body", raised from the decoding error) is a 422 like
    every other request that does not fit, saying what was wrong."""
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
        cause = " ".join(str(exc.__cause__).split())[:200]
        message = f"the body could not be read ({cause}); send JSON in UTF-8"
        return await _validation_error(request, unprocessable(message, "body"))
    return await http_exception_handler(request, exc)


async def _clickhouse_error(request: Request, exc: ClickHouseError) -> JSONResponse:
    """ClickHouse failed to answer: 503, so callers retry instead of trusting an empty answer."""
    log.error("clickhouse_query_failed path=%s error=%s", request.url.path, exc)
    secrets = get_runtime(request).settings.secret_values()  # the driver's text may quote them
    message = " ".join(redact(str(exc), secrets).split())[:300]
    return JSONResponse({"detail": f"ClickHouse did not answer: {message}"}, status_code=503)
