"""Behaviour of every variant beyond its gradients: hand-written formulas for one step, relations
between options, regularisation masks, and the initialisation schemes."""

from __future__ import annotations

import math

import pytest
import torch

import lstmkit

I, H, T, B = 3, 4, 5, 3
DT = torch.float64
CLASSES = {"lstm": lstmkit.LSTM, "gru": lstmkit.GRU, "rnn": lstmkit.RNN}


def _parts(state) -> list[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


def _randomise(module, scale=0.5):
    """Random values for every parameter (layer-norm gains around 1), so that no formula passes
    because a parameter happens to be zero or one."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("ln_") and "weight" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(scale * torch.randn_like(p))
    return module


def _ln(v, gain, bias=None):
    mu = v.mean(-1, keepdim=True)
    var = ((v - mu) ** 2).mean(-1, keepdim=True)
    out = (v - mu) / torch.sqrt(var + 1e-5) * gain
    return out if bias is None else out + bias


def _close(a, b, tol=1e-12):
    torch.testing.assert_close(a, b, atol=tol, rtol=0)


# --------------------------------------------------------------------------- LSTM cell variants
def test_peephole_with_zero_weights_equals_plain_lstm():
    peep = _randomise(lstmkit.LSTM(I, H, num_layers=2, peephole=True, dtype=DT))
    plain = lstmkit.LSTM(I, H, num_layers=2, dtype=DT)
    with torch.no_grad():
        for n in ("weight_peephole_l0", "weight_peephole_l1"):
            getattr(peep, n).zero_()
    state = {k: v for k, v in peep.state_dict().items() if "peephole" not in k}
    plain.load_state_dict(state)
    x = torch.randn(T, B, I, dtype=DT)
    y1, (h1, c1) = peep(x)
    y2, (h2, c2) = plain(x)
    _close(y1, y2)
    _close(h1, h2)
    _close(c1, c2)
    # ... and non-zero peephole weights do change the result.
    with torch.no_grad():
        peep.weight_peephole_l0.fill_(0.5)
    assert not torch.allclose(peep(x)[0], y2)


def test_peephole_one_step_formula():
    m = _randomise(lstmkit.LSTM(I, H, peephole=True, dtype=DT))
    assert m.weight_peephole_l0.shape == (3 * H,)
    x = torch.randn(1, B, I, dtype=DT)
    h0, c0 = torch.randn(1, B, H, dtype=DT), torch.randn(1, B, H, dtype=DT)
    y, (h1, c1) = m(x, (h0, c0))
    a = (x[0] @ m.weight_ih_l0.T + m.bias_ih_l0 + h0[0] @ m.weight_hh_l0.T + m.bias_hh_l0).detach()
    a_i, a_f, a_g, a_o = a.chunk(4, -1)
    p_i, p_f, p_o = m.weight_peephole_l0.detach().chunk(3)
    i = torch.sigmoid(a_i + p_i * c0[0])
    f = torch.sigmoid(a_f + p_f * c0[0])
    c = f * c0[0] + i * torch.tanh(a_g)
    o = torch.sigmoid(a_o + p_o * c)  # the output gate peeks at the new cell
    _close(c1[0], c)
    _close(h1[0], o * torch.tanh(c))
    _close(y[0], h1[0])


def test_coupled_gates_parameter_shapes():
    m = lstmkit.LSTM(I, H, coupled_gates=True, peephole=True)
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes["weight_ih_l0"] == (3 * H, I)
    assert shapes["weight_hh_l0"] == (3 * H, H)
    assert shapes["bias_ih_l0"] == shapes["bias_hh_l0"] == (3 * H,)
    assert shapes["weight_peephole_l0"] == (2 * H,)  # i and o only: no forget gate
    cell = lstmkit.LSTMCell(I, H, coupled_gates=True)
    assert tuple(cell.weight_ih.shape) == (3 * H, I)


def test_coupled_gates_one_step_formula():
    m = _randomise(lstmkit.LSTM(I, H, coupled_gates=True, dtype=DT))
    x = torch.randn(1, B, I, dtype=DT)
    h0, c0 = torch.randn(1, B, H, dtype=DT), torch.randn(1, B, H, dtype=DT)
    _, (h1, c1) = m(x, (h0, c0))
    a = (x[0] @ m.weight_ih_l0.T + m.bias_ih_l0 + h0[0] @ m.weight_hh_l0.T + m.bias_hh_l0).detach()
    a_i, a_g, a_o = a.chunk(3, -1)  # gate order i, g, o
    i = torch.sigmoid(a_i)
    c = (1.0 - i) * c0[0] + i * torch.tanh(a_g)  # f = 1 - i
    _close(c1[0], c)
    _close(h1[0], torch.sigmoid(a_o) * torch.tanh(c))


@pytest.mark.parametrize("kwargs", [{}, {"coupled_gates": True}, {"peephole": True}])
def test_cell_clip_bounds_cell_state(kwargs):
    clip = 0.5
    torch.manual_seed(0)
    clipped = lstmkit.LSTMCell(I, H, cell_clip=clip, dtype=DT, **kwargs)
    free = lstmkit.LSTMCell(I, H, dtype=DT, **kwargs)
    free.load_state_dict(clipped.state_dict())
    with torch.no_grad():  # large input bias so the cell integrates to well beyond the clip
        clipped.bias_ih.add_(1.0)
        free.bias_ih.add_(1.0)
    x = 3.0 * torch.randn(10, B, I, dtype=DT).abs()
    s_c = s_f = None
    max_c = max_f = 0.0
    for t in range(10):
        s_c = clipped(x[t], s_c)
        s_f = free(x[t], s_f)
        max_c = max(max_c, s_c[1].abs().max().item())
        max_f = max(max_f, s_f[1].abs().max().item())
    assert max_f > clip  # the unclipped twin does go past the clip ...
    assert max_c <= clip  # ... the clipped one never does
    assert math.isclose(max_c, clip)  # and sits at the boundary where it would go past
    # The layer clips the same way.
    layer = lstmkit.LSTM(I, H, cell_clip=clip, dtype=DT, **kwargs)
    layer.load_state_dict({f"{k}_l0": v for k, v in clipped.state_dict().items()})
    _, (h, c) = layer(x)
    _close(c[0], s_c[1])
    _close(h[0], s_c[0])


def test_layer_norm_lstm_one_step_formula():
    """Ba et al. 2016: LN on the input and recurrent projections (separately) and on the cell
    before the output tanh; biases added after the normalisation."""
    m = _randomise(lstmkit.LSTM(I, H, layer_norm=True, dtype=DT))
    names = {n for n, _ in m.named_parameters()}
    assert {"ln_ih_weight_l0", "ln_hh_weight_l0", "ln_cell_weight_l0", "ln_cell_bias_l0"} <= names
    x = torch.randn(1, B, I, dtype=DT)
    h0, c0 = torch.randn(1, B, H, dtype=DT), torch.randn(1, B, H, dtype=DT)
    _, (h1, c1) = m(x, (h0, c0))
    with torch.no_grad():
        a = (
            _ln(x[0] @ m.weight_ih_l0.T, m.ln_ih_weight_l0)
            + m.bias_ih_l0
            + _ln(h0[0] @ m.weight_hh_l0.T, m.ln_hh_weight_l0)
            + m.bias_hh_l0
        )
        a_i, a_f, a_g, a_o = a.chunk(4, -1)
        c = torch.sigmoid(a_f) * c0[0] + torch.sigmoid(a_i) * torch.tanh(a_g)
        h = torch.sigmoid(a_o) * torch.tanh(_ln(c, m.ln_cell_weight_l0, m.ln_cell_bias_l0))
    _close(c1[0], c)
    _close(h1[0], h)


def test_layer_norm_cell_matches_layer():
    layer = _randomise(lstmkit.LSTM(I, H, layer_norm=True, peephole=True, dtype=DT))
    cell = lstmkit.LSTMCell(I, H, layer_norm=True, peephole=True, dtype=DT)
    cell.load_state_dict({k[: -len("_l0")]: v for k, v in layer.state_dict().items()})
    x = torch.randn(T, B, I, dtype=DT)
    y, _ = layer(x)
    s = None
    for t in range(T):
        s = cell(x[t], s)
        _close(y[t], s[0])


# --------------------------------------------------------------------------- GRU / RNN formulas
@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "layer_norm"])
def test_gru_reset_before_one_step_formula(layer_norm):
    """reset_after=False is Cho et al. 2014: the reset gate multiplies h before W_hn."""
    m = _randomise(lstmkit.GRU(I, H, reset_after=False, layer_norm=layer_norm, dtype=DT))
    x = torch.randn(1, B, I, dtype=DT)
    h0 = torch.randn(1, B, H, dtype=DT)
    _, h1 = m(x, h0)
    with torch.no_grad():
        w_ih, w_hh = m.weight_ih_l0, m.weight_hh_l0
        b_ih, b_hh = m.bias_ih_l0, m.bias_hh_l0
        xi = x[0] @ w_ih.T
        rz_h = h0[0] @ w_hh[: 2 * H].T
        if layer_norm:
            xi = _ln(xi, m.ln_ih_weight_l0)
            rz_h = _ln(rz_h, m.ln_hh_weight_l0[: 2 * H])  # r and z: one 2H vector
        a = xi + b_ih
        u = rz_h + b_hh[: 2 * H]
        r = torch.sigmoid(a[:, :H] + u[:, :H])
        z = torch.sigmoid(a[:, H : 2 * H] + u[:, H:])
        n_h = (r * h0[0]) @ w_hh[2 * H :].T
        if layer_norm:
            n_h = _ln(n_h, m.ln_hh_weight_l0[2 * H :])  # the candidate: its own H vector
        n = torch.tanh(a[:, 2 * H :] + n_h + b_hh[2 * H :])
        h = (1 - z) * n + z * h0[0]
    _close(h1[0], h)


def test_gru_reset_before_differs_from_reset_after():
    after = _randomise(lstmkit.GRU(I, H, dtype=DT))
    before = lstmkit.GRU(I, H, reset_after=False, dtype=DT)
    before.load_state_dict(after.state_dict())
    x, h0 = torch.randn(T, B, I, dtype=DT), torch.randn(1, B, H, dtype=DT)
    assert not torch.allclose(after(x, h0)[0], before(x, h0)[0], atol=1e-6)


def test_gru_layer_norm_reset_after_one_step_formula():
    m = _randomise(lstmkit.GRU(I, H, layer_norm=True, dtype=DT))
    x, h0 = torch.randn(1, B, I, dtype=DT), torch.randn(1, B, H, dtype=DT)
    _, h1 = m(x, h0)
    with torch.no_grad():
        a = _ln(x[0] @ m.weight_ih_l0.T, m.ln_ih_weight_l0) + m.bias_ih_l0
        u = _ln(h0[0] @ m.weight_hh_l0.T, m.ln_hh_weight_l0) + m.bias_hh_l0  # one 3H vector
        r = torch.sigmoid(a[:, :H] + u[:, :H])
        z = torch.sigmoid(a[:, H : 2 * H] + u[:, H : 2 * H])
        n = torch.tanh(a[:, 2 * H :] + r * u[:, 2 * H :])
    _close(h1[0], (1 - z) * n + z * h0[0])


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_layer_norm_one_step_formula(nonlinearity):
    m = _randomise(lstmkit.RNN(I, H, nonlinearity=nonlinearity, layer_norm=True, dtype=DT))
    x, h0 = torch.randn(1, B, I, dtype=DT), torch.randn(1, B, H, dtype=DT)
    _, h1 = m(x, h0)
    act = torch.tanh if nonlinearity == "tanh" else torch.relu
    with torch.no_grad():
        pre = (
            _ln(x[0] @ m.weight_ih_l0.T, m.ln_ih_weight_l0)
            + m.bias_ih_l0
            + _ln(h0[0] @ m.weight_hh_l0.T, m.ln_hh_weight_l0)
            + m.bias_hh_l0
        )
    _close(h1[0], act(pre))


# --------------------------------------------------------------------------- layer-level options
def _reverse_within(x, lengths):
    out = x.clone()
    for b, n in enumerate(lengths):
        out[:n, b] = x[:n, b].flip(0)
    return out


@pytest.mark.parametrize("family", list(CLASSES))
def test_reverse_equals_running_reversed_sequences(family):
    rev = _randomise(CLASSES[family](I, H, num_layers=2, reverse=True, dtype=DT))
    fwd = CLASSES[family](I, H, num_layers=2, dtype=DT)
    fwd.load_state_dict(rev.state_dict())
    x = torch.randn(T, B, I, dtype=DT)
    lengths = [5, 2, 4]
    y_rev, s_rev = rev(x, lengths=lengths)
    y_fwd, s_fwd = fwd(_reverse_within(x, lengths), lengths=lengths)
    _close(y_rev, _reverse_within(y_fwd, lengths))
    for a, b in zip(_parts(s_rev), _parts(s_fwd), strict=True):
        _close(a, b)
    # Without lengths: a plain flip of the whole sequence.
    y_rev, _ = rev(x)
    _close(y_rev, fwd(x.flip(0))[0].flip(0))


def test_reverse_equals_backward_half_of_bidirectional():
    bi = _randomise(lstmkit.LSTM(I, H, bidirectional=True, dtype=DT))
    rev = lstmkit.LSTM(I, H, reverse=True, dtype=DT)
    rev.load_state_dict(
        {k.replace("_reverse", ""): v for k, v in bi.state_dict().items() if "_reverse" in k}
    )
    x = torch.randn(T, B, I, dtype=DT)
    lengths = [3, 5, 1]
    y_bi, (h_bi, _) = bi(x, lengths=lengths)
    y_rev, (h_rev, _) = rev(x, lengths=lengths)
    _close(y_bi[..., H:], y_rev)
    _close(h_bi[1], h_rev[0])


@pytest.mark.parametrize("family", list(CLASSES))
def test_bidirectional_merge_sum_and_mean(family):
    concat = _randomise(CLASSES[family](I, H, bidirectional=True, dtype=DT))
    merged = {}
    for merge in ("sum", "mean"):
        merged[merge] = CLASSES[family](
            I, H, bidirectional=True, bidirectional_merge=merge, dtype=DT
        )
        merged[merge].load_state_dict(concat.state_dict())
        assert merged[merge].output_size == H
    x = torch.randn(T, B, I, dtype=DT)
    lengths = [5, 3, 4]
    y_cat, s_cat = concat(x, lengths=lengths)
    fwd, bwd = y_cat[..., :H], y_cat[..., H:]
    y_sum, s_sum = merged["sum"](x, lengths=lengths)
    y_mean, s_mean = merged["mean"](x, lengths=lengths)
    _close(y_sum, fwd + bwd)
    _close(y_mean, (fwd + bwd) / 2)
    for a, b, c in zip(_parts(s_sum), _parts(s_mean), _parts(s_cat), strict=True):
        _close(a, c)
        _close(b, c)


def test_bidirectional_merge_sum_stacked_layer_input_size():
    m = lstmkit.LSTM(I, H, num_layers=2, bidirectional=True, bidirectional_merge="sum")
    assert m.weight_ih_l1.shape == (4 * H, H)  # the next layer sees H features, not 2H
    y, _ = m(torch.randn(T, B, I))
    assert y.shape == (T, B, H)


@pytest.mark.parametrize(
    ("family", "kwargs"),
    [("lstm", {}), ("lstm", {"bidirectional": True}), ("gru", {}), ("rnn", {})],
)
def test_residual_adds_layer_input(family, kwargs):
    num_layers = 3
    res = _randomise(
        CLASSES[family](I, H, num_layers=num_layers, residual=True, **kwargs, dtype=DT)
    )
    d = 2 if kwargs.get("bidirectional") else 1
    x = torch.randn(T, B, I, dtype=DT)
    lengths = [5, 2, 4]
    y, state = res(x, lengths=lengths)
    # Rebuild the stack layer by layer from single-layer modules with the same weights.
    layer_input, finals = x, []
    for layer in range(num_layers):
        single = CLASSES[family](H * d if layer else I, H, **kwargs, dtype=DT)
        single.load_state_dict(
            {
                k.replace(f"_l{layer}", "_l0"): v
                for k, v in res.state_dict().items()
                if f"_l{layer}" in k
            }
        )
        out, s = single(layer_input, lengths=lengths)
        finals.append(_parts(s))
        layer_input = out + layer_input if layer > 0 else out  # no skip into the first layer
    _close(y, layer_input)
    for k, part in enumerate(_parts(state)):
        _close(part, torch.cat([f[k] for f in finals]))


# --------------------------------------------------------------------------- regularisation: eval
EVAL_IDENTITY = [
    ("lstm", {"dropout": 0.5, "num_layers": 2}),
    ("lstm", {"input_dropout": 0.5}),
    ("lstm", {"recurrent_dropout": 0.5, "proj_size": 2}),
    ("lstm", {"weight_drop": 0.5}),
    ("gru", {"input_dropout": 0.3, "recurrent_dropout": 0.3, "weight_drop": 0.3}),
    (
        "rnn",
        {
            "input_dropout": 0.3,
            "recurrent_dropout": 0.3,
            "weight_drop": 0.3,
            "dropout": 0.3,
            "num_layers": 2,
        },
    ),
]


@pytest.mark.parametrize(("family", "kwargs"), EVAL_IDENTITY)
def test_dropouts_are_identity_in_eval_mode(family, kwargs):
    base = {k: v for k, v in kwargs.items() if k in ("num_layers", "proj_size")}
    reg = _randomise(CLASSES[family](I, H, **kwargs, dtype=DT)).eval()
    plain = CLASSES[family](I, H, **base, dtype=DT).eval()
    plain.load_state_dict(reg.state_dict())
    x = torch.randn(T, B, I, dtype=DT)
    y1, s1 = reg(x)
    y2, s2 = plain(x)
    _close(y1, y2, tol=0)
    for a, b in zip(_parts(s1), _parts(s2), strict=True):
        _close(a, b, tol=0)
    # In training mode they do change the result (so the comparison above is not vacuous).
    reg.train()
    assert not torch.allclose(reg(x)[0], y2)


@pytest.mark.parametrize("rates", [0.3, (0.2, 0.6)], ids=["same", "per_state"])
def test_zoneout_eval_is_expectation(rates):
    zh, zc = (rates, rates) if isinstance(rates, float) else rates
    zone = _randomise(lstmkit.LSTM(I, H, zoneout=rates, dtype=DT)).eval()
    cell = lstmkit.LSTMCell(I, H, dtype=DT)
    cell.load_state_dict({k[: -len("_l0")]: v for k, v in zone.state_dict().items()})
    x = torch.randn(T, B, I, dtype=DT)
    h, c = torch.randn(B, H, dtype=DT), torch.randn(B, H, dtype=DT)
    y, (h_n, c_n) = zone(x, (h[None], c[None]))
    with torch.no_grad():
        for t in range(T):
            h_new, c_new = cell(x[t], (h, c))
            h = zh * h + (1 - zh) * h_new
            c = zc * c + (1 - zc) * c_new
            _close(y[t], h)  # the output is the zoned-out h
    _close(h_n[0], h)
    _close(c_n[0], c)


@pytest.mark.parametrize("family", ["gru", "rnn"])
def test_zoneout_eval_is_expectation_gru_rnn(family):
    p = 0.35
    zone = _randomise(CLASSES[family](I, H, zoneout=p, dtype=DT)).eval()
    plain = CLASSES[family](I, H, dtype=DT)
    plain.load_state_dict(zone.state_dict())
    x, h0 = torch.randn(1, B, I, dtype=DT), torch.randn(1, B, H, dtype=DT)
    _, h1 = zone(x, h0)
    _, h_new = plain(x, h0)
    _close(h1, p * h0 + (1 - p) * h_new)


# --------------------------------------------------------------------------- regularisation: train
# The spies below watch the per-step calls of the reference loop, so those modules pin
# backend="reference"; the masks are drawn before the scan, identically for every backend.
REF = "reference"


@pytest.mark.parametrize(
    ("family", "kwargs"),
    [
        ("lstm", {"bidirectional": True, "zoneout": (0.2, 0.3), "proj_size": 2}),
        ("gru", {"reset_after": False}),
        ("rnn", {"reverse": True, "nonlinearity": "relu"}),
    ],
)
def test_training_masks_are_the_same_for_every_backend(family, kwargs):
    """The masks are drawn before the scan in a fixed order, so for one seed the default backend
    (fused kernels where built) applies exactly the masks the reference loop does."""
    regs = {"input_dropout": 0.2, "recurrent_dropout": 0.3, "weight_drop": 0.3, "dropout": 0.2}
    kwargs = {"zoneout": 0.3, **regs, **kwargs, "num_layers": 2, "dtype": DT}
    ref = _randomise(CLASSES[family](I, H, backend=REF, **kwargs)).train()
    auto = CLASSES[family](I, H, backend="auto", **kwargs).train()
    auto.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=DT)
    outs = []
    for m in (ref, auto):
        torch.manual_seed(5)
        outs.append(m(x, lengths=[5, 2, 4]))
    _close(outs[1][0], outs[0][0])
    for a, b in zip(_parts(outs[1][1]), _parts(outs[0][1]), strict=True):
        _close(a, b)
    torch.manual_seed(6)
    assert not torch.allclose(ref(x, lengths=[5, 2, 4])[0], outs[0][0])  # masks do vary


class _StepSpy:
    """Wraps a CellMath's ``step`` and ``project_input`` to record what they receive."""

    def __init__(self, cell):
        self.cell, self.steps, self.inputs = cell, [], []
        self._step, self._project = cell.step, cell.project_input

        def step(xp, state, p, h_mask=None):
            self.steps.append((h_mask, p["weight_hh"]))
            return self._step(xp, state, p, h_mask)

        def project_input(x, p):
            self.inputs.append(x)
            return self._project(x, p)

        cell.step, cell.project_input = step, project_input


@pytest.mark.parametrize("family", list(CLASSES))
def test_recurrent_dropout_one_mask_per_sequence(family):
    p = 0.5
    m = CLASSES[family](I, 16, recurrent_dropout=p, backend=REF).train()
    spy = _StepSpy(m.cell_math[0])
    x = torch.randn(T, 8, I)
    m(x)
    masks = [h for h, _ in spy.steps]
    assert len(masks) == T
    first = masks[0]
    assert first is not None and first.shape == (8, 16)
    for mask in masks[1:]:
        assert torch.equal(mask, first)  # the same mask at every time step
    values = set(first.unique().tolist())
    assert values == {0.0, 1.0 / (1.0 - p)}
    assert not all(torch.equal(first[0], row) for row in first[1:])  # one mask per sequence
    m(x)
    assert not torch.equal(spy.steps[T][0], first)  # a new mask on the next call
    m.eval()
    m(x)
    assert spy.steps[-1][0] is None


def test_recurrent_dropout_changes_recurrent_path_only():
    """The masked run equals the hand-written recurrence with h_{t-1} masked by the one mask."""
    p = 0.5
    torch.manual_seed(0)
    m = _randomise(lstmkit.RNN(I, H, recurrent_dropout=p, dtype=DT, backend=REF)).train()
    x = torch.randn(T, B, I, dtype=DT)
    torch.manual_seed(11)
    y, _ = m(x)
    spy = _StepSpy(m.cell_math[0])
    torch.manual_seed(11)
    y_again, _ = m(x)
    _close(y_again, y, tol=0)
    mask = spy.steps[0][0]
    h = torch.zeros(B, H, dtype=DT)
    with torch.no_grad():
        for t in range(T):
            h = torch.tanh(
                x[t] @ m.weight_ih_l0.T
                + m.bias_ih_l0
                + (h * mask) @ m.weight_hh_l0.T
                + m.bias_hh_l0
            )
            _close(y[t], h)


@pytest.mark.parametrize("family", list(CLASSES))
def test_weight_drop_one_mask_per_call(family):
    p = 0.5
    m = CLASSES[family](I, H, weight_drop=p, backend=REF).train()
    spy = _StepSpy(m.cell_math[0])
    x = torch.randn(T, B, I)
    m(x)
    weights = [w for _, w in spy.steps]
    for w in weights[1:]:
        assert torch.equal(w, weights[0])  # one dropped matrix for every step of the call
    w_raw = m.weight_hh_l0.detach()
    dropped = weights[0].detach()
    zero = dropped == 0
    assert zero.any() and (~zero).any()
    _close(dropped[~zero], w_raw[~zero] / (1 - p), tol=1e-6)
    m(x)
    assert not torch.equal(spy.steps[T][1], weights[0])  # a new mask on the next call
    assert torch.equal(m.weight_hh_l0.detach(), w_raw)  # the parameter itself is untouched


def test_input_dropout_one_mask_per_sequence():
    p = 0.5
    m = lstmkit.LSTM(6, H, input_dropout=p, backend=REF).train()
    spy = _StepSpy(m.cell_math[0])
    x = torch.randn(T, 8, 6)
    m(x)
    seen = spy.inputs[0]
    ratio = seen / x
    for t in range(1, T):
        assert torch.equal(ratio[t], ratio[0])  # the same features dropped at every step
    assert set(ratio.unique().tolist()) <= {0.0, 1.0 / (1 - p)}
    assert not all(torch.equal(ratio[0, 0], row) for row in ratio[0, 1:])  # per sequence


def test_zoneout_training_keeps_or_updates_each_unit():
    p = 0.25
    torch.manual_seed(0)
    zone = _randomise(lstmkit.GRU(I, 32, zoneout=p, dtype=DT)).train()
    plain = lstmkit.GRU(I, 32, dtype=DT)
    plain.load_state_dict(zone.state_dict())
    x, h0 = torch.randn(1, 64, I, dtype=DT), torch.randn(1, 64, 32, dtype=DT)
    _, h1 = zone(x, h0)
    _, h_new = plain(x, h0)
    kept = h1 == h0
    updated = h1 == h_new
    assert (kept | updated).all()  # each unit is exactly its old or its new value
    frac = kept.double().mean().item()
    assert abs(frac - p) < 0.05  # 2048 units: the kept fraction is close to the rate


def test_dropout_between_layers_only():
    m = _randomise(lstmkit.LSTM(I, H, num_layers=2, dropout=0.5, dtype=DT, backend=REF)).train()
    spy = _StepSpy(m.cell_math[1])
    x = torch.randn(T, B, I, dtype=DT)
    torch.manual_seed(3)
    y, _ = m(x)
    layer1_input = spy.inputs[0]
    single0 = lstmkit.LSTM(I, H, dtype=DT)
    single0.load_state_dict({k: v for k, v in m.state_dict().items() if "_l0" in k})
    y0, _ = single0(x)
    ratio = layer1_input / y0
    dropped = ratio == 0
    assert dropped.any()
    _close(ratio[~dropped], torch.full_like(ratio[~dropped], 2.0))  # kept, scaled by 1/(1-p)
    # No dropout after the last layer: outputs are the second layer's h, not scaled.
    single1 = lstmkit.LSTM(H, H, dtype=DT)
    single1.load_state_dict(
        {k.replace("_l1", "_l0"): v for k, v in m.state_dict().items() if "_l1" in k}
    )
    _close(y, single1(layer1_input)[0])


# --------------------------------------------------------------------------- initialisation
@pytest.mark.parametrize(
    ("family", "kwargs", "gates"),
    [
        ("lstm", {"num_layers": 2, "bidirectional": True}, 4),
        ("lstm", {"coupled_gates": True}, 3),
        ("gru", {"num_layers": 2}, 3),
        ("rnn", {}, 1),
    ],
)
def test_default_init_orthogonal_recurrent_blocks(family, kwargs, gates):
    hidden = 8
    m = CLASSES[family](5, hidden, **kwargs)
    for name, w in m.named_parameters():
        if name.startswith("weight_hh"):
            assert w.shape[0] == gates * hidden
            for block in w.detach().split(hidden, 0):
                _close(block @ block.T, torch.eye(hidden), tol=1e-5)
        elif name.startswith("weight_ih"):
            fan_in = w.shape[1]
            bound = math.sqrt(6.0 / (fan_in + hidden))  # Xavier-uniform per gate block
            assert w.abs().max() <= bound
            assert w.abs().max() > 0.5 * bound
        elif name.startswith("bias_hh"):
            assert torch.equal(w, torch.zeros_like(w))


def test_default_init_lstm_forget_bias():
    m = lstmkit.LSTM(I, H, num_layers=2, bidirectional=True)
    for layer in range(2):
        for suffix in ("", "_reverse"):
            b_ih = getattr(m, f"bias_ih_l{layer}{suffix}").detach()
            b_hh = getattr(m, f"bias_hh_l{layer}{suffix}").detach()
            expected = torch.zeros(4 * H)
            expected[H : 2 * H] = 1.0  # forget block of bias_ih
            assert torch.equal(b_ih, expected)
            assert torch.equal(b_hh, torch.zeros(4 * H))
    cell = lstmkit.LSTMCell(I, H)
    assert torch.equal(cell.bias_ih.detach()[H : 2 * H], torch.ones(H))


@pytest.mark.parametrize("init", ["default", "torch"])
def test_forget_bias_option(init):
    m = lstmkit.LSTM(I, H, forget_bias=2.0, init=init)
    assert torch.equal(m.bias_ih_l0.detach()[H : 2 * H], torch.full((H,), 2.0))
    assert torch.equal(m.bias_hh_l0.detach()[H : 2 * H], torch.zeros(H))
    # CIFG: f = 1 - sigmoid(a_i) = sigmoid(-a_i), so the input-gate bias is -forget_bias.
    cifg = lstmkit.LSTM(I, H, coupled_gates=True, forget_bias=2.0)
    assert torch.equal(cifg.bias_ih_l0.detach()[:H], torch.full((H,), -2.0))
    # Without the default forget bias (init='torch'), the forget block is torch's uniform.
    if init == "torch":
        plain = lstmkit.LSTM(I, H, init="torch")
        assert not torch.equal(plain.bias_ih_l0.detach()[H : 2 * H], torch.ones(H))


@pytest.mark.parametrize("t_max", [2.5, 50.0])
def test_chrono_init_lstm(t_max):
    hidden = 256
    m = lstmkit.LSTM(I, hidden, chrono_init=t_max, bidirectional=True)
    for suffix in ("", "_reverse"):
        b_ih = getattr(m, f"bias_ih_l0{suffix}").detach()
        b_hh = getattr(m, f"bias_hh_l0{suffix}").detach()
        b_i, b_f = b_ih[:hidden], b_ih[hidden : 2 * hidden]
        assert b_f.min() >= 0.0
        assert b_f.max() <= math.log(t_max - 1) + 1e-6
        assert torch.equal(b_i, -b_f)
        assert torch.equal(b_hh[: 2 * hidden], torch.zeros(2 * hidden))
        assert torch.equal(b_ih[2 * hidden :], torch.zeros(2 * hidden))
        # log-uniform: exp(b_f) is uniform on [1, T_max - 1] (mean in the middle)
        u = b_f.exp()
        assert abs(u.mean().item() - (t_max / 2)) < 0.1 * (t_max - 2) + 1e-6
        assert u.min() < 1 + 0.1 * (t_max - 2) and u.max() > t_max - 1 - 0.1 * (t_max - 2)


def test_chrono_init_gru_and_coupled():
    t_max = 20.0
    gru = lstmkit.GRU(I, 64, chrono_init=t_max)
    b_z = gru.bias_ih_l0.detach()[64:128]
    assert b_z.min() >= 0 and b_z.max() <= math.log(t_max - 1) + 1e-6
    assert b_z.std() > 0.1  # drawn per unit, not a constant
    assert torch.equal(gru.bias_hh_l0.detach()[64:128], torch.zeros(64))
    cifg = lstmkit.LSTM(I, 64, coupled_gates=True, chrono_init=t_max)
    b_i = cifg.bias_ih_l0.detach()[:64]
    assert b_i.max() <= 0 and b_i.min() >= -math.log(t_max - 1) - 1e-6


@pytest.mark.parametrize("family", list(CLASSES))
def test_init_torch_matches_torch_range(family):
    hidden = 16
    bound = 1.0 / math.sqrt(hidden)
    m = CLASSES[family](I, hidden, num_layers=2, bidirectional=True, init="torch")
    for name, p in m.named_parameters():
        assert p.abs().max() <= bound, name
        assert p.abs().max() > 0.7 * bound, name  # spread over the range, not concentrated
        assert abs(p.mean().item()) < 0.5 * bound, name
    ref = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[family](I, hidden)
    for p in ref.parameters():
        assert p.abs().max() <= bound


def test_init_torch_with_variants_keeps_layer_norm_identity():
    m = lstmkit.LSTM(I, H, init="torch", layer_norm=True, peephole=True, proj_size=2)
    bound = 1 / math.sqrt(H)
    assert torch.equal(m.ln_ih_weight_l0.detach(), torch.ones(4 * H))
    assert torch.equal(m.ln_cell_bias_l0.detach(), torch.zeros(H))
    assert m.weight_hr_l0.abs().max() <= bound
    assert m.weight_peephole_l0.abs().max() <= bound


@pytest.mark.parametrize("cls", [lstmkit.RNN, lstmkit.RNNCell])
def test_rnn_identity_init(cls):
    hidden = 32
    m = cls(I, hidden, nonlinearity="relu", init="identity")
    w_hh = m.weight_hh_l0 if cls is lstmkit.RNN else m.weight_hh
    w_ih = m.weight_ih_l0 if cls is lstmkit.RNN else m.weight_ih
    assert torch.equal(w_hh.detach(), torch.eye(hidden))
    assert 0 < w_ih.std().item() < 3e-3  # N(0, 0.001)
    for name, p in m.named_parameters():
        if name.startswith("bias"):
            assert torch.equal(p.detach(), torch.zeros_like(p))


def test_identity_init_rejected_for_gated_families():
    with pytest.raises(ValueError, match="identity"):
        lstmkit.LSTM(I, H, init="identity")
    with pytest.raises(ValueError, match="identity"):
        lstmkit.GRU(I, H, init="identity")


def test_layer_norm_gains_start_at_one():
    m = lstmkit.GRU(I, H, layer_norm=True)
    assert torch.equal(m.ln_ih_weight_l0.detach(), torch.ones(3 * H))
    assert torch.equal(m.ln_hh_weight_l0.detach(), torch.ones(3 * H))


def test_reset_parameters_reinitialises():
    m = lstmkit.LSTM(I, H, learn_initial_state=True)
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(3.0)
    m.reset_parameters()
    w = m.weight_hh_l0.detach()
    for block in w.split(H, 0):
        _close(block @ block.T, torch.eye(H), tol=1e-5)
    assert torch.equal(m.h0_l0.detach(), torch.zeros(H))
    assert torch.equal(m.bias_ih_l0.detach()[H : 2 * H], torch.ones(H))
