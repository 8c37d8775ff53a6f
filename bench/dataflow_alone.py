"""The dataflow alone draining a backlog: its CPU and wall time per run, checkouts alternated.

    .venv/bin/python bench/dataflow_alone.py                       # this checkout, 3 runs
    .venv/bin/python bench/dataflow_alone.py . ../before --rounds 4  # two checkouts, alternated
    .venv/bin/python bench/dataflow_alone.py . ".%AGENTWATCH_SOURCE_BATCH_SIZE=20000"

In ``bench/throughput.py`` the dataflow's one thread is the end-to-end run's critical path
(its CPU per heartbeat bounds the rate whatever the loader and the broker do), but its CPU
there moves by about a second per million from run to run, with the loader, chDB and the
broker on the same two cores. This bench takes the dataflow alone: the heartbeats of
``bench/throughput.py`` (same simulator, seed and agents) are produced once to a Tansu
broker it starts on a free port, then each run starts ``python -m dataflows.heartbeats``
(fresh recovery directory and consumer group, so it reads the whole backlog) in the
checkout given, waits until the dataflow has committed every message as read, and
records the process's wall time from its start, its start (until its first read of the
heartbeats, from its ``source_first_read`` log line) and its CPU (user and system, from
``/proc``); nothing consumes what it publishes. Runs of the checkouts given are
alternated, so the machine's drift (±10 % over an hour here) is shared out; compare the
medians of one invocation, never figures of two.

A checkout may carry one environment setting after ``%`` (``ROOT%NAME=VALUE``) for that
checkout's runs only, to compare settings on the same code. The results (every run, and
the median CPU and wall per checkout) are printed and written as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from throughput import dataflow_read, generate, process_cpu, produce, say  # noqa: E402

from agentwatch.settings import Settings  # noqa: E402
from bench.api import finish  # noqa: E402
from infra.broker import die_with_parent_command, ensure_topics, free_port, start_broker  # noqa: E402


def one_run(checkout: str, settings: Settings, expected: int, log: Path) -> dict[str, float]:
    """Start the dataflow of ``checkout`` (``ROOT[%NAME=VALUE]``) on the backlog; its
    wall time until it has committed ``expected`` messages, and its CPU by then."""
    root, _, extra = checkout.partition("%")
    env = {**os.environ, **settings.as_env()}
    if extra:
        name, _, value = extra.partition("=")
        env[name] = value
    started, started_at = time.perf_counter(), time.time()
    with open(log, "wb") as out:
        dataflow = subprocess.Popen(  # (no pre-exec hook: this process is large to fork)
            die_with_parent_command([sys.executable, "-m", "dataflows.heartbeats"]), cwd=root,
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        while dataflow_read(settings) < expected:
            if dataflow.poll() is not None:
                raise RuntimeError(f"the dataflow exited with {dataflow.returncode}; see {log}")
            time.sleep(0.1)
        wall = time.perf_counter() - started
        user, system = process_cpu(dataflow.pid)
    finally:
        dataflow.terminate()
        dataflow.wait(30)
    first_reads = [
        float(line.rsplit("at=", 1)[1].split()[0])
        for line in log.read_text(errors="replace").splitlines()
        if "source_first_read" in line and f"topic={settings.topic('metrics')} " in line
    ]
    start = min(first_reads) - started_at if first_reads else float("nan")
    return {
        "wall_s": wall, "start_s": start, "cpu_s": user + system, "user_s": user,
        "system_s": system,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="*", default=["."], help="ROOT[%%NAME=VALUE] ...")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each checkout")
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--heartbeats", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("bench/results/dataflow_alone.json"))
    args = parser.parse_args()
    for checkout in args.checkouts:
        root = Path(checkout.partition("%")[0])
        if not (root / "dataflows" / "heartbeats.py").is_file():
            parser.error(f"{root} is not a checkout of agentwatch (no dataflows/heartbeats.py)")

    workdir = Path(tempfile.mkdtemp(prefix="agentwatch-alone-"))
    say(f"generating {args.heartbeats:,} heartbeats of {args.agents:,} agents")
    keys, values = generate(args.agents, args.heartbeats, args.seed)
    broker = start_broker("127.0.0.1", free_port(), log_path=workdir / "tansu.log")
    runs: dict[str, list[dict[str, float]]] = {checkout: [] for checkout in args.checkouts}
    ok = False
    try:
        common = dict(
            bootstrap_servers=broker.bootstrap_servers,
            clickhouse_dsn=f"chdb://{workdir / 'chdb'}",  # (not opened: no loader runs)
            metrics_partitions=args.partitions,
            dataflow_commit_interval_s=0.1,
            baseline_warmup_s=0,  # warm agents, as bench/throughput.py
            agents_auto_register=True,
            topic_prefix="alone.",
        )
        first = Settings(var_dir=workdir / "var-0", **common)
        ensure_topics(first)
        say("producing the backlog")
        produce(broker.bootstrap_servers, first.topic("metrics"), keys, values)
        number = 0
        for round_ in range(args.rounds):
            for checkout in args.checkouts:
                number += 1
                settings = Settings(
                    var_dir=workdir / f"var-{number}", dataflow_group_id=f"alone-{number}",
                    **common,
                )  # fmt: skip
                run = one_run(checkout, settings, len(values), workdir / f"dataflow-{number}.log")
                runs[checkout].append(run)
                say(f"round {round_ + 1}: {checkout}: {run['wall_s']:.2f} s wall "
                    f"(start {run['start_s']:.2f} s), {run['cpu_s']:.2f} s CPU")  # fmt: skip
        ok = True
    finally:
        finish(workdir, broker, ok=ok)

    results = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "agents": args.agents,
        "heartbeats": args.heartbeats,
        "checkouts": {
            checkout: {
                "median_cpu_s": statistics.median(r["cpu_s"] for r in done),
                "median_wall_s": statistics.median(r["wall_s"] for r in done),
                "median_start_s": statistics.median(r["start_s"] for r in done),
                "median_heartbeats_per_s": args.heartbeats
                / statistics.median(r["wall_s"] for r in done),
                "runs": [{k: round(v, 3) for k, v in r.items()} for r in done],
            }
            for checkout, done in runs.items()
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
