"""Disk per agent per day: what a day of a simulated fleet leaves in ClickHouse and in
the dataflow's recovery directory (issue 14, Deliver 4; docs/reliability.md).

    .venv/bin/python bench/disk.py --agents 200 --hours 24

It starts a Tansu broker on a free port, the dataflow process
(``python -m dataflows.heartbeats``) and the loader (in this process, on a chDB
directory of its own), sends ``--hours`` of simulated time of ``--agents`` agents
(``agentwatch.simulator.FleetSimulator``, one heartbeat per agent every 30 s, event time
ending now, so no TTL applies) as fast as the pipeline takes them, waits until every
heartbeat is in ``metrics``, merges every table (``OPTIMIZE ... FINAL``: the steady state
of a table, where replays and small parts are merged away) and reads the bytes on disk
of each table from ``system.parts``. The recovery directory's size is sampled every
second while the dataflow runs (with its snapshot every ``snapshot_interval_s``, a
directory that kept old snapshots would grow). Prints a table per table and the
figures per agent per day; writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


from agentwatch.settings import Settings  # noqa: E402
from agentwatch.simulator import FleetSimulator  # noqa: E402
from bench.throughput import produce  # noqa: E402
from infra.broker import ensure_topics, free_port, start_broker  # noqa: E402
from sinks.clickhouse import connect, create_schema  # noqa: E402
from sinks.loader import Loader  # noqa: E402

HEARTBEATS_PER_AGENT_DAY = 86_400 / 30


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--hours", type=float, default=24.0, help="simulated time")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "disk.json")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="agentwatch-disk-"))
    broker = start_broker("127.0.0.1", free_port(), log_path=workdir / "broker.log")
    settings = Settings(
        bootstrap_servers=broker.bootstrap_servers,
        var_dir=workdir / "var",
        clickhouse_dsn=f"chdb://{workdir / 'chdb'}",
        agents_auto_register=True,
        baseline_warmup_s=3600.0,  # a day in steady state: baselines warm after the first hour
    )
    ensure_topics(settings)
    client = connect(settings)
    create_schema(client, settings)
    span_s = args.hours * 3600
    fleet = FleetSimulator(agents=args.agents, seed=args.seed, start=int(time.time() - span_s))
    keys: list[bytes] = []
    values: list[bytes] = []
    for batch in fleet.batches(until_s=span_s):
        batch_keys, batch_values = batch.serialize()
        keys += batch_keys
        values += batch_values
    print(f"workdir {workdir}: {len(values):,} heartbeats of {args.agents} agents", flush=True)

    env = {**os.environ, **settings.as_env(), "PYTHONPATH": str(REPO)}
    with open(workdir / "dataflow.log", "wb") as log:
        dataflow = subprocess.Popen(
            [sys.executable, "-m", "dataflows.heartbeats"], env=env, cwd=workdir,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    loader = Loader(settings, client)
    loader.start()
    recovery = settings.recovery_path
    samples: list[int] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(1.0):
            samples.append(directory_bytes(recovery))

    threading.Thread(target=sample, daemon=True).start()
    started = time.monotonic()
    try:
        produce(settings.bootstrap_servers, settings.topic("metrics"), keys, values)
        db = settings.clickhouse_database
        deadline = time.monotonic() + 600
        while client.command(f"SELECT count() FROM {db}.metrics") < len(values):
            if time.monotonic() > deadline or dataflow.poll() is not None:
                raise RuntimeError(f"the pipeline did not store every heartbeat; see {workdir}")
            time.sleep(0.5)
        time.sleep(3 * settings.snapshot_interval_s)  # a few more snapshots, then stop
    finally:
        sampling.set()
        dataflow.terminate()
        dataflow.wait(30)
        loader.stop()
        broker.stop()
    seconds = time.monotonic() - started

    tables = [name for (name,) in client.query(f"SHOW TABLES FROM {db}").result_rows]
    for table in tables:
        client.command(f"OPTIMIZE TABLE {db}.{table} FINAL")
    parts = client.query(
        "SELECT table, sum(rows), sum(bytes_on_disk), sum(data_uncompressed_bytes) "
        "FROM system.parts WHERE database = {db:String} AND active GROUP BY table "
        "ORDER BY sum(bytes_on_disk) DESC",
        parameters={"db": db},
    ).result_rows
    client.close()
    agent_days = args.agents * args.hours / 24
    filled = [size for size in samples if size > 0]
    by_table = {
        table: {"rows": int(rows), "bytes": int(size), "uncompressed": int(raw)}
        for table, rows, size, raw in parts
    }
    metrics = by_table.get("metrics", {"rows": 0, "bytes": 0})
    others = sum(t["bytes"] for name, t in by_table.items() if name != "metrics")
    total = metrics["bytes"] + others
    result = {
        "agents": args.agents,
        "hours": args.hours,
        "heartbeats": len(values),
        "seconds": round(seconds, 1),
        "tables": by_table,
        "metrics_bytes_per_heartbeat": round(metrics["bytes"] / max(metrics["rows"], 1), 2),
        "metrics_bytes_per_agent_day": round(metrics["bytes"] / agent_days),
        "other_tables_bytes_per_agent_day": round(others / agent_days),
        "clickhouse_bytes_per_agent_day": round(total / agent_days),
        "recovery_bytes": {  # once the directory holds a first snapshot
            "min": min(filled, default=0),
            "max": max(filled, default=0),
            "last": filled[-1] if filled else 0,
            "samples": filled,
        },
    }
    print(f"\n{'table':<26}{'rows':>12}{'bytes on disk':>16}{'per agent-day':>16}")
    for table, figures in by_table.items():
        per_day = figures["bytes"] / agent_days
        print(f"{table:<26}{figures['rows']:>12,}{figures['bytes']:>16,}{per_day:>16,.0f}")
    print(
        f"\nmetrics: {result['metrics_bytes_per_heartbeat']} bytes per heartbeat, "
        f"{result['metrics_bytes_per_agent_day']:,} per agent-day "
        f"({HEARTBEATS_PER_AGENT_DAY:.0f} heartbeats); all tables "
        f"{result['clickhouse_bytes_per_agent_day']:,} bytes per agent-day"
    )
    rec = result["recovery_bytes"]
    print(
        f"recovery directory: {rec['min']:,}–{rec['max']:,} bytes over {len(rec['samples'])} "
        f"samples ({rec['last'] / args.agents:,.0f} bytes per agent at the end)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
