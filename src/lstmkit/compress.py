"""Compression of recurrent layers: magnitude pruning and int8 weight quantisation.

>>> import torch, lstmkit
>>> from lstmkit import compress
>>> lstm = lstmkit.LSTM(16, 32, num_layers=2)
>>> _ = compress.prune(lstm, 0.5)                 # half of every weight matrix is now zero
>>> round(compress.sparsity(lstm)["overall"], 2)
0.5
>>> q = compress.quantize(lstm.eval())            # an int8 copy for inference
>>> out, (h, c) = q(torch.randn(7, 3, 16))
>>> compress.weight_bytes(lstm)["matrices"] // compress.weight_bytes(q)["matrices"]
4

**Pruning** (:func:`prune`) zeroes the smallest-magnitude entries of the weight matrices
(``weight_ih``, ``weight_hh`` and, for a projected LSTM, ``weight_hr``) of every ``LSTM``,
``GRU`` and ``RNN`` (lstmkit's or ``torch.nn``'s, layers and cells) inside a module, in place,
and keeps them zero while the model trains on: the gradients of the pruned entries are masked,
the weights are masked again before every forward and before ``state_dict()``, and after every
step of the optimizer given as ``optimizer=``. The parameters keep their ``torch.nn`` names (the
masks are non-persistent buffers), so ``state_dict()`` loads into ``torch.nn.LSTM`` at any time;
:func:`remove` takes the masks and hooks away and leaves the zeros. :func:`polynomial_sparsity`
is the gradual schedule of Zhu & Gupta (2017), :func:`sparsity` reports the zeros.

**Quantisation** (:func:`quantize`) returns an inference-only copy of a module whose recurrent
layers store each weight matrix as int8 with one float scale per output row (symmetric, per row:
``scale = max|row| / 127``, ``q = round(w / scale)``); biases, layer-norm gains, peepholes and
learned initial states stay float. The weights take a quarter of the memory
(:func:`weight_bytes`). How the products are computed is the ``kernel`` option: ``'dequantize'``
(the default) turns each int8 matrix back into a float matrix once per call and runs the layer's
usual backend on it, which is exact float math on the rounded weights and as fast as the float
layer on whole sequences; ``'int8'`` multiplies by the int8 matrices directly with
``torch._weight_int8pack_mm``, reading a quarter of the bytes per product, which pays off where
reading the weights is the cost (one step at a time, batch 1, large layers: see
:class:`lstmkit.streaming.Streamer` with ``weights='int8'``). See ``docs/compress.md``.
"""

from __future__ import annotations

import copy
import numbers
import re
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _checks
from .nn.cells import _CellBase
from .nn.layers import GRU, LSTM, RNN, _RecurrentBase

#: Values of ``prune(scope=...)``: a fraction of each matrix, or of all matrices together.
SCOPES = ("layer", "global")
#: The weight matrices of a recurrent layer, by the middle of their names (``weight_<kind>...``).
WEIGHT_KINDS = ("ih", "hh", "hr")
#: Values of ``quantize(kernel=...)``.
KERNELS = ("dequantize", "int8")

_MATRIX = re.compile(r"^weight_(ih|hh|hr)(_l\d+(_reverse)?)?$")
_KEEP = "_keep"  # suffix of the mask buffer of a pruned matrix: True where the weight is kept
_SCALE = "_scale"  # suffix of the scales buffer of an int8 matrix
_LAYERS = (_RecurrentBase, nn.RNNBase)
_CELLS = (_CellBase, nn.RNNCellBase)
_TORCH_TO_LSTMKIT: tuple[tuple[type[nn.RNNBase], type[_RecurrentBase]], ...] = (
    (nn.LSTM, LSTM),
    (nn.GRU, GRU),
    (nn.RNN, RNN),
)


# ---------------------------------------------------------------------------------- discovery
def _recurrent_modules(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every recurrent layer and cell inside ``module`` (itself
    included), lstmkit's or ``torch.nn``'s."""
    for name, sub in module.named_modules():
        if isinstance(sub, _LAYERS + _CELLS):
            yield name, sub


def _matrix_names(module: nn.Module) -> list[str]:
    """The names of a recurrent module's weight matrices, parameters or int8 buffers."""
    names = [n for n, _ in module.named_parameters(recurse=False) if _MATRIX.match(n)]
    names += [n for n, b in module.named_buffers(recurse=False) if _MATRIX.match(n)]
    return names


def _qualified(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _require_module(module: Any, what: str) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {_checks.describe(module)}")
    if not any(True for _ in _recurrent_modules(module)):
        raise ValueError(
            f"module must contain an LSTM, GRU or RNN (lstmkit's or torch.nn's) to {what}, "
            f"got {type(module).__name__} with none"
        )
    return module


# ---------------------------------------------------------------------------------- pruning
class _GradMask:
    """Tensor hook: zero the gradient of the pruned entries of ``module.<name>``. The mask is
    looked up at call time, so that it follows the module to another device."""

    def __init__(self, module: nn.Module, name: str) -> None:
        self.module = module
        self.name = name

    def __call__(self, grad: Tensor) -> Tensor:
        keep: Tensor = getattr(self.module, self.name + _KEEP)
        return grad.masked_fill(~keep, 0.0)


class _AfterStep:
    """Optimizer step post-hook: re-zero the pruned weights of ``module`` after each step."""

    def __init__(self, state: _PruneState, module: nn.Module) -> None:
        self.state = state
        self.module = module

    def __call__(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.state.apply(self.module)


class _PruneState:
    """What :func:`prune` attaches to a recurrent module (as ``module._lstmkit_prune``): the
    names of its masked matrices, and the hooks that keep the pruned entries at zero.

    The masks themselves are non-persistent buffers ``<name>_keep`` of the module (so they move
    with it and stay out of ``state_dict``). Tensor hooks and optimizer hooks are not copied by
    ``copy.deepcopy`` nor pickled; the forward pre-hook installs the gradient hooks again on the
    parameters it finds without them.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self._grad_hooks: dict[str, tuple[Any, Any]] = {}  # name -> (weakref to param, handle)
        self._step_hooks: dict[int, Any] = {}  # id(optimizer) -> handle

    def __getstate__(self) -> dict[str, Any]:
        return {"names": list(self.names)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
        self.names = list(state["names"])

    # hooks registered on the module -------------------------------------------------------
    def forward_pre_hook(self, module: nn.Module, args: Any) -> None:
        self.install_grad_hooks(module)
        self.apply(module)

    def state_dict_pre_hook(self, module: nn.Module, prefix: str, keep_vars: bool) -> None:
        self.apply(module)

    # the work -------------------------------------------------------------------------------
    def apply(self, module: nn.Module) -> None:
        """Zero the pruned entries where they are not zero (after an optimizer step, a load)."""
        with torch.no_grad():
            for name in self.names:
                weight: Tensor = getattr(module, name)
                drop = ~getattr(module, name + _KEEP)
                if bool(weight.detach()[drop].any()):
                    weight.masked_fill_(drop, 0.0)

    def install_grad_hooks(self, module: nn.Module) -> None:
        for name in self.names:
            param = getattr(module, name)
            if not isinstance(param, Tensor) or not param.requires_grad:
                continue
            hooked = self._grad_hooks.get(name)
            if hooked is not None and hooked[0]() is param:
                continue
            handle = param.register_hook(_GradMask(module, name))
            self._grad_hooks[name] = (weakref.ref(param), handle)

    def watch(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if id(optimizer) not in self._step_hooks:
            hook = _AfterStep(self, module)
            self._step_hooks[id(optimizer)] = optimizer.register_step_post_hook(hook)

    def detach_hooks(self, module: nn.Module) -> None:
        for _, handle in self._grad_hooks.values():
            handle.remove()
        for handle in self._step_hooks.values():
            handle.remove()
        self._grad_hooks.clear()
        self._step_hooks.clear()
        for hooks in (module._forward_pre_hooks, module._state_dict_pre_hooks):
            for key, hook in list(hooks.items()):
                if getattr(hook, "__self__", None) is self:
                    del hooks[key]


def _state_of(module: nn.Module, create: bool = False) -> _PruneState | None:
    state = module.__dict__.get("_lstmkit_prune")
    if state is None and create:
        state = _PruneState()
        module.__dict__["_lstmkit_prune"] = state
        module.register_forward_pre_hook(state.forward_pre_hook)
        module.register_state_dict_pre_hook(state.state_dict_pre_hook)
    return state


def _weight_kinds(weights: Any) -> tuple[str, ...]:
    kinds = (weights,) if isinstance(weights, str) else weights
    if not isinstance(kinds, Iterable) or isinstance(kinds, (bytes, Tensor)):
        raise TypeError(
            f"weights must be a tuple of names from {WEIGHT_KINDS}, got {_checks.describe(weights)}"
        )
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in WEIGHT_KINDS]
    if bad or not kinds:
        raise ValueError(
            f"weights must be a non-empty tuple of names from {', '.join(map(repr, WEIGHT_KINDS))} "
            f"(weight_ih, weight_hh, weight_hr), got {weights!r}"
        )
    return kinds


def _prunable(module: nn.Module, kinds: Sequence[str]) -> list[tuple[str, nn.Module, str]]:
    """``(qualified name, owner, parameter name)`` of every matrix :func:`prune` acts on."""
    out = []
    for prefix, sub in _recurrent_modules(module):
        if isinstance(sub, _Quantized):
            raise NotImplementedError(
                f"the {type(sub).__name__} at {prefix or 'the top level'} is quantized (int8): "
                "prune the float module, then quantize it"
            )
        for name, _ in sub.named_parameters(recurse=False):
            match = _MATRIX.match(name)
            if match and match.group(1) in kinds:
                out.append((_qualified(prefix, name), sub, name))
    return out


def _amount(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"amount must be a float in [0, 1), got {_checks.describe(value)}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(
            f"amount must be a float in [0, 1) (the fraction of weights set to zero), got {value}"
        )
    return float(value)


def prune(
    module: nn.Module,
    amount: float,
    *,
    scope: str = "layer",
    weights: Sequence[str] = ("ih", "hh"),
    structured: bool = False,
    optimizer: torch.optim.Optimizer | None = None,
) -> nn.Module:
    """Magnitude-prune the recurrent weight matrices inside ``module``, in place, and keep the
    pruned entries at zero from now on. Returns ``module``.

    Every ``LSTM``, ``GRU`` and ``RNN`` layer or cell in ``module`` (lstmkit's and ``torch.nn``'s)
    is affected, in every layer and direction. Entries pruned by an earlier call stay pruned:
    calling ``prune`` again with a larger ``amount`` (as a gradual schedule does, see
    :func:`polynomial_sparsity`) prunes more, and a smaller ``amount`` prunes nothing new.

    The pruned entries stay zero while training goes on: their gradient is zeroed, and the
    weights are masked again before every forward call and every ``state_dict()`` (an optimizer
    with momentum may otherwise move them between a step and the next forward). Pass
    ``optimizer`` to also mask them right after each of its steps, so that the parameters read
    zero at every moment. The parameter names do not change (the masks are non-persistent
    buffers named ``<weight>_keep``): ``state_dict()`` loads into the ``torch.nn`` module at any
    time. :func:`remove` takes the masks and hooks away and keeps the zeros.

    Args:
        module: a module that contains at least one recurrent layer or cell.
        amount: the fraction in ``[0, 1)`` of the weights to set to zero: of each matrix with
            ``scope='layer'``, of all the selected matrices together with ``scope='global'``
            (the smallest magnitudes across them all go first, so some matrices lose more than
            others). With ``structured=True``, a fraction of the rows.
        scope: ``'layer'`` (each matrix on its own) or ``'global'``.
        weights: which matrices: any of ``'ih'`` (``weight_ih``), ``'hh'`` (``weight_hh``) and
            ``'hr'`` (``weight_hr``, the projection of an LSTM with ``proj_size``).
        structured: prune whole rows (the weights of one gate unit), those of smallest L2 norm,
            as ``torch.nn.utils.prune.ln_structured(n=2, dim=0)`` does. Needs ``scope='layer'``.
        optimizer: an optimizer of the module's parameters, whose steps are followed by masking
            the pruned weights again (``Optimizer.register_step_post_hook``).

    Raises:
        ValueError: ``amount`` outside ``[0, 1)``, an unknown ``scope`` or ``weights`` name,
            ``structured=True`` with ``scope='global'``, or a module with no recurrent layer or
            no matrix of the kinds asked for.
    """
    module = _require_module(module, "prune")
    fraction = _amount(amount)
    _checks.choice("scope", scope, SCOPES)
    kinds = _weight_kinds(weights)
    _checks.boolean("structured", structured)
    if structured and scope == "global":
        raise ValueError(
            "structured=True prunes rows by their norm within each matrix and needs "
            "scope='layer'; rows of different matrices have different lengths (got "
            "scope='global')"
        )
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer or None, got {_checks.describe(optimizer)}"
        )
    targets = _prunable(module, kinds)
    if not targets:
        raise ValueError(
            f"module has no recurrent weight matrix of the kinds weights={kinds!r} "
            "(weight_hr exists only for an LSTM with proj_size > 0)"
        )
    with torch.no_grad():
        old = []
        for _, owner, name in targets:
            keep = getattr(owner, name + _KEEP, None)
            weight: Tensor = getattr(owner, name)
            old.append(torch.ones_like(weight, dtype=torch.bool) if keep is None else keep)
        pairs = list(zip(targets, old, strict=True))
        if structured:
            new = [_row_mask(getattr(o, n), k, fraction) for (_, o, n), k in pairs]
        elif scope == "layer":
            new = [_entry_mask([getattr(o, n)], [k], fraction)[0] for (_, o, n), k in pairs]
        else:
            new = _entry_mask([getattr(o, n) for _, o, n in targets], old, fraction)
        for (_, owner, name), keep in zip(targets, new, strict=True):
            state = _state_of(owner, create=True)
            assert state is not None
            if name not in state.names:
                state.names.append(name)
                owner.register_buffer(name + _KEEP, keep, persistent=False)
            else:
                getattr(owner, name + _KEEP).copy_(keep)
            state.install_grad_hooks(owner)
            if optimizer is not None:
                state.watch(owner, optimizer)
    for owner in {id(o): o for _, o, _ in targets}.values():
        state = _state_of(owner)
        assert state is not None
        state.apply(owner)
    return module


def _entry_mask(weights: list[Tensor], keeps: list[Tensor], fraction: float) -> list[Tensor]:
    """Keep-masks pruning ``round(fraction * total)`` entries of smallest magnitude across
    ``weights`` (already pruned entries first; ties broken by position, deterministically)."""
    scores = torch.cat(
        [
            torch.where(k, w.detach().abs().float(), torch.full_like(w, -1.0, dtype=torch.float32))
            .flatten()
            .cpu()
            for w, k in zip(weights, keeps, strict=True)
        ]
    )
    n = round(fraction * scores.numel())
    flat = torch.ones(scores.numel(), dtype=torch.bool)
    if n:
        flat[torch.argsort(scores, stable=True)[:n]] = False
    out, start = [], 0
    for w, k in zip(weights, keeps, strict=True):
        part = flat[start : start + w.numel()].view_as(w).to(w.device)
        out.append(part & k)
        start += w.numel()
    return out


def _row_mask(weight: Tensor, keep: Tensor, fraction: float) -> Tensor:
    """A keep-mask pruning the ``round(fraction * rows)`` rows of smallest L2 norm."""
    w = weight.detach().float().masked_fill(~keep, 0.0)
    norms = w.norm(dim=1)
    norms = torch.where(keep.any(dim=1), norms, torch.full_like(norms, -1.0)).cpu()
    n = round(fraction * norms.numel())
    rows = torch.ones(norms.numel(), dtype=torch.bool)
    if n:
        rows[torch.argsort(norms, stable=True)[:n]] = False
    return keep & rows.to(weight.device)[:, None]


def apply_masks(module: nn.Module) -> None:
    """Set the pruned weights of every pruned layer inside ``module`` back to zero now.

    Forward calls and ``state_dict()`` do this by themselves; call it to read the parameters
    directly after an optimizer step when :func:`prune` was not given that ``optimizer``."""
    for _, sub in _recurrent_modules(module):
        state = _state_of(sub)
        if state is not None:
            state.apply(sub)


def remove(module: nn.Module) -> nn.Module:
    """Make the pruning of every layer inside ``module`` permanent: the pruned weights are set
    to zero one last time, then the masks and every hook :func:`prune` added are removed (the
    zeros are ordinary values from then on, free to change in further training). Returns
    ``module``. A module that was never pruned is returned unchanged."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {_checks.describe(module)}")
    for _, sub in _recurrent_modules(module):
        state = _state_of(sub)
        if state is None:
            continue
        state.apply(sub)
        state.detach_hooks(sub)
        for name in state.names:
            delattr(sub, name + _KEEP)
        del sub.__dict__["_lstmkit_prune"]
    return module


def sparsity(module: nn.Module) -> dict[str, float]:
    """The fraction of zero entries of every recurrent weight matrix inside ``module``, keyed by
    its qualified name (``'rnn.weight_hh_l0'``), and over all of them together (``'overall'``).

    Every ``weight_ih``, ``weight_hh`` and ``weight_hr`` of every recurrent layer and cell is
    counted, pruned or not, float or int8 (:func:`quantize` keeps zeros at zero)."""
    module = _require_module(module, "measure")
    out: dict[str, float] = {}
    zeros = total = 0
    for prefix, sub in _recurrent_modules(module):
        for name in _matrix_names(sub):
            w: Tensor = getattr(sub, name)
            z = int((w.detach() == 0).sum())
            out[_qualified(prefix, name)] = z / w.numel() if w.numel() else 0.0
            zeros += z
            total += w.numel()
    out["overall"] = zeros / total if total else 0.0
    return out


def polynomial_sparsity(
    step: int, *, start: int, end: int, final: float, initial: float = 0.0
) -> float:
    """The gradual pruning schedule of Zhu & Gupta (2017), "To prune, or not to prune":

    ``s(t) = final + (initial - final) * (1 - (t - start) / (end - start))**3``

    for ``start <= t <= end``, ``initial`` before ``start`` and ``final`` after ``end``. It prunes
    fast at first, while the network has many redundant weights, and slowly near the end. Call
    ``prune(model, polynomial_sparsity(step, ...))`` every few steps of training (Zhu & Gupta
    prune every 100 to 1000 steps) and train on between the calls.

    Args:
        step: the current training step.
        start: the step where pruning starts (``initial`` sparsity).
        end: the step where ``final`` sparsity is reached; greater than ``start``.
        final: the target sparsity, in ``[0, 1)``.
        initial: the sparsity at ``start``, in ``[0, final]``.
    """
    _checks.positive_int("step", step, allow_zero=True)
    _checks.positive_int("start", start, allow_zero=True)
    _checks.positive_int("end", end, allow_zero=True)
    if end <= start:
        raise ValueError(f"end must be greater than start, got start={start}, end={end}")
    s_f = _checks.probability("final", final)
    s_i = _checks.probability("initial", initial)
    if s_i > s_f:
        raise ValueError(f"initial must be <= final, got initial={initial}, final={final}")
    if step <= start:
        return s_i
    if step >= end:
        return s_f
    progress = (step - start) / (end - start)
    return s_f + (s_i - s_f) * (1.0 - progress) ** 3


# ---------------------------------------------------------------------------------- int8
def quantize_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8 quantisation of a 2-D float matrix.

    Returns ``(q, scale)``: ``q`` int8 of the matrix's shape with values in ``[-127, 127]``, and
    ``scale`` of shape ``(rows,)`` in the matrix's dtype, ``max|row| / 127``, so that
    ``q * scale[:, None]`` approximates the matrix within ``scale / 2`` per entry. A row of
    zeros gets scale 0 and stays zero; zeros in general stay zero.
    """
    if not isinstance(weight, Tensor) or not weight.is_floating_point() or weight.dim() != 2:
        raise TypeError(
            f"weight must be a 2-D floating-point tensor, got {_checks.describe(weight)}"
        )
    w = weight.detach()
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weight has NaN or infinite entries and cannot be quantized")
    wide = w.to(torch.float64 if w.dtype == torch.float64 else torch.float32)
    scale = (wide.abs().amax(dim=1) / 127.0).to(w.dtype)  # the scale as stored
    used = scale.to(wide.dtype)
    safe = torch.where(used > 0, used, torch.ones_like(used))
    q = torch.round(wide / safe[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


# torch 2.13's CPU kernel of ``_weight_int8pack_mm`` for bfloat16 inputs reads the columns in
# blocks of 16: with a number of columns K that is not a multiple of 16 it returns wrong values
# or crashes (measured on an AVX-512 CPU). The matrix and the input are padded with zero columns
# to the next multiple, which changes nothing in the product.
_KERNEL_K = 16


def _kernel_ok(x: Tensor, q: Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and q.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and hasattr(torch, "_weight_int8pack_mm")
    )


class _Int8Weight:
    """An int8 matrix with per-row scales that ``torch.nn.functional.linear`` accepts in place of
    a float weight (through ``__torch_function__``), so that the cells' math runs unchanged on
    it. Only ``F.linear`` and row slicing (``w[rows]``) are supported.

    ``F.linear(x, w)`` computes ``x @ (q * scale[:, None]).T``: on the CPU, for float32 and
    bfloat16 inputs, with ``torch._weight_int8pack_mm`` (the input is rounded to bfloat16 for the
    product: the kernel's float32 path is a slow scalar loop, its bfloat16 path is vectorised;
    the float scales are applied after it, in the input's dtype); elsewhere by dequantising the
    matrix first.
    """

    def __init__(self, q: Tensor, scale: Tensor) -> None:
        self.q = q
        self.scale = scale
        self._kernel_args: tuple[Tensor, Tensor] | None = None  # (q padded, unit scales)

    @property
    def dtype(self) -> torch.dtype:
        return self.scale.dtype

    @property
    def device(self) -> torch.device:
        return self.q.device

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    requires_grad = False

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        dt = dtype or self.scale.dtype
        return self.q.to(dt) * self.scale.to(dt)[:, None]

    def __getitem__(self, rows: Any) -> _Int8Weight:
        if not isinstance(rows, slice):
            raise NotImplementedError(f"int8 weights support row slices only, got {rows!r}")
        return _Int8Weight(self.q[rows], self.scale[rows])

    def linear(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        K = self.q.shape[1]
        if x.shape[-1] != K:
            raise ValueError(
                f"input must have {K} features in its last dimension, got {tuple(x.shape)}"
            )
        if _kernel_ok(x, self.q) and x.numel() > 0:
            pad = -K % _KERNEL_K
            if self._kernel_args is None:
                q = F.pad(self.q, (0, pad)) if pad else self.q
                self._kernel_args = (q, torch.ones(self.q.shape[0], dtype=torch.bfloat16))
            q, unit = self._kernel_args
            x2 = x.reshape(-1, K).to(torch.bfloat16)
            x2 = F.pad(x2, (0, pad)) if pad else x2.contiguous()
            y = torch._weight_int8pack_mm(x2, q, unit)
            y = (y.to(x.dtype) * self.scale.to(x.dtype)).reshape(*x.shape[:-1], -1)
        else:
            y = F.linear(x, self.dequantize(x.dtype))
        return y if bias is None else y + bias

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            bound = list(args) + [kwargs.get(k) for k in ("input", "weight", "bias")[len(args) :]]
            x, w, b = (bound + [None] * 3)[:3]
            if isinstance(w, _Int8Weight) and isinstance(x, Tensor):
                return w.linear(x, b)
        raise NotImplementedError(
            f"int8 weights of a quantized layer support only torch.nn.functional.linear(x, w), "
            f"got {getattr(func, '__name__', func)}"
        )

    def __repr__(self) -> str:
        return f"_Int8Weight(shape={tuple(self.q.shape)}, scale dtype={self.scale.dtype})"


def _matrix_bases(module: _RecurrentBase) -> Iterator[tuple[str, str]]:
    for per_layer in module._param_names:
        for names in per_layer:
            for base, full in names:
                if base in ("weight_ih", "weight_hh", "weight_hr"):
                    yield base, full


class _Quantized(_RecurrentBase):
    """The int8 inference form of an lstmkit layer (the base of :class:`QuantizedLSTM`,
    :class:`QuantizedGRU` and :class:`QuantizedRNN`)."""

    kernel: str = "dequantize"
    _int8_names: frozenset[str] = frozenset()  # empty while the float layer is being built
    _float_backend: str

    def __init__(self, *args: Any, kernel: str = "dequantize", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._quantize_in_place(kernel)

    def _quantize_in_place(self, kernel: str) -> None:
        """Replace the float weight matrices by int8 buffers and scales (the module was built,
        or copied, as the float layer and has just had its class changed)."""
        kernel = _checks.choice("kernel", kernel, KERNELS)
        names = []
        with torch.no_grad():
            for _, full in _matrix_bases(self):
                weight = getattr(self, full)
                q, scale = quantize_rows(weight)
                delattr(self, full)
                self.register_buffer(full, q)
                self.register_buffer(full + _SCALE, scale)
                names.append(full)
        for p in self.parameters():
            p.requires_grad_(False)
            p.grad = None
        self._int8_names = frozenset(names)
        self.kernel = kernel
        self._float_backend = self.backend
        if kernel == "int8":
            self.backend = "reference"
        nn.Module.train(self, False)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The float dtype the layer computes in (its scales' dtype)."""
        return self._first_scale().dtype

    def _first_scale(self) -> Tensor:
        scale: Tensor = getattr(self, self._param_names[0][0][0][1] + _SCALE)
        return scale

    # -------------------------------------------------------------------- parameters
    def _int8_params(self, layer: int, direction: int) -> dict[str, Any]:
        """The parameters of one layer and direction, the int8 matrices as weight objects that
        ``F.linear`` accepts."""
        out: dict[str, Any] = {}
        for base, full in self._param_names[layer][direction]:
            if full in self._int8_names:
                out[base] = _Int8Weight(getattr(self, full), getattr(self, full + _SCALE))
            else:
                out[base] = getattr(self, full)
        return out

    def _params(self, layer: int, direction: int) -> dict[str, Tensor]:
        params = self._int8_params(layer, direction)
        if self.kernel == "int8":
            return params
        return {k: v.dequantize() if isinstance(v, _Int8Weight) else v for k, v in params.items()}

    # -------------------------------------------------------------------- inference only
    def forward(self, input: Any, hx: Any = None, lengths: Any = None) -> Any:
        """As the float layer's ``forward``, in evaluation mode and without gradients."""
        name = type(self).__name__
        if self.training:
            raise NotImplementedError(
                f"{name} is inference-only (int8 weights have no gradient) and runs in "
                "evaluation mode; call .eval() on it, or train the float module and quantize "
                "it again (got training mode)"
            )
        if self.kernel == "int8" and self.backend != "reference":
            raise NotImplementedError(
                f"{name} with kernel='int8' runs on the reference loop, got "
                f"backend={self.backend!r}; use kernel='dequantize' for the other backends"
            )
        if torch.is_grad_enabled():
            for pname, p in self.named_parameters():
                if p.requires_grad:
                    raise NotImplementedError(
                        f"{name} is inference-only: parameter {pname} has requires_grad=True; "
                        "leave its parameters frozen, or run it under torch.no_grad()"
                    )
            data = input.data if isinstance(input, PackedSequence) else input
            parts = [("input", data)]
            if hx is not None:
                states = hx if isinstance(hx, (tuple, list)) else (hx,)
                parts += [(f"hx[{k}]", s) for k, s in enumerate(states)]
            for what, t in parts:
                if isinstance(t, Tensor) and t.requires_grad:
                    raise NotImplementedError(
                        f"{name} is inference-only (int8 weights have no gradient): {what} "
                        "has requires_grad=True; run it under torch.no_grad() or detach it"
                    )
        return super().forward(input, hx, lengths)

    def reset_parameters(self) -> None:
        if not self._int8_names:  # still the float layer, being built
            super().reset_parameters()
            return
        raise NotImplementedError(
            f"{type(self).__name__} holds int8 weights and cannot be re-initialised; "
            "initialise the float module and quantize it"
        )

    def initial_state(
        self, batch_size: int, *, dtype: torch.dtype | None = None, device: Any = None
    ) -> Any:
        """The state a sequence starts from when ``hx`` is None (as the float layer's)."""
        _checks.positive_int("batch_size", batch_size, allow_zero=True)
        ref = self._first_scale()
        like = torch.empty(0, dtype=dtype or ref.dtype, device=device or ref.device)
        return self._pack_state(self._initial_components(batch_size, like))

    def to_torch(self) -> nn.RNNBase:
        raise NotImplementedError(
            f"{type(self).__name__} holds int8 weights, which torch.nn modules cannot; use "
            "lstmkit.compress.dequantize(module).to_torch() for a float copy"
        )

    @classmethod
    def from_torch(cls, module: nn.RNNBase, *, kernel: str = "dequantize", **options: Any) -> Any:
        """Quantize a ``torch.nn`` module: ``quantize(<lstmkit class>.from_torch(module))``."""
        return quantize(_FLOAT_OF[cls].from_torch(module, **options), kernel=kernel)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        for full in sorted(self._int8_names):
            given = state_dict.get(prefix + full)
            if isinstance(given, Tensor) and given.dtype != torch.int8:
                raise ValueError(
                    f"state_dict entry {prefix + full} is {given.dtype}, but "
                    f"{type(self).__name__} stores it as int8 with scales {full + _SCALE}: "
                    "load a float state_dict into the float module, then quantize it"
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, int8, kernel={self.kernel!r}"


class QuantizedLSTM(_Quantized, LSTM):
    """:class:`lstmkit.LSTM` with int8 weight matrices, for inference; made by :func:`quantize`.

    Constructing it directly (``QuantizedLSTM(16, 32, num_layers=2, kernel='int8')``, the
    arguments of :class:`lstmkit.LSTM` plus ``kernel``) builds a float LSTM and quantizes it:
    the way to get a module to ``load_state_dict`` a saved quantized state into.
    """


class QuantizedGRU(_Quantized, GRU):
    """:class:`lstmkit.GRU` with int8 weight matrices, for inference (see
    :class:`QuantizedLSTM`)."""


class QuantizedRNN(_Quantized, RNN):
    """:class:`lstmkit.RNN` with int8 weight matrices, for inference (see
    :class:`QuantizedLSTM`)."""


_QUANTIZED_OF: dict[type, type[_Quantized]] = {
    LSTM: QuantizedLSTM,
    GRU: QuantizedGRU,
    RNN: QuantizedRNN,
}
_FLOAT_OF: dict[type, type[_RecurrentBase]] = {q: f for f, q in _QUANTIZED_OF.items()}


def is_quantized(module: nn.Module) -> bool:
    """Whether ``module`` is a quantized recurrent layer (made by :func:`quantize`)."""
    return isinstance(module, _Quantized)


def _as_lstmkit(layer: nn.Module, where: str) -> _RecurrentBase:
    if isinstance(layer, _RecurrentBase):
        if type(layer) not in _QUANTIZED_OF:
            raise NotImplementedError(
                f"quantize supports lstmkit.LSTM, GRU and RNN, got a subclass "
                f"{type(layer).__name__} at {where}"
            )
        return layer
    for torch_cls, ours in _TORCH_TO_LSTMKIT:
        if isinstance(layer, torch_cls):
            assert isinstance(layer, nn.RNNBase)
            with torch.random.fork_rng(devices=[]):  # its throw-away init must not use the RNG
                converted: _RecurrentBase = ours.from_torch(layer)
            return converted
    raise NotImplementedError(f"quantize cannot convert {type(layer).__name__} at {where}")


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def quantize(module: nn.Module, *, kernel: str = "dequantize") -> nn.Module:
    """An inference-only copy of ``module`` whose recurrent layers keep their weight matrices in
    int8, with one float scale per output row. ``module`` itself is not changed.

    Every ``LSTM``, ``GRU`` and ``RNN`` layer inside ``module`` (lstmkit's, with any variant, or
    ``torch.nn``'s, converted with ``from_torch``) becomes a :class:`QuantizedLSTM`,
    :class:`QuantizedGRU` or :class:`QuantizedRNN` in the copy: ``weight_ih``, ``weight_hh`` and
    ``weight_hr`` become int8 buffers of the same names plus ``<name>_scale`` buffers (see
    :func:`quantize_rows`); biases, layer-norm gains, peepholes and learned initial states stay
    float parameters (frozen). The rest of the copy is unchanged. A pruned layer is pruned for
    good in the copy (:func:`remove`), and its zeros stay zero.

    The copy is in evaluation mode. Its layers take the inputs, states, ``lengths``,
    ``batch_first`` and ``PackedSequence`` of the float layers and return outputs of the same
    shapes; they refuse to run in training mode or with anything requiring grad
    (``NotImplementedError``).

    Args:
        module: a module containing at least one recurrent layer.
        kernel: how the products are computed. ``'dequantize'``: each int8 matrix is turned
            back into a float matrix at every call, and the layer runs its usual backend (fused
            kernels, torch's, or the reference loop) on it; exact float math on the rounded
            weights. ``'int8'``: the reference loop multiplies by the int8 matrices directly
            (``torch._weight_int8pack_mm`` on the CPU for float32 and bfloat16, with the
            activations rounded to bfloat16 for each product; dequantised on other devices and
            dtypes). It reads a quarter of the bytes per product and suits one step at a time
            on large layers; on whole sequences it is slower than ``'dequantize'``.

    Raises:
        ValueError: a module with no recurrent layer, or one already quantized.
        NotImplementedError: a recurrent cell (``LSTMCell``, ...), or a subclass of the layers.
    """
    module = _require_module(module, "quantize")
    kernel = _checks.choice("kernel", kernel, KERNELS)
    layers = []
    for name, sub in _recurrent_modules(module):
        where = name or "the top level"
        if isinstance(sub, _Quantized):
            raise ValueError(f"the {type(sub).__name__} at {where} is already quantized")
        if isinstance(sub, _CELLS):
            raise NotImplementedError(
                f"quantize supports the layers LSTM, GRU and RNN, not the cell "
                f"{type(sub).__name__} at {where}"
            )
        layers.append(name)
    new = copy.deepcopy(module)
    remove(new)
    for name in layers:
        old = new.get_submodule(name) if name else new
        layer = _as_lstmkit(old, name or "the top level")
        if layer is old:
            for p in layer.parameters():
                p.grad = None
        layer.__class__ = _QUANTIZED_OF[type(layer)]
        assert isinstance(layer, _Quantized)
        layer._quantize_in_place(kernel)
        if not name:
            return layer
        _replace(new, name, layer)
    return new.eval()


def dequantize(module: nn.Module) -> nn.Module:
    """A float copy of ``module`` with every quantized layer turned back into the lstmkit
    ``LSTM``, ``GRU`` or ``RNN`` (weights ``q * scale``, trainable, evaluation mode): the model
    the int8 one computes with ``kernel='dequantize'``, e.g. to fine-tune it or export it."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {_checks.describe(module)}")
    names = [n for n, sub in module.named_modules() if isinstance(sub, _Quantized)]
    if not names:
        raise ValueError(f"module has no quantized layer, got {type(module).__name__}")
    new = copy.deepcopy(module)
    for name in names:
        layer = new.get_submodule(name) if name else new
        assert isinstance(layer, _Quantized)
        with torch.no_grad():
            for full in sorted(layer._int8_names):
                w = _Int8Weight(getattr(layer, full), getattr(layer, full + _SCALE)).dequantize()
                delattr(layer, full)
                delattr(layer, full + _SCALE)
                layer.register_parameter(full, nn.Parameter(w))
        # the float layer's parameter order (state_dict order) is its constructor's
        order = [full for per_layer in layer._param_names for ns in per_layer for _, full in ns]
        rest = [k for k in layer._parameters if k not in order]
        layer._parameters = {k: layer._parameters[k] for k in order + rest}
        for p in layer.parameters():
            p.requires_grad_(True)
        layer.backend = layer._float_backend
        del layer.kernel, layer._int8_names, layer._float_backend
        layer.__class__ = _FLOAT_OF[type(layer)]  # type: ignore[assignment]
        layer.eval()
        if not name:
            return layer
    return new


def weight_bytes(module: nn.Module) -> dict[str, int]:
    """The bytes ``module.state_dict()`` holds, split into the recurrent weight matrices
    (``'matrices'``: ``weight_ih``, ``weight_hh``, ``weight_hr``, float or int8), their int8
    scales (``'scales'``), everything else (``'other'``: biases, embeddings, output layers, ...)
    and the ``'total'``. A tensor that appears under two names (tied weights) counts once."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {_checks.describe(module)}")
    matrices, scales = set(), set()
    for prefix, sub in _recurrent_modules(module):
        for name in _matrix_names(sub):
            matrices.add(_qualified(prefix, name))
            if isinstance(sub, _Quantized):
                scales.add(_qualified(prefix, name + _SCALE))
    out = {"matrices": 0, "scales": 0, "other": 0}
    seen: set[tuple[int, int, torch.dtype]] = set()
    for key, t in module.state_dict().items():
        ident = (t.data_ptr(), t.numel(), t.dtype)
        if t.numel() and ident in seen:
            continue
        seen.add(ident)
        size = t.numel() * t.element_size()
        kind = "matrices" if key in matrices else "scales" if key in scales else "other"
        out[kind] += size
    out["total"] = sum(out.values())
    return out


__all__ = [
    "KERNELS",
    "SCOPES",
    "WEIGHT_KINDS",
    "QuantizedGRU",
    "QuantizedLSTM",
    "QuantizedRNN",
    "apply_masks",
    "dequantize",
    "is_quantized",
    "polynomial_sparsity",
    "prune",
    "quantize",
    "quantize_rows",
    "remove",
    "sparsity",
    "weight_bytes",
]
