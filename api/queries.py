"""The ClickHouse reads behind the API, one function per question.

Per-agent reads are point queries on the sort key ``(tenant_id, agent_id, timestamp)``
(threats: ``(tenant_id, agent_id, first_seen, rule)``): every function takes the
agent's tenant, and ``PREWHERE tenant_id = … AND agent_id = …`` selects one granule
range that ``ORDER BY timestamp DESC LIMIT 1`` reads in order, so each costs a couple
of milliseconds however large the table grows. ``tenant_id=None`` means the tenant is
not known yet (an operator asks about an agent by its id): the read then names the
agent only, which ClickHouse still narrows with the key (its generic exclusion search
over the few tenants), but not to one range; the API resolves the tenant once
(:func:`latest_metrics` returns it) and passes it to the reads that follow.

Replays can leave identical duplicate rows until ClickHouse merges them; a ``LIMIT 1``
read does not care, and range reads use ``FINAL`` so that no duplicate reaches a caller.

Every value from a caller is bound as a query parameter (``{name:Type}``);
only the database name, which comes from the settings, is part of the SQL text.
clickhouse-connect calls block, so callers run these in a worker thread.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import orjson
from clickhouse_connect.driver.client import Client
from pydantic import ValidationError

from api.responses import (
    AgentAlert,
    AgentIncident,
    AgentThreat,
    Anomaly,
    AnomalyEpisode,
    AssignmentScoreEntry,
    Baseline,
    Evidence,
    LatestMetrics,
    RollingAccuracy,
    ScoreEntry,
    ShardModels,
    TableCounts,
    TaskView,
)
from schemas.events import MODEL_STATS, SHARD_REPORTER, STATE_CHANNEL
from schemas.models import FeatureDeviation, ModelStats, ThreatEvidence

log = logging.getLogger(__name__)

_METRIC_COLUMNS = ", ".join(name for name in LatestMetrics.model_fields)
_ANOMALY_COLUMNS = (
    "timestamp, score, threshold, is_anomaly, detector, top_feature, reasons, episode_start, "
    "episode_end"
)
_THREAT_COLUMNS = "rule, category, severity, first_seen, last_seen, condition, evidence"


def _agent(agent_id: str, tenant_id: str | None, parameters: dict[str, object]) -> str:
    """The condition that selects one agent's rows on the sort key (its tenant and its id;
    the id alone while the tenant is unknown); binds their parameters.

    >>> parameters = {}
    >>> _agent("a1", "t1", parameters), parameters
    ('tenant_id = {tenant_id:String} AND agent_id = {agent_id:String}', \
{'agent_id': 'a1', 'tenant_id': 't1'})
    >>> _agent("a1", None, {})
    'agent_id = {agent_id:String}'
    """
    parameters["agent_id"] = agent_id
    if tenant_id is None:
        return "agent_id = {agent_id:String}"
    parameters["tenant_id"] = tenant_id
    return "tenant_id = {tenant_id:String} AND agent_id = {agent_id:String}"


def _newest_row(
    client: Client, table: str, columns: str, agent_id: str, tenant_id: str | None
) -> dict | None:
    """The agent's newest row of ``table`` (read on the sort key), timestamp in UTC."""
    parameters: dict[str, object] = {}
    result = client.query(
        f"SELECT {columns} FROM {table} "
        f"PREWHERE {_agent(agent_id, tenant_id, parameters)} ORDER BY timestamp DESC LIMIT 1",
        parameters=parameters,
    )
    rows = list(result.named_results())
    if not rows:
        return None
    row = rows[0]
    row["timestamp"] = as_utc(row["timestamp"])
    return row


def latest_metrics(
    client: Client, database: str, agent_id: str, *, tenant_id: str | None
) -> tuple[str, LatestMetrics] | None:
    """The agent's newest heartbeat and its tenant, or None if it never sent one."""
    columns = f"tenant_id, {_METRIC_COLUMNS}"
    row = _newest_row(client, f"{database}.metrics", columns, agent_id, tenant_id)
    if row is None:
        return None
    tenant_id = row.pop("tenant_id")
    row["status"] = row["status"] or None
    return tenant_id, LatestMetrics(**row)


def latest_baseline(
    client: Client, database: str, agent_id: str, *, tenant_id: str | None
) -> tuple[str, Baseline] | None:
    """The agent's newest baseline snapshot and its tenant, or None before the first one."""
    columns = "tenant_id, timestamp, heartbeats, warmed_up, mean, std"
    row = _newest_row(client, f"{database}.baselines", columns, agent_id, tenant_id)
    if row is None:
        return None
    tenant_id = row.pop("tenant_id")
    return tenant_id, Baseline(**row)


def latest_anomaly(
    client: Client, database: str, agent_id: str, *, tenant_id: str | None
) -> Anomaly | None:
    """The agent's most recent anomaly (``is_anomaly``), or None."""
    parameters: dict[str, object] = {}
    result = client.query(
        f"SELECT {_ANOMALY_COLUMNS} FROM {database}.anomalies "
        f"PREWHERE {_agent(agent_id, tenant_id, parameters)} WHERE is_anomaly "
        "ORDER BY timestamp DESC LIMIT 1",
        parameters=parameters,
    )
    rows = [_anomaly(row) for row in result.named_results()]
    return rows[0] if rows else None


def anomalies_between(
    client: Client,
    database: str,
    agent_id: str,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    *,
    tenant_id: str | None,
) -> list[Anomaly]:
    """The agent's anomalies with ``since <= timestamp <= until``, newest first."""
    parameters: dict[str, object] = {"limit": limit}
    conditions = [_agent(agent_id, tenant_id, parameters)]
    conditions += _time_bounds("timestamp", since, until, parameters)
    result = client.query(
        f"SELECT {_ANOMALY_COLUMNS} FROM {database}.anomalies FINAL "
        f"WHERE {' AND '.join(conditions)} ORDER BY timestamp DESC LIMIT {{limit:UInt32}}",
        parameters=parameters,
    )
    return [_anomaly(row) for row in result.named_results()]


def episodes_between(
    client: Client,
    database: str,
    agent_id: str,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    *,
    tenant_id: str | None,
) -> list[AnomalyEpisode]:
    """The agent's anomaly episodes with ``since <= start <= until``, newest first: the
    records inside each (``episode_start`` set, no ``episode_end``) and the end its
    closing record names, if one does."""
    parameters: dict[str, object] = {"limit": limit}
    conditions = [_agent(agent_id, tenant_id, parameters), "episode_start IS NOT NULL"]
    conditions += _time_bounds("episode_start", since, until, parameters)
    inside = "episode_end IS NULL"
    result = client.query(
        "SELECT assumeNotNull(episode_start) AS start, max(episode_end) AS end, "
        f"maxIf(timestamp, {inside}) AS last_record, countIf({inside}) AS records, "
        f"countIf(is_anomaly AND {inside}) AS anomalies, maxIf(score, {inside}) AS peak_score, "
        "arraySort(groupUniqArrayArrayIf(arrayMap(r -> JSONExtractString(r, 'feature'), "
        f"JSONExtractArrayRaw(reasons)), {inside})) AS metrics "
        f"FROM {database}.anomalies FINAL WHERE {' AND '.join(conditions)} "
        "GROUP BY start ORDER BY start DESC LIMIT {limit:UInt32}",
        parameters=parameters,
    )
    return [
        AnomalyEpisode(
            start=as_utc(row["start"]),
            end=None if row["end"] is None else as_utc(row["end"]),
            last_record=as_utc(row["last_record"]),
            records=row["records"],
            anomalies=row["anomalies"],
            peak_score=row["peak_score"],
            metrics=row["metrics"],
        )
        for row in result.named_results()
    ]


def threats_between(
    client: Client,
    database: str,
    agent_id: str,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    severities: list[str] | None = None,
    categories: list[str] | None = None,
    *,
    tenant_id: str | None,
) -> list[AgentThreat]:
    """The agent's threats with ``since <= first_seen <= until``, newest first.

    ``severities`` / ``categories``: keep only threats with one of these (None: any).
    """
    parameters: dict[str, object] = {"limit": limit}
    conditions = [_agent(agent_id, tenant_id, parameters)]
    conditions += _time_bounds("first_seen", since, until, parameters)
    if severities:
        conditions.append("severity IN {severities:Array(String)}")
        parameters["severities"] = severities
    if categories:
        conditions.append("category IN {categories:Array(String)}")
        parameters["categories"] = categories
    result = client.query(
        f"SELECT {_THREAT_COLUMNS} FROM {database}.threats FINAL "
        f"WHERE {' AND '.join(conditions)} ORDER BY first_seen DESC, rule LIMIT {{limit:UInt32}}",
        parameters=parameters,
    )
    return [_threat(row) for row in result.named_results()]


_ALERT_COLUMNS = (
    "fingerprint, agent_id, tenant_id, rule, category, severity, state, started_at, "
    "fired_at, resolved_at, last_seen, updated_at, flapping, flap_count, summary, evidence, "
    "silenced"
)


def current_alerts(
    client: Client,
    database: str,
    limit: int,
    agent_id: str | None = None,
    tenant_id: str | None = None,
    states: list[str] | None = None,
    severities: list[str] | None = None,
    categories: list[str] | None = None,
) -> list[AgentAlert]:
    """Each alert's latest state (one per fingerprint), most recently changed first.

    ``tenant_id`` (with or without ``agent_id``) reads on the sort key; None: every tenant.
    The filters on state, severity and category apply to the current state, so an
    alert that resolved is not listed as firing.
    """
    inner, outer = [], []
    parameters: dict[str, object] = {"limit": limit}
    if agent_id is not None:
        inner.append("agent_id = {agent_id:String}")
        parameters["agent_id"] = agent_id
    if tenant_id is not None:
        inner.append("tenant_id = {tenant_id:String}")
        parameters["tenant_id"] = tenant_id
    for column, values in (("state", states), ("severity", severities), ("category", categories)):
        if values:
            outer.append(f"{column} IN {{{column}:Array(String)}}")
            parameters[column] = values
    result = client.query(
        f"SELECT * FROM (SELECT {_ALERT_COLUMNS} FROM {database}.alerts FINAL "
        f"{_where(inner)} ORDER BY updated_at DESC, "
        "indexOf(['pending', 'firing', 'resolved'], state) DESC LIMIT 1 BY fingerprint) "
        f"{_where(outer)} ORDER BY updated_at DESC, fingerprint LIMIT {{limit:UInt32}}",
        parameters=parameters,
    )
    return [_alert(row) for row in result.named_results()]


def _where(conditions: list[str]) -> str:
    return f"WHERE {' AND '.join(conditions)}" if conditions else ""


def _alert(row: dict) -> AgentAlert:
    evidence = parse_evidence(row["evidence"]) if row["evidence"] else None
    when = {
        name: None if row[name] is None else as_utc(row[name])
        for name in ("started_at", "fired_at", "resolved_at", "last_seen", "updated_at")
    }
    return AgentAlert(
        **row
        | when
        | {
            "category": row["category"] or None,
            "severity": row["severity"] or None,
            "evidence": None if evidence is None else _evidence(evidence),
        }
    )


def score_changes(
    client: Client, database: str, agent_id: str, limit: int, *, tenant_id: str | None
) -> list[ScoreEntry]:
    """The agent's latest security score changes, newest first."""
    parameters: dict[str, object] = {"limit": limit}
    result = client.query(
        "SELECT timestamp, score, delta, cause, first_seen FROM "
        f"{database}.security_scores FINAL PREWHERE {_agent(agent_id, tenant_id, parameters)} "
        "ORDER BY timestamp DESC, cause LIMIT {limit:UInt32}",
        parameters=parameters,
    )
    return [
        ScoreEntry(
            **row
            | {
                "timestamp": as_utc(row["timestamp"]),
                "first_seen": None if row["first_seen"] is None else as_utc(row["first_seen"]),
            }
        )
        for row in result.named_results()
    ]


#: Events that start or end a quarantine, or ask for one: operators' commands from
#: agents.control, the dataflow's status changes from agents.state. Never a row from the
#: agents' agents.events (the loader stores none of these types from there anyway); rows
#: without a channel were stored before the channels were split, from the one topic of then.
_QUARANTINE_EVENTS = (
    "channel IN ('control', 'state', '') AND "
    "(type IN ('quarantine_requested', 'released') OR (type = 'status_changed' AND "
    "'quarantined' IN (JSONExtractString(payload, 'to'), JSONExtractString(payload, 'from'))))"
)


def quarantine_events(
    client: Client, database: str, agent_id: str, limit: int = 20, *, tenant_id: str | None
) -> list[dict]:
    """The agent's latest events about quarantine (type, actor, timestamp, payload), newest
    first: ``status_changed`` to or from quarantined, ``quarantine_requested``, ``released``."""
    parameters: dict[str, object] = {"limit": limit}
    result = client.query(
        f"SELECT type, actor, timestamp, payload FROM {database}.agent_events FINAL "
        f"PREWHERE {_agent(agent_id, tenant_id, parameters)} WHERE {_QUARANTINE_EVENTS} "
        "ORDER BY timestamp DESC LIMIT {limit:UInt32}",
        parameters=parameters,
    )
    events = []
    for row in result.named_results():
        try:
            payload = orjson.loads(row["payload"])
        except orjson.JSONDecodeError:
            payload = {}
        events.append({**row, "timestamp": as_utc(row["timestamp"]), "payload": payload})
    return events


def lifecycle_state(
    client: Client, database: str, agent_id: str, *, tenant_id: str | None
) -> str | None:
    """The status the agent's latest ``status_changed`` (from the dataflow, on agents.state)
    moved it to; None if there is none."""
    parameters: dict[str, object] = {}
    result = client.query(
        f"SELECT JSONExtractString(payload, 'to') FROM {database}.agent_events FINAL "
        f"PREWHERE {_agent(agent_id, tenant_id, parameters)} "
        "WHERE type = 'status_changed' AND channel IN ('state', '') "
        "ORDER BY timestamp DESC LIMIT 1",
        parameters=parameters,
    )
    rows = result.result_rows
    return (rows[0][0] or None) if rows else None


def incidents(
    client: Client, database: str, tenant_id: str | None, limit: int
) -> list[AgentIncident]:
    """Coordinated incidents (newest revision of each), latest activity first."""
    parameters: dict[str, object] = {"limit": limit}
    where = ""
    if tenant_id is not None:
        where, parameters["tenant_id"] = "WHERE tenant_id = {tenant_id:String}", tenant_id
    result = client.query(
        "SELECT incident_id, tenant_id, rule, category, severity, agent_ids, truncated, "
        f"first_seen, last_seen, revision FROM {database}.incidents FINAL {where} "
        "ORDER BY last_seen DESC, incident_id LIMIT {limit:UInt32}",
        parameters=parameters,
    )
    return [
        AgentIncident(
            **row | {"first_seen": as_utc(row["first_seen"]), "last_seen": as_utc(row["last_seen"])}
        )
        for row in result.named_results()
    ]


# --- orchestration: tasks, assignment scores, the models' accuracy -----------------------

_TASK_COLUMNS = ", ".join(TaskView.model_fields)
_TASK_TIMES = ("deadline", "assigned_at", "accepted_at", "finished_at", "updated_at")
#: Float32 columns, shown rounded (0.7 is stored as 0.699999988…).
_FLOAT32_DIGITS = 6


def task(client: Client, database: str, task_id: str, *, tenant_id: str | None) -> TaskView | None:
    """The task's latest row (FINAL), or None. ``tenant_id`` (the caller's, if its key is of
    one tenant): another tenant's task is not found, exactly like a missing one."""
    parameters: dict[str, object] = {"task_id": task_id}
    conditions = ["task_id = {task_id:String}"]
    if tenant_id is not None:
        conditions.insert(0, "tenant_id = {tenant_id:String}")
        parameters["tenant_id"] = tenant_id
    result = client.query(
        f"SELECT {_TASK_COLUMNS} FROM {database}.tasks FINAL WHERE {' AND '.join(conditions)} "
        "ORDER BY version DESC LIMIT 1",
        parameters=parameters,
    )
    rows = [_task(row) for row in result.named_results()]
    return rows[0] if rows else None


def tasks(
    client: Client,
    database: str,
    limit: int,
    agent_id: str | None = None,
    statuses: list[str] | None = None,
    *,
    tenant_id: str | None,
) -> list[TaskView]:
    """Tasks in their latest status, newest assignment first. ``tenant_id`` reads on the
    sort key (None: every tenant); the agent and status filters apply to the latest row
    (a task moved to another agent is that agent's; a completed one is not listed as
    accepted), so they are applied after ``FINAL``."""
    inner, outer = [], []
    parameters: dict[str, object] = {"limit": limit}
    if tenant_id is not None:
        inner.append("tenant_id = {tenant_id:String}")
        parameters["tenant_id"] = tenant_id
    if agent_id is not None:
        outer.append("agent_id = {agent_id:String}")
        parameters["agent_id"] = agent_id
    if statuses:
        outer.append("status IN {statuses:Array(String)}")
        parameters["statuses"] = statuses
    result = client.query(
        f"SELECT * FROM (SELECT {_TASK_COLUMNS} FROM {database}.tasks FINAL {_where(inner)}) "
        f"{_where(outer)} ORDER BY assigned_at DESC, task_id LIMIT {{limit:UInt32}}",
        parameters=parameters,
    )
    return [_task(row) for row in result.named_results()]


def _task(row: dict) -> TaskView:
    for name in _TASK_TIMES:
        if row[name] is not None:
            row[name] = as_utc(row[name])
    for name in ("score", "p_success"):
        if row[name] is not None:
            row[name] = round(row[name], _FLOAT32_DIGITS)
    row["components"] = orjson.loads(row["components"]) if row["components"] else None
    return TaskView(**row)


_SCORE_COLUMNS = ", ".join(AssignmentScoreEntry.model_fields)
_SCORE_FLOAT32 = ("score", "performance", "cost", "availability", "sla", "success_rate",
                  "response_time_ms", "sla_met_rate", "p_fail")  # fmt: skip


def assignment_scores_between(
    client: Client,
    database: str,
    agent_id: str,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    *,
    tenant_id: str | None,
) -> list[AssignmentScoreEntry]:
    """The agent's published assignment scores with ``since <= timestamp <= until``,
    newest first."""
    parameters: dict[str, object] = {"limit": limit}
    conditions = [_agent(agent_id, tenant_id, parameters)]
    conditions += _time_bounds("timestamp", since, until, parameters)
    result = client.query(
        f"SELECT {_SCORE_COLUMNS} FROM {database}.assignment_scores FINAL "
        f"WHERE {' AND '.join(conditions)} ORDER BY timestamp DESC, cause LIMIT {{limit:UInt32}}",
        parameters=parameters,
    )
    entries = []
    for row in result.named_results():
        row["timestamp"] = as_utc(row["timestamp"])
        for name in _SCORE_FLOAT32:
            if row[name] is not None:
                row[name] = round(row[name], _FLOAT32_DIGITS)
        row["weights"] = orjson.loads(row["weights"]) if row["weights"] else {}
        row["by_type"] = orjson.loads(row["by_type"]) if row["by_type"] else {}
        entries.append(AssignmentScoreEntry(**row))
    return entries


def rolling_accuracy(
    client: Client, database: str, window: int, *, tenant_id: str | None
) -> RollingAccuracy:
    """The predictions made at assignment against the outcomes, over the latest ``window``
    finished tasks (completed or failed, by when they finished) that had a prediction
    (``p_success`` or ``expected_duration_s``), one ClickHouse query: success accuracy
    (``p_success >= 0.5`` against completed) and Brier score over those with a
    ``p_success``; duration MAE and MAPE against ``expected_duration_s`` over the completed
    ones (a failed task's time is not a completion time). ``tenant_id``: that tenant's
    tasks (None: every tenant's)."""
    parameters: dict[str, object] = {"window": window}
    where = ""
    if tenant_id is not None:
        where, parameters["tenant_id"] = "WHERE tenant_id = {tenant_id:String}", tenant_id
    timed = "status = 'completed' AND expected_duration_s IS NOT NULL AND duration_s IS NOT NULL"
    result = client.query(
        "SELECT count() AS tasks, "
        "countIf(p_success IS NOT NULL) AS success_predictions, "
        "avgIf(toFloat64((p_success >= 0.5) = (status = 'completed')), p_success IS NOT NULL) "
        "AS success_accuracy, "
        "avgIf(pow(toFloat64(p_success) - (status = 'completed'), 2), p_success IS NOT NULL) "
        "AS brier_score, "
        f"countIf({timed}) AS duration_predictions, "
        f"avgIf(abs(duration_s - expected_duration_s), {timed}) AS duration_mae_s, "
        f"avgIf(abs(duration_s - expected_duration_s) / duration_s, {timed} AND duration_s > 0) "
        "AS duration_mape, "
        "if(count() = 0, NULL, min(finished)) AS oldest, "
        "if(count() = 0, NULL, max(finished)) AS newest "
        "FROM (SELECT status, p_success, expected_duration_s, duration_s, "
        "coalesce(finished_at, updated_at) AS finished "
        f"FROM (SELECT * FROM {database}.tasks FINAL {where}) "
        "WHERE status IN ('completed', 'failed') "
        "AND (p_success IS NOT NULL OR expected_duration_s IS NOT NULL) "
        "ORDER BY finished DESC, task_id LIMIT {window:UInt32})",
        parameters=parameters,
    )
    row = next(result.named_results())
    for name in ("success_accuracy", "brier_score", "duration_mae_s", "duration_mape"):
        value = row[name]
        row[name] = None if value is None or value != value else round(value, 6)  # NaN: none
    for name in ("oldest", "newest"):
        row[name] = None if row[name] is None else as_utc(row[name])
    return RollingAccuracy(window=window, **row)


#: Most shards whose model reports are listed.
MAX_SHARDS = 1000


def shard_models(client: Client, database: str) -> list[ShardModels]:
    """Each shard's latest ``model_stats`` (tenant ``*``, agent ``shard:<shard>``, from
    agents.state only), by shard name; reports that do not parse are skipped (logged)."""
    result = client.query(
        f"SELECT payload FROM {database}.agent_events FINAL "
        f"PREWHERE tenant_id = '*' AND startsWith(agent_id, '{SHARD_REPORTER}') "
        "WHERE type = {type:String} AND channel = {channel:String} "
        "ORDER BY timestamp DESC LIMIT 1 BY JSONExtractString(payload, 'shard') "
        "LIMIT {shards:UInt32}",
        parameters={"type": MODEL_STATS, "channel": STATE_CHANNEL, "shards": MAX_SHARDS},
    )
    shards = []
    for (payload,) in result.result_rows:
        try:
            stats = ModelStats.model_validate_json(payload)
        except ValidationError as exc:
            log.warning("model_stats_unparsable error=%r", " ".join(str(exc).split())[:200])
            continue
        fields = stats.model_dump()
        fields["timestamp"] = datetime.fromtimestamp(stats.timestamp, UTC)
        shards.append(ShardModels(**fields))
    return sorted(shards, key=lambda s: s.shard)


def _time_bounds(
    column: str, since: datetime | None, until: datetime | None, parameters: dict[str, object]
) -> list[str]:
    """Conditions ``since <= column <= until`` (each only if given); binds their parameters."""
    conditions = []
    if since is not None:
        conditions.append(f"{column} >= fromUnixTimestamp64Milli({{since_ms:Int64}}, 'UTC')")
        parameters["since_ms"] = epoch_millis(since)
    if until is not None:
        conditions.append(f"{column} <= fromUnixTimestamp64Milli({{until_ms:Int64}}, 'UTC')")
        parameters["until_ms"] = epoch_millis(until)
    return conditions


def agent_is_known(client: Client, database: str, agent_id: str, *, tenant_id: str | None) -> bool:
    """True if the agent has a heartbeat or a baseline stored."""
    parameters: dict[str, object] = {}
    agent = _agent(agent_id, tenant_id, parameters)
    result = client.query(
        f"SELECT 1 FROM {database}.metrics PREWHERE {agent} LIMIT 1 "
        "UNION ALL "
        f"SELECT 1 FROM {database}.baselines PREWHERE {agent} LIMIT 1",
        parameters=parameters,
    )
    return bool(result.result_rows)


def ping(client: Client) -> float:
    """Round-trip time of ``SELECT 1`` in milliseconds (raises if ClickHouse does not answer)."""
    started = time.perf_counter()
    client.command("SELECT 1")
    return (time.perf_counter() - started) * 1000.0


def table_counts(client: Client, database: str) -> TableCounts:
    """Distinct agents and row counts of the main tables, in one query.

    ``count()`` of a MergeTree table comes from part metadata (no scan);
    distinct agents read the ``agent_id`` column once, so callers cache this.
    """
    result = client.query(
        "SELECT "
        f"(SELECT uniqExact(agent_id) FROM {database}.metrics) AS agents, "
        f"(SELECT count() FROM {database}.metrics) AS metrics_rows, "
        f"(SELECT count() FROM {database}.anomalies) AS anomalies, "
        f"(SELECT count() FROM {database}.threats) AS threats, "
        f"(SELECT count() FROM {database}.deadletter) AS deadletter"
    )
    row = next(result.named_results())
    return TableCounts(**row, counted_at=datetime.now(UTC))


def as_utc(value: datetime) -> datetime:
    """clickhouse-connect returns naive UTC datetimes by default: make them aware."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def epoch_millis(value: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime."""
    return round(value.timestamp() * 1000)


def _anomaly(row: dict) -> Anomaly:
    return Anomaly(
        timestamp=as_utc(row["timestamp"]),
        score=row["score"],
        threshold=row["threshold"],
        is_anomaly=row["is_anomaly"],
        detector=row["detector"],
        top_feature=row["top_feature"],
        reasons=parse_reasons(row["reasons"]),
        episode_start=None if row["episode_start"] is None else as_utc(row["episode_start"]),
        episode_end=None if row["episode_end"] is None else as_utc(row["episode_end"]),
    )


def parse_reasons(text: str) -> list[FeatureDeviation]:
    """The JSON list stored in ``anomalies.reasons``; entries that do not parse are dropped.

    >>> parse_reasons('[{"feature": "cpu_usage", "value": 99.0, "baseline_mean": 40.0,'
    ...               ' "baseline_std": 5.0, "z": 11.8}]')[0].feature
    'cpu_usage'
    >>> parse_reasons("not json")
    []
    """
    try:
        items = orjson.loads(text) if text else []
    except orjson.JSONDecodeError:
        log.warning("anomaly_reasons_unparsable text=%r", text[:80])
        return []
    if not isinstance(items, list):
        return []
    reasons = []
    for item in items:
        try:
            reasons.append(FeatureDeviation.model_validate(item))
        except ValidationError:
            log.warning("anomaly_reason_invalid item=%r", str(item)[:80])
    return reasons


def _threat(row: dict) -> AgentThreat:
    first_seen, last_seen = as_utc(row["first_seen"]), as_utc(row["last_seen"])
    evidence = parse_evidence(row["evidence"])
    if evidence is None:  # keep the threat; say what is known of its evidence
        evidence = ThreatEvidence(
            condition=row["condition"],
            values={},
            window_start=first_seen.timestamp(),
            window_end=last_seen.timestamp(),
        )
    return AgentThreat(
        rule=row["rule"],
        category=row["category"],
        severity=row["severity"],
        first_seen=first_seen,
        last_seen=last_seen,
        evidence=_evidence(evidence),
    )


def _evidence(evidence: ThreatEvidence) -> Evidence:
    return Evidence(
        condition=evidence.condition,
        values=evidence.values,
        baseline=evidence.baseline,
        window_start=datetime.fromtimestamp(evidence.window_start, UTC),
        window_end=datetime.fromtimestamp(evidence.window_end, UTC),
        excerpts=evidence.excerpts,
    )


def parse_evidence(text: str) -> ThreatEvidence | None:
    """The JSON stored in ``threats.evidence``, or None (logged) if it does not parse.

    >>> parse_evidence('{"condition": "cpu_usage > 95 for 600s", "values": {"cpu_usage": 97.5},'
    ...                ' "window_start": 1764071400, "window_end": 1764072000}').values
    {'cpu_usage': 97.5}
    >>> parse_evidence("{}") is None
    True
    """
    try:
        return ThreatEvidence.model_validate_json(text)
    except ValidationError as exc:
        error = " ".join(str(exc).split())[:200]
        log.warning("threat_evidence_unparsable text=%r error=%r", text[:80], error)
        return None


def metric_series(
    client: Client,
    database: str,
    agent_id: str,
    metric: str,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    *,
    tenant_id: str | None,
) -> list[tuple[datetime, float]]:
    """The agent's ``metric`` at each heartbeat with ``since <= timestamp <= until``: the
    newest ``limit`` of them, oldest first (a chart's order). ``metric`` must be a column of
    table ``metrics`` (callers pass one of :data:`SERIES_METRICS`; it is part of the SQL)."""
    if metric not in SERIES_METRICS:
        raise ValueError(f"no metric {metric!r}; use one of {', '.join(SERIES_METRICS)}")
    parameters: dict[str, object] = {"limit": limit}
    conditions = [_agent(agent_id, tenant_id, parameters)]
    conditions += _time_bounds("timestamp", since, until, parameters)
    result = client.query(
        f"SELECT timestamp, toFloat64({metric}) AS value FROM {database}.metrics FINAL "
        f"WHERE {' AND '.join(conditions)} ORDER BY timestamp DESC LIMIT {{limit:UInt32}}",
        parameters=parameters,
    )
    return [(as_utc(timestamp), value) for timestamp, value in reversed(result.result_rows)]


#: The numeric metrics of a heartbeat that :func:`metric_series` reads.
SERIES_METRICS = tuple(
    name for name in LatestMetrics.model_fields if name not in ("timestamp", "status")
)
