"""The simulator's task stream (infra/tasks.py): submit, run on command, report outcomes.

The assign route is another part of the issue: here the API's answer is played by a
function (or a small HTTP stand-in for the wiring test), and the dataflow's ``run_task``
commands are written to the real broker by the test, as the agent's shard would.
"""

from __future__ import annotations

import dataclasses
import gc
import http.server
import json
import queue
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from confluent_kafka import Producer
from pydantic import SecretStr
from typer.testing import CliRunner

from agentwatch.settings import Settings
from agentwatch.simulator import FleetSimulator
from agentwatch.taskworld import TaskWorld
from infra.broker import ensure_topics
from infra.cli import app
from infra.tasks import (
    AssignAnswer,
    KafkaOutcomeSink,
    RecordingSink,
    TaskRunner,
    TaskStreamOptions,
    http_assigner,
    kafka_commands,
)
from schemas.models import AgentCommand, LifecycleEvent, Registration, TaskOutcome, TaskRequest
from tests.conftest import read_topic, wait_until
from tests.test_bridge import consume
from tests.test_client import served  # noqa: F401  (the fixture: the API under uvicorn)


class LeastLoaded:
    """Plays the API: checks the request, answers with the least-loaded capable agent."""

    def __init__(self, world: TaskWorld, runner_ref: list, unplaceable: set[str] = frozenset()):
        self.world, self.runner_ref, self.unplaceable = world, runner_ref, unplaceable
        self.requests: list[dict] = []
        self.chosen: dict[str, str] = {}
        self.lock = threading.Lock()

    def __call__(self, body: dict) -> AssignAnswer:
        request = TaskRequest.model_validate(body)
        with self.lock:
            self.requests.append(body)
            if request.task_type in self.unplaceable:
                return AssignAnswer(409, detail=f"0/{len(self.world.agents)} agents fit: …")
            running = self.runner_ref[0].running
            able = [
                a
                for a in self.world.agents
                if set(request.required_capabilities) <= set(a.capabilities)
                and all(
                    a.resources.get(k, 0) >= v for k, v in request.resource_requirements.items()
                )
            ]
            best = min(able, key=lambda a: running[a.index] / a.max_concurrent_tasks)
            self.chosen[request.task_id] = best.agent_id
            return AssignAnswer(200, best.agent_id)


def test_tasks_start_on_the_answer_and_end_as_the_world_says_without_kafka() -> None:
    world = TaskWorld(12, seed=4)
    options = TaskStreamOptions(tasks_per_s=100.0, time_scale=400.0, start_on="assigned")
    ref: list = []
    api = LeastLoaded(world, ref, unplaceable={"ml_inference"})
    sink = RecordingSink()
    runner = TaskRunner(world, options, api, sink, run_id="unit")
    ref.append(runner)
    stop = threading.Event()
    runner.start(stop, limit=60)
    try:
        wait_until(
            lambda: runner.stats.submitted == 60 and runner.idle(), 20, "the 60 tasks to end"
        )
    finally:
        stop.set()
        runner.join()
    stats = runner.stats
    ml = sum(r["task_type"] == "ml_inference" for r in api.requests)
    assert stats.unplaceable == ml and stats.assigned == 60 - ml == stats.started
    assert stats.completed + stats.failed == stats.started and stats.errors == 0
    assert (runner.running == 0).all()
    assert len(sink.events) == stats.started
    by_task = {r["task_id"]: r for r in api.requests}
    for event in sink.events:
        event = LifecycleEvent.model_validate(event)
        outcome = TaskOutcome.model_validate(event.payload)
        assert event.agent_id == api.chosen[outcome.task_id] == event.actor
        assert event.type == ("task_completed" if not outcome.reason else "task_failed")
        assert outcome.task_type == by_task[outcome.task_id]["task_type"]
        assert outcome.task_id.startswith("sim-unit-")
        # durations are the world's, compressed by the time scale (a task of ~1 min: 0.15 s)
        assert 0 < outcome.duration_s < 5.0


def test_a_run_task_that_beats_the_apis_answer_still_starts_the_task() -> None:
    """The shard may accept a task and order it run before the API's answer is read."""
    world = TaskWorld(6, seed=1)
    commands: queue.Queue = queue.Queue()
    ref: list = []

    def fast_shard(body: dict) -> AssignAnswer:
        agent = next(a for a in world.agents if body["task_type"] in a.capabilities)
        commands.put(
            {"command": "run_task", "task_id": body["task_id"], "agent_id": agent.agent_id}
        )
        wait_until(lambda: ref[0].stats.started > len(answered), 5, "the command to be taken")
        answered.append(body["task_id"])
        return AssignAnswer(200, agent.agent_id)

    answered: list[str] = []
    options = TaskStreamOptions(tasks_per_s=50.0, time_scale=1000.0, start_on="command")
    sink = RecordingSink()
    runner = TaskRunner(
        world, options, fast_shard, sink, commands=queued_commands(commands), run_id="race"
    )
    ref.append(runner)
    stop = threading.Event()
    runner.start(stop, limit=5)
    try:
        wait_until(lambda: len(sink.events) == 5, 10, "the 5 outcomes")
    finally:
        stop.set()
        runner.join()
    assert runner.stats.started == runner.stats.assigned == 5 and runner.stats.never_started == 0


def queued_commands(commands: queue.Queue):
    """Commands as a test hands them over (instead of agents.commands)."""

    def follow(stop: threading.Event, ready: threading.Event):
        ready.set()
        while not stop.is_set():
            try:
                yield commands.get(timeout=0.05)
            except queue.Empty:
                continue

    return follow


def test_a_moved_task_runs_once_on_its_new_agent_whichever_shard_speaks_first() -> None:
    world = TaskWorld(12, seed=2)
    commands: queue.Queue = queue.Queue()
    bodies: dict[str, dict] = {}

    def able(body: dict) -> list[str]:
        return [a.agent_id for a in world.agents if body["task_type"] in a.capabilities]

    def answer(body: dict) -> AssignAnswer:
        bodies[body["task_id"]] = body
        return AssignAnswer(200, able(body)[0])

    options = TaskStreamOptions(tasks_per_s=20.0, time_scale=40.0, start_on="command")
    sink = RecordingSink()
    runner = TaskRunner(world, options, answer, sink, commands=queued_commands(commands))
    stop = threading.Event()
    runner.start(stop, limit=2)

    def say(kind: str, task_id: str, agent_id: str) -> None:
        commands.put({"command": kind, "task_id": task_id, "agent_id": agent_id})

    try:
        wait_until(lambda: runner.stats.assigned == 2, 10, "2 tasks assigned")
        first, second = sorted(bodies)
        old1, new1 = able(bodies[first])[:2]
        old2, new2 = able(bodies[second])[:2]
        # first: the new agent's shard speaks before the old one's cancel
        say("run_task", first, old1)
        say("run_task", first, new1)
        say("cancel_task", first, old1)
        # second: the old one's cancel comes first
        say("run_task", second, old2)
        say("cancel_task", second, old2)
        say("run_task", second, new2)
        wait_until(lambda: len(sink.events) == 2 and runner.idle(), 15, "2 outcomes")
        time.sleep(0.2)  # nothing else comes
    finally:
        stop.set()
        runner.join()
    reported = {e["payload"]["task_id"]: e["agent_id"] for e in sink.events}
    assert reported == {first: new1, second: new2}
    assert runner.stats.moved == 2 and runner.stats.cancelled == 1 and runner.stats.started == 4
    assert (runner.running == 0).all()


def produce_commands(settings: Settings, commands: list[AgentCommand]) -> None:
    producer = Producer(settings.kafka_config())
    for command in commands:
        producer.produce(
            settings.topic("commands"),
            key=command.agent_id.encode(),
            value=command.model_dump_json().encode(),
        )
    producer.flush(10)


def read_events(settings: Settings) -> list[tuple[bytes, dict]]:
    """Every message on agents.events now, each partition to its end (one consume of 1 s
    returned what had been fetched by then: on a slow machine not every partition)."""
    messages = read_topic(settings.bootstrap_servers, settings.topic("events"))
    return [(m.key(), orjson.loads(m.value())) for m in messages]


def test_an_agent_runs_a_task_when_told_and_reports_its_outcome_on_the_events_topic(
    settings: Settings,
) -> None:
    ensure_topics(settings)
    world = TaskWorld(10, seed=5, tenant_ids=["tenant-a"] * 10)
    options = TaskStreamOptions(
        tasks_per_s=50.0, time_scale=200.0, start_on="command", start_timeout_s=2.0
    )
    ref: list = []
    api = LeastLoaded(world, ref)
    outcomes = KafkaOutcomeSink(settings)
    runner = TaskRunner(
        world,
        options,
        api,
        outcomes,
        commands=lambda stop, ready: kafka_commands(settings, stop, ready),
        run_id="kafka",
    )
    ref.append(runner)
    # An old command on the topic (a run before this one) is not replayed.
    old = AgentCommand(
        command_id="old", agent_id="agent-000000", tenant_id="tenant-a", command="run_task",
        reason="old", issued_at=time.time(), task_id="sim-kafka-0000000",
    )  # fmt: skip
    produce_commands(settings, [old])
    stop = threading.Event()
    runner.start(stop, limit=12)
    try:
        wait_until(lambda: runner.stats.assigned == 12, 20, "12 tasks assigned")
        assert runner.stats.started == 0  # nothing runs before its command
        ids = sorted(api.chosen)
        told, cancelled = ids[:10], ids[10]  # ids[11] gets no command

        def command(task_id: str, kind: str, n: int) -> AgentCommand:
            return AgentCommand(
                command_id=f"c{n}", agent_id=api.chosen[task_id], tenant_id="tenant-a",
                command=kind, reason="test", issued_at=time.time(), task_id=task_id,
            )  # fmt: skip

        produce_commands(
            settings,
            [command(t, "run_task", i) for i, t in enumerate(told)]
            + [command(told[0], "run_task", 99)]  # a replayed command: it runs once
            + [command(cancelled, "run_task", 100), command(cancelled, "cancel_task", 101)],
        )
        wait_until(lambda: runner.stats.completed + runner.stats.failed == 10, 30, "10 outcomes")
        wait_until(lambda: runner.stats.never_started == 1, 30, "the forgotten task to lapse")
        # the cancelled task's commands are keyed by its agent: on a partition of
        # agents.commands that may be read after the ten outcomes came
        wait_until(lambda: runner.stats.cancelled >= 1, 30, "the cancelled task's commands")
    finally:
        stop.set()
        runner.join()
        outcomes.close()
    assert runner.stats.started == 11 and runner.stats.cancelled == 1
    assert outcomes.delivery_errors == 0
    events = wait_until(
        lambda: [e for e in read_events(settings) if e[1]["type"].startswith("task_")] or None,
        30,
        "the outcomes on agents.events",
    )
    assert len(events) == 10
    reported = {}
    for key, value in events:
        event = LifecycleEvent.model_validate(value)
        outcome = TaskOutcome.model_validate(event.payload)
        assert key.decode() == event.agent_id == api.chosen[outcome.task_id]
        assert event.tenant_id == "tenant-a" and event.actor == event.agent_id
        reported[outcome.task_id] = (event.type, outcome.duration_s)
    assert sorted(reported) == told
    # Each as the world says, compressed by the time scale.
    requests = {r["task_id"]: r for r in api.requests}
    template = next(world.tasks(1.0, count=1))
    for task_id, (kind, duration) in reported.items():
        body = requests[task_id]
        task = dataclasses.replace(
            template,
            task_id=task_id,
            index=int(task_id.rsplit("-", 1)[1]),
            task_type=body["task_type"],
            required_capabilities=tuple(body["required_capabilities"]),
            resource_requirements=body["resource_requirements"],
        )
        agent = world.index[api.chosen[task_id]]
        possible = {  # at any load it may have had: the stand-in API ignores capacity
            (
                "task_completed" if o.success else "task_failed",
                round(o.duration_s / options.time_scale, 3),
            )
            for o in (world.outcome(task, agent, load) for load in range(1, 12))
        }
        assert (kind, duration) in possible


def test_the_assign_client_reads_the_agreed_answers() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert request.headers["authorization"] == "Bearer k1"
        assert request.url.path == "/api/v1/tasks/assign"
        if body["task_type"] == "gpu_job":
            return httpx.Response(
                409,
                json={
                    "detail": "0/812 agents fit: 500 lack capability gpu, 312 at capacity",
                    "unfit": {"lack capability gpu": 500, "at capacity": 312},
                    "considered": 812,
                },
            )
        if body["task_type"] == "broken":
            return httpx.Response(500, text="boom")
        return httpx.Response(
            200,
            json={
                "task_id": body["task_id"],
                "status": "assigned",
                "assignment": {
                    "agent_id": "agent-000007",
                    "score": 0.8,
                    "components": {},
                    "weights": {},
                    "confidence": 0.5,
                    "reason": "best",
                    "p_success": 0.9,
                    "expected_duration_s": 12.0,
                },  # fmt: skip
                "candidates": [],
                "considered": 812,
                "eligible": 300,
            },
        )

    http = httpx.Client(transport=httpx.MockTransport(handler))
    assign = http_assigner("http://api", "k1", http)
    assert assign({"task_id": "t1", "task_type": "x"}) == AssignAnswer(200, "agent-000007")
    refused = assign({"task_id": "t2", "task_type": "gpu_job"})
    assert refused.status == 409 and refused.detail.startswith("0/812 agents fit")
    assert assign({"task_id": "t3", "task_type": "broken"}) == AssignAnswer(500, detail="boom")
    down = http_assigner("http://127.0.0.1:9", "k1", httpx.Client(timeout=1.0))
    assert down({"task_id": "t4"}).status == 0


def test_the_history_heartbeats_carry_the_load_the_stream_will_bring() -> None:
    fleet = FleetSimulator(agents=200, seed=3, start="2026-01-01T12:00:00Z")
    world = TaskWorld(200, seed=3, agent_ids=fleet.agent_ids, tenant_ids=fleet.tenant_ids)
    fleet.attach_tasks(world, 0.3)
    beats = fleet.heartbeats(until_s=600)
    active = np.array([b["active_tasks"] for b in beats]).reshape(-1, 200)
    expected = 0.3 * world.capacity.sum() * 1.4  # ~1.4× the mean rate at 12:00 UTC
    assert abs(active.sum(axis=1).mean() - expected) < 0.1 * expected
    assert (active <= world.capacity).all()
    plain = FleetSimulator(agents=200, seed=3, start="2026-01-01T12:00:00Z")
    other = plain.heartbeats(until_s=600)
    # the world changes only the metrics it drives (and the task counters follow its
    # error rate), nothing else of the fleet
    for name in ("disk_usage", "network_latency", "bytes_out", "timestamp", "uptime_seconds"):
        assert [b[name] for b in beats] == [b[name] for b in other]


class StandInAPI(http.server.BaseHTTPRequestHandler):
    """The API's health, register and assign, as the simulator calls them (wiring test)."""

    registrations: list[dict] = []
    assigned: list[dict] = []

    def do_GET(self) -> None:
        self._answer(200, {"status": "ok"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.path == "/api/v1/agents/register":
            tenant, agent_id = body.pop("tenant_id"), body.pop("agent_id")
            Registration.model_validate(body)
            type(self).registrations.append(body | {"agent_id": agent_id})
            self._answer(201, {"agent_id": agent_id, "tenant_id": tenant,
                               "credential": {"token": "aw_x", "expires_at": None}})  # fmt: skip
        elif self.path == "/api/v1/tasks/assign":
            request = TaskRequest.model_validate(body)
            type(self).assigned.append(body)
            able = [
                r["agent_id"]
                for r in type(self).registrations
                if set(request.required_capabilities) <= set(r["capabilities"])
            ]
            self._answer(200, {"task_id": request.task_id, "status": "assigned",
                               "assignment": {"agent_id": able[0]}})  # fmt: skip
        else:
            self._answer(404, {"detail": "no such route"})

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_simulate_registers_a_heterogeneous_fleet_and_runs_its_task_stream(
    settings: Settings, tmp_path: Path
) -> None:
    from infra.simulate import SimulationOptions, run_simulation

    ensure_topics(settings)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandInAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = settings.model_copy(update={"heartbeat_interval_s": 1.0})
    settings = settings.model_copy(
        update={"api_key": SecretStr("aw_admin"), "var_dir": tmp_path / "var"}
    )
    options = SimulationOptions(
        agents=30,
        seed=2,
        backfill_s=20,
        backfill_rate=0,
        duration_s=26,
        register_api_url=f"http://127.0.0.1:{server.server_address[1]}",
        tasks=TaskStreamOptions(tasks_per_s=10.0, time_scale=1000.0, start_on="assigned"),
    )
    try:
        result = run_simulation(settings, options, show_progress=False)
    finally:
        server.shutdown()
    kinds = Counter(r["agent_type"] for r in StandInAPI.registrations)
    assert len(StandInAPI.registrations) == 30 and len(kinds) == 4
    assert all("cost_per_hour" in r["resources"] for r in StandInAPI.registrations)
    assert result.sent == 30 * 26 and result.tasks is not None
    assert result.tasks.submitted == len(StandInAPI.assigned) >= 10  # a few s live at 10/s
    assert result.tasks.started == result.tasks.assigned == result.tasks.submitted
    assert result.tasks.completed + result.tasks.failed >= 0.5 * result.tasks.started


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks-per-s", "2", "-o", "x.jsonl"], "leave out --output"),
        (["--tasks-per-s", "2", "--no-register"], "leave out --no-register"),
        (["--tasks-per-s", "2", "--task-time-scale", "0"], "--task-time-scale must be > 0"),
        (["--tasks-per-s", "2", "--task-start", "soon"], "--task-start is 'command' or"),
    ],
)
def test_task_stream_bad_options_are_one_line_errors(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        app,
        ["simulate", "--count", "10", "-q", *args],
        env={"AGENTWATCH_VAR_DIR": str(tmp_path / "var"), "COLUMNS": "300"},
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output


def test_the_real_api_registers_the_heterogeneous_fleet_and_answers_every_task(served) -> None:
    """The API of this branch registers the world's agents (capabilities, capacity,
    resources with cost_per_hour); every task gets an answer (assigned, unplaceable, or an
    error while the assign route is not merged yet)."""
    from infra.simulate import SimulationOptions, run_simulation

    url, settings, _ = served
    settings = settings.model_copy(update={"heartbeat_interval_s": 1.0})
    options = SimulationOptions(
        agents=12,
        seed=4,
        backfill_s=5,
        backfill_rate=0,
        duration_s=14,  # (a loaded machine spends seconds registering: leave live time)
        register_api_url=url,
        tasks=TaskStreamOptions(tasks_per_s=5.0, time_scale=1000.0, start_on="assigned"),
    )
    result = run_simulation(settings, options, show_progress=False)
    registered = [
        event for _, event in consume(settings, "control", 12) if event["type"] == "registered"
    ]
    world = TaskWorld(12, seed=4)
    assert {e["agent_id"]: e["payload"]["capabilities"] for e in registered} == {
        a.agent_id: list(a.capabilities) for a in world.agents
    }
    for event in registered:
        profile = world.agents[world.index[event["agent_id"]]]
        assert event["payload"]["max_concurrent_tasks"] == profile.max_concurrent_tasks
        assert event["payload"]["resources"] == dict(profile.resources)
    stats = result.tasks
    assert stats.submitted > 0
    assert stats.submitted == stats.assigned + stats.unplaceable + stats.errors
    gc.collect()  # the simulator's Kafka sink and its producer form a cycle: let them go now
