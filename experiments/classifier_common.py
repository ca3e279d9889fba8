"""What the two classifier experiments share: the ``--threads`` option, and one fit and test
evaluation of a :class:`~lstmkit.tasks.classifier.SequenceClassifier` reported as a JSON-ready
dict with wall and CPU time."""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from lstmkit.tasks.classifier import SequenceClassifier


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a busy 2-core machine two OpenMP threads "
        "wait on each other and a training step costs 20 times more CPU time)",
    )


def fit_and_report(
    name: str,
    params: dict[str, Any],
    train: tuple[Any, Any],
    test: tuple[Any, Any],
    *,
    quick: bool,
    seed: int,
    target: float,
    clock: tuple[float, float],
) -> dict[str, Any]:
    """Fit ``SequenceClassifier(**params)`` on ``train`` = (X, y), evaluate on ``test`` and
    return the report; ``clock`` is ``(time.perf_counter(), time.process_time())`` taken when
    the run started, so data preparation counts in the times."""
    start, cpu_start = clock
    estimator = SequenceClassifier(**params, seed=seed, progress=False, tensorboard=False)
    estimator.fit(*train)
    metrics = estimator.evaluate(*test)
    result = estimator.fit_result_
    return {
        "experiment": name,
        "quick": quick,
        "params": params,
        "n_train": len(train[1]),
        "epochs": None if result is None else result.epochs,
        "stopped": None if result is None else result.stopped,
        "test": metrics,
        "target_accuracy": target,
        "wall_s": round(time.perf_counter() - start, 1),
        # CPU seconds of this process (all its threads): on a shared machine the wall time
        # depends on the other jobs, this much less
        "cpu_s": round(time.process_time() - cpu_start, 1),
        "torch_threads": torch.get_num_threads(),
    }
