"""Heartbeat timeouts: a shard's event clock, and the late → offline → back ladder.

Time must pass in a shard even when nothing arrives, or an agent that stops beating
is never noticed; and it must pass in *event time*, so a replay of the same log
decides the same. A :class:`ShardClock` keeps, for every source partition a shard
reads heartbeats from, the latest event time it has seen from it (a partition is
read in order, so once it reached ``T`` every heartbeat of its agents up to ``T``
has arrived, wherever other partitions are). When a partition has said nothing
for ``clock_idle_advance_s`` of processing time (the whole fleet may be silent),
its clock moves on with the processing time elapsed since: a bounded wait, so a
silent fleet still times out, while a replay (input flowing) decides by event
time alone. Processing time is always a value the caller passes (``wall``): the
dataflow passes its clock's reading, a test any number it likes.

:class:`Liveness` keeps three numbers per agent (11 bytes): its latest heartbeat,
the partition it arrives on, and the rung it has reached. With
``late_after_s = heartbeat_interval_s × heartbeat_late_missed`` and
``offline_after_s = heartbeat_interval_s × heartbeat_offline_missed``:

    on time ─ no heartbeat for late_after_s ─▶ late (``heartbeat_late`` event)
            ─ no heartbeat for offline_after_s ─▶ offline (a ``heartbeat_timeout``
              for the lifecycle, and an ``agent_offline`` alert)
            ─ a heartbeat ─▶ on time (the alert's condition stops)

Every event is stamped with the time the threshold was crossed (the last heartbeat
plus the threshold) or the heartbeat that came back, so events do not depend on
when the check ran: a gap is judged when the clock passes the threshold, or, if
the next heartbeat comes first (a batch that holds both), on that heartbeat.

The ladder does not own the agent's status: a timeout is a trigger the shard gives
the lifecycle table (:mod:`agentwatch.lifecycle`), which decides (a running agent
goes offline, a quarantined one stays quarantined) and emits the ``status_changed``;
the heartbeat that comes back brings it back the same way. A quarantined agent can
still be late and offline here (warning and alert).

>>> from agentwatch.settings import Settings
>>> live = Liveness.from_settings(Settings())   # late after 60 s, offline after 120 s
>>> t0 = 1.8e9
>>> live.observe(["a1", "a2"], ["t1", "t1"], [t0, t0], partition=0, wall=0.0).events
[]
>>> [(e["agent_id"], e["type"]) for e in live.observe(["a2", "a2"], ["t1", "t1"],
...                                                  [t0 + 30, t0 + 60], 0, 1.0).events]
[('a1', 'heartbeat_late')]
>>> out = live.observe(["a2", "a2"], ["t1", "t1"], [t0 + 90, t0 + 120], 0, 2.0)
>>> [(e["agent_id"], e["at"] - t0) for e in out.timeouts]
[('a1', 120.0)]
>>> [(t["agent_id"], t["holds"]) for t in out.transitions]
[('a1', True)]
>>> out = live.observe(["a1"], ["t1"], [t0 + 150], 0, 3.0)
>>> out.events, out.timeouts, [(t["agent_id"], t["holds"]) for t in out.transitions]
([], [], [('a1', False)])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from agentwatch.rows import AgentIndex, ArraySpec, RowArrays
from agentwatch.settings import Settings
from schemas.events import HEARTBEAT_LATE

#: The rule name of the alert an offline agent raises (it resolves when it beats again).
AGENT_OFFLINE_RULE = "agent_offline"
#: Rungs of the ladder (``Liveness.level``).
ON_TIME, LATE, OFFLINE = 0, 1, 2


@dataclass(frozen=True, slots=True)
class LivenessConfig:
    """The heartbeat timeouts, in seconds of event time.

    >>> config = LivenessConfig.from_settings(Settings())
    >>> config.late_after_s, config.offline_after_s, config.idle_advance_s
    (60.0, 120.0, 10.0)
    """

    late_after_s: float
    offline_after_s: float
    idle_advance_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> LivenessConfig:
        """The timeouts of ``settings`` (a ``ValueError`` says what to fix if offline
        would come before late)."""
        s = settings
        if s.heartbeat_offline_missed < s.heartbeat_late_missed:
            raise ValueError(
                f"heartbeat_offline_missed ({s.heartbeat_offline_missed}) is below "
                f"heartbeat_late_missed ({s.heartbeat_late_missed}): an agent would go offline "
                "before it is late; raise AGENTWATCH_HEARTBEAT_OFFLINE_MISSED"
            )
        return cls(
            late_after_s=s.heartbeat_interval_s * s.heartbeat_late_missed,
            offline_after_s=s.heartbeat_interval_s * s.heartbeat_offline_missed,
            idle_advance_s=s.clock_idle_advance_s,
        )


class ShardClock:
    """The event time of each source partition, as one shard has seen it.

    >>> clock = ShardClock(idle_advance_s=10)
    >>> clock.observe(0, 1000.0, wall=50.0)
    1000.0
    >>> clock.tick(wall=55.0)       # quiet for 5 s: event time waits
    []
    >>> clock.tick(wall=62.0)       # quiet for 12 s: moves on with processing time
    [0]
    >>> clock.now(0)
    1012.0
    >>> clock.observe(0, 1005.0, wall=63.0)  # never goes back
    1012.0
    """

    def __init__(self, idle_advance_s: float):
        self.idle_advance_s = idle_advance_s
        #: partition → [latest event time read, processing time it was read, clock]
        self.partitions: dict[int, list[float]] = {}

    def observe(self, partition: int, event_time: float, wall: float) -> float:
        """Input from ``partition`` up to ``event_time`` was read at processing time
        ``wall``; returns the partition's clock."""
        known = self.partitions.get(partition)
        if known is None:
            self.partitions[partition] = [event_time, wall, event_time]
            return event_time
        known[0] = max(known[0], event_time)
        known[1] = max(known[1], wall)
        known[2] = max(known[2], known[0])
        return known[2]

    def tick(self, wall: float) -> list[int]:
        """Processing time is ``wall``: the partitions quiet for ``idle_advance_s`` move
        on by the processing time since they were last heard; returns those that moved."""
        moved = []
        for partition, known in self.partitions.items():
            quiet = wall - known[1]
            if quiet >= self.idle_advance_s and known[0] + quiet > known[2]:
                known[2] = known[0] + quiet
                moved.append(partition)
        return moved

    def latest(self) -> float:
        """The most advanced partition's clock (-inf if none was heard): the shard's
        event time for what belongs to no partition (expiries).

        >>> clock = ShardClock(idle_advance_s=10)
        >>> clock.latest(), clock.observe(1, 50.0, 0.0), clock.observe(0, 20.0, 0.0)
        (-inf, 50.0, 20.0)
        >>> clock.latest()
        50.0
        """
        return max((known[2] for known in self.partitions.values()), default=-math.inf)

    def now(self, partition: int) -> float:
        """The partition's clock (-inf if never heard)."""
        known = self.partitions.get(partition)
        return -math.inf if known is None else known[2]


@dataclass(slots=True)
class LivenessOutput:
    """``events``: ``heartbeat_late`` ``LifecycleEvent`` dicts for agents.state;
    ``timeouts``: the agents that reached offline (agent and tenant ids, ``at``, and
    ``last_heartbeat``), which the shard gives the lifecycle as ``heartbeat_timeout``
    triggers (the lifecycle owns the status; a heartbeat that comes back is the way
    back, see :func:`agentwatch.lifecycle.observe_heartbeat`); ``transitions``: the
    ``agent_offline`` condition starting (``holds``) or stopping, in the layout the
    alert book takes from the rules; ``threats``: the threat that makes an offline alert fire."""

    events: list[dict] = field(default_factory=list)
    timeouts: list[dict] = field(default_factory=list)
    transitions: list[dict] = field(default_factory=list)
    threats: list[dict] = field(default_factory=list)


class Liveness(RowArrays):
    """The heartbeat timeouts of one shard of agents (see the module doc).

    ``due`` is the earliest event time at which some agent may reach its next rung:
    a tick or a batch that leaves every clock before it costs one comparison.

    >>> Liveness.from_settings(Settings()).bytes_per_agent()
    11
    """

    def __init__(self, config: LivenessConfig, index: AgentIndex | None = None, capacity: int = 64):
        self.config = config
        self.clock = ShardClock(config.idle_advance_s)
        self.due = math.inf
        self._setup(_LAYOUT, index, capacity)

    @classmethod
    def from_settings(cls, settings: Settings, index: AgentIndex | None = None) -> Liveness:
        """Empty, with the timeouts of ``settings`` (rows from ``index`` if given)."""
        return cls(LivenessConfig.from_settings(settings), index)

    @classmethod
    def resume(cls, config: LivenessConfig, index: AgentIndex, heard: np.ndarray) -> Liveness:
        """The timeouts of a shard whose state was kept before they existed: each agent's
        latest heartbeat is the latest event time the shard knew of it (``heard``, by
        row); its partition is unknown until it beats, so it is judged by the shard's
        most advanced clock.

        >>> index = AgentIndex()
        >>> _ = index.rows_for(["a1"], ["t1"])
        >>> live = Liveness.resume(LivenessConfig(60.0, 120.0, 10.0), index, np.array([5.0]))
        >>> [e["agent_id"] for e in live.observe(["a2"], ["t1"], [65.0], 0, 0.0).events]
        ['a1']
        """
        live = cls(config, index)
        live._fit()
        count = min(len(index), len(heard))
        live.last_beat[:count] = heard[:count]
        live.due = -math.inf
        return live

    def configure(self, config: LivenessConfig) -> None:
        """Go on with new timeouts (settings changed across a restart)."""
        self.config = config
        self.clock.idle_advance_s = config.idle_advance_s
        self.due = -math.inf  # judge again at the next look

    # --- input ----------------------------------------------------------------
    def observe(
        self,
        agent_ids: Sequence[str],
        tenant_ids: Sequence[str],
        timestamps: Sequence[float] | np.ndarray,
        partition: int,
        wall: float,
    ) -> LivenessOutput:
        """Heartbeats read from source ``partition`` at processing time ``wall``: each
        agent's gap since its previous heartbeat is judged (an agent that comes back
        after the clock made it offline goes back to active), then the clock moves
        to the batch's latest time and the agents it leaves behind are judged."""
        out = LivenessOutput()
        n = len(agent_ids)
        if not n:
            return out
        rows = self._rows(agent_ids, tenant_ids)
        ts = np.asarray(timestamps, dtype=np.float64)
        order = np.lexsort((ts, rows))
        r, t = rows[order], ts[order]
        first = np.r_[True, r[1:] != r[:-1]]
        previous = np.empty_like(t)
        previous[1:] = t[:-1]
        previous[first] = self.last_beat[r[first]]
        gap = t - previous
        level = np.where(first, self.level[r], ON_TIME)
        judged = np.flatnonzero(
            np.isfinite(previous) & ((gap >= self.config.late_after_s) | (level > ON_TIME))
        )
        for k in judged.tolist():
            self._return(int(r[k]), float(previous[k]), float(t[k]), int(level[k]),
                         out)  # fmt: skip
        last = first.copy()
        last[:-1] = first[1:]
        last[-1] = True
        newest = np.maximum(self.last_beat[r[last]], t[last])
        self.last_beat[r[last]] = newest
        self.level[r[last]] = ON_TIME
        self.partition[r[last]] = partition
        self.due = min(self.due, float(newest.min()) + self.config.late_after_s)
        now = self.clock.observe(partition, float(ts.max()), wall)
        if now >= self.due:
            self._judge(out)
        return out

    def tick(self, wall: float) -> LivenessOutput:
        """Processing time is ``wall``: quiet partitions' clocks move on (see
        :class:`ShardClock`) and the agents they leave behind are judged."""
        out = LivenessOutput()
        self.clock.tick(wall)
        if self.due <= max((k[2] for k in self.clock.partitions.values()), default=-math.inf):
            self._judge(out)
        return out

    # --- the ladder -------------------------------------------------------------
    def _judge(self, out: LivenessOutput) -> None:
        """Move every agent whose partition's clock passed its next rung; set ``due``."""
        count = len(self.index)
        if not count:
            self.due = math.inf
            return
        self._fit()  # (rows other parts of the shard added)
        cfg = self.config
        part = self.partition[:count]
        clocks = np.full(count, -np.inf)
        for partition, known in self.clock.partitions.items():
            clocks[part == partition] = known[2]
        unknown = part < 0  # (agents carried over from an older snapshot, not yet heard)
        if unknown.any() and self.clock.partitions:
            clocks[unknown] = max(k[2] for k in self.clock.partitions.values())
        level, last = self.level[:count], self.last_beat[:count]
        late_at, offline_at = last + cfg.late_after_s, last + cfg.offline_after_s
        heard = np.isfinite(last)  # (a row made by an operator's command has no heartbeat)
        for row in np.flatnonzero(heard & (level < OFFLINE) & (clocks >= late_at)).tolist():
            if self.level[row] == ON_TIME:
                self._late(row, float(last[row]), out)
            if clocks[row] >= offline_at[row]:
                self._offline(row, float(last[row]), out)
        pending = heard & (level < OFFLINE)
        next_at = np.where(level == ON_TIME, late_at, offline_at)[pending]
        self.due = float(next_at.min()) if len(next_at) else math.inf

    def _return(
        self,
        row: int,
        previous: float,
        at: float,
        level: int,
        out: LivenessOutput,
    ) -> None:
        """A heartbeat at ``at`` after one at ``previous``: the rungs the gap reached that
        were not yet told, then the way back."""
        gap = at - previous
        if level == ON_TIME and gap >= self.config.late_after_s:
            self._late(row, previous, out)
            level = LATE
        if level == LATE and gap >= self.config.offline_after_s:
            self._offline(row, previous, out)
            level = OFFLINE
        if level == OFFLINE:  # (the heartbeat itself is the lifecycle's way back)
            agent = self.index.agent(row)
            out.transitions.append(self._condition(agent, False, at, previous))
        self.level[row] = ON_TIME

    def _late(self, row: int, last: float, out: LivenessOutput) -> None:
        cfg = self.config
        out.events.append(
            {
                "type": HEARTBEAT_LATE,
                **self.index.agent(row),
                "actor": "system",
                "timestamp": last + cfg.late_after_s,
                "payload": {
                    "last_heartbeat": last,
                    "late_after_s": cfg.late_after_s,
                    "offline_after_s": cfg.offline_after_s,
                },
            }
        )
        self.level[row] = LATE

    def _offline(self, row: int, last: float, out: LivenessOutput) -> None:
        at = last + self.config.offline_after_s
        agent = self.index.agent(row)
        out.timeouts.append({**agent, "at": at, "last_heartbeat": last})
        out.transitions.append(self._condition(agent, True, at, last))
        out.threats.append(
            {
                **agent,
                "rule": AGENT_OFFLINE_RULE,
                "category": "SYSTEM",
                "severity": "HIGH",
                "first_seen": at,
                "last_seen": at,
                "evidence": {
                    "condition": f"no heartbeat for {self.config.offline_after_s:g} s",
                    "values": {"last_heartbeat": last},
                    "baseline": [],
                    "window_start": last,
                    "window_end": at,
                },
            }
        )
        self.level[row] = OFFLINE

    def _condition(self, agent: dict, holds: bool, at: float, last: float) -> dict:
        return {
            **agent,
            "rule": AGENT_OFFLINE_RULE,
            "holds": holds,
            "at": at,
            "first_seen": last + self.config.offline_after_s,
            "fired": True,
        }

    # --- introspection ------------------------------------------------------------
    def last_heartbeat(self, agent_id: str) -> float:
        """The event time of the agent's latest heartbeat (-inf if never heard).

        >>> live = Liveness.from_settings(Settings())
        >>> _ = live.observe(["a1", "a1"], ["t1", "t1"], [90.0, 60.0], 0, 0.0)
        >>> live.last_heartbeat("a1"), live.last_heartbeat("nobody")
        (90.0, -inf)
        """
        row = self.index.row(agent_id)
        if row is None:
            return -math.inf
        self._fit()  # (rows other parts of the shard added)
        return float(self.last_beat[row])

    def state_of(self, agent_id: str) -> str | None:
        """``on_time``, ``late`` or ``offline``; None for an agent never seen.

        >>> Liveness.from_settings(Settings()).state_of("nobody") is None
        True
        """
        row = self.index.row(agent_id)
        if row is None:
            return None
        return ("on_time", "late", "offline")[int(self.level[row])]


_LAYOUT: dict[str, ArraySpec] = {
    "last_beat": (np.dtype(np.float64), -np.inf, ()),  # latest heartbeat (event time)
    "partition": (np.dtype(np.int16), -1, ()),  # the source partition it arrives on
    "level": (np.dtype(np.int8), ON_TIME, ()),  # ON_TIME, LATE or OFFLINE
}
