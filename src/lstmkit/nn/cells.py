"""Single-step cells, drop-in for ``torch.nn.LSTMCell``, ``GRUCell`` and ``RNNCell``.

A cell module owns ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` (and the variant
parameters) under ``torch.nn``'s names and runs one :class:`~lstmkit.cells.CellMath` step. The
sequence-level options (lengths, direction, dropout masks, zoneout) belong to the layers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .. import _checks
from ..cells import CellMath, GRUMath, LSTMMath, RNNMath, resolve_init

# The value of each variant option that reproduces the plain ``torch.nn`` cell.
_TORCH_DEFAULTS: dict[str, object] = {
    "proj_size": 0,
    "peephole": False,
    "layer_norm": False,
    "coupled_gates": False,
    "cell_clip": None,
    "reset_after": True,
}


class _CellBase(nn.Module):
    _torch_class: type[nn.Module]

    def __init__(
        self,
        math: CellMath,
        *,
        init: str,
        forget_bias: float | None,
        chrono_init: float | None,
        device: Any,
        dtype: Any,
    ) -> None:
        super().__init__()
        self._math = math
        self.input_size = math.input_size
        self.hidden_size = math.hidden_size
        self.bias = math.bias
        self.init, self.forget_bias, self.chrono_init = resolve_init(
            math.family, type(self).__name__, init, forget_bias, chrono_init, math.bias
        )
        for name, shape in math.parameter_shapes().items():
            self.register_parameter(
                name, nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
            )
        self.reset_parameters()

    @property
    def cell_math(self) -> CellMath:
        return self._math

    def _non_torch_options(self) -> dict[str, object]:
        """The variant options set to something the ``torch.nn`` cell cannot express."""
        return {
            k: v
            for k, v in self._math.options().items()
            if k in _TORCH_DEFAULTS and v != _TORCH_DEFAULTS[k]
        }

    def _math_weight(self) -> Tensor:
        """A parameter whose dtype and device every input must share."""
        weight: Tensor = self.weight_ih  # type: ignore[assignment]
        return weight

    def reset_parameters(self) -> None:
        """Re-initialise every parameter with the scheme chosen by ``init``."""
        self._math.init_parameters(
            dict(self.named_parameters()),
            self.init,
            forget_bias=self.forget_bias,
            chrono_init=self.chrono_init,
        )

    def forward(self, input: Tensor, hx: Any = None) -> Any:
        x = _checks.floating_tensor("input", input)
        if x.dim() not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(
                f"input must have shape (batch, {self.input_size}) or ({self.input_size},), "
                f"got {tuple(x.shape)}"
            )
        _checks.matches_parameters("input", x, self._math_weight())
        batched = x.dim() == 2
        if not batched:
            x = x.unsqueeze(0)
        B = x.shape[0]
        math = self._math
        names = math.state_names
        if hx is None:
            state = tuple(x.new_zeros(B, size) for size in math.state_sizes)
        else:
            raw = [hx] if len(names) == 1 else hx
            if len(names) > 1 and (not isinstance(hx, (tuple, list)) or len(hx) != len(names)):
                raise TypeError(
                    f"hx must be a tuple ({', '.join(names)}) for {type(self).__name__}, "
                    f"got {_checks.describe(hx)}"
                )
            parts = []
            for k, (name, size, value) in enumerate(zip(names, math.state_sizes, raw, strict=True)):
                arg = "hx" if len(names) == 1 else f"hx[{k}] ({name})"
                expected = (B, size) if batched else (size,)
                _checks.state_tensor(arg, value, expected, x)
                parts.append(value if batched else value.unsqueeze(0))
            state = tuple(parts)
        p = dict(self.named_parameters())
        new = math.step(math.project_input(x, p), state, p)
        if not batched:
            new = tuple(t.squeeze(0) for t in new)
        return new if len(new) > 1 else new[0]

    @classmethod
    def from_torch(cls, module: nn.Module) -> Any:
        """The lstmkit cell with the weights of a ``torch.nn`` cell."""
        if not isinstance(module, cls._torch_class):
            raise TypeError(
                f"module must be a torch.nn.{cls._torch_class.__name__}, "
                f"got {type(module).__name__}"
            )
        ref: Tensor = module.weight_ih  # type: ignore[assignment]
        kwargs: dict[str, Any] = {"bias": module.bias, "init": "torch"}
        if isinstance(module, nn.RNNCell):
            kwargs["nonlinearity"] = module.nonlinearity
        sizes = (int(module.input_size), int(module.hidden_size))  # type: ignore[arg-type]
        factory: Any = cls  # subclasses take (input_size, hidden_size, ...), not _CellBase's args
        new = factory(*sizes, **kwargs, device=ref.device, dtype=ref.dtype)
        new.load_state_dict(module.state_dict())
        return new

    def to_torch(self) -> nn.Module:
        """The ``torch.nn`` cell with these weights; ``ValueError`` for options torch lacks."""
        extra = list(self._non_torch_options())
        if extra:
            raise ValueError(
                f"{type(self).__name__} cannot be converted to "
                f"torch.nn.{self._torch_class.__name__}: "
                f"torch.nn has no equivalent of {', '.join(extra)}"
            )
        ref = self.weight_ih
        kwargs: dict[str, Any] = {"bias": self.bias}
        if isinstance(self._math, RNNMath):
            kwargs["nonlinearity"] = self._math.nonlinearity
        m = self._torch_class(
            self.input_size, self.hidden_size, **kwargs, device=ref.device, dtype=ref.dtype
        )
        m.load_state_dict(self.state_dict())
        return m

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        extra = self._non_torch_options()
        for k, v in self._math.options().items():
            if k == "nonlinearity" or k in extra:
                s += f", {k}={v!r}"
        return s


class LSTMCell(_CellBase):
    """One LSTM step, drop-in for :class:`torch.nn.LSTMCell`: ``forward(input, (h, c))`` returns
    ``(h', c')``. Variants: ``proj_size``, ``peephole``, ``layer_norm``, ``coupled_gates``,
    ``cell_clip``; initialisation as :class:`lstmkit.LSTM`."""

    _torch_class = nn.LSTMCell

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        proj_size: int = 0,
        peephole: bool = False,
        layer_norm: bool = False,
        coupled_gates: bool = False,
        cell_clip: float | None = None,
        init: str = "default",
        forget_bias: float | None = None,
        chrono_init: float | None = None,
    ) -> None:
        math = LSTMMath(
            input_size,
            hidden_size,
            bias=bias,
            proj_size=proj_size,
            peephole=peephole,
            layer_norm=layer_norm,
            coupled_gates=coupled_gates,
            cell_clip=cell_clip,
        )
        super().__init__(
            math,
            init=init,
            forget_bias=forget_bias,
            chrono_init=chrono_init,
            device=device,
            dtype=dtype,
        )


class GRUCell(_CellBase):
    """One GRU step, drop-in for :class:`torch.nn.GRUCell`, with ``reset_after`` and
    ``layer_norm``."""

    _torch_class = nn.GRUCell

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        reset_after: bool = True,
        layer_norm: bool = False,
        init: str = "default",
        chrono_init: float | None = None,
    ) -> None:
        math = GRUMath(
            input_size, hidden_size, bias=bias, reset_after=reset_after, layer_norm=layer_norm
        )
        super().__init__(
            math, init=init, forget_bias=None, chrono_init=chrono_init, device=device, dtype=dtype
        )


class RNNCell(_CellBase):
    """One Elman RNN step, drop-in for :class:`torch.nn.RNNCell` (``nonlinearity`` is the fourth
    positional argument, as in torch), with ``layer_norm`` and ``init='identity'`` (IRNN)."""

    _torch_class = nn.RNNCell

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device: Any = None,
        dtype: Any = None,
        *,
        layer_norm: bool = False,
        init: str = "default",
    ) -> None:
        self.nonlinearity = nonlinearity
        math = RNNMath(
            input_size, hidden_size, bias=bias, nonlinearity=nonlinearity, layer_norm=layer_norm
        )
        super().__init__(
            math, init=init, forget_bias=None, chrono_init=None, device=device, dtype=dtype
        )


__all__ = ["GRUCell", "LSTMCell", "RNNCell"]
