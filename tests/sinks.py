"""A test sink for the heartbeat dataflow, whose items are lists of messages."""

from __future__ import annotations

from bytewax.outputs import DynamicSink, StatelessSinkPartition

ROWS_TOPIC = "agents.metric_rows"


class _Collect(StatelessSinkPartition):
    def __init__(self, out: list, keep_rows: bool) -> None:
        self._out = out
        self._keep_rows = keep_rows

    def write_batch(self, items: list[list]) -> None:
        for messages in items:
            if not self._keep_rows:
                messages = [m for m in messages if not m.topic.endswith(ROWS_TOPIC)]
            self._out.extend(messages)


class MessagesSink(DynamicSink):
    """Collect every message of every list the flow outputs into ``out``, in order (what
    :func:`dataflows.kafka_sink.publish` would produce); the Arrow batches of
    ``agents.metric_rows`` (not JSON: :mod:`schemas.metric_rows`) only if ``keep_rows``."""

    def __init__(self, out: list, keep_rows: bool = False) -> None:
        self._out = out
        self._keep_rows = keep_rows

    def build(self, _step_id: str, _worker_index: int, _worker_count: int) -> _Collect:
        return _Collect(self._out, self._keep_rows)
