"""The audit trail over HTTP: ``GET /api/v1/audit`` (filtered, newest first) and
``GET /api/v1/audit/verify`` (are the chains whole?).

The rows are written by :class:`sinks.audit.AuditWriter` from the log; this
module only reads them. ``agentwatch audit verify`` asks ``/audit/verify``.
Create the app, then call :func:`install`.

>>> from fastapi import FastAPI
>>> app = FastAPI()
>>> install(app, Settings())
>>> sorted(r.path for r in app.routes if "audit" in r.path)
['/api/v1/audit', '/api/v1/audit/verify']
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import FastAPI, Query, Request
from pydantic import BaseModel, Field

from agentwatch.audit import verify
from agentwatch.identity import Permission, Principal
from agentwatch.settings import Settings
from api.errors import error_responses
from api.identity import needs, tenant_filter
from api.params import TimeRangeDep
from sinks.audit import read_rows

PREFIX = "/api/v1/audit"


class AuditRecord(BaseModel):
    """One row of the audit trail."""

    tenant_id: str = Field(description="The chain it belongs to ('*': fleet-wide changes).")
    seq: int = Field(description="Its position in the tenant's chain, from 1.")
    at: datetime = Field(description="When the change was asked for (or derived).")
    actor: str
    action: str = Field(description="The event type: rule_changed, released, status_changed…")
    target: str = Field(description="The agent, rule or silence it is about.")
    origin: str = Field(description="Where a command came from (the API caller's address).")
    before: str = Field(description="JSON, empty when the event does not say.")
    after: str = Field(description="JSON.")
    reason: str
    source: str = Field(description="The log message it was read from.")
    prev_hash: str
    hash: str


class AuditList(BaseModel):
    """An answer of ``GET /api/v1/audit``."""

    count: int
    records: list[AuditRecord]


class AuditVerdict(BaseModel):
    """An answer of ``GET /api/v1/audit/verify``."""

    ok: bool = Field(description="Every chain is whole: no row edited, inserted or deleted.")
    rows: int
    tenants: int
    problems: list[str] = Field(description="One sentence a broken link.")


def install(app: FastAPI, settings: Settings) -> None:
    """Add the audit routes to ``app`` (its ``state.runtime`` lends the ClickHouse clients)."""
    database = settings.clickhouse_database

    @app.get(PREFIX, response_model=AuditList, tags=["audit"], responses=error_responses(422, 503))
    def list_audit(
        request: Request,
        span: TimeRangeDep,
        caller: Annotated[Principal, needs(Permission.READ)],
        tenant: Annotated[str | None, Query(max_length=128)] = None,
        actor: Annotated[str | None, Query(max_length=128)] = None,
        action: Annotated[str | None, Query(max_length=64)] = None,
        target: Annotated[str | None, Query(max_length=128)] = None,
    ) -> AuditList:
        """The audit trail, newest first: every operator's command and every status change,
        who asked, from where, before → after. A tenant's key reads its tenant's chain."""
        tenant = tenant_filter(caller, tenant)
        filters = {"tenant_id": tenant, "actor": actor, "action": action, "target": target}
        where = [f"{column} = {{{column}:String}}" for column, v in filters.items() if v]
        parameters: dict[str, object] = {c: v for c, v in filters.items() if v}
        for name, value, op in (("since", span.since, ">="), ("until", span.until, "<=")):
            if value is not None:
                where.append(f"at {op} {{{name}:DateTime64(3, 'UTC')}}")
                parameters[name] = value.astimezone(UTC).replace(tzinfo=None)
        columns = ", ".join(AuditRecord.model_fields)
        with request.app.state.runtime.clients.client() as client:
            result = client.query(
                f"SELECT {columns} FROM {database}.audit_log "
                f"{'WHERE ' + ' AND '.join(where) if where else ''} "
                "ORDER BY at DESC, tenant_id, seq DESC LIMIT {limit:UInt32}",
                parameters={**parameters, "limit": span.limit},
            )
        records = [
            AuditRecord(**{**row, "at": row["at"].replace(tzinfo=UTC)})
            for row in result.named_results()
        ]
        return AuditList(count=len(records), records=records)

    @app.get(
        f"{PREFIX}/verify",
        response_model=AuditVerdict,
        tags=["audit"],
        responses=error_responses(422, 503),
    )
    def verify_audit(
        request: Request,
        caller: Annotated[Principal, needs(Permission.READ)],
        tenant: Annotated[str | None, Query(max_length=128)] = None,
    ) -> AuditVerdict:
        """Walk every tenant's chain (or one's) and report any row edited, inserted or
        deleted since it was written. A tenant's key verifies its tenant's chain."""
        tenant = tenant_filter(caller, tenant)
        with request.app.state.runtime.clients.client() as client:
            rows = read_rows(client, database, tenant)
        problems = verify(rows)
        return AuditVerdict(
            ok=not problems,
            rows=len(rows),
            tenants=len({row.tenant_id for row in rows}),
            problems=problems,
        )
