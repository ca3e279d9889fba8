"""Backends run one cell over time. ``reference`` is the autograd loop and the ground truth.

The seam for faster backends is :func:`resolve`: a backend is a function with the signature of
:func:`lstmkit.backends.reference.scan`. ``'fused'`` is the C++ kernel with a hand-written
backward (:mod:`lstmkit.backends.fused`); ``'auto'`` picks, for each layer and direction, the
fused kernel where it is built and implements the configuration, and the reference loop
otherwise.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

from torch import Tensor

from .. import _checks
from ..cells import CellMath, Params, State
from . import fused
from ._api import Regularisation
from .reference import scan as reference_scan

BACKENDS = ("auto", "reference", "fused")

# Whether the "fused extension not built" warning was given in this process (it is given once).
_fallback_warned = False


def _warn_fallback_once() -> None:
    global _fallback_warned
    if _fallback_warned:
        return
    _fallback_warned = True
    warnings.warn(
        f"lstmkit: backend='auto' uses the slower reference loop because the fused backend is "
        f"not built; {fused.BUILD_HINT}",
        RuntimeWarning,
        stacklevel=4,
    )


def auto_scan(
    cell: CellMath,
    p: Params,
    x: Tensor,
    state: State,
    valid: Tensor | None,
    reg: Regularisation,
    *,
    recompute: bool = False,
) -> tuple[Tensor, State]:
    """The ``'auto'`` backend: :func:`fused.scan <lstmkit.backends.fused.scan>` where the
    extension is built and supports the configuration, else the reference loop."""
    if not fused.available():
        _warn_fallback_once()
    elif fused.supports(cell, reg, x) and fused.params_match(p, state, x):
        return fused.scan(cell, p, x, state, valid, reg, recompute=recompute)
    return reference_scan(cell, p, x, state, valid, reg)


def resolve(name: str, *, recompute: bool = False) -> Callable:
    """The scan function for backend ``name`` (one of :data:`BACKENDS`).

    ``recompute=True`` (the layers' option of that name) binds ``recompute`` to the fused scan:
    it saves only the states for backward and recomputes the rest there. The reference loop
    ignores it: autograd keeps what its operations save.

    ``'fused'`` raises ``ImportError`` (saying how to build it) when the extension is missing.
    """
    _checks.choice("backend", name, BACKENDS)
    if name == "reference":
        return reference_scan
    if name == "fused":
        if not fused.available():
            fused._require()
        return functools.partial(fused.scan, recompute=True) if recompute else fused.scan
    return functools.partial(auto_scan, recompute=True) if recompute else auto_scan


__all__ = ["BACKENDS", "Regularisation", "auto_scan", "resolve"]
