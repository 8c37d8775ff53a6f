"""The multivariate harness' scoring (bench/multivariate.py), checked on toy data by hand."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest


def load_bench():
    """bench/multivariate.py as a module (bench/ is scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / "multivariate.py"
    spec = importlib.util.spec_from_file_location("bench_multivariate", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


mv = load_bench()

LABELS = np.array([0, 0, 1, 1, 1, 0, 0, 1, 0, 0], dtype=bool)  # segments (2, 4) and (7, 7)


def test_best_f1_is_point_wise_without_adjustment() -> None:
    # one point of the 3-point segment ranks first, then a normal point, then the rest
    scores = np.array([0.0, 0.5, 0.9, 0.1, 0.1, 0.0, 0.0, 0.1, 0.0, 0.0])
    f1, threshold = mv.best_f1(scores, LABELS)
    # t = 0.9: tp 1, fp 0 -> 2/(1+0+4) = 0.4; t = 0.5: tp 1, fp 1 -> 2/6;
    # t = 0.1 (three tied points, all labelled): tp 4, fp 1 -> 8/(4+1+4) = 0.889
    assert threshold == 0.1 and f1 == pytest.approx(8 / 9)
    # with point adjustment the first threshold would already give F1 = 1 on segment (2, 4)


def test_auprc_groups_ties() -> None:
    scores = np.array([0.0, 0.5, 0.9, 0.1, 0.1, 0.0, 0.0, 0.1, 0.0, 0.0])
    # t=0.9: recall 1/4 at precision 1; t=0.5: no gain; t=0.1: recall +3/4 at precision 4/5
    assert mv.auprc(scores, LABELS) == pytest.approx(0.25 * 1 + 0.75 * 0.8)


def test_runtime_figures_count_events_false_decisions_and_delay() -> None:
    decisions = np.zeros(10, dtype=bool)
    decisions[[3, 4, 0]] = True  # two inside segment (2, 4), first 1 point after its start
    r = mv.runtime_figures(decisions, LABELS)
    assert (r["events"], r["events_detected"], r["event_recall"]) == (2, 1, 0.5)
    assert r["false_decisions"] == 1 and r["normal_points"] == 6
    assert r["false_per_1k_normal"] == pytest.approx(1000 / 6)
    assert r["delay_median"] == 1.0 and r["delay_max"] == 1


def test_hit_rate_takes_the_top_share_of_the_labelled_metrics() -> None:
    blame = np.array([0.1, 0.9, 0.8, 0.0, 0.7])
    assert mv.hit_rate(blame, (1, 3), 1.0) == 0.5  # top 2: 1, 2
    assert mv.hit_rate(blame, (1, 3), 1.5) == 0.5  # top 3: 1, 2, 4
    assert mv.hit_rate(blame, (1, 2, 4), 1.0) == 1.0
    figures = mv.interpretation_figures(
        np.tile(blame, (10, 1)), LABELS, ((2, 4, (1, 3)), (7, 7, (1, 2, 4)))
    )
    assert figures["points"] == 4
    assert figures["hit_rate@100%"] == pytest.approx((3 * 0.5 + 1.0) / 4)


def test_baselines_rank_a_broken_relationship_and_a_far_point(tmp_path: Path) -> None:
    """Two metrics that move together in the history: PCA and 1-NN flag a point where
    they part (each within its range); L2 only sees size."""
    rng = np.random.default_rng(0)
    t = rng.uniform(0.2, 0.8, 500)
    train = np.column_stack([t, t + rng.normal(0, 0.01, 500)])
    test = np.array([[0.5, 0.5], [0.3, 0.7], [0.6, 0.6]])
    labels = np.array([False, True, False])
    for run in (mv.pca_method(train, test, 0.9), mv.nearest_neighbour_method(train, test)):
        assert int(np.argmax(run.scores)) == 1 and mv.best_f1(run.scores, labels)[0] == 1.0
    assert mv.l2_method(train, test).scores[1] < mv.l2_method(train, test).scores[2]


def test_the_harness_runs_on_a_small_server(tmp_path: Path) -> None:
    """A two-metric server folder in ASD's layout runs end to end and writes JSON."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "omi-1"
    folder.mkdir()
    train = rng.uniform(0.4, 0.6, (400, 2))
    test = rng.uniform(0.4, 0.6, (100, 2))
    test[50:55] = [0.95, 0.05]
    labels = np.zeros(100, dtype=int)
    labels[50:55] = 1
    np.savetxt(folder / "train.csv", train, delimiter=",", header="m01,m02", comments="")
    np.savetxt(folder / "test.csv", np.column_stack([test, labels]), delimiter=",",
               header="m01,m02,label", comments="")  # fmt: skip
    (folder / "interpretation.txt").write_text("50-54:1,2\n")
    result = mv.main([str(tmp_path), "--out", str(tmp_path / "out.json")])
    assert (tmp_path / "out.json").exists()
    detector = result["summary"]["detector (fleet wiring)"]
    assert detector["runtime"]["events_detected"] == 1
    assert result["summary"]["1-NN distance"]["best_f1"] == 1.0


def test_episode_figures_count_what_the_episodes_cover() -> None:
    # one episode opened at point 3 (labelled) and held to point 5 (normal)
    in_episode = np.zeros(10, dtype=bool)
    in_episode[3:6] = True
    opened = np.zeros(10, dtype=bool)
    opened[3] = True
    e = mv.episode_figures(in_episode, opened, LABELS)
    assert e["events_overlapped"] == 1  # segment (2, 4), not (7, 7)
    assert (e["labelled_in_episode"], e["normal_in_episode"]) == (2, 1)
    assert (e["episodes_opened"], e["false_opened"]) == (1, 0)


def test_the_ceiling_finds_the_most_segments_within_the_false_budget(monkeypatch) -> None:
    """The ceiling picks, in hindsight, the threshold that finds the most segments with
    at most the budget of false decisions; a quiet period thins the decisions first."""
    labels = np.zeros(2000, dtype=bool)
    labels[[100, 101, 900, 1500]] = True  # segments (100, 101), (900, 900), (1500, 1500)
    scores = np.full(2000, 0.1)
    scores[[100, 101]] = 0.9
    scores[900] = 0.5
    scores[1500] = 0.3
    scores[[300, 310]] = 0.4  # two false points between the second and third segment
    monkeypatch.setattr(mv, "CEILING_FALSE_PER_1K", 1.0)  # 1.998 false decisions allowed
    assert mv.ceiling_figures(scores, labels, 0)["events_detected"] == 2  # 3 needs 0.3: 2 false
    scores[310] = 0.2
    found = mv.ceiling_figures(scores, labels, 0)
    assert (found["events_detected"], found["false_decisions"]) == (3, 1)
    # a quiet period of 1,000 points after the decision at 100 hides the one at 900
    assert mv.ceiling_figures(scores, labels, 1000)["events_detected"] == 2
