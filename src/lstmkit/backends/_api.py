"""What every backend receives besides the cell, its parameters and the data."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class Regularisation:
    """The regularisation of one layer and direction for one call, with every random mask
    already drawn (by :func:`lstmkit.recurrent.run_direction`), so that all backends apply the
    same masks for the same seed.

    ``h_mask``: the variational recurrent-dropout mask ``(B, out)``, scaled by ``1/(1-p)``, that
    multiplies ``h_{t-1}`` where it enters the recurrent product, or ``None``.
    ``zoneout``: one rate per state component (``(h,)`` or ``(h, c)``), or ``None`` for none.
    ``zoneout_masks``: in training, one ``(T, B, size)`` mask per state component, 1 where the
    unit keeps its previous value at that step of the scan (``None`` for a zero rate); at
    evaluation ``None``, and the expectation ``rate * old + (1 - rate) * new`` is used.
    """

    training: bool = False
    h_mask: Tensor | None = None
    zoneout: tuple[float, ...] | None = None
    zoneout_masks: tuple[Tensor | None, ...] | None = None
