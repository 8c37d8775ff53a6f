"""Webhook delivery of alerts: ``agents.alerts`` → HTTP POST to each configured URL.

A :class:`WebhookDeliverer` reads ``agents.alerts`` by partition assignment
(like the loader, on its own consumer and thread, so a slow receiver never
holds up the loader) and POSTs every alert event that
:func:`agentwatch.alerts.should_notify` passes (firing, or resolved after
firing, and not silenced) to every URL of ``alert_webhooks``: a URL written
``slack:https://…`` gets :func:`agentwatch.alerts.slack_payload`, any other
:func:`agentwatch.alerts.generic_payload`.

A failed POST (no answer, or a status other than 2xx) is retried
``webhook_retry_attempts`` times after the delays of
:func:`agentwatch.alerts.backoff_delays` (``webhook_retry_base_s`` doubling up
to ``webhook_retry_max_s``); after the last it is logged and counted as
dropped. Offsets live in the ClickHouse table ``webhook_offsets``, written
after each batch has been delivered: a restart resumes after the last
delivered batch (a crash mid-batch may deliver that batch's alerts again; a
stop request mid-retry leaves the batch for the next start).

    deliverer = WebhookDeliverer(settings, connect(settings))
    deliverer.start()
    ...
    deliverer.stop()
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import httpx
from clickhouse_connect.driver.client import Client
from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from agentwatch.alerts import backoff_delays, generic_payload, should_notify, slack_payload
from agentwatch.secrets import SLACK_PREFIX, SecretUrl, redact
from agentwatch.settings import Settings
from schemas.models import Alert
from sinks.background import BackgroundReader, assigned_consumer

log = logging.getLogger("sinks.webhooks")

#: Most alert events read in one batch, and the longest wait for them (seconds).
BATCH_MESSAGES = 100
CONSUME_WAIT_S = 0.2
#: How often to look for the alerts topic while it does not exist (seconds).
TOPIC_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class Webhook:
    """One delivery target: where, in which layout, and how logs name it.

    The URL is a credential (a Slack webhook URL is all it takes to post to a
    channel): logs and errors show ``label`` (its position and host), never ``url``.
    """

    url: str = field(repr=False)
    slack: bool
    label: str

    @classmethod
    def parse(cls, secret: SecretUrl, index: int = 0) -> Webhook:
        """``slack:https://…`` → a Slack target; anything else → a generic one.

        >>> Webhook.parse(SecretUrl("slack:https://hooks.example/T1"))
        Webhook(slack=True, label='#0 slack:https://hooks.example/***')
        >>> Webhook.parse(SecretUrl("http://127.0.0.1:9000/alerts"), 1).url
        'http://127.0.0.1:9000/alerts'
        """
        text, label = secret.get_secret_value(), secret.label(index)
        if text.startswith(SLACK_PREFIX):
            return cls(text.removeprefix(SLACK_PREFIX), True, label)
        return cls(text, False, label)

    def payload(self, alert: dict) -> dict:
        """The body posted for an ``Alert`` dict."""
        return slack_payload(alert) if self.slack else generic_payload(alert)


@dataclass
class WebhookStats:
    """What the deliverer has done since it started."""

    alerts_read: int = 0
    skipped_invalid: int = 0
    delivered: int = 0
    retries: int = 0
    dropped: int = 0


@dataclass
class _Partitions:
    assigned: dict[int, int] = field(default_factory=dict)  # partition → next offset


class WebhookDeliverer(BackgroundReader):
    """Delivers alert events to the configured webhooks (see the module's docstring).

    ``poll_once`` is one read-and-deliver cycle (tests drive it directly);
    ``start`` runs it in a daemon thread until ``stop`` (a retry in progress is then
    abandoned: its batch is delivered on the next start).
    """

    name = "webhooks"

    def __init__(self, settings: Settings, client: Client) -> None:
        super().__init__()
        self._settings = settings
        self._client = client
        self._database = settings.clickhouse_database
        self._topic = settings.topic("alerts")
        self._webhooks = [
            Webhook.parse(url, index) for index, url in enumerate(settings.alert_webhooks)
        ]
        self._secrets = settings.secret_values()
        self._delays = backoff_delays(
            settings.webhook_retry_attempts,
            settings.webhook_retry_base_s,
            settings.webhook_retry_max_s,
        )
        self._http = httpx.Client(timeout=settings.webhook_timeout_s)
        self._consumer = assigned_consumer(settings, "webhooks")
        self._cluster_id = ""
        self._partitions = _Partitions()
        self._next_topic_check = 0.0
        self._last_stamp = datetime.fromtimestamp(0, UTC)
        self._stats = WebhookStats()
        self._stats_lock = threading.Lock()

    # --- public interface -------------------------------------------------

    def stats(self) -> WebhookStats:
        """A snapshot of the counters (safe from any thread)."""
        with self._stats_lock:
            return replace(self._stats)

    def poll_once(self) -> int:
        """Read one batch of alert events and deliver it; alerts delivered."""
        if self._closed:
            return 0
        if not self._partitions.assigned and (
            time.monotonic() < self._next_topic_check or not self._assign()
        ):
            return 0
        messages = self._consumer.consume(BATCH_MESSAGES, CONSUME_WAIT_S)
        delivered = 0
        next_offsets: dict[int, int] = {}
        for message in messages:
            if message.error() is not None:
                log.warning("webhooks_consume_error error=%r", message.error().str())
                continue
            outcome = self._deliver_message(message.value())
            if outcome is None:  # stopping mid-retry: leave the rest for the next start
                break
            delivered += outcome
            next_offsets[message.partition()] = message.offset() + 1
        if next_offsets:
            self._write_offsets(next_offsets)
        return delivered

    # --- delivering ---------------------------------------------------------

    def _deliver_message(self, value: bytes | None) -> int | None:
        """Deliver one alert event to every webhook: deliveries made, None if stopped."""
        try:
            alert = Alert.model_validate_json(value or b"").model_dump(mode="json")
        except ValueError as exc:
            with self._stats_lock:
                self._stats.skipped_invalid += 1
            log.warning("webhook_alert_skipped reason=%r", " ".join(str(exc).split())[:200])
            return 0
        with self._stats_lock:
            self._stats.alerts_read += 1
        if not should_notify(alert):
            return 0
        delivered = 0
        for webhook in self._webhooks:
            outcome = self._post(webhook, alert)
            if outcome is None:
                return None
            delivered += outcome
        return delivered

    def _post(self, webhook: Webhook, alert: dict) -> int | None:
        """POST with retries: 1 if delivered, 0 if dropped, None if asked to stop."""
        body = webhook.payload(alert)
        for attempt, delay in enumerate([0.0, *self._delays]):
            if delay and self._stopping.wait(delay):
                return None
            try:
                response = self._http.post(webhook.url, json=body)
                if 200 <= response.status_code < 300:
                    with self._stats_lock:
                        self._stats.delivered += 1
                        self._stats.retries += attempt
                    return 1
                error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:  # its text may quote the URL: redacted
                error = redact(f"{type(exc).__name__}: {exc}", self._secrets)
            log.warning(
                "webhook_failed webhook=%s fingerprint=%s state=%s attempt=%d error=%r",
                webhook.label, alert["fingerprint"], alert["state"], attempt + 1, error[:200],
            )  # fmt: skip
        with self._stats_lock:
            self._stats.dropped += 1
            self._stats.retries += len(self._delays)
        log.error(
            "webhook_dropped webhook=%s fingerprint=%s attempts=%d action=giving up on this "
            "alert; check the receiver, or raise AGENTWATCH_WEBHOOK_RETRY_ATTEMPTS",
            webhook.label, alert["fingerprint"], len(self._delays) + 1,
        )  # fmt: skip
        return 0

    # --- partitions and offsets ----------------------------------------------

    def _assign(self) -> bool:
        """Assign every partition of the alerts topic where the stored offsets say."""
        self._next_topic_check = time.monotonic() + TOPIC_RETRY_S
        try:
            metadata = self._consumer.list_topics(timeout=1.0)
        except KafkaException as exc:
            log.warning("webhooks_broker_unreachable error=%r", str(exc)[:200])
            return False
        topic = metadata.topics.get(self._topic)
        if topic is None or topic.error is not None or not topic.partitions:
            return False
        self._cluster_id = metadata.cluster_id or ""
        stored = {
            partition: (cluster, offset)
            for partition, cluster, offset in self._client.query(
                f"SELECT partition, cluster_id, next_offset FROM {self._database}.webhook_offsets "
                "FINAL WHERE topic = {topic:String}",
                parameters={"topic": self._topic},
            ).result_rows
        }
        assignment = []
        for partition in sorted(topic.partitions):
            cluster, offset = stored.get(partition, ("", OFFSET_BEGINNING))
            start = offset if cluster == self._cluster_id else OFFSET_BEGINNING
            assignment.append(TopicPartition(self._topic, partition, start))
            self._partitions.assigned[partition] = start
        self._consumer.assign(assignment)
        log.info(
            "webhooks_assigned topic=%s partitions=%d webhooks=%d",
            self._topic, len(assignment), len(self._webhooks),
        )  # fmt: skip
        return True

    def _write_offsets(self, next_offsets: dict[int, int]) -> None:
        stamp = max(datetime.now(UTC), self._last_stamp + timedelta(microseconds=1))
        self._last_stamp = stamp
        self._client.insert(
            "webhook_offsets",
            [(self._cluster_id, self._topic, p, o, stamp) for p, o in sorted(next_offsets.items())],
            column_names=("cluster_id", "topic", "partition", "next_offset", "updated_at"),
            database=self._database,
        )
        self._partitions.assigned.update(next_offsets)

    # --- the loop ---------------------------------------------------------------

    def _ready(self) -> bool:
        return bool(self._partitions.assigned)

    def _release(self) -> None:
        self._consumer.close()
        self._http.close()
        stats = self.stats()
        log.info(
            "webhooks_stopped delivered=%d retries=%d dropped=%d skipped_invalid=%d",
            stats.delivered, stats.retries, stats.dropped, stats.skipped_invalid,
        )  # fmt: skip
