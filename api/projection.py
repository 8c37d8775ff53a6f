"""The API's in-memory view of every agent, kept current from the topics.

An :class:`AgentProjection` reads, on its own consumer and thread (a
:class:`sinks.background.BackgroundReader`, by partition assignment, never
committing), the topics an agent's status is made of, and folds them:

- ``agents.control``, ``agents.state``, ``agents.security`` (low volume: one event per
  registration, command, change of state, health band or score) **from their
  beginning**, into :class:`agentwatch.directory.Directory`: registration, lifecycle
  state, health, security score, quarantine, behaviour cluster (``cluster_changed``)
  and the clusters' descriptions (``cluster_summary``). The projection is *ready* once it has
  read these to the ends they had when it was assigned; from then on the registry
  is complete, and registration and search (which need all of it) answer. A renamed
  topic's old name (``agents.scores``, ``agentwatch.settings.RENAMED_TOPICS``) is read
  the same way as the new one when it exists at the first assignment (an upgraded
  deployment's security scores from before the rename); when it does not, it is not
  looked for again.
- ``agents.metrics`` (30k+ heartbeats/s), ``agents.baselines``,
  ``agents.anomalies``, ``agents.threats`` (and ``agents.assignment_scores``, for the
  listeners only) **from their end**: the latest heartbeat of each agent is kept as
  its raw bytes and Kafka timestamp, read by the message key and parsed only when a
  status asks for it, so a heartbeat costs the API a dict assignment; the latest
  baseline, the latest anomaly and the recent threats are parsed (they are few).

What happened on the high-volume topics before the projection started is in
ClickHouse: the first status request of an agent reads it there once
(:meth:`AgentProjection.seed`, the queries the status always made) and the
projection keeps it; later requests of that agent answer from memory alone, the
newer of the seed and what the topics brought. While the projection is not ready
(the broker is down, or it is still reading), nothing is kept: each status request
reads ClickHouse as before.

A registration the API publishes is applied to the registry at once
(:meth:`AgentProjection.record`), so a duplicate name right after is refused in
this process; the same event read back from the topic changes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaException, TopicPartition

from agentwatch.directory import AgentView, Directory
from agentwatch.settings import RENAMED_TOPICS, Settings
from api.responses import AgentThreat, Anomaly, Baseline, Evidence, LatestMetrics
from schemas.events import CONTROL_CHANNEL, STATE_CHANNEL, refusal
from schemas.models import AnomalyRecord, BaselineRecord, Heartbeat, Threat, ThreatEvidence
from sinks.background import BackgroundReader, Pacer, assigned_consumer

log = logging.getLogger("api.projection")

#: Topics read from their beginning (the registry), and from their end (latest values).
FROM_BEGINNING = (CONTROL_CHANNEL, STATE_CHANNEL, "security")
FROM_END = ("metrics", "baselines", "anomalies", "threats", "assignment_scores")
#: Old names of topics read from their beginning: read as the new name, if they exist.
RENAMED = {old: new for old, new in RENAMED_TOPICS.items() if new in FROM_BEGINNING}
#: Most messages read in one batch, and the longest wait for them (seconds).
BATCH_MESSAGES = 5000
CONSUME_WAIT_S = 0.2
#: How often to look for the topics while they do not all exist (seconds).
TOPIC_RETRY_S = 1.0


@dataclass(slots=True)
class Seed:
    """What ClickHouse held of one agent when its status was first asked for."""

    tenant_id: str | None = None
    metrics: LatestMetrics | None = None
    baseline: Baseline | None = None
    anomaly: Anomaly | None = None
    threats: list[AgentThreat] = field(default_factory=list)
    security_score: float | None = None
    quarantined: bool = False
    lifecycle_state: str | None = None

    @property
    def found(self) -> bool:
        return self.metrics is not None or self.baseline is not None


@dataclass(slots=True)
class Latest:
    """What the topics brought of one agent since the projection started (parsed)."""

    heartbeat: tuple[str, LatestMetrics] | None = None
    baseline: Baseline | None = None
    anomaly: Anomaly | None = None


class AgentProjection(BackgroundReader):
    """The registry and the latest values of every agent (see the module docstring).
    Reads are thread-safe; :meth:`poll_once` is one read-and-fold cycle."""

    name = "projection"

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.directory = Directory()
        self.lock = threading.RLock()
        #: Held by a registration from its check to its record (one at a time per process).
        self.registering = threading.Lock()
        self._consumer = assigned_consumer(settings, "projection")
        self._logical = {settings.topic(n): n for n in (*FROM_BEGINNING, *FROM_END, *RENAMED)}
        self._heartbeats: dict[bytes, tuple[bytes, int]] = {}
        self._baselines: dict[str, Baseline] = {}
        self._anomalies: dict[str, Anomaly] = {}
        self._seeds: dict[str, Seed] = {}
        self._ends: dict[tuple[str, int], int] = {}
        self._complete = threading.Event()
        self._assigned = False
        self._topics_assigned: set[str] = set()
        self._missing: set[str] = set()
        self._next_topic_check = 0.0
        self.messages: dict[str, int] = dict.fromkeys(self._logical.values(), 0)
        self._renamed = {settings.topic(old) for old in RENAMED}
        self.skipped = 0
        self.fold_cpu_s = 0.0  # CPU time of this thread spent folding messages
        self._listeners: list[Callable[[str, dict], None]] = []
        #: Lets requests have the interpreter while a batch is folded (:class:`Pacer`).
        self._pacer = Pacer()

    # --- reading the topics ------------------------------------------------------
    def poll_once(self) -> int:
        """Read one batch and fold it; messages read."""
        if self._closed:
            return 0
        if not self._assigned and (time.monotonic() < self._next_topic_check or not self._assign()):
            return 0
        if self._missing and time.monotonic() >= self._next_topic_check:
            self._add_new_topics()
        messages = self._consumer.consume(BATCH_MESSAGES, CONSUME_WAIT_S)
        started = time.thread_time()
        heartbeats = self._heartbeats
        metrics_topic = self.settings.topic("metrics")
        folded = beats = 0
        pacer = self._pacer
        pacer.restart()
        self.lock.acquire()
        try:
            for index, message in enumerate(messages):
                if not index & 31 and pacer.due():  # requests first: see Pacer
                    self.lock.release()
                    try:
                        pacer.pause()
                    finally:
                        self.lock.acquire()
                if message.error() is not None:
                    log.warning("projection_consume_error error=%r", message.error().str())
                    continue
                topic = message.topic()
                if topic == metrics_topic:  # the hot path: one dict assignment
                    key = message.key()
                    if key:
                        heartbeats[key] = (message.value(), message.timestamp()[1])
                    else:
                        self.skipped += 1
                    beats += 1
                    continue
                name = self._logical[topic]
                self._fold(RENAMED.get(name, name), message)
                self.messages[name] += 1
                folded += 1
                if self._ends:
                    self._reached(topic, message.partition(), message.offset())
        finally:
            self.lock.release()
        self.messages["metrics"] += beats
        self.fold_cpu_s += time.thread_time() - started
        if self._assigned and not self._ends and not self._complete.is_set():
            self._complete.set()
            log.info("projection_ready agents=%d", len(self.directory.views))
        return folded + beats

    def _fold(self, name: str, message: object) -> None:
        try:
            value = orjson.loads(message.value() or b"")
            if name in (CONTROL_CHANNEL, STATE_CHANNEL):
                if refusal(name, str(value.get("type"))) is not None:
                    return  # off-channel: never applied
                self.directory.apply(value)
            elif name == "security":
                self.directory.apply_score(value)
            elif name == "threats":
                self.directory.apply_threat(value)
            elif name == "baselines":
                record = BaselineRecord.model_validate(value)
                self._baselines[record.agent_id] = baseline_of(record)
            elif name == "anomalies":
                record = AnomalyRecord.model_validate(value)
                if record.is_anomaly:
                    self._anomalies[record.agent_id] = anomaly_of(record)
            for listener in self._listeners:
                listener(name, value)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.skipped += 1
            log.debug("projection_message_skipped topic=%s reason=%r", name, str(exc)[:200])

    def _reached(self, topic: str, partition: int, offset: int) -> None:
        end = self._ends.get((topic, partition))
        if end is not None and offset + 1 >= end:
            del self._ends[(topic, partition)]

    def _assign(self) -> bool:
        """Assign every partition of the topics that exist: the registry's from their
        beginning (noting the ends to reach before the projection is ready), the others
        from their end. A topic that does not exist yet holds nothing to catch up on; it
        is added (from its beginning) when it appears (:meth:`_add_new_topics`)."""
        self._next_topic_check = time.monotonic() + TOPIC_RETRY_S
        try:
            metadata = self._consumer.list_topics(
                timeout=self.settings.api_projection_metadata_timeout_s
            )
        except KafkaException as exc:
            log.warning("projection_broker_unreachable error=%r", str(exc)[:200])
            return False
        assignment, ends = self._partitions(metadata, initial=True)
        self._ends = ends
        self._consumer.assign(assignment)
        self._assigned = True
        log.info(
            "projection_assigned partitions=%d to_catch_up=%d missing_topics=%s",
            len(assignment),
            len(ends),
            ",".join(sorted(self._missing)) or "-",
        )
        return True

    def _partitions(
        self, metadata: object, initial: bool
    ) -> tuple[list[TopicPartition], dict[tuple[str, int], int]]:
        """The partitions to assign of the topics not assigned yet, and the registry's
        ends to reach (on the first assignment only)."""
        assignment, ends = [], {}
        missing = set()
        for topic_name in self._logical:
            if topic_name in self._topics_assigned:
                continue
            topic = metadata.topics.get(topic_name)
            if topic is None or topic.error is not None or not topic.partitions:
                if topic_name not in self._renamed:  # an old name absent at start: none
                    missing.add(topic_name)
                continue
            name = self._logical[topic_name]
            from_beginning = not initial or RENAMED.get(name, name) in FROM_BEGINNING
            for partition in sorted(topic.partitions):
                start = OFFSET_BEGINNING if from_beginning else OFFSET_END
                if initial:
                    low, high = self._consumer.get_watermark_offsets(
                        TopicPartition(topic_name, partition), timeout=5.0
                    )
                    if from_beginning and high > low:
                        ends[(topic_name, partition)] = high
                    elif not from_beginning and high >= 0:
                        # the end as of now: the logical end would be looked up at the
                        # first fetch, and a message sent in between never read
                        start = high
                assignment.append(TopicPartition(topic_name, partition, start))
            self._topics_assigned.add(topic_name)
        self._missing = missing
        return assignment, ends

    def _add_new_topics(self) -> None:
        """Assign the topics that appeared since (read from their beginning: all is new)."""
        self._next_topic_check = time.monotonic() + TOPIC_RETRY_S
        try:
            metadata = self._consumer.list_topics(
                timeout=self.settings.api_projection_metadata_timeout_s
            )
        except KafkaException:
            return
        assignment, _ = self._partitions(metadata, initial=False)
        if assignment:
            self._consumer.incremental_assign(assignment)
            log.info("projection_topics_added partitions=%d", len(assignment))

    def _ready(self) -> bool:
        return self._assigned

    def _recover(self) -> None:
        self._assigned = False
        self._topics_assigned.clear()

    def _release(self) -> None:
        self._consumer.close()
        log.info("projection_stopped messages=%s", self.messages)

    # --- asking it -----------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Whether the registry's topics have been read to their ends (the registry is
        complete)."""
        return self._complete.is_set()

    def wait_ready(self, timeout_s: float) -> bool:
        return self._complete.wait(timeout_s)

    def listen(self, listener: Callable[[str, dict], None]) -> None:
        """Call ``listener(topic, value)`` with every message of the topics but metrics,
        parsed, after the registry folded it, in the projection's thread and under its
        lock (the task assigner, :mod:`api.assign`, folds its fleet so). Add listeners
        before :meth:`start`."""
        self._listeners.append(listener)

    def record(self, event: Mapping) -> None:
        """Apply an event this process published (a registration), before it comes back
        from the topic."""
        with self.lock:
            self.directory.apply(event)

    @contextmanager
    def locked(self) -> Iterator[Directory]:
        """The registry, held against every change for the ``with`` block."""
        with self.lock:
            yield self.directory

    def view(self, agent_id: str) -> AgentView | None:
        """The agent's view (read without the lock: a dict lookup is atomic; a view being
        folded at that moment may show some fields before and some after the event)."""
        return self.directory.views.get(agent_id)

    def views(self, tenant_id: str | None = None) -> list[AgentView]:
        """Every agent's view (or every one of a tenant's), listed under the lock (then
        read without it, as :meth:`view`)."""
        with self.lock:
            if tenant_id is None:
                return list(self.directory.views.values())
            return list(self.directory.by_tenant.get(tenant_id, {}).values())

    def heartbeat_at(self, agent_id: str) -> float | None:
        """Broker time (epoch seconds) of the agent's latest heartbeat read since start."""
        hit = self._heartbeats.get(agent_id.encode())
        return None if hit is None else hit[1] / 1000

    def latest(self, agent_id: str) -> Latest:
        """What the topics brought of the agent since start; the heartbeat parsed now."""
        hit = self._heartbeats.get(agent_id.encode())
        heartbeat = None
        if hit is not None:
            try:
                heartbeat = metrics_of(Heartbeat.model_validate_json(hit[0]))
            except ValueError:
                heartbeat = None  # the dataflow dead-letters it; the status ignores it
        return Latest(heartbeat, self._baselines.get(agent_id), self._anomalies.get(agent_id))

    def seed(self, agent_id: str) -> Seed | None:
        """The agent's ClickHouse seed, if one is kept."""
        return self._seeds.get(agent_id)

    def keep_seed(self, agent_id: str, seed: Seed) -> None:
        """Keep what ClickHouse held of an agent (only while ready: otherwise the topics
        are not followed, and a kept seed would grow stale)."""
        if self.ready and (seed.found or agent_id in self.directory.views):
            self._seeds[agent_id] = seed

    def stats(self) -> dict[str, object]:
        read = sum(self.messages.values())
        return {
            "ready": self.ready,
            "agents": len(self.directory.views),
            "heartbeats_kept": len(self._heartbeats),
            "messages": dict(self.messages),
            "fold_cpu_s": round(self.fold_cpu_s, 3),
            "cpu_us_per_message": round(self.fold_cpu_s / read * 1e6, 2) if read else None,
        }


def metrics_of(heartbeat: Heartbeat) -> tuple[str, LatestMetrics]:
    """A heartbeat as the status shows it, with its tenant."""
    fields = heartbeat.model_dump()
    tenant_id = fields.pop("tenant_id")
    fields.pop("agent_id")
    fields["timestamp"] = datetime.fromtimestamp(heartbeat.timestamp, UTC)
    return tenant_id, LatestMetrics(**fields)


def baseline_of(record: BaselineRecord) -> Baseline:
    return Baseline(
        timestamp=datetime.fromtimestamp(record.timestamp, UTC),
        heartbeats=record.heartbeats,
        warmed_up=record.warmed_up,
        mean=record.mean,
        std=record.std,
    )


def anomaly_of(record: AnomalyRecord) -> Anomaly:
    return Anomaly(
        timestamp=datetime.fromtimestamp(record.timestamp, UTC),
        score=record.score,
        threshold=record.threshold,
        is_anomaly=record.is_anomaly,
        detector=record.detector,
        top_feature=record.reasons[0].feature if record.reasons else "",
        reasons=record.reasons,
        episode_start=None
        if record.episode_start is None
        else datetime.fromtimestamp(record.episode_start, UTC),
        episode_end=None
        if record.episode_end is None
        else datetime.fromtimestamp(record.episode_end, UTC),
    )


def threat_of(record: Mapping) -> AgentThreat:
    """A threat record (``schemas.models.Threat`` dict) as the status shows it."""
    threat = Threat.model_validate(record)
    evidence: ThreatEvidence = threat.evidence
    return AgentThreat(
        rule=threat.rule,
        category=threat.category,
        severity=threat.severity,
        first_seen=datetime.fromtimestamp(threat.first_seen, UTC),
        last_seen=datetime.fromtimestamp(threat.last_seen, UTC),
        evidence=Evidence(
            condition=evidence.condition,
            values=evidence.values,
            baseline=evidence.baseline,
            window_start=datetime.fromtimestamp(evidence.window_start, UTC),
            window_end=datetime.fromtimestamp(evidence.window_end, UTC),
            excerpts=evidence.excerpts,
        ),
    )
