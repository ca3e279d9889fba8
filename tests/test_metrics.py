"""Forecast metrics and benchmark forecasts: hand-worked values on tiny series, agreement with
scipy/statsmodels where they define the same quantity, and input validation."""

from __future__ import annotations

import csv
import itertools
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lstmkit.metrics import forecast as fc

DATA = Path(os.environ.get("LSTMKIT_DATA", Path(__file__).parents[2] / "shared" / "data"))


def test_mae_rmse_by_hand_and_torch_input() -> None:
    # errors 1, 0, 2, 4: MAE = 7/4; RMSE = sqrt((1 + 0 + 4 + 16) / 4) = sqrt(21/4)
    y, y_hat = [1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 5.0, 0.0]
    assert fc.mae(y, y_hat) == 1.75
    assert fc.rmse(y, y_hat) == math.sqrt(21 / 4)
    assert fc.mae(torch.tensor(y), torch.tensor(y_hat, requires_grad=True)) == 1.75
    assert isinstance(fc.rmse(np.array(y), np.array(y_hat)), float)


def test_smape_by_hand() -> None:
    # 200/2 * (10/210 + 20/380)
    assert fc.smape([100.0, 200.0], [110.0, 180.0]) == pytest.approx(
        100 * (10 / 210 + 20 / 380), abs=1e-12
    )
    # a 0/0 step (both zero) adds 0; the other step is 2/4: 200/2 * 0.5 = 50
    assert fc.smape([0.0, 1.0], [0.0, 3.0]) == 50.0
    # the largest possible value: opposite signs
    assert fc.smape([1.0], [-1.0]) == 200.0


def test_mase_by_hand() -> None:
    train = [1.0, 3.0, 2.0, 5.0]
    # m = 1: in-sample |diffs| 2, 1, 3 -> scale 2; forecast MAE |4-5|, |6-5| = 1 -> 0.5
    assert fc.mase([4.0, 6.0], [5.0, 5.0], train, m=1) == 0.5
    # m = 2: |2-1|, |5-3| -> scale 1.5 -> 1 / 1.5
    assert fc.mase([4.0, 6.0], [5.0, 5.0], train, m=2) == pytest.approx(2 / 3, abs=1e-15)


def test_owa_by_hand() -> None:
    # 0.5 * (10 / 12.5 + 1.2 / 1.5) = 0.5 * (0.8 + 0.8)
    assert fc.owa(10.0, 1.2, 12.5, 1.5) == pytest.approx(0.8, abs=1e-15)
    assert fc.owa(9.0, 2.0, 9.0, 2.0) == 1.0


def test_pinball_by_hand() -> None:
    # y = 10, quantile forecasts 8, 10, 13 at q = 0.1, 0.5, 0.9: errors 2, 0, -3
    # losses 0.1*2 = 0.2, 0, max(0.9*-3, -0.1*-3) = 0.3 -> mean 0.5/3
    loss = fc.pinball_loss([10.0], [[8.0, 10.0, 13.0]], [0.1, 0.5, 0.9])
    assert loss == pytest.approx(0.5 / 3, abs=1e-15)
    # at q = 0.5 the pinball loss is half the absolute error
    y, y_hat = np.array([1.0, 5.0, -2.0]), np.array([2.0, 1.0, -2.5])
    assert fc.pinball_loss(y, y_hat[:, None], [0.5]) == pytest.approx(fc.mae(y, y_hat) / 2)


def test_crps_gaussian_closed_form_against_integration() -> None:
    integrate = pytest.importorskip("scipy.integrate")
    stats = pytest.importorskip("scipy.stats")
    for y, mu, sigma in [(0.3, 0.0, 1.0), (2.5, -1.0, 0.7), (-4.0, 1.0, 3.0)]:
        cdf = stats.norm(mu, sigma).cdf
        left, _ = integrate.quad(lambda x, cdf=cdf: cdf(x) ** 2, -np.inf, y)
        right, _ = integrate.quad(lambda x, cdf=cdf: (1 - cdf(x)) ** 2, y, np.inf)
        assert fc.crps_gaussian(y, mu, sigma) == pytest.approx(left + right, abs=1e-8)
    # at y = mu: sigma * (2 phi(0) - 1/sqrt(pi)) = sigma * (sqrt(2/pi) - 1/sqrt(pi))
    expected = 2.0 * (math.sqrt(2 / math.pi) - 1 / math.sqrt(math.pi))
    assert fc.crps_gaussian([1.0, 1.0], [1.0, 1.0], 2.0) == pytest.approx(expected, abs=1e-12)
    # a very sharp forecast scores its absolute error
    assert fc.crps_gaussian([3.0], [1.0], [1e-9]) == pytest.approx(2.0, abs=1e-8)


def _empirical_crps_by_integration(samples: np.ndarray, y: float) -> float:
    """The integral of (F_M(x) - 1[x >= y])^2 computed piece by piece between the sorted
    sample points and y, where both step functions are constant."""
    points = np.sort(np.append(samples, y))
    total = 0.0
    for a, b in itertools.pairwise(points):
        f = np.mean(samples <= a)
        step = 1.0 if a >= y else 0.0
        total += (f - step) ** 2 * (b - a)
    return total


def test_crps_samples_by_hand_and_by_integration() -> None:
    # samples 1, 2, 4 and y = 3: E|X - y| = (2 + 1 + 1)/3; sum_ij |xi - xj| = 2 (1 + 3 + 2) = 12
    # CRPS = 4/3 - 12 / (2 * 9) = 2/3; fair: 4/3 - 12 / (2 * 3 * 2) = 1/3
    assert fc.crps_samples([3.0], [[1.0, 2.0, 4.0]]) == pytest.approx(2 / 3, abs=1e-15)
    assert fc.crps_samples([3.0], [[1.0, 2.0, 4.0]], fair=True) == pytest.approx(1 / 3, abs=1e-15)
    rng = np.random.default_rng(0)
    y = rng.normal(size=5)
    samples = rng.normal(size=(5, 7))
    expected = np.mean([_empirical_crps_by_integration(samples[i], y[i]) for i in range(5)])
    assert fc.crps_samples(y, samples) == pytest.approx(expected, abs=1e-12)
    # many draws from N(mu, sigma) approach the closed form
    draws = rng.normal(0.5, 2.0, size=(1, 20000))
    assert fc.crps_samples([1.0], draws, fair=True) == pytest.approx(
        fc.crps_gaussian(1.0, 0.5, 2.0), rel=2e-2
    )


def test_crps_quantiles_converges_to_gaussian_and_equals_twice_pinball() -> None:
    K = 2000
    levels = (np.arange(1, K + 1) - 0.5) / K
    mu, sigma = np.array([0.0, 1.0]), np.array([1.0, 0.5])
    y = np.array([0.4, -0.2])
    quantiles = mu[:, None] + sigma[:, None] * torch.special.ndtri(torch.tensor(levels)).numpy()
    estimate = fc.crps_quantiles(y, quantiles, levels)
    assert estimate == pytest.approx(fc.crps_gaussian(y, mu, sigma), rel=1e-3)
    # evenly spaced midpoint levels: every weight is 1/K, so it is exactly twice the pinball loss
    assert estimate == pytest.approx(2 * fc.pinball_loss(y, quantiles, levels), abs=1e-14)
    # uneven levels 0.1, 0.5, 0.9: cells [0, 0.3], [0.3, 0.7], [0.7, 1] -> weights .3, .4, .3
    # losses as in test_pinball_by_hand: 0.2, 0, 0.3 -> 2 * (0.3*0.2 + 0.3*0.3) = 0.3
    value = fc.crps_quantiles([10.0], [[8.0, 10.0, 13.0]], [0.1, 0.5, 0.9])
    assert value == pytest.approx(0.3, abs=1e-15)


def test_naive_and_seasonal_naive() -> None:
    train = [5.0, 1.0, 2.0, 3.0, 4.0]
    np.testing.assert_array_equal(fc.naive(train, 3), [4.0, 4.0, 4.0])
    # m = 3: the last season is 2, 3, 4
    np.testing.assert_array_equal(fc.seasonal_naive(train, 5, 3), [2.0, 3.0, 4.0, 2.0, 3.0])


def test_seasonality_test_by_hand() -> None:
    """Series 2, 4 repeated, m = 2. Mean 3, deviations -1, 1, ..., sum of squares n.
    n = 12: r1 = -11/12, r2 = 10/12 = 0.833; limit 1.645 sqrt((1 + 2 (11/12)^2) / 12) = 0.7775
    -> seasonal. n = 6: r1 = -5/6, r2 = 4/6 = 0.667; limit 1.645 sqrt((1 + 2 (5/6)^2) / 6) =
    1.038 -> not seasonal (too little data to be sure)."""
    assert fc.seasonality_test([2.0, 4.0] * 6, 2) is True
    assert fc.seasonality_test([2.0, 4.0] * 3, 2) is False
    assert fc.seasonality_test([2.0, 4.0] * 2, 2) is False  # shorter than 3 seasons
    assert fc.seasonality_test([2.0, 4.0] * 6, 1) is False  # m = 1 is never seasonal
    assert fc.seasonality_test([3.0] * 12, 2) is False  # constant: no autocorrelation at all


def test_acf_matches_statsmodels() -> None:
    stattools = pytest.importorskip("statsmodels.tsa.stattools")
    x = np.random.default_rng(1).normal(size=40).cumsum()
    np.testing.assert_allclose(fc.autocorrelation(x, 6), stattools.acf(x, nlags=6)[1:], atol=1e-12)


@pytest.mark.parametrize("m", [3, 4, 12])
def test_seasonal_indices_match_statsmodels_decomposition(m: int) -> None:
    seasonal = pytest.importorskip("statsmodels.tsa.seasonal")
    rng = np.random.default_rng(m)
    n = 5 * m + 2
    t = np.arange(n)
    x = (50 + 0.7 * t) * (1 + 0.2 * np.sin(2 * np.pi * t / m)) + rng.uniform(0, 1, n)
    reference = seasonal.seasonal_decompose(x, model="multiplicative", period=m).seasonal[:m]
    np.testing.assert_allclose(fc.seasonal_indices(x, m), reference, rtol=1e-12)


def test_naive2_by_hand() -> None:
    """2, 4 repeated 6 times, m = 2 (seasonal, see above). The 2x2 centred moving average
    0.25, 0.5, 0.25 is 3 at every interior point, so the ratios are 2/3 and 4/3, the indices
    (mean 1 already) are 2/3 and 4/3, and the adjusted series is 3 everywhere. Forecast phases
    continue 0, 1, 0: 3 * (2/3, 4/3, 2/3) = 2, 4, 2. One more value (n = 13) shifts the phase."""
    np.testing.assert_allclose(fc.naive2([2.0, 4.0] * 6, 3, 2), [2.0, 4.0, 2.0], atol=1e-12)
    np.testing.assert_allclose(fc.naive2([2.0, 4.0] * 6 + [2.0], 3, 2), [4.0, 2.0, 4.0], atol=1e-12)
    # not seasonal: the plain naive forecast
    np.testing.assert_array_equal(fc.naive2([2.0, 4.0] * 3, 2, 2), [4.0, 4.0])


def test_errors_name_argument_expected_and_received() -> None:
    with pytest.raises(ValueError, match=r"y_hat must have the shape of y, \(3,\), got \(2,\)"):
        fc.mae([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"y_hat must be finite, got nan at index \(1,\)"):
        fc.rmse([1.0, 2.0], [1.0, math.nan])
    with pytest.raises(TypeError, match=r"y must be numbers \(array, tensor or list\), got 'abc'"):
        fc.smape("abc", [1.0])
    with pytest.raises(ValueError, match=r"y must hold at least 1 value\(s\), got 0"):
        fc.mae([], [])
    with pytest.raises(ValueError, match=r"y_train has no change at lag m=1 .* MASE is undefined"):
        fc.mase([1.0], [1.0], [2.0, 2.0, 2.0])
    with pytest.raises(ValueError, match=r"y_train must be longer than the seasonal period m=4"):
        fc.mase([1.0], [1.0], [1.0, 2.0, 3.0], m=4)
    with pytest.raises(ValueError, match=r"y_train must be 1-dimensional, got shape \(2, 2\)"):
        fc.mase([1.0], [1.0], [[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ValueError, match=r"smape_naive2 must be > 0 to divide by it"):
        fc.owa(1.0, 1.0, 0.0, 1.0)
    with pytest.raises(
        ValueError, match=r"quantiles must be strictly increasing, got \[0.5, 0.1\]"
    ):
        fc.pinball_loss([1.0], [[1.0, 2.0]], [0.5, 0.1])
    with pytest.raises(ValueError, match=r"quantiles must lie strictly between 0 and 1"):
        fc.crps_quantiles([1.0], [[1.0]], [1.0])
    with pytest.raises(ValueError, match=r"y_hat must have shape \(2, 'Q'\)"):
        fc.pinball_loss([1.0, 2.0], [1.0, 2.0], [0.5])
    with pytest.raises(ValueError, match=r"sigma must be > 0, got a value of -1.0"):
        fc.crps_gaussian([1.0], [0.0], [-1.0])
    with pytest.raises(ValueError, match=r"mu must have the shape of y, \(2,\), or be one number"):
        fc.crps_gaussian([1.0, 2.0], [0.0, 0.0, 0.0], 1.0)
    with pytest.raises(
        ValueError, match=r"samples must hold at least 2 draws for fair=True, got 1"
    ):
        fc.crps_samples([1.0], [[1.0]], fair=True)
    with pytest.raises(
        ValueError, match=r"y_train must be positive for a multiplicative decomposition"
    ):
        fc.seasonal_indices([1.0, -1.0, 2.0, 3.0], 2)
    with pytest.raises(ValueError, match=r"y is constant, so its autocorrelation is undefined"):
        fc.autocorrelation([2.0, 2.0, 2.0], 1)
    with pytest.raises(ValueError, match=r"max_lag must be below the series length 3, got 3"):
        fc.autocorrelation([1.0, 2.0, 4.0], 3)
    with pytest.raises(TypeError, match=r"m must be an int, got 1.5"):
        fc.naive2([1.0, 2.0], 2, 1.5)  # type: ignore[arg-type]


def _read_m4(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="") as handle:
        rows = csv.reader(handle)
        next(rows)
        return {row[0]: np.array([float(v) for v in row[1:] if v]) for row in rows}


@pytest.mark.slow
def test_naive2_reproduces_m4_weekly_published_scores() -> None:
    """M4's published Naive2 on the 359 weekly series: sMAPE 9.161, MASE 2.777 (m = 1)."""
    folder = DATA / "m4"
    if not (folder / "Weekly-train.csv").exists():
        pytest.skip(f"M4 data not found in {folder}")
    train, test = _read_m4(folder / "Weekly-train.csv"), _read_m4(folder / "Weekly-test.csv")
    smapes, mases = [], []
    for key, series in train.items():
        forecast = fc.naive2(series, 13, 1)
        smapes.append(fc.smape(test[key], forecast))
        mases.append(fc.mase(test[key], forecast, series, m=1))
    assert len(smapes) == 359
    assert round(float(np.mean(smapes)), 3) == 9.161
    assert round(float(np.mean(mases)), 3) == 2.777
