"""The fused backend (C++ kernels with a hand-written backward) against the reference loop.

Two modules with the same state_dict, one with ``backend='reference'`` and one with
``backend='fused'``, run the same input with the same seed (so every dropout, weight-drop and
zoneout mask is the same) over a grid of variants, stacking, directions, lengths (with a zero
length), initial states and regularisation. In float32 outputs and final states agree within
1e-5 (plus 1e-6 relative: relu RNN outputs grow to O(10), and the kernels sum their products in
another order than ATen) and every parameter and input gradient within 1e-4, relative to the
gradient's largest entry where that exceeds 1 (with layer_norm, LN of the zero recurrent
product at the first step divides by sqrt(eps), which makes some gradients O(100) and float32
rounding grow with them; in float64 the two backends agree to ~1e-12 there too). Layer norm in
training mode is compared in float64 (1e-10): with masks on 4 units a row of tiny variance
comes up for some draws and float32 cannot be held to any fixed tolerance there. ``gradcheck``
in float64 checks each variant's hand-written gradients through the fused backend alone, and
two identical calls give bitwise identical results.

Also: lengths in any order (the kernels sort the batch and shrink it as sequences end) against
the reference, and a permuted batch giving the permuted results bitwise; ``recompute=True``
giving bitwise the outputs and gradients of ``recompute=False`` while saving less; bfloat16
against the reference in bfloat16 (loosely: the reference rounds every operation to bfloat16,
the kernels keep float32 between the products) and against float32; both ways of splitting
the work over two threads.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

pytest.importorskip(
    "lstmkit._C",
    reason="the fused backend's C++ extension lstmkit._C is not built "
    "(run `make`, or `pip install --no-build-isolation -e .` with torch installed)",
)

import lstmkit
from lstmkit import backends
from lstmkit.backends import fused

I, H, T, B = 3, 4, 5, 3
LENGTHS = [5, 0, 3]  # includes a zero length: the initial state comes back, outputs are zero
OUT_TOL = {"atol": 1e-5, "rtol": 1e-6}
GRAD_TOL = 1e-4

VARIANTS = {
    "lstm": (lstmkit.LSTM, {}),
    "lstm_no_bias": (lstmkit.LSTM, {"bias": False}),
    "lstm_peephole": (lstmkit.LSTM, {"peephole": True}),
    "lstm_cifg": (lstmkit.LSTM, {"coupled_gates": True}),
    "lstm_clip": (lstmkit.LSTM, {"cell_clip": 0.3}),
    "lstm_proj": (lstmkit.LSTM, {"proj_size": 2}),
    "lstm_peephole_cifg": (lstmkit.LSTM, {"peephole": True, "coupled_gates": True}),
    "lstm_all": (
        lstmkit.LSTM,
        {"peephole": True, "coupled_gates": True, "cell_clip": 0.3, "proj_size": 2},
    ),
    "lstm_peephole_clip_proj": (
        lstmkit.LSTM,
        {"peephole": True, "cell_clip": 0.3, "proj_size": 3, "bias": False},
    ),
    "lstm_ln": (lstmkit.LSTM, {"layer_norm": True}),
    # a looser clip with layer_norm: a row of c' clipped almost all to one value has a tiny
    # variance, and LN_c's 1/std then magnifies float32 rounding beyond the tolerance
    "lstm_ln_all": (
        lstmkit.LSTM,
        {
            "layer_norm": True,
            "peephole": True,
            "coupled_gates": True,
            "cell_clip": 0.8,
            "proj_size": 2,
            "bias": False,
        },
    ),
    "gru": (lstmkit.GRU, {}),
    "gru_reset_before": (lstmkit.GRU, {"reset_after": False}),
    "gru_no_bias": (lstmkit.GRU, {"bias": False, "reset_after": False}),
    "gru_ln": (lstmkit.GRU, {"layer_norm": True}),
    "gru_ln_reset_before": (lstmkit.GRU, {"layer_norm": True, "reset_after": False}),
    "rnn_tanh": (lstmkit.RNN, {}),
    "rnn_relu": (lstmkit.RNN, {"nonlinearity": "relu"}),
    "rnn_relu_no_bias": (lstmkit.RNN, {"nonlinearity": "relu", "bias": False}),
    "rnn_ln": (lstmkit.RNN, {"layer_norm": True}),
}
STRUCTURES = {
    "1": {},
    "1_bi": {"bidirectional": True},
    "1_reverse": {"reverse": True},
    "2": {"num_layers": 2},
    "2_bi": {"num_layers": 2, "bidirectional": True},
    "2_reverse": {"num_layers": 2, "reverse": True},
}
# plain: x needs no gradient (as a first layer's data); learned: learn_initial_state (a state
# expanded over the batch); hx: an initial state that needs a gradient.
INPUTS = ("plain", "lengths_learned", "lengths_hx", "hx")
REGULARISATION = ("none", "eval_zoneout", "train")


def _regularisation(kind: str, cls: type, num_layers: int) -> dict:
    zoneout = (0.3, 0.2) if cls is lstmkit.LSTM else 0.3
    if kind == "none":
        return {}
    if kind == "eval_zoneout":  # the expectation rate * old + (1 - rate) * new
        return {"zoneout": zoneout}
    reg = {
        "input_dropout": 0.2,
        "recurrent_dropout": 0.3,
        "weight_drop": 0.25,
        "zoneout": zoneout,
    }
    if num_layers > 1:
        reg["dropout"] = 0.3
    return reg


def _pair(cls: type, dtype: torch.dtype = torch.float32, **kwargs):
    """A reference and a fused module with the same (randomised) weights."""
    ref = cls(I, H, backend="reference", dtype=dtype, **kwargs)
    with torch.no_grad():
        for p in ref.parameters():  # biases and initial states away from zero, clipping active
            p.uniform_(-0.8, 0.8)
    fu = cls(I, H, backend="fused", dtype=dtype, **kwargs)
    fu.load_state_dict(ref.state_dict())
    return ref, fu


def _parts(state) -> list[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


def _run(module, x, hx, lengths, seed, weights):
    """Forward and backward of a fixed random weighted sum of outputs and final states."""
    for t in (x, *hx):
        t.grad = None
    module.zero_grad()
    torch.manual_seed(seed)
    hx_arg = None if not hx else (tuple(hx) if len(hx) > 1 else hx[0])
    out, state = module(x, hx_arg, lengths=lengths)
    parts = _parts(state)
    loss = sum((t * w).sum() for t, w in zip([out, *parts], weights, strict=True))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    if x.requires_grad:
        grads["input"] = x.grad.clone()
    for k, h in enumerate(hx):
        grads[f"hx{k}"] = h.grad.clone()
    return out.detach(), [s.detach() for s in parts], grads


@pytest.mark.parametrize("reg", REGULARISATION)
@pytest.mark.parametrize("inputs", INPUTS)
@pytest.mark.parametrize("structure", list(STRUCTURES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fused_matches_reference(variant, structure, inputs, reg):
    cls, options = VARIANTS[variant]
    layout = STRUCTURES[structure]
    kwargs = {
        **options,
        **layout,
        **_regularisation(reg, cls, layout.get("num_layers", 1)),
        "learn_initial_state": inputs == "lengths_learned",
    }
    # Layer norm over H=4 units in training (zoneout and dropout masks on a few units) now and
    # then meets a row of tiny variance, whose 1/std magnifies float32 rounding past any fixed
    # tolerance: those cases compare in float64, where both backends agree to ~1e-15 (the
    # kernels are one template for both types; float32 layer norm is covered by the other rows).
    float64 = bool(options.get("layer_norm")) and reg == "train"
    dtype = torch.float64 if float64 else torch.float32
    out_tol = {"atol": 1e-10, "rtol": 1e-10} if float64 else OUT_TOL
    grad_tol = 1e-9 if float64 else GRAD_TOL
    ref, fu = _pair(cls, dtype, **kwargs)
    ref.train(reg == "train")
    fu.train(reg == "train")

    gen = torch.Generator().manual_seed(7)
    x = torch.randn(T, B, I, generator=gen, dtype=dtype).requires_grad_(inputs != "plain")
    lengths = torch.tensor(LENGTHS) if inputs.startswith("lengths") else None
    hx: list[torch.Tensor] = []
    if inputs.endswith("hx"):
        cell = ref.cell_math[0]
        lead = ref.num_layers * ref.num_directions
        hx = [
            torch.randn(lead, B, n, generator=gen, dtype=dtype).requires_grad_()
            for n in cell.state_sizes
        ]
    with torch.no_grad():
        out, state = ref(x, None if not hx else (tuple(hx) if len(hx) > 1 else hx[0]))
    weights = [torch.randn(t.shape, generator=gen, dtype=dtype) for t in [out, *_parts(state)]]

    out_r, state_r, grads_r = _run(ref, x, hx, lengths, 11, weights)
    out_f, state_f, grads_f = _run(fu, x, hx, lengths, 11, weights)
    torch.testing.assert_close(out_f, out_r, **out_tol)
    for a, b in zip(state_f, state_r, strict=True):
        torch.testing.assert_close(a, b, **out_tol)
    assert grads_f.keys() == grads_r.keys()
    for name, g in grads_r.items():
        atol = grad_tol * max(1.0, g.abs().max().item())
        torch.testing.assert_close(grads_f[name], g, atol=atol, rtol=0.0, msg=f"gradient of {name}")

    # Inference (no autograd graph, nothing saved for backward) gives the same numbers.
    with torch.no_grad():
        torch.manual_seed(11)
        out_n, state_n = fu(x, None if not hx else (tuple(hx) if len(hx) > 1 else hx[0]), lengths)
    assert torch.equal(out_n, out_f)
    for a, b in zip(_parts(state_n), state_f, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("batch", "hidden"), [(17, 130), (3, 260), (17, 260)])
def test_fused_matches_reference_on_two_threads(batch, hidden):
    """Two threads: a batch of 17 with hidden 130 is split by sequences (each thread its own
    rows), one of 3 by units within each step (the threads meet after every phase), and one of
    17 with hidden 260 by units where the recurrent weights (over 1 MB for the LSTM) overflow
    a core's L2 but half of them fit (on this machine's 1 MB L2; elsewhere it may be the row
    split). Layer norm's whole-row passes, the projection's second product and the
    reset-before GRU's two products included. Results do not depend on the split: one thread
    gives the same bits (the products are the same chains of multiply-adds, and the gain and
    peephole gradients sum each sequence's steps in time order, then the sequences in order)."""
    threads = torch.get_num_threads()
    try:
        for cls, options in [
            (lstmkit.LSTM, {"peephole": True, "proj_size": hidden // 2 + 20}),
            (lstmkit.LSTM, {"layer_norm": True}),
            (lstmkit.GRU, {"reset_after": False}),
            (lstmkit.GRU, {"layer_norm": True}),
            (lstmkit.RNN, {}),
        ]:
            ref = cls(5, hidden, backend="reference", zoneout=0.2, recurrent_dropout=0.2, **options)
            fu = cls(5, hidden, backend="fused", zoneout=0.2, recurrent_dropout=0.2, **options)
            fu.load_state_dict(ref.state_dict())
            x = torch.randn(3, batch, 5, requires_grad=True)
            lengths = torch.tensor([*([3, 1] * 9)[: batch - 1], 0])
            results = []
            for m, n_threads in ((ref, 2), (fu, 2), (fu, 1)):
                torch.set_num_threads(n_threads)
                x.grad = None
                torch.manual_seed(2)
                out, state = m(x, lengths=lengths)
                (out.square().sum() + _parts(state)[-1].sum()).backward()
                grads = [p.grad.clone() for p in m.parameters()]
                results.append((out.detach(), x.grad.clone(), *grads))
                m.zero_grad()
            for a, b in zip(results[1], results[0], strict=True):
                torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
            for a, b in zip(results[1], results[2], strict=True):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- lengths
@pytest.mark.parametrize(
    "variant", ["lstm_all", "lstm_ln", "gru", "gru_ln_reset_before", "rnn_tanh"]
)
def test_lengths_in_any_order_match_reference(variant):
    """The kernels sort the batch by length once and shrink the active batch as sequences end:
    sorted (either way), unsorted, repeated and zero lengths all give the reference's results
    (training, with every regularisation mask), and in evaluation a permuted batch gives the
    permuted outputs and final states bitwise."""
    cls, options = VARIANTS[variant]
    reg = _regularisation("train", cls, 2)
    ref, fu = _pair(cls, **options, **reg, num_layers=2, bidirectional=True)
    gen = torch.Generator().manual_seed(5)
    steps, batch = 6, 7
    x = torch.randn(steps, batch, I, generator=gen).requires_grad_()
    for lengths in ([6, 5, 5, 3, 2, 1, 0], [0, 1, 2, 3, 5, 5, 6], [3, 6, 0, 5, 1, 5, 2]):
        lens = torch.tensor(lengths)
        ref.train()
        fu.train()
        weights = None
        results = []
        for m in (ref, fu):
            torch.manual_seed(9)
            out, state = m(x, lengths=lens)
            if weights is None:
                weights = [torch.randn(t.shape, generator=gen) for t in [out, *_parts(state)]]
            _, _, grads = _run(m, x, [], lens, 9, weights)
            results.append((out.detach(), [s.detach() for s in _parts(state)], grads))
        (out_r, st_r, gr_r), (out_f, st_f, gr_f) = results
        torch.testing.assert_close(out_f, out_r, **OUT_TOL)
        for a, b in zip(st_f, st_r, strict=True):
            torch.testing.assert_close(a, b, **OUT_TOL)
        for name, g in gr_r.items():
            atol = GRAD_TOL * max(1.0, g.abs().max().item())
            torch.testing.assert_close(gr_f[name], g, atol=atol, rtol=0.0, msg=name)
        fu.eval()
        with torch.no_grad():
            perm = torch.randperm(batch, generator=gen)
            out, state = fu(x, lengths=lens)
            out_p, state_p = fu(x[:, perm], lengths=lens[perm])
        assert torch.equal(out_p, out[:, perm])
        for a, b in zip(_parts(state_p), _parts(state), strict=True):
            assert torch.equal(a, b[:, perm])


def test_a_mask_that_is_not_lengths_runs_the_reference_loop():
    """The scan contract allows any (T, B, 1) mask; the kernels need lengths (a prefix of each
    sequence), so other masks go to the reference loop, with the same results."""
    cell = lstmkit.LSTM(I, H).cell_math[0]
    p = {n: torch.randn(s) * 0.5 for n, s in cell.parameter_shapes().items()}
    x = torch.randn(T, B, I)
    state = (torch.zeros(B, H), torch.zeros(B, H))
    valid = torch.rand(T, B, 1) > 0.3
    reg = backends.Regularisation()
    out_f, st_f = fused.scan(cell, p, x, state, valid, reg)
    out_r, st_r = backends.reference_scan(cell, p, x, state, valid, reg)
    assert torch.equal(out_f, out_r)
    for a, b in zip(st_f, st_r, strict=True):
        assert torch.equal(a, b)


def test_the_length_layout_is_computed_once_per_forward(monkeypatch):
    """A stacked bidirectional layer passes one mask to its four scans: the sort and the row
    indices are computed once, and a mask changed in place (or a new one) is not served stale."""
    calls = []
    compute = fused._compute_layout

    def counting(valid, T, B):
        calls.append((T, B))
        return compute(valid, T, B)

    monkeypatch.setattr(fused, "_compute_layout", counting)
    lstm = lstmkit.LSTM(I, H, num_layers=2, bidirectional=True, backend="fused")
    x = torch.randn(T, B, I)
    lengths = torch.tensor([T, 3, T - 1, 1][:B] + [2] * max(0, B - 4))
    lstm(x, lengths=lengths)
    assert len(calls) == 1
    lstm(x, lengths=lengths)  # a new forward builds a new mask
    assert len(calls) == 2

    cell = lstmkit.LSTM(I, H).cell_math[0]
    p = {n: torch.randn(s) * 0.5 for n, s in cell.parameter_shapes().items()}
    state = (torch.zeros(B, H), torch.zeros(B, H))
    valid = torch.arange(T)[:, None, None] < lengths[None, :, None]
    reg = backends.Regularisation()
    fused.scan(cell, p, x, state, valid, reg)
    valid[:, 0] = torch.arange(T)[:, None] < 2  # shorten sequence 0 in place
    out_f, _ = fused.scan(cell, p, x, state, valid, reg)
    out_r, _ = backends.reference_scan(cell, p, x, state, valid, reg)
    torch.testing.assert_close(out_f, out_r, rtol=1e-5, atol=1e-5)
    assert len(calls) == 4


# --------------------------------------------------------------------------- recompute
def _saved_bytes(module, x, lengths):
    """Bytes autograd saves for backward over one forward of ``module``."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _ = module(x, lengths=lengths)
    return total[0], out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_recompute_gives_identical_outputs_and_gradients(variant):
    """recompute=True saves only the states and replays the steps in backward: bitwise the same
    outputs and gradients as recompute=False (training masks, lengths, two layers, both
    directions), for less saved memory."""
    cls, options = VARIANTS[variant]
    kwargs = {**options, **_regularisation("train", cls, 2), "num_layers": 2, "bidirectional": True}
    _, plain = _pair(cls, **kwargs)
    lean = cls(I, H, backend="fused", recompute=True, **kwargs)
    lean.load_state_dict(plain.state_dict())
    assert lean.recompute and not plain.recompute
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(12, 9, I, generator=gen).requires_grad_()
    lengths = torch.tensor([12, 0, 7, 12, 3, 9, 1, 12, 5])
    results, saved = [], []
    for m in (plain, lean):
        m.train()
        x.grad = None
        torch.manual_seed(3)
        nbytes, out = _saved_bytes(m, x, lengths)
        out.square().sum().backward()
        saved.append(nbytes)
        results.append([out.detach(), x.grad.clone(), *(p.grad.clone() for p in m.parameters())])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
    assert saved[1] < saved[0]


# --------------------------------------------------------------------------- bfloat16
@pytest.mark.parametrize(
    "variant", ["lstm", "lstm_all", "lstm_ln", "gru", "gru_reset_before", "gru_ln", "rnn_relu"]
)
def test_bfloat16_matches_reference(variant):
    """bfloat16 weights and inputs: outputs and gradients in bfloat16, within a few per cent of
    float32 math on the same (rounded) weights, and within 0.15 of the reference loop in
    bfloat16 (relative to each tensor's largest entry), which rounds every operation."""
    cls, options = VARIANTS[variant]
    kwargs = {**options, "zoneout": 0.1 if cls is not lstmkit.LSTM else (0.1, 0.1)}
    ref32 = cls(I, 16, backend="reference", **kwargs)
    with torch.no_grad():
        for p in ref32.parameters():
            p.uniform_(-0.5, 0.5)
            p.copy_(p.bfloat16().float())
    ref16 = cls(I, 16, backend="reference", dtype=torch.bfloat16, **kwargs)
    fu16 = cls(I, 16, backend="fused", dtype=torch.bfloat16, **kwargs)
    ref16.load_state_dict(ref32.state_dict())
    fu16.load_state_dict(ref32.state_dict())
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(10, 6, I, generator=gen).bfloat16()
    lengths = torch.tensor([10, 4, 0, 7, 10, 1])
    results = {}
    for name, m in (("ref32", ref32), ("ref16", ref16), ("fu16", fu16)):
        m.eval()
        xi = (x.float() if name == "ref32" else x).clone().requires_grad_()
        out, state = m(xi, lengths=lengths)
        (out.float().square().sum() + _parts(state)[0].float().sum()).backward()
        results[name] = [out, *_parts(state), xi.grad, *(p.grad for p in m.parameters())]
    assert all(t.dtype == torch.bfloat16 for t in results["fu16"])
    for ours, ref32_t, ref16_t in zip(
        results["fu16"], results["ref32"], results["ref16"], strict=True
    ):
        scale = max(1e-3, ref32_t.abs().max().item())
        assert (ours.float() - ref32_t).abs().max().item() <= 0.04 * scale
        assert (ours.float() - ref16_t.float()).abs().max().item() <= 0.15 * scale


# --------------------------------------------------------------------------- gradcheck
def _gradcheck(module, *, lengths, with_hx, seed):
    module = module.double()
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    gen = torch.Generator().manual_seed(3)
    steps, batch = 3, len(lengths) if lengths is not None else 2
    x = torch.randn(steps, batch, module.input_size, generator=gen).double().requires_grad_()
    hx_parts = []
    if with_hx:
        lead = module.num_layers * module.num_directions
        hx_parts = [
            torch.randn(lead, batch, n, generator=gen).double().requires_grad_()
            for n in module.cell_math[0].state_sizes
        ]
    n_hx = len(hx_parts)
    lens = None if lengths is None else torch.tensor(lengths)

    def f(x, *rest):
        torch.manual_seed(seed)
        hx = None if not n_hx else (tuple(rest[:n_hx]) if n_hx > 1 else rest[0])
        p = dict(zip(names, rest[n_hx:], strict=True))
        out, state = functional_call(module, p, (x, hx), {"lengths": lens})
        return (out, *_parts(state))

    assert gradcheck(f, (x, *hx_parts, *params), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradcheck_fused_training(variant):
    """Training mode: recurrent dropout, weight drop, input dropout, zoneout masks; lengths with
    a zero; a given initial state."""
    cls, options = VARIANTS[variant]
    module = cls(
        2,
        4,
        backend="fused",
        **options,
        **_regularisation("train", cls, 1),
        dtype=torch.float64,
    ).train()
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.8, 0.8)
    _gradcheck(module, lengths=[3, 0, 2], with_hx=True, seed=5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradcheck_fused_eval_bidirectional(variant):
    """Evaluation mode with zoneout's expectation, bidirectional, learned initial state."""
    cls, options = VARIANTS[variant]
    module = cls(
        2,
        4,
        backend="fused",
        bidirectional=True,
        learn_initial_state=True,
        zoneout=0.4,
        **options,
        dtype=torch.float64,
    ).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.8, 0.8)
    _gradcheck(module, lengths=None, with_hx=False, seed=0)


# --------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("variant", ["lstm_all", "gru", "gru_reset_before", "rnn_relu"])
def test_two_identical_calls_are_bitwise_identical(variant):
    cls, options = VARIANTS[variant]
    module = cls(I, 8, num_layers=2, backend="fused", zoneout=0.1, recurrent_dropout=0.2, **options)
    x = torch.randn(T, B, I, requires_grad=True)
    lengths = torch.tensor(LENGTHS)
    results = []
    for _ in range(2):
        x.grad = None
        module.zero_grad()
        torch.manual_seed(4)
        out, state = module(x, lengths=lengths)
        (out.sum() + sum(s.square().sum() for s in _parts(state))).backward()
        grads = [p.grad.clone() for p in module.parameters()]
        results.append([out.detach(), *(s.detach() for s in _parts(state)), x.grad.clone(), *grads])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- backend choice
def _cell_and_input(dtype=torch.float32, **kwargs):
    m = lstmkit.LSTM(I, H, dtype=dtype, **kwargs)
    return m.cell_math[0], torch.randn(T, B, I, dtype=dtype)


def test_supports():
    reg = backends.Regularisation()
    x = torch.randn(T, B, I)
    for module in (
        lstmkit.LSTM(I, H, peephole=True, proj_size=2, layer_norm=True),
        lstmkit.GRU(I, H, reset_after=False, layer_norm=True),
        lstmkit.RNN(I, H, nonlinearity="relu"),
    ):
        cell = module.cell_math[0]
        assert fused.supports(cell, reg, x)
        assert fused.supports(cell, reg, x.double())
        assert fused.supports(cell, reg, x.bfloat16())
        assert not fused.supports(cell, reg, x.half())

    class MyMath(lstmkit.cells.LSTMMath):  # a user's own step: the kernels do not know it
        pass

    assert not fused.supports(MyMath(I, H), reg, x)


def test_resolve():
    assert backends.resolve("fused") is fused.scan
    assert backends.resolve("reference") is backends.reference_scan
    assert backends.resolve("auto") is backends.auto_scan
    assert "fused" in backends.BACKENDS
    # recompute binds to the fused scans; the reference loop ignores it
    assert backends.resolve("fused", recompute=True).keywords == {"recompute": True}
    assert backends.resolve("auto", recompute=True).func is backends.auto_scan
    assert backends.resolve("reference", recompute=True) is backends.reference_scan


def _spy_torch(monkeypatch, name):
    """Record the calls ``backend='auto'`` makes to torch's own ``torch.<name>``."""
    calls = []
    real = lstmkit.nn.layers._RecurrentBase._TORCH_FUNCTIONS[name]

    def spy(*args):
        calls.append(name)
        return real(*args)

    monkeypatch.setitem(lstmkit.nn.layers._RecurrentBase._TORCH_FUNCTIONS, name, spy)
    return calls


def test_auto_hands_plain_lstm_to_torch_where_torch_is_faster(monkeypatch):
    """A plain float32 LSTM with a batch of 16 or more and 128 or more units runs torch's own
    kernel (what nn.LSTM runs) under backend='auto': bitwise nn.LSTM's outputs, final states and
    gradients, on the module's own parameters."""
    calls = _spy_torch(monkeypatch, "lstm")
    ours = lstmkit.LSTM(8, 128, num_layers=2, bidirectional=True, dropout=0.3)
    ours.eval()  # inter-layer dropout inactive
    theirs = ours.to_torch().eval()
    x = torch.randn(5, 16, 8)
    h0 = torch.randn(4, 16, 128), torch.randn(4, 16, 128)
    out, (h, c) = ours(x, h0)
    out_t, (h_t, c_t) = theirs(x, h0)
    assert calls == ["lstm"]
    for a, b in ((out, out_t), (h, h_t), (c, c_t)):
        assert torch.equal(a, b)
    (out.sum() + c.sum()).backward()
    (out_t.sum() + c_t.sum()).backward()
    for (name, p), p_t in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        assert torch.equal(p.grad, p_t.grad), name


@pytest.mark.parametrize(
    "case",
    [
        "small batch",
        "small layer",
        "small batch in inference",
        "lengths",
        "variant",
        "zoneout",
        "training dropout",
        "reference",
        "float64",
        "proj_size",
    ],
)
def test_auto_keeps_the_fused_kernels_elsewhere(monkeypatch, case):
    """Everything else stays on the fused kernels (or the reference loop): lstmkit-only options
    and lengths (torch cannot express them, or runs packed input slowly), a training-mode
    inter-layer dropout (its mask must come from the same draws as the other backends), an
    explicit backend, and the shapes and dtypes where the fused kernels are faster."""
    calls = _spy_torch(monkeypatch, "lstm")
    hidden, batch, kwargs, call = 128, 16, {}, {}
    if case == "small batch":
        batch = 8
    elif case == "small batch in inference":
        hidden, batch = 512, 4
    elif case == "small layer":
        hidden = 64
    elif case == "lengths":
        call = {"lengths": torch.full((batch,), 5)}
    elif case == "variant":
        kwargs = {"peephole": True}
    elif case == "zoneout":
        kwargs = {"zoneout": 0.1}
    elif case == "training dropout":
        kwargs = {"num_layers": 2, "dropout": 0.3}
    elif case == "reference":
        kwargs = {"backend": "reference"}
    elif case == "float64":
        kwargs = {"dtype": torch.float64}
    elif case == "proj_size":
        kwargs = {"proj_size": 64}
    m = lstmkit.LSTM(8, hidden, **kwargs)
    m.train()
    x = torch.randn(5, batch, 8, dtype=kwargs.get("dtype", torch.float32))
    if case == "small batch in inference":
        with torch.no_grad():
            m(x)
    else:
        m(x, **call)
    assert calls == []


def test_auto_hands_small_batch_training_of_wide_lstms_to_torch(monkeypatch):
    """In training, from 256 units torch's kernel is faster at any batch size; in inference the
    same shape stays fused."""
    calls = _spy_torch(monkeypatch, "lstm")
    m = lstmkit.LSTM(8, 256)
    x = torch.randn(5, 1, 8)
    with torch.no_grad():
        m(x)
    assert calls == []
    m(x)[0].sum().backward()
    assert calls == ["lstm"]


def test_auto_keeps_long_training_batches_fused(monkeypatch):
    """Training on steps x batch x hidden >= LONG_TRAINING (up to 256 units) stays fused, where
    torch would fault its buffers in afresh on every call; one step shorter, and in inference,
    the same shape goes to torch."""
    calls = _spy_torch(monkeypatch, "lstm")
    m = lstmkit.LSTM(4, 128)
    T = lstmkit.nn.layers.LONG_TRAINING // (16 * 128)
    x = torch.randn(T, 16, 4)
    m(x)[0].sum().backward()
    assert calls == []
    with torch.no_grad():
        m(x)
    assert calls == ["lstm"]
    m(x[:-1])[0].sum().backward()
    assert calls == ["lstm", "lstm"]
    wide = lstmkit.LSTM(4, 512)  # the products dominate: torch's kernel stays the faster one
    wide(torch.randn(T // 4, 16, 4))[0].sum().backward()
    assert calls == ["lstm", "lstm", "lstm"]


def test_auto_never_hands_gru_or_rnn_to_torch_on_the_cpu(monkeypatch):
    gru_calls, rnn_calls = _spy_torch(monkeypatch, "gru"), _spy_torch(monkeypatch, "rnn_tanh")
    for cls in (lstmkit.GRU, lstmkit.RNN):
        cls(8, 512)(torch.randn(5, 64, 8))
    assert gru_calls == [] and rnn_calls == []


def test_auto_uses_fused_where_supported(monkeypatch):
    calls = []
    real = fused.scan

    def spy(*args, **kwargs):
        calls.append(type(args[0]).__name__)
        return real(*args, **kwargs)

    monkeypatch.setattr(fused, "scan", spy)
    x = torch.randn(T, B, I)
    lstmkit.LSTM(I, H, peephole=True, layer_norm=True)(x)
    lstmkit.GRU(I, H, reset_after=False)(x)
    lstmkit.RNN(I, H, nonlinearity="relu")(x)
    assert calls == ["LSTMMath", "GRUMath", "RNNMath"]
    calls.clear()
    bf16 = lstmkit.LSTM(I, H, dtype=torch.bfloat16)
    out_auto, _ = bf16(x.bfloat16())  # bfloat16 is fused too
    assert calls == ["LSTMMath"] and out_auto.dtype == torch.bfloat16
    calls.clear()
    half = lstmkit.LSTM(I, H, dtype=torch.float16)
    out_half, _ = half(x.half())  # float16 is not: the reference loop runs it
    assert calls == []
    ref = lstmkit.LSTM(I, H, dtype=torch.float16, backend="reference")
    ref.load_state_dict(half.state_dict())
    assert torch.equal(ref(x.half())[0], out_half)


def test_explicit_fused_rejects_unsupported_configuration():
    m = lstmkit.LSTM(I, H, backend="fused", dtype=torch.float16)
    with pytest.raises(ValueError, match=r"backend='fused' does not support dtype torch.float16"):
        m(torch.randn(T, B, I, dtype=torch.float16))


def test_without_extension_auto_warns_once_and_fused_says_how_to_build(monkeypatch):
    monkeypatch.setattr(fused, "_C", None)
    monkeypatch.setattr(fused, "_IMPORT_ERROR", ImportError("no module named lstmkit._C"))
    monkeypatch.setattr(backends, "_fallback_warned", False)
    x = torch.randn(T, B, I)
    ref = lstmkit.LSTM(I, H, backend="reference")
    auto = lstmkit.LSTM(I, H)
    auto.load_state_dict(ref.state_dict())
    with pytest.warns(
        RuntimeWarning, match=r"reference loop because the fused backend is not built.*make"
    ):
        out, _ = auto(x)
    assert torch.equal(out, ref(x)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto(x)  # once per process: no second warning
        lstmkit.GRU(I, H)(x)
    with pytest.raises(ImportError, match=r"backend='fused' is not available.*make"):
        lstmkit.LSTM(I, H, backend="fused")(x)


# ---------------------------------------------------------------------- zoneout masks
def test_bernoulli_mask_is_seeded_thread_independent_and_has_the_rate() -> None:
    like = torch.empty(0)
    torch.manual_seed(3)
    a = fused.bernoulli_mask((64, 32, 256), 0.1, like)
    assert a is not None and a.shape == (64, 32, 256) and a.dtype == torch.float32
    assert set(a.unique().tolist()) == {0.0, 1.0}
    # 524,288 draws of Bernoulli(0.1): the standard deviation of the mean is 0.0004
    assert abs(float(a.mean()) - 0.1) < 0.002
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.manual_seed(3)
        b = fused.bernoulli_mask((64, 32, 256), 0.1, like)
    finally:
        torch.set_num_threads(threads)
    assert b is not None and torch.equal(a, b)  # same seed, other thread count: same mask
    c = fused.bernoulli_mask((64, 32, 256), 0.1, like)
    assert c is not None and not torch.equal(a, c)  # the generator moved on
    # neighbours are independent: P(both kept) is p^2, not p
    flat = a.flatten()
    assert abs(float((flat[1:] * flat[:-1]).mean()) - 0.01) < 0.001
    for dtype in (torch.float64, torch.bfloat16, torch.bool):
        torch.manual_seed(3)
        d = fused.bernoulli_mask((64, 32, 256), 0.1, torch.empty(0, dtype=dtype))
        assert d is not None and d.dtype == dtype and torch.equal(d.float(), a)
    for p, value in ((0.0, 0.0), (1.0, 1.0)):
        e = fused.bernoulli_mask((1000,), p, like)
        assert e is not None and bool((e == value).all())
    assert fused.bernoulli_mask((4,), 0.5, torch.empty(0, dtype=torch.int64)) is None


def test_zoneout_training_masks_are_reproducible_with_manual_seed() -> None:
    layer = lstmkit.LSTM(3, 8, zoneout=(0.3, 0.2), backend="fused")
    x = torch.randn(20, 4, 3)
    torch.manual_seed(11)
    y1, _ = layer(x)
    torch.manual_seed(11)
    y2, _ = layer(x)
    y3, _ = layer(x)
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)


# ---------------------------------------------------------------------- buffer cache
def test_large_buffers_are_reused_from_the_cache_and_released_by_empty_cache() -> None:
    fused.empty_cache()
    assert fused.buffer_cache()["idle_bytes"] == 0
    layer = lstmkit.LSTM(16, 128, backend="fused")  # gate rows: 60 x 16 x 512 floats = 1.9 MB
    x = torch.randn(60, 16, 16, requires_grad=True)
    first = None
    for _ in range(3):
        y, _ = layer(x)
        y.sum().backward()
        grads = [p.grad.clone() for p in layer.parameters()]
        layer.zero_grad()
        x.grad = None
        if first is None:
            first = grads
        else:  # reused (uninitialised) buffers change nothing
            assert all(torch.equal(a, b) for a, b in zip(first, grads, strict=True))
    del y
    cache = fused.buffer_cache()
    assert cache["idle_bytes"] > 1 << 20 and cache["idle_buffers"] >= 1
    assert cache["idle_bytes"] <= cache["cap_bytes"]
    assert fused.empty_cache() == cache["idle_bytes"]
    assert fused.buffer_cache()["idle_bytes"] == 0


def test_buffer_cache_can_be_turned_off_for_memory_profiling() -> None:
    fused.empty_cache()
    layer = lstmkit.LSTM(16, 128, backend="fused")
    x = torch.randn(60, 16, 16, requires_grad=True)
    assert fused.set_buffer_cache(False) is True
    try:
        layer(x)[0].sum().backward()
        assert fused.buffer_cache()["idle_bytes"] == 0  # nothing went through the cache
    finally:
        assert fused.set_buffer_cache(True) is False
    layer(x)[0].sum().backward()
    assert fused.buffer_cache()["idle_bytes"] > 0
    with pytest.raises(TypeError, match="enabled must be a bool"):
        fused.set_buffer_cache(1)  # type: ignore[arg-type]


def test_scan_split_is_a_choice_of_speed_only():
    """Forcing the row or the unit split, for the forward and backward scans apart, gives the
    same bits as the size rule (two threads, a batch where either split is possible)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for cls, options in [
            (lstmkit.LSTM, {"layer_norm": True, "peephole": True}),
            (lstmkit.GRU, {}),
            (lstmkit.RNN, {}),
        ]:
            m = cls(6, 40, backend="fused", **options)
            x = torch.randn(5, 20, 6, requires_grad=True)
            results = []
            for split in [
                ("auto", "auto"),
                ("rows", "units"),
                ("units", "rows"),
                ("units", "units"),
            ]:
                previous = fused.set_scan_split(*split)
                try:
                    x.grad = None
                    m.zero_grad()
                    out, _ = m(x)
                    out.square().sum().backward()
                finally:
                    fused.set_scan_split(previous)
                results.append(
                    [out.detach(), x.grad.clone(), *(p.grad.clone() for p in m.parameters())]
                )
            for other in results[1:]:
                for a, b in zip(results[0], other, strict=True):
                    assert torch.equal(a, b)
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="mode must be one of 'auto', 'rows', 'units', got 'cols'"):
        fused.set_scan_split("cols")
    with pytest.raises(ValueError, match="backward must be one of"):
        fused.set_scan_split("rows", "diagonal")
    assert fused.set_scan_split("auto") == "auto"
