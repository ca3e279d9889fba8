"""Tests of lstmkit.decode: greedy, sampling, beam search and streaming over a step function.

Most tests use a *prefix model*: a step function whose next-token distribution is a fixed random
function of the whole prefix (the state is an integer code of the prefix, which indexes a table
of log-probabilities). Every sequence then has a known probability, so beam search can be
checked against brute-force enumeration of all sequences up to ``max_len``.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
from torch import Tensor

from lstmkit.decode import (
    beam_search,
    coverage_score,
    filter_log_probs,
    greedy,
    index_state,
    length_divisor,
    map_state,
    repeat_state,
    sample,
    state_batch_size,
    stream,
)

EOS = 0
BOS = 1  # the start token; the models below also allow it as an ordinary token


class PrefixModel:
    """``tables[item]`` maps a prefix code to log-probs over ``vocab`` tokens and to attention
    weights over ``source_len`` positions. The state is ``(code, item)``: the code of the prefix
    (a base-``vocab + 1`` number modulo a prime, so unique for short prefixes and a hash for long
    ones) and which table the row uses (one per batch sequence)."""

    def __init__(self, vocab: int, items: int = 1, source_len: int = 3, sharp: float = 2.0) -> None:
        self.vocab = vocab
        self.size = 4099
        gen = torch.Generator().manual_seed(1234)
        logits = sharp * torch.randn(items, self.size, vocab, generator=gen, dtype=torch.float64)
        self.tables = torch.log_softmax(logits, dim=-1)
        att = torch.randn(items, self.size, source_len, generator=gen, dtype=torch.float64)
        self.attention = torch.softmax(att, dim=-1)
        self.calls: list[int] = []

    def state(self, items: list[int] | None = None) -> tuple[Tensor, Tensor]:
        items = [0] if items is None else items
        return torch.zeros(len(items), dtype=torch.int64), torch.tensor(items)

    def _advance(self, tokens: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        code, item = state
        new_code = (code * (self.vocab + 1) + tokens + 1) % self.size
        self.calls.append(tokens.shape[0])
        return new_code, item

    def step(self, tokens: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Any]:
        code, item = self._advance(tokens, state)
        return self.tables[item, code], (code, item)

    def step_with_attention(
        self, tokens: Tensor, state: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Any, Tensor]:
        code, item = self._advance(tokens, state)
        return self.tables[item, code], (code, item), self.attention[item, code]

    def path(self, sequence: list[int], item: int = 0) -> tuple[float, Tensor]:
        """Log-prob of generating ``sequence`` after BOS, and the summed attention."""
        state = self.state([item])
        token = torch.tensor([BOS])
        total, coverage = 0.0, torch.zeros(self.attention.shape[-1], dtype=torch.float64)
        for nxt in sequence:
            lp, state, att = self.step_with_attention(token, state)
            total += float(lp[0, nxt])
            coverage = coverage + att[0]
            token = torch.tensor([nxt])
        return total, coverage


def repeats_ngram(seq: list[int], n: int) -> bool:
    grams = [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]
    return len(grams) != len(set(grams))


def brute_force(
    model: PrefixModel,
    max_len: int,
    *,
    kind: str = "none",
    alpha: float = 0.6,
    beta: float = 0.0,
    min_len: int = 0,
    ngram: int = 0,
    item: int = 0,
) -> list[tuple[float, list[int]]]:
    """Every sequence beam search may return, scored independently of lstmkit.decode and
    sorted best first: non-eos tokens then eos, or max_len non-eos tokens."""
    others = [v for v in range(model.vocab) if v != EOS]
    candidates: list[list[int]] = []
    for body_len in range(max_len + 1):
        for body in itertools.product(others, repeat=body_len):
            if body_len < max_len and body_len >= min_len:
                candidates.append([*body, EOS])
            if body_len == max_len:
                candidates.append(list(body))
    scored = []
    for seq in candidates:
        if ngram and repeats_ngram([BOS, *seq], ngram):
            continue
        logp, coverage = model.path(seq, item)
        length = len(seq)
        divisor = {"none": 1.0, "average": length, "gnmt": ((5 + length) / 6) ** alpha}[kind]
        penalty = beta * sum(math.log(min(c, 1.0)) for c in coverage.tolist())
        scored.append((logp / divisor + penalty, seq))
    scored.sort(key=lambda pair: -pair[0])
    return scored


def rows(tokens: Tensor, lengths: Tensor) -> list[list[int]]:
    return [tokens[i, : int(lengths[i])].tolist() for i in range(tokens.shape[0])]


# --------------------------------------------------------------------------------------------
# state helpers


class Memory(NamedTuple):
    keys: Tensor
    mask: Tensor


def test_state_helpers_map_nested_structures_and_keep_types() -> None:
    state = {
        "rnn": (torch.arange(3.0)[:, None].expand(3, 2), [torch.arange(3)]),
        "memory": Memory(torch.arange(3.0)[:, None, None].expand(3, 4, 2), torch.ones(3, 4)),
        "empty": None,
    }
    assert state_batch_size(state) == 3
    picked = index_state(state, torch.tensor([2, 2, 0]))
    assert isinstance(picked["memory"], Memory)
    assert picked["empty"] is None
    assert picked["rnn"][0][:, 0].tolist() == [2.0, 2.0, 0.0]
    assert picked["rnn"][1][0].tolist() == [2, 2, 0]
    assert picked["memory"].keys[:, 0, 0].tolist() == [2.0, 2.0, 0.0]
    repeated = repeat_state(state, 2)
    assert repeated["rnn"][1][0].tolist() == [0, 0, 1, 1, 2, 2]
    assert state_batch_size(None) is None
    doubled = map_state(lambda t: t * 2, (torch.ones(2), None))
    assert doubled[0].tolist() == [2.0, 2.0] and doubled[1] is None


def test_state_helpers_reject_bad_leaves_and_mismatched_rows() -> None:
    with pytest.raises(
        TypeError,
        match=r"state\[1\]\['x'\] must be a tensor, None, or a tuple/list/dict.*got 3 \(int\)",
    ):
        state_batch_size((torch.ones(2), {"x": 3}))
    with pytest.raises(
        ValueError, match=r"same first dimension.*got 2 for state\[0\] and 3 for state\[1\]\.mask"
    ):
        state_batch_size((torch.ones(2), Memory(torch.ones(2, 1), torch.ones(3))))
    with pytest.raises(ValueError, match=r"state\[0\] must have the rows .* got a 0-d tensor"):
        state_batch_size((torch.tensor(1.0),))


# --------------------------------------------------------------------------------------------
# greedy and eos handling


def test_greedy_matches_step_by_step_argmax() -> None:
    model = PrefixModel(vocab=4)
    out = greedy(model.step, model.state(), bos=BOS, eos=EOS, max_len=6)
    # replay: argmax at each step until eos
    state, token, expected, total = model.state(), torch.tensor([BOS]), [], 0.0
    for _ in range(6):
        lp, state = model.step(token, state)
        nxt = int(lp.argmax())
        expected.append(nxt)
        total += float(lp[0, nxt])
        if nxt == EOS:
            break
        token = torch.tensor([nxt])
    assert rows(out.tokens, out.lengths) == [expected]
    assert out.scores.tolist() == pytest.approx([total], abs=1e-12)


def scripted_step(scripts: list[list[int]], vocab: int = 5) -> Callable[..., Any]:
    """Row ``i`` emits ``scripts[i][t]`` at step ``t`` with probability 0.9 (state: the step)."""

    def step(tokens: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        lp = torch.full((tokens.shape[0], vocab), math.log(0.1 / (vocab - 1)))
        for i, script in enumerate(scripts):
            lp[i, script[min(int(t[i]), len(script) - 1)]] = math.log(0.9)
        return lp, t + 1

    return step


def test_eos_ends_each_row_pads_after_it_and_stops_scoring() -> None:
    step = scripted_step([[2, EOS, 3, 3], [2, 3, 4, EOS], [3, 3, 3, 3]])
    out = greedy(step, torch.zeros(3, dtype=torch.int64), bos=BOS, eos=EOS, max_len=5, pad=4)
    assert out.lengths.tolist() == [2, 4, 5]
    assert out.tokens.tolist() == [[2, EOS, 4, 4, 4], [2, 3, 4, EOS, 4], [3, 3, 3, 3, 3]]
    assert out.scores.tolist() == pytest.approx([math.log(0.9) * n for n in (2, 4, 5)])


def test_greedy_stops_calling_step_once_every_row_ended() -> None:
    calls = []
    base = scripted_step([[2, EOS], [EOS]])

    def step(tokens: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        calls.append(tokens.tolist())
        return base(tokens, t)

    out = greedy(step, torch.zeros(2, dtype=torch.int64), bos=BOS, eos=EOS, max_len=50)
    assert out.lengths.tolist() == [2, 1]
    assert calls == [[BOS, BOS], [2, EOS]]  # the ended row is fed eos; no third call


def test_min_len_forbids_eos_until_enough_tokens() -> None:
    step = scripted_step([[EOS, EOS, EOS, EOS, EOS]])
    state = torch.zeros(1, dtype=torch.int64)
    assert greedy(step, state, bos=BOS, eos=EOS, max_len=6).lengths.tolist() == [1]
    out = greedy(step, state, bos=BOS, eos=EOS, max_len=6, min_len=3)
    assert out.lengths.tolist() == [4]
    assert out.tokens[0, 3].item() == EOS and EOS not in out.tokens[0, :3].tolist()
    beam = beam_search(step, state, bos=BOS, eos=EOS, max_len=6, min_len=3, beam_size=3, n_best=3)
    assert (beam.lengths >= 4).all()
    model = PrefixModel(vocab=3)
    for min_len in range(4):
        beam = beam_search(
            model.step,
            model.state(),
            bos=BOS,
            eos=EOS,
            beam_size=24,
            max_len=4,
            min_len=min_len,
            n_best=5,
        )
        best = brute_force(model, 4, min_len=min_len)[:5]
        assert rows(beam.tokens[0], beam.lengths[0]) == [seq for _, seq in best]


# --------------------------------------------------------------------------------------------
# beam search


def test_beam_of_one_equals_greedy() -> None:
    model = PrefixModel(vocab=5, items=6, sharp=1.0)
    state = model.state(list(range(6)))
    g = greedy(model.step, state, bos=BOS, eos=EOS, max_len=8)
    b = beam_search(model.step, state, bos=BOS, eos=EOS, max_len=8, beam_size=1)
    assert rows(b.tokens[:, 0], b.lengths[:, 0]) == rows(g.tokens, g.lengths)
    torch.testing.assert_close(b.scores[:, 0], g.scores, rtol=0, atol=1e-12)
    # the test is not vacuous: some rows end with eos, some at max_len
    assert {int(n) for n in g.lengths} > {8}


@pytest.mark.parametrize(
    ("kind", "alpha", "beta"),
    [
        ("none", 0.6, 0.0),
        ("average", 0.6, 0.0),
        ("gnmt", 0.6, 0.0),
        ("gnmt", 2.0, 0.5),
        ("none", 0.6, 1.0),
    ],
)
def test_exhaustive_beam_finds_the_brute_force_n_best(kind: str, alpha: float, beta: float) -> None:
    model = PrefixModel(vocab=3, sharp=1.0)
    # 2 non-eos tokens, max_len 4: at most 2**3 alive prefixes and 24 extensions per step, so a
    # beam of 24 keeps every prefix and finishes every eos extension
    out = beam_search(
        model.step_with_attention,
        model.state(),
        bos=BOS,
        eos=EOS,
        beam_size=24,
        max_len=4,
        n_best=10,
        length_penalty=kind,
        alpha=alpha,
        coverage_penalty=beta,
    )
    best = brute_force(model, 4, kind=kind, alpha=alpha, beta=beta)[:10]
    assert rows(out.tokens[0], out.lengths[0]) == [seq for _, seq in best]
    assert out.scores[0].tolist() == pytest.approx([s for s, _ in best], abs=1e-9)
    for logp, seq in zip(
        out.log_probs[0].tolist(), rows(out.tokens[0], out.lengths[0]), strict=True
    ):
        assert logp == pytest.approx(model.path(seq)[0], abs=1e-9)


def test_n_best_lists_are_sorted_distinct_and_padded() -> None:
    model = PrefixModel(vocab=6, items=3, sharp=1.0)
    out = beam_search(
        model.step,
        model.state([0, 1, 2]),
        bos=BOS,
        eos=EOS,
        beam_size=5,
        max_len=7,
        n_best=5,
        length_penalty="average",
        pad=5,
    )
    assert out.tokens.shape[:2] == (3, 5)
    for b in range(3):
        scores = out.scores[b].tolist()
        assert scores == sorted(scores, reverse=True) and math.isfinite(scores[-1])
        seqs = rows(out.tokens[b], out.lengths[b])
        assert len({tuple(s) for s in seqs}) == 5
        for seq, n in zip(out.tokens[b].tolist(), out.lengths[b].tolist(), strict=True):
            assert all(tok == 5 for tok in seq[n:])
            assert (seq[n - 1] == EOS) == (EOS in seq[:n])


def test_batched_beam_search_equals_one_sequence_at_a_time() -> None:
    model = PrefixModel(vocab=5, items=4, sharp=1.0)
    kwargs: dict[str, Any] = dict(
        bos=BOS,
        eos=EOS,
        beam_size=4,
        max_len=6,
        n_best=3,
        length_penalty="gnmt",
        coverage_penalty=0.2,
        no_repeat_ngram_size=2,
    )
    batched = beam_search(model.step_with_attention, model.state([0, 1, 2, 3]), **kwargs)
    for item in range(4):
        alone = beam_search(model.step_with_attention, model.state([item]), **kwargs)
        assert rows(alone.tokens[0], alone.lengths[0]) == rows(
            batched.tokens[item], batched.lengths[item]
        )
        torch.testing.assert_close(alone.scores[0], batched.scores[item], rtol=0, atol=1e-12)
    g = greedy(model.step, model.state([0, 1, 2, 3]), bos=BOS, eos=EOS, max_len=6)
    for item in range(4):
        one = greedy(model.step, model.state([item]), bos=BOS, eos=EOS, max_len=6)
        assert rows(one.tokens, one.lengths) == rows(
            g.tokens[item : item + 1], g.lengths[item : item + 1]
        )


def hand_made_step(tokens: Tensor, depth: Tensor) -> tuple[Tensor, Tensor]:
    """Root: eos with log-prob -1.0, token 1 with -0.6, token 2 with the rest. After 1: eos with
    -0.6, then 1 and 2 share the rest. After 2: uniform. So [eos] has log-prob -1.0 over one
    token and [1, eos] has -1.2 over two."""
    rows_ = []
    for tok, d in zip(tokens.tolist(), depth.tolist(), strict=True):
        if d == 0:
            p = [math.exp(-1.0), math.exp(-0.6)]
        elif tok == 1:
            p = [math.exp(-0.6), (1 - math.exp(-0.6)) / 2]
        else:
            p = [1 / 3, 1 / 3]
        rows_.append([p[0], p[1], 1 - p[0] - p[1]])
    return torch.tensor(rows_, dtype=torch.float64).log(), depth + 1


@pytest.mark.parametrize(
    ("kind", "alpha", "winner"),
    [
        ("none", 0.0, [EOS]),
        ("average", 0.0, [1, EOS]),
        ("gnmt", 1.0, [EOS]),
        ("gnmt", 2.0, [1, EOS]),
    ],
)
def test_length_penalty_changes_the_ranking_as_the_formula_says(
    kind: str, alpha: float, winner: list[int]
) -> None:
    short = -1.0 / float(length_divisor(1, kind, alpha))
    long = -1.2 / float(length_divisor(2, kind, alpha))
    expected = {
        "none": (-1.0, -1.2),
        "average": (-1.0, -0.6),
        "gnmt": (-1.0, -1.2 / (7 / 6) ** alpha),
    }[kind]
    assert (short, long) == pytest.approx(expected)
    assert (long > short) == (winner == [1, EOS])
    out = beam_search(
        hand_made_step,
        torch.zeros(1, dtype=torch.int64),
        bos=BOS,
        eos=EOS,
        beam_size=3,
        max_len=2,
        n_best=2,
        length_penalty=kind,
        alpha=alpha,
    )
    assert rows(out.tokens[0], out.lengths[0])[0] == winner
    assert out.scores[0, 0].item() == pytest.approx(max(short, long))


def test_length_divisor_and_coverage_score_values() -> None:
    lengths = torch.tensor([1, 4, 10])
    assert length_divisor(lengths, "none").tolist() == [1.0, 1.0, 1.0]
    assert length_divisor(lengths, "average").tolist() == [1.0, 4.0, 10.0]
    assert length_divisor(lengths, "gnmt", 0.5).tolist() == pytest.approx([1.0, 1.5**0.5, 2.5**0.5])
    coverage = torch.tensor([[0.5, 2.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    expected = [0.3 * math.log(0.5), 0.0]  # over-coverage is not rewarded; exact 0 is padding
    assert coverage_score(coverage, 0.3).tolist() == pytest.approx(expected)
    with pytest.raises(
        ValueError, match="length_penalty must be one of 'none', 'average', 'gnmt', got 'avg'"
    ):
        length_divisor(lengths, "avg")


def repetitive_step(tokens: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """Strongly prefers the cycle 2 -> 3 -> 2 -> 3 ..., so that n-grams repeat unless blocked;
    eos is unlikely."""
    lp = torch.full((tokens.shape[0], 6), -6.0, dtype=torch.float64)
    nxt = torch.where(tokens == 2, 3, 2)
    lp.scatter_(1, nxt[:, None], -0.05)
    lp[:, 4] = -3.0
    lp[:, 5] = -3.5
    return torch.log_softmax(lp, dim=-1), state


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_never_repeats_an_ngram(n: int) -> None:
    state = torch.zeros(2)
    plain = greedy(repetitive_step, state, bos=BOS, eos=EOS, max_len=12)
    assert repeats_ngram([BOS, *rows(plain.tokens, plain.lengths)[0]], n)  # the test can fail
    outs = [
        greedy(repetitive_step, state, bos=BOS, eos=EOS, max_len=12, no_repeat_ngram_size=n),
        sample(
            repetitive_step,
            state,
            bos=BOS,
            eos=EOS,
            max_len=12,
            no_repeat_ngram_size=n,
            generator=torch.Generator().manual_seed(0),
        ),
    ]
    beam = beam_search(
        repetitive_step,
        state,
        bos=BOS,
        eos=EOS,
        max_len=12,
        beam_size=4,
        n_best=4,
        no_repeat_ngram_size=n,
    )
    seqs = [s for o in outs for s in rows(o.tokens, o.lengths)]
    seqs += [s for b in range(2) for s in rows(beam.tokens[b], beam.lengths[b]) if s]
    assert len(seqs) == 12
    for seq in seqs:
        assert not repeats_ngram([BOS, *seq], n), seq


def test_ngram_blocking_matches_brute_force() -> None:
    model = PrefixModel(vocab=3, sharp=1.0)
    out = beam_search(
        model.step,
        model.state(),
        bos=BOS,
        eos=EOS,
        beam_size=24,
        max_len=4,
        n_best=6,
        no_repeat_ngram_size=2,
    )
    best = brute_force(model, 4, ngram=2)[:6]
    assert rows(out.tokens[0], out.lengths[0]) == [seq for _, seq in best]


def test_beam_search_stops_early_when_the_best_cannot_be_beaten() -> None:
    model = PrefixModel(vocab=4, sharp=3.0)
    beam_search(model.step, model.state(), bos=BOS, eos=EOS, beam_size=2, max_len=30)
    assert len(model.calls) < 30
    assert all(n == 2 for n in model.calls)  # one batched call on B * K rows per step


# --------------------------------------------------------------------------------------------
# sampling


def test_top_k_one_sampling_equals_greedy() -> None:
    model = PrefixModel(vocab=5, items=5, sharp=1.0)
    state = model.state(list(range(5)))
    g = greedy(model.step, state, bos=BOS, eos=EOS, max_len=8)
    s = sample(
        model.step,
        state,
        bos=BOS,
        eos=EOS,
        max_len=8,
        top_k=1,
        temperature=3.0,
        generator=torch.Generator().manual_seed(5),
    )
    assert torch.equal(s.tokens, g.tokens) and torch.equal(s.lengths, g.lengths)
    torch.testing.assert_close(s.scores, g.scores, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("top_p", "kept"),
    [
        (0.5, {3}),
        (0.6, {3, 0}),
        (0.75, {3, 0}),
        (0.76, {3, 0, 2}),
        (0.9375, {3, 0, 2}),
        (0.95, {0, 1, 2, 3}),
        (1.0, {0, 1, 2, 3}),
    ],
)
def test_top_p_keeps_the_smallest_set_reaching_p(top_p: float, kept: set[int]) -> None:
    # sorted: 0.5 (token 3), 0.25 (0), 0.1875 (2), 0.0625 (1); cumulative 0.5, 0.75, 0.9375, 1
    probs = torch.tensor([[0.25, 0.0625, 0.1875, 0.5]], dtype=torch.float64)
    filtered = filter_log_probs(probs.log(), top_p=top_p)
    assert set(torch.isfinite(filtered[0]).nonzero().flatten().tolist()) == kept
    mass = sum(probs[0, i].item() for i in kept)
    expected = torch.tensor(
        [[probs[0, i].item() / mass if i in kept else 0.0 for i in range(4)]], dtype=torch.float64
    )
    torch.testing.assert_close(filtered.exp(), expected)


def test_temperature_and_top_k_filtering() -> None:
    log_probs = torch.tensor([[0.1, 0.2, 0.3, 0.4]]).log()
    hot = filter_log_probs(log_probs, temperature=2.0).exp()
    root = torch.tensor([0.1, 0.2, 0.3, 0.4]).sqrt()
    torch.testing.assert_close(hot[0], root / root.sum())
    top2 = filter_log_probs(log_probs, top_k=2).exp()
    torch.testing.assert_close(top2[0], torch.tensor([0.0, 0.0, 3 / 7, 4 / 7]))


def test_sampling_draws_from_the_filtered_distribution() -> None:
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])

    def step(tokens: Tensor, state: None) -> tuple[Tensor, None]:
        return probs.log().expand(tokens.shape[0], 4), None

    n = 20000
    out = sample(
        step,
        None,
        bos=torch.full((n,), 1),
        eos=EOS,
        max_len=1,
        temperature=2.0,
        generator=torch.Generator().manual_seed(3),
    )
    freq = torch.bincount(out.tokens[:, 0], minlength=4).double() / n
    target = probs.double().sqrt() / probs.double().sqrt().sum()
    sigma = (target * (1 - target) / n).sqrt()
    assert ((freq - target).abs() < 5 * sigma).all(), (freq, target)
    # the score is the model's log-prob of the drawn token, not the tempered one
    torch.testing.assert_close(out.scores, probs.log()[out.tokens[:, 0]])


def test_seeded_sampling_is_reproducible() -> None:
    model = PrefixModel(vocab=6, items=4, sharp=0.5)
    state = model.state([0, 1, 2, 3])

    def run(seed: int) -> Tensor:
        return sample(
            model.step,
            state,
            bos=BOS,
            eos=EOS,
            max_len=10,
            top_p=0.9,
            temperature=1.5,
            generator=torch.Generator().manual_seed(seed),
        ).tokens

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


# --------------------------------------------------------------------------------------------
# streaming


def test_stream_greedy_equals_greedy_and_costs_one_call_per_token() -> None:
    model = PrefixModel(vocab=5, sharp=1.0)
    g = greedy(model.step, model.state(), bos=BOS, eos=EOS, max_len=12)
    model.calls.clear()
    tokens = list(stream(model.step, model.state(), [BOS], max_new_tokens=12, eos=EOS))
    assert tokens == rows(g.tokens, g.lengths)[0]
    # one call per prompt token and per yielded token except the last (never fed back)
    assert model.calls == [1] * len(tokens)


def test_stream_from_a_prompt_is_lazy_and_continues_the_prompt() -> None:
    model = PrefixModel(vocab=5, sharp=1.0)
    prompt = [BOS, 3, 2, 4]
    it = stream(model.step, model.state(), torch.tensor(prompt), max_new_tokens=3)
    assert model.calls == []  # nothing runs before the first next()
    first = next(it)
    assert len(model.calls) == 4
    rest = list(it)
    assert len(model.calls) == 6
    # the argmax continuation of the prompt, replayed by hand (no eos given: never stops early)
    state, expected = model.state(), []
    for i, token in enumerate([*prompt, first, *rest[:-1]]):
        lp, state = model.step(torch.tensor([token]), state)
        if i >= len(prompt) - 1:
            expected.append(int(lp.argmax()))
    assert [first, *rest] == expected


def test_stream_sampling_matches_sample_with_the_same_seed() -> None:
    model = PrefixModel(vocab=5, sharp=0.5)
    s = sample(
        model.step,
        model.state(),
        bos=BOS,
        eos=EOS,
        max_len=10,
        top_k=3,
        generator=torch.Generator().manual_seed(11),
    )
    streamed = list(
        stream(
            model.step,
            model.state(),
            [BOS],
            eos=EOS,
            max_new_tokens=10,
            do_sample=True,
            top_k=3,
            generator=torch.Generator().manual_seed(11),
        )
    )
    assert streamed == rows(s.tokens, s.lengths)[0]


# --------------------------------------------------------------------------------------------
# errors


def uniform_step(tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
    return torch.full((tokens.shape[0], 4), -math.log(4)), state


def test_argument_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"max_len must be a positive int, got 0"):
        greedy(uniform_step, None, bos=1, eos=0, max_len=0)
    with pytest.raises(ValueError, match=r"min_len must be <= max_len = 3, got 4"):
        greedy(uniform_step, None, bos=1, eos=0, max_len=3, min_len=4)
    with pytest.raises(
        TypeError, match=r"bos must be an int or a 1-D int64 tensor, got 1.0 \(float\)"
    ):
        greedy(uniform_step, None, bos=1.0, eos=0, max_len=3)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"bos must have one token per row of state: shape \(2,\), got \(3,\)"
    ):
        greedy(uniform_step, torch.zeros(2), bos=torch.tensor([1, 1, 1]), eos=0, max_len=3)
    with pytest.raises(ValueError, match=r"eos must be a token id below vocab_size 4, got 7"):
        greedy(uniform_step, None, bos=1, eos=7, max_len=3)
    with pytest.raises(ValueError, match=r"n_best must be <= beam_size = 2, got 3"):
        beam_search(uniform_step, None, bos=1, eos=0, max_len=3, beam_size=2, n_best=3)
    with pytest.raises(
        ValueError, match=r"length_penalty must be one of 'none', 'average', 'gnmt', got 'wu'"
    ):
        beam_search(uniform_step, None, bos=1, eos=0, max_len=3, beam_size=2, length_penalty="wu")
    with pytest.raises(ValueError, match=r"coverage_penalty > 0 needs the attention weights"):
        beam_search(uniform_step, None, bos=1, eos=0, max_len=3, beam_size=2, coverage_penalty=0.2)
    with pytest.raises(ValueError, match=r"top_p must be a float in \(0, 1\] or None, got 0.0"):
        sample(uniform_step, None, bos=1, eos=0, max_len=3, top_p=0.0)
    with pytest.raises(ValueError, match=r"temperature must be a positive float, got -1"):
        sample(uniform_step, None, bos=1, eos=0, max_len=3, temperature=-1)
    with pytest.raises(ValueError, match=r"prompt must hold at least one token"):
        stream(uniform_step, None, [])
    with pytest.raises(
        ValueError, match=r"state must have one row \(stream generates one sequence\), got 2"
    ):
        stream(uniform_step, torch.zeros(2), [1])


def test_wrong_step_outputs_are_reported() -> None:
    with pytest.raises(
        TypeError,
        match=r"step must return \(log_probs, new_state\) or \(log_probs, new_state, attention\)",
    ):
        greedy(lambda tok, s: torch.zeros(1, 4), None, bos=1, eos=0, max_len=3)  # type: ignore[arg-type, return-value]
    with pytest.raises(
        ValueError,
        match=r"log_probs returned by step must have shape \(N, vocab_size\) with N = 3 rows .* got \(3,\)",
    ):
        greedy(lambda tok, s: (torch.zeros(3), s), torch.zeros(3), bos=1, eos=0, max_len=3)
    with pytest.raises(
        TypeError, match=r"log_probs returned by step must be a floating-point tensor"
    ):
        greedy(
            lambda tok, s: (torch.zeros(1, 4, dtype=torch.int64), s), None, bos=1, eos=0, max_len=3
        )
    with pytest.raises(ValueError, match=r"new_state returned by step must have 2 rows .* got 1"):
        beam_search(
            lambda tok, s: (torch.full((2, 4), -math.log(4)), torch.zeros(1)),
            None,
            bos=1,
            eos=0,
            max_len=3,
            beam_size=2,
        )


# --------------------------------------------------------------------------------------------
# documentation

DOCS = Path(__file__).resolve().parents[1] / "docs" / "decoding.md"


def test_docs_examples_run_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    """The blocks of docs/decoding.md build on each other (the toy model is defined once), so
    they run in order in one namespace; each checks its own claims with asserts."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    assert len(blocks) >= 9
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), namespace)
    assert "[5, 0] -2.408" in capsys.readouterr().out
