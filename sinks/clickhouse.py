"""ClickHouse: the client for both profiles and the schema of database ``agentwatch``.

One client library for both deployments: clickhouse-connect, with a
``chdb:///path`` DSN for the embedded engine (chDB, in this process) and an
``http(s)://`` DSN for a ClickHouse server. The DDL is the same on both.

Idempotency: every table is a ``ReplacingMergeTree`` whose sort key is the
natural identity of a row (an agent's heartbeat is ``(agent_id, timestamp)``,
a threat episode ``(agent_id, first_seen, rule)``, an alert's change of state
``(agent_id, fingerprint, updated_at, state)``), led by ``tenant_id`` where the table
is read per tenant (an agent has one tenant, so that changes no identity: reads
that name the tenant and the agent select one granule range), so a replay of the same
Kafka offsets, or a dataflow that re-emits after a crash, leaves one row per
identity once parts merge; read with ``FINAL`` where exact counts matter.
Where a row of the same identity can be re-published with more in it (a
baseline, a threat whose ``last_seen`` moved on, an incident that more agents
joined, a silence that was expired), the table's version column keeps the newest.

Changes to the layout of a released table are versioned migrations
(:data:`MIGRATIONS`, run by :func:`create_schema`; sinks/migrations.py, docs/migrations.md).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from agentwatch.settings import Settings
from sinks.migrations import AddColumn, Migration, apply_migrations

log = logging.getLogger(__name__)


def connect(settings: Settings) -> Client:
    """A clickhouse-connect client for ``settings.clickhouse_dsn``.

    ``chdb://var/clickhouse`` is relative to the working directory,
    ``chdb:///srv/clickhouse`` absolute; the directory is created if missing.
    The DSN is a secret (it may hold a password): only this function reads it.
    """
    dsn = settings.clickhouse_dsn.get_secret_value()
    if dsn.startswith("chdb://"):
        path = Path(dsn.removeprefix("chdb://") or ".")
        path.mkdir(parents=True, exist_ok=True)
        dsn = f"chdb://{path.resolve()}"
    return clickhouse_connect.get_client(dsn=dsn)


class ColumnTypes:
    """The ClickHouse types of the columns a writer inserts into, asked once per table.

    Given no types, clickhouse-connect asks the server (``DESCRIBE TABLE``) at every
    insert of Python rows or a DataFrame: a query as dear as the insert of a few rows
    (with chDB under load, about half of a small finding's insert). The loader keeps
    them here instead, and forgets them after a failed write (a table altered
    meanwhile is asked again).
    """

    def __init__(self, client: Client, database: str) -> None:
        self._client = client
        self._database = database
        self._types: dict[tuple[str, tuple[str, ...]], list] = {}

    def of(self, table: str, columns: Iterable[str]) -> list:
        """The types of ``columns`` of ``table`` (clickhouse-connect's own type objects)."""
        key = (table, tuple(columns))
        types = self._types.get(key)
        if types is None:
            context = self._client.create_insert_context(
                table, list(key[1]), database=self._database
            )
            types = self._types[key] = list(context.column_types)
        return types

    def forget(self) -> None:
        """Ask again at the next insert."""
        self._types.clear()


#: The dead letters' cluster id: a column added after the table was first released
#: (:data:`MIGRATIONS` version 1 adds it to a table made before).
_DEADLETTER_CLUSTER_ID = (
    "cluster_id LowCardinality(String) COMMENT 'broker log the message was read from; "
    "empty for rows stored before the column existed'"
)
#: The dead letters' sort key: the message's place in its log, its bytes, and the log
#: (offsets restart at 0 in a new log of the embedded broker). The cluster id comes last:
#: a table made before can only add a new column at the end of its sort key.
_DEADLETTER_KEY = "topic, partition, offset, cityHash64(value_b64), cluster_id"
_AGENT_EVENTS_CHANNEL = (
    "channel LowCardinality(String) COMMENT 'topic it came from: events (agents), control "
    "(operators, through the API), state (the dataflow); empty for rows stored before the "
    "column existed, from the one agents.events of then'"
)
_ANOMALIES_EPISODE_START = (
    "episode_start Nullable(DateTime64(3, 'UTC')) "
    "COMMENT 'start of the anomaly episode the heartbeat belongs to, if any'"
)
_ANOMALIES_EPISODE_END = (
    "episode_end Nullable(DateTime64(3, 'UTC')) "
    "COMMENT 'on the record that closed an anomaly episode: its last heartbeat that stood out'"
)
_COMMANDS_TASK_ID = (
    "task_id Nullable(String) COMMENT 'the task it concerns (run_task, cancel_task), if any'"
)

#: The columns of an ``AssignmentScore`` (the history and the latest-per-agent tables).
_ASSIGNMENT_SCORE_COLUMNS = """
            agent_id String,
            tenant_id LowCardinality(String),
            timestamp DateTime64(3, 'UTC'),
            score Float32 COMMENT 'weighted sum of the components / sum of the weights, 0…1',
            performance Float32,
            cost Float32,
            availability Float32,
            sla Float32,
            weights String COMMENT 'JSON: ScoringWeights',
            state LowCardinality(String),
            active_tasks UInt32,
            capacity UInt32,
            success_rate Float32,
            response_time_ms Float32,
            sla_met_rate Float32,
            tasks_completed UInt64,
            tasks_failed UInt64,
            p_fail Nullable(Float32),
            by_type String COMMENT 'JSON: task type → TypeEstimate',
            cause LowCardinality(String) COMMENT 'heartbeat, task, state or weights'
        """

#: Tables read per tenant whose sort key ``tenant_id`` leads (:data:`MIGRATIONS` version 3).
#: Not here: ``incidents`` and ``audit_log`` (tenant first from the start), ``deadletter``
#: (bytes that did not parse have no tenant one could trust; fleet-wide reads only),
#: ``rules`` (fleet-wide), ``silences`` and ``api_keys`` (read whole or by id; small),
#: the offsets tables (not agent data).
TENANT_TABLES = (
    "metrics",
    "anomalies",
    "threats",
    "baselines",
    "alerts",
    "security_scores",
    "commands",
    "agent_events",
)

#: What changed in the schema since the first release, in order; each is applied once
#: to a database made before it (``schema_migrations`` records it). Never edit a
#: released one: add the next version (docs/migrations.md).
MIGRATIONS = (
    Migration(
        1,
        "deadletter_cluster_id",
        add_columns=(AddColumn("deadletter", _DEADLETTER_CLUSTER_ID, order_by=_DEADLETTER_KEY),),
        why="dead letters at a reused offset of a new broker log must not merge away",
    ),
    Migration(
        2,
        "agent_events_channel",
        add_columns=(AddColumn("agent_events", _AGENT_EVENTS_CHANNEL),),
        why="events say which topic (events, control, state) they came from",
    ),
    Migration(
        3,
        "tenant_id_leads_sort_keys",
        rebuild=TENANT_TABLES,
        why="every query takes the tenant; an agent has one tenant, so prepending it keeps "
        "each table's identity (no two rows merge that did not before, and none stop merging)",
    ),
    Migration(
        4,
        "commands_task_id",
        add_columns=(AddColumn("commands", _COMMANDS_TASK_ID),),
        why="orders to run or cancel a task name the task (orchestration)",
    ),
    Migration(
        5,
        "anomalies_episode_start",
        add_columns=(AddColumn("anomalies", _ANOMALIES_EPISODE_START),),
        why="a sustained anomaly is one episode: the records of its heartbeats name its start",
    ),
    Migration(
        6,
        "anomalies_episode_end",
        add_columns=(AddColumn("anomalies", _ANOMALIES_EPISODE_END),),
        why="an episode has an end: the record of the heartbeat that closes it names it",
    ),
)


#: Tables with a TTL: table → (what it holds, the column the age is counted from). Raw
#: input (the heartbeats and the dead letters) expires after
#: ``clickhouse_metrics_ttl_days``, derived findings and events after
#: ``clickhouse_findings_ttl_days``; both default to ``clickhouse_ttl_days``. Tables not
#: listed keep their rows: the audit trail (``audit_log``: never shortened), the latest
#: state per agent (``baselines``, ``agents``, ``agent_registry``,
#: ``assignment_scores_latest``), configuration (``rules``, ``silences``, ``api_keys``)
#: and progress (``loader_offsets``, ``webhook_offsets``). docs/reliability.md.
RETENTION: dict[str, tuple[str, str]] = {
    "metrics": ("raw", "timestamp"),
    "deadletter": ("raw", "received_at"),
    "anomalies": ("findings", "timestamp"),
    "threats": ("findings", "first_seen"),
    "alerts": ("findings", "updated_at"),
    "security_scores": ("findings", "timestamp"),
    "commands": ("findings", "issued_at"),
    "incidents": ("findings", "first_seen"),
    "agent_events": ("findings", "timestamp"),
    "assignment_scores": ("findings", "timestamp"),
    "tasks": ("findings", "assigned_at"),
}


def retention_days(settings: Settings, table: str) -> int | None:
    """Days a table keeps a row (None: no TTL, the rows stay).

    >>> s = Settings(clickhouse_ttl_days=90, clickhouse_metrics_ttl_days=14)
    >>> retention_days(s, "metrics"), retention_days(s, "threats"), retention_days(s, "audit_log")
    (14, 90, None)
    """
    kind = RETENTION.get(table, (None, ""))[0]
    if kind is None:
        return None
    days = (
        settings.clickhouse_metrics_ttl_days
        if kind == "raw"
        else settings.clickhouse_findings_ttl_days
    )
    return days or settings.clickhouse_ttl_days


_TTL_DAYS = re.compile(r"TTL toDateTime\((\w+)\) \+ toIntervalDay\((\d+)\)")


def apply_retention(client: Client, settings: Settings) -> list[str]:
    """Bring each table's TTL to what the settings say (tables made under other settings
    keep the TTL they were made with until this runs); the tables changed.

    ``ALTER TABLE ... MODIFY TTL`` also drops at once the rows a shorter TTL expires.
    With ``clickhouse_migrate`` false nothing is changed and a difference is logged.
    """
    db = settings.clickhouse_database
    queries = dict(
        client.query(
            "SELECT name, create_table_query FROM system.tables WHERE database = {db:String}",
            parameters={"db": db},
        ).result_rows
    )
    changed = []
    for table, (_kind, column) in RETENTION.items():
        found = _TTL_DAYS.search(queries.get(table, ""))
        days = retention_days(settings, table)
        if found is None or int(found.group(2)) == days:
            continue
        if not settings.clickhouse_migrate:
            log.warning(
                "retention_differs table=%s ttl_days=%s wanted_days=%d action=start once with "
                "AGENTWATCH_CLICKHOUSE_MIGRATE=true to apply it",
                table,
                found.group(2),
                days,
            )
            continue
        client.command(
            f"ALTER TABLE {db}.{table} MODIFY TTL toDateTime({column}) + INTERVAL {days} DAY"
        )
        log.info("retention_changed table=%s from_days=%s to_days=%d", table, found.group(2), days)
        changed.append(table)
    return changed


def schema_statements(settings: Settings) -> list[str]:
    """DDL of the database and every table, in creation order."""
    db = settings.clickhouse_database
    raw, findings = retention_days(settings, "metrics"), retention_days(settings, "anomalies")
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"""
        CREATE TABLE IF NOT EXISTS {db}.metrics (
            agent_id String,
            tenant_id LowCardinality(String),
            timestamp DateTime64(3, 'UTC'),
            cpu_usage Float64,
            memory_usage Float64,
            disk_usage Float64,
            network_latency Float64,
            active_tasks UInt32,
            completed_tasks UInt64,
            failed_tasks UInt64,
            error_rate Float64,
            response_time_avg Float64,
            uptime_seconds Float64,
            bytes_out UInt64,
            status LowCardinality(String)
        )
        ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(timestamp)
        ORDER BY (tenant_id, agent_id, timestamp)
        TTL toDateTime(timestamp) + INTERVAL {raw} DAY
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.anomalies (
            agent_id String,
            tenant_id LowCardinality(String),
            timestamp DateTime64(3, 'UTC'),
            score Float64,
            threshold Float64,
            is_anomaly Bool,
            detector LowCardinality(String),
            top_feature LowCardinality(String),
            reasons String COMMENT 'JSON list of {{feature, value, baseline_mean, baseline_std, z}}'
            , {_ANOMALIES_EPISODE_START}
            , {_ANOMALIES_EPISODE_END}
        )
        ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(timestamp)
        ORDER BY (tenant_id, agent_id, timestamp)
        TTL toDateTime(timestamp) + INTERVAL {findings} DAY
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.threats (
            agent_id String,
            tenant_id LowCardinality(String),
            rule LowCardinality(String),
            category LowCardinality(String),
            severity LowCardinality(String),
            first_seen DateTime64(3, 'UTC'),
            last_seen DateTime64(3, 'UTC'),
            condition String,
            evidence String COMMENT 'JSON {{condition, values, baseline, window_start, window_end}}'
        )
        ENGINE = ReplacingMergeTree(last_seen)
        PARTITION BY toYYYYMM(first_seen)
        ORDER BY (tenant_id, agent_id, first_seen, rule)
        TTL toDateTime(first_seen) + INTERVAL {findings} DAY
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.baselines (
            agent_id String,
            tenant_id LowCardinality(String),
            timestamp DateTime64(3, 'UTC'),
            heartbeats UInt64,
            warmed_up Bool,
            mean Map(String, Float64),
            std Map(String, Float64)
        )
        ENGINE = ReplacingMergeTree(timestamp)
        ORDER BY (tenant_id, agent_id)
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.deadletter (
            topic LowCardinality(String),
            partition UInt32,
            offset UInt64,
            reason String,
            key Nullable(String),
            value_b64 String,
            value_bytes UInt32,
            received_at DateTime64(3, 'UTC'),
            {_DEADLETTER_CLUSTER_ID}
        )
        ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(received_at)
        PRIMARY KEY (topic, partition, offset, cityHash64(value_b64))
        ORDER BY ({_DEADLETTER_KEY})
        TTL toDateTime(received_at) + INTERVAL {raw} DAY
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.rules (
            name String,
            spec String COMMENT 'JSON of the rule (ThreatRuleSpec), as it was after the change',
            deleted Bool,
            version Float64 COMMENT 'when the change was made, epoch seconds',
            updated_by String
        )
        ENGINE = ReplacingMergeTree
        ORDER BY (name, version)
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.alerts (
            fingerprint String,
            agent_id String,
            tenant_id LowCardinality(String),
            rule LowCardinality(String),
            category LowCardinality(String) COMMENT '"" until known',
            severity LowCardinality(String) COMMENT '"" until known',
            state LowCardinality(String) COMMENT 'pending, firing or resolved',
            started_at DateTime64(3, 'UTC'),
            fired_at Nullable(DateTime64(3, 'UTC')),
            resolved_at Nullable(DateTime64(3, 'UTC')),
            last_seen DateTime64(3, 'UTC'),
            updated_at DateTime64(3, 'UTC'),
            flapping Bool,
            flap_count UInt32,
            summary String,
            evidence String COMMENT 'JSON of the threat evidence once fired, else ""',
            silenced Bool
        )
        ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(updated_at)
        ORDER BY (tenant_id, agent_id, fingerprint, updated_at, state)
        TTL toDateTime(updated_at) + INTERVAL {findings} DAY
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.security_scores (
            agent_id String,
            tenant_id LowCardinality(String),
            timestamp DateTime64(3, 'UTC'),
            score Float64,
            delta Float64,
            cause LowCardinality(String),
            first_seen Nullable(DateTime64(3, 'UTC'))
        )
        ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(timestamp)
        ORDER BY (tenant_id, agent_id, timestamp, cause)
        TTL toDateTime(timestamp) + INTERVAL {findings} DAY
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.commands (
            command_id String,
            agent_id String,
            tenant_id LowCardinality(String),
            command LowCardinality(String),
            reason String,
            issued_at DateTime64(3, 'UTC'),
            actor String,
            score Nullable(Float64),
            {_COMMANDS_TASK_ID}
        )
        ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(issued_at)
        ORDER BY (tenant_id, agent_id, command_id)
        TTL toDateTime(issued_at) + INTERVAL {findings} DAY
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.incidents (
            incident_id String,
            tenant_id LowCardinality(String),
            rule LowCardinality(String),
            category LowCardinality(String),
            severity LowCardinality(String),
            agent_ids Array(String),
            truncated Bool,
            first_seen DateTime64(3, 'UTC'),
            last_seen DateTime64(3, 'UTC'),
            revision UInt32
        )
        ENGINE = ReplacingMergeTree(revision)
        PARTITION BY toYYYYMM(first_seen)
        ORDER BY (tenant_id, incident_id)
        TTL toDateTime(first_seen) + INTERVAL {findings} DAY
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.agent_events (
            type LowCardinality(String),
            agent_id String COMMENT '* for events about the whole fleet',
            tenant_id LowCardinality(String),
            actor String,
            timestamp DateTime64(3, 'UTC'),
            payload String COMMENT 'JSON object',
            {_AGENT_EVENTS_CHANNEL}
        )
        ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(timestamp)
        ORDER BY (tenant_id, agent_id, timestamp, type)
        TTL toDateTime(timestamp) + INTERVAL {findings} DAY
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.api_keys (
            key_id String,
            role LowCardinality(String) COMMENT 'admin, operator, analyst or agent',
            tenant_id LowCardinality(String) COMMENT '* for an admin of every tenant',
            agent_id String COMMENT 'an agent key''s agent; empty for the other roles',
            name String,
            secret_hash String COMMENT 'SHA-256 of the key''s secret (never the secret)',
            created_at DateTime64(3, 'UTC'),
            expires_at Nullable(DateTime64(3, 'UTC')),
            revoked_at Nullable(DateTime64(3, 'UTC')),
            created_by String,
            version Float64 COMMENT 'when this row was written, epoch seconds'
        )
        ENGINE = ReplacingMergeTree(version)
        ORDER BY key_id
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.audit_log (
            tenant_id LowCardinality(String) COMMENT 'the chain: * for fleet-wide changes',
            seq UInt64 COMMENT 'position in the tenant''s chain, from 1',
            at_ms Int64 COMMENT 'when the change was asked for or derived, epoch ms',
            at DateTime64(3, 'UTC') MATERIALIZED fromUnixTimestamp64Milli(at_ms, 'UTC'),
            actor String,
            action LowCardinality(String) COMMENT 'the event type: rule_changed, released…',
            target String COMMENT 'the agent, rule or silence it is about',
            origin String COMMENT 'where a command came from: the API caller''s address',
            before String COMMENT 'JSON, empty when the event does not say',
            after String COMMENT 'JSON',
            reason String,
            source String COMMENT 'the log message: cluster/topic/partition/offset',
            prev_hash String COMMENT 'hash of the tenant''s previous row',
            hash String COMMENT 'SHA-256 of prev_hash and this row (agentwatch.audit)',
            recorded_at DateTime64(3, 'UTC') DEFAULT now64(3)
        )
        ENGINE = MergeTree
        ORDER BY (tenant_id, seq)
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.silences (
            id String,
            agent_id String,
            tenant_id String,
            rule String,
            category String,
            severity String,
            starts_at DateTime64(3, 'UTC'),
            ends_at DateTime64(3, 'UTC'),
            created_by String,
            comment String,
            deleted Bool COMMENT 'expired early through DELETE /api/v1/silences/{{id}}',
            version Float64 COMMENT 'when the row was written, epoch seconds',
            updated_by String
        )
        ENGINE = ReplacingMergeTree(version)
        ORDER BY id
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.agents (
            tenant_id LowCardinality(String),
            agent_id String,
            state LowCardinality(String) COMMENT 'one of the 12 lifecycle states',
            since DateTime64(3, 'UTC') COMMENT 'event time of the change',
            previous_state LowCardinality(Nullable(String)) COMMENT 'NULL: it was not registered',
            reason String,
            actor String,
            trigger LowCardinality(String) COMMENT 'what moved it (agentwatch.lifecycle.Trigger)',
            quarantine_until Nullable(DateTime64(3, 'UTC')),
            transitions UInt32 COMMENT 'changes of state so far, this one included: the version'
        )
        ENGINE = ReplacingMergeTree(transitions)
        ORDER BY (tenant_id, agent_id)
        COMMENT 'latest lifecycle state per agent: one row per status_changed, the newest wins'
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.agent_registry (
            tenant_id LowCardinality(String),
            agent_id String,
            name String,
            agent_type LowCardinality(String),
            owner String,
            version String,
            capabilities Array(String),
            max_concurrent_tasks UInt32,
            resources Map(String, Float64),
            tags Map(String, String),
            endpoint Nullable(String),
            registered_at DateTime64(3, 'UTC'),
            actor String
        )
        ENGINE = ReplacingMergeTree(registered_at)
        ORDER BY (tenant_id, agent_id)
        COMMENT 'one row per registration the dataflow accepted (status_changed to registered)'
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.assignment_scores ({_ASSIGNMENT_SCORE_COLUMNS})
        ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(timestamp)
        ORDER BY (tenant_id, agent_id, timestamp, cause)
        TTL toDateTime(timestamp) + INTERVAL {findings} DAY
        COMMENT 'history of every agent''s assignment score (agents.assignment_scores)'
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.assignment_scores_latest ({_ASSIGNMENT_SCORE_COLUMNS})
        ENGINE = ReplacingMergeTree(timestamp)
        ORDER BY (tenant_id, agent_id)
        COMMENT 'latest assignment score per agent (read with FINAL)'
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.tasks (
            task_id String,
            tenant_id LowCardinality(String),
            agent_id String,
            task_type LowCardinality(String),
            priority LowCardinality(String),
            status LowCardinality(String) COMMENT 'schemas.models.TASK_STATUSES',
            attempt UInt16,
            required_capabilities Array(String),
            score Nullable(Float32),
            components String COMMENT 'JSON: ScoreComponents, or empty',
            p_success Nullable(Float32) COMMENT 'predicted when assigned',
            expected_duration_s Nullable(Float64) COMMENT 'predicted when assigned',
            deadline Nullable(DateTime64(3, 'UTC')),
            assigned_at DateTime64(3, 'UTC'),
            accepted_at Nullable(DateTime64(3, 'UTC')),
            finished_at Nullable(DateTime64(3, 'UTC')),
            duration_s Nullable(Float64),
            sla_met Nullable(Bool),
            reason String,
            agent_active_tasks UInt32,
            capacity UInt32,
            assigned_by String,
            updated_at DateTime64(3, 'UTC'),
            version UInt64 COMMENT 'updated_at in ms × 8 + the status''s rank: the latest wins'
        )
        ENGINE = ReplacingMergeTree(version)
        PARTITION BY toYYYYMM(assigned_at)
        ORDER BY (tenant_id, task_id)
        TTL toDateTime(assigned_at) + INTERVAL {findings} DAY
        COMMENT 'latest status per task: task_assigned (control) and task_changed (state)'
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.webhook_offsets (
            cluster_id String,
            topic String,
            partition UInt32,
            next_offset UInt64,
            updated_at DateTime64(6, 'UTC')
        )
        ENGINE = ReplacingMergeTree(updated_at)
        ORDER BY (topic, partition)
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {db}.loader_offsets (
            cluster_id String,
            topic String,
            partition UInt32,
            next_offset UInt64,
            updated_at DateTime64(6, 'UTC')
        )
        ENGINE = ReplacingMergeTree(updated_at)
        ORDER BY (topic, partition)
        """,
    ]


def create_schema(client: Client, settings: Settings) -> None:
    """Create the database and tables at today's layout if they do not exist, and apply
    the :data:`MIGRATIONS` a database made by an earlier release lacks (safe to repeat).

    With ``settings.clickhouse_migrate`` false it changes nothing and raises
    :class:`sinks.migrations.SchemaNotCurrent` if a migration is pending.
    """
    apply_migrations(
        client,
        settings.clickhouse_database,
        schema_statements(settings),
        MIGRATIONS,
        migrate=settings.clickhouse_migrate,
    )
    apply_retention(client, settings)


def main() -> None:
    """``python -m sinks.clickhouse``: create or migrate the schema, then exit (the cluster
    profile's one-off job that runs before the loader and the API)."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    settings = Settings().model_copy(update={"clickhouse_migrate": True})
    client = connect(settings)
    try:
        create_schema(client, settings)
    finally:
        client.close()


if __name__ == "__main__":
    main()
