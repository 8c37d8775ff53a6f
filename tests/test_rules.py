"""Threat rules: each seed rule fires exactly when its condition has held for its
duration in event time; results do not depend on batch cuts or on other agents."""

from __future__ import annotations

import math
import random
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agentwatch.baselines import FEATURES
from agentwatch.fleet import DetectorConfig, FleetBaselines
from agentwatch.rules import BaselineInputs, RuleChangeError, RuleSet, default_rules
from agentwatch.settings import Settings
from schemas.heartbeats import NUMERIC_FIELDS, HeartbeatBatch
from schemas.models import Threat, ThreatRuleSpec

T0 = 1_800_000_000.0  # a multiple of every default window: buckets start at T0
QUIET = {
    "cpu_usage": 40.0,
    "memory_usage": 50.0,
    "disk_usage": 30.0,
    "network_latency": 10.0,
    "active_tasks": 2.0,
    "completed_tasks": 0.0,
    "failed_tasks": 0.0,
    "error_rate": 0.0,
    "response_time_avg": 100.0,
    "uptime_seconds": 60.0,
    "bytes_out": 1000.0,
}


def batch_of(beats: list[dict]) -> HeartbeatBatch:
    """A batch of heartbeats given as dicts (``agent_id``, ``timestamp`` and the metrics
    that differ from a quiet agent's)."""
    return HeartbeatBatch(
        index=np.arange(len(beats)),
        agent_id=[b.get("agent_id", "a1") for b in beats],
        tenant_id=[b.get("tenant_id", "t1") for b in beats],
        timestamp=np.array([float(b["timestamp"]) for b in beats]),
        metrics={f: np.array([float(b.get(f, QUIET[f])) for b in beats]) for f in NUMERIC_FIELDS},
        status=[b.get("status") for b in beats],
    )


def beats_every(seconds: float, count: int, start: float = T0, **metrics: object) -> list[dict]:
    """``count`` heartbeats of agent a1, ``seconds`` apart; a list value varies per beat."""
    return [
        {
            "timestamp": start + seconds * i,
            **{k: (v[i] if isinstance(v, list) else v) for k, v in metrics.items()},
        }
        for i in range(count)
    ]


def fired_at(rules: RuleSet, beats: list[dict], rule: str, **kwargs: object) -> list[float]:
    """Feed the beats one at a time; offsets from T0 of the heartbeats where ``rule`` fired."""
    times = []
    for beat in beats:
        out = rules.observe(batch_of([beat]), **kwargs)
        times += [t["last_seen"] - T0 for t in out.threats if t["rule"] == rule]
    return times


def only(rule: str, **overrides: object) -> RuleSet:
    """A rule set of one default rule, with settings overrides."""
    cfg = Settings(**overrides)
    spec = next(r for r in default_rules(cfg) if r.name == rule)
    return RuleSet([spec], buckets=cfg.threat_window_buckets)


# --- the seed's five rules, on plain values ----------------------------------------------


def test_excessive_errors_fires_on_the_heartbeat_the_window_average_passes_20_percent() -> None:
    rates = [0.0] * 5 + [0.5] * 5  # averages at 210 s: 1.5 / 8 = 0.1875; at 240 s: 2 / 9
    beats = beats_every(30, 10, error_rate=rates)
    assert fired_at(only("excessive_errors"), beats, "excessive_errors") == [240.0]


def test_excessive_errors_forgets_heartbeats_that_left_the_window() -> None:
    rates = [0.5] * 3 + [0.0] * 12 + [0.9] * 3
    beats = beats_every(30, len(rates), error_rate=rates)
    rules = only("excessive_errors")
    assert fired_at(rules, beats, "excessive_errors") == [0.0, 510.0]
    # at 480 s the window (200–480 s) holds 8 clean beats and two of 0.9: 0.18, not yet;
    # had the first burst still counted, the average would have passed 0.2 at 450 s


@pytest.mark.parametrize("metric", ["cpu_usage", "memory_usage"])
def test_resource_abuse_fires_after_ten_minutes_above_95_percent_and_not_a_beat_sooner(
    metric: str,
) -> None:
    beats = beats_every(30, 25, **{metric: 96.0})
    assert fired_at(only("resource_abuse"), beats, "resource_abuse") == [600.0]


def test_resource_abuse_restarts_its_clock_when_usage_drops() -> None:
    cpu = [99.0] * 15 + [90.0] + [99.0] * 25  # the dip at 450 s; again above from 480 s
    beats = beats_every(30, len(cpu), cpu_usage=cpu)
    assert fired_at(only("resource_abuse"), beats, "resource_abuse") == [480.0 + 600.0]


def test_resource_abuse_fires_once_per_episode() -> None:
    cpu = [99.0] * 30 + [50.0] + [99.0] * 25
    beats = beats_every(30, len(cpu), cpu_usage=cpu)
    assert fired_at(only("resource_abuse"), beats, "resource_abuse") == [600.0, 930.0 + 600.0]


def baseline_inputs(n: int, warm: bool = True) -> BaselineInputs:
    return BaselineInputs(
        mean=np.tile([QUIET[f] for f in FEATURES], (n, 1)),
        std=np.full((n, len(FEATURES)), 2.0),
        warm=np.full(n, warm),
    )


def test_abnormal_patterns_fires_beyond_three_sigma_of_a_warm_baseline_only() -> None:
    rules = only("abnormal_patterns", threat_abnormal_for_s=0)
    inputs = baseline_inputs(1)
    assert fired_at(rules, beats_every(30, 1, cpu_usage=46.0), "abnormal_patterns",
                    baselines=inputs) == []  # fmt: skip
    out = rules.observe(batch_of(beats_every(30, 1, T0 + 30, cpu_usage=46.5)), inputs)
    [threat] = out.threats
    assert threat["evidence"]["baseline"] == [
        {"feature": "cpu_usage", "value": 46.5, "baseline_mean": 40.0, "baseline_std": 2.0,
         "z": 3.25}
    ]  # fmt: skip
    cold = only("abnormal_patterns", threat_abnormal_for_s=0)
    assert not cold.observe(
        batch_of(beats_every(30, 1, cpu_usage=90.0)), baseline_inputs(1, False)
    ).threats
    assert not cold.observe(batch_of(beats_every(30, 1, T0 + 30, cpu_usage=90.0))).threats


def test_abnormal_patterns_needs_one_metric_beyond_for_its_duration_not_metrics_taking_turns() -> (
    None
):
    # baselines: QUIET ± 2 (3σ = 6); at the default 60 s, three heartbeats 30 s apart
    beyond = {"cpu_usage": 47.0, "memory_usage": 57.0, "network_latency": 17.0}
    turns = [{"cpu_usage": 47.0}, {"memory_usage": 57.0}, {"network_latency": 17.0},
             {"cpu_usage": 47.0}, {"cpu_usage": 47.0, "memory_usage": 57.0},
             {"cpu_usage": 47.0}]  # fmt: skip
    assert all(v in beyond.values() for b in turns for v in b.values())
    beats = [{"timestamp": T0 + 30 * i, **b} for i, b in enumerate(turns)]
    rules = only("abnormal_patterns")
    assert fired_at(rules, beats, "abnormal_patterns", baselines=baseline_inputs(1)) == [150.0]
    # some metric was beyond on every heartbeat from 0 s, but cpu alone only from 90 s


@pytest.mark.parametrize("interval", [30.0, 300.0])
def test_abnormal_patterns_needs_three_heartbeats_beyond_at_any_heartbeat_interval(
    interval: float,
) -> None:
    """60 s is three heartbeats at the seed's 30 s; at 5 min, two readings beyond 3σ in a row
    (which normal noise gives) are not yet a pattern: threat_for_min_heartbeats = 3."""
    beats = beats_every(interval, 4, cpu_usage=47.0)
    rules = RuleSet.default(Settings())
    assert fired_at(rules, beats, "abnormal_patterns", baselines=baseline_inputs(1)) == [
        2 * interval
    ]
    for_s_alone = RuleSet.default(Settings(threat_for_min_heartbeats=1))
    assert fired_at(for_s_alone, beats, "abnormal_patterns", baselines=baseline_inputs(1)) == [
        max(60.0, interval)
    ]


def test_resource_abuse_at_a_slow_heartbeat_still_fires_after_ten_minutes() -> None:
    beats = beats_every(300, 4, cpu_usage=99.0)  # 600 s = three readings at 5 min
    assert fired_at(RuleSet.default(Settings()), beats, "resource_abuse") == [600.0]


def test_abnormal_patterns_restarts_a_metric_s_clock_when_it_returns_within_sigma() -> None:
    cpu = [47.0, 47.0, 41.0, 47.0, 47.0, 47.0]  # back within 3σ at 60 s
    memory = [50.0, 50.0, 57.0, 50.0, 50.0, 50.0]  # ...while memory is beyond
    beats = beats_every(30, 6, cpu_usage=cpu, memory_usage=memory)
    rules = only("abnormal_patterns")
    assert fired_at(rules, beats, "abnormal_patterns", baselines=baseline_inputs(1)) == [150.0]


def test_abnormal_patterns_ignores_a_late_heartbeat_within_sigma() -> None:
    beats = beats_every(30, 3, cpu_usage=47.0)
    late = {"timestamp": T0 + 15, "cpu_usage": 40.0}  # arrives after the one of 30 s
    rules = only("abnormal_patterns")
    got = fired_at(rules, [*beats[:2], late, beats[2]], "abnormal_patterns",
                   baselines=baseline_inputs(1))  # fmt: skip
    assert got == [60.0]


def sigma_reference(beats: list[dict], for_s: float) -> list[tuple[float, float]]:
    """(first_seen, last_seen) of each threat of a 3σ rule over cpu and memory against
    QUIET ± 2: an episode lasts while some metric has been beyond on two heartbeats in a
    row (on one, for ``for_s = 0``), and began when the earliest of those runs did; it
    fires once one metric has been beyond on every heartbeat for ``for_s``."""
    since: dict[str, float] = {}
    episode, fired, threats = None, False, []
    for b in beats:
        t = b["timestamp"]
        beyond = [m for m in ("cpu_usage", "memory_usage") if abs(b[m] - QUIET[m]) > 6.0]
        since = {m: since.get(m, t) for m in beyond}
        holds = bool(since) if for_s == 0 else any(start < t for start in since.values())
        if not holds:
            episode, fired = None, False
            continue
        episode = min(since.values()) if episode is None else episode
        if not fired and any(t - start >= for_s for start in since.values()):
            fired = True
            threats.append((episode, t))
    return threats


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 60), st.booleans(), st.booleans()), min_size=1,
             max_size=40),
    st.sampled_from([0.0, 30.0, 60.0, 120.0]),
    st.lists(st.integers(0, 40), max_size=5),
)  # fmt: skip
def test_abnormal_patterns_fires_as_the_reference_says_wherever_batches_are_cut(
    series, for_s, cuts
) -> None:
    beats, t = [], T0
    for gap, cpu_beyond, memory_beyond in series:
        t += gap
        beats.append({"timestamp": t, "cpu_usage": 47.0 if cpu_beyond else 41.0,
                      "memory_usage": 43.0 if memory_beyond else 50.0})  # fmt: skip
    rules = only("abnormal_patterns", threat_abnormal_for_s=for_s)
    got = []
    bounds = [0, *sorted({c for c in cuts if c < len(beats)}), len(beats)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        if lo < hi:
            out = rules.observe(batch_of(beats[lo:hi]), baseline_inputs(hi - lo))
            got += [(th["first_seen"], th["last_seen"]) for th in out.threats]
    assert got == sigma_reference(beats, for_s)


def skewed_bytes_baseline() -> BaselineInputs:
    """QUIET ± 2, but bytes_out 1 MB ± 0.3 MB (a right-skewed metric's usual spread)."""
    inputs = baseline_inputs(1)
    inputs.mean[:, FEATURES.index("bytes_out")] = 1e6
    inputs.std[:, FEATURES.index("bytes_out")] = 3e5
    return inputs


def test_abnormal_patterns_judges_a_rise_of_bytes_out_on_a_log_scale() -> None:
    def fired(bytes_out: float, **overrides: object) -> list[dict]:
        rules = only("abnormal_patterns", threat_abnormal_for_s=0, **overrides)
        beat = batch_of(beats_every(30, 1, bytes_out=bytes_out))
        return rules.observe(beat, skewed_bytes_baseline()).threats

    assert fired(2e6) == []  # 3.3σ on a linear scale, 2.5σ on the log scale
    assert len(fired(2e6, threat_abnormal_log_metrics=[])) == 1  # all linear: beyond
    [threat] = fired(2.5e6)
    [deviation] = threat["evidence"]["baseline"]
    assert deviation["feature"] == "bytes_out" and round(deviation["z"], 2) == 3.27
    assert (
        "a rise of network_latency, response_time_avg, bytes_out on a log scale"
        in (threat["evidence"]["condition"])
    )
    [threat] = fired(0.0)  # a fall is judged on the linear scale: -3.3σ
    assert round(threat["evidence"]["baseline"][0]["z"], 2) == -3.33


def test_a_log_metric_the_rule_does_not_watch_is_refused() -> None:
    spec = {"name": "r", "category": "SECURITY", "severity": "HIGH", "condition": {
        "baseline_sigma": 3, "metric": "cpu_usage", "log_metrics": "bytes_out"}}  # fmt: skip
    with pytest.raises(RuleChangeError, match="log_metrics bytes_out not watched by the rule"):
        RuleSet().apply({"action": "add", "rule": spec})


def test_baselines_can_be_read_from_the_fleet_before_it_learns_the_batch() -> None:
    cfg = Settings(baseline_warmup_s=0, baseline_warmup_heartbeats=20, threat_abnormal_for_s=0)
    fleet = FleetBaselines(DetectorConfig.from_settings(cfg))
    rules = RuleSet.default(cfg)
    history = beats_every(30, 30, cpu_usage=[40.0 + i % 3 for i in range(30)])
    for beat in history:
        batch = batch_of([beat])
        assert not rules.observe(batch, BaselineInputs.from_fleet(fleet, batch)).threats
        fleet.observe(batch)
    spike = batch_of([*beats_every(30, 1, T0 + 900, cpu_usage=90.0), {"agent_id": "new",
                      "timestamp": T0 + 900, "cpu_usage": 90.0}])  # fmt: skip
    inputs = BaselineInputs.from_fleet(fleet, spike)
    assert inputs.warm.tolist() == [True, False]
    [threat] = rules.observe(spike, inputs).threats
    assert threat["rule"] == "abnormal_patterns" and threat["agent_id"] == "a1"
    assert threat["evidence"]["baseline"][0]["feature"] == "cpu_usage"


def test_rapid_changes_fires_on_the_eleventh_status_change_within_five_minutes() -> None:
    states = ["active", "idle"] * 8  # a change at every heartbeat after the first
    beats = beats_every(20, len(states), status=states)
    assert fired_at(only("rapid_changes"), beats, "rapid_changes") == [20.0 * 11]


def test_rapid_changes_ignores_heartbeats_without_a_status() -> None:
    states = ["active", None, "idle", None] * 8  # 15 changes, all within 300 s
    beats = beats_every(10, len(states), status=states)
    assert fired_at(only("rapid_changes"), beats, "rapid_changes") == [10.0 * (2 * 11)]


def test_data_exfiltration_fires_once_more_than_1_gb_left_within_an_hour() -> None:
    beats = beats_every(30, 15, bytes_out=100_000_000)  # 1.0 GB after 10: not yet "more"
    assert fired_at(only("data_exfiltration"), beats, "data_exfiltration") == [30.0 * 10]


def test_data_exfiltration_at_a_trickle_never_fires() -> None:
    beats = beats_every(300, 40, bytes_out=90_000_000)  # 12 per hour = 1.08 GB/h
    # the bucketed window spans 55-60 minutes: at most 11 or 12 beats, 0.99–1.08 GB
    fired = fired_at(only("data_exfiltration"), beats, "data_exfiltration")
    assert fired and all(t >= 3300 for t in fired)


def test_rate_of_change_is_the_change_per_second_across_the_window() -> None:
    rising = {"metric": "cpu_usage", "aggregate": "rate_of_change", "window_s": 120,
              "op": ">", "value": 0.03}  # fmt: skip
    rules = RuleSet([rule(rising)])
    flat = beats_every(30, 5, cpu_usage=40.0)
    assert fired_at(rules, flat, "r") == []
    climb = beats_every(30, 5, start=T0 + 150, cpu_usage=[41.0, 42.0, 43.0, 44.0, 45.0])
    [threat] = rules.observe(batch_of(climb)).threats
    # at 210 s the window (100–210 s) runs from 40 at 120 s to 43 at 210 s: 3 / 90 s
    assert threat["last_seen"] == T0 + 210
    assert threat["evidence"]["values"]["cpu_usage"] == pytest.approx(1 / 30)


def test_every_number_of_the_default_rules_comes_from_settings() -> None:
    cfg = Settings(
        threat_error_rate_max=0.3,
        threat_error_rate_window_s=120,
        threat_resource_max_percent=90,
        threat_resource_for_s=60,
        threat_abnormal_sigma=4,
        threat_status_changes_max=3,
        threat_status_changes_window_s=60,
        threat_exfiltration_bytes=5e8,
        threat_exfiltration_window_s=600,
    )
    numbers = {r.name: (r.condition.model_dump(), r.for_s) for r in default_rules(cfg)}
    assert numbers["excessive_errors"][0]["value"] == 0.3
    assert numbers["excessive_errors"][0]["window_s"] == 120
    assert numbers["resource_abuse"] == (numbers["resource_abuse"][0], 60)
    assert numbers["resource_abuse"][0]["value"] == 90
    assert numbers["abnormal_patterns"][0]["baseline_sigma"] == 4
    assert numbers["rapid_changes"][0]["value"] == 3
    assert numbers["data_exfiltration"][0]["window_s"] == 600


def test_threats_have_the_threat_layout() -> None:
    rules = RuleSet.default(Settings())
    beats = beats_every(20, 35, cpu_usage=99.0, error_rate=0.5, bytes_out=2e8,
                        status=["active", "busy"] * 18)  # fmt: skip
    threats = []
    for beat in beats:
        threats += rules.observe(batch_of([beat]), baseline_inputs(1)).threats
    assert {t["rule"] for t in threats} == {r.name for r in rules.rules()}
    for threat in threats:
        Threat.model_validate(threat)
        assert threat["evidence"]["window_start"] <= threat["first_seen"] <= threat["last_seen"]


# --- a reference: the rules written out heartbeat by heartbeat ---------------------------


def reference_threats(spec: ThreatRuleSpec, beats: list[dict], buckets: int) -> list[tuple]:
    """(first_seen, last_seen) of each firing, for in-order heartbeats of one agent."""
    cond = spec.condition
    since, fired, fires, seen, last, changes = None, False, [], [], None, []
    for beat in beats:
        t = beat["timestamp"]
        if cond.aggregate == "last":
            holds = any(_compare(beat.get(m, QUIET[m]), cond.op, cond.value) for m in cond.metric)
        else:
            width = cond.window_s / buckets
            oldest = math.floor(t / width) - buckets + 1
            if cond.aggregate == "count_changes":
                value = beat.get("status")
                if value is not None and last is not None and value != last:
                    changes.append(t)
                last = value if value is not None else last
                agg = [sum(math.floor(c / width) >= oldest for c in changes)]
            else:
                seen.append(beat)
                window = [b for b in seen if math.floor(b["timestamp"] / width) >= oldest]
                agg = [_aggregate(cond.aggregate, [b.get(m, QUIET[m]) for b in window])
                       for m in cond.metric]  # fmt: skip
            holds = any(_compare(a, cond.op, cond.value) for a in agg)
        if not holds:
            since, fired = None, False
            continue
        since = t if since is None else since
        if not fired and t - since >= spec.for_s:
            fired = True
            fires.append((since, t))
    return fires


def _aggregate(kind: str, values: list[float]) -> float:
    return {"avg": lambda v: sum(v) / len(v), "sum": sum, "max": max, "min": min}[kind](values)


def _compare(a: float, op: str, b: float) -> bool:
    return {">": a > b, ">=": a >= b, "<": a < b, "<=": a <= b}[op]


def rule(condition: dict, for_s: float = 0.0) -> ThreatRuleSpec:
    return ThreatRuleSpec(name="r", condition=condition, for_s=for_s, category="SECURITY",
                          severity="HIGH")  # fmt: skip


conditions = st.one_of(
    st.builds(
        lambda agg, window, op, value: {
            "metric": "cpu_usage",
            "aggregate": agg,
            "window_s": window,
            "op": op,
            "value": value,
        },
        st.sampled_from(["avg", "sum", "max", "min"]),
        st.sampled_from([60.0, 120.0, 300.0]),
        st.sampled_from([">", ">=", "<", "<="]),
        st.integers(0, 400).map(lambda v: v / 4),
    ),  # fmt: skip
    st.builds(
        lambda op, value: {"metric": ["cpu_usage", "memory_usage"], "op": op, "value": value},
        st.sampled_from([">", "<="]),
        st.integers(0, 100),
    ),
    st.builds(
        lambda window, value: {
            "metric": "status",
            "aggregate": "count_changes",
            "window_s": window,
            "op": ">",
            "value": value,
        },
        st.sampled_from([60.0, 300.0]),
        st.integers(0, 5),
    ),  # fmt: skip
)
heartbeat_series = st.lists(
    st.tuples(
        st.integers(1, 90),  # seconds since the previous heartbeat
        st.integers(0, 100),
        st.integers(0, 100),
        st.sampled_from([None, "active", "idle", "busy"]),
    ),
    min_size=1,
    max_size=60,
)


def series_beats(series: list[tuple], agent: str = "a1") -> list[dict]:
    beats, t = [], T0
    for gap, cpu, memory, status in series:
        t += gap
        beats.append({"agent_id": agent, "timestamp": t, "cpu_usage": float(cpu),
                      "memory_usage": float(memory), "status": status})  # fmt: skip
    return beats


@settings(max_examples=150, deadline=None)
@given(conditions, st.sampled_from([0.0, 30.0, 120.0]), st.sampled_from([2, 5, 12]),
       heartbeat_series)  # fmt: skip
def test_a_rule_fires_exactly_when_the_reference_says(condition, for_s, buckets, series) -> None:
    spec = rule(condition, for_s)
    beats = series_beats(series)
    rules = RuleSet([spec], buckets=buckets)
    got = [(t["first_seen"], t["last_seen"]) for t in rules.observe(batch_of(beats)).threats]
    assert got == reference_threats(spec, beats, buckets)


# --- order, duplicates, batch cuts, other agents ------------------------------------------


def run(rules: RuleSet, beats: list[dict], cuts: list[int]) -> tuple[list, list, dict]:
    threats, transitions = [], []
    bounds = [0, *sorted(set(cuts)), len(beats)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        if lo < hi:
            out = rules.observe(batch_of(beats[lo:hi]))
            threats += out.threats
            transitions += out.transitions
    key = lambda d: (d["agent_id"], d["rule"], d.get("last_seen", d.get("at")))  # noqa: E731
    holding = {r.name: rules.holding(r.name) for r in rules.rules()}
    return sorted(threats, key=key), sorted(transitions, key=key), holding


def demo_rules() -> list[ThreatRuleSpec]:
    return [
        *[r for r in default_rules(Settings()) if r.name != "abnormal_patterns"],
        rule(
            {
                "metric": "cpu_usage",
                "aggregate": "rate_of_change",
                "window_s": 120,
                "op": ">",
                "value": 0.1,
            }
        ),  # fmt: skip
        rule(
            {
                "metric": "memory_usage",
                "aggregate": "max",
                "window_s": 120,
                "op": ">=",
                "value": 90,
            },
            for_s=60,
        ).model_copy(update={"name": "peak"}),  # fmt: skip
    ]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(heartbeat_series, min_size=1, max_size=3),
    st.lists(st.integers(0, 200), max_size=6),
    st.randoms(use_true_random=False),
)
def test_results_do_not_depend_on_where_batches_are_cut(series_per_agent, cuts, rnd) -> None:
    streams = [series_beats(s, agent=f"a{i}") for i, s in enumerate(series_per_agent)]
    beats = interleave(streams, rnd)
    whole = run(RuleSet(demo_rules()), beats, [])
    assert run(RuleSet(demo_rules()), beats, cuts) == whole
    assert run(RuleSet(demo_rules()), beats, list(range(len(beats)))) == whole


def interleave(streams: list[list[dict]], rnd: random.Random) -> list[dict]:
    """The streams merged in a random order that keeps each stream's own order."""
    queue = [i for i, s in enumerate(streams) for _ in s]
    rnd.shuffle(queue)
    positions = [0] * len(streams)
    merged = []
    for i in queue:
        merged.append(streams[i][positions[i]])
        positions[i] += 1
    return merged


@settings(max_examples=60, deadline=None)
@given(heartbeat_series, st.lists(st.integers(0, 59), max_size=10), st.randoms())
def test_late_and_repeated_heartbeats_do_not_break_anything(series, repeats, rnd) -> None:
    beats = series_beats(series)
    messy = beats + [beats[i % len(beats)] for i in repeats]
    rnd.shuffle(messy)
    rules = RuleSet(demo_rules())
    for lo in range(0, len(messy), 7):
        out = rules.observe(batch_of(messy[lo : lo + 7]))
        for threat in out.threats:
            Threat.model_validate(threat)
    assert rules.latest[0] == max(b["timestamp"] for b in beats)


def test_a_repeated_heartbeat_is_not_counted_twice() -> None:
    beats = beats_every(30, 6, bytes_out=200_000_000)  # 1.2 GB if the repeats counted
    twice = [b for b in beats[:5] for _ in (0, 1)]
    assert fired_at(only("data_exfiltration"), twice, "data_exfiltration") == []


def test_a_late_heartbeat_still_inside_the_window_is_counted() -> None:
    rules = only("data_exfiltration")
    on_time = beats_every(60, 10, bytes_out=100_000_000)  # 1.0 GB: not more than 1 GB
    assert not rules.observe(batch_of(on_time)).threats
    late = {"timestamp": T0 + 30, "bytes_out": 1}
    [threat] = rules.observe(batch_of([late])).threats
    assert threat["last_seen"] == T0 + 540  # judged at the agent's clock


def test_a_thousand_interleaved_agents_each_get_what_they_would_get_alone() -> None:
    rnd = random.Random(7)
    streams = []
    for i in range(1000):
        hot = rnd.random() < 0.3
        series = [(30, rnd.randint(90, 100) if hot else rnd.randint(0, 90), rnd.randint(0, 100),
                   rnd.choice([None, "active", "idle"])) for _ in range(30)]  # fmt: skip
        streams.append(series_beats(series, agent=f"agent-{i}"))
    together = run(RuleSet(demo_rules()), interleave(streams, rnd), [5000, 12000, 20000])[0]
    by_agent: dict[str, list] = {}
    for threat in together:
        by_agent.setdefault(threat["agent_id"], []).append(threat)
    assert len(by_agent) > 100
    for stream in streams[::37]:
        agent = stream[0]["agent_id"]
        assert run(RuleSet(demo_rules()), stream, [])[0] == by_agent.get(agent, [])


# --- validation and runtime changes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ({"metric": "cpu", "op": ">", "value": 1}, "Input should be 'cpu_usage'"),
        ({"metric": "cpu_usage", "aggregate": "avg", "op": ">", "value": 1}, "needs window_s"),
        ({"metric": "cpu_usage", "window_s": 60, "op": ">", "value": 1}, "drop window_s"),
        ({"metric": "status", "op": ">", "value": 1}, "status is text"),
        ({"metric": "cpu_usage", "op": "==", "value": 1}, "Input should be '>'"),
        ({"metric": "cpu_usage", "op": ">", "value": "x"}, "valid number"),
        ({"metric": ["cpu_usage", "cpu_usage"], "op": ">", "value": 1}, "lists a name twice"),
        ({"metric": "cpu_usage", "op": ">", "value": 1, "eval": "os.system"}, "Extra inputs"),
        ({"baseline_sigma": 0}, "greater than 0"),
        ({"metric": "cpu_usage", "aggregate": "median", "window_s": 9, "op": ">", "value": 1},
         "Input should be 'last'"),
    ],
)  # fmt: skip
def test_a_bad_condition_is_refused_with_a_clear_reason(condition: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ThreatRuleSpec.model_validate(
            {"name": "r", "condition": condition, "category": "SECURITY", "severity": "HIGH"}
        )


def test_bad_names_categories_and_changes_are_refused() -> None:
    good = {"name": "r", "condition": {"baseline_sigma": 3}, "category": "SECURITY",
            "severity": "HIGH"}  # fmt: skip
    with pytest.raises(ValidationError, match="String should match pattern"):
        ThreatRuleSpec.model_validate({**good, "name": "Drop Table"})
    with pytest.raises(ValidationError, match="'SYSTEM', 'SECURITY'"):
        ThreatRuleSpec.model_validate({**good, "category": "security"})
    rules = RuleSet()
    with pytest.raises(ValidationError, match="needs the whole rule"):
        rules.apply({"action": "add", "name": "r"})
    with pytest.raises(RuleChangeError, match="uptime_seconds has no baseline"):
        rules.apply({"action": "add", "rule": {**good, "condition": {
            "baseline_sigma": 3, "metric": "uptime_seconds"}}})  # fmt: skip
    assert rules.rules() == []
    rules.apply({"action": "add", "rule": good})
    with pytest.raises(RuleChangeError, match="'r' exists; send action 'update'"):
        rules.apply({"action": "add", "rule": good})


def test_rules_change_at_runtime_and_a_changed_rule_starts_afresh() -> None:
    rules = RuleSet()
    hot = {"name": "hot", "condition": {"metric": "cpu_usage", "op": ">", "value": 80},
           "for_s": 60, "category": "PERFORMANCE", "severity": "WARNING"}  # fmt: skip
    rules.apply({"action": "add", "rule": hot})
    assert fired_at(rules, beats_every(30, 3, cpu_usage=90.0), "hot") == [60.0]

    rules.apply({"action": "update", "rule": {**hot, "severity": "HIGH"}})  # state reset
    beats = beats_every(30, 3, start=T0 + 90, cpu_usage=90.0)
    out = [rules.observe(batch_of([b])).threats for b in beats]
    assert [len(t) for t in out] == [0, 0, 1] and out[2][0]["severity"] == "HIGH"
    assert out[2][0]["first_seen"] == T0 + 90

    rules.apply({"action": "disable", "name": "hot"})
    assert fired_at(rules, beats_every(30, 5, start=T0 + 180, cpu_usage=90.0), "hot") == []
    assert rules.holding("hot") == {}
    rules.apply({"action": "enable", "name": "hot"})
    assert fired_at(rules, beats_every(30, 3, start=T0 + 330, cpu_usage=90.0), "hot") == [390.0]
    rules.apply({"action": "delete", "name": "hot"})
    assert rules.rules() == []
    with pytest.raises(RuleChangeError, match="no rule 'hot' to disable"):
        rules.apply({"action": "disable", "name": "hot"})


def test_the_same_changes_and_heartbeats_give_the_same_result() -> None:
    def replay() -> tuple:
        rules = RuleSet.default(Settings())
        threats = []
        for i, beat in enumerate(beats_every(30, 40, cpu_usage=99.0, bytes_out=5e7)):
            if i == 10:
                rules.apply({"action": "disable", "name": "resource_abuse"})
            if i == 20:
                rules.apply({"action": "enable", "name": "resource_abuse"})
            threats += rules.observe(batch_of([beat])).threats
        return threats, [r.model_dump() for r in rules.rules()]

    assert replay() == replay()


# --- size and speed ---------------------------------------------------------------------------


def test_state_stays_within_330_bytes_per_agent_for_the_default_rules() -> None:
    rules = RuleSet.default(Settings())
    n = 10_000
    beats = [{"agent_id": f"a{i}", "timestamp": T0, "status": "active"} for i in range(n)]
    rules.observe(batch_of(beats), baseline_inputs(n))
    arrays = [rules.latest]
    for live in rules._live.values():
        arrays += [live.held.rows, live.held.since, live.held.fired]  # (none holds)
        arrays += [getattr(live.condition, name) for name in live.condition._arrays]
    measured = sum(a.nbytes for a in arrays) / len(rules.latest)
    assert measured == rules.bytes_per_agent() <= 330
    print(f"\nrule state: {measured:.0f} bytes/agent (5 default rules)")


def test_judging_a_10k_agent_batch_costs_a_few_microseconds_per_heartbeat() -> None:
    rnd = np.random.default_rng(1)
    n = 10_000
    rules = RuleSet.default(Settings())
    inputs = baseline_inputs(n)
    best = math.inf
    for k in range(6):
        beats = batch_of([{"agent_id": f"a{i}", "timestamp": T0 + 30 * k,
                           "status": "active" if i % 2 else "idle"} for i in range(n)])  # fmt: skip
        beats.metrics["cpu_usage"] = rnd.uniform(0, 100, n)
        beats.metrics["error_rate"] = rnd.uniform(0, 0.3, n)
        beats.metrics["bytes_out"] = rnd.integers(0, 10**8, n).astype(float)
        start = time.perf_counter()
        rules.observe(beats, inputs)
        if k:  # the first batch also adds the agents
            best = min(best, time.perf_counter() - start)
    per_heartbeat_us = best / n * 1e6
    print(f"\ndefault rules: {per_heartbeat_us:.2f} µs/heartbeat over a 10k-agent batch")
    assert per_heartbeat_us < 20


def test_the_3_sigma_condition_holds_from_a_metrics_second_heartbeat_beyond() -> None:
    """One reading beyond 3σ opens nothing; the same metric beyond on two heartbeats in a
    row makes the condition hold, from the first of them."""
    rules = only("abnormal_patterns")
    warm = baseline_inputs(1)
    one = rules.observe(batch_of([{"timestamp": T0, "cpu_usage": 99.0}]), warm)
    back = rules.observe(batch_of([{"timestamp": T0 + 30, "cpu_usage": 40.0}]), warm)
    assert one.transitions == [] and back.transitions == []
    rules.observe(batch_of([{"timestamp": T0 + 60, "cpu_usage": 99.0}]), warm)
    second = rules.observe(batch_of([{"timestamp": T0 + 90, "cpu_usage": 99.0}]), warm)
    [opened] = second.transitions
    assert opened["holds"] and opened["first_seen"] == T0 + 60
