"""Assignment policies on a heterogeneous fleet: task success, completion time, SLA misses.

    .venv/bin/python bench/assignment.py --agents 200 --tasks 20000 --seed 7 \\
        --out bench/results/assignment.json

A deterministic discrete-event simulation over :class:`agentwatch.taskworld.TaskWorld`:
the same fleet and the same task stream (Poisson arrivals with the daily load shape,
one load cycle per run unless ``--day``) for every policy, and the same luck per task
(common random numbers), so differences between policies are the policies'.

Each arriving task is offered to the policy (``choose(task, view, now)``), which names an
agent or ``None``. An agent must declare the task's capabilities and resources, be in the
task's tenant and have a free slot (running < ``max_concurrent_tasks``): a policy that
names another is a bug and stops the run. ``None`` queues the task: a queued task is
offered again (highest priority, then oldest, first) whenever a slot frees, and expires
unplaced at its deadline. The agent runs the task; :meth:`TaskWorld.outcome` says how it
ends given the agent's hidden skill, speed and load (running tasks, this one included);
the policy then ``observe``-s the result. Policies that define ``heartbeat(beats, now)``
get every agent's heartbeat every ``--heartbeat-interval`` seconds (metrics that follow
load and the hidden traits: :meth:`TaskWorld.heartbeat_metrics`).

Metrics, per policy, over all submitted tasks:

- **success rate**: tasks that ended in success / tasks submitted (a failure or an expiry
  counts against it);
- **mean completion time**: arrival → successful end, seconds (queue wait included), over
  successful tasks; and its p95;
- **SLA misses**: tasks that ended after their deadline (success or not) or expired
  unplaced / tasks submitted (as the shard counts SLA: finished by the deadline);
- **utilisation**: busy slot-seconds / (total slots × the span from first arrival to last
  end); and the cost of the run (Σ duration × the agent's ``cost_per_hour``).

Policies: ``random``, ``round_robin`` and ``least_loaded`` are the baselines (each
respects capabilities, resources, tenant and capacity, as a fair scheduler would);
``oracle`` is NOT ours: it reads the world's hidden skills and speeds, an upper bound
that shows the harness can tell policies apart; ``example_learner`` is NOT ours either: a
few lines that learn from outcomes only, to show the world can be learned within one run.
``agentwatch`` is the slot for the real system's learner and chooser (see
:func:`agentwatch_policy`).

Single-threaded and CPU-bound; wall times are noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Protocol, runtime_checkable

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentwatch.assignment import NoFit  # noqa: E402
from agentwatch.directory import Directory  # noqa: E402
from agentwatch.orchestration import TaskAssigned, TaskFinished  # noqa: E402
from agentwatch.settings import Settings  # noqa: E402
from agentwatch.shard import AgentRegistration, ShardOutput, ShardState  # noqa: E402
from agentwatch.taskworld import (  # noqa: E402
    DAY_S,
    DURATION_NOISE,
    AgentProfile,
    Task,
    TaskWorld,
)
from api.assign import Assigner, assignment_of, task_of  # noqa: E402
from schemas.events import (  # noqa: E402
    CONTROL_CHANNEL,
    REGISTERED,
    STATE_CHANNEL,
    TASK_ASSIGNED,
    TASK_CHANGED,
)
from schemas.heartbeats import parse_heartbeats  # noqa: E402
from schemas.models import LifecycleEvent, TaskRequest  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "assignment.json"
#: The order of priorities when queued tasks are offered again (highest first).
PRIORITY_RANK = {"critical": 0, "high": 1, "normal": 2, "low": 3}
#: Queued tasks offered again per freed slot, at most (bounds the cost of a long queue).
REOFFER_LIMIT = 64
#: Epoch seconds of the run's time 0: heartbeats and outcome events carry this + ``now``, so
#: they are valid contract messages (``schemas.models.Heartbeat``, ``LifecycleEvent``).
BENCH_EPOCH_S = 1_800_000_000.0


# --- what a policy sees and does ---------------------------------------------------------


class FleetView:
    """What a scheduler may know: every agent's registration and its running tasks now.

    Never the hidden traits. ``eligible(task)`` lists the agents a fair scheduler may
    choose (capabilities, resources, tenant, a free slot), in the fleet's order.
    """

    def __init__(self, world: TaskWorld) -> None:
        self.agents: list[AgentProfile] = world.agents
        self.by_id = {a.agent_id: a for a in world.agents}
        self.running: dict[str, int] = {a.agent_id: 0 for a in world.agents}
        self._world = world
        self._candidates: dict[tuple, list[AgentProfile]] = {}

    def candidates(self, task: Task) -> list[AgentProfile]:
        """Agents that can do the task and are in its tenant (free or not)."""
        key = (task.task_type, task.required_capabilities, task.tenant_id)
        found = self._candidates.get(key)
        if found is None:
            found = [
                a
                for a in self.agents
                if a.tenant_id == task.tenant_id and self._world.can_do(a.index, task)
            ]
            self._candidates[key] = found
        return found

    def eligible(self, task: Task) -> list[AgentProfile]:
        """Agents that can do the task, in its tenant, with a free slot now."""
        running = self.running
        return [a for a in self.candidates(task) if running[a.agent_id] < a.max_concurrent_tasks]

    def free_slots(self, agent_id: str) -> int:
        return self.by_id[agent_id].max_concurrent_tasks - self.running[agent_id]


@dataclass(frozen=True, slots=True)
class TaskResult:
    """How a task ended, as a policy observes it (an agent's TaskOutcome, with times)."""

    task: Task
    agent_id: str | None  # None: expired unplaced
    success: bool
    started_s: float | None
    finished_s: float
    duration_s: float
    running_at_start: int
    reason: str = ""

    @property
    def sla_met(self) -> bool:
        return self.agent_id is not None and self.finished_s <= self.task.deadline_s

    def outcome_event(self) -> dict:
        """The agent's report of this result as it would be on ``agents.events``:
        ``task_completed``/``task_failed`` with a ``TaskOutcome`` payload (for a learner
        that takes the real events; an expired task has no agent and no event)."""
        if self.agent_id is None:
            raise ValueError(f"{self.task.task_id} expired unplaced: no agent reported it")
        return {
            "type": "task_completed" if self.success else "task_failed",
            "agent_id": self.agent_id,
            "tenant_id": self.task.tenant_id,
            "actor": self.agent_id,
            "timestamp": BENCH_EPOCH_S + self.finished_s,
            "payload": {
                "task_id": self.task.task_id,
                "task_type": self.task.task_type,
                "duration_s": self.duration_s,
                "reason": self.reason,
            },
        }


@runtime_checkable
class Policy(Protocol):
    """An assignment policy. ``heartbeat(beats, now)`` is optional: define it to get every
    agent's heartbeat every interval (contract heartbeats, ``schemas.models.Heartbeat``,
    timestamped ``BENCH_EPOCH_S + now``). ``TaskResult.outcome_event()`` and
    ``Task.request()`` give a task's events and assign request in the contract's shapes."""

    name: str

    def choose(self, task: Task, view: FleetView, now: float) -> str | None:
        """The agent to run ``task`` now, or None to queue it."""
        ...

    def observe(self, result: TaskResult) -> None:
        """Learn from a task's end (success or failure, how long it ran)."""
        ...


class RandomPolicy:
    """Baseline: any eligible agent, uniformly at random (seeded)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def choose(self, task: Task, view: FleetView, now: float) -> str | None:
        eligible = view.eligible(task)
        return self._rng.choice(eligible).agent_id if eligible else None

    def observe(self, result: TaskResult) -> None:
        pass


class RoundRobinPolicy:
    """Baseline: the candidates of a task's kind take turns; one without a free slot is
    skipped (its turn passes to the next)."""

    name = "round_robin"

    def __init__(self) -> None:
        self._next: dict[tuple, int] = {}

    def choose(self, task: Task, view: FleetView, now: float) -> str | None:
        candidates = view.candidates(task)
        if not candidates:
            return None
        key = (task.task_type, task.tenant_id)
        start = self._next.get(key, 0)
        for step in range(len(candidates)):
            agent = candidates[(start + step) % len(candidates)]
            if view.running[agent.agent_id] < agent.max_concurrent_tasks:
                self._next[key] = (start + step + 1) % len(candidates)
                return agent.agent_id
        return None

    def observe(self, result: TaskResult) -> None:
        pass


class LeastLoadedPolicy:
    """Baseline: the eligible agent with the lowest utilisation (running / capacity), then
    the most free slots, then the fleet's order."""

    name = "least_loaded"

    def choose(self, task: Task, view: FleetView, now: float) -> str | None:
        eligible = view.eligible(task)
        if not eligible:
            return None
        best = min(
            eligible,
            key=lambda a: (
                view.running[a.agent_id] / a.max_concurrent_tasks,
                -(a.max_concurrent_tasks - view.running[a.agent_id]),
            ),
        )
        return best.agent_id

    def observe(self, result: TaskResult) -> None:
        pass


class OraclePolicy:
    """NOT OURS — an upper bound: reads the world's hidden traits. Chooses the eligible
    agent with the best P(success) × P(done by the deadline) × √(estimate / median
    duration), at the load it would have with the task (the duration is lognormal about
    the agent's hidden median): likely to succeed, in time, and quickly."""

    name = "oracle"

    def __init__(self, world: TaskWorld) -> None:
        self._world = world

    def choose(self, task: Task, view: FleetView, now: float) -> str | None:
        world, best, best_value = self._world, None, -math.inf
        left = max(task.deadline_s - now, 1e-3)
        for agent in view.eligible(task):
            running = view.running[agent.agent_id] + 1
            p = world.success_probability(agent.index, task.task_type, running)
            median = world.expected_duration_s(agent.index, task.task_type, running)
            z = math.log(left / median) / DURATION_NOISE
            in_time = 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
            value = p * in_time * (task.estimated_duration_s / median) ** 0.5  # faster is better
            if value > best_value:
                best, best_value = agent.agent_id, value
        return best

    def observe(self, result: TaskResult) -> None:
        pass


class ExampleLearner:
    """NOT OURS — a reference learner in a few lines, to show the world can be learned
    within one run from outcomes alone (it never reads the hidden traits): per agent and
    task type, a success rate shrunk towards the agent's overall one (itself shrunk towards
    ``prior_success``) and a smoothed duration; it chooses the eligible agent with the best
    p × √(estimate / duration) − ``load_weight`` × utilisation² (after taking the task)."""

    name = "example_learner"

    def __init__(
        self, prior_weight: float = 4.0, prior_success: float = 0.8, load_weight: float = 0.6
    ) -> None:
        self.prior_weight = prior_weight
        self.prior_success = prior_success
        self.load_weight = load_weight
        self._outcomes: dict[tuple[str, str], list[float]] = {}  # (agent, type) → [n, ok]
        self._by_agent: dict[str, list[float]] = {}
        self._duration: dict[tuple[str, str], float] = {}

    def choose(self, task: Task, view: FleetView, now: float) -> str | None:
        best, best_value, weight = None, -math.inf, self.prior_weight
        for agent in view.eligible(task):
            key = (agent.agent_id, task.task_type)
            n_agent, ok_agent = self._by_agent.get(agent.agent_id, (0, 0))
            p_agent = (ok_agent + self.prior_success * weight) / (n_agent + weight)
            n, ok = self._outcomes.get(key, (0, 0))
            p = (ok + p_agent * weight) / (n + weight)
            duration = self._duration.get(key, task.estimated_duration_s)
            load = (view.running[agent.agent_id] + 1) / agent.max_concurrent_tasks
            value = p * math.sqrt(task.estimated_duration_s / duration)
            value -= self.load_weight * load**2
            if value > best_value:
                best, best_value = agent.agent_id, value
        return best

    def observe(self, result: TaskResult) -> None:
        if result.agent_id is None:
            return
        key = (result.agent_id, result.task.task_type)
        for table, k in ((self._outcomes, key), (self._by_agent, result.agent_id)):
            n, ok = table.get(k, (0, 0))
            table[k] = [n + 1, ok + result.success]
        if result.success:
            before = self._duration.get(key, result.task.estimated_duration_s)
            self._duration[key] = 0.8 * before + 0.2 * result.duration_s


class PolicyUnavailable(RuntimeError):
    """A policy that cannot run here; the message says why."""


class AgentwatchPolicy:
    """OURS — the real system's learner and chooser, in process, without Kafka.

    The agents are registered with, and every heartbeat, assignment and outcome goes
    through, one dataflow shard (:class:`agentwatch.shard.ShardState`: the lifecycle table,
    the detector, the security score, and the orchestration component with its River
    models); what the shard publishes (``status_changed``, ``task_changed``,
    ``AssignmentScore`` records, security scores) is folded, as the API folds what it reads
    from the topics, into the API's registry (:class:`agentwatch.directory.Directory`) and
    its assignment fleet (:class:`api.assign.Assigner`, whose :class:`~agentwatch.assignment.Fleet`
    chooses with the filters and the weighted score). A choice becomes a ``task_assigned``
    the shard accepts or refuses; an outcome is the agent's ``task_completed`` /
    ``task_failed``. It sees what the API would see — registrations, heartbeats, outcomes —
    never ``world.traits``. The settings are the defaults (weights 40/30/20/10)."""

    name = "agentwatch"

    def __init__(self, world: TaskWorld, settings: Settings | None = None) -> None:
        self.settings = settings or Settings(_env_file=None)
        self.shard = ShardState.new(self.settings)
        self.directory = Directory()
        self.assigner = Assigner(self.settings, publisher=None, name="bench")
        self.assigner.projection = SimpleNamespace(directory=self.directory)
        self.refused = 0
        for agent in world.agents:
            event = LifecycleEvent(
                type=REGISTERED, agent_id=agent.agent_id, tenant_id=agent.tenant_id,
                actor="bench", timestamp=BENCH_EPOCH_S, payload=agent.registration(),
            )  # fmt: skip
            self.directory.apply(event.model_dump())  # (the API reads agents.control too)
            self.assigner.on_message(CONTROL_CHANNEL, event.model_dump())
            self._fold(self.shard.apply(AgentRegistration.from_event(event)))

    def _fold(self, out: ShardOutput) -> None:
        """What the API's projection and assigner would fold of the shard's output."""
        on_message = self.assigner.on_message
        for event in out.events:
            self.directory.apply(event)
            on_message(STATE_CHANNEL, event)
        for score in out.scores:
            self.directory.apply_score(score)
            on_message("security", score)
        for record in out.assignment_scores:
            on_message("assignment_scores", record)

    def heartbeat(self, beats: list[dict], now: float) -> None:
        batch, rejected = parse_heartbeats([orjson.dumps(beat) for beat in beats])
        if rejected:
            raise RuntimeError(f"the bench made invalid heartbeats: {rejected[:3]}")
        self._fold(self.shard.observe(batch, BENCH_EPOCH_S + now))

    def choose(self, task: Task, view: FleetView, now: float) -> str | None:
        body = task.request()  # (deadline and estimate on the bench's clock, from time 0)
        request = TaskRequest.model_validate({**body, "deadline": BENCH_EPOCH_S + body["deadline"]})
        settings = self.settings
        choice = self.assigner.fleet.choose(
            task_of(request, task.tenant_id), self.assigner.weights.model_dump(),
            settings.orchestration_candidates, settings.orchestration_min_security_score,
        )  # fmt: skip
        if isinstance(choice, NoFit):
            return None
        chosen = choice.chosen
        assignment = assignment_of(request, task.task_id, 1, chosen, self.assigner.weights, "bench")
        event = LifecycleEvent(
            type=TASK_ASSIGNED, agent_id=chosen.agent_id, tenant_id=task.tenant_id,
            actor="bench", timestamp=BENCH_EPOCH_S + now, payload=assignment.model_dump(),
        )  # fmt: skip
        out = self.shard.apply(TaskAssigned.from_event(event))
        self._fold(out)
        verdicts = [e["payload"]["status"] for e in out.events if e["type"] == TASK_CHANGED]
        if verdicts != ["accepted"]:
            self.refused += 1
            return None
        return chosen.agent_id

    def observe(self, result: TaskResult) -> None:
        if result.agent_id is None:
            return
        event = LifecycleEvent.model_validate(result.outcome_event())
        self._fold(self.shard.apply(TaskFinished.from_event(event)))


def agentwatch_policy(world: TaskWorld, seed: int) -> Policy:
    """Our policy: the real system's learner (the dataflow shard) and chooser (the API's
    fleet); see :class:`AgentwatchPolicy`."""
    return AgentwatchPolicy(world)


#: Policies by name: factories of (world, seed). ``oracle`` is not ours (an upper bound).
POLICIES: dict[str, Callable[[TaskWorld, int], Policy]] = {
    "random": lambda world, seed: RandomPolicy(seed),
    "round_robin": lambda world, seed: RoundRobinPolicy(),
    "least_loaded": lambda world, seed: LeastLoadedPolicy(),
    "agentwatch": agentwatch_policy,
    "example_learner": lambda world, seed: ExampleLearner(),
    "oracle": lambda world, seed: OraclePolicy(world),
}
#: Policies that are not agentwatch's (labelled so in the table).
NOT_OURS = {
    "example_learner": "reference: learns from outcomes in a few lines (not ours)",
    "oracle": "upper bound: knows the hidden skills (not ours)",
}


# --- the simulation ------------------------------------------------------------------------


@dataclass
class PolicyResult:
    """One policy's figures over one run."""

    policy: str
    submitted: int
    succeeded: int
    failed: int
    expired: int
    success_rate: float
    mean_completion_s: float | None
    p95_completion_s: float | None
    mean_wait_s: float
    sla_misses: int
    sla_miss_rate: float
    utilisation: float
    cost: float
    wall_s: float
    note: str = ""
    by_type: dict[str, dict[str, float]] = field(default_factory=dict)


_FINISH, _HEARTBEAT, _ARRIVAL = 0, 1, 2  # at equal times: free slots first, then arrivals


def run_policy(
    world: TaskWorld,
    tasks: Sequence[Task],
    policy: Policy,
    *,
    heartbeat_interval_s: float = 30.0,
    progress: Callable[[int], None] | None = None,
) -> PolicyResult:
    """Run ``tasks`` through ``policy`` on ``world``; deterministic for the same inputs."""
    started_wall = time.perf_counter()
    view = FleetView(world)
    events: list[tuple[float, int, int, object]] = []
    order = itertools.count()
    for task in tasks:
        heapq.heappush(events, (task.arrival_s, _ARRIVAL, next(order), task))
    wants_heartbeats = callable(getattr(policy, "heartbeat", None))
    if wants_heartbeats and tasks:
        heapq.heappush(events, (tasks[0].arrival_s, _HEARTBEAT, next(order), None))
    beat_rng = np.random.default_rng([world.seed, 4])
    completed = {a.agent_id: 0 for a in world.agents}
    failed_count = {a.agent_id: 0 for a in world.agents}
    queue: list[tuple[int, float, int, Task]] = []  # (priority rank, arrival, index, task)
    results: list[TaskResult] = []
    busy_slot_s = 0.0
    outstanding = len(tasks)

    def place(task: Task, now: float) -> bool:
        nonlocal busy_slot_s
        agent_id = policy.choose(task, view, now)
        if agent_id is None:
            return False
        agent = view.by_id.get(agent_id)
        if agent is None or agent not in view.candidates(task):
            raise RuntimeError(
                f"policy {policy.name} chose {agent_id!r} for {task.task_id} "
                f"({task.task_type}, tenant {task.tenant_id}): it cannot take that task"
            )
        if view.running[agent_id] >= agent.max_concurrent_tasks:
            raise RuntimeError(
                f"policy {policy.name} chose {agent_id} for {task.task_id} but it is at "
                f"capacity ({agent.max_concurrent_tasks}): policies must respect capacity"
            )
        view.running[agent_id] += 1
        running = view.running[agent_id]
        outcome = world.outcome(task, agent.index, running)
        busy_slot_s += outcome.duration_s
        result = TaskResult(
            task,
            agent_id,
            outcome.success,
            now,
            now + outcome.duration_s,
            outcome.duration_s,
            running,
            outcome.reason,
        )
        heapq.heappush(events, (result.finished_s, _FINISH, next(order), result))
        return True

    def finish(result: TaskResult) -> None:
        nonlocal outstanding
        results.append(result)
        policy.observe(result)
        outstanding -= 1
        if progress is not None:
            progress(len(results))

    while events:
        now, kind, _, item = heapq.heappop(events)
        if kind == _ARRIVAL:
            if not place(item, now):
                rank = PRIORITY_RANK[item.priority]
                heapq.heappush(queue, (rank, item.arrival_s, item.index, item))
        elif kind == _FINISH:
            view.running[item.agent_id] -= 1
            (completed if item.success else failed_count)[item.agent_id] += 1
            finish(item)
            _reoffer(queue, now, place, finish, one_slot=True)
        elif kind == _HEARTBEAT:
            _send_heartbeats(world, view, policy, beat_rng, now, completed, failed_count)
            _reoffer(queue, now, place, finish, one_slot=False)
            if outstanding > 0:  # every task ends or expires by its deadline: this stops
                heapq.heappush(events, (now + heartbeat_interval_s, _HEARTBEAT, next(order), None))
    for _, _, _, task in queue:  # still queued when everything else ended
        finish(TaskResult(task, None, False, None, task.deadline_s, 0.0, 0, "expired unplaced"))
    return _summarise(policy.name, world, results, busy_slot_s, time.perf_counter() - started_wall)


def _reoffer(
    queue: list[tuple[int, float, int, Task]],
    now: float,
    place: Callable[[Task, float], bool],
    finish: Callable[[TaskResult], None],
    *,
    one_slot: bool,
) -> None:
    """Offer queued tasks again (highest priority, oldest first); tasks past their deadline
    expire unplaced. ``one_slot``: a task ended, freeing one slot — stop at the first
    placement; else (a heartbeat) offer up to :data:`REOFFER_LIMIT`, for policies that
    deferred a task while slots were free."""
    kept: list[tuple[int, float, int, Task]] = []
    offered = 0
    while queue and offered < REOFFER_LIMIT:
        entry = heapq.heappop(queue)
        task = entry[3]
        if task.deadline_s < now:
            finish(TaskResult(task, None, False, None, now, 0.0, 0, "expired unplaced"))
            continue
        offered += 1
        if place(task, now):
            if one_slot:
                break
            continue
        kept.append(entry)
    for entry in kept:
        heapq.heappush(queue, entry)


def _send_heartbeats(
    world: TaskWorld,
    view: FleetView,
    policy: Policy,
    rng: np.random.Generator,
    now: float,
    completed: dict[str, int],
    failed: dict[str, int],
) -> None:
    active = np.array([view.running[a.agent_id] for a in world.agents])
    metrics = world.heartbeat_metrics(active, rng)
    columns = {name: column.tolist() for name, column in metrics.items()}
    beats = [
        {
            "agent_id": agent.agent_id,
            "tenant_id": agent.tenant_id,
            "timestamp": BENCH_EPOCH_S + now,
            **{name: column[i] for name, column in columns.items()},
            "disk_usage": 30.0,
            "network_latency": 10.0,
            "completed_tasks": completed[agent.agent_id],
            "failed_tasks": failed[agent.agent_id],
            "uptime_seconds": now,
            "bytes_out": 0,
            "status": "active",
        }
        for i, agent in enumerate(world.agents)
    ]
    policy.heartbeat(beats, now)


def _summarise(
    name: str, world: TaskWorld, results: list[TaskResult], busy_slot_s: float, wall_s: float
) -> PolicyResult:
    submitted = len(results)
    succeeded = [r for r in results if r.success]
    expired = sum(r.agent_id is None for r in results)
    completion = sorted(r.finished_s - r.task.arrival_s for r in succeeded)
    waits = [r.started_s - r.task.arrival_s for r in results if r.started_s is not None]
    sla_misses = sum(not r.sla_met for r in results)
    first = min((r.task.arrival_s for r in results), default=0.0)
    last = max((r.finished_s for r in results), default=0.0)
    slots = float(world.capacity.sum())
    cost_per_s = {a.agent_id: a.resources.get("cost_per_hour", 0.0) / 3600 for a in world.agents}
    cost = sum(r.duration_s * cost_per_s[r.agent_id] for r in results if r.agent_id)
    by_type: dict[str, dict[str, float]] = {}
    for task_type in world.task_types:
        mine = [r for r in results if r.task.task_type == task_type]
        if mine:
            by_type[task_type] = {
                "submitted": len(mine),
                "success_rate": round(sum(r.success for r in mine) / len(mine), 4),
                "sla_miss_rate": round(sum(not r.sla_met for r in mine) / len(mine), 4),
            }
    return PolicyResult(
        policy=name,
        submitted=submitted,
        succeeded=len(succeeded),
        failed=submitted - len(succeeded) - expired,
        expired=expired,
        success_rate=round(len(succeeded) / submitted, 4) if submitted else 0.0,
        mean_completion_s=round(statistics.fmean(completion), 2) if completion else None,
        p95_completion_s=(
            round(completion[min(len(completion) - 1, int(0.95 * len(completion)))], 2)
            if completion
            else None
        ),
        mean_wait_s=round(statistics.fmean(waits), 2) if waits else 0.0,
        sla_misses=sla_misses,
        sla_miss_rate=round(sla_misses / submitted, 4) if submitted else 0.0,
        utilisation=round(busy_slot_s / (slots * (last - first)), 4) if last > first else 0.0,
        cost=round(cost, 2),
        wall_s=round(wall_s, 2),
        note=NOT_OURS.get(name, ""),
        by_type=by_type,
    )


# --- the run -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """A run's parameters (the CLI's options)."""

    agents: int = 200
    tasks: int = 20_000
    seed: int = 7
    load: float = 0.5  # mean offered load / total capacity, when duration_s is not given
    duration_s: float | None = None
    day_s: float | None = None  # one load cycle per run by default
    heartbeat_interval_s: float = 30.0
    tenants: int = 1

    def resolve(self, world: TaskWorld) -> tuple[float, float, float]:
        """(rate per second, duration, day) of the task stream."""
        if self.duration_s is not None:
            duration = self.duration_s
        else:
            duration = self.tasks / (self.load / world.mean_capacity_load(1.0))
        rate = self.tasks / duration
        return rate, duration, self.day_s or duration


def build(config: BenchConfig) -> tuple[TaskWorld, list[Task], float, float, float]:
    """The world and its task stream for ``config``: (world, tasks, rate, duration, day)."""
    tenant_ids = [f"tenant-{i % config.tenants:03d}" for i in range(config.agents)]
    world = TaskWorld(config.agents, seed=config.seed, tenant_ids=tenant_ids)
    rate, duration, day = config.resolve(world)
    tasks = list(world.tasks(rate, count=config.tasks, day_s=day))  # ends near `duration`
    return world, tasks, rate, duration, day


def run_bench(
    config: BenchConfig,
    policies: Sequence[str],
    *,
    show_progress: bool = True,
) -> dict:
    """Every named policy over the same world and stream; the JSON-ready result."""
    world, tasks, rate, duration, day = build(config)
    rows: list[PolicyResult] = []
    skipped: dict[str, str] = {}
    for name in policies:
        try:
            policy = POLICIES[name](world, config.seed)
        except PolicyUnavailable as exc:
            skipped[name] = str(exc)
            print(f"skipped {name}: {exc}", file=sys.stderr)
            continue
        with _progress(name, len(tasks), enabled=show_progress) as tick:
            rows.append(
                run_policy(
                    world,
                    tasks,
                    policy,
                    heartbeat_interval_s=config.heartbeat_interval_s,
                    progress=tick,
                )
            )
    flaky = sum(t.flaky for t in world.traits)
    return {
        "config": asdict(config),
        "stream": {
            "tasks": len(tasks),
            "rate_per_s": round(rate, 4),
            "duration_s": round(duration, 1),
            "day_s": round(day, 1),
            "offered_load": round(world.mean_capacity_load(rate), 3),
            "slots": int(world.capacity.sum()),
            "agent_types": {
                kind: sum(a.agent_type == kind for a in world.agents) for kind in world.agent_types
            },
            "task_types": {
                kind: sum(t.task_type == kind for t in tasks) for kind in world.task_types
            },
            "failure_prone_agents": flaky,
        },
        "results": [asdict(row) for row in rows],
        "skipped": skipped,
        "machine_note": "single-threaded; wall_s is noisy on a shared 2-core machine",
    }


class _progress:
    """A rich progress bar on stderr per policy (a no-op when quiet)."""

    def __init__(self, name: str, total: int, *, enabled: bool) -> None:
        self.enabled, self.name, self.total = enabled, name, total

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda done: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self._bar = Progress(
            f"[bold]{self.name:>12}[/]",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        task = self._bar.add_task(self.name, total=self.total)
        self._bar.start()
        step = max(1, self.total // 200)

        def tick(done: int) -> None:
            if done % step == 0 or done == self.total:
                self._bar.update(task, completed=done)

        return tick

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.stop()


def markdown_table(result: dict) -> str:
    """The results as a markdown table (docs/benchmarks.md)."""
    lines = [
        "| policy | success rate | mean completion (s) | p95 completion (s) | SLA misses | "
        "mean wait (s) | utilisation | cost | wall (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["results"]:
        name = row["policy"] + (f" ({row['note']})" if row["note"] else "")
        lines.append(
            f"| {name} | {row['success_rate']:.1%} | {_num(row['mean_completion_s'])} | "
            f"{_num(row['p95_completion_s'])} | {row['sla_miss_rate']:.1%} "
            f"({row['sla_misses']}) | {row['mean_wait_s']:.1f} | {row['utilisation']:.1%} | "
            f"{row['cost']:.2f} | {row['wall_s']:.1f} |"
        )
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=BenchConfig.agents)
    parser.add_argument("--tasks", type=int, default=BenchConfig.tasks)
    parser.add_argument("--seed", type=int, default=BenchConfig.seed)
    parser.add_argument(
        "--load",
        type=float,
        default=BenchConfig.load,
        help="mean offered load / total slots; sets the span unless --duration",
    )
    parser.add_argument("--duration", type=float, default=None, help="span of arrivals (s)")
    parser.add_argument(
        "--day",
        type=float,
        default=None,
        help=f"length of one load cycle (s); default: the span (a day is {DAY_S:g})",
    )
    parser.add_argument("--tenants", type=int, default=BenchConfig.tenants)
    parser.add_argument("--heartbeat-interval", type=float, default=30.0)
    parser.add_argument(
        "--policies", default=",".join(POLICIES), help="comma-separated: " + ", ".join(POLICIES)
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON result ('-': none)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        parser.error(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}")
    config = BenchConfig(
        agents=args.agents,
        tasks=args.tasks,
        seed=args.seed,
        load=args.load,
        duration_s=args.duration,
        day_s=args.day,
        heartbeat_interval_s=args.heartbeat_interval,
        tenants=args.tenants,
    )
    result = run_bench(config, names, show_progress=not args.quiet)
    stream = result["stream"]
    print(
        f"{config.agents} agents ({stream['slots']} slots, {stream['failure_prone_agents']} "
        f"failure-prone), {stream['tasks']} tasks over {stream['duration_s']:.0f} s "
        f"({stream['rate_per_s']:.3f}/s, offered load {stream['offered_load']:.0%}), "
        f"seed {config.seed}\n"
    )
    print(markdown_table(result))
    if str(args.out) != "-":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwritten {args.out}")
    return result


if __name__ == "__main__":
    main()
