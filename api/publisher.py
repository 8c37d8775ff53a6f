"""Publishing ``agents.events`` from the API: operators' requests and silences.

The API never changes the dataflow's state itself; it publishes an event on
``agents.events`` (key = the agent id, or ``*`` for fleet-wide events) and the
dataflow, the loader and anyone else reads it from there.
"""

from __future__ import annotations

import threading

import orjson
from confluent_kafka import KafkaException, Producer

from agentwatch.settings import Settings


class PublishError(RuntimeError):
    """The event could not be written to Kafka; nothing was changed."""


class EventPublisher:
    """One idempotent producer for ``agents.events``, opened on first use.

    :meth:`publish` waits until the broker has the event (``acks=all``), so an
    answer of 202 means the event is in the log.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: Producer | None = None
        self._lock = threading.Lock()

    def publish(self, event: dict, key: str) -> None:
        """Write one event (a ``LifecycleEvent`` dict) and wait for the broker to take it."""
        failures: list[str] = []

        def delivered(error: object, _message: object) -> None:
            if error is not None:
                failures.append(str(error))

        with self._lock:
            if self._producer is None:
                self._producer = Producer(
                    {"bootstrap.servers": self.settings.bootstrap_servers, "acks": "all"}
                )
            try:
                self._producer.produce(
                    self.settings.topic("events"), key=key.encode(), value=orjson.dumps(event),
                    on_delivery=delivered,
                )  # fmt: skip
            except (KafkaException, BufferError) as exc:
                raise PublishError(f"Kafka refused the event: {exc}") from None
            left = self._producer.flush(self.settings.api_broker_timeout_s * 10)
        if left or failures:
            reason = failures[0] if failures else "no answer from the broker"
            raise PublishError(
                f"the event was not published to {self.settings.topic('events')} ({reason}); "
                "check that the broker runs (AGENTWATCH_BOOTSTRAP_SERVERS) and retry"
            )

    def close(self) -> None:
        """Deliver what is pending and let go of the producer."""
        with self._lock:
            if self._producer is not None:
                self._producer.flush(5)
                self._producer = None
