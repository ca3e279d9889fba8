"""Tokenizers for language models: characters, words, and subwords (BPE or unigram).

A language model predicts ids, so the text must become ids and the ids text again, with the same
mapping at training, evaluation and generation time. Each tokenizer here is therefore trained
once on the training text, then frozen and saved as JSON next to the model
(:meth:`Tokenizer.save` / :func:`load_tokenizer`); nothing is pickled.

* :class:`CharTokenizer`: one id per character (Karpathy's char-rnn, Tiny Shakespeare).
* :class:`WordTokenizer`: whitespace-separated words, one ``<eos>`` per line end (the
  convention of Mikolov's PTB and of Zaremba et al. 2014 / AWD-LSTM), with a minimum count and an
  optional maximum size below which words become ``<unk>``.
* :class:`SubwordTokenizer`: BPE or unigram pieces trained locally with HF ``tokenizers``; the
  HF tokenizer's own JSON is embedded in ours, so any HF tool reads it too.

Conventions shared by all three:

* ``<unk>`` has id 0. Text the vocabulary does not cover (a character never seen, a rare word, a
  character outside the BPE alphabet) encodes to it instead of failing: a prompt typed by a user
  may contain anything.
* Char and word vocabularies are sorted by decreasing training frequency (ties by the token
  itself, so the order is reproducible). Adaptive softmax (Grave et al. 2017) needs exactly this:
  its cutoffs split the ids into a frequent head and rarer tails.
* ``decode_stream(ids)`` turns ids into text pieces one id at a time (for generation that
  prints tokens as they come); ``decode(ids)`` is the concatenation of those pieces.
"""

from __future__ import annotations

import abc
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import _checks

__all__ = [
    "EOS",
    "KINDS",
    "UNK",
    "CharTokenizer",
    "SubwordTokenizer",
    "Tokenizer",
    "WordTokenizer",
    "load_tokenizer",
    "tokenizer_from_dict",
    "train_tokenizer",
]

UNK = "<unk>"
EOS = "<eos>"
FORMAT = "lstmkit-tokenizer"
KINDS = ("char", "word", "bpe", "unigram")
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines() splits on


class Tokenizer(abc.ABC):
    """Text to ids and back; the common interface of every tokenizer of this module."""

    kind: ClassVar[str] = ""

    # ------------------------------------------------------------------ subclass contract
    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """The number of ids, specials included: ids are ``0 .. vocab_size - 1``."""

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """The ids of ``text``; what the vocabulary does not cover becomes ``unk_id``."""

    @abc.abstractmethod
    def token(self, index: int) -> str:
        """The token string of id ``index`` (as stored in the vocabulary)."""

    @abc.abstractmethod
    def decode_stream(self, ids: Iterable[int]) -> Iterator[str]:
        """Text pieces, one per id, whose concatenation is the decoded text."""

    @abc.abstractmethod
    def _payload(self) -> dict[str, Any]:
        """The kind-specific content of :meth:`to_dict`."""

    # ------------------------------------------------------------------ shared
    unk_id: int = 0

    @property
    def start_id(self) -> int:
        """The id a generation starts from when the prompt is empty: the line/sentence break
        where the vocabulary has one (``<eos>``, ``\\n``), else ``<unk>``."""
        return self.unk_id

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``: the concatenation of :meth:`decode_stream`."""
        return "".join(self.decode_stream(ids))

    def encode_tensor(self, text: str) -> Tensor:
        """:meth:`encode` as a 1-D int64 tensor."""
        return torch.tensor(self.encode(text), dtype=torch.long)

    def _check_ids(self, ids: Iterable[int]) -> Iterator[int]:
        for position, index in enumerate(ids):
            i = int(index)
            if not 0 <= i < self.vocab_size:
                raise ValueError(
                    f"ids[{position}] must be an id in [0, {self.vocab_size}), got {index}"
                )
            yield i

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description from which :func:`tokenizer_from_dict` rebuilds this
        tokenizer exactly."""
        return {"format": FORMAT, "kind": self.kind, **self._payload()}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as UTF-8 JSON to ``path`` (atomically: a temporary file, then a
        rename)."""
        target = Path(path)
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")
        os.replace(temporary, target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


# ---------------------------------------------------------------------- vocabularies
def _sorted_vocabulary(
    counts: Counter[str], min_count: int, max_size: int | None, reserved: Sequence[str]
) -> list[str]:
    """``reserved`` first, then the tokens counted at least ``min_count`` times, most frequent
    first (ties by the token), at most ``max_size`` ids in all."""
    kept = [t for t, c in counts.items() if c >= min_count and t not in reserved]
    kept.sort(key=lambda t: (-counts[t], t))
    itos = [*reserved, *kept]
    return itos if max_size is None else itos[:max_size]


def _check_vocabulary(itos: Sequence[str], specials: int, what: str, hint: str) -> None:
    """A language model needs at least two distinct real tokens to have anything to predict."""
    real = len(itos) - specials
    if real < 2:
        raise ValueError(
            f"vocabulary too small: the training text gives {real} distinct {what} "
            f"({hint}); a language model needs at least 2"
        )


class _ListVocabulary(Tokenizer):
    """A tokenizer whose vocabulary is an explicit list of strings (char and word)."""

    def __init__(self, itos: Sequence[str]) -> None:
        if not itos or itos[0] != UNK:
            raise ValueError(f"a vocabulary must start with {UNK!r} at id 0, got {list(itos)[:3]}")
        if len(set(itos)) != len(itos):
            duplicate = next(t for t, c in Counter(itos).items() if c > 1)
            raise ValueError(f"the vocabulary holds {duplicate!r} twice")
        self.itos = list(itos)
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def token(self, index: int) -> str:
        return self.itos[next(self._check_ids([index]))]

    def _payload(self) -> dict[str, Any]:
        return {"itos": self.itos}


class CharTokenizer(_ListVocabulary):
    """One id per character; ``<unk>`` (id 0) for characters seen fewer than ``min_count``
    times in training or never."""

    kind = "char"

    @classmethod
    def train(cls, text: str, *, min_count: int = 1, max_size: int | None = None) -> CharTokenizer:
        """The vocabulary of the characters of ``text``."""
        text = _check_text(text)
        min_count = _checks.positive_int("min_count", min_count)
        max_size = None if max_size is None else _checks.positive_int("max_size", max_size)
        itos = _sorted_vocabulary(Counter(text), min_count, max_size, (UNK,))
        _check_vocabulary(itos, 1, "characters", f"min_count={min_count}, max_size={max_size}")
        return cls(itos)

    @property
    def start_id(self) -> int:
        return self.stoi.get("\n", self.unk_id)

    def encode(self, text: str) -> list[int]:
        get = self.stoi.get
        return [get(c, 0) for c in _check_text(text, allow_empty=True)]

    def decode_stream(self, ids: Iterable[int]) -> Iterator[str]:
        for i in self._check_ids(ids):
            yield self.itos[i]


class WordTokenizer(_ListVocabulary):
    """Whitespace-separated words with ``<eos>`` at every line end; ``<unk>`` for words seen
    fewer than ``min_count`` times or cut by ``max_size``. A literal ``<unk>`` in the text (as in
    Mikolov's PTB, whose rare words are already replaced) maps to the same id."""

    kind = "word"

    @classmethod
    def train(cls, text: str, *, min_count: int = 1, max_size: int | None = None) -> WordTokenizer:
        """The vocabulary of the words of ``text``."""
        text = _check_text(text)
        min_count = _checks.positive_int("min_count", min_count)
        max_size = None if max_size is None else _checks.positive_int("max_size", max_size)
        itos = _sorted_vocabulary(Counter(_words(text)), min_count, max_size, (UNK, EOS))
        _check_vocabulary(itos, 2, "words", f"min_count={min_count}, max_size={max_size}")
        return cls(itos)

    def __init__(self, itos: Sequence[str]) -> None:
        super().__init__(itos)
        if EOS not in self.stoi:
            raise ValueError(f"a word vocabulary must hold {EOS!r}")
        self.eos_id = self.stoi[EOS]

    @property
    def start_id(self) -> int:
        return self.eos_id

    def encode(self, text: str) -> list[int]:
        get = self.stoi.get
        return [get(w, 0) for w in _words(_check_text(text, allow_empty=True))]

    def decode_stream(self, ids: Iterable[int]) -> Iterator[str]:
        at_line_start = True
        for i in self._check_ids(ids):
            if i == self.eos_id:
                at_line_start = True
                yield "\n"
            else:
                yield self.itos[i] if at_line_start else " " + self.itos[i]
                at_line_start = False


def _words(text: str) -> Iterator[str]:
    """The words of every line, and ``<eos>`` for every line break. A final line without a line
    break gets none: a prompt ``"the cat"`` must continue the sentence, not start a new one."""
    for line in text.splitlines(keepends=True):
        yield from line.split()
        if line[-1:] in _LINE_BREAKS:
            yield EOS


class SubwordTokenizer(Tokenizer):
    """BPE (Sennrich et al. 2016) or unigram (Kudo 2018) pieces trained with HF ``tokenizers``.

    Words are split on spaces with the Metaspace convention (a piece that starts a word carries
    ``▁``), so decoding restores the spaces; line breaks are ordinary symbols of the alphabet.
    """

    kind = "subword"

    def __init__(self, hf_json: str | dict[str, Any], algorithm: str) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.algorithm = _checks.choice("algorithm", algorithm, ("bpe", "unigram"))
        text = hf_json if isinstance(hf_json, str) else json.dumps(hf_json)
        try:
            self.hf = HFTokenizer.from_str(text)
        except Exception as exc:  # the Rust side raises its own exception type
            raise ValueError(f"not a valid HF tokenizers JSON: {exc}") from exc
        if self.hf.token_to_id(UNK) != 0:
            raise ValueError(f"a subword vocabulary must have {UNK!r} at id 0")
        self._size = self.hf.get_vocab_size()
        self._pieces = [self.hf.id_to_token(i) or "" for i in range(self._size)]

    @classmethod
    def train(
        cls,
        text: str,
        *,
        algorithm: str = "bpe",
        vocab_size: int = 1000,
        min_count: int = 2,
    ) -> SubwordTokenizer:
        """Learn at most ``vocab_size`` pieces from ``text`` (fewer when the text has fewer);
        ``min_count`` is BPE's minimum pair frequency for a merge."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        text = _check_text(text)
        algorithm = _checks.choice("algorithm", algorithm, ("bpe", "unigram"))
        vocab_size = _checks.positive_int("vocab_size", vocab_size)
        min_count = _checks.positive_int("min_count", min_count)
        if algorithm == "bpe":
            hf = HFTokenizer(models.BPE(unk_token=UNK))
            trainer: Any = trainers.BpeTrainer(
                vocab_size=vocab_size,
                min_frequency=min_count,
                special_tokens=[UNK],
                show_progress=False,
            )
        else:
            hf = HFTokenizer(models.Unigram())
            trainer = trainers.UnigramTrainer(
                vocab_size=vocab_size, special_tokens=[UNK], unk_token=UNK, show_progress=False
            )
        hf.pre_tokenizer = pre_tokenizers.Metaspace()
        hf.decoder = decoders.Metaspace()
        hf.train_from_iterator(text.splitlines(keepends=True), trainer)
        tokenizer = cls(hf.to_str(), algorithm)
        _check_vocabulary(tokenizer._pieces, 1, f"{algorithm} pieces", f"vocab_size={vocab_size}")
        return tokenizer

    @property
    def vocab_size(self) -> int:
        return self._size

    @property
    def start_id(self) -> int:
        newline = self.hf.token_to_id("\n")
        return self.unk_id if newline is None else newline

    def encode(self, text: str) -> list[int]:
        text = _check_text(text, allow_empty=True)
        if not text:
            return []
        # Metaspace treats the text as one line of words; encoding line by line keeps "\n" as
        # its own symbol exactly as in training, where the lines were the training sentences.
        ids: list[int] = []
        for line in text.splitlines(keepends=True):
            ids.extend(self.hf.encode(line).ids)
        return ids

    def token(self, index: int) -> str:
        return self._pieces[next(self._check_ids([index]))]

    def decode_stream(self, ids: Iterable[int]) -> Iterator[str]:
        at_line_start = True
        for i in self._check_ids(ids):
            piece = self._pieces[i].replace("▁", " ")
            if at_line_start:
                piece = piece.lstrip(" ")
            if piece:
                at_line_start = piece.endswith("\n")
            yield piece

    def _payload(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "hf": json.loads(self.hf.to_str())}


# ---------------------------------------------------------------------- helpers
def _check_text(text: Any, *, allow_empty: bool = False) -> str:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {_checks.describe(text)}")
    if not allow_empty and not text.strip():
        raise ValueError("text is empty (or only whitespace): there is nothing to learn from")
    return text


def train_tokenizer(
    text: str,
    kind: str,
    *,
    min_count: int = 1,
    max_size: int | None = None,
) -> Tokenizer:
    """Train a tokenizer of ``kind`` (``'char'``, ``'word'``, ``'bpe'`` or ``'unigram'``) on
    ``text``. For char and word, ``min_count`` and ``max_size`` bound the vocabulary; for the
    subwords, ``max_size`` is the number of pieces to learn (default 1000) and ``min_count`` the
    minimum merge frequency of BPE."""
    kind = _checks.choice("kind", kind, KINDS)
    if kind == "char":
        return CharTokenizer.train(text, min_count=min_count, max_size=max_size)
    if kind == "word":
        return WordTokenizer.train(text, min_count=min_count, max_size=max_size)
    return SubwordTokenizer.train(
        text,
        algorithm=kind,
        vocab_size=1000 if max_size is None else max_size,
        min_count=max(2, min_count) if kind == "bpe" else min_count,
    )


def tokenizer_from_dict(data: Any, *, source: str = "tokenizer") -> Tokenizer:
    """The tokenizer described by ``data`` (from :meth:`Tokenizer.to_dict`); ``source`` names
    where it came from in error messages."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{source} is not an lstmkit tokenizer (no format {FORMAT!r})")
    kind = data.get("kind")
    try:
        if kind == "char":
            return CharTokenizer(_string_list(data.get("itos"), source))
        if kind == "word":
            return WordTokenizer(_string_list(data.get("itos"), source))
        if kind == "subword":
            return SubwordTokenizer(data["hf"], data["algorithm"])
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{source}: {exc}") from None
    raise ValueError(f"{source}: kind must be 'char', 'word' or 'subword', got {kind!r}")


def _string_list(value: Any, source: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValueError(f"{source}: 'itos' must be a list of strings")
    return value


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """The tokenizer saved with :meth:`Tokenizer.save` at ``path``; errors name the file."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{p} does not exist (expected a tokenizer JSON file)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p} is not valid JSON: {exc}") from None
    return tokenizer_from_dict(data, source=str(p))
