"""What the two seq2seq experiments share: fitting the estimator (into a temporary run
directory unless one is given) and the training and test figures every report carries."""

from __future__ import annotations

import tempfile
import time
from typing import Any

from lstmkit.tasks.seq2seq import Seq2Seq


def fit_and_evaluate(
    estimator: Seq2Seq,
    train: list[tuple[str, str]],
    val: list[tuple[str, str]],
    test: list[tuple[str, str]],
    out: str | None = None,
) -> dict[str, Any]:
    """Fit on ``train`` (validating on ``val``), evaluate on ``test`` and return the settings,
    the training history's first and best validation loss, the test metrics and the training
    wall time."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        estimator.fit(train, val=val, out=out or tmp)
    train_seconds = time.perf_counter() - start
    fitted = estimator.fit_result_
    assert fitted is not None
    return {
        "params": {k: v for k, v in estimator.get_params().items() if k != "vocab"},
        "epochs": fitted.epochs,
        "stopped": fitted.stopped,
        "first_val_loss": fitted.history[0]["val_loss"],
        "best_val_loss": fitted.best_val_loss,
        "test": estimator.evaluate(test),
        "train_seconds": round(train_seconds, 1),
    }
