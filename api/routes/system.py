"""The pipeline's own health and its Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from api import prometheus
from api.responses import SystemHealth
from api.runtime import API_PREFIX, Reader, RuntimeDep

router = APIRouter()


@router.get(f"{API_PREFIX}/system/health", response_model=SystemHealth, tags=["system"])
def system_health(runtime: RuntimeDep, caller: Reader) -> SystemHealth:
    """Broker, dataflow lag, loader, ClickHouse and uptime; ``status`` is ok or degraded.

    Answers within about a second even when the broker is down (its answer is cached
    for ``AGENTWATCH_API_HEALTH_CACHE_S``).
    """
    return runtime.monitor.health()


@router.get(
    "/metrics",
    response_class=Response,
    tags=["system"],
    responses={200: {"content": {prometheus.CONTENT_TYPE: {}}}},
)
def prometheus_metrics(runtime: RuntimeDep, caller: Reader) -> Response:
    """Ingest rate, lags, dead letters, batch sizes and more in Prometheus text format."""
    body = prometheus.render(runtime.monitor.health())
    return Response(body, media_type=prometheus.CONTENT_TYPE)
