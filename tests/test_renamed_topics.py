"""A renamed topic's old name (``agentwatch.settings.RENAMED_TOPICS``: security scores moved
from ``agents.scores`` to ``agents.security``), as the API's projection reads it: an upgraded
deployment's scores from before the rename still count; a new deployment, which has no such
topic, is ready without it and never looks for it again. (The loader's side:
tests/test_loader.py, "the security scores' old topic".)"""

from __future__ import annotations

import time

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from agentwatch.settings import Settings
from api.projection import AgentProjection
from infra.broker import ensure_topics
from tests.conftest import wait_until

T0 = float(int(time.time()) - 3600)


def score_change(agent: str, at: float, score: float) -> dict:
    return {"agent_id": agent, "tenant_id": "tenant-0", "timestamp": at, "score": score,
            "delta": score - 100.0, "cause": "excessive_errors", "first_seen": None}  # fmt: skip


def produce(settings: Settings, topic: str, docs: list[dict]) -> None:
    producer = Producer(settings.kafka_config())
    for doc in docs:
        producer.produce(settings.topic(topic), orjson.dumps(doc), key=doc["agent_id"].encode())
    assert producer.flush(10) == 0


def ready(projection: AgentProjection) -> bool:
    projection.poll_once()
    return projection.ready


def test_the_projection_folds_scores_left_on_the_old_topic(settings):
    ensure_topics(settings)
    legacy = settings.topic("scores")
    admin = AdminClient(settings.kafka_config())
    admin.create_topics([NewTopic(legacy, 2, 1)])[legacy].result(10)
    # agent-1's last change before the upgrade, and agent-2's older one than on the new topic
    produce(settings, "scores", [score_change("agent-1", T0, 60.0),
                                 score_change("agent-2", T0 + 50, 10.0)])  # fmt: skip
    produce(settings, "security", [score_change("agent-2", T0 + 100, 85.0)])
    projection = AgentProjection(settings)
    try:
        wait_until(lambda: ready(projection), 30, "the projection to read both topics")
        assert projection.view("agent-1").security_score == 60.0
        assert projection.view("agent-2").security_score == 85.0  # the newest, either topic
        assert projection.messages["scores"] == 2
    finally:
        projection.stop()


def test_a_new_deployment_is_ready_without_the_old_topic_and_never_looks_for_it(settings):
    ensure_topics(settings)
    produce(settings, "security", [score_change("agent-1", T0, 70.0)])
    projection = AgentProjection(settings)
    try:
        wait_until(lambda: ready(projection), 30, "the projection ready")
        wait_until(
            lambda: projection.poll_once() >= 0 and projection.view("agent-1"), 30, "the score"
        )
        assert projection.view("agent-1").security_score == 70.0
        assert settings.topic("scores") not in projection._missing
        assert settings.topic("scores") not in projection._topics_assigned
    finally:
        projection.stop()
