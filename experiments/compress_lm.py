"""What int8 weights and magnitude pruning cost a character LSTM language model.

The claims (Jacob et al. 2018 for int8; Han et al. 2015 and Zhu & Gupta 2017 for pruning):
int8 weights with one scale per row change a trained model's loss very little; pruning the
smallest weights costs little at moderate sparsity but a lot at high sparsity when done in one
shot, and fine-tuning with the pruned weights held at zero recovers most of that loss, a gradual
(polynomial) schedule more than a one-shot cut.

A character LM (:class:`_common.CharLM` around :class:`lstmkit.LSTM`) is trained, then scored
on held-out text in bits per character: as trained (float32); quantized with
:func:`lstmkit.compress.quantize` (``kernel='dequantize'`` and ``'int8'``); pruned with
:func:`lstmkit.compress.prune` at 50% and 80% of every recurrent weight matrix, without
fine-tuning, after fine-tuning with the masks, and after gradual pruning over the fine-tuning
steps (:func:`lstmkit.compress.polynomial_sparsity`); and pruned + int8. The float model is also
fine-tuned for the same number of steps, so that the fine-tuned models are compared with a model
that had as many updates. Only the LSTM is compressed: the embedding and the output layer stay
float32, as in the papers.

Corpus: this repository's documentation (README.md and docs/*.md), so that the script never
needs the shared data folder; the quick mode reads its frozen copy, ``quick_corpus.txt``.

    python experiments/compress_lm.py [--quick] [--out DIR]
"""

from __future__ import annotations

import copy
import math
import sys
from typing import Any

import torch
import torch.nn.functional as F
from _common import (
    CharLM,
    Experiment,
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
from lstmkit.compress import polynomial_sparsity, prune, quantize, sparsity, weight_bytes

NAME = "compress_lm"
AMOUNTS = (0.5, 0.8)


def lm_step_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    logits, _ = model(x)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def bpc(model: Any, data: Tensor, window: int) -> float:
    """Held-out bits per character (evaluation mode, state carried across windows)."""
    return lm_loss(model, data, window) / math.log(2)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = make_parser(NAME, __doc__.split("\n\n")[0])
    args = parser.parse_args(argv)
    q = args.quick
    settings: dict[str, Any] = {
        "corpus_chars": 8_000 if q else None,
        "hidden": 64 if q else 256,
        "window": 32 if q else 64,
        "batch": 16 if q else 32,
        "steps": 300 if q else 600,
        "finetune_steps": 60 if q else 200,
        "prune_every": 10 if q else 20,
        "lr": 5e-3 if q else 3e-3,
        "finetune_lr": 2e-3 if q else 1e-3,
        "amounts": list(AMOUNTS),
    }
    exp = Experiment(NAME, args, settings)
    text, source = read_corpus(prefer_real=False, quick=q)
    if settings["corpus_chars"]:
        text = text[: settings["corpus_chars"]]
    ids, vocab = encode_chars(text)
    split = int(0.9 * ids.numel())
    train_ids, val_ids = ids[:split], ids[split:]
    W, B, H = settings["window"], settings["batch"], settings["hidden"]
    results: dict[str, Any] = {"corpus": source, "characters": ids.numel()}

    torch.manual_seed(exp.seed)
    model = CharLM(len(vocab), LSTM(H, H), H)
    _, seconds = train(
        model,
        lm_step_loss,
        random_windows(train_ids, W, B, exp.generator(1)),
        steps=settings["steps"],
        lr=settings["lr"],
    )
    results["train_s"] = round(seconds, 1)
    scores: dict[str, dict[str, Any]] = {}

    def score(name: str, m: nn.Module, **extra: Any) -> None:
        entry: dict[str, Any] = {"val_bpc": bpc(m, val_ids, W)}
        entry["lstm_sparsity"] = round(sparsity(m)["overall"], 4)
        entry["weight_bytes"] = weight_bytes(m)
        entry.update(extra)
        scores[name] = entry

    def finetune(m: nn.Module, offset: int, gradual_to: float | None = None) -> float:
        """Train ``m`` on for the fine-tuning budget (masks held); with ``gradual_to``, raise its
        sparsity from 0 to that value over the first 3/4 of the steps (Zhu & Gupta)."""
        end = int(0.75 * settings["finetune_steps"])

        def schedule(step: int, _loss: float) -> None:
            if gradual_to is not None:
                prune(m, polynomial_sparsity(step, start=0, end=end, final=gradual_to))

        _, s = train(
            m,
            lm_step_loss,
            random_windows(train_ids, W, B, exp.generator(offset)),
            steps=settings["finetune_steps"],
            lr=settings["finetune_lr"],
            record_every=settings["prune_every"],
            on_record=schedule,
        )
        return round(s, 1)

    score("float32", model)
    score("int8 (kernel='dequantize')", quantize(model))
    score("int8 (kernel='int8')", quantize(model, kernel="int8"))
    longer = copy.deepcopy(model)
    score("float32, fine-tuned as long", longer, finetune_s=finetune(longer, 2))
    for amount in AMOUNTS:
        pct = f"{amount:.0%}"
        cut = prune(copy.deepcopy(model), amount)
        score(f"pruned {pct}, no fine-tuning", cut)
        score(f"pruned {pct} + fine-tuned", cut, finetune_s=finetune(cut, 2))
        score(f"pruned {pct} + fine-tuned, int8", quantize(cut))
        gradual = copy.deepcopy(model)
        prune(gradual, 0.0)
        score(
            f"pruned {pct} gradually while fine-tuning",
            gradual,
            finetune_s=finetune(gradual, 2, gradual_to=amount),
        )
    results["scores"] = scores
    base = scores["float32"]["val_bpc"]
    results["delta_bpc"] = {k: v["val_bpc"] - base for k, v in scores.items()}
    results["lstm_matrix_bytes"] = {
        "float32": scores["float32"]["weight_bytes"]["matrices"],
        "int8": scores["int8 (kernel='dequantize')"]["weight_bytes"]["matrices"],
    }

    fig = new_figure(8.0, 3.8)
    ax = fig.subplots()
    names = list(scores)
    ax.barh(range(len(names)), [scores[n]["val_bpc"] for n in names])
    ax.axvline(base, color="black", linewidth=0.8)
    ax.set_yticks(list(range(len(names))), names, fontsize=8)
    ax.invert_yaxis()
    lo = min(v["val_bpc"] for v in scores.values())
    ax.set_xlim(lo - 0.3, max(v["val_bpc"] for v in scores.values()) + 0.1)
    ax.set_xlabel("held-out bits per character (lower is better)")
    exp.save_figure(fig, "compress_lm.png")
    return exp.finish(results)


if __name__ == "__main__":
    main(sys.argv[1:])
