"""Behaviour clusters in the API: the status shows an agent's cluster, the search filters by
it, ``GET /api/v1/orchestration/clusters`` counts a tenant's agents per cluster. The events
are the model's own (:class:`agentwatch.clusters.BehaviourClusters`), published on the
real broker's ``agents.state`` and folded by the API's projection."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
from confluent_kafka import Producer
from fastapi.testclient import TestClient

from agentwatch.clusters import BehaviourClusters
from agentwatch.identity import ALL_TENANTS, Role
from agentwatch.settings import Settings
from api.app import create_app
from infra.broker import ensure_topics
from sinks.clickhouse import connect
from tests.conftest import LOOPBACK_CLIENT, wait_until

START = 1_800_000_000.0
#: agent → (tenant, success_rate, response_time_ms): two fast reliable agents and one
#: slow unreliable agent in each tenant.
AGENTS = {
    "fast-1": ("t1", 0.99, 60.0),
    "fast-2": ("t1", 0.98, 70.0),
    "slow-1": ("t1", 0.55, 6000.0),
    "fast-3": ("t2", 0.99, 50.0),
    "slow-2": ("t2", 0.60, 5000.0),
    "slow-3": ("t2", 0.58, 7000.0),
}


def score(agent: str, at: float, success: float | None = None, ms: float | None = None) -> dict:
    tenant, usual_success, usual_ms = AGENTS[agent]
    success = usual_success if success is None else success
    return {
        "agent_id": agent, "tenant_id": tenant, "timestamp": at, "state": "active",
        "success_rate": success, "response_time_ms": usual_ms if ms is None else ms,
        "active_tasks": 0, "capacity": 4, "sla_met_rate": success, "cost": 0.5, "p_fail": None,
    }  # fmt: skip


def registered(agent: str) -> dict:
    return {
        "type": "registered", "agent_id": agent, "tenant_id": AGENTS[agent][0], "actor": "ops",
        "timestamp": START, "payload": {"name": agent, "agent_type": "bot", "owner": "ops"},
    }  # fmt: skip


def produce(settings: Settings, topic: str, events: list[dict]) -> None:
    producer = Producer(settings.kafka_config())
    for event in events:
        value = orjson.dumps(event)
        producer.produce(settings.topic(topic), key=event["agent_id"].encode(), value=value)
    assert producer.flush(10) == 0


@pytest.fixture
def door(settings: Settings) -> Iterator[tuple[TestClient, dict[str, dict], Settings]]:
    """The API (keys required) with the agents registered and clustered by the model."""
    settings = settings.model_copy(update={"api_auth_required": True})
    ensure_topics(settings)
    client = connect(settings)
    api = TestClient(create_app(settings, client=client, run_loader=False), client=LOOPBACK_CLIENT)
    with api:
        runtime = api.app.state.runtime
        headers = {
            name: {"Authorization": f"Bearer {runtime.keys.create(client, role, tenant, 't')[1]}"}
            for name, role, tenant in [
                ("admin", Role.ADMIN, ALL_TENANTS),
                ("t1", Role.ANALYST, "t1"),
                ("t2", Role.ANALYST, "t2"),
            ]
        }  # fmt: skip
        produce(settings, "control", [registered(agent) for agent in AGENTS])
        model = BehaviourClusters(n_clusters=2, warmup_records=len(AGENTS))
        events = [e for n, a in enumerate(AGENTS) for e in model.observe(score(a, START + n))]
        produce(settings, "state", events)
        projection = runtime.projection
        wait_until(
            lambda: (
                projection.ready
                and all(
                    projection.view(a) and projection.view(a).cluster is not None for a in AGENTS
                )
                and projection.directory.clusters
            ),
            30,
            "the projection to fold the clusters",
        )
        yield api, headers, {"model": model, "settings": settings}
    client.close()


def test_the_status_shows_the_agents_cluster_and_its_description(door):
    api, headers, _ = door
    fast = api.get("/api/v1/agents/fast-1/status", headers=headers["t1"])
    assert fast.status_code == 200, fast.text
    assert fast.json()["cluster"] == 0
    assert fast.json()["cluster_description"] == ("fast, reliable, meets deadlines, lightly loaded")
    slow = api.get("/api/v1/agents/slow-1/status", headers=headers["t1"]).json()
    assert slow["cluster"] == 1 and slow["cluster_description"].startswith("slow, unreliable")
    # another tenant's agent stays unknown, cluster or not
    assert api.get("/api/v1/agents/slow-2/status", headers=headers["t1"]).status_code == 404


def test_the_search_filters_by_cluster_within_the_tenant(door):
    api, headers, _ = door

    def found(query: str, who: str) -> list[str]:
        answer = api.get(f"/api/v1/agents/search?{query}", headers=headers[who])
        assert answer.status_code == 200, answer.text
        return [(item["agent_id"], item["cluster"]) for item in answer.json()["items"]]

    assert found("cluster=0", "t1") == [("fast-1", 0), ("fast-2", 0)]
    assert found("cluster=1", "t1") == [("slow-1", 1)]
    assert found("cluster=1", "t2") == [("slow-2", 1), ("slow-3", 1)]
    assert found("cluster=0", "admin") == [("fast-1", 0), ("fast-2", 0), ("fast-3", 0)]
    assert found("cluster=5", "admin") == []
    assert api.get("/api/v1/agents/search?cluster=-1", headers=headers["t1"]).status_code == 422
    refused = api.get("/api/v1/agents/search?cluster=0&tenant=t2", headers=headers["t1"])
    assert refused.status_code == 403


def test_the_clusters_list_counts_the_callers_tenant_only(door):
    api, headers, _ = door

    def sizes(who: str, query: str = "") -> dict[int, int]:
        answer = api.get(f"/api/v1/orchestration/clusters{query}", headers=headers[who])
        assert answer.status_code == 200, answer.text
        return {c["cluster"]: c["size"] for c in answer.json()["clusters"]}

    assert sizes("t1") == {0: 2, 1: 1}
    assert sizes("t2") == {0: 1, 1: 2}
    assert sizes("admin") == {0: 3, 1: 3}
    assert sizes("admin", "?tenant=t2") == {0: 1, 1: 2}
    listed = api.get("/api/v1/orchestration/clusters", headers=headers["t1"]).json()
    assert listed["tenant_id"] == "t1" and listed["clustered"] == 3
    assert listed["described_at"] is not None
    first = listed["clusters"][0]
    assert first["description"] == "fast, reliable, meets deadlines, lightly loaded"
    assert 50 < first["profile"]["response_time_ms"] < 80 and first["profile"]["p_fail"] is None
    refused = api.get("/api/v1/orchestration/clusters?tenant=t2", headers=headers["t1"])
    assert refused.status_code == 403 and refused.json()["detail"]
    assert api.get("/api/v1/orchestration/clusters").status_code == 401


def test_an_agent_that_changes_behaviour_moves_in_status_search_and_sizes(door):
    api, headers, context = door
    model, settings = context["model"], context["settings"]
    moves = [
        e
        for step in range(3)
        for e in model.observe(score("fast-1", START + 100 + step, success=0.5, ms=8000.0))
    ]
    assert [e["payload"]["cluster"] for e in moves if e["type"] == "cluster_changed"] == [1]
    produce(settings, "state", moves)
    wait_until(
        lambda: (
            api.get("/api/v1/agents/fast-1/status", headers=headers["t1"]).json()["cluster"] == 1
        ),
        30,
        "the move to be folded",
    )
    answer = api.get("/api/v1/orchestration/clusters", headers=headers["t1"]).json()
    assert {c["cluster"]: c["size"] for c in answer["clusters"]} == {0: 1, 1: 2}
    search = api.get("/api/v1/agents/search?cluster=1", headers=headers["t1"]).json()
    assert [i["agent_id"] for i in search["items"]] == ["fast-1", "slow-1"]
