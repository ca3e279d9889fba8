r"""Vanilla (Elman) RNN step, as ``torch.nn.RNN``:

.. math::

    h_t = \phi\big(\mathrm{LN}_{ih}(W_{ih} x_t) + b_{ih}
                   + \mathrm{LN}_{hh}(W_{hh} h_{t-1}) + b_{hh}\big),
    \qquad \phi \in \{\tanh, \mathrm{ReLU}\}

``init='identity'`` with ``nonlinearity='relu'`` is the IRNN of Le et al. 2015.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _checks
from .base import CellMath, Params, State

NONLINEARITIES = ("tanh", "relu")


class RNNMath(CellMath):
    family = "rnn"
    num_gates = 1
    state_names = ("h",)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        bias: bool = True,
        nonlinearity: str = "tanh",
        layer_norm: bool = False,
    ) -> None:
        super().__init__(input_size, hidden_size, bias=bias, layer_norm=layer_norm)
        self.nonlinearity = _checks.choice("nonlinearity", nonlinearity, NONLINEARITIES)
        self._act = torch.tanh if nonlinearity == "tanh" else torch.relu

    def options(self) -> dict[str, object]:
        return {"nonlinearity": self.nonlinearity, "layer_norm": self.layer_norm}

    @property
    def gate_kinds(self) -> dict[str, str]:
        # No gates: the one activation is the new state itself, phi(...).
        return {"h": self.nonlinearity}

    def step_with_gates(
        self, xp: Tensor, state: State, p: Params, h_mask: Tensor | None = None
    ) -> tuple[State, dict[str, Tensor]]:
        (h,) = state
        hr = h if h_mask is None else h * h_mask
        h_new = self._act(xp + self._recurrent(hr, p))
        return (h_new,), {"h": h_new}
