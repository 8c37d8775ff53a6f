"""Behaviour clusters: agents grouped by how they behave, from their assignment scores.

The seed's "agent clustering by capabilities and performance", on the stream. Every
``AssignmentScore`` record the shards publish (``agents.assignment_scores``) becomes a
**profile** of six numbers in 0…1 (:func:`profile_of`): reliability (success rate),
slowness (response time on a log scale between a floor and a ceiling), load (active
tasks / capacity), SLA (share of deadlines met), cheapness (the cost component) and
the risk of failure (``p_fail``, left out while the agent has none). One fleet-wide
model (:class:`BehaviourClusters`) groups the profiles with River's online k-means and
says, per agent, which group it belongs to.

**Why River's KMeans is seeded here.** Measured (``docs/orchestration-clusters.md``:
four separated synthetic groups, 200 agents, 20 records each, 10 seeds): River's
``cluster.KMeans`` as it comes (centres drawn from N(0, 1), halflife 0.5) put every agent
in one cluster (adjusted Rand index 0.00); with centres drawn near the data
(mu 0.5, sigma 0.25, halflife 0.05) it still left one or two centres dead (ARI ≈ 0.5).
The model therefore holds the records of a warm-up (``cluster_warmup_records``, the
latest profile per agent), places the centres on them with k-means++ and a few Lloyd
passes (best of :data:`SEEDINGS`), and from then on moves them with River's own rule
(``KMeans.learn_one``: the nearest centre moves by ``halflife`` toward each profile).
Seeded so, the same runs found the four groups every time (ARI 1.00).

**Dead centres.** A warm-up need not show every behaviour (at a fleet's start no agent
has done a task yet): a centre may then win no profile while groups share another. Every
``cluster_revival_records`` records, a centre that won less than :data:`DEAD_SHARE` of
its fair share is placed on the profile of that block served worst (farthest from its
nearest centre), if that one is farther than ``cluster_revival_distance``: a behaviour no
centre stands for gets one; a fleet with fewer behaviours than centres is left alone.

**Stable ids.** A cluster's id is the slot of its centre in the River model. A centre is
only moved a ``halflife`` step toward each profile it wins, so the id follows its group
as the group drifts. A centre is placed anew only when dead (its group had almost no
records for a whole block): then its id names the new group, and the summary says so.
The seeded centres are numbered in order of reliability (0: the most reliable), so a
replay of the same records gives the same ids.

**Hysteresis.** An agent moves to another cluster only when that cluster's centre is
nearer than its own by the share ``cluster_switch_margin`` of its own distance and by
``cluster_switch_min_gain`` at least, on ``cluster_switch_confirmations`` records in a row
(a record in between that does not confirm starts the count again): an agent near a
border keeps its cluster, and two centres closer than ``cluster_switch_min_gain`` (one
behaviour split in two, when the fleet has fewer behaviours than clusters) never trade
agents (an agent's distances to them differ by less than the distance between them).

What it says: a ``cluster_changed`` event (key = the agent; payload ``{"cluster",
"distance"}``) when an agent's cluster changes (its first cluster included), and a
``cluster_summary`` (agent and tenant ``*``; payload: every cluster's centroid and its
description in words, :func:`describe`) after the warm-up, when a description's words
change (no sooner than a tenth of ``cluster_summary_interval_s`` after the previous one),
and at least every ``cluster_summary_interval_s`` of event time while records flow.

>>> model = BehaviourClusters(n_clusters=2, warmup_records=4, switch_confirmations=1)
>>> def record(agent, success, ms, t):
...     return {"agent_id": agent, "tenant_id": "t1", "timestamp": t, "state": "active",
...             "success_rate": success, "response_time_ms": ms, "active_tasks": 0,
...             "capacity": 4, "sla_met_rate": success, "cost": 0.5, "p_fail": None}
>>> events = []
>>> for t, (agent, success, ms) in enumerate([("a1", 0.99, 50), ("a2", 0.6, 5000),
...                                           ("a3", 0.98, 60), ("a4", 0.55, 4000)]):
...     events += model.observe(record(agent, success, ms, float(t)))
>>> sorted((e["agent_id"], e["payload"]["cluster"]) for e in events
...        if e["type"] == "cluster_changed")
[('a1', 0), ('a2', 1), ('a3', 0), ('a4', 1)]
>>> for described in events[-1]["payload"]["clusters"]:
...     print(described["cluster"], described["description"])
0 fast, reliable, meets deadlines, lightly loaded
1 slow, unreliable, misses deadlines, lightly loaded
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from river import cluster

from schemas.events import CLUSTER_CHANGED, CLUSTER_SUMMARY, FLEET

#: The profile's features, in the order descriptions name them.
FEATURES = ("slowness", "reliability", "sla", "load", "cheapness", "failure_risk")
#: The actor of the events the model derives.
ACTOR = "system"
#: How many k-means++ seedings of the warm-up are tried (the one of least inertia wins).
SEEDINGS = 5
#: Lloyd passes over the warm-up after each seeding.
LLOYD_PASSES = 10
#: A centre that wins less than this share of its fair share of a block's records
#: (``1 / n_clusters`` of them) is dead.
DEAD_SHARE = 0.05
#: New words (or a centre placed anew) publish a summary no sooner than this share of
#: ``cluster_summary_interval_s`` after the last one: a centre hovering at the edge of a
#: word's band does not flood agents.state (and the audit log) with summaries.
WORDS_MIN_GAP_SHARE = 0.1
#: How a centroid is put in words: feature → ((at most, word), (at least, word)), on the
#: profile's 0…1 scale; a feature between the two says nothing. Slowness 0.4 is 158 ms,
#: 0.6 is 631 ms with the default floor (10 ms) and ceiling (10 s).
WORDS: dict[str, tuple[tuple[float, str], tuple[float, str]]] = {
    "slowness": ((0.4, "fast"), (0.6, "slow")),
    "reliability": ((0.8, "unreliable"), (0.95, "reliable")),
    "sla": ((0.8, "misses deadlines"), (0.95, "meets deadlines")),
    "load": ((0.3, "lightly loaded"), (0.8, "heavily loaded")),
    "cheapness": ((0.3, "costly"), (0.7, "cheap")),
    "failure_risk": ((-1.0, ""), (0.3, "at risk of failure")),
}


def profile_of(
    record: Mapping, floor_ms: float = 10.0, ceiling_ms: float = 10_000.0
) -> dict[str, float]:
    """An ``AssignmentScore`` record as a profile of numbers in 0…1 (see the module
    docstring); ``failure_risk`` only when the record has a ``p_fail``. Response times
    are put on a log scale: 0 at ``floor_ms`` or less, 1 at ``ceiling_ms`` or more.

    >>> profile = profile_of({"success_rate": 0.9, "response_time_ms": 100.0,
    ...     "active_tasks": 1, "capacity": 4, "sla_met_rate": 1.0, "cost": 0.25,
    ...     "p_fail": None})
    >>> {k: round(v, 3) for k, v in profile.items()}
    {'slowness': 0.333, 'reliability': 0.9, 'sla': 1.0, 'load': 0.25, 'cheapness': 0.25}
    """
    capacity = int(record["capacity"])
    load = 1.0 if capacity <= 0 else int(record["active_tasks"]) / capacity
    ms = max(float(record["response_time_ms"]), floor_ms)
    profile = {
        "slowness": math.log(ms / floor_ms) / math.log(ceiling_ms / floor_ms),
        "reliability": float(record["success_rate"]),
        "sla": float(record["sla_met_rate"]),
        "load": load,
        "cheapness": float(record["cost"]),
    }
    p_fail = record.get("p_fail")
    if p_fail is not None:
        profile["failure_risk"] = float(p_fail)
    return {k: min(1.0, max(0.0, v)) for k, v in profile.items()}


def response_time_ms(slowness: float, floor_ms: float = 10.0, ceiling_ms: float = 10_000.0):
    """The response time a slowness stands for (the inverse of :func:`profile_of`'s scale).

    >>> round(response_time_ms(1 / 3))
    100
    """
    return floor_ms * (ceiling_ms / floor_ms) ** slowness


def describe(centroid: Mapping[str, float]) -> str:
    """A centroid in words (:data:`WORDS`), e.g. "fast, reliable, lightly loaded";
    "average" when no feature is out of the ordinary.

    >>> describe({"slowness": 0.3, "reliability": 0.99, "sla": 0.9, "load": 0.1,
    ...           "cheapness": 0.5})
    'fast, reliable, lightly loaded'
    >>> describe({"slowness": 0.5, "reliability": 0.9, "load": 0.5, "failure_risk": 0.4})
    'at risk of failure'
    >>> describe({"slowness": 0.5})
    'average'
    """
    words = []
    for feature, ((low, low_word), (high, high_word)) in WORDS.items():
        value = centroid.get(feature)
        if value is None:
            continue
        if value <= low and low_word:
            words.append(low_word)
        elif value >= high:
            words.append(high_word)
    return ", ".join(words) or "average"


def distance(profile: Mapping[str, float], centroid: Mapping[str, float]) -> float:
    """Euclidean distance over the features the profile has (a profile without
    ``failure_risk`` is judged on the other five).

    >>> distance({"load": 1.0, "sla": 0.5}, {"load": 0.0, "sla": 0.5, "cheapness": 1.0})
    1.0
    """
    return math.sqrt(sum((v - centroid.get(k, 0.0)) ** 2 for k, v in profile.items()))


@dataclass(slots=True)
class Membership:
    """An agent's cluster, and the cluster it may be moving to (with how many records in
    a row have confirmed the move)."""

    tenant_id: str
    cluster: int
    pending: int | None = None
    confirmations: int = 0


class BehaviourClusters:
    """The fleet's behaviour clusters (see the module docstring): a River ``KMeans``
    seeded from a warm-up, each agent's membership with hysteresis, and the events to
    publish. Picklable (it is the dataflow step's state, kept by recovery).

    ``n_clusters`` centres; ``halflife``: how far a centre moves toward each profile it
    wins; ``warmup_records``: records read before the centres are placed (at least
    ``n_clusters`` agents must have sent one); ``switch_margin``, ``switch_min_gain`` and
    ``switch_confirmations``: the hysteresis; ``summary_interval_s``: the longest event
    time between two summaries; ``floor_ms``/``ceiling_ms``: the response-time scale;
    ``revival_records`` and ``revival_distance``: when a dead centre is placed anew.
    """

    def __init__(
        self,
        n_clusters: int = 4,
        halflife: float = 0.02,
        warmup_records: int = 200,
        switch_margin: float = 0.15,
        switch_confirmations: int = 2,
        switch_min_gain: float = 0.05,
        summary_interval_s: float = 300.0,
        floor_ms: float = 10.0,
        ceiling_ms: float = 10_000.0,
        revival_records: int = 1000,
        revival_distance: float = 0.25,
        seed: int = 0,
    ) -> None:
        self.n_clusters = n_clusters
        self.switch_margin = switch_margin
        self.switch_confirmations = switch_confirmations
        self.switch_min_gain = switch_min_gain
        self.summary_interval_s = summary_interval_s
        self.warmup_records = warmup_records
        self.floor_ms, self.ceiling_ms = floor_ms, ceiling_ms
        self.kmeans = cluster.KMeans(n_clusters=n_clusters, halflife=halflife, seed=seed)
        self.rng = random.Random(seed)
        #: The warm-up: the latest profile and tenant of each agent, until the centres
        #: are placed (then None).
        self.warmup: dict[str, tuple[str, dict[str, float]]] | None = {}
        self.records = 0
        #: How many profiles each centre has won since it was placed.
        self.wins = [0] * n_clusters
        self.revival_records, self.revival_distance = revival_records, revival_distance
        #: The current block: its records, each centre's wins, the worst-served profile.
        self.block_records = 0
        self.block_wins = [0] * n_clusters
        self.worst: tuple[float, dict[str, float]] = (0.0, {})
        self.revived = 0
        self.members: dict[str, Membership] = {}
        self.described: list[str] = []
        self.summarized_at: float | None = None

    def __getstate__(self) -> dict:
        """The memberships as columns (a snapshot copies a few lists, not one object per
        agent: at 100,000 agents a deep copy of the objects took over a second)."""
        state = {name: getattr(self, name) for name in vars(self) if name != "members"}
        members = list(self.members.items())
        tenants: dict[str, int] = {}
        state["members"] = (
            [agent_id for agent_id, _ in members],
            np.fromiter((tenants.setdefault(m.tenant_id, len(tenants)) for _, m in members),
                        np.int32, len(members)),
            list(tenants),
            np.array([(m.cluster, -1 if m.pending is None else m.pending, m.confirmations)
                      for _, m in members], np.int16).reshape(-1, 3),
        )  # fmt: skip
        return state

    def __setstate__(self, state: dict) -> None:
        members = state.pop("members")
        self.__dict__.update(state)
        if isinstance(members, dict):  # (a snapshot from before the columns)
            self.members = members
            return
        ids, codes, tenants, memberships = members
        self.members = {
            agent_id: Membership(tenants[code], cluster, None if pending < 0 else pending, count)
            for agent_id, code, (cluster, pending, count) in zip(
                ids, codes.tolist(), memberships.tolist(), strict=True
            )
        }

    @classmethod
    def from_settings(cls, settings: object) -> BehaviourClusters:
        """The model with the ``cluster_*`` settings (:mod:`agentwatch.settings`)."""
        return cls(
            n_clusters=settings.cluster_count,
            halflife=settings.cluster_halflife,
            warmup_records=settings.cluster_warmup_records,
            switch_margin=settings.cluster_switch_margin,
            switch_confirmations=settings.cluster_switch_confirmations,
            switch_min_gain=settings.cluster_switch_min_gain,
            summary_interval_s=settings.cluster_summary_interval_s,
            floor_ms=settings.cluster_response_time_floor_ms,
            ceiling_ms=settings.cluster_response_time_ceiling_ms,
            revival_records=settings.cluster_revival_records,
            revival_distance=settings.cluster_revival_distance,
        )

    # --- the step ------------------------------------------------------------------
    def observe(self, record: Mapping) -> list[dict]:
        """Learn from one ``AssignmentScore`` record (a dict); the events it causes: the
        agent's ``cluster_changed`` if it moved (every warm-up agent's at the end of the
        warm-up), a ``cluster_summary`` when one is due. A decommissioned agent leaves
        the clusters (no event: its state says it is gone)."""
        agent_id, tenant_id = str(record["agent_id"]), str(record["tenant_id"])
        at = float(record["timestamp"])
        if record.get("state") == "decommissioned":
            self.members.pop(agent_id, None)
            if self.warmup is not None:
                self.warmup.pop(agent_id, None)
            return []
        profile = profile_of(record, self.floor_ms, self.ceiling_ms)
        self.records += 1
        if self.warmup is not None:
            self.warmup[agent_id] = (tenant_id, profile)
            if self.records < self.warmup_records or len(self.warmup) < self.n_clusters:
                return []
            return self._place_centres(at)
        events = []
        nearest = self._nearest(profile)
        moved = self._assign(agent_id, tenant_id, profile, at, nearest)
        if moved is not None:
            events.append(moved)
        self.wins[nearest[0]] += 1
        self.block_wins[nearest[0]] += 1
        self.block_records += 1
        if nearest[1] > self.worst[0]:
            self.worst = (nearest[1], dict(profile))
        for feature, value in profile.items():  # (a feature new to the model, p_fail once
            for centre in self.kmeans.centers.values():  # predicted, starts where it is)
                centre.setdefault(feature, value)
        # River's KMeans update (``learn_predict_one``), on the centre found nearest above
        # on the profile's own features, without searching for it a second time
        centre, step = self.kmeans.centers[nearest[0]], self.kmeans.halflife
        for feature, value in profile.items():
            centre[feature] += step * (value - centre[feature])
        if self.block_records >= self.revival_records:
            self._revive_dead_centre()
        if self._summary_due(at, nearest[0]):
            events.append(self.summary(at))
        return events

    # --- asking it -----------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Whether the centres are placed (the warm-up is over)."""
        return self.warmup is None

    def centroids(self) -> list[dict[str, float]]:
        """Each cluster's centre (by id), on the profile's 0…1 scale."""
        return [
            {f: self.kmeans.centers[i][f] for f in FEATURES if f in self.kmeans.centers[i]}
            for i in range(self.n_clusters)
        ]

    def cluster_of(self, agent_id: str) -> int | None:
        """The agent's cluster (None: not clustered yet, or gone)."""
        member = self.members.get(agent_id)
        return None if member is None else member.cluster

    def summary(self, at: float) -> dict:
        """The ``cluster_summary`` event: every cluster's id, description, centroid (0…1)
        and the same in the record's units (``profile``), and profiles won since placed."""
        clusters = []
        for i, centroid in enumerate(self.centroids()):
            profile = {
                "success_rate": centroid["reliability"],
                "response_time_ms": response_time_ms(
                    centroid["slowness"], self.floor_ms, self.ceiling_ms
                ),
                "load": centroid["load"],
                "sla_met_rate": centroid["sla"],
                "cost": centroid["cheapness"],
                "p_fail": centroid.get("failure_risk"),
            }
            clusters.append(
                {
                    "cluster": i,
                    "description": describe(centroid),
                    "centroid": {k: round(v, 4) for k, v in centroid.items()},
                    "profile": {k: None if v is None else round(v, 4) for k, v in profile.items()},
                    "records": self.wins[i],
                }
            )
        self.described = [c["description"] for c in clusters]
        self.summarized_at = at
        return _event(CLUSTER_SUMMARY, FLEET, FLEET, at, {"clusters": clusters})

    # --- the steps -------------------------------------------------------------------
    def _nearest(self, profile: Mapping[str, float]) -> tuple[int, float]:
        distances = [distance(profile, c) for c in self.kmeans.centers.values()]
        best = min(range(self.n_clusters), key=distances.__getitem__)
        return best, distances[best]

    def _assign(
        self,
        agent_id: str,
        tenant_id: str,
        profile: Mapping[str, float],
        at: float,
        nearest: tuple[int, float],
    ) -> dict | None:
        """The agent's membership after this profile (``nearest``: the nearest centre and
        its distance); its ``cluster_changed`` if it moved."""
        nearest, nearest_distance = nearest
        member = self.members.get(agent_id)
        if member is None:
            self.members[agent_id] = Membership(tenant_id, nearest)
            return _changed(agent_id, tenant_id, at, nearest, nearest_distance)
        if nearest == member.cluster:
            member.pending, member.confirmations = None, 0
            return None
        own = distance(profile, self.kmeans.centers[member.cluster])
        if nearest_distance > min(own * (1.0 - self.switch_margin), own - self.switch_min_gain):
            member.pending, member.confirmations = None, 0  # near the border: stay
            return None
        if member.pending != nearest:
            member.pending, member.confirmations = nearest, 0
        member.confirmations += 1
        if member.confirmations < self.switch_confirmations:
            return None
        member.cluster, member.pending, member.confirmations = nearest, None, 0
        return _changed(agent_id, tenant_id, at, nearest, nearest_distance)

    def _place_centres(self, at: float) -> list[dict]:
        """End of the warm-up: place the centres on the warm-up's profiles (k-means++ and
        Lloyd, best of :data:`SEEDINGS`), number them by reliability, and give every
        warm-up agent its cluster."""
        warmup, self.warmup = self.warmup, None
        points = [profile for _, profile in warmup.values()]
        seeded = min(
            (_lloyd(points, _kmeans_plus_plus(points, self.n_clusters, self.rng))
             for _ in range(SEEDINGS)),
            key=lambda centres: _inertia(points, centres),
        )  # fmt: skip
        seeded.sort(key=lambda c: (-c.get("reliability", 0.0), c.get("slowness", 0.0)))
        for i, centre in enumerate(seeded):
            self.kmeans.centers[i].clear()
            self.kmeans.centers[i].update(centre)
        events = []
        for agent_id, (tenant_id, profile) in warmup.items():
            moved = self._assign(agent_id, tenant_id, profile, at, self._nearest(profile))
            if moved is not None:
                events.append(moved)
        events.append(self.summary(at))
        return events

    def _revive_dead_centre(self) -> None:
        """End of a block: the deadest centre, if one is dead, is placed on the block's
        worst-served profile when no centre is near it (the summary then follows: its words
        are forgotten)."""
        fair = self.block_records / self.n_clusters
        dead = [i for i in range(self.n_clusters) if self.block_wins[i] < DEAD_SHARE * fair]
        away, profile = self.worst
        if dead and away > self.revival_distance:
            chosen = min(dead, key=lambda i: (self.block_wins[i], i))
            centre = self.kmeans.centers[chosen]
            placed = {**centre, **profile}
            centre.clear()
            centre.update(placed)
            self.wins[chosen] = 0
            self.described[chosen] = ""
            self.revived += 1
        self.block_records = 0
        self.block_wins = [0] * self.n_clusters
        self.worst = (0.0, {})

    def _summary_due(self, at: float, moved: int) -> bool:
        """Whether a summary is due: the interval has passed, or the words of the centre
        that just ``moved`` changed (or a centre was placed anew) and the last summary is
        older than :data:`WORDS_MIN_GAP_SHARE` of the interval."""
        if self.summarized_at is None or at - self.summarized_at >= self.summary_interval_s:
            return True
        if at - self.summarized_at < WORDS_MIN_GAP_SHARE * self.summary_interval_s:
            return False
        if "" in self.described:  # a centre placed anew
            return True
        return describe(self.kmeans.centers[moved]) != self.described[moved]


def _changed(agent_id: str, tenant_id: str, at: float, cluster_id: int, away: float) -> dict:
    return _event(
        CLUSTER_CHANGED,
        agent_id,
        tenant_id,
        at,
        {"cluster": cluster_id, "distance": round(away, 4)},
    )


def _event(kind: str, agent_id: str, tenant_id: str, at: float, payload: dict) -> dict:
    """A ``LifecycleEvent`` dict for ``agents.state``."""
    return {
        "type": kind,
        "agent_id": agent_id,
        "tenant_id": tenant_id,
        "actor": ACTOR,
        "timestamp": at,
        "payload": payload,
    }


def _kmeans_plus_plus(
    points: list[dict[str, float]], k: int, rng: random.Random
) -> list[dict[str, float]]:
    """k centres drawn from ``points``, each next one with probability proportional to its
    squared distance from those drawn (Arthur and Vassilvitskii, 2007)."""
    centres = [dict(points[rng.randrange(len(points))])]
    while len(centres) < k:
        weights = [min(distance(p, c) for c in centres) ** 2 for p in points]
        total = sum(weights)
        if total == 0.0:  # fewer distinct profiles than centres: repeat one
            centres.append(dict(points[rng.randrange(len(points))]))
            continue
        threshold, running = rng.random() * total, 0.0
        for point, weight in zip(points, weights, strict=True):
            running += weight
            if running >= threshold and weight > 0.0:
                centres.append(dict(point))
                break
    return centres


def _lloyd(points: list[dict[str, float]], centres: list[dict[str, float]]):
    """:data:`LLOYD_PASSES` passes of batch k-means from ``centres`` (a centre that wins no
    point stays where it is)."""
    for _ in range(LLOYD_PASSES):
        groups: list[list[dict[str, float]]] = [[] for _ in centres]
        for point in points:
            groups[min(range(len(centres)), key=lambda i: distance(point, centres[i]))].append(
                point
            )
        for i, group in enumerate(groups):
            if group:
                features = {f for p in group for f in p}
                centres[i] = {
                    f: sum(p[f] for p in group if f in p) / sum(1 for p in group if f in p)
                    for f in features
                }
    return centres


def _inertia(points: list[dict[str, float]], centres: list[dict[str, float]]) -> float:
    return sum(min(distance(p, c) for c in centres) ** 2 for p in points)
