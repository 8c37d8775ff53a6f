"""The API's task assignment: an in-memory fleet kept current from the topics, the
reservations of this process, and the re-placing of refused tasks.

An :class:`Assigner` holds an :class:`agentwatch.assignment.Fleet` (numpy columns, one
row per agent) and folds into it what the agent projection (:mod:`api.projection`)
reads, as one of its listeners (same consumer, same thread; no second read of the
topics):

- registrations, state changes, quarantine requests and releases (``agents.control``,
  ``agents.state``, from their beginning) and security scores (``agents.security``):
  the agent's row is set from its :class:`agentwatch.directory.AgentView`;
- ``assignment_scores`` records (from the topic's end; at start the fleet is seeded
  once from ``assignment_scores_latest FINAL``, so it never waits for a new score and
  never queries ClickHouse per request);
- ``task_changed`` (the agent's shard's verdict): the shard's open count becomes the
  agent's, this process's reservation for the task is let go, and a task this process
  placed that the shard refused is placed again (attempt + 1, the refusing agents
  excluded) up to ``orchestration_max_attempts``, or marked unplaceable;
- ``weights_changed``: the weights of every later assignment (read from the
  beginning, so a restarted API uses the latest).

**No over-commit.** :meth:`Assigner.assign` chooses and reserves a slot under one lock
(so two requests in this process never take the same last slot), then publishes
``task_assigned`` (key = the agent) without the lock. The reservation counts against
the agent's capacity until the shard's verdict on the task arrives (or
``orchestration_reservation_ttl_s`` passes). The shard, which sees every process's
assignments of its agent in log order, is the authority: with two API processes, the
second placement of a last slot is refused there and placed again here.

**The answer does not wait for the broker** (unless
``orchestration_assign_awaits_broker``): ``task_assigned`` is queued and the request
answered; the reservation holds the slot meanwhile. If the broker does not take the
event, the slot is let go and the task is marked refused with the reason (its
``GET /api/v1/tasks/{id}`` says so). The broker's round trip was a third of the
answer's time at the 99th percentile (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import orjson
from clickhouse_connect.driver.client import Client

from agentwatch.assignment import Choice, Fleet, NoFit, Scored, Task, performance_level
from agentwatch.settings import Settings
from api.publisher import EventPublisher, PublishError
from schemas.events import (
    CONTROL_CHANNEL,
    STATE_CHANNEL,
    TASK_ASSIGNED,
    TASK_CHANGED,
    WEIGHTS_CHANGED,
)
from schemas.models import (
    LifecycleEvent,
    ScoreComponents,
    ScoringWeights,
    TaskAssignment,
    TaskRecord,
    TaskRequest,
)

log = logging.getLogger("api.assign")

#: The registry's event types that change what the fleet holds of an agent.
REGISTRY_EVENTS = frozenset({"registered", "status_changed", "quarantine_requested", "released"})
#: How long the re-placing worker waits for work before it looks whether to stop.
RETRY_WAIT_S = 0.2
#: Put on the re-placing queue by :meth:`Assigner.stop`: the worker wakes at once instead
#: of finishing its wait (every API shutdown waited up to :data:`RETRY_WAIT_S` for it).
_STOP = object()


class DuplicateTask(ValueError):
    """A task id this process placed already."""


def process_id() -> str:
    """This API process's name in ``assigned_by`` (host and pid).

    >>> process_id().startswith("api-")
    True
    """
    return f"api-{socket.gethostname()}-{os.getpid()}"[:128]


def task_of(request: TaskRequest, tenant_id: str, exclude: tuple[str, ...] = ()) -> Task:
    """What the fleet's filters and scoring need of a requested task."""
    return Task(
        tenant_id=tenant_id,
        task_type=request.task_type,
        required_capabilities=tuple(request.required_capabilities),
        resource_requirements=tuple(request.resource_requirements.items()),
        estimated_duration=request.estimated_duration,
        exclude=frozenset(exclude),
    )


def assignment_of(
    request: TaskRequest,
    task_id: str,
    attempt: int,
    chosen: Scored,
    weights: ScoringWeights,
    assigned_by: str,
) -> TaskAssignment:
    """The payload of the ``task_assigned`` that places ``request`` on ``chosen``."""
    return TaskAssignment(
        task_id=task_id, task_type=request.task_type, priority=request.priority,
        required_capabilities=request.required_capabilities,
        resource_requirements=request.resource_requirements,
        estimated_duration=request.estimated_duration, deadline=request.deadline,
        attempt=attempt, score=min(max(chosen.score, 0.0), 1.0),
        components=ScoreComponents(**chosen.components), weights=weights,
        p_success=chosen.p_success, expected_duration_s=chosen.expected_duration_s,
        assigned_by=assigned_by,
    )  # fmt: skip


@dataclass(slots=True)
class Decision:
    """A task this process placed, and what it knows of it since."""

    task_id: str
    tenant_id: str
    request: TaskRequest
    actor: str
    agent_id: str
    attempt: int
    assignment: TaskAssignment
    assigned_at: float
    status: str = "assigned"
    updated_at: float = 0.0
    reason: str = ""
    refused_by: list[str] = field(default_factory=list)
    open_tasks: int = 0
    capacity: int = 0


@dataclass(frozen=True, slots=True)
class Placed:
    """A task placed: the decision and the choice it came from."""

    decision: Decision
    choice: Choice


class Assigner:
    """The fleet, the weights, this process's reservations and decisions (see the
    module docstring). Thread-safe."""

    def __init__(
        self,
        settings: Settings,
        publisher: EventPublisher,
        name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.clock = clock  # when reservations expire (tests pass their own)
        self.publisher = publisher
        self.process_id = name or process_id()
        self.fleet = Fleet()
        self.lock = threading.Lock()
        self.weights = ScoringWeights(**settings.scoring_weights())
        self.projection = None
        self._decisions: OrderedDict[str, Decision] = OrderedDict()
        self._reservations: dict[str, tuple[str, float]] = {}
        self._expiry: deque[tuple[float, str]] = deque()
        self._retries: queue.SimpleQueue[str | object] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self.folded = 0
        self.skipped = 0
        self.fold_cpu_s = 0.0
        self.seeded = 0

    # --- life ------------------------------------------------------------------------
    def attach(self, projection: object) -> None:
        """Fold what ``projection`` reads (call before the projection starts)."""
        self.projection = projection
        projection.listen(self.on_message)

    def start(self) -> None:
        """Start the worker that places refused tasks again."""
        self._worker = threading.Thread(target=self._work, name="assigner", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._worker is not None:
            self._retries.put(_STOP)  # wake the worker now
            self._worker.join(timeout=5)

    @property
    def ready(self) -> bool:
        """Whether the registry has been read to its end (the fleet is complete)."""
        return self.projection is not None and self.projection.ready

    def wait_ready(self, timeout_s: float) -> bool:
        return self.projection is not None and self.projection.wait_ready(timeout_s)

    def seed(self, client: Client) -> int:
        """Fold the latest score of every agent from ``assignment_scores_latest`` (once,
        at start); how many rows."""
        db = self.settings.clickhouse_database
        rows = client.query(
            "SELECT agent_id, tenant_id, toFloat64(timestamp), performance, cost, sla, "
            f"active_tasks, p_fail, by_type FROM {db}.assignment_scores_latest FINAL"
        ).result_rows
        with self.lock:
            for agent_id, tenant_id, at, perf, cost, sla, active, p_fail, by_type in rows:
                self.fleet.set_score(
                    agent_id, performance=perf, cost=cost, sla=sla, at=at, tenant_id=tenant_id,
                    active_tasks=active, p_fail=p_fail, by_type=_by_type(by_type),
                )  # fmt: skip
        self.seeded = len(rows)
        log.info("assigner_seeded scores=%d", len(rows))
        return len(rows)

    # --- the fold (in the projection's thread, under its lock) ---------------------------
    def on_message(self, name: str, value: dict) -> None:
        """Fold one message of the projection's topics."""
        started = time.thread_time()
        try:
            if name in (CONTROL_CHANNEL, STATE_CHANNEL):
                kind = value.get("type")
                if kind == TASK_CHANGED:
                    self._task_changed(value.get("payload") or {})
                elif kind == WEIGHTS_CHANGED:
                    weights = ScoringWeights.model_validate(value.get("payload") or {})
                    with self.lock:
                        self.weights = weights
                elif kind in REGISTRY_EVENTS:
                    self._refresh(str(value.get("agent_id")))
                else:
                    return
            elif name == "security":
                self._refresh(str(value.get("agent_id")))
            elif name == "assignment_scores":
                self._score(value)
            else:
                return
            self.folded += 1
        except (ValueError, KeyError, TypeError) as exc:
            self.skipped += 1
            log.debug("assigner_message_skipped topic=%s reason=%r", name, str(exc)[:200])
        finally:
            self.fold_cpu_s += time.thread_time() - started

    def _refresh(self, agent_id: str) -> None:
        view = self.projection.directory.views.get(agent_id)
        if view is None:
            return
        score = view.security_score
        with self.lock:
            self.fleet.set_agent(
                view.agent_id, view.tenant_id, state=view.state,
                capabilities=view.capabilities, resources=view.resources,
                capacity=view.max_concurrent_tasks,
                security_score=self.settings.security_initial_score if score is None else score,
                quarantined=view.quarantine_requested or view.state == "quarantined",
            )  # fmt: skip

    def _score(self, record: dict) -> None:
        by_type = {
            task_type: (float(e["p_success"]), e.get("expected_duration_s"), int(e["outcomes"]))
            for task_type, e in (record.get("by_type") or {}).items()
        }
        with self.lock:
            self.fleet.set_score(
                str(record["agent_id"]), tenant_id=str(record["tenant_id"]),
                performance=float(record["performance"]), cost=float(record["cost"]),
                sla=float(record["sla"]), at=float(record["timestamp"]),
                active_tasks=int(record["active_tasks"]), p_fail=record.get("p_fail"),
                by_type=by_type,
            )  # fmt: skip

    def _task_changed(self, record: dict) -> None:
        task_id, agent_id = str(record["task_id"]), str(record["agent_id"])
        status, at = str(record["status"]), float(record["updated_at"])
        open_tasks = int(record["agent_active_tasks"])
        with self.lock:
            self.fleet.set_open(agent_id, open_tasks, at)
            if status == "assigned":
                return
            held = self._reservations.get(task_id)
            if held is not None and held[0] == agent_id:
                del self._reservations[task_id]
                self.fleet.reserve(agent_id, -1)
            decision = self._decisions.get(task_id)
            if decision is None or decision.agent_id != agent_id:
                return
            if int(record.get("attempt") or decision.attempt) != decision.attempt:
                return  # the verdict on an earlier attempt
            decision.status, decision.updated_at = status, at
            decision.reason = str(record.get("reason") or "")
            decision.open_tasks, decision.capacity = open_tasks, int(record.get("capacity") or 0)
        if status == "refused":
            self._retries.put(task_id)

    # --- assigning -----------------------------------------------------------------------
    def assign(self, request: TaskRequest, tenant_id: str, actor: str) -> Placed | NoFit:
        """Choose an agent for ``request``, reserve its slot and publish ``task_assigned``
        (:class:`PublishError`: nothing is held; :class:`DuplicateTask`: the task id was
        placed by this process already)."""
        task_id = request.task_id or f"task-{uuid.uuid4().hex}"
        with self.lock:
            placed = self._decisions.get(task_id)
            if placed is not None:
                # (the agent only to its own tenant: task ids are fleet-wide)
                on = f" (on {placed.agent_id})" if placed.tenant_id == tenant_id else ""
                raise DuplicateTask(
                    f"task {task_id!r} was placed already{on}; give a new task_id, or leave "
                    "it out to have one made"
                )
            outcome = self._place(
                request, task_id, tenant_id, actor, 1, tuple(request.exclude_agents)
            )
        if isinstance(outcome, NoFit):
            return outcome
        self._publish(outcome.decision)
        return outcome

    def _place(
        self,
        request: TaskRequest,
        task_id: str,
        tenant_id: str,
        actor: str,
        attempt: int,
        exclude: tuple[str, ...],
    ) -> Placed | NoFit:
        """Choose and reserve (under the lock)."""
        now = time.time()
        self._expire(self.clock())
        task = task_of(request, tenant_id, exclude)
        settings = self.settings
        choice = self.fleet.choose(
            task, self.weights.model_dump(), settings.orchestration_candidates,
            settings.orchestration_min_security_score,
        )  # fmt: skip
        if isinstance(choice, NoFit):
            return choice
        chosen = choice.chosen
        assignment = assignment_of(request, task_id, attempt, chosen, self.weights, self.process_id)
        previous = self._decisions.pop(task_id, None)
        decision = Decision(
            task_id=task_id, tenant_id=tenant_id, request=request, actor=actor,
            agent_id=chosen.agent_id, attempt=attempt, assignment=assignment,
            assigned_at=now, updated_at=now, reason=choice.reason,
            refused_by=previous.refused_by if previous is not None else [],
        )  # fmt: skip
        self._decisions[task_id] = decision
        while len(self._decisions) > settings.orchestration_recent_tasks:
            self._decisions.popitem(last=False)
        self.fleet.reserve(chosen.agent_id)
        expires = self.clock() + settings.orchestration_reservation_ttl_s
        self._reservations[task_id] = (chosen.agent_id, expires)
        self._expiry.append((expires, task_id))
        return Placed(decision, choice)

    def _publish(self, decision: Decision) -> None:
        event = LifecycleEvent(
            type=TASK_ASSIGNED, agent_id=decision.agent_id, tenant_id=decision.tenant_id,
            actor=decision.actor, timestamp=decision.assigned_at,
            payload=decision.assignment.model_dump(mode="json"),
        ).model_dump(mode="json")  # fmt: skip
        try:
            if self.settings.orchestration_assign_awaits_broker:
                self.publisher.publish(event, key=decision.agent_id)
            else:
                self.publisher.publish_later(
                    event, decision.agent_id, partial(self._not_published, decision)
                )
        except PublishError:
            with self.lock:
                self._let_go(decision)
                if decision.attempt == 1:
                    self._decisions.pop(decision.task_id, None)
            raise

    def _not_published(self, decision: Decision, reason: str) -> None:
        """The broker did not take a ``task_assigned`` answered already: the slot goes, and
        the task says why (refused; not placed again: the broker is the trouble)."""
        log.error(
            "task_assigned_not_published task_id=%s agent_id=%s reason=%s",
            decision.task_id, decision.agent_id, reason,
        )  # fmt: skip
        with self.lock:
            self._let_go(decision)
            if decision.status == "assigned":
                decision.status, decision.updated_at = "refused", time.time()
                decision.reason = f"unplaceable: task_assigned was not published ({reason})"

    def _let_go(self, decision: Decision) -> None:
        """Release the reservation of ``decision``'s slot, if held (under the lock)."""
        held = self._reservations.pop(decision.task_id, None)
        if held is not None:
            self.fleet.reserve(held[0], -1)

    def _expire(self, now: float) -> None:
        """Let go of reservations the shard never answered within their time."""
        while self._expiry and self._expiry[0][0] <= now:
            _, task_id = self._expiry.popleft()
            held = self._reservations.get(task_id)
            if held is not None and held[1] <= now:
                del self._reservations[task_id]
                self.fleet.reserve(held[0], -1)

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                task_id = self._retries.get(timeout=RETRY_WAIT_S)
            except queue.Empty:
                continue
            if task_id is _STOP:
                break
            try:
                self.place_again(task_id)
            except Exception:  # one task's failure must not stop the others' re-placing
                log.exception("assigner_replace_failed task_id=%s", task_id)

    def place_again(self, task_id: str) -> Placed | NoFit | None:
        """Place a refused task on the next best agent (its refusing agents excluded), or
        mark it unplaceable; None when there is nothing to do."""
        with self.lock:
            decision = self._decisions.get(task_id)
            if decision is None or decision.status != "refused":
                return None
            refused = [*decision.refused_by, decision.agent_id]
            if decision.attempt >= self.settings.orchestration_max_attempts:
                decision.reason = (
                    f"unplaceable: refused by {', '.join(refused)} after {decision.attempt} "
                    f"attempts ({decision.reason or 'no reason given'})"
                )
                decision.refused_by = refused
                log.warning("task_unplaceable task_id=%s attempts=%d", task_id, decision.attempt)
                return None
            exclude = (*decision.request.exclude_agents, *refused)
            outcome = self._place(
                decision.request, task_id, decision.tenant_id, decision.actor,
                decision.attempt + 1, exclude,
            )  # fmt: skip
            if isinstance(outcome, NoFit):
                decision.refused_by = refused
                decision.reason = (
                    f"unplaceable after {decision.attempt} attempts: {outcome.summary}"
                )
                log.warning("task_unplaceable task_id=%s %s", task_id, outcome.summary)
                return outcome
            outcome.decision.refused_by = refused
        try:
            self._publish(outcome.decision)
        except PublishError as exc:
            with self.lock:
                outcome.decision.status = "refused"
                outcome.decision.reason = f"unplaceable: placing it again failed ({exc})"
            return None
        log.info(
            "task_placed_again task_id=%s agent_id=%s attempt=%d",
            task_id, outcome.decision.agent_id, outcome.decision.attempt,
        )  # fmt: skip
        return outcome

    # --- weights ---------------------------------------------------------------------
    def set_weights(self, weights: ScoringWeights, actor: str) -> None:
        """Publish ``weights_changed`` and use the weights at once in this process."""
        event = LifecycleEvent(
            type=WEIGHTS_CHANGED, agent_id="*", tenant_id="*", actor=actor,
            timestamp=time.time(), payload=weights.model_dump(mode="json"),
        ).model_dump(mode="json")  # fmt: skip
        self.publisher.publish(event, key="*")
        with self.lock:
            self.weights = weights

    # --- questions -------------------------------------------------------------------
    def pending_task(self, task_id: str) -> TaskRecord | None:
        """A task this process placed recently, as a :class:`TaskRecord` (for
        ``GET /api/v1/tasks/{id}`` before the tasks table has it); an unplaceable task is
        ``refused`` with a reason that says so."""
        with self.lock:
            d = self._decisions.get(task_id)
            if d is None:
                return None
            a = d.assignment
            return TaskRecord(
                task_id=d.task_id, agent_id=d.agent_id, tenant_id=d.tenant_id,
                task_type=a.task_type, priority=a.priority, status=d.status, attempt=d.attempt,
                required_capabilities=list(a.required_capabilities), score=a.score,
                components=a.components, p_success=a.p_success,
                expected_duration_s=a.expected_duration_s, deadline=a.deadline,
                assigned_at=d.assigned_at, reason=d.reason if d.status != "assigned" else "",
                agent_active_tasks=d.open_tasks, capacity=d.capacity,
                assigned_by=self.process_id, updated_at=d.updated_at,
            )  # fmt: skip

    def orchestration(self, agent_id: str) -> dict | None:
        """The agent's orchestration section of its status (None: not in the fleet)."""
        with self.lock:
            described = self.fleet.describe(agent_id, self.weights.model_dump())
        if described is None:
            return None
        performance = described["components"]["performance"]
        described["performance_level"] = performance_level(
            performance if described.pop("scored") else None
        )
        return described

    def stats(self) -> dict[str, object]:
        with self.lock:
            reserved = len(self._reservations)
        return {
            "agents": len(self.fleet),
            "seeded": self.seeded,
            "folded": self.folded,
            "skipped": self.skipped,
            "reservations": reserved,
            "fold_cpu_s": round(self.fold_cpu_s, 3),
            "fold_us_per_message": round(self.fold_cpu_s / self.folded * 1e6, 2)
            if self.folded
            else None,
        }


def _by_type(text: str) -> dict[str, tuple[float, float | None, int]]:
    """The ``by_type`` column (JSON of task type → TypeEstimate) as the fleet takes it."""
    if not text:
        return {}
    return {
        task_type: (float(e["p_success"]), e.get("expected_duration_s"), int(e["outcomes"]))
        for task_type, e in orjson.loads(text).items()
    }
