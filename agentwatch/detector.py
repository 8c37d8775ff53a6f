"""Anomaly scores from deviations against an agent's own local level, with an
adaptive threshold.

Each heartbeat is judged in three steps and followed in a fourth, the same for every agent
row at once:

1. **Deviation.** Each metric's z-score against the agent's *local level* (an
   exponentially weighted mean that follows daily cycles and absorbs a new level
   within tens of heartbeats) and the spread of values about it
   (:func:`agentwatch.baselines.learn_level`); for a metric with a strong *daily
   profile* (:func:`learn_daily`: one daily curve per agent, learned by time of day,
   each metric's loading on it), against the level plus the profile's value at that
   time of day, so the level no longer chases the cycle and a value normal at 3 pm
   but not at 3 am stands out at 3 am. The heartbeat's *surprise* is
   ``-ln p``, ``p = min(1, F · erfc(max|z| / √2))``: the Bonferroni-corrected chance
   of a metric this far out; about Exp(1) for ordinary heartbeats.
2. **Adaptive threshold (anomaly likelihood, as HTM's).** A short exponentially
   weighted average of the surprise is compared with the agent's own history of
   that average (its mean and variance, learned robustly from a cautious prior):
   ``likelihood`` is how many standard deviations the recent surprise stands above
   what is usual *for this agent*, so a noisy agent needs a larger deviation than a
   quiet one. The score is its tail probability on a log scale,
   ``min(1, -log10(tail) / 10)``, in [0, 1]; the default threshold, 0.99, is a tail
   of 10^-9.9. A value beyond the range the agent has shown so far (by a margin of
   its span, once it has shown enough) scores 1 at once.
3. **Decision.** A heartbeat is anomalous when its score reaches the threshold
   and the agent is not in its quiet period: after an anomaly fires, for
   ``quiet_s`` seconds of event time that agent does not fire again on the metrics
   that drove it (their scores are still reported), so one incident raises one
   anomaly; a metric the quiet period is not about, ``quiet_break_sigma`` from its
   level or beyond its range, still fires (and joins the quiet period). On an agent whose
   metrics' tails are not learned (fewer than ``tail_min_features`` metrics: a single
   series), for ``repeat_s`` seconds after the quiet period a repeat is held to a stricter
   bar: the same holds, and a new extreme (a value beyond the range) of the metrics the
   quiet period was about fires too, but not a high score alone (a burst that comes back
   is taken as the same incident until it goes further than any value seen). On such an
   agent too, a heartbeat whose every deviation is under ``envelope_ratio`` of the largest
   it has shown lately in that direction (its *envelope*, halved every
   ``envelope_half_life_s``, raised at most ``envelope_growth`` times a heartbeat) is
   *routine* and does not fire on a high score alone: a burst well within the series' usual
   bursts is not news (:func:`within_envelope`). Where tails are learned, they judge how
   routine a metric's burst is, metric by metric (one envelope over all of an agent's
   metrics would let a past burst of one hide an anomaly of another). Such an agent also
   keeps its *usual day*: each metric's value per bin of the UTC day (``usual_day_bins``),
   which, unlike the local level, does not follow today; a day that keeps off its usual
   shape (a missing morning climb, a holiday) drifts from it, and a drift of
   ``usual_day_sigma`` scores 1 and fires outside the quiet period and the repeat window
   (:func:`usual_day`).
4. **Episode.** An anomaly that fires opens an *episode* about the metrics it names,
   unless one is open already (then it joins it). The episode stays open while one of
   its metrics stands ``reason_sigma`` from the agent's *slow* baseline (which, unlike
   the local level, does not absorb a level shift within tens of heartbeats) or the
   agent fires again, and ends once ``episode_end_s`` seconds of event time pass without
   either: its end is the last heartbeat that stood out. A level shift or a drift is one
   episode with a start and an end (:func:`episodes`), however many heartbeats it lasts.

Time, not counts: the recent surprise's weight and the slow averages' memory are shares per
heartbeat, but a heartbeat's share is at least what a half-life (a time constant) in event
time gives it for the interval since the agent's previous heartbeat (:func:`point_weights`):
for an agent beating every hour "recent" is the last half hour or so, not the last ten hours,
and the memory ten days, not 120, while a fast agent is not slowed down (at NAB's 5 min the
two agree; at 30 s the heartbeats decide). The local level's weight stays per heartbeat
(as a duration it cost NAB: docs/detection.md).

Calibration, so a clean agent rarely fires: each deviation is weighted per metric
and direction (``anomaly_direction_weights``: a drop of latency is harmless), and
its chance is taken from the metric's own tail once that is heavier than a normal
law's (:func:`tail_chances`: the share of deviations beyond 3 std and their mean
excess, learned per agent, on agents with ``anomaly_tail_min_features`` metrics or more),
Bonferroni-corrected over the metrics. A new extreme
scores 1 once the agent has been watched ``extreme_after_s`` seconds, and (where tails
are learned) only when it is also improbable for that tail (``extreme_max_p``).

Every anomaly names the metrics that drove it (:func:`reasons`).

:class:`BaselineDetector` is the same detector for one series, with River's
anomaly-detector API (``learn_one`` / ``score_one``), for evaluation on recorded
data; the dataflow runs the array form (:mod:`agentwatch.fleet`) over thousands
of agents at once. Both call :func:`judge` and :func:`learn_judged`.

>>> detector = BaselineDetector(features=("cpu",), std_floor={"cpu": 1.0}, warmup=5)
>>> for value in [40.0, 42.0, 41.0, 39.0, 40.0, 41.0] * 3:
...     detector.learn_one({"cpu": value})
>>> detector.score_one({"cpu": 41.0}) < 0.5
True
>>> detector.score_one({"cpu": 60.0})
1.0
>>> detector.explain_one({"cpu": 60.0})[0]["feature"]
'cpu'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
from river.base import AnomalyDetector

from agentwatch.baselines import (
    beyond_range,
    clip_limits,
    clipped,
    learn,
    learn_level,
    widen_range,
)
from agentwatch.rows import ArraySpec, allocate
from agentwatch.settings import Settings
from agentwatch.special import erfc

#: A score of 1 is a recent surprise whose tail probability is 10**-SCORE_DECADES or less.
SCORE_DECADES = 10.0
#: The mean a surprise history starts from (a surprise is about Exp(1)).
SURPRISE_PRIOR_MEAN = 1.0
#: The smallest chance a surprise or a tail is taken from, so logarithms stay finite.
_SMALLEST_P = 1e-300
#: Where a metric's own tail starts, in std (peaks over threshold; see :func:`tail_chances`).
TAIL_SIGMA = 3.0
#: Seconds in a day: the daily profile's period (UTC).
DAY_S = 86_400.0
#: The daily curve's power (in slow variance) below which loadings are not learned from it.
DAILY_MIN_POWER = 0.01
#: ln 2: a half-life's decay rate is LN2 / half_life.
LN2 = float(np.log(2.0))
#: Where a fresh agent's envelopes start (weighted std up and down; see :func:`within_envelope`):
#: about the furthest a normal law's heartbeats go.
ENVELOPE_START = 3.0
#: A deviation from the usual day (:func:`usual_day`) is clipped here before it is averaged
#: into the drift: one spike does not make a drift.
USUAL_DAY_CLIP = 5.0
#: A bin's spread is this many times its mean absolute stray (about a std for a normal law,
#: √(π/2))…
USUAL_DAY_SPREAD = 1.25
#: …and at least this many times the metric's std floor (a bin that never strays).
USUAL_DAY_MIN_SPREAD = 3.0
#: Low-discrepancy steps (golden ratios) that draw :func:`dithered`'s random numbers.
DITHER_TIME_STEP, DITHER_COLUMN_STEP = 0.6180339887498949, 0.7548776662466927


def scores_from_deviations(z: np.ndarray) -> np.ndarray:
    """Scores in [0, 1] for rows of signed z-scores (``n × F``).

    >>> scores_from_deviations(np.array([[0.0, 1.0], [0.0, 6.0]])).round(3).tolist()
    [0.365, 1.0]
    """
    features = z.shape[1]
    furthest = np.abs(z).max(axis=1)
    return 1.0 - np.minimum(1.0, features * erfc(furthest / np.sqrt(2.0)))


def surprises(z: np.ndarray) -> np.ndarray:
    """Surprise ``-ln p`` of rows of signed z-scores (``n × F``), where
    ``p = min(1, F · erfc(max|z| / √2))``; capped near 690 (``p`` of 1e-300).

    >>> surprises(np.array([[0.0, 0.5], [0.0, 6.0]])).round(2).tolist()
    [0.0, 19.35]
    """
    features = z.shape[1]
    furthest = np.abs(z).max(axis=1)
    p = np.minimum(1.0, features * erfc(furthest / np.sqrt(2.0)))
    return np.maximum(-np.log(np.maximum(p, _SMALLEST_P)), 0.0)


def gaussian_tail(u: float) -> tuple[float, float]:
    """The share of a normal law beyond ``±u`` and its mean excess beyond ``u``: what a
    metric's tail estimate starts from.

    >>> [round(x, 4) for x in gaussian_tail(3.0)]
    [0.0027, 0.2831]
    """
    rate = float(erfc(u / np.sqrt(2.0)))
    density = float(np.exp(-u * u / 2.0) / np.sqrt(2.0 * np.pi))
    return rate, float(2.0 * density / rate - u)


def tail_chances(z: np.ndarray, rate: np.ndarray, excess: np.ndarray, u: float) -> np.ndarray:
    """Per metric, the chance of a deviation at least ``|z|``: the normal tail, or, beyond
    ``u``, the metric's own tail if heavier (peaks over threshold: the share ``rate`` of
    deviations beyond ``u``, exponential beyond it with mean excess ``excess``), so a
    metric whose history has heavy tails needs a larger deviation to surprise.

    >>> rate, excess = gaussian_tail(3.0)
    >>> tail_chances(np.array([[6.0, 6.0]]), np.array([[rate, 0.03]]),
    ...              np.array([[excess, 1.0]]), 3.0).tolist()[0][1] > 1e-3
    True
    """
    a = np.abs(z)
    normal = erfc(a / np.sqrt(2.0))
    own = rate * np.exp(-(a - u) / np.maximum(excess, 1e-6))
    return np.where(a > u, np.maximum(normal, own), normal)


def calibrated_surprises(chances: np.ndarray) -> np.ndarray:
    """Surprise ``-ln p`` of rows of per-metric chances (``n × F``), ``p = min(1, F · min
    chance)``: the Bonferroni-corrected chance of the furthest metric; capped near 690.

    >>> calibrated_surprises(np.array([[1.0, 0.5], [1.0, 1e-9]])).round(2).tolist()
    [0.0, 20.03]
    """
    p = np.minimum(1.0, chances.shape[1] * chances.min(axis=1))
    return np.maximum(-np.log(np.maximum(p, _SMALLEST_P)), 0.0)


def weighted(z: np.ndarray, up: np.ndarray, down: np.ndarray) -> np.ndarray:
    """Deviations weighted per metric and direction (a harmless drop counts less).

    >>> weighted(np.array([[2.0, -2.0]]), np.array([1.0, 1.0]), np.array([1.0, 0.5])).tolist()
    [[2.0, -1.0]]
    """
    features = z.shape[1]
    # each metric's pair of weights looked up by the deviation's sign: the same numbers as
    # z * np.where(z >= 0, up, down), whose branches a random sign keeps mispredicting
    # (several times slower over a fleet's rows)
    code = np.int8 if 2 * features <= np.iinfo(np.int8).max else np.intp
    pick = (z >= 0).view(np.int8).astype(code, copy=False) * code(features)
    pick += np.arange(features, dtype=code)
    weights = np.concatenate([np.broadcast_to(down, features), np.broadcast_to(up, features)])
    return z * weights.take(pick)


def metric_bits(named: np.ndarray) -> np.ndarray:
    """Rows of named metrics (``n × F`` booleans, F ≤ 32) as bit masks.

    >>> metric_bits(np.array([[True, False, True]])).tolist()
    [5]
    """
    return (named.astype(np.uint32) << np.arange(named.shape[1], dtype=np.uint32)).sum(
        axis=1, dtype=np.uint32
    )


def driving(a: np.ndarray, extreme: np.ndarray, reason_sigma: float) -> np.ndarray:
    """The bit mask of the metrics driving each row of absolute weighted deviations ``a``
    (``n × F``): those ``reason_sigma`` out or beyond their range (``extreme``), and the
    furthest.

    >>> driving(np.array([[1.0, 4.0, 0.5], [1.0, 2.0, 0.5]]), np.zeros((2, 3), bool), 3.0)
    array([2, 2], dtype=uint32)
    """
    return metric_bits((a >= reason_sigma) | extreme | (a == a.max(axis=1, keepdims=True)))


def recent_surprise(
    average: np.ndarray, surprise: np.ndarray, weight: float, first: np.ndarray
) -> np.ndarray:
    """The short exponentially weighted average of surprises, this heartbeat's included
    (``first`` rows start it afresh).

    >>> recent_surprise(np.array([1.0, 1.0]), np.array([11.0, 11.0]), 0.1,
    ...                 np.array([False, True])).tolist()
    [2.0, 11.0]
    """
    return np.where(first, surprise, average + weight * (surprise - average))


def within_envelope(
    up: np.ndarray,
    down: np.ndarray,
    zw: np.ndarray,
    interval: np.ndarray | None,
    p: DetectorParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows' *envelopes* after this heartbeat, upward and downward, and the rows whose
    heartbeat is *routine*: every weighted deviation (``zw``, ``n × F``) under
    ``p.envelope_ratio`` of its direction's envelope, so a high score alone does not fire it.

    An envelope (``up``, ``down``: one per row) is the largest deviation the agent has shown
    lately in that direction, in weighted std: it halves every ``p.envelope_half_life_s`` of
    event time (``interval`` since each row's previous heartbeat; NaN or None: no decay) and
    a heartbeat raises it at most ``p.envelope_growth`` times. Bursts that keep coming back
    ratchet it up; a single giant spike doubles it, not more, so a level shift after it is
    still news. A row with a NaN deviation is not routine and does not raise its envelopes.

    >>> p = replace(DetectorParams.from_settings(Settings.model_construct(), np.zeros(1)),
    ...             envelope_ratio=0.25, envelope_growth=2.0)
    >>> up, down = np.array([3.0]), np.array([3.0])
    >>> for z in (40.0, 40.0, 40.0):  # a burst that keeps coming back: 3 -> 6 -> 12 -> 24
    ...     up, down, routine = within_envelope(up, down, np.array([[z]]), None, p)
    >>> up.tolist(), down.tolist(), bool(routine[0])
    ([24.0], [3.0], False)
    >>> [bool(within_envelope(up, down, np.array([[z]]), None, p)[2][0])
    ...  for z in (5.0, 7.0, -1.0, -0.7)]
    [True, False, False, True]
    >>> week = np.array([604_800.0])  # a half-life later, they are halved
    >>> [e.tolist() for e in within_envelope(up, down, np.array([[0.0]]), week, p)[:2]]
    [[12.0], [1.5]]
    """
    up, down = up.astype(np.float64), down.astype(np.float64)
    if interval is not None:
        decay = np.exp2(np.nan_to_num(interval, nan=0.0) * (-1.0 / p.envelope_half_life_s))
        up *= decay
        down *= decay
    rise, fall = row_max(zw), row_max(-zw)
    routine = (rise < p.envelope_ratio * up) & (fall < p.envelope_ratio * down)
    up = np.fmax(up, np.minimum(rise, p.envelope_growth * up))
    down = np.fmax(down, np.minimum(fall, p.envelope_growth * down))
    return up, down, routine


def likelihood_scores(likelihood: np.ndarray, extreme: np.ndarray) -> np.ndarray:
    """Scores in [0, 1] from how many std the recent surprise stands above its usual
    level: ``min(1, -log10(tail) / SCORE_DECADES)`` of the normal tail; 1 for rows
    with a value beyond the range seen so far.

    >>> likelihood_scores(np.array([0.0, 6.0, 9.0, 0.0]),
    ...                   np.array([False, False, False, True])).round(3).tolist()
    [0.03, 0.901, 1.0, 1.0]
    """
    tail = np.maximum(0.5 * erfc(likelihood / np.sqrt(2.0)), _SMALLEST_P)
    scores = np.minimum(1.0, -np.log10(tail) / SCORE_DECADES)
    return np.where(extreme, 1.0, scores)


def detector_arrays(
    features: int, harmonics: int = 2, envelope: bool = False, usual_day_bins: int = 0
) -> dict[str, ArraySpec]:
    """The detector's per-agent arrays beside the slow baseline's ``mean``, ``var``
    and ``count`` (dtype, value of a fresh row, shape of a row): 6 per-feature
    arrays and 8 scalars, ``(6 F + 8) × 4`` bytes per agent, and the daily profile's
    ``2 harmonics + F`` float16 (248 in all for F = 8 and 2 harmonics).

    They are float32: all arithmetic is done in float64 and only the result is
    stored, rounded to 7 significant digits — far finer than the spread the level
    is judged with (a level of 1e9 bytes is kept to ~64 bytes); the quiet
    period's end is in seconds since the agent's first heartbeat (to 1 s for 190 days),
    and the metrics it quiets a bit mask (``quiet_metrics``, F ≤ 32). ``tail_rate`` and
    ``tail_excess`` are each metric's tail beyond ``anomaly_tail_sigma`` (see
    :func:`tail_chances`), starting from a normal law's. ``episode_start`` and
    ``episode_seen`` are the open episode's start and its last heartbeat that stood out,
    in seconds since the agent's first heartbeat (``episode_start`` NaN: none open), and
    ``episode_metrics`` the bit mask of the metrics it is about (see :func:`episodes`).
    With ``envelope`` (agents whose tails are not learned: a single series), two more
    float32, ``envelope_up`` and ``envelope_down``: the largest deviations upward and
    downward the agent has shown lately (see :func:`within_envelope`).
    ``daily_shape`` and ``daily_loading`` are the daily profile (see :func:`learn_daily`;
    none with 0 harmonics): float16, rounded at random (:func:`dithered`) so its slow
    average keeps learning. With ``usual_day_bins`` (also only where tails are not learned),
    each metric's usual day (:func:`usual_day`): ``usual_value`` (NaN: a bin not seen yet)
    and ``usual_stray`` per bin, float32 (a value of 1e9 bytes needs more than float16),
    and ``usual_drift``.

    >>> from agentwatch.rows import bytes_per_row
    >>> bytes_per_row(detector_arrays(8)), bytes_per_row(detector_arrays(1, envelope=True))
    (256, 82)
    >>> bytes_per_row(detector_arrays(1, envelope=True, usual_day_bins=48))
    470
    """
    if features > 32:
        raise ValueError(f"{features} features: the quiet period's bit mask holds 32 at most")
    rate, excess = gaussian_tail(TAIL_SIGMA)
    f32, per_feature = np.dtype(np.float32), (features,)
    f16 = np.dtype(np.float16)
    daily: dict[str, ArraySpec] = {
        "daily_shape": (f16, 0.0, (2 * harmonics,)),
        "daily_loading": (f16, 1.0, per_feature),
    }
    return {
        "level": (f32, 0.0, per_feature),
        "resid_var": (f32, 0.0, per_feature),
        "low": (f32, np.nan, per_feature),
        "high": (f32, np.nan, per_feature),
        "surprise_avg": (f32, 0.0, ()),
        "surprise_mean": (f32, 0.0, ()),
        "surprise_var": (f32, 0.0, ()),
        "quiet_until": (f32, 0.0, ()),
        "quiet_metrics": (np.dtype(np.uint32), 0, ()),
        "tail_rate": (f32, rate, per_feature),
        "tail_excess": (f32, excess, per_feature),
        # (float64: in float32, seconds since a first heartbeat a year back are 2 s apart)
        "episode_start": (np.dtype(np.float64), np.nan, ()),
        "episode_seen": (np.dtype(np.float64), 0.0, ()),
        "episode_metrics": (np.dtype(np.uint32), 0, ()),
        **(daily if harmonics else {}),
        **(
            {"envelope_up": (f32, ENVELOPE_START, ()), "envelope_down": (f32, ENVELOPE_START, ())}
            if envelope
            else {}
        ),
        **(
            {
                "usual_value": (f32, np.nan, (features, usual_day_bins)),
                "usual_stray": (f32, 0.0, (features, usual_day_bins)),
                "usual_drift": (f32, 0.0, per_feature),
            }
            if usual_day_bins
            else {}
        ),
    }


@dataclass(frozen=True, slots=True)
class DetectorParams:
    """The numbers :func:`judge` and :func:`learn_judged` work with, taken from
    :class:`agentwatch.settings.Settings` (``baseline_*`` and ``anomaly_*``) by
    :meth:`from_settings`, the one place that maps settings to the detector."""

    std_floor: np.ndarray
    rel_floor: float
    warmup: int
    memory: int
    clip_sigma: float
    level_weight: float
    level_clip_sigma: float
    extreme_margin: float
    surprise_weight: float
    likelihood_std_floor: float
    likelihood_prior_std: float
    threshold: float
    quiet_s: float
    repeat_s: float
    extreme_after_s: float
    up_weight: np.ndarray
    down_weight: np.ndarray
    reason_sigma: float
    quiet_break_sigma: float
    tail_prior: int
    tail_min_exceedances: float
    tail_min_features: int
    extreme_max_p: float
    episode_end_s: float
    daily_harmonics: int
    daily_memory_s: float
    daily_warmup_s: float
    daily_min_share: float
    daily_learn_every_s: float
    surprise_half_life_s: float
    memory_s: float
    envelope_ratio: float
    envelope_growth: float
    envelope_half_life_s: float
    usual_day_bins: int
    usual_day_weight: float
    usual_day_drift_weight: float
    usual_day_sigma: float
    usual_day_warmup_s: float

    @classmethod
    def from_settings(
        cls, settings: Settings, std_floor: np.ndarray, features: tuple[str, ...] = ()
    ) -> DetectorParams:
        """The detector's numbers in ``settings``, with ``std_floor`` per feature (and the
        direction weights of ``features``; a feature not in the settings weighs 1)."""
        weights = settings.anomaly_direction_weights
        up = np.array([weights.get(f, (1.0, 1.0))[0] for f in features] or [1.0])
        down = np.array([weights.get(f, (1.0, 1.0))[1] for f in features] or [1.0])
        return cls(
            std_floor=np.asarray(std_floor, dtype=np.float64),
            rel_floor=settings.anomaly_min_relative_std,
            warmup=settings.baseline_warmup_heartbeats,
            memory=settings.baseline_memory_heartbeats,
            clip_sigma=settings.baseline_learn_clip_sigma,
            level_weight=settings.baseline_level_weight,
            level_clip_sigma=settings.baseline_level_clip_sigma,
            extreme_margin=settings.anomaly_extreme_margin,
            surprise_weight=settings.anomaly_surprise_weight,
            likelihood_std_floor=settings.anomaly_likelihood_std_floor,
            likelihood_prior_std=settings.anomaly_likelihood_prior_std,
            threshold=settings.anomaly_threshold,
            quiet_s=settings.anomaly_quiet_s,
            repeat_s=settings.anomaly_repeat_s,
            extreme_after_s=settings.anomaly_extreme_after_s,
            up_weight=up,
            down_weight=down,
            reason_sigma=settings.anomaly_reason_sigma,
            quiet_break_sigma=settings.anomaly_quiet_break_sigma,
            tail_prior=settings.anomaly_tail_prior_heartbeats,
            tail_min_exceedances=settings.anomaly_tail_min_exceedances,
            tail_min_features=settings.anomaly_tail_min_features,
            extreme_max_p=settings.anomaly_extreme_max_p,
            episode_end_s=settings.anomaly_episode_end_s,
            daily_harmonics=settings.anomaly_daily_harmonics,
            daily_memory_s=settings.anomaly_daily_memory_s,
            daily_warmup_s=settings.anomaly_daily_warmup_s,
            daily_min_share=settings.anomaly_daily_min_share,
            daily_learn_every_s=settings.anomaly_daily_learn_every_s,
            surprise_half_life_s=settings.anomaly_surprise_half_life_s,
            memory_s=settings.baseline_memory_s,
            envelope_ratio=settings.anomaly_envelope_ratio,
            envelope_growth=settings.anomaly_envelope_growth,
            envelope_half_life_s=settings.anomaly_envelope_half_life_s,
            usual_day_bins=settings.anomaly_usual_day_bins,
            usual_day_weight=settings.anomaly_usual_day_weight,
            usual_day_drift_weight=settings.anomaly_usual_day_drift_weight,
            usual_day_sigma=settings.anomaly_usual_day_sigma,
            usual_day_warmup_s=settings.anomaly_usual_day_warmup_s,
        )

    def tails_learned(self, features: int) -> bool:
        """Whether an agent with ``features`` metrics learns their tails (then they judge a
        repeat and a burst); with fewer, a single series, the repeat window and the
        envelope do, and the usual day (:func:`usual_day`) watches its shape."""
        return features >= self.tail_min_features

    def arrays_for(self, features: int) -> dict[str, ArraySpec]:
        """The detector arrays of an agent with ``features`` metrics
        (:func:`detector_arrays`): the envelope and the usual day only where tails are not
        learned."""
        single = not self.tails_learned(features)
        return detector_arrays(features, self.daily_harmonics, single,
                               self.usual_day_bins if single else 0)  # fmt: skip


def weight_per_point(
    interval: np.ndarray | None, weight: float, half_life_s: float
) -> np.ndarray | float:
    """Each row's share in an exponentially weighted average: ``weight`` per heartbeat, or,
    if more, what halves the rest's every ``half_life_s`` of event time,
    ``1 − 0.5^(interval / half_life_s)`` for the ``interval`` (s) since the row's previous
    heartbeat (NaN: its first; None: not known). ``weight`` itself (a float) when no row's
    interval makes the share larger, so a fleet beating every 30 s or 5 min computes
    exactly what a weight per heartbeat gives.

    >>> weight_per_point(np.array([30.0, 300.0, 3600.0, np.nan]), 0.05, 4055.0).round(3).tolist()
    [0.05, 0.05, 0.46, 0.05]
    >>> weight_per_point(np.array([30.0, 300.0, -5.0]), 0.05, 4055.0)
    0.05
    """
    if interval is None or weight >= 1.0:
        return weight
    beyond = -half_life_s * np.log2(1.0 - weight)  # where the share over time is larger
    slow = interval > beyond
    if not slow.any():
        return weight
    return np.where(slow, -np.expm1((-LN2 / half_life_s) * interval), weight)


@dataclass(frozen=True, slots=True)
class PointWeights:
    """The exponential weights of a pass's heartbeats (:func:`point_weights`): floats when
    they are the per-heartbeat ones for every row, else one per row. ``surprise``: the
    heartbeat's share in the recent surprise; ``memory``: the heartbeats the slow averages
    remember (the slow baseline, the spread about the level, the surprise history, the
    tails: ``1 / min(n, memory)``)."""

    surprise: np.ndarray | float
    memory: np.ndarray | float


def point_weights(interval: np.ndarray | None, p: DetectorParams) -> PointWeights:
    """The rows' weights for heartbeats ``interval`` s after their previous ones: each
    per-heartbeat weight of ``p``, or its half-life's share if larger
    (:func:`weight_per_point`; the memory's time constant ``p.memory_s``).

    >>> p = DetectorParams.from_settings(Settings.model_construct(), np.zeros(1))
    >>> point_weights(np.array([30.0, 300.0]), p)
    PointWeights(surprise=0.1, memory=2880)
    >>> w = point_weights(np.array([300.0, 3600.0]), p)
    >>> w.surprise.round(2).tolist(), w.memory.round().tolist()
    ([0.1, 0.72], [2880.0, 241.0])
    """
    memory_share = weight_per_point(interval, 1.0 / p.memory, LN2 * p.memory_s)
    return PointWeights(
        surprise=weight_per_point(interval, p.surprise_weight, p.surprise_half_life_s),
        memory=p.memory if np.ndim(memory_share) == 0 else 1.0 / memory_share,
    )


def row_max(a: np.ndarray) -> np.ndarray:
    """The largest value of each row of ``a`` (``n × F``), NaN where a row holds one: the
    same as ``a.max(axis=1)``, a column at a time over many rows (numpy reduces a short
    last axis row by row, several times slower than F whole-column maxima).

    >>> row_max(np.array([[1.0, 3.0, 2.0], [np.nan, 0.0, 1.0]])).tolist()
    [3.0, nan]
    """
    rows, features = a.shape
    if features < 2 or rows < 32 * features:  # few rows (one series, a small shard)
        return a.max(axis=1)
    furthest = np.maximum(a[:, 0], a[:, 1])
    for column in range(2, features):
        np.maximum(furthest, a[:, column], out=furthest)
    return furthest


def least_tail_chances(a: np.ndarray, rate: np.ndarray, excess: np.ndarray, u: float) -> np.ndarray:
    """Per row of absolute deviations ``a`` (``n × F``), the least of :func:`tail_chances`
    (``rate``, ``excess``: the rows' tails, or callables giving them for some rows): what
    ``tail_chances(a, rate, excess, u).min(axis=1)`` gives, with ``erfc`` taken about once a
    row instead of once a metric.

    In a row with no deviation beyond ``u`` (the usual one) every chance is the normal
    tail, which decreases with the deviation: the least is the furthest metric's. The
    metrics within 1e-12 of the furthest are all taken, so the result never rests on the
    last bit of ``erfc``. A row with a deviation beyond ``u`` (or a NaN) is taken metric by
    metric, as :func:`tail_chances` does.

    >>> a = np.array([[0.5, 2.0, 1.0], [4.0, 1.0, 0.0], [np.nan, 0.0, 0.0]])
    >>> rate, excess = np.full((3, 3), 0.01), np.full((3, 3), 0.5)
    >>> bool((least_tail_chances(a, rate, excess, 3.0)
    ...       == tail_chances(a, rate, excess, 3.0).min(axis=1))[:2].all())
    True
    >>> float(least_tail_chances(a, rate, excess, 3.0)[2])
    nan
    """
    n, features = a.shape
    if n * features <= 256:  # a few rows (one series): metric by metric takes fewer calls
        every = np.arange(n)
        rate, excess = (x(every) if callable(x) else x for x in (rate, excess))
        return tail_chances(a, rate, excess, u).min(axis=1)
    furthest = row_max(a)
    least = np.full(n, np.inf)
    _least_normal(least, a, furthest, np.arange(n))
    special = np.flatnonzero(~(furthest <= u))
    if len(special):
        # rows with a deviation beyond u: its own tail where beyond, the normal one elsewhere
        a_of = a[special]
        beyond = a_of > u
        within = np.where(beyond, -np.inf, a_of)  # (a NaN stays)
        least[special] = np.inf
        _least_normal(least, within, row_max(within), special)
        at = np.flatnonzero(beyond)
        rate_of = rate(special) if callable(rate) else rate[special]
        excess_of = excess(special) if callable(excess) else excess[special]
        chances = tail_chances(a_of.reshape(-1)[at], rate_of.reshape(-1)[at],
                               excess_of.reshape(-1)[at], u)  # fmt: skip
        np.minimum.at(least, special[at // features], chances)
        least[special[np.isnan(row_max(a_of))]] = np.nan
    return least


def _least_normal(least: np.ndarray, a: np.ndarray, furthest: np.ndarray, rows: np.ndarray) -> None:
    """Lower ``least[rows[i]]`` to the least normal tail of row ``a[i]``: that of its
    ``furthest`` deviation and of any within 1e-12 of it."""
    features = a.shape[1]
    near = a >= (furthest * (1.0 - 1e-12))[:, None]
    at = np.flatnonzero(near)
    chances = erfc(a.reshape(-1)[at] / np.sqrt(2.0))
    np.minimum.at(least, rows[at // features], chances)


@dataclass(slots=True)
class RowsBefore:
    """The state of a pass's agent rows as :func:`judge` read it (the per-agent arrays of
    :func:`detector_arrays` and the slow baseline, taken once): what
    :func:`learn_judged` learns from, so neither reads the rows twice."""

    count: np.ndarray
    level: np.ndarray
    resid_var: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    low: np.ndarray
    high: np.ndarray
    tail_rate: np.ndarray
    surprise_avg: np.ndarray
    surprise_mean: np.ndarray
    surprise_var: np.ndarray


@dataclass(slots=True)
class Episodes:
    """The episodes of a pass's rows after its heartbeats (:func:`episodes`).

    ``start``: the start of the episode each row is in after this heartbeat, in seconds
    since its agent's first heartbeat (NaN: none; the heartbeat's own time for a row
    that opened one); ``opened``: rows whose heartbeat opened an episode; ``held``: rows
    whose heartbeat stood out for the episode it is in (it fired, or one of the
    episode's metrics stands out from the slow baseline); ``ended``: rows whose episode
    ended before this heartbeat; ``end``: for those, when its last heartbeat that stood
    out was, and ``began``: when it started (both NaN for the others); ``metrics``: the bit
    mask of the metrics the row's episode is about after this heartbeat (0: none)."""

    start: np.ndarray
    opened: np.ndarray
    held: np.ndarray
    ended: np.ndarray
    end: np.ndarray
    metrics: np.ndarray
    began: np.ndarray


def episodes(
    state: object,
    rows: np.ndarray,
    base_z: Callable[[np.ndarray], np.ndarray],
    fire: np.ndarray,
    named: np.ndarray,
    elapsed: np.ndarray,
    p: DetectorParams,
) -> Episodes:
    """The rows' episodes after this heartbeat, without learning them.

    A row that fires opens an episode about its ``named`` metrics when none is open (or
    joins the open one, adding them). An open episode is *held* by a heartbeat that fires
    or where one of its metrics stands ``p.reason_sigma`` weighted std from the slow
    baseline (``base_z(some)``: those rows' weighted deviations from it, taken only for
    rows with an open episode: few); it ends at the first heartbeat that does neither
    ``p.episode_end_s`` after the last that did.

    >>> p = replace(DetectorParams.from_settings(Settings.model_construct(), np.zeros(1)),
    ...             episode_end_s=60.0)
    >>> state = allocate_detector(features=1, capacity=1)
    >>> row = np.array([0])
    >>> def step(z, t, fire=False):
    ...     e = episodes(state, row, lambda some: np.array([[z]]), np.array([fire]),
    ...                  np.array([1 if fire else 0], dtype=np.uint32), np.array([t]), p)
    ...     learn_episodes(state, row, e, np.array([t]))
    ...     return e
    >>> bool(step(9.0, 0.0, fire=True).opened[0])      # fires: the episode opens at 0 s
    True
    >>> [bool(step(z, t).held[0]) for z, t in ((8.0, 30.0), (5.0, 60.0), (1.0, 90.0))]
    [True, True, False]
    >>> e = step(1.0, 150.0)                           # 90 s after the last that stood out
    >>> bool(e.ended[0]), float(e.began[0]), float(e.end[0]), float(e.start[0])
    (True, 0.0, 60.0, nan)
    """
    start = state.episode_start.take(rows)
    open_before = ~np.isnan(start)
    metrics = np.where(open_before, state.episode_metrics.take(rows), np.uint32(0))
    held = fire.copy()
    some = np.flatnonzero(open_before & ~fire)
    if len(some):
        standing = metric_bits(np.abs(base_z(some)) >= p.reason_sigma) & metrics[some]
        held[some] = standing != 0
    seen = state.episode_seen.take(rows)
    ended = open_before & ~held & (elapsed - seen >= p.episode_end_s)
    opened = fire & ~open_before
    began = np.where(ended, start, np.nan)
    start = np.where(opened, elapsed, np.where(ended, np.nan, start))
    metrics = np.where(ended, np.uint32(0), metrics) | named
    return Episodes(start, opened, held, ended, np.where(ended, seen, np.nan), metrics, began)


def learn_episodes(state: object, rows: np.ndarray, e: Episodes, elapsed: np.ndarray) -> None:
    """Keep the rows' episodes as :func:`episodes` found them (only the rows that changed
    are written: few)."""
    changed = e.opened | e.ended
    state.episode_start[rows[changed]] = e.start[changed]
    moved = changed | e.held
    state.episode_metrics[rows[moved]] = e.metrics[moved]
    held = rows[e.held]  # (a late heartbeat does not move it back: the end follows it)
    state.episode_seen[held] = np.maximum(state.episode_seen[held], elapsed[e.held])


def allocate_detector(features: int, capacity: int, harmonics: int = 2) -> object:
    """A bare holder of the detector's per-agent arrays (:func:`detector_arrays`), for
    examples and tests of single steps."""

    class _State:
        pass

    state = _State()
    allocate(state, detector_arrays(features, harmonics), capacity)
    return state


class UsualDay(NamedTuple):
    """Where rows stand against their usual day (:func:`usual_day`): each row's bin of the
    day, its metrics' drift after this heartbeat (``n × F``), and the bins' value and
    stray as judged (``n × F``, float32), which :func:`learn_usual_day` then moves."""

    bins: np.ndarray
    drift: np.ndarray
    value: np.ndarray
    stray: np.ndarray


@dataclass(slots=True)
class Judgement:
    """What :func:`judge` found for each row of a pass.

    ``z``/``std``: deviations from the local level and the std used (``n × F``);
    ``weighted``: ``z`` weighted per metric and direction (what is judged);
    ``base_std``: the slow baseline's std (to clip its learning); ``extreme``: values
    beyond the range seen so far (and improbable even for the metric's own tail);
    ``recent``: recent surprise; ``likelihood``: how many std it stands above the row's
    usual one (``likelihood_std``); ``scores`` (0 until judged); ``quiet``: rows in a
    quiet period; ``repeat``: rows past their quiet period but within ``repeat_s`` after
    it (to fire, a heartbeat breaks it as it would a quiet period, or has a new extreme;
    only on agents whose tails are not learned);
    ``named``: for the rows that fire (or are ``held``), the bit mask of the metrics driving
    the heartbeat (what the quiet period will be about; 0 for the other rows);
    ``fire``: the runtime decision; ``extreme_rows``: rows with an ``extreme`` metric;
    ``before``: the rows' state as judged; ``episode``: the rows' episodes after this
    heartbeat (:class:`Episodes`); ``weights``: the heartbeats' exponential weights
    (:class:`PointWeights`); ``now``: the rows' UTC times when the daily profile is
    on (None: off); ``season``: each metric's expected offset from its level (the daily
    profile's value, 0 where it does not count); ``envelope``: the rows' envelopes after
    this heartbeat (upward, downward; None where tails are learned) and ``routine``: rows
    whose heartbeat is within them, so a high score alone did not fire it
    (:func:`within_envelope`); ``held``: routine rows that would have fired, which start a
    quiet period as if they had. ``usual``: where the usual day is kept (else None), each
    row's bin of the day and its metrics' drift from the usual day after this heartbeat
    (:func:`usual_day`); ``shifted``: rows whose drift stands ``usual_day_sigma`` or more
    (they score 1; outside the quiet period and the repeat window they fire).
    """

    z: np.ndarray
    weighted: np.ndarray
    std: np.ndarray
    base_std: np.ndarray
    extreme: np.ndarray
    recent: np.ndarray
    likelihood: np.ndarray
    likelihood_std: np.ndarray
    judged: np.ndarray
    scores: np.ndarray
    quiet: np.ndarray
    repeat: np.ndarray
    named: np.ndarray
    fire: np.ndarray
    extreme_rows: np.ndarray
    before: RowsBefore
    episode: Episodes
    weights: PointWeights
    now: np.ndarray | None = None
    season: np.ndarray | float = 0.0
    envelope: tuple[np.ndarray, np.ndarray] | None = None
    routine: np.ndarray | None = None
    held: np.ndarray | None = None
    usual: UsualDay | None = None
    shifted: np.ndarray | None = None


def _cells(rows: np.ndarray, at: np.ndarray, features: int) -> tuple[np.ndarray, np.ndarray]:
    """The cells (agent row, metric) of a per-agent state array (``capacity × F``) at the
    flat positions ``at`` of a pass's ``n × F`` arrays over agent rows ``rows``."""
    return rows[at // features], at % features


def judge(
    state: object,
    rows: np.ndarray,
    values: np.ndarray,
    warm: np.ndarray,
    p: DetectorParams,
    elapsed: np.ndarray,
    now: np.ndarray | None = None,
    interval: np.ndarray | None = None,
) -> Judgement:
    """Score ``values[i]`` against the state of agent row ``rows[i]``, without learning.

    ``state`` holds the slow baseline (``mean``, ``var``, ``count``) and the arrays
    of :func:`detector_arrays`; ``warm`` says which rows have finished warming up;
    ``elapsed`` is each row's event time since its agent's first heartbeat (s), ``now`` its
    UTC time (s; without it, no daily profile), ``interval`` the time since its previous
    heartbeat (s; NaN for a first; without it, the weights are per heartbeat: see
    :func:`point_weights`). A metric with a daily profile that explains
    ``p.daily_min_share`` of its variance is judged against its local level plus the
    profile's value at this time of day (:func:`learn_daily`), the local level following
    the metric less its profile. A row is judged once warm; its surprise history starts
    halfway through the warm-up's ``warmup`` heartbeats (once the local spread has
    something to go on).

    A row in its quiet period fires only on a metric the quiet period is not about,
    ``quiet_break_sigma`` from its level or beyond its range: a second, different
    anomaly is not hidden by the first one's quiet period. On agents whose tails are not
    learned (fewer than ``p.tail_min_features`` metrics), for ``p.repeat_s`` after the
    quiet period (``repeat``) the same holds, and a new extreme of the metrics it was about
    fires too: a repeat needs a value beyond the range, not a high score alone. Nor, on
    those agents, does a routine heartbeat, within the agent's envelope
    (:func:`within_envelope`), fire without a new extreme.

    Everything is computed once a pass over whole arrays, and what only a few rows need
    (new extremes, the metrics a firing row names, the tails of far deviations) only for
    those rows: the fleet judges thousands of agents a pass and few of them stand out.
    """
    n, features = values.shape

    def take(array: np.ndarray) -> np.ndarray:
        return array.take(rows, axis=0)

    before = RowsBefore(
        take(state.count), take(state.level), take(state.resid_var), take(state.mean),
        take(state.var), take(state.low), take(state.high), take(state.tail_rate),
        take(state.surprise_avg), take(state.surprise_mean), take(state.surprise_var),
    )  # fmt: skip
    b = before
    base_std = np.maximum(np.sqrt(b.var), p.std_floor)
    base_std = np.maximum(base_std, p.rel_floor * np.abs(b.mean))
    season: np.ndarray | float = 0.0  # each metric's expected offset from its level
    gain = daily_gain(elapsed, p.daily_warmup_s) if p.daily_harmonics and now is not None else None
    counting = np.flatnonzero(gain) if gain is not None else ()
    if len(counting):  # (only rows whose profile counts: none in an agent's first two days)
        some = rows[counting]
        shape = state.daily_shape[some].astype(np.float64)
        loading = state.daily_loading[some].astype(np.float64)
        load = (shape * daily_basis(now[counting], p.daily_harmonics)).sum(axis=1)
        load *= gain[counting]
        # the share of each metric's variance about its slow baseline the profile explains
        explained = (0.5 * (shape * shape).sum(axis=1))[:, None] * (loading * loading)
        offset = base_std[counting] * loading
        offset *= load[:, None]
        offset[explained < p.daily_min_share] = 0.0
        season = np.zeros_like(values)
        season[counting] = offset
    floor = np.maximum(p.std_floor, p.rel_floor * np.abs(b.level))
    std = np.maximum(np.sqrt(b.resid_var), floor)  # as deviations(): max(√var, floor, rel)
    z = (values - season - b.level) / std
    zw = weighted(z, p.up_weight, p.down_weight)
    a = np.abs(zw)
    # new extremes are rare: each condition after the range is checked where it holds
    at = np.flatnonzero(beyond_range(b.low, b.high, values, p.extreme_margin, floor))
    at = at[(zw.reshape(-1)[at] * z.reshape(-1)[at]) > 0]  # in a direction that counts
    at = at[(warm & (elapsed >= p.extreme_after_s))[at // features]]
    tails = p.tails_learned(features)
    if tails:
        if len(at):
            excess = state.tail_excess[_cells(rows, at, features)]
            chances = tail_chances(a.reshape(-1)[at], b.tail_rate.reshape(-1)[at], excess,
                                   TAIL_SIGMA)  # fmt: skip
            at = at[features * chances <= p.extreme_max_p]
        least = least_tail_chances(
            a, lambda some: b.tail_rate[some],
            lambda some: state.tail_excess.take(rows[some], axis=0), TAIL_SIGMA,
        )  # fmt: skip
    else:
        least = erfc(a / np.sqrt(2.0)).min(axis=1)
    extreme = np.zeros((n, features), dtype=bool)
    extreme.reshape(-1)[at] = True
    extreme_rows = np.zeros(n, dtype=bool)
    extreme_rows[at // features] = True
    p_least = np.minimum(1.0, features * least)  # as calibrated_surprises()
    surprise = np.maximum(-np.log(np.maximum(p_least, _SMALLEST_P)), 0.0)
    weights = point_weights(interval, p)
    recent = recent_surprise(b.surprise_avg, surprise, weights.surprise,
                             b.count <= p.warmup // 2)  # fmt: skip
    likelihood_std = np.maximum(np.sqrt(b.surprise_var), p.likelihood_std_floor)
    likelihood = (recent - b.surprise_mean) / likelihood_std
    judged = warm
    scores = np.where(judged, likelihood_scores(likelihood, extreme_rows), 0.0)
    quiet_until = state.quiet_until.take(rows)
    quiet = elapsed < quiet_until
    if tails or not p.repeat_s:  # (where tails are learned, they judge a repeat)
        repeat = np.zeros(n, dtype=bool)
    else:
        repeat = ~quiet & (elapsed < quiet_until + p.repeat_s)
    fire = scores >= p.threshold
    envelope: tuple[np.ndarray, np.ndarray] | None = None
    if tails or not p.envelope_ratio:  # (where tails are learned, they judge a burst)
        routine = np.zeros(n, dtype=bool)
    else:
        up, down = state.envelope_up.take(rows), state.envelope_down.take(rows)
        envelope_up, envelope_down, routine = within_envelope(up, down, zw, interval, p)
        envelope = (np.where(judged, envelope_up, up), np.where(judged, envelope_down, down))
        routine &= judged & ~extreme_rows
    held = fire & routine & ~quiet & ~repeat  # a routine burst: known, it quiets what it is about
    fire &= ~routine
    named = np.zeros(n, dtype=np.uint32)
    if fire.any():
        high = np.flatnonzero(fire)
        ah, eh = a[high], extreme[high]
        in_quiet = quiet[high]
        # in the quiet period: another metric far out; after it, within repeat_s, also a
        # new extreme of the metrics it was about
        breaking = metric_bits((ah >= p.quiet_break_sigma) | eh)
        breaking &= ~state.quiet_metrics.take(rows[high])
        breaking |= np.where(repeat[high], metric_bits(eh), np.uint32(0))
        fire[high] = ~(in_quiet | repeat[high]) | (breaking != 0)
        named[high] = np.where(fire[high], driving(ah, eh, p.reason_sigma), 0)
    usual: UsualDay | None = None
    shifted = None
    if not tails and p.usual_day_bins and now is not None:
        usual = usual_day(state, rows, values, now, elapsed, floor, warm, p)
        drifted = np.abs(usual.drift) >= p.usual_day_sigma
        shifted = judged & drifted.any(axis=1)
        scores = np.where(shifted, 1.0, scores)
        # a day off its usual shape fires outside the quiet period and the repeat window
        # (after an anomaly, a drift is the same incident until a new extreme), whatever
        # the envelope says: it judges bursts, and this is not one
        drifting = shifted & ~quiet & ~repeat & ~fire
        if drifting.any():
            fire |= drifting
            held &= ~drifting
            named[drifting] = metric_bits(drifted[drifting])

    def base_z(some: np.ndarray) -> np.ndarray:
        return weighted((values[some] - b.mean[some]) / base_std[some], p.up_weight,
                        p.down_weight)  # fmt: skip

    episode = episodes(state, rows, base_z, fire, named, elapsed, p)
    if held.any():  # (after the episodes: a routine burst quiets its metrics, joins none)
        named[held] = driving(a[held], extreme[held], p.reason_sigma)
    return Judgement(z, zw, std, base_std, extreme, recent, likelihood, likelihood_std, judged,
                     scores, quiet, repeat, named, fire, extreme_rows, before, episode, weights,
                     now if gain is not None else None, season, envelope, routine,
                     held, usual, shifted)  # fmt: skip


def learn_judged(
    state: object,
    rows: np.ndarray,
    values: np.ndarray,
    warm: np.ndarray,
    judgement: Judgement,
    p: DetectorParams,
    elapsed: np.ndarray,
) -> None:
    """Learn ``values`` into the state of ``rows`` after :func:`judge`, in place: local
    level and spread, each metric's tail, surprise history, slow baseline, range, and a
    quiet period of ``p.quiet_s`` seconds for the rows that fired, about the metrics that
    drove them (added to those of a quiet period still running). Learning is clipped at
    ``p.clip_sigma`` std once warm (the level's step at ``p.level_clip_sigma``, wider, so
    it follows a new level). It starts from the rows' state as :func:`judge` read it
    (``judgement.before``): nothing may change those rows between the two."""
    j, b = judgement, judgement.before
    count = b.count
    n = count + 1
    memory = j.weights.memory
    learn_level(state.level, state.resid_var, rows, values - j.season, n, p.level_weight, memory,
                clip_limits(j.std, warm, p.clip_sigma),
                clip_limits(j.std, warm, p.level_clip_sigma),
                seen=(b.level, b.resid_var))  # fmt: skip
    if p.tails_learned(values.shape[1]):
        learn_tails(state, rows, j.weighted, b, p, j.scores < p.threshold, memory)
    # The surprise history starts in the warm-up's second half from a cautious prior
    # (mean 1, std ``likelihood_prior_std``, worth ``warmup`` heartbeats), so a history
    # of a few dozen heartbeats does not make an ordinary surprise look extraordinary.
    seen = count - p.warmup // 2 + 1
    delta = j.recent - b.surprise_mean
    # once judged, a burst of surprise is learned at most clip_sigma std at a time
    delta = np.where(j.judged, np.minimum(delta, p.clip_sigma * j.likelihood_std), delta)
    share = 1.0 / np.minimum(np.maximum(seen, 0) + p.warmup, memory)
    state.surprise_avg[rows] = j.recent
    prior = seen <= 0
    mean, var = b.surprise_mean, b.surprise_var
    state.surprise_mean[rows] = np.where(prior, SURPRISE_PRIOR_MEAN, mean + share * delta)
    state.surprise_var[rows] = np.where(
        prior, p.likelihood_prior_std**2, (1.0 - share) * (var + share * delta * delta)
    )
    if j.now is not None:
        learn_daily(state, rows, values, j, p, elapsed)
    learn(state.mean, state.var, state.count, rows, values, memory,
          clip_limits(j.base_std, warm, p.clip_sigma), seen=(b.mean, b.var, b.count))  # fmt: skip
    widen_range(state.low, state.high, rows, values, seen=(b.low, b.high))
    quieting = j.fire | j.held
    fired = rows[quieting]
    still = j.quiet[quieting]
    state.quiet_metrics[fired] = np.where(
        still, state.quiet_metrics[fired] | j.named[quieting], j.named[quieting]
    )
    state.quiet_until[fired] = elapsed[quieting] + p.quiet_s
    learn_episodes(state, rows, j.episode, elapsed)
    if j.envelope is not None:
        state.envelope_up[rows], state.envelope_down[rows] = j.envelope
    if j.usual is not None:
        learn_usual_day(state, rows, values, j.usual, p)


def usual_day(
    state: object,
    rows: np.ndarray,
    values: np.ndarray,
    now: np.ndarray,
    elapsed: np.ndarray,
    floor: np.ndarray,
    warm: np.ndarray,
    p: DetectorParams,
) -> UsualDay:
    """Each row's bin of the *usual day* at UTC time ``now`` and its metrics' drift from it
    after this heartbeat (``n × F``), without learning.

    The usual day is each metric's value per bin of the day (``p.usual_day_bins``), learned
    from the heartbeats that fall in the bin (:func:`learn_usual_day`), and how far they
    stray from it. A deviation is the value's distance from its bin's, in the bin's spread
    (:data:`USUAL_DAY_SPREAD` times its mean stray, at least :data:`USUAL_DAY_MIN_SPREAD`
    times the metric's std ``floor``), clipped at :data:`USUAL_DAY_CLIP` and weighted per
    direction; the drift is its exponentially weighted average
    (``p.usual_day_drift_weight`` a heartbeat). Unlike the local level, the usual day does
    not follow today: a day that stays off its usual shape within its usual range (no
    morning climb, a holiday's traffic) drifts further every heartbeat, while one spike,
    clipped, does not make a drift. A row counts once warm and watched
    ``p.usual_day_warmup_s``, in a bin it has seen; before, its drift decays.

    >>> p = replace(DetectorParams.from_settings(Settings.model_construct(), np.zeros(1)),
    ...             usual_day_bins=24, usual_day_warmup_s=0.0)
    >>> state = type("State", (), {})()
    >>> allocate(state, detector_arrays(1, envelope=True, usual_day_bins=24), 1)
    >>> row, floor, warm = np.array([0]), np.array([[1.0]]), np.array([True])
    >>> hour = lambda h, day: np.array([day * DAY_S + h * 3600.0])
    >>> for day in range(5):  # 10 at night, 80 by day
    ...     for h in range(24):
    ...         value = np.array([[80.0 if 10 <= h < 18 else 10.0]])
    ...         j = usual_day(state, row, value, hour(h, day), hour(h, day), floor, warm, p)
    ...         learn_usual_day(state, row, value, j, p)
    >>> for h in range(8, 14):  # day 6: no climb at 10:00
    ...     j = usual_day(state, row, np.array([[10.0]]), hour(h, 5), hour(h, 5), floor, warm, p)
    ...     learn_usual_day(state, row, np.array([[10.0]]), j, p)
    ...     print(h, int(j.bins[0]), round(float(j.drift[0, 0]), 2))
    8 8 0.0
    9 9 0.0
    10 10 -1.0
    11 11 -1.8
    12 12 -2.44
    13 13 -2.95
    """
    bins = np.minimum((np.mod(now, DAY_S) * (p.usual_day_bins / DAY_S)).astype(np.int64),
                      p.usual_day_bins - 1)  # fmt: skip
    usual = state.usual_value[rows, :, bins]  # (n × F: the rows' metrics at their bins)
    stray = state.usual_stray[rows, :, bins]
    spread = np.maximum(USUAL_DAY_SPREAD * stray, USUAL_DAY_MIN_SPREAD * floor)
    counts = (warm & (elapsed >= p.usual_day_warmup_s))[:, None] & ~np.isnan(usual)
    counts &= ~np.isnan(values)
    deviation = np.where(counts, (values - usual) / np.where(counts, spread, 1.0), 0.0)
    deviation = weighted(np.clip(deviation, -USUAL_DAY_CLIP, USUAL_DAY_CLIP), p.up_weight,
                         p.down_weight)  # fmt: skip
    drift = state.usual_drift[rows].astype(np.float64)
    drift += p.usual_day_drift_weight * (deviation - drift)
    return UsualDay(bins, drift, usual, stray)


def learn_usual_day(
    state: object,
    rows: np.ndarray,
    values: np.ndarray,
    usual: UsualDay,
    p: DetectorParams,
) -> None:
    """Learn the rows' heartbeats into their bins of the usual day (each a share
    ``p.usual_day_weight`` of the bin's value and stray; a bin's first heartbeat is its
    value) and keep their drift (``usual``: what :func:`usual_day` found, from the bins as
    it read them: nothing may change those rows between the two)."""
    bins, drift = usual.bins, usual.drift
    value, stray = usual.value.astype(np.float64), usual.stray.astype(np.float64)
    fresh = np.isnan(value)
    residual = values - value
    known = ~np.isnan(values)
    w = p.usual_day_weight
    state.usual_value[rows, :, bins] = np.where(fresh, values, np.where(
        known, value + w * residual, value))  # fmt: skip
    state.usual_stray[rows, :, bins] = np.where(
        fresh | ~known, stray, stray + w * (np.abs(residual) - stray)
    )
    state.usual_drift[rows] = drift


def daily_basis(now: np.ndarray, harmonics: int) -> np.ndarray:
    """The daily profile's basis at UTC times ``now`` (s): ``cos kθ, sin kθ`` for
    ``k = 1 … harmonics``, ``θ`` the time of day as an angle (``n × 2 harmonics``).

    >>> daily_basis(np.array([0.0, 21_600.0]), 1).round(6).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    theta = (2.0 * np.pi / DAY_S) * np.mod(now, DAY_S)
    basis = np.empty((len(theta), 2 * harmonics))
    c, s = np.cos(theta), np.sin(theta)
    basis[:, 0], basis[:, harmonics] = c, s
    for k in range(1, harmonics):  # the k+1-th from the k-th: cos and sin of a sum
        ck, sk = basis[:, k - 1], basis[:, harmonics + k - 1]
        basis[:, k] = ck * c - sk * s
        basis[:, harmonics + k] = sk * c + ck * s
    return basis


def daily_gain(elapsed: np.ndarray, warmup_s: float) -> np.ndarray:
    """How much of the daily profile counts after ``elapsed`` s of watching: none before
    twice ``warmup_s`` (it learns from the first ``warmup_s`` on), all after three times
    that, linearly between.

    >>> daily_gain(np.array([1.0, 2.5, 3.0]), 1.0).tolist()
    [0.0, 0.5, 1.0]
    """
    return np.clip(elapsed / warmup_s - 2.0, 0.0, 1.0)


def dithered(x: np.ndarray, now: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``x`` (rows of float64) rounded to ``dtype`` up or down at random, in proportion to
    how close it is to each, so small steps are kept on average (rounding to the nearest
    float16 loses a step under half its spacing, which would stop a slow average from
    learning); the random numbers are drawn from the rows' times ``now``, so a replay
    rounds the same way.

    >>> x = np.full((1000, 1), 1.0 + 2.0**-13)  # an eighth of float16's spacing above 1
    >>> kept = dithered(x, np.arange(1000.0), np.dtype(np.float16))
    >>> sorted(set(kept[:, 0].tolist())), float(kept.astype(np.float64).mean() - x.mean())
    ([1.0, 1.0009765625], 0.0)
    """
    if dtype == np.float64:
        return x
    near = x.astype(dtype)
    off = x - near
    other = np.nextafter(near, np.where(off > 0, np.inf, -np.inf).astype(dtype))
    gap = other.astype(np.float64) - near
    columns = np.arange(x.shape[1]) * DITHER_COLUMN_STEP
    chance = np.modf(now[:, None] * DITHER_TIME_STEP + columns)[0] % 1.0
    up = (gap != 0) & (chance < off / np.where(gap != 0, gap, 1.0))
    return np.where(up, other, near)


def learn_daily(
    state: object,
    rows: np.ndarray,
    values: np.ndarray,
    j: Judgement,
    p: DetectorParams,
    elapsed: np.ndarray,
) -> None:
    """Learn the rows' daily profile, once per ``p.daily_learn_every_s`` of event time (the
    first heartbeat of each such slot; so float16 learns in steps it can hold), from
    ordinary heartbeats only (score below the threshold).

    The profile is one daily *load* curve per agent (Fourier coefficients ``daily_shape``, in
    slow std) and each metric's ``daily_loading`` on it: metric ``m`` is expected at
    ``loading[m] · shape · basis(t)`` slow std from its slow baseline. Both are learned by a
    streaming power iteration on each metric's deviation from the slow baseline (in slow std,
    clipped at ``p.clip_sigma``): the curve as the Fourier coefficients of the deviations
    projected on the loadings, each loading as its metric's regression on the curve, an
    exponentially weighted average over ``p.daily_memory_s`` (exact until then), the loadings
    kept at a root mean square of 1. With one metric it is that metric's own profile."""
    b, now = j.before, j.now
    count = b.count
    interval = elapsed / np.maximum(count, 1.0)  # the agent's mean heartbeat interval so far
    every = p.daily_learn_every_s
    learning = (
        (elapsed >= p.daily_warmup_s)
        & (j.scores < p.threshold)
        & (np.floor(now / every) != np.floor((now - interval) / every))
    )
    if not learning.any():
        return
    some = np.flatnonzero(learning)
    at = rows[some]
    step = np.maximum(interval[some], every)
    learnt = np.minimum(elapsed[some] - p.daily_warmup_s, p.daily_memory_s)
    share = np.minimum(step / np.maximum(learnt, step), 1.0)
    share = share[:, None]
    deviation = clipped((values[some] - b.mean[some]) / j.base_std[some], p.clip_sigma)
    basis = daily_basis(now[some], p.daily_harmonics)
    shape = state.daily_shape[at].astype(np.float64)
    loading = state.daily_loading[at].astype(np.float64)
    square = np.maximum(np.einsum("nf,nf->n", loading, loading), 1e-12)
    projected = np.einsum("nf,nf->n", deviation, loading) / square
    shape += share * (2.0 * projected[:, None] * basis - shape)
    load = np.einsum("nk,nk->n", shape, basis)
    power = 0.5 * np.einsum("nk,nk->n", shape, shape)
    # (with one metric its loading is 1 by definition: the curve is the metric's profile)
    known = ((power > DAILY_MIN_POWER) & (values.shape[1] > 1))[:, None]
    regression = deviation * (load / np.maximum(power, DAILY_MIN_POWER))[:, None]
    loading = np.where(known, loading + share * (regression - loading), loading)
    rms = np.sqrt(np.mean(loading * loading, axis=1, keepdims=True))
    rms = np.where(rms > 0, rms, 1.0)
    state.daily_loading[at] = dithered(loading / rms, now[some], state.daily_loading.dtype)
    state.daily_shape[at] = dithered(shape * rms, now[some] + 0.5, state.daily_shape.dtype)


def learn_tails(
    state: object,
    rows: np.ndarray,
    zw: np.ndarray,
    before: RowsBefore,
    p: DetectorParams,
    ordinary: np.ndarray,
    memory: np.ndarray | float,
) -> None:
    """Learn each metric's tail beyond ``TAIL_SIGMA`` from the weighted deviations ``zw``
    once the row has ``p.warmup`` heartbeats (its spread has something to go on), from
    ``ordinary`` rows only (those scoring below the threshold: an anomaly does not teach
    the tail that would excuse it): the
    share of deviations beyond it (weight ``1 / (p.tail_prior + seen)`` up to
    ``memory``, per row or for all (:class:`PointWeights`): the normal law's share is worth
    ``p.tail_prior`` heartbeats) and their
    mean excess (learned at the share's rate over the share of exceedances, at most
    ``1 / p.tail_min_exceedances`` at a time), an excess clipped at ``p.clip_sigma`` so
    one incident does not teach a heavy tail. Only the excess of deviations beyond the
    tail's start moves, so only those are read and written."""
    count, rate = before.count, before.tail_rate
    features = zw.shape[1]
    seen = np.maximum(count - p.warmup, 0.0)
    learning = (count >= p.warmup) & ordinary
    share = 1.0 / np.minimum(p.tail_prior + seen, memory)
    a = np.abs(zw)
    beyond = a > TAIL_SIGMA
    # a row not learning keeps its rate: it moves by a share of 0 (rate + 0 is rate)
    moving = np.where(learning, share, 0.0)[:, None]
    state.tail_rate[rows] = rate + moving * (beyond - rate)
    at = np.flatnonzero(beyond)
    at = at[learning[at // features]]
    if len(at):
        cells = _cells(rows, at, features)
        excess = state.tail_excess[cells]
        share_at, rate_at = share[at // features], rate.reshape(-1)[at]
        step = np.minimum(1.0 / p.tail_min_exceedances, share_at / np.maximum(rate_at, share_at))
        a_at = a.reshape(-1)[at]
        state.tail_excess[cells] = excess + step * (
            np.minimum(a_at - TAIL_SIGMA, p.clip_sigma) - excess
        )


def reasons(
    features: tuple[str, ...],
    values: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    z: np.ndarray,
    min_sigma: float,
    most: int = 3,
    beyond: np.ndarray | None = None,
    weighted: np.ndarray | None = None,
) -> list[dict[str, float | str]]:
    """The features of one heartbeat that drove its score, furthest first.

    Names every feature at least ``min_sigma`` from baseline or ``beyond`` the
    range seen so far (at most ``most``), and always the furthest one; by the
    ``weighted`` deviations when given (a harmless drop counts less), else ``z``.

    >>> [r["feature"] for r in reasons(("cpu", "mem"), np.array([50.0, 9.0]),
    ...  np.array([40.0, 8.0]), np.array([2.0, 1.0]), np.array([5.0, 1.0]), 3.0,
    ...  beyond=np.array([False, True]))]
    ['cpu', 'mem']
    """
    judged = np.abs(z if weighted is None else weighted)
    order = np.argsort(-judged, kind="stable")
    named = judged >= min_sigma
    if beyond is not None:
        named |= beyond
    picked = [int(i) for i in order if named[i]][:most] or [int(order[0])]
    return [
        {
            "feature": features[i],
            "value": float(values[i]),
            "baseline_mean": float(mean[i]),
            "baseline_std": float(std[i]),
            "z": float(z[i]),
        }
        for i in picked
    ]


class BaselineDetector(AnomalyDetector):
    """One series' detector, with River's anomaly-detector API.

    Scores are 0 until ``warmup`` values have been learned. Score before you
    learn, so a point never hides its own anomaly. :meth:`judge_one` gives the
    whole judgement (score, runtime decision, likelihood); :meth:`learn_one`
    learns the point and, if it fired, starts the quiet period. Durations (quiet
    period, new extremes) run on ``t``, the point's event time in seconds, when the
    caller gives it; without it, on ``interval_s`` per point learned.
    """

    def __init__(
        self,
        features: tuple[str, ...],
        std_floor: dict[str, float] | None = None,
        settings: Settings | None = None,
        interval_s: float = 30.0,
        **overrides: float,
    ):
        """``settings`` (default: the settings' defaults) give the numbers, as the
        dataflow takes them; ``overrides`` replace single ones by their
        :class:`DetectorParams` name (``warmup=5``)."""
        settings = settings or Settings.model_construct()
        self.features = tuple(features)
        self.std_floor = dict(std_floor or {})
        self.interval_s = interval_s
        floor = np.array([self.std_floor.get(f, 0.0) for f in self.features])
        params = DetectorParams.from_settings(settings, floor, self.features)
        self._params = replace(params, **overrides)
        self.reason_sigma = self._params.reason_sigma
        f64, per_feature = np.dtype(np.float64), (len(self.features),)
        slow: dict[str, ArraySpec] = {
            "mean": (f64, 0.0, per_feature),
            "var": (f64, 0.0, per_feature),
            "count": (f64, 0.0, ()),
            "first_ts": (f64, np.nan, ()),
            "last_ts": (f64, np.nan, ()),
        }
        arrays = self._params.arrays_for(len(self.features))
        allocate(self, {**slow, **arrays}, capacity=1)
        self._row = np.zeros(1, dtype=np.int64)
        self._last: tuple[np.ndarray | None, Judgement | None] = (None, None)

    def _vector(self, x: dict) -> np.ndarray:
        return np.array([[float(x[f]) for f in self.features]])

    def _times(self, t: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Event time since the first point (the first point's own ``t`` starts it) and
        since the last point learned (NaN before the first)."""
        if t is None:
            t = float(self.count[0]) * self.interval_s
        if np.isnan(self.first_ts[0]):
            self.first_ts[0] = t
        return np.array([t - self.first_ts[0]]), t - self.last_ts

    @property
    def warmed_up(self) -> bool:
        """Whether enough values were learned for scores to count."""
        return self.count[0] >= self._params.warmup

    def judge_one(self, x: dict, t: float | None = None) -> Judgement:
        """The whole judgement of ``x`` (one row) at event time ``t``, without learning it."""
        values = self._vector(x)
        warm = np.array([self.warmed_up])
        elapsed, interval = self._times(t)
        judgement = judge(self, self._row, values, warm, self._params, elapsed,
                          self.first_ts + elapsed, interval)  # fmt: skip
        self._last = (values, judgement)  # learn_one(x) next need not judge x again
        return judgement

    def learn_one(self, x: dict, t: float | None = None) -> None:
        """Fold one observation (at event time ``t``) into the detector's state."""
        values = self._vector(x)
        warm = np.array([self.warmed_up])
        elapsed, interval = self._times(t)
        last_values, judgement = self._last
        if not np.array_equal(values, last_values):
            judgement = judge(self, self._row, values, warm, self._params, elapsed,
                              self.first_ts + elapsed, interval)  # fmt: skip
        self._last = (None, None)
        learn_judged(self, self._row, values, warm, judgement, self._params, elapsed)
        self.last_ts[0] = np.fmax(self.last_ts[0], (self.first_ts + elapsed)[0])

    def score_one(self, x: dict, t: float | None = None) -> float:
        """Anomaly score of ``x`` in [0, 1] (0 while warming up)."""
        return float(self.judge_one(x, t).scores[0])

    def explain_one(self, x: dict, t: float | None = None) -> list[dict[str, float | str]]:
        """The features that drove the score of ``x``, furthest from the local level first."""
        j = self.judge_one(x, t)
        expected = self.level[0] + (j.season[0] if np.ndim(j.season) else j.season)
        return reasons(self.features, self._vector(x)[0], expected, j.std[0], j.z[0],
                       self.reason_sigma, beyond=j.extreme[0], weighted=j.weighted[0])  # fmt: skip
