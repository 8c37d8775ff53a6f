"""Security score: threats take the seed's 15–30 points, clean agents recover slowly in
event time, a fall below 20 quarantines once per crossing, and nothing depends on batch cuts."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agentwatch.security import SecurityConfig, SecurityScores
from agentwatch.settings import Settings
from schemas.heartbeats import NUMERIC_FIELDS, HeartbeatBatch
from schemas.models import AgentCommand, LifecycleEvent, ScoreChange

T0 = 1_800_000_000.0
HOUR = 3600.0


def scores_with(**overrides: object) -> SecurityScores:
    return SecurityScores(SecurityConfig.from_settings(Settings(**overrides)))


def threat(at: float, rule: str = "resource_abuse", severity: str = "HIGH", agent: str = "a1"):
    return {
        "agent_id": agent,
        "tenant_id": "t1",
        "rule": rule,
        "category": "SECURITY",
        "severity": severity,
        "first_seen": at - 600.0,
        "last_seen": at,
    }


def beats(times: list[float], agent: str = "a1", status: str | None = None) -> HeartbeatBatch:
    n = len(times)
    return HeartbeatBatch(
        index=np.arange(n),
        agent_id=[agent] * n,
        tenant_id=["t1"] * n,
        timestamp=np.asarray(times, dtype=float),
        metrics={f: np.zeros(n) for f in NUMERIC_FIELDS},
        status=[status] * n,
    )


def every(seconds: float, until: float, start: float = T0) -> list[float]:
    return list(np.arange(start, until, seconds))


# --- deductions --------------------------------------------------------------------------


def test_each_severity_takes_its_points_and_a_rule_may_override_them() -> None:
    scores = scores_with(security_rule_points={"data_exfiltration": 25.0})
    out = scores.apply_threats(
        [
            threat(T0, "abnormal_patterns", "WARNING"),
            threat(T0 + 1, "resource_abuse", "HIGH"),
            threat(T0 + 2, "data_exfiltration", "CRITICAL"),
        ]
    )
    assert [(c["cause"], c["delta"], c["score"]) for c in out.score_changes] == [
        ("abnormal_patterns", -15.0, 85.0),
        ("resource_abuse", -20.0, 65.0),
        ("data_exfiltration", -25.0, 40.0),
    ]
    assert out.score_changes[0]["first_seen"] == T0 - 600.0


@pytest.mark.parametrize(
    ("field", "points", "message"),
    [
        ("security_rule_points", {"port_scan": -30.0},
         "security_rule_points['port_scan'] must be points from 0 to 100, not -30.0"),
        ("security_severity_points", {"HIGH": 120.0},
         "security_severity_points['HIGH'] must be points from 0 to 100"),
        ("security_severity_points", {"HIGH": float("nan")}, "must be points from 0 to 100"),
        ("security_severity_points", {"SEVERE": 20.0},
         "'SEVERE' is not a threat severity; the severities are EMERGENCY, CRITICAL, HIGH"),
    ],
)  # fmt: skip
def test_points_that_would_raise_a_score_or_name_no_severity_are_refused(
    field: str, points: dict, message: str
) -> None:
    """Points out of range were clamped where a threat is scored, so -30 made the rule's
    threats cost nothing, silently, and NaN went through the clamp into the score; a
    misspelt severity silently took the default points."""
    with pytest.raises(ValidationError, match=re.escape(message)):
        Settings(**{field: points})


def test_the_score_never_falls_below_zero() -> None:
    scores = scores_with(security_auto_quarantine=False)
    out = scores.apply_threats([threat(T0 + i, severity="CRITICAL") for i in range(6)])
    assert [c["score"] for c in out.score_changes] == [70.0, 40.0, 10.0, 0.0]
    assert out.score_changes[-1]["delta"] == -10.0  # only what was left; no record after
    assert scores.score_of("a1") == 0.0
    assert out.commands == [] and out.lifecycle_events == []


def test_threats_of_other_agents_do_not_touch_an_agent() -> None:
    scores = scores_with()
    scores.apply_threats([threat(T0, agent="a2")])
    assert scores.score_of("a1") == 100.0 and scores.score_of("a2") == 80.0


# --- recovery ----------------------------------------------------------------------------


def test_a_clean_agent_recovers_only_after_the_delay_and_at_the_set_rate() -> None:
    scores = scores_with(security_recovery_points_per_hour=4.0, security_recovery_delay_s=HOUR)
    scores.apply_threats([threat(T0)])  # 80
    scores.observe_time(beats(every(30, T0 + HOUR + 1)))
    assert scores.score_of("a1") == 80.0  # still within the delay
    scores.observe_time(beats([T0 + 3 * HOUR]))
    assert abs(scores.score_of("a1") - 88.0) < 1e-9  # two clean hours after the delay


def test_recovery_never_passes_the_initial_score() -> None:
    scores = scores_with(security_recovery_points_per_hour=50.0, security_recovery_delay_s=0)
    scores.apply_threats([threat(T0)])
    out = scores.observe_time(beats(every(600, T0 + 10 * HOUR)))
    assert scores.score_of("a1") == 100.0
    assert max(c["score"] for c in out.score_changes) == 100.0


def test_a_new_threat_restarts_the_recovery_delay() -> None:
    scores = scores_with(security_recovery_points_per_hour=10.0, security_recovery_delay_s=HOUR)
    scores.apply_threats([threat(T0)])
    scores.observe(beats(every(60, T0 + 50 * 60)), [threat(T0 + 50 * 60, severity="WARNING")])
    scores.observe_time(beats(every(60, T0 + 110 * 60, start=T0 + 51 * 60)))
    assert scores.score_of("a1") == 65.0  # 100 - 20 - 15, nothing back yet


def test_recovery_is_recorded_at_most_once_per_interval_and_the_history_adds_up() -> None:
    scores = scores_with(
        security_recovery_points_per_hour=3.0,
        security_recovery_delay_s=HOUR,
        security_recovery_report_interval_s=900.0,
    )
    changes = scores.apply_threats([threat(T0)]).score_changes
    times = every(30, T0 + 6 * HOUR)
    for lo in range(0, len(times), 37):
        changes += scores.observe_time(beats(times[lo : lo + 37])).score_changes
    changes += scores.apply_threats([threat(T0 + 6 * HOUR + 10, severity="WARNING")]).score_changes
    recovery = [c for c in changes if c["cause"] == "recovery"]
    gaps = np.diff([c["timestamp"] for c in recovery[:-1]])  # the last: flushed by the threat
    assert len(recovery) >= 15 and (gaps >= 900.0).all()
    assert recovery[-1]["timestamp"] == T0 + 6 * HOUR + 10
    score = 100.0
    for c in changes:
        score += c["delta"]
        assert abs(score - c["score"]) < 1e-9
        ScoreChange.model_validate(c)
    assert abs(score - scores.score_of("a1")) < 1e-9


# --- quarantine --------------------------------------------------------------------------


def test_falling_below_the_threshold_quarantines_once_with_the_reason() -> None:
    scores = scores_with()
    scores.observe_time(beats([T0 - 30], status="busy"))
    out = scores.apply_threats(
        [
            threat(T0 + 60 * i, rule, severity)
            for i, (rule, severity) in enumerate(
                [
                    ("resource_abuse", "HIGH"),
                    ("data_exfiltration", "CRITICAL"),
                    ("excessive_errors", "HIGH"),
                    ("rapid_changes", "HIGH"),
                ]
            )
        ]  # fmt: skip
    )  # 80, 50, 30, 10: crosses 20 on the fourth
    assert len(out.commands) == 1 and len(out.lifecycle_events) == 1
    command = AgentCommand.model_validate(out.commands[0])
    event = LifecycleEvent.model_validate(out.lifecycle_events[0])
    assert command.command == "quarantine" and command.score == 10.0
    assert command.issued_at == T0 + 180 and command.actor == "system"
    assert event.type == "status_changed" and event.actor == "system"
    assert event.payload["from"] == "busy" and event.payload["to"] == "quarantined"
    for rule in ("resource_abuse", "data_exfiltration", "excessive_errors", "rapid_changes"):
        assert rule in command.reason
    assert [t["rule"] for t in event.payload["threats"]][0] == "rapid_changes"  # newest first
    more = scores.observe(beats([T0 + 400]), [threat(T0 + 400), threat(T0 + 500)])
    assert more.commands == [] and more.lifecycle_events == []  # not re-quarantined


def test_a_released_agent_can_be_quarantined_again() -> None:
    scores = scores_with()
    first = scores.apply_threats([threat(T0 + i, severity="CRITICAL") for i in range(3)])
    released = scores.release("a1", T0 + HOUR)
    assert [(c["cause"], c["delta"], c["score"]) for c in released.score_changes] == [
        ("release", 90.0, 100.0)
    ]
    assert scores.breakdown("a1")["deductions"] == []
    second = scores.apply_threats([threat(T0 + HOUR + i, severity="CRITICAL") for i in range(3)])
    assert len(first.commands) == len(second.commands) == 1
    assert first.commands[0]["command_id"] != second.commands[0]["command_id"]


def test_a_release_that_keeps_the_score_quarantines_on_the_next_threat() -> None:
    scores = scores_with(security_release_resets_score=False)
    scores.apply_threats([threat(T0 + i, severity="CRITICAL") for i in range(3)])  # 10
    assert scores.release("a1", T0 + 60).score_changes == []
    assert scores.score_of("a1") == 10.0
    assert scores.observe_time(beats(every(30, T0 + 600))).commands == []  # beats don't
    assert len(scores.apply_threats([threat(T0 + 700, severity="INFO")]).commands) == 1


def test_auto_quarantine_can_be_disabled() -> None:
    scores = scores_with(security_auto_quarantine=False)
    out = scores.apply_threats([threat(T0 + i, severity="CRITICAL") for i in range(4)])
    assert out.commands == [] and scores.breakdown("a1")["quarantined"] is False


def test_command_ids_are_deterministic_so_a_replay_repeats_them() -> None:
    def run() -> list[str]:
        scores = scores_with()
        out = scores.apply_threats([threat(T0 + i, severity="CRITICAL") for i in range(3)])
        return [c["command_id"] for c in out.commands]

    assert run() == run()


# --- breakdown and size --------------------------------------------------------------------


def test_the_breakdown_keeps_the_latest_deductions_newest_first() -> None:
    scores = scores_with(security_breakdown_size=3, security_auto_quarantine=False)
    rules = ["r1", "r2", "r3", "r4"]
    scores.apply_threats([threat(T0 + i, rule, "WARNING") for i, rule in enumerate(rules)])
    breakdown = scores.breakdown("a1")
    assert breakdown["score"] == 40.0 and breakdown["as_of"] == T0 + 3
    assert [(d["rule"], d["points"], d["at"]) for d in breakdown["deductions"]] == [
        ("r4", 15, T0 + 3), ("r3", 15, T0 + 2), ("r2", 15, T0 + 1)]  # fmt: skip
    assert scores.breakdown("nobody") is None


def test_state_stays_within_200_bytes_per_agent() -> None:
    scores = scores_with()
    assert scores.bytes_per_agent() <= 200
    for i in range(200):  # rows grow without losing anything
        scores.apply_threats([threat(T0, agent=f"a{i}")])
    assert len(scores) == 200 and scores.score_of("a0") == scores.score_of("a199") == 80.0


# --- invariants ----------------------------------------------------------------------------

events = st.lists(
    st.tuples(
        st.sampled_from(["a1", "a2", "a3"]),
        st.floats(1.0, 2 * HOUR),  # gap before the event
        st.sampled_from(["beat", "beat", "beat", "WARNING", "HIGH", "CRITICAL", "INFO"]),
    ),
    min_size=1,
    max_size=80,
)


def run_events(scores: SecurityScores, timeline: list[tuple], cuts: list[int]) -> list[dict]:
    """Feed the timeline, cut into batches at ``cuts``; every record produced."""
    records: list[dict] = []
    bounds = [0, *sorted(set(cuts)), len(timeline)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        part = timeline[lo:hi]
        hb = [(agent, t) for agent, t, kind in part if kind == "beat"]
        batch = HeartbeatBatch(
            index=np.arange(len(hb)),
            agent_id=[a for a, _ in hb],
            tenant_id=["t1"] * len(hb),
            timestamp=np.array([t for _, t in hb], dtype=float),
            metrics={f: np.zeros(len(hb)) for f in NUMERIC_FIELDS},
            status=[None] * len(hb),
        )
        found = [
            threat(t, f"rule_{kind.lower()}", kind, a) for a, t, kind in part if kind != "beat"
        ]
        out = scores.observe(batch, found)
        records += out.score_changes + out.commands
    return records


@settings(max_examples=80, deadline=None)
@given(events, st.lists(st.integers(0, 80), max_size=8))
def test_scores_stay_in_range_quarantine_once_per_crossing_and_ignore_batch_cuts(
    raw: list[tuple], cuts: list[int]
) -> None:
    overrides = {"security_recovery_points_per_hour": 30.0, "security_recovery_delay_s": 1800.0}
    t, timeline = T0, []
    for agent, gap, kind in raw:
        t += gap
        timeline.append((agent, t, kind))
    whole = scores_with(**overrides)
    once = run_events(whole, timeline, [])
    split = scores_with(**overrides)
    cut = run_events(split, timeline, [c for c in cuts if c < len(timeline)])
    key = lambda r: (r["agent_id"], r.get("timestamp", r.get("issued_at")), str(r))  # noqa: E731
    assert sorted(once, key=key) == sorted(cut, key=key)
    for agent in ("a1", "a2", "a3"):
        changes = [r for r in once if r["agent_id"] == agent and "cause" in r]
        assert all(0.0 <= c["score"] <= 100.0 for c in changes)
        # never released here: the first fall below 20 quarantines, nothing after it
        fell = any(c["score"] < 20.0 and c["delta"] < 0 for c in changes)
        commands = [r for r in once if r["agent_id"] == agent and "command" in r]
        assert len(commands) == int(fell)
        assert whole.score_of(agent) == split.score_of(agent)


def test_many_random_agents_keep_their_scores_in_range() -> None:
    rng = random.Random(4)
    scores = scores_with(security_recovery_points_per_hour=100.0, security_recovery_delay_s=0)
    t = T0
    for _ in range(50):
        t += rng.uniform(0, 900)
        agents = [f"a{rng.randrange(40)}" for _ in range(30)]
        scores.observe(
            HeartbeatBatch(
                np.arange(30),
                agents,
                ["t1"] * 30,
                np.full(30, t),
                {f: np.zeros(30) for f in NUMERIC_FIELDS},
                [None] * 30,
            ),  # fmt: skip
            [threat(t, severity=rng.choice(["HIGH", "CRITICAL"]), agent=a) for a in agents[:5]],
        )
    live = scores.score[: len(scores)]
    assert ((live >= 0) & (live <= 100)).all()
