"""lstmkit.streaming.Streamer: stepping a sequence one step at a time gives the module's output.

Every variant of every family, stacked, with an initial state and batch > 1, through both
backends (the C++ step kernel and the pure-torch step), against the module's whole-sequence
forward in eval mode within 1e-5 (float32). Then: the two backends agree on shapes that exercise
every code path of the kernel (padding of the packed rows, batch tiles, threads); reset(mask),
refresh(), state get/set, buffer reuse and no allocation per step; the fallback when the extension
is missing; and the errors.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import lstmkit
from lstmkit import streaming
from lstmkit.backends import fused
from lstmkit.streaming import Streamer

I, H, T = 3, 6, 5
TOL = {"atol": 1e-5, "rtol": 0.0}

requires_kernel = pytest.mark.skipif(
    streaming._extension() is None,
    reason="the C++ step kernel lstmkit._C.StepKernel is not built "
    "(run `make`, or `python setup.py build_ext --inplace`)",
)
BACKENDS = [pytest.param("fused", marks=requires_kernel), "torch"]

CONFIGS = {
    "lstm": (lstmkit.LSTM, {}),
    "lstm_no_bias": (lstmkit.LSTM, {"bias": False}),
    "lstm_peephole": (lstmkit.LSTM, {"peephole": True}),
    "lstm_cifg": (lstmkit.LSTM, {"coupled_gates": True}),
    "lstm_clip": (lstmkit.LSTM, {"cell_clip": 0.3}),
    "lstm_proj": (lstmkit.LSTM, {"proj_size": 4, "num_layers": 2}),
    "lstm_ln": (lstmkit.LSTM, {"layer_norm": True}),
    "lstm_peephole_cifg_clip_proj": (
        lstmkit.LSTM,
        {"peephole": True, "coupled_gates": True, "cell_clip": 0.5, "proj_size": 2},
    ),
    "lstm_ln_all": (
        lstmkit.LSTM,
        {
            "layer_norm": True,
            "peephole": True,
            "coupled_gates": True,
            "cell_clip": 1.0,
            "proj_size": 3,
            "bias": False,
            "num_layers": 2,
        },
    ),
    "lstm_ln_peephole_clip": (
        lstmkit.LSTM,
        {"layer_norm": True, "peephole": True, "cell_clip": 1.0, "num_layers": 2},
    ),
    "lstm_stack_zoneout_residual": (
        lstmkit.LSTM,
        {"num_layers": 3, "zoneout": (0.3, 0.1), "residual": True, "dropout": 0.5},
    ),
    "lstm_learned_init": (lstmkit.LSTM, {"num_layers": 2, "learn_initial_state": True}),
    "gru": (lstmkit.GRU, {}),
    "gru_reset_before": (lstmkit.GRU, {"reset_after": False}),
    "gru_no_bias": (lstmkit.GRU, {"bias": False, "reset_after": False}),
    "gru_ln": (lstmkit.GRU, {"layer_norm": True, "num_layers": 2}),
    "gru_ln_reset_before": (lstmkit.GRU, {"layer_norm": True, "reset_after": False}),
    "gru_stack_zoneout": (lstmkit.GRU, {"num_layers": 3, "zoneout": 0.2, "residual": True}),
    "rnn_tanh": (lstmkit.RNN, {}),
    "rnn_relu": (lstmkit.RNN, {"nonlinearity": "relu", "num_layers": 2}),
    "rnn_ln": (lstmkit.RNN, {"layer_norm": True, "zoneout": 0.4}),
    "rnn_relu_no_bias": (lstmkit.RNN, {"nonlinearity": "relu", "bias": False}),
}


def _parts(state) -> list[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


def _pack(parts):
    return tuple(parts) if len(parts) > 1 else parts[0]


def _module(name: str, **extra):
    cls, kwargs = CONFIGS[name]
    module = cls(I, H, init="torch", **kwargs, **extra)
    with torch.no_grad():  # non-trivial learned initial states, layer-norm gains and biases
        for pname, p in module.named_parameters():
            if pname.startswith(("h0", "c0")):
                p.normal_()
            elif pname.startswith("ln_"):
                p.uniform_(0.5, 1.5)
    return module


def _random_state(module, batch: int):
    return _pack([torch.randn_like(t) for t in _parts(module.initial_state(batch))])


def _run(streamer: Streamer, x: torch.Tensor) -> torch.Tensor:
    return torch.stack([streamer.step(x[t]).clone() for t in range(x.shape[0])])


# ---------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_steps_equal_the_whole_sequence(name, batch, backend):
    module = _module(name)
    x = torch.randn(T, batch, I)
    hx = _random_state(module, batch)
    module.eval()
    with torch.no_grad():
        y, final = module(x, hx)
    module.train()  # the streamer always uses eval semantics
    streamer = Streamer(module, batch, backend=backend)
    assert streamer.backend == backend
    streamer.set_state(hx)
    torch.testing.assert_close(_run(streamer, x), y, **TOL)
    for got, want in zip(_parts(streamer.get_state()), _parts(final), strict=True):
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["lstm_learned_init", "gru", "rnn_ln"])
def test_starts_from_the_modules_initial_state(name, backend):
    module = _module(name).eval()
    x = torch.randn(T, 2, I)
    with torch.no_grad():
        y, _ = module(x)
    torch.testing.assert_close(_run(Streamer(module, 2, backend=backend), x), y, **TOL)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "torch_module",
    [
        lambda: torch.nn.LSTM(I, H, num_layers=2, proj_size=2),
        lambda: torch.nn.GRU(I, H),
        lambda: torch.nn.RNN(I, H, nonlinearity="relu"),
    ],
    ids=["lstm_proj", "gru", "rnn_relu"],
)
def test_torch_nn_modules_are_accepted(torch_module, backend):
    module = torch_module().eval()
    x = torch.randn(T, 2, I)
    with torch.no_grad():
        y, _ = module(x)
    rng = torch.get_rng_state()
    streamer = Streamer(module, 2, backend=backend)
    assert torch.equal(torch.get_rng_state(), rng)  # the conversion leaves the RNG alone
    torch.testing.assert_close(_run(streamer, x), y, **TOL)


@requires_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "name", ["lstm_ln_all", "lstm_proj", "gru_ln_reset_before", "gru", "rnn_relu"]
)
def test_kernel_equals_torch_step_on_every_tile_shape(name, dtype):
    """37 units: packed rows padded (SIMD width 16 or 8); batch 15 = 8 + 4 + 2 + 1 rows."""
    cls, kwargs = CONFIGS[name]
    module = cls(7, 37, init="torch", **kwargs, dtype=dtype)
    x = torch.randn(4, 15, 7, dtype=dtype)
    hx = _random_state(module, 15)
    outputs = []
    for backend in ("fused", "torch"):
        streamer = Streamer(module, 15, backend=backend)
        streamer.set_state(hx)
        outputs.append((_run(streamer, x), _parts(streamer.get_state())))
    tol = {"atol": 1e-5 if dtype == torch.float32 else 1e-12, "rtol": 0.0}
    torch.testing.assert_close(outputs[0][0], outputs[1][0], **tol)
    for a, b in zip(outputs[0][1], outputs[1][1], strict=True):
        torch.testing.assert_close(a, b, **tol)


@requires_kernel
@pytest.mark.parametrize("name", ["lstm_ln_peephole_clip", "gru_reset_before", "rnn_tanh"])
def test_kernel_gives_the_same_bits_with_two_threads(name):
    """Large enough that products and pointwise passes are split over threads."""
    cls, kwargs = CONFIGS[name]
    module = cls(128, 128, init="torch", **kwargs)
    x = torch.randn(2, 64, 128)
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(_run(Streamer(module, 64, backend="fused"), x))
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_input_and_output(backend):
    module = _module("lstm_proj").eval()
    x = torch.randn(T, 2, 2 * I)[..., ::2]  # not contiguous
    with torch.no_grad():
        y, _ = module(x)
    streamer = Streamer(module, 2, backend=backend)
    dest = torch.zeros(T, 2, 10)
    for t in range(T):
        out = dest[t, :, 3:7]  # a strided slice of a bigger buffer
        assert streamer.step(x[t], out=out) is out
    torch.testing.assert_close(dest[..., 3:7], y, **TOL)
    assert not dest[..., :3].any() and not dest[..., 7:].any()


def test_bfloat16_module_uses_the_torch_step():
    module = lstmkit.LSTM(I, H, dtype=torch.bfloat16).eval()
    streamer = Streamer(module, 2)
    assert streamer.backend == "torch"
    x = torch.randn(T, 2, I, dtype=torch.bfloat16)
    with torch.no_grad():
        y, _ = module(x)
    torch.testing.assert_close(_run(streamer, x), y, atol=2e-2, rtol=0.0)


# ---------------------------------------------------------------------------------- state
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["lstm_learned_init", "gru_stack_zoneout", "rnn_tanh"])
def test_reset_mask_resets_only_the_chosen_streams(name, backend):
    module = _module(name).eval()
    streamer = Streamer(module, 3, backend=backend)
    x = torch.randn(T, 3, I)
    _run(streamer, x)
    before = _parts(streamer.get_state())
    streamer.reset(torch.tensor([True, False, True]))
    after = _parts(streamer.get_state())
    initial = _parts(module.initial_state(3))
    for b, a, i in zip(before, after, initial, strict=True):
        torch.testing.assert_close(a[:, [0, 2]], i[:, [0, 2]].detach(), atol=0.0, rtol=0.0)
        torch.testing.assert_close(a[:, 1], b[:, 1], atol=0.0, rtol=0.0)
    # stepping on from the mixed state is the module run from it
    with torch.no_grad():
        y, _ = module(x, _pack(after))
    torch.testing.assert_close(_run(streamer, x), y, **TOL)
    streamer.reset()
    for a, i in zip(_parts(streamer.get_state()), initial, strict=True):
        torch.testing.assert_close(a, i.detach(), atol=0.0, rtol=0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_refresh_picks_up_new_weights_and_keeps_the_state(backend):
    module = _module("lstm_ln_peephole_clip").eval()
    streamer = Streamer(module, 2, backend=backend)
    x = torch.randn(T, 2, I)
    _run(streamer, x)
    state = streamer.get_state()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
        y_new, _ = module(x, state)
        y_old_weights = _run(streamer, x)  # still the snapshot
    assert (y_old_weights - y_new).abs().max() > 1e-3
    streamer.set_state(state)
    streamer.refresh()
    for a, b in zip(_parts(streamer.get_state()), _parts(state), strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(_run(streamer, x), y_new, **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_is_copied_in_and_out(backend):
    module = _module("lstm").eval()
    streamer = Streamer(module, 2, backend=backend)
    h, c = _random_state(module, 2)
    streamer.state = (h, c)
    h.zero_()
    got = streamer.state
    assert got[0].abs().sum() > 0
    got[0].zero_()
    assert streamer.get_state()[0].abs().sum() > 0


# ---------------------------------------------------------------------------------- buffers
@requires_kernel
@pytest.mark.parametrize("name", ["lstm_ln_all", "gru_ln_reset_before", "rnn_ln"])
def test_kernel_step_allocates_nothing_and_reuses_its_buffers(name):
    module = _module(name)
    streamer = Streamer(module, 3, backend="fused")
    x = torch.randn(3, I)
    y = streamer.step(x)
    buffers = [b.data_ptr() for b in streamer._buffers]
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(4):
            assert streamer.step(x) is y
    allocations = [e for e in prof.events() if e.cpu_memory_usage > 0 or e.name == "[memory]"]
    assert allocations == []
    assert [b.data_ptr() for b in streamer._buffers] == buffers
    assert not y.requires_grad and not y.is_inference()


def test_the_allocation_check_sees_the_torch_step_allocate():
    """The profiler check above is not vacuous: it sees the torch step's temporaries."""
    streamer = Streamer(_module("lstm"), 3, backend="torch")
    x = torch.randn(3, I)
    streamer.step(x)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        streamer.step(x)
    assert any(e.cpu_memory_usage > 0 for e in prof.events())


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_autograd_graph(backend):
    module = _module("gru")
    streamer = Streamer(module, 1, backend=backend)
    x = torch.randn(1, I, requires_grad=True)
    y = streamer.step(x)
    assert not y.requires_grad and y.grad_fn is None and not y.is_inference()
    out = torch.empty(1, H)
    assert streamer.step(x, out=out) is out and out.grad_fn is None


# ---------------------------------------------------------------------------------- fallback
def test_without_extension_auto_warns_once_and_matches_the_kernel(monkeypatch):
    module = _module("gru_ln_reset_before").eval()
    x = torch.randn(T, 2, I)
    with torch.no_grad():
        y, _ = module(x)
    monkeypatch.setattr(fused, "_C", None)
    monkeypatch.setattr(streaming, "_fallback_warned", False)
    with pytest.warns(RuntimeWarning, match=r"pure-torch step .*StepKernel is not built"):
        streamer = Streamer(module, 2)
    assert streamer.backend == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Streamer(module, 2)  # once per process
    torch.testing.assert_close(_run(streamer, x), y, **TOL)
    with pytest.raises(ImportError, match=r"backend='fused' is not available.*make"):
        Streamer(module, 2, backend="fused")


# ---------------------------------------------------------------------------------- errors
def test_bidirectional_and_reverse_modules_are_refused():
    with pytest.raises(ValueError, match=r"unidirectional.*bidirectional=True"):
        Streamer(lstmkit.LSTM(I, H, bidirectional=True))
    with pytest.raises(ValueError, match=r"whole sequence.*bidirectional=True"):
        Streamer(torch.nn.GRU(I, H, bidirectional=True))
    with pytest.raises(ValueError, match=r"not reversed.*reverse=True"):
        Streamer(lstmkit.RNN(I, H, reverse=True))


def test_bad_constructor_arguments():
    with pytest.raises(TypeError, match=r"module must be an lstmkit LSTM, GRU or RNN.*Linear"):
        Streamer(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"batch_size must be a positive int, got 0"):
        Streamer(lstmkit.LSTM(I, H), 0)
    with pytest.raises(ValueError, match=r"backend must be one of 'auto', 'fused', 'torch'"):
        Streamer(lstmkit.LSTM(I, H), backend="cuda")
    if streaming._extension() is not None:
        with pytest.raises(ValueError, match=r"float32 and float64 on the CPU.*torch.float16"):
            Streamer(lstmkit.LSTM(I, H, dtype=torch.float16), backend="fused")


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_step_arguments(backend):
    streamer = Streamer(lstmkit.LSTM(I, H, proj_size=2), 2, backend=backend)
    with pytest.raises(
        ValueError, match=r"x must have shape \(batch_size, input_size\) = \(2, 3\), got \(2, 4\)"
    ):
        streamer.step(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"x must have shape .* got \(3,\) \(one row per stream"):
        streamer.step(torch.randn(3))
    with pytest.raises(
        TypeError, match=r"x must have the module's dtype torch.float32, got torch.float64"
    ):
        streamer.step(torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(
        TypeError, match=r"x must be a torch.Tensor of shape .* got \[1, 2, 3\] \(list\)"
    ):
        streamer.step([1, 2, 3])
    with pytest.raises(
        ValueError,
        match=r"out must have shape \(batch_size, output_size\) = \(2, 2\), got \(2, 6\)",
    ):
        streamer.step(torch.randn(2, 3), out=torch.empty(2, 6))
    with pytest.raises(ValueError, match=r"out must not have elements that share memory"):
        streamer.step(torch.randn(2, 3), out=torch.empty(1, 2).expand(2, 2))
    with pytest.raises(
        ValueError, match=r"hx\[1\] \(c_0\) must have shape \(1, 2, 6\), got \(1, 3, 6\)"
    ):
        streamer.set_state((torch.zeros(1, 2, 2), torch.zeros(1, 3, 6)))
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\) for LSTM"):
        streamer.set_state(torch.zeros(1, 2, 2))
    with pytest.raises(TypeError, match=r"mask must be a bool tensor of shape \(2,\)"):
        streamer.reset(torch.tensor([1, 0]))
    with pytest.raises(ValueError, match=r"mask must have shape \(2,\), got \(3,\)"):
        streamer.reset(torch.tensor([True, False, True]))


def test_refresh_refuses_a_module_moved_to_another_dtype():
    module = lstmkit.GRU(I, H)
    streamer = Streamer(module)
    module.double()
    with pytest.raises(ValueError, match=r"moved from torch.float32 .* to torch.float64"):
        streamer.refresh()
