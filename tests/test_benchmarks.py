"""The benchmark harness (``benchmarks/``) runs end to end and writes well-formed results.

``python -m benchmarks.run --quick`` on tiny shapes into a temporary directory; the JSON and
Markdown outputs are checked for their structure. Nothing is asserted about timings: those
belong to ``make bench`` on a quiet machine (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
STATUSES = {"ok", "not available", "error"}
RESULT_KEYS = {
    "row",
    "shape",
    "dims",
    "mode",
    "impl",
    "label",
    "status",
    "note",
    "baseline",
    "ratio",
    "efficiency",
    "targets",
    "requested",
}
TIMED_KEYS = {"median_ms", "min_ms", "max_ms", "samples_ms", "repeats", "gflop", "gflops"}


@pytest.fixture(autouse=True)
def _repo_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))


def test_quick_run(tmp_path: Path) -> None:
    """One quick run (a few seconds), checked by the helpers below; a single test so that
    ``pytest -n 2`` does not run it once per worker."""
    doc, md = _quick_run(tmp_path)
    _check_files(tmp_path)
    _check_json(doc)
    _check_targets(doc)
    _check_markdown(doc, md)


def _quick_run(out: Path) -> tuple[dict[str, Any], str]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--quick",
        "--shapes",
        "C1",
        "--impls",
        "auto,onnxruntime,streaming",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "C1 lstm fwd auto" in proc.stderr  # one progress line per measurement
    doc = json.loads((out / "latest_quick.json").read_text())
    md = (out / "latest_quick.md").read_text()
    return doc, md


def _check_files(out: Path) -> None:
    names = sorted(p.name for p in out.iterdir())
    assert {"latest_quick.json", "latest_quick.md"} <= set(names)
    assert "latest.json" not in names  # a quick run never replaces a real run's results
    dated = [n for n in names if n.endswith("_quick.json") and n[:4].isdigit()]
    assert len(dated) == 1
    assert dated[0].replace(".json", ".md") in names


def _check_json(doc: dict[str, Any]) -> None:
    assert doc["schema"] == 1 and doc["quick"] is True
    for key in ("cpu", "logical_cpus", "torch", "torch_threads", "threads_requested"):
        assert key in doc["machine"]
    assert doc["machine"]["torch_threads"] == 1
    assert doc["config"]["shapes"] == {"C1": {"T": 6, "B": 4, "I": 16, "H": 16}}
    assert "fwd+bwd" in doc["flop_formulas"] and doc["memory_method"]

    from benchmarks.cases import ALL_ROWS

    results = doc["results"]
    assert {r["row"] for r in results} == set(ALL_ROWS)
    for r in results:
        assert set(r) >= RESULT_KEYS, r
        assert r["status"] in STATUSES
        assert r["status"] != "error", r  # an error is a bug in the harness or the library
        assert r["mode"] in ("fwd", "fwd+bwd")
        if r["status"] == "ok":
            assert set(r) >= TIMED_KEYS
            assert r["repeats"] == len(r["samples_ms"]) == 3
            assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
            assert r["gflop"] > 0 and math.isfinite(r["gflops"])
            assert r["peak_mib"] is None or r["peak_mib"] >= 0
        base = r["baseline"]
        if r["status"] == "ok" and base is not None and base["status"] == "ok":
            # paired: the baseline was timed in alternation with this measurement, as often
            assert base["paired"] is True
            paired = r["paired_baseline_samples_ms"]
            assert len(paired) == r["repeats"]
            # (the samples are stored rounded to 1 ns)
            assert base["median_ms"] == pytest.approx(statistics.median(paired), abs=1e-6)
            assert r["ratio"] == pytest.approx(r["median_ms"] / base["median_ms"])
        for ev in r["targets"]:
            assert isinstance(ev["met"], bool) and ev["needs"]
    impls = {r["impl"] for r in results}
    assert {"torch", "auto", "onnxruntime", "streaming", "torch.mm"} <= impls
    assert "reference" not in impls  # --impls is honoured; baselines (torch) always run
    stream = [r for r in results if r["impl"] == "streaming"]
    assert stream and all(r["status"] in ("ok", "not available") for r in stream)
    plain = next(r for r in results if (r["row"], r["mode"], r["impl"]) == ("lstm", "fwd", "auto"))
    assert plain["baseline"]["label"] == "nn.LSTM" and plain["efficiency"] is not None


def _check_targets(doc: dict[str, Any]) -> None:
    from benchmarks.targets import TARGETS

    summary = {t["id"]: t for t in doc["targets"]}
    assert set(summary) == {t.id for t in TARGETS}
    for t in summary.values():
        assert t["evaluated"] == len(t["evaluations"])
        assert t["met"] is None or t["met"] == all(e["met"] for e in t["evaluations"])
    assert summary["plain"]["evaluated"] == 2  # auto, fwd and fwd+bwd at C1
    assert summary["variants"]["evaluated"] == 0  # C2 and C3 only
    assert summary["efficiency"]["evaluated"] == 1
    assert summary["stream-cell"]["evaluated"] == 1


def _check_markdown(doc: dict[str, Any], md: str) -> None:
    assert "Quick run" in md
    assert "## Targets" in md and "## C1:" in md and "## S128:" in md
    header = next(line for line in md.splitlines() if line.startswith("| row |"))
    assert "| target | met? |" in header
    table_rows = [line for line in md.splitlines() if line.startswith("| ") and " | " in line]
    for r in doc["results"]:
        prefix = f"| {r['row']} | {r['mode']} | {r['label'] or r['impl']} |"
        assert any(line.startswith(prefix) for line in table_rows), prefix
    for t in doc["targets"]:
        assert t["text"] in md


def test_default_plan_and_flops() -> None:
    from benchmarks.cases import (
        ROWS_BY_NAME,
        SHAPES,
        Spec,
        baseline_of,
        forward_flops,
        lstm_flops,
        plan,
    )

    rows = ["lstm", "lstm-peephole", "gru"]
    specs = [s for s, _ in plan(list(SHAPES), rows, None, explicit_shapes=False)]
    assert {s.shape for s in specs if s.row == "lstm-peephole"} == {"C2", "C3", "C4"}
    assert {s.shape for s in specs if s.row == "lstm" and s.impl == "reference"} == set(SHAPES)
    assert {s.shape for s in specs if s.row == "gru" and s.impl == "reference"} == {
        "C2",
        "C3",
        "C4",
    }
    assert {s.shape for s in specs if s.row == "gru" and s.impl == "fused"} == set(SHAPES)
    everything = [s for s, _ in plan(["C1"], rows, None, explicit_shapes=True)]
    assert Spec("lstm-peephole", "C1", "fwd+bwd", "reference") in everything
    assert Spec("gemm-ceiling", "C1", "fwd+bwd", "torch.mm") in specs
    # every baseline is measured before what is compared with it
    index = {s: i for i, s in enumerate(specs)}
    for s in specs:
        base = baseline_of(s)
        assert base is None or index[base] < index[s]
    assert baseline_of(Spec("lstm-peephole", "C2", "fwd", "fused")) == Spec(
        "lstm", "C2", "fwd", "torch"
    )

    c1 = SHAPES["C1"]
    forward = 2 * c1.T * c1.B * 4 * c1.H * (c1.I + c1.H)
    assert lstm_flops(c1, "fwd") == forward and lstm_flops(c1, "fwd+bwd") == 3 * forward
    two = forward_flops(ROWS_BY_NAME["lstm-2layer"], c1, c1.T * c1.B)
    assert two == forward + 2 * c1.T * c1.B * 4 * c1.H * (c1.H + c1.H)
    cifg = forward_flops(ROWS_BY_NAME["lstm-cifg"], c1, c1.T * c1.B)
    assert cifg == forward * 3 // 4


def test_bad_arguments_are_refused() -> None:
    from benchmarks.run import main

    for argv in (["--shapes", "C9"], ["--filter", "nothing"], ["--impls", "cuda"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2


def test_streaming_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.streaming import make_streaming_step

    import lstmkit

    layer = lstmkit.LSTM(3, 4).eval()
    x = torch.randn(1, 3)
    monkeypatch.setitem(sys.modules, "lstmkit.streaming", None)  # import fails
    with pytest.raises(LookupError, match="not available"):
        make_streaming_step(layer, x)

    calls: list[Any] = []

    def step(module: Any, inp: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        calls.append(state)
        return inp, (len(calls),)

    fake = types.ModuleType("lstmkit.streaming")
    fake.step = step  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lstmkit.streaming", fake)
    fn, how = make_streaming_step(layer, x)
    fn()
    assert "step(module, x, state)" in how and calls == [None, (1,)]  # the state is carried

    built: list[Any] = []

    class Stream:
        __module__ = "lstmkit.streaming"

        def __init__(self, module: Any) -> None:
            self.module, self.n = module, 0
            built.append(self)

        def step(self, inp: torch.Tensor) -> torch.Tensor:
            assert inp is x
            self.n += 1
            return inp

    fake2 = types.ModuleType("lstmkit.streaming")
    fake2.Stream = Stream  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lstmkit.streaming", fake2)
    fn, how = make_streaming_step(layer, x)
    assert how == "lstmkit.streaming.Stream(module).step(x)"
    # one object built on the layer, tried with one step; each call of fn steps that object
    assert len(built) == 1 and built[0].module is layer and built[0].n == 1
    fn()
    fn()
    assert built[0].n == 3


def test_buffer_cache_benchmark_runs_and_restores_the_cache(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fused = pytest.importorskip("lstmkit.backends.fused")
    if not fused.available():
        pytest.skip("the fused extension is not built")
    from benchmarks import buffer_cache

    monkeypatch.setattr(buffer_cache, "SHAPES", [("tiny", 40, 16, 4, 128)])
    rows = buffer_cache.run(threads=1, rounds=1)
    assert [(r["shape"], r["variant"]) for r in rows] == [("tiny", "plain"), ("tiny", "layer_norm")]
    for r in rows:
        assert r["off_ms"] > 0 and r["on_ms"] > 0  # type: ignore[operator]
        assert r["ratio"] == pytest.approx(r["on_ms"] / r["off_ms"])  # type: ignore[operator]
    assert fused.set_buffer_cache(True) is True  # left on
    assert "on/off" in capsys.readouterr().out


def test_paired_timing_alternates_with_the_baseline() -> None:
    """With a partner, each round samples both, the order swapped every round, so that a
    change of load on the machine falls on both sides of the ratio alike."""
    from benchmarks.timing import TimerConfig, measure

    calls: list[str] = []
    cfg = TimerConfig(
        warmup_s=0.0, min_repeats=4, max_repeats=4, min_time_s=0.0, sample_s=0.0, memory=False
    )
    timing = measure(lambda: calls.append("a"), cfg, lambda: calls.append("b"))
    # one warm-up call each, then rounds a b, b a, a b, b a
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert len(timing.samples_ms) == len(timing.partner_ms) == 4
    alone = measure(lambda: calls.append("c"), cfg)
    assert alone.partner_ms == [] and len(alone.samples_ms) == 4


def test_a_slow_first_call_is_the_whole_warm_up() -> None:
    """A first call longer than twice the warm-up time is warm-up enough, for the measurement
    and for its partner alike: no further call before sampling (C5 calls take over a second)."""
    import time

    from benchmarks.timing import TimerConfig, measure

    calls: list[str] = []

    def slow(tag: str) -> None:
        calls.append(tag)
        time.sleep(0.03)

    cfg = TimerConfig(warmup_s=0.01, min_repeats=2, max_repeats=2, min_time_s=0.0, memory=False)
    timing = measure(lambda: slow("a"), cfg, lambda: slow("b"))
    assert timing.warmup == 1
    assert calls == ["a", "b", "a", "b", "b", "a"]
