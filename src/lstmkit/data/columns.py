"""Readers for token-per-line tagged text: CoNLL-2003-style column files and CoNLL-U.

Sequence-labelling corpora come in two layouts. CoNLL-2003 and its relatives (CoNLL-2000
chunking, WNUT, many NER sets) put one token per line with whitespace- or tab-separated columns
(``EU NNP B-NP B-ORG``), a blank line after each sentence and sometimes ``-DOCSTART-`` lines
between documents; which column holds the tag depends on the corpus, so it is chosen by index.
CoNLL-U (Universal Dependencies) has ten tab-separated fields, with UPOS and XPOS as two
different tag sets. :func:`read_conllu_tags` reads either (it is
:func:`lstmkit.data.read_conllu`, under the name that sits beside the other readers here).

Every reader returns sentences as lists of ``(token, tag)`` pairs and raises ``ValueError`` with
the file and the line number for a malformed line, so that one bad line among 200,000 is found
from the message alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import _checks
from .readers import CONLLU_COLUMNS, PathLike, _path, _read_utf8, read_conllu

__all__ = ["CONLLU_COLUMNS", "read_columns", "read_conllu_tags", "read_tagged"]

Sentence = list[tuple[str, str]]

DOCSTART = "-DOCSTART-"


def _column_index(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be an int (a column index, negative from the end), got "
            f"{_checks.describe(value)}"
        )
    return value


def read_columns(
    path: PathLike,
    token_column: int = 0,
    tag_column: int = -1,
    *,
    delimiter: str | None = None,
    skip_docstart: bool = True,
) -> list[Sentence]:
    """Sentences of a CoNLL-2003-style column file as lists of ``(token, tag)``.

    One token per line; ``token_column`` and ``tag_column`` pick the fields (counting from 0,
    negative from the end, so the default ``-1`` is the last column, where CoNLL-2003 keeps its
    NER tag). ``delimiter=None`` splits on runs of whitespace, as CoNLL-2003 is written; give
    ``"\\t"`` for tab-separated files whose tokens may contain spaces. Blank lines end sentences;
    ``-DOCSTART-`` lines (document separators, not tokens) are dropped with
    ``skip_docstart=True``.

    Every token line must have as many fields as the first one: a line with a different count is
    almost always a token with a stray space or a lost column, and guessing which field is the
    tag would silently mislabel it. Errors name the file and the line.
    """
    token_column = _column_index("token_column", token_column)
    tag_column = _column_index("tag_column", tag_column)
    if delimiter is not None and (not isinstance(delimiter, str) or not delimiter):
        raise TypeError(
            f"delimiter must be None (any whitespace) or a non-empty str, got "
            f"{_checks.describe(delimiter)}"
        )
    skip_docstart = _checks.boolean("skip_docstart", skip_docstart)
    p = _path(path)
    text = _read_utf8(p)
    sentences: list[Sentence] = []
    current: Sentence = []
    width: tuple[int, int] | None = None  # (fields per line, line number that set it)
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.strip():
            if current:
                sentences.append(current)
                current = []
            continue
        fields = line.split(delimiter) if delimiter is not None else line.split()
        where = f"{p}, line {number}"
        if skip_docstart and fields[0] == DOCSTART:
            if current:
                sentences.append(current)
                current = []
            continue
        if width is None:
            for name, index in (("token_column", token_column), ("tag_column", tag_column)):
                if not -len(fields) <= index < len(fields):
                    raise ValueError(
                        f"{where}: {name}={index} is out of range: the line has {len(fields)} "
                        f"fields {fields[:6]!r}"
                    )
            width = (len(fields), number)
        elif len(fields) != width[0]:
            raise ValueError(
                f"{where}: expected {width[0]} fields like line {width[1]}, got {len(fields)}: "
                f"{line[:80]!r}"
            )
        token, tag = fields[token_column].strip(), fields[tag_column].strip()
        if not token or not tag:
            which = f"token (column {token_column})" if not token else f"tag (column {tag_column})"
            raise ValueError(f"{where}: the {which} is empty: {line[:80]!r}")
        current.append((token, tag))
    if current:
        sentences.append(current)
    if not sentences:
        raise ValueError(f"{p} holds no sentences: expected lines of token and tag columns")
    return sentences


def read_conllu_tags(path: PathLike, column: str = "upos") -> list[Sentence]:
    """Sentences of a CoNLL-U file as lists of ``(form, tag)``, the tag from ``column``
    (``'upos'`` or ``'xpos'``): :func:`lstmkit.data.read_conllu`, under the name that sits beside
    :func:`read_columns` and :func:`read_tagged`."""
    return read_conllu(path, column)


def read_tagged(
    path: PathLike,
    *,
    column: str = "upos",
    token_column: int = 0,
    tag_column: int = -1,
    delimiter: str | None = None,
) -> list[Sentence]:
    """Sentences of ``path`` read by its suffix: ``.conllu`` with :func:`read_conllu_tags`
    (``column``), anything else as a column file with :func:`read_columns` (``token_column``,
    ``tag_column``, ``delimiter``). One entry point lets a command take either format."""
    p = _path(path)
    if Path(p).suffix.lower() == ".conllu":
        return read_conllu_tags(p, column)
    return read_columns(p, token_column, tag_column, delimiter=delimiter)
