"""``torch.autograd.gradcheck`` in float64 for every variant and their combinations.

The checked function takes the input, the initial state (where given) and every parameter as
explicit inputs (through ``torch.func.functional_call``), so the analytic gradients of all of them
are compared with finite differences. Stochastic regularisers run in training mode with the random
generator re-seeded inside the function, so every evaluation draws the same masks.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

import lstmkit
from lstmkit.cells import LSTMMath

I, H, T, B = 3, 4, 4, 2
FULL_MODE_MAX_INPUTS = 450


@pytest.fixture(params=["reference", "auto"])
def backend(request) -> str:
    """The reference loop (plain autograd, the ground truth) and the default backend ('auto':
    the fused kernels with their hand-written backward where built and supported)."""
    return request.param


CLASSES = {"lstm": lstmkit.LSTM, "gru": lstmkit.GRU, "rnn": lstmkit.RNN}


def _parts(state) -> tuple[torch.Tensor, ...]:
    return tuple(state) if isinstance(state, tuple) else (state,)


def _gradcheck_module(
    module,
    *,
    lengths=None,
    with_hx=False,
    seed=None,
    batch=B,
    steps=T,
    x_scale=1.0,
) -> None:
    """Gradcheck ``module`` (in its current train/eval mode) wrt input, hx and all parameters."""
    module = module.double()
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in module.named_parameters()]
    gen = torch.Generator().manual_seed(1234)
    shape = (batch, steps) if module.batch_first else (steps, batch)
    x = (x_scale * torch.randn(*shape, module.input_size, generator=gen)).double()
    x.requires_grad_()
    hx_parts: list[torch.Tensor] = []
    if with_hx:
        cell = module.cell_math[0]
        lead = module.num_layers * (2 if module.bidirectional else 1)
        hx_parts = [
            torch.randn(lead, batch, size, generator=gen).double().requires_grad_()
            for size in cell.state_sizes
        ]
    n_hx = len(hx_parts)

    def f(x, *rest):
        if seed is not None:
            torch.manual_seed(seed)
        hx_in = rest[:n_hx]
        hx = None if not hx_in else (tuple(hx_in) if n_hx > 1 else hx_in[0])
        p = dict(zip(names, rest[n_hx:], strict=True))
        out, state = functional_call(module, p, (x, hx), {"lengths": lengths})
        return (out, *_parts(state))

    inputs = (x, *hx_parts, *params)
    # Sanity: the function is deterministic (same masks on every evaluation).
    first, second = f(*inputs), f(*inputs)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    # Full Jacobians for the small configurations; the large stacked ones (hundreds of inputs,
    # each costing two forward passes) use gradcheck's random-projection fast mode.
    fast = sum(t.numel() for t in inputs) > FULL_MODE_MAX_INPUTS
    assert gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=fast)


# --------------------------------------------------------------------------- LSTM variants
LSTM_VARIANTS = {
    "plain": {},
    "no_bias": {"bias": False},
    "peephole": {"peephole": True},
    "layer_norm": {"layer_norm": True},
    "coupled_gates": {"coupled_gates": True},
    "proj_size": {"proj_size": 2},
    "peephole_layer_norm": {"peephole": True, "layer_norm": True},
    "all_cell_variants": {"peephole": True, "layer_norm": True, "proj_size": 2},
    "coupled_peephole": {"coupled_gates": True, "peephole": True},
    "bidirectional_concat": {"bidirectional": True},
    "bidirectional_sum": {"bidirectional": True, "bidirectional_merge": "sum"},
    "bidirectional_mean": {"bidirectional": True, "bidirectional_merge": "mean"},
    "reverse": {"reverse": True},
    "residual": {"num_layers": 2, "residual": True},
    "residual_bidirectional": {"num_layers": 2, "residual": True, "bidirectional": True},
    "two_layers_proj": {"num_layers": 2, "proj_size": 2},
    "learn_initial_state": {"learn_initial_state": True, "num_layers": 2},
    "batch_first": {"batch_first": True},
}


@pytest.mark.parametrize("name", list(LSTM_VARIANTS))
def test_gradcheck_lstm_variants(name, backend):
    kwargs = LSTM_VARIANTS[name]
    module = lstmkit.LSTM(I, H, **kwargs, backend=backend)
    # learn_initial_state: hx=None so the gradient flows into the h0/c0 parameters.
    with_hx = name not in ("learn_initial_state",)
    if name == "learn_initial_state":
        with torch.no_grad():  # non-zero learned states so their gradient is non-trivial
            for n, p in module.named_parameters():
                if n[:2] in ("h0", "c0"):
                    p.normal_()
        assert {"h0_l0", "c0_l0", "h0_l1", "c0_l1"} <= dict(module.named_parameters()).keys()
    _gradcheck_module(module, with_hx=with_hx)


def _lstm_trajectory_pre_clip(module, x):
    """Pre-clip cell values of a 1-layer clipped LSTM, computed with an unclipped twin math."""
    cell = module.cell_math[0]
    twin = LSTMMath(
        cell.input_size,
        cell.hidden_size,
        bias=cell.bias,
        proj_size=cell.proj_size,
        peephole=cell.peephole,
        layer_norm=cell.layer_norm,
        coupled_gates=cell.coupled_gates,
        cell_clip=None,
    )
    p = {base: getattr(module, f"{base}_l0") for base in cell.parameter_shapes()}
    h = x.new_zeros(x.shape[1], cell.output_size)
    c = x.new_zeros(x.shape[1], cell.hidden_size)
    pre = []
    with torch.no_grad():
        xp = cell.project_input(x, p)
        for t in range(x.shape[0]):
            # c_t before clipping does not depend on the clip; h_t and the state do.
            pre.append(twin.step(xp[t], (h, c), p)[1])
            h, c = cell.step(xp[t], (h, c), p)
    return torch.stack(pre)


@pytest.mark.parametrize(
    "kwargs", [{}, {"coupled_gates": True}], ids=["cell_clip", "coupled_gates_cell_clip"]
)
def test_gradcheck_lstm_cell_clip(kwargs, backend):
    clip = 0.3
    module = lstmkit.LSTM(I, H, cell_clip=clip, **kwargs, backend=backend).double()
    x_scale = 3.0
    gen = torch.Generator().manual_seed(1234)
    x = (x_scale * torch.randn(T, B, I, generator=gen)).double()
    pre = _lstm_trajectory_pre_clip(module, x)
    # Clipping is active somewhere, and no pre-clip value is within reach of the boundary.
    assert (pre.abs() > clip).any()
    assert ((pre.abs() - clip).abs() > 1e-3).all()
    _gradcheck_module(module, x_scale=x_scale)


def test_gradcheck_reverse_with_lengths(backend):
    module = lstmkit.LSTM(I, H, reverse=True, backend=backend)
    _gradcheck_module(module, lengths=torch.tensor([4, 2, 3]), batch=3, with_hx=True)


@pytest.mark.parametrize(
    ("family", "kwargs"),
    [
        ("lstm", {"bidirectional": True}),
        ("lstm", {"num_layers": 2, "proj_size": 2}),
        ("gru", {"bidirectional": True, "reset_after": False}),
        ("rnn", {"num_layers": 2}),
    ],
)
def test_gradcheck_lengths_with_zero_length(family, kwargs, backend):
    """Gradients through lengths, one sequence of length 0: its final state is hx itself."""
    module = CLASSES[family](I, H, **kwargs, backend=backend)
    _gradcheck_module(module, lengths=torch.tensor([4, 0, 2]), batch=3, with_hx=True)


# --------------------------------------------------------------------------- GRU / RNN variants
@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "layer_norm"])
@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
def test_gradcheck_gru(reset_after, layer_norm, backend):
    module = lstmkit.GRU(I, H, reset_after=reset_after, layer_norm=layer_norm, backend=backend)
    _gradcheck_module(module, with_hx=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"nonlinearity": "tanh"},
        {"nonlinearity": "relu"},
        {"nonlinearity": "tanh", "layer_norm": True},
        {"nonlinearity": "relu", "layer_norm": True, "bidirectional": True},
    ],
    ids=["tanh", "relu", "tanh_layer_norm", "relu_layer_norm_bi"],
)
def test_gradcheck_rnn(kwargs, backend):
    module = lstmkit.RNN(I, H, **kwargs, backend=backend)
    _gradcheck_module(module, with_hx=True)


# --------------------------------------------------------------------------- training-mode masks
REGULARISERS = [
    ("lstm", {"zoneout": 0.3}),
    ("lstm", {"zoneout": (0.2, 0.5), "proj_size": 2}),
    ("lstm", {"recurrent_dropout": 0.3}),
    ("lstm", {"input_dropout": 0.3}),
    ("lstm", {"weight_drop": 0.3}),
    ("lstm", {"dropout": 0.3, "num_layers": 2}),
    ("lstm", {"zoneout": 0.2, "recurrent_dropout": 0.2, "input_dropout": 0.2, "weight_drop": 0.2}),
    ("lstm", {"layer_norm": True, "zoneout": 0.3, "recurrent_dropout": 0.3}),
    ("gru", {"zoneout": 0.3, "recurrent_dropout": 0.3}),
    ("gru", {"weight_drop": 0.3, "input_dropout": 0.3, "reset_after": False}),
    ("rnn", {"zoneout": 0.3, "recurrent_dropout": 0.3, "dropout": 0.3, "num_layers": 2}),
]


@pytest.mark.parametrize(
    ("family", "kwargs"), REGULARISERS, ids=[f"{f}-{'-'.join(k)}" for f, k in REGULARISERS]
)
def test_gradcheck_training_regularisers(family, kwargs, backend):
    module = CLASSES[family](I, H, **kwargs, backend=backend).train()
    _gradcheck_module(module, with_hx=True, seed=7)


def test_gradcheck_training_regularisers_with_lengths(backend):
    module = lstmkit.LSTM(
        I, H, zoneout=0.3, recurrent_dropout=0.3, bidirectional=True, backend=backend
    ).train()
    _gradcheck_module(module, with_hx=True, seed=3, lengths=torch.tensor([4, 0, 3]), batch=3)


# --------------------------------------------------------------------------- cells
@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (lstmkit.LSTMCell, {}),
        (lstmkit.LSTMCell, {"peephole": True, "layer_norm": True, "proj_size": 2}),
        (lstmkit.LSTMCell, {"coupled_gates": True, "peephole": True}),
        (lstmkit.GRUCell, {"reset_after": False, "layer_norm": True}),
        (lstmkit.GRUCell, {"layer_norm": True}),
        (lstmkit.RNNCell, {"nonlinearity": "relu", "layer_norm": True}),
    ],
)
def test_gradcheck_cells(cls, kwargs):
    cell = cls(I, H, **kwargs).double()
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in cell.named_parameters()]
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(B, I, generator=gen).double().requires_grad_()
    sizes = cell.cell_math.state_sizes
    hx = [torch.randn(B, s, generator=gen).double().requires_grad_() for s in sizes]

    def f(x, *rest):
        state = rest[: len(sizes)]
        p = dict(zip(names, rest[len(sizes) :], strict=True))
        arg = tuple(state) if len(sizes) > 1 else state[0]
        return _parts(functional_call(cell, p, (x, arg)))

    assert gradcheck(f, (x, *hx, *params), eps=1e-6, atol=1e-6, rtol=1e-4)
