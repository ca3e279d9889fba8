"""Optimizers, learning-rate schedules, NT-ASGD and early stopping for :func:`lstmkit.train.fit`.

The optimizers and schedulers are torch's own; this module only builds them from a
:class:`TrainConfig` and says *when* each schedule advances (per batch, per epoch or per
validation check), so that the loop stays a plain loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau
from torch.optim.swa_utils import AveragedModel

from .config import TrainConfig


def make_optimizer(params: Iterable[nn.Parameter], config: TrainConfig) -> Optimizer:
    """Adam, AdamW or SGD (with momentum) over ``params`` with ``config``'s lr and weight decay."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (none with requires_grad=True)")
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def step_decay(epoch: int, *, gamma: float, decay_after: int) -> float:
    """Zaremba et al. (2014): keep the initial rate for ``decay_after`` epochs, then multiply it
    by ``gamma`` after every epoch (epochs counted from 0)."""
    return float(gamma ** max(0, epoch + 1 - decay_after))


def warmup_cosine(batch: int, *, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up to the full rate over ``warmup`` batches, then a half cosine down to
    ``floor`` (a fraction of the full rate) at batch ``total``, flat after it."""
    if batch < warmup:
        return (batch + 1) / warmup
    progress = min(1.0, (batch - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Schedule:
    """A torch learning-rate scheduler plus the moment it advances.

    ``cosine`` steps after every batch, ``step`` after every epoch and ``plateau`` after every
    validation check (with the validation loss); ``none`` never changes the rate.
    """

    def __init__(
        self, optimizer: Optimizer, config: TrainConfig, *, batches_per_epoch: int | None
    ) -> None:
        self.kind = config.schedule
        self.scheduler: LRScheduler | ReduceLROnPlateau | None = None
        if self.kind == "step":
            gamma, after = config.gamma, config.decay_after
            self.scheduler = LambdaLR(
                optimizer, lambda e: step_decay(e, gamma=gamma, decay_after=after)
            )
        elif self.kind == "cosine":
            if batches_per_epoch is None:
                raise ValueError(
                    "schedule='cosine' needs data with a length (len(data)) to know the number "
                    "of batches in the run"
                )
            total = config.max_epochs * batches_per_epoch
            warmup, floor = config.warmup_steps, config.min_lr / config.lr
            self.scheduler = LambdaLR(
                optimizer, lambda b: warmup_cosine(b, warmup=warmup, total=total, floor=floor)
            )
        elif self.kind == "plateau":
            self.scheduler = ReduceLROnPlateau(
                optimizer,
                mode="min",
                factor=config.gamma,
                patience=config.plateau_patience,
                min_lr=config.min_lr,
            )

    def after_batch(self) -> None:
        if self.kind == "cosine":
            assert isinstance(self.scheduler, LambdaLR)
            self.scheduler.step()

    def after_epoch(self) -> None:
        if self.kind == "step":
            assert isinstance(self.scheduler, LambdaLR)
            self.scheduler.step()

    def after_validation(self, val_loss: float) -> None:
        if self.kind == "plateau":
            assert isinstance(self.scheduler, ReduceLROnPlateau)
            self.scheduler.step(val_loss)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.scheduler is None else self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)


class NTASGD:
    """Non-monotonically triggered averaged SGD (Merity et al. 2018, AWD-LSTM).

    Training runs plain SGD. At every validation check, before the check's loss is recorded,
    averaging is switched on when ``len(logs) > n`` and the loss is worse than the best of all
    checks except the last ``n`` (the rule of the AWD-LSTM code). From then on the average of the
    weights after every optimizer step is kept (:class:`torch.optim.swa_utils.AveragedModel`),
    validation runs with the averaged weights, and :func:`fit` ends by copying them into the model.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.logs: list[float] = []
        self.switched_epoch: int | None = None
        self.averaged: AveragedModel | None = None

    @property
    def averaging(self) -> bool:
        return self.averaged is not None

    def should_switch(self, val_loss: float) -> bool:
        return (
            not self.averaging and len(self.logs) > self.n and val_loss > min(self.logs[: -self.n])
        )

    def check(self, val_loss: float, model: nn.Module, epoch: int) -> bool:
        """Record a validation loss; start averaging ``model`` if the trigger fires. Returns
        whether it fired now."""
        fired = self.should_switch(val_loss)
        if fired:
            self.start(model, epoch)
        self.logs.append(val_loss)
        return fired

    def start(self, model: nn.Module, epoch: int) -> None:
        self.averaged = AveragedModel(model, use_buffers=True)
        self.switched_epoch = epoch

    def update(self, model: nn.Module) -> None:
        """Fold the weights after an optimizer step into the average."""
        if self.averaged is not None:
            self.averaged.update_parameters(model)

    def eval_model(self, model: nn.Module) -> nn.Module:
        """The module to validate: the averaged copy once averaging runs."""
        return self.averaged.module if self.averaged is not None else model

    def state(self) -> dict[str, Any]:
        return {
            "logs": list(self.logs),
            "switched_epoch": self.switched_epoch,
            "averaged": None if self.averaged is None else self.averaged.state_dict(),
        }

    def load_state(self, state: dict[str, Any], model: nn.Module) -> None:
        self.logs = [float(v) for v in state["logs"]]
        self.switched_epoch = state["switched_epoch"]
        self.averaged = None
        if state["averaged"] is not None:
            assert self.switched_epoch is not None
            self.start(model, self.switched_epoch)
            assert self.averaged is not None
            self.averaged.load_state_dict(state["averaged"])


class EarlyStopping:
    """Stop when the validation loss has not improved by more than ``min_delta`` for
    ``patience`` consecutive checks."""

    def __init__(self, patience: int | None, min_delta: float) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.bad_checks = 0

    def update(self, val_loss: float) -> bool:
        """Record a check; True when training should stop."""
        if self.best is None or val_loss < self.best - self.min_delta:
            self.best = val_loss
            self.bad_checks = 0
        else:
            self.bad_checks += 1
        return self.patience is not None and self.bad_checks >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "bad_checks": self.bad_checks}

    def load_state(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.bad_checks = int(state["bad_checks"])
