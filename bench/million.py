"""A million agents in the dataflow's state: memory, recovery snapshots and the shard step.

    .venv/bin/python bench/million.py                       # 1,000,000 agents (~5 min)
    .venv/bin/python bench/million.py --agents 100000       # a smoke run (~30 s)

No broker, no Bytewax: the shard states the dataflow keeps (``agentwatch.shard.ShardState``,
one per state shard, in ``dataflows.shard_cell.ShardCell``) are fed here in this process,
so each figure is the state's own cost, not the machine's other load.

1. ``--beats`` heartbeats per agent from the fleet simulator (``--agents`` agents beating
   every 30 s of simulated time), serialised to JSON and parsed as the dataflow parses them
   (``schemas.heartbeats.parse_heartbeats``), cut by shard (``shard_of``) and observed by
   each shard's state in batches of ``--batch`` heartbeats. Reported: the shard step's
   heartbeats/s (observe alone, parsing apart) and the parse rate.
2. State memory: the process's resident memory before the first agent and after the last
   (input freed, collected), per agent; ``tracemalloc``'s count over a sample of
   ``--sample`` agents built the same way (what Python objects and arrays the state holds);
   and where those bytes are: a walk of each part of the sample's shards (``sys.getsizeof``
   of every object and array reached, the shared index first, settings apart), in memory
   and pickled, per agent — and the same walk over the whole fleet's shards (arrays keep
   spare rows to grow into, up to a 33rd, ``agentwatch.rows.GROWTH``; a snapshot leaves
   them out).
3. A recovery snapshot as Bytewax takes it: each shard's ``ShardCell`` deep-copied (which
   pickles the state once, ``dataflows.shard_cell.ShardCell``) and the bytes written into a
   SQLite file as Bytewax's recovery partitions keep them (one row per key and epoch, WAL,
   as ``bytewax.recovery`` does). Reported: bytes per agent, pickling and writing seconds,
   and the share of one core they take at ``snapshot_interval_s`` (the setting's default and
   ``--interval``).

Results are printed and written as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import pickle
import sqlite3
import sys
import tempfile
import time
import tracemalloc
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from agentwatch import rows  # noqa: E402
from agentwatch.settings import Settings  # noqa: E402
from agentwatch.shard import ShardConfig, ShardState  # noqa: E402
from agentwatch.simulator import FleetSimulator  # noqa: E402
from dataflows.heartbeats import ShardCell, shards_of  # noqa: E402
from schemas.heartbeats import parse_heartbeats  # noqa: E402


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def rss_bytes() -> int:
    """Resident memory, after the C heap gave back what is free (glibc's malloc_trim)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(settings: Settings, agents: int, beats: int, batch: int, seed: int) -> dict:
    """Shard states of ``agents`` agents after ``beats`` heartbeats each, and the times."""
    shards = [ShardState.new(settings) for _ in range(settings.shard_count)]
    start = int(time.time() - beats * 30.0)
    fleet = FleetSimulator(agents=agents, seed=seed, start=start)
    parse_s = observe_s = 0.0
    done = 0
    for tick in fleet.batches(max_heartbeats=agents * beats):
        _, values = tick.serialize()
        for lo in range(0, len(values), batch):
            started = time.perf_counter()
            heartbeats = parse_heartbeats(values[lo : lo + batch])[0]
            parse_s += time.perf_counter() - started
            started = time.perf_counter()
            owner = shards_of(heartbeats.agent_id, len(shards))
            for index, shard in enumerate(shards):
                rows = np.flatnonzero(owner == index)
                if len(rows):
                    shard.observe(heartbeats.take(rows))
            observe_s += time.perf_counter() - started
            done += len(heartbeats)
        del values
        say(f"{done:,} heartbeats observed ({done / agents:.0f} per agent)")
    return {
        "shards": shards,
        "heartbeats": done,
        "parse_per_s": done / parse_s,
        "observe_per_s": done / observe_s,
    }


def snapshot(shards: list[ShardState], directory: Path) -> dict:
    """One recovery snapshot of every shard: pickled as Bytewax's deep copy does, written
    as Bytewax's SQLite recovery partition keeps it."""
    db = sqlite3.connect(directory / "part-0.sqlite3")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS snaps (step_id TEXT, state_key TEXT, snap_epoch INTEGER, "
        "ser_change BLOB, PRIMARY KEY (step_id, state_key, snap_epoch))"
    )
    pickle_s = write_s = write_cpu_s = 0.0
    sizes = []
    for index, shard in enumerate(shards):
        started = time.perf_counter()
        cell = copy.deepcopy(ShardCell(shard))
        pickle_s += time.perf_counter() - started
        sizes.append(len(cell.pickled))
        started, cpu = time.perf_counter(), time.process_time()
        with db:
            db.execute(
                "INSERT OR REPLACE INTO snaps VALUES (?, ?, ?, ?)",
                ("agent_baselines", str(index), 1, cell.pickled),
            )
        write_s += time.perf_counter() - started
        write_cpu_s += time.process_time() - cpu
        del cell
    db.close()
    return {"bytes": sum(sizes), "largest_shard_bytes": max(sizes), "pickle_s": pickle_s,
            "write_s": write_s, "write_cpu_s": write_cpu_s}  # fmt: skip


def traced_bytes_per_agent(
    settings: Settings, agents: int, beats: int, seed: int
) -> tuple[float, dict]:
    """What ``tracemalloc`` sees the shard state hold, per agent, for a sample fleet, and
    where (:func:`breakdown`). The same fleet is built first, untraced, so what the code
    allocates once on first use (lazy imports, caches: ~1.8 MB at 20,000 agents, 90 B an
    agent) is not charged to the sample's agents."""
    build(settings, agents, beats, 50_000, seed)
    gc.collect()
    tracemalloc.start()
    built = build(settings, agents, beats, 50_000, seed)
    gc.collect()
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    known = sum(len(shard.baselines) for shard in built["shards"])
    return held / known, breakdown(built["shards"], settings, pickled=True)


def deep_size(root: object, seen: set[int]) -> int:
    """Bytes of every object reachable from ``root`` not in ``seen`` (``sys.getsizeof``;
    an array's data counted once, with the array that owns it)."""
    total, stack = 0, [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type | types.ModuleType | types.FunctionType):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, np.ndarray):
            if obj.base is not None:
                stack.append(obj.base)
            continue
        if isinstance(obj, dict):
            stack += obj.keys()
            stack += obj.values()
        elif isinstance(obj, list | tuple | set | frozenset):
            stack += obj
        else:
            if hasattr(obj, "__dict__"):
                stack.append(vars(obj))
            for klass in type(obj).__mro__:
                for name in getattr(klass, "__slots__", ()):
                    if hasattr(obj, name):
                        stack.append(getattr(obj, name))
    return total


def breakdown(shards: list[ShardState], settings: Settings, pickled: bool = False) -> dict:
    """Bytes per agent of each part of the shards' state (the shared index first, the
    settings and the tunables apart), in memory and, with ``pickled``, in a pickle (each
    part's pickle less the index's)."""
    known = sum(len(shard.index) for shard in shards)
    config = ShardConfig.of(settings)
    seen = {id(settings), id(config), *(id(getattr(config, f)) for f in config.__slots__)}
    memory = {
        name: sum(deep_size(getattr(shard, name), seen) for shard in shards) / known
        for name in ShardState.__slots__
    }
    memory["shared row numbers"] = deep_size(rows._ROW_NUMBERS, seen) / known
    result = {"memory": memory}
    if pickled:
        index = sum(len(pickle.dumps(shard.index, protocol=5)) for shard in shards)
        result["pickled"] = {
            name: (
                sum(len(pickle.dumps(getattr(shard, name), protocol=5)) for shard in shards)
                - (index if name != "index" and hasattr(getattr(shards[0], name), "index") else 0)
            )
            / known
            for name in ShardState.__slots__
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1_000_000)
    parser.add_argument("--beats", type=int, default=3, help="heartbeats per agent")
    parser.add_argument("--batch", type=int, default=5_000, help="heartbeats per shard step")
    parser.add_argument("--sample", type=int, default=20_000, help="agents traced for memory")
    parser.add_argument("--shards", type=int, default=None)
    parser.add_argument("--interval", type=float, default=30.0, help="another snapshot interval")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("bench/results/million.json"))
    options = parser.parse_args()
    settings = Settings(agents_auto_register=True)
    if options.shards:
        settings = settings.model_copy(update={"shard_count": options.shards})
    say(f"{options.agents:,} agents x {options.beats} heartbeats, {settings.shard_count} shards")
    traced, parts = traced_bytes_per_agent(settings, options.sample, options.beats, options.seed)
    say(f"tracemalloc over {options.sample:,} agents: {traced:,.0f} B per agent")
    for name, size in parts["memory"].items():
        say(f"  {name:20s} {size:7.1f} B in memory, {parts['pickled'].get(name, 0):7.1f} pickled")
    gc.collect()
    before = rss_bytes()
    built = build(settings, options.agents, options.beats, options.batch, options.seed)
    gc.collect()
    after = rss_bytes()
    shards = built["shards"]
    known = sum(len(shard.baselines) for shard in shards)
    whole = breakdown(shards, settings)["memory"]
    say(f"walk of the whole fleet's state: {sum(whole.values()):,.0f} B per agent")
    for name, size in whole.items():
        say(f"  {name:20s} {size:7.1f} B in memory")
    with tempfile.TemporaryDirectory(prefix="aw-bench-million-") as directory:
        snap = snapshot(shards, Path(directory))
    per_snapshot_s = snap["pickle_s"] + snap["write_cpu_s"]  # CPU; the rest waits on the disk
    results = {
        "agents": known,
        "beats_per_agent": options.beats,
        "shards": settings.shard_count,
        "machine": f"{os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "observe_heartbeats_per_s": built["observe_per_s"],
        "parse_heartbeats_per_s": built["parse_per_s"],
        "rss_bytes_per_agent": (after - before) / known,
        "traced_bytes_per_agent": traced,
        "sample_bytes_per_agent_by_part": parts,
        "walked_bytes_per_agent": sum(whole.values()),
        "walked_bytes_per_agent_by_part": whole,
        "snapshot_bytes_per_agent": snap["bytes"] / known,
        "snapshot_bytes": snap["bytes"],
        "snapshot_largest_shard_bytes": snap["largest_shard_bytes"],
        "snapshot_pickle_s": snap["pickle_s"],
        "snapshot_write_s": snap["write_s"],
        "snapshot_write_cpu_s": snap["write_cpu_s"],
        "snapshot_core_share_default_interval": per_snapshot_s / settings.snapshot_interval_s,
        "snapshot_interval_default_s": settings.snapshot_interval_s,
        "snapshot_core_share_at_interval": per_snapshot_s / options.interval,
        "snapshot_interval_s": options.interval,
    }
    for key, value in results.items():
        if isinstance(value, dict):
            continue
        say(f"{key:40s} {value:,.3f}" if isinstance(value, float) else f"{key:40s} {value}")
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2) + "\n")
    say(f"written {options.out}")


if __name__ == "__main__":
    main()
