"""What the running API holds (:class:`Runtime`) and the dependencies every router uses:
the runtime itself and the callers a route may require.

A router module (``api/routes/…``) declares what it needs::

    @router.get("/api/v1/agents/{agent_id}/status")
    def agent_status(agent_id: AgentId, runtime: RuntimeDep, caller: Reader): ...

``Reader``/``Operator``/… authenticate the request's key and check its role
(:func:`api.identity.needs`); the route then scopes what it touches to the
caller's tenant.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Annotated

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from fastapi import Depends, Header, Request

from agentwatch.identity import Permission, Principal
from agentwatch.settings import Settings
from api import sql
from api.assign import Assigner
from api.client_pool import ClientPool
from api.health import SystemMonitor
from api.identity import KeyBook, needs
from api.projection import AgentProjection
from api.publisher import EventPublisher
from api.relay import AgentRelay
from api.revocation import StoredRevocations
from api.rules import RuleBook
from api.silences import SilenceBook
from api.tenants import ClickHouseTenants, ProjectedTenants, TenantLookup
from sinks.audit import AuditWriter
from sinks.clickhouse import connect, create_schema
from sinks.loader import LoaderLanes
from sinks.webhooks import WebhookDeliverer

log = logging.getLogger("api.app")

API_PREFIX = "/api/v1"


@dataclass
class Runtime:
    """What the app holds while it runs: its ClickHouse clients, the loader, the monitor."""

    settings: Settings
    clients: ClientPool
    loader: LoaderLanes | None
    loader_client: Client | None
    monitor: SystemMonitor
    sql_sandbox: sql.SqlSandbox | None  # where POST /api/v1/sql runs queries; None when off
    rule_book: RuleBook
    publisher: EventPublisher
    silences: SilenceBook
    keys: KeyBook
    webhooks: WebhookDeliverer | None = None
    webhooks_client: Client | None = None
    audit: AuditWriter | None = None
    audit_client: Client | None = None
    relay: AgentRelay | None = None  # the REST bridge's producer (agents.metrics, agents.events)
    #: Whose agents are these (bulk operations); None: one ClickHouse query per request.
    tenant_lookup: TenantLookup | None = None
    projection: AgentProjection | None = None  # the agents in memory (api.projection)
    assigner: Assigner | None = None  # task assignment's fleet and reservations (api.assign)

    @classmethod
    def start(cls, settings: Settings, client: Client | None, run_loader: bool) -> Runtime:
        """Open ClickHouse, create the schema, start the loader (blocking; run in a thread)."""
        if client is None:
            clients = ClientPool(open_client=lambda: connect(settings))
        else:
            clients = ClientPool(shared=client)
        with clients.client() as first:
            create_schema(first, settings)
        loader = loader_client = None
        if run_loader:
            # The loader writes through its own connection: a chDB client
            # serializes its calls, and reads must not queue behind a batch.
            loader_client = connect(settings)
            loader = LoaderLanes(settings, loader_client, lambda: connect(settings))
            loader.niceness = settings.api_background_niceness
            loader.start()
        webhooks = webhooks_client = None
        if run_loader and settings.alert_webhooks:
            webhooks_client = connect(settings)  # its own connection, like the loader's
            webhooks = WebhookDeliverer(settings, webhooks_client)
            webhooks.niceness = settings.api_background_niceness
            webhooks.start()
        audit = audit_client = None
        if run_loader:  # the audit trail is written where the loader runs
            audit_client = connect(settings)
            audit = AuditWriter(settings, audit_client)
            audit.niceness = settings.api_background_niceness
            audit.start()
        monitor = SystemMonitor(
            settings,
            clients,
            loader,
            loader_expected=run_loader or bool(settings.api_loader_metrics_url),
        )
        sandbox = None
        if settings.api_sql_enabled:  # its clients open on first use, after the schema exists
            sandbox = sql.SqlSandbox(settings)
        log.info(
            "api_started database=%s clickhouse=%s loader=%s webhooks=%d",
            settings.clickhouse_database,
            settings.clickhouse_dsn,  # a SecretDsn: shown with its password as ***
            "on" if run_loader else "off",
            len(settings.alert_webhooks) if webhooks is not None else 0,
        )
        publisher = EventPublisher(settings)
        revocations = StoredRevocations(
            settings.clickhouse_database, clients.client, settings.api_key_cache_s
        )
        keys = KeyBook(settings, publisher, revocations)
        if settings.api_admin_key_file is not None:
            with clients.client() as first:
                keys.ensure_admin_key(first, settings.api_admin_key_file)
        projection = AgentProjection(settings)
        assigner = Assigner(settings, publisher)
        try:  # the latest scores; the topic from its end from now on
            with clients.client() as first:
                assigner.seed(first)
        except ClickHouseError as exc:  # assign anyway: neutral scores until new ones come
            log.warning("assigner_not_seeded error=%r", str(exc)[:200])
        assigner.attach(projection)
        projection.start()
        assigner.start()
        tenants = ProjectedTenants(projection, ClickHouseTenants(settings, clients))
        return cls(
            settings, clients, loader, loader_client, monitor, sandbox,
            RuleBook(settings, publisher), publisher, SilenceBook(settings, publisher), keys,
            webhooks, webhooks_client, audit, audit_client, relay=AgentRelay(settings),
            tenant_lookup=tenants, projection=projection, assigner=assigner,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the webhook deliverer and the loader (it flushes), then release the clients."""
        if self.projection is not None:
            self.projection.stop()
        if self.assigner is not None:
            self.assigner.stop()
        if self.audit is not None:
            self.audit.stop()
        if self.audit_client is not None:
            self.audit_client.close()
        if self.webhooks is not None:
            self.webhooks.stop()
        if self.webhooks_client is not None:
            self.webhooks_client.close()
        if self.loader is not None:
            started = time.monotonic()
            self.loader.stop()
            log.info("loader_stopped seconds=%.2f", time.monotonic() - started)
        if self.loader_client is not None:
            self.loader_client.close()
        self.publisher.close()
        if self.relay is not None:
            self.relay.close()
        self.monitor.close()
        self.clients.close()
        if self.sql_sandbox is not None:
            self.sql_sandbox.close()
        log.info("api_stopped")


ActorHeader = Annotated[
    str,
    Header(alias="X-Agentwatch-Actor", min_length=1, max_length=128,
           pattern=r"^[\x21-\x7e][\x20-\x7e]*$",  # (printable ASCII: no control characters)
           description="Who makes the change (recorded with it): printable ASCII."),
]  # fmt: skip


#: The caller of a route that reads, operates, or changes what every tenant shares.
Reader = Annotated[Principal, needs(Permission.READ)]
#: A reader of what every tenant's data makes together (the pipeline's metrics).
FleetReader = Annotated[Principal, needs(Permission.READ, fleet=True)]
Operator = Annotated[Principal, needs(Permission.OPERATE)]
FleetOperator = Annotated[Principal, needs(Permission.OPERATE, fleet=True)]
SqlAnalyst = Annotated[Principal, needs(Permission.QUERY_SQL, fleet=True)]


async def get_runtime(request: Request) -> Runtime:
    """The running app's :class:`Runtime` (a FastAPI dependency; ``async``: FastAPI runs a
    plain function dependency in a worker thread, a hop for nothing here)."""
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
