"""Publishing ``agents.control`` from the API: operators' commands.

The API never changes the dataflow's state itself; it publishes a command
(rule change, silence, quarantine request, release) on ``agents.control``
(key = the agent id, or ``*`` for fleet-wide commands) and the dataflow, the
loader and anyone else reads it from there. Only the API writes that topic (in
the cluster profile a Kafka ACL says so); the dataflow applies a command only
when it arrives there, never from the agents' ``agents.events``.

Each command carries, in its ``origin`` header, the address of the caller whose
request published it (:data:`request_origin`, set per request by
:class:`api.access.LoopbackMutations`), for the audit trail (:mod:`sinks.audit`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextvars import ContextVar

import orjson
from confluent_kafka import KafkaException, Producer

from agentwatch.settings import Settings
from schemas.events import CONTROL_CHANNEL, refusal
from sinks.audit import ORIGIN_HEADER

#: The address of the caller of the request being served ("" outside a request).
request_origin: ContextVar[str] = ContextVar("request_origin", default="")


class PublishError(RuntimeError):
    """The event could not be written to Kafka; nothing was changed."""


class EventPublisher:
    """One producer for ``agents.control``, opened on first use.

    :meth:`publish` waits until the broker has the event (``acks=all``), so an
    answer of 202 means the event is in the log.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: Producer | None = None
        self._lock = threading.Lock()

    def publish(self, event: dict, key: str) -> None:
        """Write one command (a ``LifecycleEvent`` dict) and wait for the broker to take it.

        A type that is not an operator's command is refused here (a ``ValueError``: the
        dataflow would dead-letter it), so the API cannot publish what it should not.
        """
        reason = refusal(CONTROL_CHANNEL, str(event.get("type")))
        if reason is not None:
            raise ValueError(f"not published: {reason}")
        topic = self.settings.topic(CONTROL_CHANNEL)
        failures: list[str] = []

        def delivered(error: object, _message: object) -> None:
            if error is not None:
                failures.append(str(error))

        with self._lock:
            if self._producer is None:
                self._producer = Producer({**self.settings.kafka_config(), "acks": "all"})
            try:
                self._producer.produce(
                    topic,
                    key=key.encode(),
                    value=orjson.dumps(event),
                    headers=[(ORIGIN_HEADER, request_origin.get().encode())],
                    on_delivery=delivered,
                )
            except (KafkaException, BufferError) as exc:
                raise PublishError(f"Kafka refused the event: {exc}") from None
            left = self._producer.flush(self.settings.api_broker_timeout_s * 10)
        if left or failures:
            reason = failures[0] if failures else "no answer from the broker"
            raise PublishError(
                f"the command was not published to {topic} ({reason}); "
                "check that the broker runs (AGENTWATCH_BOOTSTRAP_SERVERS) and retry"
            )

    def publish_many(self, events: Sequence[tuple[dict, str]]) -> list[str | None]:
        """Write many commands (``(event, key)`` pairs) as one batch: produce them all,
        then wait once for the broker to take them (one flush, not one per event).

        Answers, per event in order, None when the broker has it, or why not (what it
        did not take within the wait is purged from the producer's queue). A type
        that is not an operator's command is refused before anything is written
        (``ValueError``), as in :meth:`publish`.
        """
        for event, _key in events:
            reason = refusal(CONTROL_CHANNEL, str(event.get("type")))
            if reason is not None:
                raise ValueError(f"not published: {reason}")
        topic = self.settings.topic(CONTROL_CHANNEL)
        outcome: list[str | None] = ["no answer from the broker"] * len(events)
        origin = [(ORIGIN_HEADER, request_origin.get().encode())]
        timeout_s = self.settings.api_broker_timeout_s * 10

        def delivered_as(index: int):
            def delivered(error: object, _message: object) -> None:
                outcome[index] = None if error is None else str(error)

            return delivered

        with self._lock:
            if self._producer is None:
                self._producer = Producer({**self.settings.kafka_config(), "acks": "all"})
            producer = self._producer
            for index, (event, key) in enumerate(events):
                value = orjson.dumps(event)
                while True:
                    try:
                        producer.produce(
                            topic, key=key.encode(), value=value, headers=origin,
                            on_delivery=delivered_as(index),
                        )  # fmt: skip
                        break
                    except BufferError:  # the local queue is full: let the broker catch up
                        if producer.poll(timeout_s) == 0 and len(producer) > 0:
                            outcome[index] = "the producer's queue stayed full"
                            break
                    except KafkaException as exc:
                        outcome[index] = f"Kafka refused the event: {exc}"
                        break
            if producer.flush(timeout_s):
                # What the broker did not take in time is dropped from the queue, so it
                # cannot land later, after the caller was told it was not published.
                producer.purge(in_queue=True, in_flight=False)
                producer.poll(0)
        return outcome

    def close(self) -> None:
        """Deliver what is pending and let go of the producer."""
        with self._lock:
            if self._producer is not None:
                self._producer.flush(5)
                self._producer = None
