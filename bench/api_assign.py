"""Latency of ``POST /api/v1/tasks/assign`` with 100,000 agents while heartbeats and
assignment scores stream.

    .venv/bin/python bench/api_assign.py                     # the issue's figure (~2 min)
    .venv/bin/python bench/api_assign.py --agents 5000       # a smoke run (~30 s)

What it does, on this machine, against a Tansu broker it starts on a free port and a
chDB directory of its own:

1. starts the real API (``python -m api``) as a child process, the way ``agentwatch up``
   runs it: beside the loader (``python -m sinks.loader``), which owns chDB and serves it
   to the API (sinks/chdb_http.py); the measured requests go to the API over HTTP
   (``--one-process``: the API runs the loader and the audit writer itself, the embedded
   layout before the loader had a process of its own; ``--no-loader``: the API without
   them, as the cluster profile runs it; with ``--loader-process`` as well, the loader as
   a process of its own beside it, on a chDB of its own, on the same cores);
2. fills its fleet through the topics, as in production: ``--agents`` ``registered``
   events (agents.control), a ``status_changed`` to active for each (agents.state, as
   the dataflow publishes it) and an ``AssignmentScore`` each (agents.assignment_scores,
   with per-type predictions for one agent in three), produced directly (100,000
   requests would take the run past its minutes); waits until an assignment considers
   them all. ``--agents-per-tenant`` (default: all in one tenant, the worst case: every
   agent is a candidate of every task);
3. starts the streams, from a child process (a thread here would share the measuring
   client's interpreter lock): ``--heartbeat-rate`` heartbeats/s into agents.metrics (the
   projection reads them: 100,000 agents beating every 30 s is 3,333/s), the same as the
   dataflow hands them on (Arrow batches on agents.metric_rows, which the API process's
   loader stores; no dataflow runs here) and
   ``--score-rate`` assignment scores/s (100,000 agents scored every 60 s: 1,667/s),
   which the assigner folds under the lock the requests take;
4. ``--requests`` sequential assignments of each kind (any agent; a rare capability,
   5 % of the agents; a task type the models know, with its duration), and the
   409 answer when nothing fits; meanwhile a process that only sleeps 1 ms at a time
   notes how late it wakes (the machine's share of the tail: busy cores, the host);
5. ``fold``: an assigner in this process (with its own projection) reading the
   registry and a burst of scores: CPU per message of the assigner's fold alone; then
   ``choose in process``: the filters and the scoring alone (no HTTP, no publish) on
   that fleet, to tell the computation from the machine's load in the HTTP figures.

Results are printed and written as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import orjson  # noqa: E402
from confluent_kafka import Producer  # noqa: E402

from agentwatch.assignment import Task  # noqa: E402
from agentwatch.secrets import SecretDsn  # noqa: E402
from agentwatch.settings import Settings  # noqa: E402
from api.assign import Assigner  # noqa: E402
from api.projection import AgentProjection  # noqa: E402
from api.publisher import EventPublisher  # noqa: E402
from bench.api import Row, finish, heartbeat, say, start_api, timed  # noqa: E402
from infra.broker import ensure_topics, free_port, start_broker  # noqa: E402
from schemas.metric_rows import encode_json  # noqa: E402
from sinks.chdb_http import served_dsn  # noqa: E402
from sinks.loader_metrics import parse as parse_loader_metrics  # noqa: E402

#: The issue's target (milliseconds): assign p99 ≤ 10 ms with 100,000 agents.
TARGET_MS = 10.0
TASK_TYPES = ("ocr", "summarise", "translate")


def agent_id(i: int) -> str:
    return f"agent-{i:06d}"


def tenant_of(i: int, per_tenant: int) -> str:
    return f"tenant-{i // per_tenant:03d}"


def score_record(i: int, tenant: str, at: float, rng: random.Random) -> bytes:
    """An AssignmentScore as the shard publishes it."""
    by_type = {}
    if i % 3 == 0:
        by_type[TASK_TYPES[i % len(TASK_TYPES)]] = {
            "p_success": round(rng.uniform(0.5, 1.0), 3),
            "expected_duration_s": round(rng.uniform(5, 120), 1),
            "outcomes": rng.randrange(1, 50),
        }
    parts = {name: round(rng.random(), 3) for name in ("performance", "cost", "sla")}
    return orjson.dumps({
        "agent_id": agent_id(i), "tenant_id": tenant, "timestamp": at, "score": 0.5, **parts,
        "availability": 1.0,
        "weights": {"performance": 0.4, "cost": 0.3, "availability": 0.2, "sla": 0.1},
        "state": "active", "active_tasks": rng.randrange(0, 2), "capacity": 4,
        "success_rate": parts["performance"], "response_time_ms": 120.0,
        "sla_met_rate": parts["sla"], "tasks_completed": 10, "tasks_failed": 1,
        "p_fail": round(rng.random() * 0.2, 3), "by_type": by_type, "cause": "heartbeat",
    })  # fmt: skip


def produce_all(producer: Producer, messages) -> None:
    for topic, key, value in messages:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)


def fill(settings: Settings, options: argparse.Namespace) -> None:
    """The fleet's registrations, states and scores, through the topics."""
    producer = Producer({**settings.kafka_config(), "linger.ms": 20})
    rng = random.Random(11)
    now = time.time()
    control, state = settings.topic("control"), settings.topic("state")
    scores = settings.topic("assignment_scores")

    def messages():
        for i in range(options.agents):
            tenant, agent = tenant_of(i, options.agents_per_tenant), agent_id(i)
            key = agent.encode()
            capabilities = ["chat", "search"] + (["gpu"] if i % 20 == 0 else [])
            registration = {
                "type": "registered", "agent_id": agent, "tenant_id": tenant,
                "actor": "bench", "timestamp": now - 10,
                "payload": {"name": agent, "agent_type": "bot", "owner": "team-bench",
                            "capabilities": capabilities, "max_concurrent_tasks": 4,
                            "resources": {"cpu_cores": 2 + i % 8, "cost_per_hour": 0.5}},
            }  # fmt: skip
            active = {
                "type": "status_changed", "agent_id": agent, "tenant_id": tenant,
                "actor": "system", "timestamp": now - 5,
                "payload": {"from": "registered", "to": "active"},
            }  # fmt: skip
            yield control, key, orjson.dumps(registration)
            yield state, key, orjson.dumps(active)
            yield scores, key, score_record(i, tenant, now - 1, rng)

    produce_all(producer, messages())


def stream(settings: Settings, options: argparse.Namespace, stopping, sent) -> None:
    """Heartbeats and assignment scores at steady rates until ``stopping`` is set; the
    counts go to ``sent`` (heartbeats, scores). Runs in a process of its own."""
    producer = Producer({**settings.kafka_config(), "linger.ms": 5})
    rng = random.Random(5)
    tick = 0.05
    metrics, scores = settings.topic("metrics"), settings.topic("assignment_scores")
    # what the dataflow would hand the API process's loader for the same heartbeats
    # (no dataflow runs here): one Arrow batch of them per tick, on agents.metric_rows
    metric_rows = settings.topic("metric_rows")
    beats_per_tick = max(1, int(options.heartbeat_rate * tick))
    scores_per_tick = max(0, int(options.score_rate * tick))
    next_tick = time.perf_counter()
    while not stopping.is_set():
        now = time.time()
        beats = []
        for _ in range(beats_per_tick):
            i = rng.randrange(options.agents)
            tenant = tenant_of(i, options.agents_per_tenant)
            beats.append(heartbeat(agent_id(i), tenant, now))
            try:
                producer.produce(metrics, key=agent_id(i).encode(), value=beats[-1])
                sent[0] += 1
            except BufferError:
                producer.poll(0.01)
        for rows in encode_json(beats):
            producer.produce(metric_rows, key=b"0", value=rows)
        for _ in range(scores_per_tick):
            i = rng.randrange(options.agents)
            tenant = tenant_of(i, options.agents_per_tenant)
            try:
                producer.produce(scores, key=agent_id(i).encode(),
                                 value=score_record(i, tenant, now, rng))  # fmt: skip
                sent[1] += 1
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
        next_tick += tick
        stopping.wait(max(0.0, next_tick - time.perf_counter()))
    producer.flush(10)


class Streams:
    """The streams of ``stream``, in a child process until the block ends.

    Not a thread of this process: the measured requests are timed here, and a thread
    building heartbeats would hold the interpreter's lock while an answer waits to be
    read, so the client's own wait would count as the API's latency."""

    def __init__(self, settings: Settings, options: argparse.Namespace) -> None:
        context = multiprocessing.get_context("spawn")
        self.stopping = context.Event()
        self.counts = context.Array("q", 2, lock=False)
        self.process = context.Process(
            target=stream, args=(settings, options, self.stopping, self.counts),
            name="streams", daemon=True,
        )  # fmt: skip

    def __enter__(self) -> Streams:
        self.process.start()
        deadline = time.monotonic() + 60
        while self.counts[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)  # the child process imports, then streams
        self.started = time.perf_counter()  # the rates count from the first send
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
        self.seconds = time.perf_counter() - self.started
        self.sent = {"heartbeats": self.counts[0], "scores": self.counts[1]}


def oversleep(stopping, results) -> None:
    """Sleep 1 ms at a time until ``stopping`` is set; send how late each wake-up was
    (seconds) on ``results``. A process that does nothing else: its lateness is the
    machine's (cores busy, the host's other guests), not any code's under test."""
    late = []
    while not stopping.is_set():
        begun = time.perf_counter()
        time.sleep(0.001)
        late.append(time.perf_counter() - begun - 0.001)
    results.send(late)
    results.close()


class Sleeper:
    """:func:`oversleep` in a child process for the length of the block; ``late`` after."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.stopping = context.Event()
        self.results, sending = context.Pipe(duplex=False)
        self.process = context.Process(
            target=oversleep, args=(self.stopping, sending), name="sleeper", daemon=True
        )
        self.late: list[float] = []

    def __enter__(self) -> Sleeper:
        self.process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        if self.results.poll(30):
            self.late = self.results.recv()
        self.process.join(10)


def measure(http: httpx.Client, base_url: str, options: argparse.Namespace) -> list[Row]:
    url = f"{base_url}/api/v1/tasks/assign"
    tenant = tenant_of(0, options.agents_per_tenant)
    kinds = {
        "assign (any agent)": ({"tenant_id": tenant}, 200),
        "assign (gpu: 5 % fit)": ({"tenant_id": tenant, "required_capabilities": ["gpu"]}, 200),
        "assign (typed, timed)": (
            {
                "tenant_id": tenant,
                "task_type": "ocr",
                "estimated_duration": 30.0,
                "resource_requirements": {"cpu_cores": 4},
            },
            200,
        ),  # fmt: skip
        "assign (nothing fits: 409)": (
            {"tenant_id": tenant, "required_capabilities": ["quantum"]},
            409,
        ),
    }
    for body, _ in kinds.values():
        for _ in range(20):  # warm-up, not counted
            http.post(url, json=body)
    seconds: dict[str, list[float]] = {name: [] for name in kinds}
    floor: list[float] = []  # the same process's cheapest answer, at the same moments
    weights = f"{base_url}/api/v1/orchestration/weights"
    for _ in range(options.requests):  # the kinds in turn: each sees the same moments
        for name, (body, expect) in kinds.items():
            seconds[name].append(timed(lambda body=body: http.post(url, json=body), expect))
        floor.append(timed(lambda: http.get(weights), 200))
    rows = [Row.of("GET weights (HTTP floor)", floor, "no work: what any answer costs here")]
    for name, (body, expect) in kinds.items():
        example = http.post(url, json=body).json()
        note = (
            f"{example['eligible']}/{example['considered']} fit"
            if expect == 200
            else example["detail"][:60]
        )
        row = Row.of(name, seconds[name], note)
        row.target_ms = TARGET_MS
        rows.append(row)
    return rows


def publish_latency(settings: Settings, options: argparse.Namespace) -> Row:
    """What the broker's acknowledgement of one event costs (the API waits for it before
    it answers: a 200 means the task_assigned is in the log)."""
    publisher = EventPublisher(settings)
    seconds = []
    for i in range(options.requests // 2 + 20):
        event = {"type": "task_released", "agent_id": "bench-nobody", "tenant_id": "bench",
                 "actor": "bench", "timestamp": time.time(),
                 "payload": {"task_id": "none", "reason": "bench"}}  # fmt: skip
        begun = time.perf_counter()
        publisher.publish(event, key="bench-nobody")
        if i >= 20:
            seconds.append(time.perf_counter() - begun)
    publisher.close()
    return Row.of("publish in process (acks=all)", seconds, "one event, waiting for the broker")


def fold_cpu(settings: Settings, options: argparse.Namespace) -> list[Row]:
    """The assigner's fold, in this process: the registry from its beginning, then a
    burst of scores."""
    projection = AgentProjection(settings)
    publisher = EventPublisher(settings)
    assigner = Assigner(settings, publisher)
    assigner.attach(projection)
    started = time.perf_counter()
    while not projection.ready:
        projection.poll_once()
    registry_s = time.perf_counter() - started
    folded, cpu = assigner.folded, assigner.fold_cpu_s
    rows = [Row(
        "fold (registry)", folded,
        note=f"{cpu / max(folded, 1) * 1e6:.1f} µs CPU/event in the assigner (registration, "
        f"state); the projection read {options.agents:,} agents' registry in {registry_s:.1f} s",
    )]  # fmt: skip
    count, rng, now = 20_000, random.Random(3), time.time() + 60
    producer = Producer({**settings.kafka_config(), "linger.ms": 20})
    topic = settings.topic("assignment_scores")
    produce_all(producer, (
        (topic, agent_id(i).encode(), score_record(i, tenant_of(i, options.agents_per_tenant),
                                                   now, rng))
        for i in (rng.randrange(options.agents) for _ in range(count))
    ))  # fmt: skip
    before, cpu_before = assigner.folded, assigner.fold_cpu_s
    deadline = time.monotonic() + 60
    while assigner.folded - before < count and time.monotonic() < deadline:
        projection.poll_once()
    scores = assigner.folded - before
    rows.append(Row(
        "fold (scores)", scores,
        note=f"{(assigner.fold_cpu_s - cpu_before) / max(scores, 1) * 1e6:.1f} µs CPU/score "
        "record in the assigner (parse done by the projection)",
    ))  # fmt: skip
    tenant = tenant_of(0, options.agents_per_tenant)
    kinds = {
        "any": Task(tenant),
        "gpu": Task(tenant, required_capabilities=("gpu",)),
        "typed": Task(tenant, task_type="ocr", estimated_duration=30.0,
                      resource_requirements=(("cpu_cores", 4.0),)),
        "none": Task(tenant, required_capabilities=("quantum",)),
    }  # fmt: skip
    weights = assigner.weights.model_dump()
    for kind, task in kinds.items():
        seconds = []
        for _ in range(options.requests):
            begun = time.perf_counter()
            with assigner.lock:
                assigner.fleet.choose(task, weights, 3, 50.0)
            seconds.append(time.perf_counter() - begun)
        rows.append(
            Row.of(
                f"choose in process ({kind})",
                seconds,
                f"{len(assigner.fleet):,} agents; the filters and scoring alone",
            )
        )
    projection.stop()
    publisher.close()
    return rows


def start_loader(
    settings: Settings, workdir: Path, metrics_port: int, serve_port: int = 0, niceness: int = 0
) -> subprocess.Popen:
    """``python -m sinks.loader``: on a chDB directory of its own (chDB is in-process: the
    API process holds the bench's), or, with ``serve_port``, on the bench's, which it then
    serves to the API (the layout ``agentwatch up`` runs)."""
    own = {
        "AGENTWATCH_LOADER_METRICS_PORT": str(metrics_port),
        "AGENTWATCH_LOADER_NICENESS": str(niceness),
    }
    if serve_port:
        own["AGENTWATCH_CLICKHOUSE_SERVE_PORT"] = str(serve_port)
    else:
        own["AGENTWATCH_CLICKHOUSE_DSN"] = f"chdb://{workdir / 'chdb-loader'}"
    log = (workdir / "loader.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "sinks.loader"],
        env={**os.environ, **settings.as_env(), **own},
        stdout=log,
        stderr=log,
        cwd=Path(__file__).resolve().parent.parent,
    )


def wait_for_ping(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 60) -> None:
    """Wait until ``url`` answers 200 (the served chDB: after the loader made the schema)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"nothing answers {url}; see {log}")


def loader_lag(port: int) -> int | None:
    """The loader process's lag (its ``/metrics``), None before it has measured one."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    lag = parse_loader_metrics(text).lag
    return sum(lag.values()) if lag else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=100_000)
    parser.add_argument("--agents-per-tenant", type=int, default=None)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--heartbeat-rate", type=float, default=3334.0)
    parser.add_argument("--score-rate", type=float, default=1667.0)
    parser.add_argument(
        "--no-loader", action="store_true",
        help="run the API without its loader and audit writer (as the cluster profile does: "
        "the loader is a process of its own there)",
    )  # fmt: skip
    parser.add_argument(
        "--loader-process", action="store_true",
        help="with --no-loader: run the loader as a process of its own beside the API, on a "
        "chDB directory of its own (the cluster layout with its loader on these cores; the "
        "API's reads do not see what it stores)",
    )  # fmt: skip
    parser.add_argument(
        "--one-process", action="store_true",
        help="the API process runs the loader and owns chDB (AGENTWATCH_EMBEDDED_LOADER_PROCESS="
        "false); default: the layout `agentwatch up` runs, the loader as a process of its own "
        "that owns chDB and serves it to the API (sinks/chdb_http.py)",
    )  # fmt: skip
    parser.add_argument(
        "--loader-niceness", type=int, default=None,
        help="the loader process's AGENTWATCH_LOADER_NICENESS (default: "
        "AGENTWATCH_EMBEDDED_LOADER_NICENESS's default, as agentwatch up runs it; 0 with "
        "--loader-process)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("bench/results/api_assign.json"))
    options = parser.parse_args()
    if options.loader_process and not options.no_loader:
        parser.error("--loader-process goes with --no-loader (the API runs no loader then)")
    if options.one_process and options.no_loader:
        parser.error("--one-process runs the loader in the API: not with --no-loader")
    options.served = not (options.one_process or options.no_loader)
    if options.loader_niceness is None:
        options.loader_niceness = Settings().embedded_loader_niceness if options.served else 0
    options.agents_per_tenant = options.agents_per_tenant or options.agents
    load_before = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="aw-bench-assign-"))
    broker = start_broker("127.0.0.1", free_port(), log_path=workdir / "tansu.log")
    api = loader = None
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
            orchestration_reservation_ttl_s=5.0,  # the bench's tasks never get a verdict
            api_run_loader=options.one_process,
            clickhouse_serve_password=secrets.token_urlsafe(24),
        )
        ensure_topics(settings)
        loader_port = free_port()
        if options.served:
            serve_port = free_port()
            loader = start_loader(
                settings, workdir, loader_port, serve_port, options.loader_niceness
            )
            wait_for_ping(f"http://127.0.0.1:{serve_port}/ping", loader, workdir / "loader.log")
            settings = settings.model_copy(
                update={"clickhouse_dsn": SecretDsn(served_dsn(settings, serve_port))}
            )
        api = start_api(settings, workdir, port)
        if options.loader_process:
            loader = start_loader(settings, workdir, loader_port, niceness=options.loader_niceness)
        base_url = f"http://127.0.0.1:{port}"
        http = httpx.Client(timeout=60)
        deadline = time.monotonic() + 120
        while True:
            try:
                if http.get(f"{base_url}/api/v1/orchestration/weights").is_success:
                    break
            except httpx.HTTPError:
                pass
            if api.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start; see {workdir / 'api.log'}")
            time.sleep(0.2)
        # the projection is ready once assigned: the scores are read from the topic's end
        http.post(f"{base_url}/api/v1/tasks/assign", json={"tenant_id": "none"})
        say(f"API up on {base_url} (log {workdir / 'api.log'})")
        started = time.perf_counter()
        fill(settings, options)
        produced = time.perf_counter() - started
        say(f"produced {options.agents:,} agents x 3 events in {produced:.1f} s")
        tenant = tenant_of(0, options.agents_per_tenant)

        def considered() -> int:
            answer = http.post(
                f"{base_url}/api/v1/tasks/assign",
                json={"tenant_id": tenant, "required_capabilities": ["quantum"]},
            )
            return answer.json().get("considered", 0)  # fmt: skip

        while (seen := considered()) < options.agents_per_tenant:
            if time.perf_counter() - started > 300:
                raise RuntimeError(f"the fleet holds {seen} agents after 300 s")
            time.sleep(0.5)
        filled = time.perf_counter() - started
        say(f"the fleet holds {seen:,} agents of {tenant}, {filled:.1f} s after the first was sent")
        # the loader in the API process copies what was produced into ClickHouse
        # meanwhile: measure once it is done, not against it (bench/api.py does the same)
        while options.one_process and time.perf_counter() - started < 300:
            health = http.get(f"{base_url}/api/v1/system/health").json()
            if health["loader"]["lag_total"] == 0:
                break
            time.sleep(1)
        while loader is not None and time.perf_counter() - started < 300:
            if loader_lag(loader_port) == 0:  # (the loader process's own figure)
                break
            time.sleep(1)
        say(f"the loader caught up {time.perf_counter() - started:.1f} s after the first was sent")
        rows = [Row("fill (produce + fold)", options.agents,
                    note=f"{options.agents / filled:,.0f} agents/s (3 events each) into the "
                    "API's fleet, through the topics")]  # fmt: skip
        with Streams(settings, options) as streams:
            time.sleep(2.0)  # the streams run before the first measured request
            with Sleeper() as sleeper:
                rows += measure(http, base_url, options)
        rates = {k: v / streams.seconds for k, v in streams.sent.items()}
        # a loader process that fell behind while the requests ran would flatter them
        lag_after = loader_lag(loader_port) if loader is not None else None
        if lag_after is not None:
            say(f"the loader's lag when the requests ended: {lag_after:,} messages")
        streaming = (
            f"while {rates['heartbeats']:,.0f} heartbeats/s and {rates['scores']:,.0f} "
            "scores/s streamed"
        )
        for row in rows[1:]:
            row.note = f"{row.note}; {streaming}"
        machine = "the machine: a process that only sleeps, during the requests"
        rows.append(Row.of("1 ms sleeper's lateness", sleeper.late, machine))
        rows.append(publish_latency(settings, options))
        rows += fold_cpu(settings, options)
        print()
        print(
            f"{'measure':<30}{'n':>8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}{'target':>9}  note"
        )
        for row in rows:
            cells = [
                f"{v:>10.2f}" if v is not None else f"{'':>10}"
                for v in (row.p50_ms, row.p99_ms, row.max_ms)
            ]
            target = f"≤{row.target_ms:g}" if row.target_ms else ""
            print(f"{row.name:<30}{row.count:>8}{''.join(cells)}{target:>9}  {row.note}")
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(json.dumps({
            "agents": options.agents, "agents_per_tenant": options.agents_per_tenant,
            "cpus": os.cpu_count(), "client": "httpx over loopback to python -m api",
            "streams": "a child process (not the client's)",
            "api_loader": options.one_process,
            "loader_process": options.loader_process or options.served,
            "served_chdb": options.served,
            "loader_niceness": options.loader_niceness,
            "loader_lag_after": lag_after,
            "load_average_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            "heartbeats_per_s": round(rates["heartbeats"]), "scores_per_s": round(rates["scores"]),
            "rows": [asdict(r) for r in rows],
        }, indent=2))  # fmt: skip
        say(f"written {options.out}")
        ok = True
    finally:
        finish(workdir, broker, api, loader, ok=ok)


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
