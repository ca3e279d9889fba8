"""lstmkit.compress: magnitude pruning that stays pruned through training, and int8 weights.

Pruning: the exact fraction of smallest-magnitude entries per matrix (or globally, or by rows),
zeros kept through training with both backends and with torch.nn modules (gradient masks, a mask
before every forward and state_dict, and after optimizer steps), torch's parameter names
throughout, the gradual schedule of Zhu & Gupta. Quantisation: per-row int8 within half a scale,
outputs within 3% of the float module's for every family and layout, exact float math on the
rounded weights with kernel='dequantize', the int8 kernel against it, the state round trip
through safetensors and torch.save, 4x fewer bytes, the streaming step with int8 weights, and
the errors. Nothing here asserts a timing.
"""

from __future__ import annotations

import copy
import io
import itertools

import pytest
import torch
import torch.nn.utils.prune
from torch import nn

import lstmkit
from lstmkit import compress
from lstmkit.backends import fused
from lstmkit.compress import (
    QuantizedGRU,
    QuantizedLSTM,
    dequantize,
    polynomial_sparsity,
    prune,
    quantize,
    sparsity,
    weight_bytes,
)
from lstmkit.streaming import Streamer

requires_fused = pytest.mark.skipif(not fused.available(), reason="fused extension not built")
BACKENDS = ["reference", pytest.param("fused", marks=requires_fused)]


TOL = 0.03  # relative error (L2) of int8 outputs against the float module's


def _matrices(module: nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().clone()
        for n, p in module.named_parameters()
        if compress._MATRIX.match(n.rsplit(".", 1)[-1])
    }


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------------------------- pruning
@pytest.mark.parametrize(
    "make",
    [
        lambda: lstmkit.LSTM(6, 10, num_layers=2, bidirectional=True, proj_size=4),
        lambda: lstmkit.GRU(6, 10, reset_after=False, layer_norm=True),
        lambda: lstmkit.RNN(6, 10, num_layers=2),
        lambda: nn.LSTM(6, 10, num_layers=2),
        lambda: lstmkit.LSTMCell(6, 10),
        lambda: nn.GRUCell(6, 10),
    ],
    ids=["lstm", "gru", "rnn", "torch-lstm", "cell", "torch-gru-cell"],
)
def test_layer_scope_prunes_the_smallest_fraction_of_each_matrix(make) -> None:
    module = make()
    before = _matrices(module)
    assert prune(module, 0.3) is module
    for name, w in _matrices(module).items():
        old = before[name]
        if "weight_hr" in name:  # not selected by the default weights=('ih', 'hh')
            assert torch.equal(w, old)
            continue
        pruned = w == 0
        assert int(pruned.sum()) == round(0.3 * w.numel()), name
        assert old[pruned].abs().max() <= old[~pruned].abs().min()
        assert torch.equal(w[~pruned], old[~pruned])  # the others are untouched
    report = sparsity(module)
    assert report["overall"] == pytest.approx(
        sum(r * before[k].numel() for k, r in report.items() if k != "overall")
        / sum(w.numel() for w in before.values()),
    )


def test_global_scope_uses_one_threshold_across_matrices() -> None:
    torch.manual_seed(0)
    lstm = lstmkit.LSTM(4, 8, num_layers=2)
    with torch.no_grad():
        lstm.weight_hh_l1.mul_(10.0)  # large weights: the global threshold spares them
    before = _matrices(lstm)
    prune(lstm, 0.5, scope="global")
    after = _matrices(lstm)
    total = sum(w.numel() for w in after.values())
    zeros = sum(int((w == 0).sum()) for w in after.values())
    assert zeros == round(0.5 * total)
    removed = torch.cat([before[n][after[n] == 0] for n in after]).abs()
    kept = torch.cat([before[n][after[n] != 0] for n in after]).abs()
    assert removed.max() <= kept.min()
    report = sparsity(lstm)
    assert report["weight_hh_l1"] < 0.25 and report["weight_ih_l0"] > 0.5
    assert report["overall"] == pytest.approx(0.5, abs=1e-3)


def test_structured_prunes_the_rows_torch_ln_structured_prunes() -> None:
    lstm = lstmkit.LSTM(5, 6)
    reference = nn.Linear(6, 24, bias=False)
    with torch.no_grad():
        reference.weight.copy_(lstm.weight_hh_l0)
    torch.nn.utils.prune.ln_structured(reference, "weight", amount=0.25, n=2, dim=0)
    prune(lstm, 0.25, structured=True, weights=("hh",))
    rows = (lstm.weight_hh_l0 == 0).all(dim=1)
    assert int(rows.sum()) == 6  # 25% of 24 rows
    assert torch.equal(rows, (reference.weight_mask == 0).all(dim=1))
    assert sparsity(lstm)["weight_ih_l0"] == 0.0


def test_weights_selects_the_matrices() -> None:
    lstm = lstmkit.LSTM(5, 8, proj_size=3)
    prune(lstm, 0.5, weights=("hr",))
    report = sparsity(lstm)
    assert report["weight_hr_l0"] == 0.5
    assert report["weight_ih_l0"] == report["weight_hh_l0"] == 0.0
    prune(lstm, 0.5, weights="hh")  # a single name is accepted
    assert sparsity(lstm)["weight_hh_l0"] == 0.5


def test_pruning_again_is_cumulative() -> None:
    lstm = lstmkit.GRU(4, 8)
    prune(lstm, 0.2)
    first = lstm.weight_hh_l0 == 0
    prune(lstm, 0.6)
    second = lstm.weight_hh_l0 == 0
    assert bool(second[first].all())  # what was pruned stays pruned
    assert sparsity(lstm)["weight_hh_l0"] == pytest.approx(0.6, abs=0.01)
    prune(lstm, 0.3)  # a smaller amount prunes nothing new
    assert torch.equal(lstm.weight_hh_l0 == 0, second)


def _train(module: nn.Module, opt: torch.optim.Optimizer, steps: int, check) -> None:
    x = torch.randn(6, 3, 4)
    for _ in range(steps):
        opt.zero_grad()
        out = module(x)[0]
        check("after forward")
        out.square().mean().backward()
        opt.step()
        check("after step")


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_keeps_the_pruned_weights_at_zero(backend: str) -> None:
    torch.manual_seed(0)
    lstm = lstmkit.LSTM(4, 8, num_layers=2, backend=backend)
    opt = torch.optim.Adam(lstm.parameters(), lr=0.05)
    _train(lstm, opt, 2, lambda _: None)  # Adam has momentum for every entry before pruning
    prune(lstm, 0.5)
    masks = {n: (w == 0) for n, w in _matrices(lstm).items()}

    def zeros_kept(when: str) -> None:
        for n, w in _matrices(lstm).items():
            if when == "after forward":  # the forward re-applies the masks
                assert bool((w[masks[n]] == 0).all()), n
        for n, p in lstm.named_parameters():
            if n in masks and p.grad is not None:
                assert bool((p.grad[masks[n]] == 0).all()), n

    _train(lstm, opt, 3, zeros_kept)
    state = lstm.state_dict()  # state_dict masks too
    for n, m in masks.items():
        assert bool((state[n][m] == 0).all())
    compress.apply_masks(lstm)
    assert sparsity(lstm)["overall"] == pytest.approx(0.5, abs=1e-6)

    # with optimizer=: zero right after every step as well
    prune(lstm, 0.5, optimizer=opt)

    def always_zero(when: str) -> None:
        for n, w in _matrices(lstm).items():
            assert bool((w[masks[n]] == 0).all()), (n, when)

    _train(lstm, opt, 3, always_zero)
    assert sparsity(lstm)["overall"] == pytest.approx(0.5, abs=1e-6)


def test_pruned_state_dict_loads_into_torch_nn_before_and_after_remove() -> None:
    torch.manual_seed(0)
    lstm = lstmkit.LSTM(4, 8, num_layers=2, batch_first=True)
    prune(lstm, 0.7)
    opt = torch.optim.SGD(lstm.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(3, 5, 4)
    for _ in range(3):
        opt.zero_grad()
        lstm(x)[0].sum().backward()
        opt.step()
    ref = nn.LSTM(4, 8, num_layers=2, batch_first=True)
    assert set(lstm.state_dict()) == set(ref.state_dict())  # the masks are not saved
    ref.load_state_dict(lstm.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(ref(x)[0], lstm(x)[0])
    compress.remove(lstm)
    assert not any(n.endswith("_keep") for n, _ in lstm.named_buffers())
    assert not lstm._forward_pre_hooks and not lstm._state_dict_pre_hooks
    assert sparsity(lstm)["overall"] == pytest.approx(0.7, abs=1e-3)  # the zeros stay
    ref.load_state_dict(lstm.state_dict())
    back = lstmkit.LSTM(4, 8, num_layers=2, batch_first=True)
    back.load_state_dict(ref.state_dict())
    assert sparsity(back)["overall"] == pytest.approx(0.7, abs=1e-3)
    opt.zero_grad()
    lstm(x)[0].sum().backward()
    opt.step()  # no mask any more: the zeros may change
    assert sparsity(lstm)["overall"] < 0.7


def test_torch_nn_lstm_trains_pruned() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 8, proj_size=3)
    prune(lstm, 0.4, weights=("ih", "hh", "hr"))
    opt = torch.optim.Adam(lstm.parameters(), lr=0.05)
    x = torch.randn(6, 2, 4)
    for _ in range(3):
        opt.zero_grad()
        lstm(x)[0].square().sum().backward()
        opt.step()
    compress.apply_masks(lstm)
    report = sparsity(lstm)
    assert {k: round(v, 1) for k, v in report.items()} == {
        "weight_ih_l0": 0.4,
        "weight_hh_l0": 0.4,
        "weight_hr_l0": 0.4,
        "overall": 0.4,
    }


def test_copies_of_a_pruned_module_stay_pruned() -> None:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("rnn", lstmkit.GRU(4, 8))
    prune(model, 0.5)
    twin = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for m in (twin, loaded):
        gru = m.rnn
        mask = gru.weight_hh_l0 == 0
        opt = torch.optim.SGD(gru.parameters(), lr=0.5)
        out = gru(torch.randn(5, 2, 4))[0]
        out.sum().backward()
        assert bool((gru.weight_hh_l0.grad[mask] == 0).all())  # the gradient hook is back
        opt.step()
        compress.apply_masks(m)
        assert bool((gru.weight_hh_l0[mask] == 0).all())
        compress.remove(m)
        assert "_lstmkit_prune" not in gru.__dict__


def test_polynomial_sparsity_schedule() -> None:
    values = [polynomial_sparsity(t, start=10, end=110, final=0.8) for t in range(0, 130)]
    assert values[:11] == [0.0] * 11 and values[110:] == [0.8] * 20
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert values[60] == pytest.approx(0.8 * (1 - 0.5**3))
    assert polynomial_sparsity(10, start=10, end=20, final=0.5, initial=0.1) == 0.1

    # gradual pruning during training reaches the final sparsity at `end`
    torch.manual_seed(0)
    lstm = lstmkit.LSTM(4, 16)
    opt = torch.optim.Adam(lstm.parameters(), lr=0.01)
    x = torch.randn(5, 2, 4)
    seen = []
    for step in range(40):
        if step % 5 == 0:
            prune(lstm, polynomial_sparsity(step, start=0, end=30, final=0.75), optimizer=opt)
            seen.append(sparsity(lstm)["overall"])
        opt.zero_grad()
        lstm(x)[0].square().mean().backward()
        opt.step()
    assert all(a <= b for a, b in itertools.pairwise(seen))
    assert seen[0] == 0.0 and seen[-1] == pytest.approx(0.75, abs=1e-3)
    assert sparsity(lstm)["overall"] == pytest.approx(0.75, abs=1e-3)


def test_pruning_errors() -> None:
    lstm = lstmkit.LSTM(3, 4)
    with pytest.raises(ValueError, match=r"amount must be a float in \[0, 1\).*got 1\.0"):
        prune(lstm, 1.0)
    with pytest.raises(ValueError, match=r"amount must be a float in \[0, 1\).*got -0\.1"):
        prune(lstm, -0.1)
    with pytest.raises(TypeError, match=r"amount must be a float in \[0, 1\), got '0\.5'"):
        prune(lstm, "0.5")
    with pytest.raises(ValueError, match=r"scope must be one of 'layer', 'global', got 'model'"):
        prune(lstm, 0.5, scope="model")
    with pytest.raises(ValueError, match=r"weights must be a non-empty tuple .*got \('xx',\)"):
        prune(lstm, 0.5, weights=("xx",))
    with pytest.raises(ValueError, match=r"structured=True .* needs scope='layer'"):
        prune(lstm, 0.5, structured=True, scope="global")
    with pytest.raises(ValueError, match=r"module must contain an LSTM, GRU or RNN .* Linear"):
        prune(nn.Linear(3, 4), 0.5)
    with pytest.raises(
        ValueError, match=r"no recurrent weight matrix of the kinds weights=\('hr',\)"
    ):
        prune(lstm, 0.5, weights=("hr",))
    with pytest.raises(TypeError, match=r"optimizer must be a torch.optim.Optimizer"):
        prune(lstm, 0.5, optimizer="adam")
    with pytest.raises(NotImplementedError, match=r"quantized \(int8\): prune the float module"):
        prune(quantize(lstm), 0.5)
    with pytest.raises(ValueError, match=r"end must be greater than start, got start=5, end=5"):
        polynomial_sparsity(1, start=5, end=5, final=0.5)
    with pytest.raises(ValueError, match=r"final must be a float in \[0, 1\), got 1\.0"):
        polynomial_sparsity(1, start=0, end=5, final=1.0)
    with pytest.raises(ValueError, match=r"initial must be <= final"):
        polynomial_sparsity(1, start=0, end=5, final=0.5, initial=0.6)
    with pytest.raises(ValueError, match=r"module must contain an LSTM"):
        sparsity(nn.Linear(2, 2))


# ---------------------------------------------------------------------------------- int8
def test_quantize_rows_is_within_half_a_scale() -> None:
    w = torch.randn(12, 7)
    w[3] = 0.0
    w[5, 2] = 0.0
    q, scale = compress.quantize_rows(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (12,)
    assert int(q.abs().max()) == 127 and int(q.min()) >= -127
    torch.testing.assert_close(scale, w.abs().amax(1) / 127)
    error = (q.float() * scale[:, None] - w).abs()
    assert bool((error <= scale[:, None] / 2 + 1e-7).all())
    assert bool((q[3] == 0).all()) and scale[3] == 0 and q[5, 2] == 0
    with pytest.raises(ValueError, match="NaN or infinite"):
        compress.quantize_rows(torch.tensor([[1.0, float("nan")]]))


CONFIGS = {
    "lstm": (lstmkit.LSTM, {}),
    "lstm_stack_bidir_batch_first": (
        lstmkit.LSTM,
        {"num_layers": 2, "bidirectional": True, "batch_first": True},
    ),
    "lstm_proj_peephole_ln": (
        lstmkit.LSTM,
        {"proj_size": 24, "peephole": True, "layer_norm": True, "num_layers": 2},
    ),
    "lstm_cifg_clip_residual": (
        lstmkit.LSTM,
        {"coupled_gates": True, "cell_clip": 1.0, "num_layers": 2, "residual": True},
    ),
    "gru": (lstmkit.GRU, {"num_layers": 2}),
    "gru_reset_before_ln": (lstmkit.GRU, {"reset_after": False, "layer_norm": True}),
    "gru_bidir_sum": (lstmkit.GRU, {"bidirectional": True, "bidirectional_merge": "sum"}),
    "rnn_relu": (lstmkit.RNN, {"nonlinearity": "relu", "num_layers": 2}),
    "rnn_learned_init": (lstmkit.RNN, {"learn_initial_state": True, "bias": False}),
}


def _run(module: nn.Module, x: torch.Tensor, **kw):
    with torch.no_grad():
        out, state = module(x, **kw)
    parts = list(state) if isinstance(state, tuple) else [state]
    return out, parts


@pytest.mark.parametrize("kernel", ["dequantize", "int8"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_quantized_outputs_are_within_three_percent(name: str, kernel: str) -> None:
    cls, kw = CONFIGS[name]
    torch.manual_seed(0)
    module = cls(20, 48, **kw).eval()
    x = torch.randn(4, 9, 20) if kw.get("batch_first") else torch.randn(9, 4, 20)
    lengths = torch.tensor([9, 3, 0, 7])
    q = quantize(module, kernel=kernel)
    assert q.kernel == kernel and not q.training
    for extra in ({}, {"lengths": lengths}):
        y, states = _run(module, x, **extra)
        yq, states_q = _run(q, x, **extra)
        assert yq.shape == y.shape and yq.dtype == y.dtype
        assert [s.shape for s in states_q] == [s.shape for s in states]
        assert _rel(yq, y) < TOL, _rel(yq, y)
        for s, sq in zip(states, states_q, strict=True):
            assert _rel(sq, s) < TOL
        again, _ = _run(q, x, **extra)
        assert torch.equal(again, yq)  # deterministic
    packed = nn.utils.rnn.pack_padded_sequence(
        x, lengths.clamp(min=1), batch_first=bool(kw.get("batch_first")), enforce_sorted=False
    )
    with torch.no_grad():
        assert _rel(q(packed)[0].data, module(packed)[0].data) < TOL


def test_dequantize_kernel_is_float_math_on_the_rounded_weights() -> None:
    torch.manual_seed(0)
    lstm = lstmkit.LSTM(16, 32, num_layers=2, proj_size=8).eval()
    q = quantize(lstm)
    back = dequantize(q)
    assert type(back) is lstmkit.LSTM and back.backend == lstm.backend and not back.training
    assert list(back.state_dict()) == list(lstm.state_dict())
    assert all(p.requires_grad for p in back.parameters())
    for name, p in back.named_parameters():
        if compress._MATRIX.match(name):
            torch.testing.assert_close(
                p, getattr(q, name).float() * getattr(q, name + "_scale")[:, None]
            )
    x = torch.randn(7, 3, 16)
    y_q, s_q = _run(q, x)
    y_b, s_b = _run(back, x)
    torch.testing.assert_close(y_q, y_b, atol=1e-6, rtol=0)
    for a, b in zip(s_q, s_b, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # the int8 kernel rounds the activations to bfloat16 for each product: close, not equal
    y_8, _ = _run(quantize(lstm, kernel="int8"), x)
    assert _rel(y_8, y_b) < 0.01
    torch.testing.assert_close(back.to_torch()(x)[0], y_b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("K", [1, 5, 15, 16, 17, 33, 100])
def test_int8_product_matches_the_dequantized_one(K: int) -> None:
    """``torch._weight_int8pack_mm`` (bfloat16 path) is wrong or crashes in torch 2.13 unless K
    is a multiple of 16: lstmkit pads; every K must give the dequantized product."""
    for N in (1, 3, 8, 40):
        w = compress._Int8Weight(*compress.quantize_rows(torch.randn(N, K)))
        for shape in ((1, K), (3, K), (17, K), (2, 5, K)):
            x = torch.randn(shape)
            ref = torch.nn.functional.linear(x, w.dequantize())
            got = torch.nn.functional.linear(x, w)
            assert got.shape == ref.shape
            # x rounded to bfloat16 (2**-9 relative) and the product rounded to bfloat16 twice
            # in the kernel (measured: up to 2**-8 of |y|): within 2**-7 of sum |x| |w|
            bound = 2.0**-7 * (x.abs() @ w.dequantize().abs().T) + 1e-6
            assert bool(((got - ref).abs() <= bound).all())


def test_float64_module_uses_the_dequantizing_fallback() -> None:
    lstm = lstmkit.GRU(6, 12, dtype=torch.float64).eval()
    x = torch.randn(5, 2, 6, dtype=torch.float64)
    outputs = {}
    for kernel in ("dequantize", "int8"):
        q = quantize(lstm, kernel=kernel)
        assert q.compute_dtype == torch.float64
        y, _ = _run(q, x)
        assert y.dtype == torch.float64 and _rel(y, _run(lstm, x)[0]) < TOL
        outputs[kernel] = y
    # kernel='int8' falls back to float64 products with the dequantized weights: the int8
    # product would round the activations to bfloat16 (about 1e-3 relative, see above)
    torch.testing.assert_close(outputs["int8"], outputs["dequantize"], atol=1e-12, rtol=0)


def test_state_round_trip_gives_identical_outputs(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    kw = {"num_layers": 2, "bidirectional": True, "proj_size": 6}
    q = quantize(lstmkit.LSTM(8, 16, **kw), kernel="int8")
    state = q.state_dict()
    assert state["weight_hh_l1_reverse"].dtype == torch.int8
    assert state["weight_hr_l0_scale"].dtype == torch.float32
    assert state["weight_hr_l0_scale"].shape == (6,)
    expected = {k for k in lstmkit.LSTM(8, 16, **kw).state_dict()}
    expected |= {k + "_scale" for k in expected if k.startswith("weight_")}
    assert set(state) == expected
    x = torch.randn(5, 2, 8)
    y, _ = _run(q, x)

    save_file(state, tmp_path / "q.safetensors")
    fresh = quantize(lstmkit.LSTM(8, 16, **kw), kernel="int8")  # other random weights
    fresh.load_state_dict(load_file(tmp_path / "q.safetensors"))
    assert torch.equal(_run(fresh, x)[0], y)

    torch.save(state, tmp_path / "q.pt")
    built = QuantizedLSTM(8, 16, kernel="int8", **kw)
    built.load_state_dict(torch.load(tmp_path / "q.pt", weights_only=True))
    assert torch.equal(_run(built, x)[0], y)

    with pytest.raises(
        ValueError,
        match=r"state_dict entry weight_\w+ is torch.float32, but QuantizedLSTM stores it as int8",
    ):
        built.load_state_dict(lstmkit.LSTM(8, 16, **kw).state_dict())


def test_weights_take_a_quarter_of_the_bytes() -> None:
    torch.manual_seed(0)
    model = nn.Module()
    model.embed = nn.Embedding(50, 32)
    model.rnn = lstmkit.LSTM(32, 64, num_layers=2)
    model.head = nn.Linear(64, 50)
    before = weight_bytes(model)
    q = quantize(model)
    after = weight_bytes(q)
    matrices = 4 * 256 * (32 + 64) + 4 * 256 * (64 + 64)  # float32 entries, two layers
    assert before == {
        "matrices": matrices,
        "scales": 0,
        "other": before["other"],
        "total": matrices + before["other"],
    }
    assert after["matrices"] * 4 == before["matrices"]
    assert after["scales"] == 4 * (4 * 256)  # one float32 per row of the four matrices
    assert after["other"] == before["other"]  # biases, embedding and head stay float
    assert isinstance(q.rnn, QuantizedLSTM) and isinstance(q.head, nn.Linear)
    assert isinstance(model.rnn, lstmkit.LSTM) and model.rnn.weight_ih_l0.dtype == torch.float32


def test_quantize_copies_and_converts_torch_layers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6))
    model.add_module("gru", nn.GRU(6, 10, batch_first=True))
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    q = quantize(model.train())
    assert torch.equal(torch.get_rng_state(), rng)  # the conversion draws nothing
    assert isinstance(q.gru, QuantizedGRU) and not q.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.training and model[0].weight.requires_grad
    x = torch.randn(2, 5, 6)
    with torch.no_grad():
        assert _rel(q.gru(x)[0], model.gru(x)[0]) < TOL
    direct = QuantizedGRU.from_torch(model.gru)
    assert torch.equal(direct.weight_ih_l0, q.gru.weight_ih_l0)


def test_pruned_then_quantized_keeps_the_zeros() -> None:
    torch.manual_seed(0)
    lstm = lstmkit.LSTM(16, 32)
    prune(lstm, 0.6)
    q = quantize(lstm)
    assert sparsity(q)["overall"] == pytest.approx(sparsity(lstm)["overall"])
    assert not q._forward_pre_hooks and "_lstmkit_prune" not in q.__dict__
    assert "_lstmkit_prune" in lstm.__dict__  # the original is still pruned


def test_quantized_modules_are_inference_only() -> None:
    lstm = lstmkit.LSTM(3, 4)
    q = quantize(lstm)
    x = torch.randn(2, 1, 3)
    q.train()  # allowed, so that a container's .train() works; running it is not
    with pytest.raises(
        NotImplementedError, match=r"QuantizedLSTM is inference-only .*got training mode"
    ):
        q(x)
    q.eval()
    with pytest.raises(NotImplementedError, match=r"input has requires_grad=True"):
        q(x.requires_grad_())
    q.bias_ih_l0.requires_grad_(True)
    with pytest.raises(NotImplementedError, match=r"parameter bias_ih_l0 has requires_grad=True"):
        q(x.detach())
    with torch.no_grad():
        q(x)  # under no_grad nothing needs a gradient
    with pytest.raises(NotImplementedError, match=r"dequantize\(module\)\.to_torch\(\)"):
        q.to_torch()
    with pytest.raises(NotImplementedError, match=r"cannot be re-initialised"):
        q.reset_parameters()
    q8 = quantize(lstm, kernel="int8")
    assert q8.backend == "reference"
    q8.backend = "fused"
    with pytest.raises(NotImplementedError, match=r"kernel='int8' runs on the reference loop"):
        q8(x.detach())
    with pytest.raises(ValueError, match=r"kernel must be one of 'dequantize', 'int8', got 'int4'"):
        quantize(lstm, kernel="int4")
    with pytest.raises(ValueError, match=r"QuantizedLSTM at the top level is already quantized"):
        quantize(q)
    with pytest.raises(NotImplementedError, match=r"not the cell LSTMCell at the top level"):
        quantize(lstmkit.LSTMCell(3, 4))
    with pytest.raises(ValueError, match=r"module must contain an LSTM, GRU or RNN"):
        quantize(nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"module has no quantized layer"):
        dequantize(lstm)


# ---------------------------------------------------------------------------------- streaming
STREAM_CONFIGS = {
    "lstm_proj_ln": (lstmkit.LSTM, {"num_layers": 2, "proj_size": 16, "layer_norm": True}),
    "lstm_peephole_cifg": (lstmkit.LSTM, {"peephole": True, "coupled_gates": True}),
    "gru": (lstmkit.GRU, {"num_layers": 2}),
    "gru_reset_before": (lstmkit.GRU, {"reset_after": False}),
    "gru_ln_reset_before": (lstmkit.GRU, {"layer_norm": True, "reset_after": False}),
    "rnn_ln_residual": (lstmkit.RNN, {"layer_norm": True, "num_layers": 2, "residual": True}),
}


@pytest.mark.parametrize("name", list(STREAM_CONFIGS))
def test_int8_streamer_steps_the_quantized_module(name: str) -> None:
    cls, kw = STREAM_CONFIGS[name]
    torch.manual_seed(0)
    module = cls(12, 32, **kw).eval()
    q = quantize(module, kernel="int8")
    x = torch.randn(8, 3, 12)
    streamer = Streamer(q, batch_size=3)
    assert streamer.weights == "int8" and streamer.backend == "torch"
    assert "weights='int8'" in repr(streamer)
    steps = torch.stack([streamer.step(x[t]).clone() for t in range(8)])
    whole, state = _run(q, x)
    torch.testing.assert_close(steps, whole, atol=1e-5, rtol=0)
    for s, part in zip(
        state, [streamer.get_state()] if len(state) == 1 else streamer.get_state(), strict=True
    ):
        torch.testing.assert_close(part, s, atol=1e-5, rtol=0)
    assert _rel(steps, _run(module, x)[0]) < TOL
    # the float module with weights='int8' quantizes the same way
    same = Streamer(module, batch_size=3, weights="int8")
    again = torch.stack([same.step(x[t]).clone() for t in range(8)])
    assert torch.equal(again, steps)


def test_int8_streamer_refresh_and_errors() -> None:
    torch.manual_seed(0)
    lstm = lstmkit.LSTM(4, 16)
    streamer = Streamer(nn.LSTM(4, 16), weights="int8")  # torch.nn modules too
    assert streamer.weights == "int8"
    s = Streamer(lstm, weights="int8")
    x = torch.randn(1, 4)
    first = s.step(x).clone()
    with torch.no_grad():
        lstm.weight_ih_l0.mul_(2.0)
    s.refresh()
    s.reset()
    assert not torch.equal(s.step(x), first)
    with pytest.raises(
        ValueError, match=r"weights='float' needs float weights, but the module is quantized"
    ):
        Streamer(quantize(lstm), weights="float")
    with pytest.raises(ValueError, match=r"backend='fused' has no int8 step"):
        Streamer(lstm, weights="int8", backend="fused")
    with pytest.raises(
        ValueError, match=r"weights must be one of 'auto', 'float', 'int8', got 'int4'"
    ):
        Streamer(lstm, weights="int4")
    assert Streamer(lstm).weights == "float"
