"""How often ClickHouse merges the big part again: constant rows against working agents' rows.

    .venv/bin/python bench/chdb_merges.py --data constant
    .venv/bin/python bench/chdb_merges.py --data noisy

Soak finding (issue 14, docs/reliability.md): at a constant input the API process's CPU
doubled within a quarter of an hour, all of it in chDB's merge threads, and the `metrics`
table's biggest part had been merged 415 times in 1,003 inserts: nearly every new part was
merged into the whole table again, so each merge cost more than the one before. The
soak's heartbeats were then the same for an agent every time; such rows compress to almost
nothing, while a part's fixed overhead does not, and ClickHouse's merge selector judges
parts by their bytes: a thousand-row part looks a few per cent of a million-row one, and
merging them looks worth it.

What it does: a table like `metrics` (`sinks/clickhouse.py`) in a fresh chDB directory;
``--inserts`` inserts of ``--rows`` rows of 10,000 agents, one every ``--interval-s``,
either constant per agent or jittered like working agents; then it prints the CPU this
process used and the biggest active parts with their merge level (how many times their
rows were merged). Measured 2026-12-06 (600 inserts of 1,000 rows, 0.05 s apart): constant
rows, the biggest part (529,000 rows, 2.5 MB) at level 57; jittered rows (383,000 rows, 23 MB),
level 12. In the soak, with an insert a second, it was level 415 after 1,003 inserts.
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path

import chdb.session

COLUMNS = """agent_id String, tenant_id LowCardinality(String), timestamp DateTime64(3, 'UTC'),
    cpu_usage Float64, memory_usage Float64, disk_usage Float64, network_latency Float64,
    active_tasks UInt32, completed_tasks UInt64, failed_tasks UInt64, error_rate Float64,
    response_time_avg Float64, uptime_seconds Float64, bytes_out UInt64,
    status LowCardinality(String)"""


def row(agent: int, at: float, step: int, rng: random.Random | None) -> str:
    """One row as SQL values: the same for ``agent`` every time, or jittered by ``rng``."""
    if rng is None:
        metrics = (30.0 + agent % 20, 50.0, 40.0, 10.0, 1, 100, 1, 0.01, 200.0, 3600.0, 1024)
    else:
        gauss = rng.gauss
        metrics = (
            30 + agent % 20 + gauss(0, 3), 50 + gauss(0, 2), 40 + gauss(0, 0.5),
            abs(10 + gauss(0, 1)), rng.randrange(4), step, rng.randrange(3),
            abs(gauss(0.01, 0.003)), 200 + gauss(0, 15), 30.0 * step, 1024 + rng.randrange(512),
        )  # fmt: skip
    values = ",".join(map(str, metrics))
    return f"('agent-{agent:06d}','tenant-a',{at:.3f},{values},'active')"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=("constant", "noisy"), default="constant")
    parser.add_argument("--inserts", type=int, default=600)
    parser.add_argument("--rows", type=int, default=1000, help="rows an insert")
    parser.add_argument("--interval-s", type=float, default=0.05, help="between inserts")
    parser.add_argument(
        "--table-settings", default="", help="MergeTree settings (e.g. merge_selector_base=8)"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="agentwatch-merges-"))
    try:
        session = chdb.session.Session(str(workdir))
        session.query("CREATE DATABASE IF NOT EXISTS bench")
        session.query(
            f"CREATE TABLE bench.metrics ({COLUMNS}) ENGINE = ReplacingMergeTree "
            "PARTITION BY toYYYYMM(timestamp) ORDER BY (tenant_id, agent_id, timestamp)"
            + (f" SETTINGS {args.table_settings}" if args.table_settings else "")
        )
        rng = random.Random(1) if args.data == "noisy" else None
        at, started, cpu = 1_796_000_000.0, time.monotonic(), cpu_seconds()
        for step in range(args.inserts):
            rows = []
            for n in range(args.rows):
                at += 0.001
                rows.append(row((step * args.rows + n) % 10_000, at, step, rng))
            session.query("INSERT INTO bench.metrics VALUES " + ",".join(rows))
            if step % 100 == 99:
                print(f"{step + 1} inserts, {time.monotonic() - started:.0f} s", flush=True)
            time.sleep(args.interval_s)
        time.sleep(5)  # the last merges
        print(
            f"{args.data} {args.table_settings}: {args.inserts} inserts of {args.rows} rows, "
            f"{time.monotonic() - started:.0f} s, CPU {cpu_seconds() - cpu:.1f} s "
            "(making the rows included)"
        )
        print("biggest active parts: name, rows, merge level, bytes")
        print(
            session.query(
                "SELECT name, rows, level, bytes_on_disk FROM system.parts "
                "WHERE table = 'metrics' AND active ORDER BY rows DESC LIMIT 5",
                "PrettyCompactNoEscapes",
            )
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
