"""``GET /api/v1/orchestration/clusters``: the behaviour clusters, answered from the
in-memory agent projection (:mod:`api.projection`).

The dataflow groups the whole fleet with one model (:mod:`agentwatch.clusters`): a
cluster's id and description mean the same in every tenant. What a caller sees of it
is its own tenant's share: how many of its agents each cluster holds. The centroids
and their words come from the latest ``cluster_summary`` on ``agents.state``: numbers
averaged over many agents of the fleet, never one agent's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from agentwatch.directory import cluster_sizes
from api.errors import error_responses
from api.identity import tenant_filter
from api.routes.registry import _projection
from api.runtime import API_PREFIX, Reader, RuntimeDep
from schemas.models import Identifier

router = APIRouter(tags=["orchestration"])


class ClusterProfile(BaseModel):
    """A cluster's centre in the units of an ``AssignmentScore``."""

    success_rate: float = Field(description="Smoothed share of tasks completed (0-1).")
    response_time_ms: float
    load: float = Field(description="Active tasks / capacity (0-1).")
    sla_met_rate: float = Field(description="Share of deadlines met (0-1).")
    cost: float = Field(description="The cost component (0-1; higher is cheaper).")
    p_fail: float | None = Field(None, description="Probability of failure within the horizon.")


class BehaviourCluster(BaseModel):
    """One behaviour cluster: its id, what it means and how many of the tenant's agents it
    holds."""

    cluster: int
    description: str | None = Field(
        description="The centre in words, e.g. 'fast, reliable, lightly loaded'; null until "
        "the dataflow has described it."
    )
    size: int = Field(description="The tenant's agents in it (not decommissioned).")
    profile: ClusterProfile | None = Field(None, description="Its centre.")


class ClusterList(BaseModel):
    """The behaviour clusters, with the sizes of the caller's tenant (or of every tenant)."""

    tenant_id: str | None = Field(description="The tenant counted (null: every tenant).")
    described_at: datetime | None = Field(
        description="Event time of the description shown (null: none yet)."
    )
    clustered: int = Field(description="Agents counted in some cluster.")
    clusters: list[BehaviourCluster]


@router.get(
    f"{API_PREFIX}/orchestration/clusters",
    response_model=ClusterList,
    responses=error_responses(401, 403, 422, 503),
)
def list_clusters(
    runtime: RuntimeDep,
    caller: Reader,
    tenant: Annotated[Identifier | None, Query(description="Tenant (default: the key's).")] = None,
) -> ClusterList:
    """Every behaviour cluster the dataflow has described, and every cluster that holds
    an agent of the tenant, by id: its description, its centre and its size."""
    tenant = tenant_filter(caller, tenant)
    projection = _projection(runtime)
    sizes = cluster_sizes(projection.views(tenant))
    with projection.locked() as directory:
        described, at = dict(directory.clusters), directory.clusters_at
    clusters = []
    for cluster_id in sorted(set(described) | set(sizes)):
        summary = described.get(cluster_id, {})
        profile = summary.get("profile")
        clusters.append(
            BehaviourCluster(
                cluster=cluster_id,
                description=summary.get("description"),
                size=sizes.get(cluster_id, 0),
                profile=ClusterProfile.model_validate(profile) if profile else None,
            )
        )
    return ClusterList(
        tenant_id=tenant,
        described_at=None if at is None else datetime.fromtimestamp(at, UTC),
        clustered=sum(sizes.values()),
        clusters=clusters,
    )
