"""The shapes the HTTP API answers with (pydantic models, published in the OpenAPI at ``/docs``).

Times are ISO-8601 in UTC; durations are seconds; lags are counts of Kafka
messages. A value the API cannot know right now is ``null``, with a field
that says why, never a guess.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from schemas.models import (
    ALERT_STATES,
    TASK_PRIORITIES,
    TASK_STATUSES,
    THREAT_CATEGORIES,
    THREAT_SEVERITIES,
    FeatureDeviation,
    ScoreComponents,
    TypeEstimate,
)

#: A threat's category and severity, as the seed names them.
ThreatCategory = Literal[THREAT_CATEGORIES]  # type: ignore[valid-type]
ThreatSeverity = Literal[THREAT_SEVERITIES]  # type: ignore[valid-type]
#: An alert's state.
AlertStateName = Literal[ALERT_STATES]  # type: ignore[valid-type]


class LatestMetrics(BaseModel):
    """The agent's most recent heartbeat, as stored in table ``metrics``."""

    timestamp: datetime = Field(description="Event time of the heartbeat (UTC).")
    cpu_usage: float
    memory_usage: float
    disk_usage: float
    network_latency: float
    active_tasks: int
    completed_tasks: int
    failed_tasks: int
    error_rate: float
    response_time_avg: float
    uptime_seconds: float
    bytes_out: int
    status: str | None = Field(description="The status the agent reported, if any.")


class Baseline(BaseModel):
    """The agent's learned baseline (latest snapshot in table ``baselines``)."""

    timestamp: datetime = Field(description="Event time of the last heartbeat it had seen.")
    heartbeats: int = Field(description="Heartbeats learned so far.")
    warmed_up: bool = Field(description="True once the warm-up is over and anomalies may fire.")
    mean: dict[str, float]
    std: dict[str, float]


class Anomaly(BaseModel):
    """One scored heartbeat from table ``anomalies``."""

    timestamp: datetime = Field(description="Event time of the scored heartbeat (UTC).")
    score: float = Field(description="Anomaly score in [0, 1].")
    threshold: float = Field(description="Score at or above which it counts as anomalous.")
    is_anomaly: bool
    detector: str
    top_feature: str = Field(description="The feature that drove the score most.")
    reasons: list[FeatureDeviation] = Field(
        description="Features that drove the score and how far they stood from baseline."
    )
    episode_start: datetime | None = Field(
        None,
        description="Start of the anomaly episode this heartbeat belongs to (UTC): the "
        "heartbeat that opened it; null outside an episode. A level shift or a drift is one "
        "episode, its records sharing this start. On the record that closes an episode "
        "(episode_end set), the start of the episode it closes.",
    )
    episode_end: datetime | None = Field(
        None,
        description="Set on the record of the heartbeat that closed an anomaly episode: its "
        "last heartbeat that stood out (UTC). That heartbeat itself is outside the episode.",
    )


class Evidence(BaseModel):
    """Why a threat was raised: what the rule judged, and over which span of event time."""

    condition: str = Field(description="The rule's condition, in words.")
    values: dict[str, float] = Field(description="The judged value of each metric.")
    baseline: list[FeatureDeviation] = Field(
        description="Metrics off the agent's baseline (baseline rules; otherwise empty)."
    )
    window_start: datetime = Field(description="Start of the judged span (UTC).")
    window_end: datetime = Field(description="End of the judged span (UTC).")
    excerpts: list[str] = Field(
        default_factory=list,
        description="Passages that matched (conversation monitoring), secrets and personal "
        "data replaced by [REDACTED:<pattern>].",
    )


class AgentThreat(BaseModel):
    """One threat episode of an agent, from table ``threats``."""

    rule: str = Field(description="The rule, or detector, that raised it.")
    category: ThreatCategory
    severity: ThreatSeverity
    first_seen: datetime = Field(description="Event time the condition began to hold (UTC).")
    last_seen: datetime = Field(description="Event time of the latest heartbeat it held for.")
    evidence: Evidence


class Orchestration(BaseModel):
    """The agent as task assignment sees it now (the seed's ``status['orchestration']``)."""

    performance_level: str = Field(
        description="The performance component in words: excellent, good, fair, poor; "
        "unknown until the dataflow scored the agent (its components are neutral until then)."
    )
    score: float = Field(description="Its assignment score with the current weights, 0…1.")
    components: dict[str, float] = Field(
        description="performance, cost, availability (free slots after reservations), sla."
    )
    active_tasks: int = Field(
        description="Open tasks (the shard's count) + this API process's reservations."
    )
    capacity: int = Field(description="max_concurrent_tasks.")
    p_fail: float | None = Field(
        description="Probability it fails within AGENTWATCH_ORCHESTRATION_FAILURE_HORIZON_S."
    )


class AgentStatus(BaseModel):
    """What agentwatch knows about one agent now."""

    agent_id: str
    tenant_id: str | None
    last_heartbeat: datetime | None = Field(description="Event time of the latest heartbeat.")
    seconds_since_heartbeat: float | None = Field(
        description="Wall-clock seconds between the latest heartbeat's event time and now."
    )
    metrics: LatestMetrics | None = Field(description="Latest heartbeat; null if none stored.")
    baseline: Baseline | None = Field(description="Latest baseline; null before the first one.")
    latest_anomaly: Anomaly | None = Field(
        description="Most recent anomaly (a heartbeat the detector decided is anomalous; "
        "the scored heartbeats around it are at /anomalies); null if none."
    )
    recent_threats: list[AgentThreat] = Field(
        description="The agent's latest threats (up to 5), newest first."
    )
    security_score: float = Field(
        description="The agent's security score (0-100) after its latest recorded change; "
        "the initial score if it never changed."
    )
    quarantined: bool = Field(description="Whether the agent is quarantined now.")
    lifecycle_state: str | None = Field(
        None,
        description="The agent's status as the dataflow last changed it (the latest "
        "`status_changed` on agents.state): `offline` after no heartbeat for the grace "
        "(AGENTWATCH_HEARTBEAT_OFFLINE_MISSED intervals), `active` once heartbeats return, "
        "`quarantined`…; null if it never changed.",
    )
    lifecycle_since: datetime | None = Field(
        None, description="When the agent entered its lifecycle state (event time)."
    )
    health: float | None = Field(
        None, description="The agent's health score (0-100) as the dataflow last banded it."
    )
    health_band: str | None = Field(None, description="The band of that health score.")
    name: str | None = Field(None, description="Its registered name (null: never registered).")
    agent_type: str | None = Field(None, description="Its registered type.")
    owner: str | None = Field(None, description="Who answers for it (null: no owner).")
    registered_at: datetime | None = Field(
        None, description="When it was registered (null: it registered itself by beating)."
    )
    orphaned: bool = Field(
        False,
        description="No owner (it registered itself with its first heartbeat), or silent "
        "past AGENTWATCH_AGENT_ORPHAN_AFTER_S.",
    )
    orphan_reason: str | None = Field(None, description="Why it is orphaned.")
    cluster: int | None = Field(
        None,
        description="Its behaviour cluster (GET /api/v1/orchestration/clusters); null until "
        "the dataflow has grouped it.",
    )
    cluster_description: str | None = Field(
        None, description="That cluster in words, e.g. 'fast, reliable, lightly loaded'."
    )
    orchestration: Orchestration | None = Field(
        None, description="Task assignment's view of it (null: not in this API's fleet)."
    )


class AnomalyList(BaseModel):
    """Anomalies of one agent in a time range, newest first."""

    agent_id: str
    since: datetime | None = Field(description="Inclusive lower bound, if given.")
    until: datetime | None = Field(description="Inclusive upper bound, if given.")
    limit: int
    count: int = Field(description="Number of anomalies returned (at most ``limit``).")
    anomalies: list[Anomaly]


class AnomalyEpisode(BaseModel):
    """One anomaly episode of an agent: a sustained anomaly from the heartbeat that opened
    it to its last heartbeat that stood out, from the ``anomalies`` records that name it."""

    start: datetime = Field(description="The heartbeat that opened it (UTC).")
    end: datetime | None = Field(
        description="Its last heartbeat that stood out (UTC), once a later heartbeat closed it "
        "(anomaly_episode_end_s after that one); null while it is open."
    )
    last_record: datetime = Field(
        description="The newest record inside it (UTC): while open, how recent it is."
    )
    records: int = Field(description="Records published inside it (heartbeats that stood out).")
    anomalies: int = Field(description="Of those, the ones that fired (``is_anomaly``).")
    peak_score: float = Field(description="The highest score of its records.")
    metrics: list[str] = Field(
        description="The metrics its records name as reasons, sorted (what broke)."
    )


class EpisodeList(BaseModel):
    """Anomaly episodes of one agent that began in a time range, newest first."""

    agent_id: str
    since: datetime | None = Field(description="Inclusive lower bound of start, if given.")
    until: datetime | None = Field(description="Inclusive upper bound of start, if given.")
    limit: int
    count: int = Field(description="Number of episodes returned (at most ``limit``).")
    episodes: list[AnomalyEpisode]


class ThreatList(BaseModel):
    """Threats of one agent that began in a time range, newest first."""

    agent_id: str
    since: datetime | None = Field(description="Inclusive lower bound of first_seen, if given.")
    until: datetime | None = Field(description="Inclusive upper bound of first_seen, if given.")
    severity: list[ThreatSeverity] | None = Field(description="Severities asked for, if any.")
    category: list[ThreatCategory] | None = Field(description="Categories asked for, if any.")
    limit: int
    count: int = Field(description="Number of threats returned (at most ``limit``).")
    threats: list[AgentThreat]


class AgentAlert(BaseModel):
    """An alert (agent + rule) in its current state, from table ``alerts``."""

    fingerprint: str = Field(description="Stable id of agent + rule.")
    agent_id: str
    tenant_id: str
    rule: str
    category: ThreatCategory | None = Field(description="Null until the rule's threat is known.")
    severity: ThreatSeverity | None = Field(description="Null until the rule's threat is known.")
    state: AlertStateName
    started_at: datetime = Field(description="Event time the condition began to hold.")
    fired_at: datetime | None = Field(description="Event time the threat was raised.")
    resolved_at: datetime | None = Field(description="Event time the condition stopped holding.")
    last_seen: datetime = Field(description="Latest event time the condition was known to hold.")
    updated_at: datetime = Field(description="Event time of this state.")
    flapping: bool
    flap_count: int
    summary: str
    evidence: Evidence | None = Field(description="The threat's evidence, once fired.")
    silenced: bool


class AlertList(BaseModel):
    """Alerts in their current state, most recently changed first."""

    count: int
    alerts: list[AgentAlert]


class ScoreEntry(BaseModel):
    """One change of an agent's security score, from table ``security_scores``."""

    timestamp: datetime = Field(description="Event time of the change.")
    score: float = Field(description="The score after the change.")
    delta: float = Field(description="Points gained (> 0) or lost (< 0).")
    cause: str = Field(description="The rule or detector that took points, recovery or release.")
    first_seen: datetime | None = Field(description="When the threat's condition began to hold.")


class AgentSecurity(BaseModel):
    """An agent's security score, why it stands where it does, and its quarantine."""

    agent_id: str
    tenant_id: str | None
    score: float = Field(description="The current score (0-100).")
    as_of: datetime | None = Field(description="Event time of the latest change; null if none.")
    quarantined: bool
    quarantined_since: datetime | None = Field(description="When the quarantine began.")
    quarantine_reason: str | None
    quarantine_requested: bool = Field(
        description="An operator asked for a quarantine that has not taken effect yet."
    )
    deductions: dict[str, float] = Field(
        description="Points taken per rule or detector, over the changes listed."
    )
    changes: list[ScoreEntry] = Field(description="The latest changes of the score, newest first.")


class AgentIncident(BaseModel):
    """A coordinated threat: many agents of a tenant raised the same kind of threat."""

    incident_id: str
    tenant_id: str
    rule: str
    category: ThreatCategory
    severity: ThreatSeverity
    agent_ids: list[str]
    truncated: bool = Field(description="More agents joined than are listed.")
    first_seen: datetime
    last_seen: datetime
    revision: int = Field(description="0 when opened, +1 per agent that joined.")


class IncidentList(BaseModel):
    """Incidents, most recent first."""

    count: int
    incidents: list[AgentIncident]


#: A task's status and priority (schemas.models).
TaskStatusName = Literal[TASK_STATUSES]  # type: ignore[valid-type]
TaskPriorityName = Literal[TASK_PRIORITIES]  # type: ignore[valid-type]


class TaskView(BaseModel):
    """A task in its latest status, from table ``tasks`` (the API's ``task_assigned``, then
    each ``task_changed`` of the agent's shard; the latest wins)."""

    task_id: str
    tenant_id: str
    agent_id: str = Field(description="The agent it was assigned to last.")
    task_type: str
    priority: TaskPriorityName
    status: TaskStatusName = Field(
        description="assigned (by the API, not yet confirmed), accepted or refused (by the "
        "agent's shard), then completed, failed, released (moved or cancelled) or expired."
    )
    attempt: int = Field(description="1, then +1 each time the task was placed again.")
    required_capabilities: list[str]
    score: float | None = Field(description="The agent's assignment score when chosen.")
    components: ScoreComponents | None = Field(description="That score's components.")
    p_success: float | None = Field(description="Predicted success when assigned, if known.")
    expected_duration_s: float | None = Field(
        description="Predicted completion time when assigned, if known."
    )
    deadline: datetime | None = Field(description="When it must be done (SLA), if any.")
    assigned_at: datetime
    accepted_at: datetime | None = Field(description="When the agent's shard accepted it.")
    finished_at: datetime | None = Field(description="When its outcome came (or it expired).")
    duration_s: float | None = Field(description="How long it ran.")
    sla_met: bool | None = Field(description="Finished by its deadline (null: no deadline).")
    reason: str = Field(description="Why refused, failed, released or expired.")
    agent_active_tasks: int = Field(
        description="The agent's open tasks after this change, as its shard counts them (0 "
        "while only the API's assignment is known)."
    )
    capacity: int = Field(description="The agent's max_concurrent_tasks (0: not known yet).")
    assigned_by: str = Field(description="The API process that decided.")
    updated_at: datetime = Field(description="Event time of the latest change.")


class TaskList(BaseModel):
    """Tasks in their latest status, newest assignment first."""

    count: int
    tasks: list[TaskView]


class AssignmentScoreEntry(BaseModel):
    """One published assignment score of an agent, from table ``assignment_scores``."""

    timestamp: datetime = Field(description="Event time.")
    score: float = Field(description="Weighted sum of the components / sum of the weights, 0…1.")
    performance: float
    cost: float
    availability: float
    sla: float
    weights: dict[str, float] = Field(description="The weights the score was made with.")
    state: str = Field(description="The agent's lifecycle state.")
    active_tasks: int
    capacity: int
    success_rate: float
    response_time_ms: float
    sla_met_rate: float
    tasks_completed: int
    tasks_failed: int
    p_fail: float | None = Field(description="Probability the agent fails within the horizon.")
    by_type: dict[str, TypeEstimate] = Field(description="Predictions per task type.")
    cause: str = Field(description="What published it: heartbeat, task, state or weights.")


class AssignmentScoreList(BaseModel):
    """An agent's assignment scores in a time range, newest first."""

    agent_id: str
    since: datetime | None = Field(description="Inclusive lower bound, if given.")
    until: datetime | None = Field(description="Inclusive upper bound, if given.")
    limit: int
    count: int
    scores: list[AssignmentScoreEntry]


class RollingAccuracy(BaseModel):
    """How well the predictions made at assignment matched the outcomes, over the latest
    finished tasks (completed or failed) that had a prediction; computed in ClickHouse."""

    window: int = Field(description="At most this many latest tasks (the setting).")
    tasks: int = Field(description="Tasks in the window.")
    success_predictions: int = Field(description="Of those, tasks with a p_success.")
    success_accuracy: float | None = Field(
        description="Share where p_success >= 0.5 matched completed (null: no prediction)."
    )
    brier_score: float | None = Field(
        description="Mean of (p_success - 1 if completed else 0)²: 0 is perfect, 0.25 is a coin's."
    )
    duration_predictions: int = Field(
        description="Completed tasks in the window with an expected_duration_s and a duration."
    )
    duration_mae_s: float | None = Field(
        description="Mean absolute error of expected_duration_s, seconds (completed tasks)."
    )
    duration_mape: float | None = Field(
        description="Mean absolute percentage error of expected_duration_s, as a fraction "
        "(0.12 = 12 %), over completed tasks that took more than 0 s."
    )
    oldest: datetime | None = Field(description="When the oldest task in the window finished.")
    newest: datetime | None = Field(description="When the newest one finished.")


class ShardModels(BaseModel):
    """One shard's online models as it last reported them (``model_stats`` on agents.state)."""

    shard: str
    outcomes: int = Field(description="Outcomes learned from since the shard started.")
    success_accuracy: float | None
    success_log_loss: float | None
    duration_mae_s: float | None
    failure_accuracy: float | None
    failure_samples: int
    window: int = Field(description="How many latest outcomes its rolling figures cover.")
    timestamp: datetime = Field(description="Event time of the report.")


class OrchestrationModels(BaseModel):
    """The outcome models' accuracy: measured on the tasks table, and as each shard reports."""

    tenant_id: str | None = Field(description="The tenant the tasks are of (null: every one).")
    rolling: RollingAccuracy
    shards: list[ShardModels] = Field(description="The latest report of each shard (fleet-wide).")


class BrokerHealth(BaseModel):
    """Can the API reach the Kafka broker?"""

    reachable: bool
    bootstrap_servers: str
    cluster_id: str | None
    error: str | None = Field(description="Why the broker could not be reached.")
    checked_at: datetime = Field(description="When the broker was last asked (results are cached).")


class DataflowHealth(BaseModel):
    """How far the dataflow is behind on the heartbeat topic."""

    group_id: str = Field(description="Consumer group the dataflow commits its offsets to.")
    topic: str
    lag: int | None = Field(description="Messages not yet processed; null when unknown.")
    lag_state: Literal["ok", "unknown"]
    detail: str = Field(description="How the lag was found, or why it is unknown.")
    lag_unknown_reason: str | None = Field(
        None,
        description="Why the lag is unknown, null when it is known: e.g. the broker did "
        "not answer within the probe's budget (AGENTWATCH_API_BROKER_TIMEOUT_S), the "
        "dataflow has committed nothing yet, the broker is unreachable.",
    )


class LoaderHealth(BaseModel):
    """The ClickHouse loader: the one inside this API process, or one in a process of its own
    whose ``/metrics`` the API reads (``AGENTWATCH_API_LOADER_METRICS_URL``)."""

    running: bool
    lag: dict[str, int] | None = Field(description="Messages behind, by topic; null if no loader.")
    lag_total: int | None
    rows_inserted: dict[str, int] = Field(
        description="Rows written since start, by the topic they came from (metric_rows: the "
        "heartbeats the dataflow took, into table metrics)."
    )
    batches_inserted: int
    last_batch_rows: int
    batch_rows_sum: int = Field(description="Rows of all batches together (sum of batch sizes).")
    skipped_invalid: dict[str, int] = Field(description="Messages skipped as invalid, by topic.")
    errors: int
    last_insert_at: datetime | None
    ingest_rows_per_s: float = Field(description="Rows/s into table metrics, recent average.")
    state: Literal["ok", "degraded", "stopped"] = Field(
        "stopped",
        description="ok; degraded while ClickHouse writes fail or an insert runs longer than "
        "AGENTWATCH_LOADER_SLOW_INSERT_S (the loader then holds back); stopped: no loader.",
    )
    degraded_reason: str | None = Field(None, description="Why degraded, with the last error.")
    degraded_for_s: float | None = Field(None, description="Seconds degraded so far.")
    last_error: str | None = Field(None, description="The latest failed write's error.")
    consumer_paused: bool = Field(
        False, description="Reading paused: writes failing or pending rows at their cap."
    )
    pending_rows: int = Field(0, description="Rows read and not yet written to ClickHouse.")
    max_pending_rows: int = Field(0, description="Their cap (AGENTWATCH_LOADER_MAX_PENDING_ROWS).")


class TableCounts(BaseModel):
    """Row counts in ClickHouse (stored rows; replays merge away in the background)."""

    agents: int = Field(description="Distinct agents with at least one heartbeat.")
    metrics_rows: int
    anomalies: int
    threats: int
    deadletter: int
    counted_at: datetime


class ClickHouseHealth(BaseModel):
    """Does ClickHouse answer, and what does it hold?"""

    reachable: bool
    database: str
    ping_ms: float | None
    error: str | None
    counts: TableCounts | None = Field(description="Cached briefly; null if never counted.")


class SystemHealth(BaseModel):
    """The state of the whole pipeline as this API process sees it (a key of every
    tenant's view: :class:`TenantHealth` is what a key of one tenant gets)."""

    scope: Literal["fleet"] = "fleet"
    status: Literal["ok", "degraded"]
    problems: list[str] = Field(description="What makes the status degraded, in plain words.")
    uptime_s: float
    broker: BrokerHealth
    dataflow: DataflowHealth
    loader: LoaderHealth
    clickhouse: ClickHouseHealth


class TenantHealth(BaseModel):
    """The pipeline's state as a key of one tenant sees it: whether each part works, and
    none of the figures or errors of the fleet it shares with other tenants (row counts,
    lags and ingest rates tell their volume; a ClickHouse error may quote their rows)."""

    scope: Literal["tenant"] = "tenant"
    status: Literal["ok", "degraded"]
    problems: list[str] = Field(
        description="Which parts make the status degraded (a key of every tenant is told why)."
    )
    uptime_s: float
    broker_reachable: bool
    clickhouse_reachable: bool
    loader_state: Literal["ok", "degraded", "stopped"]
