"""Registration, search and status from the in-memory projection, on the real broker and chDB.

The app runs without the loader: what the status shows comes from the topics (through
the projection) and, once per agent, from ClickHouse (its seed).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest
from clickhouse_connect.driver.client import Client
from confluent_kafka import Producer
from fastapi.testclient import TestClient

from agentwatch.directory import agent_id_for
from agentwatch.identity import Role
from agentwatch.settings import Settings
from api.app import create_app
from infra.broker import ensure_topics
from sinks.clickhouse import connect
from tests.conftest import LOOPBACK_CLIENT, wait_until


class CountingClient:
    """A ClickHouse client that counts the queries made through it."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self.queries = 0

    def query(self, *args, **kwargs):
        self.queries += 1
        return self._client.query(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._client, name)


def body(name: str = "Agent-001", tenant: str = "t1", **extra: object) -> dict:
    return {
        "name": name,
        "agent_type": "ml_processor",
        "owner": "team-ml",
        "tenant_id": tenant,
        "capabilities": ["ml_inference", "batch"],
        "resources": {"cpu_cores": 4, "gpu": 1},
        "tags": {"env": "prod"},
        "version": "1.2.0",
        "endpoint": "https://agent-001.internal:8443",
        **extra,
    }


def start(settings: Settings, **overrides: object) -> tuple[TestClient, CountingClient]:
    settings = settings.model_copy(update=overrides)
    ensure_topics(settings)
    client = CountingClient(connect(settings))
    api = TestClient(create_app(settings, client=client, run_loader=False), client=LOOPBACK_CLIENT)
    return api, client


@pytest.fixture
def api(settings: Settings) -> Iterator[tuple[TestClient, CountingClient, Settings]]:
    test_client, client = start(settings, agents_per_tenant_limit=3)
    with test_client:
        wait_until(lambda: test_client.app.state.runtime.projection.ready, 30, "projection ready")
        yield test_client, client, settings
    client.close()


def produce(settings: Settings, topic: str, records: list[dict], key: str) -> None:
    producer = Producer(settings.kafka_config())
    for record in records:
        producer.produce(settings.topic(topic), key=key.encode(), value=orjson.dumps(record))
    assert producer.flush(10) == 0


def test_register_answers_201_with_id_and_credential_and_refuses_a_duplicate(api):
    test_client, _, settings = api
    answer = test_client.post("/api/v1/agents/register", json=body())
    assert answer.status_code == 201, answer.text
    made = answer.json()
    assert made["agent_id"] == agent_id_for("t1", "Agent-001")
    assert (made["tenant_id"], made["name"], made["state"]) == ("t1", "Agent-001", "registered")
    credential = made["credential"]
    assert credential["token"].startswith(f"aw_{credential['key_id']}_")
    expires = credential["expires_at"]
    assert expires is not None
    runtime = test_client.app.state.runtime
    with runtime.clients.client() as client:
        stored = runtime.keys.get(client, credential["key_id"])
    assert (stored.role, stored.agent_id, stored.tenant_id) == (Role.AGENT, made["agent_id"], "t1")
    assert stored.expires_at - stored.created_at == pytest.approx(settings.agent_credential_ttl_s)
    # at once, in this process: the same name again is a 409 saying what to do
    again = test_client.post("/api/v1/agents/register", json=body(agent_id="other-id"))
    assert again.status_code == 409
    assert "already has an agent named 'Agent-001'" in again.json()["detail"]
    # the same name in another tenant is another agent
    other = test_client.post("/api/v1/agents/register", json=body(tenant="t2"))
    assert other.status_code == 201 and other.json()["agent_id"] != made["agent_id"]
    # the status shows the registration, from memory
    status = test_client.get(f"/api/v1/agents/{made['agent_id']}/status").json()
    assert (status["lifecycle_state"], status["name"], status["owner"]) == (
        "registered",
        "Agent-001",
        "team-ml",
    )
    assert status["agent_type"] == "ml_processor" and status["orphaned"] is False
    assert status["metrics"] is None and status["tenant_id"] == "t1"


def test_a_tenant_at_its_limit_is_refused_saying_the_limit_and_what_to_do(api):
    test_client, _, _ = api
    for i in range(3):
        made = test_client.post("/api/v1/agents/register", json=body(f"bot-{i}"))
        assert made.status_code == 201, made.text
    refused = test_client.post("/api/v1/agents/register", json=body("bot-3"))
    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert "3/3 agents" in detail and "AGENTWATCH_AGENTS_PER_TENANT_LIMIT" in detail
    assert "decommission" in detail
    assert test_client.post("/api/v1/agents/register", json=body("bot-3", "t2")).status_code == 201


@pytest.mark.parametrize(
    "change",
    [
        {"endpoint": "ftp://agent.internal/"},
        {"endpoint": "https://"},
        {"endpoint": "agent.internal:8443"},
        {"endpoint": "https://user:s3cretpass@agent.internal:8443/"},  # (shown, audited)
        {"agent_id": "x/y"},  # (no URL path could name it)
        {"agent_id": ".."},
        {"tenant_id": "*"},
        {"name": ""},
        {"tags": {"bad key": "x"}},
        {"unknown": 1},
    ],
)
def test_a_bad_registration_is_422_saying_what(api, change):
    test_client, _, _ = api
    answer = test_client.post("/api/v1/agents/register", json=body() | change)
    assert answer.status_code == 422, answer.text
    assert answer.json()["message"]


@pytest.mark.parametrize("scheme", ["http", "https", "grpc", "ws"])
def test_endpoint_schemes_accepted(api, scheme):
    test_client, _, _ = api
    answer = test_client.post(
        "/api/v1/agents/register", json=body(f"a-{scheme}", endpoint=f"{scheme}://h:1")
    )
    assert answer.status_code == 201, answer.text


def test_an_operator_of_one_tenant_cannot_register_in_another(settings: Settings):
    test_client, client = start(settings, api_auth_required=True)
    with test_client:
        runtime = test_client.app.state.runtime
        _, token = runtime.keys.create(client, Role.OPERATOR, "t1", "test")
        _, analyst = runtime.keys.create(client, Role.ANALYST, "t1", "test")
        wait_until(lambda: runtime.projection.ready, 30, "projection ready")
        headers = {"Authorization": f"Bearer {token}"}
        refused = test_client.post(
            "/api/v1/agents/register", json=body(tenant="t2"), headers=headers
        )
        assert refused.status_code == 403 and refused.json()["detail"]
        made = test_client.post("/api/v1/agents/register", json=body(tenant="t1"), headers=headers)
        assert made.status_code == 201
        # an analyst reads but does not register
        headers = {"Authorization": f"Bearer {analyst}"}
        refused = test_client.post("/api/v1/agents/register", json=body("b"), headers=headers)
        assert refused.status_code == 403
        # a tenant's key searches its own tenant only
        found = test_client.get("/api/v1/agents/search", headers=headers).json()
        assert {a["tenant_id"] for a in found["items"]} == {"t1"}
        other = test_client.get("/api/v1/agents/search?tenant=t2", headers=headers)
        assert other.status_code == 403
    client.close()


def test_status_is_answered_from_memory_without_a_query_per_request(api):
    test_client, client, settings = api
    agent_id = test_client.post("/api/v1/agents/register", json=body()).json()["agent_id"]
    now = time.time()
    beat = {
        "agent_id": agent_id,
        "tenant_id": "t1",
        "timestamp": now,
        "cpu_usage": 42.0,
        "memory_usage": 50.0,
        "disk_usage": 10.0,
        "network_latency": 5.0,
        "active_tasks": 1,
        "completed_tasks": 10,
        "failed_tasks": 0,
        "error_rate": 0.0,
        "response_time_avg": 100.0,
        "uptime_seconds": 3600.0,
        "status": "busy",
    }
    produce(settings, "metrics", [beat], agent_id)
    state = {
        "type": "status_changed",
        "agent_id": agent_id,
        "tenant_id": "t1",
        "actor": "system",
        "timestamp": now,
        "payload": {"from": "registered", "to": "busy", "reason": "beat"},
    }
    health = {**state, "type": "health_changed", "payload": {"health": 64.0, "band": "fair"}}
    produce(settings, "state", [state, health], agent_id)
    score = {
        "agent_id": agent_id,
        "tenant_id": "t1",
        "timestamp": now,
        "score": 70.0,
        "delta": -30.0,
        "cause": "data_exfiltration",
    }
    produce(settings, "security", [score], agent_id)
    projection = test_client.app.state.runtime.projection

    def folded():
        view = projection.view(agent_id)
        return projection.heartbeat_at(agent_id) and view.health and view.security_score

    wait_until(folded, 30, "the projection to fold the heartbeat, state, health and score")
    first = test_client.get(f"/api/v1/agents/{agent_id}/status")  # seeds from ClickHouse once
    assert first.status_code == 200, first.text
    before = client.queries
    for _ in range(5):
        status = test_client.get(f"/api/v1/agents/{agent_id}/status").json()
    assert client.queries == before, "a status request of a known agent queried ClickHouse"
    assert status["metrics"]["cpu_usage"] == 42.0 and status["metrics"]["status"] == "busy"
    assert status["lifecycle_state"] == "busy" and status["health"] == 64.0
    assert status["health_band"] == "fair" and status["security_score"] == 70.0
    assert status["seconds_since_heartbeat"] < 60 and status["quarantined"] is False
    # a newer heartbeat is seen without a query either
    produce(settings, "metrics", [beat | {"timestamp": now + 30, "cpu_usage": 77.0}], agent_id)
    wait_until(
        lambda: (
            test_client.get(f"/api/v1/agents/{agent_id}/status").json()["metrics"]["cpu_usage"]
            == 77.0
        ),
        30,
        "the newer heartbeat",
    )
    assert client.queries == before
    stats = projection.stats()
    assert stats["ready"] and stats["messages"]["metrics"] >= 2


def test_search_filters_pages_and_sorts(api):
    test_client, _, settings = api
    made = {}
    for name, tenant, extra in [
        ("alpha", "t1", {"tags": {"env": "prod"}, "capabilities": ["a", "b"]}),
        ("beta", "t1", {"tags": {"env": "dev"}, "capabilities": ["a"], "agent_type": "bot"}),
        ("gamma", "t1", {"tags": {"env": "prod"}, "owner": "ops"}),
        ("delta", "t2", {"tags": {}}),
    ]:
        answer = test_client.post("/api/v1/agents/register", json=body(name, tenant, **extra))
        assert answer.status_code == 201, answer.text
        made[name] = answer.json()["agent_id"]

    def names(query: str) -> list[str]:
        answer = test_client.get(f"/api/v1/agents/search?{query}")
        assert answer.status_code == 200, answer.text
        return [item["name"] for item in answer.json()["items"]]

    assert names("tenant=t1") == ["alpha", "beta", "gamma"]
    assert names("") == ["alpha", "beta", "delta", "gamma"]  # a key of every tenant: all
    assert names("tag=env=prod") == ["alpha", "gamma"]
    assert names("tag=env=prod&capability=a") == ["alpha"]
    assert names("capability=a&capability=b") == ["alpha"]
    assert names("type=bot") == ["beta"]
    assert names("text=OPS") == ["gamma"]
    assert names("state=registered&tenant=t2") == ["delta"]
    assert names("state=active") == []
    assert names("min_score=0&max_score=100&tenant=t1") == ["alpha", "beta", "gamma"]
    assert names("max_score=50") == []  # all at the initial score
    assert names("orphaned=false&tenant=t1") == ["alpha", "beta", "gamma"]
    assert names("sort=name&order=desc&tenant=t1") == ["gamma", "beta", "alpha"]
    page = test_client.get("/api/v1/agents/search?tenant=t1&limit=2&offset=1").json()
    assert page["total"] == 3 and [i["name"] for i in page["items"]] == ["beta", "gamma"]
    assert page["items"][0]["capabilities"] == ["a"] and page["items"][0]["tags"] == {"env": "dev"}
    bad = test_client.get("/api/v1/agents/search?tag=novalue")
    assert bad.status_code == 422 and bad.json()["message"]
    assert test_client.get("/api/v1/agents/search?sort=colour").status_code == 422


def test_the_projection_reads_registrations_from_the_beginning(api):
    """A second API process (a new app on the same topics) knows what the first registered."""
    test_client, _, settings = api
    agent_id = test_client.post("/api/v1/agents/register", json=body()).json()["agent_id"]
    second, client = start(settings, agents_per_tenant_limit=3)
    with second:
        projection = second.app.state.runtime.projection
        wait_until(lambda: projection.ready, 30, "second projection ready")
        assert projection.view(agent_id).name == "Agent-001"
        refused = second.post("/api/v1/agents/register", json=body())
        assert refused.status_code == 409
    client.close()


def test_the_projection_is_ready_without_the_topics_and_adds_them_when_they_appear(
    settings: Settings,
):
    client = connect(settings)
    with TestClient(create_app(settings, client=client, run_loader=False)) as test_client:
        projection = test_client.app.state.runtime.projection
        wait_until(lambda: projection.ready, 30, "projection ready without its topics")
        ensure_topics(settings)
        produce(
            settings,
            "control",
            [
                {
                    "type": "registered",
                    "agent_id": "late-1",
                    "tenant_id": "t1",
                    "actor": "ops",
                    "timestamp": time.time(),
                    "payload": {"name": "late", "agent_type": "bot", "owner": "o"},
                }
            ],
            "late-1",
        )
        wait_until(lambda: projection.view("late-1"), 30, "the registration on the new topic")
    client.close()


def test_an_agent_id_the_projection_knows_cannot_be_registered(api):
    test_client, _, settings = api
    beat = {
        "type": "status_changed",
        "agent_id": "auto-1",
        "tenant_id": "t1",
        "actor": "system",
        "timestamp": time.time(),
        "payload": {"to": "active", "reason": "first heartbeat"},
    }
    produce(settings, "state", [beat], "auto-1")
    projection = test_client.app.state.runtime.projection
    wait_until(lambda: projection.view("auto-1"), 30, "the auto-registered agent")
    refused = test_client.post("/api/v1/agents/register", json=body(agent_id="auto-1"))
    assert refused.status_code == 409 and "known already" in refused.json()["detail"]
    status = test_client.get("/api/v1/agents/auto-1/status").json()
    assert status["orphaned"] and "no owner" in status["orphan_reason"]
