"""Readers for the file formats the tasks train on: plain text, CSV time series, CoNLL-U.

Each reader checks what it reads and, when something is wrong, says where: the file, the row or
line, the column, what it expected and what it found. A typo in a column name or a stray ``n/a``
in row 40,112 should cost a glance at one message, not an afternoon with a debugger.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from .. import _checks

__all__ = ["SeriesTable", "read_conllu", "read_csv_series", "read_text"]

PathLike = str | os.PathLike[str]

#: Cell spellings read as a missing value by :func:`read_csv_series` (compared case-insensitively
#: after stripping spaces).
MISSING_CELLS = frozenset({"", "na", "n/a", "nan", "null", "none"})


def _path(value: object) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {_checks.describe(value)}")
    path = Path(value)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, expected a file")
    return path


def _read_utf8(path: Path) -> str:
    """The file's text; a leading byte-order mark is dropped, invalid UTF-8 is reported with its
    line number and byte offset."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path}, line {line}: not valid UTF-8 (byte {raw[err.start]:#04x} at offset "
            f"{err.start}); re-encode the file as UTF-8"
        ) from None


def read_text(path: PathLike) -> str:
    """The whole UTF-8 text of ``path`` (a leading byte-order mark is dropped).

    An empty file raises ``ValueError`` naming it: a language model trained on nothing fails much
    later and much less clearly.
    """
    p = _path(path)
    text = _read_utf8(p)
    if not text:
        raise ValueError(f"{p} is empty: expected UTF-8 text")
    return text


class SeriesTable(NamedTuple):
    """What :func:`read_csv_series` returns: ``values`` ``(rows, len(columns))``, the raw
    ``times`` strings (None without ``time_column``; parsing dates is left to the caller, who
    knows their format) and the ``columns`` in the order of ``values``."""

    values: Tensor
    times: list[str] | None
    columns: tuple[str, ...]


def read_csv_series(
    path: PathLike,
    value_columns: str | Sequence[str],
    time_column: str | None = None,
    *,
    delimiter: str = ",",
    allow_missing: bool = False,
    dtype: torch.dtype = torch.float32,
) -> SeriesTable:
    """Numeric columns of a CSV file with a header row, as a ``(rows, columns)`` tensor.

    ``value_columns`` names the columns to read (one name or a list), ``time_column`` an optional
    column returned as strings. Header names are compared after stripping spaces. Blank lines
    are skipped. Rows are numbered as lines of the file, the header being row 1 when it is the
    first line.

    Errors (``ValueError``) name the file, the row and the column: a missing column (with the list
    of those available), a row with the wrong number of fields, a cell that is not a number, an
    infinite value, a missing one (empty, ``NA``, ``n/a``, ``NaN``, ``null``, ``None``) unless
    ``allow_missing=True``, where it becomes NaN, and a file with no data rows.
    """
    p = _path(path)
    if isinstance(value_columns, str):
        value_columns = [value_columns]
    if not isinstance(value_columns, Sequence) or not all(
        isinstance(c, str) for c in value_columns
    ):
        raise TypeError(
            f"value_columns must be a column name or a list of names, "
            f"got {_checks.describe(value_columns)}"
        )
    if not value_columns:
        raise ValueError("value_columns must name at least one column, got an empty list")
    if time_column is not None and not isinstance(time_column, str):
        raise TypeError(
            f"time_column must be a column name or None, got {_checks.describe(time_column)}"
        )
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ValueError(f"delimiter must be one character, got {_checks.describe(delimiter)}")
    allow_missing = _checks.boolean("allow_missing", allow_missing)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")

    text = _read_utf8(p)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    header_row = 0
    rows: list[list[float]] = []
    times: list[str] = []
    positions: list[int] = []
    wanted = list(value_columns) + ([time_column] if time_column is not None else [])
    try:
        for record in reader:
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # blank line
            if header is None:
                header = [name.strip() for name in record]
                header_row = reader.line_num
                missing = [c for c in wanted if c not in header]
                if missing:
                    raise ValueError(
                        f"{p}, row {header_row} (header): no column {missing[0]!r}; "
                        f"the columns are {header}"
                    )
                repeated = [c for c in wanted if header.count(c) > 1]
                if repeated:
                    raise ValueError(
                        f"{p}, row {header_row} (header): the column name {repeated[0]!r} "
                        "appears more than once, so it is ambiguous"
                    )
                positions = [header.index(c) for c in value_columns]
                continue
            row = reader.line_num
            if len(record) != len(header):
                raise ValueError(
                    f"{p}, row {row}: expected {len(header)} fields like the header, "
                    f"got {len(record)}"
                )
            values = []
            for name, k in zip(value_columns, positions, strict=True):
                values.append(_cell(p, row, name, k, record[k], allow_missing))
            rows.append(values)
            if time_column is not None:
                times.append(record[header.index(time_column)])
    except csv.Error as err:
        raise ValueError(f"{p}, row {reader.line_num}: malformed CSV: {err}") from None
    if header is None:
        raise ValueError(f"{p} is empty: expected a header row and data rows")
    if not rows:
        raise ValueError(f"{p} has a header (row {header_row}) but no data rows")
    values_tensor = torch.tensor(rows, dtype=torch.float64).to(dtype)
    return SeriesTable(
        values_tensor, times if time_column is not None else None, tuple(value_columns)
    )


def _cell(path: Path, row: int, name: str, k: int, cell: str, allow_missing: bool) -> float:
    where = f"{path}, row {row}, column {name!r} (field {k + 1})"
    if cell.strip().lower() in MISSING_CELLS:
        if allow_missing:
            return math.nan
        raise ValueError(
            f"{where}: missing value {cell!r}; pass allow_missing=True to read it as NaN"
        )
    try:
        value = float(cell)
    except ValueError:
        raise ValueError(f"{where}: expected a number, got {cell!r}") from None
    if math.isinf(value):
        raise ValueError(f"{where}: the value {cell!r} is infinite")
    return value


_RANGE = re.compile(r"^[1-9][0-9]*-[1-9][0-9]*$")
_EMPTY_NODE = re.compile(r"^[0-9]+\.[1-9][0-9]*$")
_ID = re.compile(r"^[1-9][0-9]*$")


#: The CoNLL-U columns a tag can be read from, with their field index.
CONLLU_COLUMNS = {"upos": 3, "xpos": 4}


def read_conllu(path: PathLike, column: str = "upos") -> list[list[tuple[str, str]]]:
    """Sentences of a CoNLL-U file (Universal Dependencies) as lists of ``(form, tag)``, the tag
    from ``column``: ``'upos'`` (the universal tags, the default) or ``'xpos'`` (the treebank's
    own, such as the Penn tags of English-EWT).

    Comment lines (``#``), multiword-token lines (ID ``1-2``: the surface token, whose words
    follow on their own lines) and empty nodes (ID ``1.1``, enhanced-graph nodes with no
    surface word) are skipped; a blank line ends a sentence. A line without the 10
    tab-separated fields, a malformed ID, word IDs that do not count 1, 2, 3, ... within a
    sentence, an empty FORM or tag, or a tag of ``_`` (not annotated: a tagger trained on it
    would learn to predict "no annotation") raises ``ValueError`` naming the file and the line.
    """
    column = _checks.choice("column", column, tuple(CONLLU_COLUMNS))
    field = CONLLU_COLUMNS[column]
    p = _path(path)
    text = _read_utf8(p)
    sentences: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    # split on "\n" only: str.splitlines would also split inside a FORM at U+2028 and friends
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.strip():
            if current:
                sentences.append(current)
                current = []
            continue
        if line.startswith("#"):
            continue
        fields = line.split("\t")
        where = f"{p}, line {number}"
        if len(fields) != 10:
            raise ValueError(
                f"{where}: expected 10 tab-separated fields (ID FORM LEMMA UPOS XPOS FEATS HEAD "
                f"DEPREL DEPS MISC), got {len(fields)}: {line[:80]!r}"
            )
        token_id, form, tag = fields[0], fields[1], fields[field]
        if _RANGE.match(token_id) or _EMPTY_NODE.match(token_id):
            continue
        if not _ID.match(token_id):
            raise ValueError(
                f"{where}: the ID must be a word index (1, 2, ...), a range (1-2) or an empty "
                f"node (1.1), got {token_id!r}"
            )
        if int(token_id) != len(current) + 1:
            raise ValueError(
                f"{where}: expected word ID {len(current) + 1} (IDs count from 1 within a "
                f"sentence; is a blank line missing?), got {token_id}"
            )
        if not form:
            raise ValueError(f"{where}: the FORM field (word {token_id}) is empty")
        if not tag or tag == "_":
            raise ValueError(
                f"{where}: the {column.upper()} field (word {token_id}) is "
                f"{'empty' if not tag else repr(tag) + ' (not annotated)'}"
            )
        current.append((form, tag))
    if current:
        sentences.append(current)
    if not sentences:
        raise ValueError(f"{p} holds no sentences: expected CoNLL-U token lines")
    return sentences
