"""Greedy decoding, ancestral sampling (temperature, top-k, nucleus) and token-by-token streaming.

All three follow one path per sequence, so they share one loop: call the step on the current
token of every row, constrain the next token (``min_len``, n-gram blocking), pick it (``argmax``
or a draw), and stop a row at ``eos``. Finished rows keep being fed ``eos`` so that the batch
stays one tensor; what the step computes for them is discarded.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import _checks
from .._checks import describe
from ._common import Step, StepCaller, check_lengths, constrain, start_tokens, token_id


@dataclass(frozen=True)
class DecodeOutput:
    """One decoded sequence per row.

    Attributes:
        tokens: ``(B, T)`` int64, the generated tokens (the start token is not included), padded
            with ``pad`` after each sequence's end. ``T`` is the longest length in the batch.
        lengths: ``(B,)`` int64, the number of generated tokens, ``eos`` included when it was
            generated (a sequence stopped by ``max_len`` has length ``max_len`` and no ``eos``).
        scores: ``(B,)``, the sum of the model's log-probabilities of the generated tokens (the
            step's ``log_probs``, before any temperature or filtering).
    """

    tokens: Tensor
    lengths: Tensor
    scores: Tensor


def filter_log_probs(
    log_probs: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Tensor:
    """The distribution that :func:`sample` draws from, as normalised log-probabilities.

    In this order: divide by ``temperature`` (below 1 sharpens, above 1 flattens); keep the
    ``top_k`` most likely tokens (tokens tied with the k-th are kept too); keep the *nucleus*
    (Holtzman et al. 2020): the smallest set of most likely tokens whose probability mass, under
    the tempered and top-k-filtered distribution, reaches ``top_p``. Removed tokens get ``-inf``;
    the kept ones are renormalised. The most likely token is always kept.
    """
    _checks.floating_tensor("log_probs", log_probs)
    if log_probs.dim() != 2:
        raise ValueError(f"log_probs must have shape (N, vocab_size), got {tuple(log_probs.shape)}")
    temperature, top_k, top_p = _sampling_args(temperature, top_k, top_p)
    vocab = log_probs.shape[1]
    scaled = log_probs / temperature
    if top_k is not None and top_k < vocab:
        kth = scaled.topk(top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    scaled = torch.log_softmax(scaled, dim=-1)
    if top_p is not None and top_p < 1.0:
        probs, order = scaled.exp().sort(dim=-1, descending=True)
        # mass of the tokens strictly more likely than each one: a token is in the nucleus when
        # the mass before it has not reached top_p yet (the first token always is)
        before = torch.cumsum(probs, dim=-1).roll(1, dims=-1)
        before[:, 0] = 0.0
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
        scaled = torch.log_softmax(scaled.masked_fill(drop, float("-inf")), dim=-1)
    return scaled


def _sampling_args(
    temperature: Any, top_k: Any, top_p: Any
) -> tuple[float, int | None, float | None]:
    """Check the three knobs of :func:`filter_log_probs` (done before any step runs)."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a positive float, got {describe(temperature)}")
    if not float(temperature) > 0.0:
        raise ValueError(f"temperature must be a positive float, got {temperature}")
    if top_k is not None:
        top_k = _checks.positive_int("top_k", top_k)
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, numbers.Real):
            raise TypeError(f"top_p must be a float in (0, 1] or None, got {describe(top_p)}")
        if not 0.0 < float(top_p) <= 1.0:
            raise ValueError(f"top_p must be a float in (0, 1] or None, got {top_p}")
        top_p = float(top_p)
    return float(temperature), top_k, top_p


def _decode(
    step: Step,
    state: Any,
    bos: int | Tensor,
    eos: int,
    max_len: int,
    min_len: int,
    no_repeat_ngram_size: int,
    pad: int | None,
    choose: Callable[[Tensor], Tensor],
) -> DecodeOutput:
    eos = token_id("eos", eos)
    pad = eos if pad is None else token_id("pad", pad)
    max_len, min_len = check_lengths(max_len, min_len)
    ngram = _checks.positive_int("no_repeat_ngram_size", no_repeat_ngram_size, allow_zero=True)
    tokens = start_tokens(bos, state)
    ids = {"eos": eos, "pad": pad}
    if tokens.numel():
        ids["bos"] = int(tokens.max())
    call = StepCaller(step, ids)
    rows = tokens.shape[0]
    device = tokens.device
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    lengths = torch.zeros(rows, dtype=torch.int64, device=device)
    scores: Tensor | None = None
    history = tokens[:, None] if ngram else None
    out: list[Tensor] = []
    for t in range(max_len):
        log_probs, state, _ = call(tokens, state)
        allowed = constrain(
            log_probs, t, eos=eos, min_len=min_len, no_repeat_ngram_size=ngram, history=history
        )
        chosen = choose(allowed)
        chosen = torch.where(finished, torch.full_like(chosen, pad), chosen)
        gained = log_probs.gather(1, chosen[:, None]).squeeze(1)
        gained = gained.masked_fill(finished, 0.0)
        scores = gained if scores is None else scores + gained
        lengths += (~finished).to(torch.int64)
        out.append(chosen)
        finished = finished | (chosen == eos)
        if history is not None:
            history = torch.cat([history, chosen[:, None]], dim=1)
        tokens = chosen.masked_fill(finished, eos)
        if bool(finished.all()):
            break
    assert scores is not None  # max_len >= 1: the loop ran at least once
    return DecodeOutput(torch.stack(out, dim=1), lengths, scores)


def greedy(
    step: Step,
    state: Any,
    *,
    bos: int | Tensor,
    eos: int,
    max_len: int,
    min_len: int = 0,
    no_repeat_ngram_size: int = 0,
    pad: int | None = None,
) -> DecodeOutput:
    """Decode every row of a batch by taking the most likely token at each step.

    Args:
        step: ``step(tokens, state) -> (log_probs, new_state[, attention])``, see
            :mod:`lstmkit.decode`.
        state: the initial decoder state, a pytree of tensors with one row per sequence (or with
            no tensor at all, then the batch size comes from ``bos``, else is 1).
        bos: the first input token: an int, or a ``(B,)`` int64 tensor (one per sequence).
        eos: the token that ends a sequence.
        max_len: the most tokens generated per sequence (``eos`` included).
        min_len: ``eos`` is forbidden until this many tokens were generated.
        no_repeat_ngram_size: when ``n > 0``, a token that would repeat an n-gram of the
            sequence (start token included) is forbidden.
        pad: the token written after a sequence's end (default: ``eos``).
    """
    return _decode(
        step,
        state,
        bos,
        eos,
        max_len,
        min_len,
        no_repeat_ngram_size,
        pad,
        lambda lp: lp.argmax(dim=-1),
    )


def sample(
    step: Step,
    state: Any,
    *,
    bos: int | Tensor,
    eos: int,
    max_len: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    min_len: int = 0,
    no_repeat_ngram_size: int = 0,
    pad: int | None = None,
) -> DecodeOutput:
    """Decode every row by drawing each token from the model's distribution, reshaped by
    ``temperature``, ``top_k`` and ``top_p`` (see :func:`filter_log_probs`).

    Draws come from ``generator`` (a ``torch.Generator`` on the state's device); two calls with
    generators seeded alike return the same sequences. Without one, torch's global generator is
    used. The other arguments are those of :func:`greedy`; ``top_k=1`` gives greedy's result.
    """
    _sampling_args(temperature, top_k, top_p)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {describe(generator)}")

    def draw(log_probs: Tensor) -> Tensor:
        probs = filter_log_probs(log_probs, temperature=temperature, top_k=top_k, top_p=top_p)
        return torch.multinomial(probs.exp(), 1, generator=generator).squeeze(1)

    return _decode(step, state, bos, eos, max_len, min_len, no_repeat_ngram_size, pad, draw)


def stream(
    step: Step,
    state: Any,
    prompt: Sequence[int] | Tensor,
    *,
    max_new_tokens: int | None = None,
    eos: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """Generate from a prompt one token at a time, for a language model with one sequence.

    The prompt's tokens go through ``step`` one by one (the first is usually ``bos``), then each
    new token is yielded as soon as it is chosen and fed back when the next one is asked for.
    The state is carried, so each token costs one step call on one row: ``O(1)`` in the length
    generated so far, as long as the step itself is (a recurrent model is). The generator is
    lazy: nothing runs before the first ``next()``, and stopping early costs nothing more.

    Args:
        step: as for :func:`greedy`, with one row.
        state: as for :func:`greedy`, with one row: the state for the start of the prompt.
        prompt: a non-empty list or 1-D int64 tensor of token ids.
        max_new_tokens: stop after yielding this many tokens (``None``: only ``eos`` stops).
        eos: when given, yielding it ends the stream (it is yielded, so the caller can tell an
            end of sequence from a cut).
        do_sample: draw the tokens (with ``temperature``, ``top_k``, ``top_p`` and ``generator`` as
            in :func:`sample`) instead of taking the most likely one.
    """
    if isinstance(prompt, Tensor):
        if prompt.dtype != torch.int64 or prompt.dim() != 1:
            raise TypeError(
                f"prompt must be a 1-D int64 tensor or a list of ints, got {describe(prompt)}"
            )
        ids = [int(v) for v in prompt.tolist()]
    elif isinstance(prompt, (list, tuple)):
        ids = [token_id(f"prompt[{i}]", v) for i, v in enumerate(prompt)]
    else:
        raise TypeError(
            f"prompt must be a 1-D int64 tensor or a list of ints, got {describe(prompt)}"
        )
    if not ids:
        raise ValueError("prompt must hold at least one token (usually bos), got an empty prompt")
    if min(ids) < 0:
        raise ValueError(f"prompt must hold token ids >= 0, got {min(ids)}")
    if max_new_tokens is not None:
        max_new_tokens = _checks.positive_int("max_new_tokens", max_new_tokens)
    if eos is not None:
        eos = token_id("eos", eos)
    _checks.boolean("do_sample", do_sample)
    _sampling_args(temperature, top_k, top_p)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {describe(generator)}")
    first = start_tokens(ids[0], state)
    if first.shape[0] != 1:
        raise ValueError(
            f"state must have one row (stream generates one sequence), got {first.shape[0]}"
        )
    return _stream(
        step,
        state,
        ids,
        first.device,
        max_new_tokens,
        eos,
        do_sample,
        temperature,
        top_k,
        top_p,
        generator,
    )


def _stream(
    step: Step,
    state: Any,
    ids: list[int],
    device: torch.device,
    max_new_tokens: int | None,
    eos: int | None,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> Iterator[int]:
    call = StepCaller(step, {"prompt": max(ids)} | ({} if eos is None else {"eos": eos}))
    log_probs: Tensor | None = None
    for token in ids:
        log_probs, state, _ = call(torch.tensor([token], device=device), state)
    produced = 0
    while max_new_tokens is None or produced < max_new_tokens:
        assert log_probs is not None
        if do_sample:
            probs = filter_log_probs(log_probs, temperature=temperature, top_k=top_k, top_p=top_p)
            token = int(torch.multinomial(probs.exp(), 1, generator=generator))
        else:
            token = int(log_probs.argmax(dim=-1))
        yield token
        produced += 1
        if token == eos or (max_new_tokens is not None and produced >= max_new_tokens):
            return
        log_probs, state, _ = call(torch.tensor([token], device=device), state)
