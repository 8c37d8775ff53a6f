"""The health of the whole pipeline, as the API process sees it.

One :class:`SystemMonitor` per app gathers the broker probe, the loader's
counters (of the loader in this process, or read from the ``/metrics`` of one
in a process of its own: ``AGENTWATCH_API_LOADER_METRICS_URL``), a ClickHouse
ping and (cached) table counts into a :class:`~api.responses.SystemHealth`.
Both ``/api/v1/system/health`` and the Prometheus ``/metrics`` page are
rendered from that one report, so the two never disagree.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict
from datetime import UTC, datetime

import httpx
from clickhouse_connect.driver.client import Client

from agentwatch.secrets import redact
from agentwatch.settings import Settings
from api import queries
from api.broker_probe import BrokerProbe, BrokerProbeResult
from api.client_pool import ClientPool
from api.responses import (
    BrokerHealth,
    ClickHouseHealth,
    DataflowHealth,
    LoaderHealth,
    SystemHealth,
    TableCounts,
    TenantHealth,
)
from sinks.loader import LoaderLanes
from sinks.loader_metrics import parse as parse_loader_metrics

#: The loader's topic whose rows are the heartbeats (into table ``metrics``): the ingest rate.
METRICS_TOPIC = "metric_rows"

#: How long a health report waits for a loader process's ``/metrics``.
LOADER_SCRAPE_TIMEOUT_S = 1.0

log = logging.getLogger(__name__)


class IngestRate:
    """Rows per second into a table, from a cumulative row count sampled now and then.

    The rate is averaged over about ``window_s`` seconds: the reference point is
    the oldest sample still inside the window (samples are kept at most one per
    ``min_spacing_s``, so memory stays small however often it is asked).

    >>> rate = IngestRate(window_s=60.0)
    >>> rate.update(0, now=100.0)
    0.0
    >>> rate.update(5_000, now=110.0)
    500.0
    >>> rate.update(5_000, now=300.0)  # nothing new for longer than the window
    0.0
    """

    def __init__(self, window_s: float = 60.0, min_spacing_s: float = 1.0) -> None:
        self.window_s = window_s
        self.min_spacing_s = min_spacing_s
        self._samples: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def update(self, total: int, now: float | None = None) -> float:
        """Record the cumulative ``total`` seen at ``now`` and return the recent rate."""
        now = time.monotonic() if now is None else now
        with self._lock:
            samples = self._samples
            if samples and total < samples[-1][1]:
                samples.clear()  # the counter restarted
            if not samples or now - samples[-1][0] >= self.min_spacing_s:
                samples.append((now, total))
            while len(samples) > 1 and now - samples[0][0] > self.window_s:
                samples.popleft()
            start_time, start_total = samples[0]
            if now <= start_time:
                return 0.0
            return (total - start_total) / (now - start_time)


class SystemMonitor:
    """Builds :class:`SystemHealth` reports (thread-safe; cheap to call often)."""

    def __init__(
        self,
        settings: Settings,
        clients: ClientPool,
        loader: LoaderLanes | None,
        loader_expected: bool,
    ) -> None:
        self.settings = settings
        self.clients = clients
        self.loader = loader
        self.loader_expected = loader_expected
        self.broker_probe = BrokerProbe(settings)
        self.started_monotonic = time.monotonic()
        self.ingest_rate = IngestRate()
        self.ingest_rate.update(self._metrics_rows_inserted())
        self._counts: TableCounts | None = None
        self._counts_monotonic = 0.0
        self._counts_lock = threading.Lock()
        # One client for the loader's /metrics, its connection kept: a client made per
        # report cost ~25 ms (its TLS context, a new connection) of every health answer.
        self._scraper = httpx.Client(timeout=LOADER_SCRAPE_TIMEOUT_S)

    def uptime_s(self) -> float:
        """Seconds since the API started."""
        return time.monotonic() - self.started_monotonic

    def health(self) -> SystemHealth:
        """A fresh report (broker answer and table counts may be a few seconds old)."""
        broker = self.broker_probe.result()
        broker_health = _broker_health(self.settings, broker)
        clickhouse = self._clickhouse()
        loader = self._loader()
        problems = [full for _, full in self._problems(broker_health, clickhouse, loader)]
        return SystemHealth(
            status="degraded" if problems else "ok",
            problems=problems,
            uptime_s=round(self.uptime_s(), 3),
            broker=broker_health,
            dataflow=DataflowHealth(
                group_id=self.settings.dataflow_group_id,
                topic=self.settings.topic("metrics"),
                lag=broker.dataflow_lag,
                lag_state="unknown" if broker.dataflow_lag is None else "ok",
                detail=broker.dataflow_detail,
                lag_unknown_reason=broker.dataflow_lag_reason,
            ),
            loader=loader,
            clickhouse=clickhouse,
        )

    def tenant_health(self) -> TenantHealth:
        """What a key of one tenant is told of :meth:`health`: which parts work, no
        fleet-wide figure and no error's text."""
        report = self.health()
        problems = self._problems(report.broker, report.clickhouse, report.loader)
        return TenantHealth(
            status=report.status,
            problems=[short for short, _ in problems],
            uptime_s=report.uptime_s,
            broker_reachable=report.broker.reachable,
            clickhouse_reachable=report.clickhouse.reachable,
            loader_state=report.loader.state,
        )

    def _problems(
        self, broker: BrokerHealth, clickhouse: ClickHouseHealth, loader: LoaderHealth
    ) -> list[tuple[str, str]]:
        """What makes the pipeline degraded: (the part and what is wrong, in words any
        tenant may read; the whole sentence, with the error, for a key of every tenant)."""
        problems = []
        if not broker.reachable:
            problems.append(("broker: unreachable", f"broker: {broker.error}"))
        if not clickhouse.reachable:
            problems.append(("clickhouse: unreachable", f"clickhouse: {clickhouse.error}"))
        if self.loader_expected and not loader.running:
            not_running = "loader: not running, nothing reaches ClickHouse"
            problems.append((not_running, not_running))
        if loader.state == "degraded":
            problems.append((
                "loader: degraded (writes to ClickHouse failing or slow)",
                f"loader: {loader.degraded_reason}",
            ))  # fmt: skip
        return problems

    def close(self) -> None:
        """Release the broker clients and the loader's scraper."""
        self.broker_probe.close()
        self._scraper.close()

    def _clickhouse(self) -> ClickHouseHealth:
        database = self.settings.clickhouse_database
        with self.clients.client() as client:
            try:
                ping_ms = queries.ping(client)
            except Exception as exc:  # any failure means "not reachable"; say which
                return ClickHouseHealth(
                    reachable=False,
                    database=database,
                    ping_ms=None,
                    error=_one_line(exc, self.settings.secret_values()),
                    counts=self._counts,
                )
            error = None
            try:
                counts = self._table_counts(client)
            except Exception as exc:
                error = f"counting rows failed: {_one_line(exc, self.settings.secret_values())}"
                counts = self._counts
        return ClickHouseHealth(
            reachable=True,
            database=database,
            ping_ms=round(ping_ms, 3),
            error=error,
            counts=counts,
        )

    def _table_counts(self, client: Client) -> TableCounts:
        with self._counts_lock:
            age = time.monotonic() - self._counts_monotonic
            if self._counts is None or age >= self.settings.api_counts_cache_s:
                self._counts = queries.table_counts(client, self.settings.clickhouse_database)
                self._counts_monotonic = time.monotonic()
            return self._counts

    def _loader(self) -> LoaderHealth:
        if self.loader is None and self.settings.api_loader_metrics_url:
            return self._loader_elsewhere(self.settings.api_loader_metrics_url)
        if self.loader is None:
            return _no_loader()
        stats = self.loader.stats()
        lag = dict(stats.lag)
        state, reason, degraded_for_s = stats.condition()
        secrets = self.settings.secret_values()
        return LoaderHealth(
            state=state,
            degraded_reason=None if reason is None else redact(reason, secrets),
            degraded_for_s=degraded_for_s,
            last_error=None if stats.last_error is None else redact(stats.last_error, secrets),
            consumer_paused=stats.consumer_paused,
            pending_rows=stats.pending_rows,
            max_pending_rows=stats.max_pending_rows,
            running=True,  # started with the app, stopped only when the app stops
            lag=lag,
            lag_total=sum(lag.values()),
            rows_inserted=dict(stats.rows_inserted),
            batches_inserted=stats.batches_inserted,
            last_batch_rows=stats.last_batch_rows,
            batch_rows_sum=stats.batch_rows_sum,
            skipped_invalid=dict(stats.skipped_invalid),
            errors=stats.errors,
            last_insert_at=(
                datetime.fromtimestamp(stats.last_insert_at, UTC) if stats.last_insert_at else None
            ),
            ingest_rows_per_s=round(
                self.ingest_rate.update(stats.rows_inserted.get(METRICS_TOPIC, 0)), 3
            ),
        )

    def _loader_elsewhere(self, url: str) -> LoaderHealth:
        """The figures of a loader in a process of its own, from its ``/metrics``."""
        try:
            answer = self._scraper.get(url)
            answer.raise_for_status()
            figures = parse_loader_metrics(answer.text)
        except (httpx.HTTPError, ValueError) as exc:
            error = _one_line(f"no figures from {url}: {exc}", self.settings.secret_values())
            return _no_loader(last_error=error)
        degraded = figures.state == "degraded"
        return LoaderHealth(
            **asdict(figures),
            lag_total=sum(figures.lag.values()) if figures.lag is not None else None,
            degraded_reason="writes to ClickHouse fail or are slow: see the loader's log"
            if degraded
            else None,
            ingest_rows_per_s=round(
                self.ingest_rate.update(figures.rows_inserted.get(METRICS_TOPIC, 0)), 3
            ),
        )

    def _metrics_rows_inserted(self) -> int:
        if self.loader is None:
            return 0
        return self.loader.stats().rows_inserted.get(METRICS_TOPIC, 0)


def _no_loader(last_error: str | None = None) -> LoaderHealth:
    """The report when no loader runs here (or the one elsewhere does not answer)."""
    return LoaderHealth(
        running=False,
        lag=None,
        lag_total=None,
        rows_inserted={},
        batches_inserted=0,
        last_batch_rows=0,
        batch_rows_sum=0,
        skipped_invalid={},
        errors=0,
        last_insert_at=None,
        ingest_rows_per_s=0.0,
        last_error=last_error,
    )


def _broker_health(settings: Settings, probe: BrokerProbeResult) -> BrokerHealth:
    return BrokerHealth(
        reachable=probe.reachable,
        bootstrap_servers=settings.bootstrap_servers,
        cluster_id=probe.cluster_id,
        error=probe.error,
        checked_at=datetime.fromtimestamp(probe.checked_at, UTC),
    )


def _one_line(exc: BaseException | str, secrets: Iterable[str]) -> str:
    """An error on one line of at most 300 characters, its secrets masked first (masked
    after the cut, a secret across the 300th character would show its beginning).

    >>> error = ValueError("x" * 290 + " pw=hunter22hunter22")
    >>> _one_line(error, ["hunter22hunter22"])[-8:], _one_line(error, [])[-8:]
    ('x pw=***', 'w=hun...')
    """
    text = redact(" ".join(str(exc).split()) or type(exc).__name__, secrets)
    return text if len(text) <= 300 else text[:297] + "..."
