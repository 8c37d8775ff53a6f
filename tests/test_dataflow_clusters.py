"""The dataflow's behaviour-cluster steps (``dataflows.heartbeats.behaviour_clusters``), fed
the shards' steps' outputs (their assignment-score records), with Bytewax's testing source and
sink, at one worker and two, and resumed from a recovery snapshot."""

from __future__ import annotations

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSource, cluster_main, run_main

from agentwatch.settings import Settings
from agentwatch.shard import ShardOutput
from dataflows.heartbeats import behaviour_clusters, shard_of
from schemas.models import AssignmentScore
from tests.sinks import MessagesSink
from tests.test_clusters import GROUPS, fleet_records

SETTINGS = Settings(cluster_count=4, cluster_warmup_records=100, cluster_summary_interval_s=120)


def score_record(record: dict) -> dict:
    """An assignment score as a shard makes it (checked against the model)."""
    return AssignmentScore.model_validate(
        {
            **record,
            "score": 0.5, "performance": 0.5, "availability": 0.5, "sla": record["sla_met_rate"],
            "weights": SETTINGS.scoring_weights(), "tasks_completed": 3, "tasks_failed": 1,
            "cause": "heartbeat",
        }
    ).model_dump(mode="json")  # fmt: skip


def outputs(records: list[dict]) -> list[tuple[str, ShardOutput]]:
    """The scores as the shards' steps output them, one record per step, among steps
    that output other things only (which the cluster steps skip)."""
    out = []
    for n, record in enumerate(records):
        shard = str(shard_of(record["agent_id"], 4))
        out.append((shard, ShardOutput(assignment_scores=[score_record(record)])))
        if n % 7 == 0:
            other = {"agent_id": record["agent_id"], "tenant_id": record["tenant_id"]}
            out.append((shard, ShardOutput(threats=[other])))
    return out


def flow(items: list[tuple[str, ShardOutput]], out: list) -> Dataflow:
    flow = Dataflow("clusters_test")
    observed = op.input("observed", flow, TestingSource(items))
    op.output("publish", behaviour_clusters(SETTINGS, observed), MessagesSink(out))
    return flow


def published(out: list) -> list[dict]:
    assert {m.topic for m in out} <= {SETTINGS.topic("state")}
    events = [orjson.loads(m.value) for m in out]
    assert [m.key.decode() for m in out] == [e["agent_id"] for e in events]
    return events


@pytest.mark.parametrize("workers", [1, 2])
def test_the_fleets_scores_become_cluster_events_on_agents_state(workers: int):
    out: list = []
    items = outputs(fleet_records(per_group=15, rounds=6))
    if workers == 1:
        run_main(flow(items, out))
    else:
        cluster_main(flow(items, out), [], 0, worker_count_per_proc=workers)
    events = published(out)
    changed = [e for e in events if e["type"] == "cluster_changed"]
    cluster = {e["agent_id"]: e["payload"]["cluster"] for e in changed}
    assert len(changed) == len(cluster) == 4 * 15  # each agent once: hysteresis holds
    groups = {g: {c for a, c in cluster.items() if a.startswith(f"{g}-")} for g in GROUPS}
    assert all(len(ids) == 1 for ids in groups.values()) and len(set.union(*groups.values())) == 4
    assert all(e["payload"]["distance"] >= 0 and e["actor"] == "system" for e in changed)
    summaries = [e for e in events if e["type"] == "cluster_summary"]
    assert summaries and all(s["agent_id"] == "*" for s in summaries)
    assert len(summaries[-1]["payload"]["clusters"]) == 4


def test_one_and_two_workers_give_the_same_events():
    items = outputs(fleet_records(per_group=10, rounds=5))
    one: list = []
    two: list = []
    run_main(flow(items, one))
    cluster_main(flow(items, two), [], 0, worker_count_per_proc=2)
    assert published(one) == published(two)


def test_the_model_survives_recovery(tmp_path):
    """A flow stopped after the warm-up resumes with the model it had: the agents it had
    grouped are not announced again, and later records keep their clusters."""
    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))
    records = fleet_records(per_group=10, rounds=8)
    first = outputs(records[: 4 * 10 * 4])
    before: list = []
    run_main(flow(first, before), recovery_config=recovery)
    grouped = {
        e["agent_id"]: e["payload"]["cluster"]
        for e in published(before)
        if e["type"] == "cluster_changed"
    }
    assert len(grouped) == 40
    after: list = []
    run_main(flow(first + outputs(records[4 * 10 * 4 :]), after), recovery_config=recovery)
    resumed = published(after)
    assert [e for e in resumed if e["type"] == "cluster_changed"] == []  # nobody moved
    assert resumed, "the resumed model still publishes (its summaries)"
    assert all(len(e["payload"]["clusters"]) == 4 for e in resumed)


def sharded_flow(records: list[dict], out: list) -> Dataflow:
    """The scores published by keyed shard steps (as in the real flow: at two workers the
    shards' outputs reach the fleet's one model in an order that varies run to run)."""
    flow = Dataflow("clusters_sharded_test")
    keyed = op.key_on(
        "shard",
        op.input("scores", flow, TestingSource(records, batch_size=50)),
        lambda r: str(shard_of(r["agent_id"], 8)),
    )
    shards = op.stateful_map(
        "shards", keyed, lambda state, r: (state, ShardOutput(assignment_scores=[score_record(r)]))
    )
    op.output("publish", behaviour_clusters(SETTINGS, shards), MessagesSink(out))
    return flow


def test_with_shards_on_two_workers_every_agent_ends_in_the_same_cluster():
    """The fleet's model is online, so the order in which the shards' scores reach it
    moves its centres a little differently (distances and summaries may differ between
    runs at two workers); the clusters every agent ends in, ids included, do not."""
    records = fleet_records(per_group=15, rounds=6)

    def final(workers: int) -> dict[str, int]:
        out: list = []
        if workers == 1:
            run_main(sharded_flow(records, out))
        else:
            cluster_main(sharded_flow(records, out), [], 0, worker_count_per_proc=workers)
        last = {}
        for event in published(out):
            if event["type"] == "cluster_changed":
                last[event["agent_id"]] = event["payload"]["cluster"]
        return last

    one = final(1)
    assert len(one) == 60 and len(set(one.values())) == 4
    assert final(2) == one
    assert final(2) == one
