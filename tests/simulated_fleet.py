"""Eight hours of a simulated fleet in chDB, for tests that query the tables as analysts and
dashboards do (tests/test_sql_guide.py, tests/test_grafana_dashboards.py).

The data: a small simulated fleet (two tenants, incidents of every kind) through a real
dataflow shard, in process, and into the tables the way the loader writes them (the
loader's own row and frame functions). With ``orchestration=True`` the fleet also takes
tasks: the API's ``task_assigned`` on the control channel and the agents' outcomes on the
events channel go through the dataflow's own event reader into the shard (which accepts,
refuses and closes them) and into ``agent_events`` and ``tasks``; and a few messages the
dataflow refuses become dead letters (its own ``dead_letter_records``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pandas as pd
from clickhouse_connect.driver.client import Client

from agentwatch.settings import Settings
from agentwatch.shard import ShardState
from agentwatch.simulator import INCIDENT_KINDS, FleetSimulator, Incident
from api.sql import SqlSandbox
from dataflows.heartbeats import OUTPUT_TOPICS, AgentFact, dead_letter_records, read_events
from dataflows.kafka_source import RawBatch
from schemas.heartbeats import parse_heartbeats
from sinks.clickhouse import connect, create_schema
from sinks.loader import LOADED, insert_rows

AGENTS, HOURS = 24, 8
#: Sim seconds between two rounds of task assignments (orchestration=True).
TASK_EVERY_S = 600.0
TASK_TYPES = ("etl", "summarize", "classify")


def insert(client: Client, database: str, kind: str, records: list[dict]) -> None:
    """``records`` of one loaded topic into its tables, as the loader writes them."""
    if not records:
        return
    loaded = LOADED[kind]
    rows = [loaded.row(orjson.dumps(record)) for record in records]
    insert_rows(client, loaded.table, loaded.frame(rows), database)
    for projection in loaded.projections:
        kept = [projection.row(row) for row in rows]
        kept = [row for row in kept if row is not None]
        if kept:
            insert_rows(client, projection.table, projection.frame(kept), database)


class _Events:
    """Events on one channel (``control`` or ``events``), read by the dataflow's reader."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.offset = 0
        self.accepted: list[dict] = []
        self.dead: list[dict] = []

    def read(self, values: list[dict | bytes]) -> list:
        raw_values = [v if isinstance(v, bytes) else orjson.dumps(v) for v in values]
        offsets = list(range(self.offset, self.offset + len(raw_values)))
        self.offset += len(raw_values)
        raw = RawBatch(f"agents.{self.channel}", 0, offsets, [b"k"] * len(raw_values), raw_values)
        checked = read_events(self.channel, raw)
        refused = {position for position, _ in checked.rejected}
        self.accepted += [
            orjson.loads(value) for n, value in enumerate(raw_values) if n not in refused
        ]
        self.dead += dead_letter_records(raw, checked.rejected)
        return checked.to_agent_shard + checked.to_every_shard


def _event(kind: str, agent: str, tenant: str, at: float, actor: str, **payload) -> dict:
    return {
        "type": kind,
        "agent_id": agent,
        "tenant_id": tenant,
        "actor": actor,
        "timestamp": at,
        "payload": payload,
    }


def build_fleet(client: Client, settings: Settings, *, orchestration: bool = False) -> None:
    """Fill ``settings.clickhouse_database`` with :data:`HOURS` of :data:`AGENTS` agents,
    ending now (see the module's doc)."""
    database = settings.clickhouse_database
    start = time.time() - HOURS * 3600
    incidents = [
        Incident(kind, f"agent-{n:06d}", start_s=7200.0 + 1200 * n, duration_s=900.0)
        for n, kind in enumerate(INCIDENT_KINDS)
    ] + [  # one agent silent at the end, whatever the hour: not every agent is active now
        Incident("silence", f"agent-{AGENTS - 1:06d}", start_s=HOURS * 3600 - 1800.0,
                 duration_s=3600.0)
    ]  # fmt: skip
    fleet = FleetSimulator(AGENTS, seed=5, start=start, tenants=2, incidents=incidents)
    shard = ShardState.new(settings)
    outputs: dict[str, list[dict]] = {kind: [] for kind in OUTPUT_TOPICS}
    control, agent_side = _Events("control"), _Events("events")
    open_tasks: list[tuple[str, str, str]] = []  # (task, agent, type)
    next_round, round_no = start + 1800.0, 0

    def collect(out) -> None:
        for kind in outputs:
            outputs[kind] += getattr(out, kind)

    frames = []  # the heartbeats, inserted at the end in one insert (one per tick took 15 s)
    for batch in fleet.batches(max_heartbeats=AGENTS * HOURS * 120):
        _, values = batch.serialize()
        heartbeats, rejected = parse_heartbeats(values)
        assert not rejected
        frames.append(heartbeats.to_frame())
        now = float(heartbeats.timestamp.max())
        collect(shard.observe(heartbeats, now))
        collect(shard.tick(now))
        if orchestration and now >= next_round:
            next_round += TASK_EVERY_S
            round_no += 1
            collect_tasks = []
            # the outcomes of the last round's tasks (one in four fails) ...
            for n, (task, agent, kind) in enumerate(open_tasks):
                outcome = "task_failed" if (n + round_no) % 4 == 0 else "task_completed"
                reason = "upstream timed out" if outcome == "task_failed" else ""
                collect_tasks += agent_side.read(
                    [
                        _event(
                            outcome, agent, fleet.tenant_of(agent), now, agent,
                            task_id=task, task_type=kind, duration_s=120.0 + 7 * n,
                            reason=reason,
                        )
                    ]
                )  # fmt: skip
            # ... and new ones, three agents a round
            open_tasks = []
            for n in range(3):
                agent = f"agent-{(3 * round_no + n) % AGENTS:06d}"
                task, kind = f"task-{round_no:03d}-{n}", TASK_TYPES[(round_no + n) % 3]
                open_tasks.append((task, agent, kind))
                collect_tasks += control.read(
                    [
                        _event(
                            "task_assigned", agent, fleet.tenant_of(agent), now, "ops-1",
                            task_id=task, task_type=kind, score=0.7, assigned_by="api-1",
                            weights={}, p_success=0.9, expected_duration_s=150.0,
                            components={"performance": 0.8, "cost": 0.6,
                                        "availability": 0.7, "sla": 0.9},
                        )
                    ]
                )  # fmt: skip
            for command in collect_tasks:
                if isinstance(command, AgentFact):  # (screened as the dataflow does)
                    if shard.screen_fact(command.agent_id, command.command.tenant_id):
                        continue
                    command = command.command
                collect(shard.apply(command))
    if orchestration:
        # messages the dataflow refuses: not JSON, and an operator's order on the agents'
        # own channel (an agent may not release itself)
        agent_side.read([b"{not json", _event("released", "agent-000001", "tenant-000",
                                              time.time(), "agent-000001")])  # fmt: skip
        insert(client, database, "control", control.accepted)
        insert(client, database, "events", agent_side.accepted)
        insert(client, database, "deadletter", control.dead + agent_side.dead)
    client.insert_df("metrics", pd.concat(frames, ignore_index=True), database=database)
    for kind, topic in OUTPUT_TOPICS.items():
        insert(client, database, topic, outputs[kind])


def fleet_sandbox(
    directory: Path, database: str, *, orchestration: bool = False
) -> Iterator[SqlSandbox]:
    """A :class:`SqlSandbox` (the analysts' SQL endpoint's session) on a new chDB in
    ``directory`` holding :func:`build_fleet`'s data in ``database``; closed after use."""
    settings = Settings(
        clickhouse_dsn=f"chdb://{directory}",
        clickhouse_database=database,
        agents_auto_register=True,
        baseline_warmup_s=3600.0,  # (an hour, not the seed's day: the data is 8 hours)
    )
    client = connect(settings)
    create_schema(client, settings)
    build_fleet(client, settings, orchestration=orchestration)
    sandbox = SqlSandbox(settings.model_copy(update={"api_sql_enabled": True}))
    try:
        yield sandbox
    finally:
        sandbox.close()
        client.close()
