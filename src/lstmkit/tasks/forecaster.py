"""A global recurrent forecaster: one model trained across many series (the DeepAR recipe).

Read it top to bottom: scaling, calendar features, the network (three multi-step strategies over
one recurrent stack), the likelihoods, the estimator, backtesting and plots, then the command line.

* **Scaling** is per window and per series, computed from the *lookback* values the model sees
  (``standard``: mean/std, ``robust``: median/IQR, ``mean_abs``: DeepAR's mean absolute value,
  ``log``: log, then mean/std, ``sqrt``: square root, then mean/std, for counts with zeros;
  ``none``). Training windows and forecast inputs are scaled the same way, from the same kind of
  history, so the model never needs statistics of a series it has not seen and a series of level
  10 and one of level 10,000 share every weight. The log of the scale is an input too: the model
  may still know the level.
* **Covariates**: calendar features (sine/cosine of the hour, weekday, day of year or month,
  from the time stamps and ``freq``; the phase in the season for integer stamps), the user's
  known-in-advance covariates (needed for the horizon too) and static features per series,
  standardised with statistics of the training data kept as buffers in ``model.safetensors``.
* **Strategies**: ``recursive`` (one-step model, teacher forced in training, its own forecasts
  fed back: the DeepAR model, and the one-step predictor anomaly detection reuses), ``mimo`` (one
  read-out of the last state gives all ``horizon`` steps) and ``seq2seq`` (a decoder runs over
  the horizon from the encoder's state, reading the future covariates, never its own outputs).
* **Likelihoods**: point losses ``mae`` / ``mse``; ``gaussian`` and ``student_t`` (negative
  log-likelihood, DeepAR); ``quantile`` (pinball loss at ``quantiles``). Recursive probabilistic
  forecasts draw ``num_samples`` paths (ancestral sampling, seeded); the others give quantiles
  in closed form.
* **Missing values**: ``cell='grud'`` runs GRU-D (:class:`lstmkit.nn.GRUD`) as the first layer,
  reading NaN targets with their mask and time gaps; every other cell refuses NaN with an error
  naming ``cell='grud'``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from .. import _checks
from ..baselines import forecast_frame
from ..data.series_io import FORMATS, Series, SeriesSet, read_series, split_last
from ..data.windows import SlidingWindows
from ..metrics import forecast as fm
from ..nn import GRU, GRUD, LSTM
from ..nn.grud import time_gaps
from . import Command, Estimator, TaskSpec, register, register_command

STRATEGIES = ("recursive", "mimo", "seq2seq")
LIKELIHOODS = ("mae", "mse", "gaussian", "student_t", "quantile")
SCALINGS = ("standard", "robust", "mean_abs", "log", "sqrt", "none")
CELLS = ("lstm", "gru", "grud")
PARAMS_PER_STEP = {"mae": 1, "mse": 1, "gaussian": 2, "student_t": 3}
DEFAULT_LEVELS = (0.1, 0.5, 0.9)
_PARAM_NAMES = (
    "horizon", "lookback", "strategy", "likelihood", "quantiles", "scaling", "cell",
    "hidden_size", "num_layers", "dropout", "calendar", "covariates", "static", "freq", "season",
    "batch_size", "stride", "max_windows", "num_samples",
)  # fmt: skip


# ---------------------------------------------------------------------- scaling
def _transform(y: Tensor, method: str) -> Tensor:
    """The variance-stabilising transform applied before scaling: log for ``'log'``, the square
    root for ``'sqrt'`` (counts with zeros), the identity otherwise."""
    if method == "log":
        return torch.log(y.clamp(min=1e-12))
    if method == "sqrt":
        return torch.sqrt(y.clamp(min=0.0))
    return y


def scale_window(past: Tensor, mask: Tensor, method: str) -> tuple[Tensor, Tensor]:
    """``(loc, scale)`` of each row of ``past`` (B, T) from its observed values (``mask``), in the
    transformed space (log space for ``'log'``, square roots for ``'sqrt'``). The scale is
    floored at 1% of the level so that a flat window does not blow up the next value's error."""
    m = mask.to(past.dtype)
    count = m.sum(1).clamp(min=1.0)
    z = _transform(past, method)
    z = torch.where(mask, z, torch.zeros_like(z))
    if method == "none":
        return torch.zeros_like(count), torch.ones_like(count)
    if method == "mean_abs":
        scale = (z.abs() * m).sum(1) / count
        return torch.zeros_like(count), scale.clamp(min=1e-6)
    if method == "robust":
        filled = torch.where(mask, z, torch.full_like(z, math.nan))
        q = torch.nanquantile(filled, torch.tensor([0.25, 0.5, 0.75], dtype=z.dtype), dim=1)
        loc, spread = q[1], (q[2] - q[0]) / 1.349
    else:  # standard, log, sqrt
        loc = (z * m).sum(1) / count
        spread = (((z - loc[:, None]) ** 2) * m).sum(1).div(count).sqrt()
    floor = 1e-2 if method == "log" else 1e-2 * loc.abs() + 1e-6
    return loc, torch.maximum(spread, torch.as_tensor(floor, dtype=z.dtype))


def to_scaled(y: Tensor, loc: Tensor, scale: Tensor, method: str) -> Tensor:
    """Values (B, T) into the scaled space of their window."""
    z = _transform(y, method)
    return (z - loc[:, None]) / scale[:, None]


def from_scaled(z: Tensor, loc: Tensor, scale: Tensor, method: str) -> Tensor:
    """The inverse of :func:`to_scaled` for (B, ...) tensors (monotone: quantiles map exactly).
    For ``'sqrt'`` a negative square root maps to 0 (the transform's range is ``[0, inf)``)."""
    shape = (-1,) + (1,) * (z.dim() - 1)
    v = z * scale.reshape(shape) + loc.reshape(shape)
    if method == "log":
        return torch.exp(v.clamp(max=80.0))
    if method == "sqrt":
        return v.clamp(min=0.0).square()
    return v


# ---------------------------------------------------------------------- calendar features
def calendar_features(ds: np.ndarray, freq: str | None, season: int) -> np.ndarray:
    """Sine/cosine encodings of the position in the day, week, year (datetime stamps; which ones
    depends on ``freq``), or of the phase in the season (integer stamps, ``season > 1``);
    ``(L, k)`` with ``k = calendar_size(freq, season)``."""
    if freq is None:
        if season <= 1:
            return np.zeros((len(ds), 0))
        angle = 2 * np.pi * (np.asarray(ds, dtype=np.float64) % season) / season
        return np.stack([np.sin(angle), np.cos(angle)], 1)
    index = pd.DatetimeIndex(ds)
    cycles: list[np.ndarray] = []
    kinds = _calendar_kinds(freq)
    if "hour" in kinds:
        cycles.append((index.hour + index.minute / 60) / 24)
    if "weekday" in kinds:
        cycles.append(index.day_of_week / 7)
    if "year" in kinds:
        cycles.append((index.day_of_year - 1) / 365.25)
    if "month" in kinds:
        cycles.append((index.month - 1) / 12)
    if not cycles:
        return np.zeros((len(ds), 0))
    angles = 2 * np.pi * np.stack([np.asarray(c, dtype=np.float64) for c in cycles], 1)
    return np.concatenate([np.sin(angles), np.cos(angles)], 1)


def _calendar_kinds(freq: str) -> tuple[str, ...]:
    offset = pd.tseries.frequencies.to_offset(freq)
    try:
        step = pd.Timedelta(offset)
    except (TypeError, ValueError):
        step = None  # calendar offsets: months, quarters, years, weeks anchored on a day
    name = offset.rule_code.upper() if offset is not None else ""
    if step is not None and step < pd.Timedelta(days=1):
        return ("hour", "weekday", "year")
    if step is not None and step < pd.Timedelta(days=7):
        return ("weekday", "year")
    if name.startswith("W") or (step is not None and step == pd.Timedelta(days=7)):
        return ("year",)
    if name.startswith(("M", "Q", "BM", "BQ", "SM")):
        return ("month",)
    return ()


def calendar_size(freq: str | None, season: int) -> int:
    return calendar_features(
        np.zeros(0, dtype=np.int64 if freq is None else "datetime64[ns]"), freq, season
    ).shape[1]


# ---------------------------------------------------------------------- the network
class _Stack(nn.Module):
    """The recurrent stack: ``lstm`` / ``gru`` (lstmkit layers) or ``grud`` (GRU-D, then GRU
    layers). ``forward(x, mask, state)`` with x (B, T, D) and mask (B, T, D) or None."""

    def __init__(self, cell: str, input_size: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.cell, self.layers = cell, layers
        drop = dropout if layers > 1 else 0.0
        self.grud: GRUD | None = None
        self.rnn: nn.Module | None = None
        if cell == "grud":
            self.grud = GRUD(input_size, hidden, batch_first=True)
            if layers > 1:
                self.rnn = GRU(hidden, hidden, layers - 1, batch_first=True, dropout=drop)
        else:
            self.rnn = (LSTM if cell == "lstm" else GRU)(
                input_size, hidden, layers, batch_first=True, dropout=drop
            )

    def forward(
        self, x: Tensor, mask: Tensor | None = None, state: Any = None
    ) -> tuple[Tensor, Any]:
        if self.grud is None:
            assert self.rnn is not None
            return self.rnn(x, state)
        m = torch.ones_like(x, dtype=torch.bool) if mask is None else mask
        delta = time_gaps(torch.arange(x.shape[1], dtype=x.dtype), m.transpose(0, 1))
        out, h0 = self.grud(x, m, delta.transpose(0, 1), None if state is None else state[:1])
        if self.rnn is None:
            return out, h0
        out, h_rest = self.rnn(out, None if state is None else state[1:])
        return out, torch.cat([h0, h_rest], 0)


class ForecastNet(nn.Module):
    """The network of :class:`Forecaster`, in the scaled space of each window.

    ``forward(past, past_mask, covariates, static)``: ``past`` (B, T) scaled targets (0 where
    missing), ``past_mask`` (B, T) bool, ``covariates`` (B, T + H, C) known covariates,
    ``static`` (B, S) static features and the log of the window's scale. Returns the
    distribution parameters of the horizon, (B, H, P); for ``recursive`` the one-step
    parameters of steps 1 .. T + H - 1 given teacher-forced ``future`` (see :meth:`one_step`).
    """

    cov_mean: Tensor
    cov_std: Tensor
    static_mean: Tensor
    static_std: Tensor

    def __init__(
        self,
        *,
        strategy: str,
        cell: str,
        hidden_size: int,
        num_layers: int,
        horizon: int,
        n_covariates: int,
        n_static: int,
        n_params: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.strategy, self.horizon, self.n_params = strategy, horizon, n_params
        C, S = n_covariates, n_static + 1  # + log scale
        self.register_buffer("cov_mean", torch.zeros(C))
        self.register_buffer("cov_std", torch.ones(C))
        self.register_buffer("static_mean", torch.zeros(n_static))
        self.register_buffer("static_std", torch.ones(n_static))
        self.encoder = _Stack(cell, 1 + C + S, hidden_size, num_layers, dropout)
        if strategy == "recursive":
            self.head = nn.Linear(hidden_size, n_params)
        elif strategy == "mimo":
            self.head = nn.Linear(hidden_size + horizon * C + S, horizon * n_params)
        else:
            self.decoder = _Stack(
                "gru" if cell == "grud" else cell, C + S + horizon, hidden_size, num_layers, dropout
            )
            self.head = nn.Linear(hidden_size, n_params)

    def _features(self, covariates: Tensor, static: Tensor) -> tuple[Tensor, Tensor]:
        cov = (covariates - self.cov_mean) / self.cov_std
        n = self.static_mean.numel()
        stat = torch.cat([(static[:, :n] - self.static_mean) / self.static_std, static[:, n:]], 1)
        return cov, stat

    def _inputs(self, y: Tensor, mask: Tensor, cov: Tensor, stat: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder inputs (B, T, 1 + C + S): the value (NaN where missing, for GRU-D; 0 for the
        others), the covariates and the statics; and the per-feature mask."""
        B, T = y.shape
        value = torch.where(
            mask,
            y,
            torch.full_like(y, math.nan) if self.encoder.cell == "grud" else torch.zeros_like(y),
        )
        x = torch.cat([value.unsqueeze(-1), cov, stat.unsqueeze(1).expand(B, T, -1)], -1)
        m = torch.cat([mask.unsqueeze(-1), torch.ones_like(x[..., 1:], dtype=torch.bool)], -1)
        return x, m

    def one_step(self, y: Tensor, mask: Tensor, covariates: Tensor, static: Tensor) -> Tensor:
        """Recursive strategy: parameters of ``y[t + 1]`` from values up to ``t`` and the
        covariates of ``t + 1``, for every ``t``: (B, T - 1, P) for ``y`` (B, T)."""
        cov, stat = self._features(covariates, static)
        x, m = self._inputs(y[:, :-1], mask[:, :-1], cov[:, 1:], stat)
        out, _ = self.encoder(x, m)
        return self.head(out)

    def forward(
        self, past: Tensor, past_mask: Tensor, covariates: Tensor, static: Tensor
    ) -> Tensor:
        if self.strategy == "recursive":
            raise RuntimeError("the recursive strategy forecasts with Forecaster.predict")
        B, T = past.shape
        cov, stat = self._features(covariates, static)
        x, m = self._inputs(past, past_mask, cov[:, :T], stat)
        out, state = self.encoder(x, m)
        if self.strategy == "mimo":
            flat = torch.cat([out[:, -1], cov[:, T:].reshape(B, -1), stat], 1)
            return self.head(flat).reshape(B, self.horizon, self.n_params)
        steps = torch.eye(self.horizon, dtype=x.dtype).expand(B, -1, -1)
        dec_in = torch.cat([cov[:, T:], stat.unsqueeze(1).expand(B, self.horizon, -1), steps], -1)
        dec_out, _ = self.decoder(dec_in, None, state)
        return self.head(dec_out)


# ---------------------------------------------------------------------- likelihoods
def _distribution(params: Tensor, likelihood: str) -> torch.distributions.Distribution:
    mu = params[..., 0]
    sigma = nn.functional.softplus(params[..., 1]) + 1e-3
    if likelihood == "gaussian":
        return torch.distributions.Normal(mu, sigma)
    df = 2.0 + nn.functional.softplus(params[..., 2])
    return torch.distributions.StudentT(df, mu, sigma)


def loss_terms(
    params: Tensor, target: Tensor, mask: Tensor, likelihood: str, quantiles: Tensor
) -> Tensor:
    """The mean loss over observed targets: point error, negative log-likelihood or pinball."""
    if likelihood == "mae":
        per = (params[..., 0] - target).abs()
    elif likelihood == "mse":
        per = (params[..., 0] - target).square()
    elif likelihood == "quantile":
        error = target.unsqueeze(-1) - params
        per = torch.maximum(quantiles * error, (quantiles - 1) * error).mean(-1)
    else:
        per = -_distribution(params, likelihood).log_prob(target)
    m = mask.to(per.dtype)
    return (per * m).sum() / m.sum().clamp(min=1.0)


def _point_and_quantiles(params: Tensor, likelihood: str, levels: Tensor) -> tuple[Tensor, Tensor]:
    """Point forecast (B, H) and quantiles (B, H, K) in scaled space, in closed form."""
    if likelihood in ("mae", "mse"):
        point = params[..., 0]
        return point, point.unsqueeze(-1).expand(*point.shape, len(levels))
    if likelihood == "quantile":
        q = params.sort(-1).values
        middle = int(torch.argmin((levels - 0.5).abs()))
        return q[..., middle], q
    dist = _distribution(params, likelihood)
    mu = params[..., 0]
    if likelihood == "gaussian":
        q = torch.distributions.Normal(mu.unsqueeze(-1), dist.stddev.unsqueeze(-1)).icdf(levels)
        return mu, q
    from scipy import stats

    assert isinstance(dist, torch.distributions.StudentT)
    z = stats.t.ppf(levels.numpy()[None, None, :], dist.df.unsqueeze(-1).detach().numpy())
    q = mu.unsqueeze(-1) + dist.scale.unsqueeze(-1) * torch.as_tensor(z, dtype=mu.dtype)
    return mu, q


# ---------------------------------------------------------------------- data preparation
class _Windows(Dataset[dict[str, Any]]):
    """SlidingWindows plus each window's static features."""

    def __init__(self, windows: Dataset[dict[str, Any]], static: Tensor) -> None:
        self.windows, self.static = windows, static

    def __len__(self) -> int:
        return len(self.windows)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.windows[index])
        item["static"] = self.static[item["series"]]
        return item


def _as_set(name: str, data: Any) -> SeriesSet:
    if isinstance(data, SeriesSet):
        return data
    if isinstance(data, pd.DataFrame):
        from ..data.series_io import read_long

        return read_long(data)
    raise TypeError(
        f"{name} must be a SeriesSet or a long-format DataFrame, got {_checks.describe(data)}"
    )


class Forecaster(Estimator):
    """A global recurrent forecaster (see the module docstring).

    ``horizon`` steps ahead from ``lookback`` steps of history; ``strategy``, ``likelihood``,
    ``scaling`` and ``cell`` choose the method; ``covariates`` and ``static`` name the data's
    covariate columns (a :class:`~lstmkit.data.series_io.SeriesSet` must carry exactly these);
    ``freq`` is taken from the training data when None; ``season`` is the seasonal period of
    MASE, Naive2 and the integer-step calendar. ``stride`` and ``max_windows`` thin the training
    windows (the most recent ``max_windows`` per series). Other keywords are
    :class:`~lstmkit.train.TrainConfig` options.
    """

    task = "forecaster"

    def __init__(
        self,
        horizon: int = 1,
        lookback: int = 24,
        strategy: str = "mimo",
        likelihood: str = "mae",
        quantiles: Sequence[float] | None = None,
        scaling: str = "standard",
        cell: str = "lstm",
        hidden_size: int = 64,
        num_layers: int = 1,
        dropout: float = 0.0,
        calendar: bool = True,
        covariates: Sequence[str] | None = None,
        static: Sequence[str] | None = None,
        freq: str | None = None,
        season: int = 1,
        batch_size: int = 64,
        stride: int = 1,
        max_windows: int | None = None,
        num_samples: int = 100,
        **train_options: Any,
    ) -> None:
        self.horizon = _checks.positive_int("horizon", horizon)
        self.lookback = _checks.positive_int("lookback", lookback)
        self.strategy = _checks.choice("strategy", strategy, STRATEGIES)
        self.likelihood = _checks.choice("likelihood", likelihood, LIKELIHOODS)
        if quantiles is None:
            quantiles = DEFAULT_LEVELS
        if (
            isinstance(quantiles, str)
            or not all(isinstance(q, (int, float)) and 0.0 < q < 1.0 for q in quantiles)
            or not quantiles
        ):
            raise ValueError(
                f"quantiles must be a non-empty list of levels in (0, 1), got {quantiles!r}"
            )
        self.quantiles = sorted(float(q) for q in quantiles)
        self.scaling = _checks.choice("scaling", scaling, SCALINGS)
        self.cell = _checks.choice("cell", cell, CELLS)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.num_layers = _checks.positive_int("num_layers", num_layers)
        self.dropout = _checks.probability("dropout", dropout)
        self.calendar = _checks.boolean("calendar", calendar)
        self.covariates = list(covariates or [])
        self.static = list(static or [])
        if freq is not None and not isinstance(freq, str):
            raise TypeError(f"freq must be a pandas frequency alias or None, got {freq!r}")
        self.freq = freq
        self.season = _checks.positive_int("season", season)
        self.batch_size = _checks.positive_int("batch_size", batch_size)
        self.stride = _checks.positive_int("stride", stride)
        self.max_windows = (
            None if max_windows is None else _checks.positive_int("max_windows", max_windows)
        )
        self.num_samples = _checks.positive_int("num_samples", num_samples)
        super().__init__(**train_options)
        self._stats: dict[str, Tensor] | None = None

    def get_params(self) -> dict[str, Any]:
        return {n: getattr(self, n) for n in _PARAM_NAMES}

    # ------------------------------------------------------------------ model
    @property
    def n_params(self) -> int:
        return (
            len(self.quantiles)
            if self.likelihood == "quantile"
            else PARAMS_PER_STEP[self.likelihood]
        )

    def _n_calendar(self) -> int:
        return calendar_size(self.freq, self.season) if self.calendar else 0

    def build_model(self) -> nn.Module:
        model = ForecastNet(
            strategy=self.strategy,
            cell=self.cell,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            horizon=self.horizon,
            n_covariates=self._n_calendar() + len(self.covariates),
            n_static=len(self.static),
            n_params=self.n_params,
            dropout=self.dropout,
        )
        if self._stats is not None:
            for name, value in self._stats.items():
                getattr(model, name).copy_(value)
        return model

    # ------------------------------------------------------------------ data
    def _check_data(self, name: str, data: Any) -> SeriesSet:
        data = _as_set(name, data)
        if tuple(data.covariate_names) != tuple(self.covariates) or tuple(
            data.static_names
        ) != tuple(self.static):
            raise ValueError(
                f"{name} has covariates {list(data.covariate_names)} and static features "
                f"{list(data.static_names)}; this forecaster takes covariates={self.covariates} "
                f"and static={self.static}"
            )
        if self.cell != "grud":
            for s in data.series:
                if np.isnan(s.y).any():
                    k = int(np.flatnonzero(np.isnan(s.y))[0])
                    raise ValueError(
                        f"{name}: series {s.unique_id!r} has a missing value at {s.ds[k]}: "
                        "train with cell='grud' (--cell grud) to model missing values"
                    )
        if self.scaling == "log":
            for s in data.series:
                if (s.y[~np.isnan(s.y)] <= 0).any():
                    raise ValueError(
                        f"{name}: series {s.unique_id!r} has values <= 0: scaling='log' needs "
                        "positive values; use scaling='sqrt' (values >= 0), 'standard' or 'robust'"
                    )
        if self.scaling == "sqrt":
            for s in data.series:
                if (s.y[~np.isnan(s.y)] < 0).any():
                    raise ValueError(
                        f"{name}: series {s.unique_id!r} has negative values: scaling='sqrt' "
                        "needs values >= 0; use scaling='standard' or 'robust'"
                    )
        return data

    def _covariate_matrix(
        self, data: SeriesSet, s: Series, ds: np.ndarray, cov: np.ndarray | None
    ) -> np.ndarray:
        parts = []
        if self.calendar:
            parts.append(calendar_features(ds, self.freq, self.season))
        if self.covariates:
            assert cov is not None
            parts.append(cov)
        return np.concatenate(parts, 1) if parts else np.zeros((len(ds), 0))

    def _static_vector(self, s: Series) -> np.ndarray:
        return np.zeros(0) if s.static is None else s.static

    def _training_windows(self, data: SeriesSet) -> tuple[_Windows, list[np.ndarray]]:
        need = self.lookback + self.horizon
        longest = max(len(s) for s in data.series)
        if self.horizon >= longest:
            raise ValueError(
                f"horizon {self.horizon} is longer than every series of {data.source} (the "
                f"longest has {longest} steps)"
            )
        keep = [s for s in data.series if len(s) >= need]
        if len(keep) < len(data.series):
            warnings.warn(
                f"{len(data.series) - len(keep)} of {len(data.series)} series of {data.source} "
                f"are shorter than lookback + horizon = {need} steps and give no training window",
                UserWarning,
                stacklevel=3,
            )
        if not keep:
            raise ValueError(
                f"no series of {data.source} has lookback + horizon = {need} steps (the longest "
                f"has {longest}): lower --lookback"
            )
        covs = [self._covariate_matrix(data, s, s.ds, s.covariates) for s in keep]
        windows = SlidingWindows(
            [s.y for s in keep],
            self.lookback,
            self.horizon,
            self.stride,
            future_covariates=covs if covs[0].shape[1] else None,
            allow_missing=self.cell == "grud",
        )
        dataset: Dataset[dict[str, Any]] = windows
        if self.max_windows is not None:
            offsets = np.cumsum([0, *windows.windows_per_series()])
            index = [
                i
                for a, b in itertools.pairwise(offsets)
                for i in range(max(int(a), int(b) - self.max_windows), int(b))
            ]
            dataset = Subset(windows, index)
        static = torch.as_tensor(
            np.stack([self._static_vector(s) for s in keep]), dtype=torch.float32
        )
        return _Windows(dataset, static), covs

    def _set_stats(self, data: SeriesSet, covs: list[np.ndarray]) -> None:
        allc = np.concatenate(covs, 0)
        cal = self._n_calendar()
        mean, std = allc.mean(0), allc.std(0)
        mean[:cal], std[:cal] = 0.0, 1.0  # sine/cosine are already on a unit scale
        std[std < 1e-8] = 1.0
        stats = {"cov_mean": mean, "cov_std": std}
        if self.static:
            st = np.stack([self._static_vector(s) for s in data.series])
            sstd = st.std(0)
            sstd[sstd < 1e-8] = 1.0
            stats |= {"static_mean": st.mean(0), "static_std": sstd}
        self._stats = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in stats.items()}

    def _prepare(self, batch: dict[str, Any]) -> tuple[Tensor, ...]:
        """Scaled past/future, masks, covariates and statics (with the log scale) of a batch."""
        past, future = batch["past"], batch["future"]
        pmask = batch.get("past_mask", torch.ones_like(past, dtype=torch.bool))
        fmask = batch.get("future_mask", torch.ones_like(future, dtype=torch.bool))
        B = past.shape[0]
        cov = batch.get("future_covariates", past.new_zeros(B, past.shape[1] + future.shape[1], 0))
        loc, scale = scale_window(past, pmask, self.scaling)
        zp = torch.where(pmask, to_scaled(past, loc, scale, self.scaling), torch.zeros_like(past))
        zf = torch.where(
            fmask, to_scaled(future, loc, scale, self.scaling), torch.zeros_like(future)
        )
        static = torch.cat([batch["static"], torch.log(scale).unsqueeze(1)], 1)
        return zp, pmask, zf, fmask, cov, static

    def _loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, int]:
        zp, pmask, zf, fmask, cov, static = self._prepare(batch)
        levels = torch.tensor(self.quantiles, dtype=zp.dtype, device=zp.device)
        if self.strategy == "recursive":
            y = torch.cat([zp, zf], 1)
            mask = torch.cat([pmask, fmask], 1)
            params = cast(ForecastNet, model).one_step(y, mask, cov, static)
            return loss_terms(params, y[:, 1:], mask[:, 1:], self.likelihood, levels), len(zp)
        params = model(zp, pmask, cov, static)
        return loss_terms(params, zf, fmask, self.likelihood, levels), len(zp)

    def _holdout_batches(self, data: SeriesSet, actual: SeriesSet) -> list[dict[str, Any]]:
        items = self._last_windows(data, actual)
        return [_collate(items[i : i + 256]) for i in range(0, len(items), 256)]

    def _last_windows(self, data: SeriesSet, future: SeriesSet | None) -> list[dict[str, Any]]:
        """One item per series: its last ``lookback`` steps (fewer if shorter) and, from
        ``future``, the horizon's values (for evaluation) and covariates."""
        items = []
        for i, s in enumerate(data.series):
            f = None if future is None else future.series[i]
            if f is not None and f.unique_id != s.unique_id:
                raise ValueError(
                    f"the future data's series {i} is {f.unique_id!r}, not {s.unique_id!r}"
                )
            T = min(len(s), self.lookback)
            ds_future = data.future_ds(i, self.horizon)
            if self.covariates:
                if f is None or f.covariates is None or len(f) < self.horizon:
                    raise ValueError(
                        f"series {s.unique_id!r}: the covariates {self.covariates} are needed for "
                        f"the {self.horizon} forecast steps: pass future= with them"
                    )
                assert s.covariates is not None
                cov_all = np.concatenate([s.covariates[-T:], f.covariates[: self.horizon]], 0)
            else:
                cov_all = None
            ds_all = np.concatenate([s.ds[-T:], ds_future])
            y = s.y[-T:]
            item: dict[str, Any] = {
                "past": torch.as_tensor(np.nan_to_num(y), dtype=torch.float32),
                "past_mask": torch.as_tensor(~np.isnan(y)),
                "future_covariates": torch.as_tensor(
                    self._covariate_matrix(data, s, ds_all, cov_all), dtype=torch.float32
                ),
                "static": torch.as_tensor(self._static_vector(s), dtype=torch.float32),
            }
            if not item["past_mask"].any():
                raise ValueError(f"series {s.unique_id!r}: its last {T} values are all missing")
            fy = np.zeros(self.horizon) if f is None else f.y[: self.horizon]
            if f is not None and len(f) < self.horizon:
                raise ValueError(
                    f"series {s.unique_id!r}: the test data has {len(f)} steps, the horizon "
                    f"is {self.horizon}"
                )
            item["future"] = torch.as_tensor(np.nan_to_num(fy), dtype=torch.float32)
            item["future_mask"] = torch.as_tensor(~np.isnan(fy))
            items.append(item)
        return items

    # ------------------------------------------------------------------ fit / predict
    def fit(  # type: ignore[override]
        self,
        data: SeriesSet | pd.DataFrame,
        *,
        val: tuple[SeriesSet, SeriesSet] | None = None,
        out: str | os.PathLike[str] | None = None,
        resume: bool = False,
    ) -> Forecaster:
        """Train on every series of ``data``; ``val = (history, actual)`` is checked after every
        epoch (forecast from the end of ``history``, scored on ``actual``)."""
        data = self._check_data("data", data)
        if self.freq is None:
            self.freq = data.freq
        elif data.freq is not None and data.freq != self.freq:
            raise ValueError(f"data has frequency {data.freq!r}, this forecaster {self.freq!r}")
        windows, covs = self._training_windows(data)
        self._set_stats(data, covs)
        loader = DataLoader(
            windows,
            batch_size=self.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(self.train_config.seed),
        )
        val_loader = None
        if val is not None:
            if not isinstance(val, (tuple, list)) or len(val) != 2:
                raise TypeError(
                    f"val must be a tuple (history, actual), got {_checks.describe(val)}"
                )
            history = self._check_data("val history", val[0])
            actual = _as_set("val actual", val[1])
            val_loader = self._holdout_batches(history, actual)
        self._fit_model(loader, val_loader, self._loss, out=out, resume=resume)
        return self

    def _forecast_batch(
        self, model: ForecastNet, batch: dict[str, Any], seed: int
    ) -> tuple[Tensor, Tensor]:
        """Point forecasts (B, H) and quantiles (B, H, K) in the data's units."""
        zp, pmask, _, _, cov, static = self._prepare(batch)
        loc, scale = scale_window(batch["past"], pmask, self.scaling)
        levels = torch.tensor(self.quantiles, dtype=zp.dtype)
        if self.strategy != "recursive":
            point, q = _point_and_quantiles(model(zp, pmask, cov, static), self.likelihood, levels)
        else:
            point, q = self._recursive(model, zp, pmask, cov, static, levels, seed)
        return from_scaled(point, loc, scale, self.scaling), from_scaled(
            q, loc, scale, self.scaling
        )

    def _recursive(
        self,
        model: ForecastNet,
        zp: Tensor,
        pmask: Tensor,
        cov: Tensor,
        static: Tensor,
        levels: Tensor,
        seed: int,
    ) -> tuple[Tensor, Tensor]:
        """Feed the forecasts back one step at a time. Point losses and the quantile loss feed the
        point (median) forecast; the likelihoods draw ``num_samples`` paths."""
        B, T = zp.shape
        H = self.horizon
        sampling = self.likelihood in ("gaussian", "student_t")
        paths = self.num_samples if sampling else 1
        y = zp.repeat_interleave(paths, 0)
        mask = pmask.repeat_interleave(paths, 0)
        c = cov.repeat_interleave(paths, 0)
        st = static.repeat_interleave(paths, 0)
        generator = torch.Generator().manual_seed(seed)
        steps, quants = [], []
        for k in range(H):
            # one more slot for the value being forecast: the model reads up to t and predicts t+1
            ext = torch.cat([y, y.new_zeros(len(y), 1)], 1)
            emask = torch.cat([mask, mask.new_ones(len(y), 1)], 1)
            params = model.one_step(ext, emask, c[:, : T + k + 1], st)[:, -1]
            if sampling:
                dist = _distribution(params, self.likelihood)
                u = torch.rand(dist.mean.shape, generator=generator).clamp(1e-6, 1 - 1e-6)
                if self.likelihood == "gaussian":
                    nxt = dist.icdf(u)  # type: ignore[arg-type]
                else:
                    from scipy import stats

                    assert isinstance(dist, torch.distributions.StudentT)
                    z = stats.t.ppf(u.numpy(), dist.df.detach().numpy())
                    nxt = dist.loc + dist.scale * torch.as_tensor(z, dtype=dist.loc.dtype)
            else:
                point, q = _point_and_quantiles(params.unsqueeze(1), self.likelihood, levels)
                nxt = point[:, 0]
                quants.append(q[:, 0])
            steps.append(nxt)
            y, mask = ext, emask
            y[:, -1] = nxt
        out = torch.stack(steps, 1)
        if sampling:
            samples = out.reshape(B, paths, H)
            return samples.mean(1), torch.quantile(samples, levels, dim=1).permute(1, 2, 0)
        return out, torch.stack(quants, 1)

    def predict(  # type: ignore[override]
        self, data: SeriesSet | pd.DataFrame, future: SeriesSet | pd.DataFrame | None = None
    ) -> pd.DataFrame:
        """Forecasts of the ``horizon`` steps after the end of every series of ``data``: a long
        frame ``unique_id, ds, y_hat`` with quantile columns ``q0.1, ...`` for probabilistic
        likelihoods. ``future`` holds the covariates of the horizon when the model has any.
        Series shorter than ``lookback`` are forecast from their whole history (the recurrent
        encoder takes any length); a warning counts them."""
        point, quantiles = self.predict_arrays(data, future)
        data = _as_set("data", data)
        extra = None
        if self.likelihood not in ("mae", "mse"):
            extra = {
                f"q{lv:g}": [q[:, k] for q in quantiles] for k, lv in enumerate(self.quantiles)
            }
        return forecast_frame(data, list(point), extra)

    def predict_arrays(
        self, data: SeriesSet | pd.DataFrame, future: SeriesSet | pd.DataFrame | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(point (N, H), quantiles (N, H, K))`` as arrays, in the order of ``data``."""
        model = self._require_model()
        assert isinstance(model, ForecastNet)
        data = self._check_data("data", data)
        fut = None if future is None else _as_set("future", future)
        items = self._last_windows(data, fut)
        short = sum(1 for s in data.series if len(s) < self.lookback)
        if short:
            warnings.warn(
                f"{short} of {len(data)} series are shorter than lookback={self.lookback}: "
                "forecast from their whole (shorter) history",
                UserWarning,
                stacklevel=2,
            )
        point = np.zeros((len(items), self.horizon))
        quant = np.zeros((len(items), self.horizon, len(self.quantiles)))
        groups: dict[int, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(len(item["past"]), []).append(i)
        with torch.no_grad():
            for rows in groups.values():
                for start in range(0, len(rows), 512):
                    chunk = rows[start : start + 512]
                    p, q = self._forecast_batch(
                        model, _collate([items[i] for i in chunk]), self.train_config.seed
                    )
                    point[chunk], quant[chunk] = p.double().numpy(), q.double().numpy()
        return point, quant

    def evaluate(  # type: ignore[override]
        self, data: SeriesSet | pd.DataFrame, test: SeriesSet | pd.DataFrame | None = None
    ) -> dict[str, float]:
        """Forecast from the end of ``data`` and score on ``test`` (without ``test``: hold out
        the last ``horizon`` steps of each series of ``data``). See :func:`score_forecasts`."""
        data = _as_set("data", data)
        if test is None:
            data, test = split_last(data, self.horizon)
        test = _as_set("test", test)
        if len(test) != len(data):
            raise ValueError(f"test has {len(test)} series, data {len(data)}")
        point, quant = self.predict_arrays(data, test)
        return score_forecasts(
            data,
            test,
            point,
            self.season,
            quant if self.likelihood not in ("mae", "mse") else None,
            self.quantiles,
        )


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


# ---------------------------------------------------------------------- metrics, backtests, plots
def score_forecasts(
    data: SeriesSet,
    test: SeriesSet,
    point: np.ndarray,
    season: int = 1,
    quantiles: np.ndarray | None = None,
    levels: Sequence[float] = DEFAULT_LEVELS,
) -> dict[str, float]:
    """M4-style scores averaged over series: ``smape``, ``mase`` (seasonal, period ``season``),
    ``owa`` against Naive2, ``mae``, ``rmse`` and, given quantiles, ``pinball`` and ``crps``
    (from the quantiles); steps with a missing actual are left out."""
    H = point.shape[1]
    rows: dict[str, list[float]] = {
        k: [] for k in ("smape", "mase", "mae", "rmse", "smape_n2", "mase_n2", "pinball", "crps")
    }
    for i, (s, t) in enumerate(zip(data.series, test.series, strict=True)):
        if len(t) < H:
            raise ValueError(f"test series {t.unique_id!r} has {len(t)} steps, the horizon is {H}")
        y = t.y[:H]
        ok = ~np.isnan(y)
        if not ok.any():
            continue
        train = s.y[~np.isnan(s.y)]
        n2 = fm.naive2(train, H, season)
        rows["smape"].append(fm.smape(y[ok], point[i][ok]))
        rows["mae"].append(fm.mae(y[ok], point[i][ok]))
        rows["rmse"].append(fm.rmse(y[ok], point[i][ok]))
        rows["smape_n2"].append(fm.smape(y[ok], n2[ok]))
        if len(train) > season:
            rows["mase"].append(fm.mase(y[ok], point[i][ok], train, season))
            rows["mase_n2"].append(fm.mase(y[ok], n2[ok], train, season))
        if quantiles is not None:
            rows["pinball"].append(fm.pinball_loss(y[ok], quantiles[i][ok], list(levels)))
            rows["crps"].append(fm.crps_quantiles(y[ok], quantiles[i][ok], list(levels)))
    result = {k: float(np.mean(v)) for k, v in rows.items() if v}
    result["owa"] = fm.owa(
        result["smape"], result["mase"], result.pop("smape_n2"), result.pop("mase_n2")
    )
    result["n_series"] = float(len(rows["smape"]))
    return result


def backtest(
    model: Any,
    data: SeriesSet,
    *,
    horizon: int,
    windows: int = 3,
    step: int | None = None,
    season: int = 1,
    refit: bool = False,
) -> list[dict[str, float]]:
    """Rolling-origin evaluation: for ``k = windows .. 1`` cut every series ``(k - 1) * step +
    horizon`` steps before its end, forecast ``horizon`` steps and score them. ``model`` is a
    fitted :class:`Forecaster` (or anything with ``evaluate(history, test)``) or a baseline
    (refitted at each origin, it is local); ``refit=True`` also refits a Forecaster. Returns
    one score dict per origin, the oldest first, each with its ``origin`` (steps before the end)."""
    step = horizon if step is None else _checks.positive_int("step", step)
    windows = _checks.positive_int("windows", windows)
    results = []
    for k in range(windows, 0, -1):
        cut = (k - 1) * step
        trimmed = (
            data
            if cut == 0
            else replace(
                data,
                series=[
                    replace(
                        s,
                        ds=s.ds[:-cut],
                        y=s.y[:-cut],
                        covariates=None if s.covariates is None else s.covariates[:-cut],
                    )
                    for s in data.series
                ],
            )
        )
        history, test = split_last(trimmed, horizon)
        if isinstance(model, Forecaster):
            if refit:
                model.fit(history)
            scores = model.evaluate(history, test)
        else:
            frame = model.predict(history)
            point = frame["y_hat"].to_numpy().reshape(len(history), horizon)
            scores = score_forecasts(history, test, point, season)
        scores["origin"] = float(cut + horizon)
        results.append(scores)
    return results


def plot_forecast(
    data: SeriesSet,
    forecasts: pd.DataFrame,
    unique_id: str,
    *,
    ax: Any = None,
    history: int | None = 100,
    actual: SeriesSet | None = None,
) -> Any:
    """History, forecast and prediction interval (the outermost quantile columns) of one series,
    on ``ax`` (a new figure when None); ``actual`` adds the true future. Returns the axes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    index = {s.unique_id: i for i, s in enumerate(data.series)}
    if unique_id not in index:
        raise ValueError(f"unique_id {unique_id!r} is not a series of the data")
    s = data.series[index[unique_id]]
    part = forecasts[forecasts["unique_id"] == unique_id]
    if part.empty:
        raise ValueError(f"forecasts holds no rows for {unique_id!r}")
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3))
    keep = slice(-history, None) if history else slice(None)
    ax.plot(s.ds[keep], s.y[keep], color="black", lw=1, label="history")
    ax.plot(part["ds"], part["y_hat"], color="tab:blue", lw=1.5, label="forecast")
    qcols = sorted((c for c in part.columns if c.startswith("q")), key=lambda c: float(c[1:]))
    if len(qcols) >= 2:
        lo, hi = qcols[0], qcols[-1]
        ax.fill_between(
            part["ds"], part[lo], part[hi], color="tab:blue", alpha=0.25, label=f"{lo}-{hi}"
        )
    if actual is not None:
        a = actual.series[index[unique_id]]
        ax.plot(a.ds, a.y, color="tab:green", lw=1, label="actual")
    ax.set_title(unique_id)
    ax.legend(loc="best", fontsize="small")
    return ax


# ---------------------------------------------------------------------- command line
def _read_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "covariates": args.covariates,
        "static": args.static,
        "freq": args.freq,
        "sort": args.sort,
        "fill_gaps": args.fill_gaps,
        "allow_missing": args.cell == "grud",
    }


def _add_arguments(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--data", required=True, metavar="FILE", help="training series (long, m4 or column CSV)"
    )
    group.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="layout of --data (default: from its header)",
    )
    group.add_argument("--horizon", type=int, required=True, metavar="H", help="steps to forecast")
    group.add_argument("--lookback", type=int, default=24, metavar="T", help="history steps read")
    group.add_argument("--strategy", choices=STRATEGIES, default="mimo", help="multi-step strategy")
    group.add_argument(
        "--likelihood", choices=LIKELIHOODS, default="mae", help="loss / output distribution"
    )
    group.add_argument(
        "--quantiles",
        type=lambda s: [float(v) for v in s.split(",")],
        default=None,
        help="levels, e.g. 0.1,0.5,0.9",
    )
    group.add_argument("--scaling", choices=SCALINGS, default="standard", help="per-window scaling")
    group.add_argument(
        "--cell", choices=CELLS, default="lstm", help="recurrent stack (grud reads NaN)"
    )
    group.add_argument("--hidden-size", type=int, default=64, metavar="H")
    group.add_argument("--num-layers", type=int, default=1, metavar="L")
    group.add_argument("--dropout", type=float, default=0.0)
    group.add_argument(
        "--calendar", action=argparse.BooleanOptionalAction, default=True, help="calendar features"
    )
    group.add_argument(
        "--covariates",
        type=lambda s: [v for v in s.split(",") if v],
        default=None,
        help="time-varying covariate columns",
    )
    group.add_argument(
        "--static",
        type=lambda s: [v for v in s.split(",") if v],
        default=None,
        help="static feature columns",
    )
    group.add_argument("--freq", default=None, help="pandas frequency alias (default: inferred)")
    group.add_argument(
        "--season", type=int, default=1, metavar="S", help="seasonal period (MASE, Naive2)"
    )
    group.add_argument("--batch-size", type=int, default=64, metavar="B")
    group.add_argument("--stride", type=int, default=1, help="steps between training windows")
    group.add_argument(
        "--max-windows", type=int, default=None, help="most recent windows per series"
    )
    group.add_argument(
        "--num-samples", type=int, default=100, help="sample paths (recursive + likelihood)"
    )
    group.add_argument("--sort", action="store_true", help="sort unsorted time stamps")
    group.add_argument(
        "--fill-gaps", action="store_true", help="insert missing steps as NaN (needs --cell grud)"
    )


def _make_data(args: argparse.Namespace) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    horizon = _checks.positive_int("--horizon", args.horizon)
    data, _ = read_series(args.data, format=args.format, **_read_options(args))
    history, holdout = split_last(data, horizon)
    return (history,), (history, holdout)


def _read_data(path: str) -> tuple[Any, ...]:
    """``lstmkit evaluate DIR --data FILE``: an M4 training file is scored on its sibling test
    file (``X-train.csv`` -> ``X-test.csv``) when there is one; any other file on its last
    ``horizon`` steps."""
    sibling = Path(path).with_name(Path(path).name.replace("-train", "-test"))
    test = sibling if "-train" in Path(path).name and sibling.is_file() else None
    data, actual = read_series(path, test=test)
    return (data,) if actual is None else (data, actual)


def _forecast_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="the --out of `lstmkit train forecaster`")
    parser.add_argument("--data", required=True, metavar="FILE", help="history to forecast from")
    parser.add_argument("--format", choices=FORMATS, default="auto")
    parser.add_argument("--out", required=True, metavar="FILE", help="forecasts CSV to write")
    parser.add_argument("--future", metavar="FILE", help="long CSV with the horizon's covariates")
    parser.add_argument(
        "--test", metavar="FILE", help="actuals: also print smape, mase, owa as JSON"
    )
    parser.add_argument("--plot", metavar="DIR", help="write one PNG per series (first 20) here")
    parser.add_argument("--sort", action="store_true")
    parser.add_argument("--fill-gaps", action="store_true")


def _forecast(args: argparse.Namespace) -> int:
    import json

    model = Forecaster.load(args.directory)
    options = {
        "covariates": model.covariates, "static": model.static, "freq": model.freq,
        "sort": args.sort, "fill_gaps": args.fill_gaps, "allow_missing": model.cell == "grud",
    }  # fmt: skip
    data, test = read_series(args.data, format=args.format, test=args.test, **options)
    future = None
    if args.future:
        future = read_series(args.future, format="long", **{**options, "fill_gaps": False})[0]
    frame = model.predict(data, future if future is not None else test)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    if args.plot:
        import matplotlib.pyplot as plt

        Path(args.plot).mkdir(parents=True, exist_ok=True)
        for uid in data.ids[:20]:
            ax = plot_forecast(data, frame, uid, actual=test)
            ax.figure.savefig(Path(args.plot) / f"{uid}.png", dpi=100, bbox_inches="tight")
            plt.close(ax.figure)
    if test is not None:
        print(json.dumps(model.evaluate(data, test)))
    else:
        print(f"{len(frame)} forecasts of {len(data)} series written to {args.out}")
    return 0


register(
    TaskSpec(
        name="forecaster",
        help="a global LSTM/GRU/GRU-D forecaster over many series (M4, long or column CSVs)",
        estimator=Forecaster,
        add_arguments=_add_arguments,
        make_data=_make_data,
        read_data=_read_data,
    )
)
register_command(
    Command(
        name="forecast",
        help="forecast with a trained forecaster; --test also prints smape, mase, owa",
        add_arguments=_forecast_arguments,
        run=_forecast,
    )
)
