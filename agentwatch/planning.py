"""Load balancing: a plan of moves of open tasks from overloaded agents to underloaded
ones (``POST /api/v1/operations/optimize-load``; docs/orchestration-plan.md).

An agent's **load** is its open tasks over its capacity (``max_concurrent_tasks``). It is
*overloaded* above ``overloaded_above`` and *underloaded* below ``underloaded_below``. The
plan takes the overloaded agents, most loaded first, and moves their open tasks, lowest
priority and newest first (the least work lost), each to the least loaded agent that

- belongs to the same tenant (a task never crosses tenants),
- has every capability the task requires,
- is running (active, idle or busy) and underloaded before the move,
- has a free slot, and is not overloaded after the move,

until the source is no longer overloaded or no target fits; a task that no agent can take
is listed with why. Nothing here publishes: :func:`move_commands` turns a plan into the
``agents.control`` events (``task_released`` to the source, ``task_assigned`` to the
target), which the targets' shards accept or refuse as for any assignment.

>>> agents = [AgentLoad("a1", "t1", "bot", frozenset({"gpu"}), capacity=4, open_tasks=4),
...           AgentLoad("a2", "t1", "bot", frozenset({"gpu"}), capacity=4, open_tasks=0)]
>>> tasks = [OpenTask(f"k{i}", "t1", "a1", ("gpu",), accepted_at=float(i)) for i in range(4)]
>>> plan = plan_moves(agents, tasks, overloaded_above=0.8, underloaded_below=0.5)
>>> [(m.task_id, m.source, m.target) for m in plan.moves]
[('k3', 'a1', 'a2')]
>>> plan.loads_after
{'a1': 0.75, 'a2': 0.25}
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from schemas.events import TASK_ASSIGNED, TASK_RELEASED
from schemas.models import TASK_PRIORITIES, LifecycleEvent, ScoreComponents, TaskAssignment

#: Lifecycle states in which an agent takes tasks (the shard refuses others).
TAKES_TASKS = frozenset({"active", "idle", "busy"})


@dataclass(frozen=True, slots=True)
class AgentLoad:
    """One agent as the planner sees it: who it is, what it can do, how loaded it is.

    ``open_tasks`` is the count of its open tasks (at least those listed as
    :class:`OpenTask`; the shard's own count may be higher), ``score`` breaks ties
    between equally loaded targets (higher first).
    """

    agent_id: str
    tenant_id: str
    agent_type: str
    capabilities: frozenset[str]
    capacity: int
    open_tasks: int
    state: str = "active"
    score: float = 0.0

    @property
    def load(self) -> float:
        """Open tasks over capacity (``inf`` for an agent of capacity 0 with open tasks).

        >>> AgentLoad("a", "t", "", frozenset(), capacity=4, open_tasks=3).load
        0.75
        """
        if self.capacity <= 0:
            return float("inf") if self.open_tasks else 0.0
        return self.open_tasks / self.capacity


@dataclass(frozen=True, slots=True)
class OpenTask:
    """An accepted task not yet finished, on the agent that runs it."""

    task_id: str
    tenant_id: str
    agent_id: str
    required_capabilities: tuple[str, ...] = ()
    priority: str = "normal"
    accepted_at: float = 0.0
    task_type: str = "default"
    attempt: int = 1
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class Move:
    """One task from ``source`` to ``target``, and why."""

    task_id: str
    tenant_id: str
    source: str
    target: str
    reason: str
    source_load: tuple[float, float]  # before, after
    target_load: tuple[float, float]


@dataclass(slots=True)
class LoadPlan:
    """The moves, the tasks of overloaded agents left where they are (and why), and
    each agent's load before and after the moves."""

    moves: list[Move] = field(default_factory=list)
    stuck: dict[str, str] = field(default_factory=dict)  # task_id → why it cannot move
    loads_before: dict[str, float] = field(default_factory=dict)
    loads_after: dict[str, float] = field(default_factory=dict)
    overloaded: list[str] = field(default_factory=list)
    underloaded: list[str] = field(default_factory=list)


def _rounded(load: float) -> float:
    return round(load, 4) if load != float("inf") else load


def _move_order(task: OpenTask) -> tuple[int, float, str]:
    """Lowest priority first, then the newest (the least work is lost), then by id."""
    rank = TASK_PRIORITIES.index(task.priority) if task.priority in TASK_PRIORITIES else 1
    return (rank, -task.accepted_at, task.task_id)


def plan_moves(
    agents: Iterable[AgentLoad],
    tasks: Iterable[OpenTask],
    *,
    overloaded_above: float,
    underloaded_below: float,
) -> LoadPlan:
    """The moves that bring overloaded agents down without overloading anyone
    (see the module's docstring for the rules); deterministic for the same input.

    >>> a = [AgentLoad("a1", "t1", "bot", frozenset(), capacity=2, open_tasks=2),
    ...      AgentLoad("b1", "t2", "bot", frozenset(), capacity=2, open_tasks=0)]
    >>> plan = plan_moves(a, [OpenTask("k1", "t1", "a1"), OpenTask("k2", "t1", "a1")],
    ...                   overloaded_above=0.8, underloaded_below=0.5)
    >>> plan.moves, plan.stuck["k1"]
    ([], 'no other agent of tenant t1')
    """
    if not 0 < underloaded_below <= overloaded_above:
        raise ValueError(
            f"underloaded_below={underloaded_below} must be above 0 and not above "
            f"overloaded_above={overloaded_above}; set the thresholds so"
        )
    by_id = {a.agent_id: a for a in agents}
    open_count = {a.agent_id: a.open_tasks for a in by_id.values()}
    capacity = {a.agent_id: a.capacity for a in by_id.values()}

    def load(agent_id: str) -> float:  # AgentLoad.load of the counts as the plan moves them
        slots, count = capacity[agent_id], open_count[agent_id]
        if slots <= 0:
            return float("inf") if count else 0.0
        return count / slots

    def takes_one_more(agent_id: str) -> bool:
        after = open_count[agent_id] + 1
        return (
            load(agent_id) < underloaded_below
            and after <= capacity[agent_id]
            and after / capacity[agent_id] <= overloaded_above
        )

    plan = LoadPlan(loads_before={a: _rounded(load(a)) for a in sorted(by_id)})
    plan.overloaded = sorted(
        (a for a in by_id if load(a) > overloaded_above), key=lambda a: (-load(a), a)
    )
    plan.underloaded = sorted(
        a for a in by_id if by_id[a].state in TAKES_TASKS and load(a) < underloaded_below
    )
    targets = _Targets(by_id, load, takes_one_more)
    why_not = _Refusals(by_id.values(), underloaded_below)
    tasks_of: dict[str, list[OpenTask]] = {}
    for task in tasks:
        tasks_of.setdefault(task.agent_id, []).append(task)
    for source in plan.overloaded:
        for task in sorted(tasks_of.get(source, ()), key=_move_order):
            if load(source) <= overloaded_above:
                break
            target = targets.best(task.tenant_id, frozenset(task.required_capabilities))
            if target is None:
                plan.stuck[task.task_id] = why_not(task, by_id[source])
                continue
            before_source, before_target = load(source), load(target)
            open_count[source] -= 1
            open_count[target] += 1
            targets.took_one(target)
            plan.moves.append(
                Move(
                    task_id=task.task_id,
                    tenant_id=task.tenant_id,
                    source=source,
                    target=target,
                    reason=(
                        f"{source} is overloaded ({before_source:.0%} of capacity "
                        f"{capacity[source]}, above {overloaded_above:.0%}); {target} has "
                        f"{before_target:.0%} (below {underloaded_below:.0%})"
                        + (
                            f" and the capabilities {', '.join(task.required_capabilities)}"
                            if task.required_capabilities
                            else ""
                        )
                    ),
                    source_load=(_rounded(before_source), _rounded(load(source))),
                    target_load=(_rounded(before_target), _rounded(load(target))),
                )
            )
    touched = {m.source for m in plan.moves} | {m.target for m in plan.moves}
    plan.loads_after = {a: _rounded(load(a)) for a in sorted(touched)}
    return plan


class _Targets:
    """The agents that may take one more task, per tenant and capability set, each set's
    least loaded first (ties: higher score, then id): a task looks at the few sets that
    hold its capabilities, not at every agent."""

    def __init__(self, by_id: dict[str, AgentLoad], load, takes_one_more) -> None:
        self._by_id, self._load, self._takes_one_more = by_id, load, takes_one_more
        self._heaps: dict[str, dict[frozenset[str], list]] = {}
        for agent in by_id.values():
            if agent.state in TAKES_TASKS and takes_one_more(agent.agent_id):
                self._push(agent)

    def _push(self, agent: AgentLoad) -> None:
        heap = self._heaps.setdefault(agent.tenant_id, {}).setdefault(agent.capabilities, [])
        heapq.heappush(heap, (self._load(agent.agent_id), -agent.score, agent.agent_id))

    def best(self, tenant_id: str, needed: frozenset[str]) -> str | None:
        best = None
        for capabilities, heap in self._heaps.get(tenant_id, {}).items():
            if needed <= capabilities and heap and (best is None or heap[0] < best):
                best = heap[0]
        return best[2] if best is not None else None

    def took_one(self, agent_id: str) -> None:
        """``agent_id`` (the best of its set) took a task: back in its place, if it may
        take another."""
        agent = self._by_id[agent_id]
        heapq.heappop(self._heaps[agent.tenant_id][agent.capabilities])
        if self._takes_one_more(agent_id):
            self._push(agent)


class _Refusals:
    """Why no agent may take a task (counted once per tenant and capability set)."""

    def __init__(self, agents: Iterable[AgentLoad], underloaded_below: float) -> None:
        self._of_tenant: dict[str, list[AgentLoad]] = {}
        for agent in agents:
            self._of_tenant.setdefault(agent.tenant_id, []).append(agent)
        self._capable: dict[tuple[str, frozenset[str]], int] = {}
        self._underloaded_below = underloaded_below

    def __call__(self, task: OpenTask, source: AgentLoad) -> str:
        tenant, needed = task.tenant_id, frozenset(task.required_capabilities)
        others = len(self._of_tenant.get(tenant, ())) - 1
        if others <= 0:
            return f"no other agent of tenant {tenant}"
        key = (tenant, needed)
        if key not in self._capable:
            self._capable[key] = sum(needed <= a.capabilities for a in self._of_tenant[tenant])
        capable = self._capable[key] - (needed <= source.capabilities)
        listed = ", ".join(sorted(needed))
        if capable <= 0:
            return f"no other agent of tenant {tenant} has the capabilities {listed}"
        with_capabilities = f" with the capabilities {listed}" if needed else ""
        return (
            f"no running agent of tenant {tenant}{with_capabilities} is below "
            f"{self._underloaded_below:.0%} of its capacity with a slot to spare"
        )


@dataclass(frozen=True, slots=True)
class TargetScore:
    """What the target's latest assignment score says (``assignment_scores_latest``):
    written into the ``task_assigned`` of a move, as the assignment route writes its own."""

    score: float
    components: ScoreComponents
    weights: dict[str, float]


def move_commands(
    plan: LoadPlan,
    tasks: Sequence[OpenTask],
    scores: dict[str, TargetScore],
    *,
    actor: str,
    assigned_by: str,
    now: float,
) -> list[tuple[dict, str]]:
    """The ``agents.control`` events that carry out ``plan``, as ``(event, key)`` pairs for
    :meth:`api.publisher.EventPublisher.publish_many`: per move, a ``task_released`` keyed
    by the source (payload ``{task_id, reason}``), then a ``task_assigned`` keyed by the
    target (a :class:`~schemas.models.TaskAssignment` with ``attempt + 1`` and
    ``moved_from``).

    >>> agents = [AgentLoad("a1", "t1", "bot", frozenset(), 1, 1),
    ...           AgentLoad("a2", "t1", "bot", frozenset(), 2, 0)]
    >>> tasks = [OpenTask("k1", "t1", "a1")]
    >>> plan = plan_moves(agents, tasks, overloaded_above=0.8, underloaded_below=0.5)
    >>> plan.moves[0].target
    'a2'
    >>> parts = ScoreComponents(performance=1, cost=1, availability=1, sla=1)
    >>> events = move_commands(plan, tasks, {"a2": TargetScore(1.0, parts, {})},
    ...                        actor="ops", assigned_by="api", now=1.8e9)
    >>> [(e["type"], key) for e, key in events]
    [('task_released', 'a1'), ('task_assigned', 'a2')]
    >>> events[1][0]["payload"]["attempt"], events[1][0]["payload"]["moved_from"]
    (2, 'a1')
    """
    by_id = {t.task_id: t for t in tasks}
    events: list[tuple[dict, str]] = []
    for move in plan.moves:
        task = by_id[move.task_id]
        target = scores.get(move.target)
        if target is None:
            nothing = ScoreComponents(performance=0, cost=0, availability=0, sla=0)
            target = TargetScore(0.0, nothing, {})
        assignment = TaskAssignment(
            task_id=task.task_id,
            task_type=task.task_type,
            priority=task.priority,
            required_capabilities=list(task.required_capabilities),
            deadline=task.deadline,
            attempt=min(task.attempt + 1, 1000),
            score=min(max(target.score, 0.0), 1.0),
            components=target.components,
            weights=target.weights,
            assigned_by=assigned_by,
            moved_from=move.source,
        )
        released = LifecycleEvent(
            type=TASK_RELEASED,
            agent_id=move.source,
            tenant_id=move.tenant_id,
            actor=actor,
            timestamp=now,
            payload={"task_id": task.task_id, "reason": move.reason},
        )
        assigned = LifecycleEvent(
            type=TASK_ASSIGNED,
            agent_id=move.target,
            tenant_id=move.tenant_id,
            actor=actor,
            timestamp=now,
            payload=assignment.model_dump(mode="json"),
        )
        events.append((released.model_dump(mode="json"), move.source))
        events.append((assigned.model_dump(mode="json"), move.target))
    return events
