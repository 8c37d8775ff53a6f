"""The agent's Python client, round trip: register, heartbeats and events over the
bridge and over Kafka (consumed back from the real broker), rotation.

``POST /api/v1/agents/register`` is built on another branch; until it is merged this
test mounts a stub of its contract (request: ``Registration`` + ``tenant_id`` + optional
``agent_id``; answer 201 ``{agent_id, tenant_id, name, state, credential: {key_id,
token, expires_at}}``; 409 on a duplicate name). With the real route present the
stub is not mounted.
"""

from __future__ import annotations

import gc
import threading
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import uvicorn
from fastapi import APIRouter, HTTPException, Request
from pydantic import SecretStr

from agentwatch.identity import Role
from agentwatch.settings import Settings
from api.app import create_app
from api.client import AgentClient, AgentClientError
from infra.broker import ensure_topics, free_port
from infra.cli import _registers, admin_key_file
from infra.simulate import SimulationError, SimulationOptions, register_fleet, run_simulation
from tests.conftest import wait_until
from tests.test_bridge import consume
from tests.test_credentials import Door, door  # noqa: F401  (the fixture)

REGISTER = "/api/v1/agents/register"
METRICS = {
    "cpu_usage": 41.0, "memory_usage": 60.2, "disk_usage": 30.0, "network_latency": 12.0,
    "active_tasks": 2, "completed_tasks": 10, "failed_tasks": 0, "error_rate": 0.0,
    "response_time_avg": 230.0, "uptime_seconds": 3600,
}  # fmt: skip
REGISTRATION = {"name": "summariser-1", "agent_type": "llm_worker", "owner": "team-ml"}


def stub_register(app: object) -> None:
    """The register route's contract, if the app has no such route yet."""
    if REGISTER in app.openapi()["paths"]:
        return
    app.openapi_schema = None
    router = APIRouter()
    names: set[tuple[str, str]] = set()

    @router.post(REGISTER, status_code=201)
    def register(body: dict, request: Request) -> dict:
        tenant, name = body["tenant_id"], body["name"]
        if (tenant, name) in names:
            raise HTTPException(409, detail=f"an agent named {name!r} exists in {tenant}")
        names.add((tenant, name))
        agent_id = body.get("agent_id") or f"agent-{uuid.uuid4().hex[:8]}"
        runtime = request.app.state.runtime
        with runtime.clients.client() as client:
            stored, token = runtime.keys.create(
                client, Role.AGENT, tenant, "stub", agent_id=agent_id, ttl_s=3600
            )
        return {
            "agent_id": agent_id, "tenant_id": tenant, "name": name, "state": "registered",
            "credential": {
                "key_id": stored.key_id, "token": token, "expires_at": stored.expires_at
            },
        }  # fmt: skip

    app.include_router(router)


def test_register_then_heartbeats_and_events_over_the_bridge(door: Door):
    stub_register(door.api.app)
    admin = door.tokens["admin"]
    agent = AgentClient.register(
        "http://testserver", admin, REGISTRATION, tenant_id="t1", http=door.api
    )
    assert agent.tenant_id == "t1" and agent.token.startswith("aw_")
    agent.heartbeat(**METRICS)
    agent.heartbeat(**METRICS, status="busy")
    agent.conversation(counterpart="agent-7", text="here is the summary")
    agent.task_completed(task_id="t-42")
    agent.task_failed(task_id="t-43", reason="timeout")

    beats = consume(door.settings, "metrics", 2)
    assert [(k, v["agent_id"], v["tenant_id"]) for k, v in beats] == [
        (agent.agent_id.encode(), agent.agent_id, "t1")
    ] * 2
    events = consume(door.settings, "events", 3)
    assert [v["type"] for _, v in events] == ["conversation", "task_completed", "task_failed"]
    assert events[2][1]["payload"] == {"task_id": "t-43", "reason": "timeout"}

    with pytest.raises(AgentClientError) as refused:
        agent.heartbeat(**METRICS | {"cpu_usage": 140})
    assert "cpu_usage" in str(refused.value) and refused.value.status == 0  # never sent
    with pytest.raises(AgentClientError, match="accepted only on agents.control"):
        agent.event("released", {})
    with pytest.raises(AgentClientError) as duplicate:
        AgentClient.register("http://testserver", admin, REGISTRATION, "t1", http=door.api)
    assert duplicate.value.status == 409

    old = agent.token
    door.now[0] += 1  # (the door's clock stands still otherwise: keys list by creation)
    key_id = agent.rotate()
    assert agent.token != old and agent.token.startswith(f"aw_{key_id}_")
    agent.heartbeat(**METRICS)  # with the new key
    assert [k["key_id"] for k in agent.credentials()][-1] == key_id


def test_heartbeats_and_events_straight_to_kafka(door: Door):
    stub_register(door.api.app)
    agent = AgentClient.register(
        "http://testserver", door.tokens["operator of t1"], REGISTRATION, tenant_id="t1",
        agent_id="agent-k", http=door.api, transport="kafka",
        bootstrap_servers=door.settings.bootstrap_servers, topic_prefix=door.settings.topic_prefix,
    )  # fmt: skip
    assert agent.agent_id == "agent-k"
    agent.heartbeat(**METRICS)
    agent.conversation(counterpart="agent-7", summary="asked for the report")
    agent.flush()
    [(key, beat)] = consume(door.settings, "metrics", 1)
    assert key == b"agent-k" and beat["tenant_id"] == "t1" and beat["cpu_usage"] == 41.0
    [(_, event)] = consume(door.settings, "events", 1)
    assert event["type"] == "conversation" and event["actor"] == "agent-k"
    agent.close()


@pytest.fixture
def served(settings: Settings) -> Iterator[tuple[str, Settings, object]]:
    """The API (keys required, the stack's admin key file) under uvicorn in a thread."""
    port = free_port()
    settings = settings.model_copy(
        update={
            "api_auth_required": True,
            "api_admin_key_file": admin_key_file(settings),
            "api_port": port,
        }
    )
    ensure_topics(settings)
    app = create_app(settings, run_loader=False)
    stub_register(app)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="client-api", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 30, "the API under uvicorn")
        # (not a stack `agentwatch up` runs: the CLI and the simulator send the admin key
        # file only to such a stack's own API, so here it is given as AGENTWATCH_API_KEY)
        token = admin_key_file(settings).read_text().strip()
        settings = settings.model_copy(update={"api_key": SecretStr(token)})
        yield f"http://127.0.0.1:{port}", settings, app
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        assert not thread.is_alive(), "the API did not stop within 20 s"


def test_the_simulator_registers_its_fleet_before_its_heartbeats(served):
    url, settings, app = served
    agents = 100
    options = SimulationOptions(
        agents=agents, count=agents, rate=0, tenants=2, register_api_url=url
    )
    started = time.monotonic()
    result = run_simulation(settings, options, show_progress=False)
    elapsed = time.monotonic() - started
    assert result.sent == agents and result.delivery_errors == 0
    runtime = app.state.runtime
    with runtime.clients.client() as client:
        keys = [runtime.keys.of_agent(client, f"agent-{i:06d}") for i in range(agents)]
    assert all(len(k) == 1 and k[0].role is Role.AGENT for k in keys)
    assert {k[0].tenant_id for k in keys} == {"tenant-000", "tenant-001"}
    print(f"registered and sent {agents} agents in {elapsed:.2f} s")
    # a second run finds them registered (409) and goes on
    assert run_simulation(settings, options, show_progress=False).sent == agents
    gc.collect()  # the simulator's Kafka sink and its producer form a cycle: let them go now


def test_the_simulator_registers_when_the_dataflow_does_not():
    assert _registers(SimpleNamespace(agents_auto_register=False), None) is True
    assert _registers(SimpleNamespace(agents_auto_register=True), None) is False
    assert _registers(SimpleNamespace(), None) is False  # before the setting exists: auto
    assert _registers(SimpleNamespace(agents_auto_register=True), True) is True  # as asked
    assert _registers(SimpleNamespace(agents_auto_register=False), False) is False


def test_the_simulator_says_what_to_do_when_the_api_is_not_there(settings: Settings):
    from agentwatch.simulator import FleetSimulator

    with pytest.raises(SimulationError, match="AGENTS_AUTO_REGISTER"):
        register_fleet(
            settings, FleetSimulator(2), f"http://127.0.0.1:{free_port()}",
            threading.Event(), show_progress=False, wait_s=0.5,
        )  # fmt: skip
