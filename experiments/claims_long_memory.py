"""Long memory: the adding problem and copy memory at growing lengths, for a vanilla RNN, a GRU
and LSTMs with forget-gate bias 0, bias 1 and chrono initialisation.

The claim: a gated recurrent layer bridges hundreds of steps that a vanilla RNN cannot, and how
the forget gate starts matters (Gers et al. 2000: bias 1; Tallec & Ollivier 2018: chrono init,
biases drawn so that the gates' time constants span 1..T). Anchors: predicting the mean of the
adding target gives MSE 1/6 = 0.167; the memoryless strategy on copy memory (blanks, then uniform
symbols) gives cross-entropy 10 ln 8 / (T + 20); Bai et al. 2018 report an LSTM failing the
adding problem at T = 600 (MSE 0.164) and copy memory at T = 1000; Hochreiter & Schmidhuber
1997 solved adding at T = 1000. Our target: an LSTM solves adding at T = 1000 (MSE < 0.01).

Every model gets the same budget of Adam updates on fresh batches and is scored on 1000 held-out
sequences drawn with another seed.

    python experiments/claims_long_memory.py [--quick] [--out DIR] [--adding-T 100 200 ...]
        [--copy-T 100 200 ...] [--models rnn gru lstm-bias0 lstm-bias1 lstm-chrono] [--steps N]
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from _common import Experiment, add_models_option, make_parser, new_figure, train
from torch import Tensor, nn

from lstmkit import GRU, LSTM, RNN
from lstmkit.data.synthetic import (
    ADDING_BASELINE_MSE,
    adding_problem,
    copy_memory,
    copy_memory_baseline,
)

NAME = "claims_long_memory"
#: ``--models`` keys, in the order of :func:`layers` (the order fixes each model's seed)
MODEL_KEYS = {
    "rnn": "RNN",
    "gru": "GRU",
    "lstm-bias0": "LSTM, forget bias 0",
    "lstm-bias1": "LSTM, forget bias 1",
    "lstm-chrono": "LSTM, chrono init",
}
N_SYMBOLS, LENGTH = 8, 10  # the copy task of Arjovsky et al. 2016 and Bai et al. 2018
SOLVED_MSE = 0.01
#: the (task, T) jobs of a full run, in order; a job's position here fixes its seeds
FULL_JOBS = (
    ("adding", 100),
    ("adding", 200),
    ("adding", 400),
    ("adding", 1000),
    ("copy", 100),
    ("copy", 200),
)
QUICK_JOBS = (("adding", 20),)


def job_id(task: str, T: int, quick: bool) -> int:
    """The number that seeds the models and training batches of the job (task, T): its position
    in the mode's default run, so that a run of some lengths (``--adding-T 1000 --copy-T``)
    trains the very models the full run trains; other lengths get a number of their own."""
    default = QUICK_JOBS if quick else FULL_JOBS
    if (task, T) in default:
        return default.index((task, T))
    return 10 + T + (10**7 if task == "copy" else 0)


def layers(hidden: int, features: int, horizon: int) -> dict[str, Callable[[], nn.Module]]:
    """The compared layers; ``horizon`` (the whole sequence length) is chrono init's T_max."""
    return {
        "RNN": lambda: RNN(features, hidden),
        "GRU": lambda: GRU(features, hidden),
        "LSTM, forget bias 0": lambda: LSTM(features, hidden, forget_bias=0.0),
        "LSTM, forget bias 1": lambda: LSTM(features, hidden, forget_bias=1.0),
        "LSTM, chrono init": lambda: LSTM(features, hidden, chrono_init=float(horizon)),
    }


class Readout(nn.Module):
    """A recurrent layer and a linear head; ``last=True`` reads only the final step."""

    def __init__(self, rnn: nn.Module, hidden: int, outputs: int, last: bool) -> None:
        super().__init__()
        self.rnn, self.head, self.last = rnn, nn.Linear(hidden, outputs), last

    def forward(self, x: Tensor) -> Tensor:
        out = self.rnn(x)[0]
        return self.head(out[-1] if self.last else out)


def adding_batches(batch: int, T: int, gen: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    while True:
        yield adding_problem(batch, T, generator=gen)


def copy_batches(batch: int, T: int, gen: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    while True:
        x, y = copy_memory(batch, T, n_symbols=N_SYMBOLS, length=LENGTH, generator=gen)
        yield F.one_hot(x, N_SYMBOLS + 2).float(), y


def batch_stream(
    task: str, batch: int, T: int, gen: torch.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless training batches of ``task`` (``'adding'`` or ``'copy'``)."""
    return adding_batches(batch, T, gen) if task == "adding" else copy_batches(batch, T, gen)


def adding_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return F.mse_loss(model(x).squeeze(-1), y)


def copy_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


@torch.no_grad()
def score(task: str, model: nn.Module, batch: tuple[Tensor, Tensor]) -> dict[str, float]:
    model.eval()
    x, y = batch
    if task == "adding":
        return {"test_mse": float(F.mse_loss(model(x).squeeze(-1), y))}
    logits = model(x)
    recalled = logits[-LENGTH:].argmax(-1) == y[-LENGTH:]
    return {
        "test_ce": float(F.cross_entropy(logits.flatten(0, 1), y.flatten())),
        "recall_accuracy": float(recalled.float().mean()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = make_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--adding-T", type=int, nargs="+", default=None, metavar="T")
    parser.add_argument("--copy-T", type=int, nargs="*", default=None, metavar="T")
    parser.add_argument("--steps", type=int, default=None, help="Adam updates per model")
    add_models_option(parser, MODEL_KEYS, "each keeps the seed it has in the full run")
    args = parser.parse_args(argv)
    q = args.quick
    settings: dict[str, Any] = {
        "adding_T": args.adding_T
        or [T for task, T in (QUICK_JOBS if q else FULL_JOBS) if task == "adding"],
        # copy memory needs thousands of updates before any model leaves the memoryless
        # plateau: the quick mode runs the adding problem only
        "copy_T": args.copy_T
        if args.copy_T is not None
        else [T for task, T in (QUICK_JOBS if q else FULL_JOBS) if task == "copy"],
        "hidden": 24 if q else 128,
        "batch": 32 if q else 64,
        "steps": args.steps or (200 if q else 4000),
        "lr": 1e-2 if q else 1e-3,
        "clip": 1.0,
        "n_test": 500 if q else 1000,
        "models": [MODEL_KEYS[key] for key in MODEL_KEYS if key in args.models],
    }
    exp = Experiment(NAME, args, settings)
    results: dict[str, Any] = {"adding": {}, "copy": {}}
    curves: dict[tuple[str, int], dict[str, list[tuple[int, float]]]] = {}
    jobs = [("adding", T) for T in settings["adding_T"]] + [("copy", T) for T in settings["copy_T"]]
    for task, T in jobs:
        job = job_id(task, T, q)
        if task == "adding":
            features, outputs, horizon = 2, 1, T
            test = adding_problem(settings["n_test"], T, generator=exp.generator(10_000 + T))
            loss_fn, baseline = adding_loss, ADDING_BASELINE_MSE
        else:
            features, outputs, horizon = N_SYMBOLS + 2, N_SYMBOLS + 1, T + 2 * LENGTH
            test = next(copy_batches(settings["n_test"], T, exp.generator(20_000 + T)))
            loss_fn = copy_loss
            baseline = copy_memory_baseline(T, n_symbols=N_SYMBOLS, length=LENGTH)
        entry: dict[str, Any] = {"baseline": baseline}
        curves[(task, T)] = {}
        for index, (name, make) in enumerate(layers(settings["hidden"], features, horizon).items()):
            if name not in settings["models"]:
                continue
            torch.manual_seed(exp.seed + 1000 * job + index)
            model = Readout(make(), settings["hidden"], outputs, last=task == "adding")
            curve, seconds = train(
                model,
                loss_fn,
                # every model sees the same training batches
                batch_stream(task, settings["batch"], T, exp.generator(10 * job + 1)),
                steps=settings["steps"],
                lr=settings["lr"],
                clip=settings["clip"],
                record_every=max(settings["steps"] // 50, 1),
            )
            scores = score(task, model, test)
            if task == "adding":
                scores["solved"] = scores["test_mse"] < SOLVED_MSE
            entry[name] = {**scores, "train_s": round(seconds, 1)}
            curves[(task, T)][name] = curve
        results[task][str(T)] = entry
    _plot(exp, curves, settings)
    return exp.finish(results)


def _plot(
    exp: Experiment,
    curves: dict[tuple[str, int], dict[str, list[tuple[int, float]]]],
    settings: dict[str, Any],
) -> None:
    keys = list(curves)
    fig = new_figure(4.2 * len(keys), 3.4)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, (task, T) in zip(axes, keys, strict=True):
        for name, curve in curves[(task, T)].items():
            ax.plot([s for s, _ in curve], [v for _, v in curve], label=name)
        if task == "adding":
            ax.axhline(ADDING_BASELINE_MSE, color="k", linestyle="--", label="memoryless")
            ax.set_ylabel("train MSE")
        else:
            base = copy_memory_baseline(T, n_symbols=N_SYMBOLS, length=LENGTH)
            ax.axhline(base, color="k", linestyle="--", label="memoryless")
            ax.set_ylabel("train cross-entropy")
        ax.set_yscale("log")
        ax.set_xlabel("Adam step")
        ax.set_title(f"{task}, T={T}")
    axes[0].legend(fontsize=7)
    exp.save_figure(fig, "long_memory_curves.png")


if __name__ == "__main__":
    main(sys.argv[1:])
