"""The heartbeat dataflow: validate, judge threat rules, keep baselines, score, publish.

```
read_heartbeats: ONE input, every partition of every source (dataflows.inputs)
 ├ agents.metrics ─► heartbeats ─► validate ─┬─► dead_letters ────────────────────────────┐
 │  (a batch per partition read)              └─► split_by_shard ──┐                       │
 ├ agents.events  ─► events  ─► check_events  ─┬─► to_shards ──────┤                       │
 ├ agents.control ─► control ─► check_control ─┴─► event_dead_letters ────────────────────┤
 └ clock (a tick every clock_tick_s) ─► tick_every_shard ──────────┤                       │
                                                                   ▼                       │
                                        agent_baselines (state keyed by shard of agents:   │
                                        rules, baselines, detector, security, alerts)      │
                                                                   │                       │
                                                                findings ──► publish ◄─────┘
  to agents.metric_rows (the heartbeats taken, as Arrow batches for the loader) ·
  agents.deadletter · agents.anomalies · agents.baselines · agents.threats · agents.state …
```

Two fleet-wide steps read what the shards publish: ``coordinated_threats`` (threats keyed
by tenant → incidents) and ``behaviour_clusters`` (assignment scores keyed ``*`` → one
River k-means of the fleet → ``cluster_changed`` / ``cluster_summary`` on agents.state;
:mod:`agentwatch.clusters`).

Operators' commands (rule changes, silences, releases, quarantine and restart requests,
registrations) are applied only when they arrive on ``agents.control``, which only the API
writes; the same command on ``agents.events``, which agents write, is dead-lettered with
the reason (``schemas.events.CHANNELS`` says which type belongs where).

The clock's ticks let time pass in the shards without input (heartbeat timeouts:
an agent that stops beating goes late, then offline); the shards judge in event
time, processing time only moves a source partition that has been quiet for
``clock_idle_advance_s`` (see :mod:`agentwatch.liveness`).

An agent exists from its registration (a ``registered`` event on
``agents.control``, applied by its shard); a heartbeat of an agent never
registered (unless ``agents_auto_register``), of another tenant than its
registration's, or of a decommissioned agent is refused by the shard and
dead-lettered like a malformed one: the same record (raw bytes, topic, partition,
offset, reason) on ``agents.deadletter``.

Run it with ``python -m dataflows.heartbeats`` (settings from ``AGENTWATCH_*``): one
process of ``AGENTWATCH_DATAFLOW_WORKERS`` threads, or one process of a Bytewax cluster with
``AGENTWATCH_DATAFLOW_PROCESS_ID`` and ``AGENTWATCH_DATAFLOW_ADDRESSES`` (bytewax.run's
``-i``/``-a``; docs/deploy.md). ``python -m bytewax.run "dataflows.heartbeats:get_flow()"``
also works, without this module's /metrics and signal handling.
"""

from __future__ import annotations

import base64
import json
import logging
import signal
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
import orjson
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import Sink
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from pydantic import ValidationError

from agentwatch.alerts import CoordinationDetector
from agentwatch.clusters import BehaviourClusters
from agentwatch.collector import tune_for_batches
from agentwatch.commands import (
    AgentRegistration,
    LifecycleCommand,
    QuarantineOrder,
    Release,
    RestartOrder,
    ShardCommand,
)
from agentwatch.conversations import Conversation
from agentwatch.inbox import shard_command
from agentwatch.logfmt import OneLineMessages
from agentwatch.orchestration import TaskAssigned, TaskFinished, TaskReleased
from agentwatch.rules import RuleChangeError
from agentwatch.secrets import redact_handlers
from agentwatch.settings import Settings
from agentwatch.shard import ShardOutput, ShardState
from dataflows.clock import ClockSource, Tick, to_every_shard
from dataflows.inputs import OneInput, carried_positions, of_source
from dataflows.kafka_sink import Message, publish
from dataflows.kafka_source import STOP, KafkaBatchSource, RawBatch
from dataflows.metrics import METRICS
from dataflows.routing import plain_keys, spread_keys
from dataflows.shard_cell import ShardCell  # (and for snapshots naming __main__.ShardCell)
from schemas.events import (
    AGENT_CHANNEL,
    CONTROL_CHANNEL,
    FLEET,
    MODEL_STATS,
    SHARD_REPORTER,
    EventError,
    parse_event,
)
from schemas.heartbeats import HeartbeatBatch, parse_heartbeats
from schemas.metric_rows import encode as encode_rows
from schemas.metric_rows import pyarrow_without_pandas

log = logging.getLogger("agentwatch.dataflow")

#: The flow's name: Bytewax files every step's snapshots under ``FLOW_ID.step``.
FLOW_ID = "agentwatch_heartbeats"


@dataclass(slots=True)
class CheckedBatch:
    """A raw batch with its valid heartbeats and its rejected messages."""

    raw: RawBatch
    heartbeats: HeartbeatBatch
    rejected: list[tuple[int, str]]


def validate(max_message_bytes: int, raw: RawBatch) -> CheckedBatch:
    """Parse and validate every message of a batch (never raises on bad input)."""
    heartbeats, rejected = parse_heartbeats(raw.values, max_message_bytes)
    return CheckedBatch(raw, heartbeats, rejected)


@dataclass(slots=True)
class CheckedEvents:
    """A raw batch of ``agents.events`` or ``agents.control``: what the shards must apply
    (rule changes and silences go to every shard; a release, a quarantine order or a
    conversation to its agent's), and the rejects."""

    raw: RawBatch
    to_every_shard: list[ShardCommand]
    to_agent_shard: list[
        Release
        | QuarantineOrder
        | LifecycleCommand
        | RestartOrder
        | AgentRegistration
        | AgentFact
        | TaskAssigned
        | TaskReleased
    ]
    rejected: list[tuple[int, str]]


@dataclass(frozen=True, slots=True)
class AgentFact:
    """An agent's fact from ``agents.events`` (a conversation, a task's outcome) with the
    one message it came in: its shard screens it as it screens the agent's heartbeats
    (registered, in its registration's tenant, not decommissioned) and dead-letters it
    otherwise. Kafka does not bind a message to the agent it names (docs/security.md):
    this keeps a writer from making up agents or acting in another tenant."""

    command: Conversation | TaskFinished
    source: RawBatch

    @property
    def agent_id(self) -> str:
        return self.command.agent_id


def read_events(channel: str, raw: RawBatch) -> CheckedEvents:
    """The shard commands of a batch read from ``channel`` (a logical topic name:
    ``events`` or ``control``); an event whose type is not accepted on that channel
    (an operator's command on ``events``, an agent's fact on ``control``, an unknown
    type), or that is invalid, is rejected with the reason (never raises). A task's
    assignment, release and outcome go to its agent's shard, new weights to every
    shard; accepted types the shards have nothing to do with pass by."""
    checked = CheckedEvents(raw, [], [], [])
    for position, value in enumerate(raw.values):
        try:
            event = parse_event(value, channel)
            route = shard_command(event)
            if route is not None:
                where, command = route
                if isinstance(command, Conversation | TaskFinished):
                    command = AgentFact(command, raw.only([position]))
                (checked.to_every_shard if where == "every" else checked.to_agent_shard).append(
                    command
                )
        except EventError as exc:
            checked.rejected.append((position, str(exc)))
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"]) or "payload"
            checked.rejected.append((position, f"{event.type} payload: {where}: {error['msg']}"))
    return checked


def to_shards(keys: tuple[str, ...], checked: CheckedEvents) -> list[tuple[str, ShardCommand]]:
    """Fleet-wide commands once for every shard (each keeps its own rules and alert
    book); a release to the shard of its agent. ``keys``: each shard's key
    (:func:`shard_keys`)."""
    return [(key, command) for command in checked.to_every_shard for key in keys] + [
        (keys[shard_of(r.agent_id, len(keys))], r) for r in checked.to_agent_shard
    ]


def dead_letters(
    deadletter_topic: str, checked: CheckedBatch | CheckedEvents
) -> list[list[Message]]:
    """One dead-letter message per rejected message (reason, original bytes, position),
    as one item (:func:`one_item`)."""
    raw = checked.raw
    if checked.rejected:
        METRICS.dead_letters.labels(raw.topic).inc(len(checked.rejected))
    records = dead_letter_records(raw, checked.rejected)
    return one_item(
        [
            dead_letter_message(deadletter_topic, record, raw.keys[position])
            for record, (position, _) in zip(records, checked.rejected, strict=True)
        ]
    )


def one_item(messages: list[Message]) -> list[list[Message]]:
    """A step's messages as one item of the flow, none if there are none: the publishing
    step (:func:`~dataflows.kafka_sink.publish`) takes lists, because every item costs a
    trip through Bytewax's engine and a step's output is many messages."""
    return [messages] if messages else []


def keyed(
    key_of: Callable[[Any], str], messages_of: Callable[[Any], list[list[Message]]], item: Any
) -> list[tuple[str, list[Message]]]:
    """``messages_of(item)``'s lists, each under the key ``key_of(item)``: the publishing
    step is keyed like the step that made the messages, so they are published on its
    worker (:func:`publish_key`)."""
    key = key_of(item)
    return [(key, messages) for messages in messages_of(item)]


def publish_key(keys: tuple[str, ...], name: str) -> str:
    """The shard key messages about ``name`` (a tenant, the fleet's ``*``, a source's
    partition) are published under: one of the shards' ``keys``, so the publishing step
    has few keys (one snapshot each per epoch), whatever the tenants."""
    return keys[shard_of(name, len(keys))]


def under(key: str, messages: list[Message]) -> tuple[str, list[Message]]:
    """``messages`` under ``key`` (for the publishing step)."""
    return key, messages


def batch_key(keys: tuple[str, ...], checked: CheckedBatch | CheckedEvents) -> str:
    """The publishing key of a read batch's dead letters (by its partition)."""
    return publish_key(keys, f"{checked.raw.topic}[{checked.raw.partition}]")


def item_key(keys: tuple[str, ...], item: tuple[str, object]) -> str:
    """The publishing key of a keyed step's output (by the step's key)."""
    return publish_key(keys, item[0])


def dead_letter_records(raw: RawBatch, rejected: list[tuple[int, str]]) -> list[dict]:
    """The ``DeadLetter`` record of each ``(position, reason)`` of ``raw``: the reason,
    the original bytes and where they were read (the one layout of every dead letter:
    a malformed message, a refused event, a heartbeat the shard's registry refused)."""
    now = time.time()
    records = []
    for position, reason in rejected:
        value = raw.values[position] or b""
        key = raw.keys[position]
        records.append(
            {
                "topic": raw.topic,
                "partition": raw.partition,
                "offset": raw.offsets[position],
                "cluster_id": raw.cluster_id,
                "reason": reason,
                "key": key.decode("utf-8", "replace") if key is not None else None,
                "value_b64": base64.b64encode(value).decode("ascii"),
                "value_bytes": len(value),
                "received_at": now,
            }
        )
    return records


def dead_letter_message(deadletter_topic: str, record: dict, key: bytes | None) -> Message:
    """A dead-letter record as a message, keyed like the message it holds (``key``)."""
    return Message(deadletter_topic, key, orjson.dumps(record))


def shard_of(agent_id: str, shard_count: int) -> int:
    """The state shard an agent belongs to (stable across processes and restarts).

    >>> shard_of("agent-000001", 16)
    4
    """
    return zlib.crc32(agent_id.encode()) % shard_count


def split_by_shard(
    keys: tuple[str, ...], checked: CheckedBatch
) -> list[tuple[str, HeartbeatBatch]]:
    """Cut a batch's valid heartbeats into one sub-batch per state shard, keyed by the
    shard's key (``keys``, one per shard: :func:`shard_keys`).

    Sub-batches come in order of first appearance of their shard in the batch,
    and keep the batch's order of heartbeats.
    """
    heartbeats = checked.heartbeats
    if not len(heartbeats):
        return []
    heartbeats.partition = checked.raw.partition
    heartbeats.source = checked.raw
    shards = shards_of(heartbeats.agent_id, len(keys))
    first = shards[0]
    if (shards == first).all():
        return [(keys[first], heartbeats)]
    order = np.argsort(shards, kind="stable")
    ranked = shards[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    ends = np.r_[starts[1:], len(order)]
    groups = sorted(zip(order[starts].tolist(), starts.tolist(), ends.tolist(), strict=True))
    return [(keys[ranked[lo]], heartbeats.take(order[lo:hi])) for _, lo, hi in groups]


def shards_of(agent_ids: list[str], shard_count: int) -> np.ndarray:
    """:func:`shard_of` of every agent id, as an array.

    >>> shards_of(["agent-000001", "agent-000002"], 16).tolist()
    [4, 14]
    """
    crcs = np.fromiter(map(zlib.crc32, map(str.encode, agent_ids)), np.int64, len(agent_ids))
    return crcs % shard_count


def observe_shard(
    settings: Settings,
    wall_clock: Callable[[], float],
    cell: ShardCell | object | None,
    item: HeartbeatBatch | ShardCommand | AgentFact | Tick,
) -> tuple[ShardCell, ShardOutput]:
    """One step of a shard (its state is the shard's, in a :class:`ShardCell`): a batch
    of heartbeats (read at ``wall_clock()``), an operator's command (rule change,
    silence, release), or a tick of the clock."""
    started = time.perf_counter()
    if not isinstance(cell, ShardCell):  # (None, or a snapshot taken before ShardCell)
        cell = ShardCell(cell)
    state = cell.state = ShardState.restore(cell.live(), settings)
    if isinstance(item, AgentFact):
        refused = state.screen_fact(item.agent_id, item.command.tenant_id)
        if refused is not None:
            output = ShardOutput(dead_letters=dead_letter_records(item.source, [(0, refused)]))
            METRICS.dead_letters.labels(item.source.topic).inc()
            return cell, output
        item = item.command
    if isinstance(item, Tick):
        output = state.tick(item.wall)
    elif not isinstance(item, HeartbeatBatch):
        try:
            output = state.apply(item)
        except RuleChangeError as exc:
            log.warning("rule_change_refused action=%s rule=%s reason=%s",
                        item.action, item.target, exc)  # fmt: skip
            return cell, ShardOutput()
        except Exception:
            # A command the checks let through but the shard cannot apply: skipped, loudly.
            # Raising would stop the dataflow, and the replay after a restart would stop it
            # again at the same message, for good.
            kind = type(item).__name__
            log.exception("shard_command_failed command=%s agent=%s", kind,
                          getattr(item, "agent_id", "-"))  # fmt: skip
            METRICS.failed_commands.labels(kind).inc()
            return cell, ShardOutput()
    else:
        output = state.observe(item, wall_clock())
        METRICS.heartbeats.inc(len(item) - len(output.rejected))
        if output.rejected and item.source is not None:
            output.dead_letters = dead_letter_records(item.source, output.rejected)
            METRICS.dead_letters.labels(item.source.topic).inc(len(output.rejected))
    count_outputs(output, time.perf_counter() - started)
    for refused in output.refusals:  # (the lifecycle table said no: nothing changed)
        log.warning(
            "lifecycle_refused agent=%s tenant=%s trigger=%s actor=%s reason=%s",
            refused["agent_id"], refused["tenant_id"], refused["trigger"],
            refused["actor"], refused["reason"],
        )  # fmt: skip
    return cell, output


def count_outputs(output: ShardOutput, seconds: float) -> None:
    """A shard step's outputs and time into the process's metrics (:mod:`dataflows.metrics`)."""
    for kind in OUTPUT_TOPICS:
        records = getattr(output, kind)
        if records:
            METRICS.records.labels(kind).inc(len(records))
    if output.anomalies:
        decided = sum(1 for record in output.anomalies if record["is_anomaly"])
        if decided:
            METRICS.anomalies.inc(decided)
    for threat in output.threats:
        METRICS.threats.labels(threat["rule"], threat["severity"]).inc()
    METRICS.step_seconds.observe(seconds)


#: Which topic each kind of shard output goes to (the lifecycle events the shards
#: derive, such as ``status_changed``, go to ``agents.state``, never back onto the
#: agents' ``agents.events``).
OUTPUT_TOPICS = {
    "anomalies": "anomalies",
    "baselines": "baselines",
    "threats": "threats",
    "alerts": "alerts",
    "scores": "security",
    "commands": "commands",
    "events": "state",
    "assignment_scores": "assignment_scores",
}


def findings(
    topics: dict[str, str],
    deadletter_topic: str,
    metric_rows_topic: str,
    compression: str,
    keyed: tuple[str, ShardOutput],
) -> list[list[Message]]:
    """The shard's records as Kafka messages, keyed by agent; ``topics`` names the
    topic of each kind of output (see :data:`OUTPUT_TOPICS`); the dead letters of the
    heartbeats it refused go to ``deadletter_topic``, the heartbeats it took to
    ``metric_rows_topic`` as Arrow batches keyed by the shard (:mod:`schemas.metric_rows`:
    the loader stores them without parsing them again). A shard's ``model_stats`` is
    signed with the shard's key (only the dataflow knows it), in its payload and as its
    agent id (``shard:<key>``, :data:`~schemas.events.SHARD_REPORTER`)."""
    shard, output = keyed
    for event in output.events:
        if event["type"] == MODEL_STATS:
            event["payload"]["shard"] = shard
            event["agent_id"] = f"{SHARD_REPORTER}{shard}"
    messages = [
        Message(topic, record["agent_id"].encode(), orjson.dumps(record))
        for kind, topic in topics.items()
        for record in getattr(output, kind)
    ]
    if output.dead_letters:
        for record in output.dead_letters:
            key = None if record["key"] is None else record["key"].encode()
            messages.append(dead_letter_message(deadletter_topic, record, key))
    if output.accepted is not None:
        key = shard.encode()
        encoded = encode_rows(output.accepted, compression)
        messages += [Message(metric_rows_topic, key, rows) for rows in encoded]
    return one_item(messages)


def by_tenant(keyed: tuple[str, ShardOutput]) -> list[tuple[str, dict]]:
    """A shard's threats of one step, each keyed by its tenant (for the coordination
    step)."""
    return [(threat["tenant_id"], threat) for threat in keyed[1].threats]


def coordinate(
    settings: Settings, state: CoordinationDetector | None, threat: dict
) -> tuple[CoordinationDetector, list[dict]]:
    """Threats of one tenant → coordinated incidents (≥ K agents, same rule, window W)."""
    if state is None:
        state = CoordinationDetector(settings)
    return state, state.observe([threat])


def incident_messages(topic: str, keyed: tuple[str, list[dict]]) -> list[list[Message]]:
    tenant, incidents = keyed
    return one_item(
        [Message(topic, tenant.encode(), orjson.dumps(incident)) for incident in incidents]
    )


def fleet_scores(keyed: tuple[str, ShardOutput]) -> list[tuple[str, list[dict]]]:
    """A shard's assignment scores of one step, as they are (not yet serialised), under
    the fleet's one key (one behaviour model)."""
    scores = keyed[1].assignment_scores
    return [(FLEET, scores)] if scores else []


def cluster_behaviour(
    settings: Settings, state: BehaviourClusters | None, scores: list[dict]
) -> tuple[BehaviourClusters, list[dict]]:
    """Assignment scores of the whole fleet → ``cluster_changed`` of the agents that moved,
    and ``cluster_summary`` when due (:class:`agentwatch.clusters.BehaviourClusters`)."""
    if state is None:
        state = BehaviourClusters.from_settings(settings)
    events = []
    for score in scores:
        try:
            events += state.observe(score)
        except (KeyError, TypeError, ValueError) as exc:  # the shards' own records
            log.warning(
                "cluster_record_skipped agent=%s reason=%r", score.get("agent_id"), str(exc)
            )
    return state, events


def state_messages(topic: str, keyed: tuple[str, list[dict]]) -> list[list[Message]]:
    """Events for ``agents.state``, each keyed by its agent (``*`` for the fleet's)."""
    _, events = keyed
    return one_item(
        [Message(topic, event["agent_id"].encode(), orjson.dumps(event)) for event in events]
    )


def behaviour_clusters(
    settings: Settings, observed: Stream[tuple[str, ShardOutput]]
) -> Stream[list[Message]]:
    """The fleet-wide behaviour-cluster steps: the assignment scores of every shard's step
    (the records themselves, one item per step: no per-message filter or parse) → one
    model (keyed ``*``: a cluster means the same behaviour in every tenant, and a small
    tenant's agents are grouped with the fleet's data) → events on ``agents.state``. Its
    state, the model, is snapshotted with the rest."""
    return op.flat_map(
        "cluster_events",
        op.stateful_map(
            "behaviour_clusters",
            op.flat_map("fleet_scores", observed, fleet_scores),
            partial(cluster_behaviour, settings),
        ),
        partial(state_messages, settings.topic("state")),
    )


def build_flow(
    settings: Settings,
    source: Source[RawBatch] | None = None,
    sink: Sink[list[Message]] | None = None,
    events: Source[RawBatch] | None = None,
    control: Source[RawBatch] | None = None,
    clock: Source[Tick] | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> Dataflow:
    """The heartbeat dataflow. Without ``source``, heartbeats, agents' events and
    operators' commands are read from Kafka and the clock ticks every ``clock_tick_s``;
    with one (tests), agents' events come from ``events``, commands from ``control`` and
    ticks from ``clock``, if given. Without ``sink``, the messages go to Kafka through the
    stateful ``publish`` step (:func:`dataflows.kafka_sink.publish`: durable before each
    epoch commits); a ``sink`` (tests) gets them as lists of messages (:func:`one_item`).
    ``wall_clock`` reads the processing time at which a batch of heartbeats is taken (a
    test may drive it)."""
    if source is None:
        source, events, control = (
            KafkaBatchSource(
                settings.bootstrap_servers,
                settings.topic(name),
                settings.dataflow_group_id,
                batch_size=settings.source_batch_size,
                commit_interval_s=settings.dataflow_commit_interval_s,
                client_config=settings.kafka_config(),
                fetch_wait_ms=settings.source_fetch_wait_ms,
            )
            for name in ("metrics", AGENT_CHANNEL, CONTROL_CHANNEL)
        )
        clock = ClockSource(settings.clock_tick_s, wall_clock)
        carried = carried_positions(settings.recovery_path, FLOW_ID)
    else:
        carried = {}
    flow = Dataflow(FLOW_ID)
    # one input, so that its partitions move from epoch to epoch together (dataflows.inputs);
    # it keeps the heartbeat input's name, under which their read positions are snapshotted
    sources = {"heartbeats": source, AGENT_CHANNEL: events, CONTROL_CHANNEL: control}
    given = {name: s for name, s in (*sources.items(), ("clock", clock)) if s is not None}
    read = op.input("read_heartbeats", flow, OneInput(given, "heartbeats", carried))
    batches = op.filter_map("heartbeats", read, partial(of_source, "heartbeats"))
    checked = op.map("validate", batches, partial(validate, settings.max_message_bytes))
    # every output is keyed for the publishing step (keyed, publish_key)
    keys = shard_keys(settings)
    keyed_dead_letters = partial(
        keyed, partial(batch_key, keys), partial(dead_letters, settings.topic("deadletter"))
    )
    rejected = op.flat_map("dead_letters", checked, keyed_dead_letters)
    by_shard = op.flat_map("split_by_shard", checked, partial(split_by_shard, keys))
    checked_inputs = [
        op.map(
            f"check_{channel}",
            op.filter_map(channel, read, partial(of_source, channel)),
            partial(read_events, channel),
        )
        for channel in (AGENT_CHANNEL, CONTROL_CHANNEL)
        if channel in given
    ]
    if checked_inputs:
        changes = op.merge("lifecycle_inputs", *checked_inputs)
        rejected = op.merge(
            "all_dead_letters", rejected,
            op.flat_map("event_dead_letters", changes, keyed_dead_letters),
        )  # fmt: skip
        commands = op.flat_map("to_shards", changes, partial(to_shards, keys))
        by_shard = op.merge("shard_inputs", by_shard, commands)
    if clock is not None:
        ticks = op.flat_map(
            "tick_every_shard",
            op.filter_map("clock", read, partial(of_source, "clock")),
            partial(to_every_shard, keys),
        )
        by_shard = op.merge("clocked_inputs", by_shard, ticks)
    # the step keeps its first name: recovery snapshots are filed under it
    observed = op.stateful_map(
        "agent_baselines", by_shard, partial(observe_shard, settings, wall_clock)
    )
    topics = {kind: settings.topic(name) for kind, name in OUTPUT_TOPICS.items()}
    found = op.flat_map(
        "findings",
        observed,
        partial(keyed, itemgetter(0), partial(
            findings, topics, settings.topic("deadletter"), settings.topic("metric_rows"),
            settings.metric_rows_compression)),
    )  # fmt: skip
    tenants = op.flat_map("by_tenant", observed, by_tenant)
    incidents = op.flat_map(
        "incidents",
        op.stateful_map("coordinated_threats", tenants, partial(coordinate, settings)),
        partial(keyed, partial(item_key, keys),
                partial(incident_messages, settings.topic("incidents"))),
    )  # fmt: skip
    clusters = op.map(
        "cluster_events_keyed",
        behaviour_clusters(settings, observed),
        partial(under, publish_key(keys, FLEET)),
    )
    outputs = op.merge("outputs", rejected, found, incidents, clusters)
    if sink is None:  # (Kafka: durable at each epoch's end, dataflows.kafka_sink)
        config = {**settings.kafka_config(), "linger.ms": "5", "enable.idempotence": "false"}
        publish("publish", outputs, config)
    else:
        op.output("publish", op.map("messages", outputs, itemgetter(1)), sink)
    return flow


def get_flow() -> Dataflow:
    """The flow with settings from the environment (for ``python -m bytewax.run``)."""
    return build_flow(with_recorded_layout(Settings()))


#: The shard count of recovery directories made before the layout was recorded.
LEGACY_SHARD_COUNT = 16
#: The file in the recovery directory that records how its state is sharded.
LAYOUT_FILE = "layout.json"


def with_recorded_layout(settings: Settings) -> Settings:
    """``settings`` with the shard count and key names the state in the recovery
    directory was made with: the state of an agent lives in the shard its id hashes to,
    under that shard's key, so a different count or naming would judge agents against
    other agents' state, or none. A directory without a record gets one (the settings'
    layout for a new directory; the old default, 16 plain keys, for state made before
    the record existed; a record without key names is of plain keys)."""
    path = settings.recovery_path
    layout = path / LAYOUT_FILE
    if layout.exists():
        record = json.loads(layout.read_text())
        recorded = int(record["shard_count"])
        names = record.get("shard_key_names", "plain")
    else:
        if _holds_state(path):
            recorded, names = LEGACY_SHARD_COUNT, "plain"
        else:
            recorded, names = settings.shard_count, settings.shard_key_names
        path.mkdir(parents=True, exist_ok=True)
        record = {"shard_count": recorded, "shard_key_names": names}
        layout.write_text(json.dumps(record) + "\n")
    if recorded != settings.shard_count:
        log.warning(
            "shard_count_kept recorded=%d setting=%d dir=%s: the state is sharded by %d; "
            "clear the recovery directory (state is learned again) to change it",
            recorded, settings.shard_count, path, recorded,
        )  # fmt: skip
    if names != settings.shard_key_names:
        log.info("shard_key_names_kept recorded=%s setting=%s dir=%s",
                 names, settings.shard_key_names, path)  # fmt: skip
    return settings.model_copy(update={"shard_count": recorded, "shard_key_names": names})


def shard_keys(settings: Settings) -> tuple[str, ...]:
    """The key of each state shard (index: :func:`shard_of`), as ``settings`` names them
    (``shard_count`` and ``shard_key_names``: :mod:`dataflows.routing`).

    >>> shard_keys(Settings(shard_count=3, shard_key_names="plain"))
    ('0', '1', '2')
    """
    if settings.shard_key_names == "plain":
        return plain_keys(settings.shard_count)
    return spread_keys(settings.shard_count)


def shard_key(agent_id: str, settings: Settings) -> str:
    """The key of the state shard that holds ``agent_id``."""
    return shard_keys(settings)[shard_of(agent_id, settings.shard_count)]


def _holds_state(recovery_path: Path) -> bool:
    """Whether the recovery directory holds Bytewax state (more than the layout record)."""
    return recovery_path.exists() and any(p.name != LAYOUT_FILE for p in recovery_path.iterdir())


def recovery_config(settings: Settings) -> RecoveryConfig:
    """Bytewax recovery in ``settings.recovery_path``, created on first use.

    Bytewax prunes a snapshot once a newer one of the same state is durable and
    ``recovery_backup_interval_s`` has passed (0: at once), so the directory holds
    about one snapshot of each shard whatever the uptime (docs/reliability.md)."""
    path = settings.recovery_path
    if not _holds_state(path):
        path.mkdir(parents=True, exist_ok=True)
        init_db_dir(path, settings.recovery_partitions)
        log.info("recovery_initialized dir=%s partitions=%d", path, settings.recovery_partitions)
    return RecoveryConfig(
        str(path), backup_interval=timedelta(seconds=settings.recovery_backup_interval_s)
    )


def cluster_options(settings: Settings) -> dict[str, object]:
    """Where this process stands in its Bytewax cluster, as ``cli_main`` takes it: nothing
    for a cluster of one process, else its index and every process's address.

    >>> cluster_options(Settings())
    {}
    >>> two = "df-0:2101;df-1:2101"
    >>> cluster_options(Settings(dataflow_process_id=1, dataflow_addresses=two))
    {'process_id': 1, 'addresses': ['df-0:2101', 'df-1:2101']}
    >>> cluster_options(Settings(dataflow_process_id=2, dataflow_addresses=two))
    Traceback (most recent call last):
    ...
    ValueError: AGENTWATCH_DATAFLOW_PROCESS_ID=2 but AGENTWATCH_DATAFLOW_ADDRESSES names 2 ...
    """
    addresses = [a.strip() for a in settings.dataflow_addresses.split(";") if a.strip()]
    if settings.dataflow_process_id is None:
        if addresses:
            raise ValueError(
                "AGENTWATCH_DATAFLOW_ADDRESSES is set but AGENTWATCH_DATAFLOW_PROCESS_ID is "
                "not: give each process its index in that list (0, 1, ...)"
            )
        return {}
    if settings.dataflow_process_id >= len(addresses):
        raise ValueError(
            f"AGENTWATCH_DATAFLOW_PROCESS_ID={settings.dataflow_process_id} but "
            f"AGENTWATCH_DATAFLOW_ADDRESSES names {len(addresses)} processes "
            f"(ids 0..{len(addresses) - 1}): list every process's host:port, separated by ';'"
        )
    return {"process_id": settings.dataflow_process_id, "addresses": addresses}


def main() -> None:
    """Run the dataflow in this process until SIGTERM or Ctrl-C."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
    )
    settings = Settings()
    redact_handlers(logging.getLogger().handlers, settings.secret_values())
    for handler in logging.getLogger().handlers:
        handler.addFilter(OneLineMessages())  # (what agents send cannot break a line)

    def stop(signum: int, _frame: object) -> None:
        log.info("dataflow_stopping signal=%s", signal.Signals(signum).name)
        STOP.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    settings = with_recorded_layout(settings)
    cluster = cluster_options(settings)  # refuses a wrong cluster before anything starts
    flow = build_flow(settings)
    pyarrow_without_pandas()  # (its first conversion would import pandas: ~0.2 s)
    tune_for_batches(settings.gc_young_threshold)
    if settings.dataflow_metrics_port:
        METRICS.serve(settings.dataflow_metrics_host, settings.dataflow_metrics_port)
    log.info(
        "dataflow_starting bootstrap=%s topic=%s workers=%d shards=%d shard_keys=%s "
        "snapshot_interval_s=%g recovery=%s process=%s of %d",
        settings.bootstrap_servers, settings.topic("metrics"), settings.dataflow_workers,
        settings.shard_count, ",".join(shard_keys(settings)), settings.snapshot_interval_s,
        settings.recovery_path,
        cluster.get("process_id", 0), len(cluster.get("addresses", [])) or 1,
    )  # fmt: skip
    cli_main(
        flow,
        **cluster,
        workers_per_process=settings.dataflow_workers,
        epoch_interval=timedelta(seconds=settings.snapshot_interval_s),
        recovery_config=recovery_config(settings),
    )
    log.info("dataflow_stopped")


if __name__ == "__main__":
    main()
