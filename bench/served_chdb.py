"""Latency of the served chDB (``sinks/chdb_http.py``): what a query through it costs the
API in the embedded profile, where ``agentwatch up`` serves the loader's chDB over HTTP.

    .venv/bin/python bench/served_chdb.py
    .venv/bin/python bench/served_chdb.py --requests 500 --out bench/results/served_chdb.json

A server on a free loopback port and a chDB directory of its own, in this process (a thread,
as the loader runs it); a clickhouse-connect client as the API opens it (``served_dsn``).
Each kind of request is sent ``--requests`` times, one after another on a kept-alive
connection; p50 and p99 in ms, and ``create_schema`` (the API's start) whole.

Three layouts, alternated ``--rounds`` times so a quiet or busy minute is shared:

- ``shipped``: as the code is;
- ``nagle``: the handler without ``disable_nagle_algorithm`` (the answer's body then waits
  for the client's delayed ACK of its headers);
- ``unheld``: the engine without the connection it holds open, so each request's
  ``chdb.connect`` opens the database, as it did when nothing else in the process held it.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentwatch.settings import Settings  # noqa: E402
from sinks import chdb_http  # noqa: E402
from sinks.clickhouse import connect, create_schema  # noqa: E402

LAYOUTS = ("shipped", "nagle", "unheld")


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
    }


def timed(call, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def measure(path: Path, layout: str, requests: int) -> dict[str, object]:
    password = secrets.token_urlsafe(24)
    chdb_http._Handler.disable_nagle_algorithm = layout != "nagle"
    server = chdb_http.ChdbHttpServer(path, "127.0.0.1", 0, "agentwatch", password).start()
    if layout == "unheld":
        server.engine._held.close()  # (private: the layout before the engine held one)
    dsn = chdb_http.served_dsn(Settings(clickhouse_serve_password=password), server.port)
    settings = Settings(clickhouse_dsn=dsn, clickhouse_database="bench_served")
    client = connect(settings)
    try:
        started = time.perf_counter()
        create_schema(client, settings)
        schema_s = time.perf_counter() - started
        point = (
            "SELECT * FROM bench_served.metrics WHERE tenant_id = {t:String} "
            "AND agent_id = {a:String} ORDER BY timestamp DESC LIMIT 10"
        )
        kinds = {
            "select_1": lambda: client.query("SELECT 1"),
            "point_query": lambda: client.query(point, parameters={"t": "t1", "a": "agent-1"}),
            "command": lambda: client.command("CREATE DATABASE IF NOT EXISTS bench_served"),
        }
        result: dict[str, object] = {"create_schema_s": round(schema_s, 3)}
        for name, call in kinds.items():
            call()  # (the first of a kind warms the client's and the engine's caches)
            result[name] = percentiles(timed(call, requests))
        return result
    finally:
        client.close()
        server.stop()
        chdb_http._Handler.disable_nagle_algorithm = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/served_chdb.json"))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="agentwatch-served-"))
    runs: dict[str, list[dict[str, object]]] = {layout: [] for layout in LAYOUTS}
    try:
        for round_ in range(args.rounds):
            for layout in LAYOUTS:
                print(f"round {round_ + 1}/{args.rounds}: {layout}", file=sys.stderr, flush=True)
                runs[layout].append(measure(workdir / "chdb", layout, args.requests))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results = {"requests": args.requests, "date": time.strftime("%Y-%m-%d %H:%M"), "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
