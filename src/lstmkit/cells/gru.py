r"""GRU step (Cho et al. 2014), gate order r, z, n as in ``torch.nn.GRU``.

With :math:`a = \mathrm{LN}_{ih}(W_{ih} x_t) + b_{ih} = [a^r, a^z, a^n]`:

``reset_after=True`` (torch, cuDNN, ONNX ``linear_before_reset=1``):

.. math::

    [u^r, u^z, u^n] &= \mathrm{LN}_{hh}(W_{hh} h_{t-1}) + b_{hh} \\
    r_t = \sigma(a^r + u^r), \quad z_t &= \sigma(a^z + u^z), \quad
    n_t = \tanh(a^n + r_t \odot u^n) \\
    h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}

``reset_after=False`` (Cho et al. 2014, ONNX default ``linear_before_reset=0``): the reset gate
acts on the state *before* the recurrent product of the candidate,

.. math::

    [u^r, u^z] = \mathrm{LN}_{hh}^{rz}(W_{hh}^{rz} h_{t-1}) + b_{hh}^{rz}, \qquad
    n_t = \tanh\big(a^n + \mathrm{LN}_{hh}^{n}(W_{hh}^{n} (r_t \odot h_{t-1})) + b_{hh}^{n}\big)

With ``layer_norm=True`` the recurrent projection is normalised as one vector where it is one
product (3H with ``reset_after=True``) and as two vectors (2H for r, z and H for n) where it is
two products; ``ln_hh_weight`` holds the gains of both in gate order.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _checks
from .base import CellMath, Params, State


class GRUMath(CellMath):
    family = "gru"
    num_gates = 3
    state_names = ("h",)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        bias: bool = True,
        reset_after: bool = True,
        layer_norm: bool = False,
    ) -> None:
        super().__init__(input_size, hidden_size, bias=bias, layer_norm=layer_norm)
        self.reset_after = _checks.boolean("reset_after", reset_after)

    def options(self) -> dict[str, object]:
        return {"reset_after": self.reset_after, "layer_norm": self.layer_norm}

    def _init_gate_biases(
        self, params: Params, forget_bias: float | None, chrono_init: float | None
    ) -> None:
        b_ih, b_hh = params.get("bias_ih"), params.get("bias_hh")
        if chrono_init is None or b_ih is None or b_hh is None:
            return
        # z is the keep gate (h_t = (1 - z) n + z h_{t-1}), the analogue of the LSTM forget gate.
        H = self.hidden_size
        b_ih[H : 2 * H] = self._chrono_values(chrono_init, b_ih)
        b_hh[H : 2 * H] = 0.0

    @property
    def gate_kinds(self) -> dict[str, str]:
        return {"r": "sigmoid", "z": "sigmoid", "n": "tanh"}

    def step_with_gates(
        self, xp: Tensor, state: State, p: Params, h_mask: Tensor | None = None
    ) -> tuple[State, dict[str, Tensor]]:
        (h,) = state
        hr = h if h_mask is None else h * h_mask
        a_r, a_z, a_n = xp.chunk(3, -1)
        H = self.hidden_size
        if self.reset_after:
            u_r, u_z, u_n = self._recurrent(hr, p).chunk(3, -1)
            r = torch.sigmoid(a_r + u_r)
            z = torch.sigmoid(a_z + u_z)
            n = torch.tanh(a_n + r * u_n)
        else:
            u_r, u_z = self._recurrent(hr, p, slice(0, 2 * H)).chunk(2, -1)
            r = torch.sigmoid(a_r + u_r)
            z = torch.sigmoid(a_z + u_z)
            n = torch.tanh(a_n + self._recurrent(r * hr, p, slice(2 * H, 3 * H)))
        return ((1.0 - z) * n + z * h,), {"r": r, "z": z, "n": n}
