"""Backends run one cell over time. ``reference`` is the autograd loop and the ground truth.

The seam for faster backends is :func:`resolve`: a backend is a function with the signature of
:func:`lstmkit.backends.reference.scan`. ``'auto'`` picks the fastest backend that supports the
configuration; today that is the reference loop.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import _checks
from ._api import Regularisation
from .reference import scan as reference_scan

BACKENDS = ("auto", "reference")

Scan = Callable[..., object]


def resolve(name: str) -> Callable:
    """The scan function for backend ``name`` (one of :data:`BACKENDS`)."""
    _checks.choice("backend", name, BACKENDS)
    return reference_scan


__all__ = ["BACKENDS", "Regularisation", "resolve"]
