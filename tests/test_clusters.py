"""Behaviour clusters (pure: plain records in, events out; no broker, no dataflow)."""

from __future__ import annotations

import pickle
import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from agentwatch.clusters import BehaviourClusters, describe, profile_of
from agentwatch.settings import Settings

START = 1_800_000_000.0

#: Four behaviours: (success_rate, response_time_ms, active_tasks of 10, sla_met_rate,
#: cost component, p_fail).
GROUPS = {
    "fast": (0.99, 80.0, 1, 0.98, 0.5, 0.02),
    "busy": (0.97, 2500.0, 9, 0.90, 0.5, 0.05),
    "flaky": (0.65, 400.0, 4, 0.60, 0.5, 0.40),
    "cheap": (0.90, 500.0, 5, 0.88, 0.95, 0.08),
}


def record(agent: str, at: float, behaviour: tuple, rng: random.Random | None = None, **kw):
    success, ms, active, sla, cost, p_fail = behaviour
    jitter = (lambda v, s: v + rng.gauss(0, s)) if rng is not None else (lambda v, s: v)
    row = {
        "agent_id": agent,
        "tenant_id": f"t{int(agent.rsplit('-', 1)[1]) % 2}",
        "timestamp": at,
        "state": "active",
        "success_rate": min(1.0, max(0.0, jitter(success, 0.02))),
        "response_time_ms": max(1.0, jitter(ms, ms * 0.1)),
        "active_tasks": active,
        "capacity": 10,
        "sla_met_rate": min(1.0, max(0.0, jitter(sla, 0.02))),
        "cost": min(1.0, max(0.0, jitter(cost, 0.03))),
        "p_fail": p_fail,
    }
    row.update(kw)
    return row


def fleet_records(per_group: int = 30, rounds: int = 12, seed: int = 1) -> list[dict]:
    """Every agent's records, ``rounds`` rounds, agents in a shuffled order each round."""
    rng = random.Random(seed)
    agents = [(f"{g}-{i}", g) for g in GROUPS for i in range(per_group)]
    records = []
    for r in range(rounds):
        rng.shuffle(agents)
        for n, (agent, group) in enumerate(agents):
            records.append(record(agent, START + 60 * r + n * 0.01, GROUPS[group], rng))
    return records


def run(model: BehaviourClusters, records: list[dict]) -> list[dict]:
    return [event for r in records for event in model.observe(r)]


def test_separated_behaviour_groups_are_found_and_described():
    model = BehaviourClusters(n_clusters=4)
    events = run(model, fleet_records())
    assert model.ready
    # every group in one cluster of its own
    by_group = {g: Counter() for g in GROUPS}
    for agent, member in model.members.items():
        by_group[agent.rsplit("-", 1)[0]][member.cluster] += 1
    assert all(len(c) == 1 for c in by_group.values()), by_group
    clusters = {g: next(iter(c)) for g, c in by_group.items()}
    assert len(set(clusters.values())) == 4
    # numbered by reliability, described from the centroid
    assert clusters["fast"] == 0 and clusters["flaky"] == 3
    summary = [e for e in events if e["type"] == "cluster_summary"][-1]
    words = {c["cluster"]: c["description"] for c in summary["payload"]["clusters"]}
    assert words[clusters["fast"]] == "fast, reliable, meets deadlines, lightly loaded"
    assert "slow" in words[clusters["busy"]] and "heavily loaded" in words[clusters["busy"]]
    assert (
        "unreliable" in words[clusters["flaky"]]
        and "at risk of failure" in words[clusters["flaky"]]
    )
    assert "cheap" in words[clusters["cheap"]]
    assert summary["agent_id"] == summary["tenant_id"] == "*"
    profile = summary["payload"]["clusters"][clusters["busy"]]["profile"]
    assert 2000 < profile["response_time_ms"] < 3200 and 0.85 < profile["load"] <= 0.95
    # one cluster_changed per agent (its first cluster), keyed by the agent, of its tenant
    changed = [e for e in events if e["type"] == "cluster_changed"]
    assert Counter(e["agent_id"] for e in changed) == Counter({a: 1 for a in model.members})
    first = changed[0]
    assert first["tenant_id"] == f"t{int(first['agent_id'].rsplit('-', 1)[1]) % 2}"
    assert set(first["payload"]) == {"cluster", "distance"}
    assert first["payload"]["cluster"] == model.cluster_of(first["agent_id"])


def test_no_agent_has_a_cluster_before_the_warmup_ends():
    model = BehaviourClusters(n_clusters=4, warmup_records=50)
    records = fleet_records()
    assert run(model, records[:49]) == []
    assert not model.ready and model.cluster_of(records[0]["agent_id"]) is None
    events = model.observe(records[49])
    assert model.ready
    assert sum(e["type"] == "cluster_changed" for e in events) == len(
        {r["agent_id"] for r in records[:50]}
    )


def test_ids_stay_with_their_groups_as_the_centroids_drift():
    model = BehaviourClusters(n_clusters=4)
    run(model, fleet_records())
    before = {a: m.cluster for a, m in model.members.items()}
    centres = model.centroids()
    rng = random.Random(7)
    # every group gets slower and busier, step by step, over 40 more rounds
    agents = sorted(before)
    changed = []
    for r in range(40):
        rng.shuffle(agents)
        drift = (r + 1) / 40
        for agent in agents:
            success, ms, active, sla, cost, p_fail = GROUPS[agent.rsplit("-", 1)[0]]
            behaviour = (success, ms * (1 + drift), min(10, active + round(drift)), sla, cost,
                         p_fail)  # fmt: skip
            changed += model.observe(record(agent, START + 10_000 + 60 * r, behaviour, rng))
    assert [e for e in changed if e["type"] == "cluster_changed"] == []
    assert {a: m.cluster for a, m in model.members.items()} == before
    moved = model.centroids()
    assert all(m["slowness"] > c["slowness"] + 0.05 for m, c in zip(moved, centres, strict=True))


def test_an_agent_near_a_border_keeps_its_cluster_and_a_real_move_is_one_event():
    def border_run(
        margin: float, confirmations: int, gain: float
    ) -> tuple[list[dict], BehaviourClusters]:
        model = BehaviourClusters(
            n_clusters=4,
            switch_margin=margin,
            switch_confirmations=confirmations,
            switch_min_gain=gain,
        )
        run(model, fleet_records())
        fast, cheap = GROUPS["fast"], GROUPS["cheap"]
        centre = model.centroids()
        a, b = model.cluster_of("fast-0"), model.cluster_of("cheap-0")
        events = []
        for step in range(40):
            # half-way between the fast and the cheap centres, a little to one side then
            # the other
            lean = 0.5 + (0.06 if step % 2 else -0.06)
            mixed = {k: centre[a][k] * (1 - lean) + centre[b][k] * lean for k in centre[a]}
            border = (mixed["reliability"], 10 * 1000 ** mixed["slowness"],
                      round(10 * mixed["load"]), mixed["sla"], mixed["cheapness"],
                      mixed["failure_risk"])  # fmt: skip
            events += model.observe(record("fast-0", START + 20_000 + step, border))
        assert fast != cheap
        return [e for e in events if e["type"] == "cluster_changed"], model

    flips, _ = border_run(margin=0.0, confirmations=1, gain=0.0)  # no hysteresis: it flips
    assert len(flips) >= 10
    kept, _ = border_run(margin=0.0, confirmations=2, gain=0.0)  # an alternation never confirms
    assert kept == []
    kept, model = border_run(margin=0.15, confirmations=2, gain=0.05)  # the defaults
    assert kept == []
    # a real move: the agent becomes flaky; one event after two records, then no more
    before = model.cluster_of("fast-0")
    moves = run(model, [record("fast-0", START + 30_000 + s, GROUPS["flaky"]) for s in range(5)])
    moved = [e for e in moves if e["type"] == "cluster_changed"]
    assert len(moved) == 1 and moved[0]["payload"]["cluster"] == model.cluster_of("flaky-0")
    assert model.cluster_of("fast-0") != before
    assert moves.index(moved[0]) == 1  # the second record confirmed the move


def test_a_summary_when_words_change_or_the_interval_passed():
    model = BehaviourClusters(n_clusters=4, summary_interval_s=300)
    records = fleet_records(rounds=20)  # 60 s apart: a summary every 5 rounds
    summaries = [e for e in run(model, records) if e["type"] == "cluster_summary"]
    times = [s["timestamp"] for s in summaries]
    assert 3 <= len(summaries) <= 5
    assert all(b - a >= 300 for a, b in zip(times, times[1:], strict=False))


def test_the_model_survives_pickling_and_goes_on_alike():
    records = fleet_records()
    model = BehaviourClusters(n_clusters=4)
    run(model, records[:300])
    copy = pickle.loads(pickle.dumps(model))
    assert run(copy, records[300:]) == run(model, records[300:])
    assert copy.centroids() == model.centroids()


def test_a_decommissioned_agent_leaves_and_p_fail_can_appear_later():
    model = BehaviourClusters(n_clusters=4)
    run(model, [{**r, "p_fail": None} for r in fleet_records()])
    assert all("failure_risk" not in c for c in model.centroids())
    gone = record("fast-0", START + 9e4, GROUPS["fast"], state="decommissioned")
    assert model.observe(gone) == []  # its state says it is gone: no event
    assert model.cluster_of("fast-0") is None
    run(model, [record("fast-1", START + 9e4 + s, GROUPS["fast"]) for s in range(3)])
    risks = [c["failure_risk"] for c in model.centroids()]
    assert all(0.0 <= r <= 0.05 for r in risks)  # started at the first p_fail, not at random


def test_the_settings_make_the_model():
    settings = Settings(cluster_count=3, cluster_switch_confirmations=4)
    model = BehaviourClusters.from_settings(settings)
    assert model.n_clusters == 3 and model.switch_confirmations == 4


@given(
    success=st.floats(0, 1), ms=st.floats(0, 1e7), active=st.integers(0, 1000),
    capacity=st.integers(0, 100), cost=st.floats(0, 1),
    p_fail=st.none() | st.floats(0, 1),
)  # fmt: skip
def test_a_profile_stays_in_the_unit_box(success, ms, active, capacity, cost, p_fail):
    profile = profile_of(
        {"success_rate": success, "response_time_ms": ms, "active_tasks": active,
         "capacity": capacity, "sla_met_rate": success, "cost": cost, "p_fail": p_fail}
    )  # fmt: skip
    assert all(0.0 <= v <= 1.0 for v in profile.values())
    assert ("failure_risk" in profile) == (p_fail is not None)
    assert describe(profile)


def test_the_directory_folds_moves_and_descriptions_latest_first():
    from agentwatch.directory import AgentSearch, Directory, matching

    directory = Directory()
    model = BehaviourClusters(n_clusters=4)
    for event in run(model, fleet_records()):
        assert directory.apply(event)
    assert {a: v.cluster for a, v in directory.views.items()} == {
        a: m.cluster for a, m in model.members.items()
    }
    assert sorted(directory.clusters) == [0, 1, 2, 3]
    assert directory.clusters[0]["description"].startswith("fast, reliable")
    at = directory.clusters_at
    moved = {"type": "cluster_changed", "agent_id": "fast-0", "tenant_id": "t0",
             "actor": "system", "timestamp": START + 1e5, "payload": {"cluster": 3,
             "distance": 0.1}}  # fmt: skip
    assert directory.apply(moved)
    older = {**moved, "timestamp": START, "payload": {"cluster": 1, "distance": 0.2}}
    assert not directory.apply(older)  # a replayed older move changes nothing
    assert not directory.apply({**moved, "payload": {"cluster": True}})
    view = directory.views["fast-0"]
    assert (view.cluster, view.cluster_distance, view.cluster_since) == (3, 0.1, START + 1e5)
    stale = {"type": "cluster_summary", "agent_id": "*", "tenant_id": "*", "actor": "system",
             "timestamp": at - 1, "payload": {"clusters": []}}  # fmt: skip
    assert not directory.apply(stale) and directory.clusters_at == at
    found = matching(directory.views.values(), AgentSearch(cluster=3, tenant_id="t0"), 100.0,
                     lambda v: None)  # fmt: skip
    assert "fast-0" in {v.agent_id for v in found}
    assert all(v.cluster == 3 and v.tenant_id == "t0" for v in found)


def test_behaviours_the_warmup_did_not_show_get_a_cluster_of_their_own():
    """At a fleet's start every agent looks alike (no task done yet): the centres seeded
    then leave some dead once behaviours diverge; dead centres are placed anew until each
    behaviour has one."""
    rng = random.Random(3)
    agents = [(f"{g}-{i}", g) for g in GROUPS for i in range(30)]
    newcomer = (0.95, 300.0, 0, 0.95, 0.5, None)
    model = BehaviourClusters(n_clusters=4, revival_records=500)
    at = START
    for rounds, diverged in ((2, False), (25, True)):
        for _ in range(rounds):
            rng.shuffle(agents)
            for agent, group in agents:
                at += 1
                model.observe(record(agent, at, GROUPS[group] if diverged else newcomer, rng))
    by_group = {g: {m.cluster for a, m in model.members.items() if a.startswith(g)} for g in GROUPS}
    assert all(len(ids) == 1 for ids in by_group.values()), by_group
    assert len(set.union(*by_group.values())) == 4 and model.revived >= 1


def test_a_fleet_with_fewer_behaviours_than_clusters_is_left_alone():
    model = BehaviourClusters(n_clusters=4, revival_records=200)
    two = {k: v for k, v in list(GROUPS.items())[:2]}
    rng = random.Random(5)
    agents = [(f"{g}-{i}", g) for g in two for i in range(40)]
    changes = []
    for r in range(20):
        rng.shuffle(agents)
        for n, (agent, group) in enumerate(agents):
            events = model.observe(record(agent, START + 60 * r + n, GROUPS[group], rng))
            changes += [e for e in events if e["type"] == "cluster_changed"]
    assert model.revived == 0
    assert len(changes) == len(agents)  # each agent's first cluster, and no move since


def test_a_centre_at_the_edge_of_a_word_does_not_flood_summaries():
    model = BehaviourClusters(n_clusters=4, summary_interval_s=300)
    run(model, fleet_records())
    at = model.summarized_at
    fast = model.cluster_of("fast-0")
    summaries = []
    for step in range(200):  # its centre's reliability crosses 0.95 back and forth
        success = 0.99 if step % 2 else 0.90
        behaviour = (success, *GROUPS["fast"][1:])
        events = model.observe(record("fast-0", at + step, behaviour))
        summaries += [e for e in events if e["type"] == "cluster_summary"]
    assert model.cluster_of("fast-0") == fast
    times = [s["timestamp"] for s in summaries]
    assert len(summaries) <= 200 / 30 + 1
    assert all(b - a >= 30 for a, b in zip([at, *times], times, strict=False))
