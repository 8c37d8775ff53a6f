"""Health score per heartbeat, bands with hysteresis, degradation and remediation with backoff.

Every heartbeat gets a health score from 0 to 100: each weighted metric
(``health_weights``: CPU, memory, disk, error rate, response time, network
latency) takes away up to its weight, linearly from its good threshold (nothing)
to its bad threshold (all of it) (``health_thresholds``). The score puts the
agent in a *band* — ``healthy``, ``warning`` (below ``health_warning_below``),
``degraded`` (below ``health_degraded_below``), ``critical`` (below
``health_critical_below``) — with hysteresis: a worse band at once, a better one
only ``health_band_margin`` points above its threshold. A change of band is a
``health_changed`` event on ``agents.state`` (payload ``health``, ``band``,
``previous``), never one per heartbeat.

Degradation is a lifecycle trigger: ``health_degraded_after`` heartbeats in a row
below ``health_degraded_below`` mark the agent *unhealthy* and give the lifecycle
table :attr:`~agentwatch.lifecycle.Trigger.HEALTH_DEGRADED` (a running agent becomes
``degraded``; an agent in maintenance, quarantined, … stays where it is: the table
decides), ``health_recovered_after`` heartbeats in a row at or above
``health_recovered_above`` give it ``HEALTH_RECOVERED``. While an agent is unhealthy
and running again (its maintenance ended, it came back online), its next heartbeat
gives the trigger again.

Remediation: while the agent's lifecycle state is ``degraded`` (so never in
maintenance, quarantined, compromised or decommissioning), orders go to
``agents.commands`` in the order of ``health_remediation_actions`` (restart →
clear_cache → reduce_load), the first when it becomes degraded, each next one
after an exponential backoff (``health_remediation_backoff_s`` ×
``health_remediation_backoff_factor`` ^ k, at most ``health_remediation_backoff_max_s``),
at most ``health_remediation_max_attempts`` (a heartbeat that counts towards recovery
sends none). When the wait after the last order has
passed and the agent is still degraded, an ``agent_unhealthy`` alert fires and
remediation stops until the agent recovers (the alert resolves then). Orders carry a
deterministic ``command_id`` (agent, attempt, time), and everything runs in event
time (the heartbeats' timestamps): a replay sends the same orders.

Per agent: 9 bytes (:meth:`HealthWatch.bytes_per_agent`). The score is computed for a
whole batch with numpy; only heartbeats that may change something (another band, a
streak towards degraded or recovered, an unhealthy agent) are walked one by one.

>>> from agentwatch.settings import Settings
>>> config = HealthConfig.from_settings(Settings())
>>> good = {"cpu_usage": 30.0, "memory_usage": 40.0, "disk_usage": 50.0,
...         "error_rate": 0.01, "response_time_avg": 200.0, "network_latency": 20.0}
>>> config.score_one(good), config.score_one({**good, "cpu_usage": 90.0})
(100.0, 90.0)
>>> config.band_of(config.score_one({**good, "error_rate": 0.25, "cpu_usage": 99.0}))
'degraded'
>>> [config.backoff_s(k) for k in range(6)]
[60.0, 120.0, 240.0, 480.0, 900.0, 900.0]
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from agentwatch.lifecycle import State, Trigger
from agentwatch.rows import AgentIndex, ArraySpec, RowArrays
from agentwatch.settings import Settings
from schemas.events import HEALTH_CHANGED
from schemas.heartbeats import FLOAT_FIELDS, INT_FIELDS, HeartbeatBatch

#: The bands, best first (a band's code is its position).
BANDS = ("healthy", "warning", "degraded", "critical")
#: The rule name of the alert raised when remediation gave up (resolves on recovery).
AGENT_UNHEALTHY_RULE = "agent_unhealthy"
#: Namespace of the deterministic ids of remediation orders.
REMEDIATION_NAMESPACE = uuid.UUID("0b7e3f2a-5d1c-4c8e-9f3a-6e2d1b4a7c95")
#: ``attempts`` of an agent whose remediation gave up (the alert is firing).
_EXHAUSTED = 255


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """The health score's and remediation's tunables, taken from :class:`Settings`
    (a ``ValueError`` says what to fix when they do not fit together).

    >>> HealthConfig.from_settings(Settings()).thresholds  # warning, degraded, critical
    (80.0, 65.0, 40.0)
    >>> HealthConfig.from_settings(Settings(health_recovered_above=60.0))
    Traceback (most recent call last):
    ...
    ValueError: health_recovered_above (60) must be above health_degraded_below (65), or an \
agent would recover while still degraded; raise AGENTWATCH_HEALTH_RECOVERED_ABOVE
    """

    metrics: tuple[str, ...]
    good: tuple[float, ...]
    bad: tuple[float, ...]
    weights: tuple[float, ...]  # normalised: they sum to 100
    thresholds: tuple[float, float, float]  # warning, degraded, critical (descending)
    band_margin: float
    degraded_after: int
    recovered_above: float
    recovered_after: int
    remediation: bool
    actions: tuple[str, ...]
    backoff_base_s: float
    backoff_factor: float
    backoff_max_s: float
    max_attempts: int

    @classmethod
    def from_settings(cls, settings: Settings) -> HealthConfig:
        """Pick the health numbers out of the settings, checked."""
        s = settings
        known = (*FLOAT_FIELDS, *INT_FIELDS)
        weights = {name: float(w) for name, w in s.health_weights.items() if w > 0}
        for name in weights:
            if name not in known:
                raise ValueError(
                    f"health_weights names {name!r}, which no heartbeat carries; use one of "
                    f"{', '.join(known)} in AGENTWATCH_HEALTH_WEIGHTS"
                )
            good_bad = s.health_thresholds.get(name)
            if good_bad is None or not good_bad[0] < good_bad[1]:
                raise ValueError(
                    f"health_thresholds[{name!r}] must be (good, bad) with good below bad "
                    f"(it is {good_bad}); fix AGENTWATCH_HEALTH_THRESHOLDS"
                )
        if not weights:
            raise ValueError(
                "health_weights gives no metric a weight; set AGENTWATCH_HEALTH_WEIGHTS"
            )
        bands = (s.health_warning_below, s.health_degraded_below, s.health_critical_below)
        if not bands[0] >= bands[1] >= bands[2]:
            raise ValueError(
                f"the health bands must descend: warning ({bands[0]:g}) ≥ degraded "
                f"({bands[1]:g}) ≥ critical ({bands[2]:g}); fix AGENTWATCH_HEALTH_*_BELOW"
            )
        if s.health_recovered_above <= s.health_degraded_below:
            raise ValueError(
                f"health_recovered_above ({s.health_recovered_above:g}) must be above "
                f"health_degraded_below ({s.health_degraded_below:g}), or an agent would "
                "recover while still degraded; raise AGENTWATCH_HEALTH_RECOVERED_ABOVE"
            )
        total = sum(weights.values())
        names = tuple(weights)
        return cls(
            metrics=names,
            good=tuple(float(s.health_thresholds[n][0]) for n in names),
            bad=tuple(float(s.health_thresholds[n][1]) for n in names),
            weights=tuple(100.0 * weights[n] / total for n in names),
            thresholds=bands,
            band_margin=s.health_band_margin,
            degraded_after=s.health_degraded_after,
            recovered_above=s.health_recovered_above,
            recovered_after=s.health_recovered_after,
            remediation=s.health_remediation,
            actions=tuple(s.health_remediation_actions),
            backoff_base_s=s.health_remediation_backoff_s,
            backoff_factor=s.health_remediation_backoff_factor,
            backoff_max_s=s.health_remediation_backoff_max_s,
            max_attempts=s.health_remediation_max_attempts,
        )

    @property
    def degraded_below(self) -> float:
        return self.thresholds[1]

    def scores(self, metrics: Mapping[str, np.ndarray]) -> np.ndarray:
        """The health score (0–100) of every row of a batch's metric columns.

        >>> config = HealthConfig.from_settings(Settings())
        >>> columns = {name: np.zeros(2) for name in config.metrics}
        >>> columns["cpu_usage"] = np.array([50.0, 100.0])
        >>> config.scores(columns).tolist()
        [100.0, 80.0]
        """
        taken = None
        for name, good, bad, weight in zip(
            self.metrics, self.good, self.bad, self.weights, strict=True
        ):
            share = (metrics[name] - good) * (weight / (bad - good))
            np.clip(share, 0.0, weight, out=share)
            taken = share if taken is None else taken.__iadd__(share)
        return np.maximum(100.0 - taken, 0.0)

    def score_one(self, metrics: Mapping[str, float]) -> float:
        """The health score of one heartbeat's metrics (a dict of numbers)."""
        columns = {name: np.array([float(metrics[name])]) for name in self.metrics}
        return round(float(self.scores(columns)[0]), 6)

    def band_code(self, health: float) -> int:
        """The band (its code, see :data:`BANDS`) of a score, without hysteresis."""
        warning, degraded, critical = self.thresholds
        return (health < warning) + (health < degraded) + (health < critical)

    def band_of(self, health: float) -> str:
        """The band's name of a score, without hysteresis."""
        return BANDS[self.band_code(health)]

    def next_band(self, health: float, band: int) -> int:
        """The band of an agent in ``band`` whose health is now ``health``: worse at once,
        better only once ``band_margin`` points above the better band's threshold.

        >>> config = HealthConfig.from_settings(Settings())   # warning below 80, margin 5
        >>> config.next_band(79.0, 0), config.next_band(82.0, 1), config.next_band(85.0, 1)
        (1, 1, 0)
        """
        worse = self.band_code(health)
        if worse > band:
            return worse
        return min(band, self.band_code(health - self.band_margin))

    def backoff_s(self, attempt: int) -> float:
        """The wait after remediation order ``attempt`` (0 for the first) before the next."""
        wait = self.backoff_base_s * self.backoff_factor ** min(attempt, 64)
        return float(min(wait, self.backoff_max_s))

    def action(self, attempt: int) -> str:
        """The order of remediation attempt ``attempt`` (0 for the first)."""
        return self.actions[min(attempt, len(self.actions) - 1)]


def remediation_id(tenant_id: str, agent_id: str, action: str, attempt: int, at: float) -> str:
    """The deterministic ``command_id`` of a remediation order (a replay makes the same).

    >>> remediation_id("t1", "a1", "restart", 0, 1.8e9) == remediation_id(
    ...     "t1", "a1", "restart", 0, 1.8e9)
    True
    """
    key = f"remediate|{tenant_id}|{agent_id}|{action}|{attempt}|{float(at)!r}"
    return str(uuid.uuid5(REMEDIATION_NAMESPACE, key))


@dataclass(slots=True)
class HealthPending:
    """The heartbeats of a batch the walk must look at, in event-time order: rows,
    agent and tenant ids, times and scores."""

    rows: list[int] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)
    tenants: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(slots=True)
class HealthOutput:
    """``events``: ``health_changed`` ``LifecycleEvent`` dicts (agents.state);
    ``commands``: ``AgentCommand`` dicts (agents.commands); ``transitions`` and
    ``threats``: the ``agent_unhealthy`` alert's condition and threat, in the layout the
    alert book takes (like the heartbeat ladder's ``agent_offline``)."""

    events: list[dict] = field(default_factory=list)
    commands: list[dict] = field(default_factory=list)
    transitions: list[dict] = field(default_factory=list)
    threats: list[dict] = field(default_factory=list)


#: ``move(agent_id, tenant_id, trigger, at, reason) → state``: the lifecycle table's
#: answer to a health trigger (the agent's state after it).
Move = Callable[[str, str, Trigger, float, str], State]


class HealthWatch(RowArrays):
    """The health of one shard's agents (see the module doc).

    >>> from agentwatch.settings import Settings
    >>> watch = HealthWatch.from_settings(Settings())
    >>> watch.bytes_per_agent()
    9
    """

    def __init__(self, config: HealthConfig, index: AgentIndex | None = None, capacity: int = 64):
        self.config = config
        self._setup(_LAYOUT, index, capacity)

    @classmethod
    def from_settings(cls, settings: Settings, index: AgentIndex | None = None) -> HealthWatch:
        """Empty, with the tunables of ``settings`` (rows from ``index`` if given)."""
        return cls(HealthConfig.from_settings(settings), index)

    def configure(self, config: HealthConfig) -> None:
        """Go on with new tunables (settings changed across a restart)."""
        self.config = config

    # --- the batch --------------------------------------------------------------
    def score(self, batch: HeartbeatBatch) -> HealthPending:
        """Score every heartbeat of ``batch`` (numpy) and keep the ones that may change
        something, for :meth:`walk`. Call it while the index still knows the batch's
        rows (before ``AgentIndex.forget``)."""
        pending = HealthPending()
        n = len(batch)
        if not n:
            return pending
        cfg = self.config
        rows = self._rows(batch.agent_id, batch.tenant_id)
        health = cfg.scores(batch.metrics)
        self.health[rows] = np.rint(health).astype(np.uint8)  # the last in batch order wins
        band = self.band[rows]
        warning, degraded, critical = cfg.thresholds
        worse = (health < warning).astype(np.int8)
        worse += health < degraded
        worse += health < critical
        interesting = worse > band
        if band.any():
            shifted = health - cfg.band_margin
            better = (shifted < warning).astype(np.int8)
            better += shifted < degraded
            better += shifted < critical
            interesting |= better < band
        unhealthy = self.unhealthy[rows]
        interesting |= unhealthy | (self.streak[rows] != 0)
        interesting |= health < degraded  # (counts towards degraded)
        if not interesting.any():
            return pending
        picked = np.flatnonzero(interesting)
        if len(picked) < n:  # every heartbeat of an agent that has one picked
            picked = np.flatnonzero(np.isin(rows, rows[picked]))
        picked = picked[np.argsort(batch.timestamp[picked], kind="stable")].tolist()
        pending.rows = rows[picked].tolist()
        pending.agents = [batch.agent_id[k] for k in picked]
        pending.tenants = [batch.tenant_id[k] for k in picked]
        pending.times = batch.timestamp[picked].tolist()
        pending.scores = health[picked].tolist()
        return pending

    def walk(
        self, pending: HealthPending, state_of: Callable[[str], State], move: Move
    ) -> HealthOutput:
        """Take the picked heartbeats one by one, in event time: bands, streaks, the
        lifecycle's health triggers (through ``move``) and remediation (for agents whose
        lifecycle state, ``state_of``, is degraded)."""
        out = HealthOutput()
        for k in range(len(pending)):
            self.step(pending, k, state_of, move, out)
        return out

    def step(
        self,
        pending: HealthPending,
        k: int,
        state_of: Callable[[str], State],
        move: Move,
        out: HealthOutput,
    ) -> None:
        """Take the ``k``-th picked heartbeat (see :meth:`walk`; a shard calls it in
        event-time order among the lifecycle's other triggers)."""
        row, agent, tenant = pending.rows[k], pending.agents[k], pending.tenants[k]
        at, health = pending.times[k], pending.scores[k]
        cfg = self.config
        band = int(self.band[row])
        new_band = cfg.next_band(health, band)
        if new_band != band:
            self.band[row] = new_band
            out.events.append(
                {
                    "type": HEALTH_CHANGED,
                    "agent_id": agent,
                    "tenant_id": tenant,
                    "actor": "system",
                    "timestamp": at,
                    "payload": {
                        "health": round(health, 1),
                        "band": BANDS[new_band],
                        "previous": BANDS[band],
                    },
                }
            )
        unhealthy = bool(self.unhealthy[row])
        if not unhealthy:
            streak = int(self.streak[row]) + 1 if health < cfg.degraded_below else 0
            if streak < cfg.degraded_after:
                self.streak[row] = streak
                return
            self.streak[row] = 0
            self.unhealthy[row] = True
            self.attempts[row] = 0
            reason = (
                f"health {health:.0f} below {cfg.degraded_below:g} for "
                f"{cfg.degraded_after} heartbeats"
            )
            if move(agent, tenant, Trigger.HEALTH_DEGRADED, at, reason) is State.DEGRADED:
                self._remediate(row, agent, tenant, at, health, out, first=True)
            return
        streak = int(self.streak[row]) + 1 if health >= cfg.recovered_above else 0
        if streak >= cfg.recovered_after:
            self.streak[row] = 0
            self.unhealthy[row] = False
            if self.attempts[row] == _EXHAUSTED:
                out.transitions.append(self._condition(agent, tenant, False, at))
            self.attempts[row] = 0
            self.next_at[row] = 0
            reason = (
                f"health {health:.0f} at or above {cfg.recovered_above:g} for "
                f"{cfg.recovered_after} heartbeats"
            )
            move(agent, tenant, Trigger.HEALTH_RECOVERED, at, reason)
            return
        self.streak[row] = streak
        state = state_of(agent)
        if state in (State.ACTIVE, State.IDLE, State.BUSY):  # (back from maintenance, offline…)
            reason = f"health {health:.0f} still below {cfg.degraded_below:g}"
            if move(agent, tenant, Trigger.HEALTH_DEGRADED, at, reason) is State.DEGRADED:
                self._remediate(row, agent, tenant, at, health, out, first=True)
        elif state is State.DEGRADED and not streak:  # (no order while it recovers)
            self._remediate(row, agent, tenant, at, health, out)

    def _remediate(
        self,
        row: int,
        agent: str,
        tenant: str,
        at: float,
        health: float,
        out: HealthOutput,
        first: bool = False,
    ) -> None:
        """The next remediation order if one is due at ``at`` (or the alert, once the
        attempts are spent)."""
        cfg = self.config
        if not cfg.remediation:
            return
        if first:
            self.attempts[row] = 0
            self.next_at[row] = 0
        attempt = int(self.attempts[row])
        if attempt == _EXHAUSTED or at < float(self.next_at[row]):
            return
        if attempt >= cfg.max_attempts:
            self.attempts[row] = _EXHAUSTED
            out.transitions.append(self._condition(agent, tenant, True, at))
            out.threats.append(self._threat(agent, tenant, at, health))
            return
        action = cfg.action(attempt)
        out.commands.append(
            {
                "command_id": remediation_id(tenant, agent, action, attempt, at),
                "agent_id": agent,
                "tenant_id": tenant,
                "command": action,
                "reason": (
                    f"health {health:.0f} below {cfg.degraded_below:g}: remediation "
                    f"{attempt + 1} of {cfg.max_attempts} ({action})"
                ),
                "issued_at": at,
                "actor": "system",
            }
        )
        self.attempts[row] = attempt + 1
        self.next_at[row] = min(math.ceil(at + cfg.backoff_s(attempt)), 2**32 - 1)

    def _condition(self, agent: str, tenant: str, holds: bool, at: float) -> dict:
        return {
            "agent_id": agent,
            "tenant_id": tenant,
            "rule": AGENT_UNHEALTHY_RULE,
            "holds": holds,
            "at": at,
            "first_seen": at,
            "fired": True,
        }

    def _threat(self, agent: str, tenant: str, at: float, health: float) -> dict:
        cfg = self.config
        return {
            "agent_id": agent,
            "tenant_id": tenant,
            "rule": AGENT_UNHEALTHY_RULE,
            "category": "PERFORMANCE",
            "severity": "HIGH",
            "first_seen": at,
            "last_seen": at,
            "evidence": {
                "condition": (
                    f"health below {cfg.degraded_below:g} after {cfg.max_attempts} "
                    f"remediation orders ({', '.join(cfg.actions)})"
                ),
                "values": {"health": round(health, 1)},
                "baseline": [],
                "window_start": at,
                "window_end": at,
            },
        }

    # --- introspection ------------------------------------------------------------
    def health_of(self, agent_id: str) -> dict | None:
        """The agent's latest health (rounded), band, whether it is unhealthy and the
        remediation orders sent in its current degradation; None if never seen.

        >>> HealthWatch.from_settings(Settings()).health_of("nobody") is None
        True
        """
        row = self.index.row(agent_id)
        if row is None:
            return None
        self._fit()
        attempts = int(self.attempts[row])
        return {
            "health": int(self.health[row]),
            "band": BANDS[int(self.band[row])],
            "unhealthy": bool(self.unhealthy[row]),
            "remediation_attempts": self.config.max_attempts
            if attempts == _EXHAUSTED
            else attempts,
            "remediation_exhausted": attempts == _EXHAUSTED,
        }


_LAYOUT: dict[str, ArraySpec] = {
    "health": (np.dtype(np.uint8), 100, ()),  # latest score, rounded
    "band": (np.dtype(np.int8), 0, ()),  # code of BANDS
    "streak": (np.dtype(np.uint8), 0, ()),  # heartbeats in a row towards a change
    "unhealthy": (np.dtype(np.bool_), False, ()),  # degraded by health (hysteresis)
    "attempts": (np.dtype(np.uint8), 0, ()),  # remediation orders sent (255: gave up)
    "next_at": (np.dtype(np.uint32), 0, ()),  # next order due (epoch s, event time)
}
