"""The four agentwatch dashboards, built with Grafana's foundation SDK: fleet overview,
threats and alerts, agent drill-down, orchestration (docs/grafana.md describes each panel).

Every panel is one SQL query of the ClickHouse plugin (:class:`~infra.grafana.query.
ClickHouseQuery`) on the tables of ``sinks/clickhouse.py``, with the plugin's macros and
the dashboards' variables: ``$tenant`` (several, or All) on every dashboard, ``$agent`` on
the drill-down. Tables with one row per key by version are read with ``FINAL``
(docs/sql.md, "The tables").
"""

from __future__ import annotations

import re
from collections.abc import Callable

from grafana_foundation_sdk.builders import bargauge, stat, table, timeseries
from grafana_foundation_sdk.builders.common import (
    ReduceDataOptions,
    StackingConfig,
    VizLegendOptions,
    VizTooltipOptions,
)
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DashboardLink,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.models.common import (
    BarGaugeDisplayMode,
    BigValueColorMode,
    BigValueGraphMode,
    GraphDrawStyle,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    StackingMode,
    TooltipDisplayMode,
    VizOrientation,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

from infra.grafana.query import DATASOURCE, ClickHouseQuery, Format

#: The tenant condition of every tenant table's query: nothing when "All" is selected.
TENANT = "$__conditionalAll(tenant_id IN (${tenant:singlequote}), $tenant)"
TAGS = ["agentwatch", "generated"]
#: Each agent's lifecycle state now, as a subquery (agent_id, tenant_id, state, since, and
#: the reason of its last status_changed): the newest of the ``agents`` projection (one row
#: per status_changed) and the state its latest assignment score was computed in (every
#: agent has one, also one that never changed state since it registered itself, which the
#: projection does not hold).
STATES = (
    "(SELECT agent_id, any(tenant_id) AS tenant_id, argMax(state, at) AS state, "
    "max(at) AS since, argMaxIf(reason, at, reason != '') AS reason FROM ("
    f"SELECT agent_id, tenant_id, state, since AS at, reason FROM agents FINAL WHERE {TENANT} "
    "UNION ALL SELECT agent_id, tenant_id, state, timestamp AS at, '' AS reason "
    f"FROM assignment_scores_latest FINAL WHERE {TENANT}) GROUP BY agent_id)"
)
#: How often an open dashboard re-runs its queries.
REFRESH = "1m"


def _tenant_variable() -> QueryVariable:
    return (
        QueryVariable("tenant")
        .label("Tenant")
        .description("Tenants whose agents the panels show (dead letters have no tenant).")
        .datasource(DATASOURCE)
        .query("SELECT DISTINCT tenant_id FROM baselines FINAL ORDER BY tenant_id")
        .multi(True)
        .include_all(True)
        .current(VariableOption(selected=True, text="All", value="$__all"))
        .refresh(VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(VariableSort.ALPHABETICAL_ASC)
    )


def _agent_variable() -> QueryVariable:
    return (
        QueryVariable("agent")
        .label("Agent")
        .description("The agent the dashboard is about (agents with a learned baseline).")
        .datasource(DATASOURCE)
        .query(f"SELECT agent_id FROM baselines FINAL WHERE {TENANT} ORDER BY agent_id")
        .refresh(VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(VariableSort.ALPHABETICAL_ASC)
    )


def _links() -> DashboardLink:
    return (
        DashboardLink("agentwatch")
        .type(DashboardLinkType.DASHBOARDS)
        .tags(["agentwatch"])
        .as_dropdown(True)
        .include_vars(True)
        .keep_time(True)
    )


def _dashboard(uid: str, title: str, description: str, *variables: QueryVariable) -> Dashboard:
    board = (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .time("now-6h", "now")
        .timezone("utc")
        .refresh(REFRESH)
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .readonly()
        .link(_links())
        .with_variable(_tenant_variable())
    )
    for variable in variables:
        board = board.with_variable(variable)
    return board


def _query(sql: str, fmt: Format) -> ClickHouseQuery:
    return ClickHouseQuery(sql, fmt)


def _series(
    title: str,
    description: str,
    sql: str,
    unit: str,
    *,
    bars: bool = False,
    stacked: bool = False,
    width: int = 12,
    height: int = 8,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(_query(sql, Format.TIME_SERIES))
        .unit(unit)
        .min(0)
        .span(width)
        .height(height)
        .line_width(1)
        .fill_opacity(80 if bars else 10)
        .draw_style(GraphDrawStyle.BARS if bars else GraphDrawStyle.LINE)
        .legend(
            VizLegendOptions()
            .show_legend(True)
            .display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
        )
        .tooltip(VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING))
    )
    if stacked:
        panel = panel.stacking(StackingConfig().mode(StackingMode.NORMAL))
    return panel


def _stat(
    title: str,
    description: str,
    sql: str,
    unit: str,
    *,
    steps: list[tuple[float | None, str]] | None = None,
    width: int = 4,
    text: bool = False,
) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(_query(sql, Format.TABLE))
        .unit(unit)
        .span(width)
        .height(4)
        .graph_mode(BigValueGraphMode.NONE)
        .color_mode(BigValueColorMode.VALUE)
        .reduce_options(
            # a text value (a state) is shown only when the fields are named: Grafana's
            # stat takes numeric fields alone by default
            ReduceDataOptions().calcs(["lastNotNull"]).values(False).fields("/.*/" if text else "")
        )
        .thresholds(_thresholds(steps or [(None, "green")]))
    )


def _thresholds(steps: list[tuple[float | None, str]]) -> ThresholdsConfig:
    return (
        ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in steps])
    )


def _bars(
    title: str,
    description: str,
    sql: str,
    unit: str = "short",
    *,
    width: int = 8,
    height: int = 8,
    steps: list[tuple[float | None, str]] | None = None,
) -> bargauge.Panel:
    return (
        bargauge.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(_query(sql, Format.TABLE))
        .unit(unit)
        .min(0)
        .span(width)
        .height(height)
        .orientation(VizOrientation.HORIZONTAL)
        .display_mode(BarGaugeDisplayMode.GRADIENT)
        .reduce_options(ReduceDataOptions().values(True).calcs([]))
        .thresholds(_thresholds(steps or [(None, "blue")]))
    )


#: A link on an ``agent_id`` column to that agent's drill-down, keeping the time range.
AGENT_LINK = DynamicConfigValue(
    id_val="links",
    value=[
        {
            "title": "Agent drill-down",
            "url": "/d/agentwatch-agent?var-agent=${__value.raw}&${__url_time_range}",
        }
    ],
)


def _table(
    title: str, description: str, sql: str, *, width: int = 24, height: int = 9
) -> table.Panel:
    """A table; an ``agent_id`` column links to that agent's drill-down."""
    panel = (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(_query(sql, Format.TABLE))
        .span(width)
        .height(height)
        .filterable(True)
    )
    if re.search(r"\bagent_id\b", sql.split(" FROM ")[0]):
        panel = panel.override_by_name("agent_id", [AGENT_LINK])
    return panel


# --- fleet overview -------------------------------------------------------------------------


def fleet_overview() -> Dashboard:
    """Agents by lifecycle state, ingest, freshness, lifecycle changes and dead letters."""
    return (
        _dashboard(
            "agentwatch-fleet",
            "agentwatch / Fleet overview",
            "The fleet at a glance: agents by lifecycle state, heartbeats landing in "
            "ClickHouse, how fresh the data is, lifecycle changes and dead letters.",
        )
        .with_row(Row("Fleet"))
        .with_panel(
            _stat(
                "Agents reporting",
                "Agents with at least one heartbeat in the time range.",
                f"SELECT uniqExact(agent_id) AS agents FROM metrics "
                f"WHERE $__timeFilter(timestamp) AND {TENANT}",
                "short",
            )
        )
        .with_panel(
            _stat(
                "Heartbeats in range",
                "Heartbeats stored in the time range.",
                f"SELECT count() AS heartbeats FROM metrics "
                f"WHERE $__timeFilter(timestamp) AND {TENANT}",
                "short",
            )
        )
        .with_panel(
            _stat(
                "Data freshness",
                "Seconds since the newest stored heartbeat: how far ClickHouse is behind "
                "the fleet end to end (agents → Kafka → loader). Kafka consumer lag in "
                "messages is not in a table: it is agentwatch_loader_lag_messages on the "
                "API's /metrics (Prometheus).",
                f"SELECT dateDiff('second', max(timestamp), now()) AS seconds_behind "
                f"FROM metrics WHERE {TENANT}",
                "s",
                steps=[(None, "green"), (60, "orange"), (300, "red")],
            )
        )
        .with_panel(
            _stat(
                "Dead letters in range",
                "Messages the dataflow refused (not JSON, invalid, or an order on the "
                "wrong channel), kept with the reason and the original bytes. All tenants: "
                "a message that did not parse has no tenant one could trust.",
                "SELECT count() AS dead_letters FROM deadletter FINAL "
                "WHERE $__timeFilter(received_at)",
                "short",
                steps=[(None, "green"), (1, "orange"), (100, "red")],
            )
        )
        .with_panel(
            _stat(
                "Agents not active",
                "Agents whose lifecycle state is anything but active (degraded, "
                "quarantined, offline …).",
                f"SELECT countIf(state != 'active') AS agents FROM {STATES}",
                "short",
                steps=[(None, "green"), (1, "orange")],
            )
        )
        .with_panel(
            _stat(
                "Anomalous heartbeats in range",
                "Heartbeats the detector called anomalous in the time range.",
                f"SELECT countIf(is_anomaly) AS anomalies FROM anomalies "
                f"WHERE $__timeFilter(timestamp) AND {TENANT}",
                "short",
                steps=[(None, "green"), (1, "orange")],
            )
        )
        .with_row(Row("Lifecycle"))
        .with_panel(
            _bars(
                "Agents by lifecycle state",
                "Agents in each lifecycle state now (the newest of each agent's last "
                "status_changed and the state its latest assignment score saw).",
                f"SELECT state, count() AS agents FROM {STATES} GROUP BY state "
                f"ORDER BY agents DESC",
            )
        )
        .with_panel(
            _series(
                "Lifecycle changes by new state",
                "status_changed events per interval, by the state entered.",
                f"SELECT $__timeInterval(timestamp) AS time, "
                f"JSONExtractString(payload, 'to') AS state, count() AS changes "
                f"FROM agent_events FINAL WHERE type = 'status_changed' "
                f"AND $__timeFilter(timestamp) AND {TENANT} "
                f"GROUP BY time, state ORDER BY time",
                "short",
                bars=True,
                stacked=True,
                width=16,
            )
        )
        .with_row(Row("Ingest"))
        .with_panel(
            _series(
                "Ingest rate by tenant",
                "Heartbeats stored per second, per tenant (a gap means nothing landed).",
                f"SELECT $__timeInterval(timestamp) AS time, tenant_id, "
                f"count() / $__interval_s AS heartbeats_per_s FROM metrics "
                f"WHERE $__timeFilter(timestamp) AND {TENANT} "
                f"GROUP BY time, tenant_id ORDER BY time",
                "suffix: /s",
                stacked=True,
            )
        )
        .with_panel(
            _series(
                "Dead letters by source topic",
                "Refused messages per interval, by the topic they were read from.",
                "SELECT $__timeInterval(received_at) AS time, topic, count() AS dead_letters "
                "FROM deadletter FINAL WHERE $__timeFilter(received_at) "
                "GROUP BY time, topic ORDER BY time",
                "short",
                bars=True,
                stacked=True,
            )
        )
        .with_panel(
            _table(
                "Dead letters by reason",
                "Why messages were refused, most frequent first (the original bytes are "
                "in deadletter.value_b64).",
                "SELECT topic, reason, count() AS messages, max(received_at) AS last "
                "FROM deadletter FINAL WHERE $__timeFilter(received_at) "
                "GROUP BY topic, reason ORDER BY messages DESC LIMIT 50",
                width=12,
            )
        )
        .with_panel(
            _table(
                "Agents not active, one by one",
                "Each agent whose state is not active, since when, and why (the reason of "
                "its last status_changed, when that is the newest word on it).",
                f"SELECT agent_id, tenant_id, state, since, reason FROM {STATES} "
                f"WHERE state != 'active' ORDER BY since DESC LIMIT 100",
                width=12,
            )
        )
    )


# --- threats and alerts ---------------------------------------------------------------------

_SEVERITY_STEPS = [(None, "orange"), (5, "red")]


def threats_and_alerts() -> Dashboard:
    """Threats by severity, category and tenant, over time; alerts firing and their
    durations."""
    return (
        _dashboard(
            "agentwatch-threats",
            "agentwatch / Threats and alerts",
            "What the threat rules found (threats) and what was raised to people (alerts): "
            "by severity, category and tenant, over time, and the latest of each.",
        )
        .with_row(Row("Now"))
        .with_panel(
            _stat(
                "Alerts firing",
                "Alerts whose latest revision is firing.",
                f"SELECT countIf(state = 'firing') AS firing FROM ("
                f"SELECT fingerprint, argMax(state, updated_at) AS state FROM alerts FINAL "
                f"WHERE {TENANT} GROUP BY fingerprint)",
                "short",
                steps=[(None, "green"), (1, "red")],
                width=6,
            )
        )
        .with_panel(
            _stat(
                "Threats in range",
                "Threat episodes that started in the time range.",
                f"SELECT count() AS threats FROM threats FINAL "
                f"WHERE $__timeFilter(first_seen) AND {TENANT}",
                "short",
                steps=[(None, "green"), (1, "orange")],
                width=6,
            )
        )
        .with_panel(
            _stat(
                "Agents with threats",
                "Distinct agents with a threat that started in the time range.",
                f"SELECT uniqExact(agent_id) AS agents FROM threats FINAL "
                f"WHERE $__timeFilter(first_seen) AND {TENANT}",
                "short",
                steps=[(None, "green"), (1, "orange")],
                width=6,
            )
        )
        .with_panel(
            _stat(
                "Critical threats in range",
                "Threats of severity CRITICAL or EMERGENCY that started in the time range.",
                f"SELECT countIf(severity IN ('CRITICAL', 'EMERGENCY')) AS critical "
                f"FROM threats FINAL "
                f"WHERE $__timeFilter(first_seen) AND {TENANT}",
                "short",
                steps=[(None, "green"), (1, "red")],
                width=6,
            )
        )
        .with_row(Row("Breakdown"))
        .with_panel(
            _bars(
                "Threats by severity",
                "Threat episodes that started in the time range, by severity.",
                f"SELECT severity, count() AS threats FROM threats FINAL "
                f"WHERE $__timeFilter(first_seen) AND {TENANT} "
                f"GROUP BY severity ORDER BY threats DESC",
                steps=_SEVERITY_STEPS,
            )
        )
        .with_panel(
            _bars(
                "Threats by category",
                "Threat episodes that started in the time range, by the rule's category.",
                f"SELECT category, count() AS threats FROM threats FINAL "
                f"WHERE $__timeFilter(first_seen) AND {TENANT} "
                f"GROUP BY category ORDER BY threats DESC",
                steps=_SEVERITY_STEPS,
            )
        )
        .with_panel(
            _bars(
                "Threats by tenant",
                "Threat episodes that started in the time range, by tenant.",
                f"SELECT tenant_id, count() AS threats FROM threats FINAL "
                f"WHERE $__timeFilter(first_seen) AND {TENANT} "
                f"GROUP BY tenant_id ORDER BY threats DESC",
                steps=_SEVERITY_STEPS,
            )
        )
        .with_row(Row("Over time"))
        .with_panel(
            _series(
                "Threats by severity over time",
                "Threat episodes started per interval, stacked by severity.",
                f"SELECT $__timeInterval(first_seen) AS time, severity, count() AS threats "
                f"FROM threats FINAL WHERE $__timeFilter(first_seen) AND {TENANT} "
                f"GROUP BY time, severity ORDER BY time",
                "short",
                bars=True,
                stacked=True,
            )
        )
        .with_panel(
            _series(
                "Alert changes over time",
                "Alert revisions per interval by the state they entered (pending, firing, "
                "resolved).",
                f"SELECT $__timeInterval(updated_at) AS time, state, count() AS alerts "
                f"FROM alerts FINAL WHERE $__timeFilter(updated_at) AND {TENANT} "
                f"GROUP BY time, state ORDER BY time",
                "short",
                bars=True,
                stacked=True,
            )
        )
        .with_row(Row("Latest"))
        .with_panel(
            _table(
                "Latest threats",
                "The newest threat episodes, with the condition that fired.",
                f"SELECT first_seen, last_seen, agent_id, tenant_id, rule, category, "
                f"severity, condition FROM threats FINAL "
                f"WHERE $__timeFilter(first_seen) AND {TENANT} "
                f"ORDER BY first_seen DESC LIMIT 100",
            )
        )
        .with_panel(
            _table(
                "Alerts and how long they lasted",
                "Each alert of the time range: its latest state and how long it lasted from "
                "start to resolution (or to its last sighting if unresolved).",
                f"SELECT fingerprint, any(agent_id) AS agent_id, any(rule) AS rule, "
                f"any(severity) AS severity, argMax(state, updated_at) AS state, "
                f"min(started_at) AS started, "
                f"dateDiff('second', min(started_at), max(coalesce(resolved_at, last_seen))) "
                f"AS duration_s FROM alerts FINAL "
                f"WHERE $__timeFilter(updated_at) AND {TENANT} "
                f"GROUP BY fingerprint ORDER BY started DESC LIMIT 100",
            ).override_by_name("duration_s", [DynamicConfigValue(id_val="unit", value="s")])
        )
    )


# --- agent drill-down -----------------------------------------------------------------------

#: (column of metrics and key of the baseline's maps, title, unit) of the baseline panels.
BASELINE_METRICS = (
    ("cpu_usage", "CPU", "percent"),
    ("memory_usage", "Memory", "percent"),
    ("error_rate", "Error rate", "percentunit"),
    ("response_time_avg", "Response time", "ms"),
)
_AGENT = "agent_id = '${agent}'"


def _against_baseline(metric: str, title: str, unit: str) -> timeseries.Panel:
    sql = (
        f"SELECT $__timeInterval(m.timestamp) AS time, avg(m.{metric}) AS {metric}, "
        f"any(b.mean['{metric}']) AS baseline, "
        f"greatest(any(b.mean['{metric}']) - 2 * any(b.std['{metric}']), 0) AS band_low, "
        f"any(b.mean['{metric}']) + 2 * any(b.std['{metric}']) AS band_high "
        f"FROM metrics AS m CROSS JOIN (SELECT mean, std FROM baselines FINAL "
        f"WHERE {_AGENT}) AS b WHERE m.{_AGENT} AND $__timeFilter(m.timestamp) "
        f"GROUP BY time ORDER BY time"
    )
    dashed = {"fill": "dash", "dash": [4, 4]}
    return (
        _series(
            f"{title} against its baseline",
            f"The agent's {metric} (mean per interval) against the baseline it learned: "
            f"the mean, and the band mean ± 2 standard deviations (shaded). Out of the "
            f"band for long is what the detector flags.",
            sql,
            unit,
        )
        .override_by_name(
            "band_high",
            [
                DynamicConfigValue(id_val="custom.fillBelowTo", value="band_low"),
                DynamicConfigValue(id_val="custom.lineWidth", value=0),
                DynamicConfigValue(id_val="custom.fillOpacity", value=15),
                DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "green"}),
            ],
        )
        .override_by_name(
            "band_low",
            [
                DynamicConfigValue(id_val="custom.lineWidth", value=0),
                DynamicConfigValue(id_val="custom.fillOpacity", value=0),
                DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "green"}),
            ],
        )
        .override_by_name(
            "baseline",
            [
                DynamicConfigValue(id_val="custom.lineStyle", value=dashed),
                DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "green"}),
            ],
        )
    )


def agent_drilldown() -> Dashboard:
    """One agent: its metrics against the baseline band, anomaly scores with reasons, its
    security score, threats and lifecycle events."""
    board = (
        _dashboard(
            "agentwatch-agent",
            "agentwatch / Agent drill-down",
            "One agent ($agent): its metrics against the baseline band it learned, the "
            "detector's scores and reasons, its security score, threats and lifecycle.",
            _agent_variable(),
        )
        .with_row(Row("State"))
        .with_panel(
            _stat(
                "Lifecycle state",
                "The agent's lifecycle state now (as on the fleet overview).",
                f"SELECT state FROM {STATES} WHERE {_AGENT}",
                "none",
                width=6,
                text=True,
            )
        )
        .with_panel(
            _stat(
                "Security score",
                "The agent's security score now, 0–100 (100 until a finding lowers it).",
                f"SELECT if(count() = 0, 100, argMax(score, timestamp)) AS score "
                f"FROM security_scores FINAL WHERE {_AGENT}",
                "none",
                steps=[(None, "red"), (50, "orange"), (80, "green")],
                width=6,
            )
        )
        .with_panel(
            _stat(
                "Anomalous heartbeats in range",
                "Heartbeats of this agent the detector called anomalous in the time range.",
                f"SELECT countIf(is_anomaly) AS anomalies FROM anomalies "
                f"WHERE {_AGENT} AND $__timeFilter(timestamp)",
                "short",
                steps=[(None, "green"), (1, "orange")],
                width=6,
            )
        )
        .with_panel(
            _stat(
                "Threats in range",
                "Threat episodes of this agent that started in the time range.",
                f"SELECT count() AS threats FROM threats FINAL "
                f"WHERE {_AGENT} AND $__timeFilter(first_seen)",
                "short",
                steps=[(None, "green"), (1, "red")],
                width=6,
            )
        )
        .with_row(Row("Against the baseline"))
    )
    for metric, title, unit in BASELINE_METRICS:
        board = board.with_panel(_against_baseline(metric, title, unit))
    return (
        board.with_row(Row("Detector and security"))
        .with_panel(
            _series(
                "Anomaly score and threshold",
                "The detector's highest score per interval and the threshold above which a "
                "heartbeat is anomalous.",
                f"SELECT $__timeInterval(timestamp) AS time, max(score) AS score, "
                f"max(threshold) AS threshold FROM anomalies "
                f"WHERE {_AGENT} AND $__timeFilter(timestamp) GROUP BY time ORDER BY time",
                "none",
            ).override_by_name(
                "threshold",
                [DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "red"})],
            )
        )
        .with_panel(
            _series(
                "Security score",
                "Each change of the agent's security score (0–100) and its cause.",
                f"SELECT timestamp AS time, score FROM security_scores FINAL "
                f"WHERE {_AGENT} AND $__timeFilter(timestamp) ORDER BY time",
                "none",
            ).max(100)
        )
        .with_panel(
            _table(
                "Anomalies and their reasons",
                "Heartbeats the detector called anomalous: the score, the metric that drove "
                "it, and every feature's value against the baseline (z = standard "
                "deviations away).",
                f"SELECT timestamp, round(score, 3) AS score, round(threshold, 3) AS "
                f"threshold, top_feature, arrayStringConcat(arrayMap(r -> concat("
                f"JSONExtractString(r, 'feature'), ' = ', "
                f"toString(round(JSONExtractFloat(r, 'value'), 2)), ' (baseline ', "
                f"toString(round(JSONExtractFloat(r, 'baseline_mean'), 2)), ', z ', "
                f"toString(round(JSONExtractFloat(r, 'z'), 1)), ')'), "
                f"JSONExtractArrayRaw(reasons)), '; ') AS reasons FROM anomalies "
                f"WHERE {_AGENT} AND is_anomaly AND $__timeFilter(timestamp) "
                f"ORDER BY timestamp DESC LIMIT 100",
            )
        )
        .with_row(Row("Threats and lifecycle"))
        .with_panel(
            _table(
                "Threats",
                "The agent's threat episodes in the time range, with the condition.",
                f"SELECT first_seen, last_seen, rule, category, severity, condition "
                f"FROM threats FINAL WHERE {_AGENT} AND $__timeFilter(first_seen) "
                f"ORDER BY first_seen DESC LIMIT 100",
                width=12,
            )
        )
        .with_panel(
            _table(
                "Lifecycle events",
                "Everything that happened to the agent: state changes (channel state), "
                "operators' orders (control) and its own reports (events).",
                f"SELECT timestamp, type, channel, actor, payload FROM agent_events FINAL "
                f"WHERE {_AGENT} AND $__timeFilter(timestamp) "
                f"AND type != 'model_stats' ORDER BY timestamp DESC LIMIT 200",
                width=12,
            )
        )
    )


# --- orchestration --------------------------------------------------------------------------


def orchestration() -> Dashboard:
    """Assignment scores, task outcomes, and demand against capacity with its trend."""
    return (
        _dashboard(
            "agentwatch-orchestration",
            "agentwatch / Orchestration",
            "How tasks are placed and how they end: each agent's assignment score and its "
            "components, task outcomes by type, and demand against capacity.",
        )
        .with_row(Row("Tasks"))
        .with_panel(
            _stat(
                "Tasks assigned in range",
                "Tasks assigned in the time range (each task's latest status).",
                f"SELECT count() AS tasks FROM tasks FINAL "
                f"WHERE $__timeFilter(assigned_at) AND {TENANT}",
                "short",
                width=6,
            )
        )
        .with_panel(
            _stat(
                "Success rate",
                "Completed among the finished tasks (completed + failed) of the range.",
                f"SELECT countIf(status = 'completed') / greatest(countIf(status IN "
                f"('completed', 'failed')), 1) AS success FROM tasks FINAL "
                f"WHERE $__timeFilter(assigned_at) AND {TENANT}",
                "percentunit",
                steps=[(None, "red"), (0.8, "orange"), (0.95, "green")],
                width=6,
            )
        )
        .with_panel(
            _stat(
                "Refused",
                "Assignments the agent's shard refused (at capacity, not running …).",
                f"SELECT countIf(status = 'refused') AS refused FROM tasks FINAL "
                f"WHERE $__timeFilter(assigned_at) AND {TENANT}",
                "short",
                steps=[(None, "green"), (1, "orange")],
                width=6,
            )
        )
        .with_panel(
            _stat(
                "Slots in use",
                "Open tasks over slots, summed over the agents' latest assignment scores.",
                f"SELECT sum(active_tasks) / greatest(sum(capacity), 1) AS used "
                f"FROM assignment_scores_latest FINAL WHERE {TENANT}",
                "percentunit",
                steps=[(None, "green"), (0.8, "orange"), (0.95, "red")],
                width=6,
            )
        )
        .with_panel(
            _series(
                "Task outcomes over time",
                "Tasks by the interval they were assigned in, stacked by their latest status.",
                f"SELECT $__timeInterval(assigned_at) AS time, status, count() AS tasks "
                f"FROM tasks FINAL WHERE $__timeFilter(assigned_at) AND {TENANT} "
                f"GROUP BY time, status ORDER BY time",
                "short",
                bars=True,
                stacked=True,
            )
        )
        .with_panel(
            _table(
                "Outcomes by task type",
                "Per task type: how tasks ended, the success rate, the 95th percentile "
                "duration and how often the SLA was met.",
                f"SELECT task_type, count() AS tasks, countIf(status = 'completed') AS "
                f"completed, countIf(status = 'failed') AS failed, countIf(status = "
                f"'refused') AS refused, round(completed / greatest(completed + failed, 1), "
                f"3) AS success_rate, round(quantileIf(0.95)(duration_s, duration_s IS NOT "
                f"NULL), 1) AS p95_duration_s, round(avgIf(sla_met, sla_met IS NOT NULL), 3) "
                f"AS sla_met_rate FROM tasks FINAL "
                f"WHERE $__timeFilter(assigned_at) AND {TENANT} "
                f"GROUP BY task_type ORDER BY tasks DESC",
                width=12,
            )
            .override_by_name(
                "success_rate", [DynamicConfigValue(id_val="unit", value="percentunit")]
            )
            .override_by_name(
                "sla_met_rate", [DynamicConfigValue(id_val="unit", value="percentunit")]
            )
            .override_by_name("p95_duration_s", [DynamicConfigValue(id_val="unit", value="s")])
        )
        .with_row(Row("Assignment scores"))
        .with_panel(
            _bars(
                "Best agents to assign to now",
                "Each agent's latest assignment score (0–1: performance, cost, availability "
                "and SLA, weighted); the best twenty.",
                f"SELECT agent_id, score FROM assignment_scores_latest FINAL "
                f"WHERE {TENANT} ORDER BY score DESC LIMIT 20",
                "percentunit",
                steps=[(None, "red"), (0.5, "orange"), (0.7, "green")],
            ).max(1)
        )
        .with_panel(
            _series(
                "Assignment scores over time",
                "The fleet's assignment scores per interval: lowest, mean and highest.",
                f"SELECT $__timeInterval(timestamp) AS time, min(score) AS lowest, "
                f"avg(score) AS mean, max(score) AS highest FROM assignment_scores "
                f"WHERE $__timeFilter(timestamp) AND {TENANT} GROUP BY time ORDER BY time",
                "percentunit",
                width=16,
            ).max(1)
        )
        .with_panel(
            _table(
                "Score components by agent",
                "Each agent's latest score and what it is made of, with its load and record.",
                f"SELECT agent_id, tenant_id, state, round(score, 3) AS score, "
                f"round(performance, 3) AS performance, round(cost, 3) AS cost, "
                f"round(availability, 3) AS availability, round(sla, 3) AS sla, "
                f"active_tasks, capacity, round(success_rate, 3) AS success_rate, "
                f"tasks_completed, tasks_failed, timestamp AS updated "
                f"FROM assignment_scores_latest FINAL WHERE {TENANT} "
                f"ORDER BY score DESC LIMIT 200",
            )
        )
        .with_row(Row("Capacity"))
        .with_panel(
            _series(
                "Demand against capacity",
                "Demand: per hour, the sum over agents of each one's highest active_tasks "
                "(the input of GET /api/v1/capacity/forecast); capacity: the slots of the "
                "agents now; trend: a least-squares line through the range's demand. The "
                "forecast itself (weekly season, prediction intervals, days ahead) is the "
                "API's: it needs days of history and is not a SQL aggregate.",
                f"WITH hourly AS (SELECT hour, sum(peak) AS demand FROM ("
                f"SELECT agent_id, toStartOfHour(timestamp) AS hour, max(active_tasks) AS peak "
                f"FROM metrics WHERE $__timeFilter(timestamp) AND {TENANT} "
                f"GROUP BY agent_id, hour) GROUP BY hour), "
                f"(SELECT simpleLinearRegression(toUnixTimestamp(hour), demand) FROM hourly) "
                f"AS fit, (SELECT sum(capacity) FROM assignment_scores_latest FINAL "
                f"WHERE {TENANT}) AS slots "
                f"SELECT hour AS time, demand, "
                f"greatest(fit.1 * toUnixTimestamp(hour) + fit.2, 0) AS trend, "
                f"slots AS capacity FROM hourly ORDER BY time",
                "short",
                width=16,
            ).override_by_name(
                "capacity",
                [DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "red"})],
            )
        )
        .with_panel(
            _stat(
                "Hours until demand meets capacity",
                "At the range's demand trend (least squares per hour), hours until the "
                "trend reaches the agents' slots: 0 when it already has, 'not at this "
                "trend' when demand is below capacity and flat or falling.",
                f"WITH hourly AS (SELECT hour, sum(peak) AS demand FROM ("
                f"SELECT agent_id, toStartOfHour(timestamp) AS hour, max(active_tasks) AS peak "
                f"FROM metrics WHERE $__timeFilter(timestamp) AND {TENANT} "
                f"GROUP BY agent_id, hour) GROUP BY hour), "
                f"(SELECT simpleLinearRegression(toUnixTimestamp(hour), demand) FROM hourly) "
                f"AS fit, (SELECT sum(capacity) FROM assignment_scores_latest FINAL "
                f"WHERE {TENANT}) AS slots "
                f"SELECT multiIf(fit.1 * toUnixTimestamp(now()) + fit.2 >= slots, 0, "
                f"fit.1 > 0, ((slots - fit.2) / fit.1 - toUnixTimestamp(now())) / 3600, "
                f"NULL) AS hours_left",
                "h",
                steps=[(None, "red"), (24, "orange"), (168, "green")],
                width=8,
            ).no_value("not at this trend")
        )
    )


#: Each dashboard's file name (in infra/grafana/dashboards/) and its builder.
DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    "fleet-overview.json": fleet_overview,
    "threats-and-alerts.json": threats_and_alerts,
    "agent-drilldown.json": agent_drilldown,
    "orchestration.json": orchestration,
}
