"""The dataflow as a Bytewax cluster of two processes, as the cluster profile runs it
(infra/cluster/docker-compose.yml: `python -m dataflows.heartbeats` with
AGENTWATCH_DATAFLOW_PROCESS_ID/_ADDRESSES, one recovery directory prepared beforehand), here
on loopback against the session's broker: it finds what one process finds, and each process
serves its own /metrics."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentwatch.settings import Settings
from dataflows.heartbeats import LAYOUT_FILE, recovery_config, with_recorded_layout
from infra.broker import free_port
from tests.conftest import wait_until
from tests.test_dataflow import stream
from tests.test_dataflow_kafka import DataflowProcess, TopicReader, dataflow_settings, produce

__all__ = ["dataflow_settings"]  # a fixture, used by name

pytestmark = [pytest.mark.integration, pytest.mark.e2e]  # the dataflow runs as processes


def heartbeats_counted(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "agentwatch_dataflow_heartbeats_total"
    )


@pytest.mark.timeout(150)
def test_two_processes_of_one_cluster_find_what_one_process_finds(
    dataflow_settings: Settings, tmp_path: Path
):
    peers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    shared = dataflow_settings.model_copy(
        update={
            "recovery_dir": tmp_path / "recovery",
            "recovery_partitions": 2,
            "shard_count": 4,
            "dataflow_addresses": ";".join(peers),
        }
    )
    # the compose file's `recovery` job: partitions and layout, once, before any process
    recovery_config(with_recorded_layout(shared))
    assert (shared.recovery_path / LAYOUT_FILE).exists()
    processes = [
        DataflowProcess(
            shared.model_copy(
                update={"dataflow_process_id": index, "dataflow_metrics_port": free_port()}
            ),
            tmp_path / f"dataflow-{index}.log",
        )
        for index in range(len(peers))
    ]
    for process in processes:
        process.start()
    values = stream(agents=6, steps=40, spike=(2, 31))
    reader = TopicReader(shared, ["anomalies", "baselines", "deadletter"])
    try:
        produce(shared, values)
        topics = wait_until(
            lambda: (
                (out := reader.poll())[shared.topic("deadletter")].__len__() == 80
                and any(a["is_anomaly"] for a in out[shared.topic("anomalies")])
                and len({b["agent_id"] for b in out[shared.topic("baselines")]}) == 6
                and out
            ),
            90,
            "dead letters, the spike and every agent's baseline from the cluster",
        )
        spike = [a for a in topics[shared.topic("anomalies")] if a["is_anomaly"]]
        assert {(a["agent_id"], a["timestamp"]) for a in spike} == {("agent-0002", 1.8e9 + 930)}
        # each process serves its own /metrics; together they counted every valid heartbeat
        counted = wait_until(
            lambda: (
                (n := [heartbeats_counted(p.settings.dataflow_metrics_port) for p in processes])
                and sum(n) == len(values) - 80
                and n
            ),
            30,
            "both processes' /metrics",
        )
        # the default 4 shards over 2 workers: both judge agents (the shards' keys are named so
        # that Bytewax routes two to each: dataflows/routing.py; plain names "0".."3" all went
        # to one worker)
        assert len(counted) == 2 and all(counted), counted
    finally:
        reader.close()
        # a cluster stops together: every process is told, then each is waited for (one
        # process alone waits for its peers' end of input)
        for process in processes:
            process.terminate()
        codes = [process.stop() for process in processes]
        logs = "\n".join(process.log() for process in processes)
        assert codes == [0, 0], logs
    assert "process=1 of 2" in processes[1].log()
