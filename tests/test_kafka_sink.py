"""The dataflow's publishing step (``dataflows.kafka_sink``): every message reaches the
broker, and an epoch's end waits for the broker and raises on what it refused."""

from __future__ import annotations

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from confluent_kafka import Consumer, KafkaException, TopicPartition

from agentwatch.kafka_logs import LIBRDKAFKA_LOG
from dataflows.kafka_sink import Message, Outbox, publish
from infra.broker import ensure_topics, free_port
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e  # (a broker)


def test_every_message_of_every_key_reaches_the_broker(make_settings, broker):
    settings = make_settings(bootstrap_servers=broker.bootstrap_servers)
    ensure_topics(settings)
    topic = settings.topic("deadletter")
    items = [
        (f"shard-{i % 3}", [Message(topic, b"k%d" % i, b"v%d-%d" % (i, j)) for j in range(5)])
        for i in range(40)
    ]
    flow = Dataflow("publish_test")
    publish("publish", op.input("items", flow, TestingSource(items, batch_size=7)),
            {"bootstrap.servers": broker.bootstrap_servers, "linger.ms": "5",
             "logger": LIBRDKAFKA_LOG})  # fmt: skip
    run_main(flow)  # (returns after the last epoch's end: everything settled)

    consumer = Consumer(
        {"bootstrap.servers": broker.bootstrap_servers, "group.id": "t", "logger": LIBRDKAFKA_LOG}
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    seen: list[bytes] = []
    try:
        wait_until(
            lambda: (
                seen.extend(m.value() for m in consumer.consume(500, 0.2) if not m.error())
                or len(seen) >= 200
            ),
            20,
            "200 messages",
        )
    finally:
        consumer.close()
    assert sorted(seen) == sorted(b"v%d-%d" % (i, j) for i in range(40) for j in range(5))


def test_an_epochs_end_raises_when_the_broker_never_took_the_messages():
    """Nothing listens at the address: the messages time out, and the wait for them (the
    publishing step's snapshot, before its epoch can commit) raises instead of passing."""
    box = Outbox({"bootstrap.servers": f"127.0.0.1:{free_port()}", "message.timeout.ms": "300"})
    box.send([Message("t", None, b"lost")])
    with pytest.raises(KafkaException, match="1 messages not delivered"):
        box.settle()
    box.settle()  # (reported once)
