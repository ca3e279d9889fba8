"""Classical forecasting baselines with the forecaster's API, so "LSTM vs ARIMA" is one call.

Each baseline is a *local* model: one fit per series. They share one small API with
:class:`lstmkit.tasks.forecaster.Forecaster`::

    model = ARIMA(horizon=13).fit(data)       # data: a lstmkit.data.series_io.SeriesSet
    frame = model.predict()                    # unique_id, ds, y_hat (pandas DataFrame)

``predict(other)`` refits on ``other`` first (a local model has nothing global to keep), and
``forecast(y)`` forecasts one array. The simple ones come from :mod:`lstmkit.metrics.forecast`
(naive, seasonal naive and M4's Naive2, the benchmark OWA is measured against); ARIMA, ETS and
Theta come from statsmodels.

* :class:`ARIMA` chooses ``d`` by repeated KPSS tests (as R's ``auto.arima``: AIC cannot compare
  differently differenced series), then ``p, q <= 3`` by AIC, with a mean (``d = 0``) or a drift
  (``d = 1``); orders whose fit fails are skipped. ``chosen_orders_`` records each series' order.
* :class:`ETS`: additive-error exponential smoothing with an additive damped trend and,
  when ``season > 1`` and the series holds two seasons, additive seasonality (statsmodels'
  ``ETSModel``).
* :class:`Theta`: the Theta method of Assimakopoulos & Nikolopoulos (2000) as statsmodels'
  ``ThetaModel`` fits it (M4's benchmark), with its own seasonality test and deseasonalising.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from . import _checks
from .data.series_io import SeriesSet
from .metrics import forecast as fm

__all__ = [
    "ARIMA",
    "BASELINES",
    "ETS",
    "Baseline",
    "Naive",
    "Naive2",
    "SeasonalNaive",
    "Theta",
    "forecast_frame",
]


def forecast_frame(
    data: SeriesSet, forecasts: list[np.ndarray], extra: dict[str, list[np.ndarray]] | None = None
) -> pd.DataFrame:
    """Long-format forecasts: ``unique_id``, ``ds`` (continuing each series) and ``y_hat``, plus
    ``extra`` columns (e.g. quantiles), one array per series each."""
    parts = []
    for i, (s, f) in enumerate(zip(data.series, forecasts, strict=True)):
        part: dict[str, Any] = {
            "unique_id": s.unique_id,
            "ds": data.future_ds(i, len(f)),
            "y_hat": f,
        }
        for name, columns in (extra or {}).items():
            part[name] = columns[i]
        parts.append(pd.DataFrame(part))
    return pd.concat(parts, ignore_index=True)


class Baseline:
    """The shared API: ``fit(data)``, ``predict(data=None)`` and ``forecast(y)``."""

    name: ClassVar[str] = ""

    def __init__(self, horizon: int, season: int = 1) -> None:
        self.horizon = _checks.positive_int("horizon", horizon)
        self.season = _checks.positive_int("season", season)
        self.data_: SeriesSet | None = None
        self.forecasts_: list[np.ndarray] | None = None

    def forecast(self, y: Any) -> np.ndarray:
        """The ``horizon`` next values of one series ``y`` (finite, at least 1 value)."""
        arr = np.asarray(y, dtype=np.float64)
        if arr.ndim != 1 or len(arr) == 0:
            raise ValueError(f"y must be a non-empty 1-D series, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            k = int(np.flatnonzero(~np.isfinite(arr))[0])
            raise ValueError(
                f"y[{k}] is {arr[k]}: the {self.name} baseline needs a complete series "
                "(only the forecaster with cell='grud' reads missing values)"
            )
        out = np.asarray(self._forecast(arr), dtype=np.float64)
        if out.shape != (self.horizon,) or not np.isfinite(out).all():
            raise RuntimeError(f"{self.name} produced {out!r} for a series of length {len(arr)}")
        return out

    def _forecast(self, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def fit(self, data: SeriesSet) -> Baseline:
        """Fit every series of ``data`` and keep the forecasts."""
        if not isinstance(data, SeriesSet):
            raise TypeError(f"data must be a SeriesSet, got {_checks.describe(data)}")
        forecasts = []
        for s in data.series:
            try:
                forecasts.append(self.forecast(s.y))
            except ValueError as exc:
                raise ValueError(f"series {s.unique_id!r} of {data.source}: {exc}") from None
        self.data_, self.forecasts_ = data, forecasts
        return self

    def predict(self, data: SeriesSet | None = None) -> pd.DataFrame:
        """Forecasts of the fitted series, or of ``data`` (fitted first), as a long frame."""
        if data is not None:
            self.fit(data)
        if self.data_ is None or self.forecasts_ is None:
            raise ValueError(f"this {type(self).__name__} is not fitted: call fit(data) first")
        return forecast_frame(self.data_, self.forecasts_)


class Naive(Baseline):
    """The last value, repeated."""

    name = "naive"

    def _forecast(self, y: np.ndarray) -> np.ndarray:
        return fm.naive(y, self.horizon)


class SeasonalNaive(Baseline):
    """The last season, repeated (``season`` steps)."""

    name = "seasonal_naive"

    def _forecast(self, y: np.ndarray) -> np.ndarray:
        if len(y) < self.season:
            return fm.naive(y, self.horizon)
        return fm.seasonal_naive(y, self.horizon, self.season)


class Naive2(Baseline):
    """M4's Naive2: naive on the seasonally adjusted series when the seasonality test passes."""

    name = "naive2"

    def _forecast(self, y: np.ndarray) -> np.ndarray:
        return fm.naive2(y, self.horizon, self.season)


class ARIMA(Baseline):
    """ARIMA(p, d, q) per series: ``d <= max_d`` by KPSS tests, then ``p <= max_p`` and
    ``q <= max_q`` by AIC. Falls back to the naive forecast when no order fits (too short a
    series)."""

    name = "arima"

    def __init__(
        self, horizon: int, season: int = 1, *, max_p: int = 3, max_d: int = 2, max_q: int = 3
    ) -> None:
        super().__init__(horizon, season)
        self.max_p = _checks.positive_int("max_p", max_p, allow_zero=True)
        self.max_d = _checks.positive_int("max_d", max_d, allow_zero=True)
        self.max_q = _checks.positive_int("max_q", max_q, allow_zero=True)
        self.chosen_orders_: list[tuple[int, int, int] | None] = []

    def differences(self, y: np.ndarray) -> int:
        """The differencing order: difference until the KPSS test (level stationarity, 5%) no
        longer rejects, at most ``max_d`` times, as R's ``auto.arima`` does. AIC cannot choose
        ``d``: the likelihoods of differently differenced series are not comparable."""
        from statsmodels.tsa.stattools import kpss

        z = y
        for d in range(self.max_d + 1):
            if d == self.max_d or len(z) < 8 or np.ptp(z) == 0:
                return d
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # p-value outside the table: still decisive
                p_value = kpss(z, regression="c", nlags="auto")[1]
            if p_value >= 0.05:
                return d
            z = np.diff(z)
        return self.max_d

    def select(self, y: np.ndarray) -> tuple[tuple[int, int, int] | None, Any]:
        """``(order, fitted results)`` with the lowest AIC over ``p <= max_p``, ``q <= max_q``
        at the ``d`` of :meth:`differences`; ``(None, None)`` if no order fits."""
        from statsmodels.tsa.arima.model import ARIMA as _SMARIMA

        d = self.differences(y)
        trend = "c" if d == 0 else ("t" if d == 1 else "n")  # a mean, a drift, nothing
        best: tuple[float, tuple[int, int, int] | None, Any] = (np.inf, None, None)
        for p, q in itertools.product(range(self.max_p + 1), range(self.max_q + 1)):
            if len(y) <= p + d + q + 2:
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = _SMARIMA(y, order=(p, d, q), trend=trend).fit()
            except (ValueError, np.linalg.LinAlgError):
                continue
            if np.isfinite(result.aic) and result.aic < best[0]:
                best = (float(result.aic), (p, d, q), result)
        return best[1], best[2]

    def _forecast(self, y: np.ndarray) -> np.ndarray:
        order, result = self.select(y)
        self.chosen_orders_.append(order)
        if result is None:
            return fm.naive(y, self.horizon)
        return np.asarray(result.forecast(self.horizon))

    def fit(self, data: SeriesSet) -> ARIMA:
        self.chosen_orders_ = []
        super().fit(data)
        return self


class ETS(Baseline):
    """Exponential smoothing (additive error, additive damped trend, additive seasonality when
    ``season > 1`` and two full seasons are there), fitted by maximum likelihood."""

    name = "ets"

    def _forecast(self, y: np.ndarray) -> np.ndarray:
        from statsmodels.tsa.exponential_smoothing.ets import ETSModel

        seasonal = self.season > 1 and len(y) >= 2 * self.season
        if len(y) < 4:
            return fm.naive(y, self.horizon)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ETSModel(
                y,
                error="add",
                trend="add",
                damped_trend=True,
                seasonal="add" if seasonal else None,
                seasonal_periods=self.season if seasonal else None,
            )
            result = model.fit(disp=False)
        return np.asarray(result.forecast(self.horizon))


class Theta(Baseline):
    """The Theta method (statsmodels ``ThetaModel``), deseasonalised when ``season > 1`` and its
    seasonality test passes."""

    name = "theta"

    def _forecast(self, y: np.ndarray) -> np.ndarray:
        from statsmodels.tsa.forecasting.theta import ThetaModel

        if len(y) < 4:
            return fm.naive(y, self.horizon)
        deseason = self.season > 1 and len(y) >= 2 * self.season
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ThetaModel(
                y,
                period=self.season if deseason else 1,
                deseasonalize=deseason,
                method="auto" if np.all(y > 0) else "additive",
            )
            result = model.fit()
        return np.asarray(result.forecast(self.horizon))


BASELINES: dict[str, type[Baseline]] = {
    cls.name: cls for cls in (Naive, SeasonalNaive, Naive2, ARIMA, ETS, Theta)
}
