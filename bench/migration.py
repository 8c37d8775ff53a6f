"""How long migration 3 (tenant_id leads the sort keys) takes, and what it does to point reads.

    .venv/bin/python bench/migration.py --rows 1000000 --agents 10000 --tenants 5

In a chDB directory of its own: ``metrics`` at the release-before-migrations layout
(sorted by ``agent_id, timestamp``) with ``--rows`` heartbeats of ``--agents`` agents
(each of one of ``--tenants`` tenants, over the last 60 days), then
:func:`sinks.clickhouse.create_schema` (the rebuild; the other tables are empty).
Before and after, the newest heartbeat of random agents is read the way the API does
(``api.queries.latest_metrics``), with the tenant and without it (how an agent's tenant
is resolved), each on a table merged to its final parts. Prints JSON; timings are
noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentwatch.settings import Settings  # noqa: E402
from api import queries  # noqa: E402
from sinks.clickhouse import connect, create_schema  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from release_6c57025_schema import RELEASE_6C57025_TABLES  # noqa: E402


def point_reads(client, db: str, agents: int, tenants: int, with_tenant: bool) -> dict:
    """p50/p99 in ms of 300 ``latest_metrics`` reads of random agents."""
    rng = random.Random(7)
    times = []
    for _ in range(300):
        agent = rng.randrange(agents)
        tenant = f"tenant-{agent % tenants}" if with_tenant else None
        started = time.perf_counter()
        found = queries.latest_metrics(client, db, f"agent-{agent}", tenant_id=tenant)
        times.append((time.perf_counter() - started) * 1000)
        assert found is not None
    times.sort()
    return {"p50_ms": round(statistics.median(times), 2), "p99_ms": round(times[296], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--tenants", type=int, default=5)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="aw-bench-migration-")
    settings = Settings(clickhouse_dsn=f"chdb://{directory}", clickhouse_database="bench")
    client = connect(settings)
    db = settings.clickhouse_database
    client.command(f"CREATE DATABASE {db}")
    for statement in RELEASE_6C57025_TABLES:
        client.command(statement.replace("__DB__", db))
    client.command(
        f"INSERT INTO {db}.metrics (agent_id, tenant_id, timestamp, cpu_usage, memory_usage, "
        "status) SELECT concat('agent-', toString(number % {agents:UInt32})), "
        "concat('tenant-', toString(number % {agents:UInt32} % {tenants:UInt32})), "
        "now64(3, 'UTC') - toIntervalMillisecond(number * 5184), rand() % 100, rand() % 100, "
        "'active' FROM numbers({rows:UInt64})",
        parameters={"agents": args.agents, "tenants": args.tenants, "rows": args.rows},
    )
    client.command(f"OPTIMIZE TABLE {db}.metrics FINAL")
    before = point_reads(client, db, args.agents, args.tenants, with_tenant=False)
    started = time.perf_counter()
    create_schema(client, settings)
    seconds = time.perf_counter() - started
    client.command(f"OPTIMIZE TABLE {db}.metrics FINAL")  # reads compared on merged parts
    result = {
        "rows": args.rows,
        "agents": args.agents,
        "tenants": args.tenants,
        "migration_s": round(seconds, 2),
        "rows_per_s": round(args.rows / seconds),
        "latest_metrics_old_layout": before,
        "latest_metrics_new_layout_with_tenant": point_reads(
            client, db, args.agents, args.tenants, with_tenant=True
        ),
        "latest_metrics_new_layout_tenant_unknown": point_reads(
            client, db, args.agents, args.tenants, with_tenant=False
        ),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
