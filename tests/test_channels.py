"""Which event type may travel on which lifecycle channel (pure logic, no broker)."""

from __future__ import annotations

import re
from itertools import product
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentwatch.settings import TOPICS, Settings
from api.publisher import EventPublisher
from dataflows.heartbeats import OUTPUT_TOPICS, read_events
from dataflows.kafka_source import RawBatch
from infra.broker import partitions
from schemas.events import CHANNELS, EventError, channel_of, check_channel, parse_event, refusal
from schemas.models import LifecycleEvent
from sinks.loader import LOADED, TABLES
from tests.conftest import wait_until

KNOWN = sorted(set().union(*CHANNELS.values()))
COMMANDS = [
    "rule_changed", "registered", "restart_requested", "silence_created", "silence_expired",
    "released", "quarantine_requested",
    "maintenance_requested", "maintenance_ended", "compromise_declared", "decommission_requested",
    "key_created", "key_revoked", "key_expiry_changed",
    "task_assigned", "task_released", "weights_changed",
]  # fmt: skip


def event(kind: str, agent_id: str = "a1", **payload: object) -> LifecycleEvent:
    return LifecycleEvent(
        type=kind, agent_id=agent_id, tenant_id="t1", actor=agent_id, timestamp=1.8e9,
        payload=payload,
    )  # fmt: skip


def test_the_channels_are_the_topics_and_share_no_type():
    assert set(CHANNELS) == {"events", "control", "state"} <= set(TOPICS)
    assert sum(len(types) for types in CHANNELS.values()) == len(KNOWN)
    assert sorted(CHANNELS["control"]) == sorted(COMMANDS)
    assert CHANNELS["events"] == {"conversation", "task_completed", "task_failed"}
    assert CHANNELS["state"] == {
        "status_changed", "heartbeat_late", "health_changed", "task_changed", "cluster_changed",
        "model_stats", "cluster_summary",
    }  # fmt: skip


@pytest.mark.parametrize(("channel", "kind"), list(product(CHANNELS, [*KNOWN, "teleported"])))
def test_a_type_is_accepted_on_its_own_channel_only(channel: str, kind: str):
    reason = refusal(channel, kind)
    if kind in CHANNELS[channel]:
        assert reason is None
        assert check_channel(channel, event(kind)).type == kind
        return
    home = channel_of(kind)
    assert reason.startswith(f"'{kind}' is " if home else f"unknown event type '{kind}'")
    assert f"agents.{home or channel}" in reason
    with pytest.raises(EventError, match="accepted"):
        check_channel(channel, event(kind))


@pytest.mark.parametrize("kind", COMMANDS)
def test_a_command_on_the_agents_topic_says_where_it_belongs(kind: str):
    assert refusal("events", kind) == (
        f"'{kind}' is an operator's command; it is accepted only on agents.control, "
        "which only the API writes"
    )


def test_facts_on_the_control_topic_and_forged_status_changes_say_who_writes_where():
    assert refusal("control", "task_failed") == (
        "'task_failed' is an agent's fact; it is accepted only on agents.events, which agents write"
    )
    assert refusal("events", "status_changed") == (
        "'status_changed' is a fact the dataflow derives; it is accepted only on agents.state, "
        "which only the dataflow writes"
    )
    with pytest.raises(ValueError, match="no channel 'metrics'"):
        refusal("metrics", "conversation")


@given(st.sampled_from(sorted(CHANNELS)), st.text(min_size=1, max_size=30))
def test_any_type_is_accepted_exactly_where_the_allowlist_says(channel: str, kind: str):
    assert (refusal(channel, kind) is None) == (kind in CHANNELS[channel])


def test_parse_event_checks_the_channel_only_when_told_it():
    value = event("released").model_dump_json().encode()
    assert parse_event(value).type == "released"
    assert parse_event(value, "control").type == "released"
    with pytest.raises(EventError, match="operator's command"):
        parse_event(value, "events")


def test_the_dataflow_rejects_by_channel_and_sends_derived_events_to_state():
    talk = event("conversation", counterpart="a2", text="hi")
    values = [e.model_dump_json().encode() for e in (event("released"), talk)]
    batch = RawBatch("agents.events", 0, [0, 1], [b"a1", b"a1"], values)
    on_events = read_events("events", batch)
    assert [p for p, _ in on_events.rejected] == [0] and not on_events.to_every_shard
    on_control = read_events("control", batch)
    assert [p for p, _ in on_control.rejected] == [1]
    assert [type(c).__name__ for c in on_control.to_agent_shard] == ["Release"]
    assert OUTPUT_TOPICS["events"] == "state"


def test_the_loader_reads_every_channel_into_agent_events_and_checks_it():
    assert {name: TABLES[name] for name in CHANNELS} == dict.fromkeys(CHANNELS, "agent_events")
    released = event("released").model_dump_json().encode()
    assert LOADED["control"].row(released)["channel"] == "control"
    with pytest.raises(EventError):
        LOADED["events"].row(released)
    with pytest.raises(EventError):
        LOADED["state"].row(released)


def test_the_api_publishes_only_commands():
    publisher = EventPublisher(Settings(bootstrap_servers="127.0.0.1:1"))
    with pytest.raises(ValueError, match="not published: 'status_changed' is a fact"):
        publisher.publish(orjson.loads(event("status_changed").model_dump_json()), "a1")


def test_commands_keep_one_order_on_one_partition_by_default():
    settings = Settings(metrics_partitions=4, derived_partitions=2)
    assert [partitions(settings, n) for n in ("metrics", "events", "control", "state")] == [
        4, 4, 1, 2,
    ]  # fmt: skip


def command(n: int, kind: str = "task_released") -> dict:
    """An operator's command on agents.control, numbered in its payload."""
    return LifecycleEvent(
        type=kind, agent_id="a1", tenant_id="t1", actor="ops", timestamp=1.8e9 + n,
        payload={"task_id": f"k{n}", "n": n},
    ).model_dump(mode="json")  # fmt: skip


def test_an_event_queued_for_a_broker_that_never_takes_it_is_reported() -> None:
    from infra.broker import free_port

    publisher = EventPublisher(
        Settings(bootstrap_servers=f"127.0.0.1:{free_port()}", api_broker_timeout_s=0.2)
    )
    failures: list[str] = []
    try:
        publisher.publish_later(command(1), "a1", failures.append)  # answers at once
        wait_until(lambda: failures, 15, "the undelivered report")
    finally:
        publisher.close()
    assert "did not take it" in failures[0]


def test_a_command_the_broker_did_not_take_is_not_left_queued_to_land_later() -> None:
    """The caller is told the command was not published (503): it must not reach the
    broker later, when the broker comes back."""
    from api.publisher import PublishError
    from infra.broker import free_port

    publisher = EventPublisher(
        Settings(bootstrap_servers=f"127.0.0.1:{free_port()}", api_broker_timeout_s=0.05)
    )
    try:
        with pytest.raises(PublishError, match="not published"):
            publisher.publish(command(1), "a1")
        assert len(publisher._producer) == 0  # nothing queued or waiting for its report
    finally:
        publisher.close()


def test_what_is_queued_reaches_the_log_before_what_is_published_after_it(broker) -> None:
    import uuid

    from infra.broker import ensure_topics
    from tests.test_dataflow_kafka import TopicReader

    settings = Settings(
        bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"order{uuid.uuid4().hex[:6]}."
    )
    ensure_topics(settings)
    publisher = EventPublisher(settings)
    failures: list[str] = []
    try:
        for n in range(20):
            publisher.publish_later(command(n), "a1", failures.append)
        publisher.publish(command(20), "a1")  # waits for the queued ones first
    finally:
        publisher.close()
    reader = TopicReader(settings, ["control"])
    try:
        records = wait_until(
            lambda: len(reader.poll()[settings.topic("control")]) >= 21 and reader.by_topic,
            15, "the 21 commands",
        )  # fmt: skip
    finally:
        reader.close()
    assert [r["payload"]["n"] for r in records[settings.topic("control")]] == list(range(21))
    assert failures == []


def test_the_security_guide_lists_each_channels_types_as_the_allowlist_does():
    """docs/security.md's table of topics said 12 command types where the allowlist has 17
    (found by a review): the table is read and held equal to CHANNELS."""
    guide = (Path(__file__).resolve().parents[1] / "docs" / "security.md").read_text()
    for channel, types in CHANNELS.items():
        row = next(line for line in guide.splitlines() if line.startswith(f"| `agents.{channel}`"))
        listed = set(re.findall(r"`([a-z_]+)`", row.split("|")[3]))
        assert listed == set(types), (channel, sorted(listed ^ set(types)))
