"""Why the detector's runtime decisions miss ASD's labelled incidents: one line per
labelled segment, and what a lower threshold or a sustained-deviation trigger would buy.

    .venv/bin/python bench/asd_misses.py ../shared/data/ASD --out bench/results/asd_misses.json

The detector is wired and fed as ``bench/multivariate.py`` does (one detector over a
server's 19 metrics, the history then the test points, each judged before it is
learned). Each labelled segment is classed as

- **found**: a runtime decision inside it;
- **hidden by the quiet period**: a point inside it scored at or above the threshold
  but the agent was quiet on those metrics;
- **below the threshold**: no point inside it reached the threshold.

Beside, per segment: the highest score and likelihood inside it, the furthest metric's
deviation from the *local level* (what the detector judges) and from the *slow
baseline* (which does not absorb a shift within tens of points), their maximum and
median over the segment: a sustained shift the level absorbed shows as a median far
from the slow baseline but near the level.

Then two curves over all servers (event recall against false episode starts per 1,000
normal points, runs of flagged points within ``MERGE_POINTS`` merged into one start,
as a quiet period or an episode would): the runtime decisions with the threshold
lowered (on the score and on the likelihood), and the runtime decisions plus a
trigger on a sustained deviation (an exponentially weighted mean of each metric's
deviation, from the slow baseline or the level, clipped at ``CLIP_SIGMA``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from multivariate import STEP_S, detector_for, load_servers, segments  # noqa: E402

from agentwatch.settings import Settings  # noqa: E402

#: Flagged points closer than this are one start (about an hour at 5 minutes).
MERGE_POINTS = 12
#: Deviations are clipped here before the sustained mean (a spike does not carry it).
CLIP_SIGMA = 8.0


def run_server(server, settings: Settings) -> dict[str, np.ndarray]:
    """Per test point: score, likelihood, decision, quiet, and the weighted deviations
    from the local level and from the slow baseline (``n × F``)."""
    detector = detector_for(server.metrics, server.train, settings)
    for k, row in enumerate(server.train):
        detector.learn_one(dict(zip(server.metrics, row.tolist(), strict=True)), k * STEP_S)
    t0 = len(server.train) * STEP_S
    n, features = server.test.shape
    out = {name: np.zeros(n) for name in ("score", "likelihood")}
    out |= {name: np.zeros(n, dtype=bool) for name in ("fire", "quiet")}
    out |= {name: np.zeros((n, features)) for name in ("from_level", "from_baseline")}
    for i, row in enumerate(server.test):
        point = dict(zip(server.metrics, row.tolist(), strict=True))
        j = detector.judge_one(point, t0 + i * STEP_S)
        out["score"][i], out["likelihood"][i] = j.scores[0], j.likelihood[0]
        out["fire"][i], out["quiet"][i] = j.fire[0], j.quiet[0]
        out["from_level"][i] = j.weighted[0]
        out["from_baseline"][i] = (row - j.before.mean[0]) / j.base_std[0]
        detector.learn_one(point, t0 + i * STEP_S)
    return out


def classify(run: dict[str, np.ndarray], labels: np.ndarray, threshold: float) -> list[dict]:
    """One record per labelled segment (see the module's docstring)."""
    level = np.abs(run["from_level"]).max(axis=1)
    baseline = np.abs(run["from_baseline"]).max(axis=1)
    records = []
    for first, last in segments(labels):
        inside = slice(first, last + 1)
        above = run["score"][inside] >= threshold
        kind = (
            "found" if run["fire"][inside].any()
            else "hidden by the quiet period" if (above & run["quiet"][inside]).any()
            else "below the threshold"
        )  # fmt: skip
        records.append({
            "first": first, "points": last - first + 1, "class": kind,
            "max_score": float(run["score"][inside].max()),
            "max_likelihood": float(run["likelihood"][inside].max()),
            "from_level_max": float(level[inside].max()),
            "from_level_median": float(np.median(level[inside])),
            "from_baseline_max": float(baseline[inside].max()),
            "from_baseline_median": float(np.median(baseline[inside])),
            "quiet_at_first": bool(run["quiet"][first]),
        })  # fmt: skip
    return records


def starts(flagged: np.ndarray, merge: int = MERGE_POINTS) -> np.ndarray:
    """Flagged points as starts, a run of flags within ``merge`` points counting once.

    >>> starts(np.array([1, 1, 0, 0, 1, 0, 0, 0, 1], dtype=bool), merge=2).tolist()
    [True, False, False, False, True, False, False, False, True]
    """
    out = np.zeros(len(flagged), dtype=bool)
    last = -(10**9)
    for i in np.flatnonzero(flagged).tolist():
        if i - last > merge:
            out[i] = True
        last = i
    return out


def curve_point(flags: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict:
    """Event recall and false starts per 1,000 normal points, summed over servers."""
    found = events = false = normal = 0
    for name, flagged in flags.items():
        first = starts(flagged)
        for a, b in segments(labels[name]):
            events += 1
            found += bool(first[a : b + 1].any())
        false += int((first & ~labels[name]).sum())
        normal += int((~labels[name]).sum())
    return {"found": found, "events": events, "recall": round(found / events, 3),
            "false_per_1k_normal": round(1000 * false / normal, 2)}  # fmt: skip


def sustained(deviations: np.ndarray, weight: float) -> np.ndarray:
    """The furthest metric's exponentially weighted mean deviation (clipped), per point."""
    mean = np.zeros(deviations.shape[1])
    out = np.zeros(len(deviations))
    for i, row in enumerate(np.clip(deviations, -CLIP_SIGMA, CLIP_SIGMA)):
        mean += weight * (row - mean)
        out[i] = np.abs(mean).max()
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path, help="ASD directory (omi-1 … omi-12).")
    parser.add_argument("--out", type=Path, help="Write every figure as JSON here.")
    args = parser.parse_args(argv)
    settings = Settings()
    runs, labels, per_segment = {}, {}, []
    for server in load_servers(args.data_dir):
        runs[server.name] = run_server(server, settings)
        labels[server.name] = server.labels
        for record in classify(runs[server.name], server.labels, settings.anomaly_threshold):
            per_segment.append({"server": server.name, **record})
        print(f"{server.name} done", file=sys.stderr, flush=True)
    missed = [r for r in per_segment if r["class"] != "found"]
    summary = {
        "segments": len(per_segment),
        "classes": dict(Counter(r["class"] for r in per_segment)),
        "missed_max_score_median": statistics.median(r["max_score"] for r in missed),
        "missed_max_score_at_least_0.5": sum(r["max_score"] >= 0.5 for r in missed),
        "missed_from_level_median_of_medians": statistics.median(
            r["from_level_median"] for r in missed),
        "missed_from_baseline_median_of_medians": statistics.median(
            r["from_baseline_median"] for r in missed),
        "missed_from_baseline_median_at_least_3": sum(
            r["from_baseline_median"] >= 3 for r in missed),
        "missed_from_level_max_at_least_10": sum(r["from_level_max"] >= 10 for r in missed),
    }  # fmt: skip
    curves: dict[str, dict] = {}
    for t in (0.5, 0.7, 0.9, 0.99):
        curves[f"score >= {t}"] = curve_point({n: r["score"] >= t for n, r in runs.items()}, labels)
    for t in (3.0, 4.0, 5.0):
        curves[f"likelihood >= {t}"] = curve_point(
            {n: r["likelihood"] >= t for n, r in runs.items()}, labels)  # fmt: skip
    for source in ("from_baseline", "from_level"):
        for points in (6, 12, 24):
            means = {n: sustained(r[source], 1.0 / points) for n, r in runs.items()}
            for c in (2.0, 3.0, 4.0, 5.0):
                curves[f"decisions or {source} mean of ~{points} points >= {c}"] = curve_point(
                    {n: runs[n]["fire"] | (m >= c) for n, m in means.items()}, labels)  # fmt: skip
    print(json.dumps(summary, indent=2))
    for name, point in curves.items():
        print(f"{name}: {point['found']} of {point['events']} ({point['recall']}), "
              f"{point['false_per_1k_normal']} false starts per 1k normal")  # fmt: skip
    result = {"summary": summary, "curves": curves, "segments": per_segment}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
