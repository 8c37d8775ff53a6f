"""POST /api/v1/agents/bulk-operation: a result per id, in order; one agents.control event
per accepted id, read back from the real broker; other tenants' agents refused as unknown;
the events audited with the caller's key as their actor."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
import pytest
from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, TopicPartition
from fastapi.testclient import TestClient

from agentwatch.identity import ALL_TENANTS, Role
from agentwatch.settings import Settings
from api.app import create_app
from api.client_pool import ClientPool
from api.routes.bulk import BULK_MAX_AGENTS, BulkOperationResult
from api.tenants import ClickHouseTenants
from infra.broker import ensure_topics, free_port
from sinks.audit import AuditWriter
from sinks.clickhouse import connect
from tests.conftest import LOOPBACK_CLIENT, wait_until
from tests.test_api import METRIC_COLUMNS, heartbeat_row

OWN = ["own-1", "own-2", "own-3"]
OTHER = "other-1"
REGISTERED_ONLY = "fresh-1"  # registered in t1, no heartbeat yet
PATH = "/api/v1/agents/bulk-operation"


def heartbeats(tenant: str, agents: list[str]) -> list[tuple]:
    return [(a, tenant, *heartbeat_row(a, 30)[2:]) for a in agents]


def register(client: Client, settings: Settings, agent: str, tenant: str) -> None:
    client.insert(
        "agent_events",
        [("registered", agent, tenant, "ops", heartbeat_row(agent, 60)[2], "{}", "control")],
        column_names=("type", "agent_id", "tenant_id", "actor", "timestamp", "payload", "channel"),
        database=settings.clickhouse_database,
    )


@pytest.fixture
def door(settings: Settings) -> Iterator[tuple[TestClient, dict[str, dict], Client, Settings]]:
    """The app with keys required, three agents of t1 (and one only registered), one of t2;
    headers of an operator of t1, an analyst of t1 and an admin of every tenant."""
    settings = settings.model_copy(update={"api_auth_required": True})
    ensure_topics(settings)
    client = connect(settings)
    app = create_app(settings, client=client, run_loader=False)
    with TestClient(app, client=LOOPBACK_CLIENT) as api:
        client.insert(
            "metrics",
            heartbeats("t1", OWN) + heartbeats("t2", [OTHER]),
            column_names=METRIC_COLUMNS,
            database=settings.clickhouse_database,
        )
        register(client, settings, REGISTERED_ONLY, "t1")
        book = app.state.runtime.keys
        headers = {}
        for name, role, tenant in (
            ("operator", Role.OPERATOR, "t1"),
            ("analyst", Role.ANALYST, "t1"),
            ("admin", Role.ADMIN, ALL_TENANTS),
        ):
            stored, token = book.create(client, role, tenant, "test", name=name)
            headers[name] = {"Authorization": f"Bearer {token}", "key_id": stored.key_id}
        yield api, headers, client, settings
    client.close()


def auth(headers: dict) -> dict:
    return {"Authorization": headers["Authorization"]}


def control_events(settings: Settings, count: int, timeout_s: float = 20) -> list[dict]:
    """Every message of agents.control once ``count`` have come (and a little more, to see
    that no more come), as (key, event) in arrival order per partition."""
    consumer = Consumer({**settings.kafka_config(), "group.id": "bulk",
                         "enable.auto.commit": False})  # fmt: skip
    topic = settings.topic("control")
    partitions = consumer.list_topics(topic, timeout=5).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    found: list[dict] = []
    deadline = time.monotonic() + timeout_s
    quiet_until = None
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(5000, 0.2)
            found += [
                {"key": m.key().decode(), **orjson.loads(m.value())}
                for m in batch
                if m.error() is None
            ]
            if len(found) >= count:
                quiet_until = quiet_until or time.monotonic() + 0.5
                if time.monotonic() >= quiet_until:
                    break
    finally:
        consumer.close()
    return [e for e in found if not e["type"].startswith("key_")]  # the keys the fixture made


def test_each_id_gets_its_result_in_order_and_each_accepted_one_its_event(door):
    api, headers, _, settings = door
    until = time.time() + 3600
    ids = [OWN[0], OTHER, "ghost", OWN[1], REGISTERED_ONLY]
    answer = api.post(
        PATH,
        json={"operation": "quarantine", "agent_ids": ids, "reason": "incident 42", "until": until},
        headers=auth(headers["operator"]),
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    BulkOperationResult.model_validate(body)  # the documented shape
    assert [r["agent_id"] for r in body["results"]] == ids
    assert [r["status"] for r in body["results"]] == [
        "accepted", "refused", "refused", "accepted", "accepted"
    ]  # fmt: skip
    assert body["totals"] == {"requested": 5, "successful": 3, "failed": 2}
    other, ghost = body["results"][1]["reason"], body["results"][2]["reason"]
    # another tenant's agent is refused exactly as one that does not exist: no oracle
    assert other.replace(OTHER, "X") == ghost.replace("ghost", "X") and "unknown" in ghost
    assert body["event_type"] == "quarantine_requested"
    assert "may still refuse" in body["note"]
    actor = f"key:{headers['operator']['key_id']}"
    assert body["actor"] == actor

    events = control_events(settings, 3)
    assert sorted(e["key"] for e in events) == sorted([OWN[0], OWN[1], REGISTERED_ONLY])
    for event in events:
        assert event["type"] == "quarantine_requested"
        assert event["agent_id"] == event["key"] and event["tenant_id"] == "t1"
        assert event["actor"] == actor
        assert event["payload"] == {"reason": "incident 42", "until": until}


def record_state(client: Client, settings: Settings, agent: str, tenant: str, state: str) -> None:
    """Write the dataflow's ``status_changed`` of the agent (it does not run here)."""
    client.insert(
        "agent_events",
        [("status_changed", agent, tenant, "system", datetime.now(UTC), orjson.dumps(
            {"to": state}).decode(), "state")],
        column_names=("type", "agent_id", "tenant_id", "actor", "timestamp", "payload", "channel"),
        database=settings.clickhouse_database,
    )  # fmt: skip
    time.sleep(0.002)  # the next one is later


def test_every_operation_publishes_the_single_routes_event(door):
    api, headers, client, settings = door
    # operation: (its event, the state the dataflow would record after it)
    expected = {
        "quarantine": ("quarantine_requested", "quarantined"),
        "release": ("released", "active"),
        "maintenance": ("maintenance_requested", "maintenance"),
        "end_maintenance": ("maintenance_ended", "active"),
        "decommission": ("decommission_requested", "decommissioning"),
        "restart": ("restart_requested", None),
    }
    for operation, (_, then) in expected.items():
        answer = api.post(
            PATH,
            json={"operation": operation, "agent_ids": [OWN[2]], "reason": f"why {operation}"},
            headers=auth(headers["admin"]),
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["totals"]["successful"] == 1, answer.text
        if then is not None:
            record_state(client, settings, OWN[2], "t1", then)
    events = control_events(settings, len(expected))
    assert [e["type"] for e in events] == [kind for kind, _ in expected.values()]  # one key
    assert [e["payload"] for e in events] == [{"reason": f"why {op}"} for op in expected]
    # the admin of every tenant acts on any tenant's agent
    record_state(client, settings, OTHER, "t2", "quarantined")
    answer = api.post(
        PATH,
        json={"operation": "release", "agent_ids": [OTHER]},
        headers=auth(headers["admin"]),
    )
    assert answer.json()["totals"]["successful"] == 1
    (released,) = [e for e in control_events(settings, 7) if e["key"] == OTHER]
    assert released["tenant_id"] == "t2" and released["payload"] == {"reason": ""}


def test_an_id_the_lifecycle_table_refuses_is_refused_with_its_reason(door):
    api, headers, client, settings = door
    record_state(client, settings, OWN[1], "t1", "quarantined")
    record_state(client, settings, OWN[2], "t1", "decommissioned")
    answer = api.post(
        PATH,
        json={"operation": "release", "agent_ids": OWN},
        headers=auth(headers["operator"]),
    )
    results = answer.json()["results"]
    assert [r["status"] for r in results] == ["refused", "accepted", "refused"]
    assert "own-1 is active; released is accepted only when" in results[0]["reason"]
    assert results[2]["reason"].startswith("own-3 is decommissioned")
    answer = api.post(
        PATH,
        json={"operation": "restart", "agent_ids": OWN, "reason": "stuck"},
        headers=auth(headers["operator"]),
    )
    results = answer.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "accepted", "refused"]
    assert results[2]["reason"] == "own-3 is decommissioned; there is nothing to restart"
    events = control_events(settings, 3)
    assert sorted((e["type"], e["key"]) for e in events) == [
        ("released", "own-2"), ("restart_requested", "own-1"), ("restart_requested", "own-2")
    ]  # fmt: skip


@pytest.mark.parametrize(
    "body, where",
    [
        ({"operation": "quarantine", "agent_ids": [OWN[0]]}, "reason"),
        ({"operation": "restart", "agent_ids": [OWN[0]], "reason": ""}, "reason"),
        ({"operation": "release", "agent_ids": []}, "agent_ids"),
        ({"operation": "release", "agent_ids": [OWN[0], OWN[0]]}, "named more than once"),
        ({"operation": "teleport", "agent_ids": [OWN[0]]}, "operation"),
        ({"operation": "release", "agent_ids": [OWN[0]], "until": 2e9}, "until"),
        ({"operation": "quarantine", "agent_ids": [OWN[0]], "reason": "x", "until": 1e9}, "until"),
        (
            {"operation": "release", "agent_ids": [f"a{i}" for i in range(BULK_MAX_AGENTS + 1)]},
            "agent_ids",
        ),
    ],
)
def test_a_request_that_does_not_fit_is_refused_whole(door, body, where):
    api, headers, _, settings = door
    answer = api.post(PATH, json=body, headers=auth(headers["operator"]))
    assert answer.status_code == 422, answer.text
    assert where in answer.text


def test_only_operators_may_and_no_event_is_published_for_a_refused_request(door):
    api, headers, _, settings = door
    body = {"operation": "restart", "agent_ids": [OWN[0]], "reason": "r"}
    assert api.post(PATH, json=body, headers=auth(headers["analyst"])).status_code == 403
    assert api.post(PATH, json=body).status_code == 401
    assert control_events(settings, 0, timeout_s=1) == []


def test_ten_thousand_ids_one_event_each_and_audited(door):
    api, headers, client, settings = door
    ids = [f"fleet-{i:05d}" for i in range(BULK_MAX_AGENTS)]
    client.insert(
        "metrics",
        heartbeats("t1", ids[:-10]),  # the last ten are unknown
        column_names=METRIC_COLUMNS,
        database=settings.clickhouse_database,
    )
    started = time.perf_counter()
    answer = api.post(
        PATH,
        json={"operation": "maintenance", "agent_ids": ids, "reason": "patch tuesday"},
        headers=auth(headers["operator"]),
    )
    elapsed = time.perf_counter() - started
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["totals"] == {"requested": 10_000, "successful": 9_990, "failed": 10}
    assert [r["agent_id"] for r in body["results"]] == ids
    assert elapsed < 10, f"{elapsed:.1f} s for 10,000 ids"  # ~1 s here; generous for CI

    events = control_events(settings, 9_990, timeout_s=60)
    assert len(events) == 9_990
    assert sorted(e["key"] for e in events) == ids[:-10]

    # the audit trail (written from agents.control) records each, with the key as actor
    audit_client = connect(settings)
    writer = AuditWriter(settings, audit_client)
    try:
        wait_until(lambda: writer.poll_once() == 0 and writer.written >= 9_990, 60, "audit")
    finally:
        writer.stop()
        audit_client.close()
    rows = client.query(
        f"SELECT action, actor, origin, count() FROM {settings.clickhouse_database}.audit_log "
        "WHERE action = 'maintenance_requested' GROUP BY action, actor, origin"
    ).result_rows
    assert rows == [
        ("maintenance_requested", f"key:{headers['operator']['key_id']}", "127.0.0.1", 9_990)
    ]


def test_tenants_of_many_ids_in_one_query(door):
    _, _, client, settings = door
    lookup = ClickHouseTenants(settings, ClientPool(shared=client))
    found = lookup.tenants_of([OWN[0], OTHER, "ghost", REGISTERED_ONLY])
    assert found == {OWN[0]: "t1", OTHER: "t2", REGISTERED_ONLY: "t1"}
    assert lookup.tenants_of([]) == {}


def test_without_a_broker_nothing_is_accepted_and_the_answer_says_so(make_settings, chdb_dir):
    settings = make_settings(
        clickhouse_dsn=f"chdb://{chdb_dir}",
        bootstrap_servers=f"127.0.0.1:{free_port()}",  # nothing listens there
        api_broker_timeout_s=0.2,
    )
    client = connect(settings)
    try:
        with TestClient(
            create_app(settings, client=client, run_loader=False), client=LOOPBACK_CLIENT
        ) as api:
            client.insert(
                "metrics",
                heartbeats("t1", OWN),
                column_names=METRIC_COLUMNS,
                database=settings.clickhouse_database,
            )
            answer = api.post(PATH, json={"operation": "restart", "agent_ids": OWN, "reason": "r"})
            assert answer.status_code == 503, answer.text
            assert "no command was published" in answer.json()["detail"]
            assert len(api.app.state.runtime.publisher._producer) == 0  # purged, not pending
    finally:
        client.close()
