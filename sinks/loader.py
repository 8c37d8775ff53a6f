"""The ClickHouse loader: Kafka topics → idempotent batches in ClickHouse.

A consumer reads the dataflow's topics (``metric_rows``, ``anomalies``,
``baselines``, ``threats``, ``alerts``, ``security``, ``assignment_scores``,
``commands``, ``incidents``, ``deadletter``) and the three lifecycle channels
(``events``: agents' facts, ``control``: operators' commands, ``state``: the
dataflow's derived facts) by partition assignment (consumer groups are slow on the
embedded broker) and copies each topic into its table (:data:`LOADED`, one entry per
topic: the table of the same name, but ``metric_rows`` → ``metrics``, ``security`` →
``security_scores`` and the three channels → ``agent_events``), in batches of
``loader_batch_rows`` rows or ``loader_batch_age_s`` seconds, whichever comes first
(the findings an operator waits for, few rows a second, after
``loader_findings_batch_age_s``: :attr:`LoadedTopic.finding`). Those findings are
read by a consumer of their own when ``loader_findings_lane`` is on (the default,
:class:`LoaderLanes`: a second loader, thread and connection), so a threat never
waits behind the heartbeats' insert.

Heartbeats are decoded once, by the dataflow: the loader never reads
``agents.metrics``, but the Arrow batches of the heartbeats the dataflow took
(``agents.metric_rows``, :mod:`schemas.metric_rows`), checked with a few array
operations per message and handed to ClickHouse as they are (``FORMAT ArrowStream``).

A topic renamed since an earlier release (``agentwatch.settings.RENAMED_TOPICS``:
``agents.scores`` → ``agents.security``) is read under its old name too, into the
same table, when it exists: an upgraded deployment may hold records there that were
never loaded; a new one has no such topic, and the loader neither waits nor asks
for it (it is picked up if it ever appears).

From a lifecycle channel only the event types accepted on it are stored
(``schemas.events.CHANNELS``), with the channel in the row: a ``released`` or a
``status_changed`` forged on the agents' ``agents.events`` is skipped (and
dead-lettered by the dataflow), so ``agent_events`` holds no command that the API
did not publish.

From ``agents.state`` the loader also keeps two projections (:data:`PROJECTIONS`):
``agents``, one row per ``status_changed`` in the layout of
``agentwatch.lifecycle.AgentRecord.row`` (the newest per agent wins: its
``transitions`` is the version), and ``agent_registry``, one row per registration
the dataflow accepted (the ``status_changed`` to ``registered`` carries it).
Orchestration adds two more: ``tasks`` (:func:`task_row`), from the API's
``task_assigned`` on ``agents.control`` and the shards' ``task_changed`` on
``agents.state``, one row per change, the latest status winning whatever order the
two topics are read in; and ``assignment_scores_latest``, the newest row of
``assignment_scores`` per agent. A message a projection cannot make its row from is
refused whole, like any message its table cannot hold: logged
(``derived_message_skipped``), counted in ``skipped_invalid``, and not stored.

A dead letter is stored with the cluster id of the log its message was read
from (the dataflow stamps it; records without one get the cluster id the loader
reads under): offsets restart at 0 in a new log of the embedded broker, and the
table's sort key must not merge two different messages found at the same offset.

Offsets of record live in ClickHouse (table ``loader_offsets``), written right
after the rows they cover; on start the loader seeks there. A crash between
the two writes replays some rows, which the tables' ``ReplacingMergeTree``
sort keys collapse (count with ``FINAL``). The offsets are also committed to
the Kafka group ``loader_group_id``, only so that standard tools can show lag.

The embedded broker keeps its log in memory: after a broker restart the
cluster id is new and offsets start again at 0. A stored offset from another
cluster, or beyond a partition's end, makes the loader read that partition
from the beginning and say so in the log.

Run it alone with ``python -m sinks.loader`` (stops cleanly on SIGTERM/SIGINT; serves its
Prometheus ``/metrics`` on ``AGENTWATCH_LOADER_METRICS_PORT`` when set, see
:mod:`sinks.loader_metrics`);
in the embedded profile the API process runs it in background threads::

    loader = LoaderLanes(settings, connect(settings), lambda: connect(settings))
    loader.start()
    ...
    loader.stop()
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial

import numpy as np
import orjson
import pyarrow as pa
from clickhouse_connect.driver.binding import quote_identifier
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from pydantic import BaseModel

from agentwatch.collector import tune_for_batches
from agentwatch.inbox import shard_command
from agentwatch.logfmt import OneLineMessages
from agentwatch.secrets import redact_handlers
from agentwatch.settings import RENAMED_TOPICS, Settings
from schemas.events import (
    AGENT_CHANNEL,
    CHANNELS,
    CONTROL_CHANNEL,
    REGISTERED,
    STATE_CHANNEL,
    STATUS_CHANGED,
    TASK_ASSIGNED,
    TASK_CHANGED,
    check_channel,
)
from schemas.metric_rows import SCHEMA as METRIC_ROWS_SCHEMA
from schemas.metric_rows import decode as decode_metric_rows
from schemas.metric_rows import one_stream as one_metric_rows_stream
from schemas.metric_rows import utc_millis
from schemas.models import (
    TASK_STATUSES,
    TIMESTAMP_RANGE,
    AgentCommand,
    Alert,
    AnomalyRecord,
    AssignmentScore,
    BaselineRecord,
    DeadLetter,
    Incident,
    LifecycleEvent,
    Registration,
    ScoreChange,
    TaskAssignment,
    TaskRecord,
    Threat,
)
from sinks.audit import AuditWriter
from sinks.background import lower_this_thread
from sinks.chdb_http import serve as serve_chdb
from sinks.clickhouse import ColumnTypes, connect, create_schema
from sinks.loader_metrics import LoaderFigures
from sinks.loader_metrics import serve as serve_metrics
from sinks.webhooks import WebhookDeliverer

log = logging.getLogger("sinks.loader")  # also when run as __main__

#: How often the loader looks for topics that do not exist yet (seconds).
MISSING_TOPICS_RETRY_S = 1.0
#: How often the loader checks whether the broker's cluster id changed (seconds).
CLUSTER_CHECK_INTERVAL_S = 5.0
#: Lag is computed at most this often (seconds).
LAG_REFRESH_INTERVAL_S = 1.0
#: Back-off after a failed ClickHouse write: first delay and ceiling (seconds).
RETRY_FIRST_DELAY_S = 0.5
RETRY_MAX_DELAY_S = 10.0
#: The same consumer error is logged at most this often (seconds).
CONSUME_ERROR_LOG_INTERVAL_S = 10.0
#: Longest single wait for messages, so that batch ages and stop requests are honoured.
MAX_CONSUME_WAIT_S = 0.2
#: The heartbeats' insert settings: the block is written as a part as it is, sorted but
#: not collapsed. By default ClickHouse runs a ReplacingMergeTree's block through the
#: replacing merge at insert, row by row: ~0.8 s of the loader's CPU a million heartbeats
#: (docs/benchmarks.md). A replay that lands in the same block as its original then stays
#: until parts merge, as one in another block always did: ``FINAL`` counts it once.
AS_A_PART_IS = {"optimize_on_insert": 0}
#: Every insert's settings: a block may touch any number of monthly partitions. By default
#: ClickHouse refuses a block that touches more than 100, and ``TIMESTAMP_RANGE`` spans 1,200
#: months: 101 valid rows a month apart made an insert fail on every retry, holding back
#: every topic of the loader's lane (found by a fuzzer; tests/test_loader.py).
ANY_PARTITIONS = {"max_partitions_per_insert_block": 0}
#: ClickHouse's error codes for a value it will not store (or a block it will not take
#: whole): the batch's own content, not the server's state, so trying again never helps.
#: After ``loader_isolate_after`` such failures the batch is split to find the rows
#: refused alone (:meth:`Loader._insert_isolating`). A schema mismatch may raise some of
#: them too, for every row: ``loader_max_refused_rows`` keeps that from skipping a batch.
ROW_ERROR_CODES = frozenset({
    6,  # CANNOT_PARSE_TEXT
    25,  # CANNOT_PARSE_ESCAPE_SEQUENCE
    26,  # CANNOT_PARSE_QUOTED_STRING
    27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,  # CANNOT_PARSE_DATE
    41,  # CANNOT_PARSE_DATETIME
    53,  # TYPE_MISMATCH
    69,  # ARGUMENT_OUT_OF_BOUND
    70,  # CANNOT_CONVERT_TYPE
    72,  # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    128,  # TOO_LARGE_ARRAY_SIZE
    131,  # TOO_LARGE_STRING_SIZE
    190,  # SIZES_OF_ARRAYS_DONT_MATCH
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    376,  # CANNOT_PARSE_UUID
    395,  # FUNCTION_THROW_IF_VALUE_IS_NON_ZERO
    407,  # DECIMAL_OVERFLOW
    441,  # CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING
    467,  # CANNOT_PARSE_BOOL
    469,  # VIOLATED_CONSTRAINT
    565,  # TOO_MANY_PARTITIONS (a block: halves of it are taken)
    691,  # UNKNOWN_ELEMENT_OF_ENUM
})  # fmt: skip

Partition = tuple[str, int]  # (physical topic, partition number)


@dataclass
class LoaderStats:
    """What the loader has done, for ``/metrics`` and ``/system/health``.

    Topic-keyed dicts use logical topic names (``metrics``, ``anomalies`` …;
    the table of each is :data:`TABLES`).
    """

    started_at: float
    rows_inserted: dict[str, int] = field(default_factory=dict)
    batches_inserted: int = 0
    last_batch_rows: int = 0
    batch_rows_sum: int = 0
    skipped_invalid: dict[str, int] = field(default_factory=dict)
    #: Messages between the offsets of record (in ClickHouse) and the high watermark.
    lag: dict[str, int] = field(default_factory=dict)
    last_insert_at: float | None = None
    #: ClickHouse writes that failed (each is retried) and unexpected loop errors.
    errors: int = 0
    messages_read: dict[str, int] = field(default_factory=dict)
    pending_rows: int = 0
    cluster_id: str | None = None
    #: The cap on pending rows (``loader_max_pending_rows``): at it, reading pauses.
    max_pending_rows: int = 0
    #: Whether the consumer is paused (writes failing, or the pending rows at their cap).
    consumer_paused: bool = False
    #: Epoch seconds of the first failed write of the current run of failures; None once
    #: a write succeeds again.
    failing_since: float | None = None
    #: Failed writes in a row (0 after a success) and the latest failure's text.
    consecutive_failures: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    #: The insert under way, if any: its table and when it started (epoch seconds).
    inserting_table: str | None = None
    inserting_since: float | None = None
    #: An insert running longer than this (``loader_slow_insert_s``) makes the loader degraded.
    slow_insert_s: float = 0.0

    @classmethod
    def combined(cls, parts: list[LoaderStats]) -> LoaderStats:
        """The figures of several loaders (the lanes of :class:`LoaderLanes`) as one:
        counts added, the latest insert and error, the longest-running insert, the
        earliest start of failing writes; paused if any lane is.

        >>> a = LoaderStats(started_at=5.0, rows_inserted={"metric_rows": 7, "threats": 0},
        ...                 last_insert_at=9.0, last_batch_rows=7, errors=1)
        >>> b = LoaderStats(started_at=4.0, rows_inserted={"metric_rows": 0, "threats": 2},
        ...                 last_insert_at=8.0, last_batch_rows=2, failing_since=7.0,
        ...                 consecutive_failures=2, last_error="down", last_error_at=7.5)
        >>> both = LoaderStats.combined([a, b])
        >>> both.rows_inserted, both.last_batch_rows, both.errors, both.condition(8.0)[0]
        ({'metric_rows': 7, 'threats': 2}, 7, 1, 'degraded')
        """
        if len(parts) == 1:
            return parts[0]
        both = cls(started_at=min(p.started_at for p in parts))
        for name in ("rows_inserted", "skipped_invalid", "lag", "messages_read"):
            total: dict[str, int] = {}
            for part in parts:
                for topic, count in getattr(part, name).items():
                    total[topic] = total.get(topic, 0) + count
            setattr(both, name, total)
        for name in ("batches_inserted", "batch_rows_sum", "errors", "pending_rows"):
            setattr(both, name, sum(getattr(p, name) for p in parts))
        both.max_pending_rows = sum(p.max_pending_rows for p in parts)
        both.consumer_paused = any(p.consumer_paused for p in parts)
        both.cluster_id = next((p.cluster_id for p in parts if p.cluster_id), None)
        both.slow_insert_s = max(p.slow_insert_s for p in parts)
        inserted = [p for p in parts if p.last_insert_at is not None]
        if inserted:
            latest = max(inserted, key=lambda p: p.last_insert_at)
            both.last_insert_at = latest.last_insert_at
            both.last_batch_rows = latest.last_batch_rows
        failing = [p for p in parts if p.failing_since is not None]
        if failing:
            both.failing_since = min(p.failing_since for p in failing)
            both.consecutive_failures = max(p.consecutive_failures for p in failing)
        erred = [p for p in parts if p.last_error_at is not None]
        if erred:
            latest = max(erred, key=lambda p: p.last_error_at)
            both.last_error, both.last_error_at = latest.last_error, latest.last_error_at
        inserting = [p for p in parts if p.inserting_since is not None]
        if inserting:
            longest = min(inserting, key=lambda p: p.inserting_since)
            both.inserting_table, both.inserting_since = (
                longest.inserting_table, longest.inserting_since
            )  # fmt: skip
        return both

    def condition(self, now: float | None = None) -> tuple[str, str | None, float | None]:
        """``(state, reason, seconds in that state)``: ``ok``, or ``degraded`` while
        ClickHouse writes fail or an insert runs longer than ``slow_insert_s`` (the
        loader then holds back: it reads nothing more and commits no offset).

        >>> LoaderStats(started_at=0.0).condition(now=10.0)
        ('ok', None, None)
        >>> failing = LoaderStats(started_at=0.0, failing_since=4.0, consecutive_failures=3,
        ...                       last_error="NOT_ENOUGH_SPACE", last_error_at=9.0)
        >>> failing.condition(now=10.0)
        ('degraded', 'writes to ClickHouse failing (3 in a row): NOT_ENOUGH_SPACE', 6.0)
        >>> slow = LoaderStats(started_at=0.0, inserting_table="metrics", inserting_since=2.0,
        ...                    slow_insert_s=5.0)
        >>> slow.condition(now=10.0)
        ('degraded', 'insert into metrics running for 8.0 s (slow ClickHouse)', 8.0)
        """
        now = time.time() if now is None else now
        if self.failing_since is not None:
            reason = (
                f"writes to ClickHouse failing ({self.consecutive_failures} in a row): "
                f"{self.last_error}"
            )
            return "degraded", reason, round(now - self.failing_since, 3)
        if self.inserting_since is not None and self.slow_insert_s > 0:
            running = now - self.inserting_since
            if running > self.slow_insert_s:
                table = self.inserting_table
                reason = f"insert into {table} running for {running:.1f} s (slow ClickHouse)"
                return "degraded", reason, round(running, 3)
        return "ok", None, None


@dataclass
class _PendingTable:
    """Rows read from one topic and not yet in ClickHouse, with the offsets they cover."""

    name: str  # the logical topic
    table: str
    tables: list[pa.Table] = field(default_factory=list)  # metric_rows: Arrow batches
    streams: list[bytes] = field(default_factory=list)  # ... and the messages they came in
    records: list[dict] = field(default_factory=list)  # derived topics: one dict per row
    #: projection table → its rows (made from the same messages; see LoadedTopic.projections)
    projected: dict[str, list[dict]] = field(default_factory=dict)
    rows: int = 0
    #: partition → offset after the last message read (valid or skipped).
    next_offsets: dict[int, int] = field(default_factory=dict)
    #: monotonic time the oldest pending message was read; None when nothing is pending.
    since: float | None = None
    #: inserts of these rows that ClickHouse refused for their content, in a row
    refusals: int = 0

    def clear_rows(self) -> None:
        self.tables, self.streams, self.records, self.rows = [], [], [], 0
        self.projected = {}
        self.refusals = 0


class Loader:
    """Copies the agentwatch topics into ClickHouse in idempotent batches.

    ``poll_once`` is one read-and-maybe-insert cycle (tests drive it directly);
    ``start`` runs it in a daemon thread until ``stop``. Insert errors never end
    the loop: they are logged, counted, and the same batch is retried after a
    back-off, without advancing offsets.
    """

    #: Added to the loader thread's nice value when it starts (:func:`lower_this_thread`),
    #: as for the readers of ``sinks.background``: the embedded API sets it.
    niceness = 0

    def __init__(
        self, settings: Settings, client: Client, topics: Iterable[str] | None = None
    ) -> None:
        """Copies ``topics`` (logical names; None: every one of :data:`LOADED_TOPICS`)."""
        self._settings = settings
        self._client = client
        self._database = settings.clickhouse_database
        self._types = ColumnTypes(client, self._database)
        self._logical = {settings.topic(name): name for name in topics or LOADED_TOPICS}
        #: The topics waited for (and asked for in the log) until they exist; the others
        #: (a renamed topic's old name) are read only if they exist.
        self._required = {t for t, name in self._logical.items() if not LOADED[name].optional}
        self._pending = {
            topic: _PendingTable(name, TABLES[name]) for topic, name in self._logical.items()
        }
        findings_only = all(LOADED[name].finding for name in self._logical.values())
        self._consumer = Consumer(_consumer_config(settings, findings_only))
        self._cluster_id: str | None = None
        self._assigned: dict[str, list[int]] = {}  # physical topic → partitions
        #: Offsets written to ClickHouse (or where reading started, before any write).
        self._record_offsets: dict[Partition, int] = {}
        #: Partitions started at a stored offset that still must be checked against the
        #: partition's end, once a fetch has told us the true high watermark.
        self._unverified: dict[Partition, int] = {}
        self._next_metadata_check = 0.0
        self._next_lag_refresh = 0.0
        self._retry_at = 0.0
        self._retry_delay = RETRY_FIRST_DELAY_S
        self._last_offsets_stamp = datetime.fromtimestamp(0, UTC)
        #: how old each topic's oldest pending row may get before its table is inserted
        self._max_age = {
            topic: settings.loader_findings_batch_age_s
            if LOADED[name].finding
            else settings.loader_batch_age_s
            for topic, name in self._logical.items()
        }
        self._consume_wait_s = min(MAX_CONSUME_WAIT_S, min(self._max_age.values()) / 2)
        self._stats = LoaderStats(
            started_at=time.time(),
            rows_inserted=dict.fromkeys(LOADED_TOPICS, 0),
            skipped_invalid=dict.fromkeys(LOADED_TOPICS, 0),
            lag=dict.fromkeys(LOADED_TOPICS, 0),
            messages_read=dict.fromkeys(LOADED_TOPICS, 0),
            max_pending_rows=settings.loader_max_pending_rows,
            slow_insert_s=settings.loader_slow_insert_s,
        )
        #: Whether the assigned partitions are paused (see :meth:`_hold_back`).
        self._paused = False
        self._stats_lock = threading.Lock()
        self._work_lock = threading.Lock()  # one poll/flush at a time
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._said_waiting = False
        self._broker_reachable: bool | None = None
        self._last_consume_error_log: dict[int, float] = {}  # error code → monotonic time

    # --- public interface -------------------------------------------------

    def start(self) -> None:
        """Run the loader in a daemon background thread until :meth:`stop`.

        The loader is the hot path of the process it runs in, so this also
        tunes the process's garbage collector for batch work (see
        :func:`agentwatch.collector.tune_for_batches`).
        """
        if self._thread is not None:
            raise RuntimeError("the loader is already started")
        tune_for_batches(self._settings.gc_young_threshold)
        self._thread = threading.Thread(target=self._run, name="clickhouse-loader", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the loader's thread runs (:meth:`start` called, :meth:`stop` not yet)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop cleanly: insert pending rows, write their offsets, close the consumer."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("loader_stop_timeout waited_s=%g action=left daemon thread", timeout_s)
            return
        with self._work_lock:
            self._shut_down()

    def poll_once(self) -> int:
        """Read one batch of messages and insert the tables that are due; rows inserted."""
        with self._work_lock:
            if self._closed:
                return 0
            now = time.monotonic()
            if now < self._retry_at:
                return 0
            if now >= self._next_metadata_check:
                self._check_metadata(now)
            inserted = self._flush_tables(self._due_tables(now))
            if self._pending_rows() >= self._settings.loader_max_pending_rows:
                inserted += self._flush_tables(
                    [p for p in self._pending.values() if p.since is not None]
                )
            self._hold_back()
            if time.monotonic() < self._retry_at or not self._assigned or self._paused:
                return inserted
            messages = self._consumer.consume(
                self._settings.loader_consume_messages, self._consume_wait_s
            )
            if messages:
                self._take(messages)
            if self._unverified:
                self._verify_stored_offsets()
            inserted += self._flush_tables(self._due_tables(time.monotonic()))
            if time.monotonic() >= self._next_lag_refresh:
                self._refresh_lag()
            return inserted

    def flush(self) -> int:
        """Insert everything pending now and write its offsets; rows inserted.

        Unlike :meth:`poll_once`, a ClickHouse error is raised to the caller
        (after being logged and counted); the rows stay pending.
        """
        with self._work_lock:
            return self._flush_tables(
                [p for p in self._pending.values() if p.since is not None], raise_errors=True
            )

    def stats(self) -> LoaderStats:
        """A snapshot of the loader's counters (safe to call from any thread)."""
        with self._stats_lock:
            snapshot = dataclasses.replace(self._stats)
            for name in ("rows_inserted", "skipped_invalid", "lag", "messages_read"):
                setattr(snapshot, name, dict(getattr(self._stats, name)))
        return snapshot

    # --- the loop ---------------------------------------------------------

    def _run(self) -> None:
        lower_this_thread(self.niceness)
        log.info(
            "loader_started topics=%s database=%s batch_rows=%d batch_age_s=%g",
            ",".join(self._logical),
            self._database,
            self._settings.loader_batch_rows,
            self._settings.loader_batch_age_s,
        )
        while not self._stopping.is_set():
            try:
                self.poll_once()
            except Exception:
                log.exception("loader_loop_error action=retrying after back-off")
                self._count_error()
                self._back_off()
            wait_s = self._retry_at - time.monotonic()
            if wait_s > 0 or not self._assigned:
                self._stopping.wait(min(max(wait_s, 0.05), MAX_CONSUME_WAIT_S))
        with self._work_lock:
            self._shut_down()

    def _shut_down(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._flush_tables(
                [p for p in self._pending.values() if p.since is not None], raise_errors=True
            )
        except Exception as exc:
            log.warning(
                "loader_final_flush_failed error=%r action=rows will be read again on next start",
                str(exc)[:200],
            )
        self._consumer.close()
        stats = self.stats()
        log.info(
            "loader_stopped rows_inserted=%s batches=%d skipped_invalid=%s errors=%d",
            _format_counts(stats.rows_inserted),
            stats.batches_inserted,
            _format_counts(stats.skipped_invalid),
            stats.errors,
        )

    # --- topics, partitions and where to start ---------------------------

    def _check_metadata(self, now: float) -> None:
        """Assign topics that appeared, and notice a broker that restarted."""
        all_assigned = self._required <= self._assigned.keys()
        self._next_metadata_check = now + (
            CLUSTER_CHECK_INTERVAL_S if all_assigned else MISSING_TOPICS_RETRY_S
        )
        try:
            metadata = self._consumer.list_topics(timeout=1.0)
        except KafkaException as exc:
            if self._broker_reachable is not False:
                log.warning(
                    "broker_unreachable bootstrap_servers=%s error=%r action=retrying until "
                    "it answers (is the broker running? see AGENTWATCH_BOOTSTRAP_SERVERS)",
                    self._settings.bootstrap_servers,
                    _one_line(exc),
                )
            self._broker_reachable = False
            return
        if self._broker_reachable is False:
            log.info("broker_reachable bootstrap_servers=%s", self._settings.bootstrap_servers)
        self._broker_reachable = True
        if self._cluster_id is not None and metadata.cluster_id != self._cluster_id:
            self._on_cluster_change(metadata.cluster_id)
        self._cluster_id = metadata.cluster_id
        with self._stats_lock:
            self._stats.cluster_id = metadata.cluster_id
        appeared = {
            topic: sorted(metadata.topics[topic].partitions)
            for topic in self._logical
            if topic not in self._assigned
            and topic in metadata.topics
            and metadata.topics[topic].error is None
            and metadata.topics[topic].partitions
        }
        if appeared:
            self._assign(appeared)
        missing = sorted(self._required - set(self._assigned))
        if missing and not self._said_waiting:
            log.info("loader_waiting_for_topics topics=%s", ",".join(missing))
        self._said_waiting = bool(missing)

    def _assign(self, topics: dict[str, list[int]]) -> None:
        """Start reading these partitions where the offsets of record say."""
        stored = self._stored_offsets(list(topics))
        assignment = []
        for topic, partitions in topics.items():
            for partition in partitions:
                start = self._start_offset(topic, partition, stored.get((topic, partition)))
                assignment.append(TopicPartition(topic, partition, start))
        self._consumer.incremental_assign(assignment)
        if self._paused:  # holding back: the new partitions wait too
            self._consumer.pause(assignment)
        self._assigned.update(topics)
        log.info(
            "loader_assigned cluster_id=%s partitions=%s",
            self._cluster_id,
            ",".join(f"{tp.topic}[{tp.partition}]@{_show_offset(tp.offset)}" for tp in assignment),
        )

    def _stored_offsets(self, topics: list[str]) -> dict[Partition, tuple[str, int]]:
        """(topic, partition) → (cluster_id, next_offset) from ``loader_offsets``."""
        result = self._client.query(
            f"SELECT topic, partition, cluster_id, next_offset FROM {self._database}"
            ".loader_offsets FINAL WHERE topic IN {topics:Array(String)}",
            parameters={"topics": topics},
        )
        return {(t, p): (cluster, offset) for t, p, cluster, offset in result.result_rows}

    def _start_offset(self, topic: str, partition: int, stored: tuple[str, int] | None) -> int:
        """Where to start a partition: the stored offset if it belongs to this log."""
        if stored is None:
            return OFFSET_BEGINNING
        stored_cluster, next_offset = stored
        if stored_cluster != self._cluster_id:
            log.warning(
                "loader_offsets_reset topic=%s partition=%d stored_offset=%d "
                "stored_cluster_id=%s cluster_id=%s reason=the broker is not the one the "
                "offsets came from (an in-memory broker restarted) action=reading the "
                "partition from the beginning",
                topic,
                partition,
                next_offset,
                stored_cluster,
                self._cluster_id,
            )
            return OFFSET_BEGINNING
        self._record_offsets[topic, partition] = next_offset
        self._unverified[topic, partition] = next_offset
        return next_offset

    def _verify_stored_offsets(self) -> None:
        """Restart from the beginning a partition whose stored offset is past its end.

        The true high watermark comes from fetch responses (the embedded
        broker's ListOffsets answer can be too low), so the check waits for
        the first fetch of each partition.
        """
        for (topic, partition), stored in list(self._unverified.items()):
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, partition), cached=True
            )
            if high < 0:
                continue
            del self._unverified[topic, partition]
            if stored <= high:
                continue
            log.warning(
                "loader_offsets_reset topic=%s partition=%d stored_offset=%d high_watermark=%d "
                "reason=the stored offset is past the end of the partition (the broker lost "
                "its log) action=reading the partition from the beginning",
                topic,
                partition,
                stored,
                high,
            )
            start = max(low, 0)
            self._consumer.seek(TopicPartition(topic, partition, start))
            self._record_offsets[topic, partition] = start

    def _on_cluster_change(self, new_cluster_id: str) -> None:
        """The broker restarted with an empty log: read everything again from its start.

        Pending rows are kept (they are real data and get inserted); their
        offsets are dropped, because they belong to the old log.
        """
        log.warning(
            "broker_cluster_changed old_cluster_id=%s cluster_id=%s reason=the broker restarted "
            "and its offsets start again at 0 action=reading every partition from the beginning",
            self._cluster_id,
            new_cluster_id,
        )
        for pending in self._pending.values():
            pending.next_offsets.clear()
        self._record_offsets.clear()
        self._unverified.clear()
        self._consumer.unassign()
        self._assigned.clear()
        self._set_paused(False)
        self._next_metadata_check = 0.0

    # --- holding back ----------------------------------------------------------

    def _pending_rows(self) -> int:
        return sum(p.rows for p in self._pending.values())

    def _hold_back(self) -> None:
        """Pause reading while ClickHouse writes fail (the back-off) or the pending rows
        are at ``loader_max_pending_rows``; resume when neither holds.

        Paused, the consumer fetches nothing from the broker, so the process's memory
        stays what the pending rows (and what was already prefetched) need. On resume each
        partition is sought to the first message not yet taken: nothing skipped,
        nothing read twice.
        """
        hold = (
            time.monotonic() < self._retry_at
            or self._pending_rows() >= self._settings.loader_max_pending_rows
        )
        if hold == self._paused or not self._assigned:
            return
        partitions = [TopicPartition(t, p) for t, ps in self._assigned.items() for p in ps]
        if hold:
            self._consumer.pause(partitions)
            log.warning(
                "loader_paused pending_rows=%d max_pending_rows=%d writes_failing=%s "
                "action=reading nothing more until ClickHouse takes the pending rows",
                self._pending_rows(),
                self._settings.loader_max_pending_rows,
                time.monotonic() < self._retry_at,
            )
        else:
            self._consumer.resume(partitions)
            for tp in partitions:
                offset = self._pending[tp.topic].next_offsets.get(
                    tp.partition, self._record_offsets.get((tp.topic, tp.partition))
                )
                if offset is not None:
                    self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            log.info("loader_resumed pending_rows=%d", self._pending_rows())
        self._set_paused(hold)

    def _set_paused(self, paused: bool) -> None:
        self._paused = paused
        with self._stats_lock:
            self._stats.consumer_paused = paused

    # --- reading messages ----------------------------------------------------

    def _take(self, messages: list[Message]) -> None:
        """Parse one consumed batch into the pending tables (all or nothing)."""
        errors = list(map(Message.error, messages))
        if errors.count(None) != len(errors):
            for error in errors:
                if error is not None:
                    self._on_consume_error(error)
            messages = [m for m, error in zip(messages, errors, strict=True) if error is None]
        topics = list(map(Message.topic, messages))
        by_topic: dict[str, list[Message]] = {topic: [] for topic in self._pending}
        for topic, message in zip(topics, messages, strict=True):
            by_topic[topic].append(message)
        # the last message read of each partition (a partition's messages come in order)
        last_offsets = dict(
            zip(
                zip(topics, map(Message.partition, messages), strict=True),
                map(Message.offset, messages),
                strict=True,
            )
        )
        next_offsets = {partition: offset + 1 for partition, offset in last_offsets.items()}
        try:
            parsed = {
                topic: self._parse(topic, topic_messages)
                for topic, topic_messages in by_topic.items()
                if topic_messages
            }
        except Exception:
            self._rewind({tp for tp in next_offsets})
            raise
        now = time.monotonic()
        for topic, (tables, records, projected, skipped) in parsed.items():
            pending = self._pending[topic]
            for value, table in tables:
                pending.streams.append(value)
                pending.tables.append(table)
                pending.rows += table.num_rows
            if records:
                pending.records.extend(records)
                pending.rows += len(records)
            for table, rows in projected.items():
                pending.projected.setdefault(table, []).extend(rows)
            if pending.since is None:
                pending.since = now
            name = self._logical[topic]
            with self._stats_lock:
                self._stats.messages_read[name] += len(by_topic[topic])
                self._stats.skipped_invalid[name] += skipped
        for (topic, partition), offset in next_offsets.items():
            self._pending[topic].next_offsets[partition] = offset
        with self._stats_lock:
            self._stats.pending_rows = sum(p.rows for p in self._pending.values())

    def _parse(
        self, topic: str, messages: list[Message]
    ) -> tuple[list[tuple[bytes, pa.Table]], list[dict], dict[str, list[dict]], int]:
        """((message, its Arrow rows), derived rows, projected rows by table, messages
        skipped) of one topic's messages. A message is taken whole or refused whole: its
        rows and the row of each projection, or nothing."""
        name = self._logical[topic]
        loaded = LOADED[name]
        if loaded.row is None:  # metric_rows: checked, never parsed row by row
            tables, skipped = [], 0
            for message in messages:
                value = message.value()
                try:
                    tables.append((value, decode_metric_rows(value)))
                except Exception as exc:  # (as below: one bad message never holds the lane)
                    skipped += 1
                    self._log_skipped(message, exc)
            return tables, [], {}, skipped
        to_row, projections = loaded.row, loaded.projections
        rows, skipped = [], 0
        projected: dict[str, list[dict]] = {p.table: [] for p in projections}
        for message in messages:
            value = message.value()
            try:
                row = to_row(value)
                made = [(p.table, p.row(row)) for p in projections]
                rows.append(row)
                for table, projected_row in made:
                    if projected_row is not None:
                        projected[table].append(projected_row)
            except Exception as exc:
                skipped += 1
                self._log_skipped(message, exc)
        if loaded.stamps_cluster_id:
            for row in rows:
                row["cluster_id"] = row["cluster_id"] or self._cluster_id or ""
        return [], rows, {t: r for t, r in projected.items() if r}, skipped

    @staticmethod
    def _log_skipped(message: Message, exc: Exception) -> None:
        log.warning(
            "derived_message_skipped topic=%s partition=%d offset=%d bytes=%d reason=%r",
            message.topic(),
            message.partition(),
            message.offset(),
            len(message.value() or b""),
            _one_line(exc),
        )

    def _rewind(self, partitions: Iterable[Partition]) -> None:
        """Seek back to the first message not yet taken, so a failed batch is read again."""
        for topic, partition in partitions:
            offset = self._pending[topic].next_offsets.get(
                partition, self._record_offsets.get((topic, partition), OFFSET_BEGINNING)
            )
            self._consumer.seek(TopicPartition(topic, partition, offset))

    def _on_consume_error(self, error: KafkaError) -> None:
        """Log a consumer error (at most one line per error kind every 10 s)."""
        code = error.code()
        now = time.monotonic()
        if code == KafkaError._PARTITION_EOF or now < self._last_consume_error_log.get(code, 0):
            return
        self._last_consume_error_log[code] = now + CONSUME_ERROR_LOG_INTERVAL_S
        log.warning("consume_error code=%s error=%r", error.name(), error.str())

    # --- writing to ClickHouse --------------------------------------------

    def _due_tables(self, now: float) -> list[_PendingTable]:
        """The tables to insert now, findings first and threats first of them (a threat
        does not wait for the heartbeats' insert, nor for the other findings')."""
        batch_rows, max_age = self._settings.loader_batch_rows, self._max_age
        due = [
            p
            for topic, p in self._pending.items()
            if p.since is not None and (p.rows >= batch_rows or now - p.since >= max_age[topic])
        ]
        return sorted(due, key=lambda p: (not LOADED[p.name].finding, p.name != "threats"))

    def _flush_tables(self, tables: list[_PendingTable], raise_errors: bool = False) -> int:
        """Insert each table's pending rows, then write the offsets they all cover, in
        one insert: each insert into ClickHouse costs tens of milliseconds whatever its
        rows (measured with chDB under load: ~20 ms for the offsets' few rows), and a
        threat that arrives meanwhile waits for them. Offsets are written only for
        tables whose rows are in; after a failed insert, for those before it."""
        inserted, done = 0, []  # (a table inserted, since when its rows had waited)
        try:
            for pending in tables:
                self._mark_inserting(pending.table)
                try:
                    if pending.refusals >= self._settings.loader_isolate_after:
                        inserted += self._insert_isolating(pending)
                    else:
                        inserted += self._insert(pending)
                except Exception as exc:
                    if refused_for_content(exc):
                        pending.refusals += 1
                    elif isinstance(exc, RowsRefused):  # (systematic: split again later)
                        pending.refusals = 0
                    raise
                finally:
                    self._mark_inserting(None)
                done.append((pending, pending.since))
                pending.since = None
            failed = None
        except Exception as exc:
            failed = (tables[len(done)], exc)
        try:
            self._write_offsets([pending for pending, _ in done])
        except Exception as exc:
            failed = failed or (done[-1][0], exc)
            for pending, since in done:  # due again: their offsets are written at the next try
                pending.since = since
        if failed is not None:
            pending, exc = failed
            self._types.forget()  # (a table altered meanwhile: its types are asked again)
            self._count_error()
            self._note_failure(exc)
            self._back_off()
            log.warning(
                "clickhouse_write_failed table=%s rows=%d error=%r retry_in_s=%.1f "
                "action=keeping the batch and retrying",
                pending.table,
                pending.rows,
                _one_line(exc),
                self._retry_at - time.monotonic(),
            )
            if raise_errors:
                raise exc
        elif done:
            self._retry_delay = RETRY_FIRST_DELAY_S
            self._note_success()
        return inserted

    def _mark_inserting(self, table: str | None) -> None:
        with self._stats_lock:
            self._stats.inserting_table = table
            self._stats.inserting_since = None if table is None else time.time()

    def _note_failure(self, exc: Exception) -> None:
        with self._stats_lock:
            stats = self._stats
            now = time.time()
            if stats.failing_since is None:
                stats.failing_since = now
            stats.consecutive_failures += 1
            stats.last_error = _error_summary(exc)
            stats.last_error_at = now

    def _note_success(self) -> None:
        with self._stats_lock:
            stats = self._stats
            if stats.failing_since is not None:
                log.info(
                    "clickhouse_writes_recovered failed_writes=%d failing_for_s=%.1f",
                    stats.consecutive_failures,
                    time.time() - stats.failing_since,
                )
            stats.failing_since = None
            stats.consecutive_failures = 0

    def _insert(self, pending: _PendingTable) -> int:
        rows = pending.rows
        if not rows:
            return 0
        started = time.perf_counter()
        loaded = LOADED[pending.name]
        if pending.tables:  # (ClickHouse reads Arrow as it is: no rows made in Python)
            stream = one_metric_rows_stream(pending.streams) if pending.streams else None
            if stream is not None:  # the messages' own batches, not written again
                self._client.raw_insert(
                    f"{quote_identifier(self._database)}.{quote_identifier(pending.table)}",
                    METRIC_ROWS_SCHEMA.names, stream, fmt="ArrowStream",
                    settings=AS_A_PART_IS | ANY_PARTITIONS,
                )  # fmt: skip
            else:
                tables = pending.tables
                arrow = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
                self._client.insert_arrow(
                    pending.table,
                    arrow,
                    database=self._database,
                    settings=AS_A_PART_IS | ANY_PARTITIONS,
                )
            frame, dropped = None, 0  # (metric_rows has no projections)
        else:
            frame, dropped = framed(pending.table, loaded.frame, pending.records)
            self._insert_rows(pending.table, frame)
        for projection in loaded.projections:  # (before the offsets, too)
            projected = pending.projected.get(projection.table)
            if projected:
                if projection.row is _same_row and projection.frame is loaded.frame:
                    projected_frame = frame  # (the very rows, in the very layout: made once)
                else:
                    projected_frame, _ = framed(projection.table, projection.frame, projected)
                self._insert_rows(projection.table, projected_frame)
        elapsed_ms = (time.perf_counter() - started) * 1000
        pending.clear_rows()
        rows -= dropped
        with self._stats_lock:
            stats = self._stats
            stats.skipped_invalid[pending.name] += dropped
            stats.rows_inserted[pending.name] += rows
            stats.batches_inserted += 1
            stats.last_batch_rows = rows
            stats.batch_rows_sum += rows
            stats.last_insert_at = time.time()
            stats.pending_rows = sum(p.rows for p in self._pending.values())
        log.info("batch_inserted table=%s rows=%d insert_ms=%.1f", pending.table, rows, elapsed_ms)
        return rows

    def _insert_isolating(self, pending: _PendingTable) -> int:
        """Insert ``pending``'s rows in halves, and halves of the halves that ClickHouse
        refuses for their content, down to single rows; skip the rows refused alone (at
        most ``loader_max_refused_rows``: past that, raise, and the batch is kept whole).

        Halves already in when a later one raises are inserted again at the next try: the
        tables are ReplacingMergeTrees, so a replayed row counts once (as after a crash).
        The cost is about two inserts per refused row per halving (a batch of 50,000 rows
        with one bad row: ~32 inserts).
        """
        loaded = LOADED[pending.name]
        if pending.tables:
            rows: pa.Table | list[dict] = pa.concat_tables(pending.tables)
        else:
            rows = pending.records
        total, refused = len(rows), []
        limit = self._settings.loader_max_refused_rows

        def part(start: int, stop: int) -> _PendingTable:
            sub = _PendingTable(pending.name, pending.table, rows=stop - start)
            if isinstance(rows, pa.Table):
                sub.tables = [rows.slice(start, stop - start)]
                return sub
            sub.records = rows[start:stop]
            for projection in loaded.projections:
                made = [projection.row(row) for row in sub.records]
                sub.projected[projection.table] = [row for row in made if row is not None]
            return sub

        def attempt(start: int, stop: int) -> int:
            try:
                return self._insert(part(start, stop))
            except Exception as exc:
                if not refused_for_content(exc):
                    raise
                if stop - start > 1:
                    middle = (start + stop) // 2
                    return attempt(start, middle) + attempt(middle, stop)
                if len(refused) >= limit:
                    raise RowsRefused(pending.table, len(refused) + 1, limit, exc) from exc
                refused.append(start)
                self._log_refused(pending, rows, start, exc)
                return 0

        middle = (total + 1) // 2  # (the whole batch was just refused: start with halves)
        inserted = attempt(0, middle) + (attempt(middle, total) if middle < total else 0)
        pending.clear_rows()
        with self._stats_lock:
            self._stats.skipped_invalid[pending.name] += len(refused)
            self._stats.pending_rows = sum(p.rows for p in self._pending.values())
        log.warning(
            "clickhouse_batch_isolated table=%s rows=%d inserted=%d refused=%d",
            pending.table, total, inserted, len(refused),
        )  # fmt: skip
        return inserted

    @staticmethod
    def _log_refused(
        pending: _PendingTable, rows: pa.Table | list[dict], index: int, exc: Exception
    ) -> None:
        row = rows.slice(index, 1).to_pylist()[0] if isinstance(rows, pa.Table) else rows[index]
        log.warning(
            "clickhouse_row_refused table=%s agent_id=%s error=%r action=skipped",
            pending.table, row.get("agent_id"), _error_summary(exc),
        )  # fmt: skip

    def _insert_rows(self, table: str, frame: pa.Table) -> None:
        if frame.num_rows:  # (none: every row was dropped)
            insert_rows(self._client, table, frame, self._database)

    def _write_offsets(self, tables: list[_PendingTable]) -> None:
        """Record in ClickHouse (one insert for every table), then commit to Kafka, where
        each partition of the tables' topics continues."""
        offsets = [
            (self._settings.topic(pending.name), partition, offset)
            for pending in tables
            for partition, offset in sorted(pending.next_offsets.items())
        ]
        if not offsets:
            return
        stamp = max(datetime.now(UTC), self._last_offsets_stamp + timedelta(microseconds=1))
        self._last_offsets_stamp = stamp
        cluster = self._cluster_id or ""
        columns = ("cluster_id", "topic", "partition", "next_offset", "updated_at")
        self._client.insert(
            "loader_offsets",
            [(cluster, topic, partition, offset, stamp) for topic, partition, offset in offsets],
            column_names=columns,
            column_types=self._types.of("loader_offsets", columns),
            database=self._database,
        )
        for pending in tables:
            pending.next_offsets = {}
        for topic, partition, offset in offsets:
            self._record_offsets[topic, partition] = offset
        try:
            self._consumer.commit(
                offsets=[TopicPartition(t, partition, offset) for t, partition, offset in offsets],
                asynchronous=True,
            )
        except KafkaException as exc:  # lag monitoring only: never worth stopping for
            log.debug("kafka_commit_failed tables=%d error=%s", len(tables), exc)

    def _back_off(self) -> None:
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_DELAY_S)

    def _count_error(self) -> None:
        with self._stats_lock:
            self._stats.errors += 1

    def _refresh_lag(self) -> None:
        """Messages behind the high watermark, per logical topic (from fetch responses)."""
        self._next_lag_refresh = time.monotonic() + LAG_REFRESH_INTERVAL_S
        lag = dict.fromkeys(LOADED_TOPICS, 0)
        for topic, partitions in self._assigned.items():
            for partition in partitions:
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
                if high < 0:
                    continue
                done = self._record_offsets.get((topic, partition), max(low, 0))
                lag[self._logical[topic]] += max(high - done, 0)
        with self._stats_lock:
            self._stats.lag = lag


class LoaderLanes:
    """The loader as lanes, with the surface of one :class:`Loader` (``start``, ``stop``,
    ``running``, ``stats``, ``flush``, ``poll_once``, ``niceness``).

    With ``loader_findings_lane`` (the default) the findings an operator waits for
    (threats, alerts, incidents, anomalies, security scores: :attr:`LoadedTopic.finding`)
    have a loader of their own: its own consumer, thread and ClickHouse connection
    (``open_client``). A threat then never queues behind the heartbeats' insert, nor
    behind the baselines' or the assignment scores' (tens of milliseconds each under
    load, docs/benchmarks.md). Without it, or without ``open_client``, one loader reads
    every topic. Each lane keeps the offsets of its own topics, so the two never wait
    for each other, and a lane that fails retries alone.
    """

    def __init__(
        self,
        settings: Settings,
        client: Client,
        open_client: Callable[[], Client] | None = None,
    ) -> None:
        self._opened: list[Client] = []
        if not (settings.loader_findings_lane and open_client is not None):
            self.lanes = [Loader(settings, client)]
            return
        findings = [name for name in LOADED_TOPICS if LOADED[name].finding]
        rest = [name for name in LOADED_TOPICS if not LOADED[name].finding]
        self._opened.append(open_client())
        self.lanes = [Loader(settings, client, rest), Loader(settings, self._opened[0], findings)]

    @property
    def niceness(self) -> int:
        return self.lanes[0].niceness

    @niceness.setter
    def niceness(self, value: int) -> None:
        for lane in self.lanes:
            lane.niceness = value

    def start(self) -> None:
        for lane in self.lanes:
            lane.start()

    @property
    def running(self) -> bool:
        """Whether every lane's thread runs."""
        return all(lane.running for lane in self.lanes)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop every lane (each inserts what it holds); close the connections opened here."""
        for lane in self.lanes:
            lane.stop(timeout_s)
        for client in self._opened:
            client.close()
        self._opened.clear()

    def poll_once(self) -> int:
        return sum(lane.poll_once() for lane in self.lanes)

    def flush(self) -> int:
        return sum(lane.flush() for lane in self.lanes)

    def stats(self) -> LoaderStats:
        return LoaderStats.combined([lane.stats() for lane in self.lanes])


# --- derived topics: one message → one row ---------------------------------


def anomaly_row(value: bytes) -> dict:
    """Row of table ``anomalies`` from one ``agents.anomalies`` message.

    >>> row = anomaly_row(b'{"agent_id":"a1","tenant_id":"t1","timestamp":1764072000,'
    ...     b'"score":0.9995,"threshold":0.999,"is_anomaly":true,"detector":"hst",'
    ...     b'"reasons":[{"feature":"cpu_usage","value":99,"baseline_mean":40,'
    ...     b'"baseline_std":5,"z":11.8}]}')
    >>> row["top_feature"], row["reasons"][:23]
    ('cpu_usage', '[{"feature":"cpu_usage"')
    """
    record = AnomalyRecord.model_validate(orjson.loads(value))
    for name in ("timestamp", "episode_start", "episode_end"):
        moment = getattr(record, name)
        if moment is not None:
            _require_range(name, moment, *TIMESTAMP_RANGE)
    reasons = [_fields(reason) for reason in record.reasons]
    return {
        "agent_id": record.agent_id,
        "tenant_id": record.tenant_id,
        "timestamp": record.timestamp,
        "score": record.score,
        "threshold": record.threshold,
        "is_anomaly": record.is_anomaly,
        "detector": record.detector,
        "top_feature": reasons[0]["feature"] if reasons else "",
        "reasons": orjson.dumps(reasons).decode(),
        "episode_start": record.episode_start,
        "episode_end": record.episode_end,
    }


def baseline_row(value: bytes) -> dict:
    """Row of table ``baselines`` from one ``agents.baselines`` message."""
    record = BaselineRecord.model_validate(orjson.loads(value))
    _require_range("timestamp", record.timestamp, *TIMESTAMP_RANGE)
    _require_range("heartbeats", record.heartbeats, 0, _UINT64_MAX)
    return _fields(record)


def threat_row(value: bytes) -> dict:
    """Row of table ``threats`` from one ``agents.threats`` message.

    The evidence is kept whole, as JSON; its condition also gets a column of its own.

    >>> row = threat_row(b'{"agent_id":"a1","tenant_id":"t1","rule":"high_error_rate",'
    ...     b'"category":"PERFORMANCE","severity":"HIGH","first_seen":1764072000,'
    ...     b'"last_seen":1764072030,"evidence":{"condition":"avg(error_rate) over 300s > 0.2",'
    ...     b'"values":{"error_rate":0.31},"window_start":1764071730,"window_end":1764072030}}')
    >>> row["rule"], row["condition"], orjson.loads(row["evidence"])["values"]
    ('high_error_rate', 'avg(error_rate) over 300s > 0.2', {'error_rate': 0.31})
    """
    record = Threat.model_validate(orjson.loads(value))
    _require_range("first_seen", record.first_seen, *TIMESTAMP_RANGE)
    _require_range("last_seen", record.last_seen, *TIMESTAMP_RANGE)
    evidence = record.evidence
    return {
        "agent_id": record.agent_id,
        "tenant_id": record.tenant_id,
        "rule": record.rule,
        "category": record.category,
        "severity": record.severity,
        "first_seen": record.first_seen,
        "last_seen": record.last_seen,
        "condition": evidence.condition,
        "evidence": orjson.dumps(evidence.model_dump()).decode(),
    }


def alert_row(value: bytes) -> dict:
    """Row of table ``alerts`` from one ``agents.alerts`` message (one change of state).

    A category or severity not yet known is stored as ``""``, evidence not yet known
    as ``""``; the evidence is kept whole, as JSON.

    >>> row = alert_row(b'{"fingerprint":"00ff","agent_id":"a1","tenant_id":"t1",'
    ...     b'"rule":"hot","category":null,"severity":null,"state":"pending",'
    ...     b'"started_at":1764072000,"fired_at":null,"resolved_at":null,'
    ...     b'"last_seen":1764072000,"updated_at":1764072000,"flapping":false,'
    ...     b'"flap_count":0,"summary":"hot pending on agent a1","evidence":null,'
    ...     b'"silenced":false}')
    >>> row["state"], row["category"], row["fired_at"], row["evidence"]
    ('pending', '', None, '')
    """
    record = Alert.model_validate(orjson.loads(value))
    for name in ("started_at", "fired_at", "resolved_at", "last_seen", "updated_at"):
        moment = getattr(record, name)
        if moment is not None:
            _require_range(name, moment, *TIMESTAMP_RANGE)
    _require_range("flap_count", record.flap_count, 0, _UINT32_MAX)
    row = _fields(record)
    row["category"] = record.category or ""
    row["severity"] = record.severity or ""
    evidence = record.evidence
    row["evidence"] = "" if evidence is None else orjson.dumps(evidence.model_dump()).decode()
    return row


def score_row(value: bytes) -> dict:
    """Row of table ``security_scores`` from one ``agents.security`` message.

    >>> score_row(b'{"agent_id":"a1","tenant_id":"t1","timestamp":1764072000,'
    ...     b'"score":80,"delta":-20,"cause":"excessive_errors","first_seen":1764071700}')["delta"]
    -20.0
    """
    record = ScoreChange.model_validate(orjson.loads(value))
    _require_range("timestamp", record.timestamp, *TIMESTAMP_RANGE)
    if record.first_seen is not None:
        _require_range("first_seen", record.first_seen, *TIMESTAMP_RANGE)
    return _fields(record)


def assignment_score_row(value: bytes) -> dict:
    """Row of table ``assignment_scores`` from one ``agents.assignment_scores`` message
    (``AssignmentScore``); ``weights`` and ``by_type`` as JSON.

    >>> row = assignment_score_row(b'{"agent_id":"a1","tenant_id":"t1","timestamp":1764072000,'
    ...     b'"score":0.7,"performance":0.8,"cost":0.5,"availability":1,"sla":0.5,'
    ...     b'"weights":{"performance":0.4,"cost":0.3,"availability":0.2,"sla":0.1},'
    ...     b'"state":"active","active_tasks":1,"capacity":4,"success_rate":0.9,'
    ...     b'"response_time_ms":120,"sla_met_rate":1,"tasks_completed":9,"tasks_failed":1,'
    ...     b'"by_type":{"etl":{"p_success":0.9,"outcomes":10}},"cause":"task"}')
    >>> row["weights"][:19], orjson.loads(row["by_type"])["etl"]["p_success"], row["p_fail"]
    ('{"performance":0.4,', 0.9, None)
    """
    record = AssignmentScore.model_validate(orjson.loads(value))
    _require_range("timestamp", record.timestamp, *TIMESTAMP_RANGE)
    for name in ("active_tasks", "capacity"):
        _require_range(name, getattr(record, name), 0, _UINT32_MAX)
    for name in ("tasks_completed", "tasks_failed"):
        _require_range(name, getattr(record, name), 0, _UINT64_MAX)
    row = _fields(record)
    row["weights"] = record.weights.model_dump_json()
    row["by_type"] = orjson.dumps(
        {task_type: estimate.model_dump() for task_type, estimate in record.by_type.items()}
    ).decode()
    return row


def command_row(value: bytes) -> dict:
    """Row of table ``commands`` from one ``agents.commands`` message."""
    return _fields(AgentCommand.model_validate(orjson.loads(value)))


def incident_row(value: bytes) -> dict:
    """Row of table ``incidents`` from one ``agents.incidents`` message (any revision)."""
    record = Incident.model_validate(orjson.loads(value))
    _require_range("first_seen", record.first_seen, *TIMESTAMP_RANGE)
    _require_range("last_seen", record.last_seen, *TIMESTAMP_RANGE)
    _require_range("revision", record.revision, 0, _UINT32_MAX)
    return _fields(record)


def event_row(channel: str, value: bytes) -> dict:
    """Row of table ``agent_events`` from one message of the lifecycle channel
    ``channel`` (``events``, ``control`` or ``state``); the payload as JSON. A type not
    accepted on that channel, or an agent's event or command whose payload the dataflow
    refuses (:func:`agentwatch.inbox.shard_command`: it dead-letters those), is refused
    (a ``ValueError`` says why).

    >>> released = (b'{"type":"released","agent_id":"a1","tenant_id":"t1","actor":"ops",'
    ...     b'"timestamp":1764072000,"payload":{"reason":"fixed"}}')
    >>> row = event_row("control", released)
    >>> row["payload"], row["channel"]
    ('{"reason":"fixed"}', 'control')
    >>> event_row("events", released)
    Traceback (most recent call last):
    ...
    schemas.events.EventError: 'released' is an operator's command; it is accepted only on \
agents.control, which only the API writes
    """
    record = check_channel(channel, LifecycleEvent.model_validate(orjson.loads(value)))
    if channel in (AGENT_CHANNEL, CONTROL_CHANNEL):
        shard_command(record)  # what the dataflow dead-letters is not stored (raises)
    row = _fields(record)
    row["payload"] = orjson.dumps(record.payload).decode()
    row["channel"] = channel
    return row


#: A task's statuses in the order a later one wins over an earlier one of the same
#: millisecond (``tasks.version``): ``assigned`` lowest, so the shard's ``accepted`` or
#: ``refused``, which carries the time of the ``task_assigned`` it answers, replaces it.
_STATUS_RANK = {status: rank for rank, status in enumerate(TASK_STATUSES)}
#: ``tasks.version`` = updated_at in ms × this + the status's rank (8 > len(TASK_STATUSES)).
_VERSION_STEP = 8
_UINT16_MAX = 2**16 - 1
_TASK_TIMES = ("deadline", "assigned_at", "accepted_at", "finished_at", "updated_at")


def task_version(updated_at: float, status: str) -> int:
    """The ``tasks`` row's version: the latest change wins, and of two changes of one
    millisecond, the later status (:data:`_STATUS_RANK`).

    >>> task_version(1764072000.0, "accepted") - task_version(1764072000.0, "assigned")
    1
    >>> task_version(1764072000.001, "assigned") > task_version(1764072000.0, "expired")
    True
    """
    return round(updated_at * 1000) * _VERSION_STEP + _STATUS_RANK[status]


def task_row(event: dict) -> dict | None:
    """Row of ``tasks`` from an ``agent_events`` row: the API's ``task_assigned`` (on
    agents.control; status ``assigned``, what its ``TaskAssignment`` says, the agent and
    tenant of the event) or a shard's ``task_changed`` (on agents.state; its whole
    ``TaskRecord``); None for other types. A payload that is not one raises (the message
    is refused).

    >>> assigned = {"type": "task_assigned", "agent_id": "a1", "tenant_id": "t1",
    ...     "actor": "api", "timestamp": 1764072000.0, "payload": orjson.dumps({
    ...     "task_id": "k1", "score": 0.8, "assigned_by": "api-1", "weights": {},
    ...     "components": {"performance": 1, "cost": 1, "availability": 0.5, "sla": 0}}
    ...     ).decode()}
    >>> row = task_row(assigned)
    >>> row["status"], row["agent_id"], row["capacity"], row["version"] % 8
    ('assigned', 'a1', 0, 0)
    >>> task_row({**assigned, "type": "status_changed"}) is None
    True
    """
    kind = event["type"]
    if kind == TASK_CHANGED:
        record = TaskRecord.model_validate(orjson.loads(event["payload"]))
        row = _fields(record)
    elif kind == TASK_ASSIGNED:
        assignment = TaskAssignment.model_validate(orjson.loads(event["payload"]))
        at = event["timestamp"]
        row = {
            "task_id": assignment.task_id,
            "tenant_id": event["tenant_id"],
            "agent_id": event["agent_id"],
            "task_type": assignment.task_type,
            "priority": assignment.priority,
            "status": "assigned",
            "attempt": assignment.attempt,
            "required_capabilities": list(assignment.required_capabilities),
            "score": assignment.score,
            "components": assignment.components,
            "p_success": assignment.p_success,
            "expected_duration_s": assignment.expected_duration_s,
            "deadline": assignment.deadline,
            "assigned_at": at,
            "accepted_at": None,
            "finished_at": None,
            "duration_s": None,
            "sla_met": None,
            "reason": "",
            "agent_active_tasks": 0,
            "capacity": 0,
            "assigned_by": assignment.assigned_by,
            "updated_at": at,
        }
    else:
        return None
    for name in _TASK_TIMES:
        if row[name] is not None:
            _require_range(name, row[name], *TIMESTAMP_RANGE)
    _require_range("attempt", row["attempt"], 0, _UINT16_MAX)
    for name in ("agent_active_tasks", "capacity"):
        _require_range(name, row[name], 0, _UINT32_MAX)
    components = row["components"]
    row["components"] = "" if components is None else components.model_dump_json()
    row["version"] = task_version(row["updated_at"], row["status"])
    return row


def deadletter_row(value: bytes) -> dict:
    """Row of table ``deadletter`` from one ``agents.deadletter`` message."""
    record = DeadLetter.model_validate(orjson.loads(value))
    _require_range("received_at", record.received_at, *TIMESTAMP_RANGE)
    _require_range("partition", record.partition, 0, _UINT32_MAX)
    _require_range("offset", record.offset, 0, _UINT64_MAX)
    _require_range("value_bytes", record.value_bytes, 0, _UINT32_MAX)
    base64.b64decode(record.value_b64, validate=True)  # refuse what could not be replayed
    return _fields(record)


def _fields(record: BaseModel) -> dict:
    """A validated record's fields as a dict: ``model_dump()`` without its serialisation
    pass, which these records (plain values, dicts and lists of them) do not need."""
    return dict(record.__dict__)


_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1


def insert_rows(client: Client, table: str, rows: pa.Table, database: str) -> None:
    """Insert what a :class:`LoadedTopic`'s ``frame`` made: an Arrow table, which ClickHouse
    reads as it is."""
    client.insert_arrow(table, rows, database=database, settings=ANY_PARTITIONS)


#: What building an Arrow table raises for a value that does not fit its column.
_UNFIT = (ValueError, TypeError, OverflowError)


def framed(
    table: str, build: Callable[[list[dict]], pa.Table], rows: list[dict]
) -> tuple[pa.Table, int]:
    """``build(rows)`` without the rows whose values do not fit their columns, and how many
    those were. Such a row would fail its batch at every retry and block the table for
    good, so the rows are split until each one that does not fit is alone; it is logged
    and dropped. (The row functions check the ranges first: this is the net under them.)"""
    try:
        return build(rows), 0
    except _UNFIT as exc:
        if len(rows) == 1:
            log.warning("row_dropped table=%s reason=%r row=%s",
                        table, _one_line(exc), _one_line(repr(rows[0])))  # fmt: skip
            return build([]), 1
    half = len(rows) // 2
    first, dropped_first = framed(table, build, rows[:half])
    second, dropped_second = framed(table, build, rows[half:])
    return pa.concat_tables([first, second]), dropped_first + dropped_second


def _require_range(name: str, value: float, low: float, high: float) -> None:
    """Refuse a value its ClickHouse column cannot hold (it would block every retry)."""
    if not low <= value <= high:
        raise ValueError(f"{name}={value!r} is outside [{low:g}, {high:g}]")


def _arrow_frame(schema: pa.Schema) -> Callable[[list[dict]], pa.Table]:
    """A builder of a table's rows as one Arrow table, which ClickHouse reads as it is (no
    per-row encoding in Python: pandas and the client's Native encoding cost ~13 µs a row
    and ~2.5 ms more an insert, docs/benchmarks.md): ``schema``'s columns from the row
    dicts, its times from epoch seconds (None: null) cut to milliseconds as pandas cut them
    (:func:`utc_millis`; every table was written through pandas before).
    A value that does not fit its column (a count out of range, a null where none is
    taken) raises ``ValueError``, ``TypeError`` or ``OverflowError``: :func:`framed`
    then drops its row (the row functions check the ranges first)."""
    times = [field.name for field in schema if pa.types.is_timestamp(field.type)]
    required = [field.name for field in schema if not field.nullable]

    def build(rows: list[dict]) -> pa.Table:
        columns = {name: [row[name] for row in rows] for name in schema.names}
        for name in times:
            given = columns[name]
            if None in given:
                mask = np.fromiter((value is None for value in given), bool, len(given))
                seconds = np.array([0.0 if value is None else value for value in given])
                columns[name] = utc_millis(seconds, mask)
            else:
                columns[name] = utc_millis(np.array(given, np.float64))
        table = pa.Table.from_pydict(columns, schema=schema)
        for name in required:  # (Arrow keeps a null where the schema says none)
            if table.column(name).null_count:
                raise ValueError(f"{name}: a null where the column takes none")
        return table

    return build


def _arrow_schema(*fields: tuple[str, pa.DataType] | tuple[str, pa.DataType, bool]) -> pa.Schema:
    """Fields (name, type[, nullable: False by default]) as an Arrow schema."""
    return pa.schema([pa.field(name, kind, nullable=bool(rest and rest[0]))
                      for name, kind, *rest in fields])  # fmt: skip


_MS, _TEXT = pa.timestamp("ms", tz="UTC"), pa.string()
#: ``baselines`` rows as Arrow (:data:`LOADED`).
_BASELINE_ARROW = _arrow_schema(
    ("agent_id", _TEXT),
    ("tenant_id", _TEXT),
    ("timestamp", _MS),
    ("heartbeats", pa.uint64()),
    ("warmed_up", pa.bool_()),
    ("mean", pa.map_(_TEXT, pa.float64())),
    ("std", pa.map_(_TEXT, pa.float64())),
)
#: ``agent_events`` rows as Arrow.
_EVENT_ARROW = _arrow_schema(
    *((name, _TEXT) for name in ("type", "agent_id", "tenant_id", "actor")),
    ("timestamp", _MS),
    ("payload", _TEXT),
    ("channel", _TEXT),
)
#: ``agents`` rows (the projection of ``status_changed`` events) as Arrow.
_AGENT_ARROW = _arrow_schema(
    ("tenant_id", _TEXT),
    ("agent_id", _TEXT),
    ("state", _TEXT),
    ("since", _MS),
    ("previous_state", _TEXT, True),
    ("reason", _TEXT),
    ("actor", _TEXT),
    ("trigger", _TEXT),
    ("quarantine_until", _MS, True),
    ("transitions", pa.uint32()),
)


#: ``anomalies`` rows as Arrow.
_ANOMALY_ARROW = _arrow_schema(
    ("agent_id", _TEXT),
    ("tenant_id", _TEXT),
    ("timestamp", _MS),
    ("score", pa.float64()),
    ("threshold", pa.float64()),
    ("is_anomaly", pa.bool_()),
    ("detector", _TEXT),
    ("top_feature", _TEXT),
    ("reasons", _TEXT),
    ("episode_start", _MS, True),
    ("episode_end", _MS, True),
)
#: ``threats`` rows as Arrow.
_THREAT_ARROW = _arrow_schema(
    *((name, _TEXT) for name in ("agent_id", "tenant_id", "rule", "category", "severity")),
    ("first_seen", _MS),
    ("last_seen", _MS),
    ("condition", _TEXT),
    ("evidence", _TEXT),
)
#: ``alerts`` rows as Arrow.
_ALERT_ARROW = _arrow_schema(
    *((name, _TEXT) for name in
      ("fingerprint", "agent_id", "tenant_id", "rule", "category", "severity", "state")),
    ("started_at", _MS),
    ("fired_at", _MS, True),
    ("resolved_at", _MS, True),
    ("last_seen", _MS),
    ("updated_at", _MS),
    ("flapping", pa.bool_()),
    ("flap_count", pa.uint32()),
    ("summary", _TEXT),
    ("evidence", _TEXT),
    ("silenced", pa.bool_()),
)  # fmt: skip
#: ``security_scores`` rows as Arrow.
_SCORE_ARROW = _arrow_schema(
    ("agent_id", _TEXT),
    ("tenant_id", _TEXT),
    ("timestamp", _MS),
    ("score", pa.float64()),
    ("delta", pa.float64()),
    ("cause", _TEXT),
    ("first_seen", _MS, True),
)
#: ``commands`` rows as Arrow.
_COMMAND_ARROW = _arrow_schema(
    *((name, _TEXT) for name in ("command_id", "agent_id", "tenant_id", "command", "reason")),
    ("issued_at", _MS),
    ("actor", _TEXT),
    ("score", pa.float64(), True),
    ("task_id", _TEXT, True),
)
#: ``incidents`` rows as Arrow.
_INCIDENT_ARROW = _arrow_schema(
    *((name, _TEXT) for name in ("incident_id", "tenant_id", "rule", "category", "severity")),
    ("agent_ids", pa.list_(_TEXT)),
    ("truncated", pa.bool_()),
    ("first_seen", _MS),
    ("last_seen", _MS),
    ("revision", pa.uint32()),
)
#: ``deadletter`` rows as Arrow.
_DEADLETTER_ARROW = _arrow_schema(
    ("topic", _TEXT),
    ("partition", pa.uint32()),
    ("offset", pa.uint64()),
    ("reason", _TEXT),
    ("key", _TEXT, True),
    ("value_b64", _TEXT),
    ("value_bytes", pa.uint32()),
    ("received_at", _MS),
    ("cluster_id", _TEXT),
)
#: ``agent_registry`` rows as Arrow.
_REGISTRY_ARROW = _arrow_schema(
    *((name, _TEXT) for name in
      ("tenant_id", "agent_id", "name", "agent_type", "owner", "version")),
    ("capabilities", pa.list_(_TEXT)),
    ("max_concurrent_tasks", pa.uint32()),
    ("resources", pa.map_(_TEXT, pa.float64())),
    ("tags", pa.map_(_TEXT, _TEXT)),
    ("endpoint", _TEXT, True),
    ("registered_at", _MS),
    ("actor", _TEXT),
)  # fmt: skip
#: ``tasks`` rows as Arrow (the table's Float32 columns given as Float64: ClickHouse
#: narrows them, as it did the pandas frames' floats).
_TASK_ARROW = _arrow_schema(
    *((name, _TEXT) for name in
      ("task_id", "tenant_id", "agent_id", "task_type", "priority", "status")),
    ("attempt", pa.uint16()),
    ("required_capabilities", pa.list_(_TEXT)),
    ("score", pa.float64(), True),
    ("components", _TEXT),
    ("p_success", pa.float64(), True),
    ("expected_duration_s", pa.float64(), True),
    ("deadline", _MS, True),
    ("assigned_at", _MS),
    ("accepted_at", _MS, True),
    ("finished_at", _MS, True),
    ("duration_s", pa.float64(), True),
    ("sla_met", pa.bool_(), True),
    ("reason", _TEXT),
    ("agent_active_tasks", pa.uint32()),
    ("capacity", pa.uint32()),
    ("assigned_by", _TEXT),
    ("updated_at", _MS),
    ("version", pa.uint64()),
)  # fmt: skip


def agent_row(event: dict) -> dict | None:
    """Row of the ``agents`` projection from an ``agent_events`` row of a ``status_changed``
    (None for other types): the layout of ``AgentRecord.row()``, plus the trigger.

    >>> from agentwatch.lifecycle import AgentRecord, Trigger, transition
    >>> step = transition(AgentRecord.unregistered("a1", "t1"), Trigger.REGISTERED, 1.8e9)
    >>> event = {**step.event, "payload": orjson.dumps(step.event["payload"]).decode()}
    >>> row = agent_row(event)
    >>> AgentRecord.from_row(row) == step.record, row["trigger"]
    (True, 'registered')
    >>> agent_row({**event, "type": "heartbeat_late"}) is None
    True
    """
    if event["type"] != STATUS_CHANGED:
        return None
    payload = orjson.loads(event["payload"])
    until = payload.get("quarantine_until")
    if until is not None:
        _require_range("quarantine_until", float(until), *TIMESTAMP_RANGE)
    _require_range("transitions", int(payload.get("transitions") or 0), 0, _UINT32_MAX)
    return {
        "tenant_id": event["tenant_id"],
        "agent_id": event["agent_id"],
        "state": str(payload["to"]),
        "since": event["timestamp"],
        "previous_state": payload.get("from"),
        "reason": str(payload.get("reason") or ""),
        "actor": event["actor"],
        "trigger": str(payload.get("trigger") or ""),
        "quarantine_until": None if until is None else float(until),
        "transitions": int(payload.get("transitions") or 0),
    }


def registry_row(event: dict) -> dict | None:
    """Row of ``agent_registry`` from an ``agent_events`` row of the ``status_changed``
    that registered an agent (it carries the ``Registration``); None for other rows.

    >>> payload = {"from": None, "to": "registered", "trigger": "registered", "registration":
    ...     {"name": "A-1", "agent_type": "bot", "owner": "team", "tags": {"zone": "eu"}}}
    >>> row = registry_row({"type": "status_changed", "agent_id": "a1", "tenant_id": "t1",
    ...     "actor": "ops-1", "timestamp": 1.8e9, "payload": orjson.dumps(payload).decode()})
    >>> row["name"], row["tags"], row["capabilities"], row["registered_at"]
    ('A-1', {'zone': 'eu'}, [], 1800000000.0)
    """
    if event["type"] != STATUS_CHANGED or '"registration"' not in event["payload"]:
        return None
    payload = orjson.loads(event["payload"])
    card = payload.get("registration")
    if payload.get("trigger") != REGISTERED or not isinstance(card, dict):
        return None
    card = Registration.model_validate(card)
    return {
        "tenant_id": event["tenant_id"],
        "agent_id": event["agent_id"],
        **_fields(card),
        "resources": {k: float(v) for k, v in card.resources.items()},
        "registered_at": event["timestamp"],
        "actor": event["actor"],
    }


@dataclass(frozen=True, slots=True)
class Projection:
    """A table kept from the rows of a topic's table (one row or none per row)."""

    table: str
    row: Callable[[dict], dict | None]
    frame: Callable[[list[dict]], pa.Table]


#: The projections of ``agents.state`` (see the module).
PROJECTIONS = (
    Projection("agents", agent_row, _arrow_frame(_AGENT_ARROW)),
    Projection("agent_registry", registry_row, _arrow_frame(_REGISTRY_ARROW)),
)


#: ``tasks``, from ``task_assigned`` (agents.control) and ``task_changed`` (agents.state).
TASKS = Projection("tasks", task_row, _arrow_frame(_TASK_ARROW))
#: The projections of each lifecycle channel.
CHANNEL_PROJECTIONS = {CONTROL_CHANNEL: (TASKS,), STATE_CHANNEL: (*PROJECTIONS, TASKS)}


def _assignment_score_arrow_type(name: str) -> pa.DataType:
    annotation = AssignmentScore.model_fields[name].annotation
    if name in ("weights", "by_type") or annotation is str:  # (the two as JSON texts)
        return pa.string()
    if name == "timestamp":
        return pa.timestamp("ms", tz="UTC")
    return pa.uint64() if annotation is int else pa.float64()  # (counts: never negative)


#: An ``assignment_scores`` row as Arrow: the table's columns, ClickHouse narrowing the
#: numbers to their columns' types on insert (:func:`assignment_score_row` checked that
#: they fit); times in whole milliseconds (:func:`utc_millis`).
_ASSIGNMENT_SCORE_ARROW = pa.schema(
    [
        pa.field(name, _assignment_score_arrow_type(name), nullable=name == "p_fail")
        for name in AssignmentScore.model_fields
    ]
)


#: ``assignment_scores`` rows (the history and the latest per agent: the very same frame).
_assignment_score_frame = _arrow_frame(_ASSIGNMENT_SCORE_ARROW)


def _same_row(row: dict) -> dict:
    return row


@dataclass(frozen=True, slots=True)
class LoadedTopic:
    """How the loader copies one topic into ClickHouse."""

    #: The table it goes to.
    table: str
    #: One message → one row (raises on a message the table must not hold). None for
    #: ``metric_rows``, whose messages are Arrow batches (``schemas.metric_rows``).
    row: Callable[[bytes], dict] | None = None
    #: Rows → the Arrow table inserted (the table's columns, times as UTC timestamps).
    frame: Callable[[list[dict]], pa.Table] | None = None
    #: A row's empty ``cluster_id`` is filled with the cluster id the loader reads under.
    stamps_cluster_id: bool = False
    #: Tables kept from this topic's rows as well (inserted with them, before the offsets).
    projections: tuple[Projection, ...] = ()
    #: Read only if it exists, never waited for (a renamed topic's old name).
    optional: bool = False
    #: A finding an operator waits for (few rows): inserted after
    #: ``loader_findings_batch_age_s`` rather than ``loader_batch_age_s``.
    finding: bool = False


_event_frame = _arrow_frame(_EVENT_ARROW)

#: Every topic the loader copies (logical name → how); adding an output kind is one
#: entry here (and its table in ``sinks.clickhouse``).
LOADED: dict[str, LoadedTopic] = {
    "metric_rows": LoadedTopic("metrics"),
    "anomalies": LoadedTopic(
        "anomalies",
        anomaly_row,
        _arrow_frame(_ANOMALY_ARROW),
        finding=True,
    ),
    "baselines": LoadedTopic("baselines", baseline_row, _arrow_frame(_BASELINE_ARROW)),
    "threats": LoadedTopic(
        "threats",
        threat_row,
        _arrow_frame(_THREAT_ARROW),
        finding=True,
    ),
    "alerts": LoadedTopic(
        "alerts",
        alert_row,
        _arrow_frame(_ALERT_ARROW),
        finding=True,
    ),
    "security": LoadedTopic(
        "security_scores",
        score_row,
        _arrow_frame(_SCORE_ARROW),
        finding=True,
    ),
    "assignment_scores": LoadedTopic(
        "assignment_scores",
        assignment_score_row,
        _assignment_score_frame,
        projections=(Projection("assignment_scores_latest", _same_row, _assignment_score_frame),),
    ),
    "commands": LoadedTopic("commands", command_row, _arrow_frame(_COMMAND_ARROW)),
    "incidents": LoadedTopic(
        "incidents",
        incident_row,
        _arrow_frame(_INCIDENT_ARROW),
        finding=True,
    ),
    # the lifecycle channels (events, control, state), each checked against its allowlist
    **{
        channel: LoadedTopic(
            "agent_events",
            partial(event_row, channel),
            _event_frame,
            projections=CHANNEL_PROJECTIONS.get(channel, ()),
        )
        for channel in CHANNELS
    },
    "deadletter": LoadedTopic(
        "deadletter",
        deadletter_row,
        _arrow_frame(_DEADLETTER_ARROW),
        stamps_cluster_id=True,
    ),
}
# a renamed topic's old name: read, when it exists, exactly as the new one
LOADED.update(
    {old: dataclasses.replace(LOADED[new], optional=True) for old, new in RENAMED_TOPICS.items()}
)
#: Logical topics the loader copies, and the table of each.
LOADED_TOPICS = tuple(LOADED)
TABLES = {name: loaded.table for name, loaded in LOADED.items()}


# --- helpers of this module ---------------------------------------------------


def _consumer_config(settings: Settings, findings_only: bool = False) -> dict[str, object]:
    """One consumer for every topic: assigned partitions, manual offsets, deep prefetch.

    A prefetch queue deeper than librdkafka's default (``queued.min.messages``)
    keeps messages waiting while the loader parses and inserts: measured on
    Tansu, ~185k instead of ~85k heartbeats/s. A fetch waits for 1 MB (or
    100 ms), so reading at the head of a live log does not cost the broker a
    request per handful of messages; a lane of findings only (a few messages a
    second, :class:`LoaderLanes`) is answered at its first message instead, so
    a threat does not wait up to 100 ms for a megabyte that never comes.
    librdkafka's own log lines go through Python logging (``Settings.kafka_config``).
    """
    return {
        **settings.kafka_config(),
        "group.id": settings.loader_group_id,  # commits only (lag tooling); no subscribe
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "client.id": "agentwatch-loader",
        "fetch.wait.max.ms": 100,
        "fetch.min.bytes": 1 if findings_only else 1024 * 1024,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
        "queued.min.messages": 200_000,
        "reconnect.backoff.ms": 500,
        "reconnect.backoff.max.ms": 5000,
    }


def _show_offset(offset: int) -> str:
    return "beginning" if offset == OFFSET_BEGINNING else str(offset)


def _one_line(what: object) -> str:
    """An exception or text on one line of at most 300 characters, for log lines."""
    text = " ".join(str(what).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _error_summary(exc: Exception) -> str:
    """An error on one line of at most 300 characters, keeping its end too: ClickHouse
    names the error kind last.

    >>> _error_summary(ValueError("Code: 243. " + "x" * 400 + " (NOT_ENOUGH_SPACE)"))[-40:]
    '...xxxxxxxxxxxxxxxxxx (NOT_ENOUGH_SPACE)'
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else f"{text[:220]}...{text[-77:]}"


def refused_for_content(exc: BaseException) -> bool:
    """Whether ClickHouse refused an insert for what it holds (:data:`ROW_ERROR_CODES`),
    read from the error's code (clickhouse-connect takes it from the answer's
    ``X-ClickHouse-Exception-Code``), never from its text.

    >>> from clickhouse_connect.driver.exceptions import DatabaseError
    >>> refused_for_content(DatabaseError("Code: 469. ...", code=469))
    True
    >>> refused_for_content(DatabaseError("Code: 60. ... VIOLATED_CONSTRAINT", code=60))
    False
    >>> refused_for_content(ConnectionError("Code: 469."))
    False
    """
    return isinstance(exc, ClickHouseError) and getattr(exc, "code", None) in ROW_ERROR_CODES


class RowsRefused(Exception):
    """More rows of one batch refused alone than ``loader_max_refused_rows``: the batch
    is kept and retried whole (a systematic refusal, not a bad row)."""

    def __init__(self, table: str, refused: int, limit: int, cause: Exception) -> None:
        super().__init__(
            f"ClickHouse refused {refused} rows of a batch for {table} one by one, more than "
            f"loader_max_refused_rows={limit}: keeping the batch (a schema mismatch?): "
            f"{_error_summary(cause)}"
        )


def _format_counts(counts: dict[str, int]) -> str:
    return ",".join(f"{name}:{count}" for name, count in counts.items())


# --- python -m sinks.loader --------------------------------------------------


def main() -> None:
    """Run the loader (and the audit writer beside it) alone until SIGTERM or SIGINT;
    creates the schema first, then serves an embedded chDB to other processes when
    ``AGENTWATCH_CLICKHOUSE_SERVE_PORT`` is set."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    settings = Settings()
    redact_handlers(logging.getLogger().handlers, settings.secret_values())
    for handler in logging.getLogger().handlers:
        handler.addFilter(OneLineMessages())  # (what agents send cannot break a line)
    if settings.loader_niceness:  # before any thread starts: they inherit it (chDB's too)
        log.info("loader_niceness value=%d", os.nice(settings.loader_niceness))
    client = connect(settings)
    create_schema(client, settings)
    try:  # the API and Grafana read the embedded chDB through this process (sinks/chdb_http.py)
        served = serve_chdb(settings)
    except ValueError as exc:
        log.error("loader_cannot_serve_clickhouse reason=%s", exc)
        client.close()
        raise SystemExit(1) from None
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("loader_stop_requested signal=%s", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    loader = LoaderLanes(settings, client, lambda: connect(settings))
    loader.start()
    audit_client = connect(settings)  # the audit trail is written where the loader runs
    audit = AuditWriter(settings, audit_client)
    audit.start()
    # alert webhooks are delivered where the loader runs (the API's replicas run none)
    webhooks = None
    if settings.alert_webhooks:
        webhooks_client = connect(settings)  # its own connection, as in the API process
        webhooks = WebhookDeliverer(settings, webhooks_client)
        webhooks.start()
    metrics = None
    if settings.loader_metrics_port:
        metrics = serve_metrics(
            lambda: LoaderFigures.of(loader.stats(), running=loader.running),
            settings.loader_metrics_host,
            settings.loader_metrics_port,
            readers=lambda: [r for r in (audit, webhooks) if r is not None],
        )
    log.info("loader_process_started webhooks=%d", len(settings.alert_webhooks))
    while not stop_requested.wait(1.0):
        pass
    if webhooks is not None:
        webhooks.stop()
        webhooks_client.close()
    audit.stop()
    audit_client.close()
    loader.stop()
    if served is not None:
        served.stop()
    client.close()
    if metrics is not None:
        metrics.shutdown()


if __name__ == "__main__":
    main()
