"""Gradient flow over distance: vanilla RNN, GRU, LSTM, and an LSTM whose forget gate is a
constant (1 or 0.5).

The claim (Hochreiter 1991; Bengio et al. 1994; Hochreiter & Schmidhuber 1997): in a vanilla
RNN the gradient of a loss at the last step with respect to the state k steps earlier shrinks
geometrically in k, while the LSTM's additive cell-state path, c_t = f_t * c_{t-1} + i_t * g_t,
carries it with the factor f_t per step, so that a forget gate near 1 keeps it and a forget gate
of 0.5 loses it as 0.5^k.

For every model the script measures ||dL/dh_t|| (and ||dL/dc_t|| for the LSTMs) with
:func:`lstmkit.diagnostics.gradient_norms` (loss: the sum of the last step's output) on
adding-problem inputs, once at initialisation and, in the full mode, again after training every
model on the adding problem for the same number of updates.

The constant forget gate: :func:`fix_forget_gate` zeroes the forget-gate rows of ``weight_ih``
and ``weight_hh``, sets the forget pre-activation to a constant through ``bias_ih`` (40 for
f = 1: sigmoid(40) rounds to exactly 1.0 in float32; 0 for f = 0.5) and registers gradient
hooks that zero those rows' gradients, so that training never moves them. The script checks on
a trace of the gates that f_t equals the constant at every step.

    python experiments/claims_gradient_flow.py [--quick] [--out DIR]
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from _common import Experiment, make_parser, train
from claims_long_memory import Readout, adding_batches, adding_loss
from torch import Tensor, nn

from lstmkit import GRU, LSTM, RNN
from lstmkit.data.synthetic import ADDING_BASELINE_MSE, adding_problem
from lstmkit.diagnostics import GradientNorms, gradient_norms, plot_gradient_norms, trace

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NAME = "claims_gradient_flow"
#: sigmoid(40) is exactly 1.0 in float32 (1 - 4e-18 rounds up).
SATURATED = 40.0


def fix_forget_gate(lstm: LSTM, value: float) -> LSTM:
    """Make the forget gate of every layer of ``lstm`` the constant ``value`` (1.0 or 0.5 here):
    no input or recurrent weight reaches it, its bias is the constant's logit, and gradient
    hooks keep training from changing any of that."""
    if value not in (0.5, 1.0):
        raise ValueError(f"value must be 1.0 or 0.5, got {value!r}")
    H = lstm.hidden_size
    rows = slice(H, 2 * H)  # gate order i, f, g, o as torch.nn
    logit = SATURATED if value == 1.0 else 0.0

    def zero_rows(grad: Tensor) -> Tensor:
        grad = grad.clone()
        grad[rows] = 0.0
        return grad

    with torch.no_grad():
        for name, param in lstm.named_parameters():
            if not name.startswith(("weight_ih", "weight_hh", "bias_ih", "bias_hh")):
                continue
            param[rows] = logit if name.startswith("bias_ih") else 0.0
            param.register_hook(zero_rows)
    return lstm


def models(hidden: int) -> dict[str, Callable[[], nn.Module]]:
    """The compared layers, one input of 2 features (value, marker), reference backend (the
    diagnostics unroll the cells step by step in any case)."""
    return {
        "RNN (torch init)": lambda: RNN(2, hidden, init="torch"),
        "RNN (orthogonal init)": lambda: RNN(2, hidden),
        "GRU": lambda: GRU(2, hidden),
        "LSTM (forget bias 1)": lambda: LSTM(2, hidden),
        "LSTM (torch init)": lambda: LSTM(2, hidden, init="torch"),
        "LSTM, f fixed at 1": lambda: fix_forget_gate(LSTM(2, hidden), 1.0),
        "LSTM, f fixed at 0.5": lambda: fix_forget_gate(LSTM(2, hidden), 0.5),
    }


def check_forget_constant(model: nn.Module, x: Tensor, value: float) -> None:
    """Raise if the traced forget gate is not exactly ``value`` at every step."""
    gates = trace(model.eval(), x).gates["f"]
    if not torch.equal(gates, torch.full_like(gates, value)):
        raise RuntimeError(
            f"the forget gate should be exactly {value} everywhere, ranges "
            f"[{float(gates.min())}, {float(gates.max())}]"
        )


def profile(norms: GradientNorms, distances: list[int]) -> dict[str, Any]:
    """Mean norms at the given distances from the last step, and the mean decay factor per
    step between distances 10 and 50 ((n50 / n10) ** (1/40))."""
    out: dict[str, Any] = {}
    states = ["h"] + (["c"] if norms.c is not None else [])
    for state in states:
        _, mean = norms.profile(state=state)
        values = {str(d): float(mean[d]) for d in distances if d < mean.numel()}
        out[state] = values
        if mean.numel() > 50 and float(mean[10]) > 0:
            ratio = float(mean[50]) / float(mean[10])
            out[f"{state}_decay_per_step"] = ratio ** (1 / 40) if ratio > 0 else 0.0
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = make_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument(
        "--train-steps", type=int, default=None, help="Adam updates per model (0: init only)"
    )
    args = parser.parse_args(argv)
    q = args.quick
    if args.train_steps is not None and args.train_steps < 0:
        raise ValueError(f"--train-steps must be a non-negative int, got {args.train_steps}")
    settings: dict[str, Any] = {
        "hidden": 32 if q else 64,
        "T_measure": 80 if q else 200,
        "batch_measure": 8 if q else 64,
        "T_train": 100,
        "train_steps": args.train_steps if args.train_steps is not None else (0 if q else 1500),
        "batch_train": 64,
        "lr": 3e-3,
    }
    exp = Experiment(NAME, args, settings)
    distances = [0, 10, 25, 50, 75, 100, 150, 199]
    x_measure, _ = adding_problem(
        settings["batch_measure"], settings["T_measure"], generator=exp.generator(1)
    )
    results: dict[str, Any] = {"init": {}, "trained": {}}
    curves: dict[str, GradientNorms] = {}
    trained_curves: dict[str, GradientNorms] = {}
    for index, (name, make) in enumerate(models(settings["hidden"]).items()):
        torch.manual_seed(exp.seed + 100 * index)
        model = make()
        if "fixed" in name:
            check_forget_constant(model, x_measure, 1.0 if "at 1" in name else 0.5)
        norms = gradient_norms(model.eval(), x_measure)
        curves[name] = norms
        results["init"][name] = profile(norms, distances)
        if settings["train_steps"]:
            curve, seconds = train(
                Readout(model, settings["hidden"], 1, last=True),
                adding_loss,
                adding_batches(settings["batch_train"], settings["T_train"], exp.generator(2)),
                steps=settings["train_steps"],
                lr=settings["lr"],
                record_every=50,
            )
            if "fixed" in name:
                check_forget_constant(model, x_measure, 1.0 if "at 1" in name else 0.5)
            trained = gradient_norms(model.eval(), x_measure)
            trained_curves[name] = trained
            results["trained"][name] = {
                **profile(trained, distances),
                "final_train_mse": curve[-1][1],
                "train_s": round(seconds, 1),
            }
    init = results["init"]
    rnn50 = init["RNN (torch init)"]["h"]["50"]
    results["claims"] = {
        "lstm_over_rnn_h_at_50": init["LSTM (forget bias 1)"]["h"]["50"] / rnn50,
        "lstm_f1_c_over_rnn_h_at_50": init["LSTM, f fixed at 1"]["c"]["50"] / rnn50,
        "lstm_f05_c_at_50": init["LSTM, f fixed at 0.5"]["c"]["50"],
        "half_to_the_50": 0.5**50,
        "adding_baseline_mse": ADDING_BASELINE_MSE,
    }
    fig = plot_gradient_norms(curves)
    fig.axes[0].set_title(f"gradient through time at initialisation, T={settings['T_measure']}")
    _legend_outside(fig)
    exp.save_figure(fig, "gradient_flow_init.png")
    if trained_curves:
        fig = plot_gradient_norms(trained_curves)
        fig.axes[0].set_title(
            f"after {settings['train_steps']} Adam steps on adding T={settings['T_train']}"
        )
        _legend_outside(fig)
        exp.save_figure(fig, "gradient_flow_trained.png")
    for block in (results["init"], results["trained"]):
        for entry in block.values():
            for state in ("h", "c"):
                if state in entry:
                    entry[state] = {k: _finite(v) for k, v in entry[state].items()}
    return exp.finish(results)


def _legend_outside(fig: Figure) -> None:
    """Seven models with two lines each: the legend goes to the right of the axes."""
    fig.axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.set_size_inches(10.0, 4.6)


def _finite(value: float) -> float | None:
    """NaN (no sequence that long) as null in the JSON."""
    return None if math.isnan(value) else value


if __name__ == "__main__":
    main(sys.argv[1:])
