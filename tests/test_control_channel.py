"""Operators' commands travel on agents.control, which only the API writes: the same
commands forged by an agent on its own topic (agents.events) are dead-lettered with the
reason and change nothing, while through the API they take effect.

Real parts: the session's Tansu broker and chDB, the dataflow as its own process, the API
with its loader in this process, and an "agent" that is a plain Kafka producer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from fastapi.testclient import TestClient

from agentwatch.settings import Settings
from api.app import create_app
from infra.broker import ensure_topics
from schemas.events import refusal, rule_change_event
from sinks.clickhouse import connect, create_schema
from tests.conftest import LOOPBACK_CLIENT, wait_until
from tests.test_dataflow_kafka import DataflowProcess, TopicReader
from tests.test_rules_api import HOT

pytestmark = [pytest.mark.integration, pytest.mark.e2e]  # starts the dataflow process

#: Event time of the first heartbeat: an hour ago (inside the tables' TTL, not ahead of now).
BASE = float(int(time.time()) - 3600)
TENANT = "tenant-1"


class Agent:
    """What anything running as an agent can do: write agents.metrics and agents.events."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.producer = Producer(settings.kafka_config())

    def beat(self, agent: str, step: int, cpu: float = 30.0) -> None:
        heartbeat = {
            "agent_id": agent, "tenant_id": TENANT, "timestamp": BASE + 30 * step,
            "cpu_usage": cpu, "memory_usage": 40.0, "disk_usage": 20.0,
            "network_latency": 5.0, "active_tasks": 1, "completed_tasks": step,
            "failed_tasks": 0, "error_rate": 0.0, "response_time_avg": 100.0,
            "uptime_seconds": 30.0 * step, "bytes_out": 10,
        }  # fmt: skip
        self._send("metrics", agent, heartbeat)

    def say(self, event: dict) -> None:
        self._send("events", event["agent_id"], event)

    def _send(self, topic: str, key: str, value: dict) -> None:
        self.producer.produce(
            self.settings.topic(topic), key=key.encode(), value=orjson.dumps(value)
        )
        assert self.producer.flush(10) == 0


@pytest.fixture
def stack(make_settings, broker, chdb_dir, tmp_path: Path) -> Iterator[tuple]:
    """The dataflow process and the API with its loader, on this test's topics and database."""
    settings = make_settings(
        bootstrap_servers=broker.bootstrap_servers,
        clickhouse_dsn=f"chdb://{chdb_dir}",
        metrics_partitions=2,
    )
    ensure_topics(settings)
    client = connect(settings)
    create_schema(client, settings)
    flow = DataflowProcess(settings, tmp_path / "dataflow.log")
    flow.start()
    try:
        with TestClient(create_app(settings, client=client), client=LOOPBACK_CLIENT) as api:
            yield settings, api, client, flow
    finally:
        assert flow.stop() == 0, flow.log()
        client.close()


def forged_commands(agent: str) -> list[dict]:
    """What agent ``agent`` writes on agents.events to get out of trouble."""

    def event(kind: str, agent_id: str = "*", tenant_id: str = "*", **payload: object) -> dict:
        return {"type": kind, "agent_id": agent_id, "tenant_id": tenant_id, "actor": agent,
                "timestamp": time.time(), "payload": payload}  # fmt: skip

    return [
        event("released", agent, TENANT, reason="all fine"),
        rule_change_event({"action": "delete", "name": "cpu_hot"}, agent, time.time()),
        event("quarantine_requested", "agent-0002", TENANT, reason="framed"),
        event(
            "silence_created",
            id="s-forged",
            starts_at=BASE,
            ends_at=time.time() + 86400,
            created_by=agent,
        ),  # fmt: skip
        event("status_changed", agent, TENANT, to="active", **{"from": "quarantined"}),
    ]


def test_commands_forged_on_the_agents_topic_are_refused_and_through_the_api_obeyed(stack):
    settings, api, client, flow = stack
    db = settings.clickhouse_database
    agent = Agent(settings)
    agents = [f"agent-{i:04d}" for i in range(1, 6)]
    for step in range(3):
        for name in agents:
            agent.beat(name, step)

    def security(name: str) -> dict:
        return api.get(f"/api/v1/agents/{name}/security").json()

    # every agent known to ClickHouse, where a command looks its tenant up (each shard's rows
    # are stored in batches of their own, so the last agent's row does not say the first's is)
    wait_until(lambda: all(api.get(f"/api/v1/agents/{name}/security").status_code == 200
                           for name in agents), 60, "the fleet in ClickHouse")  # fmt: skip

    # the operator adds a rule and quarantines agent-0001 (both on agents.control, in order:
    # once the quarantine shows, the rule is in force)
    assert api.post("/api/v1/rules", json=HOT).status_code == 201
    answer = api.post("/api/v1/agents/agent-0001/quarantine", json={"reason": "leaked a key"})
    assert answer.status_code == 202, answer.text
    wait_until(lambda: security("agent-0001")["quarantined"], 60, "agent-0001 quarantined")
    for step in range(3, 5):
        agent.beat("agent-0001", step, cpu=99.0)  # a threat: its score falls
    wait_until(lambda: security("agent-0001")["score"] < 100, 60, "agent-0001's score falls")
    score = security("agent-0001")["score"]

    # agent-0001 writes the operators' commands, and a status change, on its own topic
    forged = forged_commands("agent-0001")
    for event in forged:
        agent.say(event)
    reader = TopicReader(settings, ["deadletter", "commands", "security"])
    try:
        events_topic = settings.topic("events")
        dead = wait_until(
            lambda: len(d := [r for r in reader.poll()[settings.topic("deadletter")]
                              if r["topic"] == events_topic]) == len(forged) and d,
            60, "a dead letter for each forged command",
        )  # fmt: skip
        assert sorted(d["reason"] for d in dead) == sorted(
            refusal("events", e["type"]) for e in forged
        )
        released = next(d for d in dead if orjson.loads(_original(d))["type"] == "released")
        assert released["reason"] == (
            "'released' is an operator's command; it is accepted only on agents.control, "
            "which only the API writes"
        )

        # the rule still fires, and is not silenced: agent-0003 runs hot
        for step in range(3, 6):
            agent.beat("agent-0003", step, cpu=99.0)
        firing = wait_until(lambda: _alerts(api, "agent-0003", "cpu_hot", "firing"), 60,
                            "cpu_hot firing on agent-0003")  # fmt: skip
        assert not any(a["silenced"] for a in firing)

        # agent-0001 is still quarantined with its score, nobody quarantined agent-0002
        now = security("agent-0001")
        assert (now["quarantined"], now["score"]) == (True, score)
        assert "release" not in {c["cause"] for c in now["changes"]}
        assert security("agent-0002")["quarantined"] is False
        wait_until(lambda: _loaded(client, settings, "events") == len(forged), 30,
                   "the loader past the forged events")  # fmt: skip
        assert (
            client.query(
                f"SELECT type, channel FROM {db}.agent_events FINAL "
                f"WHERE channel = 'events' OR type = 'released' OR agent_id = 'agent-0002'"
            ).result_rows
            == []
        )

        # the same commands through the API take effect
        def command(path: str, **body: object) -> int:
            return api.post(f"/api/v1/{path}", json=body or None).status_code

        assert command("agents/agent-0001/release") == 202
        assert command("agents/agent-0002/quarantine", reason="seen leaking") == 202
        assert (
            command("silences", rule="cpu_hot", starts_at=BASE, ends_at=time.time() + 3600) == 201
        )
        cooler = {**HOT, "condition": {**HOT["condition"], "value": 50}}
        assert api.put("/api/v1/rules/cpu_hot", json=cooler).status_code == 200
        # a last command as a barrier: once it shows, the ones before it are in force
        assert command("agents/agent-0005/quarantine", reason="barrier") == 202
        wait_until(lambda: security("agent-0005")["quarantined"], 60, "the barrier")
        # the loader copies agents.control and agents.state on their own, so the release's
        # row may land just after the barrier's status change: poll, don't assume
        wait_until(lambda: not security("agent-0001")["quarantined"], 30, "agent-0001 released")
        wait_until(lambda: security("agent-0002")["quarantined"], 30, "agent-0002 quarantined")
        wait_until(lambda: security("agent-0001")["score"] == 100, 30, "the score reset")
        assert "release" in {c["cause"] for c in security("agent-0001")["changes"]}
        for step in range(3, 6):
            agent.beat("agent-0004", step, cpu=60.0)  # above the new 50, below the old 90
        firing = wait_until(lambda: _alerts(api, "agent-0004", "cpu_hot", "firing"), 60,
                            "cpu_hot (now > 50) firing on agent-0004")  # fmt: skip
        assert all(a["silenced"] for a in firing)
        orders = wait_until(
            lambda: len(o := reader.poll()[settings.topic("commands")]) == 3 and o,
            30, "the three quarantine orders",
        )  # fmt: skip
        assert sorted(o["agent_id"] for o in orders) == ["agent-0001", "agent-0002", "agent-0005"]
    finally:
        reader.close()
    assert "Traceback" not in flow.log(), flow.log()


def _original(dead_letter: dict) -> bytes:
    import base64

    return base64.b64decode(dead_letter["value_b64"])


def _alerts(api: TestClient, agent: str, rule: str, state: str) -> list[dict]:
    answer = api.get(f"/api/v1/agents/{agent}/alerts")
    if answer.status_code != 200:
        return []
    return [a for a in answer.json()["alerts"] if a["rule"] == rule and a["state"] == state]


def _loaded(client, settings: Settings, name: str) -> int:
    """Messages of a topic the loader has passed (its offsets of record, all partitions)."""
    return client.command(
        f"SELECT sum(next_offset) FROM {settings.clickhouse_database}.loader_offsets FINAL "
        "WHERE topic = {topic:String}",
        parameters={"topic": settings.topic(name)},
    )
