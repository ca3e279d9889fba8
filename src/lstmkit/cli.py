"""Command-line interface: argument parsing only; the work happens in the library.

``lstmkit demo`` trains small models and writes an HTML report (``runs/demo/index.html``).
``lstmkit train TASK --out DIR ...`` trains a task of :mod:`lstmkit.tasks` and writes
``DIR/config.json``, ``DIR/model.safetensors``, ``DIR/metrics.json`` (final validation
metrics), ``DIR/log.csv`` and ``DIR/run.json`` (the run's settings); ``--resume`` continues the
run in ``DIR`` from its last checkpoint with those settings and ``--config FILE`` reads the same
options from YAML (flags given on the command line win). ``lstmkit evaluate DIR --data FILE``
prints a trained model's metrics as one JSON object. The tasks add their own commands
(``generate``, ``translate``, ``tag``, ``predict``, ``forecast``, ``detect``, ``nab``). Bad
flags, configs or data end with a one-line error and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .train.config import (
    ACCELERATORS,
    OPTIMIZERS,
    PRECISIONS,
    RESUMABLE_CHANGES,
    SCHEDULES,
    TrainConfig,
)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``prog: error: message``, exit status 2): a wrong flag in
    a long command should not scroll the screen with the usage of fifty options."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


# Every TrainConfig option as a flag; the defaults come from TrainConfig itself.
_TRAIN_FLAGS: dict[str, dict[str, Any]] = {
    "max_epochs": {"type": int, "metavar": "N", "help": "epochs to train"},
    "max_time": {
        "type": float,
        "metavar": "MINUTES",
        "help": "stop after this much training time, with a checkpoint (summed over resumes)",
    },
    "seed": {
        "type": int,
        "metavar": "N",
        "help": "seed of the data, the initial weights, the data order and dropout",
    },
    "deterministic": {
        "action": "store_true",
        "help": "torch.use_deterministic_algorithms for the run (bitwise repeatable)",
    },
    "optimizer": {"choices": OPTIMIZERS, "help": "optimizer"},
    "lr": {"type": float, "metavar": "LR", "help": "learning rate"},
    "weight_decay": {"type": float, "metavar": "W", "help": "weight decay"},
    "momentum": {"type": float, "metavar": "M", "help": "momentum (sgd only)"},
    "clip_norm": {"type": float, "metavar": "NORM", "help": "clip gradients to this total norm"},
    "clip_value": {"type": float, "metavar": "V", "help": "clip each gradient entry to [-V, V]"},
    "schedule": {
        "choices": SCHEDULES,
        "help": "learning-rate schedule: plateau (on validation), step (Zaremba et al.), "
        "cosine (with warm-up)",
    },
    "gamma": {"type": float, "metavar": "G", "help": "decay factor of step and plateau"},
    "decay_after": {"type": int, "metavar": "E", "help": "step: epochs at the initial rate"},
    "plateau_patience": {
        "type": int,
        "metavar": "N",
        "help": "plateau: checks without improvement before decaying",
    },
    "warmup_steps": {"type": int, "metavar": "N", "help": "cosine: batches of linear warm-up"},
    "min_lr": {"type": float, "metavar": "LR", "help": "cosine and plateau: lowest rate"},
    "nt_asgd": {
        "type": int,
        "metavar": "N",
        "help": "NT-ASGD (sgd): average the weights once validation has not improved for N checks",
    },
    "early_stopping": {
        "type": int,
        "metavar": "N",
        "help": "stop after N validation checks without improvement",
    },
    "min_delta": {"type": float, "metavar": "D", "help": "smallest improvement that counts"},
    "restore_best": {
        "action": argparse.BooleanOptionalAction,
        "help": "end with the weights of the best validation check, not the last",
    },
    "precision": {"choices": PRECISIONS, "help": "32 (float32) or bf16 (bfloat16 autocast)"},
    "accelerator": {"choices": ACCELERATORS, "help": "where to train"},
    "devices": {"type": int, "metavar": "N", "help": "processes (DDP: gloo on CPU, NCCL on GPU)"},
    "checkpoint_every": {
        "type": int,
        "metavar": "N",
        "help": "also checkpoint every N batches (always at the end of each epoch)",
    },
    "keep_checkpoints": {"type": int, "metavar": "N", "help": "checkpoints to keep"},
    "log_every": {"type": int, "metavar": "N", "help": "log.csv row every N optimizer steps"},
    "tensorboard": {
        "action": argparse.BooleanOptionalAction,
        "help": "write TensorBoard events to DIR/tensorboard",
    },
    "progress": {"action": argparse.BooleanOptionalAction, "help": "show a progress bar"},
}
_RUN_FLAGS = ("max_epochs", "max_time", "seed")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    run = parser.add_argument_group("run")
    run.add_argument("--out", metavar="DIR", help="run directory (required)")
    run.add_argument("--resume", action="store_true", help="continue from DIR's last checkpoint")
    run.add_argument("--config", metavar="FILE", help="YAML file with the same keys as the flags")
    training = parser.add_argument_group("training")
    for name, spec in _TRAIN_FLAGS.items():
        group = run if name in _RUN_FLAGS else training
        default = getattr(defaults, name)
        text = spec["help"] + (f" (default: {default})" if default not in (None, False) else "")
        group.add_argument(_flag(name), **{**spec, "help": text, "default": default})


def _parser() -> tuple[_Parser, dict[str, _Parser]]:
    from .tasks import commands, get_task, task_names

    parser = _Parser(prog="lstmkit", description="Recurrent sequence models: LSTM, GRU and RNN.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="a few minutes of real training written up as an HTML report (runs/demo/index.html)",
    )
    demo.add_argument("--out", metavar="DIR", default="runs/demo", help="report folder")
    demo.add_argument(
        "--data", metavar="FILE", help="text for the character LM (default: the project's docs)"
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quick", action="store_true", help="tiny budgets: seconds, for tests")
    demo.add_argument("--json", metavar="FILE", help="also write the measured figures as JSON")

    train = sub.add_parser("train", help="train a task; writes DIR/{config,metrics}.json, ...")
    tasks = train.add_subparsers(dest="task", required=True, metavar="TASK")
    task_parsers: dict[str, _Parser] = {}
    for name in task_names():
        spec = get_task(name)
        task_parser = tasks.add_parser(name, help=spec.help, description=spec.help)
        _add_train_flags(task_parser)
        spec.add_arguments(task_parser.add_argument_group(name))
        task_parsers[name] = task_parser

    evaluate = sub.add_parser("evaluate", help="print a trained model's metrics as JSON")
    evaluate.add_argument("directory", metavar="DIR", help="the --out of a training run")
    evaluate.add_argument("--data", required=True, metavar="FILE", help="labelled data file")

    for command in commands():  # the tasks' own commands: tag, forecast, generate ...
        command.add_arguments(sub.add_parser(command.name, help=command.help))
    return parser, task_parsers


# ---------------------------------------------------------------------- YAML configs
def _convert(action: argparse.Action, key: str, value: Any, path: str) -> Any:
    """A YAML value checked and converted exactly as the flag's argparse would do it."""
    where = f"--config {path}: key {key!r}"
    if action.nargs == 0:  # on/off flags
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if value is None:
        if action.default is not None:
            raise ValueError(f"{where} must have a value, got null")
        return None
    if isinstance(value, (dict, list)):
        raise ValueError(f"{where} must be a single value, got {value!r}")
    convert = action.type if callable(action.type) else str
    try:
        result = convert(str(value))
    except (TypeError, ValueError):
        kind = getattr(convert, "__name__", "value")
        article = "an" if kind == "int" else "a"
        raise ValueError(f"{where} must be {article} {kind}, got {value!r}") from None
    if action.choices is not None and result not in action.choices:
        options = ", ".join(map(str, action.choices))
        raise ValueError(f"{where} must be one of {options}, got {value!r}")
    return result


def _read_config(parser: _Parser, path: str) -> dict[str, Any]:
    """The YAML file's values, checked and converted as ``parser`` would; they become the
    parser's defaults, so flags given on the command line still win."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"--config {path}: cannot read it ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ValueError(f"--config {path}: {problem}{at}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(
            f"--config {path} must be a mapping of option names to values, "
            f"got a {type(data).__name__}"
        )
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    values = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in actions:
            raise ValueError(
                f"--config {path}: unknown key {key!r}; the keys are the flags' names: "
                + ", ".join(sorted(actions))
            )
        values[dest] = _convert(actions[dest], str(key), value, path)
    return values


# ---------------------------------------------------------------------- resuming
_NOT_SAVED = ("command", "task", "out", "resume", "config")


def _saved_settings(out: Path) -> dict[str, Any] | None:
    """The settings of the run in ``out`` (``run.json``), or None if it has none."""
    path = out / "run.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("args"), dict):
        raise ValueError(f"{path} is not an lstmkit run file (no 'args' mapping)")
    return saved


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` with, for ``train``, defaults layered as: the parser's own, then the run's
    saved settings (with ``--resume``), then ``--config``; the command line wins over all."""
    parser, task_parsers = _parser()
    args = parser.parse_args(argv)
    if args.command != "train":
        return args
    task_parser = task_parsers[args.task]
    from_yaml = _read_config(task_parser, args.config) if args.config else {}
    task_parser.set_defaults(**from_yaml)
    args = parser.parse_args(argv)
    if not (args.resume and args.out):
        return args
    saved = _saved_settings(Path(args.out))
    if saved is None:
        return args
    if saved.get("task") != args.task:
        raise ValueError(f"{args.out} holds a {saved.get('task')!r} run, not an {args.task!r} one")
    known = {a.dest for a in task_parser._actions}
    task_parser.set_defaults(**{k: v for k, v in saved["args"].items() if k in known})
    task_parser.set_defaults(**from_yaml)
    args = parser.parse_args(argv)
    changed = [
        f"{_flag(k)} is {getattr(args, k)!r} here, {v!r} in {Path(args.out) / 'run.json'}"
        for k, v in saved["args"].items()
        if k in known and k not in RESUMABLE_CHANGES and getattr(args, k) != v
    ]
    if changed:
        raise ValueError("cannot resume with different settings: " + "; ".join(changed))
    return args


# ---------------------------------------------------------------------- commands
def _train(args: argparse.Namespace) -> int:
    from .tasks import get_task
    from .train.checkpoint import list_checkpoints, write_json_atomic

    if args.out is None:
        raise ValueError("--out DIR is required (on the command line or as 'out:' in --config)")
    out = Path(args.out)
    if not args.resume and list_checkpoints(out / "checkpoints"):
        raise ValueError(
            f"{out} already holds checkpoints of a run: pass --resume to continue it, "
            "or choose another --out"
        )
    spec = get_task(args.task)
    values = vars(args)
    train_options = {name: values[name] for name in TrainConfig.names()}
    params = {name: values[name] for name in spec.estimator_params() if name in values}
    estimator = spec.estimator(**params, **train_options)
    fit_args, val_args = spec.make_data(args)
    settings = {k: v for k, v in values.items() if k not in _NOT_SAVED}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "run.json", {"task": args.task, "args": settings})
    estimator.fit(*fit_args, val=val_args, out=args.out, resume=args.resume)
    assert estimator.fit_result_ is not None
    if estimator.fit_result_.main_process:
        metrics = estimator.evaluate(*val_args)
        write_json_atomic(Path(args.out) / "metrics.json", metrics)
        result = estimator.fit_result_
        print(
            f"{result.epochs} epochs, {result.steps} steps ({result.stopped}); "
            f"validation: {json.dumps(metrics)}; written to {args.out}"
        )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .tasks import Estimator, get_task, read_config

    spec = get_task(read_config(args.directory)["task"])
    estimator = Estimator.load(args.directory)
    metrics = estimator.evaluate(*spec.read_data(args.data))
    print(json.dumps(metrics))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    results = demo.run(out=args.out, data=args.data, seed=args.seed, quick=args.quick)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        print(f"figures written to {args.json}")
    print(f"report written to {results['report']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "lstmkit"
    try:
        args = _parse(argv)
        command = "lstmkit " + (args.command if args.command != "train" else f"train {args.task}")
        builtin = {"demo": _demo, "train": _train, "evaluate": _evaluate}
        if args.command in builtin:
            return builtin[args.command](args)
        from .tasks import commands

        return next(c for c in commands() if c.name == args.command).run(args)
    except (TypeError, ValueError, OSError) as exc:
        if command == "lstmkit" and len(argv) >= 2 and argv[0] == "train":
            command = f"lstmkit train {argv[1]}"
        message = " ".join(str(exc).split())
        print(f"{command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
