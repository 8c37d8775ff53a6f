"""The Assigner's bookkeeping without a broker (api/assign.py): reservations and their
expiry, a publish that fails, duplicate task ids, verdicts on earlier attempts, the fold
of registry events through a projection's directory. The broker-backed behaviour is in
tests/test_tasks_assign.py."""

from __future__ import annotations

import pytest

from agentwatch.assignment import NoFit
from agentwatch.directory import Directory
from agentwatch.settings import Settings
from api.assign import Assigner, DuplicateTask
from api.publisher import PublishError
from schemas.models import TaskRequest


class FakePublisher:
    """Keeps what it is given; fails when told to."""

    def __init__(self) -> None:
        self.events: list[tuple[dict, str]] = []
        self.failing = False

    def publish(self, event: dict, key: str) -> None:
        if self.failing:
            raise PublishError("the broker is away")
        self.events.append((event, key))

    def publish_later(self, event: dict, key: str, on_failure=None) -> None:
        self.publish(event, key)
        self.on_failure = on_failure


class FakeProjection:
    """What the Assigner uses of the projection: its directory and its listeners."""

    def __init__(self) -> None:
        self.directory = Directory()
        self.listeners = []
        self.ready = True

    def listen(self, listener) -> None:
        self.listeners.append(listener)

    def feed(self, topic: str, event: dict) -> None:
        if topic in ("control", "state"):
            self.directory.apply(event)
        for listener in self.listeners:
            listener(topic, event)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def event(kind: str, agent: str, payload: dict, tenant: str = "t1") -> dict:
    return {"type": kind, "agent_id": agent, "tenant_id": tenant, "actor": "test",
            "timestamp": 1.8e9, "payload": payload}  # fmt: skip


@pytest.fixture
def parts():
    settings = Settings(orchestration_reservation_ttl_s=30.0)
    publisher, projection, clock = FakePublisher(), FakeProjection(), Clock()
    assigner = Assigner(settings, publisher, name="api-test", clock=clock)
    assigner.attach(projection)
    for agent in ("a1", "a2"):
        projection.feed("control", event("registered", agent, {
            "name": agent, "capabilities": ["chat"], "max_concurrent_tasks": 1}))  # fmt: skip
        projection.feed("state", event("status_changed", agent, {"to": "active"}))
    return assigner, publisher, projection, clock


def test_reservations_hold_slots_until_they_expire(parts):
    assigner, publisher, _, clock = parts
    placed = [assigner.assign(TaskRequest(), "t1", "ops") for _ in range(3)]
    assert [p.decision.agent_id for p in placed[:2]] == ["a1", "a2"]
    assert isinstance(placed[2], NoFit) and placed[2].summary == "0/2 agents fit: 2 at capacity"
    assert [key for _, key in publisher.events] == ["a1", "a2"]
    assert publisher.events[0][0]["payload"]["assigned_by"] == "api-test"
    clock.now += 31  # no verdict came: the shard, not the reservation, guards capacity now
    assert assigner.assign(TaskRequest(), "t1", "ops").decision.agent_id == "a1"


def test_a_failed_publish_holds_nothing_and_forgets_the_task(parts):
    assigner, publisher, _, _ = parts
    publisher.failing = True
    with pytest.raises(PublishError):
        assigner.assign(TaskRequest(task_id="lost"), "t1", "ops")
    assert assigner.pending_task("lost") is None
    assert assigner.fleet.reserved[:2].tolist() == [0, 0]
    publisher.failing = False
    assert assigner.assign(TaskRequest(task_id="lost"), "t1", "ops").decision.agent_id == "a1"
    with pytest.raises(DuplicateTask, match="placed already"):
        assigner.assign(TaskRequest(task_id="lost"), "t1", "ops")


def test_an_answered_assignment_the_broker_never_takes_lets_the_slot_go(parts):
    assigner, publisher, _, _ = parts
    placed = assigner.assign(TaskRequest(task_id="late"), "t1", "ops")
    agent = placed.decision.agent_id
    assert sum(assigner.fleet.reserved.tolist()) == 1
    publisher.on_failure("the broker did not take it: Local: Message timed out")
    assert sum(assigner.fleet.reserved.tolist()) == 0
    record = assigner.pending_task("late")
    assert record.status == "refused" and record.agent_id == agent
    assert "not published" in record.reason and "timed out" in record.reason


def test_verdicts_on_earlier_attempts_change_nothing_but_counts(parts):
    assigner, _, projection, _ = parts
    assigner.assign(TaskRequest(task_id="t"), "t1", "ops")

    def verdict(agent: str, status: str, attempt: int, open_tasks: int, at: float) -> dict:
        return event("task_changed", agent, {
            "task_id": "t", "agent_id": agent, "tenant_id": "t1", "status": status,
            "attempt": attempt, "assigned_at": at, "updated_at": at,
            "agent_active_tasks": open_tasks, "capacity": 1})  # fmt: skip

    projection.feed("state", verdict("a1", "refused", 1, 1, 10.0))
    moved = assigner.place_again("t")  # what the worker does with the refusal
    assert moved.decision.agent_id == "a2" and moved.decision.attempt == 2
    assert moved.decision.refused_by == ["a1"]
    projection.feed("state", verdict("a1", "refused", 1, 1, 9.0))  # a replay: older
    assert assigner.pending_task("t").status == "assigned"
    projection.feed("state", verdict("a2", "accepted", 2, 1, 11.0))
    record = assigner.pending_task("t")
    assert (record.status, record.agent_id, record.attempt) == ("accepted", "a2", 2)
    assert assigner.fleet.open[:2].tolist() == [1, 1]
    assert assigner.fleet.reserved[:2].tolist() == [0, 0]
    assert isinstance(assigner.assign(TaskRequest(), "t1", "ops"), NoFit)


def test_registry_events_security_and_weights_reach_the_fleet(parts):
    assigner, _, projection, _ = parts
    projection.feed("control", event("quarantine_requested", "a1", {"reason": "x"}))
    projection.directory.apply_score({"agent_id": "a2", "tenant_id": "t1", "timestamp": 5.0,
                                      "score": 10.0, "delta": -90.0, "cause": "x"})  # fmt: skip
    projection.feed("security", {"agent_id": "a2", "tenant_id": "t1"})
    result = assigner.assign(TaskRequest(), "t1", "ops")
    assert result.unfit == {"quarantined": 1, "security score below 50": 1}
    weights = {"performance": 1.0, "cost": 0.0, "availability": 0.0, "sla": 0.0}
    projection.feed("control", event("weights_changed", "*", weights, tenant="*"))
    assert assigner.weights.model_dump() == weights
    projection.feed("control", event("released", "a1", {}))
    projection.feed("state", event("status_changed", "a1", {"to": "active"}))
    assert assigner.assign(TaskRequest(), "t1", "ops").decision.agent_id == "a1"
    assert assigner.skipped == 0 and assigner.folded > 0
