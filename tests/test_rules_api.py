"""Rules at runtime through the API: checked, published on agents.control, listed back."""

from __future__ import annotations

import orjson
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from infra.broker import ensure_topics
from schemas.events import parse_rule_change
from sinks.clickhouse import connect
from tests.conftest import LOOPBACK_CLIENT, read_topic

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
    with TestClient(
        create_app(settings, client=connect(settings), run_loader=False), client=LOOPBACK_CLIENT
    ) as client:
        yield client


def published(settings) -> list:
    messages = read_topic(settings.bootstrap_servers, settings.topic("control"))
    return [parse_rule_change(message.value()) for message in messages]


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


def test_leaving_a_default_category_without_enabled_rules_needs_confirmation(api, settings):
    # excessive_errors is the only PERFORMANCE rule of the default set
    refused = api.delete("/api/v1/rules/excessive_errors")
    assert refused.status_code == 409
    assert "no enabled PERFORMANCE rule" in refused.json()["detail"]
    assert "confirm=true" in refused.json()["detail"]
    assert api.post("/api/v1/rules/excessive_errors/disable").status_code == 409
    assert published(settings) == []
    # SECURITY has four: the first three go without a word, the last needs the confirmation
    for name in ("resource_abuse", "abnormal_patterns", "rapid_changes"):
        assert api.delete(f"/api/v1/rules/{name}").status_code == 204
    last = api.put(
        "/api/v1/rules/data_exfiltration",
        json={**api.get("/api/v1/rules").json()[0], "enabled": False},
    )
    assert last.status_code == 409 and "SECURITY" in last.json()["detail"]
    confirmed = api.delete("/api/v1/rules/excessive_errors", params={"confirm": "true"})
    assert confirmed.status_code == 204
    assert [rule["name"] for rule in api.get("/api/v1/rules").json()] == ["data_exfiltration"]


def test_the_default_rules_can_be_put_back_all_or_one(api, settings):
    shipped = api.get("/api/v1/rules").json()
    assert api.post("/api/v1/rules", json=HOT).status_code == 201
    for name in ("excessive_errors", "resource_abuse", "abnormal_patterns", "rapid_changes"):
        assert api.delete(f"/api/v1/rules/{name}", params={"confirm": True}).status_code == 204
    loose = {**shipped[1], "condition": {**shipped[1]["condition"], "value": 5e12}}
    assert loose["name"] == "data_exfiltration"
    assert api.put("/api/v1/rules/data_exfiltration", json=loose).status_code == 200
    published(settings)  # the changes so far

    one = api.post("/api/v1/rules/excessive_errors/restore", headers={"X-Agentwatch-Actor": "o2"})
    assert one.status_code == 200, one.text
    assert one.json()["restored"] == ["excessive_errors"]

    restored = api.post("/api/v1/rules/restore", headers={"X-Agentwatch-Actor": "ops-2"})
    assert restored.status_code == 200, restored.text
    assert restored.json()["restored"] == [
        "resource_abuse", "abnormal_patterns", "rapid_changes", "data_exfiltration"
    ]  # fmt: skip
    listed = api.get("/api/v1/rules").json()
    assert [rule for rule in listed if rule["name"] != "cpu_hot"] == shipped  # as shipped
    assert "cpu_hot" in {rule["name"] for rule in listed}  # an operator's own rule stays
    assert api.post("/api/v1/rules/restore").json()["restored"] == []  # nothing left to do

    changes = [(c.action, c.target) for c in published(settings)][-5:]
    assert changes == [
        ("add", "excessive_errors"), ("add", "resource_abuse"), ("add", "abnormal_patterns"),
        ("add", "rapid_changes"), ("update", "data_exfiltration"),
    ]  # fmt: skip
    audit = connect(settings).query(
        f"SELECT name, updated_by FROM {settings.clickhouse_database}.rules "
        "WHERE updated_by IN ('o2', 'ops-2') ORDER BY version"
    )
    assert [row[1] for row in audit.result_rows] == ["o2"] + ["ops-2"] * 4


def test_restoring_a_rule_that_is_not_a_default_says_so(api, settings):
    # The path names no default rule: 404. A body naming one: 422 like every body that
    # does not fit its schema (which lists the default rules).
    answer = api.post("/api/v1/rules/cpu_hot/restore")
    assert answer.status_code == 404
    assert "not a default rule" in answer.json()["detail"]
    answer = api.post("/api/v1/rules/restore", json={"names": ["cpu_hot"]})
    assert answer.status_code == 422
    assert "names.0: Input should be 'excessive_errors'" in answer.json()["message"]
    assert api.post("/api/v1/rules/restore", json={"names": []}).status_code == 422
    assert published(settings) == []


@pytest.mark.parametrize("allow_remote", [False, True])
def test_changes_from_another_machine_are_refused_unless_allowed(settings, allow_remote):
    settings = settings.model_copy(update={"api_allow_remote_mutations": allow_remote})
    ensure_topics(settings)
    app = create_app(settings, client=connect(settings), run_loader=False)
    with TestClient(app, client=("203.0.113.9", 40000)) as remote:
        assert remote.get("/api/v1/rules").status_code == 200  # reads are open
        answer = remote.delete("/api/v1/rules/resource_abuse")
        if allow_remote:
            assert answer.status_code == 204
        else:
            assert answer.status_code == 403
            assert "only this machine (loopback) may change" in answer.json()["detail"]
            assert "AGENTWATCH_API_ALLOW_REMOTE_MUTATIONS" in answer.json()["detail"]
            assert remote.post("/api/v1/rules/restore").status_code == 403
            assert published(settings) == []


def test_a_change_that_does_not_fit_the_rule_set_is_a_422_like_any_other(api, settings):
    # The schema cannot say that log_metrics must be among metric: the domain refuses it,
    # in the same form as a request that does not fit the schema (message + detail list).
    rule = HOT | {"condition": {"baseline_sigma": 3, "metric": ["cpu_usage"],
                                "log_metrics": ["bytes_out"]}}  # fmt: skip
    answer = api.post("/api/v1/rules", json=rule)
    assert answer.status_code == 422
    body = answer.json()
    assert "log_metrics bytes_out not watched by the rule" in body["message"]
    assert body["detail"][0]["loc"] == ["body"]
    mismatch = api.put("/api/v1/rules/cpu_hot", json=HOT | {"name": "other"}).json()
    assert mismatch["detail"][0]["loc"] == ["body", "name"]
    assert "the body names rule 'other', the path 'cpu_hot'" in mismatch["message"]
    assert published(settings) == []
