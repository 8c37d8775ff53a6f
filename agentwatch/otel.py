"""OpenTelemetry in: an OTLP export's metrics as one heartbeat, its GenAI spans as
conversation and task events (docs/otel.md has the tables in words).

**Metrics → a heartbeat.** All the datapoints of one agent in one export make one
heartbeat (:func:`heartbeat_of`). Each heartbeat field is taken from the first metric of
:data:`METRIC_SOURCES` the export holds, read the way the table says:

- ``agentwatch.<field>`` (any heartbeat field, in the heartbeat's own unit) comes first;
- ``ratio``: a utilization (unit ``1``: ×100; unit ``%``: as is): per group of datapoints
  that differ only in their state attribute (``state``, ``system.cpu.state``,
  ``cpu.mode``, …) the states that count as busy are summed (not ``idle`` for CPU; ``used``
  for memory and disk), then the groups (CPUs, devices) are averaged (CPU) or the largest
  is taken (memory, disk);
- ``mean_ms``: a histogram's sum over its count (per export with delta temporality, since
  the start with cumulative), in milliseconds from its unit (``s``, ``ms``, ``us``, ``ns``);
- ``error_share``: the share of a duration histogram's count whose datapoints carry
  ``error.type`` or an ``http.response.status_code`` of 500 or more;
- ``sent_bytes``: a byte counter's ``transmit`` datapoints; only delta temporality says
  "since the previous heartbeat", so a cumulative one is refused (its datapoints count as
  rejected, with the advice to export delta);
- ``seconds``: a gauge or counter in seconds (uptime);
- ``value``: the datapoints' values (summed for counts, averaged otherwise).

A field no metric gives takes its default (:data:`DEFAULTS`: zero, and the uptime since
the earliest ``start_time_unix_nano`` of the export's cumulative datapoints, the process's
start). The heartbeat's time is the latest datapoint's.

>>> from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
>>> cpu = Metric(name="system.cpu.utilization", unit="1")
>>> for core, state, value in [("0", "user", 0.5), ("0", "idle", 0.5),
...                            ("1", "user", 0.2), ("1", "idle", 0.8)]:
...     point = cpu.gauge.data_points.add(as_double=value, time_unix_nano=1_800_000_000 * 10**9)
...     _ = point.attributes.add(key="cpu", value={"string_value": core})
...     _ = point.attributes.add(key="state", value={"string_value": state})
>>> beat = heartbeat_of([cpu], now=1_800_000_001.0)
>>> beat.fields["cpu_usage"], beat.fields["memory_usage"], beat.timestamp, beat.mapped
(35.0, 0.0, 1800000000.0, ['system.cpu.utilization'])

**Spans → events.** A span is a GenAI span when it carries ``gen_ai.operation.name`` (or,
from older instrumentations, any ``gen_ai.*`` attribute). Each becomes one ``conversation``
event (:func:`events_of`): the counterpart is the tool (``execute_tool``), the agent
invoked (``invoke_agent``, ``create_agent``), else the model (response model, requested
model, provider); the text is the captured messages (``gen_ai.input.messages``,
``gen_ai.output.messages``, ``gen_ai.system_instructions``, a tool call's arguments and
result, the older ``gen_ai.prompt``/``gen_ai.completion`` and message events); the summary
names the operation, the tokens and any error, so a span without captured content is still
a conversation the token checks count. A span (GenAI or not) that carries
``agentwatch.task_id`` is that task's outcome: ``task_failed`` when its status is ERROR
(or it has ``error.type``), else ``task_completed``, with its duration.

>>> from opentelemetry.proto.trace.v1.trace_pb2 import Span
>>> span = Span(name="chat gpt-4o", end_time_unix_nano=1_800_000_000 * 10**9)
>>> for key, value in [("gen_ai.operation.name", {"string_value": "chat"}),
...                    ("gen_ai.request.model", {"string_value": "gpt-4o"}),
...                    ("gen_ai.usage.input_tokens", {"int_value": 120}),
...                    ("gen_ai.usage.output_tokens", {"int_value": 40})]:
...     _ = span.attributes.add(key=key, value=value)
>>> [event] = events_of(span, "agent-1", "t1")
>>> event["type"], event["payload"]["counterpart"], event["payload"]["tokens_in"]
('conversation', 'gpt-4o', 120)
>>> event["payload"]["summary"]
'chat with gpt-4o: 120 tokens in, 40 out'
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import orjson
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from pydantic import ValidationError

from schemas.events import (
    CONVERSATION,
    TASK_COMPLETED,
    TASK_FAILED,
    EventError,
    conversation_of,
)
from schemas.models import (
    CONVERSATION_MAX_SUMMARY_CHARS,
    CONVERSATION_MAX_TEXT_CHARS,
    LifecycleEvent,
    TaskOutcome,
)

#: The resource attributes that name the agent, strongest first (``service.instance.id``
#: is OpenTelemetry's own name for "this instance").
AGENT_ATTRIBUTES = ("agentwatch.agent_id", "service.instance.id")
#: The resource attribute that names the agent's tenant (an operator's key needs it for an
#: agent agentwatch does not know yet; an agent's key says its tenant itself).
TENANT_ATTRIBUTE = "agentwatch.tenant_id"
#: The span attributes that make a span a task of agentwatch's (its outcome).
TASK_ID_ATTRIBUTE = "agentwatch.task_id"
TASK_TYPE_ATTRIBUTE = "agentwatch.task_type"

How = Literal["ratio", "mean_ms", "error_share", "sent_bytes", "seconds", "value"]


@dataclass(frozen=True, slots=True)
class Source:
    """Where a heartbeat field may come from: a metric, read ``how``; ``busy``: the states
    a ``ratio`` counts (a leading ``!`` counts every state but that one)."""

    metric: str
    how: How
    busy: str = ""


#: The heartbeat fields and the metrics they come from, first found first.
METRIC_SOURCES: dict[str, tuple[Source, ...]] = {
    "cpu_usage": (
        Source("system.cpu.utilization", "ratio", "!idle"),
        Source("process.cpu.utilization", "ratio", "!idle"),
    ),
    "memory_usage": (Source("system.memory.utilization", "ratio", "used"),),
    "disk_usage": (Source("system.filesystem.utilization", "ratio", "used"),),
    "network_latency": (),
    "active_tasks": (),
    "completed_tasks": (),
    "failed_tasks": (),
    "error_rate": (
        Source("http.server.request.duration", "error_share"),
        Source("gen_ai.client.operation.duration", "error_share"),
    ),
    "response_time_avg": (
        Source("http.server.request.duration", "mean_ms"),
        Source("gen_ai.client.operation.duration", "mean_ms"),
    ),
    "uptime_seconds": (
        Source("process.uptime", "seconds"),
        Source("system.uptime", "seconds"),
    ),
    "bytes_out": (
        Source("system.network.io", "sent_bytes"),
        Source("process.network.io", "sent_bytes"),
    ),
}
#: ``agentwatch.<field>`` comes before every other source of the field.
NAMESPACE = "agentwatch."
#: What a field is when no metric gives it (uptime: see :func:`heartbeat_of`).
DEFAULTS: dict[str, float | int] = {
    "cpu_usage": 0.0,
    "memory_usage": 0.0,
    "disk_usage": 0.0,
    "network_latency": 0.0,
    "active_tasks": 0,
    "completed_tasks": 0,
    "failed_tasks": 0,
    "error_rate": 0.0,
    "response_time_avg": 0.0,
    "uptime_seconds": 0.0,
    "bytes_out": 0,
}
_COUNTS = frozenset({"active_tasks", "completed_tasks", "failed_tasks", "bytes_out"})
_PERCENTS = frozenset({"cpu_usage", "memory_usage", "disk_usage"})
#: The attributes that say a datapoint's state (the rest group datapoints: CPU, device).
_STATE_KEYS = (
    "state", "system.cpu.state", "cpu.mode", "system.memory.state",
    "system.filesystem.state", "process.cpu.state",
)  # fmt: skip
_DIRECTION_KEYS = ("direction", "network.io.direction", "system.network.direction")
_TO_MS = {"s": 1000.0, "ms": 1.0, "us": 0.001, "µs": 0.001, "ns": 1e-6}
_NS = 1e9


def attributes(pairs: Iterable[KeyValue]) -> dict[str, object]:
    """OTLP attributes as plain values (arrays as lists, key-value lists as dicts).

    >>> attributes([KeyValue(key="a", value=AnyValue(int_value=3)),
    ...             KeyValue(key="b", value=AnyValue(string_value="x"))])
    {'a': 3, 'b': 'x'}
    """
    return {pair.key: plain(pair.value) for pair in pairs}


def plain(value: AnyValue) -> object:
    """One ``AnyValue`` as a plain Python value (None when it holds nothing)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


@dataclass(frozen=True, slots=True)
class Claim:
    """Who a resource says it is: the agent and tenant its attributes name (None: unsaid)."""

    agent_id: str | None
    tenant_id: str | None


def claim_of(resource: Resource) -> Claim:
    """The agent (``agentwatch.agent_id``, else ``service.instance.id``) and tenant
    (``agentwatch.tenant_id``) a resource names.

    >>> claim_of(Resource(attributes=[KeyValue(key="service.instance.id",
    ...                                         value=AnyValue(string_value="agent-1"))]))
    Claim(agent_id='agent-1', tenant_id=None)
    """
    found = attributes(resource.attributes)
    agent = next((str(found[k]) for k in AGENT_ATTRIBUTES if found.get(k) not in (None, "")), None)
    tenant = found.get(TENANT_ATTRIBUTE)
    return Claim(agent, None if tenant in (None, "") else str(tenant))


@dataclass(slots=True)
class MappedHeartbeat:
    """The heartbeat fields an export's metrics give (``fields``: every numeric field of
    the heartbeat), its time, the metrics used (``mapped``), the ones no field reads
    (``ignored``), and the datapoints refused with why (``rejected``, ``reasons``)."""

    fields: dict[str, float | int]
    timestamp: float
    mapped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)


def heartbeat_of(metrics: Sequence[Metric], now: float) -> MappedHeartbeat:
    """The heartbeat fields of one agent's metrics of one export (see the module's
    docstring); ``now`` (epoch seconds) is the time when no datapoint has one."""
    by_name: dict[str, Metric] = {}
    for metric in metrics:  # (the same name from two scopes: the first)
        by_name.setdefault(metric.name, metric)
    fields: dict[str, float | int] = dict(DEFAULTS)
    result = MappedHeartbeat(fields, _latest_time(metrics) or now)
    used: set[str] = set()
    refused: set[str] = set()
    for name, sources in METRIC_SOURCES.items():
        for source in (Source(NAMESPACE + name, "value"), *sources):
            metric = by_name.get(source.metric)
            if metric is None or metric.name in refused:
                continue
            try:
                value = _read(metric, source, name)
            except _Refused as why:
                result.rejected += _point_count(metric)
                result.reasons.append(f"{metric.name}: {why}")
                refused.add(metric.name)
                continue
            if value is None:
                continue
            fields[name] = value
            used.add(metric.name)
            break
        else:
            if name == "uptime_seconds":  # the process's start, from cumulative datapoints
                started = _earliest_start(metrics)
                if started is not None:
                    fields[name] = max(0.0, result.timestamp - started)
    result.mapped = sorted(used)
    result.ignored = sorted(set(by_name) - used - refused)
    return result


class _Refused(ValueError):
    """A metric that names a field but cannot give it (say why)."""


def _read(metric: Metric, source: Source, name: str) -> float | int | None:
    """The value of field ``name`` that ``metric`` gives, read ``source.how``."""
    kind = metric.WhichOneof("data")
    if source.how in ("mean_ms", "error_share"):
        if kind != "histogram":
            raise _Refused(f"a histogram was expected, not a {kind}")
        points = metric.histogram.data_points
        count = sum(p.count for p in points)
        if count == 0:
            return None
        if source.how == "error_share":
            failed = sum(p.count for p in points if _is_error(attributes(p.attributes)))
            return failed / count
        return _ms(sum(p.sum for p in points) / count, metric.unit, "s")
    if kind == "histogram":  # agentwatch.<field> as a histogram: its mean
        points = metric.histogram.data_points
        count = sum(p.count for p in points)
        return _checked(name, sum(p.sum for p in points) / count) if count else None
    if kind not in ("gauge", "sum"):
        raise _Refused(f"a gauge, counter or histogram was expected, not a {kind}")
    points = getattr(metric, kind).data_points
    if not points:
        return None
    values = [(attributes(p.attributes), _number(p)) for p in points]
    if source.how == "ratio":
        return _checked(name, _ratio(values, source.busy, metric.unit, name))
    if source.how == "sent_bytes":
        if kind == "sum" and metric.sum.aggregation_temporality != (
            AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
        ):
            raise _Refused(
                "a cumulative byte counter does not say what was sent since the previous "
                "export: set OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta"
            )
        sent = [v for a, v in values if _direction(a) in (None, "transmit")]
        return _checked(name, _whole(name, sum(sent)))
    if source.how == "seconds":
        return _checked(name, max(v for _, v in values) * _ms(1.0, metric.unit, "s") / 1000)
    total = sum(v for _, v in values)
    if name in _COUNTS:
        return _checked(name, _whole(name, total))
    return _checked(name, total / len(values))


def _whole(name: str, value: float) -> int:
    """A count rounded to a whole number; a count that is not finite or beyond 2**53 is
    refused (``round`` raised on NaN and infinities, and made integers orjson cannot write:
    a 500, found by a fuzzer)."""
    if not math.isfinite(value) or abs(value) > 2**53:
        raise _Refused(f"{name}: {value!r} is not a count (finite, at most 2**53)")
    return round(value)


def _checked(name: str, value: float | int) -> float | int:
    if isinstance(value, float) and not math.isfinite(value):
        raise _Refused(f"{name} is not a finite number")
    if value < 0:
        raise _Refused(f"{name} is negative ({value})")
    if name in _PERCENTS:
        return min(float(value), 100.0)
    if name == "error_rate":
        return min(float(value), 1.0)
    return value if name in _COUNTS else float(value)


def _number(point: object) -> float:
    return float(point.as_double if point.WhichOneof("value") == "as_double" else point.as_int)


def _ms(value: float, unit: str, default: str) -> float:
    """``value`` in ``unit`` (``default`` when it has none) as milliseconds."""
    factor = _TO_MS.get(unit or default)
    if factor is None:
        raise _Refused(f"unit {unit!r} is not a time unit (s, ms, us, ns)")
    return value * factor


def _ratio(values: list[tuple[dict, float]], busy: str, unit: str, name: str) -> float:
    """Per group (the attributes but the state), the busy states summed; the groups
    averaged (CPU) or their largest (memory, disk); as a percentage."""
    scale = {"1": 100.0, "": 100.0, "%": 1.0}.get(unit)
    if scale is None:
        raise _Refused(f"unit {unit!r} is not a ratio (1) or a percentage (%)")
    groups: dict[tuple, float] = {}
    for attrs, value in values:
        state = next((str(attrs[k]) for k in _STATE_KEYS if k in attrs), None)
        key = tuple(sorted((k, str(v)) for k, v in attrs.items() if k not in _STATE_KEYS))
        counted = state is None or (state != busy[1:] if busy.startswith("!") else state == busy)
        groups[key] = groups.get(key, 0.0) + (value if counted else 0.0)
    shares = list(groups.values())
    combined = sum(shares) / len(shares) if name == "cpu_usage" else max(shares)
    return combined * scale


def _direction(attrs: dict) -> str | None:
    return next((str(attrs[k]) for k in _DIRECTION_KEYS if k in attrs), None)


def _is_error(attrs: dict) -> bool:
    status = attrs.get("http.response.status_code")
    return bool(attrs.get("error.type")) or (isinstance(status, int) and status >= 500)


def _points(metric: Metric) -> list:
    kind = metric.WhichOneof("data")
    return list(getattr(metric, kind).data_points) if kind else []


def _point_count(metric: Metric) -> int:
    return len(_points(metric))


def _latest_time(metrics: Sequence[Metric]) -> float | None:
    times = [p.time_unix_nano for m in metrics for p in _points(m) if p.time_unix_nano]
    return max(times) / _NS if times else None


def _earliest_start(metrics: Sequence[Metric]) -> float | None:
    starts = [
        p.start_time_unix_nano
        for m in metrics
        if m.WhichOneof("data") in ("sum", "histogram")
        and getattr(m, m.WhichOneof("data")).aggregation_temporality
        == AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
        for p in _points(m)
        if p.start_time_unix_nano
    ]
    return min(starts) / _NS if starts else None


def point_count(metrics: Iterable[Metric]) -> int:
    """How many datapoints the metrics hold (what partial success counts)."""
    return sum(_point_count(m) for m in metrics)


# --- spans ---------------------------------------------------------------------------

#: Operations whose counterpart is another agent, not a model.
_AGENT_OPERATIONS = frozenset({"invoke_agent", "create_agent"})
_MODEL_ATTRIBUTES = (
    "gen_ai.response.model", "gen_ai.request.model", "gen_ai.provider.name", "gen_ai.system",
    "server.address",
)  # fmt: skip
_IDENTIFIER_CHARS = 128


def is_genai(span_attributes: dict[str, object]) -> bool:
    """Whether a span's attributes make it a GenAI span.

    >>> is_genai({"gen_ai.operation.name": "chat"}), is_genai({"http.route": "/x"})
    (True, False)
    """
    return any(key.startswith("gen_ai.") for key in span_attributes)


def events_of(span: Span, agent_id: str, tenant_id: str, now: float | None = None) -> list[dict]:
    """The ``agents.events`` records a span stands for (none, a conversation, a task
    outcome, or both), at the span's end (``now`` for a span without times: default, the
    clock); ``ValueError`` says why a span that should give one cannot."""
    try:
        return _events_of(span, agent_id, tenant_id, now)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "span"
        raise ValueError(f"{where}: {error['msg']}") from None


def _events_of(span: Span, agent_id: str, tenant_id: str, now: float | None) -> list[dict]:
    attrs = attributes(span.attributes)
    ends = span.end_time_unix_nano or span.start_time_unix_nano
    at = ends / _NS if ends else (time.time() if now is None else now)
    failed, why = _failure(span, attrs)
    events: list[dict] = []
    if is_genai(attrs):
        payload = _conversation(span, attrs, failed, why)
        event = LifecycleEvent(
            type=CONVERSATION, agent_id=agent_id, tenant_id=tenant_id, actor=agent_id,
            timestamp=at, payload=payload,
        )  # fmt: skip
        try:
            conversation_of(event)
        except EventError as exc:
            raise ValueError(str(exc)) from None
        events.append(event.model_dump(mode="json"))
    task_id = attrs.get(TASK_ID_ATTRIBUTE)
    if task_id not in (None, ""):
        duration = max(0.0, (span.end_time_unix_nano - span.start_time_unix_nano) / _NS)
        outcome = TaskOutcome.model_validate(
            {
                "task_id": str(task_id),
                "task_type": attrs.get(TASK_TYPE_ATTRIBUTE),
                "duration_s": duration if span.end_time_unix_nano else None,
                "reason": why[:2000] if failed else "",
            }
        )
        event = LifecycleEvent(
            type=TASK_FAILED if failed else TASK_COMPLETED, agent_id=agent_id,
            tenant_id=tenant_id, actor=agent_id, timestamp=at,
            payload=outcome.model_dump(mode="json", exclude_none=True),
        )  # fmt: skip
        events.append(event.model_dump(mode="json"))
    return events


def _failure(span: Span, attrs: dict) -> tuple[bool, str]:
    """Whether the span failed (status ERROR, or ``error.type``), and why in words."""
    error_type = attrs.get("error.type")
    failed = span.status.code == Status.StatusCode.STATUS_CODE_ERROR or bool(error_type)
    why = ": ".join(str(p) for p in (error_type, span.status.message) if p) or "status ERROR"
    return failed, why


def _conversation(span: Span, attrs: dict, failed: bool, why: str) -> dict:
    operation = str(attrs.get("gen_ai.operation.name") or span.name or "gen_ai")
    if operation == "execute_tool":
        counterpart = attrs.get("gen_ai.tool.name") or span.name
    elif operation in _AGENT_OPERATIONS:
        counterpart = attrs.get("gen_ai.agent.id") or attrs.get("gen_ai.agent.name")
    else:
        counterpart = None
    counterpart = counterpart or next(
        (attrs[k] for k in _MODEL_ATTRIBUTES if attrs.get(k)), "unknown-model"
    )
    sent = _words(attrs.get("gen_ai.system_instructions")) + _words(
        attrs.get("gen_ai.input.messages")
    )
    sent += _raw(attrs.get("gen_ai.tool.call.arguments")) + _words(attrs.get("gen_ai.prompt"))
    heard = _words(attrs.get("gen_ai.output.messages")) + _words(attrs.get("gen_ai.completion"))
    heard += _raw(attrs.get("gen_ai.tool.call.result"))
    for event in span.events:  # older instrumentations: the messages as span events
        if event.name.startswith("gen_ai."):
            said = attributes(event.attributes)
            words = _words(said.get("content")) + _words(said.get("message"))
            (heard if event.name == "gen_ai.choice" else sent).extend(words)
    tokens_in = _count(attrs, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
    tokens_out = _count(attrs, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
    summary = f"{operation} with {counterpart}: {tokens_in} tokens in, {tokens_out} out"
    finish = attrs.get("gen_ai.response.finish_reasons")
    if finish:
        summary += (
            f"; finished: {', '.join(map(str, finish)) if isinstance(finish, list) else finish}"
        )
    if failed:
        summary += f"; failed: {why}"
    direction = (
        "both" if sent and heard or not (sent or heard) else "outbound" if sent else "inbound"
    )
    conversation_id = attrs.get("gen_ai.conversation.id") or span.trace_id.hex() or None
    return {
        "counterpart": str(counterpart)[:_IDENTIFIER_CHARS],
        "conversation_id": str(conversation_id)[:_IDENTIFIER_CHARS] if conversation_id else None,
        "direction": direction,
        "text": "\n".join(sent + heard)[:CONVERSATION_MAX_TEXT_CHARS],
        "summary": summary[:CONVERSATION_MAX_SUMMARY_CHARS],
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
    }


def _count(attrs: dict, *names: str) -> int:
    for name in names:
        value = attrs.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return int(min(value, 2**53))  # (+inf: 2**53, not an OverflowError)
    return 0


def _raw(value: object) -> list[str]:
    """A tool call's arguments or result, as sent (structured ones as JSON)."""
    if value is None or value == "":
        return []
    return [value if isinstance(value, str) else orjson.dumps(value).decode()]


def _words(value: object) -> list[str]:
    """The words of a captured-content attribute: GenAI messages (JSON or structured:
    ``[{"role": …, "parts": [{"type": "text", "content": …}, …]}]``), or plain text.

    >>> _words('[{"role": "user", "parts": [{"type": "text", "content": "hi"}]}]')
    ['user: hi']
    >>> _words("just text")
    ['just text']
    """
    if value is None or value == "":
        return []
    if isinstance(value, str):
        stripped = value.lstrip()
        if stripped[:1] in ("[", "{"):
            try:
                value = orjson.loads(stripped)
            except orjson.JSONDecodeError:
                return [value]
        else:
            return [value]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return [str(value)]
    lines = []
    for item in value:
        if not isinstance(item, dict):
            lines.append(str(item))
            continue
        parts = item.get("parts")
        if not isinstance(parts, list):
            parts = [item]
        text = " ".join(filter(None, (_part_text(p) for p in parts)))
        if text:
            lines.append(f"{item['role']}: {text}" if item.get("role") else text)
    return lines


def _part_text(part: object) -> str:
    if not isinstance(part, dict):
        return str(part)
    for key in ("content", "arguments", "response", "result", "text"):
        value = part.get(key)
        if value not in (None, ""):
            said = value if isinstance(value, str) else orjson.dumps(value).decode()
            name = part.get("name")
            return f"{name}({said})" if name and key == "arguments" else said
    return ""
