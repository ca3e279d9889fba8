"""Truncated backpropagation through time with the recurrent state carried across windows.

A long stream (a corpus, a sensor feed) is cut into consecutive windows. Each training update
runs the model on the next window, *starting from the state the previous window ended in*, so the
model sees an unbounded past in its forward pass, while the backward pass stops after a bounded
number of steps. Following Williams & Peng (1990) and Sutskever (2013, section 2.8.6), TBPTT(k1, k2)
makes one update every ``k1`` steps and backpropagates ``k2`` steps:

* ``k1`` -- the forward stride: each update consumes ``k1`` new steps. ``k1=None`` takes each
  batch whole (the data already comes in windows, e.g. BPTT windows of a batchified corpus, whose
  length may vary as in AWD-LSTM); an integer cuts every batch into pieces of ``k1`` steps (the
  last may be shorter), one optimizer step per piece.
* ``k2`` -- the backward horizon: the graph of an update spans the last ``k2`` steps. ``k2=None``
  means ``k2 = `` the window's length (the usual ``k1 = k2``, windows that do not overlap).
  ``k2 > k1`` re-runs the last ``k2 - k1`` steps of earlier windows (kept with the state they
  started from) so that the gradient of the new steps reaches ``k2`` steps back.
  ``k2 < k1`` runs the first ``k1 - k2`` steps of the window without a graph (they only advance
  the state), so they are not part of the loss either.

The loss of an update is ``criterion(output, target)`` over the steps inside the graph: the
``min(k1, k2)`` newest. Between updates the state is detached, so no gradient ever crosses the
start of a graph. At a document boundary a per-stream *reset mask* sets the carried state of the
streams that start a new document back to the initial state (``model.reset_state`` when the model
has one, as lstmkit's layers do, zeros otherwise); :meth:`TBPTT.reset` forgets everything, at the
start of an epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import _checks

Criterion = Callable[[Tensor, Tensor], Any]


def detach_state(state: Any) -> Any:
    """``state`` (a tensor, or nested tuples/lists of tensors, or None) with every tensor detached
    from the graph: the values carry on, the gradient path ends here."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)
    raise TypeError(
        f"a recurrent state must be a tensor or a tuple of tensors, got {_checks.describe(state)}"
    )


def reset_state(model: nn.Module, state: Any, mask: Tensor | None) -> Any:
    """Set the streams where ``mask`` (bool, one entry per stream) is True back to the initial
    state. Uses ``model.reset_state(state, mask)`` when the model defines it (lstmkit's layers do,
    and honour a learned initial state); otherwise every state tensor is zeroed along its batch
    dimension, dimension 1 as in torch.nn's ``(layers * directions, batch, size)``."""
    if state is None or mask is None or not bool(mask.any()):
        return state
    own = getattr(model, "reset_state", None)
    if callable(own):
        return own(state, mask)
    return _zero_streams(state, mask)


def _zero_streams(state: Any, mask: Tensor) -> Any:
    if isinstance(state, Tensor):
        if state.dim() < 2 or state.shape[1] != mask.shape[0]:
            raise ValueError(
                f"reset mask has {mask.shape[0]} streams but a state tensor has shape "
                f"{tuple(state.shape)}; state tensors must be (layers, batch, ...) or the model "
                "must define reset_state(state, mask)"
            )
        m = mask.to(state.device).view(1, -1, *([1] * (state.dim() - 2)))
        return torch.where(m, torch.zeros((), dtype=state.dtype, device=state.device), state)
    if isinstance(state, (tuple, list)):
        return type(state)(_zero_streams(s, mask) for s in state)
    raise TypeError(
        f"a recurrent state must be a tensor or a tuple of tensors, got {_checks.describe(state)}"
    )


@dataclass
class _Segment:
    """A window already trained on, kept so that a later update can re-run it (k2 > k1)."""

    x: Tensor
    reset: Tensor | None
    state: Any  # the carried state before this segment (before its reset)


class TBPTT:
    """A stateful training objective for :func:`lstmkit.train.fit`: TBPTT(k1, k2).

    ``model(x, state) -> (output, new_state)`` is called with ``state=None`` at the start and then
    with the carried state; ``x`` and ``output`` have time along ``time_dim`` (0 for torch's
    ``(T, B, ...)``, 1 for ``batch_first``). Batches are ``(x, y)`` or ``(x, y, reset)``: ``y``
    is aligned with ``x`` along time, ``reset`` is a bool tensor with one entry per stream (True
    where the window starts a new document) or None. ``criterion(output, target)`` returns the
    mean loss, or ``(mean_loss, count)`` to weight windows in validation (default: the number of
    target elements).

    ``fit`` calls :meth:`split` on every batch, then the object itself once per piece; it calls
    :meth:`reset` at the start of every epoch and stores :meth:`state_dict` in checkpoints.

    ``lr_length`` (AWD-LSTM's learning-rate scaling for windows of random length): each update's
    learning rate is multiplied by ``steps / lr_length``, ``steps`` the length of the piece it
    was computed on, so that with a per-token mean loss a short window does not make a
    full-size step (Merity et al. 2018 scale by ``seq_len / bptt``). ``fit`` applies
    :meth:`lr_scale` to every parameter group for that one step only, after clipping.
    """

    def __init__(
        self,
        criterion: Criterion,
        *,
        k1: int | None = None,
        k2: int | None = None,
        time_dim: int = 0,
        lr_length: int | None = None,
    ) -> None:
        if not callable(criterion):
            raise TypeError(f"criterion must be callable, got {_checks.describe(criterion)}")
        self.criterion = criterion
        self.k1 = None if k1 is None else _checks.positive_int("k1", k1)
        self.k2 = None if k2 is None else _checks.positive_int("k2", k2)
        self.time_dim = _checks.choice("time_dim", time_dim, (0, 1))
        self.lr_length = None if lr_length is None else _checks.positive_int("lr_length", lr_length)
        self._state: Any = None
        self._history: list[_Segment] = []

    # ------------------------------------------------------------------ carried state
    @property
    def state(self) -> Any:
        """The detached state the next window starts from (None: the model's initial state)."""
        return self._state

    def reset(self) -> None:
        """Forget the carried state and the kept windows: the next window starts afresh."""
        self._state = None
        self._history = []

    def for_evaluation(self) -> TBPTT:
        """A fresh objective with the same criterion and layout that evaluates whole windows:
        validation carries the state across windows too, but has no horizon to cut."""
        return TBPTT(self.criterion, time_dim=self.time_dim)

    def lr_scale(self, piece: Any) -> float:
        """The factor for the learning rate of the update made on ``piece`` (one of
        :meth:`split`'s pieces): ``steps / lr_length``, or 1 without ``lr_length``."""
        if self.lr_length is None:
            return 1.0
        return piece[0].shape[self.time_dim] / self.lr_length

    # ------------------------------------------------------------------ batches
    def _unpack(self, batch: Any) -> tuple[Tensor, Tensor, Tensor | None]:
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise TypeError(
                "a TBPTT batch must be a tuple (x, y) or (x, y, reset), "
                f"got {_checks.describe(batch)}"
            )
        x, y = batch[0], batch[1]
        reset = batch[2] if len(batch) == 3 else None
        for name, t in (("x", x), ("y", y)):
            if not isinstance(t, Tensor) or t.dim() <= self.time_dim:
                raise TypeError(
                    f"TBPTT batch {name} must be a tensor with time in dimension {self.time_dim}, "
                    f"got {_checks.describe(t)}"
                )
        if x.shape[self.time_dim] != y.shape[self.time_dim]:
            raise ValueError(
                f"TBPTT batch x and y must have the same number of steps along dimension "
                f"{self.time_dim}, got x {tuple(x.shape)} and y {tuple(y.shape)}"
            )
        if reset is not None:
            streams = x.shape[1 - self.time_dim]
            if not isinstance(reset, Tensor) or reset.dtype != torch.bool:
                raise TypeError(
                    f"TBPTT batch reset must be a bool tensor of shape ({streams},) or None, "
                    f"got {_checks.describe(reset)}"
                )
            if tuple(reset.shape) != (streams,):
                raise ValueError(
                    f"TBPTT batch reset must have shape ({streams},), one entry per stream, "
                    f"got {tuple(reset.shape)}"
                )
        return x, y, reset

    def split(self, batch: Any) -> list[tuple[Tensor, Tensor, Tensor | None]]:
        """The pieces of ``batch`` that make one update each: the whole batch when ``k1`` is None,
        otherwise consecutive slices of ``k1`` steps. Only the first piece carries the reset."""
        x, y, reset = self._unpack(batch)
        steps = x.shape[self.time_dim]
        if self.k1 is None or steps <= self.k1:
            return [(x, y, reset)]
        pieces = []
        for start in range(0, steps, self.k1):
            length = min(self.k1, steps - start)
            pieces.append(
                (
                    x.narrow(self.time_dim, start, length),
                    y.narrow(self.time_dim, start, length),
                    reset if start == 0 else None,
                )
            )
        return pieces

    # ------------------------------------------------------------------ one update
    def _run(self, model: nn.Module, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        result = model(x, state)
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise TypeError(
                "a TBPTT model must return (output, state) from model(x, state), "
                f"got {_checks.describe(result)}"
            )
        return result[0], result[1]

    def __call__(self, model: nn.Module, piece: Any) -> tuple[Tensor, int]:
        """Run one update's forward: returns ``(loss, count)`` over the new steps in the graph and
        advances the carried state (detached)."""
        x, y, reset = self._unpack(piece)
        td = self.time_dim
        steps = x.shape[td]
        horizon = self.k2 if self.k2 is not None else steps
        segments = [*self._history, _Segment(x, reset, self._state)]

        # Find where the graph starts: `horizon` steps back from the end, at the latest segment
        # boundary or inside a segment. Everything before it only advances the state.
        back, first = 0, len(segments) - 1
        while first > 0 and back + segments[first].x.shape[td] < horizon:
            back += segments[first].x.shape[td]
            first -= 1
        seg = segments[first]
        offset = max(0, seg.x.shape[td] - (horizon - back))
        state = reset_state(model, seg.state, seg.reset)
        if offset:
            with torch.no_grad():
                _, state = self._run(model, seg.x.narrow(td, 0, offset), state)
            state = detach_state(state)
        output: Tensor | None = None
        for index in range(first, len(segments)):
            part = segments[index]
            if index > first:
                state = reset_state(model, state, part.reset)
            start = offset if index == first else 0
            xs = part.x.narrow(td, start, part.x.shape[td] - start)
            output, state = self._run(model, xs, state)
        assert output is not None

        new_steps = min(steps, horizon)
        output = output.narrow(td, output.shape[td] - new_steps, new_steps)
        target = y.narrow(td, steps - new_steps, new_steps)
        loss, count = _loss_and_count(self.criterion(output, target), target)

        self._state = detach_state(state)
        self._history = self._keep(segments, horizon - 1)
        return loss, count

    def _keep(self, segments: list[_Segment], needed: int) -> list[_Segment]:
        """The newest segments covering at least ``needed`` steps (a later window, at least one
        step long, reaches back at most ``k2 - 1`` steps into the past)."""
        if needed <= 0 or self.k2 is None:
            return []
        kept: list[_Segment] = []
        covered = 0
        for seg in reversed(segments):
            if covered >= needed:
                break
            kept.insert(0, _Segment(seg.x, seg.reset, detach_state(seg.state)))
            covered += seg.x.shape[self.time_dim]
        return kept

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Carried state and kept windows (tensors and tuples only), for exact resume."""
        return {
            "k1": self.k1,
            "k2": self.k2,
            "time_dim": self.time_dim,
            "state": self._state,
            "history": [
                {"x": seg.x.detach(), "reset": seg.reset, "state": seg.state}
                for seg in self._history
            ],
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | None = None) -> None:
        for key in ("k1", "k2", "time_dim"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"TBPTT {key}={getattr(self, key)!r} differs from the checkpoint's "
                    f"{key}={state.get(key)!r}"
                )
        self._state = _to(state["state"], device)
        self._history = [
            _Segment(_to(s["x"], device), _to(s["reset"], device), _to(s["state"], device))
            for s in state["history"]
        ]


def _to(value: Any, device: torch.device | None) -> Any:
    if device is None or value is None:
        return value
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    return value


def _loss_and_count(result: Any, target: Tensor | None) -> tuple[Tensor, int]:
    """Normalise what a loss returns: a scalar tensor, or ``(scalar, count)``."""
    count: Any
    if isinstance(result, (tuple, list)) and len(result) == 2:
        loss, count = result
    else:
        loss, count = result, (target.numel() if target is not None else 1)
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise TypeError(
            "a loss must be a scalar tensor, or a tuple (scalar tensor, count), "
            f"got {_checks.describe(loss)}"
        )
    if isinstance(count, Tensor):
        count = int(count.item())
    return loss, _checks.positive_int("loss count", count)


def split_windows(tensors: Sequence[Tensor], k1: int, *, time_dim: int = 0) -> list[list[Tensor]]:
    """Cut aligned tensors into consecutive windows of ``k1`` steps along ``time_dim`` (the last
    window may be shorter): the plain-tensor way to feed TBPTT one long batch of streams."""
    k1 = _checks.positive_int("k1", k1)
    if not tensors:
        raise ValueError("tensors must hold at least one tensor")
    steps = tensors[0].shape[time_dim]
    for i, t in enumerate(tensors):
        if t.shape[time_dim] != steps:
            raise ValueError(
                f"tensors[{i}] has {t.shape[time_dim]} steps along dimension {time_dim}, "
                f"tensors[0] has {steps}"
            )
    return [
        [t.narrow(time_dim, s, min(k1, steps - s)) for t in tensors] for s in range(0, steps, k1)
    ]
