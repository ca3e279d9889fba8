"""Attention over an encoder memory for one decoder step: Bahdanau (additive) and Luong
(multiplicative) scores, key padding masks, coverage, and keys projected once per sequence.

At decoder step ``t`` with query ``q`` (the decoder state, ``(B, query_size)``) and encoder
memory ``k_1 .. k_S`` (``(S, B, key_size)``, or ``(B, S, key_size)`` with ``batch_first=True``):

* ``BahdanauAttention`` (Bahdanau et al. 2015): ``e_i = v^T tanh(W_q q + W_k k_i + b)``.
* ``LuongAttention`` (Luong et al. 2015): ``e_i = q^T k_i`` (``'dot'``), ``q^T W_a k_i``
  (``'general'``) or ``v^T tanh(W_a [q; k_i])`` (``'concat'``, computed as
  ``v^T tanh(W_q q + W_k k_i)``: the same matrix split in two).
* weights ``a = softmax(e)`` over the valid positions (exactly 0 on padded ones) and context
  ``sum_i a_i v_i``, where the values ``v_i`` are the keys unless given separately.

**Precomputed keys.** The key-side term (``W_k k_i + b``, or ``W_a k_i``) does not depend on the
step, so :meth:`prepare` computes it once per source batch and returns a :class:`Memory`; each
step then costs one ``(B, S, H)`` addition and reduction instead of a ``(B*S, key_size) x
(key_size, H)`` product. ``Memory`` is a named tuple of batch-major tensors, so it can sit inside
a decoder state that :mod:`lstmkit.decode` reorders row-wise during beam search.

**Coverage** (See et al. 2017). With ``coverage=True`` the score of the additive forms gets a
term ``w_c * c_i``, where the coverage ``c = sum_{t' < t} a^{t'}`` is the attention each source
position received at the previous steps; this lets the model learn not to attend again to what
it already covered. The caller carries ``c`` (starting from zeros, then ``c + weights`` after
each step) and may add :func:`coverage_loss` to the training loss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .. import _checks
from .._checks import describe

#: Values of ``LuongAttention(score=...)``.
LUONG_SCORES = ("dot", "general", "concat")


class Memory(NamedTuple):
    """An encoder memory prepared by :meth:`BahdanauAttention.prepare` /
    :meth:`LuongAttention.prepare`, batch-major whatever ``batch_first`` was.

    Attributes:
        keys: ``(B, S, D)`` the key-side term of the score, already projected.
        values: ``(B, S, value_size)`` what the context averages.
        padding: ``(B, S)`` bool, True at padded positions.
    """

    keys: Tensor
    values: Tensor
    padding: Tensor


def coverage_loss(weights: Tensor, coverage: Tensor) -> Tensor:
    """The coverage loss of See et al. (2017) for one step: ``sum_i min(a_i, c_i)``.

    ``weights`` are this step's attention ``a`` and ``coverage`` the sum ``c`` of the previous
    steps' attention, both ``(..., S)``; the result has the leading shape ``(...)`` (sum over the
    source positions only, so the caller chooses how to average over steps and batch). It is 0
    exactly when this step attends only to positions that received no attention before, and it
    grows with the overlap: it penalises attending to the same place twice, the mechanism of
    repetition in summarisation.
    """
    _checks.floating_tensor("weights", weights)
    _checks.floating_tensor("coverage", coverage)
    if weights.shape != coverage.shape:
        raise ValueError(
            f"coverage must have the shape of weights {tuple(weights.shape)}, "
            f"got {tuple(coverage.shape)}"
        )
    return torch.minimum(weights, coverage).sum(dim=-1)


class _Attention(nn.Module, ABC):
    """Shared machinery: memory layout, masks, validation, the masked softmax and the context.
    A subclass provides ``_project_keys`` (the step-independent term) and ``_score``."""

    def __init__(self, query_size: int, key_size: int, *, batch_first: bool, coverage: bool):
        super().__init__()
        self.query_size = _checks.positive_int("query_size", query_size)
        self.key_size = _checks.positive_int("key_size", key_size)
        self.batch_first = _checks.boolean("batch_first", batch_first)
        self.coverage = _checks.boolean("coverage", coverage)

    @abstractmethod
    def _project_keys(self, keys: Tensor) -> Tensor:
        """The step-independent key term of the score, ``(B, S, key_size) -> (B, S, D)``."""

    @abstractmethod
    def _score(self, query: Tensor, keys: Tensor, coverage: Tensor | None) -> Tensor:
        """Scores ``(B, S)`` from the query ``(B, query_size)`` and the projected keys."""

    def _reference(self) -> Tensor | None:
        """A parameter whose dtype and device the inputs must match (None: no parameters)."""
        return next(iter(self.parameters()), None)

    def prepare(
        self,
        keys: Tensor,
        values: Tensor | None = None,
        *,
        lengths: Tensor | list[int] | None = None,
        key_padding_mask: Tensor | None = None,
    ) -> Memory:
        """Project the encoder memory once per source batch, for every later decoder step.

        Args:
            keys: ``(S, B, key_size)``, or ``(B, S, key_size)`` with ``batch_first=True``.
            values: what the context averages, same layout with any last size (default: keys).
            lengths: ``(B,)`` valid positions per sequence; the rest are padding.
            key_padding_mask: ``(B, S)`` bool, True at padded positions (``torch.nn``'s
                convention). Give at most one of ``lengths`` and ``key_padding_mask``; with
                neither, every position is valid.
        """
        _checks.floating_tensor("keys", keys)
        if keys.dim() != 3 or keys.shape[-1] != self.key_size:
            layout = "(B, S, key_size)" if self.batch_first else "(S, B, key_size)"
            raise ValueError(
                f"keys must have shape {layout} with key_size = {self.key_size}, "
                f"got {tuple(keys.shape)}"
            )
        reference = self._reference()
        if reference is not None:
            _checks.matches_parameters("keys", keys, reference)
        keys_bf = keys if self.batch_first else keys.transpose(0, 1)
        B, S = keys_bf.shape[0], keys_bf.shape[1]
        if values is None:
            values_bf = keys_bf
        else:
            _checks.floating_tensor("values", values)
            first, second = (B, S) if self.batch_first else (S, B)
            if values.dim() != 3 or values.shape[:2] != (first, second):
                expected = f"({first}, {second}, value_size)"
                raise ValueError(
                    f"values must have shape {expected}, matching keys {tuple(keys.shape)}, "
                    f"got {tuple(values.shape)}"
                )
            if values.dtype != keys.dtype or values.device != keys.device:
                raise TypeError(
                    f"values must have the dtype and device of keys ({keys.dtype} on "
                    f"{keys.device}), got {values.dtype} on {values.device}"
                )
            values_bf = values if self.batch_first else values.transpose(0, 1)
        padding = self._padding(B, S, keys.device, lengths, key_padding_mask)
        return Memory(self._project_keys(keys_bf), values_bf, padding)

    @staticmethod
    def _padding(
        B: int, S: int, device: torch.device, lengths: Any, key_padding_mask: Tensor | None
    ) -> Tensor:
        if lengths is not None and key_padding_mask is not None:
            raise ValueError("give lengths or key_padding_mask, not both")
        if lengths is not None:
            valid = _checks.lengths_tensor(lengths, S, B, device)
            return torch.arange(S, device=device)[None, :] >= valid[:, None]
        if key_padding_mask is not None:
            if not isinstance(key_padding_mask, Tensor) or key_padding_mask.dtype != torch.bool:
                raise TypeError(
                    "key_padding_mask must be a bool tensor (True at padded positions), "
                    f"got {describe(key_padding_mask)}"
                )
            if tuple(key_padding_mask.shape) != (B, S):
                raise ValueError(
                    f"key_padding_mask must have shape (B, S) = ({B}, {S}), "
                    f"got {tuple(key_padding_mask.shape)}"
                )
            return key_padding_mask.to(device)
        return torch.zeros(B, S, dtype=torch.bool, device=device)

    def forward(
        self,
        query: Tensor,
        memory: Memory | Tensor,
        *,
        values: Tensor | None = None,
        lengths: Tensor | list[int] | None = None,
        key_padding_mask: Tensor | None = None,
        coverage: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Attend from ``query`` ``(B, query_size)`` to ``memory``.

        ``memory`` is a :class:`Memory` from :meth:`prepare` (the fast path, once per source
        batch), or the raw keys, which are then prepared on every call with ``values``,
        ``lengths`` and ``key_padding_mask`` (those three only go with raw keys). ``coverage``
        ``(B, S)`` is the attention summed over the previous steps (``None``: zeros); only a
        module built with ``coverage=True`` takes it.

        Returns ``(context, weights)``: ``(B, value_size)`` and ``(B, S)``.
        """
        if isinstance(memory, Memory):
            if values is not None or lengths is not None or key_padding_mask is not None:
                raise ValueError(
                    "values, lengths and key_padding_mask go to prepare(); a prepared Memory "
                    "already holds them"
                )
        elif isinstance(memory, Tensor):
            memory = self.prepare(
                memory, values, lengths=lengths, key_padding_mask=key_padding_mask
            )
        else:
            raise TypeError(
                f"memory must be a Memory (from prepare()) or a keys tensor, got {describe(memory)}"
            )
        B, S = memory.padding.shape
        _checks.floating_tensor("query", query)
        if query.dim() != 2 or tuple(query.shape) != (B, self.query_size):
            raise ValueError(
                f"query must have shape (B, query_size) = ({B}, {self.query_size}), "
                f"got {tuple(query.shape)}"
            )
        if query.dtype != memory.keys.dtype or query.device != memory.keys.device:
            raise TypeError(
                f"query must have the memory's dtype and device ({memory.keys.dtype} on "
                f"{memory.keys.device}), got {query.dtype} on {query.device}"
            )
        if coverage is not None:
            if not self.coverage:
                raise ValueError(
                    "coverage was given but this module was built with coverage=False; build it "
                    "with coverage=True to feed the coverage into the score"
                )
            _checks.floating_tensor("coverage", coverage)
            if tuple(coverage.shape) != (B, S):
                raise ValueError(
                    f"coverage must have shape (B, S) = ({B}, {S}), got {tuple(coverage.shape)}"
                )
        elif self.coverage:
            coverage = memory.keys.new_zeros(B, S)
        scores = self._score(query, memory.keys, coverage)
        # finite fill, not -inf: a row with no valid position would give NaN, and NaN gradients
        # flow into every parameter; the final fill makes padded weights exactly 0 either way
        scores = scores.masked_fill(memory.padding, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1).masked_fill(memory.padding, 0.0)
        context = torch.bmm(weights.unsqueeze(1), memory.values).squeeze(1)
        return context, weights


class BahdanauAttention(_Attention):
    """Additive attention (Bahdanau et al. 2015): ``e_i = v^T tanh(W_q q + W_k k_i + b
    [+ w_c c_i])``.

    Args:
        query_size: size of the decoder state ``q``.
        key_size: size of an encoder position ``k_i``.
        hidden_size: size of the hidden layer of the score (``W_q``, ``W_k`` have this many rows).
        coverage: add the coverage term ``w_c c_i`` (See et al. 2017) to the score.
        batch_first: keys and values are ``(B, S, ...)`` rather than ``(S, B, ...)``.

    Parameters: ``query_proj.weight`` ``(hidden_size, query_size)``, ``key_proj.weight``
    ``(hidden_size, key_size)`` and ``key_proj.bias``, ``v.weight`` ``(1, hidden_size)``, and
    ``coverage_weight`` ``(hidden_size,)`` with ``coverage=True``.
    """

    def __init__(
        self,
        query_size: int,
        key_size: int,
        hidden_size: int,
        *,
        coverage: bool = False,
        batch_first: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(query_size, key_size, batch_first=batch_first, coverage=coverage)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        factory = {"device": device, "dtype": dtype}
        self.query_proj = nn.Linear(query_size, hidden_size, bias=False, **factory)
        self.key_proj = nn.Linear(key_size, hidden_size, bias=True, **factory)
        self.v = nn.Linear(hidden_size, 1, bias=False, **factory)
        self.coverage_weight = (
            nn.Parameter(torch.empty(hidden_size, **factory).uniform_(-0.1, 0.1))
            if coverage
            else None
        )

    def _project_keys(self, keys: Tensor) -> Tensor:
        return self.key_proj(keys)

    def extra_repr(self) -> str:
        return f"{self.query_size}, {self.key_size}, {self.hidden_size}, coverage={self.coverage}"

    def _score(self, query: Tensor, keys: Tensor, coverage: Tensor | None) -> Tensor:
        hidden = keys + self.query_proj(query).unsqueeze(1)
        if coverage is not None and self.coverage_weight is not None:
            hidden = hidden + coverage.unsqueeze(-1) * self.coverage_weight
        return self.v(torch.tanh(hidden)).squeeze(-1)


class LuongAttention(_Attention):
    """Multiplicative attention (Luong et al. 2015) with the paper's three scores.

    Args:
        query_size: size of the decoder state ``q``.
        key_size: size of an encoder position (default: ``query_size``; ``'dot'`` needs them
            equal).
        score: ``'dot'`` (``q^T k_i``, no parameters), ``'general'`` (``q^T W_a k_i``) or
            ``'concat'`` (``v^T tanh(W_a [q; k_i])``).
        hidden_size: rows of ``W_a`` for ``'concat'`` (default: ``query_size``).
        coverage: add ``w_c c_i`` inside the ``tanh`` of ``'concat'``; the bilinear scores have
            no hidden layer to feed it into, so ``'dot'`` and ``'general'`` refuse it.
        batch_first: keys and values are ``(B, S, ...)`` rather than ``(S, B, ...)``.

    The attentional hidden state ``tanh(W_c [context; q])`` of the paper belongs to the decoder
    that uses this module, which chooses where to feed it.
    """

    def __init__(
        self,
        query_size: int,
        key_size: int | None = None,
        *,
        score: str = "general",
        hidden_size: int | None = None,
        coverage: bool = False,
        batch_first: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        key_size = query_size if key_size is None else key_size
        super().__init__(query_size, key_size, batch_first=batch_first, coverage=coverage)
        self.score = _checks.choice("score", score, LUONG_SCORES)
        factory = {"device": device, "dtype": dtype}
        if score == "dot" and key_size != query_size:
            raise ValueError(
                f"score='dot' needs key_size == query_size, got key_size {key_size} and "
                f"query_size {query_size}; use score='general' to map between them"
            )
        if hidden_size is not None and score != "concat":
            raise ValueError(f"hidden_size only applies to score='concat', got score={score!r}")
        if coverage and score != "concat":
            raise ValueError(
                f"coverage=True needs score='concat' (an additive score to feed the coverage "
                f"into), got score={score!r}"
            )
        self.key_proj: nn.Linear | None = None
        self.query_proj: nn.Linear | None = None
        self.v: nn.Linear | None = None
        self.coverage_weight: nn.Parameter | None = None
        self.hidden_size: int | None = None
        if score == "general":
            self.key_proj = nn.Linear(key_size, query_size, bias=False, **factory)
        elif score == "concat":
            hidden = query_size if hidden_size is None else hidden_size
            self.hidden_size = _checks.positive_int("hidden_size", hidden)
            self.query_proj = nn.Linear(query_size, hidden, bias=False, **factory)
            self.key_proj = nn.Linear(key_size, hidden, bias=False, **factory)
            self.v = nn.Linear(hidden, 1, bias=False, **factory)
            if coverage:
                self.coverage_weight = nn.Parameter(
                    torch.empty(hidden, **factory).uniform_(-0.1, 0.1)
                )

    def _project_keys(self, keys: Tensor) -> Tensor:
        return keys if self.key_proj is None else self.key_proj(keys)

    def _score(self, query: Tensor, keys: Tensor, coverage: Tensor | None) -> Tensor:
        if self.v is None or self.query_proj is None:  # dot, general: q . (W_a k_i)
            return torch.bmm(keys, query.unsqueeze(-1)).squeeze(-1)
        hidden = keys + self.query_proj(query).unsqueeze(1)
        if coverage is not None and self.coverage_weight is not None:
            hidden = hidden + coverage.unsqueeze(-1) * self.coverage_weight
        return self.v(torch.tanh(hidden)).squeeze(-1)

    def extra_repr(self) -> str:
        return f"{self.query_size}, {self.key_size}, score={self.score!r}"
