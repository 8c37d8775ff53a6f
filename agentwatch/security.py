"""Security score per agent: threats take points, a clean agent recovers, a low score quarantines.

The seed's "Agent Security Scoring": every agent starts at 100
(``security_initial_score``); each threat takes 15–30 points by kind
(``security_severity_points``, overridable by rule name in
``security_rule_points``), never below 0; once an agent has been clean for
``security_recovery_delay_s`` of event time its score climbs back by
``security_recovery_points_per_hour``, never above the initial score. A
threat that takes the score below ``security_quarantine_threshold`` (seed: 20)
quarantines the agent, once per crossing, when ``security_auto_quarantine``
is on: a ``status_changed`` lifecycle event and a ``quarantine`` order for
``agents.commands``, each naming the threats that took the score down. The
agent is not quarantined again until it is released (:meth:`SecurityScores.release`).

A :class:`SecurityScores` keeps every agent of a shard as rows of numpy
arrays, like :class:`agentwatch.fleet.FleetBaselines`. :meth:`SecurityScores.observe`
takes a batch's heartbeats (they move the agents' clocks, which is what lets
scores recover in event time) and the threats raised for it, merges them per
agent in time order (a threat after a heartbeat of the same time), and walks
them in passes of one event per agent: numpy per pass, Python only for the
records it emits. The result does not depend on where batches are cut.

Every change of a score is a :class:`schemas.models.ScoreChange` record, so
the history adds up (previous score + delta = score): one per deduction, and
recovery at most once per agent per ``security_recovery_report_interval_s``
plus once just before a deduction.

>>> from agentwatch.settings import Settings
>>> scores = SecurityScores.from_settings(Settings())
>>> def threat(rule, severity, t):
...     return {"agent_id": "a1", "tenant_id": "t1", "rule": rule, "severity": severity,
...             "category": "SECURITY", "first_seen": t, "last_seen": t}
>>> t0 = 1.8e9
>>> out = scores.apply_threats([threat("data_exfiltration", "CRITICAL", t0 + 60 * i)
...                             for i in range(3)])
>>> [(c["score"], c["delta"]) for c in out.score_changes], out.score_changes[0]["cause"]
([(70.0, -30.0), (40.0, -30.0), (10.0, -30.0)], 'data_exfiltration')
>>> [(c["command"], c["score"]) for c in out.commands]
[('quarantine', 10.0)]
>>> out.lifecycle_events[0]["payload"]["to"]
'quarantined'
>>> scores.apply_threats([threat("resource_abuse", "HIGH", t0 + 300)]).commands  # already
[]
>>> scores.breakdown("a1")["score"]
0.0
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from agentwatch.rows import AgentIndex, ArraySpec, RowArrays, passes
from agentwatch.settings import Settings
from schemas.events import STATUS_CHANGED
from schemas.heartbeats import HeartbeatBatch
from schemas.models import AGENT_STATES

#: Namespace of the deterministic ids of the orders this module issues.
COMMAND_NAMESPACE = uuid.UUID("6f1d8a52-3c57-4f0e-9a57-2b6f0c1e5a10")
_NO_STATUS = -1
_STATUS_CODE = {state: i for i, state in enumerate(AGENT_STATES)}


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """The security score's tunables, taken from :class:`Settings`.

    >>> SecurityConfig.from_settings(Settings()).points("resource_abuse", "HIGH")
    20.0
    """

    initial_score: float
    severity_points: dict[str, float]
    default_points: float
    rule_points: dict[str, float]
    recovery_per_s: float
    recovery_delay_s: float
    report_interval_s: float
    quarantine_threshold: float
    auto_quarantine: bool
    release_resets_score: bool
    breakdown_size: int

    @classmethod
    def from_settings(cls, settings: Settings) -> SecurityConfig:
        """Pick the security score's numbers out of the settings."""
        s = settings
        return cls(
            initial_score=s.security_initial_score,
            severity_points=dict(s.security_severity_points),
            default_points=s.security_default_points,
            rule_points=dict(s.security_rule_points),
            recovery_per_s=s.security_recovery_points_per_hour / 3600.0,
            recovery_delay_s=s.security_recovery_delay_s,
            report_interval_s=s.security_recovery_report_interval_s,
            quarantine_threshold=s.security_quarantine_threshold,
            auto_quarantine=s.security_auto_quarantine,
            release_resets_score=s.security_release_resets_score,
            breakdown_size=s.security_breakdown_size,
        )

    def points(self, rule: str, severity: str) -> float:
        """Points a threat of ``rule`` with ``severity`` takes (0…100)."""
        points = self.rule_points.get(rule)
        if points is None:
            points = self.severity_points.get(severity, self.default_points)
        return float(min(max(points, 0.0), 100.0))


@dataclass(slots=True)
class SecurityOutput:
    """What one call produced, as plain dicts in the layouts of :mod:`schemas.models`:
    ``ScoreChange`` (the score history), ``LifecycleEvent`` (``status_changed`` to
    quarantined, for ``agents.state``) and ``AgentCommand`` (for ``agents.commands``)."""

    score_changes: list[dict] = field(default_factory=list)
    lifecycle_events: list[dict] = field(default_factory=list)
    commands: list[dict] = field(default_factory=list)


class SecurityScores(RowArrays):
    """The security scores of one shard of agents (one row per agent).

    Per agent: the score and its clock, the time of its last threat, the last
    recorded score and when, the quarantine flag and its last reported status — see
    :meth:`bytes_per_agent`. The latest deductions (rule code, points, whole second; at
    most ``breakdown_size``) are kept only for the agents that lost points
    (:attr:`rings`, by row): most agents of a fleet never do, and a ring of arrays for
    every agent cost 57 bytes each.

    >>> scores = SecurityScores(SecurityConfig.from_settings(Settings()))
    >>> scores.bytes_per_agent() <= 200
    True
    """

    def __init__(self, config: SecurityConfig, index: AgentIndex | None = None, capacity: int = 64):
        self.config = config
        self.rule_names: list[str] = []  # rule code → name (shared by the shard)
        self._rule_code: dict[str, int] = {}
        #: row → its latest deductions, oldest first: (rule code, points, whole second)
        self.rings: dict[int, list[tuple[int, int, int]]] = {}
        self._setup(_layout(config), index, capacity)

    def __setstate__(self, state: dict) -> None:
        if "ring_at" in state:  # (a snapshot from before the deductions were kept by row)
            state = dict(state)
            rule, points, at, head = (
                state.pop(name) for name in ("ring_rule", "ring_points", "ring_at", "ring_next")
            )
            arrays = state["_arrays"]
            state["_arrays"] = {n: spec for n, spec in arrays.items() if not n.startswith("ring_")}
            size = at.shape[1]
            state["rings"] = {
                row: [
                    (int(rule[row, s]), int(points[row, s]), int(at[row, s]))
                    for s in ((int(head[row]) + k) % size for k in range(size))
                    if at[row, s]
                ]
                for row in np.flatnonzero((at != 0).any(axis=1)).tolist()
            }
        self.__dict__.update(state)

    def configure(self, config: SecurityConfig) -> None:
        """Go on with new tunables (settings changed across a restart); a new
        breakdown size forgets the remembered deductions.

        >>> scores = SecurityScores.from_settings(Settings())
        >>> _ = scores.apply_threats([{"agent_id": "a1", "tenant_id": "t1", "rule": "x",
        ...     "severity": "HIGH", "last_seen": 1.8e9}])
        >>> scores.configure(SecurityConfig.from_settings(Settings(security_breakdown_size=4)))
        >>> after = scores.breakdown("a1")
        >>> after["score"], after["deductions"], scores.rings
        (80.0, [], {})
        """
        if config.breakdown_size != self.config.breakdown_size:
            self.rings.clear()
        self.config = config
        self._relayout(_layout(config))

    @classmethod
    def from_settings(cls, settings: Settings, index: AgentIndex | None = None) -> SecurityScores:
        """An empty shard with the settings' tunables (rows from ``index`` if given)."""
        return cls(SecurityConfig.from_settings(settings), index)

    # --- the stream ---------------------------------------------------------
    def observe(self, batch: HeartbeatBatch | None, threats: Iterable[dict] = ()) -> SecurityOutput:
        """Apply a batch's heartbeats and threats to the scores, per agent in event time.

        A heartbeat moves its agent's clock (the score recovers up to it); a
        threat moves the clock to its ``last_seen`` and takes its points. A
        threat older than its agent's clock takes its points at the clock. At
        one time, heartbeats come before threats.
        """
        out = SecurityOutput()
        threats = list(threats)
        n = 0 if batch is None else len(batch)
        if not n and not threats:
            return out
        rows = np.concatenate(
            [
                self._rows(batch.agent_id, batch.tenant_id) if n else np.empty(0, np.int64),
                self._rows([t["agent_id"] for t in threats], [t["tenant_id"] for t in threats]),
            ]
        )
        times = np.concatenate(
            [
                batch.timestamp if n else np.empty(0),
                np.fromiter((t["last_seen"] for t in threats), np.float64, len(threats)),
            ]
        )
        points = np.zeros(len(rows))
        for k, t in enumerate(threats):
            points[n + k] = self.config.points(t["rule"], t["severity"])
        if n and batch.status:
            self._note_status(rows[:n], batch)
        order = np.lexsort((np.arange(len(rows)) >= n, times, rows))
        for positions in passes(rows[order]):
            events = order[positions]
            self._step(rows[events], times[events], events - n, points[events], threats, out)
        return out

    def observe_time(self, batch: HeartbeatBatch) -> SecurityOutput:
        """Move the agents' clocks to their heartbeats (scores recover in event time)."""
        return self.observe(batch)

    def apply_threats(self, threats: Iterable[dict]) -> SecurityOutput:
        """Take the points of each threat (``Threat`` dicts), in each agent's time order."""
        return self.observe(None, threats)

    def _step(
        self,
        rows: np.ndarray,
        ts: np.ndarray,
        threat_index: np.ndarray,
        points: np.ndarray,
        threats: list[dict],
        out: SecurityOutput,
    ) -> None:
        """One event per agent row: recover up to its time, then take a threat's points."""
        cfg = self.config
        clock = self.clock[rows]
        now = np.maximum(clock, ts)
        start = np.maximum(clock, self.last_threat[rows] + cfg.recovery_delay_s)
        clean_s = np.where(np.isfinite(start), np.maximum(now - start, 0.0), 0.0)
        score = np.minimum(cfg.initial_score, self.score[rows] + cfg.recovery_per_s * clean_s)
        self.clock[rows] = now
        is_threat = threat_index >= 0
        reported = self.reported[rows]
        recovered = score > reported
        due = recovered & (is_threat | (now - self.reported_at[rows] >= cfg.report_interval_s))
        for k in np.flatnonzero(due).tolist():
            out.score_changes.append(
                self._change(int(rows[k]), now[k], score[k], score[k] - reported[k], "recovery")
            )
        self.reported[rows[due]] = score[due]
        self.reported_at[rows[due]] = now[due]
        taken = np.where(is_threat, np.minimum(points, score), 0.0)
        score -= taken
        self.score[rows] = score
        if not is_threat.any():
            return
        hit = np.flatnonzero(is_threat)
        self.last_threat[rows[hit]] = now[hit]
        lost = hit[taken[hit] > 0]
        for k in lost.tolist():
            row, threat = int(rows[k]), threats[int(threat_index[k])]
            self._remember(row, threat["rule"], float(taken[k]), float(now[k]))
            out.score_changes.append(
                self._change(
                    row, now[k], score[k], -taken[k], threat["rule"], threat.get("first_seen")
                )
            )
        self.reported[rows[lost]] = score[lost]
        self.reported_at[rows[lost]] = now[lost]
        if cfg.auto_quarantine:
            below = hit[score[hit] < cfg.quarantine_threshold]
            crossing = below[~self.quarantined[rows[below]]]
            for k in crossing.tolist():
                self._quarantine(int(rows[k]), float(now[k]), float(score[k]), out)
            self.quarantined[rows[crossing]] = True

    # --- records ------------------------------------------------------------
    def _change(
        self,
        row: int,
        at: float,
        score: float,
        delta: float,
        cause: str,
        first_seen: float | None = None,
    ) -> dict:
        return {
            **self.index.agent(row),
            "timestamp": float(at),
            "score": float(score),
            "delta": float(delta),
            "cause": cause,
            "first_seen": None if first_seen is None else float(first_seen),
        }

    def _quarantine(
        self,
        row: int,
        at: float,
        score: float,
        out: SecurityOutput,
        reason: str | None = None,
        actor: str = "system",
    ) -> None:
        """The lifecycle event and the order that quarantine agent ``row`` (the reason
        is the score's unless an operator gave one)."""
        agent = self.index.agent(row)
        deductions = self._deductions(row)
        if reason is None:
            named = ", ".join(f"{d['rule']} -{d['points']:g}" for d in deductions)
            reason = (
                f"security score {score:g} fell below the quarantine threshold "
                f"{self.config.quarantine_threshold:g}; latest deductions: {named}"
            )
        status = int(self.status[row])
        out.lifecycle_events.append(
            {
                "type": STATUS_CHANGED,
                **agent,
                "actor": actor,
                "timestamp": at,
                "payload": {
                    "from": AGENT_STATES[status] if status >= 0 else None,
                    "to": "quarantined",
                    "reason": reason,
                    "score": score,
                    "threats": deductions,
                },
            }
        )
        key = f"quarantine|{agent['tenant_id']}|{agent['agent_id']}|{at!r}"
        out.commands.append(
            {
                "command_id": str(uuid.uuid5(COMMAND_NAMESPACE, key)),
                **agent,
                "command": "quarantine",
                "reason": reason,
                "issued_at": at,
                "actor": actor,
                "score": score,
            }
        )

    # --- the breakdown ------------------------------------------------------
    def _remember(self, row: int, rule: str, points: float, at: float) -> None:
        code = self._rule_code.get(rule)
        if code is None:
            code = self._rule_code[rule] = len(self.rule_names)
            self.rule_names.append(rule)
        ring = self.rings.get(row)
        if ring is None:
            ring = self.rings[row] = []
        ring.append((code, max(1, min(255, round(points))), int(at)))
        if len(ring) > self.config.breakdown_size:
            del ring[: len(ring) - self.config.breakdown_size]

    def _deductions(self, row: int) -> list[dict]:
        """The agent's remembered deductions, newest first (a time of 0 is no time)."""
        return [
            {"rule": self.rule_names[code], "points": points, "at": float(at)}
            for code, points, at in reversed(self.rings.get(row, ()))
            if at
        ]

    def breakdown(self, agent_id: str) -> dict | None:
        """The agent's score as of its clock and the latest deductions that took it
        (newest first; points rounded, times to the second), or None if unknown.

        >>> scores = SecurityScores.from_settings(Settings())
        >>> _ = scores.apply_threats([{"agent_id": "a1", "tenant_id": "t1",
        ...     "rule": "excessive_errors", "severity": "HIGH", "last_seen": 1.8e9}])
        >>> scores.breakdown("a1")  # doctest: +NORMALIZE_WHITESPACE
        {'agent_id': 'a1', 'tenant_id': 't1', 'score': 80.0, 'as_of': 1800000000.0,
         'quarantined': False,
         'deductions': [{'rule': 'excessive_errors', 'points': 20, 'at': 1800000000.0}]}
        """
        row = self.index.row(agent_id)
        if row is None:
            return None
        return {
            **self.index.agent(row),
            "score": float(self.score[row]),
            "as_of": float(self.clock[row]),
            "quarantined": bool(self.quarantined[row]),
            "deductions": self._deductions(row),
        }

    def score_of(self, agent_id: str) -> float:
        """The agent's score as of its clock (the initial score for an unknown agent)."""
        row = self.index.row(agent_id)
        return self.config.initial_score if row is None else float(self.score[row])

    # --- operators ----------------------------------------------------------
    def quarantine(
        self, agent_id: str, tenant_id: str, at: float, reason: str, actor: str
    ) -> SecurityOutput:
        """An operator asked for the agent to be quarantined: the same lifecycle event
        and order as an automatic quarantine, with the operator's reason and name.
        Nothing for an agent already in quarantine.

        >>> scores = SecurityScores.from_settings(Settings())
        >>> out = scores.quarantine("a1", "t1", 1.8e9, "leaked a key", "ops-1")
        >>> [(c["command"], c["reason"], c["actor"]) for c in out.commands]
        [('quarantine', 'leaked a key', 'ops-1')]
        >>> scores.quarantine("a1", "t1", 1.8e9 + 5, "again", "ops-2").commands
        []
        """
        out = SecurityOutput()
        row = int(self._rows([agent_id], [tenant_id])[0])
        if self.quarantined[row]:
            return out
        self.quarantined[row] = True
        at = max(float(self.clock[row]), float(at))
        self._quarantine(row, at, float(self.score[row]), out, reason, actor)
        return out

    def release(self, agent_id: str, at: float) -> SecurityOutput:
        """An operator released the agent from quarantine: it may be quarantined again.

        With ``security_release_resets_score`` its score returns to the initial
        score (a ``release`` record in the history) and its deductions are
        forgotten; otherwise it keeps its score and recovers from there.

        >>> scores = SecurityScores.from_settings(Settings())
        >>> _ = scores.apply_threats([{"agent_id": "a1", "tenant_id": "t1", "rule": "x",
        ...     "severity": "CRITICAL", "last_seen": 1.8e9 + i} for i in range(3)])
        >>> [(c["cause"], c["score"]) for c in scores.release("a1", 1.8e9 + 60).score_changes]
        [('release', 100.0)]
        """
        out = SecurityOutput()
        row = self.index.row(agent_id)
        if row is None:
            return out
        now = max(float(self.clock[row]), float(at))
        self.quarantined[row] = False
        if self.config.release_resets_score:
            score = self.config.initial_score
            delta = score - float(self.reported[row])
            self.clock[row] = now
            self.score[row] = self.reported[row] = score
            self.reported_at[row] = now
            self.last_threat[row] = -np.inf
            self.rings.pop(row, None)
            if delta:
                out.score_changes.append(self._change(row, now, score, delta, "release"))
        return out

    def _note_status(self, rows: np.ndarray, batch: HeartbeatBatch) -> None:
        """Remember each agent's latest reported lifecycle status (for ``from``)."""
        codes = np.fromiter(
            map(_STATUS_CODE.get, batch.status, repeat(_NO_STATUS)), np.int8, len(batch)
        )
        known = codes != _NO_STATUS
        if known.any():  # the last in batch order wins
            self.status[rows[known]] = codes[known]


def _layout(config: SecurityConfig) -> dict[str, ArraySpec]:
    """The per-agent arrays of :class:`SecurityScores` under ``config``."""
    return {
        "score": (np.dtype(np.float64), config.initial_score, ()),
        "clock": (np.dtype(np.float64), -np.inf, ()),  # latest event time seen
        "last_threat": (np.dtype(np.float64), -np.inf, ()),
        "reported": (np.dtype(np.float64), config.initial_score, ()),  # last recorded
        "reported_at": (np.dtype(np.float64), -np.inf, ()),
        "quarantined": (np.dtype(np.bool_), False, ()),
        "status": (np.dtype(np.int8), _NO_STATUS, ()),
    }
