"""The HTTP API: agent status, anomalies and threats from ClickHouse, read-only SQL, health,
Prometheus.

``create_app(settings)`` builds the FastAPI app. Its lifespan opens
ClickHouse (in the embedded profile this process is the one that owns the
chDB directory), creates the schema, and runs the ClickHouse loader in a
background thread; on shutdown (SIGTERM, Ctrl-C) it stops the loader, which
flushes what it holds.

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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, BeforeValidator
from pydantic_core import PydanticCustomError

from agentwatch.settings import Settings
from api import prometheus, queries, sql
from api.client_pool import ClientPool
from api.health import SystemMonitor
from api.responses import (
    AgentStatus,
    AnomalyList,
    SystemHealth,
    ThreatCategory,
    ThreatList,
    ThreatSeverity,
)
from api.rules import RuleBook, RuleChangeError, RuleExists, RuleNotFound, RulePublishError
from schemas.models import TIMESTAMP_RANGE, RuleChange, ThreatRuleSpec
from sinks.clickhouse import connect, create_schema
from sinks.loader import Loader

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
#: How many of an agent's latest threats its status shows.
STATUS_RECENT_THREATS = 5


class ErrorMessage(BaseModel):
    """The body of a 404 or 503 answer."""

    detail: str


class ValidationErrorBody(BaseModel):
    """The body of a 422 answer: FastAPI's list of errors plus one readable sentence."""

    message: str
    detail: list[dict]


def parse_instant(value: object) -> object:
    """A query parameter in ISO-8601 with a zone, or epoch seconds, as an aware datetime.

    >>> parse_instant("1764072000")
    datetime.datetime(2025, 11, 25, 12, 0, tzinfo=datetime.timezone.utc)
    >>> parse_instant("2025-11-25T13:00:00+01:00").isoformat()
    '2025-11-25T13:00:00+01:00'
    >>> try:
    ...     parse_instant("2025-11-25T12:00:00")
    ... except ValueError as exc:
    ...     print(exc)
    '2025-11-25T12:00:00' has no time zone; add Z or an offset such as +00:00
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        low, high = TIMESTAMP_RANGE
        if not low <= seconds <= high:
            raise PydanticCustomError(
                "instant_out_of_range",
                "{input} epoch seconds is outside the years 2000-2100",
                {"input": text},
            )
        return datetime.fromtimestamp(seconds, UTC)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise PydanticCustomError(
            "instant_format",
            "'{input}' is neither ISO-8601 (2025-11-25T12:00:00Z) nor epoch seconds",
            {"input": text[:60]},
        ) from None
    if parsed.tzinfo is None:
        raise PydanticCustomError(
            "instant_no_zone",
            "'{input}' has no time zone; add Z or an offset such as +00:00",
            {"input": text[:60]},
        )
    return parsed


#: A point in time given as ISO-8601 with a zone, or epoch seconds.
Instant = Annotated[datetime, BeforeValidator(parse_instant)]

AgentId = Annotated[
    str,
    Path(min_length=1, max_length=128, description="The agent's id (1-128 characters)."),
]


@dataclass(frozen=True)
class TimeRange:
    """The ``since``, ``until`` and ``limit`` of a per-agent history query."""

    since: datetime | None
    until: datetime | None
    limit: int


def time_range(
    since: Annotated[
        Instant | None,
        Query(description="Inclusive lower bound: ISO-8601 with a zone, or epoch seconds."),
    ] = None,
    until: Annotated[
        Instant | None,
        Query(description="Inclusive upper bound: ISO-8601 with a zone, or epoch seconds."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Most items returned.")] = 100,
) -> TimeRange:
    """The query parameters of a history endpoint (a FastAPI dependency); 422 if since > until."""
    if since is not None and until is not None and since > until:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "since"),
                    "msg": f"{since.isoformat()} is after until={until.isoformat()}; "
                    "swap them or leave one out",
                    "input": since.isoformat(),
                }
            ]
        )
    return TimeRange(since, until, limit)


TimeRangeDep = Annotated[TimeRange, Depends(time_range)]


def _upper(value: object) -> object:
    """Severities and categories are upper case; accept them in any case."""
    return value.upper() if isinstance(value, str) else value


SeverityFilter = Annotated[
    list[Annotated[ThreatSeverity, BeforeValidator(_upper)]] | None,
    Query(description="Keep only these severities (repeat the parameter for several)."),
]
CategoryFilter = Annotated[
    list[Annotated[ThreatCategory, BeforeValidator(_upper)]] | None,
    Query(description="Keep only these categories (repeat the parameter for several)."),
]


@dataclass
class Runtime:
    """What the app holds while it runs: its ClickHouse clients, the loader, the monitor."""

    settings: Settings
    clients: ClientPool
    loader: Loader | None
    loader_client: Client | None
    monitor: SystemMonitor
    sql_clients: ClientPool | None  # read-only sessions for POST /api/v1/sql; None when off
    rule_book: RuleBook

    @classmethod
    def start(cls, settings: Settings, client: Client | None, run_loader: bool) -> Runtime:
        """Open ClickHouse, create the schema, start the loader (blocking; run in a thread)."""
        if client is None:
            clients = ClientPool(open_client=lambda: connect(settings))
        else:
            clients = ClientPool(shared=client)
        with clients.client() as first:
            create_schema(first, settings)
        loader = loader_client = None
        if run_loader:
            # The loader writes through its own connection: a chDB client
            # serializes its calls, and reads must not queue behind a batch.
            loader_client = connect(settings)
            loader = Loader(settings, loader_client)
            loader.start()
        monitor = SystemMonitor(settings, clients, loader, loader_expected=run_loader)
        sql_clients = None
        if settings.api_sql_enabled:  # opened on first use, after the schema exists
            sql_clients = ClientPool(open_client=lambda: sql.open_read_only_client(settings))
        log.info(
            "api_started database=%s clickhouse=%s loader=%s",
            settings.clickhouse_database,
            settings.clickhouse_dsn,
            "on" if run_loader else "off",
        )
        return cls(
            settings, clients, loader, loader_client, monitor, sql_clients, RuleBook(settings)
        )

    def stop(self) -> None:
        """Stop the loader (it flushes), then release the clients."""
        if self.loader is not None:
            started = time.monotonic()
            self.loader.stop()
            log.info("loader_stopped seconds=%.2f", time.monotonic() - started)
        if self.loader_client is not None:
            self.loader_client.close()
        self.rule_book.close()
        self.monitor.close()
        self.clients.close()
        if self.sql_clients is not None:
            self.sql_clients.close()
        log.info("api_stopped")


ActorHeader = Annotated[
    str,
    Header(alias="X-Agentwatch-Actor", min_length=1, max_length=128,
           description="Who makes the change (recorded with it)."),
]  # fmt: skip


def get_runtime(request: Request) -> Runtime:
    """The running app's :class:`Runtime` (a FastAPI dependency)."""
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


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
    )
    app.exception_handler(RequestValidationError)(_validation_error)
    app.exception_handler(ClickHouseError)(_clickhouse_error)

    @app.get(
        f"{API_PREFIX}/agents/{{agent_id}}/status",
        response_model=AgentStatus,
        responses={404: {"model": ErrorMessage}, 422: {"model": ValidationErrorBody}},
        tags=["agents"],
    )
    def agent_status(agent_id: AgentId, runtime: RuntimeDep) -> AgentStatus:
        """Latest heartbeat, baseline, anomaly score (with its reasons) and threats of one agent."""
        database = settings.clickhouse_database
        with runtime.clients.client() as client:
            latest = queries.latest_metrics(client, database, agent_id)
            baseline = queries.latest_baseline(client, database, agent_id)
            if latest is None and baseline is None:
                raise HTTPException(404, detail=_unknown_agent(agent_id))
            anomaly = queries.latest_anomaly(client, database, agent_id)
            threats = queries.threats_between(
                client, database, agent_id, None, None, STATUS_RECENT_THREATS
            )
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
        )

    @app.get(
        f"{API_PREFIX}/agents/{{agent_id}}/anomalies",
        response_model=AnomalyList,
        responses={404: {"model": ErrorMessage}, 422: {"model": ValidationErrorBody}},
        tags=["agents"],
    )
    def agent_anomalies(agent_id: AgentId, runtime: RuntimeDep, span: TimeRangeDep) -> AnomalyList:
        """Scored heartbeats of one agent in a time range, newest first."""
        database = settings.clickhouse_database
        with runtime.clients.client() as client:
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
        responses={404: {"model": ErrorMessage}, 422: {"model": ValidationErrorBody}},
        tags=["agents"],
    )
    def agent_threats(
        agent_id: AgentId,
        runtime: RuntimeDep,
        span: TimeRangeDep,
        severity: SeverityFilter = None,
        category: CategoryFilter = None,
    ) -> ThreatList:
        """Threats of one agent that began (``first_seen``) in a time range, newest first,
        each with its evidence: the values judged, the baseline, the window."""
        database = settings.clickhouse_database
        with runtime.clients.client() as client:
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

    @app.post(
        f"{API_PREFIX}/sql",
        response_model=sql.SqlAnswer,
        responses={
            200: {"content": {"text/csv": {}, "text/tab-separated-values": {}}},
            400: {"model": ErrorMessage},
            403: {"model": ErrorMessage},
            422: {"model": ValidationErrorBody},
        },
        tags=["sql"],
    )
    def run_sql(request: sql.SqlRequest, runtime: RuntimeDep) -> Response:
        """Run one read-only query on the ClickHouse data; answer in json, csv or tsv.

        The query runs in a read-only ClickHouse session (``readonly=1``) that returns at
        most ``AGENTWATCH_API_SQL_MAX_RESULT_ROWS`` rows and stops after
        ``AGENTWATCH_API_SQL_MAX_EXECUTION_TIME_S`` seconds. Anything but one read
        statement (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN, EXISTS) is a 403, and so are
        ``INTO OUTFILE`` and ``file()``; a query ClickHouse rejects (syntax, unknown
        table, too many rows, too slow) is a 400 that says why.
        """
        if runtime.sql_clients is None:
            raise HTTPException(
                403,
                detail="SQL through the API is switched off (AGENTWATCH_API_SQL_ENABLED=false); "
                "ask the operator, or stop the stack and run `agentwatch sql` on its data",
            )
        try:
            query = sql.check_read_only(request.query)
            with runtime.sql_clients.client() as client:
                result = sql.run_read_query(client, query)
        except sql.SqlRefused as refused:
            log.info("sql_refused status=%d query=%r", refused.status, request.query[:200])
            raise HTTPException(refused.status, detail=refused.message) from None
        log.info(
            "sql_query rows=%d elapsed_s=%.3f query=%r",
            len(result.rows),
            result.elapsed_s,
            request.query[:200],
        )
        body = sql.render(result, request.format)
        return Response(body, media_type=sql.MEDIA_TYPES[request.format])

    def change_rules(runtime: Runtime, change: RuleChange, actor: str) -> ThreatRuleSpec | None:
        try:
            with runtime.clients.client() as client:
                return runtime.rule_book.apply(client, change, actor)
        except RuleNotFound as exc:
            raise HTTPException(404, detail=str(exc)) from None
        except RuleExists as exc:
            raise HTTPException(409, detail=str(exc)) from None
        except RuleChangeError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        except RulePublishError as exc:
            raise HTTPException(503, detail=str(exc)) from None

    @app.get(f"{API_PREFIX}/rules", response_model=list[ThreatRuleSpec], tags=["rules"])
    def list_rules(runtime: RuntimeDep) -> list[ThreatRuleSpec]:
        """The threat rules in force: the seed's defaults and every change made since."""
        with runtime.clients.client() as client:
            return runtime.rule_book.rules(client)

    @app.post(
        f"{API_PREFIX}/rules", response_model=ThreatRuleSpec, status_code=201, tags=["rules"],
        responses={409: {"model": ErrorMessage}, 503: {"model": ErrorMessage}},
    )  # fmt: skip
    def add_rule(rule: ThreatRuleSpec, runtime: RuntimeDep, actor: ActorHeader = "api"):
        """Add a rule; the dataflow applies it from the next heartbeat on, without a restart."""
        return change_rules(runtime, RuleChange(action="add", rule=rule), actor)

    @app.put(
        f"{API_PREFIX}/rules/{{name}}", response_model=ThreatRuleSpec, tags=["rules"],
        responses={404: {"model": ErrorMessage}, 503: {"model": ErrorMessage}},
    )  # fmt: skip
    def update_rule(
        name: str, rule: ThreatRuleSpec, runtime: RuntimeDep, actor: ActorHeader = "api"
    ):
        """Replace a rule (its state starts afresh)."""
        if rule.name != name:
            raise HTTPException(422, detail=f"the body names rule {rule.name!r}, the path {name!r}")
        return change_rules(runtime, RuleChange(action="update", rule=rule), actor)

    @app.post(
        f"{API_PREFIX}/rules/{{name}}/{{action}}", response_model=ThreatRuleSpec, tags=["rules"],
        responses={404: {"model": ErrorMessage}, 503: {"model": ErrorMessage}},
    )  # fmt: skip
    def switch_rule(
        name: str,
        action: Literal["enable", "disable"],
        runtime: RuntimeDep,
        actor: ActorHeader = "api",
    ):
        """Enable or disable a rule."""
        return change_rules(runtime, RuleChange(action=action, name=name), actor)

    @app.delete(
        f"{API_PREFIX}/rules/{{name}}", status_code=204, tags=["rules"],
        responses={404: {"model": ErrorMessage}, 503: {"model": ErrorMessage}},
    )  # fmt: skip
    def delete_rule(name: str, runtime: RuntimeDep, actor: ActorHeader = "api") -> Response:
        """Delete a rule."""
        change_rules(runtime, RuleChange(action="delete", name=name), actor)
        return Response(status_code=204)

    @app.get(f"{API_PREFIX}/system/health", response_model=SystemHealth, tags=["system"])
    def system_health(runtime: RuntimeDep) -> SystemHealth:
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
    def prometheus_metrics(runtime: RuntimeDep) -> Response:
        """Ingest rate, lags, dead letters, batch sizes and more in Prometheus text format."""
        body = prometheus.render(runtime.monitor.health())
        return Response(body, media_type=prometheus.CONTENT_TYPE)

    return app


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


async def _clickhouse_error(request: Request, exc: ClickHouseError) -> JSONResponse:
    """ClickHouse failed to answer: 503, so callers retry instead of trusting an empty answer."""
    log.error("clickhouse_query_failed path=%s error=%s", request.url.path, exc)
    message = " ".join(str(exc).split())[:300]
    return JSONResponse({"detail": f"ClickHouse did not answer: {message}"}, status_code=503)
