"""The loader's figures in the Prometheus text format: the ``agentwatch_loader_*`` families.

One place renders them for both homes of the loader: the API process that runs it (the
embedded profile; ``api/prometheus.py`` adds them to the API's ``/metrics``) and
``python -m sinks.loader`` on its own (the cluster profile), which serves them on
``AGENTWATCH_LOADER_METRICS_PORT`` (0: not served) with :func:`serve`.

>>> from sinks.loader import LoaderStats
>>> figures = LoaderFigures.of(LoaderStats(started_at=0.0, rows_inserted={"metric_rows": 5},
...                                        batches_inserted=1, batch_rows_sum=5), running=True)
>>> [f.name for f in families(figures)][:3]
['agentwatch_loader_running', 'agentwatch_loader_lag_messages', 'agentwatch_loader_rows_inserted']
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoaderFigures:
    """What the families are made of: the fields the API's health report keeps of a
    loader (``api.responses.LoaderHealth`` has the same names)."""

    running: bool
    lag: dict[str, int] | None
    rows_inserted: dict[str, int]
    skipped_invalid: dict[str, int]
    batches_inserted: int
    batch_rows_sum: int
    last_batch_rows: int
    errors: int
    last_insert_at: datetime | None
    state: str = "ok"
    degraded_for_s: float | None = None
    consumer_paused: bool = False
    pending_rows: int = 0
    max_pending_rows: int = 0

    @classmethod
    def of(cls, stats: object, running: bool) -> LoaderFigures:
        """The figures of a :class:`sinks.loader.LoaderStats`."""
        at = stats.last_insert_at
        state, _reason, degraded_for_s = stats.condition()
        return cls(
            state=state if running else "stopped",
            degraded_for_s=degraded_for_s,
            consumer_paused=stats.consumer_paused,
            pending_rows=stats.pending_rows,
            max_pending_rows=stats.max_pending_rows,
            running=running,
            lag=dict(stats.lag),
            rows_inserted=dict(stats.rows_inserted),
            skipped_invalid=dict(stats.skipped_invalid),
            batches_inserted=stats.batches_inserted,
            batch_rows_sum=stats.batch_rows_sum,
            last_batch_rows=stats.last_batch_rows,
            errors=stats.errors,
            last_insert_at=None if at is None else datetime.fromtimestamp(at, UTC),
        )


def families(loader: LoaderFigures | object) -> Iterator[Metric]:
    """The ``agentwatch_loader_*`` families of one loader's figures (a
    :class:`LoaderFigures`, or anything with its fields, such as the API's
    ``LoaderHealth``)."""
    yield GaugeMetricFamily(
        "agentwatch_loader_running",
        "1 when the loader thread runs in this process.",
        value=1 if loader.running else 0,
    )
    yield _by_topic(
        GaugeMetricFamily(
            "agentwatch_loader_lag_messages",
            "Messages on a topic the loader has not written to ClickHouse yet.",
            labels=["topic"],
        ),
        loader.lag or {},
    )
    yield _by_topic(
        CounterMetricFamily(
            "agentwatch_loader_rows_inserted",
            "Rows the loader wrote, by the topic they came from (metric_rows: into metrics).",
            labels=["topic"],
        ),
        loader.rows_inserted,
    )
    yield _by_topic(
        CounterMetricFamily(
            "agentwatch_loader_skipped_invalid",
            "Messages the loader skipped as invalid, by topic.",
            labels=["topic"],
        ),
        loader.skipped_invalid,
    )
    yield SummaryMetricFamily(
        "agentwatch_loader_batch_rows",
        "Rows per insert batch (count = batches, sum = rows).",
        count_value=loader.batches_inserted,
        sum_value=loader.batch_rows_sum,
    )
    yield GaugeMetricFamily(
        "agentwatch_loader_last_batch_rows",
        "Rows in the loader's latest batch.",
        value=loader.last_batch_rows,
    )
    yield CounterMetricFamily(
        "agentwatch_loader_errors", "Failed loader attempts (retried).", value=loader.errors
    )
    if loader.last_insert_at is not None:
        yield GaugeMetricFamily(
            "agentwatch_loader_last_insert_timestamp_seconds",
            "When the loader last wrote a batch (epoch seconds).",
            value=loader.last_insert_at.timestamp(),
        )
    yield GaugeMetricFamily(
        "agentwatch_loader_degraded",
        "1 while ClickHouse writes fail or an insert is slow (the loader holds back).",
        value=1 if loader.state == "degraded" else 0,
    )
    yield GaugeMetricFamily(
        "agentwatch_loader_degraded_seconds",
        "Seconds the loader has been degraded (0 when it is not).",
        value=loader.degraded_for_s or 0.0,
    )
    yield GaugeMetricFamily(
        "agentwatch_loader_consumer_paused",
        "1 while the loader reads nothing (writes failing or pending rows at their cap).",
        value=1 if loader.consumer_paused else 0,
    )
    yield GaugeMetricFamily(
        "agentwatch_loader_pending_rows",
        "Rows read and not yet written to ClickHouse.",
        value=loader.pending_rows,
    )
    yield GaugeMetricFamily(
        "agentwatch_loader_max_pending_rows",
        "The cap on pending rows (AGENTWATCH_LOADER_MAX_PENDING_ROWS).",
        value=loader.max_pending_rows,
    )


def parse(text: str) -> LoaderFigures:
    """The figures back from the text of :func:`families` (a lone loader's ``/metrics``), for
    the API that reports a loader running in another process. The degraded reason and the
    last error are not in the text: the loader's log has them.

    >>> from prometheus_client import generate_latest
    >>> registry = CollectorRegistry(auto_describe=False)
    >>> figures = LoaderFigures(running=True, lag={"metric_rows": 3}, rows_inserted={"x": 5},
    ...     skipped_invalid={}, batches_inserted=2, batch_rows_sum=5, last_batch_rows=1,
    ...     errors=0, last_insert_at=datetime(2026, 12, 7, tzinfo=UTC))
    >>> registry.register(_LoaderCollector(lambda: figures))
    >>> parse(generate_latest(registry).decode()) == figures
    True
    """
    values: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values.setdefault(sample.name, {})[sample.labels.get("topic", "")] = sample.value

    def one(name: str) -> float:
        return values.get(name, {}).get("", 0.0)

    def by_topic(name: str) -> dict[str, int]:
        return {topic: int(value) for topic, value in values.get(name, {}).items()}

    running = one("agentwatch_loader_running") == 1
    degraded = one("agentwatch_loader_degraded") == 1
    at = values.get("agentwatch_loader_last_insert_timestamp_seconds", {}).get("")
    return LoaderFigures(
        running=running,
        lag=by_topic("agentwatch_loader_lag_messages"),
        rows_inserted=by_topic("agentwatch_loader_rows_inserted_total"),
        skipped_invalid=by_topic("agentwatch_loader_skipped_invalid_total"),
        batches_inserted=int(one("agentwatch_loader_batch_rows_count")),
        batch_rows_sum=int(one("agentwatch_loader_batch_rows_sum")),
        last_batch_rows=int(one("agentwatch_loader_last_batch_rows")),
        errors=int(one("agentwatch_loader_errors_total")),
        last_insert_at=None if at is None else datetime.fromtimestamp(at, UTC),
        state="stopped" if not running else "degraded" if degraded else "ok",
        degraded_for_s=one("agentwatch_loader_degraded_seconds") if degraded else None,
        consumer_paused=one("agentwatch_loader_consumer_paused") == 1,
        pending_rows=int(one("agentwatch_loader_pending_rows")),
        max_pending_rows=int(one("agentwatch_loader_max_pending_rows")),
    )


def _by_topic(family: GaugeMetricFamily | CounterMetricFamily, values: dict[str, int]) -> Metric:
    for topic, value in sorted(values.items()):
        family.add_metric([topic], value)
    return family


class _LoaderCollector(Collector):
    def __init__(
        self, figures: Callable[[], LoaderFigures], readers: Callable[[], list] = list
    ) -> None:
        self._figures = figures
        self._readers = readers

    def collect(self) -> Iterator[Metric]:
        yield from families(self._figures())
        yield from reader_families(self._readers())


def reader_families(readers: list, now: float | None = None) -> Iterator[Metric]:
    """Whether each background reader beside the loader (the audit writer, the webhook
    deliverer: :class:`sinks.background.BackgroundReader`) fails, and for how long.

    >>> from types import SimpleNamespace
    >>> audit = SimpleNamespace(name="audit", failing_since=100.0)
    >>> [(m.name, [s.value for s in m.samples]) for m in reader_families([audit], now=130.0)]
    [('agentwatch_background_failing', [1]), ('agentwatch_background_failing_seconds', [30.0])]
    """
    now = time.time() if now is None else now
    failing = GaugeMetricFamily(
        "agentwatch_background_failing",
        "1 while a background reader's polls fail (audit: the trail is not being written).",
        labels=["reader"],
    )
    seconds = GaugeMetricFamily(
        "agentwatch_background_failing_seconds",
        "How long a background reader's polls have failed (0: they do not).",
        labels=["reader"],
    )
    for reader in readers:
        since = reader.failing_since
        failing.add_metric([reader.name], 1 if since is not None else 0)
        seconds.add_metric([reader.name], 0.0 if since is None else round(now - since, 3))
    yield failing
    yield seconds


def serve(
    figures: Callable[[], LoaderFigures],
    host: str,
    port: int,
    readers: Callable[[], list] = list,
) -> object:
    """Serve ``/metrics`` of ``figures()`` and of ``readers()`` (read at every scrape) on
    ``host:port`` from a daemon thread; the HTTP server (``shutdown()`` stops it)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_LoaderCollector(figures, readers))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    log.info("loader_metrics_serving address=%s:%d path=/metrics", host, port)
    return server
