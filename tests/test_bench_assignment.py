"""bench/assignment.py: a fast smoke test of the harness (small sizes), and its rules."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from schemas.models import Heartbeat, LifecycleEvent, TaskOutcome


def load_bench():
    """bench/assignment.py as a module (bench/ is scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / "assignment.py"
    spec = importlib.util.spec_from_file_location("bench_assignment", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = load_bench()
SMALL = bench.BenchConfig(agents=40, tasks=1500, seed=3)
BASELINES = ("random", "round_robin", "least_loaded")


@pytest.fixture(scope="module")
def result() -> dict:
    policies = [*BASELINES, "agentwatch", "example_learner", "oracle"]
    return bench.run_bench(SMALL, policies, show_progress=False)


def by_policy(result: dict) -> dict[str, dict]:
    return {row["policy"]: row for row in result["results"]}


def test_every_policy_runs_every_task(result) -> None:
    rows = by_policy(result)
    assert set(rows) == {*BASELINES, "agentwatch", "example_learner", "oracle"}
    assert not result.get("skipped")
    assert result["stream"]["tasks"] == 1500
    for row in rows.values():
        assert row["submitted"] == 1500
        assert row["succeeded"] + row["failed"] + row["expired"] == 1500
        assert 0 < row["success_rate"] < 1 and 0 <= row["sla_miss_rate"] < 1
        assert 0 < row["utilisation"] < 1 and row["mean_completion_s"] > 0
    assert "not ours" in rows["oracle"]["note"] and "not ours" in rows["example_learner"]["note"]


def test_the_harness_tells_policies_apart_the_oracle_beats_every_baseline(result) -> None:
    rows = by_policy(result)
    oracle = rows["oracle"]
    for name in BASELINES:
        assert oracle["success_rate"] > rows[name]["success_rate"] + 0.04, name
        assert oracle["mean_completion_s"] < rows[name]["mean_completion_s"], name
        assert oracle["sla_miss_rate"] <= rows[name]["sla_miss_rate"], name


def test_ours_beats_every_baseline_on_success_completion_time_and_sla() -> None:
    """The real shard (learner) and the API's fleet (chooser) against random, round-robin
    and least-loaded, on the same tasks: the issue's acceptance at half the benchmark's
    fleet (at 40 agents and 1,500 tasks its completion time is not yet below
    least-loaded's: it learns from outcomes, and there are too few)."""
    medium = bench.BenchConfig(agents=100, tasks=4000, seed=7)
    rows = by_policy(bench.run_bench(medium, [*BASELINES, "agentwatch"], show_progress=False))
    ours = rows["agentwatch"]
    for name in BASELINES:
        assert ours["success_rate"] > rows[name]["success_rate"], name
        assert ours["mean_completion_s"] < rows[name]["mean_completion_s"], name
        assert ours["sla_miss_rate"] < rows[name]["sla_miss_rate"], name


def test_learning_from_outcomes_pays_within_one_run(result) -> None:
    """The world can be learned from outcomes alone (the reference learner, not ours)."""
    rows = by_policy(result)
    learner = rows["example_learner"]
    for name in BASELINES:
        assert learner["success_rate"] > rows[name]["success_rate"], name
    assert learner["success_rate"] <= rows["oracle"]["success_rate"] + 0.01


def test_a_run_is_deterministic() -> None:
    config = bench.BenchConfig(agents=20, tasks=400, seed=5)
    first, again = (bench.run_bench(config, BASELINES, show_progress=False) for _ in range(2))
    for row in first["results"] + again["results"]:
        row.pop("wall_s")
    assert first == again


class Greedy:
    """Ignores capacity: the harness must stop it."""

    name = "greedy"

    def choose(self, task, view, now):
        candidates = view.candidates(task)
        return candidates[0].agent_id if candidates else None

    def observe(self, result) -> None:
        pass


def test_a_policy_that_over_commits_is_stopped() -> None:
    world, tasks, *_ = bench.build(bench.BenchConfig(agents=10, tasks=300, seed=1))
    assert isinstance(Greedy(), bench.Policy)
    with pytest.raises(RuntimeError, match="at capacity"):
        bench.run_policy(world, tasks, Greedy())


class Listening(bench.LeastLoadedPolicy):
    """Least-loaded that also records what it is told."""

    name = "listening"

    def __init__(self) -> None:
        self.beats: list[tuple[float, list[dict]]] = []
        self.results: list = []

    def heartbeat(self, beats: list[dict], now: float) -> None:
        self.beats.append((now, beats))

    def observe(self, result) -> None:
        self.results.append(result)


def test_policies_that_want_heartbeats_get_them_and_every_outcome() -> None:
    world, tasks, *_ = bench.build(bench.BenchConfig(agents=12, tasks=200, seed=2))
    policy = Listening()
    row = bench.run_policy(world, tasks, policy, heartbeat_interval_s=30.0)
    assert len(policy.results) == 200 == row.submitted
    times = [now for now, _ in policy.beats]
    assert times == sorted(times) and all(
        b - a == pytest.approx(30.0) for a, b in zip(times, times[1:], strict=False)
    )
    assert times[-1] >= max(r.finished_s for r in policy.results if r.agent_id) - 30.0
    now, beats = policy.beats[len(policy.beats) // 2]
    assert len(beats) == 12 and {b["agent_id"] for b in beats} == {a.agent_id for a in world.agents}
    for beat in beats:  # contract heartbeats, as the shard would read them
        Heartbeat.model_validate(beat)
    for result in policy.results:
        if result.agent_id is not None:
            event = LifecycleEvent.model_validate(result.outcome_event())
            assert TaskOutcome.model_validate(event.payload).task_id == result.task.task_id
            assert event.type == ("task_completed" if result.success else "task_failed")
    assert all(
        0 <= b["active_tasks"] <= world.agents[i].max_concurrent_tasks for i, b in enumerate(beats)
    )


class Hesitant(Listening):
    """Defers every task once, and everything of one type for good (it listens, too)."""

    name = "hesitant"

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def choose(self, task, view, now):
        if task.task_type == "ml_inference" or task.task_id not in self.seen:
            self.seen.add(task.task_id)
            return None
        return super().choose(task, view, now)


def test_deferred_tasks_are_offered_again_and_the_rest_expire_so_a_run_ends() -> None:
    world, tasks, *_ = bench.build(bench.BenchConfig(agents=12, tasks=150, seed=4))
    row = bench.run_policy(world, tasks, Hesitant(), heartbeat_interval_s=30.0)
    never = sum(t.task_type == "ml_inference" for t in tasks)
    assert row.submitted == 150 and row.expired >= never > 0
    assert row.succeeded > 0 and row.mean_wait_s > 0


def test_the_cli_prints_a_table_and_writes_json(tmp_path: Path, capsys) -> None:
    out = tmp_path / "assignment.json"
    bench.main(
        [
            "--agents",
            "15",
            "--tasks",
            "200",
            "--seed",
            "1",
            "--quiet",
            "--out",
            str(out),
            "--policies",
            "random,least_loaded",
        ]
    )
    printed = capsys.readouterr().out
    assert "| policy | success rate | mean completion (s)" in printed
    assert "| least_loaded |" in printed
    written = json.loads(out.read_text())
    assert [row["policy"] for row in written["results"]] == ["random", "least_loaded"]
    assert written["config"]["agents"] == 15
