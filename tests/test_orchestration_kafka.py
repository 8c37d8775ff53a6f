"""Orchestration through the real broker: the dataflow process accepts task_assigned from
agents.control up to the agent's capacity and refuses the rest, hands only accepted tasks
to the agent (run_task on agents.commands), frees a slot on the agent's task_completed
(agents.events), and publishes assignment scores on agents.assignment_scores."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from agentwatch.settings import Settings
from dataflows.heartbeats import shard_key
from infra.broker import ensure_topics
from schemas.models import AgentCommand, AssignmentScore, ModelStats, TaskRecord
from tests.conftest import wait_until
from tests.test_dataflow import START, heartbeat
from tests.test_dataflow_kafka import DataflowProcess, TopicReader, produce

pytestmark = [pytest.mark.integration, pytest.mark.e2e]  # the dataflow runs as a process

AGENT = "agent-0000"


def send(settings: Settings, channel: str, kind: str, at: float, **payload: object) -> None:
    value = {
        "type": kind, "agent_id": AGENT, "tenant_id": "tenant-0",
        "actor": AGENT if channel == "events" else "ops-1", "timestamp": at, "payload": payload,
    }  # fmt: skip
    producer = Producer(settings.kafka_config())
    producer.produce(settings.topic(channel), key=AGENT.encode(), value=orjson.dumps(value))
    producer.flush()


def task(task_id: str) -> dict:
    return {
        "task_id": task_id,
        "task_type": "etl",
        "score": 0.7,
        "components": {"performance": 0.7, "cost": 0.7, "availability": 0.7, "sla": 0.7},
        "weights": {},
        "assigned_by": "api-1",
    }


@pytest.mark.timeout(180)
def test_tasks_beyond_capacity_are_refused_and_an_outcome_frees_a_slot(
    make_settings, broker, tmp_path: Path
) -> None:
    settings = make_settings(bootstrap_servers=broker.bootstrap_servers, agents_auto_register=False)
    ensure_topics(settings)
    flow = DataflowProcess(settings, tmp_path / "dataflow.log")
    reader = TopicReader(settings, ["state", "commands", "assignment_scores"])
    state, commands, scores = (
        settings.topic(n) for n in ("state", "commands", "assignment_scores")
    )

    def changed() -> list[TaskRecord]:
        return [
            TaskRecord.model_validate(e["payload"])
            for e in reader.poll()[state]
            if e["type"] == "task_changed"
        ]

    try:
        flow.start()
        send(settings, "control", "registered", START - 60, name="A0", agent_type="bot",
             owner="team", max_concurrent_tasks=2)  # fmt: skip
        wait_until(
            lambda: any(e["payload"].get("to") == "registered" for e in reader.poll()[state]),
            60,
            "the agent registered",
        )
        produce(settings, [orjson.dumps(heartbeat(0, 0))])
        wait_until(
            lambda: any(e["payload"].get("to") == "active" for e in reader.poll()[state]),
            60,
            "the agent active",
        )
        for n in range(4):
            send(settings, "control", "task_assigned", START + 1 + n, **task(f"k{n}"))
        first = wait_until(lambda: len(changed()) == 4 and changed(), 60, "four verdicts")
        assert [(t.task_id, t.status, t.agent_active_tasks) for t in first] == [
            ("k0", "accepted", 1),
            ("k1", "accepted", 2),
            ("k2", "refused", 2),
            ("k3", "refused", 2),
        ]
        assert first[2].reason == "agent agent-0000 is at capacity: 2/2 tasks open"

        # the outcome (agents.events) and the next assignment (agents.control) are on two
        # topics, with no order between them: an assignment read before the outcome is
        # refused, rightly. The slot is free once the shard has taken the outcome.
        send(settings, "events", "task_completed", START + 20, task_id="k0", duration_s=12.5)
        wait_until(lambda: len(changed()) == 5, 60, "the outcome taken")
        send(settings, "control", "task_assigned", START + 21, **task("k4"))
        later = wait_until(lambda: len(changed()) == 6 and changed()[4:], 60, "the slot freed")
        assert [(t.task_id, t.status, t.agent_active_tasks) for t in later] == [
            ("k0", "completed", 1),
            ("k4", "accepted", 2),
        ]
        assert later[0].duration_s == 12.5

        runs = wait_until(
            lambda: len(reader.poll()[commands]) >= 3 and reader.by_topic[commands], 30, "runs"
        )
        orders = [AgentCommand.model_validate(c) for c in runs]
        assert [(c.command, c.task_id) for c in orders] == [
            ("run_task", "k0"),
            ("run_task", "k1"),
            ("run_task", "k4"),
        ]

        # the scores (agents.assignment_scores) are a third topic: the one of k4's acceptance
        # may be read after its task_changed and run_task were; it is waited for
        def published_through_k4() -> list[AssignmentScore] | None:
            published = [AssignmentScore.model_validate(s) for s in reader.poll()[scores]]
            return (
                published
                if any(s.active_tasks == 2 and s.tasks_completed == 1 for s in published)
                else None
            )

        published = wait_until(published_through_k4, 30, "the score after k4's acceptance")
        assert {s.agent_id for s in published} == {AGENT}
        assert {"state", "task"} <= {s.cause for s in published}
        last = published[-1]
        assert (last.active_tasks, last.capacity, last.availability) == (2, 2, 0.0)
        assert last.tasks_completed == 1 and last.by_type["etl"].outcomes == 1

        def model_stats() -> list[ModelStats]:
            events = reader.poll()[state]
            return [
                ModelStats.model_validate(e["payload"])
                for e in events
                if e["type"] == "model_stats"
            ]

        stats = wait_until(model_stats, 30, "the shard's model stats (on the clock's tick)")[0]
        assert (stats.shard, stats.outcomes) == (shard_key(AGENT, settings), 1)
    finally:
        reader.close()
        assert flow.stop() == 0, flow.log()
