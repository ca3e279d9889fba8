r"""Numenta Anomaly Benchmark scoring, written from the NAB whitepaper (Lavin & Ahmad 2015,
"Evaluating Real-time Anomaly Detection Algorithms - the Numenta Anomaly Benchmark") and the
conventions of NAB's published results.

Why NAB and not precision/recall: a streaming detector should fire *early* in an anomaly and
*rarely* elsewhere. NAB labels each anomaly with a window around it and scores every detection by
where it falls relative to the windows:

* **Inside a window** only the earliest detection counts (later ones in the same window add
  nothing). With the window's points indexed so that its first point has relative position
  :math:`y = -1` and the point just past its end :math:`y = 0`, i.e.
  :math:`y = -(r - i + 1)/W` for point i of a window [l, r] of width :math:`W = r - l + 1`, the
  detection scores :math:`A_{TP}\,\sigma(y)/\sigma(-1)`, with the scaled sigmoid

  .. math:: \sigma(y) = \frac{2}{1 + e^{5y}} - 1 .

  The first point of a window earns exactly :math:`A_{TP}`; the score falls towards 0 at the
  window's end.
* **A window without any detection** costs :math:`-A_{FN}`.
* **Every detection outside all windows** is a false positive. Right after a window it is
  scored :math:`A_{FP}\,\sigma(y)` with :math:`y = (i - r_{prev})/(W_{prev} - 1)`, the distance
  past the end of the most recent window in units of that window's width, so a detection just
  late is penalised only a little and one far away costs almost the full :math:`-A_{FP}`
  (:math:`\sigma(y) = -1` once y > 3, as in NAB's code). Before the first window of a file every
  false positive costs :math:`-A_{FP}`.
* **The probationary period**, the first 15% of each file (at most 750 points, 15% of 5000, as
  NAB's code caps it), lets a detector learn: detections there are ignored, and a window with no
  point after the probationary period is not scored at all.

A file's raw score is the sum of its windows' scores and its false positives' scores; a corpus's
is the sum over files. It is normalised so that the null detector (never fires) scores 0 and the
perfect detector (fires at the first scored point of every window and nowhere else) scores 100:

.. math:: S = 100\,\frac{S_{raw} - S_{null}}{S_{perfect} - S_{null}} .

Detectors emit anomaly scores; NAB detects where the score is >= a threshold and, per
application profile, uses the threshold that maximises the corpus score
(:func:`optimize_threshold`). The three profiles weight the outcomes differently; :math:`A_{TN}`
is part of NAB's profile files but no NAB score uses it (a true negative is never counted).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "PROFILES",
    "CorpusScore",
    "FileScore",
    "Profile",
    "ThresholdResult",
    "normalized_score",
    "optimize_threshold",
    "perfect_detections",
    "point_scores",
    "probationary_length",
    "read_windows",
    "scaled_sigmoid",
    "score_corpus",
    "score_detections",
    "score_points",
    "window_bounds",
]

Bounds = list[tuple[int, int]]

#: NAB caps the probationary period at this many points (15% of 5000 rows)
_PROBATION_CAP_ROWS = 5000


@dataclass(frozen=True)
class Profile:
    """Weights of one NAB application profile."""

    name: str
    tp: float
    fp: float
    fn: float
    tn: float = 1.0


#: NAB's three application profiles (config/profiles.json in NAB): standard, one that punishes
#: false positives twice as hard, and one that punishes missed anomalies twice as hard
PROFILES: dict[str, Profile] = {
    "standard": Profile("standard", tp=1.0, fp=0.11, fn=1.0, tn=1.0),
    "reward_low_FP_rate": Profile("reward_low_FP_rate", tp=1.0, fp=0.22, fn=1.0, tn=1.0),
    "reward_low_FN_rate": Profile("reward_low_FN_rate", tp=1.0, fp=0.11, fn=2.0, tn=1.0),
}


@dataclass(frozen=True)
class FileScore:
    """Raw NAB score of one file, and what it is made of."""

    score: float
    detected_windows: int
    missed_windows: int
    false_positives: int
    scored_windows: int


@dataclass(frozen=True)
class CorpusScore:
    """A corpus's raw score, the null and perfect detectors' raw scores, and the normalised
    score between them (0 = null, 100 = perfect)."""

    raw: float
    null: float
    perfect: float
    normalized: float
    files: dict[str, FileScore]


@dataclass(frozen=True)
class ThresholdResult:
    """The best threshold for a profile and the corpus score it gives."""

    threshold: float
    score: CorpusScore


def _profile(profile: Any) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if isinstance(profile, str) and profile in PROFILES:
        return PROFILES[profile]
    options = ", ".join(repr(p) for p in PROFILES)
    raise ValueError(f"profile must be a Profile or one of {options}, got {profile!r}")


def scaled_sigmoid(y: Any) -> Any:
    r""":math:`\sigma(y) = 2/(1 + e^{5y}) - 1`, and exactly -1 for y > 3 (NAB's cut-off for
    detections far past a window). Works on floats and NumPy arrays."""
    y_arr = np.asarray(y, dtype=np.float64)
    value = np.where(y_arr > 3.0, -1.0, 2.0 / (1.0 + np.exp(np.minimum(5.0 * y_arr, 50.0))) - 1.0)
    return float(value) if value.ndim == 0 else value


def probationary_length(n: int, probation_percent: float = 0.15) -> int:
    """Points at the start of a file whose detections are ignored: ``floor(p * n)``, capped at
    ``p * 5000`` as NAB's code does, so that long files are not mostly probation."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if isinstance(probation_percent, bool) or not isinstance(probation_percent, numbers.Real):
        raise TypeError(f"probation_percent must be a float in [0, 1), got {probation_percent!r}")
    if not 0.0 <= float(probation_percent) < 1.0:
        raise ValueError(f"probation_percent must be in [0, 1), got {probation_percent}")
    return int(min(math.floor(probation_percent * n), probation_percent * _PROBATION_CAP_ROWS))


def _datetimes(name: str, values: Any) -> NDArray[np.datetime64]:
    try:
        return np.asarray(values, dtype="datetime64[ns]")
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{name} must be timestamps (datetime64 or ISO strings): {error}"
        ) from error


def window_bounds(timestamps: Any, windows: Sequence[Any], *, file: str = "<file>") -> Bounds:
    """Index bounds ``[(l, r), ...]`` of windows given as ``(start, end)`` timestamps (as in
    NAB's ``combined_windows.json``), both inclusive.

    Rows are read in file order, as a streaming detector sees them and as NAB's scorer walks
    them: a window opens at the first row whose timestamp is at or after ``start`` and closes at
    the first later row stamped exactly ``end`` (NAB's windows are cut from the files'
    timestamps), or, when no row carries ``end``, at the last row before the clock passes it.
    Rows need not be sorted: some NAB files repeat a timestamp or step back in time. Windows must
    come out ordered, disjoint and non-empty; ``file`` names the file in error messages."""
    times = _datetimes(f"timestamps of {file}", timestamps)
    if times.ndim != 1:
        raise ValueError(f"timestamps of {file} must be 1-D, got shape {times.shape}")
    bounds: Bounds = []
    for k, window in enumerate(windows):
        if not isinstance(window, (list, tuple)) or len(window) != 2:
            raise ValueError(f"window {k} of {file} must be a (start, end) pair, got {window!r}")
        start, end = _datetimes(f"window {k} of {file}", list(window))
        if end < start:
            raise ValueError(f"window {k} of {file} ends before it starts: {start} > {end}")
        opened = np.flatnonzero(times >= start)
        if opened.size == 0 or times[opened[0]] > end:
            raise ValueError(f"window {k} of {file} ({start} .. {end}) contains no timestamp")
        left = int(opened[0])
        rest = times[left:]
        exact = np.flatnonzero(rest == end)
        if exact.size:
            right = left + int(exact[0])
        else:
            passed = np.flatnonzero(rest > end)
            right = left + int(passed[0]) - 1 if passed.size else times.size - 1
        bounds.append((left, right))
    return _checked_bounds(bounds, times.size, file)


def _checked_bounds(bounds: Any, n: int, file: str) -> Bounds:
    checked: Bounds = []
    for k, pair in enumerate(bounds):
        if (
            not isinstance(pair, (list, tuple))
            or len(pair) != 2
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in pair)
        ):
            raise TypeError(f"window {k} of {file} must be a pair of int row indices, got {pair!r}")
        left, right = int(pair[0]), int(pair[1])
        if not 0 <= left <= right < n:
            raise ValueError(
                f"window {k} of {file} must satisfy 0 <= start <= end < {n} (the file's rows), "
                f"got ({left}, {right})"
            )
        if checked and left <= checked[-1][1]:
            raise ValueError(
                f"windows of {file} must be ordered and disjoint, window {k} ({left}, {right}) "
                f"starts at or before the end of window {k - 1} {checked[-1]}"
            )
        checked.append((left, right))
    return checked


def point_scores(
    n: int,
    bounds: Any,
    profile: Any = "standard",
    *,
    probation_percent: float = 0.15,
    file: str = "<file>",
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """What a detection at each row of a file of ``n`` rows would score, and which window it
    is in: ``(weights (n,), window (n,))`` with window = k for rows of window k, -1 for rows
    outside every window and -2 for the probationary rows (whose weight is 0)."""
    prof = _profile(profile)
    windows = _checked_bounds(bounds, n, file)
    rows = np.arange(n)
    weights = np.zeros(n)
    window_of = np.full(n, -1, dtype=np.int64)
    max_tp = scaled_sigmoid(-1.0)
    for k, (left, right) in enumerate(windows):
        width = right - left + 1
        inside = rows[left : right + 1]
        window_of[left : right + 1] = k
        weights[left : right + 1] = prof.tp * scaled_sigmoid(-(right - inside + 1) / width) / max_tp
    outside = window_of == -1
    rights = np.array([r for _, r in windows], dtype=np.int64)
    widths = np.array([r - l + 1 for l, r in windows], dtype=np.int64)
    previous = np.searchsorted(rights, rows, side="left") - 1  # last window ending before row
    far = outside & (previous < 0)
    weights[far] = -prof.fp
    after = outside & (previous >= 0)
    if after.any():
        prev = previous[after]
        # a one-row window has no width to measure by; count distance in rows then
        scale = np.maximum(widths[prev] - 1, 1)
        weights[after] = prof.fp * scaled_sigmoid((rows[after] - rights[prev]) / scale)
    probation = probationary_length(n, probation_percent)
    weights[:probation] = 0.0
    window_of[:probation] = -2
    return weights, window_of


def _as_detections(name: str, detections: Any, n: int | None = None) -> NDArray[np.bool_]:
    if hasattr(detections, "detach"):
        detections = detections.detach().cpu().numpy()
    array = np.asarray(detections)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one entry per row), got shape {array.shape}")
    if n is not None and array.size != n:
        raise ValueError(f"{name} must have one entry per row ({n}), got {array.size}")
    if array.dtype == np.bool_:
        return array
    if not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"{name} must be bools or 0/1, got dtype {array.dtype}")
    bad = (array != 0) & (array != 1)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(
            f"{name} must hold only 0/1 or bools (threshold anomaly scores first, or use "
            f"optimize_threshold), got {array[row]} at row {row}"
        )
    return array != 0


def score_detections(
    detections: Any,
    bounds: Any,
    profile: Any = "standard",
    *,
    probation_percent: float = 0.15,
    file: str = "<file>",
) -> FileScore:
    """Raw NAB score of one file's binary ``detections`` (n,) against its windows' row
    ``bounds`` (from :func:`window_bounds`)."""
    prof = _profile(profile)
    fired = _as_detections(f"detections of {file}", detections)
    weights, window_of = point_scores(
        fired.size, bounds, prof, probation_percent=probation_percent, file=file
    )
    return score_points(fired, weights, window_of, prof)


def score_points(
    fired: NDArray[np.bool_], weights: NDArray[Any], window_of: NDArray[Any], profile: Any
) -> FileScore:
    """:func:`score_detections` from the per-row ``weights`` and ``window_of`` that
    :func:`point_scores` returns for the file: scoring many detection sets of one file (a
    threshold or parameter sweep) computes those once. ``fired`` is the (n,) bool detections."""
    prof = _profile(profile)
    scored = np.unique(window_of[window_of >= 0])
    false_positive = fired & (window_of == -1)
    total = float(np.sum(weights[false_positive]))
    detected = 0
    for k in scored:
        hits = np.flatnonzero(fired & (window_of == k))
        if hits.size:
            detected += 1
            total += float(weights[hits[0]])  # the earliest detection scores highest
        else:
            total -= prof.fn
    return FileScore(
        score=total,
        detected_windows=detected,
        missed_windows=int(scored.size) - detected,
        false_positives=int(false_positive.sum()),
        scored_windows=int(scored.size),
    )


def perfect_detections(
    n: int, bounds: Any, *, probation_percent: float = 0.15
) -> NDArray[np.bool_]:
    """The perfect detector: one detection at the first scored row of every window."""
    probation = probationary_length(n, probation_percent)
    fired = np.zeros(n, dtype=bool)
    for left, right in _checked_bounds(bounds, n, "<file>"):
        if right >= probation:
            fired[max(left, probation)] = True
    return fired


def normalized_score(raw: float, null: float, perfect: float) -> float:
    """100 (raw - null) / (perfect - null): 0 for the null detector, 100 for the perfect one."""
    if not perfect > null:
        raise ValueError(
            f"the perfect score must exceed the null score to normalise, got perfect={perfect} "
            f"and null={null} (does the corpus have any scored anomaly window?)"
        )
    return 100.0 * (raw - null) / (perfect - null)


def _file_keys(detections: Mapping[str, Any], bounds: Mapping[str, Any], what: str) -> list[str]:
    if not isinstance(detections, Mapping) or not isinstance(bounds, Mapping):
        raise TypeError(f"{what} and bounds must be mappings from file name to values")
    missing = sorted(set(detections) - set(bounds))
    if missing:
        raise ValueError(f"bounds has no windows for files {missing} (use [] for no anomaly)")
    if not detections:
        raise ValueError(f"{what} must hold at least one file, got none")
    return sorted(detections)


def score_corpus(
    detections: Mapping[str, Any],
    bounds: Mapping[str, Any],
    profile: Any = "standard",
    *,
    probation_percent: float = 0.15,
) -> CorpusScore:
    """Score binary detections for several files (file name -> (n,) array) against their
    window bounds (file name -> [(l, r), ...]) and normalise between null and perfect."""
    prof = _profile(profile)
    files: dict[str, FileScore] = {}
    raw = null = perfect = 0.0
    for key in _file_keys(detections, bounds, "detections"):
        fired = _as_detections(f"detections of {key}", detections[key])
        result = score_detections(
            fired, bounds[key], prof, probation_percent=probation_percent, file=key
        )
        files[key] = result
        raw += result.score
        null -= prof.fn * result.scored_windows
        best = perfect_detections(fired.size, bounds[key], probation_percent=probation_percent)
        perfect += score_detections(
            best, bounds[key], prof, probation_percent=probation_percent, file=key
        ).score
    return CorpusScore(raw, null, perfect, normalized_score(raw, null, perfect), files)


def optimize_threshold(
    anomaly_scores: Mapping[str, Any],
    bounds: Mapping[str, Any],
    profile: Any = "standard",
    *,
    probation_percent: float = 0.15,
) -> ThresholdResult:
    """The threshold on anomaly scores (detection where score >= threshold) that maximises the
    corpus score for ``profile``, found exactly by sweeping every distinct score once from the
    highest down, as NAB's sweeper does: lowering the threshold past a value adds the
    detections at that value, so the total changes by their false-positive weights and by the
    improvement of any window they reach first. Among equal totals the highest threshold
    (fewest detections) wins. O(N log N) for N scored rows."""
    prof = _profile(profile)
    keys = _file_keys(anomaly_scores, bounds, "anomaly_scores")
    arrays: dict[str, NDArray[np.float64]] = {}
    values: list[NDArray[np.float64]] = []
    weights: list[NDArray[np.float64]] = []
    windows: list[NDArray[np.int64]] = []
    offset = 0
    null = 0.0
    for key in keys:
        raw = anomaly_scores[key]
        if hasattr(raw, "detach"):
            raw = raw.detach().cpu().numpy()
        scores = np.asarray(raw, dtype=np.float64)
        if scores.ndim != 1:
            raise ValueError(f"anomaly_scores of {key} must be 1-D, got shape {scores.shape}")
        if not np.isfinite(scores).all():
            row = int(np.argmax(~np.isfinite(scores)))
            raise ValueError(
                f"anomaly_scores of {key} must be finite, got {scores[row]} at row {row}"
            )
        arrays[key] = scores
        w, k = point_scores(
            scores.size, bounds[key], prof, probation_percent=probation_percent, file=key
        )
        keep = k != -2
        scored = np.unique(k[k >= 0])
        null -= prof.fn * scored.size
        global_k = np.where(k[keep] >= 0, k[keep] + offset, -1)
        offset += int(k.max(initial=-1)) + 1
        values.append(scores[keep])
        weights.append(w[keep])
        windows.append(global_k)
    all_values = np.concatenate(values)
    all_weights = np.concatenate(weights)
    all_windows = np.concatenate(windows)
    order = np.argsort(-all_values, kind="stable")
    window_best: dict[int, float] = {}
    total = null
    best_total, best_threshold = null, math.inf
    i = 0
    while i < order.size:
        threshold = all_values[order[i]]
        while i < order.size and all_values[order[i]] == threshold:
            row = order[i]
            window = int(all_windows[row])
            if window < 0:
                total += all_weights[row]
            else:
                old = window_best.get(window, -prof.fn)
                new = max(old, float(all_weights[row]))
                total += new - old
                window_best[window] = new
            i += 1
        if total > best_total + 1e-12:
            best_total, best_threshold = total, float(threshold)
    detections = {key: arrays[key] >= best_threshold for key in keys}
    result = score_corpus(detections, bounds, prof, probation_percent=probation_percent)
    return ThresholdResult(best_threshold, result)


def read_windows(
    path: str | os.PathLike[str],
) -> dict[str, list[tuple[np.datetime64, np.datetime64]]]:
    """Read NAB's ``combined_windows.json``: file name -> list of ``[start, end]`` timestamp
    pairs, checked and parsed to ``datetime64``."""
    with open(path, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}: not valid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
            ) from error
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected an object mapping file names to windows, got {type(data).__name__}"
        )
    result: dict[str, list[tuple[np.datetime64, np.datetime64]]] = {}
    for key, windows in data.items():
        if not isinstance(windows, list):
            raise ValueError(f"{path}: windows of {key} must be a list, got {windows!r}")
        parsed = []
        for k, window in enumerate(windows):
            if not isinstance(window, list) or len(window) != 2:
                raise ValueError(
                    f"{path}: window {k} of {key} must be a [start, end] pair, got {window!r}"
                )
            start, end = _datetimes(f"{path}: window {k} of {key}", window)
            parsed.append((start, end))
        result[key] = parsed
    return result
