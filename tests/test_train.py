"""The training loop: TBPTT with carried state, clipping, schedules, NT-ASGD, early stopping,
bf16 autocast, determinism, logs and DDP (two gloo processes against one)."""

from __future__ import annotations

import csv
import itertools
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.data import DataLoader, TensorDataset

import lstmkit
from lstmkit.train import (
    NTASGD,
    TBPTT,
    EpochSampler,
    TrainConfig,
    fit,
    reset_state,
    split_windows,
    step_decay,
    warmup_cosine,
)
from lstmkit.train.checkpoint import load_safetensors

ROOT = Path(__file__).resolve().parents[1]
QUIET = {"progress": False, "tensorboard": False}


# ---------------------------------------------------------------------- models and helpers
class Tagger(nn.Module):
    """A per-step regressor with a carried state: model(x, state) -> (output, state)."""

    def __init__(self, inputs: int = 3, hidden: int = 5, outputs: int = 2) -> None:
        super().__init__()
        self.rnn = lstmkit.LSTM(inputs, hidden)
        self.head = nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        out, state = self.rnn(x, state)
        return self.head(out), state

    def reset_state(self, state: Any, mask: torch.Tensor) -> Any:
        return self.rnn.reset_state(state, mask)


def _tagger() -> Tagger:
    torch.manual_seed(0)
    return Tagger().double()


def _sequence(T: int = 12, B: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, 3, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randn(T, B, 2, dtype=torch.float64, generator=g)
    return x, y


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def _zero(model: nn.Module, *tensors: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    for t in tensors:
        t.grad = None


def _read_log(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------- TBPTT
def test_tbptt_whole_window_equals_full_bptt() -> None:
    model = _tagger()
    x, y = _sequence()
    loss, count = TBPTT(F.mse_loss)(model, (x, y))
    loss.backward()
    ours, ours_x = _grads(model), x.grad.clone()
    _zero(model, x)
    out, _ = model(x)
    F.mse_loss(out, y).backward()
    for a, b in zip(ours, _grads(model), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(ours_x, x.grad)
    assert count == y.numel()


def test_tbptt_k2_covering_the_sequence_equals_bptt_of_the_last_window() -> None:
    """k1=4, k2=12 on 12 steps: the third update's graph reaches back to step 0, so its
    gradient is full BPTT of the loss on steps 8..11."""
    model = _tagger()
    x, y = _sequence()
    objective = TBPTT(F.mse_loss, k1=4, k2=12)
    pieces = objective.split((x, y))
    assert [p[0].shape[0] for p in pieces] == [4, 4, 4]
    for piece in pieces:
        _zero(model, x)
        loss, _ = objective(model, piece)
        loss.backward()
    ours, ours_x = _grads(model), x.grad.clone()
    _zero(model, x)
    out, _ = model(x)
    F.mse_loss(out[8:], y[8:]).backward()
    for a, b in zip(ours, _grads(model), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours_x, x.grad, rtol=1e-12, atol=1e-14)


def test_tbptt_cuts_the_gradient_at_the_window_edge() -> None:
    model = _tagger()
    x, y = _sequence(T=8)
    objective = TBPTT(F.mse_loss, k1=4)
    first, second = objective.split((x, y))
    objective(model, first)
    assert not any(t.requires_grad for t in objective.state)  # carried, but detached
    _zero(model, x)
    loss, _ = objective(model, second)
    loss.backward()
    assert torch.count_nonzero(x.grad[:4]) == 0  # the late window cannot reach early inputs
    assert bool((x.grad[4:].abs().sum(-1) > 0).all())
    ours = _grads(model)

    _zero(model, x)
    _, state = model(x[:4].detach())  # the same update written by hand
    out, _ = model(x[4:], tuple(s.detach() for s in state))
    F.mse_loss(out, y[4:]).backward()
    for a, b in zip(ours, _grads(model), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_tbptt_k2_longer_than_k1_reaches_exactly_k2_steps_back() -> None:
    model = _tagger()
    x, y = _sequence(T=9)
    objective = TBPTT(F.mse_loss, k1=3, k2=5)
    pieces = objective.split((x, y))
    for piece in pieces:
        _zero(model, x)
        loss, count = objective(model, piece)
        loss.backward()
    # the last update (steps 6..8) starts its graph at step 9 - 5 = 4
    assert torch.count_nonzero(x.grad[:4]) == 0
    assert bool((x.grad[4:].abs().sum(-1) > 0).all())
    assert count == 3 * 3 * 2  # loss over the 3 new steps only
    ours = _grads(model)

    _zero(model, x)
    with torch.no_grad():
        _, state = model(x[:4])
    out, _ = model(x[4:], state)
    F.mse_loss(out[2:], y[6:]).backward()
    for a, b in zip(ours, _grads(model), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_tbptt_k2_shorter_than_k1_backpropagates_only_the_last_k2_steps() -> None:
    model = _tagger()
    x, y = _sequence(T=6)
    loss, count = TBPTT(F.mse_loss, k1=6, k2=2)(model, (x, y))
    loss.backward()
    assert torch.count_nonzero(x.grad[:4]) == 0
    assert count == 2 * 3 * 2
    with torch.no_grad():
        _, state = model(x[:4])
        out, _ = model(x[4:], state)
    torch.testing.assert_close(loss.detach(), F.mse_loss(out, y[4:]))


def test_tbptt_reset_mask_restarts_exactly_the_marked_streams() -> None:
    model = _tagger().eval()
    x, y = _sequence(T=8)
    x = x.detach()
    objective = TBPTT(F.mse_loss)
    objective(model, (x[:4], y[:4]))
    carried = objective.state
    reset = torch.tensor([True, False, True])
    objective(model, (x[4:], y[4:], reset))
    with torch.no_grad():
        _, fresh = model(x[4:])  # every stream from the initial state
        _, continued = model(x[4:], carried)
    for got, a, b in zip(objective.state, fresh, continued, strict=True):
        assert torch.equal(got[:, reset], a[:, reset])
        assert torch.equal(got[:, ~reset], b[:, ~reset])


def test_reset_state_without_a_model_method_zeroes_the_batch_rows() -> None:
    state = (torch.ones(2, 4, 3), torch.full((2, 4, 3), 2.0))
    mask = torch.tensor([False, True, False, True])
    h, c = reset_state(nn.Linear(1, 1), state, mask)
    assert torch.equal(h[:, mask], torch.zeros(2, 2, 3))
    assert torch.equal(c[:, ~mask], torch.full((2, 2, 3), 2.0))
    with pytest.raises(
        ValueError, match=r"reset mask has 4 streams but a state tensor has shape \(2, 3, 3\)"
    ):
        reset_state(nn.Linear(1, 1), torch.ones(2, 3, 3), mask)


def test_tbptt_reset_forgets_the_carried_state() -> None:
    model = _tagger()
    x, y = _sequence(T=4)
    objective = TBPTT(F.mse_loss, k2=6)
    objective(model, (x, y))
    assert objective.state is not None
    objective.reset()
    assert objective.state is None
    assert objective.state_dict()["history"] == []


def test_tbptt_state_dict_round_trip_continues_identically() -> None:
    model = _tagger()
    x, y = _sequence(T=9)
    a = TBPTT(F.mse_loss, k1=3, k2=5)
    pieces = a.split((x.detach(), y))
    a(model, pieces[0])
    a(model, pieces[1])
    b = TBPTT(F.mse_loss, k1=3, k2=5)
    b.load_state_dict(a.state_dict())
    loss_a, _ = a(model, pieces[2])
    loss_b, _ = b(model, pieces[2])
    assert torch.equal(loss_a, loss_b)
    with pytest.raises(ValueError, match=r"TBPTT k2=4 differs from the checkpoint's k2=5"):
        TBPTT(F.mse_loss, k1=3, k2=4).load_state_dict(a.state_dict())


def test_tbptt_rejects_bad_arguments_and_batches() -> None:
    with pytest.raises(ValueError, match=r"k1 must be a positive int, got 0"):
        TBPTT(F.mse_loss, k1=0)
    with pytest.raises(TypeError, match=r"criterion must be callable, got 3 \(int\)"):
        TBPTT(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"time_dim must be one of 0, 1, got 2"):
        TBPTT(F.mse_loss, time_dim=2)
    objective = TBPTT(F.mse_loss)
    x = torch.randn(5, 2, 3)
    with pytest.raises(
        TypeError, match=r"a TBPTT batch must be a tuple \(x, y\) or \(x, y, reset\)"
    ):
        objective.split(x)
    with pytest.raises(
        ValueError,
        match=r"x and y must have the same number of steps .* got x \(5, 2, 3\) and y \(4, 2\)",
    ):
        objective.split((x, torch.randn(4, 2)))
    with pytest.raises(
        TypeError,
        match=r"reset must be a bool tensor of shape \(2,\) or None, got a tensor of shape \(2,\), dtype torch.int64",
    ):
        objective.split((x, torch.randn(5, 2), torch.tensor([0, 1])))
    with pytest.raises(
        ValueError, match=r"reset must have shape \(2,\), one entry per stream, got \(3,\)"
    ):
        objective.split((x, torch.randn(5, 2), torch.tensor([True, False, True])))


def test_split_windows() -> None:
    x, y = torch.arange(10).view(10, 1), torch.arange(10).view(10, 1) * 2
    windows = split_windows([x, y], 4)
    assert [w[0].shape[0] for w in windows] == [4, 4, 2]
    assert torch.equal(torch.cat([w[1] for w in windows]), y)
    with pytest.raises(
        ValueError, match=r"tensors\[1\] has 9 steps along dimension 0, tensors\[0\] has 10"
    ):
        split_windows([x, y[:9]], 4)


def test_fit_with_tbptt_learns_through_the_carried_state_only_when_k2_reaches_back() -> None:
    """Echo the input from 3 steps back. With k1=3 every answer lies in the previous update's
    steps: the forward pass gets it only through the carried state, and the gradient that
    teaches the model to keep it reaches it only with k2 > 3."""
    g = torch.Generator().manual_seed(0)
    stream = torch.randn(240, 8, 1, generator=g)
    target = torch.roll(stream, 3, dims=0)
    target[:3] = 0
    windows = [tuple(w) for w in split_windows([stream, target], 40)]
    final = {}
    for k2 in (6, 3):
        torch.manual_seed(0)
        result = fit(
            Tagger(1, 16, 1),
            windows,
            loss=TBPTT(F.mse_loss, k1=3, k2=k2),
            val_data=windows,
            max_epochs=5,
            lr=0.02,
            **QUIET,
        )
        assert result.steps == 5 * 6 * 14  # 6 windows of 40 steps, cut into 13 x 3 + 1
        final[k2] = result.history[-1]["val_loss"] / target.var().item()
    assert final[6] < 0.1
    assert final[3] > 0.5


def test_tbptt_lr_length_scales_each_update_by_its_window_length(tmp_path: Path) -> None:
    """AWD-LSTM's seq_len / bptt: with lr_length=8 and SGD, the update made on a 4-step window
    is the update at lr/2, and the one on an 8-step window the update at lr; the schedule's
    learning rate is left as it was, and log.csv shows the rate each update used."""
    x, y = _sequence(T=12, B=2)
    x = x.detach()
    windows = [(x[:4], y[:4]), (x[4:12], y[4:12])]

    def one_update(window, lr, lr_length):
        model = _tagger()
        fit(
            model,
            [window],
            loss=TBPTT(F.mse_loss, lr_length=lr_length),
            optimizer="sgd",
            lr=lr,
            max_epochs=1,
            log_every=1,
            out=tmp_path / f"{lr}-{lr_length}-{window[0].shape[0]}",
            **QUIET,
        )
        return [p.detach().clone() for p in model.parameters()]

    for window, factor in zip(windows, (0.5, 1.0), strict=True):
        scaled = one_update(window, 0.2, 8)
        plain = one_update(window, 0.2 * factor, None)
        for a, b in zip(scaled, plain, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    model = _tagger()
    out = tmp_path / "both"
    result = fit(
        model,
        windows,
        loss=TBPTT(F.mse_loss, lr_length=8),
        optimizer="sgd",
        lr=0.2,
        max_epochs=1,
        log_every=1,
        out=out,
        **QUIET,
    )
    assert result.steps == 2
    assert [float(r["lr"]) for r in _read_log(out / "log.csv")] == pytest.approx([0.1, 0.2])
    assert TBPTT(F.mse_loss).lr_scale(windows[0]) == 1.0
    with pytest.raises(ValueError, match=r"lr_length must be a positive int, got 0"):
        TBPTT(F.mse_loss, lr_length=0)


# ---------------------------------------------------------------------- clipping
def _one_step(**options: Any) -> tuple[torch.Tensor, list[dict[str, str]], Path]:
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 4.0]]))
    batch = (torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0]]))
    out = options.pop("out")
    fit(
        model,
        [batch],
        loss=lambda m, b: F.mse_loss(m(b[0]), b[1]),
        optimizer="sgd",
        lr=1.0,
        max_epochs=1,
        log_every=1,
        out=out,
        **QUIET,
        **options,
    )
    return model.weight.detach()[0], _read_log(Path(out) / "log.csv"), Path(out)


def test_clipping_by_norm_scales_the_gradient_and_logs_the_norm_before(tmp_path: Path) -> None:
    # loss (3 + 4 - 0)^2 has gradient 2 * 7 * [1, 1] = [14, 14], norm 19.7990
    weight, log, _ = _one_step(clip_norm=1.0, out=tmp_path / "norm")
    norm = math.hypot(14.0, 14.0)
    expected = torch.tensor([3.0, 4.0]) - torch.tensor([14.0, 14.0]) * (1.0 / (norm + 1e-6))
    torch.testing.assert_close(weight, expected)
    assert float(log[0]["grad_norm"]) == pytest.approx(norm, rel=1e-6)


def test_clipping_by_value_caps_each_entry(tmp_path: Path) -> None:
    weight, log, _ = _one_step(clip_value=0.25, out=tmp_path / "value")
    assert torch.equal(weight, torch.tensor([2.75, 3.75]))
    assert float(log[0]["grad_norm"]) == pytest.approx(math.hypot(14.0, 14.0), rel=1e-6)


def test_without_clipping_the_full_gradient_is_applied(tmp_path: Path) -> None:
    weight, _, _ = _one_step(out=tmp_path / "plain")
    assert torch.equal(weight, torch.tensor([-11.0, -10.0]))


# ---------------------------------------------------------------------- schedules
def _regression(n: int = 40, batch: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch, shuffle=True)


def _mse(model: nn.Module, batch: Any) -> torch.Tensor:
    return F.mse_loss(model(batch[0]), batch[1])


class Scripted:
    """A loss whose validation values follow a script (training uses the real MSE): drives the
    validation-dependent logic through a known sequence of checks."""

    def __init__(self, values: list[float]) -> None:
        self.values = values
        self.checks = 0
        self.evaluated: list[tuple[nn.Module, list[torch.Tensor]]] = []

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        if model.training:
            return _mse(model, batch)
        self.evaluated.append((model, [p.detach().clone() for p in model.parameters()]))
        value = self.values[min(self.checks, len(self.values) - 1)]
        self.checks += 1
        return torch.tensor(value)


def _lr_curve(tmp_path: Path, **options: Any) -> list[tuple[int, float]]:
    torch.manual_seed(0)
    fit(nn.Linear(3, 1), _regression(), loss=_mse, out=tmp_path, log_every=1, **QUIET, **options)
    rows = [r for r in _read_log(tmp_path / "log.csv") if r["train_loss"]]
    return [(int(r["epoch"]), float(r["lr"])) for r in rows]


def test_step_decay_follows_zaremba(tmp_path: Path) -> None:
    curve = _lr_curve(tmp_path, schedule="step", lr=1.0, gamma=0.5, decay_after=2, max_epochs=5)
    assert len(curve) == 5 * 5
    expected = {0: 1.0, 1: 1.0, 2: 0.5, 3: 0.25, 4: 0.125}
    assert all(lr == expected[epoch] for epoch, lr in curve)
    assert step_decay(3, gamma=0.5, decay_after=4) == 1.0
    assert step_decay(4, gamma=0.5, decay_after=4) == 0.5


def test_cosine_with_warmup(tmp_path: Path) -> None:
    curve = _lr_curve(
        tmp_path, schedule="cosine", lr=0.1, warmup_steps=4, min_lr=0.01, max_epochs=4
    )
    lrs = [lr for _, lr in curve]  # 20 batches
    assert lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert lrs[4] == pytest.approx(0.1)
    assert lrs[12] == pytest.approx(0.055)  # halfway down: (0.1 + 0.01) / 2
    assert all(a > b for a, b in itertools.pairwise(lrs[4:]))
    assert lrs[-1] == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * 15 / 16)))
    assert warmup_cosine(100, warmup=4, total=20, floor=0.1) == pytest.approx(0.1)


def test_plateau_decays_after_checks_without_improvement(tmp_path: Path) -> None:
    scripted = Scripted([1.0, 0.5, 0.5, 0.5, 0.4])
    torch.manual_seed(0)
    result = fit(
        nn.Linear(3, 1),
        _regression(),
        loss=scripted,
        val_data=[(torch.zeros(1, 3), torch.zeros(1, 1))],
        schedule="plateau",
        gamma=0.5,
        plateau_patience=1,
        lr=0.1,
        max_epochs=5,
        **QUIET,
    )
    # checks: 1.0 best, 0.5 best, 0.5 bad (1 <= patience), 0.5 bad (2 > 1: decay), 0.4 best
    assert [h["lr"] for h in result.history] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05])


# ---------------------------------------------------------------------- NT-ASGD
def test_ntasgd_trigger_rule() -> None:
    rule = NTASGD(2)
    fired = [rule.check(v, nn.Linear(1, 1), e) for e, v in enumerate([5, 4, 3, 3.5, 3.2, 4.1])]
    # 3.5 and 3.2 are not worse than min(logs[:-2]) = 5 and 4; 4.1 > min(5, 4, 3) = 3 fires
    assert fired == [False, False, False, False, False, True]
    assert rule.switched_epoch == 5


def test_ntasgd_switches_to_averaging_and_ends_with_the_average() -> None:
    scripted = Scripted([1.0, 0.9, 1.1, 1.2, 1.3])
    snapshots: list[list[torch.Tensor]] = []
    model = nn.Linear(3, 1)

    def record(optimizer: Any, args: Any, kwargs: Any) -> None:
        snapshots.append([p.detach().clone() for p in model.parameters()])

    handle = register_optimizer_step_post_hook(record)
    try:
        result = fit(
            model,
            _regression(),
            loss=scripted,
            val_data=[(torch.zeros(1, 3), torch.zeros(1, 1))],
            optimizer="sgd",
            lr=0.05,
            nt_asgd=1,
            max_epochs=5,
            **QUIET,
        )
    finally:
        handle.remove()
    # check 3 (1.1 > min([1.0])) switches: epochs 4 and 5 average their 5 steps each
    assert result.nt_asgd_epoch == 3
    assert [h["averaging"] for h in result.history] == [False, False, False, True, True]
    assert len(snapshots) == 25  # 5 epochs of 5 batches
    assert scripted.evaluated[2][0] is model and scripted.evaluated[3][0] is not model
    # check 4 validated the mean of the weights after epoch 4's steps, not the trained weights
    at_check_4 = [torch.stack(g).mean(0) for g in zip(*snapshots[15:20], strict=True)]
    for p, expected in zip(scripted.evaluated[3][1], at_check_4, strict=True):
        torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-7)
    # and the model ends with the mean over both averaged epochs
    averaged = [torch.stack(group).mean(0) for group in zip(*snapshots[15:], strict=True)]
    for p, expected in zip(model.parameters(), averaged, strict=True):
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)


def test_early_stopping_stops_after_patience_checks() -> None:
    scripted = Scripted([1.0, 0.5, 0.6, 0.55, 0.7, 0.1])
    result = fit(
        nn.Linear(3, 1),
        _regression(),
        loss=scripted,
        val_data=[(torch.zeros(1, 3), torch.zeros(1, 1))],
        early_stopping=3,
        max_epochs=10,
        **QUIET,
    )
    assert result.stopped == "early_stopping"
    assert result.epochs == 5
    assert result.best_val_loss == 0.5


def test_restore_best_ends_with_the_weights_of_the_best_check(tmp_path: Path) -> None:
    # checks: 1.0, 0.4 (best, epoch 2), 0.6, 0.5: the model must end with epoch 2's weights
    scripted = Scripted([1.0, 0.4, 0.6, 0.5])
    model = nn.Linear(3, 1)
    val = [(torch.zeros(1, 3), torch.zeros(1, 1))]
    result = fit(
        model, _regression(), loss=scripted, val_data=val, restore_best=True, max_epochs=4,
        out=tmp_path, **QUIET,
    )  # fmt: skip
    assert result.best_epoch == 2 and result.restored and result.stopped == "max_epochs"
    at_best = scripted.evaluated[1][1]
    assert not torch.equal(scripted.evaluated[3][1][0], at_best[0])  # training moved on
    for p, expected in zip(model.parameters(), at_best, strict=True):
        assert torch.equal(p.detach(), expected)
    saved, meta = load_safetensors(tmp_path / "best.safetensors")
    assert meta["epoch"] == "2" and float(meta["val_loss"]) == pytest.approx(0.4)
    assert torch.equal(saved["weight"], at_best[0])
    # without restore_best the model keeps its last weights, and best_epoch is still reported
    scripted = Scripted([1.0, 0.4, 0.6, 0.5])
    last = fit(nn.Linear(3, 1), _regression(), loss=scripted, val_data=val, max_epochs=4, **QUIET)
    assert last.best_epoch == 2 and not last.restored


def test_restore_best_survives_a_resume(tmp_path: Path) -> None:
    val = [(torch.zeros(1, 3), torch.zeros(1, 1))]
    scripted = Scripted([1.0, 0.4, 0.6])
    torch.manual_seed(0)
    first = fit(
        nn.Linear(3, 1), _regression(), loss=scripted, val_data=val, restore_best=True,
        max_epochs=3, out=tmp_path, **QUIET,
    )  # fmt: skip
    assert first.best_epoch == 2
    at_best = scripted.evaluated[1][1]
    # resumed for two more epochs whose checks are worse: the weights of epoch 2 come back
    # from DIR/best.safetensors, though this process never held them in memory
    later = Scripted([0.7, 0.8])
    model = nn.Linear(3, 1)
    resumed = fit(
        model, _regression(), loss=later, val_data=val, restore_best=True, max_epochs=5,
        out=tmp_path, resume=True, **QUIET,
    )  # fmt: skip
    assert resumed.restored and resumed.best_epoch == 2 and resumed.epochs == 5
    for p, expected in zip(model.parameters(), at_best, strict=True):
        assert torch.equal(p.detach(), expected)


def test_options_that_need_validation_data_are_refused_without_it() -> None:
    for option, value in (("nt_asgd", 3), ("early_stopping", 2)):
        kwargs = {option: value, "optimizer": "sgd"}
        with pytest.raises(ValueError, match=rf"{option} needs val_data"):
            fit(nn.Linear(3, 1), _regression(), loss=_mse, **kwargs)
    with pytest.raises(ValueError, match=r"schedule='plateau' needs val_data"):
        fit(nn.Linear(3, 1), _regression(), loss=_mse, schedule="plateau")
    with pytest.raises(ValueError, match=r"restore_best needs val_data"):
        fit(nn.Linear(3, 1), _regression(), loss=_mse, restore_best=True)


# ---------------------------------------------------------------------- precision, seeds, logs
class AutocastProbe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = lstmkit.LSTM(3, 8, batch_first=True)
        self.head = nn.Linear(8, 1)
        self.seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.rnn(x)[0][:, -1])
        self.seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
        return out


def test_bf16_autocast_runs_on_cpu() -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 5, 3)
    data = DataLoader(TensorDataset(x, x.sum((1, 2)).unsqueeze(1)), batch_size=8)
    model = AutocastProbe()
    result = fit(
        model,
        data,
        loss=lambda m, b: F.mse_loss(m(b[0]).float(), b[1]),
        val_data=data,
        precision="bf16",
        max_epochs=2,
        **QUIET,
    )
    assert model.seen and all(seen == (True, torch.bfloat16) for seen in model.seen)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert math.isfinite(result.history[-1]["val_loss"])


def _seeded_run(seed: int, **options: Any) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.3), nn.Linear(8, 1))
    fit(model, _regression(), loss=_mse, seed=seed, max_epochs=2, **QUIET, **options)
    return [p.detach() for p in model.parameters()]


def test_same_seed_same_weights_in_deterministic_mode() -> None:
    a = _seeded_run(7, deterministic=True)
    b = _seeded_run(7, deterministic=True)
    c = _seeded_run(8, deterministic=True)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run


def test_epoch_sampler_shards_one_order_across_processes() -> None:
    one = EpochSampler(10, shuffle=True, seed=3, rank=0, world_size=1, pad=True)
    two = [EpochSampler(10, shuffle=True, seed=3, rank=r, world_size=2, pad=True) for r in (0, 1)]
    order = list(one)
    assert sorted(order) == list(range(10))
    assert list(two[0]) == order[0::2] and list(two[1]) == order[1::2]
    one.set_epoch(1)
    assert list(one) != order  # a new order every epoch, fixed by (seed, epoch)
    one.set_epoch(1, start=4)
    assert len(one) == 6
    three = EpochSampler(10, shuffle=False, seed=0, rank=2, world_size=3, pad=True)
    assert list(three) == [2, 5, 8, 1]  # 0..9 padded with 0, 1: every process gets 4


def test_logs_csv_and_tensorboard(tmp_path: Path) -> None:
    torch.manual_seed(0)
    fit(
        nn.Linear(3, 1),
        _regression(),
        loss=_mse,
        val_data=_regression(),
        max_epochs=2,
        log_every=2,
        clip_norm=10.0,
        out=tmp_path,
        progress=False,
    )
    rows = _read_log(tmp_path / "log.csv")
    assert list(rows[0]) == [
        "step",
        "epoch",
        "batch",
        "time",
        "train_loss",
        "lr",
        "grad_norm",
        "val_loss",
    ]
    train = [r for r in rows if r["train_loss"]]
    val = [r for r in rows if r["val_loss"]]
    assert [int(r["step"]) for r in train] == [2, 4, 6, 8, 10]
    assert all(float(r["grad_norm"]) > 0 for r in train)
    assert [int(r["step"]) for r in val] == [5, 10]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_config_errors_name_the_option() -> None:
    with pytest.raises(ValueError, match=r"lr must be a positive float, got -1"):
        TrainConfig(lr=-1)
    with pytest.raises(TypeError, match=r"max_epochs must be an int, got 2.5 \(float\)"):
        TrainConfig(max_epochs=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"clip_norm and clip_value cannot both be set"):
        TrainConfig(clip_norm=1.0, clip_value=1.0)
    with pytest.raises(ValueError, match=r"nt_asgd .* needs optimizer='sgd', got optimizer='adam'"):
        TrainConfig(nt_asgd=5)
    with pytest.raises(
        ValueError,
        match=r"schedule must be one of 'none', 'plateau', 'step', 'cosine', got 'linear'",
    ):
        TrainConfig(schedule="linear")
    with pytest.raises(TypeError, match=r"unknown training option\(s\) 'learning_rate'"):
        TrainConfig().replace(learning_rate=0.1)
    with pytest.raises(TypeError, match=r"loss must be a callable loss\(model, batch\) or a TBPTT"):
        fit(nn.Linear(1, 1), [], loss=None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- DDP
def _train_cli(out: Path, *extra: str) -> list[str]:
    return [
        "train", "adding", "--out", str(out), "--seed", "0", "--max-epochs", "2",
        "--n-train", "128", "--n-val", "32", "--seq-len", "6", "--hidden-size", "8",
        "--log-every", "1", "--no-progress", "--no-tensorboard", "--lr", "0.01", *extra,
    ]  # fmt: skip


def test_two_gloo_processes_match_one_process_with_the_doubled_batch(tmp_path: Path) -> None:
    from lstmkit.cli import main

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "lstmkit",
            *_train_cli(tmp_path / "ddp", "--devices", "2", "--batch-size", "8"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert main(_train_cli(tmp_path / "one", "--devices", "1", "--batch-size", "16")) == 0

    two_log, one_log = (
        _read_log(tmp_path / "ddp" / "log.csv"),
        _read_log(tmp_path / "one" / "log.csv"),
    )
    assert len(two_log) == len(one_log) == 2 * 8 + 2
    for a, b in zip(two_log, one_log, strict=True):
        assert a["step"] == b["step"]
        key = "train_loss" if a["train_loss"] else "val_loss"
        assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-6)


def test_max_time_stops_with_a_checkpoint_and_resume_continues(tmp_path: Path) -> None:
    torch.manual_seed(0)
    result = fit(nn.Linear(3, 1), _regression(), loss=_mse, max_time=1e-9, out=tmp_path, **QUIET)
    assert result.stopped == "max_time" and result.steps == 1 and result.epochs == 0
    updates: list[int] = []

    def counted(model: nn.Module, batch: Any) -> torch.Tensor:
        if torch.is_grad_enabled():
            updates.append(1)
        return _mse(model, batch)

    resumed = fit(
        nn.Linear(3, 1), _regression(), loss=counted, max_time=60.0, max_epochs=2, out=tmp_path,
        resume=True, **QUIET,
    )  # fmt: skip
    assert resumed.stopped == "max_epochs" and resumed.steps == 10
    assert len(updates) == 9  # it continued after the checkpointed update, not from the start
