"""The single-series detector on ASD: every server's every metric as a series of its own.

    .venv/bin/python bench/asd_single_series.py ../shared/data/ASD \
        --out bench/results/asd-single-series.json

Rules that apply only to a single series (the repeat window, the envelope, the usual
day: ``docs/detection.md``) were chosen on NAB, and ASD as ``bench/multivariate.py``
runs it cannot see them (one detector over a server's 19 metrics learns their tails,
so none of those rules is on). This runs each of the 228 metrics (12 servers × 19) as
its own single series, as ``bench/nab.py`` runs a NAB series: the same detector and
settings, a std floor of 1 % of the history's span, one point every 5 minutes, each
point judged before it is learned. The last ``--history-days`` of ``train.csv`` are the
history (warm-up), ``test.csv`` is scored. Run it twice, with a rule on and off
(``AGENTWATCH_ANOMALY_USUAL_DAY_BINS=0``, say), to see what the rule does on data it was
not chosen on.

Figures per server and in all, the runtime decisions only:

- **decisions at normal points** (each metric's own decisions, added: what an operator
  would be paged with if each metric were an agent), per 1,000 normal points of the server
  and per 1,000 points of a series;
- **labelled segments found**: with a decision of any metric's series inside, and with a
  decision of a metric the segment's interpretation names.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import multivariate as mv  # noqa: E402 (bench/multivariate.py: ASD's loader and scoring)

from agentwatch.detector import BaselineDetector  # noqa: E402
from agentwatch.settings import Settings  # noqa: E402

#: Seconds between ASD's points; a series' std floor, as a share of its history's span.
STEP_S, STD_FLOOR_SHARE_OF_SPAN = mv.STEP_S, mv.STD_FLOOR_SHARE_OF_SPAN


def series_decisions(history: np.ndarray, test: np.ndarray, settings: Settings) -> np.ndarray:
    """The runtime decisions at ``test``'s points of one series fed ``history`` first."""
    span = float(history.max() - history.min()) if len(history) else 0.0
    scale = span if span > 0 else max(abs(float(history[0])) if len(history) else 1.0, 1.0)
    detector = BaselineDetector(("value",), {"value": STD_FLOOR_SHARE_OF_SPAN * scale}, settings)
    decisions = np.zeros(len(test), dtype=bool)
    for i, value in enumerate(np.concatenate([history, test]).tolist()):
        point, t = {"value": value}, i * STEP_S
        fired = detector.judge_one(point, t).fire[0]
        if i >= len(history):
            decisions[i - len(history)] = fired
        detector.learn_one(point, t)
    return decisions


def _server_job(job: tuple[Path, int]) -> tuple[str, np.ndarray]:
    folder, history_points = job
    server = mv.load_server(folder)
    settings = Settings()
    history = server.train[-history_points:] if history_points else server.train
    return server.name, np.stack(
        [series_decisions(history[:, m], server.test[:, m], settings)
         for m in range(len(server.metrics))],
        axis=1,
    )  # fmt: skip


class _NoPool:
    """A pool of no processes: the jobs one after the other, here (``--procs 1``)."""

    def __enter__(self) -> _NoPool:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    @staticmethod
    def imap_unordered(function, jobs):  # noqa: ANN001, ANN205 (Pool's signature)
        return map(function, jobs)


def server_figures(server: object, decisions: np.ndarray) -> dict:
    """One server's figures from its metrics' decisions (``points × metrics``)."""
    labels = server.labels
    normal = int((~labels).sum())
    false = int(decisions[~labels].sum())
    found = mv.runtime_figures(decisions.any(axis=1), labels)["events_detected"]
    named = sum(
        bool(decisions[first : last + 1, list(metrics)].any())
        for first, last, metrics in server.interpretation
    )
    return {
        "normal_points": normal,
        "false_decisions": false,
        "false_per_1k_normal": 1000.0 * false / normal if normal else 0.0,
        "false_per_1k_series_points": 1000.0 * false / (normal * decisions.shape[1]),
        "events": len(mv.segments(labels)),
        "events_detected": found,
        "interpreted_segments": len(server.interpretation),
        "found_by_a_named_metric": named,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path, help="ASD's root (omi-1 … omi-12)")
    parser.add_argument("--history-days", type=float, default=14.0,
                        help="days of train.csv fed first (0: all of it; default 14)")  # fmt: skip
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    folders = sorted((p for p in args.data_dir.iterdir() if (p / "test.csv").exists()),
                     key=lambda p: int(p.name.split("-")[-1]))  # fmt: skip
    if not folders:
        raise SystemExit(f"no server folders with test.csv in {args.data_dir} (is it ASD?)")
    history_points = int(args.history_days * 86_400 / STEP_S)
    jobs = [(folder, history_points) for folder in folders]
    print(f"{len(folders)} servers, {args.procs} processes…", file=sys.stderr, flush=True)
    done = {}
    with get_context("spawn").Pool(args.procs) if args.procs > 1 else _NoPool() as pool:
        for name, decisions in pool.imap_unordered(_server_job, jobs):
            done[name] = decisions
            print(f"  {name}: {int(decisions.sum())} decisions", file=sys.stderr, flush=True)
    per_server = {f.name: server_figures(mv.load_server(f), done[f.name]) for f in folders}
    total = {key: sum(s[key] for s in per_server.values())
             for key in ("normal_points", "false_decisions", "events", "events_detected",
                         "interpreted_segments", "found_by_a_named_metric")}  # fmt: skip
    total["false_per_1k_normal"] = 1000.0 * total["false_decisions"] / total["normal_points"]
    total["event_recall"] = total["events_detected"] / total["events"]
    settings = Settings()
    result = {
        "source": str(args.data_dir),
        "history_days": args.history_days,
        "settings": {name: getattr(settings, name) for name in type(settings).model_fields
                     if name.startswith("anomaly_usual_day") or name in (
                         "anomaly_repeat_s", "anomaly_envelope_ratio", "anomaly_quiet_s")},
        "total": total,
        "per_server": per_server,
        "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    print(json.dumps(total))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
