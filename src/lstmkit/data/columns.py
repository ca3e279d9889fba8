"""Readers for token-per-line tagged text: CoNLL-2003-style column files and CoNLL-U.

Sequence-labelling corpora come in two layouts. CoNLL-2003 and its relatives (CoNLL-2000
chunking, WNUT, many NER sets) put one token per line with whitespace- or tab-separated columns
(``EU NNP B-NP B-ORG``), a blank line after each sentence and sometimes ``-DOCSTART-`` lines
between documents; which column holds the tag depends on the corpus, so it is chosen by index.
CoNLL-U (Universal Dependencies) has ten tab-separated fields, with UPOS and XPOS as two
different tag sets. :func:`lstmkit.data.read_conllu` reads UPOS only; :func:`read_conllu_tags`
reads either.

Every reader returns sentences as lists of ``(token, tag)`` pairs and raises ``ValueError`` with
the file and the line number for a malformed line, so that one bad line among 200,000 is found
from the message alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import _checks
from .readers import _EMPTY_NODE, _ID, _RANGE, PathLike, _path, _read_utf8

__all__ = ["CONLLU_COLUMNS", "read_columns", "read_conllu_tags", "read_tagged"]

Sentence = list[tuple[str, str]]

#: The tag columns of CoNLL-U that :func:`read_conllu_tags` reads, by name: field index.
CONLLU_COLUMNS = {"upos": 3, "xpos": 4}
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
    (``'upos'``, the universal tags, or ``'xpos'``, the treebank's own, such as the Penn tags of
    English-EWT).

    As :func:`lstmkit.data.read_conllu`: comments, multiword-token lines (``1-2``) and empty nodes
    (``1.1``) are skipped, and a line without 10 tab-separated fields, a malformed ID, IDs that do
    not count 1, 2, 3 ... within a sentence, or an empty FORM or tag raises ``ValueError`` with
    the file and the line. A tag of ``_`` (not annotated) is an error too: a tagger trained on
    ``_`` would learn to predict "no annotation".
    """
    column = _checks.choice("column", column, tuple(CONLLU_COLUMNS))
    field = CONLLU_COLUMNS[column]
    p = _path(path)
    text = _read_utf8(p)
    sentences: list[Sentence] = []
    current: Sentence = []
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
