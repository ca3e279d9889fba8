"""What every backend receives besides the cell, its parameters and the data."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class Regularisation:
    """Per-call regularisation of one layer and direction.

    ``h_mask`` is the variational recurrent-dropout mask ``(B, out)`` (already scaled by
    ``1/(1-p)``) that multiplies ``h_{t-1}`` where it enters the recurrent product, or ``None``.
    ``zoneout`` holds one rate per state component (``(h,)`` or ``(h, c)``), or ``None``.
    """

    training: bool = False
    h_mask: Tensor | None = None
    zoneout: tuple[float, ...] | None = None
