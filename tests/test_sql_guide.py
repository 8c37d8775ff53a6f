"""docs/sql.md's worked queries, each run on eight hours of simulator data in chDB.

The data: a small simulated fleet (two tenants, incidents of every kind) through a real
dataflow shard, in process, and into the tables the way the loader writes them (the
loader's own row and frame functions). Each ```sql block of the guide's "Worked queries"
section must pass the SQL sandbox's policy (analysts run them through it) and return rows.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from clickhouse_connect.driver.client import Client

from agentwatch.settings import Settings
from agentwatch.shard import ShardState
from agentwatch.simulator import INCIDENT_KINDS, FleetSimulator, Incident
from api.sql import SqlSandbox
from dataflows.heartbeats import OUTPUT_TOPICS
from schemas.heartbeats import parse_heartbeats
from sinks.clickhouse import connect, create_schema
from sinks.loader import LOADED

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "sql.md"
DB = "guide"
AGENTS, HOURS = 24, 8


def worked_queries() -> list[tuple[str, str]]:
    """(title, SQL) of every query of the guide's "Worked queries" section."""
    text = GUIDE.read_text()
    section = text[text.index("## Worked queries") :]
    found = re.findall(r"^### (.+?)\n.*?```sql\n(.*?)```", section, re.S | re.M)
    return [(title.strip(), sql.strip()) for title, sql in found]


def insert(client: Client, kind: str, records: list[dict]) -> None:
    """``records`` of one loaded topic into its tables, as the loader writes them."""
    if not records:
        return
    loaded = LOADED[kind]
    rows = [loaded.row(orjson.dumps(record)) for record in records]
    client.insert_df(loaded.table, loaded.frame(rows), database=DB)
    for projection in loaded.projections:
        kept = [projection.row(row) for row in rows]
        kept = [row for row in kept if row is not None]
        if kept:
            client.insert_df(projection.table, projection.frame(kept), database=DB)


@pytest.fixture(scope="module")
def guide_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlSandbox]:
    settings = Settings(
        clickhouse_dsn=f"chdb://{tmp_path_factory.mktemp('chdb')}",
        clickhouse_database=DB,
        agents_auto_register=True,
        baseline_warmup_s=3600.0,  # (an hour, not the seed's day: the data is 8 hours)
    )
    client = connect(settings)
    create_schema(client, settings)
    start = time.time() - HOURS * 3600
    incidents = [
        Incident(kind, f"agent-{n:06d}", start_s=7200.0 + 1200 * n, duration_s=900.0)
        for n, kind in enumerate(INCIDENT_KINDS)
    ]
    fleet = FleetSimulator(AGENTS, seed=5, start=start, tenants=2, incidents=incidents)
    shard = ShardState.new(settings)
    outputs: dict[str, list[dict]] = {kind: [] for kind in OUTPUT_TOPICS}
    for batch in fleet.batches(max_heartbeats=AGENTS * HOURS * 120):
        _, values = batch.serialize()
        heartbeats, rejected = parse_heartbeats(values)
        assert not rejected
        client.insert_df("metrics", heartbeats.to_frame(), database=DB)
        out = shard.observe(heartbeats, float(heartbeats.timestamp.max()))
        out.events += shard.tick(float(heartbeats.timestamp.max())).events
        for kind in outputs:
            outputs[kind] += getattr(out, kind)
    for kind, topic in OUTPUT_TOPICS.items():
        insert(client, topic, outputs[kind])
    sandbox = SqlSandbox(settings.model_copy(update={"api_sql_enabled": True}))
    yield sandbox
    sandbox.close()
    client.close()


def test_the_guide_has_a_dozen_worked_queries() -> None:
    assert len(worked_queries()) >= 12


@pytest.mark.parametrize(("title", "sql"), worked_queries(), ids=[t for t, _ in worked_queries()])
def test_a_worked_query_passes_the_sandbox_and_returns_rows(guide_db: SqlSandbox, title, sql):
    assert guide_db.run(sql).rows, f"{title}: no rows"
