"""agentwatch's anomaly detector measured on the Numenta Anomaly Benchmark (NAB v1.1).

    .venv/bin/python bench/nab.py ../shared/data/NAB --out var/nab

Runs the detector the dataflow runs (:class:`agentwatch.detector.BaselineDetector`,
settings from :class:`agentwatch.settings.Settings`) over every series' single
``value`` feature, one point at a time, scoring each point before learning it.
The one thing NAB needs that the dataflow's settings cannot give is a std
floor in the series' own unit: it is 1 % of the span (max - min) of the
series' probationary period (its first 15 %, at most 750 points, which NAB
does not score), as the settings' floors are about 1 % of each metric's range
(1 point of CPU %). Nothing is tuned per series: every other number is a
settings default, the same for the whole corpus (docs/detection.md says how
they were chosen).

Each series is then scored (:mod:`agentwatch.evaluation`) three ways, under
each profile:

- **sweep on score** / **sweep on likelihood**: the one threshold on the emitted
  score (or on the likelihood behind it, which has no ties at 1.0) that
  maximises the corpus score, as NAB's optimizer picks it — comparable to the
  published leaderboard. Points in the detector's quiet period (after it fired)
  are emitted as 0;
- **runtime**: the detector's own decision, score ≥ ``Settings().anomaly_threshold``
  outside a quiet period, fixed in advance — what an operator gets.

Both for the whole corpus and for the machine-metric subset (as the data's
``SCORING.md`` defines it: realAWSCloudwatch, five realKnownCause series and
the artificial series); the subset's sweep picks its own threshold.

With ``--out DIR`` it writes each series' points in NAB's results layout,
``DIR/<group>/<name>.csv`` with ``timestamp,value,anomaly_score,label``, the
runtime ``decision`` (0/1) and the ``likelihood``, so any NAB scorer can re-score them, and the
figures to ``DIR/summary.json``. ``--score-results DIR`` scores such a
directory (or NAB's own ``results/<detector>``) instead of running the detector.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentwatch.detector import BaselineDetector  # noqa: E402
from agentwatch.evaluation import (  # noqa: E402
    PROFILES,
    LabelledSeries,
    PointCredits,
    Profile,
    ThresholdSweep,
    load_corpus,
    load_profiles,
    point_credits,
    probation_length,
    score_corpus,
)
from agentwatch.settings import Settings  # noqa: E402

#: The std floor of a series, as a share of the span of its probationary values.
STD_FLOOR_SHARE_OF_SPAN = 0.01

#: Machine metrics most like agent telemetry (the data's SCORING.md).
MACHINE_GROUPS = ("realAWSCloudwatch", "artificialWithAnomaly", "artificialNoAnomaly")
MACHINE_SERIES = (
    "realKnownCause/machine_temperature_system_failure.csv",
    "realKnownCause/cpu_utilization_asg_misconfiguration.csv",
    "realKnownCause/ec2_request_latency_system_failure.csv",
    "realKnownCause/rogue_agent_key_hold.csv",
    "realKnownCause/rogue_agent_key_updown.csv",
)

#: Published NAB leaderboard, normalised (standard, low FP, low FN), from the data's SCORING.md.
LEADERBOARD = (
    ("ARTime", 74.9, 65.1, 80.4),
    ("Numenta HTM", 70.5, 62.6, 75.2),
    ("CAD OSE", 69.9, 67.0, 73.2),
    ("earthgecko Skyline", 58.2, 46.2, 63.9),
    ("KNN CAD", 58.0, 43.4, 64.8),
    ("Relative Entropy", 54.6, 47.6, 58.8),
    ("Random Cut Forest", 51.7, 38.4, 59.7),
    ("Twitter ADVec", 47.1, 33.6, 53.5),
    ("Windowed Gaussian", 39.6, 20.9, 47.4),
    ("Etsy Skyline", 35.7, 27.1, 44.5),
    ("Random", 11.0, 1.2, 19.5),
    ("Null", 0.0, 0.0, 0.0),
)

SHORT_PROFILE_NAMES = {
    "standard": "standard",
    "reward_low_FP_rate": "low FP",
    "reward_low_FN_rate": "low FN",
}


def log(event: str, **fields: object) -> None:
    """One structured event per line on stderr."""
    pairs = " ".join(f"{key}={value}" for key, value in fields.items())
    print(f"{time.strftime('%H:%M:%S')} event={event} {pairs}", file=sys.stderr, flush=True)


def is_machine_metric(name: str) -> bool:
    """Whether a series (``group/file.csv``) is in the machine-metric subset."""
    return name.split("/")[0] in MACHINE_GROUPS or name in MACHINE_SERIES


def detector_for(series: LabelledSeries, settings: Settings) -> BaselineDetector:
    """The dataflow's detector for one NAB series, its std floor from the probation span."""
    probation = series.values[: max(probation_length(len(series.values)), 1)]
    span = float(probation.max() - probation.min())
    scale = span if span > 0 else max(abs(float(probation[0])), 1.0)
    return BaselineDetector(("value",), {"value": STD_FLOOR_SHARE_OF_SPAN * scale}, settings)


#: Where a point with a value beyond the range seen so far ranks in "sweep on likelihood".
EXTREME_RANK = 1e3


def detector_scores(
    series: LabelledSeries, settings: Settings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per point, each judged before it is learned: the score, the runtime decision
    (0/1) and the likelihood (std of recent surprise above the series' usual one).

    Points in a quiet period (after a runtime detection), or in the repeat window after
    it (``anomaly_repeat_s``), or routine (within the series' envelope of bursts,
    ``anomaly_envelope_ratio``), that do not fire are the detector saying it will not
    raise them: their score and likelihood are written as 0. The score is
    on a log scale that reaches 1.0 at a tail of 1e-10; the likelihood ranks the
    same points without those ties (a value beyond the range seen so far, which
    scores 1 at once, ranks first: ``EXTREME_RANK``).
    """
    detector = detector_for(series, settings)
    scores = np.zeros(len(series.values))
    decisions = np.zeros(len(series.values), dtype=bool)
    likelihood = np.zeros(len(series.values))
    times = event_times(series)
    for i, (value, t) in enumerate(zip(series.values.tolist(), times.tolist(), strict=True)):
        point = {"value": value}
        j = detector.judge_one(point, t)
        if j.judged[0] and (j.fire[0] or not (j.quiet[0] or j.repeat[0] or j.routine[0])):
            scores[i] = j.scores[0]
            decisions[i] = j.fire[0]
            ranked_first = j.extreme[0].any() or (j.shifted is not None and j.shifted[0])
            likelihood[i] = EXTREME_RANK if ranked_first else j.likelihood[0]
        detector.learn_one(point, t)
    return scores, decisions, likelihood


def event_times(series: LabelledSeries) -> np.ndarray:
    """The series' timestamps in seconds (the detector's durations run on them).

    >>> event_times(LabelledSeries("g/s.csv", ("2014-04-01 00:00:00", "2014-04-01 00:05:00"),
    ...                            np.zeros(2), ())).tolist()
    [1396310400.0, 1396310700.0]
    """
    stamps = np.array(series.timestamps, dtype="datetime64[s]")
    return stamps.astype(np.int64).astype(np.float64)


def write_results(
    out_dir: Path,
    series: LabelledSeries,
    scores: np.ndarray,
    decisions: np.ndarray,
    likelihood: np.ndarray,
) -> Path:
    """One series' points in NAB's results layout, plus the runtime decision and the
    likelihood."""
    path = out_dir / series.name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["timestamp", "value", "anomaly_score", "label", "decision", "likelihood"])
        rows = zip(series.timestamps, series.values.tolist(), scores.tolist(),
                   series.labels().tolist(), decisions.astype(int).tolist(),
                   likelihood.tolist(), strict=True)  # fmt: skip
        for timestamp, value, score, label, decision, lik in rows:
            writer.writerow([timestamp, repr(value), repr(score), label, decision, repr(lik)])
    return path


def read_results(results_dir: Path, series: LabelledSeries) -> np.ndarray:
    """The ``anomaly_score`` column of a series' results file.

    Finds ``<group>/<name>.csv`` or, as NAB names them, ``<group>/<detector>_<name>.csv``.
    """
    group, name = series.name.split("/")
    path = results_dir / group / name
    if not path.exists():
        matches = sorted((results_dir / group).glob(f"*_{name}"))
        if len(matches) != 1:
            raise FileNotFoundError(
                f"no single results file for {series.name} in {results_dir} "
                f"(looked for {group}/{name} and {group}/*_{name}, found {len(matches)})"
            )
        path = matches[0]
    with open(path, newline="") as f:
        scores = np.array([float(row["anomaly_score"]) for row in csv.DictReader(f)])
    if len(scores) != len(series.values):
        raise ValueError(f"{path} has {len(scores)} rows; {series.name} has {len(series.values)}")
    return scores


def summarise(
    credits: list[PointCredits],
    rankings: dict[str, list[np.ndarray]],
    profiles: list[Profile],
    runtime: tuple[list[np.ndarray], float] | None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Normalised score and threshold, per way of deciding and per profile.

    ``rankings`` name the per-point values to sweep a threshold over;
    ``runtime`` is the scores and the fixed threshold of the runtime decision.
    """
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for way, values in rankings.items():
        sweep = ThresholdSweep(credits, values)
        summary[way] = {}
        for profile in profiles:
            threshold, _ = sweep.best(profile)
            best = score_corpus(credits, values, profile, threshold)
            summary[way][profile.name] = {"score": best.normalised, "threshold": threshold}
    if runtime is not None:
        scores, threshold = runtime
        summary["runtime"] = {
            profile.name: {
                "score": score_corpus(credits, scores, profile, threshold).normalised,
                "threshold": threshold,
            }
            for profile in profiles
        }
    return summary


def series_table(
    corpus: list[LabelledSeries],
    credits: list[PointCredits],
    decisions: dict[str, tuple[list[np.ndarray], float]],
) -> list[str]:
    """Markdown rows, one per series, under the standard profile.

    ``decisions`` name per-point values and the threshold they are cut at;
    each gets three columns: windows hit, false positives, raw score.
    """
    standard = PROFILES["standard"]
    header = "| series | points | windows |"
    rule = "|---|--:|--:|"
    per_way = []
    for way, (values, threshold) in decisions.items():
        header += f" {way}: hit | FP | raw |"
        rule += "--:|--:|--:|"
        per_way.append(score_corpus(credits, values, standard, threshold).series)
    lines = [header, rule]
    for k, (series, c) in enumerate(zip(corpus, credits, strict=True)):
        cells = "".join(
            f" {row[k].windows_detected} | {row[k].false_positives} | {row[k].raw:.2f} |"
            for row in per_way
        )
        lines.append(f"| {series.name} | {len(series.values)} | {c.windows} |{cells}")
    return lines


def summary_table(scopes: dict[str, dict], profiles: list[Profile]) -> list[str]:
    """Markdown rows: one per scope and way of deciding, a column per profile."""
    names = [SHORT_PROFILE_NAMES.get(p.name, p.name) for p in profiles]
    lines = [
        "| scope | decision | " + " | ".join(names) + " |",
        "|---|---|" + "--:|" * len(profiles),
    ]
    for scope, summary in scopes.items():
        for way, by_profile in summary.items():
            cells = [
                f"{by_profile[p.name]['score']:.2f} (t={by_profile[p.name]['threshold']:.6g})"
                for p in profiles
            ]
            lines.append(f"| {scope} | {way} | " + " | ".join(cells) + " |")
    return lines


def leaderboard_table() -> list[str]:
    """The published leaderboard, as markdown rows."""
    lines = ["| detector | standard | low FP | low FN |", "|---|--:|--:|--:|"]
    lines += [f"| {name} | {a} | {b} | {c} |" for name, a, b, c in LEADERBOARD]
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure agentwatch's anomaly detector on NAB (scores, sweep and runtime).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: .venv/bin/python bench/nab.py ../shared/data/NAB --out var/nab",
    )
    parser.add_argument("data_dir", type=Path, help="NAB directory (data/, labels/, config/).")
    parser.add_argument(
        "--out", type=Path, help="Write per-point results (NAB layout) and summary.json here."
    )
    parser.add_argument(
        "--subset",
        choices=("all", "machine"),
        default="all",
        help="Run every series (default; the summary also shows the machine subset) "
        "or only the machine-metric subset.",
    )
    parser.add_argument(
        "--profiles",
        nargs="+",
        default=list(PROFILES),
        metavar="PROFILE",
        help="Profiles to score (names in config/profiles.json; default all three).",
    )
    parser.add_argument(
        "--score-results",
        type=Path,
        metavar="RESULTS_DIR",
        help="Score the anomaly_score column of a NAB-layout results directory "
        "instead of running the detector (e.g. NAB's results/ARTime).",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    settings = Settings()
    profiles_path = args.data_dir / "config" / "profiles.json"
    known = load_profiles(profiles_path) if profiles_path.exists() else PROFILES
    unknown = [name for name in args.profiles if name not in known]
    if unknown:
        raise SystemExit(f"unknown profile(s) {unknown}; choose from {sorted(known)}")
    profiles = [known[name] for name in args.profiles]

    corpus = load_corpus(args.data_dir)
    if args.subset == "machine":
        corpus = [s for s in corpus if is_machine_metric(s.name)]
    points = sum(len(s.values) for s in corpus)
    log("corpus_loaded", series=len(corpus), points=points, subset=args.subset)

    running_detector = args.score_results is None
    threshold = settings.anomaly_threshold
    scores: list[np.ndarray] = []
    likelihoods: list[np.ndarray] = []
    decisions_of: list[np.ndarray] = []
    detector_seconds = 0.0
    with Progress(transient=True) as progress:
        task = progress.add_task("detector" if running_detector else "reading", total=points)
        for series in corpus:
            tic = time.perf_counter()
            if running_detector:
                series_scores, series_decisions, series_likelihood = detector_scores(
                    series, settings
                )
                likelihoods.append(series_likelihood)
                decisions_of.append(series_decisions)
            else:
                series_scores = read_results(args.score_results, series)
            detector_seconds += time.perf_counter() - tic
            scores.append(series_scores)
            if args.out and running_detector:
                write_results(args.out, series, series_scores, series_decisions,
                              series_likelihood)  # fmt: skip
            progress.advance(task, len(series.values))
    log("scored_points", seconds=f"{detector_seconds:.1f}",
        us_per_point=f"{1e6 * detector_seconds / max(points, 1):.1f}")  # fmt: skip

    credits = [point_credits(series) for series in corpus]
    scopes = {}
    scope_members = {f"{args.subset} ({len(corpus)} series)": list(range(len(corpus)))}
    if args.subset == "all":
        machine = [k for k, s in enumerate(corpus) if is_machine_metric(s.name)]
        if machine:
            scope_members[f"machine ({len(machine)} series)"] = machine
    for scope, members in scope_members.items():
        rankings = {"sweep on score": [scores[k] for k in members]}
        if running_detector:
            rankings["sweep on likelihood"] = [likelihoods[k] for k in members]
        runtime = ([scores[k] for k in members], threshold) if running_detector else None
        scopes[scope] = summarise([credits[k] for k in members], rankings, profiles, runtime)

    # per series: at the corpus' best standard threshold of each ranking, and at runtime
    standard = PROFILES["standard"]
    decisions = {"sweep": (scores, ThresholdSweep(credits, scores).best(standard)[0])}
    if running_detector:
        decisions = {
            "sweep on likelihood": (
                likelihoods,
                ThresholdSweep(credits, likelihoods).best(standard)[0],
            ),
            "runtime": (scores, threshold),
        }
    thresholds = ", ".join(f"{way}: t={t:.6g}" for way, (_, t) in decisions.items())
    print(f"\n## Per series (standard profile; {thresholds})\n")
    print("\n".join(series_table(corpus, credits, decisions)))
    print("\n## Summary (normalised NAB score; t = threshold)\n")
    print("\n".join(summary_table(scopes, profiles)))
    print("\n## Published leaderboard (SCORING.md)\n")
    print("\n".join(leaderboard_table()))
    elapsed = time.perf_counter() - started
    print(f"\n{len(corpus)} series, {points} points, {elapsed:.1f} s in all "
          f"({detector_seconds:.1f} s detector or reading).")  # fmt: skip

    report = {
        "source": "BaselineDetector" if running_detector else str(args.score_results),
        "scopes": scopes,
        "per_series_standard": {
            way: [asdict(s) for s in score_corpus(credits, values, standard, t).series]
            for way, (values, t) in decisions.items()
        },
        "settings": {
            "anomaly_threshold": settings.anomaly_threshold,
            "baseline_warmup_heartbeats": settings.baseline_warmup_heartbeats,
            "baseline_memory_heartbeats": settings.baseline_memory_heartbeats,
            "baseline_memory_s": settings.baseline_memory_s,
            "anomaly_min_relative_std": settings.anomaly_min_relative_std,
            "baseline_learn_clip_sigma": settings.baseline_learn_clip_sigma,
            "baseline_level_weight": settings.baseline_level_weight,
            "baseline_level_clip_sigma": settings.baseline_level_clip_sigma,
            "anomaly_surprise_weight": settings.anomaly_surprise_weight,
            "anomaly_surprise_half_life_s": settings.anomaly_surprise_half_life_s,
            "anomaly_likelihood_std_floor": settings.anomaly_likelihood_std_floor,
            "anomaly_likelihood_prior_std": settings.anomaly_likelihood_prior_std,
            "anomaly_extreme_margin": settings.anomaly_extreme_margin,
            "anomaly_extreme_after_s": settings.anomaly_extreme_after_s,
            "anomaly_quiet_s": settings.anomaly_quiet_s,
            "anomaly_repeat_s": settings.anomaly_repeat_s,
            "std_floor_share_of_probation_span": STD_FLOOR_SHARE_OF_SPAN,
        },
        "points": points,
        "seconds": elapsed,
        "detector_seconds": detector_seconds,
    }
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
        log("written", out=args.out)
    log("done", seconds=f"{elapsed:.1f}")
    return report


if __name__ == "__main__":
    main()
