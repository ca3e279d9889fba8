"""Readers of forecasting data: long format, M4 wide files, single columns, and their checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lstmkit.data.series_io import (
    detect_format,
    read_long,
    read_m4,
    read_series,
    read_single_column,
    split_last,
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "unique_id": ["A"] * 4 + ["B"] * 3,
            "ds": list(pd.date_range("2024-01-01", periods=4, freq="D"))
            + list(pd.date_range("2024-01-02", periods=3, freq="D")),
            "y": [1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0],
            "price": [0.5, 0.6, 0.7, 0.8, 1.5, 1.6, 1.7],
            "size": [3.0] * 4 + [7.0] * 3,
        }
    )


def test_long_frame_round_trip_with_covariates_and_static() -> None:
    frame = _frame()
    data = read_long(frame, covariates=["price"], static=["size"])
    assert data.ids == ["A", "B"] and data.freq == "D"
    assert data.covariate_names == ("price",) and data.static_names == ("size",)
    np.testing.assert_array_equal(data.series[1].y, [10.0, 20.0, 30.0])
    np.testing.assert_array_equal(data.series[0].covariates[:, 0], [0.5, 0.6, 0.7, 0.8])
    np.testing.assert_array_equal(data.series[1].static, [7.0])
    back = data.to_frame()
    pd.testing.assert_frame_equal(back, frame[back.columns], check_dtype=False)


def test_long_csv_file_with_integer_steps(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", "unique_id,ds,y\nx,1,5\nx,2,6\nx,3,7\ny,1,1\ny,2,2\n")
    data = read_long(path)
    assert data.freq is None and [len(s) for s in data.series] == [3, 2]
    np.testing.assert_array_equal(data.future_ds(0, 2), [4, 5])
    assert detect_format(path) == "long"


def test_future_time_stamps_follow_the_frequency() -> None:
    frame = pd.DataFrame({"ds": pd.date_range("2024-01-07", periods=5, freq="W-SUN"), "y": 1.0})
    data = read_long(frame)
    assert data.freq == "W-SUN" and data.ids == ["series"]
    future = data.future_ds(0, 2)
    assert list(pd.DatetimeIndex(future)) == [
        pd.Timestamp("2024-02-11"),
        pd.Timestamp("2024-02-18"),
    ]


def test_unsorted_time_stamps_are_refused_unless_sort(tmp_path: Path) -> None:
    path = _write(tmp_path / "u.csv", "unique_id,ds,y\nA,2,20\nA,1,10\nA,3,30\n")
    with pytest.raises(
        ValueError, match=r"u\.csv: series 'A' is not sorted by time: row 3 .*sort=True"
    ):
        read_long(path)
    data = read_long(path, sort=True)
    np.testing.assert_array_equal(data.series[0].y, [10.0, 20.0, 30.0])


def test_duplicated_time_stamps_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "unique_id,ds,y\nA,1,1\nA,2,2\nA,2,3\n")
    with pytest.raises(ValueError, match=r"series 'A' has the time stamp 2 twice \(rows 3 and 4\)"):
        read_long(path)


def test_gaps_are_refused_or_filled_with_missing_values() -> None:
    frame = pd.DataFrame(
        {"ds": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-05"]), "y": [1.0, 2.0, 3.0]}
    )
    with pytest.raises(
        ValueError, match=r"has gaps: 2 missing time steps, the first at 2024-01-03.*fill_gaps=True"
    ):
        read_long(frame, freq="D")
    with pytest.raises(
        ValueError, match=r"missing 'y' at .*allow_missing=True and train with cell='grud'"
    ):
        read_long(frame, freq="D", fill_gaps=True)
    data = read_long(frame, freq="D", fill_gaps=True, allow_missing=True)
    np.testing.assert_array_equal(data.series[0].y, [1.0, 2.0, np.nan, np.nan, 3.0])
    assert data.has_missing()


def test_integer_gaps_and_nan_values(tmp_path: Path) -> None:
    gap = _write(tmp_path / "g.csv", "ds,y\n1,1\n2,2\n4,4\n")
    with pytest.raises(
        ValueError, match=r"g\.csv: series 'series' has gaps: 1 missing time steps, the first at 3"
    ):
        read_long(gap)
    nan = _write(tmp_path / "n.csv", "ds,y\n1,1\n2,NA\n3,3\n")
    with pytest.raises(
        ValueError, match=r"missing 'y' at 2: pass allow_missing=True .*cell='grud'"
    ):
        read_long(nan)
    assert np.isnan(read_long(nan, allow_missing=True).series[0].y[1])


@pytest.mark.parametrize(
    ("text", "kwargs", "pattern"),
    [
        ("ds,y\n1,1\n2,abc\n", {}, r"row 3, column 'y': expected a number, got 'abc'"),
        ("ds,value\n1,1\n", {}, r"has no column 'y'; the long format needs unique_id, ds, y"),
        ("ds,y\n1,1\nlater,2\n", {}, r"row 3, column 'ds': expected an integer time step"),
        ("ds,y\n2024-01-01,1\nlater,2\n", {}, r"row 3, column 'ds': expected a date/time"),
        (
            "ds,y,p\n1,1,\n2,2,3\n",
            {"covariates": ["p"]},
            r"row 2, covariate column 'p': expected a finite",
        ),
        ("ds,y\n1,inf\n", {}, r"row 2, column 'y': infinite value"),
        (
            "ds,y,s\n1,1,1\n2,2,2\n",
            {"static": ["s"]},
            r"static column 's' changes within series 'series'",
        ),
        ("ds,y\n", {}, r"has no data rows"),
    ],
)
def test_long_format_errors_name_the_row_and_column(
    tmp_path: Path, text: str, kwargs: dict[str, object], pattern: str
) -> None:
    with pytest.raises(ValueError, match=pattern):
        read_long(_write(tmp_path / "bad.csv", text), **kwargs)  # type: ignore[arg-type]


def test_long_format_argument_types() -> None:
    with pytest.raises(TypeError, match=r"data must be a CSV path or a pandas DataFrame, got 3"):
        read_long(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"covariates must be a list of column names"):
        read_long(_frame(), covariates=[1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"no such.*|does not exist"):
        read_long("/nonexistent/file.csv")


M4_TRAIN = '"V1","V2","V3","V4","V5"\n"W1","1","2","3","4"\n"W2","5","6","",""\n'
M4_TEST = '"V1","V2","V3"\n"W1","5","6"\n"W2","7","8"\n'


def test_m4_train_and_test_files(tmp_path: Path) -> None:
    train_path = _write(tmp_path / "Weekly-train.csv", M4_TRAIN)
    test_path = _write(tmp_path / "Weekly-test.csv", M4_TEST)
    assert detect_format(train_path) == "m4"
    train, test = read_m4(train_path, test_path)
    assert test is not None and train.ids == test.ids == ["W1", "W2"]
    np.testing.assert_array_equal(train.series[1].y, [5.0, 6.0])  # trailing empty cells dropped
    np.testing.assert_array_equal(test.series[1].ds, [2, 3])  # follows the training steps
    np.testing.assert_array_equal(test.series[0].y, [5.0, 6.0])
    data, actual = read_series(train_path, test=test_path)
    assert actual is not None and len(actual.series[0]) == 2 and data.ids == ["W1", "W2"]


def test_m4_errors(tmp_path: Path) -> None:
    inner = _write(tmp_path / "a.csv", '"V1","V2","V3","V4"\n"W1","1","","3"\n')
    with pytest.raises(
        ValueError,
        match=r"a\.csv: row 2, column 3 \(series 'W1'\): expected a number, got an empty cell",
    ):
        read_m4(inner)
    train = _write(tmp_path / "t.csv", M4_TRAIN)
    other = _write(tmp_path / "o.csv", '"V1","V2"\n"W1","5"\n"W9","7"\n')
    with pytest.raises(ValueError, match=r"different series: 'W9' is in .*o\.csv but not in"):
        read_m4(train, other)
    twice = _write(tmp_path / "w.csv", '"V1","V2"\n"W1","5"\n"W1","7"\n')
    with pytest.raises(ValueError, match=r"row 3: series 'W1' appears twice"):
        read_m4(twice)


def test_single_column_with_and_without_header(tmp_path: Path) -> None:
    plain = read_single_column(_write(tmp_path / "plain.csv", "1\n2\n3.5\n"))
    np.testing.assert_array_equal(plain.series[0].y, [1.0, 2.0, 3.5])
    assert plain.ids == ["plain"] and detect_format(tmp_path / "plain.csv") == "column"
    named = read_single_column(_write(tmp_path / "n.csv", "t,v\n0,4\n1,5\n"), column="v")
    np.testing.assert_array_equal(named.series[0].y, [4.0, 5.0])
    with pytest.raises(ValueError, match=r"has 2 columns \(t, v\): name one with column="):
        read_single_column(tmp_path / "n.csv")
    with pytest.raises(ValueError, match=r"bad\.csv: row 3, column 1: expected a number, got 'x'"):
        read_single_column(_write(tmp_path / "bad.csv", "value\n1\nx\n"))
    with pytest.raises(
        ValueError, match=r"row 2, column 1: missing value; pass allow_missing=True"
    ):
        read_single_column(_write(tmp_path / "m.csv", "1\nNA\n3\n"))
    missing = read_single_column(tmp_path / "m.csv", allow_missing=True)
    np.testing.assert_array_equal(missing.series[0].y, [1.0, np.nan, 3.0])


def test_single_column_test_file_continues_the_series(tmp_path: Path) -> None:
    data, test = read_series(
        _write(tmp_path / "h.csv", "1\n2\n3\n"), test=_write(tmp_path / "f.csv", "4\n5\n")
    )
    assert test is not None and test.ids == data.ids == ["h"]
    np.testing.assert_array_equal(test.series[0].ds, [3, 4])


def test_split_last_and_a_horizon_longer_than_the_series() -> None:
    data = read_long(_frame())
    history, holdout = split_last(data, 2)
    assert [len(s) for s in history.series] == [2, 1]
    np.testing.assert_array_equal(holdout.series[1].y, [20.0, 30.0])
    with pytest.raises(ValueError, match=r"horizon 3 is longer than series 'B' .*\(3 steps\)"):
        split_last(data, 3)
