"""The lifecycle state machine: its table, its paths, its refusals, and the fold that replays it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentwatch import lifecycle
from agentwatch.lifecycle import (
    COMMANDS,
    LIVE,
    RUNNING,
    TRANSITIONS,
    TRIGGERS,
    VIEWS,
    AgentRecord,
    Refusal,
    State,
    Transition,
    Trigger,
    accepted_in,
    apply,
    generated_docs,
    generated_part,
    mermaid_diagram,
    observe_heartbeat,
    on_command,
    project,
    transition,
)
from agentwatch.settings import Settings
from schemas.events import CHANNELS, CONTROL_CHANNEL, check_channel
from schemas.models import AGENT_STATES, LifecycleEvent

T0 = 1_800_000_000.0
DOC = Path(__file__).resolve().parents[1] / "docs" / "lifecycle.md"


def run(record: AgentRecord, *triggers: str, at: float = T0, **kwargs) -> AgentRecord:
    """Apply each trigger a second apart; each must be accepted."""
    for k, trigger in enumerate(triggers):
        outcome = transition(record, trigger, at + k, **kwargs)
        assert isinstance(outcome, Transition), outcome
        record = outcome.record
    return record


def registered(agent_id: str = "agent-7") -> AgentRecord:
    return run(AgentRecord.unregistered(agent_id, "t1"), "registered")


# --- the table -------------------------------------------------------------------
def test_the_states_are_the_contracts_in_its_order():
    # the security score and the rules keep a state as its index in AGENT_STATES
    # (security's int8 codes are in recovery snapshots), so the order must not move
    assert tuple(State) == AGENT_STATES
    assert len(State) == 12
    from agentwatch import rules, security

    assert {s: i for i, s in enumerate(State)} == security._STATUS_CODE
    assert [rules._STATUS_CODE[s] for s in State] == list(range(12))


def test_the_table_declares_only_states_and_every_trigger_is_documented():
    assert {t for _, t in TRANSITIONS} == set(Trigger) == set(TRIGGERS)
    for (source, trigger), target in TRANSITIONS.items():
        assert source is None or isinstance(source, State)
        assert isinstance(target, State) and isinstance(trigger, Trigger)
    assert [s for s, t in TRANSITIONS if s is None] == [None]  # only registration starts
    assert TRANSITIONS[None, Trigger.REGISTERED] is State.REGISTERED


def test_every_state_is_reachable_and_every_live_state_can_be_retired():
    reached, frontier = set(), [None]
    while frontier:
        source = frontier.pop()
        for (s, _), target in TRANSITIONS.items():
            if s == source and target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(State)
    for state in LIVE:
        step = TRANSITIONS[state, Trigger.DECOMMISSION_REQUESTED]
        assert step is State.DECOMMISSIONED or (
            TRANSITIONS[step, Trigger.DRAINED] is State.DECOMMISSIONED
        )


def test_decommissioned_is_terminal_in_the_table():
    assert not [key for key in TRANSITIONS if key[0] is State.DECOMMISSIONED]


def test_compromised_is_left_only_by_release_or_decommission():
    leaving = {
        t for (s, t), target in TRANSITIONS.items() if s is State.COMPROMISED and target != s
    }
    assert leaving == {Trigger.RELEASED, Trigger.DECOMMISSION_REQUESTED}


def test_quarantined_agents_are_not_moved_by_heartbeats_health_or_timeouts():
    for trigger in (
        Trigger.HEARTBEAT,
        Trigger.REPORTED_ACTIVE,
        Trigger.REPORTED_IDLE,
        Trigger.REPORTED_BUSY,
        Trigger.HEALTH_RECOVERED,
        Trigger.HEALTH_DEGRADED,
        Trigger.HEARTBEAT_LATE,
        Trigger.HEARTBEAT_TIMEOUT,
    ):
        for state in (State.QUARANTINED, State.COMPROMISED, State.MAINTENANCE):
            assert TRANSITIONS[state, trigger] is state, (state, trigger)


def test_the_commands_are_control_types_and_map_to_operator_triggers():
    assert set(COMMANDS) <= CHANNELS[CONTROL_CHANNEL]
    assert set(COMMANDS.values()) == {
        Trigger.QUARANTINED,
        Trigger.RELEASED,
        Trigger.MAINTENANCE_STARTED,
        Trigger.MAINTENANCE_ENDED,
        Trigger.COMPROMISED,
        Trigger.DECOMMISSION_REQUESTED,
    }


# --- the seed's paths ------------------------------------------------------------
def test_register_provision_work_and_rest():
    agent = registered()
    agent = run(agent, "provisioning_started", "provisioned", at=T0 + 10)
    assert agent.state is State.ACTIVE and agent.previous is State.PROVISIONING
    path = []
    for status in ("busy", "busy", "idle", "active"):
        outcome = observe_heartbeat(agent, T0 + 60 + len(path), status=status, active_tasks=2)
        agent = outcome.record
        path.append((str(agent.state), outcome.changed))
    assert path == [("busy", True), ("busy", False), ("idle", True), ("active", True)]
    assert agent.transitions == 6  # registered, provisioning, active, busy, idle, active


def test_a_heartbeat_before_provisioning_means_the_agent_is_up():
    assert observe_heartbeat(registered(), T0 + 1).record.state is State.ACTIVE
    failed = run(registered(), "provisioning_started", "provisioning_failed", at=T0 + 1)
    assert failed.state is State.REGISTERED


def test_degraded_and_back():
    agent = run(registered(), "reported_busy", "health_degraded", at=T0 + 1)
    assert agent.state is State.DEGRADED
    claimed = observe_heartbeat(agent, T0 + 5, status="active")
    assert not claimed.changed and claimed.record is agent  # its claim doesn't lift it
    agent = run(agent, "health_recovered", at=T0 + 6)
    assert (agent.state, agent.previous) == (State.ACTIVE, State.DEGRADED)


def test_a_silent_agent_goes_offline_and_comes_back_with_its_next_heartbeat():
    agent = run(registered(), "reported_idle", at=T0 + 1)
    late = transition(agent, "heartbeat_late", T0 + 60)
    assert isinstance(late, Transition) and not late.changed  # a warning, not a state
    agent = run(agent, "heartbeat_timeout", at=T0 + 120)
    assert agent.state is State.OFFLINE
    back = observe_heartbeat(agent, T0 + 200)
    assert back.record.state is State.ACTIVE
    assert back.event["payload"] == {
        "from": "offline",
        "to": "active",
        "reason": "heartbeat received",
        "trigger": "heartbeat",
        "transitions": agent.transitions + 1,
    }


def test_quarantine_with_an_expiry_ends_then_and_not_before():
    agent = run(registered(), "reported_busy", at=T0 + 1)
    step = transition(agent, "quarantined", T0 + 10, "ops-1", "leaked a key", until=T0 + 3600)
    agent = step.record
    assert (agent.state, agent.quarantine_until) == (State.QUARANTINED, T0 + 3600)
    assert step.event["payload"]["quarantine_until"] == T0 + 3600
    assert not observe_heartbeat(agent, T0 + 20, status="active").changed
    again = transition(agent, "quarantined", T0 + 30, "system", "score 10 below 20")
    assert not again.changed and again.record is agent
    early = transition(agent, "quarantine_expired", T0 + 3599)
    assert isinstance(early, Refusal) and "too early" in early.reason
    agent = run(agent, "quarantine_expired", at=T0 + 3600)
    assert (agent.state, agent.quarantine_until) == (State.ACTIVE, None)


def test_a_quarantine_without_expiry_needs_an_operator():
    agent = run(registered(), "quarantined", at=T0 + 1)
    refused = transition(agent, "quarantine_expired", T0 + 10**6)
    assert refused.reason == (
        "agent-7's quarantine has no expiry; only an operator's release ends it"
    )
    backwards = transition(registered(), "quarantined", T0 + 100, until=T0 + 50)
    assert isinstance(backwards, Refusal) and "would end before it begins" in backwards.reason
    with pytest.raises(ValueError, match="goes with a quarantine"):
        transition(agent, "released", T0 + 5, until=T0 + 50)


def test_compromise_outlasts_a_quarantine_expiry_until_released():
    agent = registered()
    agent = transition(agent, "quarantined", T0 + 1, until=T0 + 60).record
    agent = run(agent, "compromised", at=T0 + 2)
    assert (agent.state, agent.quarantine_until) == (State.COMPROMISED, None)
    assert not transition(agent, "quarantine_expired", T0 + 120).changed
    assert run(agent, "released", at=T0 + 130).state is State.ACTIVE


def test_decommission_drains_then_ends():
    agent = run(registered(), "reported_busy", "decommission_requested", at=T0 + 1)
    assert agent.state is State.DECOMMISSIONING
    still = observe_heartbeat(agent, T0 + 10, status="busy", active_tasks=3)
    assert not still.changed
    done = observe_heartbeat(agent, T0 + 20, status="busy", active_tasks=0)
    assert done.trigger is Trigger.DRAINED and done.record.state is State.DECOMMISSIONED
    silent = run(agent, "heartbeat_timeout", at=T0 + 30)
    assert silent.state is State.DECOMMISSIONED
    for state in (State.OFFLINE, State.QUARANTINED, State.COMPROMISED, State.REGISTERED):
        assert TRANSITIONS[state, Trigger.DECOMMISSION_REQUESTED] is State.DECOMMISSIONED


def test_maintenance_is_an_operators():
    agent = run(registered(), "reported_idle", at=T0)
    agent = on_command(agent, command("maintenance_requested", T0 + 5, reason="upgrade")).record
    assert (agent.state, agent.actor, agent.reason) == (State.MAINTENANCE, "ops-1", "upgrade")
    assert not transition(agent, "heartbeat_timeout", T0 + 500).changed
    agent = on_command(agent, command("maintenance_ended", T0 + 600)).record
    assert (agent.state, agent.reason) == (State.ACTIVE, "maintenance ended")


# --- refusals --------------------------------------------------------------------
def test_refusals_say_why():
    decommissioned = run(registered(), "decommission_requested", at=T0 + 1)
    assert transition(decommissioned, "heartbeat", T0 + 5).reason == (
        "agent-7 is decommissioned; no transition leaves decommissioned"
    )
    assert transition(AgentRecord.unregistered("a9", "t1"), "reported_busy", T0).reason == (
        "a9 is not registered; register it first (reported_busy needs a registered agent)"
    )
    assert transition(registered(), "registered", T0 + 1).reason == (
        "agent-7 is already registered (it is registered)"
    )
    busy = run(registered(), "reported_busy", at=T0 + 1)
    assert transition(busy, "maintenance_ended", T0 + 5).reason == (
        "agent-7 is busy; maintenance_ended is accepted only when it is maintenance"
    )
    quarantined = run(busy, "quarantined", at=T0 + 5)
    assert transition(quarantined, "maintenance_started", T0 + 6).reason == (
        "agent-7 is quarantined; maintenance_started is accepted only when it is active, idle, "
        "busy, degraded, maintenance or offline"
    )


def test_on_command_takes_the_payload_and_refuses_other_types():
    agent = run(registered(), "reported_busy", at=T0)
    step = on_command(agent, command("quarantine_requested", T0 + 1, reason="x", until=T0 + 99))
    assert step.record.quarantine_until == T0 + 99
    refused = on_command(agent, command("released", T0 + 2))
    assert isinstance(refused, Refusal) and "only when it is quarantined" in refused.reason
    with pytest.raises(ValueError, match="not a lifecycle command"):
        on_command(agent, command("rule_changed", T0))


def command(kind: str, at: float, **payload: object) -> LifecycleEvent:
    event = LifecycleEvent(
        type=kind, agent_id="agent-7", tenant_id="t1", actor="ops-1", timestamp=at, payload=payload
    )
    return check_channel(CONTROL_CHANNEL, event)


# --- events and the projection ---------------------------------------------------
def test_events_are_status_changed_on_the_state_channel_and_old_ones_fold():
    from agentwatch.security import SecurityScores

    step = transition(registered(), "compromised", T0 + 5, "system", "credential stuffing")
    event = check_channel("state", LifecycleEvent.model_validate(step.event))
    assert event.payload["from"] == "registered" and event.payload["to"] == "compromised"
    # the security score's quarantines (written before this module) fold too
    scores = SecurityScores.from_settings(Settings())
    out = scores.quarantine("a1", "t1", T0, "leaked a key", "ops-1")
    rows = project(out.lifecycle_events)
    assert rows["a1"].row()["state"] == "quarantined"
    assert rows["a1"].reason == "leaked a key"


def test_the_fold_refuses_undeclared_states_and_skips_other_types():
    event = {
        "type": "status_changed",
        "agent_id": "a1",
        "tenant_id": "t1",
        "actor": "system",
        "timestamp": T0,
        "payload": {"to": "teleported"},
    }
    with pytest.raises(ValueError, match="'to' must be one of registered, provisioning"):
        apply(None, event)
    assert project([{**event, "type": "released"}]) == {}


@pytest.mark.parametrize("state", [None, *State], ids=str)
def test_every_pair_of_state_and_trigger_does_what_the_table_says(state):
    for trigger in Trigger:
        record = AgentRecord("a1", "t1", state, since=T0, quarantine_until=T0 + 60)
        if state is not State.QUARANTINED:
            record.quarantine_until = None
        outcome = transition(record, trigger, T0 + 60)
        target = TRANSITIONS.get((state, trigger))
        if target is None:
            assert isinstance(outcome, Refusal) and outcome.record is record
            assert outcome.reason.startswith("a1 is ")
        elif target is state:
            assert isinstance(outcome, Transition) and outcome.event is None
            assert outcome.record is record
        else:
            assert outcome.record.state is target and outcome.event["payload"]["to"] == target
            assert outcome.record.since == T0 + 60 and record.state is state


# --- properties ------------------------------------------------------------------
AGENTS = ("a0", "a1", "a2")
STATUSES = [None, *AGENT_STATES]

steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("trigger"),
            st.sampled_from(AGENTS),
            # a number picks a trigger the agent's state accepts (below 100: one that changes
            # it, to go far into the table); a trigger is taken as it is (often refused)
            st.one_of(st.integers(0, 199), st.integers(0, 99), st.sampled_from(list(Trigger))),
            st.integers(-30, 4000),  # seconds after the previous step (events may be late)
            # a quarantine's expiry, after `at` (or not: refused)
            st.one_of(st.none(), st.sampled_from([-5, 0, 30]), st.integers(-60, 3600)),
        ),
        st.tuples(
            st.just("heartbeat"),
            st.sampled_from(AGENTS),
            st.sampled_from(STATUSES),
            st.integers(-30, 4000),
            st.one_of(st.none(), st.integers(0, 3)),  # active tasks
        ),
    ),
    max_size=80,
)


def live_run(script) -> tuple[dict[str, AgentRecord], list[dict], list]:
    """Play a script on fresh agents; check each outcome against the table as it goes."""
    records = {a: AgentRecord.unregistered(a, "t1") for a in AGENTS}
    events, outcomes, at = [], [], T0
    for kind, agent, what, dt, extra in script:
        at += dt
        before = records[agent]
        snapshot = copy.deepcopy(before)
        if kind == "heartbeat":
            outcome = observe_heartbeat(before, at, status=what, active_tasks=extra)
        else:
            if isinstance(what, int):
                legal = sorted(
                    t
                    for (s, t), target in TRANSITIONS.items()
                    if s is before.state and (what >= 100 or target is not s)
                )
                what = legal[what % len(legal)] if legal else Trigger.HEARTBEAT
            until = None if extra is None or what is not Trigger.QUARANTINED else at + extra
            outcome = transition(before, what, at, "ops-1", "", until=until)
        trigger = outcome.trigger
        assert before == snapshot  # nothing modifies the record it is given
        if isinstance(outcome, Refusal):
            assert outcome.record is before and outcome.reason.startswith(f"{agent}")
            if before.state is State.DECOMMISSIONED:
                assert "no transition leaves decommissioned" in outcome.reason
        elif not outcome.changed:
            assert outcome.record is before
            assert TRANSITIONS[before.state, trigger] is before.state
        else:
            after = outcome.record
            assert TRANSITIONS[before.state, trigger] is after.state is not before.state
            assert isinstance(after.state, State) and after.previous is before.state
            assert after.since >= before.since and after.transitions == before.transitions + 1
            assert (after.quarantine_until is not None) <= (after.state is State.QUARANTINED)
            event = LifecycleEvent.model_validate(outcome.event)
            check_channel("state", event)
            assert (event.payload["from"], event.payload["to"]) == (
                before.state and str(before.state),
                str(after.state),
            )
            events.append(outcome.event)
        outcomes.append((before.state, trigger, outcome))
        records[agent] = outcome.record
    return records, events, outcomes


@settings(max_examples=300, deadline=None)
@given(steps)
def test_no_sequence_reaches_an_undeclared_state_or_an_illegal_transition(script):
    records, _, outcomes = live_run(script)
    for record in records.values():
        assert record.state is None or record.state in State
    for state, trigger, outcome in outcomes:
        if (state, trigger) not in TRANSITIONS:
            assert isinstance(outcome, Refusal)
        if state is State.DECOMMISSIONED:
            assert isinstance(outcome, Refusal)


@settings(max_examples=300, deadline=None)
@given(steps, st.lists(st.integers(0, 80), max_size=6))
def test_replaying_the_events_gives_the_live_projection_in_any_batching(script, cuts):
    records, events, _ = live_run(script)
    live = {a: r for a, r in records.items() if r.state is not None}
    assert project(events) == live
    folded: dict[str, AgentRecord] = {}
    bounds = [0, *sorted(c for c in cuts if c <= len(events)), len(events)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        project(events[lo:hi], into=folded)
    assert folded == live
    assert {a: r.row() for a, r in folded.items()} == {a: r.row() for a, r in live.items()}
    assert {a: AgentRecord.from_row(r.row()) for a, r in folded.items()} == live


@given(st.lists(st.sampled_from(list(Trigger)), max_size=30))
def test_decommissioned_is_terminal(triggers):
    agent = run(registered(), "decommission_requested", at=T0)
    for k, trigger in enumerate(triggers):
        outcome = transition(agent, trigger, T0 + k)
        assert isinstance(outcome, Refusal) and outcome.record is agent


# --- the docs --------------------------------------------------------------------
def test_the_docs_diagram_is_generated_from_the_table():
    written = generated_part(DOC.read_text())
    assert written == generated_docs(), (
        "docs/lifecycle.md differs from the transition table; regenerate it with "
        "`python -m agentwatch.lifecycle --write docs/lifecycle.md`"
    )
    assert written.count("stateDiagram-v2") == len(VIEWS) + 1


def test_the_views_draw_every_change_of_the_table():
    drawn = set()
    for triggers in VIEWS.values():
        for line in mermaid_diagram(triggers).splitlines()[1:]:
            arrow, _, labels = line.strip().partition(" : ")
            drawn |= {(arrow, label) for label in labels.split(", ")}
    for (source, trigger), target in TRANSITIONS.items():
        if target is not source:
            assert (f"{source or '[*]'} --> {target}", str(trigger)) in drawn


def test_accepted_in_lists_the_states_in_order():
    assert accepted_in(Trigger.MAINTENANCE_ENDED) == [State.MAINTENANCE]
    assert set(RUNNING) <= set(accepted_in(Trigger.HEALTH_DEGRADED))


def test_the_module_prints_and_writes_the_generated_part(tmp_path, capsys):
    lifecycle.main([])
    assert capsys.readouterr().out == generated_docs()
    doc = tmp_path / "lifecycle.md"
    doc.write_text(f"# title\n{lifecycle.BEGIN}\nstale\n{lifecycle.END}\ntail\n")
    lifecycle.main(["--write", str(doc)])
    assert generated_part(doc.read_text()) == generated_docs()
    assert doc.read_text().endswith(f"{lifecycle.END}\ntail\n")
    with pytest.raises(SystemExit, match="usage"):
        lifecycle.main(["--frobnicate"])
