"""Back-test of the capacity forecast (agentwatch/forecast.py) on simulated histories:
the figures of docs/orchestration-plan.md.

    .venv/bin/python bench/forecast_backtest.py

Each history is deterministic (``simulated_history``: level 40, trend +0.3 a day, a
weekly sine of amplitude 8, Gaussian noise of std 3; seeds 0 … N-1); its last days are
held out, forecast from the rest, and compared: MAPE and the share of held-out days
inside the 80 % and 95 % intervals, averaged over the series. A second table shows why
a history under 14 days gets the level alone: the same back-test with level + trend.
Pure numpy; a few seconds.
"""

from __future__ import annotations

import argparse

import numpy as np

from agentwatch import forecast
from agentwatch.forecast import backtest, simulated_history

SIMULATION = {"level": 40.0, "trend": 0.3, "weekly_amplitude": 8.0, "noise": 3.0}


def run(days: int, holdout: int, series: int) -> tuple[float, float, float]:
    results = [
        backtest(simulated_history(days, seed=seed, **SIMULATION), holdout)
        for seed in range(series)
    ]
    return (
        float(np.mean([r.mape for r in results])),
        float(np.mean([r.coverage[0.8] for r in results])),
        float(np.mean([r.coverage[0.95] for r in results])),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=200, help="Simulated histories per row.")
    args = parser.parse_args()
    print(f"{'history':>8} {'held out':>8} {'MAPE':>7} {'cover 80%':>9} {'cover 95%':>9}")
    for days, holdout in ((120, 30), (90, 14), (70, 14), (42, 14), (28, 7), (20, 7), (10, 3)):
        mape, c80, c95 = run(days, holdout, args.series)
        train = days - holdout
        print(f"{train:>6} d {holdout:>6} d {mape:>7.3f} {c80:>9.3f} {c95:>9.3f}")
    print("\nunder 14 days of history, level + trend instead of the level alone:")
    original = forecast._design

    def with_trend(days, first_weekday, seasonal):
        x = original(days, first_weekday, True)
        return x if seasonal else x[:, :2]

    forecast._design = with_trend
    try:
        for days, holdout in ((20, 7), (10, 3)):
            mape, c80, c95 = run(days, holdout, args.series)
            print(f"{days - holdout:>6} d {holdout:>6} d {mape:>7.3f} {c80:>9.3f} {c95:>9.3f}")
    finally:
        forecast._design = original


if __name__ == "__main__":
    main()
