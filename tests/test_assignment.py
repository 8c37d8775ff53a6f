"""The pure assignment (agentwatch/assignment.py): filters in order, the summary when
nothing fits, scoring with type predictions and reservations, and a fleet that grows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentwatch.assignment import (
    NEUTRAL,
    WEIGHTS,
    Choice,
    Fleet,
    NoFit,
    Task,
    performance_level,
)


def test_each_agent_is_counted_under_the_first_filter_it_fails():
    fleet = Fleet()
    fleet.set_agent("other-tenant", "t2", state="active", capabilities=("gpu",), capacity=9)
    fleet.set_agent("offline", "t1", state="offline")  # also lacks gpu: counted as offline
    fleet.set_agent("quarantined", "t1", state="quarantined", capabilities=("gpu",))
    fleet.set_agent("no-gpu", "t1", state="active", capabilities=("chat",))
    fleet.set_agent("no-vram", "t1", state="idle", capabilities=("gpu",), resources={"vram": 8})
    fleet.set_agent("full", "t1", state="active", capabilities=("gpu",), resources={"vram": 24})
    fleet.set_open("full", 1, at=1.0)
    fleet.set_agent(
        "risky", "t1", state="active", capabilities=("gpu",), resources={"vram": 24},
        security_score=30.0,
    )  # fmt: skip
    fleet.set_agent(
        "requested", "t1", state="active", capabilities=("gpu",), resources={"vram": 24},
        quarantined=True,
    )  # fmt: skip
    fleet.set_agent("new", "t1")  # seen (a score) before its registration: no state yet
    task = Task("t1", required_capabilities=("gpu",), resource_requirements=(("vram", 16.0),))
    result = fleet.choose(task, WEIGHTS, min_security=50)
    assert isinstance(result, NoFit)
    assert result.considered == 8  # the other tenant's agent is not even counted
    assert result.unfit == {
        "offline": 1,
        "quarantined": 2,
        "lack capability gpu": 1,
        "lack resource vram": 1,
        "at capacity": 1,
        "security score below 50": 1,
        "no state yet": 1,
    }
    assert sum(result.unfit.values()) == result.considered
    assert result.summary.startswith("0/8 agents fit: 2 quarantined, 1 at capacity")


def test_the_first_missing_capability_is_named_and_unknown_labels_lack_everywhere():
    fleet = Fleet()
    fleet.set_agent("a", "t1", state="active", capabilities=("x",))
    fleet.set_agent("b", "t1", state="active", capabilities=("y",))
    result = fleet.choose(Task("t1", required_capabilities=("x", "y", "never-seen")), WEIGHTS)
    assert result.unfit == {"lack capability y": 1, "lack capability x": 1}


def test_more_than_64_capabilities_take_more_words():
    fleet = Fleet()
    labels = [f"skill-{i}" for i in range(150)]
    fleet.set_agent("all", "t1", state="active", capabilities=labels)
    fleet.set_agent("some", "t1", state="active", capabilities=labels[:100])
    assert fleet.caps.shape[1] == 3
    chosen = fleet.choose(Task("t1", required_capabilities=("skill-149", "skill-3")), WEIGHTS)
    assert chosen.chosen.agent_id == "all" and chosen.eligible == 1
    assert fleet.choose(Task("t1", required_capabilities=("skill-99",)), WEIGHTS).eligible == 2


def test_reservations_count_against_capacity_and_lower_availability():
    fleet = Fleet()
    fleet.set_agent("a", "t1", state="active", capacity=2)
    first = fleet.choose(Task("t1"), WEIGHTS)
    assert first.chosen.components["availability"] == 1.0
    fleet.reserve("a")
    assert fleet.choose(Task("t1"), WEIGHTS).chosen.components["availability"] == 0.5
    fleet.reserve("a")
    assert fleet.choose(Task("t1"), WEIGHTS).unfit == {"at capacity": 1}
    fleet.reserve("a", -1)
    assert fleet.choose(Task("t1"), WEIGHTS).fits


def test_unscored_agents_are_neutral_and_less_confident():
    fleet = Fleet()
    fleet.set_agent("new", "t1", state="active")
    fleet.set_agent("known", "t1", state="active")
    fleet.set_score("known", performance=0.5, cost=0.5, sla=0.5, at=1.0)
    choice = fleet.choose(Task("t1"), WEIGHTS, k=2)
    scored = {s.agent_id: s for s in (choice.chosen, *choice.candidates)}
    assert scored["new"].components == {
        "performance": NEUTRAL, "cost": NEUTRAL, "availability": 1.0, "sla": NEUTRAL,
    }  # fmt: skip
    assert scored["new"].score == scored["known"].score
    assert scored["new"].confidence < scored["known"].confidence


def test_scores_follow_every_change_after_a_first_choice():
    """The fleet keeps parts of the score per row: agents added, scored, loaded or
    reweighed after a choice are scored as if computed afresh."""
    fleet = Fleet()
    fleet.set_agent("a", "t1", state="active", capacity=2)
    fleet.set_score("a", performance=0.6, cost=0.6, sla=0.6, at=1.0)
    assert fleet.choose(Task("t1"), WEIGHTS).chosen.agent_id == "a"
    fleet.set_agent("new", "t1", state="active", capacity=2)  # neutral 0.5s, all free
    choice = fleet.choose(Task("t1"), WEIGHTS, k=2)
    scores = {s.agent_id: s.score for s in (choice.chosen, *choice.candidates)}
    assert scores == {"a": pytest.approx(0.68), "new": pytest.approx(0.6)}
    fleet.set_score("new", performance=1.0, cost=1.0, sla=1.0, at=2.0)
    assert fleet.choose(Task("t1"), WEIGHTS).chosen.score == pytest.approx(1.0)
    fleet.reserve("new")
    assert fleet.choose(Task("t1"), WEIGHTS).chosen.score == pytest.approx(0.9)
    only_availability = {"performance": 0, "cost": 0, "availability": 1, "sla": 0}
    chosen = fleet.choose(Task("t1"), only_availability).chosen
    assert (chosen.agent_id, chosen.score) == ("a", 1.0)


def test_the_task_types_predictions_refine_performance():
    fleet = Fleet()
    for agent in ("generalist", "specialist"):
        fleet.set_agent(agent, "t1", state="active")
    fleet.set_score("generalist", performance=0.8, cost=0.5, sla=0.5, at=1.0)
    fleet.set_score(
        "specialist", performance=0.6, cost=0.5, sla=0.5, at=1.0,
        by_type={"ocr": (0.99, 10.0, 50)},
    )  # fmt: skip
    assert fleet.choose(Task("t1", task_type="chat"), WEIGHTS).chosen.agent_id == "generalist"
    ocr = fleet.choose(Task("t1", task_type="ocr", estimated_duration=10.0), WEIGHTS)
    assert ocr.chosen.agent_id == "specialist"
    assert ocr.chosen.p_success == np.float32(0.99) and ocr.chosen.expected_duration_s == 10.0
    slow = fleet.choose(Task("t1", task_type="ocr", estimated_duration=2.0), WEIGHTS)
    assert slow.chosen.agent_id == "generalist"  # predicted 5x slower than the task allows
    # a newer score without the type forgets it
    fleet.set_score("specialist", performance=0.6, cost=0.5, sla=0.5, at=2.0)
    assert fleet.choose(Task("t1", task_type="ocr"), WEIGHTS).chosen.agent_id == "generalist"
    # an older score changes nothing
    assert not fleet.set_score("specialist", performance=1.0, cost=1.0, sla=1.0, at=1.5)


def test_weights_decide_and_excluded_agents_are_skipped():
    fleet = Fleet()
    fleet.set_agent("fast", "t1", state="active")
    fleet.set_agent("cheap", "t1", state="active")
    fleet.set_score("fast", performance=1.0, cost=0.0, sla=0.9, at=1.0)
    fleet.set_score("cheap", performance=0.2, cost=1.0, sla=0.9, at=1.0)
    assert fleet.choose(Task("t1"), WEIGHTS).chosen.agent_id == "fast"
    frugal = {"performance": 0.1, "cost": 0.9, "availability": 0.0, "sla": 0.0}
    assert fleet.choose(Task("t1"), frugal).chosen.agent_id == "cheap"
    only = fleet.choose(Task("t1", exclude=frozenset({"fast"})), WEIGHTS)
    assert only.chosen.agent_id == "cheap" and only.considered == 2
    assert fleet.choose(Task("t1", exclude=frozenset({"fast", "cheap"})), WEIGHTS).unfit == {
        "excluded": 2
    }


def test_the_fleet_grows_past_its_first_rows_and_keeps_every_column():
    fleet = Fleet(rows=4)
    for i in range(10):
        fleet.set_agent(f"a{i}", "t1", state="active", capabilities=("x",), capacity=2,
                        resources={"vram": float(i)})  # fmt: skip
        fleet.set_score(f"a{i}", performance=i / 10, cost=0.5, sla=0.5, at=1.0,
                        by_type={"ocr": (0.5, None, 1)})  # fmt: skip
    choice = fleet.choose(Task("t1", resource_requirements=(("vram", 5.0),)), WEIGHTS, k=3)
    assert choice.eligible == 5 and choice.chosen.agent_id == "a9"
    assert [c.agent_id for c in choice.candidates] == ["a8", "a7"]
    assert fleet.choose(Task("t1", task_type="ocr"), WEIGHTS).chosen.p_success == 0.5


def test_performance_levels():
    assert [performance_level(p) for p in (0.95, 0.75, 0.5, 0.1, None)] == [
        "excellent", "good", "fair", "poor", "unknown",
    ]  # fmt: skip


agents = st.lists(
    st.tuples(
        st.sampled_from(["t1", "t2"]),
        st.sampled_from(["active", "idle", "busy", "offline", "quarantined", None]),
        st.sets(st.sampled_from(["a", "b", "c"])),
        st.integers(0, 3),  # capacity
        st.integers(0, 3),  # open
        st.floats(0, 100),  # security
        st.booleans(),  # quarantine requested
        st.floats(0, 1),  # performance
    ),
    max_size=30,
)


@given(agents, st.sets(st.sampled_from(["a", "b", "c"])))
@settings(max_examples=150, deadline=None)
def test_the_choice_passes_every_filter_and_the_counts_add_up(agents, required):
    fleet = Fleet(rows=8)
    fleet.set_agent("warm", "t0", state="active")
    assert fleet.choose(Task("t0"), WEIGHTS).fits  # the per-row parts are kept from now on
    rows = {}
    for i, (tenant, state, caps, capacity, open_, security, requested, perf) in enumerate(agents):
        agent = f"x{i}"
        fleet.set_agent(agent, tenant, state=state, capabilities=caps, capacity=capacity,
                        security_score=security, quarantined=requested)  # fmt: skip
        fleet.set_open(agent, open_, at=1.0)
        fleet.set_score(agent, performance=perf, cost=0.5, sla=0.5, at=1.0)
        rows[agent] = (tenant, state, caps, capacity, open_, security, requested)
    result = fleet.choose(Task("t1", required_capabilities=tuple(sorted(required))), WEIGHTS, 3, 40)
    fits = {
        agent
        for agent, (tenant, state, caps, capacity, open_, security, requested) in rows.items()
        if tenant == "t1" and state in ("active", "idle") and required <= caps
        and open_ < capacity and security >= 40 and not requested
    }  # fmt: skip
    considered = sum(1 for r in rows.values() if r[0] == "t1")
    assert result.considered == considered
    if isinstance(result, Choice):
        picked = {result.chosen.agent_id, *(c.agent_id for c in result.candidates)}
        assert picked <= fits and result.eligible == len(fits)
        scores = [result.chosen.score, *(c.score for c in result.candidates)]
        assert scores == sorted(scores, reverse=True)

        def reference(agent: str) -> float:  # the score computed afresh
            _, _, _, capacity, open_, _, _ = rows[agent]
            performance = agents[int(agent[1:])][7]
            availability = (capacity - open_) / capacity
            return 0.4 * performance + 0.3 * 0.5 + 0.2 * availability + 0.1 * 0.5

        assert result.chosen.score == pytest.approx(max(map(reference, fits)), abs=1e-5)
    else:
        assert not fits
        assert sum(result.unfit.values()) == considered


typed_agents = st.lists(
    st.tuples(
        st.sampled_from(["active", "idle", "busy", "offline"]),
        st.floats(0, 1),  # performance
        st.floats(0, 1),  # p_success for "ocr"
        st.sampled_from([None, 0.0, 5.0, 30.0, 90.0]),  # its expected duration
        st.integers(0, 20),  # outcomes (0: the model knows nothing yet)
        st.booleans(),  # has a prediction for "ocr" at all
    ),
    min_size=1,
    max_size=40,
)


@given(typed_agents, st.sampled_from([None, 0.0, 10.0, 30.0, 200.0]))
@settings(max_examples=200, deadline=None)
def test_a_typed_choice_scores_every_agent_as_its_own_formula_does(agents, estimated):
    """The refinement by the task type's predictions is computed on whole columns for
    every agent at once; the chosen agent and its candidates are the best by the formula
    applied to each agent alone (whether few or most agents fit)."""
    fleet = Fleet(rows=8)
    fits = {}
    for i, (state, perf, p_success, duration, outcomes, typed) in enumerate(agents):
        agent = f"x{i}"
        fleet.set_agent(agent, "t1", state=state)
        by_type = {"ocr": (p_success, duration, outcomes)} if typed else None
        fleet.set_score(agent, performance=perf, cost=0.5, sla=0.5, at=1.0, by_type=by_type)
        if state in ("active", "idle"):
            refined = perf
            if typed and outcomes > 0:
                p = np.float32(p_success)
                if estimated is not None and duration:  # None and 0: no slowing
                    p = p * min(1.0, estimated / duration)
                evidence = outcomes / (outcomes + 5.0)
                refined = min(max(perf + evidence * (p - perf), 0.0), 1.0)
            fits[agent] = 0.4 * refined + 0.3 * 0.5 + 0.2 * 1.0 + 0.1 * 0.5
    result = fleet.choose(Task("t1", task_type="ocr", estimated_duration=estimated), WEIGHTS, 3)
    if not fits:
        assert isinstance(result, NoFit)
        return
    best = sorted(fits.values(), reverse=True)[: 1 + len(result.candidates)]
    got = [result.chosen.score, *(c.score for c in result.candidates)]
    assert got == pytest.approx(best, abs=1e-5)
    for scored in (result.chosen, *result.candidates):
        assert scored.score == pytest.approx(fits[scored.agent_id], abs=1e-5)
