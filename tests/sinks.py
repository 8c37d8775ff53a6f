"""A test sink for the heartbeat dataflow, whose items are lists of messages."""

from __future__ import annotations

from bytewax.outputs import DynamicSink, StatelessSinkPartition


class _Collect(StatelessSinkPartition):
    def __init__(self, out: list) -> None:
        self._out = out

    def write_batch(self, items: list[list]) -> None:
        for messages in items:
            self._out.extend(messages)


class MessagesSink(DynamicSink):
    """Collect every message of every list the flow outputs into ``out``, in order (what
    :class:`dataflows.kafka_sink.BatchKafkaSink` would produce)."""

    def __init__(self, out: list) -> None:
        self._out = out

    def build(self, _step_id: str, _worker_index: int, _worker_count: int) -> _Collect:
        return _Collect(self._out)
