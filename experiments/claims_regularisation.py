"""Regularisation of a character LSTM language model: none vs dropout vs variational dropout vs
weight drop vs zoneout, under the same budget of updates.

The claim: a large recurrent LM over-fits its training text, and each of these regularisers
narrows the gap between training and held-out loss, which lowers held-out loss once the model
is big enough to over-fit (Zaremba et al. 2014: dropout between layers, never on the recurrent
connection; Gal & Ghahramani 2016: variational dropout, one mask per sequence, also on the
recurrent connection; Merity et al. 2018: DropConnect on the recurrent weights; Krueger et al.
2017: zoneout, units keep their previous value at random).

Each regulariser is one option: ``dropout`` of :class:`CharLM` (embedding and output, fresh
masks every step) and ``dropout=`` between the layers; ``input_dropout`` and
``recurrent_dropout``; ``weight_drop``; ``zoneout`` of :class:`lstmkit.LSTM`. All models are
scored in eval mode on the training text and on held-out text, in bits per character.

Corpus: Tiny Shakespeare (full mode, when the shared data folder has it), else this
repository's documentation.

    python experiments/claims_regularisation.py [--quick] [--out DIR]
        [--models none dropout variational weight-drop zoneout]

Every model starts from the same seed and sees the same training windows, so ``--models``
trains a subset exactly as the full run trains it: the full run (five 2 x 512 LSTMs, about an
hour each on one thread) can be made a piece at a time, and ``--combine DIR ...`` merges the
pieces' results into one summary and figure (checking that they were run with the same
settings and seed).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
import torch.nn.functional as F
from _common import (
    CharLM,
    Experiment,
    add_combine_option,
    add_models_option,
    combine_pieces,
    encode_chars,
    lm_loss,
    make_parser,
    new_figure,
    random_windows,
    read_corpus,
    train,
)
from torch import Tensor, nn

from lstmkit import LSTM

NAME = "claims_regularisation"
#: ``--models`` keys and the configurations they name
MODEL_KEYS = {
    "none": "none",
    "dropout": "dropout",
    "variational": "variational dropout",
    "weight-drop": "weight drop",
    "zoneout": "zoneout",
}


def configurations(p: float) -> dict[str, dict[str, Any]]:
    """Name -> (CharLM dropout, LSTM options), every rate ``p`` (zoneout: the usual pair
    ``(p / 2, p / 10)`` of Krueger et al. for h and c)."""
    return {
        "none": {"dropout": 0.0, "lstm": {}},
        "dropout": {"dropout": p, "lstm": {"dropout": p}},
        "variational dropout": {
            "dropout": 0.0,
            "lstm": {"input_dropout": p, "recurrent_dropout": p},
        },
        "weight drop": {"dropout": 0.0, "lstm": {"weight_drop": p}},
        "zoneout": {"dropout": 0.0, "lstm": {"zoneout": (p / 2, p / 10)}},
    }


def lm_step_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    logits, _ = model(x)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = make_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=None, help="every regulariser's rate")
    add_models_option(parser, MODEL_KEYS, "each is trained exactly as in the full run")
    add_combine_option(parser)
    args = parser.parse_args(argv)
    if args.combine is not None:
        return combine(args)
    q = args.quick
    settings: dict[str, Any] = {
        "corpus_chars": 4_000 if q else None,
        "hidden": 64 if q else 512,
        "layers": 2,
        "window": 24 if q else 100,
        "batch": 8 if q else 32,
        "steps": 120 if q else 4000,
        "lr": 3e-3 if q else 2e-3,
        "rate": args.rate if args.rate is not None else (0.3 if q else 0.25),
        "models": [MODEL_KEYS[key] for key in MODEL_KEYS if key in args.models],
    }
    exp = Experiment(NAME, args, settings)
    text, source = read_corpus(prefer_real=not q, quick=q)
    if settings["corpus_chars"]:
        text = text[: settings["corpus_chars"]]
    ids, vocab = encode_chars(text)
    split = int(0.9 * ids.numel())
    train_ids, val_ids = ids[:split], ids[split:]
    results: dict[str, Any] = {"corpus": source, "characters": ids.numel()}
    H, L = settings["hidden"], settings["layers"]
    for name, config in configurations(settings["rate"]).items():
        if name not in settings["models"]:
            continue
        torch.manual_seed(exp.seed)
        model = CharLM(len(vocab), LSTM(H, H, L, **config["lstm"]), H, config["dropout"])
        curve, seconds = train(
            model,
            lm_step_loss,
            random_windows(train_ids, settings["window"], settings["batch"], exp.generator(1)),
            steps=settings["steps"],
            lr=settings["lr"],
            record_every=max(settings["steps"] // 25, 1),
        )
        train_bpc = lm_loss(model, train_ids, settings["window"]) / math.log(2)
        val_bpc = lm_loss(model, val_ids, settings["window"]) / math.log(2)
        results[name] = {
            "train_bpc": train_bpc,
            "val_bpc": val_bpc,
            "gap_bpc": val_bpc - train_bpc,
            "train_s": round(seconds, 1),
            # the training loss in train mode (bits/char) every record_every updates
            "curve_bpc": [[s, v / math.log(2)] for s, v in curve],
        }
    draw(exp, results)
    return exp.finish(results)


def combine(args: Any) -> dict[str, Any]:
    """``--combine``: one summary and figure from pieces run with ``--models``."""
    merged = combine_pieces(NAME, args.combine, MODEL_KEYS.values())
    exp = Experiment(NAME, args, merged["settings"])
    exp.quick, exp.seed = merged["mode"] == "quick", merged["seed"]
    results = dict(merged["results"], pieces=merged["pieces"])
    draw(exp, results)
    return exp.finish(results)


def draw(exp: Experiment, results: dict[str, Any]) -> None:
    """Training curves (of the models whose results carry one) and train/held-out bars."""
    names = [n for n in MODEL_KEYS.values() if n in results]
    fig = new_figure(10.0, 3.6)
    left, right = fig.subplots(1, 2)
    drawn = [n for n in names if results[n].get("curve_bpc")]
    for name in drawn:
        curve = results[name]["curve_bpc"]
        left.plot([s for s, _ in curve], [v for _, v in curve], label=name)
    left.set_xlabel("Adam step")
    left.set_ylabel("training loss (bits/char, train mode)")
    if drawn:
        left.legend(fontsize=8)
    missing = [n for n in names if n not in drawn]
    if missing:  # pieces from before the results carried their curves
        left.set_title("no curve recorded: " + ", ".join(missing), fontsize=8)
    xs = range(len(names))
    right.bar([x - 0.2 for x in xs], [results[n]["train_bpc"] for n in names], 0.4, label="train")
    right.bar([x + 0.2 for x in xs], [results[n]["val_bpc"] for n in names], 0.4, label="held out")
    right.set_xticks(list(xs), names, rotation=20, fontsize=8)
    right.set_ylabel("bits per character (eval mode)")
    right.legend()
    exp.save_figure(fig, "regularisation.png")


if __name__ == "__main__":
    main(sys.argv[1:])
