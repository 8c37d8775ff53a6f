"""``/metrics``: the pipeline's health in the Prometheus text exposition format.

Rendered from the same :class:`~api.responses.SystemHealth` report as
``/api/v1/system/health``, through ``prometheus_client``'s metric families
(which take care of names, escaping and the ``_total`` suffix of counters).
Counters are cumulative since this API process started, so Prometheus's
``rate()`` works on them; ``agentwatch_ingest_rows_per_second`` is the same
rate pre-computed over the last minute, for a glance without PromQL.

A value that is unknown right now (dataflow lag before the dataflow commits,
table counts before the first count) is left out rather than exported as 0.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from api.responses import SystemHealth
from sinks.loader_metrics import families as loader_families

#: ``Content-Type`` of the exposition this module renders.
CONTENT_TYPE = CONTENT_TYPE_LATEST


def render(health: SystemHealth) -> bytes:
    """The exposition text of one health report."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_HealthCollector(health))
    return generate_latest(registry)


class _HealthCollector(Collector):
    """Turns one health report into metric families."""

    def __init__(self, health: SystemHealth) -> None:
        self.health = health

    def collect(self) -> Iterator[Metric]:
        health = self.health
        loader = health.loader
        yield _gauge(
            "agentwatch_up",
            "1 when every part is healthy, 0 when degraded.",
            1 if health.status == "ok" else 0,
        )
        yield _gauge(
            "agentwatch_uptime_seconds", "Seconds since the API process started.", health.uptime_s
        )
        yield _gauge(
            "agentwatch_broker_up",
            "1 when the Kafka broker answers metadata requests.",
            1 if health.broker.reachable else 0,
        )
        yield _gauge(
            "agentwatch_clickhouse_up",
            "1 when ClickHouse answers SELECT 1.",
            1 if health.clickhouse.reachable else 0,
        )

        if health.dataflow.lag is not None:
            yield _gauge(
                "agentwatch_dataflow_lag_messages",
                "Heartbeats on the metrics topic the dataflow has not committed yet.",
                health.dataflow.lag,
            )

        yield _gauge(
            "agentwatch_ingest_rows_per_second",
            "Rows per second the loader wrote into table metrics (last minute).",
            loader.ingest_rows_per_s,
        )
        yield from loader_families(loader)

        counts = health.clickhouse.counts
        if counts is not None:
            yield _gauge(
                "agentwatch_deadletter_rows", "Rows in table deadletter.", counts.deadletter
            )
            yield _gauge(
                "agentwatch_agents",
                "Distinct agents with a heartbeat in ClickHouse.",
                counts.agents,
            )
            table_rows = GaugeMetricFamily(
                "agentwatch_clickhouse_rows", "Rows stored, by table.", labels=["table"]
            )
            table_rows.add_metric(["metrics"], counts.metrics_rows)
            table_rows.add_metric(["anomalies"], counts.anomalies)
            table_rows.add_metric(["threats"], counts.threats)
            table_rows.add_metric(["deadletter"], counts.deadletter)
            yield table_rows


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
