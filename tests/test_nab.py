"""NAB scoring on hand-worked small files, the threshold sweep against brute force, window
parsing, and (slow, opt-in) the real NAB labels."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from lstmkit.metrics import nab

DATA = Path(os.environ.get("LSTMKIT_DATA", Path(__file__).parents[2] / "shared" / "data"))

# A file of 100 rows: probation = floor(0.15 * 100) = 15 rows, one window on rows 40..59 (W = 20)
N = 100
WINDOW = [(40, 59)]
SIGMA_MINUS_1 = 2 / (1 + math.exp(-5)) - 1  # 0.98661...: the score of a window's first row


def fire(*rows: int, n: int = N) -> np.ndarray:
    detections = np.zeros(n, dtype=bool)
    detections[list(rows)] = True
    return detections


def test_scaled_sigmoid_values() -> None:
    assert nab.scaled_sigmoid(0.0) == 0.0
    assert nab.scaled_sigmoid(-1.0) == pytest.approx(0.9866142981514305, abs=1e-15)
    assert nab.scaled_sigmoid(3.0) == pytest.approx(2 / (1 + math.exp(15)) - 1, abs=1e-15)
    assert nab.scaled_sigmoid(3.01) == -1.0  # NAB's cut-off far past a window
    np.testing.assert_allclose(nab.scaled_sigmoid(np.array([-1.0, 0.0])), [SIGMA_MINUS_1, 0.0])


def test_probationary_length() -> None:
    assert nab.probationary_length(100) == 15
    assert nab.probationary_length(4032) == 604  # floor(604.8)
    assert nab.probationary_length(22695) == 750  # capped at 15% of 5000 rows


def test_detection_at_start_middle_and_end_of_window() -> None:
    # first row of the window: y = -(59 - 40 + 1)/20 = -1 -> exactly A_TP
    assert nab.score_detections(fire(40), WINDOW).score == pytest.approx(1.0, abs=1e-15)
    # middle, row 50: y = -(59 - 50 + 1)/20 = -0.5 -> sigma(-0.5)/sigma(-1) = 0.84828/0.98661
    middle = (2 / (1 + math.exp(-2.5)) - 1) / SIGMA_MINUS_1
    assert middle == pytest.approx(0.8597926, abs=1e-7)
    assert nab.score_detections(fire(50), WINDOW).score == pytest.approx(middle, abs=1e-15)
    # last row, 59: y = -1/20 -> sigma(-0.05) = tanh(0.125) = 0.12435, over 0.98661
    end = math.tanh(0.125) / SIGMA_MINUS_1
    result = nab.score_detections(fire(59), WINDOW)
    assert result.score == pytest.approx(end, abs=1e-15)
    assert (result.detected_windows, result.missed_windows, result.false_positives) == (1, 0, 0)
    # reward_low_FN_rate has the same A_TP: a detected window scores the same
    assert nab.score_detections(fire(50), WINDOW, "reward_low_FN_rate").score == pytest.approx(
        middle
    )


def test_only_the_first_detection_in_a_window_counts() -> None:
    once = nab.score_detections(fire(50), WINDOW)
    many = nab.score_detections(fire(50, 51, 55, 59), WINDOW)
    assert many.score == once.score
    assert (many.detected_windows, many.false_positives) == (1, 0)


def test_score_points_reuses_the_row_weights_of_score_detections() -> None:
    """A sweep computes point_scores once per file; each detection set then scores the same."""
    fired = fire(30, 50, 59, 60, 90)
    rows = nab.point_scores(fired.size, WINDOW, nab.PROFILES["standard"])
    assert nab.score_points(fired, *rows, "standard") == nab.score_detections(fired, WINDOW)


def test_false_positives_near_and_far() -> None:
    # missed window -1 plus, at row 60 just past the window, A_FP * sigma((60 - 59)/(20 - 1))
    # = 0.11 * -tanh(5/38)
    just_after = nab.score_detections(fire(60), WINDOW)
    assert just_after.score == pytest.approx(-1 - 0.11 * math.tanh(5 / 38), abs=1e-15)
    assert (just_after.missed_windows, just_after.false_positives) == (1, 1)
    # far past the window, row 99: y = 40/19 = 2.105 -> sigma = 2/(1 + e^10.53) - 1, about -1
    far = 2 / (1 + math.exp(5 * 40 / 19)) - 1
    assert nab.score_detections(fire(99), WINDOW).score == pytest.approx(-1 + 0.11 * far, abs=1e-15)
    # before the first window a false positive costs the full A_FP; every one of them counts
    assert nab.score_detections(fire(20, 30), WINDOW).score == pytest.approx(-1.22, abs=1e-15)
    # reward_low_FP_rate doubles A_FP
    assert nab.score_detections(fire(20), WINDOW, "reward_low_FP_rate").score == pytest.approx(
        -1.22
    )


def test_missed_windows_and_probation() -> None:
    assert nab.score_detections(fire(), WINDOW).score == -1.0
    assert nab.score_detections(fire(), WINDOW, "reward_low_FN_rate").score == -2.0
    # a detection in the first 15 rows is ignored, neither false positive nor anything else
    probation = nab.score_detections(fire(14), WINDOW)
    assert (probation.score, probation.false_positives) == (-1.0, 0)
    assert nab.score_detections(fire(15), WINDOW).score == pytest.approx(-1.11, abs=1e-15)
    # a window entirely inside the probationary period is not scored
    assert nab.score_detections(fire(), [(2, 10)]).scored_windows == 0


def test_file_without_anomalies() -> None:
    assert nab.score_detections(fire(), []).score == 0.0
    assert nab.score_detections(fire(50, 80), []).score == pytest.approx(-0.22, abs=1e-15)


def test_null_is_0_perfect_is_100_and_a_hand_worked_corpus() -> None:
    bounds = {"a.csv": WINDOW, "b.csv": [], "c.csv": [(20, 29), (70, 89)]}
    null = {key: fire() for key in bounds}
    perfect = {key: nab.perfect_detections(N, b) for key, b in bounds.items()}
    assert nab.score_corpus(null, bounds).normalized == 0.0
    assert nab.score_corpus(perfect, bounds).normalized == pytest.approx(100.0, abs=1e-12)
    assert np.flatnonzero(perfect["c.csv"]).tolist() == [20, 70]
    # a.csv: middle detection 0.8597926 and a far false positive before the window -0.11
    # b.csv: one false positive -0.11; c.csv: both windows missed -2
    # raw = 0.8597907 - 0.22 - 2; null = -3; perfect = 3 -> 100 * (raw + 3) / 6
    detections = {"a.csv": fire(20, 50), "b.csv": fire(50), "c.csv": fire()}
    result = nab.score_corpus(detections, bounds)
    middle = (2 / (1 + math.exp(-2.5)) - 1) / SIGMA_MINUS_1
    assert (result.null, result.perfect) == (-3.0, 3.0)
    assert result.raw == pytest.approx(middle - 2.22, abs=1e-12)
    assert result.normalized == pytest.approx(100 * (middle - 2.22 + 3) / 6, abs=1e-10)
    assert result.files["c.csv"].missed_windows == 2


def test_optimize_threshold_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    bounds = {"a.csv": [(30, 39), (60, 79)], "b.csv": [], "c.csv": [(50, 64)]}
    scores = {key: np.round(rng.uniform(size=N), 2) for key in bounds}
    scores["a.csv"][[31, 62]] = 0.995  # make a good threshold exist
    for profile in nab.PROFILES:
        best = nab.optimize_threshold(scores, bounds, profile)
        candidates = [*sorted({float(v) for s in scores.values() for v in s}), math.inf]
        brute = max(
            nab.score_corpus({k: s >= t for k, s in scores.items()}, bounds, profile).normalized
            for t in candidates
        )
        assert best.score.normalized == pytest.approx(brute, abs=1e-9)
        again = {k: s >= best.threshold for k, s in scores.items()}
        assert nab.score_corpus(again, bounds, profile).normalized == best.score.normalized
    # firing on every row finds the window (+1) but costs 35 + 40 false positives: worse than
    # silence, so the best threshold lies above every score and the score is the null's 0
    quiet = nab.optimize_threshold({"x.csv": np.ones(N)}, {"x.csv": [(50, 59)]})
    assert quiet.threshold == math.inf and quiet.score.normalized == 0.0


def test_window_bounds_from_timestamps() -> None:
    times = np.arange("2014-04-01T00:00", "2014-04-01T08:20", 5, dtype="datetime64[m]")
    assert times.size == N
    windows = [
        ("2014-04-01 01:00:00.000000", "2014-04-01 01:30:00.000000"),  # exact rows 12..18
        ("2014-04-01 03:02:00", "2014-04-01 03:58:00"),  # between rows: 37..47
    ]
    assert nab.window_bounds(times, windows) == [(12, 18), (37, 47)]
    with pytest.raises(
        ValueError,
        match=r"window 0 of f.csv \(2014-04-01T01:01:00.000000000 .. 2014-04-01T01:02:00.000000000\) contains no timestamp",
    ):
        nab.window_bounds(times, [("2014-04-01 01:01", "2014-04-01 01:02")], file="f.csv")
    with pytest.raises(ValueError, match=r"window 0 of f.csv ends before it starts"):
        nab.window_bounds(times, [("2014-04-01 02:00", "2014-04-01 01:00")], file="f.csv")
    # rows in file order: a clock that steps back (as in NAB's machine_temperature file) stays
    # inside the window until a row stamped with the window's end
    jumbled = times[[0, 1, 2, 3, 4, 5, 3, 4, 5, 6]]
    assert nab.window_bounds(jumbled, [(times[2], times[5])]) == [(2, 5)]
    assert nab.window_bounds(jumbled, [(times[4], times[6])]) == [(4, 9)]
    # duplicated end stamp: the window closes at its first row, as NAB does
    assert nab.window_bounds(times[[0, 1, 1, 2]], [(times[0], times[1])]) == [(0, 1)]


def test_read_windows(tmp_path: Path) -> None:
    path = tmp_path / "combined_windows.json"
    content = {
        "a/x.csv": [["2014-04-10 07:15:00.000000", "2014-04-11 16:45:00.000000"]],
        "a/y.csv": [],
    }
    path.write_text(json.dumps(content))
    windows = nab.read_windows(path)
    assert windows["a/y.csv"] == []
    assert windows["a/x.csv"] == [
        (np.datetime64("2014-04-10T07:15"), np.datetime64("2014-04-11T16:45"))
    ]
    path.write_text('{"a/x.csv": [["2014-04-10"]]}')
    with pytest.raises(ValueError, match=r"window 0 of a/x.csv must be a \[start, end\] pair"):
        nab.read_windows(path)
    path.write_text('{"a/x.csv": [}')
    with pytest.raises(ValueError, match=r"not valid JSON at line 1, column 14"):
        nab.read_windows(path)


def test_errors_name_file_and_problem() -> None:
    with pytest.raises(
        ValueError,
        match=r"windows of f.csv must be ordered and disjoint, window 1 \(50, 60\) starts at or before the end of window 0 \(40, 59\)",
    ):
        nab.score_detections(fire(), [(40, 59), (50, 60)], file="f.csv")
    with pytest.raises(
        ValueError,
        match=r"window 0 of f.csv must satisfy 0 <= start <= end < 100 \(the file's rows\), got \(90, 100\)",
    ):
        nab.score_detections(fire(), [(90, 100)], file="f.csv")
    with pytest.raises(
        ValueError, match=r"detections of <file> must hold only 0/1 or bools .* got 0.7 at row 3"
    ):
        nab.score_detections(np.array([0, 0, 0, 0.7]), [])
    with pytest.raises(
        ValueError,
        match=r"profile must be a Profile or one of 'standard', 'reward_low_FP_rate', 'reward_low_FN_rate', got 'strict'",
    ):
        nab.score_detections(fire(), [], "strict")
    with pytest.raises(ValueError, match=r"bounds has no windows for files \['z.csv'\]"):
        nab.score_corpus({"z.csv": fire()}, {})
    with pytest.raises(ValueError, match=r"perfect score must exceed the null score"):
        nab.score_corpus({"z.csv": fire()}, {"z.csv": []})
    with pytest.raises(
        ValueError, match=r"anomaly_scores of z.csv must be finite, got nan at row 1"
    ):
        nab.optimize_threshold({"z.csv": np.array([0.0, np.nan])}, {"z.csv": []})


@pytest.mark.slow
def test_real_nab_labels_map_onto_their_files() -> None:
    """Every window of the shipped NAB subset falls on rows of its file; NAB sizes windows so
    that together they span about 10% of a file; null and perfect detectors give 0 and 100."""
    folder = DATA / "nab"
    if not (folder / "combined_windows.json").exists():
        pytest.skip(f"NAB data not found in {folder}")
    windows = nab.read_windows(folder / "combined_windows.json")
    bounds, null, perfect = {}, {}, {}
    for key, file_windows in windows.items():
        with (folder / "data" / key).open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        times = [row["timestamp"] for row in rows]
        bounds[key] = nab.window_bounds(times, file_windows, file=key)
        n = len(times)
        if bounds[key]:
            covered = sum(r - l + 1 for l, r in bounds[key])
            assert abs(covered / n - 0.10) < 0.02, key
        null[key] = np.zeros(n, dtype=bool)
        perfect[key] = nab.perfect_detections(n, bounds[key])
    assert len(bounds) == 24
    assert nab.score_corpus(null, bounds).normalized == 0.0
    for profile in nab.PROFILES:
        assert nab.score_corpus(perfect, bounds, profile).normalized == pytest.approx(100.0)
