"""The tables as the release before schema migrations made them (commit 6c57025):
every table read per tenant sorted by ``agent_id`` first. A copy, not an import, so that
tests/test_migrations.py keeps testing the upgrade from this layout whatever today's
DDL becomes. ``__DB__`` stands for the database."""

RELEASE_6C57025_TABLES = (
    """\
CREATE TABLE __DB__.metrics (
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
ORDER BY (agent_id, timestamp)
TTL toDateTime(timestamp) + INTERVAL 90 DAY
""",
    """\
CREATE TABLE __DB__.anomalies (
    agent_id String,
    tenant_id LowCardinality(String),
    timestamp DateTime64(3, 'UTC'),
    score Float64,
    threshold Float64,
    is_anomaly Bool,
    detector LowCardinality(String),
    top_feature LowCardinality(String),
    reasons String COMMENT 'JSON list of {feature, value, baseline_mean, baseline_std, z}'
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (agent_id, timestamp)
TTL toDateTime(timestamp) + INTERVAL 90 DAY
""",
    """\
CREATE TABLE __DB__.threats (
    agent_id String,
    tenant_id LowCardinality(String),
    rule LowCardinality(String),
    category LowCardinality(String),
    severity LowCardinality(String),
    first_seen DateTime64(3, 'UTC'),
    last_seen DateTime64(3, 'UTC'),
    condition String,
    evidence String COMMENT 'JSON {condition, values, baseline, window_start, window_end}'
)
ENGINE = ReplacingMergeTree(last_seen)
PARTITION BY toYYYYMM(first_seen)
ORDER BY (agent_id, first_seen, rule)
TTL toDateTime(first_seen) + INTERVAL 90 DAY
""",
    """\
CREATE TABLE __DB__.baselines (
    agent_id String,
    tenant_id LowCardinality(String),
    timestamp DateTime64(3, 'UTC'),
    heartbeats UInt64,
    warmed_up Bool,
    mean Map(String, Float64),
    std Map(String, Float64)
)
ENGINE = ReplacingMergeTree(timestamp)
ORDER BY agent_id
""",
    """\
CREATE TABLE __DB__.deadletter (
    topic LowCardinality(String),
    partition UInt32,
    offset UInt64,
    reason String,
    key Nullable(String),
    value_b64 String,
    value_bytes UInt32,
    received_at DateTime64(3, 'UTC'),
    cluster_id LowCardinality(String) COMMENT 'broker log the message was read from'
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(received_at)
PRIMARY KEY (topic, partition, offset, cityHash64(value_b64))
ORDER BY (topic, partition, offset, cityHash64(value_b64), cluster_id)
TTL toDateTime(received_at) + INTERVAL 90 DAY
""",
    """\
CREATE TABLE __DB__.rules (
    name String,
    spec String COMMENT 'JSON of the rule (ThreatRuleSpec), as it was after the change',
    deleted Bool,
    version Float64 COMMENT 'when the change was made, epoch seconds',
    updated_by String
)
ENGINE = ReplacingMergeTree
ORDER BY (name, version)
""",
    """\
CREATE TABLE __DB__.alerts (
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
ORDER BY (agent_id, fingerprint, updated_at, state)
TTL toDateTime(updated_at) + INTERVAL 90 DAY
""",
    """\
CREATE TABLE __DB__.security_scores (
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
ORDER BY (agent_id, timestamp, cause)
TTL toDateTime(timestamp) + INTERVAL 90 DAY
""",
    """\
CREATE TABLE __DB__.commands (
    command_id String,
    agent_id String,
    tenant_id LowCardinality(String),
    command LowCardinality(String),
    reason String,
    issued_at DateTime64(3, 'UTC'),
    actor String,
    score Nullable(Float64)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(issued_at)
ORDER BY (agent_id, command_id)
TTL toDateTime(issued_at) + INTERVAL 90 DAY
""",
    """\
CREATE TABLE __DB__.incidents (
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
TTL toDateTime(first_seen) + INTERVAL 90 DAY
""",
    """\
CREATE TABLE __DB__.agent_events (
    type LowCardinality(String),
    agent_id String COMMENT '* for events about the whole fleet',
    tenant_id LowCardinality(String),
    actor String,
    timestamp DateTime64(3, 'UTC'),
    payload String COMMENT 'JSON object',
    channel LowCardinality(String) COMMENT 'topic it came from'
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (agent_id, timestamp, type)
TTL toDateTime(timestamp) + INTERVAL 90 DAY
""",
    """\
CREATE TABLE __DB__.api_keys (
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
    """\
CREATE TABLE __DB__.audit_log (
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
    """\
CREATE TABLE __DB__.silences (
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
    deleted Bool COMMENT 'expired early through DELETE /api/v1/silences/{id}',
    version Float64 COMMENT 'when the row was written, epoch seconds',
    updated_by String
)
ENGINE = ReplacingMergeTree(version)
ORDER BY id
""",
    """\
CREATE TABLE __DB__.webhook_offsets (
    cluster_id String,
    topic String,
    partition UInt32,
    next_offset UInt64,
    updated_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (topic, partition)
""",
    """\
CREATE TABLE __DB__.loader_offsets (
    cluster_id String,
    topic String,
    partition UInt32,
    next_offset UInt64,
    updated_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (topic, partition)
""",
)
