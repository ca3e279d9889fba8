"""Decoder state as a *pytree*: nested tuples, lists and dicts whose leaves are tensors.

A decoder's state is whatever its step function needs to carry: ``(h, c)`` of an LSTM stack, a
list of per-layer states, a dict holding the encoder memory next to the recurrent state, or a
:class:`~lstmkit.nn.attention.Memory` named tuple. The search algorithms never look inside it; they
only need to *reorder its rows* (when beams are reordered) and *repeat its rows* (when each
sequence of a batch is expanded into ``beam_size`` hypotheses). Both act on the FIRST dimension of
every leaf, which is why the decode contract puts the row dimension first (``(N, ...)``), even
for recurrent states whose torch layout is ``(num_layers, N, H)``: the step function transposes
what it stores, once, rather than every search algorithm guessing where the batch lives.

``None`` leaves are allowed (a state that is not there yet) and pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._checks import describe


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(value, "_fields")


def map_state(fn: Callable[[Tensor], Tensor], state: Any, *, name: str = "state") -> Any:
    """Apply ``fn`` to every tensor leaf of ``state`` and rebuild the same structure.

    Tuples (named tuples keep their type), lists and dicts are traversed; ``None`` is kept; any
    other leaf raises ``TypeError`` naming its path (e.g. ``state[1]['memory']``), because a leaf
    the decoder cannot reorder would silently desynchronise from the beams.
    """
    if isinstance(state, Tensor):
        return fn(state)
    if state is None:
        return None
    if _is_namedtuple(state):
        fields = zip(state._fields, state, strict=True)
        return type(state)(*(map_state(fn, v, name=f"{name}.{f}") for f, v in fields))
    if isinstance(state, tuple):
        return tuple(map_state(fn, v, name=f"{name}[{i}]") for i, v in enumerate(state))
    if isinstance(state, list):
        return [map_state(fn, v, name=f"{name}[{i}]") for i, v in enumerate(state)]
    if isinstance(state, dict):
        return {k: map_state(fn, v, name=f"{name}[{k!r}]") for k, v in state.items()}
    raise TypeError(
        f"{name} must be a tensor, None, or a tuple/list/dict of them (a decoder state whose rows "
        f"the search can reorder), got {describe(state)}"
    )


def leaves(state: Any, *, name: str = "state") -> list[tuple[str, Tensor]]:
    """Every tensor leaf of ``state`` with its path, in traversal order."""
    found: list[tuple[str, Tensor]] = []

    def visit(value: Any, path: str) -> None:
        if isinstance(value, Tensor):
            found.append((path, value))
        elif value is None:
            return
        elif _is_namedtuple(value):
            for f, v in zip(value._fields, value, strict=True):
                visit(v, f"{path}.{f}")
        elif isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                visit(v, f"{path}[{i}]")
        elif isinstance(value, dict):
            for k, v in value.items():
                visit(v, f"{path}[{k!r}]")
        else:
            raise TypeError(
                f"{path} must be a tensor, None, or a tuple/list/dict of them (a decoder state "
                f"whose rows the search can reorder), got {describe(value)}"
            )

    visit(state, name)
    return found


def state_batch_size(state: Any, *, name: str = "state") -> int | None:
    """The common first dimension of every tensor leaf, or ``None`` when there is no tensor.

    Raises ``ValueError`` naming the first leaf that disagrees, or a 0-d leaf (it has no row to
    reorder).
    """
    size: int | None = None
    first = ""
    for path, tensor in leaves(state, name=name):
        if tensor.dim() == 0:
            raise ValueError(
                f"{path} must have the rows (one per sequence or hypothesis) as its first "
                f"dimension, got a 0-d tensor"
            )
        if size is None:
            size, first = int(tensor.shape[0]), path
        elif tensor.shape[0] != size:
            raise ValueError(
                f"every tensor of {name} must have the same first dimension (rows), "
                f"got {size} for {first} and {tensor.shape[0]} for {path} "
                f"(shape {tuple(tensor.shape)})"
            )
    return size


def index_state(state: Any, index: Tensor) -> Any:
    """Select rows ``index`` (a 1-D int64 tensor) of every leaf: the beam reordering."""
    return map_state(lambda t: t.index_select(0, index.to(t.device)), state)


def repeat_state(state: Any, repeats: int) -> Any:
    """Repeat every row ``repeats`` times in place (``a a b b``, not ``a b a b``): row ``b * K + k``
    of the result is hypothesis ``k`` of sequence ``b``."""
    return map_state(lambda t: torch.repeat_interleave(t, repeats, dim=0), state)
