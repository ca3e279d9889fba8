r"""Diagnostics for recurrent layers: gradient flow through time, gate saturation, and the
geometry of the hidden states.

Three questions come up whenever a recurrent model trains badly, and each has a function here:

* **Does the gradient reach early steps?** :func:`gradient_norms` gives
  :math:`\lVert \partial L / \partial h_t \rVert` (and :math:`\lVert \partial L / \partial c_t
  \rVert` for an LSTM) for every step, layer and direction.
* **Are the gates stuck?** :func:`gate_statistics` gives the mean, standard deviation, fraction
  saturated and a histogram of every gate of every layer.
* **What do the states do over time?** :func:`hidden_pca` projects the hidden states on their
  principal components and keeps one trajectory per sequence.

Each has a figure: :func:`plot_gradient_norms`, :func:`plot_gate_saturation` and
:func:`plot_pca_trajectories` return a :class:`matplotlib.figure.Figure` drawn with the Agg
canvas; nothing touches ``pyplot`` or its global state, and nothing is shown.

**Why the time loop is unrolled here.** The gradient of the loss with respect to a layer's
*output* tensor holds only the direct path from the loss to each output (with a loss on the
last step, it is zero at every other step); the quantity that vanishes or explodes is the
gradient with respect to the *state* :math:`h_t` that feeds step :math:`t+1` (the total
derivative through every later step). The fused kernels never materialise those states as
autograd nodes, so :func:`trace` and :func:`gradient_norms` run the
module's own :class:`~lstmkit.cells.CellMath` step by step, mirroring
``_RecurrentBase._run``, :func:`~lstmkit.recurrent.run_direction` and the reference backend
(direction, lengths, regularisation masks in the same order, zoneout, residual connections,
bidirectional merges, dropout between layers), and keep every state and every gate. The outputs
this loop computes equal the module's own to the last bit with ``backend='reference'``; the test
suite checks that for every variant.

``torch.nn.LSTM``, ``GRU`` and ``RNN`` modules are accepted too: they are read through
``from_torch``.

Every function runs the module in its current mode: call ``module.eval()`` first for
deterministic numbers (in training mode the dropout masks are drawn from the global RNG, in the
same order as the module's own forward).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _checks
from .backends import Regularisation
from .backends.reference import scan as reference_scan
from .cells import CellMath, Params, State
from .nn.layers import GRU, LSTM, RNN, _RecurrentBase
from .recurrent import Rates, draw_regularisation, reverse_padded, valid_mask

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

LOSSES = ("last", "first", "sum")
STATES = ("h", "c")
_TORCH_CLASSES: dict[type, type[_RecurrentBase]] = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN}

LossFn = Callable[[Tensor], Tensor]


# ------------------------------------------------------------------------------ the unrolled run
def _lstmkit_module(module: Any) -> _RecurrentBase:
    """``module`` itself, or the lstmkit equivalent of a ``torch.nn`` LSTM, GRU or RNN."""
    torch_cls = _TORCH_CLASSES.get(type(module))
    if torch_cls is not None:
        # from_torch builds a module (whose throw-away initialisation draws random numbers) and
        # then copies torch's weights: keep the caller's random stream untouched.
        with torch.random.fork_rng(devices=[]):
            return torch_cls.from_torch(module, backend="reference")
    if not isinstance(module, _RecurrentBase):
        raise TypeError(
            "module must be an lstmkit LSTM, GRU or RNN (or a torch.nn.LSTM, GRU or RNN), "
            f"got {type(module).__module__}.{type(module).__name__}"
        )
    return module


@dataclass
class _Layout:
    """How the caller laid out the input, so that a loss callable sees the module's layout."""

    batch_first: bool
    unbatched: bool

    def to_module(self, y: Tensor) -> Tensor:
        """Time-major ``(T, B, F)`` to the layout the module returns for this input."""
        if self.unbatched:
            return y.squeeze(1)
        return y.transpose(0, 1) if self.batch_first else y


def _prepare(
    module: _RecurrentBase, input: Any, hx: Any, lengths: Any
) -> tuple[Tensor, list[State], Tensor | None, _Layout]:
    """Check the arguments as the module's ``forward`` does (it is the same code) and return the
    time-major input, the initial state of every layer and direction, the checked lengths and
    the input's layout."""
    x, states, checked, _, unbatched = module._prepare_input(input, hx, lengths)
    return x, states, checked, _Layout(module.batch_first, unbatched)


@dataclass
class _Direction:
    """One layer and direction of an unrolled run, in processing order (reversed for a
    right-to-left direction), every tensor still in the autograd graph."""

    computed: list[State]  # what each step's cell computed: (h_t, c_t) before zoneout and mask
    states: list[State]  # the state after each step (zoneout, validity mask): what is carried
    gates: list[dict[str, Tensor]]  # the gate activations of each step
    reverse: bool


def _scan(
    cell: CellMath, p: Params, x: Tensor, state: State, valid: Tensor | None, reg: Regularisation
) -> tuple[Tensor, _Direction]:
    """:func:`lstmkit.backends.reference.scan`, keeping every state and gate through its
    ``observe`` hook. ``reverse`` of the returned record is False: the caller sets it."""
    record = _Direction([], [], [], reverse=False)

    def observe(computed: State, gates: dict[str, Tensor], carried: State) -> None:
        record.computed.append(computed)
        record.gates.append(gates)
        record.states.append(carried)

    y, _ = reference_scan(cell, p, x, state, valid, reg, observe=observe)
    return y, record


def _unroll(
    module: _RecurrentBase,
    x: Tensor,
    states: list[State],
    lengths: Tensor | None,
    *,
    probe_initial: bool = False,
) -> tuple[Tensor, list[list[_Direction]]]:
    """Run ``module`` over the time-major ``x`` as its ``forward`` does (``_RecurrentBase._run``
    and :func:`~lstmkit.recurrent.run_direction`, step by step), keeping every state and gate.

    ``probe_initial=True`` makes each initial state a fresh leaf that requires grad, so that
    every later state is in the autograd graph even when no parameter and no input requires
    grad (a frozen model): the gradients with respect to the states exist regardless.
    Returns the time-major output and, per layer and direction, the unrolled steps.
    """
    T = x.shape[0]
    valid = valid_mask(lengths, T)
    training = module.training
    rates = Rates(
        module.input_dropout, module.recurrent_dropout, module.weight_drop, module.zoneout
    )
    layer_input = x
    layers: list[list[_Direction]] = []
    for layer, cell in enumerate(module.cell_math):
        outputs = []
        directions = []
        for direction in range(module.num_directions):
            reverse = module.reverse or direction == 1
            state = states[layer * module.num_directions + direction]
            if probe_initial:
                state = tuple(s.detach().requires_grad_(True) for s in state)
            p, input_mask, reg = draw_regularisation(
                cell, module._params(layer, direction), layer_input, rates, training
            )
            xd = layer_input
            if input_mask is not None:
                xd = xd * input_mask
            if reverse:
                xd = reverse_padded(xd, lengths)
            y, record = _scan(cell, p, xd, state, valid, reg)
            if reverse:
                y = reverse_padded(y, lengths)
            record.reverse = reverse
            outputs.append(y)
            directions.append(record)
        out = module._merge(outputs)
        if module.residual and layer > 0:
            out = out + layer_input
        if training and module.dropout and layer < module.num_layers - 1:
            out = F.dropout(out, module.dropout, True)
        layer_input = out
        layers.append(directions)
    return layer_input, layers


def _time_order(
    steps: Sequence[Tensor], like: Tensor, reverse: bool, lengths: Tensor | None
) -> Tensor:
    """Stack per-step tensors of one direction ``(B, size)`` into ``(T, B, size)`` in time
    order (a right-to-left direction is reversed back within each sequence's length)."""
    if not steps:
        return like.new_zeros(0, like.shape[1], 0)
    stacked = torch.stack(list(steps))
    return reverse_padded(stacked, lengths) if reverse else stacked


def _full_lengths(lengths: Tensor | None, T: int, B: int, device: torch.device) -> Tensor:
    if lengths is not None:
        return lengths
    return torch.full((B,), T, dtype=torch.int64, device=device)


def _valid_steps(lengths: Tensor, T: int) -> Tensor:
    """``(T, B)`` bool: True on the steps inside each sequence."""
    return torch.arange(T, device=lengths.device)[:, None] < lengths[None, :]


# ------------------------------------------------------------------------------ trace
@dataclass(frozen=True)
class Trace:
    """Everything a module computed at every step, detached, in time order.

    Tensors are indexed ``[layer, direction, t, b, unit]``: ``direction`` 1 is the backward half
    of a bidirectional module (with ``reverse=True`` the only direction, 0, runs right to left;
    :attr:`reverse` says which do). ``t`` is the position in the input, whatever the direction
    of processing. Past each sequence's length the states hold the carried state (the last
    valid one) and the gates zero: use :attr:`valid` to select the real steps.
    """

    output: Tensor
    """``(T, B, output_size)``: the module's output, time-major, zero past each length."""
    h: Tensor
    """``(num_layers, num_directions, T, B, out)``: the state ``h_t`` after each step."""
    c: Tensor | None
    """``(num_layers, num_directions, T, B, hidden_size)``: the LSTM cell ``c_t``, else None."""
    gates: dict[str, Tensor]
    """Gate name to ``(num_layers, num_directions, T, B, hidden_size)`` activations."""
    gate_kinds: dict[str, str]
    """Gate name to the function that produced it: ``'sigmoid'``, ``'tanh'`` or ``'relu'``."""
    lengths: Tensor
    """``(B,)`` int64: each sequence's valid length (``T`` for all when none were given)."""
    reverse: tuple[bool, ...]
    """Per direction: whether it runs right to left."""
    family: str
    """``'lstm'``, ``'gru'`` or ``'rnn'``."""

    @property
    def valid(self) -> Tensor:
        """``(T, B)`` bool: True on the steps inside each sequence."""
        return _valid_steps(self.lengths, self.output.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.h.shape[0])

    @property
    def num_directions(self) -> int:
        return int(self.h.shape[1])


def trace(module: nn.Module, input: Any, hx: Any = None, lengths: Any = None) -> Trace:
    """Run ``module`` on ``input`` step by step with its own cells and return every state and
    gate activation (see :class:`Trace`). Arguments are those of the module's ``forward``.

    Runs without autograd; the output equals ``module(input, hx, lengths)[0]`` (time-major)
    exactly on the reference backend, to rounding on the fused one.
    """
    lk = _lstmkit_module(module)
    x, states, checked, _ = _prepare(lk, input, hx, lengths)
    with torch.no_grad():
        output, layers = _unroll(lk, x, states, checked)
    T, B = x.shape[0], x.shape[1]
    cell = lk.cell_math[0]
    kinds = cell.gate_kinds

    def collect(steps: Callable[[_Direction], list[Tensor]], size: int) -> Tensor:
        """Stack one kind of per-step tensor as (layers, directions, T, B, size)."""
        if T == 0:
            return x.new_zeros(lk.num_layers, lk.num_directions, 0, B, size)
        return torch.stack(
            [
                torch.stack([_time_order(steps(d), x, d.reverse, checked) for d in directions])
                for directions in layers
            ]
        )

    def component(k: int) -> Callable[[_Direction], list[Tensor]]:
        return lambda d: [s[k] for s in d.states]

    def gate(name: str) -> Callable[[_Direction], list[Tensor]]:
        return lambda d: [g[name] for g in d.gates]

    h = collect(component(0), cell.output_size)
    c = collect(component(1), cell.hidden_size) if len(cell.state_names) > 1 else None
    gates = {name: collect(gate(name), cell.hidden_size) for name in kinds}
    full = _full_lengths(checked, T, B, x.device)
    if checked is not None:
        # The gates of padded steps were computed (on zeroed input) and thrown away by the
        # validity mask; zero them here so that nobody mistakes them for data.
        pad = ~_valid_steps(full, T)[None, None, :, :, None]
        gates = {name: g.masked_fill(pad, 0.0) for name, g in gates.items()}
    reverse = tuple(lk.reverse or d == 1 for d in range(lk.num_directions))
    return Trace(output, h, c, gates, dict(kinds), full, reverse, cell.family)


# ------------------------------------------------------------------------------ gradient norms
@dataclass(frozen=True)
class GradientNorms:
    r"""Per-step norms of the gradient of a loss with respect to the recurrent states.

    ``h[layer, direction, t, b]`` is :math:`\lVert \partial L / \partial h_t \rVert_2` for
    sequence ``b``, where :math:`h_t` is the value step ``t`` computes and the derivative is the
    total one, through every path from :math:`h_t` to the loss: the output at ``t``, step
    ``t+1`` and every step after it, the layer above, the final state. ``c`` holds the same for
    the LSTM cell :math:`c_t`, whose paths include :math:`h_t = o_t \odot \tanh(c_t)` of the
    same step: the :math:`\delta c_t` of backpropagation through time, the "constant error
    carousel" that ``f_t`` close to 1 keeps from decaying. Padded steps (``t >= lengths[b]``)
    are NaN.

    Without zoneout the value a step computes is the state that feeds the next step. With
    zoneout it is the value before zoneout mixes it with the previous state, so at evaluation
    the norm of ``h`` is ``1 - rate`` times that of the carried state.
    """

    h: Tensor
    """``(num_layers, num_directions, T, B)``; NaN past each length."""
    c: Tensor | None
    """The same for the LSTM cell state ``c_t``; None for GRU and RNN."""
    lengths: Tensor
    """``(B,)`` int64: each sequence's valid length."""
    reverse: tuple[bool, ...]
    """Per direction: whether it runs right to left."""
    family: str
    """``'lstm'``, ``'gru'`` or ``'rnn'``."""
    loss: str
    """``'last'``, ``'first'``, ``'sum'`` or ``'callable'``: which loss the gradients are of."""

    @property
    def num_layers(self) -> int:
        return int(self.h.shape[0])

    def distance(self) -> Tensor:
        """``(num_directions, T, B)`` int64: how many steps each step lies before the last step
        its direction processes (``lengths[b] - 1 - t`` left to right, ``t`` right to left);
        -1 on padded steps. With ``loss='last'`` and a left-to-right direction (or ``'first'``
        and a right-to-left one) this is the number of recurrent transitions between ``h_t``
        and the loss."""
        T, B = self.h.shape[2], self.h.shape[3]
        t = torch.arange(T, device=self.lengths.device)[:, None].expand(T, B)
        ahead = self.lengths[None, :] - 1 - t
        valid = _valid_steps(self.lengths, T)
        per_direction = [torch.where(valid, t if rev else ahead, -1) for rev in self.reverse]
        return torch.stack(per_direction)

    def profile(
        self, layer: int = -1, direction: int = 0, state: str = "h"
    ) -> tuple[Tensor, Tensor]:
        """The mean norm over the sequences at each :meth:`distance`: returns ``(distances,
        norms)``, both of length ``T``, with NaN where no sequence is that long.

        The arithmetic mean is what a plot on a log scale needs: a geometric mean would be sunk
        by a single exact zero (a step the loss cannot reach)."""
        layer = _index("layer", layer, self.num_layers)
        direction = _index("direction", direction, len(self.reverse))
        _checks.choice("state", state, STATES)
        if state == "c" and self.c is None:
            raise ValueError(f"state='c' needs an LSTM, got gradient norms of a {self.family}")
        norms = (self.h if state == "h" else self.c)[layer, direction]  # type: ignore[index]
        dist = self.distance()[direction]
        T = norms.shape[0]
        distances = torch.arange(T, device=norms.device)
        flat_d, flat_n = dist.reshape(-1), norms.reshape(-1).to(torch.float64)
        keep = flat_d >= 0
        flat_d, flat_n = flat_d[keep], flat_n[keep]
        total = torch.zeros(T, dtype=torch.float64, device=norms.device).index_add_(
            0, flat_d, flat_n
        )
        count = torch.zeros(T, dtype=torch.float64, device=norms.device).index_add_(
            0, flat_d, torch.ones_like(flat_n)
        )
        return distances, total / count  # 0/0 = NaN where no sequence reaches


def _end_step_loss(output: Tensor, lengths: Tensor, *, first: bool) -> Tensor:
    """The sum over the batch of the sum of each sequence's last valid output (its first with
    ``first=True``); sequences of length 0 add nothing. A sum keeps the sequences independent:
    the gradient with respect to sequence ``b``'s states comes from its own term only, and its
    size does not depend on the batch size."""
    B = output.shape[1]
    if output.shape[0] == 0:
        return output.sum()
    step = torch.zeros_like(lengths) if first else (lengths - 1).clamp(min=0)
    picked = output[step, torch.arange(B, device=output.device)]
    return picked.masked_fill((lengths == 0)[:, None], 0.0).sum()


def gradient_norms(
    module: nn.Module,
    input: Any,
    hx: Any = None,
    lengths: Any = None,
    *,
    loss: str | LossFn = "last",
) -> GradientNorms:
    r"""Per-step norms :math:`\lVert \partial L / \partial h_t \rVert` (and
    :math:`\lVert \partial L / \partial c_t \rVert` for an LSTM) for every layer and direction.

    ``loss`` chooses :math:`L`:

    * ``'last'`` (default): the sum of the output at each sequence's last valid step, the
      setting of the classic vanishing-gradient analyses (Bengio et al. 1994; Pascanu et al.
      2013): how much does the state ``k`` steps back influence the end?
    * ``'first'``: the sum of the output at the first step: the end that a right-to-left
      direction (``reverse=True``, the backward half of a bidirectional module) reaches last,
      so its gradient profile reads as ``'last'`` does for a left-to-right one.
    * ``'sum'``: the sum of every valid output (a loss on all steps).
    * a callable ``loss(output) -> scalar tensor``, where ``output`` is laid out as the module
      returns it for a tensor input (``batch_first`` honoured; padded, never packed).

    The module's parameter gradients are not touched (``torch.autograd.grad`` is used, not
    ``backward``). Runs the module's own cells step by step (see the module docstring).
    """
    lk = _lstmkit_module(module)
    loss_name = "callable" if callable(loss) else _checks.choice("loss", loss, LOSSES)
    x, states, checked, layout = _prepare(lk, input, hx, lengths)
    T, B = x.shape[0], x.shape[1]
    full = _full_lengths(checked, T, B, x.device)
    with torch.enable_grad():
        output, layers = _unroll(lk, x, states, checked, probe_initial=True)
        if loss_name in ("last", "first"):
            value = _end_step_loss(output, full, first=loss_name == "first")
        elif loss_name == "sum":
            value = output.sum()
        else:
            value = loss(layout.to_module(output))  # type: ignore[operator]
            _check_loss_value(value)
        n_state = len(lk.cell_math[0].state_names)
        targets = [
            s[k]
            for directions in layers
            for d in directions
            for s in d.computed
            for k in range(n_state)
        ]
        grads = (
            torch.autograd.grad(value, targets, allow_unused=True)
            if targets and value.requires_grad
            else [None] * len(targets)
        )
    # Regroup the flat gradient list (layer, direction, step, component) as norms.
    dtype = torch.promote_types(x.dtype, torch.float32)
    norms = torch.zeros(n_state, lk.num_layers, lk.num_directions, T, B, dtype=dtype)
    norms = norms.to(x.device)
    flat = iter(grads)
    for layer, directions in enumerate(layers):
        for direction, d in enumerate(directions):
            steps: list[list[Tensor]] = [[] for _ in range(n_state)]
            for s in d.computed:
                for k in range(n_state):
                    g = next(flat)
                    steps[k].append(torch.zeros_like(s[k]) if g is None else g)
            for k in range(n_state):
                if T:
                    ordered = _time_order(steps[k], x, d.reverse, checked).detach()
                    norms[k, layer, direction] = torch.linalg.vector_norm(ordered.to(dtype), dim=-1)
    norms = norms.masked_fill(~_valid_steps(full, T), math.nan)
    reverse = tuple(lk.reverse or d == 1 for d in range(lk.num_directions))
    family = lk.cell_math[0].family
    return GradientNorms(
        norms[0], norms[1] if n_state > 1 else None, full, reverse, family, loss_name
    )


def _check_loss_value(value: Any) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"loss must return a scalar tensor, got {_checks.describe(value)}")
    if value.dim() != 0:
        raise ValueError(
            f"loss must return a scalar (0-dim) tensor, got shape {tuple(value.shape)}; "
            "reduce it with .sum() or .mean()"
        )
    if not value.is_floating_point():
        raise TypeError(f"loss must return a floating-point tensor, got dtype {value.dtype}")
    if not value.requires_grad:
        raise ValueError(
            "loss must depend on the output it is given, but its value has no gradient "
            "(was it computed under torch.no_grad(), or from a detached tensor?)"
        )


# ------------------------------------------------------------------------------ gate statistics
@dataclass(frozen=True)
class GateSummary:
    """Statistics of one gate of one layer and direction over the valid steps of a batch."""

    layer: int
    direction: int
    gate: str
    kind: str
    """``'sigmoid'``, ``'tanh'`` or ``'relu'``: the function that produced the activation."""
    count: int
    """How many values were summarised: valid steps times hidden units."""
    mean: float
    std: float
    """Population standard deviation (over all ``count`` values)."""
    saturated: float
    """Fraction of values in the flat part of the function, where its derivative is small:
    a sigmoid below ``low`` or above ``high``, a tanh beyond ``±bound``, a ReLU at zero."""
    histogram: Tensor
    """``(bins,)`` int64 counts."""
    bin_edges: Tensor
    """``(bins + 1,)`` float64 edges: ``[0, 1]`` for a sigmoid, ``[-1, 1]`` for a tanh,
    ``[0, max]`` for a ReLU."""
    thresholds: tuple[float, ...]
    """Where saturation starts: ``(low, high)``, ``(-bound, bound)`` or ``(0.0,)``."""


class GateStatistics:
    """The :class:`GateSummary` of every layer, direction and gate.

    Index it with ``(layer, gate)`` (direction 0) or ``(layer, direction, gate)``; negative
    layers count from the top. Iterating yields the summaries layer by layer.
    """

    def __init__(
        self, summaries: Sequence[GateSummary], num_layers: int, num_directions: int
    ) -> None:
        self._summaries = tuple(summaries)
        self.num_layers = num_layers
        self.num_directions = num_directions
        self.gates = tuple(dict.fromkeys(s.gate for s in self._summaries))
        self._by_key = {(s.layer, s.direction, s.gate): s for s in self._summaries}

    def __getitem__(self, key: tuple[int, str] | tuple[int, int, str]) -> GateSummary:
        if not isinstance(key, tuple) or len(key) not in (2, 3):
            raise TypeError(
                f"GateStatistics is indexed by (layer, gate) or (layer, direction, gate), "
                f"got {_checks.describe(key)}"
            )
        layer, direction, gate = (key[0], 0, key[1]) if len(key) == 2 else key
        layer = _index("layer", layer, self.num_layers)
        direction = _index("direction", direction, self.num_directions)
        _checks.choice("gate", gate, self.gates)
        return self._by_key[(layer, direction, gate)]  # type: ignore[index]

    def __iter__(self) -> Iterator[GateSummary]:
        return iter(self._summaries)

    def __len__(self) -> int:
        return len(self._summaries)

    def table(self) -> str:
        """A plain-text table, one row per layer, direction and gate."""
        head = f"{'layer':>5} {'dir':>3} {'gate':>4} {'kind':>7} {'mean':>8} {'std':>8} {'sat':>7}"
        rows = [head]
        for s in self._summaries:
            rows.append(
                f"{s.layer:>5} {s.direction:>3} {s.gate:>4} {s.kind:>7} "
                f"{s.mean:>8.4f} {s.std:>8.4f} {s.saturated:>7.2%}"
            )
        return "\n".join(rows)

    def __repr__(self) -> str:
        return (
            f"GateStatistics(num_layers={self.num_layers}, num_directions="
            f"{self.num_directions}, gates={self.gates})"
        )


def _saturation_args(
    bins: Any, sigmoid_bounds: Any, tanh_bound: Any
) -> tuple[int, tuple[float, float], float]:
    bins = _checks.positive_int("bins", bins)
    if not isinstance(sigmoid_bounds, (tuple, list)) or len(sigmoid_bounds) != 2:
        raise TypeError(
            f"sigmoid_bounds must be a pair (low, high), got {_checks.describe(sigmoid_bounds)}"
        )
    low = _checks.real("sigmoid_bounds[0]", sigmoid_bounds[0])
    high = _checks.real("sigmoid_bounds[1]", sigmoid_bounds[1])
    if not 0.0 < low < high < 1.0:
        raise ValueError(f"sigmoid_bounds must satisfy 0 < low < high < 1, got ({low}, {high})")
    bound = _checks.real("tanh_bound", tanh_bound)
    if not 0.0 < bound < 1.0:
        raise ValueError(f"tanh_bound must be in (0, 1), got {bound}")
    return bins, (low, high), bound


def _summarise(
    values: Tensor,
    layer: int,
    direction: int,
    gate: str,
    kind: str,
    bins: int,
    sigmoid_bounds: tuple[float, float],
    tanh_bound: float,
) -> GateSummary:
    v = values.detach().to(torch.float64).reshape(-1)
    n = v.numel()
    thresholds: tuple[float, ...]
    if kind == "sigmoid":
        low, high = sigmoid_bounds
        saturated = (v < low) | (v > high)
        lo, hi = 0.0, 1.0
        thresholds = (low, high)
    elif kind == "tanh":
        saturated = v.abs() > tanh_bound
        lo, hi = -1.0, 1.0
        thresholds = (-tanh_bound, tanh_bound)
    else:  # relu: its flat side is zero
        saturated = v <= 0.0
        lo, hi = 0.0, max(float(v.max()) if n else 0.0, 1.0)
        thresholds = (0.0,)
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    counts = torch.histc(v.cpu(), bins=bins, min=lo, max=hi).round().to(torch.int64)
    return GateSummary(
        layer=layer,
        direction=direction,
        gate=gate,
        kind=kind,
        count=n,
        mean=float(v.mean()) if n else math.nan,
        std=float(v.std(correction=0)) if n else math.nan,
        saturated=float(saturated.to(torch.float64).mean()) if n else math.nan,
        histogram=counts,
        bin_edges=edges,
        thresholds=thresholds,
    )


def gate_statistics(
    source: nn.Module | Trace,
    input: Any = None,
    hx: Any = None,
    lengths: Any = None,
    *,
    bins: int = 50,
    sigmoid_bounds: tuple[float, float] = (0.1, 0.9),
    tanh_bound: float = 0.9,
) -> GateStatistics:
    """Mean, standard deviation, fraction saturated and histogram of every gate (LSTM ``i, f,
    g, o``; GRU ``r, z, n``; the RNN's single activation ``h``) of every layer and direction,
    over the valid steps only.

    ``source`` is a module (then ``input`` and optionally ``hx``, ``lengths`` as for its
    ``forward``) or a :class:`Trace` already computed. A sigmoid gate is saturated below
    ``sigmoid_bounds[0]`` or above ``sigmoid_bounds[1]``, a tanh beyond ``±tanh_bound``, a ReLU
    at zero: there the derivative is small and so is the gradient through the gate.
    """
    bins, bounds, bound = _saturation_args(bins, sigmoid_bounds, tanh_bound)
    tr = _trace_of(source, input, hx, lengths)
    valid = tr.valid
    summaries = []
    for layer in range(tr.num_layers):
        for direction in range(tr.num_directions):
            for gate, kind in tr.gate_kinds.items():
                values = tr.gates[gate][layer, direction][valid]  # (N valid, H)
                summaries.append(
                    _summarise(values, layer, direction, gate, kind, bins, bounds, bound)
                )
    return GateStatistics(summaries, tr.num_layers, tr.num_directions)


def _trace_of(source: Any, input: Any, hx: Any, lengths: Any) -> Trace:
    if isinstance(source, Trace):
        if input is not None or hx is not None or lengths is not None:
            raise ValueError(
                "input, hx and lengths must be None when a Trace is given: it already holds the run"
            )
        return source
    if input is None:
        raise TypeError(
            "input is required when the first argument is a module (pass a Trace to reuse a run)"
        )
    return trace(source, input, hx, lengths)


# ------------------------------------------------------------------------------ PCA
@dataclass(frozen=True)
class HiddenPCA:
    """Principal components of the hidden states of one layer over the valid steps.

    With ``X`` the ``(N, D)`` matrix of every valid step of every sequence (``D`` the state size
    times the number of directions, the directions side by side), ``X - mean = U S V^T``:
    :attr:`components` are the first rows of ``V^T``, each signed so that its largest loading
    is positive (so the same data always give the same picture).
    """

    components: Tensor
    """``(k, D)`` float64: the principal axes, one per row, unit length."""
    mean: Tensor
    """``(D,)`` float64: the mean state, subtracted before projecting."""
    singular_values: Tensor
    """``(k,)`` float64."""
    explained_variance: Tensor
    """``(k,)`` float64: ``S**2 / (N - 1)``, the variance along each axis."""
    explained_variance_ratio: Tensor
    """``(k,)`` float64: the fraction of the total variance along each axis (sums to <= 1)."""
    trajectories: tuple[Tensor, ...]
    """Per sequence, ``(lengths[b], k)`` float64: its states projected, in time order."""
    layer: int
    state: str

    def transform(self, states: Tensor) -> Tensor:
        """Project states ``(..., D)`` on the components: ``(..., k)``."""
        _checks.floating_tensor("states", states)
        D = self.mean.shape[0]
        if states.shape[-1:] != (D,):
            raise ValueError(
                f"states must have {D} features in their last dimension, "
                f"got shape {tuple(states.shape)}"
            )
        centred = states.to(self.mean) - self.mean
        return centred @ self.components.T


def hidden_pca(
    source: nn.Module | Trace,
    input: Any = None,
    hx: Any = None,
    lengths: Any = None,
    *,
    layer: int = -1,
    state: str = "h",
    n_components: int | None = None,
) -> HiddenPCA:
    """PCA of the states of ``layer`` (the top one by default) over the valid steps, with the
    projected trajectory of each sequence.

    ``state='c'`` analyses the LSTM cell state instead of ``h``. ``n_components`` defaults to
    every component (``min(N, D)``). The decomposition is an exact SVD in float64
    (``torch.linalg.svd``): the matrices are small (steps times units) and a randomised one
    such as ``torch.pca_lowrank`` would make the picture depend on a seed.
    """
    tr = _trace_of(source, input, hx, lengths)
    layer = _index("layer", layer, tr.num_layers)
    _checks.choice("state", state, STATES)
    if state == "c" and tr.c is None:
        raise ValueError(f"state='c' needs an LSTM, got a trace of a {tr.family}")
    states = (tr.h if state == "h" else tr.c)[layer]  # type: ignore[index]
    # (D, T, B, size) -> (T, B, D * size): the directions side by side, as a concat merge.
    per_step = torch.cat(list(states.unbind(0)), dim=-1).to(torch.float64)
    valid = tr.valid
    X = per_step[valid]  # (N, D), ordered by t then b
    N, D = X.shape
    if N < 2:
        raise ValueError(
            f"hidden_pca needs at least 2 valid steps to estimate a variance, got {N} "
            f"(lengths {tr.lengths.tolist()})"
        )
    full_rank = min(N, D)
    if n_components is None:
        k = full_rank
    else:
        k = _checks.positive_int("n_components", n_components)
        if k > full_rank:
            raise ValueError(
                f"n_components must be <= min(valid steps, state size) = min({N}, {D}) = "
                f"{full_rank}, got {k}"
            )
    mean = X.mean(0)
    centred = X - mean
    _, S, Vh = torch.linalg.svd(centred, full_matrices=False)
    total = centred.square().sum()
    V = Vh[:k]
    biggest = V.abs().argmax(dim=1)
    signs = torch.sign(V[torch.arange(k), biggest])
    V = V * signs[:, None]
    S = S[:k]
    ratio = S.square() / total if float(total) > 0 else torch.zeros_like(S)
    projected = (per_step - mean) @ V.T  # (T, B, k)
    trajectories = tuple(projected[: int(n), b] for b, n in enumerate(tr.lengths.tolist()))
    return HiddenPCA(
        components=V,
        mean=mean,
        singular_values=S,
        explained_variance=S.square() / (N - 1),
        explained_variance_ratio=ratio,
        trajectories=trajectories,
        layer=layer,
        state=state,
    )


# ------------------------------------------------------------------------------ figures
def _figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas: no pyplot, no global state, nothing ever shown."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_gradient_norms(
    norms: GradientNorms | Mapping[str, GradientNorms],
    *,
    layer: int = -1,
    direction: int = 0,
    cell_state: bool = True,
) -> Figure:
    """Mean gradient norm against the distance from the last step, on a log scale: one line per
    model, so that ``{'RNN': ..., 'GRU': ..., 'LSTM': ...}`` is one comparison.

    For an LSTM, ``cell_state=True`` adds a dashed line for ``c_t`` in the same colour: the
    cell-state path is where the LSTM keeps its gradient. Steps the gradient does not reach
    (exact zeros) are left out of the log scale rather than drawn at the bottom.
    """
    if isinstance(norms, GradientNorms):
        models: Mapping[str, GradientNorms] = {norms.family.upper(): norms}
    elif isinstance(norms, Mapping) and norms:
        for name, value in norms.items():
            if not isinstance(value, GradientNorms):
                raise TypeError(
                    f"norms[{name!r}] must be a GradientNorms, got {_checks.describe(value)}"
                )
        models = norms
    else:
        raise TypeError(
            "norms must be a GradientNorms or a non-empty mapping of names to GradientNorms, "
            f"got {_checks.describe(norms)}"
        )
    _checks.boolean("cell_state", cell_state)
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    for index, (name, g) in enumerate(models.items()):
        color = f"C{index % 10}"
        d, n = g.profile(layer, direction, "h")
        ax.plot(d.cpu().numpy(), n.cpu().numpy(), color=color, label=f"{name}  ‖∂L/∂h_t‖")
        if cell_state and g.c is not None:
            d, n = g.profile(layer, direction, "c")
            ax.plot(
                d.cpu().numpy(),
                n.cpu().numpy(),
                color=color,
                linestyle="--",
                label=f"{name}  ‖∂L/∂c_t‖",
            )
    ax.set_yscale("log", nonpositive="mask")
    ax.set_xlabel("distance from the last step (steps)")
    ax.set_ylabel("mean gradient norm")
    losses = {g.loss for g in models.values()}
    ax.set_title(f"gradient through time (loss: {', '.join(sorted(losses))})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return fig


def plot_gate_saturation(stats: GateStatistics, *, layers: Sequence[int] | None = None) -> Figure:
    """Histograms of the gate activations: one row per layer (and direction), one column per
    gate, with the saturation thresholds as dashed lines and the fraction saturated in each
    title. Bars are fractions of the gate's values, so layers and models compare directly."""
    if not isinstance(stats, GateStatistics):
        raise TypeError(f"stats must be a GateStatistics, got {_checks.describe(stats)}")
    if layers is None:
        chosen = list(range(stats.num_layers))
    else:
        if not isinstance(layers, Sequence) or isinstance(layers, str) or not layers:
            raise TypeError(
                f"layers must be a non-empty list of ints, got {_checks.describe(layers)}"
            )
        chosen = [_index(f"layers[{i}]", v, stats.num_layers) for i, v in enumerate(layers)]
    rows = [(layer, d) for layer in chosen for d in range(stats.num_directions)]
    cols = stats.gates
    fig = _figure(2.9 * len(cols), 2.0 * len(rows) + 0.4)
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    for r, (layer, direction) in enumerate(rows):
        for col, gate in enumerate(cols):
            s = stats[layer, direction, gate]
            ax: Axes = axes[r][col]
            total = max(s.count, 1)
            ax.stairs(
                (s.histogram.to(torch.float64) / total).numpy(), s.bin_edges.numpy(), fill=True
            )
            for threshold in s.thresholds:
                ax.axvline(threshold, color="k", linestyle="--", linewidth=0.8)
            where = f"layer {layer}" + (" reverse" if direction else "")
            flat = "at 0" if s.kind == "relu" else "saturated"
            ax.set_title(f"{where} {gate} ({s.kind}): {s.saturated:.0%} {flat}", fontsize=9)
            if r == len(rows) - 1:
                ax.set_xlabel("activation")
            if col == 0:
                ax.set_ylabel("fraction")
    return fig


def plot_pca_trajectories(
    pca: HiddenPCA,
    *,
    components: tuple[int, int] = (0, 1),
    max_sequences: int | None = None,
) -> Figure:
    """Left: each sequence's trajectory in the plane of two principal components (a dot marks
    its first step); right: the explained-variance ratio of every component and its running
    sum."""
    if not isinstance(pca, HiddenPCA):
        raise TypeError(f"pca must be a HiddenPCA, got {_checks.describe(pca)}")
    k = int(pca.components.shape[0])
    if not isinstance(components, (tuple, list)) or len(components) != 2:
        raise TypeError(
            f"components must be a pair of component indices, got {_checks.describe(components)}"
        )
    a = _index("components[0]", components[0], k)
    b = _index("components[1]", components[1], k)
    if a == b:
        raise ValueError(f"components must be two different components, got ({a}, {b})")
    shown = pca.trajectories
    if max_sequences is not None:
        shown = shown[: _checks.positive_int("max_sequences", max_sequences)]
    fig = _figure(10.0, 4.2)
    left, right = fig.subplots(1, 2, width_ratios=(3, 2))
    for index, path in enumerate(shown):
        if path.shape[0] == 0:
            continue
        color = f"C{index % 10}"
        xs, ys = path[:, a].cpu().numpy(), path[:, b].cpu().numpy()
        left.plot(xs, ys, color=color, linewidth=1.0)
        left.scatter(xs[:1], ys[:1], color=color, s=18, zorder=3)
    ratio = pca.explained_variance_ratio.cpu()
    left.set_xlabel(f"PC{a + 1} ({float(ratio[a]):.1%})")
    left.set_ylabel(f"PC{b + 1} ({float(ratio[b]):.1%})")
    left.set_title(f"layer {pca.layer} {pca.state}_t trajectories")
    ticks = list(range(1, k + 1))
    right.bar(ticks, ratio.numpy(), color="C0", label="per component")
    right.plot(ticks, ratio.cumsum(0).numpy(), color="C1", marker="o", label="cumulative")
    right.set_ylim(0.0, 1.05)
    right.set_xlabel("component")
    right.set_ylabel("explained variance ratio")
    right.legend()
    return fig


# ------------------------------------------------------------------------------ helpers
def _index(name: str, value: Any, size: int) -> int:
    """Check an index into ``size`` things (negative counts from the end); return it >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_checks.describe(value)}")
    index = int(value)
    if not -size <= index < size:
        raise ValueError(f"{name} must be in [{-size}, {size - 1}], got {index}")
    return index % size


__all__ = [
    "LOSSES",
    "GateStatistics",
    "GateSummary",
    "GradientNorms",
    "HiddenPCA",
    "Trace",
    "gate_statistics",
    "gradient_norms",
    "hidden_pca",
    "plot_gate_saturation",
    "plot_gradient_norms",
    "plot_pca_trajectories",
    "trace",
]
