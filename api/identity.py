"""API keys at rest and at the door: the key book, and the principal of a request.

Keys are made and revoked as commands like any other change: a ``key_created``
or ``key_revoked`` event on ``agents.control`` (carrying the key's id, role,
tenant and the hash of its secret, never the secret), which the audit trail
records, and a row of the ClickHouse table ``api_keys``, the API's view (every
API process reads it). A key's token is shown once, when it is made.

A request presents its key as ``Authorization: Bearer aw_…``.
:meth:`KeyBook.authenticate` parses it (:func:`agentwatch.identity.parse_key`),
looks its id up (cached for ``api_key_cache_s``) and compares the secret's hash
in constant time; an unknown, revoked or expired key, or a malformed header, is
a 401 that says which. Without a key, a request is refused too, unless
``AGENTWATCH_API_AUTH_REQUIRED=false``: then it acts as the loopback operator
of the embedded demo (an admin of every tenant; the loopback guard of
:mod:`api.access` still keeps changes to this machine).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from clickhouse_connect.driver.client import Client
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute, APIRouter

from agentwatch.identity import (
    ALL_TENANTS,
    NewKey,
    Permission,
    Principal,
    Role,
    authorize,
    new_key,
    parse_key,
)
from agentwatch.identity import secret_matches as _matches
from agentwatch.settings import Settings
from api.access import keyless_refusal
from api.errors import error_responses
from api.methods import flat_routes
from api.publisher import EventPublisher, PublishError
from api.revocation import RevocationLookup, instant
from schemas.events import FLEET, KEY_CREATED, KEY_EXPIRY_CHANGED, KEY_REVOKED
from schemas.models import LifecycleEvent

log = logging.getLogger("api.identity")

#: Key lookups :class:`KeyBook` keeps at most (~300 B each); past that it forgets.
KEY_CACHE_MAX = 100_000
#: The principal of a request without a key when keys are not required (the embedded demo).
LOOPBACK_OPERATOR = Principal(key_id="loopback", role=Role.ADMIN, tenant_id=ALL_TENANTS)
_COLUMNS = (
    "key_id", "role", "tenant_id", "agent_id", "name", "secret_hash", "created_at",
    "expires_at", "revoked_at", "created_by", "version",
)  # fmt: skip
#: A key from all of its rows (:meth:`KeyBook._select`): its times the earliest any row
#: holds (restrictions one-way: the earliest revocation and expiry), the rest the newest's.
_AGGREGATED = ", ".join(
    "key_id" if c == "key_id"
    else f"toFloat64(min({c})) AS {c}" if c.endswith("_at")
    else f"argMax({c}, version) AS {c}"
    for c in _COLUMNS[:-1]
)  # fmt: skip


class AuthError(Exception):
    """The request's key is missing or not good; ``message`` says which (for a 401)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A key as the book keeps it (the hash of its secret, never the secret)."""

    key_id: str
    role: Role
    tenant_id: str
    agent_id: str
    name: str
    secret_hash: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    created_by: str

    def principal(self) -> Principal:
        return Principal(self.key_id, self.role, self.tenant_id, self.agent_id or None)


class KeyBook:
    """Makes, revokes and checks API keys (thread-safe).

    ``revocations`` tells whether an agent's lifecycle revoked its keys (quarantine,
    compromise, decommission; :mod:`api.revocation`); ``clock`` is the wall clock
    (epoch seconds) that expiries are judged by (a test passes its own).
    """

    def __init__(
        self,
        settings: Settings,
        publisher: EventPublisher,
        revocations: RevocationLookup | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.revocations = revocations
        self.clock = clock
        self._cache: dict[str, tuple[float, StoredKey | None]] = {}
        self._lock = threading.Lock()

    def create(
        self,
        client: Client,
        role: Role,
        tenant_id: str,
        actor: str,
        name: str = "",
        agent_id: str | None = None,
        ttl_s: float | None = None,
        along: Sequence[tuple[dict, str]] = (),
        since: float | None = None,
    ) -> tuple[StoredKey, str]:
        """A new key and its token (shown once). Raises ``ValueError`` for a key that
        cannot be (an agent key without its agent, an operator's or agent's key of every tenant).
        ``along``: commands (``(event, key)``) published before ``key_created`` in the
        same batch, with one wait for the broker (a registration and its credential).
        ``since``: the key's ``created_at`` when earlier than now (the key an agent makes
        for itself with its own key counts from when that one was made: a quarantine
        that revokes the agent's keys made before it revokes this one too)."""
        if (role is Role.AGENT) != (agent_id is not None):
            raise ValueError("an agent's key names its agent (agent_id), and only an agent's key")
        if tenant_id == ALL_TENANTS and role not in (Role.ADMIN, Role.ANALYST):
            raise ValueError(
                f"only an admin's or an analyst's key may span every tenant ({ALL_TENANTS!r}): "
                "a fleet analyst reads (Prometheus scrapes /metrics with one); nobody else "
                "changes every tenant"
            )
        made: NewKey = new_key()
        now = self.clock()
        stored = StoredKey(  # (``since``: an agent's own new key is as old as its lineage)
            made.key_id, role, tenant_id, agent_id or "", name, made.secret_hash,
            now if since is None else min(since, now), now + ttl_s if ttl_s else None, None,
            actor,
        )  # fmt: skip
        if along:
            batch = [*along, self._event(KEY_CREATED, stored, actor)]
            failures = [f for f in self.publisher.publish_many(batch) if f is not None]
            if failures:
                raise PublishError(f"the broker did not take the events: {failures[0]}")
        else:
            self._publish(KEY_CREATED, stored, actor)
        self._record(client, stored)
        return stored, made.token

    def revoke(self, client: Client, key_id: str, actor: str) -> StoredKey:
        """Revoke a key now; ``KeyError`` if there is no such key."""
        stored = self._read(client, key_id)
        if stored is None:
            raise KeyError(f"no key {key_id!r}")
        if stored.revoked_at is None:
            revoked = StoredKey(**{**_fields(stored), "revoked_at": self.clock()})
            self._restrict(client, revoked, KEY_REVOKED, actor)
            stored = revoked
        return stored

    def ensure_admin_key(self, client: Client, path: Path) -> None:
        """Make sure ``path`` holds a working admin key of every tenant (made and written,
        readable by its owner only, when it holds none): the first key of a new stack."""
        if path.exists():
            parsed = parse_key(path.read_text().strip())
            stored = self._read(client, parsed.key_id) if parsed else None
            if (
                stored is not None
                and stored.revoked_at is None
                and _matches(parsed.secret, stored.secret_hash)
            ):
                return
        stored, token = self.create(client, Role.ADMIN, ALL_TENANTS, "system", name="bootstrap")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(token + "\n")
        log.info("admin_key_created key_id=%s file=%s", stored.key_id, path)

    def authenticate(self, client: Client, authorization: str | None) -> Principal:
        """The principal of a request's ``Authorization`` header; :class:`AuthError` says
        why not. Without a header: :data:`LOOPBACK_OPERATOR` when keys are not required."""
        return self._authenticate(authorization, lambda key_id: self._cached(client, key_id))

    def authenticate_cached(self, authorization: str | None) -> Principal | None:
        """:meth:`authenticate` from what this process holds, without reading ClickHouse:
        None when it would have to (a key not in the cache or out of date, or an agent's
        key, whose revocations are read from ClickHouse). For a request's fast path: the
        answer and the errors are :meth:`authenticate`'s."""
        try:
            return self._authenticate(authorization, self._from_cache, agents=False)
        except _NotAtHand:
            return None

    def _authenticate(
        self,
        authorization: str | None,
        lookup: Callable[[str], StoredKey | None],
        agents: bool = True,
    ) -> Principal:
        if not authorization:
            if not self.settings.api_auth_required:
                return LOOPBACK_OPERATOR
            raise AuthError("no API key: send 'Authorization: Bearer aw_…'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthError("the Authorization header must be 'Bearer <API key>'")
        parsed = parse_key(token.strip())
        if parsed is None:
            raise AuthError("that is not an agentwatch API key (aw_<12 hex>_<43 characters>)")
        stored = lookup(parsed.key_id)
        if stored is None or not _matches(parsed.secret, stored.secret_hash):
            raise AuthError(f"key {parsed.key_id} is not known")  # same answer: no oracle
        now = self.clock()
        if stored.revoked_at is not None:  # (a revocation is now: even one stamped ahead)
            raise AuthError(f"key {parsed.key_id} was revoked")
        if stored.expires_at is not None and stored.expires_at <= now:
            renew = (
                f"rotate it before it expires (POST /api/v1/agents/{stored.agent_id}/credentials)"
                f" or ask an operator for a new one"
                if stored.agent_id
                else "ask for a new one"
            )
            raise AuthError(f"key {parsed.key_id} expired at {instant(stored.expires_at)}; {renew}")
        if stored.role is Role.AGENT and self.revocations is not None:
            if not agents:
                raise _NotAtHand
            revocation = self.revocations.revoked_since(stored.agent_id)
            if revocation is not None and revocation.revokes(stored.created_at):
                raise AuthError(
                    f"key {parsed.key_id} is revoked: {revocation.reason(stored.agent_id)}"
                )
        return stored.principal()

    def _from_cache(self, key_id: str) -> StoredKey | None:
        with self._lock:
            hit = self._cache.get(key_id)
        if hit is None or time.monotonic() - hit[0] >= self.settings.api_key_cache_s:
            raise _NotAtHand
        return hit[1]

    def _cached(self, client: Client, key_id: str) -> StoredKey | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key_id)
        if hit is not None and now - hit[0] < self.settings.api_key_cache_s:
            return hit[1]
        stored = self._read(client, key_id)
        with self._lock:
            self._remember(key_id, now, stored)
        return stored

    def _remember(self, key_id: str, now: float, stored: StoredKey | None) -> None:
        """Cache a lookup (an unknown id too), at most :data:`KEY_CACHE_MAX` of them: past
        that, the entries out of date go, then the older half. Every well-formed token
        with a new id (no key needed to send one) added an entry for good (a review)."""
        self._cache.pop(key_id, None)  # (to the end: the dict's order is the entries' age)
        self._cache[key_id] = (now, stored)
        if len(self._cache) > KEY_CACHE_MAX:
            fresh = now - self.settings.api_key_cache_s
            kept = [(k, v) for k, v in self._cache.items() if v[0] >= fresh]
            self._cache = dict(kept[len(kept) // 2 :] if len(kept) > KEY_CACHE_MAX // 2 else kept)

    def get(self, client: Client, key_id: str) -> StoredKey | None:
        """The key of that id as stored now (None: no such key)."""
        return self._read(client, key_id)

    def of_agent(self, client: Client, agent_id: str) -> list[StoredKey]:
        """Every key of an agent (revoked and expired ones too), oldest first."""
        return self._select(client, "agent_id = {agent_id:String}", {"agent_id": agent_id})

    def expire_by(
        self, client: Client, stored: StoredKey, expires_at: float, actor: str
    ) -> StoredKey:
        """Bring ``stored``'s expiry forward to ``expires_at`` (never later than it was):
        a ``key_expiry_changed`` event for the audit trail, and the new row."""
        if stored.expires_at is not None and stored.expires_at <= expires_at:
            return stored
        changed = StoredKey(**{**_fields(stored), "expires_at": expires_at})
        self._restrict(client, changed, KEY_EXPIRY_CHANGED, actor,
                       expires_before=stored.expires_at)  # fmt: skip
        return changed

    def _restrict(
        self, client: Client, after: StoredKey, kind: str, actor: str, **extra: object
    ) -> None:
        """Store a change that takes rights away (a revocation, an earlier expiry), then
        publish its event for the audit trail. Published first, a failed store left the
        trail saying a key was revoked while it still worked (found by a review).

        Restrictions are one-way (:meth:`_select`): when the broker then refuses the
        event, the change stands (rights taken away, never granted back by an undo), it
        is logged at error as ``key_change_unaudited`` with the key and the error, and the
        caller gets the broker's error (503).
        """
        self._record(client, after)
        try:
            self._publish(kind, after, actor, **extra)
        except Exception as exc:
            log.error("key_change_unaudited kind=%s key_id=%s actor=%s error=%r", kind,
                      after.key_id, actor, str(exc)[:200])  # fmt: skip
            raise

    def _read(self, client: Client, key_id: str) -> StoredKey | None:
        found = self._select(client, "key_id = {key_id:String}", {"key_id": key_id})
        return found[0] if found else None

    def _select(self, client: Client, where: str, parameters: dict) -> list[StoredKey]:
        """The keys ``where`` selects, each from all of its rows: its restrictions are
        one-way whatever the rows' versions say (the earliest revocation and expiry any
        row holds), the rest as its newest row says. Read as the newest row alone (FINAL),
        a revocation written by a replica whose clock was behind, or overwritten by a
        rotation writing back the key it had read just before, was lost: the key worked
        again (found by a review)."""
        rows = client.query(
            f"SELECT {_AGGREGATED} FROM (SELECT * FROM {self.settings.clickhouse_database}"
            f".api_keys WHERE {where}) GROUP BY key_id ORDER BY created_at, key_id",
            parameters=parameters,
        ).result_rows
        keys = []
        for row in rows:
            values = dict(zip(_COLUMNS, row, strict=False))
            values["role"] = Role(values["role"])
            keys.append(StoredKey(**values))
        return keys

    def _record(self, client: Client, stored: StoredKey) -> None:
        values = _fields(stored)
        for name in ("created_at", "expires_at", "revoked_at"):
            if values[name] is not None:
                values[name] = datetime.fromtimestamp(values[name], UTC)
        values["role"] = stored.role.value
        client.insert(
            "api_keys",
            [(*(values[c] for c in _COLUMNS[:-1]), time.time())],
            column_names=_COLUMNS,
            database=self.settings.clickhouse_database,
        )
        with self._lock:
            self._cache.pop(stored.key_id, None)

    def _publish(self, kind: str, stored: StoredKey, actor: str, **extra: object) -> None:
        self.publisher.publish(*self._event(kind, stored, actor, **extra))

    def _event(self, kind: str, stored: StoredKey, actor: str, **extra: object) -> tuple[dict, str]:
        """The ``(event, key)`` that records ``kind`` of ``stored`` (never its secret)."""
        payload = {k: v for k, v in _fields(stored).items() if k != "secret_hash"}
        payload["role"] = stored.role.value
        payload.update(extra)
        tenant = stored.tenant_id if stored.tenant_id != ALL_TENANTS else FLEET
        event = LifecycleEvent(
            type=kind, agent_id=stored.agent_id or FLEET, tenant_id=tenant, actor=actor,
            timestamp=self.clock(), payload=payload,
        )  # fmt: skip
        return event.model_dump(mode="json"), event.agent_id


class _NotAtHand(Exception):
    """Authenticating would need a read of ClickHouse (see authenticate_cached)."""


def _fields(stored: StoredKey) -> dict:
    return {name: getattr(stored, name) for name in StoredKey.__dataclass_fields__}


def authenticated(request: Request, authorization: str | None) -> Principal:
    """The principal of the request's key (through the running app's key book), or a 401
    that says why and asks for a bearer token."""
    book: KeyBook = request.app.state.runtime.keys
    try:
        with request.app.state.runtime.clients.client() as client:
            return book.authenticate(client, authorization)
    except AuthError as exc:
        raise unauthorized(exc) from None


def unauthorized(exc: AuthError) -> HTTPException:
    """The 401 of a refused key: the reason, and the ask for a bearer token."""
    return HTTPException(401, detail=exc.message, headers={"WWW-Authenticate": "Bearer"})


async def principal_of(request: Request, authorization: str | None) -> Principal:
    """:func:`authenticated`, on the event loop when the key book holds what it needs
    (no thread hop: under load each hop waited for a turn of the interpreter), in a
    worker thread when it must read ClickHouse."""
    book: KeyBook = request.app.state.runtime.keys
    if len(request.headers.getlist("authorization")) > 1:  # (which one would a proxy read?)
        raise unauthorized(AuthError("send one Authorization header, not several"))
    try:
        principal = book.authenticate_cached(authorization)
    except AuthError as exc:
        raise unauthorized(exc) from None
    if principal is None:
        principal = await run_in_threadpool(authenticated, request, authorization)
    if principal is LOOPBACK_OPERATOR:  # (keyless: not for what a web page sends)
        reason = keyless_refusal(request.headers)
        if reason is not None:
            raise HTTPException(403, detail=reason)
    return principal


def needs(permission: Permission, fleet: bool = False) -> Any:
    """The dependency of a route that needs ``permission``: the request's
    :class:`~agentwatch.identity.Principal`, or a 401 (no good key) or 403 (the
    role may not). ``fleet``: the route acts on every tenant (rules, SQL), so only a
    key of every tenant passes; otherwise the route checks the tenant of what it
    touches itself (:func:`require_tenant`).
    """

    async def caller(
        request: Request,
        authorization: Annotated[
            str | None,
            Header(description="'Bearer <API key>'; its role and tenant decide what it may do."),
        ] = None,
    ) -> Principal:
        principal = await principal_of(request, authorization)
        tenant = ALL_TENANTS if fleet else principal.tenant_id
        reason = authorize(principal, permission, tenant, principal.agent_id)
        if reason is not None:
            raise HTTPException(403, detail=reason)
        return principal

    caller.asks_for_key = True  # see document_key_errors
    return Depends(caller)


def needs_any(*permissions: Permission) -> Any:
    """The dependency of a route that one of several roles may use (an agent's own
    credentials: the agent itself, or an operator of its tenant): the request's
    principal if its role has any of ``permissions``; the route then checks the agent
    and the tenant it touches itself."""

    async def caller(
        request: Request,
        authorization: Annotated[
            str | None,
            Header(description="'Bearer <API key>'; its role and tenant decide what it may do."),
        ] = None,
    ) -> Principal:
        principal = await principal_of(request, authorization)
        reasons = [
            authorize(principal, p, principal.tenant_id, principal.agent_id) for p in permissions
        ]
        if all(reasons):
            raise HTTPException(403, detail=reasons[0])
        return principal

    caller.asks_for_key = True  # see document_key_errors
    return Depends(caller)


def document_key_errors(app: FastAPI | APIRouter) -> None:
    """Declare 401 and 403 on every route that asks for a key (through :func:`needs`), so
    the OpenAPI schema says what the door may answer. Call it on a router before it is
    included (FastAPI 0.165 copies an included router's routes as they are then), and on
    the app once its own routes exist."""

    def asks(dependant: Any) -> bool:
        return any(
            getattr(d.call, "asks_for_key", False) or asks(d) for d in dependant.dependencies
        )

    for route in flat_routes(app.routes):
        if isinstance(route, APIRoute) and asks(route.dependant):
            for status in (401, 403):
                route.responses.setdefault(status, error_responses(status)[status])


def require_tenant(principal: Principal, permission: Permission, tenant_id: str, what: str) -> None:
    """Refuse (404, as if it did not exist: no oracle for other tenants' names) when
    ``principal`` may not act on ``tenant_id``; ``what`` names the thing."""
    if authorize(principal, permission, tenant_id, principal.agent_id) is not None:
        raise HTTPException(404, detail=f"{what} is unknown")


def tenant_filter(principal: Principal, asked: str | None) -> str | None:
    """The tenant a list answers for: the one asked, which must be the key's own unless
    the key spans every tenant (403 otherwise); a tenant key's own when none is asked."""
    if principal.tenant_id == ALL_TENANTS:
        return asked
    if asked is not None and asked != principal.tenant_id:
        raise HTTPException(403, detail=f"{principal} may not read tenant {asked}")
    return principal.tenant_id


def actor_of(principal: Principal, said: str) -> str:
    """Who a change is recorded as: the key (``key:<id>``), or, without a key on the
    embedded demo, what the caller said in ``X-Agentwatch-Actor``."""
    return said if principal == LOOPBACK_OPERATOR else f"key:{principal.key_id}"
