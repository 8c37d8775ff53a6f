"""OpenTelemetry in, through the door: the official OpenTelemetry Python SDK exports to the
API under uvicorn (a real HTTP server on a free loopback port, in a thread), and what it
sent lands on the session broker's agents.metrics and agents.events."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import orjson
import pytest
import uvicorn
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import NumberDataPoint
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status as SpanStatus
from opentelemetry.trace import StatusCode

from agentwatch.identity import Role
from agentwatch.settings import Settings
from api.app import create_app
from infra.broker import ensure_topics, free_port
from sinks.clickhouse import connect
from tests.conftest import wait_until
from tests.test_bridge import consume
from tests.test_credentials import door  # noqa: F401  (the fixture)

AGENT = "agent-otel"
#: Counters and histograms per export, as docs/otel.md asks of an agent's SDK.
DELTA = {Counter: AggregationTemporality.DELTA, Histogram: AggregationTemporality.DELTA}
LIMIT = 64 * 1024
RECORDS = 1000


@dataclass
class Receiver:
    """The API under uvicorn, and keys made in its key book."""

    url: str
    settings: Settings
    tokens: dict[str, str]

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}


def serve(app, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="otlp-api", daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def receiver(settings: Settings) -> Iterator[Receiver]:
    settings = settings.model_copy(
        update={
            "api_auth_required": True, "api_key_cache_s": 0.0, "otlp_max_body_bytes": LIMIT,
            "otlp_max_records": RECORDS,
        }
    )  # fmt: skip
    ensure_topics(settings)
    client = connect(settings)
    app = create_app(settings, client=client, run_loader=False)
    port = free_port()
    server, thread = serve(app, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: server.started, 30, "the API under uvicorn")
        book = app.state.runtime.keys
        tokens = {
            name: book.create(client, role, tenant, "test", name=name, agent_id=agent)[1]
            for name, role, tenant, agent in [
                (AGENT, Role.AGENT, "t1", AGENT),
                ("other agent", Role.AGENT, "t1", "agent-else"),
                ("operator of t1", Role.OPERATOR, "t1", None),
                ("analyst of t1", Role.ANALYST, "t1", None),
            ]
        }
        yield Receiver(url, settings, tokens)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        client.close()
    assert not thread.is_alive(), "the API did not stop within 20 s"


def meter_provider(receiver: Receiver, token: str, **resource: str) -> MeterProvider:
    exporter = OTLPMetricExporter(
        endpoint=f"{receiver.url}/v1/metrics",
        headers={"Authorization": f"Bearer {token}"},
        compression=Compression.Gzip,
        preferred_temporality=DELTA,
        timeout=10,
    )
    # exported when the test flushes (the interval is only a backstop)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    attributes = {"service.name": "otel-test-agent", **resource}
    return MeterProvider(resource=Resource.create(attributes), metric_readers=[reader])


def tracer_provider(receiver: Receiver, token: str) -> TracerProvider:
    exporter = OTLPSpanExporter(
        endpoint=f"{receiver.url}/v1/traces",
        headers={"Authorization": f"Bearer {token}"},
        compression=Compression.Gzip,
        timeout=10,
    )
    attributes = {"service.name": "otel-test-agent", "service.instance.id": AGENT}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def test_the_sdk_exports_metrics_and_each_export_lands_as_one_heartbeat(receiver: Receiver):
    provider = meter_provider(receiver, receiver.tokens[AGENT], **{"service.instance.id": AGENT})
    meter = provider.get_meter("otel-test")
    cpu = meter.create_gauge("system.cpu.utilization", unit="1")
    memory = meter.create_gauge("system.memory.utilization", unit="1")
    duration = meter.create_histogram("http.server.request.duration", unit="s")
    network = meter.create_counter("system.network.io", unit="By")
    tasks = meter.create_up_down_counter("agentwatch.active_tasks", unit="{task}")
    try:
        cpu.set(0.42, {"cpu": "0", "state": "user"})
        cpu.set(0.58, {"cpu": "0", "state": "idle"})
        memory.set(0.61, {"state": "used"})
        for seconds, status in [(0.1, 200), (0.3, 200), (0.2, 500)]:
            duration.record(seconds, {"http.response.status_code": status})
        network.add(2048, {"network.io.direction": "transmit"})
        network.add(512, {"network.io.direction": "receive"})
        tasks.add(3)
        assert provider.force_flush(10_000)
        cpu.set(0.9, {"cpu": "0", "state": "user"})
        network.add(100, {"network.io.direction": "transmit"})
        assert provider.force_flush(10_000)
    finally:
        provider.shutdown()

    landed = consume(receiver.settings, "metrics", 3)  # (shutting down exports once more)
    assert [key for key, _ in landed] == [AGENT.encode()] * 3
    first, second = (value for _, value in landed[:2])
    assert (first["agent_id"], first["tenant_id"]) == (AGENT, "t1")  # the key's
    assert first["cpu_usage"] == pytest.approx(42.0)
    assert first["memory_usage"] == pytest.approx(61.0)
    assert first["response_time_avg"] == pytest.approx(200.0)
    assert first["error_rate"] == pytest.approx(1 / 3)
    assert (first["bytes_out"], first["active_tasks"]) == (2048, 3)
    assert first["disk_usage"] == 0.0  # not exported: the documented default
    # the second export: what changed since the first (delta), the gauges' last values
    assert second["cpu_usage"] == pytest.approx(90.0) and second["bytes_out"] == 100
    assert second["timestamp"] >= first["timestamp"]


def test_the_sdk_exports_genai_spans_and_they_land_as_conversations_and_tasks(
    receiver: Receiver,
):
    provider = tracer_provider(receiver, receiver.tokens[AGENT])
    tracer = provider.get_tracer("otel-test")
    try:
        with tracer.start_as_current_span("invoke_agent researcher") as agent_span:
            agent_span.set_attributes(
                {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "researcher",
                 "agentwatch.task_id": "task-42", "agentwatch.task_type": "research"}
            )  # fmt: skip
            with tracer.start_as_current_span("chat gpt-4o") as chat:
                chat.set_attributes(
                    {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                     "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 812,
                     "gen_ai.usage.output_tokens": 64,
                     "gen_ai.response.finish_reasons": ["tool_calls"],
                     "gen_ai.input.messages": orjson.dumps([{"role": "user", "parts": [
                         {"type": "text", "content": "Find the quarterly numbers"}]}]).decode()}
                )  # fmt: skip
            with tracer.start_as_current_span("execute_tool fetch_report") as tool:
                tool.set_attributes(
                    {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "fetch_report",
                     "gen_ai.tool.call.id": "call_1", "error.type": "TimeoutError"}
                )  # fmt: skip
                tool.set_status(SpanStatus(StatusCode.ERROR, "the report service timed out"))
            agent_span.set_status(SpanStatus(StatusCode.ERROR, "no report"))
        with tracer.start_as_current_span("GET /healthz"):
            pass  # not GenAI, not a task: nothing
        assert provider.force_flush(10_000)
    finally:
        provider.shutdown()

    landed = [value for _, value in consume(receiver.settings, "events", 4)]
    kinds = [(e["type"], e["payload"].get("counterpart") or e["payload"].get("task_id"))
             for e in landed]  # fmt: skip
    # a span is exported when it ends: the children first
    assert kinds == [
        ("conversation", "gpt-4o"),
        ("conversation", "fetch_report"),
        ("conversation", "researcher"),
        ("task_failed", "task-42"),
    ]
    assert {(e["agent_id"], e["tenant_id"], e["actor"]) for e in landed} == {(AGENT, "t1", AGENT)}
    chat, tool, _, task = landed
    assert (chat["payload"]["tokens_in"], chat["payload"]["tokens_out"]) == (812, 64)
    assert chat["payload"]["text"] == "user: Find the quarterly numbers"
    assert "finished: tool_calls" in chat["payload"]["summary"]
    assert tool["payload"]["summary"].endswith("failed: TimeoutError: the report service timed out")
    assert chat["payload"]["conversation_id"] == tool["payload"]["conversation_id"]  # a trace
    assert task["payload"]["task_type"] == "research" and task["payload"]["reason"] == "no report"


def metrics_export(agent: str | None = None, tenant: str | None = None) -> bytes:
    request = ExportMetricsServiceRequest()
    resource = request.resource_metrics.add()
    for key, value in (("service.instance.id", agent), ("agentwatch.tenant_id", tenant)):
        if value is not None:
            resource.resource.attributes.add(key=key, value={"string_value": value})
    metric = resource.scope_metrics.add().metrics.add(name="agentwatch.cpu_usage", unit="%")
    metric.gauge.data_points.add(as_double=12.0)
    return request.SerializeToString()


PROTOBUF = {"Content-Type": "application/x-protobuf"}


def test_the_door_answers_as_the_otlp_specification_says(receiver: Receiver):
    url = f"{receiver.url}/v1/metrics"

    def post(body: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(url, content=body, headers=headers, timeout=10)

    body = metrics_export(AGENT)
    no_key = post(body, PROTOBUF)
    assert no_key.status_code == 401 and no_key.headers["WWW-Authenticate"] == "Bearer"
    status = Status.FromString(no_key.content)  # a google.rpc.Status, as the request was
    assert status.code == 16 and "no API key" in status.message
    analyst = post(body, PROTOBUF | receiver.auth("analyst of t1"))
    assert analyst.status_code == 403
    # an agent's key speaks only for its own agent
    other = post(body, PROTOBUF | receiver.auth("other agent"))
    assert other.status_code == 403 and "agent-else" in Status.FromString(other.content).message
    tenant = post(metrics_export(AGENT, "t2"), PROTOBUF | receiver.auth(AGENT))
    assert tenant.status_code == 403
    # content type, size, and bytes that do not decode (JSON errors say `detail` too)
    plain = post(body, {"Content-Type": "text/plain"} | receiver.auth(AGENT))
    assert plain.status_code == 415 and "application/x-protobuf" in plain.json()["detail"]
    big = post(b"\0" * (LIMIT + 1), PROTOBUF | receiver.auth(AGENT))
    assert (
        big.status_code == 413 and "OTLP_MAX_BODY_BYTES" in Status.FromString(big.content).message
    )
    bomb = gzip.compress(b" " * (LIMIT * 4))
    inflated = post(bomb, {"Content-Type": "application/json", "Content-Encoding": "gzip"}
                    | receiver.auth(AGENT))  # fmt: skip
    assert inflated.status_code == 413 and inflated.json()["code"] == 8
    points = ExportMetricsServiceRequest.FromString(body)  # 10,000 empty datapoints: 20 kB
    gauge = points.resource_metrics[0].scope_metrics[0].metrics.add(name="x").gauge
    gauge.data_points.extend([NumberDataPoint()] * (RECORDS * 10))
    many = post(points.SerializeToString(), PROTOBUF | receiver.auth(AGENT))
    assert many.status_code == 413
    assert "OTLP_MAX_RECORDS=1000" in Status.FromString(many.content).message
    garbage = post(b"\xff\xff\xff", PROTOBUF | receiver.auth(AGENT))
    assert garbage.status_code == 400
    # accepted: the agent itself; an operator of its tenant for the agent the resource names
    mine = post(body, PROTOBUF | receiver.auth(AGENT))
    assert mine.status_code == 200 and mine.headers["content-type"] == "application/x-protobuf"
    assert ExportMetricsServiceResponse.FromString(mine.content).partial_success.ByteSize() == 0
    unnamed = post(metrics_export(), PROTOBUF | receiver.auth("operator of t1"))
    assert unnamed.status_code == 400 and "agentwatch.agent_id" in unnamed.text
    ops = post(metrics_export("agent-new", "t1"), PROTOBUF | receiver.auth("operator of t1"))
    assert ops.status_code == 200, ops.text
    landed = consume(receiver.settings, "metrics", 2)
    assert [(k, v["tenant_id"], v["cpu_usage"]) for k, v in landed] == [
        (AGENT.encode(), "t1", 12.0), (b"agent-new", "t1", 12.0),
    ]  # fmt: skip


def test_otlp_json_is_taken_and_refused_points_come_back_as_partial_success(
    receiver: Receiver,
):
    exemplar = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
                "asDouble": 1}  # fmt: skip
    transmit = [{"key": "network.io.direction", "value": {"stringValue": "transmit"}}]
    export = {
        "resourceMetrics": [{
            "resource": {"attributes": [
                {"key": "agentwatch.agent_id", "value": {"stringValue": AGENT}}]},
            "scopeMetrics": [{"metrics": [
                {"name": "system.cpu.utilization", "unit": "1",
                 "gauge": {"dataPoints": [{"asDouble": 0.25, "exemplars": [exemplar],
                                           "timeUnixNano": "1800000000000000000"}]}},
                {"name": "system.network.io", "unit": "By",
                 "sum": {"aggregationTemporality": 2, "isMonotonic": True,
                         "dataPoints": [{"asInt": "123456789", "attributes": transmit}]}},
                {"name": "someone.elses.metric", "futureField": {"x": 1},
                 "gauge": {"dataPoints": [{"asDouble": 1}]}},
            ]}],
        }]
    }  # fmt: skip
    answer = httpx.post(f"{receiver.url}/v1/metrics", json=export, timeout=10,
                        headers=receiver.auth(AGENT))  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    partial = answer.json()["partialSuccess"]
    assert partial["rejectedDataPoints"] == "1"  # the cumulative byte counter (int64: a string)
    assert "TEMPORALITY_PREFERENCE=delta" in partial["errorMessage"]
    [(_, beat)] = consume(receiver.settings, "metrics", 1)
    assert (beat["cpu_usage"], beat["bytes_out"], beat["timestamp"]) == (25.0, 0, 1.8e9)


def test_an_agent_posts_from_its_own_host_an_operator_only_from_this_one(door):
    """The loopback guard (api/access.py) lets a keyed export through to the route, which
    lets a remote caller in with an agent's key only, as for the REST bridge."""
    from fastapi.testclient import TestClient

    token = door.agent_key(AGENT)
    remote = TestClient(door.api.app, client=("203.0.113.9", 40000))  # the running app
    export = metrics_export(AGENT, "t1")
    agent = remote.post("/v1/metrics", content=export, headers=PROTOBUF | door.auth(token))
    assert agent.status_code == 200, agent.text
    operator = remote.post(
        "/v1/metrics", content=export, headers=PROTOBUF | door.auth("operator of t1")
    )
    assert operator.status_code == 403
    assert "agent's own key" in Status.FromString(operator.content).message
    # a span the event schemas refuse is a rejected span, the others are taken
    spans = ExportTraceServiceRequest()
    resource = spans.resource_spans.add()
    for task_id in ("x" * 200, "task-1"):
        resource.scope_spans.add().spans.add(
            name="work", trace_id=bytes(16), span_id=bytes(8), end_time_unix_nano=1_800 * 10**15,
            attributes=[{"key": "agentwatch.task_id", "value": {"string_value": task_id}}],
        )  # fmt: skip
    answer = remote.post(
        "/v1/traces", content=spans.SerializeToString(), headers=PROTOBUF | door.auth(token)
    )
    assert answer.status_code == 200, answer.text
    partial = ExportTraceServiceResponse.FromString(answer.content).partial_success
    assert partial.rejected_spans == 1 and "task_id" in partial.error_message
    landed = [value for _, value in consume(door.settings, "events", 1)]
    assert [(e["type"], e["payload"]["task_id"]) for e in landed] == [("task_completed", "task-1")]


def test_counts_that_are_not_numbers_and_json_nested_too_deep_are_refused_not_a_500(
    receiver: Receiver,
):
    """Found by a fuzzer: a task count of NaN, infinity or 1e300 made ``round`` raise or an
    integer orjson cannot write, and OTLP JSON nested 900 deep a RecursionError: each a 500
    that lost the whole export."""
    for value in ("NaN", "Infinity", 1e300):
        export = {"resourceMetrics": [{
            "resource": {"attributes": [
                {"key": "agentwatch.agent_id", "value": {"stringValue": AGENT}}]},
            "scopeMetrics": [{"metrics": [
                {"name": "agentwatch.completed_tasks",
                 "gauge": {"dataPoints": [{"asDouble": value,
                                           "timeUnixNano": "1800000000000000000"}]}},
            ]}],
        }]}  # fmt: skip
        answer = httpx.post(f"{receiver.url}/v1/metrics", json=export, timeout=10,
                            headers=receiver.auth(AGENT))  # fmt: skip
        assert answer.status_code < 500, (value, answer.text)
    deep = b'{"x":' + b"[" * 900 + b"]" * 900 + b"}"
    headers = {**receiver.auth(AGENT), "content-type": "application/json"}
    answer = httpx.post(f"{receiver.url}/v1/traces", content=deep, timeout=10, headers=headers)
    assert answer.status_code == 400, answer.text
