"""Yearly sunspots (statsmodels), the last 30 years held out: LSTM forecaster against the ARIMA
whose order AIC chooses, in the same run.

Target (issue 7): a lower RMSE than the best-AIC ARIMA.

    .venv/bin/python experiments/forecast_sunspots.py            # full run: 7-9 min, 2 busy cores
    .venv/bin/python experiments/forecast_sunspots.py --quick    # seconds: a 2-point grid
    .venv/bin/python experiments/forecast_sunspots.py --one-step # one-step-ahead protocol

Protocol (the 30 test years, 1979 .. 2008, are used once, for the final score):

1. **Selection on validation years only.** Each setting of :data:`GRID` (strategy, lookback,
   scaling, calendar feature) is trained on the years before a validation origin and forecasts
   the next 30 years, at two origins inside the training years: 1919 .. 1948 (from 1700 .. 1918)
   and 1949 .. 1978 (from 1700 .. 1948). Each is an ensemble (median) of ``--val-members`` seeds;
   the setting with the lowest mean validation RMSE over the two origins is chosen.
2. **Refit and test once.** The chosen setting is trained on all training years (1700 .. 1978)
   with ``--members`` seeds; the median of their forecasts of 1979 .. 2008 is scored.

ARIMA(p, d, q): ``d`` by KPSS tests (d <= 1), then p <= 9, q <= 2 by AIC, on the same training
years, on the raw counts (the target's baseline). For information the JSON also gives ARIMA's RMSE
at the validation origins and an ARIMA chosen the same way on the square roots of the counts
(forecasts squared back); neither takes part in the target.

``--one-step`` runs the other reading of "the last 30 years held out", the one of the classic
sunspot comparisons (Zhang 2003 and the hybrid ARIMA/network papers after it): every model is
fitted once on the training years, then forecasts each held-out year one step ahead from the
actual values of all years before it (no refit). The same two-stage protocol: a grid of
:data:`ONE_STEP_GRID` (lookback x scaling x phase feature; the strategy does not matter at
horizon 1) is scored on the one-step forecasts of the two validation windows, each model fitted
on the years before its window; the winner is refitted on 1700 .. 1978 and scored once on
1979 .. 2008. ARIMA: the order and parameters by the same KPSS/AIC search on 1700 .. 1978, then
the one-step predictions of the Kalman filter through the held-out years with those parameters.
The hyperparameters outside the grid are the 30-year protocol's, unchanged.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
import torch

from lstmkit.baselines import ARIMA
from lstmkit.data.series_io import SeriesSet, read_long, split_last
from lstmkit.metrics import forecast as fm
from lstmkit.tasks.forecaster import Forecaster

HOLDOUT = 30
VAL_ORIGINS = 2  # validation windows of HOLDOUT years just before the test years

#: The settings compared on the validation years: 2 strategies x 2 lookbacks (5.5 and 8 cycles)
#: x 2 scalings x the 11-year phase feature on or off = 16 settings.
GRID: list[dict[str, Any]] = [
    {"strategy": s, "lookback": lb, "scaling": sc, "calendar": cal}
    for s, lb, sc, cal in itertools.product(
        ("mimo", "recursive"), (60, 90), ("standard", "sqrt"), (True, False)
    )
]
QUICK_GRID: list[dict[str, Any]] = [
    {"strategy": "mimo", "lookback": 60, "scaling": "standard", "calendar": True},
    {"strategy": "recursive", "lookback": 60, "scaling": "sqrt", "calendar": False},
]

#: The one-step settings: lookback of 2 to 8 cycles x scaling x phase feature = 16 settings.
ONE_STEP_GRID: list[dict[str, Any]] = [
    {"strategy": "mimo", "lookback": lb, "scaling": sc, "calendar": cal}
    for lb, sc, cal in itertools.product((20, 30, 60, 90), ("standard", "sqrt"), (True, False))
]
ONE_STEP_QUICK_GRID: list[dict[str, Any]] = [
    {"strategy": "mimo", "lookback": 30, "scaling": "standard", "calendar": True},
    {"strategy": "mimo", "lookback": 60, "scaling": "sqrt", "calendar": False},
]


def load() -> SeriesSet:
    raw = sm.datasets.sunspots.load_pandas().data
    frame = pd.DataFrame({"ds": raw["YEAR"].astype(int), "y": raw["SUNACTIVITY"].astype(float)})
    return read_long(frame)


def validation_origins(train: SeriesSet, n: int) -> list[tuple[SeriesSet, SeriesSet]]:
    """``(history, actual)`` pairs: the last ``n`` windows of ``HOLDOUT`` years of ``train``,
    the oldest first, each with every year before it as history."""
    pairs = []
    rest = train
    for _ in range(n):
        rest, actual = split_last(rest, HOLDOUT)
        pairs.append((rest, actual))
    return pairs[::-1]


def years(s: SeriesSet) -> str:
    ds = s.series[0].ds
    return f"{int(ds[0])}-{int(ds[-1])}"


def prefixes(data: SeriesSet, start: int, n: int) -> SeriesSet:
    """``n`` series: the first series of ``data`` cut before index ``start``, ``start + 1``,
    ... ``start + n - 1``; forecasting one step from each gives the one-step forecasts of
    the years ``start .. start + n - 1`` (indices)."""
    s = data.series[0]
    cuts = [
        replace(s, unique_id=f"{s.unique_id}@{int(s.ds[t])}", ds=s.ds[:t], y=s.y[:t])
        for t in range(start, start + n)
    ]
    return replace(data, series=cuts)


def ensemble(
    history: SeriesSet,
    setting: dict[str, Any],
    members: int,
    seed: int,
    epochs: int,
    hidden: int,
    one_step_from: SeriesSet | None = None,
) -> np.ndarray:
    """The median of ``members`` forecasts (seeds ``seed ..``) of the HOLDOUT years after
    ``history``; with ``one_step_from`` (see :func:`prefixes`), of the step after each of its
    series by a model fitted on ``history`` (horizon 1)."""
    forecasts = []
    for k in range(members):
        model = Forecaster(
            horizon=HOLDOUT if one_step_from is None else 1,
            likelihood="mae",
            hidden_size=hidden,
            season=11,
            batch_size=32,
            max_epochs=epochs,
            lr=3e-3,
            seed=seed + k,
            progress=False,
            tensorboard=False,
            **setting,
        )
        model.fit(history)
        if one_step_from is None:
            forecasts.append(model.predict_arrays(history)[0][0])
        else:
            forecasts.append(model.predict_arrays(one_step_from)[0][:, 0])
    return np.asarray(np.median(np.stack(forecasts), 0))


def arima_forecast(history: SeriesSet, quick: bool, sqrt: bool = False) -> tuple[np.ndarray, Any]:
    model = ARIMA(HOLDOUT, max_p=2 if quick else 9, max_d=1, max_q=1 if quick else 2)
    y = history.series[0].y
    out = model.forecast(np.sqrt(y) if sqrt else y)
    order = list(model.chosen_orders_[-1] or ())
    return (np.clip(out, 0.0, None) ** 2 if sqrt else out), order


def setup(
    quick: bool, members: int, val_members: int, epochs: int, hidden_size: int
) -> tuple[SeriesSet, SeriesSet, SeriesSet, dict[str, int]]:
    """``(data, train, test, budget)``: the series, its split, and the training budget (quick
    runs: 1 seed everywhere, 10 epochs)."""
    data = load()
    train, test = split_last(data, HOLDOUT)
    if quick:
        members, val_members, epochs = 1, 1, 10
    budget = {
        "members": members,
        "val_members": val_members,
        "epochs": epochs,
        "hidden_size": hidden_size,
    }
    return data, train, test, budget


def select(
    grid: list[dict[str, Any]], scores_of: Callable[[dict[str, Any]], list[float]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(table, chosen)``: each setting of ``grid`` with its validation RMSEs (``scores_of``)
    and their mean, and the setting with the lowest mean."""
    table = []
    for setting in grid:
        scores = scores_of(setting)
        mean = round(float(np.mean(scores)), 2)
        table.append({**setting, "val_rmse": [round(v, 2) for v in scores], "val_rmse_mean": mean})
    best = min(table, key=lambda row: row["val_rmse_mean"])
    return table, {k: best[k] for k in ("strategy", "lookback", "scaling", "calendar")}


def selection_record(
    table: list[dict[str, Any]], chosen: dict[str, Any], windows: list[str], test: SeriesSet
) -> dict[str, object]:
    """The JSON's account of the selection: the grid, the winner and the windows used."""
    return {
        "chosen": chosen,
        "chosen_val_rmse_mean": min(row["val_rmse_mean"] for row in table),
        "validation_windows": windows,
        "test_window": years(test),
        "grid": table,
    }


def target_scores(
    y_test: np.ndarray, ours: np.ndarray, arima: np.ndarray, order: Any, quick: bool
) -> dict[str, object]:
    """The target's comparison on the test years (quick runs use a smaller ARIMA grid,
    p <= 2, q <= 1: no evidence for the target, so ``target_met`` is None)."""
    lstm_rmse, arima_rmse = fm.rmse(y_test, ours), fm.rmse(y_test, arima)
    return {
        "lstm_rmse": lstm_rmse,
        "arima_rmse": arima_rmse,
        "arima_order": order,
        "target_met": None if quick else bool(lstm_rmse < arima_rmse),
        "lstm_mae": fm.mae(y_test, ours),
        "arima_mae": fm.mae(y_test, arima),
    }


def arima_one_step(y: np.ndarray, start: int, n: int, quick: bool) -> tuple[np.ndarray, Any]:
    """One-step predictions of ``y[start : start + n]`` by the ARIMA whose order and
    parameters are chosen and fitted on ``y[:start]``: the Kalman filter runs on through the
    held-out values with the parameters fixed (no refit)."""
    model = ARIMA(1, max_p=2 if quick else 9, max_d=1, max_q=1 if quick else 2)
    order, result = model.select(y[:start])
    if result is None:
        return y[start - 1 : start + n - 1].copy(), None
    extended = result.append(y[start : start + n], refit=False)
    predicted = extended.get_prediction(start=start, end=start + n - 1).predicted_mean
    return np.asarray(predicted), list(order or ())


def run_one_step(
    quick: bool, members: int, val_members: int, seed: int, epochs: int, hidden_size: int
) -> dict[str, object]:
    """The one-step-ahead protocol (module docstring)."""
    start, cpu = time.time(), time.process_time()
    data, train, test, budget = setup(quick, members, val_members, epochs, hidden_size)
    members, val_members, epochs = budget["members"], budget["val_members"], budget["epochs"]
    y, y_test = data.series[0].y, test.series[0].y
    n_train = len(y) - HOLDOUT
    grid = ONE_STEP_QUICK_GRID if quick else ONE_STEP_GRID
    # the 30-year protocol's validation windows, as the index where each starts
    windows = validation_origins(train, 1 if quick else VAL_ORIGINS)
    origins = [len(history.series[0]) for history, _ in windows]

    def one_step_scores(setting: dict[str, Any]) -> list[float]:
        scores = []
        for origin in origins:
            history, cuts = prefixes(data, origin, 1), prefixes(data, origin, HOLDOUT)
            forecast = ensemble(history, setting, val_members, seed, epochs, hidden_size, cuts)
            scores.append(fm.rmse(y[origin : origin + HOLDOUT], forecast))
        return scores

    table, chosen = select(grid, one_step_scores)
    ours = ensemble(
        train, chosen, members, seed, epochs, hidden_size, prefixes(data, n_train, HOLDOUT)
    )
    arima, order = arima_one_step(y, n_train, HOLDOUT, quick)
    arima_val = [arima_one_step(y, origin, HOLDOUT, quick) for origin in origins]
    result: dict[str, object] = {
        "protocol": "one-step",
        **target_scores(y_test, ours, arima, order, quick),
        # the one-step references: last year's value, and the value one 11-year cycle back
        "naive_rmse": fm.rmse(y_test, y[n_train - 1 : -1]),
        "seasonal_naive_rmse": fm.rmse(y_test, y[n_train - 11 : -11]),
        "arima_val_rmse": [
            round(fm.rmse(y[o : o + HOLDOUT], f), 2)
            for o, (f, _) in zip(origins, arima_val, strict=True)
        ],
        "arima_val_orders": [o for _, o in arima_val],
        **selection_record(table, chosen, [years(actual) for _, actual in windows], test),
        **budget,
        "quick": quick,
        "wall_s": round(time.time() - start, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
    }
    return result


def run(
    quick: bool,
    members: int,
    val_members: int,
    seed: int,
    epochs: int = 50,
    hidden_size: int = 32,
) -> dict[str, object]:
    start, cpu = time.time(), time.process_time()
    _, train, test, budget = setup(quick, members, val_members, epochs, hidden_size)
    members, val_members, epochs = budget["members"], budget["val_members"], budget["epochs"]
    y_test = test.series[0].y
    grid = QUICK_GRID if quick else GRID
    origins = validation_origins(train, 1 if quick else VAL_ORIGINS)

    # 1. selection on the validation years
    def scores(setting: dict[str, Any]) -> list[float]:
        return [
            fm.rmse(actual.series[0].y, ensemble(history, setting, val_members, seed, epochs,
                                                 hidden_size))
            for history, actual in origins
        ]  # fmt: skip

    table, chosen = select(grid, scores)

    # 2. refit on every training year, forecast the test years once
    ours = ensemble(train, chosen, members, seed, epochs, hidden_size)
    arima, order = arima_forecast(train, quick)
    result: dict[str, object] = {
        "protocol": "30 years at once",
        **target_scores(y_test, ours, arima, order, quick),
        "seasonal_naive_rmse": fm.rmse(y_test, fm.seasonal_naive(train.series[0].y, HOLDOUT, 11)),
        **selection_record(table, chosen, [years(actual) for _, actual in origins], test),
        **budget,
    }
    if not quick:  # information only: ARIMA at the validation origins, ARIMA on square roots
        arima_val = [arima_forecast(h, quick) for h, _ in origins]
        result["arima_val_rmse"] = [
            round(fm.rmse(a.series[0].y, f), 2)
            for (_, a), (f, _) in zip(origins, arima_val, strict=True)
        ]
        result["arima_val_orders"] = [o for _, o in arima_val]
        root, root_order = arima_forecast(train, quick, sqrt=True)
        result["arima_sqrt_rmse"] = fm.rmse(y_test, root)
        result["arima_sqrt_order"] = root_order
    result |= {
        "quick": quick,
        "wall_s": round(time.time() - start, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2-point grid, 1 seed, 10 epochs")
    parser.add_argument("--members", type=int, default=10, help="final ensemble size (median)")
    parser.add_argument("--val-members", type=int, default=5, help="ensemble size in selection")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--hidden-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--one-step",
        action="store_true",
        help="score one-step-ahead forecasts of the held-out years (module docstring)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = (run_one_step if args.one_step else run)(
        args.quick, args.members, args.val_members, args.seed, args.epochs, args.hidden_size
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
