"""The registry fold (agentwatch.directory): registration, lifecycle, health, score, threats
fold into one view per agent; a replay gives the same views; search filters, sorts, pages."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from agentwatch.directory import (
    RECENT_THREATS,
    AgentSearch,
    AgentView,
    Directory,
    agent_id_for,
    orphan_reason,
    search,
)

T0 = 1_800_000_000.0
DAY = 86_400.0


def registered(
    agent: str, tenant: str = "t1", name: str | None = None, at: float = T0, **payload: object
) -> dict:
    return {
        "type": "registered",
        "agent_id": agent,
        "tenant_id": tenant,
        "actor": "ops-1",
        "timestamp": at,
        "payload": {
            "name": name or f"name-{agent}",
            "agent_type": "bot",
            "owner": "team",
            **payload,
        },
    }


def state(agent: str, to: str, at: float, tenant: str = "t1") -> dict:
    return {
        "type": "status_changed",
        "agent_id": agent,
        "tenant_id": tenant,
        "actor": "system",
        "timestamp": at,
        "payload": {"to": to, "reason": f"now {to}"},
    }


def health(agent: str, value: float, tenant: str = "t1") -> dict:
    return {
        "type": "health_changed",
        "agent_id": agent,
        "tenant_id": tenant,
        "actor": "system",
        "timestamp": T0,
        "payload": {"health": value, "band": "ok"},
    }


def test_registration_fields_and_state_fold_into_the_view():
    registry = Directory()
    assert registry.apply(
        registered(
            "a1",
            capabilities=["chat", "ml"],
            tags={"env": "prod"},
            resources={"cpu_cores": 4},
            endpoint="https://a1:8443",
        )
    )
    registry.apply(state("a1", "active", T0 + 5))
    registry.apply(health("a1", 72.5))
    registry.apply_score(
        {
            "agent_id": "a1",
            "tenant_id": "t1",
            "timestamp": T0 + 6,
            "score": 60.0,
            "delta": -40.0,
            "cause": "x",
        }
    )
    view = registry.views["a1"]
    assert (view.name, view.agent_type, view.owner, view.capabilities) == (
        "name-a1",
        "bot",
        "team",
        ("chat", "ml"),
    )
    assert view.tags == {"env": "prod"} and view.endpoint == "https://a1:8443"
    assert (view.state, view.state_since, view.health, view.security_score) == (
        "active",
        T0 + 5,
        72.5,
        60.0,
    )
    assert registry.counted("t1") == 1


def test_a_name_is_one_agent_and_a_second_registration_changes_nothing():
    registry = Directory()
    assert registry.apply(registered("a1", name="Bot"))
    assert not registry.apply(registered("a2", name="Bot"))  # the name is a1's
    assert not registry.apply(registered("a1", name="Other"))  # a1 is registered already
    assert registry.apply(registered("a3", tenant="t2", name="Bot"))  # another tenant's name
    assert registry.agent_named("t1", "Bot") == "a1" and "a2" not in registry.views
    assert (registry.counted("t1"), registry.counted("t2")) == (1, 1)


def test_decommissioned_agents_leave_the_count_but_keep_their_name():
    registry = Directory()
    registry.apply(registered("a1", name="Bot"))
    registry.apply(state("a1", "decommissioned", T0 + 1))
    assert registry.counted("t1") == 0 and registry.agent_named("t1", "Bot") == "a1"


def test_quarantine_request_and_state():
    registry = Directory()
    registry.apply(registered("a1"))
    registry.apply({**state("a1", "x", T0), "type": "quarantine_requested"})
    assert registry.views["a1"].quarantine_requested
    registry.apply(state("a1", "quarantined", T0 + 1))
    view = registry.views["a1"]
    assert not view.quarantine_requested and view.quarantined_since == T0 + 1


def test_threats_keep_the_latest_episodes_and_update_in_place():
    registry = Directory()
    for i in range(RECENT_THREATS + 3):
        registry.apply_threat(
            {
                "agent_id": "a1",
                "tenant_id": "t1",
                "rule": "r",
                "first_seen": T0 + i,
                "last_seen": T0 + i,
            }
        )
    registry.apply_threat(
        {
            "agent_id": "a1",
            "tenant_id": "t1",
            "rule": "r",
            "first_seen": T0 + 7,
            "last_seen": T0 + 99,
        }
    )
    threats = registry.views["a1"].threats
    assert [t[0] - T0 for t in threats] == [7, 6, 5, 4, 3]
    assert threats[0][2]["last_seen"] == T0 + 99


def test_orphaned_without_owner_or_silent_past_the_horizon():
    auto = AgentView("a1", "t1", state="active", state_since=T0)
    assert "no owner" in orphan_reason(auto, T0, 7 * DAY)
    quiet = AgentView("a2", "t1", owner="o", registered_at=T0, state="offline", state_since=T0)
    assert orphan_reason(quiet, T0 + 6 * DAY, 7 * DAY) is None
    assert "silent for 8.0 days" in orphan_reason(quiet, T0 + 8 * DAY, 7 * DAY)
    never_beat = AgentView(
        "a3", "t1", owner="o", registered_at=T0, state="registered", state_since=T0
    )
    assert orphan_reason(never_beat, T0 + 8 * DAY, 7 * DAY) is not None
    beating = AgentView("a4", "t1", owner="o", registered_at=T0, state="active", state_since=T0)
    assert orphan_reason(beating, T0 + 80 * DAY, 7 * DAY) is None
    gone = AgentView("a5", "t1", state="decommissioned", state_since=T0)
    assert orphan_reason(gone, T0 + 80 * DAY, 7 * DAY) is None


def test_agent_id_is_deterministic_per_tenant_and_name():
    assert agent_id_for("t1", "a") == agent_id_for("t1", "a") != agent_id_for("t1", "b")


# --- search -----------------------------------------------------------------------


def fleet() -> list[AgentView]:
    return [
        AgentView(
            "a1",
            "t1",
            name="alpha",
            agent_type="bot",
            owner="ml",
            capabilities=("x", "y"),
            tags={"env": "prod", "zone": "eu"},
            state="active",
            security_score=90.0,
            health=80.0,
            registered_at=T0 + 3,
        ),
        AgentView(
            "a2",
            "t1",
            name="beta",
            agent_type="llm",
            owner="ops",
            capabilities=("x",),
            tags={"env": "dev"},
            state="offline",
            security_score=30.0,
            health=20.0,
            registered_at=T0 + 1,
        ),
        AgentView(
            "a3",
            "t1",
            name="gamma",
            agent_type="bot",
            owner="",
            state="active",
            health=None,
            registered_at=None,
        ),
        AgentView(
            "a4",
            "t2",
            name="alpha",
            agent_type="bot",
            owner="ml",
            state="active",
            registered_at=T0 + 2,
        ),
    ]


def ids(query: AgentSearch) -> list[str]:
    no_owner = lambda v: None if v.owner else "no owner"  # noqa: E731
    return [v.agent_id for v in search(fleet(), query, 100.0, no_owner)]


def test_search_filters():
    assert ids(AgentSearch(tenant_id="t1")) == ["a1", "a2", "a3"]
    assert ids(AgentSearch(states=frozenset({"offline"}))) == ["a2"]
    assert ids(AgentSearch(agent_types=frozenset({"bot"}), tenant_id="t1")) == ["a1", "a3"]
    assert ids(AgentSearch(tags=(("env", "prod"), ("zone", "eu")))) == ["a1"]
    assert ids(AgentSearch(tags=(("env", "prod"), ("zone", "us")))) == []
    assert ids(AgentSearch(capabilities=("x", "y"))) == ["a1"]
    assert ids(AgentSearch(capabilities=("x",))) == ["a1", "a2"]
    assert ids(AgentSearch(min_score=50.0, tenant_id="t1")) == ["a1", "a3"]  # a3: initial 100
    assert ids(AgentSearch(max_score=50.0)) == ["a2"]
    assert ids(AgentSearch(text="OPS")) == ["a2"]
    assert ids(AgentSearch(text="a3")) == ["a3"]
    assert ids(AgentSearch(orphaned=True)) == ["a3"]
    assert ids(AgentSearch(orphaned=False, tenant_id="t1")) == ["a1", "a2"]


def test_search_sorts_with_ties_by_id():
    assert ids(AgentSearch()) == ["a1", "a4", "a2", "a3"]  # name, then id
    assert ids(AgentSearch(sort="name", descending=True)) == ["a3", "a2", "a4", "a1"]
    assert ids(AgentSearch(sort="security_score")) == ["a2", "a1", "a3", "a4"]
    assert ids(AgentSearch(sort="health")) == ["a3", "a4", "a2", "a1"]  # unknown first
    assert ids(AgentSearch(sort="registered_at")) == ["a3", "a2", "a4", "a1"]
    assert ids(AgentSearch(sort="state", tenant_id="t1")) == ["a1", "a3", "a2"]


# --- replay: the same events give the same views ------------------------------------

AGENTS = ("a1", "a2", "a3")
STATES = ("active", "idle", "offline", "quarantined", "decommissioned", "maintenance")


@st.composite
def events(draw) -> tuple[str, dict]:
    agent = draw(st.sampled_from(AGENTS))
    tenant = draw(st.sampled_from(("t1", "t2")))
    at = T0 + draw(st.integers(0, 1000))
    kind = draw(st.sampled_from(("registered", "state", "health", "score", "threat", "ask")))
    if kind == "registered":
        return "event", registered(agent, tenant, name=draw(st.sampled_from(("n1", "n2"))), at=at)
    if kind == "state":
        return "event", state(agent, draw(st.sampled_from(STATES)), at, tenant)
    if kind == "health":
        return "event", health(agent, draw(st.floats(0, 100)), tenant)
    if kind == "ask":
        return "event", {**state(agent, "x", at, tenant), "type": "quarantine_requested"}
    if kind == "score":
        return "score", {
            "agent_id": agent,
            "tenant_id": tenant,
            "timestamp": at,
            "score": draw(st.floats(0, 100)),
            "delta": 0.0,
            "cause": "x",
        }
    return "threat", {
        "agent_id": agent,
        "tenant_id": tenant,
        "rule": "r",
        "first_seen": at,
        "last_seen": at,
    }


def fold(log: list[tuple[str, dict]]) -> Directory:
    registry = Directory()
    for kind, item in log:
        {"event": registry.apply, "score": registry.apply_score, "threat": registry.apply_threat}[
            kind
        ](copy.deepcopy(item))
    return registry


def snapshot(registry: Directory) -> tuple:
    counts = {t: registry.counted(t) for t in ("t1", "t2")}
    names = {(t, n): registry.agent_named(t, n) for t in ("t1", "t2") for n in ("n1", "n2")}
    return registry.views, counts, names


@settings(max_examples=200, deadline=None)
@given(st.lists(events(), max_size=40), st.randoms())
def test_a_replay_gives_the_same_views_whatever_the_interleaving_of_agents(log, rng):
    once = fold(log)
    assert snapshot(fold(log)) == snapshot(once)  # the same log again
    # another interleaving of the agents' events (each agent's own order kept): the same
    queues = {a: [e for e in log if e[1]["agent_id"] == a] for a in AGENTS}
    shuffled = []
    while any(queues.values()):
        agent = rng.choice([a for a in AGENTS if queues[a]])
        shuffled.append(queues[agent].pop(0))
    if not _names_contended(log):
        assert snapshot(fold(shuffled)) == snapshot(once)
    # the count is what the views say
    for tenant in ("t1", "t2"):
        expected = sum(
            1
            for v in once.views.values()
            if v.tenant_id == tenant and v.registered and v.state != "decommissioned"
        )
        assert once.counted(tenant) == expected
        assert once.by_tenant.get(tenant, {}) == {
            a: v for a, v in once.views.items() if v.tenant_id == tenant
        }


def _names_contended(log: list[tuple[str, dict]]) -> bool:
    """Whether two agents registered one name in one tenant (then the first in the log
    wins: the order across agents matters, as it does for the API that refuses the second)."""
    seen: dict[tuple[str, str], set[str]] = {}
    for kind, item in log:
        if kind == "event" and item["type"] == "registered":
            seen.setdefault((item["tenant_id"], item["payload"]["name"]), set()).add(
                item["agent_id"]
            )
    return any(len(agents) > 1 for agents in seen.values())
