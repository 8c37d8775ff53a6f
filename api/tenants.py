"""Whose agents are these? The tenants of many agent ids at once.

A route that acts on many agents (``POST /api/v1/agents/bulk-operation``) must
know each one's tenant before it may act, and must not ask once per agent: 10,000
point queries take tens of seconds. A :class:`TenantLookup` answers for a whole
list in one call. :class:`ClickHouseTenants` does it with one query over what
ClickHouse holds (the agent's registration, else its latest heartbeat, else its
latest baseline); an in-memory projection of the agents, kept current from the
topics, can take its place by offering the same methods (``Runtime.tenant_lookup``),
with the agents' lifecycle states beside (:meth:`TenantLookup.states_of`).

>>> class Fixed:
...     def tenants_of(self, agent_ids, within=None):
...         return {a: "t1" for a in agent_ids if a.startswith("a") and within in (None, "t1")}
...     def states_of(self, agent_ids):
...         return {a: "quarantined" for a in agent_ids if a == "a1"}
>>> lookup: TenantLookup = Fixed()
>>> lookup.tenants_of(["a1", "b2"]), lookup.states_of(["a1", "a2"])
({'a1': 't1'}, {'a1': 'quarantined'})
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from agentwatch.settings import Settings
from api.client_pool import ClientPool
from schemas.events import REGISTERED, STATUS_CHANGED


class TenantLookup(Protocol):
    """Anything that knows the tenants of agents, and their lifecycle states."""

    def tenants_of(self, agent_ids: Sequence[str], within: str | None = None) -> dict[str, str]:
        """The tenant of each known agent among ``agent_ids``; unknown ids are left out.
        ``within``: look in that tenant only (the others' agents count as unknown)."""
        ...

    def states_of(self, agent_ids: Sequence[str]) -> dict[str, str]:
        """The lifecycle state of each agent as last recorded (its latest
        ``status_changed``); agents without one are left out."""
        ...


class ClickHouseTenants:
    """:class:`TenantLookup` over ClickHouse: one query for any number of ids.

    Where an agent's tenant is written, most trusted first: its ``registered``
    event (an operator's, on agents.control), its latest heartbeat, its latest
    baseline (the same sources as the single-agent routes, plus the registration).
    """

    def __init__(self, settings: Settings, clients: ClientPool) -> None:
        self.database = settings.clickhouse_database
        self.clients = clients

    def tenants_of(self, agent_ids: Sequence[str], within: str | None = None) -> dict[str, str]:
        if not agent_ids:
            return {}
        db = self.database
        parameters: dict[str, object] = {"ids": list(agent_ids)}
        tenant = ""
        if within is not None:  # where the sort key leads with the tenant, it is used
            tenant, parameters["tenant"] = " AND tenant_id = {tenant:String}", within
        # The ids are bound once (a 10,000-id array costs ~30 ms to pass); ClickHouse
        # pushes the conditions down into each branch, onto its sort key.
        query = (
            "SELECT agent_id, argMin(tenant_id, (source, -toUnixTimestamp64Milli(timestamp))) "
            "FROM ("
            f" SELECT agent_id, tenant_id, timestamp, 0 AS source FROM {db}.agent_events"
            f" WHERE type = '{REGISTERED}' AND channel = 'control'"
            f" UNION ALL SELECT agent_id, tenant_id, timestamp, 1 FROM {db}.metrics"
            f" UNION ALL SELECT agent_id, tenant_id, timestamp, 2 FROM {db}.baselines"
            f") WHERE agent_id IN {{ids:Array(String)}}{tenant} GROUP BY agent_id"
        )
        with self.clients.client() as client:
            rows = client.query(query, parameters=parameters).result_rows
        return {agent_id: str(tenant_id) for agent_id, tenant_id in rows}

    def states_of(self, agent_ids: Sequence[str]) -> dict[str, str]:
        if not agent_ids:
            return {}
        query = (
            "SELECT agent_id, argMax(JSONExtractString(payload, 'to'), timestamp) "
            f"FROM {self.database}.agent_events WHERE agent_id IN {{ids:Array(String)}} "
            f"AND type = '{STATUS_CHANGED}' AND channel IN ('state', '') GROUP BY agent_id"
        )
        with self.clients.client() as client:
            rows = client.query(query, parameters={"ids": list(agent_ids)}).result_rows
        return {agent_id: state for agent_id, state in rows if state}


class ProjectedTenants:
    """:class:`TenantLookup` from the API's agent projection (:mod:`api.projection`),
    asking ``fallback`` (one query) only about the agents the projection does not hold
    (agents known only from heartbeats sent before this process started). While the
    projection is not ready, everything is asked of ``fallback``."""

    def __init__(self, projection: object, fallback: TenantLookup) -> None:
        self.projection = projection
        self.fallback = fallback

    def tenants_of(self, agent_ids: Sequence[str], within: str | None = None) -> dict[str, str]:
        found: dict[str, str] = {}
        missing = self._split(agent_ids, found, lambda view: view.tenant_id, within)
        if missing:
            found.update(self.fallback.tenants_of(missing, within))
        return found

    def states_of(self, agent_ids: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        missing = self._split(agent_ids, found, lambda view: view.state)
        if missing:
            found.update(self.fallback.states_of(missing))
        return found

    def _split(self, agent_ids, found: dict, value, within: str | None = None) -> list[str]:
        """Fill ``found`` with ``value(view)`` of the agents the projection holds (left
        out when of another tenant than ``within``); the others' ids, and those whose
        ``value(view)`` is None: the projection holds what the topics still hold, and a
        state recorded longer ago than the topic's retention is only in ClickHouse (an
        agent the projection knows from a command alone is not thereby active)."""
        if not self.projection.ready:
            return list(agent_ids)
        missing = []
        with self.projection.locked() as directory:
            for agent_id in agent_ids:
                view = directory.views.get(agent_id)
                if view is None:
                    missing.append(agent_id)
                elif within is None or view.tenant_id == within:
                    answer = value(view)
                    if answer is None:
                        missing.append(agent_id)
                    else:
                        found[agent_id] = answer
        return missing


def tenant_lookup(runtime: object) -> TenantLookup:
    """The running API's lookup (``Runtime.tenant_lookup``: the projection's), or one
    over ClickHouse for an app without it."""
    if runtime.tenant_lookup is not None:
        return runtime.tenant_lookup
    return ClickHouseTenants(runtime.settings, runtime.clients)
