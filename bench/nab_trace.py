"""Per-point trace of the detector on chosen NAB series: why a window is missed.

    .venv/bin/python bench/nab_trace.py ../shared/data/NAB art_daily_nojump --out var/trace

Runs the detector exactly as ``bench/nab.py`` does (:func:`nab.detector_for`, each point
judged before it is learned, settings from the environment, so an
``AGENTWATCH_<SETTING>=...`` override is traced too) and writes, per point, what the
judgement saw: the value, the local level before the point, the daily profile's
expected offset (``season``), the spread (``std``), the deviation ``z = (value − level
− season) / std``, the recent surprise, its likelihood, the score, the runtime decision,
whether the point is in a quiet period, the share of variance the daily profile explains
and the slow baseline's mean and std. ``DIR/<name>.csv`` per series; a summary per
labelled window is printed: the largest ``|z|``, likelihood and score inside it, the
decisions inside and outside it, and the residual about level + profile on the three
days before the window (its root mean square against the spread the detector used).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from nab import detector_for, event_times  # noqa: E402

from agentwatch.evaluation import LabelledSeries, load_corpus  # noqa: E402
from agentwatch.settings import Settings  # noqa: E402

COLUMNS = (
    "i",
    "timestamp",
    "value",
    "level",
    "season",
    "std",
    "z",
    "recent",
    "likelihood",
    "score",
    "decision",
    "quiet",
    "explained",
    "slow_mean",
    "slow_std",
)
DAY_POINTS_AT_5_MIN = 288


def trace(series: LabelledSeries, settings: Settings) -> np.ndarray:
    """One row per point of ``series`` with :data:`COLUMNS` (the timestamp as seconds)."""
    detector = detector_for(series, settings)
    rows = []
    times = event_times(series).tolist()
    for i, (value, t) in enumerate(zip(series.values.tolist(), times, strict=True)):
        point = {"value": value}
        j = detector.judge_one(point, t)
        season = float(j.season[0, 0]) if np.ndim(j.season) else 0.0
        shape = detector.daily_shape[0].astype(np.float64)
        rows.append(
            (
                i,
                t,
                value,
                float(detector.level[0, 0]),
                season,
                float(j.std[0, 0]),
                float(j.z[0, 0]),
                float(j.recent[0]),
                float(j.likelihood[0]),
                float(j.scores[0]),
                int(j.fire[0]),
                int(j.quiet[0]),
                0.5 * float((shape * shape).sum()),
                float(detector.mean[0, 0]),
                float(np.sqrt(detector.var[0, 0])),
            )
        )
        detector.learn_one(point, t)
    return np.array(rows)


def summary(name: str, a: np.ndarray, windows: tuple[tuple[int, int], ...]) -> list[str]:
    """What the trace ``a`` says about each labelled window of series ``name``."""
    c = {column: k for k, column in enumerate(COLUMNS)}
    lines = []
    inside = np.zeros(len(a), dtype=bool)
    for first, last in windows:
        inside[first : last + 1] = True
    for first, last in windows:
        w = a[first : last + 1]
        far = int(np.argmax(np.abs(w[:, c["z"]])))
        before = a[max(first - 3 * DAY_POINTS_AT_5_MIN, 0) : first]
        resid = before[:, c["value"]] - before[:, c["level"]] - before[:, c["season"]]
        lines.append(
            f"{name} window {first}-{last}: max |z| {abs(w[far, c['z']]):.2f} (point "
            f"{int(w[far, c['i']])}), max likelihood {w[:, c['likelihood']].max():.2f}, max "
            f"score {w[:, c['score']].max():.3f}, decisions inside {int(w[:, c['decision']].sum())}"
            f", outside {int(a[~inside, c['decision']].sum())}; before it: residual rms "
            f"{np.sqrt(np.mean(resid**2)):.1f} (|r| p50 {np.quantile(np.abs(resid), 0.5):.1f}, "
            f"p99 {np.quantile(np.abs(resid), 0.99):.1f}) against a spread of "
            f"{before[-1, c['std']]:.1f}, profile explains {before[-1, c['explained']]:.2f}"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="NAB's root (with data/ and labels/).")
    parser.add_argument("series", nargs="+", help="Parts of series names to trace.")
    parser.add_argument("--out", type=Path, help="Write DIR/<name>.csv per series here.")
    args = parser.parse_args(argv)
    settings = Settings()
    corpus = [s for s in load_corpus(args.data_dir) if any(p in s.name for p in args.series)]
    if not corpus:
        raise SystemExit(f"no series of {args.data_dir} matches {args.series}")
    for series in corpus:
        a = trace(series, settings)
        name = Path(series.name).stem
        for line in summary(name, a, series.windows):
            print(line)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            with (args.out / f"{name}.csv").open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(COLUMNS)
                for row, stamp in zip(a.tolist(), series.timestamps, strict=True):
                    writer.writerow([int(row[0]), stamp, *(repr(x) for x in row[2:])])


if __name__ == "__main__":
    main()
