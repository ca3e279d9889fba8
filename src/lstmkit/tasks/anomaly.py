"""Anomaly detection in a univariate time series, offline (trained) and online (streaming).

Two LSTM detectors share one way of turning errors into scores:

* **prediction error** (Malhotra et al. 2015, "Long Short Term Memory Networks for Anomaly
  Detection in Time Series"): an LSTM forecasts the next value; the error ``e_t = x_t -
  x̂_t`` of a series it models well is small and roughly Gaussian, so a surprising value is one
  whose error falls far in the tails of the error distribution;
* **reconstruction error** (EncDec-AD, Malhotra et al. 2016, "LSTM-based Encoder-Decoder for
  Multi-sensor Anomaly Detection"): an LSTM encoder reads the last ``window`` values into its
  state and an LSTM decoder rebuilds them (in reverse order) from that state alone; a window
  unlike the clean training data is rebuilt badly. The error at ``t`` is the mean squared
  reconstruction error of the window that ends at ``t``.

The **error model** is fitted on the errors of the clean training series: a Gaussian (mean and
standard deviation) or its robust counterpart (median and 1.4826 x MAD, blind to the few
anomalies a "clean" series still holds). An error's anomaly score is ``1 - p`` with ``p`` its
tail probability under that model (two-sided for signed forecast errors, upper tail for the
non-negative reconstruction errors), so scores lie in [0, 1] and mean the same for every
series. The alarm **threshold** is calibrated on validation data: the one that maximises F-beta
when the validation points carry labels, otherwise the ``1 - contamination`` quantile of the
validation scores.

**Streaming.** :meth:`AnomalyDetector.stream` returns a :class:`DetectorStream`: ``step(value)``
takes one observation and returns its score at once, with O(1) work per step (the LSTM advanced
one step by :class:`lstmkit.streaming.Streamer` with its state carried, a ring buffer of the
last ``window`` values for the autoencoder). With ``adapt=True`` the error model keeps learning
from every new error (exponentially weighted mean and variance, each error's pull clipped at
``clip`` standard deviations so that an anomaly does not teach the model that it is normal).
Streaming scores equal :meth:`AnomalyDetector.score_samples` over the whole series.

**NAB** (the Numenta Anomaly Benchmark) is an online benchmark: each file is seen once, in time
order, with no training data. :class:`OnlineDetector` is the detector for that: it learns the
series as it goes (an LSTM forecaster trained every few steps on recent windows), and turns its
errors into an anomaly likelihood as Numenta's HTM detector does (Ahmad et al. 2017): the
average of the last few errors against the distribution of the errors over a long trailing
window. :class:`OnlineScorer` fuses that likelihood with two cheap streaming tests, the
likelihood of a seasonal error (:class:`SeasonalError`: the value against the same time a day
and a week before) and HTM's spatial test (:class:`SpatialNovelty`: a value outside the range
seen so far), and silences repeats of an alarm for a refractory period. ``lstmkit nab`` runs
it over a NAB-layout directory and scores it with :mod:`lstmkit.metrics.nab`; ``lstmkit
detect`` scores one CSV file with it (or with a trained detector given ``--model``). See
``docs/anomaly.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from .. import _checks
from ..data.readers import read_csv_series
from ..metrics import nab
from ..nn import LSTM
from ..streaming import Streamer
from . import Command, Estimator, TaskSpec, register, register_command

KINDS = ("forecast", "autoencoder")
ERROR_MODELS = ("gaussian", "robust")
TIME_ORDERS = ("strict", "file")
_MAD_TO_SIGMA = 1.4826  # MAD of a Gaussian times this is its standard deviation
_TINY = 1e-12

FloatArray = NDArray[np.float64]


# ---------------------------------------------------------------------- reading series
@dataclass(frozen=True)
class Series:
    """A univariate series read from a ``timestamp,value`` CSV: the raw timestamp strings (as in
    the file, written back unchanged by ``lstmkit detect``), their parsed times, the values, and
    the 0/1 labels of an optional ``label`` column (None without one)."""

    timestamps: list[str]
    times: NDArray[np.datetime64]
    values: FloatArray
    labels: NDArray[np.int64] | None = None


def read_series(
    path: str | os.PathLike[str], *, time_order: str = "strict", labels: bool = False
) -> Series:
    """Read a ``timestamp,value`` CSV (NAB's layout; a ``label`` column of 0/1 with
    ``labels=True``).

    Values must be finite numbers; errors name the file, the row and the column. With
    ``time_order='strict'`` timestamps must increase row by row (an unsorted or duplicated
    timestamp is refused, naming both rows: a detector's state assumes time runs forward);
    ``time_order='file'`` takes the rows in file order as they come, as NAB's scorer does (a
    few NAB files repeat or step back a timestamp)."""
    time_order = _checks.choice("time_order", time_order, TIME_ORDERS)
    columns = ["value", "label"] if labels else ["value"]
    table = read_csv_series(path, columns, time_column="timestamp", dtype=torch.float64)
    assert table.times is not None
    stamps = [t.strip() for t in table.times]
    try:
        times = np.asarray(stamps, dtype="datetime64[ns]")
    except ValueError:
        for row, stamp in enumerate(stamps):
            try:
                np.datetime64(stamp)
            except ValueError:
                raise ValueError(
                    f"{path}: row {row + 2}, column 'timestamp': expected a date and time such "
                    f"as 2014-04-01 00:00:00, got {stamp!r}"
                ) from None
        raise
    if time_order == "strict" and times.size > 1:
        steps = np.diff(times)
        bad = np.flatnonzero(steps <= np.timedelta64(0, "ns"))
        if bad.size:
            k = int(bad[0])
            what = "duplicated" if steps[k] == np.timedelta64(0, "ns") else "not increasing"
            raise ValueError(
                f"{path}: row {k + 3}, column 'timestamp': timestamps must increase, "
                f"got {stamps[k + 1]!r} after {stamps[k]!r} at row {k + 2} ({what}); sort the "
                "file, or use time_order='file' to take rows as they come"
            )
    values = table.values[:, 0].numpy().astype(np.float64)
    label_array = None
    if labels:
        raw = table.values[:, 1].numpy()
        bad_label = np.flatnonzero((raw != 0) & (raw != 1))
        if bad_label.size:
            k = int(bad_label[0])
            raise ValueError(
                f"{path}: row {k + 2}, column 'label': expected 0 or 1, got {raw[k]:g}"
            )
        label_array = raw.astype(np.int64)
    return Series(stamps, times, values, label_array)


def _values(name: str, value: Any) -> FloatArray:
    """A 1-D float64 array of finite values, at least 2 of them."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name} must be a 1-D sequence of numbers, got {_checks.describe(value)}")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be a 1-D sequence of numbers, got {_checks.describe(value)}"
        ) from None
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per time step), got shape {array.shape}")
    if array.size < 2:
        raise ValueError(f"{name} must hold at least 2 values, got {array.size}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(
            f"{name}[{int(bad[0])}] is {array[bad[0]]}: values must be finite (fill or drop "
            "missing values first)"
        )
    return array


def _labels(name: str, value: Any, n: int) -> NDArray[np.int64]:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.shape != (n,):
        raise ValueError(f"{name} must have one label per value, shape ({n},), got {array.shape}")
    bad = np.flatnonzero((array != 0) & (array != 1))
    if bad.size:
        raise ValueError(f"{name}[{int(bad[0])}] must be 0 or 1, got {array[bad[0]]!r}")
    return array.astype(np.int64)


# ---------------------------------------------------------------------- error model
def gaussian_tail(z: FloatArray, *, two_sided: bool) -> FloatArray:
    """Tail probability of standardised errors ``z``: P(|Z| >= |z|) or P(Z >= z)."""
    t = torch.from_numpy(np.asarray(z, dtype=np.float64))
    if two_sided:
        p = torch.special.erfc(t.abs() / math.sqrt(2.0))
    else:
        p = 0.5 * torch.special.erfc(t / math.sqrt(2.0))
    return p.numpy()


def _tail(z: float, two_sided: bool) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0)) if two_sided else 0.5 * math.erfc(z / math.sqrt(2.0))


def _log10_upper_tail(z: float) -> float:
    """log10 P(Z >= z) for a standard Gaussian, accurate far into the tail (where the tail
    itself underflows): the asymptotic series of Mills' ratio beyond z = 30."""
    if z < 30.0:
        return math.log10(max(0.5 * math.erfc(z / math.sqrt(2.0)), 1e-300))
    log_q = -0.5 * z * z - math.log(z * math.sqrt(2.0 * math.pi)) + math.log1p(-1.0 / (z * z))
    return log_q / math.log(10.0)


@dataclass
class ErrorModel:
    """Location and scale of the errors on clean data, optionally adapted online.

    ``fit`` estimates them (mean and standard deviation, or median and 1.4826 x MAD for
    ``kind='robust'``). ``update(e)`` moves them towards a new error with weight ``alpha``
    (exponentially weighted mean and variance), the error first clipped to ``loc +- clip *
    scale`` so that one outlier moves them little. ``floor`` bounds the scale from below: a
    series the model predicts perfectly would otherwise turn rounding noise into alarms."""

    kind: str = "gaussian"
    two_sided: bool = True
    loc: float = 0.0
    scale: float = 1.0
    alpha: float = 0.01
    clip: float = 3.0
    floor: float = 1e-6

    def fit(self, errors: FloatArray) -> ErrorModel:
        errors = np.asarray(errors, dtype=np.float64)
        if errors.size == 0:
            raise ValueError("the error model needs at least one error to fit, got none")
        if self.kind == "robust":
            self.loc = float(np.median(errors))
            self.scale = float(_MAD_TO_SIGMA * np.median(np.abs(errors - self.loc)))
        else:
            self.loc = float(errors.mean())
            self.scale = float(errors.std())
        self.scale = max(self.scale, self.floor)
        return self

    def score(self, error: float) -> float:
        """``1 - p``: the error's tail probability ``p`` turned into an anomaly score."""
        return 1.0 - _tail((error - self.loc) / self.scale, self.two_sided)

    def scores(self, errors: FloatArray) -> FloatArray:
        z = (np.asarray(errors, dtype=np.float64) - self.loc) / self.scale
        return 1.0 - gaussian_tail(z, two_sided=self.two_sided)

    def update(self, error: float) -> None:
        limit = self.clip * self.scale
        e = min(max(error, self.loc - limit), self.loc + limit)
        delta = e - self.loc
        self.loc += self.alpha * delta
        variance = (1.0 - self.alpha) * (self.scale**2 + self.alpha * delta * delta)
        self.scale = max(math.sqrt(variance), self.floor)

    def run(self, errors: FloatArray, *, adapt: bool) -> FloatArray:
        """Scores of a sequence of errors; with ``adapt``, each scored before it updates the
        model (the order a stream sees them in)."""
        if not adapt:
            return self.scores(errors)
        out = np.empty(len(errors))
        for t, e in enumerate(np.asarray(errors, dtype=np.float64).tolist()):
            out[t] = self.score(e)
            self.update(e)
        return out


# ---------------------------------------------------------------------- models
class _Scaled(nn.Module):
    """Buffers every detector carries into ``model.safetensors``: how values were standardised
    and the fitted error model and threshold, so that a saved detector scores alone."""

    value_loc: Tensor
    value_scale: Tensor
    error_loc: Tensor
    error_scale: Tensor
    threshold: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("value_loc", torch.zeros((), dtype=torch.float64))
        self.register_buffer("value_scale", torch.ones((), dtype=torch.float64))
        self.register_buffer("error_loc", torch.zeros((), dtype=torch.float64))
        self.register_buffer("error_scale", torch.ones((), dtype=torch.float64))
        self.register_buffer("threshold", torch.ones((), dtype=torch.float64))


class ForecastNet(_Scaled):
    """An LSTM over standardised values ``(B, T, 1)`` and a linear read-out: at every step the
    forecast of the next value, ``(B, T)``."""

    def __init__(self, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.rnn = LSTM(1, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: Tensor) -> Tensor:
        output, _ = self.rnn(x.unsqueeze(-1))
        return self.head(output).squeeze(-1)


class AutoencoderNet(_Scaled):
    """EncDec-AD: an LSTM encoder reads a window ``(B, W)``; an LSTM decoder, started from the
    encoder's final state and fed nothing, emits the window in reverse order (the last value
    first, as in the paper: the most recent value is the easiest to rebuild). Returns the
    reconstruction ``(B, W)`` in the window's own order."""

    def __init__(self, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.encoder = LSTM(1, hidden_size, num_layers, batch_first=True)
        self.decoder = LSTM(1, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: Tensor) -> Tensor:
        _, state = self.encoder(x.unsqueeze(-1))
        output, _ = self.decoder(torch.zeros_like(x).unsqueeze(-1), state)
        return self.head(output).squeeze(-1).flip(-1)


def _forecast_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, int]:
    x, y = batch
    return F.mse_loss(model(x), y), x.numel()


def _reconstruction_loss(model: nn.Module, batch: tuple[Tensor]) -> tuple[Tensor, int]:
    (x,) = batch
    return F.mse_loss(model(x), x), x.numel()


def _f_beta_threshold(scores: FloatArray, labels: NDArray[np.int64], beta: float) -> float:
    """The threshold (alarm where score >= it) that maximises F-beta on labelled scores,
    sweeping every distinct score; the highest among ties."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    fired = np.arange(1, s.size + 1)
    last = np.r_[s[1:] != s[:-1], True]  # the end of each group of equal scores
    tp, fired, cut = tp[last], fired[last], s[last]
    positives = max(int(labels.sum()), 1)
    b2 = beta * beta
    f = (1 + b2) * tp / np.maximum(b2 * positives + fired, 1)
    return float(cut[int(np.argmax(f))])


class AnomalyDetector(Estimator):
    """An LSTM anomaly detector trained on a (mostly) clean series.

    ``kind``: ``'forecast'`` (one-step prediction errors) or ``'autoencoder'`` (EncDec-AD
    reconstruction errors of the last ``window`` values). ``window``: the training windows'
    length (and the autoencoder's input). ``error_model``: ``'gaussian'`` or ``'robust'``.
    ``contamination``: the share of validation points above the threshold when validation data
    has no labels; ``beta``: F-beta's beta when it does. Values are standardised with the
    training series' mean and standard deviation. Every other keyword is a
    :class:`~lstmkit.train.TrainConfig` option.
    """

    task = "anomaly"

    def __init__(
        self,
        kind: str = "forecast",
        hidden_size: int = 32,
        num_layers: int = 1,
        window: int = 32,
        error_model: str = "gaussian",
        contamination: float = 0.01,
        beta: float = 1.0,
        batch_size: int = 32,
        **train_options: Any,
    ) -> None:
        self.kind = _checks.choice("kind", kind, KINDS)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.num_layers = _checks.positive_int("num_layers", num_layers)
        self.window = _checks.positive_int("window", window)
        if self.window < 2:
            raise ValueError(f"window must be at least 2, got {window}")
        self.error_model = _checks.choice("error_model", error_model, ERROR_MODELS)
        self.contamination = _checks.probability("contamination", contamination)
        self.beta = _checks.real("beta", beta)
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.batch_size = _checks.positive_int("batch_size", batch_size)
        super().__init__(**train_options)

    def get_params(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "window": self.window,
            "error_model": self.error_model,
            "contamination": self.contamination,
            "beta": self.beta,
            "batch_size": self.batch_size,
        }

    def build_model(self) -> nn.Module:
        net = ForecastNet if self.kind == "forecast" else AutoencoderNet
        model = net(self.hidden_size, self.num_layers)
        loc, scale = getattr(self, "_value_stats", (0.0, 1.0))
        model.value_loc.fill_(loc)
        model.value_scale.fill_(scale)
        return model

    def _net(self) -> _Scaled:
        model = self._require_model()
        assert isinstance(model, _Scaled)
        return model

    # ------------------------------------------------------------------ training
    def _windows(self, x: Tensor) -> tuple[Tensor, ...]:
        """Training windows of the standardised series: (inputs, next values) for the
        forecaster, overlapping by half; every window of ``window`` values, stride 1, for the
        autoencoder (whose errors are computed for every such window)."""
        W = self.window
        if self.kind == "forecast":
            width = min(W + 1, x.numel())
            chunks = x.unfold(0, width, max(1, W // 2))
            return chunks[:, :-1].contiguous(), chunks[:, 1:].contiguous()
        return (x.unfold(0, W, 1).contiguous(),)

    def fit(  # type: ignore[override]
        self,
        values: Any,
        *,
        val: Any = None,
        out: str | os.PathLike[str] | None = None,
        resume: bool = False,
    ) -> AnomalyDetector:
        """Train on the clean series ``values`` (1-D), fit the error model on its errors and
        calibrate the threshold on ``val``: a series, or ``(values, labels)`` with 0/1 labels,
        or a 1-tuple ``(values,)``; without ``val`` the training series calibrates it."""
        x_train = _values("values", values)
        minimum = 2 if self.kind == "forecast" else self.window
        if x_train.size < minimum:
            raise ValueError(
                f"values must hold at least {minimum} points for kind={self.kind!r} with "
                f"window={self.window}, got {x_train.size}"
            )
        val_values, val_labels = self._split_val(val)
        loc = float(x_train.mean())
        scale = max(float(x_train.std()), _TINY)
        self._value_stats = (loc, scale)
        data = DataLoader(
            TensorDataset(*self._windows(torch.from_numpy((x_train - loc) / scale).float())),
            batch_size=self.batch_size,
            shuffle=True,
        )
        val_loader = None
        if val_values is not None and val_values.size >= minimum:
            xv = torch.from_numpy((val_values - loc) / scale).float()
            val_loader = DataLoader(TensorDataset(*self._windows(xv)), batch_size=256)
        loss = _forecast_loss if self.kind == "forecast" else _reconstruction_loss
        self._fit_model(data, val_loader, loss, out=out, resume=resume)
        model = self._net()
        errors = self._errors(x_train)
        errors_model = ErrorModel(self.error_model, two_sided=self.kind == "forecast")
        errors_model.fit(errors[self._first_scored() :])
        model.error_loc.fill_(errors_model.loc)
        model.error_scale.fill_(errors_model.scale)
        calibration = x_train if val_values is None else val_values
        scores = self.score_samples(calibration)[self._first_scored() :]
        if val_labels is not None and val_labels[self._first_scored() :].any():
            threshold = _f_beta_threshold(scores, val_labels[self._first_scored() :], self.beta)
        else:
            threshold = float(np.quantile(scores, 1.0 - self.contamination))
        model.threshold.fill_(threshold)
        if out is not None and self.fit_result_ is not None and self.fit_result_.main_process:
            self.save(out)  # again, now with the error model and the threshold
        return self

    def _split_val(self, val: Any) -> tuple[FloatArray | None, NDArray[np.int64] | None]:
        if val is None:
            return None, None
        if isinstance(val, (tuple, list)) and len(val) in (1, 2) and hasattr(val[0], "__len__"):
            values = _values("val[0]", val[0])
            labels = None
            if len(val) == 2 and val[1] is not None:
                labels = _labels("val[1]", val[1], values.size)
            return values, labels
        return _values("val", val), None

    # ------------------------------------------------------------------ scoring
    def _first_scored(self) -> int:
        """The first index with an error: 1 for the forecaster (step 0 has no forecast),
        ``window - 1`` for the autoencoder (the first full window)."""
        return 1 if self.kind == "forecast" else self.window - 1

    def _errors(self, values: FloatArray) -> FloatArray:
        """One error per value (0 before the first scored index): forecast errors ``x_t -
        x̂_t`` in standardised units, or mean squared reconstruction errors."""
        model = self._net()
        loc, scale = float(model.value_loc), float(model.value_scale)
        x = torch.from_numpy((values - loc) / scale).float()
        errors = np.zeros(values.size)
        with torch.no_grad():
            if self.kind == "forecast":
                forecast = model(x[None])[0].double().numpy()
                errors[1:] = x[1:].double().numpy() - forecast[:-1]
            else:
                if values.size < self.window:
                    raise ValueError(
                        f"values must hold at least window={self.window} points to score with "
                        f"the autoencoder, got {values.size}"
                    )
                windows = x.unfold(0, self.window, 1)
                parts = [
                    (model(chunk) - chunk).double().square().mean(-1)
                    for chunk in windows.split(1024)
                ]
                errors[self.window - 1 :] = torch.cat(parts).numpy()
        return errors

    def _error_model(self) -> ErrorModel:
        model = self._net()
        return ErrorModel(
            self.error_model,
            two_sided=self.kind == "forecast",
            loc=float(model.error_loc),
            scale=float(model.error_scale),
        )

    @property
    def threshold(self) -> float:
        """The calibrated alarm threshold on scores (alarm where score >= threshold)."""
        return float(self._net().threshold)

    def score_samples(
        self, values: Any, *, adapt: bool = False, alpha: float = 0.01, clip: float = 3.0
    ) -> FloatArray:
        """Anomaly scores in [0, 1] for every value of the series (0 where no error exists
        yet), the whole series at once; ``adapt`` lets the error model learn online as
        :class:`DetectorStream` does (``alpha``: its forgetting rate, ``clip``: the clipping of
        each error, in standard deviations)."""
        x = _values("values", values)
        errors = self._errors(x)
        error_model = self._error_model()
        error_model.alpha = _checks.probability("alpha", alpha)
        error_model.clip = _checks.real("clip", clip)
        first = self._first_scored()
        scores = np.zeros(x.size)
        scores[first:] = error_model.run(errors[first:], adapt=adapt)
        return scores

    def predict(self, values: Any) -> NDArray[np.bool_]:  # type: ignore[override]
        """Alarms: where the score reaches the calibrated threshold."""
        return self.score_samples(values) >= self.threshold

    def evaluate(self, values: Any, labels: Any = None) -> dict[str, float]:  # type: ignore[override]
        """With 0/1 ``labels``: precision, recall and F1 of the alarms, and the counts. Without:
        the alarm rate and the mean score (what the threshold does on unlabelled data)."""
        x = _values("values", values)
        scores = self.score_samples(x)
        fired = scores >= self.threshold
        metrics: dict[str, float] = {
            "n": int(x.size),
            "alarms": int(fired.sum()),
            "alarm_rate": float(fired.mean()),
            "mean_score": float(scores.mean()),
            "threshold": self.threshold,
        }
        if labels is not None:
            y = _labels("labels", labels, x.size).astype(bool)
            tp = int((fired & y).sum())
            precision = tp / max(int(fired.sum()), 1)
            recall = tp / max(int(y.sum()), 1)
            f1 = 2 * precision * recall / max(precision + recall, _TINY)
            metrics.update(precision=precision, recall=recall, f1=f1, anomalies=int(y.sum()))
        return metrics

    def stream(
        self, *, adapt: bool = False, alpha: float = 0.01, clip: float = 3.0
    ) -> DetectorStream:
        """A :class:`DetectorStream` that scores one value per ``step``, from the start of a
        series, equal to :meth:`score_samples` with the same options."""
        error_model = self._error_model()
        error_model.alpha = _checks.probability("alpha", alpha)
        error_model.clip = _checks.real("clip", clip)
        return DetectorStream(self._net(), self.kind, self.window, error_model, adapt)


class DetectorStream:
    """One observation at a time through a fitted :class:`AnomalyDetector`.

    Per step: standardise the value, compute its error (forecast: against the forecast made at
    the previous step; autoencoder: reconstruct the ring buffer of the last ``window`` values),
    score it with the error model (which learns from it when ``adapt``), and for the forecaster
    advance the LSTM one step with its state carried. The work per step does not grow with the
    length of the stream."""

    def __init__(
        self, model: _Scaled, kind: str, window: int, error_model: ErrorModel, adapt: bool
    ) -> None:
        self.kind = kind
        self.window = window
        self.error_model = error_model
        self.adapt = adapt
        self.threshold = float(model.threshold)
        self._loc, self._scale = float(model.value_loc), float(model.value_scale)
        self._model = model
        self._t = 0
        if kind == "forecast":
            assert isinstance(model, ForecastNet)
            self._streamer = Streamer(model.rnn, batch_size=1)
            self._x = torch.zeros(1, 1)
            self._w = model.head.weight.detach().double().numpy()[0]
            self._b = float(model.head.bias.detach()[0])
            self._forecast = 0.0
        else:
            self._buffer: deque[float] = deque(maxlen=window)

    def step(self, value: float) -> float:
        """The score of ``value``, the next observation (0 while no error exists yet)."""
        v = _checks.real("value", value)
        if not math.isfinite(v):
            raise ValueError(f"value must be finite, got {v} at step {self._t}")
        x = (v - self._loc) / self._scale
        error: float | None = None
        if self.kind == "forecast":
            x32 = float(np.float32(x))  # the batch path standardises in float32 as well
            if self._t > 0:
                error = x32 - self._forecast
            self._x[0, 0] = x32
            h = self._streamer.step(self._x).numpy()[0].astype(np.float64)
            self._forecast = float(np.float32(h @ self._w + self._b))
        else:
            self._buffer.append(x)
            if len(self._buffer) == self.window:
                chunk = torch.tensor([list(self._buffer)], dtype=torch.float32)
                with torch.no_grad():
                    error = float((self._model(chunk) - chunk).double().square().mean())
        self._t += 1
        if error is None:
            return 0.0
        score = self.error_model.score(error)
        if self.adapt:
            self.error_model.update(error)
        return score


# ---------------------------------------------------------------------- online detector (NAB)
_DAY_SECONDS = 86400.0
_SEASON_PROBE = 8  # sampling intervals whose median gives the step of a stream's clock
_MIN_SEASON, _MAX_SEASON = 4, 2880  # steps per day: from 6-hourly to 30-second data
#: the score of a value outside the range seen so far (``p = 1e-10`` on the likelihood's scale),
#: as HTM's detector scores a spatial anomaly 1.0
SPATIAL_SCORE = 1.0


@dataclass
class OnlineConfig:
    """Settings of :class:`OnlineDetector` (the defaults are those ``lstmkit nab`` runs).

    The forecaster: ``hidden_size``: LSTM units. ``bptt``: length of the training windows.
    ``memory``: how many recent values training windows are drawn from. ``train_every``: steps
    between two updates, each ``batch`` windows and one Adam step at ``lr`` (training starts
    once ``bptt + 1`` values are in memory). ``warmup``: steps before any score is given (and
    before the spatial test may fire).

    The scores (see :class:`OnlineScorer`): ``short`` / ``long``: the anomaly likelihood of the
    forecast errors, its averaging and reference windows (Ahmad et al. 2017 use 10 and 8640
    steps; NAB's files are short). ``season``: the seasonal test's period in steps; ``None``
    infers a day from the timestamps (when a day is a whole number of steps), ``0`` turns the
    test off. ``weekly``: also compare with the same time ``7 * season`` steps back.
    ``season_short`` / ``season_long``: the likelihood windows of the seasonal errors.
    ``spatial``: the tolerance of the spatial test (a value beyond the range of all earlier
    values widened by this share of its width scores :data:`SPATIAL_SCORE`); ``None`` turns it
    off. ``refractory``: after a score of at least ``alert``, later scores are capped below
    ``alert`` for this many steps, the way an alerting system silences repeats of an alarm it
    has just raised; ``alert`` is the detector's operating threshold."""

    hidden_size: int = 16
    bptt: int = 24
    memory: int = 1000
    train_every: int = 8
    batch: int = 8
    lr: float = 3e-3
    warmup: int = 100
    short: int = 3
    long: int = 2000
    season: int | None = None
    weekly: bool = True
    season_short: int = 2
    season_long: int = 1000
    spatial: float | None = 0.0
    refractory: int = 120
    alert: float = 0.525
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden_size", "bptt", "train_every", "batch", "short", "long"):
            _checks.positive_int(name, getattr(self, name))
        for name in ("season_short", "season_long"):
            _checks.positive_int(name, getattr(self, name))
        _checks.positive_int("warmup", self.warmup, allow_zero=True)
        _checks.positive_int("refractory", self.refractory, allow_zero=True)
        _checks.positive_int("seed", self.seed, allow_zero=True)
        _check_season(self.season)
        _checks.boolean("weekly", self.weekly)
        _check_tolerance(self.spatial, "spatial")
        if _checks.positive_int("memory", self.memory) <= self.bptt + 1:
            raise ValueError(
                f"memory must exceed bptt + 1 = {self.bptt + 1} (training windows are drawn "
                f"from it), got {self.memory}"
            )
        if not _checks.real("lr", self.lr) > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not _checks.real("alert", self.alert) > 0:
            raise ValueError(f"alert must be > 0, got {self.alert}")


def _check_season(season: Any) -> int | None:
    if season is None:
        return None
    if _checks.positive_int("season", season, allow_zero=True) == 1:
        raise ValueError(
            "season must be None (a day, from the timestamps), 0 (off) or a period of at least "
            "2 steps, got 1"
        )
    return int(season)


def _check_tolerance(tolerance: Any, name: str) -> float | None:
    if tolerance is None:
        return None
    value = _checks.real(name, tolerance)
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite tolerance >= 0 or None (off), got {tolerance}")
    return value


def _seconds(time: Any) -> float:
    """A timestamp as seconds: numbers are taken as seconds already, anything else (datetime64,
    datetime, an ISO string) goes through ``numpy.datetime64``."""
    if isinstance(time, (int, float, np.integer, np.floating)) and not isinstance(time, bool):
        return float(time)
    try:
        stamp = np.datetime64(time, "ns")
    except (TypeError, ValueError):
        raise ValueError(
            f"time must be seconds or a date and time (datetime64, datetime or ISO string), got "
            f"{_checks.describe(time)}"
        ) from None
    return float(stamp.astype(np.int64)) / 1e9


def daily_season(step: float) -> int | None:
    """Steps per day for a stream sampled every ``step`` seconds, or None when a day is not
    (within 1%) a whole number of steps between 4 and 2880 (6-hourly to 30-second data)."""
    if not step > 0 or not math.isfinite(step):
        return None
    period = round(_DAY_SECONDS / step)
    if not _MIN_SEASON <= period <= _MAX_SEASON:
        return None
    if abs(period * step - _DAY_SECONDS) > 0.01 * _DAY_SECONDS:
        return None
    return int(period)


class SeasonalError:
    """The seasonal (contextual) error of a stream, one step at a time, in O(1).

    The raw score of ``x_t`` is ``|x_t - x_{t-P}|``, ``P`` the season in steps, and with
    ``weekly`` the smaller of that and ``|x_t - x_{t-7P}|`` once ``7P`` steps have been seen: a
    value unlike both the same time yesterday and the same time last week is out of its
    context (a quiet Sunday that looks like last Sunday is not). A one-step forecaster misses
    exactly this: a daily peak that is higher, lower or missing, a holiday that looks like an
    ordinary day step by step. A ring buffer of the last ``7P`` values makes it O(1) per step.

    ``season=None`` infers ``P`` as a day from the timestamps passed to :meth:`step`: the
    median of the first 8 sampling intervals (see :func:`daily_season`); the test stays off
    when that is no usable season or when a timestamp is missing. ``season=0`` is off. Values
    should be on a common scale (``OnlineDetector`` passes its standardised values)."""

    def __init__(self, season: int | None = None, weekly: bool = True) -> None:
        self.season = _check_season(season)
        self.weekly = _checks.boolean("weekly", weekly)
        self.period: int | None = None
        self._off = self.season == 0
        self._times: list[float] = []
        self._pending: list[float] = []
        self._ring: list[float] = []
        self._lags: tuple[int, ...] = ()
        self._t = 0
        if self.season:
            self._start(self.season)

    @property
    def active(self) -> bool:
        """Whether the season is known (and the test on)."""
        return self.period is not None

    def _start(self, period: int) -> None:
        self.period = period
        self._lags = (period, 7 * period) if self.weekly else (period,)
        size = max(self._lags)
        self._ring = [0.0] * size
        for t in range(max(0, self._t - size), self._t):
            self._ring[t % size] = self._pending[t]
        self._pending = []

    def step(self, x: float, time: Any = None) -> float | None:
        """The raw score of the next value ``x`` (stamped ``time``), or None while no earlier
        value at the same phase exists (and always when off)."""
        t = self._t
        if self.period is None and not self._off:
            if time is None:
                self._off = True
                self._pending = []
            else:
                self._times.append(_seconds(time))
                self._pending.append(x)
                if len(self._times) > _SEASON_PROBE:
                    period = daily_season(float(np.median(np.diff(self._times))))
                    self._times = []
                    if period is None:
                        self._off = True
                        self._pending = []
                    else:
                        self._pending.pop()  # x is stored below, with the ring
                        self._start(period)
        self._t += 1
        if self.period is None:
            return None
        size = len(self._ring)
        raw: float | None = None
        for lag in self._lags:
            if t >= lag:
                error = abs(x - self._ring[(t - lag) % size])
                raw = error if raw is None else min(raw, error)
        self._ring[t % size] = x
        return raw


class SpatialNovelty:
    """HTM's spatial anomaly test (NAB's Numenta detector): is a value outside the range of all
    the values before it, widened by ``tolerance`` times that range's width on either side?

    The running minimum and maximum make it O(1). It flags new extremes: a level shift to
    heights the series never reached, a spike above every earlier one, a drop below the floor.
    ``warmup``: values seen before it may fire (the first ranges are narrow). A constant series
    never fires; its first different value does."""

    def __init__(self, tolerance: float = 0.0, warmup: int = 0) -> None:
        tol = _check_tolerance(tolerance, "tolerance")
        if tol is None:
            raise ValueError("tolerance must be a finite tolerance >= 0, got None")
        self.tolerance = tol
        self.warmup = _checks.positive_int("warmup", warmup, allow_zero=True)
        self._low = math.inf
        self._high = -math.inf
        self._n = 0

    def step(self, value: float) -> bool:
        """Whether ``value`` is new: outside the widened range of the values before it."""
        n = self._n
        self._n += 1
        novel = False
        if n > 0 and n >= self.warmup:
            margin = self.tolerance * (self._high - self._low)
            novel = value > self._high + margin or value < self._low - margin
        self._low = min(self._low, value)
        self._high = max(self._high, value)
        return novel


class AnomalyLikelihood:
    """Raw anomaly scores to a likelihood, one step at a time (after Ahmad et al. 2017).

    The mean raw score of the last ``short`` steps is compared with the mean and standard
    deviation of the raw scores of the last ``long`` steps (before this one): its Gaussian
    upper-tail probability ``p`` is how unusual the recent errors are *for this series*. The
    score is ``-log10(p) / 10`` (0 during the first ``warmup`` steps; 1 means p = 1e-10, and
    it is not capped): a log scale, so that events with p = 1e-6 and p = 1e-12 stay apart under
    one corpus-wide threshold, even where ``p`` itself underflows.
    After a score of at least ``alert``, the next ``refractory`` scores are capped just below
    it, as an alerting system silences repeats of an alarm it has just raised
    (:class:`OnlineScorer` applies its refractory period to the fused score instead)."""

    def __init__(
        self, short: int, long: int, warmup: int, refractory: int = 0, alert: float = 0.5
    ) -> None:
        self.short, self.long, self.warmup = short, long, warmup
        self.refractory, self.alert = refractory, alert
        self._raw: deque[float] = deque(maxlen=long)
        self._sum = 0.0
        self._sq = 0.0
        self._recent: deque[float] = deque(maxlen=short)
        self._recent_sum = 0.0
        self._n = 0
        self._quiet = 0

    @property
    def ready(self) -> bool:
        """Whether the warm-up is over (scores are given)."""
        return self._n > self.warmup

    def step(self, raw: float) -> float:
        """The score of the next raw score ``raw``."""
        self._n += 1
        if len(self._recent) == self._recent.maxlen:
            self._recent_sum -= self._recent[0]
        self._recent.append(raw)
        self._recent_sum += raw
        score = 0.0
        if self._n > self.warmup and self._raw:
            n = len(self._raw)
            mu = self._sum / n
            sigma = math.sqrt(max(self._sq / n - mu * mu, 0.0))
            sigma = max(sigma, 1e-3 + 0.01 * mu)
            z = (self._recent_sum / len(self._recent) - mu) / sigma
            score = -_log10_upper_tail(z) / 10.0
        if len(self._raw) == self._raw.maxlen:
            old = self._raw[0]
            self._sum -= old
            self._sq -= old * old
        self._raw.append(raw)
        self._sum += raw
        self._sq += raw * raw
        if self._quiet > 0:
            self._quiet -= 1
            score = min(score, self.alert * 0.999)
        elif self.refractory and score >= self.alert:
            self._quiet = self.refractory
        return score


class OnlineScorer:
    """The scoring half of :class:`OnlineDetector`: three streaming tests fused into one score.

    Per step, all O(1):

    1. **forecast**: the anomaly likelihood (``short``, ``long``) of the forecaster's absolute
       one-step error;
    2. **seasonal**: the anomaly likelihood (``season_short``, ``season_long``) of the
       :class:`SeasonalError` of the standardised value, from the step its season is known;
    3. **spatial**: :class:`SpatialNovelty` of the raw value.

    Each likelihood score is ``-log10(p) / 10`` for a tail probability ``p``; the fused score is
    that of the smallest ``p``, Bonferroni-corrected for the number ``k`` of likelihood tests
    giving scores: ``-log10(min(1, k * min p)) / 10``. A spatial novelty raises it to at least
    :data:`SPATIAL_SCORE`. Finally the refractory period: after a fused score of at least
    ``alert``, the next ``refractory`` scores are capped just below ``alert``, so that one
    anomaly raises one alarm (NAB counts the first detection in a window and charges every
    detection outside one). With ``refractory=0`` the scores are the raw fused ones."""

    def __init__(self, config: OnlineConfig | None = None) -> None:
        self.config = cfg = config if config is not None else OnlineConfig()
        self.forecast = AnomalyLikelihood(cfg.short, cfg.long, cfg.warmup)
        self.seasonal = SeasonalError(cfg.season, cfg.weekly) if cfg.season != 0 else None
        self.seasonal_likelihood = AnomalyLikelihood(cfg.season_short, cfg.season_long, cfg.warmup)
        self.spatial = SpatialNovelty(cfg.spatial, cfg.warmup) if cfg.spatial is not None else None
        self._quiet = 0

    def components(self, raw: float, x: float, value: float, time: Any = None) -> float:
        """The fused score before the refractory period (advances every test one step)."""
        score = self.forecast.step(raw)
        tests = 1
        if self.seasonal is not None:
            error = self.seasonal.step(x, time)
            if error is not None:
                seasonal = self.seasonal_likelihood.step(error)
                if self.seasonal_likelihood.ready:
                    tests += 1
                    score = max(score, seasonal)
        score = max(0.0, score - math.log10(tests) / 10.0)
        if self.spatial is not None and self.spatial.step(value):
            score = max(score, SPATIAL_SCORE)
        return score

    def step(self, raw: float, x: float, value: float, time: Any = None) -> float:
        """The score of a step: the forecaster's absolute error ``raw``, the standardised value
        ``x``, the value itself and its timestamp ``time`` (seconds or a date; None when the
        stream has none, which leaves the seasonal test off unless ``season`` is given)."""
        score = self.components(raw, x, value, time)
        alert = self.config.alert
        if self._quiet > 0:
            self._quiet -= 1
            score = min(score, alert * 0.999)
        elif self.config.refractory and score >= alert:
            self._quiet = self.config.refractory
        return score


class OnlineDetector:
    """A streaming anomaly detector that learns the series as it reads it (no training data).

    Each step: standardise the value with the running mean and standard deviation of the values
    seen so far; the LSTM forecaster's absolute one-step error is its raw score. Every
    ``train_every`` steps the forecaster takes one Adam step on ``batch`` windows drawn from
    the last ``memory`` values and the :class:`~lstmkit.streaming.Streamer` is refreshed with
    the new weights, keeping its state. :class:`OnlineScorer` fuses the anomaly likelihood of
    those errors (Ahmad et al. 2017: the mean of the last ``short`` against the distribution of
    the last ``long``, as ``-log10(p) / 10``) with a seasonal test (the value against the same
    time a day and a week before, the day inferred from the timestamps) and HTM's spatial test
    (a value outside the range seen so far), and applies a refractory period. All of it is
    O(1) per step; nothing looks ahead."""

    def __init__(self, config: OnlineConfig | None = None) -> None:
        self.config = cfg = config if config is not None else OnlineConfig()
        self._rng = np.random.default_rng(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            self.net = ForecastNet(cfg.hidden_size, 1)
        self._optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self._streamer = Streamer(self.net.rnn, batch_size=1)
        self._x = torch.zeros(1, 1)
        self._read_head()
        self._history: deque[float] = deque(maxlen=cfg.memory)
        self.scorer = OnlineScorer(cfg)
        self._n = 0
        self._mean = 0.0
        self._m2 = 0.0
        self._forecast = 0.0

    def _read_head(self) -> None:
        self._w = self.net.head.weight.detach().double().numpy()[0].copy()
        self._b = float(self.net.head.bias.detach()[0])

    def _train_step(self) -> None:
        cfg = self.config
        history = np.fromiter(self._history, dtype=np.float32)
        starts = self._rng.integers(0, history.size - cfg.bptt, size=cfg.batch)
        idx = starts[:, None] + np.arange(cfg.bptt + 1)[None, :]
        chunk = torch.from_numpy(history[idx])
        self.net.train()
        loss = F.mse_loss(self.net(chunk[:, :-1]), chunk[:, 1:])
        self._optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self._optimizer.step()
        self._streamer.refresh()
        self._read_head()

    def raw_step(self, value: float) -> tuple[float, float]:
        """The forecaster's half of a step: ``(raw, x)``, the absolute one-step forecast error
        of ``value`` in standardised units and the standardised value itself, after which the
        forecaster reads it and maybe trains. (Neither depends on the scorer's settings: cache
        them to try settings of :class:`OnlineScorer` quickly.)"""
        cfg = self.config
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"value must be finite, got {v} at step {self._n}")
        self._n += 1
        delta = v - self._mean
        self._mean += delta / self._n
        self._m2 += delta * (v - self._mean)
        std = math.sqrt(self._m2 / self._n) if self._n > 1 else 0.0
        x = (v - self._mean) / std if std > _TINY * max(1.0, abs(self._mean)) else 0.0
        x = min(max(x, -10.0), 10.0)
        raw = abs(x - self._forecast)
        self._x[0, 0] = x
        h = self._streamer.step(self._x).numpy()[0].astype(np.float64)
        self._forecast = float(h @ self._w + self._b)
        self._history.append(x)
        if len(self._history) > cfg.bptt + 1 and self._n % cfg.train_every == 0:
            self._train_step()
        return raw, x

    def step(self, value: float, time: Any = None) -> float:
        """The anomaly score of the next observation ``value``, stamped ``time`` (seconds or a
        date; optional), 0 during warm-up."""
        raw, x = self.raw_step(value)
        return self.scorer.step(raw, x, float(value), time)

    def run(self, values: Sequence[float] | FloatArray, times: Any = None) -> FloatArray:
        """Scores of a whole series, one step at a time (what a stream would see); ``times``:
        the timestamps (datetime64 or ISO strings, one per value), which let the seasonal test
        infer its season."""
        array = np.asarray(values, dtype=np.float64)
        stamps: list[Any] = [None] * array.size
        if times is not None:
            try:
                parsed = np.asarray(times, dtype="datetime64[ns]")
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"times must be timestamps (datetime64 or ISO strings): {error}"
                ) from error
            if parsed.shape != array.shape:
                raise ValueError(
                    f"times must hold one timestamp per value, shape {array.shape}, got "
                    f"{parsed.shape}"
                )
            stamps = (parsed.astype(np.int64) / 1e9).tolist()
        return np.array(
            [self.step(v, t) for v, t in zip(array.tolist(), stamps, strict=True)],
            dtype=np.float64,
        )


# ---------------------------------------------------------------------- NAB
@dataclass
class NABResult:
    """Scores of a NAB run: the normalised score per profile, the per-category table (each
    category scored alone, with the corpus-wide threshold of the standard profile), per-file
    details and the thresholds."""

    standard: float
    low_fp: float
    low_fn: float
    thresholds: dict[str, float]
    categories: dict[str, dict[str, Any]]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self, details: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not details:
            out.pop("files")
        return out


_PROFILE_KEYS = {
    "standard": "standard",
    "low_fp": "reward_low_FP_rate",
    "low_fn": "reward_low_FN_rate",
}


def nab_files(data: str | os.PathLike[str]) -> list[str]:
    """The ``category/file.csv`` names under a NAB-layout directory (``DIR/category/*.csv``,
    or ``DIR/data/category/*.csv`` as in NAB's repository), sorted."""
    root = _nab_root(data)
    names = sorted(str(p.relative_to(root)).replace(os.sep, "/") for p in root.glob("*/*.csv"))
    if not names:
        raise ValueError(f"--data {data}: no CSV files found as {data}/CATEGORY/FILE.csv")
    return names


def _nab_root(data: str | os.PathLike[str]) -> Path:
    root = Path(data)
    if not root.is_dir():
        raise ValueError(f"--data {data} is not a directory (expected NAB's layout)")
    if (root / "data").is_dir() and not any(root.glob("*/*.csv")):
        root = root / "data"
    return root


def run_nab(
    data: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    *,
    config: OnlineConfig | None = None,
    detector: Callable[[FloatArray], FloatArray] | None = None,
    log: Callable[[str], None] | None = None,
) -> NABResult:
    """Run a streaming detector over every file of a NAB-layout directory, each file alone
    and in file order with a fresh detector, and score it with NAB's three profiles (each with
    its best corpus-wide threshold, as NAB does). The default is :class:`OnlineDetector` with
    ``config``, given each file's values and timestamps; ``detector(values) -> scores``
    replaces it."""
    start = time.perf_counter()
    windows = nab.read_windows(labels)
    root = _nab_root(data)
    names = nab_files(data)
    missing = [name for name in names if name not in windows]
    if missing:
        raise ValueError(
            f"--labels {labels} has no windows for {missing[0]} (and {len(missing) - 1} more "
            "files); give the combined_windows.json that belongs to --data"
        )
    scores: dict[str, FloatArray] = {}
    bounds: dict[str, Any] = {}
    for name in names:
        series = read_series(root / name, time_order="file")
        bounds[name] = nab.window_bounds(series.times, windows[name], file=name)
        t0 = time.perf_counter()
        if detector is not None:
            scores[name] = detector(series.values)
        else:
            scores[name] = OnlineDetector(config).run(series.values, series.times)
        if log is not None:
            log(f"{name}: {series.values.size} rows in {time.perf_counter() - t0:.1f} s")
    results = {
        key: nab.optimize_threshold(scores, bounds, profile)
        for key, profile in _PROFILE_KEYS.items()
    }
    standard = results["standard"]
    categories: dict[str, dict[str, Any]] = {}
    for category in sorted({name.split("/")[0] for name in names}):
        keys = [name for name in names if name.split("/")[0] == category]
        part = (
            nab.score_corpus(
                {k: scores[k] >= standard.threshold for k in keys}, {k: bounds[k] for k in keys}
            )
            if any(len(bounds[k]) for k in keys)
            else None
        )
        fps = sum(standard.score.files[k].false_positives for k in keys)
        raw = sum(standard.score.files[k].score for k in keys)
        # a category without anomaly windows cannot be normalised: its raw score is the cost
        # of its false positives alone
        categories[category] = {
            "files": len(keys),
            "standard": None if part is None else part.normalized,
            "raw": raw,
            "false_positives": fps,
        }
    files = {
        name: {
            "rows": int(scores[name].size),
            "score": standard.score.files[name].score,
            "detected": standard.score.files[name].detected_windows,
            "missed": standard.score.files[name].missed_windows,
            "false_positives": standard.score.files[name].false_positives,
        }
        for name in names
    }
    return NABResult(
        standard=standard.score.normalized,
        low_fp=results["low_fp"].score.normalized,
        low_fn=results["low_fn"].score.normalized,
        thresholds={key: r.threshold for key, r in results.items()},
        categories=categories,
        files=files,
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------- task registration
def _add_arguments(group: argparse._ActionsContainer) -> None:
    group.add_argument("--data", required=True, metavar="FILE", help="timestamp,value CSV (clean)")
    group.add_argument(
        "--val-fraction", type=float, default=0.2, metavar="F",
        help="the last F of the series calibrates the threshold",
    )  # fmt: skip
    group.add_argument("--kind", choices=KINDS, default="forecast", help="detector")
    group.add_argument("--hidden-size", type=int, default=32, metavar="H", help="LSTM units")
    group.add_argument("--num-layers", type=int, default=1, metavar="L", help="stacked layers")
    group.add_argument("--window", type=int, default=32, metavar="W", help="window length")
    group.add_argument("--error-model", choices=ERROR_MODELS, default="gaussian")
    group.add_argument("--contamination", type=float, default=0.01, metavar="Q",
                       help="share of validation points above the threshold")  # fmt: skip
    group.add_argument("--beta", type=float, default=1.0, help="F-beta of labelled validation")
    group.add_argument("--batch-size", type=int, default=32, metavar="B", help="batch size")


def _make_data(args: argparse.Namespace) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    fraction = _checks.real("--val-fraction", args.val_fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    series = read_series(args.data)
    n_val = round(fraction * series.values.size)
    if n_val < 2 or series.values.size - n_val < 2:
        raise ValueError(
            f"--data {args.data} has {series.values.size} rows: too few to keep "
            f"{fraction:g} of them for validation"
        )
    cut = series.values.size - n_val
    return (series.values[:cut],), (series.values[cut:],)


def read_data(path: str) -> tuple[Any, ...]:
    """``(values, labels)`` for ``lstmkit evaluate DIR --data FILE``: a ``timestamp,value``
    CSV, with a ``label`` column of 0/1 when the file has one."""
    with open(path, encoding="utf-8", newline="") as handle:
        header = [h.strip() for h in next(csv.reader(handle), [])]
    series = read_series(path, labels="label" in header)
    return series.values, series.labels


register(
    TaskSpec(
        name="anomaly",
        help="LSTM anomaly detector on a timestamp,value series (forecast or autoencoder)",
        estimator=AnomalyDetector,
        add_arguments=_add_arguments,
        make_data=_make_data,
        read_data=read_data,
    )
)


# ---------------------------------------------------------------------- commands
def _detect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="FILE", help="timestamp,value CSV")
    parser.add_argument("--model", metavar="DIR", help="a trained 'anomaly' run (default: online)")
    parser.add_argument("--out", required=True, metavar="FILE", help="scores CSV to write")
    parser.add_argument(
        "--threshold", type=float, metavar="S",
        help="alarm threshold (default: the model's calibrated one; online: OnlineConfig.alert)",
    )  # fmt: skip
    parser.add_argument("--adapt", action="store_true", help="adapt the error model online")


def _detect(args: argparse.Namespace) -> int:
    series = read_series(args.data)
    if args.model is not None:
        detector = AnomalyDetector.load(args.model)
        stream = detector.stream(adapt=args.adapt)
        scores = np.array([stream.step(v) for v in series.values.tolist()])
        threshold = detector.threshold
    else:
        scores = OnlineDetector().run(series.values, series.times)
        threshold = OnlineConfig().alert
    if args.threshold is not None:
        threshold = _checks.real("--threshold", args.threshold)
    fired = scores >= threshold
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "value", "score", "is_anomaly"])
        for stamp, value, score, alarm in zip(
            series.timestamps,
            series.values.tolist(),
            scores.tolist(),
            fired.tolist(),
            strict=True,
        ):
            writer.writerow([stamp, repr(value), f"{score:.10g}", int(alarm)])
    print(
        f"{series.values.size} rows scored, {int(fired.sum())} anomalies at threshold "
        f"{threshold:g}; written to {path}"
    )
    return 0


def _nab_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR", help="NAB-layout directory")
    parser.add_argument("--labels", required=True, metavar="FILE", help="combined_windows.json")
    parser.add_argument("--details", action="store_true", help="add the per-file table")
    parser.add_argument("--seed", type=int, default=0, help="the detector's seed")
    parser.add_argument("--verbose", action="store_true", help="time each file on stderr")


def _nab(args: argparse.Namespace) -> int:
    config = OnlineConfig(seed=_checks.positive_int("--seed", args.seed, allow_zero=True))
    # the detector's matrices are tiny: extra threads only add contention, and one thread
    # makes the run reproducible bit for bit
    torch.set_num_threads(1)
    log = (lambda line: print(line, file=sys.stderr)) if args.verbose else None
    result = run_nab(args.data, args.labels, config=config, log=log)
    print(json.dumps(result.to_dict(details=args.details)))
    return 0


register_command(
    Command(
        "detect",
        "score a timestamp,value CSV: writes timestamp,value,score,is_anomaly",
        _detect_arguments,
        _detect,
    )
)
register_command(
    Command(
        "nab",
        "run the streaming detector over a NAB directory and print its NAB scores as JSON",
        _nab_arguments,
        _nab,
    )
)

__all__ = [
    "SPATIAL_SCORE",
    "AnomalyDetector",
    "AnomalyLikelihood",
    "AutoencoderNet",
    "DetectorStream",
    "ErrorModel",
    "ForecastNet",
    "NABResult",
    "OnlineConfig",
    "OnlineDetector",
    "OnlineScorer",
    "SeasonalError",
    "Series",
    "SpatialNovelty",
    "daily_season",
    "gaussian_tail",
    "nab_files",
    "read_data",
    "read_series",
    "run_nab",
]
