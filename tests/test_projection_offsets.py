"""Where the API's projection starts reading the topics it reads from their end: at the
end as it was when the projection was assigned, not the end looked up at its first fetch
(a message sent between the two was never read: a status then lacked its agent's first
heartbeat; seen once, in test_agent_registry_api, on a loaded machine). On an idle machine
the lookup is done before the heartbeat below is sent, so this test passed with the old
code too: it guards the behaviour, the race itself needs a loaded machine."""

from __future__ import annotations

import time

import orjson
from confluent_kafka import Producer

from api.projection import AgentProjection
from infra.broker import ensure_topics
from tests.conftest import wait_until


def test_a_heartbeat_sent_right_after_the_assignment_is_read(settings):
    ensure_topics(settings)
    projection = AgentProjection(settings)
    try:
        wait_until(projection._assign, 30, "the projection's partitions assigned")
        # before any fetch of the new assignment: a logical end would be resolved after this
        beat = {"agent_id": "agent-1", "tenant_id": "t1", "timestamp": time.time()}
        producer = Producer(settings.kafka_config())
        producer.produce(settings.topic("metrics"), orjson.dumps(beat), key=b"agent-1")
        assert producer.flush(10) == 0
        wait_until(
            lambda: projection.poll_once() >= 0 and projection.heartbeat_at("agent-1"),
            20,
            "the heartbeat in the projection",
        )
    finally:
        projection.stop()
