"""GRU vs LSTM: parameters, speed, and accuracy on two tasks.

The claims (Cho et al. 2014; Chung et al. 2014; Jozefowicz et al. 2015; Greff et al. 2017): a
GRU has three gate blocks where an LSTM has four, so 25% fewer parameters at the same hidden
size (exactly 3/4 with torch's two bias vectors) and a proportionally cheaper step; on most
tasks neither wins consistently.

Parameter counts are read from the modules themselves. Speed is the median wall time of a
forward and backward pass over a fixed batch (the ``auto`` backend, as a user gets it).
Accuracy: the adding problem and copy memory, every model with the same budget of Adam
updates; the GRU is run at the LSTM's hidden size and at the hidden size that matches the
LSTM's parameter count.

    python experiments/claims_gru_vs_lstm.py [--quick] [--out DIR]
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch
from _common import Experiment, count_parameters, make_parser, new_figure, train
from claims_long_memory import (
    LENGTH,
    N_SYMBOLS,
    Readout,
    adding_batches,
    adding_loss,
    copy_batches,
    copy_loss,
    score,
)
from torch import nn

from lstmkit import GRU, LSTM
from lstmkit.data.synthetic import ADDING_BASELINE_MSE, adding_problem, copy_memory_baseline

NAME = "claims_gru_vs_lstm"
SIZES = [(2, 64), (32, 128), (128, 256), (512, 512)]


def matched_gru_hidden(input_size: int, lstm_hidden: int) -> int:
    """The GRU hidden size whose parameter count is closest to the LSTM's: solve
    3(IH + H^2 + 2H) = 4(I h + h^2 + 2h) for H (the positive root, rounded)."""
    target = 4 * (input_size * lstm_hidden + lstm_hidden**2 + 2 * lstm_hidden) / 3
    b = input_size + 2
    return round((-b + math.sqrt(b * b + 4 * target)) / 2)


def time_step(make: Callable[[], nn.Module], T: int, B: int, I: int, repeats: int) -> float:
    """Median milliseconds of one forward + backward pass on a ``(T, B, I)`` batch."""
    model = make()
    x = torch.randn(T, B, I)
    times = []
    for r in range(repeats + 2):
        start = time.perf_counter()
        out, _ = model(x)
        out.sum().backward()
        if r >= 2:  # the first passes warm up allocators and kernel dispatch
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = make_parser(NAME, __doc__.split("\n\n")[0])
    args = parser.parse_args(argv)
    q = args.quick
    settings: dict[str, Any] = {
        "speed": {"T": 20, "B": 8, "I": 32, "H": [32], "repeats": 3}
        if q
        else {"T": 100, "B": 32, "I": 32, "H": [64, 128, 256, 512], "repeats": 20},
        "hidden": 24 if q else 128,
        "adding_T": 20 if q else 100,
        "copy_T": None if q else 50,
        "batch": 32 if q else 64,
        "steps": 200 if q else 3000,
        "lr": 1e-2 if q else 1e-3,
    }
    exp = Experiment(NAME, args, settings)
    results: dict[str, Any] = {"parameters": {}, "speed_ms": {}, "tasks": {}}
    for I, H in SIZES:
        lstm, gru = count_parameters(LSTM(I, H)), count_parameters(GRU(I, H))
        results["parameters"][f"I={I},H={H}"] = {"lstm": lstm, "gru": gru, "ratio": gru / lstm}
    sp = settings["speed"]
    for H in sp["H"]:
        torch.manual_seed(exp.seed)
        lstm_ms = time_step(partial(LSTM, sp["I"], H), sp["T"], sp["B"], sp["I"], sp["repeats"])
        gru_ms = time_step(partial(GRU, sp["I"], H), sp["T"], sp["B"], sp["I"], sp["repeats"])
        results["speed_ms"][f"H={H}"] = {
            "lstm": round(lstm_ms, 3),
            "gru": round(gru_ms, 3),
            "gru_over_lstm": round(gru_ms / lstm_ms, 3),
        }
    H = settings["hidden"]
    tasks: list[tuple[str, int, int, int]] = [("adding", settings["adding_T"], 2, 1)]
    if settings["copy_T"] is not None:
        tasks.append(("copy", settings["copy_T"], N_SYMBOLS + 2, N_SYMBOLS + 1))
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for job, (task, T, features, outputs) in enumerate(tasks):
        H_gru = matched_gru_hidden(features, H)
        variants: dict[str, tuple[Callable[[], nn.Module], int]] = {
            f"LSTM (H={H})": (partial(LSTM, features, H), H),
            f"GRU (H={H})": (partial(GRU, features, H), H),
            f"GRU (H={H_gru}, LSTM's parameter count)": (
                partial(GRU, features, H_gru),
                H_gru,
            ),
        }
        if task == "adding":
            test = adding_problem(1000, T, generator=exp.generator(10_000 + T))
            baseline = ADDING_BASELINE_MSE
        else:
            test = next(copy_batches(1000, T, exp.generator(20_000 + T)))
            baseline = copy_memory_baseline(T, n_symbols=N_SYMBOLS, length=LENGTH)
        entry: dict[str, Any] = {"T": T, "baseline": baseline}
        curves[f"{task} T={T}"] = {}
        for index, (name, (make, hidden)) in enumerate(variants.items()):
            torch.manual_seed(exp.seed + 100 * job + index)
            model = Readout(make(), hidden, outputs, last=task == "adding")
            batches: Iterator[Any] = (
                adding_batches(settings["batch"], T, exp.generator(job + 1))
                if task == "adding"
                else copy_batches(settings["batch"], T, exp.generator(job + 1))
            )
            curve, seconds = train(
                model,
                adding_loss if task == "adding" else copy_loss,
                batches,
                steps=settings["steps"],
                lr=settings["lr"],
                record_every=max(settings["steps"] // 50, 1),
            )
            entry[name] = {
                **score(task, model, test),
                "parameters": count_parameters(model.rnn),
                "train_s": round(seconds, 1),
            }
            curves[f"{task} T={T}"][name] = curve
        results["tasks"][task] = entry
    _plot(exp, results, curves)
    return exp.finish(results)


def _plot(
    exp: Experiment, results: dict[str, Any], curves: dict[str, dict[str, list[tuple[int, float]]]]
) -> None:
    fig = new_figure(4.2 * (1 + len(curves)), 3.4)
    axes = fig.subplots(1, 1 + len(curves), squeeze=False)[0]
    speed = results["speed_ms"]
    labels = list(speed)
    xs = range(len(labels))
    axes[0].bar([x - 0.2 for x in xs], [speed[k]["lstm"] for k in labels], 0.4, label="LSTM")
    axes[0].bar([x + 0.2 for x in xs], [speed[k]["gru"] for k in labels], 0.4, label="GRU")
    axes[0].set_xticks(list(xs), labels)
    axes[0].set_ylabel("forward + backward (ms)")
    axes[0].set_title("speed at the same hidden size")
    axes[0].legend()
    for ax, (title, per_model) in zip(axes[1:], curves.items(), strict=True):
        for name, curve in per_model.items():
            ax.plot([s for s, _ in curve], [v for _, v in curve], label=name)
        ax.set_yscale("log")
        ax.set_xlabel("Adam step")
        ax.set_ylabel("train loss")
        ax.set_title(title)
        ax.legend(fontsize=7)
    exp.save_figure(fig, "gru_vs_lstm.png")


if __name__ == "__main__":
    main(sys.argv[1:])
