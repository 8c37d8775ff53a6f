"""Scale-out changes nothing but speed: the dataflow as a Bytewax cluster of two
processes (one worker each, the state's shards spread over both: dataflows/routing.py)
publishes exactly what one process publishes for the same input, record for record, on
every per-agent output topic."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from agentwatch.settings import Settings
from dataflows.heartbeats import recovery_config, shard_keys, with_recorded_layout
from dataflows.routing import worker_of
from infra.broker import ensure_topics, free_port
from tests.conftest import wait_until
from tests.test_dataflow import heartbeat, stream
from tests.test_dataflow_kafka import DataflowProcess, TopicReader, expected_anomalies, produce

pytestmark = [pytest.mark.integration, pytest.mark.e2e]  # the dataflow runs as processes

#: The per-agent outputs compared, and the fields that say when (processing time), not what.
COMPARED = ("anomalies", "baselines", "threats", "alerts", "security", "commands", "state",
            "assignment_scores", "deadletter")  # fmt: skip
WHEN_FIELDS = ("received_at", "published_at", "processed_at")


def comparable(prefix: str, record: dict) -> bytes:
    """The record without its processing-time fields, and a dead letter's topic without
    the run's topic prefix."""
    kept = {k: v for k, v in record.items() if k not in WHEN_FIELDS}
    if "topic" in kept:
        kept["topic"] = kept["topic"].removeprefix(prefix)
    return orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)


def run(
    settings: Settings,
    processes: int,
    values: list[bytes],
    tmp_path: Path,
    dead_letters: int,
    exfiltrating: set[str],
) -> dict:
    """Everything the dataflow published, per topic, as a multiset of records (once the
    ``dead_letters`` and a data_exfiltration threat of each agent in ``exfiltrating`` are
    among them)."""
    ensure_topics(settings)
    peers = [f"127.0.0.1:{free_port()}" for _ in range(processes)] if processes > 1 else []
    shared = settings.model_copy(
        update={
            "recovery_dir": tmp_path / f"recovery-{processes}",
            "recovery_partitions": processes,
            "dataflow_addresses": ";".join(peers),
        }
    )
    recovery_config(with_recorded_layout(shared))
    flows = [
        DataflowProcess(
            shared.model_copy(update={"dataflow_process_id": i if peers else None}),
            tmp_path / f"dataflow-{processes}-{i}.log",
        )
        for i in range(processes)
    ]
    for flow in flows:
        flow.start()
    reader = TopicReader(shared, list(COMPARED))
    expected = expected_anomalies(shared, values)
    seen: list[list[int]] = []
    try:
        produce(shared, values)

        def settled() -> dict | None:
            out = reader.poll()
            counts = [len(records) for records in out.values()]
            # what is known to come is waited for: the anomalies (mid-stream), the dead
            # letters (the junk is on a partition of its own: it may be done before or
            # after the others) and the exfiltration threats of the stream's last
            # heartbeats; three quiet polls (0.6 s) are left only for what no count says
            threats = out[shared.topic("threats")]
            exfiltrated = {t["agent_id"] for t in threats if t["rule"] == "data_exfiltration"}
            complete = (
                len(out[shared.topic("anomalies")]) >= len(expected)
                and len(out[shared.topic("deadletter")]) >= dead_letters
                and exfiltrated >= exfiltrating
            )
            done = complete and seen[-2:] == [counts, counts]  # and nothing new for 3 polls
            seen.append(counts)
            return out if done else None

        out = wait_until(settled, 90, "the dataflow's outputs, complete and settled")
    finally:
        reader.close()
        for flow in flows:
            flow.terminate()
        codes = [flow.stop() for flow in flows]
    assert codes == [0] * processes, "\n".join(flow.log() for flow in flows)
    return {
        topic.removeprefix(shared.topic_prefix): Counter(
            comparable(shared.topic_prefix, record) for record in records
        )
        for topic, records in out.items()
    }


def on_heartbeats(records: Counter) -> tuple[Counter, set[str]]:
    """Assignment scores: those not published on heartbeats, and the agents of those that were."""
    other, agents = Counter(), set()
    for record, n in records.items():
        score = orjson.loads(record)
        if score["cause"] == "heartbeat":
            agents.add(score["agent_id"])
        else:
            other[record] = n
    return other, agents


@pytest.mark.timeout(240)
def test_two_processes_publish_exactly_what_one_process_publishes(
    settings: Settings, make_settings, tmp_path
):
    values = stream(agents=12, steps=60, spike=(2, 31), saturated=(5, range(40, 48)))
    exfiltration = int(2 * settings.threat_exfiltration_bytes)  # a threat, a security change
    values += [orjson.dumps(heartbeat(agent, 60 + step, bytes_out=exfiltration))
               for step in range(3) for agent in (7, 10)]  # fmt: skip
    base = {"shard_count": 4, "bootstrap_servers": settings.bootstrap_servers}
    known = {"dead_letters": 120, "exfiltrating": {"agent-0007", "agent-0010"}}
    one = run(make_settings(**base), 1, values, tmp_path, **known)
    two = run(make_settings(**base), 2, values, tmp_path, **known)
    keys = shard_keys(make_settings(**base))
    assert sorted(worker_of(key, 2) for key in keys) == [0, 0, 1, 1]  # both processes judge
    # An assignment score on heartbeats is judged at an agent's last heartbeat of a batch
    # (agentwatch/orchestration.py): *when* it is published depends on where batches are
    # cut, which two processes under load may do otherwise; those scores are compared by
    # agent, the others (tasks, states, weights) record for record.
    scores = "agents.assignment_scores"
    one[scores], beat_one = on_heartbeats(one[scores])
    two[scores], beat_two = on_heartbeats(two[scores])
    assert beat_one and beat_one == beat_two, (beat_one, beat_two)
    for topic in one:
        assert one[topic] == two[topic], (topic, sum(one[topic].values()), sum(two[topic].values()))
    sizes = {topic.removeprefix("agents."): sum(one[topic].values()) for topic in one}
    assert sizes["deadletter"] == 120 and sizes["anomalies"] and sizes["baselines"], sizes
    assert sizes["threats"] and sizes["security"] and sizes["alerts"], sizes
