"""``POST /api/v1/sql``: one read-only query through the sandbox (:mod:`api.sql`)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from api import sql
from api.errors import error_responses
from api.runtime import API_PREFIX, RuntimeDep, SqlAnalyst

log = logging.getLogger("api.app")

router = APIRouter()


@router.post(
    f"{API_PREFIX}/sql",
    response_model=sql.SqlAnswer,
    responses={
        200: {"content": {"text/csv": {}, "text/tab-separated-values": {}}},
        **error_responses(400, 403, 422, 429, 503, 504),
    },
    tags=["sql"],
)
def run_sql(request: sql.SqlRequest, runtime: RuntimeDep, caller: SqlAnalyst) -> Response:
    """Run one read-only query on the ClickHouse data; answer in json, csv or tsv.

    Off unless ``AGENTWATCH_API_SQL_ENABLED``; once the API has authentication, for
    the analyst role only. Allowed: one SELECT (WITH, JOIN, subqueries, UNION) on the
    project's tables with allowlisted functions, SHOW TABLES, DESCRIBE <table>; no
    table functions, ``system.*``, other databases, SETTINGS, FORMAT or INTO OUTFILE
    (docs/sql.md). A refusal is a 403 that says what and why; a query that cannot be
    parsed, or that hits a limit (memory, threads, rows and bytes read, result size,
    time: ``AGENTWATCH_API_SQL_MAX_*``), a 400 that names it; 429 when
    ``AGENTWATCH_API_SQL_MAX_CONCURRENT_QUERIES`` queries run already.
    """
    if runtime.sql_sandbox is None:
        raise HTTPException(
            403,
            detail="SQL through the API is switched off (AGENTWATCH_API_SQL_ENABLED=false); "
            "ask the operator, or stop the stack and run `agentwatch sql` on its data",
        )
    try:
        result = runtime.sql_sandbox.run(request.query)
    except sql.SqlRefused as refused:
        log.info("sql_refused status=%d query=%r", refused.status, request.query[:200])
        headers = {"Retry-After": "1"} if refused.status == 429 else None
        raise HTTPException(refused.status, detail=refused.message, headers=headers) from None
    log.info(
        "sql_query rows=%d elapsed_s=%.3f query=%r",
        len(result.rows),
        result.elapsed_s,
        request.query[:200],
    )
    body = sql.render(result, request.format)
    return Response(body, media_type=sql.MEDIA_TYPES[request.format])
