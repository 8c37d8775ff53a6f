"""``python -m api``: serve the agentwatch API with uvicorn on ``AGENTWATCH_API_HOST:API_PORT``.

With ``AGENTWATCH_API_RUN_LOADER`` (the default) the process owns ClickHouse (in
the embedded profile the chDB directory, which only one process may open) and runs
the loader; ``agentwatch up`` instead runs the loader as a process of its own that
serves chDB to this one (sinks/chdb_http.py). Logs go to stdout, one event
per line as ``key=value``. SIGTERM and Ctrl-C shut down gracefully: uvicorn
stops taking requests, then the app's lifespan stops the loader, which writes
what it holds before the process exits. A busy port or a chDB directory held
by another process gives a one-line error and exit code 1.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys

import uvicorn

from agentwatch.collector import SurvivorFreezer
from agentwatch.logfmt import KeyValueFormatter
from agentwatch.secrets import redact, redact_handlers
from agentwatch.settings import Settings
from api.access import is_loopback
from api.app import create_app
from sinks.clickhouse import connect


def configure_logging(level: int = logging.INFO, secrets: list[str] | None = None) -> None:
    """Send every logger (uvicorn's too) to stdout through :class:`KeyValueFormatter`,
    with ``secrets`` (``Settings.secret_values()``) replaced by ``***``."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(KeyValueFormatter())
    redact_handlers([handler], secrets or [])
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def log_access_policy(settings: Settings) -> None:
    """Say at start-up who may change things, and warn when the API listens beyond loopback."""
    log = logging.getLogger("api")
    if settings.api_allow_remote_mutations:
        log.warning(
            "api_access changes=from-anywhere: AGENTWATCH_API_ALLOW_REMOTE_MUTATIONS=true and "
            "the API does not authenticate yet; anyone who reaches %s:%d can change rules, "
            "silences and quarantines",
            settings.api_host, settings.api_port,
        )  # fmt: skip
    else:
        reads = "loopback" if is_loopback(settings.api_host) else settings.api_host
        log.info(
            "api_access changes=loopback-only reads=%s: requests that change something are "
            "accepted from this machine only (AGENTWATCH_API_ALLOW_REMOTE_MUTATIONS=true lifts "
            "it)",
            reads,
        )


def main() -> int:
    """Run the API until SIGTERM or Ctrl-C; return the exit code (0 after a requested stop)."""
    # uvicorn handles both signals while it serves, then re-raises them once it has shut
    # down; these handlers take that re-raise (and a signal before serving starts), so a
    # requested stop ends with exit code 0 and no KeyboardInterrupt traceback.
    stop_requests: list[int] = []
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda signum, _frame: stop_requests.append(signum))
    settings = Settings()
    configure_logging(secrets=settings.secret_values())
    host, port = settings.api_host, settings.api_port
    if not port_is_free(host, port):
        print(
            f"agentwatch api: port {host}:{port} is busy; stop what listens there "
            "or set AGENTWATCH_API_PORT",
            file=sys.stderr,
        )
        return 1
    try:  # fail fast, in one line, if the chDB directory is held by another process
        connect(settings).close()
    except Exception as exc:  # the DSN shows as a SecretDsn does; the reason is redacted
        reason = " ".join(redact(str(exc), settings.secret_values()).split())[:200]
        print(
            f"agentwatch api: cannot open ClickHouse at {settings.clickhouse_dsn} ({reason}); "
            "is another agentwatch API using it? stop it, or set AGENTWATCH_CLICKHOUSE_DSN",
            file=sys.stderr,
        )
        return 1
    if stop_requests:
        return 0
    log_access_policy(settings)
    SurvivorFreezer(settings.api_gc_refresh_s).install()  # this process's, not a test's
    app = create_app(settings, run_loader=settings.api_run_loader)
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_config=None, lifespan="on")
    )
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
