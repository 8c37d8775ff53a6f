"""Per-agent baselines: streaming mean and variance of each watched metric.

The arithmetic works on arrays — one row per agent — so one call updates the
baselines of thousands of agents at once. Up to ``memory`` heartbeats the
estimate is the exact running mean and (population) variance (Welford); past
that it forgets exponentially with weight ``1 / memory``, so a baseline
follows slow drift without being a window of stored values.

Learning is robust: once a baseline is warm, a value further than
``clip_sigma`` deviations from the mean is learned as if it stood at that
distance, so a spike barely moves the baseline it is judged against while a
lasting change of level is still learned, a little at a time.

Beside this slow baseline (what the threat rules judge against) each row keeps
a *local level*, an exponentially weighted mean that follows a daily cycle or
a new level within tens of heartbeats, with the variance of values about it,
and the range of values seen so far: what the anomaly detector judges
against (:mod:`agentwatch.detector`).

>>> import numpy as np
>>> mean, var, count = np.zeros((1, 1)), np.zeros((1, 1)), np.zeros(1)
>>> for value in [10.0, 12.0, 14.0]:
...     learn(mean, var, count, np.array([0]), np.array([[value]]), memory=100)
>>> float(mean[0, 0]), round(float(var[0, 0]), 3), int(count[0])
(12.0, 2.667, 3)
"""

from __future__ import annotations

import numpy as np

from schemas.models import BASELINE_METRICS

#: The metrics a baseline is kept for, in column order (the rule schema states them too).
FEATURES: tuple[str, ...] = BASELINE_METRICS


def learn(
    mean: np.ndarray,
    var: np.ndarray,
    count: np.ndarray,
    rows: np.ndarray,
    values: np.ndarray,
    memory: float | np.ndarray,
    clip_limit: np.ndarray | None = None,
    *,
    seen: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> None:
    """Fold ``values[i]`` into the baseline of agent row ``rows[i]``, in place.

    ``rows`` must not repeat (one heartbeat per agent per call). With
    ``clip_limit`` (per row and feature, ``inf`` for none), a value is learned
    as if it stood at most that far from the mean (see :func:`clip_limits`).
    ``memory`` is one number or one per row (a slow agent's heartbeat counts for more
    of a span of time: :func:`agentwatch.detector.point_weights`). ``seen``: the rows'
    ``mean``, ``var`` and ``count`` when the caller read them already.
    """
    old_mean, old_var, old_count = seen or (
        mean.take(rows, axis=0), var.take(rows, axis=0), count.take(rows)
    )  # fmt: skip
    delta = values - old_mean
    if clip_limit is not None:
        delta = clipped(delta, clip_limit)
    n = old_count + 1
    weight = (1.0 / np.minimum(n, memory))[:, None]
    step = weight * delta
    mean[rows] = old_mean + step
    var[rows] = (1.0 - weight) * (old_var + step * delta)  # (weight * delta) * delta
    count[rows] = n


def clipped(x: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """``x`` held within ``±limit`` (``np.clip``'s values, about twice as fast).

    >>> clipped(np.array([[-5.0, 1.0, 5.0]]), np.array([[2.0, 2.0, np.inf]])).tolist()
    [[-2.0, 1.0, 5.0]]
    """
    return np.minimum(np.maximum(x, -limit), limit)


def clip_limits(std: np.ndarray, warm: np.ndarray, clip_sigma: float) -> np.ndarray:
    """How far from the mean each warm row may learn: ``clip_sigma`` times the std the
    row was judged with (floored, so a metric flat during warm-up still learns later).

    >>> clip_limits(np.array([[2.0], [2.0]]), np.array([True, False]), 4.0).tolist()
    [[8.0], [inf]]
    """
    limit = clip_sigma * std
    cold = ~warm
    if cold.any():
        limit[cold] = np.inf
    return limit


def learn_level(
    level: np.ndarray,
    resid_var: np.ndarray,
    rows: np.ndarray,
    values: np.ndarray,
    n: np.ndarray,
    weight: float,
    memory: float | np.ndarray,
    clip_limit: np.ndarray | None = None,
    level_clip_limit: np.ndarray | None = None,
    *,
    seen: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Follow the local level of agent row ``rows[i]``, in place: an exponentially
    weighted mean giving ``values[i]`` the share ``weight``, and the mean square of
    the residuals, each value less the level as it stood before it (exact up to
    ``memory`` values, then forgetting like :func:`learn`). ``n`` counts the values
    learned, these included: a row's first value is its level (residual 0).
    ``clip_limit`` bounds the residual the variance learns; ``level_clip_limit`` (wider)
    the one the level moves by, so a spike barely drags the level while a new level is
    still followed. ``seen``: the rows' ``level`` and ``resid_var`` when the caller read
    them already. ``memory`` is one number or one per row.

    >>> level, resid_var = np.zeros((1, 1)), np.zeros((1, 1))
    >>> for n, value in enumerate([10.0, 12.0, 10.0], start=1):
    ...     learn_level(level, resid_var, np.array([0]), np.array([[value]]),
    ...                 np.array([n]), weight=0.5, memory=100)
    >>> float(level[0, 0]), round(float(resid_var[0, 0]), 3)  # residuals 0, 2, -1
    (10.5, 1.667)
    """
    old, old_var = seen or (level.take(rows, axis=0), resid_var.take(rows, axis=0))
    first = n == 1
    some_first = first.any()
    resid = values - old
    if some_first:
        resid[first] = 0.0
    kept = resid if clip_limit is None else clipped(resid, clip_limit)
    share = (1.0 / np.minimum(n, memory))[:, None]
    resid_var[rows] = old_var + share * (kept * kept - old_var)
    step = resid if level_clip_limit is None else clipped(resid, level_clip_limit)
    new = old + weight * step
    if some_first:
        new[first] = values[first]
    level[rows] = new


def widen_range(
    low: np.ndarray,
    high: np.ndarray,
    rows: np.ndarray,
    values: np.ndarray,
    *,
    seen: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Stretch the range seen so far of agent row ``rows[i]`` to take in ``values[i]``
    (a fresh row's range is NaN, and takes the first value). Only the cells a value
    leaves are written (few, once a range has settled). ``seen``: the rows' ``low`` and
    ``high`` when the caller read them already.

    >>> low, high = np.full((1, 1), np.nan), np.full((1, 1), np.nan)
    >>> for value in [5.0, 3.0, 4.0]:
    ...     widen_range(low, high, np.array([0]), np.array([[value]]))
    >>> float(low[0, 0]), float(high[0, 0])
    (3.0, 5.0)
    """
    old_low, old_high = seen or (low.take(rows, axis=0), high.take(rows, axis=0))
    features = values.shape[1]
    for bound, old, within, widen in ((low, old_low, np.less_equal, np.fmin),
                                      (high, old_high, np.greater_equal, np.fmax)):  # fmt: skip
        at = np.flatnonzero(~within(old, values))  # outside, or a NaN on either side
        if len(at):
            bound[rows[at // features], at % features] = widen(
                old.reshape(-1)[at], values.reshape(-1)[at]
            )


def beyond_range(
    low: np.ndarray, high: np.ndarray, values: np.ndarray, margin: float, floor: np.ndarray
) -> np.ndarray:
    """Whether each value leaves the range seen so far by more than ``margin`` times
    its span, and by more than ``floor`` (so a metric flat until now does not turn
    its first wiggle into a new extreme). A fresh (NaN) range holds everything.

    >>> beyond_range(np.array([[0.0, 0.0]]), np.array([[10.0, 10.0]]),
    ...              np.array([[10.4, 11.0]]), margin=0.05, floor=np.array([0.1, 0.1])).tolist()
    [[False, True]]
    """
    reach = np.maximum(margin * (high - low), floor)
    return (values > high + reach) | (values < low - reach)


def deviations(
    mean: np.ndarray, var: np.ndarray, values: np.ndarray, std_floor: np.ndarray, rel_floor: float
) -> tuple[np.ndarray, np.ndarray]:
    """Signed z-scores of ``values`` against baselines, and the std each used.

    The std is floored at ``std_floor`` (per feature, absolute) and at
    ``rel_floor × |mean|``, so a metric that never moved does not turn the
    first small wiggle into a huge deviation.

    >>> z, std = deviations(np.array([[50.0]]), np.array([[0.0]]), np.array([[55.0]]),
    ...                     std_floor=np.array([1.0]), rel_floor=0.05)
    >>> float(std[0, 0]), float(z[0, 0])
    (2.5, 2.0)
    """
    std = np.maximum(np.sqrt(var), std_floor)
    std = np.maximum(std, rel_floor * np.abs(mean))
    return (values - mean) / std, std
