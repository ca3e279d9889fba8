"""The fused backend: one C++ kernel per family with a hand-written backward through time.

Forward, per layer and direction: the input of every step is projected by one product (in
chunks of steps without autograd), then each step is one recurrent product followed by one pass
that does all the pointwise work (gates, peepholes, CIFG, cell clipping, layer norm, zoneout)
on data still in cache. Backward walks time in reverse with hand-written gate gradients and
finishes with a few large products for the weight and input gradients. The products are the
extension's own packed, register-blocked kernels (weights packed once per call); the math is
in the comments of ``csrc/*.cpp``, the engine in ``csrc/gemm.h``.

Implemented: LSTM (peephole, coupled_gates, cell_clip, proj_size, layer_norm, no bias), GRU
(reset_after True and False, layer_norm, no bias), RNN (tanh, relu, layer_norm, no bias); every
regularisation of :mod:`lstmkit.recurrent` (recurrent dropout, zoneout in training and at
evaluation; weight drop and input dropout arrive already applied); float32, float64 and
bfloat16 on the CPU.

Lengths: the batch is sorted by length once per call (descending, stable) and the rows of each
step packed as a ``PackedSequence`` packs them, so that step t's products and pointwise work
cover only the ``batch_sizes[t]`` sequences still running; the results are put back in the
caller's order. The same numbers as masking every step (what the reference loop does). A
``valid`` mask that is not a prefix of every sequence (never built by lstmkit's layers) goes to
the reference loop.

Threads: with a batch of at least 8 rows per intra-op thread each thread runs its own share
of the sequences (rows ``b = k mod threads``) with no synchronisation; smaller batches split
each step's units over the threads, which meet once or twice per step. Results do not depend
on the thread count except through ATen's reductions (bias and layer-norm gain gradients);
the same input and thread count give bitwise the same output.

bfloat16: inputs, weights and outputs in bfloat16; the products multiply bfloat16 and
accumulate in float32 (AVX512-BF16's vdpbf16ps where the CPU has it, else float32 products),
and everything between them -- the gate pre-activations, the cell state, the pointwise math,
the gradients flowing back through time -- is float32, rounded to bfloat16 only where a
product reads it (the next step's h, the gate gradients) and at the outputs. This is closer to
float32 than the reference loop, which rounds after every operation.

``recompute=True`` (a layer option, bound by :func:`lstmkit.backends.resolve`): forward saves
only the states of every step (h, and c for the LSTM); backward first replays the steps from
them -- independent of each other, so in parallel over time -- with the same code, so the
gradients are bitwise those of a saving forward, for the activation memory of the gates
(4 H per row for the LSTM) and the layer-norm statistics.

The kernels live in the extension module ``lstmkit._C``, compiled when lstmkit is installed
(``setup.py``); it is never compiled at import time. :func:`available` says whether it could be
loaded, :func:`supports` whether a configuration is implemented; ``backend='auto'`` uses this
backend only where both hold (see :func:`lstmkit.backends.resolve`).
"""

from __future__ import annotations

import importlib
import weakref
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

DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def _load() -> tuple[ModuleType | None, ImportError | None]:
    try:
        return importlib.import_module("lstmkit._C"), None
    except ImportError as err:
        return None, err


_C, _IMPORT_ERROR = _load()


def available() -> bool:
    """Whether the compiled extension ``lstmkit._C`` could be imported."""
    return _C is not None


def buffer_cache() -> dict[str, int]:
    """The kernels' cache of large buffers: ``idle_bytes`` and ``idle_buffers`` (freed buffers
    kept for reuse, their pages still mapped, so the next call of the same shape faults in no
    memory) and ``cap_bytes`` (the most it keeps idle: ``LSTMKIT_BUFFER_CACHE_MB``, default
    1024, read once per process; 0 turns it off). Zeros without the extension."""
    if _C is None:
        return {"idle_bytes": 0, "idle_buffers": 0, "cap_bytes": 0}
    idle, count, cap = _C.buffer_cache_info()
    return {"idle_bytes": idle, "idle_buffers": count, "cap_bytes": cap}


def set_buffer_cache(enabled: bool) -> bool:
    """Turn the cache of large buffers on or off for the buffers asked for from now on (off:
    plain ``torch.empty``, which torch's memory profiler sees; the benchmarks measure peak
    memory that way); returns the previous setting (False without the extension)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    return False if _C is None else bool(_C.set_buffer_cache(enabled))


_SPLITS = ("auto", "rows", "units")


def set_scan_split(mode: str, backward: str | None = None) -> str:
    """How the scans split their work over threads from now on: ``'auto'`` (the rule: by
    sequences where each thread has 8 rows or more, unless the recurrent weights overflow a
    core's L2 while a thread's share fits), ``'rows'`` (each thread runs its own sequences) or
    ``'units'`` (each step's units are split, the threads meet every step). For diagnostics and
    benchmarks; the results are bitwise the same either way. ``backward`` sets the backward
    scans apart (default: as ``mode``). Returns the previous forward mode (``'auto'`` without
    the extension, where it does nothing)."""
    backward = mode if backward is None else backward
    for name, value in (("mode", mode), ("backward", backward)):
        if value not in _SPLITS:
            raise ValueError(
                f"{name} must be one of {', '.join(map(repr, _SPLITS))}, got {value!r}"
            )
    if _C is None:
        return "auto"
    previous = int(_C.set_scan_split(_SPLITS.index(mode) | _SPLITS.index(backward) << 2))
    return _SPLITS[previous & 3]


def empty_cache() -> int:
    """Free the idle buffers of the kernels' cache (as ``torch.cuda.empty_cache`` does for
    CUDA's); returns the bytes freed. Buffers in use are untouched."""
    return 0 if _C is None else int(_C.release_buffer_cache())


_MASK_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.bool)


def bernoulli_mask(size: tuple[int, ...], p: float, like: Tensor) -> Tensor | None:
    """A tensor of ``size`` with ``like``'s dtype holding independent Bernoulli(``p``) draws as
    1 and 0, from the extension's counter-based generator (``bernoulli_fill``) seeded by one draw
    from torch's default generator, so ``torch.manual_seed`` makes it reproducible, for any
    thread count. About 10 times faster than ``torch.rand(size).lt_(p)``, which matters for the
    per-step zoneout masks. ``None`` where the extension is missing or ``like`` is not a CPU
    tensor of a supported dtype: the caller then draws with torch."""
    if _C is None or like.device.type != "cpu" or like.dtype not in _MASK_DTYPES:
        return None
    seed = int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64))
    out = torch.empty(size, dtype=like.dtype)
    _C.bernoulli_fill(out, float(p), seed)
    return out


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


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ----------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class _Layout:
    """Variable lengths as the kernels take them: the batch sorted by length (descending), the
    rows of every step packed (``batch_sizes[t]`` rows at step t, as a PackedSequence), and the
    indices that gather the packed rows from ``(T * B)`` and put the batch back in order."""

    batch_sizes: Tensor  # (T,) int64
    order: Tensor  # (B,) sorted position -> batch index
    inverse: Tensor  # (B,) batch index -> sorted position
    rows: Tensor  # (N,) packed row -> t * B + order[b]


# The last layout computed, keyed on the mask tensor itself (a weak reference, so a new tensor
# that happens to reuse a freed one's id never hits) and its version counter. A stacked or
# bidirectional layer passes the same mask to every layer and direction, so the sort and the
# row indices are computed once per forward call, not once per layer and direction.
_LAST_LAYOUT: tuple[weakref.ref[Tensor], int, int, int, _Layout | bool] | None = None


def _layout(valid: Tensor | None, T: int, B: int) -> _Layout | bool | None:
    """``None`` without lengths; ``False`` where ``valid`` is not a prefix mask per sequence
    (not what lstmkit's layers build; the kernels need lengths)."""
    global _LAST_LAYOUT
    if valid is None:
        return None
    cached = _LAST_LAYOUT
    if cached is not None:
        ref, version, t, b, lay = cached
        if ref() is valid and version == valid._version and (t, b) == (T, B):
            return lay
    lay = _compute_layout(valid, T, B)
    _LAST_LAYOUT = (weakref.ref(valid), valid._version, T, B, lay)
    return lay


def _compute_layout(valid: Tensor, T: int, B: int) -> _Layout | bool:
    v = valid.reshape(T, B).to(torch.bool)
    lengths = v.sum(0)
    steps = torch.arange(T, device=v.device)
    if not torch.equal(v, steps[:, None] < lengths[None, :]):
        return False
    order = torch.argsort(lengths, descending=True, stable=True)
    active = steps[:, None] < lengths.index_select(0, order)[None, :]  # (T, B), sorted order
    t_idx, b_idx = active.nonzero(as_tuple=True)
    rows = t_idx * B + order.index_select(0, b_idx)
    return _Layout(active.sum(1), order, torch.argsort(order), rows)


def _pack(t: Tensor | None, lay: _Layout | None) -> Tensor | None:
    """``(T, B, *)`` -> the packed rows ``(N, *)`` in sorted order (autograd-aware)."""
    if t is None or lay is None:
        return t
    return t.reshape(-1, *t.shape[2:]).index_select(0, lay.rows)


def _sort(t: Tensor | None, lay: _Layout | None) -> Tensor | None:
    """``(B, *)`` -> sorted order."""
    if t is None or lay is None:
        return t
    return t.index_select(0, lay.order)


def _unpack(y: Tensor, lay: _Layout, T: int, B: int) -> Tensor:
    """The packed rows ``(N, F)`` back to ``(T, B, F)`` with zeros past each length."""
    out = y.new_zeros(T * B, y.shape[-1]).index_copy(0, lay.rows, y)
    return out.view(T, B, y.shape[-1])


# ----------------------------------------------------------------------------- autograd
_INFERENCE, _SAVE, _STATES = 0, 1, 2


@dataclass(frozen=True)
class _Meta:
    """What a scan passes to the kernels besides tensors."""

    family: str  # "lstm", "gru" or "rnn"
    n_state: int
    n_params: int
    batch_sizes: Tensor | None
    opts: tuple[float | bool, ...]  # the family's options: rate_h (and rate_c) first
    mode: int


def _forward(meta: _Meta, x: Tensor, states: list, params: list, masks: list, mode: int) -> list:
    fn = getattr(_C, f"{meta.family}_forward")
    out: list[Tensor] = fn(x, *states, params, masks, meta.batch_sizes, *meta.opts, mode)
    return out


class _Scan(torch.autograd.Function):
    """One scan of a family: inputs (x, *states, *params, *masks), outputs (y, *final states)."""

    @staticmethod
    def forward(ctx: Any, meta: _Meta, *args: Tensor | None) -> tuple[Tensor, ...]:  # type: ignore[override]
        k, n = meta.n_state, meta.n_params
        x, states = args[0], list(args[1 : 1 + k])
        params, masks = list(args[1 + k : 1 + k + n]), list(args[1 + k + n :])
        out = _forward(meta, x, states, params, masks, meta.mode)  # type: ignore[arg-type]
        y, finals, saved = out[0], out[1 : 1 + k], out[1 + k :]
        if meta.family == "lstm":  # backward reads c' of the rows whose sequences ended
            saved = [*saved, finals[-1]]
        ctx.meta = meta
        ctx.n_saved = len(saved)
        ctx.save_for_backward(*args, *saved)
        return (y, *(f.to(s.dtype) for f, s in zip(finals, states, strict=True)))  # type: ignore[union-attr]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gy: Tensor, *g_states: Tensor) -> tuple[Tensor | None, ...]:
        meta: _Meta = ctx.meta
        k, n = meta.n_state, meta.n_params
        tensors = ctx.saved_tensors
        args, saved = tensors[: len(tensors) - ctx.n_saved], tensors[len(tensors) - ctx.n_saved :]
        x, states = args[0], list(args[1 : 1 + k])
        params, masks = list(args[1 + k : 1 + k + n]), list(args[1 + k + n :])
        fn = getattr(_C, f"{meta.family}_backward")
        grads = fn(
            gy, *g_states, x, *states, params, masks, meta.batch_sizes, *meta.opts, list(saved),
            ctx.needs_input_grad[1],
        )  # fmt: skip
        inputs = (x, *states, *params)
        grads = [
            g.to(i.dtype) if g is not None and i is not None and g.dtype != i.dtype else g
            for g, i in zip(grads, inputs, strict=True)
        ]
        return (None, *grads, *(None,) * len(masks))


# ----------------------------------------------------------------------------- scan
def _family(cell: CellMath, p: Params, rates: tuple[float, ...]) -> tuple[str, list, tuple]:
    """The kernel family, its parameters and its options (rates first)."""
    ln = [p.get("ln_ih_weight"), p.get("ln_hh_weight")]
    base = [p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh")]
    if isinstance(cell, LSTMMath):
        params = [
            *base[:4], p.get("weight_peephole"), p.get("weight_hr"), *ln,
            p.get("ln_cell_weight"), p.get("ln_cell_bias"),
        ]  # fmt: skip
        clip = float(cell.cell_clip or 0.0)
        return "lstm", params, (float(rates[0]), float(rates[1]), clip, cell.coupled_gates)
    if isinstance(cell, GRUMath):
        return "gru", [*base, *ln], (float(rates[0]), cell.reset_after)
    assert isinstance(cell, RNNMath)
    return "rnn", [*base, *ln], (float(rates[0]), cell.nonlinearity == "relu")


def scan(
    cell: CellMath,
    p: Params,
    x: Tensor,
    state: State,
    valid: Tensor | None,
    reg: Regularisation,
    *,
    recompute: bool = False,
) -> tuple[Tensor, State]:
    """Run ``cell`` left to right over ``x`` ``(T, B, input)``: the contract and the results of
    :func:`lstmkit.backends.reference.scan`, computed by the fused kernels. With ``recompute``
    the backward recomputes the gate activations from the saved states (see the module).

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
    lay = _layout(valid, T, B) if T and B else False
    if lay is False:  # nothing to fuse, or a mask that is not lengths
        return reference.scan(cell, p, x, state, valid, reg)
    assert lay is None or isinstance(lay, _Layout)
    n_state = len(state)
    rates = reg.zoneout if reg.zoneout is not None else (0.0,) * n_state
    zo = reg.zoneout_masks if reg.zoneout_masks is not None else (None,) * n_state
    family, params, opts = _family(cell, p, rates)
    states = [_sort(s, lay) for s in state]
    masks = [_sort(reg.h_mask, lay), *(_pack(m, lay) for m in zo)]
    xs = x if lay is None else x.reshape(T * B, -1).index_select(0, lay.rows)
    batch_sizes = None if lay is None else lay.batch_sizes
    if _needs_grad(x, *state, *p.values()):
        mode = _STATES if recompute else _SAVE
        meta = _Meta(family, n_state, len(params), batch_sizes, opts, mode)
        y, *finals = _Scan.apply(meta, xs, *states, *params, *masks)
    else:
        meta = _Meta(family, n_state, len(params), batch_sizes, opts, _INFERENCE)
        y, *finals = _forward(meta, xs, states, params, masks, _INFERENCE)
        finals = [f.to(x.dtype) for f in finals]
    if lay is None:
        return y.view(T, B, -1), tuple(finals)
    return _unpack(y, lay, T, B), tuple(f.index_select(0, lay.inverse) for f in finals)
