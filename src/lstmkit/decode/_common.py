"""What greedy decoding, sampling and beam search share: the step contract and its checks, the
start tokens, and the constraints on the next token (``min_len``, n-gram blocking)."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, TypeAlias

import torch
from torch import Tensor

from .. import _checks
from .._checks import describe
from .state import leaves, state_batch_size

#: ``step(tokens, state) -> (log_probs, new_state)`` or ``(log_probs, new_state, attention)``:
#: ``tokens`` is ``(N,)`` int64, ``log_probs`` is ``(N, V)``, ``attention`` is ``(N, S)``.
Step: TypeAlias = Callable[[Tensor, Any], tuple[Any, ...]]


def token_id(name: str, value: Any) -> int:
    return _checks.positive_int(name, value, allow_zero=True)


def start_tokens(bos: Any, state: Any) -> Tensor:
    """The ``(B,)`` int64 start tokens, from ``bos`` (an int or a ``(B,)`` tensor) and the batch
    size of ``state`` (its rows). With neither a tensor ``bos`` nor a tensor in ``state`` the
    batch is one sequence."""
    rows = state_batch_size(state)
    if isinstance(bos, Tensor):
        if bos.dtype != torch.int64 or bos.dim() != 1:
            raise TypeError(
                f"bos must be an int or a 1-D int64 tensor (one start token per sequence), "
                f"got {describe(bos)}"
            )
        if rows is not None and bos.shape[0] != rows:
            raise ValueError(
                f"bos must have one token per row of state: shape ({rows},), got {tuple(bos.shape)}"
            )
        if bos.numel() and int(bos.min()) < 0:
            raise ValueError(f"bos must hold token ids >= 0, got {int(bos.min())}")
        return bos.to(state_device(state, bos))
    if isinstance(bos, bool) or not isinstance(bos, numbers.Integral):
        raise TypeError(f"bos must be an int or a 1-D int64 tensor, got {describe(bos)}")
    token_id("bos", bos)
    size = 1 if rows is None else rows
    return torch.full((size,), int(bos), dtype=torch.int64, device=state_device(state, bos))


def state_device(state: Any, bos: Any) -> torch.device:
    """Where the search keeps its tensors: the state's device, else ``bos``'s, else the CPU."""
    found = leaves(state)
    if found:
        return found[0][1].device
    return bos.device if isinstance(bos, Tensor) else torch.device("cpu")


class StepCaller:
    """Calls the user's step and checks what comes back, so that a wrong step function fails at
    the first step with a message naming the output, not later inside ``topk`` or ``gather``."""

    def __init__(self, step: Step, token_ids: dict[str, int]) -> None:
        """``token_ids``: the named token ids (eos, pad, ...) to check against the vocabulary
        size once the first step reveals it."""
        if not callable(step):
            raise TypeError(f"step must be callable, got {describe(step)}")
        self.step = step
        self.token_ids = token_ids
        self.vocab: int | None = None

    def __call__(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any, Tensor | None]:
        out = self.step(tokens, state)
        if not isinstance(out, tuple) or len(out) not in (2, 3):
            raise TypeError(
                "step must return (log_probs, new_state) or (log_probs, new_state, attention), "
                f"got {describe(out)}"
            )
        log_probs, new_state = out[0], out[1]
        attention = out[2] if len(out) == 3 else None
        n = tokens.shape[0]
        _checks.floating_tensor("log_probs returned by step", log_probs)
        if log_probs.dim() != 2 or log_probs.shape[0] != n:
            raise ValueError(
                f"log_probs returned by step must have shape (N, vocab_size) with N = {n} rows "
                f"(one per input token), got {tuple(log_probs.shape)}"
            )
        if self.vocab is None:
            self.vocab = int(log_probs.shape[1])
            if self.vocab < 2:
                raise ValueError(
                    f"log_probs returned by step must cover at least 2 tokens (eos and another), "
                    f"got vocab_size {self.vocab}"
                )
            for name, value in self.token_ids.items():
                if value >= self.vocab:
                    raise ValueError(
                        f"{name} must be a token id below vocab_size {self.vocab}, got {value}"
                    )
        elif log_probs.shape[1] != self.vocab:
            raise ValueError(
                f"log_probs returned by step changed vocab_size from {self.vocab} to "
                f"{log_probs.shape[1]} between steps"
            )
        rows = state_batch_size(new_state, name="new_state returned by step")
        if rows is not None and rows != n:
            raise ValueError(
                f"new_state returned by step must have {n} rows (first dimension of every "
                f"tensor), got {rows}"
            )
        if attention is not None:
            _checks.floating_tensor("attention returned by step", attention)
            if attention.dim() != 2 or attention.shape[0] != n:
                raise ValueError(
                    f"attention returned by step must have shape (N, source_len) with N = {n}, "
                    f"got {tuple(attention.shape)}"
                )
        return log_probs, new_state, attention


def banned_ngrams(history: Tensor, n: int, vocab: int) -> Tensor:
    """``(N, vocab)`` bool: True where the next token would complete an n-gram that already
    occurs in ``history`` (``(N, L)``, the tokens so far, oldest first).

    Every complete n-gram of each row is compared with the row's last ``n - 1`` tokens at once
    (``unfold``), so the cost is ``O(N * L * n)`` per step with no Python loop over rows.
    """
    rows, length = history.shape
    banned = torch.zeros(rows, vocab, dtype=torch.bool, device=history.device)
    if length < n:  # no complete n-gram yet, or none the next token could repeat
        return banned
    if n == 1:
        return banned.scatter_(1, history, True)
    windows = history.unfold(1, n, 1)  # (N, L - n + 1, n): every n-gram so far
    suffix = history[:, length - n + 1 :]  # (N, n - 1): the start of the n-gram being formed
    match = (windows[:, :, :-1] == suffix[:, None, :]).all(dim=-1)
    hits = torch.zeros(rows, vocab, dtype=torch.int32, device=history.device)
    hits.scatter_add_(1, windows[:, :, -1], match.to(torch.int32))
    return hits > 0


def constrain(
    log_probs: Tensor,
    step_index: int,
    *,
    eos: int | None,
    min_len: int,
    no_repeat_ngram_size: int,
    history: Tensor | None,
) -> Tensor:
    """``log_probs`` with the forbidden next tokens set to ``-inf`` (a copy when anything is
    forbidden): ``eos`` while fewer than ``min_len`` tokens were generated, and every token that
    would repeat an n-gram of ``history``."""
    if eos is not None and step_index < min_len:
        log_probs = log_probs.clone()
        log_probs[:, eos] = float("-inf")
    if no_repeat_ngram_size and history is not None:
        ban = banned_ngrams(history, no_repeat_ngram_size, log_probs.shape[1])
        log_probs = log_probs.masked_fill(ban, float("-inf"))
    return log_probs


def check_lengths(max_len: Any, min_len: Any) -> tuple[int, int]:
    max_len = _checks.positive_int("max_len", max_len)
    min_len = _checks.positive_int("min_len", min_len, allow_zero=True)
    if min_len > max_len:
        raise ValueError(f"min_len must be <= max_len = {max_len}, got {min_len}")
    return max_len, min_len
