"""The HTTP API: agent status, anomalies, threats, alerts, security scores and incidents
from ClickHouse; silences and quarantine requests published on ``agents.control``; read-only
SQL, health, Prometheus.

The routes live in routers, one module per resource under :mod:`api.routes` (and
:mod:`api.keys`, :mod:`api.audit`, :mod:`api.docs`); each route declares the caller it
needs (:mod:`api.runtime`: ``Reader``, ``Operator``, … — one dependency that
authenticates the key and checks its role) and scopes what it touches to the
caller's tenant (:mod:`api.scope`). This module assembles them.

``create_app(settings)`` builds the FastAPI app. Its lifespan opens
ClickHouse (in the embedded profile this process is the one that owns the
chDB directory), creates the schema, and runs the ClickHouse loader in a
background thread, next to the webhook deliverer (:mod:`sinks.webhooks`) when
webhooks are configured; on shutdown (SIGTERM, Ctrl-C) it stops both (the
loader flushes what it holds).

Endpoints are plain ``def`` functions: clickhouse-connect and the Kafka client
block, so FastAPI runs them in its thread pool and the event loop stays free.

>>> app = create_app(Settings(), client=None, run_loader=False)
>>> from api.methods import flat_routes
>>> paths = {r.path for r in flat_routes(app.routes)}
>>> {"/api/v1/agents/{agent_id}/status", "/api/v1/system/health", "/docs"} <= paths
True
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from agentwatch.secrets import redact
from agentwatch.settings import Settings
from api import audit, docs, keys
from api.access import BodyLimit, InFlightLimit, LoopbackMutations
from api.errors import unprocessable
from api.identity import document_key_errors
from api.methods import AllowedMethods
from api.params import one_value_each
from api.routes import (
    agents,
    alerts,
    bridge,
    bulk,
    clusters,
    console,
    credentials,
    operations,
    otlp,
    registry,
    reports,
    rules,
    series,
    system,
    tasks,
    tasks_assign,
    whoami,
)
from api.routes import sql as sql_routes
from api.runtime import Runtime

log = logging.getLogger(__name__)


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
        dependencies=[Depends(one_value_each)],
    )
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(InFlightLimit, per_caller=settings.api_max_in_flight_per_caller)
    app.add_middleware(LoopbackMutations, settings=settings)
    app.add_middleware(AllowedMethods, router=app.router)
    docs.install(app)
    audit.install(app, settings)
    app.exception_handler(RequestValidationError)(_validation_error)
    app.exception_handler(ClickHouseError)(_clickhouse_error)
    app.exception_handler(StarletteHTTPException)(_http_error)

    # Starlette tries the routes in order (an included router's take ~1.4 µs each to
    # match, alone; more in a real request), so the busiest come first: assign and status
    # (their p99 has a target: docs/orchestration-assign.md), then what agents post (the
    # REST bridge, OTLP). No route hides another (tests/test_methods.py), so the order
    # decides nothing else. Assign's router first, not 12th: a do-nothing GET of it
    # answered in 1.38 ms at the median instead of 1.83 (docs/benchmarks.md).
    routers = (tasks_assign, agents, bridge, otlp, alerts, rules, sql_routes, system,
               credentials, bulk, reports, registry, tasks, clusters, operations)  # fmt: skip
    routers += (series, whoami, console)  # the console at / (docs/console.md) and what it reads
    for module in routers:
        document_key_errors(module.router)
        app.include_router(module.router)
    keys.install(app)
    document_key_errors(app)
    return app


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with FastAPI's error list plus one sentence a person can read."""
    errors = exc.errors()
    sentences = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ())[1:]) or "request"
        sentences.append(f"{where}: {error.get('msg', 'invalid')}")
    detail = [{**error, "input": _printable(error["input"])} if "input" in error else error
              for error in errors]  # fmt: skip
    body = {"message": "; ".join(sentences), "detail": jsonable_encoder(detail)}
    return JSONResponse(body, status_code=422)


#: How much of a request's input a 422 quotes: the characters of a text, the items of a
#: list or object (the rest is said, not quoted). Quoted whole, 21 MB of heartbeats came
#: back as a 49 MB answer, once per branch of the body's union (found by a review).
QUOTE_CHARS, QUOTE_ITEMS = 200, 10


def _printable(value: object) -> object:
    """A request's input as a 422 can quote it in JSON: NaN and infinities as text, bytes
    with U+FFFD where they are not UTF-8, a lone surrogate as ?, and no more than
    :data:`QUOTE_CHARS` characters of a text or :data:`QUOTE_ITEMS` items of a list or
    object. Quoted as it came, such input made the error answer itself fail (a 500).

    >>> _printable({"a": [float("nan"), b"\\xff", "\\ud800"]}) == {"a": ["nan", "\\ufffd", "?"]}
    True
    >>> _printable(list(range(12))), len(_printable("x" * 1000))
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, '… and 2 more'], 219)
    """
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bytes | bytearray):
        value = bytes(value[: QUOTE_CHARS * 4]).decode("utf-8", "replace")
    if isinstance(value, str):
        text = value[:QUOTE_CHARS].encode("utf-8", "replace").decode("utf-8")  # (lone surrogate: ?)
        return text if len(value) <= QUOTE_CHARS else f"{text}… ({len(value)} characters)"
    if isinstance(value, dict):
        items = list(value.items())
        quoted = {_printable(k): _printable(v) for k, v in items[:QUOTE_ITEMS]}
        if len(items) > QUOTE_ITEMS:
            quoted["…"] = f"and {len(items) - QUOTE_ITEMS} more"
        return quoted
    if isinstance(value, list | tuple):
        quoted = [_printable(item) for item in value[:QUOTE_ITEMS]]
        if len(value) > QUOTE_ITEMS:
            quoted.append(f"… and {len(value) - QUOTE_ITEMS} more")
        return quoted
    return value


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
    secrets = request.app.state.runtime.settings.secret_values()  # the driver's text may quote them
    message = " ".join(redact(str(exc), secrets).split())[:300]
    return JSONResponse({"detail": f"ClickHouse did not answer: {message}"}, status_code=503)
