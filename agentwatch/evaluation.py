"""Scoring anomaly detectors the way the Numenta Anomaly Benchmark (NAB v1.1) does.

A detector reads each series one point at a time and gives every point an
anomaly score; a point whose score is at least a threshold is a *detection*.
Each series carries labelled anomaly *windows*. NAB rewards the earliest
detection in each window (more the earlier it comes), charges every window
left without a detection, and charges every detection outside the windows
(less when it comes just after a window). The weights of those three come
from an application *profile*. The first 15 % of each series (at most 750
points) is a probationary period that is not scored.

The arithmetic, with ``S(y) = 2·sigmoid(-5y) - 1`` and ``S(y) = -1`` for
``y > 3``:

- a detection at index ``i`` inside a window of ``w`` points whose last index
  is ``r`` sits at ``y = -(r - i + 1) / w`` and earns ``tp · S(y) / S(-1)``;
  only the earliest detection of a window counts;
- a window without a detection costs ``fn``;
- a detection before the first window costs ``fp``; one after a window (last
  index ``r``, width ``w``) costs ``-fp · S(|i - r| / (w - 1))``.

A series' raw score is the sum of those terms; a corpus' raw score is the sum
over its series, normalised to 0 (the null detector, which never fires) …
100 (a detector that hits every window at its first point).

The published leaderboard picks, per detector and profile, the one threshold
that maximises the corpus score (:class:`ThresholdSweep`, as NAB's optimizer
does); what an operator gets is the score at the detector's own, fixed
threshold (:func:`score_series` with that threshold's detections).

Where NAB's code and its own description differ by rounding, this follows the
description in the data's ``SCORING.md`` (``S = -1`` for ``y > 3``; NAB's
sweeper says ``y ≥ 3``, a difference below 1e-6 per detection at exactly
``y = 3``). Like NAB, a window counts towards the null score only if some of
it lies after the probationary period, and towards the perfect score always.

>>> series = LabelledSeries.from_windows("g/s.csv", length=20, windows=[(10, 13)])
>>> credits = point_credits(series)
>>> scores = np.zeros(20)
>>> scores[11] = 0.9  # second point of the 4-point window [10, 13]
>>> result = score_series(credits, scores >= 0.5, PROFILES["standard"])
>>> round(result.raw, 4), result.windows_detected, result.false_positives
(0.967, 1, 0)
>>> round(normalised_score(result.raw, null=-1.0, perfect=1.0), 2)
98.35
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

#: Share of each series that is probation (not scored), and its cap in points.
PROBATION_FRACTION = 0.15
PROBATION_CAP_POINTS = 5000


@dataclass(frozen=True, slots=True)
class Profile:
    """The weights of one NAB application profile (its ``CostMatrix``).

    >>> PROFILES["reward_low_FN_rate"].fn_weight
    2.0
    """

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float


#: NAB's three profiles, as in its ``config/profiles.json``.
PROFILES: dict[str, Profile] = {
    "standard": Profile("standard", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0),
    "reward_low_FP_rate": Profile(
        "reward_low_FP_rate", tp_weight=1.0, fp_weight=0.22, fn_weight=1.0
    ),
    "reward_low_FN_rate": Profile(
        "reward_low_FN_rate", tp_weight=1.0, fp_weight=0.11, fn_weight=2.0
    ),
}


def load_profiles(path: Path) -> dict[str, Profile]:
    """The profiles of a NAB ``config/profiles.json``, by name.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "profiles.json"
    >>> _ = path.write_text('{"p": {"CostMatrix": {"tpWeight": 1, "fpWeight": 0.5, '
    ...                     '"fnWeight": 3, "tnWeight": 1}}}')
    >>> load_profiles(path)["p"]
    Profile(name='p', tp_weight=1.0, fp_weight=0.5, fn_weight=3.0)
    """
    profiles = {}
    for name, entry in json.loads(Path(path).read_text()).items():
        cost = entry["CostMatrix"]
        profiles[name] = Profile(
            name, float(cost["tpWeight"]), float(cost["fpWeight"]), float(cost["fnWeight"])
        )
    return profiles


def scaled_sigmoid(y: float) -> float:
    """NAB's position score ``S(y) = 2·sigmoid(-5y) - 1``, and -1 beyond ``y = 3``.

    ``y = -1`` is the left edge of a window (best), ``0`` its right edge, and
    positive ``y`` lies after the window (a false positive, cheap when close).

    >>> [round(scaled_sigmoid(y), 5) for y in (-1.0, -0.5, 0.0, 1.0, 3.5)]
    [0.98661, 0.84828, 0.0, -0.98661, -1.0]
    """
    if y > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def probation_length(points: int, fraction: float = PROBATION_FRACTION) -> int:
    """How many leading points of a series are not scored.

    NAB: ``min(floor(fraction · n), fraction · 5000)``; returned as the count of
    indices ``i`` below that bound.

    >>> probation_length(1000), probation_length(22695)
    (150, 750)
    """
    return min(math.floor(fraction * points), math.ceil(fraction * PROBATION_CAP_POINTS))


@dataclass(frozen=True, slots=True)
class LabelledSeries:
    """One series of the corpus: its name, timestamps, values and anomaly windows.

    ``windows`` are inclusive index ranges ``(first, last)``, in order, disjoint.

    >>> LabelledSeries.from_windows("g/s.csv", length=5, windows=[(1, 2)]).labels().tolist()
    [0, 1, 1, 0, 0]
    """

    name: str
    timestamps: tuple[str, ...]
    values: np.ndarray
    windows: tuple[tuple[int, int], ...]

    @classmethod
    def from_windows(cls, name: str, length: int, windows: list[tuple[int, int]]) -> LabelledSeries:
        """A series of zeros with the given windows, for examples and tests."""
        timestamps = tuple(f"t{i}" for i in range(length))
        return cls(name, timestamps, np.zeros(length), tuple(map(tuple, windows)))

    @property
    def group(self) -> str:
        """The corpus folder the series lives in (``realKnownCause``)."""
        return self.name.split("/")[0]

    def labels(self) -> np.ndarray:
        """1 for each point inside a window, else 0 (NAB's ``label`` column)."""
        labels = np.zeros(len(self.timestamps), dtype=np.int64)
        for first, last in self.windows:
            labels[first : last + 1] = 1
        return labels


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.strip())


def read_series(csv_path: Path, name: str, window_limits: list[list[str]]) -> LabelledSeries:
    """One NAB data file (``timestamp,value``) with its windows given as timestamps.

    A window limit must be one of the file's timestamps, as NAB requires.
    """
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    timestamps = tuple(row["timestamp"] for row in rows)
    values = np.array([float(row["value"]) for row in rows])
    index_of = {_parse_time(t): i for i, t in enumerate(timestamps)}
    windows = []
    for start, end in window_limits:
        try:
            windows.append((index_of[_parse_time(start)], index_of[_parse_time(end)]))
        except KeyError as missing:
            raise ValueError(
                f"window [{start}, {end}] of {name}: timestamp {missing} is not in {csv_path}; "
                "labels and data must come from the same NAB version"
            ) from None
    return LabelledSeries(name, timestamps, values, tuple(sorted(windows)))


def load_corpus(data_dir: Path, names: list[str] | None = None) -> list[LabelledSeries]:
    """The series of a NAB directory (``data/``, ``labels/combined_windows.json``).

    ``names`` (``group/file.csv``) picks some of them; default all, sorted by name.
    """
    data_dir = Path(data_dir)
    windows = json.loads((data_dir / "labels" / "combined_windows.json").read_text())
    picked = sorted(windows) if names is None else names
    return [read_series(data_dir / "data" / name, name, windows[name]) for name in picked]


@dataclass(frozen=True, slots=True)
class PointCredits:
    """What a detection at each point of one series is worth, before profile weights.

    ``window[i]`` is the index of the window point ``i`` lies in, or -1;
    ``credit[i]`` is ``S(y) / S(-1)`` inside a window (multiply by the TP
    weight) and the ``S(...)`` or -1 of a false positive outside (multiply by
    the FP weight); ``scored[i]`` is False in the probationary period.
    """

    name: str
    window: np.ndarray
    credit: np.ndarray
    scored: np.ndarray
    windows: int
    scorable_windows: int


def point_credits(series: LabelledSeries, fraction: float = PROBATION_FRACTION) -> PointCredits:
    """The :class:`PointCredits` of a series.

    >>> series = LabelledSeries.from_windows("g/s.csv", length=20, windows=[(10, 13)])
    >>> credits = point_credits(series)
    >>> credits.credit[[2, 10, 13, 14]].round(4).tolist()  # before, first, last, just after
    [-1.0, 1.0, 0.5621, -0.6823]
    >>> int(credits.scored.sum())  # 3 probationary points
    17
    """
    length = len(series.timestamps)
    window = np.full(length, -1, dtype=np.int64)
    credit = np.full(length, -1.0)  # a detection before the first window
    best = scaled_sigmoid(-1.0)
    for k, (first, last) in enumerate(series.windows):
        width = last - first + 1
        for i in range(first, last + 1):
            window[i] = k
            credit[i] = scaled_sigmoid(-(last - i + 1) / width) / best
        following = series.windows[k + 1][0] if k + 1 < len(series.windows) else length
        for i in range(last + 1, following):
            # a one-point window has no width to measure distance by: any FP after it is far
            distance = (i - last) / (width - 1) if width > 1 else math.inf
            credit[i] = scaled_sigmoid(distance)
    scored = np.arange(length) >= probation_length(length, fraction)
    scorable_windows = len(set(window[scored & (window >= 0)].tolist()))
    return PointCredits(series.name, window, credit, scored, len(series.windows), scorable_windows)


@dataclass(frozen=True, slots=True)
class SeriesScore:
    """A series' raw NAB score under one profile, and what made it."""

    name: str
    raw: float
    windows_detected: int
    windows_missed: int
    false_positives: int


def score_series(credits: PointCredits, detections: np.ndarray, profile: Profile) -> SeriesScore:
    """Raw score of one series' detections (a bool per point) under ``profile``.

    >>> credits = point_credits(LabelledSeries.from_windows("g/s.csv", 20, [(10, 13)]))
    >>> score_series(credits, np.zeros(20, dtype=bool), PROFILES["standard"]).raw  # null
    -1.0
    """
    detections = np.asarray(detections, dtype=bool) & credits.scored
    inside = detections & (credits.window >= 0)
    outside = detections & (credits.window < 0)
    detected = sorted(set(credits.window[inside].tolist()))
    best_credit = [credits.credit[inside & (credits.window == k)].max() for k in detected]
    raw = (
        profile.tp_weight * float(np.sum(best_credit))
        + profile.fp_weight * float(credits.credit[outside].sum())
        - profile.fn_weight * (credits.scorable_windows - len(detected))
    )
    return SeriesScore(
        credits.name,
        raw,
        windows_detected=len(detected),
        windows_missed=credits.windows - len(detected),
        false_positives=int(outside.sum()),
    )


def null_and_perfect(corpus: list[PointCredits], profile: Profile) -> tuple[float, float]:
    """Raw scores of the detector that never fires and of the perfect one.

    >>> credits = point_credits(LabelledSeries.from_windows("g/s.csv", 20, [(3, 5), (10, 13)]))
    >>> null_and_perfect([credits], PROFILES["reward_low_FN_rate"])
    (-4.0, 2.0)
    """
    null = -profile.fn_weight * sum(c.scorable_windows for c in corpus)
    perfect = profile.tp_weight * sum(c.windows for c in corpus)
    return null, perfect


def normalised_score(raw: float, null: float, perfect: float) -> float:
    """NAB's normalised score: 0 for the null detector, 100 for the perfect one.

    >>> round(normalised_score(57.66075157860637, null=-116.0, perfect=116.0), 2)  # ARTime
    74.85
    """
    return 100.0 * (raw - null) / (perfect - null)


class ThresholdSweep:
    """The corpus score at every threshold, to pick the best one as NAB's optimizer does.

    Candidate thresholds are the distinct scores of the scored points, from
    the highest down, preceded by one above them all (no detection, returned
    as ``inf``). Ties in the best score go to the highest threshold, as in
    NAB. One sort serves every profile.

    >>> credits = point_credits(LabelledSeries.from_windows("g/s.csv", 20, [(10, 13)]))
    >>> scores = np.zeros(20)
    >>> scores[[5, 11]] = [0.6, 0.8]  # an FP before the window, a hit in it
    >>> sweep = ThresholdSweep([credits], [scores])
    >>> threshold, raw = sweep.best(PROFILES["standard"])
    >>> threshold, round(raw, 4)
    (0.8, 0.967)
    """

    def __init__(self, corpus: list[PointCredits], scores: list[np.ndarray]):
        self.corpus = corpus
        score_parts, window_parts, credit_parts = [], [], []
        offset = 0
        for credits, series_scores in zip(corpus, scores, strict=True):
            keep = credits.scored
            score_parts.append(np.asarray(series_scores, dtype=float)[keep])
            window = credits.window[keep]
            window_parts.append(np.where(window >= 0, window + offset, -1))
            credit_parts.append(credits.credit[keep])
            offset += credits.windows
        all_scores = np.concatenate(score_parts) if score_parts else np.zeros(0)
        order = np.argsort(-all_scores, kind="stable")
        ordered = all_scores[order]
        window = np.concatenate(window_parts)[order] if window_parts else np.zeros(0, int)
        credit = np.concatenate(credit_parts)[order] if credit_parts else np.zeros(0)

        # Walking down the sorted scores, what each newly detected point adds:
        # an FP credit, a first hit on a window, or an earlier hit on one.
        fp_gain = np.where(window < 0, credit, 0.0)
        first_hit = np.zeros(len(ordered))
        hit_gain = np.zeros(len(ordered))
        best_in_window: dict[int, float] = {}
        for k in np.flatnonzero(window >= 0):
            w, c = int(window[k]), float(credit[k])
            if w not in best_in_window:
                first_hit[k], hit_gain[k] = 1.0, c
                best_in_window[w] = c
            elif c > best_in_window[w]:
                hit_gain[k] = c - best_in_window[w]
                best_in_window[w] = c
        # a threshold takes in every point scoring at least it: evaluate at the end of ties
        ends = np.flatnonzero(np.r_[ordered[1:] != ordered[:-1], True]) if len(ordered) else []
        self.thresholds = np.r_[math.inf, ordered[ends]]
        self._fp_credit = np.r_[0.0, np.cumsum(fp_gain)[ends]]
        self._windows_hit = np.r_[0.0, np.cumsum(first_hit)[ends]]
        self._hit_credit = np.r_[0.0, np.cumsum(hit_gain)[ends]]

    def raw_scores(self, profile: Profile) -> np.ndarray:
        """The corpus raw score at each of :attr:`thresholds`."""
        null, _ = null_and_perfect(self.corpus, profile)
        return (
            null
            + profile.fn_weight * self._windows_hit
            + profile.tp_weight * self._hit_credit
            + profile.fp_weight * self._fp_credit
        )

    def best(self, profile: Profile) -> tuple[float, float]:
        """The threshold with the highest corpus raw score, and that score."""
        raw = self.raw_scores(profile)
        k = int(np.argmax(raw))
        return float(self.thresholds[k]), float(raw[k])


@dataclass(frozen=True, slots=True)
class CorpusScore:
    """A corpus scored under one profile at one threshold."""

    profile: str
    threshold: float
    raw: float
    normalised: float
    series: list[SeriesScore]


def score_corpus(
    corpus: list[PointCredits],
    scores: list[np.ndarray],
    profile: Profile,
    threshold: float | None = None,
) -> CorpusScore:
    """Score a corpus at ``threshold``, or at the sweep's best one when it is None.

    >>> credits = point_credits(LabelledSeries.from_windows("g/s.csv", 20, [(10, 13)]))
    >>> scores = np.zeros(20)
    >>> scores[[5, 11]] = [0.6, 0.8]
    >>> fixed = score_corpus([credits], [scores], PROFILES["standard"], threshold=0.5)
    >>> round(fixed.raw, 4), round(fixed.normalised, 2)  # 0.967 - 0.11
    (0.857, 92.85)
    >>> score_corpus([credits], [scores], PROFILES["standard"]).threshold
    0.8
    """
    if threshold is None:
        threshold, _ = ThresholdSweep(corpus, scores).best(profile)
    per_series = [
        score_series(credits, np.asarray(series_scores) >= threshold, profile)
        for credits, series_scores in zip(corpus, scores, strict=True)
    ]
    raw = sum(s.raw for s in per_series)
    null, perfect = null_and_perfect(corpus, profile)
    return CorpusScore(
        profile.name, threshold, raw, normalised_score(raw, null, perfect), per_series
    )
