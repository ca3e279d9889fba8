"""Run lstmkit's benchmark suite in one process and write JSON and Markdown results.

    python -m benchmarks.run                       # the full suite (make bench)
    python -m benchmarks.run --quick --out /tmp/b  # tiny shapes, a smoke test of the harness
    python -m benchmarks.run --filter lstm-peephole,gru --shapes C2,C3
    python -m benchmarks.run --list                # print the planned measurements only

One progress line per measurement goes to stderr. See docs/benchmarks.md for what each row,
column and target means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from . import report, targets
from .builders import NotAvailable, Prepared, build
from .cases import (
    ALL_IMPLS,
    ALL_ROWS,
    BF16_ROW,
    CEILING_ROW,
    QUICK_SHAPES,
    QUICK_STREAM_SHAPES,
    ROWS_BY_NAME,
    SHAPES,
    STREAM_ROWS,
    STREAM_SHAPES,
    Shape,
    Spec,
    baseline_of,
    forward_flops,
    lstm_flops,
    matches,
    mode_factor,
    plan,
    stream_flops,
)
from .timing import TimerConfig, measure

DEFAULT_OUT = Path(__file__).resolve().parent / "results"

FLOP_FORMULAS = {
    "layer forward": "sum over layers l and directions of 2*S*G*H*(I_l + R) + 2*S*H*P; S = T*B "
    "(sum of lengths for lstm-packed), G = 4 (LSTM), 3 (CIFG, GRU), 1 (RNN), R = P if proj_size "
    "P > 0 else H, I_1 = I and I_l = D*R after; pointwise work not counted",
    "fwd+bwd": "3 x forward (each forward GEMM has two backward GEMMs of its size)",
    "stream-step": "2*B*4H*(I + H) per step, B = 1",
    "gemm-ceiling and lstm-bf16": "those of the plain LSTM at the same shape",
    "lstm-int8 and stream-step-int8": "those of lstm and stream-step (the same products, "
    "with int8 weights)",
}
MEMORY_METHOD = (
    "peak of the bytes allocated through torch's CPU allocator during one call (the first "
    "warm-up call, run under torch.profiler with profile_memory=True), above what was "
    "allocated when the call began; allocations outside torch's allocator (onnxruntime, "
    "oneDNN or BLAS scratch, Python objects) are not seen"
)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Time lstmkit's layers against torch.nn, onnxruntime and the GEMM ceiling.",
    )
    p.add_argument("--quick", action="store_true", help="tiny shapes and 3 samples (CI smoke)")
    p.add_argument(
        "--filter",
        type=_csv,
        default=None,
        help=f"comma-separated row names or globs (e.g. 'lstm*,gru'); rows: {', '.join(ALL_ROWS)}",
    )
    p.add_argument(
        "--shapes",
        type=_csv,
        default=None,
        help=f"comma-separated of {', '.join(SHAPES)}; every selected row runs at each of them "
        "(default: every shape, the variant rows at C2-C4 only)",
    )
    p.add_argument(
        "--impls",
        type=_csv,
        default=None,
        help=f"only these implementations (baselines are always measured): {', '.join(ALL_IMPLS)}",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    d = TimerConfig()
    p.add_argument("--warmup", type=float, default=None, help=f"warm-up seconds ({d.warmup_s})")
    p.add_argument("--repeats", type=int, default=None, help=f"minimum samples ({d.min_repeats})")
    p.add_argument(
        "--max-repeats", type=int, default=None, help=f"maximum samples ({d.max_repeats})"
    )
    p.add_argument(
        "--min-time", type=float, default=None, help=f"minimum sampling seconds ({d.min_time_s})"
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probe")
    p.add_argument(
        "--unpaired",
        action="store_true",
        help="compare with the baseline's own measurement instead of timing the baseline in "
        "alternation with every measurement (half the run time, at the mercy of load changes)",
    )
    p.add_argument("--list", action="store_true", help="print the plan and exit")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    unknown = [s for s in args.shapes or [] if s not in SHAPES]
    if unknown:
        p.error(f"unknown shape(s) {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    unknown = [i for i in args.impls or [] if i not in ALL_IMPLS]
    if unknown:
        p.error(f"unknown impl(s) {', '.join(unknown)}; choose from {', '.join(ALL_IMPLS)}")
    if args.filter is not None and not any(matches(r, args.filter) for r in ALL_ROWS):
        p.error(f"--filter {','.join(args.filter)} selects no row; rows: {', '.join(ALL_ROWS)}")
    return args


def timer_config(args: argparse.Namespace) -> TimerConfig:
    base = (
        TimerConfig(warmup_s=0.0, min_repeats=3, max_repeats=3, min_time_s=0.0, sample_s=0.0)
        if args.quick
        else TimerConfig()
    )
    return TimerConfig(
        warmup_s=base.warmup_s if args.warmup is None else args.warmup,
        min_repeats=base.min_repeats if args.repeats is None else max(1, args.repeats),
        max_repeats=max(
            base.max_repeats if args.max_repeats is None else args.max_repeats,
            base.min_repeats if args.repeats is None else args.repeats,
        ),
        min_time_s=base.min_time_s if args.min_time is None else args.min_time,
        sample_s=base.sample_s,
        memory=not args.no_memory,
    )


def _shape_of(spec: Spec, quick: bool) -> Shape:
    if spec.row in STREAM_ROWS:
        return (QUICK_STREAM_SHAPES if quick else STREAM_SHAPES)[spec.shape]
    return (QUICK_SHAPES if quick else SHAPES)[spec.shape]


def _warning_note(caught: list[warnings.WarningMessage]) -> str:
    seen: list[str] = []
    for w in caught:
        text = f"{w.category.__name__}: {str(w.message).splitlines()[0]}"[:200]
        if text not in seen:
            seen.append(text)
    return "; ".join(seen)


def _flops(spec: Spec, shape: Shape, steps: int | None) -> float:
    if spec.row in STREAM_ROWS:
        return stream_flops(shape)
    if spec.row in ROWS_BY_NAME:
        n = shape.T * shape.B if steps is None else steps
        return mode_factor(spec.mode) * forward_flops(ROWS_BY_NAME[spec.row], shape, n)
    return lstm_flops(shape, spec.mode)


def _not_available(err: BaseException) -> bool:
    if isinstance(err, (NotAvailable, ImportError)):
        return True
    return isinstance(err, ValueError) and "does not support" in str(err)


def run_one(
    spec: Spec,
    shape: Shape,
    threads: int,
    cfg: TimerConfig,
    base: tuple[Spec, Shape] | None = None,
) -> dict[str, Any]:
    """Build and time one measurement, in alternation with its baseline ``base`` where given
    (paired timing, see timing.py); never raises (failures become the result's status; a
    baseline that cannot be built leaves the measurement unpaired)."""
    result: dict[str, Any] = {
        "row": spec.row,
        "shape": spec.shape,
        "dims": shape.dims(),
        "mode": spec.mode,
        "impl": spec.impl,
        "label": "",
        "status": "ok",
        "note": "",
    }
    prepared: Prepared | None = None
    partner: Prepared | None = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            prepared = build(spec, shape, threads)
            result["label"] = prepared.label
            result["note"] = prepared.note
            if base is not None:
                try:
                    partner = build(*base, threads)
                except Exception:  # reported by the baseline's own measurement
                    partner = None
            timing = measure(
                prepared.fn,
                cfg if prepared.memory else _no_memory(cfg),
                None if partner is None else partner.fn,
            )
        except Exception as err:
            result["status"] = "not available" if _not_available(err) else "error"
            message = str(err).splitlines()[0] if str(err) else ""
            result["note"] = f"{type(err).__name__}: {message}"[:300]
            return result
        finally:
            del prepared, partner
    if caught:
        result["warnings"] = _warning_note(caught)
    steps = None
    if spec.row in ROWS_BY_NAME and ROWS_BY_NAME[spec.row].packed:
        from .builders import random_lengths

        steps = int(random_lengths(shape).sum())
    gflop = _flops(spec, shape, steps) / 1e9
    result.update(
        median_ms=timing.median_ms,
        min_ms=timing.min_ms,
        max_ms=timing.max_ms,
        samples_ms=[round(s, 6) for s in timing.samples_ms],
        repeats=len(timing.samples_ms),
        inner=timing.inner,
        warmup=timing.warmup,
        gflop=gflop,
        gflops=gflop / (timing.median_ms / 1e3),
        peak_mib=None if timing.peak_bytes is None else timing.peak_bytes / 2**20,
    )
    if timing.partner_ms:
        result["paired_baseline_ms"] = statistics.median(timing.partner_ms)
        result["paired_baseline_samples_ms"] = [round(s, 6) for s in timing.partner_ms]
    if timing.memory_note and "memory" not in result["note"]:
        sep = "; " if result["note"] else ""
        result["note"] += f"{sep}memory {timing.memory_note}"
    return result


def _no_memory(cfg: TimerConfig) -> TimerConfig:
    return TimerConfig(
        cfg.warmup_s, cfg.min_repeats, cfg.max_repeats, cfg.min_time_s, cfg.sample_s, False
    )


def _progress(
    i: int, n: int, t0: float, result: dict[str, Any], base: dict[str, Any] | None
) -> None:
    elapsed = time.perf_counter() - t0
    head = f"[{i:>3}/{n} {int(elapsed) // 60:>2}m{int(elapsed) % 60:02d}s]"
    what = f"{result['shape']} {result['row']} {result['mode']} {result['impl']}"
    if result["status"] != "ok":
        tail = f"{result['status']}: {result['note']}"
    else:
        tail = f"{result['median_ms']:10.3f} ms ({result['min_ms']:.3f}–{result['max_ms']:.3f})"
        if base and base.get("status") == "ok":
            label = base["label"] + (" float32" if result["row"] == BF16_ROW else "")
            base_ms = result.get("paired_baseline_ms") or base["median_ms"]
            ratio = report.ratio_text(result["median_ms"] / base_ms)
            paired = " (paired)" if result.get("paired_baseline_ms") else ""
            tail += f"  x{ratio} vs {label}{paired}"
    print(f"{head} {what:<42} {tail}", file=sys.stderr, flush=True)


def _derive(results: list[dict[str, Any]], by_spec: dict[Spec, dict[str, Any]]) -> None:
    """Fill ``baseline``, ``ratio`` and ``efficiency`` from results of the same run."""
    for r in results:
        spec = Spec(r["row"], r["shape"], r["mode"], r["impl"])
        base_spec = baseline_of(spec)
        base = by_spec.get(base_spec) if base_spec is not None else None
        r["baseline"] = None
        r["ratio"] = None
        r["efficiency"] = None
        if base is not None:
            label = base["label"] or base["impl"]
            if r["row"] == BF16_ROW:
                label += " float32"
            r["baseline"] = {
                "row": base["row"],
                "impl": base["impl"],
                "label": label,
                "median_ms": base.get("median_ms"),
                "status": base["status"],
            }
            if r["status"] == "ok" and r.get("paired_baseline_ms"):
                # the baseline timed in alternation with this measurement
                r["baseline"]["median_ms"] = r["paired_baseline_ms"]
                r["baseline"]["paired"] = True
                r["ratio"] = r["median_ms"] / r["paired_baseline_ms"]
            elif r["status"] == "ok" and base["status"] == "ok":
                r["ratio"] = r["median_ms"] / base["median_ms"]
        if r["row"] == "lstm" and r["status"] == "ok":
            ceiling = by_spec.get(Spec(CEILING_ROW, r["shape"], r["mode"], "torch.mm"))
            if ceiling is not None and ceiling["status"] == "ok":
                r["efficiency"] = ceiling["median_ms"] / r["median_ms"]
                r["ceiling_ms"] = ceiling["median_ms"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = [r for r in ALL_ROWS if args.filter is None or matches(r, args.filter)]
    shapes = args.shapes or list(SHAPES)
    measurements = plan(shapes, rows, args.impls, explicit_shapes=args.shapes is not None)
    notes = []
    if "lstm-bf16" in rows and "C1" not in shapes:
        notes.append("lstm-bf16 is measured at C1 only, and C1 was not selected")
    if args.list:
        for spec, requested in measurements:
            flag = "" if requested else "  (needed by a requested row)"
            print(f"{spec.describe()}{flag}")
        print(f"{len(measurements)} measurements", file=sys.stderr)
        return 0

    torch.set_num_threads(args.threads)
    cfg = timer_config(args)
    started = dt.datetime.now().astimezone()
    load_start = report.load_average()
    t0 = time.perf_counter()
    info = report.machine(args.threads)
    print(
        f"lstmkit benchmarks: {len(measurements)} measurements on {info['cpu']}, "
        f"torch {info['torch']}, {torch.get_num_threads()} threads"
        f"{' (quick)' if args.quick else ''}",
        file=sys.stderr,
        flush=True,
    )
    results: list[dict[str, Any]] = []
    by_spec: dict[Spec, dict[str, Any]] = {}
    gc.collect()
    gc.freeze()  # what is alive now is never garbage: keep the per-measurement collections short
    for i, (spec, requested) in enumerate(measurements, 1):
        base_spec = baseline_of(spec)
        base = None
        if base_spec is not None and not args.unpaired:
            base = (base_spec, _shape_of(base_spec, args.quick))
        result = run_one(spec, _shape_of(spec, args.quick), args.threads, cfg, base)
        result["requested"] = requested
        results.append(result)
        by_spec[spec] = result
        _progress(i, len(measurements), t0, result, by_spec.get(base_spec) if base_spec else None)

    _derive(results, by_spec)
    summary = targets.evaluate(results)
    doc: dict[str, Any] = {
        "schema": 1,
        "quick": args.quick,
        "started": started.isoformat(timespec="seconds"),
        "elapsed_s": time.perf_counter() - t0,
        "command": shlex.join(
            ["python", "-m", "benchmarks.run", *(sys.argv[1:] if argv is None else argv)]
        ),
        "config": {
            "threads": args.threads,
            "shapes": {n: (QUICK_SHAPES if args.quick else SHAPES)[n].dims() for n in shapes},
            "shapes_explicit": args.shapes is not None,
            "stream_shapes": {
                name: s.dims()
                for name, s in (QUICK_STREAM_SHAPES if args.quick else STREAM_SHAPES).items()
            },
            "rows": rows,
            "impls": args.impls,
            "warmup_s": cfg.warmup_s,
            "min_repeats": cfg.min_repeats,
            "max_repeats": cfg.max_repeats,
            "min_time_s": cfg.min_time_s,
            "memory": cfg.memory,
            "paired": not args.unpaired,
        },
        "machine": info,
        "load_start": load_start,
        "load_end": report.load_average(),
        "flop_formulas": FLOP_FORMULAS,
        "memory_method": MEMORY_METHOD,
        "notes": notes,
        "targets": summary,
        "results": results,
    }
    paths = report.write(doc, args.out, started)
    print(
        f"done in {doc['elapsed_s']:.0f} s; wrote {', '.join(str(p) for p in paths)}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
