"""The audit trail: written from agents.control and agents.state, chained per tenant,
served by the API, and tampering found by `agentwatch audit verify`."""

from __future__ import annotations

import time

import orjson
import pytest
from clickhouse_connect.driver.exceptions import OperationalError
from fastapi.testclient import TestClient

from agentwatch.audit import AuditChain, AuditEntry, verify
from agentwatch.settings import Settings
from api.app import create_app
from infra.broker import ensure_topics
from sinks.audit import AuditWriter, read_rows
from sinks.clickhouse import connect, create_schema
from tests.conftest import LOOPBACK_CLIENT, wait_until
from tests.test_loader import by_agent, produce
from tests.test_rules_api import HOT


def status_changed(agent: str, old: str, new: str, at: float) -> dict:
    """What the dataflow publishes on agents.state when an agent's status changes."""
    return {
        "type": "status_changed", "agent_id": agent, "tenant_id": "tenant-1", "actor": "system",
        "timestamp": at, "payload": {"from": old, "to": new, "reason": "score 10 < 20"},
    }  # fmt: skip


def audit(api: TestClient, **params: object) -> list[dict]:
    return api.get("/api/v1/audit", params=params).json()["records"]


def test_every_change_is_audited_once_in_a_chain_that_survives_a_restart(settings: Settings):
    ensure_topics(settings)
    now = time.time()
    with TestClient(create_app(settings), client=LOOPBACK_CLIENT) as api:
        ops = {"X-Agentwatch-Actor": "ops-1"}
        assert api.post("/api/v1/rules", json=HOT, headers=ops).status_code == 201
        assert api.post("/api/v1/rules/cpu_hot/disable", headers=ops).status_code == 200
        silence = {"rule": "cpu_hot", "ends_at": now + 3600}
        assert api.post("/api/v1/silences", json=silence, headers=ops).status_code == 201
        produce(settings, "state", [status_changed("a1", "active", "quarantined", now)], by_agent)
        # an agent's fact is not a change of anyone's: not audited
        produce(settings, "events", [{**status_changed("a1", "x", "y", now), "type": "x"}])
        records = wait_until(lambda: len(r := audit(api)) >= 4 and r, 30, "four audit rows")
        assert len(records) == 4
        fleet = sorted((r for r in records if r["tenant_id"] == "*"), key=lambda r: r["seq"])
        assert [(r["seq"], r["action"], r["target"], r["actor"]) for r in fleet] == [
            (1, "rule_changed", "cpu_hot", "ops-1"),
            (2, "rule_changed", "cpu_hot", "ops-1"),
            (3, "silence_created", fleet[2]["target"], "ops-1"),
        ]
        assert all(r["origin"] == "127.0.0.1" for r in fleet)  # from where: the caller
        assert orjson.loads(fleet[1]["after"]) == {"action": "disable", "name": "cpu_hot"}
        assert fleet[1]["prev_hash"] == fleet[0]["hash"]
        (quarantine,) = audit(api, tenant="tenant-1")
        assert (quarantine["seq"], quarantine["actor"], quarantine["target"]) == (1, "system", "a1")
        assert orjson.loads(quarantine["before"]) == {"status": "active"}
        assert orjson.loads(quarantine["after"]) == {"status": "quarantined"}
        assert quarantine["reason"] == "score 10 < 20"
        assert audit(api, actor="ops-1", action="silence_created")[0]["seq"] == 3
        assert api.get("/api/v1/audit/verify").json() == {
            "ok": True, "rows": 4, "tenants": 2, "problems": []
        }  # fmt: skip

    # a restart resumes each chain where it ended, and writes nothing twice
    with TestClient(create_app(settings), client=LOOPBACK_CLIENT) as api:
        assert api.post("/api/v1/rules/cpu_hot/enable").status_code == 200
        # the commands share agents.control's one partition, in order: a re-read of the
        # old ones would land before the new one does
        records = wait_until(lambda: (r := audit(api, tenant="*")) and r[0]["seq"] >= 4 and r,
                             30, "the restarted writer's row")  # fmt: skip
        assert len(records) == 4 and len({r["source"] for r in records}) == 4
        assert len(audit(api)) == 5
        assert audit(api, tenant="*")[0]["seq"] == 4
        assert api.get("/api/v1/audit/verify").json()["ok"] is True


def test_an_event_whose_time_cannot_be_stored_is_skipped_and_holds_nothing_back(
    settings: Settings,
):
    """A change whose timestamp is outside the years the trail holds is skipped (logged),
    and the agent's next change is audited: the bad one does not stop the writer at every
    retry."""
    ensure_topics(settings)
    now = time.time()
    changes = [status_changed("a1", "active", "quarantined", 1e300),
               status_changed("a1", "quarantined", "active", now)]  # fmt: skip
    with TestClient(create_app(settings), client=LOOPBACK_CLIENT) as api:
        produce(settings, "state", changes, by_agent)  # (one agent: one partition, in order)
        records = wait_until(lambda: audit(api, tenant="tenant-1"), 30, "the storable change")
        (record,) = records
        assert (record["seq"], orjson.loads(record["after"])) == (1, {"status": "active"})


def test_tampering_with_the_trail_is_found(settings: Settings):
    ensure_topics(settings)
    with TestClient(create_app(settings), client=LOOPBACK_CLIENT) as api:
        for name in ("a", "b", "c"):
            rule = {**HOT, "name": f"hot_{name}"}
            assert api.post("/api/v1/rules", json=rule).status_code == 201
        wait_until(lambda: len(audit(api)) == 3, 30, "three audit rows")
        client = connect(settings)
        table = f"{settings.clickhouse_database}.audit_log"

        def problems() -> list[str]:
            verdict = api.get("/api/v1/audit/verify").json()
            assert verdict["ok"] is (not verdict["problems"])
            return verdict["problems"]

        def change(statement: str) -> None:
            client.command(statement, settings={"mutations_sync": 2})

        assert problems() == []
        change(f"ALTER TABLE {table} UPDATE actor = 'mallory' WHERE seq = 2")
        assert problems() == [
            "tenant '*' row 2 (rule_changed hot_b by mallory): edited: its hash does not match "
            "its fields"
        ]
        change(f"ALTER TABLE {table} UPDATE actor = 'api' WHERE seq = 2")
        assert problems() == []

        client.command(
            f"INSERT INTO {table} (tenant_id, seq, at_ms, actor, action, target, prev_hash, hash)"
            " SELECT tenant_id, seq, at_ms, 'forger', action, 'hot_x', prev_hash, hash "
            f"FROM {table} WHERE seq = 2"
        )
        assert any("inserted" in p or "edited" in p for p in problems())
        change(f"ALTER TABLE {table} DELETE WHERE actor = 'forger'")
        assert problems() == []

        change(f"ALTER TABLE {table} DELETE WHERE seq = 2")
        assert problems() == [
            "tenant '*' row 3 (rule_changed hot_c by api): deleted: rows 2..2 are missing"
        ]


@pytest.mark.parametrize("tamper", ["edit", "delete", "insert", "rewrite"])
def test_verify_finds_every_kind_of_tampering(tamper: str):
    chain = AuditChain()
    rows = [chain.append(AuditEntry("t1", 1.8e9 + i, "ops", "released", f"a{i}")) for i in range(4)]
    assert verify(rows) == []
    from dataclasses import replace

    from agentwatch.audit import entry_hash

    if tamper == "edit":
        rows[1] = replace(rows[1], after='{"reason":"nothing to see"}')
    elif tamper == "delete":
        del rows[2]
    elif tamper == "insert":
        rows.append(replace(rows[1], target="a9"))
    else:  # fields and hash redone: the next row no longer points back to it
        forged = replace(rows[1], actor="x")
        rows[1] = replace(forged, hash=entry_hash(forged))
    assert verify(rows), f"{tamper} went unnoticed"


def test_a_status_change_the_dataflow_publishes_again_is_audited_once(settings: Settings):
    """After a restart the dataflow replays its input since its last snapshot and publishes
    the same status changes again (same transition numbers, new offsets): the writer
    audits each once, also when it restarted itself between the change and its replay
    (a chaos run found ``quarantined -> active`` twice in the trail)."""
    ensure_topics(settings)
    now = time.time()

    def change(old: str, new: str, number: int) -> dict:
        event = status_changed("ops-agent", old, new, now + number)
        event["payload"]["transitions"] = number
        return event

    quarantined, released = change("active", "quarantined", 1), change("quarantined", "active", 2)
    with TestClient(create_app(settings), client=LOOPBACK_CLIENT) as api:
        produce(settings, "state", [quarantined, released, quarantined, released], by_agent)
        wait_until(lambda: len(audit(api)) >= 2, 30, "two audit rows")
    with TestClient(create_app(settings), client=LOOPBACK_CLIENT) as api:  # a restarted writer
        offline = change("active", "offline", 3)
        produce(settings, "state", [released, offline], by_agent)
        rows = wait_until(lambda: len(r := audit(api)) >= 3 and r, 30, "the third audit row")
        chain = sorted(rows, key=lambda r: r["seq"])
        assert [(orjson.loads(r["before"]), orjson.loads(r["after"])) for r in chain] == [
            ({"status": "active", "transitions": 0}, {"status": "quarantined", "transitions": 1}),
            ({"status": "quarantined", "transitions": 1}, {"status": "active", "transitions": 2}),
            ({"status": "active", "transitions": 2}, {"status": "offline", "transitions": 3}),
        ]
        assert api.get("/api/v1/audit/verify").json()["ok"] is True


class _FirstInsertFails:
    """The real ClickHouse client, whose first ``insert_arrow`` raises (ClickHouse busy)."""

    def __init__(self, real) -> None:
        self._real, self.failed = real, 0

    def __getattr__(self, name):
        return getattr(self._real, name)

    def insert_arrow(self, *args, **kwargs):
        if not self.failed:
            self.failed = 1
            raise OperationalError("ClickHouse did not take the insert (the test's)")
        return self._real.insert_arrow(*args, **kwargs)


def test_a_failed_write_of_the_trail_loses_nothing_and_leaves_no_gap(settings: Settings):
    """The writer read a batch, chained it (a new tenant's first rows, an agent's first
    status change) and the insert failed: it read the batch again from the table's last
    offset, but kept what the lost batch had put in memory, so the status change was
    skipped as a replay and the new chain began at seq 3 ("rows 1..2 deleted", found by
    a review). After a failed write its memory is what the table holds."""
    ensure_topics(settings)
    real = connect(settings)
    create_schema(real, settings)
    now = time.time()
    command = {
        "type": "quarantine_requested",
        "agent_id": "b1",
        "tenant_id": "t9",
        "actor": "key:000000000000",
        "timestamp": now,
        "payload": {"reason": "x"},
    }
    change = status_changed("b1", "active", "quarantined", now + 1)
    change["tenant_id"], change["payload"]["transitions"] = "t9", 1
    produce(settings, "control", [command], by_agent)
    produce(settings, "state", [change], by_agent)
    flaky = _FirstInsertFails(real)
    writer = AuditWriter(settings, flaky)
    writer.start()
    try:
        stored = wait_until(
            lambda: len(r := read_rows(real, settings.clickhouse_database)) >= 2 and r,
            30, "both events in the trail",
        )  # fmt: skip
    finally:
        writer.stop()
    assert flaky.failed == 1
    # it said so while it failed (the loader's /metrics: agentwatch_background_failing)
    assert "the test's" in writer.last_error and writer.failing_since is None
    assert sorted(r.seq for r in stored) == [1, 2]  # (the two topics: read in either order)
    assert sorted(r.action for r in stored) == ["quarantine_requested", "status_changed"]
    assert verify(read_rows(real, settings.clickhouse_database)) == []
    real.close()
