"""A short, real tour of the layers: torch parity, lengths, and the adding problem.

Everything printed is measured while it runs; nothing is canned. ``lstmkit demo`` calls
:func:`run`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import GRU, LSTM, RNN, _checks
from .data.synthetic import ADDING_BASELINE_MSE, adding_problem


def parity_with_torch(seed: int) -> dict[str, float]:
    """Load a torch.nn.LSTM's weights into lstmkit and compare outputs and gradients."""
    torch.manual_seed(seed)
    ref = nn.LSTM(16, 32, num_layers=2, bidirectional=True, proj_size=8)
    ours = LSTM.from_torch(ref)
    x = torch.randn(20, 4, 16)
    lengths = torch.tensor([20, 13, 7, 1])
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    y_ref, _ = nn.utils.rnn.pad_packed_sequence(ref(packed)[0])
    y_ours, _ = ours(x, lengths=lengths)
    y_ref.square().sum().backward()
    y_ours.square().sum().backward()
    grad_diff = max(
        (a.grad - b.grad).abs().max().item()
        for a, b in zip(ref.parameters(), ours.parameters(), strict=True)
    )
    return {"output": (y_ref - y_ours).abs().max().item(), "gradient": grad_diff}


def train_adding(
    model: nn.Module,
    *,
    T: int,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    progress: Callable[[int, float], None] | None = None,
) -> float:
    """Train ``model`` (a recurrent layer of hidden/output size ``model.output_size``) on the
    adding problem at length ``T``; return the test MSE on 1000 fresh sequences."""
    torch.manual_seed(seed)
    head = nn.Linear(model.output_size, 1)  # type: ignore[arg-type]
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    data = torch.Generator().manual_seed(seed)
    for step in range(steps):
        x, y = adding_problem(batch, T, generator=data)
        out, _ = model(x)
        loss = F.mse_loss(head(out[-1]).squeeze(-1), y)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if progress is not None:
            progress(step, loss.item())
    model.eval()
    with torch.no_grad():
        x, y = adding_problem(1000, T, generator=torch.Generator().manual_seed(seed + 1))
        return F.mse_loss(head(model(x)[0][-1]).squeeze(-1), y).item()


def run(
    *,
    steps: int = 1200,
    T: int = 50,
    hidden: int = 64,
    seed: int = 0,
    echo: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Run the tour and return every measured figure."""
    steps = _checks.positive_int("steps", steps)
    T = _checks.positive_int("T", T)
    hidden = _checks.positive_int("hidden", hidden)
    results: dict[str, Any] = {}

    echo("1. Drop-in for torch.nn: a 2-layer bidirectional LSTM with proj_size, weights loaded")
    echo("   from torch.nn.LSTM, run on 4 sequences of lengths 20, 13, 7, 1")
    diff = parity_with_torch(seed)
    results["parity"] = diff
    echo(
        f"   max |output difference| {diff['output']:.2e}, "
        f"max |gradient difference| {diff['gradient']:.2e}"
    )

    echo("2. Lengths without packing, zero lengths allowed (torch.nn rejects them)")
    lstm = LSTM(3, 5)
    h0 = torch.randn(1, 2, 5), torch.randn(1, 2, 5)
    _, (h, c) = lstm(torch.randn(4, 2, 3), h0, lengths=[4, 0])
    same = torch.equal(h[:, 1], h0[0][:, 1]) and torch.equal(c[:, 1], h0[1][:, 1])
    results["zero_length_keeps_state"] = same
    echo(f"   a zero-length sequence returns its initial state unchanged: {same}")

    echo(
        f"3. The adding problem at T={T} (predicting the mean gives MSE {ADDING_BASELINE_MSE:.3f}):"
    )
    echo(f"   {steps} Adam steps of batch 64, hidden {hidden}, gradient clipping at norm 1")
    models: dict[str, Callable[[], nn.Module]] = {
        "RNN (tanh)": lambda: RNN(2, hidden),
        "GRU": lambda: GRU(2, hidden),
        "LSTM": lambda: LSTM(2, hidden),
        "LSTM, layer_norm + zoneout 0.05": lambda: LSTM(2, hidden, layer_norm=True, zoneout=0.05),
    }
    results["adding"] = {}
    for name, make in models.items():
        start = time.perf_counter()
        last = [0.0]

        def progress(step: int, loss: float, name: str = name, last: list[float] = last) -> None:
            last[0] = loss
            if (step + 1) % max(steps // 5, 1) == 0:
                echo(f"   {name:32s} step {step + 1:5d}/{steps}  train MSE {loss:.4f}")

        mse = train_adding(
            make(), T=T, steps=steps, batch=64, lr=3e-3, seed=seed, progress=progress
        )
        elapsed = time.perf_counter() - start
        results["adding"][name] = {"test_mse": mse, "seconds": elapsed}
        echo(f"   {name:32s} test MSE {mse:.4f} after {elapsed:.0f} s")
    return results
