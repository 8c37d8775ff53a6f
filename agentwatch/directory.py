"""The directory of agents, as a fold: lifecycle events, score changes and threats → one
:class:`AgentView` per agent, and the questions asked of it (is a name taken, how
many agents a tenant has, is an agent orphaned, which agents match a search).

The fold is pure (no Kafka, no clock): the API's projection (:mod:`api.projection`)
feeds it what it reads from the topics, in log order per agent, and a replay of the
same events gives the same views. Events of an agent arrive in order (they share
the agent's key, hence a partition); events of different agents may interleave in
any order without changing the result.

(The dataflow's own registry, which screens heartbeats, is :mod:`agentwatch.registry`.)

>>> registry = Directory()
>>> registry.apply({"type": "registered", "agent_id": "a1", "tenant_id": "t1",
...     "actor": "ops-1", "timestamp": 1.8e9, "payload": {"name": "Agent-001",
...     "agent_type": "bot", "owner": "team-ml", "capabilities": ["chat"]}})
True
>>> registry.apply({"type": "status_changed", "agent_id": "a1", "tenant_id": "t1",
...     "actor": "system", "timestamp": 1.8e9 + 5, "payload": {"to": "active"}})
True
>>> view = registry.views["a1"]
>>> view.name, view.state, view.state_since - 1.8e9, registry.agent_named("t1", "Agent-001")
('Agent-001', 'active', 5.0, 'a1')
>>> registry.counted("t1")
1
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

#: How many of an agent's latest threats a view keeps.
RECENT_THREATS = 5
#: States in which an agent beats (the dataflow moves a silent one to offline): it is
#: not silent however long it stays there.
RUNNING_STATES = frozenset({"active", "idle", "busy", "degraded"})
#: The state of an agent that is gone: it does not count against its tenant's limit
#: and is never orphaned.
GONE = "decommissioned"
#: What a search may sort by.
SORT_KEYS = ("name", "security_score", "health", "state", "registered_at")
SortKey = Literal["name", "security_score", "health", "state", "registered_at"]


def agent_id_for(tenant_id: str, name: str) -> str:
    """The agent id registration gives ``name`` in ``tenant_id`` when the caller chooses
    none: the same for the same pair, so two API processes racing to register one name
    make one agent (the dataflow refuses the second ``registered`` of an id).

    >>> agent_id_for("t1", "Agent-001") == agent_id_for("t1", "Agent-001")
    True
    >>> agent_id_for("t1", "Agent-001") != agent_id_for("t2", "Agent-001")
    True
    >>> agent_id_for("t1", "Agent-001")[:4], len(agent_id_for("t1", "Agent-001"))
    ('agt-', 28)
    """
    digest = hashlib.sha256(f"{tenant_id}\x00{name}".encode()).hexdigest()
    return f"agt-{digest[:24]}"


@dataclass(slots=True)
class AgentView:
    """What the registry knows of one agent. Registration fields are empty for an agent
    that registered itself with its first heartbeat (``registered_at`` None)."""

    agent_id: str
    tenant_id: str
    name: str = ""
    agent_type: str = ""
    owner: str = ""
    version: str = ""
    capabilities: tuple[str, ...] = ()
    max_concurrent_tasks: int = 1
    resources: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    endpoint: str | None = None
    registered_at: float | None = None
    registered_by: str = ""
    state: str | None = None
    state_since: float | None = None
    state_reason: str = ""
    health: float | None = None
    health_band: str | None = None
    security_score: float | None = None
    score_at: float | None = None
    quarantine_requested: bool = False
    quarantined_since: float | None = None
    quarantine_reason: str | None = None
    #: The latest threats, newest ``first_seen`` first: ``(first_seen, rule, record)``.
    threats: tuple[tuple[float, str, dict], ...] = ()
    #: Its behaviour cluster (``cluster_changed``; None: not clustered yet), its distance
    #: from the cluster's centre then, and when it joined (event time).
    cluster: int | None = None
    cluster_distance: float | None = None
    cluster_since: float | None = None

    @property
    def registered(self) -> bool:
        return self.registered_at is not None


class Directory:
    """The views of every agent, the names taken per tenant and how many agents each
    tenant holds (registered, not decommissioned). Not thread-safe: its owner locks."""

    def __init__(self) -> None:
        self.views: dict[str, AgentView] = {}
        #: The same views by tenant (a view's tenant never changes), for tenant searches.
        self.by_tenant: dict[str, dict[str, AgentView]] = {}
        self._names: dict[tuple[str, str], str] = {}
        self._counts: dict[str, int] = {}
        self._counted: set[str] = set()
        #: The behaviour clusters as last described (``cluster_summary``): id → its
        #: description, centroid, profile and records; and when (event time).
        self.clusters: dict[int, dict] = {}
        self.clusters_at: float | None = None

    # --- the fold ------------------------------------------------------------
    def apply(self, event: Mapping) -> bool:
        """Fold one lifecycle event (a ``LifecycleEvent`` dict from agents.control or
        agents.state); whether it changed anything. Kinds the registry does not keep,
        and fleet-wide events, are skipped.

        >>> registry = Directory()
        >>> registry.apply({"type": "rule_changed", "agent_id": "*", "tenant_id": "*",
        ...     "actor": "ops", "timestamp": 1.8e9, "payload": {}})
        False
        """
        kind = event.get("type")
        if kind == "cluster_summary":
            return self._cluster_summary(event, event.get("payload") or {})
        handler = _HANDLERS.get(kind)
        agent_id = event.get("agent_id")
        if handler is None or not agent_id or agent_id == "*":
            return False
        return handler(self, agent_id, event, event.get("payload") or {})

    def apply_score(self, record: Mapping) -> bool:
        """Fold one security score change (``ScoreChange`` dict from agents.security): the
        latest by event time wins.

        >>> registry = Directory()
        >>> registry.apply_score({"agent_id": "a1", "tenant_id": "t1", "timestamp": 5.0,
        ...     "score": 80.0, "delta": -20.0, "cause": "data_exfiltration"})
        True
        >>> registry.views["a1"].security_score
        80.0
        """
        view = self._view(record["agent_id"], record["tenant_id"])
        at = float(record["timestamp"])
        if view.score_at is not None and at < view.score_at:
            return False
        view.security_score, view.score_at = float(record["score"]), at
        return True

    def apply_threat(self, record: Mapping) -> bool:
        """Fold one threat (``Threat`` dict from agents.threats): the agent keeps its
        :data:`RECENT_THREATS` latest by ``first_seen``; a later message of the same
        episode (rule and ``first_seen``) replaces the earlier one."""
        view = self._view(record["agent_id"], record["tenant_id"])
        first_seen, rule = float(record["first_seen"]), str(record["rule"])
        kept = [t for t in view.threats if (t[0], t[1]) != (first_seen, rule)]
        kept.append((first_seen, rule, dict(record)))
        kept.sort(key=lambda t: (-t[0], t[1]))
        view.threats = tuple(kept[:RECENT_THREATS])
        return True

    # --- questions -----------------------------------------------------------
    def agent_named(self, tenant_id: str, name: str) -> str | None:
        """The agent registered under ``name`` in ``tenant_id`` (names stay taken after a
        decommission: the agent's history keeps its name)."""
        return self._names.get((tenant_id, name))

    def counted(self, tenant_id: str) -> int:
        """How many registered, not decommissioned agents ``tenant_id`` holds."""
        return self._counts.get(tenant_id, 0)

    # --- the steps -------------------------------------------------------------
    def _view(self, agent_id: str, tenant_id: str) -> AgentView:
        view = self.views.get(agent_id)
        if view is None:
            view = self.views[agent_id] = AgentView(agent_id, tenant_id)
            self.by_tenant.setdefault(tenant_id, {})[agent_id] = view
        return view

    def _recount(self, view: AgentView) -> None:
        counts = view.registered and view.state != GONE
        if counts == (view.agent_id in self._counted):
            return
        if counts:
            self._counted.add(view.agent_id)
            self._counts[view.tenant_id] = self._counts.get(view.tenant_id, 0) + 1
        else:
            self._counted.discard(view.agent_id)
            self._counts[view.tenant_id] -= 1

    def _registered(self, agent_id: str, event: Mapping, payload: Mapping) -> bool:
        tenant_id = event["tenant_id"]
        name = str(payload.get("name") or "")
        view = self.views.get(agent_id)
        if (view is not None and view.registered) or not name:
            return False  # the dataflow refuses a second registration of an id
        if self._names.get((tenant_id, name), agent_id) != agent_id:
            return False  # the name is another agent's
        if view is not None and view.tenant_id != tenant_id:
            return False  # an auto-registered agent of another tenant: not this one's
        view = self._view(agent_id, tenant_id)
        view.name = name
        view.agent_type = str(payload.get("agent_type") or "")
        view.owner = str(payload.get("owner") or "")
        view.version = str(payload.get("version") or "")
        view.capabilities = tuple(payload.get("capabilities") or ())
        view.max_concurrent_tasks = int(payload.get("max_concurrent_tasks") or 1)
        view.resources = dict(payload.get("resources") or {})
        view.tags = dict(payload.get("tags") or {})
        view.endpoint = payload.get("endpoint")
        view.registered_at = float(event["timestamp"])
        view.registered_by = str(event.get("actor") or "")
        if view.state is None:
            view.state, view.state_since = "registered", view.registered_at
        self._names[(tenant_id, name)] = agent_id
        self._recount(view)
        return True

    def _status_changed(self, agent_id: str, event: Mapping, payload: Mapping) -> bool:
        to = payload.get("to")
        if not isinstance(to, str) or not to:
            return False
        view = self._view(agent_id, event["tenant_id"])
        at = float(event["timestamp"])
        view.state, view.state_reason = to, str(payload.get("reason") or "")
        view.state_since = at if view.state_since is None else max(at, view.state_since)
        if to == "quarantined":
            view.quarantined_since, view.quarantine_reason = at, view.state_reason
        else:
            view.quarantined_since = view.quarantine_reason = None
        view.quarantine_requested = False
        self._recount(view)
        return True

    def _health_changed(self, agent_id: str, event: Mapping, payload: Mapping) -> bool:
        health = payload.get("health")
        if isinstance(health, bool) or not isinstance(health, int | float):
            return False
        view = self._view(agent_id, event["tenant_id"])
        view.health = float(health)
        band = payload.get("band")
        view.health_band = band if isinstance(band, str) else None
        return True

    def _quarantine_requested(self, agent_id: str, event: Mapping, payload: Mapping) -> bool:
        view = self._view(agent_id, event["tenant_id"])
        view.quarantine_requested = view.state != "quarantined"
        return True

    def _released(self, agent_id: str, event: Mapping, payload: Mapping) -> bool:
        view = self.views.get(agent_id)
        if view is None:
            return False
        view.quarantine_requested = False
        return True

    def _cluster_changed(self, agent_id: str, event: Mapping, payload: Mapping) -> bool:
        cluster = payload.get("cluster")
        if isinstance(cluster, bool) or not isinstance(cluster, int):
            return False
        view = self._view(agent_id, event["tenant_id"])
        at = float(event["timestamp"])
        if view.cluster_since is not None and at < view.cluster_since:
            return False
        away = payload.get("distance")
        view.cluster, view.cluster_since = cluster, at
        view.cluster_distance = float(away) if isinstance(away, int | float) else None
        return True

    def _cluster_summary(self, event: Mapping, payload: Mapping) -> bool:
        """The clusters' descriptions (a fleet-wide event): the latest by event time."""
        at = float(event["timestamp"])
        clusters = payload.get("clusters")
        if not isinstance(clusters, list) or (
            self.clusters_at is not None and at < self.clusters_at
        ):
            return False
        self.clusters = {
            int(c["cluster"]): dict(c)
            for c in clusters
            if isinstance(c, Mapping) and "cluster" in c
        }
        self.clusters_at = at
        return True


_HANDLERS: dict[str, Callable[[Directory, str, Mapping, Mapping], bool]] = {
    "registered": Directory._registered,
    "status_changed": Directory._status_changed,
    "health_changed": Directory._health_changed,
    "quarantine_requested": Directory._quarantine_requested,
    "released": Directory._released,
    "cluster_changed": Directory._cluster_changed,
}


def orphan_reason(
    view: AgentView, now: float, horizon_s: float, heartbeat_at: float | None = None
) -> str | None:
    """Why the agent is orphaned, or None: it has no owner (it registered itself with
    its first heartbeat), or it has been silent for longer than ``horizon_s``: no
    heartbeat (``heartbeat_at``, when known) and no state in which it beats since then.
    A decommissioned agent is never orphaned.

    >>> view = AgentView("a1", "t1", owner="team-ml", registered_at=0.0, state="offline",
    ...     state_since=0.0)
    >>> orphan_reason(view, now=86_400 * 8, horizon_s=86_400 * 7)
    'silent for 8.0 days (since 1970-01-01T00:00:00Z), past the horizon of 7.0 days'
    >>> orphan_reason(view, now=86_400 * 8, horizon_s=86_400 * 7, heartbeat_at=86_400 * 6)
    >>> orphan_reason(AgentView("a2", "t1", state="active", state_since=0.0), 1e9, 1.0)
    'no owner: it registered itself with its first heartbeat'
    """
    if view.state == GONE:
        return None
    if not view.owner:
        return "no owner: it registered itself with its first heartbeat"
    if view.state in RUNNING_STATES:
        return None
    silent_since = view.state_since if view.state_since is not None else view.registered_at
    if heartbeat_at is not None:
        silent_since = heartbeat_at if silent_since is None else max(silent_since, heartbeat_at)
    if silent_since is None or now - silent_since <= horizon_s:
        return None
    since = datetime.fromtimestamp(silent_since, UTC).isoformat(timespec="seconds")
    return (
        f"silent for {(now - silent_since) / 86_400:.1f} days (since "
        f"{since.replace('+00:00', 'Z')}), past the horizon of {horizon_s / 86_400:.1f} days"
    )


@dataclass(frozen=True, slots=True)
class AgentSearch:
    """A search of the registry (every filter optional; ``None`` matches all)."""

    tenant_id: str | None = None
    states: frozenset[str] | None = None
    agent_types: frozenset[str] | None = None
    tags: tuple[tuple[str, str], ...] = ()
    capabilities: tuple[str, ...] = ()
    min_score: float | None = None
    max_score: float | None = None
    text: str | None = None
    orphaned: bool | None = None
    cluster: int | None = None
    sort: SortKey = "name"
    descending: bool = False


def search(
    views: Iterable[AgentView],
    query: AgentSearch,
    initial_score: float,
    orphaned: Callable[[AgentView], str | None],
    limit: int | None = None,
    offset: int = 0,
) -> list[AgentView]:
    """The views that match ``query``, sorted (ties by agent id, so pages are stable):
    all of them, or the page ``[offset, offset + limit)`` (then only the first
    ``offset + limit`` are ordered, not every match: :func:`ordered`).
    An agent without a score change has ``initial_score``; ``orphaned`` says why an agent
    is orphaned (None: it is not).

    >>> views = [AgentView("a1", "t1", name="b", tags={"env": "prod"}, capabilities=("x",)),
    ...          AgentView("a2", "t1", name="a", security_score=10.0),
    ...          AgentView("a3", "t2", name="c")]
    >>> [v.agent_id for v in search(views, AgentSearch(tenant_id="t1"), 100.0, lambda v: None)]
    ['a2', 'a1']
    >>> query = AgentSearch(tags=(("env", "prod"),), capabilities=("x",))
    >>> [v.agent_id for v in search(views, query, 100.0, lambda v: None)]
    ['a1']
    >>> query = AgentSearch(max_score=50.0, sort="security_score", descending=True)
    >>> [v.agent_id for v in search(views, query, 100.0, lambda v: None)]
    ['a2']
    """
    found = matching(views, query, initial_score, orphaned)
    return ordered(found, query, initial_score, limit, offset)


def ordered(
    found: list[AgentView],
    query: AgentSearch,
    initial_score: float,
    limit: int | None = None,
    offset: int = 0,
) -> list[AgentView]:
    """``found`` in ``query``'s order, or its page ``[offset, offset + limit)``: a heap
    picks the first ``offset + limit`` (a page of 100 of 100,000 costs no full sort).

    >>> views = [AgentView(f"a{i}", "t1", name=str(9 - i)) for i in range(10)]
    >>> [v.name for v in ordered(views, AgentSearch(), 100.0, limit=3, offset=2)]
    ['2', '3', '4']
    >>> [v.name for v in ordered(views, AgentSearch(descending=True), 100.0, limit=2)]
    ['9', '8']
    """
    key = _sort_key(query.sort, initial_score)
    if limit is None:
        return sorted(found, key=key, reverse=query.descending)
    pick = heapq.nlargest if query.descending else heapq.nsmallest
    return pick(offset + limit, found, key=key)[offset:]


def matching(
    views: Iterable[AgentView],
    query: AgentSearch,
    initial_score: float,
    orphaned: Callable[[AgentView], str | None],
) -> list[AgentView]:
    """The views that match ``query``'s filters, unordered."""
    text = query.text.casefold() if query.text else None
    found = []
    for view in views:
        if query.tenant_id is not None and view.tenant_id != query.tenant_id:
            continue
        if query.states is not None and view.state not in query.states:
            continue
        if query.agent_types is not None and view.agent_type not in query.agent_types:
            continue
        if any(view.tags.get(key) != value for key, value in query.tags):
            continue
        if query.capabilities and not set(query.capabilities) <= set(view.capabilities):
            continue
        score = initial_score if view.security_score is None else view.security_score
        if query.min_score is not None and score < query.min_score:
            continue
        if query.max_score is not None and score > query.max_score:
            continue
        if text is not None and not any(
            text in part.casefold() for part in (view.name, view.owner, view.agent_id)
        ):
            continue
        if query.orphaned is not None and (orphaned(view) is not None) != query.orphaned:
            continue
        if query.cluster is not None and view.cluster != query.cluster:
            continue
        found.append(view)
    return found


def cluster_sizes(views: Iterable[AgentView]) -> dict[int, int]:
    """How many agents (not decommissioned) each behaviour cluster holds.

    >>> cluster_sizes([AgentView("a1", "t1", cluster=0), AgentView("a2", "t1", cluster=0),
    ...     AgentView("a3", "t1", cluster=2), AgentView("a4", "t1"),
    ...     AgentView("a5", "t1", cluster=2, state="decommissioned")])
    {0: 2, 2: 1}
    """
    sizes: dict[int, int] = {}
    for view in views:
        if view.cluster is not None and view.state != GONE:
            sizes[view.cluster] = sizes.get(view.cluster, 0) + 1
    return dict(sorted(sizes.items()))


def _sort_key(sort: str, initial_score: float) -> Callable[[AgentView], tuple]:
    """A total order on views by ``sort`` (missing values first ascending), then agent id."""
    if sort == "security_score":
        return lambda v: (initial_score if v.security_score is None else v.security_score,
                          v.agent_id)  # fmt: skip
    if sort == "health":
        return lambda v: (v.health is not None, v.health or 0.0, v.agent_id)
    if sort == "registered_at":
        return lambda v: (v.registered_at is not None, v.registered_at or 0.0, v.agent_id)
    if sort == "state":
        return lambda v: (v.state or "", v.agent_id)
    return lambda v: (v.name, v.agent_id)
