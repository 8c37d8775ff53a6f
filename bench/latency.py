"""Produce-to-queryable latency at a steady live rate: a heartbeat's row in ``metrics`` and
a threat's row in ``threats``, each from the moment its heartbeat was produced.

    .venv/bin/python bench/latency.py                          # 20,000 heartbeats/s, 30 s
    .venv/bin/python bench/latency.py --rate 5000 --seconds 60

What it does, on this machine, against a Tansu broker it starts on a free port and a chDB
directory of its own: the dataflow runs as its own process (``python -m dataflows.heartbeats``)
and the loader in this process, as the embedded profile runs them; a producer process of
its own sends ``--agents`` agents' heartbeats at ``--rate`` per second, each stamped with the
wall-clock time it is produced (event time = produce time), and ``--spikes`` times a second
one more heartbeat, of an agent not spiked before, carries twice
``AGENTWATCH_THREAT_EXFILTRATION_BYTES`` of ``bytes_out``, which the ``data_exfiltration``
rule (more than that within its window) judges a threat at once.

Measured by polling ClickHouse every ``--poll`` seconds, as an analyst's query would see it:

- ``metrics``: the rows of ``--probes`` ordinary agents (read by their primary key, so the
  poll costs little), each row's latency = the poll that first saw it − its timestamp;
- ``threats``: each ``data_exfiltration`` threat's latency = the poll that first saw it −
  its ``first_seen`` (the spike's produce time).

A consumer of ``agents.threats`` notes when each of those threats reaches its topic
(``threat_on_its_topic``: the dataflow's and the broker's share; the rest is the loader's).
The poll interval bounds the error (a row is seen up to one interval late). The loader's
batching policy is the setting pair ``AGENTWATCH_LOADER_BATCH_ROWS`` /
``AGENTWATCH_LOADER_BATCH_AGE_S`` (whichever comes first; ``--loader-batch-age`` here),
and ``AGENTWATCH_LOADER_FINDINGS_BATCH_AGE_S`` for threats and the other findings
(``--findings-batch-age``); the findings have a loader lane of their own unless
``--one-lane`` (``AGENTWATCH_LOADER_FINDINGS_LANE``). ``threat_topic_to_queryable`` is each
threat's time from its topic to its row (the loader's share alone).
Results are printed and written as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition  # noqa: E402

from agentwatch.settings import Settings  # noqa: E402
from bench.api import finish  # noqa: E402
from infra.broker import die_with_parent_hook, ensure_topics, free_port, start_broker  # noqa: E402
from sinks.clickhouse import connect, create_schema  # noqa: E402
from sinks.loader import LoaderLanes  # noqa: E402

#: How far back each poll of ``metrics`` looks (seconds): rows come out of order.
LOOK_BACK_S = 30.0
TENANT = "tenant-000"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def agent_id(i: int) -> str:
    return f"agent-{i:06d}"


def heartbeat(
    i: int, at: float, bytes_out: int = 1024, noise: random.Random | None = None
) -> bytes:
    """Agent ``i``'s heartbeat at ``at``: the same metrics every time, or with ``noise``
    jittered as a working agent's (ClickHouse then stores the rows at a realistic size:
    constant rows compress so well that its merges behave differently, docs/reliability.md)."""
    beat = {"agent_id": agent_id(i), "tenant_id": TENANT, "timestamp": at,
            "cpu_usage": 30.0 + i % 20, "memory_usage": 50.0, "disk_usage": 40.0,
            "network_latency": 10.0, "active_tasks": 1, "completed_tasks": 100,
            "failed_tasks": 1, "error_rate": 0.01, "response_time_avg": 200.0,
            "uptime_seconds": 3600.0, "bytes_out": bytes_out}  # fmt: skip
    if noise is not None:
        gauss = noise.gauss
        beat["cpu_usage"] += gauss(0, 3)
        beat["memory_usage"] += gauss(0, 2)
        beat["disk_usage"] += gauss(0, 0.5)
        beat["network_latency"] = abs(10.0 + gauss(0, 1))
        beat["active_tasks"] = noise.randrange(4)
        beat["error_rate"] = abs(gauss(0.01, 0.003))
        beat["response_time_avg"] += gauss(0, 15)
        beat["uptime_seconds"] = at % 86_400
        beat["bytes_out"] += noise.randrange(512)
    return orjson.dumps(beat)


class SteadyProducer:
    """Heartbeats at ``rate``/s in 10 ms ticks, every agent in turn, and ``spikes``/s more
    that carry an exfiltration's bytes, each of an agent not spiked before (never a probe).

    It runs in a process of its own (spawned, so nothing of this process's threads or of
    chDB is copied into it): a load generator in the measuring process's interpreter made
    the loader there wait for the interpreter lock, which is no part of what is measured.
    ``sent``, ``spikes`` and ``behind_s`` are read from it while it runs."""

    def __init__(self, settings: Settings, options: argparse.Namespace) -> None:
        context = multiprocessing.get_context("spawn")
        self._sent, self._spikes = context.Value("q", 0), context.Value("q", 0)
        self._behind = context.Value("d", 0.0)  # the most it fell behind its schedule
        self._process = context.Process(
            target=produce_steadily, name="producer", daemon=True,
            args=(settings, options, self._sent, self._spikes, self._behind),
        )  # fmt: skip

    def start(self) -> None:
        self._process.start()

    def join(self, timeout: float | None = None) -> None:
        self._process.join(timeout)

    def is_alive(self) -> bool:
        return self._process.is_alive()

    @property
    def sent(self) -> int:
        return self._sent.value

    @property
    def spikes(self) -> int:
        return self._spikes.value

    @property
    def behind_s(self) -> float:
        return self._behind.value


def produce_steadily(settings: Settings, options: argparse.Namespace, sent, spikes, behind) -> None:
    """:class:`SteadyProducer`'s process: produce, and keep the shared counters current."""
    producer = Producer({**settings.kafka_config(), "linger.ms": getattr(options, "linger_ms", 2)})
    topic = settings.topic("metrics")
    noise = random.Random(11) if getattr(options, "noisy", False) else None
    tick, per_tick = 0.01, options.rate / 100
    spike_every = 1.0 / options.spikes if options.spikes else float("inf")
    # over the rule's limit (the seed's 1 GB an hour) in one heartbeat
    spike_bytes = int(2 * settings.threat_exfiltration_bytes)
    started = time.time()
    # spikes start once every agent has beaten (a first heartbeat registers the agent)
    first_spike = started + max(1.0, options.agents / options.rate + 0.5)
    end, next_spike, owed, n = started + options.seconds, first_spike, 0.0, 0
    next_tick = started
    while (now := time.time()) < end:
        owed += per_tick
        beats = [((n + k) % options.agents, False) for k in range(int(owed))]
        if now >= next_spike:  # one more heartbeat, of an agent not spiked before
            next_spike += spike_every
            spiked = options.probes + spikes.value % (options.agents - options.probes)
            beats.append((spiked, True))
            spikes.value += 1
        for i, spike in beats:
            value = heartbeat(i, time.time(), spike_bytes if spike else 1024, noise)
            while True:
                try:
                    producer.produce(topic, key=agent_id(i).encode(), value=value)
                    break
                except BufferError:
                    producer.poll(0.001)
        n += int(owed)
        sent.value = n
        owed -= int(owed)
        producer.poll(0)
        next_tick += tick
        behind.value = max(behind.value, time.time() - next_tick)
        time.sleep(max(0.0, next_tick - time.time()))
    producer.flush(30)


class ThreatWatch(threading.Thread):
    """When each ``data_exfiltration`` threat reaches ``agents.threats`` (the dataflow's
    share of its latency; the rest is the loader's and ClickHouse's)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="threat-watch", daemon=True)
        self.settings = settings
        self.latencies: list[float] = []
        #: when each spiked agent's threat reached the topic (each agent is spiked once)
        self.arrived: dict[str, float] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        consumer = Consumer({**self.settings.kafka_config(), "group.id": "latency-threat-watch",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False,
                             "fetch.wait.max.ms": 10})  # fmt: skip
        topic = self.settings.topic("threats")  # assigned: groups are slow on Tansu
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        try:
            while not self.stopping.is_set():
                for message in consumer.consume(100, 0.02):
                    if message.error() is not None:
                        continue
                    now = time.time()
                    threat = orjson.loads(message.value())
                    if threat.get("rule") == "data_exfiltration":
                        self.latencies.append(now - float(threat["first_seen"]))
                        self.arrived.setdefault(threat["agent_id"], now)
        finally:
            consumer.close()


def percentiles(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50_s": round(statistics.median(ordered), 3),
        "p99_s": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
        "max_s": round(ordered[-1], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=20_000, help="heartbeats per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to produce")
    parser.add_argument("--spikes", type=float, default=2.0, help="exfiltration spikes per second")
    parser.add_argument("--probes", type=int, default=20, help="agents whose rows are polled")
    parser.add_argument("--poll", type=float, default=0.05, help="poll interval (seconds)")
    parser.add_argument("--loader-batch-age", type=float, default=None,
                        help="AGENTWATCH_LOADER_BATCH_AGE_S (default: the setting's)")  # fmt: skip
    parser.add_argument(
        "--findings-batch-age",
        type=float,
        default=None,
        help="AGENTWATCH_LOADER_FINDINGS_BATCH_AGE_S (default: the setting's)",
    )
    parser.add_argument(
        "--one-lane",
        action="store_true",
        help="AGENTWATCH_LOADER_FINDINGS_LANE=false: one loader reads every topic",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/latency.json"))
    options = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="agentwatch-latency-"))
    broker = start_broker("127.0.0.1", free_port(), log_path=workdir / "tansu.log")
    dataflow = loader = None
    ok = False
    try:
        settings = Settings(
            bootstrap_servers=broker.bootstrap_servers,
            clickhouse_dsn=f"chdb://{workdir / 'chdb'}",
            var_dir=workdir / "var",
            agents_auto_register=True,  # the fleet registers by beating
            baseline_warmup_s=0,
            loader_findings_lane=not options.one_lane,
            **(
                {"loader_batch_age_s": options.loader_batch_age} if options.loader_batch_age else {}
            ),
            **(
                {"loader_findings_batch_age_s": options.findings_batch_age}
                if options.findings_batch_age
                else {}
            ),
        )
        ensure_topics(settings)
        client = connect(settings)
        create_schema(client, settings)
        db = settings.clickhouse_database
        log_path = workdir / "dataflow.log"
        with open(log_path, "wb") as log:
            dataflow = subprocess.Popen(
                [sys.executable, "-m", "dataflows.heartbeats"],
                env={**os.environ, **settings.as_env()}, stdout=log, stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parent.parent,
                preexec_fn=die_with_parent_hook(),  # noqa: PLW1509
            )  # fmt: skip
        # as the embedded API runs it: connections of its own (the polls below use `client`)
        loader = LoaderLanes(settings, connect(settings), lambda: connect(settings))
        loader.start()
        say(f"dataflow pid {dataflow.pid}, loader in this process ({len(loader.lanes)} lanes); "
            "waiting for a first row")  # fmt: skip
        warm = Producer(settings.kafka_config())
        deadline = time.monotonic() + 120
        while client.command(f"SELECT count() FROM {db}.metrics") == 0:
            warm.produce(settings.topic("metrics"), key=b"warm", value=heartbeat(0, time.time()))
            warm.flush(5)
            if time.monotonic() > deadline or dataflow.poll() is not None:
                raise RuntimeError(f"no row in metrics after 120 s; see {log_path}")
            time.sleep(0.5)

        say(f"producing {options.rate:,.0f} heartbeats/s of {options.agents:,} agents for "
            f"{options.seconds:g} s, {options.spikes:g} exfiltration spikes/s")  # fmt: skip
        producer = SteadyProducer(settings, options)
        watch = ThreatWatch(settings)
        watch.start()
        probes = ", ".join(f"'{agent_id(i)}'" for i in range(options.probes))
        # every row and threat counts once, when first seen: rows of different partitions
        # land out of order, so the polls look back a while rather than from the newest
        seen_rows: set[tuple[str, float]] = set()
        seen_threats: set[tuple[str, float]] = set()
        rows_seen: list[float] = []
        threats_seen: list[float] = []
        threats_seen_at: dict[str, float] = {}  # spiked agent → when its threat was seen
        producer.start()
        stop_at = time.time() + options.seconds + 10  # then 10 s to drain
        polls: list[float] = []  # how long each poll's two queries took (seconds)
        while time.time() < stop_at:
            time.sleep(options.poll)
            poll_started = time.time()
            since = poll_started - LOOK_BACK_S
            rows = client.query(
                f"SELECT agent_id, toFloat64(timestamp) FROM {db}.metrics "
                f"WHERE tenant_id = '{TENANT}' AND agent_id IN ({probes}) "
                f"AND timestamp > toDateTime64({since}, 3)"
            ).result_rows
            threats = client.query(
                f"SELECT agent_id, toFloat64(first_seen) FROM {db}.threats "
                f"WHERE rule = 'data_exfiltration'"
            ).result_rows
            now = time.time()
            polls.append(now - poll_started)
            for key in set(rows) - seen_rows:
                seen_rows.add(key)
                rows_seen.append(now - key[1])
            for key in set(threats) - seen_threats:
                seen_threats.add(key)
                threats_seen.append(now - key[1])
                threats_seen_at[key[0]] = now
        producer.join(30)
        watch.stopping.set()
        watch.join(10)
        results = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "agents": options.agents,
            "rate_per_s": options.rate,
            "seconds": options.seconds,
            "sent": producer.sent,
            "producer_behind_max_s": round(producer.behind_s, 3),
            "poll_s": options.poll,
            # a row is seen up to a sleep and a poll late: the polls' own time bounds the error
            "poll_query_s": percentiles(polls),
            "loader_batch_age_s": settings.loader_batch_age_s,
            "loader_batch_rows": settings.loader_batch_rows,
            "loader_findings_batch_age_s": settings.loader_findings_batch_age_s,
            "metrics_row_queryable": percentiles(rows_seen),
            "threat_queryable": {**percentiles(threats_seen), "spikes": producer.spikes},
            "threat_on_its_topic": percentiles(watch.latencies),
            # each threat's time from its topic to its row queryable (the loader's share)
            "threat_topic_to_queryable": percentiles(
                [
                    seen - watch.arrived[a]
                    for a, seen in threats_seen_at.items()
                    if a in watch.arrived
                ]
            ),  # fmt: skip
            "loader_lanes": len(loader.lanes),
            "threats_by_rule": dict(
                client.query(
                    f"SELECT rule, count() FROM {db}.threats FINAL GROUP BY rule"
                ).result_rows
            ),
            "dead_letters": client.command(f"SELECT count() FROM {db}.deadletter"),
            "loader_skipped_invalid": {
                topic: n for topic, n in loader.stats().skipped_invalid.items() if n
            },
        }
        say(json.dumps(results, indent=1))
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(json.dumps(results, indent=1) + "\n")
        say(f"written {options.out}")
        ok = True
    finally:
        if loader is not None:
            loader.stop()
        finish(workdir, broker, dataflow, ok=ok)


if __name__ == "__main__":
    main()
