"""The dataflow's clock: a source of ticks, so time passes in the shards without input.

One partition (so one tick per period in the whole cluster, whatever the number of
workers) emits a :class:`Tick` carrying the processing time every ``clock_tick_s``;
the flow hands every tick to every shard (:func:`to_every_shard`), whose event
clocks decide what is due (see :mod:`agentwatch.liveness`). The time comes from
a ``now`` function, so a test can drive it; a test can also feed ticks from
Bytewax's ``TestingSource`` instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from dataflows.kafka_source import STOP


@dataclass(frozen=True, slots=True)
class Tick:
    """Processing time ``wall`` (epoch seconds) has come."""

    wall: float


def to_every_shard(keys: tuple[str, ...], tick: Tick) -> list[tuple[str, Tick]]:
    """The tick, once for each shard key.

    >>> to_every_shard(("0", "1"), Tick(5.0))
    [('0', Tick(wall=5.0)), ('1', Tick(wall=5.0))]
    """
    return [(key, tick) for key in keys]


class _Ticker(StatefulSourcePartition[Tick, None]):
    def __init__(self, period_s: float, now: Callable[[], float]):
        self._period = timedelta(seconds=period_s)
        self._now = now
        self._awake: datetime | None = None

    def next_batch(self) -> list[Tick]:
        if STOP.is_set():
            raise StopIteration
        self._awake = datetime.now(UTC) + self._period
        return [Tick(self._now())]

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> None:
        return None


class ClockSource(FixedPartitionedSource[Tick, None]):
    """A tick every ``period_s`` of processing time, read from ``now`` (``time.time``)."""

    def __init__(self, period_s: float, now: Callable[[], float] = time.time):
        self._period_s = period_s
        self._now = now

    def list_parts(self) -> list[str]:
        return ["clock"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Ticker:
        return _Ticker(self._period_s, self._now)
