"""The adapter between the benchmark and ``lstmkit.streaming`` (being written elsewhere).

:func:`make_streaming_step` returns a closure that advances a one-layer LSTM by one time step
at batch 1 under ``torch.no_grad()``, carrying the state between calls. It recognises:

1. a function ``lstmkit.streaming.step(module, x, state) -> (y, state)`` (``state`` ``None`` at
   the start);
2. a class in ``lstmkit.streaming`` with a ``step(x)`` method that keeps the state itself, built
   as ``Class(module)`` or ``Class.from_module(module)``.

``x`` is ``(batch, input_size)``. Each candidate is tried with one call; the first that works is
used. When the module is missing or none of these forms fits, ``LookupError`` says why and the
row is reported as not available. Once the streaming API is settled, this is the one place to
adapt.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


def _from_function(fn: Callable[..., Any], module: nn.Module, x: Tensor) -> Callable[[], None]:
    state: list[Any] = [None]

    def step() -> None:
        with torch.no_grad():
            _, state[0] = fn(module, x, state[0])

    step()
    return step


def _from_class(cls: type, module: nn.Module, x: Tensor) -> Callable[[], None]:
    makers: list[Callable[[], Any]] = []
    if hasattr(cls, "from_module"):
        makers.append(lambda: cls.from_module(module))
    makers.append(lambda: cls(module))
    errors = []
    for make in makers:
        try:
            obj = make()
            method = obj.step

            def step(method: Callable[[Tensor], Any] = method) -> None:
                with torch.no_grad():
                    method(x)

            step()
            return step
        except Exception as err:  # try the next form
            errors.append(f"{type(err).__name__}: {err}")
    raise LookupError("; ".join(errors))


def make_streaming_step(module: nn.Module, x: Tensor) -> tuple[Callable[[], None], str]:
    """A one-step closure over ``lstmkit.streaming`` for ``module`` and input ``x``, and a
    description of the entry point used. Raises ``LookupError`` saying why there is none."""
    try:
        streaming = importlib.import_module("lstmkit.streaming")
    except ImportError as err:
        raise LookupError(f"lstmkit.streaming is not available ({err})") from err
    tried: list[str] = []
    fn = getattr(streaming, "step", None)
    if callable(fn) and not inspect.isclass(fn):
        try:
            return _from_function(fn, module, x), "lstmkit.streaming.step(module, x, state)"
        except Exception as err:
            tried.append(f"step(module, x, state): {type(err).__name__}: {err}")
    for name, obj in vars(streaming).items():
        if name.startswith("_") or not inspect.isclass(obj) or not hasattr(obj, "step"):
            continue
        if not getattr(obj, "__module__", "").startswith("lstmkit.streaming"):
            continue
        try:
            return _from_class(obj, module, x), f"lstmkit.streaming.{name}(module).step(x)"
        except LookupError as err:
            tried.append(f"{name}: {err}")
    detail = "; ".join(tried) if tried else "no step() function and no class with step()"
    raise LookupError(
        f"lstmkit.streaming has no entry point this benchmark recognises ({detail}); "
        "adapt benchmarks/streaming.py"
    )
