"""Ask the Kafka broker, briefly, whether it answers and how far the dataflow is behind.

The health endpoint and ``/metrics`` must answer within about a second even
when the broker is down, so one probe has a total time budget
(``api_broker_timeout_s``) and its result is reused for
``api_health_cache_s``; concurrent callers share one probe. The Kafka clients
are created once and kept: librdkafka then reconnects in the background.

Dataflow lag is the sum, over the partitions of the heartbeat topic, of the
high watermark minus the offset the dataflow committed to its consumer group
(it commits there for monitoring only). A partition the group never committed
counts as fully unread (high minus low watermark); if the group committed
nothing at all, the lag is unknown rather than a guess. The high watermark is
the one a fetch reports (see :func:`_log_ends` for why not ListOffsets alone).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, TopicMetadata

from agentwatch.settings import Settings

log = logging.getLogger(__name__)

#: librdkafka logs every failed reconnect at level 3 (error); the health report
#: already says the broker is unreachable, so only critical client logs pass.
_CLIENT_LOG_LEVEL = 2


@dataclass(frozen=True, slots=True)
class BrokerProbeResult:
    """What one probe found."""

    reachable: bool
    cluster_id: str | None
    error: str | None
    dataflow_lag: int | None
    dataflow_detail: str
    checked_at: float  # epoch seconds
    #: Why the lag is unknown (None when it is known): what a reader acts on.
    dataflow_lag_reason: str | None = None


class BrokerProbe:
    """Cached, time-boxed questions to the broker (thread-safe)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topic("metrics")
        self._lock = threading.Lock()
        self._last: BrokerProbeResult | None = None
        self._last_monotonic = 0.0
        self._admin: AdminClient | None = None

    def result(self) -> BrokerProbeResult:
        """The latest probe result, probing again if it is older than the cache time."""
        with self._lock:
            age = time.monotonic() - self._last_monotonic
            if self._last is None or age >= self.settings.api_health_cache_s:
                self._last = self._probe()
                self._last_monotonic = time.monotonic()
            return self._last

    def close(self) -> None:
        """Release the Kafka admin client."""
        with self._lock:
            self._admin = None

    def _probe(self) -> BrokerProbeResult:
        deadline = time.monotonic() + self.settings.api_broker_timeout_s
        checked_at = time.time()
        try:
            metadata = self._admin_client().list_topics(timeout=_remaining(deadline))
        except KafkaException as exc:
            error = f"no answer from {self.settings.bootstrap_servers}: {_kafka_error(exc)}"
            return BrokerProbeResult(
                False, None, error, None, "unknown: the broker is unreachable", checked_at,
                f"the broker is unreachable ({error})",
            )  # fmt: skip
        lag, detail = self._dataflow_lag(metadata.topics.get(self.topic), deadline)
        reason = None if lag is not None else detail.removeprefix("unknown: ")
        return BrokerProbeResult(
            True, metadata.cluster_id, None, lag, detail, checked_at, reason
        )  # fmt: skip

    def _dataflow_lag(
        self, topic_metadata: TopicMetadata | None, deadline: float
    ) -> tuple[int | None, str]:
        group = self.settings.dataflow_group_id
        if topic_metadata is None or topic_metadata.error is not None:
            return None, f"unknown: topic {self.topic} does not exist yet"
        partitions = [TopicPartition(self.topic, p) for p in sorted(topic_metadata.partitions)]
        # A fresh consumer per probe: its cached watermarks then come from this probe's fetches.
        consumer = Consumer(
            {
                **self._client_config(),
                "group.id": group,
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
                "fetch.max.bytes": 1024 * 1024,
                "queued.max.messages.kbytes": 1024,
            }
        )
        try:
            committed = consumer.committed(partitions, timeout=_remaining(deadline))
            if all(tp.offset < 0 for tp in committed):
                return (
                    None,
                    f"unknown: consumer group {group} has committed no offsets on {self.topic}",
                )
            ends = _log_ends(consumer, partitions, deadline)
        except KafkaException as exc:
            return None, (
                f"unknown: the broker did not answer within {self._budget()} ({_kafka_error(exc)})"
            )
        finally:
            consumer.close()
        if ends is None:
            return None, (
                "unknown: the broker did not report the end of every partition of "
                f"{self.topic} within {self._budget()}"
            )
        lag = 0
        for tp in committed:
            low, high = ends[tp.partition]
            read_up_to = tp.offset if tp.offset >= 0 else low
            lag += max(0, high - read_up_to)
        return lag, (
            f"high watermark minus the offset committed by group {group}, "
            f"summed over {len(partitions)} partitions of {self.topic}"
        )

    def _budget(self) -> str:
        """The probe's time budget, as a reason names it."""
        return f"{self.settings.api_broker_timeout_s:g} s (AGENTWATCH_API_BROKER_TIMEOUT_S)"

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient(self._client_config())
        return self._admin

    def _client_config(self) -> dict[str, object]:
        return {
            **self.settings.kafka_config(),
            "client.id": "agentwatch-api-health",
            "log_level": _CLIENT_LOG_LEVEL,
        }


def _log_ends(
    consumer: Consumer, partitions: list[TopicPartition], deadline: float
) -> dict[int, tuple[int, int]] | None:
    """``partition → (low, high)`` watermarks, or None if the broker is too slow to say.

    The embedded broker (Tansu) answers ListOffsets with the start of the last
    record batch plus one, short of the true end, while its fetch responses
    carry the true high watermark. So: ask ListOffsets, then fetch from just
    before that answer (one batch) and read the watermark the fetch reported.
    """
    estimates = {
        tp.partition: consumer.get_watermark_offsets(tp, timeout=_remaining(deadline), cached=False)
        for tp in partitions
    }
    if any(estimate is None for estimate in estimates.values()):
        return None  # the client's way of saying it timed out
    starts = []
    for tp in partitions:
        low, high = estimates[tp.partition]
        starts.append(TopicPartition(tp.topic, tp.partition, max(low, high - 1)))
    consumer.assign(starts)
    ends: dict[int, tuple[int, int]] = {}
    while True:
        for tp in partitions:
            if tp.partition not in ends:
                _, fetched_high = consumer.get_watermark_offsets(tp, cached=True)
                if fetched_high >= 0:  # negative until a fetch response arrived
                    low, high = estimates[tp.partition]
                    ends[tp.partition] = (low, max(high, fetched_high))
        if len(ends) == len(partitions):
            return ends
        if time.monotonic() >= deadline:
            return None
        consumer.consume(1, timeout=min(0.01, _remaining(deadline)))  # a short wait


def _remaining(deadline: float) -> float:
    """Seconds left until ``deadline``, never less than a few milliseconds."""
    return max(0.005, deadline - time.monotonic())


def _kafka_error(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else exc
    return error.str() if hasattr(error, "str") else str(error)
