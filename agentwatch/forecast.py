"""Capacity forecast: a group's daily demand days ahead, with prediction intervals
(``GET /api/v1/capacity/forecast``; docs/orchestration-plan.md).

**Method.** Ordinary least squares (numpy only) of the daily demand ``y`` on a level, a
linear trend in days and, with at least :data:`MIN_DAYS_FOR_SEASON` days of history, a
weekly season (one indicator per weekday but the first)::

    y_t = a + b·t + s_weekday(t) + e_t

The ``level`` interval of the forecast at a future day with regressors ``x₀`` is the
classical prediction interval of a linear model::

    ŷ₀ ± t(ν, (1 + level) / 2) · s · √(1 + x₀ᵀ (XᵀX)⁻¹ x₀)

with ``s²`` the residual variance on ``ν = n − p`` degrees of freedom, so the intervals
widen with the distance ahead (the trend's uncertainty) and with short histories (few
degrees of freedom, a larger Student t quantile). Days missing from the history are left
out of the fit. Demand is never negative: point and bounds are clipped at 0.

With fewer than :data:`MIN_DAYS_FOR_SEASON` days neither season nor trend is fitted: in
less than two weeks a week's swing cannot be told apart from a trend (fitted on a week of
a weekly sine, the trend's slope is mostly the sine's, and the back-test's error doubled:
docs/orchestration-plan.md). The forecast is then the level (the mean so far), its
intervals come from the spread of the days seen, weekly swing included, on few degrees
of freedom, so they are wide; the answer says so.
With fewer than :data:`MIN_DAYS` days there is no forecast (:class:`ShortHistory`).

:func:`backtest` holds out the last days of a history, forecasts them from the rest and
reports the mean absolute percentage error and how often the intervals held the truth.

>>> history = simulated_history(56, level=40.0, trend=0.5, weekly_amplitude=8.0,
...                             noise=2.0, seed=1)
>>> result = backtest(history, holdout_days=14)
>>> result.mape < 0.1, result.coverage[0.95] >= 0.8
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

#: Fewest days of history for a forecast at all.
MIN_DAYS = 3
#: Fewest days of history for the weekly season to be fitted (two full weeks).
MIN_DAYS_FOR_SEASON = 14
#: The prediction intervals reported, as central probabilities.
LEVELS = (0.8, 0.95)


class ShortHistory(ValueError):
    """Too little history to forecast; the message says how much there is and is needed."""


@dataclass(frozen=True, slots=True)
class DailyForecast:
    """The forecast of ``days`` days after the history's last day (index 0 = the next day).

    ``bounds[level]`` holds ``(lower, upper)`` per day.
    """

    point: tuple[float, ...]
    bounds: dict[float, tuple[tuple[float, float], ...]]
    method: str
    history_days: int
    residual_std: float
    note: str = ""


def student_t_quantile(p: float, dof: float) -> float:
    """The ``p`` quantile of Student's t with ``dof`` degrees of freedom: exact for 1 and
    2, otherwise the Cornish-Fisher expansion around the normal quantile (Abramowitz and
    Stegun 26.7.5; error below 1e-3 from 3 degrees of freedom on).

    >>> round(student_t_quantile(0.975, 10), 3), round(student_t_quantile(0.975, 1), 3)
    (2.228, 12.706)
    >>> round(student_t_quantile(0.9, 1e9), 4)
    1.2816
    """
    if dof <= 1:
        return math.tan(math.pi * (p - 0.5))
    if dof <= 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = NormalDist().inv_cdf(p)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / dof + g2 / dof**2 + g3 / dof**3 + g4 / dof**4


def _design(days: np.ndarray, first_weekday: int, seasonal: bool) -> np.ndarray:
    """Regressors per day index: with the season, 1, t and weekday indicators 1…6;
    without it, the level alone."""
    if not seasonal:
        return np.ones((len(days), 1))
    weekday = (days + first_weekday) % 7
    columns = [np.ones_like(days, dtype=float), days.astype(float)]
    columns += [(weekday == d).astype(float) for d in range(1, 7)]
    return np.column_stack(columns)


def forecast_daily(
    history: Sequence[float],
    days: int,
    *,
    first_weekday: int = 0,
    levels: Sequence[float] = LEVELS,
) -> DailyForecast:
    """Forecast ``days`` days after ``history`` (one value per consecutive day, NaN for a
    day without data; ``first_weekday`` is the first day's weekday, Monday 0).

    >>> flat = forecast_daily([10.0, 12.0, 11.0, 9.0, 10.0], 3)
    >>> [round(v, 1) for v in flat.point], flat.method
    ([10.4, 10.4, 10.4], 'level (mean; under 14 days of history)')
    >>> [round(v, 1) for v in flat.bounds[0.95][0]]
    [6.9, 13.9]
    >>> forecast_daily([3.0, 4.0], 7)
    Traceback (most recent call last):
    ...
    agentwatch.forecast.ShortHistory: 2 days of history; a forecast needs at least 3 \
(and 14 for the weekly season): wait for more history or lower the lookback's gaps
    """
    values = np.asarray(history, dtype=float)
    known = np.isfinite(values)
    n = int(known.sum())
    if n < MIN_DAYS:
        raise ShortHistory(
            f"{n} days of history; a forecast needs at least {MIN_DAYS} (and "
            f"{MIN_DAYS_FOR_SEASON} for the weekly season): wait for more history or lower "
            "the lookback's gaps"
        )
    seasonal = n >= MIN_DAYS_FOR_SEASON
    index = np.arange(len(values))[known]
    x = _design(index, first_weekday, seasonal)
    y = values[known]
    coefficients, *_ = np.linalg.lstsq(x, y, rcond=None)
    residuals = y - x @ coefficients
    dof = max(n - x.shape[1], 1)
    s = float(np.sqrt(residuals @ residuals / dof))
    inverse = np.linalg.pinv(x.T @ x)
    ahead = np.arange(len(values), len(values) + days)
    x0 = _design(ahead, first_weekday, seasonal)
    point = x0 @ coefficients
    spread = s * np.sqrt(1.0 + np.einsum("ij,jk,ik->i", x0, inverse, x0))
    bounds = {}
    for level in levels:
        t = student_t_quantile((1 + level) / 2, dof)
        lower = np.clip(point - t * spread, 0, None)
        upper = np.clip(point + t * spread, 0, None)
        bounds[level] = tuple(zip(lower.tolist(), upper.tolist(), strict=True))
    note = ""
    if not seasonal:
        note = (
            f"only {n} days of history (fewer than {MIN_DAYS_FOR_SEASON}): no trend and no "
            "weekly season fitted, the forecast is the mean so far and its intervals are "
            "wide; they narrow once two weeks are stored"
        )
    return DailyForecast(
        point=tuple(np.clip(point, 0, None).tolist()),
        bounds=bounds,
        method=(
            "level + trend + weekly season (OLS)"
            if seasonal
            else f"level (mean; under {MIN_DAYS_FOR_SEASON} days of history)"
        ),
        history_days=n,
        residual_std=s,
        note=note,
    )


@dataclass(frozen=True, slots=True)
class BacktestResult:
    """How a forecast of the held-out days compared with what happened."""

    holdout_days: int
    mape: float  # mean |actual − forecast| / actual over days with actual > 0
    coverage: dict[float, float]  # level → share of held-out days inside its interval


def backtest(
    history: Sequence[float],
    holdout_days: int,
    *,
    first_weekday: int = 0,
    levels: Sequence[float] = LEVELS,
) -> BacktestResult:
    """Forecast the last ``holdout_days`` of ``history`` from the days before them.

    >>> result = backtest([10.0] * 20 + [10.0] * 5, holdout_days=5)
    >>> round(result.mape, 6), result.coverage[0.8]
    (0.0, 1.0)
    """
    if not 0 < holdout_days < len(history):
        raise ValueError(
            f"holdout_days={holdout_days} must be between 1 and the history's "
            f"{len(history) - 1} days"
        )
    train = list(history[:-holdout_days])
    actual = np.asarray(history[-holdout_days:], dtype=float)
    result = forecast_daily(train, holdout_days, first_weekday=first_weekday, levels=levels)
    point = np.asarray(result.point)
    known = np.isfinite(actual)
    positive = known & (actual > 0)
    mape = (
        float(np.mean(np.abs(actual[positive] - point[positive]) / actual[positive]))
        if positive.any()
        else 0.0
    )
    coverage = {}
    for level in levels:
        lower, upper = (np.asarray(b) for b in zip(*result.bounds[level], strict=True))
        inside = (actual >= lower - 1e-9) & (actual <= upper + 1e-9)
        coverage[level] = float(inside[known].mean()) if known.any() else 0.0
    return BacktestResult(holdout_days=holdout_days, mape=mape, coverage=coverage)


def simulated_history(
    days: int,
    *,
    level: float,
    trend: float,
    weekly_amplitude: float,
    noise: float,
    seed: int,
) -> list[float]:
    """A deterministic daily demand: ``level + trend·t``, a weekly season of
    ``weekly_amplitude`` (a sine over the week), Gaussian noise of std ``noise``.

    >>> simulated_history(3, level=10, trend=1, weekly_amplitude=0, noise=0, seed=0)
    [10.0, 11.0, 12.0]
    """
    rng = np.random.default_rng(seed)
    t = np.arange(days, dtype=float)
    season = weekly_amplitude * np.sin(2 * np.pi * t / 7)
    values = level + trend * t + season + rng.normal(0.0, noise, days)
    return np.clip(values, 0, None).tolist()


def first_day_above(values: Sequence[float], limit: float) -> int | None:
    """The index of the first value above ``limit`` (None: none is).

    >>> first_day_above([1, 5, 9], 4), first_day_above([1, 2], 4)
    (1, None)
    """
    return next((i for i, v in enumerate(values) if v > limit), None)
