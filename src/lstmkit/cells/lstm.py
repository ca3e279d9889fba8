r"""LSTM step (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000).

With input :math:`x_t`, previous output :math:`h_{t-1}` and cell :math:`c_{t-1}`, gate order
i, f, g, o as in ``torch.nn.LSTM``:

.. math::

    a_t &= \mathrm{LN}_{ih}(W_{ih} x_t) + b_{ih} + \mathrm{LN}_{hh}(W_{hh} h_{t-1}) + b_{hh}
           = [a^i, a^f, a^g, a^o] \\
    i_t &= \sigma(a^i + p_i \odot c_{t-1}) \qquad
    f_t  = \sigma(a^f + p_f \odot c_{t-1}) \quad (\text{CIFG: } f_t = 1 - i_t) \\
    g_t &= \tanh(a^g) \\
    c_t &= \mathrm{clip}(f_t \odot c_{t-1} + i_t \odot g_t, \pm\,\text{cell\_clip}) \\
    o_t &= \sigma(a^o + p_o \odot c_t) \\
    h_t &= W_{hr}\,\big(o_t \odot \tanh(\mathrm{LN}_c(c_t))\big)

The layer norms (``layer_norm=True``, Ba et al. 2016) are absent by default, the peephole
weights :math:`p` (``peephole=True``, Gers & Schmidhuber 2000) are zero-free diagonal vectors,
the projection :math:`W_{hr}` (``proj_size > 0``, Sak et al. 2014) is the identity by default.
With ``coupled_gates=True`` there is no forget block: the weights hold the gates i, g, o.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _checks
from .base import CellMath, Params, State, layer_norm


class LSTMMath(CellMath):
    family = "lstm"
    state_names = ("h", "c")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        bias: bool = True,
        proj_size: int = 0,
        peephole: bool = False,
        layer_norm: bool = False,
        coupled_gates: bool = False,
        cell_clip: float | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, bias=bias, layer_norm=layer_norm)
        self.proj_size = _checks.positive_int("proj_size", proj_size, allow_zero=True)
        if self.proj_size >= self.hidden_size:
            raise ValueError(
                f"proj_size must be smaller than hidden_size ({self.hidden_size}), "
                f"got {self.proj_size}"
            )
        self.peephole = _checks.boolean("peephole", peephole)
        self.coupled_gates = _checks.boolean("coupled_gates", coupled_gates)
        self.cell_clip = _checks.optional_positive_float("cell_clip", cell_clip)
        self.num_gates = 3 if self.coupled_gates else 4
        self.gates = ("i", "g", "o") if self.coupled_gates else ("i", "f", "g", "o")
        self.peephole_gates = ("i", "o") if self.coupled_gates else ("i", "f", "o")

    @property
    def output_size(self) -> int:
        return self.proj_size or self.hidden_size

    @property
    def state_sizes(self) -> tuple[int, ...]:
        return (self.output_size, self.hidden_size)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = super().parameter_shapes()
        if self.proj_size:
            shapes["weight_hr"] = (self.proj_size, self.hidden_size)
        if self.peephole:
            shapes["weight_peephole"] = (len(self.peephole_gates) * self.hidden_size,)
        if self.layer_norm:
            shapes["ln_cell_weight"] = (self.hidden_size,)
            shapes["ln_cell_bias"] = (self.hidden_size,)
        return shapes

    def options(self) -> dict[str, object]:
        return {
            "proj_size": self.proj_size,
            "peephole": self.peephole,
            "layer_norm": self.layer_norm,
            "coupled_gates": self.coupled_gates,
            "cell_clip": self.cell_clip,
        }

    def _init_gate_biases(
        self, params: Params, forget_bias: float | None, chrono_init: float | None
    ) -> None:
        b_ih, b_hh = params.get("bias_ih"), params.get("bias_hh")
        if b_ih is None or b_hh is None:
            return
        H = self.hidden_size
        i_rows = slice(0, H)
        f_rows = None if self.coupled_gates else slice(H, 2 * H)
        if chrono_init is not None:
            # Tallec & Ollivier 2018: b_f ~ log U(1, T_max - 1), b_i = -b_f.
            bf = self._chrono_values(chrono_init, b_ih)
            b_ih[i_rows] = -bf
            b_hh[i_rows] = 0.0
            if f_rows is not None:
                b_ih[f_rows] = bf
                b_hh[f_rows] = 0.0
        elif forget_bias is not None:
            if f_rows is None:  # CIFG: f = 1 - sigmoid(a_i) = sigmoid(-a_i)
                b_ih[i_rows] = -forget_bias
                b_hh[i_rows] = 0.0
            else:
                b_ih[f_rows] = forget_bias
                b_hh[f_rows] = 0.0

    @property
    def gate_kinds(self) -> dict[str, str]:
        # With coupled_gates the forget gate is 1 - i = sigmoid(-a_i): still reported, as f.
        return {"i": "sigmoid", "f": "sigmoid", "g": "tanh", "o": "sigmoid"}

    def step_with_gates(
        self, xp: Tensor, state: State, p: Params, h_mask: Tensor | None = None
    ) -> tuple[State, dict[str, Tensor]]:
        h, c = state
        hr = h if h_mask is None else h * h_mask
        gates = xp + self._recurrent(hr, p)
        if self.coupled_gates:
            a_i, a_g, a_o = gates.chunk(3, -1)
            a_f = None
        else:
            a_i, a_f, a_g, a_o = gates.chunk(4, -1)
        if self.peephole:
            peep = p["weight_peephole"].chunk(len(self.peephole_gates))
            p_i, p_o = peep[0], peep[-1]
            a_i = a_i + p_i * c
            if a_f is not None:
                a_f = a_f + peep[1] * c
        i = torch.sigmoid(a_i)
        f = 1.0 - i if a_f is None else torch.sigmoid(a_f)
        g = torch.tanh(a_g)
        c_new = f * c + i * g
        if self.cell_clip is not None:
            c_new = c_new.clamp(-self.cell_clip, self.cell_clip)
        if self.peephole:
            a_o = a_o + p_o * c_new
        o = torch.sigmoid(a_o)
        c_out = (
            layer_norm(c_new, p["ln_cell_weight"], p["ln_cell_bias"]) if self.layer_norm else c_new
        )
        h_new = o * torch.tanh(c_out)
        if self.proj_size:
            h_new = torch.nn.functional.linear(h_new, p["weight_hr"])
        return (h_new, c_new), {"i": i, "f": f, "g": g, "o": o}
