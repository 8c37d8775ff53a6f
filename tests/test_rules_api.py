"""Rules at runtime through the API: checked, published on agents.control, listed back."""

from __future__ import annotations

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from fastapi.testclient import TestClient

from api.app import create_app
from infra.broker import ensure_topics
from schemas.events import parse_rule_change
from sinks.clickhouse import connect

pytestmark = pytest.mark.integration

HOT = {
    "name": "cpu_hot",
    "condition": {"metric": "cpu_usage", "aggregate": "last", "op": ">", "value": 90},
    "for_s": 0,
    "category": "PERFORMANCE",
    "severity": "WARNING",
}


@pytest.fixture
def api(settings):
    ensure_topics(settings)
    with TestClient(create_app(settings, client=connect(settings), run_loader=False)) as client:
        yield client


def published(settings) -> list:
    topic = settings.topic("control")
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "t"})
    parts = consumer.list_topics(topic, timeout=5).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    changes = []
    for message in consumer.consume(100, timeout=2):
        if message.error() is None:
            changes.append(parse_rule_change(message.value()))
    consumer.close()
    return changes


def test_the_seed_rules_are_listed_by_default(api):
    names = [rule["name"] for rule in api.get("/api/v1/rules").json()]
    assert names == sorted(
        ["abnormal_patterns", "data_exfiltration", "excessive_errors", "rapid_changes",
         "resource_abuse"]
    )  # fmt: skip


def test_add_change_disable_delete_are_published_and_listed(api, settings):
    added = api.post("/api/v1/rules", json=HOT, headers={"X-Agentwatch-Actor": "ops-1"})
    assert added.status_code == 201, added.text
    assert api.post("/api/v1/rules", json=HOT).status_code == 409
    cooler = {**HOT, "condition": {**HOT["condition"], "value": 80}}
    assert api.put("/api/v1/rules/cpu_hot", json=cooler).json()["condition"]["value"] == 80
    assert api.post("/api/v1/rules/cpu_hot/disable").json()["enabled"] is False
    listed = {rule["name"]: rule for rule in api.get("/api/v1/rules").json()}
    assert listed["cpu_hot"]["enabled"] is False and listed["cpu_hot"]["condition"]["value"] == 80
    assert api.delete("/api/v1/rules/resource_abuse").status_code == 204
    assert "resource_abuse" not in {rule["name"] for rule in api.get("/api/v1/rules").json()}

    changes = published(settings)
    assert [(c.action, c.target) for c in changes] == [
        ("add", "cpu_hot"), ("update", "cpu_hot"), ("disable", "cpu_hot"),
        ("delete", "resource_abuse"),
    ]  # fmt: skip


def test_bad_changes_get_clear_errors_and_publish_nothing(api, settings):
    assert api.put("/api/v1/rules/nope", json={**HOT, "name": "nope"}).status_code == 404
    assert api.delete("/api/v1/rules/nope").status_code == 404
    mismatch = api.put("/api/v1/rules/cpu_hot", json=HOT | {"name": "other"})
    assert mismatch.status_code == 422
    bad = api.post("/api/v1/rules", json={**HOT, "condition": {"metric": "nonsense"}})
    assert bad.status_code == 422
    assert api.post("/api/v1/rules/resource_abuse/explode").status_code == 422
    assert published(settings) == []
    body = orjson.loads(api.delete("/api/v1/rules/nope").content)
    assert "the rules are" in body["detail"]
