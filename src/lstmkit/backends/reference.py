"""The reference backend: a readable autograd loop over time, the ground truth of lstmkit.

It iterates over ``xp.unbind(0)`` rather than indexing ``xp[t]`` inside the loop: the backward of
``unbind`` is one ``stack``, while ``T`` index operations each scatter into a full-size gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..cells import CellMath, Params, State
from ._api import Regularisation


def zoneout(new: Tensor, old: Tensor, rate: float, keep: Tensor | None) -> Tensor:
    """Zoneout (Krueger et al. 2017): where ``keep`` is 1 the unit keeps its previous value; with
    no mask (evaluation) use the expectation ``rate * old + (1 - rate) * new``."""
    if keep is not None:
        return torch.lerp(new, old, keep)
    if rate == 0.0:
        return new
    return torch.lerp(new, old, rate)


def scan(
    cell: CellMath,
    p: Params,
    x: Tensor,
    state: State,
    valid: Tensor | None,
    reg: Regularisation,
    *,
    observe: Callable[[State, dict[str, Tensor], State], None] | None = None,
) -> tuple[Tensor, State]:
    """Run ``cell`` left to right over ``x`` of shape ``(T, B, input)``.

    ``valid`` is ``None`` (every step valid) or a ``(T, B, 1)`` bool tensor; on invalid steps the
    state is carried unchanged and the output is zero. Returns the outputs ``(T, B, out)`` and the
    final state.

    ``observe(computed, gates, state)``, if given, is called after every step with what the step
    computed (before zoneout), its gate activations and the carried state:
    :mod:`lstmkit.diagnostics` reads the recurrence through it.
    """
    T, B = x.shape[0], x.shape[1]
    if T == 0:
        return x.new_zeros(0, B, cell.output_size), state
    if valid is not None:
        # Padding is never kept, but its values still pass through the (discarded) step math:
        # zero it so that NaN or inf there cannot poison the gradients (0 * NaN = NaN). The
        # fused kernels never read padding at all (they pack the valid rows).
        x = x.masked_fill(~valid, 0.0)
    xp = cell.project_input(x, p)
    rates = reg.zoneout
    n_state = len(state)
    masks: list[tuple[Tensor | None, ...]]
    if rates is not None and reg.zoneout_masks is not None:
        per_step = [m.unbind(0) if m is not None else (None,) * T for m in reg.zoneout_masks]
        masks = list(zip(*per_step, strict=True))
    else:
        masks = [(None,) * n_state] * T
    outputs = []
    valid_steps = valid.unbind(0) if valid is not None else (None,) * T
    for xp_t, ok, keep in zip(xp.unbind(0), valid_steps, masks, strict=True):
        if observe is None:
            new = cell.step(xp_t, state, p, reg.h_mask)
        else:
            new, gates = cell.step_with_gates(xp_t, state, p, reg.h_mask)
            computed = new
        if rates is not None:
            new = tuple(
                zoneout(n, o, r, k) for n, o, r, k in zip(new, state, rates, keep, strict=True)
            )
        if ok is None:
            state = new
            outputs.append(new[0])
        else:
            state = tuple(torch.where(ok, n, o) for n, o in zip(new, state, strict=True))
            outputs.append(new[0].masked_fill(~ok, 0.0))
        if observe is not None:
            observe(computed, gates, state)
    return torch.stack(outputs), state
