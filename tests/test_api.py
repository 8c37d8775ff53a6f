"""The HTTP API on a real chDB: agent status, anomalies, threats, health, /metrics, /docs.

Most tests write fixture rows straight into the ClickHouse tables and run the
app without the loader (``run_loader=False``) and with an unreachable broker.
Tests marked ``integration`` use the session's Tansu broker: health with a real
broker and dataflow lag, and the whole app lifespan with the loader running.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial

import httpx
import orjson
import pytest
from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, Producer, TopicPartition
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from agentwatch.settings import Settings
from api.app import create_app
from infra.broker import ensure_topics, free_port
from schemas.metric_rows import encode_json
from sinks.clickhouse import connect, create_schema
from tests.conftest import LOOPBACK_CLIENT, wait_until

NOW = time.time()
METRIC_COLUMNS = (
    "agent_id", "tenant_id", "timestamp", "cpu_usage", "memory_usage", "disk_usage",
    "network_latency", "active_tasks", "completed_tasks", "failed_tasks", "error_rate",
    "response_time_avg", "uptime_seconds", "bytes_out", "status",
)  # fmt: skip
ANOMALY_COLUMNS = (
    "agent_id", "tenant_id", "timestamp", "score", "threshold", "is_anomaly", "detector",
    "top_feature", "reasons",
)  # fmt: skip
BASELINE_COLUMNS = ("agent_id", "tenant_id", "timestamp", "heartbeats", "warmed_up", "mean", "std")
THREAT_COLUMNS = (
    "agent_id", "tenant_id", "rule", "category", "severity", "first_seen", "last_seen",
    "condition", "evidence",
)  # fmt: skip


def at(seconds_ago: float) -> datetime:
    """A recent instant (the tables' TTL drops rows older than 90 days)."""
    return datetime.fromtimestamp(round(NOW - seconds_ago, 3), UTC)


def heartbeat_row(agent: str, seconds_ago: float, cpu: float = 40.0, status: str = "") -> tuple:
    return (agent, "t1", at(seconds_ago), cpu, 60.0, 30.0, 12.5, 3, 150, 2, 0.01, 230.0,
            86400.0, 1024, status)  # fmt: skip


def anomaly_row(agent: str, seconds_ago: float, score: float = 0.995, cpu: float = 97.0) -> tuple:
    reasons = [{"feature": "cpu_usage", "value": cpu, "baseline_mean": 40.0,
                "baseline_std": 5.0, "z": (cpu - 40.0) / 5.0}]  # fmt: skip
    return (agent, "t1", at(seconds_ago), score, 0.999, score >= 0.999, "hst", "cpu_usage",
            orjson.dumps(reasons).decode())  # fmt: skip


def baseline_row(agent: str, seconds_ago: float, heartbeats: int, warmed_up: bool) -> tuple:
    mean = {"cpu_usage": 40.0, "memory_usage": 60.0}
    std = {"cpu_usage": 5.0, "memory_usage": 2.0}
    return (agent, "t1", at(seconds_ago), heartbeats, warmed_up, mean, std)


def threat_row(
    agent: str,
    seconds_ago: float,
    rule: str = "high_error_rate",
    category: str = "PERFORMANCE",
    severity: str = "HIGH",
    evidence: str | None = None,
) -> tuple:
    """A threat that began ``seconds_ago`` and held for 30 s, as the loader stores it."""
    first, last = at(seconds_ago), at(seconds_ago - 30)
    condition = "avg(error_rate) over 300s > 0.2"
    if evidence is None:
        evidence = orjson.dumps({
            "condition": condition, "values": {"error_rate": 0.31},
            "baseline": [{"feature": "error_rate", "value": 0.31, "baseline_mean": 0.01,
                          "baseline_std": 0.005, "z": 60.0}],
            "window_start": first.timestamp() - 300, "window_end": last.timestamp(),
        }).decode()  # fmt: skip
    return (agent, "t1", rule, category, severity, first, last, condition, evidence)


@pytest.fixture
def offline_settings(make_settings, chdb_dir) -> Settings:
    """The session's chDB, a fresh database, and a broker address where nothing listens."""
    return make_settings(
        clickhouse_dsn=f"chdb://{chdb_dir}",
        bootstrap_servers=f"127.0.0.1:{free_port()}",
        api_broker_timeout_s=0.3,
        api_projection_metadata_timeout_s=0.1,  # (the app's shutdown waits this long)
    )


@pytest.fixture
def ch(offline_settings: Settings) -> Iterator[Client]:
    """A ClickHouse client on the test's own database, with the schema created."""
    client = connect(offline_settings)
    create_schema(client, offline_settings)
    try:
        yield client
    finally:
        client.command(f"DROP DATABASE IF EXISTS {offline_settings.clickhouse_database}")
        client.close()


@pytest.fixture
def api(offline_settings: Settings, ch: Client) -> Iterator[TestClient]:
    """The app without a loader, reading through ``ch``; lifespan runs on enter and exit."""
    with TestClient(
        create_app(offline_settings, client=ch, run_loader=False), client=LOOPBACK_CLIENT
    ) as test_client:
        yield test_client


def insert(ch: Client, settings: Settings, table: str, rows: list[tuple], columns) -> None:
    ch.insert(table, rows, column_names=columns, database=settings.clickhouse_database)


@pytest.fixture
def fleet(ch: Client, offline_settings: Settings) -> None:
    """Agent a1 with history, baselines and anomalies; a2 with one heartbeat; a3 baseline only."""
    insert(ch, offline_settings, "metrics", [
        heartbeat_row("a1", 90, cpu=35.0),
        heartbeat_row("a1", 60, cpu=38.0),
        heartbeat_row("a1", 30, cpu=97.0, status="busy"),
        heartbeat_row("a2", 10, cpu=12.0),
    ], METRIC_COLUMNS)  # fmt: skip
    insert(ch, offline_settings, "baselines", [
        baseline_row("a1", 600, heartbeats=10, warmed_up=False),
        baseline_row("a1", 60, heartbeats=2000, warmed_up=True),
        baseline_row("a3", 60, heartbeats=5, warmed_up=False),
    ], BASELINE_COLUMNS)  # fmt: skip
    insert(ch, offline_settings, "anomalies", [
        anomaly_row("a1", 600, score=0.991, cpu=70.0),
        anomaly_row("a1", 30, score=0.9995, cpu=97.0),
        anomaly_row("a1", 20, score=0.995, cpu=90.0),  # scored high, not an anomaly
    ], ANOMALY_COLUMNS)  # fmt: skip
    insert(ch, offline_settings, "threats", [
        threat_row("a1", 900),
        threat_row("a1", 60, rule="resource_exhaustion", category="SYSTEM", severity="CRITICAL"),
    ], THREAT_COLUMNS)  # fmt: skip


# --- /api/v1/agents/{id}/status ------------------------------------------------


def test_status_shows_latest_heartbeat_baseline_and_anomaly(api: TestClient, fleet: None):
    response = api.get("/api/v1/agents/a1/status")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["agent_id"] == "a1" and body["tenant_id"] == "t1"
    assert body["metrics"]["cpu_usage"] == 97.0
    assert body["metrics"]["status"] == "busy"
    assert datetime.fromisoformat(body["last_heartbeat"]) == at(30)
    # 30 s before NOW, the time this module was imported (a whole suite may pass since)
    assert 29 <= body["seconds_since_heartbeat"] <= 31 + time.time() - NOW
    assert body["baseline"]["heartbeats"] == 2000
    assert body["baseline"]["warmed_up"] is True
    assert body["baseline"]["mean"] == {"cpu_usage": 40.0, "memory_usage": 60.0}
    anomaly = body["latest_anomaly"]
    assert anomaly["score"] == 0.9995 and anomaly["is_anomaly"] is True
    assert anomaly["threshold"] == 0.999
    assert datetime.fromisoformat(anomaly["timestamp"]) == at(30)
    assert anomaly["reasons"] == [
        {"feature": "cpu_usage", "value": 97.0, "baseline_mean": 40.0, "baseline_std": 5.0,
         "z": pytest.approx(11.4)}
    ]  # fmt: skip
    threats = body["recent_threats"]
    assert [t["rule"] for t in threats] == ["resource_exhaustion", "high_error_rate"]
    assert threats[0]["severity"] == "CRITICAL" and threats[0]["category"] == "SYSTEM"
    assert datetime.fromisoformat(threats[0]["first_seen"]) == at(60)


def test_status_of_agent_without_baseline_or_anomalies(api: TestClient, fleet: None):
    body = api.get("/api/v1/agents/a2/status").json()
    assert body["metrics"]["cpu_usage"] == 12.0
    assert body["metrics"]["status"] is None
    assert body["baseline"] is None and body["latest_anomaly"] is None
    assert body["recent_threats"] == []


def test_status_of_agent_with_only_a_baseline(api: TestClient, fleet: None):
    body = api.get("/api/v1/agents/a3/status").json()
    assert body["metrics"] is None and body["last_heartbeat"] is None
    assert body["seconds_since_heartbeat"] is None
    assert body["baseline"]["heartbeats"] == 5


def test_unknown_agent_is_404_saying_which(api: TestClient, fleet: None):
    for path in (
        "/api/v1/agents/ghost-7/status",
        "/api/v1/agents/ghost-7/anomalies",
        "/api/v1/agents/ghost-7/threats",
    ):
        response = api.get(path)
        assert response.status_code == 404, path
        assert "ghost-7" in response.json()["detail"]


def test_agent_id_longer_than_128_characters_is_422(api: TestClient):
    response = api.get(f"/api/v1/agents/{'x' * 129}/status")
    assert response.status_code == 422
    assert "agent_id" in response.json()["message"]
    assert api.get(f"/api/v1/agents/{'x' * 128}/status").status_code == 404


def test_clickhouse_failure_is_503_not_an_empty_answer(
    api: TestClient, ch: Client, offline_settings: Settings
):
    ch.command(f"DROP DATABASE {offline_settings.clickhouse_database}")
    response = api.get("/api/v1/agents/a1/status")
    assert response.status_code == 503
    assert response.json()["detail"].startswith("ClickHouse did not answer")
    health = api.get("/api/v1/system/health").json()["clickhouse"]
    assert health["reachable"] is True and "counting rows failed" in health["error"]


# --- /api/v1/agents/{id}/anomalies -----------------------------------------------


@pytest.fixture
def anomaly_history(ch: Client, offline_settings: Settings) -> list[datetime]:
    """a1 has 10 anomalies one minute apart (written twice, as a replay would)."""
    rows = [anomaly_row("a1", 60 * (10 - i), score=0.99 + i / 1000) for i in range(10)]
    insert(ch, offline_settings, "anomalies", rows, ANOMALY_COLUMNS)
    insert(ch, offline_settings, "anomalies", rows, ANOMALY_COLUMNS)  # the replay
    insert(ch, offline_settings, "anomalies", [anomaly_row("a2", 60)], ANOMALY_COLUMNS)
    insert(ch, offline_settings, "metrics", [heartbeat_row("a1", 5)], METRIC_COLUMNS)
    return [row[2] for row in rows]


def test_anomalies_come_newest_first_without_replayed_duplicates(
    api: TestClient, anomaly_history: list[datetime]
):
    body = api.get("/api/v1/agents/a1/anomalies").json()
    stamps = [datetime.fromisoformat(a["timestamp"]) for a in body["anomalies"]]
    assert stamps == sorted(anomaly_history, reverse=True)
    assert body["count"] == 10 and body["limit"] == 100
    assert body["anomalies"][0]["reasons"][0]["feature"] == "cpu_usage"


def test_anomalies_filter_by_time_range_inclusive(api: TestClient, anomaly_history: list[datetime]):
    since, until = anomaly_history[2], anomaly_history[5]
    iso = api.get(
        "/api/v1/agents/a1/anomalies",
        params={"since": since.isoformat(), "until": until.isoformat().replace("+00:00", "Z")},
    ).json()
    stamps = [datetime.fromisoformat(a["timestamp"]) for a in iso["anomalies"]]
    assert stamps == anomaly_history[5:1:-1]
    epoch = api.get(
        "/api/v1/agents/a1/anomalies",
        params={"since": str(since.timestamp()), "until": str(until.timestamp())},
    ).json()
    assert epoch["anomalies"] == iso["anomalies"]
    assert datetime.fromisoformat(epoch["since"]) == since
    only_since = api.get("/api/v1/agents/a1/anomalies", params={"since": since.isoformat()})
    assert only_since.json()["count"] == 8


def test_anomalies_limit_keeps_the_newest(api: TestClient, anomaly_history: list[datetime]):
    body = api.get("/api/v1/agents/a1/anomalies", params={"limit": 3}).json()
    stamps = [datetime.fromisoformat(a["timestamp"]) for a in body["anomalies"]]
    assert stamps == anomaly_history[:-4:-1]
    assert body["count"] == 3


def test_known_agent_without_anomalies_in_range_is_an_empty_list(
    api: TestClient, anomaly_history: list[datetime]
):
    response = api.get("/api/v1/agents/a1/anomalies", params={"until": "2001-01-01T00:00:00Z"})
    assert response.status_code == 200
    assert response.json()["anomalies"] == []


def load_anomalies(ch: Client, settings: Settings, docs: list[dict]) -> None:
    """Store ``agents.anomalies`` records as the loader does (its row builder)."""
    from sinks.loader import anomaly_row

    rows = [anomaly_row(orjson.dumps(doc)) for doc in docs]
    stamps = ("timestamp", "episode_start", "episode_end")
    values = [
        tuple(datetime.fromtimestamp(v, UTC) if c in stamps and v is not None else v
              for c, v in row.items())
        for row in rows
    ]  # fmt: skip
    insert(ch, settings, "anomalies", values, list(rows[0]))


def test_anomalies_of_an_episode_name_its_start(
    api: TestClient, ch: Client, offline_settings: Settings
):
    """Records the detector publishes inside an episode carry ``episode_start`` (issue 12):
    loaded through the loader's row builder, /anomalies shows it; rows outside one, null."""
    start = round(NOW - 300, 3)
    docs = [
        {"agent_id": "a1", "tenant_id": "t1", "timestamp": NOW - seconds_ago, "score": 1.0,
         "threshold": 0.99, "is_anomaly": seconds_ago == 300, "detector": "baseline_likelihood",
         "reasons": [{"feature": "cpu_usage", "value": 90.0, "baseline_mean": 40.0,
                      "baseline_std": 5.0, "z": 10.0}], **episode}
        for seconds_ago, episode in ((300, {"episode_start": start}),
                                     (240, {"episode_start": start}), (30, {}))
    ]  # fmt: skip
    load_anomalies(ch, offline_settings, docs)
    body = api.get("/api/v1/agents/a1/anomalies").json()
    episodes = [a["episode_start"] for a in body["anomalies"]]
    assert episodes[0] is None
    assert [datetime.fromisoformat(e) for e in episodes[1:]] == [at(300)] * 2


def test_episodes_are_one_entry_each_with_their_end_once_closed(
    api: TestClient, ch: Client, offline_settings: Settings
):
    """/episodes (issue 12, Deliver 4): the records of a closed episode and of an open one,
    loaded through the loader's row builder, give one entry each, newest first: its start,
    its end (null while open), its records and anomalies, peak score and the metrics that
    broke; the closing record counts in none of them, a record outside any is left out."""

    def reason(feature: str) -> dict:
        return {"feature": feature, "value": 90.0, "baseline_mean": 40.0, "baseline_std": 5.0,
                "z": 10.0}  # fmt: skip

    old, new = round(NOW - 7200, 3), round(NOW - 600, 3)
    records = [  # (seconds ago, score, is_anomaly, reasons, episode fields)
        (7200, 1.0, True, ["cpu_usage"], {"episode_start": old}),
        (7170, 0.9, False, ["cpu_usage", "error_rate"], {"episode_start": old}),
        (7140, 0.95, False, ["error_rate"], {"episode_start": old}),
        (5340, 0.02, False, [], {"episode_start": old, "episode_end": round(NOW - 7140, 3)}),
        (3000, 0.97, False, ["bytes_out"], {}),
        (600, 1.0, True, ["memory_usage"], {"episode_start": new}),
        (570, 0.98, False, ["memory_usage"], {"episode_start": new}),
    ]
    docs = [
        {"agent_id": "a1", "tenant_id": "t1", "timestamp": round(NOW - ago, 3), "score": score,
         "threshold": 0.99, "is_anomaly": fired, "detector": "baseline_likelihood",
         "reasons": [reason(f) for f in features], **episode}
        for ago, score, fired, features, episode in records
    ]  # fmt: skip
    load_anomalies(ch, offline_settings, docs)
    body = api.get("/api/v1/agents/a1/episodes").json()
    assert body["count"] == 2
    latest, closed = body["episodes"]
    assert datetime.fromisoformat(latest["start"]) == at(600) and latest["end"] is None
    assert datetime.fromisoformat(latest["last_record"]) == at(570)
    assert (latest["records"], latest["anomalies"], latest["peak_score"]) == (2, 1, 1.0)
    assert latest["metrics"] == ["memory_usage"]
    assert datetime.fromisoformat(closed["start"]) == at(7200)
    assert datetime.fromisoformat(closed["end"]) == at(7140)
    assert (closed["records"], closed["anomalies"], closed["peak_score"]) == (3, 1, 1.0)
    assert closed["metrics"] == ["cpu_usage", "error_rate"]
    only_old = api.get("/api/v1/agents/a1/episodes", params={"until": at(3600).isoformat()})
    assert [e["start"] for e in only_old.json()["episodes"]] == [closed["start"]]
    listed = api.get("/api/v1/agents/a1/anomalies").json()["anomalies"]
    closing = [a for a in listed if a["episode_end"] is not None]
    assert len(closing) == 1 and datetime.fromisoformat(closing[0]["episode_end"]) == at(7140)
    assert api.get("/api/v1/agents/nobody/episodes").status_code == 404


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "is after until"),
        ({"limit": 0}, "limit"),
        ({"limit": 10_001}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"since": "yesterday"}, "neither ISO-8601"),
        ({"until": "2026-01-01T00:00:00"}, "no time zone"),
        ({"since": "1e30"}, "outside the years"),
    ],
)
def test_bad_anomaly_parameters_are_422_with_a_message(
    api: TestClient, fleet: None, params: dict, words: str
):
    response = api.get("/api/v1/agents/a1/anomalies", params=params)
    assert response.status_code == 422
    body = response.json()
    assert words in body["message"], body
    assert body["detail"] and body["detail"][0]["loc"][0] == "query"


# --- /api/v1/agents/{id}/threats ---------------------------------------------------


#: a1's threat history: (minutes ago, rule, category, severity), oldest first.
THREAT_HISTORY = [
    (80, "high_error_rate", "PERFORMANCE", "HIGH"),
    (70, "resource_exhaustion", "SYSTEM", "CRITICAL"),
    (60, "abnormal_metric", "SECURITY", "WARNING"),
    (50, "data_exfiltration", "SECURITY", "EMERGENCY"),
    (40, "high_error_rate", "PERFORMANCE", "HIGH"),
    (30, "status_flapping", "SYSTEM", "WARNING"),
    (20, "abnormal_metric", "SECURITY", "HIGH"),
    (10, "resource_exhaustion", "SYSTEM", "CRITICAL"),
]


@pytest.fixture
def threat_history(ch: Client, offline_settings: Settings) -> list[datetime]:
    """a1 has 8 threats ten minutes apart (written twice, as a replay would); a2 has one."""
    rows = [
        threat_row("a1", 60 * minutes, rule, category, severity)
        for minutes, rule, category, severity in THREAT_HISTORY
    ]
    insert(ch, offline_settings, "threats", rows, THREAT_COLUMNS)
    insert(ch, offline_settings, "threats", rows, THREAT_COLUMNS)  # the replay
    insert(ch, offline_settings, "threats", [threat_row("a2", 60)], THREAT_COLUMNS)
    insert(ch, offline_settings, "metrics", [heartbeat_row("a1", 5)], METRIC_COLUMNS)
    return [row[5] for row in rows]


def test_threats_come_newest_first_with_their_evidence(
    api: TestClient, threat_history: list[datetime]
):
    response = api.get("/api/v1/agents/a1/threats")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 8 and body["limit"] == 100  # no replayed duplicates
    assert body["severity"] is None and body["category"] is None
    stamps = [datetime.fromisoformat(t["first_seen"]) for t in body["threats"]]
    assert stamps == sorted(threat_history, reverse=True)
    newest = body["threats"][0]
    assert (newest["rule"], newest["category"], newest["severity"]) == THREAT_HISTORY[-1][1:]
    assert datetime.fromisoformat(newest["last_seen"]) == at(600 - 30)
    evidence = newest["evidence"]
    assert evidence["condition"] == "avg(error_rate) over 300s > 0.2"
    assert evidence["values"] == {"error_rate": 0.31}
    assert evidence["baseline"] == [
        {"feature": "error_rate", "value": 0.31, "baseline_mean": 0.01, "baseline_std": 0.005,
         "z": 60.0}
    ]  # fmt: skip
    start, end = (datetime.fromisoformat(evidence[k]) for k in ("window_start", "window_end"))
    assert (end - start).total_seconds() == pytest.approx(330)
    assert end == at(600 - 30)


def test_threats_filter_by_first_seen_inclusive(api: TestClient, threat_history: list[datetime]):
    since, until = threat_history[2], threat_history[5]
    iso = api.get(
        "/api/v1/agents/a1/threats",
        params={"since": since.isoformat(), "until": until.isoformat().replace("+00:00", "Z")},
    ).json()
    stamps = [datetime.fromisoformat(t["first_seen"]) for t in iso["threats"]]
    assert stamps == threat_history[5:1:-1]
    epoch = api.get(
        "/api/v1/agents/a1/threats",
        params={"since": str(since.timestamp()), "until": str(until.timestamp())},
    ).json()
    assert epoch["threats"] == iso["threats"]
    assert datetime.fromisoformat(epoch["until"]) == until
    only_since = api.get("/api/v1/agents/a1/threats", params={"since": since.isoformat()})
    assert only_since.json()["count"] == 6
    limited = api.get("/api/v1/agents/a1/threats", params={"limit": 2}).json()
    stamps = [datetime.fromisoformat(t["first_seen"]) for t in limited["threats"]]
    assert stamps == threat_history[:-3:-1]  # the newest two


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"severity": "CRITICAL"}, ["resource_exhaustion", "resource_exhaustion"]),
        ({"severity": ["EMERGENCY", "WARNING"]}, ["status_flapping", "data_exfiltration",
                                                  "abnormal_metric"]),
        ({"severity": "critical"}, ["resource_exhaustion", "resource_exhaustion"]),
        ({"category": "SECURITY"}, ["abnormal_metric", "data_exfiltration", "abnormal_metric"]),
        ({"category": ["SYSTEM", "PERFORMANCE"]}, ["resource_exhaustion", "status_flapping",
                                                   "high_error_rate", "resource_exhaustion",
                                                   "high_error_rate"]),
        ({"category": "SECURITY", "severity": "HIGH"}, ["abnormal_metric"]),
        ({"category": "COMPLIANCE"}, []),
    ],
)  # fmt: skip
def test_threats_filter_by_severity_and_category(
    api: TestClient, threat_history: list[datetime], params: dict, expected: list[str]
):
    response = api.get("/api/v1/agents/a1/threats", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [t["rule"] for t in body["threats"]] == expected
    for name in ("severity", "category"):
        if name in params:
            asked = params[name] if isinstance(params[name], list) else [params[name]]
            assert body[name] == [value.upper() for value in asked]
            assert all(t[name] in body[name] for t in body["threats"])


def test_filters_combine_with_the_time_range(api: TestClient, threat_history: list[datetime]):
    body = api.get(
        "/api/v1/agents/a1/threats",
        params={"since": threat_history[3].isoformat(), "severity": "HIGH"},
    ).json()
    assert [datetime.fromisoformat(t["first_seen"]) for t in body["threats"]] == [
        threat_history[6],
        threat_history[4],
    ]


def test_status_shows_the_five_latest_threats(api: TestClient, threat_history: list[datetime]):
    body = api.get("/api/v1/agents/a1/status").json()
    stamps = [datetime.fromisoformat(t["first_seen"]) for t in body["recent_threats"]]
    assert stamps == threat_history[:-6:-1]


def test_threat_with_unreadable_evidence_is_still_shown(
    api: TestClient, ch: Client, offline_settings: Settings
):
    insert(ch, offline_settings, "threats", [threat_row("a1", 60, evidence="{not json")],
           THREAT_COLUMNS)  # fmt: skip
    threats = api.get("/api/v1/agents/a1/threats").json()["threats"]
    evidence = threats[0]["evidence"]
    assert evidence["condition"] == "avg(error_rate) over 300s > 0.2"
    assert evidence["values"] == {} and evidence["baseline"] == []
    assert datetime.fromisoformat(evidence["window_start"]) == at(60)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"severity": "SEVERE"}, "severity"),
        ({"severity": ["HIGH", "urgent"]}, "severity"),
        ({"category": "NETWORK"}, "category"),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "is after until"),
        ({"limit": 0}, "limit"),
        ({"until": "2026-01-01T00:00:00"}, "no time zone"),
    ],
)
def test_bad_threat_parameters_are_422_with_a_message(
    api: TestClient, fleet: None, params: dict, words: str
):
    response = api.get("/api/v1/agents/a1/threats", params=params)
    assert response.status_code == 422, response.text
    body = response.json()
    assert words in body["message"], body
    assert body["detail"] and body["detail"][0]["loc"][0] == "query"


# --- health, /metrics, docs ---------------------------------------------------------


def test_health_is_degraded_but_fast_when_the_broker_is_down(api: TestClient, fleet: None):
    started = time.monotonic()
    response = api.get("/api/v1/system/health")
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert elapsed < 1.0, f"health took {elapsed:.2f} s with the broker down"
    body = response.json()
    assert body["status"] == "degraded"
    assert body["broker"]["reachable"] is False and body["broker"]["cluster_id"] is None
    assert any(problem.startswith("broker:") for problem in body["problems"])
    assert body["dataflow"]["lag"] is None and body["dataflow"]["lag_state"] == "unknown"
    assert body["dataflow"]["lag_unknown_reason"].startswith("the broker is unreachable")
    assert body["loader"]["running"] is False and body["loader"]["lag"] is None
    clickhouse = body["clickhouse"]
    assert clickhouse["reachable"] is True and clickhouse["ping_ms"] > 0
    counts = clickhouse["counts"]
    assert (counts["agents"], counts["metrics_rows"], counts["anomalies"]) == (2, 4, 3)
    assert counts["threats"] == 2 and counts["deadletter"] == 0
    assert body["uptime_s"] >= 0

    started = time.monotonic()  # the broker's answer is cached: the second call is quick
    assert api.get("/api/v1/system/health").json()["status"] == "degraded"
    assert time.monotonic() - started < 0.2


PROMETHEUS_SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})? '
    r"[-+]?(\d+(\.\d*)?([eE][-+]?\d+)?|NaN|[-+]Inf)$"
)


def test_metrics_page_is_valid_prometheus_text(api: TestClient, fleet: None):
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for line in text.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or PROMETHEUS_SAMPLE.match(line), line
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "agentwatch_up",
        "agentwatch_uptime_seconds",
        "agentwatch_broker_up",
        "agentwatch_ingest_rows_per_second",
        "agentwatch_loader_batch_rows",
        "agentwatch_loader_rows_inserted",
        "agentwatch_loader_errors",
        "agentwatch_deadletter_rows",
    ):
        assert name in families, name
    assert families["agentwatch_broker_up"].samples[0].value == 0
    assert families["agentwatch_loader_rows_inserted"].type == "counter"
    assert "agentwatch_dataflow_lag_messages" not in families  # unknown: left out
    rows = {s.labels["table"]: s.value for s in families["agentwatch_clickhouse_rows"].samples}
    assert rows == {"metrics": 4, "anomalies": 3, "threats": 2, "deadletter": 0}


def test_docs_openapi_and_unknown_routes(api: TestClient):
    assert api.get("/docs").status_code == 200
    paths = api.get("/openapi.json").json()["paths"]
    assert {
        "/api/v1/agents/{agent_id}/status",
        "/api/v1/agents/{agent_id}/threats",
        "/api/v1/system/health",
        "/metrics",
    } <= set(paths)
    assert api.get("/api/v1/nothing-here").status_code == 404


# --- with the real broker -------------------------------------------------------------


def heartbeat_docs(agent: str, count: int) -> list[dict]:
    """``count`` heartbeats of one agent, one second apart, the last a second ago."""
    return [
        {"agent_id": agent, "tenant_id": "t1", "timestamp": NOW - count + i,
         "cpu_usage": 40.0 + i % 5, "memory_usage": 60.0, "disk_usage": 30.0,
         "network_latency": 12.5, "active_tasks": 3, "completed_tasks": 150 + i,
         "failed_tasks": 2, "error_rate": 0.01, "response_time_avg": 230.0,
         "uptime_seconds": 86400.0 + i, "bytes_out": 1024}
        for i in range(count)
    ]  # fmt: skip


def produce_heartbeats(
    settings: Settings, agent: str, count: int, partition: int | None = None
) -> None:
    """``count`` heartbeats of one agent, in one producer batch (keyed, or to ``partition``)."""
    producer = Producer({**settings.kafka_config(), "linger.ms": 50})
    extra = {} if partition is None else {"partition": partition}
    for doc in heartbeat_docs(agent, count):
        producer.produce(settings.topic("metrics"), orjson.dumps(doc), key=agent.encode(), **extra)
    assert producer.flush(10) == 0


def produce_metric_rows(settings: Settings, agent: str, count: int) -> None:
    """The same heartbeats as the dataflow hands them to the loader (one Arrow batch)."""
    producer = Producer(settings.kafka_config())
    for message in encode_json(list(map(orjson.dumps, heartbeat_docs(agent, count)))):
        producer.produce(settings.topic("metric_rows"), message, key=b"0")
    assert producer.flush(10) == 0


@contextmanager
def app_on_broker(settings: Settings) -> Iterator[TestClient]:
    """The app on ``settings``' broker and chDB, with no loader of its own."""
    client = connect(settings)
    try:
        with TestClient(
            create_app(settings, client=client, run_loader=False), client=LOOPBACK_CLIENT
        ) as api:
            yield api
    finally:
        client.close()


def commit_dataflow_offset(settings: Settings, partition: int, offset: int) -> None:
    """Commit ``offset`` on ``partition`` of the metrics topic as the dataflow's group."""
    committer = Consumer(
        {**settings.kafka_config(),
         "group.id": settings.dataflow_group_id, "enable.auto.commit": False}
    )  # fmt: skip
    try:
        committed = TopicPartition(settings.topic("metrics"), partition, offset)
        committer.commit(offsets=[committed], asynchronous=False)
    finally:
        committer.close()


@pytest.mark.integration
def test_health_is_ok_and_reports_dataflow_lag_with_a_real_broker(settings: Settings):
    settings = settings.model_copy(update={"api_health_cache_s": 0.0})  # every call probes
    ensure_topics(settings)
    with app_on_broker(settings) as api:
        body = api.get("/api/v1/system/health").json()
        assert body["status"] == "ok", body["problems"]
        assert body["broker"]["reachable"] is True
        assert body["broker"]["cluster_id"]
        assert body["dataflow"]["lag"] is None  # the dataflow committed nothing yet
        assert "committed no offsets" in body["dataflow"]["detail"]
        assert "committed no offsets" in body["dataflow"]["lag_unknown_reason"]

        # 30 heartbeats in one batch on partition 1 (Tansu's ListOffsets would say 1),
        # 10 on partition 2; the dataflow group committed 26 on partition 1 only.
        produce_heartbeats(settings, "lagging-agent", 30, partition=1)
        produce_heartbeats(settings, "other-agent", 10, partition=2)
        commit_dataflow_offset(settings, partition=1, offset=26)
        dataflow = api.get("/api/v1/system/health").json()["dataflow"]
        assert dataflow["lag"] == (30 - 26) + 10, dataflow
        assert dataflow["lag_state"] == "ok" and dataflow["lag_unknown_reason"] is None
        assert "agentwatch_dataflow_lag_messages 14.0" in api.get("/metrics").text


def test_health_reports_a_loader_process_from_its_metrics_and_says_when_it_is_gone(
    settings: Settings,
):
    """`agentwatch up` runs the loader as a process of its own: the API reads its /metrics."""
    from sinks.loader_metrics import LoaderFigures
    from sinks.loader_metrics import serve as serve_loader_metrics

    figures = LoaderFigures(
        running=True, lag={"metric_rows": 7, "threats": 0}, rows_inserted={"metric_rows": 500},
        skipped_invalid={"events": 2}, batches_inserted=4, batch_rows_sum=500,
        last_batch_rows=100, errors=1, last_insert_at=datetime(2026, 12, 7, 3, tzinfo=UTC),
    )  # fmt: skip
    port = free_port()
    server = serve_loader_metrics(lambda: figures, "127.0.0.1", port)
    settings = settings.model_copy(
        update={
            "api_health_cache_s": 0.0,
            "api_loader_metrics_url": f"http://127.0.0.1:{port}/metrics",
        }
    )
    ensure_topics(settings)
    with app_on_broker(settings) as api:
        body = api.get("/api/v1/system/health").json()
        loader = body["loader"]
        assert body["status"] == "ok", body["problems"]
        assert (loader["running"], loader["state"], loader["lag_total"]) == (True, "ok", 7)
        assert loader["rows_inserted"] == {"metric_rows": 500}
        assert loader["skipped_invalid"] == {"events": 2} and loader["errors"] == 1
        assert loader["last_insert_at"].startswith("2026-12-07T03:00:00")
        assert 'agentwatch_loader_lag_messages{topic="metric_rows"} 7.0' in api.get("/metrics").text
        server.shutdown()
        server.server_close()
        gone = api.get("/api/v1/system/health").json()
        assert gone["status"] == "degraded"
        assert "loader: not running, nothing reaches ClickHouse" in gone["problems"]
        assert f"127.0.0.1:{port}/metrics" in gone["loader"]["last_error"]


class FetchesNeverAnswered(Consumer):
    """A consumer whose fetches the broker never answers in time (its ListOffsets it
    does): the watermark a fetch reports stays unknown, as librdkafka says it (-1001)."""

    def get_watermark_offsets(self, partition, timeout=None, cached=False):
        if cached:
            return (-1001, -1001)
        return super().get_watermark_offsets(partition, timeout=timeout, cached=False)


def test_health_says_why_the_lag_is_unknown_when_the_broker_is_slow_to_answer(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """The broker answers the probe's metadata and offsets but not its fetch within the
    probe's budget: the lag is unknown, and the health says why, naming the budget."""
    from api import broker_probe

    ensure_topics(settings)
    produce_heartbeats(settings, "lagging-agent", 5, partition=1)
    # (the dataflow committed: the lag is not unknown for want of commits)
    commit_dataflow_offset(settings, partition=1, offset=2)
    monkeypatch.setattr(broker_probe, "Consumer", FetchesNeverAnswered)
    with app_on_broker(settings) as api:
        started = time.monotonic()
        body = api.get("/api/v1/system/health").json()
        elapsed = time.monotonic() - started
    dataflow = body["dataflow"]
    assert dataflow["lag"] is None and dataflow["lag_state"] == "unknown", dataflow
    reason = dataflow["lag_unknown_reason"]
    assert reason == (
        "the broker did not report the end of every partition of "
        f"{settings.topic('metrics')} within 0.5 s (AGENTWATCH_API_BROKER_TIMEOUT_S)"
    ), dataflow
    assert dataflow["detail"] == f"unknown: {reason}"
    assert body["broker"]["reachable"] is True
    assert elapsed < 1.5, f"health took {elapsed:.2f} s: the probe kept to its budget"


@pytest.mark.integration
def test_app_runs_the_loader_and_serves_what_it_loads(
    settings: Settings, caplog: pytest.LogCaptureFixture
):
    """The full lifespan: the app opens ClickHouse itself, loads heartbeats (as the
    dataflow hands them on: Arrow batches on agents.metric_rows), stops cleanly."""
    ensure_topics(settings)
    settings = settings.model_copy(update={"api_background_niceness": 5})
    app = create_app(settings)
    with TestClient(app, client=LOOPBACK_CLIENT) as api:
        produce_heartbeats(settings, "loaded-agent", 50)
        produce_metric_rows(settings, "loaded-agent", 50)

        def loaded():
            response = api.get("/api/v1/agents/loaded-agent/status")
            return response.status_code == 200 and response.json()["metrics"]["uptime_seconds"]

        assert wait_until(loaded, 20, "the heartbeats in the status") == 86400.0 + 49

        def written():  # (the status answers from the projection, which may be first)
            health = api.get("/api/v1/system/health").json()
            return health["loader"]["rows_inserted"]["metric_rows"] >= 50 and health

        health = wait_until(written, 20, "the loader to write the heartbeats")
        assert health["status"] == "ok", health["problems"]
        assert health["loader"]["running"] is True
        assert health["loader"]["rows_inserted"]["metric_rows"] == 50
        # the loader and the audit writer give the CPU to the requests (and this thread)
        runtime = app.state.runtime
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        lowered = min(19, ours + settings.api_background_niceness)
        lanes = [lane._thread for lane in runtime.loader.lanes]
        assert len(lanes) == 2  # (the findings' lane and the others')
        for thread in (*lanes, runtime.audit._thread):
            assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == lowered, thread.name
        assert ours < lowered or ours == 19
        families = {f.name: f for f in text_string_to_metric_families(api.get("/metrics").text)}
        inserted = {
            s.labels["topic"]: s.value
            for s in families["agentwatch_loader_rows_inserted"].samples
            if s.name.endswith("_total")
        }
        assert inserted["metric_rows"] == 50
        assert families["agentwatch_ingest_rows_per_second"].samples[0].value > 0
        caplog.set_level("INFO", logger="sinks.loader")
    stopped = [r.getMessage() for r in caplog.records if r.name == "sinks.loader"]
    assert any(m.startswith("loader_stopped rows_inserted=metric_rows:50") for m in stopped), (
        stopped
    )


# --- POST /api/v1/sql (the sandbox's refusals and limits: tests/test_sql_sandbox.py) ------


@pytest.fixture
def sql_api(offline_settings: Settings, ch: Client) -> Iterator[TestClient]:
    """The app with POST /api/v1/sql switched on (it is off by default)."""
    enabled = offline_settings.model_copy(update={"api_sql_enabled": True})
    with TestClient(
        create_app(enabled, client=ch, run_loader=False), client=LOOPBACK_CLIENT
    ) as test_client:
        yield test_client


def test_sql_answers_json_with_column_names_types_and_rows(sql_api: TestClient, fleet: None):
    query = "SELECT agent_id, count() AS beats, max(cpu_usage) AS top FROM metrics"
    response = sql_api.post("/api/v1/sql", json={"query": query + " GROUP BY 1 ORDER BY 1;"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["columns"] == [
        {"name": "agent_id", "type": "String"},
        {"name": "beats", "type": "UInt64"},
        {"name": "top", "type": "Float64"},
    ]
    assert body["rows"] == [["a1", 3, 97.0], ["a2", 1, 12.0]]
    assert body["row_count"] == 2 and body["elapsed_s"] >= 0
    when = sql_api.post("/api/v1/sql", json={"query": "SELECT max(timestamp) FROM metrics"})
    assert datetime.fromisoformat(when.json()["rows"][0][0]) == at(10)  # ISO-8601 in UTC


def test_sql_answers_csv_and_tsv_with_a_header(sql_api: TestClient, fleet: None, offline_settings):
    query = (
        f"SELECT agent_id, status, mean FROM {offline_settings.clickhouse_database}.metrics "
        "LEFT JOIN (SELECT agent_id, any(mean) AS mean FROM baselines GROUP BY agent_id) AS b "
        "USING agent_id WHERE agent_id = 'a1' ORDER BY timestamp DESC LIMIT 1"
    )
    csv_answer = sql_api.post("/api/v1/sql", json={"query": query, "format": "csv"})
    assert csv_answer.status_code == 200, csv_answer.text
    assert csv_answer.headers["content-type"].startswith("text/csv")
    assert csv_answer.text.splitlines() == [
        "agent_id,status,mean",
        'a1,busy,"{""cpu_usage"":40.0,""memory_usage"":60.0}"',
    ]
    tsv_answer = sql_api.post("/api/v1/sql", json={"query": query, "format": "tsv"})
    assert tsv_answer.headers["content-type"].startswith("text/tab-separated-values")
    assert tsv_answer.text.splitlines()[0] == "agent_id\tstatus\tmean"


def test_the_read_only_session_itself_refuses_writes_ddl_and_raised_limits(
    offline_settings: Settings, ch: Client
):
    """readonly=1 holds through clickhouse-connect's chdb backend, even for unchecked SQL."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    from api.sql import open_read_only_client

    insert(ch, offline_settings, "metrics", [heartbeat_row("a1", 5)], METRIC_COLUMNS)
    reader = open_read_only_client(offline_settings)
    try:
        for statement in (
            "INSERT INTO metrics (agent_id, tenant_id) VALUES ('x', 't')",
            "INSERT INTO metrics (agent_id, tenant_id) SELECT 'x', 't'",
            "DROP TABLE metrics",
            "ALTER TABLE metrics DELETE WHERE 1",
            "CREATE TABLE stolen (a UInt8) ENGINE = Memory",
            "SET max_result_rows = 0",
            "SET max_memory_usage = 0",
            "SELECT 1 SETTINGS max_threads = 8",
        ):
            with pytest.raises(DatabaseError) as refused:
                reader.query(statement)
            assert refused.value.code == 164, statement  # READONLY
        assert reader.query("SELECT count() FROM metrics").result_rows == [(1,)]
    finally:
        reader.close()
    assert ch.query(f"SELECT count() FROM {offline_settings.clickhouse_database}.metrics")
    assert ch.command("EXISTS TABLE stolen") == 0


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"query": "SELECT FROM WHERE"}, 400, "Expected table name but got 'WHERE'"),
        ({"query": "SELECT * FROM no_such_table"}, 403, "is not one analysts may read"),
        ({"query": "SELECT 1 FORMAT JSON"}, 400, "leave out FORMAT JSON"),
        ({"query": " -- nothing\n ; "}, 400, "the query is empty"),
        ({"query": "SELECT 1", "format": "xml"}, 422, "format"),
        ({"query": ""}, 422, "query"),
    ],
)
def test_bad_sql_requests_say_what_is_wrong(
    sql_api: TestClient, body: dict, status: int, says: str
):
    response = sql_api.post("/api/v1/sql", json=body)
    assert response.status_code == status, response.text
    assert says in response.text


def test_sql_is_off_unless_switched_on(offline_settings: Settings, ch: Client):
    assert offline_settings.api_sql_enabled is False  # the default
    with TestClient(
        create_app(offline_settings, client=ch, run_loader=False), client=LOOPBACK_CLIENT
    ) as api:
        response = api.post("/api/v1/sql", json={"query": "SELECT 1"})
    assert response.status_code == 403
    assert "AGENTWATCH_API_SQL_ENABLED=false" in response.json()["detail"]


# --- python -m api ----------------------------------------------------------------------


def api_process_env(settings: Settings, tmp_path, port: int) -> dict[str, str]:
    """Environment of a ``python -m api`` child with its own chDB directory (one per process)."""
    return {
        **os.environ,
        **settings.as_env(),
        "AGENTWATCH_API_PORT": str(port),
        "AGENTWATCH_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'api-chdb'}",
    }


@pytest.mark.e2e  # starts processes
def test_python_m_api_refuses_a_busy_port_in_one_line(offline_settings: Settings, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "api"],
            env=api_process_env(offline_settings, tmp_path, port),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"agentwatch api: port 127.0.0.1:{port} is busy; stop what listens there "
        "or set AGENTWATCH_API_PORT"
    ]


@pytest.mark.e2e  # starts processes
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_python_m_api_serves_and_stops_cleanly_on_a_signal(
    offline_settings: Settings, tmp_path, stop_signal: signal.Signals
):
    port = free_port()
    log_path = tmp_path / "api.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "api"],
            env=api_process_env(offline_settings, tmp_path, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def health():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/v1/system/health", timeout=2)
            except httpx.TransportError:
                assert process.poll() is None, log_path.read_text()
                return None

        assert wait_until(health, 60, "python -m api to answer").json()["status"] == "degraded"
        process.send_signal(stop_signal)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    lines = [line for line in log_path.read_text().splitlines() if line.startswith("ts=")]
    assert any('logger=sinks.loader msg="loader_stopped' in line for line in lines), lines
    assert 'msg="api_stopped"' in lines[-3], lines
    assert "Traceback" not in log_path.read_text()


# --- alerts, security, incidents (rows as the loader writes them) ---------------------


def insert_docs(ch: Client, settings: Settings, table: str, to_row, docs: list[dict]) -> None:
    """Insert topic messages through the loader's row builder (epoch seconds → datetimes)."""
    rows = [to_row(orjson.dumps(doc)) for doc in docs]
    columns = list(rows[0])
    stamps = {"timestamp", "first_seen", "last_seen", "started_at", "fired_at",
              "resolved_at", "updated_at", "issued_at", "episode_start", "episode_end"}  # fmt: skip
    values = [
        tuple(
            datetime.fromtimestamp(v, UTC) if c in stamps and v is not None else v
            for c, v in row.items()
        )
        for row in rows
    ]
    ch.insert(table, values, column_names=columns, database=settings.clickhouse_database)


def alert_doc(agent: str, rule: str, state: str, seconds_ago: float, **extra: object) -> dict:
    fired = state != "pending"
    t = NOW - seconds_ago
    return {
        "fingerprint": f"{agent}-{rule}", "agent_id": agent, "tenant_id": extra.pop("tenant", "t1"),
        "rule": rule, "category": "SECURITY" if fired else None,
        "severity": extra.pop("severity", "HIGH") if fired else None, "state": state,
        "started_at": t - 600, "fired_at": t - 300 if fired else None,
        "resolved_at": t if state == "resolved" else None, "last_seen": t, "updated_at": t,
        "flapping": False, "flap_count": 0, "summary": f"{rule} {state} on {agent}",
        "evidence": {"condition": "cpu_usage > 95", "values": {"cpu_usage": 97.0},
                     "window_start": t - 600, "window_end": t} if fired else None,
        "silenced": False, **extra,
    }  # fmt: skip


@pytest.fixture
def surveillance(ch: Client, offline_settings: Settings, fleet: None) -> None:
    """Alerts of a1 and a2 (some resolved since), a1's score history and quarantine, incidents."""
    from sinks.loader import alert_row, event_row, incident_row, score_row

    insert_docs(ch, offline_settings, "alerts", alert_row, [
        alert_doc("a1", "hot", "pending", 900),
        alert_doc("a1", "hot", "firing", 800),
        alert_doc("a1", "hot", "resolved", 100),
        alert_doc("a1", "exfil", "firing", 300, severity="CRITICAL"),
        alert_doc("a2", "errors", "firing", 200, tenant="t2"),
        alert_doc("a2", "slow", "pending", 50, tenant="t2"),
    ])  # fmt: skip
    insert_docs(ch, offline_settings, "security_scores", score_row, [
        {"agent_id": "a1", "tenant_id": "t1", "timestamp": NOW - 600 + 60 * i,
         "score": 100.0 - 30 * (i + 1), "delta": -30.0, "cause": cause, "first_seen": NOW - 900}
        for i, cause in enumerate(["exfil", "exfil", "hot"])
    ])  # fmt: skip
    insert_docs(ch, offline_settings, "agent_events", partial(event_row, "state"), [
        {"type": "status_changed", "agent_id": "a1", "tenant_id": "t1", "actor": "system",
         "timestamp": NOW - 480, "payload": {"from": "active", "to": "quarantined",
                                               "reason": "score 10 fell below 20"}},
    ])  # fmt: skip
    insert_docs(ch, offline_settings, "agent_events", partial(event_row, "control"), [
        {"type": "rule_changed", "agent_id": "*", "tenant_id": "*", "actor": "ops",
         "timestamp": NOW - 400, "payload": {"action": "disable", "name": "x"}},
    ])  # fmt: skip
    incident = {"incident_id": "i1", "tenant_id": "t1", "rule": "exfil", "category": "SECURITY",
                "severity": "EMERGENCY", "agent_ids": ["a1", "a2", "a3"], "truncated": False,
                "first_seen": NOW - 700, "last_seen": NOW - 600, "revision": 0}  # fmt: skip
    insert_docs(ch, offline_settings, "incidents", incident_row, [
        incident, {**incident, "agent_ids": [*incident["agent_ids"], "a4"], "revision": 1},
        {**incident, "incident_id": "i2", "tenant_id": "t2", "last_seen": NOW - 100},
    ])  # fmt: skip


def test_alerts_show_each_fingerprint_once_in_its_current_state(api: TestClient, surveillance):
    body = api.get("/api/v1/alerts").json()
    assert [(a["fingerprint"], a["state"]) for a in body["alerts"]] == [
        ("a2-slow", "pending"), ("a1-hot", "resolved"), ("a2-errors", "firing"),
        ("a1-exfil", "firing"),
    ]  # fmt: skip
    assert body["count"] == 4
    exfil = body["alerts"][3]
    assert exfil["severity"] == "CRITICAL" and exfil["evidence"]["values"] == {"cpu_usage": 97.0}
    assert body["alerts"][0]["category"] is None and body["alerts"][0]["evidence"] is None

    def fingerprints(**params: object) -> list[str]:
        response = api.get("/api/v1/alerts", params=params)
        assert response.status_code == 200, response.text
        return [a["fingerprint"] for a in response.json()["alerts"]]

    assert fingerprints(state="firing") == ["a2-errors", "a1-exfil"]  # hot resolved since
    assert fingerprints(state="FIRING", severity="critical") == ["a1-exfil"]
    assert fingerprints(category="SECURITY", tenant="t1") == ["a1-hot", "a1-exfil"]
    assert fingerprints(state=["pending", "resolved"], limit=1) == ["a2-slow"]
    assert fingerprints(tenant="nobody") == []


def test_agent_alerts_and_their_404_and_422(api: TestClient, surveillance):
    body = api.get("/api/v1/agents/a1/alerts").json()
    assert [(a["rule"], a["state"]) for a in body["alerts"]] == [
        ("hot", "resolved"), ("exfil", "firing")
    ]  # fmt: skip
    assert api.get("/api/v1/agents/a3/alerts").json() == {"count": 0, "alerts": []}
    missing = api.get("/api/v1/agents/ghost/alerts")
    assert missing.status_code == 404 and "ghost" in missing.json()["detail"]
    for params in ({"state": "burning"}, {"limit": 0}, {"severity": "SEVERE"}):
        response = api.get("/api/v1/alerts", params=params)
        assert response.status_code == 422, params
        assert next(iter(params)) in response.json()["message"]


def test_security_shows_score_breakdown_and_quarantine(api: TestClient, surveillance):
    body = api.get("/api/v1/agents/a1/security").json()
    assert body["score"] == 10.0 and body["tenant_id"] == "t1"
    assert body["quarantined"] is True and body["quarantine_requested"] is False
    assert body["quarantine_reason"] == "score 10 fell below 20"
    assert body["deductions"] == {"exfil": 60.0, "hot": 30.0}
    assert [(c["cause"], c["delta"], c["score"]) for c in body["changes"]] == [
        ("hot", -30.0, 10.0), ("exfil", -30.0, 40.0), ("exfil", -30.0, 70.0),
    ]  # fmt: skip
    assert len(api.get("/api/v1/agents/a1/security", params={"limit": 1}).json()["changes"]) == 1
    clean = api.get("/api/v1/agents/a2/security").json()
    assert (clean["score"], clean["quarantined"], clean["changes"]) == (100.0, False, [])
    assert api.get("/api/v1/agents/ghost/security").status_code == 404
    status = api.get("/api/v1/agents/a1/status").json()
    assert (status["security_score"], status["quarantined"]) == (10.0, True)
    status = api.get("/api/v1/agents/a2/status").json()
    assert (status["security_score"], status["quarantined"]) == (100.0, False)


def test_quarantine_trusts_commands_and_derived_facts_never_the_agents_topic(
    api: TestClient, ch: Client, offline_settings: Settings, surveillance
):
    """A ``released`` row that claims to come from agents.events (the loader stores none:
    one could only get there by writing the table) does not release a1; a row stored
    before the channels were split (no channel) still counts, as it did then."""
    from sinks.loader import event_row

    released = {"type": "released", "agent_id": "a1", "tenant_id": "t1", "actor": "a1",
                "timestamp": NOW - 100, "payload": {}}  # fmt: skip
    forged = {**event_row("control", orjson.dumps(released)), "channel": "events"}
    stamps = {"timestamp": datetime.fromtimestamp(NOW - 100, UTC)}
    ch.insert("agent_events", [tuple({**forged, **stamps}.values())], column_names=list(forged),
              database=offline_settings.clickhouse_database)  # fmt: skip
    assert api.get("/api/v1/agents/a1/security").json()["quarantined"] is True
    legacy = {**forged, **stamps, "channel": "", "timestamp": datetime.fromtimestamp(NOW - 90, UTC)}
    ch.insert("agent_events", [tuple(legacy.values())], column_names=list(legacy),
              database=offline_settings.clickhouse_database)  # fmt: skip
    assert api.get("/api/v1/agents/a1/security").json()["quarantined"] is False


def test_incidents_newest_revision_filtered_by_tenant(api: TestClient, surveillance):
    body = api.get("/api/v1/incidents").json()
    assert [(i["incident_id"], i["revision"]) for i in body["incidents"]] == [("i2", 0), ("i1", 1)]
    only = api.get("/api/v1/incidents", params={"tenant": "t1"}).json()["incidents"]
    assert [i["agent_ids"] for i in only] == [["a1", "a2", "a3", "a4"]]
    assert api.get("/api/v1/incidents", params={"limit": 0}).status_code == 422


def test_silences_and_quarantine_need_the_broker_503_says_so(api: TestClient, fleet: None):
    response = api.post("/api/v1/silences", json={"rule": "hot", "ends_at": NOW + 3600})
    assert response.status_code == 503 and "retry" in response.json()["detail"]
    assert api.get("/api/v1/silences").json() == []  # nothing recorded


# --- silences and operator requests, published on agents.control (real broker) -------


@pytest.fixture
def broker_api(settings: Settings) -> Iterator[tuple[TestClient, Client, Settings]]:
    """The app without a loader on the session's broker; a1 is known (one heartbeat)."""
    ensure_topics(settings)
    ch = connect(settings)
    create_schema(ch, settings)
    insert(ch, settings, "metrics", [heartbeat_row("a1", 10)], METRIC_COLUMNS)
    try:
        with TestClient(
            create_app(settings, client=ch, run_loader=False), client=LOOPBACK_CLIENT
        ) as test_client:
            yield test_client, ch, settings
    finally:
        ch.close()


def read_events(settings: Settings, count: int) -> list[tuple[bytes, dict]]:
    """The first ``count`` messages of agents.control (key, value), in offset order per key."""
    consumer = Consumer({**settings.kafka_config(), "group.id": "t",
                         "enable.auto.commit": False})  # fmt: skip
    topic = settings.topic("control")
    partitions = consumer.list_topics(topic, timeout=5).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    found: list[tuple[bytes, dict]] = []
    deadline = time.monotonic() + 10
    while len(found) < count and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            found.append((message.key(), orjson.loads(message.value())))
    consumer.close()
    return found


@pytest.mark.integration
def test_silences_are_created_listed_and_expired_as_events(broker_api):
    api, _, settings = broker_api
    created = api.post(
        "/api/v1/silences",
        json={"rule": "hot", "severity": "high", "ends_at": NOW + 3600, "comment": "deploy"},
        headers={"X-Agentwatch-Actor": "ops-1"},
    )
    assert created.status_code == 422  # severity is upper case, as the seed writes it
    created = api.post(
        "/api/v1/silences",
        json={"rule": "hot", "severity": "HIGH", "ends_at": NOW + 3600, "comment": "deploy"},
        headers={"X-Agentwatch-Actor": "ops-1"},
    )
    assert created.status_code == 201, created.text
    silence = created.json()
    assert silence["id"] and silence["created_by"] == "ops-1" and silence["agent_id"] == "*"
    assert abs(silence["starts_at"] - time.time()) < 60
    listed = api.get("/api/v1/silences").json()
    assert [(s["id"], s["active"]) for s in listed] == [(silence["id"], True)]
    assert api.delete(f"/api/v1/silences/{silence['id']}").status_code == 204
    assert api.get("/api/v1/silences").json() == []
    assert api.delete(f"/api/v1/silences/{silence['id']}").status_code == 404
    events = read_events(settings, 2)
    assert [(key, e["type"], e["agent_id"]) for key, e in events] == [
        (b"*", "silence_created", "*"), (b"*", "silence_expired", "*"),
    ]  # fmt: skip
    assert events[0][1]["payload"] == silence and events[0][1]["actor"] == "ops-1"
    assert events[1][1]["payload"] == {"id": silence["id"]} and events[1][1]["actor"] == "api"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"ends_at": NOW - 10}, "ends_at must be after starts_at"),
        ({"ends_at": NOW + 86_400, "category": "NOISE"}, "category 'NOISE' is none of"),
        ({"ends_at": NOW + 86_400, "id": "mine"}, "id"),
        ({}, "ends_at"),
    ],
)
def test_bad_silences_are_422_and_publish_nothing(broker_api, body: dict, says: str):
    api, _, settings = broker_api
    response = api.post("/api/v1/silences", json=body)
    assert response.status_code == 422
    assert says in response.json()["message"], response.json()
    assert api.get("/api/v1/silences").json() == []


@pytest.mark.integration
def test_a_quarantine_may_carry_an_expiry_in_the_future(broker_api):
    api, _, settings = broker_api
    past = api.post("/api/v1/agents/a1/quarantine", json={"reason": "x", "until": NOW - 10})
    assert past.status_code == 422
    assert "until must be in the future" in past.json()["message"], past.json()
    until = time.time() + 3600
    response = api.post("/api/v1/agents/a1/quarantine", json={"reason": "leak", "until": until})
    assert response.status_code == 202, response.text
    assert response.json()["payload"] == {"reason": "leak", "until": until}
    ((key, event),) = read_events(settings, 1)
    assert (key, event["type"], event["payload"]["until"]) == (b"a1", "quarantine_requested", until)


@pytest.mark.integration
def test_quarantine_and_release_requests_are_published_with_the_actor(broker_api):
    api, ch, settings = broker_api
    response = api.post(
        "/api/v1/agents/a1/quarantine", json={"reason": "talks to an unknown host"},
        headers={"X-Agentwatch-Actor": "ops-2"},
    )  # fmt: skip
    assert response.status_code == 202, response.text
    event = response.json()
    assert (event["type"], event["tenant_id"], event["actor"]) == (
        "quarantine_requested",
        "t1",
        "ops-2",
    )
    # the dataflow has not quarantined it yet: as far as anyone knows it is active
    early = api.post("/api/v1/agents/a1/release")
    assert early.status_code == 409, early.text
    assert early.json()["detail"] == (
        "a1 is active; released is accepted only when it is quarantined or compromised"
    )
    became_quarantined(ch, settings, "a1")
    assert api.post("/api/v1/agents/a1/release").status_code == 202
    assert api.post("/api/v1/agents/ghost/quarantine", json={"reason": "x"}).status_code == 404
    assert api.post("/api/v1/agents/a1/quarantine", json={"reason": ""}).status_code == 422
    assert api.post("/api/v1/agents/a1/quarantine", json={}).status_code == 422
    events = read_events(settings, 2)
    assert [(key, e["type"], e["actor"], e["payload"]) for key, e in events] == [
        (b"a1", "quarantine_requested", "ops-2", {"reason": "talks to an unknown host"}),
        (b"a1", "released", "api", {"reason": ""}),
    ]


def became_quarantined(ch: Client, settings: Settings, agent_id: str) -> None:
    """Record what the dataflow would: ``agent_id`` went from active to quarantined."""
    from sinks.loader import event_row

    insert_docs(ch, settings, "agent_events", partial(event_row, "state"), [
        {"type": "status_changed", "agent_id": agent_id, "tenant_id": "t1", "actor": "system",
         "timestamp": time.time(), "payload": {"from": "active", "to": "quarantined",
                                                "reason": "requested"}},
    ])  # fmt: skip


@pytest.mark.integration
def test_lifecycle_commands_are_published_or_refused_by_the_table_with_its_reason(broker_api):
    api, ch, settings = broker_api
    ops = {"X-Agentwatch-Actor": "ops-3"}
    sent = []
    for method, path, body in [
        ("POST", "maintenance", {"reason": "kernel upgrade"}),
        ("DELETE", "maintenance", None),
        ("POST", "restart", {"reason": "stuck"}),
        ("POST", "compromise", {"reason": "key leaked"}),
        ("POST", "decommission", {"reason": "retired"}),
    ]:
        answer = api.request(method, f"/api/v1/agents/a1/{path}", json=body, headers=ops)
        if (method, path) == ("DELETE", "maintenance"):  # it is active, not in maintenance
            assert answer.status_code == 409, answer.text
            assert (
                "maintenance_ended is accepted only when it is maintenance"
                in (answer.json()["detail"])
            )
            continue
        assert answer.status_code == 202, (path, answer.text)
        sent.append((answer.json()["type"], answer.json()["payload"]["reason"]))
    assert api.post("/api/v1/agents/a1/restart", json={}).status_code == 422  # reason needed
    assert api.post("/api/v1/agents/ghost/restart", json={"reason": "x"}).status_code == 404
    became_quarantined(ch, settings, "a1")
    refused = api.post("/api/v1/agents/a1/maintenance", json={"reason": "x"}, headers=ops)
    assert refused.status_code == 409 and "a1 is quarantined" in refused.json()["detail"]
    events = read_events(settings, len(sent))
    assert [(e["type"], e["payload"]["reason"], e["actor"]) for _, e in events] == [
        (kind, reason, "ops-3") for kind, reason in sent
    ]
    assert [kind for kind, _ in sent] == [
        "maintenance_requested", "restart_requested", "compromise_declared",
        "decommission_requested",
    ]  # fmt: skip


def test_options_lists_every_method_of_a_path_and_a_wrong_method_is_a_405(api):
    assert api.options("/api/v1/rules").status_code == 204
    assert api.options("/api/v1/rules").headers["allow"] == "GET, OPTIONS, POST"
    # the concrete path, not /rules/{name} with the name "restore" (as OpenAPI matches)
    assert api.options("/api/v1/rules/restore").headers["allow"] == "OPTIONS, POST"
    assert api.options("/api/v1/rules/cpu_hot").headers["allow"] == "DELETE, OPTIONS, PUT"
    wrong = api.patch("/api/v1/silences")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET, OPTIONS, POST"
    assert wrong.json()["detail"].startswith("PATCH is not allowed on /api/v1/silences")
    assert api.options("/api/v1/nowhere").status_code == 404


def test_a_body_that_cannot_be_decoded_is_a_422_that_says_so(api):
    answer = api.post(
        "/api/v1/silences", content=b"\xff\xfe{", headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422
    assert answer.json()["message"].startswith("request: the body could not be read")
    assert answer.json()["detail"][0]["loc"] == ["body"]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"NaN", "application/json"),
        (b'{"reason": "x", "zz": Infinity}', "application/json"),
        (b'{"reason": 5, "x": "\\udc00"}', "application/json"),
        (b"\xff", "text/plain"),
    ],
)
def test_a_body_the_422_must_quote_is_quoted_as_text_not_a_500(api, body, content_type):
    """Found by a fuzzer: FastAPI's error list quotes the input, and NaN, a lone surrogate
    or bytes that are not UTF-8 made the 422 itself fail to encode (a 500)."""
    answer = api.post(
        "/api/v1/agents/a1/restart", content=body, headers={"content-type": content_type}
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["message"]


def test_a_rule_name_longer_than_128_characters_is_422(api):
    """(Found by a fuzzer: a 500 from inside the route, which checked the name late.)"""
    for method, path in [("DELETE", "x" * 129), ("POST", "x" * 129 + "/disable")]:
        answer = api.request(method, f"/api/v1/rules/{path}")
        assert answer.status_code == 422, answer.text
        assert "name" in answer.json()["message"]


def test_a_query_parameter_that_takes_one_value_given_twice_is_422(api):
    """``?tenant=t1&tenant=t2`` meant t2 (the last wins, silently); a proxy or a log that
    reads the first would disagree with what the API did. A list parameter may repeat."""
    twice = api.get("/api/v1/agents/search?tenant=t1&tenant=t2")
    assert twice.status_code == 422, twice.text
    assert "tenant is given 2 times" in twice.json()["message"]
    since = api.get("/api/v1/agents/a1/anomalies?since=1764072000&since=1764072001")
    assert since.status_code == 422 and "since" in since.json()["message"]  # (a dependency's)
    states = api.get("/api/v1/agents/search?state=active&state=idle&tenant=t1")
    assert states.status_code != 422, states.text  # (past the door: here a 503, no registry)


def test_keyless_the_api_answers_programs_here_not_web_pages(api):
    """Keyless (the loopback demo), a browser on this machine reaches the API for any page
    it shows: a form of another site POSTed to /rules/…/disable (no CORS preflight for a
    form), and a DNS-rebinding page read everything under its own name (found by a
    review). A request a browser sent must come from a loopback page, to a loopback name."""
    form = {"Content-Type": "application/x-www-form-urlencoded", "Host": "127.0.0.1:8000"}
    cross_site = form | {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    answer = api.post("/api/v1/rules/data_exfiltration/disable", headers=cross_site)
    assert answer.status_code == 403 and "another site" in answer.json()["detail"]
    nullorigin = api.post("/api/v1/rules/data_exfiltration/disable", headers=form | {
        "Origin": "null"})  # fmt: skip
    assert nullorigin.status_code == 403
    rebinding = {"Host": "rebind.evil.example:8000", "Sec-Fetch-Site": "same-origin"}
    answer = api.get("/api/v1/whoami", headers=rebinding)
    assert answer.status_code == 403 and "rebind.evil.example" in answer.json()["detail"]
    console = {"Host": "127.0.0.1:8000", "Origin": "http://127.0.0.1:8000",
               "Sec-Fetch-Site": "same-origin"}  # fmt: skip
    assert api.get("/api/v1/whoami", headers=console).status_code == 200
    assert api.get("/api/v1/whoami").status_code == 200  # a program (curl, httpx)
    program = api.post("/api/v1/rules/data_exfiltration/disable")
    assert program.status_code != 403, program.text  # (past the door; no broker here)


def test_a_body_over_the_limit_is_a_413_before_it_is_parsed(api):
    """100,000 heartbeats in 21 MB took 2.3 s of the event loop for a bridge that takes
    1,000 (every other request waited), and the parse ran even without a key (found by a
    review): a body over AGENTWATCH_API_MAX_BODY_BYTES is refused by its length, or as it
    streams in."""
    big = b"[" + b",".join([b'{"cpu_usage": 1.0}'] * 150_000) + b"]"  # 2.9 MB
    declared = api.post("/api/v1/agents/a1/metrics", content=big,
                        headers={"Content-Type": "application/json"})  # fmt: skip
    assert declared.status_code == 413 and "API_MAX_BODY_BYTES" in declared.json()["detail"]

    def chunks():  # (no Content-Length: chunked)
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    streamed = api.post("/api/v1/agents/a1/events", content=chunks(),
                        headers={"Content-Type": "application/json"})  # fmt: skip
    assert streamed.status_code == 413
    small = api.post("/api/v1/agents/a1/metrics", content=b"[]",
                     headers={"Content-Type": "application/json"})  # fmt: skip
    assert small.status_code != 413


def test_status_shows_the_lifecycle_state_the_dataflow_derived_last(
    api: TestClient, ch: Client, offline_settings: Settings, surveillance
):
    from sinks.loader import event_row

    assert api.get("/api/v1/agents/a1/status").json()["lifecycle_state"] == "quarantined"
    assert api.get("/api/v1/agents/a2/status").json()["lifecycle_state"] is None

    def changed(to: str, ago: float) -> dict:
        return {"type": "status_changed", "agent_id": "a2", "tenant_id": "t1", "actor": "system",
                "timestamp": NOW - ago, "payload": {"from": "active", "to": to}}  # fmt: skip

    insert_docs(ch, offline_settings, "agent_events", partial(event_row, "state"), [
        changed("offline", 300),
        {**changed("offline", 360), "type": "heartbeat_late", "payload": {"late_after_s": 60}},
    ])  # fmt: skip
    assert api.get("/api/v1/agents/a2/status").json()["lifecycle_state"] == "offline"
    insert_docs(ch, offline_settings, "agent_events", partial(event_row, "state"), [
        {**changed("active", 200), "payload": {"from": "offline", "to": "active"}},
    ])  # fmt: skip
    assert api.get("/api/v1/agents/a2/status").json()["lifecycle_state"] == "active"


def test_one_caller_gets_its_share_of_the_api_not_all_of_it():
    """Sync routes share one pool of threads (status and assign too): one caller with 40
    slow reads in flight held them all (found by a review). Past
    AGENTWATCH_API_MAX_IN_FLIGHT_PER_CALLER a caller (address and key id) gets a 429."""
    import asyncio

    from starlette.responses import JSONResponse

    from api.access import InFlightLimit

    release = asyncio.Event()

    async def in_flight(app: InFlightLimit, count: int) -> None:
        deadline = time.monotonic() + 10
        while sum(app._in_flight.values()) < count:  # (polled, not slept on)
            assert time.monotonic() < deadline, app._in_flight
            await asyncio.sleep(0.001)

    async def slow(scope, receive, send):  # a route that answers when told to
        await release.wait()
        await JSONResponse({"ok": True})(scope, receive, send)

    async def run() -> list[int]:
        app = InFlightLimit(slow, per_caller=2)
        key = {"Authorization": "Bearer aw_0123456789ab_" + "x" * 43}
        other = {"Authorization": "Bearer aw_ba9876543210_" + "x" * 43}
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            held = [asyncio.create_task(client.get("/x", headers=key)) for _ in range(2)]
            await in_flight(app, 2)  # (the two are in: a third of the same caller is not)
            third = await client.get("/x", headers=key)
            assert third.status_code == 429 and third.headers["Retry-After"] == "1"
            elsewhere = asyncio.create_task(client.get("/x", headers=other))
            await in_flight(app, 3)  # (another key's caller is in too)
            release.set()
            answers = await asyncio.gather(*held, elsewhere)
            again = await client.get("/x", headers=key)  # the turns came back
            return [a.status_code for a in answers] + [again.status_code]

    assert asyncio.run(run()) == [200, 200, 200, 200]
