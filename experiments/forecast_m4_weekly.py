"""M4 Weekly, horizon 13: a global LSTM forecaster against Naive2 and Theta.

Target (issue 7): sMAPE <= 8.0 in <= 30 minutes; anchors Naive2 9.161, Theta 9.093.

    .venv/bin/python experiments/forecast_m4_weekly.py                 # full run
    .venv/bin/python experiments/forecast_m4_weekly.py --quick         # seconds: 30 series

The model is trained on each series without its last 13 weeks (those are the validation
holdout), then forecasts the test horizon from the whole training series. Prints one JSON object
with the model's and the baselines' sMAPE, MASE and OWA, and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from lstmkit.baselines import Naive2, Theta
from lstmkit.data.series_io import read_m4, split_last
from lstmkit.tasks.forecaster import Forecaster, score_forecasts

DATA = Path(os.environ.get("LSTMKIT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
HORIZON = 13


def run(
    quick: bool, data_dir: Path, max_minutes: float, seed: int, members: int
) -> dict[str, object]:
    start = time.time()
    train, test = read_m4(data_dir / "m4" / "Weekly-train.csv", data_dir / "m4" / "Weekly-test.csv")
    assert test is not None
    if quick:
        train = replace(train, series=train.series[:30])
        test = replace(test, series=test.series[:30])
    history, holdout = split_last(train, HORIZON)
    points = []
    for k in range(1 if quick else members):
        model = Forecaster(
            horizon=HORIZON,
            lookback=52,
            strategy="mimo",
            likelihood="mae",
            scaling="log",
            cell="lstm",
            hidden_size=16 if quick else 64,
            batch_size=256,
            max_windows=5 if quick else 200,
            max_epochs=1 if quick else 40,
            max_time=None if quick else max_minutes / members,
            lr=3e-3,
            clip_norm=1.0,
            seed=seed + k,
            progress=False,
            tensorboard=False,
        )
        model.fit(history, val=(history, holdout))
        points.append(model.predict_arrays(train)[0])
    point = np.median(np.stack(points), 0)
    ours = score_forecasts(train, test, point, season=1)
    result: dict[str, object] = {"lstm": ours}
    baselines = (
        {"naive2": Naive2(HORIZON)}
        if quick
        else {"naive2": Naive2(HORIZON), "theta": Theta(HORIZON)}
    )
    for name, baseline in baselines.items():
        frame = baseline.predict(train)
        result[name] = score_forecasts(
            train, test, frame["y_hat"].to_numpy().reshape(len(train), HORIZON), season=1
        )
    result.update(
        series=len(train),
        members=len(points),
        quick=quick,
        wall_s=round(time.time() - start, 1),
        target_smape=8.0,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--max-minutes", type=float, default=25.0, help="training budget in all")
    parser.add_argument("--members", type=int, default=3, help="ensemble size (median)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(
        json.dumps(run(args.quick, args.data, args.max_minutes, args.seed, args.members), indent=2)
    )


if __name__ == "__main__":
    main()
