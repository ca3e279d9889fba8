"""Beam search over a step function, batched over sequences and beams at once.

The batch of ``B`` sequences is expanded into ``N = B * K`` rows (row ``b * K + k`` is beam ``k``
of sequence ``b``), and each step is one call of the step function on all rows, one ``topk`` over
``(B, K * V)`` candidate scores and one reordering of the state: there is no Python loop over
the batch or the beams.

The rules, in the form of Wu et al. (2016, GNMT), fairseq and most NMT toolkits:

* **Ranking.** Hypotheses compete on their raw sum of log-probabilities. Penalties (length,
  coverage) only score *finished* hypotheses, because they are defined for complete sequences.
* **Finishing.** At each step the ``K * V`` extensions of the ``K`` alive hypotheses are ranked.
  An extension by ``eos`` that ranks among the first ``K`` (it would have taken a beam) is moved to
  the finished list with its penalised score; the next ``K`` alive hypotheses are the ``K`` best
  extensions by any other token. With ``K = 1`` this is exactly greedy decoding.
* **Stopping.** A sequence is done when it holds ``n_best`` finished hypotheses and the worst of
  them scores at least an upper bound of what any alive hypothesis can still reach: its log-prob
  can only fall (log-probabilities are <= 0), the length penalty is largest at ``max_len`` and the
  coverage penalty is <= 0, so the bound is ``best_alive_logprob / lp(max_len)``. Stopping there
  never changes the result; it only saves steps. Otherwise the search runs to ``max_len``, where
  the alive hypotheses are finished as they are (without ``eos``).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import _checks
from .._checks import describe
from ._common import Step, StepCaller, check_lengths, constrain, start_tokens, token_id
from .state import index_state, repeat_state

#: Values of ``beam_search(length_penalty=...)``.
LENGTH_PENALTIES = ("none", "average", "gnmt")


@dataclass(frozen=True)
class BeamOutput:
    """The ``n_best`` hypotheses of each sequence, best first.

    Attributes:
        tokens: ``(B, n_best, T)`` int64, generated tokens (start token excluded), padded with
            ``pad``; ``T`` is the longest returned length.
        lengths: ``(B, n_best)`` int64, tokens per hypothesis, ``eos`` included when generated.
        scores: ``(B, n_best)``, the score the hypotheses are ranked by:
            ``log_probs / lp(length) + cp(coverage)``.
        log_probs: ``(B, n_best)``, the raw sum of the model's log-probabilities.

    When fewer than ``n_best`` distinct hypotheses exist (a tiny vocabulary and ``max_len``), the
    missing entries have score ``-inf`` and length 0.
    """

    tokens: Tensor
    lengths: Tensor
    scores: Tensor
    log_probs: Tensor


def length_divisor(lengths: Tensor | int, kind: str, alpha: float = 0.6) -> Tensor:
    """The length penalty ``lp(len)`` that a finished hypothesis's log-prob is divided by.

    ``'none'``: 1 (raw log-prob, which favours short sequences). ``'average'``: ``len``
    (per-token log-prob, length normalisation). ``'gnmt'``: ``((5 + len) / 6) ** alpha`` (Wu et
    al. 2016), between the two: ``alpha = 0`` is ``'none'``, larger ``alpha`` favours longer
    sequences more. ``len`` counts the generated tokens, ``eos`` included.
    """
    _checks.choice("length_penalty", kind, LENGTH_PENALTIES)
    length = torch.as_tensor(lengths, dtype=torch.float64)
    if kind == "none":
        return torch.ones_like(length)
    if kind == "average":
        return length
    return ((5.0 + length) / 6.0) ** alpha


def coverage_score(coverage: Tensor, beta: float) -> Tensor:
    """The GNMT coverage penalty ``cp = beta * sum_i log(min(c_i, 1))`` of coverage ``(..., S)``
    (``c_i``: the attention source position ``i`` received over all steps), summed over ``i``.

    It is <= 0 and rewards hypotheses that attended every source position at least once in total.
    Positions whose coverage is exactly 0 are left out of the sum: a softmax gives every valid
    position a positive weight, so an exact 0 is a padded position (masked out by the attention),
    which must not send the score to ``-inf``.
    """
    covered = coverage > 0
    logs = torch.log(torch.clamp(coverage, max=1.0).masked_fill(~covered, 1.0))
    return beta * logs.sum(dim=-1)


def _non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a non-negative float, got {describe(value)}")
    if not float(value) >= 0.0:
        raise ValueError(f"{name} must be a non-negative float, got {value}")
    return float(value)


def beam_search(
    step: Step,
    state: Any,
    *,
    bos: int | Tensor,
    eos: int,
    beam_size: int,
    max_len: int,
    min_len: int = 0,
    n_best: int = 1,
    length_penalty: str = "none",
    alpha: float = 0.6,
    coverage_penalty: float = 0.0,
    no_repeat_ngram_size: int = 0,
    pad: int | None = None,
) -> BeamOutput:
    """Beam search for the most likely sequences under ``step`` (rules in :mod:`.beam`).

    Args:
        step: as in :func:`~lstmkit.decode.greedy`; it must return normalised log-probabilities
            (``log_softmax``), which the stopping rule relies on.
        state: as in :func:`~lstmkit.decode.greedy`.
        bos: as in :func:`~lstmkit.decode.greedy`.
        eos: as in :func:`~lstmkit.decode.greedy`.
        max_len: as in :func:`~lstmkit.decode.greedy`.
        min_len: as in :func:`~lstmkit.decode.greedy`.
        no_repeat_ngram_size: as in :func:`~lstmkit.decode.greedy`.
        pad: as in :func:`~lstmkit.decode.greedy`.
        beam_size: ``K``, the alive hypotheses kept per sequence.
        n_best: how many finished hypotheses to return per sequence (``<= beam_size``).
        length_penalty: ``'none'``, ``'average'`` or ``'gnmt'`` (see :func:`length_divisor`),
            with exponent ``alpha`` for ``'gnmt'``.
        coverage_penalty: ``beta`` of the GNMT coverage penalty (see :func:`coverage_score`);
            when > 0, ``step`` must return its attention weights ``(N, S)`` as a third value.
    """
    eos = token_id("eos", eos)
    pad = eos if pad is None else token_id("pad", pad)
    max_len, min_len = check_lengths(max_len, min_len)
    K = _checks.positive_int("beam_size", beam_size)
    n_best = _checks.positive_int("n_best", n_best)
    if n_best > K:
        raise ValueError(f"n_best must be <= beam_size = {K}, got {n_best}")
    kind = _checks.choice("length_penalty", length_penalty, LENGTH_PENALTIES)
    alpha = _non_negative("alpha", alpha)
    beta = _non_negative("coverage_penalty", coverage_penalty)
    ngram = _checks.positive_int("no_repeat_ngram_size", no_repeat_ngram_size, allow_zero=True)

    starts = start_tokens(bos, state)
    B = starts.shape[0]
    N = B * K
    device = starts.device
    ids = {"eos": eos, "pad": pad}
    if B:
        ids["bos"] = int(starts.max())
    call = StepCaller(step, ids)

    state = repeat_state(state, K)
    tokens = starts.repeat_interleave(K)
    history = tokens[:, None] if ngram else None
    alive_seq = torch.full((N, max_len), pad, dtype=torch.int64, device=device)
    first_row = (torch.arange(B, device=device) * K)[:, None]  # (B, 1)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    coverage: Tensor | None = None
    # created at the first step, in the dtype of the step's log_probs
    alive_lp = fin_score = fin_lp = torch.empty(0)
    fin_seq = torch.empty(0, dtype=torch.int64)
    fin_len = torch.zeros(B, n_best, dtype=torch.int64, device=device)

    def divisor(length: int, like: Tensor) -> Tensor:
        return length_divisor(length, kind, alpha).to(dtype=like.dtype, device=like.device)

    def merge(score: Tensor, lp: Tensor, seq: Tensor, length: int) -> None:
        """Keep the ``n_best`` best of the finished list and the new finished candidates; on
        equal scores the older hypothesis stays first (stable sort)."""
        nonlocal fin_score, fin_lp, fin_seq, fin_len
        all_score = torch.cat([fin_score, score], dim=1)
        order = all_score.argsort(dim=1, descending=True, stable=True)[:, :n_best]
        new_len = torch.full(score.shape, length, dtype=torch.int64, device=device)
        fin_score = all_score.gather(1, order)
        fin_lp = torch.cat([fin_lp, lp], dim=1).gather(1, order)
        fin_len = torch.cat([fin_len, new_len], dim=1).gather(1, order)
        seqs = torch.cat([fin_seq, seq], dim=1)
        fin_seq = seqs.gather(1, order[:, :, None].expand(-1, -1, max_len))
        fin_len = fin_len.masked_fill(torch.isinf(fin_score), 0)

    stopped = False
    for t in range(max_len):
        log_probs, state, attention = call(tokens, state)
        if beta > 0:
            if attention is None:
                raise ValueError(
                    "coverage_penalty > 0 needs the attention weights: step must return "
                    "(log_probs, new_state, attention) with attention of shape (N, source_len)"
                )
            if coverage is not None and coverage.shape != attention.shape:
                raise ValueError(
                    f"attention returned by step changed shape from {tuple(coverage.shape)} to "
                    f"{tuple(attention.shape)} between steps"
                )
            coverage = attention if coverage is None else coverage + attention
        if t == 0:
            alive_lp = torch.full((B, K), float("-inf"), dtype=log_probs.dtype, device=device)
            alive_lp[:, 0] = 0.0  # one live hypothesis per sequence, or beams would duplicate
            fin_score = torch.full((B, n_best), float("-inf"), dtype=log_probs.dtype, device=device)
            fin_lp = fin_score.clone()
            fin_seq = torch.full((B, n_best, max_len), pad, dtype=torch.int64, device=device)
        vocab = log_probs.shape[1]
        allowed = constrain(
            log_probs, t, eos=eos, min_len=min_len, no_repeat_ngram_size=ngram, history=history
        )
        candidates = (alive_lp.reshape(N, 1) + allowed).reshape(B, K * vocab)
        candidates = candidates.masked_fill(done[:, None], float("-inf"))
        # at most K of the best 2K are eos (one per beam), so K other tokens are always among them
        top_score, top_index = candidates.topk(min(2 * K, K * vocab), dim=1)
        rows = first_row + torch.div(top_index, vocab, rounding_mode="floor")  # (B, 2K)
        token = top_index % vocab
        is_eos = token == eos

        ranked_first = torch.arange(top_score.shape[1], device=device) < K
        finishing = is_eos & ranked_first & torch.isfinite(top_score)
        if bool(finishing.any()):
            score = top_score / divisor(t + 1, top_score)
            if coverage is not None:
                score = score + coverage_score(coverage[rows], beta)
            seq = alive_seq[rows]  # (B, 2K, max_len)
            seq[:, :, t] = eos
            merge(score.masked_fill(~finishing, float("-inf")), top_score, seq, t + 1)

        alive_key = top_score.masked_fill(is_eos, float("-inf"))
        keep = alive_key.argsort(dim=1, descending=True, stable=True)[:, :K]
        alive_lp = alive_key.gather(1, keep)
        chosen_rows = rows.gather(1, keep).reshape(N)
        tokens = token.gather(1, keep).reshape(N)
        state = index_state(state, chosen_rows)
        alive_seq = alive_seq[chosen_rows]
        alive_seq[:, t] = tokens
        if history is not None:
            history = torch.cat([history[chosen_rows], tokens[:, None]], dim=1)
        if coverage is not None:
            coverage = coverage[chosen_rows]

        bound = alive_lp[:, 0] / divisor(max_len, alive_lp)
        done = done | (fin_score[:, -1] >= bound)
        if bool(done.all()):
            stopped = True
            break

    if not stopped:  # max_len reached: the alive hypotheses end here, without eos
        score = alive_lp / divisor(max_len, alive_lp)
        if coverage is not None:
            score = score + coverage_score(coverage, beta).reshape(B, K)
        score = score.masked_fill(done[:, None] | torch.isinf(alive_lp), float("-inf"))
        merge(score, alive_lp, alive_seq.reshape(B, K, max_len), max_len)

    width = int(fin_len.max()) if fin_len.numel() else 0
    return BeamOutput(fin_seq[:, :, :width], fin_len, fin_score, fin_lp)
