"""What every ``claims_*.py`` experiment shares: the command line, the results file, figures,
a small training loop, and the text corpora.

Each experiment is a script (``python experiments/claims_x.py [--quick] [--out DIR]``) whose
``main(argv)`` returns the summary it prints, so that the test suite runs the ``--quick`` mode
in-process and checks the direction of the claim on the returned numbers.

Determinism: every script seeds torch with ``--seed`` before building a model, draws its data
from ``torch.Generator`` objects seeded from the same number, and runs with ``--threads``
intra-op threads (1 by default: the same command gives the same numbers, and the scripts do not
crowd a shared machine). Wall times are measured, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "runs" / "experiments"


# ------------------------------------------------------------------------------ command line
def make_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The arguments every experiment takes: ``--quick``, ``--out``, ``--seed``, ``--threads``."""
    parser = argparse.ArgumentParser(prog=f"experiments/{name}.py", description=description)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny settings that run in seconds (the test suite's smoke test of the claim)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"folder for the JSON results and PNG figures (default {DEFAULT_OUT}/<name>)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of models and data")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: reproducible)"
    )
    return parser


def add_models_option(parser: argparse.ArgumentParser, keys: Iterable[str], how: str) -> None:
    """``--models NAME ...``: the subset of an experiment's models to train (default all), so
    that a long full run can be made a piece at a time; ``how`` says how a model trained alone
    relates to the full run (the experiment must keep that promise: same seeds, same data)."""
    names = list(keys)
    parser.add_argument(
        "--models",
        nargs="+",
        choices=names,
        default=names,
        metavar="NAME",
        help=f"the models to train (default all: {' '.join(names)}); {how}",
    )


class Experiment:
    """One run of an experiment: sets threads and seed, times the run, saves figures and writes
    ``<out>/<name>.json`` plus the printed summary.

    The JSON holds the settings, the machine and the wall time next to the results, so that a
    number in docs/experiments.md can always be traced to the command that produced it.
    """

    def __init__(self, name: str, args: argparse.Namespace, settings: dict[str, Any]) -> None:
        if args.threads < 1:
            raise ValueError(f"--threads must be a positive int, got {args.threads}")
        if args.seed < 0:
            raise ValueError(f"--seed must be a non-negative int, got {args.seed}")
        self.name = name
        self.quick: bool = args.quick
        self.seed: int = args.seed
        self.out: Path = (args.out if args.out is not None else DEFAULT_OUT / name).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.figures: list[str] = []
        torch.set_num_threads(args.threads)
        self.threads = args.threads
        self._start = time.perf_counter()

    def generator(self, offset: int = 0) -> torch.Generator:
        """A data generator seeded with ``seed + offset`` (independent streams per purpose)."""
        return torch.Generator().manual_seed(self.seed + offset)

    def save_figure(self, fig: Figure, filename: str) -> None:
        fig.savefig(self.out / filename, dpi=110, bbox_inches="tight")
        self.figures.append(filename)

    def finish(self, results: dict[str, Any]) -> dict[str, Any]:
        """Write and print the summary; return it."""
        summary = {
            "experiment": self.name,
            "mode": "quick" if self.quick else "full",
            "seed": self.seed,
            "threads": self.threads,
            "machine": machine(),
            "settings": self.settings,
            "results": results,
            "figures": self.figures,
            "wall_s": round(time.perf_counter() - self._start, 2),
        }
        path = self.out / f"{self.name}.json"
        path.write_text(json.dumps(summary, indent=2, default=_jsonable) + "\n")
        print(json.dumps(summary, indent=2, default=_jsonable))
        print(f"results: {path}")
        return summary


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def machine() -> str:
    """The CPU model and core count, as the docs quote them."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}"


def new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas, without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def add_combine_option(parser: argparse.ArgumentParser) -> None:
    """``--combine DIR ...``: train nothing; merge the results of pieces made with ``--models``
    (each DIR holds one piece's ``<name>.json``) into one summary and one set of figures."""
    parser.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        default=None,
        metavar="DIR",
        help="train nothing: merge the JSON results of runs made with --models (one folder "
        "each) into one summary and figure written to --out",
    )


def combine_pieces(name: str, folders: Sequence[Path], model_keys: Iterable[str]) -> dict[str, Any]:
    """Merge the summaries ``<folder>/<name>.json`` of runs of one experiment made a piece at a
    time with ``--models``.

    The pieces must agree on everything but the models: the mode, the seed and every setting.
    Results shared by all pieces (the corpus, say) must be equal; a model found in two pieces
    must have the same results in both. Returns ``{"mode", "seed", "settings", "results",
    "pieces"}`` with the models in the experiment's order and, under ``pieces``, where each
    model came from, its machine, threads and wall time.
    """
    if not folders:
        raise ValueError("--combine needs at least one folder, got none")
    models = list(model_keys)
    summaries = []
    for folder in folders:
        path = Path(folder) / f"{name}.json"
        try:
            summary = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"--combine: {path} does not exist (no {name} run there)"
            ) from None
        except json.JSONDecodeError as err:
            raise ValueError(f"--combine: {path} is not valid JSON ({err})") from None
        if summary.get("experiment") != name:
            raise ValueError(
                f"--combine: {path} holds experiment {summary.get('experiment')!r}, "
                f"expected {name!r}"
            )
        summaries.append((path, summary))
    first_path, first = summaries[0]

    def protocol(summary: dict[str, Any]) -> dict[str, Any]:
        settings = {k: v for k, v in summary["settings"].items() if k != "models"}
        return {"mode": summary["mode"], "seed": summary["seed"], "settings": settings}

    expected = protocol(first)
    results: dict[str, Any] = {}
    pieces = []
    for path, summary in summaries:
        if protocol(summary) != expected:
            raise ValueError(
                f"--combine: {path} was run with {protocol(summary)}, but {first_path} with "
                f"{expected}; only runs that differ in --models can be combined"
            )
        for key, value in summary["results"].items():
            if key in results and results[key] != value:
                what = "model" if key in models else "result"
                raise ValueError(
                    f"--combine: {what} {key!r} differs between pieces ({path} has {value!r}, "
                    f"an earlier piece {results[key]!r})"
                )
            results[key] = value
        pieces.append(
            {
                "folder": str(path.parent),
                "models": summary["settings"]["models"],
                "machine": summary["machine"],
                "threads": summary["threads"],
                "wall_s": summary["wall_s"],
            }
        )
    found = {m for _, s in summaries for m in s["settings"]["models"]}
    settings = dict(first["settings"], models=[m for m in models if m in found])
    ordered = {k: v for k, v in results.items() if k not in models}
    ordered.update({m: results[m] for m in settings["models"]})
    return {
        "mode": first["mode"],
        "seed": first["seed"],
        "settings": settings,
        "results": ordered,
        "pieces": pieces,
    }


# ------------------------------------------------------------------------------ training
def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], Tensor],
    batches: Iterator[Any],
    *,
    steps: int,
    lr: float,
    clip: float = 1.0,
    record_every: int = 10,
    on_record: Callable[[int, float], None] | None = None,
) -> tuple[list[tuple[int, float]], float]:
    """Adam with gradient-norm clipping for ``steps`` batches.

    Returns the learning curve (the mean training loss of every ``record_every`` steps, against
    the step count) and the seconds spent. A plain loop rather than :func:`lstmkit.train.fit` on
    purpose: the experiments compare models under an identical, fixed budget of updates, and
    the loop is short enough to read next to the claim it checks.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    curve: list[tuple[int, float]] = []
    model.train()
    running, count = 0.0, 0
    start = time.perf_counter()
    for step in range(1, steps + 1):
        loss = loss_fn(model, next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        running += float(loss.detach())
        count += 1
        if step % record_every == 0 or step == steps:
            curve.append((step, running / count))
            if on_record is not None:
                on_record(step, running / count)
            running, count = 0.0, 0
    return curve, time.perf_counter() - start


def steps_to_reach(curve: Sequence[tuple[int, float]], threshold: float) -> int | None:
    """The first recorded step whose mean training loss is at or below ``threshold``."""
    for step, loss in curve:
        if loss <= threshold:
            return step
    return None


# ------------------------------------------------------------------------------ text
def data_root() -> Path | None:
    """``$LSTMKIT_DATA``, else ``../shared/data`` beside the repository when it exists."""
    env = os.environ.get("LSTMKIT_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    return root if root.is_dir() else None


#: the quick modes' corpus: the first 12,000 characters of this repository's README and docs
#: as they were on 2026-11-22, frozen so that editing the docs never changes what a quick-mode
#: test measures
QUICK_CORPUS = Path(__file__).resolve().parent / "quick_corpus.txt"


def read_corpus(prefer_real: bool, quick: bool = False) -> tuple[str, str]:
    """``(text, source)``: with ``quick``, the frozen :data:`QUICK_CORPUS`; else Tiny
    Shakespeare when ``prefer_real`` and the data folder has it, else the project's own
    documentation (``README.md`` and ``docs/*.md``), which every clone has, so that no run
    needs the shared data."""
    if quick:
        return QUICK_CORPUS.read_text(encoding="utf-8"), f"{QUICK_CORPUS.name} (frozen docs text)"
    root = data_root()
    if prefer_real and root is not None:
        path = root / "tinyshakespeare" / "input.txt"
        if path.is_file():
            return path.read_text(encoding="utf-8"), str(path)
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    text = "\n".join(f.read_text(encoding="utf-8") for f in files if f.is_file())
    if not text:
        raise FileNotFoundError(f"no corpus: neither Tiny Shakespeare nor {REPO / 'docs'} found")
    return text, "README.md + docs/*.md of this repository"


def encode_chars(text: str) -> tuple[Tensor, list[str]]:
    """Character ids (int64) and the sorted vocabulary."""
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    return torch.tensor([index[c] for c in text], dtype=torch.int64), vocab


class CharLM(nn.Module):
    """Embedding -> recurrent layer -> linear: a character language model over ``(T, B)`` ids.

    ``dropout`` is standard (Zaremba et al. 2014) dropout on the embedding and on the recurrent
    output, fresh at every step; the recurrent regularisers are options of ``rnn``.
    """

    def __init__(self, vocab: int, rnn: nn.Module, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.rnn = rnn
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        out, state = self.rnn(self.drop(self.embed(ids)), state)
        return self.head(self.drop(out)), state


def random_windows(
    data: Tensor, length: int, batch: int, generator: torch.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless ``(inputs, targets)`` pairs of ``(length, batch)`` windows at random offsets."""
    if data.numel() <= length + 1:
        raise ValueError(
            f"data has {data.numel()} tokens, needs more than length + 1 = {length + 1}"
        )
    while True:
        starts = torch.randint(0, data.numel() - length - 1, (batch,), generator=generator)
        idx = starts[None, :] + torch.arange(length)[:, None]
        yield data[idx], data[idx + 1]


@torch.no_grad()
def lm_loss(model: CharLM, data: Tensor, length: int, streams: int = 16) -> float:
    """Mean cross-entropy (nats per character) of ``model`` in eval mode over ``data``, read as
    ``streams`` contiguous streams with the state carried across windows of ``length``."""
    model.eval()
    n = data.numel() // streams
    grid = data[: n * streams].reshape(streams, n).t()
    total, count, state = 0.0, 0, None
    for i in range(0, n - 1, length):
        x, y = grid[i : min(i + length, n - 1)], grid[i + 1 : min(i + length, n - 1) + 1]
        logits, state = model(x, state)
        total += float(
            nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
        )
        count += y.numel()
    model.train()
    return total / count
