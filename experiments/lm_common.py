"""What the language-model experiments share: where the data lives, a synthetic corpus for the
``--quick`` smoke runs, and one function that trains, evaluates and reports.

``python experiments/lm_shakespeare.py`` and ``python experiments/lm_ptb.py`` reproduce the LM
rows of the targets table (docs/results/language-model.md); each ``main(argv)`` returns the
summary it prints as JSON, so that the test suite runs the ``--quick`` mode in-process and checks
the direction of the claim (the model beats the unigram baseline) without the real data.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from lstmkit.tasks.language_model import LanguageModelEstimator

REPO = Path(__file__).resolve().parent.parent


def data_dir(value: str | None) -> Path:
    """``--data-dir``, else ``$LSTMKIT_DATA``, else ``../shared/data`` next to the repository."""
    path = Path(value or os.environ.get("LSTMKIT_DATA") or REPO.parent / "shared" / "data")
    if not path.is_dir():
        raise SystemExit(f"data folder {path} not found: pass --data-dir or set LSTMKIT_DATA")
    return path


def synthetic_text(n_lines: int, *, seed: int) -> str:
    """Sentences of a tiny stochastic grammar: enough structure for a model to beat the unigram
    distribution clearly, small enough to learn in seconds."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "the old man", "my sister", "the king"]
    verbs = ["sees", "likes", "finds", "calls", "follows"]
    objects = ["the ball", "a bird", "the queen", "her friend", "the river"]
    endings = ["today", "again", "at night", "in the garden"]
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(subjects), rng.choice(verbs), rng.choice(objects)]
        if rng.random() < 0.5:
            words.append(rng.choice(endings))
        lines.append(" ".join(words))
    return "\n".join(lines) + "\n"


def unigram_nats(train_ids: list[int], eval_ids: list[int], vocab_size: int) -> float:
    """Cross-entropy (nats per token) of the add-one unigram model of ``train_ids`` on
    ``eval_ids``: the no-context baseline a language model must beat."""
    counts = Counter(train_ids)
    total = len(train_ids) + vocab_size
    return -sum(math.log((counts[i] + 1) / total) for i in eval_ids[1:]) / (len(eval_ids) - 1)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="synthetic data, seconds")
    parser.add_argument(
        "--data-dir", help="the data folder (default $LSTMKIT_DATA, ../shared/data)"
    )
    parser.add_argument("--out", type=Path, help="run directory (default runs/<experiment>/<time>)")
    parser.add_argument("--max-minutes", type=float, help="training time cap (the target's budget)")
    parser.add_argument("--max-epochs", type=int, help="epochs (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="show the progress bar")
    parser.add_argument(
        "--eval-chars",
        type=int,
        help="validate and test on the first N characters only (shortened runs; not the target)",
    )
    parser.add_argument("--hidden-size", type=int, help="hidden units (default: the recipe's)")
    parser.add_argument("--num-layers", type=int, help="layers (default: the recipe's)")


def head(text: str, chars: int | None) -> str:
    """The first ``chars`` characters of ``text``, cut back to a line break when there is one."""
    if chars is None or chars >= len(text):
        return text
    cut = text.rfind("\n", 0, chars)
    return text[: cut + 1] if cut > 0 else text[:chars]


def run(
    name: str,
    args: argparse.Namespace,
    params: dict[str, Any],
    train_text: str,
    valid_text: str,
    test_text: str | None,
    target: dict[str, Any],
) -> dict[str, Any]:
    """Train ``LanguageModelEstimator(**params)`` on ``train_text`` (validating on
    ``valid_text``), evaluate on validation and test, and return (and print) the summary with
    the wall times, the machine and the unigram baseline; the script adds its verdict and
    prints it with :func:`report`."""
    torch.set_num_threads(args.threads)
    valid_text = head(valid_text, args.eval_chars)
    test_text = None if test_text is None else head(test_text, args.eval_chars)
    out = args.out or REPO / "runs" / name / time.strftime("%Y%m%d-%H%M%S")
    start = time.perf_counter()
    estimator = LanguageModelEstimator(
        **params, seed=args.seed, progress=args.progress, tensorboard=False
    )
    estimator.fit(train_text, val=valid_text, out=out)
    train_s = time.perf_counter() - start
    result = estimator.fit_result_
    assert result is not None and estimator.tokenizer_ is not None
    summary: dict[str, Any] = {
        "experiment": name,
        "quick": args.quick,
        "eval_chars": args.eval_chars,
        "params": {k: v for k, v in params.items() if k != "tokenizer"},
        "vocab_size": estimator.tokenizer_.vocab_size,
        "epochs": result.epochs,
        "steps": result.steps,
        "stopped": result.stopped,
        "val_history": [round(h["val_loss"], 4) for h in result.history],
        "valid": estimator.evaluate(valid_text),
    }
    if test_text is not None:
        summary["test"] = estimator.evaluate(test_text)
    tokenizer = estimator.tokenizer_
    summary["unigram_valid_nats"] = unigram_nats(
        tokenizer.encode(train_text), tokenizer.encode(valid_text), tokenizer.vocab_size
    )
    summary["target"] = target
    summary["train_wall_s"] = round(train_s, 1)
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    summary["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    summary["threads"] = args.threads
    summary["out"] = str(out)
    return summary


def report(summary: dict[str, Any]) -> dict[str, Any]:
    """Print ``summary`` as JSON (the last thing a script does) and return it."""
    print(json.dumps(summary, indent=2))
    return summary
