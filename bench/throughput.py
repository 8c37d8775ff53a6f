"""End-to-end throughput of agentwatch, with the raw ceilings measured in the same run.

    .venv/bin/python bench/throughput.py --agents 10000 --heartbeats 1000000

What it measures, all on this machine, in one run, against a Tansu broker it
starts on a free port and a chDB directory of its own:

1. ``kafka_read``: a confluent-kafka consumer (partition assignment) reading
   the K heartbeats back, doing nothing with them — the Kafka client ceiling.
2. ``kafka_to_clickhouse``: the same read, handing the raw JSON values to
   ClickHouse's own parser (``raw_insert ... FORMAT JSONEachRow``) — the
   ceiling of any pipeline that lands these messages in ClickHouse. Its CPU
   (``kafka_to_clickhouse_cpu_s``: this process, the consumer and chDB, and the
   broker) over the backlog run's is ``cpu_ratio``: a second view of the two
   pipelines' costs (a slow hour inflates CPU time too, though not always alike).
3. ``end_to_end_live``: a producer process sends K heartbeats as fast as it
   can while the dataflow process (validation, baselines, detector, dead
   letters, anomaly and baseline topics) and the ClickHouse loader run;
   from the first heartbeat produced to the last row queryable in
   ClickHouse and the dataflow caught up. All three share the 2 cores.
   ``--live-rate R`` paces the producer at R heartbeats/s instead: a pipeline
   that keeps up stores the last heartbeat ``catch_up_s`` after it was sent.
   The loader runs as ``agentwatch up`` runs it (``--loader process``): a process of its
   own at the embedded profile's nice value, owning the chDB it serves, started and
   ready before the clock starts; ``--loader in-process`` runs it in this process instead
   (how the figures up to 2026-12-07 were measured).
4. ``end_to_end_backlog``: the same pipeline draining K heartbeats that are
   already in the broker (producer not competing for CPU), timed from the
   dataflow process's start; ``dataflow_start_s`` (its start until its first
   read, from its ``source_first_read`` log lines) and
   ``heartbeats_per_s_from_first_read`` tell the start from the rate.
   Both runs give the CPU each part used meanwhile: the dataflow (``children_cpu_s``),
   the loader's process (``loader_process_cpu_s``: the loader and chDB; in process, this
   one, the bench's polls too) and the broker (``broker_cpu_s``).
5. per-agent state: the pickled size (what a recovery snapshot holds) and the
   in-memory size of the dataflow's per-agent state, per agent.

``--rounds N`` runs 2 and 4 N times, alternated (``rounds``, ``rounds_median``): the
ratio of one pair is a sample of how fast the machine was in that minute.

Results are printed and written as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from agentwatch.settings import Settings  # noqa: E402
from agentwatch.shard import ShardState  # noqa: E402
from agentwatch.simulator import FleetSimulator  # noqa: E402
from dataflows.heartbeats import recovery_config, with_recorded_layout  # noqa: E402
from infra.broker import (  # noqa: E402
    die_with_parent_command,
    ensure_topics,
    free_port,
    start_broker,
)
from infra.cli import served_chdb_envs  # noqa: E402
from schemas.heartbeats import parse_heartbeats  # noqa: E402
from sinks.clickhouse import connect, create_schema  # noqa: E402
from sinks.loader import LoaderLanes  # noqa: E402
from sinks.loader_metrics import parse as parse_loader_figures  # noqa: E402


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def generate(agents: int, heartbeats: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    # event time ends about now: the tables' TTL drops rows older than clickhouse_ttl_days
    span_s = heartbeats / agents * 30.0
    fleet = FleetSimulator(agents=agents, seed=seed, start=int(time.time() - span_s))
    keys: list[bytes] = []
    values: list[bytes] = []
    for batch in fleet.batches(max_heartbeats=heartbeats):
        batch_keys, batch_values = batch.serialize()
        keys += batch_keys
        values += batch_values
    return keys, values


def produce(
    bootstrap: str, topic: str, keys: list[bytes], values: list[bytes], rate: float = 0.0
) -> None:
    """Send every value; at ``rate`` heartbeats per second when given (paced every
    1,000 messages), else as fast as the producer can."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        }
    )
    started = time.perf_counter()
    for sent, (key, value) in enumerate(zip(keys, values, strict=True)):
        if rate and sent % 1000 == 0:
            ahead = sent / rate - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(120)


def partitions_of(bootstrap: str, topic: str) -> list[TopicPartition]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-meta"})
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.close()
    return [TopicPartition(topic, p, 0) for p in sorted(metadata.partitions)]


def read_all(bootstrap: str, topic: str, expected: int, on_batch=None) -> float:
    """Seconds to consume ``expected`` messages from the start of every partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench-reader",
            "enable.auto.commit": False,
            "queued.min.messages": 200_000,
        }
    )
    consumer.assign(partitions_of(bootstrap, topic))
    seen = 0
    started = time.perf_counter()
    while seen < expected:
        messages = consumer.consume(20_000, timeout=1.0)
        values = [m.value() for m in messages if m.error() is None]
        seen += len(values)
        if on_batch is not None and values:
            on_batch(values)
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


def dataflow_read(settings: Settings) -> int:
    """Messages of the (fresh) metrics topic the dataflow has committed as read."""
    consumer = Consumer(
        {"bootstrap.servers": settings.bootstrap_servers, "group.id": settings.dataflow_group_id}
    )
    try:
        parts = partitions_of(settings.bootstrap_servers, settings.topic("metrics"))
        committed = consumer.committed([TopicPartition(p.topic, p.partition) for p in parts], 5)
        return sum(max(tp.offset, 0) for tp in committed)
    finally:
        consumer.close()


class InProcessLoader:
    """The loader in this process (``--loader in-process``): as the API ran it before the
    embedded profile gave the loader a process of its own, and as the figures up to
    2026-12-07 10:00 UTC were measured. Its CPU is this process's."""

    def __init__(self, settings: Settings, client) -> None:
        # connections of its own (`client` is this bench's, for the queries after)
        self._lanes = LoaderLanes(settings, connect(settings), lambda: connect(settings))
        self.client = client

    def start(self) -> None:
        self._lanes.start()

    def figures(self) -> tuple[dict[str, int], int]:
        """(rows inserted by topic, rows pending)."""
        stats = self._lanes.stats()
        return dict(stats.rows_inserted), stats.pending_rows

    def cpu_s(self) -> float:
        return time.process_time()

    def stop(self) -> None:
        self._lanes.stop()


class LoaderProcess:
    """The loader as ``agentwatch up`` runs it (``--loader process``, the default):
    ``python -m sinks.loader`` in a process of its own at the embedded profile's nice
    value (``embedded_loader_niceness``), owning a chDB directory of its own and serving
    it over HTTP (the bench's queries go there, as the API's do); its figures are read
    from its ``/metrics``, its CPU from ``/proc``. Started and ready (schema made) before
    the pipeline's clock starts, as in a running stack."""

    def __init__(self, settings: Settings, chdb_dir: Path, log_path: Path) -> None:
        # the environments `agentwatch up` gives the loader and the API (ports, password)
        envs = served_chdb_envs(
            settings,
            {**os.environ, **settings.as_env(), "AGENTWATCH_CLICKHOUSE_DSN": f"chdb://{chdb_dir}"},
        )
        self._metrics_url = envs["api"]["AGENTWATCH_API_LOADER_METRICS_URL"]
        with open(log_path, "wb") as log:
            self._process = subprocess.Popen(  # (no pre-exec hook: see run_pipeline)
                die_with_parent_command([sys.executable, "-m", "sinks.loader"]), env=envs["loader"],
                stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:  # ready: its /metrics answers (after the schema and the chDB server)
            if self._process.poll() is not None:
                raise RuntimeError(f"the loader process exited; see {log_path}")
            try:
                if parse_loader_figures(self._get_metrics()).running:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the loader process did not start; see {log_path}")
            time.sleep(0.1)
        dsn = SecretStr(envs["api"]["AGENTWATCH_CLICKHOUSE_DSN"])
        self.client = connect(settings.model_copy(update={"clickhouse_dsn": dsn}))

    def _get_metrics(self) -> str:
        with urllib.request.urlopen(self._metrics_url, timeout=5) as response:
            return response.read().decode()

    def start(self) -> None:
        """(It runs already.)"""

    def figures(self) -> tuple[dict[str, int], int]:
        """(rows inserted by topic, rows pending)."""
        figures = parse_loader_figures(self._get_metrics())
        return figures.rows_inserted, figures.pending_rows

    def cpu_s(self) -> float:
        return _process_cpu_s(self._process.pid)

    def stop(self) -> None:
        self.client.close()
        self._process.terminate()
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(30)


def raw_copy(
    client, raw: Settings, values: list[bytes], broker_pid: int, suffix: str
) -> tuple[float, dict[str, float]]:
    """Ceiling 2: the raw topic read again into a fresh plain MergeTree (``copy<suffix>``),
    each read batch handed to ClickHouse's JSON parser as it is; its rate and the CPU it
    took (this process: the consumer and chDB; the broker)."""
    say("ceiling 2: Kafka → ClickHouse, raw JSON, no processing")
    table = f"bench_raw.copy{suffix}"
    client.command(
        f"CREATE TABLE {table} AS bench_raw.metrics ENGINE = MergeTree "
        "ORDER BY (agent_id, timestamp)"
    )

    def insert_raw(batch: list[bytes]) -> None:
        client.raw_insert(table, insert_block=b"\n".join(batch), fmt="JSONEachRow")

    cpu_before = time.process_time(), _process_cpu_s(broker_pid)
    seconds = read_all(raw.bootstrap_servers, raw.topic("metrics"), len(values), insert_raw)
    cpu = {
        "copy_process": time.process_time() - cpu_before[0],
        "broker": _process_cpu_s(broker_pid) - cpu_before[1],
    }
    copied = client.query(f"SELECT count() FROM {table}").result_rows[0][0]
    assert copied == len(values), f"copied {copied} of {len(values)}"
    return len(values) / seconds, cpu


def run_pipeline(
    settings: Settings,
    client,
    keys: list[bytes],
    values: list[bytes],
    live: bool,
    workdir: Path,
    processes: int = 1,
    live_rate: float = 0.0,
    broker_pid: int | None = None,
    loader_mode: str = "process",
) -> dict[str, float]:
    """Dataflow process(es: ``processes`` of one Bytewax cluster) + loader (``loader_mode``:
    :class:`LoaderProcess` or :class:`InProcessLoader`); produce concurrently (live) or
    drain a backlog. ``client`` is this process's chDB, where the in-process loader writes."""
    ensure_topics(settings)
    metrics_topic = settings.topic("metrics")
    if not live:
        say(f"  producing {len(values):,} heartbeats as a backlog")
        produce(settings.bootstrap_servers, metrics_topic, keys, values)
    kind = "live" if live else "backlog"
    if loader_mode == "process":
        loader = LoaderProcess(settings, workdir / f"chdb-{kind}", workdir / f"loader-{kind}.log")
    else:
        loader = InProcessLoader(settings, client)
    client = loader.client
    env = {**os.environ, **settings.as_env()}
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    if processes > 1:  # one cluster: its recovery directory prepared once, before any process
        recovery_config(with_recorded_layout(settings))
    log_path = workdir / f"dataflow-{kind}.log"
    children_cpu = _children_cpu_s()
    loader_cpu = loader.cpu_s()
    broker_cpu = _process_cpu_s(broker_pid)
    started, started_wall = time.perf_counter(), time.time()
    dataflows = []
    for process in range(processes):
        cluster = {} if processes == 1 else {
            "AGENTWATCH_DATAFLOW_PROCESS_ID": str(process),
            "AGENTWATCH_DATAFLOW_ADDRESSES": addresses,
        }  # fmt: skip
        with open(log_path.with_suffix(f".{process}.log"), "wb") as log:
            # (not with a pre-exec hook: this process is large, ~9 GB with chDB's caches,
            # and a hook makes Python fork it, ~0.16 s in the clock; die_with_parent_command)
            command = [sys.executable, *profiled(workdir, live), "-m", "dataflows.heartbeats"]
            dataflows.append(subprocess.Popen(
                die_with_parent_command(command), env={**env, **cluster}, stdout=log,
                stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent,
            ))  # fmt: skip
    loader.start()
    producer = None
    if live:
        producer = multiprocessing.get_context("fork").Process(
            target=produce,
            args=(settings.bootstrap_servers, metrics_topic, keys, values, live_rate),
        )
        producer.start()
    produced_at = None  # (live: when the producer had sent the last heartbeat)
    db = settings.clickhouse_database
    # Done when the loader has stored every heartbeat, the dataflow has read them all, and
    # the loader's row counts have not moved for a second; the end is the last movement.
    # The loader's own counters are read (its /metrics, or in process): a count() in
    # ClickHouse every 50 ms took CPU from the pipeline (~2.5 % of its rate, alternated
    # runs); ClickHouse is asked once, after.
    last_seen: tuple = ()
    last_change, last_change_wall = time.perf_counter(), time.time()
    try:
        while True:
            inserted, pending_rows = loader.figures()
            rows = inserted.get("metric_rows", 0)
            seen = (rows, tuple(sorted(inserted.items())), pending_rows)
            now = time.perf_counter()
            if producer is not None and produced_at is None and not producer.is_alive():
                produced_at = now
            if seen != last_seen:
                last_seen, last_change, last_change_wall = seen, now, time.time()
            elif (
                rows >= len(values)
                and pending_rows == 0
                and now - last_change >= 1.0
                and dataflow_read(settings) >= len(values)
            ):
                break
            if any(dataflow.poll() is not None for dataflow in dataflows):
                raise RuntimeError(f"a dataflow process exited; see {log_path}.*")
            time.sleep(0.05)
        elapsed = last_change - started
        stored = client.query(f"SELECT count() FROM {db}.metrics").result_rows[0][0]
        if stored < len(values):
            raise RuntimeError(f"the loader counted {rows:,} rows but metrics holds {stored:,}")
    finally:
        if producer is not None:
            producer.join(60)
        for dataflow in dataflows:  # (the processes of one cluster stop together)
            dataflow.terminate()
        for dataflow in dataflows:
            dataflow.wait(30)
        try:
            # the dataflow's (and a live producer's) CPU; the loader's (in process: this
            # process's, with the bench's polls); the broker's
            cpu = {"children_cpu_s": _children_cpu_s() - children_cpu,
                   "loader_process_cpu_s": loader.cpu_s() - loader_cpu,
                   "broker_cpu_s": _process_cpu_s(broker_pid) - broker_cpu}  # fmt: skip
            inserted = dict(sorted(loader.figures()[0].items()))
            final, anomalies, baselines = (
                client.query(f"SELECT count() FROM {db}.{table} FINAL").result_rows[0][0]
                for table in ("metrics", "anomalies", "baselines")
            )
        finally:
            loader.stop()
    # the rate once the pipeline runs: from the dataflow's first read of the topic (its
    # log says when; not counted: starting the interpreter, importing, Bytewax's start)
    first_read = first_read_at(log_path, metrics_topic, processes)
    running = last_change_wall - first_read if first_read else None
    paced = {}
    if live:  # how long the pipeline took to store the last heartbeat once it was sent
        paced = {"producer_rate": live_rate or None,
                 "producer_seconds": produced_at - started if produced_at else None,
                 "catch_up_s": last_change - produced_at if produced_at else None}  # fmt: skip
    return {
        **paced,
        "seconds": elapsed,
        "heartbeats_per_s": len(values) / elapsed,
        "dataflow_start_s": first_read - started_wall if first_read else None,
        "seconds_from_first_read": running,
        "heartbeats_per_s_from_first_read": len(values) / running if running else None,
        "metrics_rows": final,
        "anomaly_rows": anomalies,
        "baseline_rows": baselines,
        "loader_rows_inserted": inserted,  # (per table: what the loader's CPU went to)
        "loader": loader_mode,
        **cpu,
    }


def first_read_at(log_path: Path, topic: str, processes: int) -> float | None:
    """Epoch seconds of the dataflow's first read of ``topic`` (its ``source_first_read``
    log lines, over every process), None if no line says."""
    times = []
    for process in range(processes):
        text = log_path.with_suffix(f".{process}.log").read_text(errors="replace")
        for line in text.splitlines():
            if "source_first_read" in line and f"topic={topic} " in line:
                times.append(float(line.rsplit("at=", 1)[1].split()[0]))
    return min(times, default=None)


#: Where to write a cProfile of the dataflow process (``--profile-dataflow``), if at all.
PROFILE_DIR: Path | None = None


def profiled(workdir: Path, live: bool) -> list[str]:
    """The interpreter's arguments that run the dataflow under cProfile, if asked."""
    if PROFILE_DIR is None:
        return []
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    return [
        "-m",
        "cProfile",
        "-o",
        str(PROFILE_DIR / f"dataflow-{'live' if live else 'backlog'}.prof"),
    ]


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's children that have ended."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a running process, from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def _process_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) a running process has used (0 without one)."""
    return 0.0 if pid is None else sum(process_cpu(pid))


def state_per_agent(settings: Settings, values: list[bytes], agents: int) -> dict[str, float]:
    """Bytes of per-agent dataflow state — baselines, detector, threat rules, trends,
    security scores, alerts — pickled (what a recovery snapshot holds) and in memory
    (what ``tracemalloc`` sees the shard state keep, measured after all heartbeats)."""
    tracemalloc.start()
    shard = ShardState.new(settings)
    for lo in range(0, len(values), 50_000):
        shard.observe(parse_heartbeats(values[lo : lo + 50_000])[0])
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    known = len(shard.baselines)
    return {
        "agents": known,
        "pickled_bytes_per_agent": len(pickle.dumps(shard)) / known,
        "memory_bytes_per_agent": held / known,
        "rules_numeric_bytes_per_agent": shard.rules.bytes_per_agent(),
    }


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so cleanup runs
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--heartbeats", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="Bytewax workers per process")
    parser.add_argument(
        "--processes", type=int, default=1,
        help="dataflow processes (one Bytewax cluster; AGENTWATCH_DATAFLOW_PROCESS_ID/_ADDRESSES)",
    )  # fmt: skip
    parser.add_argument(
        "--shards", type=int, default=0,
        help="state shards (AGENTWATCH_SHARD_COUNT; default: the setting's); Bytewax places "
        "each shard on one worker, so several processes want several shards each",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="raw copy and backlog run this many times, alternated, each pair's ratio in "
        "`rounds` and their medians in `rounds_median` (the top-level figures: the first "
        "round's): on a machine whose speed wanders, one pair is a sample of it",
    )  # fmt: skip
    parser.add_argument("--skip-live", action="store_true", help="skip end_to_end_live")
    parser.add_argument(
        "--live-rate", type=float, default=0.0,
        help="heartbeats/s of the live run's producer (default 0: as fast as it can); the "
        "live result then says how long the pipeline took, once the last was sent, to store it",
    )  # fmt: skip
    parser.add_argument(
        "--loader", choices=("process", "in-process"), default="process",
        help="the end-to-end runs' loader: its own process at the embedded nice value, as "
        "`agentwatch up` runs it (default), or in this process (the figures up to 2026-12-07)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("bench/results/throughput.json"))
    parser.add_argument(
        "--profile-dataflow", type=Path, metavar="DIR",
        help="run the dataflow under cProfile, its profiles written to DIR (slower)",
    )  # fmt: skip
    args = parser.parse_args()
    global PROFILE_DIR
    PROFILE_DIR = args.profile_dataflow

    workdir = Path(tempfile.mkdtemp(prefix="agentwatch-bench-"))
    results: dict[str, object] = {
        "agents": args.agents,
        "heartbeats": args.heartbeats,
        "partitions": args.partitions,
        "workers": args.workers,
        "processes": args.processes,
        "loader": args.loader,
        "shards": args.shards or Settings.model_fields["shard_count"].default,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    say(f"generating {args.heartbeats:,} heartbeats for {args.agents:,} agents")
    t = time.perf_counter()
    keys, values = generate(args.agents, args.heartbeats, args.seed)
    results["generate_per_s"] = len(values) / (time.perf_counter() - t)
    results["mean_message_bytes"] = sum(map(len, values)) / len(values)

    broker = start_broker("127.0.0.1", free_port(), log_path=workdir / "tansu.log")
    try:
        base = dict(
            bootstrap_servers=broker.bootstrap_servers,
            clickhouse_dsn=f"chdb://{workdir / 'chdb'}",
            metrics_partitions=args.partitions,
            dataflow_workers=args.workers,
            **({"shard_count": args.shards} if args.shards else {}),
            dataflow_commit_interval_s=0.1,
            # agents are warm, as in steady state: anomalies are scored and published
            baseline_warmup_s=0,
            # the generated fleet is not registered: its heartbeats register it
            agents_auto_register=True,
        )
        raw = Settings(
            topic_prefix="raw.", clickhouse_database="bench_raw", var_dir=workdir / "var", **base
        )
        ensure_topics(raw)
        say("producing the raw-ceiling data set")
        t = time.perf_counter()
        produce(raw.bootstrap_servers, raw.topic("metrics"), keys, values)
        results["produce_per_s"] = len(values) / (time.perf_counter() - t)

        say("ceiling 1: Kafka read alone")
        seconds = read_all(raw.bootstrap_servers, raw.topic("metrics"), len(values))
        results["kafka_read_per_s"] = len(values) / seconds

        client = connect(raw)
        create_schema(client, raw)
        rounds = []
        for number in range(1, args.rounds + 1):
            suffix = "" if number == 1 else str(number)
            raw_per_s, raw_cpu = raw_copy(client, raw, values, broker.process.pid, suffix)
            say("end to end: draining a backlog through dataflow + loader")
            backlog = Settings(
                topic_prefix=f"backlog{suffix}.", clickhouse_database=f"bench_backlog{suffix}",
                var_dir=workdir / f"var-backlog{suffix}", **base,
            )  # fmt: skip
            create_schema(client, backlog)
            run = run_pipeline(
                backlog, client, keys, values, live=False, workdir=workdir,
                processes=args.processes, broker_pid=broker.process.pid, loader_mode=args.loader,
            )  # fmt: skip
            cpu_ratio = sum(raw_cpu.values()) / sum(
                run[part] for part in ("children_cpu_s", "loader_process_cpu_s", "broker_cpu_s")
            )
            if number == 1:  # (the figures of one round, as the bench always gave them)
                results["kafka_to_clickhouse_cpu_s"] = raw_cpu
                results["kafka_to_clickhouse_per_s"] = raw_per_s
                results["end_to_end_backlog"] = run
                results["cpu_ratio"] = cpu_ratio
            rounds.append({
                "kafka_to_clickhouse_per_s": raw_per_s,
                "end_to_end_per_s": run["heartbeats_per_s"],
                "ratio": run["heartbeats_per_s"] / raw_per_s,
                "ratio_from_first_read": run["heartbeats_per_s_from_first_read"] / raw_per_s,
                "cpu_ratio": cpu_ratio,
                "dataflow_cpu_s": run["children_cpu_s"],
            })  # fmt: skip
            say(f"  round {number}: raw copy {raw_per_s:,.0f}/s, end to end "
                f"{run['heartbeats_per_s']:,.0f}/s, ratio {rounds[-1]['ratio']:.3f}")  # fmt: skip
        if args.rounds > 1:
            results["rounds"] = rounds
            results["rounds_median"] = {
                key: statistics.median(r[key] for r in rounds) for key in rounds[0]
            }
        if not args.skip_live:
            say("end to end: live, producer + dataflow + loader at once")
            live = Settings(
                topic_prefix="live.", clickhouse_database="bench_live",
                var_dir=workdir / "var-live", **base,
            )  # fmt: skip
            create_schema(client, live)
            results["end_to_end_live"] = run_pipeline(
                live, client, keys, values, live=True, workdir=workdir,
                processes=args.processes, live_rate=args.live_rate,
                broker_pid=broker.process.pid, loader_mode=args.loader,
            )  # fmt: skip
            same = ("metrics_rows", "anomaly_rows", "baseline_rows")
            a, b = results["end_to_end_backlog"], results["end_to_end_live"]
            if any(a[k] != b[k] for k in same):
                raise RuntimeError(f"live and backlog runs disagree: {a} vs {b}")
        say("per-agent state")
        results["state"] = state_per_agent(raw, values, args.agents)
    except BaseException:
        say(f"failed; logs are kept in {workdir}")
        raise
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    finally:
        broker.stop()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
