"""The fused backend: one C++ kernel per family with a hand-written backward through time.

Forward, per layer and direction: one GEMM projects the input of every time step, then each step
is one recurrent GEMM plus one pass over memory that does all the pointwise work (gates,
peepholes, CIFG, cell clipping, zoneout, length masking), in parallel over batch rows and hidden
units. Backward walks time in reverse with hand-written gate gradients and finishes with a few
large GEMMs for the weight and input gradients. With ``layer_norm=True`` the normalisations
(ATen's layer-norm kernels, forward and backward) sit between the GEMMs and the pointwise passes.
The formulas are in the comments of ``csrc/*.cpp``.

Implemented: LSTM (peephole, coupled_gates, cell_clip, proj_size, layer_norm, no bias), GRU
(reset_after True and False, layer_norm, no bias), RNN (tanh, relu, layer_norm, no bias); every
regularisation of :mod:`lstmkit.recurrent` (recurrent dropout, zoneout in training and at
evaluation; weight drop and input dropout arrive already applied); lengths, by masking: a step
past a sequence's length still costs its share of the GEMM. float32 and float64 on the CPU.

The kernels live in the extension module ``lstmkit._C``, compiled when lstmkit is installed
(``setup.py``); it is never compiled at import time. :func:`available` says whether it could be
loaded, :func:`supports` whether a configuration is implemented; ``backend='auto'`` uses this
backend only where both hold (see :func:`lstmkit.backends.resolve`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..cells import CellMath, GRUMath, LSTMMath, Params, RNNMath, State
from . import reference
from ._api import Regularisation

BUILD_HINT = (
    "it needs the C++ extension lstmkit._C, which is compiled when lstmkit is installed: in the "
    "lstmkit checkout run `make` (or `pip install torch==2.13.0 'setuptools>=68' wheel` then "
    "`pip install --no-build-isolation -e .`) with a C++ compiler (g++) available"
)

DTYPES = (torch.float32, torch.float64)


def _load() -> tuple[ModuleType | None, ImportError | None]:
    try:
        return importlib.import_module("lstmkit._C"), None
    except ImportError as err:
        return None, err


_C, _IMPORT_ERROR = _load()


def available() -> bool:
    """Whether the compiled extension ``lstmkit._C`` could be imported."""
    return _C is not None


def _require() -> Any:
    if _C is None:
        raise ImportError(
            f"backend='fused' is not available: {BUILD_HINT} (importing it failed with: "
            f"{_IMPORT_ERROR})"
        )
    return _C


def unsupported(cell: CellMath, reg: Regularisation, x: Tensor) -> str | None:
    """Why this backend cannot run ``cell`` on ``x`` (a short phrase), or ``None`` if it can."""
    if type(cell) not in (LSTMMath, GRUMath, RNNMath):
        return f"the cell {type(cell).__name__}"
    if x.device.type != "cpu":
        return f"tensors on {x.device.type}"
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype}"
    return None


def supports(cell: CellMath, reg: Regularisation, x: Tensor) -> bool:
    """Whether the fused kernels implement this configuration (whether or not they are built)."""
    return unsupported(cell, reg, x) is None


def params_match(p: Params, state: State, x: Tensor) -> bool:
    """Whether every parameter and state tensor has the dtype and device of ``x`` (the kernels
    do not convert; the reference loop reports mismatches in torch's words)."""
    return all(t.dtype == x.dtype and t.device == x.device for t in (*p.values(), *state))


# ----------------------------------------------------------------------------- regularisation
@dataclass(frozen=True)
class _Carry:
    """Zoneout of each state component as the kernels take it: a per-step keep mask where one
    was drawn (training), else a constant keep value (the rate at evaluation, 0 without zoneout);
    and the ``(T, B)`` validity mask or ``None``."""

    rates: tuple[float, ...]
    masks: tuple[Tensor | None, ...]
    valid: Tensor | None


def _carry(reg: Regularisation, valid: Tensor | None, n_state: int, T: int, B: int) -> _Carry:
    rates = reg.zoneout if reg.zoneout is not None else (0.0,) * n_state
    masks = reg.zoneout_masks if reg.zoneout_masks is not None else (None,) * n_state
    valid2 = None if valid is None else valid.reshape(T, B).to(torch.bool).contiguous()
    return _Carry(tuple(float(r) for r in rates), tuple(masks), valid2)


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ----------------------------------------------------------------------------- autograd
def _lstm_forward(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    params: tuple[Tensor | None, ...],
    masks: tuple[Tensor | None, ...],
    opts: tuple[float, float, float, bool],
    save: bool,
) -> list[Tensor]:
    """``lstmkit._C.lstm_forward`` with the arguments grouped: params are (weight_ih, weight_hh,
    bias_ih, bias_hh, weight_peephole, weight_hr, ln_ih, ln_hh, ln_cell weight and bias), masks
    (h_mask, valid, zoneout h, zoneout c), opts (rate_h, rate_c, cell_clip or 0, coupled)."""
    w_ih, w_hh, b_ih, b_hh, w_peep, w_hr, ln_ih, ln_hh, ln_c_w, ln_c_b = params
    out: list[Tensor] = _C.lstm_forward(  # type: ignore[union-attr]
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, w_hr, *masks, *opts,
        ln_ih, ln_hh, ln_c_w, ln_c_b, save,
    )  # fmt: skip
    return out


class _LSTMScan(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        opts: tuple[float, float, float, bool],
        x: Tensor,
        h0: Tensor,
        c0: Tensor,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        w_peep: Tensor | None,
        w_hr: Tensor | None,
        ln_ih: Tensor | None,
        ln_hh: Tensor | None,
        ln_c_w: Tensor | None,
        ln_c_b: Tensor | None,
        h_mask: Tensor | None,
        valid: Tensor | None,
        zo_h: Tensor | None,
        zo_c: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        params = (w_ih, w_hh, b_ih, b_hh, w_peep, w_hr, ln_ih, ln_hh, ln_c_w, ln_c_b)
        masks = (h_mask, valid, zo_h, zo_c)
        y, h_n, c_n, *saved = _lstm_forward(x, h0, c0, params, masks, opts, save=True)
        ctx.opts = opts
        ctx.has_bias = b_ih is not None
        ctx.save_for_backward(
            x, w_ih, w_hh, w_peep, w_hr, h_mask, valid, zo_h, zo_c, ln_ih, ln_hh, ln_c_w, ln_c_b,
            *saved,
        )  # fmt: skip
        return y, h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gy: Tensor, gh: Tensor, gc: Tensor) -> tuple[Tensor | None, ...]:
        x, w_ih, w_hh, w_peep, w_hr, h_mask, valid, zo_h, zo_c, *rest = ctx.saved_tensors
        ln, saved = rest[:4], rest[4:]
        rate_h, rate_c, clip, coupled = ctx.opts
        grads = _C.lstm_backward(  # type: ignore[union-attr]
            gy, gh, gc, x, w_ih, w_hh, ctx.has_bias, w_peep, w_hr, h_mask, valid, zo_h, zo_c,
            rate_h, rate_c, clip, coupled, *ln, *saved, ctx.needs_input_grad[1],
        )  # fmt: skip
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_peep, dw_hr, *d_ln = grads
        return (None, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_peep, dw_hr, *d_ln, *(None,) * 4)


class _GRUScan(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        opts: tuple[float, bool],
        x: Tensor,
        h0: Tensor,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        ln_ih: Tensor | None,
        ln_hh: Tensor | None,
        h_mask: Tensor | None,
        valid: Tensor | None,
        zo_h: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        rate_h, reset_after = opts
        y, h_n, *saved = _C.gru_forward(  # type: ignore[union-attr]
            x,
            h0,
            w_ih,
            w_hh,
            b_ih,
            b_hh,
            h_mask,
            valid,
            zo_h,
            rate_h,
            reset_after,
            ln_ih,
            ln_hh,
            True,
        )
        ctx.opts = opts
        ctx.has_bias = b_ih is not None
        ctx.save_for_backward(x, w_ih, w_hh, h_mask, valid, zo_h, ln_ih, ln_hh, *saved)
        return y, h_n

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gy: Tensor, gh: Tensor) -> tuple[Tensor | None, ...]:
        x, w_ih, w_hh, h_mask, valid, zo_h, ln_ih, ln_hh, *saved = ctx.saved_tensors
        rate_h, reset_after = ctx.opts
        grads = _C.gru_backward(  # type: ignore[union-attr]
            gy, gh, x, w_ih, w_hh, ctx.has_bias, h_mask, valid, zo_h, rate_h, reset_after,
            ln_ih, ln_hh, *saved, ctx.needs_input_grad[1],
        )  # fmt: skip
        dx, dh0, dw_ih, dw_hh, db_ih, db_hh, d_ln_ih, d_ln_hh = grads
        return (None, dx, dh0, dw_ih, dw_hh, db_ih, db_hh, d_ln_ih, d_ln_hh, None, None, None)


class _RNNScan(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        opts: tuple[float, bool],
        x: Tensor,
        h0: Tensor,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        ln_ih: Tensor | None,
        ln_hh: Tensor | None,
        h_mask: Tensor | None,
        valid: Tensor | None,
        zo_h: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        rate_h, relu = opts
        y, h_n, *saved = _C.rnn_forward(  # type: ignore[union-attr]
            x, h0, w_ih, w_hh, b_ih, b_hh, h_mask, valid, zo_h, rate_h, relu, ln_ih, ln_hh, True
        )
        ctx.opts = opts
        ctx.has_bias = b_ih is not None
        ctx.save_for_backward(x, w_ih, w_hh, h_mask, valid, zo_h, ln_ih, ln_hh, *saved)
        return y, h_n

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gy: Tensor, gh: Tensor) -> tuple[Tensor | None, ...]:
        x, w_ih, w_hh, h_mask, valid, zo_h, ln_ih, ln_hh, *saved = ctx.saved_tensors
        rate_h, relu = ctx.opts
        grads = _C.rnn_backward(  # type: ignore[union-attr]
            gy, gh, x, w_ih, w_hh, ctx.has_bias, h_mask, valid, zo_h, rate_h, relu, ln_ih, ln_hh,
            *saved, ctx.needs_input_grad[1],
        )  # fmt: skip
        dx, dh0, dw_ih, dw_hh, db_ih, db_hh, d_ln_ih, d_ln_hh = grads
        return (None, dx, dh0, dw_ih, dw_hh, db_ih, db_hh, d_ln_ih, d_ln_hh, None, None, None)


# ----------------------------------------------------------------------------- scan
def scan(
    cell: CellMath,
    p: Params,
    x: Tensor,
    state: State,
    valid: Tensor | None,
    reg: Regularisation,
) -> tuple[Tensor, State]:
    """Run ``cell`` left to right over ``x`` ``(T, B, input)``: the contract and the results of
    :func:`lstmkit.backends.reference.scan`, computed by the fused kernels.

    Raises ``ImportError`` if the extension is not built and ``ValueError`` for a configuration
    it does not implement (see :func:`supports`).
    """
    _require()
    why = unsupported(cell, reg, x)
    if why is not None:
        raise ValueError(
            f"backend='fused' does not support {why} yet; use backend='auto' (which falls back "
            "to the reference loop for it) or backend='reference'"
        )
    T, B = x.shape[0], x.shape[1]
    if T == 0 or B == 0:  # nothing to fuse
        return reference.scan(cell, p, x, state, valid, reg)
    carry = _carry(reg, valid, len(state), T, B)
    w_ih, w_hh = p["weight_ih"], p["weight_hh"]
    b_ih, b_hh = p.get("bias_ih"), p.get("bias_hh")
    grad = _needs_grad(x, *state, *p.values())
    ln = (p.get("ln_ih_weight"), p.get("ln_hh_weight"))
    if isinstance(cell, LSTMMath):
        h0, c0 = state
        opts = (carry.rates[0], carry.rates[1], cell.cell_clip or 0.0, cell.coupled_gates)
        params = (
            w_ih, w_hh, b_ih, b_hh, p.get("weight_peephole"), p.get("weight_hr"), *ln,
            p.get("ln_cell_weight"), p.get("ln_cell_bias"),
        )  # fmt: skip
        lstm_masks = (reg.h_mask, carry.valid, carry.masks[0], carry.masks[1])
        if grad:
            y, h_n, c_n = _LSTMScan.apply(opts, x, h0, c0, *params, *lstm_masks)
        else:
            y, h_n, c_n = _lstm_forward(x, h0, c0, params, lstm_masks, opts, save=False)
        return y, (h_n, c_n)
    (h0,) = state
    masks = (reg.h_mask, carry.valid, carry.masks[0])
    fn: type[torch.autograd.Function]
    if isinstance(cell, GRUMath):
        fn, forward, flag = _GRUScan, _C.gru_forward, cell.reset_after  # type: ignore[union-attr]
    else:
        assert isinstance(cell, RNNMath)
        fn, forward, flag = _RNNScan, _C.rnn_forward, cell.nonlinearity == "relu"  # type: ignore[union-attr]
    if grad:
        y, h_n = fn.apply((carry.rates[0], flag), x, h0, w_ih, w_hh, b_ih, b_hh, *ln, *masks)
    else:
        y, h_n = forward(x, h0, w_ih, w_hh, b_ih, b_hh, *masks, carry.rates[0], flag, *ln, False)
    return y, (h_n,)
