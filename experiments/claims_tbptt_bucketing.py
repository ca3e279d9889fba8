"""Truncated BPTT window length vs perplexity and speed; bucketing vs random batching.

Two claims about how sequences are cut and batched, not about the cell:

* Truncated BPTT (Williams & Peng 1990; Sutskever 2013; Merity et al. 2018): the state is
  carried across windows, but the gradient stops at the window's start, so a window of k steps
  can only *learn* dependencies shorter than k; longer windows cost fewer optimizer steps per
  token. A character LM is trained with windows of several lengths on the same number of
  training characters (so short windows make more updates), with
  :class:`lstmkit.data.BPTTWindows` over :func:`lstmkit.data.batchify` streams, and scored on
  held-out text in bits per character, with its training throughput.
* Bucketing (e.g. Khomenko et al. 2016; every NMT toolkit): batching sequences of similar length
  cuts the padding a batch carries, and the time spent on it.
  :class:`lstmkit.data.BucketBatchSampler` with one bucket (random batching) and with many is
  compared by :func:`lstmkit.data.padding_fraction` and by the time of one epoch of an LSTM
  over the padded batches (with ``lengths``, so padded steps cost what the backend charges for
  them).

Corpus: Tiny Shakespeare and the PTB training sentences when the shared data folder has them
(full mode), else this repository's documentation (quick mode: its frozen copy,
``quick_corpus.txt``) and lengths drawn from a log-normal.

    python experiments/claims_tbptt_bucketing.py [--quick] [--out DIR]
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _common import CharLM, Experiment, data_root, encode_chars, lm_loss, make_parser, new_figure
from torch import Tensor

from lstmkit import LSTM
from lstmkit.data import BPTTWindows, BucketBatchSampler, batchify, padding_fraction
from lstmkit.train import detach_state

NAME = "claims_tbptt_bucketing"


def train_tbptt(
    model: CharLM, stream: Tensor, window: int, tokens: int, lr: float, seed: int
) -> tuple[int, float]:
    """Train on ``tokens`` characters of the batchified ``stream`` ``(N, B)`` in windows of
    ``window`` steps, state carried and detached between windows; return (updates, seconds)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    windows = BPTTWindows(stream, window, seed=seed)
    seen, updates, state = 0, 0, None
    model.train()
    start = time.perf_counter()
    while seen < tokens:
        for w in windows:
            logits, state = model(w.inputs, state)
            state = detach_state(state)
            loss = F.cross_entropy(logits.flatten(0, 1), w.targets.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            seen += w.targets.numel()
            updates += 1
            if seen >= tokens:
                break
        else:
            state = None  # a new pass over the stream starts from a fresh state
    return updates, time.perf_counter() - start


def sentence_lengths(quick: bool, n: int, gen: torch.Generator) -> tuple[np.ndarray, str]:
    """PTB training sentence lengths in words (+1 for the end of sentence) when available,
    else ``n`` draws from a log-normal with PTB's shape (median about 22 words)."""
    root = data_root()
    path = None if root is None else root / "ptb" / "ptb.train.txt"
    if not quick and path is not None and path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        lengths = np.array([len(line.split()) + 1 for line in lines if line.strip()])
        rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen)))
        return rng.choice(lengths, size=min(n, lengths.size), replace=False), str(path)
    draws = torch.exp(3.1 + 0.55 * torch.randn(n, generator=gen)).round().clamp(1, 120)
    return draws.to(torch.int64).numpy(), "log-normal(3.1, 0.55), clamped to [1, 120]"


def time_epoch(
    sampler: BucketBatchSampler, lengths: np.ndarray, hidden: int, seed: int
) -> tuple[float, int]:
    """Seconds of one forward + backward epoch of an LSTM over the sampler's padded batches
    (random inputs; the cost depends on shapes, not values) and the padded positions."""
    torch.manual_seed(seed)
    lstm = LSTM(hidden, hidden)
    padded = 0
    start = time.perf_counter()
    for batch in sampler:
        lens = torch.as_tensor(lengths[batch])
        x = torch.randn(int(lens.max()), len(batch), hidden)
        out, _ = lstm(x, lengths=lens)
        out.sum().backward()
        padded += x.shape[0] * x.shape[1]
    return time.perf_counter() - start, padded


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = make_parser(NAME, __doc__.split("\n\n")[0])
    args = parser.parse_args(argv)
    q = args.quick
    settings: dict[str, Any] = {
        "windows": [2, 8, 32] if q else [5, 10, 20, 50, 100, 200],
        "train_tokens": 10_000 if q else 2_000_000,
        "corpus_chars": 12_000 if q else None,
        "hidden": 32 if q else 256,
        "streams": 16 if q else 32,
        "lr": 5e-3 if q else 2e-3,
        "bucket_examples": 600 if q else 8000,
        "bucket_batch": 32,
        "buckets": [1, 10, 50],
        "bucket_hidden": 16 if q else 128,
    }
    exp = Experiment(NAME, args, settings)
    from _common import read_corpus

    text, source = read_corpus(prefer_real=not q, quick=q)
    if settings["corpus_chars"]:
        text = text[: settings["corpus_chars"]]
    ids, vocab = encode_chars(text)
    split = int(0.9 * ids.numel())
    stream = batchify(ids[:split], settings["streams"])
    results: dict[str, Any] = {"corpus": source, "characters": ids.numel(), "tbptt": {}}
    for window in settings["windows"]:
        torch.manual_seed(exp.seed)
        H = settings["hidden"]
        model = CharLM(len(vocab), LSTM(H, H), H)
        updates, seconds = train_tbptt(
            model, stream, window, settings["train_tokens"], settings["lr"], exp.seed
        )
        nats = lm_loss(model, ids[split:], 50)
        results["tbptt"][str(window)] = {
            "val_bpc": nats / math.log(2),
            "updates": updates,
            "train_s": round(seconds, 2),
            "chars_per_s": round(settings["train_tokens"] / seconds),
        }

    lengths, length_source = sentence_lengths(q, settings["bucket_examples"], exp.generator(7))
    bucket: dict[str, Any] = {"lengths": length_source, "examples": int(lengths.size)}
    for buckets in settings["buckets"]:
        sampler = BucketBatchSampler(
            lengths, settings["bucket_batch"], num_buckets=buckets, seed=exp.seed
        )
        fraction = padding_fraction(list(sampler), lengths)
        seconds, padded = time_epoch(sampler, lengths, settings["bucket_hidden"], exp.seed)
        bucket[str(buckets)] = {
            "padding_fraction": fraction,
            "padded_positions": padded,
            "epoch_s": round(seconds, 3),
        }
    results["bucketing"] = bucket
    _plot(exp, results)
    return exp.finish(results)


def _plot(exp: Experiment, results: dict[str, Any]) -> None:
    fig = new_figure(12.0, 3.4)
    left, middle, right = fig.subplots(1, 3)
    tb = results["tbptt"]
    windows = [int(k) for k in tb]
    left.plot(windows, [tb[str(k)]["val_bpc"] for k in windows], marker="o")
    left.set_xlabel("BPTT window (steps)")
    left.set_ylabel("validation bits per character")
    left.set_title("same number of training characters")
    middle.plot(windows, [tb[str(k)]["chars_per_s"] for k in windows], marker="o", color="C1")
    middle.set_xlabel("BPTT window (steps)")
    for ax in (left, middle):
        ax.set_xscale("log")
        ax.set_xticks(windows, [str(k) for k in windows])
        ax.minorticks_off()
    middle.set_ylabel("training characters per second")
    bk = {k: v for k, v in results["bucketing"].items() if k.isdigit()}
    names = [f"{k} bucket{'s' if k != '1' else ''}" for k in bk]
    right.bar(names, [v["padding_fraction"] for v in bk.values()], color="C2")
    right.set_ylabel("padding fraction")
    for i, v in enumerate(bk.values()):
        right.annotate(
            f"{v['epoch_s']:.2f} s/epoch", (i, v["padding_fraction"]), ha="center", va="bottom"
        )
    right.set_ylim(0.0, 1.15 * max(v["padding_fraction"] for v in bk.values()))
    right.set_title("1 bucket = random batching")
    exp.save_figure(fig, "tbptt_bucketing.png")


if __name__ == "__main__":
    main(sys.argv[1:])
