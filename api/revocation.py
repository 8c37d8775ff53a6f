"""When an agent's credentials stopped being good: the last time its lifecycle entered a
state that revokes them (quarantined, compromised, decommissioning, decommissioned).

An agent key made before that moment is refused (:meth:`api.identity.KeyBook.authenticate`);
a key made after it — an operator's new credential, after the release — is good. The
moment is the event time of the dataflow's ``status_changed`` on ``agents.state``.

The key book asks a :class:`RevocationLookup`; :class:`StoredRevocations` answers from
ClickHouse (the ``agent_events`` table the loader fills), cached per agent for
``api_key_cache_s`` like the keys themselves. Another source (an in-memory projection of
``agents.state``) only has to answer :meth:`RevocationLookup.revoked_since`.

>>> revocation = Revocation("quarantined", 1_800_000_000.0)
>>> revocation.revokes(created_at=1_799_999_999.0), revocation.revokes(created_at=1.8e9 + 1)
(True, False)
>>> print(revocation.reason("a1"))
the agent a1 was quarantined at 2027-01-15T08:00:00Z; an operator issues a new credential \
after release (POST /api/v1/agents/a1/credentials)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from clickhouse_connect.driver.client import Client

#: Lifecycle states whose entry revokes the agent's credentials made before it.
REVOKING_STATES = ("quarantined", "compromised", "decommissioning", "decommissioned")


def instant(epoch_s: float) -> str:
    """An epoch time as ISO-8601 UTC to the second, for messages.

    >>> instant(0)
    '1970-01-01T00:00:00Z'
    """
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Revocation:
    """The last entry of an agent into a revoking state: which state, and when."""

    state: str
    at: float  # epoch seconds (event time of the status change)

    def revokes(self, created_at: float) -> bool:
        """Whether a key made at ``created_at`` is revoked by this entry."""
        return created_at <= self.at

    def reason(self, agent_id: str) -> str:
        """Why the agent's key is refused, and what to do."""
        return (
            f"the agent {agent_id} was {self.state} at {instant(self.at)}; an operator issues "
            f"a new credential after release (POST /api/v1/agents/{agent_id}/credentials)"
        )


class RevocationLookup(Protocol):
    """Where the key book learns whether an agent's credentials were revoked."""

    def revoked_since(self, agent_id: str) -> Revocation | None:
        """The agent's last entry into a revoking state; None if it never entered one."""
        ...


class StoredRevocations:
    """:class:`RevocationLookup` from ClickHouse's ``agent_events`` (the dataflow's
    ``status_changed`` events), cached per agent for ``cache_s`` seconds."""

    def __init__(
        self,
        database: str,
        client: Callable[[], object],
        cache_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.database = database
        self._client = client  # a context manager factory (ClientPool.client)
        self.cache_s = cache_s
        self._clock = clock
        self._cache: dict[str, tuple[float, Revocation | None]] = {}
        self._lock = threading.Lock()

    def revoked_since(self, agent_id: str) -> Revocation | None:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(agent_id)
        if hit is not None and now - hit[0] < self.cache_s:
            return hit[1]
        with self._client() as client:
            found = last_revocation(client, self.database, agent_id)
        with self._lock:
            self._cache[agent_id] = (now, found)
        return found

    def forget(self) -> None:
        """Drop the cache (tests, and after an operator's new credential)."""
        with self._lock:
            self._cache.clear()


def last_revocation(client: Client, database: str, agent_id: str) -> Revocation | None:
    """The agent's last ``status_changed`` into a revoking state, from ClickHouse."""
    rows = client.query(
        "SELECT JSONExtractString(payload, 'to'), toFloat64(timestamp) "
        f"FROM {database}.agent_events FINAL "
        "PREWHERE agent_id = {agent_id:String} "
        "WHERE type = 'status_changed' AND channel IN ('state', '') "
        "AND JSONExtractString(payload, 'to') IN {states:Array(String)} "
        "ORDER BY timestamp DESC LIMIT 1",
        parameters={"agent_id": agent_id, "states": list(REVOKING_STATES)},
    ).result_rows
    return Revocation(rows[0][0], float(rows[0][1])) if rows else None
