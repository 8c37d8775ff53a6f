r"""Task assignment as a computation over a columnar fleet: which agents may take a task
(filters), which of them is best (scoring), and why — or, when none fits, why not, the
way Kubernetes' scheduler says it ("0/812 agents fit: 500 lack capability gpu, 300 at
capacity, 12 quarantined").

A :class:`Fleet` holds one row per agent in numpy columns: tenant, lifecycle state,
capabilities (bit sets: one ``uint64`` word per 64 labels, more words as more labels
appear), the declared resources that tasks ask for, capacity
(``max_concurrent_tasks``), the shard's count of open tasks, this process's
reservations, the security score, the quarantine flag, and the components of the
agent's latest ``AssignmentScore`` (with its per-task-type predictions). Each update
touches one row (O(1)); :meth:`Fleet.choose` runs the filters and the scoring as a few
vectorised passes over the rows of the task's tenant.

Filters, in the issue's order; an agent that fails several is counted under the first
(as Kubernetes does), so the counts of a summary add up to the agents considered:

1. **tenant** — only the task's tenant's agents are considered (the others are not
   counted at all: a summary never reveals another tenant's fleet), then the agents the
   task excludes (``excluded``);
2. **state** — active or idle (:data:`ACCEPTING_STATES`); others are counted by state
   (``offline``, ``quarantined``, ``busy``, ``no state yet``…);
3. **capabilities** — every required label (``lack capability gpu``: the first missing);
4. **resources** — each requested resource declared at least as large
   (``lack resource gpu_memory_gb``);
5. **free capacity** — open tasks + reservations < capacity (``at capacity``);
6. **security score** ≥ the threshold (``security score below 50``);
7. **not quarantined** — a quarantine requested and not yet applied (``quarantined``).

Scoring (each component 0…1; score = Σ wᵢcᵢ / Σ wᵢ with the current weights):

- **performance**: the shard's component, refined for the task's type when the models
  know it: ``p_success × speed`` (speed = min(1, the task's estimated duration / the
  predicted duration), 1 when either is unknown), blended in by the evidence
  ``n / (n + TYPE_PRIOR_OUTCOMES)`` (n = outcomes of the agent on that type);
- **cost** and **sla**: the shard's components;
- **availability**: free slots after this process's reservations / capacity (the shard
  publishes the same ratio without them).

An agent with no ``AssignmentScore`` yet (new, or the dataflow has not scored it) has
the neutral :data:`NEUTRAL` for performance, cost and sla: it neither wins nor loses on
what nobody measured, and its confidence is lower.

>>> fleet = Fleet()
>>> for i, caps in enumerate([("chat",), ("chat", "gpu"), ("chat", "gpu")]):
...     _ = fleet.set_agent(f"a{i}", "t1", state="active", capabilities=caps, capacity=2)
>>> fleet.set_score("a1", performance=0.9, cost=0.5, sla=0.9, at=1.0)
True
>>> fleet.set_score("a2", performance=0.6, cost=0.5, sla=0.9, at=1.0)
True
>>> choice = fleet.choose(Task("t1", required_capabilities=("gpu",)), WEIGHTS, k=2)
>>> choice.chosen.agent_id, round(choice.chosen.score, 3), choice.eligible
('a1', 0.8, 2)
>>> [c.agent_id for c in choice.candidates]
['a2']
>>> print(choice.reason.replace(": ", ":\n").replace("; ", ";\n"))
a1 scores 0.80, the best of 2 agents that fit (3 considered):
performance 0.90, cost 0.50, availability 1.00, sla 0.90;
next best a2 at 0.68
>>> fleet.set_open("a1", 2, at=2.0), fleet.set_open("a2", 2, at=2.0)
(True, True)
>>> print(fleet.choose(Task("t1", required_capabilities=("gpu",)), WEIGHTS, k=2).summary)
0/3 agents fit: 2 at capacity, 1 lack capability gpu
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

#: The states in which an agent takes new tasks (the issue: active or idle).
ACCEPTING_STATES = ("active", "idle")
#: The performance, cost and sla of an agent without an AssignmentScore yet.
NEUTRAL = 0.5
#: How many outcomes on a task type weigh as much as the agent's general performance.
TYPE_PRIOR_OUTCOMES = 5.0
#: The components, in the order of the seed's weights.
COMPONENTS = ("performance", "cost", "availability", "sla")
#: The seed's weights (40/30/20/10), for examples and tests.
WEIGHTS = {"performance": 0.4, "cost": 0.3, "availability": 0.2, "sla": 0.1}
#: Rows a new fleet holds before it grows (it doubles when full).
INITIAL_ROWS = 1024
#: Performance levels in words (the seed's status shows one), lowest bound first wins.
PERFORMANCE_LEVELS = ((0.85, "excellent"), (0.7, "good"), (0.5, "fair"), (0.0, "poor"))


def performance_level(performance: float | None) -> str:
    """The performance component in words ("unknown" before the agent was scored).

    >>> performance_level(0.9), performance_level(0.55), performance_level(None)
    ('excellent', 'fair', 'unknown')
    """
    if performance is None:
        return "unknown"
    return next(word for bound, word in PERFORMANCE_LEVELS if performance >= bound)


@dataclass(frozen=True, slots=True)
class Task:
    """What the filters and the scoring need of a task."""

    tenant_id: str
    task_type: str = "default"
    required_capabilities: tuple[str, ...] = ()
    resource_requirements: tuple[tuple[str, float], ...] = ()
    estimated_duration: float | None = None
    exclude: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Scored:
    """One agent's score for a task, broken down by component."""

    agent_id: str
    score: float
    components: dict[str, float]
    p_success: float | None = None
    expected_duration_s: float | None = None
    confidence: float = 0.0


@dataclass(frozen=True, slots=True)
class Choice:
    """The chosen agent, the next best, how many were considered and fit, and why."""

    chosen: Scored
    candidates: tuple[Scored, ...]
    considered: int
    eligible: int
    reason: str

    @property
    def fits(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class NoFit:
    """No agent fits: how many were considered and, per reason, how many failed on it."""

    considered: int
    unfit: dict[str, int] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return False

    @property
    def summary(self) -> str:
        """``0/812 agents fit: 500 lack capability gpu, 300 at capacity, 12 quarantined``
        (largest first).

        >>> NoFit(3, {"quarantined": 1, "at capacity": 2}).summary
        '0/3 agents fit: 2 at capacity, 1 quarantined'
        >>> NoFit(0).summary
        '0/0 agents fit: the tenant has no agents'
        """
        if self.considered == 0:
            return "0/0 agents fit: the tenant has no agents"
        parts = sorted(self.unfit.items(), key=lambda item: (-item[1], item[0]))
        return f"0/{self.considered} agents fit: " + ", ".join(f"{n} {why}" for why, n in parts)


class _TypeColumns:
    """Per-task-type predictions: p_success, expected duration (nan: unknown), outcomes;
    and two columns kept from them as they change, so a typed choice refines every
    agent's performance with a few operations on whole columns (no gather, no scatter):
    the weight of the type's evidence, outcomes / (outcomes + TYPE_PRIOR_OUTCOMES) (0
    without outcomes), and the duration where it can slow the task (> 0, else nan)."""

    __slots__ = ("duration", "evidence", "outcomes", "p_success", "slowing")

    def __init__(self, rows: int) -> None:
        self.p_success = np.zeros(rows, np.float32)
        self.duration = np.full(rows, np.nan, np.float32)
        self.outcomes = np.zeros(rows, np.int32)
        self.evidence = np.zeros(rows, np.float32)
        self.slowing = np.full(rows, np.nan, np.float32)

    def set(self, row: int, p_success: float, duration: float | None, outcomes: int) -> None:
        self.p_success[row] = p_success
        self.duration[row] = np.nan if duration is None else duration
        self.slowing[row] = duration if duration is not None and duration > 0 else np.nan
        self.outcomes[row] = outcomes
        counted = np.float32(self.outcomes[row])  # as the int32 column holds it
        self.evidence[row] = counted / (counted + np.float32(TYPE_PRIOR_OUTCOMES))

    def forget(self, row: int) -> None:
        self.outcomes[row] = 0
        self.evidence[row] = 0.0


class Fleet:
    """The agents as columns (see the module docstring). Not thread-safe: its owner
    locks. Rows are never removed (a decommissioned agent stays, filtered by state)."""

    def __init__(self, rows: int = INITIAL_ROWS) -> None:
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self._tenants: dict[str, int] = {}
        self._tenant_sizes: dict[int, int] = {}
        self._states: dict[str | None, int] = {None: 0}
        self._state_names: list[str | None] = [None]
        self._labels: dict[str, int] = {}
        self._rows = rows
        self.tenant = np.full(rows, -1, np.int32)
        self.state = np.zeros(rows, np.int16)
        self.caps = np.zeros((rows, 1), np.uint64)
        self.capacity = np.ones(rows, np.int32)
        self.open = np.zeros(rows, np.int32)
        self.open_at = np.full(rows, -np.inf, np.float64)
        self.reserved = np.zeros(rows, np.int32)
        self.security = np.full(rows, 100.0, np.float32)
        self.quarantined = np.zeros(rows, np.bool_)
        self.scored = np.zeros(rows, np.bool_)
        self.score_at = np.full(rows, -np.inf, np.float64)
        self.performance = np.full(rows, NEUTRAL, np.float32)
        self.cost = np.full(rows, NEUTRAL, np.float32)
        self.sla = np.full(rows, NEUTRAL, np.float32)
        self.p_fail = np.full(rows, np.nan, np.float32)
        #: Kept per row as the columns change, so a choice adds two columns, not five:
        #: availability (free slots after reservations / capacity) and the weighted sum of
        #: performance, cost and sla under :attr:`_weights` (recomputed when they change).
        self.availability = np.ones(rows, np.float32)
        self.partial = np.zeros(rows, np.float32)
        self._weights: tuple[float, ...] = ()
        self._resources: dict[str, np.ndarray] = {}
        self._types: dict[str, _TypeColumns] = {}
        self._row_types: dict[int, tuple[str, ...]] = {}
        self._scratch_columns: np.ndarray | None = None  # (2, rows): see _scratch

    def __len__(self) -> int:
        return len(self.ids)

    # --- updates (one row each) ----------------------------------------------------
    def row(self, agent_id: str, tenant_id: str) -> int:
        """The agent's row, made (with the tenant) on first sight."""
        row = self.index.get(agent_id)
        if row is not None:
            return row
        row = len(self.ids)
        if row == self._rows:
            self._grow()
        self.ids.append(agent_id)
        self.index[agent_id] = row
        code = self._tenants.setdefault(tenant_id, len(self._tenants))
        self.tenant[row] = code
        self._tenant_sizes[code] = self._tenant_sizes.get(code, 0) + 1
        if self._weights:  # the neutral components, weighed
            wp, wc, _, ws = self._weights
            self.partial[row] = (wp + wc + ws) * NEUTRAL
        return row

    def set_agent(
        self,
        agent_id: str,
        tenant_id: str,
        *,
        state: str | None = None,
        capabilities: Iterable[str] = (),
        resources: Mapping[str, float] | None = None,
        capacity: int = 1,
        security_score: float = 100.0,
        quarantined: bool = False,
    ) -> int:
        """Set what the registry knows of an agent (its whole registration, state,
        security score and quarantine); its row."""
        row = self.row(agent_id, tenant_id)
        code = self._states.get(state)
        if code is None:
            code = self._states[state] = len(self._state_names)
            self._state_names.append(state)
        self.state[row] = code
        self.caps[row] = 0
        for label in capabilities:
            bit = self._bit(label)
            self.caps[row, bit // 64] |= np.uint64(1) << np.uint64(bit % 64)
        declared = resources or {}
        for name, column in self._resources.items():
            column[row] = declared.get(name, np.nan)
        for name, amount in declared.items():
            if name not in self._resources:
                self._resource(name)[row] = amount
        self.capacity[row] = max(int(capacity), 0)
        self._available(row)
        self.security[row] = security_score
        self.quarantined[row] = quarantined
        return row

    def set_score(
        self,
        agent_id: str,
        *,
        performance: float,
        cost: float,
        sla: float,
        at: float,
        tenant_id: str | None = None,
        active_tasks: int | None = None,
        p_fail: float | None = None,
        by_type: Mapping[str, tuple[float, float | None, int]] | None = None,
    ) -> bool:
        """Fold an AssignmentScore (``by_type``: task type → (p_success, expected
        duration or None, outcomes)); an older one than the row's is ignored. Whether it
        changed the row."""
        row = self.index.get(agent_id)
        if row is None:
            if tenant_id is None:
                return False
            row = self.row(agent_id, tenant_id)
        if at < self.score_at[row]:
            return False
        self.scored[row], self.score_at[row] = True, at
        self.performance[row], self.cost[row], self.sla[row] = performance, cost, sla
        if self._weights:
            wp, wc, _, ws = self._weights
            self.partial[row] = wp * performance + wc * cost + ws * sla
        self.p_fail[row] = np.nan if p_fail is None else p_fail
        if active_tasks is not None:
            self.set_open(agent_id, active_tasks, at)
        for task_type in self._row_types.pop(row, ()):
            self._types[task_type].forget(row)
        if by_type:
            for task_type, (p_success, duration, outcomes) in by_type.items():
                self._type(task_type).set(row, p_success, duration, outcomes)
            self._row_types[row] = tuple(by_type)
        return True

    def set_open(self, agent_id: str, open_tasks: int, at: float) -> bool:
        """The shard's count of the agent's open tasks at ``at`` (an older count is
        ignored)."""
        row = self.index.get(agent_id)
        if row is None or at < self.open_at[row]:
            return False
        self.open[row], self.open_at[row] = max(int(open_tasks), 0), at
        self._available(row)
        return True

    def reserve(self, agent_id: str, delta: int = 1) -> None:
        """Hold (``delta`` 1) or let go (-1) of a slot this process placed a task in."""
        row = self.index[agent_id]
        self.reserved[row] = max(int(self.reserved[row]) + delta, 0)
        self._available(row)

    def _available(self, row: int) -> None:
        capacity = int(self.capacity[row])
        free = max(capacity - int(self.open[row]) - int(self.reserved[row]), 0)
        self.availability[row] = free / capacity if capacity > 0 else 0.0

    def _weigh(self, weights: Mapping[str, float]) -> tuple[float, ...]:
        """The weights divided by their sum; :attr:`partial` recomputed when they changed."""
        total = sum(weights[name] for name in COMPONENTS)
        normal = tuple(weights[name] / total for name in COMPONENTS)
        if normal != self._weights:
            wp, wc, _, ws = normal
            n = len(self.ids)
            self.partial[:n] = wp * self.performance[:n] + wc * self.cost[:n] + ws * self.sla[:n]
            self._weights = normal
        return normal

    # --- questions -----------------------------------------------------------------
    def choose(
        self, task: Task, weights: Mapping[str, float], k: int = 3, min_security: float = 0.0
    ) -> Choice | NoFit:
        """The best agent for ``task`` and the next ``k - 1``, or why none fits (see the
        module docstring for the filters and the scoring).

        Every filter is a boolean mask over all rows (no gather of the columns: at
        100,000 agents a pass costs tens of microseconds), and the best ``k`` are
        picked by ``k`` arg-maxes, not a sort."""
        code = self._tenants.get(task.tenant_id)
        if code is None:
            return NoFit(0)
        n = len(self.ids)
        rows = slice(0, n)
        alive = self.tenant[rows] == code
        considered = self._tenant_sizes[code]
        unfit: dict[str, int] = {}

        def keep(alive: np.ndarray, ok: np.ndarray, reason: str) -> np.ndarray:
            kept = alive & ok
            failed = int(np.count_nonzero(alive)) - int(np.count_nonzero(kept))
            if failed:
                unfit[reason] = unfit.get(reason, 0) + failed
            return kept

        if task.exclude:
            excluded = np.zeros(n, np.bool_)
            excluded[[self.index[a] for a in task.exclude if a in self.index]] = True
            alive = keep(alive, ~excluded, "excluded")
        alive = self._keep_states(alive, unfit)
        if task.required_capabilities:
            alive = self._keep_capable(alive, task.required_capabilities, unfit)
        for name, amount in task.resource_requirements:
            column = self._resources.get(name)
            ok = np.zeros(n, np.bool_) if column is None else column[rows] >= amount
            alive = keep(alive, ok, f"lack resource {name}")
        free = self.capacity[rows] - self.open[rows] - self.reserved[rows]
        alive = keep(alive, free > 0, "at capacity")
        if min_security > 0:
            reason = f"security score below {min_security:g}"
            alive = keep(alive, self.security[rows] >= min_security, reason)
        alive = keep(alive, ~self.quarantined[rows], "quarantined")
        eligible = int(np.count_nonzero(alive))
        if not eligible:
            return NoFit(considered, unfit)
        return self._best(alive, eligible, task, weights, k, considered)

    def describe(self, agent_id: str, weights: Mapping[str, float]) -> dict | None:
        """The agent's components and score now (availability after reservations), its
        open tasks (the shard's count + this process's reservations), capacity, p_fail
        and whether the dataflow scored it; None for an unknown agent.

        >>> fleet = Fleet()
        >>> _ = fleet.set_agent("a1", "t1", state="active", capacity=4)
        >>> fleet.reserve("a1")
        >>> d = fleet.describe("a1", WEIGHTS)
        >>> d["components"]["availability"], d["active_tasks"], d["scored"], round(d["score"], 2)
        (0.75, 1, False, 0.55)
        """
        row = self.index.get(agent_id)
        if row is None:
            return None
        components = self._row_components(row, None, None)
        total = sum(weights[name] for name in COMPONENTS)
        score = sum(weights[name] * components[name] for name in COMPONENTS) / total
        p_fail = float(self.p_fail[row])
        return {
            "score": round(score, 6),
            "components": components,
            "active_tasks": int(self.open[row] + self.reserved[row]),
            "capacity": int(self.capacity[row]),
            "p_fail": None if math.isnan(p_fail) else round(p_fail, 6),
            "scored": bool(self.scored[row]),
        }

    # --- the steps -----------------------------------------------------------------
    def _keep_states(self, alive: np.ndarray, unfit: dict[str, int]) -> np.ndarray:
        states = self.state[: len(alive)]
        ok = np.zeros(len(alive), np.bool_)
        for name in ACCEPTING_STATES:
            code = self._states.get(name)
            if code is not None:
                ok |= states == code
        failing = alive & ~ok
        if failing.any():  # (a count per state: a gather and a bincount took ~0.5 ms)
            for code, name in enumerate(self._state_names):
                if name in ACCEPTING_STATES:
                    continue
                count = int(np.count_nonzero(failing & (states == code)))
                if count:
                    reason = "no state yet" if name is None else name
                    unfit[reason] = unfit.get(reason, 0) + count
        return alive & ok

    def _keep_capable(
        self, alive: np.ndarray, required: tuple[str, ...], unfit: dict[str, int]
    ) -> np.ndarray:
        n = len(alive)
        ok = np.ones(n, np.bool_)
        has: list[tuple[str, np.ndarray]] = []
        for label in required:
            bit = self._labels.get(label)
            if bit is None:
                present = np.zeros(n, np.bool_)
            else:
                mask = np.uint64(1) << np.uint64(bit % 64)
                present = (self.caps[:n, bit // 64] & mask) != 0
            has.append((label, present))
            ok &= present
        blamed = ~alive | ok
        for label, present in has:  # each agent under the first capability it lacks
            lacking = ~present & ~blamed
            count = int(np.count_nonzero(lacking))
            if count:
                reason = f"lack capability {label}"
                unfit[reason] = unfit.get(reason, 0) + count
                blamed |= lacking
        return alive & ok

    def _row_components(
        self, row: int, task_type: str | None, estimated_duration: float | None
    ) -> dict[str, float]:
        """One agent's components for a task (performance refined for its type)."""
        performance = float(self.performance[row])
        columns = self._types.get(task_type) if task_type is not None else None
        if columns is not None and columns.outcomes[row] > 0:
            typed = float(columns.p_success[row])
            duration = float(columns.duration[row])
            if estimated_duration is not None and duration > 0:  # nan > 0 is False
                typed *= min(1.0, estimated_duration / duration)
            evidence = columns.outcomes[row] / (columns.outcomes[row] + TYPE_PRIOR_OUTCOMES)
            performance += float(evidence) * (typed - performance)
        return {
            "performance": round(min(max(performance, 0.0), 1.0), 6),
            "cost": round(float(self.cost[row]), 6),
            "availability": round(float(self.availability[row]), 6),
            "sla": round(float(self.sla[row]), 6),
        }

    def _scores(
        self, alive: np.ndarray, eligible: int, task: Task, weights: tuple[float, ...]
    ) -> np.ndarray:
        """Every row's score for ``task`` (-inf where not ``alive``; ``eligible`` rows
        are), in a scratch column of this fleet's unless few are eligible (valid until
        the next choice)."""
        n = len(alive)
        wp, _, wa, _ = weights
        score, work = self._scratch(n)
        np.multiply(self.availability[:n], np.float32(wa), out=score)
        score += self.partial[:n]
        columns = self._types.get(task.task_type)
        if columns is not None:  # refine performance where the models know the type
            # On whole columns: where there is no evidence (weight 0) the refined
            # performance is the performance, and the score does not move.
            performance = self.performance[:n]
            if task.estimated_duration is None:
                np.subtract(columns.p_success[:n], performance, out=work)
            else:  # a slower agent's success counts less; an unknown duration (nan) not
                with np.errstate(divide="ignore", invalid="ignore"):
                    np.divide(task.estimated_duration, columns.slowing[:n], out=work)
                np.fmin(work, np.float32(1.0), out=work)
                work *= columns.p_success[:n]
                work -= performance
            work *= columns.evidence[:n]
            work += performance
            np.clip(work, 0.0, 1.0, out=work)  # the refined performance
            work -= performance
            work *= np.float32(wp)
            score += work
        # -inf where not eligible: where many are, by index (a masked write branches on
        # every row: 3× slower when a third to a half are out); where few are, masked.
        if 4 * eligible < n:
            return np.where(alive, score, np.float32(-np.inf))
        score[np.flatnonzero(~alive)] = -np.inf
        return score

    def _scratch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Two float32 columns of ``n`` rows, kept between choices: a fresh array of
        100,000 rows is new memory from the system, whose first touch costs more than
        the arithmetic on it."""
        if self._scratch_columns is None or self._scratch_columns.shape[1] < n:
            self._scratch_columns = np.empty((2, self._rows), np.float32)
        return self._scratch_columns[0][:n], self._scratch_columns[1][:n]

    def _best(
        self,
        alive: np.ndarray,
        eligible: int,
        task: Task,
        weights: Mapping[str, float],
        k: int,
        considered: int,
    ) -> Choice:
        normal = self._weigh(weights)
        score = self._scores(alive, eligible, task, normal)
        picked = []
        for _ in range(max(1, min(k, eligible))):
            row = int(np.argmax(score))  # ties: the first (older) row
            components = self._row_components(row, task.task_type, task.estimated_duration)
            total = sum(w * components[name] for w, name in zip(normal, COMPONENTS, strict=True))
            picked.append(self._scored(row, total, components, task))
            score[row] = -np.inf
        chosen, rest = picked[0], tuple(picked[1:])
        shown = ", ".join(f"{name} {chosen.components[name]:.2f}" for name in COMPONENTS)
        reason = (
            f"{chosen.agent_id} scores {chosen.score:.2f}, the best of {eligible} agents "
            f"that fit ({considered} considered): {shown}"
        )
        if rest:
            reason += f"; next best {rest[0].agent_id} at {rest[0].score:.2f}"
        return Choice(chosen, rest, considered, eligible, reason)

    def _scored(self, row: int, score: float, components: dict[str, float], task: Task) -> Scored:
        p_success = duration = None
        outcomes = 0
        columns = self._types.get(task.task_type)
        if columns is not None and columns.outcomes[row] > 0:
            outcomes = int(columns.outcomes[row])
            p_success = round(float(columns.p_success[row]), 6)
            known = float(columns.duration[row])
            duration = None if math.isnan(known) else round(known, 6)
        p_fail = float(self.p_fail[row])
        evidence = 0.5
        if self.scored[row]:
            evidence = 0.75 + 0.25 * outcomes / (outcomes + TYPE_PRIOR_OUTCOMES)
        confidence = evidence * (1.0 - (0.0 if math.isnan(p_fail) else p_fail))
        return Scored(
            agent_id=self.ids[row],
            score=round(score, 6),
            components=components,
            p_success=p_success,
            expected_duration_s=duration,
            confidence=round(confidence, 4),
        )

    def _bit(self, label: str) -> int:
        bit = self._labels.get(label)
        if bit is None:
            bit = self._labels[label] = len(self._labels)
            if bit // 64 >= self.caps.shape[1]:
                extra = np.zeros((self._rows, 1), np.uint64)
                self.caps = np.hstack([self.caps, extra])
        return bit

    def _resource(self, name: str) -> np.ndarray:
        column = self._resources.get(name)
        if column is None:
            column = self._resources[name] = np.full(self._rows, np.nan, np.float64)
        return column

    def _type(self, task_type: str) -> _TypeColumns:
        columns = self._types.get(task_type)
        if columns is None:
            columns = self._types[task_type] = _TypeColumns(self._rows)
        return columns

    def _grow(self) -> None:
        old, new = self._rows, self._rows * 2

        def grown(array: np.ndarray, fill: object) -> np.ndarray:
            bigger = np.empty((new, *array.shape[1:]), array.dtype)
            bigger[:old] = array
            bigger[old:] = fill
            return bigger

        self.tenant = grown(self.tenant, -1)
        self.state = grown(self.state, 0)
        self.caps = grown(self.caps, 0)
        self.capacity = grown(self.capacity, 1)
        self.open = grown(self.open, 0)
        self.open_at = grown(self.open_at, -np.inf)
        self.reserved = grown(self.reserved, 0)
        self.security = grown(self.security, 100.0)
        self.quarantined = grown(self.quarantined, False)
        self.scored = grown(self.scored, False)
        self.score_at = grown(self.score_at, -np.inf)
        self.performance = grown(self.performance, NEUTRAL)
        self.cost = grown(self.cost, NEUTRAL)
        self.sla = grown(self.sla, NEUTRAL)
        self.p_fail = grown(self.p_fail, np.nan)
        self.availability = grown(self.availability, 1.0)
        self.partial = grown(self.partial, 0.0)
        for name, column in self._resources.items():
            self._resources[name] = grown(column, np.nan)
        for columns in self._types.values():
            columns.p_success = grown(columns.p_success, 0.0)
            columns.duration = grown(columns.duration, np.nan)
            columns.outcomes = grown(columns.outcomes, 0)
            columns.evidence = grown(columns.evidence, 0.0)
            columns.slowing = grown(columns.slowing, np.nan)
        self._rows = new
