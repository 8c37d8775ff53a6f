"""The NAB scorer, checked against hand arithmetic, and the bench's results layout."""

from __future__ import annotations

import csv
import importlib.util
import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from agentwatch.evaluation import (
    PROFILES,
    LabelledSeries,
    ThresholdSweep,
    load_corpus,
    load_profiles,
    point_credits,
    probation_length,
    score_corpus,
    score_series,
)

NAB_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "NAB"


def load_bench():
    """bench/nab.py as a module (bench/ is scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / "nab.py"
    spec = importlib.util.spec_from_file_location("bench_nab", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# One series of 100 points with one window [40, 49] (width w = 10, right edge r = 49).
# Probation: floor(0.15 * 100) = 15 points (0..14) are not scored.
# Detections at:
#   10  in probation                         -> ignored
#   20  before the first window             -> -1 * fpWeight
#   42  first detection in the window       -> y = -(49 - 42 + 1) / 10 = -0.8
#       S(-0.8) = 2 / (1 + e^-4) - 1 = 2 / 1.0183156 - 1 = 0.964028
#       S(-1)   = 2 / (1 + e^-5) - 1 = 2 / 1.0067379 - 1 = 0.986614
#       credit  = 0.964028 / 0.986614 = 0.977108        -> +0.977108 * tpWeight
#   45  second detection in the window      -> ignored (a window counts once)
#   52  after the window: |52 - 49| / (10 - 1) = 1/3
#       S(1/3) = 2 / (1 + e^(5/3)) - 1 = 2 / 6.294490 - 1 = -0.682262 -> -0.682262 * fpWeight
# standard (tp 1, fp 0.11, fn 1):
#   raw = 0.977108 - 0.11 - 0.11 * 0.682262 = 0.792059
#   null = -1 (one window missed), perfect = +1 -> 100 * (0.792059 + 1) / 2 = 89.603
# reward_low_FP_rate (fp 0.22):
#   raw = 0.977108 - 0.22 - 0.22 * 0.682262 = 0.607010 -> 100 * 1.607010 / 2 = 80.350
# reward_low_FN_rate (fn 2):
#   raw = 0.792059 (no window missed), null = -2, perfect = 1 -> 100 * 2.792059 / 3 = 93.069
HAND = {
    "standard": (0.792059, 89.603),
    "reward_low_FP_rate": (0.607010, 80.350),
    "reward_low_FN_rate": (0.792059, 93.069),
}


def hand_case() -> tuple[LabelledSeries, np.ndarray]:
    series = LabelledSeries.from_windows("g/hand.csv", length=100, windows=[(40, 49)])
    scores = np.zeros(100)
    scores[[10, 20, 42, 45, 52]] = 1.0
    return series, scores


@pytest.mark.parametrize("profile_name", list(HAND))
def test_known_case_scored_by_hand(profile_name):
    series, scores = hand_case()
    credits = point_credits(series)
    expected_raw, expected_normalised = HAND[profile_name]

    result = score_corpus([credits], [scores], PROFILES[profile_name], threshold=0.5)

    assert result.raw == pytest.approx(expected_raw, abs=1e-5)
    assert result.normalised == pytest.approx(expected_normalised, abs=1e-3)
    (one,) = result.series
    assert (one.windows_detected, one.windows_missed, one.false_positives) == (1, 0, 2)


def test_missed_window_and_late_hit():
    series = LabelledSeries.from_windows("g/s.csv", length=100, windows=[(40, 49)])
    credits = point_credits(series)
    standard = PROFILES["standard"]
    nothing = np.zeros(100, dtype=bool)
    assert score_series(credits, nothing, standard).raw == -1.0
    # the last point of a window: y = -1/10, S(-0.1) / S(-1) = 0.244919 / 0.986614
    last = nothing.copy()
    last[49] = True
    assert score_series(credits, last, standard).raw == pytest.approx(0.248242, abs=1e-5)
    # far after the window (y > 3) costs the full FP weight
    far = nothing.copy()
    far[90] = True
    assert score_series(credits, far, standard).raw == pytest.approx(-1.0 - 0.11)


def test_probation_follows_nab():
    assert probation_length(100) == 15
    assert probation_length(4032) == 604
    assert probation_length(22695) == 750  # capped at 0.15 * 5000


def test_profile_weights():
    assert [(p.tp_weight, p.fp_weight, p.fn_weight) for p in PROFILES.values()] == [
        (1.0, 0.11, 1.0),
        (1.0, 0.22, 1.0),
        (1.0, 0.11, 2.0),
    ]
    if (NAB_DIR / "config" / "profiles.json").exists():
        assert load_profiles(NAB_DIR / "config" / "profiles.json") == PROFILES


def toy_corpus() -> tuple[list, list[np.ndarray]]:
    """Three series; the best standard threshold is 0.6 (worked out below)."""
    a = LabelledSeries.from_windows("g/a.csv", length=100, windows=[(40, 49)])
    b = LabelledSeries.from_windows("g/b.csv", length=100, windows=[])
    c = LabelledSeries.from_windows("g/c.csv", length=100, windows=[(60, 69)])
    scores_a, scores_b, scores_c = np.zeros(100), np.zeros(100), np.zeros(100)
    scores_a[[41, 45, 80]] = [0.9, 0.5, 0.7]  # early hit; later hit; FP far after the window
    scores_b[30] = 0.8  # an FP in a series without windows
    scores_c[[62, 20]] = [0.6, 0.4]  # hit in c's window; FP before it
    return [point_credits(s) for s in (a, b, c)], [scores_a, scores_b, scores_c]


def test_sweep_picks_the_best_threshold_across_the_corpus():
    # standard, by threshold (null = -2):
    #   inf: -2
    #   0.9: a's window hit at y = -0.9 (credit 0.99..) -> about -1.01
    #   0.8: plus b's FP (-0.11)        0.7: plus a's far FP (-0.11)
    #   0.6: plus c's window hit at y = -0.8 (+1 + 0.977)   -> about 0.75, the best
    #   0.5: a's later hit changes nothing (0.6 wins the tie: higher threshold)
    #   0.4: plus c's FP before its window (-0.11)
    credits, scores = toy_corpus()
    sweep = ThresholdSweep(credits, scores)
    threshold, raw = sweep.best(PROFILES["standard"])
    assert threshold == 0.6
    hit_a = 2 / (1 + np.exp(-4.5)) - 1  # S(-0.9)
    # a's hit, b's FP before any window, a's FP far after its window, c's hit at y = -0.8
    by_hand = hit_a / (2 / (1 + np.exp(-5)) - 1) - 0.11 - 0.11 + 0.977108
    assert raw == pytest.approx(by_hand, abs=1e-4)

    # a brute force over every candidate threshold agrees, for every profile
    for profile in PROFILES.values():
        candidates = [np.inf, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.0]
        brute = [score_corpus(credits, scores, profile, t).raw for t in candidates]
        assert sweep.best(profile)[1] == pytest.approx(max(brute))


def test_sweep_equals_direct_scoring_at_every_threshold():
    rng = np.random.default_rng(7)
    corpus = [
        LabelledSeries.from_windows(f"g/{k}.csv", 300, [(60 + 7 * k, 80 + 7 * k), (200, 230)])
        for k in range(4)
    ]
    credits = [point_credits(s) for s in corpus]
    scores = [np.round(rng.random(300) ** 4, 2) for _ in corpus]  # many ties, as saturation makes
    sweep = ThresholdSweep(credits, scores)
    for profile in PROFILES.values():
        swept = sweep.raw_scores(profile)
        direct = [score_corpus(credits, scores, profile, t).raw for t in sweep.thresholds]
        np.testing.assert_allclose(swept, direct, atol=1e-9)


def test_never_firing_is_chosen_when_every_threshold_loses():
    credits, _ = toy_corpus()
    ties = [np.ones(100) for _ in credits]  # everything at 1.0: 85 FPs per series
    threshold, raw = ThresholdSweep(credits, ties).best(PROFILES["standard"])
    assert threshold == np.inf
    assert raw == -2.0
    assert score_corpus(credits, ties, PROFILES["standard"]).normalised == 0.0


def write_tiny_corpus(root: Path) -> None:
    """A NAB-layout directory with two series of 300 five-minute points."""
    start = datetime(2024, 1, 1)
    stamps = [(start + timedelta(minutes=5 * i)).strftime("%Y-%m-%d %H:%M:%S") for i in range(300)]
    rng = np.random.default_rng(3)
    windows = {}
    for group, name, spike in (("groupA", "calm.csv", None), ("groupB", "spiky.csv", 200)):
        values = 50 + rng.normal(0, 1, 300)
        if spike is not None:
            values[spike] += 40
            windows[f"{group}/{name}"] = [[f"{stamps[spike - 5]}.000000", f"{stamps[spike + 5]}"]]
        else:
            windows[f"{group}/{name}"] = []
        (root / "data" / group).mkdir(parents=True)
        with open(root / "data" / group / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["timestamp", "value"])
            writer.writerows(zip(stamps, values.round(3).tolist(), strict=True))
    (root / "labels").mkdir()
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))


def test_out_writes_nab_results_layout(tmp_path, capsys):
    bench = load_bench()
    write_tiny_corpus(tmp_path / "NAB")
    out = tmp_path / "results"

    report = bench.main([str(tmp_path / "NAB"), "--out", str(out)])

    for name in ("groupA/calm.csv", "groupB/spiky.csv"):
        with open(out / name, newline="") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == [
            "timestamp",
            "value",
            "anomaly_score",
            "label",
            "decision",
            "likelihood",
        ]
        assert len(rows) == 300
        threshold = report["settings"]["anomaly_threshold"]
        for row in rows:
            assert int(row["decision"]) == int(float(row["anomaly_score"]) >= threshold)
    labels = [int(row["label"]) for row in rows]  # spiky: window [195, 205]
    assert labels[195:206] == [1] * 11 and sum(labels) == 11
    assert json.loads((out / "summary.json").read_text())["points"] == 600
    assert "groupB/spiky.csv" in capsys.readouterr().out

    # any NAB scorer can re-score the files: ours, reading them back, agrees
    rescored = bench.main([str(tmp_path / "NAB"), "--score-results", str(out)])
    scope = "all (2 series)"
    assert rescored["scopes"][scope]["sweep on score"] == report["scopes"][scope]["sweep on score"]


def test_whole_corpus_loads_when_present():
    if not (NAB_DIR / "labels" / "combined_windows.json").exists():
        pytest.skip("NAB data not present")
    corpus = load_corpus(NAB_DIR)
    assert len(corpus) == 58
    assert sum(len(s.windows) for s in corpus) == 116
