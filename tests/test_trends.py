"""Trend alerts: a metric on course to its limit warns once, before the limit; noise,
daily cycles and a clean simulated fleet do not warn; batch cuts change nothing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentwatch.rules import RuleSet
from agentwatch.settings import Settings
from agentwatch.simulator import FleetSimulator, HeartbeatColumns, Incident
from agentwatch.trends import TrendConfig, TrendWatch
from schemas.heartbeats import NUMERIC_FIELDS, HeartbeatBatch
from schemas.models import Threat

T0 = 1_800_000_000.0


def series(metric: str, values: list[float], start: float = T0, step: float = 30.0, agent="a1"):
    n = len(values)
    metrics = {f: np.full(n, 10.0) for f in NUMERIC_FIELDS}
    metrics[metric] = np.asarray(values, dtype=float)
    return HeartbeatBatch(
        np.arange(n), [agent] * n, ["t1"] * n, start + step * np.arange(n), metrics, [None] * n
    )


def one_by_one(watch: TrendWatch, batch: HeartbeatBatch) -> list[dict]:
    found = []
    for i in range(len(batch)):
        found += watch.observe(batch.take(np.array([i])))
    return found


def from_simulator(cols: HeartbeatColumns, fleet: FleetSimulator) -> HeartbeatBatch:
    n = len(cols)
    return HeartbeatBatch(
        index=np.arange(n),
        agent_id=cols.agent_id,
        tenant_id=cols.tenant_id,
        timestamp=fleet.start_epoch_s + cols.time_s,
        metrics={f: np.asarray(cols.metrics[f], dtype=np.float64) for f in NUMERIC_FIELDS},
        status=cols.status,
    )


def test_a_leak_warns_once_well_before_the_limit_with_its_evidence() -> None:
    watch = TrendWatch.from_settings(Settings())
    rng = np.random.default_rng(1)
    memory = [50.0 + rng.normal(0, 0.5) for _ in range(60)]  # 30 min flat
    memory += [50.0 + 0.5 * i + rng.normal(0, 0.5) for i in range(100)]  # +1 %/min to ~99.5
    found = one_by_one(watch, series("memory_usage", memory))
    assert len(found) == 1
    warning = Threat.model_validate(found[0])
    values = warning.evidence.values
    assert warning.rule == "trend_memory_usage" and warning.severity == "WARNING"
    assert warning.category == "PERFORMANCE" and values["limit"] == 95.0
    assert values["current"] < 75.0  # more than 20 minutes before 95 %
    assert 20.0 < values["slope_per_hour"] < 70.0 and 0 < values["eta_s"] <= 3600.0
    assert warning.evidence.window_start < warning.evidence.window_end == warning.last_seen


def test_noisy_flat_metrics_do_not_warn() -> None:
    rng = np.random.default_rng(2)
    days = [np.clip(80.0 + rng.normal(0, 5.0, 2880), 0, 100) for _ in range(50)]  # a busy,
    # noisy agent's day, for 50 agents; one batch of them all, in time order (each agent's
    # state is its own row, so this judges every agent as its own day alone would, but in
    # 2,880 vectorised steps rather than 144,000 one-row steps)
    agents, steps = len(days), len(days[0])
    metrics = {f: np.full(agents * steps, 10.0) for f in NUMERIC_FIELDS}
    metrics["cpu_usage"] = np.column_stack(days).ravel()  # step-major: all agents per step
    batch = HeartbeatBatch(
        np.arange(agents * steps), [f"a{agent}" for agent in range(agents)] * steps,
        ["t1"] * (agents * steps), np.repeat(T0 + 30.0 * np.arange(steps), agents), metrics,
        [None] * (agents * steps),
    )  # fmt: skip
    assert TrendWatch.from_settings(Settings()).observe(batch) == []


def test_a_strong_daily_cycle_does_not_warn() -> None:
    t = 30.0 * np.arange(3 * 2880)
    cpu = (
        60.0 + 25.0 * np.sin(2 * np.pi * t / 86_400) + np.random.default_rng(3).normal(0, 1, len(t))
    )
    assert TrendWatch.from_settings(Settings()).observe(series("cpu_usage", cpu.tolist())) == []


def test_a_metric_already_over_its_limit_is_the_rules_business_not_a_trend() -> None:
    watch = TrendWatch.from_settings(Settings())
    rising = [96.0 + 0.02 * i for i in range(100)]
    assert watch.observe(series("cpu_usage", rising)) == []


def test_a_slow_heartbeat_is_fitted_over_as_many_heartbeats_as_the_seed_s() -> None:
    """At 5 min the weights halve over trend_min_half_life_heartbeats (10) heartbeats, not
    over one (300 s): the same readings give the same line (its slope per second a tenth)
    and R² as at 30 s, where the half-life of 300 s is those same 10 heartbeats."""
    rng = np.random.default_rng(5)
    values = (0.02 + 0.0005 * np.arange(40) + rng.normal(0, 0.004, 40)).tolist()
    fits = {}
    for step in (30.0, 300.0):
        watch = TrendWatch.from_settings(Settings())
        watch.observe(series("error_rate", values, step=step))
        fitted, slope, r2 = watch.fit(np.array([0]))
        j = watch.config.metrics.index("error_rate")
        fits[step] = (fitted[0, j], slope[0, j] * step, r2[0, j])
    assert fits[300.0] == pytest.approx(fits[30.0], rel=1e-6)
    floorless = TrendWatch.from_settings(Settings(trend_min_half_life_heartbeats=1))
    floorless.observe(series("error_rate", values, step=300.0))
    assert floorless.sw[0] < 2.0 < watch.sw[0]  # about two points' weight, without the floor


def test_the_warning_rearms_when_the_trend_goes_away() -> None:
    watch = TrendWatch.from_settings(Settings())
    leak = [50.0 + 0.5 * i for i in range(80)]  # to 89.5 %
    restart = [50.0] * 60
    found = one_by_one(watch, series("memory_usage", leak + restart + leak))
    assert [w["rule"] for w in found] == ["trend_memory_usage"] * 2
    assert found[1]["last_seen"] > T0 + 30 * 140


def test_each_metric_is_judged_against_its_own_limit() -> None:
    watch = TrendWatch.from_settings(Settings())
    errors = [0.01 + 0.002 * i for i in range(90)]  # towards 0.2 at 0.24 per hour
    found = watch.observe(series("error_rate", errors))
    assert [(w["rule"], w["evidence"]["values"]["limit"]) for w in found] == [
        ("trend_error_rate", 0.2)
    ]


def test_late_and_repeated_heartbeats_are_ignored() -> None:
    watch = TrendWatch.from_settings(Settings())
    watch.observe(series("memory_usage", [50.0] * 30))
    before = watch.fit(np.array([0]))
    watch.observe(series("memory_usage", [90.0, 90.0], start=T0 + 30 * 28))  # 28 and 29 again
    after = watch.fit(np.array([0]))
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_an_unknown_metric_in_the_limits_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="trend_limits names active_tasks"):
        TrendConfig.from_settings(Settings(trend_limits={"active_tasks": 10.0}))


def test_state_is_a_few_floats_per_agent() -> None:
    assert TrendWatch.from_settings(Settings()).bytes_per_agent() <= 160


leaks = st.tuples(
    st.integers(0, 80),  # flat beats before the leak
    st.floats(0.05, 2.0),  # percent per beat
    st.integers(0, 2**31),  # noise seed
)


@settings(max_examples=60, deadline=None)
@given(leaks, st.lists(st.integers(1, 199), max_size=10))
def test_batch_cuts_change_nothing(leak: tuple, cuts: list[int]) -> None:
    flat, per_beat, seed = leak
    rng = np.random.default_rng(seed)
    values = [40.0] * flat + [40.0 + per_beat * i for i in range(200 - flat)]
    values = np.clip(np.asarray(values) + rng.normal(0, 0.3, 200), 0, 100).tolist()
    batch = series("memory_usage", values)
    whole = TrendWatch.from_settings(Settings()).observe(batch)
    cut_watch = TrendWatch.from_settings(Settings())
    bounds = [0, *sorted(set(cuts)), 200]
    split = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        split += cut_watch.observe(batch.take(np.arange(lo, hi)))
    assert whole == split
    assert len(whole) <= 1
    for warning in whole:
        assert warning["evidence"]["values"]["current"] < 95.0


def test_the_simulated_memory_leak_warns_before_memory_reaches_95_and_before_saturation():
    leak_s = 2940.0  # the simulator climbs to 99 % over the window: ~1 %/min from ~50 %
    fleet = FleetSimulator(
        20,
        seed=11,
        incidents=[
            Incident("memory_leak", "agent-000007", start_s=3600.0, duration_s=leak_s),
            Incident("saturation", "agent-000007", start_s=3600.0 + leak_s, duration_s=900.0),
        ],
    )
    cfg = Settings()
    watch, rules = TrendWatch.from_settings(cfg), RuleSet.default(cfg)
    warnings, saturated, memory_over_at = [], [], None
    for cols in fleet.batches(until_s=3600.0 + leak_s + 900.0):
        batch = from_simulator(cols, fleet)
        warnings += watch.observe(batch)
        saturated += [t for t in rules.observe(batch).threats if t["rule"] == "resource_abuse"]
        over = [
            t
            for a, t, m in zip(
                batch.agent_id, batch.timestamp, batch.metrics["memory_usage"], strict=True
            )
            if a == "agent-000007" and m > 95.0
        ]
        memory_over_at = memory_over_at or (over[0] if over else None)
    assert [(w["agent_id"], w["rule"]) for w in warnings] == [
        ("agent-000007", "trend_memory_usage")
    ]
    assert saturated and memory_over_at is not None
    warned_at = warnings[0]["last_seen"]
    assert memory_over_at - warned_at >= 15 * 60  # at least a quarter hour of notice
    assert saturated[0]["last_seen"] - warned_at >= 25 * 60


def test_a_clean_simulated_fleet_of_200_agents_raises_no_trend_warning_in_24_hours() -> None:
    fleet = FleetSimulator(200, seed=3)
    watch = TrendWatch.from_settings(Settings())
    found = []
    for cols in fleet.batches(until_s=86_400.0):
        found += watch.observe(from_simulator(cols, fleet))
    assert [(w["agent_id"], w["rule"], w["evidence"]["values"]) for w in found] == []
