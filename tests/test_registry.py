"""Registration enforced by the shard: who may send heartbeats, in which tenant, and what a
snapshot keeps of it (pure: plain values through ``ShardState``, no Kafka)."""

from __future__ import annotations

import pickle

import orjson
import pytest
from bytewax.testing import TestingSource, cluster_main, run_main

from agentwatch.registry import AUTO, REGISTERED, RETIRED, UNKNOWN
from agentwatch.settings import Settings
from agentwatch.shard import ShardState
from dataflows.heartbeats import build_flow, read_events
from dataflows.kafka_source import RawBatch
from schemas.heartbeats import parse_heartbeats
from tests.sinks import MessagesSink
from tests.test_dataflow import START, batches, heartbeat
from tests.test_shard import T0, beats_at, command, statuses

#: Registration enforced (the default): heartbeats of agents never registered are refused.
STRICT = Settings(
    baseline_warmup_s=0, baseline_warmup_heartbeats=20, security_quarantine_threshold=99
)
AUTO_REGISTER = STRICT.model_copy(update={"agents_auto_register": True})

CARD = {"name": "Agent-{n}", "agent_type": "llm_worker", "owner": "team-ml"}


def registration(agent: int, step: float = 0, tenant: str | None = None, **payload: object):
    """The ``registered`` command of agent ``agent`` (in its heartbeats' tenant by default)."""
    card = {**CARD, "name": f"Agent-{agent}", **payload}
    order = command("registered", agent, step, **card)
    if tenant is not None:
        order = type(order)(order.agent_id, tenant, order.at, order.actor, order.registration)
    return order


UNREGISTERED = (
    "agent agent-0001 is not registered; register it with POST /api/v1/agents/register before "
    "it sends heartbeats (or, for a demo, set AGENTWATCH_AGENTS_AUTO_REGISTER=true to register "
    "agents by their first heartbeat)"
)


def test_the_default_is_to_enforce_registration() -> None:
    assert Settings().agents_auto_register is False


def test_a_registration_makes_the_agent_registered_then_its_heartbeats_make_it_active() -> None:
    shard = ShardState.new(STRICT)
    out = shard.apply(registration(0, step=-1, version="1.2", capabilities=["ml_inference"]))
    (event,) = out.events
    assert statuses(out.events) == [("0", None, "registered", "registered")]
    assert (event["tenant_id"], event["actor"], event["timestamp"]) == (
        "tenant-0",
        "ops-1",
        T0 - 30,
    )
    assert event["payload"]["registration"] == {
        "name": "Agent-0", "agent_type": "llm_worker", "owner": "team-ml", "version": "1.2",
        "capabilities": ["ml_inference"], "max_concurrent_tasks": 1, "resources": {},
        "tags": {}, "endpoint": None,
    }  # fmt: skip
    assert shard.lifecycle.state_of("agent-0000") == "registered"
    out = shard.observe(beats_at(0, [0]))
    assert out.rejected == [] and statuses(out.events) == [
        ("0", "registered", "active", "heartbeat")
    ]
    out = shard.observe(beats_at(1, [0], overrides={0: {"status": "busy"}}))
    assert statuses(out.events) == [("0", "active", "busy", "reported_busy")]
    assert len(shard.baselines) == 1


def test_heartbeats_of_an_agent_never_registered_are_rejected_and_change_nothing() -> None:
    shard = ShardState.new(STRICT)
    shard.apply(registration(0))
    out = shard.observe(beats_at(0, [0, 1, 0]))  # positions 0, 1, 2 of the raw batch
    assert out.rejected == [(1, UNREGISTERED)]
    assert shard.index.row("agent-0001") is None  # not learned, not tracked
    assert {a["agent_id"] for a in out.baselines} == {"agent-0000"}
    only = shard.observe(beats_at(1, [1]))
    assert only.rejected == [(0, UNREGISTERED)] and not only.events and not only.baselines


def test_a_heartbeat_whose_tenant_disagrees_with_the_registration_is_rejected() -> None:
    shard = ShardState.new(STRICT)
    shard.apply(registration(0, tenant="tenant-A"))
    out = shard.observe(beats_at(0, [0]))  # its heartbeats say tenant-0
    assert out.rejected == [
        (0, "agent agent-0000 is registered to tenant tenant-A; this heartbeat says tenant-0")
    ]
    assert shard.lifecycle.state_of("agent-0000") == "registered"
    good = beats_at(0, [0], overrides={0: {"tenant_id": "tenant-A"}})
    out = shard.observe(good)
    assert out.rejected == [] and statuses(out.events) == [
        ("0", "registered", "active", "heartbeat")
    ]


def test_a_second_registration_of_the_same_agent_is_refused_by_the_table() -> None:
    shard = ShardState.new(STRICT)
    shard.apply(registration(0))
    again = shard.apply(registration(0, step=1, tenant="tenant-B"))
    assert again.events == []
    assert [r["reason"] for r in again.refusals] == [
        "agent-0000 is already registered (it is registered)"
    ]
    out = shard.observe(beats_at(2, [0]))  # the first registration's tenant still holds
    assert out.rejected == []


def test_a_registration_with_a_bad_payload_is_rejected_with_the_reason() -> None:
    event = {
        "type": "registered", "agent_id": "agent-0001", "tenant_id": "tenant-1",
        "actor": "ops-1", "timestamp": T0, "payload": {"name": "x", "agent_type": "bot"},
    }  # fmt: skip
    raw = RawBatch("agents.control", 0, [5], [b"agent-0001"], [orjson.dumps(event)])
    checked = read_events("control", raw)
    assert checked.to_agent_shard == []
    assert checked.rejected == [(0, "registered payload: owner: Field required")]


def test_a_decommissioned_agents_heartbeats_are_rejected_also_after_a_restore() -> None:
    shard = ShardState.new(STRICT)
    shard.apply(registration(0))
    shard.observe(beats_at(0, [0]))
    out = shard.apply(command("decommission_requested", 0, 1))
    assert statuses(out.events) == [("0", "active", "decommissioning", "decommission_requested")]
    out = shard.observe(beats_at(2, [0], overrides={0: {"active_tasks": 0}}))
    assert statuses(out.events) == [("0", "decommissioning", "decommissioned", "drained")]
    reason = (
        "agent agent-0000 is decommissioned; its heartbeats are no longer accepted "
        "(register a new agent to bring it back)"
    )
    assert shard.observe(beats_at(3, [0])).rejected == [(0, reason)]
    restored = ShardState.restore(pickle.loads(pickle.dumps(shard)), STRICT)
    assert restored.observe(beats_at(4, [0])).rejected == [(0, reason)]
    assert restored.apply(registration(0, step=5)).refusals[0]["reason"] == (
        "agent-0000 is decommissioned; no transition leaves decommissioned"
    )


def test_a_snapshot_keeps_the_registry() -> None:
    shard = ShardState.new(STRICT)
    shard.apply(registration(0, tenant="tenant-A"))
    shard.apply(registration(2))
    restored = ShardState.restore(pickle.loads(pickle.dumps(shard)), STRICT)
    out = restored.observe(beats_at(0, [0, 1, 2], overrides={0: {"tenant_id": "tenant-A"}}))
    assert [position for position, _ in out.rejected] == [1]
    assert statuses(out.events) == [
        ("0", "registered", "active", "heartbeat"),
        ("2", "registered", "active", "heartbeat"),
    ]
    assert (
        restored.observe(beats_at(1, [0]))
        .rejected[0][1]
        .startswith("agent agent-0000 is registered to tenant tenant-A")
    )


def test_a_replay_of_registrations_and_heartbeats_gives_the_same_events() -> None:
    def play() -> list[dict]:
        shard, events = ShardState.new(STRICT), []
        events += shard.apply(registration(0)).events + shard.apply(registration(1)).events
        for step in range(4):
            events += shard.observe(beats_at(step, [0, 1, 2])).events
            shard = ShardState.restore(pickle.loads(pickle.dumps(shard)), STRICT)
        return events

    first = play()
    assert first == play()
    assert statuses(first) == [
        ("0", None, "registered", "registered"),
        ("1", None, "registered", "registered"),
        ("0", "registered", "active", "heartbeat"),
        ("1", "registered", "active", "heartbeat"),
    ]


def test_a_snapshot_from_before_registration_treats_known_agents_as_registered() -> None:
    shard = ShardState.new(AUTO_REGISTER)
    shard.observe(beats_at(0, [0, 1]))
    old = object.__new__(ShardState)
    for name in ShardState.__slots__:
        if name != "registry":
            setattr(old, name, getattr(shard, name))
    restored = ShardState.restore(pickle.loads(pickle.dumps(old)), STRICT)
    assert [restored.registry.standing_of(f"agent-000{a}") for a in range(3)] == [
        REGISTERED, REGISTERED, UNKNOWN
    ]  # fmt: skip
    out = restored.observe(beats_at(1, [0, 1, 2]))
    assert out.rejected == [(2, UNREGISTERED.replace("agent-0001", "agent-0002"))]
    mismatch = restored.observe(beats_at(2, [1], overrides={1: {"tenant_id": "tenant-9"}}))
    assert mismatch.rejected[0][1].startswith("agent agent-0001 is registered to tenant tenant-1")


def test_with_auto_registration_a_first_heartbeat_makes_an_agent_known_and_active() -> None:
    shard = ShardState.new(AUTO_REGISTER)
    out = shard.observe(beats_at(0, [0, 1]))
    assert out.rejected == [] and statuses(out.events) == []  # (active without a record)
    assert shard.registry.standing_of("agent-0001") == AUTO
    assert shard.lifecycle.state_of("agent-0001") == "active"
    late = shard.apply(registration(1, step=1))
    assert late.refusals[0]["reason"] == "agent-0001 is already registered (it is active)"
    other_tenant = shard.observe(beats_at(1, [1], overrides={1: {"tenant_id": "tenant-9"}}))
    assert other_tenant.rejected == []  # (as before registration: the tenant is not enforced)
    fresh = shard.apply(registration(2, step=1, tenant="tenant-A"))  # registered ones are
    assert statuses(fresh.events) == [("2", None, "registered", "registered")]
    assert (
        shard.observe(beats_at(2, [2]))
        .rejected[0][1]
        .startswith("agent agent-0002 is registered to tenant tenant-A")
    )


def test_turning_auto_registration_off_keeps_the_agents_it_registered() -> None:
    shard = ShardState.new(AUTO_REGISTER)
    shard.observe(beats_at(0, [0]))
    strict = ShardState.restore(pickle.loads(pickle.dumps(shard)), STRICT)
    assert strict.registry.auto_register is False
    out = strict.observe(beats_at(1, [0, 1]))
    assert [position for position, _ in out.rejected] == [1]


def test_the_registry_costs_one_byte_per_agent() -> None:
    shard = ShardState.new(STRICT)
    for agent in range(100):
        shard.apply(registration(agent))
    assert shard.registry.bytes_per_agent() == 1
    assert shard.registry.standing_of("agent-0099") == REGISTERED
    shard.registry.retire("agent-0099")
    assert shard.registry.standing_of("agent-0099") == RETIRED


def test_a_pickled_sub_batch_keeps_only_its_own_raw_messages() -> None:
    values = [orjson.dumps(heartbeat(a, 0)) for a in range(4)]
    raw = RawBatch("agents.metrics", 3, [10, 11, 12, 13], [b"k0", b"k1", b"k2", b"k3"], values)
    batch = parse_heartbeats(values)[0]
    batch.source = raw
    part = batch.take(batch.index[[1, 3]])
    copy = pickle.loads(pickle.dumps(part))
    assert copy.source.offsets == [11, 13] and copy.source.values == [values[1], values[3]]
    assert copy.index.tolist() == [0, 1] and copy.agent_id == part.agent_id


@pytest.mark.parametrize(("auto_register", "workers"), [(False, 1), (False, 2), (True, 1)])
def test_the_dataflow_dead_letters_refused_heartbeats_with_their_bytes_and_offsets(
    auto_register: bool, workers: int
) -> None:
    settings = STRICT.model_copy(update={"shard_count": 4, "agents_auto_register": auto_register})
    values = [orjson.dumps(heartbeat(a, step)) for step in range(3) for a in range(5)]
    out: list = []
    flow = build_flow(settings, TestingSource(batches(values, 4)), MessagesSink(out))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    dead = [orjson.loads(m.value) for m in out if m.topic == settings.topic("deadletter")]
    if auto_register:
        assert dead == []
        return
    assert sorted(d["offset"] for d in dead) == list(range(len(values)))
    first = min(dead, key=lambda d: d["offset"])
    assert first["topic"] == "agents.metrics" and first["partition"] == 0
    assert first["reason"] == UNREGISTERED.replace("agent-0001", "agent-0000")
    import base64

    assert base64.b64decode(first["value_b64"]) == values[0]
    assert not [m for m in out if m.topic == settings.topic("baselines")]
    assert START  # (the heartbeats' times: tests.test_dataflow)


def test_lifecycle_records_pickle_as_columns_and_the_old_layout_still_loads() -> None:
    from agentwatch.shard import Lifecycles

    shard = ShardState.new(STRICT)
    for agent in range(300):
        shard.apply(registration(agent))
    shard.observe(beats_at(0, list(range(300))))
    shard.apply(command("quarantine_requested", 5, 1, reason="leaked a key", until=T0 + 3600))
    book = shard.lifecycle
    data = pickle.dumps(book)
    assert len(data) < 0.8 * len(pickle.dumps(book.records))  # (the agent ids are most of it)
    again = pickle.loads(data)
    assert again.records == book.records and again.unsettled == book.unsettled
    assert again.records["agent-0005"].quarantine_until == T0 + 3600
    old = Lifecycles.__new__(Lifecycles)
    old.__setstate__({"records": book.records})  # (snapshots from before the columns)
    assert old.records == book.records and old.unsettled == book.unsettled


def test_an_agents_fact_is_taken_only_where_its_heartbeat_would_be() -> None:
    """Kafka does not bind a message to the agent it names: a conversation or a task's
    outcome on agents.events for an agent never registered, or in another tenant than its
    registration's, made up that agent there (and could quarantine it) (found by a
    review). Its shard screens it as it screens heartbeats: a dead letter with the reason."""
    import time

    from dataflows.heartbeats import AgentFact, observe_shard

    def fact(agent: str, tenant: str, kind: str = "conversation") -> bytes:
        payload = {"counterpart": "x", "text": "hello"} if kind == "conversation" else {
            "task_id": "k1", "task_type": "default", "duration_s": 1.0}  # fmt: skip
        return orjson.dumps({"type": kind, "agent_id": agent, "tenant_id": tenant,
                             "actor": agent, "timestamp": T0, "payload": payload})  # fmt: skip

    cell, _ = observe_shard(STRICT, time.time, None, registration(0))
    values = [fact("agent-0000", "tenant-0"), fact("agent-0000", "tenant-9"),
              fact("ghost", "tenant-0"), fact("ghost", "tenant-0", "task_failed")]  # fmt: skip
    raw = RawBatch("agents.events", 0, [10, 11, 12, 13], [None] * 4, values)
    checked = read_events("events", raw)
    assert checked.rejected == [] and all(isinstance(f, AgentFact) for f in checked.to_agent_shard)
    dead = []
    for item in checked.to_agent_shard:
        cell, out = observe_shard(STRICT, time.time, cell, item)
        dead += out.dead_letters
    assert [(d["offset"], d["reason"].split(";")[0]) for d in dead] == [
        (11, "agent agent-0000 is registered to tenant tenant-0"),
        (12, "agent ghost is not registered"),
        (13, "agent ghost is not registered"),
    ]
    assert dead[0]["value_b64"] and dead[0]["topic"] == "agents.events"
