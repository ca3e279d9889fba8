"""Penn Treebank, word level (Mikolov's 10k vocabulary): the target is test perplexity <= 110
in <= 2 hours of training on the 2-core CPU (Zaremba et al. 2014, small config: 114.5 after 13
epochs on a GPU).

    python experiments/lm_ptb.py                    # the recipe, capped at 120 minutes
    python experiments/lm_ptb.py --max-minutes 8    # a shortened run
    python experiments/lm_ptb.py --quick            # synthetic text, seconds

The recipe is Zaremba's small model (2 x 200 LSTM, TBPTT windows of 20 over 20 streams, SGD
with the learning rate halved every epoch after the 4th, 13 epochs) with two changes that cost
nothing at run time: tied input/output embeddings (Press & Wolf 2017) and locked dropout 0.25
on the input, between the layers and on the output, which the small config lacks and which is
what keeps it from overfitting after epoch 5.

Zaremba's code minimises the loss *summed* over the 20 steps of a window (averaged over the
batch only); lstmkit's loss is the mean per token. The same updates therefore need a learning
rate 20 times larger and a clipping threshold 20 times smaller: lr 1 and clip 5 there are
lr 20 and clip 0.25 here (AWD-LSTM's lr 30 and clip 0.25 come from the same convention).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from lm_common import add_common_arguments, data_dir, report, run, synthetic_text

TARGET = {"metric": "test perplexity", "value": 110.0, "budget_minutes": 120}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--dropout", type=float, default=0.25)
    args = parser.parse_args(argv)
    if args.quick:
        text = synthetic_text(300, seed=args.seed)
        lines = text.splitlines(keepends=True)
        train, valid, test = "".join(lines[:240]), "".join(lines[240:270]), "".join(lines[270:])
        params: dict[str, Any] = {
            "tokens": "word", "emb_size": 24, "hidden_size": 24, "num_layers": 2,
            "tie_weights": True, "batch_size": 4, "bptt": 20, "lr": 2e-2,
            "clip_norm": 5.0, "max_epochs": args.max_epochs or 6,
        }  # fmt: skip
    else:
        folder = data_dir(args.data_dir) / "ptb"
        train, valid, test = (
            (folder / f"ptb.{part}.txt").read_text("utf-8") for part in ("train", "valid", "test")
        )
        p = args.dropout
        params = {
            "tokens": "word", "emb_size": args.hidden_size or 200,
            "hidden_size": args.hidden_size or 200, "num_layers": args.num_layers or 2,
            "tie_weights": True, "dropout": p, "dropout_h": p, "dropout_i": p,
            "batch_size": 20, "bptt": 20, "eval_batch_size": 10, "optimizer": "sgd",
            "lr": 20.0, "schedule": "step", "decay_after": 4, "gamma": 0.5, "clip_norm": 0.25,
            "max_epochs": args.max_epochs or 13,
            "max_time": args.max_minutes if args.max_minutes is not None else 120.0,
        }  # fmt: skip
    summary = run("lm_ptb", args, params, train, valid, test, TARGET)
    summary["test_perplexity"] = summary["test"]["perplexity"]
    complete = not args.quick and args.eval_chars is None
    summary["met"] = complete and summary["test_perplexity"] <= TARGET["value"]
    return report(summary)


if __name__ == "__main__":
    main(sys.argv[1:])
