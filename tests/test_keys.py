"""The key book: keys made and revoked as audited commands, checked at the door."""

from __future__ import annotations

from contextlib import nullcontext

import orjson
import pytest

from agentwatch.identity import ALL_TENANTS, Role
from agentwatch.settings import Settings
from api.identity import LOOPBACK_OPERATOR, AuthError, KeyBook, StoredKey, _fields
from api.publisher import EventPublisher
from api.revocation import StoredRevocations
from infra.broker import ensure_topics
from sinks.clickhouse import connect, create_schema
from tests.conftest import read_topic


@pytest.fixture
def book(settings: Settings):
    ensure_topics(settings)
    client = connect(settings)
    create_schema(client, settings)
    publisher = EventPublisher(settings)
    strict = settings.model_copy(update={"api_key_cache_s": 0.0, "api_auth_required": True})
    yield KeyBook(strict, publisher), client
    publisher.close()
    client.close()


def control_events(settings: Settings) -> list[dict]:
    messages = read_topic(settings.bootstrap_servers, settings.topic("control"))
    return [orjson.loads(m.value()) for m in messages]


def test_a_key_opens_the_door_once_made_and_not_after_it_is_revoked(book, settings):
    keys, client = book
    stored, token = keys.create(client, Role.OPERATOR, "tenant-1", actor="admin-1", name="ops")
    principal = keys.authenticate(client, f"Bearer {token}")
    assert (principal.role, principal.tenant_id, principal.key_id) == (
        Role.OPERATOR, "tenant-1", stored.key_id
    )  # fmt: skip
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
    for header, says in [
        (f"Bearer {wrong}", "is not known"),
        ("Bearer aw_0123456789ab_" + "x" * 43, "is not known"),
        (f"Basic {token}", "must be 'Bearer <API key>'"),
        ("Bearer not-a-key", "not an agentwatch API key"),
        (None, "no API key"),
    ]:
        with pytest.raises(AuthError, match=says):
            keys.authenticate(client, header)
    keys.revoke(client, stored.key_id, actor="admin-1")
    with pytest.raises(AuthError, match="was revoked"):
        keys.authenticate(client, f"Bearer {token}")

    events = control_events(settings)
    assert [e["type"] for e in events] == ["key_created", "key_revoked"]
    text = orjson.dumps(events).decode()
    assert token not in text and stored.secret_hash not in text  # neither secret nor hash
    assert events[0]["payload"]["role"] == "operator" and events[0]["actor"] == "admin-1"


def test_expired_keys_and_keys_that_cannot_be(book):
    keys, client = book
    _, token = keys.create(client, Role.ANALYST, "t1", actor="a", ttl_s=0.001)
    with pytest.raises(AuthError, match="expired"):
        keys.authenticate(client, f"Bearer {token}")
    with pytest.raises(ValueError, match="names its agent"):
        keys.create(client, Role.AGENT, "t1", actor="a")
    with pytest.raises(ValueError, match="only an admin's or an analyst's key may span every"):
        keys.create(client, Role.OPERATOR, ALL_TENANTS, actor="a")
    fleet_analyst, _ = keys.create(client, Role.ANALYST, ALL_TENANTS, actor="a")  # (Prometheus)
    assert fleet_analyst.tenant_id == ALL_TENANTS
    stored, token = keys.create(client, Role.AGENT, "t1", actor="a", agent_id="agent-7")
    assert keys.authenticate(client, f"Bearer {token}").agent_id == "agent-7"


def test_without_a_key_the_demo_acts_as_the_loopback_operator_only_when_allowed(book):
    keys, client = book
    assert Settings().api_auth_required is True  # the default
    relaxed = KeyBook(keys.settings.model_copy(update={"api_auth_required": False}), None)
    assert relaxed.authenticate(client, None) == LOOPBACK_OPERATOR
    with pytest.raises(AuthError):  # a key sent is still checked
        relaxed.authenticate(client, "Bearer aw_0123456789ab_" + "x" * 43)


def test_the_cached_path_answers_what_the_full_one_does_or_hands_over(book):
    """authenticate_cached (a request's path on the event loop) never reads ClickHouse:
    None when it would have to; otherwise the same principal and the same refusals."""
    keys, client = book
    cached = KeyBook(keys.settings.model_copy(update={"api_key_cache_s": 60.0}), keys.publisher)
    stored, token = cached.create(client, Role.OPERATOR, "tenant-1", actor="a", name="ops")
    assert cached.authenticate_cached(f"Bearer {token}") is None  # not read yet
    principal = cached.authenticate(client, f"Bearer {token}")  # reads, caches
    assert cached.authenticate_cached(f"Bearer {token}") == principal
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(AuthError, match="is not known"):  # the cached key, a wrong secret
        cached.authenticate_cached(f"Bearer {wrong}")
    for header, says in [
        (f"Basic {token}", "must be 'Bearer <API key>'"),
        ("Bearer not-a-key", "not an agentwatch API key"),
        (None, "no API key"),
    ]:
        with pytest.raises(AuthError, match=says):
            cached.authenticate_cached(header)
    # an agent's key: its revocations are read from ClickHouse, so always handed over
    revocations = KeyBook(
        keys.settings.model_copy(update={"api_key_cache_s": 60.0}), keys.publisher,
        revocations=StoredRevocations(
            keys.settings.clickhouse_database, lambda: nullcontext(client), 60.0
        ),
    )  # fmt: skip
    _, agent_token = revocations.create(client, Role.AGENT, "t1", actor="a", agent_id="agent-7")
    assert revocations.authenticate(client, f"Bearer {agent_token}").agent_id == "agent-7"
    assert revocations.authenticate_cached(f"Bearer {agent_token}") is None


class _Refusing:
    """Wraps a real client or publisher: its next call of ``method`` raises ``error``."""

    def __init__(self, real, method: str, error: Exception) -> None:
        self._real, self._method, self._error, self.armed = real, method, error, False

    def __getattr__(self, name):
        attribute = getattr(self._real, name)
        if name != self._method or not self.armed:
            return attribute
        self.armed = False

        def refuse(*args, **kwargs):
            raise self._error

        return refuse


def test_a_revocation_the_trail_records_is_a_revocation_that_holds(book, settings, caplog):
    """Published first, a revocation whose store then failed was in the audit trail while
    the key still worked (found by a review). Now the key stops working first, and the
    event goes out only after: a store that fails publishes nothing (the key as it was).
    When the broker then refuses the event, the revocation stands (restrictions are
    one-way) and says so in the log, unaudited."""
    import logging

    from api.publisher import PublishError

    keys, client = book
    stored, token = keys.create(client, Role.OPERATOR, "tenant-1", actor="admin-1", name="ops")
    failing_store = _Refusing(client, "insert", RuntimeError("ClickHouse: the test's"))
    failing_store.armed = True
    with pytest.raises(RuntimeError, match="the test's"):
        keys.revoke(failing_store, stored.key_id, actor="admin-1")
    assert keys.authenticate(client, f"Bearer {token}").key_id == stored.key_id  # still works
    assert [e["type"] for e in control_events(settings)] == ["key_created"]
    keys.publisher = failing_broker = _Refusing(keys.publisher, "publish", PublishError("x"))
    failing_broker.armed = True
    with caplog.at_level(logging.ERROR, logger="api.identity"), pytest.raises(PublishError):
        keys.revoke(client, stored.key_id, actor="admin-1")
    assert "key_change_unaudited kind=key_revoked" in caplog.text
    with pytest.raises(AuthError, match="was revoked"):
        keys.authenticate(client, f"Bearer {token}")
    assert [e["type"] for e in control_events(settings)] == ["key_created"]


def test_a_revocation_holds_whatever_the_rows_versions_say(book):
    """Each row of api_keys carries the writing replica's clock as its version, and the
    newest row won: a revocation from a replica whose clock was behind, or a rotation
    writing back the key it had read just before a revocation, brought the key back; a
    revocation stamped ahead by a fast clock waited for its time (found by a review).
    A key's restrictions are now one-way across its rows."""
    keys, client = book
    stored, token = keys.create(client, Role.OPERATOR, "tenant-1", actor="admin-1", name="ops")
    behind = StoredKey(**{**_fields(stored), "revoked_at": stored.created_at + 1})
    keys._record(client, behind)  # (version: now)
    keys._record(client, stored)  # a later write of the key as read before: unrevoked
    with pytest.raises(AuthError, match="was revoked"):
        keys.authenticate(client, f"Bearer {token}")
    other, token = keys.create(client, Role.ANALYST, "tenant-1", actor="admin-1")
    ahead = StoredKey(**{**_fields(other), "revoked_at": keys.clock() + 600})
    keys._record(client, ahead)  # a replica ten minutes ahead
    with pytest.raises(AuthError, match="was revoked"):
        keys.authenticate(client, f"Bearer {token}")
    third, token = keys.create(client, Role.ANALYST, "tenant-1", actor="admin-1", ttl_s=3600)
    keys._record(client, StoredKey(**{**_fields(third), "expires_at": keys.clock() - 1}))
    keys._record(client, third)  # the old expiry written back: the earlier one holds
    with pytest.raises(AuthError, match="expired"):
        keys.authenticate(client, f"Bearer {token}")


def test_unknown_key_ids_do_not_grow_the_cache_for_good(book, monkeypatch):
    """Every well-formed token with a new id (anyone can send one) added a cache entry
    that was never removed (found by a review): the cache keeps at most KEY_CACHE_MAX."""
    import api.identity

    monkeypatch.setattr(api.identity, "KEY_CACHE_MAX", 50)
    keys, client = book
    stored, token = keys.create(client, Role.ANALYST, "t1", actor="a")
    for n in range(200):
        with pytest.raises(AuthError, match="is not known"):
            keys.authenticate(client, f"Bearer aw_{n:012x}_" + "x" * 43)
        assert len(keys._cache) <= 50
    assert keys.authenticate(client, f"Bearer {token}").key_id == stored.key_id
