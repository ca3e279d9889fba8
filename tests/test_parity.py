"""Parity with ``torch.nn``: same weights, same inputs, same outputs, states and gradients.

Every configuration ``torch.nn`` supports is compared in float32 on tiny sizes: outputs and final
states within 1e-5, every parameter and input gradient within 1e-4, for a loss that is a random
weighted sum of the outputs and the final states.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import lstmkit

# torch's own CPU kernel warns that oneDNN has no projection LSTM; irrelevant here.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported:UserWarning")

I, H, P, T, B = 3, 4, 2, 5, 3
OUT_TOL = {"atol": 1e-5, "rtol": 0.0}
GRAD_TOL = {"atol": 1e-4, "rtol": 0.0}

# The reference loop (the ground truth) and the default 'auto' (the fused kernels where built).
BACKENDS = ("reference", "auto")
MODES = ("padded", "packed_sorted", "packed_unsorted", "lengths")
# Lengths per input mode: sorted (decreasing) for enforce_sorted=True, unsorted otherwise.
MODE_LENGTHS = {
    "packed_sorted": [5, 3, 2],
    "packed_unsorted": [3, 5, 1],
    "lengths": [2, 5, 4],
}

TORCH_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN, "rnn_relu": nn.RNN}
OUR_CLASSES = {
    "lstm": lstmkit.LSTM,
    "gru": lstmkit.GRU,
    "rnn_tanh": lstmkit.RNN,
    "rnn_relu": lstmkit.RNN,
}


def _family_kwargs(family: str) -> dict:
    if family.startswith("rnn"):
        return {"nonlinearity": family.split("_")[1]}
    return {}


def _make_torch(family: str, **kwargs) -> nn.RNNBase:
    return TORCH_CLASSES[family](I, H, **_family_kwargs(family), **kwargs)


def _state_parts(state) -> list[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


def _run(module, x, mode, lengths, batch_first, hx):
    """Run ``module`` on ``x`` in an input mode; return output as a tensor and the state parts.

    ``module`` is torch's or ours; for the ``lengths`` mode torch runs on the packed equivalent
    (it has no ``lengths=``) and its output is padded back.
    """
    is_ours = isinstance(module, lstmkit.LSTM | lstmkit.GRU | lstmkit.RNN)
    if mode == "padded":
        out, state = module(x, hx)
        return out, _state_parts(state), None
    lens = torch.tensor(lengths)
    if mode == "lengths":
        if is_ours:
            out, state = module(x, hx, lengths=lens)
        else:
            packed = pack_padded_sequence(x, lens, batch_first=batch_first, enforce_sorted=False)
            out_p, state = module(packed, hx)
            out, _ = pad_packed_sequence(out_p, batch_first=batch_first, total_length=T)
        return out, _state_parts(state), None
    sorted_ = mode == "packed_sorted"
    packed = pack_padded_sequence(x, lens, batch_first=batch_first, enforce_sorted=sorted_)
    out, state = module(packed, hx)
    assert isinstance(out, PackedSequence)
    return out.data, _state_parts(state), out


def _assert_parity(ref, ours, *, batch_first, mode, with_hx, out_features, state_sizes, seed=1):
    """Run ``ref`` (torch) and ``ours`` on the same data and compare everything."""
    torch.manual_seed(seed)
    lead = ref.num_layers * (2 if ref.bidirectional else 1)
    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(shape)
    h0 = [torch.randn(lead, B, s) for s in state_sizes] if with_hx else None
    lengths = MODE_LENGTHS.get(mode)

    results = []
    for module in (ref, ours):
        xi = x.clone().requires_grad_()
        hi = None if h0 is None else [h.clone().requires_grad_() for h in h0]
        hx = None if hi is None else (tuple(hi) if len(hi) > 1 else hi[0])
        out, states, packed = _run(module, xi, mode, lengths, batch_first, hx)
        results.append((xi, hi, out, states, packed))

    (x_r, h_r, out_r, st_r, pk_r), (x_o, h_o, out_o, st_o, pk_o) = results
    assert out_o.shape == out_r.shape
    assert out_o.shape[-1] == out_features
    torch.testing.assert_close(out_o, out_r, **OUT_TOL)
    assert len(st_o) == len(st_r)
    for a, b in zip(st_o, st_r, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, **OUT_TOL)
    if pk_r is not None:
        torch.testing.assert_close(pk_o.batch_sizes, pk_r.batch_sizes)
        for attr in ("sorted_indices", "unsorted_indices"):
            a, b = getattr(pk_o, attr), getattr(pk_r, attr)
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b)

    torch.manual_seed(seed + 1)
    w_out = torch.randn_like(out_r)
    w_states = [torch.randn_like(s) for s in st_r]
    for out, states in ((out_r, st_r), (out_o, st_o)):
        loss = (out * w_out).sum() + sum(
            (s * w).sum() for s, w in zip(states, w_states, strict=True)
        )
        loss.backward()

    ref_params = dict(ref.named_parameters())
    our_params = dict(ours.named_parameters())
    assert ref_params.keys() == our_params.keys()
    for name, p in ref_params.items():
        assert our_params[name].grad is not None, name
        torch.testing.assert_close(our_params[name].grad, p.grad, **GRAD_TOL, msg=name)
    torch.testing.assert_close(x_o.grad, x_r.grad, **GRAD_TOL)
    if h_r is not None:
        for a, b in zip(h_o, h_r, strict=True):
            torch.testing.assert_close(a.grad, b.grad, **GRAD_TOL)


# --------------------------------------------------------------------------- LSTM grid
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("proj_size", [0, P], ids=["noproj", "proj"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tbf", "bf"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("backend", BACKENDS)
def test_lstm_parity(backend, num_layers, bidirectional, batch_first, proj_size, mode, with_hx):
    torch.manual_seed(0)
    ref = nn.LSTM(
        I,
        H,
        num_layers=num_layers,
        batch_first=batch_first,
        bidirectional=bidirectional,
        proj_size=proj_size,
    )
    ours = lstmkit.LSTM.from_torch(ref, backend=backend)
    out_size = (proj_size or H) * (2 if bidirectional else 1)
    _assert_parity(
        ref,
        ours,
        batch_first=batch_first,
        mode=mode,
        with_hx=with_hx,
        out_features=out_size,
        state_sizes=(proj_size or H, H),
    )


# --------------------------------------------------------------------------- GRU / RNN grid
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tbf", "bf"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("family", ["gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gru_rnn_parity(backend, family, num_layers, bidirectional, batch_first, mode, with_hx):
    torch.manual_seed(0)
    ref = _make_torch(
        family, num_layers=num_layers, batch_first=batch_first, bidirectional=bidirectional
    )
    ours = OUR_CLASSES[family].from_torch(ref, backend=backend)
    _assert_parity(
        ref,
        ours,
        batch_first=batch_first,
        mode=mode,
        with_hx=with_hx,
        out_features=H * (2 if bidirectional else 1),
        state_sizes=(H,),
    )


@pytest.mark.parametrize("family", list(TORCH_CLASSES))
@pytest.mark.parametrize("mode", ["padded", "packed_unsorted"])
def test_parity_without_bias(family, mode):
    ref = _make_torch(family, num_layers=2, bidirectional=True, bias=False)
    ours = OUR_CLASSES[family].from_torch(ref)
    assert not any(name.startswith("bias") for name, _ in ours.named_parameters())
    sizes = (H, H) if family == "lstm" else (H,)
    _assert_parity(
        ref,
        ours,
        batch_first=False,
        mode=mode,
        with_hx=True,
        out_features=2 * H,
        state_sizes=sizes,
    )


@pytest.mark.parametrize("family", list(TORCH_CLASSES))
def test_parity_via_load_state_dict(family):
    """Building the module directly and loading torch's state_dict is the same as from_torch."""
    ref = _make_torch(family, num_layers=2, bidirectional=True)
    ours = OUR_CLASSES[family](I, H, num_layers=2, bidirectional=True, **_family_kwargs(family))
    ours.load_state_dict(ref.state_dict())
    sizes = (H, H) if family == "lstm" else (H,)
    _assert_parity(
        ref,
        ours,
        batch_first=True,
        mode="packed_unsorted",
        with_hx=True,
        out_features=2 * H,
        state_sizes=sizes,
    )


@pytest.mark.parametrize("family", list(TORCH_CLASSES))
def test_full_lengths_equal_no_lengths(family):
    """lengths all equal to T takes the no-mask path and must equal the plain run."""
    ours = OUR_CLASSES[family](I, H, num_layers=2, bidirectional=True, **_family_kwargs(family))
    x = torch.randn(T, B, I)
    y1, s1 = ours(x)
    y2, s2 = ours(x, lengths=[T] * B)
    torch.testing.assert_close(y2, y1, atol=0, rtol=0)
    for a, b in zip(_state_parts(s2), _state_parts(s1), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_parity_eval_mode_with_dropout():
    """Inter-layer dropout is off in eval mode, as in torch; from_torch keeps the mode."""
    ref = nn.LSTM(I, H, num_layers=2, dropout=0.5).eval()
    ours = lstmkit.LSTM.from_torch(ref)
    assert not ours.training
    assert ours.dropout == 0.5
    _assert_parity(
        ref,
        ours,
        batch_first=False,
        mode="padded",
        with_hx=False,
        out_features=H,
        state_sizes=(H, H),
    )


# --------------------------------------------------------------------------- unbatched input
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("family", [*TORCH_CLASSES, "lstm_proj"])
def test_unbatched_layer_parity(family, bidirectional, with_hx):
    torch.manual_seed(0)
    proj = P if family == "lstm_proj" else 0
    fam = "lstm" if family == "lstm_proj" else family
    kwargs = {"num_layers": 2, "bidirectional": bidirectional}
    if proj:
        kwargs["proj_size"] = proj
    ref = _make_torch(fam, **kwargs)
    ours = OUR_CLASSES[fam].from_torch(ref)
    lead = 2 * (2 if bidirectional else 1)
    sizes = (proj or H, H) if fam == "lstm" else (H,)
    x = torch.randn(T, I)
    h0 = [torch.randn(lead, s) for s in sizes] if with_hx else None
    outs = []
    for module in (ref, ours):
        xi = x.clone().requires_grad_()
        hi = None if h0 is None else [h.clone().requires_grad_() for h in h0]
        hx = None if hi is None else (tuple(hi) if len(hi) > 1 else hi[0])
        y, state = module(xi, hx)
        parts = _state_parts(state)
        loss = y.sin().sum() + sum(p.cos().sum() for p in parts)
        loss.backward()
        outs.append((y, parts, xi, hi))
    (y_r, s_r, x_r, h_r), (y_o, s_o, x_o, h_o) = outs
    assert y_o.shape == y_r.shape == (T, (proj or H) * (2 if bidirectional else 1))
    torch.testing.assert_close(y_o, y_r, **OUT_TOL)
    for a, b in zip(s_o, s_r, strict=True):
        assert a.shape == b.shape and a.dim() == 2
        torch.testing.assert_close(a, b, **OUT_TOL)
    torch.testing.assert_close(x_o.grad, x_r.grad, **GRAD_TOL)
    if h_r is not None:
        for a, b in zip(h_o, h_r, strict=True):
            torch.testing.assert_close(a.grad, b.grad, **GRAD_TOL)
    for (name, p_r), (name_o, p_o) in zip(
        ref.named_parameters(), ours.named_parameters(), strict=True
    ):
        assert name == name_o
        torch.testing.assert_close(p_o.grad, p_r.grad, **GRAD_TOL, msg=name)


# --------------------------------------------------------------------------- cells
CELL_PAIRS = {
    "lstm": (nn.LSTMCell, lstmkit.LSTMCell, {}),
    "gru": (nn.GRUCell, lstmkit.GRUCell, {}),
    "rnn_tanh": (nn.RNNCell, lstmkit.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (nn.RNNCell, lstmkit.RNNCell, {"nonlinearity": "relu"}),
}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("family", list(CELL_PAIRS))
def test_cell_parity(family, batched, with_hx, bias):
    torch_cls, our_cls, kwargs = CELL_PAIRS[family]
    ref = torch_cls(I, H, bias=bias, **kwargs)
    ours = our_cls.from_torch(ref)
    assert list(ours.state_dict()) == list(ref.state_dict())
    n_state = 2 if family == "lstm" else 1
    lead = (B,) if batched else ()
    x = torch.randn(*lead, I)
    h0 = [torch.randn(*lead, H) for _ in range(n_state)] if with_hx else None
    outs = []
    for module in (ref, ours):
        xi = x.clone().requires_grad_()
        hi = None if h0 is None else [h.clone().requires_grad_() for h in h0]
        hx = None if hi is None else (tuple(hi) if n_state == 2 else hi[0])
        # Two steps so that the recurrent weights get a gradient even without hx.
        state = module(xi, hx)
        state = module(xi * 0.5, state)
        parts = _state_parts(state)
        loss = sum((p * torch.linspace(-1, 1, p.numel()).view_as(p)).sum() for p in parts)
        loss.backward()
        outs.append((parts, xi, hi))
    (s_r, x_r, h_r), (s_o, x_o, h_o) = outs
    for a, b in zip(s_o, s_r, strict=True):
        assert a.shape == b.shape == (*lead, H)
        torch.testing.assert_close(a, b, **OUT_TOL)
    torch.testing.assert_close(x_o.grad, x_r.grad, **GRAD_TOL)
    if h_r is not None:
        for a, b in zip(h_o, h_r, strict=True):
            torch.testing.assert_close(a.grad, b.grad, **GRAD_TOL)
    for name, p_r in ref.named_parameters():
        torch.testing.assert_close(
            dict(ours.named_parameters())[name].grad, p_r.grad, **GRAD_TOL, msg=name
        )


@pytest.mark.parametrize("family", list(CELL_PAIRS))
def test_cell_to_torch_round_trip(family):
    torch_cls, our_cls, kwargs = CELL_PAIRS[family]
    ours = our_cls(I, H, **kwargs)
    ref = ours.to_torch()
    assert isinstance(ref, torch_cls)
    for (n_o, p_o), (n_r, p_r) in zip(
        ours.state_dict().items(), ref.state_dict().items(), strict=True
    ):
        assert n_o == n_r
        assert torch.equal(p_o, p_r)
    x = torch.randn(B, I)
    for a, b in zip(_state_parts(ours(x)), _state_parts(ref(x)), strict=True):
        torch.testing.assert_close(a, b, **OUT_TOL)
    back = our_cls.from_torch(ref)
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)


CELL_VARIANTS = [
    (lstmkit.LSTMCell, {"peephole": True}, "peephole"),
    (lstmkit.LSTMCell, {"layer_norm": True}, "layer_norm"),
    (lstmkit.LSTMCell, {"coupled_gates": True}, "coupled_gates"),
    (lstmkit.LSTMCell, {"cell_clip": 3.0}, "cell_clip"),
    (lstmkit.LSTMCell, {"proj_size": 2}, "proj_size"),
    (lstmkit.GRUCell, {"reset_after": False}, "reset_after"),
    (lstmkit.GRUCell, {"layer_norm": True}, "layer_norm"),
    (lstmkit.RNNCell, {"layer_norm": True}, "layer_norm"),
]


@pytest.mark.parametrize(("cls", "kwargs", "option"), CELL_VARIANTS)
def test_cell_to_torch_rejects_variants(cls, kwargs, option):
    cell = cls(I, H, **kwargs)
    with pytest.raises(ValueError, match=option):
        cell.to_torch()


# --------------------------------------------------------------------------- to_torch
@pytest.mark.parametrize(
    ("family", "kwargs"),
    [
        ("lstm", {}),
        ("lstm", {"num_layers": 2, "bidirectional": True, "proj_size": P, "batch_first": True}),
        ("lstm", {"bias": False, "num_layers": 3}),
        ("gru", {"num_layers": 2, "bidirectional": True}),
        ("rnn_tanh", {"batch_first": True}),
        ("rnn_relu", {"num_layers": 2, "bidirectional": True, "bias": False}),
    ],
)
def test_to_torch_round_trip(family, kwargs):
    ours = OUR_CLASSES[family](I, H, **_family_kwargs(family), **kwargs)
    ref = ours.to_torch()
    assert type(ref) is TORCH_CLASSES[family]
    for attr in ("num_layers", "bias", "batch_first", "bidirectional", "dropout"):
        assert getattr(ref, attr) == getattr(ours, attr)
    if family == "lstm":
        assert ref.proj_size == ours.proj_size
    if family.startswith("rnn"):
        assert ref.nonlinearity == family.split("_")[1]
    sd_o, sd_r = ours.state_dict(), ref.state_dict()
    assert list(sd_o) == list(sd_r)
    for k in sd_o:
        assert torch.equal(sd_o[k], sd_r[k]), k
    shape = (B, T, I) if ours.batch_first else (T, B, I)
    x = torch.randn(shape)
    y_o, s_o = ours(x)
    y_r, s_r = ref(x)
    torch.testing.assert_close(y_o, y_r, **OUT_TOL)
    for a, b in zip(_state_parts(s_o), _state_parts(s_r), strict=True):
        torch.testing.assert_close(a, b, **OUT_TOL)
    back = type(ours).from_torch(ref)
    assert back.variant_options() == ours.variant_options()
    for k in sd_o:
        assert torch.equal(back.state_dict()[k], sd_o[k]), k


def test_to_torch_keeps_training_mode():
    ours = lstmkit.LSTM(I, H, num_layers=2, dropout=0.25)
    assert ours.to_torch().training
    ours.eval()
    ref = ours.to_torch()
    assert not ref.training
    assert ref.dropout == 0.25


@pytest.mark.parametrize(
    "kwargs",
    [{"init": "torch"}, {"forget_bias": 2.0}, {"chrono_init": 8.0}, {"backend": "reference"}],
)
def test_to_torch_accepts_init_only_options(kwargs):
    """Options that only change the initial values or the backend keep the torch math."""
    ours = lstmkit.LSTM(I, H, **kwargs)
    ref = ours.to_torch()
    x = torch.randn(T, B, I)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], **OUT_TOL)


LAYER_VARIANTS = [
    ("lstm", {"peephole": True}, "peephole"),
    ("lstm", {"layer_norm": True}, "layer_norm"),
    ("lstm", {"coupled_gates": True}, "coupled_gates"),
    ("lstm", {"cell_clip": 3.0}, "cell_clip"),
    ("lstm", {"reverse": True}, "reverse"),
    ("lstm", {"residual": True, "num_layers": 2}, "residual"),
    ("lstm", {"bidirectional": True, "bidirectional_merge": "sum"}, "bidirectional_merge"),
    ("lstm", {"learn_initial_state": True}, "learn_initial_state"),
    ("lstm", {"input_dropout": 0.1}, "input_dropout"),
    ("lstm", {"recurrent_dropout": 0.1}, "recurrent_dropout"),
    ("lstm", {"weight_drop": 0.1}, "weight_drop"),
    ("lstm", {"zoneout": 0.1}, "zoneout"),
    ("lstm", {"zoneout": (0.0, 0.1)}, "zoneout"),
    ("gru", {"reset_after": False}, "reset_after"),
    ("gru", {"layer_norm": True}, "layer_norm"),
    ("gru", {"zoneout": 0.2}, "zoneout"),
    ("gru", {"bidirectional": True, "bidirectional_merge": "mean"}, "bidirectional_merge"),
    ("rnn_tanh", {"layer_norm": True}, "layer_norm"),
    ("rnn_relu", {"reverse": True}, "reverse"),
    ("rnn_tanh", {"recurrent_dropout": 0.3}, "recurrent_dropout"),
]


@pytest.mark.parametrize(("family", "kwargs", "option"), LAYER_VARIANTS)
def test_to_torch_rejects_variants(family, kwargs, option):
    module = OUR_CLASSES[family](I, H, **_family_kwargs(family), **kwargs)
    assert option in module.non_torch_options()
    with pytest.raises(ValueError, match=option):
        module.to_torch()


def test_to_torch_names_every_variant():
    module = lstmkit.LSTM(I, H, peephole=True, zoneout=0.1, layer_norm=True)
    with pytest.raises(ValueError) as info:
        module.to_torch()
    for option in ("peephole", "zoneout", "layer_norm"):
        assert option in str(info.value)


# --------------------------------------------------------------------------- state_dict names
STATE_DICT_GRID = [
    (family, layers, bidir, bias, proj)
    for family, layers, bidir, bias, proj in itertools.product(
        TORCH_CLASSES, [1, 2, 3], [False, True], [True, False], [0, P]
    )
    if proj == 0 or family == "lstm"
]


@pytest.mark.parametrize(("family", "num_layers", "bidirectional", "bias", "proj"), STATE_DICT_GRID)
def test_state_dict_names_match_torch(family, num_layers, bidirectional, bias, proj):
    kwargs = {"num_layers": num_layers, "bidirectional": bidirectional, "bias": bias}
    if proj:
        kwargs["proj_size"] = proj
    ref = _make_torch(family, **kwargs)
    ours = OUR_CLASSES[family](I, H, **_family_kwargs(family), **kwargs)
    sd_r, sd_o = ref.state_dict(), ours.state_dict()
    assert list(sd_o) == list(sd_r)
    for k in sd_r:
        assert sd_o[k].shape == sd_r[k].shape, k
    if proj:
        assert "weight_hr_l0" in sd_o
    if bidirectional:
        assert f"weight_ih_l{num_layers - 1}_reverse" in sd_o
    # all_weights groups per layer and direction, as torch.
    assert [[w.shape for w in ws] for ws in ours.all_weights] == [
        [w.shape for w in ws] for ws in ref.all_weights
    ]
