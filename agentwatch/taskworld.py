"""A heterogeneous fleet and its task stream: who can do what, and how well, hidden.

The world the assignment benchmark (``bench/assignment.py``) and the simulator's task
stream (``agentwatch simulate --tasks-per-s``) run in. Every agent has an
:class:`AgentType` — the capabilities it declares (the task types it can do), a
capacity (``max_concurrent_tasks``) and resources, ``cost_per_hour`` among them — and
traits a scheduler never sees (:class:`AgentTraits`):

- **skill**: per agent and task type, the probability the task succeeds at no load;
  a failure-prone minority (``FLAKY_SHARE``) is much worse at everything;
- **speed**: per agent and task type, a duration multiplier (lognormal noise on each run);
- **load sensitivity**: how much success and speed worsen as the agent's concurrent load
  rises (utilisation = running tasks / capacity).

The task stream is Poisson with a daily load shape (:func:`daily_load`); each
:class:`Task` has a type (hence required capabilities and resources), a priority, an
estimated duration (the type's, the same for every agent) and a deadline (tighter for
higher priorities). :meth:`TaskWorld.outcome` says what happens when an agent runs a task
at a given load: success or not, and how long it took. Its randomness is keyed by the
task alone ("common random numbers"): the same task on the same agent at the same load
always ends the same way, whichever policy sent it there, and a better agent succeeds
whenever a worse one would.

Heartbeats follow load and traits (:meth:`TaskWorld.heartbeat_metrics`): busier agents
use more CPU and memory, slow agents answer slowly, failure-prone agents show a higher
error rate, and load-sensitive agents degrade fastest, so a learner watching heartbeats
and outcomes can tell agents apart. Everything is deterministic for a seed.

>>> world = TaskWorld(agents=8, seed=3)
>>> world.agents[0].agent_type, world.agents[0].capabilities
('llm_worker', ('text_generation', 'data_processing'))
>>> task = next(world.tasks(rate_per_s=0.5, count=1))
>>> task.task_id, task.task_type, task.required_capabilities
('task-0000000', 'data_processing', ('data_processing',))
>>> agent = next(a.index for a in world.agents if world.can_do(a.index, task))
>>> world.outcome(task, agent, running=1) == world.outcome(task, agent, running=1)
True
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

#: Seconds in a day of the load shape.
DAY_S = 86_400.0
#: Share of agents that are failure-prone (much lower skill at every task type).
FLAKY_SHARE = 0.15
#: How much lower a failure-prone agent's skill is, on the logit scale (0.9 → ~0.45).
FLAKY_LOGIT_PENALTY = 2.4
#: Std of the lognormal noise on each run's duration.
DURATION_NOISE = 0.25
#: At full load, a fully load-sensitive agent's success logit drops by this much…
LOAD_LOGIT_PENALTY = 2.0
#: …and its durations grow by this factor (× sensitivity × utilisation²).
LOAD_SLOWDOWN = 1.5
#: Deadline = arrival + estimated duration × this slack, by priority.
DEADLINE_SLACK = {"low": 5.0, "normal": 3.0, "high": 2.0, "critical": 1.5}
#: Shares of the priorities in the stream.
PRIORITY_SHARES = {"low": 0.2, "normal": 0.5, "high": 0.2, "critical": 0.1}
#: Amplitude of the daily load shape (1 ± this), and the hour of its peak (UTC).
DAILY_AMPLITUDE = 0.5
PEAK_HOUR = 14.0
#: Ceilings that keep simulated heartbeats below the seed's threat thresholds
#: (as :mod:`agentwatch.simulator`'s normal behaviour does).
_MAX_PERCENT = 90.0
#: Tasks whose draws are kept (an outcome is asked for once per agent tried).
_LUCK_CACHE_SIZE = 100_000
_MAX_ERROR_RATE = 0.15


@dataclass(frozen=True, slots=True)
class TaskType:
    """A kind of task: what it requires, how long it takes an average agent, how common."""

    name: str
    capabilities: tuple[str, ...]
    base_duration_s: float
    share: float
    resources: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AgentType:
    """A kind of agent: what it declares (capabilities, capacity range, resources, cost)
    and how good it is on average (added to every agent's hidden skill and speed)."""

    name: str
    capabilities: tuple[str, ...]
    capacity: tuple[int, int]  # max_concurrent_tasks, inclusive range
    cost_per_hour: float
    resources: Mapping[str, float]
    share: float
    skill_logit: float = 0.0  # added to every task type's skill logit
    speed: float = 1.0  # duration multiplier on average


#: The task types of the stream.
TASK_TYPES: tuple[TaskType, ...] = (
    TaskType("data_processing", ("data_processing",), 120.0, 0.35),
    TaskType("text_generation", ("text_generation",), 60.0, 0.30),
    TaskType("ml_inference", ("ml_inference",), 90.0, 0.12, {"gpu": 1.0}),
    TaskType("web_scraping", ("web_scraping",), 45.0, 0.23),
)
#: The agent types of the fleet: ``ml_inference`` needs a GPU (only ``ml_processor`` has
#: one); every other task type has two or more types that can do it.
AGENT_TYPES: tuple[AgentType, ...] = (
    AgentType(
        "llm_worker",
        capabilities=("text_generation", "data_processing"),
        capacity=(2, 6),
        cost_per_hour=1.5,
        resources={"cpu_cores": 4.0, "memory_gb": 16.0},
        share=0.35,
    ),
    AgentType(
        "ml_processor",
        capabilities=("ml_inference", "data_processing"),
        capacity=(2, 6),
        cost_per_hour=3.0,
        resources={"cpu_cores": 8.0, "memory_gb": 32.0, "gpu": 1.0},
        share=0.20,
        skill_logit=0.3,
        speed=0.9,
    ),
    AgentType(
        "bot",
        capabilities=("web_scraping", "data_processing"),
        capacity=(4, 12),
        cost_per_hour=0.3,
        resources={"cpu_cores": 2.0, "memory_gb": 4.0},
        share=0.25,
    ),
    AgentType(
        "generalist",
        capabilities=("data_processing", "text_generation", "web_scraping"),
        capacity=(2, 8),
        cost_per_hour=0.8,
        resources={"cpu_cores": 4.0, "memory_gb": 8.0},
        share=0.20,
        skill_logit=-0.5,
        speed=1.2,
    ),
)


@dataclass(frozen=True, slots=True)
class AgentProfile:
    """What an agent declares when it registers (everything a scheduler may know)."""

    index: int
    agent_id: str
    tenant_id: str
    agent_type: str
    capabilities: tuple[str, ...]
    max_concurrent_tasks: int
    resources: Mapping[str, float]  # with cost_per_hour

    def registration(self) -> dict[str, object]:
        """The body of ``POST /api/v1/agents/register`` (without tenant and id).

        >>> TaskWorld(agents=1).agents[0].registration()["max_concurrent_tasks"]
        5
        """
        return {
            "name": self.agent_id,
            "agent_type": self.agent_type,
            "owner": "simulator",
            "version": "1",
            "capabilities": list(self.capabilities),
            "max_concurrent_tasks": self.max_concurrent_tasks,
            "resources": dict(self.resources),
        }


@dataclass(frozen=True, slots=True)
class AgentTraits:
    """An agent's hidden traits (never shown to a scheduler; the oracle may peek)."""

    skill: Mapping[str, float]  # task type → success probability at no load
    speed: Mapping[str, float]  # task type → duration multiplier
    load_sensitivity: float  # 0 (indifferent to load) … 1 (degrades most)
    flaky: bool


@dataclass(frozen=True, slots=True)
class Task:
    """One task of the stream; times are seconds of the world's clock (``arrival_s``)."""

    task_id: str
    index: int
    task_type: str
    required_capabilities: tuple[str, ...]
    resource_requirements: Mapping[str, float]
    priority: str
    arrival_s: float
    estimated_duration_s: float
    deadline_s: float
    tenant_id: str

    def request(self, *, time_scale: float = 1.0) -> dict:
        """The body of ``POST /api/v1/tasks/assign`` (``schemas.models.TaskRequest``).

        ``arrival_s`` is on the caller's clock (epoch seconds for the API); the world's
        durations run ``time_scale`` times faster on it: the estimate and the time left
        until the deadline are divided by ``time_scale``.

        >>> task = next(TaskWorld(agents=4).tasks(rate_per_s=1, start_s=1.8e9, count=1))
        >>> body = task.request(time_scale=10)
        >>> body["estimated_duration"], round(body["deadline"] - task.arrival_s, 3)
        (6.0, 30.0)
        """
        left = (self.deadline_s - self.arrival_s) / time_scale
        return {
            "task_id": self.task_id,
            "task_type": self.task_type,
            "required_capabilities": list(self.required_capabilities),
            "priority": self.priority,
            "resource_requirements": dict(self.resource_requirements),
            "estimated_duration": round(self.estimated_duration_s / time_scale, 3),
            "deadline": round(self.arrival_s + left, 3),
            "tenant_id": self.tenant_id,
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened when an agent ran a task: success, and how long it ran (seconds)."""

    success: bool
    duration_s: float
    reason: str = ""


def daily_load(t_s: float | np.ndarray, day_s: float = DAY_S) -> float | np.ndarray:
    """The stream's rate relative to its mean at time ``t_s`` (mean 1 over a day): low at
    night, highest at :data:`PEAK_HOUR` (for epoch seconds, UTC).

    >>> round(daily_load(14 * 3600), 2), round(daily_load(2 * 3600), 2)
    (1.5, 0.5)
    """
    phase = 2 * np.pi * (np.asarray(t_s) / day_s - PEAK_HOUR / 24.0)
    shape = 1.0 + DAILY_AMPLITUDE * np.cos(phase)
    return float(shape) if np.ndim(shape) == 0 else shape


class TaskWorld:
    """A fleet of ``agents`` heterogeneous agents and the outcomes of their tasks.

    ``agent_ids`` and ``tenant_ids`` name the agents (default: ``agent-000000``… in one
    tenant, as :class:`agentwatch.simulator.FleetSimulator` names them).
    """

    def __init__(
        self,
        agents: int,
        *,
        seed: int = 0,
        agent_ids: Sequence[str] | None = None,
        tenant_ids: Sequence[str] | None = None,
        task_types: Sequence[TaskType] = TASK_TYPES,
        agent_types: Sequence[AgentType] = AGENT_TYPES,
    ) -> None:
        if agents < 1:
            raise ValueError(f"a fleet needs at least one agent (got {agents})")
        width = max(6, len(str(agents - 1)))
        agent_ids = list(agent_ids or [f"agent-{i:0{width}d}" for i in range(agents)])
        tenant_ids = list(tenant_ids or ["tenant-000"] * agents)
        if len(agent_ids) != agents or len(tenant_ids) != agents:
            raise ValueError(
                f"give one agent id and one tenant id per agent ({agents}); got "
                f"{len(agent_ids)} and {len(tenant_ids)}"
            )
        self.seed = seed
        self.task_types = {t.name: t for t in task_types}
        self.agent_types = {t.name: t for t in agent_types}
        self._draw_fleet(agent_ids, tenant_ids, list(agent_types))
        self.index = {a.agent_id: a.index for a in self.agents}
        self._luck_cache: dict[int, tuple[float, float, float]] = {}

    # --- who the agents are -----------------------------------------------------------
    def _draw_fleet(
        self, agent_ids: list[str], tenant_ids: list[str], agent_types: list[AgentType]
    ) -> None:
        rng = np.random.default_rng([self.seed, 1])
        n = len(agent_ids)
        shares = np.array([t.share for t in agent_types])
        kinds = rng.choice(len(agent_types), size=n, p=shares / shares.sum())
        kinds[: min(n, len(agent_types))] = np.arange(min(n, len(agent_types)))  # all present
        quality = rng.standard_normal(n)  # an agent's general aptitude
        pace = rng.standard_normal(n)  # an agent's general pace (higher = slower)
        flaky = rng.random(n) < FLAKY_SHARE
        sensitivity = rng.beta(1.5, 2.0, n)
        cost_noise = np.exp(0.2 * rng.standard_normal(n))
        capacity_draw = rng.random(n)
        type_names = list(self.task_types)
        per_type_skill = rng.standard_normal((n, len(type_names)))
        per_type_pace = rng.standard_normal((n, len(type_names)))
        self.agents: list[AgentProfile] = []
        self.traits: list[AgentTraits] = []
        for i in range(n):
            kind = agent_types[kinds[i]]
            lo, hi = kind.capacity
            capacity = lo + int(capacity_draw[i] * (hi - lo + 1))
            resources = dict(kind.resources) | {
                "cost_per_hour": round(kind.cost_per_hour * float(cost_noise[i]), 3)
            }
            skill, speed = {}, {}
            for j, name in enumerate(type_names):
                if name not in kind.capabilities:
                    continue
                logit = 2.2 + kind.skill_logit + 1.0 * quality[i] + 0.6 * per_type_skill[i, j]
                logit -= FLAKY_LOGIT_PENALTY * flaky[i]
                skill[name] = round(1.0 / (1.0 + math.exp(-logit)), 4)
                speed[name] = round(
                    kind.speed * math.exp(0.35 * pace[i] + 0.2 * per_type_pace[i, j]), 4
                )
            self.agents.append(
                AgentProfile(
                    i,
                    agent_ids[i],
                    tenant_ids[i],
                    kind.name,
                    kind.capabilities,
                    capacity,
                    resources,
                )
            )
            self.traits.append(AgentTraits(skill, speed, float(sensitivity[i]), bool(flaky[i])))
        self.capacity = np.array([a.max_concurrent_tasks for a in self.agents], dtype=np.int64)
        # Heartbeat personalities, from the traits (so heartbeats tell agents apart).
        mean_skill = np.array([np.mean(list(t.skill.values())) for t in self.traits])
        mean_speed = np.array([np.mean(list(t.speed.values())) for t in self.traits])
        self._sensitivity = sensitivity
        self._idle_cpu = rng.uniform(3.0, 12.0, n)
        self._cpu_per_load = rng.uniform(5.0, 12.0, n)  # CPU points at full load
        self._cpu_noise = rng.uniform(1.0, 3.5, n)  # std, as the fleet's own CPU noise
        self._memory_base = rng.uniform(20.0, 50.0, n)
        self._response_base_ms = 150.0 * mean_speed * np.exp(0.1 * rng.standard_normal(n))
        self._error_base = 0.15 * (1.0 - mean_skill)

    def can_do(self, agent: int, task: Task) -> bool:
        """Whether the agent declares every capability and resource the task requires."""
        profile = self.agents[agent]
        return set(task.required_capabilities) <= set(profile.capabilities) and all(
            profile.resources.get(name, 0.0) >= need
            for name, need in task.resource_requirements.items()
        )

    # --- what happens -------------------------------------------------------------------
    def success_probability(self, agent: int, task_type: str, running: int) -> float:
        """Hidden: the probability the agent succeeds at a task of ``task_type`` when it
        runs ``running`` tasks (this one included); 0 for a type it cannot do.

        >>> world = TaskWorld(agents=20, seed=1)
        >>> p = [world.success_probability(0, "text_generation", k) for k in (1, 6)]
        >>> p[0] > p[1]  # worse under load
        True
        """
        traits = self.traits[agent]
        skill = traits.skill.get(task_type)
        if skill is None:
            return 0.0
        util = min(running / self.agents[agent].max_concurrent_tasks, 1.5)
        logit = math.log(skill / (1.0 - skill))
        logit -= LOAD_LOGIT_PENALTY * traits.load_sensitivity * util**2
        return 1.0 / (1.0 + math.exp(-logit))

    def expected_duration_s(self, agent: int, task_type: str, running: int) -> float:
        """Hidden: the agent's median duration of a task of ``task_type`` at that load
        (inf for a type it cannot do)."""
        traits = self.traits[agent]
        speed = traits.speed.get(task_type)
        if speed is None:
            return math.inf
        util = min(running / self.agents[agent].max_concurrent_tasks, 1.5)
        slowdown = 1.0 + LOAD_SLOWDOWN * traits.load_sensitivity * util**2
        return self.task_types[task_type].base_duration_s * speed * slowdown

    def outcome(self, task: Task, agent: int, running: int) -> Outcome:
        """What happens when ``agent`` runs ``task`` with ``running`` tasks (this one
        included) in progress. Deterministic: the luck is the task's own.

        A failure stops the task part-way (its duration is a share of a full run's). An
        agent that lacks what the task requires fails it at once.
        """
        if not self.can_do(agent, task):
            return Outcome(False, 1.0, f"{self.agents[agent].agent_id} cannot do {task.task_type}")
        u, z, part = self._luck(task.index)
        p = self.success_probability(agent, task.task_type, running)
        full = self.expected_duration_s(agent, task.task_type, running)
        duration = full * math.exp(DURATION_NOISE * z)
        if u < p:
            return Outcome(True, round(duration, 3))
        return Outcome(False, round(duration * (0.2 + 0.8 * part), 3), "simulated failure")

    def _luck(self, index: int) -> tuple[float, float, float]:
        """The task's own draws: success (uniform), duration (normal), part done if failed."""
        luck = self._luck_cache.get(index)
        if luck is None:
            rng = np.random.default_rng([self.seed, 3, index])
            luck = (float(rng.random()), float(rng.standard_normal()), float(rng.random()))
            if len(self._luck_cache) >= _LUCK_CACHE_SIZE:
                self._luck_cache.clear()  # a stream runs forward: old tasks are done
            self._luck_cache[index] = luck
        return luck

    # --- the task stream ----------------------------------------------------------------
    def tasks(
        self,
        rate_per_s: float,
        *,
        start_s: float = 0.0,
        until_s: float | None = None,
        count: int | None = None,
        day_s: float = DAY_S,
        prefix: str = "task-",
        first_index: int = 0,
    ) -> Iterator[Task]:
        """Poisson arrivals at ``rate_per_s`` on average, shaped by :func:`daily_load`
        (``day_s``: the length of one load cycle), from ``start_s`` until ``until_s`` or
        ``count`` tasks (endless with neither). Task tenants follow the agents' (a tenant
        with more agents sends more tasks); ids are ``prefix`` + a 7-digit index.
        """
        if rate_per_s <= 0:
            raise ValueError(f"the task rate must be > 0 per second (got {rate_per_s})")
        rng = np.random.default_rng([self.seed, 2, first_index])
        types = list(self.task_types.values())
        type_p = np.array([t.share for t in types])
        type_p /= type_p.sum()
        priorities = list(PRIORITY_SHARES)
        priority_p = np.array(list(PRIORITY_SHARES.values()))
        tenants, per_tenant = np.unique([a.tenant_id for a in self.agents], return_counts=True)
        tenant_p = per_tenant / per_tenant.sum()
        peak_rate = rate_per_s * (1.0 + DAILY_AMPLITUDE)
        t, index, made = start_s, first_index, 0
        while count is None or made < count:
            t += rng.exponential(1.0 / peak_rate)
            if until_s is not None and t >= until_s:
                return
            if rng.random() * (1.0 + DAILY_AMPLITUDE) > daily_load(t, day_s):
                continue  # thinning: fewer arrivals off-peak
            kind = types[rng.choice(len(types), p=type_p)]
            priority = priorities[rng.choice(len(priorities), p=priority_p)]
            tenant = str(tenants[rng.choice(len(tenants), p=tenant_p)])
            yield Task(
                task_id=f"{prefix}{index:07d}",
                index=index,
                task_type=kind.name,
                required_capabilities=kind.capabilities,
                resource_requirements=dict(kind.resources),
                priority=priority,
                arrival_s=round(t, 3),
                estimated_duration_s=kind.base_duration_s,
                deadline_s=round(t, 3) + kind.base_duration_s * DEADLINE_SLACK[priority],
                tenant_id=tenant,
            )
            index += 1
            made += 1

    def mean_capacity_load(self, rate_per_s: float) -> float:
        """The fleet's mean utilisation at ``rate_per_s`` if every task ran at its estimate
        (offered load / total capacity): a quick sizing figure.

        >>> round(TaskWorld(agents=100).mean_capacity_load(1.0), 3)
        0.154
        """
        types = list(self.task_types.values())
        total_share = sum(t.share for t in types)
        mean_duration = sum(t.share * t.base_duration_s for t in types) / total_share
        return rate_per_s * mean_duration / float(self.capacity.sum())

    # --- heartbeats ---------------------------------------------------------------------
    def heartbeat_metrics(
        self, active_tasks: np.ndarray, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """Every agent's cpu_usage, memory_usage, response_time_avg, error_rate and
        active_tasks at its current load (``active_tasks``, one per agent): they follow
        load and the hidden traits, below the seed's threat thresholds.

        >>> world = TaskWorld(agents=50, seed=2)
        >>> idle = world.heartbeat_metrics(np.zeros(50), np.random.default_rng(0))
        >>> busy = world.heartbeat_metrics(world.capacity, np.random.default_rng(0))
        >>> bool(busy["cpu_usage"].mean() > idle["cpu_usage"].mean() + 5)
        True
        """
        n = len(self.agents)
        active = np.asarray(active_tasks, dtype=np.int64)
        util = np.minimum(active / self.capacity, 1.5)
        z = rng.standard_normal((4, n))
        cpu = self._idle_cpu + self._cpu_per_load * util + self._cpu_noise * z[0]
        memory = self._memory_base + 4.0 * util + 1.0 * z[1]
        response = (
            self._response_base_ms * (1.0 + 0.8 * self._sensitivity * util**2) * np.exp(0.1 * z[2])
        )
        error = self._error_base * (1.0 + self._sensitivity * util) * np.exp(0.2 * z[3])
        return {
            "cpu_usage": np.clip(cpu, 0.5, _MAX_PERCENT),
            "memory_usage": np.clip(memory, 1.0, _MAX_PERCENT),
            "response_time_avg": np.maximum(response, 1.0),
            "error_rate": np.clip(error, 0.0, _MAX_ERROR_RATE),
            "active_tasks": active,
        }
