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
from collections.abc import Callable, Sequence
from contextvars import ContextVar

import orjson
from confluent_kafka import KafkaException, Producer

from agentwatch.settings import Settings
from schemas.events import CONTROL_CHANNEL, refusal
from sinks.audit import ORIGIN_HEADER

#: How long the delivery thread waits for reports in one call (seconds).
DELIVERY_POLL_S = 0.1
#: How long a failed publish waits for the reports of the messages it purged (seconds).
PURGE_WAIT_S = 1.0


def drop_undelivered(producer: Producer) -> None:
    """Purge what the broker has not taken from ``producer``'s queue, so it cannot land
    after the caller was told it was not published, and serve the purged messages'
    reports (the broker threads purge asynchronously: ``poll(0)`` left one pending)."""
    producer.purge(in_queue=True, in_flight=False)
    producer.flush(PURGE_WAIT_S)


#: The address of the caller of the request being served ("" outside a request).
request_origin: ContextVar[str] = ContextVar("request_origin", default="")


class PublishError(RuntimeError):
    """The event could not be written to Kafka; nothing was changed."""


class EventPublisher:
    """The producers of ``agents.control``, opened on first use.

    :meth:`publish` waits until the broker has the event (``acks=all``), so an
    answer of 202 means the event is in the log. :meth:`publish_later` (task
    assignment: an answer in milliseconds) only queues it, and reports a failure
    later; a :meth:`publish` first waits for what was queued that way, so the log keeps
    the order in which this process published (an assignment, then its release).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: Producer | None = None
        self._later: Producer | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def publish(self, event: dict, key: str) -> None:
        """Write one command (a ``LifecycleEvent`` dict) and wait for the broker to take it.

        A type that is not an operator's command is refused here (a ``ValueError``: the
        dataflow would dead-letter it), so the API cannot publish what it should not.
        """
        topic = self._command_topic(event)
        failures: list[str] = []

        def delivered(error: object, _message: object) -> None:
            if error is not None:
                failures.append(str(error))

        with self._lock:
            self._open()
            if self._later is not None:  # what publish_later queued goes first
                self._later.flush(self.settings.api_broker_timeout_s * 10)
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
            if left:
                drop_undelivered(self._producer)
        if left or failures:
            reason = failures[0] if failures else "no answer from the broker"
            raise PublishError(
                f"the command was not published to {topic} ({reason}); "
                "check that the broker runs (AGENTWATCH_BOOTSTRAP_SERVERS) and retry"
            )

    def publish_later(
        self, event: dict, key: str, on_failure: Callable[[str], None] | None = None
    ) -> None:
        """Queue one command for the broker and return without waiting for it to be taken;
        ``on_failure(reason)`` is called (from the publisher's delivery thread) if the
        broker refuses it or does not take it within ``api_broker_timeout_s`` × 10. Raises
        like :meth:`publish` when the producer refuses it at once (nothing is queued)."""
        topic = self._command_topic(event)

        def delivered(error: object, _message: object) -> None:
            if error is not None and on_failure is not None:
                on_failure(f"the broker did not take it: {error}")

        with self._lock:
            producer = self._open_later()
            try:
                producer.produce(
                    topic, key=key.encode(), value=orjson.dumps(event),
                    headers=[(ORIGIN_HEADER, request_origin.get().encode())],
                    on_delivery=delivered,
                )  # fmt: skip
            except (KafkaException, BufferError) as exc:
                raise PublishError(f"Kafka refused the event: {exc}") from None
            producer.poll(0)

    def _command_topic(self, event: dict) -> str:
        """The topic of an operator's command; a ``ValueError`` for any other type (the
        dataflow would dead-letter it, so the API does not publish it)."""
        reason = refusal(CONTROL_CHANNEL, str(event.get("type")))
        if reason is not None:
            raise ValueError(f"not published: {reason}")
        return self.settings.topic(CONTROL_CHANNEL)

    def _open(self) -> Producer:
        """The producer of :meth:`publish` and :meth:`publish_many` (made on first use;
        their ``flush`` serves its delivery reports). Call it holding the lock."""
        if self._producer is None:
            self._producer = Producer(self._config())  # (its callers wait, then purge)
        return self._producer

    def _open_later(self) -> Producer:
        """The producer of :meth:`publish_later`, with a thread of its own that serves its
        delivery reports (a second producer: :meth:`publish` must see its own reports in
        its ``flush``, not have them taken by that thread). Call it holding the lock."""
        if self._later is None:
            # an event the broker has not taken within the callers' longest wait is
            # reported undelivered, not retried for librdkafka's default five minutes
            self._later = Producer(self._config(self.settings.api_broker_timeout_s * 10))
            self._stopping.clear()
            threading.Thread(
                target=self._serve_deliveries, args=(self._later,),
                name="control-deliveries", daemon=True,
            ).start()  # fmt: skip
        return self._later

    def _config(self, message_timeout_s: float | None = None) -> dict:
        config = {**self.settings.kafka_config(), "acks": "all"}
        if message_timeout_s is not None:
            config["message.timeout.ms"] = int(message_timeout_s * 1000)
        return config

    def _serve_deliveries(self, producer: Producer) -> None:
        while not self._stopping.is_set():
            producer.poll(DELIVERY_POLL_S)

    def publish_many(self, events: Sequence[tuple[dict, str]]) -> list[str | None]:
        """Write many commands (``(event, key)`` pairs) as one batch: produce them all,
        then wait once for the broker to take them (one flush, not one per event).

        Answers, per event in order, None when the broker has it, or why not (what it
        did not take within the wait is purged from the producer's queue). A type
        that is not an operator's command is refused before anything is written
        (``ValueError``), as in :meth:`publish`.
        """
        topic = self.settings.topic(CONTROL_CHANNEL)
        for event, _key in events:
            self._command_topic(event)
        outcome: list[str | None] = ["no answer from the broker"] * len(events)
        origin = [(ORIGIN_HEADER, request_origin.get().encode())]
        timeout_s = self.settings.api_broker_timeout_s * 10

        def delivered_as(index: int):
            def delivered(error: object, _message: object) -> None:
                outcome[index] = None if error is None else str(error)

            return delivered

        with self._lock:
            producer = self._open()
            if self._later is not None:  # what publish_later queued goes first
                self._later.flush(timeout_s)
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
                drop_undelivered(producer)
        return outcome

    def close(self) -> None:
        """Deliver what is pending and let go of the producer."""
        with self._lock:
            self._stopping.set()
            for producer in (self._producer, self._later):
                if producer is not None:
                    producer.flush(5)
            self._producer = self._later = None
