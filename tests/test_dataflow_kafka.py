"""The dataflow as its own process on a real broker: output topics, kill -9, broker restart."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from agentwatch.fleet import DetectorConfig, FleetBaselines
from agentwatch.settings import Settings
from infra.broker import ensure_topics, free_port, start_broker
from schemas.heartbeats import parse_heartbeats
from sinks.clickhouse import connect, create_schema
from sinks.loader import Loader
from tests.conftest import wait_until
from tests.test_dataflow import heartbeat, stream

pytestmark = [pytest.mark.integration, pytest.mark.e2e]  # the dataflow runs as a process


class DataflowProcess:
    """``python -m dataflows.heartbeats`` with the given settings, logging to a file."""

    def __init__(self, settings: Settings, log_path: Path):
        self.settings = settings
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.terminated = False

    def start(self) -> None:
        env = {**os.environ, **self.settings.as_env()}
        with open(self.log_path, "ab") as log:
            self.terminated = False
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dataflows.heartbeats"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM), once: a second SIGTERM that arrives while the
        interpreter exits (its handlers back to the defaults) ends it with -15."""
        assert self.process is not None
        if self.process.poll() is None and not self.terminated:
            self.process.terminate()
            self.terminated = True

    def stop(self) -> int:
        """Ask it to stop (unless asked already), wait for it; its exit code."""
        assert self.process is not None
        self.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def produce(settings: Settings, values: list[bytes], pause_every: int = 0) -> None:
    producer = Producer({**settings.kafka_config(), "linger.ms": 5})
    for i, value in enumerate(values):
        try:
            agent = orjson.loads(value)["agent_id"].encode()
        except (orjson.JSONDecodeError, KeyError, TypeError):
            agent = b"junk"
        producer.produce(settings.topic("metrics"), key=agent, value=value)
        if pause_every and i % pause_every == pause_every - 1:
            producer.flush()
            time.sleep(0.05)
    producer.flush()


class TopicReader:
    """Reads every partition of some topics from the beginning, keeping all records."""

    def __init__(self, settings: Settings, names: list[str]):
        self.consumer = Consumer({**settings.kafka_config(), "group.id": "test-reader"})
        self.by_topic: dict[str, list[dict]] = {settings.topic(n): [] for n in names}
        parts = []
        for topic in self.by_topic:
            metadata = self.consumer.list_topics(topic, timeout=10).topics[topic]
            parts += [TopicPartition(topic, p, 0) for p in metadata.partitions]
        self.consumer.assign(parts)

    def poll(self) -> dict[str, list[dict]]:
        for message in self.consumer.consume(10_000, timeout=0.2):
            if message.error() is None:
                self.by_topic[message.topic()].append(orjson.loads(message.value()))
        return self.by_topic

    def close(self) -> None:
        self.consumer.close()


def expected_anomalies(settings: Settings, values: list[bytes]) -> dict[tuple, float]:
    """What an uninterrupted run reports: (agent, timestamp) → score."""
    fleet = FleetBaselines(DetectorConfig.from_settings(settings))
    output = fleet.observe(parse_heartbeats(values)[0])
    return {(a["agent_id"], a["timestamp"]): a["score"] for a in output.anomalies}


@pytest.fixture
def dataflow_settings(settings: Settings) -> Settings:
    ensure_topics(settings)
    return settings


def test_dataflow_process_publishes_anomalies_baselines_and_dead_letters(
    dataflow_settings: Settings, tmp_path: Path
):
    settings = dataflow_settings.model_copy(update={"dataflow_metrics_port": free_port()})
    values = stream(agents=6, steps=40, spike=(2, 31))
    flow = DataflowProcess(settings, tmp_path / "dataflow.log")
    flow.start()
    reader = TopicReader(settings, ["anomalies", "baselines", "deadletter"])
    try:
        produce(settings, values)
        topics = wait_until(
            lambda: (
                (out := reader.poll())[settings.topic("deadletter")].__len__() == 80
                and any(a["is_anomaly"] for a in out[settings.topic("anomalies")])
                and len({b["agent_id"] for b in out[settings.topic("baselines")]}) == 6
                and out
            ),
            60,
            "dead letters, the spike and every agent's baseline",
        )
        spike = [a for a in topics[settings.topic("anomalies")] if a["is_anomaly"]]
        assert {(a["agent_id"], a["timestamp"]) for a in spike} == {("agent-0002", 1.8e9 + 930)}
        assert {b["agent_id"] for b in topics[settings.topic("baselines")]} == {
            f"agent-{a:04d}" for a in range(6)
        }
        # the process's /metrics counted the same
        url = f"http://127.0.0.1:{settings.dataflow_metrics_port}/metrics"

        def scrape() -> dict:
            return {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(httpx.get(url, timeout=5).text)
                for s in family.samples
            }

        # what was waited for above is on partitions of its own: agents.metrics has four, and
        # the last heartbeats of the others may not be processed yet; and a baseline is
        # counted when it is made, read from agents.baselines a moment later. So the counts
        # are waited for until the process has taken every heartbeat and the reader has
        # every baseline it counted.
        beats = ("agentwatch_dataflow_heartbeats_total", ())
        made = ("agentwatch_dataflow_records_total", (("kind", "baselines"),))

        def settled() -> dict | None:
            read = len(reader.poll()[settings.topic("baselines")])  # (read, then counted)
            samples = scrape()
            done = samples.get(beats, 0) >= len(values) - 80 and read >= samples.get(made, 0)
            return samples if done else None

        samples = wait_until(settled, 30, "every heartbeat counted and every baseline read")
        topic = settings.topic("metrics")
        assert samples[beats] == len(values) - 80
        assert samples[("agentwatch_dataflow_dead_letters_total", (("topic", topic),))] == 80
        assert samples[("agentwatch_dataflow_anomalies_total", ())] == len(spike)
        assert samples[made] == len(reader.by_topic[settings.topic("baselines")])
        assert samples[("agentwatch_dataflow_shard_step_seconds_count", ())] > 0
        # the recovery snapshots, timed and sized (one per shard with state, each interval)
        samples = wait_until(
            lambda: (s := scrape())[("agentwatch_dataflow_snapshot_seconds_count", ())] > 0 and s,
            settings.snapshot_interval_s * 3 + 10,
            "a recovery snapshot",
        )
        assert 0 < samples[("agentwatch_dataflow_snapshot_seconds_sum", ())] < 5
        assert samples[("agentwatch_dataflow_state_bytes", ())] > 6 * 300  # six agents' state
    finally:
        reader.close()
        assert flow.stop() == 0, flow.log()


@pytest.mark.timeout(300)  # its own deadlines add up to more than the default
def test_kill_9_mid_stream_loses_and_invents_nothing(dataflow_settings: Settings, tmp_path: Path):
    settings = dataflow_settings
    values = stream(agents=40, steps=60, spike=(11, 45))
    # more anomalies to compare: a few spikes on other agents late in the stream
    values += [
        orjson.dumps({**orjson.loads(v), "cpu_usage": 97.0})
        for v in stream(agents=40, steps=61)[-42 * 1 : -2]
        if orjson.loads(v)["agent_id"] in ("agent-0001", "agent-0020")
    ]
    want = expected_anomalies(settings, values)
    assert len(want) >= 3
    flow = DataflowProcess(settings, tmp_path / "dataflow.log")
    flow.start()
    half = len(values) // 2
    reader = TopicReader(settings, ["anomalies", "baselines"])
    client = connect(settings)
    create_schema(client, settings)
    loader = Loader(settings, client)
    loader.start()
    try:
        produce(settings, values[:half], pause_every=100)
        wait_until(lambda: reader.poll()[settings.topic("baselines")], 60, "the first output")
        producer = threading.Thread(target=produce, args=(settings, values[half:], 100))
        producer.start()
        time.sleep(0.3)  # into the second half: some of it read, not yet snapshotted
        flow.kill()
        assert producer.is_alive(), "the kill was meant to land mid-stream"
        flow.start()
        producer.join(60)

        def all_found():
            got = reader.poll()[settings.topic("anomalies")]
            return {(a["agent_id"], a["timestamp"]): a["score"] for a in got} == want

        wait_until(all_found, 90, "every expected anomaly, with its score, after the restart")
        # the snapshots name their classes by an importable module, never the dataflow's
        # __main__ (which restores only in a process started as this one was)
        snapshots = [
            (step, blob)
            for part in sorted(settings.recovery_path.glob("part-*.sqlite3"))
            for step, blob in sqlite3.connect(part).execute("SELECT step_id, ser_change FROM snaps")
            if blob
        ]
        assert any(".agent_baselines." in step for step, _ in snapshots)
        assert [step for step, blob in snapshots if b"__main__" in blob] == []

        # ClickHouse: replayed output collapses to one row per heartbeat, none missing
        db = settings.clickhouse_database
        valid = len(parse_heartbeats(values)[0])

        def table_settled() -> bool:
            loaded = client.query(
                f"SELECT (SELECT count() FROM {db}.anomalies FINAL), "
                f"(SELECT uniqExact(agent_id, timestamp) FROM {db}.anomalies), "
                f"(SELECT count() FROM {db}.metrics FINAL)"
            ).result_rows[0]
            return loaded == (len(want), len(want), valid)

        wait_until(table_settled, 60, "anomalies and metrics in ClickHouse, once each")
        rows = client.query(
            f"SELECT agent_id, toUnixTimestamp64Milli(timestamp) / 1000, score "
            f"FROM {db}.anomalies FINAL"
        ).result_rows
        assert {(a, round(t, 3)): s for a, t, s in rows} == {
            (a, round(t, 3)): s for (a, t), s in want.items()
        }
    finally:
        loader.stop()
        reader.close()
        flow.stop()


def test_broker_restart_resumes_from_new_log_keeping_state(make_settings, tmp_path: Path):
    port = free_port()
    broker = start_broker("127.0.0.1", port)
    settings = make_settings(bootstrap_servers=broker.bootstrap_servers)
    flow = DataflowProcess(settings, tmp_path / "dataflow.log")
    try:
        ensure_topics(settings)
        flow.start()
        produce(settings, stream(agents=3, steps=30))
        reader = TopicReader(settings, ["baselines"])
        wait_until(lambda: any(b["warmed_up"] for b in reader.poll()[settings.topic("baselines")]),
                   60, "warm baselines")  # fmt: skip
        reader.close()
        assert flow.stop() == 0  # a clean stop closes the epoch and snapshots (warm)
        broker.stop()
        broker = start_broker("127.0.0.1", port)
        ensure_topics(settings)
        flow.start()
        # already warm: a spike in the first heartbeats of the new log is caught
        spike = stream(agents=3, steps=31, spike=(1, 30))[-5:-2]
        produce(settings, spike)
        reader = TopicReader(settings, ["anomalies"])
        found = wait_until(
            lambda: [a for a in reader.poll()[settings.topic("anomalies")] if a["is_anomaly"]],
            60,
            "the spike after the broker restart",
        )
        reader.close()
        assert [(a["agent_id"], a["timestamp"]) for a in found] == [("agent-0001", 1.8e9 + 900)]
        assert "source_log_replaced" in flow.log()
    finally:
        flow.stop()
        broker.stop()


def test_the_same_bad_payload_at_a_reused_offset_is_two_dead_letters(
    make_settings, chdb_dir, tmp_path: Path
):
    """The embedded broker restarts with an empty log: an identical bad payload lands at
    the same offset again, and is kept as a second dead letter (its log differs)."""
    port = free_port()
    broker = start_broker("127.0.0.1", port)
    settings = make_settings(
        bootstrap_servers=broker.bootstrap_servers, clickhouse_dsn=f"chdb://{chdb_dir}"
    )
    dead_letters = (
        f"SELECT partition, offset, value_b64, cluster_id "
        f"FROM {settings.clickhouse_database}.deadletter FINAL ORDER BY received_at"
    )
    client = connect(settings)
    create_schema(client, settings)
    loader = Loader(settings, client)
    flow = DataflowProcess(settings, tmp_path / "dataflow.log")
    values = [orjson.dumps(heartbeat(0, 1)), b"{not json", orjson.dumps(heartbeat(1, 1))]
    logs = [broker.cluster_id]
    try:
        ensure_topics(settings)
        loader.start()
        flow.start()
        produce(settings, values)

        def loaded(count: int) -> list[tuple] | None:
            rows = client.query(dead_letters).result_rows
            return rows if len(rows) == count else None

        wait_until(lambda: loaded(1), 60, "the dead letter of the first log")
        assert flow.stop() == 0, flow.log()
        broker.stop()
        broker = start_broker("127.0.0.1", port)
        logs.append(broker.cluster_id)
        ensure_topics(settings)
        flow.start()
        produce(settings, values)
        rows = wait_until(lambda: loaded(2), 60, "the dead letter of the second log")
        assert rows[0][:3] == rows[1][:3], "the same bytes at the same place of each log"
        assert [row[3] for row in rows] == logs
    finally:
        flow.stop()
        loader.stop()
        broker.stop()
        client.close()


def test_a_silent_fleet_goes_offline_by_processing_time_and_comes_back(
    make_settings, broker, tmp_path: Path
):
    """Every agent stops beating and no input at all arrives: the bounded wait on
    processing time (clock_idle_advance_s) still moves the clock, so the agents go
    offline within the grace plus the wait; one that beats again is active again."""
    settings = make_settings(
        bootstrap_servers=broker.bootstrap_servers,
        heartbeat_interval_s=1.0,  # late after 2 s, offline after 4 s
        clock_tick_s=0.2,
        clock_idle_advance_s=2.0,
    )
    ensure_topics(settings)
    grace = settings.heartbeat_interval_s * settings.heartbeat_offline_missed
    flow = DataflowProcess(settings, tmp_path / "dataflow.log")
    flow.start()
    reader = TopicReader(settings, ["state", "alerts"])
    state, alerts = settings.topic("state"), settings.topic("alerts")

    def beat(agents: range) -> float:
        now = time.time()
        produce(settings, [orjson.dumps(heartbeat(a, 0, timestamp=now)) for a in agents])
        return now

    try:
        for _ in range(6):
            last = beat(range(3))
            time.sleep(1.0)  # the agents' own pace (event time = wall time here)
        offline = wait_until(
            lambda: (
                len(
                    found := [
                        e for e in reader.poll()[state] if e["payload"].get("to") == "offline"
                    ]
                )
                == 3
                and found
            ),
            60,
            "three agents offline",
        )
        seen = time.time()
        assert {e["agent_id"] for e in offline} == {f"agent-{a:04d}" for a in range(3)}
        assert all(e["timestamp"] == pytest.approx(last + grace, abs=0.5) for e in offline)
        assert seen - last <= grace + settings.clock_idle_advance_s + 10  # 10 s: a loaded machine
        late = [e for e in reader.by_topic[state] if e["type"] == "heartbeat_late"]
        assert len(late) == 3
        back = beat(range(1))
        active = wait_until(
            lambda: [e for e in reader.poll()[state] if e["payload"].get("to") == "active"],
            30,
            "agent 0 active again",
        )
        assert [(e["agent_id"], e["timestamp"]) for e in active] == [("agent-0000", back)]

        # the alerts are on agents.alerts, not on agents.state that was waited for
        def offline_firing() -> set[str]:
            fired = [a for a in reader.poll()[alerts] if a["rule"] == "agent_offline"]
            return {a["agent_id"] for a in fired if a["state"] == "firing"}

        firing = wait_until(
            lambda: len(f := offline_firing()) >= 3 and f, 30, "agent_offline firing for three"
        )
        assert firing == {f"agent-{a:04d}" for a in range(3)}
    finally:
        reader.close()
        assert flow.stop() == 0, flow.log()


def test_a_degraded_agent_gets_a_restart_and_a_health_change_and_an_operator_can_order_one(
    make_settings, broker, tmp_path: Path
):
    """Agent 1's health falls (errors and CPU) for three heartbeats: the dataflow makes it
    degraded, says so on agents.state (health_changed, status_changed) and orders a restart
    on agents.commands; an operator's restart_requested for agent 2 becomes a restart order
    with the operator as actor."""
    settings = make_settings(
        bootstrap_servers=broker.bootstrap_servers, security_auto_quarantine=False
    )
    ensure_topics(settings)
    flow = DataflowProcess(settings, tmp_path / "dataflow.log")
    flow.start()
    reader = TopicReader(settings, ["state", "commands"])
    state, commands = settings.topic("state"), settings.topic("commands")
    sick = {"error_rate": 0.5, "cpu_usage": 99.0}
    try:
        beats = [
            orjson.dumps(heartbeat(a, step, **(sick if a == 1 and step >= 2 else {})))
            for step in range(6)
            for a in range(3)
        ]
        produce(settings, beats)
        restart = {
            "type": "restart_requested",
            "agent_id": "agent-0002",
            "tenant_id": "tenant-2",
            "actor": "ops-9",
            "timestamp": time.time(),
            "payload": {"reason": "stuck"},
        }
        producer = Producer(settings.kafka_config())
        producer.produce(settings.topic("control"), key=b"agent-0002", value=orjson.dumps(restart))
        producer.flush()
        orders = wait_until(
            lambda: len(found := reader.poll()[commands]) >= 2 and found,
            60,
            "a remediation restart and an operator's restart on agents.commands",
        )
        assert sorted((o["agent_id"], o["command"], o["actor"]) for o in orders) == [
            ("agent-0001", "restart", "system"),
            ("agent-0002", "restart", "ops-9"),
        ]

        # agents.state is not agents.commands, waited for above: agent 1's first event
        # (active) may be read long before its degradation is
        def agent_1_degraded() -> list[dict] | None:
            events = [e for e in reader.poll()[state] if e["agent_id"] == "agent-0001"]
            health = {e["payload"].get("band") for e in events if e["type"] == "health_changed"}
            status = {e["payload"].get("to") for e in events if e["type"] == "status_changed"}
            return events if "degraded" in health and "degraded" in status else None

        events = wait_until(agent_1_degraded, 30, "agent 1's degradation on agents.state")
        assert ("health_changed", "degraded") in [
            (e["type"], e["payload"].get("band")) for e in events
        ]
        assert ("status_changed", "degraded") in [
            (e["type"], e["payload"].get("to")) for e in events
        ]
    finally:
        reader.close()
        assert flow.stop() == 0, flow.log()
