"""The forecaster's ``scaling='sqrt'``: square root, then mean/std per window (counts with zeros,
such as sunspots, that ``'log'`` cannot take)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from lstmkit.data.series_io import read_long, split_last
from lstmkit.tasks.forecaster import SCALINGS, Forecaster, from_scaled, scale_window, to_scaled

FAST: dict[str, Any] = {"max_epochs": 2, "progress": False, "tensorboard": False, "hidden_size": 6}


def _counts(length: int = 60, shift: float = 0.0) -> pd.DataFrame:
    t = np.arange(length)
    y = np.maximum(0.0, 40 * np.sin(2 * np.pi * t / 11)) + shift  # zeros half of each cycle
    return pd.DataFrame({"unique_id": "a", "ds": 1700 + t, "y": y})


def test_sqrt_is_a_scaling_choice() -> None:
    assert "sqrt" in SCALINGS
    assert Forecaster(scaling="sqrt").scaling == "sqrt"


def test_sqrt_round_trip_with_zeros_and_missing_values() -> None:
    past = torch.tensor([[0.0, 1.0, 4.0, 9.0, 0.0], [16.0, 25.0, 0.0, 100.0, 49.0]])
    mask = torch.tensor([[True, True, False, True, True], [True] * 5])
    loc, scale = scale_window(past, mask, "sqrt")
    z = to_scaled(past, loc, scale, "sqrt")
    assert torch.isfinite(z).all()
    torch.testing.assert_close(from_scaled(z, loc, scale, "sqrt"), past)
    # (B, H, K) quantile tensors map through the same inverse
    zq = z.unsqueeze(-1).expand(-1, -1, 3)
    torch.testing.assert_close(
        from_scaled(zq, loc, scale, "sqrt"), past.unsqueeze(-1).expand_as(zq)
    )


def test_sqrt_scale_by_hand() -> None:
    past = torch.tensor([[0.0, 1.0, 100.0, 4.0]])
    mask = torch.tensor([[True, True, False, True]])  # the 100 is missing: ignored
    loc, scale = scale_window(past, mask, "sqrt")
    roots = np.array([0.0, 1.0, 2.0])
    assert loc.item() == pytest.approx(roots.mean())
    assert scale.item() == pytest.approx(roots.std())
    z = to_scaled(torch.tensor([[9.0]]), loc, scale, "sqrt")
    assert z.item() == pytest.approx((3.0 - roots.mean()) / roots.std())


def test_sqrt_inverse_maps_below_zero_to_zero_and_is_monotone() -> None:
    loc, scale = torch.tensor([1.0]), torch.tensor([0.5])
    z = torch.tensor([[-5.0, -2.0, -1.0, 0.0, 1.0, 2.0]])
    y = from_scaled(z, loc, scale, "sqrt")
    np.testing.assert_allclose(y.numpy()[0], [0.0, 0.0, 0.25, 1.0, 2.25, 4.0], rtol=1e-6)
    assert (torch.diff(y, dim=1) >= 0).all()


def test_sqrt_forecaster_fits_counts_with_zeros() -> None:
    data = read_long(_counts())
    history, _ = split_last(data, 5)
    for strategy in ("mimo", "recursive"):
        model = Forecaster(horizon=5, lookback=22, strategy=strategy, scaling="sqrt", **FAST)
        point, _ = model.fit(history).predict_arrays(history)
        assert point.shape == (1, 5) and np.isfinite(point).all() and (point >= 0).all()
    model = Forecaster(horizon=5, lookback=22, scaling="sqrt", likelihood="quantile", **FAST)
    _, q = model.fit(history).predict_arrays(history)
    assert (q >= 0).all() and (np.diff(q, axis=-1) >= -1e-6).all()  # do not cross


def test_sqrt_refuses_negative_values() -> None:
    negative = read_long(_counts(shift=-1.0))
    with pytest.raises(ValueError, match=r"series 'a' has negative values: scaling='sqrt' needs"):
        Forecaster(horizon=5, lookback=22, scaling="sqrt", **FAST).fit(negative)
    model = Forecaster(horizon=5, lookback=22, scaling="sqrt", **FAST).fit(read_long(_counts()))
    with pytest.raises(ValueError, match=r"^data: series 'a' has negative values"):
        model.predict_arrays(negative)


def test_log_error_points_to_sqrt_for_zeros() -> None:
    with pytest.raises(
        ValueError, match=r"scaling='log' needs positive values; use scaling='sqrt'"
    ):
        Forecaster(horizon=5, lookback=22, scaling="log", **FAST).fit(read_long(_counts()))
