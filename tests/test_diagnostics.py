"""lstmkit.diagnostics: per-step gradient norms, gate statistics, hidden-state PCA, figures.

The unrolled loop is checked against the module's own forward for every variant (bitwise on
the reference backend, including training mode with every dropout mask); the gradient norms
against ``torch.autograd.grad`` on explicit loops of ``torch.nn`` cells with the same weights;
the gate statistics against the gates written out by hand; the PCA against numpy's SVD. Then
behaviour: on an untrained RNN with small recurrent weights the gradient vanishes over 50 steps
while an LSTM with forget-gate bias 1 keeps it orders of magnitude larger.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import lstmkit
from lstmkit import diagnostics as dg
from lstmkit.backends import fused

DT = torch.float64
DOCS = Path(__file__).resolve().parents[1] / "docs" / "diagnostics.md"


def _randomise(module: nn.Module, scale: float = 0.5) -> nn.Module:
    """Random values for every parameter (layer-norm gains around 1), so that nothing passes
    because a parameter happens to be zero or one."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("ln_") and "weight" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(scale * torch.randn_like(p))
    return module


# ------------------------------------------------------------------------- the unrolled run
CONFIGS = {
    "lstm-bi-proj-peephole": (
        lstmkit.LSTM,
        dict(num_layers=2, bidirectional=True, proj_size=2, peephole=True),
    ),
    "lstm-cifg-clip-ln-learned-residual": (
        lstmkit.LSTM,
        dict(
            num_layers=2,
            coupled_gates=True,
            cell_clip=0.5,
            layer_norm=True,
            learn_initial_state=True,
            residual=True,
            zoneout=(0.3, 0.1),
        ),
    ),
    "lstm-reverse-batch-first": (lstmkit.LSTM, dict(reverse=True, batch_first=True)),
    "gru-cho-ln-reverse": (
        lstmkit.GRU,
        dict(num_layers=2, reset_after=False, layer_norm=True, reverse=True),
    ),
    "gru-bi-sum": (lstmkit.GRU, dict(bidirectional=True, bidirectional_merge="sum", num_layers=2)),
    "rnn-relu-residual-zoneout": (
        lstmkit.RNN,
        dict(num_layers=3, nonlinearity="relu", residual=True, zoneout=0.2),
    ),
}


def _final_from_trace(tr: dg.Trace, values: torch.Tensor, b: int) -> torch.Tensor:
    """The state a module returns for sequence ``b``: at its last valid step left to right, at
    step 0 right to left; ``values`` is ``(L, D, T, B, size)``."""
    L = int(tr.lengths[b])
    rows = []
    for direction, rev in enumerate(tr.reverse):
        rows.append(values[:, direction, 0 if rev else L - 1, b])
    return torch.stack(rows, 1).flatten(0, 1)  # (L * D, size), torch's h_n order


@pytest.mark.parametrize("name", list(CONFIGS))
def test_trace_reproduces_the_module_forward_bitwise(name):
    cls, kwargs = CONFIGS[name]
    module = _randomise(cls(3, 4, backend="reference", dtype=DT, **kwargs)).eval()
    T, B = 6, 4
    x = torch.randn(B, T, 3, dtype=DT) if module.batch_first else torch.randn(T, B, 3, dtype=DT)
    lengths = torch.tensor([6, 2, 0, 5])
    y, state = module(x, lengths=lengths)
    tr = dg.trace(module, x, lengths=lengths)
    expected = y.transpose(0, 1) if module.batch_first else y
    assert torch.equal(tr.output, expected)
    h_n, c_n = state if isinstance(state, tuple) else (state, None)
    for b in (0, 1, 3):
        assert torch.equal(_final_from_trace(tr, tr.h, b), h_n[:, b])
        if c_n is not None:
            assert tr.c is not None
            assert torch.equal(_final_from_trace(tr, tr.c, b), c_n[:, b])
    assert tr.valid.tolist() == [[t < n for n in (6, 2, 0, 5)] for t in range(T)]
    # the gates of padded steps are zeroed, not left as the discarded step's values
    for g in tr.gates.values():
        assert g[:, :, 2:, 1].abs().sum() == 0 and g[:, :, :, 2].abs().sum() == 0


def test_trace_reproduces_training_mode_with_every_mask():
    module = lstmkit.LSTM(
        3,
        5,
        num_layers=3,
        dropout=0.3,
        input_dropout=0.2,
        recurrent_dropout=0.25,
        weight_drop=0.2,
        zoneout=(0.2, 0.1),
        bidirectional=True,
        backend="reference",
        dtype=DT,
    ).train()
    x = torch.randn(7, 3, 3, dtype=DT)
    lengths = [7, 4, 1]
    torch.manual_seed(11)
    y, _ = module(x, lengths=lengths)
    torch.manual_seed(11)
    tr = dg.trace(module, x, lengths=lengths)
    assert torch.equal(tr.output, y)
    torch.manual_seed(12)
    assert not torch.equal(dg.trace(module, x, lengths=lengths).output, y)


def test_trace_of_torch_module_and_packed_input():
    torch_lstm = nn.LSTM(3, 4, num_layers=2, batch_first=True, dtype=DT).eval()
    x = torch.randn(3, 5, 3, dtype=DT)
    lengths = torch.tensor([2, 5, 3])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    y, _ = pad_packed_sequence(torch_lstm(packed)[0], batch_first=True)
    rng = torch.get_rng_state()
    tr = dg.trace(torch_lstm, packed)
    assert torch.equal(torch.get_rng_state(), rng)  # from_torch's throw-away init is forked off
    torch.testing.assert_close(tr.output.transpose(0, 1)[:, :5], y, atol=1e-12, rtol=0)
    assert tr.lengths.tolist() == [2, 5, 3]
    # unbatched 2-D input
    tr1 = dg.trace(torch_lstm, x[1])
    torch.testing.assert_close(tr1.output[:, 0], torch_lstm(x[1])[0], atol=1e-12, rtol=0)


@pytest.mark.skipif(not fused.available(), reason="the fused extension is not built")
def test_trace_matches_the_fused_backend():
    module = lstmkit.GRU(3, 4, num_layers=2, bidirectional=True, backend="fused").eval()
    x = torch.randn(6, 3, 3)
    y, _ = module(x, lengths=[6, 3, 1])
    torch.testing.assert_close(
        dg.trace(module, x, lengths=[6, 3, 1]).output, y, atol=1e-5, rtol=1e-6
    )


# ------------------------------------------------------------------------- gradient norms
_TORCH = {"lstm": (nn.LSTM, nn.LSTMCell), "gru": (nn.GRU, nn.GRUCell), "rnn": (nn.RNN, nn.RNNCell)}


def _explicit_grads(module: nn.RNNBase, cell_cls: type, x: torch.Tensor, loss: str):
    """``torch.autograd.grad`` of a loss on the top layer's output with respect to every state
    of an explicit loop of ``torch.nn`` cells holding ``module``'s weights, the backward
    direction looping from the last step to the first. Returns the per-sequence norms as
    ``[layer][direction][t] -> [norm of dL/dh_t (, norm of dL/dc_t)]``, each ``(B,)``."""
    T, B, _ = x.shape
    D = 2 if module.bidirectional else 1
    H = module.hidden_size
    layer_input = x
    all_states: list[list[list[tuple]]] = []
    for layer in range(module.num_layers):
        outs, per_dir = [], []
        for d in range(D):
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            cell = cell_cls(layer_input.shape[-1], H, dtype=x.dtype)
            with torch.no_grad():
                for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(cell, n).copy_(getattr(module, n + suffix))
            h = torch.zeros(B, H, dtype=x.dtype)
            c = torch.zeros(B, H, dtype=x.dtype)
            states: list = [None] * T
            for t in range(T - 1, -1, -1) if d else range(T):
                if cell_cls is nn.LSTMCell:
                    h, c = cell(layer_input[t], (h, c))
                    states[t] = (h, c)
                else:
                    h = cell(layer_input[t], h)
                    states[t] = (h,)
            outs.append(torch.stack([s[0] for s in states]))
            per_dir.append(states)
        layer_input = torch.cat(outs, -1)
        all_states.append(per_dir)
    value = layer_input[-1].sum() if loss == "last" else layer_input.sum()
    flat = [s for per_dir in all_states for states in per_dir for st in states for s in st]
    grads = iter(torch.autograd.grad(value, flat, allow_unused=True))
    norms = []
    for per_dir in all_states:
        rows = []
        for states in per_dir:
            steps = []
            for st in states:
                gs = [next(grads) for _ in st]
                steps.append(
                    [torch.zeros(B, dtype=x.dtype) if g is None else g.norm(dim=-1) for g in gs]
                )
            rows.append(steps)
        norms.append(rows)
    return norms


@pytest.mark.parametrize("family", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize(
    ("num_layers", "bidirectional", "loss"),
    [(1, False, "last"), (2, True, "last"), (2, False, "sum")],
)
def test_gradient_norms_match_autograd_on_torch_cells(family, num_layers, bidirectional, loss):
    torch_cls, cell_cls = _TORCH[family]
    module = torch_cls(3, 4, num_layers=num_layers, bidirectional=bidirectional, dtype=DT)
    x = torch.randn(6, 2, 3, dtype=DT)
    g = dg.gradient_norms(module, x, loss=loss)
    expected = _explicit_grads(module, cell_cls, x, loss)
    D = 2 if bidirectional else 1
    assert g.h.shape == (num_layers, D, 6, 2)
    assert (g.c is not None) == (family == "lstm")
    for layer in range(num_layers):
        for d in range(D):
            for t in range(6):
                want = expected[layer][d][t]
                torch.testing.assert_close(g.h[layer, d, t], want[0], atol=1e-12, rtol=1e-10)
                if g.c is not None:
                    torch.testing.assert_close(g.c[layer, d, t], want[1], atol=1e-12, rtol=1e-10)
    # the loss reaches every left-to-right state: no step is exactly zero there
    assert bool((g.h[:, 0] > 0).all())


def test_gradient_norms_with_a_callable_loss_in_the_module_layout():
    module = lstmkit.LSTM(3, 4, batch_first=True, dtype=DT)
    x = torch.randn(2, 5, 3, dtype=DT)
    seen = []

    def loss(output: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(output.shape))
        return output[:, -1].sum()

    by_callable = dg.gradient_norms(module, x, loss=loss)
    assert seen == [(2, 5, 4)]  # batch first, as the module returns it
    by_name = dg.gradient_norms(module, x)
    assert by_callable.loss == "callable" and by_name.loss == "last"
    torch.testing.assert_close(by_callable.h, by_name.h, atol=0, rtol=0)
    torch.testing.assert_close(by_callable.c, by_name.c, atol=0, rtol=0)


def test_gradient_norms_with_zoneout_are_of_the_values_each_step_computes():
    """Zoneout mixes the computed value with the previous state; the norm is of the gradient
    with respect to the computed value (at evaluation, 1 - rate times the carried state's)."""
    module = _randomise(lstmkit.RNN(3, 4, zoneout=0.3, dtype=DT)).eval()
    x = torch.randn(6, 2, 3, dtype=DT)
    h = torch.zeros(2, 4, dtype=DT)
    computed, carried = [], []
    for t in range(6):
        raw = torch.tanh(
            x[t] @ module.weight_ih_l0.T
            + module.bias_ih_l0
            + h @ module.weight_hh_l0.T
            + module.bias_hh_l0
        )
        h = 0.3 * h + 0.7 * raw
        computed.append(raw)
        carried.append(h)
    grads = torch.autograd.grad(h.sum(), computed + carried)
    g = dg.gradient_norms(module, x)
    for t in range(6):
        torch.testing.assert_close(g.h[0, 0, t], grads[t].norm(dim=-1), atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(
            g.h[0, 0, t], 0.7 * grads[6 + t].norm(dim=-1), atol=1e-12, rtol=1e-10
        )


def test_state_gradient_is_not_the_output_gradient():
    """The pitfall: with a loss on the last step, the gradient with respect to the output tensor
    is zero at every earlier step, while the gradient with respect to the state h_t (which
    feeds step t+1) is not."""
    module = lstmkit.GRU(3, 4, backend="reference", dtype=DT)
    x = torch.randn(8, 2, 3, dtype=DT)
    y, _ = module(x)
    (grad_y,) = torch.autograd.grad(y[-1].sum(), y)
    assert grad_y[:-1].abs().max() == 0
    g = dg.gradient_norms(module, x)
    assert bool((g.h[0, 0, :-1] > 0).all())
    torch.testing.assert_close(g.h[0, 0, -1], grad_y[-1].norm(dim=-1), atol=0, rtol=0)


def test_gradient_norms_of_padded_sequences_equal_each_sequence_alone():
    module = lstmkit.LSTM(3, 4, num_layers=2, bidirectional=True, backend="reference", dtype=DT)
    T, lengths = 7, [7, 3, 0, 5]
    x = torch.randn(T, 4, 3, dtype=DT)
    x[3:, 1] = float("nan")  # padding must not leak into anything
    x[5:, 3] = 1e30
    g = dg.gradient_norms(module, x, lengths=lengths)
    for b, n in enumerate(lengths):
        assert bool(g.h[:, :, n:, b].isnan().all()) and bool(g.c[:, :, n:, b].isnan().all())
        if n == 0:
            continue
        alone = dg.gradient_norms(module, x[:n, b : b + 1])
        torch.testing.assert_close(g.h[:, :, :n, b], alone.h[:, :, :, 0], atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(g.c[:, :, :n, b], alone.c[:, :, :, 0], atol=1e-12, rtol=1e-10)
    # the distance of a step from the end of its sequence, per direction
    dist = g.distance()
    assert dist[0, :, 1].tolist() == [2, 1, 0, -1, -1, -1, -1]
    assert dist[1, :, 1].tolist() == [0, 1, 2, -1, -1, -1, -1]
    assert bool((dist[:, :, 2] == -1).all())


def test_profile_averages_over_sequences_at_each_distance():
    module = lstmkit.RNN(2, 3, backend="reference", dtype=DT)
    x = torch.randn(4, 2, 2, dtype=DT)
    g = dg.gradient_norms(module, x, lengths=[4, 2])
    d, n = g.profile()
    assert d.tolist() == [0, 1, 2, 3]
    h = g.h[0, 0]
    torch.testing.assert_close(n[0], (h[3, 0] + h[1, 1]) / 2)
    torch.testing.assert_close(n[1], (h[2, 0] + h[0, 1]) / 2)
    torch.testing.assert_close(n[3], h[0, 0])
    # a right-to-left module: 'first' is its end, and distance counts from step 0
    rev = lstmkit.RNN(2, 3, reverse=True, backend="reference", dtype=DT)
    gr = dg.gradient_norms(rev, x, loss="first")
    _, nr = gr.profile()
    torch.testing.assert_close(nr[0], gr.h[0, 0, 0].mean())
    assert bool((nr > 0).all())


def test_frozen_module_under_no_grad_and_parameter_grads_untouched():
    module = lstmkit.LSTM(3, 4, dtype=DT).requires_grad_(False)
    x = torch.randn(5, 2, 3, dtype=DT)
    with torch.no_grad():
        frozen = dg.gradient_norms(module, x)
    module.requires_grad_(True)
    live = dg.gradient_norms(module, x)
    torch.testing.assert_close(frozen.h, live.h, atol=0, rtol=0)
    assert all(p.grad is None for p in module.parameters())


def test_rnn_gradient_vanishes_over_50_steps_while_lstm_with_forget_bias_keeps_it():
    """Fixed seeds, untrained models, no timing: the ratio of the mean gradient norm 50 steps
    before the loss to the one at the loss."""
    T = 51
    x = torch.randn(T, 4, 4, generator=torch.Generator().manual_seed(1))

    def ratio(module: nn.Module, state: str = "h") -> float:
        _, n = dg.gradient_norms(module.eval(), x).profile(state=state)
        return float(n[50] / n[0])

    torch.manual_seed(2)
    rnn = lstmkit.RNN(4, 32, backend="reference")
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(0.5)  # orthogonal times 0.5: spectral radius 0.5
    torch.manual_seed(3)
    lstm = lstmkit.LSTM(4, 32, forget_bias=1.0, backend="reference")
    torch.manual_seed(3)
    lstm_no_bias = lstmkit.LSTM(4, 32, forget_bias=0.0, backend="reference")
    r_rnn, r_lstm = ratio(rnn), ratio(lstm)
    assert r_rnn < 1e-10  # vanished: about 0.5**50 ~ 1e-15 and less with tanh' < 1
    assert r_lstm > 1e-5
    assert r_lstm > 1e6 * r_rnn
    assert ratio(lstm, "c") > 1e-4  # the cell-state path carries it
    assert ratio(lstm_no_bias) < 1e-2 * r_lstm  # same weights but the forget bias: far less


# ------------------------------------------------------------------------- gate statistics
def _lstm_gates_by_hand(m: lstmkit.LSTM, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    T, B, _ = x.shape
    H = m.hidden_size
    h = torch.zeros(B, H, dtype=x.dtype)
    c = torch.zeros(B, H, dtype=x.dtype)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in "ifgo"}
    for t in range(T):
        a = x[t] @ m.weight_ih_l0.T + m.bias_ih_l0 + h @ m.weight_hh_l0.T + m.bias_hh_l0
        i, f, g, o = (
            torch.sigmoid(a[:, :H]),
            torch.sigmoid(a[:, H : 2 * H]),
            torch.tanh(a[:, 2 * H : 3 * H]),
            torch.sigmoid(a[:, 3 * H :]),
        )
        c = f * c + i * g
        h = o * torch.tanh(c)
        for k, v in zip("ifgo", (i, f, g, o), strict=True):
            out[k].append(v)
    return out


def _gru_gates_by_hand(m: lstmkit.GRU, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    T, B, _ = x.shape
    H = m.hidden_size
    h = torch.zeros(B, H, dtype=x.dtype)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in "rzn"}
    for t in range(T):
        a = x[t] @ m.weight_ih_l0.T + m.bias_ih_l0
        u = h @ m.weight_hh_l0.T + m.bias_hh_l0
        r = torch.sigmoid(a[:, :H] + u[:, :H])
        z = torch.sigmoid(a[:, H : 2 * H] + u[:, H : 2 * H])
        n = torch.tanh(a[:, 2 * H :] + r * u[:, 2 * H :])
        h = (1 - z) * n + z * h
        for k, v in zip("rzn", (r, z, n), strict=True):
            out[k].append(v)
    return out


@pytest.mark.parametrize("family", ["lstm", "gru"])
def test_gate_statistics_against_the_gates_written_out(family):
    cls, by_hand = (
        (lstmkit.LSTM, _lstm_gates_by_hand)
        if family == "lstm"
        else (lstmkit.GRU, _gru_gates_by_hand)
    )
    module = _randomise(cls(2, 3, dtype=DT), scale=1.5).eval()
    lengths = [5, 2, 4]
    x = torch.randn(5, 3, 2, dtype=DT)
    clean = x.clone()
    x[2:, 1] = float("nan")  # padding: never read
    bounds, tanh_bound, bins = (0.2, 0.7), 0.6, 7
    stats = dg.gate_statistics(
        module, x, lengths=lengths, bins=bins, sigmoid_bounds=bounds, tanh_bound=tanh_bound
    )
    gates = by_hand(module, clean)
    assert stats.gates == tuple(gates)
    assert len(stats) == len(gates)
    for name, per_step in gates.items():
        values = (
            torch.cat([per_step[t][b] for b, n in enumerate(lengths) for t in range(n)])
            .detach()
            .numpy()
        )
        s = stats[0, name]
        assert s is stats[0, 0, name] and s is stats[-1, name]
        assert s.count == values.size == 11 * 3
        np.testing.assert_allclose(s.mean, values.mean(), rtol=1e-12)
        np.testing.assert_allclose(s.std, values.std(), rtol=1e-12)
        if s.kind == "sigmoid":
            sat = ((values < 0.2) | (values > 0.7)).mean()
            lo, hi = 0.0, 1.0
            assert s.thresholds == bounds
        else:
            assert s.kind == "tanh"
            sat = (np.abs(values) > 0.6).mean()
            lo, hi = -1.0, 1.0
            assert s.thresholds == (-0.6, 0.6)
        assert 0 < sat < 1  # the thresholds cut the data: the comparison means something
        assert s.saturated == pytest.approx(sat, abs=1e-15)
        counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
        assert s.histogram.tolist() == counts.tolist()
        np.testing.assert_allclose(s.bin_edges.numpy(), edges, rtol=0, atol=1e-15)
    assert "layer" in stats.table() and len(stats.table().splitlines()) == len(gates) + 1


def test_gate_statistics_relu_counts_zeros_and_coupled_forget_gate():
    rnn = lstmkit.RNN(2, 5, nonlinearity="relu", num_layers=2).eval()
    x = torch.randn(4, 3, 2)
    tr = dg.trace(rnn, x)
    stats = dg.gate_statistics(tr)
    for layer in (0, 1):
        h = tr.h[layer, 0]
        s = stats[layer, "h"]
        assert s.kind == "relu" and s.thresholds == (0.0,)
        assert s.saturated == pytest.approx(float((h == 0).double().mean()), abs=1e-15)
    cifg = lstmkit.LSTM(2, 3, coupled_gates=True).eval()
    tr = dg.trace(cifg, x)
    torch.testing.assert_close(tr.gates["f"], 1.0 - tr.gates["i"], atol=0, rtol=0)


# ------------------------------------------------------------------------- PCA
def test_pca_matches_numpy_svd_over_valid_steps():
    module = lstmkit.GRU(3, 4, bidirectional=True, dtype=DT).eval()
    x = torch.randn(6, 3, 3, dtype=DT)
    lengths = [6, 4, 1]
    tr = dg.trace(module, x, lengths=lengths)
    pca = dg.hidden_pca(tr, n_components=3)
    # the states by hand: directions side by side, valid steps of every sequence
    X = np.stack(
        [
            torch.cat([tr.h[0, 0, t, b], tr.h[0, 1, t, b]]).numpy()
            for t in range(6)
            for b in range(3)
            if t < lengths[b]
        ]
    )
    assert X.shape == (11, 8)
    mean = X.mean(0)
    _, S, Vt = np.linalg.svd(X - mean, full_matrices=False)
    np.testing.assert_allclose(pca.mean.numpy(), mean, atol=1e-14)
    np.testing.assert_allclose(pca.singular_values.numpy(), S[:3], rtol=1e-10)
    np.testing.assert_allclose(np.abs(pca.components.numpy()), np.abs(Vt[:3]), atol=1e-10)
    total = ((X - mean) ** 2).sum()
    np.testing.assert_allclose(pca.explained_variance_ratio.numpy(), S[:3] ** 2 / total, rtol=1e-10)
    np.testing.assert_allclose(pca.explained_variance.numpy(), S[:3] ** 2 / 10, rtol=1e-10)
    assert float(pca.explained_variance_ratio.sum()) < 1.0
    for b, n in enumerate(lengths):
        path = pca.trajectories[b]
        assert path.shape == (n, 3)
        here = torch.cat([tr.h[0, 0, :n, b], tr.h[0, 1, :n, b]], -1)
        np.testing.assert_allclose(
            path.numpy(), (here.numpy() - mean) @ pca.components.numpy().T, atol=1e-12
        )
        torch.testing.assert_close(pca.transform(here), path)
    # every component: the ratios sum to one; signs are fixed (largest loading positive)
    full = dg.hidden_pca(tr)
    assert full.components.shape == (8, 8)
    assert float(full.explained_variance_ratio.sum()) == pytest.approx(1.0, abs=1e-12)
    biggest = full.components.abs().argmax(1)
    assert bool((full.components[torch.arange(8), biggest] > 0).all())


def test_pca_of_lstm_cell_state_and_chosen_layer():
    module = lstmkit.LSTM(3, 4, num_layers=2).eval()
    x = torch.randn(5, 2, 3)
    tr = dg.trace(module, x)
    pca = dg.hidden_pca(module, x, layer=0, state="c", n_components=2)
    X = tr.c[0, 0].reshape(-1, 4).double()
    S = torch.linalg.svdvals(X - X.mean(0))
    torch.testing.assert_close(pca.singular_values, S[:2])
    assert pca.layer == 0 and pca.state == "c"


# ------------------------------------------------------------------------- figures
def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def test_gradient_norm_figure_one_line_per_model_on_a_log_scale():
    x = torch.randn(12, 2, 3)
    models = {
        "RNN": lstmkit.RNN(3, 4).eval(),
        "GRU": lstmkit.GRU(3, 4).eval(),
        "LSTM": lstmkit.LSTM(3, 4).eval(),
    }
    norms = {name: dg.gradient_norms(m, x) for name, m in models.items()}
    fig = dg.plot_gradient_norms(norms)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["RNN  ‖∂L/∂h_t‖", "GRU  ‖∂L/∂h_t‖", "LSTM  ‖∂L/∂h_t‖", "LSTM  ‖∂L/∂c_t‖"]
    lstm_h, lstm_c = ax.get_lines()[2:]
    assert lstm_c.get_linestyle() == "--" and lstm_c.get_color() == lstm_h.get_color()
    _, expected = norms["GRU"].profile()
    np.testing.assert_allclose(ax.get_lines()[1].get_ydata(), expected.numpy())
    assert "distance" in ax.get_xlabel()
    assert _png(fig).startswith(b"\x89PNG")
    only_h = dg.plot_gradient_norms(norms["LSTM"], cell_state=False)
    assert [line.get_label() for line in only_h.axes[0].get_lines()] == ["LSTM  ‖∂L/∂h_t‖"]


def test_gate_saturation_figure_has_one_panel_per_layer_direction_and_gate():
    module = lstmkit.LSTM(3, 4, num_layers=2, bidirectional=True).eval()
    stats = dg.gate_statistics(module, torch.randn(5, 2, 3))
    fig = dg.plot_gate_saturation(stats)
    assert len(fig.axes) == 2 * 2 * 4
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("layer 0 i (sigmoid)") and titles[4].startswith("layer 0 reverse i")
    assert titles[-1].startswith("layer 1 reverse o")
    assert all(re.search(r"\d+% saturated$", t) for t in titles)
    one = dg.plot_gate_saturation(stats, layers=[-1])
    assert len(one.axes) == 2 * 4 and one.axes[0].get_title().startswith("layer 1 i")
    assert _png(one).startswith(b"\x89PNG")


def test_pca_figure_draws_one_trajectory_per_sequence():
    module = lstmkit.GRU(3, 6).eval()
    pca = dg.hidden_pca(module, torch.randn(8, 5, 3), lengths=[8, 3, 0, 5, 2])
    fig = dg.plot_pca_trajectories(pca)
    left, right = fig.axes
    assert len(left.get_lines()) == 4  # the zero-length sequence has no trajectory
    assert len(left.collections) == 4  # a start marker each
    assert left.get_xlabel().startswith("PC1") and left.get_ylabel().startswith("PC2")
    assert len(right.patches) == pca.components.shape[0]
    np.testing.assert_allclose(
        right.get_lines()[0].get_ydata(), pca.explained_variance_ratio.cumsum(0).numpy()
    )
    fewer = dg.plot_pca_trajectories(pca, components=(2, 0), max_sequences=2)
    assert len(fewer.axes[0].get_lines()) == 2 and fewer.axes[0].get_xlabel().startswith("PC3")
    assert _png(fewer).startswith(b"\x89PNG")


# ------------------------------------------------------------------------- errors
def test_bad_arguments_raise_clear_errors():
    lstm = lstmkit.LSTM(3, 4).eval()
    gru = lstmkit.GRU(3, 4).eval()
    x = torch.randn(5, 2, 3)
    with pytest.raises(
        TypeError,
        match=r"module must be an lstmkit LSTM, GRU or RNN .* got torch.nn.modules.linear.Linear",
    ):
        dg.trace(nn.Linear(3, 4), x)
    with pytest.raises(ValueError, match=r"loss must be one of 'last', 'first', 'sum', got 'mean'"):
        dg.gradient_norms(lstm, x, loss="mean")
    with pytest.raises(
        ValueError, match=r"loss must return a scalar \(0-dim\) tensor, got shape \(5, 2, 4\)"
    ):
        dg.gradient_norms(lstm, x, loss=lambda y: y)
    with pytest.raises(ValueError, match=r"loss must depend on the output .* no gradient"):
        dg.gradient_norms(lstm, x, loss=lambda y: y.detach().sum())
    with pytest.raises(TypeError, match=r"loss must return a scalar tensor, got 1.0 \(float\)"):
        dg.gradient_norms(lstm, x, loss=lambda y: 1.0)
    with pytest.raises(
        ValueError, match=r"input must have 3 features \(input_size\) in its last dimension, got 2"
    ):
        dg.gradient_norms(lstm, torch.randn(5, 2, 2))
    with pytest.raises(
        ValueError, match=r"lengths must be <= the sequence length 5 of input, got a length of 6"
    ):
        dg.trace(lstm, x, lengths=[6, 1])
    with pytest.raises(ValueError, match=r"state='c' needs an LSTM, got gradient norms of a gru"):
        dg.gradient_norms(gru, x).profile(state="c")
    with pytest.raises(ValueError, match=r"layer must be in \[-1, 0\], got 1"):
        dg.gradient_norms(gru, x).profile(layer=1)
    with pytest.raises(TypeError, match=r"direction must be an int, got 0.5 \(float\)"):
        dg.gradient_norms(gru, x).profile(direction=0.5)
    with pytest.raises(ValueError, match=r"bins must be a positive int, got 0"):
        dg.gate_statistics(lstm, x, bins=0)
    with pytest.raises(
        ValueError, match=r"sigmoid_bounds must satisfy 0 < low < high < 1, got \(0.9, 0.1\)"
    ):
        dg.gate_statistics(lstm, x, sigmoid_bounds=(0.9, 0.1))
    with pytest.raises(TypeError, match=r"sigmoid_bounds must be a pair \(low, high\), got 0.1"):
        dg.gate_statistics(lstm, x, sigmoid_bounds=0.1)
    with pytest.raises(ValueError, match=r"tanh_bound must be in \(0, 1\), got 1.5"):
        dg.gate_statistics(lstm, x, tanh_bound=1.5)
    with pytest.raises(TypeError, match=r"input is required when the first argument is a module"):
        dg.gate_statistics(lstm)
    tr = dg.trace(lstm, x)
    with pytest.raises(
        ValueError, match=r"input, hx and lengths must be None when a Trace is given"
    ):
        dg.hidden_pca(tr, x)
    with pytest.raises(ValueError, match=r"gate must be one of 'i', 'f', 'g', 'o', got 'z'"):
        dg.gate_statistics(tr)[0, "z"]
    with pytest.raises(
        ValueError,
        match=r"n_components must be <= min\(valid steps, state size\) = min\(10, 4\) = 4, got 5",
    ):
        dg.hidden_pca(tr, n_components=5)
    with pytest.raises(ValueError, match=r"state must be one of 'h', 'c', got 'x'"):
        dg.hidden_pca(tr, state="x")
    with pytest.raises(
        ValueError, match=r"hidden_pca needs at least 2 valid steps to estimate a variance, got 1"
    ):
        dg.hidden_pca(lstm, x, lengths=[1, 0])
    with pytest.raises(
        ValueError, match=r"states must have 4 features in their last dimension, got shape \(2, 3\)"
    ):
        dg.hidden_pca(tr).transform(torch.randn(2, 3))
    with pytest.raises(TypeError, match=r"norms must be a GradientNorms or a non-empty mapping"):
        dg.plot_gradient_norms({})
    with pytest.raises(TypeError, match=r"norms\['a'\] must be a GradientNorms, got 1 \(int\)"):
        dg.plot_gradient_norms({"a": 1})
    with pytest.raises(TypeError, match=r"stats must be a GateStatistics"):
        dg.plot_gate_saturation(tr)
    with pytest.raises(
        ValueError, match=r"components must be two different components, got \(1, 1\)"
    ):
        dg.plot_pca_trajectories(dg.hidden_pca(tr), components=(1, 1))
    with pytest.raises(ValueError, match=r"components\[1\] must be in \[-2, 1\], got 2"):
        dg.plot_pca_trajectories(dg.hidden_pca(tr, n_components=2), components=(0, 2))


# ------------------------------------------------------------------------- the documentation
def test_documentation_examples_run(tmp_path, monkeypatch):
    """Every ``python`` block of docs/diagnostics.md runs, in order, in one namespace."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), namespace)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "gates.png",
        "gradients.png",
        "pca.png",
    ]
