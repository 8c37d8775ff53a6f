"""Alerts with a lifecycle, silences, coordinated threats and webhook payloads.

An :class:`AlertBook` (one per shard of agents) turns the threat rules' output
(:class:`agentwatch.rules.RuleOutput`: condition ``transitions`` and ``threats``)
into alerts, like Prometheus and Alertmanager do: one alert per fingerprint
(agent + rule) that goes

    pending  ─ threat raised ─▶  firing  ─ condition false for the hold ─▶  resolved

and publishes an event (a dict in the layout of :class:`schemas.models.Alert`)
only when its state changes: one ``firing`` and one ``resolved`` per sustained
incident, never one per heartbeat. Everything runs in event time (each
agent's own heartbeats), so the events do not depend on where batches are cut.

The rules of the book:

- **Pending.** A condition that starts to hold opens a ``pending`` alert,
  published once a later heartbeat of the agent finds the condition still
  holding (and ``alert_pending_announce_s`` has passed); a condition that holds
  on one heartbeat only is never published, and neither is its end.
- **Firing.** The rule's threat (raised once its condition has held for the
  rule's ``for_s``) makes it ``firing``, with the threat's evidence. A threat
  of a rule the book has no transitions for (a detector's) opens a firing alert
  directly, and each new threat of it keeps it alive.
- **Hold (hysteresis).** An alert resolves only once its condition has stopped
  holding for ``alert_resolve_after_s`` of the agent's event time (for a
  detector's alert: no new threat for that long). A condition that comes back
  sooner keeps the alert as it is: no event. ``resolved_at`` is the time the
  condition stopped holding; the event's ``updated_at`` is that plus the hold.
  The hold passes when a later heartbeat of the agent arrives (pass the batch's
  ``agent_ids`` and ``timestamps``), when the condition comes back after it, or
  when :meth:`AlertBook.tick` is called with a later event time (agents that
  went silent). A pending alert that never fired resolves the same way, its
  event with ``fired_at = None`` (nothing to deliver, see :func:`should_notify`).
- **Flapping.** An alert that fires again less than ``alert_flap_window_s``
  after its last resolution counts a flap (otherwise its count restarts at 0).
  At ``alert_flap_threshold`` flaps in a row it is marked ``flapping``: that
  firing event (flagged) is the last notification, and while flapping the alert
  stays firing until its condition has been calm for ``alert_flap_window_s``
  (instead of ``alert_resolve_after_s``); then one ``resolved`` clears the mark.
- **Silences.** An alert matched by an active :class:`schemas.models.Silence`
  still changes state, but its events carry ``silenced: true``; applying or
  expiring a silence publishes the live alerts whose mark changed.
- **Bounded state.** Only agents with a live alert, or an alert resolved within
  the flap window, have state; an alert of an agent not heard of for
  ``alert_silent_resolve_s`` resolves.

A :class:`CoordinationDetector` (keyed by tenant) links the threats of one kind
raised by at least ``coordination_min_agents`` agents of a tenant within
``coordination_window_s`` into one EMERGENCY :class:`schemas.models.Incident`.

>>> from agentwatch.settings import Settings
>>> book = AlertBook(Settings(alert_resolve_after_s=60))
>>> t0 = 1.8e9
>>> holds = {"agent_id": "a1", "tenant_id": "t1", "rule": "hot", "holds": True,
...          "at": t0, "first_seen": t0, "fired": False}
>>> book.observe(transitions=[holds], agent_ids=["a1"], timestamps=[t0])
[]
>>> [e["state"] for e in book.observe(agent_ids=["a1"], timestamps=[t0 + 30])]
['pending']
>>> threat = {"agent_id": "a1", "tenant_id": "t1", "rule": "hot", "category": "PERFORMANCE",
...     "severity": "HIGH", "first_seen": t0, "last_seen": t0 + 120, "evidence": {
...     "condition": "cpu_usage > 90 for 120 s", "values": {"cpu_usage": 97.0},
...     "baseline": [], "window_start": t0, "window_end": t0 + 120}}
>>> [(e["state"], e["fired_at"] - t0) for e in book.observe(threats=[threat])]
[('firing', 120.0)]
>>> stops = {**holds, "holds": False, "at": t0 + 150, "fired": True}
>>> book.observe(transitions=[stops], agent_ids=["a1"], timestamps=[t0 + 180])
[]
>>> [(e["state"], e["resolved_at"] - t0, e["updated_at"] - t0)
...  for e in book.observe(agent_ids=["a1"], timestamps=[t0 + 210])]
[('resolved', 150.0, 210.0)]
"""

from __future__ import annotations

import hashlib
import math
import random
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agentwatch.settings import Settings
from schemas.models import Silence, ThreatRuleSpec

_NAN = math.nan
#: Slack attachment colours by severity.
SEVERITY_COLORS = {
    "EMERGENCY": "#7b0000",
    "CRITICAL": "#d00000",
    "HIGH": "#ff7800",
    "WARNING": "#f2c744",
    "INFO": "#439fe0",
}
_RESOLVED_COLOR = "#2eb886"


def fingerprint(agent_id: str, rule: str) -> str:
    """The stable id of an alert: 16 hex digits of a hash of agent and rule.

    >>> fingerprint("a1", "resource_abuse") == fingerprint("a1", "resource_abuse")
    True
    >>> len(fingerprint("a1", "resource_abuse"))
    16
    """
    return hashlib.blake2b(f"{agent_id}\x00{rule}".encode(), digest_size=8).hexdigest()


@dataclass(slots=True)
class AlertState:
    """One alert's state (an agent + rule): a few numbers and shared strings.

    ``state`` is one of :data:`schemas.models.ALERT_STATES`; ``cleared_at`` is
    when the condition stopped holding (NaN: it holds); ``tracked`` says the
    condition's truth is reported by rule transitions (else: by threats only);
    ``heard`` is the agent's latest event time the book saw; ``previous_end``
    the ``resolved_at`` of its last fired incident (for flap counting);
    ``announced`` whether an event of it was published.
    """

    tenant_id: str
    state: str = "pending"
    tracked: bool = True
    category: str | None = None
    severity: str | None = None
    started_at: float = _NAN
    fired_at: float = _NAN
    resolved_at: float = _NAN
    last_seen: float = _NAN
    cleared_at: float = _NAN
    heard: float = _NAN
    previous_end: float = _NAN
    flap_count: int = 0
    flapping: bool = False
    silenced: bool = False
    announced: bool = False
    evidence: dict | None = None

    @property
    def live(self) -> bool:
        return self.state != "resolved"


@dataclass(slots=True)
class _Step:
    """One input for an agent, in the order it is taken."""

    at: float
    order: float
    kind: str  # "holds", "stops", "threat", "beat"
    payload: dict | None = None


class AlertBook:
    """The alerts of one shard of agents (see the module doc for the rules).

    ``rules``: the threat rules, for the category and severity of a pending
    alert and to know which threats have transitions (update with
    :meth:`set_rules` when rules change).

    >>> book = AlertBook(Settings())
    >>> book.observe()
    []
    >>> len(book), book.state_bytes()
    (0, 0)
    """

    def __init__(self, settings: Settings, rules: Iterable[ThreatRuleSpec] = ()) -> None:
        self.configure(settings)
        self.alerts: dict[str, dict[str, AlertState]] = {}  # agent → rule → alert
        self.silences: dict[str, Silence] = {}
        self.catalog: dict[str, tuple[str, str]] = {}
        self.set_rules(rules)

    def configure(self, settings: Settings) -> None:
        """Take the lifecycle's tunables from ``settings`` (again after a restart)."""
        self.pending_announce_s = settings.alert_pending_announce_s
        self.resolve_after_s = settings.alert_resolve_after_s
        self.flap_window_s = settings.alert_flap_window_s
        self.flap_threshold = settings.alert_flap_threshold
        self.silent_resolve_s = settings.alert_silent_resolve_s

    def __len__(self) -> int:
        """Alerts kept (live, or resolved within the flap window)."""
        return sum(map(len, self.alerts.values()))

    def set_rules(self, rules: Iterable[ThreatRuleSpec]) -> None:
        """Replace the rule catalog (name → category, severity)."""
        self.catalog = {r.name: (r.category, r.severity) for r in rules}

    # --- input ---------------------------------------------------------------

    def observe(
        self,
        transitions: Iterable[dict] = (),
        threats: Iterable[dict] = (),
        agent_ids: Sequence[str] = (),
        timestamps: Sequence[float] = (),
    ) -> list[dict]:
        """Take one batch: the rules' transitions and threats, and the batch's
        heartbeats (``agent_ids``, ``timestamps``: the agents' event time passing).
        Returns the alert events (``Alert`` dicts) of the state changes, in order.
        """
        steps: dict[str, list[_Step]] = {}
        tenants: dict[str, str] = {}
        true_at: dict[tuple[str, str, float], list[float]] = {}
        for seq, t in enumerate(transitions):
            agent, at = t["agent_id"], float(t["at"])
            tenants[agent] = t["tenant_id"]
            kind = "holds" if t["holds"] else "stops"
            steps.setdefault(agent, []).append(_Step(at, seq, kind, t))
            if t["holds"]:
                true_at.setdefault((agent, t["rule"], at), []).append(seq)
        for threat in threats:
            agent, at = threat["agent_id"], float(threat["last_seen"])
            tenants[agent] = threat["tenant_id"]
            # A threat comes right after the transition that began its episode when that
            # happened on the same heartbeat (for_s = 0); otherwise before any transition
            # at its time (it fired while the condition held).
            started = true_at.get((agent, threat["rule"], at))
            order = started.pop(0) + 0.5 if started else -1.0
            steps.setdefault(agent, []).append(_Step(at, order, "threat", threat))
        watched = self.alerts.keys() | steps.keys()
        if watched:
            for agent, ts in zip(agent_ids, timestamps, strict=True):
                if agent in watched:
                    steps.setdefault(agent, []).append(_Step(float(ts), math.inf, "beat"))
        events: list[dict] = []
        for agent, agent_steps in steps.items():
            agent_steps.sort(key=lambda s: (s.at, s.order))
            for step in agent_steps:
                self._take(agent, tenants.get(agent), step, events)
            self._prune(agent, agent_steps[-1].at)
        return events

    def tick(self, now: float) -> list[dict]:
        """Let event time reach ``now`` for every agent (call it with the flow's
        event-time watermark): resolves the alerts whose hold has passed, and
        those of agents silent for ``alert_silent_resolve_s``; re-judges silences
        (a silence that ended unmarks its alerts); forgets what is no longer needed.

        >>> book = AlertBook(Settings(alert_resolve_after_s=60))
        >>> stops = {"agent_id": "a1", "tenant_id": "t1", "rule": "hot", "at": 1.8e9,
        ...          "first_seen": 1.8e9, "fired": False}
        >>> _ = book.observe([{**stops, "holds": True}], [], ["a1", "a1"], [1.8e9, 1.8e9 + 30])
        >>> book.observe([{**stops, "holds": False, "at": 1.8e9 + 60}])
        []
        >>> [e["state"] for e in book.tick(1.8e9 + 120)], len(book)
        (['resolved'], 0)
        """
        events: list[dict] = []
        for agent in list(self.alerts):
            for rule, alert in list(self.alerts[agent].items()):
                if not alert.live:
                    continue
                if not math.isnan(alert.cleared_at):
                    if now - alert.cleared_at >= self._hold(alert):
                        self._resolve(agent, rule, alert, events)
                elif now - alert.heard >= self.silent_resolve_s:
                    alert.cleared_at = alert.heard
                    self._resolve(
                        agent, rule, alert, events, note="agent silent", hold=self.silent_resolve_s
                    )
            self._prune(agent, now)
        if self.silences:  # (without one, no alert's mark can change: nothing to judge)
            self.silences = {k: s for k, s in self.silences.items() if s.ends_at > now}
            events += self._rejudge_silences(now)
        return events

    # --- silences ------------------------------------------------------------

    def apply_silence(self, silence: Silence | dict, now: float) -> list[dict]:
        """Add (or replace) a silence; returns the events of live alerts it marks at ``now``.

        >>> book = AlertBook(Settings())
        >>> _ = book.observe([{"agent_id": "a1", "tenant_id": "t1", "rule": "hot",
        ...     "holds": True, "at": 1.8e9, "first_seen": 1.8e9, "fired": False}])
        >>> mute = {"id": "s1", "rule": "hot", "starts_at": 1.8e9, "ends_at": 1.8e9 + 3600,
        ...         "created_by": "ops"}
        >>> [(e["state"], e["silenced"]) for e in book.apply_silence(mute, 1.8e9 + 10)]
        [('pending', True)]
        >>> [(e["state"], e["silenced"]) for e in book.expire("s1", 1.8e9 + 20)]
        [('pending', False)]
        """
        if isinstance(silence, dict):
            silence = Silence.model_validate(silence)
        self.silences[silence.id] = silence
        return self._rejudge_silences(now)

    def expire(self, silence_id: str, now: float) -> list[dict]:
        """Remove a silence (unknown ids are ignored); returns the events of live alerts
        it no longer marks."""
        if self.silences.pop(silence_id, None) is None:
            return []
        return self._rejudge_silences(now)

    def silenced(self, agent_id: str, rule: str, alert: AlertState, at: float) -> bool:
        """Whether an active silence matches this alert at event time ``at``."""
        fields = {
            "agent_id": agent_id,
            "tenant_id": alert.tenant_id,
            "rule": rule,
            "category": alert.category,
            "severity": alert.severity,
        }
        return any(
            s.starts_at <= at < s.ends_at
            and all(getattr(s, k) in ("*", v) for k, v in fields.items())
            for s in self.silences.values()
        )

    def _rejudge_silences(self, now: float) -> list[dict]:
        events = []
        for agent, rules in self.alerts.items():
            for rule, alert in rules.items():
                if alert.live and self.silenced(agent, rule, alert, now) != alert.silenced:
                    events.append(self._emit(agent, rule, alert, now))
        return events

    # --- rule retirement and introspection ----------------------------------

    def retire_rule(self, rule: str) -> list[dict]:
        """Resolve every live alert of a rule that was deleted or disabled (at each
        alert's ``last_seen``: nothing will report its condition any more)."""
        events: list[dict] = []
        for agent, rules in self.alerts.items():
            alert = rules.get(rule)
            if alert is not None and alert.live:
                alert.cleared_at = alert.last_seen
                self._resolve(agent, rule, alert, events, note="rule retired", hold=0.0)
        return events

    def live(self) -> list[dict]:
        """The pending and firing alerts, as ``Alert`` dicts (as of their last change)."""
        return [
            self._event(agent, rule, alert, alert.last_seen)
            for agent, rules in self.alerts.items()
            for rule, alert in rules.items()
            if alert.live
        ]

    def state_bytes(self) -> int:
        """Bytes the book holds for its alerts: the dicts and the alert records
        (not the strings shared with the input, nor the evidence dicts)."""
        total = sys.getsizeof(self.alerts) if self.alerts else 0
        for rules in self.alerts.values():
            total += sys.getsizeof(rules)
            total += sum(sys.getsizeof(a) for a in rules.values())
        return total

    # --- the state machine --------------------------------------------------

    def _hold(self, alert: AlertState) -> float:
        return self.flap_window_s if alert.flapping else self.resolve_after_s

    def _take(self, agent: str, tenant: str | None, step: _Step, events: list[dict]) -> None:
        rules = self.alerts.get(agent)
        if step.kind == "beat":
            for rule, alert in list((rules or {}).items()):
                self._beat(agent, rule, alert, step.at, events)
            return
        p = step.payload
        rule = p["rule"]
        alert = rules.get(rule) if rules else None
        # time passed since the condition stopped holding: resolve first if it is long enough
        if (
            alert is not None
            and alert.live
            and step.kind != "stops"
            and step.at - alert.cleared_at >= self._hold(alert)  # False while cleared_at is NaN
        ):
            self._resolve(agent, rule, alert, events)
        if step.kind == "holds":
            self._holds(agent, tenant or p["tenant_id"], rule, alert, p, events)
        elif step.kind == "threat":
            self._threat(agent, rule, alert, p, events)
        elif alert is not None and alert.live:  # stops
            self._stops(agent, rule, alert, p, events)

    def _new(self, agent: str, tenant: str, rule: str, tracked: bool) -> AlertState:
        rules = self.alerts.setdefault(agent, {})
        old = rules.get(rule)
        alert = AlertState(tenant_id=tenant, tracked=tracked)
        if old is not None:  # a resolved alert kept for its flap history
            alert.previous_end, alert.flap_count = old.previous_end, old.flap_count
        alert.category, alert.severity = self.catalog.get(rule, (None, None))
        rules[rule] = alert
        return alert

    def _holds(
        self,
        agent: str,
        tenant: str,
        rule: str,
        alert: AlertState | None,
        t: dict,
        events: list[dict],
    ) -> None:
        at = float(t["at"])
        if alert is not None and alert.live:
            alert.cleared_at = _NAN
            alert.tracked = True
            alert.last_seen = max(alert.last_seen, at)
            alert.heard = max(alert.heard, at)
            return
        alert = self._new(agent, tenant, rule, tracked=True)
        alert.started_at = float(t["first_seen"])
        alert.last_seen = alert.heard = at

    def _threat(
        self, agent: str, rule: str, alert: AlertState | None, threat: dict, events: list[dict]
    ) -> None:
        at = float(threat["last_seen"])
        if alert is None or not alert.live:
            tracked = rule in self.catalog
            alert = self._new(agent, threat["tenant_id"], rule, tracked=tracked)
            alert.started_at = float(threat["first_seen"])
        alert.category, alert.severity = threat["category"], threat["severity"]
        alert.evidence = threat["evidence"]
        alert.last_seen = at if math.isnan(alert.last_seen) else max(alert.last_seen, at)
        alert.heard = at if math.isnan(alert.heard) else max(alert.heard, at)
        # a detector's alert has no transitions: each threat restarts its hold
        alert.cleared_at = _NAN if alert.tracked else at
        if alert.state == "pending":
            self._fire(agent, rule, alert, at, events)

    def _stops(self, agent: str, rule: str, alert: AlertState, t: dict, events: list) -> None:
        at = float(t["at"])
        if alert.state == "pending" and t["fired"]:  # its threat went missing: fire now
            self._fire(agent, rule, alert, at, events)
        if math.isnan(alert.cleared_at):
            alert.cleared_at = at
        alert.heard = max(alert.heard, at)

    def _beat(self, agent: str, rule: str, alert: AlertState, at: float, events: list) -> None:
        if not alert.live:
            return
        alert.heard = max(alert.heard, at)
        if math.isnan(alert.cleared_at):
            if alert.tracked:
                alert.last_seen = max(alert.last_seen, at)
            if (
                alert.state == "pending"
                and not alert.announced
                and at > alert.started_at
                and at - alert.started_at >= self.pending_announce_s
            ):
                events.append(self._emit(agent, rule, alert, at))
        elif at - alert.cleared_at >= self._hold(alert):
            self._resolve(agent, rule, alert, events)

    def _fire(self, agent: str, rule: str, alert: AlertState, at: float, events: list) -> None:
        if not math.isnan(alert.previous_end) and at - alert.previous_end < self.flap_window_s:
            alert.flap_count += 1
        else:
            alert.flap_count = 0
        alert.flapping = alert.flap_count >= self.flap_threshold
        alert.state, alert.fired_at = "firing", at
        events.append(self._emit(agent, rule, alert, at))

    def _resolve(
        self,
        agent: str,
        rule: str,
        alert: AlertState,
        events: list[dict],
        note: str = "",
        hold: float | None = None,
    ) -> None:
        end = alert.cleared_at
        updated = end + (self._hold(alert) if hold is None else hold)
        alert.state, alert.resolved_at = "resolved", end
        if not math.isnan(alert.fired_at):
            alert.previous_end = end
        alert.flapping = False
        if alert.announced:  # (a pending alert whose threat never came was never published)
            events.append(self._emit(agent, rule, alert, updated, note))
        alert.evidence = None

    def _prune(self, agent: str, now: float) -> None:
        """Forget the resolved alerts of ``agent`` whose flap window has passed."""
        rules = self.alerts.get(agent)
        if not rules:
            return
        for rule, alert in list(rules.items()):
            if not alert.live and (
                math.isnan(alert.previous_end) or now - alert.previous_end >= self.flap_window_s
            ):
                del rules[rule]
        if not rules:
            del self.alerts[agent]

    # --- output --------------------------------------------------------------

    def _emit(self, agent: str, rule: str, alert: AlertState, at: float, note: str = "") -> dict:
        alert.silenced = self.silenced(agent, rule, alert, at)
        alert.announced = True
        return self._event(agent, rule, alert, at, note)

    def _event(self, agent: str, rule: str, alert: AlertState, at: float, note: str = "") -> dict:
        def when(value: float) -> float | None:
            return None if math.isnan(value) else value

        return {
            "fingerprint": fingerprint(agent, rule),
            "agent_id": agent,
            "tenant_id": alert.tenant_id,
            "rule": rule,
            "category": alert.category,
            "severity": alert.severity,
            "state": alert.state,
            "started_at": alert.started_at,
            "fired_at": when(alert.fired_at),
            "resolved_at": when(alert.resolved_at) if alert.state == "resolved" else None,
            "last_seen": alert.last_seen,
            "updated_at": at,
            "flapping": alert.flapping,
            "flap_count": alert.flap_count,
            "summary": _summary(agent, rule, alert, note),
            "evidence": alert.evidence,
            "silenced": alert.silenced,
        }


def _summary(agent: str, rule: str, alert: AlertState, note: str) -> str:
    condition = alert.evidence["condition"] if alert.evidence else "its condition"
    if alert.state == "pending":
        text = f"{rule} pending on agent {agent}: {condition} holds, not yet for long enough"
    elif alert.state == "firing":
        values = ", ".join(
            f"{k}={v:g}" for k, v in (alert.evidence or {}).get("values", {}).items()
        )
        text = f"{rule} firing on agent {agent}: {condition}" + (f" ({values})" if values else "")
        if alert.flapping:
            text += f"; flapping ({alert.flap_count} refires), held until calm"
    else:
        text = f"{rule} resolved on agent {agent}: {condition} no longer holds"
        if math.isnan(alert.fired_at):
            text += " (it never fired)"
    return f"{text} [{note}]" if note else text


def should_notify(alert: dict) -> bool:
    """Whether delivery sends this alert event: firing, or resolved after firing,
    and not silenced.

    >>> should_notify({"state": "firing", "silenced": False, "fired_at": 1.0})
    True
    >>> should_notify({"state": "resolved", "silenced": False, "fired_at": None})
    False
    """
    if alert["silenced"]:
        return False
    return alert["state"] == "firing" or (
        alert["state"] == "resolved" and alert["fired_at"] is not None
    )


# --- coordinated threats ----------------------------------------------------


@dataclass(slots=True)
class _Burst:
    """Threats of one (tenant, rule): the recent agents before an incident opens
    (at most ``min_agents - 1`` of them, all within one window), or the open incident."""

    recent: dict[str, float] = field(default_factory=dict)
    incident: dict | None = None


class CoordinationDetector:
    """Links the same kind of threat from many agents of a tenant into one incident.

    When at least ``coordination_min_agents`` distinct agents of one tenant raise
    threats of one rule within ``coordination_window_s`` (their ``last_seen``),
    one EMERGENCY ``Incident`` opens; while threats of that rule keep coming
    within the window of its latest one, the incident stays open and is
    published again (same id, next revision) only when a new agent joins. A
    threat older than the window before the latest one seen is not counted.

    >>> detector = CoordinationDetector(Settings(coordination_min_agents=3))
    >>> def threat(agent, t):
    ...     return {"agent_id": agent, "tenant_id": "t1", "rule": "data_exfiltration",
    ...             "category": "SECURITY", "severity": "CRITICAL", "last_seen": t}
    >>> detector.observe([threat("a1", 1.8e9), threat("a2", 1.8e9 + 60)])
    []
    >>> [(i["agent_ids"], i["severity"], i["revision"])
    ...  for i in detector.observe([threat("a3", 1.8e9 + 120)])]
    [(['a1', 'a2', 'a3'], 'EMERGENCY', 0)]
    >>> detector.observe([threat("a2", 1.8e9 + 130)])
    []
    """

    def __init__(self, settings: Settings) -> None:
        self.min_agents = settings.coordination_min_agents
        self.window_s = settings.coordination_window_s
        self.max_listed = settings.coordination_max_listed_agents
        self.bursts: dict[tuple[str, str], _Burst] = {}

    def observe(self, threats: Iterable[dict]) -> list[dict]:
        """Take threats (``Threat`` dicts, in any order); returns ``Incident`` dicts
        opened or updated."""
        out: list[dict] = []
        for threat in sorted(threats, key=lambda t: t["last_seen"]):
            key = (threat["tenant_id"], threat["rule"])
            burst = self.bursts.setdefault(key, _Burst())
            incident = self._take(burst, threat)
            if incident is not None:
                out.append(dict(incident, agent_ids=list(incident["agent_ids"])))
        return out

    def tick(self, now: float) -> None:
        """Forget bursts and incidents with no threat within the window before ``now``."""
        for key, burst in list(self.bursts.items()):
            if burst.incident is not None:
                latest = burst.incident["last_seen"]
            else:
                latest = max(burst.recent.values(), default=-math.inf)
            if now - latest >= self.window_s:
                del self.bursts[key]

    def _take(self, burst: _Burst, threat: dict) -> dict | None:
        agent, at = threat["agent_id"], float(threat["last_seen"])
        incident = burst.incident
        if incident is not None:
            if at - incident["last_seen"] < self.window_s:
                incident["last_seen"] = max(incident["last_seen"], at)
                if agent in incident["agent_ids"]:
                    return None
                if len(incident["agent_ids"]) >= self.max_listed:
                    if incident["truncated"]:
                        return None
                    incident["truncated"] = True
                else:
                    incident["agent_ids"].append(agent)
                incident["revision"] += 1
                return incident
            burst.incident = None  # that burst is over: this threat may start the next
        recent = burst.recent
        newest = max(at, max(recent.values(), default=at))
        if newest - at >= self.window_s:
            return None  # too late to count
        recent[agent] = max(at, recent.get(agent, at))
        for other in [a for a, t in recent.items() if newest - t >= self.window_s]:
            del recent[other]
        if len(recent) < self.min_agents:
            return None
        members = sorted(recent, key=lambda a: (recent[a], a))
        start = recent[members[0]]
        digest = hashlib.blake2b(
            f"{threat['tenant_id']}\x00{threat['rule']}\x00{start!r}".encode(), digest_size=8
        ).hexdigest()
        burst.incident = {
            "incident_id": digest,
            "tenant_id": threat["tenant_id"],
            "rule": threat["rule"],
            "category": threat["category"],
            "severity": "EMERGENCY",
            "agent_ids": members[: self.max_listed],
            "truncated": len(members) > self.max_listed,
            "first_seen": start,
            "last_seen": newest,
            "revision": 0,
        }
        burst.recent = {}
        return burst.incident


# --- webhooks (payloads only; delivery lives with the sinks) -------------------


def slack_payload(alert: dict) -> dict:
    """A Slack-compatible incoming-webhook message for an ``Alert`` dict: a text line,
    and an attachment coloured by severity (green once resolved) with its fields.

    >>> msg = slack_payload({"state": "firing", "severity": "HIGH", "rule": "hot",
    ...     "agent_id": "a1", "tenant_id": "t1", "category": "PERFORMANCE",
    ...     "summary": "hot firing on agent a1", "updated_at": 1.8e9, "flapping": False,
    ...     "fingerprint": "f00"})
    >>> msg["text"]
    '[FIRING] HIGH hot on agent a1 (tenant t1)'
    >>> msg["attachments"][0]["color"]
    '#ff7800'

    Every value is text, never Slack markup: an agent named ``<!channel>`` or
    ``<https://evil.example|fix me>`` (agents choose their ids) would otherwise notify
    the whole channel or post a link that looks like ours.

    >>> slack_payload({"state": "firing", "severity": "HIGH", "rule": "hot",
    ...     "agent_id": "<!channel> & <https://x.example|fix>", "tenant_id": "t1",
    ...     "summary": "s", "updated_at": 1.8e9, "fingerprint": "f00"})["text"]
    '[FIRING] HIGH hot on agent &lt;!channel&gt; &amp; &lt;https://x.example|fix&gt; (tenant t1)'
    """
    severity = _slack_text(alert.get("severity") or "INFO")
    state = _slack_text(alert["state"])
    color = _RESOLVED_COLOR if state == "resolved" else SEVERITY_COLORS.get(severity, "#439fe0")
    flag = " (flapping)" if alert.get("flapping") else ""
    agent, tenant, rule = (_slack_text(alert[k]) for k in ("agent_id", "tenant_id", "rule"))
    text = (
        f"[{_slack_text(state).upper()}] {severity} {rule} on agent {agent} (tenant {tenant}){flag}"
    )
    fields = [
        {"title": "Agent", "value": agent, "short": True},
        {"title": "Tenant", "value": tenant, "short": True},
        {"title": "Rule", "value": rule, "short": True},
        {"title": "Severity", "value": severity, "short": True},
        {"title": "Category", "value": _slack_text(alert.get("category") or "-"), "short": True},
        {"title": "State", "value": state, "short": True},
    ]
    return {
        "text": text,
        "attachments": [
            {
                "color": color,
                "fallback": text,
                "title": f"{rule} · {agent}",
                "text": _slack_text(alert["summary"]),
                "fields": fields,
                "footer": f"agentwatch · {_slack_text(alert['fingerprint'])}",
                "ts": int(alert["updated_at"]),
            }
        ],
    }


def _slack_text(value: object) -> str:
    """``value`` as Slack shows text as it is: its three control characters escaped, as
    Slack's message formatting asks (``&``, ``<``, ``>``; mentions, links and dates are
    written inside ``<…>``)."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def generic_payload(alert: dict) -> dict:
    """A plain JSON webhook body for an ``Alert`` dict (Alertmanager-like envelope).

    >>> generic_payload({"state": "resolved", "fingerprint": "f00"})["status"]
    'resolved'
    """
    return {"version": "1", "status": alert["state"], "alert": dict(alert)}


def backoff_delays(
    attempts: int, base_s: float, max_s: float, seed: int | None = None
) -> list[float]:
    """Seconds to wait before each retry: ``base_s`` doubling per attempt, capped
    at ``max_s``; with a ``seed``, "equal jitter" (half fixed, half random within
    the step), the same for the same seed.

    >>> backoff_delays(5, 1.0, 10.0)
    [1.0, 2.0, 4.0, 8.0, 10.0]
    >>> delays = backoff_delays(5, 1.0, 10.0, seed=7)
    >>> delays == backoff_delays(5, 1.0, 10.0, seed=7)
    True
    >>> all(d / 2 <= j <= d for d, j in zip(backoff_delays(5, 1.0, 10.0), delays))
    True
    """
    rng = random.Random(seed) if seed is not None else None
    delays = []
    for attempt in range(attempts):
        step = min(max_s, base_s * 2.0**attempt)
        delays.append(step if rng is None else step / 2 + rng.uniform(0, step / 2))
    return delays


def bytes_per_alert(book: AlertBook) -> float:
    """Average bytes per kept alert of ``book`` (0 when it keeps none).

    >>> bytes_per_alert(AlertBook(Settings()))
    0.0
    """
    count = len(book)
    return book.state_bytes() / count if count else 0.0
