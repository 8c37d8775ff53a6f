"""The projection-backed tenant lookup asks ClickHouse only about agents it does not hold."""

from __future__ import annotations

from contextlib import contextmanager

from agentwatch.directory import AgentView
from api.tenants import ProjectedTenants


class Projection:
    def __init__(self, views: dict[str, AgentView], ready: bool = True) -> None:
        self.views, self.ready = views, ready

    @contextmanager
    def locked(self):
        class Held:
            views = self.views

        yield Held()


class Fallback:
    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def tenants_of(self, agent_ids, within=None):
        self.asked.append(list(agent_ids))
        return {a: "t9" for a in agent_ids if a.startswith("old")}

    def states_of(self, agent_ids):
        self.asked.append(list(agent_ids))
        return {a: "offline" for a in agent_ids if a.startswith("old")}


def test_held_agents_are_answered_from_memory_the_rest_in_one_question():
    views = {
        "a1": AgentView("a1", "t1", state="quarantined"),
        "a2": AgentView("a2", "t2"),
    }
    fallback = Fallback()
    lookup = ProjectedTenants(Projection(views), fallback)
    assert lookup.tenants_of(["a1", "a2", "old1", "ghost"]) == {
        "a1": "t1", "a2": "t2", "old1": "t9"
    }  # fmt: skip
    assert fallback.asked == [["old1", "ghost"]]
    assert lookup.tenants_of(["a1", "a2"], within="t1") == {"a1": "t1"}  # t2's is unknown
    assert lookup.states_of(["a1", "a2", "old1"]) == {"a1": "quarantined", "old1": "offline"}
    # a2 is held with no state the topics still hold: ClickHouse may have an older one
    assert fallback.asked[-1] == ["a2", "old1"]


def test_a_projection_not_ready_asks_everything_of_the_fallback():
    fallback = Fallback()
    lookup = ProjectedTenants(Projection({"a1": AgentView("a1", "t1")}, ready=False), fallback)
    assert lookup.tenants_of(["a1", "old1"]) == {"old1": "t9"}
    assert fallback.asked == [["a1", "old1"]]
