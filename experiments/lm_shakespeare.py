"""Tiny Shakespeare, character level, last 10% as validation: the target is validation
<= 1.45 nats/char in <= 60 minutes of training on the 2-core CPU (2x512 LSTMs reach 1.35-1.45;
nanoGPT's GPU transformer 1.47).

    python experiments/lm_shakespeare.py                  # the recipe, capped at 60 minutes
    python experiments/lm_shakespeare.py --max-minutes 8  # a shortened run
    python experiments/lm_shakespeare.py --quick          # synthetic text, seconds

The recipe: a 2-layer LSTM of 512 units over 64-dimensional character embeddings, locked
dropout 0.2 between the layers and on the output, TBPTT windows of 100 characters over 32
streams, Adam 2e-3 with gradient norm clipping at 1 (char-rnn's setting), the rate halved after
every epoch that does not improve validation, and the best epoch's weights kept at the end
(``restore_best``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from lm_common import add_common_arguments, data_dir, report, run, synthetic_text

from lstmkit.tasks.language_model import split_validation

TARGET = {"metric": "valid nats/char", "value": 1.45, "budget_minutes": 60}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        text = synthetic_text(150, seed=args.seed)
        params: dict[str, Any] = {
            "tokens": "char", "emb_size": 16, "hidden_size": 48, "num_layers": 1,
            "batch_size": 8, "bptt": 50, "lr": 1e-2, "clip_norm": 1.0,
            "max_epochs": args.max_epochs or 5,
        }  # fmt: skip
    else:
        text = (data_dir(args.data_dir) / "tinyshakespeare" / "input.txt").read_text("utf-8")
        params = {
            "tokens": "char", "emb_size": 64, "hidden_size": args.hidden_size or 512,
            "num_layers": args.num_layers or 2, "dropout": 0.2, "dropout_h": 0.2,
            "batch_size": 32, "bptt": 100, "eval_batch_size": 16, "lr": 2e-3,
            "clip_norm": 1.0, "max_epochs": args.max_epochs or 50,
            "max_time": args.max_minutes if args.max_minutes is not None else 60.0,
            # halve the rate after an epoch that did not improve validation, and end with the
            # best epoch's weights: 2 x 512 on 1M characters overfits within the hour
            "schedule": "plateau", "gamma": 0.5, "plateau_patience": 0, "restore_best": True,
        }  # fmt: skip
    # The last 10% of the characters, as the target says (not cut at a line break).
    cut = int(len(text) * 0.9)
    train, valid = text[:cut], text[cut:]
    if args.quick:
        train, valid = split_validation(text, 0.1)
    summary = run("lm_shakespeare", args, params, train, valid, None, TARGET)
    summary["valid_nats_per_char"] = summary["valid"]["loss"]
    complete = not args.quick and args.eval_chars is None
    summary["met"] = complete and summary["valid"]["loss"] <= TARGET["value"]
    return report(summary)


if __name__ == "__main__":
    main(sys.argv[1:])
