"""A shard's state as a whole: one agent index for every part, and snapshots of earlier
versions carried over."""

from __future__ import annotations

import pickle

import numpy as np

from agentwatch.settings import Settings
from agentwatch.shard import ShardState
from agentwatch.simulator import FleetSimulator, Incident
from schemas.heartbeats import HeartbeatBatch, parse_heartbeats

START = 1_795_000_000.0
SETTINGS = Settings(baseline_warmup_s=0, baseline_warmup_heartbeats=20)


def batches(minutes: float) -> list[HeartbeatBatch]:
    """A 40-agent fleet's heartbeats, one CPU spike on agent-07 in the second half."""
    spike = Incident("cpu_spike", "agent-000007", minutes * 30, 600.0, 1.0)
    fleet = FleetSimulator(agents=40, seed=3, start=START, incidents=[spike])
    out = []
    for batch in fleet.batches(until_s=minutes * 60):
        parsed, rejected = parse_heartbeats(batch.serialize()[1])
        assert not rejected
        out.append(parsed)
    return out


def as_old_layout(state: ShardState) -> object:
    """What unpickling a snapshot from before the index was shared gives: every part
    with an index of its own (``row_of``, ``agent_ids``, ``tenant_names``, ``tenant``),
    and a ``ShardState`` without ``index``."""
    state = pickle.loads(pickle.dumps(state))
    index = state.index
    for part in (state.baselines, state.rules, state.trends, state.security):
        vars(part).update(
            row_of=dict(index.row_of),
            agent_ids=list(index.agent_ids),
            tenant_names=list(index.tenant_names),
            _tenant_index={t: i for i, t in enumerate(index.tenant_names)},
            tenant=index.tenant.copy(),
        )
        del part.index
    for part in (state.baselines, state.rules):
        del part._arrays  # these two declared their arrays by hand
    for part in (state.trends, state.security):
        part._arrays = {"tenant": (np.dtype(np.int32), 0, ()), **part._arrays}
    old = object.__new__(ShardState)
    for name in ("baselines", "rules", "trends", "security", "alerts"):
        setattr(old, name, getattr(state, name))
    return old


def outputs(shard: ShardState, rest: list[HeartbeatBatch]) -> list:
    seen = []
    for batch in rest:
        out = shard.observe(batch)
        seen.append((out.anomalies, out.threats, out.alerts, out.scores, out.commands))
    return seen


def test_every_part_of_a_shard_shares_one_index_and_a_snapshot_names_each_agent_once() -> None:
    shard = ShardState.new(SETTINGS)
    for batch in batches(20):
        shard.observe(batch)
    parts = (shard.baselines, shard.rules, shard.trends, shard.security)
    assert all(part.index is shard.index for part in parts)
    assert len(shard.index) == 40 and all(part.capacity >= 40 for part in parts)
    assert pickle.dumps(shard).count(b"agent-000031") == 1


def test_a_snapshot_from_before_the_shared_index_goes_on_as_if_never_stopped() -> None:
    stream = batches(60)
    half = len(stream) // 2
    straight = ShardState.new(SETTINGS)
    for batch in stream[:half]:
        straight.observe(batch)
    old = pickle.loads(pickle.dumps(as_old_layout(straight)))

    restored = ShardState.restore(old, SETTINGS)

    assert restored is not old and len(restored.index) == 40
    assert all(
        part.index is restored.index
        for part in (restored.baselines, restored.rules, restored.trends, restored.security)
    )
    assert not hasattr(restored.security, "row_of")
    rest = outputs(restored, stream[half:])
    assert rest == outputs(straight, stream[half:])
    assert any(anomalies for anomalies, *_ in rest)  # the spike is in the part compared


def test_a_part_whose_agents_were_in_another_order_starts_empty_rather_than_mixing_agents() -> None:
    shard = ShardState.new(SETTINGS)
    for batch in batches(10):
        shard.observe(batch)
    old = as_old_layout(shard)
    old.trends.agent_ids.reverse()

    restored = ShardState.restore(old, SETTINGS)

    assert restored.baselines.count[:40].min() > 0  # baselines kept
    assert restored.trends.count[:40].max() == 0  # trends started over
    assert restored.trends.index is restored.index


def test_restore_keeps_a_current_state_and_starts_an_absent_one() -> None:
    shard = ShardState.new(SETTINGS)
    assert ShardState.restore(shard, SETTINGS) is shard
    assert len(ShardState.restore(None, SETTINGS).index) == 0


def test_a_snapshot_restored_under_changed_settings_keeps_its_state_and_takes_the_new_tunables():
    shard = ShardState.new(SETTINGS)
    for batch in batches(30):
        shard.observe(batch)
    shard.security.apply_threats(
        [{"agent_id": "agent-000003", "tenant_id": "tenant-000", "rule": "x",
          "severity": "HIGH", "last_seen": START + 1800}]
    )  # fmt: skip
    changed = SETTINGS.model_copy(
        update={"security_quarantine_threshold": 90.0, "alert_flap_threshold": 7,
                "trend_limits": {"memory_usage": 95.0}}
    )  # fmt: skip

    restored = ShardState.restore(pickle.loads(pickle.dumps(shard)), changed)

    assert restored.security.config.quarantine_threshold == 90.0
    assert restored.alerts.flap_threshold == 7
    assert restored.trends.config.metrics == ("memory_usage",)
    assert restored.trends.swy.shape[1] == 1 and restored.trends.count.max() == 0
    assert restored.security.score_of("agent-000003") == shard.security.score_of("agent-000003")
    assert restored.baselines.count[:40].tolist() == shard.baselines.count[:40].tolist()
    again = ShardState.restore(restored, changed)
    assert again is restored and again.security.config is restored.security.config
