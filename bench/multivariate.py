"""agentwatch's anomaly detector measured on multivariate server data (ASD), with
simple baselines computed in the same run.

    .venv/bin/python bench/multivariate.py ../shared/data/ASD --out bench/results/multivariate.json

ASD (the data's ``README.md``): 12 servers, 19 metrics each, one sample every
5 minutes; ``train.csv`` (30 days, unlabelled, mostly normal) is the history,
``test.csv`` (15 days) is labelled per point, ``interpretation.txt`` names the
metrics of each labelled segment. Scored as the README says, so the figures
compare with the literature:

- **no point adjustment**: every point counts on its own;
- **best F1** over every threshold of a method's score, per server, and
  **AUPRC** (average precision), each averaged over servers;
- **runtime decisions** (the detector's own, fixed in advance): **event
  recall** (share of labelled segments with a decision inside), **false
  decisions per 1,000 normal points**, and the **delay** from a segment's start;
- **interpretation**: HitRate@100 % and @150 % (OmniAnomaly, KDD 2019): for a
  segment with labelled metrics G, the share of G among the method's top
  ``⌊|G|·P⌋`` blamed metrics, averaged over the labelled points the method
  flags at its best-F1 threshold (and, for the detector, at its runtime
  decisions), then over servers.

Methods, each fitted on ``train.csv`` only:

- **detector (fleet wiring)**: :class:`agentwatch.detector.BaselineDetector`
  with the settings' defaults over all 19 metrics at once, as the fleet runs one
  detector over all of an agent's metrics; fed the history then the test points,
  each judged before it is learned. Its ranking is the score with its ties at 1.0
  broken by the likelihood (a new extreme first, as ``bench/nab.py``'s "sweep on
  likelihood"); it blames metrics by ``|z|`` against the local level. The std
  floor of each metric is 1 % of its span in the history (the rule of
  ``bench/nab.py``; the settings' floors are for the fleet's own metrics). The
  warm-up is the settings' count and event time (``baseline_warmup_s`` at 5 min).
- **PCA**: squared reconstruction error of the point, centred on the history's
  mean, with the fewest components explaining ``PCA_VARIANCE`` of the history's
  variance (each share is a row of the table); blames by per-metric squared error.
- **L2**: the Euclidean norm of the point (the values are min-max scaled);
  blames by ``|value|``.
- **1-NN**: the distance to the nearest history point; blames by the per-metric
  difference from it.

``--out FILE`` writes every figure, per server and averaged, as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentwatch.detector import BaselineDetector  # noqa: E402
from agentwatch.settings import Settings  # noqa: E402

#: ASD's sampling interval (5 minutes), for warm-ups given as event time.
STEP_S = 300.0
#: The std floor of a metric, as a share of its span in the history (as bench/nab.py).
STD_FLOOR_SHARE_OF_SPAN = 0.01
#: Shares of the history's variance the PCA baseline keeps (one row of the table each).
PCA_VARIANCE = (0.9, 0.99)
#: Where a point with a value beyond the range seen so far ranks (above any likelihood).
EXTREME_RANK = 1e3
#: HitRate's shares P of |G| (OmniAnomaly's @100 % and @150 %).
HIT_RATE_SHARES = (1.0, 1.5)
#: Rows of history compared with test rows at once by 1-NN (memory: chunk × history × 8 B).
NN_CHUNK = 256
#: The issue's budget of false decisions per 1,000 normal points, for the ceiling figures.
CEILING_FALSE_PER_1K = 1.0
#: Quiet periods (points after a decision in which a method does not decide again) the
#: ceiling figures are computed with: none, and the detector's own (60,000 s at 5 min).
CEILING_QUIET_POINTS = (0, 200)
#: Thresholds tried per server for the ceiling figures: every distinct score among this
#: share of the server's highest (a lower threshold flags so many points that even the
#: quiet period leaves far more false decisions than the budget).
CEILING_TOP_SHARE = 0.1


def log(event: str, **fields: object) -> None:
    """One structured event per line on stderr (progress)."""
    pairs = " ".join(f"{key}={value}" for key, value in fields.items())
    print(f"{time.strftime('%H:%M:%S')} event={event} {pairs}", file=sys.stderr, flush=True)


# --- data ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Server:
    """One ASD server: history, test points, labels and the labelled segments' metrics."""

    name: str
    metrics: tuple[str, ...]
    train: np.ndarray
    test: np.ndarray
    labels: np.ndarray
    #: (first, last, 0-based metric columns), inclusive test-row ranges
    interpretation: tuple[tuple[int, int, tuple[int, ...]], ...]


def read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """Header and values of a numeric CSV file."""
    with open(path) as f:
        header = f.readline().strip().split(",")
    return header, np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)


def parse_interpretation(text: str) -> tuple[tuple[int, int, tuple[int, ...]], ...]:
    """``first-last:m,m,...`` lines (1-based metrics) as (first, last, 0-based metrics).

    >>> parse_interpretation("3-5:1,4\\n")
    ((3, 5, (0, 3)),)
    """
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        span, metrics = line.split(":")
        first, last = (int(x) for x in span.split("-"))
        out.append((first, last, tuple(int(m) - 1 for m in metrics.split(","))))
    return tuple(out)


def load_server(folder: Path) -> Server:
    """One server's folder (``train.csv``, ``test.csv``, ``interpretation.txt``)."""
    header, train = read_csv(folder / "train.csv")
    test_header, test = read_csv(folder / "test.csv")
    if test_header[-1] != "label" or test_header[:-1] != header:
        raise ValueError(f"{folder}: test.csv must have train.csv's columns plus a last 'label'")
    interpretation = parse_interpretation((folder / "interpretation.txt").read_text())
    return Server(folder.name, tuple(header), train, test[:, :-1], test[:, -1] > 0, interpretation)


def load_servers(data_dir: Path) -> list[Server]:
    """Every server folder of ``data_dir``, in numeric order (omi-1, omi-2, …, omi-12)."""
    folders = [p for p in data_dir.iterdir() if (p / "test.csv").exists()]
    if not folders:
        raise FileNotFoundError(f"no server folders with test.csv in {data_dir} (is it ASD?)")
    return [load_server(p) for p in sorted(folders, key=lambda p: int(p.name.split("-")[-1]))]


# --- scoring -------------------------------------------------------------------------------


def segments(labels: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (first, last) ranges of consecutive labelled points.

    >>> segments(np.array([0, 1, 1, 0, 1], dtype=bool))
    [(1, 2), (4, 4)]
    """
    padded = np.r_[False, labels.astype(bool), False].astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _ranked(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives at every distinct threshold, highest first, and the
    thresholds (ties are cut together)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order].astype(np.int64)
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(y)[last_of_tie]
    fp = np.cumsum(1 - y)[last_of_tie]
    return tp, fp, s[last_of_tie]


def best_f1(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The best point-wise F1 over all thresholds ``score >= t``, and that ``t``
    (no point adjustment); (0, inf) without labelled points.

    >>> best_f1(np.array([0.1, 0.9, 0.8, 0.2]), np.array([0, 1, 0, 1], dtype=bool))
    (0.8, 0.2)
    """
    positives = int(labels.sum())
    if positives == 0:
        return 0.0, float("inf")
    tp, fp, thresholds = _ranked(scores, labels)
    f1 = 2 * tp / (tp + fp + positives)
    k = int(np.argmax(f1))
    return float(f1[k]), float(thresholds[k])


def auprc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision: precision at each distinct threshold weighted by the recall
    it adds (ties together, no interpolation).

    >>> auprc(np.array([0.9, 0.8, 0.1]), np.array([1, 0, 1], dtype=bool))
    0.8333333333333333
    """
    positives = int(labels.sum())
    if positives == 0:
        return 0.0
    tp, fp, _ = _ranked(scores, labels)
    recall_gain = np.diff(np.r_[0, tp]) / positives
    return float(np.sum(recall_gain * tp / (tp + fp)))


def runtime_figures(decisions: np.ndarray, labels: np.ndarray) -> dict[str, float | int]:
    """Event recall, false decisions per 1,000 normal points and delays (points from a
    segment's first point to its first decision) of runtime decisions.

    >>> runtime_figures(np.array([0, 0, 1, 0, 0, 1, 0, 0], dtype=bool),
    ...                 np.array([0, 1, 1, 0, 0, 0, 1, 1], dtype=bool))["event_recall"]
    0.5
    """
    segs = segments(labels)
    delays = []
    for first, last in segs:
        hits = np.flatnonzero(decisions[first : last + 1])
        if len(hits):
            delays.append(int(hits[0]))
    normal = int((~labels).sum())
    false = int((decisions & ~labels).sum())
    return {
        "events": len(segs),
        "events_detected": len(delays),
        "event_recall": len(delays) / len(segs) if segs else 0.0,
        "false_decisions": false,
        "normal_points": normal,
        "false_per_1k_normal": 1000.0 * false / normal if normal else 0.0,
        "delay_median": float(np.median(delays)) if delays else float("nan"),
        "delay_max": int(max(delays)) if delays else -1,
    }


def quiet_decisions(flagged: np.ndarray, quiet_points: int) -> np.ndarray:
    """The points that decide among ``flagged`` ones when a decision is followed by
    ``quiet_points`` points without another (as the detector's quiet period).

    >>> quiet_decisions(np.array([0, 1, 1, 0, 1, 0, 1], dtype=bool), 2).astype(int).tolist()
    [0, 1, 0, 0, 1, 0, 0]
    """
    if not quiet_points:
        return flagged
    decisions = np.zeros_like(flagged)
    next_allowed = -1
    for i in np.flatnonzero(flagged).tolist():
        if i >= next_allowed:
            decisions[i] = True
            next_allowed = i + quiet_points + 1
    return decisions


def ceiling_figures(
    scores: np.ndarray, labels: np.ndarray, quiet_points: int
) -> dict[str, float | int]:
    """The most labelled segments any one threshold of ``scores`` finds on this server
    with at most :data:`CEILING_FALSE_PER_1K` false decisions per 1,000 normal points:
    a ceiling, since the threshold is chosen in hindsight, on the test labels, per server
    (no runtime rule can do better with one threshold). Decisions are the points at or
    above the threshold, thinned by a quiet period of ``quiet_points``."""
    normal = int((~labels).sum())
    budget = CEILING_FALSE_PER_1K * normal / 1000.0
    finite = np.sort(scores[np.isfinite(scores)])
    top = finite[len(finite) - max(1, int(CEILING_TOP_SHARE * len(finite))) :]
    best = {"events": len(segments(labels)), "events_detected": 0, "false_decisions": 0,
            "normal_points": normal, "threshold": float("inf")}  # fmt: skip
    for threshold in np.unique(top)[::-1].tolist():
        figures = runtime_figures(quiet_decisions(scores >= threshold, quiet_points), labels)
        if figures["false_decisions"] > budget:
            continue
        if figures["events_detected"] > best["events_detected"]:
            best |= {k: figures[k] for k in ("events_detected", "false_decisions")}
            best["threshold"] = threshold
    return best


def episode_figures(
    in_episode: np.ndarray, opened: np.ndarray, labels: np.ndarray
) -> dict[str, float | int]:
    """How the detector's episodes cover labelled segments: segments overlapped by an
    episode, the share of labelled and of normal points inside one, episodes opened and
    those opened on a normal point per 1,000 normal points.

    >>> episode_figures(np.array([0, 1, 1, 1, 0, 0], dtype=bool),
    ...                 np.array([0, 1, 0, 0, 0, 0], dtype=bool),
    ...                 np.array([0, 0, 1, 1, 1, 0], dtype=bool))["labelled_covered"]
    0.6666666666666666
    """
    segs = segments(labels)
    normal = int((~labels).sum())
    return {
        "events_overlapped": sum(bool(in_episode[a : b + 1].any()) for a, b in segs),
        "labelled_points": int(labels.sum()),
        "labelled_in_episode": int((in_episode & labels).sum()),
        "labelled_covered": float((in_episode & labels).sum() / max(int(labels.sum()), 1)),
        "normal_points": normal,
        "normal_in_episode": int((in_episode & ~labels).sum()),
        "episodes_opened": int(opened.sum()),
        "false_opened": int((opened & ~labels).sum()),
    }


def hit_rate(blame: np.ndarray, metrics: tuple[int, ...], share: float) -> float:
    """Share of ``metrics`` among the top ``⌊len(metrics) · share⌋`` of ``blame`` (one
    point's per-metric blame, higher = more to blame).

    >>> hit_rate(np.array([0.9, 0.1, 0.5, 0.0]), (0, 1), 1.0)
    0.5
    >>> hit_rate(np.array([0.9, 0.1, 0.5, 0.0]), (0, 1), 1.5)
    1.0
    """
    top = max(int(len(metrics) * share), 1)
    blamed = np.argsort(-blame, kind="stable")[:top]
    return len(set(blamed.tolist()) & set(metrics)) / len(metrics)


def interpretation_figures(
    blame: np.ndarray,
    flagged: np.ndarray,
    interpretation: tuple[tuple[int, int, tuple[int, ...]], ...],
) -> dict[str, float | int]:
    """HitRate@P for each P of ``HIT_RATE_SHARES``, averaged over the labelled points
    that are ``flagged`` (``blame`` is ``n × metrics``); NaN when none is flagged.

    >>> blame = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    >>> interpretation_figures(blame, np.array([True, True, False]), ((0, 2, (1,)),))
    {'points': 2, 'hit_rate@100%': 0.5, 'hit_rate@150%': 0.5}
    """
    rates: dict[float, list[float]] = {share: [] for share in HIT_RATE_SHARES}
    for first, last, metrics in interpretation:
        for i in range(first, min(last, len(flagged) - 1) + 1):
            if flagged[i]:
                for share in HIT_RATE_SHARES:
                    rates[share].append(hit_rate(blame[i], metrics, share))
    out: dict[str, float | int] = {"points": len(rates[HIT_RATE_SHARES[0]])}
    for share, values in rates.items():
        out[f"hit_rate@{share:.0%}"] = float(np.mean(values)) if values else float("nan")
    return out


# --- methods -------------------------------------------------------------------------------


@dataclass(slots=True)
class MethodRun:
    """One method on one server: a ranking score and per-metric blame for every test
    point, runtime decisions if the method makes any, and its seconds per point."""

    scores: np.ndarray
    blame: np.ndarray
    decisions: np.ndarray | None = None
    seconds_per_point: float = float("nan")
    #: the detector's episodes: points inside an open episode, and points that opened one
    in_episode: np.ndarray | None = None
    opened: np.ndarray | None = None


def pca_method(train: np.ndarray, test: np.ndarray, variance: float) -> MethodRun:
    """PCA reconstruction error with the fewest components keeping ``variance``."""
    started = time.perf_counter()
    mean = train.mean(axis=0)
    _, singular, vt = np.linalg.svd(train - mean, full_matrices=False)
    explained = np.cumsum(singular**2) / max(float(np.sum(singular**2)), 1e-300)
    k = int(np.searchsorted(explained, variance) + 1)
    basis = vt[:k]
    centred = test - mean
    residual = centred - (centred @ basis.T) @ basis
    blame = residual**2
    return MethodRun(blame.sum(axis=1), blame, None, (time.perf_counter() - started) / len(test))


def l2_method(train: np.ndarray, test: np.ndarray) -> MethodRun:
    """The Euclidean norm of each test point."""
    started = time.perf_counter()
    scores = np.linalg.norm(test, axis=1)
    return MethodRun(scores, np.abs(test), None, (time.perf_counter() - started) / len(test))


def nearest_neighbour_method(train: np.ndarray, test: np.ndarray) -> MethodRun:
    """The distance of each test point to its nearest history point."""
    started = time.perf_counter()
    scores = np.empty(len(test))
    blame = np.empty_like(test)
    train_sq = np.sum(train**2, axis=1)
    for start in range(0, len(test), NN_CHUNK):
        chunk = test[start : start + NN_CHUNK]
        d2 = train_sq[None, :] - 2.0 * chunk @ train.T + np.sum(chunk**2, axis=1)[:, None]
        nearest = np.argmin(d2, axis=1)
        diff = chunk - train[nearest]
        scores[start : start + len(chunk)] = np.linalg.norm(diff, axis=1)
        blame[start : start + len(chunk)] = np.abs(diff)
    return MethodRun(scores, blame, None, (time.perf_counter() - started) / len(test))


def detector_for(metrics: tuple[str, ...], train: np.ndarray, settings: Settings):
    """The dataflow's detector over all of a server's metrics, as the fleet wires it
    (one detector per agent), its std floors 1 % of each metric's span in the history."""
    span = train.max(axis=0) - train.min(axis=0)
    floor = {
        m: STD_FLOOR_SHARE_OF_SPAN * float(s if s > 0 else 1.0)
        for m, s in zip(metrics, span, strict=True)
    }
    warmup = max(
        settings.baseline_warmup_heartbeats, int(np.ceil(settings.baseline_warmup_s / STEP_S))
    )
    return BaselineDetector(metrics, floor, settings, warmup=warmup)


def detector_method(server: Server, settings: Settings) -> MethodRun:
    """The fleet-wired detector over the history, then judged on each test point
    before learning it."""
    detector = detector_for(server.metrics, server.train, settings)
    for k, row in enumerate(server.train):
        detector.learn_one(dict(zip(server.metrics, row.tolist(), strict=True)), k * STEP_S)
    t0 = len(server.train) * STEP_S
    n = len(server.test)
    scores, decisions = np.zeros(n), np.zeros(n, dtype=bool)
    in_episode, opened = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    blame = np.zeros_like(server.test)
    started = time.perf_counter()
    for i, row in enumerate(server.test):
        point = dict(zip(server.metrics, row.tolist(), strict=True))
        j = detector.judge_one(point, t0 + i * STEP_S)
        extreme = bool(j.extreme[0].any())
        # the score, its ties at 1.0 broken by the likelihood; a new extreme first
        scores[i] = j.scores[0] + 1e-6 * (EXTREME_RANK if extreme else j.likelihood[0])
        decisions[i] = bool(j.fire[0])
        in_episode[i] = not np.isnan(j.episode.start[0])
        opened[i] = bool(j.episode.opened[0])
        blame[i] = np.abs(j.weighted[0]) + np.where(j.extreme[0], EXTREME_RANK, 0.0)
        detector.learn_one(point, t0 + i * STEP_S)
    seconds = (time.perf_counter() - started) / n
    return MethodRun(scores, blame, decisions, seconds, in_episode, opened)


def methods_for(server: Server, settings: Settings) -> dict[str, MethodRun]:
    """Every method of the table on one server."""
    runs = {"detector (fleet wiring)": detector_method(server, settings)}
    for variance in PCA_VARIANCE:
        runs[f"PCA ({variance:.0%} variance)"] = pca_method(server.train, server.test, variance)
    runs["L2 norm"] = l2_method(server.train, server.test)
    runs["1-NN distance"] = nearest_neighbour_method(server.train, server.test)
    return runs


def evaluate(server: Server, run: MethodRun) -> dict:
    """Every figure of one method on one server."""
    f1, threshold = best_f1(run.scores, server.labels)
    out: dict = {
        "best_f1": f1,
        "best_f1_threshold": threshold,
        "auprc": auprc(run.scores, server.labels),
        "seconds_per_point": run.seconds_per_point,
        "interpretation_at_best_f1": interpretation_figures(
            run.blame, run.scores >= threshold, server.interpretation
        ),
    }
    out["ceiling"] = {
        str(q): ceiling_figures(run.scores, server.labels, q) for q in CEILING_QUIET_POINTS
    }
    if run.decisions is not None:
        out["runtime"] = runtime_figures(run.decisions, server.labels)
        out["interpretation_at_runtime"] = interpretation_figures(
            run.blame, run.decisions, server.interpretation
        )
    if run.in_episode is not None:
        out["episodes"] = episode_figures(run.in_episode, run.opened, server.labels)
    return out


def _mean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarise(per_server: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """Per method: F1/AUPRC/HitRate means over servers; runtime counts summed over servers."""
    methods = next(iter(per_server.values())).keys()
    summary: dict[str, dict] = {}
    for method in methods:
        rows = [per_server[s][method] for s in per_server]
        entry = {
            "best_f1": _mean([r["best_f1"] for r in rows]),
            "auprc": _mean([r["auprc"] for r in rows]),
            "seconds_per_point": _mean([r["seconds_per_point"] for r in rows]),
        }
        for key in ("interpretation_at_best_f1", "interpretation_at_runtime"):
            if key in rows[0]:
                entry[key] = {
                    name: _mean([r[key][name] for r in rows])
                    for name in rows[0][key]
                    if name != "points"
                } | {"points": sum(r[key]["points"] for r in rows)}
        entry["ceiling"] = {}
        for q in rows[0]["ceiling"]:
            found = sum(r["ceiling"][q]["events_detected"] for r in rows)
            events = sum(r["ceiling"][q]["events"] for r in rows)
            entry["ceiling"][q] = {
                "events": events,
                "events_detected": found,
                "event_recall": found / events if events else 0.0,
                "false_decisions": sum(r["ceiling"][q]["false_decisions"] for r in rows),
            }
        if "runtime" in rows[0]:
            runtime = [r["runtime"] for r in rows]
            events = sum(r["events"] for r in runtime)
            detected = sum(r["events_detected"] for r in runtime)
            false, normal = (
                sum(r[k] for r in runtime) for k in ("false_decisions", "normal_points")
            )
            entry["runtime"] = {
                "events": events,
                "events_detected": detected,
                "event_recall": detected / events if events else 0.0,
                "false_decisions": false,
                "false_per_1k_normal": 1000.0 * false / normal if normal else 0.0,
                "delay_median_of_servers": _mean([r["delay_median"] for r in runtime]),
            }
        if "episodes" in rows[0]:
            e = {k: sum(r["episodes"][k] for r in rows) for k in rows[0]["episodes"]
                 if k != "labelled_covered"}  # fmt: skip
            e["labelled_covered"] = e["labelled_in_episode"] / max(e["labelled_points"], 1)
            e["normal_covered"] = e["normal_in_episode"] / max(e["normal_points"], 1)
            e["false_opened_per_1k_normal"] = (
                1000.0 * e["false_opened"] / max(e["normal_points"], 1)
            )
            entry["episodes"] = e
        summary[method] = entry
    return summary


def table(summary: dict[str, dict]) -> list[str]:
    """The Markdown table of docs/detection.md."""
    lines = [
        "| method | best F1 (mean of servers) | AUPRC | HitRate@100 % / @150 % at best F1 "
        "| runtime: events found | false decisions / 1k normal | HitRate@150 % at runtime "
        "| µs per point |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for method, e in summary.items():
        hits = e["interpretation_at_best_f1"]
        cells = [f"{e['best_f1']:.3f}", f"{e['auprc']:.3f}",
                 f"{hits['hit_rate@100%']:.2f} / {hits['hit_rate@150%']:.2f}"]  # fmt: skip
        if "runtime" in e:
            r = e["runtime"]
            cells += [f"{r['events_detected']} of {r['events']} ({r['event_recall']:.2f})",
                      f"{r['false_per_1k_normal']:.2f}",
                      f"{e['interpretation_at_runtime']['hit_rate@150%']:.2f}"]  # fmt: skip
        else:
            cells += ["—", "—", "—"]
        cells.append(f"{1e6 * e['seconds_per_point']:.0f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def ceiling_table(summary: dict[str, dict]) -> list[str]:
    """How many labelled segments each method's score could find at the issue's budget
    of false decisions, with a threshold chosen in hindsight per server."""
    quiets = list(next(iter(summary.values()))["ceiling"])
    lines = [
        "| method | "
        + " | ".join(f"ceiling: events found, quiet {q} points" for q in quiets)
        + " |",
        "|---|" + "--:|" * len(quiets),
    ]
    for method, e in summary.items():
        cells = [f"{c['events_detected']} of {c['events']} ({c['event_recall']:.2f})"
                 for c in e["ceiling"].values()]  # fmt: skip
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data_dir", type=Path, help="ASD directory (omi-1 … omi-12).")
    parser.add_argument("--out", type=Path, help="Write every figure as JSON here.")
    parser.add_argument(
        "--servers", nargs="*", help="Only these servers (folder names), e.g. omi-1 omi-2."
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    settings = Settings()
    servers = load_servers(args.data_dir)
    if args.servers:
        servers = [s for s in servers if s.name in set(args.servers)]
    started = time.perf_counter()
    per_server: dict[str, dict[str, dict]] = {}
    for k, server in enumerate(servers, start=1):
        log("server", n=f"{k}/{len(servers)}", name=server.name, train=len(server.train),
            test=len(server.test), labelled=int(server.labels.sum()))  # fmt: skip
        runs = methods_for(server, settings)
        per_server[server.name] = {name: evaluate(server, run) for name, run in runs.items()}
        d = per_server[server.name]["detector (fleet wiring)"]
        log("scored", name=server.name, detector_f1=round(d["best_f1"], 3),
            events=f"{d['runtime']['events_detected']}/{d['runtime']['events']}",
            false=d["runtime"]["false_decisions"])  # fmt: skip
    summary = summarise(per_server)
    result = {
        "data": str(args.data_dir),
        "servers": [s.name for s in servers],
        "seconds": time.perf_counter() - started,
        "summary": summary,
        "per_server": per_server,
    }
    print("\n".join(table(summary)))
    print()
    print("\n".join(ceiling_table(summary)))
    for method, entry in summary.items():
        if "episodes" in entry:
            e = entry["episodes"]
            print(f"{method}: episodes overlap {e['events_overlapped']} of "
                  f"{entry['runtime']['events']} labelled segments; "
                  f"{e['labelled_covered']:.2f} of labelled and {e['normal_covered']:.3f} of "
                  f"normal points inside one; {e['episodes_opened']} opened, "
                  f"{e['false_opened_per_1k_normal']:.2f} on normal points per 1k")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
        log("written", path=args.out)
    return result


if __name__ == "__main__":
    main()
