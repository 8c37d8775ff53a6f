"""Soak: an hour of steady load on the embedded stack, with memory, disk and latency sampled
every minute (issue 14, Deliver 3).

    .venv/bin/python bench/soak.py                      # 60 minutes, 1,000 heartbeats/s
    .venv/bin/python bench/soak.py --minutes 5 --rate 500 --out /tmp/soak.json

It starts the embedded stack the way ``bench/chaos.py`` does — a Tansu broker on a free
port, the dataflow process (``python -m dataflows.heartbeats``) and the API process with its
loader (``python -m api``, chDB in a directory of its own), every setting at its default
but agent auto-registration, SQL through the API and a short warm-up (baselines judge after
``--warmup-heartbeats``, so most of the run is a warm fleet) — and streams ``--agents``
agents' heartbeats at ``--rate`` a second, each stamped with its produce time, its metrics
jittered as a working agent's (``--constant-metrics``: the same every time), plus
``--spikes`` exfiltration spikes a second (each a new agent's threat), as
``bench/latency.py`` does; the producer batches like a gateway (``--linger-ms``). Every
``POLL_S`` it asks the API, as an analyst would (``POST /api/v1/sql``), for the newest
rows of ``--probes`` agents in ``metrics`` and for the ``data_exfiltration`` threats, and
times one ``GET /agents/{id}/status``. Every ``--sample-s`` seconds it records:

- memory: the resident set (RSS) of the broker, the dataflow and the API process, and the
  dataflow's state bytes per agent (its shards as pickled for the latest snapshot);
- CPU: seconds each process used in the interval, and of the API's, what chDB's merge
  threads used;
- disk: the chDB directory (bytes, and part directories: active and not yet removed), the
  recovery directory (SQLite snapshots and their write-ahead log);
- latency: a heartbeat's produce → its row queryable in ``metrics`` (p50/p99 of the probes'
  rows seen in the interval, up to ``POLL_S`` late), a spike's produce → its threat
  queryable, the status call;
- the loader's and the dataflow's lag, and the messages each topic holds.

At the end it fits each series' growth over the second half of the run (after warm-up:
baselines, the first snapshots, the first merges). A growth is *explained* when it is data —
rows stored, and the broker's log: the embedded broker (Tansu 0.6.0, memory storage) keeps
every batch it was sent, with no retention, and lists a partition's batches at each fetch,
so its memory and CPU grow with the batches it holds (docs/reliability.md,
``bench/tansu_fetch_cost.py``) — and a defect otherwise. JSON to ``--out``; a plot (PNG)
to ``--plot`` when matplotlib is installed (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import httpx  # noqa: E402
from chaos import ChaosStack  # noqa: E402
from latency import TENANT, SteadyProducer, agent_id  # noqa: E402

from agentwatch.settings import Settings  # noqa: E402
from infra.broker import free_port, start_broker  # noqa: E402

CLOCK_TICKS = 100  # os.sysconf("SC_CLK_TCK") on Linux
#: How often the probes' rows are polled (the latency is seen up to this late).
POLL_S = 0.25
#: The name of chDB's (ClickHouse's) merge threads in the API process.
MERGE_THREAD = "MergeMutate"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def rss_bytes(pid: int) -> int:
    """The resident set of a process, in bytes (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def stat_cpu_seconds(stat: str) -> float:
    """User + system CPU seconds in the text of a ``/proc/.../stat`` file."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (0 when it is gone)."""
    try:
        return stat_cpu_seconds(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return 0.0


def thread_cpu_seconds(pid: int, thread_name: str) -> float:
    """User + system CPU seconds of the threads of ``pid`` named ``thread_name`` (e.g.
    chDB's merge threads, ``MergeMutate``); threads that ended no longer count."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        if stat[stat.index("(") + 1 : stat.rindex(")")] == thread_name:
            total += stat_cpu_seconds(stat)
    return total


def directory_bytes(path: Path) -> int:
    """Bytes of the files under ``path``; files that vanish while it walks (ClickHouse's
    merges and SQLite's checkpoints remove some) count 0."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


def part_directories(chdb: Path) -> int:
    """Data part directories of the MergeTree tables (``store/xxx/<uuid>/<part>``): the
    active parts and those merged away but not yet removed."""
    store = chdb / "store"
    if not store.exists():
        return 0
    count = 0
    for table in store.glob("*/*"):
        with contextlib.suppress(OSError):  # a table dropped meanwhile
            count += sum(
                1
                for part in os.scandir(table)
                if part.is_dir() and "_" in part.name and not part.name.startswith("tmp")
            )
    return count


def slope_per_hour(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` against ``xs`` (minutes), per hour.

    >>> slope_per_hour([0, 1, 2, 3], [10, 12, 14, 16])
    120.0
    >>> slope_per_hour([0, 1], [5, 5])
    0.0
    """
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return 60.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def growth(samples: list[dict], key: str) -> dict:
    """How ``key`` moved over the second half of the run: first and last value there, and
    the least-squares slope per hour (relative to the mean, too).

    >>> rows = [{"minute": m, "x": 100 + m} for m in range(10)]
    >>> growth(rows, "x")
    {'from': 105, 'to': 109, 'per_hour': 60.0, 'per_hour_relative': 0.561}
    """
    half = samples[len(samples) // 2 :]
    xs = [s["minute"] for s in half]
    ys = [s[key] for s in half]
    per_hour = slope_per_hour(xs, ys)
    mean = statistics.fmean(ys) if ys else 0.0
    return {
        "from": ys[0] if ys else None,
        "to": ys[-1] if ys else None,
        "per_hour": round(per_hour, 3),
        "per_hour_relative": round(per_hour / mean, 3) if mean else 0.0,
    }


@dataclass
class Probe:
    """What the once-a-second poll saw since the last sample."""

    seen_rows: set[tuple[str, float]] = field(default_factory=set)
    seen_threats: set[tuple[str, float]] = field(default_factory=set)
    row_latency: list[float] = field(default_factory=list)
    threat_latency: list[float] = field(default_factory=list)
    status_latency: list[float] = field(default_factory=list)
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> tuple[list[float], list[float], list[float], int]:
        with self.lock:
            taken = (self.row_latency, self.threat_latency, self.status_latency, self.errors)
            self.row_latency, self.threat_latency, self.status_latency = [], [], []
            self.errors = 0
        return taken


def poll_forever(http: httpx.Client, probes: int, probe: Probe, stop: threading.Event) -> None:
    """Once a second: the probes' newest rows, the exfiltration threats, one status call."""
    names = ", ".join(f"'{agent_id(i)}'" for i in range(probes))
    n = 0
    while not stop.wait(POLL_S):
        since = time.time() - 30.0  # rows of different partitions land out of order
        rows_query = (
            "SELECT agent_id, toFloat64(timestamp) FROM metrics "
            f"WHERE tenant_id = '{TENANT}' AND agent_id IN ({names}) "
            f"AND timestamp > toDateTime64({since:.3f}, 3)"
        )
        threats_query = (
            "SELECT agent_id, toFloat64(first_seen) FROM threats "
            "WHERE rule = 'data_exfiltration' AND first_seen > now() - INTERVAL 2 MINUTE"
        )
        try:
            rows = http.post("/api/v1/sql", json={"query": rows_query}).json()["rows"]
            threats = http.post("/api/v1/sql", json={"query": threats_query}).json()["rows"]
            now = time.time()
            started = time.perf_counter()
            status = http.get(f"/api/v1/agents/{agent_id(n % probes)}/status")
            took = time.perf_counter() - started
        except (httpx.HTTPError, KeyError, ValueError):
            with probe.lock:
                probe.errors += 1
            continue
        n += 1
        with probe.lock:
            for agent, at in map(tuple, rows):
                if (agent, at) not in probe.seen_rows:
                    probe.seen_rows.add((agent, at))
                    probe.row_latency.append(now - at)
            for agent, at in map(tuple, threats):
                if (agent, at) not in probe.seen_threats:
                    probe.seen_threats.add((agent, at))
                    probe.threat_latency.append(now - at)
            if status.status_code == 200:
                probe.status_latency.append(took)
            # forget what can no longer come back (older than the look-back)
            if len(probe.seen_rows) > 50_000:
                cutoff = time.time() - 60.0
                probe.seen_rows = {k for k in probe.seen_rows if k[1] > cutoff}


def dataflow_gauges(port: int) -> dict[str, float]:
    """The dataflow's own figures from its ``/metrics``."""
    wanted = {
        "agentwatch_dataflow_state_bytes": "state_bytes",
        "agentwatch_dataflow_snapshot_seconds_sum": "snapshot_s_sum",
        "agentwatch_dataflow_snapshot_seconds_count": "snapshot_count",
        "agentwatch_dataflow_heartbeats_total": "heartbeats",
    }
    found: dict[str, float] = {}
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return found
    for line in text.splitlines():
        name = line.split(" ", 1)[0].split("{", 1)[0]
        if name in wanted:
            found[wanted[name]] = found.get(wanted[name], 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def topic_messages(settings: Settings) -> dict[str, int]:
    """Messages each topic holds (the broker's log: the embedded broker keeps all of it)."""
    from confluent_kafka import Consumer, TopicPartition

    from infra.broker import TOPICS

    consumer = Consumer({**settings.kafka_config(), "group.id": "agentwatch-soak-watermarks"})
    held = {}
    try:
        metadata = consumer.list_topics(timeout=10)
        for name in TOPICS:
            topic = settings.topic(name)
            partitions = metadata.topics.get(topic)
            if partitions is None:
                continue
            held[name] = sum(
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in partitions.partitions
            )
    finally:
        consumer.close()
    return held


def ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * q))], 1)


def run_soak(options: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="agentwatch-soak-"))
    broker = start_broker("127.0.0.1", free_port(), log_path=workdir / "broker.log")
    settings = Settings(
        bootstrap_servers=broker.bootstrap_servers,
        var_dir=workdir / "var",
        clickhouse_dsn=f"chdb://{workdir / 'chdb'}",
        agents_auto_register=True,
        api_sql_enabled=True,
        # warm after --warmup-heartbeats beats (by default the detector learns for a day of
        # event time, longer than the run): the second half judges a warm fleet
        baseline_warmup_s=0.0,
        baseline_warmup_heartbeats=options.warmup_heartbeats,
    )
    say(f"workdir {workdir}; broker {broker.bootstrap_servers}")
    stack = ChaosStack(settings, workdir)
    stack.http.timeout = httpx.Timeout(30)
    samples: list[dict] = []
    stop = threading.Event()
    probe = Probe()
    try:
        stack.start()
        pids = {
            "broker": broker.process.pid,
            "dataflow": stack.dataflows[0].process.pid,
            "api": stack.api.process.pid,
        }
        say(f"stack up: {pids}; producing {options.rate:,.0f} heartbeats/s of "
            f"{options.agents:,} agents for {options.minutes:g} min")  # fmt: skip
        producer_options = argparse.Namespace(
            rate=options.rate, agents=options.agents, spikes=options.spikes,
            probes=options.probes, seconds=options.minutes * 60, linger_ms=options.linger_ms,
            noisy=not options.constant_metrics,
        )  # fmt: skip
        producer = SteadyProducer(settings, producer_options)
        poller = threading.Thread(
            target=poll_forever, args=(stack.http, options.probes, probe, stop), daemon=True
        )
        started = time.monotonic()
        producer.start()
        poller.start()
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        merges_before = thread_cpu_seconds(pids["api"], MERGE_THREAD)
        recovery = settings.var_dir / "recovery"
        chdb = workdir / "chdb"
        while producer.is_alive() or not samples:
            producer.join(options.sample_s - (time.monotonic() - started) % options.sample_s)
            for component in stack.components:
                if component.exited():
                    raise RuntimeError(f"{component.name} exited; see {component.log_path}")
            minute = (time.monotonic() - started) / 60
            rows, threats, status, errors = probe.take()
            health = stack.health() or {}
            gauges = dataflow_gauges(stack.metrics_ports[0])
            cpu_now = {name: cpu_seconds(pid) for name, pid in pids.items()}
            merges_now = thread_cpu_seconds(pids["api"], MERGE_THREAD)
            sample = {
                "minute": round(minute, 2),
                "sent": producer.sent,
                **{f"rss_{n}_mb": round(rss_bytes(pid) / 2**20, 1) for n, pid in pids.items()},
                **{
                    f"cpu_{n}_s": round(cpu_now[n] - cpu_before[n], 1)
                    for n in pids  # in this interval
                },
                "cpu_api_merges_s": round(merges_now - merges_before, 1),
                "state_bytes_per_agent": round(gauges.get("state_bytes", 0) / options.agents, 1),
                "snapshot_s_mean": round(
                    gauges.get("snapshot_s_sum", 0) / max(1, gauges.get("snapshot_count", 0)), 4
                ),
                "chdb_mb": round(directory_bytes(chdb) / 2**20, 1),
                "chdb_part_dirs": part_directories(chdb),
                "recovery_mb": round(directory_bytes(recovery) / 2**20, 2),
                "row_p50_ms": ms(rows, 0.5),
                "row_p99_ms": ms(rows, 0.99),
                "rows_probed": len(rows),
                "threat_p50_ms": ms(threats, 0.5),
                "threat_max_ms": ms(threats, 1.0),
                "threats_probed": len(threats),
                "status_p50_ms": ms(status, 0.5),
                "status_p99_ms": ms(status, 0.99),
                "poll_errors": errors,
                "loader_lag": (health.get("loader") or {}).get("lag_total"),
                "dataflow_lag": (health.get("dataflow") or {}).get("lag"),
                "topic_messages": topic_messages(settings),
            }
            cpu_before, merges_before = cpu_now, merges_now
            samples.append(sample)
            say(
                f"{minute:5.1f} min  sent {sample['sent']:>10,}  RSS broker "
                f"{sample['rss_broker_mb']:,.0f} dataflow {sample['rss_dataflow_mb']:,.0f} api "
                f"{sample['rss_api_mb']:,.0f} MB  state {sample['state_bytes_per_agent']:,.0f} B/"
                f"agent  chdb {sample['chdb_mb']:,.0f} MB ({sample['chdb_part_dirs']} parts)  "
                f"recovery {sample['recovery_mb']:.1f} MB  row p99 {sample['row_p99_ms']} ms  "
                f"threat max {sample['threat_max_ms']} ms  status p99 {sample['status_p99_ms']} "
                f"ms  lag {sample['loader_lag']}/{sample['dataflow_lag']}"
            )
        stop.set()
        poller.join(10)
        # then the stack catches up: every heartbeat sent is stored, once
        stored, drained_s, caught_up = None, 0.0, time.monotonic()
        query = {"query": "SELECT count(), uniqExact(agent_id, timestamp) FROM metrics"}
        while time.monotonic() - caught_up < options.drain_timeout_s:
            with contextlib.suppress(httpx.HTTPError, KeyError, IndexError, ValueError):
                stored = stack.http.post("/api/v1/sql", json=query).json()["rows"][0]
            if stored is not None and stored[1] >= producer.sent + producer.spikes:
                break
            time.sleep(1.0)
        drained_s = time.monotonic() - caught_up
        sent = producer.sent + producer.spikes
        say(f"stored after the input: {stored} of {sent:,} sent, {drained_s:.0f} s")
    finally:
        stop.set()
        stack.stop()
        broker.stop()
    keys = [
        "rss_broker_mb", "rss_dataflow_mb", "rss_api_mb", "state_bytes_per_agent",
        "chdb_mb", "chdb_part_dirs", "recovery_mb", "row_p99_ms", "status_p99_ms",
        "cpu_dataflow_s", "cpu_api_s", "cpu_api_merges_s",
    ]  # fmt: skip
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "args": {k: str(v) for k, v in vars(options).items()},
        "sent": producer.sent,
        "spikes": producer.spikes,
        "producer_behind_max_s": round(producer.behind_s, 3),
        "stored_rows_and_distinct": stored,
        "drained_s": round(drained_s, 1),
        "row_p99_ms_worst_minute": max((s["row_p99_ms"] or 0) for s in samples),
        "threat_ms_worst": max((s["threat_max_ms"] or 0) for s in samples),
        "status_p99_ms_worst_minute": max((s["status_p99_ms"] or 0) for s in samples),
        "growth_second_half": {
            key: growth([s for s in samples if s.get(key) is not None], key) for key in keys
        },
        "samples": samples,
    }


def plot(result: dict, path: Path) -> bool:
    """The samples as a PNG: memory, disk, latency, state, CPU and lags against minutes
    (False: no matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    samples = result["samples"]
    minutes = [s["minute"] for s in samples]
    figure, axes = plt.subplots(3, 2, figsize=(12, 11), sharex=True)
    panels = [
        (axes[0][0], "memory (RSS, MB)",
         [("rss_broker_mb", "broker"), ("rss_dataflow_mb", "dataflow"), ("rss_api_mb", "api")]),
        (axes[0][1], "disk (MB)", [("chdb_mb", "chDB"), ("recovery_mb", "recovery")]),
        (axes[1][0], "latency (ms)",
         [("row_p99_ms", "row queryable p99"), ("threat_max_ms", "threat queryable max"),
          ("status_p99_ms", "status p99")]),
        (axes[1][1], "state (B/agent), parts",
         [("state_bytes_per_agent", "state B/agent"), ("chdb_part_dirs", "part dirs")]),
        (axes[2][0], "CPU (s per sample)",
         [("cpu_broker_s", "broker"), ("cpu_dataflow_s", "dataflow"), ("cpu_api_s", "api"),
          ("cpu_api_merges_s", "api: chDB merges")]),
        (axes[2][1], "lag (messages)",
         [("loader_lag", "loader"), ("dataflow_lag", "dataflow")]),
    ]  # fmt: skip
    for ax, title, series in panels:
        for key, label in series:
            ys = [s.get(key) for s in samples]
            ax.plot(minutes, [y if y is not None else float("nan") for y in ys], label=label)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    for ax in axes[2]:
        ax.set_xlabel("minutes")
    args = result["args"]
    figure.suptitle(
        f"agentwatch soak {result['date']}: {float(args['rate']):,.0f} heartbeats/s, "
        f"{int(args['agents']):,} agents, {float(args['minutes']):g} min"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="heartbeats per second")
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--spikes", type=float, default=0.05, help="exfiltration spikes a second")
    parser.add_argument(
        "--constant-metrics",
        action="store_true",
        help="every heartbeat of an agent the same (the runs before 2026-12-06 02:20 UTC); "
        "by default the metrics jitter as a working agent's",
    )
    parser.add_argument(
        "--linger-ms",
        type=float,
        default=100.0,
        help="the fleet producer's linger.ms (agents behind a gateway that batches)",
    )
    parser.add_argument(
        "--warmup-heartbeats", type=int, default=10, help="heartbeats before baselines judge"
    )
    parser.add_argument("--probes", type=int, default=20, help="agents whose rows are polled")
    parser.add_argument("--sample-s", type=float, default=60.0, help="seconds between samples")
    parser.add_argument(
        "--drain-timeout-s",
        type=float,
        default=300.0,
        help="after the input, wait this long at most for every heartbeat to be stored",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soak.json")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "images" / "soak.png")
    options = parser.parse_args()
    result = run_soak(options)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(result, indent=1) + "\n")
    say(f"written {options.out}")
    print(json.dumps(result["growth_second_half"], indent=1))
    if plot(result, options.plot):
        say(f"plot: {options.plot}")
    else:
        say("no plot: matplotlib is not installed (pip install -e '.[bench]')")


if __name__ == "__main__":
    main()
