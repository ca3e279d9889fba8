"""Batching variable-length sequences: a bucketing batch sampler, padding collate, masks, packing.

Recurrent layers pay for every padded step: a batch of one 90-step and thirty-one 10-step
sentences costs 90 x 32 steps of compute for 400 real ones. :class:`BucketBatchSampler` puts
sequences of similar length together so that little is padded, while keeping enough randomness
(shuffled buckets, shuffled batch order, a reproducible per-epoch seed) for SGD, and it splits an
epoch between DDP ranks and resumes mid-epoch exactly. :class:`PadCollate` turns a list of
sequences into a padded tensor plus ``lengths``; :func:`lengths_to_mask`,
:func:`mask_to_lengths` and :func:`pack` / :func:`unpack` move between padded batches, masks and
``PackedSequence`` without tripping over empty sequences, which ``torch.nn.utils.rnn`` refuses.
"""

from __future__ import annotations

import numbers
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
from torch.utils.data import Sampler

from .. import _checks

__all__ = [
    "BucketBatchSampler",
    "PackedBatch",
    "PadCollate",
    "PaddedBatch",
    "lengths_to_mask",
    "mask_to_lengths",
    "pack",
    "pad_collate",
    "padding_fraction",
    "unpack",
]


def _lengths_array(name: str, value: Any) -> np.ndarray:
    """``value`` (a list, tuple, 1-D array or 1-D tensor of non-negative ints) as int64 numpy."""
    if isinstance(value, Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got a tensor of dtype {value.dtype}")
        array = value.detach().cpu().numpy()
    elif isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.integer):
            raise TypeError(f"{name} must hold integers, got an array of dtype {value.dtype}")
        array = value
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{name}[{i}] must be an int, got {_checks.describe(v)}")
        array = np.asarray(value, dtype=np.int64)
    else:
        raise TypeError(
            f"{name} must be a list of ints, a 1-D integer array or tensor, "
            f"got {_checks.describe(value)}"
        )
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(array.shape)}")
    array = array.astype(np.int64, copy=False)
    if array.size and int(array.min()) < 0:
        i = int(np.argmin(array))
        raise ValueError(f"{name} must be >= 0, got {name}[{i}] = {int(array[i])}")
    return array


# ============================================================================ the batch sampler
class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length sequences, shuffled, reproducible, DDP-aware and resumable.

    Use it as ``DataLoader(dataset, batch_sampler=sampler, collate_fn=PadCollate())``.

    **How an epoch is built.** With ``shuffle=True`` the examples are sorted by length (ties in a
    random order) and cut into ``num_buckets`` buckets of equal size, so each bucket holds a band
    of similar lengths. Each bucket is shuffled, the buckets are laid end to end in length order,
    and this sequence is cut into batches, whose order is shuffled last. ``num_buckets=1`` is
    plain random batching; ``num_buckets=len(lengths)`` is fully sorted batching (least padding,
    least randomness). With ``shuffle=False`` the examples are taken in sorted order and the
    batches come shortest first (evaluation). The random generator is seeded with
    ``(seed, epoch)``: :meth:`set_epoch` gives each epoch its own order, and the same seed and
    epoch give the same batches on every run and every rank.

    **Batch size.** ``batch_size`` fixes the number of examples per batch. ``max_tokens`` instead
    caps the padded size of a batch, ``longest length x number of examples``: batches are filled
    greedily and never exceed the budget, except that one example longer than the budget gets a
    batch of its own. A zero-length example counts as length 1 here, so that a batch never grows
    without bound. Both may be given: then ``batch_size`` caps the number of examples as well.

    **DDP.** With ``num_replicas`` ranks (default: the world size when ``torch.distributed`` is
    initialised, else 1), every rank builds the same global list of batches and takes every
    ``num_replicas``-th one, starting at ``rank``. Each example is on exactly one rank. So that
    every rank gets the same number of batches (a rank with one batch fewer would hang the
    others at the gradient all-reduce), the remainder is handled explicitly: with
    ``drop_last=False`` the largest batches are split in two until the count divides
    ``num_replicas`` (nothing is dropped or repeated; a split batch is smaller, never larger);
    with ``drop_last=True`` the last ``count % num_replicas`` batches (random ones, the order is
    shuffled) are dropped for this epoch. ``drop_last=True`` with a fixed ``batch_size`` also
    drops ``len(lengths) % batch_size`` examples, so that every batch is full: random ones (the
    longest ones with ``shuffle=False``), so that long sequences are not the ones always left out.

    **Resume.** :meth:`state_dict` records the epoch and the number of batches this rank's
    iterator has handed out; after :meth:`load_state_dict` the next iteration yields exactly the
    remaining batches of that epoch, and later ones start from the beginning of an epoch. Calling
    :meth:`set_epoch` with the epoch that was loaded keeps the resume position, so a loop that
    calls ``set_epoch`` at the start of every epoch (as Lightning does) still resumes correctly.
    ``len(sampler)`` is the number of batches of a full epoch on this rank.

    **Lightning.** Under DDP create the Trainer with ``use_distributed_sampler=False``: this
    sampler already gives each rank its share, and Lightning cannot wrap a batch sampler that
    does not derive from ``torch.utils.data.BatchSampler``.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray | Tensor,
        batch_size: int | None = None,
        *,
        max_tokens: int | None = None,
        num_buckets: int = 10,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if isinstance(lengths, Sampler):
            raise TypeError(
                "lengths must be the sequence lengths, got a torch Sampler: BucketBatchSampler "
                "splits the data between DDP ranks itself, so create the Lightning Trainer with "
                "use_distributed_sampler=False"
            )
        self.lengths = _lengths_array("lengths", lengths)
        if self.lengths.size == 0:
            raise ValueError("lengths must hold at least one example, got an empty sequence")
        if batch_size is None and max_tokens is None:
            raise ValueError("give batch_size (examples per batch) or max_tokens (a token budget)")
        self.batch_size = (
            None if batch_size is None else _checks.positive_int("batch_size", batch_size)
        )
        self.max_tokens = (
            None if max_tokens is None else _checks.positive_int("max_tokens", max_tokens)
        )
        self.num_buckets = _checks.positive_int("num_buckets", num_buckets)
        self.shuffle = _checks.boolean("shuffle", shuffle)
        # Stored under a private name on purpose: Lightning re-creates a batch sampler that has both
        # .batch_size and .drop_last as cls(sampler, batch_size=..., drop_last=...), which would
        # pass a Sampler as lengths. Without .drop_last it leaves this sampler in place.
        self._drop_last = _checks.boolean("drop_last", drop_last)
        self.seed = _checks.positive_int("seed", seed, allow_zero=True)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if distributed else 1
        if rank is None:
            rank = torch.distributed.get_rank() if distributed else 0
        self.num_replicas = _checks.positive_int("num_replicas", num_replicas)
        self.rank = _checks.positive_int("rank", rank, allow_zero=True)
        if self.rank >= self.num_replicas:
            raise ValueError(
                f"rank must be in [0, num_replicas) = [0, {self.num_replicas}), got {self.rank}"
            )
        n = self.lengths.size
        if n < self.num_replicas and not self._drop_last:
            raise ValueError(
                f"lengths has {n} examples, fewer than num_replicas = {self.num_replicas}: "
                "some ranks would get no batch"
            )
        self.epoch = 0
        self._resume_from = 0  # batches of self.epoch to skip on the next iteration
        self._consumed = 0  # batches of self.epoch handed out so far
        self._plan: tuple[int, list[list[int]]] | None = None

    # ------------------------------------------------------------------ epoch and resume
    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch``; call it at the start of every epoch.

        A different epoch discards a pending resume position; the epoch that was just loaded with
        :meth:`load_state_dict` keeps it.
        """
        epoch = _checks.positive_int("epoch", epoch, allow_zero=True)
        if epoch != self.epoch:
            self.epoch = epoch
            self._resume_from = 0
            self._consumed = 0

    def state_dict(self, *, batches_consumed: int | None = None) -> dict[str, int]:
        """The epoch and how far into it this rank is, plus what the batch plan depends on.

        By default the position is the number of batches the iterator has handed out. A
        ``DataLoader`` with worker processes draws batches ahead of the training loop (up to
        ``num_workers * prefetch_factor``), so a loop that checkpoints in the middle of an epoch
        should pass the number of batches it has actually finished as ``batches_consumed``.
        """
        consumed = self._consumed
        if batches_consumed is not None:
            consumed = _checks.positive_int("batches_consumed", batches_consumed, allow_zero=True)
        return {
            "epoch": self.epoch,
            "batches_consumed": consumed,
            "seed": self.seed,
            "num_replicas": self.num_replicas,
            "num_examples": int(self.lengths.size),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state_dict`): the next iteration yields the
        batches of ``state['epoch']`` after the first ``state['batches_consumed']``.

        The seed, the number of replicas and the number of examples must match the saved ones:
        with any of them changed the saved position would point into a different batch plan.
        """
        if not isinstance(state, Mapping):
            raise TypeError(
                f"state must be a mapping from state_dict(), got {_checks.describe(state)}"
            )
        keys = ("epoch", "batches_consumed", "seed", "num_replicas", "num_examples")
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"state is missing the keys {missing}; it must come from state_dict()")
        for key in ("seed", "num_replicas", "num_examples"):
            mine = self.state_dict()[key]
            if state[key] != mine:
                raise ValueError(
                    f"state[{key!r}] is {state[key]!r} but this sampler has {key} = {mine}: "
                    "the saved position belongs to a different batch plan"
                )
        epoch = _checks.positive_int("state['epoch']", state["epoch"], allow_zero=True)
        consumed = _checks.positive_int(
            "state['batches_consumed']", state["batches_consumed"], allow_zero=True
        )
        previous = self.epoch
        self.epoch = epoch
        total = len(self)
        if consumed > total:
            self.epoch = previous
            raise ValueError(
                f"state['batches_consumed'] is {consumed} but epoch {epoch} has only {total} "
                f"batches on rank {self.rank}"
            )
        self._resume_from = consumed
        self._consumed = consumed

    # ------------------------------------------------------------------ the plan
    def _chunk(self, order: np.ndarray) -> list[np.ndarray]:
        """Cut ``order`` (example indices) into consecutive batches."""
        if self.max_tokens is None:
            assert self.batch_size is not None
            size = self.batch_size
            return [order[i : i + size] for i in range(0, order.size, size)]
        budget, cap = self.max_tokens, self.batch_size
        cost = np.maximum(self.lengths[order], 1)
        batches = []
        begin, longest = 0, 0
        for i in range(order.size):
            longest_with = max(longest, int(cost[i]))
            count = i - begin
            if count and (
                longest_with * (count + 1) > budget or (cap is not None and count >= cap)
            ):
                batches.append(order[begin:i])
                begin, longest_with = i, int(cost[i])
            longest = longest_with
        batches.append(order[begin:])
        return batches

    def _even_out(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """Split the largest batches until their number divides ``num_replicas``."""
        replicas = self.num_replicas
        while len(batches) % replicas:
            sizes = [b.size for b in batches]
            largest = int(np.argmax(sizes))
            if sizes[largest] < 2:
                raise ValueError(
                    f"epoch {self.epoch} has {len(batches)} batches of one example each, which "
                    f"cannot be shared evenly by {replicas} replicas without repeating an "
                    "example; pass drop_last=True to drop the "
                    f"{len(batches) % replicas} remainder batches instead"
                )
            half = (sizes[largest] + 1) // 2
            big = batches[largest]
            batches[largest : largest + 1] = [big[:half], big[half:]]
        return batches

    def _global_batches(self, epoch: int) -> list[np.ndarray]:
        n = self.lengths.size
        rng = np.random.default_rng([self.seed, epoch])
        if self.shuffle:
            perm = rng.permutation(n)
            order = perm[np.argsort(self.lengths[perm], kind="stable")]
            buckets = np.array_split(order, min(self.num_buckets, n))
            order = np.concatenate([rng.permutation(bucket) for bucket in buckets])
        else:
            order = np.argsort(self.lengths, kind="stable")
        if self._drop_last and self.max_tokens is None:
            assert self.batch_size is not None
            extra = n % self.batch_size
            if extra:  # drop random examples, not always the longest bucket's last ones
                keep = np.ones(n, dtype=bool)  # over positions in order
                if self.shuffle:
                    keep[rng.choice(n, extra, replace=False)] = False
                else:
                    keep[n - extra :] = False  # sorted: the longest
                order = order[keep]
        batches = self._chunk(order)
        if not self._drop_last:
            batches = self._even_out(batches)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self._drop_last:
            batches = batches[: len(batches) - len(batches) % self.num_replicas]
        if not batches:
            raise ValueError(
                f"epoch {epoch} has fewer batches than num_replicas = {self.num_replicas} after "
                "drop_last dropped the remainder: no rank gets a batch"
            )
        return batches

    def _batches(self) -> list[list[int]]:
        """This rank's batches for ``self.epoch`` (computed once per epoch)."""
        if self._plan is None or self._plan[0] != self.epoch:
            mine = self._global_batches(self.epoch)[self.rank :: self.num_replicas]
            self._plan = (self.epoch, [b.tolist() for b in mine])
        return self._plan[1]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        start, self._resume_from = self._resume_from, 0
        for i in range(start, len(batches)):
            self._consumed = i + 1  # counted before the yield: the batch is the caller's now
            yield batches[i]

    def __len__(self) -> int:
        return len(self._batches())

    def __repr__(self) -> str:
        size = (
            f"batch_size={self.batch_size}"
            if self.max_tokens is None
            else (f"max_tokens={self.max_tokens}, batch_size={self.batch_size}")
        )
        return (
            f"BucketBatchSampler({self.lengths.size} examples, {size}, "
            f"num_buckets={self.num_buckets}, shuffle={self.shuffle}, drop_last={self._drop_last}, "
            f"seed={self.seed}, rank={self.rank}/{self.num_replicas}, epoch={self.epoch})"
        )


def padding_fraction(
    batches: Iterable[Sequence[int]], lengths: Sequence[int] | np.ndarray | Tensor
) -> float:
    """The share of padded positions in ``batches``: ``1 - real tokens / padded tokens``.

    A batch of ``k`` examples whose longest has length ``m`` occupies ``m * k`` positions. This is
    the number the bucketing sampler is there to reduce; 0.0 means no padding at all (also
    returned when the batches hold no position).
    """
    lens = _lengths_array("lengths", lengths)
    padded = real = 0
    for b, batch in enumerate(batches):
        idx = np.asarray(list(batch), dtype=np.int64)
        if idx.size == 0:
            continue
        if int(idx.min()) < 0 or int(idx.max()) >= lens.size:
            bad = int(idx[(idx < 0) | (idx >= lens.size)][0])
            raise ValueError(
                f"batches[{b}] holds the index {bad}, outside lengths (size {lens.size})"
            )
        sub = lens[idx]
        padded += int(sub.max()) * idx.size
        real += int(sub.sum())
    return 0.0 if padded == 0 else 1.0 - real / padded


# ============================================================================ collate
class PaddedBatch(NamedTuple):
    """A padded batch. ``inputs`` is ``(T, B, *)`` (``(B, T, *)`` with ``batch_first``) and
    ``lengths`` the int64 length of each sequence. ``targets`` is None without targets, stacked
    ``(B, *)`` for per-sequence targets, or padded like ``inputs`` for sequence targets, whose
    lengths are then in ``target_lengths`` (they may differ from ``lengths``, as in seq2seq)."""

    inputs: Tensor
    lengths: Tensor
    targets: Tensor | None = None
    target_lengths: Tensor | None = None


def _is_numeric_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(
        isinstance(v, numbers.Number) and not isinstance(v, bool) for v in value
    )


def _tensor_like(value: Any) -> bool:
    """Whether collate turns ``value`` into a tensor (else it is collected in a list)."""
    return (
        isinstance(value, (Tensor, np.ndarray))
        or _is_numeric_list(value)
        or (isinstance(value, numbers.Number) and not isinstance(value, bool))
    )


def _as_tensor(name: str, value: Any) -> Tensor | None:
    """``value`` as a tensor; None for an empty Python list, whose dtype and trailing shape are
    unknown until the other sequences of the batch are seen (see :func:`_pad`)."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 0:
        return None
    if isinstance(value, np.ndarray) or _is_numeric_list(value):
        return torch.as_tensor(value)
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return torch.as_tensor(value)
    raise TypeError(
        f"{name} must be a tensor, an array or a list of numbers, got {_checks.describe(value)}"
    )


def _pad(
    name: str, items: Sequence[Tensor | None], value: float, batch_first: bool
) -> tuple[Tensor, Tensor]:
    """Pad tensors ``(L_i, *)`` to ``(T, B, *)`` or ``(B, T, *)``; ``T = max L_i``, may be 0.

    None stands for an empty Python list: it becomes a length-0 sequence shaped and typed like
    the others (float32 if all are empty lists), so that ``[[3, 4], []]`` pads as int64.
    """
    known = [s for s in items if s is not None]
    template = known[0] if known else torch.empty(0)
    seqs = [template.new_empty((0, *template.shape[1:])) if s is None else s for s in items]
    first = seqs[0]
    for i, s in enumerate(seqs):
        if s.dim() == 0:
            raise ValueError(f"{name}[{i}] must have a time dimension (L, *), got a 0-D tensor")
        if s.shape[1:] != first.shape[1:]:
            raise ValueError(
                f"{name}[{i}] has shape {tuple(s.shape)}, but {name}[0] has {tuple(first.shape)}: "
                "all sequences must agree on every dimension after the first (time)"
            )
        if s.dtype != first.dtype:
            raise TypeError(
                f"{name}[{i}] has dtype {s.dtype}, but {name}[0] has {first.dtype}: "
                "convert them to one dtype"
            )
    if not first.is_floating_point() and not first.is_complex() and float(value) != int(value):
        raise ValueError(
            f"the padding value for {name} must be an integer for dtype {first.dtype}, got {value}"
        )
    lengths = torch.tensor([s.shape[0] for s in seqs], dtype=torch.int64)
    T = int(lengths.max())
    out = first.new_full((len(seqs), T, *first.shape[1:]), value)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
    if not batch_first:
        out = out.transpose(0, 1).contiguous()
    return out, lengths


class PadCollate:
    """A ``collate_fn`` that pads variable-length sequences and reports their lengths.

    Each item of the batch is one of:

    - a sequence ``(L, *)`` (tensor, array or list of numbers) -> ``PaddedBatch(inputs, lengths)``;
    - a pair ``(sequence, target)`` -> ``PaddedBatch(inputs, lengths, targets, target_lengths)``.
      A 0-D target (a class id, a value) is stacked to ``(B,)``; a target with a time dimension
      is padded with ``target_padding_value`` (default -100, the ``ignore_index`` of
      ``cross_entropy``, so padded steps drop out of the loss) and its lengths are returned.
      ``sequence_targets=False`` stacks vector targets (one multi-label vector per sequence)
      instead of padding them;
    - a dict -> a dict with the same keys: values with a time dimension padded (with
      ``target_padding_value`` for the keys in ``target_keys``, else ``padding_value``) plus
      ``'<key>_lengths'``; 0-D values and keys in ``stack_keys`` stacked; numbers made tensors;
      anything else (ids, strings) collected in a list.

    Empty sequences (length 0) are fine: their rows are all padding and their length is 0,
    which the lstmkit layers accept as ``lengths=``. The decision to pad or stack depends on the
    item types only, never on the lengths in a batch, so every batch has the same structure.
    """

    def __init__(
        self,
        *,
        padding_value: float = 0.0,
        target_padding_value: float = -100,
        batch_first: bool = False,
        sequence_targets: bool = True,
        target_keys: Collection[str] = ("target", "targets", "labels", "tags", "y"),
        stack_keys: Collection[str] = (),
    ) -> None:
        self.padding_value = _checks.real("padding_value", padding_value)
        self.target_padding_value = _checks.real("target_padding_value", target_padding_value)
        self.batch_first = _checks.boolean("batch_first", batch_first)
        self.sequence_targets = _checks.boolean("sequence_targets", sequence_targets)
        for key_name, keys in (("target_keys", target_keys), ("stack_keys", stack_keys)):
            if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
                raise TypeError(f"{key_name} must be a collection of str, got {keys!r}")
        self.target_keys = frozenset(target_keys)
        self.stack_keys = frozenset(stack_keys)

    def __call__(self, batch: Sequence[Any]) -> Any:
        if not isinstance(batch, Sequence) or isinstance(batch, str):
            raise TypeError(f"batch must be a list of items, got {_checks.describe(batch)}")
        if len(batch) == 0:
            raise ValueError("batch must hold at least one item, got an empty list")
        first = batch[0]
        if isinstance(first, Mapping):
            return self._collate_dicts(batch)
        if isinstance(first, tuple) and not all(isinstance(v, numbers.Number) for v in first):
            return self._collate_pairs(batch)
        seqs = [_as_tensor(f"batch[{i}]", item) for i, item in enumerate(batch)]
        inputs, lengths = _pad("batch", seqs, self.padding_value, self.batch_first)
        return PaddedBatch(inputs, lengths)

    def _collate_pairs(self, batch: Sequence[Any]) -> PaddedBatch:
        xs: list[Tensor | None] = []
        ys: list[Tensor | None] = []
        for i, item in enumerate(batch):
            if not isinstance(item, tuple) or len(item) != 2:
                raise TypeError(
                    f"batch[{i}] must be a (sequence, target) pair like batch[0], "
                    f"got {_checks.describe(item)}"
                )
            xs.append(_as_tensor(f"batch[{i}][0]", item[0]))
            ys.append(_as_tensor(f"batch[{i}][1]", item[1]))
        inputs, lengths = _pad("inputs", xs, self.padding_value, self.batch_first)
        first = next((y for y in ys if y is not None), None)
        if self.sequence_targets and (first is None or first.dim() >= 1):
            targets, target_lengths = _pad(
                "targets", ys, self.target_padding_value, self.batch_first
            )
            return PaddedBatch(inputs, lengths, targets, target_lengths)
        return PaddedBatch(inputs, lengths, _stack("targets", ys))

    def _collate_dicts(self, batch: Sequence[Any]) -> dict[str, Any]:
        keys = list(batch[0].keys())
        for i, item in enumerate(batch):
            if not isinstance(item, Mapping) or list(item.keys()) != keys:
                raise ValueError(
                    f"batch[{i}] must be a dict with the keys of batch[0] {keys}, "
                    f"got {_checks.describe(item if not isinstance(item, Mapping) else list(item))}"
                )
        out: dict[str, Any] = {}
        for key in keys:
            values = [item[key] for item in batch]
            if all(_tensor_like(v) for v in values):
                tensors = [_as_tensor(f"batch[{i}][{key!r}]", v) for i, v in enumerate(values)]
                first = next((t for t in tensors if t is not None), None)
                if (first is not None and first.dim() == 0) or key in self.stack_keys:
                    out[key] = _stack(f"batch[...][{key!r}]", tensors)
                    continue
                lengths_key = f"{key}_lengths"
                if lengths_key in keys:
                    raise ValueError(
                        f"the items have a key {lengths_key!r}, which would clash with the "
                        f"lengths of the padded key {key!r}; rename it"
                    )
                value = self.target_padding_value if key in self.target_keys else self.padding_value
                out[key], out[lengths_key] = _pad(
                    f"batch[...][{key!r}]", tensors, value, self.batch_first
                )
            else:
                out[key] = values
        return out

    def __repr__(self) -> str:
        return (
            f"PadCollate(padding_value={self.padding_value}, "
            f"target_padding_value={self.target_padding_value}, batch_first={self.batch_first}, "
            f"sequence_targets={self.sequence_targets})"
        )


def _stack(name: str, items: Sequence[Tensor | None]) -> Tensor:
    values = [torch.empty(0) if v is None else v for v in items]
    for i, v in enumerate(values):
        if v.shape != values[0].shape:
            raise ValueError(
                f"{name} are stacked, so they must share one shape: item {i} has "
                f"{tuple(v.shape)}, item 0 has {tuple(values[0].shape)}"
            )
    return torch.stack(list(values))


def pad_collate(batch: Sequence[Any]) -> Any:
    """``PadCollate()`` with its defaults (time-major, pad inputs with 0 and targets with -100)."""
    return _DEFAULT_COLLATE(batch)


_DEFAULT_COLLATE = PadCollate()


# ============================================================================ masks and packing
def lengths_to_mask(
    lengths: Sequence[int] | Tensor, max_len: int | None = None, *, batch_first: bool = False
) -> Tensor:
    """Boolean validity mask, True at the first ``lengths[b]`` steps of sequence ``b``.

    Shape ``(T, B)`` (``(B, T)`` with ``batch_first``); ``T = max_len`` or the longest length.
    """
    batch_first = _checks.boolean("batch_first", batch_first)
    lens = torch.as_tensor(_lengths_array("lengths", lengths))
    longest = int(lens.max()) if lens.numel() else 0
    if max_len is None:
        T = longest
    else:
        T = _checks.positive_int("max_len", max_len, allow_zero=True)
        if longest > T:
            raise ValueError(f"max_len must be >= the longest length {longest}, got {T}")
    device = lengths.device if isinstance(lengths, Tensor) else None
    mask = torch.arange(T)[:, None] < lens[None, :]
    mask = mask.to(device) if device is not None else mask
    return mask.t().contiguous() if batch_first else mask


def mask_to_lengths(mask: Tensor, *, batch_first: bool = False) -> Tensor:
    """The int64 lengths of a prefix mask ``(T, B)`` (``(B, T)`` with ``batch_first``).

    The mask must be a *prefix* mask: True for the first steps of a sequence and False after. A
    mask with a hole (True after a False) is not a set of lengths and is refused rather than
    summed, which would silently move the end of the sequence.
    """
    batch_first = _checks.boolean("batch_first", batch_first)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {_checks.describe(mask)}")
    if mask.dim() != 2:
        layout = "(B, T)" if batch_first else "(T, B)"
        raise ValueError(f"mask must be 2-D {layout}, got shape {tuple(mask.shape)}")
    time_major = mask.t() if batch_first else mask
    lengths = time_major.sum(0, dtype=torch.int64)
    expected = torch.arange(time_major.shape[0], device=mask.device)[:, None] < lengths[None, :]
    bad = (expected != time_major).nonzero()
    if bad.numel():
        b = int(bad[0, 1])
        row = time_major[:, b]
        gap = int((~row).nonzero()[0])
        after = int(row[gap:].nonzero()[0]) + gap
        raise ValueError(
            f"mask must be a prefix mask (True for the first steps of each sequence, then "
            f"False), but sequence {b} is False at step {gap} and True again at step {after}"
        )
    return lengths


def _state_parts(name: str, state: Any) -> tuple[list[Tensor], bool]:
    """A state as a list of tensors and whether it was a tuple (LSTM's ``(h, c)``)."""
    if isinstance(state, Tensor):
        return [state], False
    if isinstance(state, (tuple, list)) and state and all(isinstance(s, Tensor) for s in state):
        return list(state), True
    raise TypeError(
        f"{name} must be a tensor or a tuple of tensors (h, c), got {_checks.describe(state)}"
    )


@dataclass(frozen=True)
class PackedBatch:
    """A padded batch packed for a recurrent layer, with what is needed to undo it.

    ``torch.nn.utils.rnn.pack_padded_sequence`` refuses sequences of length 0. :func:`pack`
    packs the non-empty rows only (``sequence``, None when every row is empty) and remembers
    which rows they were (``nonempty``), so that :meth:`unpack` can rebuild the full padded batch
    (empty rows are all padding) and :meth:`restore_state` can put back the final states of the
    empty rows, which have seen no input and so end in their initial state. States follow
    torch's convention: ``(layers * directions, B, size)``, batch in dimension 1.
    """

    sequence: PackedSequence | None
    nonempty: Tensor
    lengths: Tensor
    total_length: int
    batch_first: bool
    dtype: torch.dtype
    device: torch.device

    @property
    def batch_size(self) -> int:
        return int(self.lengths.numel())

    def select_state(self, hx: Any) -> Any:
        """``hx`` (batch ``B`` in dimension 1, or None) cut to the non-empty rows, in the order
        the packed sequence expects, to pass as the initial state with :attr:`sequence`."""
        if hx is None:
            return None
        parts, is_tuple = _state_parts("hx", hx)
        for k, part in enumerate(parts):
            if part.dim() != 3 or part.shape[1] != self.batch_size:
                raise ValueError(
                    f"hx{f'[{k}]' if is_tuple else ''} must be (layers * directions, "
                    f"{self.batch_size}, size), got shape {tuple(part.shape)}"
                )
        picked = [p.index_select(1, self.nonempty.to(p.device)) for p in parts]
        return tuple(picked) if is_tuple else picked[0]

    def restore_state(self, final: Any, initial: Any = None) -> Any:
        """The full-batch final state: ``final`` (from running :attr:`sequence`) for the
        non-empty rows, ``initial`` (default zeros; pass ``module.initial_state(B)`` for a
        learned initial state, or the ``hx`` you started from) for the empty ones."""
        parts, is_tuple = _state_parts("final", final)
        k = int(self.nonempty.numel())
        for j, part in enumerate(parts):
            if part.dim() != 3 or part.shape[1] != k:
                raise ValueError(
                    f"final{f'[{j}]' if is_tuple else ''} must hold the {k} non-empty rows in "
                    f"dimension 1, got shape {tuple(part.shape)}"
                )
        if initial is None:
            bases = [p.new_zeros(p.shape[0], self.batch_size, *p.shape[2:]) for p in parts]
        else:
            bases, init_tuple = _state_parts("initial", initial)
            if init_tuple != is_tuple or len(bases) != len(parts):
                raise TypeError("initial must have the structure of final (a tensor or (h, c))")
            for j, (b, p) in enumerate(zip(bases, parts, strict=True)):
                want = (p.shape[0], self.batch_size, *p.shape[2:])
                if tuple(b.shape) != want:
                    raise ValueError(
                        f"initial{f'[{j}]' if is_tuple else ''} must have shape {want}, "
                        f"got {tuple(b.shape)}"
                    )
        out = [
            b.index_copy(1, self.nonempty.to(b.device), p.to(b.dtype))
            for b, p in zip(bases, parts, strict=True)
        ]
        return tuple(out) if is_tuple else out[0]

    def unpack(
        self,
        output: PackedSequence | None,
        *,
        padding_value: float = 0.0,
        feature_shape: Sequence[int] = (),
    ) -> Tensor:
        """The full padded batch ``(T, B, *)`` (``(B, T, *)`` with ``batch_first``) from the
        packed ``output`` of a layer run on :attr:`sequence`; rows of empty sequences hold
        ``padding_value``. When every sequence is empty there was nothing to run: pass
        ``output=None`` and the trailing ``feature_shape`` of the output (e.g. ``(hidden,)``)."""
        if output is None:
            if self.sequence is not None:
                raise ValueError("output must be the PackedSequence from running .sequence")
            shape = tuple(
                _checks.positive_int("feature_shape", s, allow_zero=True) for s in feature_shape
            )
            full = torch.full(
                (self.total_length, self.batch_size, *shape),
                padding_value,
                dtype=self.dtype,
                device=self.device,
            )
            return full.transpose(0, 1) if self.batch_first else full
        if not isinstance(output, PackedSequence):
            raise TypeError(f"output must be a PackedSequence, got {_checks.describe(output)}")
        if self.sequence is None:
            raise ValueError("every sequence is empty, so output must be None")
        if not torch.equal(output.batch_sizes, self.sequence.batch_sizes):
            raise ValueError(
                "output must be packed like .sequence (same batch_sizes): run the layer on "
                ".sequence of this PackedBatch"
            )
        padded, _ = pad_packed_sequence(
            output, batch_first=False, padding_value=padding_value, total_length=self.total_length
        )
        full = padded.new_full(
            (self.total_length, self.batch_size, *padded.shape[2:]), padding_value
        )
        full = full.index_copy(1, self.nonempty.to(full.device), padded)
        return full.transpose(0, 1) if self.batch_first else full


def pack(x: Tensor, lengths: Sequence[int] | Tensor, *, batch_first: bool = False) -> PackedBatch:
    """Pack a padded batch ``x`` ``(T, B, *)`` (``(B, T, *)`` with ``batch_first``) whose
    ``lengths`` may include zeros. See :class:`PackedBatch` for running a layer on it and
    getting back the padded output and the full-batch final state."""
    batch_first = _checks.boolean("batch_first", batch_first)
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {_checks.describe(x)}")
    if x.dim() < 2:
        layout = "(B, T, *)" if batch_first else "(T, B, *)"
        raise ValueError(f"x must be at least 2-D {layout}, got shape {tuple(x.shape)}")
    T, B = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
    lens = _checks.lengths_tensor(lengths, T, B, x.device).cpu()
    nonempty = (lens > 0).nonzero().flatten()
    sequence = None
    if nonempty.numel():
        rows = x.index_select(0 if batch_first else 1, nonempty.to(x.device))
        sequence = pack_padded_sequence(
            rows, lens[nonempty], batch_first=batch_first, enforce_sorted=False
        )
    return PackedBatch(sequence, nonempty, lens, int(T), batch_first, x.dtype, x.device)


def unpack(
    packed: PackedBatch, output: PackedSequence | None, *, padding_value: float = 0.0
) -> Tensor:
    """``packed.unpack(output)``: the full padded batch of a layer's packed output."""
    if not isinstance(packed, PackedBatch):
        raise TypeError(f"packed must be a PackedBatch from pack(), got {_checks.describe(packed)}")
    return packed.unpack(output, padding_value=padding_value)
