"""Alerts: one firing and one resolution per sustained incident whatever the batch cuts,
for-duration timing, flapping damped, silences marked, no undeclared state; coordinated
incidents; webhook payloads and backoff."""

from __future__ import annotations

import json
import math
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentwatch.alerts import (
    AlertBook,
    CoordinationDetector,
    backoff_delays,
    bytes_per_alert,
    fingerprint,
    generic_payload,
    should_notify,
    slack_payload,
)
from agentwatch.rules import RuleSet
from agentwatch.settings import Settings
from schemas.models import ALERT_STATES, Alert, Incident
from tests.test_rules import T0, batch_of

SETTINGS = Settings(alert_resolve_after_s=300, alert_flap_window_s=1800, alert_flap_threshold=2)


def run(beats: list[dict], cuts: list[int], book: AlertBook | None = None) -> list[dict]:
    """Heartbeats through the default rules and an alert book, in batches cut at ``cuts``."""
    rules = RuleSet.default(SETTINGS)
    book = book or AlertBook(SETTINGS, rules.rules())
    events: list[dict] = []
    bounds = [0, *sorted(set(cuts)), len(beats)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        if lo == hi:
            continue
        batch = batch_of(beats[lo:hi])
        out = rules.observe(batch)
        events += book.observe(out.transitions, out.threats, batch.agent_id, batch.timestamp)
    return events


def incident_beats(hot: range, total: int, flicker: tuple[int, ...] = ()) -> list[dict]:
    """Agent a1 every 30 s; CPU at 99 % on the beats in ``hot`` (except ``flicker``)."""
    return [
        {"timestamp": T0 + 30 * i, "cpu_usage": 99.0 if i in hot and i not in flicker else 40.0}
        for i in range(total)
    ]


def transitions_of(events: list[dict]) -> list[str]:
    return [e["state"] for e in events]


# --- lifecycle ---------------------------------------------------------------


def test_a_sustained_incident_is_pending_then_fires_once_and_resolves_once() -> None:
    beats = incident_beats(range(10, 60), 90)  # 25 min of CPU at 99 %
    events = run(beats, [])
    assert transitions_of(events) == ["pending", "firing", "resolved"]
    pending, firing, resolved = events
    assert pending["started_at"] == T0 + 300
    # resource_abuse needs 600 s: it fires on the first heartbeat 600 s after it began
    assert firing["fired_at"] - firing["started_at"] == SETTINGS.threat_resource_for_s
    assert firing["evidence"]["condition"].startswith("cpu_usage or memory_usage > 95")
    assert firing["severity"] == "HIGH" and firing["category"] == "SECURITY"
    assert resolved["resolved_at"] == T0 + 30 * 60  # the first cool heartbeat
    assert resolved["updated_at"] == resolved["resolved_at"] + SETTINGS.alert_resolve_after_s
    assert len({e["fingerprint"] for e in events}) == 1
    assert [should_notify(e) for e in events] == [False, True, True]
    for event in events:
        Alert.model_validate(event)


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(0, 90), max_size=12))
def test_batch_cuts_do_not_change_the_events(cuts: list[int]) -> None:
    beats = incident_beats(range(10, 60), 90, flicker=(40, 41, 50))
    expected = run(beats, [])
    assert transitions_of(expected) == ["pending", "firing", "resolved"]
    assert run(beats, cuts) == expected


def test_a_flicker_shorter_than_the_hold_neither_resolves_nor_refires() -> None:
    # a few cool heartbeats inside the incident: the rule starts a new episode, the alert holds
    events = run(incident_beats(range(10, 80), 120, flicker=(40, 41, 42, 60)), [])
    assert transitions_of(events) == ["pending", "firing", "resolved"]


def test_a_condition_that_holds_shorter_than_its_for_duration_only_goes_pending() -> None:
    events = run(incident_beats(range(10, 25), 60), [])  # 7.5 min < 10 min
    assert transitions_of(events) == ["pending", "resolved"]
    assert events[1]["fired_at"] is None and not should_notify(events[1])


@pytest.mark.parametrize("cuts", [[], [11], [10, 11, 12]])
def test_a_condition_true_on_one_heartbeat_only_publishes_nothing(cuts: list[int]) -> None:
    assert run(incident_beats(range(10, 11), 40), cuts) == []
    pending, resolved = run(incident_beats(range(10, 12), 40), cuts)  # two: announced
    assert (pending["state"], pending["updated_at"]) == ("pending", T0 + 330)
    assert resolved["state"] == "resolved" and resolved["fired_at"] is None


def at(agent: str, rule: str, t: float, holds: bool, first_seen: float, fired: bool) -> dict:
    return {
        "agent_id": agent,
        "tenant_id": "t1",
        "rule": rule,
        "holds": holds,
        "at": T0 + t,
        "first_seen": T0 + first_seen,
        "fired": fired,
    }


def threat(agent: str, rule: str, first_seen: float, last_seen: float, tenant: str = "t1"):
    return {
        "agent_id": agent,
        "tenant_id": tenant,
        "rule": rule,
        "category": "SECURITY",
        "severity": "CRITICAL",
        "evidence": {
            "condition": "bytes_out > 1e9",
            "values": {"bytes_out": 2e9},
            "baseline": [],
            "window_start": T0 + first_seen,
            "window_end": T0 + last_seen,
        },
        "first_seen": T0 + first_seen,
        "last_seen": T0 + last_seen,
    }


def cycle(book: AlertBook, start: float, on_s: float, off_s: float) -> list[dict]:
    """A for_s = 0 rule holding ``on_s`` then not for ``off_s``, heartbeats every 30 s."""
    events = book.observe(
        [at("a1", "x", start, True, start, True)], [threat("a1", "x", start, start)]
    )
    events += book.observe([at("a1", "x", start + on_s, False, start, True)])
    beats = [T0 + start + on_s + k for k in range(30, int(off_s), 30)]
    events += book.observe(agent_ids=["a1"] * len(beats), timestamps=beats)
    return events


def test_flapping_is_marked_and_then_held_firing_until_calm() -> None:
    book = AlertBook(SETTINGS)
    events: list[dict] = []
    start = 0.0
    for _ in range(8):  # hold 60 s, then quiet 400 s (> resolve hold, < flap window)
        events += cycle(book, start, 60, 400)
        start += 460
    # fire, resolve, refire (1 flap), resolve, refire (2 flaps: flapping), then nothing
    assert transitions_of(events) == ["firing", "resolved", "firing", "resolved", "firing"]
    assert [e["flap_count"] for e in events] == [0, 0, 1, 1, 2]
    assert events[-1]["flapping"] and "flapping" in events[-1]["summary"]
    # calm for the flap window: one resolution, and the mark is cleared
    beats = [T0 + start + k for k in range(30, 1900, 30)]
    calm = book.observe(agent_ids=["a1"] * len(beats), timestamps=beats)
    assert transitions_of(calm) == ["resolved"]
    assert calm[0]["updated_at"] == calm[0]["resolved_at"] + SETTINGS.alert_flap_window_s
    assert not calm[0]["flapping"]
    # long after, it is a new incident: no flap counted
    later = cycle(book, start + 5000, 60, 400)
    assert [(e["state"], e["flap_count"]) for e in later] == [("firing", 0), ("resolved", 0)]


def test_a_refire_after_the_flap_window_is_not_a_flap() -> None:
    book = AlertBook(SETTINGS)
    events = cycle(book, 0, 60, 400) + cycle(book, 3000, 60, 400) + cycle(book, 6000, 60, 400)
    assert [e["flap_count"] for e in events] == [0] * 6
    assert not any(e["flapping"] for e in events)


def test_silences_mark_events_and_expire() -> None:
    book = AlertBook(SETTINGS)
    mute = {
        "id": "maint",
        "tenant_id": "t1",
        "severity": "CRITICAL",
        "starts_at": T0,
        "ends_at": T0 + 1000,
        "created_by": "ops",
        "comment": "planned maintenance",
    }
    assert book.apply_silence(mute, T0) == []
    fired = book.observe([at("a1", "exfil", 0, True, 0, True)], [threat("a1", "exfil", 0, 0)])
    assert [(e["state"], e["silenced"]) for e in fired] == [("firing", True)]
    assert not should_notify(fired[0])
    # the silence ends: the live alert is published again, unmarked
    ended = book.tick(T0 + 1000)
    assert [(e["state"], e["silenced"]) for e in ended] == [("firing", False)]
    # a silence on another tenant matches nothing
    other = {**mute, "id": "other", "tenant_id": "t2", "ends_at": T0 + 5000}
    assert book.apply_silence(other, T0 + 1001) == []
    assert book.expire("other", T0 + 1002) == []
    assert book.expire("never-was", T0 + 1002) == []


def test_a_detector_threat_fires_and_resolves_when_no_new_threat_comes() -> None:
    book = AlertBook(SETTINGS)  # "anomaly" is no rule: its threats are its only signal
    events = book.observe([], [threat("a1", "anomaly", 0, 0)])
    events += book.observe([], [threat("a1", "anomaly", 100, 100)])  # keeps it alive
    events += book.observe(agent_ids=["a1"], timestamps=[T0 + 350])
    assert transitions_of(events) == ["firing"]
    events += book.observe(agent_ids=["a1"], timestamps=[T0 + 400])
    assert transitions_of(events) == ["firing", "resolved"]
    assert events[-1]["resolved_at"] == T0 + 100


def test_tick_resolves_the_alerts_of_silent_agents() -> None:
    book = AlertBook(SETTINGS)
    book.observe([at("a1", "x", 0, True, 0, True)], [threat("a1", "x", 0, 0)])
    book.observe([at("a1", "x", 60, False, 0, True)])
    book.observe([at("a2", "x", 0, True, 0, True)], [threat("a2", "x", 0, 0)])
    assert book.tick(T0 + 200) == []
    assert [(e["agent_id"], e["state"]) for e in book.tick(T0 + 360)] == [("a1", "resolved")]
    assert len(book) == 2  # a1 is kept for its flap history
    # a2 still holds as far as anyone knows; it resolves once not heard of for a day
    silent = book.tick(T0 + SETTINGS.alert_silent_resolve_s)
    assert [(e["agent_id"], e["state"]) for e in silent] == [("a2", "resolved")]
    assert "agent silent" in silent[0]["summary"]
    assert len(book) == 0  # and forgotten, once their flap window has passed


def test_the_book_survives_a_snapshot() -> None:
    book = AlertBook(SETTINGS)
    book.apply_silence(
        {"id": "s", "rule": "y", "starts_at": T0, "ends_at": T0 + 60, "created_by": "ops"}, T0
    )
    book.observe([at("a1", "x", 0, True, 0, True)], [threat("a1", "x", 0, 0)])
    book.observe([at("a1", "x", 60, False, 0, True)])
    copy = pickle.loads(pickle.dumps(book))
    assert copy.tick(T0 + 400) == book.tick(T0 + 400) != []


def test_a_retired_rule_resolves_its_alerts() -> None:
    book = AlertBook(SETTINGS)
    book.observe([at("a1", "x", 0, True, 0, True)], [threat("a1", "x", 0, 0)])
    assert transitions_of(book.retire_rule("x")) == ["resolved"]
    assert book.retire_rule("x") == []


STEP = st.tuples(
    st.sampled_from(["holds", "stops", "threat", "beat", "tick"]),
    st.sampled_from(["a1", "a2"]),
    st.sampled_from(["x", "y", "anomaly"]),
    st.floats(0, 700),
    st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(STEP, max_size=40))
def test_no_undeclared_state_whatever_the_inputs(steps: list) -> None:
    book = AlertBook(SETTINGS)
    now = 0.0
    events: list[dict] = []
    for kind, agent, rule, gap, fired in steps:
        now += gap
        if kind in ("holds", "stops"):
            events += book.observe([at(agent, rule, now, kind == "holds", now - gap, fired)])
        elif kind == "threat":
            events += book.observe([], [threat(agent, rule, now - gap, now)])
        elif kind == "beat":
            events += book.observe(agent_ids=[agent], timestamps=[T0 + now])
        else:
            events += book.tick(T0 + now)
        for rules in book.alerts.values():
            for alert in rules.values():
                assert alert.state in ALERT_STATES
    last: dict[str, str] = {}
    for event in events:
        Alert.model_validate(event)
        before = last.get(event["fingerprint"], "resolved")
        # pending → firing → resolved, or a repeat of the same state (a mark changed)
        assert (before, event["state"]) in {
            ("resolved", "pending"),
            ("resolved", "firing"),
            ("pending", "firing"),
            ("pending", "resolved"),
            ("firing", "resolved"),
            ("pending", "pending"),
            ("firing", "firing"),
        }
        if before == event["state"]:  # only a flapping or silence mark may repeat a state
            assert event["flapping"] or event["silenced"] or before == "firing"
        if event["state"] == "resolved":
            assert event["resolved_at"] is not None and event["updated_at"] >= event["resolved_at"]
        last[event["fingerprint"]] = event["state"]


def test_alert_state_is_small_per_agent() -> None:
    book = AlertBook(SETTINGS)
    agents = [f"agent-{i:05d}" for i in range(1000)]
    book.observe(
        [at(a, "x", 0, True, 0, True) for a in agents], [threat(a, "x", 0, 0) for a in agents]
    )
    per_alert = bytes_per_alert(book)
    print(f"alert state: {per_alert:.0f} bytes per agent with one live alert")
    assert per_alert < 600
    assert book.state_bytes() / len(agents) == per_alert


def test_fingerprints_are_per_agent_and_rule() -> None:
    assert fingerprint("a1", "x") != fingerprint("a1", "y") != fingerprint("a2", "x")


# --- coordinated threats -------------------------------------------------------

COORD = Settings(coordination_min_agents=5, coordination_window_s=300)


def wave(agents: range, start: float, step: float, rule: str = "exfil") -> list[dict]:
    return [threat(f"a{i}", rule, 0, start + step * k) for k, i in enumerate(agents)]


def test_k_agents_within_the_window_raise_one_incident() -> None:
    detector = CoordinationDetector(COORD)
    incidents = detector.observe(wave(range(5), 0, 60))  # spans 240 s
    assert len(incidents) == 1
    incident = Incident.model_validate(incidents[0])
    assert incident.severity == "EMERGENCY" and incident.category == "SECURITY"
    assert incident.agent_ids == ["a0", "a1", "a2", "a3", "a4"]
    assert (incident.first_seen, incident.last_seen) == (T0, T0 + 240)
    # the same agents again: no new incident
    assert detector.observe(wave(range(5), 250, 10)) == []


def test_k_minus_one_agents_or_agents_spread_beyond_the_window_raise_nothing() -> None:
    assert CoordinationDetector(COORD).observe(wave(range(4), 0, 10)) == []
    assert CoordinationDetector(COORD).observe(wave(range(5), 0, 75)) == []  # spans 300 s
    assert CoordinationDetector(COORD).observe(wave(range(20), 0, 301)) == []
    # other tenants and other rules do not add up
    mixed = wave(range(3), 0, 1) + [threat("a9", "exfil", 0, 5, tenant="t2")]
    mixed += wave(range(3, 5), 10, 1, rule="other")
    assert CoordinationDetector(COORD).observe(mixed) == []


def test_an_incident_is_updated_when_more_agents_join_and_a_later_burst_is_new() -> None:
    detector = CoordinationDetector(COORD)
    first = detector.observe(wave(range(5), 0, 10))
    joined = detector.observe(wave(range(5, 7), 100, 10))
    assert [i["revision"] for i in joined] == [1, 2]
    assert joined[-1]["incident_id"] == first[0]["incident_id"]
    assert joined[-1]["agent_ids"] == [f"a{i}" for i in range(7)]
    assert first[0]["agent_ids"] == [f"a{i}" for i in range(5)]  # published copies stay put
    later = detector.observe(wave(range(5), 5000, 10))
    assert len(later) == 1 and later[0]["incident_id"] != first[0]["incident_id"]
    detector.tick(T0 + 10_000)
    assert detector.bursts == {}


def test_incident_lists_are_capped() -> None:
    detector = CoordinationDetector(
        Settings(coordination_min_agents=2, coordination_max_listed_agents=3)
    )
    out = detector.observe(wave(range(10), 0, 1))
    assert [len(i["agent_ids"]) for i in out] == [2, 3, 3]
    assert out[-1]["truncated"]


@settings(max_examples=50, deadline=None)
@given(times=st.lists(st.floats(0, 2000), min_size=1, max_size=30), seed=st.randoms())
def test_incidents_open_exactly_when_k_agents_fit_in_a_window(times, seed) -> None:
    threats = [threat(f"a{i}", "exfil", 0, t) for i, t in enumerate(times)]
    seed.shuffle(threats)
    opened = [i for i in CoordinationDetector(COORD).observe(threats) if i["revision"] == 0]
    ordered = sorted(times)
    fits = any(ordered[j + 4] - ordered[j] < 300 for j in range(len(ordered) - 4))
    assert bool(opened) == fits


# --- webhooks ------------------------------------------------------------------


def sample_alert(state: str = "firing", severity: str = "CRITICAL") -> dict:
    book = AlertBook(SETTINGS)
    event = book.observe([], [dict(threat("a1", "exfil", 0, 0), severity=severity)])[0]
    return dict(event, state=state)


@pytest.mark.parametrize("severity", ["EMERGENCY", "CRITICAL", "HIGH", "WARNING", "INFO"])
def test_slack_payload_shape(severity: str) -> None:
    message = slack_payload(sample_alert(severity=severity))
    json.dumps(message)
    assert message["text"].startswith(f"[FIRING] {severity} exfil on agent a1")
    (attachment,) = message["attachments"]
    assert attachment["color"].startswith("#") and attachment["text"]
    assert {f["title"] for f in attachment["fields"]} >= {"Agent", "Tenant", "Rule", "Severity"}
    resolved = slack_payload(sample_alert("resolved", severity))
    assert resolved["attachments"][0]["color"] == "#2eb886"


def test_a_slack_message_shows_what_agents_wrote_as_text_never_as_markup() -> None:
    """Agents choose their ids (and the words of their conversations reach threats): Slack
    reads ``<!channel>``, ``<@U123>`` and ``<https://…|label>`` in a message as a
    channel-wide notification, a mention and a link, unless ``&``, ``<`` and ``>`` are
    escaped."""
    book = AlertBook(SETTINGS)
    named = "<!channel> <https://evil.example/login|Re-authenticate agentwatch> &amp;"
    threat_of = dict(threat(named, "exfil", 0, 0), tenant_id="<@U0123>")
    alert = dict(book.observe([], [threat_of])[0])
    message = slack_payload(alert)

    def texts(value: object) -> list[str]:
        if isinstance(value, dict):
            return [t for v in value.values() for t in texts(v)]
        if isinstance(value, list):
            return [t for v in value for t in texts(v)]
        return [value] if isinstance(value, str) else []

    assert all("<" not in t and ">" not in t for t in texts(message)), message
    assert "&lt;!channel&gt; &lt;https://evil.example/login|Re-authenticate agentwatch&gt; " \
        "&amp;amp;" in message["text"]  # fmt: skip
    assert "(tenant &lt;@U0123&gt;)" in message["text"]


def test_generic_payload_is_the_alert_as_json() -> None:
    alert = sample_alert()
    body = json.loads(json.dumps(generic_payload(alert)))
    assert body["status"] == "firing" and Alert.model_validate(body["alert"])


@given(
    attempts=st.integers(0, 12),
    base=st.floats(0.01, 10),
    cap=st.floats(0.01, 120),
    seed=st.integers(0, 2**32),
)
def test_backoff_grows_stays_capped_and_is_reproducible(attempts, base, cap, seed) -> None:
    plain = backoff_delays(attempts, base, cap)
    assert len(plain) == attempts
    assert all(a <= b for a, b in zip(plain, plain[1:], strict=False))
    assert all(d <= cap for d in plain)
    jittered = backoff_delays(attempts, base, cap, seed=seed)
    assert jittered == backoff_delays(attempts, base, cap, seed=seed)
    assert all(d / 2 <= j <= d or math.isclose(j, d) for d, j in zip(plain, jittered, strict=True))
