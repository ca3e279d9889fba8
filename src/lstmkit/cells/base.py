"""The contract every cell family implements.

A *cell* is the math of one time step and nothing else: which parameters it owns (by their
``torch.nn`` base names, e.g. ``weight_ih``), how they are initialised, the input projection that
can be computed for all time steps at once, and the step ``(x_proj_t, state) -> new_state``. The
time loop, lengths, direction and regularisation masks live in :mod:`lstmkit.recurrent`; the
parameters themselves live on the user-facing module, so that their names match ``torch.nn``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _checks

Params = Mapping[str, Tensor]
State = tuple[Tensor, ...]

INIT_SCHEMES = ("default", "torch", "identity")
LN_EPS = 1e-5


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None = None) -> Tensor:
    """Layer normalisation over the last dimension (eps 1e-5, as ``torch.nn.LayerNorm``)."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, LN_EPS)


def _orthogonal_(tensor: Tensor) -> None:
    """``torch.nn.init.orthogonal_`` that also works for half and bfloat16 (whose QR
    decomposition torch does not implement): draw in float32 and copy."""
    if tensor.dtype in (torch.float32, torch.float64):
        torch.nn.init.orthogonal_(tensor)
    else:
        tensor.copy_(torch.nn.init.orthogonal_(torch.empty_like(tensor, dtype=torch.float32)))


def resolve_init(
    family: str,
    owner: str,
    init: str,
    forget_bias: float | None,
    chrono_init: float | None,
    bias: bool,
) -> tuple[str, float | None, float | None]:
    """Validate the initialisation options of a layer or cell of ``family`` (named ``owner`` in
    messages) and resolve ``forget_bias``: ``None`` means 1.0 for an LSTM under ``init='default'``
    and "leave the biases as the scheme draws them" otherwise."""
    _checks.choice("init", init, INIT_SCHEMES)
    if init == "identity" and family != "rnn":
        raise ValueError(f"init='identity' (IRNN) is for RNN and RNNCell only, got it for {owner}")
    forget = None if forget_bias is None else _checks.real("forget_bias", forget_bias)
    chrono = _checks.optional_positive_float("chrono_init", chrono_init)
    if chrono is not None:
        if family == "rnn":
            raise ValueError(
                f"chrono_init sets gate biases and {owner} has no gates; use an LSTM or GRU "
                f"(got chrono_init={chrono_init})"
            )
        if chrono <= 1.0:
            raise ValueError(
                f"chrono_init is the longest dependency T_max in steps and must be > 1, "
                f"got {chrono_init}"
            )
        if not bias:
            raise ValueError("chrono_init sets gate biases and needs bias=True, got bias=False")
        if forget is not None:
            raise ValueError(
                "forget_bias and chrono_init both set the forget-gate bias: pass one of them, "
                f"got forget_bias={forget_bias} and chrono_init={chrono_init}"
            )
    if forget is None and family == "lstm" and init == "default" and chrono is None:
        forget = 1.0
    return init, forget, chrono


class CellMath:
    """Stateless description of one recurrent step of a family (LSTM, GRU, RNN).

    Subclasses set ``family``, ``num_gates`` and ``state_names`` and implement
    :meth:`parameter_shapes`, :meth:`project_input` and :meth:`step`.
    """

    family: str = ""
    num_gates: int = 1
    state_names: tuple[str, ...] = ("h",)

    def __init__(
        self, input_size: int, hidden_size: int, *, bias: bool = True, layer_norm: bool = False
    ) -> None:
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.bias = _checks.boolean("bias", bias)
        self.layer_norm = _checks.boolean("layer_norm", layer_norm)

    # ----------------------------------------------------------------- shapes
    @property
    def output_size(self) -> int:
        """Size of the hidden state ``h`` (what the layer outputs per direction)."""
        return self.hidden_size

    @property
    def state_sizes(self) -> tuple[int, ...]:
        """Feature size of each state component, in the order of ``state_names``."""
        return (self.output_size,)

    @property
    def gate_size(self) -> int:
        return self.num_gates * self.hidden_size

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Base names and shapes of the parameters of one layer and direction."""
        shapes: dict[str, tuple[int, ...]] = {
            "weight_ih": (self.gate_size, self.input_size),
            "weight_hh": (self.gate_size, self.output_size),
        }
        if self.bias:
            shapes["bias_ih"] = (self.gate_size,)
            shapes["bias_hh"] = (self.gate_size,)
        if self.layer_norm:
            shapes["ln_ih_weight"] = (self.gate_size,)
            shapes["ln_hh_weight"] = (self.gate_size,)
        return shapes

    def options(self) -> dict[str, object]:
        """The variant options that change the math (used for repr, export and docs)."""
        return {"layer_norm": self.layer_norm}

    # ----------------------------------------------------------------- init
    def init_parameters(
        self,
        params: Mapping[str, Tensor],
        init: str = "default",
        *,
        forget_bias: float | None = None,
        chrono_init: float | None = None,
    ) -> None:
        """Initialise ``params`` (a mapping of base name to tensor) in place.

        ``init='default'``: Xavier-uniform input weights and orthogonal recurrent weights, one
        gate block at a time, zero biases. ``init='torch'``: ``U(-1/sqrt(H), 1/sqrt(H))`` for every
        weight and bias, exactly as ``torch.nn``. ``init='identity'`` (IRNN, Le et al. 2015):
        identity recurrent matrix, ``N(0, 0.001)`` input weights, zero biases. Layer-norm gains
        start at 1 and layer-norm biases at 0 under every scheme.
        """
        _checks.choice("init", init, INIT_SCHEMES)
        H = self.hidden_size
        bound = 1.0 / math.sqrt(H)
        with torch.no_grad():
            for name, tensor in params.items():
                if name.startswith("ln_"):
                    if name.endswith("_bias"):
                        tensor.zero_()
                    else:
                        tensor.fill_(1.0)
                elif init == "torch" or name == "weight_peephole":
                    tensor.uniform_(-bound, bound)
                elif name.startswith("bias"):
                    tensor.zero_()
                elif init == "identity":
                    if name == "weight_hh":
                        for block in tensor.split(H, 0):
                            torch.nn.init.eye_(block)
                    else:
                        tensor.normal_(0.0, 1e-3)
                elif name == "weight_hh":
                    for block in tensor.split(H, 0):
                        _orthogonal_(block)
                elif name == "weight_ih":
                    for block in tensor.split(H, 0):
                        torch.nn.init.xavier_uniform_(block)
                else:  # projections and any other matrix
                    torch.nn.init.xavier_uniform_(tensor)
            self._init_gate_biases(params, forget_bias, chrono_init)

    def _init_gate_biases(
        self, params: Mapping[str, Tensor], forget_bias: float | None, chrono_init: float | None
    ) -> None:
        """Family hook for forget-gate and chrono initialisation of the biases."""

    def _chrono_values(self, chrono_init: float, reference: Tensor) -> Tensor:
        """``log(U(1, T_max - 1))`` per hidden unit (Tallec & Ollivier 2018)."""
        u = torch.empty(self.hidden_size, dtype=reference.dtype, device=reference.device)
        return u.uniform_(1.0, max(chrono_init - 1.0, 1.0)).log_()

    # ----------------------------------------------------------------- math
    def project_input(self, x: Tensor, p: Params) -> Tensor:
        """Input projection for any number of leading dims: ``LN(x W_ih^T) + b_ih``."""
        xp = F.linear(x, p["weight_ih"])
        if self.layer_norm:
            xp = layer_norm(xp, p["ln_ih_weight"])
        b = p.get("bias_ih")
        return xp if b is None else xp + b

    def step(self, xp: Tensor, state: State, p: Params, h_mask: Tensor | None = None) -> State:
        """One time step. ``xp`` is this step's :meth:`project_input`; ``h_mask`` multiplies
        ``h_{t-1}`` where it enters the recurrent product (variational recurrent dropout)."""
        return self.step_with_gates(xp, state, p, h_mask)[0]

    def step_with_gates(
        self, xp: Tensor, state: State, p: Params, h_mask: Tensor | None = None
    ) -> tuple[State, dict[str, Tensor]]:
        """:meth:`step` that also returns the gate activations it computed, keyed by the names
        of :attr:`gate_kinds` (each ``(B, hidden_size)``, in the autograd graph).

        The equations live here once; :meth:`step` drops the gates, and
        :mod:`lstmkit.diagnostics` reads them, so the statistics it reports are of the very
        tensors the step used."""
        raise NotImplementedError

    @property
    def gate_kinds(self) -> dict[str, str]:
        """The activations :meth:`step_with_gates` returns, in order, with the function that
        produced each (``'sigmoid'``, ``'tanh'`` or ``'relu'``): what "saturated" means for it."""
        raise NotImplementedError

    def _recurrent(self, h: Tensor, p: Params, rows: slice | None = None) -> Tensor:
        """``LN(h W_hh[rows]^T) + b_hh[rows]``: the recurrent projection of some gate rows."""
        w = p["weight_hh"]
        b = p.get("bias_hh")
        if rows is not None:
            w = w[rows]
            b = None if b is None else b[rows]
        out = F.linear(h, w)
        if self.layer_norm:
            g = p["ln_hh_weight"]
            out = layer_norm(out, g if rows is None else g[rows])
        return out if b is None else out + b
