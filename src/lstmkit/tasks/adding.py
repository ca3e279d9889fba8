"""The adding problem as a task: regress the sum of the two marked values of a sequence.

The smallest complete task, and the template for the others: a model (a recurrent layer and a
linear head on its last output), an estimator, and its command-line description::

    lstmkit train adding --out runs/adding --seq-len 50 --max-epochs 10
    lstmkit evaluate runs/adding --data test.safetensors

Sequences are batch-first here, ``X`` of shape ``(N, T, 2)`` (value, marker) and ``y`` of shape
``(N,)``, the scikit-learn layout; :func:`make_dataset` draws them from
:func:`lstmkit.data.synthetic.adding_problem`, and :func:`write_dataset` / :func:`read_dataset`
store them as a safetensors file with the tensors ``x`` and ``y``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from .. import _checks
from ..data.synthetic import adding_problem
from ..nn import GRU, LSTM, RNN
from ..train.checkpoint import CheckpointError, load_safetensors, save_safetensors_atomic
from . import Estimator, TaskSpec, register

CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
FEATURES = 2


class AddingModel(nn.Module):
    """A recurrent layer over ``(B, T, 2)`` and a linear read-out of its last output: ``(B,)``."""

    def __init__(self, cell: str, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.rnn = CELLS[cell](FEATURES, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: Tensor) -> Tensor:
        output, _ = self.rnn(x)
        return self.head(output[:, -1]).squeeze(-1)


def _check_tensor(name: str, value: Any, dims: int, shape: str, prefix: str) -> Tensor:
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise TypeError(
            f"{prefix}{name} must be a floating-point tensor of shape {shape}, "
            f"got {_checks.describe(value)}"
        )
    if value.dim() != dims:
        raise ValueError(f"{prefix}{name} must have shape {shape}, got {tuple(value.shape)}")
    bad = (~torch.isfinite(value)).nonzero()
    if len(bad):
        index = ", ".join(str(int(i)) for i in bad[0])
        raise ValueError(f"{prefix}{name}[{index}] is {value[tuple(bad[0])].item()}: not finite")
    return value.float()


def _check_x(X: Any, prefix: str = "") -> Tensor:
    """``X`` (N, T, 2), floating point, finite, N and T at least 1."""
    X = _check_tensor("X", X, 3, "(N, T, 2)", prefix)
    if X.shape[2] != FEATURES:
        raise ValueError(
            f"{prefix}X must have {FEATURES} features (value, marker) in its last dimension, "
            f"got shape {tuple(X.shape)}"
        )
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(
            f"{prefix}X must hold at least one sequence of at least one step, "
            f"got shape {tuple(X.shape)}"
        )
    return X


def _check_xy(X: Any, y: Any, prefix: str = "") -> tuple[Tensor, Tensor]:
    """``X`` as :func:`_check_x` and ``y`` (N,) with one finite target per sequence."""
    X = _check_x(X, prefix)
    y = _check_tensor("y", y, 1, "(N,)", prefix)
    if y.shape[0] != X.shape[0]:
        raise ValueError(
            f"{prefix}y must have one target per sequence of X: X has {X.shape[0]} "
            f"sequences, y has {y.shape[0]} values"
        )
    return X, y


class AddingRegressor(Estimator):
    """A recurrent regressor for the adding problem.

    ``hidden_size``, ``num_layers`` and ``cell`` (``'lstm'``, ``'gru'`` or ``'rnn'``) shape the
    model, ``batch_size`` the training batches; every other keyword is a
    :class:`~lstmkit.train.TrainConfig` option (``lr``, ``max_epochs``, ``clip_norm``, ...).
    """

    task = "adding"

    def __init__(
        self,
        hidden_size: int = 32,
        num_layers: int = 1,
        cell: str = "lstm",
        batch_size: int = 32,
        **train_options: Any,
    ) -> None:
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.num_layers = _checks.positive_int("num_layers", num_layers)
        self.cell = _checks.choice("cell", cell, tuple(CELLS))
        self.batch_size = _checks.positive_int("batch_size", batch_size)
        super().__init__(**train_options)

    def get_params(self) -> dict[str, Any]:
        return {
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "cell": self.cell,
            "batch_size": self.batch_size,
        }

    def build_model(self) -> nn.Module:
        return AddingModel(self.cell, self.hidden_size, self.num_layers)

    def fit(  # type: ignore[override]
        self,
        X: Tensor,
        y: Tensor,
        *,
        val: tuple[Tensor, Tensor] | None = None,
        out: str | os.PathLike[str] | None = None,
        resume: bool = False,
    ) -> AddingRegressor:
        """Train on ``X`` (N, T, 2) and ``y`` (N,), validating on ``val = (X_val, y_val)`` after
        every epoch; ``out`` keeps checkpoints, ``log.csv`` and the saved estimator."""
        X, y = _check_xy(X, y)
        train = DataLoader(TensorDataset(X, y), batch_size=self.batch_size, shuffle=True)
        val_loader = None
        if val is not None:
            if not isinstance(val, (tuple, list)) or len(val) != 2:
                raise TypeError(f"val must be a tuple (X_val, y_val), got {_checks.describe(val)}")
            Xv, yv = _check_xy(*val)
            val_loader = DataLoader(TensorDataset(Xv, yv), batch_size=self.batch_size)
        self._fit_model(train, val_loader, _mse, out=out, resume=resume)
        return self

    def predict(self, X: Tensor) -> Tensor:  # type: ignore[override]
        """The predicted sums, shape ``(N,)``."""
        model = self._require_model()
        X = _check_x(X)
        device = next(model.parameters()).device
        with torch.no_grad():
            parts = [model(chunk.to(device)).cpu() for chunk in X.split(max(256, self.batch_size))]
        return torch.cat(parts)

    def evaluate(self, X: Tensor, y: Tensor) -> dict[str, float]:  # type: ignore[override]
        """``mse`` and ``mae`` of the predictions, ``baseline_mse`` of always predicting 1 (the
        mean sum, MSE about 1/6: what a model without memory reaches) and the count ``n``."""
        X, y = _check_xy(X, y)
        error = self.predict(X) - y
        return {
            "mse": float(error.square().mean()),
            "mae": float(error.abs().mean()),
            "baseline_mse": float((y - 1.0).square().mean()),
            "n": len(y),
        }


def _mse(model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, int]:
    x, y = batch
    return F.mse_loss(model(x), y), len(y)


# ---------------------------------------------------------------------- data
def make_dataset(n: int, T: int, *, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` adding-problem sequences of length ``T`` drawn with ``seed``: ``X`` (n, T, 2), ``y``
    (n,)."""
    x, y = adding_problem(n, T, generator=torch.Generator().manual_seed(seed))
    return x.transpose(0, 1).contiguous(), y


def write_dataset(path: str | os.PathLike[str], X: Tensor, y: Tensor) -> None:
    """Store ``X`` and ``y`` as the safetensors file that ``lstmkit evaluate --data`` reads."""
    X, y = _check_xy(X, y)
    save_safetensors_atomic(path, {"x": X, "y": y}, {"task": AddingRegressor.task})


def read_dataset(path: str | os.PathLike[str]) -> tuple[Tensor, Tensor]:
    """``(X, y)`` from a safetensors file with tensors ``x`` (N, T, 2) and ``y`` (N,); errors
    name the file and the tensor."""
    try:
        tensors, _ = load_safetensors(path)
    except CheckpointError as exc:
        raise ValueError(f"data file {exc}") from None
    missing = [k for k in ("x", "y") if k not in tensors]
    if missing:
        raise ValueError(
            f"data file {path} has no tensor {missing[0]!r}; an adding-problem file holds "
            f"'x' (N, T, 2) and 'y' (N,), found {sorted(tensors) or 'none'}"
        )
    return _check_xy(tensors["x"], tensors["y"], prefix=f"data file {path}: ")


# ---------------------------------------------------------------------- command line
def _add_arguments(group: argparse._ActionsContainer) -> None:
    group.add_argument("--seq-len", type=int, default=50, metavar="T", help="sequence length")
    group.add_argument("--n-train", type=int, default=2048, metavar="N", help="training sequences")
    group.add_argument("--n-val", type=int, default=512, metavar="N", help="validation sequences")
    group.add_argument("--hidden-size", type=int, default=32, metavar="H", help="hidden units")
    group.add_argument("--num-layers", type=int, default=1, metavar="L", help="stacked layers")
    group.add_argument("--cell", choices=tuple(CELLS), default="lstm", help="recurrent layer")
    group.add_argument("--batch-size", type=int, default=32, metavar="B", help="batch size")


def _make_data(args: argparse.Namespace) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    n_train = _checks.positive_int("--n-train", args.n_train)
    n_val = _checks.positive_int("--n-val", args.n_val)
    T = _checks.positive_int("--seq-len", args.seq_len)
    X, y = make_dataset(n_train + n_val, T, seed=args.seed)
    return (X[:n_train], y[:n_train]), (X[n_train:], y[n_train:])


register(
    TaskSpec(
        name="adding",
        help="the adding problem: regress the sum of two marked values (synthetic data)",
        estimator=AddingRegressor,
        add_arguments=_add_arguments,
        make_data=_make_data,
        read_data=read_dataset,
    )
)
