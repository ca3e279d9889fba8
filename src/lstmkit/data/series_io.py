"""Readers for forecasting data: long-format tables, M4-style wide CSVs and single-column CSVs.

Every reader returns a :class:`SeriesSet`: a list of :class:`Series` (an id, its time stamps, its
values, optional time-varying covariates and static features) and the sampling frequency. The
long format is the one neuralforecast uses, one row per (series, time step)::

    unique_id,ds,y,price,store_size
    A,2024-01-01,10.5,1.2,300
    A,2024-01-02,11.0,1.3,300

``covariates=["price"]`` names time-varying columns (known in advance: at forecast time they are
needed for the horizon too), ``static=["store_size"]`` names columns that are constant within a
series. Columns named in neither are ignored.

Checks, with errors that name the file (or DataFrame), the series, the row and the column:

* time stamps must increase within a series: unsorted ones are refused unless ``sort=True``;
  duplicated ones are always refused (two values for one time step is a data error);
* gaps (a missing time step, found from ``freq`` or inferred from the data) are refused unless
  ``fill_gaps=True``, which inserts the missing steps with a NaN value;
* NaN values are refused unless ``allow_missing=True``: only a model that reads missingness
  (the forecaster with ``cell='grud'``, GRU-D) can learn from them;
* covariates must be finite and static features constant within each series.
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import _checks

__all__ = [
    "Series",
    "SeriesSet",
    "read_long",
    "read_m4",
    "read_series",
    "read_single_column",
    "split_last",
]

MISSING = {"", "na", "n/a", "nan", "null", "none"}


@dataclass(frozen=True)
class Series:
    """One series: ``ds`` (``(L,)`` ``datetime64[ns]`` or ``int64``), ``y`` (``(L,)`` float64, NaN
    where missing), ``covariates`` (``(L, C)`` float64 or None) and ``static`` (``(S,)``)."""

    unique_id: str
    ds: np.ndarray
    y: np.ndarray
    covariates: np.ndarray | None = None
    static: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class SeriesSet:
    """Many series with the same covariates: what the forecaster and the baselines take.

    ``freq`` is a pandas offset alias (``'W-SUN'``, ``'D'``, ``'h'`` ...) for datetime stamps, or
    None for integer stamps (M4 files, single-column CSVs), which step by 1.
    """

    series: list[Series]
    freq: str | None = None
    covariate_names: tuple[str, ...] = ()
    static_names: tuple[str, ...] = ()
    source: str = "data"
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.series)

    @property
    def ids(self) -> list[str]:
        return [s.unique_id for s in self.series]

    def values(self) -> list[np.ndarray]:
        return [s.y for s in self.series]

    def has_missing(self) -> bool:
        return any(bool(np.isnan(s.y).any()) for s in self.series)

    def future_ds(self, index: int, horizon: int) -> np.ndarray:
        """The ``horizon`` time stamps after the end of series ``index``."""
        last = self.series[index].ds[-1]
        if self.freq is None:
            return np.arange(int(last) + 1, int(last) + 1 + horizon, dtype=np.int64)
        stamps = pd.date_range(pd.Timestamp(last), periods=horizon + 1, freq=self.freq)[1:]
        return stamps.values.astype("datetime64[ns]")

    def to_frame(self) -> pd.DataFrame:
        """The long format again: ``unique_id, ds, y`` and the covariate and static columns."""
        frames = []
        for s in self.series:
            part: dict[str, Any] = {"unique_id": s.unique_id, "ds": s.ds, "y": s.y}
            for j, name in enumerate(self.covariate_names):
                assert s.covariates is not None
                part[name] = s.covariates[:, j]
            for j, name in enumerate(self.static_names):
                assert s.static is not None
                part[name] = s.static[j]
            frames.append(pd.DataFrame(part))
        return pd.concat(frames, ignore_index=True)


def split_last(data: SeriesSet, horizon: int) -> tuple[SeriesSet, SeriesSet]:
    """``(history, holdout)``: each series without and with only its last ``horizon`` steps.

    Raises ``ValueError`` naming the first series not longer than ``horizon``: it would leave no
    history to forecast from.
    """
    horizon = _checks.positive_int("horizon", horizon)
    heads, tails = [], []
    for s in data.series:
        if len(s) <= horizon:
            raise ValueError(
                f"horizon {horizon} is longer than series {s.unique_id!r} of {data.source} "
                f"({len(s)} steps): holding out the horizon needs at least {horizon + 1} steps"
            )
        cut = len(s) - horizon
        cov = s.covariates
        heads.append(
            replace(s, ds=s.ds[:cut], y=s.y[:cut], covariates=None if cov is None else cov[:cut])
        )
        tails.append(
            replace(s, ds=s.ds[cut:], y=s.y[cut:], covariates=None if cov is None else cov[cut:])
        )
    return replace(data, series=heads), replace(data, series=tails)


# ---------------------------------------------------------------------- long format
def _names(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError(f"{name} must be a list of column names, got {_checks.describe(value)}")


def _parse_ds(column: pd.Series, where: str) -> tuple[np.ndarray, bool]:
    """Time stamps as int64 (when every one is an integer) or datetime64[ns]."""
    if pd.api.types.is_integer_dtype(column):
        return column.to_numpy(np.int64), False
    if pd.api.types.is_datetime64_any_dtype(column):
        return column.to_numpy("datetime64[ns]"), True
    text = column.astype(str).str.strip()
    as_int = pd.to_numeric(text, errors="coerce")
    integral = as_int.notna() & (as_int == as_int.round())
    if integral.iloc[0]:  # the first stamp decides: integer steps
        bad = (~integral).to_numpy().nonzero()[0]
        kind = "an integer time step (like the first row)"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # dateutil fallback notice
            parsed = pd.to_datetime(text, errors="coerce")
        bad = parsed.isna().to_numpy().nonzero()[0]
        kind = "a date/time (like the first row)"
    if len(bad):
        row = int(bad[0])
        raise ValueError(
            f"{where}: row {row + 2}, column 'ds': expected {kind}, got {text.iloc[row]!r}"
        )
    if integral.iloc[0]:
        return as_int.to_numpy(np.int64), False
    return parsed.to_numpy("datetime64[ns]"), True


def _numbers(frame: pd.DataFrame, column: str, where: str) -> np.ndarray:
    raw = frame[column]
    if pd.api.types.is_numeric_dtype(raw):
        return raw.to_numpy(np.float64)
    text = raw.astype(str).str.strip()
    values = pd.to_numeric(text, errors="coerce")
    bad = values.isna() & ~text.str.lower().isin(MISSING) & raw.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(
            f"{where}: row {row + 2}, column {column!r}: expected a number, got {text.iloc[row]!r}"
        )
    return values.to_numpy(np.float64)


def _infer_freq(stamps: list[np.ndarray], where: str) -> str:
    longest = max(stamps, key=len)
    if len(longest) < 3:
        raise ValueError(
            f"{where}: cannot infer the frequency from series of fewer than 3 steps; pass freq"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas 3 announces an offset return type
        freq = pd.infer_freq(pd.DatetimeIndex(longest))
    if freq is None:
        # gaps defeat infer_freq: take the most common step of the longest series
        step = pd.Series(np.diff(longest)).mode().iloc[0]
        offset = pd.tseries.frequencies.to_offset(pd.Timedelta(step))
        assert offset is not None
        freq = offset.freqstr
    return str(freq)


def read_long(
    data: str | os.PathLike[str] | pd.DataFrame,
    *,
    covariates: Sequence[str] | str | None = None,
    static: Sequence[str] | str | None = None,
    freq: str | None = None,
    sort: bool = False,
    fill_gaps: bool = False,
    allow_missing: bool = False,
) -> SeriesSet:
    """Series from a long-format CSV file or DataFrame with ``unique_id``, ``ds`` and ``y``.

    A CSV without ``unique_id`` holds one series (id ``'series'``). ``ds`` is a date/time or an
    integer step. ``freq`` (a pandas alias) is inferred from the longest series when not given.
    Row numbers in errors are the file's lines (the header is row 1).
    """
    sort = _checks.boolean("sort", sort)
    fill_gaps = _checks.boolean("fill_gaps", fill_gaps)
    allow_missing = _checks.boolean("allow_missing", allow_missing)
    cov_names = _names("covariates", covariates)
    static_names = _names("static", static)
    if isinstance(data, pd.DataFrame):
        frame, where = data.reset_index(drop=True), "DataFrame"
    elif isinstance(data, (str, os.PathLike)):
        where = str(data)
        try:
            frame = pd.read_csv(data, dtype=str, keep_default_na=False, skipinitialspace=True)
        except FileNotFoundError:
            raise ValueError(f"data file {where} does not exist") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise ValueError(f"{where} is not a readable CSV file: {exc}") from None
        frame.columns = [str(c).strip() for c in frame.columns]
    else:
        raise TypeError(
            f"data must be a CSV path or a pandas DataFrame, got {_checks.describe(data)}"
        )
    if freq is not None and not isinstance(freq, str):
        raise TypeError(f"freq must be a pandas frequency alias or None, got {freq!r}")
    if "unique_id" not in frame.columns:
        frame = frame.assign(unique_id="series")
    needed = ["ds", "y", *cov_names, *static_names]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{where} has no column {missing[0]!r}; the long format needs unique_id, ds, y "
            f"and the named covariates; found {', '.join(map(str, frame.columns))}"
        )
    if len(frame) == 0:
        raise ValueError(f"{where} has no data rows")
    ds_all, is_time = _parse_ds(frame["ds"], where)
    if freq is not None and not is_time:
        raise ValueError(f"freq={freq!r} needs date/time stamps in 'ds', {where} has integers")
    y_all = _numbers(frame, "y", where)
    if np.isinf(y_all).any():
        row = int(np.flatnonzero(np.isinf(y_all))[0])
        raise ValueError(f"{where}: row {row + 2}, column 'y': infinite value")
    cov_all = np.stack([_numbers(frame, c, where) for c in cov_names], 1) if cov_names else None
    stat_all = (
        np.stack([_numbers(frame, c, where) for c in static_names], 1) if static_names else None
    )
    for name, block, names in (
        ("covariate", cov_all, cov_names),
        ("static", stat_all, static_names),
    ):
        if block is not None and not np.isfinite(block).all():
            row, col = (int(i) for i in np.argwhere(~np.isfinite(block))[0])
            raise ValueError(
                f"{where}: row {row + 2}, {name} column {names[col]!r}: expected a finite number, "
                f"got {block[row, col]}"
            )
    ids = frame["unique_id"].astype(str).str.strip().to_numpy()
    order: dict[str, list[int]] = {}
    for i, uid in enumerate(ids):
        order.setdefault(uid, []).append(i)

    per_series: list[tuple[str, np.ndarray]] = []
    for uid, rows_list in order.items():
        rows = np.asarray(rows_list)
        stamps = ds_all[rows]
        diffs = np.diff(stamps)
        if (diffs == diffs.dtype.type(0)).any():
            k = int(np.flatnonzero(diffs == diffs.dtype.type(0))[0])
            raise ValueError(
                f"{where}: series {uid!r} has the time stamp {stamps[k + 1]} twice (rows "
                f"{rows[k] + 2} and {rows[k + 1] + 2}): one value per time step is expected"
            )
        if (diffs < diffs.dtype.type(0)).any():
            if not sort:
                k = int(np.flatnonzero(diffs < diffs.dtype.type(0))[0])
                raise ValueError(
                    f"{where}: series {uid!r} is not sorted by time: row {rows[k + 1] + 2} "
                    f"({stamps[k + 1]}) comes after row {rows[k] + 2} ({stamps[k]}); "
                    "pass sort=True (--sort) to sort it"
                )
            rows = rows[np.argsort(stamps, kind="stable")]
        per_series.append((uid, rows))

    if is_time and freq is None:
        freq = _infer_freq([ds_all[r] for _, r in per_series], where)
    series: list[Series] = []
    for uid, rows in per_series:
        stamps, y = ds_all[rows], y_all[rows]
        cov = None if cov_all is None else cov_all[rows]
        stat = None
        if stat_all is not None:
            block = stat_all[rows]
            varying = np.flatnonzero((block != block[0]).any(axis=0))
            if len(varying):
                changing = static_names[int(varying[0])]
                raise ValueError(
                    f"{where}: static column {changing!r} changes within series {uid!r}; static "
                    "features hold one value per series (use covariates= for changing ones)"
                )
            stat = block[0].copy()
        if is_time:
            assert freq is not None
            full = pd.date_range(pd.Timestamp(stamps[0]), pd.Timestamp(stamps[-1]), freq=freq)
            index = pd.DatetimeIndex(stamps)
            if len(full) != len(index) or not full.equals(index):
                if not index.isin(full).all():
                    k = int(np.flatnonzero(~index.isin(full))[0])
                    raise ValueError(
                        f"{where}: series {uid!r}, row {rows[k] + 2}: time stamp {index[k]} is "
                        f"off the {freq!r} grid that starts at {full[0]}; pass the right freq"
                    )
                stamps, y, cov = _fill(full.values, stamps, y, cov, uid, where, fill_gaps)
        elif len(stamps) > 1 and (np.diff(stamps) != 1).any():
            full_int = np.arange(int(stamps[0]), int(stamps[-1]) + 1, dtype=np.int64)
            stamps, y, cov = _fill(full_int, stamps, y, cov, uid, where, fill_gaps)
        if not allow_missing and np.isnan(y).any():
            k = int(np.flatnonzero(np.isnan(y))[0])
            raise ValueError(
                f"{where}: series {uid!r} has a missing 'y' at {stamps[k]}: pass "
                "allow_missing=True and train with cell='grud' (--cell grud), which models "
                "missing values, or fill them before"
            )
        series.append(Series(uid, np.asarray(stamps), y, cov, stat))
    return SeriesSet(series, freq if is_time else None, cov_names, static_names, where)


def _fill(
    full: np.ndarray,
    stamps: np.ndarray,
    y: np.ndarray,
    cov: np.ndarray | None,
    uid: str,
    where: str,
    fill_gaps: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    present = np.isin(full, stamps)
    if not fill_gaps:
        first = full[int(np.flatnonzero(~present)[0])]
        raise ValueError(
            f"{where}: series {uid!r} has gaps: {int((~present).sum())} missing time steps, "
            f"the first at {first}; pass fill_gaps=True (--fill-gaps) to insert them as missing "
            "values (then allow_missing=True and cell='grud')"
        )
    if cov is not None:
        raise ValueError(
            f"{where}: series {uid!r} has gaps and covariates: the covariates of the missing "
            "steps are unknown; fill the gaps in the file"
        )
    out = np.full(len(full), np.nan)
    out[present] = y
    return full, out, None


# ---------------------------------------------------------------------- M4 and single column
def _read_rows(path: str | os.PathLike[str]) -> list[list[str]]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"data file {p} does not exist") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p} is not UTF-8 text: {exc}") from None
    return list(csv.reader(io.StringIO(text, newline="")))


def _wide_rows(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    rows = _read_rows(path)
    if len(rows) < 2:
        raise ValueError(
            f"{path} has no data rows (an M4 file has a header row, then one row per series)"
        )
    out: dict[str, np.ndarray] = {}
    for r, record in enumerate(rows[1:], start=2):
        if not record or not record[0].strip():
            continue
        uid = record[0].strip()
        cells = [c.strip() for c in record[1:]]
        while cells and cells[-1].lower() in MISSING:
            cells.pop()  # series end: the rest of the row is empty
        if not cells:
            raise ValueError(f"{path}: row {r} (series {uid!r}) has no values")
        values = np.empty(len(cells))
        for c, cell in enumerate(cells):
            try:
                values[c] = float(cell)
            except ValueError:
                what = "an empty cell inside the series" if cell.lower() in MISSING else repr(cell)
                raise ValueError(
                    f"{path}: row {r}, column {c + 2} (series {uid!r}): expected a number, "
                    f"got {what}"
                ) from None
            if not math.isfinite(values[c]):
                raise ValueError(
                    f"{path}: row {r}, column {c + 2} (series {uid!r}): not finite ({cell})"
                )
        if uid in out:
            raise ValueError(f"{path}: row {r}: series {uid!r} appears twice")
        out[uid] = values
    return out


def read_m4(
    train: str | os.PathLike[str], test: str | os.PathLike[str] | None = None
) -> tuple[SeriesSet, SeriesSet | None]:
    """An M4 training file (``"V1","V2",...`` header, then the id and the values of one series per
    row, empty cells after its end) and, optionally, its test file (the next values of each
    series). Time stamps are integer steps; the test file's follow on from the training file's.
    Returns ``(train, test)``, ``test`` None when no test file is given."""
    train_rows = _wide_rows(train)
    train_set = SeriesSet(
        [Series(uid, np.arange(len(v), dtype=np.int64), v) for uid, v in train_rows.items()],
        None,
        source=str(train),
    )
    if test is None:
        return train_set, None
    test_rows = _wide_rows(test)
    unknown = [u for u in test_rows if u not in train_rows]
    absent = [u for u in train_rows if u not in test_rows]
    if unknown or absent:
        detail = (
            f"{unknown[0]!r} is in {test} but not in {train}"
            if unknown
            else f"{absent[0]!r} is in {train} but not in {test}"
        )
        raise ValueError(f"the M4 training and test files hold different series: {detail}")
    lengths = {len(v) for v in test_rows.values()}
    if len(lengths) != 1:
        raise ValueError(
            f"{test}: every series needs the same horizon, got lengths {sorted(lengths)}"
        )
    test_set = SeriesSet(
        [
            Series(uid, np.arange(len(train_rows[uid]), len(train_rows[uid]) + len(v)), v)
            for uid, v in ((u, test_rows[u]) for u in train_rows)
        ],
        None,
        source=str(test),
    )
    return train_set, test_set


def read_single_column(
    path: str | os.PathLike[str], *, column: str | None = None, allow_missing: bool = False
) -> SeriesSet:
    """One series from a CSV with one value per line, with or without a header (a first line
    that is not a number is a header). ``column`` picks a named column of a wider file. The
    series' id is the file's stem; time stamps are integer steps."""
    allow_missing = _checks.boolean("allow_missing", allow_missing)
    rows = _read_rows(path)
    rows_numbered = [(i + 1, r) for i, r in enumerate(rows) if r and any(c.strip() for c in r)]
    if not rows_numbered:
        raise ValueError(f"{path} has no data rows")
    col = 0
    _, first = rows_numbered[0]
    header = None
    try:
        float(first[0])
    except ValueError:
        header = [c.strip() for c in first]
        rows_numbered = rows_numbered[1:]
    if column is not None:
        if header is None or column not in header:
            raise ValueError(
                f"{path} has no column {column!r}; found "
                f"{', '.join(header) if header else 'no header row'}"
            )
        col = header.index(column)
    elif header is not None and len(header) > 1:
        raise ValueError(
            f"{path} has {len(header)} columns ({', '.join(header)}): name one with column="
        )
    values = np.empty(len(rows_numbered))
    for k, (line, record) in enumerate(rows_numbered):
        cell = record[col].strip() if col < len(record) else ""
        if cell.lower() in MISSING:
            if not allow_missing:
                raise ValueError(
                    f"{path}: row {line}, column {col + 1}: missing value; pass "
                    "allow_missing=True and train with cell='grud' to model it"
                )
            values[k] = np.nan
            continue
        try:
            values[k] = float(cell)
        except ValueError:
            raise ValueError(
                f"{path}: row {line}, column {col + 1}: expected a number, got {cell!r}"
            ) from None
        if math.isinf(values[k]):
            raise ValueError(f"{path}: row {line}, column {col + 1}: infinite value")
    if not len(values):
        raise ValueError(f"{path} has a header but no values")
    series = Series(Path(path).stem, np.arange(len(values), dtype=np.int64), values)
    return SeriesSet([series], None, source=str(path))


FORMATS = ("auto", "long", "m4", "column")


def detect_format(path: str | os.PathLike[str]) -> str:
    """``'m4'`` for a header of ``V1, V2, ...``, ``'long'`` for one with ``ds`` and ``y``,
    ``'column'`` otherwise."""
    rows = _read_rows(path)
    header = [c.strip() for c in rows[0]] if rows else []
    if header[:2] == ["V1", "V2"]:
        return "m4"
    if "ds" in header and "y" in header:
        return "long"
    return "column"


def read_series(
    path: str | os.PathLike[str],
    *,
    format: str = "auto",
    test: str | os.PathLike[str] | None = None,
    **options: Any,
) -> tuple[SeriesSet, SeriesSet | None]:
    """Any of the three layouts, chosen by ``format`` (``'auto'`` looks at the header), and an
    optional test file in the same layout: ``(data, test)``. ``options`` go to :func:`read_long`
    (``covariates``, ``static``, ``freq``, ``sort``, ``fill_gaps``, ``allow_missing``)."""
    _checks.choice("format", format, FORMATS)
    kind = detect_format(path) if format == "auto" else format
    if kind == "m4":
        return read_m4(path, test)
    if kind == "column":
        data = read_single_column(path, allow_missing=bool(options.get("allow_missing", False)))
        if test is None:
            return data, None
        (head,), (tail,) = data.series, read_single_column(test).series
        start = int(head.ds[-1]) + 1
        tail = replace(tail, unique_id=head.unique_id, ds=np.arange(start, start + len(tail)))
        return data, replace(data, series=[tail], source=str(test))
    data = read_long(path, **options)
    if test is None:
        return data, None
    test_options = {k: v for k, v in options.items() if k != "fill_gaps"}
    test_options.setdefault("freq", data.freq)
    return data, read_long(test, **test_options)
