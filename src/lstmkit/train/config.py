"""The training options of :func:`lstmkit.train.fit`, in one validated, JSON-serialisable record.

Every option of the loop lives here (and nowhere else) so that a task's estimator, the command
line and a checkpoint all describe a run with the same names: ``TrainConfig(lr=0.01).to_dict()``
is what ``config.json`` stores, ``--lr 0.01`` is its flag and ``lr: 0.01`` its YAML key.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import _checks

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "plateau", "step", "cosine")
PRECISIONS = ("32", "bf16")
ACCELERATORS = ("auto", "cpu", "gpu")

#: Options that may change when a run is resumed: they bound or report the run but do not change
#: the arithmetic of the steps already taken (``early_stopping`` and ``min_delta`` only decide when
#: to stop). Every other option must equal the checkpoint's.
RESUMABLE_CHANGES = frozenset(
    {
        "max_epochs",
        "max_time",
        "progress",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "tensorboard",
        "early_stopping",
        "min_delta",
    }
)


def _non_negative_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a non-negative float, got {_checks.describe(value)}")
    if not float(value) >= 0.0:
        raise ValueError(f"{name} must be a non-negative float, got {value}")
    return float(value)


def _positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive float, got {_checks.describe(value)}")
    if not float(value) > 0.0:
        raise ValueError(f"{name} must be a positive float, got {value}")
    return float(value)


def _optional_positive_int(name: str, value: Any) -> int | None:
    return None if value is None else _checks.positive_int(name, value)


@dataclass(frozen=True)
class TrainConfig:
    """How :func:`lstmkit.train.fit` trains: optimisation, schedule, stopping, precision, I/O.

    Units: ``max_time`` is in minutes; ``warmup_steps`` and ``checkpoint_every`` count batches;
    ``decay_after`` counts epochs; ``plateau_patience``, ``nt_asgd`` and ``early_stopping`` count
    validation checks (one per epoch). ``docs/training.md`` explains each option with an example.
    """

    max_epochs: int = 10
    max_time: float | None = None
    seed: int = 0
    deterministic: bool = False
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0
    clip_norm: float | None = None
    clip_value: float | None = None
    schedule: str = "none"
    gamma: float = 0.5
    decay_after: int = 1
    plateau_patience: int = 0
    warmup_steps: int = 0
    min_lr: float = 0.0
    nt_asgd: int | None = None
    early_stopping: int | None = None
    min_delta: float = 0.0
    restore_best: bool = False
    precision: str = "32"
    accelerator: str = "auto"
    devices: int = 1
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    log_every: int = 10
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        c = _checks
        checked: dict[str, Any] = {
            "max_epochs": c.positive_int("max_epochs", self.max_epochs),
            "max_time": c.optional_positive_float("max_time", self.max_time),
            "seed": c.positive_int("seed", self.seed, allow_zero=True),
            "deterministic": c.boolean("deterministic", self.deterministic),
            "optimizer": c.choice("optimizer", self.optimizer, OPTIMIZERS),
            "lr": _positive_float("lr", self.lr),
            "weight_decay": _non_negative_float("weight_decay", self.weight_decay),
            "momentum": _non_negative_float("momentum", self.momentum),
            "clip_norm": c.optional_positive_float("clip_norm", self.clip_norm),
            "clip_value": c.optional_positive_float("clip_value", self.clip_value),
            "schedule": c.choice("schedule", self.schedule, SCHEDULES),
            "gamma": c.real("gamma", self.gamma),
            "decay_after": c.positive_int("decay_after", self.decay_after),
            "plateau_patience": c.positive_int(
                "plateau_patience", self.plateau_patience, allow_zero=True
            ),
            "warmup_steps": c.positive_int("warmup_steps", self.warmup_steps, allow_zero=True),
            "min_lr": _non_negative_float("min_lr", self.min_lr),
            "nt_asgd": _optional_positive_int("nt_asgd", self.nt_asgd),
            "early_stopping": _optional_positive_int("early_stopping", self.early_stopping),
            "min_delta": _non_negative_float("min_delta", self.min_delta),
            "restore_best": c.boolean("restore_best", self.restore_best),
            "precision": c.choice("precision", self.precision, PRECISIONS),
            "accelerator": c.choice("accelerator", self.accelerator, ACCELERATORS),
            "devices": c.positive_int("devices", self.devices),
            "checkpoint_every": _optional_positive_int("checkpoint_every", self.checkpoint_every),
            "keep_checkpoints": c.positive_int("keep_checkpoints", self.keep_checkpoints),
            "log_every": c.positive_int("log_every", self.log_every),
            "tensorboard": c.boolean("tensorboard", self.tensorboard),
            "progress": c.boolean("progress", self.progress),
        }
        if not 0.0 < checked["gamma"] <= 1.0:
            raise ValueError(f"gamma must be a float in (0, 1], got {self.gamma}")
        for name, value in checked.items():  # normalised (ints to floats where floats are meant)
            object.__setattr__(self, name, value)
        self._check_combinations()

    def _check_combinations(self) -> None:
        """Options that only mean something together with another one: refuse them rather than
        silently ignore them, so that a typo in a config never trains a different model."""
        if self.clip_norm is not None and self.clip_value is not None:
            raise ValueError(
                "clip_norm and clip_value cannot both be set: choose clipping by norm "
                f"(clip_norm={self.clip_norm}) or by value (clip_value={self.clip_value})"
            )
        if self.momentum and self.optimizer != "sgd":
            raise ValueError(
                f"momentum applies to optimizer='sgd' only, got momentum={self.momentum} "
                f"with optimizer={self.optimizer!r}"
            )
        if self.nt_asgd is not None and self.optimizer != "sgd":
            raise ValueError(
                "nt_asgd (non-monotonically triggered averaged SGD) needs optimizer='sgd', "
                f"got optimizer={self.optimizer!r}"
            )
        if self.warmup_steps and self.schedule != "cosine":
            raise ValueError(
                f"warmup_steps applies to schedule='cosine' only, got warmup_steps="
                f"{self.warmup_steps} with schedule={self.schedule!r}"
            )
        if self.min_lr >= self.lr and self.schedule in ("cosine", "plateau"):
            raise ValueError(
                f"min_lr must be below lr for schedule={self.schedule!r}, got min_lr={self.min_lr} "
                f"and lr={self.lr}"
            )

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (and validated); unknown names raise ``TypeError``."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(
                f"unknown training option(s) {', '.join(map(repr, unknown))}; "
                f"the options are {', '.join(self.names())}"
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        return cls().replace(**dict(values))

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def differences(self, other: TrainConfig) -> list[str]:
        """``name: ours vs theirs`` for every option that differs and may not change on resume."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [
            f"{name}: {mine[name]!r} here, {theirs[name]!r} in the checkpoint"
            for name in self.names()
            if name not in RESUMABLE_CHANGES and mine[name] != theirs[name]
        ]
