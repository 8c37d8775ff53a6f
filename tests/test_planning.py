"""The planners as pure logic: load balancing (agentwatch/planning.py), maintenance windows
(agentwatch/maintenance.py) and the capacity forecast with its back-test
(agentwatch/forecast.py). Plain values and hypothesis; no broker, no ClickHouse."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentwatch.forecast import (
    MIN_DAYS_FOR_SEASON,
    ShortHistory,
    backtest,
    forecast_daily,
    simulated_history,
)
from agentwatch.maintenance import (
    HOUR_S,
    HourlyLoad,
    MaintenanceCandidate,
    hourly_profile,
    schedule_maintenance,
)
from agentwatch.planning import (
    TAKES_TASKS,
    AgentLoad,
    OpenTask,
    TargetScore,
    move_commands,
    plan_moves,
)
from schemas.models import ScoreComponents, TaskAssignment

OVER, UNDER = 0.8, 0.5


def agent(name, tenant="t1", caps=(), capacity=4, open_tasks=0, state="active", score=0.5):
    return AgentLoad(name, tenant, "bot", frozenset(caps), capacity, open_tasks, state, score)


def tasks_on(name, count, tenant="t1", caps=(), start=0):
    return [
        OpenTask(f"{name}-k{i}", tenant, name, tuple(caps), accepted_at=float(i))
        for i in range(start, start + count)
    ]


# --- load balancing -------------------------------------------------------------------


def test_no_move_when_the_fleet_is_balanced():
    agents = [agent("a1", open_tasks=2), agent("a2", open_tasks=3), agent("a3", open_tasks=1)]
    tasks = tasks_on("a1", 2) + tasks_on("a2", 3) + tasks_on("a3", 1)
    plan = plan_moves(agents, tasks, overloaded_above=OVER, underloaded_below=UNDER)
    assert plan.moves == [] and plan.overloaded == [] and plan.stuck == {}


def test_moves_go_only_to_agents_with_the_capabilities():
    agents = [
        agent("hot", caps=("gpu", "nlp"), open_tasks=4),
        agent("cpu-only", caps=("nlp",)),
        agent("gpu-box", caps=("gpu",), open_tasks=1),
    ]
    tasks = tasks_on("hot", 4, caps=("gpu",))
    plan = plan_moves(agents, tasks, overloaded_above=OVER, underloaded_below=UNDER)
    assert [(m.source, m.target) for m in plan.moves] == [("hot", "gpu-box")]
    assert plan.loads_after == {"hot": 0.75, "gpu-box": 0.5}
    assert "gpu" in plan.moves[0].reason and "hot is overloaded (100%" in plan.moves[0].reason


def test_a_task_never_crosses_tenants_and_stays_with_the_reason():
    agents = [agent("a1", "t1", open_tasks=4), agent("b1", "t2"), agent("b2", "t2")]
    plan = plan_moves(agents, tasks_on("a1", 4), overloaded_above=OVER, underloaded_below=UNDER)
    assert plan.moves == []
    assert set(plan.stuck) == {t.task_id for t in tasks_on("a1", 4)}
    assert set(plan.stuck.values()) == {"no other agent of tenant t1"}


def test_no_target_is_made_overloaded_or_given_more_than_its_capacity():
    # the target is underloaded (1/4) but one more task would make it 2/4 = 0.5: fine;
    # a second one 3/4 = 0.75: fine at 0.8, and it is no longer below 0.5 then: stops
    agents = [agent("hot", capacity=2, open_tasks=6), agent("cold", open_tasks=1)]
    plan = plan_moves(agents, tasks_on("hot", 6), overloaded_above=OVER, underloaded_below=UNDER)
    assert [m.target_load for m in plan.moves] == [(0.25, 0.5)]
    assert plan.loads_after["cold"] <= OVER
    assert all("below 50%" in why for why in plan.stuck.values())


def test_only_running_agents_take_tasks_and_the_least_loaded_first():
    agents = [
        agent("hot", open_tasks=4),
        agent("resting", state="maintenance"),
        agent("half", capacity=10, open_tasks=2),
        agent("empty", capacity=10, open_tasks=0),
    ]
    plan = plan_moves(agents, tasks_on("hot", 4), overloaded_above=OVER, underloaded_below=UNDER)
    assert [m.target for m in plan.moves] == ["empty"]  # then hot is at 75 %: stop
    assert plan.moves[0].task_id == "hot-k3"  # the newest goes


def test_lowest_priority_moves_first():
    agents = [agent("hot", capacity=2, open_tasks=2), agent("cold", capacity=4)]
    tasks = [
        OpenTask("urgent", "t1", "hot", priority="critical", accepted_at=9.0),
        OpenTask("routine", "t1", "hot", priority="low", accepted_at=1.0),
    ]
    plan = plan_moves(agents, tasks, overloaded_above=OVER, underloaded_below=UNDER)
    assert [m.task_id for m in plan.moves] == ["routine"]


def test_thresholds_that_contradict_each_other_are_refused():
    with pytest.raises(ValueError, match="not above overloaded_above"):
        plan_moves([], [], overloaded_above=0.4, underloaded_below=0.6)


fleets = st.lists(
    st.tuples(
        st.sampled_from(["t1", "t2"]),
        st.sets(st.sampled_from(["gpu", "nlp", "sql"]), max_size=2),
        st.integers(1, 6),  # capacity
        st.integers(0, 8),  # open tasks
        st.sampled_from(["active", "idle", "busy", "degraded", "maintenance"]),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=100, deadline=None)
@given(fleets, st.data())
def test_every_plan_keeps_the_rules(fleet, data):
    """Whatever the fleet: a move stays in its tenant, goes to a running agent that has the
    task's capabilities and was underloaded, never past capacity nor the overload line;
    every move brings an overloaded source down; no task moves twice."""
    agents, tasks = [], []
    for i, (tenant, caps, capacity, open_count, state) in enumerate(fleet):
        name = f"a{i}"
        agents.append(agent(name, tenant, caps, capacity, open_count, state))
        for k in range(open_count):
            needs = data.draw(st.sets(st.sampled_from(["gpu", "nlp", "sql"]), max_size=2))
            tasks.append(OpenTask(f"{name}-k{k}", tenant, name, tuple(sorted(needs))))
    plan = plan_moves(agents, tasks, overloaded_above=OVER, underloaded_below=UNDER)
    by_id = {a.agent_id: a for a in agents}
    by_task = {t.task_id: t for t in tasks}
    count = {a.agent_id: a.open_tasks for a in agents}
    assert len({m.task_id for m in plan.moves}) == len(plan.moves)
    for move in plan.moves:
        task, source, target = by_task[move.task_id], by_id[move.source], by_id[move.target]
        assert task.agent_id == source.agent_id and source.tenant_id == target.tenant_id
        assert set(task.required_capabilities) <= target.capabilities
        assert target.state in TAKES_TASKS
        assert count[source.agent_id] / source.capacity > OVER  # it was overloaded
        assert count[target.agent_id] / target.capacity < UNDER  # it was underloaded
        count[source.agent_id] -= 1
        count[target.agent_id] += 1
        assert count[target.agent_id] <= target.capacity
        assert count[target.agent_id] / target.capacity <= OVER
    for name, load in plan.loads_after.items():
        assert load == round(count[name] / by_id[name].capacity, 4)
    if not plan.overloaded:
        assert plan.moves == []


def test_the_commands_of_a_move_release_then_assign_with_the_next_attempt():
    agents = [agent("hot", capacity=1, open_tasks=1), agent("cold")]
    tasks = [OpenTask("k1", "t1", "hot", ("gpu",), task_type="etl", attempt=2, deadline=2e9)]
    agents[1] = agent("cold", caps=("gpu",))
    plan = plan_moves(agents, tasks, overloaded_above=OVER, underloaded_below=UNDER)
    parts = ScoreComponents(performance=0.9, cost=0.5, availability=1.0, sla=0.8)
    events = move_commands(
        plan,
        tasks,
        {"cold": TargetScore(0.8, parts, {"performance": 0.4, "cost": 0.3})},
        actor="ops",
        assigned_by="optimize-load",
        now=1.8e9,
    )
    (released, source), (assigned, target) = events
    assert (released["type"], source, released["payload"]["task_id"]) == (
        "task_released",
        "hot",
        "k1",
    )
    assert released["payload"]["reason"] == plan.moves[0].reason
    assert (assigned["type"], target, assigned["tenant_id"]) == ("task_assigned", "cold", "t1")
    assignment = TaskAssignment.model_validate(assigned["payload"])
    assert (assignment.attempt, assignment.moved_from, assignment.task_type) == (3, "hot", "etl")
    assert assignment.required_capabilities == ["gpu"] and assignment.deadline == 2e9
    assert assignment.score == 0.8 and assignment.components == parts


# --- maintenance ------------------------------------------------------------------------

NIGHT = HourlyLoad(
    mean=tuple(1.0 if 0 <= h < 6 else 10.0 for h in range(24)),
    peak=tuple(2.0 if 0 <= h < 6 else 12.0 for h in range(24)),
)


def candidates(count, capacity=4, tenant="t1", kind="bot", **fields):
    return [
        MaintenanceCandidate(f"{kind}{i}", tenant, kind, capacity, **fields) for i in range(count)
    ]


def test_windows_go_to_the_quiet_hours():
    plan = schedule_maintenance(
        candidates(4), {("t1", "bot"): NIGHT}, now=12 * HOUR_S, window_hours=2, margin=1.0
    )
    assert plan.unscheduled == []
    for window in plan.windows:
        start_hour = (window.start / HOUR_S) % 24
        assert 0 <= start_hour <= 4 and not window.starts_now
        assert window.expected_load == 1.0 and window.peak_demand == 2.0


def test_at_risk_agents_come_first_and_the_rest_wait_for_capacity():
    # 4 agents × 4 slots = 16; at night the peak is 2 × 1.5 = 3: three may be out at once
    # (16 - 12 = 4 ≥ 3); the fourth must go in a busier hour, where 16 - 4 = 12 < 18: none
    agents = [
        MaintenanceCandidate("calm", "t1", "bot", 4, p_fail=0.01, health=95),
        MaintenanceCandidate("shaky", "t1", "bot", 4, p_fail=0.6, health=40),
        MaintenanceCandidate("sick", "t1", "bot", 4, p_fail=0.6, health=20),
        MaintenanceCandidate("unknown", "t1", "bot", 4),
    ]
    plan = schedule_maintenance(
        agents, {("t1", "bot"): NIGHT}, now=12 * HOUR_S, window_hours=6, margin=1.5
    )
    assert [w.agent_id for w in plan.windows] == ["sick", "shaky", "calm"]
    assert [u.agent_id for u in plan.unscheduled] == ["unknown"]
    assert "peak demand × 1.5" in plan.unscheduled[0].reason


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 6), min_size=1, max_size=10),  # capacities
    st.lists(st.floats(0, 20), min_size=24, max_size=24),  # peak per hour
    st.integers(1, 6),  # window hours
    st.floats(0.5, 2.0),  # margin
    st.floats(0, 86_400 * 3),  # now
)
def test_maintenance_never_leaves_a_group_short(capacities, peaks, hours, margin, now):
    agents = [MaintenanceCandidate(f"a{i}", "t1", "bot", c) for i, c in enumerate(capacities)]
    profile = HourlyLoad(mean=tuple(peaks), peak=tuple(peaks))
    plan = schedule_maintenance(
        agents, {("t1", "bot"): profile}, now=now, window_hours=hours, margin=margin
    )
    assert len(plan.windows) + len(plan.unscheduled) == len(agents)
    total = sum(capacities)
    by_id = {a.agent_id: a for a in agents}
    first = math.floor(now / HOUR_S) * HOUR_S
    for slot in range(24 + hours + 1):
        start, end = first + slot * HOUR_S, first + (slot + 1) * HOUR_S
        out = sum(
            by_id[w.agent_id].capacity for w in plan.windows if w.start < end and w.end > start
        )
        if out:
            hour = int(start // HOUR_S) % 24
            assert total - out >= peaks[hour] * margin - 1e-9, (slot, out, total)
    for window in plan.windows:
        assert window.end - window.start == pytest.approx(hours * HOUR_S)
        assert now <= window.start < now + 24 * HOUR_S


def test_blocked_agents_are_reported_and_out_of_service_ones_do_not_count():
    agents = [
        MaintenanceCandidate("busy", "t1", "bot", 4),
        MaintenanceCandidate("away", "t1", "bot", 4, in_service=False, blocked="it is offline"),
    ]
    plan = schedule_maintenance(
        agents, {("t1", "bot"): HourlyLoad.flat(1.0)}, now=0.0, window_hours=1, margin=1.0
    )
    assert [(u.agent_id, u.reason) for u in plan.unscheduled] == [
        ("away", "it is offline"),
        ("busy", plan.unscheduled[1].reason),
    ]
    assert "4 slots" in plan.unscheduled[1].reason  # the offline one's capacity is not there


def test_the_profile_takes_mean_and_peak_per_hour_of_day():
    rows = [(day * 86_400 + 3 * HOUR_S, float(day)) for day in range(1, 5)]
    profile = hourly_profile(rows)
    assert profile.mean[3] == 2.5 and profile.peak[3] == 4.0
    assert profile.peak[7] == 4.0  # unseen hours are not taken as quiet
    assert hourly_profile([]) is None


# --- capacity forecast ---------------------------------------------------------------------


def simulated(seed, days=70):
    return simulated_history(
        days, level=40.0, trend=0.3, weekly_amplitude=8.0, noise=3.0, seed=seed
    )


def test_the_backtest_error_is_small_and_the_intervals_cover_near_nominal():
    """200 simulated histories (trend + weekly season + noise, seeds 0…199), each with its
    last 14 days held out: the figures of docs/orchestration-plan.md."""
    results = [backtest(simulated(seed), holdout_days=14) for seed in range(200)]
    mape = np.mean([r.mape for r in results])
    cover80 = np.mean([r.coverage[0.8] for r in results])
    cover95 = np.mean([r.coverage[0.95] for r in results])
    assert mape < 0.08, mape
    assert abs(cover80 - 0.80) < 0.04, cover80
    assert abs(cover95 - 0.95) < 0.03, cover95


def test_the_forecast_follows_trend_and_season():
    history = simulated_history(84, level=40.0, trend=0.5, weekly_amplitude=8.0, noise=0.0, seed=0)
    result = forecast_daily(history, 14)
    truth = simulated_history(98, level=40.0, trend=0.5, weekly_amplitude=8.0, noise=0.0, seed=0)
    assert np.allclose(result.point, truth[84:], atol=1e-6)
    assert result.method.startswith("level + trend + weekly season")


def test_intervals_widen_with_the_distance_ahead():
    result = forecast_daily(simulated(3), 60)
    widths = [high - low for low, high in result.bounds[0.95]]
    assert widths[-1] > widths[0]
    assert all(
        low <= p <= high for p, (low, high) in zip(result.point, result.bounds[0.8], strict=True)
    )


def test_a_short_history_gets_the_mean_wide_intervals_and_a_note():
    short = simulated(1, days=MIN_DAYS_FOR_SEASON - 1)
    result = forecast_daily(short, 7)
    assert "fewer than 14" in result.note and result.method.startswith("level (mean")
    assert result.point[0] == pytest.approx(np.mean(short))
    long = forecast_daily(simulated(1, days=56), 7)
    width = lambda r: r.bounds[0.95][0][1] - r.bounds[0.95][0][0]  # noqa: E731
    assert width(result) > width(long)
    with pytest.raises(ShortHistory, match="at least 3"):
        forecast_daily([1.0, float("nan"), 2.0], 7)  # two days with data


def test_missing_days_are_left_out_not_taken_as_zero():
    history = simulated(5, days=42)
    holes = [math.nan if i % 5 == 0 else v for i, v in enumerate(history)]
    full, gappy = forecast_daily(history, 7), forecast_daily(holes, 7)
    assert np.allclose(full.point, gappy.point, rtol=0.1)
