"""bench/asd_single_series.py on a toy ASD folder: each metric its own series, the figures
counted as its docstring says."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np


def load_bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "asd_single_series.py"
    spec = importlib.util.spec_from_file_location("bench_asd_single_series", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def write_server(folder: Path, train: np.ndarray, test: np.ndarray, labels: np.ndarray,
                 interpretation: str) -> None:  # fmt: skip
    folder.mkdir(parents=True)
    header = ",".join(f"m{i + 1:02d}" for i in range(train.shape[1]))
    np.savetxt(folder / "train.csv", train, delimiter=",", header=header, comments="", fmt="%.4f")
    rows = np.column_stack([test, labels])
    np.savetxt(folder / "test.csv", rows, delimiter=",", header=header + ",label", comments="",
               fmt="%.4f")  # fmt: skip
    (folder / "interpretation.txt").write_text(interpretation)


def test_a_spike_of_one_metric_is_found_by_that_metric_s_series(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    train = 0.5 + rng.normal(0, 0.01, (4 * 288, 2))
    test = 0.5 + rng.normal(0, 0.01, (288, 2))
    test[100:103, 1] = 0.95  # metric 2 spikes: 45 std
    labels = np.zeros(288)
    labels[100:103] = 1
    write_server(tmp_path / "omi-1", train, test, labels, "100-102:2\n")
    bench = load_bench()
    out = tmp_path / "figures.json"
    result = bench.main([str(tmp_path), "--procs", "1", "--history-days", "4", "--out", str(out)])
    total = result["total"]
    assert (total["events"], total["events_detected"], total["found_by_a_named_metric"]) == (
        1,
        1,
        1,
    )
    assert total["normal_points"] == 285
    assert total["false_decisions"] == result["per_server"]["omi-1"]["false_decisions"] <= 1
    assert json.loads(out.read_text())["settings"]["anomaly_usual_day_bins"] == 48
