"""Where should ``backend='auto'`` hand a plain LSTM to torch's own (oneDNN) implementation?

``python -m benchmarks.dispatch`` times, for a grid of batch and hidden sizes, a plain
``lstmkit.LSTM`` on the fused kernels against the same weights through ``torch.lstm`` (what
``nn.LSTM`` runs), in inference (no grad) and training (forward + backward). The two are
interleaved call by call and each keeps its fastest time, so background load (which only ever
adds time) affects both alike. It prints the ratio fused / torch per cell: below 1 the fused
kernels win. ``lstmkit.nn.layers._torch_is_faster`` encodes the result; rerun this after
changing the kernels or moving to another machine and update the rule there.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import lstmkit


def _fastest(fns: list[Callable[[], None]], rounds: int) -> list[float]:
    best = [float("inf")] * len(fns)
    for fn in fns:  # warm-up
        fn()
        fn()
    for _ in range(rounds):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def measure(T: int, B: int, H: int, train: bool, rounds: int) -> float:
    """fused time / torch time for a 1-layer LSTM with input size H."""
    gen = torch.Generator().manual_seed(0)
    fused = lstmkit.LSTM(H, H, backend="fused")
    torch_mod = fused.to_torch()
    x = torch.randn(T, B, H, generator=gen)
    if train:
        x.requires_grad_()
        gy = torch.randn(T, B, H, generator=gen)

        def run(m: torch.nn.Module) -> Callable[[], None]:
            def fn() -> None:
                out, _ = m(x)
                out.backward(gy)

            return fn
    else:

        def run(m: torch.nn.Module) -> Callable[[], None]:
            def fn() -> None:
                with torch.no_grad():
                    m(x)

            return fn

    t_fused, t_torch = _fastest([run(fused), run(torch_mod)], rounds)
    return t_fused / t_torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batches", default="1,4,16,32,64,128")
    parser.add_argument("--hidden", default="64,128,256,512,1024")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    hidden = [int(h) for h in args.hidden.split(",")]
    for train in (False, True):
        print(
            f"\n{'training (fwd+bwd)' if train else 'inference (no grad)'}, T={args.steps}, "
            f"{args.threads} threads: fused / torch (below 1: fused is faster)"
        )
        print("B \\ H  " + "".join(f"{h:>8}" for h in hidden))
        for B in batches:
            cells = [measure(args.steps, B, h, train, args.rounds) for h in hidden]
            print(f"{B:<7}" + "".join(f"{c:8.2f}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
