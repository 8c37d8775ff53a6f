"""Registration through the real broker: the dataflow process applies ``registered`` from
agents.control, dead-letters the heartbeats it must refuse, keeps the registry across a
restart, and the loader lands the ``agents`` and ``agent_registry`` projections."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from agentwatch.lifecycle import AgentRecord, State
from agentwatch.settings import Settings
from infra.broker import ensure_topics
from sinks.clickhouse import connect, create_schema
from sinks.loader import Loader
from tests.conftest import wait_until
from tests.test_dataflow import START, heartbeat
from tests.test_dataflow_kafka import DataflowProcess, TopicReader, produce

pytestmark = [pytest.mark.integration, pytest.mark.e2e]  # the dataflow runs as a process


def register(settings: Settings, agent: int, tenant: str, **card: object) -> None:
    event = {
        "type": "registered", "agent_id": f"agent-{agent:04d}", "tenant_id": tenant,
        "actor": "ops-1", "timestamp": START - 60,
        "payload": {"name": f"Agent-{agent}", "agent_type": "llm_worker", "owner": "team-ml",
                    **card},
    }  # fmt: skip
    producer = Producer(settings.kafka_config())
    producer.produce(
        settings.topic("control"), key=event["agent_id"].encode(), value=orjson.dumps(event)
    )
    producer.flush()


@pytest.mark.timeout(240)
def test_registration_then_heartbeats_through_the_broker_and_into_clickhouse(
    make_settings, broker, chdb_dir, tmp_path: Path
) -> None:
    settings = make_settings(
        bootstrap_servers=broker.bootstrap_servers,
        clickhouse_dsn=f"chdb://{chdb_dir}",
        agents_auto_register=False,
    )
    ensure_topics(settings)
    client = connect(settings)
    create_schema(client, settings)
    loader = Loader(settings, client)
    flow = DataflowProcess(settings, tmp_path / "dataflow.log")
    reader = TopicReader(settings, ["state", "deadletter"])
    state, dead = settings.topic("state"), settings.topic("deadletter")
    db = settings.clickhouse_database
    try:
        loader.start()
        flow.start()
        register(settings, 0, "tenant-0", capabilities=["ml_inference"], tags={"zone": "eu"},
                 resources={"cpu_cores": 4})  # fmt: skip
        register(settings, 1, "tenant-X")  # its heartbeats will say tenant-1
        wait_until(
            lambda: len([e for e in reader.poll()[state] if e["type"] == "status_changed"]) == 2,
            60,
            "two agents registered",
        )
        beats = [orjson.dumps(heartbeat(a, step)) for step in range(3) for a in range(3)]
        produce(settings, beats)
        wait_until(lambda: len(reader.poll()[dead]) == 6, 60, "six dead letters")

        def changes() -> list[tuple]:
            return [
                (e["agent_id"], str(e["payload"]["from"]), e["payload"]["to"])
                for e in reader.poll()[state]
                if e["type"] == "status_changed"
            ]

        assert sorted(wait_until(lambda: len(changes()) == 3 and changes(), 60, "active")) == [
            ("agent-0000", "None", "registered"),
            ("agent-0000", "registered", "active"),
            ("agent-0001", "None", "registered"),
        ]
        letters = reader.by_topic[dead]
        reasons = {(d["key"], d["reason"]) for d in letters}
        assert reasons == {
            ("agent-0001", "agent agent-0001 is registered to tenant tenant-X; this heartbeat "
             "says tenant-1"),
            ("agent-0002", "agent agent-0002 is not registered; register it with POST "
             "/api/v1/agents/register before it sends heartbeats (or, for a demo, set "
             "AGENTWATCH_AGENTS_AUTO_REGISTER=true to register agents by their first heartbeat)"),
        }  # fmt: skip
        for letter in letters:  # the raw message, where it was read
            assert letter["topic"] == settings.topic("metrics")
            assert base64.b64decode(letter["value_b64"]) in beats
            assert orjson.loads(base64.b64decode(letter["value_b64"]))["agent_id"] == letter["key"]

        # restart from the recovery snapshot: the registry is kept
        assert flow.stop() == 0, flow.log()
        flow.start()
        later = [orjson.dumps(heartbeat(a, step)) for step in range(3, 5) for a in (0, 2)]
        produce(settings, later)
        wait_until(lambda: len(reader.poll()[dead]) >= 8, 60, "two more dead letters")
        assert {d["key"] for d in reader.by_topic[dead][6:]} == {"agent-0002"}

        # the projections
        def agents() -> list[tuple] | None:
            rows = client.query(
                f"SELECT tenant_id, agent_id, state, previous_state, reason, actor, "
                f"toUnixTimestamp64Milli(since) / 1000 AS since, quarantine_until, transitions "
                f"FROM {db}.agents FINAL ORDER BY agent_id"
            ).named_results()
            rows = list(rows)
            return rows if [r["state"] for r in rows] == ["active", "registered"] else None

        rows = wait_until(agents, 60, "the agents projection")
        first = AgentRecord.from_row(rows[0])
        assert (first.agent_id, first.tenant_id, first.state, first.previous) == (
            "agent-0000", "tenant-0", State.ACTIVE, State.REGISTERED
        )  # fmt: skip
        assert (first.since, first.transitions, first.quarantine_until) == (START, 2, None)
        assert rows[1]["tenant_id"] == "tenant-X" and rows[1]["previous_state"] is None
        registry = client.query(
            f"SELECT tenant_id, agent_id, name, agent_type, owner, capabilities, resources, "
            f"tags, endpoint, actor FROM {db}.agent_registry FINAL ORDER BY agent_id"
        ).result_rows
        assert registry == [
            ("tenant-0", "agent-0000", "Agent-0", "llm_worker", "team-ml", ["ml_inference"],
             {"cpu_cores": 4.0}, {"zone": "eu"}, None, "ops-1"),
            ("tenant-X", "agent-0001", "Agent-1", "llm_worker", "team-ml", [], {}, {}, None,
             "ops-1"),
        ]  # fmt: skip
    finally:
        reader.close()
        flow.stop()
        loader.stop()
        client.close()
