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

>>> import numpy as np
>>> mean, var, count = np.zeros((1, 1)), np.zeros((1, 1)), np.zeros(1)
>>> for value in [10.0, 12.0, 14.0]:
...     learn(mean, var, count, np.array([0]), np.array([[value]]), memory=100)
>>> float(mean[0, 0]), round(float(var[0, 0]), 3), int(count[0])
(12.0, 2.667, 3)
"""

from __future__ import annotations

import numpy as np

#: The metrics a baseline is kept for, in column order.
FEATURES: tuple[str, ...] = (
    "cpu_usage",
    "memory_usage",
    "disk_usage",
    "network_latency",
    "active_tasks",
    "error_rate",
    "response_time_avg",
    "bytes_out",
)


def learn(
    mean: np.ndarray,
    var: np.ndarray,
    count: np.ndarray,
    rows: np.ndarray,
    values: np.ndarray,
    memory: int,
    clip_limit: np.ndarray | None = None,
) -> None:
    """Fold ``values[i]`` into the baseline of agent row ``rows[i]``, in place.

    ``rows`` must not repeat (one heartbeat per agent per call). With
    ``clip_limit`` (per row and feature, ``inf`` for none), a value is learned
    as if it stood at most that far from the mean (see :func:`clip_limits`).
    """
    old_mean = mean[rows]
    old_var = var[rows]
    delta = values - old_mean
    if clip_limit is not None:
        delta = np.clip(delta, -clip_limit, clip_limit)
    n = count[rows] + 1
    weight = (1.0 / np.minimum(n, memory))[:, None]
    mean[rows] = old_mean + weight * delta
    var[rows] = (1.0 - weight) * (old_var + weight * delta * delta)
    count[rows] = n


def clip_limits(std: np.ndarray, warm: np.ndarray, clip_sigma: float) -> np.ndarray:
    """How far from the mean each warm row may learn: ``clip_sigma`` times the std the
    row was judged with (floored, so a metric flat during warm-up still learns later).

    >>> clip_limits(np.array([[2.0], [2.0]]), np.array([True, False]), 4.0).tolist()
    [[8.0], [inf]]
    """
    return np.where(warm[:, None], clip_sigma * std, np.inf)


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
