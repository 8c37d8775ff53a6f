"""Why the dataflow's CPU grows at a constant input rate: Bytewax inputs spin while they
wait for each other's epochs (soak finding, issue 14 Deliver 3).

    .venv/bin/python bench/input_spin.py                     # the dataflow's layout
    .venv/bin/python bench/input_spin.py --layout one-input  # the same sources, one input

Bytewax 0.21 keeps an epoch per input partition and advances it when that partition's
operator is activated at least ``epoch_interval`` after the partition's last advance.
A partition that has advanced waits (backpressure: ``probe.less_than(epoch)``) until every
other input has reached the same epoch; while it waits, its operator asks to be activated
again at once (its ``next_awake`` is None after a batch with data, or a time already
past), so the worker thread spins, never parking. An input activated only now and then
(the clock: once a ``clock_tick_s``; an idle Kafka partition: every ``IDLE_WAIT``)
advances a little late each epoch, and the lateness adds up: the always-busy input waits
a little longer every epoch, until it waits (and spins) for almost the whole epoch and
reads once an epoch. Partitions of one input operator are checked at the same
activation, with the same clock, and advance together: no waiting, no spin.

What it does: a flow of a busy input (one partition that always has data: a read takes
``--read-ms``) and a ticker (``dataflows.clock.ClockSource`` every ``--tick-s``), as two
inputs (``--layout separate``, as ``dataflows.heartbeats`` reads heartbeats, events,
commands and the clock) or as two partitions of one input (``--layout one-input``),
epochs of ``--epoch-s``; every 10 s it prints the process's CPU and the busy input's reads.
Measured (2 shared cores, ``--epoch-s 1 --tick-s 0.2``, 120 s): separate, CPU 0.7 → 8.5 s
per 10 s while the busy reads fell 4,040 → 10 (one an epoch); one input, 0.15-0.27 s per
10 s and ~4,600 reads throughout.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import bytewax.operators as op  # noqa: E402
from bytewax.dataflow import Dataflow  # noqa: E402
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition  # noqa: E402
from bytewax.outputs import DynamicSink, StatelessSinkPartition  # noqa: E402
from bytewax.testing import run_main  # noqa: E402

from dataflows.clock import ClockSource  # noqa: E402
from dataflows.kafka_source import STOP  # noqa: E402

READS = [0]


class _Busy(StatefulSourcePartition):
    """Always has data; a read takes ``read_s`` (a fetch's wait, off the CPU)."""

    def __init__(self, read_s: float) -> None:
        self._read_s = read_s

    def next_batch(self) -> list[int]:
        if STOP.is_set():
            raise StopIteration
        READS[0] += 1
        time.sleep(self._read_s)
        return [1]

    def snapshot(self) -> None:
        return None


class _Ticker(StatefulSourcePartition):
    """A tick every ``period_s`` (as :class:`dataflows.clock.ClockSource`'s partition)."""

    def __init__(self, period_s: float) -> None:
        self._period = timedelta(seconds=period_s)
        self._awake: datetime | None = None

    def next_batch(self) -> list[int]:
        if STOP.is_set():
            raise StopIteration
        self._awake = datetime.now(UTC) + self._period
        return [0]

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> None:
        return None


class _BusySource(FixedPartitionedSource):
    def __init__(self, read_s: float) -> None:
        self._read_s = read_s

    def list_parts(self) -> list[str]:
        return ["busy"]

    def build_part(self, _step_id: str, _part: str, _resume: None) -> _Busy:
        return _Busy(self._read_s)


class _BothSource(FixedPartitionedSource):
    def __init__(self, read_s: float, tick_s: float) -> None:
        self._read_s, self._tick_s = read_s, tick_s

    def list_parts(self) -> list[str]:
        return ["busy", "clock"]

    def build_part(self, _step_id: str, part: str, _resume: None) -> StatefulSourcePartition:
        return _Busy(self._read_s) if part == "busy" else _Ticker(self._tick_s)


class _Discard(StatelessSinkPartition):
    def write_batch(self, items: list) -> None:
        pass


class _DiscardSink(DynamicSink):
    def build(self, _step_id: str, _index: int, _count: int) -> _Discard:
        return _Discard()


def build(layout: str, read_s: float, tick_s: float) -> Dataflow:
    flow = Dataflow("input_spin")
    if layout == "separate":
        busy = op.input("busy", flow, _BusySource(read_s))
        ticks = op.input("clock", flow, ClockSource(tick_s))
        items = op.merge("inputs", busy, ticks)
    else:
        items = op.input("both", flow, _BothSource(read_s, tick_s))
    op.output("discard", items, _DiscardSink())
    return flow


def monitor(seconds: float) -> None:
    started, cpu, reads = time.time(), time.process_time(), 0
    while time.time() - started < seconds:
        time.sleep(10)
        now = time.process_time()
        print(f"t={time.time() - started:5.0f} s  cpu {now - cpu:5.2f} s/10 s  "
              f"busy reads {READS[0] - reads:6d}", flush=True)  # fmt: skip
        cpu, reads = now, READS[0]
    STOP.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layout", choices=("separate", "one-input"), default="separate")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--epoch-s", type=float, default=1.0)
    parser.add_argument("--tick-s", type=float, default=0.2)
    parser.add_argument("--read-ms", type=float, default=2.0)
    args = parser.parse_args()
    threading.Thread(target=monitor, args=(args.seconds,), daemon=True).start()
    flow = build(args.layout, args.read_ms / 1000, args.tick_s)
    run_main(flow, epoch_interval=timedelta(seconds=args.epoch_s))


if __name__ == "__main__":
    main()
