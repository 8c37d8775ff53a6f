"""The shard's side of orchestration (agentwatch.orchestration through agentwatch.shard):
accept or refuse at capacity, refusals by state and registration, replays, release,
outcomes (slot, SLA, learning), expiry, rate-limited scores, batch cuts, weights, the online
models (they learn a skilled agent from an unskilled one; pickle round trip), old snapshots."""

from __future__ import annotations

import pickle
import random

import numpy as np
import orjson
import pytest

from agentwatch.lifecycle import State
from agentwatch.orchestration import (
    Orchestration,
    OrchestrationOutput,
    TaskAssigned,
    TaskFinished,
)
from agentwatch.settings import Settings
from agentwatch.shard import ShardState
from dataflows.heartbeats import AgentFact, findings, read_events
from dataflows.kafka_source import RawBatch
from schemas.models import AssignmentScore, LifecycleEvent, ModelStats, TaskOutcome, TaskRecord
from tests.test_shard import T0, beats_at

STRICT = Settings(agents_auto_register=False)
AGENT = "agent-{:04d}"


def event(kind: str, agent: int, at: float, channel: str = "control", **payload: object):
    """The shard command the dataflow makes of one event (``agents.<channel>``)."""
    fleet = agent < 0
    value = {
        "type": kind,
        "agent_id": "*" if fleet else AGENT.format(agent),
        "tenant_id": "*" if fleet else f"tenant-{agent % 3}",
        "actor": AGENT.format(agent) if channel == "events" else "ops-1",
        "timestamp": at,
        "payload": payload,
    }
    checked = read_events(
        channel, RawBatch(f"agents.{channel}", 0, [0], [None], [orjson.dumps(value)])
    )
    assert not checked.rejected, checked.rejected
    item = (checked.to_agent_shard or checked.to_every_shard)[0]
    # (an agent's fact comes with its message, for the dataflow's screen: tests/test_registry)
    return item.command if isinstance(item, AgentFact) else item


def assignment(task: str, attempt: int = 1, **extra: object) -> dict:
    return {
        "task_id": task,
        "task_type": "etl",
        "attempt": attempt,
        "score": 0.8,
        "components": {"performance": 0.8, "cost": 0.8, "availability": 0.8, "sla": 0.8},
        "weights": {},
        "assigned_by": "api-1",
        **extra,
    }


def assign(shard: ShardState, agent: int, task: str, at: float, **extra: object):
    return shard.apply(event("task_assigned", agent, at, **assignment(task, **extra)))


def tasks(out) -> list[tuple]:
    return [
        (e["payload"]["task_id"], e["payload"]["status"], e["payload"]["agent_active_tasks"])
        for e in out.events
        if e["type"] == "task_changed"
    ]


def registered_shard(capacity: int = 2, agents: range = range(3), **declared) -> ShardState:
    """Agents registered (capacity ``capacity``) and active (one heartbeat each at T0)."""
    shard = ShardState.new(STRICT)
    for agent in agents:
        shard.apply(
            event(
                "registered", agent, T0 - 60, name=f"A{agent}", agent_type="bot", owner="team",
                max_concurrent_tasks=capacity, **declared,
            )
        )  # fmt: skip
    shard.observe(beats_at(0, agents), wall=T0)
    return shard


def test_accepted_up_to_capacity_then_refused_with_the_reason() -> None:
    shard = registered_shard(capacity=2)
    outs = [assign(shard, 0, f"k{n}", T0 + 10 + n) for n in range(3)]
    assert [tasks(o) for o in outs] == [[("k0", "accepted", 1)], [("k1", "accepted", 2)],
                                        [("k2", "refused", 2)]]  # fmt: skip
    refused = TaskRecord.model_validate(outs[2].events[0]["payload"])
    assert refused.reason == "agent agent-0000 is at capacity: 2/2 tasks open"
    assert refused.capacity == 2 and refused.accepted_at is None
    runs = [c for o in outs for c in o.commands]
    assert [(c["command"], c["task_id"]) for c in runs] == [("run_task", "k0"), ("run_task", "k1")]
    accepted = TaskRecord.model_validate(outs[0].events[0]["payload"])
    assert (accepted.accepted_at, accepted.capacity, accepted.assigned_by) == (T0 + 10, 2, "api-1")
    scores = [AssignmentScore.model_validate(s) for o in outs[:2] for s in o.assignment_scores]
    assert [(s.cause, s.availability, s.active_tasks) for s in scores] == [
        ("task", 0.5, 1),
        ("task", 0.0, 2),
    ]
    assert outs[2].assignment_scores == []  # a refusal changes nothing
    assert shard.orchestration.open_tasks("agent-0000") == ["k0", "k1"]


def test_refused_when_unregistered_of_another_tenant_or_not_running() -> None:
    shard = registered_shard(agents=range(2))
    shard.apply(event("registered", 2, T0, name="A2", agent_type="bot", owner="team"))

    def reason(agent: int, task: str, at: float, **extra) -> str:
        (record,) = [e["payload"] for e in assign(shard, agent, task, at, **extra).events]
        assert record["status"] == "refused"
        return record["reason"]

    assert reason(5, "k1", T0 + 1) == "agent agent-0005 is not registered"
    assert reason(2, "k2", T0 + 2).startswith("agent agent-0002 is registered; it takes tasks")
    shard.apply(event("quarantine_requested", 0, T0 + 3, reason="leaked a key"))
    assert reason(0, "k3", T0 + 4).startswith("agent agent-0000 is quarantined")
    # agent 1 goes silent: offline after the heartbeat ladder's grace
    out = [shard.tick(T0 + s) for s in range(20, 400, 20)]
    assert any(e["payload"].get("to") == "offline" for o in out for e in o.events)
    assert reason(1, "k4", T0 + 400).startswith("agent agent-0001 is offline")
    later = [s for o in out for s in o.assignment_scores if s["agent_id"] == "agent-0001"]
    assert later[-1]["state"] == "offline" and later[-1]["availability"] == 0.0


def test_a_task_of_another_tenant_is_refused() -> None:
    shard = registered_shard()
    order = event("task_assigned", 0, T0 + 1, **assignment("k1"))
    other = TaskAssigned(order.agent_id, "tenant-9", order.at, order.actor, order.assignment)
    (record,) = [e["payload"] for e in shard.apply(other).events]
    assert record["reason"] == "agent agent-0000 belongs to tenant tenant-0, the task to tenant-9"


def test_replays_and_second_outcomes_change_nothing() -> None:
    shard = registered_shard(capacity=1)
    first = assign(shard, 0, "k1", T0 + 1)
    assert tasks(first) == [("k1", "accepted", 1)]
    replay = assign(shard, 0, "k1", T0 + 1)
    assert (replay.events, replay.commands, replay.assignment_scores) == ([], [], [])
    done = shard.apply(event("task_completed", 0, T0 + 50, "events", task_id="k1"))
    assert tasks(done) == [("k1", "completed", 0)]
    again = shard.apply(event("task_completed", 0, T0 + 51, "events", task_id="k1"))
    assert (again.events, again.commands, again.assignment_scores) == ([], [], [])
    assert again.refusals[0]["reason"] == "task k1 is not open on agent-0000; nothing changed"
    late_replay = assign(shard, 0, "k1", T0 + 1)  # (after it finished)
    assert late_replay.events == []
    # a refused task placed again (attempt 2) on the same agent is judged again
    assign(shard, 0, "k2", T0 + 60)
    assert tasks(assign(shard, 0, "k3", T0 + 61)) == [("k3", "refused", 1)]
    shard.apply(event("task_failed", 0, T0 + 70, "events", task_id="k2"))
    assert tasks(assign(shard, 0, "k3", T0 + 71, attempt=2)) == [("k3", "accepted", 1)]


def test_a_release_frees_the_slot_and_cancels_the_task() -> None:
    shard = registered_shard(capacity=1)
    assign(shard, 0, "k1", T0 + 1)
    out = shard.apply(event("task_released", 0, T0 + 20, task_id="k1", reason="moved"))
    assert tasks(out) == [("k1", "released", 0)]
    (cancel,) = out.commands
    assert (cancel["command"], cancel["task_id"], cancel["reason"]) == (
        "cancel_task",
        "k1",
        "moved",
    )
    assert out.assignment_scores[0]["availability"] == 1.0
    assert shard.orchestration.models.outcomes == 0  # (a release teaches nothing)
    assert shard.apply(event("task_released", 0, T0 + 21, task_id="k1")).refusals


def test_an_outcome_frees_the_slot_records_duration_and_sla_and_teaches() -> None:
    shard = registered_shard(capacity=2)
    assign(shard, 0, "k1", T0 + 10, deadline=T0 + 100)
    assign(shard, 0, "k2", T0 + 10, deadline=T0 + 100)
    met = shard.apply(event("task_completed", 0, T0 + 40, "events", task_id="k1", duration_s=25))
    missed = shard.apply(event("task_failed", 0, T0 + 200, "events", task_id="k2", reason="oom"))
    one, two = (TaskRecord.model_validate(o.events[0]["payload"]) for o in (met, missed))
    assert (one.status, one.duration_s, one.sla_met, one.finished_at) == (
        "completed",
        25,
        True,
        T0 + 40,
    )
    assert (two.status, two.duration_s, two.sla_met, two.reason) == ("failed", 190, False, "oom")
    assert two.agent_active_tasks == 0 and met.commands == [] == missed.commands
    after = AssignmentScore.model_validate(missed.assignment_scores[0])
    assert (after.tasks_completed, after.tasks_failed, after.availability) == (1, 1, 1.0)
    assert after.success_rate < 0.8 and after.sla_met_rate < 1.0
    assert after.by_type["etl"].outcomes == 2
    assert after.by_type["etl"].expected_duration_s == pytest.approx(25, rel=0.01)
    assert shard.orchestration.models.outcomes == 2


def test_an_open_task_without_outcome_expires_on_the_clock() -> None:
    settings = Settings(agents_auto_register=True, orchestration_task_timeout_s=120)
    shard = ShardState.new(settings)
    shard.observe(beats_at(0, [0]), wall=T0)
    accepted = assign(shard, 0, "k1", T0 + 5, deadline=T0 + 60)
    assert accepted.events[0]["payload"]["capacity"] == 1  # (the default capacity)
    expired = []
    for step in range(1, 8):  # heartbeats keep the agent online; the clock passes
        expired += tasks(shard.observe(beats_at(step, [0]), wall=T0 + 30 * step))
    assert expired == [("k1", "expired", 0)]
    out = shard.tick(T0 + 300)
    assert tasks(out) == []
    record = shard.orchestration.finished
    assert list(record) == ["k1"]


def test_expiry_records_the_time_it_was_due_and_cancels() -> None:
    orch = Orchestration.from_settings(Settings(orchestration_task_timeout_s=100))
    out = OrchestrationOutput()
    orch.register("a1", "t1", 2)
    orch.state_changed("a1", "t1", State.ACTIVE, T0, out)
    assignment_ = TaskAssigned("a1", "t1", T0, "api", _assignment("k1", deadline=T0 + 50))
    orch.assign(assignment_, registered=True, out=out)
    out = OrchestrationOutput()
    orch.settle(T0 + 99, out)
    assert out.events == []
    orch.settle(T0 + 500, out)
    (changed,) = [e for e in out.events if e["type"] == "task_changed"]
    assert (changed["timestamp"], changed["payload"]["sla_met"]) == (T0 + 100, False)
    assert [c["command"] for c in out.commands] == ["cancel_task"]


def _assignment(task: str, **extra):
    from schemas.models import TaskAssignment

    return TaskAssignment.model_validate(assignment(task, **extra))


def test_heartbeats_publish_a_score_at_most_every_interval_and_only_when_it_moved() -> None:
    shard = ShardState.new(Settings(agents_auto_register=True))
    published = []
    for step in range(12):  # 30 s apart; from step 6, agent 0 saturates its CPU and memory
        hot = {0: {"cpu_usage": 99.0, "memory_usage": 99.0}} if step >= 6 else {}
        out = shard.observe(beats_at(step, [0, 1], hot), wall=T0 + 30 * step)
        published += [(s["agent_id"][-1], step, s["cause"]) for s in out.assignment_scores]
    # the first heartbeat publishes; steady metrics publish nothing more; the hot agent's
    # cost falls and its score is published again, at most every 60 s
    assert published[:2] == [("0", 0, "heartbeat"), ("1", 0, "heartbeat")]
    hot_steps = [step for agent, step, _ in published[2:] if agent == "0"]
    assert hot_steps and all(b - a >= 2 for a, b in zip(hot_steps, hot_steps[1:], strict=False))
    assert all(agent == "0" for agent, _, _ in published[2:])


def _stream(shard: ShardState, cuts: list[int]) -> tuple[list, list, dict]:
    """Three agents' heartbeats over 20 steps with tasks between them, the heartbeats cut
    into batches at ``cuts``; returns task events, commands and final components."""
    beats = [
        beats_at(step, range(3), {1: {"response_time_avg": 900.0 + step}}) for step in range(20)
    ]
    values = []
    for step, batch in enumerate(beats):
        values.append(batch)
        if step % 5 == 2:
            values.append(("assign", step))
        if step % 5 == 4:
            values.append(("done", step))
    events, commands = [], []
    pending: list = []

    def flush() -> None:
        if pending:
            merged = pending[0]
            for more in pending[1:]:
                merged = _concat(merged, more)
            out = shard.observe(merged, wall=float(merged.timestamp.max()))
            events.extend(e for e in out.events if e["type"] == "task_changed")
            commands.extend(out.commands)
            pending.clear()

    for k, value in enumerate(values):
        if isinstance(value, tuple):
            flush()
            kind, step = value
            if kind == "assign":
                out = assign(shard, 1, f"k{step}", T0 + 30 * step + 1)
            else:
                out = shard.apply(
                    event("task_completed", 1, T0 + 30 * step + 1, "events", task_id=f"k{step - 2}")
                )
            events.extend(e for e in out.events if e["type"] == "task_changed")
            commands.extend(out.commands)
        else:
            pending.append(value)
            if k in cuts:
                flush()
    flush()
    rows = shard.index.rows_for([AGENT.format(a) for a in range(3)], ["x"] * 3)
    return events, commands, shard.orchestration.components(np.asarray(rows))


def _concat(a, b):
    from schemas.heartbeats import HeartbeatBatch

    return HeartbeatBatch(
        index=np.r_[a.index, b.index + len(a)],
        agent_id=a.agent_id + b.agent_id,
        tenant_id=a.tenant_id + b.tenant_id,
        timestamp=np.r_[a.timestamp, b.timestamp],
        metrics={k: np.r_[a.metrics[k], b.metrics[k]] for k in a.metrics},
        status=(a.status or [None] * len(a)) + (b.status or [None] * len(b)),
    )


def test_the_same_tasks_and_components_however_batches_are_cut() -> None:
    settings = Settings(agents_auto_register=True)
    one = _stream(ShardState.new(settings), cuts=[])
    every = _stream(ShardState.new(settings), cuts=list(range(100)))
    odd = _stream(ShardState.new(settings), cuts=[3, 4, 11, 17])
    for other in (every, odd):
        assert other[0] == one[0] and other[1] == one[1]
        for name, values in one[2].items():
            np.testing.assert_allclose(other[2][name], values, rtol=1e-3, err_msg=name)
    assert [e["payload"]["status"] for e in one[0]].count("completed") == 4


def test_new_weights_publish_every_agents_score_with_them() -> None:
    shard = registered_shard()
    out = shard.apply(
        event("weights_changed", -1, T0 + 5, performance=0, cost=0, availability=1, sla=0)
    )
    scores = [AssignmentScore.model_validate(s) for s in out.assignment_scores]
    assert sorted(s.agent_id for s in scores) == [AGENT.format(a) for a in range(3)]
    assert {(s.cause, s.score, s.weights.availability) for s in scores} == {("weights", 1.0, 1.0)}
    assign(shard, 0, "k1", T0 + 6)
    assert (
        shard.apply(event("task_released", 0, T0 + 7, task_id="k1")).assignment_scores[0]["score"]
        == 1.0
    )
    # a restart with other settings keeps the weights an operator set
    restored = ShardState.restore(
        pickle.loads(pickle.dumps(shard)), Settings(orchestration_weight_cost=0.5)
    )
    assert restored.orchestration.weights == (0.0, 0.0, 1.0, 0.0)


def skilled_fleet(orch: Orchestration, agents: int) -> dict[str, float]:
    """Half the agents succeed 90 % of the time, half 30 %; two task types."""
    out = OrchestrationOutput()
    skill = {}
    for a in range(agents):
        agent = f"a{a}"
        orch.register(agent, "t1", 4)
        orch.state_changed(agent, "t1", State.ACTIVE, T0, out)
        skill[agent] = 0.9 if a % 2 else 0.3
    return skill


def run_tasks(orch: Orchestration, skill: dict[str, float], count: int, seed: int = 2) -> float:
    """``count`` tasks placed at random and finished at once; returns the share of
    successes (the majority-class baseline is max(share, 1 − share))."""
    rng = random.Random(seed)
    agents = sorted(skill)
    successes = 0
    for n in range(count):
        agent = rng.choice(agents)
        kind = rng.choice(("etl", "render"))
        at = T0 + n
        out = OrchestrationOutput()
        order = TaskAssigned(agent, "t1", at, "api", _assignment(f"k{n}", task_type=kind))
        orch.assign(order, registered=True, out=out)
        ok = rng.random() < skill[agent]
        successes += ok
        seconds = (20 if kind == "etl" else 200) * (1 + 0.1 * rng.random())
        outcome = TaskOutcome(task_id=f"k{n}", duration_s=seconds)
        orch.finish(TaskFinished(agent, "t1", at + 1, outcome, ok), out)
    return successes / count


def test_the_success_model_learns_a_skilled_agent_from_an_unskilled_one() -> None:
    orch = Orchestration.from_settings(Settings())
    skill = skilled_fleet(orch, 20)
    share = run_tasks(orch, skill, 1500)
    baseline = max(share, 1 - share)  # always predicting the majority
    stats = ModelStats.model_validate({**orch.models.stats(T0), "shard": "0"})
    assert stats.outcomes == 1500 and stats.window == 100
    assert stats.success_accuracy > baseline + 0.05, (stats, baseline)
    # 0.9 × 0.5 + 0.7 × 0.5 = 0.8 is the best a predictor can do here
    skilled = [orch.predict(orch.index.row(a), "etl")[0] for a, p in skill.items() if p > 0.5]
    unskilled = [orch.predict(orch.index.row(a), "etl")[0] for a, p in skill.items() if p < 0.5]
    assert min(skilled) > 0.5 > max(unskilled)
    # completion time per type
    row = orch.index.row("a1")
    assert orch.predict(row, "etl")[1] == pytest.approx(21, rel=0.2)
    assert orch.predict(row, "render")[1] == pytest.approx(210, rel=0.2)
    assert stats.duration_mae_s < 30


def test_the_failure_model_labels_samples_when_the_agent_fails_or_the_horizon_passes() -> None:
    settings = Settings(agents_auto_register=True, orchestration_failure_horizon_s=600)
    shard = ShardState.new(settings)
    shard.observe(beats_at(0, range(3)), wall=T0)
    orch = shard.orchestration
    assert (orch.sample_at[:3] == T0).all()
    shard.apply(event("quarantine_requested", 0, T0 + 60, reason="leaked a key"))
    assert orch.models.failure_samples == 1 and orch.sample_at[0] == 0
    for step in range(1, 25):
        shard.observe(beats_at(step, [1, 2]), wall=T0 + 30 * step)
    # agents 1 and 2 passed the horizon without failing (labelled 0), then were sampled again
    assert orch.models.failure_samples == 3
    assert (orch.sample_at[1:3] > T0).all()


def test_model_stats_go_out_at_most_every_interval_signed_by_the_dataflow() -> None:
    shard = registered_shard(capacity=50)
    stats = []
    for n in range(30):
        assign(shard, 0, f"k{n}", T0 + 10 * n)
        out = shard.apply(event("task_completed", 0, T0 + 10 * n + 5, "events", task_id=f"k{n}"))
        shard.observe(beats_at(1 + n // 3, range(3)), wall=T0 + 10 * n + 6)
        out.events += shard.tick(T0 + 10 * n + 7).events
        stats += [e for e in out.events if e["type"] == "model_stats"]
        if n == 29:
            (messages,) = findings({"events": "agents.state"}, "dl", "rows", "none", ("3", out))
    times = [s["timestamp"] for s in stats]
    assert len(times) >= 3 and all(b - a >= 60 for a, b in zip(times, times[1:], strict=False))
    payload = ModelStats.model_validate(stats[-1]["payload"])
    assert payload.outcomes <= 30 and payload.success_accuracy is not None
    LifecycleEvent.model_validate(stats[-1])
    signed = [orjson.loads(m.value) for m in messages]
    assert all(s["payload"]["shard"] == "3" for s in signed if s["type"] == "model_stats")


def test_the_models_and_the_open_tasks_survive_a_pickle_round_trip() -> None:
    shard = registered_shard(capacity=4, agents=range(6))
    skill = {AGENT.format(a): 0.9 if a % 2 else 0.2 for a in range(6)}
    rng = random.Random(5)
    for n in range(200):
        agent = rng.randrange(6)
        assign(shard, agent, f"k{n}", T0 + n)
        kind = "task_completed" if rng.random() < skill[AGENT.format(agent)] else "task_failed"
        shard.apply(event(kind, agent, T0 + n + 0.5, "events", task_id=f"k{n}", duration_s=30))
    assign(shard, 1, "open-1", T0 + 300)
    copy = ShardState.restore(pickle.loads(pickle.dumps(shard)), STRICT)
    before, after = shard.orchestration, copy.orchestration
    for agent in skill:
        row = before.index.row(agent)
        assert after.predict(row, "etl") == before.predict(row, "etl")
    assert after.models.stats(T0) == before.models.stats(T0)
    assert after.open_tasks("agent-0001") == ["open-1"]
    out = copy.apply(event("task_completed", 1, T0 + 400, "events", task_id="open-1"))
    assert tasks(out) == [("open-1", "completed", 0)]
    assert assign(copy, 1, "open-1", T0 + 300).events == []  # still a replay after recovery


def test_a_snapshot_from_before_orchestration_carries_over() -> None:
    shard = registered_shard(capacity=3)
    shard.apply(event("quarantine_requested", 2, T0 + 5, reason="leaked a key"))
    old = {name: getattr(shard, name) for name in ShardState.__slots__ if name != "orchestration"}
    restored = ShardState.restore(old, STRICT)
    orch = restored.orchestration
    assert orch.index is restored.index
    states = [int(orch.state[restored.index.row(AGENT.format(a))]) for a in range(3)]
    assert states == [list(State).index(s) for s in (State.ACTIVE, State.ACTIVE, State.QUARANTINED)]
    out = assign(restored, 0, "k1", T0 + 10)
    assert tasks(out) == [("k1", "accepted", 1)]
    assert out.events[0]["payload"]["capacity"] == 1  # (capacity unknown: the default)
    assert tasks(assign(restored, 2, "k2", T0 + 11)) == [("k2", "refused", 0)]


def test_bad_task_events_are_dead_lettered_with_the_reason() -> None:
    def rejected(kind: str, channel: str, payload: dict) -> list:
        value = {"type": kind, "agent_id": "a1", "tenant_id": "t1", "actor": "x",
                 "timestamp": T0, "payload": payload}  # fmt: skip
        raw = RawBatch(f"agents.{channel}", 0, [0], [None], [orjson.dumps(value)])
        return [reason for _, reason in read_events(channel, raw).rejected]

    assert rejected("task_assigned", "control", {"task_id": "k1"})[0].startswith(
        "task_assigned payload: score:"
    )
    assert rejected("task_released", "control", {}) == [
        "task_released payload: task_id must be a non-empty string"
    ]
    assert rejected("task_completed", "control", {"task_id": "k1"})  # (an agent's fact)
    assert rejected("task_assigned", "events", assignment("k1"))  # (an operator's command)
    assert rejected("task_failed", "events", {"task_id": "k1"}) == []


def test_per_agent_state_stays_small() -> None:
    orch = Orchestration.from_settings(Settings())
    assert orch.bytes_per_agent() <= 64
    orch._type_column("etl")
    assert orch.bytes_per_agent() <= 64 + 8


def test_outcomes_of_unknown_agents_or_of_endless_task_types_grow_nothing() -> None:
    shard = registered_shard(agents=range(1))
    stranger = shard.apply(event("task_completed", 7, T0 + 1, "events", task_id="x1"))
    assert stranger.refusals and stranger.assignment_scores == []
    assert shard.index.row(AGENT.format(7)) is None and shard.orchestration.models.outcomes == 0
    orch = shard.orchestration
    for n in range(40):  # an agent's own work, of ever new types
        kind = f"kind-{n}"
        shard.apply(
            event("task_completed", 0, T0 + n, "events", task_id=f"own-{n}", task_type=kind)
        )
    assert orch.models.outcomes == 40 and len(orch.types) == orch.config.max_task_types == 16
    one_hots = {k for k in orch.models.learnt.success.weights if k.startswith("type=")}
    assert len(one_hots) == 17 and "type=(other)" in one_hots
    assert orch.bytes_per_agent() == 59 + 8 * 16
