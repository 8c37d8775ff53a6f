"""Relaying agents' own messages from the REST bridge to their topics.

An agent that cannot speak Kafka posts its heartbeats and events to the API
(:mod:`api.routes.bridge`); the API writes them, exactly as an agent would, to
``agents.metrics`` (heartbeats) and ``agents.events`` (conversations, task
outcomes), keyed by the agent id. It never writes ``agents.control`` this way
(that is :class:`api.publisher.EventPublisher`'s, for operators' commands), and
the channel allowlist (``schemas.events.CHANNELS``) is checked before anything
is produced.

:meth:`AgentRelay.send` waits until the broker has the messages (``acks=all``),
so a 202 means they are in the log.
"""

from __future__ import annotations

import threading

import orjson
from confluent_kafka import KafkaException, Producer

from agentwatch.settings import Settings
from api.publisher import PublishError
from schemas.events import AGENT_CHANNEL

#: The logical topics the bridge may write.
METRICS_CHANNEL = "metrics"
BRIDGE_TOPICS = frozenset({METRICS_CHANNEL, AGENT_CHANNEL})


class AgentRelay:
    """One producer for the agents' topics, opened on first use (thread-safe)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: Producer | None = None
        self._lock = threading.Lock()

    def send(self, channel: str, key: str, values: list[dict]) -> None:
        """Write ``values`` (JSON objects) to ``agents.<channel>`` keyed by ``key`` and wait
        for the broker to take them all; :class:`PublishError` says why not."""
        if channel not in BRIDGE_TOPICS:
            raise ValueError(f"the bridge writes only {sorted(BRIDGE_TOPICS)}, not {channel!r}")
        topic = self.settings.topic(channel)
        failures: list[str] = []

        def delivered(error: object, _message: object) -> None:
            if error is not None:
                failures.append(str(error))

        with self._lock:
            if self._producer is None:
                self._producer = Producer(
                    {**self.settings.kafka_config(), "acks": "all", "linger.ms": 0}
                )
            try:
                for value in values:
                    self._producer.produce(
                        topic, key=key.encode(), value=orjson.dumps(value), on_delivery=delivered
                    )
            except (KafkaException, BufferError) as exc:
                raise PublishError(f"Kafka refused the message: {exc}") from None
            left = self._producer.flush(self.settings.api_broker_timeout_s * 10)
        if left or failures:
            reason = failures[0] if failures else "no answer from the broker"
            raise PublishError(
                f"not written to {topic} ({reason}); check that the broker runs "
                "(AGENTWATCH_BOOTSTRAP_SERVERS) and send it again"
            )

    def close(self) -> None:
        """Deliver what is pending and let go of the producer."""
        with self._lock:
            if self._producer is not None:
                self._producer.flush(self.settings.api_broker_timeout_s * 10)
                self._producer = None
