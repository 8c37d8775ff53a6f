"""The real ``build_flow`` with Bytewax's testing source and sink, at 1 and 2 workers."""

from __future__ import annotations

import random

import orjson
import pytest
from bytewax.testing import TestingSource, cluster_main, run_main

from agentwatch.settings import Settings
from dataflows.heartbeats import build_flow
from dataflows.kafka_source import RawBatch
from schemas.heartbeats import parse_heartbeats
from schemas.metric_rows import decode as decode_rows
from tests.sinks import MessagesSink

START = 1_800_000_000.0


def heartbeat(agent: int, step: int, **overrides: object) -> dict:
    rng = random.Random(agent * 100_003 + step)
    beat = {
        "agent_id": f"agent-{agent:04d}",
        "tenant_id": f"tenant-{agent % 3}",
        "timestamp": START + 30 * step,
        "cpu_usage": 30 + 5 * rng.random(),
        "memory_usage": 50 + 2 * rng.random(),
        "disk_usage": 40.0,
        "network_latency": 10 + rng.random(),
        "active_tasks": 2,
        "completed_tasks": step,
        "failed_tasks": 0,
        "error_rate": 0.01,
        "response_time_avg": 200 + 10 * rng.random(),
        "uptime_seconds": 30.0 * step,
        "bytes_out": 10_000 + rng.randrange(1000),
    }
    beat.update(overrides)
    return beat


def stream(
    agents: int,
    steps: int,
    spike: tuple[int, int] | None = None,
    saturated: tuple[int, range | set[int]] | None = None,
) -> list[bytes]:
    """Heartbeats of ``agents`` agents over ``steps`` ticks, with a CPU spike, a CPU
    saturation (agent, steps) and junk."""
    values = []
    for step in range(steps):
        for agent in range(agents):
            hot = spike == (agent, step) or (
                saturated is not None and saturated[0] == agent and step in saturated[1]
            )
            extra = {"cpu_usage": 99.0} if hot else {}
            values.append(orjson.dumps(heartbeat(agent, step, **extra)))
        values.append(b"{not json")
        values.append(orjson.dumps(heartbeat(0, step, cpu_usage=140.0)))
    return values


def batches(values: list[bytes], size: int) -> list[RawBatch]:
    return [
        RawBatch("agents.metrics", 0, list(range(i, i + len(chunk))), [None] * len(chunk), chunk)
        for i in range(0, len(values), size)
        for chunk in [values[i : i + size]]
    ]


def run(
    values: list[bytes], workers: int, batch_size: int = 97, **overrides: object
) -> list[tuple[str, dict]]:
    settings = Settings(
        agents_auto_register=True,
        baseline_warmup_s=0,
        baseline_warmup_heartbeats=20,
        shard_count=8,
        **overrides,
    )
    out: list = []
    flow = build_flow(
        settings, TestingSource(batches(values, batch_size)), MessagesSink(out, keep_rows=True)
    )
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    records = []
    for message in out:
        if message.topic == "agents.metric_rows":  # Arrow batches: one record per row
            for row in decode_rows(message.value).to_pylist():
                row["timestamp"] = row["timestamp"].timestamp()
                records.append((message.topic, row))
            continue
        record = orjson.loads(message.value)
        record.pop("received_at", None)
        records.append((message.topic, record))
    return sorted(records, key=lambda r: orjson.dumps(r, option=orjson.OPT_SORT_KEYS))


def test_spike_is_reported_with_its_reason():
    records = run(stream(agents=5, steps=40, spike=(3, 30)), workers=1)
    anomalies = [r for topic, r in records if topic == "agents.anomalies" and r["is_anomaly"]]
    assert [(a["agent_id"], a["timestamp"]) for a in anomalies] == [("agent-0003", START + 900)]
    assert anomalies[0]["reasons"][0]["feature"] == "cpu_usage"
    assert anomalies[0]["reasons"][0]["value"] == 99.0


def test_bad_messages_become_dead_letters_with_reasons():
    records = run(stream(agents=5, steps=40), workers=1)
    dead = [r for topic, r in records if topic == "agents.deadletter"]
    assert len(dead) == 80
    reasons = {r["reason"].split(":")[0] for r in dead}
    assert reasons == {"invalid JSON", "cpu_usage"}
    assert all(r["value_bytes"] > 0 and r["offset"] >= 0 for r in dead)


def test_the_heartbeats_taken_go_to_the_loader_as_rows_once_each():
    """Decode once: every valid heartbeat the shards took is on agents.metric_rows, in the
    metrics table's layout, once; the junk is not (it is a dead letter)."""
    records = run(stream(agents=5, steps=40, spike=(3, 30)), workers=1)
    rows = [r for topic, r in records if topic == "agents.metric_rows"]
    assert len(rows) == 200
    assert len({(r["agent_id"], r["timestamp"]) for r in rows}) == 200
    spiked = [r for r in rows if r["cpu_usage"] == 99.0]
    assert [(r["agent_id"], r["timestamp"]) for r in spiked] == [("agent-0003", START + 900)]
    assert spiked[0]["tenant_id"] == "tenant-0" and spiked[0]["completed_tasks"] == 30


def test_compressed_rows_are_the_rows():
    """``metric_rows_compression``: the same rows on agents.metric_rows, compressed."""
    values = stream(agents=5, steps=40, spike=(3, 30))
    assert run(values, workers=1, metric_rows_compression="zstd") == run(values, workers=1)


def test_baselines_are_published_per_agent():
    records = run(stream(agents=5, steps=40), workers=1)
    baselines = [r for topic, r in records if topic == "agents.baselines"]
    assert {b["agent_id"] for b in baselines} == {f"agent-{a:04d}" for a in range(5)}
    warm = [b for b in baselines if b["warmed_up"]]
    assert warm and 30 < warm[0]["mean"]["cpu_usage"] < 35


def test_sustained_saturation_raises_one_resource_abuse_threat_after_ten_minutes():
    records = run(stream(agents=5, steps=70, saturated=(4, range(30, 60))), workers=1)
    threats = [r for topic, r in records if topic == "agents.threats"]
    abuse = [t for t in threats if t["rule"] == "resource_abuse"]
    assert [(t["agent_id"], t["first_seen"], t["last_seen"]) for t in abuse] == [
        ("agent-0004", START + 900, START + 1500)  # held from step 30, fired 600 s later
    ]
    assert abuse[0]["severity"] == "HIGH" and abuse[0]["evidence"]["values"]["cpu_usage"] == 99.0
    assert {t["agent_id"] for t in threats} == {"agent-0004"}


@pytest.mark.parametrize("batch_size", [1, 97, 5000])
def test_one_and_two_workers_give_the_same_result(batch_size: int):
    values = stream(agents=12, steps=45, spike=(7, 33), saturated=(3, range(21, 44)))
    one, two = (run(values, workers=w, batch_size=batch_size) for w in (1, 2))
    assert one == two
    # ...and that result is not the empty one: each kind of output is there, as expected
    for records in (one, two):
        by_topic = {topic: [r for t, r in records if t == topic] for topic, _ in records}
        assert len(by_topic["agents.deadletter"]) == 90  # two bad messages per step
        assert {b["agent_id"] for b in by_topic["agents.baselines"]} == {
            f"agent-{a:04d}" for a in range(12)
        }
        fired = {a["agent_id"] for a in by_topic["agents.anomalies"] if a["is_anomaly"]}
        assert fired == {"agent-0003", "agent-0007"}  # the saturation and the spike
        assert ("agent-0003", "resource_abuse") in {
            (t["agent_id"], t["rule"]) for t in by_topic["agents.threats"]
        }
        assert by_topic["agents.alerts"] and by_topic["agents.security"]


def event_batch(events: list[bytes], topic: str = "agents.events") -> list[RawBatch]:
    keys = [b"*"] * len(events)
    return [RawBatch(topic, 0, list(range(len(events))), keys, events, "cluster-a")]


def control_batch(commands: list[bytes]) -> list[RawBatch]:
    """Operators' commands as read from agents.control."""
    return event_batch(commands, "agents.control")


def test_rule_changes_on_the_control_topic_reach_every_shard():
    from schemas.events import rule_change_event

    hot = {
        "name": "cpu_hot",
        "condition": {"metric": "cpu_usage", "aggregate": "last", "op": ">", "value": 90},
        "for_s": 0,
        "category": "PERFORMANCE",
        "severity": "WARNING",
    }
    events = [
        orjson.dumps(rule_change_event({"action": "add", "rule": hot}, "ops", START)),
        orjson.dumps(
            rule_change_event({"action": "disable", "name": "resource_abuse"}, "ops", START)
        ),
        b'{"type": "rule_changed"}',  # not an event: dead letter
        orjson.dumps(
            rule_change_event({"action": "delete", "name": "abnormal_patterns"}, "o", START)
        ),
    ]
    settings = Settings(
        agents_auto_register=True, baseline_warmup_s=0, baseline_warmup_heartbeats=20, shard_count=8
    )
    out: list = []
    values = stream(agents=12, steps=70, saturated=(4, range(40, 60)))
    flow = build_flow(
        settings,
        TestingSource(batches(values, 500)),
        MessagesSink(out),
        control=TestingSource(control_batch(events)),
    )
    run_main(flow)
    records = [(m.topic, orjson.loads(m.value)) for m in out]
    threats = [r for topic, r in records if topic == "agents.threats"]
    assert [(t["rule"], t["agent_id"], t["first_seen"]) for t in threats] == [
        ("cpu_hot", "agent-0004", START + 1200)
    ]
    dead = [
        r for topic, r in records if topic == "agents.deadletter" and r["topic"] == "agents.control"
    ]
    assert len(dead) == 1 and dead[0]["reason"].startswith("agent_id")
    assert (dead[0]["offset"], dead[0]["cluster_id"]) == (2, "cluster-a")


def test_repeated_incidents_cost_security_points_until_the_agent_is_quarantined():
    episodes = set(range(30, 55)) | set(range(70, 95)) | set(range(110, 135)) | set(range(150, 175))
    records = run(stream(agents=4, steps=180, saturated=(2, episodes)), workers=1)
    commands = [r for topic, r in records if topic == "agents.commands"]
    events = [r for topic, r in records if topic == "agents.state"]
    scores = [r for topic, r in records if topic == "agents.security"]
    assert [(c["agent_id"], c["command"]) for c in commands] == [("agent-0002", "quarantine")]
    assert [(e["type"], e["payload"]["to"]) for e in events] == [("status_changed", "quarantined")]
    assert "resource_abuse" in commands[0]["reason"]
    assert min(s["score"] for s in scores) < 20 <= max(s["score"] for s in scores)
    alerts = [
        r for topic, r in records if topic == "agents.alerts" and r["rule"] == "resource_abuse"
    ]
    firing = sorted((a for a in alerts if a["state"] == "firing"), key=lambda a: a["fired_at"])
    # episodes 30 min apart at most: the third firing is marked flapping, the fourth damped
    assert [a["flapping"] for a in firing] == [False, False, True]


def test_silences_mark_alerts_and_commands_reach_their_shards():
    silence = {
        "id": "quiet-2", "agent_id": "agent-0002", "starts_at": START, "ends_at": START + 86400,
        "created_by": "ops", "comment": "maintenance",
    }  # fmt: skip
    event = {"agent_id": "*", "tenant_id": "*", "actor": "ops", "timestamp": START}
    events = [
        orjson.dumps({**event, "type": "silence_created", "payload": silence}),
        orjson.dumps({**event, "type": "released", "agent_id": "agent-0003",
                      "tenant_id": "tenant-0", "timestamp": START + 10, "payload": {}}),
        orjson.dumps({**event, "type": "silence_created", "payload": {"id": "x"}}),  # bad
    ]  # fmt: skip
    settings = Settings(
        agents_auto_register=True, baseline_warmup_s=0, baseline_warmup_heartbeats=20, shard_count=8
    )
    out: list = []
    values = stream(agents=4, steps=70, saturated=(2, range(30, 60)))
    flow = build_flow(
        settings, TestingSource(batches(values, 50)), MessagesSink(out),
        control=TestingSource(control_batch(events)),
    )  # fmt: skip
    run_main(flow)
    records = [(m.topic, orjson.loads(m.value)) for m in out]
    firing = [r for t, r in records if t == "agents.alerts" and r["state"] == "firing"]
    assert firing and all(a["silenced"] for a in firing if a["agent_id"] == "agent-0002")
    dead = [r for t, r in records if t == "agents.deadletter" and r["topic"] == "agents.control"]
    assert len(dead) == 1 and dead[0]["reason"].startswith("silence_created payload")

    from dataflows.heartbeats import read_events, shard_of, to_shards
    from dataflows.routing import spread_keys

    keys = spread_keys(8)
    routed = to_shards(keys, read_events("control", control_batch(events)[0]))
    assert [key for key, command in routed if type(command).__name__ == "Release"] == [
        keys[shard_of("agent-0003", 8)]
    ]
    assert sorted(key for key, command in routed if type(command).__name__ == "Silence") == sorted(
        keys
    )


def test_an_operators_quarantine_request_quarantines_the_agent_once():
    request = {
        "type": "quarantine_requested", "agent_id": "agent-0001", "tenant_id": "tenant-1",
        "actor": "ops-7", "timestamp": START + 600, "payload": {"reason": "leaked a key"},
    }  # fmt: skip
    events = [
        orjson.dumps(request),
        orjson.dumps({**request, "timestamp": START + 900}),  # again: already quarantined
        orjson.dumps({**request, "agent_id": "agent-0002", "payload": {}}),  # no reason
    ]
    settings = Settings(
        agents_auto_register=True, baseline_warmup_s=0, baseline_warmup_heartbeats=20, shard_count=8
    )
    out: list = []
    flow = build_flow(
        settings, TestingSource(batches(stream(agents=4, steps=40), 50)), MessagesSink(out),
        control=TestingSource(control_batch(events)),
    )  # fmt: skip
    run_main(flow)
    records = [(m.topic, orjson.loads(m.value)) for m in out]
    commands = [r for t, r in records if t == "agents.commands"]
    assert [(c["agent_id"], c["command"], c["reason"], c["actor"]) for c in commands] == [
        ("agent-0001", "quarantine", "leaked a key", "ops-7")
    ]
    changed = [r for t, r in records if t == "agents.state"]
    assert [(e["agent_id"], e["payload"]["to"], e["actor"]) for e in changed] == [
        ("agent-0001", "quarantined", "ops-7")
    ]
    assert not [r for t, r in records if t == "agents.events"], "derived events go to state"
    dead = [r for t, r in records if t == "agents.deadletter" and r["topic"] == "agents.control"]
    assert [d["reason"] for d in dead] == [
        "quarantine_requested payload: reason must be a non-empty string"
    ]


@pytest.mark.parametrize("workers", [1, 2])
def test_commands_on_the_agents_topic_are_dead_lettered_and_change_nothing(workers: int):
    from schemas.events import refusal, rule_change_event

    def event(kind: str, agent: str = "*", tenant: str = "*", **payload: object) -> dict:
        return {
            "type": kind,
            "agent_id": agent,
            "tenant_id": tenant,
            "actor": agent,
            "timestamp": START + 1000,
            "payload": payload,
        }

    # an agent writing agents.events: it tries to undo its quarantine, the rules, ...
    forged = [
        event("released", "agent-0001", "tenant-1"),
        rule_change_event({"action": "disable", "name": "resource_abuse"}, "agent-0001", START),
        event("quarantine_requested", "agent-0003", "tenant-0", reason="framed"),
        event("silence_created", id="s1", starts_at=START, ends_at=START + 86400),
        event("status_changed", "agent-0001", "tenant-1", to="active", **{"from": "quarantined"}),
        event("teleported", "agent-0001", "tenant-1"),
    ]
    facts = [
        event("conversation", "agent-0002", "tenant-2", counterpart="agent-0001", text="hi"),
        event("task_completed", "agent-0002", "tenant-2", task_id="t-1"),
    ]
    quarantine = event("quarantine_requested", "agent-0001", "tenant-1", reason="leaked a key")
    settings = Settings(
        agents_auto_register=True,
        baseline_warmup_s=0,
        baseline_warmup_heartbeats=20,
        shard_count=8,
        conversation_learn_counterparts=False,
    )
    out: list = []
    heartbeats = stream(agents=4, steps=70, saturated=(2, range(30, 60)))
    flow = build_flow(
        settings,
        TestingSource(batches(heartbeats, 50)),
        MessagesSink(out),
        events=TestingSource(event_batch([orjson.dumps(e) for e in forged + facts])),
        control=TestingSource(control_batch([orjson.dumps(e) for e in (quarantine, facts[0])])),
    )
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    records = [(m.topic, orjson.loads(m.value)) for m in out]

    dead = sorted(
        ((r["topic"], r["offset"]), r["reason"])
        for t, r in records
        if t == "agents.deadletter" and r["topic"] != "agents.metrics"
    )
    assert dead == [
        (("agents.control", 1), refusal("control", "conversation")),
        *((("agents.events", i), refusal("events", e["type"])) for i, e in enumerate(forged)),
    ]
    assert dead[1][1] == (
        "'released' is an operator's command; it is accepted only on agents.control, "
        "which only the API writes"
    )
    assert dead[5][1] == (
        "'status_changed' is a fact the dataflow derives; it is accepted only on "
        "agents.state, which only the dataflow writes"
    )
    # the rule was not disabled, nor the alert silenced; only the operator's quarantine
    threats = [(t["rule"], t["agent_id"]) for topic, t in records if topic == "agents.threats"]
    assert ("resource_abuse", "agent-0002") in threats
    firing = [r for t, r in records if t == "agents.alerts" and r["state"] == "firing"]
    assert firing and not any(a["silenced"] for a in firing)
    commands = [(c["agent_id"], c["command"]) for t, c in records if t == "agents.commands"]
    assert commands == [("agent-0001", "quarantine")]
    state = [(e["agent_id"], e["payload"]["to"]) for t, e in records if t == "agents.state"]
    assert state == [("agent-0001", "quarantined")]
    causes = {s["cause"] for t, s in records if t == "agents.security"}
    assert "release" not in causes


def test_a_recovery_directory_made_before_the_control_input_resumes_with_it(tmp_path):
    """State snapshotted by a flow that read only agents.metrics and agents.events (as
    before agents.control existed) is resumed by the flow that also reads control: the
    baselines stay warm and the heartbeats already read are not read again."""
    from bytewax.recovery import RecoveryConfig, init_db_dir

    settings = Settings(
        agents_auto_register=True, baseline_warmup_s=0, baseline_warmup_heartbeats=20,
        shard_count=8, baseline_publish_interval_s=300,  # (baselines tell what was read)
    )  # fmt: skip
    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))
    warm = batches(stream(agents=3, steps=30), 50)
    before: list = []
    run_main(
        build_flow(settings, TestingSource(warm), MessagesSink(before),
                   events=TestingSource(event_batch([]))),
        recovery_config=recovery,
    )  # fmt: skip
    spike = stream(agents=3, steps=31, spike=(1, 30))[-5:-2]
    after: list = []
    run_main(
        build_flow(settings, TestingSource(warm + batches(spike, 50)), MessagesSink(after),
                   events=TestingSource(event_batch([])),
                   control=TestingSource(control_batch([]))),
        recovery_config=recovery,
    )  # fmt: skip
    found = [orjson.loads(m.value) for m in after if m.topic == "agents.anomalies"]
    assert [(a["agent_id"], a["timestamp"]) for a in found if a["is_anomaly"]] == [
        ("agent-0001", START + 900)
    ]
    baselines = [orjson.loads(m.value) for m in after if m.topic == "agents.baselines"]
    assert min(b["timestamp"] for b in baselines) >= START + 900, "nothing read twice"


def test_the_recovery_directory_keeps_the_shard_count_its_state_was_made_with(tmp_path, caplog):
    from dataflows.heartbeats import (
        LAYOUT_FILE,
        LEGACY_SHARD_COUNT,
        shard_keys,
        with_recorded_layout,
    )

    fresh = Settings(var_dir=tmp_path / "new", shard_count=4)
    assert with_recorded_layout(fresh).shard_count == 4
    later = Settings(var_dir=tmp_path / "new", shard_count=8)
    assert with_recorded_layout(later).shard_count == 4  # the state's layout wins
    assert "shard_count_kept recorded=4 setting=8" in caplog.text

    assert with_recorded_layout(later).shard_key_names == "spread"

    legacy = Settings(var_dir=tmp_path / "old", shard_count=4)
    legacy.recovery_path.mkdir(parents=True)
    (legacy.recovery_path / "part-0.sqlite3").write_bytes(b"")  # state from before the record
    kept = with_recorded_layout(legacy)
    assert (kept.shard_count, kept.shard_key_names) == (LEGACY_SHARD_COUNT, "plain")
    assert shard_keys(kept) == tuple(str(shard) for shard in range(16))
    recorded = orjson.loads((legacy.recovery_path / LAYOUT_FILE).read_bytes())
    assert recorded == {"shard_count": 16, "shard_key_names": "plain"}

    # a record from before key names were recorded is of plain keys
    (legacy.recovery_path / LAYOUT_FILE).write_text('{"shard_count": 16}\n')
    assert with_recorded_layout(legacy).shard_key_names == "plain"


@pytest.mark.parametrize("workers", [1, 2])
def test_an_agent_that_goes_silent_while_others_beat_goes_offline_by_event_time(workers):
    """No tick, no processing time: the others' heartbeats move the clock."""
    values = [
        orjson.dumps(heartbeat(agent, step))
        for step in range(30)
        for agent in range(4)
        if not (agent == 2 and 5 <= step < 15)  # agent 2 silent for 300 s
    ]
    records = run(values, workers=workers, batch_size=7)
    events = sorted(
        (r["timestamp"] - START, r["type"], r["payload"].get("to"))
        for topic, r in records
        if topic == "agents.state" and r["agent_id"] == "agent-0002"
    )
    assert events == [
        (180.0, "heartbeat_late", None),  # last beat at step 4 (120 s) + 60 s
        (240.0, "status_changed", "offline"),
        (450.0, "status_changed", "active"),  # back at step 15
    ]
    alerts = sorted(
        (r["updated_at"] - START, r["agent_id"], r["rule"], r["state"])
        for topic, r in records
        if topic == "agents.alerts"
    )
    assert alerts == [
        (240.0, "agent-0002", "agent_offline", "firing"),
        (750.0, "agent-0002", "agent_offline", "resolved"),  # the return + alert_resolve_after_s
    ]
    assert {r["agent_id"] for topic, r in records if topic == "agents.state"} == {"agent-0002"}


@pytest.mark.parametrize("workers", [1, 2])
def test_the_simulators_silence_incident_goes_offline_within_the_grace_and_active_after(workers):
    """The fleet simulator's heartbeats (each agent at its own offset in the interval, so
    a batch is not in time order across agents) with a silence of 300 s: its agent,
    and only it, goes late, offline at its last heartbeat + the grace, active again."""
    from agentwatch.simulator import FleetSimulator, Incident

    silence = Incident("silence", "agent-000007", 1800.0, 300.0, 1.0)
    fleet = FleetSimulator(40, seed=3, start=START, incidents=[silence])
    values = []
    for batch in fleet.batches(until_s=3600.0):
        values += batch.serialize()[1]
    parsed = parse_heartbeats(values)[0]
    pairs = zip(parsed.agent_id, parsed.timestamp.tolist(), strict=True)
    times = sorted(t for agent, t in pairs if agent == silence.agent_id)
    last = max(t for t in times if t < START + 1800)
    back = min(t for t in times if t >= START + 2100)
    records = run(values, workers=workers, batch_size=997)
    events = sorted(
        (r["timestamp"], r["agent_id"], r["type"], r["payload"].get("to"))
        for topic, r in records
        if topic == "agents.state"
    )
    grace = Settings().heartbeat_interval_s * Settings().heartbeat_offline_missed
    assert events == [
        (last + 60, "agent-000007", "heartbeat_late", None),
        (last + grace, "agent-000007", "status_changed", "offline"),
        (back, "agent-000007", "status_changed", "active"),
    ]


@pytest.mark.parametrize("batch_size", [7, 97])
def test_every_status_change_comes_from_the_lifecycle_table_the_same_at_one_and_two_workers(
    batch_size: int,
):
    """Score quarantine, timeouts and claimed statuses, all through the table: a quarantined
    agent that goes silent stays quarantined (no offline, no active on its return)."""
    episodes = set(range(30, 55)) | set(range(70, 95)) | set(range(110, 135)) | set(range(150, 175))
    values = []
    for step in range(200):
        for agent in range(4):
            if (agent == 1 and 100 <= step < 110) or (agent == 2 and 180 <= step < 190):
                continue  # agent 1, then (quarantined) agent 2, silent for 300 s
            extra: dict = {}
            if agent == 2 and step in episodes:
                extra["cpu_usage"] = 99.0
            if agent == 3:
                extra["status"] = "busy" if step % 50 < 25 else "idle"
            values.append(orjson.dumps(heartbeat(agent, step, **extra)))
    one, two = (run(values, workers=w, batch_size=batch_size) for w in (1, 2))
    assert one == two

    def changes(agent: str) -> list[tuple]:
        return [
            (e["payload"]["from"], e["payload"]["to"], e["payload"]["trigger"])
            for t, e in sorted(one, key=lambda r: r[1].get("timestamp", 0))
            if t == "agents.state" and e["type"] == "status_changed" and e["agent_id"] == agent
        ]

    assert changes("agent-0000") == []
    assert changes("agent-0001") == [
        ("active", "offline", "heartbeat_timeout"),
        ("offline", "active", "heartbeat"),
    ]
    assert changes("agent-0002") == [("active", "quarantined", "quarantined")]
    assert changes("agent-0003") == [("active", "busy", "reported_busy")] + [
        ("busy", "idle", "reported_idle"),
        ("idle", "busy", "reported_busy"),
    ] * 3 + [("busy", "idle", "reported_idle")]


def test_a_refused_operator_command_is_logged_with_its_reason(caplog):
    from agentwatch.shard import Release
    from dataflows.heartbeats import observe_shard

    settings = Settings(
        agents_auto_register=True, baseline_warmup_s=0, baseline_warmup_heartbeats=20
    )
    state, _ = observe_shard(settings, lambda: 0.0, None, parse_heartbeats(stream(2, 1))[0])
    state, out = observe_shard(
        settings, lambda: 0.0, state, Release("agent-0001", START + 60, "tenant-1", "ops-7")
    )
    assert out.events == [] and len(out.refusals) == 1
    assert (
        "lifecycle_refused agent=agent-0001 tenant=tenant-1 trigger=released actor=ops-7 "
        "reason=agent-0001 is active; released is accepted only when it is quarantined or "
        "compromised"
    ) in caplog.text


def test_out_of_range_numbers_in_commands_are_dead_letters_and_the_dataflow_goes_on():
    """Found by a fuzzer: an agent's task outcome with a duration of 1.8e308 s overflowed
    the duration model (math.expm1) in its shard's step, and a quarantine order until -1e22
    overflowed formatting its time; either stopped the dataflow, and again at the replay
    after each restart. Now both are dead letters with a reason, and what follows them
    is applied."""

    def event(kind: str, **payload: object) -> bytes:
        agent = {"agent_id": "agent-0000", "tenant_id": "tenant-0", "actor": "agent-0000"}
        return orjson.dumps({"type": kind, **agent, "timestamp": START + 100, "payload": payload})

    events = [
        event("task_completed", task_id="t-x", duration_s=1.7976931348623157e308),
        event("task_completed", task_id="t-y", duration_s=5.0),
    ]
    control = [
        event("quarantine_requested", reason="x", until=-1e22),
        event("quarantine_requested", reason="x", until=1e22),
        event("quarantine_requested", reason="held", until=START + 5000),
    ]
    out: list = []
    flow = build_flow(
        Settings(agents_auto_register=True, shard_count=2),
        TestingSource(batches(stream(agents=2, steps=3), 50)),
        MessagesSink(out),
        events=TestingSource(event_batch(events)),
        control=TestingSource(control_batch(control)),
    )
    run_main(flow)
    records = [(m.topic, orjson.loads(m.value)) for m in out]
    dead = {
        (r["topic"], r["offset"]): r["reason"]
        for t, r in records
        if t == "agents.deadletter" and r["topic"] != "agents.metrics"  # (not the stream's junk)
    }
    assert set(dead) == {("agents.events", 0), ("agents.control", 0), ("agents.control", 1)}
    assert "duration_s" in dead[("agents.events", 0)]
    assert all("until must be epoch seconds" in dead[("agents.control", i)] for i in (0, 1))
    held = [r for t, r in records if t == "agents.state" and r["type"] == "status_changed"]
    assert [r["payload"]["to"] for r in held] == ["quarantined"]


def test_a_command_the_shard_cannot_apply_is_skipped_and_counted_not_fatal(monkeypatch):
    """The safety net under the checks: a command whose step raises (a bug the checks let
    through) is logged, counted and skipped; the shard goes on with the next item."""
    from agentwatch.commands import Release
    from agentwatch.shard import ShardState
    from dataflows.heartbeats import observe_shard
    from dataflows.metrics import METRICS

    settings = Settings(agents_auto_register=True, baseline_warmup_s=0)
    cell, _ = observe_shard(settings, lambda: 0.0, None, parse_heartbeats(stream(3, 5))[0])

    def broken(self, item):
        raise OverflowError("math range error")

    monkeypatch.setattr(ShardState, "apply", broken)
    before = METRICS.failed_commands.labels("Release")._value.get()
    cell, out = observe_shard(settings, lambda: 0.0, cell, Release("agent-0001", START))
    assert METRICS.failed_commands.labels("Release")._value.get() == before + 1
    assert not out.anomalies and not out.accepted
    monkeypatch.undo()
    cell, out = observe_shard(settings, lambda: 0.0, cell, parse_heartbeats(stream(3, 6)[-5:])[0])
    assert len(out.accepted) == 3


def test_a_shard_is_snapshotted_by_pickling_it_once_and_resumes_from_either_layout():
    """Bytewax snapshots a stateful_map's state with copy.deepcopy: the shard's cell pickles
    its state instead (timed and sized into the process's metrics), the engine stores the
    bytes, and a restored cell goes on from them; a snapshot of the release before the cell
    (the ShardState itself) is taken as it is."""
    import copy
    import pickle

    from agentwatch.shard import ShardState
    from dataflows.heartbeats import ShardCell, observe_shard
    from dataflows.metrics import METRICS

    settings = Settings(agents_auto_register=True, baseline_warmup_s=0)
    first = parse_heartbeats(stream(3, 5))[0]
    cell, _ = observe_shard(settings, lambda: 0.0, None, first)
    assert isinstance(cell, ShardCell) and isinstance(cell.state, ShardState)
    snapshots = METRICS.snapshot_seconds._count.get()
    stored = pickle.dumps(copy.deepcopy(cell))  # what the engine does at an epoch's end
    assert METRICS.snapshot_seconds._count.get() == snapshots + 1
    assert METRICS._state_bytes[id(cell)] > 3 * 100

    later = parse_heartbeats(stream(3, 6)[-5:])[0]  # the last step of each agent, and junk
    resumed, out = observe_shard(settings, lambda: 0.0, pickle.loads(stored), later)
    straight, expected = observe_shard(settings, lambda: 0.0, cell, later)
    assert len(out.accepted) == 3
    assert (out.anomalies, out.baselines, out.threats) == (
        expected.anomalies,
        expected.baselines,
        expected.threats,
    )
    assert resumed.state is not straight.state

    old_release = pickle.loads(pickle.dumps(ShardState.new(settings)))
    carried, _ = observe_shard(settings, lambda: 0.0, old_release, first)
    assert isinstance(carried, ShardCell) and carried.state is old_release


def test_the_sources_fetch_wait_is_the_setting():
    """AGENTWATCH_SOURCE_FETCH_WAIT_MS reaches librdkafka's fetch.wait.max.ms of every
    partition's consumer (its default, 100 ms, measured against 25 in docs/benchmarks.md)."""
    from dataflows.kafka_source import KafkaBatchSource

    source = KafkaBatchSource("127.0.0.1:9", "agents.metrics", "g", fetch_wait_ms=250)
    assert source._config["fetch.wait.max.ms"] == 250
    assert source._config["fetch.min.bytes"] == 1024 * 1024
    assert Settings().source_fetch_wait_ms == 100
