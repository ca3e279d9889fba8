r"""Point and probabilistic forecast metrics, and the M4 benchmark forecasts they are judged
against.

Every metric takes NumPy arrays, torch tensors, lists or numbers and returns a Python float. The
arrays are compared element by element and must have exactly the same shape: a forecast of the
wrong length is a bug, never something to broadcast. NaN or infinite values are refused with the
argument and the position named, because one NaN turns an average into NaN silently.

The definitions follow the M4 competition (Makridakis et al. 2020, and the ``M4-methods``
benchmark code) where one exists, so that numbers computed here can be compared with the
published M4 tables:

* sMAPE in percent, :math:`\frac{200}{h}\sum_t \frac{|y_t-\hat y_t|}{|y_t|+|\hat y_t|}`;
* MASE scaled by the in-sample mean absolute *seasonal* difference of the training series;
* OWA, the mean of the model's sMAPE and MASE each relative to Naive2's;
* Naive2: the naive forecast of a series seasonally adjusted by classical multiplicative
  decomposition, applied only when the series passes the 90% autocorrelation test at lag m.

The probabilistic scores are the pinball (quantile) loss and the CRPS, in closed form for a
Gaussian and estimated from samples or from a set of quantiles.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

__all__ = [
    "autocorrelation",
    "crps_gaussian",
    "crps_quantiles",
    "crps_samples",
    "mae",
    "mase",
    "naive",
    "naive2",
    "owa",
    "pinball_loss",
    "rmse",
    "seasonal_indices",
    "seasonal_naive",
    "seasonality_test",
    "smape",
]

Array = NDArray[np.float64]

#: one-sided 90% normal quantile used by the M4 seasonality test
_M4_TCRIT = 1.645


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__} of shape {tuple(shape)}"
    return f"{value!r} ({type(value).__name__})"


def _as_array(name: str, value: Any, *, ndim: int | None = None, min_size: int = 1) -> Array:
    """``value`` as a float64 NumPy array, refusing non-numbers, NaN, inf and empty input.

    Torch tensors are detached and moved to the CPU; the metric is a number to report, not a
    loss to differentiate (use torch's own losses for training)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name} must be numbers (array, tensor or list), got {_describe(value)}")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name} must be numbers (array, tensor or list), got {_describe(value)}"
        ) from error
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {array.shape}")
    if array.size < min_size:
        raise ValueError(f"{name} must hold at least {min_size} value(s), got {array.size}")
    bad = ~np.isfinite(array)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} must be finite, got {array[index]} at index {index}")
    return array


def _pair(y: Any, y_hat: Any, names: tuple[str, str] = ("y", "y_hat")) -> tuple[Array, Array]:
    a, b = _as_array(names[0], y), _as_array(names[1], y_hat)
    if a.shape != b.shape:
        raise ValueError(f"{names[1]} must have the shape of {names[0]}, {a.shape}, got {b.shape}")
    return a, b


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_describe(value)}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


# --------------------------------------------------------------------------------- point metrics


def mae(y: Any, y_hat: Any) -> float:
    """Mean absolute error over all elements."""
    a, b = _pair(y, y_hat)
    return float(np.mean(np.abs(a - b)))


def rmse(y: Any, y_hat: Any) -> float:
    """Root mean squared error over all elements."""
    a, b = _pair(y, y_hat)
    return float(np.sqrt(np.mean((a - b) ** 2)))


def smape(y: Any, y_hat: Any) -> float:
    r"""Symmetric MAPE in percent, M4's definition:
    :math:`\frac{200}{h}\sum_t |y_t-\hat y_t| / (|y_t|+|\hat y_t|)`, between 0 and 200.

    A step where both the actual and the forecast are exactly 0 is a perfect forecast and adds 0
    (M4's data is strictly positive, so M4 never meets this 0/0)."""
    a, b = _pair(y, y_hat)
    numerator = np.abs(a - b)
    denominator = np.abs(a) + np.abs(b)
    terms = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
    return float(200.0 * np.mean(terms))


def _mase_scale(y_train: Array, m: int) -> float:
    if y_train.size <= m:
        raise ValueError(
            f"y_train must be longer than the seasonal period m={m} to scale MASE, "
            f"got {y_train.size} value(s)"
        )
    scale = float(np.mean(np.abs(y_train[m:] - y_train[:-m])))
    if scale == 0.0:
        raise ValueError(
            f"y_train has no change at lag m={m} (every y_t equals y_(t-m)), so the MASE scale "
            "is 0 and MASE is undefined"
        )
    return scale


def mase(y: Any, y_hat: Any, y_train: Any, m: int = 1) -> float:
    r"""Mean absolute scaled error: the forecast's MAE divided by the in-sample MAE of the
    seasonal naive forecast on the training series,
    :math:`\frac{1}{n-m}\sum_{t=m+1}^{n}|y_t - y_{t-m}|`.

    Scaling by an in-sample error makes MASE comparable across series of different levels, and
    the seasonal difference makes 1.0 mean "as good as seasonal naive was in-sample". ``m`` is
    the seasonal period (M4: 1 yearly, 4 quarterly, 12 monthly, 1 weekly, 1 daily, 24 hourly)."""
    m = _positive_int("m", m)
    a, b = _pair(y, y_hat)
    train = _as_array("y_train", y_train, ndim=1)
    return float(np.mean(np.abs(a - b)) / _mase_scale(train, m))


def owa(smape_model: Any, mase_model: Any, smape_naive2: Any, mase_naive2: Any) -> float:
    r"""Overall weighted average, M4's headline score:
    :math:`\frac12(\mathrm{sMAPE}/\mathrm{sMAPE}_{Naive2} + \mathrm{MASE}/\mathrm{MASE}_{Naive2})`.

    Pass the scores averaged over the same set of series (M4 averages each metric over all
    series first, then takes the ratios). Below 1 beats Naive2."""
    values = {
        "smape_model": smape_model,
        "mase_model": mase_model,
        "smape_naive2": smape_naive2,
        "mase_naive2": mase_naive2,
    }
    checked: dict[str, float] = {}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a float, got {_describe(value)}")
        if not math.isfinite(float(value)) or float(value) < 0:
            raise ValueError(f"{name} must be a finite score >= 0, got {value}")
        checked[name] = float(value)
    for name in ("smape_naive2", "mase_naive2"):
        if checked[name] == 0.0:
            raise ValueError(f"{name} must be > 0 to divide by it, got 0.0")
    return 0.5 * (
        checked["smape_model"] / checked["smape_naive2"]
        + checked["mase_model"] / checked["mase_naive2"]
    )


# ------------------------------------------------------------------------ probabilistic metrics


def _quantile_levels(quantiles: Any, q_count: int) -> Array:
    levels = _as_array("quantiles", quantiles, ndim=1)
    if levels.size != q_count:
        raise ValueError(
            f"quantiles must have one level per forecast column ({q_count}), got {levels.size}"
        )
    if ((levels <= 0) | (levels >= 1)).any():
        raise ValueError(f"quantiles must lie strictly between 0 and 1, got {levels.tolist()}")
    if (np.diff(levels) <= 0).any():
        raise ValueError(f"quantiles must be strictly increasing, got {levels.tolist()}")
    return levels


def _with_last_axis(
    y: Any, forecast: Any, y_name: str, forecast_name: str, what: str
) -> tuple[Array, Array]:
    a = _as_array(y_name, y)
    f = _as_array(forecast_name, forecast)
    if f.shape[:-1] != a.shape or f.ndim != a.ndim + 1:
        raise ValueError(
            f"{forecast_name} must have shape {(*a.shape, what)} (the shape of {y_name} plus a "
            f"last axis of {what}), got {f.shape}"
        )
    return a, f


def pinball_loss(y: Any, y_hat: Any, quantiles: Any) -> float:
    r"""Mean pinball (quantile) loss. ``y_hat`` has ``y``'s shape plus a last axis with one
    column per level in ``quantiles`` (Q,). For level q and error :math:`e = y - \hat y_q`:
    :math:`\rho_q(e) = \max(q e, (q - 1) e)`, averaged over every element and level.

    Its minimiser over :math:`\hat y_q` is the q-quantile of the predictive distribution, which
    is why it trains and scores quantile forecasts; at q = 0.5 it is half the absolute error."""
    a, f = _with_last_axis(y, y_hat, "y", "y_hat", "Q")
    levels = _quantile_levels(quantiles, f.shape[-1])
    error = a[..., None] - f
    return float(np.mean(np.maximum(levels * error, (levels - 1) * error)))


def _normal_cdf(z: Array) -> Array:
    """Standard normal CDF; torch is already a dependency and has an accurate ndtr."""
    return torch.special.ndtr(torch.from_numpy(np.ascontiguousarray(z))).numpy()


def crps_gaussian(y: Any, mu: Any, sigma: Any) -> float:
    r"""Mean CRPS of Gaussian forecasts :math:`N(\mu, \sigma^2)`, in closed form (Gneiting et al.
    2005): with :math:`z = (y - \mu) / \sigma`,

    .. math:: \mathrm{CRPS} = \sigma\,\big(z\,(2\Phi(z) - 1) + 2\varphi(z) - 1/\sqrt{\pi}\big).

    ``mu`` and ``sigma`` have ``y``'s shape, or are single numbers shared by every element;
    ``sigma`` must be > 0. CRPS is in the units of y and reduces to the absolute error as
    sigma goes to 0."""
    a = _as_array("y", y)
    mean = _as_array("mu", mu)
    scale = _as_array("sigma", sigma)
    for name, arr in (("mu", mean), ("sigma", scale)):
        if arr.ndim and arr.shape != a.shape:
            raise ValueError(
                f"{name} must have the shape of y, {a.shape}, or be one number, got {arr.shape}"
            )
    if (scale <= 0).any():
        raise ValueError(f"sigma must be > 0, got a value of {float(scale[scale <= 0].flat[0])}")
    z = (a - mean) / scale
    pdf = np.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    crps = scale * (z * (2.0 * _normal_cdf(z) - 1.0) + 2.0 * pdf - 1.0 / math.sqrt(math.pi))
    return float(np.mean(crps))


def crps_samples(y: Any, samples: Any, *, fair: bool = False) -> float:
    r"""Mean CRPS of forecasts given as M samples each: ``samples`` has ``y``'s shape plus a last
    axis of M draws. Uses the energy form of the CRPS of the empirical distribution,

    .. math:: \frac1M\sum_i |x_i - y| - \frac{1}{2M^2}\sum_{i,j}|x_i - x_j|,

    which is exactly :math:`\int (F_M(x) - \mathbb 1[x \ge y])^2 dx` for the sample CDF
    :math:`F_M`. ``fair=True`` divides the second sum by :math:`2M(M-1)` instead: that estimator
    is unbiased for the CRPS of the distribution the samples come from (Ferro 2014), rather than
    of the M-point empirical one, so small ensembles are not penalised for being small.
    The pair sum is computed from the sorted samples in O(M log M)."""
    if not isinstance(fair, bool):
        raise TypeError(f"fair must be True or False, got {_describe(fair)}")
    a, x = _with_last_axis(y, samples, "y", "samples", "M")
    M = x.shape[-1]
    if fair and M < 2:
        raise ValueError(f"samples must hold at least 2 draws for fair=True, got {M}")
    spread = np.mean(np.abs(x - a[..., None]), axis=-1)
    ordered = np.sort(x, axis=-1)
    weights = 2.0 * np.arange(1, M + 1) - M - 1  # sum_ij |x_i - x_j| = 2 sum_i (2i - M - 1) x_(i)
    pair_sum = 2.0 * np.sum(weights * ordered, axis=-1)
    pairs = 2.0 * M * (M - 1) if fair else 2.0 * M * M
    return float(np.mean(spread - pair_sum / pairs))


def crps_quantiles(y: Any, y_hat: Any, quantiles: Any) -> float:
    r"""Mean CRPS estimated from a set of predicted quantiles, by the identity
    :math:`\mathrm{CRPS}(F, y) = 2\int_0^1 \rho_q(y - F^{-1}(q))\,dq` with the integral taken by
    the midpoint rule on the given levels: level :math:`q_k` stands for the interval from the
    midpoint with its left neighbour to the midpoint with its right one (0 and 1 at the ends).

    For evenly spaced levels :math:`(k - \tfrac12)/K` every weight is 1/K and this is twice the
    mean pinball loss; the estimate converges to the CRPS as the levels get denser, and with
    the nine deciles it is the usual "weighted quantile loss" approximation."""
    a, f = _with_last_axis(y, y_hat, "y", "y_hat", "Q")
    levels = _quantile_levels(quantiles, f.shape[-1])
    edges = np.concatenate([[0.0], (levels[1:] + levels[:-1]) / 2.0, [1.0]])
    widths = np.diff(edges)
    error = a[..., None] - f
    losses = np.maximum(levels * error, (levels - 1) * error)
    return float(np.mean(2.0 * np.sum(widths * losses, axis=-1)))


# ------------------------------------------------------------------------ benchmark forecasts


def naive(y_train: Any, h: int) -> Array:
    """The last observed value repeated ``h`` times."""
    h = _positive_int("h", h)
    train = _as_array("y_train", y_train, ndim=1)
    return np.full(h, train[-1])


def seasonal_naive(y_train: Any, h: int, m: int) -> Array:
    """The last full season repeated: step k (0-based) forecasts ``y_train[n - m + k % m]``."""
    h = _positive_int("h", h)
    m = _positive_int("m", m)
    train = _as_array("y_train", y_train, ndim=1, min_size=m)
    last_season = train[-m:]
    return last_season[np.arange(h) % m].copy()


def autocorrelation(y: Any, max_lag: int) -> Array:
    """Sample autocorrelations at lags 1..max_lag, the textbook (and R ``acf``, statsmodels
    ``acf``) estimator: the lag-k sum of products of deviations from the mean over the
    full-length sum of squares. A constant series has no defined autocorrelation."""
    max_lag = _positive_int("max_lag", max_lag)
    x = _as_array("y", y, ndim=1)
    if max_lag >= x.size:
        raise ValueError(f"max_lag must be below the series length {x.size}, got {max_lag}")
    if float(np.ptp(x)) == 0.0:
        raise ValueError("y is constant, so its autocorrelation is undefined (0/0)")
    d = x - x.mean()
    denominator = float(np.sum(d * d))
    return np.array([np.sum(d[k:] * d[:-k]) / denominator for k in range(1, max_lag + 1)])


def seasonality_test(y_train: Any, m: int) -> bool:
    r"""M4's test for seasonality at period m: seasonal when
    :math:`|r_m| > 1.645\sqrt{(1 + 2\sum_{k=1}^{m-1} r_k^2)/n}`, with :math:`r_k` the sample
    autocorrelation at lag k.

    The bound is the one-sided 90% limit of :math:`r_m` under Bartlett's variance for a series
    whose autocorrelation ends before lag m. As in the M4 benchmark code, a series shorter than
    three seasons, a period of 1 and a constant series are not seasonal."""
    m = _positive_int("m", m)
    train = _as_array("y_train", y_train, ndim=1)
    n = train.size
    if m == 1 or n < 3 * m or float(np.ptp(train)) == 0.0:
        return False
    r = autocorrelation(train, m)
    limit = _M4_TCRIT * math.sqrt((1.0 + 2.0 * float(np.sum(r[:-1] ** 2))) / n)
    return bool(abs(r[-1]) > limit)


def seasonal_indices(y_train: Any, m: int) -> Array:
    """Multiplicative seasonal indices (m,) from classical decomposition, phase 0 being the
    series' first value; they average to 1.

    Trend: a centred moving average over one season (a 2 x m average, weights 1/(2m) at the
    ends, when m is even). Index of phase i: the mean of y_t / trend_t over the t of phase i
    where the trend exists, then all indices divided by their mean. This is R's
    ``decompose(type = "multiplicative")``, which the M4 Naive2 benchmark uses."""
    m = _positive_int("m", m)
    train = _as_array("y_train", y_train, ndim=1)
    n = train.size
    if m < 2 or n < 2 * m:
        raise ValueError(
            f"y_train must cover at least two seasons of m={m} (and m >= 2) to estimate "
            f"seasonal indices, got {n} value(s)"
        )
    if (train <= 0).any():
        raise ValueError(
            "y_train must be positive for a multiplicative decomposition, got a value of "
            f"{float(train[train <= 0][0])}"
        )
    weights = np.concatenate([[0.5], np.ones(m - 1), [0.5]]) / m if m % 2 == 0 else np.ones(m) / m
    half = weights.size // 2
    trend = np.full(n, np.nan)
    trend[half : n - half] = np.convolve(train, weights, mode="valid")
    ratio = train / trend
    phases = np.array([np.nanmean(ratio[i::m]) for i in range(m)])
    return phases / phases.mean()


def naive2(y_train: Any, h: int, m: int) -> Array:
    """M4's Naive2 benchmark: if :func:`seasonality_test` finds seasonality at period m, divide
    the series by its :func:`seasonal_indices`, repeat the last adjusted value and multiply the
    seasonality back for each forecast step's phase; otherwise plain :func:`naive`."""
    h = _positive_int("h", h)
    m = _positive_int("m", m)
    train = _as_array("y_train", y_train, ndim=1)
    if not seasonality_test(train, m):
        return naive(train, h)
    index = seasonal_indices(train, m)
    n = train.size
    level = train[-1] / index[(n - 1) % m]
    return level * index[(n + np.arange(h)) % m]
