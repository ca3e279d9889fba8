"""LSTM vs a TCN and a Transformer of similar size: accuracy, training time, and the cost of one
more token as the sequence grows.

The claims: a temporal convolutional network (Bai, Kolter & Koltun 2018) and a Transformer
(Vaswani et al. 2017) match or beat an LSTM on sequence tasks and train faster in parallel over
time; an LSTM generates each new token in O(1) time and memory (its state has a fixed size),
where a causal Transformer with a key/value cache attends over all n earlier tokens, O(n) per
token, and its cache grows with n. A TCN holds its receptive field, a constant.

All three models are written here in plain PyTorch, each with an incremental ``step`` whose
outputs the script checks against the full-sequence forward:

* LSTM: :class:`lstmkit.LSTM` and a linear head; steps through :class:`lstmkit.streaming.Streamer`.
* TCN: residual blocks of two causal dilated convolutions (dilations 1, 2, 4, ...; kernel 3),
  as in Bai et al. 2018 without weight normalisation; steps by running the stack on the last
  receptive-field inputs.
* Transformer: pre-norm causal encoder blocks with sinusoidal positions; steps with a key/value
  cache.

Task: the adding problem; every model gets the same number of Adam updates.

    python experiments/claims_lstm_tcn_transformer.py [--quick] [--out DIR]
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from _common import Experiment, count_parameters, make_parser, new_figure, train
from claims_long_memory import adding_batches
from torch import Tensor, nn

from lstmkit import LSTM
from lstmkit.data.synthetic import ADDING_BASELINE_MSE, adding_problem
from lstmkit.streaming import Streamer

NAME = "claims_lstm_tcn_transformer"
FEATURES = 2


# ------------------------------------------------------------------------------ the models
class LSTMModel(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.rnn = LSTM(FEATURES, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(T, B, 2)`` -> ``(T, B)``: a prediction after every step."""
        return self.head(self.rnn(x)[0]).squeeze(-1)

    def state_numel(self, n: int) -> int:
        """Floats held per stream after ``n`` tokens: h and c, whatever ``n``."""
        return 2 * self.rnn.hidden_size


class CausalBlock(nn.Module):
    """Two causal dilated convolutions with ReLU and a residual connection (Bai et al. 2018)."""

    def __init__(self, channels_in: int, channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv1 = nn.Conv1d(channels_in, channels, kernel, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.skip = nn.Conv1d(channels_in, channels, 1) if channels_in != channels else None

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.conv1(F.pad(x, (self.pad, 0))))
        y = F.relu(self.conv2(F.pad(y, (self.pad, 0))))
        return F.relu(y + (x if self.skip is None else self.skip(x)))


class TCN(nn.Module):
    def __init__(self, channels: int, levels: int, kernel: int = 3) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(
                CausalBlock(FEATURES if i == 0 else channels, channels, kernel, 2**i)
                for i in range(levels)
            )
        )
        self.head = nn.Linear(channels, 1)
        #: how many inputs the last output sees: 1 + 2 (k - 1) (1 + 2 + ... + 2^(L-1))
        self.receptive_field = 1 + 2 * (kernel - 1) * (2**levels - 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.blocks(x.permute(1, 2, 0))  # (B, C, T)
        return self.head(y.transpose(1, 2)).squeeze(-1).t()

    def step(self, window: Tensor) -> Tensor:
        """The output at the last of ``window`` ``(R, B, 2)``, the last R inputs."""
        return self.forward(window[-self.receptive_field :])[-1]

    def state_numel(self, n: int) -> int:
        return min(n, self.receptive_field) * FEATURES


class Block(nn.Module):
    """Pre-norm causal self-attention and MLP, with an incremental :meth:`step`."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def _split(self, t: Tensor) -> Tensor:  # (B, T, d) -> (B, heads, T, d/heads)
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x`` ``(B, T, d)``; returns the output and this block's keys and values."""
        q, k, v = (self._split(t) for t in self.qkv(self.norm1(x)).chunk(3, -1))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).flatten(2))
        return x + self.mlp(self.norm2(x)), k, v

    def step(self, x: Tensor, cache: list[Tensor]) -> Tensor:
        """``x`` ``(B, 1, d)``; appends this token's key and value to ``cache`` = [k, v]."""
        q, k, v = (self._split(t) for t in self.qkv(self.norm1(x)).chunk(3, -1))
        cache[0] = torch.cat([cache[0], k], 2)
        cache[1] = torch.cat([cache[1], v], 2)
        a = F.scaled_dot_product_attention(q, cache[0], cache[1])  # attends to all n tokens
        x = x + self.proj(a.transpose(1, 2).flatten(2))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    pos: Tensor

    def __init__(self, d: int, layers: int, heads: int, max_len: int) -> None:
        super().__init__()
        self.embed = nn.Linear(FEATURES, d)
        # fixed sinusoidal positions (Vaswani et al. 2017): no parameters, so that the model's
        # size does not grow with the longest position the cost measurement reaches
        pos = torch.arange(max_len, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10_000.0) / d))
        table = torch.zeros(max_len, d)
        table[:, 0::2] = torch.sin(pos * freq)
        table[:, 1::2] = torch.cos(pos * freq)
        self.register_buffer("pos", table, persistent=False)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 1)
        self.d = d

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x.transpose(0, 1)) + self.pos[: x.shape[0]]
        for block in self.blocks:
            h = block(h)[0]
        return self.head(self.norm(h)).squeeze(-1).t()

    def prefill(self, x: Tensor) -> list[list[Tensor]]:
        """The key/value cache after the tokens ``x`` ``(T, B, 2)``."""
        h = self.embed(x.transpose(0, 1)) + self.pos[: x.shape[0]]
        caches = []
        for block in self.blocks:
            h, k, v = block(h)
            caches.append([k, v])
        return caches

    def step(self, x: Tensor, caches: list[list[Tensor]]) -> Tensor:
        """The output for token ``x`` ``(B, 2)`` at position ``len(cache)``."""
        n = caches[0][0].shape[2]
        h = (self.embed(x) + self.pos[n])[:, None]
        for block, cache in zip(self.blocks, caches, strict=True):
            assert isinstance(block, Block)
            h = block.step(h, cache)
        return self.head(self.norm(h[:, 0])).squeeze(-1)

    def state_numel(self, n: int) -> int:
        return 2 * len(self.blocks) * self.d * n


# ------------------------------------------------------------------------------ measurements
def last_step_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return F.mse_loss(model(x)[-1], y)


@torch.no_grad()
def incremental_matches(model: nn.Module, x: Tensor) -> float:
    """Max |incremental output - full-sequence output| over ``x`` ``(T, B, 2)``."""
    model.eval()
    full = model(x)
    outs = []
    if isinstance(model, LSTMModel):
        streamer = Streamer(model.rnn, x.shape[1], backend="torch")
        outs = [model.head(streamer.step(x[t])).squeeze(-1) for t in range(x.shape[0])]
    elif isinstance(model, TCN):
        outs = [model.step(x[: t + 1]) for t in range(x.shape[0])]
    else:
        assert isinstance(model, Transformer)
        caches = model.prefill(x[:1])
        outs = [model(x[:1])[0]] + [model.step(x[t], caches) for t in range(1, x.shape[0])]
    return float((torch.stack(outs) - full).abs().max())


@torch.no_grad()
def per_token_ms(model: nn.Module, n: int, repeats: int, gen: torch.Generator) -> float:
    """Median milliseconds to produce token ``n + 1`` of one stream, given the first ``n``."""
    model.eval()
    x = torch.rand(n + repeats, 1, FEATURES, generator=gen)
    times = []
    if isinstance(model, LSTMModel):
        streamer = Streamer(model.rnn, 1)
        for t in range(n):
            streamer.step(x[t])
        for t in range(n, n + repeats):
            start = time.perf_counter()
            model.head(streamer.step(x[t]))
            times.append(time.perf_counter() - start)
    elif isinstance(model, TCN):
        for t in range(n, n + repeats):
            start = time.perf_counter()
            model.step(x[max(0, t + 1 - model.receptive_field) : t + 1])
            times.append(time.perf_counter() - start)
    else:
        assert isinstance(model, Transformer)
        caches = model.prefill(x[:n])
        for t in range(n, n + repeats):
            start = time.perf_counter()
            model.step(x[t], caches)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = make_parser(NAME, __doc__.split("\n\n")[0])
    args = parser.parse_args(argv)
    q = args.quick
    settings: dict[str, Any] = {
        "T": 20 if q else 200,
        "lstm_hidden": 24 if q else 64,
        "tcn": {"channels": 12, "levels": 3} if q else {"channels": 22, "levels": 6},
        "transformer": {"d": 16, "layers": 1, "heads": 2}
        if q
        else {"d": 24, "layers": 2, "heads": 4},
        "steps": 200 if q else 3000,
        "batch": 32 if q else 64,
        "lr": 1e-2 if q else 1e-3,
        "positions": [16, 64, 256] if q else [64, 256, 1024, 4096, 16384],
        "repeats": 5 if q else 30,
    }
    exp = Experiment(NAME, args, settings)
    T = settings["T"]
    max_len = max(settings["positions"]) + settings["repeats"] + 1
    builders: dict[str, Callable[[], LSTMModel | TCN | Transformer]] = {
        "LSTM": lambda: LSTMModel(settings["lstm_hidden"]),
        "TCN": lambda: TCN(**settings["tcn"]),
        "Transformer": lambda: Transformer(**settings["transformer"], max_len=max(max_len, T)),
    }
    test = adding_problem(1000, T, generator=exp.generator(10_000 + T))
    check = torch.rand(12, 3, FEATURES, generator=exp.generator(5))
    results: dict[str, Any] = {"baseline_mse": ADDING_BASELINE_MSE}
    curves = {}
    for index, (name, build) in enumerate(builders.items()):
        torch.manual_seed(exp.seed + index)
        model = build()
        curve, seconds = train(
            model,
            last_step_loss,
            adding_batches(settings["batch"], T, exp.generator(1)),
            steps=settings["steps"],
            lr=settings["lr"],
            record_every=max(settings["steps"] // 50, 1),
        )
        model.eval()
        with torch.no_grad():
            mse = float(F.mse_loss(model(test[0])[-1], test[1]))
        curves[name] = curve
        results[name] = {
            "parameters": count_parameters(model),
            "test_mse": mse,
            "train_s": round(seconds, 1),
            "incremental_max_abs_diff": incremental_matches(model, check),
            "per_token_ms": {
                str(n): round(per_token_ms(model, n, settings["repeats"], exp.generator(n)), 4)
                for n in settings["positions"]
            },
            "state_floats": {str(n): model.state_numel(n) for n in settings["positions"]},
        }
        if isinstance(model, TCN):
            results[name]["receptive_field"] = model.receptive_field
    _plot(exp, results, curves, settings["positions"])
    return exp.finish(results)


def _plot(
    exp: Experiment,
    results: dict[str, Any],
    curves: dict[str, list[tuple[int, float]]],
    positions: list[int],
) -> None:
    fig = new_figure(12.0, 3.4)
    left, middle, right = fig.subplots(1, 3)
    for name, curve in curves.items():
        label = f"{name} ({results[name]['parameters']} parameters)"
        left.plot([s for s, _ in curve], [v for _, v in curve], label=label)
        middle.plot(positions, [results[name]["per_token_ms"][str(n)] for n in positions],
                    marker="o", label=name)  # fmt: skip
        right.plot(positions, [results[name]["state_floats"][str(n)] for n in positions],
                   marker="o", label=name)  # fmt: skip
    left.axhline(ADDING_BASELINE_MSE, color="k", linestyle="--", label="memoryless")
    left.set_yscale("log")
    left.set_xlabel("Adam step")
    left.set_ylabel("train MSE")
    left.legend(fontsize=7)
    for ax, label in ((middle, "ms for one more token"), (right, "floats kept per stream")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens already seen (n)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    exp.save_figure(fig, "lstm_tcn_transformer.png")


if __name__ == "__main__":
    main(sys.argv[1:])
