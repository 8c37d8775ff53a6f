"""POST /api/v1/tasks/assign and the weights, against the session's broker and chDB:
the fleet folded from the topics, the explanation, the 409 summary, no over-commit
under 100 concurrent requests, a refused task placed again, weights that change the
next assignment without a restart (audited), the status's orchestration section."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from fastapi.testclient import TestClient

from agentwatch.settings import Settings
from api.app import create_app
from infra.broker import ensure_topics
from schemas.models import TaskAssignment
from sinks.clickhouse import connect
from tests.conftest import LOOPBACK_CLIENT, wait_until

ASSIGN = "/api/v1/tasks/assign"
WEIGHTS = "/api/v1/orchestration/weights"


def lifecycle(kind: str, agent: str, tenant: str, payload: dict, at: float | None = None) -> dict:
    return {
        "type": kind, "agent_id": agent, "tenant_id": tenant, "actor": "test",
        "timestamp": at or time.time(), "payload": payload,
    }  # fmt: skip


def agent_events(
    agent: str,
    tenant: str = "t1",
    state: str = "active",
    capabilities=("chat",),
    capacity: int = 2,
    resources: dict | None = None,
) -> list[tuple[str, dict]]:
    """What the registry reads of an agent: its registration (control) and its state
    (state, as the dataflow publishes it)."""
    registration = {
        "name": agent, "agent_type": "bot", "owner": "ops", "capabilities": list(capabilities),
        "max_concurrent_tasks": capacity, "resources": resources or {},
    }  # fmt: skip
    return [
        ("control", lifecycle("registered", agent, tenant, registration)),
        ("state", lifecycle("status_changed", agent, tenant, {"to": state})),
    ]


def score_record(agent: str, tenant: str = "t1", **parts: object) -> dict:
    """An AssignmentScore as the dataflow publishes it."""
    record = {
        "agent_id": agent, "tenant_id": tenant, "timestamp": time.time(), "score": 0.5,
        "performance": 0.5, "cost": 0.5, "availability": 1.0, "sla": 0.5,
        "weights": {"performance": 0.4, "cost": 0.3, "availability": 0.2, "sla": 0.1},
        "state": "active", "active_tasks": 0, "capacity": 2, "success_rate": 0.5,
        "response_time_ms": 100.0, "sla_met_rate": 0.5, "tasks_completed": 0,
        "tasks_failed": 0, "p_fail": None, "by_type": {}, "cause": "heartbeat",
    }  # fmt: skip
    record.update(parts)
    return record


def task_changed(assignment: dict, agent: str, status: str, open_tasks: int, **more) -> dict:
    """The shard's verdict on a task (TaskRecord on agents.state)."""
    record = {
        "task_id": assignment["task_id"], "agent_id": agent, "tenant_id": "t1",
        "status": status, "attempt": assignment.get("attempt", 1), "assigned_at": time.time(),
        "agent_active_tasks": open_tasks, "capacity": 2, "updated_at": time.time(),
        "reason": "no free slot" if status == "refused" else "",
    }  # fmt: skip
    record.update(more)
    return lifecycle("task_changed", agent, "t1", record)


def publish(settings: Settings, messages: list[tuple[str, dict]]) -> None:
    producer = Producer(settings.kafka_config())
    for topic, value in messages:
        producer.produce(settings.topic(topic), key=value["agent_id"].encode(),
                         value=orjson.dumps(value))  # fmt: skip
    assert producer.flush(10) == 0


def published(
    settings: Settings, kind: str, count: int, which=lambda _event: True
) -> list[tuple[bytes, dict]]:
    """:func:`control_events` once at least ``count`` of them (those ``which`` says) are in
    the log: an assignment is answered before the broker has its event."""
    return wait_until(
        lambda: len(found := [e for e in control_events(settings, kind) if which(e[1])]) >= count
        and found,
        20, f"{count} {kind} on agents.control",
    )  # fmt: skip


def control_events(settings: Settings, kind: str) -> list[tuple[bytes, dict]]:
    """(key, event) of every ``kind`` event on agents.control so far."""
    consumer = Consumer({**settings.kafka_config(), "group.id": "t"})
    topic = settings.topic("control")
    partitions = consumer.list_topics(topic, timeout=5).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p))[1] for p in partitions}
    found, done = [], {p for p, end in ends.items() if end == 0}
    deadline = time.monotonic() + 10
    while len(done) < len(ends) and time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.2):
            if message.error() is not None:
                continue
            event = orjson.loads(message.value())
            if event["type"] == kind:
                found.append((message.key(), event))
            if message.offset() + 1 >= ends[message.partition()]:
                done.add(message.partition())
    consumer.close()
    return found


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    ensure_topics(settings)
    client = connect(settings)
    app = create_app(settings, client=client, run_loader=False)
    with TestClient(app, client=LOOPBACK_CLIENT) as test_client:
        assert app.state.runtime.assigner.wait_ready(30)
        yield test_client
    client.close()


def fleet_of(api: TestClient):
    return api.app.state.runtime.assigner


def wait_for_fleet(api: TestClient, agents: dict[str, str]) -> None:
    """Until the assigner holds every agent in its state (agent → state)."""
    fleet = fleet_of(api).fleet

    def holds() -> bool:
        for agent, state in agents.items():
            row = fleet.index.get(agent)
            if row is None or fleet._state_names[fleet.state[row]] != state:
                return False
        return True

    wait_until(holds, 30, f"the fleet to hold {sorted(agents)}")


def test_an_assignment_names_the_agent_explains_it_and_is_published(
    api: TestClient, settings: Settings
):
    events = [
        *agent_events("gpu-1", capabilities=("chat", "gpu")),
        *agent_events("gpu-2", capabilities=("chat", "gpu")),
        *agent_events("chat-1"),
        *agent_events("gone", state="offline", capabilities=("gpu",)),
        *agent_events("bad", state="quarantined", capabilities=("gpu",)),
        *agent_events("elsewhere", tenant="t2", capabilities=("gpu",)),
    ]
    publish(settings, events)
    wait_for_fleet(api, {"gpu-1": "active", "gpu-2": "active", "bad": "quarantined"})
    publish(settings, [
        ("assignment_scores", score_record("gpu-2", performance=0.95, sla=0.9,
                                           by_type={"ocr": {"p_success": 0.9, "outcomes": 20,
                                                            "expected_duration_s": 30.0}})),
    ])  # fmt: skip
    wait_until(lambda: fleet_of(api).fleet.scored[fleet_of(api).fleet.index["gpu-2"]], 30,
               "the score of gpu-2")  # fmt: skip

    answer = api.post(ASSIGN, json={"task_type": "ocr", "required_capabilities": ["gpu"],
                                    "tenant_id": "t1", "task_id": "task-1"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["task_id"] == "task-1" and body["status"] == "assigned"
    chosen = body["assignment"]
    assert chosen["agent_id"] == "gpu-2"
    assert chosen["p_success"] == pytest.approx(0.9) and chosen["expected_duration_s"] == 30.0
    assert set(chosen["components"]) == {"performance", "cost", "availability", "sla"}
    assert chosen["weights"] == {"performance": 0.4, "cost": 0.3, "availability": 0.2, "sla": 0.1}
    assert (
        "gpu-2 scores" in chosen["reason"]
        and "2 agents that fit (5 considered)" in (chosen["reason"])
    )
    assert 0 < chosen["confidence"] <= 1
    assert [c["agent_id"] for c in body["candidates"]] == ["gpu-1"]
    assert (body["considered"], body["eligible"]) == (5, 2)

    (key, event), = published(settings, "task_assigned", 1)  # fmt: skip
    assert key == b"gpu-2" and event["agent_id"] == "gpu-2" and event["tenant_id"] == "t1"
    payload = TaskAssignment.model_validate(event["payload"])
    assert payload.task_id == "task-1" and payload.attempt == 1
    assert payload.assigned_by == fleet_of(api).process_id
    pending = fleet_of(api).pending_task("task-1")
    assert pending.status == "assigned" and pending.agent_id == "gpu-2"
    shown = api.get("/api/v1/tasks/task-1")  # no loader here: answered from the decisions
    assert shown.status_code == 200, shown.text
    assert (shown.json()["status"], shown.json()["agent_id"]) == ("assigned", "gpu-2")

    again = api.post(ASSIGN, json={"tenant_id": "t1", "task_id": "task-1"})
    assert again.status_code == 409 and "placed already (on gpu-2)" in again.json()["detail"]
    # another tenant's request for the id learns that it is taken, not where it runs
    taken = api.post(ASSIGN, json={"tenant_id": "t2", "task_id": "task-1"})
    assert taken.status_code == 409 and "placed already;" in taken.json()["detail"]
    assert "gpu-2" not in taken.text

    none = api.post(ASSIGN, json={"required_capabilities": ["tpu"], "tenant_id": "t1"})
    assert none.status_code == 409, none.text
    assert none.json() == {
        "detail": "0/5 agents fit: 3 lack capability tpu, 1 offline, 1 quarantined",
        "unfit": {"offline": 1, "quarantined": 1, "lack capability tpu": 3},
        "considered": 5,
    }
    # a key of every tenant (the loopback admin here) must name the task's tenant
    unnamed = api.post(ASSIGN, json={"task_type": "ocr"})
    assert unnamed.status_code == 422 and "tenant_id" in unnamed.json()["message"]

    status = api.get("/api/v1/agents/gpu-2/status")
    assert status.status_code == 200, status.text
    orchestration = status.json()["orchestration"]
    assert orchestration["performance_level"] == "excellent"
    assert (orchestration["active_tasks"], orchestration["capacity"]) == (1, 2)  # reserved
    assert orchestration["components"]["availability"] == 0.5
    assert (
        api.get("/api/v1/agents/chat-1/status").json()["orchestration"]["performance_level"]
        == "unknown"
    )


def test_no_agent_is_over_committed_by_100_concurrent_assigns(api: TestClient, settings: Settings):
    capacities = {f"small-{i}": 1 + i % 3 for i in range(10)}  # 20 slots in all
    events = [e for agent, c in capacities.items() for e in agent_events(agent, capacity=c)]
    publish(settings, events)
    wait_for_fleet(api, dict.fromkeys(capacities, "active"))
    # the shard says small-2 (capacity 3) already runs 2 tasks
    publish(settings, [("state", task_changed({"task_id": "earlier"}, "small-2", "accepted", 2))])
    fleet = fleet_of(api).fleet
    wait_until(lambda: fleet.open[fleet.index["small-2"]] == 2, 30, "the shard's count")

    def assign(i: int):
        return api.post(ASSIGN, json={"tenant_id": "t1", "task_id": f"burst-{i}"})

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(assign, range(100)))
    statuses = Counter(a.status_code for a in answers)
    free = sum(capacities.values()) - 2
    assert statuses == {200: free, 409: 100 - free}, statuses
    per_agent = Counter(a.json()["assignment"]["agent_id"] for a in answers if a.status_code == 200)
    for agent, capacity in capacities.items():
        row = fleet.index[agent]
        accepted = int(fleet.open[row])
        assert per_agent[agent] + accepted <= capacity, (agent, per_agent[agent], accepted)
        assert accepted + int(fleet.reserved[row]) <= capacity
    refused = [a.json() for a in answers if a.status_code == 409]
    assert all(r["detail"] == "0/10 agents fit: 10 at capacity" for r in refused)
    events = published(settings, "task_assigned", sum(per_agent.values()))
    assert Counter(key.decode() for key, _ in events) == per_agent


def test_a_refused_task_is_placed_again_then_reported_unplaceable(
    api: TestClient, settings: Settings
):
    assigner = fleet_of(api)
    assigner.settings = assigner.settings.model_copy(update={"orchestration_max_attempts": 2})
    publish(settings, [*agent_events("first"), *agent_events("second"), *agent_events("third")])
    wait_for_fleet(api, {"first": "active", "second": "active", "third": "active"})
    publish(settings, [("assignment_scores", score_record(a, performance=p))
                       for a, p in (("first", 0.9), ("second", 0.8), ("third", 0.1))])  # fmt: skip
    wait_until(lambda: assigner.fleet.scored[: len(assigner.fleet)].all(), 30, "the scores")
    placed = api.post(ASSIGN, json={"tenant_id": "t1", "task_id": "picky"}).json()
    assert placed["assignment"]["agent_id"] == "first"
    # another API process took first's last slot: its shard refuses this one
    publish(settings, [("state", task_changed({"task_id": "picky"}, "first", "refused", 2))])
    moved = wait_until(
        lambda: (p := assigner.pending_task("picky")) and p.attempt == 2 and p, 30, "re-placing"
    )
    assert moved.agent_id == "second" and moved.status == "assigned"
    assert assigner.fleet.reserved[assigner.fleet.index["first"]] == 0
    second = [
        e for _, e in published(settings, "task_assigned", 1, lambda e: e["agent_id"] == "second")
    ]
    assert second and second[0]["payload"]["attempt"] == 2
    # refused again, at the last attempt: unplaceable, said so
    verdict = task_changed({"task_id": "picky", "attempt": 2}, "second", "refused", 2)
    publish(settings, [("state", verdict)])
    record = wait_until(
        lambda: (p := assigner.pending_task("picky")).status == "refused"
        and "unplaceable" in p.reason and p,
        30, "unplaceable",
    )  # fmt: skip
    assert "first, second" in record.reason
    # an accepted task frees its reservation and takes the shard's count
    ok = api.post(ASSIGN, json={"tenant_id": "t1", "task_id": "fine"}).json()
    agent = ok["assignment"]["agent_id"]
    publish(settings, [("state", task_changed({"task_id": "fine"}, agent, "accepted", 1))])
    wait_until(lambda: assigner.pending_task("fine").status == "accepted", 30, "accepted")
    row = assigner.fleet.index[agent]
    assert (assigner.fleet.open[row], assigner.fleet.reserved[row]) == (1, 0)


def test_new_weights_decide_the_next_assignment_without_a_restart_and_are_audited(
    settings: Settings,
):
    ensure_topics(settings)
    client = connect(settings)
    app = create_app(settings, client=client, run_loader=True)  # the audit is the loader's
    with TestClient(app, client=LOOPBACK_CLIENT) as api:
        assigner = api.app.state.runtime.assigner
        assert assigner.wait_ready(30)
        publish(settings, [*agent_events("fast", capacity=10), *agent_events("cheap", capacity=10)])
        wait_for_fleet(api, {"fast": "active", "cheap": "active"})
        publish(settings, [
            ("assignment_scores", score_record("fast", performance=1.0, cost=0.0, sla=0.9)),
            ("assignment_scores", score_record("cheap", performance=0.2, cost=1.0, sla=0.9)),
        ])  # fmt: skip
        wait_until(lambda: assigner.fleet.scored[:2].all(), 30, "the scores")
        assert api.get(WEIGHTS).json() == {
            "performance": 0.4, "cost": 0.3, "availability": 0.2, "sla": 0.1,
        }  # fmt: skip
        first = api.post(ASSIGN, json={"tenant_id": "t1"}).json()
        assert first["assignment"]["agent_id"] == "fast"
        frugal = {"performance": 0.1, "cost": 0.9, "availability": 0.0, "sla": 0.0}
        changed = api.put(WEIGHTS, json=frugal, headers={"X-Agentwatch-Actor": "ops-7"})
        assert changed.status_code == 200 and changed.json() == frugal
        assert api.get(WEIGHTS).json() == frugal
        second = api.post(ASSIGN, json={"tenant_id": "t1"}).json()
        assert second["assignment"]["agent_id"] == "cheap"
        assert second["assignment"]["weights"] == frugal
        assert api.put(WEIGHTS, json={"performance": 0, "cost": 0, "availability": 0,
                                      "sla": 0}).status_code == 422  # fmt: skip

        def audited() -> list[dict]:
            rows = api.get("/api/v1/audit", params={"tenant": "*"}).json()["records"]
            return [r for r in rows if r["action"] == "weights_changed"]

        (row,) = wait_until(audited, 30, "the audit row of the weights")
        assert row["actor"] == "ops-7" and row["target"] == "*"
        assert orjson.loads(row["after"]) == frugal
        (key, event), = control_events(settings, "weights_changed")  # fmt: skip
        assert key == b"*" and event["payload"] == frugal
    client.close()
    # a restarted API reads the latest weights back from agents.control
    client = connect(settings)
    with TestClient(create_app(settings, client=client, run_loader=False),
                    client=LOOPBACK_CLIENT) as api:  # fmt: skip
        assert api.app.state.runtime.assigner.wait_ready(30)
        wait_until(lambda: api.get(WEIGHTS).json() == frugal, 30, "the weights after a restart")
    client.close()


def test_the_fleet_is_seeded_from_the_latest_scores_in_clickhouse(settings: Settings):
    ensure_topics(settings)
    client = connect(settings)
    from sinks.clickhouse import create_schema

    create_schema(client, settings)
    client.command(
        f"INSERT INTO {settings.clickhouse_database}.assignment_scores_latest "
        "(agent_id, tenant_id, timestamp, score, performance, cost, availability, sla, weights, "
        "state, active_tasks, capacity, success_rate, response_time_ms, sla_met_rate, "
        "tasks_completed, tasks_failed, p_fail, by_type, cause) VALUES "
        "('seeded', 't1', now64(3), 0.8, 0.9, 0.7, 0.5, 0.9, '{}', 'active', 1, 2, 0.9, 100, "
        '0.9, 10, 1, 0.05, \'{"ocr": {"p_success": 0.8, "outcomes": 3, '
        "\"expected_duration_s\": null}}', 'task')"
    )
    with TestClient(create_app(settings, client=client, run_loader=False),
                    client=LOOPBACK_CLIENT) as api:  # fmt: skip
        assigner = api.app.state.runtime.assigner
        assert assigner.seeded == 1
        publish(settings, agent_events("seeded", capacity=2))
        wait_for_fleet(api, {"seeded": "active"})
        described = assigner.orchestration("seeded")
        assert described["performance_level"] == "excellent"
        assert described["active_tasks"] == 1 and described["p_fail"] == pytest.approx(0.05)
        answer = api.post(ASSIGN, json={"tenant_id": "t1", "task_type": "ocr"}).json()
        assert answer["assignment"]["p_success"] == pytest.approx(0.8)
    client.close()
