"""The NAB subset target: the streaming LSTM detector of ``lstmkit nab`` against a windowed
Gaussian baseline, both run online (each file once, in order, no look-ahead) and scored with
NAB's three profiles.

    .venv/bin/python experiments/nab_online.py            # ../shared/data/nab (about 3-6 min)
    .venv/bin/python experiments/nab_online.py --quick    # a synthetic NAB-like corpus (seconds)

Prints one JSON object per line: the per-file log goes to stderr, the last line of stdout is
``{"lstm": {...}, "windowed_gaussian": {...}, "wall_s": ...}`` with ``standard``, ``low_fp``,
``low_fn`` and the per-category table of each. The windowed Gaussian is NAB's baseline of that
name: the two-sided Gaussian tail of each value under the mean and standard deviation of the
values of a trailing window (NAB reports 39.6 for it on the full benchmark).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from lstmkit.tasks.anomaly import OnlineConfig, run_nab

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("LSTMKIT_DATA", ROOT.parent / "shared" / "data")) / "nab"


def windowed_gaussian(values: np.ndarray, window: int = 6400, warmup: int = 100) -> np.ndarray:
    """NAB's windowed Gaussian detector: score = 1 - two-sided tail of the value under the
    Gaussian of the previous ``window`` values (0 for the first ``warmup`` values)."""
    seen: deque[float] = deque(maxlen=window)
    total = squares = 0.0
    scores = np.zeros(values.size)
    for t, v in enumerate(values.tolist()):
        if len(seen) >= warmup:
            n = len(seen)
            mu = total / n
            sigma = math.sqrt(max(squares / n - mu * mu, 0.0))
            z = abs(v - mu) / sigma if sigma > 0 else (0.0 if v == mu else math.inf)
            scores[t] = 1.0 - math.erfc(z / math.sqrt(2.0))
        if len(seen) == window:
            old = seen[0]
            total -= old
            squares -= old * old
        seen.append(v)
        total += v
        squares += v * v
    return scores


def synthetic_corpus(root: Path, seed: int = 0) -> Path:
    """A small NAB-like corpus: daily-periodic series with a spike, a level shift, a frozen
    stretch, and one file with no anomaly; windows of 10% of the file around each anomaly."""
    rng = np.random.default_rng(seed)
    n = 800
    t = np.arange(n)
    start = np.datetime64("2024-01-01T00:00")
    stamps = start + t * np.timedelta64(5, "m")
    windows: dict[str, list[list[str]]] = {}
    kinds = ("spike", "shift", "flat", "spike2", None)
    for k, kind in enumerate(kinds):
        x = 50 + 20 * np.sin(2 * np.pi * t / 96) + rng.normal(0, 1.0, n)
        at = 560 + 25 * k
        if kind in ("spike", "spike2"):
            x[at] += 25.0
        elif kind == "shift":
            x[at:] += 20.0
        elif kind == "flat":
            x[at : at + 150] = x[at]
        category = "withAnomaly" if kind else "noAnomaly"
        name = f"{category}/series_{k}.csv"
        (root / category).mkdir(parents=True, exist_ok=True)
        with open(root / name, "w", encoding="utf-8") as f:
            f.write("timestamp,value\n")
            for s, v in zip(stamps, x, strict=True):
                f.write(f"{str(s).replace('T', ' ')}:00,{v:.6f}\n")
        half = n // 20
        windows[name] = (
            [
                [
                    str(stamps[at - half]).replace("T", " ") + ":00",
                    str(stamps[at + half]).replace("T", " ") + ":00",
                ]
            ]
            if kind
            else []
        )
    labels = root / "combined_windows.json"
    labels.write_text(json.dumps(windows, indent=1))
    return labels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="synthetic corpus, seconds")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="NAB-layout directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as `lstmkit nab`: tiny matrices, reproducible bit for bit
    start = time.perf_counter()

    def log(line: str) -> None:
        print(line, file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            data = Path(tmp)
            labels = synthetic_corpus(data, args.seed)
            config = OnlineConfig(seed=args.seed, long=600)
        else:
            data = args.data
            labels = data / "combined_windows.json"
            config = OnlineConfig(seed=args.seed)
        lstm = run_nab(data, labels, config=config, log=log)
        baseline = run_nab(data, labels, detector=windowed_gaussian)
    report = {
        "data": "synthetic" if args.quick else str(args.data),
        "lstm": lstm.to_dict(),
        "windowed_gaussian": baseline.to_dict(),
        "config": asdict(config),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
