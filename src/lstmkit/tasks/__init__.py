"""Tasks: one module per job, each an estimator plus its command-line description.

Every task follows the same small contract, in the style of scikit-learn:

* an :class:`Estimator` subclass whose ``__init__`` takes hyper-parameters only (the model's,
  declared by the task, and the training options of :class:`~lstmkit.train.TrainConfig`,
  shared by every task), with ``fit``, ``predict``, ``evaluate``, ``save(dir)`` and
  ``load(dir)``; a saved estimator is ``model.safetensors`` plus ``config.json``;
* a :class:`TaskSpec` registered with :func:`register`: the task's name for ``lstmkit train
  NAME``, its extra command-line arguments, how to build its data from them, and how to read the
  file given to ``lstmkit evaluate DIR --data FILE``.

A new task is one new file in this package: :func:`get_task` imports every module here, so
their ``register(...)`` calls run without any list to edit.
"""

from __future__ import annotations

import abc
import argparse
import importlib
import inspect
import json
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from ..train import FitResult, TrainConfig, fit
from ..train.checkpoint import load_safetensors, save_safetensors_atomic
from ..train.checkpoint import write_json_atomic as _write_json

FORMAT = "lstmkit-estimator"
VERSION = 1

E = TypeVar("E", bound="Estimator")


class Estimator(abc.ABC):
    """The base of every task's estimator.

    A subclass sets ``task`` (its registry name), takes its model's hyper-parameters as keyword
    arguments in ``__init__`` (stored as attributes of the same names and returned by
    :meth:`get_params`) and passes every other keyword to this ``__init__``, where they must be
    :class:`~lstmkit.train.TrainConfig` options. It implements :meth:`build_model`, ``fit``,
    ``predict`` and ``evaluate``; fitting goes through :meth:`_fit_model`, which calls
    :func:`lstmkit.train.fit` and, given ``out``, saves the estimator there.
    """

    task: ClassVar[str] = ""

    def __init__(self, **train_options: Any) -> None:
        self.train_config = TrainConfig().replace(**train_options)
        self.model_: nn.Module | None = None
        self.fit_result_: FitResult | None = None

    # ------------------------------------------------------------------ the subclass contract
    @abc.abstractmethod
    def get_params(self) -> dict[str, Any]:
        """The model's hyper-parameters as given to ``__init__`` (JSON-able)."""

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model for these hyper-parameters."""

    @abc.abstractmethod
    def fit(
        self: E,
        *args: Any,
        val: Any = None,
        out: str | os.PathLike[str] | None = None,
        resume: bool = False,
    ) -> E:
        """Train on the task's data (``val``: validation data, checked after every epoch);
        ``out`` keeps checkpoints, ``log.csv`` and the saved estimator, ``resume`` continues
        the run in ``out``. Returns the estimator."""

    @abc.abstractmethod
    def predict(self, *args: Any) -> Any:
        """Predictions of the fitted model."""

    @abc.abstractmethod
    def evaluate(self, *args: Any) -> dict[str, float]:
        """The task's metrics on labelled data, as a flat dict of numbers."""

    # ------------------------------------------------------------------ shared machinery
    def _fit_model(
        self,
        data: Any,
        val_data: Any,
        loss: Any,
        *,
        out: str | os.PathLike[str] | None,
        resume: bool,
        objective: Callable[[nn.Module], nn.Module] | None = None,
    ) -> FitResult:
        """Build the model from the seed and train it; with ``out``, save the estimator there
        (``model.safetensors`` and ``config.json``, next to the run's checkpoints and log).

        ``objective(model)``, if given, is what :func:`~lstmkit.train.fit` trains instead of the
        model itself: a module that holds the model and adds to its forward what only training
        needs (the language model's activation regularisers); the model is what is kept."""
        torch.manual_seed(self.train_config.seed)  # the initial weights follow the seed
        model = self.build_model()
        result = fit(
            model if objective is None else objective(model),
            data,
            loss=loss,
            val_data=val_data,
            config=self.train_config,
            out=out,
            resume=resume,
            meta={"task": self.task, "params": self.get_params()},
        )
        self.model_ = model.eval()
        self.fit_result_ = result
        if out is not None and result.main_process:
            self.save(out)
        return result

    def _require_model(self) -> nn.Module:
        if self.model_ is None:
            raise ValueError(
                f"this {type(self).__name__} is not fitted: call fit() or "
                f"{type(self).__name__}.load(directory) first"
            )
        return self.model_

    def config(self) -> dict[str, Any]:
        """What ``config.json`` holds: the task, its hyper-parameters and training options."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "task": self.task,
            "params": self.get_params(),
            "train": self.train_config.to_dict(),
        }

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``directory/model.safetensors`` (the weights) and ``directory/config.json``,
        each atomically; :meth:`load` rebuilds the estimator from them."""
        model = self._require_model()
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        save_safetensors_atomic(root / "model.safetensors", model.state_dict(), {"task": self.task})
        _write_json(root / "config.json", self.config())

    @classmethod
    def load(cls: type[E], directory: str | os.PathLike[str]) -> E:
        """The estimator saved in ``directory``. ``Estimator.load`` dispatches on the task named
        in ``config.json``; a subclass's ``load`` insists on its own task."""
        config = read_config(directory)
        target: type[Estimator] = get_task(config["task"]).estimator
        if cls is not Estimator and not issubclass(target, cls):
            raise ValueError(
                f"{Path(directory) / 'config.json'} holds a {config['task']!r} estimator, "
                f"not a {cls.task!r} one"
            )
        estimator = target(**config["params"], **config["train"])
        model = estimator.build_model()
        weights_path = Path(directory) / "model.safetensors"
        weights, _ = load_safetensors(weights_path)
        try:
            model.load_state_dict(weights)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ValueError(
                f"{weights_path} does not fit the model described by config.json: {first}"
            ) from exc
        estimator.model_ = model.eval()
        return estimator  # type: ignore[return-value]


def read_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """``directory/config.json`` of a saved estimator, checked, with errors naming the file."""
    path = Path(directory) / "config.json"
    if not Path(directory).is_dir():
        raise ValueError(f"{directory} is not a directory (expected the --out of a training run)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(
            f"{path} does not exist: is {directory} the --out directory of a finished run?"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{path} is not an lstmkit estimator config (no format {FORMAT!r})")
    if config.get("version") != VERSION:
        raise ValueError(
            f"{path} has version {config.get('version')!r}; this lstmkit reads version {VERSION}"
        )
    for key, kind in (("task", str), ("params", dict), ("train", dict)):
        if not isinstance(config.get(key), kind):
            raise ValueError(f"{path}: {key!r} must be a {kind.__name__}, got {config.get(key)!r}")
    return config


# ---------------------------------------------------------------------- registry
@dataclass(frozen=True)
class TaskSpec:
    """What the command line needs to know about a task.

    ``add_arguments(parser)`` adds the task's flags. Flags whose destination is a parameter of
    the estimator's ``__init__`` become its hyper-parameters; the others describe the data.
    ``make_data(args)`` returns ``(fit_args, val_args)``: the positional arguments of
    ``estimator.fit`` and those of ``estimator.evaluate`` for the validation data (also passed to
    ``fit`` as ``val=``). ``read_data(path)`` returns the positional arguments of
    ``estimator.evaluate`` for ``lstmkit evaluate DIR --data FILE``.
    """

    name: str
    help: str
    estimator: type[Estimator]
    add_arguments: Callable[[argparse._ActionsContainer], None]
    make_data: Callable[[argparse.Namespace], tuple[tuple[Any, ...], tuple[Any, ...]]]
    read_data: Callable[[str], tuple[Any, ...]]

    def estimator_params(self) -> list[str]:
        """The names of the estimator's own hyper-parameters."""
        signature = inspect.signature(self.estimator.__init__)
        return [
            name
            for name, p in signature.parameters.items()
            if name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD
        ]


_REGISTRY: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    """Add a task to the registry (called at import time by each module of this package)."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"task {spec.name!r} is registered twice")
    if spec.estimator.task != spec.name:
        raise ValueError(
            f"task {spec.name!r} registers {spec.estimator.__name__}, whose task is "
            f"{spec.estimator.task!r}"
        )
    _REGISTRY[spec.name] = spec
    return spec


@dataclass(frozen=True)
class Command:
    """A top-level command that a task adds beside ``train`` and ``evaluate`` (``lstmkit tag``,
    ``lstmkit forecast``, ``lstmkit generate`` ...), registered with :func:`register_command`
    from the task's module. ``add_arguments(parser)`` adds its flags; ``run(args)`` does the
    work and returns the exit status. It raises ``ValueError``/``TypeError``/``OSError`` for bad
    input, which the command line prints as one line (exit status 2)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


_COMMANDS: dict[str, Command] = {}
RESERVED_COMMANDS = ("demo", "train", "evaluate")


def register_command(command: Command) -> Command:
    """Add a top-level command (called at import time by a task module)."""
    if command.name in RESERVED_COMMANDS:
        raise ValueError(f"command {command.name!r} is built in; choose another name")
    if command.name in _COMMANDS and _COMMANDS[command.name] is not command:
        raise ValueError(f"command {command.name!r} is registered twice")
    _COMMANDS[command.name] = command
    return command


def commands() -> list[Command]:
    """Every task-provided command, sorted by name."""
    _import_all()
    return [_COMMANDS[name] for name in sorted(_COMMANDS)]


def _import_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


def task_names() -> list[str]:
    """Every registered task, sorted."""
    _import_all()
    return sorted(_REGISTRY)


def get_task(name: str) -> TaskSpec:
    """The registered task ``name``; ``ValueError`` listing the tasks if there is none."""
    names = task_names()
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; the tasks are {', '.join(names)}")
    return _REGISTRY[name]


__all__ = [
    "Command",
    "Estimator",
    "TaskSpec",
    "commands",
    "get_task",
    "read_config",
    "register",
    "register_command",
    "task_names",
]
