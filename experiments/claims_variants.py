"""Three LSTM variants against the plain LSTM, each on the task its claim is about.

* Bidirectional vs unidirectional (Schuster & Paliwal 1997; Graves & Schmidhuber 2005): when
  the label of step t depends on later input, only the bidirectional layer can see it. Task:
  label each step with the symbol ``DELAY`` steps ahead (8 symbols; chance accuracy 1/8). The
  bidirectional layer gets half the hidden size per direction, so both have about the same
  number of parameters.
* Peepholes vs none on a timing task (Gers, Schraudolph & Schmidhuber 2002): peepholes let the
  gates read the cell state, which helps to time an output precisely. Task ("generate a timed
  spike"): the input has one spike at a random step s in the first half; the target is 1 at
  step s + D and 0 elsewhere. Scored by the fraction of sequences whose largest output falls
  exactly on s + D.
* Layer normalisation vs none on convergence speed (Ba et al. 2016): layer norm makes the
  recurrent dynamics better conditioned, so the loss falls in fewer updates. Measured as the
  number of Adam steps until the training MSE on the adding problem falls below 0.05.

    python experiments/claims_variants.py [--quick] [--out DIR]
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from _common import Experiment, count_parameters, make_parser, new_figure, steps_to_reach, train
from claims_long_memory import Readout, adding_batches, adding_loss, score
from torch import Tensor, nn

from lstmkit import LSTM
from lstmkit.data.synthetic import adding_problem

NAME = "claims_variants"
N_SYMBOLS = 8
DELAY = 3
LN_THRESHOLD = 0.05


# ------------------------------------------------------------------------------ the tasks
def lookahead_batches(batch: int, T: int, gen: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """One-hot symbols ``(T, B, 8)``; target ``y[t] = symbol[t + DELAY]`` (-100, ignored, on the
    last ``DELAY`` steps where there is no such symbol)."""
    while True:
        symbols = torch.randint(0, N_SYMBOLS, (T, batch), generator=gen)
        y = torch.full_like(symbols, -100)
        y[:-DELAY] = symbols[DELAY:]
        yield F.one_hot(symbols, N_SYMBOLS).float(), y


def lookahead_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)


@torch.no_grad()
def lookahead_accuracy(model: nn.Module, batch: tuple[Tensor, Tensor]) -> float:
    model.eval()
    x, y = batch
    keep = y != -100
    return float((model(x).argmax(-1) == y)[keep].float().mean())


def spike_batches(
    batch: int, T: int, delay: int, gen: torch.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    """Input ``(T, B, 1)`` with one spike at s < T/2; target ``(T, B)`` with 1 at s + delay."""
    if T // 2 + delay >= T:
        raise ValueError(f"delay must be < T - T//2 = {T - T // 2}, got {delay}")
    while True:
        s = torch.randint(0, T // 2, (batch,), generator=gen)
        cols = torch.arange(batch)
        x = torch.zeros(T, batch, 1)
        x[s, cols, 0] = 1.0
        y = torch.zeros(T, batch)
        y[s + delay, cols] = 1.0
        yield x, y


def spike_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    # one positive step among T: weight it as much as all the negatives together
    weight = torch.tensor(float(y.shape[0] - 1))
    return F.binary_cross_entropy_with_logits(model(x).squeeze(-1), y, pos_weight=weight)


@torch.no_grad()
def spike_timing(model: nn.Module, batch: tuple[Tensor, Tensor]) -> dict[str, float]:
    model.eval()
    x, y = batch
    predicted = model(x).squeeze(-1).argmax(0)
    target = y.argmax(0)
    error = (predicted - target).abs().float()
    return {
        "exact_timing": float((error == 0).float().mean()),
        "mean_abs_error": float(error.mean()),
    }


# ------------------------------------------------------------------------------ the script
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = make_parser(NAME, __doc__.split("\n\n")[0])
    args = parser.parse_args(argv)
    q = args.quick
    settings: dict[str, Any] = {
        "bidirectional": {"T": 20, "hidden": 16, "steps": 100 if q else 1500, "batch": 32},
        "peephole": {
            "T": 20 if q else 100,
            "delay": 6 if q else 40,
            "hidden": 8 if q else 32,
            "steps": 60 if q else 3000,
            "batch": 32,
        },
        "layer_norm": {
            "T": 20 if q else 100,
            "hidden": 24 if q else 64,
            "steps": 150 if q else 3000,
        },
        "lr": 1e-2 if q else 3e-3,
    }
    exp = Experiment(NAME, args, settings)
    results: dict[str, Any] = {}
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    lr = settings["lr"]

    # -- bidirectional
    s = settings["bidirectional"]
    test = next(lookahead_batches(1000, s["T"], exp.generator(100)))
    entry: dict[str, Any] = {"chance": 1 / N_SYMBOLS, "delay": DELAY}
    curves["bidirectional"] = {}
    for name, directions in (("unidirectional", 1), ("bidirectional", 2)):
        torch.manual_seed(exp.seed)  # before the layer is built: its weights follow --seed
        # half the hidden size per direction: the same output width, no more parameters
        rnn = LSTM(N_SYMBOLS, s["hidden"] // directions, bidirectional=directions == 2)
        model = Readout(rnn, s["hidden"], N_SYMBOLS, last=False)
        curve, seconds = train(
            model,
            lookahead_loss,
            lookahead_batches(s["batch"], s["T"], exp.generator(1)),
            steps=s["steps"],
            lr=lr,
        )
        entry[name] = {
            "accuracy": lookahead_accuracy(model, test),
            "parameters": count_parameters(model),
            "train_s": round(seconds, 1),
        }
        curves["bidirectional"][name] = curve
    results["bidirectional"] = entry

    # -- peepholes
    s = settings["peephole"]
    test = next(spike_batches(1000, s["T"], s["delay"], exp.generator(200)))
    entry = {}
    curves["peephole"] = {}
    for name, peephole in [("no peepholes", False), ("peepholes", True)]:
        torch.manual_seed(exp.seed + 1)
        model = Readout(LSTM(1, s["hidden"], peephole=peephole), s["hidden"], 1, last=False)
        curve, seconds = train(
            model,
            spike_loss,
            spike_batches(s["batch"], s["T"], s["delay"], exp.generator(2)),
            steps=s["steps"],
            lr=lr,
        )
        entry[name] = {**spike_timing(model, test), "train_s": round(seconds, 1)}
        curves["peephole"][name] = curve
    results["peephole"] = entry

    # -- layer norm
    s = settings["layer_norm"]
    test = adding_problem(1000, s["T"], generator=exp.generator(300))
    entry = {"threshold_mse": LN_THRESHOLD}
    curves["layer_norm"] = {}
    for name, layer_norm in [("no layer norm", False), ("layer norm", True)]:
        torch.manual_seed(exp.seed + 2)
        model = Readout(LSTM(2, s["hidden"], layer_norm=layer_norm), s["hidden"], 1, last=True)
        curve, seconds = train(
            model,
            adding_loss,
            adding_batches(32, s["T"], exp.generator(3)),
            steps=s["steps"],
            lr=lr,
        )
        entry[name] = {
            **score("adding", model, test),
            "steps_to_threshold": steps_to_reach(curve, LN_THRESHOLD),
            "train_s": round(seconds, 1),
        }
        curves["layer_norm"][name] = curve
    results["layer_norm"] = entry

    fig = new_figure(13.0, 3.4)
    for ax, (title, per_model) in zip(fig.subplots(1, 3), curves.items(), strict=True):
        for name, curve in per_model.items():
            ax.plot([c[0] for c in curve], [c[1] for c in curve], label=name)
        ax.set_yscale("log")
        ax.set_xlabel("Adam step")
        ax.set_ylabel("train loss")
        ax.set_title(title)
        ax.legend(fontsize=8)
    exp.save_figure(fig, "variants.png")
    return exp.finish(results)


if __name__ == "__main__":
    main(sys.argv[1:])
