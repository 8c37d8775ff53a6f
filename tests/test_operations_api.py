"""The planning routes with real parts: rows written straight into the tables the loader
fills (``agent_registry``, ``assignment_scores_latest``, ``tasks``, ``metrics``; DDL in
sinks/clickhouse.py), the commands read back from the session's broker.

- ``POST /api/v1/operations/optimize-load``: a dry run publishes nothing; applied, each
  move is a ``task_released`` (key: source) and a ``task_assigned`` (key: target, attempt +
  1, ``moved_from``) on agents.control, audited with the caller's key; a tenant key plans
  for its tenant only.
- ``GET``/``POST /api/v1/maintenance/schedule``: windows in the quiet hours of the
  hourly profile, the agent at risk first; apply publishes only the windows starting now.
- ``GET /api/v1/capacity/forecast``: per tenant and agent type, from the metrics history.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from clickhouse_connect.driver.client import Client
from fastapi.testclient import TestClient

from agentwatch.forecast import simulated_history
from agentwatch.identity import ALL_TENANTS, Role
from agentwatch.settings import Settings
from api.app import create_app
from infra.broker import ensure_topics
from schemas.models import TaskAssignment
from sinks.audit import AuditWriter
from sinks.clickhouse import connect
from tests.conftest import LOOPBACK_CLIENT, wait_until
from tests.test_api import METRIC_COLUMNS
from tests.test_bulk import control_events

OPTIMIZE = "/api/v1/operations/optimize-load"
SCHEDULE = "/api/v1/maintenance/schedule"
FORECAST = "/api/v1/capacity/forecast"

REGISTRY_COLUMNS = (
    "tenant_id",
    "agent_id",
    "name",
    "agent_type",
    "owner",
    "capabilities",
    "max_concurrent_tasks",
    "registered_at",
    "actor",
)
SCORE_COLUMNS = (
    "agent_id",
    "tenant_id",
    "timestamp",
    "score",
    "performance",
    "cost",
    "availability",
    "sla",
    "weights",
    "state",
    "active_tasks",
    "capacity",
    "p_fail",
    "cause",
)
TASK_COLUMNS = (
    "task_id",
    "tenant_id",
    "agent_id",
    "task_type",
    "priority",
    "status",
    "attempt",
    "required_capabilities",
    "assigned_at",
    "accepted_at",
    "updated_at",
    "version",
)


def now_utc(hours_ago: float = 0.0) -> datetime:
    return datetime.now(UTC) - timedelta(hours=hours_ago)


def register(client: Client, db: str, agents: list[tuple[str, str, str, list[str], int]]) -> None:
    """(tenant, agent, agent type, capabilities, capacity) per agent."""
    rows = [
        (tenant, agent, agent, kind, "ops", caps, capacity, now_utc(48), "ops")
        for tenant, agent, kind, caps, capacity in agents
    ]
    client.insert("agent_registry", rows, column_names=REGISTRY_COLUMNS, database=db)


def score(
    client: Client,
    db: str,
    tenant: str,
    agent: str,
    active: int,
    capacity: int,
    p_fail: float | None = None,
    state: str = "active",
) -> None:
    weights = orjson.dumps({"performance": 0.4, "cost": 0.3, "availability": 0.2, "sla": 0.1})
    row = (
        agent,
        tenant,
        now_utc(),
        0.7,
        0.8,
        0.6,
        0.5,
        0.9,
        weights.decode(),
        state,
        active,
        capacity,
        p_fail,
        "task",
    )
    client.insert("assignment_scores_latest", [row], column_names=SCORE_COLUMNS, database=db)


def accepted(client: Client, db: str, tenant: str, agent: str, count: int, caps=()) -> list[str]:
    ids = [f"{agent}-task-{i}" for i in range(count)]
    rows = []
    for i, task_id in enumerate(ids):
        at = now_utc(1) + timedelta(seconds=i)
        version = round(at.timestamp() * 1000) * 8 + 1
        rows.append(
            (
                task_id,
                tenant,
                agent,
                "etl",
                "normal",
                "accepted",
                1,
                list(caps),
                at,
                at,
                at,
                version,
            )
        )
    client.insert("tasks", rows, column_names=TASK_COLUMNS, database=db)
    return ids


@pytest.fixture
def door(settings: Settings) -> Iterator[tuple[TestClient, dict, Client, Settings]]:
    """The app with keys required; headers of an operator and an analyst of t1 and an
    admin of every tenant."""
    settings = settings.model_copy(update={"api_auth_required": True})
    ensure_topics(settings)
    client = connect(settings)
    app = create_app(settings, client=client, run_loader=False)
    with TestClient(app, client=LOOPBACK_CLIENT) as api:
        book = app.state.runtime.keys
        headers = {}
        for name, role, tenant in (
            ("operator", Role.OPERATOR, "t1"),
            ("analyst", Role.ANALYST, "t1"),
            ("admin", Role.ADMIN, ALL_TENANTS),
        ):
            stored, token = book.create(client, role, tenant, "test", name=name)
            headers[name] = {"Authorization": f"Bearer {token}"}
            headers[f"{name} key"] = stored.key_id
        yield api, headers, client, settings
    client.close()


@pytest.fixture
def crowded(door):
    """t1: ``hot`` (gpu, 4/4 open), ``cold`` (gpu, 0/4), ``plain`` (no gpu, 0/4);
    t2: ``far-hot`` (2/2), ``far-cold`` (0/4)."""
    api, headers, client, settings = door
    db = settings.clickhouse_database
    register(
        client,
        db,
        [
            ("t1", "hot", "bot", ["gpu"], 4),
            ("t1", "cold", "bot", ["gpu"], 4),
            ("t1", "plain", "bot", [], 4),
            ("t2", "far-hot", "bot", [], 2),
            ("t2", "far-cold", "bot", [], 4),
        ],
    )
    for tenant, agent, active, capacity in (
        ("t1", "hot", 4, 4),
        ("t1", "cold", 0, 4),
        ("t1", "plain", 0, 4),
        ("t2", "far-hot", 2, 2),
        ("t2", "far-cold", 0, 4),
    ):
        score(client, db, tenant, agent, active, capacity)
    hot_tasks = accepted(client, db, "t1", "hot", 4, caps=["gpu"])
    accepted(client, db, "t2", "far-hot", 2)
    return api, headers, client, settings, hot_tasks


def test_a_dry_run_plans_moves_within_the_tenant_and_publishes_nothing(crowded):
    api, headers, _, settings, hot_tasks = crowded
    answer = api.post(OPTIMIZE, headers=headers["operator"])  # no body: a dry run
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["dry_run"] is True and body["tenant_id"] == "t1"
    assert body["overloaded"] == ["hot"] and body["agents"] == 3 and body["open_tasks"] == 4
    assert [(m["source"], m["target"]) for m in body["moves"]] == [("hot", "cold")]
    move = body["moves"][0]
    assert move["task_id"] == hot_tasks[-1] and move["published"] is None
    assert (move["source_load_before"], move["source_load_after"]) == (1.0, 0.75)
    assert (move["target_load_before"], move["target_load_after"]) == (0.0, 0.25)
    assert "gpu" in move["reason"] and "dry run" in body["note"]
    assert control_events(settings, 0, timeout_s=1) == []
    again = api.post(OPTIMIZE, json={"dry_run": True}, headers=headers["operator"]).json()
    assert again["moves"] == body["moves"]


def test_applied_moves_are_released_and_assigned_on_the_control_topic_and_audited(crowded):
    api, headers, client, settings, hot_tasks = crowded
    answer = api.post(OPTIMIZE, json={"dry_run": False}, headers=headers["operator"])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["dry_run"] is False and "applied" in body["note"]
    assert [m["published"] for m in body["moves"]] == [True]
    events = control_events(settings, 2)
    assert [(e["type"], e["key"]) for e in events] == [
        ("task_released", "hot"),
        ("task_assigned", "cold"),
    ]
    released, assigned = events
    assert released["payload"] == {"task_id": hot_tasks[-1], "reason": body["moves"][0]["reason"]}
    assignment = TaskAssignment.model_validate(assigned["payload"])
    assert (assignment.task_id, assignment.attempt, assignment.moved_from) == (
        hot_tasks[-1],
        2,
        "hot",
    )
    assert assignment.required_capabilities == ["gpu"] and assignment.score == pytest.approx(0.7)
    assert assigned["tenant_id"] == "t1" and assigned["actor"] == f"key:{headers['operator key']}"

    audit_client = connect(settings)
    writer = AuditWriter(settings, audit_client)
    try:
        wait_until(lambda: writer.poll_once() == 0 and writer.written >= 2, 30, "audit")
    finally:
        writer.stop()
        audit_client.close()
    rows = client.query(
        f"SELECT action, target, actor, origin FROM {settings.clickhouse_database}.audit_log "
        "WHERE action IN ('task_released', 'task_assigned') ORDER BY seq"
    ).result_rows
    actor = f"key:{headers['operator key']}"
    assert rows == [
        ("task_released", "hot", actor, "127.0.0.1"),
        ("task_assigned", "cold", actor, "127.0.0.1"),
    ]


def test_tenants_scope_the_plan(crowded):
    api, headers, _, settings, _ = crowded
    refused = api.post(OPTIMIZE, json={"tenant_id": "t2"}, headers=headers["operator"])
    assert refused.status_code == 403 and "t2" in refused.json()["detail"]
    assert api.post(OPTIMIZE, headers=headers["analyst"]).status_code == 403  # reads only
    fleet = api.post(OPTIMIZE, headers=headers["admin"]).json()
    assert fleet["tenant_id"] is None
    assert sorted((m["source"], m["target"]) for m in fleet["moves"]) == [
        ("far-hot", "far-cold"),
        ("hot", "cold"),
    ]
    t2 = api.post(OPTIMIZE, json={"tenant_id": "t2"}, headers=headers["admin"]).json()
    assert [m["target"] for m in t2["moves"]] == ["far-cold"]
    assert control_events(settings, 0, timeout_s=1) == []


def test_a_balanced_fleet_gets_no_moves(door):
    api, headers, client, settings = door
    db = settings.clickhouse_database
    register(client, db, [("t1", "a1", "bot", [], 4), ("t1", "a2", "bot", [], 4)])
    score(client, db, "t1", "a1", 2, 4)
    score(client, db, "t1", "a2", 3, 4)
    accepted(client, db, "t1", "a1", 2)
    body = api.post(OPTIMIZE, json={"dry_run": False}, headers=headers["operator"]).json()
    assert body["moves"] == [] and body["overloaded"] == [] and body["stuck"] == []
    assert control_events(settings, 0, timeout_s=1) == []


# --- maintenance ------------------------------------------------------------------------


@pytest.fixture
def quiet_now(door):
    """t1/bot: three agents of 2 slots; over the last three days the demand was 2 in this
    hour of the day and the next two (a window of 2 h starting now touches three), 5 in
    every other (so at most one agent may be out now:
    6 - 2 = 4 ≥ 2 × 1.2, but 6 - 4 = 2 < 2.4). ``risky`` has the highest p_fail."""
    api, headers, client, settings = door
    db = settings.clickhouse_database
    agents = ["steady", "risky", "middling"]
    register(client, db, [("t1", a, "bot", [], 2) for a in agents])
    register(client, db, [("t2", "elsewhere", "bot", [], 2)])
    for agent, p_fail in zip(agents, (0.05, 0.7, 0.2), strict=True):
        score(client, db, "t1", agent, 0, 2, p_fail=p_fail)
    score(client, db, "t2", "elsewhere", 0, 2, p_fail=0.9)
    now = datetime.now(UTC)
    quiet = {now.hour, (now.hour + 1) % 24, (now.hour + 2) % 24}
    rows = []
    for hours_ago in range(1, 72):
        at = (now - timedelta(hours=hours_ago)).replace(minute=30)
        split = (1, 1, 0) if at.hour in quiet else (2, 2, 1)
        for agent, active in zip(agents, split, strict=True):
            rows.append(
                (agent, "t1", at, 10.0, 10.0, 10.0, 1.0, active, 0, 0, 0.0, 1.0, 1.0, 0, "")
            )
    client.insert("metrics", rows, column_names=METRIC_COLUMNS, database=db)
    return api, headers, client, settings


def test_the_schedule_puts_the_agent_at_risk_in_the_quiet_hour_and_keeps_capacity(quiet_now):
    api, headers, _, settings = quiet_now
    settings_used = api.app.state.runtime.settings
    assert settings_used.maintenance_capacity_margin == 1.2
    answer = api.get(SCHEDULE, headers=headers["analyst"])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["applied"] is False and "a plan" in body["note"]
    assert [(w["agent_id"], w["starts_now"]) for w in body["windows"]] == [("risky", True)]
    window = body["windows"][0]
    assert window["peak_demand"] == 2.0 and window["capacity_left"] == 4
    assert window["p_fail"] == 0.7
    assert sorted(u["agent_id"] for u in body["unscheduled"]) == ["middling", "steady"]
    assert all("peak demand × 1.2" in u["reason"] for u in body["unscheduled"])
    assert body["groups"] == [
        {"tenant_id": "t1", "agent_type": "bot", "agents": 3, "capacity": 6, "profile": "history"}
    ]
    posted = api.post(SCHEDULE, headers=headers["operator"]).json()  # no body: a plan too
    same = [{k: v for k, v in w.items() if k not in ("start", "end")} for w in body["windows"]]
    assert [
        {k: v for k, v in w.items() if k not in ("start", "end")} for w in posted["windows"]
    ] == same
    assert posted["applied"] is False
    assert control_events(settings, 0, timeout_s=1) == []


def test_applying_the_schedule_publishes_only_the_windows_starting_now(quiet_now):
    api, headers, client, settings = quiet_now
    db = settings.clickhouse_database
    # a fourth agent with no p_fail and a bigger capacity: its window is later (a plan)
    register(client, db, [("t1", "big", "bot", [], 6)])
    score(client, db, "t1", "big", 0, 6)
    answer = api.post(SCHEDULE, json={"apply": True}, headers=headers["operator"])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    now_windows = [w for w in body["windows"] if w["starts_now"]]
    later = [w for w in body["windows"] if not w["starts_now"]]
    assert [w["published"] for w in now_windows] == [True] * len(now_windows)
    assert all(w["published"] is None for w in later)
    assert later, "some window is a plan for later"
    events = control_events(settings, len(now_windows))
    assert sorted(e["key"] for e in events) == sorted(w["agent_id"] for w in now_windows)
    assert {e["type"] for e in events} == {"maintenance_requested"}
    assert "risky" in {e["key"] for e in events} and "elsewhere" not in {e["key"] for e in events}
    assert "applied" in body["note"]


def test_the_schedule_is_scoped_to_the_callers_tenant(quiet_now):
    api, headers, _, _ = quiet_now
    assert api.get(f"{SCHEDULE}?tenant=t2", headers=headers["analyst"]).status_code == 403
    assert api.post(SCHEDULE, json={"apply": True}, headers=headers["analyst"]).status_code == 403
    everyone = api.get(SCHEDULE, headers=headers["admin"]).json()
    assert {g["tenant_id"] for g in everyone["groups"]} == {"t1", "t2"}
    assert "elsewhere" in {w["agent_id"] for w in everyone["windows"]}


# --- capacity forecast ---------------------------------------------------------------------


def daily_rows(agent: str, tenant: str, values: list[float]) -> list[tuple]:
    """One heartbeat at noon of each of the last ``len(values)`` days (oldest first)."""
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    rows = []
    for back, value in zip(range(len(values), 0, -1), values, strict=True):
        at = today - timedelta(days=back)
        rows.append(
            (agent, tenant, at, 10.0, 10.0, 10.0, 1.0, round(value), 0, 0, 0.0, 1.0, 1.0, 0, "")
        )
    return rows


def test_the_forecast_per_tenant_and_type_with_intervals_and_the_day_capacity_runs_out(door):
    api, headers, client, settings = door
    db = settings.clickhouse_database
    register(
        client,
        db,
        [
            ("t1", "worker", "bot", [], 40),
            ("t1", "spare", "bot", [], 40),
            ("t1", "young", "scanner", [], 10),
            ("t2", "theirs", "bot", [], 40),
        ],
    )
    growing = simulated_history(42, level=40, trend=0.8, weekly_amplitude=6, noise=1.5, seed=7)
    client.insert(
        "metrics",
        daily_rows("worker", "t1", growing)
        + daily_rows("young", "t1", [3, 4, 5, 4, 3])
        + daily_rows("theirs", "t2", growing),
        column_names=METRIC_COLUMNS,
        database=db,
    )
    answer = api.get(f"{FORECAST}?days=30", headers=headers["analyst"])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["days"] == 30 and "least squares" in body["method"]
    groups = {(g["tenant_id"], g["agent_type"]): g for g in body["groups"]}
    assert set(groups) == {("t1", "bot"), ("t1", "scanner")}
    bot = groups[("t1", "bot")]
    assert bot["agents"] == 2 and bot["capacity"] == 80 and bot["history_days"] == 42
    assert bot["method"].startswith("level + trend + weekly season") and bot["note"] == ""
    days = bot["forecast"]
    assert len(days) == 30 and days[0]["date"] == datetime.now(UTC).date().isoformat()
    for day in days:
        assert day["lower_95"] <= day["lower_80"] <= day["demand"] <= day["upper_80"]
        assert day["upper_80"] <= day["upper_95"]
        assert day["agents_needed"] == math.ceil(day["demand"] / 40 - 1e-9)
    # ~40 + 0.8 t: 80 slots are passed some 50 days after the first: within the 30 ahead
    assert bot["runs_out_on"] is not None and bot["may_run_out_on"] <= bot["runs_out_on"]
    assert days[-1]["demand"] > days[0]["demand"] > growing[0]
    young = groups[("t1", "scanner")]
    assert young["history_days"] == 5 and "fewer than 14" in young["note"]
    assert young["method"].startswith("level (mean")
    assert api.get(f"{FORECAST}?days=91", headers=headers["analyst"]).status_code == 422
    assert api.get(f"{FORECAST}?days=0", headers=headers["analyst"]).status_code == 422
    assert api.get(f"{FORECAST}?tenant=t2", headers=headers["analyst"]).status_code == 403
    everyone = api.get(f"{FORECAST}?days=7&agent_type=bot", headers=headers["admin"]).json()
    assert {(g["tenant_id"], g["agent_type"]) for g in everyone["groups"]} == {
        ("t1", "bot"),
        ("t2", "bot"),
    }


def test_a_group_without_enough_history_says_so(door):
    api, headers, client, settings = door
    db = settings.clickhouse_database
    register(client, db, [("t1", "new", "bot", [], 4)])
    client.insert(
        "metrics", daily_rows("new", "t1", [1, 2]), column_names=METRIC_COLUMNS, database=db
    )
    body = api.get(FORECAST, headers=headers["analyst"]).json()
    (group,) = body["groups"]
    assert group["forecast"] == [] and group["method"] is None
    assert "2 days of history" in group["note"] and "at least 3" in group["note"]
    started = time.perf_counter()
    api.get(FORECAST, headers=headers["analyst"])
    assert time.perf_counter() - started < 5


def test_an_agent_out_of_service_is_not_scheduled_nor_counted(quiet_now):
    api, headers, client, settings = quiet_now
    db = settings.clickhouse_database
    register(client, db, [("t1", "resting", "bot", [], 2)])
    score(client, db, "t1", "resting", 0, 2, p_fail=0.99, state="maintenance")
    body = api.get(SCHEDULE, headers=headers["operator"]).json()
    assert [w["agent_id"] for w in body["windows"]] == ["risky"]
    reasons = {u["agent_id"]: u["reason"] for u in body["unscheduled"]}
    assert reasons["resting"] == "resting is maintenance, not in service: nothing to schedule"
    assert body["groups"][0]["capacity"] == 6 and body["groups"][0]["agents"] == 4
