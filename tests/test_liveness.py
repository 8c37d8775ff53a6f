"""Heartbeat timeouts with a controlled clock: time is a value the test sets, never a sleep."""

from __future__ import annotations

import pickle
import random

import orjson
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from agentwatch.liveness import AGENT_OFFLINE_RULE, Liveness, ShardClock
from agentwatch.settings import Settings
from agentwatch.shard import QuarantineOrder, ShardState
from schemas.heartbeats import parse_heartbeats
from schemas.models import Alert, LifecycleEvent
from tests.test_dataflow import heartbeat

T0 = 1_800_000_000.0
SETTINGS = Settings(
    agents_auto_register=True
)  # late after 60 s, offline after 120 s, idle advance after 10 s


def beats(live: Liveness, agents: list[str], at: float, wall: float = 0.0, partition: int = 0):
    return live.observe(agents, ["t1"] * len(agents), [at] * len(agents), partition, wall)


def kinds(out) -> list[tuple]:
    """The ladder's warnings and timeouts (the triggers it gives the lifecycle), by time."""
    told = [
        (e["agent_id"], e["type"], e["payload"].get("to"), e["timestamp"] - T0) for e in out.events
    ] + [(t["agent_id"], "heartbeat_timeout", None, t["at"] - T0) for t in out.timeouts]
    return sorted(told, key=lambda k: k[3])


def test_late_exactly_at_the_threshold_and_not_before():
    live = Liveness.from_settings(SETTINGS)
    beats(live, ["a1", "a2"], T0)
    assert beats(live, ["a2"], T0 + 59.999).events == []
    assert kinds(beats(live, ["a2"], T0 + 60)) == [("a1", "heartbeat_late", None, 60.0)]
    assert live.state_of("a1") == "late" and live.state_of("a2") == "on_time"


def test_offline_exactly_at_the_threshold_then_active_when_it_beats_again():
    live = Liveness.from_settings(SETTINGS)
    beats(live, ["a1", "a2"], T0)
    beats(live, ["a2"], T0 + 60)
    assert beats(live, ["a2"], T0 + 119.9).events == []
    out = beats(live, ["a2"], T0 + 120)
    assert kinds(out) == [("a1", "heartbeat_timeout", None, 120.0)]
    assert out.timeouts[0]["last_heartbeat"] == T0
    assert [(t["rule"], t["holds"], t["at"] - T0) for t in out.transitions] == [
        (AGENT_OFFLINE_RULE, True, 120.0)
    ]
    assert [(t["rule"], t["severity"]) for t in out.threats] == [(AGENT_OFFLINE_RULE, "HIGH")]
    back = beats(live, ["a1", "a2"], T0 + 150)
    assert kinds(back) == []  # (the heartbeat is the return: the lifecycle's to decide)
    assert [(t["holds"], t["at"] - T0) for t in back.transitions] == [(False, 150.0)]
    assert live.state_of("a1") == "on_time"


def test_a_gap_inside_one_batch_gives_the_whole_ladder_at_the_same_times():
    live = Liveness.from_settings(SETTINGS)
    beats(live, ["a1"], T0)
    out = live.observe(["a1", "a1"], ["t1", "t1"], [T0 + 300, T0 + 330], 0, 1.0)
    assert kinds(out) == [
        ("a1", "heartbeat_late", None, 60.0),
        ("a1", "heartbeat_timeout", None, 120.0),
    ]


def test_repeated_ticks_and_batches_tell_each_rung_once():
    live = Liveness.from_settings(SETTINGS)
    beats(live, ["a1", "a2"], T0, wall=0.0)
    events = []
    for k in range(1, 20):
        events += kinds(beats(live, ["a2"], T0 + 10 * k, wall=float(k)))
        for _ in range(3):
            events += kinds(live.tick(float(k)))
    assert [e[:2] for e in events] == [("a1", "heartbeat_late"), ("a1", "heartbeat_timeout")]


def test_a_silent_fleet_times_out_by_processing_time_after_the_idle_wait():
    live = Liveness.from_settings(SETTINGS)
    beats(live, ["a1", "a2"], T0, wall=1000.0)
    assert live.tick(1009.9).events == []  # quiet for less than clock_idle_advance_s
    assert kinds(live.tick(1060.0)) == [
        ("a1", "heartbeat_late", None, 60.0),
        ("a2", "heartbeat_late", None, 60.0),
    ]
    assert live.tick(1119.0).events == []
    offline = live.tick(1120.0)
    assert [t["agent_id"] for t in offline.timeouts] == ["a1", "a2"]
    assert live.tick(1500.0).events == []


def test_the_clock_of_a_partition_waits_for_that_partition():
    """A partition read ahead of another does not make the other's agents late."""
    live = Liveness.from_settings(SETTINGS)
    beats(live, ["a1"], T0, partition=0)
    beats(live, ["b1"], T0, partition=1)
    for step in range(1, 120):
        assert beats(live, ["b1"], T0 + 30 * step, partition=1).events == []
    assert kinds(beats(live, ["a1"], T0 + 30, partition=0)) == []


def test_a_quarantined_agent_keeps_its_status_but_still_warns_and_alerts():
    """Through the shard: the timeout and the return go to the lifecycle table, which
    keeps a quarantined agent quarantined (no offline, and no active on its return)."""
    shard = ShardState.new(SETTINGS)
    shard.observe(parse_heartbeats(shard_beats([0, 1], 0))[0], wall=0.0)
    ordered = shard.apply(QuarantineOrder("agent-0000", "tenant-0", T0 + 10, "leak", "ops-1"))
    assert [e["payload"]["to"] for e in ordered.events] == ["quarantined"]
    events, alerts = [], []
    for step in range(1, 16):  # agent 0 silent for 420 s
        agents = [1] if step < 15 else [0, 1]
        out = shard.observe(parse_heartbeats(shard_beats(agents, step))[0], wall=float(step))
        events += [(e["type"], e["payload"].get("to")) for e in out.events]
        alerts += [a["state"] for a in out.alerts if a["agent_id"] == "agent-0000"]
    assert events == [("heartbeat_late", None)]
    assert alerts[0] == "firing"
    assert shard.lifecycle.state_of("agent-0000") == "quarantined"


def test_shard_clock_never_goes_back_and_advances_once_per_quiet_spell():
    clock = ShardClock(idle_advance_s=10)
    clock.observe(3, 100.0, wall=0.0)
    assert clock.tick(9.0) == [] and clock.now(3) == 100.0
    assert clock.tick(10.0) == [3] and clock.now(3) == 110.0
    assert clock.tick(10.0) == [] and clock.now(3) == 110.0
    assert clock.observe(3, 105.0, wall=11.0) == 110.0


# --- through the shard: the alert, the snapshot, the replay ------------------------------------


def shard_beats(agents: list[int], step: int) -> list[bytes]:
    return [orjson.dumps(heartbeat(a, step)) for a in agents]


def test_offline_raises_an_alert_that_resolves_after_the_return_and_the_hold():
    shard = ShardState.new(SETTINGS)
    events, alerts, fired = [], [], []
    for step in range(40):
        agents = [0, 1] if not 5 <= step < 15 else [1]  # agent 0 silent for 300 s
        out = shard.observe(parse_heartbeats(shard_beats(agents, step))[0], wall=float(step))
        events += out.events
        alerts += [(a["agent_id"], a["rule"], a["state"]) for a in out.alerts]
        fired += out.alerts
    assert [(e["type"], e["payload"].get("to"), e["timestamp"] - T0) for e in events] == [
        ("heartbeat_late", None, 180.0),
        ("status_changed", "offline", 240.0),
        ("status_changed", "active", 450.0),
    ]
    assert alerts == [
        ("agent-0000", AGENT_OFFLINE_RULE, "firing"),
        ("agent-0000", AGENT_OFFLINE_RULE, "resolved"),
    ]
    for record in fired:  # what the loader stores (it skips a record its model refuses)
        Alert.model_validate(record)
    for record in events:
        LifecycleEvent.model_validate(record)


def test_a_snapshot_from_before_the_timeouts_resumes_with_them():
    shard = ShardState.new(SETTINGS)
    shard.observe(parse_heartbeats(shard_beats([0, 1], 0))[0], wall=0.0)
    old = object.__new__(ShardState)
    for name in ShardState.__slots__:
        if name != "liveness":
            setattr(old, name, getattr(shard, name))
    restored = ShardState.restore(pickle.loads(pickle.dumps(old)), SETTINGS)
    assert restored.liveness.index is restored.index
    for step in range(1, 6):
        out = restored.observe(parse_heartbeats(shard_beats([1], step))[0], wall=float(step))
        if out.events:
            break
    assert [(e["agent_id"], e["type"]) for e in out.events] == [("agent-0000", "heartbeat_late")]


def test_per_agent_state_stays_a_few_bytes():
    live = Liveness.from_settings(SETTINGS)
    assert live.bytes_per_agent() == 11
    agents = [f"a{i}" for i in range(10_000)]
    live.observe(agents, ["t1"] * len(agents), [T0] * len(agents), 0, 0.0)
    arrays = sum(getattr(live, name).nbytes for name in live._arrays)
    assert arrays / len(agents) < 11 * 1.3  # spare rows: agentwatch.rows.GROWTH


def _replay(stream: list[tuple[int, float]], cuts: list[int], ticks: list[float]) -> list:
    """Feed ``stream`` (agent, time) cut at ``cuts``, with ticks at ``ticks`` positions
    (a tick at processing time = the last event time read: it never moves a clock)."""
    live = Liveness.from_settings(SETTINGS)
    events = []
    bounds = [0, *sorted(set(cuts)), len(stream)]
    latest = T0
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        part = stream[lo:hi]
        if not part:
            continue
        agents = [f"a{a}" for a, _ in part]
        latest = max(latest, max(t for _, t in part))
        out = live.observe(agents, ["t1"] * len(part), [t for _, t in part], 0, 0.0)
        events += out.events + out.timeouts
        for _ in range(ticks.count(lo)):
            out = live.tick(0.0)
            events += out.events + out.timeouts
    return sorted(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) for e in events)


@given(
    seed=st.integers(0, 10_000),
    cuts=st.lists(st.integers(0, 300), max_size=30),
    ticks=st.lists(st.integers(0, 300), max_size=30),
)
@hypothesis_settings(max_examples=60, deadline=None)
def test_a_replay_gives_the_same_events_whatever_the_batch_cuts_and_ticks(seed, cuts, ticks):
    rng = random.Random(seed)
    stream = []
    silent = {a: (rng.randrange(20), rng.randrange(1, 12)) for a in range(4)}
    # one at least goes offline: silent ≥ 120 s after a first heartbeat (so not from step 0)
    silent[0] = (max(1, silent[0][0]), rng.randrange(4, 12))
    for step in range(60):
        for agent in range(4):
            start, length = silent[agent]
            if not start <= step < start + length:
                stream.append((agent, T0 + 30 * step + rng.random()))
    stream.sort(key=lambda beat: beat[1])  # a partition is read in (about) event-time order
    whole = _replay(stream, [], [])
    assert any(b'"last_heartbeat"' in e and b'"at"' in e for e in whole)  # timeouts
    assert _replay(stream, cuts, ticks) == whole


def test_agents_known_without_a_heartbeat_are_not_judged():
    shard = ShardState.new(SETTINGS)
    assert shard.tick(0.0).events == []
    shard.security.quarantine("agent-0009", "t1", T0, "leaked a key", "ops-1")
    for step in range(10):
        out = shard.observe(parse_heartbeats(shard_beats([1], step))[0], wall=float(step))
        assert out.events == []
    assert shard.tick(1e12).events[0]["agent_id"] == "agent-0001"
