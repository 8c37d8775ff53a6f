"""Start, watch, restart and stop the processes of the embedded stack.

Every child runs in its own session (``start_new_session=True``), so Ctrl-C
at the terminal reaches only the supervisor, which then stops the children
in order, and a child's own children can be ended with it by signalling its
process group. On Linux a child also gets SIGTERM if the supervisor dies.

A child that dies unexpectedly is restarted after a backoff (1 s, 2 s, 4 s, …
up to 30 s; back to 1 s once it has run a minute). What runs is written to a
small JSON state file that ``agentwatch status`` and ``agentwatch down`` read.

>>> import sys, tempfile
>>> supervisor = Supervisor(Path(tempfile.mkdtemp()) / "state.json")
>>> child = supervisor.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
>>> child.running
True
>>> supervisor.stop_all(grace_s=5)
>>> child.running, supervisor.state_path.exists()
(False, False)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from infra.broker import die_with_parent_hook

log = logging.getLogger("agentwatch.supervisor")

#: ``always``: restart whenever it exits; ``on-failure``: only after a non-zero
#: exit; ``never``: report the exit and leave it (the caller decides).
RestartPolicy = Literal["always", "on-failure", "never"]


_PRE_EXEC = die_with_parent_hook()


@dataclass
class Child:
    """One supervised process and its history."""

    name: str
    command: list[str]
    env: dict[str, str] | None = None
    log_path: Path | None = None
    restart: RestartPolicy = "always"
    stop_last: bool = False  # stopped after all the others (the broker)
    process: subprocess.Popen | None = None
    started_at: float = 0.0  # epoch seconds of the current start
    restarts: int = 0
    failures_in_a_row: int = 0
    restart_at: float | None = None  # monotonic time of a pending restart
    exit_code: int | None = None
    _started_monotonic: float = field(default=0.0, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        """True while the child or anything left in its process group still runs."""
        if self.process is None:
            return False
        return self.process.poll() is None or bool(group_members(self.process.pid))

    def state(self) -> dict[str, object]:
        """What the state file records about this child."""
        return {
            "pid": self.pid,
            "command": self.command,
            "started_at": _iso(self.started_at),
            "log": str(self.log_path) if self.log_path else None,
            "restarts": self.restarts,
            "restart_policy": self.restart,
        }


@dataclass(frozen=True)
class ChildExit:
    """A child exited on its own (not because :meth:`Supervisor.stop_all` asked)."""

    name: str
    pid: int
    code: int | None
    restart_in_s: float | None  # None: it will not be restarted


class Supervisor:
    """Starts children, restarts the ones that die, stops them all, records what runs.

    Call :meth:`poll` regularly (e.g. every 0.2 s): it notices exits and
    performs due restarts without blocking.
    """

    def __init__(
        self,
        state_path: Path | None = None,
        *,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        stable_after_s: float = 60.0,
    ) -> None:
        self.state_path = state_path
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stable_after_s = stable_after_s
        self.children: dict[str, Child] = {}
        self.extra_state: dict[str, object] = {}  # e.g. the broker's cluster id
        self.started_at = time.time()
        self._stopping = False

    # --- starting ------------------------------------------------------------------
    def start(
        self,
        name: str,
        command: list[str],
        *,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        restart: RestartPolicy = "always",
    ) -> Child:
        """Start ``command`` as child ``name`` in its own session, output to ``log_path``."""
        if name in self.children and self.children[name].running:
            raise RuntimeError(f"child {name!r} is already running (pid {self.children[name].pid})")
        child = Child(name, list(command), env, log_path, restart)
        self.children[name] = child
        self._spawn(child)
        return child

    def adopt(
        self,
        name: str,
        process: subprocess.Popen,
        command: list[str],
        *,
        log_path: Path | None = None,
    ) -> Child:
        """Watch a process started elsewhere (the broker): never restarted, stopped last."""
        child = Child(name, list(command), None, log_path, "never", stop_last=True)
        child.process = process
        child.started_at = time.time()
        child._started_monotonic = time.monotonic()
        self.children[name] = child
        log.info("child_adopted name=%s pid=%d", name, process.pid)
        self.write_state()
        return child

    def _spawn(self, child: Child) -> None:
        if child.log_path is not None:
            child.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(child.log_path, "ab") as out:
                out.write(f"--- {_iso(time.time())} starting: {' '.join(child.command)}\n".encode())
            out = open(child.log_path, "ab")  # noqa: SIM115  (the child keeps its own copy)
        else:
            out = subprocess.DEVNULL
        try:
            child.process = subprocess.Popen(
                child.command,
                env=child.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_PRE_EXEC,  # noqa: PLW1509  (only prctl, no locks)
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        child.started_at = time.time()
        child._started_monotonic = time.monotonic()
        child.restart_at = None
        child.exit_code = None
        log.info(
            "child_started name=%s pid=%d log=%s", child.name, child.process.pid, child.log_path
        )
        self.write_state()

    # --- watching ------------------------------------------------------------------
    def poll(self) -> list[ChildExit]:
        """Notice children that exited; restart the ones whose backoff is over."""
        exits: list[ChildExit] = []
        if self._stopping:
            return exits
        now = time.monotonic()
        for child in self.children.values():
            process = child.process
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    self._spawn(child)
                    log.info(
                        "child_restarted name=%s pid=%d restarts=%d",
                        child.name,
                        child.process.pid,
                        child.restarts,
                    )
                continue
            if process is None or child.exit_code is not None or process.poll() is None:
                continue
            child.exit_code = process.returncode
            _signal_group(process.pid, signal.SIGKILL)  # leftovers of the dead child
            exits.append(self._handle_exit(child, now))
        return exits

    def _handle_exit(self, child: Child, now: float) -> ChildExit:
        code = child.exit_code
        if now - child._started_monotonic >= self.stable_after_s:
            child.failures_in_a_row = 0
        child.failures_in_a_row += 1
        wanted = child.restart == "always" or (child.restart == "on-failure" and code != 0)
        delay = None
        if wanted:
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** (child.failures_in_a_row - 1))
            child.restart_at = now + delay
        level = logging.INFO if code == 0 and not wanted else logging.WARNING
        log.log(
            level,
            "child_exited name=%s pid=%d code=%s uptime_s=%.1f restart_in_s=%s log=%s last_line=%r",
            child.name,
            child.process.pid,
            code,
            now - child._started_monotonic,
            f"{delay:g}" if delay is not None else "never",
            child.log_path,
            _last_line(child.log_path),
        )
        return ChildExit(child.name, child.process.pid, code, delay)

    # --- stopping ------------------------------------------------------------------
    def stop_all(self, grace_s: float = 5.0, last_grace_s: float = 2.0) -> None:
        """Stop every child: SIGTERM to its process group, SIGKILL after the grace period.

        Ordinary children stop together (within ``grace_s``), then the ones
        marked ``stop_last`` (within ``last_grace_s``). Removes the state file.
        """
        self._stopping = True
        children = list(self.children.values())
        for child in children:
            child.restart_at = None
        self._stop_group([c for c in children if not c.stop_last], grace_s)
        self._stop_group([c for c in children if c.stop_last], last_grace_s)
        if self.state_path is not None:
            self.state_path.unlink(missing_ok=True)

    def _stop_group(self, children: list[Child], grace_s: float) -> None:
        children = [c for c in children if c.running]
        if not children:
            return
        for child in children:
            log.info("child_stopping name=%s pid=%d", child.name, child.pid)
            _signal_group(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(c.running for c in children):
            time.sleep(0.05)
        for child in children:
            if child.running:
                log.warning(
                    "child_killed name=%s pid=%d after_s=%g", child.name, child.pid, grace_s
                )
                _signal_group(child.pid, signal.SIGKILL)
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=2.0)
            child.exit_code = child.process.returncode
            # A killed grandchild is not ours to wait for: it ends a moment after the
            # signal, so look until its group is empty (or a second has passed).
            gone_by = time.monotonic() + 1.0
            while group_members(child.pid) and time.monotonic() < gone_by:
                time.sleep(0.01)
            log.info("child_stopped name=%s pid=%d code=%s", child.name, child.pid, child.exit_code)

    # --- the state file ------------------------------------------------------------
    def state(self) -> dict[str, object]:
        """What runs, as the state file records it."""
        return {
            "supervisor": {"pid": os.getpid(), "started_at": _iso(self.started_at)},
            **self.extra_state,
            "processes": {name: child.state() for name, child in self.children.items()},
        }

    def write_state(self) -> None:
        """Write the state file atomically (no reader ever sees half a file)."""
        if self.state_path is None or self._stopping:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.state_path.with_suffix(".tmp")
        partial.write_text(json.dumps(self.state(), indent=2) + "\n")
        partial.replace(self.state_path)


def read_state(state_path: Path) -> dict | None:
    """The state file's content, or None when there is none (or it is unreadable)."""
    try:
        return json.loads(state_path.read_text())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int | None) -> bool:
    """True when a (non-zombie) process with this pid exists."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _proc_state(pid) not in ("Z", None) if _HAS_PROC else True


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    if not _HAS_PROC:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(entry.name)
        if stat is not None and stat[2] == str(pgid) and stat[0] != "Z":
            members.append(int(entry.name))
    return members


def stop_process_groups(pgids: list[int], grace_s: float) -> list[int]:
    """SIGTERM the groups, SIGKILL what is left after ``grace_s``; return the groups killed."""
    for pgid in pgids:
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(group_members(p) for p in pgids):
        time.sleep(0.05)
    killed = [p for p in pgids if group_members(p)]
    for pgid in killed:
        _signal_group(pgid, signal.SIGKILL)
    return killed


_HAS_PROC = Path("/proc/self/stat").exists()


#: The state of a listening TCP socket in /proc/net/tcp (TCP_LISTEN).
_TCP_LISTEN = "0A"


def listens_on(pgid: int, port: int) -> bool | None:
    """Whether a process of group ``pgid`` holds the socket listening on TCP ``port``
    (None where /proc cannot tell). Read from /proc: the listening sockets' inodes in
    /proc/net/tcp and tcp6, and the sockets each process of the group has open.

    >>> import socket
    >>> server = socket.create_server(("127.0.0.1", 0))
    >>> port = server.getsockname()[1]
    >>> listens_on(os.getpgrp(), port), listens_on(os.getpgrp(), port + 1 if port < 65535 else 1)
    (True, False)
    >>> server.close()
    """
    if not _HAS_PROC:
        return None
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()  # sl local_address rem_address st ... uid timeout inode
            listening = len(fields) > 9 and fields[3] == _TCP_LISTEN
            if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return False
    for pid in group_members(pgid):
        try:
            descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for descriptor in descriptors:
            with contextlib.suppress(OSError):
                if os.readlink(descriptor) in inodes:
                    return True
    return False


def _proc_stat(pid: str) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, …"""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _proc_state(pid: int) -> str | None:
    stat = _proc_stat(str(pid))
    return stat[0] if stat else None


def _signal_group(pgid: int | None, sig: signal.Signals) -> None:
    if pgid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def _last_line(path: Path | None, max_bytes: int = 4096) -> str:
    """The last non-empty line of a log file (to say why a child died)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
