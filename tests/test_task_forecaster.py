"""The forecaster task: every strategy and likelihood, GRU-D on missing values, scaling, bad input,
save/load, scores against hand-computed values, backtesting, baselines and the command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from lstmkit.baselines import ARIMA, ETS, Naive, Naive2, SeasonalNaive, Theta
from lstmkit.cli import main
from lstmkit.data.series_io import SeriesSet, read_long, read_m4, split_last
from lstmkit.tasks import Estimator
from lstmkit.tasks.forecaster import (
    LIKELIHOODS,
    SCALINGS,
    STRATEGIES,
    Forecaster,
    backtest,
    calendar_features,
    from_scaled,
    plot_forecast,
    scale_window,
    score_forecasts,
    to_scaled,
)

ROOT = Path(__file__).resolve().parents[1]
FAST = {"max_epochs": 1, "progress": False, "tensorboard": False, "num_samples": 8}


def _frame(n_series: int = 3, length: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for u in range(n_series):
        t = np.arange(length)
        y = 20 + 5 * u + 3 * np.sin(2 * np.pi * t / 7) + rng.normal(0, 0.2, length)
        parts.append(
            pd.DataFrame(
                {
                    "unique_id": f"s{u}",
                    "ds": pd.date_range("2024-01-01", periods=length, freq="D"),
                    "y": y,
                    "promo": rng.integers(0, 2, length).astype(float),
                    "size": float(u),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def data() -> SeriesSet:
    return read_long(_frame(), covariates=["promo"], static=["size"])


def _tiny(**kwargs: object) -> Forecaster:
    options: dict[str, object] = {
        "horizon": 5,
        "lookback": 10,
        "hidden_size": 6,
        "covariates": ["promo"],
        "static": ["size"],
        "batch_size": 64,
        **FAST,
    }
    options.update(kwargs)
    return Forecaster(**options)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- every strategy
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_forecasts_are_finite_and_the_right_length(
    data: SeriesSet, strategy: str, likelihood: str
) -> None:
    history, future = split_last(data, 5)
    model = _tiny(strategy=strategy, likelihood=likelihood).fit(history)
    frame = model.predict(history, future)
    assert len(frame) == 3 * 5 and list(frame["unique_id"].unique()) == ["s0", "s1", "s2"]
    assert (
        frame.groupby("unique_id")["ds"].min() > history.to_frame().groupby("unique_id")["ds"].max()
    ).all()
    numbers = frame.drop(columns=["unique_id", "ds"]).to_numpy(dtype=float)
    assert np.isfinite(numbers).all()
    if likelihood in ("mae", "mse"):
        assert list(frame.columns) == ["unique_id", "ds", "y_hat"]
    else:
        assert list(frame.columns)[3:] == ["q0.1", "q0.5", "q0.9"]
        assert (np.diff(numbers[:, 1:], axis=1) >= -1e-4).all()  # quantiles do not cross


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_grud_learns_from_series_with_missing_values(strategy: str) -> None:
    frame = _frame(2, 40)
    frame.loc[[3, 11, 12, 33, 50], "y"] = np.nan  # 33: in the last lookback window of s0
    data = read_long(frame, allow_missing=True)
    history, _ = split_last(data, 5)
    assert history.has_missing() and np.isnan(history.series[0].y[-10:]).sum() == 1
    model = _tiny(strategy=strategy, cell="grud", covariates=None, static=None, num_layers=2)
    point, quantiles = model.fit(history).predict_arrays(history)
    assert point.shape == (2, 5) and quantiles.shape == (2, 5, 3) and np.isfinite(point).all()
    with pytest.raises(ValueError, match=r"series 's0' has a missing value at .*cell='grud'"):
        _tiny(covariates=None, static=None).fit(history)


# ---------------------------------------------------------------------- scaling, calendar
@pytest.mark.parametrize("method", SCALINGS)
def test_scaling_round_trip(method: str) -> None:
    past = torch.tensor([[1.0, 2.0, 4.0, 8.0], [5.0, 5.0, 6.0, 9.0]])
    mask = torch.tensor([[True, True, False, True], [True] * 4])
    loc, scale = scale_window(past, mask, method)
    z = to_scaled(past, loc, scale, method)
    torch.testing.assert_close(from_scaled(z, loc, scale, method), past)
    # and z is in the method's scaled space, not the input passed through: over each row's
    # observed values
    for row in range(2):
        seen = z[row][mask[row]]
        if method == "none":
            assert torch.equal(seen, past[row][mask[row]])
        elif method == "robust":  # median 0
            assert torch.quantile(seen, 0.5).item() == pytest.approx(0.0, abs=1e-6)
        elif method == "mean_abs":  # mean |z| 1, no shift
            assert seen.abs().mean().item() == pytest.approx(1.0)
            torch.testing.assert_close(seen * scale[row], past[row][mask[row]])
        else:  # standard, log, sqrt: mean 0, standard deviation 1 in the transformed space
            assert seen.mean().item() == pytest.approx(0.0, abs=1e-6)
            assert seen.std(unbiased=False).item() == pytest.approx(1.0)


def test_standard_and_robust_scales_by_hand() -> None:
    past = torch.tensor([[1.0, 2.0, 100.0, 3.0]])
    mask = torch.tensor([[True, True, False, True]])  # the 100 is missing: ignored
    loc, scale = scale_window(past, mask, "standard")
    assert loc.item() == pytest.approx(2.0) and scale.item() == pytest.approx((2 / 3) ** 0.5)
    loc, scale = scale_window(
        torch.tensor([[1.0, 2.0, 3.0, 4.0, 100.0]]), torch.ones(1, 5, dtype=torch.bool), "robust"
    )
    assert loc.item() == pytest.approx(3.0) and scale.item() == pytest.approx(2.0 / 1.349)
    loc, scale = scale_window(
        torch.tensor([[7.0, 7.0]]), torch.ones(1, 2, dtype=torch.bool), "standard"
    )
    assert scale.item() == pytest.approx(0.07 + 1e-6)  # a flat window is floored at 1% of its level


def test_calendar_features() -> None:
    days = pd.date_range("2024-01-01", periods=8, freq="D").values  # a Monday first
    feats = calendar_features(days, "D", 1)
    assert feats.shape == (8, 4)  # weekday and day of year: sines, then cosines
    t = np.arange(8)
    week, year = 2 * np.pi * (t % 7) / 7, 2 * np.pi * t / 365.25
    expected = np.stack([np.sin(week), np.sin(year), np.cos(week), np.cos(year)], 1)
    np.testing.assert_allclose(feats, expected, atol=1e-12)
    np.testing.assert_allclose(feats[7, [0, 2]], feats[0, [0, 2]], atol=1e-12)  # a week later
    phase = calendar_features(np.arange(4), None, 2)
    np.testing.assert_allclose(phase[:, 1], [1.0, -1.0, 1.0, -1.0], atol=1e-12)
    assert calendar_features(np.arange(4), None, 1).shape == (4, 0)
    weeks = calendar_features(
        pd.date_range("2024-01-07", periods=3, freq="W-SUN").values, "W-SUN", 1
    )
    assert weeks.shape == (3, 2)  # the day of year only: days 7, 14, 21
    year = 2 * np.pi * np.array([6, 13, 20]) / 365.25
    np.testing.assert_allclose(weeks, np.stack([np.sin(year), np.cos(year)], 1), atol=1e-12)


# ---------------------------------------------------------------------- bad input
def test_bad_input_errors(data: SeriesSet) -> None:
    with pytest.raises(ValueError, match=r"horizon 40 is longer than every series"):
        _tiny(horizon=40).fit(data)
    with pytest.raises(ValueError, match=r"strategy must be one of 'recursive', 'mimo', 'seq2seq'"):
        Forecaster(strategy="direct")
    with pytest.raises(
        ValueError, match=r"quantiles must be a non-empty list of levels in \(0, 1\)"
    ):
        Forecaster(quantiles=[0.5, 1.5])
    with pytest.raises(ValueError, match=r"this forecaster takes covariates=\[\] and static=\[\]"):
        _tiny(covariates=None, static=None).fit(data)
    negative = read_long(_frame().assign(y=lambda f: f["y"] - 30.0))
    with pytest.raises(ValueError, match=r"scaling='log' needs positive values"):
        _tiny(scaling="log", covariates=None, static=None).fit(negative)
    with pytest.raises(ValueError, match=r"is not fitted"):
        _tiny().predict(data)
    model = _tiny().fit(data)
    with pytest.raises(
        ValueError, match=r"the covariates \['promo'\] are needed for the 5 forecast steps"
    ):
        model.predict(data)


def test_short_series_are_skipped_with_a_count(data: SeriesSet) -> None:
    frame = pd.concat([_frame(), _frame(1, 8).assign(unique_id="short")], ignore_index=True)
    both = read_long(frame, covariates=["promo"], static=["size"])
    with pytest.warns(
        UserWarning, match=r"1 of 4 series of DataFrame are shorter than lookback \+ horizon = 15"
    ):
        model = _tiny().fit(both)
    history, future = split_last(both, 5)
    with pytest.warns(UserWarning, match=r"1 of 4 series are shorter than lookback=10"):
        point, _ = model.predict_arrays(history, future)
    assert point.shape == (4, 5) and np.isfinite(point).all()


# ---------------------------------------------------------------------- save, load, evaluate
def test_save_load_gives_the_same_forecasts(data: SeriesSet, tmp_path: Path) -> None:
    history, future = split_last(data, 5)
    model = _tiny(strategy="recursive", likelihood="gaussian").fit(history, out=tmp_path)
    loaded = Estimator.load(tmp_path)
    assert isinstance(loaded, Forecaster) and loaded.freq == "D"
    pd.testing.assert_frame_equal(model.predict(history, future), loaded.predict(history, future))
    scores = loaded.evaluate(history, future)
    assert {"smape", "mase", "owa", "mae", "rmse", "pinball", "crps"} <= set(scores)


def test_scores_against_hand_computed_values() -> None:
    train = read_long(pd.DataFrame({"ds": np.arange(4), "y": [1.0, 3.0, 2.0, 5.0]}))
    test = read_long(pd.DataFrame({"ds": [4, 5], "y": [4.0, 6.0]}))
    scores = score_forecasts(train, test, np.array([[5.0, 5.0]]))
    assert scores["mae"] == 1.0 and scores["rmse"] == 1.0
    assert scores["smape"] == pytest.approx(100 * (1 / 9 + 1 / 11))
    assert scores["mase"] == pytest.approx(0.5)  # in-sample naive MAE (2 + 1 + 3) / 3 = 2
    naive = score_forecasts(train, test, np.array([[5.0, 5.0]]))  # Naive2 (m = 1) is naive: 5, 5
    assert naive["owa"] == pytest.approx(1.0)
    better = score_forecasts(train, test, np.array([[4.0, 6.0]]))
    assert better["smape"] == 0.0 and better["owa"] == 0.0


def test_backtest_origins_with_a_baseline() -> None:
    data = read_long(pd.DataFrame({"ds": np.arange(20), "y": np.arange(1.0, 21.0)}))
    results = backtest(Naive(2), data, horizon=2, windows=3)
    assert [r["origin"] for r in results] == [6.0, 4.0, 2.0]
    # the last origin: history 1..18, naive forecast 18, 18 against 19, 20
    assert results[-1]["mae"] == pytest.approx(1.5)
    assert results[0]["mae"] == pytest.approx(1.5) and results[0]["mase"] == pytest.approx(1.5)


def test_backtest_with_a_fitted_forecaster(data: SeriesSet) -> None:
    model = _tiny(covariates=["promo"]).fit(data)
    results = backtest(model, data, horizon=5, windows=2, step=3)
    assert [r["origin"] for r in results] == [8.0, 5.0]
    # each origin scores the fitted model (not refitted) on the last 5 steps of the series cut
    # origin - 5 steps before their end, covariates cut with them
    for result, cut in zip(results, (3, 0), strict=True):
        kept = _frame().groupby("unique_id").head(40 - cut)
        history, test = split_last(read_long(kept, covariates=["promo"], static=["size"]), 5)
        expected = model.evaluate(history, test)
        assert {k: v for k, v in result.items() if k != "origin"} == pytest.approx(expected)
    assert results[0]["mae"] != results[1]["mae"]


def test_plot_writes_history_forecast_and_interval(data: SeriesSet, tmp_path: Path) -> None:
    history, future = split_last(data, 5)
    model = _tiny(likelihood="quantile").fit(history)
    frame = model.predict(history, future)
    ax = plot_forecast(history, frame, "s1", actual=future)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(labels) == ["actual", "forecast", "history", "q0.1-q0.9"]
    part = frame[frame["unique_id"] == "s1"]
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["forecast"].get_ydata(), part["y_hat"])
    np.testing.assert_allclose(lines["history"].get_ydata(), history.series[1].y)
    np.testing.assert_allclose(lines["actual"].get_ydata(), future.series[1].y)
    (band,) = ax.collections
    edges = band.get_paths()[0].vertices[:, 1]
    assert edges.min() == pytest.approx(part["q0.1"].min())
    assert edges.max() == pytest.approx(part["q0.9"].max())
    ax.figure.savefig(tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0


# ---------------------------------------------------------------------- baselines
def test_simple_baselines_against_hand_computed_values() -> None:
    data = read_long(pd.DataFrame({"ds": np.arange(12), "y": [2.0, 4.0] * 6}))
    np.testing.assert_array_equal(Naive(3).fit(data).predict()["y_hat"], [4.0, 4.0, 4.0])
    np.testing.assert_array_equal(SeasonalNaive(3, 2).predict(data)["y_hat"], [2.0, 4.0, 2.0])
    np.testing.assert_array_equal(Naive2(3, 2).predict(data)["y_hat"], [2.0, 4.0, 2.0])
    frame = Naive2(2, 1).predict(data)
    assert list(frame["ds"]) == [12, 13] and list(frame["y_hat"]) == [4.0, 4.0]


def test_statsmodels_baselines() -> None:
    rng = np.random.default_rng(1)
    y = np.zeros(120)
    for t in range(1, 120):
        y[t] = 0.8 * y[t - 1] + rng.normal()
    ar = read_long(pd.DataFrame({"ds": np.arange(120), "y": y + 50.0}))
    arima = ARIMA(3, max_p=1, max_d=1, max_q=1).fit(ar)  # KPSS: stationary, d = 0
    order = arima.chosen_orders_[0]
    assert order is not None and order[0] >= 1 and order[1] == 0  # an AR term, no differencing
    walk = np.cumsum(rng.normal(size=120))
    assert ARIMA(1).differences(walk) == 1 and ARIMA(1).differences(np.diff(walk)) == 0
    # the chosen order's AIC is the lowest: compare with statsmodels directly
    from statsmodels.tsa.arima.model import ARIMA as SM

    chosen = SM(y + 50.0, order=order, trend="c" if order[1] == 0 else "t").fit().aic
    other = SM(y + 50.0, order=(0, 0, 1), trend="c").fit().aic
    assert chosen <= other
    line = read_long(pd.DataFrame({"ds": np.arange(30), "y": 10.0 + 2.0 * np.arange(30)}))
    # Theta on a line: SES (alpha -> 1) gives the last value 68, and the theta = 0 line adds half
    # the slope per step: 68 + h
    np.testing.assert_allclose(Theta(3).predict(line)["y_hat"], [69.0, 70.0, 71.0], atol=1e-3)
    flat = read_long(
        pd.DataFrame({"ds": np.arange(30), "y": np.full(30, 5.0) + rng.normal(0, 1e-3, 30)})
    )
    np.testing.assert_allclose(ETS(2).predict(flat)["y_hat"], [5.0, 5.0], atol=1e-2)
    nan = read_long(
        pd.DataFrame({"ds": np.arange(4), "y": [1.0, np.nan, 2.0, 3.0]}), allow_missing=True
    )
    with pytest.raises(ValueError, match=r"series 'series' of DataFrame: y\[1\] is nan"):
        Naive(1).fit(nan)


# ---------------------------------------------------------------------- command line
def _one_line_error(capsys: pytest.CaptureFixture[str], pattern: str) -> None:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert re.search(pattern, err), err


def test_cli_train_forecast_and_evaluate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = _frame(2, 30).drop(columns=["promo", "size"])
    frame.to_csv(tmp_path / "series.csv", index=False)
    out = tmp_path / "run"
    common = [
        "--hidden-size",
        "4",
        "--lookback",
        "8",
        "--max-epochs",
        "1",
        "--no-progress",
        "--no-tensorboard",
    ]
    assert (
        main(
            [
                "train",
                "forecaster",
                "--data",
                str(tmp_path / "series.csv"),
                "--horizon",
                "4",
                "--out",
                str(out),
                *common,
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"smape", "mase", "owa"} <= set(metrics)
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(tmp_path / "series.csv")]) == 0
    assert {"smape", "mase", "owa"} <= set(json.loads(capsys.readouterr().out))
    history = frame.groupby("unique_id").head(26)
    history.to_csv(tmp_path / "history.csv", index=False)
    frame.groupby("unique_id").tail(4).to_csv(tmp_path / "test.csv", index=False)
    forecasts = tmp_path / "forecasts.csv"
    assert main(["forecast", str(out), "--data", str(tmp_path / "history.csv"), "--out", str(forecasts),
                 "--test", str(tmp_path / "test.csv"), "--plot", str(tmp_path / "plots")]) == 0  # fmt: skip
    assert {"smape", "mase", "owa"} <= set(json.loads(capsys.readouterr().out))
    written = pd.read_csv(forecasts)
    assert list(written.columns) == ["unique_id", "ds", "y_hat"] and len(written) == 8
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["s0.png", "s1.png"]
    assert (
        main(
            ["forecast", str(out), "--data", str(tmp_path / "missing.csv"), "--out", str(forecasts)]
        )
        == 2
    )
    _one_line_error(capsys, r"lstmkit forecast: error: data file .*missing\.csv does not exist")


def test_cli_m4_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    rows_train, rows_test = [], []
    for k in range(3):
        y = 100 + np.cumsum(rng.normal(0, 1, 30 + 5 * k))
        rows_train.append([f"W{k + 1}", *[f"{v:.3f}" for v in y]])
        rows_test.append(
            [f"W{k + 1}", *[f"{v:.3f}" for v in y[-1] + np.cumsum(rng.normal(0, 1, 3))]]
        )
    width = max(len(r) for r in rows_train)
    lines = [",".join(f'"V{i + 1}"' for i in range(width))]
    lines += [",".join(r + [""] * (width - len(r))) for r in rows_train]
    (tmp_path / "Weekly-train.csv").write_text("\n".join(lines) + "\n")
    test_lines = [",".join(f'"V{i + 1}"' for i in range(4))] + [",".join(r) for r in rows_test]
    (tmp_path / "Weekly-test.csv").write_text("\n".join(test_lines) + "\n")
    out = tmp_path / "run"
    assert main(["train", "forecaster", "--data", str(tmp_path / "Weekly-train.csv"), "--format", "m4",
                 "--horizon", "3", "--lookback", "10", "--hidden-size", "4", "--max-epochs", "1",
                 "--no-progress", "--no-tensorboard", "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(tmp_path / "Weekly-train.csv")]) == 0
    scores = json.loads(capsys.readouterr().out)
    train, test = read_m4(tmp_path / "Weekly-train.csv", tmp_path / "Weekly-test.csv")
    assert test is not None
    expected = Forecaster.load(out).evaluate(train, test)
    assert scores == pytest.approx(expected)
    assert main(["train", "forecaster", "--data", str(tmp_path / "Weekly-train.csv"), "--horizon", "40",
                 "--out", str(tmp_path / "x"), "--no-progress"]) == 2  # fmt: skip
    _one_line_error(capsys, r"horizon 40 is longer than series 'W1'")


# ---------------------------------------------------------------------- experiments
def _run_sunspots(*args: str) -> dict[str, Any]:
    """The experiment's printed JSON, run as its README command runs it."""
    script = ROOT / "experiments" / "forecast_sunspots.py"
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=300,
        check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_sunspots_one_step_prefixes_and_arima_alignment(
    experiment_script: Callable[[str], ModuleType],
) -> None:
    sun = experiment_script("forecast_sunspots")
    data = sun.load()
    y = data.series[0].y
    cuts = sun.prefixes(data, 250, 3)
    # the k-th prefix ends the year before index 250 + k: forecasting one step from it
    # forecasts y[250 + k]
    assert [len(s) for s in cuts.series] == [250, 251, 252]
    assert [s.unique_id.split("@")[1] for s in cuts.series] == [
        str(int(data.series[0].ds[t])) for t in (250, 251, 252)
    ]
    np.testing.assert_array_equal(cuts.series[2].y, y[:252])
    # ARIMA one-step: parameters fitted on y[:start] only, then filtered through the window;
    # an AR(1) with a mean predicts c + phi * (previous actual value)
    rng = np.random.default_rng(0)
    z = np.zeros(300)
    for t in range(1, 300):
        z[t] = 0.7 * z[t - 1] + rng.normal()
    z += 5.0
    pred, order = sun.arima_one_step(z, 270, 30, quick=True)
    assert len(pred) == 30 and tuple(order) == (1, 0, 0)  # AIC finds the true order here
    from statsmodels.tsa.arima.model import ARIMA as SMARIMA

    fitted = SMARIMA(z[:270], order=(1, 0, 0), trend="c").fit()
    mean, phi = fitted.params[0], fitted.params[1]
    np.testing.assert_allclose(pred, mean + phi * (z[269:299] - mean), rtol=1e-6)
    # a forecast must not use the value it forecasts: changing y[285]
    # changes the predictions of 286.. only
    z2 = z.copy()
    z2[285] += 50.0
    pred2, _ = sun.arima_one_step(z2, 270, 30, quick=True)
    np.testing.assert_allclose(pred2[:16], pred[:16])
    assert not np.allclose(pred2[16:], pred[16:])


def test_sunspots_one_step_experiment_quick() -> None:
    out = _run_sunspots("--quick", "--one-step")
    assert out["protocol"] == "one-step" and out["quick"] is True and out["target_met"] is None
    for key in ("lstm_rmse", "arima_rmse", "naive_rmse", "seasonal_naive_rmse"):
        assert np.isfinite(out[key]) and out[key] > 0
    assert out["validation_windows"] == ["1949-1978"] and out["test_window"] == "1979-2008"
    assert out["chosen_val_rmse_mean"] == min(row["val_rmse_mean"] for row in out["grid"])


def test_sunspots_experiment_quick() -> None:
    out = _run_sunspots("--quick")
    assert out["quick"] is True and out["members"] == 1
    p, d, q = out["arima_order"]
    assert 0 <= p <= 2 and 0 <= d <= 1 and 0 <= q <= 1  # the quick grid
    for key in ("lstm_rmse", "arima_rmse", "seasonal_naive_rmse"):
        assert np.isfinite(out[key]) and out[key] > 0
    # settings are chosen on validation years inside the training years, never on the test years
    assert out["validation_windows"] == ["1949-1978"] and out["test_window"] == "1979-2008"
    assert len(out["grid"]) == 2 and out["chosen_val_rmse_mean"] == min(
        row["val_rmse_mean"] for row in out["grid"]
    )
    # The claim (LSTM RMSE below the best-AIC ARIMA) is not asserted: the full run recorded in
    # docs/results/forecaster.md does not meet it.


DATA = ROOT.parent / "shared" / "data" / "m4"


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/m4")
def test_m4_weekly_experiment_quick() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "forecast_m4_weekly.py"), "--quick"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    out = json.loads(result.stdout)
    assert out["series"] == 30 and out["naive2"]["owa"] == pytest.approx(1.0)
    assert np.isfinite(out["lstm"]["smape"]) and 0 < out["lstm"]["smape"] < 200
    # One epoch on 30 series does not beat Naive2; the claim (sMAPE <= 8.0 on all 359 series) is
    # measured by the full run, recorded in docs/results/forecaster.md.


warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
