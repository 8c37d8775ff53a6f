"""Behaviour clusters: how well River's online k-means finds separated groups of agents,
as it comes and as :mod:`agentwatch.clusters` seeds it, and what the model costs.

    .venv/bin/python bench/clusters.py                 # ~1 min on 2 busy cores
    .venv/bin/python bench/clusters.py --agents 100000 # the state size of a large fleet

1. ``quality``: four synthetic behaviours (fast and reliable; slow and busy; flaky;
   cheap), ``--per-group`` agents each, ``--rounds`` assignment-score records per agent
   in a shuffled order, each record jittered; once from the start, once after two rounds
   in which every agent looks alike (a fleet's start: no task done yet, so the warm-up
   shows none of the behaviours). Each way of clustering reads the same
   records; the table gives, over ``--seeds`` seeds, the adjusted Rand index of the
   agents' final clusters against their behaviours (1: the groups found exactly, 0: no
   better than chance), how many clusters hold an agent, and how often an agent's
   cluster changed per record after its first (without hysteresis for River as it
   comes; with it for the model).
2. ``cost``: µs per record of :meth:`BehaviourClusters.observe` after the warm-up, and
   the pickled size of the model (the dataflow step's state) with ``--agents`` agents.
"""

from __future__ import annotations

import argparse
import pickle
import random
import time
from collections import Counter
from collections.abc import Callable
from math import comb

from river import cluster

from agentwatch.clusters import BehaviourClusters, profile_of

GROUPS = {
    "fast": (0.99, 80.0, 1, 0.98, 0.5, 0.02),
    "busy": (0.97, 2500.0, 9, 0.90, 0.5, 0.05),
    "flaky": (0.65, 400.0, 4, 0.60, 0.5, 0.40),
    "cheap": (0.90, 500.0, 5, 0.88, 0.95, 0.08),
}


#: How every agent looks before it has done a task (the start of a fleet).
NEWCOMER = (0.95, 300.0, 0, 0.95, 0.5, None)


def records(
    per_group: int, rounds: int, seed: int, alike_rounds: int = 0
) -> list[tuple[str, dict]]:
    """``alike_rounds`` rounds of every agent as a newcomer, then ``rounds`` rounds of
    each behaving as its group does."""
    rng = random.Random(seed)
    agents = [(f"{g}-{i}", g) for g in GROUPS for i in range(per_group)]
    out = []
    for r in range(alike_rounds + rounds):
        rng.shuffle(agents)
        for n, (agent, group) in enumerate(agents):
            behaviour = NEWCOMER if r < alike_rounds else GROUPS[group]
            success, ms, active, sla, cost, p_fail = behaviour
            out.append(
                (
                    group,
                    {
                        "agent_id": agent, "tenant_id": "t1", "timestamp": 1.8e9 + 60 * r + n,
                        "state": "active",
                        "success_rate": min(1.0, max(0.0, rng.gauss(success, 0.02))),
                        "response_time_ms": max(1.0, rng.gauss(ms, ms * 0.1)),
                        "active_tasks": active, "capacity": 10,
                        "sla_met_rate": min(1.0, max(0.0, rng.gauss(sla, 0.02))),
                        "cost": min(1.0, max(0.0, rng.gauss(cost, 0.03))), "p_fail": p_fail,
                    },
                )
            )  # fmt: skip
    return out


def adjusted_rand(truth: list[str], found: list[int]) -> float:
    pairs = sum(comb(n, 2) for n in Counter(zip(truth, found, strict=True)).values())
    rows = sum(comb(n, 2) for n in Counter(truth).values())
    cols = sum(comb(n, 2) for n in Counter(found).values())
    expected = rows * cols / comb(len(truth), 2)
    best = (rows + cols) / 2
    return 1.0 if best == expected else (pairs - expected) / (best - expected)


def river_as_is(**params: float) -> Callable[[int], Callable[[dict], int]]:
    def make(seed: int) -> Callable[[dict], int]:
        model = cluster.KMeans(n_clusters=4, seed=seed, **params)

        def step(record: dict) -> int:
            x = profile_of(record)
            model.learn_one(x)
            return model.predict_one(x)

        return step

    return make


def seeded(**params: float) -> Callable[[int], Callable[[dict], int | None]]:
    def make(seed: int) -> Callable[[dict], int | None]:
        model = BehaviourClusters(n_clusters=4, seed=seed, **params)

        def step(record: dict) -> int | None:
            model.observe(record)
            return model.cluster_of(record["agent_id"])

        return step

    return make


def quality(args: argparse.Namespace) -> list[dict]:
    ways = {
        "River KMeans as it comes (halflife 0.5, centres ~ N(0, 1))": river_as_is(),
        "River KMeans, centres ~ N(0.5, 0.25), halflife 0.05": river_as_is(
            halflife=0.05, mu=0.5, sigma=0.25
        ),
        "seeded by k-means++ on a warm-up, hysteresis, no revival": seeded(revival_records=10**9),
        "agentwatch (seeded, hysteresis, dead centres revived)": seeded(),
    }
    rows = []
    for (name, make), alike in ((w, a) for a in (0, 2) for w in ways.items()):
        scores, used, flips, later = [], [], 0, 0
        for seed in range(args.seeds):
            step = make(seed)
            last: dict[str, int | None] = {}
            truth: dict[str, str] = {}
            for group, record in records(args.per_group, args.rounds, seed, alike):
                agent = record["agent_id"]
                found = step(record)
                if last.get(agent) is not None:
                    later += 1
                    flips += found != last[agent]
                last[agent], truth[agent] = found, group
            agents = sorted(last)
            scores.append(adjusted_rand([truth[a] for a in agents], [last[a] for a in agents]))
            used.append(len({last[a] for a in agents}))
        rows.append(
            {
                "agents alike at first": f"{alike} rounds",
                "way": name,
                "ARI mean": round(sum(scores) / len(scores), 2),
                "ARI min": round(min(scores), 2),
                "clusters holding agents": " ".join(map(str, used)),
                "changes per record": round(flips / max(later, 1), 4),
            }
        )
    return rows


def cost(args: argparse.Namespace) -> list[dict]:
    model = BehaviourClusters(n_clusters=4)
    stream = [r for _, r in records(args.agents // 4, 2, 0)]
    half = len(stream) // 2
    for record in stream[:half]:
        model.observe(record)
    started = time.perf_counter()
    for record in stream[half:]:
        model.observe(record)
    per_record = (time.perf_counter() - started) / (len(stream) - half) * 1e6
    return [
        {
            "agents": len(model.members),
            "µs per record": round(per_record, 1),
            "state (pickled) MB": round(len(pickle.dumps(model)) / 1e6, 2),
        }
    ]


def table(rows: list[dict]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-group", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--agents", type=int, default=20_000)
    args = parser.parse_args()
    print(table(quality(args)), end="\n\n")
    print(table(cost(args)))


if __name__ == "__main__":
    main()
