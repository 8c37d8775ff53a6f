"""The REST bridge: agents post their heartbeats and events over HTTP, and the API
writes them to agents.metrics and agents.events (consumed back here from the broker)."""

from __future__ import annotations

import time

import orjson
from confluent_kafka import Consumer, TopicPartition
from fastapi.testclient import TestClient

from agentwatch.settings import Settings
from tests.test_credentials import Door, door  # noqa: F401  (the fixture)


def beat(**overrides: object) -> dict:
    values = {
        "timestamp": time.time(), "cpu_usage": 45.2, "memory_usage": 62.1, "disk_usage": 35.0,
        "network_latency": 12.5, "active_tasks": 3, "completed_tasks": 150, "failed_tasks": 2,
        "error_rate": 0.013, "response_time_avg": 234.5, "uptime_seconds": 86400,
    }  # fmt: skip
    return values | overrides


def consume(settings: Settings, channel: str, want: int) -> list[tuple[bytes, dict]]:
    """Every message of ``agents.<channel>`` (all partitions), polled until ``want`` came."""
    topic = settings.topic(channel)
    consumer = Consumer({**settings.kafka_config(), "group.id": "t"})
    partitions = consumer.list_topics(topic, timeout=5).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    got: list[tuple[bytes, dict]] = []
    deadline = time.monotonic() + 15
    while len(got) < want and time.monotonic() < deadline:
        for message in consumer.consume(100, timeout=0.5):
            if not message.error():
                got.append((message.key(), orjson.loads(message.value())))
    consumer.close()
    return got


def test_an_agent_sends_its_own_heartbeats_and_they_land_on_the_topic(door: Door):
    token = door.agent_key("agent-1")
    one = door.api.post("/api/v1/agents/agent-1/metrics", json=beat(), headers=door.auth(token))
    assert one.status_code == 202, one.text
    assert one.json() == {"accepted": 1, "topic": door.settings.topic("metrics")}
    batch = [beat(agent_id="agent-1", tenant_id="t1"), beat(status="busy")]
    two = door.api.post("/api/v1/agents/agent-1/metrics", json=batch, headers=door.auth(token))
    assert two.status_code == 202 and two.json()["accepted"] == 2

    landed = consume(door.settings, "metrics", 3)
    assert len(landed) == 3
    assert {key for key, _ in landed} == {b"agent-1"}
    assert all(v["agent_id"] == "agent-1" and v["tenant_id"] == "t1" for _, v in landed)
    assert [v.get("status") for _, v in landed].count("busy") == 1


def test_an_agent_may_not_speak_for_another_or_another_tenant(door: Door):
    token = door.agent_key("agent-1")
    door.agent_key("agent-9", tenant="t2")
    other = door.api.post("/api/v1/agents/agent-2/metrics", json=beat(), headers=door.auth(token))
    assert other.status_code == 403 and "may speak only for agent-1" in other.json()["detail"]
    tenant = door.api.post(
        "/api/v1/agents/agent-1/metrics", json=beat(tenant_id="t2"), headers=door.auth(token)
    )
    assert tenant.status_code == 403 and "not t2" in tenant.json()["detail"]
    body_agent = door.api.post(
        "/api/v1/agents/agent-1/metrics", json=beat(agent_id="agent-2"), headers=door.auth(token)
    )
    assert body_agent.status_code == 422 and "not the agent of the path" in body_agent.text
    # operators of the agent's tenant may post for it; of another tenant, it does not exist
    ops = door.api.post(
        "/api/v1/agents/agent-1/metrics", json=beat(), headers=door.auth("operator of t1")
    )
    assert ops.status_code == 202, ops.text
    foreign = door.api.post(
        "/api/v1/agents/agent-9/metrics", json=beat(), headers=door.auth("operator of t1")
    )
    assert foreign.status_code == 404
    analyst = door.api.post(
        "/api/v1/agents/agent-1/metrics", json=beat(), headers=door.auth("analyst of t1")
    )
    assert analyst.status_code == 403


def test_a_heartbeat_the_dataflow_would_refuse_is_a_422_with_the_reason(door: Door):
    token = door.agent_key("agent-1")
    for bad, says in [
        (beat(cpu_usage=140), "cpu_usage"),
        (beat(active_tasks=1.5), "active_tasks"),
        ({"cpu_usage": 1}, "timestamp"),
        (beat(colour="red"), "colour"),
        (beat(status="asleep"), "status"),
    ]:
        answer = door.api.post("/api/v1/agents/agent-1/metrics", json=bad, headers=door.auth(token))
        assert answer.status_code == 422, (bad, answer.text)
        assert says in answer.json()["message"], (says, answer.json()["message"])
    too_many = door.api.post(
        "/api/v1/agents/agent-1/metrics", json=[beat()] * 1001, headers=door.auth(token)
    )
    assert too_many.status_code == 422


def test_an_agent_sends_its_events_and_only_its_own_kinds(door: Door):
    token = door.agent_key("agent-1")
    path = "/api/v1/agents/agent-1/events"
    talk = {"type": "conversation", "payload": {"counterpart": "agent-2", "text": "hi"}}
    assert door.api.post(path, json=talk, headers=door.auth(token)).status_code == 202
    done = {"type": "task_completed", "payload": {"task_id": "t-7"}, "timestamp": time.time()}
    assert door.api.post(path, json=done, headers=door.auth(token)).status_code == 202
    release = door.api.post(path, json={"type": "released"}, headers=door.auth(token))
    assert release.status_code == 422
    assert "accepted only on agents.control" in release.json()["message"]
    empty = door.api.post(
        path,
        json={"type": "conversation", "payload": {"counterpart": "x"}},
        headers=door.auth(token),
    )
    assert empty.status_code == 422 and "text or a summary" in empty.json()["message"]

    landed = consume(door.settings, "events", 2)
    assert [v["type"] for _, v in landed] == ["conversation", "task_completed"]
    assert all(v["actor"] == "agent-1" and v["tenant_id"] == "t1" for _, v in landed)


def test_agents_post_from_other_machines_with_their_key_operators_do_not(door: Door):
    token = door.agent_key("agent-1")
    remote = TestClient(door.api.app, client=("203.0.113.9", 40000))
    path = "/api/v1/agents/agent-1/metrics"
    assert remote.post(path, json=beat(), headers=door.auth(token)).status_code == 202
    ops = remote.post(path, json=beat(), headers=door.auth("operator of t1"))
    assert ops.status_code == 403 and "loopback" in ops.json()["detail"]
    assert remote.post("/api/v1/silences", headers=door.auth(token)).status_code == 403
    revoked = remote.post(path, json=beat(), headers=door.auth("aw_0123456789ab_" + "x" * 43))
    assert revoked.status_code == 401
