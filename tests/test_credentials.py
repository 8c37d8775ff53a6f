"""Agents' credentials: they expire, rotate with an overlap, and are revoked by the
agent's lifecycle (quarantine, compromise, decommission).

The API runs with keys required and a clock the test moves (``KeyBook.clock``), so
expiries and overlap windows are crossed without sleeping; the key caches are off
(``api_key_cache_s=0``) so every request looks again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import orjson
import pytest
from fastapi.testclient import TestClient

from agentwatch.identity import Role
from agentwatch.settings import Settings
from api.app import create_app
from api.identity import KeyBook
from infra.broker import ensure_topics
from sinks.clickhouse import connect
from sinks.loader import event_row
from tests.conftest import LOOPBACK_CLIENT, read_topic
from tests.test_api import insert_docs

OVERLAP_S = 600.0
TTL_S = 3600.0


@dataclass
class Door:
    """The API, its key book, a clock the test moves, and a few keys."""

    api: TestClient
    book: KeyBook
    settings: Settings
    client: object
    now: list[float]
    tokens: dict[str, str]

    def auth(self, name_or_token: str) -> dict[str, str]:
        token = self.tokens.get(name_or_token, name_or_token)
        return {"Authorization": f"Bearer {token}"}

    def agent_key(self, agent_id: str, tenant: str = "t1", ttl_s: float | None = TTL_S) -> str:
        token = self.book.create(
            self.client, Role.AGENT, tenant, "test", agent_id=agent_id, ttl_s=ttl_s
        )[1]
        self.now[0] += 1  # keys made later list later
        return token


@pytest.fixture
def door(settings: Settings) -> Iterator[Door]:
    settings = settings.model_copy(
        update={
            "api_auth_required": True,
            "api_key_cache_s": 0.0,
            "agent_credential_overlap_s": OVERLAP_S,
        }
    )
    ensure_topics(settings)
    client = connect(settings)
    app = create_app(settings, client=client, run_loader=False)
    with TestClient(app, client=LOOPBACK_CLIENT) as api:
        book: KeyBook = app.state.runtime.keys
        now = [time.time()]
        book.clock = lambda: now[0]
        tokens = {
            name: book.create(client, role, tenant, "test", name=name)[1]
            for name, role, tenant in [
                ("admin", Role.ADMIN, "*"),
                ("operator of t1", Role.OPERATOR, "t1"),
                ("operator of t2", Role.OPERATOR, "t2"),
                ("analyst of t1", Role.ANALYST, "t1"),
            ]
        }
        yield Door(api, book, settings, client, now, tokens)
    client.close()


def control_events(settings: Settings) -> list[dict]:
    messages = read_topic(settings.bootstrap_servers, settings.topic("control"))
    return [orjson.loads(m.value()) for m in messages]


def test_an_agent_key_expires_and_the_refusal_says_when(door: Door):
    token = door.agent_key("agent-1", ttl_s=TTL_S)
    assert door.api.get("/api/v1/agents/agent-1/credentials", headers=door.auth(token)).is_success
    door.now[0] += TTL_S
    refused = door.api.get("/api/v1/agents/agent-1/credentials", headers=door.auth(token))
    assert refused.status_code == 401
    detail = refused.json()["detail"]
    assert "expired at 20" in detail and "/api/v1/agents/agent-1/credentials" in detail


def test_rotation_gives_a_new_key_and_the_old_one_lives_only_through_the_overlap(door: Door):
    old = door.agent_key("agent-1", ttl_s=TTL_S)
    made = door.api.post("/api/v1/agents/agent-1/credentials", headers=door.auth(old))
    assert made.status_code == 201, made.text
    new = made.json()
    assert new["role"] == "agent" and new["agent_id"] == "agent-1" and new["tenant_id"] == "t1"
    assert new["token"].startswith(f"aw_{new['key_id']}_")

    listed = door.api.get("/api/v1/agents/agent-1/credentials", headers=door.auth(new["token"]))
    assert listed.status_code == 200
    keys = listed.json()
    assert [k["key_id"] for k in keys][-1] == new["key_id"] and len(keys) == 2
    assert "token" not in listed.text and "secret_hash" not in listed.text
    assert keys[0]["expires_at"] == pytest.approx(door.now[0] + OVERLAP_S)

    door.now[0] += OVERLAP_S - 1  # inside the window: both keys are good
    for token in (old, new["token"]):
        answer = door.api.get("/api/v1/agents/agent-1/credentials", headers=door.auth(token))
        assert answer.status_code == 200, answer.text
    door.now[0] += 2  # past it: only the new one
    refused = door.api.get("/api/v1/agents/agent-1/credentials", headers=door.auth(old))
    assert refused.status_code == 401 and "expired" in refused.json()["detail"]
    answer = door.api.get("/api/v1/agents/agent-1/credentials", headers=door.auth(new["token"]))
    assert answer.status_code == 200

    changed = [e for e in control_events(door.settings) if e["type"] == "key_expiry_changed"]
    assert len(changed) == 1 and changed[0]["agent_id"] == "agent-1"
    assert changed[0]["payload"]["expires_before"] > changed[0]["payload"]["expires_at"]
    assert old not in orjson.dumps(changed).decode()


def test_a_key_that_expires_before_the_overlap_keeps_its_own_expiry(door: Door):
    door.agent_key("agent-1", ttl_s=OVERLAP_S / 2)
    made = door.api.post("/api/v1/agents/agent-1/credentials", headers=door.auth("admin"))
    assert made.status_code == 201
    keys = door.api.get("/api/v1/agents/agent-1/credentials", headers=door.auth("admin")).json()
    assert keys[0]["expires_at"] == pytest.approx(door.now[0] + OVERLAP_S / 2)


def test_who_may_rotate_and_list_an_agents_credentials(door: Door):
    mine = door.agent_key("agent-1")
    other_agent = door.agent_key("agent-2")
    door.agent_key("agent-9", tenant="t2")
    path = "/api/v1/agents/agent-1/credentials"
    answers = {
        name: door.api.post(path, headers=door.auth(name)).status_code
        for name in ("admin", "operator of t1", "operator of t2", "analyst of t1")
    }
    assert answers == {
        "admin": 201, "operator of t1": 201, "operator of t2": 404, "analyst of t1": 403
    }  # fmt: skip
    refused = door.api.post(path, headers=door.auth(other_agent))
    assert refused.status_code == 403 and "may speak only for agent-2" in refused.json()["detail"]
    assert door.api.get(path, headers=door.auth("analyst of t1")).status_code == 200
    assert door.api.get(path, headers=door.auth("operator of t2")).status_code == 404
    assert door.api.post(path, headers=door.auth(mine)).status_code == 201
    unknown = door.api.post("/api/v1/agents/nobody/credentials", headers=door.auth("admin"))
    assert unknown.status_code == 404 and "register it" in unknown.json()["detail"]


def test_no_key_of_another_tenant_may_name_an_agent_and_none_already_made_reaches_it(
    door: Door,
):
    """An agent id is one agent fleet-wide. Another tenant's admin may not mint a key
    naming it, nor its operator register the id (the projection does not hold the agent:
    it is known from its credential); and a key of another tenant naming it (made before
    these checks) sees neither its credentials nor may it rotate them."""
    victim = door.agent_key("victim", tenant="t2", ttl_s=None)
    admin_of_t1 = door.book.create(door.client, Role.ADMIN, "t1", "test", name="admin of t1")[1]
    minted = door.api.post(
        "/api/v1/keys",
        headers=door.auth(admin_of_t1),
        json={"role": "agent", "tenant_id": "t1", "agent_id": "victim"},
    )
    assert minted.status_code == 409 and "known already" in minted.json()["detail"]
    registered = door.api.post(
        "/api/v1/agents/register",
        headers=door.auth("operator of t1"),
        json={"name": "mine", "agent_type": "bot", "owner": "ops", "tenant_id": "t1",
              "agent_id": "victim"},
    )  # fmt: skip
    assert registered.status_code == 409 and "known already" in registered.json()["detail"]
    # the id's own tenant may still mint its agent a key
    own = door.api.post(
        "/api/v1/keys",
        headers=door.auth("admin"),
        json={"role": "agent", "tenant_id": "t2", "agent_id": "victim"},
    )
    assert own.status_code == 201, own.text

    stray = door.agent_key("victim", tenant="t1", ttl_s=None)  # (as the book once allowed)
    path = "/api/v1/agents/victim/credentials"
    assert door.api.get(path, headers=door.auth(stray)).status_code == 404
    assert door.api.post(path, headers=door.auth(stray)).status_code == 404
    assert door.book.get(door.client, victim_key_id(door, victim)).expires_at is None
    listed = door.api.get(path, headers=door.auth("operator of t2")).json()
    assert {k["tenant_id"] for k in listed} == {"t2"}  # (not the stray key of t1)


def victim_key_id(door: Door, token: str) -> str:
    return token.split("_")[1]


def quarantine(door: Door, agent_id: str, at: float, to: str = "quarantined") -> None:
    """What the loader stores of the dataflow's status_changed (agents.state)."""
    event = {
        "type": "status_changed", "agent_id": agent_id, "tenant_id": "t1", "actor": "system",
        "timestamp": at, "payload": {"from": "active", "to": to, "reason": "score 10 < 20"},
    }  # fmt: skip
    insert_docs(door.client, door.settings, "agent_events", partial(event_row, "state"), [event])


@pytest.mark.parametrize("state", ["quarantined", "compromised", "decommissioned"])
def test_quarantine_revokes_the_keys_made_before_it_until_an_operator_issues_one(
    door: Door, state: str
):
    old = door.agent_key("agent-1")
    quarantine(door, "agent-1", door.now[0] + 5, to=state)
    door.now[0] += 10
    path = "/api/v1/agents/agent-1/credentials"
    refused = door.api.get(path, headers=door.auth(old))
    assert refused.status_code == 401
    detail = refused.json()["detail"]
    assert f"was {state} at 20" in detail and "an operator issues a new credential" in detail
    # the agent cannot rotate itself out of it
    assert door.api.post(path, headers=door.auth(old)).status_code == 401
    made = door.api.post(path, headers=door.auth("operator of t1"))
    assert made.status_code == 201
    assert door.api.get(path, headers=door.auth(made.json()["token"])).status_code == 200


def test_an_agent_cannot_rotate_its_way_out_of_a_quarantine_or_into_many_keys(door: Door):
    """The API learns of a quarantine seconds after it (dataflow, loader, cache): an agent
    rotating in between got a key made after the quarantine's time, which survived it; and
    each rotation kept every older key through the overlap, so rotating every second held
    thousands (found by a review). A key an agent makes for itself counts from the key it
    asked with, and its other older keys end at once."""
    path = "/api/v1/agents/agent-1/credentials"
    made_at = door.now[0]
    old = door.agent_key("agent-1")
    tokens = [old]
    for _ in range(3):  # each rotation with the newest key
        made = door.api.post(path, headers=door.auth(tokens[-1]))
        assert made.status_code == 201, made.text
        tokens.append(made.json()["token"])
        door.now[0] += 1
    live = [t for t in tokens if door.api.get(path, headers=door.auth(t)).status_code == 200]
    assert live == tokens[-2:]  # the newest and the one it was asked with
    # quarantined before any of the rotations, heard of only now
    quarantine(door, "agent-1", made_at + 0.5)
    door.now[0] += 10
    for token in tokens:
        assert door.api.get(path, headers=door.auth(token)).status_code == 401


def test_a_status_change_that_does_not_revoke_leaves_the_key_alone(door: Door):
    old = door.agent_key("agent-1")
    quarantine(door, "agent-1", door.now[0] + 5, to="offline")
    door.now[0] += 10
    assert door.api.get("/api/v1/agents/agent-1/credentials", headers=door.auth(old)).is_success


def test_an_agent_rotates_from_another_machine_but_an_operator_may_not(door: Door):
    token = door.agent_key("agent-1")
    remote = TestClient(door.api.app, client=("203.0.113.9", 40000))
    path = "/api/v1/agents/agent-1/credentials"
    assert remote.post(path, headers=door.auth(token)).status_code == 201
    refused = remote.post(path, headers=door.auth("operator of t1"))
    assert refused.status_code == 403 and "loopback" in refused.json()["detail"]
    assert remote.post(path).status_code == 403  # without a key, the loopback guard holds
