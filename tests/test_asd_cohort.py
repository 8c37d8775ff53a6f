"""bench/asd_cohort.py: its offline replay of the detector's decisions must be the
detector's own (else its cohort figures would measure the replay, not the view), and the
cohort tail it learns online must judge a point only by earlier ones."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name: str):
    """A bench script as a module (bench/ is scripts, not a package)."""
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


cohort = load("asd_cohort")


def test_the_replay_makes_the_detectors_own_decisions() -> None:
    from agentwatch.settings import Settings

    rng = np.random.default_rng(3)
    rows = rng.normal(0.5, 0.05, size=(700, 3))
    rows[650:653, 1] += 0.6  # a spike well after the warm-up (288 points at 5 min)
    server = SimpleNamespace(metrics=("a", "b", "c"), train=rows[:500], test=rows[500:])
    settings = Settings()
    out = cohort.detector_outputs(server, settings)
    assert out["fire"][650]
    p = cohort.detector_for(server.metrics, server.train, settings)._params
    scores, fire = cohort.replay(out["surprise"], out["extreme"], out["zw"], out["judged"],
                                 None, p, 0.2)  # fmt: skip
    assert np.array_equal(fire, out["fire"])
    assert np.allclose(scores, out["score"], atol=1e-4)


def test_the_online_tail_judges_a_point_by_earlier_points_only() -> None:
    raw = np.r_[np.linspace(0.0, 1.0, 200), 50.0, 50.0]
    ordinary = np.ones(len(raw), dtype=bool)
    chances = cohort.online_chances(raw, 200, 1000, ordinary)
    assert (chances[:200] == 1.0).all()
    # the first 50 is beyond all 200 earlier points: far in their exponential tail
    assert chances[200] < 1e-6
    # the second one has the first among its history: no longer beyond every point
    assert chances[201] > chances[200]
