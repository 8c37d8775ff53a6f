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
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from agentwatch.settings import Settings
from agentwatch.simulator import INCIDENT_KINDS

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


# --- shared helpers --------------------------------------------------------------------


class KeyValueFormatter(logging.Formatter):
    """``ts=… level=… logger=… msg="…"``: one event per line, the same shape as the API's logs."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        millis = int(record.created * 1000) % 1000
        message = record.getMessage().replace("\\", "\\\\").replace('"', '\\"')
        line = (
            f"ts={stamp}.{millis:03d}Z level={record.levelname.lower()} "
            f'logger={record.name} msg="{message}"'
        )
        if record.exc_info:
            line += ' exc="' + self.formatException(record.exc_info).replace("\n", "\\n") + '"'
        return line


@contextlib.contextmanager
def structured_logging(log_file: Path | None = None) -> Iterator[None]:
    """Structured logs to stderr and, if given, to ``log_file`` (the file gets tracebacks).

    Adds its handlers to the root logger for the ``with`` block only, so the
    commands also behave when called in-process (tests).
    """
    terminal = logging.StreamHandler(sys.stderr)
    terminal.addFilter(lambda record: not record.exc_info)  # tracebacks go to the file only
    handlers: list[logging.Handler] = [terminal]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
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


def api_base_url(settings: Settings) -> str:
    return f"http://{settings.api_host}:{settings.api_port}"


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

      [dim]# 1M heartbeats to a file (no broker needed)[/]
      agentwatch simulate -a 10000 --count 1000000 --rate 0 -o beats.jsonl
    """
    from agentwatch.simulator import Incident, parse_duration_s
    from infra.simulate import SimulationError, SimulationOptions, parse_start, run_simulation

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
            ground_truth=ground_truth or settings.var_dir / "ground_truth.jsonl",
            output=output,
        )
    except (ValueError, SimulationError) as exc:
        fail(str(exc))
    try:
        with structured_logging(), stop_on_signals() as stop:
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
    if result.delivery_errors:
        fail(
            f"{result.delivery_errors} heartbeats were not delivered ({result.first_error}); "
            "check that the broker runs (`agentwatch status`)"
        )


# --- agentwatch up -----------------------------------------------------------------------


def default_commands() -> dict[str, list[str]]:
    """The processes ``agentwatch up`` runs besides the broker."""
    return {
        "dataflow": [sys.executable, "-m", "dataflows.heartbeats"],
        "api": [sys.executable, "-m", "api"],
    }


@app.command()
def up(
    simulate: Annotated[
        bool, typer.Option("--simulate", help="Also run the fleet simulator.")
    ] = False,
    agents: Annotated[int, typer.Option(help="Simulated agents (with --simulate).")] = 1000,
    rate: Annotated[
        float,
        typer.Option(
            help="Simulated heartbeats per second (with --simulate); 1000 agents at 2000/s "
            "run simulated time 60x faster than the clock."
        ),
    ] = 2000.0,
    incidents: Annotated[
        int, typer.Option(help="Random incidents the simulator injects (with --simulate).")
    ] = 7,
    seed: Annotated[int, typer.Option(help="Seed of the simulated fleet.")] = 0,
    dataflow_command: Annotated[
        str | None, typer.Option(hidden=True, help="Replace the dataflow command (tests).")
    ] = None,
    api_command: Annotated[
        str | None, typer.Option(hidden=True, help="Replace the API command (tests).")
    ] = None,
) -> None:
    """Start the embedded stack on this machine and watch over it until Ctrl-C.

    Starts the Tansu broker (in memory), creates the topics, then runs the
    dataflow and the API (which owns the chDB data in var/clickhouse and runs
    the ClickHouse loader) as child processes, restarting any that crash. Logs:
    var/logs/<process>.log. Ctrl-C (or `agentwatch down`) stops everything.

    [bold]Examples[/]

      [dim]# the stack alone; send your own heartbeats to 127.0.0.1:9092[/]
      agentwatch up

      [dim]# the stack and a simulated fleet of 1,000 agents with 7 incidents[/]
      agentwatch up --simulate

      [dim]# other ports[/]
      AGENTWATCH_BROKER_PORT=19092 AGENTWATCH_API_PORT=18000 agentwatch up
    """
    from infra.broker import BrokerError, port_is_free, tansu_binary

    settings = Settings()
    state_path = state_file(settings)
    _refuse_if_running(state_path)
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
    commands = default_commands()
    for name, override in (("dataflow", dataflow_command), ("api", api_command)):
        if override:
            commands[name] = shlex.split(override)
        elif importlib.util.find_spec(commands[name][2]) is None:
            fail(
                f"the {name} module `{commands[name][2]}` is missing from this installation; "
                "reinstall agentwatch (`make install`)"
            )
    if simulate:
        commands["simulator"] = [
            sys.executable,
            "-m",
            "infra.simulate",
            "--agents",
            str(agents),
            "--rate",
            f"{rate:g}",
            "--incidents",
            str(incidents),
            "--seed",
            str(seed),
            "--ground-truth",
            str(settings.var_dir.resolve() / "ground_truth.jsonl"),
            "--quiet",
        ]
        simulator_note = _simulator_note(settings, agents, rate, incidents)
    else:
        simulator_note = None
    raise typer.Exit(run_stack(settings, commands, simulator_note=simulator_note))


def _simulator_note(settings: Settings, agents: int, rate: float, incidents: int) -> str:
    """What the simulator of `up --simulate` does, and when its incidents come."""
    truth = settings.var_dir.resolve() / "ground_truth.jsonl"
    if rate <= 0:
        return f"{agents:,} agents as fast as possible; ground truth {truth}"
    interval = settings.heartbeat_interval_s
    speedup = rate * interval / agents
    warmup_s = max(settings.baseline_warmup_s, settings.baseline_warmup_heartbeats * interval)
    return (
        f"{agents:,} agents at {rate:,.0f} heartbeats/s, simulated time {speedup:g}x real time\n"
        f"{incidents} incidents after the detector's {warmup_s / 3600:g} h warm-up of simulated "
        f"time (~{warmup_s / speedup / 60:.0f} min from now); ground truth {truth}"
    )


def run_stack(
    settings: Settings,
    commands: dict[str, list[str]],
    *,
    simulator_note: str | None = None,
) -> int:
    """Start the broker and ``commands``, supervise until a signal; return the exit code."""
    logs = logs_dir(settings)
    with structured_logging(logs / "supervisor.log"), stop_on_signals() as stop:
        return _supervise(settings, commands, logs, stop, simulator_note)


def _supervise(
    settings: Settings,
    commands: dict[str, list[str]],
    logs: Path,
    stop: threading.Event,
    simulator_note: str | None,
) -> int:
    """The body of :func:`run_stack`: start in order, watch, stop everything at the end."""
    from infra.broker import BrokerError, ensure_topics, start_broker
    from infra.supervisor import Supervisor

    supervisor = Supervisor(state_file(settings))
    exit_code = 0
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
            "PYTHONUNBUFFERED": "1",
        }
        for name, command in commands.items():
            if stop.is_set():
                break
            supervisor.start(
                name,
                command,
                env=env,
                log_path=logs / f"{name}.log",
                restart="on-failure" if name == "simulator" else "always",
            )
        if not stop.is_set():
            api_ready = _wait_for_api(settings, supervisor, stop, timeout_s=60.0)
            _print_summary(settings, broker.cluster_id, supervisor, api_ready, simulator_note)
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
        console.print(
            f"[bold red]error:[/] {type(exc).__name__}: {exc} "
            f"(details in {logs / 'supervisor.log'})",
            soft_wrap=True,
        )
        exit_code = 1
    finally:
        console.print("stopping …")
        started = time.monotonic()
        supervisor.stop_all(grace_s=settings.shutdown_grace_s, last_grace_s=2.0)
        console.print(f"stopped in {time.monotonic() - started:.1f} s")
    return exit_code


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


def _wait_for_api(
    settings: Settings, supervisor: object, stop: threading.Event, timeout_s: float
) -> bool:
    """Wait until the API answers its health endpoint (restarting crashed children meanwhile)."""
    import httpx

    url = api_base_url(settings) + "/api/v1/system/health"
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


def _print_summary(
    settings: Settings,
    cluster_id: str,
    supervisor: object,
    api_ready: bool,
    simulator_note: str | None,
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
        detail = {"api": f"{api}/docs  ·  health {api}/api/v1/system/health  "}.get(name, "")
        more: list[str] = []
        if name == "simulator" and simulator_note:
            first, *more = simulator_note.splitlines()
            detail = f"{first}  "
        lines.append(f"  {name:<10} {detail}pid {child.pid}")
        lines += [f"  {'':<10} {line}" for line in more]
    lines += [
        f"  logs       {logs_dir(settings)}/<process>.log",
        "  status     agentwatch status",
        "  stop       Ctrl-C here, or `agentwatch down` from another terminal",
    ]
    console.print("\n".join(lines), soft_wrap=True)


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
        response = httpx.get(url, timeout=2.0)
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
