"""Anomaly scores from deviations against an agent's own baseline.

A heartbeat's score is the probability, under the agent's baseline, that none
of its metrics is as far out as the furthest one, with a Bonferroni
correction for looking at several metrics at once:
``score = 1 - min(1, F · erfc(max|z| / √2))``. So it lies in [0, 1], 0.997
at 3σ for one metric, and it names the feature that drove it.

:class:`BaselineDetector` is the same detector for one series, with River's
anomaly-detector API (``learn_one`` / ``score_one``), for evaluation on
recorded data; the dataflow runs the array form (:mod:`agentwatch.fleet`)
over thousands of agents at once. Both call the same functions.

>>> detector = BaselineDetector(features=("cpu",), std_floor={"cpu": 1.0}, warmup=5)
>>> for value in [40.0, 42.0, 41.0, 39.0, 40.0, 41.0]:
...     detector.learn_one({"cpu": value})
>>> detector.score_one({"cpu": 41.0}) < 0.5
True
>>> round(detector.score_one({"cpu": 60.0}), 3)
1.0
>>> detector.explain_one({"cpu": 60.0})[0]["feature"]
'cpu'
"""

from __future__ import annotations

import numpy as np
from river.base import AnomalyDetector
from scipy.special import erfc

from agentwatch.baselines import clip_limits, deviations, learn


def scores_from_deviations(z: np.ndarray) -> np.ndarray:
    """Scores in [0, 1] for rows of signed z-scores (``n × F``).

    >>> scores_from_deviations(np.array([[0.0, 1.0], [0.0, 6.0]])).round(3).tolist()
    [0.365, 1.0]
    """
    features = z.shape[1]
    furthest = np.abs(z).max(axis=1)
    return 1.0 - np.minimum(1.0, features * erfc(furthest / np.sqrt(2.0)))


def reasons(
    features: tuple[str, ...],
    values: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    z: np.ndarray,
    min_sigma: float,
    most: int = 3,
) -> list[dict[str, float | str]]:
    """The features of one heartbeat that drove its score, furthest first.

    Names every feature at least ``min_sigma`` from baseline (at most
    ``most``), and always the furthest one.
    """
    order = np.argsort(-np.abs(z))
    picked = [i for i in order[:most] if abs(z[i]) >= min_sigma] or [int(order[0])]
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
    """One series' baseline detector, with River's anomaly-detector API.

    Scores are 0 until ``warmup`` values have been learned. Score before you
    learn, so a point never hides its own anomaly.
    """

    def __init__(
        self,
        features: tuple[str, ...],
        std_floor: dict[str, float] | None = None,
        warmup: int = 30,
        memory: int = 2880,
        rel_floor: float = 0.05,
        clip_sigma: float = 4.0,
        reason_sigma: float = 3.0,
    ):
        self.features = tuple(features)
        self.std_floor = dict(std_floor or {})
        self.warmup = warmup
        self.memory = memory
        self.rel_floor = rel_floor
        self.clip_sigma = clip_sigma
        self.reason_sigma = reason_sigma
        self._floor = np.array([self.std_floor.get(f, 0.0) for f in self.features])
        self._mean = np.zeros((1, len(self.features)))
        self._var = np.zeros((1, len(self.features)))
        self._count = np.zeros(1)
        self._row = np.zeros(1, dtype=np.int64)

    def _vector(self, x: dict) -> np.ndarray:
        return np.array([[float(x[f]) for f in self.features]])

    @property
    def warmed_up(self) -> bool:
        """Whether enough values were learned for scores to count."""
        return self._count[0] >= self.warmup

    def learn_one(self, x: dict) -> None:
        """Fold one observation into the baseline."""
        values, _, std = self._deviations(x)
        limit = clip_limits(std, np.array([self.warmed_up]), self.clip_sigma)
        learn(self._mean, self._var, self._count, self._row, values, self.memory, limit)

    def _deviations(self, x: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        values = self._vector(x)
        z, std = deviations(self._mean, self._var, values, self._floor, self.rel_floor)
        return values, z, std

    def score_one(self, x: dict) -> float:
        """Anomaly score of ``x`` in [0, 1] (0 while warming up)."""
        if not self.warmed_up:
            return 0.0
        _, z, _ = self._deviations(x)
        return float(scores_from_deviations(z)[0])

    def explain_one(self, x: dict) -> list[dict[str, float | str]]:
        """The features that drove the score of ``x``, furthest from baseline first."""
        values, z, std = self._deviations(x)
        return reasons(self.features, values[0], self._mean[0], std[0], z[0], self.reason_sigma)
