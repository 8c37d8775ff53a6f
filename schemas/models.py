"""Pydantic models of every message agentwatch reads or writes.

These models are the contract: the JSON Schema files beside this module are
exported from them (``agentwatch schemas``) and a test keeps the two equal.
The hot path validates heartbeats in batches (:mod:`schemas.heartbeats`) with
exactly these rules; a property test checks that both agree.

>>> hb = Heartbeat.model_validate({"agent_id": "a1", "tenant_id": "t1",
...     "timestamp": "2026-11-25T12:00:00Z", "cpu_usage": 45.2, "memory_usage": 62.1,
...     "disk_usage": 35.0, "network_latency": 12.5, "active_tasks": 3,
...     "completed_tasks": 150, "failed_tasks": 2, "error_rate": 0.013,
...     "response_time_avg": 234.5, "uptime_seconds": 86400, "bytes_out": 1024})
>>> hb.timestamp
1795608000.0
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    field_validator,
    model_validator,
)

from agentwatch.settings import Settings

#: Seconds since the epoch that a heartbeat's timestamp must lie between (2000 … 2100).
TIMESTAMP_RANGE = (946_684_800.0, 4_102_444_800.0)
#: The longest a task may be said to have run (``TaskOutcome.duration_s``): the span of
#: ``TIMESTAMP_RANGE``, the longest the shard's own count from acceptance can be.
MAX_TASK_DURATION_S = TIMESTAMP_RANGE[1] - TIMESTAMP_RANGE[0]
#: The largest latency or response time a heartbeat may state, in milliseconds (~11.6
#: days), and the longest uptime (the span of ``TIMESTAMP_RANGE``). Without them the parser
#: took any finite double: a latency of 1e200 overflowed the baselines (NaN for good, the
#: agent's detector blind) and 3.5e38 the float32 state (a range ceiling of inf).
MAX_MILLISECONDS = 1e9
MAX_UPTIME_S = MAX_TASK_DURATION_S
#: The largest number a registration may declare among its resources (cost_per_hour,
#: memory_gb, …; bytes fit too): beyond float32's range a cost was inf and every
#: assignment score of the agent NaN.
RESOURCE_MAX = 1e15

#: The seed's lifecycle states (an optional ``status`` in a heartbeat must be one of them).
AGENT_STATES = (
    "registered",
    "provisioning",
    "active",
    "idle",
    "busy",
    "degraded",
    "maintenance",
    "quarantined",
    "compromised",
    "offline",
    "decommissioning",
    "decommissioned",
)


def _epoch_seconds(value: object) -> float:
    """ISO-8601 text or epoch seconds → epoch seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("timestamp must be ISO-8601 text or epoch seconds, not a boolean")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"timestamp {value[:40]!r} is not ISO-8601") from None
        if parsed.tzinfo is None:
            raise ValueError(f"timestamp {value[:40]!r} has no time zone (add Z or +00:00)")
        return parsed.timestamp()
    raise ValueError("timestamp must be ISO-8601 text or epoch seconds")


EpochSeconds = Annotated[
    float,
    # The bounds before the validator, so the JSON schema states them (minimum, maximum).
    Field(ge=TIMESTAMP_RANGE[0], le=TIMESTAMP_RANGE[1]),
    BeforeValidator(_epoch_seconds),
]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Percent = Annotated[float, Field(strict=True, ge=0, le=100, allow_inf_nan=False)]
Count = Annotated[StrictInt, Field(ge=0, le=2**53)]
Identifier = Annotated[StrictStr, Field(min_length=1, max_length=128)]


def addressable(agent_id: str) -> str | None:
    """Why ``agent_id`` cannot name its agent in a URL path (None: it can). A ``/``
    splits the path (``%2F`` too: servers decode it before they route), and ``.`` and
    ``..`` are removed from a path by every URL parser (``%2E`` too): such an agent's
    status, detail page and quarantine by path were out of reach (found by a review).

    >>> addressable("agent-7"), addressable("*")
    (None, None)
    >>> print(addressable("x/y"))
    cannot name an agent in a URL path ('/' in it)
    >>> print(addressable(".."))
    cannot name an agent in a URL path ('.' and '..' are not names there)
    """
    if "/" in agent_id:
        return "cannot name an agent in a URL path ('/' in it)"
    if agent_id in (".", ".."):
        return "cannot name an agent in a URL path ('.' and '..' are not names there)"
    return None


def _addressable(agent_id: str) -> str:
    reason = addressable(agent_id)
    if reason is not None:
        raise ValueError(reason)
    return agent_id


#: An agent's id: an :data:`Identifier` that a URL path can hold (:func:`addressable`).
AgentIdentifier = Annotated[
    Identifier,
    AfterValidator(_addressable),
    Field(description="1-128 characters, no '/', not '.' or '..' (it names the agent in URLs)."),
]


class Heartbeat(BaseModel):
    """One heartbeat on ``agents.metrics`` (key = ``agent_id``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent_id: AgentIdentifier
    tenant_id: Identifier
    timestamp: EpochSeconds = Field(description="ISO-8601 with zone, or epoch seconds.")
    cpu_usage: Percent
    memory_usage: Percent
    disk_usage: Percent
    network_latency: Annotated[Number, Field(ge=0, le=MAX_MILLISECONDS)] = Field(
        description="Milliseconds."
    )
    active_tasks: Annotated[StrictInt, Field(ge=0, le=2**32 - 1)]
    completed_tasks: Count
    failed_tasks: Count
    error_rate: Annotated[Number, Field(ge=0, le=1)] = Field(description="Share 0…1.")
    response_time_avg: Annotated[Number, Field(ge=0, le=MAX_MILLISECONDS)] = Field(
        description="Milliseconds."
    )
    uptime_seconds: Annotated[Number, Field(ge=0, le=MAX_UPTIME_S)]
    bytes_out: Count = Field(0, description="Bytes sent since the previous heartbeat.")
    status: Literal[AGENT_STATES] | None = None  # type: ignore[valid-type]


class LifecycleEvent(BaseModel):
    """One event on a lifecycle channel (key = ``agent_id``): an agent's fact on
    ``agents.events``, an operator's command on ``agents.control``, a fact the dataflow
    derives on ``agents.state`` (``schemas.events.CHANNELS`` says which type goes where)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Identifier = Field(description="registered, status_changed, quarantine_requested, …")
    agent_id: AgentIdentifier = Field(
        description="The agent (1-128 characters, no '/', not '.' or '..'), or * for the "
        "fleet (rules, silences)."
    )
    tenant_id: Identifier
    actor: Identifier = Field(description="Who asked: a user id, or 'system'.")
    timestamp: EpochSeconds
    payload: dict[str, object] = Field(default_factory=dict)


#: How many capabilities, resources and tags a registration may declare (each).
REGISTRATION_MAX_ITEMS = 64
#: A word naming a kind, a capability, a resource or a tag: letters, digits, ``_.:/-``.
Label = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:/-]+$")]
#: A name in words, on one line (no control characters).
OneLine = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]


class Registration(BaseModel):
    """The payload of a ``registered`` event on ``agents.control`` (the envelope carries
    the agent and tenant ids, the actor and the time): what an operator declared about
    an agent when it was registered through ``POST /api/v1/agents/register``.

    >>> Registration.model_validate({"name": "Agent-001", "agent_type": "ml_processor",
    ...     "owner": "team-ml", "capabilities": ["ml_inference"]}).max_concurrent_tasks
    1
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: OneLine = Field(description="Unique within its tenant.")
    agent_type: Label = Field(description="What kind of agent: llm_worker, bot, ml_processor, …")
    owner: OneLine = Field(
        description="Who answers for it: a person or team (an agent must have one)."
    )
    version: Annotated[StrictStr, Field(max_length=64)] = ""
    capabilities: list[Label] = Field(
        default_factory=list,
        max_length=REGISTRATION_MAX_ITEMS,
        description="Task types it can do (the seed's capabilities.types).",
    )
    max_concurrent_tasks: Annotated[StrictInt, Field(ge=1, le=100_000)] = 1
    resources: dict[Label, Annotated[Number, Field(ge=0, le=RESOURCE_MAX)]] = Field(
        default_factory=dict,
        max_length=REGISTRATION_MAX_ITEMS,
        description="What it has: cpu_cores, memory_gb, gpu (1/0), …",
    )
    tags: dict[Label, Annotated[StrictStr, Field(max_length=256)]] = Field(
        default_factory=dict, max_length=REGISTRATION_MAX_ITEMS
    )
    endpoint: Annotated[StrictStr, Field(max_length=2048)] | None = Field(
        None,
        description="Where it can be reached (http, https, grpc or ws URL), without a user or "
        "password in it: it is shown to every reader of the tenant and kept in the audit trail.",
    )

    @field_validator("endpoint")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        """Refuse ``https://user:secret@host``: the registry shows the endpoint to every
        reader of the tenant, and the audit trail keeps it for good (found by a review).

        >>> try:
        ...     Registration(name="a", agent_type="bot", owner="o", endpoint="https://u:p@h")
        ... except ValueError as exc:
        ...     print(exc.errors()[0]["msg"][:59])
        Value error, endpoint holds a user or password (before '@')
        """
        if value is not None and "@" in urlsplit(value).netloc:
            raise ValueError(
                "endpoint holds a user or password (before '@'): they would be shown to every "
                "reader of the tenant and kept in the audit trail; give the address alone"
            )
        return value


#: Longest ``text`` (characters) a ``conversation`` event may carry; it is scanned whole.
CONVERSATION_MAX_TEXT_CHARS = 256 * 1024
#: Longest ``summary`` (characters) of a ``conversation`` event.
CONVERSATION_MAX_SUMMARY_CHARS = 16 * 1024


class ConversationPayload(BaseModel):
    """The payload of a ``conversation`` event on ``agents.events``: one exchange of
    the agent (the event's ``agent_id``) with a counterpart, as text or a summary.

    >>> ConversationPayload.model_validate({"counterpart": "agent-7", "text": "hi",
    ...     "tokens_in": 12, "tokens_out": 30}).direction
    'both'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    counterpart: Identifier = Field(
        description="Who the agent talked to: another agent's id, a user id, a host or a model."
    )
    conversation_id: Identifier | None = Field(None, description="Groups the events of a thread.")
    direction: Literal["inbound", "outbound", "both"] = Field(
        "both",
        description="inbound: the counterpart's words to the agent; outbound: the agent's "
        "words to the counterpart; both: the whole exchange.",
    )
    text: Annotated[StrictStr, Field(max_length=CONVERSATION_MAX_TEXT_CHARS)] = Field(
        "", description="The words exchanged (scanned whole)."
    )
    summary: Annotated[StrictStr, Field(max_length=CONVERSATION_MAX_SUMMARY_CHARS)] = Field(
        "", description="A summary, when the words themselves are not shipped (scanned too)."
    )
    tokens_in: Count = Field(0, description="Tokens the agent read in this exchange.")
    tokens_out: Count = Field(0, description="Tokens the agent wrote in this exchange.")

    @model_validator(mode="after")
    def _has_words(self) -> ConversationPayload:
        if not self.text.strip() and not self.summary.strip():
            raise ValueError("a conversation needs its text or a summary (both are empty)")
        return self


class FeatureDeviation(BaseModel):
    """How far one metric of a heartbeat stood from the agent's baseline."""

    feature: str
    value: float
    baseline_mean: float
    baseline_std: float
    z: float = Field(description="(value - mean) / std, signed.")


class AnomalyRecord(BaseModel):
    """A scored heartbeat on ``agents.anomalies`` (published when the score is high)."""

    agent_id: str
    tenant_id: str
    timestamp: float = Field(description="Event time of the heartbeat, epoch seconds.")
    score: float = Field(ge=0, le=1)
    threshold: float = Field(description="Score at or above which it counts as anomalous.")
    is_anomaly: bool
    detector: str
    reasons: list[FeatureDeviation] = Field(description="Features that drove the score.")
    episode_start: float | None = Field(
        None,
        description="Event time (epoch seconds) at which the anomaly episode this heartbeat "
        "belongs to started (the heartbeat that opened it); absent outside an episode. An "
        "episode lasts while its metrics stay off the agent's slow baseline. On the record "
        "that closes an episode (episode_end set), the start of the episode it closes.",
    )
    episode_end: float | None = Field(
        None,
        description="Set on the record of the heartbeat that closed an anomaly episode (the "
        "first whose metrics were back on the agent's baseline anomaly_episode_end_s after the "
        "last that was not): event time (epoch seconds) of the episode's last heartbeat that "
        "stood out. That heartbeat itself is outside the episode; its record has no reasons "
        "when it does not stand out on its own.",
    )


class BaselineRecord(BaseModel):
    """An agent's learned baseline on ``agents.baselines`` (published periodically)."""

    agent_id: str
    tenant_id: str
    timestamp: float = Field(description="Event time of the last heartbeat it has seen.")
    heartbeats: int
    warmed_up: bool
    mean: dict[str, float]
    std: dict[str, float]


class DeadLetter(BaseModel):
    """A message agentwatch could not accept, on ``agents.deadletter``."""

    topic: str
    partition: int
    offset: int
    reason: str
    key: str | None = Field(description="The original key, decoded as UTF-8 with replacement.")
    value_b64: str = Field(description="The original value bytes, base64.")
    value_bytes: int = Field(description="Size of the original value.")
    received_at: float = Field(description="When the dataflow rejected it, epoch seconds.")
    cluster_id: str = Field(
        "",
        description="Cluster id of the broker whose log held the message (offsets restart "
        "at 0 in a new log of the embedded broker); empty if unknown.",
    )


#: What a threat rule may look at: every number of a heartbeat, and its ``status``.
RULE_METRICS = tuple(
    name for name in Heartbeat.model_fields if name not in ("agent_id", "tenant_id", "timestamp")
)
#: How a rule reduces a metric over its window (``last``: the heartbeat itself, no window).
RULE_AGGREGATES = ("last", "avg", "max", "min", "sum", "rate_of_change", "count_changes")
RULE_COMPARISONS = (">", ">=", "<", "<=")
#: The seed's alert categories and severities (most severe first).
THREAT_CATEGORIES = ("SYSTEM", "SECURITY", "PERFORMANCE", "COMPLIANCE")
THREAT_SEVERITIES = ("EMERGENCY", "CRITICAL", "HIGH", "WARNING", "INFO")
#: Longest window or for-duration a rule may ask for (seconds): a week.
RULE_MAX_SECONDS = 7 * 86_400.0
#: Shortest window a rule may ask for (seconds): its buckets are a tenth of it, and a
#: window of 1e-300 s made them denormal and every later heartbeat batch raise.
RULE_MIN_WINDOW_S = 1.0


def _one_or_many(value: object) -> object:
    """A single metric name may be written without the list around it."""
    return [value] if isinstance(value, str) else value


def _unique(names: list[str] | None) -> list[str] | None:
    if names is not None and len(set(names)) != len(names):
        raise ValueError(f"metric lists a name twice: {names}")
    return names


RuleMetrics = Annotated[
    list[Literal[RULE_METRICS]],  # type: ignore[valid-type]
    BeforeValidator(_one_or_many),
    AfterValidator(_unique),
    Field(min_length=1, max_length=len(RULE_METRICS)),
]


#: The metrics an agent's baseline is kept for (``agentwatch.baselines.FEATURES``).
BASELINE_METRICS = (
    "cpu_usage",
    "memory_usage",
    "disk_usage",
    "network_latency",
    "active_tasks",
    "error_rate",
    "response_time_avg",
    "bytes_out",
)


def _metric_list(names: tuple[str, ...]) -> dict:
    """The JSON schema of a list of distinct metric names taken from ``names``."""
    return {
        "type": "array",
        "items": {"type": "string", "enum": list(names)},
        "minItems": 1,
        "maxItems": len(names),
        "uniqueItems": True,
    }


def _state_metric_condition_rules(schema: dict) -> None:
    """Make :class:`MetricCondition`'s JSON schema say what its validator enforces: a
    numeric metric judged on the heartbeat itself (``last``, no window) or over a window,
    or ``status`` alone, counted over a window."""
    numbers = tuple(name for name in RULE_METRICS if name != "status")
    window = {"type": "number", "exclusiveMinimum": 0, "maximum": RULE_MAX_SECONDS}
    windowed = [a for a in RULE_AGGREGATES if a != "last"]
    schema["properties"]["metric"].update(_metric_list(RULE_METRICS))
    schema["anyOf"] = [
        {
            "properties": {
                "metric": _metric_list(numbers),
                "aggregate": {"const": "last"},
                "window_s": {"type": "null"},
            }
        },
        {
            "properties": {
                "metric": _metric_list(numbers),
                "aggregate": {"enum": windowed},
                "window_s": window,
            },
            "required": ["aggregate", "window_s"],
        },
        {
            "properties": {
                "metric": {**_metric_list(("status",)), "maxItems": 1},
                "aggregate": {"const": "count_changes"},
                "window_s": window,
            },
            "required": ["aggregate", "window_s"],
        },
    ]


def _state_baseline_metrics(schema: dict) -> None:
    """Make :class:`BaselineCondition`'s JSON schema say which metrics have a baseline."""
    for name in ("metric", "log_metrics"):
        schema["properties"][name]["anyOf"] = [_metric_list(BASELINE_METRICS), {"type": "null"}]


class MetricCondition(BaseModel):
    """Holds when ``aggregate(metric) op value`` for any of the listed metrics.

    ``{"metric": "error_rate", "aggregate": "avg", "window_s": 300, "op": ">", "value": 0.2}``
    """

    # strict: a number is a number, not "5" or false, as the schema says
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, json_schema_extra=_state_metric_condition_rules
    )

    metric: RuleMetrics = Field(description="One metric name, or a list: any of them may hold.")
    aggregate: Literal[RULE_AGGREGATES] = Field(  # type: ignore[valid-type]
        "last",
        description="last: the heartbeat's own value; avg/max/min/sum over the window; "
        "rate_of_change: change per second across the window; count_changes: how often "
        "the value changed within the window.",
    )
    window_s: float | None = Field(
        None,
        ge=RULE_MIN_WINDOW_S,
        le=RULE_MAX_SECONDS,
        description="Event-time window (not with 'last').",
    )
    op: Literal[RULE_COMPARISONS]  # type: ignore[valid-type]
    value: Number

    @model_validator(mode="after")
    def _consistent(self) -> MetricCondition:
        if self.aggregate == "last" and self.window_s is not None:
            raise ValueError(
                "aggregate 'last' judges each heartbeat alone: drop window_s, or choose "
                "avg, max, min, sum, rate_of_change or count_changes"
            )
        if self.aggregate != "last" and self.window_s is None:
            raise ValueError(f"aggregate {self.aggregate!r} needs window_s (event-time seconds)")
        if "status" in self.metric and (self.aggregate != "count_changes" or len(self.metric) > 1):
            raise ValueError(
                "status is text: it can only be counted alone (metric 'status', "
                "aggregate 'count_changes')"
            )
        return self


class BaselineCondition(BaseModel):
    """Holds when any listed metric is more than ``baseline_sigma`` std from the
    agent's own baseline (only once the baseline is warm). A rule's ``for_s``
    counts per metric: one metric must stay beyond for that long.

    ``{"baseline_sigma": 3}`` watches every metric that has a baseline.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, json_schema_extra=_state_baseline_metrics
    )

    baseline_sigma: float = Field(gt=0, le=100, description="Deviations from the mean.")
    metric: RuleMetrics | None = Field(
        None, description="Metrics to watch; default every metric with a baseline."
    )
    log_metrics: RuleMetrics | None = Field(
        None,
        description="Metrics whose rise is judged on a log scale: a value above the mean is "
        "beyond when it is beyond baseline_sigma of a log-normal law with the baseline's mean "
        "and std (for right-skewed metrics such as latencies and byte counts, whose normal "
        "rises pass a symmetric band far more often). Each must be one the rule watches "
        "(in `metric`, when given; otherwise 422). Default: none.",
    )


def _condition_kind(value: object) -> str:
    if isinstance(value, dict):
        return "baseline" if "baseline_sigma" in value else "threshold"
    return "baseline" if isinstance(value, BaselineCondition) else "threshold"


RuleCondition = Annotated[
    Annotated[MetricCondition, Tag("threshold")] | Annotated[BaselineCondition, Tag("baseline")],
    Discriminator(_condition_kind),
]


class ThreatRuleSpec(BaseModel):
    """A threat rule, as operators write it (``/api/v1/rules``) and the dataflow runs it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: Annotated[StrictStr, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")] = Field(
        description="Lower-case letters, digits and _, starting with a letter (≤ 64)."
    )
    description: Annotated[StrictStr, Field(max_length=500)] = ""
    condition: RuleCondition
    for_s: float = Field(
        0.0, ge=0, le=RULE_MAX_SECONDS, description="How long the condition must hold first."
    )
    category: Literal[THREAT_CATEGORIES]  # type: ignore[valid-type]
    severity: Literal[THREAT_SEVERITIES]  # type: ignore[valid-type]
    enabled: StrictBool = True


class RuleChange(BaseModel):
    """A runtime change of the rule set: ``add``/``update`` carry the rule, the others its name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["add", "update", "enable", "disable", "delete"]
    rule: ThreatRuleSpec | None = None
    name: Identifier | None = None

    @model_validator(mode="after")
    def _target(self) -> RuleChange:
        if self.action in ("add", "update"):
            if self.rule is None:
                raise ValueError(f"action {self.action!r} needs the whole rule in 'rule'")
            if self.name not in (None, self.rule.name):
                raise ValueError(f"name {self.name!r} differs from rule.name {self.rule.name!r}")
        elif self.name is None or self.rule is not None:
            raise ValueError(f"action {self.action!r} takes only the rule's 'name'")
        return self

    @property
    def target(self) -> str:
        """The name of the rule this change is about."""
        return self.rule.name if self.rule is not None else str(self.name)


class ThreatEvidence(BaseModel):
    """Why a threat was raised: what the rule looked at, and over which span."""

    condition: str = Field(description="The rule's condition, in words.")
    values: dict[str, float] = Field(description="The judged value of each metric.")
    baseline: list[FeatureDeviation] = Field(
        default_factory=list, description="Metrics off their baseline (baseline rules)."
    )
    window_start: float = Field(description="Start of the judged span, epoch seconds.")
    window_end: float = Field(description="End of the judged span, epoch seconds.")
    excerpts: list[str] = Field(
        default_factory=list,
        description="Passages that matched (conversation monitoring), secrets and personal "
        "data in them replaced by [REDACTED:<pattern>].",
    )


class Threat(BaseModel):
    """A threat on ``agents.threats``: a rule (or detector) that held for an agent."""

    agent_id: str
    tenant_id: str
    rule: str = Field(description="Name of the rule, or of the detector, that raised it.")
    category: Literal[THREAT_CATEGORIES]  # type: ignore[valid-type]
    severity: Literal[THREAT_SEVERITIES]  # type: ignore[valid-type]
    evidence: ThreatEvidence
    first_seen: float = Field(description="Event time the condition began to hold.")
    last_seen: float = Field(description="Event time of the latest heartbeat it held for.")


class ScoreChange(BaseModel):
    """A change of an agent's security score (the score history, ClickHouse ``security_scores``).

    Each record's ``delta`` is the change since the agent's previous record, so the
    history adds up: previous ``score`` + ``delta`` = ``score``.
    """

    agent_id: str
    tenant_id: str
    timestamp: float = Field(description="Event time of the change, epoch seconds.")
    score: float = Field(ge=0, le=100, description="The score after the change.")
    delta: float = Field(description="Change since the agent's previous record (< 0: a loss).")
    cause: str = Field(
        description="Name of the rule or detector whose threat took points, or "
        "'recovery' (clean for long enough), or 'release' (an operator released it)."
    )
    first_seen: float | None = Field(
        None, description="When the threat's condition began to hold (threats only)."
    )


class AgentCommand(BaseModel):
    """An order to an agent's runtime on ``agents.commands`` (key = ``agent_id``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command_id: Identifier = Field(
        description="Deterministic id: a replay of the same decision carries the same id."
    )
    agent_id: Identifier
    tenant_id: Identifier
    command: Identifier = Field(description="What to do: quarantine, …")
    reason: Annotated[StrictStr, Field(max_length=2000)] = Field(description="Why, in words.")
    issued_at: EpochSeconds = Field(description="Event time of the decision.")
    actor: Identifier = Field("system", description="Who ordered it: a user id, or 'system'.")
    score: float | None = Field(
        None, ge=0, le=100, description="The agent's security score when it was ordered."
    )
    task_id: Identifier | None = Field(
        None, description="The task it concerns (run_task, cancel_task), if any."
    )


#: The states of an alert (:mod:`agentwatch.alerts`): ``pending`` while its condition
#: holds for less than the rule's for-duration, ``firing`` once the threat is raised,
#: ``resolved`` once the condition has stopped holding for long enough.
ALERT_STATES = ("pending", "firing", "resolved")


class Alert(BaseModel):
    """A change of an alert's state on ``agents.alerts`` (key = ``fingerprint``).

    One alert per fingerprint (agent + rule); an event is published only when its
    state, its flapping mark or its silencing changes, never per heartbeat.
    """

    fingerprint: str = Field(description="Stable id of agent + rule (16 hex digits).")
    agent_id: str
    tenant_id: str
    rule: str = Field(description="Name of the rule, or of the detector, behind the alert.")
    category: Literal[THREAT_CATEGORIES] | None = Field(  # type: ignore[valid-type]
        description="Known once the threat is raised or the rule is known."
    )
    severity: Literal[THREAT_SEVERITIES] | None  # type: ignore[valid-type]
    state: Literal[ALERT_STATES]  # type: ignore[valid-type]
    started_at: float = Field(description="Event time the condition began to hold.")
    fired_at: float | None = Field(description="Event time the threat was raised.")
    resolved_at: float | None = Field(description="Event time the condition stopped holding.")
    last_seen: float = Field(description="Latest event time the condition was known to hold.")
    updated_at: float = Field(
        description="Event time of this change (a resolution: resolved_at + the hold)."
    )
    flapping: bool = Field(description="Refired too often after resolving: held firing.")
    flap_count: int = Field(ge=0, description="Refires within the flap window, in a row.")
    summary: str
    evidence: ThreatEvidence | None = Field(description="The threat's evidence, once fired.")
    silenced: bool = Field(description="A silence matched it: delivery skips this event.")


def _matcher(description: str) -> object:
    return Field("*", min_length=1, max_length=128, description=description)


class Silence(BaseModel):
    """Mutes the alerts it matches from ``starts_at`` to ``ends_at`` (``/api/v1/silences``).

    Every matcher is an exact value or ``*`` (anything). Silenced alerts still
    change state; their events carry ``silenced: true`` and are not delivered.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Identifier
    agent_id: StrictStr = _matcher("Agent id, or *.")
    tenant_id: StrictStr = _matcher("Tenant id, or *.")
    rule: StrictStr = _matcher("Rule or detector name, or *.")
    category: StrictStr = _matcher("SYSTEM, SECURITY, PERFORMANCE, COMPLIANCE, or *.")
    severity: StrictStr = _matcher("EMERGENCY, CRITICAL, HIGH, WARNING, INFO, or *.")
    starts_at: EpochSeconds
    ends_at: EpochSeconds
    created_by: Identifier
    comment: Annotated[StrictStr, Field(max_length=2000)] = ""

    @model_validator(mode="after")
    def _span(self) -> Silence:
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        for name, allowed in (("category", THREAT_CATEGORIES), ("severity", THREAT_SEVERITIES)):
            value = getattr(self, name)
            if value != "*" and value not in allowed:
                raise ValueError(f"{name} {value!r} is none of {', '.join(allowed)} or *")
        return self


class Incident(BaseModel):
    """A coordinated threat on ``agents.incidents`` (key = ``incident_id``): at least K
    agents of one tenant raised the same kind of threat within a window.

    Published when it opens, and again (same id, higher ``revision``) when more agents join.
    """

    incident_id: str = Field(description="Deterministic from tenant, rule and window start.")
    tenant_id: str
    rule: str
    category: Literal[THREAT_CATEGORIES]  # type: ignore[valid-type]
    severity: Literal[THREAT_SEVERITIES] = "EMERGENCY"  # type: ignore[valid-type]
    agent_ids: list[str] = Field(description="The agents linked, in the order they joined.")
    truncated: bool = Field(False, description="More agents joined than are listed.")
    first_seen: float = Field(description="Event time of the earliest linked threat.")
    last_seen: float = Field(description="Event time of the latest linked threat.")
    revision: int = Field(0, ge=0, description="0 when opened, +1 per update.")


# --- orchestration (docs/orchestration.md) ----------------------------------------

#: A task's priorities, lowest first.
TASK_PRIORITIES = ("low", "normal", "high", "critical")
#: A task's statuses (``TaskRecord.status``): ``assigned`` by the API (not yet confirmed),
#: ``accepted`` or ``refused`` by the agent's shard, then ``completed``, ``failed``,
#: ``released`` (withdrawn by the API: moved or cancelled) or ``expired`` (no outcome came).
TASK_STATUSES = ("assigned", "accepted", "refused", "completed", "failed", "released", "expired")
#: The components of an assignment score, in the order of the seed's weights.
SCORE_COMPONENTS = ("performance", "cost", "availability", "sla")
Share = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class TaskRequest(BaseModel):
    """A task to place, as ``POST /api/v1/tasks/assign`` takes it (the seed's task_data).

    >>> TaskRequest.model_validate({"task_type": "data_processing",
    ...     "required_capabilities": ["data_processing"], "priority": "high"}).priority
    'high'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: Identifier | None = Field(None, description="Made by the API when absent.")
    task_type: Label = Field(
        "default", description="What kind of task (the models predict per type)."
    )
    required_capabilities: list[Label] = Field(
        default_factory=list,
        max_length=REGISTRATION_MAX_ITEMS,
        description="Every one must be among the agent's registered capabilities.",
    )
    priority: Literal[TASK_PRIORITIES] = "normal"  # type: ignore[valid-type]
    resource_requirements: dict[Label, Annotated[Number, Field(ge=0)]] = Field(
        default_factory=dict,
        max_length=REGISTRATION_MAX_ITEMS,
        description="Each must be covered by the agent's registered resources.",
    )
    estimated_duration: Annotated[Number, Field(gt=0)] | None = Field(None, description="Seconds.")
    deadline: EpochSeconds | None = Field(None, description="When it must be done (SLA).")
    tenant_id: Identifier | None = Field(None, description="The caller's tenant when absent.")
    exclude_agents: list[Identifier] = Field(
        default_factory=list, max_length=1000, description="Agents not to choose."
    )


#: The seed's weights, as the settings module states them (``orchestration_weight_*``).
_SEED_WEIGHTS = {
    name: Settings.model_fields[f"orchestration_weight_{name}"].default for name in SCORE_COMPONENTS
}


class ScoringWeights(BaseModel):
    """The weight of each component of the assignment score (the seed's 40/30/20/10);
    the payload of ``weights_changed``. Not all zero; they need not sum to 1 (the score
    divides by their sum).

    >>> ScoringWeights().performance, ScoringWeights(cost=0).total
    (0.4, 0.7)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    performance: Share = _SEED_WEIGHTS["performance"]
    cost: Share = _SEED_WEIGHTS["cost"]
    availability: Share = _SEED_WEIGHTS["availability"]
    sla: Share = _SEED_WEIGHTS["sla"]

    @property
    def total(self) -> float:
        return round(self.performance + self.cost + self.availability + self.sla, 12)

    @model_validator(mode="after")
    def _not_all_zero(self) -> ScoringWeights:
        if self.total <= 0:
            raise ValueError("at least one weight must be above 0")
        return self


class ScoreComponents(BaseModel):
    """An assignment score's components, each 0 (worst) … 1 (best)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    performance: Share
    cost: Share
    availability: Share
    sla: Share


class TaskAssignment(BaseModel):
    """The payload of ``task_assigned`` on ``agents.control`` (key = the chosen agent):
    the task, and what the API decided with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: Identifier
    task_type: Label = "default"
    priority: Literal[TASK_PRIORITIES] = "normal"  # type: ignore[valid-type]
    required_capabilities: list[Label] = Field(default_factory=list)
    resource_requirements: dict[Label, Annotated[Number, Field(ge=0)]] = Field(default_factory=dict)
    estimated_duration: Annotated[Number, Field(gt=0)] | None = None
    deadline: EpochSeconds | None = None
    attempt: Annotated[StrictInt, Field(ge=1, le=1000)] = Field(
        1, description="1, then +1 each time the task is placed again (refused, moved)."
    )
    score: Share = Field(description="The chosen agent's combined score.")
    components: ScoreComponents
    weights: ScoringWeights
    p_success: Share | None = Field(None, description="Predicted success, if known.")
    expected_duration_s: Annotated[Number, Field(ge=0)] | None = Field(
        None, description="Predicted completion time, if known."
    )
    assigned_by: Identifier = Field(description="The API process that decided.")
    moved_from: Identifier | None = Field(None, description="The agent it was moved from.")


class TaskOutcome(BaseModel):
    """The payload of an agent's ``task_completed`` or ``task_failed`` on ``agents.events``
    (other fields an agent adds are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    task_id: Identifier
    task_type: Label | None = Field(None, description="Known to the shard if it assigned it.")
    duration_s: Annotated[Number, Field(ge=0, le=MAX_TASK_DURATION_S)] | None = Field(
        None, description="How long it ran; the shard's own count from acceptance if absent."
    )
    reason: Annotated[StrictStr, Field(max_length=2000)] = ""


class TaskRecord(BaseModel):
    """A task as its agent's shard knows it: the payload of ``task_changed`` on
    ``agents.state`` (one per change of status) and a row of the ``tasks`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: Identifier
    agent_id: Identifier
    tenant_id: Identifier
    task_type: Label = "default"
    priority: Literal[TASK_PRIORITIES] = "normal"  # type: ignore[valid-type]
    status: Literal[TASK_STATUSES]  # type: ignore[valid-type]
    attempt: int = 1
    required_capabilities: list[str] = Field(default_factory=list)
    score: float | None = None
    components: ScoreComponents | None = None
    p_success: float | None = None
    expected_duration_s: float | None = None
    deadline: float | None = None
    assigned_at: float = Field(description="Event time of the task_assigned.")
    accepted_at: float | None = None
    finished_at: float | None = None
    duration_s: float | None = None
    sla_met: bool | None = Field(None, description="Finished by its deadline (None: no deadline).")
    reason: str = Field("", description="Why refused, failed, released or expired.")
    agent_active_tasks: int = Field(ge=0, description="The agent's open tasks after the change.")
    capacity: int = Field(ge=0, description="The agent's max_concurrent_tasks.")
    assigned_by: str = ""
    updated_at: float = Field(description="Event time of this change.")


class TypeEstimate(BaseModel):
    """What the models predict for an agent on one task type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    p_success: Share
    expected_duration_s: float | None = None
    outcomes: int = Field(ge=0, description="Outcomes of this agent on this type seen.")


class AssignmentScore(BaseModel):
    """An agent's assignment score and its parts, on ``agents.assignment_scores``
    (key = ``agent_id``) and in the ``assignment_scores`` table. Published when it moved
    (by ``orchestration_score_min_change``, at most every ``orchestration_score_interval_s``
    on heartbeats alone) or at once on a task's change, a state change or new weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent_id: str
    tenant_id: str
    timestamp: float = Field(description="Event time, epoch seconds.")
    score: Share = Field(description="Weighted sum of the components / sum of the weights.")
    performance: Share
    cost: Share
    availability: Share
    sla: Share
    weights: ScoringWeights
    state: str = Field(description="The agent's lifecycle state.")
    active_tasks: int = Field(ge=0, description="Tasks accepted and not finished.")
    capacity: int = Field(ge=0, description="max_concurrent_tasks.")
    success_rate: Share = Field(description="Smoothed share of tasks completed.")
    response_time_ms: float = Field(ge=0, description="Smoothed response_time_avg.")
    sla_met_rate: Share = Field(description="Smoothed share of deadlines met.")
    tasks_completed: int = Field(ge=0)
    tasks_failed: int = Field(ge=0)
    p_fail: Share | None = Field(
        None, description="Probability the agent fails within orchestration_failure_horizon_s."
    )
    by_type: dict[str, TypeEstimate] = Field(
        default_factory=dict, description="Predictions per task type it has done."
    )
    cause: str = Field(description="heartbeat, task, state or weights.")


class ModelStats(BaseModel):
    """One shard's online models and their rolling accuracy over the latest outcomes:
    the payload of ``model_stats`` on ``agents.state``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shard: str
    outcomes: int = Field(ge=0, description="Outcomes learned from since start.")
    success_accuracy: Share | None = Field(None, description="Rolling, predicted p ≥ 0.5.")
    success_log_loss: float | None = None
    duration_mae_s: float | None = Field(None, description="Rolling mean absolute error.")
    failure_accuracy: Share | None = None
    failure_samples: int = Field(0, ge=0)
    window: int = Field(description="How many latest outcomes the rolling figures cover.")
    timestamp: float


#: Every exported model, by file name under ``schemas/``.
EXPORTED = {
    "heartbeat": Heartbeat,
    "lifecycle_event": LifecycleEvent,
    "conversation": ConversationPayload,
    "registration": Registration,
    "anomaly": AnomalyRecord,
    "baseline": BaselineRecord,
    "deadletter": DeadLetter,
    "threat_rule": ThreatRuleSpec,
    "rule_change": RuleChange,
    "threat": Threat,
    "score_change": ScoreChange,
    "agent_command": AgentCommand,
    "alert": Alert,
    "silence": Silence,
    "incident": Incident,
    "task_request": TaskRequest,
    "task_assignment": TaskAssignment,
    "task_outcome": TaskOutcome,
    "task_record": TaskRecord,
    "assignment_score": AssignmentScore,
    "scoring_weights": ScoringWeights,
}
