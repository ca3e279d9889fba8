"""Sequence tagging: a BiLSTM (or any lstmkit recurrent stack) over word and character features,
with a softmax or a CRF output layer. Part-of-speech tags, chunks, named entities.

The model, read top to bottom in :class:`TaggerModel`:

1. each token is represented by the concatenation of

   * a **word embedding** (a vocabulary built from the training data; ``<unk>`` for the rest),
   * a **character-level feature** of its spelling: the final states of a character BiLSTM
     (Lample et al. 2016, Plank et al. 2016) or the max-pooled filters of a character CNN
     (Ma and Hovy 2016), ``char_encoder='lstm' | 'cnn' | 'none'``; it gives unknown words a
     representation from their suffixes, prefixes, hyphens and digits,
   * optionally a small **casing** embedding (lower, UPPER, Title, mixed, numeric, ...), which
     keeps the case signal when words are looked up lowercased;

2. a stacked recurrent layer (``cell='lstm' | 'gru' | 'rnn'``), bidirectional by default, run
   with the sentence lengths so padding never leaks into the backward direction;

3. a linear layer to tag scores and either a per-token softmax or a linear-chain CRF
   (:class:`lstmkit.nn.CRF`); with span tags (BIO / BIOES) the CRF forbids illegal transitions
   when decoding, so ``O I-PER`` cannot be produced.

**Unknown words.** Word dropout (Kiperwasser and Goldberg 2016) replaces a training token by
``<unk>`` with probability ``alpha / (alpha + count(word))`` (``word_dropout=alpha``): rare words
often, frequent ones almost never, so the ``<unk>`` embedding is trained on the kind of words
that are unknown at test time. At prediction, words outside the vocabulary map to ``<unk>``.

**Fitted state in the parameters.** The vocabularies (words with their counts, characters, tags)
are part of :meth:`TaggerEstimator.get_params` as ``vocab``: :meth:`Estimator.load` rebuilds a
model from ``config.json`` alone before loading the weights, and the embedding sizes depend on
the vocabularies. ``vocab=None`` (the default) builds them from the training data in ``fit``.

Command line::

    lstmkit train tagger --data train.conllu --valid dev.conllu --column upos --out runs/pos
    lstmkit tag runs/pos < sentences.txt          # one whitespace-tokenised sentence per line
    lstmkit evaluate runs/pos --data test.conllu  # {"accuracy": ..., "f1": ... for span tags}
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .. import _checks
from ..data.batching import BucketBatchSampler
from ..data.columns import CONLLU_COLUMNS, read_tagged
from ..nn import GRU, LSTM, RNN
from ..nn.crf import CRF
from . import Command, Estimator, TaskSpec, read_config, register, register_command

__all__ = [
    "CASINGS",
    "TaggerEstimator",
    "TaggerModel",
    "build_vocab",
    "casing",
    "detect_scheme",
    "span_scores",
]

CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
CHAR_ENCODERS = ("lstm", "cnn", "none")
OUTPUTS = ("softmax", "crf")
SCHEMES = ("auto", "none", "BIO", "BIOES")
PAD, UNK = 0, 1
SPECIALS = ["<pad>", "<unk>"]
IGNORE = -100
#: Casing classes of a token, id 0 is padding.
CASINGS = ("<pad>", "lower", "upper", "title", "mixed", "numeric", "has_digit", "other")
CASING_DIM = 8
#: Words longer than this keep their first and last ``MAX_WORD_CHARS // 2`` characters in the
#: character encoder: a 200-character URL would otherwise make the whole batch's character
#: tensor 200 wide, and the affixes carry what matters for tagging.
MAX_WORD_CHARS = 30

Sentence = list[tuple[str, str]]
PathLike = str | os.PathLike[str]


def casing(token: str) -> int:
    """The casing class of ``token``, an index into :data:`CASINGS`."""
    has_digit = any(c.isdigit() for c in token)
    if has_digit and re.fullmatch(r"[0-9.,:/+-]+", token):
        return CASINGS.index("numeric")
    if has_digit:
        return CASINGS.index("has_digit")
    if not any(c.isalpha() for c in token):
        return CASINGS.index("other")
    if token.islower():
        return CASINGS.index("lower")
    if token.isupper():
        return CASINGS.index("upper")
    if token[0].isupper() and (len(token) == 1 or token[1:].islower()):
        return CASINGS.index("title")
    return CASINGS.index("mixed")


_SPAN_TAG = re.compile(r"^([BIES])-(.+)$")


def detect_scheme(tags: Iterable[str]) -> str:
    """``'BIOES'``, ``'BIO'`` or ``'none'`` for a tag set: span tags are ``O`` and ``X-TYPE``
    with ``X`` in B, I (BIO) or also E, S (BIOES). POS tags such as ``NOUN`` give ``'none'``."""
    prefixes = set()
    for tag in tags:
        if tag == "O":
            continue
        match = _SPAN_TAG.match(tag)
        if match is None:
            return "none"
        prefixes.add(match.group(1))
    if not prefixes:
        return "none"
    return "BIOES" if prefixes & {"E", "S"} else "BIO"


def span_scores(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Span ``precision``, ``recall`` and ``f1`` (micro-averaged over entity types) by seqeval
    in its default, conlleval-compatible mode: a span is correct when its type and both of its
    boundaries are."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    g = [list(s) for s in gold]
    p = [list(s) for s in predicted]
    return {
        "precision": float(precision_score(g, p, zero_division=0)),
        "recall": float(recall_score(g, p, zero_division=0)),
        "f1": float(f1_score(g, p, zero_division=0)),
    }


# ---------------------------------------------------------------------- vocabularies
def _normalise(token: str, lowercase: bool) -> str:
    return token.lower() if lowercase else token


def build_vocab(
    sentences: Sequence[Sentence], *, lowercase: bool = False, min_count: int = 1
) -> dict[str, Any]:
    """The vocabularies of a training set: ``words`` (``<pad>``, ``<unk>``, then the words seen
    at least ``min_count`` times, most frequent first), their ``word_counts``, ``chars`` (every
    character seen, after ``<pad>`` and ``<unk>``), ``tags`` (sorted) and ``lowercase``. Ties
    are broken alphabetically, so the same data always gives the same ids."""
    words: Counter[str] = Counter()
    chars: Counter[str] = Counter()
    tags: set[str] = set()
    for sentence in sentences:
        for token, tag in sentence:
            words[_normalise(token, lowercase)] += 1
            chars.update(token)
            tags.add(tag)
    kept = sorted((w for w, n in words.items() if n >= min_count), key=lambda w: (-words[w], w))
    return {
        "words": SPECIALS + kept,
        "word_counts": [0, 0] + [words[w] for w in kept],
        "chars": SPECIALS + sorted(chars),
        "tags": sorted(tags),
        "lowercase": lowercase,
    }


def _check_vocab(vocab: Any) -> dict[str, Any]:
    if not isinstance(vocab, dict):
        raise TypeError(
            f"vocab must be None or a dict from build_vocab, got {_checks.describe(vocab)}"
        )
    for key, kind in (
        ("words", list),
        ("word_counts", list),
        ("chars", list),
        ("tags", list),
        ("lowercase", bool),
    ):
        if not isinstance(vocab.get(key), kind):
            raise ValueError(f"vocab[{key!r}] must be a {kind.__name__}, got {vocab.get(key)!r}")
    if vocab["words"][:2] != SPECIALS or vocab["chars"][:2] != SPECIALS:
        raise ValueError(f"vocab words and chars must start with {SPECIALS}")
    if len(vocab["word_counts"]) != len(vocab["words"]):
        raise ValueError(
            f"vocab['word_counts'] must have one count per word: {len(vocab['words'])} words, "
            f"{len(vocab['word_counts'])} counts"
        )
    if not vocab["tags"]:
        raise ValueError("vocab['tags'] must name at least one tag")
    return vocab


# ---------------------------------------------------------------------- the model
class TaggerModel(nn.Module):
    """Word embedding + character feature + casing embedding -> recurrent stack -> tag scores.

    ``forward(batch)`` takes the dict built by the estimator's collate function (``words``,
    ``casing``, ``word_index`` and ``tags`` of shape ``(B, T)``, ``lengths`` ``(B,)``, ``chars``
    ``(U, C)`` and ``char_lengths`` ``(U,)`` for the ``U`` distinct words of the batch) and
    returns the emission scores ``(B, T, K)``. :meth:`loss` and :meth:`decode` put the softmax or
    the CRF on top.
    """

    unk_probability: Tensor

    def __init__(
        self,
        *,
        num_words: int,
        num_chars: int,
        tags: Sequence[str],
        word_counts: Sequence[int],
        word_dim: int,
        char_encoder: str,
        char_dim: int,
        char_features: int,
        char_kernel: int,
        use_casing: bool,
        cell: str,
        hidden_size: int,
        num_layers: int,
        bidirectional: bool,
        dropout: float,
        word_dropout: float,
        output: str,
        scheme: str,
    ) -> None:
        super().__init__()
        self.char_encoder = char_encoder
        self.output = output
        self.word_embedding = nn.Embedding(num_words, word_dim, padding_idx=PAD)
        features = word_dim
        if char_encoder != "none":
            self.char_embedding = nn.Embedding(num_chars, char_dim, padding_idx=PAD)
            if char_encoder == "lstm":
                self.char_rnn = LSTM(
                    char_dim, char_features // 2, batch_first=True, bidirectional=True
                )
            else:
                self.char_cnn = nn.Conv1d(
                    char_dim, char_features, char_kernel, padding=char_kernel // 2
                )
            features += char_features
        self.casing_embedding = (
            nn.Embedding(len(CASINGS), CASING_DIM, padding_idx=0) if use_casing else None
        )
        if use_casing:
            features += CASING_DIM
        self.dropout = nn.Dropout(dropout)
        self.encoder = CELLS[cell](
            features,
            hidden_size,
            num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(self.encoder.output_size, len(tags))
        if output == "crf":
            if scheme in ("BIO", "BIOES"):
                self.crf = CRF.from_tags(list(tags), scheme, batch_first=True)
            else:
                self.crf = CRF(len(tags), batch_first=True)
        counts = torch.tensor([float(c) for c in word_counts])
        unk = (
            word_dropout / (word_dropout + counts) if word_dropout > 0 else torch.zeros_like(counts)
        )
        unk[:2] = 0.0  # <pad> and <unk> stay what they are
        # not persistent: it follows from the vocabulary in config.json, not from training
        self.register_buffer("unk_probability", unk, persistent=False)

    def _char_features(self, chars: Tensor, lengths: Tensor) -> Tensor:
        """``(U, char_features)`` for the ``U`` distinct words of the batch."""
        embedded = self.char_embedding(chars)  # (U, C, char_dim)
        if self.char_encoder == "lstm":
            _, (h_n, _) = self.char_rnn(embedded, lengths=lengths)
            return torch.cat([h_n[0], h_n[1]], dim=-1)  # forward end state, backward end state
        filters = self.char_cnn(embedded.transpose(1, 2))[..., : chars.shape[1]]  # (U, F, C)
        valid = torch.arange(chars.shape[1], device=chars.device) < lengths[:, None]
        filters = filters.masked_fill(~valid[:, None, :], float("-inf"))
        return torch.tanh(filters.max(dim=2).values)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        words = batch["words"]
        if self.training:
            drop = torch.rand(words.shape, device=words.device) < self.unk_probability[words]
            words = words.masked_fill(drop, UNK)
        parts = [self.word_embedding(words)]
        if self.char_encoder != "none":
            per_type = self._char_features(batch["chars"], batch["char_lengths"])
            parts.append(per_type[batch["word_index"]])
        if self.casing_embedding is not None:
            parts.append(self.casing_embedding(batch["casing"]))
        x = self.dropout(torch.cat(parts, dim=-1))
        hidden, _ = self.encoder(x, lengths=batch["lengths"])
        return self.head(self.dropout(hidden))

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        """Mean loss per token and the token count: cross-entropy for the softmax, the CRF's
        negative log-likelihood divided by the number of tokens for the CRF (the same scale, so
        the same learning rates work for both)."""
        emissions = self(batch)
        tags = batch["tags"]
        mask = tags != IGNORE
        count = int(mask.sum())
        if self.output == "crf":
            return self.crf.nll(emissions, tags, mask, reduction="token_mean"), count
        return F.cross_entropy(emissions.flatten(0, 1), tags.flatten(), ignore_index=IGNORE), count

    def decode(self, batch: dict[str, Tensor]) -> Tensor:
        """The best tag ids ``(B, T)``, ``-1`` at padding."""
        emissions = self(batch)
        mask = torch.arange(emissions.shape[1], device=emissions.device) < batch["lengths"][:, None]
        if self.output == "crf":
            return self.crf.decode(emissions, mask).tags
        return emissions.argmax(-1).masked_fill(~mask, -1)


def _tagger_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
    assert isinstance(model, TaggerModel)
    return model.loss(batch)


# ---------------------------------------------------------------------- encoding and batches
class _Encoded:
    """One sentence as ids: word ids, casing ids, character ids of each token, tag ids."""

    __slots__ = ("casing", "chars", "tags", "words")

    def __init__(
        self, words: list[int], casing: list[int], chars: list[tuple[int, ...]], tags: list[int]
    ) -> None:
        self.words, self.casing, self.chars, self.tags = words, casing, chars, tags


def _collate(items: Sequence[_Encoded]) -> dict[str, Tensor]:
    """Pad a list of encoded sentences into the batch dict of :class:`TaggerModel` (batch
    first). Characters are encoded once per distinct word of the batch, not once per token."""
    B, T = len(items), max(len(item.words) for item in items)
    words = torch.zeros(B, T, dtype=torch.long)
    cases = torch.zeros(B, T, dtype=torch.long)
    tags = torch.full((B, T), IGNORE, dtype=torch.long)
    word_index = torch.zeros(B, T, dtype=torch.long)
    types: dict[tuple[int, ...], int] = {}
    for b, item in enumerate(items):
        n = len(item.words)
        words[b, :n] = torch.tensor(item.words)
        cases[b, :n] = torch.tensor(item.casing)
        if item.tags:
            tags[b, :n] = torch.tensor(item.tags)
        word_index[b, :n] = torch.tensor([types.setdefault(c, len(types)) for c in item.chars])
    spellings = list(types)
    chars = torch.zeros(len(spellings), max(len(s) for s in spellings), dtype=torch.long)
    for u, spelling in enumerate(spellings):
        chars[u, : len(spelling)] = torch.tensor(spelling)
    return {
        "words": words,
        "casing": cases,
        "tags": tags,
        "word_index": word_index,
        "lengths": torch.tensor([len(item.words) for item in items]),
        "chars": chars,
        "char_lengths": torch.tensor([len(s) for s in spellings]),
    }


def _check_sentences(name: str, sentences: Any, *, tagged: bool) -> list[Any]:
    """A non-empty list of non-empty sentences of ``(token, tag)`` pairs (``tagged``) or of
    tokens, each a non-empty string without whitespace."""
    what = "(token, tag) pairs" if tagged else "tokens (str)"
    if isinstance(sentences, (str, bytes)) or not isinstance(sentences, Sequence):
        raise TypeError(
            f"{name} must be a list of sentences, each a list of {what}, got "
            f"{_checks.describe(sentences)}"
        )
    if not sentences:
        raise ValueError(f"{name} must hold at least one sentence, got an empty list")
    for i, sentence in enumerate(sentences):
        if isinstance(sentence, str) or not isinstance(sentence, Sequence):
            raise TypeError(
                f"{name}[{i}] must be a list of {what}, got {_checks.describe(sentence)}"
            )
        if not sentence:
            raise ValueError(
                f"{name}[{i}] is an empty sentence: a sentence needs at least one token"
            )
        for j, entry in enumerate(sentence):
            token = entry
            if tagged:
                if not (isinstance(entry, (tuple, list)) and len(entry) == 2):
                    raise TypeError(
                        f"{name}[{i}][{j}] must be a (token, tag) pair, got "
                        f"{_checks.describe(entry)}"
                    )
                token, tag = entry
                if not isinstance(tag, str) or not tag:
                    raise TypeError(
                        f"{name}[{i}][{j}]: the tag must be a non-empty str, got "
                        f"{_checks.describe(tag)}"
                    )
            if not isinstance(token, str) or not token or token != token.strip():
                raise ValueError(
                    f"{name}[{i}][{j}]: a token must be a non-empty str without "
                    f"surrounding whitespace, got {_checks.describe(token)}"
                )
    return list(sentences)


# ---------------------------------------------------------------------- the estimator
class TaggerEstimator(Estimator):
    """A sequence tagger (POS, chunking, NER): see the module docstring for the model.

    Model: ``word_dim``, ``char_encoder`` (``'lstm'``, ``'cnn'``, ``'none'``), ``char_dim``,
    ``char_features`` (size of a word's character feature; the BiLSTM gives half of it per
    direction), ``char_kernel`` (CNN width), ``casing``, ``cell``, ``hidden_size`` (per
    direction), ``num_layers``, ``bidirectional``, ``dropout`` (on the token features and the
    encoder output), ``word_dropout`` (alpha of the ``<unk>`` replacement), ``output``
    (``'softmax'`` or ``'crf'``), ``scheme`` (``'auto'`` detects BIO/BIOES span tags, which turns
    on CRF constraints and span F1), ``lowercase`` and ``min_count`` (word vocabulary).
    Data: ``batch_size`` and ``num_buckets`` (length bucketing); ``column`` (CoNLL-U ``'upos'``
    or ``'xpos'``), ``token_column`` / ``tag_column`` (column files) say how files given as paths
    are read. ``vocab``: the fitted vocabularies (None before fit). Every other keyword is a
    :class:`~lstmkit.train.TrainConfig` option.
    """

    task = "tagger"

    def __init__(
        self,
        word_dim: int = 100,
        char_encoder: str = "lstm",
        char_dim: int = 30,
        char_features: int = 100,
        char_kernel: int = 3,
        casing: bool = True,
        cell: str = "lstm",
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.33,
        word_dropout: float = 0.25,
        output: str = "softmax",
        scheme: str = "auto",
        lowercase: bool = False,
        min_count: int = 1,
        batch_size: int = 32,
        num_buckets: int = 10,
        column: str = "upos",
        token_column: int = 0,
        tag_column: int = -1,
        vocab: dict[str, Any] | None = None,
        **train_options: Any,
    ) -> None:
        self.word_dim = _checks.positive_int("word_dim", word_dim)
        self.char_encoder = _checks.choice("char_encoder", char_encoder, CHAR_ENCODERS)
        self.char_dim = _checks.positive_int("char_dim", char_dim)
        self.char_features = _checks.positive_int("char_features", char_features)
        if char_encoder == "lstm" and char_features % 2:
            raise ValueError(
                f"char_features must be even with char_encoder='lstm' (half per direction), "
                f"got {char_features}"
            )
        self.char_kernel = _checks.positive_int("char_kernel", char_kernel)
        if char_kernel % 2 == 0:
            raise ValueError(f"char_kernel must be odd (centred filters), got {char_kernel}")
        self.casing = _checks.boolean("casing", casing)
        self.cell = _checks.choice("cell", cell, tuple(CELLS))
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.num_layers = _checks.positive_int("num_layers", num_layers)
        self.bidirectional = _checks.boolean("bidirectional", bidirectional)
        self.dropout = _checks.probability("dropout", dropout)
        self.word_dropout = _checks.real("word_dropout", word_dropout)
        if self.word_dropout < 0:
            raise ValueError(
                f"word_dropout must be >= 0 (alpha; 0 turns it off), got {word_dropout}"
            )
        self.output = _checks.choice("output", output, OUTPUTS)
        self.scheme = _checks.choice("scheme", scheme, SCHEMES)
        self.lowercase = _checks.boolean("lowercase", lowercase)
        self.min_count = _checks.positive_int("min_count", min_count)
        self.batch_size = _checks.positive_int("batch_size", batch_size)
        self.num_buckets = _checks.positive_int("num_buckets", num_buckets)
        self.column = _checks.choice("column", column, tuple(CONLLU_COLUMNS))
        if isinstance(token_column, bool) or not isinstance(token_column, int):
            raise TypeError(f"token_column must be an int, got {_checks.describe(token_column)}")
        if isinstance(tag_column, bool) or not isinstance(tag_column, int):
            raise TypeError(f"tag_column must be an int, got {_checks.describe(tag_column)}")
        self.token_column, self.tag_column = token_column, tag_column
        self.vocab = None if vocab is None else _check_vocab(vocab)
        super().__init__(**train_options)
        self._lookups()

    # ------------------------------------------------------------------ parameters and model
    def get_params(self) -> dict[str, Any]:
        return {
            "word_dim": self.word_dim,
            "char_encoder": self.char_encoder,
            "char_dim": self.char_dim,
            "char_features": self.char_features,
            "char_kernel": self.char_kernel,
            "casing": self.casing,
            "cell": self.cell,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "bidirectional": self.bidirectional,
            "dropout": self.dropout,
            "word_dropout": self.word_dropout,
            "output": self.output,
            "scheme": self.scheme,
            "lowercase": self.lowercase,
            "min_count": self.min_count,
            "batch_size": self.batch_size,
            "num_buckets": self.num_buckets,
            "column": self.column,
            "token_column": self.token_column,
            "tag_column": self.tag_column,
            "vocab": self.vocab,
        }

    def _lookups(self) -> None:
        if self.vocab is None:
            return
        self._word_ids = {w: i for i, w in enumerate(self.vocab["words"])}
        self._char_ids = {c: i for i, c in enumerate(self.vocab["chars"])}
        self._tag_ids = {t: i for i, t in enumerate(self.vocab["tags"])}

    @property
    def tags_(self) -> list[str]:
        """The tag set, in id order."""
        return list(self._require_vocab()["tags"])

    @property
    def scheme_(self) -> str:
        """The tagging scheme in use: ``'BIO'``, ``'BIOES'`` or ``'none'``."""
        if self.scheme != "auto":
            return self.scheme
        return detect_scheme(self._require_vocab()["tags"])

    def _require_vocab(self) -> dict[str, Any]:
        if self.vocab is None:
            raise ValueError(
                "this TaggerEstimator is not fitted: call fit() or TaggerEstimator.load(directory)"
            )
        return self.vocab

    def build_model(self) -> nn.Module:
        vocab = self._require_vocab()
        return TaggerModel(
            num_words=len(vocab["words"]),
            num_chars=len(vocab["chars"]),
            tags=vocab["tags"],
            word_counts=vocab["word_counts"],
            word_dim=self.word_dim,
            char_encoder=self.char_encoder,
            char_dim=self.char_dim,
            char_features=self.char_features,
            char_kernel=self.char_kernel,
            use_casing=self.casing,
            cell=self.cell,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
            dropout=self.dropout,
            word_dropout=self.word_dropout,
            output=self.output,
            scheme=self.scheme_,
        )

    # ------------------------------------------------------------------ data
    def read(self, path: PathLike) -> list[Sentence]:
        """Tagged sentences of ``path`` read as this estimator reads files: CoNLL-U (``.conllu``,
        the ``column`` tags) or a column file (``token_column``, ``tag_column``)."""
        return read_tagged(
            path, column=self.column, token_column=self.token_column, tag_column=self.tag_column
        )

    def _sentences(self, name: str, data: Any) -> tuple[list[Sentence], str]:
        """Tagged sentences from a list or a path, and how to name them in errors."""
        if isinstance(data, (str, os.PathLike)):
            return self.read(data), str(data)
        return _check_sentences(name, data, tagged=True), name

    def _encode(
        self,
        tokens: Sequence[str],
        tags: Sequence[str] | None = None,
        where: str = "",
        index: int = 0,
    ) -> _Encoded:
        lowercase = self._require_vocab()["lowercase"]
        words = [self._word_ids.get(_normalise(t, lowercase), UNK) for t in tokens]
        chars = []
        half = MAX_WORD_CHARS // 2
        for token in tokens:
            spelled = token if len(token) <= MAX_WORD_CHARS else token[:half] + token[-half:]
            chars.append(tuple(self._char_ids.get(c, UNK) for c in spelled))
        tag_ids: list[int] = []
        if tags is not None:
            for j, tag in enumerate(tags):
                if tag not in self._tag_ids:
                    known = ", ".join(self.vocab["tags"]) if self.vocab else ""
                    raise ValueError(
                        f"{where}: sentence {index + 1}, token {j + 1} ({tokens[j]!r}) has the tag "
                        f"{tag!r}, which the model never saw in training; it knows "
                        f"{len(self._tag_ids)} tags: {known}"
                    )
                tag_ids.append(self._tag_ids[tag])
        return _Encoded(words, [casing(t) for t in tokens], chars, tag_ids)

    def _encode_tagged(self, sentences: list[Sentence], where: str) -> list[_Encoded]:
        return [
            self._encode([t for t, _ in s], [g for _, g in s], where, i)
            for i, s in enumerate(sentences)
        ]

    def _loader(self, encoded: list[_Encoded], *, shuffle: bool) -> DataLoader:
        lengths = [len(e.words) for e in encoded]
        sampler = BucketBatchSampler(
            lengths,
            self.batch_size,
            num_buckets=min(self.num_buckets, len(lengths)),
            shuffle=shuffle,
            seed=self.train_config.seed,
        )
        return DataLoader(encoded, batch_sampler=sampler, collate_fn=_collate)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ fit / predict / evaluate
    def fit(  # type: ignore[override]
        self,
        data: list[Sentence] | PathLike,
        *,
        val: Any = None,
        out: str | os.PathLike[str] | None = None,
        resume: bool = False,
    ) -> TaggerEstimator:
        """Train on ``data`` (tagged sentences, or a file read by :meth:`read`), validating on
        ``val`` (the same kinds, or the 1-tuple of :meth:`evaluate`'s arguments) after every
        epoch. Builds the vocabularies from ``data`` when ``vocab`` is None."""
        train, where = self._sentences("data", data)
        if self.vocab is None:
            self.vocab = build_vocab(train, lowercase=self.lowercase, min_count=self.min_count)
            self._lookups()
        loader = self._loader(self._encode_tagged(train, where), shuffle=True)
        val_loader = None
        if val is not None:
            if isinstance(val, tuple) and len(val) == 1:
                val = val[0]
            val_sentences, val_where = self._sentences("val", val)
            val_loader = self._loader(self._encode_tagged(val_sentences, val_where), shuffle=False)
        self._fit_model(loader, val_loader, _tagger_loss, out=out, resume=resume)
        return self

    def _predict_ids(self, encoded: list[_Encoded]) -> list[list[int]]:
        model = self._require_model()
        assert isinstance(model, TaggerModel)
        device = next(model.parameters()).device
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].words))
        result: list[list[int]] = [[] for _ in encoded]
        chunk = max(256, self.batch_size)
        model.eval()
        with torch.no_grad():
            for start in range(0, len(order), chunk):
                ids = order[start : start + chunk]
                batch = {k: v.to(device) for k, v in _collate([encoded[i] for i in ids]).items()}
                decoded = model.decode(batch).cpu()
                for row, i in enumerate(ids):
                    result[i] = decoded[row, : len(encoded[i].words)].tolist()
        return result

    def predict(self, sentences: Sequence[Sequence[str]]) -> list[list[str]]:  # type: ignore[override]
        """The predicted tags of tokenised ``sentences`` (lists of tokens), one list per
        sentence. Unknown words are read as ``<unk>`` (their characters still count)."""
        sentences = _check_sentences("sentences", sentences, tagged=False)
        self._require_model()
        tags = self.tags_
        encoded = [self._encode(list(s)) for s in sentences]
        return [[tags[i] for i in row] for row in self._predict_ids(encoded)]

    def evaluate(self, data: list[Sentence] | PathLike) -> dict[str, float]:  # type: ignore[override]
        """Metrics on tagged ``data`` (sentences or a file): ``accuracy`` over tokens,
        ``oov_accuracy`` over tokens whose word is not in the vocabulary, ``oov_rate``,
        ``tokens``, ``sentences``; with span tags (BIO/BIOES) also span ``precision``, ``recall``
        and ``f1`` (seqeval). A tag that was not seen in training raises ``ValueError`` naming
        the sentence and token: the model could never predict it, and silently counting it as an
        error would hide a mismatch of tag sets (such as UPOS data given to an XPOS model)."""
        sentences, where = self._sentences("data", data)
        self._require_model()
        encoded = self._encode_tagged(sentences, where)
        predicted = self._predict_ids(encoded)
        correct = total = oov = oov_correct = 0
        for item, row in zip(encoded, predicted, strict=True):
            for word, gold, guess in zip(item.words, item.tags, row, strict=True):
                total += 1
                correct += gold == guess
                if word == UNK:
                    oov += 1
                    oov_correct += gold == guess
        metrics: dict[str, float] = {
            "accuracy": correct / total,
            "oov_accuracy": oov_correct / oov if oov else math.nan,
            "oov_rate": oov / total,
            "tokens": total,
            "sentences": len(sentences),
        }
        if not oov:
            del metrics["oov_accuracy"]  # JSON has no NaN; absent means "no unknown words"
        if self.scheme_ != "none":
            tags = self.tags_
            gold_tags = [[g for _, g in s] for s in sentences]
            metrics.update(span_scores(gold_tags, [[tags[i] for i in row] for row in predicted]))
        return metrics


# ---------------------------------------------------------------------- command line
def _add_arguments(group: argparse._ActionsContainer) -> None:
    group.add_argument("--data", metavar="FILE", help="training data: .conllu or a column file")
    group.add_argument(
        "--valid",
        metavar="FILE",
        help="validation data (default: hold out --valid-fraction of --data)",
    )
    group.add_argument(
        "--valid-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="share of --data held out for validation without --valid",
    )
    group.add_argument(
        "--column", choices=tuple(CONLLU_COLUMNS), default="upos", help="CoNLL-U tag column"
    )
    group.add_argument(
        "--token-column",
        type=int,
        default=0,
        metavar="I",
        help="column files: token column (from 0)",
    )
    group.add_argument(
        "--tag-column",
        type=int,
        default=-1,
        metavar="I",
        help="column files: tag column (negative counts from the end)",
    )
    group.add_argument("--word-dim", type=int, default=100, metavar="D", help="word embedding size")
    group.add_argument(
        "--char-encoder",
        choices=CHAR_ENCODERS,
        default="lstm",
        help="character-level word features",
    )
    group.add_argument("--char-dim", type=int, default=30, metavar="D", help="character embedding")
    group.add_argument(
        "--char-features",
        type=int,
        default=100,
        metavar="D",
        help="size of a word's character feature",
    )
    group.add_argument("--char-kernel", type=int, default=3, metavar="K", help="char CNN width")
    group.add_argument(
        "--casing", action=argparse.BooleanOptionalAction, default=True, help="casing feature"
    )
    group.add_argument("--cell", choices=tuple(CELLS), default="lstm", help="recurrent layer")
    group.add_argument(
        "--hidden-size", type=int, default=128, metavar="H", help="hidden units per direction"
    )
    group.add_argument("--num-layers", type=int, default=1, metavar="L", help="stacked layers")
    group.add_argument(
        "--bidirectional",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bidirectional encoder (--no-bidirectional: left context only)",
    )
    group.add_argument("--dropout", type=float, default=0.33, metavar="P", help="dropout")
    group.add_argument(
        "--word-dropout",
        type=float,
        default=0.25,
        metavar="ALPHA",
        help="replace a word by <unk> with probability alpha/(alpha+count)",
    )
    group.add_argument("--output", choices=OUTPUTS, default="softmax", help="output layer")
    group.add_argument("--scheme", choices=SCHEMES, default="auto", help="span tagging scheme")
    group.add_argument("--lowercase", action="store_true", help="look words up lowercased")
    group.add_argument(
        "--min-count", type=int, default=1, metavar="N", help="words seen fewer times are <unk>"
    )
    group.add_argument("--batch-size", type=int, default=32, metavar="B", help="sentences a batch")
    group.add_argument(
        "--num-buckets",
        type=int,
        default=10,
        metavar="N",
        help="length buckets of the batch sampler",
    )


def _make_data(args: argparse.Namespace) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    if not args.data:
        raise ValueError("--data FILE is required: the training data (.conllu or a column file)")
    options = {
        "column": args.column,
        "token_column": args.token_column,
        "tag_column": args.tag_column,
    }
    train = read_tagged(args.data, **options)
    if args.valid:
        return (train,), (read_tagged(args.valid, **options),)
    fraction = args.valid_fraction
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--valid-fraction must be in (0, 1), got {fraction}")
    n_val = max(1, round(len(train) * fraction))
    if n_val >= len(train):
        raise ValueError(
            f"--data {args.data} has {len(train)} sentences: too few to hold out "
            f"--valid-fraction {fraction}; give --valid FILE"
        )
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed)).tolist()
    held = set(order[:n_val])
    return ([s for i, s in enumerate(train) if i not in held],), ([train[i] for i in sorted(held)],)


def _read_data(path: str) -> tuple[Any, ...]:
    # the estimator reads the file itself, with the column settings it was trained with
    if not Path(path).is_file():
        raise ValueError(f"--data {path}: no such file")
    return (path,)


register(
    TaskSpec(
        name="tagger",
        help="sequence tagging (POS, chunks, NER): BiLSTM over word and character features, "
        "softmax or CRF",
        estimator=TaggerEstimator,
        add_arguments=_add_arguments,
        make_data=_make_data,
        read_data=_read_data,
    )
)


def read_sentences(lines: Iterable[str], source: str = "<stdin>") -> list[list[str]]:
    """Whitespace-tokenised sentences, one per line. A blank line is an error naming it: it
    would be an empty sentence, and dropping it would shift every following sentence's place in
    the output. A final newline is not a blank line."""
    lines = list(lines)
    if not any(line.strip() for line in lines):
        raise ValueError(f"{source} holds no sentences: give one sentence per line")
    sentences = []
    for number, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens:
            raise ValueError(
                f"{source}, line {number}: empty sentence; give one whitespace-tokenised "
                "sentence per line, with no blank lines"
            )
        sentences.append(tokens)
    return sentences


def format_conll(
    sentences: Sequence[Sequence[str]],
    tags: Sequence[Sequence[str]],
    style: str = "conll",
    column: str = "upos",
) -> str:
    """Tagged sentences as CoNLL text, each followed by a blank line: ``token<TAB>tag`` lines
    (``style='conll'``) or 10-column CoNLL-U lines with the tag in the ``column`` field and
    ``_`` elsewhere (``style='conllu'``)."""
    lines = []
    for sentence, row in zip(sentences, tags, strict=True):
        for i, (token, tag) in enumerate(zip(sentence, row, strict=True), start=1):
            if style == "conllu":
                fields = [str(i), token] + ["_"] * 8
                fields[CONLLU_COLUMNS[column]] = tag
                lines.append("\t".join(fields))
            else:
                lines.append(f"{token}\t{tag}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _tag_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="the --out of `lstmkit train tagger`")
    parser.add_argument(
        "--input",
        metavar="FILE",
        help="sentences, one a line, whitespace-tokenised (default: stdin)",
    )
    parser.add_argument(
        "--format",
        choices=("conll", "conllu"),
        default="conll",
        help="output: token<TAB>tag lines, or 10-column CoNLL-U",
    )


def _tag(args: argparse.Namespace) -> int:
    config = read_config(args.directory)
    if config["task"] != TaggerEstimator.task:
        raise ValueError(f"{args.directory} holds a {config['task']!r} model, not a tagger")
    estimator = TaggerEstimator.load(args.directory)
    if args.input:
        text = Path(args.input).read_text(encoding="utf-8")
        source = args.input
    else:
        text, source = sys.stdin.read(), "<stdin>"
    sentences = read_sentences(text.removesuffix("\n").split("\n"), source)
    tags = estimator.predict(sentences)
    sys.stdout.write(format_conll(sentences, tags, args.format, estimator.column))
    return 0


register_command(
    Command(
        name="tag",
        help="tag sentences (one a line, whitespace-tokenised) with a trained tagger; CoNLL output",
        add_arguments=_tag_arguments,
        run=_tag,
    )
)
