"""Evaluation metrics for the time-series tasks: forecast accuracy (M4 conventions, quantile and
distribution scores) and the Numenta Anomaly Benchmark score.

Metrics are plain functions on NumPy arrays or tensors that return Python floats, so the same
code scores a model during validation, in a notebook and in a benchmark table.
"""

from . import forecast, nab
from .forecast import (
    crps_gaussian,
    crps_quantiles,
    crps_samples,
    mae,
    mase,
    naive,
    naive2,
    owa,
    pinball_loss,
    rmse,
    seasonal_naive,
    smape,
)

__all__ = [
    "crps_gaussian",
    "crps_quantiles",
    "crps_samples",
    "forecast",
    "mae",
    "mase",
    "nab",
    "naive",
    "naive2",
    "owa",
    "pinball_loss",
    "rmse",
    "seasonal_naive",
    "smape",
]
