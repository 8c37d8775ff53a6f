"""A Bytewax source that reads Kafka partitions in batches, one item per batch.

Bytewax's own ``KafkaSource`` emits one item per message; every item then
costs a trip through the engine. This source emits a :class:`RawBatch` of up
to ``batch_size`` messages of one partition, so the steps after it work on
arrays. Partitions are assigned, not joined through a consumer group, and the
position of each partition is part of Bytewax's recovery snapshots.

The embedded broker keeps its log in memory, so after a broker restart the
offsets a snapshot remembers may belong to a log that is gone. The snapshot
holds the cluster id with the offset; on resume against another cluster id,
or an offset past the end of the partition, reading starts again from the
beginning of the new log (per-agent state is kept) and a warning says so.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

log = logging.getLogger(__name__)

#: How long a partition waits before polling again after an empty read.
IDLE_WAIT = timedelta(milliseconds=20)

#: Set to end every partition of this process at its next read (a clean stop:
#: Bytewax then closes the epoch, snapshots, and the run returns).
STOP = threading.Event()


@dataclass(slots=True)
class RawBatch:
    """Messages read from one partition, in offset order; ``cluster_id`` names the log
    they were read from (offsets restart at 0 in a new log of the embedded broker)."""

    topic: str
    partition: int
    offsets: list[int]
    keys: list[bytes | None]
    values: list[bytes | None]
    cluster_id: str = ""

    def __len__(self) -> int:
        return len(self.offsets)

    def only(self, positions: list[int]) -> RawBatch:
        """The batch of the messages at ``positions`` (in that order).

        >>> RawBatch("t", 0, [7, 8, 9], [None, b"k", None], [b"a", b"b", b"c"]).only([1]).offsets
        [8]
        """
        return RawBatch(
            self.topic,
            self.partition,
            [self.offsets[i] for i in positions],
            [self.keys[i] for i in positions],
            [self.values[i] for i in positions],
            self.cluster_id,
        )


@dataclass(frozen=True, slots=True)
class PartitionPosition:
    """Where to resume a partition: the next offset of ``topic`` in the log of ``cluster_id``."""

    cluster_id: str
    topic: str
    next_offset: int


class _PartitionReader(StatefulSourcePartition[RawBatch, PartitionPosition]):
    def __init__(
        self,
        config: dict,
        topic: str,
        partition: int,
        resume: PartitionPosition | None,
        batch_size: int,
        commit_interval_s: float,
    ):
        self._consumer = Consumer(config)
        self._topic = topic
        self._partition = partition
        self._batch_size = batch_size
        self._commit_interval_s = commit_interval_s
        self._last_commit = 0.0
        self._committed: int | None = None
        self._awake: datetime | None = None
        self._read_any = False
        self._cluster_id = self._consumer.list_topics(topic, timeout=10).cluster_id
        self._next = self._start_offset(resume)
        self._consumer.assign([TopicPartition(topic, partition, self._next)])

    def _start_offset(self, resume: PartitionPosition | None) -> int:
        if resume is None:
            return OFFSET_BEGINNING
        if resume.cluster_id != self._cluster_id or resume.topic != self._topic:
            log.warning(
                "source_log_replaced topic=%s partition=%d snapshot_topic=%s "
                "snapshot_cluster=%s broker_cluster=%s snapshot_offset=%d "
                "action=read_from_start note=per-agent state is kept",
                self._topic, self._partition, resume.topic, resume.cluster_id,
                self._cluster_id, resume.next_offset,
            )  # fmt: skip
            return OFFSET_BEGINNING
        # An offset past the end of a log that was replaced under the same cluster id
        # (a topic deleted and created again) is out of range: auto.offset.reset=earliest
        # then reads the new log from its start. (Tansu's ListOffsets answers the start of
        # the last record batch + 1, so comparing with its high watermark would be wrong.)
        return resume.next_offset

    def next_batch(self) -> list[RawBatch]:
        if STOP.is_set():
            raise StopIteration
        messages = self._consumer.consume(self._batch_size, timeout=0)
        errors = list(map(Message.error, messages))
        if errors.count(None) != len(errors):
            messages = [m for m in messages if self._readable(m)]
        offsets = list(map(Message.offset, messages))
        keys = list(map(Message.key, messages))
        values = list(map(Message.value, messages))
        if offsets:
            self._next = offsets[-1] + 1
        self._commit_for_monitoring()
        if not offsets:
            self._awake = datetime.now(UTC) + IDLE_WAIT
            return []
        self._awake = None
        if not self._read_any:  # (when this run's reading began: bench/throughput.py)
            self._read_any = True
            log.info("source_first_read topic=%s partition=%d offset=%d at=%.3f",
                     self._topic, self._partition, offsets[0], time.time())  # fmt: skip
        return [RawBatch(self._topic, self._partition, offsets, keys, values, self._cluster_id)]

    def _readable(self, message: Message) -> bool:
        """Whether a consumed message carries data; errors other than EOF are logged."""
        error = message.error()
        if error is None:
            return True
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("source_error topic=%s partition=%d error=%s",
                        self._topic, self._partition, error)  # fmt: skip
        return False

    def _commit_for_monitoring(self) -> None:
        """Tell the consumer group how far we read, so lag shows in standard tools."""
        now = time.monotonic()
        if self._next in (self._committed, OFFSET_BEGINNING):
            return
        if now - self._last_commit < self._commit_interval_s:
            return
        self._last_commit = now
        self._committed = self._next
        self._consumer.commit(
            offsets=[TopicPartition(self._topic, self._partition, self._next)], asynchronous=True
        )

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> PartitionPosition:
        # A partition not read yet resumes from its beginning (OFFSET_BEGINNING, recorded
        # as is: asking the broker for its low watermark here blocked the worker for a
        # round trip per empty partition at every snapshot, 60 ms each on Tansu).
        return PartitionPosition(self._cluster_id, self._topic, self._next)

    def close(self) -> None:
        self._consumer.close()


class KafkaBatchSource(FixedPartitionedSource[RawBatch, PartitionPosition]):
    """Every partition of ``topic``, read in batches of up to ``batch_size`` messages;
    ``client_config`` adds librdkafka settings (the SASL login of the cluster profile)."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        group_id: str,
        batch_size: int = 5000,
        commit_interval_s: float = 1.0,
        client_config: dict[str, object] | None = None,
        fetch_wait_ms: int = 100,
    ):
        self._topic = topic
        self._batch_size = batch_size
        self._commit_interval_s = commit_interval_s
        self._config = {
            **(client_config or {}),
            "bootstrap.servers": bootstrap_servers,
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "earliest",
            # A fetch waits for 1 MB (or fetch_wait_ms): reading at the head of a live log,
            # fetches of a few messages each cost the broker more CPU than the messages
            # (measured on Tansu: its CPU per million heartbeats went from 4-9 s to under 4 s).
            "fetch.min.bytes": 1024 * 1024,
            "fetch.wait.max.ms": fetch_wait_ms,
            "queued.min.messages": 100_000,
        }

    def list_parts(self) -> list[str]:
        consumer = Consumer(self._config)
        try:
            metadata = consumer.list_topics(self._topic, timeout=10)
        finally:
            consumer.close()
        topic = metadata.topics.get(self._topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise RuntimeError(
                f"topic {self._topic!r} not found at the broker; create the topics first "
                "(`agentwatch up` does it)"
            )
        return [str(p) for p in sorted(topic.partitions)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: PartitionPosition | None
    ) -> _PartitionReader:
        return _PartitionReader(
            self._config, self._topic, int(for_part), resume_state, self._batch_size,
            self._commit_interval_s,
        )  # fmt: skip
