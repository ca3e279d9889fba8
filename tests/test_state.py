"""Recurrent state: carrying it across calls, resetting it, initial states, lengths edge cases."""

from __future__ import annotations

import pytest
import torch

import lstmkit

I, H, T, B = 3, 4, 7, 3
CLASSES = {"lstm": lstmkit.LSTM, "gru": lstmkit.GRU, "rnn": lstmkit.RNN}


def _parts(state) -> list[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


def _pack(parts):
    return tuple(parts) if len(parts) > 1 else parts[0]


# Unidirectional configurations whose state fully summarises the past (eval mode).
STATEFUL = [
    ("lstm", {}),
    ("lstm", {"num_layers": 2}),
    ("lstm", {"num_layers": 2, "proj_size": 2, "batch_first": True}),
    ("lstm", {"peephole": True, "layer_norm": True}),
    ("lstm", {"coupled_gates": True, "cell_clip": 0.5, "num_layers": 2}),
    ("lstm", {"zoneout": (0.3, 0.1), "num_layers": 2, "residual": True}),
    ("lstm", {"learn_initial_state": True, "num_layers": 2}),
    ("gru", {}),
    ("gru", {"num_layers": 3, "batch_first": True}),
    ("gru", {"reset_after": False, "layer_norm": True, "zoneout": 0.2}),
    ("rnn", {"nonlinearity": "relu", "num_layers": 2}),
    ("rnn", {"layer_norm": True, "zoneout": 0.4}),
]
STATEFUL_IDS = [f"{f}-{'-'.join(k) or 'plain'}" for f, k in STATEFUL]
LENGTHS_CHUNKED = (0, 2, 5, 6, 8, 9, 11)  # a subset for the chunked-with-lengths test


def _module(family, kwargs):
    torch.manual_seed(0)
    m = CLASSES[family](I, H, **kwargs).double().eval()
    if kwargs.get("learn_initial_state"):
        with torch.no_grad():
            for n, p in m.named_parameters():
                if n[:2] in ("h0", "c0"):
                    p.normal_()
    return m


def _input(module, steps=T, batch=B):
    shape = (batch, steps, I) if module.batch_first else (steps, batch, I)
    return torch.randn(shape, dtype=torch.float64)


def _time_slice(module, x, start, stop):
    return x[:, start:stop] if module.batch_first else x[start:stop]


def _time_cat(module, ys):
    return torch.cat(ys, 1 if module.batch_first else 0)


@pytest.mark.parametrize("chunks", [(3, 1, 3), (1,) * T], ids=["chunks", "steps"])
@pytest.mark.parametrize(("family", "kwargs"), STATEFUL, ids=STATEFUL_IDS)
def test_chunked_run_equals_full_run(family, kwargs, chunks):
    """Carrying hx across chunks (or single steps) reproduces the full-sequence run."""
    m = _module(family, kwargs)
    x = _input(m)
    y_full, s_full = m(x)
    ys, hx, start = [], None, 0
    for n in chunks:
        y, hx = m(_time_slice(m, x, start, start + n), hx)
        ys.append(y)
        start += n
    torch.testing.assert_close(_time_cat(m, ys), y_full, atol=1e-12, rtol=0)
    for a, b in zip(_parts(hx), _parts(s_full), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("family", "kwargs"),
    [STATEFUL[k] for k in LENGTHS_CHUNKED],
    ids=[STATEFUL_IDS[k] for k in LENGTHS_CHUNKED],
)
def test_chunked_run_with_lengths(family, kwargs):
    """Chunking with per-chunk lengths: outputs and final states equal the full run with lengths;
    a sequence that has ended keeps its state through the later chunks."""
    m = _module(family, kwargs)
    x = _input(m)
    lengths = torch.tensor([7, 2, 5])
    y_full, s_full = m(x, lengths=lengths)
    ys, hx, start = [], None, 0
    for n in (3, 3, 1):
        chunk_len = (lengths - start).clamp(0, n)
        y, hx = m(_time_slice(m, x, start, start + n), hx, lengths=chunk_len)
        ys.append(y)
        if start >= 2:  # sequence 1 (length 2) has ended: its state is frozen
            for a, b in zip(_parts(hx), _parts(s_full), strict=True):
                torch.testing.assert_close(a[:, 1], b[:, 1], atol=1e-12, rtol=0)
        start += n
    torch.testing.assert_close(_time_cat(m, ys), y_full, atol=1e-12, rtol=0)
    for a, b in zip(_parts(hx), _parts(s_full), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("family", list(CLASSES))
def test_lengths_final_state_is_state_at_last_valid_step(family):
    m = _module(family, {"num_layers": 2})
    x = _input(m)
    lengths = [7, 2, 5]
    _, s = m(x, lengths=lengths)
    for b, n in enumerate(lengths):
        _, s_b = m(x[:n, b : b + 1])
        for a, ref in zip(_parts(s), _parts(s_b), strict=True):
            torch.testing.assert_close(a[:, b : b + 1], ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("family", list(CLASSES))
def test_bidirectional_final_state_matches_outputs(family):
    """h_n of the last layer: forward = output at the last valid step, reverse = output at 0."""
    m = _module(family, {"num_layers": 2, "bidirectional": True})
    x = _input(m)
    lengths = [7, 2, 5]
    y, state = m(x, lengths=lengths)
    h_n = _parts(state)[0]
    for b, n in enumerate(lengths):
        torch.testing.assert_close(h_n[2, b], y[n - 1, b, :H], atol=0, rtol=0)
        torch.testing.assert_close(h_n[3, b], y[0, b, H:], atol=0, rtol=0)


# --------------------------------------------------------------------------- reset_state
@pytest.mark.parametrize("family", list(CLASSES))
def test_reset_state_zeroes_only_masked_rows(family):
    m = _module(family, {"num_layers": 2, "bidirectional": True})
    _, hx = m(_input(m))
    hx = _pack([p.detach().clone().requires_grad_() for p in _parts(hx)])
    mask = torch.tensor([True, False, True])
    out = m.reset_state(hx, mask)
    assert type(out) is type(hx)
    for new, old in zip(_parts(out), _parts(hx), strict=True):
        assert new.shape == old.shape
        assert torch.equal(new[:, mask], torch.zeros_like(new[:, mask]))
        assert torch.equal(new[:, ~mask], old[:, ~mask])
        assert (old[:, mask] != 0).any()
    # Autograd flows to the kept rows only; the input is not modified in place.
    sum(p.sum() for p in _parts(out)).backward()
    for old in _parts(hx):
        assert torch.equal(old.grad[:, ~mask], torch.ones_like(old.grad[:, ~mask]))
        assert torch.equal(old.grad[:, mask], torch.zeros_like(old.grad[:, mask]))
        assert (old[:, mask] != 0).any()


@pytest.mark.parametrize("family", ["lstm", "gru"])
def test_reset_state_with_learned_initial_state(family):
    kwargs = {"num_layers": 2, "learn_initial_state": True, "bidirectional": True}
    if family == "lstm":
        kwargs["proj_size"] = 2
    m = _module(family, kwargs)
    _, hx = m(_input(m))
    mask = torch.tensor([False, True, False])
    out = m.reset_state(hx, mask)
    init = m.initial_state(B, dtype=torch.float64)
    for new, old, start in zip(_parts(out), _parts(hx), _parts(init), strict=True):
        torch.testing.assert_close(new[:, 1], start[:, 1], atol=0, rtol=0)
        assert torch.equal(new[:, ~mask], old[:, ~mask])
    # The learned state is the parameter h0_l{layer}[_reverse] for each layer/direction.
    torch.testing.assert_close(_parts(out)[0][3, 1], m.h0_l1_reverse.detach(), atol=0, rtol=0)
    torch.testing.assert_close(_parts(out)[0][0, 1], m.h0_l0.detach(), atol=0, rtol=0)
    # Running from the reset state equals running that sequence from scratch.
    x = _input(m)
    y_reset, _ = m(x, out)
    y_fresh, _ = m(x[:, 1:2])
    torch.testing.assert_close(y_reset[:, 1:2], y_fresh, atol=1e-12, rtol=0)


def test_reset_state_all_false_is_identity():
    m = _module("lstm", {})
    _, hx = m(_input(m))
    out = m.reset_state(hx, torch.zeros(B, dtype=torch.bool))
    for a, b in zip(out, hx, strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- initial_state
@pytest.mark.parametrize(
    ("family", "kwargs", "sizes"),
    [
        ("lstm", {}, (H, H)),
        ("lstm", {"num_layers": 3, "bidirectional": True}, (H, H)),
        ("lstm", {"num_layers": 2, "proj_size": 2}, (2, H)),
        ("gru", {"num_layers": 2, "bidirectional": True}, (H,)),
        ("rnn", {"num_layers": 3}, (H,)),
    ],
)
@pytest.mark.parametrize("batch", [0, 1, 5])
def test_initial_state_shapes(family, kwargs, sizes, batch):
    m = CLASSES[family](I, H, **kwargs)
    state = m.initial_state(batch)
    parts = _parts(state)
    assert isinstance(state, tuple) == (family == "lstm")
    lead = m.num_layers * (2 if m.bidirectional else 1)
    assert [tuple(p.shape) for p in parts] == [(lead, batch, s) for s in sizes]
    for p in parts:
        assert p.dtype == torch.float32
        assert torch.equal(p, torch.zeros_like(p))
    state64 = _parts(m.initial_state(batch, dtype=torch.float64))
    assert all(p.dtype == torch.float64 for p in state64)
    if batch:
        # Passing the initial state explicitly is the same as hx=None.
        x = torch.randn(T, batch, I)
        y0, _ = m(x)
        y1, _ = m(x, state)
        torch.testing.assert_close(y0, y1, atol=0, rtol=0)


def test_initial_state_with_learned_state():
    m = _module("lstm", {"num_layers": 2, "learn_initial_state": True})
    h, c = m.initial_state(4, dtype=torch.float64)
    assert h.shape == c.shape == (2, 4, H)
    for b in range(4):
        torch.testing.assert_close(h[1, b], m.h0_l1.detach(), atol=0, rtol=0)
        torch.testing.assert_close(c[0, b], m.c0_l0.detach(), atol=0, rtol=0)
    x = _input(m, batch=4)
    torch.testing.assert_close(m(x)[0], m(x, (h, c))[0], atol=0, rtol=0)


# --------------------------------------------------------------------------- zero lengths
@pytest.mark.parametrize(
    ("family", "kwargs"),
    [
        ("lstm", {"num_layers": 2, "bidirectional": True}),
        ("lstm", {"reverse": True, "proj_size": 2}),
        ("gru", {"num_layers": 2, "residual": True, "bidirectional": True}),
        ("rnn", {"bidirectional": True, "bidirectional_merge": "sum"}),
    ],
)
def test_zero_length_sequence_keeps_initial_state(family, kwargs):
    m = _module(family, kwargs)
    x = _input(m)
    lead = m.num_layers * (2 if m.bidirectional else 1)
    hx = [torch.randn(lead, B, s, dtype=torch.float64) for s in m.cell_math[0].state_sizes]
    lengths = torch.tensor([5, 0, 7])
    y, state = m(x, _pack(hx), lengths=lengths)
    assert torch.equal(y[:, 1], torch.zeros_like(y[:, 1]))
    for out, start in zip(_parts(state), hx, strict=True):
        assert torch.equal(out[:, 1], start[:, 1])
    # Without hx the final state is the zero initial state.
    y0, state0 = m(x, lengths=lengths)
    for out in _parts(state0):
        assert torch.equal(out[:, 1], torch.zeros_like(out[:, 1]))
    assert torch.equal(y0[:, 1], torch.zeros_like(y0[:, 1]))


def test_all_zero_lengths():
    m = _module("lstm", {"num_layers": 2})
    x = _input(m)
    hx = (torch.randn(2, B, H, dtype=torch.float64), torch.randn(2, B, H, dtype=torch.float64))
    y, (h, c) = m(x, hx, lengths=[0, 0, 0])
    assert torch.equal(y, torch.zeros_like(y))
    assert torch.equal(h, hx[0]) and torch.equal(c, hx[1])


# --------------------------------------------------------------------------- padding
PADDING_CONFIGS = [
    ("lstm", {"num_layers": 2, "bidirectional": True}),
    ("lstm", {"reverse": True, "peephole": True, "layer_norm": True}),
    ("lstm", {"num_layers": 3, "residual": True, "bidirectional": True, "proj_size": 2}),
    ("lstm", {"bidirectional": True, "bidirectional_merge": "mean", "zoneout": 0.3}),
    ("gru", {"num_layers": 2, "bidirectional": True, "learn_initial_state": True}),
    ("rnn", {"num_layers": 2, "batch_first": True, "layer_norm": True}),
]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize(("family", "kwargs"), PADDING_CONFIGS)
def test_outputs_past_length_are_exactly_zero(family, kwargs, training):
    m = _module(family, kwargs)
    if training:
        m.dropout = 0.3  # dropout between layers, on top of every other regulariser
        m.input_dropout = m.recurrent_dropout = m.weight_drop = 0.3
        m.train()
    x = _input(m)
    lengths = torch.tensor([3, 7, 1])
    y, _ = m(x, lengths=lengths)
    y = y if not m.batch_first else y.transpose(0, 1)
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(y[n:, b], torch.zeros_like(y[n:, b]))
        assert (y[:n, b] != 0).any()


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize(("family", "kwargs"), PADDING_CONFIGS[:3])
def test_padding_values_do_not_matter(family, kwargs, backend):
    """Whatever is in the padding (even NaN or inf) changes neither outputs nor gradients, in
    either backend (the reference loop zeroes it; the fused kernels never read it)."""
    m = _module(family, {**kwargs, "backend": backend})
    x = _input(m)
    lengths = torch.tensor([3, 7, 1])
    results = []
    for fill in (0.0, float("nan"), float("inf")):
        xi = x.clone()
        for b, n in enumerate(lengths.tolist()):
            if m.batch_first:
                xi[b, n:] = fill
            else:
                xi[n:, b] = fill
        xi.requires_grad_()
        m.zero_grad()
        y, state = m(xi, lengths=lengths)
        (y.sin().sum() + sum(p.sum() for p in _parts(state))).backward()
        grads = [p.grad.clone() for p in m.parameters()]
        results.append((y.detach(), [p.detach() for p in _parts(state)], xi.grad, grads))
    y0, s0, gx0, g0 = results[0]
    for y, s, gx, g in results[1:]:
        assert torch.equal(y, y0)
        for a, b in zip(s, s0, strict=True):
            assert torch.equal(a, b)
        assert torch.isfinite(gx).all()
        torch.testing.assert_close(gx, gx0, atol=1e-12, rtol=0)
        for a, b in zip(g, g0, strict=True):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


# --------------------------------------------------------------------------- NaN and dtypes
@pytest.mark.parametrize(
    ("family", "kwargs"),
    [("lstm", {"num_layers": 2}), ("lstm", {"layer_norm": True}), ("gru", {}), ("rnn", {})],
)
def test_nan_input_propagates(family, kwargs):
    m = _module(family, kwargs)
    x = _input(m)
    x[2, 1, 0] = float("nan")
    y, state = m(x)
    assert torch.isnan(y[2:, 1]).all()
    assert torch.isfinite(y[:2]).all()
    assert torch.isfinite(y[:, [0, 2]]).all()
    for p in _parts(state):
        assert torch.isnan(p[:, 1]).all()
        assert torch.isfinite(p[:, [0, 2]]).all()


@pytest.mark.parametrize(
    ("family", "kwargs"),
    [
        ("lstm", {"num_layers": 2, "bidirectional": True}),
        ("lstm", {"peephole": True, "layer_norm": True, "proj_size": 2}),
        ("gru", {"reset_after": False, "layer_norm": True}),
        ("rnn", {"num_layers": 2}),
    ],
)
def test_bfloat16_forward_close_to_float32(family, kwargs):
    torch.manual_seed(0)
    hidden = 8  # a layer norm over very few units amplifies rounding: use a few more
    m32 = CLASSES[family](I, hidden, **kwargs).eval()
    m16 = CLASSES[family](I, hidden, **kwargs, dtype=torch.bfloat16).eval()
    m16.load_state_dict(m32.state_dict())
    x = torch.randn(T, B, I)
    lengths = torch.tensor([7, 4, 1])
    y32, s32 = m32(x, lengths=lengths)
    y16, s16 = m16(x.bfloat16(), lengths=lengths)
    assert y16.dtype == torch.bfloat16
    # bfloat16 keeps 8 bits of mantissa (relative rounding 2**-9 per operation): over T steps the
    # mean error stays below 2e-2, with rare elements up to ~0.1 after a layer norm.
    for low, ref in zip([y16, *_parts(s16)], [y32, *_parts(s32)], strict=True):
        assert low.dtype == torch.bfloat16
        err = (low.float() - ref).abs()
        assert err.max() < 0.15
        assert err.mean() < 2e-2
    # Backward runs in bfloat16 too.
    y16.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in m16.parameters())


# --------------------------------------------------------------------------- empty dimensions
@pytest.mark.parametrize("with_lengths", [False, True], ids=["no_lengths", "lengths"])
@pytest.mark.parametrize("family", list(CLASSES))
def test_empty_sequence_returns_initial_state(family, with_lengths):
    """T = 0 (torch.nn rejects it): no outputs, and the final state is hx itself."""
    m = _module(family, {"num_layers": 2, "bidirectional": True})
    x = torch.randn(0, B, I, dtype=torch.float64)
    hx = [torch.randn(4, B, s, dtype=torch.float64) for s in m.cell_math[0].state_sizes]
    lengths = [0] * B if with_lengths else None
    y, state = m(x, _pack(hx), lengths=lengths)
    assert y.shape == (0, B, 2 * H)
    for out, start in zip(_parts(state), hx, strict=True):
        assert torch.equal(out, start)


@pytest.mark.parametrize("family", list(CLASSES))
def test_empty_batch(family):
    m = _module(family, {"num_layers": 2, "bidirectional": True})
    y, state = m(torch.randn(T, 0, I, dtype=torch.float64))
    assert y.shape == (T, 0, 2 * H)
    assert all(p.shape[:2] == (4, 0) for p in _parts(state))
