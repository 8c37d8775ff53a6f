"""The simulated fleet's task stream: submit tasks to the API, run them, report outcomes.

:class:`TaskRunner` plays both sides of the orchestration for a simulated fleet
(:class:`agentwatch.taskworld.TaskWorld`, the same agents as the heartbeat simulator):

1. **the client**: tasks of the world's stream arrive (Poisson, ``tasks_per_s`` per
   wall-clock second on average, with the daily load shape of the wall clock) and each is
   submitted to ``POST /api/v1/tasks/assign`` (``Task.request``); a 409 means no agent fits
   (counted as unplaceable, the API's summary logged now and then);
2. **the agents**: a task starts when its agent is told to run it — a ``run_task``
   command on ``agents.commands`` naming the task (``start_on="command"``, the design:
   only a task the agent's shard accepted becomes a command), or at once on the API's
   answer (``start_on="assigned"``, without the dataflow's confirmation). A ``cancel_task``
   command drops a running task without an outcome. The world says how it ends given the
   agent's hidden traits and the tasks it runs at that moment, and when; then the agent
   reports ``task_completed`` or ``task_failed`` (payload ``TaskOutcome``: task_id,
   task_type, duration_s, reason) on ``agents.events``, keyed by the agent.

**Time is compressed** by ``time_scale``: the world's tasks take minutes, which would make
a demo slow, so on the wall clock every duration — the estimate sent to the API, the time
left until the deadline, the run itself and the ``duration_s`` reported — is the world's
divided by ``time_scale`` (default 10: a 2-minute task runs 12 s). Event times are the wall
clock, so everything the API and the shard see is consistent on one clock.

The running tasks per agent are the heartbeats' load (``FleetSimulator.attach_tasks``):
``running`` is handed to the fleet as its ``live_active_tasks``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import orjson

from agentwatch.settings import Settings
from agentwatch.taskworld import Task, TaskWorld
from schemas.events import TASK_COMPLETED, TASK_FAILED
from schemas.models import LifecycleEvent, TaskOutcome

log = logging.getLogger("agentwatch.simulate.tasks")

#: World seconds per wall-clock second of the task stream's durations (see the module doc).
DEFAULT_TIME_SCALE = 10.0
#: Tasks assigned without a run_task command within this many wall seconds are given up.
DEFAULT_START_TIMEOUT_S = 120.0
#: Assign requests in flight at once.
ASSIGN_CONCURRENCY = 4
#: How often the runner logs its counts (wall seconds).
STATS_EVERY_S = 30.0
#: Commands that start and stop a task (schemas.models.AgentCommand.command).
RUN_TASK, CANCEL_TASK = "run_task", "cancel_task"

StartOn = Literal["command", "assigned"]


@dataclass(frozen=True)
class TaskStreamOptions:
    """What the task stream does (``agentwatch simulate --tasks-per-s …``)."""

    tasks_per_s: float
    time_scale: float = DEFAULT_TIME_SCALE
    start_on: StartOn = "command"
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.tasks_per_s <= 0:
            raise ValueError(f"--tasks-per-s must be > 0 (got {self.tasks_per_s:g})")
        if self.time_scale <= 0:
            raise ValueError(f"--task-time-scale must be > 0 (got {self.time_scale:g})")
        if self.start_on not in ("command", "assigned"):
            raise ValueError(f"--task-start is 'command' or 'assigned', not {self.start_on!r}")

    def utilisation(self, world: TaskWorld) -> float:
        """The fleet's mean share of busy slots this stream offers (for the history's
        heartbeats): the world's load at this rate, shortened by the time scale."""
        return world.mean_capacity_load(self.tasks_per_s) / self.time_scale


@dataclass(frozen=True)
class AssignAnswer:
    """The API's answer to one assign: the status, the chosen agent (200), why not (else)."""

    status: int
    agent_id: str | None = None
    detail: str = ""


Assign = Callable[[dict], AssignAnswer]


def http_assigner(api_url: str, key: str, http: object) -> Assign:
    """Submit to ``POST /api/v1/tasks/assign`` with ``key`` over ``http`` (an httpx.Client).

    200 → ``{"task_id", "status": "assigned", "assignment": {"agent_id", …}, …}``;
    409 → ``{"detail": "0/812 agents fit: …", "unfit": {…}, "considered": n}``.
    """
    url = f"{api_url.rstrip('/')}/api/v1/tasks/assign"
    headers = {"Authorization": f"Bearer {key}"}

    def assign(body: dict) -> AssignAnswer:
        try:
            answer = http.post(url, json=body, headers=headers)
        except Exception as exc:  # httpx.HTTPError: the API is down or slow
            return AssignAnswer(0, detail=f"{type(exc).__name__}: {exc}")
        try:
            data = answer.json()
        except ValueError:
            data = {}
        if answer.status_code == 200:
            agent_id = (data.get("assignment") or {}).get("agent_id")
            if agent_id:
                return AssignAnswer(200, agent_id)
            return AssignAnswer(0, detail=f"200 without assignment.agent_id: {answer.text[:200]}")
        detail = data.get("detail") if isinstance(data, dict) else None
        return AssignAnswer(answer.status_code, detail=str(detail or answer.text[:300]))

    return assign


@dataclass
class TaskStats:
    """What the stream did so far."""

    submitted: int = 0
    assigned: int = 0
    unplaceable: int = 0  # 409: no agent fits
    errors: int = 0  # any other answer
    started: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0  # cancel_task: dropped without an outcome
    moved: int = 0  # run_task on another agent for a task that ran or was released
    never_started: int = 0  # assigned, but no run_task came in time
    last_unplaceable: str = ""
    first_error: str = ""

    def line(self) -> str:
        return " ".join(
            f"{name}={value}"
            for name, value in vars(self).items()
            if not name.startswith(("last_", "first_"))
        )


@dataclass
class _Running:
    task: Task
    agent: int
    due: float  # wall clock
    success: bool
    duration_s: float  # wall seconds
    reason: str


class KafkaOutcomeSink:
    """Writes agents' events to ``agents.events`` (key = agent id) with librdkafka."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer

        self.topic = settings.topic("events")
        self._producer = Producer({**settings.kafka_config(), "linger.ms": 5, "acks": 1})
        self.delivery_errors = 0

    def send(self, event: dict) -> None:
        self._producer.produce(
            self.topic,
            key=event["agent_id"].encode(),
            value=orjson.dumps(event),
            on_delivery=self._delivered,
        )
        self._producer.poll(0)

    def _delivered(self, error: object, message: object) -> None:
        if error is not None:
            self.delivery_errors += 1

    def close(self, timeout_s: float = 5.0) -> None:
        self.delivery_errors += self._producer.flush(timeout_s)


def kafka_commands(
    settings: Settings, stop: threading.Event, ready: threading.Event
) -> Iterator[dict]:
    """The commands on ``agents.commands`` from now on (JSON dicts), until ``stop``.

    Reads every partition from its end as it is when called (no replay of old
    commands, none missed after ``ready`` is set).
    """
    from confluent_kafka import Consumer, TopicPartition

    topic = settings.topic("commands")
    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": f"agentwatch-simulator-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        positions = []
        for p in partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            positions.append(TopicPartition(topic, p, high))
        consumer.assign(positions)
        ready.set()
        while not stop.is_set():
            for message in consumer.consume(500, timeout=0.2):
                if message.error() is None:
                    try:
                        yield orjson.loads(message.value())
                    except orjson.JSONDecodeError:
                        continue
    finally:
        consumer.close()


class TaskRunner:
    """Submits the world's tasks, runs the assigned ones as their agents, reports outcomes.

    ``assign`` submits one task (:func:`http_assigner`); ``outcomes`` takes the agents'
    events (:class:`KafkaOutcomeSink`); ``commands`` yields the commands on
    ``agents.commands`` (:func:`kafka_commands`; not needed with ``start_on="assigned"``).
    ``running`` (one count per agent) is what each agent runs now.
    """

    def __init__(
        self,
        world: TaskWorld,
        options: TaskStreamOptions,
        assign: Assign,
        outcomes: object,
        *,
        commands: Callable[[threading.Event, threading.Event], Iterator[dict]] | None = None,
        run_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if options.start_on == "command" and commands is None:
            raise ValueError("start_on='command' needs the commands of agents.commands")
        self.world = world
        self.options = options
        self.stats = TaskStats()
        self.running = np.zeros(len(world.agents), dtype=np.int64)
        self.prefix = f"sim-{run_id or uuid.uuid4().hex[:8]}-"
        self._assign = assign
        self._outcomes = outcomes
        self._commands = commands
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        #: Submitted tasks waiting for their run_task: (task, the API's agent or None
        #: before its answer, when submitted).
        self._assigned: dict[str, tuple[Task, str | None, float]] = {}
        self._active: dict[str, _Running] = {}
        self._due: list[tuple[float, int, _Running]] = []  # (due, order, run)
        #: Tasks cancelled (released) recently, by id: a run_task elsewhere moves them.
        self._released: dict[str, tuple[Task, float]] = {}
        self._order = itertools.count()
        self._threads: list[threading.Thread] = []

    # --- running ------------------------------------------------------------------------
    def start(self, stop: threading.Event, *, limit: int | None = None) -> None:
        """Run in background threads until ``stop`` (``limit``: submit that many tasks,
        then only finish the ones running)."""
        ready = threading.Event()
        if self._commands is not None:
            self._spawn("task-commands", self._follow_commands, stop, ready)
            if not ready.wait(15.0) and not stop.is_set():
                log.warning("task_commands_not_ready: agents.commands not readable yet")
        self._spawn("task-arrivals", self._submit_arrivals, stop, limit)
        self._spawn("task-clock", self._finish_due, stop)
        log.info(
            "task_stream_started tasks_per_s=%g time_scale=%g start_on=%s utilisation=%.2f "
            "prefix=%s",
            self.options.tasks_per_s,
            self.options.time_scale,
            self.options.start_on,
            self.options.utilisation(self.world),
            self.prefix,
        )

    def join(self, timeout_s: float = 10.0) -> None:
        """Wait for the threads to end (after ``stop``); log the final counts."""
        with self._wake:
            self._wake.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        log.info("task_stream_done %s", self.stats.line())

    def idle(self) -> bool:
        """True when no task waits for an answer or its command, or runs."""
        with self._lock:
            return not self._assigned and not self._active

    def _spawn(self, name: str, target: Callable, *args: object) -> None:
        thread = threading.Thread(target=self._guarded, args=(target, *args), name=name)
        thread.daemon = True
        thread.start()
        self._threads.append(thread)

    def _guarded(self, target: Callable, *args: object) -> None:
        try:
            target(*args)
        except Exception:
            log.exception("task_stream_thread_failed thread=%s", threading.current_thread().name)

    # --- the client's side: arrivals and assigns ------------------------------------------
    def _submit_arrivals(self, stop: threading.Event, limit: int | None) -> None:
        arrivals = self.world.tasks(
            self.options.tasks_per_s, start_s=self._clock(), count=limit, prefix=self.prefix
        )
        last_stats = time.monotonic()
        with ThreadPoolExecutor(ASSIGN_CONCURRENCY, thread_name_prefix="task-assign") as pool:
            for task in arrivals:
                wait = task.arrival_s - self._clock()
                if wait > 0 and stop.wait(wait):
                    break
                if stop.is_set():
                    break
                pool.submit(self._submit, task)
                if time.monotonic() - last_stats >= STATS_EVERY_S:
                    last_stats = time.monotonic()
                    log.info("task_stream %s", self.stats.line())
                    if self.stats.last_unplaceable:
                        log.info("task_unplaceable_last detail=%s", self.stats.last_unplaceable)

    def _submit(self, task: Task) -> None:
        with self._wake:  # known before the request: its run_task may beat the API's answer
            self._assigned[task.task_id] = (task, None, self._clock())
        answer = self._assign(task.request(time_scale=self.options.time_scale))
        with self._wake:
            self.stats.submitted += 1
            waiting = self._assigned.get(task.task_id)  # None: started (or lapsed) already
            if answer.status == 200 and answer.agent_id in self.world.index:
                self.stats.assigned += 1
                if waiting is not None:
                    self._assigned[task.task_id] = (task, answer.agent_id, waiting[2])
                    if self.options.start_on == "assigned":
                        self._start_locked(task.task_id, answer.agent_id)
                return
            self._assigned.pop(task.task_id, None)
            if answer.status == 409:
                self.stats.unplaceable += 1
                self.stats.last_unplaceable = answer.detail
            else:
                self.stats.errors += 1
                if not self.stats.first_error:
                    self.stats.first_error = f"{answer.status} {answer.detail}"
                    log.warning(
                        "task_assign_error status=%s detail=%s", answer.status, answer.detail
                    )

    # --- the agents' side: commands, runs, outcomes ----------------------------------------
    def _follow_commands(self, stop: threading.Event, ready: threading.Event) -> None:
        for command in self._commands(stop, ready):
            kind, task_id = command.get("command"), command.get("task_id")
            if kind not in (RUN_TASK, CANCEL_TASK) or not task_id:
                continue
            with self._wake:
                if kind == RUN_TASK:
                    self._start_locked(task_id, command.get("agent_id"))
                else:
                    self._cancel_locked(task_id, command.get("agent_id"))

    def _start_locked(self, task_id: str, agent_id: str | None) -> None:
        """Start a task we submitted on the agent told to run it (the lock is held).

        A replayed command changes nothing. A run_task on another agent for a task that
        runs or was released moves it (load balancing: the new agent's shard may speak
        before the old one's cancel_task, or after it): it starts afresh there.
        """
        run = self._active.get(task_id)
        if run is not None:
            if self.world.index.get(agent_id or "") in (None, run.agent):
                return  # a replayed command: it runs once
            self._drop_locked(run)
            task, moved = run.task, True
        elif task_id in self._assigned:
            task, assigned_to, _ = self._assigned[task_id]
            agent_id, moved = agent_id or assigned_to, False
        elif task_id in self._released:
            task, moved = self._released[task_id][0], True
        else:
            return  # not ours
        agent = self.world.index.get(agent_id or "")
        if agent is None:
            return  # an agent not of this fleet: the task stays where it was
        self._assigned.pop(task_id, None)
        self._released.pop(task_id, None)
        self.stats.moved += moved
        self.running[agent] += 1
        outcome = self.world.outcome(task, agent, int(self.running[agent]))
        duration = outcome.duration_s / self.options.time_scale
        run = _Running(
            task, agent, self._clock() + duration, outcome.success, duration, outcome.reason
        )
        self._active[task_id] = run
        heapq.heappush(self._due, (run.due, next(self._order), run))
        self.stats.started += 1
        self._wake.notify_all()

    def _cancel_locked(self, task_id: str, agent_id: str | None) -> None:
        """Drop a task without an outcome (the agent named, if any, must be the one that
        has it: a cancel that comes after the task moved on leaves the new run alone)."""
        agent = self.world.index.get(agent_id or "")
        run = self._active.get(task_id)
        if run is not None and agent in (None, run.agent):
            self._drop_locked(run)
            self._released[task_id] = (run.task, self._clock())
            self.stats.cancelled += 1
        elif run is None and task_id in self._assigned:
            task = self._assigned.pop(task_id)[0]
            self._released[task_id] = (task, self._clock())
            self.stats.cancelled += 1

    def _drop_locked(self, run: _Running) -> None:
        """Forget a run (its due entry is skipped when it comes up)."""
        del self._active[run.task.task_id]
        self.running[run.agent] -= 1

    def _finish_due(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self._wake:
                now = self._clock()
                due: list[_Running] = []
                while self._due and self._due[0][0] <= now:
                    _, _, run = heapq.heappop(self._due)
                    if self._active.get(run.task.task_id) is run:  # else cancelled or moved
                        self._drop_locked(run)
                        due.append(run)
                self._expire_unstarted_locked(now)
                wait = min(self._due[0][0] - now, 1.0) if self._due else 1.0
            for run in due:
                self._report(run)
            if not due:
                with self._wake:
                    self._wake.wait(max(0.0, wait))

    def _expire_unstarted_locked(self, now: float) -> None:
        timeout = self.options.start_timeout_s
        for task_id in [t for t, (_, at) in self._released.items() if now - at > timeout]:
            del self._released[task_id]  # released for good: not moved
        stale = [tid for tid, (_, _, at) in self._assigned.items() if now - at > timeout]
        for task_id in stale:
            del self._assigned[task_id]
            self.stats.never_started += 1
            if self.stats.never_started == 1:
                log.warning(
                    "task_never_started task_id=%s after_s=%g: no run_task command came for it "
                    "(is the dataflow running, does it accept tasks?); --task-start assigned "
                    "runs tasks on the API's answer instead",
                    task_id,
                    timeout,
                )

    def _report(self, run: _Running) -> None:
        agent = self.world.agents[run.agent]
        payload = TaskOutcome(
            task_id=run.task.task_id,
            task_type=run.task.task_type,
            duration_s=round(run.duration_s, 3),
            reason=run.reason,
        ).model_dump(mode="json")
        event = LifecycleEvent(
            type=TASK_COMPLETED if run.success else TASK_FAILED,
            agent_id=agent.agent_id,
            tenant_id=agent.tenant_id,
            actor=agent.agent_id,
            timestamp=self._clock(),
            payload=payload,
        ).model_dump(mode="json")
        self._outcomes.send(event)
        with self._lock:
            if run.success:
                self.stats.completed += 1
            else:
                self.stats.failed += 1


@dataclass
class RecordingSink:
    """Keeps the events it is sent (for ``--output`` runs and tests)."""

    events: list[dict] = field(default_factory=list)

    def send(self, event: dict) -> None:
        self.events.append(event)

    def close(self, timeout_s: float = 0.0) -> None:
        pass
