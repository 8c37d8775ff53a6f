"""Latency of the API's agent registry with many agents: registration, status, search.

    .venv/bin/python bench/api.py --agents 100000      # the issue's figure (~2 min)
    .venv/bin/python bench/api.py --agents 2000        # a smoke run (~30 s)

What it does, on this machine, against a Tansu broker it starts on a free port and a
chDB directory of its own:

1. starts the real API (``python -m api``, with its loader and audit writer) as a
   child process, and waits until its agent projection is ready;
2. fills the registry with ``--agents`` agents (spread over tenants of
   ``--agents-per-tenant``): their ``registered`` events are produced on
   agents.control directly, as the API publishes them (keyed by agent id), because
   100,000 requests one after the other would take the run past its few minutes;
   every agent also sends one heartbeat. Waits until a search counts them all;
3. ``registration``: ``--registrations`` sequential ``POST /api/v1/agents/register``
   (each publishes ``registered`` and makes the agent's credential);
4. ``status (first)``: the first status request of ``--first`` agents (the
   projection reads what ClickHouse held of the agent once: its seed);
   ``status (memory)``: ``--status`` sequential requests over those agents,
   answered from memory;
5. ``search``: ``--searches`` sequential searches of a few kinds over all agents;
6. ``projection CPU``: the projection's own consumer thread, in this process,
   reading ``--heartbeats`` heartbeats: CPU time (its thread only: librdkafka's
   fetch threads are not counted) per heartbeat.

Each section returns rows for one table (printed, and written as JSON to ``--out``);
a new section is a function added to :data:`SECTIONS`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import orjson  # noqa: E402
from confluent_kafka import Producer  # noqa: E402

from agentwatch.directory import agent_id_for  # noqa: E402
from agentwatch.settings import Settings  # noqa: E402
from api.projection import AgentProjection  # noqa: E402
from infra.broker import ensure_topics, free_port, start_broker  # noqa: E402

#: The issue's targets (milliseconds) of the rows that have one.
TARGETS_MS = {"registration": 50.0, "status (memory)": 10.0}


@dataclass
class Row:
    """One line of the table: a latency distribution (ms) or a rate."""

    name: str
    count: int
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    note: str = ""
    target_ms: float | None = None

    @classmethod
    def of(cls, name: str, seconds: list[float], note: str = "") -> Row:
        ordered = sorted(seconds)

        def at(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

        return cls(
            name,
            len(ordered),
            at(0.5),
            at(0.99),
            round(ordered[-1] * 1000, 2),
            note,
            TARGETS_MS.get(name),
        )


@dataclass
class Bench:
    """What the sections share: the settings, the API's address and client, the options."""

    settings: Settings
    base_url: str
    http: httpx.Client
    options: argparse.Namespace
    agent_ids: list[str] = field(default_factory=list)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def timed(call: Callable[[], httpx.Response], expect: int) -> float:
    started = time.perf_counter()
    response = call()
    elapsed = time.perf_counter() - started
    if response.status_code != expect:
        raise RuntimeError(f"expected {expect}, got {response.status_code}: {response.text[:300]}")
    return elapsed


def heartbeat(agent_id: str, tenant_id: str, at: float) -> bytes:
    return orjson.dumps(
        {
            "agent_id": agent_id,
            "tenant_id": tenant_id,
            "timestamp": at,
            "cpu_usage": 40.0,
            "memory_usage": 50.0,
            "disk_usage": 20.0,
            "network_latency": 5.0,
            "active_tasks": 1,
            "completed_tasks": 100,
            "failed_tasks": 1,
            "error_rate": 0.01,
            "response_time_avg": 120.0,
            "uptime_seconds": 3600.0,
            "status": "active",
        }
    )


# --- sections ----------------------------------------------------------------------


def fill_registry(bench: Bench) -> list[Row]:
    """Produce the agents' registrations and one heartbeat each; wait for the API."""
    options, settings = bench.options, bench.settings
    producer = Producer({**settings.kafka_config(), "linger.ms": 20, "acks": "all"})
    started = time.perf_counter()
    now = time.time()
    capabilities = (["ml_inference"], ["chat", "search"], ["batch"], ["chat"])
    for i in range(options.agents):
        tenant = f"tenant-{i // options.agents_per_tenant:03d}"
        name = f"agent-{i:06d}"
        agent_id = agent_id_for(tenant, name)
        bench.agent_ids.append(agent_id)
        event = {
            "type": "registered",
            "agent_id": agent_id,
            "tenant_id": tenant,
            "actor": "bench",
            "timestamp": now,
            "payload": {
                "name": name,
                "agent_type": ("llm_worker", "bot", "ml_processor")[i % 3],
                "owner": f"team-{i % 17}",
                "version": "1.0.0",
                "capabilities": capabilities[i % 4],
                "max_concurrent_tasks": 4,
                "resources": {"cpu_cores": 2 + i % 8},
                "tags": {"env": ("prod", "dev")[i % 2], "zone": f"z{i % 5}"},
                "endpoint": f"https://{name}.internal:8443",
            },
        }
        key = agent_id.encode()
        while True:
            try:
                producer.produce(settings.topic("control"), key=key, value=orjson.dumps(event))
                producer.produce(
                    settings.topic("metrics"), key=key, value=heartbeat(agent_id, tenant, now)
                )
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(60)
    produced = time.perf_counter() - started
    say(f"produced {options.agents} registrations and heartbeats in {produced:.1f} s")

    def total() -> int:
        answer = bench.http.get(f"{bench.base_url}/api/v1/agents/search", params={"limit": 1})
        return answer.json()["total"] if answer.status_code == 200 else -1

    deadline = time.monotonic() + 300
    while (seen := total()) < options.agents:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the API saw {seen} of {options.agents} agents after 300 s")
        time.sleep(0.5)
    loaded = time.perf_counter() - started
    say(f"the API's projection holds {seen} agents, {loaded:.1f} s after the first was sent")
    # the loader (and the audit writer) in the API process copy what was produced into
    # ClickHouse meanwhile: measure the requests once they are done, not against them
    while time.monotonic() < deadline:
        lag = bench.http.get(f"{bench.base_url}/api/v1/system/health").json()["loader"]["lag_total"]
        if lag == 0:
            break
        time.sleep(1)
    time.sleep(options.settle_s)
    settled = time.perf_counter() - started
    say(f"the loader caught up {settled:.1f} s after the first was sent")
    return [
        Row(
            "fill (produce + fold)",
            options.agents,
            note=f"{options.agents / loaded:,.0f} agents/s into the projection; the loader "
            f"caught up after {settled:.0f} s (incl. {options.settle_s:g} s settling)",
        )
    ]


def registration(bench: Bench) -> list[Row]:
    """Sequential registrations through the API."""
    url = f"{bench.base_url}/api/v1/agents/register"
    seconds = []
    warmup = 5  # the first requests open the producer and the key book's paths: not counted
    for i in range(-warmup, bench.options.registrations):
        body = {
            "name": f"registered-{i + warmup:05d}",
            "agent_type": "llm_worker",
            "owner": "team-bench",
            "tenant_id": f"bench-{i % 10}",
            "capabilities": ["chat"],
            "tags": {"env": "prod"},
            "endpoint": "https://bench.internal:8443",
        }
        elapsed = timed(lambda body=body: bench.http.post(url, json=body), 201)
        if i >= 0:
            seconds.append(elapsed)
    return [Row.of("registration", seconds, "publish registered + make the agent's key")]


def status(bench: Bench) -> list[Row]:
    """The first status of some agents (their ClickHouse seed), then from memory."""
    rng = random.Random(7)
    agents = rng.sample(bench.agent_ids, min(bench.options.first, len(bench.agent_ids)))
    url = f"{bench.base_url}/api/v1/agents/{{}}/status"
    first = [timed(lambda a=a: bench.http.get(url.format(a)), 200) for a in agents]
    picks = [rng.choice(agents) for _ in range(bench.options.status)]
    memory = [timed(lambda a=a: bench.http.get(url.format(a)), 200) for a in picks]
    return [
        Row.of("status (first)", first, "7 ClickHouse point queries, kept as the agent's seed"),
        Row.of("status (memory)", memory, "no ClickHouse query"),
    ]


def search(bench: Bench) -> list[Row]:
    """Searches over every agent: by tenant, tags and capability, text, score order."""
    url = f"{bench.base_url}/api/v1/agents/search"
    kinds = {
        "search tenant+tag": {"tenant": "tenant-001", "tag": "env=prod", "limit": 50},
        "search capability+type": {"capability": "chat", "type": "bot", "limit": 50},
        "search text": {"text": "000042", "limit": 50},
        "search all by score": {"sort": "security_score", "order": "desc", "limit": 100},
    }
    rows = []
    for name, params in kinds.items():
        seconds = [
            timed(lambda params=params: bench.http.get(url, params=params), 200)
            for _ in range(bench.options.searches)
        ]
        total = bench.http.get(url, params=params).json()["total"]
        rows.append(Row.of(name, seconds, f"{total} match"))
    return rows


def projection_cpu(bench: Bench) -> list[Row]:
    """The projection's consumer, in this process, reading a burst of heartbeats."""
    settings, count = bench.settings, bench.options.heartbeats
    projection = AgentProjection(settings)
    while not projection.ready:  # assigned and caught up on the registry's topics
        projection.poll_once()
    projection.fold_cpu_s = 0.0
    read_before = projection.messages["metrics"]
    producer = Producer({**settings.kafka_config(), "linger.ms": 20})
    now = time.time()
    values = [heartbeat(a, "tenant-000", now + 1) for a in bench.agent_ids[:1000]]
    keys = [a.encode() for a in bench.agent_ids[:1000]]
    for i in range(count):
        while True:
            try:
                producer.produce(
                    settings.topic("metrics"), key=keys[i % 1000], value=values[i % 1000]
                )
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(60)
    cpu_started = time.thread_time()
    started = time.perf_counter()
    while projection.messages["metrics"] - read_before < count:
        projection.poll_once()
        if time.perf_counter() - started > 120:
            break
    thread_cpu = time.thread_time() - cpu_started
    wall = time.perf_counter() - started
    read = projection.messages["metrics"] - read_before
    projection.stop()
    return [
        Row(
            "projection CPU",
            read,
            note=f"{thread_cpu / read * 1e6:.2f} µs CPU/heartbeat "
            f"(poll loop; fold alone {projection.fold_cpu_s / read * 1e6:.2f} µs); "
            f"{read / wall:,.0f} heartbeats/s read from a backlog",
        ),
    ]


#: The sections, in order (``fill_registry`` first: the others need its agents).
SECTIONS: list[Callable[[Bench], list[Row]]] = [
    fill_registry,
    registration,
    status,
    search,
    projection_cpu,
]


def finish(workdir: Path, broker: object, *processes: subprocess.Popen | None, ok: bool) -> None:
    """Stop the run's processes and its broker, then remove its working directory (chDB,
    logs: 50–70 MB a run) if the run went through; a failed run's is kept for its logs."""
    for process in processes:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    broker.stop()
    if ok:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        say(f"failed; logs are kept in {workdir}")


def start_api(settings: Settings, workdir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, **settings.as_env(), "AGENTWATCH_API_PORT": str(port)}
    log = (workdir / "api.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "api"],
        env=env,
        stdout=log,
        stderr=log,
        cwd=Path(__file__).resolve().parent.parent,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=100_000)
    parser.add_argument("--agents-per-tenant", type=int, default=5_000)
    parser.add_argument("--registrations", type=int, default=300)
    parser.add_argument("--first", type=int, default=300)
    parser.add_argument("--status", type=int, default=3000)
    parser.add_argument("--searches", type=int, default=30)
    parser.add_argument("--heartbeats", type=int, default=300_000)
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/api.json"))
    options = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="aw-bench-api-"))
    broker = start_broker("127.0.0.1", free_port(), log_path=workdir / "tansu.log")
    api = None
    ok = False
    try:
        port = free_port()
        settings = Settings(
            bootstrap_servers=broker.bootstrap_servers,
            clickhouse_dsn=f"chdb://{workdir / 'chdb'}",
            var_dir=workdir / "var",
            api_auth_required=False,
            agents_per_tenant_limit=max(options.agents_per_tenant, 10_000),
            api_projection_ready_timeout_s=60.0,
        )
        ensure_topics(settings)
        api = start_api(settings, workdir, port)
        base_url = f"http://127.0.0.1:{port}"
        http = httpx.Client(timeout=60)
        deadline = time.monotonic() + 120
        while True:
            try:
                if http.get(f"{base_url}/api/v1/agents/search", params={"limit": 1}).is_success:
                    break
            except httpx.HTTPError:
                pass
            if api.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start; see {workdir / 'api.log'}")
            time.sleep(0.2)
        say(f"API up on {base_url} (log {workdir / 'api.log'})")
        bench = Bench(settings, base_url, http, options)
        rows: list[Row] = []
        for section in SECTIONS:
            say(f"section {section.__name__}")
            rows += section(bench)
        print()
        print(
            f"{'measure':<26}{'n':>8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}{'target':>9}  note"
        )
        for row in rows:
            cells = [
                f"{v:>10.2f}" if v is not None else f"{'':>10}"
                for v in (row.p50_ms, row.p99_ms, row.max_ms)
            ]
            target = f"≤{row.target_ms:g}" if row.target_ms else ""
            print(f"{row.name:<26}{row.count:>8}{''.join(cells)}{target:>9}  {row.note}")
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(
            json.dumps(
                {
                    "agents": options.agents,
                    "cpus": os.cpu_count(),
                    "rows": [asdict(r) for r in rows],
                },
                indent=2,
            )
        )
        say(f"written {options.out}")
        ok = True
    finally:
        finish(workdir, broker, api, ok=ok)


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
