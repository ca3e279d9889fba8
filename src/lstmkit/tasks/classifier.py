"""Sequence classification: one label (or a set of labels) for a whole sequence.

A many-to-one model reads a sequence of tokens (text, cut by a whitespace or a character
tokenizer) or of numeric feature vectors, and pools the recurrent outputs into one vector that a
linear layer turns into class scores::

    tokens / features -> [embedding] -> [Conv1d + ReLU (+ max-pool)] x K -> LSTM/GRU/RNN stack
                      -> pooling (last | mean | max | additive attention) -> dropout -> Linear

* ``conv_layers > 0`` puts a convolutional feature extractor before the recurrent stack (the
  CNN-LSTM): the convolutions find local shapes, the recurrent layers order them.
* ``hierarchical=True`` is the hierarchical attention network of Yang et al. (2016): a word-level
  encoder with attention turns each sentence into a vector, a sentence-level encoder with
  attention turns the sentences into the document vector. Documents are split into sentences
  after ``.``, ``!`` or ``?`` followed by white space, and at line breaks.
* multi-class (softmax, cross-entropy) or multi-label (one sigmoid per label, binary
  cross-entropy, a label is predicted when its probability is at least 0.5).

The attention weights are returned by :meth:`SequenceClassifier.attention` and drawn as a heat
map over the input by :func:`plot_attention` (``lstmkit predict --attention-plot``).

Data (see docs/classifier.md for the exact formats):

* text: a CSV (``.csv``; ``.tsv`` is tab-separated) with a header row; ``text_column`` holds the
  text and ``label_column`` the label, or with ``label_sep`` several labels separated by it;
* numeric: an ``.npz`` file with ``x`` (N, T, F) floats, ``y`` (N,) class labels or (N, C)
  0/1 multi-label targets, and optionally ``lengths`` (N,) for sequences shorter than T.

Command line::

    lstmkit train classifier --data train.csv --text-column text --label-column label --out DIR
    lstmkit train classifier --data train.npz --conv-layers 3 --pooling max --out DIR
    lstmkit predict DIR --data new.csv [--probabilities] [--attention-plot heat.png]
    lstmkit evaluate DIR --data test.csv     # {"accuracy", "macro_f1", ...}

The vocabulary, the label set and the statistics used to standardise numeric features are
learned by ``fit`` and written back into the estimator's parameters (``vocabulary``, ``labels``,
``feature_mean``, ``feature_std``), as scikit-learn's ``CountVectorizer(vocabulary=...)`` accepts
a fixed vocabulary: ``config.json`` alone then rebuilds the model, and a user may fix any of them
up front.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

from .. import _checks
from ..nn import GRU, LSTM, RNN
from . import Command, Estimator, TaskSpec, get_task, read_config, register, register_command

CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
POOLINGS = ("last", "mean", "max", "attention")
TOKENIZERS = ("whitespace", "char")
PAD, UNK = "<pad>", "<unk>"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")

Label = str | int


# ====================================================================== text
def tokenize(text: str, tokenizer: str = "whitespace", lowercase: bool = True) -> list[str]:
    """The tokens of ``text``: white-space separated words, or its characters without the white
    space between words (``'char'``)."""
    _checks.choice("tokenizer", tokenizer, TOKENIZERS)
    if lowercase:
        text = text.lower()
    if tokenizer == "whitespace":
        return text.split()
    return [c for c in text if not c.isspace()]


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` for the hierarchical model: cut after ``.``, ``!`` or ``?``
    followed by white space and at line breaks; empty pieces are dropped."""
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text)) if s]


def build_vocabulary(
    documents: Sequence[Sequence[str]], *, min_count: int = 1, max_size: int | None = None
) -> list[str]:
    """``[PAD, UNK, ...]`` then the tokens seen at least ``min_count`` times, most frequent
    first (ties in first-seen order, so the result does not depend on hash seeds), at most
    ``max_size`` entries in all."""
    counts: Counter[str] = Counter()
    for tokens in documents:
        counts.update(tokens)
    words = [w for w, c in counts.most_common() if c >= min_count and w not in (PAD, UNK)]
    vocabulary = [PAD, UNK, *words]
    return vocabulary if max_size is None else vocabulary[:max_size]


# ====================================================================== model
def valid_mask(lengths: Tensor, T: int) -> Tensor:
    """``(B, T)`` booleans, True at the first ``lengths[b]`` steps of sequence ``b``."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


class AdditiveAttention(nn.Module):
    """Attention pooling with a learned context vector (Yang et al. 2016, eq. 5-7)::

        u_t = tanh(W h_t + b),   a_t = softmax_t(u_t . u_w),   s = sum_t a_t h_t

    Padding steps get weight exactly 0. ``forward(h (B, T, D), mask (B, T))`` returns
    ``(s (B, D), a (B, T))``."""

    def __init__(self, size: int, attention_size: int) -> None:
        super().__init__()
        self.project = nn.Linear(size, attention_size)
        self.context = nn.Linear(attention_size, 1, bias=False)

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.context(torch.tanh(self.project(h))).squeeze(-1)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        return torch.bmm(weights.unsqueeze(1), h).squeeze(1), weights


class ConvFrontEnd(nn.Module):
    """``layers`` blocks of ``Conv1d(kernel, 'same' padding) -> ReLU [-> MaxPool1d(pool)]`` over
    ``(B, T, F)``. The steps past each sequence's length are zeroed before every convolution and
    before every pooling, so a sequence's features do not depend on how much padding its batch
    adds (ReLU outputs are >= 0: a zero never beats a valid step in a max-pool window). Returns
    the features ``(B, T', channels)`` and the new lengths (``ceil(length / pool)`` per block)."""

    def __init__(self, input_size: int, channels: int, layers: int, kernel: int, pool: int):
        super().__init__()
        self.pool = pool
        self.convs = nn.ModuleList(
            nn.Conv1d(input_size if i == 0 else channels, channels, kernel, padding=kernel // 2)
            for i in range(layers)
        )

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        h = x.transpose(1, 2)  # (B, F, T)
        h = h * valid_mask(lengths, h.shape[2])[:, None, :].to(h.dtype)
        for conv in self.convs:
            # zero the padding again after each block: the kernel spills valid steps into it,
            # and a pooling window that straddles the end must see only values >= 0 there
            h = F.relu(conv(h)) * valid_mask(lengths, h.shape[2])[:, None, :].to(h.dtype)
            if self.pool > 1:
                h = F.max_pool1d(h, self.pool, ceil_mode=True)
                lengths = torch.div(lengths + self.pool - 1, self.pool, rounding_mode="floor")
        return h.transpose(1, 2), lengths


class Encoder(nn.Module):
    """[convolutions ->] recurrent stack -> pooling: ``(B, T, F)`` with lengths ``(B,)`` to one
    vector per sequence ``(B, D)``, and the attention weights ``(B, T')`` (None unless
    ``pooling='attention'``)."""

    def __init__(
        self,
        input_size: int,
        *,
        cell: str,
        hidden_size: int,
        num_layers: int,
        bidirectional: bool,
        dropout: float,
        pooling: str,
        attention_size: int,
        conv_layers: int = 0,
        conv_channels: int = 64,
        conv_kernel: int = 5,
        conv_pool: int = 1,
    ) -> None:
        super().__init__()
        self.conv = (
            ConvFrontEnd(input_size, conv_channels, conv_layers, conv_kernel, conv_pool)
            if conv_layers
            else None
        )
        size = conv_channels if conv_layers else input_size
        self.rnn = CELLS[cell](
            size,
            hidden_size,
            num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.hidden_size = hidden_size
        self.bidirectional = bidirectional
        self.pooling = pooling
        self.output_size = hidden_size * (2 if bidirectional else 1)
        self.attention = (
            AdditiveAttention(self.output_size, attention_size) if pooling == "attention" else None
        )

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.conv is not None:
            x, lengths = self.conv(x, lengths)
        output, _ = self.rnn(x, lengths=lengths.cpu())
        mask = valid_mask(lengths, output.shape[1])
        if self.pooling == "attention":
            assert self.attention is not None
            return self.attention(output, mask)
        if self.pooling == "mean":
            summed = (output * mask.unsqueeze(-1).to(output.dtype)).sum(1)
            return summed / lengths.unsqueeze(-1).to(output.dtype), None
        if self.pooling == "max":
            return output.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1), None
        # last: the forward direction at the last valid step, the backward one at step 0
        rows = torch.arange(len(lengths), device=output.device)
        last = output[rows, lengths - 1]
        if not self.bidirectional:
            return last, None
        H = self.hidden_size
        return torch.cat([last[:, :H], output[:, 0, H:]], dim=1), None


class ClassifierModel(nn.Module):
    """The network behind :class:`SequenceClassifier` (see the module docstring).

    ``forward(batch)`` takes the dict of :class:`Collate` and returns the class scores
    ``(B, C)``; :meth:`attend` also returns the attention weights."""

    def __init__(
        self,
        *,
        vocab_size: int,
        input_size: int,
        embedding_dim: int,
        num_classes: int,
        hierarchical: bool,
        feature_mean: Sequence[float] | None,
        feature_std: Sequence[float] | None,
        **encoder: Any,
    ) -> None:
        super().__init__()
        self.hierarchical = hierarchical
        self.embedding = (
            nn.Embedding(vocab_size, embedding_dim, padding_idx=0) if vocab_size else None
        )
        size = embedding_dim if vocab_size else input_size
        if feature_mean is not None and feature_std is not None:
            self.register_buffer("feature_mean", torch.tensor(list(feature_mean)))
            self.register_buffer("feature_std", torch.tensor(list(feature_std)))
        else:
            self.feature_mean = self.feature_std = None
        self.dropout = nn.Dropout(encoder["dropout"])
        self.encoder = Encoder(size, **encoder)
        if hierarchical:
            sentence_options = {**encoder, "conv_layers": 0}
            self.sentence_encoder: Encoder | None = Encoder(
                self.encoder.output_size, **sentence_options
            )
            out = self.sentence_encoder.output_size
        else:
            self.sentence_encoder = None
            out = self.encoder.output_size
        self.head = nn.Linear(out, num_classes)

    def _inputs(self, x: Tensor) -> Tensor:
        if self.embedding is not None:
            return self.dropout(self.embedding(x))
        if self.feature_mean is not None:
            x = (x - self.feature_mean) / self.feature_std
        return x

    def attend(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Class scores ``(B, C)`` and the attention weights: ``{'steps': (B, T')}`` for a flat
        model with attention pooling, ``{'words': (B, S, W), 'sentences': (B, S)}`` for a
        hierarchical one (empty without attention)."""
        x, lengths = batch["x"], batch["lengths"]
        attention: dict[str, Tensor] = {}
        if self.sentence_encoder is None:
            vector, weights = self.encoder(self._inputs(x), lengths)
            if weights is not None:
                attention["steps"] = weights
            return self.head(self.dropout(vector)), attention
        B, S, W = x.shape
        word_lengths = batch["word_lengths"].reshape(-1)
        real = word_lengths > 0
        sentences, word_weights = self.encoder(
            self._inputs(x.reshape(B * S, W)[real]), word_lengths[real]
        )
        vectors = sentences.new_zeros(B * S, sentences.shape[1])
        vectors[real] = sentences
        document, sentence_weights = self.sentence_encoder(vectors.view(B, S, -1), lengths)
        if word_weights is not None and sentence_weights is not None:
            words = word_weights.new_zeros(B * S, word_weights.shape[1])
            words[real] = word_weights
            attention = {"words": words.view(B, S, -1), "sentences": sentence_weights}
        return self.head(self.dropout(document)), attention

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.attend(batch)[0]


# ====================================================================== batches
class Collate:
    """Pads a list of ``(x, target)`` items into the batch dict of :class:`ClassifierModel`:
    ``x`` (B, T) token ids, (B, T, F) features or, hierarchical, (B, S, W) token ids;
    ``lengths`` (B,) steps or sentences; ``word_lengths`` (B, S) for hierarchical batches;
    ``y`` (B,) class indices or (B, C) 0/1 targets (absent when the items carry None)."""

    def __init__(self, hierarchical: bool) -> None:
        self.hierarchical = hierarchical

    def __call__(self, items: Sequence[tuple[Any, Tensor | None]]) -> dict[str, Tensor]:
        xs = [x for x, _ in items]
        if self.hierarchical:
            S = max(len(doc) for doc in xs)
            W = max(len(s) for doc in xs for s in doc)
            x = torch.zeros(len(xs), S, W, dtype=torch.long)
            word_lengths = torch.zeros(len(xs), S, dtype=torch.long)
            for b, doc in enumerate(xs):
                for s, sentence in enumerate(doc):
                    x[b, s, : len(sentence)] = sentence
                    word_lengths[b, s] = len(sentence)
            batch = {
                "x": x,
                "lengths": torch.tensor([len(doc) for doc in xs]),
                "word_lengths": word_lengths,
            }
        else:
            batch = {
                "x": pad_sequence(xs, batch_first=True),
                "lengths": torch.tensor([len(x) for x in xs]),
            }
        targets = [y for _, y in items]
        if all(t is not None for t in targets):
            batch["y"] = torch.stack(targets)  # type: ignore[arg-type]
        return batch


def _classification_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
    scores = model(batch)
    y = batch["y"]
    if y.dim() == 2:  # multi-label
        return F.binary_cross_entropy_with_logits(scores, y), len(y)
    return F.cross_entropy(scores, y), len(y)


# ====================================================================== data files
class Table(NamedTuple):
    """What a data file holds: the inputs (texts, or numeric sequences each (T_i, F)), the
    labels (None when the file has none) and, per item, where it came from for messages."""

    X: list[Any]
    y: list[Any] | None
    where: list[str]


def _label_value(value: Any) -> Label:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"labels must be str or int, got {_checks.describe(value)}")
    return value


def read_csv_table(
    path: str | os.PathLike[str],
    text_column: str,
    label_column: str | None,
    label_sep: str | None = None,
) -> Table:
    """The texts and labels of a CSV file with a header row (tab-separated when the name ends
    in ``.tsv``). ``label_column=None`` reads texts only; with ``label_sep`` each label cell is a
    list of labels separated by it (multi-label, an empty cell is the empty set). Errors name
    the file, the line and the column."""
    path = Path(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise ValueError(
                    f"{path} is empty: expected a header row naming the columns "
                    f"({text_column!r}{'' if label_column is None else f', {label_column!r}'})"
                )
            wanted = [text_column] + ([] if label_column is None else [label_column])
            for name, flag in zip(wanted, ("--text-column", "--label-column"), strict=False):
                if name not in header:
                    raise ValueError(
                        f"{path} has no column {name!r} ({flag}); its columns are "
                        + ", ".join(repr(h) for h in header)
                    )
            t = header.index(text_column)
            k = None if label_column is None else header.index(label_column)
            X: list[Any] = []
            y: list[Any] = []
            where: list[str] = []
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise ValueError(
                        f"{path}, line {line}: expected {len(header)} fields like the header, "
                        f"got {len(row)}"
                    )
                if not row[t].strip():
                    raise ValueError(f"{path}, line {line}, column {text_column!r}: empty text")
                X.append(row[t])
                where.append(f"{path}, line {line}")
                if k is not None:
                    cell = row[k].strip()
                    if label_sep is not None:
                        y.append([p.strip() for p in cell.split(label_sep) if p.strip()])
                    elif not cell:
                        raise ValueError(
                            f"{path}, line {line}, column {label_column!r}: empty label"
                        )
                    else:
                        y.append(cell)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text: {exc}") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: not a valid CSV file ({exc})") from None
    if not X:
        raise ValueError(f"{path} has a header but no data rows")
    return Table(X, None if label_column is None else y, where)


def read_npz_table(path: str | os.PathLike[str], *, need_labels: bool = True) -> Table:
    """The sequences and labels of an ``.npz`` file: ``x`` (N, T, F) (or (N, T) for one
    feature), ``y`` (N,) labels or (N, C) 0/1 multi-label targets, ``lengths`` (N,) optional.
    Only plain arrays are read (``allow_pickle=False``)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable .npz file of plain arrays ({exc})") from None
    if "x" not in arrays:
        raise ValueError(f"{path} has no array 'x' (N, T, F); found {sorted(arrays) or 'none'}")
    x = arrays["x"]
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or not np.issubdtype(x.dtype, np.number) or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(
            f"{path}: 'x' must be a non-empty numeric array of shape (N, T, F), "
            f"got shape {x.shape}, dtype {x.dtype}"
        )
    N, T, _ = x.shape
    lengths = arrays.get("lengths")
    if lengths is None:
        lengths = np.full(N, T)
    if lengths.shape != (N,) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(
            f"{path}: 'lengths' must be N={N} integers, got shape {lengths.shape}, "
            f"dtype {lengths.dtype}"
        )
    bad = np.flatnonzero((lengths < 1) | (lengths > T))
    if len(bad):
        raise ValueError(
            f"{path}: lengths[{bad[0]}] is {lengths[bad[0]]}: every length must be in [1, {T}]"
        )
    X = [
        torch.from_numpy(np.ascontiguousarray(x[i, : lengths[i]], dtype=np.float32))
        for i in range(N)
    ]
    where = [f"{path}, item {i}" for i in range(N)]
    if "y" not in arrays:
        if need_labels:
            raise ValueError(f"{path} has no array 'y' of labels; found {sorted(arrays)}")
        return Table(X, None, where)
    y_array = arrays["y"]
    if y_array.shape[0] != N or y_array.ndim not in (1, 2):
        raise ValueError(
            f"{path}: 'y' must have shape ({N},) or ({N}, C) to match 'x', got {y_array.shape}"
        )
    if y_array.ndim == 2:
        if not np.isin(y_array, (0, 1)).all():
            raise ValueError(
                f"{path}: a 2-D 'y' is a multi-label target and must hold only 0 and 1"
            )
        y: list[Any] = [[int(c) for c in np.flatnonzero(row)] for row in y_array]
    elif y_array.dtype.kind in "iu":
        y = [int(v) for v in y_array]
    elif y_array.dtype.kind == "U":
        y = [str(v) for v in y_array]
    else:
        raise ValueError(
            f"{path}: 'y' must hold integer or string class labels, got dtype {y_array.dtype}"
        )
    return Table(X, y, where)


# ====================================================================== estimator
class SequenceClassifier(Estimator):
    """A recurrent sequence classifier over texts or numeric sequences.

    Model: ``cell`` (``'lstm'``, ``'gru'``, ``'rnn'``), ``hidden_size``, ``num_layers``,
    ``bidirectional``, ``dropout`` (on embeddings, between layers and before the output layer),
    ``pooling`` (``'last'``, ``'mean'``, ``'max'``, ``'attention'``) with ``attention_size``,
    ``hierarchical`` (text only), and the convolutional front end ``conv_layers``,
    ``conv_channels``, ``conv_kernel`` (odd), ``conv_pool``. Text: ``tokenizer``
    (``'whitespace'``, ``'char'``), ``lowercase``, ``embedding_dim``, ``min_count`` and
    ``max_vocab``. Numeric: ``standardize`` (per-feature mean and standard deviation of the
    training data). Data files: ``text_column``, ``label_column`` and ``label_sep`` (multi-label
    CSV cells). ``vocabulary``, ``labels``, ``feature_mean`` and ``feature_std`` are learned by
    ``fit`` unless given. Every other keyword is a :class:`~lstmkit.train.TrainConfig` option.

    ``fit(X, y)`` takes a list of strings or of ``(T_i, F)`` arrays (or one ``(N, T, F)``
    array), and labels (str or int; for multi-label a list of labels per item); ``X`` may also
    be the path of a data file, read with :func:`read_csv_table` or :func:`read_npz_table`.
    """

    task = "classifier"

    def __init__(
        self,
        cell: str = "lstm",
        hidden_size: int = 64,
        num_layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.2,
        pooling: str = "attention",
        attention_size: int = 64,
        hierarchical: bool = False,
        conv_layers: int = 0,
        conv_channels: int = 64,
        conv_kernel: int = 5,
        conv_pool: int = 1,
        tokenizer: str = "whitespace",
        lowercase: bool = True,
        embedding_dim: int = 64,
        min_count: int = 1,
        max_vocab: int | None = None,
        standardize: bool = True,
        text_column: str = "text",
        label_column: str = "label",
        label_sep: str | None = None,
        batch_size: int = 32,
        vocabulary: list[str] | None = None,
        labels: list[Label] | None = None,
        input_size: int | None = None,
        multi_label: bool | None = None,
        feature_mean: list[float] | None = None,
        feature_std: list[float] | None = None,
        **train_options: Any,
    ) -> None:
        self.cell = _checks.choice("cell", cell, tuple(CELLS))
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.num_layers = _checks.positive_int("num_layers", num_layers)
        self.bidirectional = _checks.boolean("bidirectional", bidirectional)
        self.dropout = _checks.probability("dropout", dropout)
        self.pooling = _checks.choice("pooling", pooling, POOLINGS)
        self.attention_size = _checks.positive_int("attention_size", attention_size)
        self.hierarchical = _checks.boolean("hierarchical", hierarchical)
        self.conv_layers = _checks.positive_int("conv_layers", conv_layers, allow_zero=True)
        self.conv_channels = _checks.positive_int("conv_channels", conv_channels)
        self.conv_kernel = _checks.positive_int("conv_kernel", conv_kernel)
        if self.conv_kernel % 2 == 0:
            raise ValueError(
                f"conv_kernel must be odd (so that 'same' padding keeps the length), "
                f"got {conv_kernel}"
            )
        self.conv_pool = _checks.positive_int("conv_pool", conv_pool)
        self.tokenizer = _checks.choice("tokenizer", tokenizer, TOKENIZERS)
        self.lowercase = _checks.boolean("lowercase", lowercase)
        self.embedding_dim = _checks.positive_int("embedding_dim", embedding_dim)
        self.min_count = _checks.positive_int("min_count", min_count)
        self.max_vocab = None if max_vocab is None else _checks.positive_int("max_vocab", max_vocab)
        if self.max_vocab is not None and self.max_vocab < 3:
            raise ValueError(f"max_vocab must be at least 3 (pad, unk and a word), got {max_vocab}")
        self.standardize = _checks.boolean("standardize", standardize)
        for name, value in (("text_column", text_column), ("label_column", label_column)):
            if not isinstance(value, str) or not value:
                raise TypeError(f"{name} must be a non-empty str, got {_checks.describe(value)}")
        self.text_column, self.label_column = text_column, label_column
        if label_sep is not None and (not isinstance(label_sep, str) or not label_sep):
            raise TypeError(f"label_sep must be a non-empty str or None, got {label_sep!r}")
        self.label_sep = label_sep
        self.batch_size = _checks.positive_int("batch_size", batch_size)
        self.vocabulary = None if vocabulary is None else list(vocabulary)
        if self.vocabulary is not None and self.vocabulary[:2] != [PAD, UNK]:
            raise ValueError(
                f"vocabulary must start with {PAD!r}, {UNK!r}, got {self.vocabulary[:2]}"
            )
        self.labels = None if labels is None else [_label_value(v) for v in labels]
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be distinct, got {self.labels}")
        self.input_size = (
            None if input_size is None else _checks.positive_int("input_size", input_size)
        )
        self.multi_label = (
            None if multi_label is None else _checks.boolean("multi_label", multi_label)
        )
        self.feature_mean = None if feature_mean is None else [float(v) for v in feature_mean]
        self.feature_std = None if feature_std is None else [float(v) for v in feature_std]
        if self.hierarchical and self.input_size is not None:
            raise ValueError("hierarchical=True needs text input: sentences of words")
        super().__init__(**train_options)

    # ------------------------------------------------------------------ parameters
    def get_params(self) -> dict[str, Any]:
        """Every parameter of ``__init__`` but the training options, with the learned ones."""
        names = get_task(self.task).estimator_params()
        return {name: getattr(self, name) for name in names}

    @property
    def is_text(self) -> bool:
        return self.input_size is None

    def build_model(self) -> nn.Module:
        if self.labels is None or (self.vocabulary is None and self.input_size is None):
            raise ValueError(
                "the model's inputs and labels are learned by fit(); call fit() or load() first"
            )
        return ClassifierModel(
            vocab_size=0 if self.vocabulary is None else len(self.vocabulary),
            input_size=self.input_size or 0,
            embedding_dim=self.embedding_dim,
            num_classes=len(self.labels),
            hierarchical=self.hierarchical,
            feature_mean=self.feature_mean,
            feature_std=self.feature_std,
            cell=self.cell,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
            dropout=self.dropout,
            pooling=self.pooling,
            attention_size=self.attention_size,
            conv_layers=self.conv_layers,
            conv_channels=self.conv_channels,
            conv_kernel=self.conv_kernel,
            conv_pool=self.conv_pool,
        )

    # ------------------------------------------------------------------ inputs
    def read(self, path: str | os.PathLike[str], *, need_labels: bool = True) -> Table:
        """A data file in this estimator's format: ``.npz`` numeric sequences, else a CSV read
        with ``text_column``, ``label_column`` and ``label_sep``."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"data file {path} does not exist")
        if path.suffix.lower() == ".npz":
            return read_npz_table(path, need_labels=need_labels)
        return read_csv_table(
            path, self.text_column, self.label_column if need_labels else None, self.label_sep
        )

    def _table(self, X: Any, y: Any, need_labels: bool) -> Table:
        """``X`` and ``y`` as a :class:`Table`: read from a data file, or checked for length."""
        if isinstance(X, Table):
            return X
        if isinstance(X, (str, os.PathLike)):
            if y is not None:
                raise TypeError("y must be None when X is a data file: the file holds the labels")
            return self.read(X, need_labels=need_labels)
        if isinstance(X, (Tensor, np.ndarray)):
            array = torch.as_tensor(X)
            if array.dim() == 2:
                array = array.unsqueeze(-1)
            if array.dim() != 3 or not (array.is_floating_point() or array.dtype == torch.long):
                raise ValueError(
                    f"X as an array must have shape (N, T, F), got {tuple(array.shape)}"
                )
            X = list(array.float().unbind(0))
        if not isinstance(X, Sequence) or isinstance(X, str) or len(X) == 0:
            raise TypeError(
                f"X must be a non-empty list of texts or of (T, F) arrays, an (N, T, F) array or "
                f"a data file, got {_checks.describe(X)}"
            )
        where = [f"X[{i}]" for i in range(len(X))]
        if y is None:
            if need_labels:
                raise TypeError("y is required: one label (or list of labels) per item of X")
            return Table(list(X), None, where)
        y = list(y.tolist() if isinstance(y, (Tensor, np.ndarray)) else y)
        if len(y) != len(X):
            raise ValueError(f"y must have one label per item of X: X has {len(X)}, y has {len(y)}")
        return Table(list(X), y, where)

    def _tokens(self, text: Any, where: str) -> Any:
        if not isinstance(text, str):
            raise TypeError(f"{where} must be a str (a text model), got {_checks.describe(text)}")
        if self.hierarchical:
            sentences = [tokenize(s, self.tokenizer, self.lowercase) for s in split_sentences(text)]
            sentences = [s for s in sentences if s]
            if not sentences:
                raise ValueError(f"{where}: the text has no tokens")
            return sentences
        tokens = tokenize(text, self.tokenizer, self.lowercase)
        if not tokens:
            raise ValueError(f"{where}: the text has no tokens")
        return tokens

    def _series(self, value: Any, where: str) -> Tensor:
        if isinstance(value, str):
            raise TypeError(f"{where} is a str, but this model reads numeric sequences")
        x = torch.as_tensor(np.asarray(value, dtype=np.float32))
        if x.dim() == 1:
            x = x.unsqueeze(-1)
        if x.dim() != 2 or x.shape[0] == 0:
            raise ValueError(f"{where} must be a (T, F) array with T >= 1, got {tuple(x.shape)}")
        if self.input_size is not None and x.shape[1] != self.input_size:
            raise ValueError(
                f"{where} has {x.shape[1]} features, the model reads {self.input_size}"
            )
        bad = (~torch.isfinite(x)).nonzero()
        if len(bad):
            t, f = (int(i) for i in bad[0])
            raise ValueError(f"{where}: step {t}, feature {f} is {x[t, f].item()}: not finite")
        return x

    def _encode_x(self, table: Table) -> list[Any]:
        if self.is_text:
            assert self.vocabulary is not None
            index = {w: i for i, w in enumerate(self.vocabulary)}
            encoded: list[Any] = []
            for text, where in zip(table.X, table.where, strict=True):
                tokens = self._tokens(text, where)
                ids = (
                    [[index.get(w, 1) for w in s] for s in tokens]
                    if self.hierarchical
                    else [[index.get(w, 1) for w in tokens]]
                )
                tensors = [torch.tensor(s, dtype=torch.long) for s in ids]
                encoded.append(tensors if self.hierarchical else tensors[0])
            return encoded
        return [self._series(x, where) for x, where in zip(table.X, table.where, strict=True)]

    def _encode_y(self, table: Table) -> list[Tensor]:
        assert table.y is not None and self.labels is not None
        index = {label: i for i, label in enumerate(self.labels)}
        known = ", ".join(map(repr, self.labels[:20])) + (" ..." if len(self.labels) > 20 else "")

        def lookup(label: Any, where: str) -> int:
            label = _label_value(label)
            if label not in index:
                raise ValueError(f"{where}: unseen label {label!r}; the model knows {known}")
            return index[label]

        targets = []
        for label, where in zip(table.y, table.where, strict=True):
            if self.multi_label:
                if isinstance(label, (str, int)):
                    raise TypeError(
                        f"{where}: a multi-label target must be a list of labels, got {label!r}"
                    )
                target = torch.zeros(len(self.labels))
                for one in label:
                    target[lookup(one, where)] = 1.0
                targets.append(target)
            else:
                if not isinstance(label, (str, int, np.generic)):
                    raise TypeError(
                        f"{where}: this model predicts one label per item, got {label!r}"
                    )
                targets.append(torch.tensor(lookup(label, where)))
        return targets

    def _learn_inputs(self, table: Table) -> None:
        """The vocabulary or the feature count and statistics, and the labels, from the
        training data (each kept when given to ``__init__``)."""
        first = table.X[0]
        if isinstance(first, str):
            if self.vocabulary is None:
                docs = []
                for text, where in zip(table.X, table.where, strict=True):
                    tokens = self._tokens(text, where)
                    docs.append([w for s in tokens for w in s] if self.hierarchical else tokens)
                self.vocabulary = build_vocabulary(
                    docs, min_count=self.min_count, max_size=self.max_vocab
                )
        else:
            if self.hierarchical:
                raise ValueError("hierarchical=True needs text input: sentences of words")
            series = [self._series(x, where) for x, where in zip(table.X, table.where, strict=True)]
            sizes = {s.shape[1] for s in series}
            if len(sizes) != 1:
                raise ValueError(
                    f"every sequence of X must have the same features, got {sorted(sizes)}"
                )
            self.input_size = sizes.pop()
            if self.standardize and self.feature_mean is None:
                steps = torch.cat(series).double()
                self.feature_mean = steps.mean(0).tolist()
                self.feature_std = steps.std(0, correction=0).clamp_min(1e-6).tolist()
        assert table.y is not None
        multi = [not isinstance(v, (str, int, np.generic)) for v in table.y]
        if any(multi) and not all(multi):
            i = multi.index(not multi[0])
            raise TypeError(
                f"{table.where[i]}: y mixes single labels and lists of labels; give one label "
                "per item (multi-class) or a list per item (multi-label)"
            )
        self.multi_label = multi[0]
        if self.labels is None:
            seen = {_label_value(v) for value in table.y for v in (value if multi[0] else [value])}
            if len({type(v) for v in seen}) > 1:
                raise TypeError("labels must be all str or all int, got both")
            self.labels = sorted(seen)  # type: ignore[type-var]
        if len(self.labels) < (1 if self.multi_label else 2):
            raise ValueError(f"y must hold at least two classes, got {self.labels}")

    def _loader(self, items: list[Any], shuffle: bool) -> DataLoader[Any]:
        return DataLoader(
            items,  # type: ignore[arg-type]
            batch_size=self.batch_size,
            shuffle=shuffle,
            collate_fn=Collate(self.hierarchical),
        )

    # ------------------------------------------------------------------ the estimator API
    def fit(  # type: ignore[override]
        self,
        X: Any,
        y: Any = None,
        *,
        val: Any = None,
        out: str | os.PathLike[str] | None = None,
        resume: bool = False,
    ) -> SequenceClassifier:
        """Train on ``X`` and ``y`` (or the data file ``X``), validating on ``val`` (a tuple
        ``(X, y)`` or a data file) after every epoch; ``out`` keeps checkpoints, ``log.csv``
        and the saved estimator."""
        table = self._table(X, y, need_labels=True)
        self._learn_inputs(table)
        train = list(zip(self._encode_x(table), self._encode_y(table), strict=True))
        val_loader = None
        if val is not None:
            val_table = self._labelled(val, "val")
            val_items = list(zip(self._encode_x(val_table), self._encode_y(val_table), strict=True))
            val_loader = self._loader(val_items, shuffle=False)
        self._fit_model(
            self._loader(train, True), val_loader, _classification_loss, out=out, resume=resume
        )
        return self

    def _labelled(self, data: Any, name: str) -> Table:
        """Labelled data given as a data file, a tuple ``(X, y)``, or either wrapped in a
        1-tuple (the argument tuples of the command line's ``make_data``)."""
        if isinstance(data, (tuple, list)) and len(data) == 1:
            data = data[0]
        if isinstance(data, Table):
            return data
        if isinstance(data, (str, os.PathLike)):
            return self._table(data, None, need_labels=True)
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            raise TypeError(
                f"{name} must be a tuple (X, y) or a data file, got {_checks.describe(data)}"
            )
        return self._table(data[0], data[1], need_labels=True)

    def _scores(self, X: Any) -> tuple[Tensor, list[dict[str, Tensor]], Table]:
        model = self._require_model()
        assert isinstance(model, ClassifierModel)
        table = self._table(X, None, need_labels=False)
        items = [(x, None) for x in self._encode_x(table)]
        device = next(model.parameters()).device
        scores, attention = [], []
        with torch.no_grad():
            for batch in self._loader(items, shuffle=False):
                batch = {k: v.to(device) for k, v in batch.items()}
                s, a = model.attend(batch)
                scores.append(s.float().cpu())
                for b in range(len(s)):
                    attention.append({k: v[b].cpu() for k, v in a.items()})
        return torch.cat(scores), attention, table

    def predict_proba(self, X: Any) -> Tensor:
        """Class probabilities ``(N, C)`` in the order of ``labels``: a softmax for multi-class,
        one sigmoid per label for multi-label."""
        scores = self._scores(X)[0]
        return torch.sigmoid(scores) if self.multi_label else torch.softmax(scores, dim=1)

    def _decide(self, proba: Tensor) -> list[Any]:
        assert self.labels is not None
        if self.multi_label:
            return [[self.labels[j] for j in np.flatnonzero(row >= 0.5)] for row in proba.numpy()]
        return [self.labels[j] for j in proba.argmax(1).tolist()]

    def predict(self, X: Any) -> list[Any]:  # type: ignore[override]
        """The predicted label of each item (multi-label: the list of labels whose probability
        is at least 0.5)."""
        return self._decide(self.predict_proba(X))

    def attention(self, X: Any) -> list[dict[str, Any]]:
        """Per item: its ``tokens`` (text: the token strings, per sentence when hierarchical;
        numeric: None) and its attention weights trimmed to its length: ``'steps'`` (T',) for a
        flat model (T' < T after pooling convolutions), or ``'words'`` (one tensor per sentence)
        and ``'sentences'`` (S,) for a hierarchical one. ``ValueError`` without attention."""
        if self.pooling != "attention":
            raise ValueError(
                f"this model pools by {self.pooling!r}, not by attention: no weights to show"
            )
        _, attention, table = self._scores(X)
        result = []
        for x, where, weights in zip(table.X, table.where, attention, strict=True):
            tokens = self._tokens(x, where) if self.is_text else None
            if self.hierarchical:
                assert tokens is not None
                result.append(
                    {
                        "tokens": tokens,
                        "sentences": weights["sentences"][: len(tokens)],
                        "words": [weights["words"][s, : len(t)] for s, t in enumerate(tokens)],
                    }
                )
            else:
                steps = len(tokens) if tokens is not None else len(self._series(x, where))
                for _ in range(self.conv_layers if self.conv_pool > 1 else 0):
                    steps = math.ceil(steps / self.conv_pool)
                result.append({"tokens": tokens, "steps": weights["steps"][:steps]})
        return result

    def evaluate(self, X: Any, y: Any = None) -> dict[str, float]:  # type: ignore[override]
        """``accuracy`` (multi-label: the fraction of items whose label set is exactly right),
        ``macro_f1`` (the unweighted mean of the per-label F1), for multi-label also
        ``micro_f1``, and the count ``n``. Labels the model has not seen raise ``ValueError``."""
        from sklearn.metrics import f1_score

        table = self._labelled((X, y) if y is not None else X, "data")
        self._require_model()
        truth = torch.stack(self._encode_y(table))
        proba = self.predict_proba(table)
        assert self.labels is not None
        if self.multi_label:
            guess = (proba >= 0.5).long().numpy()
            true = truth.long().numpy()
            return {
                "accuracy": float((guess == true).all(1).mean()),
                "macro_f1": float(f1_score(true, guess, average="macro", zero_division=0)),
                "micro_f1": float(f1_score(true, guess, average="micro", zero_division=0)),
                "n": len(true),
            }
        guess = proba.argmax(1).numpy()
        true = truth.numpy()
        return {
            "accuracy": float((guess == true).mean()),
            "macro_f1": float(
                f1_score(
                    true,
                    guess,
                    labels=list(range(len(self.labels))),
                    average="macro",
                    zero_division=0,
                )
            ),
            "n": len(true),
        }


# ====================================================================== heat maps
def plot_attention(
    items: Sequence[dict[str, Any]],
    path: str | os.PathLike[str],
    *,
    titles: Sequence[str] | None = None,
) -> None:
    """Draw attention weights (from :meth:`SequenceClassifier.attention`) as heat maps, one
    row per item, into ``path`` (any format matplotlib writes: .png, .pdf, .svg). Text shows
    each token under its weight; a hierarchical item shows one row per sentence, its sentence
    weight at the left."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not items:
        raise ValueError("items must hold at least one attention result")
    rows: list[tuple[str, np.ndarray, list[str] | None]] = []
    for i, item in enumerate(items):
        name = titles[i] if titles is not None else f"item {i}"
        if "sentences" in item:
            for s, (weights, tokens) in enumerate(zip(item["words"], item["tokens"], strict=True)):
                label = f"{name} s{s} ({float(item['sentences'][s]):.2f})"
                rows.append((label, weights.numpy(), tokens))
        else:
            tokens = item["tokens"]
            rows.append((name, item["steps"].numpy(), tokens))
    width = max(len(w) for _, w, _ in rows)
    grid = np.full((len(rows), width), np.nan)
    for r, (_, weights, _) in enumerate(rows):
        grid[r, : len(weights)] = weights
    fig, ax = plt.subplots(figsize=(min(2 + 0.45 * width, 40), 1 + 0.5 * len(rows)))
    image = ax.imshow(grid, aspect="auto", cmap="Reds", vmin=0.0)
    ax.set_yticks(range(len(rows)), [name for name, _, _ in rows])
    ax.set_xlabel("step")
    for r, (_, _, tokens) in enumerate(rows):
        for c, token in enumerate(tokens or []):
            ax.text(c, r, token, ha="center", va="center", fontsize=7, rotation=90)
    fig.colorbar(image, ax=ax, label="attention weight")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ====================================================================== command line
def _add_arguments(group: argparse._ActionsContainer) -> None:
    data = group.add_argument
    data(
        "--data", metavar="FILE", help="training data: .csv/.tsv (text) or .npz (numeric); required"
    )
    data("--valid", metavar="FILE", help="validation data (default: --val-fraction of --data)")
    data("--val-fraction", type=float, default=0.1, metavar="P", help="held out without --valid")
    data("--text-column", default="text", metavar="NAME", help="CSV column of the text")
    data("--label-column", default="label", metavar="NAME", help="CSV column of the label(s)")
    data("--label-sep", metavar="SEP", help="multi-label: labels in a cell are separated by SEP")
    data("--cell", choices=tuple(CELLS), default="lstm", help="recurrent layer")
    data("--hidden-size", type=int, default=64, metavar="H", help="hidden units per direction")
    data("--num-layers", type=int, default=1, metavar="L", help="stacked recurrent layers")
    data(
        "--bidirectional",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="both directions",
    )
    data("--dropout", type=float, default=0.2, metavar="P", help="dropout")
    data("--pooling", choices=POOLINGS, default="attention", help="how outputs become one vector")
    data("--attention-size", type=int, default=64, metavar="A", help="additive attention size")
    data("--hierarchical", action="store_true", help="hierarchical attention network (text)")
    data("--conv-layers", type=int, default=0, metavar="K", help="convolutions before the RNN")
    data("--conv-channels", type=int, default=64, metavar="C", help="channels per convolution")
    data("--conv-kernel", type=int, default=5, metavar="W", help="convolution width (odd)")
    data("--conv-pool", type=int, default=1, metavar="P", help="max-pool by P after each conv")
    data("--tokenizer", choices=TOKENIZERS, default="whitespace", help="how text is cut")
    data("--lowercase", action=argparse.BooleanOptionalAction, default=True, help="lowercase text")
    data("--embedding-dim", type=int, default=64, metavar="E", help="token embedding size")
    data("--min-count", type=int, default=1, metavar="N", help="rarer tokens become <unk>")
    data("--max-vocab", type=int, metavar="N", help="largest vocabulary")
    data(
        "--standardize", action=argparse.BooleanOptionalAction, default=True, help="scale features"
    )
    data("--batch-size", type=int, default=32, metavar="B", help="batch size")


def _make_data(args: argparse.Namespace) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    if not args.data:
        raise ValueError("--data FILE is required: the training data (.csv, .tsv or .npz)")
    if args.valid:
        return (args.data,), (args.valid,)
    fraction = float(args.val_fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--val-fraction must be in (0, 1), got {fraction}")
    reader = SequenceClassifier(
        text_column=args.text_column, label_column=args.label_column, label_sep=args.label_sep
    )
    table = reader.read(args.data)
    n_val = max(1, round(fraction * len(table.X)))
    if n_val >= len(table.X):
        raise ValueError(
            f"{args.data} has {len(table.X)} items: too few to hold out {n_val} for validation "
            "(give --valid FILE)"
        )
    order = torch.randperm(len(table.X), generator=torch.Generator().manual_seed(args.seed))
    assert table.y is not None
    y = table.y

    def subset(indices: list[int]) -> Table:  # keeps each item's file and line for messages
        return Table(
            [table.X[i] for i in indices],
            [y[i] for i in indices],
            [table.where[i] for i in indices],
        )

    return (subset(order[n_val:].tolist()),), (subset(order[:n_val].tolist()),)


def _read_data(path: str) -> tuple[Any, ...]:
    if not Path(path).is_file():
        raise ValueError(f"data file {path} does not exist")
    return (path,)


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="the --out of a classifier training run")
    parser.add_argument("--data", required=True, metavar="FILE", help=".csv/.tsv or .npz inputs")
    parser.add_argument(
        "--probabilities", action="store_true", help="print JSON lines with every probability"
    )
    parser.add_argument("--attention-plot", metavar="FILE", help="heat map of the attention")
    parser.add_argument(
        "--examples", type=int, default=8, metavar="N", help="items in the heat map (default 8)"
    )


def _run_predict(args: argparse.Namespace) -> int:
    config = read_config(args.directory)
    if config["task"] != SequenceClassifier.task:
        raise ValueError(
            f"{args.directory} holds a {config['task']!r} model; lstmkit predict reads classifier "
            "models"
        )
    estimator = SequenceClassifier.load(args.directory)
    examples = _checks.positive_int("--examples", args.examples)
    table = estimator.read(args.data, need_labels=False)
    proba = estimator.predict_proba(table)
    predictions = estimator._decide(proba)
    assert estimator.labels is not None
    out = sys.stdout
    for p, row in zip(predictions, proba.tolist(), strict=True):
        if args.probabilities:
            probs = {str(k): round(v, 6) for k, v in zip(estimator.labels, row, strict=True)}
            out.write(json.dumps({"label": p, "probabilities": probs}) + "\n")
        elif estimator.multi_label:
            out.write((estimator.label_sep or ",").join(map(str, p)) + "\n")
        else:
            out.write(f"{p}\n")
    if args.attention_plot:
        head = Table(table.X[:examples], None, table.where[:examples])
        items = estimator.attention(head)
        titles = [
            f"{w.split(', ')[-1]}: {p}" for w, p in zip(table.where, predictions, strict=False)
        ]
        plot_attention(items, args.attention_plot, titles=titles[: len(items)])
    return 0


register(
    TaskSpec(
        name="classifier",
        help="sequence classification of texts (CSV) or numeric sequences (.npz)",
        estimator=SequenceClassifier,
        add_arguments=_add_arguments,
        make_data=_make_data,
        read_data=_read_data,
    )
)
register_command(
    Command(
        name="predict",
        help="print a trained classifier's predictions for a data file",
        add_arguments=_predict_arguments,
        run=_run_predict,
    )
)
