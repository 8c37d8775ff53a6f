"""Every source of the heartbeat dataflow read as partitions of ONE Bytewax input.

Why one input: Bytewax (0.21, pinned) keeps an epoch per input partition and moves it on
when the partition's operator runs at least an epoch interval after its last move; a
partition that has moved on waits until every other input has caught up, and while it
waits it asks to run again at once. Separate inputs run at different times: the clock
once a tick, an idle Kafka partition every 20 ms. Each of them moves its epoch a little
late, the lateness adds up from epoch to epoch, and the busy heartbeat input spends an
ever larger share of every epoch spinning while it waits: the dataflow's CPU doubled
within a quarter of an hour at a constant input (docs/reliability.md, the soak;
``bench/input_spin.py`` reproduces it). Partitions of one input are looked at in the
same run of one operator, with the same clock, and move on together: no waiting, no spin.

:class:`OneInput` lists the partitions of several sources under one step, each item
tagged with its source's name (``(name, item)``); :func:`of_source` takes one source's
items back out. The heartbeat partitions keep their plain names (``"0"``, ``"1"``, …),
so their read positions, snapshotted under the step ``read_heartbeats``, resume as they
were; the other sources' partitions are named ``source/partition``.

Read positions recorded by the former separate inputs (``read_events``,
``read_control``) are carried over once by :func:`carried_positions`, read from the
recovery directory as Bytewax itself would resume them.
"""

from __future__ import annotations

import logging
import pickle
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

log = logging.getLogger(__name__)

#: Former input steps whose read positions the one input takes over, and the source name
#: their partitions have now.
FORMER_INPUTS = {"read_events": "events", "read_control": "control"}


def part_name(source: str, part: str, plain: str) -> str:
    """The name of ``source``'s partition ``part`` in the one input (``plain``: the
    source whose partitions keep their own names).

    >>> part_name("heartbeats", "3", plain="heartbeats"), part_name("events", "3", "heartbeats")
    ('3', 'events/3')
    """
    return part if source == plain else f"{source}/{part}"


def of_source(name: str, tagged: tuple[str, Any]) -> Any | None:
    """The item of a tagged pair if it came from source ``name``, else None (for
    ``op.filter_map``).

    >>> of_source("clock", ("clock", 5)), of_source("clock", ("events", 5))
    (5, None)
    """
    source, item = tagged
    return item if source == name else None


class _Tagged(StatefulSourcePartition[tuple[str, Any], Any]):
    """A source's partition whose items are tagged with the source's name."""

    def __init__(self, name: str, part: StatefulSourcePartition) -> None:
        self._name = name
        self._part = part

    def next_batch(self) -> list[tuple[str, Any]]:
        name = self._name
        return [(name, item) for item in self._part.next_batch()]

    def next_awake(self):
        return self._part.next_awake()

    def snapshot(self) -> Any:
        return self._part.snapshot()

    def close(self) -> None:
        self._part.close()


class OneInput(FixedPartitionedSource[tuple[str, Any], Any]):
    """The partitions of every source in ``sources`` (by name) as one input; items are
    ``(name, item)``. ``plain`` names the source whose partitions keep their own names.
    A partition without a snapshot of its own resumes from ``carried`` (by its name in
    the one input), if there."""

    def __init__(
        self,
        sources: Mapping[str, FixedPartitionedSource],
        plain: str,
        carried: Mapping[str, Any] | None = None,
    ) -> None:
        self._sources = dict(sources)
        self._plain = plain
        self._carried = dict(carried or {})
        self._parts: dict[str, tuple[str, str]] = {}

    def _index(self) -> dict[str, tuple[str, str]]:
        if not self._parts:
            self._parts = {
                part_name(name, part, self._plain): (name, part)
                for name, source in self._sources.items()
                for part in source.list_parts()
            }
        return self._parts

    def list_parts(self) -> list[str]:
        return list(self._index())

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _Tagged:
        name, part = self._index()[for_part]
        if resume_state is None and for_part in self._carried:
            resume_state = self._carried[for_part]
            log.info("input_position_carried part=%s position=%s", for_part, resume_state)
        return _Tagged(name, self._sources[name].build_part(step_id, part, resume_state))


def carried_positions(recovery_path: Path, flow_id: str) -> dict[str, Any]:
    """The read positions the former inputs (:data:`FORMER_INPUTS`) of the flow
    ``flow_id`` left in the recovery directory, by their partitions' names in the one
    input: for each partition, its last
    snapshot before the epoch Bytewax resumes from (computed as Bytewax computes it: the
    lowest frontier over the workers of the last execution). Empty when there are none.
    """
    files = sorted(recovery_path.glob("*.sqlite3")) if recovery_path.is_dir() else []
    executions: list[tuple[int, int, int]] = []
    fronts: list[tuple[int, int, int]] = []
    snaps: list[tuple[str, str, int, bytes | None]] = []
    steps = {f"{flow_id}.{step}": source for step, source in FORMER_INPUTS.items()}
    for file in files:
        with sqlite3.connect(file) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            if not {"exs", "fronts", "snaps"} <= tables:
                continue
            executions += db.execute("SELECT ex_num, worker_count, resume_epoch FROM exs")
            fronts += db.execute("SELECT ex_num, worker_index, worker_frontier FROM fronts")
            snaps += db.execute(
                "SELECT step_id, state_key, snap_epoch, ser_change FROM snaps "
                "WHERE step_id IN (?, ?)",
                tuple(steps),
            )
    if not executions or not snaps:
        return {}
    resume = resume_epoch(executions, fronts)
    latest: dict[tuple[str, str], tuple[int, bytes | None]] = {}
    for step, key, epoch, change in snaps:
        if epoch < resume and epoch > latest.get((step, key), (-1, None))[0]:
            latest[(step, key)] = (epoch, change)
    return {
        f"{steps[step]}/{key}": pickle.loads(change)
        for (step, key), (_, change) in sorted(latest.items())
        if change is not None
    }


def resume_epoch(executions: list[tuple[int, int, int]], fronts: list[tuple[int, int, int]]) -> int:
    """The epoch Bytewax resumes from, given its ``exs`` rows (execution, worker count,
    resume epoch) and ``fronts`` rows (execution, worker, frontier): the last execution's
    lowest worker frontier, a worker without a recorded frontier counting at the epoch
    that execution resumed from.

    >>> resume_epoch([(0, 1, 1), (1, 2, 7)], [(1, 0, 9), (1, 1, 8), (0, 0, 7)])
    8
    >>> resume_epoch([(0, 1, 1), (1, 2, 7)], [(1, 0, 9)])
    7
    """
    last, workers, resumed = max(executions)
    frontier = dict.fromkeys(range(workers), resumed)
    for execution, worker, front in fronts:
        if execution == last and worker in frontier:
            frontier[worker] = max(frontier[worker], front)
    return min(frontier.values())
