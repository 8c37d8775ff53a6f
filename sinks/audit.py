"""The audit writer: ``agents.control`` and ``agents.state`` → the chained ``audit_log``.

An :class:`AuditWriter` reads the operators' commands and the dataflow's
derived facts by partition assignment, on its own consumer and thread (like
the webhook deliverer), turns each into an :class:`agentwatch.audit.AuditEntry`
and appends it to its tenant's hash chain in the ClickHouse table
``audit_log``. The trail is written from the log, not beside it: the API
never writes an audit row itself, so what the trail says is what the system
was told. Where the command came from (the API caller's address) travels in
the message's ``origin`` header, which the API sets.

The table is its own record of progress: each row names the message it was
read from (``cluster/topic/partition/offset``), and on start the writer seeks
past the last message of each partition it has written (under the broker's
current cluster id; a new log is read from its start) and resumes every
tenant's chain from its last row. A crash between reading and writing re-reads
and writes those events once; a crash after writing skips them. A status change
the dataflow publishes again after its own restart (it replays its input since its
last snapshot: the same change, with the same transition number, at a new offset) is
skipped: each agent's last number audited is kept (:class:`agentwatch.audit.Replays`,
resumed from the table). The table is a
plain ``MergeTree`` (nothing merges away) and has no TTL: the audit trail is
never shortened.

    writer = AuditWriter(settings, connect(settings))
    writer.start()
    ...
    writer.stop()
"""

from __future__ import annotations

import logging
import time

import orjson
import pyarrow as pa
from clickhouse_connect.driver.client import Client
from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from agentwatch.audit import AuditChain, AuditRow, Replays, entry_of
from agentwatch.settings import Settings
from schemas.events import CONTROL_CHANNEL, STATE_CHANNEL, refusal
from sinks.background import BackgroundReader, assigned_consumer

log = logging.getLogger("sinks.audit")

#: The channels whose events are audited: every change the system is told of.
AUDITED_CHANNELS = (CONTROL_CHANNEL, STATE_CHANNEL)
#: Most events read in one batch, and the longest wait for them (seconds).
BATCH_MESSAGES = 1000
CONSUME_WAIT_S = 0.2
#: How often to look for the topics while they do not exist (seconds).
TOPIC_RETRY_S = 1.0
#: The Kafka header that carries where a command came from.
ORIGIN_HEADER = "origin"


#: Columns the writer fills: the row's fields, with ``at`` as epoch milliseconds
#: (``at_ms``, exactly what the hash covers; the table derives ``at`` from it).
TABLE_COLUMNS = tuple("at_ms" if c == "at" else c for c in AuditRow.columns())


#: The rows as Arrow, as :func:`table_of` makes them (ClickHouse reads Arrow as it is: no
#: per-row encoding in Python, 13 against 27 µs a row with the client's row encoding).
TABLE_ARROW = pa.schema(
    [
        pa.field(c, pa.uint64() if c == "seq" else pa.int64() if c == "at_ms" else pa.string(),
                 nullable=False)
        for c in TABLE_COLUMNS
    ]
)  # fmt: skip


def table_of(rows: list[AuditRow]) -> pa.Table:
    """The rows as one Arrow table of :data:`TABLE_COLUMNS` (``at`` as whole milliseconds,
    exactly what the hash covers)."""
    columns = {c: [getattr(row, c) for row in rows] for c in AuditRow.columns() if c != "at"}
    columns["at_ms"] = [round(row.at * 1000) for row in rows]
    return pa.Table.from_pydict(columns, schema=TABLE_ARROW)


def read_rows(
    client: Client,
    database: str,
    tenant_id: str | None = None,
    last_per_tenant: bool = False,
) -> list[AuditRow]:
    """Stored rows as :class:`AuditRow` (every tenant's, or one's), in chain order; with
    ``last_per_tenant`` only the last row of each chain."""
    columns = [f"{c}_ms / 1000" if c == "at" else c for c in AuditRow.columns()]
    where = "WHERE tenant_id = {tenant:String}" if tenant_id is not None else ""
    if last_per_tenant:
        query = (
            f"SELECT {', '.join(f'argMax({c}, seq)' for c in columns)} "
            f"FROM {database}.audit_log {where} GROUP BY tenant_id"
        )
    else:
        query = (
            f"SELECT {', '.join(columns)} FROM {database}.audit_log {where} ORDER BY tenant_id, seq"
        )
    result = client.query(query, parameters={"tenant": tenant_id})
    return [AuditRow(*values) for values in result.result_rows]


def last_transitions(client: Client, database: str, limit: int) -> list[tuple[str, str, int]]:
    """``(tenant, agent, last transition number)`` of the ``limit`` agents whose status
    changed last in the stored trail (by the change's time), least recent first: where a
    restarted writer's :class:`~agentwatch.audit.Replays` starts."""
    result = client.query(
        "SELECT tenant_id, target, max(JSONExtractUInt(after, 'transitions')) AS number "
        f"FROM {database}.audit_log "
        "WHERE action = 'status_changed' AND JSONHas(after, 'transitions') "
        "GROUP BY tenant_id, target ORDER BY max(at_ms) DESC LIMIT {limit:UInt64}",
        parameters={"limit": limit},
    )
    return [(t, a, int(n)) for t, a, n in reversed(result.result_rows)]


class AuditWriter(BackgroundReader):
    """Appends the audited channels' events to ``audit_log`` (see the module docstring).

    ``poll_once`` is one read-and-write cycle (tests drive it directly);
    ``start`` runs it in a daemon thread until ``stop``.
    """

    name = "audit"

    def __init__(self, settings: Settings, client: Client) -> None:
        super().__init__()
        self._client = client
        self._database = settings.clickhouse_database
        self._channels = {settings.topic(name): name for name in AUDITED_CHANNELS}
        self._consumer = assigned_consumer(settings, "audit")
        self._chain = AuditChain()
        self._replays = Replays(settings.audit_replay_agents)
        self._cluster_id = ""
        self._assigned = False
        self._next_topic_check = 0.0
        self.written = 0

    def poll_once(self) -> int:
        """Read one batch of events and append them to the trail; rows written."""
        if self._closed:
            return 0
        if not self._assigned and (time.monotonic() < self._next_topic_check or not self._assign()):
            return 0
        rows = []
        for message in self._consumer.consume(BATCH_MESSAGES, CONSUME_WAIT_S):
            if message.error() is not None:
                log.warning("audit_consume_error error=%r", message.error().str())
                continue
            row = self._row(message)
            if row is not None:
                rows.append(row)
        if rows:
            self._client.insert_arrow("audit_log", table_of(rows), database=self._database)
            self.written += len(rows)
        return len(rows)

    def _row(self, message: object) -> AuditRow | None:
        """The chained row of one message; None (logged) for what is not an audited event.

        Events the dataflow refuses (a type off its channel) are not audited: they
        changed nothing, and the dead-letter table records them.
        """
        topic = message.topic()
        source = f"{self._cluster_id}/{topic}/{message.partition()}/{message.offset()}"
        try:
            event = orjson.loads(message.value() or b"")
            reason = refusal(self._channels[topic], str(event["type"]))
            if reason is not None:
                raise ValueError(reason)
            if self._replays.replayed(event):
                log.info("audit_replay_skipped source=%s agent=%s transitions=%s", source,
                         event["agent_id"], event["payload"]["transitions"])  # fmt: skip
                return None
            headers = dict(message.headers() or [])
            origin = (headers.get(ORIGIN_HEADER) or b"").decode("utf-8", "replace")[:128]
            entry = entry_of(event, source, origin)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("audit_event_skipped source=%s reason=%r", source, str(exc)[:200])
            return None
        return self._chain.append(entry)

    def _assign(self) -> bool:
        """Assign every partition of the audited topics after the last written message,
        and resume each tenant's chain from its last row."""
        self._next_topic_check = time.monotonic() + TOPIC_RETRY_S
        try:
            metadata = self._consumer.list_topics(timeout=1.0)
        except KafkaException as exc:
            log.warning("audit_broker_unreachable error=%r", str(exc)[:200])
            return False
        topics = {name: metadata.topics.get(name) for name in self._channels}
        if any(t is None or t.error is not None or not t.partitions for t in topics.values()):
            return False
        self._cluster_id = metadata.cluster_id or ""
        written = {
            (topic, int(partition)): int(offset)
            for topic, partition, offset in self._client.query(
                "SELECT parts[2], parts[3], max(toUInt64(parts[4])) FROM ("
                f"  SELECT splitByChar('/', source) AS parts FROM {self._database}.audit_log"
                "   WHERE startsWith(source, {prefix:String})"
                ") GROUP BY parts[2], parts[3]",
                parameters={"prefix": f"{self._cluster_id}/"},
            ).result_rows
        }
        # From the table alone: after a failed insert, what the lost batch left in memory
        # (a new tenant's chain head, agents' last status changes) must go too, or its
        # events are skipped as replays and the chain has a gap (tests/test_audit.py).
        self._chain = AuditChain()
        self._replays = Replays(self._replays.limit)
        self._chain.resume(read_rows(self._client, self._database, last_per_tenant=True))
        self._replays.resume(last_transitions(self._client, self._database, self._replays.limit))
        assignment = []
        for name, topic in topics.items():
            for partition in sorted(topic.partitions):
                last = written.get((name, partition))
                start = OFFSET_BEGINNING if last is None else last + 1
                assignment.append(TopicPartition(name, partition, start))
        self._consumer.assign(assignment)
        self._assigned = True
        log.info(
            "audit_assigned topics=%s partitions=%d tenants=%d",
            ",".join(self._channels), len(assignment), len(self._chain.heads),
        )  # fmt: skip
        return True

    def _ready(self) -> bool:
        return self._assigned

    def _recover(self) -> None:
        self._assigned = False  # re-seek from what the table holds, resume the chains

    def _release(self) -> None:
        self._consumer.close()
        log.info("audit_stopped written=%d", self.written)
