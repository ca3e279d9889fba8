"""Sliding windows over time series for forecasting and anomaly detection.

A forecaster learns from pairs (the last ``lookback`` values, the next ``horizon`` values) cut
from one or many series. :class:`SlidingWindows` cuts them, with the covariates that go with
them: *past-observed* covariates (known only up to the forecast time, e.g. a sensor beside the
target) and *known-future* covariates (known ahead, e.g. the hour, the weekday, a holiday flag).
Series too short to give one window are skipped and reported, never dropped silently, and
non-finite values are caught at construction with their series and position, not as a NaN loss
ten epochs later.
"""

from __future__ import annotations

import bisect
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .. import _checks

__all__ = ["SlidingWindows"]


def _as_float_tensor(name: str, value: Any, dtype: torch.dtype) -> Tensor:
    if isinstance(value, Tensor):
        t = value.detach()
    elif isinstance(value, np.ndarray):
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
            raise TypeError(f"{name} must hold numbers, got an array of dtype {value.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(value))
    elif isinstance(value, (list, tuple)):
        try:
            t = torch.as_tensor(np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a list of numbers: {err}") from err
    else:
        raise TypeError(
            f"{name} must be a 1-D or 2-D tensor or array, got {_checks.describe(value)}"
        )
    if t.is_complex():
        raise TypeError(f"{name} must be real, got dtype {t.dtype}")
    if t.dim() not in (1, 2):
        raise ValueError(
            f"{name} must be 1-D (L,) or 2-D (L, features), got shape {tuple(t.shape)}"
        )
    return t.to(dtype)


def _first_bad(t: Tensor, bad: Tensor) -> str:
    """Describe the first True of ``bad`` (same shape as ``t``): value, time step, column."""
    where = bad.nonzero()[0].tolist()
    value = t[tuple(where)].item()
    column = f" (column {where[1]})" if t.dim() == 2 else ""
    return f"{value} at time step {where[0]}{column}"


def _series_list(name: str, value: Any, dtype: torch.dtype) -> tuple[list[Tensor], bool]:
    """A series or a list of series as tensors, and whether a single series was given."""
    if isinstance(value, (Tensor, np.ndarray)):
        return [_as_float_tensor(name, value, dtype)], True
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name} must hold at least one series, got an empty list")
        return [_as_float_tensor(f"{name}[{i}]", v, dtype) for i, v in enumerate(value)], False
    raise TypeError(
        f"{name} must be a tensor or array (one series) or a list of them, "
        f"got {_checks.describe(value)}"
    )


class SlidingWindows(Dataset[dict[str, Any]]):
    """A Dataset of ``(lookback, horizon)`` windows, ``stride`` steps apart, over many series.

    ``series`` is one series or a list of series of any lengths, each ``(L,)`` or ``(L, F)``
    (tensor, array or list; all with the same number of features). A window starting at ``s``
    takes ``series[s : s + lookback]`` as the past and ``series[s + lookback : s + lookback +
    horizon]`` as the future. A series of length ``L >= lookback + horizon`` gives
    ``(L - lookback - horizon) // stride + 1`` windows; with ``anchor='end'`` (the default) the
    last window ends at the last step, so the most recent data is always used and the
    ``(L - lookback - horizon) % stride`` steps that do not fit are dropped at the *start*;
    ``anchor='start'`` puts the first window at step 0 instead.

    Each item is a dict (``DataLoader``'s default collate stacks it):

    - ``past`` ``(lookback[, F])`` and ``future`` ``(horizon[, F])``: the target values;
    - ``past_covariates`` ``(lookback, C)``, when given: covariates observed with the target;
    - ``future_covariates`` ``(lookback + horizon, C)``, when given: covariates known in advance,
      over the whole window (the model may read them at past and future steps alike);
    - ``past_mask`` and ``future_mask`` (bool, shaped like ``past``/``future``) with
      ``allow_missing=True``: True where the value was observed;
    - ``series`` (the series' index) and ``start`` (the window's first step in that series).

    Covariates come as one array per series, ``(L,)`` or ``(L, C)`` with the series' length ``L``
    (1-D ones become ``(L, 1)``), and must be finite. Series shorter than ``lookback + horizon``
    are skipped: their indices are in :attr:`skipped` and a ``UserWarning`` names them. A NaN or
    infinity in a series raises ``ValueError`` naming the series and the step. With
    ``allow_missing=True`` NaN marks a missing observation instead (models such as GRU-D learn
    from the missingness pattern): it is returned as 0.0 with the mask False. Infinities are
    still refused: they come from overflow or a broken sensor, not from a missing reading.
    """

    def __init__(
        self,
        series: Any,
        lookback: int,
        horizon: int,
        stride: int = 1,
        *,
        past_covariates: Any = None,
        future_covariates: Any = None,
        anchor: str = "end",
        allow_missing: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.lookback = _checks.positive_int("lookback", lookback)
        self.horizon = _checks.positive_int("horizon", horizon)
        self.stride = _checks.positive_int("stride", stride)
        self.anchor = _checks.choice("anchor", anchor, ("end", "start"))
        self.allow_missing = _checks.boolean("allow_missing", allow_missing)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        self.series, single = _series_list("series", series, dtype)
        first = self.series[0]
        for i, s in enumerate(self.series):
            if s.dim() != first.dim() or s.shape[1:] != first.shape[1:]:
                raise ValueError(
                    f"series[{i}] has shape {tuple(s.shape)} but series[0] has "
                    f"{tuple(first.shape)}: all series must have the same features"
                )
        self.masks: list[Tensor] | None = [] if self.allow_missing else None
        for i, s in enumerate(self.series):
            name = "series" if single else f"series[{i}]"
            nan = torch.isnan(s)
            bad = torch.isinf(s) if self.allow_missing else nan | torch.isinf(s)
            if bad.any():
                hint = (
                    "" if self.allow_missing else "; pass allow_missing=True if NaN means missing"
                )
                raise ValueError(
                    f"{name} (series index {i}) must be finite, got {_first_bad(s, bad)}{hint}"
                )
            if self.masks is not None:
                self.masks.append(~nan)
                self.series[i] = torch.where(nan, torch.zeros((), dtype=dtype), s)
        self.past_covariates = self._covariates("past_covariates", past_covariates, single, dtype)
        self.future_covariates = self._covariates(
            "future_covariates", future_covariates, single, dtype
        )

        window = self.lookback + self.horizon
        counts = [
            0 if s.shape[0] < window else (s.shape[0] - window) // self.stride + 1
            for s in self.series
        ]
        if sum(counts) == 0:
            longest = max(s.shape[0] for s in self.series)
            raise ValueError(
                f"no series is long enough for one window of lookback + horizon = {window} "
                f"steps; the longest has {longest}"
            )
        self.skipped: list[int] = [i for i, n in enumerate(counts) if n == 0]
        if self.skipped:
            shown = ", ".join(str(i) for i in self.skipped[:20])
            more = f" and {len(self.skipped) - 20} more" if len(self.skipped) > 20 else ""
            warnings.warn(
                f"SlidingWindows skipped {len(self.skipped)} of {len(self.series)} series shorter "
                f"than lookback + horizon = {window} steps: indices {shown}{more} "
                "(listed in .skipped)",
                UserWarning,
                stacklevel=2,
            )
        self._counts = counts
        self._offsets = np.cumsum([0, *counts]).tolist()

    def _covariates(
        self, name: str, value: Any, single: bool, dtype: torch.dtype
    ) -> list[Tensor] | None:
        if value is None:
            return None
        covs, cov_single = _series_list(name, value, dtype)
        if cov_single != single or len(covs) != len(self.series):
            expected = "one array" if single else f"a list of {len(self.series)} arrays"
            got = "one array" if cov_single else f"a list of {len(covs)}"
            raise ValueError(f"{name} must be {expected}, one per series, got {got}")
        out = []
        for i, (c, s) in enumerate(zip(covs, self.series, strict=True)):
            label = name if single else f"{name}[{i}]"
            if c.shape[0] != s.shape[0]:
                raise ValueError(
                    f"{label} has {c.shape[0]} time steps but its series (index {i}) has "
                    f"{s.shape[0]}: covariates must be aligned step by step with the series"
                )
            c = c.unsqueeze(1) if c.dim() == 1 else c
            if c.shape[1] != (covs[0].shape[1] if covs[0].dim() == 2 else 1):
                raise ValueError(
                    f"{label} has {c.shape[1]} columns, unlike {name} of series 0: every series "
                    "needs the same covariates"
                )
            bad = ~torch.isfinite(c)
            if bad.any():
                raise ValueError(
                    f"{label} (series index {i}) must be finite, got {_first_bad(c, bad)}"
                )
            out.append(c)
        return out

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """``(series index, start step)`` of window ``index``."""
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise TypeError(f"index must be an int, got {_checks.describe(index)}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for {n} windows")
        index = int(index) % n
        series = bisect.bisect_right(self._offsets, index) - 1
        k = index - self._offsets[series]
        length = self.series[series].shape[0]
        window = self.lookback + self.horizon
        first = 0 if self.anchor == "start" else (length - window) % self.stride
        return series, first + k * self.stride

    def __getitem__(self, index: int) -> dict[str, Any]:
        series, start = self.locate(index)
        s = self.series[series]
        middle, end = start + self.lookback, start + self.lookback + self.horizon
        item: dict[str, Any] = {"past": s[start:middle], "future": s[middle:end]}
        if self.past_covariates is not None:
            item["past_covariates"] = self.past_covariates[series][start:middle]
        if self.future_covariates is not None:
            item["future_covariates"] = self.future_covariates[series][start:end]
        if self.masks is not None:
            item["past_mask"] = self.masks[series][start:middle]
            item["future_mask"] = self.masks[series][middle:end]
        item["series"] = series
        item["start"] = start
        return item

    def windows_per_series(self) -> list[int]:
        """How many windows each series gives (0 for the skipped ones)."""
        return list(self._counts)

    def __repr__(self) -> str:
        return (
            f"SlidingWindows({len(self.series)} series, lookback={self.lookback}, "
            f"horizon={self.horizon}, stride={self.stride}, anchor={self.anchor!r}, "
            f"{len(self)} windows, {len(self.skipped)} series skipped)"
        )
