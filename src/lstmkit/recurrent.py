"""Runs ONE cell over time: direction, lengths, state in and out, regularisation masks.

Everything that is about time and not about the math of a step lives here, once, for every
family and every backend: reversing each sequence within its own length, the ``(T, B, 1)``
validity mask built from ``lengths``, variational input and recurrent dropout masks, and the
choice of backend that runs the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .backends import Regularisation, fused, resolve
from .cells import CellMath, Params, State


def valid_mask(lengths: Tensor | None, T: int) -> Tensor | None:
    """``(T, B, 1)`` bool mask of the steps inside each sequence, or ``None`` if all are."""
    if lengths is None or bool((lengths == T).all()):
        return None
    steps = torch.arange(T, device=lengths.device)
    return (steps[:, None] < lengths[None, :]).unsqueeze(-1)


def reverse_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of ``x`` ``(T, B, *)`` within its own length; padding stays put."""
    if lengths is None:
        return x.flip(0)
    T = x.shape[0]
    t = torch.arange(T, device=x.device)[:, None]
    L = lengths[None, :]
    index = torch.where(t < L, L - 1 - t, t)
    return x.gather(0, index.view(T, x.shape[1], *([1] * (x.dim() - 2))).expand_as(x))


def variational_mask(like: Tensor, features: int, p: float) -> Tensor | None:
    """One dropout mask per sequence, ``(B, features)``, scaled by ``1/(1-p)``; ``None`` if p=0."""
    if p == 0.0:
        return None
    keep = torch.full((like.shape[1], features), 1.0 - p, dtype=like.dtype, device=like.device)
    return torch.bernoulli(keep).div_(1.0 - p)


@dataclass(frozen=True)
class Rates:
    """The regularisation rates of a layer (all zero: no regularisation)."""

    input_dropout: float = 0.0
    recurrent_dropout: float = 0.0
    weight_drop: float = 0.0
    zoneout: tuple[float, ...] = ()


def _keep_mask(size: tuple[int, int, int], rate: float, x: Tensor) -> Tensor:
    """Zoneout's keep mask, 1 with probability ``rate``: one draw per state unit per step, so
    its cost is that of the whole sequence. On the CPU the extension's counter-based generator
    draws it at well under 1 ns an element; ``torch.rand(...).lt_(rate)`` (the fallback, and
    the GPU path) took 3-8 ms per mask at T=128, B=64, H=128, most of zoneout's overhead over a
    plain LSTM in the benchmark."""
    mask = fused.bernoulli_mask(size, rate, x)
    if mask is None:
        mask = torch.rand(size, dtype=x.dtype, device=x.device).lt_(rate)
    return mask


def _drop_weight(w: Tensor, rate: float) -> Tensor:
    """DropConnect of a recurrent weight matrix: each entry zeroed with probability ``rate``,
    the rest scaled by ``1 / (1 - rate)`` (inverted dropout, as ``F.dropout``). The mask comes
    from the extension's generator where it can (``F.dropout`` on a 1024 x 256 ``weight_hh``
    took 2.7 ms a call on two threads, a tenth of a whole C2 training step of ``nn.LSTM``;
    the mask and product take 0.3 ms forward and backward)."""
    keep = 1.0 - rate
    mask = fused.bernoulli_mask(tuple(w.shape), keep, w)
    if mask is None:
        return F.dropout(w, rate, True)
    return w * mask.mul_(1.0 / keep)


def draw_regularisation(
    cell: CellMath, p: Params, x: Tensor, rates: Rates, training: bool
) -> tuple[Params, Tensor | None, Regularisation]:
    """Draw every random mask of one layer and direction for one call, in a fixed order
    (weight drop, input mask, recurrent mask, zoneout masks), so that every backend sees the same
    masks for the same seed. Returns the (possibly weight-dropped) parameters, the input mask
    ``(1, B, input)`` or ``None``, and the :class:`Regularisation` for the backend."""
    zoneout = rates.zoneout if any(rates.zoneout) else None
    if not training:
        return p, None, Regularisation(training=False, zoneout=zoneout)
    if rates.weight_drop:
        p = {**p, "weight_hh": _drop_weight(p["weight_hh"], rates.weight_drop)}
    in_mask = variational_mask(x, x.shape[-1], rates.input_dropout)
    h_mask = variational_mask(x, cell.output_size, rates.recurrent_dropout)
    masks = None
    if zoneout is not None:
        T, B = x.shape[0], x.shape[1]
        masks = tuple(
            _keep_mask((T, B, size), rate, x) if rate else None
            for rate, size in zip(zoneout, cell.state_sizes, strict=True)
        )
    reg = Regularisation(training=True, h_mask=h_mask, zoneout=zoneout, zoneout_masks=masks)
    return p, None if in_mask is None else in_mask.unsqueeze(0), reg


def run_direction(
    cell: CellMath,
    p: Params,
    x: Tensor,
    state: State,
    *,
    lengths: Tensor | None,
    valid: Tensor | None,
    reverse: bool,
    rates: Rates = Rates(),
    training: bool = False,
    backend: str = "auto",
    recompute: bool = False,
) -> tuple[Tensor, State]:
    """Run one layer in one direction over ``x`` ``(T, B, input)``.

    With ``reverse=True`` each sequence is processed from its last valid step to its first and the
    outputs are put back in input order, as ONNX ``direction=reverse`` and the backward half of a
    bidirectional ``torch.nn`` layer do. Regularisation applies only with ``training=True``, except
    zoneout, whose expectation is used at evaluation.
    """
    p, input_mask, reg = draw_regularisation(cell, p, x, rates, training)
    if input_mask is not None:
        x = x * input_mask
    if reverse:
        x = reverse_padded(x, lengths)
    scan = resolve(backend, recompute=recompute)
    y, final = scan(cell, p, x, state, valid, reg)
    if reverse:
        y = reverse_padded(y, lengths)
    return y, final
