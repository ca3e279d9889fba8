"""The timer and the peak-memory probe.

Timing: the first call is a warm-up run under ``torch.profiler`` (for the memory figure). Unless
it took more than ``2 * warmup_s``, more warm-up calls follow until ``warmup_s`` has passed. Then
samples are taken until there are at least ``min_repeats`` and ``min_time_s`` has passed (at
most ``max_repeats``). A call shorter than ``sample_s`` is repeated ``inner`` times per sample
and the sample divided by ``inner``. Python's garbage collector is off while sampling.

Paired timing: with a ``partner`` (the measurement's baseline), the partner is warmed up the
same way and sampled in alternation with ``fn`` (the order swapped every round), so that both
see the same load on the machine. On a shared 2-core machine the load moves between seconds:
back-to-back measurements of one kernel read up to a third apart, which a ratio of two
measurements taken minutes apart inherits; a ratio of medians taken side by side does not.

Memory: the peak, during that first call, of the bytes allocated through torch's CPU allocator
above what was allocated when the call began (the running sum of the profiler's ``[memory]``
events). It sees every tensor that ATen, autograd, torch's RNN implementations and the fused
extension allocate; it does not see memory that libraries allocate on their own (onnxruntime's
arena, oneDNN or BLAS scratch outside torch's allocator, Python objects).
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TimerConfig:
    warmup_s: float = 0.2
    min_repeats: int = 3
    max_repeats: int = 15
    min_time_s: float = 0.5
    sample_s: float = 0.005
    memory: bool = True


@dataclass
class Timing:
    samples_ms: list[float]
    inner: int
    warmup: int
    peak_bytes: int | None
    memory_note: str = ""
    extra: dict[str, object] = field(default_factory=dict)
    partner_ms: list[float] = field(default_factory=list)  # the partner's samples (paired)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)

    @property
    def max_ms(self) -> float:
        return max(self.samples_ms)


# The profiler's own log lines, and its warning that a block allocated before it started was
# freed during it (that free is then not counted: the peak can only be overstated by it).
_PROFILER_NOISE = (
    "profiler_start",
    "profiler_stop",
    "daemon config",
    "allocated before the profiling started",
)


@contextlib.contextmanager
def _filtered_stderr() -> Iterator[None]:
    """Hide the profiler's own log lines (``USDT: ... profiler_start``) that kineto writes to
    file descriptor 2; any other line written meanwhile is passed on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines():
                if any(k in line for k in _PROFILER_NOISE):
                    continue
                print(line, file=sys.stderr)


def peak_memory(fn: Callable[[], object]) -> tuple[int | None, str]:
    """Run ``fn`` once under the profiler; return the peak of torch's allocations during it
    (bytes above the start), or ``None`` and why not."""
    try:
        from torch.profiler import ProfilerActivity, profile
    except ImportError as err:  # pragma: no cover - torch always has it
        fn()
        return None, f"torch.profiler unavailable ({err})"
    # the fused kernels' cache of large buffers hands out memory torch's allocator never sees:
    # off for this call, so that every buffer the call needs shows up as an allocation
    from lstmkit.backends import fused

    cached = fused.set_buffer_cache(False)
    try:
        with (
            _filtered_stderr(),
            profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p,
        ):
            fn()
    finally:
        fused.set_buffer_cache(cached)
    try:
        events = [e for e in p.profiler.kineto_results.events() if e.name() == "[memory]"]
    except (AttributeError, RuntimeError) as err:
        return None, f"profiler memory events unavailable ({err})"
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak, ""


def _warm_up(fn: Callable[[], object], first_s: float, cfg: TimerConfig) -> tuple[int, int]:
    """After a first call that took ``first_s``: calibrate ``inner`` and warm up until
    ``warmup_s`` has passed. Returns (inner, warm-up calls including the first)."""
    warmup = 1
    inner = 1
    start = time.perf_counter() - first_s  # the first call counts towards the warm-up
    if first_s < max(2 * cfg.warmup_s, cfg.sample_s):
        # Cheap enough for a warm-up outside the profiler, which also calibrates ``inner``.
        start = time.perf_counter()
        fn()
        one = time.perf_counter() - start
        warmup += 1
        if one < cfg.sample_s:
            inner = min(10_000, math.ceil(cfg.sample_s / max(one, 1e-7)))
    while time.perf_counter() - start < cfg.warmup_s and warmup < 1000:
        for _ in range(inner):
            fn()
        warmup += inner
    return inner, warmup


def _sample(fn: Callable[[], object], inner: int) -> float:
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) * 1e3 / inner


def measure(
    fn: Callable[[], object], cfg: TimerConfig, partner: Callable[[], object] | None = None
) -> Timing:
    """Warm up, sample and time ``fn`` (and ``partner``, in alternation) as described in the
    module docstring."""
    gc.collect()
    start = time.perf_counter()
    if cfg.memory:
        peak, note = peak_memory(fn)
    else:
        fn()
        peak, note = None, "not measured (--no-memory)"
    inner, warmup = _warm_up(fn, time.perf_counter() - start, cfg)
    p_inner = 1
    if partner is not None:
        start = time.perf_counter()
        partner()
        p_inner, _ = _warm_up(partner, time.perf_counter() - start, cfg)

    samples: list[float] = []
    partner_ms: list[float] = []
    gc.disable()
    try:
        t_begin = time.perf_counter()
        while len(samples) < cfg.min_repeats or (
            len(samples) < cfg.max_repeats and time.perf_counter() - t_begin < cfg.min_time_s
        ):
            if partner is not None and len(samples) % 2:
                partner_ms.append(_sample(partner, p_inner))
                samples.append(_sample(fn, inner))
            else:
                samples.append(_sample(fn, inner))
                if partner is not None:
                    partner_ms.append(_sample(partner, p_inner))
    finally:
        gc.enable()
    return Timing(samples, inner, warmup, peak, note, partner_ms=partner_ms)
