"""Roles, tenants and keys (agentwatch.identity): the decisions, tried from every side."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agentwatch.identity import (
    ALL_TENANTS,
    ROLE_PERMISSIONS,
    Permission,
    Principal,
    Role,
    authorize,
    new_key,
    parse_key,
    secret_matches,
)

tenants = st.sampled_from(["tenant-1", "tenant-2", "t", ALL_TENANTS])
agents = st.sampled_from([None, "agent-1", "agent-2"])


@given(st.sampled_from(list(Role)), tenants, st.sampled_from(list(Permission)), tenants, agents)
def test_no_key_acts_beyond_its_tenant_role_or_agent(role, own, permission, target, agent):
    if own == ALL_TENANTS and role is not Role.ADMIN:
        own = "tenant-1"  # only admins' keys span every tenant
    principal = Principal("0" * 12, role, own, "agent-1" if role is Role.AGENT else None)
    allowed = authorize(principal, permission, target, agent) is None
    if allowed:
        assert permission in ROLE_PERMISSIONS[role]
        assert own in (ALL_TENANTS, target)
        assert role is not Role.AGENT or agent == "agent-1"
    else:
        assert authorize(principal, permission, target, agent).startswith(str(principal))


def test_the_matrix_of_roles():
    may = {role: {p.value for p in ROLE_PERMISSIONS[role]} for role in Role}
    assert may == {
        Role.ADMIN: {"read", "operate", "query sql", "manage keys"},
        Role.OPERATOR: {"read", "operate"},
        Role.ANALYST: {"read", "query sql"},
        Role.AGENT: {"report self"},
    }


def test_keys_are_random_parse_back_and_match_only_their_secret():
    keys = [new_key() for _ in range(100)]
    assert len({k.key_id for k in keys}) == len({k.token for k in keys}) == 100
    for key in keys[:5]:
        parsed = parse_key(key.token)
        assert parsed is not None and parsed.key_id == key.key_id
        assert secret_matches(parsed.secret, key.secret_hash)
        other = parsed.secret[:-1] + ("B" if parsed.secret[-1] == "A" else "A")
        assert not secret_matches(other, key.secret_hash)
        assert key.token not in repr(key) and parsed.secret not in repr(parsed)


@given(st.text(max_size=80))
def test_only_well_formed_keys_parse(text):
    parsed = parse_key(text)
    if parsed is not None:
        assert text == f"aw_{parsed.key_id}_{parsed.secret}"
        assert len(parsed.key_id) == 12 and len(parsed.secret) == 43


def test_tricks_do_not_parse():
    key = new_key().token
    for trick in (key + "\n", " " + key, key.upper(), key + "=", key.replace("_", "-", 1),
                  f"Bearer {key}", key[:-1], key + "x"):  # fmt: skip
        assert parse_key(trick) is None, trick
