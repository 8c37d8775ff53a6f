"""OpenTelemetry in: the OTLP/HTTP receiver (docs/otel.md).

An agent instrumented with a stock OpenTelemetry SDK exports to the API as to any OTLP/HTTP
collector (``OTEL_EXPORTER_OTLP_ENDPOINT=http://<api>:8000`` and its key in
``OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer aw_…``):

- ``POST /v1/metrics``: an ``ExportMetricsServiceRequest``. Each agent's datapoints of the
  export make one heartbeat (:func:`agentwatch.otel.heartbeat_of`), checked by the
  dataflow's own parser and written to ``agents.metrics`` keyed by the agent id.
- ``POST /v1/traces``: an ``ExportTraceServiceRequest``. GenAI spans become
  ``conversation`` events, spans of agentwatch's tasks ``task_completed``/``task_failed``
  (:func:`agentwatch.otel.events_of`), written to ``agents.events``.

Bodies are binary protobuf (``application/x-protobuf``) or OTLP JSON
(``application/json``), gzipped or not; the answer is encoded as the request was. Who
may post is the REST bridge's rule (:func:`api.routes.bridge.posting_tenant`): an agent's
key speaks for its own agent only, from anywhere, and a resource that names another agent
(``agentwatch.agent_id`` or ``service.instance.id``) or another tenant
(``agentwatch.tenant_id``) is refused (403); an operator's key of the agent's tenant may
post for the agent the resource names (from this machine). Answers follow the OTLP/HTTP
specification: 200 with ``partial_success`` saying how many datapoints or spans were
refused and why; 400 for a body that does not decode, 401/403 for keys, 413 above
``AGENTWATCH_OTLP_MAX_BODY_BYTES`` or ``AGENTWATCH_OTLP_MAX_RECORDS``, 415 for another
content type, 503 (retryable) when the broker did not take the messages. Error bodies are
a ``google.rpc.Status`` (in JSON with ``detail`` too, like every error of the API).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from google.protobuf.message import Message
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

from agentwatch.identity import Permission, Principal, Role, authorize
from agentwatch.otel import Claim, claim_of, events_of, heartbeat_of, point_count
from api.errors import error_responses
from api.identity import principal_of
from api.publisher import PublishError
from api.relay import METRICS_CHANNEL
from api.routes.bridge import posting_tenant
from api.runtime import Runtime
from schemas.events import AGENT_CHANNEL
from schemas.heartbeats import parse_heartbeats
from schemas.otlp import JSON, PROTOBUF, OtlpError, decode, encode, encoding_of

log = logging.getLogger("api.otlp")
router = APIRouter(tags=["opentelemetry"])

METRICS_PATH = "/v1/metrics"
TRACES_PATH = "/v1/traces"
#: The gRPC code a ``google.rpc.Status`` carries for each HTTP status we answer.
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 413: 8, 415: 3, 503: 14}
#: How long an exporter should wait before it sends a refused export again (503).
RETRY_AFTER_S = 5


class _Refusal(Exception):
    """An export answered with an error: ``status`` and the sentence that says why."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _openapi(request: str, response: str) -> dict:
    """The operation's request body and 200 answer in the OpenAPI schema (the body is
    read by hand: protobuf or OTLP JSON)."""
    spec = "https://opentelemetry.io/docs/specs/otlp/#otlphttp"
    return {
        "requestBody": {
            "required": True,
            "description": f"An OTLP {request} ({spec}), gzipped or not.",
            "content": {
                PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
                JSON: {"schema": {"type": "object"}},
            },
        },
        "responses": {
            "200": {
                "description": f"Taken; an OTLP {response}, encoded as the request was "
                "(partial_success says what was refused and why).",
                "content": {
                    JSON: {"schema": {"type": "object"}},
                    PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    }


_ERRORS = error_responses(400, 401, 403, 404, 503) | {
    413: {
        "description": "Larger than AGENTWATCH_OTLP_MAX_BODY_BYTES (as sent or gunzipped), "
        "or more records than AGENTWATCH_OTLP_MAX_RECORDS."
    },
    415: {"description": "Not application/x-protobuf or application/json (or not gzip)."},
}

Authorization = Annotated[
    str | None, Header(description="'Bearer <API key>': the agent's own key.")
]


@router.post(
    METRICS_PATH,
    summary="Take an OpenTelemetry metrics export (OTLP/HTTP) as heartbeats",
    responses=_ERRORS,
    openapi_extra=_openapi("ExportMetricsServiceRequest", "ExportMetricsServiceResponse"),
)
async def export_metrics(request: Request, authorization: Authorization = None) -> Response:
    """One heartbeat per agent per export from its datapoints (docs/otel.md: the table of
    metric names and heartbeat fields)."""
    return await _export(request, authorization, ExportMetricsServiceRequest, _take_metrics)


@router.post(
    TRACES_PATH,
    summary="Take an OpenTelemetry traces export (OTLP/HTTP): GenAI spans as conversations",
    responses=_ERRORS,
    openapi_extra=_openapi("ExportTraceServiceRequest", "ExportTraceServiceResponse"),
)
async def export_traces(request: Request, authorization: Authorization = None) -> Response:
    """GenAI spans as conversation events, spans of tasks as their outcomes (docs/otel.md)."""
    return await _export(request, authorization, ExportTraceServiceRequest, _take_spans)


async def _export(
    request: Request,
    authorization: str | None,
    message: type[Message],
    take: Callable[[Request, Runtime, Principal, Message], Message],
) -> Response:
    content_type = request.headers.get("content-type")
    encoding: Literal["protobuf", "json"] = (
        "protobuf" if (content_type or "").lower().startswith(PROTOBUF) else "json"
    )
    runtime: Runtime = request.app.state.runtime
    try:
        try:
            caller = await principal_of(request, authorization)
        except HTTPException as exc:
            raise _Refusal(exc.status_code, str(exc.detail), dict(exc.headers or {})) from None
        reasons = [
            authorize(caller, p, caller.tenant_id, caller.agent_id)
            for p in (Permission.REPORT_SELF, Permission.OPERATE)
        ]
        if all(reasons):
            raise _Refusal(403, reasons[0])
        try:
            encoding = encoding_of(content_type)
            limit = runtime.settings.otlp_max_body_bytes
            body = await _read_body(request, limit)
            export = decode(
                message, body, content_type, request.headers.get("content-encoding"), limit,
                runtime.settings.otlp_max_records,
            )  # fmt: skip
        except OtlpError as exc:
            raise _Refusal(exc.status, exc.message) from None
        answer = await run_in_threadpool(take, request, runtime, caller, export)
    except _Refusal as refusal:
        log.info(
            "otlp_export_refused path=%s status=%d reason=%r",
            request.url.path, refusal.status, refusal.message[:200],
        )  # fmt: skip
        return _error(refusal, encoding)
    data, media = encode(answer, encoding)
    return Response(data, media_type=media)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request's bytes, refused (413) as soon as they pass ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise OtlpError(413, f"the export is {declared} bytes, more than {limit} "
                        "(AGENTWATCH_OTLP_MAX_BODY_BYTES): export smaller batches")  # fmt: skip
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise OtlpError(413, f"the export is more than {limit} bytes "
                            "(AGENTWATCH_OTLP_MAX_BODY_BYTES): export smaller batches")  # fmt: skip
        chunks.append(chunk)
    return b"".join(chunks)


def _error(refusal: _Refusal, encoding: Literal["protobuf", "json"]) -> Response:
    """An OTLP error answer: a ``google.rpc.Status`` as the request was encoded (its JSON
    with the API's ``detail`` too)."""
    status = Status(code=_GRPC_CODES.get(refusal.status, 2), message=refusal.message)
    headers = dict(refusal.headers)
    if refusal.status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if encoding == "protobuf":
        return Response(
            status.SerializeToString(), refusal.status, headers=headers, media_type=PROTOBUF
        )
    body = {"code": status.code, "message": refusal.message, "detail": refusal.message}
    return Response(orjson.dumps(body), refusal.status, headers=headers, media_type=JSON)


def _agent_of(
    request: Request, runtime: Runtime, caller: Principal, claim: Claim
) -> tuple[str, str]:
    """The agent and tenant a resource's data is written as, by the bridge's rule."""
    if caller.role is Role.AGENT:
        if claim.agent_id is not None and claim.agent_id != caller.agent_id:
            raise _Refusal(
                403,
                f"the key of agent {caller.agent_id} may speak only for agent {caller.agent_id}, "
                f"not for {claim.agent_id!r} (resource attribute agentwatch.agent_id or "
                "service.instance.id): set it to the agent's id, or leave it out",
            )
        agent = caller.agent_id
    elif claim.agent_id is None:
        raise _Refusal(
            400,
            "an operator's key posts for the agent the resource names: set the resource "
            "attribute agentwatch.agent_id (or service.instance.id), or export with the "
            "agent's own key",
        )
    else:
        agent = claim.agent_id
    try:
        tenant = posting_tenant(request, runtime, caller, agent, claim.tenant_id)
    except HTTPException as exc:
        raise _Refusal(exc.status_code, str(exc.detail)) from None
    except RequestValidationError:
        raise _Refusal(
            400,
            f"agent {agent!r} is not known yet: set the resource attribute "
            "agentwatch.tenant_id to its tenant",
        ) from None
    return agent, tenant


def _send(runtime: Runtime, channel: str, agent: str, values: list[dict]) -> None:
    try:
        runtime.relay.send(channel, agent, values)
    except PublishError as exc:
        raise _Refusal(503, str(exc)) from None


def _take_metrics(
    request: Request, runtime: Runtime, caller: Principal, export: ExportMetricsServiceRequest
) -> ExportMetricsServiceResponse:
    """Map, check and write one heartbeat per agent of the export."""
    agents: dict[tuple[str, str], list[Metric]] = {}
    known: dict[Claim, tuple[str, str]] = {}
    for resource_metrics in export.resource_metrics:
        claim = claim_of(resource_metrics.resource)
        if claim not in known:
            known[claim] = _agent_of(request, runtime, caller, claim)
        metrics = agents.setdefault(known[claim], [])
        for scope in resource_metrics.scope_metrics:
            metrics.extend(scope.metrics)
    rejected, notes = 0, []
    now = time.time()
    for (agent, tenant), metrics in agents.items():
        mapped = heartbeat_of(metrics, now)
        rejected += mapped.rejected
        notes += mapped.reasons
        if not mapped.mapped:
            notes.append(
                f"no metric of agent {agent} maps to a heartbeat field (docs/otel.md): "
                "no heartbeat written"
            )
            continue
        heartbeat = {
            "agent_id": agent, "tenant_id": tenant, "timestamp": mapped.timestamp,
            **mapped.fields,
        }  # fmt: skip
        _, refused = parse_heartbeats([orjson.dumps(heartbeat)])
        if refused:
            rejected += point_count(metrics) - mapped.rejected
            notes.append(f"agent {agent}: the heartbeat is refused: {refused[0][1]}")
            continue
        _send(runtime, METRICS_CHANNEL, agent, [heartbeat])
        log.debug("otlp_heartbeat agent=%s metrics=%s", agent, ",".join(mapped.mapped))
    answer = ExportMetricsServiceResponse()
    if rejected or notes:
        answer.partial_success.rejected_data_points = rejected
        answer.partial_success.error_message = "; ".join(notes)[:2000]
    return answer


def _take_spans(
    request: Request, runtime: Runtime, caller: Principal, export: ExportTraceServiceRequest
) -> ExportTraceServiceResponse:
    """Map, check and write the events the export's spans stand for."""
    events: dict[str, list[dict]] = {}
    known: dict[Claim, tuple[str, str]] = {}
    rejected, notes = 0, []
    now = time.time()
    for resource_spans in export.resource_spans:
        claim = claim_of(resource_spans.resource)
        if claim not in known:
            known[claim] = _agent_of(request, runtime, caller, claim)
        agent, tenant = known[claim]
        for scope in resource_spans.scope_spans:
            for span in scope.spans:
                try:
                    events.setdefault(agent, []).extend(events_of(span, agent, tenant, now))
                except ValueError as exc:
                    rejected += 1
                    if len(notes) < 5:
                        notes.append(f"span {span.span_id.hex()} ({span.name}): {exc}")
    for agent, values in events.items():
        if values:
            _send(runtime, AGENT_CHANNEL, agent, values)
    answer = ExportTraceServiceResponse()
    if rejected:
        answer.partial_success.rejected_spans = rejected
        answer.partial_success.error_message = "; ".join(notes)[:2000]
    return answer
