"""The pipeline's own health and its Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from agentwatch.identity import ALL_TENANTS
from api import prometheus
from api.responses import SystemHealth, TenantHealth
from api.runtime import API_PREFIX, FleetReader, Reader, RuntimeDep

router = APIRouter()


@router.get(
    f"{API_PREFIX}/system/health",
    response_model=SystemHealth | TenantHealth,
    tags=["system"],
)
def system_health(runtime: RuntimeDep, caller: Reader) -> SystemHealth | TenantHealth:
    """Broker, dataflow lag, loader, ClickHouse and uptime; ``status`` is ok or degraded.

    A key of every tenant gets the whole report (``scope`` ``fleet``). A key of one tenant
    gets whether each part works (``scope`` ``tenant``), without the fleet's row counts,
    lags, rates or errors: those are every tenant's together.

    Answers within about a second even when the broker is down (its answer is cached
    for ``AGENTWATCH_API_HEALTH_CACHE_S``).
    """
    if caller.tenant_id == ALL_TENANTS:
        return runtime.monitor.health()
    return runtime.monitor.tenant_health()


@router.get(
    "/metrics",
    response_class=Response,
    tags=["system"],
    responses={200: {"content": {prometheus.CONTENT_TYPE: {}}}},
)
def prometheus_metrics(runtime: RuntimeDep, caller: FleetReader) -> Response:
    """Ingest rate, lags, dead letters, batch sizes and more in Prometheus text format: the
    whole fleet's, so for a key of every tenant (Prometheus scrapes with one)."""
    body = prometheus.render(runtime.monitor.health())
    return Response(body, media_type=prometheus.CONTENT_TYPE)
