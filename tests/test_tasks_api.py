"""The read side of orchestration on a real chDB: ``GET /api/v1/tasks/{id}``,
``GET /api/v1/tasks``, ``GET /api/v1/agents/{id}/assignment-scores`` and
``GET /api/v1/orchestration/models``, on rows written the way the loader writes them
(its own row builders); tenant scoping with real keys on the session's broker."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial

import orjson
import pytest
from clickhouse_connect.driver.client import Client
from fastapi.testclient import TestClient

from agentwatch.identity import ALL_TENANTS, Role
from agentwatch.settings import Settings
from api.app import create_app
from infra.broker import ensure_topics
from sinks.clickhouse import connect, create_schema
from sinks.loader import assignment_score_row, event_row, task_row
from tests.conftest import LOOPBACK_CLIENT
from tests.test_api import METRIC_COLUMNS, NOW, heartbeat_row, insert, insert_docs

WEIGHTS = {"performance": 0.4, "cost": 0.3, "availability": 0.2, "sla": 0.1}
COMPONENTS = {"performance": 0.9, "cost": 0.5, "availability": 0.75, "sla": 1.0}
TASK_TIMES = ("deadline", "assigned_at", "accepted_at", "finished_at", "updated_at")


def assigned(task: str, agent: str, at: float, tenant: str = "t1", **payload: object) -> dict:
    """The API's ``task_assigned`` event."""
    return {
        "type": "task_assigned", "agent_id": agent, "tenant_id": tenant, "actor": "api",
        "timestamp": at,
        "payload": {"task_id": task, "task_type": "etl", "score": 0.8, "components": COMPONENTS,
                    "weights": WEIGHTS, "p_success": 0.9, "expected_duration_s": 30.0,
                    "assigned_by": "api-1", **payload},
    }  # fmt: skip


def changed(task: str, agent: str, status: str, assigned_at: float, at: float,
            tenant: str = "t1", **fields: object) -> dict:  # fmt: skip
    """A shard's ``task_changed`` event (the whole TaskRecord)."""
    record = {
        "task_id": task, "agent_id": agent, "tenant_id": tenant, "task_type": "etl",
        "status": status, "score": 0.8, "components": COMPONENTS, "p_success": 0.9,
        "expected_duration_s": 30.0, "assigned_at": assigned_at, "accepted_at": assigned_at,
        "agent_active_tasks": 1, "capacity": 4, "assigned_by": "api-1", "updated_at": at,
        **fields,
    }  # fmt: skip
    return {"type": "task_changed", "agent_id": agent, "tenant_id": tenant, "actor": "system",
            "timestamp": at, "payload": record}  # fmt: skip


def finished(task: str, status: str, p: float | None, expected: float | None, took: float,
             at: float, tenant: str = "t1", agent: str = "a1") -> dict:  # fmt: skip
    """A task that finished at ``at`` after ``took`` seconds, predicted ``p``/``expected``."""
    return changed(task, agent, status, at - took, at, tenant, p_success=p,
                   expected_duration_s=expected, finished_at=at, duration_s=took)  # fmt: skip


def insert_tasks(ch: Client, settings: Settings, events: list[dict]) -> None:
    """Rows of ``tasks`` made by the loader's :func:`task_row` (and the events themselves)."""
    rows = []
    for event in events:
        channel = "control" if event["type"] == "task_assigned" else "state"
        rows.append(task_row(event_row(channel, orjson.dumps(event))))
    columns = list(rows[0])  # (a task_assigned's row and a task_changed's: keys in two orders)
    values = [
        tuple(
            datetime.fromtimestamp(row[c], UTC) if c in TASK_TIMES and row[c] is not None
            else row[c]
            for c in columns
        )
        for row in rows
    ]  # fmt: skip
    ch.insert("tasks", values, column_names=columns, database=settings.clickhouse_database)


@pytest.fixture
def db(make_settings, chdb_dir) -> Iterator[tuple[Settings, Client]]:
    """A fresh database on the session's chDB (no broker needed)."""
    from infra.broker import free_port

    settings = make_settings(
        clickhouse_dsn=f"chdb://{chdb_dir}", bootstrap_servers=f"127.0.0.1:{free_port()}",
        api_broker_timeout_s=0.3, api_projection_metadata_timeout_s=0.1,
    )  # fmt: skip
    client = connect(settings)
    create_schema(client, settings)
    try:
        yield settings, client
    finally:
        client.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")
        client.close()


def serve(settings: Settings, client: Client) -> TestClient:
    return TestClient(create_app(settings, client=client, run_loader=False), client=LOOPBACK_CLIENT)


T = float(int(NOW) - 3600)  # whole seconds: the time-range bounds fall on stored instants


@pytest.fixture
def tasks(db) -> tuple[Settings, Client]:
    """k1: assigned, accepted (same ms) and completed on a1; k2: accepted on a1;
    k3: refused by a1, then moved to a2 (attempt 2); k4: of tenant t2."""
    settings, ch = db
    insert_tasks(ch, settings, [
        assigned("k1", "a1", T), changed("k1", "a1", "accepted", T, T),
        changed("k1", "a1", "completed", T, T + 25, finished_at=T + 25, duration_s=25.0,
                sla_met=True, agent_active_tasks=0),
        assigned("k2", "a1", T + 100), changed("k2", "a1", "accepted", T + 100, T + 100),
        assigned("k3", "a1", T + 200),
        changed("k3", "a1", "refused", T + 200, T + 200, reason="a1 at capacity 4/4",
                accepted_at=None),
        assigned("k3", "a2", T + 201, attempt=2),
        assigned("k4", "b1", T + 300, tenant="t2"),
    ])  # fmt: skip
    return settings, ch


def test_a_task_shows_its_latest_status_and_what_it_was_chosen_with(tasks):
    with serve(*tasks) as api:
        answer = api.get("/api/v1/tasks/k1")
        assert answer.status_code == 200, answer.text
        task = answer.json()
        assert (task["status"], task["agent_id"], task["tenant_id"]) == ("completed", "a1", "t1")
        assert (task["duration_s"], task["sla_met"], task["capacity"]) == (25.0, True, 4)
        assert task["components"] == COMPONENTS and task["score"] == 0.8
        assert (task["p_success"], task["expected_duration_s"]) == (0.9, 30.0)
        assert datetime.fromisoformat(task["finished_at"]).timestamp() == pytest.approx(T + 25)
        assert api.get("/api/v1/tasks/k2").json()["status"] == "accepted"  # same ms as assigned
        moved = api.get("/api/v1/tasks/k3").json()
        assert (moved["status"], moved["agent_id"], moved["attempt"]) == ("assigned", "a2", 2)
        missing = api.get("/api/v1/tasks/nope")
        assert missing.status_code == 404 and "'nope' is unknown" in missing.json()["detail"]
        assert api.get(f"/api/v1/tasks/{'x' * 129}").status_code == 422


def test_tasks_list_newest_first_filtered_on_their_latest_status_and_agent(tasks):
    with serve(*tasks) as api:

        def listed(query: str = "") -> list[str]:
            answer = api.get(f"/api/v1/tasks{query}")
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["count"] == len(body["tasks"])
            return [t["task_id"] for t in body["tasks"]]

        assert listed() == ["k4", "k3", "k2", "k1"]
        assert listed("?tenant=t1") == ["k3", "k2", "k1"]
        assert listed("?tenant=t1&limit=2") == ["k3", "k2"]
        assert listed("?agent_id=a1") == ["k2", "k1"]  # k3 moved to a2
        assert listed("?agent_id=a2") == ["k3"]
        assert listed("?status=accepted") == ["k2"]  # not k1, accepted before it completed
        assert listed("?status=completed&status=assigned") == ["k4", "k3", "k1"]
        assert listed("?status=refused") == []
        assert api.get("/api/v1/tasks?status=lost").status_code == 422


def test_another_tenants_task_is_a_404_exactly_like_a_missing_one(settings: Settings):
    settings = settings.model_copy(update={"api_auth_required": True})
    ensure_topics(settings)
    client = connect(settings)
    try:
        with serve(settings, client) as api:
            insert_tasks(
                client, settings, [assigned("k1", "a1", T), assigned("k2", "b1", T, tenant="t2")]
            )
            book = api.app.state.runtime.keys
            own = book.create(client, Role.ANALYST, "t1", "test", name="t1")[1]
            every = book.create(client, Role.ADMIN, ALL_TENANTS, "test", name="all")[1]
            mine = {"Authorization": f"Bearer {own}"}
            other = api.get("/api/v1/tasks/k2", headers=mine)
            missing = api.get("/api/v1/tasks/k9", headers=mine)
            assert other.status_code == missing.status_code == 404
            assert other.json()["detail"] == missing.json()["detail"].replace("k9", "k2")
            assert api.get("/api/v1/tasks/k1", headers=mine).json()["tenant_id"] == "t1"
            admin = {"Authorization": f"Bearer {every}"}
            assert api.get("/api/v1/tasks/k2", headers=admin).json()["tenant_id"] == "t2"
            listed = api.get("/api/v1/tasks", headers=mine).json()["tasks"]
            assert [t["task_id"] for t in listed] == ["k1"]
            assert api.get("/api/v1/tasks?tenant=t2", headers=mine).status_code == 403
            models = api.get("/api/v1/orchestration/models", headers=mine)
            assert models.status_code == 200 and models.json()["tenant_id"] == "t1"
            refused = api.get("/api/v1/orchestration/models?tenant=t2", headers=mine)
            assert refused.status_code == 403
    finally:
        client.close()


def score(agent: str, at: float, value: float, **overrides: object) -> dict:
    doc = {
        "agent_id": agent, "tenant_id": "t1", "timestamp": at, "score": value, **COMPONENTS,
        "weights": WEIGHTS, "state": "active", "active_tasks": 1, "capacity": 4,
        "success_rate": 0.9, "response_time_ms": 120.0, "sla_met_rate": 1.0,
        "tasks_completed": 9, "tasks_failed": 1, "p_fail": None,
        "by_type": {"etl": {"p_success": 0.9, "expected_duration_s": 30.0, "outcomes": 10}},
        "cause": "heartbeat",
    }  # fmt: skip
    doc.update(overrides)
    return doc


def test_an_agents_assignment_scores_newest_first_in_a_time_range(db):
    settings, ch = db
    insert(ch, settings, "metrics", [heartbeat_row("a1", 60), heartbeat_row("a9", 60)],
           METRIC_COLUMNS)  # fmt: skip
    docs = [score("a1", T + 60 * i, 0.5 + i / 10) for i in range(4)]
    insert_docs(ch, settings, "assignment_scores", assignment_score_row, [*docs, docs[1]])
    with serve(settings, ch) as api:
        body = api.get("/api/v1/agents/a1/assignment-scores").json()
        assert body["count"] == 4
        assert [s["score"] for s in body["scores"]] == [0.8, 0.7, 0.6, 0.5]  # no replay
        first = body["scores"][0]
        assert first["weights"] == WEIGHTS and first["by_type"]["etl"]["outcomes"] == 10
        assert first["p_fail"] is None and first["cause"] == "heartbeat"
        ranged = api.get(f"/api/v1/agents/a1/assignment-scores?since={T + 60}&until={T + 120}")
        assert [s["score"] for s in ranged.json()["scores"]] == [0.7, 0.6]
        assert api.get("/api/v1/agents/a1/assignment-scores?limit=1").json()["count"] == 1
        known = api.get("/api/v1/agents/a9/assignment-scores")  # heartbeats, no score yet
        assert known.status_code == 200 and known.json()["scores"] == []
        unknown = api.get("/api/v1/agents/ghost/assignment-scores")
        assert unknown.status_code == 404 and "ghost" in unknown.json()["detail"]
        swapped = api.get(f"/api/v1/agents/a1/assignment-scores?since={T + 60}&until={T}")
        assert swapped.status_code == 422


def model_stats(shard: str, at: float, accuracy: float) -> dict:
    return {"type": "model_stats", "agent_id": f"shard:{shard}", "tenant_id": "*",
            "actor": "system",
            "timestamp": at, "payload": {"shard": shard, "outcomes": 40,
            "success_accuracy": accuracy, "success_log_loss": 0.4, "duration_mae_s": 3.0,
            "failure_accuracy": None, "failure_samples": 0, "window": 100,
            "timestamp": at}}  # fmt: skip


def test_the_models_accuracy_over_the_latest_finished_tasks_with_predictions(db):
    settings, ch = db
    insert_tasks(ch, settings, [
        # the window, newest first: (p_success, completed?) and (expected, took)
        finished("f1", "completed", 0.6, 10.0, 20.0, T + 400),  # right; |10-20| = 10, 50 %
        finished("f2", "failed", 0.3, 30.0, 5.0, T + 300),  # right; failed: no duration
        finished("f3", "failed", 0.8, None, 9.0, T + 200),  # wrong
        finished("f4", "completed", 0.9, 30.0, 25.0, T + 100),  # right; |30-25| = 5, 20 %
        # not in it: open, no prediction at all, another tenant's, expired
        changed("o1", "a1", "accepted", T + 500, T + 500),
        finished("n1", "completed", None, None, 5.0, T + 450),
        finished("t2", "failed", 0.9, 10.0, 1.0, T + 450, tenant="t2"),
        changed("e1", "a1", "expired", T, T + 460, finished_at=T + 460),
    ])  # fmt: skip
    from sinks.loader import event_row as row_of

    insert_docs(ch, settings, "agent_events", partial(row_of, "state"), [
        # shards report on one tick: agent_events' key is tenant, agent, timestamp, type, so
        # their ids (shard:0, shard:1) keep reports of the same millisecond apart
        model_stats("0", T, 0.5), model_stats("0", T + 60, 0.75), model_stats("1", T, 0.6),
        {**model_stats("2", T, 0.6), "payload": {"shard": "2"}},  # not a ModelStats: skipped
    ])  # fmt: skip
    with serve(settings, ch) as api:
        body = api.get("/api/v1/orchestration/models?tenant=t1").json()
        rolling = body["rolling"]
        assert (rolling["window"], rolling["tasks"], rolling["success_predictions"]) == (100, 4, 4)
        assert rolling["success_accuracy"] == pytest.approx(0.75)
        brier = (0.4**2 + 0.3**2 + 0.8**2 + 0.1**2) / 4
        assert rolling["brier_score"] == pytest.approx(brier, abs=1e-6)
        assert rolling["duration_predictions"] == 2
        assert rolling["duration_mae_s"] == pytest.approx(7.5)
        assert rolling["duration_mape"] == pytest.approx(0.35)
        assert datetime.fromisoformat(rolling["oldest"]).timestamp() == pytest.approx(T + 100)
        assert [(s["shard"], s["success_accuracy"]) for s in body["shards"]] == [
            ("0", 0.75), ("1", 0.6)
        ]  # fmt: skip
        every = api.get("/api/v1/orchestration/models").json()  # the loopback admin: all
        assert every["tenant_id"] is None and every["rolling"]["tasks"] == 5
    with serve(settings.model_copy(update={"orchestration_accuracy_tasks": 2}), ch) as api:
        rolling = api.get("/api/v1/orchestration/models?tenant=t1").json()["rolling"]
        assert (rolling["window"], rolling["tasks"]) == (2, 2)  # f1 and f2
        assert rolling["success_accuracy"] == 1.0 and rolling["duration_mape"] == 0.5


def test_the_models_with_no_finished_task_say_so_with_nulls(db):
    with serve(*db) as api:
        body = api.get("/api/v1/orchestration/models").json()
    assert body["shards"] == []
    rolling = body["rolling"]
    assert (rolling["tasks"], rolling["success_accuracy"], rolling["brier_score"]) == (
        0,
        None,
        None,
    )
    assert (rolling["duration_mae_s"], rolling["oldest"]) == (None, None)
