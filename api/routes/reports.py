"""``GET /api/v1/reports/{kind}``: the fleet's performance, security, or both, for a tenant
and a period, as JSON or CSV (what each holds: :mod:`api.reports`)."""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query
from fastapi.responses import Response

from api import reports
from api.errors import error_responses
from api.identity import tenant_filter
from api.params import TenantFilter, TimeRangeDep
from api.runtime import API_PREFIX, Reader, RuntimeDep

log = logging.getLogger("api.reports")

router = APIRouter(tags=["reports"])

CSV_MEDIA_TYPE = "text/csv"


@router.get(
    f"{API_PREFIX}/reports/{{kind}}",
    response_model=reports.Report,
    responses={
        200: {
            "content": {CSV_MEDIA_TYPE: {"schema": {"type": "string"}}},
            "description": "The report: JSON (`Report`), or one CSV table with a header row.",
        },
        **error_responses(403, 422, 503),
    },
)
def report(
    kind: reports.ReportKind,
    runtime: RuntimeDep,
    caller: Reader,
    span: TimeRangeDep,
    tenant: TenantFilter = None,
    format: Annotated[
        Literal["json", "csv"] | None,
        Query(description="json or csv (default: csv if the Accept header asks for text/csv)."),
    ] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """A report on the fleet of a tenant (your key's; a key of every tenant may name one
    with `tenant`, or none for all) over a period (`since`…`until`; default: the last
    24 hours up to now).

    - **performance**: from the heartbeats, the fleet's and each agent's heartbeats, cpu
      and memory (average, p95), error rate, response time (p50, p95), tasks completed and
      failed, uptime; agents listed worst error rate first, up to `limit`; and the agents
      in each lifecycle state at the end of the period.
    - **security**: threats by rule, category and severity; agents by security-score band;
      quarantines asked, begun and released; alerts fired and resolved; the agents with
      the most threats.
    - **full**: both, with the anomalies and the incidents of the period.

    As CSV, one table with a header row: performance — one row per agent; security — one
    row per rule × category × severity; full — every figure as `section,name,value`.
    """
    settings = runtime.settings
    tenant = tenant_filter(caller, tenant)
    until = span.until or datetime.now(UTC)
    since = span.since or until - timedelta(seconds=settings.report_default_period_s)
    started = time.perf_counter()
    scope = reports.Scope(settings.clickhouse_database, tenant, since, until)
    built = reports.build(
        runtime.clients, scope, kind, span.limit, settings.report_score_bands,
        settings.report_top_agents, settings.report_query_threads, tenant_id=tenant,
        since=since, until=until, generated_at=datetime.now(UTC),
    )  # fmt: skip
    log.info(
        "report kind=%s tenant=%s seconds=%.3f",
        kind, tenant or "*", time.perf_counter() - started,
    )  # fmt: skip
    wants_csv = format == "csv" or (format is None and CSV_MEDIA_TYPE in (accept or ""))
    if wants_csv:
        who = re.sub(r"[^A-Za-z0-9_.-]", "_", tenant or "all")
        name = f"agentwatch-{kind}-{who}-{since:%Y%m%dT%H%M%S}.csv"
        return Response(
            reports.render_csv(built),
            media_type=CSV_MEDIA_TYPE,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return Response(built.model_dump_json(), media_type="application/json")
