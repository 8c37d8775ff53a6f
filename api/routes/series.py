"""``GET /api/v1/agents/{agent_id}/series``: one metric of an agent over time, with its
baseline band, for a chart (the console's agent page draws it)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from agentwatch.identity import Permission
from api import queries
from api.errors import error_responses
from api.params import AgentId, TimeRangeDep
from api.runtime import API_PREFIX, Reader, RuntimeDep
from api.scope import scope_agent, unknown_agent

router = APIRouter()

MetricName = Literal[queries.SERIES_METRICS]  # type: ignore[valid-type]


class SeriesPoint(BaseModel):
    """The metric at one heartbeat."""

    timestamp: datetime = Field(description="Event time of the heartbeat (UTC).")
    value: float


class SeriesBand(BaseModel):
    """The agent's learned baseline of the metric: the band a normal value stays in."""

    as_of: datetime = Field(description="Event time of the last heartbeat the baseline saw.")
    warmed_up: bool = Field(description="True once the warm-up is over and anomalies may fire.")
    mean: float
    std: float
    sigmas: float = Field(
        description="The band is mean ± sigmas × std: AGENTWATCH_ANOMALY_REASON_SIGMA, the "
        "distance at which a metric is named as a reason of an anomaly."
    )
    low: float = Field(description="mean - sigmas × std.")
    high: float = Field(description="mean + sigmas × std.")


class MetricSeries(BaseModel):
    """One metric of one agent over time, oldest first, and its baseline band."""

    agent_id: str
    tenant_id: str | None
    metric: str
    since: datetime | None = Field(description="Inclusive lower bound, if given.")
    until: datetime | None = Field(description="Inclusive upper bound, if given.")
    limit: int
    count: int = Field(description="Points returned (the newest `limit` in the range).")
    points: list[SeriesPoint]
    band: SeriesBand | None = Field(
        description="The latest baseline of the metric (the table keeps the latest only); "
        "null before the first baseline."
    )


@router.get(
    f"{API_PREFIX}/agents/{{agent_id}}/series",
    response_model=MetricSeries,
    responses=error_responses(404, 422, 503),
    tags=["agents"],
)
def agent_series(
    agent_id: AgentId,
    runtime: RuntimeDep,
    span: TimeRangeDep,
    caller: Reader,
    metric: Annotated[MetricName, Query(description="The heartbeat's metric to chart.")] = (
        "cpu_usage"
    ),
) -> MetricSeries:
    """One metric of an agent at each heartbeat in a time range (the newest `limit`,
    returned oldest first) and its baseline band (mean ± AGENTWATCH_ANOMALY_REASON_SIGMA
    std, from the latest baseline)."""
    settings = runtime.settings
    database = settings.clickhouse_database
    with runtime.clients.client() as client:
        tenant_id = scope_agent(client, database, caller, Permission.READ, agent_id)
        rows = queries.metric_series(
            client, database, agent_id, metric, span.since, span.until, span.limit,
            tenant_id=tenant_id,
        )  # fmt: skip
        latest = queries.latest_baseline(client, database, agent_id, tenant_id=tenant_id)
        known = bool(rows) or latest is not None
        known = known or queries.agent_is_known(client, database, agent_id, tenant_id=tenant_id)
        if not known:
            raise HTTPException(404, detail=unknown_agent(agent_id))
    band = None
    if latest is not None:
        tenant_id, baseline = latest
        if metric in baseline.mean:
            mean, std = baseline.mean[metric], baseline.std.get(metric, 0.0)
            sigmas = settings.anomaly_reason_sigma
            band = SeriesBand(
                as_of=baseline.timestamp, warmed_up=baseline.warmed_up, mean=mean, std=std,
                sigmas=sigmas, low=mean - sigmas * std, high=mean + sigmas * std,
            )  # fmt: skip
    points = [SeriesPoint(timestamp=t, value=v) for t, v in rows]
    return MetricSeries(
        agent_id=agent_id,
        tenant_id=tenant_id,
        metric=metric,
        since=span.since,
        until=span.until,
        limit=span.limit,
        count=len(points),
        points=points,
        band=band,
    )
