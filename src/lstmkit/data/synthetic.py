"""Synthetic long-memory tasks: the adding problem and copy memory.

Both take a ``torch.Generator`` so that two calls with the same seed give the same data.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _checks

#: MSE of always predicting 1.0 on the adding problem (the sum of two U(0,1) has variance 1/6).
ADDING_BASELINE_MSE = 1.0 / 6.0


def adding_problem(
    n: int, T: int, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """The adding problem (Hochreiter & Schmidhuber 1997, in the form of Le et al. 2015).

    Each sequence has ``T`` steps of two features: a value drawn from U(0, 1) and a marker that is
    1 at exactly two steps, one in each half of the sequence. The target is the sum of the two
    marked values. Predicting the mean (1.0) gives MSE 1/6 ~ 0.167; a model that remembers across
    ``T`` steps gets close to 0. Returns ``x`` of shape ``(T, n, 2)`` and ``y`` of shape ``(n,)``.
    """
    n = _checks.positive_int("n", n)
    T = _checks.positive_int("T", T)
    if T < 2:
        raise ValueError(f"T must be >= 2 for the adding problem, got {T}")
    values = torch.rand(T, n, generator=generator)
    half = T // 2
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, T, (n,), generator=generator)
    markers = torch.zeros(T, n)
    rows = torch.arange(n)
    markers[first, rows] = 1.0
    markers[second, rows] = 1.0
    y = values[first, rows] + values[second, rows]
    return torch.stack([values, markers], dim=-1), y


def copy_memory(
    n: int,
    T: int,
    *,
    n_symbols: int = 8,
    length: int = 10,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Copy memory (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016).

    ``length`` symbols from ``1..n_symbols`` are shown, then ``T`` blanks (0), then a delimiter
    (``n_symbols + 1``) after which the model must output the symbols. Sequences have
    ``T + 2 * length`` steps. Returns token ids ``x`` and targets ``y``, both ``(T + 2*length, n)``;
    targets are 0 (blank) except over the last ``length`` steps. A memoryless model that predicts
    blanks and then uniform symbols has cross-entropy ``length * ln(n_symbols) / (T + 2*length)``.
    """
    n = _checks.positive_int("n", n)
    T = _checks.positive_int("T", T, allow_zero=True)
    n_symbols = _checks.positive_int("n_symbols", n_symbols)
    length = _checks.positive_int("length", length)
    total = T + 2 * length
    symbols = torch.randint(1, n_symbols + 1, (length, n), generator=generator)
    x = torch.zeros(total, n, dtype=torch.long)
    y = torch.zeros(total, n, dtype=torch.long)
    x[:length] = symbols
    x[T + length - 1] = n_symbols + 1
    y[-length:] = symbols
    return x, y


def copy_memory_baseline(T: int, *, n_symbols: int = 8, length: int = 10) -> float:
    """Cross-entropy of the memoryless strategy on :func:`copy_memory`."""
    return length * math.log(n_symbols) / (T + 2 * length)
