"""``GET /api/v1/agents/{id}/status`` from the agent projection (:mod:`api.projection`).

An agent the projection holds (registered, or seen on the topics since start, and
seeded once from ClickHouse) is answered from memory without a query; a first
request, or any request while the projection is not ready, reads ClickHouse (the
seven point queries the status always made) and, when the projection is ready,
keeps what it read as the agent's seed.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi import HTTPException

from agentwatch.directory import AgentView, orphan_reason
from agentwatch.identity import Permission, Principal, authorize
from api import queries
from api.projection import AgentProjection, Seed, threat_of
from api.responses import AgentStatus, AgentThreat, Orchestration
from api.scope import own_tenant, quarantine_state, unknown_agent

#: How many of an agent's latest threats its status shows.
STATUS_RECENT_THREATS = 5


def agent_status(runtime: object, caller: Principal, agent_id: str) -> AgentStatus:
    """The status of one agent (404 when unknown, or of a tenant the caller may not read)."""
    settings = runtime.settings
    projection: AgentProjection | None = runtime.projection
    view = latest = seed = None
    if projection is not None:
        view = projection.view(agent_id)
        latest = projection.latest(agent_id)
        seed = projection.seed(agent_id)
    if seed is None:
        database = settings.clickhouse_database
        with runtime.clients.client() as client:
            known_tenant = view.tenant_id if view is not None else None
            if latest is not None and latest.heartbeat is not None:
                known_tenant = known_tenant or latest.heartbeat[0]
            asked = known_tenant or own_tenant(caller)
            metrics = queries.latest_metrics(client, database, agent_id, tenant_id=asked)
            baseline = queries.latest_baseline(
                client, database, agent_id, tenant_id=metrics[0] if metrics else asked
            )
            tenant = known_tenant or (metrics or baseline or (None,))[0]
            if tenant is None:
                raise HTTPException(404, detail=unknown_agent(agent_id))
            _in_scope(caller, tenant, agent_id)
            scores = queries.score_changes(client, database, agent_id, 1, tenant_id=tenant)
            quarantine = quarantine_state(
                queries.quarantine_events(client, database, agent_id, tenant_id=tenant)
            )
            seed = Seed(
                tenant_id=(metrics or baseline or (None,))[0],
                metrics=metrics[1] if metrics else None,
                baseline=baseline[1] if baseline else None,
                anomaly=queries.latest_anomaly(client, database, agent_id, tenant_id=tenant),
                threats=queries.threats_between(
                    client, database, agent_id, None, None, STATUS_RECENT_THREATS,
                    tenant_id=tenant,
                ),
                security_score=scores[0].score if scores else None,
                quarantined=quarantine["quarantined"],
                lifecycle_state=queries.lifecycle_state(
                    client, database, agent_id, tenant_id=tenant
                ),
            )  # fmt: skip
        if projection is not None:
            projection.keep_seed(agent_id, seed)
    heartbeat = latest.heartbeat if latest is not None else None
    tenant = (
        (view.tenant_id if view is not None else None)
        or (heartbeat[0] if heartbeat is not None else None)
        or seed.tenant_id
    )
    if tenant is None:
        raise HTTPException(404, detail=unknown_agent(agent_id))
    _in_scope(caller, tenant, agent_id)
    metrics = _newer(heartbeat[1] if heartbeat else None, seed.metrics)
    baseline = _newer(latest.baseline if latest else None, seed.baseline)
    anomaly = _newer(latest.anomaly if latest else None, seed.anomaly)
    # what the topics superseded, the kept seed need not hold (bounded memory per agent)
    if metrics is not seed.metrics:
        seed.metrics = None
    if baseline is not seed.baseline:
        seed.baseline = None
    if anomaly is not seed.anomaly:
        seed.anomaly = None
    last = metrics.timestamp if metrics is not None else None
    state = view.state if view is not None and view.state else seed.lifecycle_state
    score = view.security_score if view is not None else None
    if score is None:
        score = seed.security_score
    orphaned = None
    if view is not None:
        heard = projection.heartbeat_at(agent_id) if projection is not None else None
        if last is not None:
            heard = max(heard or 0.0, last.timestamp())
        orphaned = orphan_reason(view, time.time(), settings.agent_orphan_after_s, heard)
    return AgentStatus(
        agent_id=agent_id,
        tenant_id=tenant,
        last_heartbeat=last,
        seconds_since_heartbeat=round(time.time() - last.timestamp(), 3) if last else None,
        metrics=metrics,
        baseline=baseline,
        latest_anomaly=anomaly,
        recent_threats=_threats(view, seed.threats),
        security_score=settings.security_initial_score if score is None else score,
        quarantined=(state == "quarantined") if view is not None and view.state
        else seed.quarantined,
        lifecycle_state=state,
        **_registration(view),
        orphaned=orphaned is not None,
        orphan_reason=orphaned,
        **_cluster(projection, view),
        orchestration=_orchestration(runtime, agent_id),
    )  # fmt: skip


def _orchestration(runtime: object, agent_id: str) -> Orchestration | None:
    assigner = getattr(runtime, "assigner", None)
    described = assigner.orchestration(agent_id) if assigner is not None else None
    return None if described is None else Orchestration(**described)


def _in_scope(caller: Principal, tenant_id: str, agent_id: str) -> None:
    """404 (as if unknown: no probing of other tenants' agents) for a caller whose key
    may not read ``tenant_id``."""
    if authorize(caller, Permission.READ, tenant_id, caller.agent_id) is not None:
        raise HTTPException(404, detail=unknown_agent(agent_id))


def _newer(live, seeded):
    """The newer by ``timestamp`` of what the topics brought and what ClickHouse held."""
    if live is None or seeded is None:
        return live if live is not None else seeded
    return live if live.timestamp >= seeded.timestamp else seeded


def _threats(view: AgentView | None, seeded: list[AgentThreat]) -> list[AgentThreat]:
    """The latest threats, newest first: those read from the topic win over the seed's."""
    merged = {(t.rule, t.first_seen): t for t in seeded}
    for _, _, record in view.threats if view is not None else ():
        try:
            threat = threat_of(record)
        except ValueError:
            continue
        merged[(threat.rule, threat.first_seen)] = threat
    ordered = sorted(merged.values(), key=lambda t: (-t.first_seen.timestamp(), t.rule))
    return ordered[:STATUS_RECENT_THREATS]


def _registration(view: AgentView | None) -> dict:
    if view is None:
        return {}
    return {
        "lifecycle_since": _utc(view.state_since),
        "health": view.health,
        "health_band": view.health_band,
        "name": view.name or None,
        "agent_type": view.agent_type or None,
        "owner": view.owner or None,
        "registered_at": _utc(view.registered_at),
    }


def _cluster(projection: AgentProjection | None, view: AgentView | None) -> dict:
    """The agent's behaviour cluster and its description (from the projection)."""
    if view is None or view.cluster is None:
        return {}
    described = projection.directory.clusters.get(view.cluster, {}) if projection else {}
    return {"cluster": view.cluster, "cluster_description": described.get("description")}


def _utc(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)
