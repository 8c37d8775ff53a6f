"""OTLP/HTTP export requests as they come in: their bytes read into the official messages.

An OpenTelemetry SDK's OTLP/HTTP exporter posts an ``ExportMetricsServiceRequest`` to
``/v1/metrics`` and an ``ExportTraceServiceRequest`` to ``/v1/traces``, encoded as binary
protobuf (``application/x-protobuf``) or as OTLP's JSON (``application/json``), possibly
gzipped (``Content-Encoding: gzip``). :func:`decode` reads them with the
``opentelemetry-proto`` package's generated classes (no hand-written parsing). OTLP's JSON
is protobuf's JSON mapping with two differences that :func:`decode` takes care of: trace
and span ids are hex strings (not base64), and unknown fields are ignored.

Anything that cannot be read is an :class:`OtlpError` with the HTTP status the OTLP
specification asks for: 415 for a content type or encoding it does not speak, 413 for a
body larger than the limit (as sent, and once gunzipped) or holding more records than the
limit (:func:`count_records`), 400 for bytes that do not decode.

>>> from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
...     ExportTraceServiceRequest)
>>> body = b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId":'
>>> body += b' "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",'
>>> body += b' "name": "chat", "kind": 3}]}]}]}'
>>> request = decode(ExportTraceServiceRequest, body, "application/json", None, 1 << 20, 100)
>>> span = request.resource_spans[0].scope_spans[0].spans[0]
>>> span.trace_id.hex(), span.name
('5b8efff798038103d269b633813fc60c', 'chat')
>>> decode(ExportTraceServiceRequest, body, "text/plain", None, 1 << 20, 100)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
schemas.otlp.OtlpError: 415: content type 'text/plain' is not OTLP/HTTP: send ...
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterable
from typing import Literal, TypeVar

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
#: The media types accepted, and the encoding each stands for.
MEDIA_TYPES: dict[str, Literal["protobuf", "json"]] = {
    PROTOBUF: "protobuf",
    "application/protobuf": "protobuf",
    JSON: "json",
}
#: The fields that hold a trace or span id (hex in OTLP's JSON), in both spellings.
_ID_FIELDS = frozenset(
    {"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"}
)

M = TypeVar("M", bound=Message)


class OtlpError(Exception):
    """An export that cannot be taken: ``status`` (400, 413, 415) and what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def encoding_of(content_type: str | None) -> Literal["protobuf", "json"]:
    """Which OTLP encoding a ``Content-Type`` names; :class:`OtlpError` (415) for others.

    >>> encoding_of("application/x-protobuf"), encoding_of("application/json; charset=utf-8")
    ('protobuf', 'json')
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    try:
        return MEDIA_TYPES[media]
    except KeyError:
        raise OtlpError(
            415,
            f"content type {media or '(none)'!r} is not OTLP/HTTP: send {PROTOBUF} or {JSON}",
        ) from None


def inflate(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """``body`` as the exporter meant it: gunzipped when ``Content-Encoding: gzip``, never
    more than ``max_bytes`` (:class:`OtlpError` 413; 415 for another encoding, 400 for
    bytes that are not gzip).

    >>> import gzip
    >>> inflate(gzip.compress(b"x" * 10), "gzip", 100)
    b'xxxxxxxxxx'
    >>> inflate(gzip.compress(b"x" * 1000), "gzip", 100)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    schemas.otlp.OtlpError: 413: the export holds more than 100 bytes once gunzipped ...
    """
    if len(body) > max_bytes:
        raise OtlpError(413, _too_large(f"{len(body)} bytes, more than {max_bytes},", max_bytes))
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding != "gzip":
        raise OtlpError(415, f"content encoding {encoding!r} is not accepted: send gzip or none")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise OtlpError(400, f"the body is not gzip ({exc})") from None
    if len(data) > max_bytes:
        raise OtlpError(413, _too_large(f"more than {max_bytes} bytes once gunzipped", max_bytes))
    if not inflater.eof:
        raise OtlpError(400, "the gzip body is cut short")
    return data


def _too_large(what: str, max_bytes: int) -> str:
    return (
        f"the export holds {what} (AGENTWATCH_OTLP_MAX_BODY_BYTES={max_bytes}): "
        "export smaller batches (OTEL_BSP_MAX_EXPORT_BATCH_SIZE) or raise the limit"
    )


def decode(
    message: type[M],
    body: bytes,
    content_type: str | None,
    content_encoding: str | None,
    max_bytes: int,
    max_records: int,
) -> M:
    """The ``message`` (an OTLP export request class) that ``body`` encodes, holding at
    most ``max_records`` records (:func:`count_records`; in OTLP JSON also its objects and
    array items)."""
    encoding = encoding_of(content_type)
    data = inflate(body, content_encoding, max_bytes)
    request = message()
    what = message.__name__
    if encoding == "protobuf":
        try:
            request.ParseFromString(data)
        except (DecodeError, ValueError) as exc:
            raise OtlpError(400, f"the body is not a protobuf {what} ({exc})") from None
        count_records(request, max_records)
        return request
    try:
        tree = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise OtlpError(400, f"the body is not JSON ({exc})") from None
    if not isinstance(tree, dict):
        raise OtlpError(400, f"the body is not an OTLP JSON {what} (not an object)")
    try:
        tree = _ids_to_base64(tree, _Budget(max_records))
        json_format.ParseDict(tree, request, ignore_unknown_fields=True)
    except RecursionError:  # (nested past what the conversion walks: a 400, not a 500)
        raise OtlpError(400, f"the body is not an OTLP JSON {what} (nested too deep)") from None
    except (json_format.ParseError, ValueError, TypeError) as exc:
        message_text = " ".join(str(exc).split())[:300]
        raise OtlpError(400, f"the body is not an OTLP JSON {what} ({message_text})") from None
    count_records(request, max_records)
    return request


class _Budget:
    """Records an export may still hold; taking more than are left is a 413.

    Mapping an export costs the API's CPU per record, whatever the record's size: 4 MiB
    of empty datapoints (two bytes each) are two million of them, most of a minute of CPU
    and half a gigabyte. The byte limit cannot see that; this one can, and it is counted
    before anything walks the records one by one.
    """

    __slots__ = ("left", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def take(self, records: int) -> None:
        self.left -= records
        if self.left < 0:
            raise OtlpError(
                413,
                f"the export holds more than {self.limit} records (resources, scopes, "
                "metrics, datapoints, spans, span events and attributes: "
                f"AGENTWATCH_OTLP_MAX_RECORDS={self.limit}): export smaller batches "
                "(OTEL_BSP_MAX_EXPORT_BATCH_SIZE) or raise the limit",
            )


def count_records(request: Message, limit: int) -> int:
    """How many records an export request holds: its resources, scopes, metrics,
    datapoints, spans, span events and attributes (a nested array's or key-value list's
    values too). :class:`OtlpError` (413) as soon as there are more than ``limit``, so
    counting costs at most ``limit`` steps however many records there are.

    >>> request = ExportMetricsServiceRequest()
    >>> metric = request.resource_metrics.add().scope_metrics.add().metrics.add()
    >>> for _ in range(3):
    ...     _ = metric.gauge.data_points.add().attributes.add(key="cpu")
    >>> count_records(request, 100)  # a resource, a scope, a metric, 3 points, 3 attributes
    9
    >>> _ = metric.gauge.data_points.add()
    >>> count_records(request, 9)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    schemas.otlp.OtlpError: 413: the export holds more than 9 records ...
    """
    budget = _Budget(limit)
    if isinstance(request, ExportMetricsServiceRequest):
        for resource_metrics in request.resource_metrics:
            _count_attributes(budget, resource_metrics.resource.attributes, 1)
            for scope in resource_metrics.scope_metrics:
                _count_attributes(budget, scope.scope.attributes, 1)
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data")
                    points = getattr(metric, kind).data_points if kind else ()
                    budget.take(1 + len(points))
                    for point in points:
                        _count_attributes(budget, point.attributes, 0)
    elif isinstance(request, ExportTraceServiceRequest):
        for resource_spans in request.resource_spans:
            _count_attributes(budget, resource_spans.resource.attributes, 1)
            for scope in resource_spans.scope_spans:
                _count_attributes(budget, scope.scope.attributes, 1)
                budget.take(len(scope.spans))
                for span in scope.spans:
                    _count_attributes(budget, span.attributes, len(span.events))
                    for event in span.events:
                        _count_attributes(budget, event.attributes, 0)
    else:
        raise TypeError(f"not an OTLP export request: {type(request).__name__}")
    return limit - budget.left


def _count_attributes(budget: _Budget, pairs: Iterable[KeyValue], more: int) -> None:
    """Take ``more`` records and one per attribute, nested values included."""
    budget.take(more)
    _count_values(budget, [pair.value for pair in pairs])


def _count_values(budget: _Budget, values: Iterable) -> None:
    """Take one record per value, and those of the arrays and key-value lists in them."""
    budget.take(len(values))  # type: ignore[arg-type]
    for value in values:
        kind = value.WhichOneof("value")
        if kind == "array_value":
            _count_values(budget, value.array_value.values)
        elif kind == "kvlist_value":
            _count_attributes(budget, value.kvlist_value.values, 0)


def _ids_to_base64(tree: object, budget: _Budget) -> object:
    """OTLP JSON's hex trace and span ids as protobuf JSON's base64 (everything else
    kept), taking one record from ``budget`` per object and per array item (before
    protobuf's JSON parser, slower per item than anything else the API does, sees them)."""
    if isinstance(tree, dict):
        budget.take(1)
        return {
            key: _hex_id(value) if key in _ID_FIELDS else _ids_to_base64(value, budget)
            for key, value in tree.items()
        }
    if isinstance(tree, list):
        budget.take(len(tree))
        return [_ids_to_base64(item, budget) for item in tree]
    return tree


def _hex_id(value: object) -> object:
    if not isinstance(value, str):
        return value
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise OtlpError(
            400, f"trace and span ids are hex in OTLP JSON, not {value[:40]!r}"
        ) from None
    return base64.b64encode(raw).decode()


def encode(message: Message, encoding: Literal["protobuf", "json"]) -> tuple[bytes, str]:
    """``message`` encoded as the request was (the body and its content type), as OTLP/HTTP
    answers: protobuf for protobuf, OTLP's JSON (ids in hex) for JSON.

    >>> from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ...     ExportMetricsServiceResponse)
    >>> answer = ExportMetricsServiceResponse()
    >>> answer.partial_success.rejected_data_points = 2
    >>> encode(answer, "json")
    (b'{"partialSuccess":{"rejectedDataPoints":"2"}}', 'application/json')
    """
    if encoding == "protobuf":
        return message.SerializeToString(), PROTOBUF
    tree = json_format.MessageToDict(message)
    return orjson.dumps(_ids_to_hex(tree)), JSON


def _ids_to_hex(tree: object) -> object:
    if isinstance(tree, dict):
        return {
            key: base64.b64decode(value).hex()
            if key in _ID_FIELDS and isinstance(value, str)
            else _ids_to_hex(value)
            for key, value in tree.items()
        }
    if isinstance(tree, list):
        return [_ids_to_hex(item) for item in tree]
    return tree
