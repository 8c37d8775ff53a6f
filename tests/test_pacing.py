"""The API process's background threads let requests in (``sinks.background.Pacer``).

The projection folds a batch of messages with its lock held; at each pause it lets the
lock go, so a status request (another thread) reads the registry in the middle of a
batch instead of waiting for all of it, and the fold still takes every message. How
much this shortens the API's tail is measured by ``bench/api_assign.py``, not here.
"""

from __future__ import annotations

import threading
import time

import orjson
from confluent_kafka import Producer

from api.projection import AgentProjection
from infra.broker import ensure_topics
from sinks.background import Pacer
from tests.conftest import wait_until

AGENTS = 300


def score_change(agent: str, at: float, score: float) -> dict:
    return {"agent_id": agent, "tenant_id": "tenant-0", "timestamp": at, "score": score,
            "delta": score - 100.0, "cause": "excessive_errors", "first_seen": None}  # fmt: skip


def test_the_projection_lets_go_of_its_lock_at_every_pause_and_folds_everything(settings):
    ensure_topics(settings)
    producer = Producer(settings.kafka_config())
    at = time.time() - 60
    for i in range(AGENTS):
        doc = score_change(f"agent-{i:03d}", at, float(i % 100))
        producer.produce(settings.topic("security"), orjson.dumps(doc), key=b"k")
    assert producer.flush(10) == 0
    projection = AgentProjection(settings)
    seen_in_pauses: list[int | None] = []

    def reader() -> None:  # a request's thread: takes the lock, reads, lets go
        if projection.lock.acquire(timeout=5):
            try:
                seen_in_pauses.append(len(projection.directory.views))
            finally:
                projection.lock.release()
        else:
            seen_in_pauses.append(None)

    def pause(_seconds: float) -> None:
        thread = threading.Thread(target=reader)
        thread.start()
        thread.join(10)

    projection._pacer = Pacer(slice_s=0.0, pause_s=0.0, sleep=pause)
    try:
        wait_until(
            lambda: projection.poll_once() >= 0 and projection.ready, 30, "the registry read"
        )
        assert len(projection.directory.views) == AGENTS
        assert projection.view("agent-299").security_score == 99.0
        assert projection._pacer.pauses >= 2
        assert None not in seen_in_pauses, "a pause kept the projection's lock"
        # the reader ran between messages of one batch: it saw part of the registry
        assert any(0 < seen < AGENTS for seen in seen_in_pauses), seen_in_pauses
    finally:
        projection.stop()
