"""Every address, path and tunable of agentwatch, in one place.

Each field is read from the environment with the prefix ``AGENTWATCH_``
(``AGENTWATCH_BOOTSTRAP_SERVERS=127.0.0.1:9092``), or from a ``.env`` file in
the working directory. Numbers that come from the seed document (thresholds,
windows, intervals) are defaults here and nowhere else.

>>> s = Settings(topic_prefix="t1.")
>>> s.topic("metrics")
't1.agents.metrics'
>>> Settings().baseline_warmup_s
86400.0
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agentwatch.kafka_logs import LIBRDKAFKA_LOG
from agentwatch.secrets import SLACK_PREFIX, SecretDsn, SecretUrl, reveal, secret_strings

#: Logical topic names; the physical name is ``topic_prefix + "agents." + name``.
#: ``events`` carries agents' facts, ``control`` operators' commands (only the API
#: writes it), ``state`` the facts the dataflow derives (``schemas.events.CHANNELS``);
#: ``metric_rows`` the heartbeats the dataflow took, as Arrow batches for the loader
#: (``schemas.metric_rows``: decoded once, in the dataflow).
TOPICS = (
    "metrics",
    "metric_rows",
    "events",
    "control",
    "state",
    "anomalies",
    "baselines",
    "threats",
    "alerts",
    "incidents",
    "security",
    "assignment_scores",
    "deadletter",
    "commands",
)
#: Topics renamed since an earlier release: old logical name → the new one. A deployment
#: upgraded from before may still hold unread records on the old topic, so the loader and
#: the API's projection also read it, when it exists, exactly as the new one (never
#: created, never waited for: a new deployment has none). docs/migrations.md, "Topics".
RENAMED_TOPICS = {"scores": "security"}


class Settings(BaseSettings):
    """agentwatch configuration (environment prefix ``AGENTWATCH_``)."""

    model_config = SettingsConfigDict(
        env_prefix="AGENTWATCH_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        # a validation error never quotes the value it refused: it may be a secret
        hide_input_in_errors=True,
    )

    # --- where things live -------------------------------------------------
    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers (host:port,...)."
    )
    topic_prefix: str = Field("", description="Prefix put before every topic name.")
    metrics_partitions: int = Field(4, ge=1, description="Partitions of agents.metrics.")
    derived_partitions: int = Field(2, ge=1, description="Partitions of each derived topic.")
    control_partitions: int = Field(
        1,
        ge=1,
        description="Partitions of agents.control, the operators' commands. One keeps every "
        "command in the order the API published it (fleet-wide commands share the key '*' "
        "and so one partition whatever the count); commands are few.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="How Kafka clients connect: PLAINTEXT (the embedded broker), or with a "
        "SASL login (the cluster profile, whose ACLs say what each principal may read and "
        "write: docs/security.md).",
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] = Field(
        "SCRAM-SHA-256", description="SASL mechanism of the Kafka login."
    )
    kafka_sasl_username: str = Field(
        "",
        description="Kafka principal of this process: agent, api, dataflow or loader in the "
        "cluster profile (only the api principal may write agents.control).",
    )
    kafka_sasl_password: SecretStr = Field(
        SecretStr(""), description="Password of the Kafka principal (never logged)."
    )
    clickhouse_dsn: SecretDsn = Field(
        SecretDsn("chdb://var/clickhouse"),
        description="clickhouse-connect DSN: chdb://relative/path or chdb:///absolute/path "
        "(embedded chDB), or http(s)://user:password@host:port (ClickHouse server). A secret: "
        "shown with the password as ***; .get_secret_value() gives the real one.",
    )
    clickhouse_database: str = Field("agentwatch", description="ClickHouse database name.")
    clickhouse_ttl_days: int = Field(90, ge=1, description="Rows older than this are dropped.")
    clickhouse_metrics_ttl_days: int | None = Field(
        None,
        ge=1,
        description="Raw input (tables metrics and deadletter) is dropped after this many days; "
        "unset: clickhouse_ttl_days. Changed later, the TTL is altered at the next start "
        "(docs/reliability.md: disk per agent per day).",
    )
    clickhouse_findings_ttl_days: int | None = Field(
        None,
        ge=1,
        description="Derived findings and events (anomalies, threats, alerts, security_scores, "
        "commands, incidents, agent_events, assignment_scores, tasks) are dropped after this "
        "many days; unset: clickhouse_ttl_days. The audit trail has no TTL: never shortened.",
    )
    clickhouse_migrate: bool = Field(
        True,
        description="Apply pending schema migrations at start (sinks/migrations.py). Set false "
        "on every process but one when several share a ClickHouse server (the cluster profile "
        "migrates in its own job): such a process then refuses to start while one is pending.",
    )
    var_dir: Path = Field(Path("var"), description="Run directory: logs, pids, recovery.")

    # --- the embedded broker (Tansu) ----------------------------------------
    broker_host: str = Field("127.0.0.1", description="Embedded broker listen host.")
    broker_port: int = Field(9092, description="Embedded broker listen port.")
    broker_start_timeout_s: float = Field(20.0, description="How long to wait for the broker.")
    shutdown_grace_s: float = Field(
        6.0,
        gt=0,
        le=7.5,
        description="`agentwatch up` gives its processes this long to stop after SIGTERM "
        "before SIGKILL (the broker then gets 2 s more; all within 10 s).",
    )

    # --- the API ------------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="API listen host.")
    api_port: int = Field(8000, description="API listen port.")
    api_auth_required: bool = Field(
        True,
        description="Every request presents an API key ('Authorization: Bearer aw_…'), whose "
        "role and tenant decide what it may do. False: a request without a key acts as an "
        "admin of every tenant (the embedded demo on loopback; keys are still checked when "
        "sent). Refused with an api_host that is not a loopback address.",
    )

    @field_validator("api_auth_required")
    @classmethod
    def _keyless_on_loopback_only(cls, required: bool, info: ValidationInfo) -> bool:
        host = info.data.get("api_host")
        if required or host is None or host == "localhost":
            return required
        if not _loopback(host):
            raise ValueError(
                f"AGENTWATCH_API_AUTH_REQUIRED=false answers a request without a key as an admin "
                f"of every tenant: only on a loopback API_HOST (127.0.0.1 or ::1), not {host!r}; "
                "make keys (README: Keys, roles and tenants) or set AGENTWATCH_API_HOST=127.0.0.1"
            )
        return required

    api_admin_key_file: Path | None = Field(
        None,
        description="The API makes an admin key of every tenant and writes it to this file "
        "(mode 0600) when the file holds no working one: the first key of a new stack "
        "(`agentwatch up` uses <var_dir>/run/admin.key and prints it).",
    )
    api_key: SecretStr | None = Field(
        None,
        description="The API key the `agentwatch` commands (sql, status, audit) send; default: "
        "the running stack's admin key file.",
    )
    api_key_cache_s: float = Field(
        5.0,
        ge=0,
        description="An API key looked up is trusted this long before it is looked up again "
        "(a revocation takes effect on every API process within this time).",
    )
    agent_credential_overlap_s: float = Field(
        3600.0,
        ge=0,
        description="When an agent's credential is rotated, its older keys stay good this long "
        "(at most until their own expiry), so the agent can switch without a gap.",
    )
    # --- the agent registry (POST /api/v1/agents/register, search, status) ---
    agents_per_tenant_limit: int = Field(
        10_000,
        ge=1,
        description="Most agents a tenant may hold (registered and not decommissioned); "
        "a registration past it is refused (409) until agents are decommissioned or this "
        "is raised.",
    )
    agent_credential_ttl_s: float = Field(
        30 * 86_400.0,
        gt=0,
        description="Lifetime of the API key (role agent) made for an agent at registration.",
    )
    agent_orphan_after_s: float = Field(
        7 * 86_400.0,
        gt=0,
        description="An agent silent this long (no heartbeat, not in a state in which it "
        "beats) is flagged orphaned, like one without an owner.",
    )
    api_projection_ready_timeout_s: float = Field(
        10.0,
        ge=0,
        description="How long a registration or search waits for the API's agent "
        "projection to have read the registry topics to their end, before a 503.",
    )
    api_projection_metadata_timeout_s: float = Field(
        1.0,
        gt=0,
        description="Longest the API's agent projection waits for the broker's list of "
        "topics (at start, and when it looks for new topics; tried again a second later). "
        "Its thread stops only after that call returns, so a shutdown with the broker down "
        "waits up to this long.",
    )
    api_gc_refresh_s: float = Field(
        3600.0,
        ge=0,
        description="The API process freezes what each full garbage collection leaves alive, "
        "so the next walks only what is new (at 100,000 agents a walk of everything took "
        "30–200 ms, during which no request is answered). This often (seconds; 0: never) "
        "the frozen objects are handed back and one full collection walks them all, to "
        "free cyclic garbage among them.",
    )
    api_background_niceness: int = Field(
        0,
        ge=0,
        le=19,
        description="In the embedded profile the loader, the audit writer and the webhook "
        "deliverer are threads of the API process; this is added to their nice value "
        "(Linux keeps one per thread, and chDB's threads for their inserts inherit it), so "
        "the requests' thread gets the CPU first. 10 lowered the embedded assign p99 at "
        "100,000 agents by 3–5 ms (docs/benchmarks.md), but under a load that keeps every "
        "core busy the loader then falls behind first, and what it has not stored is not "
        "queryable: so 0 (the requests' priority) unless the API's latency matters more.",
    )
    api_allow_remote_mutations: bool = Field(
        False,
        description="Accept requests that change something (POST, PUT, DELETE…) from other "
        "machines. Off: until the API authenticates its callers, only loopback may change "
        "rules, silences or quarantines, whatever AGENTWATCH_API_HOST listens on.",
    )
    api_broker_timeout_s: float = Field(
        0.5, gt=0, description="Longest one health check waits for the broker (all questions)."
    )
    api_health_cache_s: float = Field(
        2.0, ge=0, description="The broker's health answer is reused for this long (seconds)."
    )
    api_counts_cache_s: float = Field(
        10.0, ge=0, description="Table counts (health, /metrics) are redone at most this often."
    )
    api_run_loader: bool = Field(
        True,
        description="Run the Kafka → ClickHouse loader inside the API process. The embedded "
        "profile must (one process may open chDB); the cluster profile runs it as its own "
        "process (python -m sinks.loader) under its own Kafka principal.",
    )
    api_sql_enabled: bool = Field(
        False,
        description="Serve POST /api/v1/sql: read-only SQL for analysts (agentwatch sql). Off "
        "unless enabled (`agentwatch up` enables it for its loopback demo); once the API has "
        "authentication, for the analyst role only.",
    )
    api_sql_max_result_rows: int = Field(
        10_000, ge=1, description="A query through /api/v1/sql may return at most this many rows."
    )
    api_sql_max_result_bytes: int = Field(
        32 * 2**20,
        ge=1,
        description="A query through /api/v1/sql may return at most this many bytes (uncompressed"
        "; ClickHouse's max_result_bytes): the row cap alone does not bound one huge row.",
    )
    api_sql_max_execution_time_s: float = Field(
        10.0, gt=0, description="A query through /api/v1/sql may run at most this long (seconds)."
    )
    api_sql_max_memory_bytes: int = Field(
        2**30,
        ge=2**20,
        description="Memory one query through /api/v1/sql may use (ClickHouse's max_memory_usage).",
    )
    api_sql_max_threads: int = Field(
        1,
        ge=1,
        description="Threads one query through /api/v1/sql may use (max_threads): the loader and "
        "the API share the machine with it.",
    )
    api_sql_max_rows_to_read: int = Field(
        100_000_000,
        ge=1,
        description="Rows one query through /api/v1/sql may read from tables (max_rows_to_read).",
    )
    api_sql_max_bytes_to_read: int = Field(
        10 * 2**30,
        ge=1,
        description="Bytes one query through /api/v1/sql may read from tables (max_bytes_to_read, "
        "uncompressed).",
    )
    api_sql_max_concurrent_queries: int = Field(
        1,
        ge=1,
        description="Queries through /api/v1/sql that run at once; more are answered 429.",
    )
    api_sql_request_grace_s: float = Field(
        5.0,
        gt=0,
        description="A request to /api/v1/sql answers 504 when no result came this long after "
        "the query's time limit (the query goes on holding its slot until ClickHouse stops it).",
    )

    api_max_in_flight_per_caller: int = Field(
        16,
        ge=0,
        description="Requests of one caller (its address and key) the API works on at once; "
        "more get a 429 with Retry-After: 1. The sync routes share one pool of 40 threads, "
        "status and assign included. 0: no limit.",
    )
    api_max_body_bytes: int = Field(
        2 * 1024 * 1024,
        ge=64 * 1024,
        description="Largest request body the API reads (bytes; OTLP's routes have their "
        "own limit): a larger one is a 413 before it is parsed. 2 MiB holds the bridge's "
        "1,000 heartbeats, a conversation's 256 KiB of text, a bulk operation's 10,000 ids.",
    )

    # --- OpenTelemetry in (POST /v1/metrics, /v1/traces; docs/otel.md) ------------
    otlp_max_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Largest OTLP/HTTP export the API takes (bytes, as sent and once "
        "gunzipped); a larger one is answered 413: lower the SDK's batch size "
        "(OTEL_BSP_MAX_EXPORT_BATCH_SIZE) or raise this.",
    )
    otlp_max_records: int = Field(
        100_000,
        ge=100,
        description="Most records one OTLP/HTTP export may hold: resources, scopes, metrics, "
        "datapoints, spans, span events and attributes (in OTLP JSON also each object and "
        "array item); more is answered 413. Mapping costs CPU per record whatever its size, "
        "so this bounds what one export costs the API (docs/otel.md).",
    )

    # --- reports (GET /api/v1/reports/{kind}) --------------------------------
    report_default_period_s: float = Field(
        86_400.0, gt=0, description="A report without `since` covers this long before `until`."
    )
    report_top_agents: int = Field(
        10, ge=1, le=1000, description="Agents listed in a security report's top by threats."
    )
    report_query_threads: int = Field(
        3,
        ge=1,
        le=16,
        description="Queries of one report that run at once, each on its own ClickHouse client.",
    )
    report_score_bands: dict[str, float] = Field(
        {"high": 80.0, "medium": 50.0, "low": 20.0, "critical": 0.0},
        description="Security-score bands of the reports: an agent's latest score falls in the "
        "band with the highest floor at or below it, or in the lowest band (name: floor, "
        "0…100; at least one band).",
    )

    # --- the dataflow -------------------------------------------------------
    dataflow_workers: int = Field(1, ge=1, description="Bytewax worker threads per process.")
    dataflow_metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the dataflow process's Prometheus /metrics (heartbeats, dead "
        "letters, records by kind, anomalies, threats by rule, step time, snapshot time and "
        "state size); 0: not served (`agentwatch up` then serves it on a free port). Each "
        "process of a Bytewax cluster needs its own.",
    )
    dataflow_metrics_host: str = Field(
        "127.0.0.1", description="Address the dataflow's /metrics listens on."
    )
    loader_metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the Prometheus /metrics of a loader run on its own "
        "(python -m sinks.loader: rows, batches, lag, skipped messages, errors); 0: not "
        "served. A loader inside the API process reports on the API's /metrics.",
    )
    loader_metrics_host: str = Field(
        "127.0.0.1", description="Address a lone loader's /metrics listens on."
    )
    loader_niceness: int = Field(
        0,
        ge=0,
        le=19,
        description="python -m sinks.loader adds this to its nice value at start (its threads "
        "and chDB's inherit it); `agentwatch up` uses embedded_loader_niceness instead.",
    )
    embedded_loader_niceness: int = Field(
        10,
        ge=0,
        le=19,
        description="The loader_niceness of the loader process `agentwatch up` runs: on the "
        "machine's shared cores the API's requests (a 10 ms p99) go before the loader's batches "
        "(1 s to queryable); it cut the assign p99 by 2-5 ms there (docs/benchmarks.md).",
    )
    api_loader_metrics_url: str = Field(
        "",
        description="The /metrics of a loader that runs as a process of its own (its "
        "AGENTWATCH_LOADER_METRICS_PORT); the API's health, console and /metrics then report "
        "that loader, and its absence is a problem. `agentwatch up` sets it; '': no loader to "
        "report unless the API runs one.",
    )
    embedded_loader_process: bool = Field(
        True,
        description="`agentwatch up` runs the loader as a process of its own, which owns chDB "
        "and serves it to the API over ClickHouse's HTTP interface on loopback "
        "(sinks/chdb_http.py); false: the API process runs the loader and owns chDB (one "
        "process fewer; the loader then holds the API's interpreter lock for part of the time, "
        "and the assign p99 is ~5 ms worse, docs/benchmarks.md).",
    )
    clickhouse_serve_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="A process that owns the embedded chDB (python -m sinks.loader, or python "
        "-m sinks.chdb_http alone) serves it on this port with ClickHouse's HTTP interface, "
        "for the API's and Grafana's clickhouse-connect clients; 0: not served.",
    )
    clickhouse_serve_host: str = Field(
        "127.0.0.1",
        description="Address the served chDB listens on; a loopback address only.",
    )
    clickhouse_serve_user: str = Field(
        "agentwatch", description="The one user the served chDB accepts."
    )
    clickhouse_serve_password: SecretStr = Field(
        SecretStr(""),
        description="That user's password (16 characters or more; `agentwatch up` makes a "
        "random one for each start). Never logged.",
    )
    dataflow_process_id: int | None = Field(
        None,
        ge=0,
        description="This process's index in a Bytewax cluster of several processes "
        "(bytewax.run's -i), counted from 0 in the order of AGENTWATCH_DATAFLOW_ADDRESSES; "
        "unset: a cluster of this one process (AGENTWATCH_DATAFLOW_WORKERS threads).",
    )
    dataflow_addresses: str = Field(
        "",
        description="host:port of every process of the Bytewax cluster, separated by ';', "
        "in process-id order, the same list in every process (bytewax.run's -a): the "
        "processes talk to each other there. Needed with AGENTWATCH_DATAFLOW_PROCESS_ID.",
    )
    source_batch_size: int = Field(
        20_000,
        ge=1,
        description="Most heartbeats read from one partition in one batch. A read takes what "
        "has arrived, up to this: live, a few hundred; while a backlog drains, this many. "
        "Each of the dataflow's steps costs something per batch, so larger batches drain a "
        "backlog faster: 20,000 instead of 5,000 took ~7 % off the throughput bench's drain "
        "without moving the live threat latency (docs/benchmarks.md).",
    )
    source_fetch_wait_ms: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Longest the broker holds the dataflow's fetch of a partition while less "
        "than 1 MB waits (librdkafka's fetch.wait.max.ms): at a live rate below ~10 MB/s a "
        "partition it is what a heartbeat waits at most before the dataflow reads it; lower "
        "costs the broker more fetches (docs/benchmarks.md).",
    )
    shard_count: int = Field(
        4,
        ge=1,
        description="Agents are grouped in this many state shards (the keys of the dataflow's "
        "state; each shard's agents are judged together in array operations, so fewer, larger "
        "shards cost less per heartbeat: 4 instead of 16 saves ~2 µs a heartbeat). It bounds "
        "how many Bytewax workers share the work: set it to a few times the workers of the "
        "cluster before the first start. It is fixed by the first start: the recovery "
        "directory records it (layout.json) and a later different value is ignored, with a "
        "warning, until the directory is cleared.",
    )
    shard_key_names: Literal["spread", "plain"] = Field(
        "spread",
        description="How the state shards' keys are named. 'spread': names that Bytewax "
        "routes to worker (shard mod W) for every worker count W dividing 840, so shards "
        "spread evenly over the workers of any cluster (dataflows/routing.py). 'plain': "
        "0, 1, 2, … as state made before it was named (Bytewax may then give several "
        "shards, or all four of the default, to one worker). Recorded with the shard "
        "count in the recovery directory's layout.json, which wins over this setting.",
    )
    dataflow_group_id: str = Field(
        "agentwatch-dataflow",
        description="Consumer group the dataflow commits its read offsets to (for lag "
        "monitoring only; the dataflow resumes from its own recovery snapshots).",
    )
    dataflow_commit_interval_s: float = Field(
        1.0, gt=0, description="How often the dataflow commits its read offsets to its group."
    )
    recovery_dir: Path | None = Field(
        None, description="Bytewax recovery directory; default <var_dir>/recovery."
    )
    recovery_partitions: int = Field(1, ge=1, description="Recovery database partitions.")
    recovery_backup_interval_s: float = Field(
        0.0,
        ge=0,
        description="A recovery snapshot no longer needed (a newer one of the same state is "
        "durable) is deleted after this long (Bytewax's backup_interval); 0: at once. Raise "
        "it to the interval at which the recovery directory is copied to archival storage.",
    )
    snapshot_interval_s: float = Field(
        5.0,
        gt=0,
        description="Epoch length: state is snapshotted this often (seconds). Every shard is "
        "re-pickled and written each time: ~870 B and ~3 µs of CPU per agent "
        "(bench/million.py, docs/benchmarks.md), so 5 s suits fleets up to ~200,000 agents "
        "(~12 % of a core); set 30 for a million (~10 %). A crash replays up to this much "
        "input.",
    )
    metric_rows_compression: Literal["none", "lz4", "zstd"] = Field(
        "none",
        description="How the dataflow compresses the heartbeats it took on agents.metric_rows "
        "(Arrow IPC body compression; the loader and ClickHouse read any of them): lz4 halves "
        "the bytes (~137 to ~71 B a heartbeat), zstd to a third, for CPU in the dataflow and "
        "in ClickHouse. docs/benchmarks.md has what each costs.",
    )
    agents_auto_register: bool = Field(
        False,
        description="Whether a heartbeat of an agent that was never registered registers it "
        "(in the tenant that heartbeat names): the behaviour before registration existed, for "
        "demos and benchmarks. When false (the default) such a heartbeat is dead-lettered with "
        "the reason, and an agent must be registered first (`POST /api/v1/agents/register`). "
        "Either way, a heartbeat whose tenant_id disagrees with the agent's registration, or "
        "of a decommissioned agent, is dead-lettered.",
    )
    gc_young_threshold: int = Field(
        50_000,
        ge=0,
        description="Python's generation-0 garbage-collection threshold in the dataflow and "
        "loader processes (0 keeps Python's default of 700). Their batches keep thousands of "
        "objects alive at once, which at 700 makes the collector run many times per batch.",
    )

    # --- baselines and the detector (seed: 24 h learning period) -----------
    baseline_warmup_s: float = Field(
        86_400.0, ge=0, description="Event time an agent is watched before anything may fire."
    )
    baseline_warmup_heartbeats: int = Field(
        30, ge=1, description="Also at least this many heartbeats before anything may fire."
    )
    baseline_memory_heartbeats: int = Field(
        2880,
        ge=2,
        description="After this many heartbeats the baseline forgets exponentially "
        "(2880 = 24 h at the seed's 30 s heartbeat).",
    )
    baseline_memory_s: float = Field(
        864_000.0,
        gt=0,
        description="...and forgets at least as fast as an exponential average with this time "
        "constant in event time: a heartbeat's share is at least 1 − e^(−interval / this), "
        "interval being the time since the agent's previous heartbeat, so a slow agent "
        "remembers a span of time, not a count (864,000 s = 10 days: 2880 heartbeats at "
        "NAB's 5 min, where the two agree; at 30 s and 5 min the heartbeats decide, at 1 h "
        "it remembers about 240 heartbeats, not 2880 = 120 days).",
    )
    baseline_level_weight: float = Field(
        0.05,
        gt=0,
        le=1,
        description="Share of each heartbeat in a metric's local level (an exponentially "
        "weighted mean the detector judges against): 0.05 follows a daily cycle and "
        "absorbs a new level within a few dozen heartbeats. Per heartbeat at any interval: "
        "as a duration (a half-life of 4055 s, 0.05 at 5 min) it cost NAB's hourly series "
        "more than it gave (docs/detection.md, 2026-12-06).",
    )
    baseline_level_clip_sigma: float = Field(
        8.0,
        gt=0,
        description="Once warm, the local level moves by at most this many std of the spread "
        "about it per heartbeat (times baseline_level_weight): a spike of a few heartbeats "
        "barely drags it, so the heartbeats after the spike are not judged against a level "
        "it pulled up, while a lasting new level is still followed within tens of heartbeats.",
    )
    anomaly_threshold: float = Field(
        0.99,
        gt=0,
        le=1,
        description="Score at or above which a heartbeat is anomalous. The score is "
        "-log10(tail) / 10 of the agent's recent surprise against its own history "
        "(anomaly likelihood): 0.99 is a tail probability of 10^-9.9, so the threshold "
        "on the raw deviation adapts to how noisy each agent is.",
    )
    anomaly_report_threshold: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Scores at or above this are published to agents.anomalies "
        "(0.5: tail probability 1e-5), anomalous or not, when the heartbeat itself stands "
        "out (it fires, a metric is anomaly_reason_sigma from the local level, or beyond the "
        "range seen): the echo of a spike in the recent surprise is not published.",
    )
    anomaly_surprise_weight: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Share of each heartbeat's surprise in the recent average the anomaly "
        "likelihood judges (0.1: about the last 10 heartbeats).",
    )
    anomaly_surprise_half_life_s: float = Field(
        1974.0,
        gt=0,
        description="...but at least what halves the rest's every this long of event time "
        "(1 − 0.5^(interval / this), interval since the agent's previous heartbeat): "
        "'recent' is a duration where heartbeats are sparse (1974 s: 0.1 at NAB's 5 min, "
        "where the two agree; at 30 s and 5 min anomaly_surprise_weight decides, at 1 h a "
        "heartbeat's share is 0.72).",
    )
    anomaly_likelihood_std_floor: float = Field(
        0.05,
        gt=0,
        description="Smallest std of an agent's recent surprise assumed by the anomaly "
        "likelihood (a surprise is about Exp(1): mean 1, std 1).",
    )
    anomaly_likelihood_prior_std: float = Field(
        0.5,
        gt=0,
        description="Std of recent surprise an agent's surprise history starts from (worth "
        "baseline_warmup_heartbeats heartbeats), about twice the usual 0.23, so a short "
        "history right after warm-up does not fire on ordinary heartbeats.",
    )
    anomaly_extreme_margin: float = Field(
        0.05,
        ge=0,
        description="A metric beyond the range the agent has shown so far by more than this "
        "share of the range's span (and more than its std floor) scores 1 at once.",
    )
    anomaly_extreme_after_s: float = Field(
        180_000.0,
        ge=0,
        description="New extremes count only once the agent has been watched this long (event "
        "time; 50 h = NAB's former 600 points at 5 min): a range seen over a short span is no "
        "range, and its new records are routine.",
    )
    anomaly_extreme_max_p: float = Field(
        1e-5,
        gt=0,
        le=1,
        description="On agents whose metric tails are learned (anomaly_tail_min_features), a "
        "new extreme scores 1 at once only if its deviation is also this improbable for the "
        "metric's own tail, Bonferroni-corrected over the metrics: a heavy-tailed metric's "
        "routine new records do not.",
    )
    anomaly_quiet_s: float = Field(
        60_000.0,
        ge=0,
        description="After an anomaly fires, for this long (event time; 60,000 s = NAB's former "
        "200 points at 5 min) the agent does not fire again on the metrics that drove it (scores "
        "still reported), so one incident raises one anomaly.",
    )
    anomaly_repeat_s: float = Field(
        60_000.0,
        ge=0,
        description="On an agent whose metrics' tails are not learned (fewer than "
        "anomaly_tail_min_features metrics: a single series), for this long after the quiet "
        "period (event time) a repeat is held to a stricter bar than a first anomaly: the agent "
        "fires only as it would in the quiet period (another metric anomaly_quiet_break_sigma "
        "from its level or beyond its range) or with a new extreme (a value beyond its range) "
        "of the metrics the quiet period was about; not on a high score alone. Where tails are "
        "learned they judge a repeat (on multivariate servers the window hid a true recurrence "
        "and no false one). 0: none.",
    )
    anomaly_envelope_ratio: float = Field(
        0.25,
        ge=0,
        description="On an agent whose metrics' tails are not learned (fewer than "
        "anomaly_tail_min_features metrics: a single series), a heartbeat whose deviations, "
        "upward and downward, are all below this share of the largest the agent has shown "
        "lately in that direction (its envelope: "
        "anomaly_envelope_half_life_s, anomaly_envelope_growth) does not fire on a high score "
        "alone (a new extreme still does) but quiets its metrics as a fired one would (its "
        "echo does not fire either): a burst well within the bursts the agent makes routinely "
        "is not news. Chosen on NAB, where it removes false alarms on Twitter's bursty volumes "
        "(docs/detection.md). Where tails are learned they judge a burst metric by metric. "
        "0: off.",
    )
    anomaly_envelope_growth: float = Field(
        2.0,
        ge=1,
        description="A heartbeat raises the agent's envelope (anomaly_envelope_ratio) at most "
        "this many times: bursts that come back ratchet it up, one giant spike does not make "
        "every later anomaly look small (a level shift after a spike still fires).",
    )
    anomaly_envelope_half_life_s: float = Field(
        604_800.0,
        gt=0,
        description="The half-life (event time) of the envelope (anomaly_envelope_ratio): "
        "a week, so a burst a week old counts half.",
    )
    anomaly_usual_day_bins: int = Field(
        48,
        ge=0,
        le=1440,
        description="On an agent whose metrics' tails are not learned (fewer than "
        "anomaly_tail_min_features metrics: a single series), each metric's *usual day*: its "
        "value learned per bin of the UTC day (48: half-hours), and how far it strays there. "
        "A value judged against its bin does not chase today's level as the local level does, "
        "so a day that keeps off its usual shape (no morning climb, a holiday, a plateau at "
        "the wrong height) stands out once the drift (anomaly_usual_day_drift_weight) reaches "
        "anomaly_usual_day_sigma. 8 bytes a bin and metric. Chosen on NAB (docs/detection.md). "
        "0: off.",
    )
    anomaly_usual_day_weight: float = Field(
        0.1,
        gt=0,
        le=1,
        description="A heartbeat's share in its bin of the usual day (anomaly_usual_day_bins), "
        "for the bin's value and for how far values stray from it.",
    )
    anomaly_usual_day_drift_weight: float = Field(
        0.2,
        gt=0,
        le=1,
        description="A heartbeat's share in the drift from the usual day: the exponentially "
        "weighted average of each metric's deviation from its bin (in the bin's spread, clipped "
        "at 5), so one spike does not make a drift and a change that lasts does. Per heartbeat, "
        "not per second: at a slow heartbeat a change must last as many heartbeats (the "
        "duration form lost 1–3 NAB points: docs/detection.md, 'Tried and not kept').",
    )
    anomaly_usual_day_sigma: float = Field(
        3.0,
        gt=0,
        description="A drift from the usual day this large scores 1, as a new extreme does, and "
        "fires outside the quiet period and the repeat window (anomaly_repeat_s: after an "
        "anomaly, a drift is the same incident until a new extreme): a day that has kept this "
        "far off its usual shape.",
    )
    anomaly_usual_day_warmup_s: float = Field(
        259_200.0,
        ge=0,
        description="Event time an agent is watched before its usual day judges anything: "
        "three days, so each bin has seen a few days.",
    )
    anomaly_quiet_break_sigma: float = Field(
        6.0,
        gt=0,
        description="In a quiet period, a metric it is not about fires when it is this many std "
        "from its level (or beyond its range) and the score reaches the threshold: a second, "
        "different anomaly is not hidden by the first one's quiet period.",
    )
    anomaly_episode_end_s: float = Field(
        1_800.0,
        gt=0,
        description="An anomaly opens an episode, which stays open while a metric it is about "
        "stands anomaly_reason_sigma from the agent's slow baseline (which, unlike the local "
        "level, does not absorb a level shift within tens of heartbeats) or the agent fires "
        "again; it ends once this much event time passes without either (its end is the last "
        "heartbeat that stood out). A level shift or a drift is one episode, not a first "
        "heartbeat followed by silence.",
    )
    anomaly_daily_harmonics: int = Field(
        2,
        ge=0,
        le=4,
        description="Harmonics of the agent's daily profile (issue 12, Deliver 2): each metric "
        "is judged against its local level plus the profile's value at the heartbeat's time of "
        "day (UTC), so a value normal at 3 pm but not at 3 am is judged accordingly. 0: none.",
    )
    anomaly_daily_memory_s: float = Field(
        259_200.0,
        gt=0,
        description="Event time over which the daily profile forgets: an exponentially weighted "
        "average of the metrics' deviations from the slow baseline by time of day (exact until "
        "it has learned this long).",
    )
    anomaly_daily_warmup_s: float = Field(
        86_400.0,
        gt=0,
        description="The daily profile learns once the agent has been watched this long (its "
        "slow baseline has seen a whole day), counts after twice this long and fully after "
        "three times (its weight grows linearly between, so the local level is not jolted).",
    )
    anomaly_daily_min_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="A metric's daily profile counts only when it explains at least this share "
        "of the metric's variance about its slow baseline (a series without a daily cycle is "
        "not given one).",
    )
    anomaly_daily_learn_every_s: float = Field(
        900.0,
        gt=0,
        description="The daily profile learns from one heartbeat in each slot of this much event "
        "time (its first), with the slot's share of anomaly_daily_memory_s: steps large enough "
        "for its float16 numbers to hold.",
    )
    anomaly_direction_weights: dict[str, tuple[float, float]] = Field(
        {
            "network_latency": (1.0, 0.5),
            "response_time_avg": (1.0, 0.5),
            "error_rate": (1.0, 0.0),
            "bytes_out": (1.0, 0.5),
            "disk_usage": (1.0, 0.5),
        },
        description="Per metric, (rise, drop) weights of its deviation in the detector: a drop of "
        "latency, response time, errors, bytes sent or disk use is harmless or less telling "
        "than a rise. Metrics not listed weigh (1, 1); weights are numbers of at least 0.",
    )
    anomaly_tail_prior_heartbeats: int = Field(
        300,
        ge=1,
        description="A metric's tail (share of deviations beyond 3 std, and their mean excess) "
        "starts from a normal law's, worth this many heartbeats, and then learns the agent's "
        "own: a heavy-tailed metric needs a larger deviation to surprise.",
    )
    anomaly_tail_min_features: int = Field(
        2,
        ge=1,
        description="Metric tails are learned and used on agents (or series) with at least this "
        "many metrics: the furthest of many heavy-tailed metrics needs them; on one series the "
        "anomaly likelihood alone already learns how surprising it usually is (NAB: tails on "
        "single series cost about 2 points).",
    )
    anomaly_tail_min_exceedances: float = Field(
        10.0,
        ge=1,
        description="The mean excess of a metric's tail learns each deviation beyond 3 std with "
        "at most 1/this weight.",
    )
    anomaly_min_relative_std: float = Field(
        0.05,
        ge=0,
        description="Floor of a metric's std as a share of its mean, so flat metrics "
        "do not turn noise into anomalies.",
    )
    anomaly_reason_sigma: float = Field(
        3.0, gt=0, description="Features this many std from baseline are named as reasons."
    )
    baseline_learn_clip_sigma: float = Field(
        4.0,
        gt=0,
        description="Once warm, a value is learned as if at most this many std from the mean.",
    )
    anomaly_std_floor: dict[str, float] = Field(
        {
            "cpu_usage": 1.0,
            "memory_usage": 1.0,
            "disk_usage": 0.5,
            "network_latency": 1.0,
            "active_tasks": 1.0,
            "error_rate": 0.01,
            "response_time_avg": 5.0,
            "bytes_out": 1024.0,
        },
        description="Smallest std assumed per metric (in its unit), so noise-free metrics "
        "do not turn tiny wiggles into anomalies. Each floor must be a positive number; a "
        "metric left out keeps its default (a partial mapping changes only what it names).",
    )
    baseline_publish_interval_s: float = Field(
        3600.0,
        gt=0,
        description="Event time between two baseline snapshots of an agent on "
        "agents.baselines (also published when it warms up). The table keeps the latest per "
        "agent and the baseline's memory is a day, so an hour loses little; at 300 s and a "
        "30 s heartbeat the snapshots were a tenth of the dataflow's messages and about a "
        "quarter of the loader's CPU (docs/benchmarks.md).",
    )

    # --- threat rules (seed: "Threat Detection Rules"; the default rule set) --
    threat_window_buckets: int = Field(
        12,
        ge=2,
        le=60,
        description="A rule's window is kept as this many event-time buckets: it then spans "
        "between (buckets-1)/buckets of its length and its whole length.",
    )
    threat_error_rate_max: float = Field(
        0.2, gt=0, le=1, description="Excessive errors: average error_rate above this share..."
    )
    threat_error_rate_window_s: float = Field(300.0, gt=0, description="...over this window.")
    threat_resource_max_percent: float = Field(
        95.0, gt=0, le=100, description="Resource abuse: CPU or memory above this percent..."
    )
    threat_resource_for_s: float = Field(600.0, ge=0, description="...for at least this long.")
    threat_for_min_heartbeats: int = Field(
        3,
        ge=1,
        description="A rule that must hold for a while (its for_s) fires only once it has also "
        "held over this many of the agent's heartbeats (for_s, or this − 1 times the agent's "
        "latest interval if longer): at the seed's 30 s, abnormal_patterns' 60 s is exactly "
        "three heartbeats; at 5 min, 60 s was two readings in a row beyond 3σ, which normal "
        "noise gives 5.5 times per 100 agent-days (docs/detection.md). 1: for_s alone.",
    )
    threat_abnormal_sigma: float = Field(
        3.0, gt=0, description="Abnormal patterns: a metric this many std from its baseline..."
    )
    threat_abnormal_for_s: float = Field(
        60.0,
        ge=0,
        description="...for at least this long, the same metric on every heartbeat (the "
        "seed gives no duration). 60 s = three heartbeats at the seed's 30 s: on the simulated "
        "fleet some metric is beyond 3σ on ~3 % of normal heartbeats (task counts and byte "
        "counts have heavier tails than a normal law), so three in a row with any metric "
        "fired 8 times per 100 agent-days, the same metric 0.3 times (docs/detection.md). "
        "Longer would miss a 90 s CPU spike (three heartbeats).",
    )
    threat_abnormal_log_metrics: list[str] = Field(
        ["network_latency", "response_time_avg", "bytes_out"],
        description="...judging a rise of these metrics on a log scale (beyond the σ of a "
        "log-normal law with the baseline's mean and std). Latencies, durations and byte "
        "counts are positive and right-skewed: on the simulated fleet a normal bytes_out "
        "passes a symmetric 3σ band on 0.9 % of heartbeats (a normal law: 0.13 %) and made 4 "
        "of the 5 false alerts left in two 250-agent-day runs once the rule counted per "
        "metric; on the log scale it passes as rarely as a normal law. Empty: all linear.",
    )
    threat_status_changes_max: int = Field(
        10, ge=0, description="Rapid changes: more status changes than this..."
    )
    threat_status_changes_window_s: float = Field(300.0, gt=0, description="...within this window.")
    threat_exfiltration_bytes: float = Field(
        1e9, gt=0, description="Data exfiltration: more bytes_out than this..."
    )
    threat_exfiltration_window_s: float = Field(3600.0, gt=0, description="...within this window.")

    # --- the ClickHouse loader ---------------------------------------------
    loader_group_id: str = Field(
        "agentwatch-loader",
        description="Consumer group the loader commits to (for lag monitoring only; the "
        "loader resumes from the offsets it stores in ClickHouse).",
    )
    loader_batch_rows: int = Field(50_000, ge=1, description="Insert when this many rows wait.")
    loader_batch_age_s: float = Field(
        0.2,
        gt=0,
        description="...or when the oldest is this old (0.2 s: at 20,000 heartbeats/s a row "
        "is queryable within 0.7-1.4 s at p99, bench/latency.py; 0.5 s took 1.2 s and more).",
    )
    loader_findings_batch_age_s: float = Field(
        0.05,
        gt=0,
        description="...and for the findings an operator waits for (threats, alerts, "
        "incidents, anomalies, security scores), whose tables receive a few rows a second: "
        "inserted when the oldest is this old, so a threat is queryable sooner than the "
        "heartbeats' rows are (bench/latency.py).",
    )
    loader_findings_lane: bool = Field(
        True,
        description="Read and insert the findings (threats, alerts, incidents, anomalies, "
        "security scores) in a loader lane of their own: its own consumer, thread and "
        "ClickHouse connection, so a threat never waits behind the heartbeats' insert "
        "(bench/latency.py). Off: one loader reads every topic.",
    )
    loader_consume_messages: int = Field(
        5_000, ge=1, description="Most messages the loader reads from Kafka in one call."
    )
    loader_max_pending_rows: int = Field(
        200_000,
        ge=1,
        description="Rows the loader holds in memory, read but not yet in ClickHouse, at most "
        "(plus one read of loader_consume_messages): at this many it inserts them all and, "
        "while that fails, pauses its consumer (no fetches, no offsets committed).",
    )
    loader_slow_insert_s: float = Field(
        5.0,
        gt=0,
        description="An insert into ClickHouse running longer than this makes the loader "
        "'degraded' in /system/health and /metrics (slow storage) until it returns.",
    )
    loader_isolate_after: int = Field(
        3,
        ge=1,
        description="After this many failed inserts of one batch in a row, each refused for "
        "a value in it (ClickHouse's data errors, sinks.loader.ROW_ERROR_CODES), the loader "
        "splits the batch in halves until it finds the rows ClickHouse refuses alone, inserts "
        "the others and skips those (logged as clickhouse_row_refused, counted as skipped). "
        "Other errors (ClickHouse down, a missing table) are retried as they are.",
    )
    loader_max_refused_rows: int = Field(
        10,
        ge=0,
        description="Most rows of one batch the loader skips that way; when more are refused "
        "alone it is not one bad row but something systematic (a column's type changed): the "
        "batch is kept and retried, losing nothing, and the loader reports degraded. "
        "0: never skip.",
    )
    audit_replay_agents: int = Field(
        100_000,
        ge=1,
        description="The audit writer remembers the last status change it audited of this "
        "many agents (those changed last; ~100 bytes each), so a change the dataflow "
        "publishes again after a restart (a replay since its last snapshot: seconds) is "
        "audited once.",
    )
    max_message_bytes: int = Field(
        64 * 1024, ge=256, description="Heartbeats larger than this go to the dead-letter topic."
    )

    # --- security score (seed: "Agent Security Scoring") --------------------
    security_initial_score: float = Field(
        100.0, gt=0, le=100, description="Seed: every agent starts with this score (0…100)."
    )
    security_severity_points: dict[str, float] = Field(
        {"EMERGENCY": 30.0, "CRITICAL": 30.0, "HIGH": 20.0, "WARNING": 15.0, "INFO": 15.0},
        description="Seed: a threat takes 15–30 points by kind; points per severity "
        "(a severity not listed takes security_default_points).",
    )
    security_default_points: float = Field(
        15.0, ge=0, le=100, description="Points a threat of an unlisted severity takes."
    )
    security_rule_points: dict[str, float] = Field(
        {},
        description="Points by rule (or detector) name, overriding the severity's points, "
        'e.g. {"data_exfiltration": 30}.',
    )
    security_recovery_points_per_hour: float = Field(
        5.0, ge=0, description="A clean agent's score recovers this many points per hour..."
    )
    security_recovery_delay_s: float = Field(
        3600.0, ge=0, description="...once this long (event time) has passed since its last threat."
    )
    security_recovery_report_interval_s: float = Field(
        900.0,
        gt=0,
        description="Recovery is recorded in the score history at most once per agent per "
        "this long (event time).",
    )
    security_quarantine_threshold: float = Field(
        20.0, ge=0, le=100, description="Seed: a score falling below this quarantines the agent..."
    )
    security_auto_quarantine: bool = Field(
        True, description="...when enabled (seed: enabled); otherwise the score only falls."
    )
    security_release_resets_score: bool = Field(
        True,
        description="Releasing a quarantined agent resets its score to the initial score "
        "(false: it keeps its score and recovers from there).",
    )
    security_breakdown_size: int = Field(
        8, ge=1, le=32, description="Latest deductions kept per agent to explain its score."
    )

    # --- trend alerts (a metric on course to cross its limit) ---------------
    trend_limits: dict[str, float] = Field(
        {"cpu_usage": 95.0, "memory_usage": 95.0, "disk_usage": 95.0, "error_rate": 0.2},
        description="Metrics watched for trends, with the limit each must not reach "
        "(default: the threat rules' limits; disk 95 %).",
    )
    trend_horizon_s: float = Field(
        3600.0, gt=0, description="Warn when the fitted trend reaches the limit within this long."
    )
    trend_half_life_s: float = Field(
        300.0,
        gt=0,
        description="The trend is a least-squares line with weights halving every this "
        "long of event time (shorter: quicker to see a trend, noisier).",
    )
    trend_min_half_life_heartbeats: int = Field(
        10,
        ge=1,
        description="...but a weight halves over no fewer heartbeats than this, so an agent "
        "beating every 5 minutes is fitted over as many points as one beating every 30 s "
        "(10: at 30 s exactly trend_half_life_s; at 5 min the half-life is 50 min, where 300 s "
        "fitted a line through two points and warned on noise).",
    )
    trend_min_samples: int = Field(
        20, ge=3, le=60_000, description="Heartbeats an agent sends before its trends are judged."
    )
    trend_min_r2: float = Field(
        0.8,
        gt=0,
        lt=1,
        description="The line must explain at least this share of the metric's weighted "
        "variance (R²): noise and bumps do not make a trend.",
    )
    trend_rearm_factor: float = Field(
        2.0,
        ge=1,
        description="After a warning, a metric warns again only once its trend no longer "
        "reaches the limit within this many horizons (or it turned down).",
    )

    # --- alerts (lifecycle, flapping, coordinated threats, webhooks) --------
    alert_pending_announce_s: float = Field(
        0.0,
        ge=0,
        description="A pending alert is published once a later heartbeat finds its condition "
        "still holding, after at least this long: a condition true on one heartbeat only (a "
        "single 3σ reading, ~3 % of normal heartbeats) opens no alert anyone sees.",
    )
    alert_resolve_after_s: float = Field(
        300.0,
        ge=0,
        description="An alert resolves once its condition has stopped holding for this long "
        "(event time): a hysteresis, so a condition that flickers does not resolve and refire.",
    )
    alert_flap_window_s: float = Field(
        1800.0,
        ge=0,
        description="An alert that fires again within this long after it resolved counts a "
        "flap; a flapping alert stays firing until its condition is calm this long.",
    )
    alert_flap_threshold: int = Field(
        2, ge=1, description="Flaps in a row that mark an alert flapping (no more notifications)."
    )
    alert_silent_resolve_s: float = Field(
        86_400.0,
        gt=0,
        description="An alert of an agent not heard of for this long (event time) resolves, "
        "so the alerts of agents that went away do not stay open forever.",
    )
    coordination_min_agents: int = Field(
        5, ge=2, description="Coordinated threat: at least this many agents of one tenant..."
    )
    coordination_window_s: float = Field(
        300.0, gt=0, description="...raise the same kind of threat within this long (event time)."
    )
    coordination_max_listed_agents: int = Field(
        100, ge=2, description="Most agents an incident lists (beyond: marked truncated)."
    )
    alert_webhooks: list[SecretUrl] = Field(
        [],
        description="URLs that alerts are POSTed to (firing, and resolved after firing; not "
        "silenced). A URL prefixed 'slack:' (slack:https://hooks.slack.com/...) gets a "
        "Slack-compatible message, any other the generic JSON envelope. Secrets (a Slack "
        "webhook URL is the credential): logs show scheme and host only. Delivered by the "
        "process that runs the loader (the API's in the embedded profile, python -m "
        "sinks.loader in the cluster profile).",
    )
    webhook_timeout_s: float = Field(5.0, gt=0, description="Longest wait for one delivery.")
    webhook_retry_attempts: int = Field(
        5, ge=0, description="A failed webhook delivery is retried this many times..."
    )
    webhook_retry_base_s: float = Field(
        1.0, gt=0, description="...first after about this long, doubling each time..."
    )
    webhook_retry_max_s: float = Field(
        60.0, gt=0, description="...but never waiting longer than this between attempts."
    )

    # --- conversation monitoring (``conversation`` events on agents.events) ---
    # Patterns are Python regular expressions, by name; a hit raises a SECURITY threat
    # ``conversation_<check>`` (e.g. ``conversation_secret``) naming the patterns that
    # matched, with redacted excerpts. An empty dict switches a check off.
    conversation_monitoring: bool = Field(
        True, description="Check conversation events at all (false: they are only validated)."
    )
    conversation_injection_patterns: dict[str, str] = Field(
        {
            "ignore_instructions": r"\b(?:ignore|disregard|forget|override|bypass)\s+"
            r"(?:(?:all|any|the|your|my|these|those)\s+)*(?:previous|prior|above|earlier|"
            r"preceding|original|system)\s+(?:instructions?|prompts?|rules|directions|"
            r"guidelines|directives)",
            "jailbreak_persona": r"\b(?:you\s+are\s+now\s+(?:DAN|an?\s+unrestricted|"
            r"free\s+of|no\s+longer\s+bound)|do\s+anything\s+now|(?:developer|jailbreak|god)"
            r"\s+mode\s+(?:is\s+)?(?:enabled|on|activated))",
            "system_prompt_exfiltration": r"\b(?:reveal|show|print|repeat|output|leak|dump|"
            r"tell\s+me|what\s+(?:is|are))\s+(?:me\s+)?(?:your|the)\s+(?:(?:full|entire|"
            r"original|hidden|initial|secret)\s+)*(?:system\s+(?:prompt|message)|initial\s+"
            r"instructions|hidden\s+instructions)",
            "fake_system_turn": r"(?:<\|im_start\|>\s*system|<\|system\|>|\[/?INST\]|"
            r"(?:^|\n)\s*(?:###\s*)?system\s*:)",
            "new_instructions": r"\b(?:new|updated|real|actual)\s+instructions\s*:",
        },
        description="Prompt-injection markers (matched ignoring case).",
    )
    conversation_secret_patterns: dict[str, str] = Field(
        {
            "aws_access_key": r"(?:AKIA|ASIA)(?<![A-Za-z0-9].{4})[0-9A-Z]{16}\b",
            "aws_secret_key": r"(?i)aws_?secret_?access_?key\s*[:=]\s*[\"']?"
            r"(?P<secret>[A-Za-z0-9/+=]{40})",
            "private_key": r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
            "github_token": r"(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
            "slack_token": r"xox[abprs]-[A-Za-z0-9-]{10,}",
            "llm_api_key": r"sk-(?<![\w-]sk-)(?:proj-|ant-(?:api\d\d-)?)?[A-Za-z0-9_-]{20,}",
            "bearer_token": r"(?:[Bb]earer|BEARER)\s+(?P<secret>[A-Za-z0-9\-._~+/]{20,}=*)",
            "jwt": r"eyJ(?<![\w-]eyJ)[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\."
            r"[A-Za-z0-9_-]{10,}",
            "password_assignment": r"(?i)\b(?:password|passwd|pwd|secret|api[_-]?key|"
            r"access[_-]?token|client[_-]?secret)\s*[:=]\s*[\"']?(?P<secret>[^\s\"',;]{6,})",
            "credentials_in_url": r"://[^\s:/@]+:(?P<secret>[^\s:/@]{3,})@",
        },
        description="Secrets (credentials, keys, tokens). A group named 'secret' marks the "
        "part to redact (default: the whole match); the evidence names only the pattern.",
    )
    conversation_personal_data_patterns: dict[str, str] = Field(
        {
            "email": r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
            "credit_card": r"\b\d(?:[ -]?\d){12,18}\b",
            "phone": r"(?:(?<![\w+])\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4})"
            r"{2,4}\b|(?<![\w-])\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b)",
            "us_ssn": r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b",
            "iban": r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
        },
        description="Personal data; never shown, only their pattern.",
    )
    conversation_checksums: dict[str, Literal["luhn", "iban"]] = Field(
        {"credit_card": "luhn", "iban": "iban"},
        description="Patterns whose matches count only if they pass a checksum (luhn: card "
        "numbers; iban: ISO 13616 mod 97), which keeps order numbers and ids from matching.",
    )
    conversation_allowed_counterparts: dict[str, list[str]] = Field(
        {},
        description="Per tenant, the counterparts its agents may talk to (shell-style "
        'patterns: {"t1": ["agent-*", "api.openai.com"]}); the key "*" applies to every '
        "tenant. Any other counterpart raises conversation_unknown_counterpart. Tenants "
        "without a list fall back to learning (conversation_learn_counterparts).",
    )
    conversation_learn_counterparts: bool = Field(
        True,
        description="Without an allow-list, learn each agent's counterparts during its first "
        "conversation_counterpart_learning_s; after that a counterpart it never talked to "
        "raises conversation_unknown_counterpart (once: then it is known).",
    )
    conversation_counterpart_learning_s: float = Field(
        86_400.0, ge=0, description="Event time after an agent's first conversation (seed: 24 h)."
    )
    conversation_max_known_counterparts: int = Field(
        64, ge=1, le=4096, description="Counterparts remembered per agent (oldest forgotten)."
    )
    conversation_max_tokens: int = Field(
        100_000,
        ge=0,
        description="tokens_in + tokens_out above this in one conversation "
        "raises conversation_excessive_tokens (0: off).",
    )
    conversation_max_tokens_per_hour: int = Field(
        2_000_000,
        ge=0,
        description="An agent's tokens above this within one event-time hour (tumbling, "
        "aligned to the hour) raise conversation_excessive_tokens once that hour (0: off).",
    )
    conversation_severities: dict[
        Literal[
            "prompt_injection", "secret", "personal_data", "unknown_counterpart",
            "excessive_tokens",
        ],
        Literal["EMERGENCY", "CRITICAL", "HIGH", "WARNING", "INFO"],
    ] = Field(
        {
            "prompt_injection": "HIGH",
            "secret": "CRITICAL",
            "personal_data": "WARNING",
            "unknown_counterpart": "WARNING",
            "excessive_tokens": "WARNING",
        },
        description="Severity of each check's threats (a check not listed: WARNING); the "
        "security score takes the severity's points.",
    )  # fmt: skip
    conversation_excerpt_chars: int = Field(
        40, ge=0, le=500, description="Characters of context shown each side of a match."
    )
    conversation_max_excerpts: int = Field(
        3, ge=0, le=20, description="Excerpts a threat's evidence shows at most."
    )

    @field_validator(
        "conversation_injection_patterns",
        "conversation_secret_patterns",
        "conversation_personal_data_patterns",
    )
    @classmethod
    def _patterns_compile(cls, patterns: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for name, pattern in patterns.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"{info.field_name}[{name!r}] is not a regular expression ({exc}); fix "
                    f"AGENTWATCH_{info.field_name.upper()}"
                ) from None
        return patterns

    # --- the seed's monitoring intervals -----------------------------------
    heartbeat_interval_s: float = Field(30.0, gt=0, description="Seed: agents beat every 30 s.")
    heartbeat_late_missed: int = Field(
        2,
        ge=1,
        description="An agent with no heartbeat for this many intervals (event time; 2 × 30 s = "
        "60 s) gets a `heartbeat_late` warning on agents.state: the first rung of the ladder.",
    )
    heartbeat_offline_missed: int = Field(
        4,
        ge=1,
        description="An agent with no heartbeat for this many intervals (4 × 30 s = 120 s) goes "
        "offline: `status_changed` to offline on agents.state and an `agent_offline` alert; both "
        "end when its heartbeats return. Must be at least heartbeat_late_missed.",
    )
    clock_tick_s: float = Field(
        1.0,
        gt=0,
        description="The dataflow's clock ticks every shard this often (processing time), so "
        "time passes without input: heartbeat timeouts are judged on ticks as well as on input.",
    )
    clock_idle_advance_s: float = Field(
        10.0,
        gt=0,
        description="A shard's event clock follows the heartbeats it reads (event time, so a "
        "replay decides the same); a source partition it has heard nothing from for this long "
        "(processing time) advances by the processing time since, so a silent fleet still "
        "times out: offline within the grace plus this. Keep it below the grace.",
    )

    # --- health and remediation (seed: "Health checks: 60s", "Automated remediation for
    # performance issues (restart, clear cache, reduce load)"); see docs/health.md -----------
    health_weights: dict[str, float] = Field(
        {
            "cpu_usage": 20.0,
            "memory_usage": 20.0,
            "disk_usage": 5.0,
            "error_rate": 40.0,
            "response_time_avg": 10.0,
            "network_latency": 5.0,
        },
        description="How much of the health score (0–100) each heartbeat metric can take away "
        "(weights, normalised to sum 100): a metric at or past its bad threshold takes its "
        "whole weight, one at or below its good threshold nothing, linearly in between.",
    )
    health_thresholds: dict[str, tuple[float, float]] = Field(
        {
            "cpu_usage": (80.0, 100.0),
            "memory_usage": (80.0, 100.0),
            "disk_usage": (90.0, 100.0),
            "error_rate": (0.05, 0.25),
            "response_time_avg": (2000.0, 10000.0),
            "network_latency": (250.0, 2000.0),
        },
        description="Per weighted metric: (good, bad) values; good must be below bad "
        "(percent, share 0…1, milliseconds).",
    )
    health_warning_below: float = Field(
        80.0, ge=0, le=100, description="Health below this is in the `warning` band."
    )
    health_degraded_below: float = Field(
        65.0,
        ge=0,
        le=100,
        description="Health below this is in the `degraded` band; health_degraded_after such "
        "heartbeats in a row make a running agent degraded (lifecycle).",
    )
    health_critical_below: float = Field(
        40.0, ge=0, le=100, description="Health below this is in the `critical` band."
    )
    health_band_margin: float = Field(
        5.0,
        ge=0,
        le=50,
        description="Hysteresis of the bands: an agent moves to a worse band as soon as its "
        "health is below the band's threshold, back to a better one only once its health is "
        "this many points above it (a `health_changed` per band change, not per heartbeat).",
    )
    health_degraded_after: int = Field(
        3, ge=1, le=100, description="Heartbeats in a row below health_degraded_below that make "
        "an agent degraded (3 heartbeats: 90 s at the seed's 30 s interval).",
    )  # fmt: skip
    health_recovered_above: float = Field(
        80.0,
        ge=0,
        le=100,
        description="A degraded agent recovers (back to active) after health_recovered_after "
        "heartbeats in a row at or above this; must be above health_degraded_below.",
    )
    health_recovered_after: int = Field(
        3, ge=1, le=100, description="Heartbeats in a row at or above health_recovered_above "
        "that end an agent's degradation.",
    )  # fmt: skip
    health_remediation: bool = Field(
        True,
        description="Send remediation orders on agents.commands while an agent is degraded "
        "(never to agents in maintenance, quarantined, compromised or decommissioning).",
    )
    health_remediation_actions: list[
        Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[a-z][a-z0-9_]*$")]
    ] = Field(
        ["restart", "clear_cache", "reduce_load"],
        min_length=1,
        description="The orders sent to a degraded agent, in order of escalation (attempts "
        "past the list repeat its last order); each a command name of lower-case letters, digits "
        "and underscores, like every command the system sends (quarantine, run_task).",
    )
    health_remediation_backoff_s: float = Field(
        60.0, gt=0, description="Event time between the first order and the next (seed: "
        "health checks every 60 s); each wait is health_remediation_backoff_factor times the last.",
    )  # fmt: skip
    health_remediation_backoff_factor: float = Field(
        2.0, ge=1, description="Exponential backoff between remediation orders."
    )
    health_remediation_backoff_max_s: float = Field(
        900.0, gt=0, description="The longest wait between two remediation orders."
    )
    health_remediation_max_attempts: int = Field(
        3,
        ge=1,
        le=100,
        description="Orders sent per degradation at most; when the wait after the last has "
        "passed and the agent is still degraded, an `agent_unhealthy` alert fires and "
        "remediation stops until the agent recovers (the alert resolves then).",
    )

    # --- orchestration (seed: "Intelligent Orchestration"; docs/orchestration.md) ---------
    orchestration_weight_performance: float = Field(
        0.4, ge=0, le=1, description="Seed: performance weighs 40 % of the assignment score."
    )
    orchestration_weight_cost: float = Field(
        0.3, ge=0, le=1, description="Seed: cost weighs 30 % of the assignment score."
    )
    orchestration_weight_availability: float = Field(
        0.2, ge=0, le=1, description="Seed: availability weighs 20 % of the assignment score."
    )
    orchestration_weight_sla: float = Field(
        0.1, ge=0, le=1, description="Seed: SLA compliance weighs 10 % of the assignment score."
    )
    orchestration_score_interval_s: float = Field(
        60.0,
        gt=0,
        description="On heartbeats alone, an agent's assignment score is published at most "
        "this often (event time); a task's change, a state change or new weights publish it "
        "at once.",
    )
    orchestration_score_min_change: float = Field(
        0.02,
        ge=0,
        le=1,
        description="On heartbeats alone, an assignment score is published only when it moved "
        "by at least this much (0…1) since the agent's last published one.",
    )
    orchestration_failure_horizon_s: float = Field(
        3600.0,
        gt=0,
        description="Predictive maintenance: p_fail is the probability that an agent degrades, "
        "goes offline or is quarantined within this long.",
    )
    orchestration_accuracy_tasks: int = Field(
        100,
        ge=1,
        le=100_000,
        description="Seed: 'Rolling 100 tasks'. GET /api/v1/orchestration/models computes the "
        "models' accuracy (success: p_success >= 0.5 against completed, Brier score; duration: "
        "MAE and MAPE against expected_duration_s) over this many latest finished tasks that "
        "had predictions.",
    )

    # --- behaviour clusters (agentwatch/clusters.py; docs/orchestration-clusters.md) -------
    cluster_count: int = Field(
        4,
        ge=1,
        le=32,
        description="How many behaviour clusters the fleet's agents are grouped into (River's "
        "online k-means on their assignment-score profiles).",
    )
    cluster_halflife: float = Field(
        0.02,
        gt=0,
        le=1,
        description="How far a cluster's centre moves toward each profile it wins (River "
        "KMeans' halflife): about the last 1/halflife profiles shape a centre.",
    )
    cluster_warmup_records: int = Field(
        200,
        ge=1,
        description="Assignment-score records read before the centres are placed (k-means++ "
        "on the latest profile of each agent seen); no agent has a cluster before.",
    )
    cluster_switch_margin: float = Field(
        0.15,
        ge=0,
        lt=1,
        description="Hysteresis: an agent moves to another cluster only when that cluster's "
        "centre is nearer than its own by this share of its own distance.",
    )
    cluster_switch_min_gain: float = Field(
        0.05,
        ge=0,
        description="Hysteresis: ... and by this much at least (profiles are 6 numbers in "
        "0-1): two centres closer than this never trade agents.",
    )
    cluster_switch_confirmations: int = Field(
        2,
        ge=1,
        description="Hysteresis: ... and on this many of its records in a row.",
    )
    cluster_summary_interval_s: float = Field(
        300.0,
        gt=0,
        description="The clusters' centroids and descriptions (cluster_summary on agents.state) "
        "are published when a description changes, and at least this often (event time) "
        "while records flow.",
    )
    cluster_response_time_floor_ms: float = Field(
        10.0,
        gt=0,
        description="Profiles put response times on a log scale: this fast or faster is 0.",
    )
    cluster_response_time_ceiling_ms: float = Field(
        10_000.0,
        gt=0,
        description="... and this slow or slower is 1.",
    )
    cluster_revival_records: int = Field(
        1000,
        ge=1,
        description="Every this many records, a cluster centre that won (almost) none of them "
        "is placed on the profile that was farthest from every centre: a behaviour the "
        "warm-up did not show gets a cluster.",
    )
    cluster_revival_distance: float = Field(
        0.25,
        gt=0,
        description="... only when that profile is farther than this from its nearest centre "
        "(profiles are 6 numbers in 0-1): a fleet with fewer behaviours than clusters is left "
        "alone.",
    )

    @classmethod
    def _known_metrics(cls, named: dict[str, object]) -> None:
        """A clear error for a name in ``named`` that is not a metric the detector watches
        (the keys of ``anomaly_std_floor``'s default)."""
        metrics = cls.model_fields["anomaly_std_floor"].default
        for metric in named:
            if metric not in metrics:
                raise ValueError(
                    f"{metric!r} is not a heartbeat metric; the metrics are {', '.join(metrics)}"
                )

    @field_validator("report_score_bands")
    @classmethod
    def _score_bands(cls, bands: dict[str, float]) -> dict[str, float]:
        if not bands:
            raise ValueError("at least one band is needed: every score falls in one")
        for name, floor in bands.items():
            if not (math.isfinite(floor) and 0 <= floor <= 100):
                raise ValueError(
                    f"the floor of band {name!r} must be a score from 0 to 100, not {floor}"
                )
        return bands

    @field_validator("security_severity_points", "security_rule_points")
    @classmethod
    def _threat_points(cls, points: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        severities = cls.model_fields["security_severity_points"].default
        for name, value in points.items():
            if info.field_name == "security_severity_points" and name not in severities:
                raise ValueError(
                    f"{name!r} is not a threat severity; the severities are {', '.join(severities)}"
                )
            if not (math.isfinite(value) and 0 <= value <= 100):
                raise ValueError(
                    f"{info.field_name}[{name!r}] must be points from 0 to 100, not {value}"
                )
        return points

    @field_validator("anomaly_direction_weights")
    @classmethod
    def _direction_weights(
        cls, weights: dict[str, tuple[float, float]]
    ) -> dict[str, tuple[float, float]]:
        cls._known_metrics(weights)
        for metric, pair in weights.items():
            if not all(math.isfinite(w) and w >= 0 for w in pair):
                raise ValueError(
                    f"the (rise, drop) weights of {metric} must be numbers of at least 0, not "
                    f"{pair}: a negative weight would turn a deviation around"
                )
        return weights

    @field_validator("anomaly_std_floor")
    @classmethod
    def _std_floors(cls, floors: dict[str, float]) -> dict[str, float]:
        cls._known_metrics(floors)
        defaults = cls.model_fields["anomaly_std_floor"].default
        for metric, floor in floors.items():
            if not (math.isfinite(floor) and floor > 0):
                raise ValueError(
                    f"the std floor of {metric} must be a positive number, not {floor}: a "
                    "floor of 0 lets a flat metric's first wiggle score as a new extreme"
                )
        return {**defaults, **floors}

    @field_validator("cluster_response_time_ceiling_ms")
    @classmethod
    def _ceiling_above_floor(cls, ceiling: float, info: ValidationInfo) -> float:
        floor = info.data.get("cluster_response_time_floor_ms")
        if floor is not None and ceiling <= floor:
            raise ValueError(
                f"the response-time ceiling ({ceiling} ms) must be above the floor ({floor} ms); "
                "raise AGENTWATCH_CLUSTER_RESPONSE_TIME_CEILING_MS"
            )
        return ceiling

    # --- planning: load balancing, maintenance, capacity (docs/orchestration-plan.md) -----
    load_overloaded_above: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Load balancing: an agent whose open tasks exceed this share of its "
        "capacity (max_concurrent_tasks) is overloaded, and its tasks may be moved.",
    )
    load_underloaded_below: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Load balancing: an agent below this share of its capacity may take moved "
        "tasks (never beyond load_overloaded_above). Not above load_overloaded_above.",
    )
    maintenance_window_hours: int = Field(
        2, ge=1, le=24, description="How long one agent's maintenance window lasts (hours)."
    )
    maintenance_capacity_margin: float = Field(
        1.2,
        ge=0,
        description="Maintenance keeps, per tenant and agent type and in every hour of a "
        "window, the capacity in service at least this many times the peak demand seen in "
        "that hour of the day.",
    )
    maintenance_history_days: int = Field(
        14,
        ge=1,
        le=90,
        description="Days of heartbeats the hourly load profile of maintenance is built from.",
    )
    maintenance_horizon_hours: int = Field(
        24, ge=1, le=168, description="How far ahead maintenance windows are planned (hours)."
    )
    forecast_history_days: int = Field(
        90,
        ge=3,
        le=365,
        description="Days of heartbeats the capacity forecast is fitted on (at most the "
        "ClickHouse TTL, clickhouse_ttl_days).",
    )

    @field_validator("load_underloaded_below")
    @classmethod
    def _underloaded_below_overloaded(cls, below: float, info: ValidationInfo) -> float:
        above = info.data.get("load_overloaded_above")
        if above is not None and below > above:
            raise ValueError(
                f"load_underloaded_below={below} is above load_overloaded_above={above}: a "
                "moved task would make its target overloaded; set AGENTWATCH_LOAD_UNDERLOADED_"
                "BELOW at most AGENTWATCH_LOAD_OVERLOADED_ABOVE"
            )
        return below

    orchestration_default_capacity: int = Field(
        1,
        ge=1,
        le=100_000,
        description="Tasks at once for an agent registered by its heartbeats "
        "(agents_auto_register) or before orchestration existed; a registration's "
        "max_concurrent_tasks decides for the others.",
    )
    orchestration_task_timeout_s: float = Field(
        3600.0,
        gt=0,
        description="An accepted task with no outcome this long (event time) after its "
        "acceptance expires: its slot is freed, it counts as a failure, the agent gets "
        "cancel_task.",
    )
    orchestration_response_time_ref_ms: float = Field(
        1000.0,
        gt=0,
        description="Speed in the performance component is ref / (ref + response_time_avg): "
        "0.5 at this response time, towards 1 for faster agents.",
    )
    orchestration_speed_share: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Share of speed in the performance component (the rest is the smoothed "
        "success rate).",
    )
    orchestration_cost_reference_per_hour: float = Field(
        1.0,
        gt=0,
        description="A declared resources['cost_per_hour'] of this much counts as half "
        "expensive in the cost component (cost / (cost + reference)).",
    )
    orchestration_cost_declared_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of the declared cost in the cost component (the rest is resource "
        "use: the EWMA of (cpu_usage + memory_usage) / 2).",
    )
    orchestration_outcome_memory: float = Field(
        50.0,
        ge=1,
        description="Smoothed success and SLA rates forget at 1 − 1/this per outcome (about "
        "the last this many outcomes count).",
    )
    orchestration_success_prior: float = Field(
        0.8,
        ge=0,
        le=1,
        description="An agent's success rate before its outcomes say otherwise (weighted by "
        "orchestration_prior_weight outcomes).",
    )
    orchestration_prior_weight: float = Field(
        2.0,
        gt=0,
        description="How many outcomes the prior of the success and SLA rates weighs.",
    )
    orchestration_metrics_alpha: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Weight of each heartbeat in the EWMAs of response time, resource use and "
        "error rate kept for the assignment score.",
    )
    orchestration_max_task_types: int = Field(
        16,
        ge=0,
        le=256,
        description="Task types per shard with per-agent statistics (8 bytes per agent each); "
        "further types are learnt by the shard's models only.",
    )
    orchestration_model_window: int = Field(
        100,
        ge=1,
        le=100_000,
        description="Seed: 'Accuracy tracking: Rolling 100 tasks'. The models' rolling "
        "accuracy covers this many latest outcomes (failure labels).",
    )
    orchestration_model_min_outcomes: int = Field(
        20,
        ge=0,
        description="Until a shard's models have learnt from this many outcomes (failure "
        "labels), predictions are the agent's own smoothed figures (p_fail is absent).",
    )
    orchestration_model_learning_rate: float = Field(
        0.1,
        gt=0,
        le=10,
        description="SGD step of the shard's online models (the completion-time model takes "
        "a tenth of it).",
    )
    orchestration_model_stats_interval_s: float = Field(
        60.0,
        gt=0,
        description="A shard publishes its models' rolling accuracy (model_stats) at most this "
        "often (event time), when they learnt something since.",
    )
    orchestration_finished_tasks_kept: int = Field(
        20_000,
        ge=0,
        description="Finished tasks a shard remembers (about 100 bytes each), so that a "
        "replayed task_assigned or a second outcome changes nothing.",
    )
    orchestration_min_security_score: float = Field(
        50.0,
        ge=0,
        le=100,
        description="POST /api/v1/tasks/assign: an agent whose security score is below this "
        "takes no new task (0: no such filter).",
    )
    orchestration_candidates: int = Field(
        3, ge=1, le=50, description="An assignment names the chosen agent and the next best, "
        "this many in all.",
    )  # fmt: skip
    orchestration_reservation_ttl_s: float = Field(
        30.0,
        gt=0,
        description="A slot the API reserved for a task it placed is held until the agent's "
        "shard accepts or refuses the task (task_changed), or this long at most (the shard, "
        "not the reservation, is what keeps an agent within its capacity).",
    )
    orchestration_assign_awaits_broker: bool = Field(
        False,
        description="Whether POST /api/v1/tasks/assign answers only once the broker has "
        "acknowledged its task_assigned (one more broker round trip in every answer). When "
        "false it answers once the event is queued to the broker: the agent's slot is reserved "
        "either way, and an event the broker does not take (within AGENTWATCH_API_BROKER_"
        "TIMEOUT_S × 10) lets the slot go and marks the task refused, with the reason, in "
        "GET /api/v1/tasks/{id}. A broker refusing at once is a 503 either way.",
    )
    orchestration_max_attempts: int = Field(
        3,
        ge=1,
        le=100,
        description="A task the agent's shard refuses is placed again on the next best agent "
        "(the refusing ones excluded) up to this many attempts in all; then it is unplaceable.",
    )
    orchestration_recent_tasks: int = Field(
        10_000,
        ge=1,
        description="Decisions an API process keeps in memory (GET /api/v1/tasks/{id} answers "
        "from them before the tasks table has the task).",
    )

    @field_validator("clickhouse_dsn")
    @classmethod
    def _dsn_scheme(cls, dsn: SecretDsn) -> SecretDsn:
        scheme = dsn.get_secret_value().partition("://")[0].lower()
        if scheme not in ("chdb", "http", "https"):
            raise ValueError(
                f"the ClickHouse DSN {dsn} is neither chdb://path nor http(s)://host:port; "
                "fix AGENTWATCH_CLICKHOUSE_DSN"
            )
        return dsn

    @field_validator("clickhouse_serve_host")
    @classmethod
    def _serve_on_loopback(cls, host: str) -> str:
        if not _loopback(host):
            raise ValueError(
                f"the served chDB listens on a loopback address only (127.0.0.1 or ::1), not "
                f"{host!r}: it has one user with every right; fix AGENTWATCH_CLICKHOUSE_SERVE_HOST"
            )
        return host

    @field_validator("alert_webhooks")
    @classmethod
    def _webhook_schemes(cls, urls: list[SecretUrl]) -> list[SecretUrl]:
        for index, url in enumerate(urls):
            text = url.get_secret_value().removeprefix(SLACK_PREFIX)
            if not text.lower().startswith(("http://", "https://")):
                raise ValueError(
                    f"webhook {url.label(index)} is not an http(s):// URL (optionally after "
                    f"{SLACK_PREFIX!r}); fix AGENTWATCH_ALERT_WEBHOOKS"
                )
        return urls

    def as_env(self) -> dict[str, str]:
        """The fields set on this object as ``AGENTWATCH_*`` variables, for a child process.

        Secrets are passed as their real values (the child must use them).

        >>> Settings(api_port=8001).as_env()
        {'AGENTWATCH_API_PORT': '8001'}
        >>> Settings(clickhouse_dsn="http://u:pw@h:8123").as_env()
        {'AGENTWATCH_CLICKHOUSE_DSN': 'http://u:pw@h:8123'}
        """
        env = {}
        for name in sorted(self.model_fields_set):
            value = reveal(getattr(self, name))
            if value is None:
                continue  # unset means the default; an empty variable would mean ""
            if isinstance(value, dict | list):
                value = json.dumps(value)
            env[f"AGENTWATCH_{name.upper()}"] = str(value)
        return env

    def secret_values(self) -> list[str]:
        """Every secret of this configuration (and its parts), longest first: the strings
        logs and error messages must not contain (see :mod:`agentwatch.secrets`).

        >>> Settings(clickhouse_dsn="http://u:hunter22@h:8123").secret_values()
        ['http://u:hunter22@h:8123', 'hunter22']
        """
        return secret_strings([getattr(self, name) for name in type(self).model_fields])

    def kafka_config(self) -> dict[str, object]:
        """The librdkafka settings every Kafka client of agentwatch starts from: where the
        brokers are and, with a SASL protocol, the login. A client connects to every broker
        it learns of at once (``enable.sparse.connections`` off): connected lazily, as
        librdkafka's default has it, a client's first requests to a broker it has just
        learned wait ~50 ms for that connection (list_topics on a new consumer, measured
        on the embedded broker: ~52 ms one call in two, ~1 ms with this). librdkafka's own
        log lines go to Python logging, repeats held back
        (:data:`agentwatch.kafka_logs.LIBRDKAFKA_LOG`), not to stderr.

        >>> config = Settings(bootstrap_servers="k:9092").kafka_config()
        >>> config["bootstrap.servers"], config["enable.sparse.connections"], config["logger"].name
        ('k:9092', 'false', 'agentwatch.librdkafka')
        >>> config = Settings(kafka_security_protocol="SASL_PLAINTEXT",
        ...     kafka_sasl_username="api", kafka_sasl_password="s3cret").kafka_config()
        >>> config["security.protocol"], config["sasl.username"], config["sasl.password"]
        ('SASL_PLAINTEXT', 'api', 's3cret')
        """
        config: dict[str, object] = {
            "bootstrap.servers": self.bootstrap_servers,
            "enable.sparse.connections": "false",
            "logger": LIBRDKAFKA_LOG,
        }
        if self.kafka_security_protocol != "PLAINTEXT":
            config["security.protocol"] = self.kafka_security_protocol
            config["sasl.mechanism"] = self.kafka_sasl_mechanism
            config["sasl.username"] = self.kafka_sasl_username
            config["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        return config

    def scoring_weights(self) -> dict[str, float]:
        """The default weights of the assignment score's components (``ScoringWeights``'s
        fields), before any ``weights_changed``.

        >>> Settings().scoring_weights()
        {'performance': 0.4, 'cost': 0.3, 'availability': 0.2, 'sla': 0.1}
        """
        return {
            "performance": self.orchestration_weight_performance,
            "cost": self.orchestration_weight_cost,
            "availability": self.orchestration_weight_availability,
            "sla": self.orchestration_weight_sla,
        }

    def topic(self, name: str) -> str:
        """Physical name of a logical topic (``metrics`` → ``agents.metrics``)."""
        return f"{self.topic_prefix}agents.{name}"

    @property
    def recovery_path(self) -> Path:
        """Where Bytewax keeps its recovery database."""
        return self.recovery_dir or self.var_dir / "recovery"


def _loopback(host: str) -> bool:
    """Whether ``host`` is a loopback IP address (a name is not: it could resolve anywhere)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
