"""The training loop: :func:`fit`, on Lightning Fabric.

Why Fabric and not the Lightning ``Trainer``: TBPTT with a carried state needs the loop to call
the model several times per batch with state threaded between the calls, and exact resume needs
the loop to know precisely where it is in the data and in every random stream. The Trainer hides
both (its ``truncated_bptt_steps`` was removed in Lightning 2.0, and its mid-epoch resume restarts
the data iterator). Fabric leaves the loop in our hands -- a plain ``for`` loop, below -- and
supplies what we do not want to rewrite: process launching and DDP (gloo on CPU, NCCL on GPU),
mixed precision (bf16 autocast on CPU), gradient clipping, collectives, seeding and the
TensorBoard logger. ``docs/training.md`` explains each piece.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import torch
from torch import Tensor, nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from .. import _checks
from . import checkpoint as ckpt
from .config import TrainConfig
from .optim import NTASGD, EarlyStopping, Schedule, make_optimizer
from .tbptt import TBPTT, _loss_and_count

if TYPE_CHECKING:
    from lightning.fabric import Fabric

Objective = Callable[[nn.Module, Any], Any]

_END = object()
_PRECISION = {"32": "32-true", "bf16": "bf16-mixed"}
BEST_WEIGHTS = "best.safetensors"  # restore_best: the best check's weights, in the run directory
LOG_COLUMNS = ("step", "epoch", "batch", "time", "train_loss", "lr", "grad_norm", "val_loss")


@dataclass
class FitResult:
    """What :func:`fit` did.

    ``history`` has one entry per validation check: ``epoch`` (1-based: the check after that
    many epochs), ``step`` (optimizer steps so far), ``val_loss``, ``lr`` and ``averaging``
    (whether NT-ASGD's averaged weights were evaluated). ``main_process`` is False in the
    processes other than rank 0 of a multi-process run: only the main one should write files.
    ``best_epoch`` is the check with the lowest validation loss (1-based, None without
    validation); ``restored`` is True when ``restore_best`` put that check's weights back into
    the model at the end.
    """

    epochs: int
    steps: int
    stopped: str
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_loss: float | None = None
    nt_asgd_epoch: int | None = None
    main_process: bool = True
    best_epoch: int | None = None
    restored: bool = False

    @property
    def val_loss(self) -> float | None:
        """The last validation loss, or None without validation data."""
        return self.history[-1]["val_loss"] if self.history else None


# ---------------------------------------------------------------------- data order
class EpochSampler(Sampler[int]):
    """The sample indices of one process for one epoch, in an order fixed by ``(seed, epoch)``.

    With ``shuffle`` the order is a permutation drawn from a generator seeded with
    ``seed + epoch`` (no global random state is touched); it is then split across processes,
    process ``r`` taking positions ``r, r + W, r + 2W, ...``, so the union of the processes'
    ``b``-th batches is the ``b``-th batch of one process with a ``W`` times larger batch size.
    ``pad`` repeats the first indices so every process gets the same count (DDP needs the same
    number of steps everywhere); ``start`` skips indices already consumed (exact resume).
    """

    def __init__(
        self, n: int, *, shuffle: bool, seed: int, rank: int, world_size: int, pad: bool
    ) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = list(range(self.n))
        if self.pad and self.n % self.world_size:
            extra = self.world_size - self.n % self.world_size
            order += (order * math.ceil(extra / max(1, self.n)))[:extra]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    def per_epoch(self) -> int:
        """Indices this process gets in a whole epoch (``start`` not subtracted)."""
        total = math.ceil(self.n / self.world_size) * self.world_size if self.pad else self.n
        return len(range(self.rank, total, self.world_size))

    def __len__(self) -> int:
        return max(0, self.per_epoch() - self.start)


def _resampled(data: Any, *, rank: int, world_size: int, seed: int, pad: bool) -> DataLoader | None:
    """``data`` rebuilt on an :class:`EpochSampler` when it is a map-style DataLoader with the
    default samplers (``shuffle=True`` or ``False``); None when fit must use it as it is."""
    if not isinstance(data, DataLoader) or isinstance(data.dataset, IterableDataset):
        return None
    if type(data.batch_sampler) is not BatchSampler or data.batch_size is None:
        return None
    sampler = data.sampler
    if type(sampler) is RandomSampler:
        if sampler.replacement or sampler._num_samples is not None:
            return None
    elif type(sampler) is not SequentialSampler:
        return None
    n = len(data.dataset)  # type: ignore[arg-type]
    epoch_sampler = EpochSampler(
        n,
        shuffle=isinstance(sampler, RandomSampler),
        seed=seed,
        rank=rank,
        world_size=world_size,
        pad=pad,
    )
    extra: dict[str, Any] = {}
    if data.num_workers > 0:
        extra = {
            "prefetch_factor": data.prefetch_factor,
            "persistent_workers": data.persistent_workers,
        }
    for name in ("pin_memory_device", "in_order"):  # newer torch releases only
        if hasattr(data, name):
            extra[name] = getattr(data, name)
    return DataLoader(
        data.dataset,
        batch_size=data.batch_size,
        sampler=epoch_sampler,
        num_workers=data.num_workers,
        collate_fn=data.collate_fn,
        pin_memory=data.pin_memory,
        drop_last=data.drop_last,
        timeout=data.timeout,
        worker_init_fn=data.worker_init_fn,
        multiprocessing_context=data.multiprocessing_context,
        generator=data.generator,
        **extra,
    )


class _Data:
    """An epoch-by-epoch view of the training or validation data that can start mid-epoch."""

    def __init__(self, data: Any, *, rank: int, world_size: int, seed: int, pad: bool) -> None:
        self.loader = _resampled(data, rank=rank, world_size=world_size, seed=seed, pad=pad)
        self.source = data if self.loader is None else self.loader
        if self.loader is None and world_size > 1:
            warnings.warn(
                "data is not a DataLoader with the default samplers, so fit cannot shard it "
                "across processes: every process must be given its own part of the data",
                RuntimeWarning,
                stacklevel=3,
            )

    def batches_per_epoch(self) -> int | None:
        """Batches in a full epoch of this process, or None for data without a length."""
        if self.loader is not None:
            sampler = self.loader.sampler
            assert isinstance(sampler, EpochSampler) and self.loader.batch_size is not None
            samples, size = sampler.per_epoch(), self.loader.batch_size
            return samples // size if self.loader.drop_last else math.ceil(samples / size)
        try:
            return len(self.source)  # type: ignore[arg-type]
        except TypeError:
            return None

    def iterate(self, epoch: int, skip: int = 0) -> Iterator[Any]:
        if self.loader is not None:
            sampler = self.loader.sampler
            assert isinstance(sampler, EpochSampler) and self.loader.batch_size is not None
            sampler.set_epoch(epoch, skip * self.loader.batch_size)
            return iter(self.loader)
        owners = [self.source]
        owners += [getattr(self.source, a, None) for a in ("sampler", "batch_sampler")]
        for owner in owners:
            set_epoch = getattr(owner, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(epoch)
        iterator = iter(self.source)
        for done in range(skip):  # resuming mid-epoch: replay the batches already trained on
            if next(iterator, _END) is _END:
                raise ValueError(
                    f"data yielded only {done} batches in epoch {epoch + 1} but the checkpoint "
                    f"is after batch {skip}: resuming needs the same data"
                )
        return iterator


# ---------------------------------------------------------------------- logs
class _CsvLog:
    """``log.csv``: one row per logged training step or validation check, flushed at once.

    Lightning's ``CSVLogger`` buffers rows and writes ``metrics.csv`` in a versioned folder; this
    file must be exactly ``DIR/log.csv`` and must line up with the checkpoints after a kill, so
    its byte offset is stored in every checkpoint and the file is cut back to it on resume.
    """

    def __init__(self, path: Path, offset: int | None) -> None:
        self.path = path
        if offset is None or not path.exists() or path.stat().st_size < offset:
            self.file: TextIO = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115
            csv.writer(self.file).writerow(LOG_COLUMNS)
        else:
            with open(path, "r+b") as f:
                f.truncate(offset)
            self.file = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        self.file.flush()

    def write(self, row: Mapping[str, Any]) -> None:
        csv.writer(self.file).writerow(["" if row.get(c) is None else row[c] for c in LOG_COLUMNS])
        self.file.flush()

    def offset(self) -> int:
        return self.file.tell()

    def close(self) -> None:
        self.file.close()


# ---------------------------------------------------------------------- helpers
class _Runner(nn.Module):
    """The module Fabric wraps (DDP, autocast): one forward = the objective on one batch piece,
    so DDP sees exactly one forward per backward even when TBPTT calls the model many times."""

    objective: Objective | TBPTT

    def __init__(self, model: nn.Module, objective: Objective | TBPTT) -> None:
        super().__init__()
        self.model = model
        # kept out of the module tree: a loss that is an nn.Module must not join DDP's parameters
        object.__setattr__(self, "objective", objective)

    def forward(self, piece: Any) -> Any:
        return self.objective(self.model, piece)


def _pieces(objective: Objective | TBPTT, batch: Any) -> list[Any]:
    return objective.split(batch) if isinstance(objective, TBPTT) else [batch]


def _normalise(result: Any) -> tuple[Tensor, int]:
    return _loss_and_count(result, None)


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms`` for the run only (the previous mode is restored)."""
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_benchmark = torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)
        torch.backends.cudnn.benchmark = previous_benchmark


def _grad_norm(parameters: Iterable[nn.Parameter]) -> float:
    grads = [p.grad for p in parameters if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"params.hidden_size": 4, ...}``, for messages that name one setting."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass
class _Position:
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed in the current epoch
    batches: int = 0  # batches completed in the run
    step: int = 0  # optimizer steps
    elapsed: float = 0.0  # seconds of training, summed over resumed runs
    saves: int = 0  # checkpoints written


# ---------------------------------------------------------------------- fit
def fit(
    model: nn.Module,
    data: Iterable[Any],
    *,
    loss: Objective | TBPTT,
    val_data: Iterable[Any] | None = None,
    config: TrainConfig | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    meta: Mapping[str, Any] | None = None,
    **options: Any,
) -> FitResult:
    """Train ``model`` in place on ``data``; returns a :class:`FitResult`.

    ``loss`` is either ``loss(model, batch) -> mean_loss`` (or ``(mean_loss, count)``, which
    weights batches in validation) or a :class:`~lstmkit.train.TBPTT` for stateful training over
    consecutive windows. ``data`` and ``val_data`` are re-iterable (a ``DataLoader``, a list of
    batches); a ``DataLoader`` with the default samplers is re-sampled in an order fixed by the
    seed and the epoch and sharded across processes (see ``docs/training.md``).

    Options are ``config`` (a :class:`TrainConfig`) with ``options`` (its field names) applied on
    top. ``out`` is the run directory: checkpoints (``out/checkpoints``), ``out/log.csv`` and
    TensorBoard events (``out/tensorboard``); without it nothing is written. ``resume=True``
    continues from the newest valid checkpoint in ``out`` exactly where it stopped. ``meta`` is
    JSON-able data stored in checkpoints and compared on resume (e.g. the model's
    hyper-parameters). With NT-ASGD, the model ends with the averaged weights.
    """
    cfg = (config if config is not None else TrainConfig()).replace(**options)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {_checks.describe(model)}")
    if not (isinstance(loss, TBPTT) or callable(loss)):
        raise TypeError(
            f"loss must be a callable loss(model, batch) or a TBPTT, got {_checks.describe(loss)}"
        )
    for name, value in (("data", data), ("val_data", val_data)):
        if value is not None and not isinstance(value, Iterable):
            raise TypeError(f"{name} must be an iterable of batches, got {_checks.describe(value)}")
    if val_data is None:
        for option in ("nt_asgd", "early_stopping"):
            if getattr(cfg, option) is not None:
                raise ValueError(f"{option} needs val_data: it acts on validation checks")
        if cfg.restore_best:
            raise ValueError("restore_best needs val_data: it keeps the best validation check")
        if cfg.schedule == "plateau":
            raise ValueError("schedule='plateau' needs val_data: it acts on validation checks")
    run_dir = None if out is None else Path(out)
    if resume and run_dir is None:
        raise ValueError("resume=True needs out, the directory of the run to continue")
    if run_dir is not None and not resume and ckpt.list_checkpoints(run_dir / "checkpoints"):
        raise ValueError(
            f"{run_dir} already holds checkpoints of a run: pass resume=True to continue it, "
            "or choose another out directory"
        )
    meta = dict(meta or {})
    ckpt.pack(meta, {})  # fails early (TypeError) if meta is not JSON-able

    found = None
    if resume:
        assert run_dir is not None
        found = ckpt.latest_checkpoint(run_dir / "checkpoints")
        if found is None:
            raise ValueError(
                f"resume=True but {run_dir / 'checkpoints'} holds no checkpoint to resume from"
            )

    from lightning.fabric import Fabric
    from lightning.fabric.loggers import Logger, TensorBoardLogger

    loggers: list[Logger] = []
    if run_dir is not None and cfg.tensorboard:
        # after a resume, TensorBoard drops the events a killed run wrote past the checkpoint
        purge = None if found is None else int(found.state["position"]["step"]) + 1
        loggers.append(
            TensorBoardLogger(
                root_dir=run_dir,
                name="tensorboard",
                version="",
                default_hp_metric=False,
                purge_step=purge,
            )
        )
    fabric = Fabric(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy="ddp" if cfg.devices > 1 else "auto",
        precision=_PRECISION[cfg.precision],  # type: ignore[arg-type]
        loggers=loggers,
    )
    fabric.launch()
    with _deterministic(cfg.deterministic):
        return _Loop(fabric, cfg, model, data, loss, val_data, run_dir, meta).run(found)


class _Loop:
    """The state of one call to :func:`fit`; ``run`` is the loop itself."""

    def __init__(
        self,
        fabric: Fabric,
        cfg: TrainConfig,
        model: nn.Module,
        data: Iterable[Any],
        objective: Objective | TBPTT,
        val_data: Iterable[Any] | None,
        run_dir: Path | None,
        meta: dict[str, Any],
    ) -> None:
        self.fabric, self.cfg, self.model, self.objective = fabric, cfg, model, objective
        self.run_dir, self.meta = run_dir, meta
        self.started = time.monotonic()
        rank, world = fabric.global_rank, fabric.world_size
        self.zero = fabric.is_global_zero
        fabric.seed_everything(cfg.seed, verbose=False)
        self.train = _Data(data, rank=rank, world_size=world, seed=cfg.seed, pad=True)
        self.val = (
            None
            if val_data is None
            else _Data(val_data, rank=rank, world_size=world, seed=cfg.seed, pad=False)
        )
        self.batches_per_epoch = self.train.batches_per_epoch()
        self.optimizer = make_optimizer(model.parameters(), cfg)
        self.runner, self.fab_optimizer = fabric.setup(_Runner(model, objective), self.optimizer)
        self.schedule = Schedule(self.optimizer, cfg, batches_per_epoch=self.batches_per_epoch)
        self.ntasgd = NTASGD(cfg.nt_asgd) if cfg.nt_asgd is not None else None
        self.early = EarlyStopping(cfg.early_stopping, cfg.min_delta)
        # restore_best: CPU copies of the weights of the check with the lowest validation loss
        # (which check that is, is read from the history)
        self.best_weights: dict[str, Tensor] | None = None
        self.history: list[dict[str, Any]] = []
        self.pos = _Position()
        self.rng_epoch_start: dict[str, Any] | None = None
        self.rng_now: dict[str, Any] | None = None
        self.log: _CsvLog | None = None

    # ------------------------------------------------------------------ checkpoints
    def _shared_state(self) -> dict[str, Any]:
        return {
            "position": vars(self.pos).copy(),
            "config": self.cfg.to_dict(),
            "meta": self.meta,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "ntasgd": None if self.ntasgd is None else self.ntasgd.state(),
            "early_stopping": self.early.state(),
            "history": self.history,
            "log_offset": None if self.log is None else self.log.offset(),
        }

    def _rank_state(self) -> dict[str, Any]:
        return {
            "rng": ckpt.capture_rng(),
            "rng_epoch_start": self.rng_epoch_start,
            "tbptt": self.objective.state_dict() if isinstance(self.objective, TBPTT) else None,
        }

    def save(self) -> None:
        """Write a checkpoint: every process its own file, then rank 0 the rest, atomically."""
        if self.run_dir is None:
            return
        fabric = self.fabric
        root = self.run_dir / "checkpoints"
        self.pos.saves += 1
        index = self.pos.saves
        if self.zero:
            ckpt.prepare_checkpoint(root, index)
        fabric.barrier()
        tmp = ckpt.temporary_path(root, index)
        ckpt.write_rank_state(tmp, fabric.global_rank, self._rank_state())
        fabric.barrier()
        if self.zero:
            ckpt.commit_checkpoint(
                tmp,
                index=index,
                model=self.model.state_dict(),
                state=self._shared_state(),
                world_size=fabric.world_size,
                keep=self.cfg.keep_checkpoints,
            )
        fabric.barrier()

    def restore(self, found: ckpt.Checkpoint) -> int | None:
        """Continue from ``found``; returns the log offset to cut ``log.csv`` back to."""
        state = found.state
        if found.world_size != self.fabric.world_size:
            raise ValueError(
                f"checkpoint {found.path} was written by {found.world_size} process(es) and this "
                f"run has {self.fabric.world_size}: exact resume needs the same number"
            )
        saved_cfg = TrainConfig.from_dict(state["config"])
        differences = self.cfg.differences(saved_cfg)
        ours, theirs = _flat(self.meta), _flat(state["meta"])
        differences += [
            f"{k}: {ours.get(k)!r} here, {theirs.get(k)!r} in the checkpoint"
            for k in sorted(set(ours) | set(theirs))
            if ours.get(k) != theirs.get(k)
        ]
        if differences:
            raise ValueError(
                f"cannot resume from {found.path}: the run's settings differ ("
                + "; ".join(differences)
                + ")"
            )
        device = self.fabric.device
        self.model.load_state_dict({k: v.to(device) for k, v in found.model.items()})
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.ntasgd is not None and state["ntasgd"] is not None:
            self.ntasgd.load_state(state["ntasgd"], self.model)
        self.early.load_state(state["early_stopping"])
        self.history = state["history"]
        if self.cfg.restore_best and self.history:  # the first check always wrote the file
            assert self.run_dir is not None
            self.best_weights, _ = ckpt.load_safetensors(self.run_dir / BEST_WEIGHTS)
        self.pos = _Position(**state["position"])
        mine = found.ranks[self.fabric.global_rank]
        self.rng_now = mine["rng"]
        self.rng_epoch_start = mine["rng_epoch_start"]
        if isinstance(self.objective, TBPTT) and mine["tbptt"] is not None:
            self.objective.load_state_dict(mine["tbptt"], device)
        return state["log_offset"]

    # ------------------------------------------------------------------ the loop
    def run(self, found: ckpt.Checkpoint | None) -> FitResult:
        fabric = self.fabric
        offset = self.restore(found) if found is not None else None
        if self.run_dir is not None and self.zero:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.log = _CsvLog(self.run_dir / "log.csv", offset)
        status = "failed"
        try:
            stopped = self._epochs()
            status = "success"
        finally:
            if self.log is not None:
                self.log.close()
            for logger in fabric.loggers:
                logger.finalize(status)
        if self.ntasgd is not None and self.ntasgd.averaged is not None:
            self.model.load_state_dict(self.ntasgd.averaged.module.state_dict())
        restored = self.best_weights is not None
        if self.best_weights is not None:
            device = self.fabric.device
            self.model.load_state_dict({k: v.to(device) for k, v in self.best_weights.items()})
        best_epoch = None
        if self.history:
            best_epoch = min(self.history, key=lambda h: h["val_loss"])["epoch"]
        return FitResult(
            epochs=self.pos.epoch,
            steps=self.pos.step,
            stopped=stopped,
            history=list(self.history),
            best_val_loss=self.early.best,
            nt_asgd_epoch=None if self.ntasgd is None else self.ntasgd.switched_epoch,
            main_process=self.zero,
            best_epoch=best_epoch,
            restored=restored,
        )

    def _epochs(self) -> str:
        cfg = self.cfg
        self.started = time.monotonic() - self.pos.elapsed
        if self.pos.epoch >= cfg.max_epochs:
            return "max_epochs"
        if self.early.patience is not None and self.early.bad_checks >= self.early.patience:
            return "early_stopping"
        for epoch in range(self.pos.epoch, cfg.max_epochs):
            if self.pos.batch == 0:
                if self.rng_now is not None:  # resumed at an epoch boundary
                    ckpt.restore_rng(self.rng_now)
                    self.rng_now = None
                self.rng_epoch_start = ckpt.capture_rng()
                if isinstance(self.objective, TBPTT):
                    self.objective.reset()
            else:  # resumed mid-epoch: replay the epoch's start, then jump to the checkpoint
                assert self.rng_epoch_start is not None
                ckpt.restore_rng(self.rng_epoch_start)
            batches = self.train.iterate(epoch, skip=self.pos.batch)
            if self.rng_now is not None:
                ckpt.restore_rng(self.rng_now)
                self.rng_now = None
            if self._train_epoch(epoch, batches):
                return "max_time"
            stop = self._end_of_epoch(epoch)
            self.pos.elapsed = self._elapsed()
            self.save()
            if stop:
                return "early_stopping"
        return "max_epochs"

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def _keep_best(self, evaluated: nn.Module, epoch: int, val_loss: float) -> None:
        """``restore_best``: copy the weights just validated (NT-ASGD's average once it runs)
        to the CPU and, with a run directory, to ``DIR/best.safetensors`` (atomically, before
        the epoch's checkpoint names it), so that a resumed run restores the same weights."""
        self.best_weights = {
            k: v.detach().to("cpu", copy=True) for k, v in evaluated.state_dict().items()
        }
        if self.run_dir is not None and self.zero:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.save_safetensors_atomic(
                self.run_dir / BEST_WEIGHTS,
                self.best_weights,
                {"epoch": str(epoch), "val_loss": repr(val_loss)},
            )

    def _train_epoch(self, epoch: int, batches: Iterator[Any]) -> bool:
        """One epoch (from ``self.pos.batch`` on); True when ``max_time`` ran out."""
        cfg, fabric = self.cfg, self.fabric
        from tqdm import tqdm

        bar = tqdm(
            total=self.batches_per_epoch,
            initial=self.pos.batch,
            desc=f"epoch {epoch + 1}/{cfg.max_epochs}",
            disable=not (cfg.progress and self.zero),
            file=sys.stderr,
            dynamic_ncols=True,
            leave=False,
        )
        self.runner.train()
        try:
            for batch in batches:
                batch = fabric.to_device(batch)
                for piece in _pieces(self.objective, batch):
                    self._step(epoch, piece, bar)
                self.pos.batch += 1
                self.pos.batches += 1
                self.schedule.after_batch()
                bar.update(1)
                out_of_time = self._out_of_time()
                self.pos.elapsed = self._elapsed()
                if out_of_time or (
                    cfg.checkpoint_every and self.pos.batches % cfg.checkpoint_every == 0
                ):
                    self.save()
                if out_of_time:
                    return True
        finally:
            bar.close()
        return False

    def _out_of_time(self) -> bool:
        if self.cfg.max_time is None:
            return False
        late = self._elapsed() > self.cfg.max_time * 60.0
        if self.fabric.world_size > 1:  # every process must stop after the same batch
            flag = self.fabric.all_reduce(torch.tensor(float(late)), reduce_op="sum")
            late = bool(float(flag) > 0)  # type: ignore[arg-type]
        return late

    def _step(self, epoch: int, piece: Any, bar: Any) -> None:
        cfg, fabric = self.cfg, self.fabric
        loss, _ = _normalise(self.runner(piece))
        fabric.backward(loss)
        logging = (self.pos.step + 1) % cfg.log_every == 0
        grad_norm: float | None = None
        if cfg.clip_norm is not None:
            norm = fabric.clip_gradients(
                self.runner, self.fab_optimizer, max_norm=cfg.clip_norm, error_if_nonfinite=False
            )
            grad_norm = None if norm is None else float(norm)
        else:
            if logging:
                grad_norm = _grad_norm(self.model.parameters())
            if cfg.clip_value is not None:
                fabric.clip_gradients(self.runner, self.fab_optimizer, clip_val=cfg.clip_value)
        scale = self.objective.lr_scale(piece) if isinstance(self.objective, TBPTT) else 1.0
        if scale != 1.0:  # this update only (AWD-LSTM's seq_len / bptt); the schedule's lr stays
            base = [group["lr"] for group in self.optimizer.param_groups]
            for group in self.optimizer.param_groups:
                group["lr"] = group["lr"] * scale
        lr = _lr(self.optimizer)
        self.fab_optimizer.step()
        if scale != 1.0:
            for group, value in zip(self.optimizer.param_groups, base, strict=True):
                group["lr"] = value
        self.fab_optimizer.zero_grad(set_to_none=True)
        self.pos.step += 1
        if self.ntasgd is not None:
            self.ntasgd.update(self.model)
        if logging:
            value = loss.detach().float()
            if fabric.world_size > 1:
                value = fabric.all_reduce(value, reduce_op="mean")  # type: ignore[assignment]
            row = {
                "step": self.pos.step,
                "epoch": epoch,
                "batch": self.pos.batch,
                "time": round(self._elapsed(), 3),
                "train_loss": float(value),
                "lr": lr,
                "grad_norm": grad_norm,
            }
            self._write(row)
            bar.set_postfix(loss=f"{float(value):.4g}", lr=f"{lr:.3g}", refresh=False)

    def _write(self, row: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.write(row)
        names = ("train_loss", "lr", "grad_norm", "val_loss")
        metrics = {k: row[k] for k in names if row.get(k) is not None}
        self.fabric.log_dict(metrics, step=row["step"])

    def _end_of_epoch(self, epoch: int) -> bool:
        """Validation, schedules, NT-ASGD and early stopping after an epoch; True to stop."""
        self.pos.epoch = epoch + 1
        self.pos.batch = 0
        stop = False
        if self.val is not None:
            evaluated = self.model if self.ntasgd is None else self.ntasgd.eval_model(self.model)
            val_loss = evaluate_loss(self.fabric, evaluated, self.objective, self.val)
            averaging = self.ntasgd is not None and self.ntasgd.averaging
            if self.ntasgd is not None:
                self.ntasgd.check(val_loss, self.model, epoch + 1)
            self.schedule.after_validation(val_loss)
            stop = self.early.update(val_loss)
            if self.cfg.restore_best and (
                not self.history or val_loss < min(h["val_loss"] for h in self.history)
            ):
                self._keep_best(evaluated, epoch + 1, val_loss)
            entry = {
                "epoch": epoch + 1,
                "step": self.pos.step,
                "val_loss": val_loss,
                "lr": _lr(self.optimizer),
                "averaging": averaging,
            }
            self.history.append(entry)
            if self.cfg.progress and self.zero:
                from tqdm import tqdm

                note = " (averaged weights)" if averaging else ""
                tqdm.write(
                    f"epoch {epoch + 1}/{self.cfg.max_epochs}: val_loss {val_loss:.6g}{note}, "
                    f"lr {entry['lr']:.3g}",
                    file=sys.stderr,
                )
            self._write(
                {
                    "step": self.pos.step,
                    "epoch": epoch,
                    "batch": self.batches_per_epoch,
                    "time": round(self._elapsed(), 3),
                    "lr": entry["lr"],
                    "val_loss": val_loss,
                }
            )
        self.schedule.after_epoch()
        return stop


def evaluate_loss(
    fabric: Fabric | None,
    model: nn.Module,
    objective: Objective | TBPTT,
    data: Iterable[Any] | _Data,
) -> float:
    """The mean validation loss of ``model`` over ``data`` (weighted by each batch's count),
    in eval mode without gradients, summed over every process. A TBPTT objective carries the
    state across the validation windows from a fresh start."""
    if isinstance(objective, TBPTT):
        objective = objective.for_evaluation()
    batches = data.iterate(0) if isinstance(data, _Data) else iter(data)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    count = torch.zeros((), dtype=torch.float64)
    autocast = fabric.autocast() if fabric is not None else contextlib.nullcontext()
    try:
        with torch.no_grad(), autocast:
            for batch in batches:
                if fabric is not None:
                    batch = fabric.to_device(batch)
                for piece in _pieces(objective, batch):
                    loss, n = _normalise(objective(model, piece))
                    total += float(loss) * n
                    count += n
    finally:
        model.train(was_training)
    if fabric is not None and fabric.world_size > 1:
        sums = fabric.all_reduce(torch.stack([total, count]).to(fabric.device), reduce_op="sum")
        total, count = sums[0].cpu(), sums[1].cpu()  # type: ignore[index]
    if float(count) == 0:
        raise ValueError("val_data yielded no batches: cannot compute a validation loss")
    return float(total / count)
