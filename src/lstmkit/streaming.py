"""Streaming inference: advance a recurrent stack ONE time step at a time, for serving.

>>> import torch, lstmkit
>>> from lstmkit.streaming import Streamer
>>> lstm = lstmkit.LSTM(8, 16, num_layers=2)
>>> streamer = Streamer(lstm, batch_size=4)
>>> y = streamer.step(torch.randn(4, 8))       # (4, 16): the top layer's output at this step
>>> y.shape
torch.Size([4, 16])

A :class:`Streamer` holds a snapshot of a unidirectional ``LSTM``/``GRU``/``RNN`` in a packed
inference layout, the recurrent state of ``batch_size`` independent streams and every buffer a
step needs. :meth:`Streamer.step` costs the same at step 10 as at step 10 000 (``O(1)`` time and
memory per step, one pass over the weights), where re-running the module on the whole history
costs ``O(t)`` at step ``t``. The math is the module's in evaluation mode: dropouts are the
identity and zoneout uses its expectation, whatever ``module.training`` says.

The step itself runs in the C++ extension ``lstmkit._C`` (``csrc/step.cpp``) for float32 and
float64 on the CPU: no autograd, no allocation, one fused pass over packed ``[W_ih | W_hh]``
weights per layer. Elsewhere (another dtype or device, or the extension not built) the same step
runs in plain torch ops. See ``docs/streaming.md``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any, NoReturn

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _checks
from .backends import fused
from .cells import CellMath, GRUMath, LSTMMath, layer_norm
from .compress import _Int8Weight, _Quantized, quantize_rows
from .nn.layers import GRU, LSTM, RNN, _RecurrentBase

#: Values of ``Streamer(backend=...)``: ``'fused'`` is the C++ step kernel, ``'torch'`` the same
#: step in torch ops, ``'auto'`` the first where it can run and the second otherwise.
STREAM_BACKENDS = ("auto", "fused", "torch")
#: Values of ``Streamer(weights=...)``: ``'int8'`` steps with int8 weight matrices (see
#: :mod:`lstmkit.compress`), ``'float'`` with the module's float weights, ``'auto'`` as the
#: module stores them (int8 for a quantized module).
STREAM_WEIGHTS = ("auto", "float", "int8")

# The dtypes the C++ step kernel implements (on the CPU).
_FUSED_DTYPES = (torch.float32, torch.float64)

# Whether the "C++ step kernel not built" warning was given in this process (it is given once).
_fallback_warned = False


def _extension() -> Any:
    """The extension module when it has the step kernel, else ``None`` (not built, or built from
    sources older than ``csrc/step.cpp``)."""
    ext = fused._C
    return ext if ext is not None and hasattr(ext, "StepKernel") else None


def _warn_fallback_once() -> None:
    global _fallback_warned
    if _fallback_warned:
        return
    _fallback_warned = True
    warnings.warn(
        "lstmkit.streaming: Streamer uses the pure-torch step (the same results, more slowly) "
        f"because the C++ step kernel lstmkit._C.StepKernel is not built; {fused.BUILD_HINT}",
        RuntimeWarning,
        stacklevel=5,  # the Streamer(...) or refresh() call
    )


# ---------------------------------------------------------------------------------- the plan
@dataclass
class _LayerPlan:
    """One layer in the packed inference layout, shared by both backends.

    ``slots``: the gate products, each an ``(H, width)`` weight block and the first column it
    reads in the step's input row ``[x_t | h_{t-1}]`` (``K = input_size + output_size``
    columns). A gate whose input and recurrent products are simply added is one slot over all
    ``K`` columns, the concatenation ``[W_ih | W_hh]``; layer norm and the GRU's candidate keep
    the two halves as separate slots (see ``csrc/step.cpp`` for each family's order).
    ``second``: the matrix of a product on a vector the step computes (``W_hr`` of the LSTM
    projection; ``W_hn`` of the GRU with ``reset_after=False``). ``vectors``: ``bias`` (the input
    and recurrent biases summed where they add), ``b_hn`` (the GRU's candidate recurrent bias
    with ``reset_after=True``), ``peephole``, ``ln_ih``, ``ln_hh``, ``ln_cell_weight``,
    ``ln_cell_bias``. Every tensor is a detached copy: the plan is a snapshot.
    """

    input_size: int
    hidden_size: int
    output_size: int
    slots: list[tuple[Tensor, int]]
    second: Tensor | None
    vectors: dict[str, Tensor]


def _plan_layer(cell: CellMath, params: dict[str, Tensor]) -> _LayerPlan:
    p = {k: v.detach() for k, v in params.items()}
    I, H = cell.input_size, cell.hidden_size
    ih = list(p["weight_ih"].split(H, 0))
    hh = list(p["weight_hh"].split(H, 0))
    b_ih, b_hh = p.get("bias_ih"), p.get("bias_hh")
    vectors: dict[str, Tensor] = {}
    second: Tensor | None = None
    if isinstance(cell, GRUMath):
        ra = cell.reset_after
        if cell.layer_norm:
            slots = [(ih[0], 0), (ih[1], 0), (ih[2], 0), (hh[0], I), (hh[1], I)]
        else:
            slots = [(torch.cat([ih[0], hh[0]], 1), 0), (torch.cat([ih[1], hh[1]], 1), 0)]
            slots.append((ih[2], 0))
        if ra:
            slots.append((hh[2], I))
        else:
            second = hh[2]
        if b_ih is not None and b_hh is not None:
            bias = b_ih.clone()
            bias[: 2 * H] += b_hh[: 2 * H]
            if ra:
                vectors["b_hn"] = b_hh[2 * H :]
            else:
                bias[2 * H :] += b_hh[2 * H :]
            vectors["bias"] = bias
    else:  # LSTM and RNN: every gate's two products add up
        if cell.layer_norm:
            slots = [(w, 0) for w in ih] + [(w, I) for w in hh]
        else:
            slots = [(w, 0) for w in torch.cat([p["weight_ih"], p["weight_hh"]], 1).split(H, 0)]
        if b_ih is not None and b_hh is not None:
            vectors["bias"] = b_ih + b_hh
        if isinstance(cell, LSTMMath):
            second = p.get("weight_hr")
            for name in ("weight_peephole", "ln_cell_weight", "ln_cell_bias"):
                if name in p:
                    vectors[name.replace("weight_peephole", "peephole")] = p[name]
    if cell.layer_norm:
        vectors["ln_ih"] = p["ln_ih_weight"]
        vectors["ln_hh"] = p["ln_hh_weight"]
    return _LayerPlan(
        input_size=I,
        hidden_size=H,
        output_size=cell.output_size,
        slots=[(w.contiguous().clone(), k0) for w, k0 in slots],
        second=None if second is None else second.contiguous().clone(),
        vectors={k: v.contiguous().clone() for k, v in vectors.items()},
    )


@dataclass(frozen=True)
class _Options:
    family: str
    coupled: bool
    reset_after: bool
    relu: bool
    residual: bool
    cell_clip: float
    zoneout_h: float
    zoneout_c: float


def _options(module: _RecurrentBase) -> _Options:
    cell = module.cell_math[0]
    rates = (*module.zoneout, 0.0)
    return _Options(
        family=cell.family,
        coupled=bool(getattr(cell, "coupled_gates", False)),
        reset_after=bool(getattr(cell, "reset_after", True)),
        relu=getattr(cell, "nonlinearity", "tanh") == "relu",
        residual=module.residual,
        cell_clip=float(getattr(cell, "cell_clip", None) or 0.0),
        zoneout_h=float(rates[0]),
        zoneout_c=float(rates[1]),
    )


# ---------------------------------------------------------------------------------- validation
def _non_overlapping(t: Tensor) -> bool:
    """Whether no two elements of ``t`` share a memory location (so it can be written)."""
    dims = sorted((st, n) for st, n in zip(t.stride(), t.shape, strict=True) if n > 1)
    reach = 0  # the furthest offset reached by the dims of smaller stride
    for stride, size in dims:
        if stride <= reach:
            return False
        reach += stride * (size - 1)
    return True


def _fits(t: Any, shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> bool:
    return (
        isinstance(t, Tensor)
        and t.dtype == dtype
        and t.device == device
        and t.layout == torch.strided
        and tuple(t.shape) == shape
    )


def _check_step_tensor(
    name: str, value: Any, shape: tuple[int, int], what: str, dtype: torch.dtype, device: Any
) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape {what} = {shape}, "
            f"got {_checks.describe(value)}"
        )
    if value.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {value.layout}")
    if value.dtype != dtype:
        raise TypeError(
            f"{name} must have the module's dtype {dtype}, got {value.dtype}; "
            f"convert it with .to({dtype})"
        )
    if value.device != device:
        raise ValueError(f"{name} must be on the module's device {device}, got {value.device}")
    if tuple(value.shape) != shape:
        raise ValueError(
            f"{name} must have shape {what} = {shape}, got {tuple(value.shape)}"
            + (" (one row per stream: add the batch dimension)" if value.dim() == 1 else "")
        )


# ---------------------------------------------------------------------------------- torch step
class _TorchStep:
    """The step of ``csrc/step.cpp`` in plain torch ops, on the same plan: used for dtypes and
    devices the C++ kernel does not implement and where the extension is not built. Same
    results (up to float rounding); it allocates its intermediate tensors."""

    def __init__(
        self, plans: list[_LayerPlan], opts: _Options, state: list[Tensor], batch: int
    ) -> None:
        self.input_size, self.output_size = plans[0].input_size, plans[-1].output_size
        self.opts = opts
        self.h = state[0]
        self.c = state[1] if len(state) > 1 else None
        like = state[0]
        self.dtype, self.device = like.dtype, like.device
        self.batch = batch
        self.layers = []
        for plan in plans:
            K = plan.input_size + plan.output_size
            # consecutive slots reading the same columns are one matrix product
            groups: list[tuple[int, int, list[Tensor]]] = []
            for w, k0 in plan.slots:
                if groups and groups[-1][0] == k0 and groups[-1][2][0].shape[1] == w.shape[1]:
                    groups[-1][2].append(w)
                else:
                    groups.append((k0, w.shape[1], [w]))
            products = [(k0, width, torch.cat(ws, 0).t().contiguous()) for k0, width, ws in groups]
            xh = like.new_zeros(batch, K)
            self.layers.append((replace(plan, slots=[]), products, xh))  # weights: in products

    def __call__(self, x: Any, out: Any) -> bool:
        I0, P = self.input_size, self.output_size
        B, dt, dev = self.batch, self.dtype, self.device
        if not (_fits(x, (B, I0), dt, dev) and _fits(out, (B, P), dt, dev)):
            return False
        if not _non_overlapping(out):
            return False
        with torch.inference_mode():
            layer_input = x
            for l, (plan, products, xh) in enumerate(self.layers):
                I = plan.input_size
                xh[:, :I].copy_(layer_input)
                xh[:, I:].copy_(self.h[l])
                ys = self._products(l, products, xh)
                if self.opts.family == "lstm":
                    self._lstm(l, plan, ys, xh[:, I:])
                elif self.opts.family == "gru":
                    self._gru(l, plan, ys, xh[:, I:])
                else:
                    self._rnn(l, plan, ys, xh[:, I:])
                y = self.h[l]
                if self.opts.residual and l > 0:
                    y = y + xh[:, :I]
                layer_input = y
            out.copy_(layer_input)
        return True

    def _products(self, l: int, products: list[Any], xh: Tensor) -> list[Tensor]:
        """The gate products of layer ``l`` from its step input row ``xh = [x_t | h_{t-1}]``."""
        return [xh[:, k0 : k0 + width] @ wt for k0, width, wt in products]

    @staticmethod
    def _sum(plan: _LayerPlan, ys: list[Tensor], gain_hh: str = "ln_hh") -> Tensor:
        """The gates' pre-activations of the LSTM and RNN: both products, normalised, plus bias."""
        v = plan.vectors
        a = ys[0]
        if "ln_ih" in v:
            a = layer_norm(ys[0], v["ln_ih"]) + layer_norm(ys[1], v[gain_hh])
        return a + v["bias"] if "bias" in v else a

    def _zoneout(self, new: Tensor, old: Tensor, rate: float) -> Tensor:
        return torch.lerp(new, old, rate) if rate else new

    def _lstm(self, l: int, plan: _LayerPlan, ys: list[Tensor], h_prev: Tensor) -> None:
        assert self.c is not None
        o, v, H = self.opts, plan.vectors, plan.hidden_size
        c = self.c[l]
        gates = self._sum(plan, ys).split(H, 1)
        if o.coupled:
            a_i, a_g, a_o = gates
            a_f = None
        else:
            a_i, a_f, a_g, a_o = gates
        peep = v["peephole"].split(H) if "peephole" in v else None
        if peep is not None:
            a_i = a_i + peep[0] * c
            if a_f is not None:
                a_f = a_f + peep[1] * c
        i = torch.sigmoid(a_i)
        f = 1.0 - i if a_f is None else torch.sigmoid(a_f)
        c_new = f * c + i * torch.tanh(a_g)
        if o.cell_clip:
            c_new = c_new.clamp(-o.cell_clip, o.cell_clip)
        if peep is not None:
            a_o = a_o + peep[-1] * c_new
        c_out = c_new
        if "ln_cell_weight" in v:
            c_out = layer_norm(c_new, v["ln_cell_weight"], v["ln_cell_bias"])
        h_new = torch.sigmoid(a_o) * torch.tanh(c_out)
        if plan.second is not None:
            h_new = F.linear(h_new, plan.second)
        self.c[l].copy_(self._zoneout(c_new, c, o.zoneout_c))
        self.h[l].copy_(self._zoneout(h_new, h_prev, o.zoneout_h))

    def _gru(self, l: int, plan: _LayerPlan, ys: list[Tensor], h_prev: Tensor) -> None:
        v, H = plan.vectors, plan.hidden_size
        ra = self.opts.reset_after
        if "ln_ih" in v:
            g_hh = v["ln_hh"] if ra else v["ln_hh"][: 2 * H]
            a_r, a_z, a_n = layer_norm(ys[0], v["ln_ih"]).split(H, 1)
            u = layer_norm(ys[1], g_hh).split(H, 1)
            a_r, a_z = a_r + u[0], a_z + u[1]
            u_n = u[2] if ra else None
        else:
            a_r, a_z = ys[0].split(H, 1)
            a_n = ys[1]
            u_n = ys[2] if ra else None
        if "bias" in v:
            b_r, b_z, b_n = v["bias"].split(H)
            a_r, a_z, a_n = a_r + b_r, a_z + b_z, a_n + b_n
        if u_n is not None and "b_hn" in v:
            u_n = u_n + v["b_hn"]
        r, z = torch.sigmoid(a_r), torch.sigmoid(a_z)
        if u_n is None:  # reset_after=False: the reset gate acts before the product
            assert plan.second is not None
            u_n = F.linear(r * h_prev, plan.second)
            if "ln_hh" in v:
                u_n = layer_norm(u_n, v["ln_hh"][2 * H :])
            n = torch.tanh(a_n + u_n)
        else:
            n = torch.tanh(a_n + r * u_n)
        h_new = (1.0 - z) * n + z * h_prev
        self.h[l].copy_(self._zoneout(h_new, h_prev, self.opts.zoneout_h))

    def _rnn(self, l: int, plan: _LayerPlan, ys: list[Tensor], h_prev: Tensor) -> None:
        a = self._sum(plan, ys)
        h_new = torch.relu(a) if self.opts.relu else torch.tanh(a)
        self.h[l].copy_(self._zoneout(h_new, h_prev, self.opts.zoneout_h))


# ---------------------------------------------------------------------------------- int8 step
_MATRICES = ("weight_ih", "weight_hh", "weight_hr")


def _int8_plans(lk: _RecurrentBase) -> tuple[list[_LayerPlan], list[tuple[Any, Any]]]:
    """The plans of an int8 step: the vectors of the float plan, no slots, ``second`` as an int8
    weight; and per layer the int8 ``W_ih`` and ``W_hh`` (the GRU's ``W_hn`` with
    ``reset_after=False`` is ``second``). The matrices of a quantized module are used as they
    are; a float module's are quantized here, as :func:`lstmkit.compress.quantize` does."""
    plans, weights = [], []
    for l, cell in enumerate(lk.cell_math):
        if isinstance(lk, _Quantized):
            params = lk._int8_params(l, 0)
        else:
            params = {
                k: _Int8Weight(*quantize_rows(v)) if k in _MATRICES else v.detach()
                for k, v in lk._params(l, 0).items()
            }
        as_float = {k: v.dequantize() if k in _MATRICES else v for k, v in params.items()}
        plan = _plan_layer(cell, as_float)
        H = cell.hidden_size
        hh = params["weight_hh"]
        second = params.get("weight_hr")
        if isinstance(cell, GRUMath) and not cell.reset_after:
            hh, second = hh[: 2 * H], hh[2 * H :]
        plans.append(replace(plan, slots=[], second=second))
        weights.append((params["weight_ih"], hh))
    return plans, weights


class _Int8Step(_TorchStep):
    """:class:`_TorchStep` with int8 weight matrices: per layer one int8 product over ``x_t``
    (``W_ih``) and one over ``h_{t-1}`` (``W_hh``), each with its own row scales, summed or kept
    apart as the family's step expects them (see ``_plan_layer`` for the layout)."""

    def __init__(
        self,
        plans: list[_LayerPlan],
        weights: list[tuple[Any, Any]],
        opts: _Options,
        state: list[Tensor],
        batch: int,
    ) -> None:
        super().__init__(plans, opts, state, batch)
        self.weights = weights

    def _products(self, l: int, products: list[Any], xh: Tensor) -> list[Tensor]:
        plan = self.layers[l][0]
        I, H = plan.input_size, plan.hidden_size
        w_ih, w_hh = self.weights[l]
        a = w_ih.linear(xh[:, :I])
        u = w_hh.linear(xh[:, I:])
        if "ln_ih" in plan.vectors:
            return [a, u]
        if self.opts.family == "gru":
            ys = [a[:, : 2 * H] + u[:, : 2 * H], a[:, 2 * H :]]
            if self.opts.reset_after:
                ys.append(u[:, 2 * H :])
            return ys
        return [a + u]


# ---------------------------------------------------------------------------------- Streamer
_TORCH_CLASSES: dict[type, type[_RecurrentBase]] = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN}


def _dtype_device(lk: _RecurrentBase) -> tuple[torch.dtype, torch.device]:
    """The dtype the module computes in and its device (a quantized module's float dtype)."""
    if isinstance(lk, _Quantized):
        return lk.compute_dtype, lk._first_scale().device
    ref = next(lk.parameters())
    return ref.dtype, ref.device


class Streamer:
    """Runs a unidirectional lstmkit ``LSTM``, ``GRU`` or ``RNN`` (or their ``torch.nn``
    counterparts) one time step at a time for ``batch_size`` independent streams.

    Built once per model and batch size: it snapshots the weights in a packed inference layout
    (per layer the concatenated ``[W_ih | W_hh]``, biases summed), allocates the state of every
    stream and all scratch and output buffers; :meth:`step` then allocates nothing. The math is
    the module's in evaluation mode (dropouts off, zoneout's expectation) regardless of
    ``module.training``; stepping through a sequence gives the module's output on the whole
    sequence. After training the module further, call :meth:`refresh`.

    Args:
        module: an :class:`lstmkit.LSTM`, :class:`~lstmkit.GRU` or :class:`~lstmkit.RNN` with any
            number of layers and variants, or a ``torch.nn.LSTM``/``GRU``/``RNN`` (read through
            ``from_torch``). Not bidirectional and not ``reverse=True``: those need the whole
            sequence before their first output.
        batch_size: the number of streams stepped together (rows of ``x`` in :meth:`step`).
        backend: ``'fused'`` (the C++ step kernel: float32 and float64 on the CPU), ``'torch'``
            (the same step in torch ops: any dtype and device) or ``'auto'`` (``'fused'`` where
            it can run; where only the missing extension stops it, a warning is given once).
            With int8 weights the step is always ``'torch'``.
        weights: ``'int8'`` steps with int8 weight matrices and per-row scales (those of a
            module made by :func:`lstmkit.compress.quantize`, or the float module's quantized
            the same way at each snapshot), the products computed by
            ``torch._weight_int8pack_mm``; ``'float'`` with the module's float weights;
            ``'auto'`` (the default) as the module stores them.

    Not thread-safe: one ``Streamer`` per serving thread (the C++ step releases the GIL, so
    several streamers run in parallel threads).
    """

    def __init__(
        self,
        module: nn.Module,
        batch_size: int = 1,
        *,
        backend: str = "auto",
        weights: str = "auto",
    ) -> None:
        self._source = module
        lk = self._lstmkit_module()
        self._batch_size = _checks.positive_int("batch_size", batch_size)
        self._requested = _checks.choice("backend", backend, STREAM_BACKENDS)
        _checks.choice("weights", weights, STREAM_WEIGHTS)
        if weights == "float" and isinstance(lk, _Quantized):
            raise ValueError(
                "weights='float' needs float weights, but the module is quantized (int8); use "
                "weights='int8' or 'auto', or lstmkit.compress.dequantize(module)"
            )
        if weights == "int8" and backend == "fused":
            raise ValueError(
                "backend='fused' has no int8 step (the C++ kernel is float32 and float64); use "
                "backend='torch' or 'auto' with weights='int8'"
            )
        self._weights = "int8" if weights == "int8" or isinstance(lk, _Quantized) else "float"
        self._dtype, self._device = _dtype_device(lk)
        cell = lk.cell_math[0]
        self._family = cell.family
        self._state_names = cell.state_names
        self._num_layers = lk.num_layers
        self._input_size = lk.input_size
        self._output_size = lk.output_size
        B, dt, dev = self._batch_size, self._dtype, self._device
        self._state_shapes = [(lk.num_layers, B, size) for size in cell.state_sizes]
        self._buffers = [torch.zeros(shape, dtype=dt, device=dev) for shape in self._state_shapes]
        self._out = torch.zeros(B, self._output_size, dtype=dt, device=dev)
        self._snapshot(lk)
        self.reset()

    # ------------------------------------------------------------------ construction
    def _lstmkit_module(self) -> _RecurrentBase:
        module = self._source
        torch_cls = _TORCH_CLASSES.get(type(module))
        if torch_cls is not None:
            assert isinstance(module, nn.RNNBase)
            with torch.random.fork_rng(devices=[]):  # its throw-away init must not use the RNG
                module = torch_cls.from_torch(module)
        if not isinstance(module, _RecurrentBase):
            raise TypeError(
                "module must be an lstmkit LSTM, GRU or RNN (or a torch.nn.LSTM, GRU or RNN), "
                f"got {type(module).__module__}.{type(module).__name__}"
            )
        if module.bidirectional:
            raise ValueError(
                "Streamer runs one step at a time from the first to the last, so the module "
                "must be unidirectional: a bidirectional module's backward direction needs the "
                "whole sequence before its first output (got bidirectional=True)"
            )
        if module.reverse:
            raise ValueError(
                "Streamer runs one step at a time from the first to the last, so the module "
                "must be unidirectional and not reversed: reverse=True reads the whole sequence "
                "from its end (got reverse=True)"
            )
        return module

    def _resolve_backend(self) -> str:
        if self._weights == "int8":
            return "torch"
        why = None
        if self._device.type != "cpu":
            why = f"tensors on {self._device}"
        elif self._dtype not in _FUSED_DTYPES:
            why = f"dtype {self._dtype}"
        ext = _extension()
        if self._requested == "torch":
            return "torch"
        if self._requested == "fused":
            if ext is None:
                raise ImportError(
                    "backend='fused' is not available: the C++ step kernel "
                    f"lstmkit._C.StepKernel is not built; {fused.BUILD_HINT}"
                )
            if why is not None:
                raise ValueError(
                    "backend='fused' runs float32 and float64 on the CPU, got a module with "
                    f"{why}; use backend='torch' or 'auto'"
                )
            return "fused"
        if why is not None:
            return "torch"
        if ext is None:
            _warn_fallback_once()
            return "torch"
        return "fused"

    def _snapshot(self, lk: _RecurrentBase) -> None:
        """Pack the module's current weights and initial state and build the step."""
        opts = _options(lk)
        with torch.no_grad():
            if self._weights == "int8":
                plans, int8 = _int8_plans(lk)
            else:
                plans = [_plan_layer(c, lk._params(l, 0)) for l, c in enumerate(lk.cell_math)]
            init = lk.initial_state(1, dtype=self._dtype, device=self._device)
            parts = list(init) if isinstance(init, tuple) else [init]
            self._init = [t[:, 0, :].detach().clone() for t in parts]
        self._backend = self._resolve_backend()
        if self._backend == "fused":
            kernel = _extension().StepKernel(
                opts.family,
                [[w for w, _ in plan.slots] for plan in plans],
                [[k0 for _, k0 in plan.slots] for plan in plans],
                [plan.second for plan in plans],
                [plan.vectors for plan in plans],
                [plan.input_size for plan in plans],
                self._buffers[0],
                self._buffers[1] if len(self._buffers) > 1 else None,
                opts.coupled,
                opts.reset_after,
                opts.relu,
                opts.residual,
                opts.cell_clip,
                opts.zoneout_h,
                opts.zoneout_c,
            )
            self._impl: Any = kernel
            self._run = kernel.step
        else:
            if self._weights == "int8":
                step: _TorchStep = _Int8Step(plans, int8, opts, self._buffers, self._batch_size)
            else:
                step = _TorchStep(plans, opts, self._buffers, self._batch_size)
            self._impl = step
            self._run = step

    # ------------------------------------------------------------------ the step
    def step(self, x: Tensor, *, out: Tensor | None = None) -> Tensor:
        """Advance every stream by one time step and return the top layer's output.

        ``x`` is ``(batch_size, input_size)``, one row per stream, with the module's dtype and
        device (any strides). Returns ``(batch_size, output_size)``: by default a buffer owned by
        the streamer, **overwritten by the next call** (copy it, or pass ``out``, to keep it);
        with ``out`` (a tensor of that shape, dtype and device whose elements do not overlap)
        the output is written there and ``out`` is returned. Nothing is allocated and no
        autograd graph is recorded.
        """
        dest = self._out if out is None else out
        try:
            ok = self._run(x, dest)
        except TypeError as err:  # not a tensor: the binding refuses it
            self._explain_bad_call(x, out, err)
        if not ok:
            self._explain_bad_call(x, out, None)
        return dest

    def _explain_bad_call(self, x: Any, out: Any, cause: Exception | None) -> NoReturn:
        B = self._batch_size
        dt, dev = self._dtype, self._device
        _check_step_tensor("x", x, (B, self._input_size), "(batch_size, input_size)", dt, dev)
        if out is not None:
            what = "(batch_size, output_size)"
            _check_step_tensor("out", out, (B, self._output_size), what, dt, dev)
            if not _non_overlapping(out):
                raise ValueError(
                    f"out must not have elements that share memory (it is written to), got "
                    f"strides {out.stride()} for shape {tuple(out.shape)}"
                )
        if cause is not None:
            raise cause
        raise RuntimeError("lstmkit.streaming: the step refused its arguments")  # not reached

    # ------------------------------------------------------------------ state
    def get_state(self) -> Any:
        """A copy of the current state in the module's ``hx`` format: ``h`` ``(num_layers,
        batch_size, output size)``, or ``(h, c)`` for an LSTM (``c`` with ``hidden_size``)."""
        parts = [b.clone() for b in self._buffers]
        return tuple(parts) if len(parts) > 1 else parts[0]

    def set_state(self, hx: Any) -> None:
        """Set every stream's state from ``hx`` in the module's format (copied in: later changes
        to ``hx`` do not reach the streamer)."""
        names = self._state_names
        if len(names) > 1:
            if not isinstance(hx, (tuple, list)) or len(hx) != len(names):
                raise TypeError(
                    f"hx must be a tuple ({', '.join(n + '_0' for n in names)}) for "
                    f"{self._family.upper()}, got {_checks.describe(hx)}"
                )
            parts = list(hx)
        else:
            parts = [hx]
        like = torch.empty(0, dtype=self._dtype, device=self._device)
        for k, (name, value, shape) in enumerate(
            zip(names, parts, self._state_shapes, strict=True)
        ):
            arg = "hx" if len(names) == 1 else f"hx[{k}] ({name}_0)"
            _checks.state_tensor(arg, value, shape, like)
        with torch.no_grad():
            for buf, value in zip(self._buffers, parts, strict=True):
                buf.copy_(value)

    @property
    def state(self) -> Any:
        """The current state (a copy), as :meth:`get_state`; assigning it calls
        :meth:`set_state`."""
        return self.get_state()

    @state.setter
    def state(self, hx: Any) -> None:
        self.set_state(hx)

    def reset(self, mask: Tensor | None = None) -> None:
        """Put streams back to the module's initial state (zeros, or the learned initial state
        with ``learn_initial_state=True``): all of them, or those where the bool ``mask``
        ``(batch_size,)`` is True (e.g. a new request in that slot). Others are untouched."""
        B = self._batch_size
        if mask is not None:
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                raise TypeError(
                    f"mask must be a bool tensor of shape ({B},) or None, "
                    f"got {_checks.describe(mask)}"
                )
            if tuple(mask.shape) != (B,):
                raise ValueError(f"mask must have shape ({B},), got {tuple(mask.shape)}")
        with torch.no_grad():
            for buf, init in zip(self._buffers, self._init, strict=True):
                full = init[:, None, :].expand_as(buf)
                if mask is None:
                    buf.copy_(full)
                else:
                    buf.copy_(torch.where(mask.to(buf.device)[None, :, None], full, buf))

    def refresh(self) -> None:
        """Snapshot the module's weights (and learned initial state) again, e.g. after more
        training. The streams' state and the output buffer are kept."""
        lk = self._lstmkit_module()
        dtype, device = _dtype_device(lk)
        if (dtype, device) != (self._dtype, self._device):
            raise ValueError(
                f"the module moved from {self._dtype} on {self._device} to {dtype} on "
                f"{device} since the Streamer was built; build a new Streamer for it"
            )
        if (lk.input_size, lk.output_size, lk.num_layers, lk.cell_math[0].family) != (
            self._input_size,
            self._output_size,
            self._num_layers,
            self._family,
        ):
            raise ValueError("the module's shape changed since the Streamer was built")
        self._snapshot(lk)

    # ------------------------------------------------------------------ description
    @property
    def module(self) -> nn.Module:
        """The module the streamer was built from."""
        return self._source

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def input_size(self) -> int:
        return self._input_size

    @property
    def output_size(self) -> int:
        """Features of each stream's output per step (``proj_size`` or ``hidden_size``)."""
        return self._output_size

    @property
    def num_layers(self) -> int:
        return self._num_layers

    @property
    def backend(self) -> str:
        """The backend in use: ``'fused'`` (C++ step kernel) or ``'torch'``."""
        return self._backend

    @property
    def weights(self) -> str:
        """The weights the step uses: ``'float'`` or ``'int8'``."""
        return self._weights

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def __repr__(self) -> str:
        return (
            f"Streamer({type(self._source).__name__}, batch_size={self._batch_size}, "
            f"input_size={self._input_size}, output_size={self._output_size}, "
            f"num_layers={self._num_layers}, backend={self._backend!r}"
            + (", weights='int8')" if self._weights == "int8" else ")")
        )


__all__ = ["STREAM_BACKENDS", "Streamer"]
