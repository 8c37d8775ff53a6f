"""The ``agentwatch`` command: run the embedded stack, simulate a fleet, export schemas.

``agentwatch up`` starts the Tansu broker, creates the topics, and supervises
the dataflow, the API (which owns chDB and runs the loader) and, with
``--simulate``, the fleet simulator. ``agentwatch status`` says what runs,
``agentwatch down`` stops it from another terminal. Settings come from
``AGENTWATCH_*`` environment variables (see ``agentwatch/settings.py``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import secrets
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import SecretStr
from rich.console import Console

from agentwatch.logfmt import KeyValueFormatter
from agentwatch.secrets import redact, redact_handlers
from agentwatch.settings import Settings
from agentwatch.simulator import INCIDENT_KINDS
from infra.simulate import (
    DEFAULT_BACKFILL_RATE,
    HISTORY_INCIDENTS_WITHIN_S,
    SimulationError,
    SimulationOptions,
    warmup_s,
)
from infra.tasks import DEFAULT_TIME_SCALE as DEFAULT_TASK_TIME_SCALE

log = logging.getLogger("agentwatch.cli")

app = typer.Typer(
    name="agentwatch",
    help="Streaming surveillance for fleets of AI agents: Kafka → Bytewax → ClickHouse → API.\n\n"
    "Start everything on this machine with [bold]agentwatch up --simulate[/], "
    "then look at [bold]agentwatch status[/].",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, highlight=False)

#: Exit code of ``agentwatch status`` when agentwatch is not running (LSB convention).
EXIT_NOT_RUNNING = 3
#: The simulated fleet of ``up --simulate`` submits one task per second once live for this
#: many agents: modest, so assignment shows (~14 tasks per agent per hour; 2/s for 500
#: agents) without loading 2 cores, and a small fleet is not swamped.
UP_AGENTS_PER_TASK_PER_S = 250.0


# --- shared helpers --------------------------------------------------------------------


@contextlib.contextmanager
def structured_logging(
    log_file: Path | None = None, secrets: list[str] | None = None
) -> Iterator[None]:
    """Structured logs to stderr and, if given, to ``log_file`` (the file gets tracebacks),
    with ``secrets`` (``Settings.secret_values()``) replaced by ``***``.

    Adds its handlers to the root logger for the ``with`` block only, so the
    commands also behave when called in-process (tests).
    """
    terminal = logging.StreamHandler(sys.stderr)
    terminal.addFilter(lambda record: not record.exc_info)  # tracebacks go to the file only
    handlers: list[logging.Handler] = [terminal]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    redact_handlers(handlers, secrets or [])
    root, httpx_logger = logging.getLogger(), logging.getLogger("httpx")
    levels = root.level, httpx_logger.level
    for handler in handlers:
        handler.setFormatter(KeyValueFormatter())
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    httpx_logger.setLevel(logging.WARNING)  # one line per health poll otherwise
    try:
        yield
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(levels[0])
        httpx_logger.setLevel(levels[1])


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT and SIGTERM set the yielded event instead of raising (no tracebacks at Ctrl-C)."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            console.print("[dim]already stopping …[/]")
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def keep_private(var_dir: Path) -> None:
    """Make what the stack writes readable by this user only: the mode mask of this
    process (and so of every child: logs, the chDB data directory, recovery snapshots)
    becomes 077, and the var directory itself 0700. Its logs may quote what agents
    sent, and its ClickHouse files are every tenant's data, which on disk no API key
    guards."""
    os.umask(0o077)
    var_dir.mkdir(parents=True, exist_ok=True)
    var_dir.chmod(0o700)


def fail(message: str) -> NoReturn:
    """Print a one-line error that says what to do, exit with code 1."""
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(1)


def run_dir(settings: Settings) -> Path:
    """Where ``agentwatch up`` keeps its state file."""
    return settings.var_dir.resolve() / "run"


def logs_dir(settings: Settings) -> Path:
    """Where ``agentwatch up`` writes one log per process."""
    return settings.var_dir.resolve() / "logs"


def state_file(settings: Settings) -> Path:
    """The JSON state file of a running ``agentwatch up``."""
    return run_dir(settings) / "agentwatch.json"


def admin_key_file(settings: Settings) -> Path:
    """Where `agentwatch up` has the API keep the stack's first admin key (mode 0600)."""
    return run_dir(settings) / "admin.key"


def clickhouse_password_file(settings: Settings) -> Path:
    """Where `agentwatch up` keeps the password of the chDB its loader serves (mode 0600)."""
    return run_dir(settings) / "clickhouse.password"


def api_headers(settings: Settings) -> dict[str, str]:
    """The Authorization header the commands send: AGENTWATCH_API_KEY, else the running
    stack's admin key file, else none (an API that requires keys then answers 401).

    The admin key (of every tenant, and it outlives the stack) goes only to the stack's
    own API: while ``agentwatch up`` runs and its API process holds the socket that
    listens on the API's port. Without that check, any user of this machine could listen
    on the port while the stack is down (or while its API restarts) and be handed the key
    by the next `agentwatch sql`.
    """
    if settings.api_key is not None:
        token = settings.api_key.get_secret_value()
    else:
        if not _stack_api_listens(settings):
            return {}
        try:
            token = admin_key_file(settings).read_text().strip()
        except OSError:
            return {}
    return {"Authorization": f"Bearer {token}"} if token else {}


def _stack_api_listens(settings: Settings) -> bool:
    """Whether the running stack's API process listens on the port its URL names."""
    from urllib.parse import urlsplit

    from infra.supervisor import listens_on, pid_alive, read_state

    state = read_state(state_file(settings)) or {}
    if not pid_alive(state.get("supervisor", {}).get("pid")):
        return False
    api_pid = state.get("processes", {}).get("api", {}).get("pid")
    if not pid_alive(api_pid):
        return False
    try:
        port = urlsplit(state.get("api_url") or api_base_url(settings)).port
    except ValueError:
        return False
    listening = listens_on(api_pid, port or 80)
    return listening is not False  # (None: no /proc to ask; the pid is alive)


def api_base_url(settings: Settings) -> str:
    return f"http://{settings.api_host}:{settings.api_port}"


def dataflow_metrics_url(settings: Settings) -> str:
    return f"http://{settings.dataflow_metrics_host}:{settings.dataflow_metrics_port}/metrics"


# --- agentwatch simulate ---------------------------------------------------------------


@app.command(
    epilog="[bold]Incidents[/] (--incidents KIND:AGENT:START[:DURATION[:INTENSITY]], times "
    "in seconds or 90s/10m/2h/1d after the start of simulated time, intensity 1 = just "
    "over the seed's threshold):\n\n"
    + "\n\n".join(
        f"  [bold]{name}[/] ({kind.default_duration_s:g} s): {kind.description}"
        for name, kind in INCIDENT_KINDS.items()
    )
)
def simulate(
    agents: Annotated[int, typer.Option("--agents", "-a", help="Agents in the fleet.")] = 1000,
    rate: Annotated[
        float | None,
        typer.Option(
            help="Heartbeats per wall-clock second; 0 = as fast as possible. "
            "Sets how fast simulated time runs (speedup = rate × 30 s / agents).",
            show_default="real time",
        ),
    ] = None,
    speedup: Annotated[
        float | None,
        typer.Option(
            help="Simulated seconds per wall-clock second (instead of --rate).",
            show_default="1",
        ),
    ] = None,
    duration: Annotated[
        str | None,
        typer.Option(
            help="Simulated time to cover, e.g. 90s, 30m, 2h, 1d (wall time = duration / speedup).",
            show_default="until Ctrl-C",
        ),
    ] = None,
    count: Annotated[
        int | None, typer.Option(help="Stop after this many heartbeats.", show_default="no limit")
    ] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same fleet, same heartbeats.")] = 0,
    tenants: Annotated[
        int | None, typer.Option(help="Tenants the agents belong to.", show_default="agents/250")
    ] = None,
    incidents: Annotated[
        list[str] | None,
        typer.Option(
            "--incidents",
            "-i",
            metavar="N|SPEC",
            help="N random incidents (the kinds take turns), or one incident as "
            "KIND:AGENT:START (see below). Repeatable.",
        ),
    ] = None,
    incidents_after: Annotated[
        str | None,
        typer.Option(
            help="Random incidents start after this much simulated time.",
            show_default="the detector's warm-up",
        ),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            help="Start of simulated time: ISO-8601 with zone (2026-01-01T00:00:00Z), "
            "'now', or 'now-26h' (26 hours ago).",
            show_default="now",
        ),
    ] = None,
    backfill: Annotated[
        str | None,
        typer.Option(
            help="Send this much history first, e.g. 25h (simulated time starts that long "
            "ago), as fast as --backfill-rate allows; then go on in real time: every agent "
            "beats once per heartbeat interval and event time is the wall clock.",
            show_default="no history",
        ),
    ] = None,
    backfill_rate: Annotated[
        float,
        typer.Option(
            help="Heartbeats per second while the history goes out (with --backfill); "
            "0 = as fast as possible."
        ),
    ] = DEFAULT_BACKFILL_RATE,
    ground_truth: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the injected incidents (JSON lines).",
            show_default="<var_dir>/ground_truth.jsonl",
        ),
    ] = None,
    bootstrap_servers: Annotated[
        str | None,
        typer.Option(
            help="Kafka to send to (default: AGENTWATCH_BOOTSTRAP_SERVERS or 127.0.0.1:9092)."
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write JSON lines to this file instead of Kafka ('-' = stdout)."
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress display (for scripts and CI).")
    ] = False,
    register: Annotated[
        bool | None,
        typer.Option(
            "--register/--no-register",
            help="Register every agent through the API (POST /api/v1/agents/register, with "
            "AGENTWATCH_API_KEY or the stack's admin key) before its first heartbeat.",
            show_default="when AGENTWATCH_AGENTS_AUTO_REGISTER is false or with --tasks-per-s",
        ),
    ] = None,
    tasks_per_s: Annotated[
        float,
        typer.Option(
            help="Run a task stream: this many tasks per wall-clock second on average (with "
            "a daily load shape) go to POST /api/v1/tasks/assign; the fleet registers as a "
            "heterogeneous one (agent types with capabilities, capacity, cost) and reports "
            "each task's outcome (task_completed/task_failed). Live only: it starts when the "
            "history reaches the present. 0 = no tasks.",
        ),
    ] = 0.0,
    task_time_scale: Annotated[
        float,
        typer.Option(
            help="Task durations (and deadlines) run this many times faster than the world's: "
            "10 turns a 2-minute task into 12 s on the wall clock (and in duration_s).",
        ),
    ] = DEFAULT_TASK_TIME_SCALE,
    task_start: Annotated[
        str,
        typer.Option(
            help="When an agent starts a task: 'command' (its run_task command on "
            "agents.commands, after its shard accepted the task) or 'assigned' (on the "
            "API's answer, without the dataflow).",
        ),
    ] = "command",
) -> None:
    """Send heartbeats of a simulated fleet to Kafka (topic agents.metrics).

    Each agent has its own load, noise, daily cycle and tenant, and beats every
    30 s of simulated time (AGENTWATCH_HEARTBEAT_INTERVAL_S). Incidents can be
    injected by agent and time; what was injected goes to the ground-truth file.

    [bold]Examples[/]

      [dim]# a live fleet: 1,000 agents in real time (33 heartbeats/s), until Ctrl-C[/]
      agentwatch simulate

      [dim]# one simulated day of 10,000 agents, as fast as the broker takes it[/]
      agentwatch simulate --agents 10000 --duration 1d --rate 0

      [dim]# 2 h at 60x real time: a saturation of agent 42, 3 random incidents[/]
      agentwatch simulate -a 500 --duration 2h --speedup 60 \\
          -i saturation:agent-000042:30m:15m -i 3

      [dim]# 25 h of history in about a minute, then live (what `agentwatch up --simulate` runs)[/]
      agentwatch simulate -a 500 --backfill 25h -i 7

      [dim]# 1M heartbeats to a file (no broker needed)[/]
      agentwatch simulate -a 10000 --count 1000000 --rate 0 -o beats.jsonl

      [dim]# a live heterogeneous fleet with 5 tasks/s assigned through the API[/]
      agentwatch simulate -a 500 --backfill 25h --tasks-per-s 5
    """
    from agentwatch.simulator import Incident, parse_duration_s
    from infra.simulate import parse_start, run_simulation
    from infra.tasks import TaskStreamOptions

    settings = Settings()
    if bootstrap_servers:
        settings = settings.model_copy(update={"bootstrap_servers": bootstrap_servers})
    explicit: list[Incident] = []
    random_count = 0
    try:
        for spec in incidents or []:
            if spec.strip().isdigit():
                random_count += int(spec)
            else:
                explicit.append(Incident.parse(spec))
        options = SimulationOptions(
            agents=agents,
            seed=seed,
            rate=rate,
            speedup=speedup,
            duration_s=parse_duration_s(duration) if duration else None,
            count=count,
            start=parse_start(start) if start else None,
            tenants=tenants,
            incidents=tuple(explicit),
            random_incidents=random_count,
            incidents_after_s=parse_duration_s(incidents_after) if incidents_after else None,
            backfill_s=parse_duration_s(backfill) if backfill else None,
            backfill_rate=backfill_rate,
            ground_truth=ground_truth or settings.var_dir / "ground_truth.jsonl",
            output=output,
            register_api_url=(
                api_base_url(settings)
                if _registers(settings, register, tasks=tasks_per_s > 0)
                else None
            ),
            tasks=(
                TaskStreamOptions(tasks_per_s, task_time_scale, task_start)
                if tasks_per_s > 0
                else None
            ),
        )
    except (ValueError, SimulationError) as exc:
        fail(str(exc))
    try:
        with structured_logging(secrets=settings.secret_values()), stop_on_signals() as stop:
            result = run_simulation(settings, options, show_progress=not quiet, stop=stop)
    except (ValueError, SimulationError) as exc:
        fail(str(exc))
    except BrokenPipeError:  # --output - into `head`
        raise typer.Exit(0) from None
    if not quiet:
        console.print(
            f"sent [bold]{result.sent:,}[/] heartbeats in {result.elapsed_s:.1f} s "
            f"([bold]{result.rate:,.0f}/s[/]), {result.simulated_s / 3600:.2f} h of simulated "
            f"time, {result.incidents} incidents → {options.ground_truth}"
        )
        if result.backfill_elapsed_s is not None:
            console.print(f"history reached the present after {result.backfill_elapsed_s:.1f} s")
        if result.tasks is not None:
            console.print(f"tasks: {result.tasks.line()}")
    if result.delivery_errors:
        fail(
            f"{result.delivery_errors} heartbeats were not delivered ({result.first_error}); "
            "check that the broker runs (`agentwatch status`)"
        )


def _registers(settings: Settings, asked: bool | None, *, tasks: bool = False) -> bool:
    """Whether the simulator registers its fleet: as asked, else with a task stream (the
    API assigns only to agents registered with capabilities), else when the dataflow does not
    register agents from their heartbeats (AGENTWATCH_AGENTS_AUTO_REGISTER=false)."""
    if asked is not None:
        return asked
    return tasks or not getattr(settings, "agents_auto_register", True)


# --- agentwatch up -----------------------------------------------------------------------


def default_commands(loader_process: bool = True) -> dict[str, list[str]]:
    """The processes ``agentwatch up`` runs besides the broker, in the order it starts them
    (the loader, which owns chDB, before the API that reads it through the loader)."""
    commands = {"dataflow": [sys.executable, "-m", "dataflows.heartbeats"]}
    if loader_process:
        commands["loader"] = [sys.executable, "-m", "sinks.loader"]
    commands["api"] = [sys.executable, "-m", "api"]
    return commands


@app.command()
def up(
    simulate: Annotated[
        bool, typer.Option("--simulate", help="Also run the fleet simulator.")
    ] = False,
    agents: Annotated[
        int,
        typer.Option(
            help="Simulated agents (with --simulate); 500 agents × 25 h of history are "
            "1.5M heartbeats, about 75 s at 20,000/s."
        ),
    ] = 500,
    backfill: Annotated[
        str | None,
        typer.Option(
            help="History the simulator sends before it goes live (with --simulate), "
            "e.g. 25h; 0 = start live.",
            show_default="the detector's warm-up + 1h = 25h",
        ),
    ] = None,
    backfill_rate: Annotated[
        float,
        typer.Option(help="Heartbeats per second while the history goes out (with --simulate)."),
    ] = DEFAULT_BACKFILL_RATE,
    incidents: Annotated[
        int, typer.Option(help="Random incidents the simulator injects (with --simulate).")
    ] = 7,
    seed: Annotated[int, typer.Option(help="Seed of the simulated fleet.")] = 0,
    tasks_per_s: Annotated[
        float | None,
        typer.Option(
            help="Tasks per second the simulator submits to POST /api/v1/tasks/assign once "
            "live (with --simulate; the fleet then registers with agent types, capabilities "
            "and capacity, and reports each task's outcome); 0 = no task stream.",
            show_default=f"agents / {UP_AGENTS_PER_TASK_PER_S:g}: 2/s for 500",
        ),
    ] = None,
    dataflow_command: Annotated[
        str | None, typer.Option(hidden=True, help="Replace the dataflow command (tests).")
    ] = None,
    api_command: Annotated[
        str | None, typer.Option(hidden=True, help="Replace the API command (tests).")
    ] = None,
    loader_command: Annotated[
        str | None, typer.Option(hidden=True, help="Replace the loader command (tests).")
    ] = None,
) -> None:
    """Start the embedded stack on this machine and watch over it until Ctrl-C.

    Starts the Tansu broker (in memory), creates the topics, then runs the
    dataflow, the ClickHouse loader (which owns the chDB data in var/clickhouse
    and serves it to the others on loopback) and the API as child processes,
    restarting any that crash. Logs: var/logs/<process>.log. Ctrl-C (or
    `agentwatch down`) stops everything.

    [bold]Examples[/]

      [dim]# the stack alone; send your own heartbeats to 127.0.0.1:9092[/]
      agentwatch up

      [dim]# the stack and a simulated fleet of 500 agents: 25 h of history in ~1.5 min,[/]
      [dim]# then live, with 7 incidents (4 in the last hour of history, 3 in the next minutes)[/]
      agentwatch up --simulate

      [dim]# other ports[/]
      AGENTWATCH_BROKER_PORT=19092 AGENTWATCH_API_PORT=18000 agentwatch up
    """
    from infra.broker import BrokerError, port_is_free, tansu_binary

    settings = Settings()
    if "api_sql_enabled" not in settings.model_fields_set:
        # The demo runs on this machine, its API on loopback by default: `agentwatch sql`
        # works out of the box (the sandbox of docs/sql.md); the summary says so.
        settings = settings.model_copy(update={"api_sql_enabled": True})
    if "agents_auto_register" not in settings.model_fields_set:
        # The demo's simulated fleet is not registered: its heartbeats register it.
        settings = settings.model_copy(update={"agents_auto_register": True})
    state_path = state_file(settings)
    _refuse_if_running(state_path)
    keep_private(settings.var_dir)
    for what, host, port, variable in (
        ("broker", settings.broker_host, settings.broker_port, "AGENTWATCH_BROKER_PORT"),
        ("API", settings.api_host, settings.api_port, "AGENTWATCH_API_PORT"),
    ):
        if not port_is_free(host, port):
            fail(
                f"port {host}:{port} ({what}) is busy; stop what listens there "
                f"or choose another with {variable}=<port>"
            )
    try:
        tansu_binary()
    except BrokerError as exc:
        fail(str(exc))
    commands = default_commands(
        settings.embedded_loader_process
        and settings.clickhouse_dsn.get_secret_value().startswith("chdb://")
    )
    overrides = (("dataflow", dataflow_command), ("loader", loader_command), ("api", api_command))
    for name, override in overrides:
        if name not in commands:
            continue
        if override:
            commands[name] = shlex.split(override)
        elif importlib.util.find_spec(commands[name][2]) is None:
            fail(
                f"the {name} module `{commands[name][2]}` is missing from this installation; "
                "reinstall agentwatch (`make install`)"
            )
    describe_simulator = None
    if simulate:
        options = _simulation_options(settings, agents, backfill, backfill_rate, incidents, seed)
        commands["simulator"] = [
            sys.executable,
            "-m",
            "infra.simulate",
            *("--agents", str(agents), "--seed", str(seed), "--incidents", str(incidents)),
            *("--backfill", f"{options.backfill_s:g}", "--backfill-rate", f"{backfill_rate:g}"),
            *("--ground-truth", str(options.ground_truth), "--quiet"),
        ]
        if tasks_per_s is None:
            tasks_per_s = agents / UP_AGENTS_PER_TASK_PER_S
        if tasks_per_s > 0:
            commands["simulator"] += ["--tasks-per-s", f"{tasks_per_s:g}", "--register"]
        started = time.time()
        describe_simulator = lambda: _simulator_note(  # noqa: E731
            settings, options, started, tasks_per_s
        )
    raise typer.Exit(run_stack(settings, commands, describe_simulator=describe_simulator))


#: Incidents the anomaly detector sees in an agent's metrics (flapping and silence show in
#: status and timing instead), so `up` suggests one of these to look at.
METRIC_INCIDENT_KINDS = ("cpu_spike", "saturation", "error_burst", "memory_leak", "exfiltration")


def _simulation_options(
    settings: Settings,
    agents: int,
    backfill: str | None,
    backfill_rate: float,
    incidents: int,
    seed: int,
) -> SimulationOptions:
    """What `up --simulate` asks of the simulator; a one-line error if it cannot work."""
    from agentwatch.simulator import parse_duration_s

    try:
        backfill_s = (
            parse_duration_s(backfill)
            if backfill
            else warmup_s(settings) + HISTORY_INCIDENTS_WITHIN_S
        )
        options = SimulationOptions(
            agents=agents,
            seed=seed,
            random_incidents=incidents,
            backfill_s=backfill_s,
            backfill_rate=backfill_rate,
            ground_truth=settings.var_dir.resolve() / "ground_truth.jsonl",
        )
        options.check_backfill_catches_up(settings.heartbeat_interval_s)
    except (ValueError, SimulationError) as exc:
        fail(str(exc))
    return options


def _simulator_note(
    settings: Settings, options: SimulationOptions, started: float, tasks_per_s: float = 0.0
) -> str:
    """What the simulator of `up --simulate` does, when its history ends, what to look at."""
    interval, rate = settings.heartbeat_interval_s, options.backfill_rate
    history, warmup = _span(options.backfill_s), _span(warmup_s(settings))
    lines = [
        f"{options.agents:,} agents: {history} of history at up to {rate:,.0f} "
        f"heartbeats/s, then live (each agent every {interval:g} s)"
    ]
    if tasks_per_s > 0:
        lines.append(
            f"tasks: ~{tasks_per_s:g}/s to POST /api/v1/tasks/assign once live (durations "
            f"{DEFAULT_TASK_TIME_SCALE:g}x compressed); outcomes in the simulator log "
            "(task_stream) and GET /api/v1/tasks"
        )
    speedup = rate * interval / options.agents
    if rate > 0:
        ends = started + options.backfill_s / (speedup - 1)
        left = ends - time.time()
        lines.append(
            f"history reaches the present at ~{_clock(ends)} "
            + (f"(in ~{left:.0f} s if this machine keeps up; " if left >= 1 else "(")
            + "the simulator log says when: backfill_done)"
        )
    if warmup_s(settings) > options.backfill_s:
        lines.append(
            f"baselines learn for {warmup} of event time, longer than the history: "
            "anomalies fire only once they are warm"
        )
    else:
        lines.append(f"baselines learn for {warmup} of event time: warm before the present")
    records = _fresh_ground_truth(options.ground_truth, started)
    if not records:
        lines.append(f"{options.random_incidents} incidents; ground truth {options.ground_truth}")
        return "\n".join(lines)
    history = [r for r in records if r["start_s"] < options.backfill_s]
    live = [r for r in records if r["start_s"] >= options.backfill_s]
    lines.append(
        f"{len(records)} incidents: {len(history)} in the last hour of history"
        + (
            f", {len(live)} live from {_clock(min(r['start_epoch'] for r in live))} "
            f"to {_clock(max(r['end_epoch'] for r in live))}"
            if live
            else ""
        )
        + f"; ground truth {options.ground_truth}"
    )
    seen = [r for r in history + live if r["kind"] in METRIC_INCIDENT_KINDS] or records
    shown = seen[0]
    url = f"{api_base_url(settings)}/api/v1/agents/{shown['agent_id']}/anomalies?limit=5"
    lines.append(
        f'look: curl -s -H "Authorization: Bearer $(cat {admin_key_file(settings)})" '
        f"'{url}'  ({shown['kind']} at {_clock(shown['start_epoch'])}"
        + (", in the history)" if shown in history else ")")
    )
    return "\n".join(lines)


def _fresh_ground_truth(path: Path, since: float, wait_s: float = 5.0) -> list[dict]:
    """The incidents the simulator wrote to ``path`` after ``since`` (it writes them first)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if path.stat().st_mtime >= since - 1.0:
                lines = path.read_bytes().splitlines()
                return [json.loads(line) for line in lines if line.strip()]
        time.sleep(0.2)
    return []


def _span(seconds: float) -> str:
    """``25 h``, ``1.5 h``, ``20 min``, ``45 s``."""
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 60:.3g} min" if seconds >= 60 else f"{seconds:.3g} s"


def _clock(epoch_s: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(epoch_s))


def run_stack(
    settings: Settings,
    commands: dict[str, list[str]],
    *,
    describe_simulator: Callable[[], str] | None = None,
) -> int:
    """Start the broker and ``commands``, supervise until a signal; return the exit code.

    ``describe_simulator`` gives the lines about the simulator in the ready summary.
    """
    logs = logs_dir(settings)
    with (
        structured_logging(logs / "supervisor.log", settings.secret_values()),
        stop_on_signals() as stop,
    ):
        return _supervise(settings, commands, logs, stop, describe_simulator)


def _supervise(
    settings: Settings,
    commands: dict[str, list[str]],
    logs: Path,
    stop: threading.Event,
    describe_simulator: Callable[[], str] | None,
) -> int:
    """The body of :func:`run_stack`: start in order, watch, stop everything at the end."""
    from infra.broker import BrokerError, ensure_topics, free_port, start_broker
    from infra.supervisor import Supervisor

    supervisor = Supervisor(state_file(settings))
    exit_code = 0
    if not settings.dataflow_metrics_port:  # (served here; a free port unless one is set)
        settings = settings.model_copy(update={"dataflow_metrics_port": free_port()})
    try:
        broker = start_broker(
            settings.broker_host,
            settings.broker_port,
            log_path=_fresh_log(logs / "broker.log"),
            timeout_s=settings.broker_start_timeout_s,
        )
        supervisor.adopt(
            "broker",
            broker.process,
            [str(a) for a in broker.process.args],
            log_path=logs / "broker.log",
        )
        supervisor.extra_state = {
            "broker": {
                "bootstrap_servers": broker.bootstrap_servers,
                "cluster_id": broker.cluster_id,
            },
            "api_url": api_base_url(settings),
            "dataflow_metrics_url": dataflow_metrics_url(settings),
            "logs": str(logs),
        }
        supervisor.write_state()
        child_settings = settings.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})
        created = ensure_topics(child_settings)
        log.info(
            "topics_ready created=%d bootstrap_servers=%s", len(created), broker.bootstrap_servers
        )
        env = {
            **os.environ,
            "AGENTWATCH_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "AGENTWATCH_DATAFLOW_METRICS_PORT": str(settings.dataflow_metrics_port),
            "AGENTWATCH_API_SQL_ENABLED": "true" if settings.api_sql_enabled else "false",
            "AGENTWATCH_API_ADMIN_KEY_FILE": str(admin_key_file(settings).absolute()),
            "AGENTWATCH_AGENTS_AUTO_REGISTER": "true" if settings.agents_auto_register else "false",
            "PYTHONUNBUFFERED": "1",
        }
        log.info("api_sql enabled=%s", settings.api_sql_enabled)
        envs = {name: env for name in commands}
        if "loader" in commands:
            envs.update(served_chdb_envs(settings, env))
        envs = {name: without_unused_secrets(name, child_env) for name, child_env in envs.items()}
        for name, command in commands.items():
            if stop.is_set():
                break
            supervisor.start(
                name,
                command,
                env=envs[name],
                log_path=logs / f"{name}.log",
                restart="on-failure" if name == "simulator" else "always",
            )
            if name == "loader":
                port = envs["loader"]["AGENTWATCH_CLICKHOUSE_SERVE_PORT"]
                served = f"http://{settings.clickhouse_serve_host}:{port}/ping"  # after the schema
                if not _wait_for_answer(served, supervisor, stop, timeout_s=60.0):
                    if not stop.is_set():
                        console.print(
                            "[bold red]error:[/] the loader did not open ClickHouse within "
                            f"60 s; see {logs / 'loader.log'}"
                        )
                        exit_code = 1
                        stop.set()
                    break
        if not stop.is_set():
            health = api_base_url(settings) + "/api/v1/system/health"
            api_ready = _wait_for_answer(health, supervisor, stop, timeout_s=60.0)
            _print_summary(settings, broker.cluster_id, supervisor, api_ready, describe_simulator)
        while not stop.is_set():
            for exited in supervisor.poll():
                if exited.name == "broker":
                    console.print(
                        f"[bold red]error:[/] the broker exited (code {exited.code}); its log was "
                        f"in memory, so everything stops — see {logs / 'broker.log'}, then run "
                        "`agentwatch up` again"
                    )
                    exit_code = 1
                    stop.set()
            stop.wait(0.2)
    except BrokerError as exc:
        console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        exit_code = 1
    except Exception as exc:  # one line at the terminal, the traceback in the log file
        log.exception("up_failed error=%s", exc)
        error = redact(f"{type(exc).__name__}: {exc}", settings.secret_values())
        console.print(
            f"[bold red]error:[/] {error} (details in {logs / 'supervisor.log'})",
            soft_wrap=True,
        )
        exit_code = 1
    finally:
        console.print("stopping …")
        started = time.monotonic()
        supervisor.stop_all(grace_s=settings.shutdown_grace_s, last_grace_s=2.0)
        clickhouse_password_file(settings).unlink(missing_ok=True)  # it opened nothing now
        console.print(f"stopped in {time.monotonic() - started:.1f} s")
    return exit_code


#: Secret settings a child of the stack never reads: left out of its environment, so a
#: child that crashes, or prints its environment, cannot show them (docs/security.md).
#: The webhooks go to whichever process delivers alerts (the loader, or the API when it
#: runs the loader itself); the Kafka password to every Kafka client.
UNUSED_SECRETS = {
    "dataflow": ("AGENTWATCH_ALERT_WEBHOOKS", "AGENTWATCH_CLICKHOUSE_DSN", "AGENTWATCH_API_KEY"),
    "simulator": ("AGENTWATCH_ALERT_WEBHOOKS", "AGENTWATCH_CLICKHOUSE_DSN"),
    "loader": ("AGENTWATCH_API_KEY",),
    "api": ("AGENTWATCH_API_KEY",),
}


def without_unused_secrets(child: str, env: dict[str, str]) -> dict[str, str]:
    """``env`` without the secrets ``child`` does not use (:data:`UNUSED_SECRETS`); the
    API keeps the webhooks only when it runs the loader itself.

    >>> env = {"AGENTWATCH_ALERT_WEBHOOKS": "[]", "AGENTWATCH_API_KEY": "k", "PATH": "/bin"}
    >>> sorted(without_unused_secrets("dataflow", env)), sorted(without_unused_secrets("x", env))
    (['PATH'], ['AGENTWATCH_ALERT_WEBHOOKS', 'AGENTWATCH_API_KEY', 'PATH'])
    >>> sorted(without_unused_secrets("api", env | {"AGENTWATCH_API_RUN_LOADER": "false"}))
    ['AGENTWATCH_API_RUN_LOADER', 'PATH']
    """
    unused = set(UNUSED_SECRETS.get(child, ()))
    if child == "api" and env.get("AGENTWATCH_API_RUN_LOADER", "").lower() == "false":
        unused.add("AGENTWATCH_ALERT_WEBHOOKS")
    return {name: value for name, value in env.items() if name not in unused}


def served_chdb_envs(settings: Settings, env: dict[str, str]) -> dict[str, dict[str, str]]:
    """The loader's and the API's environments when the loader serves chDB to the API:
    a free port on loopback and a password made for this start (kept in
    :func:`clickhouse_password_file` for Grafana and analysts, mode 0600), and the
    loader's ``/metrics``, which the API reads for its health report."""
    from infra.broker import free_port
    from sinks.chdb_http import served_dsn

    port = settings.clickhouse_serve_port or free_port()
    metrics_port = settings.loader_metrics_port or free_port()
    password = secrets.token_urlsafe(24)
    served = settings.model_copy(update={"clickhouse_serve_password": SecretStr(password)})
    password_file = clickhouse_password_file(settings)
    password_file.parent.mkdir(parents=True, exist_ok=True)
    password_file.unlink(missing_ok=True)
    with open(os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(password + "\n")
    return {
        "loader": {
            **env,
            "AGENTWATCH_CLICKHOUSE_SERVE_PORT": str(port),
            "AGENTWATCH_CLICKHOUSE_SERVE_PASSWORD": password,
            "AGENTWATCH_LOADER_METRICS_PORT": str(metrics_port),
            # beside the API on the same cores: its requests go first (docs/benchmarks.md)
            "AGENTWATCH_LOADER_NICENESS": str(settings.embedded_loader_niceness),
        },
        "api": {
            **env,
            "AGENTWATCH_CLICKHOUSE_DSN": served_dsn(served, port),
            "AGENTWATCH_API_RUN_LOADER": "false",
            # the API's health, console and /metrics report the loader from its /metrics
            "AGENTWATCH_API_LOADER_METRICS_URL": f"http://127.0.0.1:{metrics_port}/metrics",
        },
    }


def _fresh_log(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting the broker\n".encode())
    return path


def _refuse_if_running(state_path: Path) -> None:
    from infra.supervisor import pid_alive, read_state

    state = read_state(state_path)
    if state and pid_alive(state.get("supervisor", {}).get("pid")):
        fail(
            f"agentwatch is already running (supervisor pid {state['supervisor']['pid']}); "
            "stop it with `agentwatch down` or Ctrl-C in its terminal"
        )


def _wait_for_answer(url: str, supervisor: object, stop: threading.Event, timeout_s: float) -> bool:
    """Wait until a child answers ``url`` at all (restarting crashed children meanwhile);
    False when the broker exits, on a stop or after ``timeout_s``."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stop.is_set():
        for exited in supervisor.poll():
            if exited.name == "broker":
                return False
        try:
            httpx.get(url, timeout=1.0)
            return True
        except httpx.HTTPError:
            stop.wait(0.3)
    return False


def _served_chdb_note(settings: Settings, child: object) -> str:
    port = (child.env or {}).get("AGENTWATCH_CLICKHOUSE_SERVE_PORT")
    if not port:
        return ""
    return (
        f"ClickHouse http://{settings.clickhouse_serve_host}:{port}  user "
        f"{settings.clickhouse_serve_user}, password in {clickhouse_password_file(settings)}  "
    )


def _print_summary(
    settings: Settings,
    cluster_id: str,
    supervisor: object,
    api_ready: bool,
    describe_simulator: Callable[[], str] | None,
) -> None:
    children = supervisor.children
    api = api_base_url(settings)
    lines = [
        "[bold green]agentwatch is up[/] (embedded profile)"
        if api_ready
        else f"[bold yellow]agentwatch started, but the API does not answer yet[/] "
        f"(see {logs_dir(settings) / 'api.log'})",
        f"  broker     {settings.broker_host}:{settings.broker_port}  cluster {cluster_id}  "
        f"pid {children['broker'].pid}",
    ]
    for name, child in children.items():
        if name == "broker":
            continue
        detail = {
            "api": f"{api}/docs  ·  health {api}/api/v1/system/health  ",
            "loader": _served_chdb_note(settings, child),
        }.get(name, "")
        more: list[str] = []
        if name == "simulator" and describe_simulator:
            first, *more = describe_simulator().splitlines()
            detail = f"{first}  "
        lines.append(f"  {name:<10} {detail}pid {child.pid}")
        lines += [f"  {'':<10} {line}" for line in more]
    lines.append(
        '  sql        agentwatch sql "SHOW TABLES"  (read-only SQL through the API, on for this '
        "demo; AGENTWATCH_API_SQL_ENABLED=false turns it off)"
        if settings.api_sql_enabled
        else "  sql        off (AGENTWATCH_API_SQL_ENABLED=false); `agentwatch sql` reads the "
        "data once the stack is stopped"
    )
    lines.append(f"  console    {api}/  (the fleet in a browser; docs/console.md)")
    lines.append(
        f"  metrics    {api}/metrics (API, loader)  ·  {dataflow_metrics_url(settings)} "
        "(dataflow)  ·  alerting rules: infra/prometheus/agentwatch-alerts.yml"
    )
    key_file = admin_key_file(settings)
    lines.append(
        f"  key        admin key in {key_file} (mode 0600): send it as "
        f'-H "Authorization: Bearer $(cat {key_file})"; the agentwatch commands read it'
        if settings.api_auth_required
        else "  key        none needed (AGENTWATCH_API_AUTH_REQUIRED=false: requests without a "
        "key act as an admin of every tenant)"
    )
    lines += [
        f"  logs       {logs_dir(settings)}/<process>.log",
        "  status     agentwatch status",
        "  stop       Ctrl-C here, or `agentwatch down` from another terminal",
    ]
    console.print("\n".join(lines), soft_wrap=True)


# --- agentwatch sql --------------------------------------------------------------------

SQL_FORMATS = ("table", "csv", "tsv", "json")


@app.command("sql")
def run_sql(
    query: Annotated[
        str,
        typer.Argument(
            help="One SELECT (WITH, JOIN, subqueries, UNION) on the project's tables, "
            "SHOW TABLES, or DESCRIBE <table>."
        ),
    ],
    output_format: Annotated[
        str,
        typer.Option("--format", "-f", help="table (for people), or csv, tsv, json (for scripts)."),
    ] = "table",
) -> None:
    """Run a read-only SQL query on the ClickHouse data and print the result.

    While the stack runs, the API process owns the chDB data, so the query goes
    to the running stack's API (found like `agentwatch status` finds it, from
    var/run; else AGENTWATCH_API_HOST:AGENTWATCH_API_PORT), POST /api/v1/sql,
    which `agentwatch up` switches on. When no stack runs and no API answers,
    this command opens the data itself (AGENTWATCH_CLICKHOUSE_DSN, default
    var/clickhouse). Either way the same sandbox decides: one read query over
    the project's tables with allowlisted functions (no table functions,
    system.*, SETTINGS, FORMAT or INTO OUTFILE), in a read-only session with
    limits on memory, threads, rows and bytes read, result size and time
    (AGENTWATCH_API_SQL_MAX_*); docs/sql.md has the details. Tables live in
    database agentwatch; it is also the default database.

    [bold]Examples[/]

      agentwatch sql "SHOW TABLES"

      agentwatch sql "SELECT agent_id, count() AS anomalies FROM anomalies FINAL
          WHERE is_anomaly GROUP BY agent_id ORDER BY anomalies DESC LIMIT 10"

      agentwatch sql -f csv "SELECT * FROM metrics WHERE agent_id = 'agent-000001'
          ORDER BY timestamp" > agent-000001.csv
    """
    settings = Settings()
    output_format = output_format.lower()
    if output_format not in SQL_FORMATS:
        fail(f"--format {output_format!r} is not one of {', '.join(SQL_FORMATS)}")
    wire_format = "json" if output_format == "table" else output_format
    started = time.monotonic()
    api_url, stack_pid = _running_api(settings)
    body = _sql_through_api(settings, api_url, stack_pid, query, wire_format)
    source = f"through the API at {api_url}"
    if body is None:
        body = _sql_directly(settings, api_url, query, wire_format)
        source = f"read directly from {settings.clickhouse_dsn} (no API answered)"
    if output_format != "table":
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
        return
    answer = json.loads(body)
    _print_sql_table(answer)
    rows = answer["row_count"]
    console.print(
        f"[dim]{rows:,} row{'s' if rows != 1 else ''} in {time.monotonic() - started:.2f} s, "
        f"{source}[/]"
    )


def _running_api(settings: Settings) -> tuple[str, int | None]:
    """The API of the running stack and its supervisor's pid, as `status` finds them.

    Without a running `agentwatch up`: the address of the settings, and no pid.
    """
    from infra.supervisor import pid_alive, read_state

    state = read_state(state_file(settings))
    pid = (state or {}).get("supervisor", {}).get("pid")
    if state and pid_alive(pid):
        return state.get("api_url") or api_base_url(settings), pid
    return api_base_url(settings), None


def _sql_through_api(
    settings: Settings, api_url: str, stack_pid: int | None, query: str, wire_format: str
) -> bytes | None:
    """The API's answer, None when no API listens; a one-line error when it says no."""
    import httpx

    url = f"{api_url}/api/v1/sql"
    try:
        response = httpx.post(
            url,
            headers=api_headers(settings),
            json={"query": query, "format": wire_format},
            timeout=settings.api_sql_max_execution_time_s + settings.api_sql_request_grace_s + 5,
        )
    except httpx.ConnectError:
        if stack_pid is None:
            return None
        fail(
            f"agentwatch runs (supervisor pid {stack_pid}) but its API at {api_url} does not "
            "answer yet; wait a moment, or see `agentwatch status`"
        )
    except httpx.HTTPError as exc:
        fail(f"the API at {url} did not answer: {type(exc).__name__} {exc}")
    if response.status_code == 200:
        return response.content
    try:
        body = response.json()
        message = body.get("message") or body.get("detail") or response.text
    except ValueError:
        message = response.text
    fail(f"{message} (HTTP {response.status_code})")


def _sql_directly(settings: Settings, api_url: str, query: str, wire_format: str) -> bytes:
    """Open ClickHouse from this process (the stack is stopped): the API's sandbox, here."""
    from api.sql import SqlRefused, SqlSandbox, render

    dsn = settings.clickhouse_dsn  # shown with its password as ***
    path = dsn.get_secret_value().removeprefix("chdb://")
    if dsn.get_secret_value().startswith("chdb://") and not Path(path or ".").is_dir():
        fail(
            f"no API answers at {api_url} and there is no data at {dsn}; start "
            "the stack with `agentwatch up`, or run this where its var/ directory is"
        )
    sandbox = SqlSandbox(settings)
    try:
        return render(sandbox.run(query), wire_format)
    except SqlRefused as refused:
        fail(refused.message)
    except Exception as exc:  # e.g. chDB's directory is held by a starting `agentwatch up`
        fail(
            f"no API answers at {api_url}, and {dsn} cannot be opened here "
            f"({' '.join(redact(str(exc), settings.secret_values()).split())[:200]}); "
            "see `agentwatch status`"
        )
    finally:
        sandbox.close()


def _print_sql_table(answer: dict) -> None:
    """The json answer of a query as a rich table on stdout (column types under the names)."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from api.sql import cell_text

    table = Table(show_header=True, header_style="bold", show_lines=False)
    for column in answer["columns"]:
        table.add_column(
            f"{escape(column['name'])}\n[dim]{escape(column['type'])}[/]", overflow="fold"
        )
    for row in answer["rows"]:
        table.add_row(*(Text(cell_text(value, null="NULL")) for value in row))
    Console(highlight=False).print(table)


# --- agentwatch audit -----------------------------------------------------------------

audit_app = typer.Typer(help="The audit trail: every command and status change, hash-chained.")
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="Only this tenant's chain ('*': fleet).")
    ] = None,
) -> None:
    """Check that no row of the audit trail was edited, inserted or deleted.

    Every tenant's rows form a hash chain (docs/security.md); this walks them and
    prints each broken link, exiting 1 if there is any. While the stack runs it
    asks the running API (GET /api/v1/audit/verify); otherwise it opens the data
    itself (AGENTWATCH_CLICKHOUSE_DSN, default var/clickhouse).

    [bold]Examples[/]

      agentwatch audit verify

      agentwatch audit verify --tenant tenant-1
    """
    import httpx

    settings = Settings()
    api_url, stack_pid = _running_api(settings)
    params = {"tenant": tenant} if tenant is not None else {}
    try:
        response = httpx.get(
            f"{api_url}/api/v1/audit/verify",
            params=params,
            headers=api_headers(settings),
            timeout=60.0,
        )
        if response.status_code != 200:
            fail(f"the API at {api_url} said {response.status_code}: {response.text[:300]}")
        verdict = response.json()
        source = f"through the API at {api_url}"
    except httpx.ConnectError:
        if stack_pid is not None:
            fail(f"agentwatch runs (supervisor pid {stack_pid}) but its API at {api_url} does "
                 "not answer yet; wait a moment, or see `agentwatch status`")  # fmt: skip
        verdict = _verify_directly(settings, tenant)
        source = f"read directly from {settings.clickhouse_dsn}"
    for problem in verdict["problems"]:
        print(problem)
    summary = f"{verdict['rows']} rows in {verdict['tenants']} chains, {source}: " + (
        "every chain is whole" if verdict["ok"] else f"{len(verdict['problems'])} broken"
    )
    print(summary, file=sys.stderr)
    raise typer.Exit(0 if verdict["ok"] else 1)


def _verify_directly(settings: Settings, tenant: str | None) -> dict:
    """The verdict of ``/api/v1/audit/verify``, computed here (no API runs)."""
    from agentwatch.audit import verify
    from sinks.audit import read_rows
    from sinks.clickhouse import connect

    try:
        client = connect(settings)
        rows = read_rows(client, settings.clickhouse_database, tenant)
    except Exception as exc:
        fail(
            f"no API answers and {settings.clickhouse_dsn} cannot be read here "
            f"({' '.join(redact(str(exc), settings.secret_values()).split())[:200]}); "
            "see `agentwatch status`"
        )
    problems = verify(rows)
    return {
        "ok": not problems,
        "rows": len(rows),
        "tenants": len({row.tenant_id for row in rows}),
        "problems": problems,
    }


# --- agentwatch down -------------------------------------------------------------------


@app.command()
def down(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for everything to stop.")] = 15.0,
) -> None:
    """Stop a running `agentwatch up` (the same as Ctrl-C in its terminal).

    If the supervisor itself is gone (killed), stops the processes it left
    behind, from the state file.
    """
    from infra.supervisor import pid_alive, read_state, stop_process_groups

    settings = Settings()
    path = state_file(settings)
    state = read_state(path)
    if not state:
        console.print("agentwatch is not running")
        return
    supervisor_pid = state.get("supervisor", {}).get("pid")
    if pid_alive(supervisor_pid):
        os.kill(supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(supervisor_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(supervisor_pid):
            fail(f"the supervisor (pid {supervisor_pid}) did not stop within {timeout:g} s")
        console.print("agentwatch stopped")
        return
    left = [p["pid"] for p in state.get("processes", {}).values() if pid_alive(p.get("pid"))]
    killed = stop_process_groups(left, grace_s=5.0)
    path.unlink(missing_ok=True)
    clickhouse_password_file(settings).unlink(missing_ok=True)
    console.print(
        f"the supervisor was gone; stopped {len(left)} processes it left behind"
        + (f" ({len(killed)} needed SIGKILL)" if killed else "")
    )


# --- agentwatch status -----------------------------------------------------------------


@app.command()
def status() -> None:
    """Say what runs: each process, the broker, the API's health.

    Exit code 0 when everything is up, 1 when something is down, 3 when
    agentwatch is not running.
    """
    import httpx

    from infra.broker import BrokerError, cluster_id
    from infra.supervisor import pid_alive, read_state

    settings = Settings()
    out = Console(highlight=False, soft_wrap=True)
    state = read_state(state_file(settings))
    if not state or not pid_alive(state.get("supervisor", {}).get("pid")):
        stale = " (its state file is stale: the supervisor is gone)" if state else ""
        out.print(f"agentwatch is not running{stale}; start it with `agentwatch up`")
        raise typer.Exit(EXIT_NOT_RUNNING)
    healthy = True
    supervisor = state["supervisor"]
    out.print(f"agentwatch supervisor pid {supervisor['pid']}, since {supervisor['started_at']}")
    for name, process in state.get("processes", {}).items():
        alive = pid_alive(process.get("pid"))
        healthy &= alive
        mark = "[green]running[/]" if alive else "[red]not running[/]"
        restarts = f", {process['restarts']} restarts" if process.get("restarts") else ""
        out.print(
            f"  {name:<10} pid {process.get('pid')!s:<8} {mark}{restarts}  log {process.get('log')}"
        )
    broker = state.get("broker", {})
    try:
        answer = cluster_id(
            broker.get("bootstrap_servers", settings.bootstrap_servers), timeout_s=2.0
        )
        same = answer == broker.get("cluster_id")
        out.print(
            f"  broker     {broker.get('bootstrap_servers')} [green]answers[/] (cluster {answer}"
            + ("" if same else f", expected {broker.get('cluster_id')}")
            + ")"
        )
        healthy &= same
    except BrokerError:
        out.print(f"  broker     {broker.get('bootstrap_servers')} [red]does not answer[/]")
        healthy = False
    url = f"{state.get('api_url', api_base_url(settings))}/api/v1/system/health"
    try:
        response = httpx.get(url, headers=api_headers(settings), timeout=2.0)
        verdict = ""
        with contextlib.suppress(ValueError, AttributeError):
            verdict = str(response.json().get("status", ""))
        ok = response.status_code == 200
        colour = "green" if ok else "red"
        out.print(f"  API        {url} [{colour}]HTTP {response.status_code}[/] {verdict}")
        healthy &= ok
    except httpx.HTTPError as exc:
        out.print(f"  API        {url} [red]unreachable[/] ({type(exc).__name__})")
        healthy = False
    raise typer.Exit(0 if healthy else 1)


# --- agentwatch schemas ----------------------------------------------------------------


def schema_documents() -> dict[str, str]:
    """File name → JSON Schema text of every exported model (sorted keys, trailing newline)."""
    from schemas.models import EXPORTED

    return {
        f"{name}.schema.json": json.dumps(
            model.model_json_schema(), indent=2, sort_keys=True, ensure_ascii=False
        )
        + "\n"
        for name, model in EXPORTED.items()
    }


def schemas_dir() -> Path:
    """The ``schemas`` package directory, where the committed schema files live."""
    import schemas

    return Path(schemas.__file__).parent


@app.command("schemas")
def export_schemas(
    out: Annotated[
        Path | None,
        typer.Option(help="Directory to write to.", show_default="the schemas/ package"),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 if a file differs (for CI).")
    ] = False,
) -> None:
    """Write a JSON Schema file per message model (schemas/<name>.schema.json).

    These files are the contract users integrate against; run this after
    changing schemas/models.py and commit the result.
    """
    directory = out or schemas_dir()
    stale = []
    for file_name, text in schema_documents().items():
        path = directory / file_name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not check:
            directory.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            console.print(f"wrote {path}")
    if check and stale:
        fail(f"{len(stale)} schema files differ from the models; run `agentwatch schemas`")
    if not stale:
        console.print(f"schemas in {directory} are up to date")


if __name__ == "__main__":
    app()
