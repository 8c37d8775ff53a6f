"""Maintenance windows: when each agent may go into maintenance without leaving its
tenant and agent type short of capacity (``/api/v1/maintenance/schedule``;
docs/orchestration-plan.md).

The day ahead is cut into hourly slots (UTC), the first starting now. Each group (one
tenant × one agent type) has an hourly load profile from its history
(:class:`HourlyLoad`: per hour of day, the mean and the peak of its demand, the tasks its
agents ran at once). Agents are taken **at risk first** (the predicted probability of
failure ``p_fail`` descending, then the health ascending, unknowns last); each gets the
window of ``window_hours`` whose expected load is lowest (earliest on ties) among those
that keep, in every hour the window touches,

    capacity of the group's agents in service − capacity already out − its own capacity
        ≥ the group's peak demand in that hour × margin

so the agents that stay take the heaviest demand seen at that hour, with room to spare.
An agent no window fits is reported unscheduled, with the reason.

>>> quiet = HourlyLoad(mean=(1.0,) * 12 + (0.0,) * 12, peak=(4.0,) * 12 + (0.0,) * 12)
>>> agents = [MaintenanceCandidate(f"a{i}", "t1", "bot", capacity=4, p_fail=i / 10)
...           for i in range(3)]
>>> plan = schedule_maintenance(agents, {("t1", "bot"): quiet}, now=0.0, window_hours=2,
...                             margin=1.5)
>>> [(w.agent_id, w.start / 3600) for w in plan.windows]
[('a2', 12.0), ('a1', 12.0), ('a0', 12.0)]
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

HOUR_S = 3600.0


@dataclass(frozen=True, slots=True)
class HourlyLoad:
    """A group's demand per hour of day (UTC, index 0 … 23): its mean and its peak over
    the history, in tasks at once (or busy agents)."""

    mean: tuple[float, ...]
    peak: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != 24 or len(self.peak) != 24:
            raise ValueError("an hourly load profile has 24 values of mean and of peak")

    @classmethod
    def flat(cls, demand: float) -> HourlyLoad:
        """The same demand every hour (a group without history: its demand now).

        >>> HourlyLoad.flat(3.0).peak[5]
        3.0
        """
        return cls(mean=(demand,) * 24, peak=(demand,) * 24)


def hourly_profile(demand: Iterable[tuple[float, float]]) -> HourlyLoad | None:
    """A group's :class:`HourlyLoad` from its hourly demand history, ``(hour start in epoch
    seconds, demand)`` per hour with data: per hour of day (UTC), the mean and the peak of
    the hours seen; an hour of day never seen takes the highest peak of the others (no
    history is not a quiet hour). None without any history.

    >>> profile = hourly_profile([(0.0, 2.0), (86_400.0, 4.0), (3600.0, 1.0)])
    >>> profile.mean[:2], profile.peak[:3]
    ((3.0, 1.0), (4.0, 1.0, 4.0))
    """
    seen: dict[int, list[float]] = {}
    for start, value in demand:
        seen.setdefault(int(start // HOUR_S) % 24, []).append(value)
    if not seen:
        return None
    highest = max(max(values) for values in seen.values())
    mean = tuple(sum(seen[h]) / len(seen[h]) if h in seen else highest for h in range(24))
    peak = tuple(max(seen[h]) if h in seen else highest for h in range(24))
    return HourlyLoad(mean=mean, peak=peak)


@dataclass(frozen=True, slots=True)
class MaintenanceCandidate:
    """An agent to schedule. ``in_service``: it counts in its group's capacity (running
    or degraded); ``blocked``: why it cannot be scheduled (e.g. already in maintenance)."""

    agent_id: str
    tenant_id: str
    agent_type: str
    capacity: int
    p_fail: float | None = None
    health: float | None = None
    in_service: bool = True
    blocked: str | None = None


@dataclass(frozen=True, slots=True)
class Window:
    """An agent's maintenance window, ``[start, end)`` in epoch seconds."""

    agent_id: str
    tenant_id: str
    agent_type: str
    start: float
    end: float
    starts_now: bool
    expected_load: float  # the group's mean demand over the window's hours
    peak_demand: float  # the group's highest peak demand in those hours
    capacity_left: int  # the group's capacity in service left in its tightest hour
    p_fail: float | None
    health: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class Unscheduled:
    agent_id: str
    tenant_id: str
    agent_type: str
    reason: str


@dataclass(slots=True)
class MaintenancePlan:
    windows: list[Window] = field(default_factory=list)
    unscheduled: list[Unscheduled] = field(default_factory=list)


def risk_order(agent: MaintenanceCandidate) -> tuple[float, float, str]:
    """Sort key: highest ``p_fail`` first, then lowest health; unknowns after knowns.

    >>> agents = [MaintenanceCandidate("a", "t", "x", 1, p_fail=0.1, health=90),
    ...           MaintenanceCandidate("b", "t", "x", 1, p_fail=None, health=20),
    ...           MaintenanceCandidate("c", "t", "x", 1, p_fail=0.1, health=50),
    ...           MaintenanceCandidate("d", "t", "x", 1, p_fail=0.7)]
    >>> [a.agent_id for a in sorted(agents, key=risk_order)]
    ['d', 'c', 'a', 'b']
    """
    p_fail = -agent.p_fail if agent.p_fail is not None else 1.0
    health = agent.health if agent.health is not None else math.inf
    return (p_fail, health, agent.agent_id)


def schedule_maintenance(
    agents: Iterable[MaintenanceCandidate],
    profiles: dict[tuple[str, str], HourlyLoad],
    *,
    now: float,
    window_hours: int,
    margin: float,
    horizon_hours: int = 24,
) -> MaintenancePlan:
    """One window per agent within ``horizon_hours`` from ``now`` (see the module's
    docstring); a group without a profile counts no demand (give it
    :meth:`HourlyLoad.flat` of its demand now). Deterministic for the same input.

    >>> busy = HourlyLoad.flat(4.0)
    >>> agents = [MaintenanceCandidate("a1", "t1", "bot", capacity=4),
    ...           MaintenanceCandidate("a2", "t1", "bot", capacity=4)]
    >>> plan = schedule_maintenance(agents, {("t1", "bot"): busy}, now=0.0, window_hours=1,
    ...                             margin=1.0)
    >>> [(w.agent_id, w.start) for w in plan.windows]  # one at a time: a1 now, a2 after
    [('a1', 0.0), ('a2', 3600.0)]
    >>> plan = schedule_maintenance(agents, {("t1", "bot"): busy}, now=0.0, window_hours=1,
    ...                             margin=1.0, horizon_hours=1)
    >>> [w.agent_id for w in plan.windows], plan.unscheduled[0].agent_id
    (['a1'], 'a2')
    >>> print(plan.unscheduled[0].reason)
    no window in the next 1 h keeps t1/bot's capacity at its peak demand × 1.0: its \
agents in service have 8 slots, 4 are out already at the best hour, a2 has 4, the peak \
demand is 4.0 at the quietest hour
    """
    if window_hours < 1:
        raise ValueError(f"window_hours={window_hours} must be at least 1")
    if margin < 0:
        raise ValueError(f"margin={margin} must not be negative")
    agents = list(agents)
    first_slot = math.floor(now / HOUR_S) * HOUR_S
    slots = horizon_hours + window_hours + 1  # windows may end after the horizon
    capacity: dict[tuple[str, str], int] = {}
    for agent in agents:
        group = (agent.tenant_id, agent.agent_type)
        capacity[group] = capacity.get(group, 0) + (agent.capacity if agent.in_service else 0)
    out: dict[tuple[str, str], list[int]] = {group: [0] * slots for group in capacity}
    windows: dict[tuple[str, str], list[tuple[float, int, list[int]]]] = {}
    plan = MaintenancePlan()
    for agent in sorted(agents, key=risk_order):
        group = (agent.tenant_id, agent.agent_type)
        if agent.blocked is not None:
            plan.unscheduled.append(
                Unscheduled(agent.agent_id, agent.tenant_id, agent.agent_type, agent.blocked)
            )
            continue
        profile = profiles.get(group, HourlyLoad.flat(0.0))
        if group not in windows:  # the group's windows, quietest first (earliest on ties)
            windows[group] = _windows_by_load(profile, now, first_slot, window_hours, horizon_hours)
        best: tuple[float, int, list[int]] | None = None
        tightest = (math.inf, 0, 0.0)  # (room short, out, peak) of the least bad hour
        for load, start_slot, touched in windows[group]:
            fits = True
            for slot in touched:
                peak = profile.peak[_hour(first_slot, slot)]
                left = capacity[group] - out[group][slot] - agent.capacity
                short = peak * margin - left
                if short > 0:
                    fits = False
                    if short < tightest[0]:
                        tightest = (short, out[group][slot], peak)
                    break
            if fits:
                best = (load, start_slot, touched)
                break
        if best is None:
            _, already_out, peak = tightest
            plan.unscheduled.append(
                Unscheduled(
                    agent.agent_id,
                    agent.tenant_id,
                    agent.agent_type,
                    f"no window in the next {horizon_hours} h keeps {group[0]}/{group[1]}'s "
                    f"capacity at its peak demand × {margin}: its agents in service have "
                    f"{capacity[group]} slots, {already_out} are out already at the best "
                    f"hour, {agent.agent_id} has {agent.capacity}, the peak demand is "
                    f"{peak:.1f} at the quietest hour",
                )
            )
            continue
        load, start_slot, touched = best
        for slot in touched:
            out[group][slot] += agent.capacity
        start = now if start_slot == 0 else first_slot + start_slot * HOUR_S
        peak = max(profile.peak[_hour(first_slot, s)] for s in touched)
        left = min(capacity[group] - out[group][s] for s in touched)
        plan.windows.append(
            Window(
                agent_id=agent.agent_id,
                tenant_id=agent.tenant_id,
                agent_type=agent.agent_type,
                start=start,
                end=start + window_hours * HOUR_S,
                starts_now=start_slot == 0,
                expected_load=round(load, 3),
                peak_demand=round(peak, 3),
                capacity_left=left,
                p_fail=agent.p_fail,
                health=agent.health,
                reason=(
                    f"the quietest {window_hours} h that fit for {group[0]}/{group[1]} "
                    f"(mean demand {load:.1f}, peak {peak:.1f}); {left} slots stay in "
                    f"service ≥ peak × {margin}"
                    + (f"; at risk: p_fail {agent.p_fail:.2f}" if agent.p_fail else "")
                ),
            )
        )
    return plan


def _windows_by_load(
    profile: HourlyLoad, now: float, first_slot: float, window_hours: int, horizon_hours: int
) -> list[tuple[float, int, list[int]]]:
    """Every window's ``(mean demand, start slot, slots touched)``, quietest first, the
    earliest of equally quiet ones first."""
    found = []
    for start_slot in range(horizon_hours):
        touched = _touched(start_slot, now, first_slot, window_hours)
        load = sum(profile.mean[_hour(first_slot, s)] for s in touched) / len(touched)
        found.append((load, start_slot, touched))
    return sorted(found, key=lambda w: (round(w[0], 9), w[1]))


def _hour(first_slot: float, slot: int) -> int:
    """The UTC hour of day of ``slot``."""
    return int(first_slot // HOUR_S + slot) % 24


def _touched(start_slot: int, now: float, first_slot: float, window_hours: int) -> list[int]:
    """The hourly slots a window starting at ``start_slot`` covers: a window starting now
    (between two whole hours) runs into one slot more.

    >>> _touched(0, 1800.0, 0.0, 2), _touched(3, 1800.0, 0.0, 2), _touched(0, 0.0, 0.0, 2)
    ([0, 1, 2], [3, 4], [0, 1])
    """
    extra = 1 if start_slot == 0 and now > first_slot else 0
    return list(range(start_slot, start_slot + window_hours + extra))
