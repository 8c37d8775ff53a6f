"""The task world: deterministic for a seed, and its hidden traits show in what it answers."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from agentwatch.taskworld import (
    DEADLINE_SLACK,
    PEAK_HOUR,
    TASK_TYPES,
    Task,
    TaskWorld,
)
from schemas.models import Registration, TaskRequest


def outcomes(world: TaskWorld, tasks: list[Task], agent: int, running: int) -> list:
    return [world.outcome(task, agent, running) for task in tasks if world.can_do(agent, task)]


def success_rate(results: list) -> float:
    return sum(r.success for r in results) / len(results)


# --- determinism ------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_fleet_stream_and_outcomes() -> None:
    def run(seed: int) -> tuple:
        world = TaskWorld(40, seed=seed)
        tasks = list(world.tasks(2.0, count=300))
        ends = [world.outcome(t, t.index % 40, 1 + t.index % 3) for t in tasks]
        return world.agents, world.traits, tasks, ends

    assert run(5) == run(5)
    other = run(6)
    first = run(5)
    assert other[1] != first[1] and other[2] != first[2]


def test_an_outcome_depends_on_the_task_agent_and_load_not_on_the_order_of_calls() -> None:
    world = TaskWorld(10, seed=1)
    tasks = list(world.tasks(1.0, count=50))
    agent = next(a.index for a in world.agents if "data_processing" in a.capabilities)
    forwards = [world.outcome(t, agent, 2) for t in tasks]
    backwards = [world.outcome(t, agent, 2) for t in reversed(tasks)][::-1]
    assert forwards == backwards


# --- the fleet --------------------------------------------------------------------------


def test_the_fleet_is_heterogeneous_and_its_registrations_are_valid() -> None:
    world = TaskWorld(200, seed=2)
    kinds = Counter(a.agent_type for a in world.agents)
    assert set(kinds) == set(world.agent_types) and min(kinds.values()) >= 10
    small = TaskWorld(4, seed=2)  # even a tiny fleet has one agent of every type
    assert {a.agent_type for a in small.agents} == set(small.agent_types)
    for agent in world.agents:
        registration = Registration.model_validate(agent.registration())
        kind = world.agent_types[agent.agent_type]
        assert kind.capacity[0] <= registration.max_concurrent_tasks <= kind.capacity[1]
        assert registration.resources["cost_per_hour"] > 0
        assert set(world.traits[agent.index].skill) == set(agent.capabilities)
    flaky = sum(t.flaky for t in world.traits)
    assert 0.05 * 200 <= flaky <= 0.3 * 200  # a minority
    skills = [p for t in world.traits for p in t.skill.values()]
    assert min(skills) < 0.5 < 0.9 < max(skills)  # wide spread of hidden skill
    assert len({a.agent_id for a in world.agents}) == 200


def test_only_agents_with_a_gpu_can_run_ml_inference() -> None:
    world = TaskWorld(100, seed=3)
    task = next(t for t in world.tasks(5.0, count=200) if t.task_type == "ml_inference")
    able = [a for a in world.agents if world.can_do(a.index, task)]
    assert able and all(a.resources.get("gpu", 0) >= 1 for a in able)
    unable = next(a for a in world.agents if not world.can_do(a.index, task))
    lacking = world.outcome(task, unable.index, 1)
    assert not lacking.success and "cannot do ml_inference" in lacking.reason


# --- the hidden traits show in the outcomes -----------------------------------------------


def test_skill_shows_in_success_rates_and_the_failure_prone_do_worst() -> None:
    world = TaskWorld(60, seed=4)
    tasks = list(world.tasks(5.0, count=4000))
    measured, hidden, flaky = [], [], []
    for agent in world.agents:
        done = outcomes(world, tasks, agent.index, running=1)
        measured.append(success_rate(done))
        traits = world.traits[agent.index]
        counts = Counter(t.task_type for t in tasks if world.can_do(agent.index, t))
        total = sum(counts.values())
        hidden.append(sum(traits.skill[k] * n for k, n in counts.items()) / total)
        flaky.append(traits.flaky)
    assert np.corrcoef(measured, hidden)[0, 1] > 0.9
    measured, flaky = np.array(measured), np.array(flaky)
    assert flaky.any() and measured[flaky].mean() < measured[~flaky].mean() - 0.25


def test_a_better_agent_succeeds_whenever_a_worse_one_would_on_the_same_task() -> None:
    world = TaskWorld(30, seed=5)
    tasks = [t for t in world.tasks(5.0, count=1000) if t.task_type == "data_processing"]
    ranked = sorted(world.agents, key=lambda a: world.traits[a.index].skill["data_processing"])
    worst, best = ranked[0].index, ranked[-1].index
    for task in tasks:
        if world.outcome(task, worst, 1).success:
            assert world.outcome(task, best, 1).success


def test_speed_shows_in_durations() -> None:
    world = TaskWorld(60, seed=6)
    tasks = [t for t in world.tasks(5.0, count=3000) if t.task_type == "data_processing"]
    speeds, medians = [], []
    for agent in world.agents:
        durations = [world.outcome(t, agent.index, 1).duration_s for t in tasks]
        full = [
            d
            for t, d in zip(tasks, durations, strict=True)
            if world.outcome(t, agent.index, 1).success
        ]
        speeds.append(world.traits[agent.index].speed["data_processing"])
        medians.append(float(np.median(full)))
    assert np.corrcoef(np.log(speeds), np.log(medians))[0, 1] > 0.95
    base = TASK_TYPES[0].base_duration_s
    assert min(medians) < base < max(medians)


def test_load_worsens_success_and_speed_most_for_the_load_sensitive() -> None:
    world = TaskWorld(80, seed=7)
    tasks = [t for t in world.tasks(5.0, count=3000) if t.task_type == "data_processing"]
    drops, slowdowns, sensitivities = [], [], []
    for agent in world.agents:
        idle = outcomes(world, tasks, agent.index, running=1)
        full = outcomes(world, tasks, agent.index, running=agent.max_concurrent_tasks)
        drops.append(success_rate(idle) - success_rate(full))
        ok = [(a, b) for a, b in zip(idle, full, strict=True) if a.success and b.success]
        slowdowns.append(np.median([b.duration_s / a.duration_s for a, b in ok]))
        sensitivities.append(world.traits[agent.index].load_sensitivity)
    assert min(drops) >= 0 and np.mean(drops) > 0.03
    assert min(slowdowns) >= 1.0 and np.mean(slowdowns) > 1.2
    assert np.corrcoef(sensitivities, slowdowns)[0, 1] > 0.95
    assert np.corrcoef(sensitivities, drops)[0, 1] > 0.5


# --- the task stream ----------------------------------------------------------------------


def test_arrivals_are_poisson_at_the_rate_with_a_daily_shape() -> None:
    world = TaskWorld(20, seed=8)
    day = 86_400.0
    tasks = list(world.tasks(0.2, until_s=2 * day))
    expected = 0.2 * 2 * day
    assert abs(len(tasks) - expected) < 5 * math.sqrt(expected)
    hours = Counter(int(t.arrival_s % day // 3600) for t in tasks)
    peak, trough = hours[int(PEAK_HOUR)], hours[int(PEAK_HOUR + 12) % 24]
    assert peak > 2 * trough  # 1.5 vs 0.5 of the mean rate
    gaps = np.diff([t.arrival_s for t in tasks if 13 <= t.arrival_s % day // 3600 < 15])
    gaps = gaps[gaps < 3600]
    assert 0.7 < np.std(gaps) / np.mean(gaps) < 1.3  # exponential gaps: cv ≈ 1
    shares = Counter(t.task_type for t in tasks)
    for kind in TASK_TYPES:
        assert abs(shares[kind.name] / len(tasks) - kind.share) < 0.02


def test_tasks_carry_deadlines_by_priority_and_valid_requests() -> None:
    world = TaskWorld(50, seed=9, tenant_ids=[f"t{i % 2}" for i in range(50)])
    tasks = list(world.tasks(1.0, start_s=1.8e9, count=500, prefix="run1-"))
    assert len({t.task_id for t in tasks}) == 500 and tasks[0].task_id == "run1-0000000"
    assert {t.tenant_id for t in tasks} == {"t0", "t1"}
    for task in tasks:
        slack = DEADLINE_SLACK[task.priority]
        assert task.deadline_s == pytest.approx(
            task.arrival_s + task.estimated_duration_s * slack, abs=2e-3
        )
        request = TaskRequest.model_validate(task.request(time_scale=10))
        left = task.deadline_s - task.arrival_s
        assert request.deadline == pytest.approx(task.arrival_s + left / 10, abs=2e-3)
        assert request.estimated_duration == pytest.approx(task.estimated_duration_s / 10)
    assert {t.priority for t in tasks} == set(DEADLINE_SLACK)
    again = list(world.tasks(1.0, count=10, first_index=500))
    assert again[0].task_id == "task-0000500"  # a later stretch numbers on


# --- heartbeats ---------------------------------------------------------------------------


def test_heartbeats_follow_load_and_the_hidden_traits() -> None:
    world = TaskWorld(300, seed=10)
    rng = np.random.default_rng(0)
    idle = world.heartbeat_metrics(np.zeros(300), rng)
    busy = world.heartbeat_metrics(world.capacity, rng)
    assert busy["cpu_usage"].mean() > idle["cpu_usage"].mean() + 5
    assert busy["memory_usage"].mean() > idle["memory_usage"].mean() + 3
    assert (busy["active_tasks"] == world.capacity).all()
    for metrics in (idle, busy):
        assert metrics["cpu_usage"].max() <= 90 and metrics["memory_usage"].max() <= 90
        assert metrics["error_rate"].max() <= 0.15
    flaky = np.array([t.flaky for t in world.traits])
    assert idle["error_rate"][flaky].mean() > 2 * idle["error_rate"][~flaky].mean()
    speed = [np.mean(list(t.speed.values())) for t in world.traits]
    assert np.corrcoef(np.log(speed), np.log(idle["response_time_avg"]))[0, 1] > 0.8
    sensitivity = np.array([t.load_sensitivity for t in world.traits])
    slowdown = busy["response_time_avg"] / idle["response_time_avg"]
    assert np.corrcoef(sensitivity, slowdown)[0, 1] > 0.6  # per-beat noise blurs it
