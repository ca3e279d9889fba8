"""Command-line interface: argument parsing only; the work happens in the library."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstmkit", description="Recurrent sequence models: LSTM, GRU and RNN."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="a short, real tour of the layers (about 2 minutes)")
    demo.add_argument("--steps", type=int, default=1200, help="training steps per model")
    demo.add_argument("--seq-len", type=int, default=50, help="adding-problem length T")
    demo.add_argument("--hidden", type=int, default=64, help="hidden size of every model")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", metavar="FILE", help="also write the measured figures as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from . import demo

        try:
            results = demo.run(steps=args.steps, T=args.seq_len, hidden=args.hidden, seed=args.seed)
        except (TypeError, ValueError) as exc:
            print(f"lstmkit demo: error: {exc}", file=sys.stderr)
            return 2
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(results, f, indent=2)
            print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
