"""Send a simulated fleet's heartbeats to Kafka (or to a file), paced, with progress.

The fleet is :class:`agentwatch.simulator.FleetSimulator`; this module only
moves its bytes: keys are agent ids, values the contract's JSON, to the topic
``settings.topic("metrics")``. Pace is either as fast as possible or a target
rate in heartbeats per wall-clock second; simulated time runs ``speedup``
times faster than the wall clock (``rate = agents × speedup / interval``).

With a backfill (``backfill_s``), simulated time starts that long before
now: the history goes out as fast as ``backfill_rate`` allows, and once it
reaches the present every heartbeat is sent at its own timestamp, so event
time is the wall clock from then on. Planned incidents then fall in the last
hour of the history (once baselines are warm) and a few minutes into the live
part (:func:`backfill_incident_windows`).

Run it with ``agentwatch simulate --help`` (or ``python -m infra.simulate``,
which takes the same options).
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol

from agentwatch.settings import Settings
from agentwatch.simulator import (
    FleetSimulator,
    Incident,
    IncidentWindow,
    iso_ms,
    parse_duration_s,
    plan_incidents,
    plan_incidents_in_windows,
    to_epoch_s,
    write_ground_truth,
)
from agentwatch.taskworld import TaskWorld
from infra.tasks import TaskRunner, TaskStats, TaskStreamOptions

log = logging.getLogger("agentwatch.simulate")

#: Rows handed to the sink at a time (and the pacing step at high rates).
CHUNK_ROWS = 4096
#: When pacing falls behind by more than this, it stops trying to catch up.
MAX_PACE_DEBT_S = 1.0
#: Heartbeats per wall-clock second while a backfill sends history (measured: this machine
#: with the embedded stack running keeps up with it; see README).
DEFAULT_BACKFILL_RATE = 20_000.0
#: With a backfill, half the planned incidents fall in the history's last this-many seconds…
HISTORY_INCIDENTS_WITHIN_S = 3600.0
#: …and the other half in real time, this many seconds after the start (wall clock).
LIVE_INCIDENTS_FROM_S, LIVE_INCIDENTS_UNTIL_S = 180.0, 900.0


class SimulationError(RuntimeError):
    """The simulation cannot run; the message says what to do."""


@dataclass(frozen=True)
class SimulationOptions:
    """What to simulate and how fast (see ``agentwatch simulate --help``)."""

    agents: int = 1000
    seed: int = 0
    rate: float | None = None  # heartbeats per wall-clock second; 0 = as fast as possible
    speedup: float | None = None  # simulated seconds per wall-clock second
    duration_s: float | None = None  # simulated time to cover
    count: int | None = None  # heartbeats to send
    start: datetime | float | str | None = None  # start of simulated time; None = now
    tenants: int | None = None
    incidents: Sequence[Incident] = ()
    random_incidents: int = 0
    incidents_after_s: float | None = None  # None = after the baseline warm-up
    backfill_s: float | None = None  # history to send first (from now - backfill_s), then live
    backfill_rate: float = DEFAULT_BACKFILL_RATE  # heartbeats/s of the history; 0 = max
    ground_truth: Path | None = None
    output: Path | None = None  # JSON lines to this file instead of Kafka ("-" = stdout)
    #: The API to register every agent with before its first heartbeat (None: don't; the
    #: dataflow then registers agents from their heartbeats, AGENTWATCH_AGENTS_AUTO_REGISTER).
    register_api_url: str | None = None
    #: A task stream (infra/tasks.py): the fleet registers as a heterogeneous one (agent
    #: types, capabilities, capacity, resources) and runs the tasks the API assigns it.
    tasks: TaskStreamOptions | None = None

    def __post_init__(self) -> None:
        if self.agents < 1:
            raise SimulationError(f"--agents must be at least 1 (got {self.agents})")
        if self.tasks is not None and self.output is not None:
            raise SimulationError(
                "the task stream submits tasks to the API and reports outcomes on Kafka; "
                "leave out --output, or --tasks-per-s"
            )
        if self.tasks is not None and self.register_api_url is None:
            raise SimulationError(
                "the task stream needs the fleet registered with its capabilities and "
                "capacity (the API assigns only to those); leave out --no-register"
            )
        if self.rate is not None and self.speedup is not None:
            raise SimulationError(
                "give --rate or --speedup, not both: they are two ways to set one pace "
                "(rate = agents × speedup / heartbeat interval)"
            )
        if self.rate is not None and self.rate < 0:
            raise SimulationError(f"--rate must be ≥ 0 (0 = as fast as possible); got {self.rate}")
        if self.speedup is not None and self.speedup <= 0:
            raise SimulationError(f"--speedup must be > 0; got {self.speedup}")
        if self.backfill_s is not None:
            if (self.rate, self.speedup, self.start) != (None, None, None):
                raise SimulationError(
                    "--backfill starts simulated time at now minus the backfill and paces it "
                    "with --backfill-rate, then in real time; leave out --start, --rate and "
                    "--speedup"
                )
            if self.backfill_s < 0 or self.backfill_rate < 0:
                raise SimulationError(
                    f"--backfill and --backfill-rate must be ≥ 0 (got {self.backfill_s:g}, "
                    f"{self.backfill_rate:g})"
                )

    @property
    def real_time(self) -> bool:
        """True when no heartbeat may be sent before its timestamp (a backfill, then live)."""
        return self.backfill_s is not None

    def check_backfill_catches_up(self, heartbeat_interval_s: float) -> None:
        """A backfill slower than the fleet's live rate would never reach the present."""
        live_rate = self.agents / heartbeat_interval_s
        if self.real_time and 0 < self.backfill_rate <= live_rate:
            raise SimulationError(
                f"--backfill-rate {self.backfill_rate:g} never catches up with the clock: "
                f"{self.agents} agents beat {live_rate:g} times a second live; "
                "raise --backfill-rate or use fewer --agents"
            )

    def heartbeats_per_s(self, heartbeat_interval_s: float) -> float | None:
        """Wall-clock pace in heartbeats/s, or None for as fast as possible."""
        if self.real_time:
            return self.backfill_rate or None
        if self.rate is not None:
            return self.rate or None
        return self.agents * (self.speedup or 1.0) / heartbeat_interval_s

    def simulated_span_s(self, heartbeat_interval_s: float) -> float | None:
        """Simulated seconds the run covers, or None when it runs until stopped."""
        spans = []
        if self.duration_s is not None:
            spans.append(self.duration_s)
        if self.count is not None:
            spans.append(math.ceil(self.count / self.agents) * heartbeat_interval_s)
        return min(spans) if spans else None


@dataclass
class SimulationResult:
    """What a run sent."""

    sent: int
    elapsed_s: float
    simulated_s: float
    incidents: int
    delivery_errors: int = 0
    first_error: str | None = None
    backfill_elapsed_s: float | None = None  # wall time until the history reached the present
    tasks: TaskStats | None = None  # what the task stream did

    @property
    def rate(self) -> float:
        """Heartbeats sent per wall-clock second."""
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


class HeartbeatSink(Protocol):
    """Where heartbeats go: Kafka or a file."""

    def send(self, keys: list[bytes], values: list[bytes]) -> None: ...
    def close(self, timeout_s: float) -> None: ...


def producer_config(bootstrap_servers: str) -> dict[str, object]:
    """librdkafka settings for bulk heartbeats: big batches, a short linger, no compression."""
    return {
        "bootstrap.servers": bootstrap_servers,
        "linger.ms": 20,
        "batch.num.messages": 10_000,
        "batch.size": 4 * 1024 * 1024,
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 512 * 1024,
        "compression.type": "none",
        "acks": 1,
        "enable.idempotence": False,
        "delivery.report.only.error": True,
    }


@dataclass
class KafkaHeartbeatSink:
    """Produces to one topic; when librdkafka's queue is full, it polls and retries."""

    bootstrap_servers: str
    topic: str
    #: More librdkafka settings (the SASL login of the cluster profile's agent principal).
    client_config: dict[str, object] = field(default_factory=dict)
    delivery_errors: int = 0
    first_error: str | None = None
    backfill_elapsed_s: float | None = None  # wall time until the history reached the present
    _producer: object = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from confluent_kafka import Producer

        config = {**self.client_config, **producer_config(self.bootstrap_servers)}
        config["on_delivery"] = self._on_delivery
        config["error_cb"] = self._on_error
        self._producer = Producer(config)
        self._last_error_log = 0.0

    def _on_delivery(self, error: object, message: object) -> None:
        if error is not None:
            self.delivery_errors += 1
            self.first_error = self.first_error or str(error)

    def _on_error(self, error: object) -> None:
        now = time.monotonic()
        if now - self._last_error_log > 10.0:  # librdkafka repeats itself; say it once in a while
            self._last_error_log = now
            log.warning("kafka_error error=%s", error)

    def check_topic(self, timeout_s: float = 10.0) -> bool:
        """True when the topic exists; a one-line error when no broker answers."""
        from confluent_kafka import KafkaException

        try:
            metadata = self._producer.list_topics(timeout=timeout_s)
        except KafkaException:
            raise SimulationError(
                f"no Kafka broker answered at {self.bootstrap_servers}; start one with "
                "`agentwatch up` or pass --bootstrap-servers HOST:PORT"
            ) from None
        return self.topic in metadata.topics

    def send(self, keys: list[bytes], values: list[bytes]) -> None:
        produce, poll, topic = self._producer.produce, self._producer.poll, self.topic
        for key, value in zip(keys, values, strict=True):
            while True:
                try:
                    produce(topic, value, key)
                    break
                except BufferError:  # queue full: let librdkafka deliver some
                    poll(0.05)
        poll(0)

    def close(self, timeout_s: float) -> None:
        left = self._producer.flush(timeout_s)
        if left:
            self.delivery_errors += left
            self.first_error = self.first_error or f"{left} heartbeats not delivered in time"


@dataclass
class FileHeartbeatSink:
    """Writes JSON lines to a file (``-`` = stdout), e.g. to replay or to measure."""

    path: Path
    _out: BinaryIO = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if str(self.path) == "-":
            self._out = sys.stdout.buffer
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._out = open(self.path, "wb")  # noqa: SIM115  (closed in close())

    def send(self, keys: list[bytes], values: list[bytes]) -> None:
        self._out.write(b"\n".join(values) + b"\n")

    def close(self, timeout_s: float) -> None:
        self._out.flush()
        if self._out is not sys.stdout.buffer:
            self._out.close()


def warmup_s(settings: Settings) -> float:
    """Simulated seconds an agent beats before its detector may fire (both warm-up settings)."""
    interval = settings.heartbeat_interval_s
    return max(settings.baseline_warmup_s, settings.baseline_warmup_heartbeats * interval)


def backfill_incident_windows(
    count: int, backfill_s: float, warmup_s: float, span_s: float | None = None
) -> list[IncidentWindow]:
    """Where planned incidents go with a backfill: half in history, half live.

    Half (rounded up) fall in the last hour of the history, after the
    detector's warm-up, so they are visible once the backfill is in; the rest
    fall 3–15 minutes after the start, in real time. A window that the run
    (``span_s``) or the warm-up leaves no room for hands its share to the other.

    >>> [tuple(w) for w in backfill_incident_windows(7, 25 * 3600, 24 * 3600)]
    [(4, 86400.0, 90000.0), (3, 90180.0, 90900.0)]
    >>> [tuple(w) for w in backfill_incident_windows(3, 3600, 7200)]  # history not warm
    [(0, 7200.0, 3600.0), (3, 3780.0, 4500.0)]
    """
    history = IncidentWindow(
        (count + 1) // 2,
        float(max(backfill_s - HISTORY_INCIDENTS_WITHIN_S, warmup_s)),
        float(backfill_s),
    )
    live = IncidentWindow(
        count - history.count,
        backfill_s + LIVE_INCIDENTS_FROM_S,
        backfill_s + LIVE_INCIDENTS_UNTIL_S,
    )
    windows = [w._replace(end_s=min(w.end_s, span_s or math.inf)) for w in (history, live)]
    roomy = [w.end_s - w.not_before_s >= 60.0 for w in windows]
    if not any(roomy):
        return []
    if not all(roomy):
        keep = roomy.index(True)
        windows[keep] = windows[keep]._replace(count=count)
        windows[1 - keep] = windows[1 - keep]._replace(count=0)
    return windows


def build_fleet(settings: Settings, options: SimulationOptions) -> FleetSimulator:
    """The fleet with its incidents: the explicit ones plus ``random_incidents`` planned ones.

    Planned incidents start after the detector's warm-up (settings
    ``baseline_warmup_s`` and ``baseline_warmup_heartbeats``) unless
    ``incidents_after_s`` says otherwise; with no end, they fall in the two
    hours after that. With a backfill they go where
    :func:`backfill_incident_windows` puts them.
    """
    interval = settings.heartbeat_interval_s
    options.check_backfill_catches_up(interval)
    if options.real_time:
        start = _now_whole_second() - options.backfill_s
    else:
        start = options.start if options.start is not None else _now_whole_second()
    try:
        fleet = FleetSimulator(
            options.agents,
            seed=options.seed,
            start=start,
            heartbeat_interval_s=interval,
            tenants=options.tenants,
            incidents=options.incidents,
        )
    except ValueError as exc:
        raise SimulationError(str(exc)) from None
    if options.random_incidents and options.real_time and options.incidents_after_s is None:
        warmup = warmup_s(settings)
        if warmup > options.backfill_s:
            log.warning(
                "backfill_shorter_than_warmup backfill_s=%g warmup_s=%g: baselines are not warm "
                "when the history ends, so early incidents may go unseen",
                options.backfill_s,
                warmup,
            )
        windows = backfill_incident_windows(
            options.random_incidents,
            options.backfill_s,
            warmup,
            options.simulated_span_s(interval),
        )
        if not windows:
            log.warning("no_room_for_incidents: the run is too short; no incidents planned")
        for incident in plan_incidents_in_windows(fleet.agent_ids, windows, seed=options.seed + 1):
            fleet.add_incident(incident)
    elif options.random_incidents:
        warmup = warmup_s(settings)
        not_before = options.incidents_after_s if options.incidents_after_s is not None else warmup
        span = options.simulated_span_s(interval) or not_before + 7200.0
        if not_before + 600.0 > span:
            log.warning(
                "incidents_before_warmup after_s=%g span_s=%g: the run is shorter than the "
                "detector's warm-up, so planned incidents start at a quarter of the run",
                not_before,
                span,
            )
            not_before = span / 4
        for incident in plan_incidents(
            fleet.agent_ids,
            options.random_incidents,
            span,
            seed=options.seed + 1,
            not_before_s=not_before,
        ):
            fleet.add_incident(incident)
    return fleet


def run_simulation(
    settings: Settings,
    options: SimulationOptions,
    *,
    show_progress: bool = True,
    stop: threading.Event | None = None,
    sink: HeartbeatSink | None = None,
) -> SimulationResult:
    """Generate and send heartbeats until the count, the duration, or ``stop``.

    Writes the ground truth first (the incidents are planned up front), so a
    reader can use it while the run is still going.
    """
    stop = stop or threading.Event()
    interval = settings.heartbeat_interval_s
    fleet = build_fleet(settings, options)
    if options.ground_truth is not None:
        written = write_ground_truth(options.ground_truth, fleet)
        log.info("ground_truth_written path=%s incidents=%d", options.ground_truth, written)
    world = None
    if options.tasks is not None:
        world = TaskWorld(
            options.agents,
            seed=options.seed,
            agent_ids=fleet.agent_ids,
            tenant_ids=fleet.tenant_ids,
        )
        fleet.attach_tasks(world, options.tasks.utilisation(world))
    if options.register_api_url is not None and options.output is None:
        register_fleet(settings, fleet, options.register_api_url, stop, show_progress, world=world)
    task_stream = _TaskStream(settings, options, world, fleet, stop) if world else None
    if task_stream is not None and not options.real_time:
        task_stream.start()  # heartbeats are not in real time: tasks run on the wall clock
    if sink is None:
        sink = _open_sink(settings, options)
    pace = options.heartbeats_per_s(interval)
    span = options.simulated_span_s(interval)
    expected = options.count
    if span is not None:
        beats = math.ceil(span / interval) * options.agents
        expected = min(expected or beats, beats)
    log.info(
        "simulate_started agents=%d seed=%d start=%s pace=%s span_s=%s incidents=%d destination=%s",
        options.agents,
        options.seed,
        iso_ms(fleet.start_epoch_s),
        f"{pace:g}/s" if pace else "max",
        f"{span:g}" if span else "endless",
        len(fleet.incidents),
        options.output or settings.topic("metrics"),
    )
    chunks = _chunks(fleet, options, pace)
    sent = 0
    started = time.monotonic()
    backfill_elapsed_s: float | None = None
    origin, paced_rows = started, 0  # pacing: row n is due at origin + n / pace
    try:
        with _Progress(expected, fleet.start_epoch_s, enabled=show_progress) as progress:
            for keys, values, event_time in chunks:
                if pace is not None:
                    behind = time.monotonic() - (origin + paced_rows / pace)
                    if behind > MAX_PACE_DEBT_S:  # cannot keep up: do not burst later
                        origin, paced_rows = time.monotonic(), 0
                    elif behind < 0:
                        stop.wait(-behind)
                early = event_time - time.time()
                if options.real_time and early > 0:  # live: each heartbeat at its own time
                    if backfill_elapsed_s is None:
                        backfill_elapsed_s = time.monotonic() - started
                        _log_backfill_done(sent, backfill_elapsed_s, event_time)
                        if task_stream is not None:
                            task_stream.start()  # live now: tasks too
                    stop.wait(early)
                if stop.is_set():
                    break
                sink.send(keys, values)
                sent += len(values)
                paced_rows += len(values)
                progress.update(sent, event_time)
    finally:
        if task_stream is not None:
            task_stream.stop()
        sink.close(timeout_s=10.0)
    simulated = min(fleet.now_s, options.duration_s or math.inf)
    elapsed = time.monotonic() - started
    result = SimulationResult(
        sent=sent,
        elapsed_s=elapsed,
        simulated_s=simulated,
        incidents=len(fleet.incidents),
        delivery_errors=getattr(sink, "delivery_errors", 0),
        first_error=getattr(sink, "first_error", None),
        backfill_elapsed_s=backfill_elapsed_s,
        tasks=task_stream.runner.stats if task_stream and task_stream.runner else None,
    )
    log.info(
        "simulate_done sent=%d elapsed_s=%.2f rate=%.0f simulated_s=%.0f delivery_errors=%d",
        result.sent,
        result.elapsed_s,
        result.rate,
        result.simulated_s,
        result.delivery_errors,
    )
    return result


#: Registrations in flight at once (the API answers each in milliseconds).
REGISTER_CONCURRENCY = 8
#: How long the simulator waits for the API (and its admin key) before registering.
REGISTER_WAIT_S = 60.0


def register_fleet(
    settings: Settings,
    fleet: FleetSimulator,
    api_url: str,
    stop: threading.Event,
    show_progress: bool = True,
    wait_s: float = REGISTER_WAIT_S,
    world: TaskWorld | None = None,
) -> int:
    """Register every agent of ``fleet`` through ``POST /api/v1/agents/register`` (with
    the stack's admin key: AGENTWATCH_API_KEY, else ``<var_dir>/run/admin.key``), each
    under its own id in its own tenant; an agent registered already (409, a restart) is
    left as it is. Waits up to ``wait_s`` for the API and its key. Returns how many were
    registered now. With a task ``world``, each agent registers as the world describes
    it (agent type, capabilities, max_concurrent_tasks, resources with cost_per_hour)."""
    import httpx

    from api.client import AgentClient, AgentClientError

    http = httpx.Client(timeout=10.0, limits=httpx.Limits(max_connections=REGISTER_CONCURRENCY))
    try:
        key = _wait_for_api_key(settings, http, api_url, stop, wait_s)

        def register(agent_id: str) -> bool:
            registration = {
                "name": agent_id, "agent_type": "simulated", "owner": "simulator",
                "version": "1", "capabilities": ["heartbeat"],
            }  # fmt: skip
            if world is not None:
                registration = world.agents[world.index[agent_id]].registration()
            try:
                AgentClient.register(
                    api_url, key, registration, fleet.tenant_of(agent_id), agent_id=agent_id,
                    http=http,
                )  # fmt: skip
            except AgentClientError as exc:
                if exc.status == 409:
                    return False  # registered by an earlier run
                raise SimulationError(f"registering {agent_id} failed: {exc}") from None
            return True

        made = done = 0
        started = time.monotonic()
        total = len(fleet.agent_ids)
        log.info("fleet_registering agents=%d api=%s", total, api_url)
        with (
            _Counter(total, "register", enabled=show_progress) as progress,
            ThreadPoolExecutor(REGISTER_CONCURRENCY) as pool,
        ):
            for fresh in pool.map(register, fleet.agent_ids):
                made += fresh
                done += 1
                progress.update(done)
                if not show_progress and done % max(1, total // 10) == 0:
                    log.info("fleet_registering done=%d of=%d", done, total)
                if stop.is_set():
                    break
        log.info(
            "fleet_registered agents=%d new=%d seconds=%.2f api=%s",
            done, made, time.monotonic() - started, api_url,
        )  # fmt: skip
        return made
    finally:
        http.close()


class _TaskStream:
    """The task stream of a run: started when heartbeats go live, stopped with the run."""

    def __init__(
        self,
        settings: Settings,
        options: SimulationOptions,
        world: TaskWorld,
        fleet: FleetSimulator,
        stop: threading.Event,
    ) -> None:
        self.settings, self.options, self.world, self.fleet = settings, options, world, fleet
        self.runner: TaskRunner | None = None
        self._outer_stop = stop
        self._stop = threading.Event()
        self._closers: list = []

    def start(self) -> None:
        import httpx

        from infra.tasks import KafkaOutcomeSink, http_assigner, kafka_commands

        settings, url = self.settings, self.options.register_api_url
        http = httpx.Client(timeout=10.0, limits=httpx.Limits(max_connections=REGISTER_CONCURRENCY))
        self._closers.append(http.close)
        key = _wait_for_api_key(settings, http, url, self._outer_stop, REGISTER_WAIT_S)
        outcomes = KafkaOutcomeSink(settings)
        self._closers.insert(0, outcomes.close)
        commands = None
        if self.options.tasks.start_on == "command":
            commands = lambda stop, ready: kafka_commands(settings, stop, ready)  # noqa: E731
        self.runner = TaskRunner(
            self.world,
            self.options.tasks,
            http_assigner(url, key, http),
            outcomes,
            commands=commands,
        )
        self.fleet.live_active_tasks = self.runner.running
        self.runner.start(self._stop)

    def stop(self) -> None:
        self._stop.set()
        if self.runner is not None:
            self.runner.join()
        for close in self._closers:
            close()


def _wait_for_api_key(
    settings: Settings, http: object, api_url: str, stop: threading.Event, wait_s: float
) -> str:
    """The key to register with, once the API answers with it (the API writes the stack's
    admin key file when it starts, so both may come a little after the simulator)."""
    from infra.cli import api_headers

    deadline = time.monotonic() + wait_s
    last = "no answer"
    while time.monotonic() < deadline and not stop.is_set():
        headers = api_headers(settings)
        if headers:
            try:
                answer = http.get(f"{api_url}/api/v1/system/health", headers=headers)
                if answer.status_code < 500 and answer.status_code != 401:
                    return headers["Authorization"].removeprefix("Bearer ")
                last = f"{answer.status_code} {answer.text[:200]}"
            except Exception as exc:  # httpx.HTTPError: not up yet
                last = str(exc)
        else:
            last = "no API key (AGENTWATCH_API_KEY or the stack's admin key file)"
        stop.wait(0.3)
    raise SimulationError(
        f"cannot register the fleet: the API at {api_url} did not answer within {wait_s:g} s "
        f"({last}); start it (`agentwatch up`), or let the dataflow register agents from their "
        "heartbeats (AGENTWATCH_AGENTS_AUTO_REGISTER=true)"
    )


class _Counter:
    """A rich progress bar on stderr for a counted chore (off when quiet)."""

    def __init__(self, total: int, what: str, *, enabled: bool) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self._progress = Progress(
            f"[bold]{what}[/]", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=Console(stderr=True),
        )  # fmt: skip
        self._task = self._progress.add_task(what, total=total)

    def __enter__(self) -> _Counter:
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._progress.stop()

    def update(self, done: int) -> None:
        if self.enabled:
            self._progress.update(self._task, completed=done)


def _chunks(
    fleet: FleetSimulator, options: SimulationOptions, pace: float | None
) -> Iterator[tuple[list[bytes], list[bytes], float]]:
    """Kafka keys, JSON values and the newest event time (epoch seconds) of each chunk to send.

    A chunk holds about 1/20 s of heartbeats at the pace: big while history
    goes out, small once heartbeats are sent at their own time, so none waits
    long for the rest of its chunk.
    """
    interval = fleet.heartbeat_interval_s
    history_rows = CHUNK_ROWS if pace is None else max(1, min(CHUNK_ROWS, int(pace / 20)))
    live_rows = max(1, min(CHUNK_ROWS, int(options.agents / interval / 20)))
    for batch in fleet.batches(max_heartbeats=options.count, until_s=options.duration_s):
        event_times = fleet.start_epoch_s + batch.time_s
        live = options.real_time and float(event_times.max()) > time.time()
        rows = live_rows if live else history_rows
        for lo, (keys, values) in zip(
            range(0, len(batch), rows), batch.serialized_chunks(rows), strict=True
        ):
            yield keys, values, float(event_times[lo : lo + rows].max())


def _log_backfill_done(sent: int, elapsed_s: float, event_time: float) -> None:
    log.info(
        "backfill_done sent=%d elapsed_s=%.1f rate=%.0f live_from=%s: heartbeats now go out "
        "at their own timestamps",
        sent,
        elapsed_s,
        sent / elapsed_s if elapsed_s > 0 else 0.0,
        iso_ms(event_time),
    )


def _open_sink(settings: Settings, options: SimulationOptions) -> HeartbeatSink:
    if options.output is not None:
        return FileHeartbeatSink(options.output)
    sink = KafkaHeartbeatSink(
        settings.bootstrap_servers, settings.topic("metrics"), settings.kafka_config()
    )
    if not sink.check_topic():
        from infra.broker import ensure_topics

        created = ensure_topics(settings)
        log.info("topics_created topics=%s", ",".join(created))
    return sink


def parse_start(text: str) -> float:
    """Epoch seconds of ``now``, ``now-26h`` (26 hours ago) or ISO-8601 text with a zone.

    >>> parse_start("2026-01-01T00:00:00Z")
    1767225600.0
    >>> parse_start("now-2h") < parse_start("now-1h") < parse_start("now")
    True
    """
    text = text.strip()
    if text == "now":
        return _now_whole_second()
    if text.startswith("now-"):
        return _now_whole_second() - parse_duration_s(text[4:])
    try:
        return to_epoch_s(text)
    except ValueError as exc:
        raise SimulationError(
            f"--start {text!r}: {exc}; write e.g. 2026-01-01T00:00:00Z, now or now-26h"
        ) from None


def _now_whole_second() -> float:
    return float(int(datetime.now(UTC).timestamp()))


class _Progress:
    """A rich progress line on stderr: sent, recent rate, simulated time (off when quiet)."""

    def __init__(self, total: int | None, start_epoch_s: float, *, enabled: bool) -> None:
        self.enabled = enabled
        self.total = total
        self._window: deque[tuple[float, int]] = deque(maxlen=50)
        self._last_refresh = 0.0
        self._last: tuple[int, float] | None = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        columns: list[object] = [SpinnerColumn(), TextColumn("[bold]simulate[/]")]
        if total:
            columns += [BarColumn(), TextColumn("{task.percentage:>5.1f}%")]
        columns += [
            TextColumn("sent [cyan]{task.completed:,.0f}[/]"),
            TextColumn("[green]{task.fields[rate]}[/]"),
            TextColumn("event time {task.fields[event_time]}"),
            TimeElapsedColumn(),
        ]
        self._progress = Progress(*columns, console=Console(stderr=True), transient=False)
        self._task = self._progress.add_task(
            "simulate", total=total, rate="…", event_time=iso_ms(start_epoch_s)[:19]
        )

    def __enter__(self) -> _Progress:
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            if self._last is not None:
                self.update(*self._last, force=True)  # the final count, not the last throttled one
            self._progress.stop()

    def update(self, sent: int, event_time_epoch_s: float, *, force: bool = False) -> None:
        if not self.enabled:
            return
        self._last = (sent, event_time_epoch_s)
        now = time.monotonic()
        if now - self._last_refresh < 0.1 and not force:
            return
        self._last_refresh = now
        self._window.append((now, sent))
        then, sent_then = self._window[0]
        rate = (sent - sent_then) / (now - then) if now > then else 0.0
        self._progress.update(
            self._task,
            completed=sent,
            rate=f"{rate:,.0f} hb/s",
            event_time=iso_ms(event_time_epoch_s)[:19],
        )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m infra.simulate [OPTIONS]`` = ``agentwatch simulate [OPTIONS]``."""
    from infra.cli import app

    args = list(sys.argv[1:] if argv is None else argv)
    app(args=["simulate", *args], prog_name="python -m infra.simulate")


if __name__ == "__main__":
    main()
