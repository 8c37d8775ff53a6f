"""The dataflow's publishing step: lists of Kafka messages, produced as they come, held
durable at the end of every epoch.

Bytewax's own ``KafkaSink`` takes one item per message, and every item costs a trip
through the engine (measured: a few microseconds each, more than serialising a small
record). The dataflow's steps already produce their messages a step's output at a time,
so they pass the whole list as one item. A message is a plain named tuple (making
Bytewax's ``KafkaSinkMessage`` dataclass took 2.2 µs, three times the JSON of the record).

**At least once, by construction.** Bytewax commits an epoch (the snapshots a restart
resumes from) once every *stateful* step has snapshotted it; it does not wait for a
``DynamicSink``'s writes (``write_recovery`` in its ``src/recovery.rs``: output progress
"only makes sense on stateful outputs"). A sink that waited for the broker at each write
was therefore safe only because Timely runs a worker's sink before its recovery
operators. Here publishing is itself a stateful step (:func:`publish`, keyed like the
steps that made the messages, so they stay on their worker): each list's messages are
handed to the producer at once (librdkafka sends them within ``linger.ms``), and the
step's snapshot at the epoch's end waits until the broker holds everything handed so far
(``flush``), raising if anything was refused. The epoch cannot commit before that, and
the dataflow no longer stops at every write for the broker's acknowledgement (0.9 s per
million heartbeats, docs/benchmarks.md).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from functools import partial
from typing import NamedTuple

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic
from confluent_kafka import KafkaException, Producer


class Message(NamedTuple):
    """A message to produce: its topic, key (None: no key) and value."""

    topic: str
    key: bytes | None
    value: bytes


#: How long ``produce`` waits for room in the client's queue before trying again.
QUEUE_FULL_WAIT_S = 0.05


class Outbox:
    """One producer for every publishing key of a process, and what the broker refused.

    Keys on one worker share it, and so do the workers of one process (librdkafka's
    producer is thread-safe): a flush for one key waits for the others' messages too,
    which is only sooner durable."""

    def __init__(self, config: dict[str, str]) -> None:
        self._producer = Producer(config)
        self._refused: list[str] = []

    def _delivered(self, error: object, _message: object) -> None:
        if error is not None:
            self._refused.append(str(error))

    def send(self, messages: Iterable[Message]) -> None:
        """Hand the messages to the producer (it sends them within ``linger.ms``)."""
        producer = self._producer
        for message in messages:
            while True:
                try:
                    producer.produce(
                        message.topic, message.value, message.key, on_delivery=self._delivered
                    )
                    break
                except BufferError:  # the client's queue is full: let it drain
                    producer.poll(QUEUE_FULL_WAIT_S)
        producer.poll(0)

    def settle(self) -> None:
        """Wait until the broker holds every message handed so far; raise if it refused
        any (the epoch then never commits, and a restart publishes them again)."""
        self._producer.flush()
        if self._refused:
            refused, self._refused = self._refused, []
            raise KafkaException(f"{len(refused)} messages not delivered, first: {refused[0]}")


_OUTBOXES: dict[tuple[tuple[str, str], ...], Outbox] = {}
_OUTBOXES_LOCK = threading.Lock()


def outbox(config: dict[str, str]) -> Outbox:
    """This process's :class:`Outbox` for a producer ``config``."""
    key = tuple(sorted(config.items()))
    with _OUTBOXES_LOCK:
        if key not in _OUTBOXES:
            _OUTBOXES[key] = Outbox(config)
        return _OUTBOXES[key]


class _Publishing(StatefulBatchLogic[list[Message], None, None]):
    """One key's publishing: nothing kept but the outbox it hands messages to."""

    def __init__(self, box: Outbox) -> None:
        self._box = box

    def on_batch(self, values: list[list[Message]]) -> tuple[list[None], bool]:
        for messages in values:
            self._box.send(messages)
        return [], StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[None], bool]:
        self._box.settle()
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> None:
        self._box.settle()  # (before the epoch can commit: at least once)


def _publishing(config: dict[str, str], _resume: None) -> _Publishing:
    return _Publishing(outbox(config))


def _nothing(_step_id: str, _item: object) -> None:
    return None


def publish(step_id: str, up: Stream[tuple[str, list[Message]]], config: dict[str, str]) -> None:
    """Produce every message of every ``(key, messages)`` item to the topic it names, with
    a producer of ``config`` (``bootstrap.servers`` and any other); the step's state is
    only the epoch's end, at which it waits for the broker (see the module). Key the
    items as the steps that made them are keyed, so they are published on the same
    worker."""
    published = op.stateful_batch(step_id, up, partial(_publishing, dict(config)))
    op.inspect(f"{step_id}_done", published, _nothing)  # (Bytewax wants an output step)
