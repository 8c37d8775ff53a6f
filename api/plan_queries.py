"""The ClickHouse reads behind the planning routes (load balancing, maintenance, capacity
forecast: ``api/routes/operations.py``), one function per question, in the manner of
:mod:`api.queries`: every function takes ``tenant_id`` (None: every tenant, for a key of
every tenant), every value from a caller is bound as a query parameter, and the tables
that keep a latest row per key are read ``FINAL``.

The sources of truth: ``tasks`` (status ``accepted`` = open), ``assignment_scores_latest``
(the shard's open count, capacity, state, components and ``p_fail``), ``agent_registry``
(capabilities, agent type, declared capacity), ``agents`` (lifecycle state),
``agent_events`` (the latest ``health_changed``) and ``metrics`` (history of
``active_tasks``, for the load profiles and the forecast).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import orjson
from clickhouse_connect.driver.client import Client

from agentwatch.planning import OpenTask
from api.queries import as_utc

#: The agent type of agents with no registration row (they registered with a heartbeat).
UNKNOWN_TYPE = "unknown"


def _tenant(tenant_id: str | None, parameters: dict[str, object], column="tenant_id") -> str:
    """``AND tenant_id = …`` for one tenant, nothing for every tenant."""
    if tenant_id is None:
        return ""
    parameters["tenant_id"] = tenant_id
    return f" AND {column} = {{tenant_id:String}}"


def _epoch(value: datetime | None) -> float | None:
    return as_utc(value).timestamp() if value is not None else None


def open_tasks(client: Client, database: str, *, tenant_id: str | None) -> list[OpenTask]:
    """Every accepted, unfinished task (``tasks`` FINAL, status ``accepted``)."""
    parameters: dict[str, object] = {}
    result = client.query(
        "SELECT task_id, tenant_id, agent_id, required_capabilities, priority, accepted_at, "
        f"task_type, attempt, deadline FROM {database}.tasks FINAL "
        f"WHERE status = 'accepted'{_tenant(tenant_id, parameters)} "
        "ORDER BY tenant_id, agent_id, task_id",
        parameters=parameters,
    )
    return [
        OpenTask(
            task_id=row["task_id"],
            tenant_id=row["tenant_id"],
            agent_id=row["agent_id"],
            required_capabilities=tuple(row["required_capabilities"]),
            priority=row["priority"],
            accepted_at=_epoch(row["accepted_at"]) or 0.0,
            task_type=row["task_type"],
            attempt=row["attempt"],
            deadline=_epoch(row["deadline"]),
        )
        for row in result.named_results()
    ]


@dataclass(slots=True)
class FleetAgent:
    """One agent as the planners need it, joined from the registry, its latest assignment
    score, its lifecycle state and its latest health."""

    agent_id: str
    tenant_id: str
    agent_type: str = UNKNOWN_TYPE
    capabilities: frozenset[str] = frozenset()
    capacity: int = 0
    active_tasks: int = 0
    state: str | None = None
    score: float | None = None
    components: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    p_fail: float | None = None
    health: float | None = None


def fleet(client: Client, database: str, *, tenant_id: str | None) -> dict[str, FleetAgent]:
    """Every agent known to the registry or to the assignment scores, by id: capacity from
    the latest score (the shard's), else the registration; state from the lifecycle
    projection (``agents``), else the score's. Four reads, joined here (each is one
    ``FINAL`` or grouped read of one table)."""
    agents: dict[str, FleetAgent] = {}
    parameters: dict[str, object] = {}
    registry = client.query(
        "SELECT agent_id, tenant_id, agent_type, capabilities, max_concurrent_tasks "
        f"FROM {database}.agent_registry FINAL WHERE 1{_tenant(tenant_id, parameters)}",
        parameters=parameters,
    )
    for row in registry.named_results():
        agents[row["agent_id"]] = FleetAgent(
            agent_id=row["agent_id"],
            tenant_id=row["tenant_id"],
            agent_type=row["agent_type"] or UNKNOWN_TYPE,
            capabilities=frozenset(row["capabilities"]),
            capacity=row["max_concurrent_tasks"],
        )
    parameters = {}
    scores = client.query(
        "SELECT agent_id, tenant_id, score, performance, cost, availability, sla, weights, "
        "state, active_tasks, capacity, p_fail "
        f"FROM {database}.assignment_scores_latest FINAL WHERE 1{_tenant(tenant_id, parameters)}",
        parameters=parameters,
    )
    for row in scores.named_results():
        agent = agents.setdefault(row["agent_id"], FleetAgent(row["agent_id"], row["tenant_id"]))
        # Float32 columns: rounded, so 0.7 reads 0.7 and not 0.699999988
        agent.score = round(float(row["score"]), 6)
        agent.components = {
            name: round(float(row[name]), 6)
            for name in ("performance", "cost", "availability", "sla")
        }
        agent.weights = orjson.loads(row["weights"]) if row["weights"] else {}
        agent.state = row["state"] or None
        agent.active_tasks = row["active_tasks"]
        agent.capacity = row["capacity"] or agent.capacity
        agent.p_fail = round(float(row["p_fail"]), 6) if row["p_fail"] is not None else None
    parameters = {}
    states = client.query(
        f"SELECT agent_id, state FROM {database}.agents FINAL "
        f"WHERE 1{_tenant(tenant_id, parameters)}",
        parameters=parameters,
    )
    for agent_id, state in states.result_rows:
        if agent_id in agents:
            agents[agent_id].state = state
    parameters = {}
    health = client.query(
        "SELECT agent_id, argMax(JSONExtractFloat(payload, 'health'), timestamp) "
        f"FROM {database}.agent_events WHERE type = 'health_changed'"
        f"{_tenant(tenant_id, parameters)} GROUP BY agent_id",
        parameters=parameters,
    )
    for agent_id, value in health.result_rows:
        if agent_id in agents:
            agents[agent_id].health = float(value)
    return agents


def hourly_demand(
    client: Client, database: str, since: datetime, *, tenant_id: str | None
) -> list[tuple[str, str, datetime, float]]:
    """Per tenant, agent type and hour since ``since``: the demand, the sum over the
    group's agents of each one's highest ``active_tasks`` in that hour (an upper bound of
    the tasks run at once), as ``(tenant_id, agent_type, hour (UTC), demand)`` in order."""
    parameters: dict[str, object] = {"since": since}
    tenant = _tenant(tenant_id, parameters)
    result = client.query(
        "SELECT tenant_id, if(r.agent_type = '', {unknown:String}, r.agent_type) AS kind, "
        "hour, sum(peak) AS demand FROM ("
        "  SELECT tenant_id, agent_id, toStartOfHour(timestamp) AS hour, "
        "  max(active_tasks) AS peak "
        f"  FROM {database}.metrics WHERE timestamp >= {{since:DateTime64(3, 'UTC')}}{tenant} "
        "  GROUP BY tenant_id, agent_id, hour"
        ") AS m LEFT JOIN ("
        "  SELECT tenant_id, agent_id, argMax(agent_type, registered_at) AS agent_type "
        f"  FROM {database}.agent_registry WHERE 1{tenant} GROUP BY tenant_id, agent_id"
        ") AS r USING (tenant_id, agent_id) "
        "GROUP BY tenant_id, kind, hour ORDER BY tenant_id, kind, hour",
        parameters={**parameters, "unknown": UNKNOWN_TYPE},
    )
    return [
        (tenant, kind, as_utc(hour), float(demand))
        for tenant, kind, hour, demand in result.result_rows
    ]
