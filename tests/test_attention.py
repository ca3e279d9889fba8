"""Tests of lstmkit.nn.attention: Bahdanau and Luong attention, masks, coverage, precomputed keys."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lstmkit.decode import beam_search, greedy, index_state
from lstmkit.nn.attention import BahdanauAttention, LuongAttention, Memory, coverage_loss

B, S, Q, K = 3, 5, 4, 6


def modules(dtype: torch.dtype = torch.float32) -> dict[str, nn.Module]:
    return {
        "bahdanau": BahdanauAttention(Q, K, 7, dtype=dtype),
        "bahdanau-coverage": BahdanauAttention(Q, K, 7, coverage=True, dtype=dtype),
        "dot": LuongAttention(Q, score="dot"),
        "general": LuongAttention(Q, K, score="general", dtype=dtype),
        "concat": LuongAttention(Q, K, score="concat", hidden_size=5, dtype=dtype),
        "concat-coverage": LuongAttention(Q, K, score="concat", coverage=True, dtype=dtype),
    }


def key_size(module: nn.Module) -> int:
    assert isinstance(module, (BahdanauAttention, LuongAttention))
    return module.key_size


@pytest.mark.parametrize("name", list(modules()))
def test_weights_sum_to_one_over_valid_positions_and_are_zero_on_padding(name: str) -> None:
    module = modules()[name]
    k = key_size(module)
    keys = torch.randn(S, B, k)
    query = torch.randn(B, Q)
    lengths = torch.tensor([5, 2, 0])
    context, weights = module(query, keys, lengths=lengths)
    assert context.shape == (B, k) and weights.shape == (B, S)
    valid = torch.arange(S)[None, :] < lengths[:, None]
    assert (weights[~valid] == 0).all()
    torch.testing.assert_close(weights[:2].sum(-1), torch.ones(2))
    assert (weights[:2][valid[:2]] > 0).all()
    # a sequence with no valid position attends to nothing: zero weights and context, no NaN
    assert (weights[2] == 0).all() and (context[2] == 0).all()
    # the same through a bool mask, and padded keys do not matter at all
    mask = ~valid
    keys2 = keys.clone()
    keys2[~valid.T] = 1e4 * torch.randn(int(mask.sum()), k)
    context2, weights2 = module(query, keys2, key_padding_mask=mask)
    assert torch.equal(weights2, weights) and torch.equal(context2, context)


def test_dot_score_equals_a_hand_computation() -> None:
    module = LuongAttention(3, score="dot", batch_first=True)
    keys = torch.tensor([[[1.0, 0.0, 2.0], [0.0, 1.0, -1.0], [3.0, 1.0, 0.0]]], dtype=torch.float64)
    query = torch.tensor([[0.5, -1.0, 0.25]], dtype=torch.float64)
    context, weights = module(query, keys, lengths=[2])
    scores = [0.5 * 1 + 0.25 * 2, -1.0 - 0.25]  # the third position is padding
    z = sum(math.exp(s) for s in scores)
    expected = [math.exp(s) / z for s in scores] + [0.0]
    assert weights[0].tolist() == pytest.approx(expected, abs=1e-15)
    expected_context = [sum(expected[i] * keys[0, i, j].item() for i in range(3)) for j in range(3)]
    assert context[0].tolist() == pytest.approx(expected_context, abs=1e-15)


def test_general_concat_and_bahdanau_scores_follow_their_formulas() -> None:
    torch.manual_seed(3)
    keys = torch.randn(B, S, K, dtype=torch.float64)
    query = torch.randn(B, Q, dtype=torch.float64)
    coverage = torch.rand(B, S, dtype=torch.float64)

    general = LuongAttention(Q, K, score="general", batch_first=True, dtype=torch.float64)
    W = general.key_proj.weight  # type: ignore[union-attr]
    scores = torch.einsum("bq,qk,bsk->bs", query, W, keys)
    torch.testing.assert_close(general(query, keys)[1], torch.softmax(scores, -1))

    additive = BahdanauAttention(Q, K, 7, coverage=True, batch_first=True, dtype=torch.float64)
    assert additive.coverage_weight is not None
    with torch.no_grad():
        additive.coverage_weight.normal_()
    hidden = (
        keys @ additive.key_proj.weight.T
        + additive.key_proj.bias
        + (query @ additive.query_proj.weight.T)[:, None, :]
        + coverage[:, :, None] * additive.coverage_weight
    )
    scores = (torch.tanh(hidden) @ additive.v.weight.T).squeeze(-1)
    context, weights = additive(query, keys, coverage=coverage)
    torch.testing.assert_close(weights, torch.softmax(scores, -1))
    torch.testing.assert_close(context, torch.einsum("bs,bsk->bk", weights, keys))

    concat = LuongAttention(Q, K, score="concat", batch_first=True, dtype=torch.float64)
    W_a = torch.cat([concat.query_proj.weight, concat.key_proj.weight], dim=1)  # type: ignore[union-attr]
    both = torch.cat([query[:, None, :].expand(B, S, Q), keys], dim=-1)
    scores = (torch.tanh(both @ W_a.T) @ concat.v.weight.T).squeeze(-1)  # type: ignore[union-attr]
    torch.testing.assert_close(concat(query, keys)[1], torch.softmax(scores, -1))


def test_coverage_changes_the_scores_and_none_means_zeros() -> None:
    module = BahdanauAttention(Q, K, 7, coverage=True)
    keys, query = torch.randn(S, B, K), torch.randn(B, Q)
    _, plain = module(query, keys)
    _, zeros = module(query, keys, coverage=torch.zeros(B, S))
    _, covered = module(query, keys, coverage=torch.rand(B, S) * 3)
    assert torch.equal(plain, zeros)
    assert not torch.allclose(plain, covered)


def test_coverage_loss_is_zero_for_fresh_one_hot_attention_and_positive_otherwise() -> None:
    order = [2, 0, 4, 1, 3]
    coverage = torch.zeros(1, S)
    for position in order:
        weights = nn.functional.one_hot(torch.tensor([position]), S).float()
        assert coverage_loss(weights, coverage).tolist() == [0.0]
        coverage = coverage + weights
    again = nn.functional.one_hot(torch.tensor([4]), S).float()
    assert coverage_loss(again, coverage).tolist() == [1.0]
    # a spread distribution overlaps partly: sum_i min(a_i, c_i)
    spread = torch.tensor([[0.5, 0.5, 0.0, 0.0, 0.0]])
    past = torch.tensor([[0.2, 0.0, 0.7, 0.1, 0.0]])
    assert coverage_loss(spread, past).tolist() == pytest.approx([0.2])
    # leading dimensions are kept: (T, B, S) -> (T, B)
    assert coverage_loss(torch.rand(4, 2, S), torch.rand(4, 2, S)).shape == (4, 2)
    with pytest.raises(
        ValueError, match=r"coverage must have the shape of weights \(1, 5\), got \(1, 4\)"
    ):
        coverage_loss(spread, torch.zeros(1, 4))


@pytest.mark.parametrize("name", list(modules()))
def test_gradients_flow_gradcheck_float64(name: str) -> None:
    module = modules(torch.float64)[name]
    k = key_size(module)
    keys = torch.randn(3, 2, k, dtype=torch.float64, requires_grad=True)
    values = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    query = torch.randn(2, Q, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([3, 2])
    inputs: tuple[Tensor, ...] = (query, keys, values)
    if module.coverage:
        inputs = (*inputs, torch.rand(2, 3, dtype=torch.float64, requires_grad=True))

    def run(q: Tensor, k_: Tensor, v: Tensor, *cov: Tensor) -> tuple[Tensor, Tensor]:
        return module(q, k_, values=v, lengths=lengths, coverage=cov[0] if cov else None)

    assert torch.autograd.gradcheck(run, inputs)
    context, weights = run(*inputs)
    (context.sum() + (weights * torch.randn(2, 3, dtype=torch.float64)).sum()).backward()
    for pname, parameter in module.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, pname
    # nothing reaches the padded key of the second sequence
    assert (keys.grad[2, 1] == 0).all() and (values.grad[2, 1] == 0).all()  # type: ignore[index]


def test_batch_first_gives_the_same_results() -> None:
    time_major = BahdanauAttention(Q, K, 7, coverage=True)
    batch_major = BahdanauAttention(Q, K, 7, coverage=True, batch_first=True)
    batch_major.load_state_dict(time_major.state_dict())
    keys, values, query = torch.randn(S, B, K), torch.randn(S, B, 2), torch.randn(B, Q)
    coverage = torch.rand(B, S)
    a = time_major(query, keys, values=values, lengths=[5, 3, 1], coverage=coverage)
    b = batch_major(
        query,
        keys.transpose(0, 1),
        values=values.transpose(0, 1),
        lengths=[5, 3, 1],
        coverage=coverage,
    )
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)


def test_prepared_memory_projects_keys_once_and_matches_raw_keys() -> None:
    module = BahdanauAttention(Q, K, 7)
    calls = []
    module.key_proj.register_forward_hook(lambda *args: calls.append(1))
    keys, lengths = torch.randn(S, B, K), torch.tensor([5, 4, 2])
    queries = torch.randn(6, B, Q)
    memory = module.prepare(keys, lengths=lengths)
    assert isinstance(memory, Memory) and memory.keys.shape == (B, S, 7)
    prepared = [module(q, memory) for q in queries]
    assert len(calls) == 1  # one projection for six decoder steps
    raw = [module(q, keys, lengths=lengths) for q in queries]
    for (c1, w1), (c2, w2) in zip(prepared, raw, strict=True):
        assert torch.equal(c1, c2) and torch.equal(w1, w2)


def test_memory_rows_reorder_like_a_decoder_state() -> None:
    module = LuongAttention(Q, K, score="general")
    keys, query = torch.randn(S, B, K), torch.randn(B, Q)
    memory = module.prepare(keys, lengths=[5, 1, 3])
    order = torch.tensor([2, 0, 0, 1])
    reordered = index_state(memory, order)
    assert isinstance(reordered, Memory)
    context, weights = module(query[order], reordered)
    full_context, full_weights = module(query, memory)
    assert torch.equal(context, full_context[order]) and torch.equal(weights, full_weights[order])


class TinySeq2SeqDecoder(nn.Module):
    """An untrained GRU decoder with Luong attention, as a step function for lstmkit.decode: the
    state is a dict holding the prepared Memory next to the hidden state (rows first)."""

    def __init__(self, vocab: int = 7, size: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, size)
        self.cell = nn.GRUCell(2 * size, size)
        self.attention = LuongAttention(size, score="general")
        self.out = nn.Linear(2 * size, vocab)

    def step(self, tokens: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any], Tensor]:
        h = self.cell(torch.cat([self.embed(tokens), state["feed"]], -1), state["h"])
        context, weights = self.attention(h, state["memory"])
        feed = torch.tanh(torch.cat([context, h], -1))[:, : h.shape[1]]
        log_probs = torch.log_softmax(self.out(torch.cat([context, h], -1)), -1)
        return log_probs, {"h": h, "feed": feed, "memory": state["memory"]}, weights


def test_attention_decoder_runs_under_beam_search_with_coverage_penalty() -> None:
    torch.manual_seed(1)
    decoder = TinySeq2SeqDecoder()
    encoder_out = torch.randn(S, B, 8)
    memory = decoder.attention.prepare(encoder_out, lengths=[5, 3, 4])
    state = {"h": torch.zeros(B, 8), "feed": torch.zeros(B, 8), "memory": memory}
    with torch.no_grad():
        g = greedy(decoder.step, state, bos=1, eos=0, max_len=6)
        b1 = beam_search(decoder.step, state, bos=1, eos=0, max_len=6, beam_size=1)
        b4 = beam_search(
            decoder.step,
            state,
            bos=1,
            eos=0,
            max_len=6,
            beam_size=4,
            n_best=2,
            coverage_penalty=0.2,
            length_penalty="gnmt",
        )
    assert torch.equal(b1.tokens[:, 0], g.tokens[:, : b1.tokens.shape[2]])
    torch.testing.assert_close(b1.scores[:, 0], g.scores)
    assert b4.tokens.shape[:2] == (B, 2) and torch.isfinite(b4.scores).all()


def test_wrong_inputs_raise_with_the_argument_named() -> None:
    module = BahdanauAttention(Q, K, 7)
    keys, query = torch.randn(S, B, K), torch.randn(B, Q)
    with pytest.raises(
        ValueError, match=r"query must have shape \(B, query_size\) = \(3, 4\), got \(3, 5\)"
    ):
        module(torch.randn(B, 5), keys)
    with pytest.raises(
        ValueError, match=r"query must have shape \(B, query_size\) = \(3, 4\), got \(2, 4\)"
    ):
        module(torch.randn(2, Q), keys)
    with pytest.raises(
        ValueError, match=r"keys must have shape \(S, B, key_size\) with key_size = 6, got \(5, 6\)"
    ):
        module(query, torch.randn(S, K))
    with pytest.raises(
        ValueError,
        match=r"values must have shape \(5, 3, value_size\), matching keys \(5, 3, 6\), got \(3, 5, 2\)",
    ):
        module(query, keys, values=torch.randn(B, S, 2))
    with pytest.raises(
        ValueError, match=r"lengths must have shape \(3,\), one length per sequence"
    ):
        module(query, keys, lengths=[1, 2])
    with pytest.raises(
        ValueError, match=r"lengths must be <= the sequence length 5 of input, got a length of 6"
    ):
        module(query, keys, lengths=[1, 2, 6])
    with pytest.raises(
        TypeError,
        match=r"key_padding_mask must be a bool tensor \(True at padded positions\), got a tensor of shape \(3, 5\), dtype torch.int64",
    ):
        module(query, keys, key_padding_mask=torch.zeros(B, S, dtype=torch.int64))
    with pytest.raises(
        ValueError, match=r"key_padding_mask must have shape \(B, S\) = \(3, 5\), got \(5, 3\)"
    ):
        module(query, keys, key_padding_mask=torch.zeros(S, B, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"give lengths or key_padding_mask, not both"):
        module(query, keys, lengths=[1, 2, 3], key_padding_mask=torch.zeros(B, S, dtype=torch.bool))
    with pytest.raises(
        ValueError, match=r"coverage was given but this module was built with coverage=False"
    ):
        module(query, keys, coverage=torch.zeros(B, S))
    with pytest.raises(
        ValueError, match=r"coverage must have shape \(B, S\) = \(3, 5\), got \(3, 4\)"
    ):
        BahdanauAttention(Q, K, 7, coverage=True)(query, keys, coverage=torch.zeros(B, 4))
    with pytest.raises(
        TypeError,
        match=r"keys must have the module's parameter dtype torch.float32, got torch.float64",
    ):
        module(query.double(), keys.double())
    with pytest.raises(
        TypeError,
        match=r"memory must be a Memory \(from prepare\(\)\) or a keys tensor, got \[1, 2\] \(list\)",
    ):
        module(query, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"values, lengths and key_padding_mask go to prepare\(\)"):
        module(query, module.prepare(keys), lengths=[1, 1, 1])


def test_constructor_errors() -> None:
    with pytest.raises(
        ValueError, match=r"score must be one of 'dot', 'general', 'concat', got 'additive'"
    ):
        LuongAttention(4, score="additive")
    with pytest.raises(
        ValueError,
        match=r"score='dot' needs key_size == query_size, got key_size 6 and query_size 4",
    ):
        LuongAttention(4, 6, score="dot")
    with pytest.raises(
        ValueError, match=r"coverage=True needs score='concat' .* got score='general'"
    ):
        LuongAttention(4, coverage=True)
    with pytest.raises(
        ValueError, match=r"hidden_size only applies to score='concat', got score='dot'"
    ):
        LuongAttention(4, score="dot", hidden_size=3)
    with pytest.raises(ValueError, match=r"hidden_size must be a positive int, got 0"):
        BahdanauAttention(4, 4, 0)
    with pytest.raises(TypeError, match=r"batch_first must be True or False, got 1 \(int\)"):
        BahdanauAttention(4, 4, 4, batch_first=1)  # type: ignore[arg-type]
