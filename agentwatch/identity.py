"""Who is calling, and what they may do: API keys, roles, tenants (engine-free).

A caller presents an API key; the key names a :class:`Principal`: a role, the
tenant it is scoped to, and for an agent's key the agent itself. What a role
may do is one table, :data:`ROLE_PERMISSIONS`; whether a principal may act on
a tenant's data is :func:`authorize`. Every decision is made by parsing and
looking up, never by searching text.

Keys look like ``aw_<id>_<secret>``: a 12-hex-digit id, which is public (logs
and the audit trail may name it), and 43 characters of URL-safe base64 — 256
random bits. Only the SHA-256 of the secret is stored. A slow password hash
(argon2, scrypt) defends low-entropy passwords against guessing; a 256-bit
random secret cannot be guessed, so a fast hash loses nothing and lets every
request be checked in microseconds (the API answers in milliseconds).

>>> key = new_key()
>>> parsed = parse_key(key.token)
>>> parsed.key_id == key.key_id, secret_matches(parsed.secret, key.secret_hash)
(True, True)
>>> admin = Principal(key_id=key.key_id, role=Role.ADMIN, tenant_id=ALL_TENANTS)
>>> operator = Principal(key_id="0" * 12, role=Role.OPERATOR, tenant_id="tenant-1")
>>> authorize(operator, Permission.OPERATE, "tenant-1") is None
True
>>> print(authorize(operator, Permission.OPERATE, "tenant-2"))
key 000000000000 (operator of tenant-1) may not act on tenant tenant-2
>>> print(authorize(operator, Permission.MANAGE_KEYS, "tenant-1"))
key 000000000000 (operator of tenant-1) may not manage keys: the operator role may operate, read
>>> authorize(admin, Permission.MANAGE_KEYS, "tenant-9") is None
True
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

#: The tenant of a key that may act on every tenant (admins only).
ALL_TENANTS = "*"
#: Key prefix: makes a leaked key recognisable to secret scanners (and our own rules).
KEY_PREFIX = "aw"
_KEY = re.compile(r"aw_(?P<key_id>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{43})")


class Role(StrEnum):
    """The roles of the seed's multi-tenant API."""

    ADMIN = "admin"
    OPERATOR = "operator"
    ANALYST = "analyst"
    AGENT = "agent"


class Permission(StrEnum):
    """What a route needs."""

    READ = "read"  # status, anomalies, threats, alerts, rules, silences, audit
    OPERATE = "operate"  # quarantine, release, silences, rules, maintenance, bulk operations
    QUERY_SQL = "query sql"  # POST /api/v1/sql
    REPORT_SELF = "report self"  # an agent's own heartbeats, conversations, task outcomes
    MANAGE_KEYS = "manage keys"  # create and revoke keys, register agents for any tenant


#: What each role may do. An agent's key may only speak for its own agent.
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission) - {Permission.REPORT_SELF},
    Role.OPERATOR: frozenset({Permission.READ, Permission.OPERATE}),
    Role.ANALYST: frozenset({Permission.READ, Permission.QUERY_SQL}),
    Role.AGENT: frozenset({Permission.REPORT_SELF}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a key names."""

    key_id: str
    role: Role
    tenant_id: str
    agent_id: str | None = None  # set for (and only for) an agent's key

    def __str__(self) -> str:
        of = "every tenant" if self.tenant_id == ALL_TENANTS else self.tenant_id
        who = f" {self.agent_id}" if self.agent_id else ""
        return f"key {self.key_id} ({self.role.value}{who} of {of})"


def authorize(
    principal: Principal, permission: Permission, tenant_id: str, agent_id: str | None = None
) -> str | None:
    """Why ``principal`` may not do ``permission`` on ``tenant_id`` (and, for an agent's
    own reports, as ``agent_id``); None when it may.

    >>> agent = Principal("a" * 12, Role.AGENT, "t1", agent_id="agent-7")
    >>> authorize(agent, Permission.REPORT_SELF, "t1", "agent-7") is None
    True
    >>> print(authorize(agent, Permission.REPORT_SELF, "t1", "agent-8"))
    key aaaaaaaaaaaa (agent agent-7 of t1) may speak only for agent-7, not for agent-8
    """
    allowed = ROLE_PERMISSIONS[principal.role]
    if permission not in allowed:
        names = ", ".join(sorted(p.value for p in allowed))
        return (
            f"{principal} may not {permission.value}: the {principal.role.value} role may {names}"
        )
    if principal.tenant_id != ALL_TENANTS and principal.tenant_id != tenant_id:
        return f"{principal} may not act on tenant {tenant_id}"
    if principal.role is Role.AGENT and agent_id != principal.agent_id:
        return f"{principal} may speak only for {principal.agent_id}, not for {agent_id}"
    return None


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly made key: the token to hand out once, and what to store."""

    key_id: str
    token: str
    secret_hash: str

    def __repr__(self) -> str:  # the token is a secret: never in a repr, a log or an error
        return f"NewKey(key_id={self.key_id!r}, token='***')"


@dataclass(frozen=True, slots=True)
class ParsedKey:
    key_id: str
    secret: str

    def __repr__(self) -> str:
        return f"ParsedKey(key_id={self.key_id!r}, secret='***')"


def new_key() -> NewKey:
    """A new random key (256-bit secret).

    >>> key = new_key()
    >>> key.token.startswith(f"aw_{key.key_id}_"), len(key.token), key
    (True, 59, NewKey(key_id='...', token='***'))
    """
    key_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return NewKey(key_id, f"{KEY_PREFIX}_{key_id}_{secret}", hash_secret(secret))


def parse_key(token: str) -> ParsedKey | None:
    """The id and secret of a well-formed key; None for anything else (whole-string match).

    >>> parse_key("aw_0123456789ab_" + "x" * 43).key_id
    '0123456789ab'
    >>> [parse_key(t) for t in ("", "aw_0123456789ab_short", " aw_0123456789ab_" + "x" * 43)]
    [None, None, None]
    """
    match = _KEY.fullmatch(token)
    return ParsedKey(match["key_id"], match["secret"]) if match else None


def hash_secret(secret: str) -> str:
    """SHA-256 (hex) of a key's secret: what is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Whether ``secret`` is the one whose hash was stored (constant-time comparison)."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)
