"""Token streams for language models trained with truncated backpropagation through time.

A word- or character-level language model reads one long token sequence. The standard recipe
(Zaremba et al. 2014; Merity et al. 2018, AWD-LSTM) cuts it into ``B`` parallel contiguous
streams (:func:`batchify`), walks them in consecutive windows of about ``bptt`` steps
(:class:`BPTTWindows`), and carries the recurrent state from one window to the next, detached,
so that the model sees unbroken context while gradients flow back only ``bptt`` steps. When the
corpus is a set of documents, :func:`batchify_documents` also returns where each document starts,
so that the loop can reset the carried state there instead of leaking one document's context into
the next.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .. import _checks

__all__ = ["BPTTWindow", "BPTTWindows", "batchify", "batchify_documents"]


def _token_vector(name: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a 1-D torch.Tensor, got {_checks.describe(value)}")
    if value.dim() != 1:
        raise ValueError(f"{name} must be 1-D (one token per step), got shape {tuple(value.shape)}")
    return value


def batchify(tokens: Tensor, batch_size: int) -> Tensor:
    """Split a 1-D token tensor into ``batch_size`` contiguous streams: shape ``(N, B)``.

    Stream ``b`` (column ``b``) is ``tokens[b * N : (b + 1) * N]`` with ``N = len(tokens) // B``,
    so reading a column top to bottom reads the text in order. The last ``len(tokens) % B``
    tokens do not fill a row and are dropped (fewer than ``B`` tokens: at most one per stream).
    """
    tokens = _token_vector("tokens", tokens)
    B = _checks.positive_int("batch_size", batch_size)
    N = tokens.shape[0] // B
    if N == 0:
        raise ValueError(
            f"tokens has {tokens.shape[0]} tokens, fewer than batch_size = {B}: "
            "no stream would get a token"
        )
    return tokens[: N * B].reshape(B, N).t().contiguous()


def batchify_documents(documents: Sequence[Tensor], batch_size: int) -> tuple[Tensor, Tensor]:
    """Concatenate ``documents`` (1-D token tensors) and :func:`batchify` them, with a reset mask.

    Returns ``data`` ``(N, B)`` as :func:`batchify` would for the concatenation, and ``reset``
    ``(N, B)`` bool, True where ``data[t, b]`` is the first token of a document. A TBPTT loop that
    carries state should reset stream ``b`` to its initial state before step ``t`` where
    ``reset[t, b]`` is True (:class:`BPTTWindows` slices the mask with each window).
    Empty documents contribute nothing (and no reset). Insert your end-of-document token, if any,
    before calling: this function does not add one.
    """
    if isinstance(documents, Tensor) or not isinstance(documents, Sequence):
        raise TypeError(
            f"documents must be a list of 1-D token tensors, got {_checks.describe(documents)}"
        )
    if not documents:
        raise ValueError("documents must hold at least one document, got an empty list")
    docs = [_token_vector(f"documents[{i}]", d) for i, d in enumerate(documents)]
    for i, d in enumerate(docs):
        if d.dtype != docs[0].dtype:
            raise TypeError(
                f"documents[{i}] has dtype {d.dtype}, but documents[0] has {docs[0].dtype}"
            )
    tokens = torch.cat(docs)
    starts = torch.zeros(tokens.shape[0], dtype=torch.bool)
    offset = 0
    for d in docs:
        if d.shape[0]:
            starts[offset] = True
        offset += d.shape[0]
    return batchify(tokens, batch_size), batchify(starts, batch_size)


class BPTTWindow(NamedTuple):
    """One window of a :class:`BPTTWindows` iteration.

    ``inputs`` and ``targets`` are ``(seq_len, B)`` views of the stream, ``targets`` one step
    ahead of ``inputs``. ``seq_len`` is this window's length (AWD-LSTM scales the learning rate by
    ``seq_len / bptt`` so that short windows do not get full-size steps). ``reset`` is the slice of
    the document-start mask aligned with ``inputs`` (None without one). ``start`` is the row of
    the stream at which ``inputs`` begins.
    """

    inputs: Tensor
    targets: Tensor
    seq_len: int
    reset: Tensor | None
    start: int


class BPTTWindows:
    """Consecutive windows over a batchified stream ``data`` ``(N, B)`` for truncated BPTT.

    A pass covers the stream exactly once: the windows' ``inputs`` concatenated are
    ``data[:-1]`` and their ``targets`` are ``data[1:]``. The last window is shorter when the
    stream does not divide evenly.

    With ``random_length=False`` every window has ``bptt`` steps. With ``random_length=True``
    each length is drawn as in AWD-LSTM (Merity et al. 2018): the base is ``bptt`` with
    probability ``p`` and ``bptt / 2`` otherwise, then ``seq_len = max(min_length,
    int(normal(base, std)))``, capped at ``max_length`` when given (and always at the end of the
    stream). The varying cut points mean that successive epochs do not always put the same tokens
    at the start of a window, where the model has the least gradient context. The draws come from
    a NumPy generator seeded with ``seed``.

    The object is a cursor over the stream: an iteration continues from where the previous one
    stopped, and one that reaches the end of the stream rewinds it (the next iteration is the next
    epoch; the random generator keeps going, so each epoch has new lengths). :meth:`state_dict`
    and :meth:`load_state_dict` save and restore the position and the generator: a restored object
    yields exactly the windows the original would have yielded next.
    """

    def __init__(
        self,
        data: Tensor,
        bptt: int,
        *,
        random_length: bool = False,
        p: float = 0.95,
        std: float = 5.0,
        min_length: int = 5,
        max_length: int | None = None,
        reset: Tensor | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(data, Tensor):
            raise TypeError(f"data must be a (N, B) torch.Tensor, got {_checks.describe(data)}")
        if data.dim() != 2:
            raise ValueError(
                f"data must be 2-D (N, B), e.g. from batchify(), got shape {tuple(data.shape)}"
            )
        if data.shape[0] < 2:
            raise ValueError(
                f"data must have at least 2 rows (an input and its next-step target), "
                f"got {data.shape[0]}"
            )
        self.data = data
        self.bptt = _checks.positive_int("bptt", bptt)
        self.random_length = _checks.boolean("random_length", random_length)
        self.p = _checks.real("p", p)
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        self.std = _checks.real("std", std)
        if self.std < 0:
            raise ValueError(f"std must be >= 0, got {std}")
        self.min_length = _checks.positive_int("min_length", min_length)
        self.max_length = (
            None if max_length is None else _checks.positive_int("max_length", max_length)
        )
        if self.max_length is not None and self.max_length < self.min_length:
            raise ValueError(
                f"max_length must be >= min_length = {self.min_length}, got {self.max_length}"
            )
        if reset is not None:
            if not isinstance(reset, Tensor) or reset.dtype != torch.bool:
                raise TypeError(
                    f"reset must be a bool tensor of shape {tuple(data.shape)}, "
                    f"got {_checks.describe(reset)}"
                )
            if reset.shape != data.shape:
                raise ValueError(
                    f"reset must have the shape of data {tuple(data.shape)}, "
                    f"got {tuple(reset.shape)}"
                )
        self.reset = reset
        self.seed = _checks.positive_int("seed", seed, allow_zero=True)
        self._rng = np.random.default_rng(self.seed)
        self.position = 0

    def _draw_length(self) -> int:
        if not self.random_length:
            return self.bptt
        base = self.bptt if self._rng.random() < self.p else self.bptt / 2
        length = max(self.min_length, int(self._rng.normal(base, self.std)))
        if self.max_length is not None:
            length = min(length, self.max_length)
        return length

    def __iter__(self) -> Iterator[BPTTWindow]:
        last = self.data.shape[0] - 1  # the final row is only ever a target
        while self.position < last:
            i = self.position
            seq_len = min(self._draw_length(), last - i)
            self.position = i + seq_len  # advanced before the yield: the window is handed out
            reset = None if self.reset is None else self.reset[i : i + seq_len]
            yield BPTTWindow(
                self.data[i : i + seq_len], self.data[i + 1 : i + 1 + seq_len], seq_len, reset, i
            )
        self.position = 0

    def __len__(self) -> int:
        """Windows in a full pass; only defined for fixed lengths (random ones vary)."""
        if self.random_length:
            raise TypeError("len() is undefined with random_length=True: the lengths are drawn")
        return -(-(self.data.shape[0] - 1) // self.bptt)

    def state_dict(self) -> dict[str, Any]:
        """The position in the stream and the random generator's state (plain Python values,
        JSON-serialisable)."""
        return {"position": self.position, "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state_dict` of an object over the same data)."""
        if not isinstance(state, Mapping) or "position" not in state or "rng" not in state:
            raise ValueError(
                f"state must be a dict with 'position' and 'rng' from state_dict(), "
                f"got {_checks.describe(state)}"
            )
        position = _checks.positive_int("state['position']", state["position"], allow_zero=True)
        if position >= self.data.shape[0]:
            raise ValueError(
                f"state['position'] must be < the {self.data.shape[0]} rows of data, got {position}"
            )
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = state["rng"]
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"state['rng'] is not a NumPy generator state: {err}") from err
        self._rng = rng
        self.position = position

    def __repr__(self) -> str:
        mode = (
            f"random_length=True, p={self.p}, std={self.std}, min_length={self.min_length}, "
            f"max_length={self.max_length}"
            if self.random_length
            else "random_length=False"
        )
        return (
            f"BPTTWindows(data of shape {tuple(self.data.shape)}, bptt={self.bptt}, {mode}, "
            f"position={self.position})"
        )
