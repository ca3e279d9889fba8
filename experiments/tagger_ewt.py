"""Bidirectional vs unidirectional tagging, and the UD English-EWT UPOS target.

The claim under test (Graves and Schmidhuber 2005; Plank et al. 2016): a tag often depends on
the words that follow, so a tagger that reads the sentence in both directions beats one that
reads it left to right with the same features and the same budget.

``--quick`` (seconds, run by the default test suite) trains both on a synthetic corpus built to
need the right context: the tag of the ambiguous word ``x`` is ``L`` when the next word is ``a``
or ``b`` and ``R`` otherwise; every other word has a fixed tag. A left-to-right tagger can only
guess for ``x``; a bidirectional one can be exact.

The full mode trains on EWT train and measures UPOS accuracy on EWT dev for each direction
asked for (``--directions bi uni``), each under ``--max-time`` minutes of training, and prints
one JSON object with the results and the wall times::

    python experiments/tagger_ewt.py --directions bi uni --max-time 20 --max-epochs 30
    python experiments/tagger_ewt.py --quick

The data come from ``$LSTMKIT_DATA/ud_en_ewt`` (default ``../shared/data`` from the project root).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import torch

from lstmkit.data.columns import read_conllu_tags
from lstmkit.tasks.tagger import TaggerEstimator

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LSTMKIT_DATA", ROOT / ".." / "shared" / "data"))


def future_context_corpus(n: int, seed: int) -> list[list[tuple[str, str]]]:
    """``n`` sentences whose tag for ``x`` depends on the next word only (see the docstring)."""
    rng = random.Random(seed)
    fixed = {"a": "A", "b": "B", "c": "C", "d": "D"}
    sentences = []
    for _ in range(n):
        words = [rng.choice("abcdxx") for _ in range(rng.randint(4, 10))]
        tagged = []
        for i, word in enumerate(words):
            if word == "x":
                tag = "L" if i + 1 < len(words) and words[i + 1] in "ab" else "R"
            else:
                tag = fixed[word]
            tagged.append((word, tag))
        sentences.append(tagged)
    return sentences


def run(
    train: list[list[tuple[str, str]]],
    dev: list[list[tuple[str, str]]],
    bidirectional: bool,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Train one tagger and return its dev metrics with the training wall time."""
    start = time.perf_counter()
    estimator = TaggerEstimator(bidirectional=bidirectional, **options)
    estimator.fit(train, val=dev)
    seconds = time.perf_counter() - start
    assert estimator.fit_result_ is not None
    metrics = estimator.evaluate(dev)
    return {
        **metrics,
        "train_seconds": round(seconds, 1),
        "epochs": estimator.fit_result_.epochs,
        "stopped": estimator.fit_result_.stopped,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="synthetic data, seconds")
    parser.add_argument("--directions", nargs="+", choices=("bi", "uni"), default=["bi", "uni"])
    parser.add_argument("--max-time", type=float, default=20.0, help="minutes per model")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.33)
    parser.add_argument("--char-features", type=int, default=100)
    parser.add_argument("--output", choices=("softmax", "crf"), default="softmax")
    parser.add_argument("--word-dim", type=int, default=100)
    parser.add_argument("--char-encoder", choices=("lstm", "cnn", "none"), default="lstm")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--min-count", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    if args.quick:
        train, dev = future_context_corpus(160, seed=1), future_context_corpus(60, seed=2)
        options: dict[str, Any] = {
            "word_dim": 16,
            "char_encoder": "none",
            "casing": False,
            "hidden_size": 16,
            "dropout": 0.0,
            "word_dropout": 0.0,
            "batch_size": 16,
            "max_epochs": 15,
            "lr": 3e-2,
        }
        source = "synthetic future-context corpus (160 train / 60 dev sentences)"
    else:
        folder = DATA / "ud_en_ewt"
        train = read_conllu_tags(folder / "en_ewt-ud-train.conllu", "upos")
        dev = read_conllu_tags(folder / "en_ewt-ud-dev.conllu", "upos")
        options = {
            "word_dim": args.word_dim,
            "char_encoder": args.char_encoder,
            "hidden_size": args.hidden_size,
            "num_layers": args.num_layers,
            "dropout": args.dropout,
            "char_features": args.char_features,
            "output": args.output,
            "batch_size": args.batch_size,
            "min_count": args.min_count,
            "max_epochs": args.max_epochs,
            "max_time": args.max_time,
            "lr": args.lr,
            "clip_norm": 5.0,
            "schedule": "plateau",
            "plateau_patience": 1,
        }
        source = f"UD English-EWT UPOS, {len(train)} train / {len(dev)} dev sentences"
    options.update(seed=args.seed, progress=False, tensorboard=False)
    results = {
        direction: run(train, dev, direction == "bi", options) for direction in args.directions
    }
    report = {
        "data": source,
        "options": {k: v for k, v in options.items() if k not in ("progress", "tensorboard")},
        "threads": torch.get_num_threads(),
        "results": results,
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
