"""What the fused kernels' buffer cache is worth: LSTM training (forward and backward) through
``backend='fused'`` with the cache off and on, alternated in one process, at the variant shapes
C2 and C3 and at T = 1000 (the long-memory experiment's adding problem).

    python -m benchmarks.buffer_cache [--threads 2] [--rounds 2]

Each configuration is timed ``--rounds`` times in each setting, alternating off and on (the cache
emptied before each), with the timer of the main suite (``benchmarks.timing.measure``, no
memory probe); the report gives the median of each setting's best round and their ratio
(on / off: below 1 is the cache's saving). Nothing is written; the figures are quoted in
docs/benchmarks.md with the run's date.
"""

from __future__ import annotations

import argparse
import platform

import torch

import lstmkit
from lstmkit.backends import fused

from .timing import TimerConfig, measure

#: (name, T, B, input, hidden)
SHAPES = [("C2", 50, 32, 128, 256), ("C3", 128, 64, 128, 128), ("T1000", 1000, 64, 2, 128)]
VARIANTS = [("plain", {}), ("layer_norm", {"layer_norm": True})]


def run(threads: int, rounds: int) -> list[dict[str, object]]:
    if not fused.available():
        raise SystemExit("the fused extension is not built: run `make` first")
    torch.set_num_threads(threads)
    cfg = TimerConfig(memory=False, min_time_s=1.0)
    rows: list[dict[str, object]] = []
    for shape, T, B, I, H in SHAPES:
        x = torch.randn(T, B, I, requires_grad=True)
        for variant, options in VARIANTS:
            layer = lstmkit.LSTM(I, H, backend="fused", **options)

            def step(layer: torch.nn.Module = layer, x: torch.Tensor = x) -> None:
                y, _ = layer(x)
                y.sum().backward()

            best: dict[bool, float] = {}
            try:
                for _ in range(rounds):
                    for on in (False, True):
                        fused.set_buffer_cache(on)
                        fused.empty_cache()
                        ms = measure(step, cfg).median_ms
                        best[on] = min(best.get(on, ms), ms)
            finally:
                fused.set_buffer_cache(True)
            row = {
                "shape": shape,
                "variant": variant,
                "off_ms": best[False],
                "on_ms": best[True],
                "ratio": best[True] / best[False],
            }
            rows.append(row)
            print(
                f"{shape:6s} {variant:10s} cache off {best[False]:8.2f} ms   on {best[True]:8.2f}"
                f" ms   on/off {row['ratio']:.2f}",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.buffer_cache", description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if args.threads < 1 or args.rounds < 1:
        parser.error("--threads and --rounds must be positive")
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, fused LSTM fwd+bwd")  # fmt: skip
    run(args.threads, args.rounds)


if __name__ == "__main__":
    main()
