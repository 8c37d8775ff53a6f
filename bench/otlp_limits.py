"""What the costliest OTLP exports under the record limit cost the API: decode and map.

    .venv/bin/python bench/otlp_limits.py                      # at the default limit
    .venv/bin/python bench/otlp_limits.py --records 30000      # smaller exports

``AGENTWATCH_OTLP_MAX_RECORDS`` bounds what one export costs (docs/otel.md). This builds,
for a few shapes of export, the largest one the limit lets through in each encoding
(protobuf and OTLP JSON, whose objects and array items count), then times in process what
the receiver does with its body: :func:`schemas.otlp.decode` (parse and count) and the
mapping (:func:`agentwatch.otel.heartbeat_of` or :func:`~agentwatch.otel.events_of`).
Nothing is sent: the HTTP server and the broker add the same per-request cost to any
export. It also checks that two million empty datapoints (4 MiB of protobuf) are refused,
and how long that takes. Figures are wall-clock seconds, best of ``--repeats``; one JSON
object per export on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (  # noqa: E402
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue  # noqa: E402

from agentwatch.otel import events_of, heartbeat_of  # noqa: E402
from agentwatch.settings import Settings  # noqa: E402
from schemas.otlp import OtlpError, count_records, decode, encode  # noqa: E402

#: The body limit is not what this measures: large enough for any export built here.
MAX_BYTES = 64 << 20


def metrics(name: str, points: int, attributes: int) -> ExportMetricsServiceRequest:
    """One gauge of ``points`` datapoints with ``attributes`` attributes each."""
    request = ExportMetricsServiceRequest()
    gauge = request.resource_metrics.add().scope_metrics.add().metrics.add(name=name).gauge
    for i in range(points):
        point = gauge.data_points.add(as_double=0.5)
        for k in range(attributes):
            point.attributes.add(key=f"k{k}", value=AnyValue(string_value=f"v{i % 7}"))
    return request


def spans(count: int, events: int, attributes: int) -> ExportTraceServiceRequest:
    """``count`` GenAI chat spans with ``events`` message events and more attributes."""
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for i in range(count):
        span = scope.spans.add(
            name="chat", trace_id=i.to_bytes(16, "big"), span_id=i.to_bytes(8, "big"),
            start_time_unix_nano=1_000_000_000, end_time_unix_nano=2_000_000_000,
        )  # fmt: skip
        span.attributes.add(key="gen_ai.operation.name", value=AnyValue(string_value="chat"))
        for k in range(attributes):
            span.attributes.add(key=f"gen_ai.k{k}", value=AnyValue(string_value="x"))
        for _ in range(events):
            event = span.events.add(name="gen_ai.user.message")
            event.attributes.add(key="content", value=AnyValue(string_value="hello there"))
    return request


def map_metrics(request: ExportMetricsServiceRequest) -> None:
    for resource in request.resource_metrics:
        heartbeat_of([m for s in resource.scope_metrics for m in s.metrics], time.time())


def map_spans(request: ExportTraceServiceRequest) -> None:
    for resource in request.resource_spans:
        for scope in resource.scope_spans:
            for span in scope.spans:
                with contextlib.suppress(ValueError):  # (a refused span: also a cost)
                    events_of(span, "agent-1", "t1", 1.0)


#: name, a builder of the export holding about ``n`` records, its mapping.
SHAPES: list[tuple[str, Callable[[int], object], Callable]] = [
    ("agentwatch.cpu_usage, no attributes", lambda n: metrics("agentwatch.cpu_usage", n - 3, 0),
     map_metrics),
    ("system.cpu.utilization, 1 attribute", lambda n: metrics(
        "system.cpu.utilization", (n - 3) // 2, 1), map_metrics),
    ("system.cpu.utilization, 3 attributes", lambda n: metrics(
        "system.cpu.utilization", (n - 3) // 4, 3), map_metrics),
    ("GenAI spans, 10 message events", lambda n: spans((n - 2) // 22, 10, 0), map_spans),
    ("GenAI spans, 30 attributes", lambda n: spans((n - 2) // 32, 0, 30), map_spans),
]  # fmt: skip


def largest_taken(build: Callable[[int], object], encoding: str, limit: int) -> tuple:
    """The export of this shape with the most records ``limit`` lets through, and its
    body. In protobuf each shape holds at most the records asked of ``build``; in JSON,
    which counts more, their number is found by bisection."""
    low, high, best = 10, limit, None
    while low <= high:
        middle = high if encoding == "protobuf" else (low + high) // 2
        request = build(middle)
        body, media = encode(request, encoding)  # type: ignore[arg-type]
        try:
            decode(type(request), body, media, None, MAX_BYTES, limit)
        except OtlpError:
            high = middle - 1
            continue
        best, low = (request, body, media), middle + 1
    return best


def timed(work: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Settings.model_fields["otlp_max_records"].default
    parser.add_argument("--records", type=int, default=default,
                        help="the record limit (default: the setting's default)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    limit = args.records
    for name, build, mapping in SHAPES:
        for encoding in ("protobuf", "json"):
            request, body, media = largest_taken(build, encoding, limit)
            decode_s, got = timed(
                partial(decode, type(request), body, media, None, MAX_BYTES, limit), args.repeats
            )
            map_s, _ = timed(partial(mapping, got), args.repeats)
            row = {
                "export": name, "encoding": encoding, "limit": limit, "body_bytes": len(body),
                "records": count_records(got, limit), "decode_s": round(decode_s, 3),
                "map_s": round(map_s, 3),
            }  # fmt: skip
            print(json.dumps(row), flush=True)
    bomb = metrics("agentwatch.cpu_usage", 0, 0)
    bomb.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points.add()
    points = bomb.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points
    points.extend([points[0]] * 2_000_000)
    body = bomb.SerializeToString()

    def refuse() -> int:
        try:
            decode(ExportMetricsServiceRequest, body, "application/x-protobuf", None,
                   MAX_BYTES, limit)  # fmt: skip
        except OtlpError as exc:
            return exc.status
        return 200

    refuse_s, status = timed(refuse, args.repeats)
    row = {"export": "bomb: 2,000,001 empty datapoints", "encoding": "protobuf",
           "limit": limit, "body_bytes": len(body), "status": status,
           "decode_s": round(refuse_s, 3)}  # fmt: skip
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
