"""Argument validation shared by every public entry point.

Each helper raises ``ValueError`` or ``TypeError`` with a message that names the argument, says
what was expected and shows what came, so that bad input never surfaces as a traceback from deep
inside a matrix multiplication.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch


def describe(value: Any) -> str:
    """A short description of ``value`` for error messages."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}, dtype {value.dtype} on {value.device}"
    if isinstance(value, str):
        return repr(value)
    return f"{value!r} ({type(value).__name__})"


def positive_int(name: str, value: Any, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    lowest = 0 if allow_zero else 1
    if value < lowest:
        kind = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{name} must be {kind} int, got {value}")
    return int(value)


def probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1), got {describe(value)}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1), got {value}")
    return float(value)


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {describe(value)}")
    return value


def choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}, got {describe(value)}")
    return value


def optional_positive_float(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive float or None, got {describe(value)}")
    if not float(value) > 0.0:
        raise ValueError(f"{name} must be a positive float or None, got {value}")
    return float(value)


def real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {describe(value)}")
    return float(value)


def floating_tensor(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {describe(value)}")
    if not value.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float32, float64 or bfloat16), "
            f"got dtype {value.dtype}; convert it with .float() first"
        )
    return value


def state_tensor(
    name: str, value: Any, expected: tuple[int, ...], like: torch.Tensor
) -> torch.Tensor:
    """Check one recurrent state tensor against its expected shape and the input's dtype/device."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {describe(value)}")
    if tuple(value.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(value.shape)}")
    if value.dtype != like.dtype:
        raise TypeError(f"{name} must have the input's dtype {like.dtype}, got {value.dtype}")
    if value.device != like.device:
        raise ValueError(f"{name} must be on the input's device {like.device}, got {value.device}")
    return value


def lengths_tensor(value: Any, T: int, B: int, device: torch.device) -> torch.Tensor:
    """Validate per-sequence ``lengths`` (B,) in [0, T] and return them as int64 on ``device``."""
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
            raise TypeError(f"lengths must hold ints, got {list(value)!r}")
        value = torch.tensor(list(value), dtype=torch.int64)
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = torch.tensor([int(value)], dtype=torch.int64)
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"lengths must be a 1-D integer tensor or a list of ints, got {describe(value)}"
        )
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"lengths must be an integer tensor, got dtype {value.dtype}")
    if value.dim() == 0:
        value = value.reshape(1)
    if value.dim() != 1 or value.shape[0] != B:
        raise ValueError(
            f"lengths must have shape ({B},), one length per sequence in the batch, "
            f"got {tuple(value.shape)}"
        )
    if value.device != device and value.device.type != "cpu":
        raise ValueError(
            f"lengths must be on the CPU or on the input's device {device}, got {value.device}"
        )
    if B and int(value.min()) < 0:
        raise ValueError(f"lengths must be >= 0, got a length of {int(value.min())}")
    if B and int(value.max()) > T:
        raise ValueError(
            f"lengths must be <= the sequence length {T} of input, "
            f"got a length of {int(value.max())}"
        )
    return value.to(device=device, dtype=torch.int64)


def matches_parameters(name: str, value: torch.Tensor, parameter: torch.Tensor) -> None:
    """``value`` must share the module's parameter dtype (unless autocast is active, which casts
    inside the matrix products) and device."""
    if value.device != parameter.device:
        raise ValueError(
            f"{name} must be on the module's device {parameter.device}, got {value.device}; "
            f"move it with .to({str(parameter.device)!r})"
        )
    if value.dtype != parameter.dtype and not torch.is_autocast_enabled(value.device.type):
        raise TypeError(
            f"{name} must have the module's parameter dtype {parameter.dtype}, got {value.dtype}; "
            f"convert the input with .to({parameter.dtype}) or the module with .to({value.dtype})"
        )
