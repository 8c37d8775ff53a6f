"""Baselines and the detector: against River's statistics, and array form against single form."""

from __future__ import annotations

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from river import stats

from agentwatch.baselines import FEATURES, learn
from agentwatch.detector import BaselineDetector, scores_from_deviations
from agentwatch.fleet import DetectorConfig, FleetBaselines
from agentwatch.settings import Settings
from schemas.heartbeats import parse_heartbeats

values = st.lists(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=2, max_size=60
)


@given(values)
def test_running_mean_and_variance_equal_rivers(xs: list[float]) -> None:
    mean, var, count = np.zeros((1, 1)), np.zeros((1, 1)), np.zeros(1)
    river_mean, river_var = stats.Mean(), stats.Var(ddof=0)
    for x in xs:
        learn(mean, var, count, np.array([0]), np.array([[x]]), memory=10_000)
        river_mean.update(x)
        river_var.update(x)
    assert np.isclose(mean[0, 0], river_mean.get(), rtol=1e-9, atol=1e-6)
    assert np.isclose(var[0, 0], river_var.get(), rtol=1e-6, atol=1e-3)


@given(values)
def test_past_its_memory_the_baseline_forgets_exponentially(xs: list[float]) -> None:
    memory = 5
    mean, var, count = np.zeros((1, 1)), np.zeros((1, 1)), np.zeros(1)
    expected = stats.Mean()
    for i, x in enumerate(xs):
        learn(mean, var, count, np.array([0]), np.array([[x]]), memory=memory)
        if i < memory:
            expected.update(x)
            ewm = expected.get()
        else:
            ewm += (x - ewm) / memory
    assert np.isclose(mean[0, 0], ewm, rtol=1e-9, atol=1e-6)


@given(st.lists(st.floats(min_value=-50, max_value=50), min_size=8, max_size=8), st.integers(1, 20))
def test_scores_stay_in_the_unit_interval_and_grow_with_distance(z: list[float], rows: int) -> None:
    matrix = np.tile(np.array(z), (rows, 1))
    scores = scores_from_deviations(matrix)
    assert ((scores >= 0) & (scores <= 1)).all()
    further = scores_from_deviations(matrix * 1.5)
    assert (further >= scores - 1e-12).all()


def beat(agent: str, t: float, rng: np.random.Generator) -> dict:
    return {
        "agent_id": agent, "tenant_id": "t", "timestamp": t,
        "cpu_usage": float(np.clip(rng.normal(40, 5), 0, 100)),
        "memory_usage": float(np.clip(rng.normal(60, 3), 0, 100)),
        "disk_usage": 30.0, "network_latency": float(abs(rng.normal(10, 2))),
        "active_tasks": int(rng.integers(0, 5)), "completed_tasks": 0, "failed_tasks": 0,
        "error_rate": float(np.clip(rng.normal(0.02, 0.01), 0, 1)),
        "response_time_avg": float(abs(rng.normal(200, 20))),
        "uptime_seconds": 1.0, "bytes_out": int(abs(rng.normal(1e5, 1e4))),
    }  # fmt: skip


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_fleet_scores_equal_the_single_series_detector(seed: int) -> None:
    """The array form (dataflow) and River-API form agree, heartbeat by heartbeat."""
    rng = np.random.default_rng(seed)
    config = Settings(baseline_warmup_s=0, baseline_warmup_heartbeats=10,
                      anomaly_report_threshold=0.01, anomaly_threshold=0.5)  # fmt: skip
    fleet = FleetBaselines(DetectorConfig.from_settings(config))
    singles = {
        a: BaselineDetector(
            FEATURES, config.anomaly_std_floor, warmup=10, memory=config.baseline_memory_heartbeats
        )  # fmt: skip
        for a in ("a", "b")
    }
    beats = [beat(a, 1.8e9 + 30 * i, rng) for i in range(40) for a in ("a", "b")]
    beats[61]["cpu_usage"] = 99.0
    fleet_scores = {}
    for lo in range(0, len(beats), 7):  # batches cut anywhere
        chunk = parse_heartbeats([orjson.dumps(b) for b in beats[lo : lo + 7]])[0]
        for record in fleet.observe(chunk).anomalies:
            fleet_scores[(record["agent_id"], record["timestamp"])] = record["score"]
    for b in beats:
        detector = singles[b["agent_id"]]
        score = detector.score_one(b)
        detector.learn_one(b)
        key = (b["agent_id"], b["timestamp"])
        if score >= 0.01:
            assert np.isclose(fleet_scores.pop(key), score, rtol=1e-9), key
    assert fleet_scores == {}


def test_a_metric_flat_during_warm_up_still_learns_afterwards() -> None:
    """Clipping uses the floored std: a zero variance must not freeze the baseline."""
    detector = BaselineDetector(("error_rate",), {"error_rate": 0.01}, warmup=5)
    for _ in range(10):
        detector.learn_one({"error_rate": 0.0})
    for _ in range(3000):
        detector.learn_one({"error_rate": 0.05})
    assert detector.score_one({"error_rate": 0.05}) < 0.5
