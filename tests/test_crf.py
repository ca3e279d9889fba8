"""The linear-chain CRF against brute-force enumeration of every tag path.

Small cases (a handful of tags, up to five steps) make it possible to list all ``K**L`` paths
with ``itertools.product`` and compute the partition function, the best paths, the k best paths
and the marginals directly from the definition of the path score; the CRF's recursions must
reproduce them. Legality of BIO/BIOES paths is checked with rules written here independently of
the module's transition tables.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import pytest
import torch
from torch import Tensor

from lstmkit.nn.crf import (
    CRF,
    END,
    ILLEGAL_TRAINING_SCORE,
    PAD_TAG,
    START,
    TransitionConstraints,
    allowed_transitions,
)

BIO_TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
BIOES_TAGS = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "E-LOC", "S-LOC"]


# ---- helpers ----------------------------------------------------------------------------------


def randomise(crf: CRF, seed: int, integer: bool = False) -> CRF:
    """Random (or small-integer, to create exact ties) transition, start and end scores."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (crf.transitions, crf.start_transitions, crf.end_transitions):
            if integer:
                p.copy_(torch.randint(-1, 2, p.shape, generator=g).to(p.dtype))
            else:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return crf


def make_crf(num_tags: int, seed: int = 0, **kwargs: object) -> CRF:
    return randomise(CRF(num_tags, **kwargs).double(), seed)  # type: ignore[arg-type]


def masks_for(T: int, B: int, seed: int) -> Tensor:
    """(T, B) masks, each one contiguous run at a random place (possibly empty)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(T, B, dtype=torch.bool)
    for b in range(B):
        length = int(torch.randint(0, T + 1, (1,), generator=g))
        first = int(torch.randint(0, T - length + 1, (1,), generator=g))
        mask[first : first + length, b] = True
    return mask


def all_paths(
    crf: CRF, em: Tensor, mask: Tensor, b: int, legal: object = None
) -> tuple[list[tuple[int, ...]], Tensor]:
    """Every tag path of sequence ``b`` (time-major ``em`` and ``mask``) and its score by the
    definition S = start + emissions + transitions + end, optionally only the legal ones."""
    steps = mask[:, b].nonzero().flatten().tolist()
    K = crf.num_tags
    paths = list(itertools.product(range(K), repeat=len(steps)))
    if legal is not None:
        paths = [p for p in paths if legal(p)]  # type: ignore[operator]
    if not steps:
        return paths, em.new_zeros(len(paths))
    index = torch.tensor(paths)  # (P, L)
    e = em[steps, b]  # (L, K)
    score = e.gather(1, index.t()).sum(0)
    score = score + crf.start_transitions.detach()[index[:, 0]]
    score = score + crf.end_transitions.detach()[index[:, -1]]
    if len(steps) > 1:
        score = score + crf.transitions.detach()[index[:, :-1], index[:, 1:]].sum(1)
    return paths, score


def brute_ranking(paths: list[tuple[int, ...]], scores: Tensor) -> list[tuple[float, tuple]]:
    """Paths sorted best first; equal scores ordered by comparing paths from the end backwards
    (the documented tie rule)."""
    pairs = [(float(s), p) for s, p in zip(scores.tolist(), paths, strict=True)]
    return sorted(pairs, key=lambda sp: (-sp[0], tuple(reversed(sp[1]))))


def legal_bio(names: list[str]) -> bool:
    prev = "O"
    for name in names:
        if name.startswith("I-") and prev not in ("B-" + name[2:], "I-" + name[2:]):
            return False
        prev = name
    return True


def legal_bioes(names: list[str]) -> bool:
    open_type = None  # the entity type of an unfinished B-...(I-...)* run
    for name in names:
        prefix, kind = (name[0], name[2:]) if name != "O" else ("O", "")
        if open_type is None:
            if prefix in ("I", "E"):
                return False
            if prefix == "B":
                open_type = kind
        else:
            if prefix not in ("I", "E") or kind != open_type:
                return False
            if prefix == "E":
                open_type = None
    return open_type is None


def legality(tags: list[str], scheme: str) -> object:
    rule = legal_bio if scheme == "BIO" else legal_bioes
    return lambda path: rule([tags[i] for i in path])


# ---- likelihood -------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 2, 3, 5])
def test_log_partition_and_likelihood_match_enumeration(T: int) -> None:
    K, B = 3, 6
    crf = make_crf(K, seed=T)
    em = torch.randn(T, B, K, dtype=torch.float64)
    mask = masks_for(T, B, seed=T)
    tags = torch.randint(0, K, (T, B))
    log_z = crf.log_partition(em, mask)
    llh = crf(em, tags, mask, reduction="none")
    for b in range(B):
        paths, scores = all_paths(crf, em, mask, b)
        expected_z = torch.logsumexp(scores, 0) if mask[:, b].any() else torch.tensor(0.0)
        assert torch.allclose(log_z[b], expected_z.double(), atol=1e-12, rtol=0)
        gold = tuple(tags[mask[:, b], b].tolist())
        expected = scores[paths.index(gold)] - expected_z if gold else torch.tensor(0.0)
        assert torch.allclose(llh[b], expected.double(), atol=1e-12, rtol=0)


def test_probabilities_of_all_paths_sum_to_one() -> None:
    K, T = 3, 4
    crf = make_crf(K, seed=3)
    em = torch.randn(T, 1, K, dtype=torch.float64)
    paths = torch.tensor(list(itertools.product(range(K), repeat=T))).t()  # (T, P)
    llh = crf(em.expand(T, paths.shape[1], K), paths, reduction="none")
    assert torch.allclose(llh.exp().sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-12)


def test_reductions_and_nll() -> None:
    K, T, B = 4, 5, 3
    crf = make_crf(K)
    em = torch.randn(T, B, K, dtype=torch.float64)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 5]).t()
    tags = torch.randint(0, K, (T, B))
    none = crf(em, tags, mask, reduction="none")
    assert none[2] == 0.0
    assert torch.equal(crf(em, tags, mask, reduction="sum"), none.sum())
    assert torch.equal(crf(em, tags, mask, reduction="mean"), none.mean())
    assert torch.allclose(crf(em, tags, mask, reduction="token_mean"), none.sum() / 7)
    assert torch.equal(crf.nll(em, tags, mask), -none.mean())
    assert torch.equal(crf.nll(em, tags, mask, reduction="none"), -none)
    all_empty = torch.zeros(T, B, dtype=torch.bool)
    assert crf(em, tags, all_empty, reduction="token_mean").item() == 0.0


def test_masked_tags_are_ignored() -> None:
    crf = make_crf(3)
    em = torch.randn(4, 2, 3, dtype=torch.float64)
    mask = torch.tensor([[False, True, True, False], [True, True, True, True]]).t()
    tags = torch.tensor([[-100, 1, 2, 99], [0, 1, 2, 0]]).t()
    other = tags.clone()
    other[0, 0], other[3, 0] = 2, 0
    assert torch.equal(
        crf(em, tags, mask, reduction="none"), crf(em, other, mask, reduction="none")
    )


def test_path_score_matches_definition() -> None:
    crf = make_crf(3, seed=5)
    em = torch.randn(3, 1, 3, dtype=torch.float64)
    tags = torch.tensor([[2], [0], [1]])
    t, s, e = crf.transitions, crf.start_transitions, crf.end_transitions
    expected = s[2] + em[0, 0, 2] + t[2, 0] + em[1, 0, 0] + t[0, 1] + em[2, 0, 1] + e[1]
    assert torch.allclose(crf.path_score(em, tags), expected.reshape(1), atol=1e-14)


def test_untrained_crf_is_a_per_position_softmax() -> None:
    crf = CRF(4).double()
    em = torch.randn(5, 2, 4, dtype=torch.float64)
    tags = torch.randint(0, 4, (5, 2))
    expected = em.log_softmax(-1).gather(2, tags.unsqueeze(2)).squeeze(2).sum(0)
    assert torch.allclose(crf(em, tags, reduction="none"), expected, atol=1e-12)
    assert torch.allclose(crf.marginals(em), em.softmax(-1), atol=1e-12)


# ---- masks and layouts ------------------------------------------------------------------------


def test_left_padding_equals_right_padding() -> None:
    K, T = 4, 6
    crf = make_crf(K, seed=1)
    lengths = [6, 4, 1, 0, 3]
    B = len(lengths)
    em_right = torch.randn(T, B, K, dtype=torch.float64)
    tags_right = torch.randint(0, K, (T, B))
    em_left = torch.zeros_like(em_right)
    tags_left = torch.zeros_like(tags_right)
    right = torch.zeros(T, B, dtype=torch.bool)
    left = torch.zeros(T, B, dtype=torch.bool)
    for b, n in enumerate(lengths):
        right[:n, b] = True
        left[T - n :, b] = True
        em_left[T - n :, b] = em_right[:n, b]
        tags_left[T - n :, b] = tags_right[:n, b]
    for reduction in ("none", "sum", "token_mean"):
        assert torch.allclose(
            crf(em_right, tags_right, right, reduction=reduction),
            crf(em_left, tags_left, left, reduction=reduction),
            atol=1e-12,
        )
    d_right, d_left = crf.decode(em_right, right), crf.decode(em_left, left)
    assert d_right.to_lists() == d_left.to_lists()
    assert torch.allclose(d_right.scores, d_left.scores, atol=1e-12)
    assert torch.equal(d_left.tags[~left], torch.full(((~left).sum(),), PAD_TAG))
    n_right, n_left = crf.decode_nbest(em_right, right, k=4), crf.decode_nbest(em_left, left, k=4)
    assert n_right.to_lists() == n_left.to_lists()
    assert torch.allclose(n_right.scores, n_left.scores, atol=1e-12)
    m_right, m_left = crf.marginals(em_right, right), crf.marginals(em_left, left)
    for b, n in enumerate(lengths):
        assert torch.allclose(m_right[:n, b], m_left[T - n :, b], atol=1e-12)


def test_leading_special_token_is_skipped() -> None:
    """A mask that is False at a [CLS]-like first position scores the rest as its own sequence."""
    crf = make_crf(3, seed=2)
    em = torch.randn(5, 2, 3, dtype=torch.float64)
    tags = torch.randint(0, 3, (5, 2))
    mask = torch.tensor([[False, True, True, True, False]] * 2).t()
    llh = crf(em, tags, mask, reduction="none")
    alone = crf(em[1:4], tags[1:4], reduction="none")
    assert torch.allclose(llh, alone, atol=1e-12)


def test_batch_first_matches_time_major() -> None:
    K = 4
    crf = make_crf(K, seed=4)
    crf_bf = make_crf(K, seed=4, batch_first=True)
    em = torch.randn(5, 3, K, dtype=torch.float64)
    mask = masks_for(5, 3, seed=9)
    tags = torch.randint(0, K, (5, 3))
    assert torch.allclose(
        crf(em, tags, mask, reduction="none"),
        crf_bf(em.transpose(0, 1), tags.t(), mask.t(), reduction="none"),
        atol=1e-12,
    )
    assert torch.equal(
        crf.decode(em, mask).tags, crf_bf.decode(em.transpose(0, 1), mask.t()).tags.t()
    )
    nb, nb_bf = (
        crf.decode_nbest(em, mask, k=3),
        crf_bf.decode_nbest(em.transpose(0, 1), mask.t(), k=3),
    )
    assert nb.tags.shape == (3, 5, 3) and nb_bf.tags.shape == (3, 3, 5)
    assert torch.equal(nb.tags, nb_bf.tags.transpose(1, 2))
    assert nb.to_lists() == nb_bf.to_lists()
    m = crf.marginals(em, mask)
    assert torch.allclose(m, crf_bf.marginals(em.transpose(0, 1), mask.t()).transpose(0, 1))


def test_empty_sequences_and_empty_time() -> None:
    crf = make_crf(3)
    em = torch.randn(4, 2, 3, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, False], [False] * 4]).t()
    tags = torch.zeros(4, 2, dtype=torch.long)
    assert crf(em, tags, mask, reduction="none")[1] == 0.0
    assert crf.decode(em, mask).to_lists()[1] == []
    assert crf.decode(em, mask).scores[1] == 0.0
    nbest = crf.decode_nbest(em, mask, k=3)
    assert nbest.to_lists()[1] == [[]]
    assert nbest.scores[:, 1].tolist() == [0.0, -math.inf, -math.inf]
    assert torch.equal(crf.marginals(em, mask)[:, 1], torch.zeros(4, 3, dtype=torch.float64))
    none = torch.zeros(0, 2, 3, dtype=torch.float64)
    no_tags = torch.zeros(0, 2, dtype=torch.long)
    assert crf(none, no_tags, reduction="none").tolist() == [0.0, 0.0]
    assert crf.decode(none).tags.shape == (0, 2)
    assert crf.decode_nbest(none, k=2).to_lists() == [[[]], [[]]]
    assert crf.marginals(none).shape == (0, 2, 3)


# ---- decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("integer", [False, True], ids=["continuous", "ties"])
def test_viterbi_and_nbest_match_enumeration(integer: bool) -> None:
    """Continuous scores have a unique order; small integers give many exact ties, which must be
    broken by the documented rule (compare paths from the end backwards)."""
    K, T, B, k = 3, 4, 8, 7
    crf = randomise(CRF(K).double(), seed=11, integer=integer)
    for trial in range(3):
        g = torch.Generator().manual_seed(trial)
        if integer:
            em = torch.randint(-1, 2, (T, B, K), generator=g).double()
        else:
            em = torch.randn(T, B, K, generator=g, dtype=torch.float64)
        mask = masks_for(T, B, seed=trial)
        with torch.no_grad():
            best = crf.decode(em, mask)
            nbest = crf.decode_nbest(em, mask, k=k)
        best_lists, nbest_lists = best.to_lists(), nbest.to_lists()
        for b in range(B):
            paths, scores = all_paths(crf, em, mask, b)
            ranking = brute_ranking(paths, scores)[:k]
            assert best_lists[b] == list(ranking[0][1])
            assert math.isclose(float(best.scores[b]), ranking[0][0], abs_tol=1e-12)
            assert nbest_lists[b] == [list(p) for _, p in ranking]
            got = nbest.scores[: len(ranking), b].tolist()
            assert got == pytest.approx([s for s, _ in ranking], abs=1e-12)
            assert all(s == -math.inf for s in nbest.scores[len(ranking) :, b].tolist())
        assert torch.equal(crf.decode_nbest(em, mask, k=1).tags[0], best.tags)


def test_nbest_with_more_ranks_than_paths() -> None:
    crf = make_crf(2, seed=6)
    em = torch.randn(2, 1, 2, dtype=torch.float64)
    nbest = crf.decode_nbest(em, k=6)
    assert nbest.scores[4:, 0].tolist() == [-math.inf, -math.inf]
    assert torch.equal(nbest.tags[4:], torch.full((2, 2, 1), PAD_TAG))
    assert sorted(map(tuple, nbest.to_lists()[0])) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert nbest.scores[:4, 0].tolist() == sorted(nbest.scores[:4, 0].tolist(), reverse=True)


def test_decoded_scores_are_path_scores() -> None:
    crf = make_crf(4, seed=8)
    em = torch.randn(5, 3, 4, dtype=torch.float64)
    mask = masks_for(5, 3, seed=8)
    nbest = crf.decode_nbest(em, mask, k=3)
    for r in range(3):
        tags = nbest.tags[r].clamp(min=0)
        assert torch.allclose(crf.path_score(em, tags, mask), nbest.scores[r], atol=1e-12)


# ---- constraints ------------------------------------------------------------------------------


def test_allowed_transitions_bio_by_hand() -> None:
    tags = ["O", "B-X", "I-X", "B-Y", "I-Y"]
    pairs = set(allowed_transitions(tags, "BIO"))
    assert (START, "I-X") not in pairs and (START, "B-X") in pairs and (START, "O") in pairs
    assert ("O", "I-X") not in pairs and ("B-X", "I-Y") not in pairs and ("I-Y", "I-X") not in pairs
    assert ("B-X", "I-X") in pairs and ("I-X", "I-X") in pairs and ("I-X", "B-Y") in pairs
    assert all((t, END) in pairs for t in tags)
    # 3 start + (5*5 - 6 illegal into I-*) + 5 end
    assert len(pairs) == 3 + 19 + 5


def test_allowed_transitions_bioes_by_hand() -> None:
    tags = ["O", "B-X", "I-X", "E-X", "S-X"]
    pairs = allowed_transitions(tags, "BIOES")
    assert [p for p in pairs if p[0] == START] == [(START, "O"), (START, "B-X"), (START, "S-X")]
    assert [p for p in pairs if p[1] == END] == [("O", END), ("E-X", END), ("S-X", END)]
    assert [p for p in pairs if p[0] == "B-X"] == [("B-X", "I-X"), ("B-X", "E-X")]
    assert [p for p in pairs if p[0] == "E-X" and p[1] != END] == [
        ("E-X", "O"),
        ("E-X", "B-X"),
        ("E-X", "S-X"),
    ]
    # names with dashes in the type are split at the first dash
    assert ("B-WORK-OF-ART", "I-WORK-OF-ART") in allowed_transitions(
        ["O", "B-WORK-OF-ART", "I-WORK-OF-ART"], "BIO"
    )


def test_constraints_round_trip_through_pairs() -> None:
    constraints = TransitionConstraints.from_scheme(BIOES_TAGS, "BIOES")
    pairs = constraints.pairs(BIOES_TAGS)
    assert pairs == allowed_transitions(BIOES_TAGS, "BIOES")
    again = TransitionConstraints.from_pairs(BIOES_TAGS, pairs)
    for name in ("transitions", "start", "end"):
        assert torch.equal(getattr(again, name), getattr(constraints, name))
    crf = CRF.from_tags(BIOES_TAGS, "BIOES")
    assert crf.allowed_transitions() == pairs
    assert len(CRF(3).allowed_transitions()) == 3 + 9 + 3
    assert CRF(
        2, constraints=TransitionConstraints.from_pairs(["a", "b"], [("a", "b")])
    ).allowed_transitions() == [("0", "1")]


@pytest.mark.parametrize(("scheme", "tags"), [("BIO", BIO_TAGS), ("BIOES", BIOES_TAGS)])
def test_constrained_decoding_is_legal_and_exact(scheme: str, tags: list[str]) -> None:
    """Random emissions that strongly favour illegal tags; every decoded path (1-best and n-best)
    must be legal and equal the best legal paths found by enumeration."""
    K = len(tags)
    legal = legality(tags, scheme)
    crf = randomise(CRF.from_tags(tags, scheme).double(), seed=21)
    T, B, k = 4, 12, 3
    for trial in range(4):
        g = torch.Generator().manual_seed(100 + trial)
        em = 4.0 * torch.randn(T, B, K, generator=g, dtype=torch.float64)
        mask = masks_for(T, B, seed=trial)
        best, nbest = crf.decode(em, mask), crf.decode_nbest(em, mask, k=k)
        for b, (path, paths) in enumerate(zip(best.to_lists(), nbest.to_lists(), strict=True)):
            assert legal(path)
            legal_paths, scores = all_paths(crf, em, mask, b, legal=legal)
            ranking = brute_ranking(legal_paths, scores)[:k]
            assert path == list(ranking[0][1])
            assert paths == [list(p) for _, p in ranking]
            assert nbest.scores[: len(ranking), b].tolist() == pytest.approx(
                [s for s, _ in ranking], abs=1e-12
            )
    # many more trials, legality only, in one large batch
    g = torch.Generator().manual_seed(7)
    em = 6.0 * torch.randn(9, 400, K, generator=g, dtype=torch.float64)
    mask = masks_for(9, 400, seed=7)
    assert all(legal(p) for p in crf.decode(em, mask).to_lists())
    assert all(legal(p) for paths in crf.decode_nbest(em, mask, k=4).to_lists() for p in paths)


def test_unconstrained_decoding_does_emit_illegal_paths() -> None:
    """The legality checks above can fail: without constraints the same emissions decode to
    illegal BIO paths."""
    crf = randomise(CRF(len(BIO_TAGS)).double(), seed=21)
    em = 6.0 * torch.randn(9, 400, len(BIO_TAGS), dtype=torch.float64)
    legal = legality(BIO_TAGS, "BIO")
    assert not all(legal(p) for p in crf.decode(em).to_lists())


def test_constrain_training_normalises_over_legal_paths() -> None:
    tags = ["O", "B-X", "I-X", "E-X", "S-X"]
    legal = legality(tags, "BIOES")
    crf = randomise(CRF.from_tags(tags, "BIOES", constrain_training=True).double(), seed=5)
    free = randomise(CRF.from_tags(tags, "BIOES").double(), seed=5)
    T, B = 4, 5
    em = torch.randn(T, B, len(tags), dtype=torch.float64)
    mask = masks_for(T, B, seed=5)
    log_z = crf.log_partition(em, mask)
    marginals = crf.marginals(em, mask)
    free_z = free.log_partition(em, mask)
    for b in range(B):
        paths, scores = all_paths(crf, em, mask, b, legal=legal)
        if not paths[0]:
            continue
        assert torch.allclose(log_z[b], torch.logsumexp(scores, 0), atol=1e-12)
        assert free_z[b] > log_z[b]  # the unconstrained model also counts illegal paths
        steps = mask[:, b].nonzero().flatten().tolist()
        probs = (scores - torch.logsumexp(scores, 0)).exp()
        expected = torch.zeros(len(steps), len(tags), dtype=torch.float64)
        for p, path in zip(probs, paths, strict=True):
            expected[range(len(steps)), list(path)] += p
        assert torch.allclose(marginals[steps, b], expected, atol=1e-12)
        assert marginals[steps[0], b, tags.index("I-X")] == 0.0
    # a gold path with a forbidden transition gets the finite penalty, not -inf
    bad = torch.tensor([[tags.index("O")], [tags.index("I-X")]])
    llh = crf(em[:2, :1], bad, reduction="none")
    assert torch.isfinite(llh).all() and llh.item() < ILLEGAL_TRAINING_SCORE / 2


def test_impossible_constraints_give_no_path() -> None:
    """When no path satisfies user constraints, the decoders say so instead of inventing one."""
    constraints = TransitionConstraints(
        torch.tensor([[False, True], [False, False]]),
        torch.tensor([True, False]),
        torch.tensor([False, True]),
    )
    crf = CRF(2, constraints=constraints).double()
    em = torch.randn(3, 2, 2, dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, True, True]]).t()
    best = crf.decode(em, mask)
    assert best.to_lists() == [[0, 1], []]
    assert best.scores[1] == -math.inf
    assert crf.decode_nbest(em, mask, k=2).to_lists() == [[[0, 1]], []]


# ---- marginals and gradients ------------------------------------------------------------------


def test_marginals_match_enumeration_and_autograd() -> None:
    K, T, B = 3, 4, 5
    crf = make_crf(K, seed=13)
    em = torch.randn(T, B, K, dtype=torch.float64, requires_grad=True)
    mask = masks_for(T, B, seed=13)
    marginals = crf.marginals(em, mask)
    assert torch.allclose(marginals.sum(-1), mask.double(), atol=1e-12)
    for b in range(B):
        paths, scores = all_paths(crf, em.detach(), mask, b)
        steps = mask[:, b].nonzero().flatten().tolist()
        probs = (scores - torch.logsumexp(scores, 0)).exp()
        expected = torch.zeros(len(steps), K, dtype=torch.float64)
        for p, path in zip(probs, paths, strict=True):
            expected[range(len(steps)), list(path)] += p
        assert torch.allclose(marginals[steps, b], expected, atol=1e-12)
    # d log Z / d emissions is the marginal: an independent check of forward-backward
    (grad,) = torch.autograd.grad(crf.log_partition(em, mask).sum(), em)
    assert torch.allclose(grad, marginals, atol=1e-12)


@pytest.mark.parametrize("constrain_training", [False, True])
def test_gradcheck(constrain_training: bool) -> None:
    tags_names = ["O", "B-X", "I-X"]
    crf = randomise(
        CRF.from_tags(tags_names, "BIO", constrain_training=constrain_training).double(), seed=3
    )
    T, B = 4, 3
    em = torch.randn(T, B, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True] * 4, [False, True, True, False], [False, False, True, True]]).t()
    tags = torch.tensor([[0, 1, 2, 0], [0, 1, 2, 2], [0, 0, 1, 2]]).t()
    params = {n: p.detach().clone().requires_grad_() for n, p in crf.named_parameters()}

    def llh(em: Tensor, trans: Tensor, start: Tensor, end: Tensor) -> Tensor:
        values = {"transitions": trans, "start_transitions": start, "end_transitions": end}
        return torch.func.functional_call(crf, values, (em, tags, mask), {"reduction": "none"})

    inputs = (em, params["transitions"], params["start_transitions"], params["end_transitions"])
    assert torch.autograd.gradcheck(llh, inputs)

    # the marginals are differentiable too (e.g. for posterior-regularised training)
    wrapper = _MarginalsOf(crf)

    def marginals(em: Tensor, trans: Tensor) -> Tensor:
        return torch.func.functional_call(
            wrapper, {"crf.transitions": trans}, (em, mask), strict=False
        )

    assert torch.autograd.gradcheck(marginals, (em, params["transitions"]))


class _MarginalsOf(torch.nn.Module):
    """Exposes ``CRF.marginals`` as ``forward`` so that ``functional_call`` can swap parameters."""

    def __init__(self, crf: CRF) -> None:
        super().__init__()
        self.crf = crf

    def forward(self, emissions: Tensor, mask: Tensor) -> Tensor:
        return self.crf.marginals(emissions, mask)


def test_training_learns_transitions() -> None:
    """With uninformative emissions only the transitions can explain alternating tags."""
    crf = CRF(2)
    optimiser = torch.optim.Adam(crf.parameters(), lr=0.1)
    em = torch.zeros(6, 4, 2)
    tags = torch.tensor([0, 1, 0, 1, 0, 1]).unsqueeze(1).expand(6, 4)
    for _ in range(60):
        optimiser.zero_grad()
        loss = crf.nll(em, tags)
        loss.backward()
        optimiser.step()
    assert crf.decode(em).to_lists() == [[0, 1, 0, 1, 0, 1]] * 4
    assert crf.nll(em, tags).item() < 0.5


def test_state_dict_and_device_moves() -> None:
    crf = CRF.from_tags(BIO_TAGS, "BIO")
    assert set(crf.state_dict()) == {"transitions", "start_transitions", "end_transitions"}
    copy = CRF.from_tags(BIO_TAGS, "BIO")
    copy.load_state_dict(randomise(crf, 1).state_dict())
    em = torch.randn(3, 2, len(BIO_TAGS))
    assert torch.equal(copy.decode(em).tags, crf.decode(em).tags)
    double = crf.double()
    assert double._allowed_trans is not None and double._allowed_trans.dtype == torch.bool
    assert "constraints='BIO'" in repr(crf)


# ---- validation -------------------------------------------------------------------------------


def test_input_validation() -> None:
    crf = CRF(3, batch_first=True)
    em = torch.randn(2, 4, 3)
    tags = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(TypeError, match=r"emissions must be a torch.Tensor, got \[1, 2\]"):
        crf.decode([1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="emissions must be a floating-point tensor"):
        crf.decode(torch.zeros(2, 4, 3, dtype=torch.long))
    with pytest.raises(
        ValueError,
        match=r"emissions must have shape \(B, T, num_tags\) with num_tags=3, got \(2, 4, 5\)",
    ):
        crf.decode(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match=r"emissions must have shape .*got \(4, 3\)"):
        crf.decode(torch.randn(4, 3))
    with pytest.raises(
        TypeError,
        match=re.escape(
            "emissions must have the module's parameter dtype torch.float32, got torch.float64"
        ),
    ):
        crf.decode(em.double())
    with pytest.raises(
        TypeError,
        match=r"mask must have dtype torch.bool, got torch.uint8; convert it with .bool\(\)",
    ):
        crf.decode(em, torch.ones(2, 4, dtype=torch.uint8))
    with pytest.raises(
        ValueError,
        match=r"mask must have the shape \(B, T\) = \(2, 4\) of emissions .*got \(4, 2\)",
    ):
        crf.decode(em, torch.ones(4, 2, dtype=torch.bool))
    gap = torch.tensor([[True, True, True, True], [True, False, True, False]])
    with pytest.raises(
        ValueError, match=re.escape("sequence 1 has 2 separate runs, valid at steps [0, 2]")
    ):
        crf(em, tags, gap)
    with pytest.raises(
        TypeError,
        match=re.escape("tags must be an integer tensor of tag ids, got dtype torch.float32"),
    ):
        crf(em, tags.float())
    with pytest.raises(ValueError, match=r"tags must have the shape \(B, T\) = \(2, 4\)"):
        crf(em, tags.t())
    bad = tags.clone()
    bad[1, 2] = 3
    with pytest.raises(
        ValueError,
        match=re.escape(
            "tag ids in [0, 3) at the positions the mask marks valid; tags[1, 2] is 3 (sequence 1, step 2)"
        ),
    ):
        crf(em, bad)
    bad[1, 2] = -100  # fine where masked
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[1, 2:] = False
    assert torch.isfinite(crf(em, bad, mask))
    with pytest.raises(
        ValueError, match="reduction must be one of 'sum', 'mean', 'none', 'token_mean', got 'avg'"
    ):
        crf(em, tags, reduction="avg")
    with pytest.raises(ValueError, match="k must be a positive int, got 0"):
        crf.decode_nbest(em, k=0)
    with pytest.raises(TypeError, match="k must be an int"):
        crf.decode_nbest(em, k=2.0)  # type: ignore[arg-type]


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="num_tags must be a positive int, got 0"):
        CRF(0)
    with pytest.raises(TypeError, match="batch_first must be True or False, got 1"):
        CRF(3, batch_first=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="constraints must be one of 'BIO', 'BIOES', got 'IOB1'"):
        CRF(3, constraints="IOB1", tags=["O", "B-X", "I-X"])
    with pytest.raises(
        ValueError, match=r"constraints='BIO' needs the tag names: pass tags=\[...\]"
    ):
        CRF(3, constraints="BIO")
    with pytest.raises(
        TypeError, match="constraints must be None, a TransitionConstraints or a scheme name"
    ):
        CRF(3, constraints=torch.ones(3, 3, dtype=torch.bool))  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match="constraints must cover num_tags=4 tags, got constraints for 3"
    ):
        CRF(4, constraints=TransitionConstraints.from_scheme(["O", "B-X", "I-X"], "BIO"))
    with pytest.raises(ValueError, match="constrain_training=True needs constraints"):
        CRF(3, constrain_training=True)
    with pytest.raises(ValueError, match="tags must name all num_tags=4 tags, got 3 names"):
        CRF(4, tags=["O", "B-X", "I-X"])
    with pytest.raises(
        ValueError,
        match=r"tags\[1\] must be 'O' or one of 'B-<type>', 'I-<type>' for scheme 'BIO', got 'E-X'",
    ):
        CRF.from_tags(["O", "E-X"], "BIO")
    with pytest.raises(ValueError, match=r"tags\[2\] must be 'O' or one of .*got 'B-'"):
        CRF.from_tags(["O", "B-X", "B-"], "BIOES")
    with pytest.raises(ValueError, match=r"tags must be unique, got 'O' at tags\[0\] and \[2\]"):
        allowed_transitions(["O", "B-X", "O"], "BIO")
    with pytest.raises(TypeError, match="tags must be a list of tag names"):
        allowed_transitions("O B-X", "BIO")
    with pytest.raises(ValueError, match=r"tags\[0\] is '<start>', a name reserved"):
        CRF.from_tags([START, "O"], None)
    with pytest.raises(ValueError, match=r"pairs\[1\] = \('O', 'I-Z'\) must name tags from `tags`"):
        TransitionConstraints.from_pairs(["O", "B-X"], [("O", "B-X"), ("O", "I-Z")])
    with pytest.raises(
        TypeError, match=re.escape("start must have dtype torch.bool, got torch.float32")
    ):
        TransitionConstraints(
            torch.ones(2, 2, dtype=torch.bool), torch.ones(2), torch.ones(2, dtype=torch.bool)
        )
    with pytest.raises(
        TypeError,
        match=r"transitions must be a \(num_tags, num_tags\) bool tensor, got \[\[True\]\] \(list\)",
    ):
        TransitionConstraints(
            [[True]], torch.ones(1, dtype=torch.bool), torch.ones(1, dtype=torch.bool)
        )  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"end must have shape \(2,\), got \(3,\)"):
        TransitionConstraints(
            torch.ones(2, 2, dtype=torch.bool),
            torch.ones(2, dtype=torch.bool),
            torch.ones(3, dtype=torch.bool),
        )


def test_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The example in docs/crf.md is the last Python block of the page and must keep working."""
    page = Path(__file__).resolve().parents[1] / "docs" / "crf.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    exec(compile(blocks[-1], str(page), "exec"), {"__name__": "docs_crf_example"})
    printed = capsys.readouterr().out
    assert printed.startswith("[('<start>', 'O'), ('<start>', 'B-PER'), ('<start>', 'B-LOC')")
    assert "tensor([-1, -1," in printed
