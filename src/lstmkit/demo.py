"""``lstmkit demo``: a few minutes of real training, written up as one self-contained HTML page.

The page (``index.html`` under ``--out``, default ``runs/demo``) has four sections, each filled
from numbers measured in this run, never from canned ones:

0. torch parity: a ``torch.nn.LSTM``'s weights loaded into ``lstmkit.LSTM`` give the same
   outputs and gradients;
1. why LSTM: a vanilla RNN, a GRU and an LSTM trained on the adding problem, their learning
   curves, and the per-step gradient norm ``||dL/dh_t||`` of the trained models
   (:func:`lstmkit.diagnostics.gradient_norms`): the RNN's gradient vanishes with distance, the
   LSTM's cell-state path keeps it;
2. a forecast of the monthly Mauna Loa CO2 series shipped with statsmodels, by a small
   :class:`~lstmkit.tasks.forecaster.Forecaster` and by the seasonal-naive and ARIMA baselines of
   :mod:`lstmkit.baselines`, each with an 80% interval, scored on the held-out last two years;
3. a character-level language model (:mod:`lstmkit.tasks.language_model`) trained for about a
   minute on ``--data`` (by default the project's own documentation), with samples drawn as it
   learns.

The figures are embedded in the page as base64 PNG (it opens offline) and also written beside
it. ``quick=True`` runs every section with tiny budgets (seconds), for the test suite: the
numbers are then meaningless but the page is complete.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import GRU, LSTM, RNN, _checks
from .data.synthetic import ADDING_BASELINE_MSE, adding_problem

Echo = Callable[[str], Any]


@dataclass(frozen=True)
class Budget:
    """How much each section trains. ``FULL`` is sized for about 3 to 4 minutes on 2 CPU cores;
    ``QUICK`` only checks that everything runs and the page is complete."""

    adding_T: int
    adding_steps: int
    adding_hidden: int
    forecast_epochs: int
    forecast_minutes: float
    arima_max_order: int
    lm_steps: int
    lm_minutes: float
    lm_hidden: int
    lm_max_chars: int
    sample_chars: int


FULL = Budget(
    adding_T=50,
    adding_steps=800,
    adding_hidden=64,
    forecast_epochs=200,
    forecast_minutes=1.0,
    arima_max_order=2,
    lm_steps=1200,
    lm_minutes=1.25,
    lm_hidden=256,
    lm_max_chars=400_000,
    sample_chars=240,
)
QUICK = Budget(
    adding_T=12,
    adding_steps=6,
    adding_hidden=8,
    forecast_epochs=1,
    forecast_minutes=0.2,
    arima_max_order=1,
    lm_steps=8,
    lm_minutes=0.2,
    lm_hidden=16,
    lm_max_chars=20_000,
    sample_chars=40,
)


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=True, dynamic_ncols=True)


def _png(fig: Any, path: Path) -> str:
    """Write ``fig`` to ``path`` and return it as base64 PNG for embedding."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    data = buffer.getvalue()
    path.write_bytes(data)
    return base64.b64encode(data).decode("ascii")


def _figure(width: float = 8.0, height: float = 3.5, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    axes = fig.subplots(1, ncols)
    return fig, axes


# ---------------------------------------------------------------------- 0. parity
def parity_with_torch(seed: int) -> dict[str, float]:
    """Load a torch.nn.LSTM's weights into lstmkit and compare outputs and gradients."""
    torch.manual_seed(seed)
    ref = nn.LSTM(16, 32, num_layers=2, bidirectional=True, proj_size=8)
    ours = LSTM.from_torch(ref)
    x = torch.randn(20, 4, 16)
    lengths = torch.tensor([20, 13, 7, 1])
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    y_ref, _ = nn.utils.rnn.pad_packed_sequence(ref(packed)[0])
    y_ours, _ = ours(x, lengths=lengths)
    y_ref.square().sum().backward()
    y_ours.square().sum().backward()
    grad_diff = max(
        (a.grad - b.grad).abs().max().item()
        for a, b in zip(ref.parameters(), ours.parameters(), strict=True)
    )
    return {"output": (y_ref - y_ours).abs().max().item(), "gradient": grad_diff}


# ---------------------------------------------------------------------- 1. adding problem
def train_adding(
    model: nn.Module,
    *,
    T: int,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[float, list[float], nn.Module]:
    """Train ``model`` (a recurrent layer with ``output_size``) and a linear head on the adding
    problem at length ``T``. Returns the test MSE on 1000 fresh sequences, the training MSE of
    every step, and the head."""
    torch.manual_seed(seed)
    head = nn.Linear(model.output_size, 1)  # type: ignore[arg-type]
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    data = torch.Generator().manual_seed(seed)
    curve = []
    for step in range(steps):
        x, y = adding_problem(batch, T, generator=data)
        out, _ = model(x)
        loss = F.mse_loss(head(out[-1]).squeeze(-1), y)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        curve.append(loss.item())
        if progress is not None:
            progress(step, curve[-1])
    model.eval()
    with torch.no_grad():
        x, y = adding_problem(1000, T, generator=torch.Generator().manual_seed(seed + 1))
        mse = F.mse_loss(head(model(x)[0][-1]).squeeze(-1), y).item()
    return mse, curve, head


def _smooth(values: list[float], window: int) -> np.ndarray:
    """Running mean over ``window`` steps (the per-batch loss is noisy)."""
    v = np.asarray(values, dtype=np.float64)
    window = max(1, min(window, len(v)))
    return np.convolve(v, np.ones(window) / window, mode="valid")


def adding_section(
    budget: Budget, seed: int, out: Path, show: bool
) -> tuple[dict[str, Any], dict[str, str]]:
    """Train RNN, GRU and LSTM on the adding problem; learning curves and gradient norms."""
    from . import diagnostics as dg

    T, H, steps = budget.adding_T, budget.adding_hidden, budget.adding_steps
    makers: dict[str, Callable[[], nn.Module]] = {
        "RNN": lambda: RNN(2, H),
        "GRU": lambda: GRU(2, H),
        "LSTM": lambda: LSTM(2, H),
    }
    results: dict[str, Any] = {"T": T, "steps": steps, "hidden": H, "batch": 64, "lr": 1e-2}
    curves: dict[str, list[float]] = {}
    norms: dict[str, Any] = {}
    probe, _ = adding_problem(32, T, generator=torch.Generator().manual_seed(seed + 2))
    for name, make in makers.items():
        torch.manual_seed(seed)
        model = make()
        start = time.perf_counter()
        with _bar(steps, f"1/3 adding T={T}: {name}", show) as bar:

            def tick(step: int, loss: float, bar: Any = bar) -> None:
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(mse=f"{loss:.4f}")

            mse, curve, _ = train_adding(
                model, T=T, steps=steps, batch=64, lr=1e-2, seed=seed, progress=tick
            )
        curves[name] = curve
        g = dg.gradient_norms(model, probe)
        norms[name] = g
        _, profile = g.profile()
        entry: dict[str, Any] = {
            "test_mse": mse,
            "seconds": time.perf_counter() - start,
            "grad_h_at_loss": float(profile[0]),
            "grad_h_at_10": float(profile[min(10, T - 1)]),
            "grad_h_at_start": float(profile[-1]),
        }
        if g.c is not None:
            _, cprofile = g.profile(state="c")
            entry["grad_c_at_start"] = float(cprofile[-1])
        results[name] = entry

    fig, ax = _figure()
    for name, curve in curves.items():
        ax.plot(_smooth(curve, 25), label=f"{name} (test MSE {results[name]['test_mse']:.4f})")
    ax.axhline(ADDING_BASELINE_MSE, color="grey", ls="--", lw=1, label="predict the mean (0.167)")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("training MSE (running mean of 25)")
    ax.set_title(f"Adding problem, T = {T}")
    ax.legend(fontsize="small")
    images = {"adding_curves": _png(fig, out / "adding_curves.png")}
    fig = dg.plot_gradient_norms(norms)
    fig.axes[0].set_title(f"||dL/dh_t|| of the trained models (adding, T = {T})")
    images["gradient_norms"] = _png(fig, out / "gradient_norms.png")
    return results, images


# ---------------------------------------------------------------------- 2. forecast
def load_co2() -> Any:
    """The Mauna Loa CO2 series shipped with statsmodels, as monthly means (its weekly values
    have gaps; months with no measurement are interpolated). A pandas Series."""
    import statsmodels.api as sm

    weekly = sm.datasets.co2.load_pandas().data["co2"]
    return weekly.resample("MS").mean().interpolate()


def _seasonal_naive_interval(
    y: np.ndarray, horizon: int, season: int, z: float
) -> tuple[np.ndarray, np.ndarray]:
    """The seasonal naive forecast's interval: residual sd of ``y_t - y_{t-season}`` grown with
    the number of seasons ahead, sqrt(floor((h - 1) / season) + 1) (Hyndman & Athanasopoulos,
    Forecasting: Principles and Practice, section 5.5)."""
    sigma = float(np.std(y[season:] - y[:-season], ddof=1))
    h = np.arange(1, horizon + 1)
    return sigma * z * np.sqrt((h - 1) // season + 1), sigma * np.ones(horizon)


def forecast_section(
    budget: Budget, seed: int, out: Path, show: bool
) -> tuple[dict[str, Any], dict[str, str]]:
    """LSTM forecaster vs seasonal naive vs ARIMA on the last two years of monthly CO2."""
    import pandas as pd

    from .baselines import ARIMA, SeasonalNaive
    from .data.series_io import read_long, split_last
    from .tasks.forecaster import Forecaster, score_forecasts

    horizon, season, z80 = 24, 12, 1.2815515655446004
    series = load_co2()
    frame = pd.DataFrame({"ds": series.index, "y": series.to_numpy()})
    data = read_long(frame, freq="MS")
    history, holdout = split_last(data, horizon)
    y = history.series[0].y
    actual = holdout.series[0].y[:horizon]
    results: dict[str, Any] = {
        "series": "statsmodels co2, monthly means (Mauna Loa, ppm)",
        "start": str(series.index[0].date()),
        "end": str(series.index[-1].date()),
        "train_months": len(y),
        "horizon": horizon,
    }
    forecasts: dict[str, dict[str, np.ndarray]] = {}

    with _bar(3, "2/3 forecast CO2", show) as bar:
        start = time.perf_counter()
        model = Forecaster(
            horizon=horizon,
            lookback=48,
            strategy="mimo",
            likelihood="gaussian",
            hidden_size=32,
            season=season,
            batch_size=32,
            max_epochs=budget.forecast_epochs,
            max_time=budget.forecast_minutes,
            lr=3e-3,
            seed=seed,
            progress=False,
            tensorboard=False,
        )
        model.fit(history)
        pred = model.predict(history)
        forecasts["LSTM forecaster"] = {
            "point": pred["y_hat"].to_numpy(),
            "lo": pred["q0.1"].to_numpy(),
            "hi": pred["q0.9"].to_numpy(),
        }
        lstm_seconds = time.perf_counter() - start
        bar.update(1)

        point = SeasonalNaive(horizon, season).fit(history).predict()["y_hat"].to_numpy()
        half, _ = _seasonal_naive_interval(y, horizon, season, z80)
        forecasts["seasonal naive"] = {"point": point, "lo": point - half, "hi": point + half}
        bar.update(1)

        k = budget.arima_max_order
        arima = ARIMA(horizon, season, max_p=k, max_q=k)
        order, fitted = arima.select(y)
        if fitted is None:
            raise RuntimeError(f"no ARIMA order up to ({k}, d, {k}) fits the CO2 series")
        prediction = fitted.get_forecast(horizon)
        bounds = np.asarray(prediction.conf_int(alpha=0.2))
        forecasts[f"ARIMA{order}"] = {
            "point": np.asarray(prediction.predicted_mean),
            "lo": bounds[:, 0],
            "hi": bounds[:, 1],
        }
        bar.update(1)

    results["lstm_seconds"] = lstm_seconds
    results["lstm_epochs"] = model.fit_result_.epochs if model.fit_result_ is not None else None
    results["models"] = {}
    for name, f in forecasts.items():
        scores = score_forecasts(history, holdout, f["point"][None], season)
        inside = (actual >= f["lo"]) & (actual <= f["hi"])
        results["models"][name] = {
            "rmse": scores["rmse"],
            "mae": scores["mae"],
            "mase": scores["mase"],
            "coverage_80": float(inside.mean()),
        }

    fig, ax = _figure(9.0, 4.0)
    hist_ds = history.series[0].ds
    ax.plot(hist_ds[-120:], y[-120:], color="black", lw=1, label="history")
    ax.plot(holdout.series[0].ds[:horizon], actual, color="black", lw=2, ls=":", label="held out")
    future = holdout.series[0].ds[:horizon]
    for (name, f), color in zip(
        forecasts.items(), ["tab:blue", "tab:orange", "tab:green"], strict=True
    ):
        ax.plot(future, f["point"], color=color, lw=1.5, label=name)
        ax.fill_between(future, f["lo"], f["hi"], color=color, alpha=0.15)
    ax.set_ylabel("CO2 (ppm)")
    ax.set_title("Monthly CO2 at Mauna Loa: the last 10 years and 24-month forecasts (80% bands)")
    ax.legend(fontsize="small", loc="upper left")
    return results, {"forecast": _png(fig, out / "forecast.png")}


# ---------------------------------------------------------------------- 3. language model
def project_docs() -> tuple[str, str]:
    """``(text, description)``: README.md and docs/*.md of the checkout lstmkit was installed
    from. An installed wheel has no docs; then the package's own Python sources (docstrings
    included) are the text, so the demo still trains on something of this project."""
    package = Path(__file__).resolve().parent
    root = package.parent.parent
    files = sorted((root / "docs").glob("*.md"))
    if (root / "README.md").is_file():
        files.insert(0, root / "README.md")
    if files:
        what = f"README.md and docs/*.md of {root} ({len(files)} files)"
    else:
        files = sorted(package.rglob("*.py"))
        what = f"the Python sources of the installed package {package} ({len(files)} files)"
    return "\n".join(f.read_text(encoding="utf-8") for f in files), what


def read_training_text(path: str | None) -> tuple[str, str]:
    """The language model's text: the file ``path`` (UTF-8), or :func:`project_docs`."""
    if path is None:
        return project_docs()
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--data {path}: no such file (expected a UTF-8 text file)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"--data {path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    if len(text.strip()) < 100:
        raise ValueError(
            f"--data {path}: has {len(text.strip())} characters of text; the language model "
            "needs at least 100"
        )
    return text, str(path)


def _detach(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, (list, tuple)):
        return type(state)(_detach(s) for s in state)
    return state


def _windows(data: torch.Tensor, bptt: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless TBPTT windows ``(inputs, targets)`` over the batchified streams ``data``."""
    while True:
        for i in range(0, data.shape[0] - 1, bptt):
            n = min(bptt, data.shape[0] - 1 - i)
            yield data[i : i + n], data[i + 1 : i + 1 + n]


def language_model_section(
    budget: Budget, seed: int, out: Path, show: bool, text: str, source: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """Train a character LSTM with TBPTT for a fixed number of steps (capped in time) and sample
    from it at increasing steps.

    ``lstmkit.train.fit`` has no per-step hook to sample from, so the loop is written here: the
    estimator supplies the vocabulary, the model, generation and evaluation; the loop is the
    plain TBPTT of :mod:`lstmkit.tasks.language_model` (state carried, detached per window)."""
    from .data.streams import batchify
    from .data.tokenizers import train_tokenizer
    from .tasks.language_model import LanguageModelEstimator, split_validation

    text = text[: budget.lm_max_chars]
    train_text, valid_text = split_validation(text, 0.1, path=source)
    valid_text = valid_text[:20_000]
    lm = LanguageModelEstimator(
        tokens="char",
        emb_size=32,
        hidden_size=budget.lm_hidden,
        num_layers=1,
        batch_size=32,
        bptt=64,
        eval_batch_size=10,
        seed=seed,
    )
    lm.tokenizer_ = train_tokenizer(train_text, "char")
    lm.tokenizer = lm.tokenizer_.to_dict()
    torch.manual_seed(seed)
    model = lm.build_model()
    data = batchify(lm.tokenizer_.encode_tensor(train_text), 32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = budget.lm_steps
    sample_at = sorted({max(1, steps // 8), max(1, steps // 4), max(1, steps // 2), steps})
    samples: list[dict[str, Any]] = []
    curve: list[float] = []
    state: Any = None
    start = time.perf_counter()
    deadline = start + 60.0 * budget.lm_minutes
    windows = _windows(data, lm.bptt)
    step = 0
    with _bar(steps, "3/3 char LM", show) as bar:
        while step < steps:
            model.train()
            x, y = next(windows)
            log_probs, state = model(x, _detach(state))
            loss = F.nll_loss(log_probs.reshape(-1, log_probs.shape[-1]), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            curve.append(loss.item())
            step += 1
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(bpc=f"{curve[-1] / math.log(2):.2f}")
            out_of_time = time.perf_counter() > deadline
            if step in sample_at or out_of_time:
                lm.model_ = model.eval()
                bpc = lm.evaluate(valid_text)["bpc"]
                sample = lm.generate(
                    "The ", max_new_tokens=budget.sample_chars, temperature=0.8, seed=seed
                )
                samples.append({"step": step, "valid_bpc": bpc, "text": "The " + sample})
            if out_of_time:
                break
    seconds = time.perf_counter() - start
    vocab = lm.tokenizer_.vocab_size
    results = {
        "source": source,
        "train_chars": len(train_text),
        "valid_chars": len(valid_text),
        "vocab": vocab,
        "uniform_bpc": math.log2(vocab),
        "hidden": budget.lm_hidden,
        "steps": step,
        "stopped_by_time": step < steps,
        "seconds": seconds,
        "samples": samples,
        "final_valid_bpc": samples[-1]["valid_bpc"],
    }
    fig, ax = _figure()
    ax.plot(np.arange(1, len(curve) + 1), np.asarray(curve) / math.log(2), lw=0.6, alpha=0.5)
    smooth = _smooth(curve, 10) / math.log(2)
    ax.plot(
        np.arange(len(curve) - len(smooth) + 1, len(curve) + 1),
        smooth,
        lw=1.5,
        label="training (running mean of 10)",
    )
    ax.plot(
        [s["step"] for s in samples],
        [s["valid_bpc"] for s in samples],
        "o-",
        color="tab:red",
        label="held-out text",
    )
    ax.axhline(math.log2(vocab), color="grey", ls="--", lw=1, label="uniform guess")
    ax.set_xlabel("training step (64 characters x 32 streams)")
    ax.set_ylabel("bits per character")
    ax.set_title("Character LSTM")
    ax.legend(fontsize="small")
    return results, {"lm_curve": _png(fig, out / "lm_curve.png")}


# ---------------------------------------------------------------------- the page
def _img(images: dict[str, str], key: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{images[key]}" alt="{html.escape(alt)}">'


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _norm(value: float) -> str:
    return "exactly 0 (it underflows float32)" if value == 0.0 else f"{value:.3g}"


def render_html(results: dict[str, Any], images: dict[str, str]) -> str:
    """The report: every sentence with a number takes it from ``results``."""
    p = results["parity"]
    a = results["adding"]
    f = results["forecast"]
    lm = results["language_model"]
    rnn, lstm = a["RNN"], a["LSTM"]
    best = min(f["models"], key=lambda k: f["models"][k]["rmse"])
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>lstmkit demo</title><style>",
        "body{font-family:sans-serif;max-width:980px;margin:2em auto;line-height:1.45}"
        "img{max-width:100%}table{border-collapse:collapse}td,th{border:1px solid #bbb;"
        "padding:2px 8px;text-align:right}pre{background:#f4f4f4;padding:6px;"
        "white-space:pre-wrap}",
        "</style></head><body>",
        "<h1>lstmkit demo</h1>",
        f"<p>Measured in this run (seed {results['seed']}, torch {html.escape(torch.__version__)},"
        f" {results['threads']} thread, {results['seconds']:.0f} s in all"
        f"{', quick mode: tiny budgets, the numbers mean nothing' if results['quick'] else ''}"
        ").</p>",
        "<h2 id='parity'>0. A drop-in for torch.nn</h2>",
        "<p>A 2-layer bidirectional <code>torch.nn.LSTM</code> with <code>proj_size</code>, its "
        "weights loaded into <code>lstmkit.LSTM.from_torch</code>, run on 4 sequences of lengths "
        f"20, 13, 7 and 1: the largest output difference is {p['output']:.1e} and the largest "
        f"gradient difference {p['gradient']:.1e} (float32 rounding).</p>",
        "<h2 id='adding'>1. Why LSTM: the adding problem</h2>",
        f"<p>Each sequence has T = {a['T']} steps of (random value, marker); the target is the "
        "sum of the two marked values, the first marker in the first half. Predicting the mean "
        f"gives MSE {ADDING_BASELINE_MSE:.3f}. Each model (hidden size {a['hidden']}) had "
        f"{a['steps']} Adam steps (learning rate {a['lr']:g}, gradients clipped at norm 1) on "
        f"batches of {a['batch']}.</p>",
        _table(
            ["model", "test MSE", "seconds", "||dL/dh|| at the loss", f"{a['T'] - 1} steps before"],
            [
                [
                    k,
                    f"{a[k]['test_mse']:.4f}",
                    f"{a[k]['seconds']:.0f}",
                    f"{a[k]['grad_h_at_loss']:.3g}",
                    f"{a[k]['grad_h_at_start']:.3g}",
                ]
                for k in ("RNN", "GRU", "LSTM")
            ],
        ),
        _img(images, "adding_curves", "learning curves"),
        "<p>The figure below is <code>lstmkit.diagnostics.gradient_norms</code> on the trained "
        "models: the norm of the gradient of the last step's output with respect to the hidden "
        "state h<sub>t</sub>, against the distance from the last step. "
        f"The RNN's gradient goes from {rnn['grad_h_at_loss']:.3g} at the loss to "
        f"{rnn['grad_h_at_10']:.3g} ten steps before and {_norm(rnn['grad_h_at_start'])} "
        f"{a['T'] - 1} steps before; the LSTM's from {lstm['grad_h_at_loss']:.3g} to "
        f"{lstm['grad_h_at_10']:.3g} and {_norm(lstm['grad_h_at_start'])}, and along its cell "
        f"state (dashed) it is {_norm(lstm['grad_c_at_start'])} at the first step: the "
        "cell-state path multiplies the gradient only by the forget gates.</p>",
        _img(images, "gradient_norms", "gradient norms"),
        "<h2 id='forecast'>2. Forecasting a real series</h2>",
        f"<p>{html.escape(f['series'])}, {f['start']} to {f['end']}. The last {f['horizon']} "
        f"months are held out; the models see the {f['train_months']} months before. The LSTM "
        "forecaster (<code>lstmkit.tasks.forecaster.Forecaster</code>: one LSTM layer of 32, "
        "lookback 48, all 24 months from its last state, Gaussian likelihood) trained "
        f"{f['lstm_epochs']} epochs in {f['lstm_seconds']:.0f} s. The baselines come from "
        "<code>lstmkit.baselines</code>: seasonal naive (the same month a year earlier) and "
        "ARIMA with its order chosen by KPSS tests and AIC. Bands are 80% intervals; "
        "coverage is the share of held-out months inside the band. "
        f"Lowest RMSE in this run: {html.escape(best)}.</p>",
        _table(
            ["model", "RMSE (ppm)", "MAE (ppm)", "MASE", "80% coverage"],
            [
                [
                    k,
                    f"{m['rmse']:.3f}",
                    f"{m['mae']:.3f}",
                    f"{m['mase']:.3f}",
                    f"{m['coverage_80']:.0%}",
                ]
                for k, m in f["models"].items()
            ],
        ),
        _img(images, "forecast", "CO2 forecasts"),
        "<h2 id='lm'>3. A character-level language model</h2>",
        f"<p>Trained on {html.escape(lm['source'])}: {lm['train_chars']} characters "
        f"({lm['vocab']} distinct), {lm['valid_chars']} held out. One LSTM layer of "
        f"{lm['hidden']}, {lm['steps']} steps of truncated BPTT in {lm['seconds']:.0f} s"
        f"{' (stopped by its time cap)' if lm['stopped_by_time'] else ''}. Held-out "
        f"bits per character: {lm['final_valid_bpc']:.2f} at the end, against "
        f"{lm['uniform_bpc']:.2f} for a uniform guess. Samples (temperature 0.8, the same "
        "seed each time) as it learns:</p>",
        _img(images, "lm_curve", "language model learning curve"),
    ]
    for s in lm["samples"]:
        parts.append(
            f"<h3>step {s['step']} (held-out {s['valid_bpc']:.2f} bits/char)</h3>"
            f"<pre>{html.escape(s['text'])}</pre>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def run(
    *,
    out: str | Path = "runs/demo",
    data: str | None = None,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
    echo: Echo = print,
) -> dict[str, Any]:
    """Run every section, write ``index.html``, the PNG figures and ``results.json`` under
    ``out``, and return the measured figures (``results['report']`` is the page's path)."""
    import json

    seed = _checks.positive_int("seed", seed, allow_zero=True)
    _checks.boolean("quick", quick)
    text, source = read_training_text(data)  # a bad --data fails before minutes of training
    budget = QUICK if quick else FULL
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # One thread for torch and for BLAS: the models are small, and on a machine shared with other
    # jobs (the 2-core target) a second thread that waits for a busy core stalls every operation
    # (measured here under load: one LM step took 3 s with 2 threads, 0.05 s with 1).
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover - without it BLAS keeps its own thread count
        threadpool_limits = None

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1) if threadpool_limits else contextlib.nullcontext():
            results: dict[str, Any] = {
                "seed": seed,
                "quick": quick,
                "threads": torch.get_num_threads(),
            }
            images: dict[str, str] = {}

            results["parity"] = parity_with_torch(seed)
            echo(
                f"0. torch parity: max |output diff| {results['parity']['output']:.1e}, "
                f"max |gradient diff| {results['parity']['gradient']:.1e}"
            )
            results["adding"], imgs = adding_section(budget, seed, directory, progress)
            images.update(imgs)
            echo(
                "1. adding problem test MSE: "
                + ", ".join(
                    f"{k} {results['adding'][k]['test_mse']:.4f}" for k in ("RNN", "GRU", "LSTM")
                )
            )
            results["forecast"], imgs = forecast_section(budget, seed, directory, progress)
            images.update(imgs)
            echo(
                "2. CO2 forecast RMSE: "
                + ", ".join(
                    f"{k} {m['rmse']:.3f}" for k, m in results["forecast"]["models"].items()
                )
            )
            results["language_model"], imgs = language_model_section(
                budget, seed, directory, progress, text, source
            )
            images.update(imgs)
            echo(f"3. char LM held-out bpc {results['language_model']['final_valid_bpc']:.2f}")
    finally:
        torch.set_num_threads(threads)
    results["seconds"] = time.perf_counter() - start
    report = directory / "index.html"
    report.write_text(render_html(results, images), encoding="utf-8")
    results["report"] = str(report)
    (directory / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results
