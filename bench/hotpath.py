"""CPU per heartbeat of the dataflow's hot path, in process: the shard step and the detector.

    .venv/bin/python bench/hotpath.py --agents 10000 --heartbeats 400000 --repeats 3
    .venv/bin/python bench/hotpath.py --root ../other-checkout   # another commit's code

The heartbeats of ``bench/throughput.py`` (same simulator, seed and agents) are cut as
the dataflow cuts them: by partition (crc32 of the key, like the topic's key hash for
the purpose of grouping), batches of up to ``source_batch_size`` messages read from one
partition at a time, parsed (``validate``) and split by state shard
(``split_by_shard``). Those sub-batches are then fed, untimed work done beforehand, to

- ``shard``: :meth:`ShardState.observe` (everything a shard does for a heartbeat), and
- ``detector``: :meth:`FleetBaselines.observe` alone (baselines and anomaly detector),
- ``parse``: ``validate`` (the batch parser, :func:`schemas.heartbeats.parse_heartbeats`)
  of every batch read, and ``parse_general``: its general path alone (each message
  decoded to a dict and every value's type checked: what a batch with a bad message
  takes, and what every batch took before the typed decoder),

each on fresh state, timed with ``time.process_time`` (CPU of this process, so the
figure is less sensitive than wall-clock time to other work on a shared machine), and
reported as µs of CPU per heartbeat: the best of ``--repeats`` runs and all runs. The
first ``--warm-fraction`` of heartbeats warm the state up untimed, so the figure is for
warm agents, as in steady state. Nothing is published: what the dataflow does with the
outputs (encoding, Kafka) is not in these figures.

``--root`` imports the code of another checkout (e.g. the commit before a change) with
this interpreter, so two commits are compared on the same libraries; alternate runs of
the two to share out the machine's noise. ``--check`` prints a digest of every anomaly
record, so two commits' outputs can be compared too; for the shard, also of its other
records (threats, alerts, scores, commands, events, assignment scores) and of the whole
pickled shard state (run it with ``PYTHONHASHSEED=0``: sets of strings pickle in hash
order). A change meant to make the same results faster keeps every digest.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import pickle
import sys
import time
import zlib
from functools import partial
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--heartbeats", type=int, default=400_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--batch-size", type=int, default=0,
        help="messages read from a partition at once (default: source_batch_size's)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warm-fraction", type=float, default=0.25)
    parser.add_argument(
        "--only", choices=("shard", "detector", "parse", "parse_general"), default=None
    )
    parser.add_argument("--incidents", type=int, default=0, help="random incidents (--check)")
    parser.add_argument(
        "--check", action="store_true",
        help="print digests of the outputs (anomaly and baseline records) and of the state",
    )  # fmt: skip
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--profile", type=Path, help="cProfile the timed part into this file")
    args = parser.parse_args()
    sys.path.insert(0, str(args.root.resolve()))

    from agentwatch.fleet import FleetBaselines
    from agentwatch.settings import Settings
    from agentwatch.shard import ShardConfig, ShardState
    from agentwatch.simulator import FleetSimulator, plan_incidents
    from dataflows.heartbeats import split_by_shard, validate
    from dataflows.kafka_source import RawBatch

    settings = Settings(baseline_warmup_s=0, agents_auto_register=True, shard_count=args.shards)
    if args.batch_size:
        settings = settings.model_copy(update={"source_batch_size": args.batch_size})
    span_s = args.heartbeats / args.agents * 30.0
    fleet = FleetSimulator(agents=args.agents, seed=args.seed, start=int(1.8e9 - span_s))
    for incident in plan_incidents(fleet.agent_ids, args.incidents, span_s, seed=args.seed):
        fleet.add_incident(incident)
    by_partition: list[list[tuple[bytes, bytes]]] = [[] for _ in range(args.partitions)]
    for columns in fleet.batches(max_heartbeats=args.heartbeats):
        keys, values = columns.serialize()
        for key, value in zip(keys, values, strict=True):
            by_partition[zlib.crc32(key) % args.partitions].append((key, value))
    size = settings.source_batch_size
    reads = []  # round robin over the partitions, a batch at a time, as a backlog drains
    for lo in range(0, max(map(len, by_partition)), size):
        for p, messages in enumerate(by_partition):
            chunk = messages[lo : lo + size]
            if chunk:
                reads.append((p, lo, chunk))
    keys_of_shards = tuple(str(i) for i in range(args.shards))
    batches, raws = [], []
    for p, lo, chunk in reads:
        offsets = list(range(lo, lo + len(chunk)))
        raw = RawBatch("metrics", p, offsets, [k for k, _ in chunk], [v for _, v in chunk])
        raws.append(raw)
        checked = validate(settings.max_message_bytes, raw)
        batches += split_by_shard(keys_of_shards, checked)
    total = sum(len(b) for _, b in batches)
    warm_upto, seen = 0, 0
    for i, (_, b) in enumerate(batches):
        seen += len(b)
        if seen >= args.warm_fraction * total:
            warm_upto = i + 1
            break
    timed_beats = sum(len(b) for _, b in batches[warm_upto:])

    def timed_run(new_state, fleet_of, profiler=None) -> tuple[float, list, list]:
        """Warm a state per shard on the first batches, then time ``observe`` over the
        rest; the seconds, each batch's (anomalies, baselines), and the fleets."""
        states = {key: new_state() for key in keys_of_shards}
        for key, b in batches[:warm_upto]:
            states[key].observe(b)
        outputs = []
        gc.collect()
        start = time.process_time()
        if profiler:
            profiler.enable()
        for key, b in batches[warm_upto:]:
            out = states[key].observe(b)
            outputs.append((out.anomalies, out.baselines, out))
        if profiler:
            profiler.disable()
        return time.process_time() - start, outputs, [fleet_of(s) for s in states.values()]

    def shard_run(profiler=None) -> tuple[float, list, list]:
        return timed_run(lambda: ShardState.new(settings), lambda s: s, profiler)

    def detector_run(profiler=None) -> tuple[float, list, list]:
        config = ShardConfig.of(settings).detector
        return timed_run(lambda: FleetBaselines(config), lambda f: f, profiler)

    def parse_run(parse, profiler=None) -> tuple[float, list, list]:
        """Every batch read, parsed; the seconds (per heartbeat: of all of them)."""
        gc.collect()
        start = time.process_time()
        if profiler:
            profiler.enable()
        for raw in raws:
            parse(raw.values, settings.max_message_bytes)
        if profiler:
            profiler.disable()
        return (time.process_time() - start) * timed_beats / total, [], []

    import schemas.heartbeats as parsing

    runs = {"shard": shard_run, "detector": detector_run}
    runs["parse"] = partial(parse_run, parsing.parse_heartbeats)
    if hasattr(parsing, "_parse_general"):  # (the commits before the typed decoder: none)
        runs["parse_general"] = partial(parse_run, parsing._parse_general)
    if args.only:
        runs = {args.only: runs[args.only]}
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        next(iter(runs.values()))(profiler)
        profiler.dump_stats(args.profile)
        return
    result: dict[str, object] = {
        "root": str(args.root),
        "heartbeats": total,
        "timed_heartbeats": timed_beats,
        "batches": len(batches) - warm_upto,
    }
    for name, run in runs.items():
        times, check = [], {}
        for _ in range(args.repeats):
            seconds, outputs, fleets = run()
            times.append(seconds / timed_beats * 1e6)
            if args.check:
                check = digests(outputs, fleets)
        result[name] = {
            "us_per_heartbeat_best": round(min(times), 3),
            "us_per_heartbeat_all": [round(t, 3) for t in times],
            **check,
        }
    print(json.dumps(result))


#: The shard's records besides anomalies and baselines that ``--check`` digests.
_OTHER_RECORDS = ("threats", "alerts", "scores", "commands", "events", "assignment_scores")


def digests(outputs: list, fleets: list) -> dict[str, object]:
    """How many records came out, and digests of them and of the detector's state
    (every per-agent array, byte for byte): equal digests, equal results."""
    anomalies = [r for found, _, _ in outputs for r in found]
    baselines = [r for _, published, _ in outputs for r in published]
    # the shard's other records (threats, alerts, scores, commands, events, assignment
    # scores), for the shard run: whatever a change to the rules or the rest moves
    others = [
        {name: getattr(out, name) for name in _OTHER_RECORDS}
        for _, _, out in outputs
        if hasattr(out, "threats")
    ]

    def digest(blob: bytes) -> str:
        return hashlib.sha256(blob).hexdigest()[:16]

    shards = [f for f in fleets if not hasattr(f, "_arrays")]  # (whole shards: their fleets)
    fleets = [getattr(f, "baselines", f) for f in fleets]
    state = hashlib.sha256()
    for fleet in fleets:
        for name in sorted(fleet._arrays):
            state.update(getattr(fleet, name)[: len(fleet.index)].tobytes())
    return {
        "anomalies": len(anomalies),
        "is_anomaly": sum(r["is_anomaly"] for r in anomalies),
        "anomalies_digest": digest(json.dumps(anomalies, sort_keys=True).encode()),
        "baselines": len(baselines),
        "baselines_digest": digest(json.dumps(baselines, sort_keys=True).encode()),
        "state_digest": state.hexdigest()[:16],
        **(
            {"shard_state_digest": digest(b"".join(pickle.dumps(s) for s in shards))}
            if shards
            else {}
        ),
        **(
            {
                "other_records": sum(len(r) for o in others for r in o.values()),
                "other_records_digest": digest(
                    json.dumps(others, sort_keys=True, default=repr).encode()
                ),
            }
            if others
            else {}
        ),
    }


if __name__ == "__main__":
    main()
