"""Who may touch which agent: an agent's tenant, and the refusals that do not reveal
another tenant's agents (404, as if they did not exist)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from clickhouse_connect.driver.client import Client
from fastapi import HTTPException

from agentwatch.identity import ALL_TENANTS, Permission, Principal, authorize
from api import queries

if TYPE_CHECKING:
    from api.runtime import Runtime


def in_scope(
    caller: Principal,
    permission: Permission,
    tenant_id: str,
    agent_id: str | None,
    status: int = 404,
) -> None:
    """Refuse a caller whose key may not act on ``tenant_id``: 404 for an agent (as if it
    did not exist, so other tenants' agents cannot be probed), ``status`` otherwise."""
    reason = authorize(caller, permission, tenant_id, caller.agent_id)
    if reason is None:
        return
    if agent_id is not None:
        raise HTTPException(404, detail=unknown_agent(agent_id))
    raise HTTPException(status, detail=reason)


def agent_rows(
    client: Client,
    database: str,
    caller: Principal,
    agent_id: str,
    read: Callable[..., list],
) -> list:
    """What ``read(tenant_id=…)`` finds of an agent the caller may read (the agent's
    tenant, for the query to name); 404 when it finds nothing and the agent is unknown,
    or is another tenant's."""
    tenant_id = scope_agent(client, database, caller, Permission.READ, agent_id)
    found = read(tenant_id=tenant_id)
    if not found and not queries.agent_is_known(client, database, agent_id, tenant_id=tenant_id):
        raise HTTPException(404, detail=unknown_agent(agent_id))
    return found


def scope_agent(
    client: Client, database: str, caller: Principal, permission: Permission, agent_id: str
) -> str | None:
    """:func:`in_scope` for an agent whose tenant is to be looked up; returns the tenant,
    for the reads that follow to name it (None: the agent is unknown and the caller's key
    is of every tenant, which may read any agent's rows: the reads name the agent only)."""
    tenant_id = tenant_of(client, database, agent_id, own_tenant(caller))
    if tenant_id is None:
        if caller.tenant_id == ALL_TENANTS:
            return None
        raise HTTPException(404, detail=unknown_agent(agent_id))
    in_scope(caller, permission, tenant_id, agent_id)
    return tenant_id


def own_tenant(caller: Principal) -> str | None:
    """The one tenant whose agents the caller's key may see (None: a key of every tenant).
    A read that names it finds no agent of another tenant: the same 404 as :func:`in_scope`."""
    return None if caller.tenant_id == ALL_TENANTS else caller.tenant_id


def tenant_of(
    client: Client, database: str, agent_id: str, tenant_id: str | None = None
) -> str | None:
    """The agent's tenant from its latest heartbeat or baseline; None if it is unknown
    (or not of ``tenant_id``, when given). How the tenant of an agent asked for by its id
    is resolved: the one read that does not name it (api/queries.py)."""
    latest = queries.latest_metrics(client, database, agent_id, tenant_id=tenant_id)
    if latest is not None:
        return latest[0]
    baseline = queries.latest_baseline(client, database, agent_id, tenant_id=tenant_id)
    return baseline[0] if baseline is not None else None


def quarantine_state(events: list[dict]) -> dict:
    """The quarantine fields of :class:`AgentSecurity` from the agent's quarantine events,
    newest first (:func:`api.queries.quarantine_events`). A ``quarantine_requested`` is a
    request until the dataflow's ``status_changed`` (or a ``released``) follows it.

    >>> from datetime import UTC, datetime
    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> state = quarantine_state([
    ...     {"type": "quarantine_requested", "timestamp": t, "payload": {"reason": "again"}},
    ...     {"type": "status_changed", "timestamp": t, "payload": {"to": "quarantined",
    ...      "reason": "score 10 < 20"}}])
    >>> state["quarantined"], state["quarantine_reason"], state["quarantine_requested"]
    (True, 'score 10 < 20', True)
    >>> quarantine_state([{"type": "released", "timestamp": t, "payload": {}}])["quarantined"]
    False
    """
    requested = False
    for event in events:
        if event["type"] == "quarantine_requested":
            requested = True
            continue
        if event["type"] == "status_changed" and event["payload"].get("to") == "quarantined":
            return {
                "quarantined": True,
                "quarantined_since": event["timestamp"],
                "quarantine_reason": event["payload"].get("reason"),
                "quarantine_requested": requested,
            }
        break  # released, or a status change out of quarantine
    return {
        "quarantined": False,
        "quarantined_since": None,
        "quarantine_reason": None,
        "quarantine_requested": requested,
    }


def unknown_agent(agent_id: str) -> str:
    return f"agent {agent_id!r} is unknown: no heartbeat and no baseline stored for it"


def agent_tenant(client: Client, runtime: Runtime, agent_id: str) -> str | None:
    """The tenant an agent id belongs to: its registration's (the agent projection's view),
    else its first credential's, else its latest heartbeat's; None for an agent agentwatch
    does not know. An agent id is one agent fleet-wide: once it is some tenant's, no key
    of another tenant may name it (:func:`check_free_for`)."""
    projection = runtime.projection
    view = projection.view(agent_id) if projection is not None else None
    if view is not None:
        return view.tenant_id
    keys = runtime.keys.of_agent(client, agent_id)
    if keys:
        return keys[0].tenant_id
    latest = queries.latest_metrics(
        client, runtime.settings.clickhouse_database, agent_id, tenant_id=None
    )
    return latest[0] if latest is not None else None


def check_free_for(client: Client, runtime: Runtime, agent_id: str, tenant_id: str) -> None:
    """409 unless ``agent_id`` is unknown or ``tenant_id``'s: a credential for an agent id
    names the agent's own tenant (without it, another tenant's admin or operator could mint
    a key for the agent and then read and cut short its credentials)."""
    owner = agent_tenant(client, runtime, agent_id)
    if owner is not None and owner != tenant_id:
        raise HTTPException(
            409, detail=f"agent id {agent_id!r} is known already; choose another agent_id"
        )
