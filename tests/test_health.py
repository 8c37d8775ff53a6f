"""Health score, bands with hysteresis, degradation and remediation with backoff (domain),
and their way through a shard: the lifecycle's health triggers, orders on agents.commands,
the agent_unhealthy alert; an operator's restart; quarantine expiry and decommission drain
on a controlled clock."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agentwatch.health import BANDS, HealthConfig, HealthWatch
from agentwatch.lifecycle import State, Trigger
from agentwatch.settings import Settings
from agentwatch.shard import ShardState
from schemas.heartbeats import FLOAT_FIELDS, HeartbeatBatch
from schemas.models import AgentCommand, LifecycleEvent
from tests.test_shard import T0, beats_at, command, statuses

#: Health = 100 − cpu_usage: one metric, linear from 0 to 100.
PLAIN = Settings(health_weights={"cpu_usage": 1.0}, health_thresholds={"cpu_usage": (0.0, 100.0)})


def batch_of(agent: str, points: list[tuple[float, float]]) -> HeartbeatBatch:
    """Heartbeats of one agent at (time, health) under PLAIN."""
    n = len(points)
    metrics = {name: np.zeros(n) for name in FLOAT_FIELDS}
    metrics["cpu_usage"] = np.array([100.0 - h for _, h in points])
    return HeartbeatBatch(
        index=np.arange(n),
        agent_id=[agent] * n,
        tenant_id=["t1"] * n,
        timestamp=np.array([t for t, _ in points], dtype=np.float64),
        metrics=metrics,
        status=[None] * n,
    )


class Table:
    """The lifecycle table's answers to health triggers, for a running agent."""

    def __init__(self, state: State = State.ACTIVE):
        self.state = state
        self.moves: list[tuple[str, float]] = []

    def state_of(self, agent_id: str) -> State:
        return self.state

    def move(self, agent_id: str, tenant_id: str, trigger: Trigger, at: float, why: str) -> State:
        self.moves.append((str(trigger), at))
        if trigger is Trigger.HEALTH_DEGRADED and self.state in (State.ACTIVE, State.BUSY):
            self.state = State.DEGRADED
        elif trigger is Trigger.HEALTH_RECOVERED and self.state is State.DEGRADED:
            self.state = State.ACTIVE
        return self.state


def run(watch: HealthWatch, table: Table, batches: list[list[tuple[float, float]]]) -> dict:
    seen = {"events": [], "commands": [], "transitions": [], "threats": []}
    for points in batches:
        out = watch.walk(watch.score(batch_of("a1", points)), table.state_of, table.move)
        for name in seen:
            seen[name] += getattr(out, name)
    return seen


# --- the score and the bands ------------------------------------------------------------------


@settings(deadline=None)  # (two shared cores: a slow example is not a wrong one)
@given(
    st.fixed_dictionaries(
        {
            "cpu_usage": st.floats(0, 100),
            "memory_usage": st.floats(0, 100),
            "disk_usage": st.floats(0, 100),
            "error_rate": st.floats(0, 1),
            "response_time_avg": st.floats(0, 1e6),
            "network_latency": st.floats(0, 1e6),
        }
    ),
    st.sampled_from(list(FLOAT_FIELDS)[:6]),
    st.floats(0, 1),
)
def test_the_score_stays_in_0_100_and_a_worse_metric_never_raises_it(metrics, worse, by) -> None:
    config = HealthConfig.from_settings(Settings())
    score = config.score_one(metrics)
    assert 0.0 <= score <= 100.0
    top = 1.0 if worse == "error_rate" else 100.0 if worse.endswith("usage") else 1e6
    worsened = {**metrics, worse: min(top, metrics[worse] + by * top)}
    assert config.score_one(worsened) <= score + 1e-9


def test_bands_move_to_worse_at_once_and_back_only_past_the_margin() -> None:
    watch, table = HealthWatch.from_settings(PLAIN), Table()
    # healthy → 79 warning → 82 (within the margin: still warning) → 86 healthy → 30 critical
    seen = run(
        watch,
        table,
        [[(T0, 90.0)], [(T0 + 30, 79.0)], [(T0 + 60, 82.0)], [(T0 + 90, 86.0)], [(T0 + 120, 30.0)]],
    )
    assert [(e["payload"]["previous"], e["payload"]["band"]) for e in seen["events"]] == [
        ("healthy", "warning"),
        ("warning", "healthy"),
        ("healthy", "critical"),
    ]
    assert all(e["type"] == "health_changed" for e in seen["events"])
    assert seen["events"][0]["payload"]["health"] == 79.0
    LifecycleEvent.model_validate(seen["events"][0])
    assert watch.health_of("a1")["band"] == "critical" and BANDS[3] == "critical"


def test_degraded_after_n_low_heartbeats_remediation_escalates_with_backoff_then_an_alert() -> None:
    watch, table = HealthWatch.from_settings(PLAIN), Table()
    low = [[(T0 + 30 * k, 50.0)] for k in range(30)]
    seen = run(watch, table, low)
    assert table.moves == [("health_degraded", T0 + 60)]  # the 3rd heartbeat below 65
    orders = [(c["command"], c["issued_at"] - T0) for c in seen["commands"]]
    # restart at once, clear_cache 60 s later, reduce_load 120 s after that (heartbeat times)
    assert orders == [("restart", 60.0), ("clear_cache", 120.0), ("reduce_load", 240.0)]
    for order in seen["commands"]:
        AgentCommand.model_validate(order)
    # 240 s after the last order, still degraded: the alert, and no more orders
    assert [(t["rule"], t["holds"], t["at"] - T0) for t in seen["transitions"]] == [
        ("agent_unhealthy", True, 480.0)
    ]
    assert seen["threats"][0]["category"] == "PERFORMANCE"
    assert watch.health_of("a1")["remediation_exhausted"]
    # recovery: three heartbeats at or above 80 (79 does not count), the alert resolves
    back = [[(T0 + 900 + 30 * k, h)] for k, h in enumerate([85.0, 79.0, 85.0, 90.0, 95.0])]
    seen = run(watch, table, back)
    assert table.moves[-1] == ("health_recovered", T0 + 900 + 120)
    assert table.state is State.ACTIVE and seen["commands"] == []
    assert [(t["holds"], t["at"] - T0) for t in seen["transitions"]] == [(False, 1020.0)]
    assert watch.health_of("a1")["remediation_attempts"] == 0


def test_no_remediation_for_an_agent_the_table_does_not_make_degraded() -> None:
    for state in (State.MAINTENANCE, State.QUARANTINED, State.COMPROMISED, State.DECOMMISSIONING):
        watch, table = HealthWatch.from_settings(PLAIN), Table(state)
        seen = run(watch, table, [[(T0 + 30 * k, 20.0)] for k in range(20)])
        assert seen["commands"] == [] and seen["transitions"] == [], state
        assert table.moves == [("health_degraded", T0 + 60)]  # (the table keeps it where it is)


def test_an_unhealthy_agent_back_from_maintenance_is_degraded_again_and_remediated() -> None:
    watch, table = HealthWatch.from_settings(PLAIN), Table(State.MAINTENANCE)
    run(watch, table, [[(T0 + 30 * k, 20.0)] for k in range(4)])
    table.state = State.ACTIVE  # (the operator ended the maintenance)
    seen = run(watch, table, [[(T0 + 150, 20.0)]])
    assert table.state is State.DEGRADED and table.moves[-1] == ("health_degraded", T0 + 150)
    assert [c["command"] for c in seen["commands"]] == ["restart"]


# --- properties of remediation -----------------------------------------------------------------

gaps = st.lists(
    st.tuples(st.floats(1, 400), st.sampled_from([10.0, 50.0, 70.0, 85.0, 100.0])),
    min_size=1,
    max_size=80,
)


@settings(max_examples=60, deadline=None)
@given(gaps, st.integers(1, 4), st.floats(1, 3), st.data())
def test_remediation_never_exceeds_the_cap_waits_its_backoff_and_replays_the_same(
    points, cap, factor, data
) -> None:
    tuned = PLAIN.model_copy(
        update={"health_remediation_max_attempts": cap, "health_remediation_backoff_factor": factor}
    )
    config = HealthConfig.from_settings(tuned)
    waits = [config.backoff_s(k) for k in range(cap + 2)]
    assert waits == sorted(waits), "backoff never shrinks"
    times = np.cumsum([g for g, _ in points]) + T0
    beats = [(float(t), h) for t, (_, h) in zip(times, points, strict=True)]

    def once(cuts: list[int]) -> tuple[dict, Table]:
        watch, table = HealthWatch(config), Table()
        bounds = [0, *sorted(cuts), len(beats)]
        pieces = [beats[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
        return run(watch, table, pieces), table

    straight, table = once([])
    cut, _ = once(data.draw(st.lists(st.integers(0, len(beats)), max_size=5)))
    assert [c["command_id"] for c in cut["commands"]] == [
        c["command_id"] for c in straight["commands"]
    ]
    assert cut["events"] == straight["events"]
    ids = [c["command_id"] for c in straight["commands"]]
    assert len(set(ids)) == len(ids)
    # per degradation (between the table's health moves): ≤ cap orders, each after its wait
    episodes: list[list[dict]] = []
    edges = [at for _, at in table.moves]
    for order in straight["commands"]:
        start = max(at for at in edges if at <= order["issued_at"])
        if not episodes or episodes[-1][0]["_start"] != start:
            episodes.append([{"_start": start}])
        episodes[-1].append(order)
    for episode in episodes:
        orders = episode[1:]
        assert len(orders) <= cap
        assert [o["command"] for o in orders] == [config.action(k) for k in range(len(orders))]
        for k in range(1, len(orders)):
            assert orders[k]["issued_at"] - orders[k - 1]["issued_at"] >= waits[k - 1] - 1e-6


# --- through a shard ---------------------------------------------------------------------------

SHARD = Settings(
    baseline_warmup_s=0,
    baseline_warmup_heartbeats=20,
    security_auto_quarantine=False,
    agents_auto_register=True,
)
SICK = {"error_rate": 0.5, "cpu_usage": 99.0}  # health 54: the degraded band


def test_a_degraded_agent_gets_orders_then_recovers_through_the_table() -> None:
    shard = ShardState.new(SHARD)
    events, orders, alerts = [], [], []
    for step in range(40):
        sick = 3 <= step < 25
        out = shard.observe(beats_at(step, overrides={1: SICK} if sick else {}))
        events += out.events
        orders += out.commands
        alerts += [a for a in out.alerts if a["rule"] == "agent_unhealthy"]
    assert statuses(events) == [
        ("1", "active", "degraded", "health_degraded"),
        ("1", "degraded", "active", "health_recovered"),
    ]
    assert [(o["agent_id"], o["command"]) for o in orders] == [
        ("agent-0001", "restart"),
        ("agent-0001", "clear_cache"),
        ("agent-0001", "reduce_load"),
    ]
    assert [(o["issued_at"] - T0) / 30 for o in orders] == [5.0, 7.0, 11.0]
    assert [e["payload"]["band"] for e in events if e["type"] == "health_changed"] == [
        "degraded",
        "healthy",
    ]
    assert [a["state"] for a in alerts] == ["firing", "resolved"]  # (gave up at step 19)
    assert shard.lifecycle.state_of("agent-0001") == "active"


def test_no_remediation_in_maintenance_and_remediation_once_it_ends() -> None:
    shard = ShardState.new(SHARD)
    shard.observe(beats_at(0))
    shard.apply(command("maintenance_requested", 1, 1, reason="upgrade"))
    orders = []
    for step in range(2, 10):
        orders += shard.observe(beats_at(step, overrides={1: SICK})).commands
    assert orders == [] and shard.lifecycle.state_of("agent-0001") == "maintenance"
    shard.apply(command("maintenance_ended", 1, 10))
    out = shard.observe(beats_at(11, overrides={1: SICK}))
    assert statuses(out.events) == [("1", "active", "degraded", "health_degraded")]
    assert [o["command"] for o in out.commands] == ["restart"]


def test_an_operators_restart_becomes_an_order_with_the_operator_as_actor() -> None:
    shard = ShardState.new(SHARD)
    shard.observe(beats_at(0))
    order = command("restart_requested", 2, 1, reason="stuck on a lock")
    out = shard.apply(order)
    (restart,) = out.commands
    assert (restart["command"], restart["actor"], restart["reason"]) == (
        "restart",
        "ops-1",
        "stuck on a lock",
    )
    AgentCommand.model_validate(restart)
    assert shard.apply(order).commands[0]["command_id"] == restart["command_id"]  # replay
    shard.apply(command("decommission_requested", 2, 2))
    shard.observe(beats_at(3, [2], overrides={2: {"active_tasks": 0}}))
    refused = shard.apply(command("restart_requested", 2, 4))
    assert refused.commands == [] and refused.refusals[0]["trigger"] == "restart_requested"


def test_a_quarantine_with_an_expiry_ends_on_the_clock_tick_without_a_heartbeat() -> None:
    shard = ShardState.new(SHARD)
    wall = 1000.0
    shard.observe(beats_at(0), wall=wall)
    until = T0 + 200
    out = shard.apply(command("quarantine_requested", 1, 1, reason="leak", until=until))
    assert statuses(out.events) == [("1", "active", "quarantined", "quarantined")]
    assert out.events[0]["payload"]["quarantine_until"] == until
    # event clock at T0: not yet (the tick reports the failure model's new label, only)
    assert statuses(shard.tick(wall + 5).events) == []
    # the fleet goes quiet: the clock moves on with processing time; the others go offline
    # at T0 + 120, agent 1 stays quarantined until its expiry, then (still silent) offline
    changed = []
    for k in range(1, 40):
        changed += [e for e in shard.tick(wall + 10 * k).events if e["type"] == "status_changed"]
    mine = [
        (e["payload"]["trigger"], e["payload"]["to"], e["timestamp"] - T0)
        for e in changed
        if e["agent_id"] == "agent-0001"
    ]
    assert mine == [
        ("quarantine_expired", "active", 200.0),
        ("heartbeat_timeout", "offline", 200.0),
    ]
    assert shard.lifecycle.next_expiry == float("inf")
    assert not shard.security.breakdown("agent-0001")["quarantined"]
    # its next heartbeat brings it back
    back = shard.observe(beats_at(10, [1]), wall=wall + 400)
    assert statuses(back.events) == [("1", "offline", "active", "heartbeat")]


def test_a_quarantine_expiry_is_stamped_at_its_time_when_heartbeats_pass_it() -> None:
    shard = ShardState.new(SHARD)
    shard.observe(beats_at(0))
    shard.apply(command("quarantine_requested", 1, 1, reason="leak", until=T0 + 100))
    events = []
    for step in range(2, 6):
        events += shard.observe(beats_at(step)).events
    changed = [e for e in events if e["type"] == "status_changed"]
    assert [(e["payload"]["trigger"], e["timestamp"]) for e in changed] == [
        ("quarantine_expired", T0 + 100)
    ]


def test_a_decommissioning_agent_that_goes_silent_is_decommissioned_on_the_clock() -> None:
    shard = ShardState.new(SHARD)
    wall = 1000.0
    shard.observe(beats_at(0), wall=wall)
    out = shard.apply(command("decommission_requested", 0, 1))
    assert statuses(out.events) == [("0", "active", "decommissioning", "decommission_requested")]
    shard.observe(beats_at(1, [0], overrides={0: {"active_tasks": 3}}), wall=wall + 1)
    assert shard.lifecycle.state_of("agent-0000") == "decommissioning"  # tasks left
    ended = []
    for k in range(1, 30):  # silent: the ladder's timeout ends the drain
        ended += statuses(shard.tick(wall + 10 * k).events)
    assert ("0", "decommissioning", "decommissioned", "heartbeat_timeout") in ended


def test_a_restart_request_on_the_control_topic_is_read_as_an_order() -> None:
    from dataflows.heartbeats import read_events
    from dataflows.kafka_source import RawBatch

    bad = {
        "type": "restart_requested",
        "agent_id": "a1",
        "tenant_id": "t1",
        "actor": "ops",
        "timestamp": T0,
        "payload": {"reason": 7},
    }
    raw = RawBatch("agents.control", 0, [0], [None], [orjson.dumps(bad)])
    checked = read_events("control", raw)
    assert checked.rejected == [(0, "restart_requested payload: reason must be a string")]


def test_snapshots_keep_expiries_and_one_from_before_health_starts_it_empty() -> None:
    import pickle

    shard = ShardState.new(SHARD)
    shard.observe(beats_at(0, overrides={1: SICK}))
    shard.apply(command("quarantine_requested", 2, 1, reason="leak", until=T0 + 100))
    copy = pickle.loads(pickle.dumps(shard))
    assert copy.lifecycle.next_expiry == T0 + 100
    assert copy.health.health_of("agent-0001")["band"] == "degraded"
    old = object.__new__(ShardState)
    for name in ShardState.__slots__:
        if name != "health":
            setattr(old, name, getattr(copy, name))
    restored = ShardState.restore(old, SHARD)
    assert restored.health.index is restored.index and restored.health.health_of("agent-0001")
    out = restored.observe(beats_at(5))
    assert ("2", "quarantined", "active", "quarantine_expired") in statuses(out.events)


def _health_replay(cut: int) -> list[bytes]:
    """Agents 0 and 1 fall ill and recover while claiming busy or idle, agent 2 falls ill in
    maintenance; the heartbeats fed ``cut`` steps per batch."""
    from tests.test_shard import _concat

    shard = ShardState.new(SHARD)
    steps: list = []
    for step in range(45):
        claim = {"status": "busy" if step % 4 < 2 else "idle"}
        overrides = {0: dict(claim), 1: dict(claim), 2: {}}
        if 3 <= step < 30:
            overrides[1].update(SICK)
        if 6 <= step < 9 or 14 <= step < 20:
            overrides[0].update(SICK)
        if step >= 8:
            overrides[2].update(SICK)
        steps.append(beats_at(step, [0, 1, 2], overrides))
        if step == 7:
            steps.append(command("maintenance_requested", 2, step, reason="patch"))
        if step == 20:
            steps.append(command("maintenance_ended", 2, step))
    found: list[dict] = []
    pending: list[HeartbeatBatch] = []

    def flush() -> None:
        if pending:
            batch = pending[0]
            for more in pending[1:]:
                batch = _concat(batch, more)
            out = shard.observe(batch)
            found.extend(out.events + out.commands + out.alerts)
            pending.clear()

    for item in steps:
        if isinstance(item, HeartbeatBatch):
            pending.append(item)
            if len(pending) >= cut:
                flush()
        else:
            flush()
            found.extend(shard.apply(item).events)
    flush()
    return [orjson.dumps(e, option=orjson.OPT_SORT_KEYS) for e in found]


def test_a_replay_gives_the_same_health_events_orders_and_alerts_whatever_the_batch_cuts() -> None:
    whole = _health_replay(1)
    records = [orjson.loads(r) for r in whole]
    triggers = {r["payload"].get("trigger") for r in records if r.get("type") == "status_changed"}
    assert {"health_degraded", "health_recovered", "reported_busy"} <= triggers
    assert {r["command"] for r in records if "command" in r} == {
        "restart",
        "clear_cache",
        "reduce_load",
    }
    assert any(r.get("rule") == "agent_unhealthy" for r in records)
    for cut in (2, 3, 7, 100):
        assert sorted(_health_replay(cut)) == sorted(whole), cut


def test_the_dataflow_gives_the_same_health_events_and_orders_at_one_and_two_workers() -> None:
    from tests.test_dataflow import heartbeat, run

    hot = {"cpu_usage": 99.0, "memory_usage": 99.0}  # health 62: below 65, 4 minutes long
    values = [
        orjson.dumps(heartbeat(agent, step, **(hot if agent == 1 and 10 <= step < 18 else {})))
        for step in range(30)
        for agent in range(4)
    ]
    one, two = (run(values, workers=w, batch_size=7) for w in (1, 2))
    assert one == two
    orders = [(r["agent_id"], r["command"]) for t, r in one if t == "agents.commands"]
    assert sorted(orders) == [("agent-0001", "clear_cache"), ("agent-0001", "restart")]
    state = [r for t, r in one if t == "agents.state" and r["agent_id"] == "agent-0001"]
    assert sorted((r["type"], r["payload"].get("band") or r["payload"]["to"]) for r in state) == [
        ("health_changed", "degraded"),
        ("health_changed", "healthy"),
        ("status_changed", "active"),
        ("status_changed", "degraded"),
    ]


def test_an_agent_released_or_out_of_maintenance_while_silent_is_offline_again() -> None:
    shard = ShardState.new(SHARD)
    wall = 1000.0
    shard.observe(beats_at(0), wall=wall)
    shard.apply(command("quarantine_requested", 1, 1, reason="leak"))
    shard.apply(command("maintenance_requested", 2, 1, reason="patch"))
    for k in range(1, 30):  # all silent past the grace: 0 offline, 1 and 2 held
        shard.tick(wall + 10 * k)
    assert [shard.lifecycle.state_of(f"agent-000{a}") for a in range(3)] == [
        "offline",
        "quarantined",
        "maintenance",
    ]
    released = shard.apply(command("released", 1, 10))
    ended = shard.apply(command("maintenance_ended", 2, 10))
    assert statuses(released.events + ended.events) == [
        ("1", "quarantined", "active", "released"),
        ("1", "active", "offline", "heartbeat_timeout"),
        ("2", "maintenance", "active", "maintenance_ended"),
        ("2", "active", "offline", "heartbeat_timeout"),
    ]


@pytest.mark.parametrize(
    ("actions", "message"),
    [([], "at least 1 item"), ([""], "at least 1 character"),
     (["restart", "reboot everything"], "should match pattern"), (["Restart"], "should match")],
)  # fmt: skip
def test_remediation_actions_are_command_names(actions: list, message: str) -> None:
    """An empty or free-text order would reach agents.commands as a command no runtime
    knows; the settings refuse it, naming the rule."""
    with pytest.raises(ValidationError, match=message):
        Settings(health_remediation_actions=actions)
    assert Settings(health_remediation_actions=["drain", "restart_v2"])
