"""The machine description and the two outputs: JSON (everything) and Markdown (tables)."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

import lstmkit

REPO = Path(__file__).resolve().parent.parent


def _cpuinfo() -> tuple[str, int | None]:
    """CPU model name and physical core count from /proc/cpuinfo."""
    model = platform.processor() or platform.machine()
    cores: set[tuple[str, str]] = set()
    physical = core = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and value:
            model = value
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
        elif not key and (physical or core):
            cores.add((physical, core))
            physical = core = ""
    if physical or core:
        cores.add((physical, core))
    return model, len(cores) or None


def _meminfo_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _git() -> dict[str, Any]:
    if shutil.which("git") is None:
        return {}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": commit, "dirty": bool(dirty)}


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine(threads: int) -> dict[str, Any]:
    model, physical = _cpuinfo()
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    try:
        import onnxruntime

        ort_version: str | None = onnxruntime.__version__
    except ImportError:
        ort_version = None
    try:
        from lstmkit.backends import fused

        fused_built: bool | None = fused.available()
    except Exception:
        fused_built = None
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical,
        "usable_cpus": affinity,
        "memory_gib": _meminfo_gib(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "threads_requested": threads,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "onnxruntime": ort_version,
        "lstmkit": lstmkit.__version__,
        "fused_built": fused_built,
        "git": _git(),
    }


def slug(info: dict[str, Any]) -> str:
    cpu = re.sub(r"\((r|tm)\)|cpu|processor|@.*", "", str(info["cpu"]).lower())
    cpu = re.sub(r"[^a-z0-9]+", "-", cpu).strip("-") or "cpu"
    return f"{cpu}-{info['logical_cpus']}cpu"


# ------------------------------------------------------------------------------ markdown
def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 0.1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def ratio_text(value: float | None) -> str:
    """A ratio with two decimals, or three significant digits below 0.1."""
    if value is None:
        return "—"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3g}"


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _targets_cells(result: dict[str, Any]) -> tuple[str, str]:
    evs = result.get("targets") or []
    if not evs:
        return "", ""
    needs = "; ".join(e["needs"] for e in evs)
    met = "; ".join("yes" if e["met"] else "**no**" for e in evs)
    return needs, met


_HEADER = (
    "| row | mode | impl | median ms | min–max ms | GFLOP/s | baseline (ms) | ratio | eff. "
    "| peak MiB | target | met? | notes |\n"
    "|---|---|---|---:|---:|---:|---|---:|---:|---:|---|---|---|"
)


def _result_line(r: dict[str, Any]) -> str:
    needs, met = _targets_cells(r)
    if r["status"] == "ok":
        median = _ms(r["median_ms"])
        spread = f"{_ms(r['min_ms'])}–{_ms(r['max_ms'])}"
    else:
        median, spread = r["status"], ""
    base = r.get("baseline")
    base_cell = f"{base['label']} ({_ms(base.get('median_ms'))})" if base else ""
    eff = r.get("efficiency")
    peak = r.get("peak_mib")
    notes = "; ".join(n for n in (r.get("note"), r.get("warnings")) if n)
    cells = [
        r["row"],
        r["mode"],
        r.get("label") or r["impl"],
        median,
        spread,
        _num(r.get("gflops"), ".1f"),
        base_cell,
        ratio_text(r.get("ratio")),
        "—" if eff is None else f"{eff:.0%}",
        "—" if peak is None else f"{peak:.{1 if peak >= 10 else 2}f}",
        needs,
        met,
        notes,
    ]
    return "| " + " | ".join(_cell(str(c)) for c in cells) + " |"


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    cfg = doc["config"]
    lines = ["# lstmkit benchmarks", ""]
    if doc["quick"]:
        lines += [
            "> **Quick run** (`--quick`): tiny shapes and few repeats, a smoke test of the "
            "harness. The timings, ratios and target verdicts below mean nothing.",
            "",
        ]
    git = m.get("git") or {}
    commit = f"{git.get('commit', '?')}{' (dirty)' if git.get('dirty') else ''}"
    lines += [
        f"- run: {doc['started']} ({doc['elapsed_s']:.0f} s), `{doc['command']}`",
        f"- machine: {m['cpu']}, {m['logical_cpus']} logical CPUs "
        f"({m['physical_cores']} physical cores, {m['usable_cpus']} usable), "
        f"{m['memory_gib']} GiB, {m['cpu_capability']}, {m['platform']}",
        f"- software: Python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads), "
        f"onnxruntime {m['onnxruntime']}, lstmkit {m['lstmkit']} at {commit}, "
        f"fused extension built: {m['fused_built']}",
        f"- load average (1, 5, 15 min) at start {doc['load_start']}, at end {doc['load_end']}",
        f"- timer: warm-up {cfg['warmup_s']} s, at least {cfg['min_repeats']} samples and "
        f"{cfg['min_time_s']} s, at most {cfg['max_repeats']} samples per measurement",
        "",
        (
            "Ratio = median / median of the baseline, timed in alternation with each "
            "measurement (paired; the baseline (ms) column shows that median) "
            if cfg.get("paired")
            else "Ratio = median / median of the baseline measured in this run "
        )
        + "(lower is better); "
        "eff. = GEMM-ceiling time / median (plain LSTM rows); peak MiB = peak of torch's CPU "
        "allocations during one call. See docs/benchmarks.md.",
        "",
        "## Targets",
        "",
        "| target | needs | evaluated | met | worst | met? |",
        "|---|---|---:|---:|---:|---|",
    ]
    for t in doc["targets"]:
        evs = t["evaluations"]
        values = [e["value"] for e in evs if e["value"] is not None]
        worst: float | None = None
        if values:
            worst = min(values) if t["op"] == ">=" else max(values)
        if t["metric"] == "efficiency":
            worst_cell = "—" if worst is None else f"{worst:.0%}"
            needs = f"≥ {t['threshold']:.0%}"
        else:
            worst_cell = ratio_text(worst)
            needs = f"≤ {t['threshold']:.1f}"
        verdict = "not measured" if t["met"] is None else ("yes" if t["met"] else "**no**")
        n_met = sum(1 for e in evs if e["met"])
        lines.append(
            f"| {_cell(t['text'])} | {needs} | {len(evs)} | {n_met} | {worst_cell} | {verdict} |"
        )
    lines.append("")

    sections: dict[str, list[dict[str, Any]]] = {}
    for r in doc["results"]:
        sections.setdefault(r["shape"], []).append(r)
    for shape, results in sections.items():
        dims = results[0]["dims"]
        dims_text = ", ".join(f"{k}={v}" for k, v in dims.items())
        title = "streaming step, batch 1, no grad" if shape.startswith("S") else ""
        lines += [f"## {shape}: {dims_text}{' — ' + title if title else ''}", "", _HEADER]
        lines += [_result_line(r) for r in results]
        lines.append("")
    for note in doc.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines).rstrip() + "\n"


def write(doc: dict[str, Any], out_dir: Path, started: dt.datetime) -> list[Path]:
    """Write ``<date>_<time>_<machine>.json``/``.md`` and ``latest.json``/``latest.md`` to
    ``out_dir``. A quick run adds ``_quick`` to both names, so that it never replaces the
    ``latest`` files of a real run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if doc["quick"] else ""
    stem = f"{started:%Y-%m-%d_%H%M%S}_{slug(doc['machine'])}{suffix}"
    text_json = json.dumps(doc, indent=1, sort_keys=False) + "\n"
    text_md = markdown(doc)
    paths = []
    for name in (stem, f"latest{suffix}"):
        for suffix, text in ((".json", text_json), (".md", text_md)):
            path = out_dir / f"{name}{suffix}"
            path.write_text(text)
            paths.append(path)
    return paths
