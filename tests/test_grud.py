"""GRU-D: parity with torch.nn.GRU when nothing is missing, the imputation and time gaps by hand,
gradients, lengths and input validation."""

from __future__ import annotations

import math

import pytest
import torch

from lstmkit.nn import GRU
from lstmkit.nn.grud import GRUD, grud_inputs, last_observed, time_gaps

nan = math.nan


def _zero_grud_extras(model: GRUD) -> None:
    """Switch off everything GRU-D adds to a GRU: mask weights and both decays."""
    with torch.no_grad():
        for p in (
            model.weight_mh_l0,
            model.weight_gamma_x,
            model.bias_gamma_x,
            model.weight_gamma_h,
            model.bias_gamma_h,
        ):
            p.zero_()


def _copy_gru_weights(model: GRUD, gru: torch.nn.Module) -> None:
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(model, name).copy_(getattr(gru, name))


@pytest.mark.parametrize("batch_first", [False, True])
def test_equals_torch_gru_when_nothing_is_missing(batch_first: bool) -> None:
    T, B, D, H = 6, 3, 4, 5
    gru = torch.nn.GRU(D, H, batch_first=batch_first)
    model = GRUD(D, H, batch_first=batch_first)
    _copy_gru_weights(model, gru)
    _zero_grud_extras(model)
    shape = (B, T, D) if batch_first else (T, B, D)
    x = torch.randn(shape)
    mask = torch.ones(shape)
    delta = torch.rand(shape) * 3  # irrelevant once the decay weights are zero
    hx = torch.randn(1, B, H)
    out, h_n = model(x, mask, delta, hx)
    ref_out, ref_h = gru(x, hx)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=0)
    torch.testing.assert_close(h_n, ref_h, atol=1e-6, rtol=0)


def test_reset_before_form_equals_lstmkit_gru_reset_after_false() -> None:
    T, B, D, H = 5, 2, 3, 4
    gru = GRU(D, H, reset_after=False)
    model = GRUD(D, H, reset_after=False)
    _copy_gru_weights(model, gru)
    _zero_grud_extras(model)
    x = torch.randn(T, B, D)
    out, h_n = model(x, torch.ones(T, B, D), torch.ones(T, B, D))
    ref_out, ref_h = gru(x)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=0)
    torch.testing.assert_close(h_n, ref_h, atol=1e-6, rtol=0)


def test_mask_weights_act_as_extra_input_bias() -> None:
    """With everything observed, V m_t = V 1 is a constant: folding it into bias_ih gives the
    same outputs as a GRU, which checks that V enters the r, z, n pre-activations in that order."""
    T, B, D, H = 4, 2, 3, 4
    model = GRUD(D, H)
    with torch.no_grad():
        for p in (model.weight_gamma_x, model.bias_gamma_x, model.weight_gamma_h):
            p.zero_()
        model.bias_gamma_h.zero_()
    gru = torch.nn.GRU(D, H)
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_hh_l0"):
            getattr(gru, name).copy_(getattr(model, name))
        gru.bias_ih_l0.copy_(model.bias_ih_l0 + model.weight_mh_l0.sum(1))
    x = torch.randn(T, B, D)
    out, _ = model(x, torch.ones(T, B, D), torch.ones(T, B, D))
    torch.testing.assert_close(out, gru(x)[0], atol=1e-6, rtol=0)


def test_time_gaps_hand_worked_example() -> None:
    """Two variables at timestamps s, re-derived by hand from the paper's definition:
    delta_1 = 0; delta_t = (s_t - s_{t-1}) + (delta_{t-1} if m_{t-1} = 0 else 0).

    s steps:        .   0.1  0.5  1.0  0.6  0.3  0.6  0.7
    m (var 0):      1    1    0    1    0    1    1    0
    delta (var 0):  0   0.1  0.5  1.0+0.5=1.5  0.6  0.3+0.6=0.9  0.6  0.7
    m (var 1):      0    1    1    0    0    0    1    0
    delta (var 1):  0   0.1+0=0.1  0.5  1.0  0.6+1.0=1.6  0.3+1.6=1.9  0.6+1.9=2.5  0.7
    """
    s = torch.tensor([0.0, 0.1, 0.6, 1.6, 2.2, 2.5, 3.1, 3.8], dtype=torch.float64)
    m = torch.tensor([[1, 1, 0, 1, 0, 1, 1, 0], [0, 1, 1, 0, 0, 0, 1, 0]]).T  # (T, D)
    expected = torch.tensor(
        [[0.0, 0.1, 0.5, 1.5, 0.6, 0.9, 0.6, 0.7], [0.0, 0.1, 0.5, 1.0, 1.6, 1.9, 2.5, 0.7]],
        dtype=torch.float64,
    ).T
    torch.testing.assert_close(time_gaps(s, m), expected, atol=1e-12, rtol=0)
    # the same with a batch axis, and per-sequence timestamps (second sequence on a 2x clock)
    m3 = torch.stack([m, m], dim=1)
    s2 = torch.stack([s, 2 * s], dim=1)
    delta = time_gaps(s2, m3)
    torch.testing.assert_close(delta[:, 0], expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(delta[:, 1], 2 * expected, atol=1e-12, rtol=0)


def test_last_observed_and_grud_inputs_batch_first() -> None:
    x = torch.tensor([[47.0, nan], [49.0, 15.0], [nan, 14.0], [40.0, nan], [nan, nan]])
    m = torch.isfinite(x)
    expected = torch.tensor([[nan, nan], [47.0, nan], [49.0, 15.0], [49.0, 14.0], [40.0, 14.0]])
    torch.testing.assert_close(last_observed(x, m), expected, equal_nan=True)
    s = torch.arange(5.0)
    delta, x_last = grud_inputs(x.unsqueeze(0), m.unsqueeze(0), s, batch_first=True)
    torch.testing.assert_close(x_last[0], expected, equal_nan=True)
    torch.testing.assert_close(delta[0], time_gaps(s, m))


def test_imputation_matches_hand_computation() -> None:
    """One variable, observations at t = 0 and t = 3, x_mean = 2, gamma_x = exp(-max(0, w d + b))
    with w = 0.5, b = -0.25. At t = 1 (delta 1): gamma = exp(-0.25), x_hat = g*10 + (1-g)*2.
    At t = 2 (delta 2): gamma = exp(-0.75). At t = 4 (delta 1 after the second observation 4.0):
    gamma = exp(-0.25), x_hat = g*4 + (1-g)*2. Before any observation the mean is used."""
    model = GRUD(1, 2)
    with torch.no_grad():
        model.weight_gamma_x.fill_(0.5)
        model.bias_gamma_x.fill_(-0.25)
        model.x_mean.fill_(2.0)
    x = torch.tensor([nan, 10.0, nan, nan, 4.0, nan]).reshape(6, 1, 1)
    m = torch.isfinite(x)
    delta = time_gaps(torch.arange(6.0), m)
    assert delta.flatten().tolist() == [0.0, 1.0, 1.0, 2.0, 3.0, 1.0]
    g1, g2 = math.exp(-0.25), math.exp(-0.75)
    expected = [2.0, 10.0, g1 * 10 + (1 - g1) * 2, g2 * 10 + (1 - g2) * 2, 4.0]
    expected.append(g1 * 4 + (1 - g1) * 2)
    x_hat = model.impute(x, m, delta)
    torch.testing.assert_close(x_hat.flatten(), torch.tensor(expected), atol=1e-6, rtol=0)


def test_random_missing_values_stay_finite_and_hidden_decay_applies() -> None:
    T, B, D, H = 12, 4, 3, 6
    model = GRUD(D, H)
    x = torch.randn(T, B, D)
    m = torch.rand(T, B, D) > 0.5
    x = torch.where(m, x, torch.full_like(x, nan))
    s = torch.cumsum(torch.rand(T) + 0.1, 0)
    delta = time_gaps(s, m)
    model.set_mean(x, m)
    out, h_n = model(x, m, delta)
    assert torch.isfinite(out).all() and torch.isfinite(h_n).all()
    out.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # a huge hidden decay erases the state: the output then equals a run from a zero state
    with torch.no_grad():
        model.bias_gamma_h.fill_(1e4)
    hx = torch.randn(1, B, H)
    torch.testing.assert_close(model(x, m, delta, hx)[0], model(x, m, delta)[0])


def test_set_mean_uses_only_observed_entries() -> None:
    model = GRUD(2, 3)
    x = torch.tensor([[1.0, nan], [3.0, 5.0], [nan, 7.0]])
    mean = model.set_mean(x, torch.isfinite(x))
    torch.testing.assert_close(mean, torch.tensor([2.0, 6.0]))
    with pytest.raises(ValueError, match=r"variables \[1\] are never observed"):
        model.set_mean(x[:1], torch.isfinite(x[:1]))


def test_gradcheck_float64() -> None:
    T, B, D, H = 4, 2, 3, 3
    model = GRUD(D, H, dtype=torch.float64)
    with torch.no_grad():
        model.bias_gamma_x.fill_(0.3)  # keep the decay pre-activations away from the relu kink
        model.bias_gamma_h.fill_(0.3)
        model.x_mean.copy_(torch.randn(D, dtype=torch.float64))
    m = torch.tensor([[[1, 0, 1], [0, 1, 1]]] * T).bool()
    m[0] = True
    x = torch.randn(T, B, D, dtype=torch.float64, requires_grad=True)
    delta = (torch.rand(T, B, D, dtype=torch.float64) + 0.5).requires_grad_()
    hx = torch.randn(1, B, H, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())

    def run(x: torch.Tensor, delta: torch.Tensor, hx: torch.Tensor, *ps: torch.Tensor):
        state = dict(zip(names, ps, strict=True))
        state["x_mean"] = model.x_mean
        out, h_n = torch.func.functional_call(model, state, (x, m, delta, hx))
        return out, h_n

    assert torch.autograd.gradcheck(run, (x, delta, hx, *params))


def test_lengths_match_running_each_sequence_alone() -> None:
    T, B, D, H = 7, 3, 2, 4
    model = GRUD(D, H, batch_first=True)
    x = torch.randn(B, T, D)
    m = torch.rand(B, T, D) > 0.3
    delta = torch.rand(B, T, D)
    lengths = torch.tensor([7, 4, 0])
    out, h_n = model(x, m, delta, lengths=lengths)
    assert out.shape == (B, T, H) and h_n.shape == (1, B, H)
    for b, n in enumerate(lengths.tolist()):
        assert (out[b, n:] == 0).all()
        if n == 0:
            assert (h_n[0, b] == 0).all()
            continue
        alone, h_alone = model(x[b : b + 1, :n], m[b : b + 1, :n], delta[b : b + 1, :n])
        torch.testing.assert_close(out[b, :n], alone[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(h_n[0, b], h_alone[0, 0], atol=1e-6, rtol=0)


def test_errors_name_the_argument() -> None:
    model = GRUD(2, 3)
    x = torch.randn(4, 1, 2)
    ones = torch.ones(4, 1, 2)
    with pytest.raises(
        ValueError, match=r"x must have shape \(T, B, D\) with D = input_size = 2, got \(4, 1, 3\)"
    ):
        model(torch.randn(4, 1, 3), ones, ones)
    with pytest.raises(
        ValueError, match=r"mask must have the shape of x, \(4, 1, 2\), got \(4, 2\)"
    ):
        model(x, torch.ones(4, 2), ones)
    with pytest.raises(
        ValueError, match=r"mask must hold only 0 and 1 \(1 = observed\), got a value of 0.5"
    ):
        model(x, ones * 0.5, ones)
    with pytest.raises(
        ValueError, match=r"delta must hold finite time gaps >= 0, got -1.0 at index \(2, 0, 1\)"
    ):
        bad = ones.clone()
        bad[2, 0, 1] = -1
        model(x, ones, bad)
    with pytest.raises(
        ValueError,
        match=r"x must be finite where mask is 1 \(observed\), got nan at index \(1, 0, 0\)",
    ):
        xn = x.clone()
        xn[1, 0, 0] = nan
        model(xn, ones, ones)
    with pytest.raises(ValueError, match=r"hx must have shape \(1, 1, 3\), got \(1, 3\)"):
        model(x, ones, ones, torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"lengths must be <= the sequence length 4"):
        model(x, ones, ones, lengths=[5])
    with pytest.raises(
        TypeError, match=r"delta must have x's dtype torch.float32, got torch.float64"
    ):
        model(x, ones, ones.double())
    with pytest.raises(
        ValueError, match=r"timestamps must be non-decreasing in time, got a step back at index 2"
    ):
        time_gaps(torch.tensor([0.0, 1.0, 0.5]), torch.ones(3, 1))
    with pytest.raises(ValueError, match=r"timestamps must have shape \(3,\) or \(3, 2\)"):
        time_gaps(torch.arange(4.0), torch.ones(3, 2, 1))
