"""Drop-in ``LSTM``, ``GRU`` and ``RNN`` layers: ``torch.nn`` signatures, names and shapes, plus
every classic variant as a constructor argument.

A layer owns its parameters under ``torch.nn``'s names (``weight_ih_l0``, ``bias_hh_l1_reverse``,
``weight_hr_l0`` ...) and composes, per layer and direction, one :class:`~lstmkit.cells.CellMath`
(the math of a step) with :func:`~lstmkit.recurrent.run_direction` (the time loop).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .. import _checks
from ..backends import BACKENDS
from ..cells import CellMath, GRUMath, LSTMMath, RNNMath, State, resolve_init
from ..recurrent import Rates, run_direction, valid_mask

MERGES = ("concat", "sum", "mean")


#: ``steps * batch * hidden`` from which training a layer of at most 256 units stays on the fused
#: kernels: torch's gate buffers (4 x that many floats) reach 32 MB, glibc's largest mmap
#: threshold, so torch maps them fresh and faults them in on every call
LONG_TRAINING = 2**21


def _torch_is_faster(
    family: str, steps: int, batch: int, hidden: int, proj_size: int, grad: bool
) -> bool:
    """Whether torch's own CPU kernel (oneDNN for the LSTM) runs a plain float32 configuration
    faster than the fused kernels, on the machine this was measured on.

    Measured by ``python -m benchmarks.dispatch`` (AMD EPYC with AVX-512; the grids are in
    docs/benchmarks.md): torch's GRU and RNN, and its LSTM with a projection, are always slower
    than the fused kernels. At T=50 (2 threads) its LSTM is 5-15% faster than them from 128
    units with batches of 16 or more, and in training from 256 units at any batch size; the
    fused kernels win with 64 units, and with small batches in inference or at 128 units
    (their per-step overhead is lower). In training on long batches (``steps * batch * hidden
    >= LONG_TRAINING``) torch's buffers are mapped and faulted in afresh on every call, half of
    its time at T=1000, B=64, H=128 (581 million page faults in 4000 updates): there the fused
    kernels, whose buffers are cached, take 0.66-0.91 of torch's time up to 256 units (T=1000,
    one thread); at 512 units the products dominate and torch stays. Rerun the script after
    changing the kernels or on another machine, and update the rule here.
    """
    if family != "lstm" or proj_size or hidden < 128:
        return False
    if grad and hidden <= 256 and steps * batch * hidden >= LONG_TRAINING:
        return False
    return batch >= 16 or (grad and hidden >= 256)


def _zoneout_rates(value: Any, state_names: Sequence[str]) -> tuple[float, ...]:
    """Normalise ``zoneout`` to one rate per state component (h, or h and c)."""
    if isinstance(value, (tuple, list)):
        if len(value) != len(state_names):
            names = ", ".join(state_names)
            raise ValueError(
                f"zoneout must be a float or a tuple of {len(state_names)} rates ({names}), "
                f"got {tuple(value)!r}"
            )
        return tuple(
            _checks.probability(f"zoneout[{n}]", v) for v, n in zip(value, state_names, strict=True)
        )
    rate = _checks.probability("zoneout", value)
    return (rate,) * len(state_names)


class _RecurrentBase(nn.Module):
    """Stack of recurrent layers shared by :class:`LSTM`, :class:`GRU` and :class:`RNN`."""

    _torch_class: type[nn.RNNBase]

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        bias: bool,
        batch_first: bool,
        dropout: float,
        bidirectional: bool,
        *,
        cell_factory: Any,
        reverse: bool,
        residual: bool,
        bidirectional_merge: str,
        learn_initial_state: bool,
        input_dropout: float,
        recurrent_dropout: float,
        weight_drop: float,
        zoneout: Any,
        init: str,
        forget_bias: float | None,
        chrono_init: float | None,
        backend: str,
        recompute: bool,
        device: Any,
        dtype: Any,
    ) -> None:
        super().__init__()
        self.mode = mode
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.num_layers = _checks.positive_int("num_layers", num_layers)
        self.bias = _checks.boolean("bias", bias)
        self.batch_first = _checks.boolean("batch_first", batch_first)
        self.dropout = _checks.probability("dropout", dropout)
        self.bidirectional = _checks.boolean("bidirectional", bidirectional)
        self.reverse = _checks.boolean("reverse", reverse)
        self.residual = _checks.boolean("residual", residual)
        self.bidirectional_merge = _checks.choice(
            "bidirectional_merge", bidirectional_merge, MERGES
        )
        self.learn_initial_state = _checks.boolean("learn_initial_state", learn_initial_state)
        self.input_dropout = _checks.probability("input_dropout", input_dropout)
        self.recurrent_dropout = _checks.probability("recurrent_dropout", recurrent_dropout)
        self.weight_drop = _checks.probability("weight_drop", weight_drop)
        self.backend = _checks.choice("backend", backend, BACKENDS)
        self.recompute = _checks.boolean("recompute", recompute)
        if self.reverse and self.bidirectional:
            raise ValueError(
                "reverse=True and bidirectional=True cannot be combined: a bidirectional layer "
                "already runs one direction reversed"
            )
        if bidirectional_merge != "concat" and not self.bidirectional:
            raise ValueError(
                f"bidirectional_merge={bidirectional_merge!r} needs bidirectional=True"
            )
        if self.residual and self.num_layers < 2:
            raise ValueError(
                "residual=True adds skip connections between stacked layers and "
                f"needs num_layers >= 2, got num_layers={self.num_layers}"
            )
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(
                "dropout applies between stacked layers and has no effect with num_layers=1 "
                f"(got dropout={self.dropout}); use input_dropout or recurrent_dropout instead",
                stacklevel=3,
            )

        self.num_directions = 2 if self.bidirectional else 1
        cells: list[CellMath] = []
        layer_input = self.input_size
        for _ in range(self.num_layers):
            cell = cell_factory(layer_input)
            cells.append(cell)
            out = cell.output_size
            layer_input = out * self.num_directions if self.bidirectional_merge == "concat" else out
        self._cells = cells
        self.proj_size = getattr(cells[0], "proj_size", 0)
        self.zoneout = _zoneout_rates(zoneout, cells[0].state_names)
        self.init, self.forget_bias, self.chrono_init = resolve_init(
            cells[0].family, type(self).__name__, init, forget_bias, chrono_init, self.bias
        )

        factory = {"device": device, "dtype": dtype}
        self._param_names: list[list[list[tuple[str, str]]]] = []
        for layer, cell in enumerate(cells):
            per_direction = []
            for direction in range(self.num_directions):
                names = []
                for base, shape in cell.parameter_shapes().items():
                    full = self._full_name(base, layer, direction)
                    self.register_parameter(full, nn.Parameter(torch.empty(shape, **factory)))
                    names.append((base, full))
                per_direction.append(names)
                if self.learn_initial_state:
                    for state_name, size in zip(cell.state_names, cell.state_sizes, strict=True):
                        full = self._full_name(f"{state_name}0", layer, direction)
                        self.register_parameter(full, nn.Parameter(torch.zeros(size, **factory)))
            self._param_names.append(per_direction)
        self.reset_parameters()

    # ------------------------------------------------------------------ names and params
    @staticmethod
    def _full_name(base: str, layer: int, direction: int) -> str:
        return f"{base}_l{layer}{'_reverse' if direction else ''}"

    def _params(self, layer: int, direction: int) -> dict[str, Tensor]:
        return {base: getattr(self, full) for base, full in self._param_names[layer][direction]}

    def reset_parameters(self) -> None:
        """Re-initialise every parameter with the scheme chosen by ``init``."""
        for layer, cell in enumerate(self._cells):
            for direction in range(self.num_directions):
                cell.init_parameters(
                    self._params(layer, direction),
                    self.init,
                    forget_bias=self.forget_bias,
                    chrono_init=self.chrono_init,
                )
                if self.learn_initial_state:
                    for name in cell.state_names:
                        nn.init.zeros_(getattr(self, self._full_name(f"{name}0", layer, direction)))

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """Parameters grouped per layer and direction, as ``torch.nn.RNNBase.all_weights``."""
        return [
            [getattr(self, full) for _, full in names]
            for per_direction in self._param_names
            for names in per_direction
        ]

    def flatten_parameters(self) -> None:
        """Kept for drop-in compatibility: lstmkit's parameters need no flattening (no cuDNN)."""

    @property
    def cell_math(self) -> list[CellMath]:
        """The :class:`~lstmkit.cells.CellMath` of each layer (shared by both directions)."""
        return list(self._cells)

    @property
    def output_size(self) -> int:
        """Features per time step of the output."""
        out = self._cells[-1].output_size
        return out * self.num_directions if self.bidirectional_merge == "concat" else out

    def variant_options(self) -> dict[str, object]:
        """Every option that ``torch.nn`` does not have, with its current value."""
        opts: dict[str, object] = dict(self._cells[0].options())
        opts.pop("proj_size", None)
        opts.pop("nonlinearity", None)
        opts.update(
            reverse=self.reverse,
            residual=self.residual,
            bidirectional_merge=self.bidirectional_merge,
            learn_initial_state=self.learn_initial_state,
            input_dropout=self.input_dropout,
            recurrent_dropout=self.recurrent_dropout,
            weight_drop=self.weight_drop,
            zoneout=self.zoneout,
        )
        return opts

    _TORCH_DEFAULTS: ClassVar[dict[str, object]] = {
        "peephole": False,
        "layer_norm": False,
        "coupled_gates": False,
        "cell_clip": None,
        "reset_after": True,
        "reverse": False,
        "residual": False,
        "bidirectional_merge": "concat",
        "learn_initial_state": False,
        "input_dropout": 0.0,
        "recurrent_dropout": 0.0,
        "weight_drop": 0.0,
    }

    def non_torch_options(self) -> list[str]:
        """Names of the options set to something ``torch.nn`` cannot express."""
        names = [
            k
            for k, v in self.variant_options().items()
            if k in self._TORCH_DEFAULTS and v != self._TORCH_DEFAULTS[k]
        ]
        if any(self.zoneout):
            names.append("zoneout")
        return names

    # ------------------------------------------------------------------ state
    def _state_shape(self, size: int, batch: int | None) -> tuple[int, ...]:
        lead = self.num_layers * self.num_directions
        return (lead, size) if batch is None else (lead, batch, size)

    def _initial_components(self, batch: int, like: Tensor) -> list[Tensor]:
        cell = self._cells[0]
        comps = []
        for name, size in zip(cell.state_names, cell.state_sizes, strict=True):
            if self.learn_initial_state:
                rows = [
                    getattr(self, self._full_name(f"{name}0", layer, direction))
                    for layer in range(self.num_layers)
                    for direction in range(self.num_directions)
                ]
                comp = torch.stack(rows)[:, None, :].expand(-1, batch, -1)
                comps.append(comp.to(dtype=like.dtype, device=like.device))
            else:
                comps.append(like.new_zeros(self._state_shape(size, batch)))
        return comps

    def _pack_state(self, comps: Sequence[Tensor]) -> Any:
        return tuple(comps) if len(comps) > 1 else comps[0]

    def initial_state(
        self, batch_size: int, *, dtype: torch.dtype | None = None, device: Any = None
    ) -> Any:
        """The state a sequence starts from when ``hx`` is None: zeros, or the learned initial
        state with ``learn_initial_state=True``. Shaped like ``hx`` of ``torch.nn``."""
        _checks.positive_int("batch_size", batch_size, allow_zero=True)
        ref = next(self.parameters())
        like = torch.empty(0, dtype=dtype or ref.dtype, device=device or ref.device)
        return self._pack_state(self._initial_components(batch_size, like))

    def reset_state(self, hx: Any, mask: Tensor) -> Any:
        """Return ``hx`` with the batch entries where ``mask`` is True set back to the initial
        state (zeros, or the learned initial state); the other entries are untouched.

        Use it at document or episode boundaries when carrying state across calls. ``mask`` is a
        bool tensor of shape ``(batch,)``. The result is a new tensor: autograd through the kept
        rows is preserved.
        """
        comps = self._state_components(hx)
        batch = comps[0].shape[1]
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(
                f"mask must be a bool tensor of shape ({batch},), got {_checks.describe(mask)}"
            )
        if tuple(mask.shape) != (batch,):
            raise ValueError(f"mask must have shape ({batch},), got {tuple(mask.shape)}")
        init = self._initial_components(batch, comps[0])
        m = mask.to(comps[0].device)[None, :, None]
        return self._pack_state([torch.where(m, i, c) for i, c in zip(init, comps, strict=True)])

    def _split_hx(self, hx: Any) -> list[Any]:
        """``hx`` as a list of its components (h, or h and c), checking its structure."""
        names = self._cells[0].state_names
        if len(names) == 1:
            return [hx]
        if isinstance(hx, (tuple, list)) and len(hx) == len(names):
            return list(hx)
        raise TypeError(
            f"hx must be a tuple ({', '.join(n + '_0' for n in names)}) for "
            f"{type(self).__name__}, got {_checks.describe(hx)}"
        )

    def _state_components(self, hx: Any) -> list[Tensor]:
        comps = self._split_hx(hx)
        names = self._cells[0].state_names
        for name, c in zip(names, comps, strict=True):
            if not isinstance(c, torch.Tensor) or c.dim() != 3:
                raise ValueError(f"hx {name}_0 must be a 3-D tensor, got {_checks.describe(c)}")
        return comps

    def _check_hx(self, hx: Any, batch: int, x: Tensor, unbatched: bool) -> list[State]:
        cell = self._cells[0]
        if hx is None:
            comps = self._initial_components(batch, x)
        else:
            names = cell.state_names
            raw = self._split_hx(hx)
            comps = []
            for name, size, value in zip(names, cell.state_sizes, raw, strict=True):
                expected = self._state_shape(size, None if unbatched else batch)
                arg = "hx" if len(names) == 1 else f"hx[{names.index(name)}] ({name}_0)"
                _checks.state_tensor(arg, value, expected, x)
                comps.append(value.unsqueeze(1) if unbatched else value)
        return [tuple(parts) for parts in zip(*(c.unbind(0) for c in comps), strict=True)]

    # ------------------------------------------------------------------ forward
    def forward(self, input: Any, hx: Any = None, lengths: Any = None) -> tuple[Any, Any]:
        """Run the stack. ``input`` is ``(T, B, input_size)`` (``(B, T, input_size)`` with
        ``batch_first``), ``(T, input_size)`` unbatched, or a ``PackedSequence``.

        ``lengths`` (B,) gives each sequence's valid length without packing: outputs past it are
        zero and the final state is the one at the last valid step (a zero length returns the
        initial state). Returns ``output, h_n`` (``output, (h_n, c_n)`` for LSTM) shaped as
        ``torch.nn`` does.
        """
        x, states, lengths, packed, unbatched = self._prepare_input(input, hx, lengths)
        if self._torch_path(x, lengths):
            y, finals = self._run_torch(x, states)
        else:
            y, finals = self._run(x, states, lengths)

        n_comp = len(self._cells[0].state_names)
        comps = [torch.stack([f[k] for f in finals]) for k in range(n_comp)]
        if packed:
            output: Any = self._repack(y, input, lengths)
        elif unbatched:
            output = y.squeeze(1)
            comps = [c.squeeze(1) for c in comps]
        else:
            output = y.transpose(0, 1) if self.batch_first else y
        return output, self._pack_state(comps)

    def _prepare_input(
        self, input: Any, hx: Any, lengths: Any
    ) -> tuple[Tensor, list[State], Tensor | None, bool, bool]:
        """Check ``forward``'s arguments and return the time-major input ``(T, B, F)``, the
        initial state of every layer and direction, the checked lengths (or ``None``), and
        whether the input was packed and whether it was unbatched. Also used by
        :mod:`lstmkit.diagnostics`, which runs the same stack step by step."""
        packed = isinstance(input, PackedSequence)
        unbatched = False
        if packed:
            if lengths is not None:
                raise ValueError(
                    "lengths must be None when input is a PackedSequence: it carries its lengths"
                )
            _checks.floating_tensor("input", input.data)
            x, lens = pad_packed_sequence(input, batch_first=False)
            lengths = lens
        else:
            x = _checks.floating_tensor("input", input)
            if x.dim() not in (2, 3):
                layout = "(B, T, features)" if self.batch_first else "(T, B, features)"
                raise ValueError(
                    f"input must be 3-D {layout} or 2-D (T, features) unbatched, "
                    f"got shape {tuple(x.shape)}"
                )
            unbatched = x.dim() == 2
            if unbatched:
                x = x.unsqueeze(1)
            elif self.batch_first:
                x = x.transpose(0, 1)
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"input must have {self.input_size} features (input_size) in its last dimension, "
                f"got {x.shape[-1]} (input shape {tuple(x.shape)})"
            )
        _checks.matches_parameters("input", x, self._params(0, 0)["weight_ih"])
        T, B = x.shape[0], x.shape[1]
        if lengths is not None:
            lengths = _checks.lengths_tensor(lengths, T, B, x.device)
        states = self._check_hx(hx, B, x, unbatched)
        return x, states, lengths, packed, unbatched

    @staticmethod
    def _repack(y: Tensor, like: PackedSequence, lengths: Tensor) -> PackedSequence:
        order = like.sorted_indices
        if order is not None:
            y = y.index_select(1, order)
            lengths = lengths.index_select(0, order.to(lengths.device))
        data = pack_padded_sequence(y, lengths.cpu(), enforce_sorted=True).data
        return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)

    def _run(
        self, x: Tensor, states: list[State], lengths: Tensor | None
    ) -> tuple[Tensor, list[State]]:
        T = x.shape[0]
        valid = valid_mask(lengths, T)
        training = self.training
        rates = Rates(self.input_dropout, self.recurrent_dropout, self.weight_drop, self.zoneout)
        layer_input = x
        finals: list[State] = []
        for layer, cell in enumerate(self._cells):
            outputs = []
            for direction in range(self.num_directions):
                y, final = run_direction(
                    cell,
                    self._params(layer, direction),
                    layer_input,
                    states[layer * self.num_directions + direction],
                    lengths=lengths,
                    valid=valid,
                    reverse=self.reverse or direction == 1,
                    rates=rates,
                    training=training,
                    backend=self.backend,
                    recompute=self.recompute,
                )
                outputs.append(y)
                finals.append(final)
            out = self._merge(outputs)
            if self.residual and layer > 0:
                out = out + layer_input
            if training and self.dropout and layer < self.num_layers - 1:
                out = F.dropout(out, self.dropout, True)
            layer_input = out
        return layer_input, finals

    _TORCH_FUNCTIONS: ClassVar[dict[str, Any]] = {
        "lstm": torch.lstm,
        "gru": torch.gru,
        "rnn_tanh": torch.rnn_tanh,
        "rnn_relu": torch.rnn_relu,
    }

    def _torch_function_name(self) -> str:
        return self._cells[0].family

    def _torch_path(self, x: Tensor, lengths: Tensor | None) -> bool:
        """Whether ``backend='auto'`` hands this call to torch's own implementation: only for
        configurations whose math is exactly torch's (no lstmkit-only option, no lengths), with
        no inter-layer dropout mask to draw in training (torch would draw it from the random
        stream differently from the other backends), and where torch is the faster path: on a
        GPU always (cuDNN; the fused kernels are CPU-only), on the CPU where
        :func:`_torch_is_faster` says so, in float32."""
        if self.backend != "auto" or lengths is not None or self.non_torch_options():
            return False
        if self.training and self.dropout and self.num_layers > 1:
            return False
        if x.device.type != "cpu":
            return True
        family = self._cells[0].family
        grad = torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self.parameters())
        )
        return x.dtype == torch.float32 and _torch_is_faster(
            family, x.shape[0], x.shape[1], self.hidden_size, self.proj_size, grad
        )

    def _run_torch(self, x: Tensor, states: list[State]) -> tuple[Tensor, list[State]]:
        """The whole stack through ``torch.lstm`` / ``torch.gru`` / ``torch.rnn_*`` (what
        ``torch.nn`` runs) on this module's own parameters, which have torch's layout."""
        flat = [
            t
            for layer in range(self.num_layers)
            for direction in range(self.num_directions)
            for t in self._params(layer, direction).values()
        ]
        n_comp = len(self._cells[0].state_names)
        comps = [torch.stack([s[k] for s in states]) for k in range(n_comp)]
        fn = self._TORCH_FUNCTIONS[self._torch_function_name()]
        hx: Any = tuple(comps) if n_comp > 1 else comps[0]
        args = (self.bias, self.num_layers, float(self.dropout), self.training, self.bidirectional)
        y, *finals = fn(x, hx, flat, *args, False)
        per_state = [tuple(f[k] for f in finals) for k in range(finals[0].shape[0])]
        return y, per_state

    def _merge(self, outputs: list[Tensor]) -> Tensor:
        if len(outputs) == 1:
            return outputs[0]
        if self.bidirectional_merge == "concat":
            return torch.cat(outputs, -1)
        total = outputs[0] + outputs[1]
        return total if self.bidirectional_merge == "sum" else total * 0.5

    # ------------------------------------------------------------------ torch interop
    def _torch_kwargs(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "bias": self.bias,
            "batch_first": self.batch_first,
            "dropout": self.dropout,
            "bidirectional": self.bidirectional,
        }

    @classmethod
    def from_torch(cls, module: nn.RNNBase, **options: Any) -> Any:
        """Build the lstmkit equivalent of a ``torch.nn`` module with the same weights.

        Extra keyword ``options`` (e.g. ``backend``) are passed to the constructor; they must not
        change the parameter set.
        """
        if not isinstance(module, cls._torch_class):
            raise TypeError(
                f"module must be a torch.nn.{cls._torch_class.__name__}, got "
                f"{type(module).__module__}.{type(module).__name__}"
            )
        kwargs: dict[str, Any] = {
            "input_size": module.input_size,
            "hidden_size": module.hidden_size,
            "num_layers": module.num_layers,
            "bias": module.bias,
            "batch_first": module.batch_first,
            "dropout": float(module.dropout),
            "bidirectional": module.bidirectional,
            "init": "torch",
        }
        kwargs.update(cls._extra_torch_kwargs(module))
        kwargs.update(options)
        ref = next(module.parameters())
        new = cls(**kwargs, device=ref.device, dtype=ref.dtype)
        theirs, ours = set(module.state_dict()), set(new.state_dict())
        if theirs != ours:
            changed = sorted(ours ^ theirs)
            raise ValueError(
                f"from_torch options {sorted(options)} change the parameter set "
                f"(parameters not in both: {', '.join(changed[:4])}"
                f"{', ...' if len(changed) > 4 else ''}); from_torch copies torch's weights, so "
                "pass only options that keep the parameters, such as backend or the dropouts"
            )
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new

    @classmethod
    def _extra_torch_kwargs(cls, module: nn.RNNBase) -> dict[str, Any]:
        return {}

    def to_torch(self) -> nn.RNNBase:
        """The equivalent ``torch.nn`` module with the same weights.

        Raises ``ValueError`` naming the options ``torch.nn`` has no equivalent for.
        """
        extra = self.non_torch_options()
        if extra:
            raise ValueError(
                f"{type(self).__name__} cannot be converted to "
                f"torch.nn.{self._torch_class.__name__}: "
                f"torch.nn has no equivalent of {', '.join(extra)}"
            )
        ref = next(self.parameters())
        m = self._torch_class(**self._torch_kwargs(), device=ref.device, dtype=ref.dtype)
        m.load_state_dict(self.state_dict())
        m.train(self.training)
        return m

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for key in ("bias", "batch_first", "dropout", "bidirectional"):
            default = {"bias": True}.get(key, False if key != "dropout" else 0.0)
            if getattr(self, key) != default:
                s += f", {key}={getattr(self, key)}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        options = self.variant_options()
        for key in self.non_torch_options():
            s += f", {key}={options[key]}"
        return s


# ---------------------------------------------------------------------- the three families
def _common_kwargs(  # the keyword options every family shares
    *,
    reverse: bool,
    residual: bool,
    bidirectional_merge: str,
    learn_initial_state: bool,
    input_dropout: float,
    recurrent_dropout: float,
    weight_drop: float,
    zoneout: Any,
    init: str,
    chrono_init: float | None,
    backend: str,
    recompute: bool,
    device: Any,
    dtype: Any,
) -> dict[str, Any]:
    return dict(
        reverse=reverse,
        residual=residual,
        bidirectional_merge=bidirectional_merge,
        learn_initial_state=learn_initial_state,
        input_dropout=input_dropout,
        recurrent_dropout=recurrent_dropout,
        weight_drop=weight_drop,
        zoneout=zoneout,
        init=init,
        chrono_init=chrono_init,
        backend=backend,
        recompute=recompute,
        device=device,
        dtype=dtype,
    )


class LSTM(_RecurrentBase):
    """Multi-layer LSTM, drop-in for :class:`torch.nn.LSTM`, with every classic variant.

    The first eight arguments are those of ``torch.nn.LSTM`` in its order. The rest are keyword
    only; see ``docs/options.md`` for each with its reference and default.

    ``recompute=True`` trades time for activation memory in training: the fused backend then
    saves only the states of every step (h and c) for backward, which recomputes the gate
    activations from them (bitwise the same gradients, about a forward's worth of extra work).
    The reference backend ignores it: its autograd loop keeps every tensor autograd saves.
    """

    _torch_class = nn.LSTM

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        peephole: bool = False,
        layer_norm: bool = False,
        coupled_gates: bool = False,
        cell_clip: float | None = None,
        reverse: bool = False,
        residual: bool = False,
        bidirectional_merge: str = "concat",
        learn_initial_state: bool = False,
        input_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        weight_drop: float = 0.0,
        zoneout: float | tuple[float, float] = 0.0,
        init: str = "default",
        forget_bias: float | None = None,
        chrono_init: float | None = None,
        backend: str = "auto",
        recompute: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:

        def factory(layer_input: int) -> LSTMMath:
            return LSTMMath(
                layer_input,
                hidden_size,
                bias=bias,
                proj_size=proj_size,
                peephole=peephole,
                layer_norm=layer_norm,
                coupled_gates=coupled_gates,
                cell_clip=cell_clip,
            )

        super().__init__(
            "LSTM",
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            cell_factory=factory,
            forget_bias=forget_bias,
            **_common_kwargs(
                reverse=reverse,
                residual=residual,
                bidirectional_merge=bidirectional_merge,
                learn_initial_state=learn_initial_state,
                input_dropout=input_dropout,
                recurrent_dropout=recurrent_dropout,
                weight_drop=weight_drop,
                zoneout=zoneout,
                init=init,
                chrono_init=chrono_init,
                backend=backend,
                recompute=recompute,
                device=device,
                dtype=dtype,
            ),
        )

    @classmethod
    def _extra_torch_kwargs(cls, module: nn.RNNBase) -> dict[str, Any]:
        return {"proj_size": module.proj_size}

    def _torch_kwargs(self) -> dict[str, Any]:
        return {**super()._torch_kwargs(), "proj_size": self.proj_size}

    def forward(  # type: ignore[override]
        self, input: Any, hx: Any = None, lengths: Any = None
    ) -> tuple[Any, tuple[Tensor, Tensor]]:
        """Run the stack and return ``output, (h_n, c_n)`` shaped as ``torch.nn.LSTM`` does.

        ``input`` is ``(T, B, input_size)`` (``(B, T, input_size)`` with ``batch_first``),
        ``(T, input_size)`` unbatched, or a ``PackedSequence``. ``lengths`` (B,) gives each
        sequence's valid length without packing: outputs past it are zero and the final state is
        the one at the last valid step (a zero length returns the initial state).
        """
        return super().forward(input, hx, lengths)


class GRU(_RecurrentBase):
    """Multi-layer GRU, drop-in for :class:`torch.nn.GRU`, with ``reset_after`` (the Cho et al.
    2014 form when False), ``layer_norm`` and every layer-level variant of :class:`LSTM`
    (``recompute`` included: the fused backend then saves only the h of every step)."""

    _torch_class = nn.GRU

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        reset_after: bool = True,
        layer_norm: bool = False,
        reverse: bool = False,
        residual: bool = False,
        bidirectional_merge: str = "concat",
        learn_initial_state: bool = False,
        input_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        weight_drop: float = 0.0,
        zoneout: float = 0.0,
        init: str = "default",
        chrono_init: float | None = None,
        backend: str = "auto",
        recompute: bool = False,
        proj_size: int = 0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        if proj_size:
            raise ValueError(
                f"proj_size is only supported by LSTM, not GRU (got proj_size={proj_size})"
            )

        def factory(layer_input: int) -> GRUMath:
            return GRUMath(
                layer_input, hidden_size, bias=bias, reset_after=reset_after, layer_norm=layer_norm
            )

        super().__init__(
            "GRU",
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            cell_factory=factory,
            forget_bias=None,
            **_common_kwargs(
                reverse=reverse,
                residual=residual,
                bidirectional_merge=bidirectional_merge,
                learn_initial_state=learn_initial_state,
                input_dropout=input_dropout,
                recurrent_dropout=recurrent_dropout,
                weight_drop=weight_drop,
                zoneout=zoneout,
                init=init,
                chrono_init=chrono_init,
                backend=backend,
                recompute=recompute,
                device=device,
                dtype=dtype,
            ),
        )


class RNN(_RecurrentBase):
    """Multi-layer Elman RNN, drop-in for :class:`torch.nn.RNN` (note ``nonlinearity`` is the
    fourth positional argument, as in torch), with ``layer_norm``, IRNN initialisation
    (``init='identity'``) and every layer-level variant of :class:`LSTM` (``recompute``
    included: the fused backend then saves only the h of every step)."""

    _torch_class = nn.RNN

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        layer_norm: bool = False,
        reverse: bool = False,
        residual: bool = False,
        bidirectional_merge: str = "concat",
        learn_initial_state: bool = False,
        input_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        weight_drop: float = 0.0,
        zoneout: float = 0.0,
        init: str = "default",
        chrono_init: float | None = None,
        backend: str = "auto",
        recompute: bool = False,
        proj_size: int = 0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        if proj_size:
            raise ValueError(
                f"proj_size is only supported by LSTM, not RNN (got proj_size={proj_size})"
            )
        self.nonlinearity = nonlinearity

        def factory(layer_input: int) -> RNNMath:
            return RNNMath(
                layer_input,
                hidden_size,
                bias=bias,
                nonlinearity=nonlinearity,
                layer_norm=layer_norm,
            )

        mode = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}.get(nonlinearity, "RNN")
        super().__init__(
            mode,
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            cell_factory=factory,
            forget_bias=None,
            **_common_kwargs(
                reverse=reverse,
                residual=residual,
                bidirectional_merge=bidirectional_merge,
                learn_initial_state=learn_initial_state,
                input_dropout=input_dropout,
                recurrent_dropout=recurrent_dropout,
                weight_drop=weight_drop,
                zoneout=zoneout,
                init=init,
                chrono_init=chrono_init,
                backend=backend,
                recompute=recompute,
                device=device,
                dtype=dtype,
            ),
        )

    @classmethod
    def _extra_torch_kwargs(cls, module: nn.RNNBase) -> dict[str, Any]:
        return {"nonlinearity": module.nonlinearity}

    def _torch_kwargs(self) -> dict[str, Any]:
        return {**super()._torch_kwargs(), "nonlinearity": self.nonlinearity}

    def _torch_function_name(self) -> str:
        return f"rnn_{self.nonlinearity}"


__all__ = ["GRU", "LSTM", "RNN"]
