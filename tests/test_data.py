"""lstmkit.data: the bucketing sampler, collate, masks and packing, LM streams, series windows and
the file readers. Each test checks behaviour (partitions, exact round trips, error messages that
name the file, row and column), with tiny data so that the file runs in seconds."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

import lstmkit
from lstmkit.data import (
    BPTTWindows,
    BucketBatchSampler,
    PadCollate,
    SlidingWindows,
    batchify,
    batchify_documents,
    lengths_to_mask,
    mask_to_lengths,
    pack,
    pad_collate,
    padding_fraction,
    read_conllu,
    read_csv_series,
    read_text,
    unpack,
)

DATA = Path(
    os.environ.get("LSTMKIT_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
)


def skewed_lengths(n: int = 600, seed: int = 0) -> np.ndarray:
    """Mostly short sequences with a long tail, like sentence lengths; a few zeros included."""
    lengths = np.random.default_rng(seed).geometric(0.06, size=n)
    lengths[:5] = 0
    return lengths


def padded_tokens(batches, lengths) -> int:
    return sum(int(lengths[b].max()) * len(b) for b in batches if len(b))


def flatten(batches) -> list[int]:
    return [i for b in batches for i in b]


# ============================================================================ BucketBatchSampler
def test_bucketing_pads_far_less_than_random_batching():
    lengths = skewed_lengths()
    bucketed = list(BucketBatchSampler(lengths, 16, seed=3))
    random_batches = list(
        BatchSampler(
            RandomSampler(range(len(lengths)), generator=torch.Generator().manual_seed(3)),
            16,
            False,
        )
    )
    real = int(lengths.sum())
    # the same examples are batched either way, so the real tokens are equal ...
    assert sum(int(lengths[b].sum()) for b in bucketed) == real
    # ... and bucketing needs less than half the padded positions of random batching
    assert padded_tokens(bucketed, lengths) < 0.5 * padded_tokens(random_batches, lengths)
    assert padding_fraction(bucketed, lengths) < 0.5 * padding_fraction(random_batches, lengths)
    # more buckets: less padding; one bucket is random batching
    fine = list(BucketBatchSampler(lengths, 16, num_buckets=len(lengths), seed=3))
    one = list(BucketBatchSampler(lengths, 16, num_buckets=1, seed=3))
    assert (
        padded_tokens(fine, lengths)
        < padded_tokens(bucketed, lengths)
        < padded_tokens(one, lengths)
    )


def test_padding_fraction_by_hand():
    lengths = [4, 2, 0, 3]
    # batch [0, 1]: 8 positions, 6 real; batch [2, 3]: 6 positions, 3 real
    assert padding_fraction([[0, 1], [2, 3]], lengths) == pytest.approx(1 - 9 / 14)
    assert padding_fraction([[2]], lengths) == 0.0
    with pytest.raises(
        ValueError, match=r"batches\[1\] holds the index 7, outside lengths \(size 4\)"
    ):
        padding_fraction([[0], [7]], lengths)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 7},
        {"batch_size": 1},
        {"max_tokens": 60},
        {"max_tokens": 60, "batch_size": 3},
        {"batch_size": 7, "shuffle": False},
        {"max_tokens": 25, "num_buckets": 1},
        {"max_tokens": 60, "drop_last": True},  # nothing to drop without DDP
    ],
    ids=["fixed", "size1", "tokens", "tokens-capped", "sorted", "tokens-random", "tokens-drop"],
)
def test_every_index_exactly_once_per_epoch(kwargs):
    lengths = skewed_lengths(203)
    sampler = BucketBatchSampler(lengths, seed=5, **kwargs)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(flatten(batches)) == list(range(len(lengths)))
        assert all(len(b) > 0 for b in batches)


def test_token_budget_respected_and_long_examples_alone():
    lengths = skewed_lengths(300)
    lengths[10:13] = [80, 95, 120]  # longer than the budget
    budget = 64
    for cap in (None, 5):
        batches = list(BucketBatchSampler(lengths, cap, max_tokens=budget, seed=1))
        for b in batches:
            cost = max(int(lengths[b].max()), 1) * len(b)
            assert cost <= budget or len(b) == 1
            if cap is not None:
                assert len(b) <= cap
        for long_example in (10, 11, 12):
            (home,) = [b for b in batches if long_example in b]
            assert home == [long_example]


def test_zero_length_examples_never_make_an_unbounded_batch():
    lengths = np.zeros(50, dtype=np.int64)
    batches = list(BucketBatchSampler(lengths, max_tokens=8, seed=0))
    assert sorted(len(b) for b in batches) == [2] + [8] * 6


def test_fixed_batches_have_the_size_and_drop_last_drops_the_short_one():
    lengths = skewed_lengths(103)
    kept = list(BucketBatchSampler(lengths, 10, seed=2))
    assert sorted(len(b) for b in kept) == [3] + [10] * 10
    sampler = BucketBatchSampler(lengths, 10, drop_last=True, seed=2)
    left_out = []
    for epoch in range(10):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert [len(b) for b in batches] == [10] * 10
        left_out.append(set(range(103)) - set(flatten(batches)))
        assert len(left_out[-1]) == 3
    # the dropped examples are random ones, not always the longest bucket's last three
    assert len(set.union(*left_out)) > 10
    assert min(int(lengths[i]) for i in set.union(*left_out)) <= np.median(lengths)
    unshuffled = list(BucketBatchSampler(lengths, 10, drop_last=True, shuffle=False))
    longest = np.argsort(lengths, kind="stable")[-3:].tolist()
    assert set(range(103)) - set(flatten(unshuffled)) == set(longest)


@pytest.mark.parametrize(
    ("n", "kwargs"),
    [
        (203, {"batch_size": 8}),  # 26 batches, 26 % 3 = 2: one batch is split
        (203, {"max_tokens": 50}),
        (10, {"batch_size": 4}),  # 3 batches for 3 ranks
        (11, {"batch_size": 4, "shuffle": False}),
        (203, {"batch_size": 8, "drop_last": True}),
        (203, {"max_tokens": 50, "drop_last": True}),
    ],
)
def test_ddp_ranks_partition_the_epoch_with_equal_batch_counts(n, kwargs):
    lengths = skewed_lengths(n)
    replicas = 3
    for epoch in (0, 1):
        per_rank = []
        for rank in range(replicas):
            sampler = BucketBatchSampler(
                lengths, seed=9, num_replicas=replicas, rank=rank, **kwargs
            )
            sampler.set_epoch(epoch)
            per_rank.append(list(sampler))
            assert len(per_rank[-1]) == len(sampler)
        assert len({len(batches) for batches in per_rank}) == 1  # equal counts
        seen = [set(flatten(batches)) for batches in per_rank]
        assert sum(len(s) for s in seen) == len(set().union(*seen))  # disjoint
        everything = set().union(*seen)
        if kwargs.get("drop_last"):
            # the batches are those of one process, less the count % replicas remainder ones
            single = BucketBatchSampler(lengths, seed=9, **kwargs)
            single.set_epoch(epoch)
            one_process = {tuple(b) for b in single}
            shared = {tuple(b) for batches in per_rank for b in batches}
            assert shared <= one_process
            assert len(shared) == len(one_process) - len(one_process) % replicas
        else:
            assert everything == set(range(n))  # nothing dropped, nothing repeated


def test_ddp_split_batches_respect_the_budget():
    lengths = skewed_lengths(97)
    for rank in range(4):
        for b in BucketBatchSampler(lengths, 10, max_tokens=70, num_replicas=4, rank=rank, seed=0):
            assert len(b) <= 10
            assert max(int(lengths[b].max()), 1) * len(b) <= 70 or len(b) == 1


def test_ddp_impossible_split_asks_for_drop_last():
    sampler = BucketBatchSampler([3, 4, 5, 6, 7], 1, num_replicas=2, rank=0)
    with pytest.raises(
        ValueError, match=r"5 batches of one example each.*2 replicas.*drop_last=True"
    ):
        list(sampler)
    assert (
        len(list(BucketBatchSampler([3, 4, 5, 6, 7], 1, num_replicas=2, rank=1, drop_last=True)))
        == 2
    )
    with pytest.raises(ValueError, match=r"lengths has 2 examples, fewer than num_replicas = 3"):
        BucketBatchSampler([3, 4], 1, num_replicas=3, rank=0)


def test_set_epoch_reshuffles_reproducibly():
    lengths = skewed_lengths(150)
    a = BucketBatchSampler(lengths, 8, seed=11)
    b = BucketBatchSampler(lengths, 8, seed=11)
    epochs_a = []
    for epoch in range(3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        epochs_a.append(list(a))
        assert epochs_a[-1] == list(b)
        assert list(a) == epochs_a[-1]  # iterating the same epoch again gives the same order
    assert epochs_a[0] != epochs_a[1] != epochs_a[2]
    other_seed = BucketBatchSampler(lengths, 8, seed=12)
    assert list(other_seed) != epochs_a[0]
    a.set_epoch(1)
    assert list(a) == epochs_a[1]


def test_unshuffled_batches_come_in_length_order():
    lengths = np.array([5, 1, 4, 2, 3, 0])
    batches = list(BucketBatchSampler(lengths, 2, shuffle=False))
    assert batches == [[5, 1], [3, 4], [2, 0]]


@pytest.mark.parametrize("kwargs", [{"batch_size": 6}, {"max_tokens": 40}])
def test_resumed_sampler_yields_exactly_the_remaining_batches(kwargs):
    lengths = skewed_lengths(120)
    original = BucketBatchSampler(lengths, seed=4, **kwargs)
    original.set_epoch(2)
    full = list(original)
    it = iter(original)
    taken = [next(it) for _ in range(5)]
    assert taken == full[:5]
    state = original.state_dict()
    assert state["epoch"] == 2 and state["batches_consumed"] == 5
    state = json.loads(json.dumps(state))  # the state is plain data

    resumed = BucketBatchSampler(lengths, seed=4, **kwargs)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # a loop that calls set_epoch at every epoch start still resumes
    assert list(resumed) == full[5:]
    assert list(resumed) == full  # the next iteration is a full epoch again
    resumed.set_epoch(3)
    original.set_epoch(3)
    assert list(resumed) == list(original)


def test_resume_position_from_the_training_loop_and_a_new_epoch_discards_it():
    lengths = skewed_lengths(60)
    sampler = BucketBatchSampler(lengths, 4, seed=0)
    full = list(sampler)
    state = sampler.state_dict(batches_consumed=3)  # e.g. workers prefetched further
    resumed = BucketBatchSampler(lengths, 4, seed=0)
    resumed.load_state_dict(state)
    assert list(resumed) == full[3:]
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    assert len(list(resumed)) == len(full)


def test_load_state_dict_refuses_another_plan():
    lengths = skewed_lengths(60)
    state = BucketBatchSampler(lengths, 4, seed=0).state_dict()
    with pytest.raises(ValueError, match=r"state\['seed'\] is 0 but this sampler has seed = 1"):
        BucketBatchSampler(lengths, 4, seed=1).load_state_dict(state)
    with pytest.raises(
        ValueError, match=r"state\['num_examples'\] is 60 but this sampler has num_examples = 59"
    ):
        BucketBatchSampler(lengths[:59], 4, seed=0).load_state_dict(state)
    state["batches_consumed"] = 99
    with pytest.raises(
        ValueError, match=r"batches_consumed'\] is 99 but epoch 0 has only 15 batches on rank 0"
    ):
        BucketBatchSampler(lengths, 4, seed=0).load_state_dict(state)


def test_sampler_argument_errors():
    with pytest.raises(ValueError, match=r"lengths must be >= 0, got lengths\[2\] = -1"):
        BucketBatchSampler([3, 4, -1], 2)
    with pytest.raises(TypeError, match=r"lengths\[1\] must be an int, got 2.5 \(float\)"):
        BucketBatchSampler([3, 2.5], 2)
    with pytest.raises(ValueError, match=r"give batch_size .* or max_tokens"):
        BucketBatchSampler([3, 4])
    with pytest.raises(ValueError, match=r"rank must be in \[0, num_replicas\) = \[0, 2\), got 2"):
        BucketBatchSampler([3, 4], 1, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match=r"max_tokens must be a positive int, got 0"):
        BucketBatchSampler([3, 4], max_tokens=0)
    with pytest.raises(ValueError, match=r"lengths must hold at least one example"):
        BucketBatchSampler([], 2)
    # what Lightning's sampler injection would do: the message says how to avoid it
    with pytest.raises(TypeError, match=r"got a torch Sampler.*use_distributed_sampler=False"):
        BucketBatchSampler(RandomSampler(range(4)), 2)


def test_sampler_and_collate_in_a_dataloader():
    seqs = [torch.randn(n, 3) for n in [4, 0, 7, 2, 2, 5, 1, 3]]
    lengths = [len(s) for s in seqs]
    loader = DataLoader(
        seqs, batch_sampler=BucketBatchSampler(lengths, 3), collate_fn=PadCollate(batch_first=True)
    )
    total = 0
    for batch in loader:
        assert batch.inputs.shape == (len(batch.lengths), int(batch.lengths.max()), 3)
        total += int(batch.lengths.sum())
    assert total == sum(lengths)


# ============================================================================ collate
def test_collate_pads_and_tolerates_empty_sequences():
    a, b = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0, 6.0]])
    empty = torch.zeros(0, 2)
    batch = pad_collate([a, empty, b])
    assert batch.lengths.dtype == torch.int64
    assert batch.lengths.tolist() == [2, 0, 1]
    assert batch.inputs.shape == (2, 3, 2)  # (T, B, F)
    assert torch.equal(batch.inputs[:, 0], a)
    assert torch.equal(batch.inputs[:, 1], torch.zeros(2, 2))
    assert torch.equal(batch.inputs[:, 2], torch.tensor([[5.0, 6.0], [0.0, 0.0]]))
    assert batch.targets is None and batch.target_lengths is None

    first = PadCollate(batch_first=True, padding_value=-1.0)([a, empty, b])
    assert first.inputs.shape == (3, 2, 2)
    assert torch.equal(first.inputs[1], torch.full((2, 2), -1.0))
    only_empty = pad_collate([torch.zeros(0, 2), torch.zeros(0, 2)])
    assert only_empty.inputs.shape == (0, 2, 2) and only_empty.lengths.tolist() == [0, 0]


def test_collate_pairs_pad_sequence_targets_with_ignore_index():
    tokens = [torch.tensor([3, 4, 5]), torch.tensor([], dtype=torch.long), torch.tensor([6])]
    tags = [torch.tensor([1, 2, 1]), torch.tensor([], dtype=torch.long), torch.tensor([0])]
    batch = pad_collate(list(zip(tokens, tags, strict=True)))
    assert batch.inputs.tolist() == [[3, 0, 6], [4, 0, 0], [5, 0, 0]]
    assert batch.targets.tolist() == [[1, -100, 0], [2, -100, -100], [1, -100, -100]]
    assert batch.lengths.tolist() == batch.target_lengths.tolist() == [3, 0, 1]
    # the padded targets drop out of cross entropy
    logits = torch.randn(3, 3, 4)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 4), batch.targets.reshape(-1))
    real = torch.tensor([[0, 0], [1, 0], [2, 0], [0, 2]])
    manual = torch.stack(
        [
            torch.nn.functional.cross_entropy(logits[t, b][None], batch.targets[t, b][None])
            for t, b in real.tolist()
        ]
    ).mean()
    assert torch.allclose(loss, manual)

    seq2seq = pad_collate(
        [(torch.ones(2), torch.tensor([7, 8, 9])), (torch.ones(4), torch.tensor([1]))]
    )
    assert seq2seq.target_lengths.tolist() == [3, 1] and seq2seq.lengths.tolist() == [2, 4]


def test_collate_pairs_stack_scalar_and_vector_targets():
    batch = pad_collate([(torch.ones(2, 3), 1), (torch.ones(0, 3), 0), (torch.ones(5, 3), 2)])
    assert batch.targets.tolist() == [1, 0, 2] and batch.target_lengths is None
    vectors = PadCollate(sequence_targets=False)(
        [(torch.ones(2), torch.tensor([1.0, 0.0])), (torch.ones(1), torch.tensor([0.0, 1.0]))]
    )
    assert vectors.targets.shape == (2, 2)


def test_collate_python_lists_with_empty_ones():
    batch = pad_collate([[3, 4], [], [5]])
    assert batch.inputs.dtype == torch.int64
    assert batch.inputs.tolist() == [[3, 0, 5], [4, 0, 0]] and batch.lengths.tolist() == [2, 0, 1]
    pairs = pad_collate([([], []), ([1.5, 2.5], [1, 0])])
    assert pairs.inputs.dtype == torch.float32 and pairs.targets.dtype == torch.int64
    assert pairs.targets.tolist() == [[-100, 1], [-100, 0]]
    assert pad_collate([[], []]).inputs.shape == (0, 2)


def test_collate_dicts():
    items = [
        {"tokens": torch.tensor([1, 2, 3]), "tags": [0, 1, 0], "label": 1, "id": "s1"},
        {"tokens": torch.tensor([], dtype=torch.long), "tags": [], "label": 0, "id": "s2"},
    ]
    out = PadCollate(batch_first=True)(items)
    assert out["tokens"].tolist() == [[1, 2, 3], [0, 0, 0]]
    assert out["tags"].tolist() == [[0, 1, 0], [-100, -100, -100]]
    assert out["tokens_lengths"].tolist() == [3, 0]
    assert out["label"].tolist() == [1, 0]
    assert out["id"] == ["s1", "s2"]


def test_collate_errors_name_the_item():
    with pytest.raises(
        ValueError, match=r"batch\[1\] has shape \(2, 4\), but batch\[0\] has \(3, 3\)"
    ):
        pad_collate([torch.ones(3, 3), torch.ones(2, 4)])
    with pytest.raises(
        TypeError, match=r"batch\[1\] has dtype torch.float64, but batch\[0\] has torch.float32"
    ):
        pad_collate([torch.ones(3), torch.ones(2, dtype=torch.float64)])
    with pytest.raises(ValueError, match=r"batch must hold at least one item"):
        pad_collate([])
    with pytest.raises(
        ValueError,
        match=r"padding value for batch must be an integer for dtype torch.int64, got 0.5",
    ):
        PadCollate(padding_value=0.5)([torch.tensor([1, 2])])
    with pytest.raises(TypeError, match=r"batch\[1\] must be a \(sequence, target\) pair"):
        pad_collate([(torch.ones(2), 1), torch.ones(2)])
    with pytest.raises(
        ValueError, match=r"targets are stacked, so they must share one shape: item 1"
    ):
        PadCollate(sequence_targets=False)(
            [(torch.ones(2), torch.ones(2)), (torch.ones(2), torch.ones(3))]
        )


# ============================================================================ masks and packing
def test_masks_round_trip_and_prefix_check():
    lengths = torch.tensor([3, 0, 1, 2])
    mask = lengths_to_mask(lengths)
    assert mask.tolist() == [
        [True, False, True, True],
        [True, False, False, True],
        [True, False, False, False],
    ]
    assert torch.equal(
        lengths_to_mask(lengths, 5, batch_first=True), lengths_to_mask(lengths, 5).t()
    )
    assert torch.equal(mask_to_lengths(mask), lengths)
    assert torch.equal(
        mask_to_lengths(lengths_to_mask(lengths, 6, batch_first=True), batch_first=True), lengths
    )
    assert lengths_to_mask([0, 0]).shape == (0, 2)

    holey = mask.clone()
    holey[2, 3] = True  # sequence 3: True, True, True is fine; make a hole instead
    holey[1, 3] = False
    with pytest.raises(
        ValueError, match=r"prefix mask .*sequence 3 is False at step 1 and True again at step 2"
    ):
        mask_to_lengths(holey)
    with pytest.raises(ValueError, match=r"max_len must be >= the longest length 3, got 2"):
        lengths_to_mask(lengths, 2)
    with pytest.raises(
        TypeError,
        match=r"mask must be a bool tensor, got a tensor of shape \(2, 2\), dtype torch.int64",
    ):
        mask_to_lengths(torch.ones(2, 2, dtype=torch.long))


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("options", [{}, {"num_layers": 2, "bidirectional": True}])
def test_pack_unpack_matches_lstm_with_lengths(batch_first, options):
    torch.manual_seed(0)
    lstm = lstmkit.LSTM(3, 5, batch_first=batch_first, **options).double()
    D = 2 if options.get("bidirectional") else 1
    L = options.get("num_layers", 1)
    lengths = torch.tensor([4, 0, 6, 1, 0, 6])
    B, T = len(lengths), 6
    x = (
        torch.randn(B, T, 3, dtype=torch.float64)
        if batch_first
        else torch.randn(T, B, 3, dtype=torch.float64)
    )
    hx = (
        torch.randn(L * D, B, 5, dtype=torch.float64),
        torch.randn(L * D, B, 5, dtype=torch.float64),
    )
    expected, (h_ref, c_ref) = lstm(x, hx, lengths=lengths)

    packed = pack(x, lengths, batch_first=batch_first)
    assert packed.nonempty.tolist() == [0, 2, 3, 5]
    out, final = lstm(packed.sequence, packed.select_state(hx))
    y = unpack(packed, out)
    h_n, c_n = packed.restore_state(final, hx)
    assert y.shape == expected.shape
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_n, h_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(c_n, c_ref, rtol=0, atol=1e-12)
    assert torch.equal(h_n[:, 1], hx[0][:, 1]) and torch.equal(c_n[:, 4], hx[1][:, 4])

    # without hx the empty rows end in the zero state, like lengths= does
    _, final0 = lstm(packed.sequence)
    h0, _ = packed.restore_state(final0)
    torch.testing.assert_close(h0, lstm(x, lengths=lengths)[1][0], rtol=0, atol=1e-12)
    assert not h0[:, [1, 4]].any()


def test_pack_when_every_sequence_is_empty_and_gradients_flow():
    x = torch.randn(3, 2, 4)
    packed = pack(x, [0, 0])
    assert packed.sequence is None
    y = packed.unpack(None, feature_shape=(7,))
    assert y.shape == (3, 2, 7) and not y.any()
    gru = lstmkit.GRU(4, 7)
    h = packed.restore_state(torch.zeros(1, 0, 7), gru.initial_state(2))
    assert h.shape == (1, 2, 7)

    x = torch.randn(4, 3, 4, requires_grad=True)
    packed = pack(x, [4, 0, 2])
    out, h = gru(packed.sequence)
    unpack(packed, out).sum().backward()
    assert x.grad is not None and not x.grad[:, 1].any() and x.grad[:2, 2].abs().sum() > 0
    assert not x.grad[2:, 2].any()


def test_pack_errors():
    with pytest.raises(
        ValueError, match=r"lengths must be <= the sequence length 3 of input, got a length of 4"
    ):
        pack(torch.zeros(3, 2, 1), [4, 1])
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        pack(torch.zeros(3, 2, 1), [1, 1, 1])
    packed = pack(torch.zeros(3, 2, 1), [3, 0])
    with pytest.raises(
        ValueError, match=r"hx must be \(layers \* directions, 2, size\), got shape \(1, 3, 4\)"
    ):
        packed.select_state(torch.zeros(1, 3, 4))
    with pytest.raises(
        ValueError,
        match=r"final must hold the 1 non-empty rows in dimension 1, got shape \(1, 2, 4\)",
    ):
        packed.restore_state(torch.zeros(1, 2, 4))
    other = pack(torch.zeros(3, 2, 1), [2, 1]).sequence
    with pytest.raises(ValueError, match=r"output must be packed like .sequence"):
        packed.unpack(other)


# ============================================================================ LM streams
def test_batchify_makes_contiguous_streams_and_drops_the_remainder():
    tokens = torch.arange(23)
    data = batchify(tokens, 4)
    assert data.shape == (5, 4)
    for b in range(4):
        assert data[:, b].tolist() == list(range(5 * b, 5 * b + 5))
    with pytest.raises(ValueError, match=r"tokens has 3 tokens, fewer than batch_size = 4"):
        batchify(torch.arange(3), 4)
    with pytest.raises(ValueError, match=r"tokens must be 1-D .*got shape \(2, 3\)"):
        batchify(torch.zeros(2, 3), 2)


@pytest.mark.parametrize("random_length", [False, True])
def test_bptt_windows_cover_the_stream_once_with_shifted_targets(random_length):
    data = batchify(torch.arange(1006), 3)  # (335, 3): 334 steps = 37 * 9 + 1
    windows = BPTTWindows(data, 9, random_length=random_length, std=3.0, min_length=2, seed=1)
    for _ in range(2):  # two epochs
        got = list(windows)
        assert torch.equal(torch.cat([w.inputs for w in got]), data[:-1])
        assert torch.equal(torch.cat([w.targets for w in got]), data[1:])
        assert [w.start for w in got] == np.cumsum([0] + [w.seq_len for w in got[:-1]]).tolist()
        for w in got:
            assert w.inputs.shape == w.targets.shape == (w.seq_len, 3)
            assert torch.equal(w.targets[:-1], w.inputs[1:])
            assert w.reset is None
        if not random_length:
            assert [w.seq_len for w in got] == [9] * 37 + [1]
            assert len(windows) == len(got) == 38


def test_random_lengths_are_seeded_and_follow_the_awd_lstm_distribution():
    data = torch.zeros(400_001, 1, dtype=torch.long)

    def draw(seed: int) -> list[int]:
        windows = BPTTWindows(data, 40, random_length=True, std=2.0, min_length=5, seed=seed)
        return [w.seq_len for w in windows]

    lengths = np.array(draw(7)[:-1])  # the last window is cut by the end of the stream
    assert draw(7)[:-1] == lengths.tolist()
    assert draw(8)[: len(lengths) // 2] != lengths[: len(lengths) // 2].tolist()
    halves = lengths < 30  # the two modes, 40 and 20, are 5 standard deviations from 30
    assert abs(halves.mean() - 0.05) < 0.01
    # int() truncates the normal draw, which lowers the mean by half a step
    assert abs(lengths[~halves].mean() - 39.5) < 0.1
    assert abs(lengths[halves].mean() - 19.5) < 0.3
    assert abs(lengths[~halves].std() - math.sqrt(4 + 1 / 12)) < 0.1

    short = [
        w.seq_len
        for w in BPTTWindows(
            torch.zeros(5000, 1), 6, random_length=True, std=4.0, min_length=4, max_length=8
        )
    ]
    assert min(short[:-1]) == 4 and max(short) == 8
    assert len(BPTTWindows(torch.zeros(5, 1), 2)) == 2
    with pytest.raises(TypeError, match=r"len\(\) is undefined with random_length=True"):
        len(BPTTWindows(torch.zeros(5, 1), 2, random_length=True))


def test_bptt_resume_continues_exactly():
    data = batchify(torch.arange(2000), 2)
    original = BPTTWindows(data, 12, random_length=True, std=3.0, seed=3)
    it = iter(original)
    for _ in range(10):
        next(it)
    state = json.loads(json.dumps(original.state_dict()))
    rest = [(w.start, w.seq_len) for w in it] + [(w.start, w.seq_len) for w in original]
    resumed = BPTTWindows(data, 12, random_length=True, std=3.0, seed=99)
    resumed.load_state_dict(state)
    again = [(w.start, w.seq_len) for w in resumed] + [(w.start, w.seq_len) for w in resumed]
    assert again == rest
    with pytest.raises(
        ValueError, match=r"state\['position'\] must be < the 1000 rows of data, got 5000"
    ):
        resumed.load_state_dict({"position": 5000, "rng": state["rng"]})
    with pytest.raises(ValueError, match=r"state\['rng'\] is not a NumPy generator state"):
        resumed.load_state_dict({"position": 0, "rng": {"bit_generator": "nope"}})


def test_document_reset_mask_marks_document_starts():
    docs = [
        torch.arange(100, 105),
        torch.arange(200, 203),
        torch.tensor([], dtype=torch.long),
        torch.arange(300, 309),
    ]
    data, reset = batchify_documents(docs, 2)  # 17 tokens -> (8, 2), one dropped
    flat = torch.cat(docs)
    assert torch.equal(data, batchify(flat, 2))
    assert reset.dtype == torch.bool and reset.shape == data.shape
    starts = {0, 5, 8}
    for b in range(2):
        for t in range(8):
            assert bool(reset[t, b]) == (b * 8 + t in starts)
    windows = list(BPTTWindows(data, 3, reset=reset))
    assert torch.equal(torch.cat([w.reset for w in windows]), reset[:-1])
    with pytest.raises(
        ValueError, match=r"reset must have the shape of data \(8, 2\), got \(8, 3\)"
    ):
        BPTTWindows(data, 3, reset=torch.zeros(8, 3, dtype=torch.bool))


def test_resetting_state_at_document_starts_isolates_documents():
    """A TBPTT loop that carries state across windows and resets it where the mask says gives
    each token the output of its own document run from scratch."""
    torch.manual_seed(0)
    gru = lstmkit.GRU(1, 4).double().eval()
    docs = [torch.arange(1.0, 4.0), torch.arange(10.0, 15.0), torch.arange(20.0, 24.0)]
    data, reset = batchify_documents(docs, 1)
    outputs, hx = [], None
    for w in BPTTWindows(data, 4, reset=reset):
        steps = w.inputs.double().unsqueeze(-1)
        cuts = [0, *[t for t in range(1, w.seq_len) if w.reset[t, 0]], w.seq_len]
        for a, b in itertools.pairwise(cuts):
            if hx is not None:
                hx = gru.reset_state(hx, w.reset[a])
            y, hx = gru(steps[a:b], hx)
            outputs.append(y)
        hx = hx.detach()
    carried = torch.cat(outputs)[:, 0, :]
    separate = torch.cat([gru(d.double()[:, None, None])[0][:, 0, :] for d in docs])[:-1]
    torch.testing.assert_close(carried, separate, rtol=0, atol=1e-12)


# ============================================================================ sliding windows
def test_window_counts_and_contents_follow_the_formula():
    series = [torch.arange(30.0), torch.arange(100.0, 117.0), torch.arange(7.0)]
    lookback, horizon, stride = 5, 3, 4
    with pytest.warns(UserWarning, match=r"skipped 1 of 3 series .*= 8 steps: indices 2"):
        ds = SlidingWindows(series, lookback, horizon, stride)
    assert ds.windows_per_series() == [(30 - 8) // 4 + 1, (17 - 8) // 4 + 1, 0] == [6, 3, 0]
    assert len(ds) == 9 and ds.skipped == [2]
    seen = []
    for i in range(len(ds)):
        item = ds[i]
        s, start = item["series"], item["start"]
        seen.append((s, start))
        assert torch.equal(item["past"], series[s][start : start + 5])
        assert torch.equal(item["future"], series[s][start + 5 : start + 8])
    # anchored at the end: the last window of each series ends at its last step
    assert seen == [(0, 2), (0, 6), (0, 10), (0, 14), (0, 18), (0, 22), (1, 1), (1, 5), (1, 9)]
    with pytest.warns(UserWarning):
        starts = SlidingWindows(series, lookback, horizon, stride, anchor="start")
    assert [starts.locate(i) for i in range(len(starts))] == [
        (0, 0),
        (0, 4),
        (0, 8),
        (0, 12),
        (0, 16),
        (0, 20),
        (1, 0),
        (1, 4),
        (1, 8),
    ]
    assert ds.locate(-1) == (1, 9)
    with pytest.raises(IndexError, match=r"index 9 is out of range for 9 windows"):
        ds[9]


def test_windows_multivariate_with_covariates_aligned():
    L = 12
    values = np.stack([np.arange(L), -np.arange(L)], axis=1).astype(np.float64)  # (L, 2)
    past_cov = np.arange(L) * 10.0  # 1-D: becomes (L, 1)
    calendar = np.stack([np.arange(L) % 7, np.arange(L) % 24], axis=1)
    ds = SlidingWindows(values, 4, 2, past_covariates=past_cov, future_covariates=calendar)
    assert len(ds) == L - 6 + 1
    item = ds[3]
    start = item["start"]
    assert start == 3
    assert item["past"].shape == (4, 2) and item["future"].shape == (2, 2)
    assert item["past"].dtype == torch.float32
    assert item["past"][:, 0].tolist() == list(range(3, 7)) and item["future"][:, 1].tolist() == [
        -7,
        -8,
    ]
    assert item["past_covariates"].shape == (4, 1)
    assert item["past_covariates"][:, 0].tolist() == [30, 40, 50, 60]
    assert item["future_covariates"].shape == (6, 2)
    assert item["future_covariates"][:, 0].tolist() == [s % 7 for s in range(3, 9)]
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["past"].shape == (4, 4, 2) and batch["future_covariates"].shape == (4, 6, 2)
    assert batch["start"].tolist() == [0, 1, 2, 3]


def test_windows_reject_non_finite_values_with_their_position():
    good, bad = torch.arange(10.0), torch.arange(10.0)
    bad[4] = float("nan")
    with pytest.raises(
        ValueError,
        match=r"series\[1\] \(series index 1\) must be finite, got nan at time step 4; pass allow_missing=True",
    ):
        SlidingWindows([good, bad], 3, 1)
    multi = torch.zeros(8, 3)
    multi[6, 2] = float("inf")
    with pytest.raises(
        ValueError,
        match=r"series \(series index 0\) must be finite, got inf at time step 6 \(column 2\)",
    ):
        SlidingWindows(multi, 3, 1)
    with pytest.raises(ValueError, match=r"got inf at time step 6 \(column 2\)$"):
        SlidingWindows(multi, 3, 1, allow_missing=True)  # missing means NaN, never inf
    cov = np.ones(10)
    cov[2] = np.nan
    with pytest.raises(
        ValueError,
        match=r"past_covariates\[0\] \(series index 0\) must be finite, got nan at time step 2",
    ):
        SlidingWindows([good], 3, 1, past_covariates=[cov])


def test_windows_allow_missing_returns_masks():
    s = torch.arange(8.0)
    s[[1, 6]] = float("nan")
    ds = SlidingWindows(s, 4, 2, allow_missing=True, anchor="start")
    item = ds[0]
    assert item["past"].tolist() == [0.0, 0.0, 2.0, 3.0]
    assert item["past_mask"].tolist() == [True, False, True, True]
    assert item["future_mask"].tolist() == [True, True]
    assert ds[2]["future_mask"].tolist() == [False, True]
    assert not torch.isnan(ds[2]["future"]).any()


def test_windows_argument_errors():
    with pytest.raises(
        ValueError,
        match=r"no series is long enough for one window of lookback \+ horizon = 10 steps; the longest has 6",
    ):
        SlidingWindows([torch.zeros(6), torch.zeros(4)], 7, 3)
    with pytest.raises(
        ValueError, match=r"series\[1\] has shape \(9, 3\) but series\[0\] has \(9, 2\)"
    ):
        SlidingWindows([torch.zeros(9, 2), torch.zeros(9, 3)], 3, 1)
    with pytest.raises(
        ValueError,
        match=r"future_covariates\[1\] has 8 time steps but its series \(index 1\) has 9",
    ):
        SlidingWindows(
            [torch.zeros(9), torch.zeros(9)],
            3,
            1,
            future_covariates=[torch.zeros(9, 2), torch.zeros(8, 2)],
        )
    with pytest.raises(
        ValueError,
        match=r"past_covariates must be a list of 2 arrays, one per series, got a list of 1",
    ):
        SlidingWindows([torch.zeros(9), torch.zeros(9)], 3, 1, past_covariates=[torch.zeros(9)])
    with pytest.raises(
        ValueError, match=r"series must be 1-D \(L,\) or 2-D \(L, features\), got shape \(2, 3, 4\)"
    ):
        SlidingWindows(torch.zeros(2, 3, 4), 1, 1)
    with pytest.raises(ValueError, match=r"anchor must be one of 'end', 'start', got 'middle'"):
        SlidingWindows(torch.zeros(9), 3, 1, anchor="middle")


# ============================================================================ readers
def test_read_text(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes("\ufeffHällo\nwörld\n".encode())
    assert read_text(p) == "Hällo\nwörld\n"
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.txt is empty: expected UTF-8 text"):
        read_text(empty)
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"ok\nstill ok\ncaf\xe9\n")
    with pytest.raises(
        ValueError, match=r"latin\.txt, line 3: not valid UTF-8 \(byte 0xe9 at offset 15\)"
    ):
        read_text(latin)
    with pytest.raises(FileNotFoundError, match=r"nothere\.txt: no such file"):
        read_text(tmp_path / "nothere.txt")


CSV = """date,load,temp,comment
2024-01-01,1.5,-3,a
2024-01-02,2.25,1e1,b

2024-01-03,-4,0.5,"c, quoted"
"""


def test_read_csv_series(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text(CSV)
    table = read_csv_series(p, ["temp", "load"], time_column="date", dtype=torch.float64)
    assert table.columns == ("temp", "load")
    assert table.values.tolist() == [[-3.0, 1.5], [10.0, 2.25], [0.5, -4.0]]
    assert table.times == ["2024-01-01", "2024-01-02", "2024-01-03"]
    one = read_csv_series(p, "load")
    assert one.values.shape == (3, 1) and one.values.dtype == torch.float32 and one.times is None
    semi = tmp_path / "semi.csv"
    semi.write_text("a;b\n1;2\n3;4\n")
    assert read_csv_series(semi, ["b"], delimiter=";").values[:, 0].tolist() == [2.0, 4.0]


@pytest.mark.parametrize(
    ("text", "kwargs", "pattern"),
    [
        (
            CSV,
            {"value_columns": ["load", "pressure"]},
            r"s\.csv, row 1 \(header\): no column 'pressure'; the columns are \['date', 'load', 'temp', 'comment'\]",
        ),
        (
            "a,b\n1,2\n3\n",
            {"value_columns": ["a"]},
            r"s\.csv, row 3: expected 2 fields like the header, got 1",
        ),
        (
            "a,b\n1,2\n3,x7\n",
            {"value_columns": ["a", "b"]},
            r"s\.csv, row 3, column 'b' \(field 2\): expected a number, got 'x7'",
        ),
        (
            "a,b\n1,2\n\n3,\n",
            {"value_columns": ["b"]},
            r"s\.csv, row 4, column 'b' \(field 2\): missing value ''; pass allow_missing=True",
        ),
        (
            "a,b\n1,NaN\n",
            {"value_columns": ["b"]},
            r"row 2, column 'b' \(field 2\): missing value 'NaN'",
        ),
        (
            "a,b\n1,inf\n",
            {"value_columns": ["b"], "allow_missing": True},
            r"row 2, column 'b' \(field 2\): the value 'inf' is infinite",
        ),
        ("", {"value_columns": ["a"]}, r"s\.csv is empty: expected a header row and data rows"),
        ("\n\na,b\n", {"value_columns": ["a"]}, r"s\.csv has a header \(row 3\) but no data rows"),
        (
            "a,a\n1,2\n",
            {"value_columns": ["a"]},
            r"row 1 \(header\): the column name 'a' appears more than once",
        ),
    ],
    ids=[
        "missing-column",
        "ragged",
        "non-numeric",
        "empty-cell",
        "nan",
        "inf",
        "empty-file",
        "no-rows",
        "duplicate",
    ],
)
def test_read_csv_series_errors_name_file_row_and_column(tmp_path, text, kwargs, pattern):
    p = tmp_path / "s.csv"
    p.write_text(text)
    with pytest.raises(ValueError, match=pattern):
        read_csv_series(p, **kwargs)


def test_read_csv_series_allow_missing(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("v,w\n1,\nNA,2\n3,4\n")
    values = read_csv_series(p, ["v", "w"], allow_missing=True).values
    assert torch.isnan(values).tolist() == [[False, True], [True, False], [False, False]]
    assert values[2].tolist() == [3.0, 4.0]


CONLLU = """# newdoc id = d1
# sent_id = 1
# text = I can't go.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tcan't\t_\t_\t_\t_\t_\t_\t_\t_
2\tca\tcan\tAUX\tMD\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
4\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_
4.1\tgo\tgo\tVERB\tVB\t_\t_\t_\t3:conj\t_
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

# sent_id = 2
1\tNew York\tNew York\tPROPN\tNNP\t_\t0\troot\t_\t_
2\t!\t!\tPUNCT\t.\t_\t1\tpunct\t_\t_"""


def test_read_conllu(tmp_path):
    p = tmp_path / "x.conllu"
    p.write_text(CONLLU)  # no trailing blank line after the last sentence
    assert read_conllu(p) == [
        [("I", "PRON"), ("ca", "AUX"), ("n't", "PART"), ("go", "VERB"), (".", "PUNCT")],
        [("New York", "PROPN"), ("!", "PUNCT")],
    ]
    crlf = tmp_path / "crlf.conllu"
    crlf.write_bytes(CONLLU.replace("\n", "\r\n").encode())
    assert read_conllu(crlf) == read_conllu(p)


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        (
            "3 went go VERB VBD _ 0 root _ _",
            r"x\.conllu, line 4: expected 10 tab-separated fields .*got 1",
        ),
        (
            "x\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_",
            r"x\.conllu, line 4: the ID must be a word index .*got 'x'",
        ),
        ("4\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_", r"x\.conllu, line 4: expected word ID 3 .*got 4"),
        (
            "3\tgo\tgo\t\tVB\t_\t0\troot\t_\t_",
            r"x\.conllu, line 4: the UPOS field \(word 3\) is empty",
        ),
    ],
    ids=["spaces", "bad-id", "gap", "empty-upos"],
)
def test_read_conllu_errors_name_file_and_line(tmp_path, line, pattern):
    p = tmp_path / "x.conllu"
    p.write_text(
        "# sent_id = 1\n1\ta\ta\tDET\tDT\t_\t2\tdet\t_\t_\n2\tb\tb\tNOUN\tNN\t_\t0\troot\t_\t_\n"
        + line
        + "\n"
    )
    with pytest.raises(ValueError, match=pattern):
        read_conllu(p)


def test_read_conllu_without_sentences(tmp_path):
    p = tmp_path / "c.conllu"
    p.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match=r"c\.conllu holds no sentences"):
        read_conllu(p)


# ============================================================================ docs
DOCS = Path(__file__).resolve().parents[1] / "docs" / "data.md"
DOC_BLOCKS = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S) if DOCS.exists() else []


@pytest.mark.parametrize("code", DOC_BLOCKS, ids=[f"block{i}" for i in range(len(DOC_BLOCKS))])
def test_docs_examples_run(code):
    exec(compile(code, str(DOCS), "exec"), {"__name__": "docs_example"})


def test_docs_have_examples():
    assert len(DOC_BLOCKS) >= 10


# ============================================================================ real data (slow)
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"no shared data at {DATA}")

UPOS = {
    "ADJ",
    "ADP",
    "ADV",
    "AUX",
    "CCONJ",
    "DET",
    "INTJ",
    "NOUN",
    "NUM",
    "PART",
    "PRON",
    "PROPN",
    "PUNCT",
    "SCONJ",
    "SYM",
    "VERB",
    "X",
}


@pytest.mark.slow
@needs_data
def test_real_ud_english_ewt_bucketed():
    sentences = read_conllu(DATA / "ud_en_ewt" / "en_ewt-ud-dev.conllu")
    assert len(sentences) == 2001
    assert {tag for s in sentences for _, tag in s} == UPOS
    lengths = [len(s) for s in sentences]
    bucketed = list(BucketBatchSampler(lengths, 32, seed=0))
    random_batches = list(BucketBatchSampler(lengths, 32, num_buckets=1, seed=0))
    assert padding_fraction(bucketed, lengths) < 0.5 * padding_fraction(random_batches, lengths)


@pytest.mark.slow
@needs_data
def test_real_text_and_series():
    assert len(read_text(DATA / "tinyshakespeare" / "input.txt")) == 1_115_394
    table = read_csv_series(DATA / "series" / "ETTh1.csv", ["HUFL", "OT"], time_column="date")
    assert table.values.shape[1] == 2 and table.times[0] == "2016-07-01 00:00:00"
    ds = SlidingWindows(table.values, 96, 24, stride=24)
    assert len(ds) == (table.values.shape[0] - 120) // 24 + 1
