"""Sequence to sequence with attention: an encoder-decoder of lstmkit LSTMs that maps a token
sequence to another (translation, transliteration, arithmetic, sorting).

The model, read top to bottom:

* **Encoder**: an embedding and a bidirectional, stacked :class:`lstmkit.LSTM` over the source
  (run with ``lengths=``, so padding never leaks into the states). Its top layer's final forward
  and backward states, through a ``tanh`` bridge, start every decoder layer.
* **Decoder**: a stacked :class:`lstmkit.LSTM` run one step at a time. Every attention type
  follows Luong et al. (2015)'s order: the LSTM steps first, its top output ``h_t`` queries the
  encoder memory (Bahdanau's additive score, or Luong's ``dot``, ``general`` or ``concat``), and
  the *attentional state* ``h~_t = tanh(W_c [context_t; h_t])`` gives the output distribution.
  With **input feeding**, ``h~_{t-1}`` is concatenated to the next input embedding, so the
  decoder knows what it attended to before.
* **Coverage** (See et al. 2017): the attention summed over the previous steps enters the
  additive score, and ``coverage_weight * sum_t sum_i min(a_ti, c_ti)`` joins the loss.
* **Copy / pointer-generator** (See et al. 2017): ``p_gen = sigmoid(w [context; h_t; x_t])``
  mixes the vocabulary distribution with the attention scattered onto the source tokens,
  ``P(w) = p_gen P_vocab(w) + (1 - p_gen) sum_{i: x_i = w} a_i``. Source tokens outside the
  vocabulary get temporary ids ``V, V + 1, ...`` per sequence (an *extended vocabulary*), so the
  model can output a token it has never seen in training, e.g. a name to carry over.

Training is teacher forcing, or scheduled sampling (Bengio et al. 2015): at each step, each
sequence's next input is the reference token with probability ``eps_i`` and otherwise a token
drawn from the model's own previous prediction, with ``eps_i`` decaying with the update count
``i`` (linear, exponential or inverse sigmoid, :func:`teacher_forcing_ratio`). Decoding goes
through :mod:`lstmkit.decode` (greedy, sampling, batched beam search with length normalisation,
GNMT length and coverage penalties, n-gram blocking and n-best lists): the model only provides
its step function, :meth:`Seq2SeqModel.step`.

**Tokens.** ``tokens='char'`` splits a string into its characters (spaces included, so the
output is the exact string); ``tokens='word'`` splits on whitespace and joins with one space.
Source and target share one vocabulary (so that a copied token and a generated one are the same
id), built from the training pairs: tokens seen at least ``min_count`` times, the
``max_vocab`` most frequent (ties in first-seen order), plus ``<pad> <unk> <s> </s>``.

**Data** is tab-separated ``source<TAB>target`` lines (:func:`read_pairs`); blank lines are
skipped; a line without a tab, or with two, is an error that names the file, line and column::

    lstmkit train seq2seq --data pairs.tsv [--valid pairs.tsv] --out DIR
    lstmkit translate DIR < input.txt          # one source per line, one translation per line
    lstmkit evaluate DIR --data pairs.tsv      # exact_match, bleu, chrf (sacrebleu)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .. import _checks
from ..data import BucketBatchSampler
from ..decode import LENGTH_PENALTIES, beam_search, greedy, sample
from ..nn import LSTM, BahdanauAttention, LuongAttention, Memory, coverage_loss
from . import Command, Estimator, TaskSpec, register, register_command

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIALS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)
TOKENIZATIONS = ("char", "word")
ATTENTIONS = ("bahdanau", "dot", "general", "concat")
SCHEDULES = ("none", "linear", "exponential", "inverse_sigmoid")
DECODERS = ("greedy", "beam", "sample")
#: ``sampling_k`` when it is not given: where each schedule starts and how slowly it decays
DEFAULT_K = {"none": 1.0, "linear": 1.0, "exponential": 0.9999, "inverse_sigmoid": 1000.0}


# ---------------------------------------------------------------------- tokens and vocabulary
def tokenize(text: str, tokens: str) -> list[str]:
    """``text`` split into tokens: its characters (``'char'``) or its whitespace-separated
    words (``'word'``)."""
    _checks.choice("tokens", tokens, TOKENIZATIONS)
    return list(text) if tokens == "char" else text.split()


def detokenize(pieces: Sequence[str], tokens: str) -> str:
    """The inverse of :func:`tokenize` (for words, up to the amount of whitespace)."""
    return "".join(pieces) if tokens == "char" else " ".join(pieces)


def build_vocab(
    sequences: Iterable[Sequence[str]], *, min_count: int = 1, max_vocab: int | None = None
) -> list[str]:
    """The special tokens, then the tokens seen at least ``min_count`` times, most frequent first
    (ties in first-seen order), cut to ``max_vocab`` entries in all. Raises ``ValueError`` when
    no real token is left: a vocabulary of specials only cannot express any target."""
    min_count = _checks.positive_int("min_count", min_count)
    if max_vocab is not None:
        _check_max_vocab(max_vocab)
    counts: Counter[str] = Counter()
    for sequence in sequences:
        counts.update(sequence)
    for special in SPECIALS:
        counts.pop(special, None)
    kept = [t for t, n in counts.most_common() if n >= min_count]  # stable: first-seen ties
    vocab = [*SPECIALS, *kept]
    if max_vocab is not None:
        vocab = vocab[:max_vocab]
    if len(vocab) == len(SPECIALS):
        most = counts.most_common(1)
        raise ValueError(
            f"the vocabulary is too small: no token occurs at least min_count={min_count} times "
            f"(the most frequent, {most[0][0]!r}, occurs {most[0][1]} times)"
            if most
            else "the vocabulary is too small: the training pairs hold no token at all"
        )
    return vocab


def _check_max_vocab(value: Any) -> int:
    value = _checks.positive_int("max_vocab", value)
    if value <= len(SPECIALS):
        raise ValueError(
            f"max_vocab must be at least {len(SPECIALS) + 1} (the special tokens "
            f"{' '.join(SPECIALS)} and one real token), got {value}"
        )
    return value


def _check_vocab(vocab: Any) -> list[str]:
    if not isinstance(vocab, (list, tuple)) or not all(isinstance(t, str) for t in vocab):
        raise TypeError(f"vocab must be a list of token strings, got {_checks.describe(vocab)}")
    if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
        raise ValueError(
            f"vocab must start with the special tokens {list(SPECIALS)}, got {list(vocab[:4])}"
        )
    if len(vocab) <= len(SPECIALS):
        raise ValueError("vocab is too small: it must hold at least one token besides the specials")
    if len(set(vocab)) != len(vocab):
        twice = next(t for t in vocab if vocab.count(t) > 1)
        raise ValueError(f"vocab must not repeat a token, got {twice!r} twice")
    return list(vocab)


# ---------------------------------------------------------------------- data
def read_pairs(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """The ``(source, target)`` pairs of a tab-separated file, one pair per line.

    Blank lines are skipped. Errors name the file and the line (and the column of a second tab):
    a line without a tab, with more than one, or with an empty side; an empty file; a file that
    is not UTF-8.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"data file {path}: cannot read it ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = raw[: exc.start].count(b"\n") + 1
        raise ValueError(f"data file {path}, line {where}: not UTF-8 text ({exc.reason})") from None
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        first = line.find("\t")
        if first < 0:
            raise ValueError(
                f"data file {path}, line {number}: no tab; each line must be "
                f"'source<TAB>target', got {_clip(line)!r}"
            )
        second = line.find("\t", first + 1)
        if second >= 0:
            raise ValueError(
                f"data file {path}, line {number}, column {second + 1}: a second tab; each line "
                f"must be 'source<TAB>target' with exactly one tab, got {_clip(line)!r}"
            )
        source, target = line[:first], line[first + 1 :]
        for side, value in (("source (column 1)", source), ("target (column 2)", target)):
            if not value.strip():
                raise ValueError(f"data file {path}, line {number}: the {side} is empty")
        pairs.append((source, target))
    if not pairs:
        raise ValueError(f"data file {path} holds no pairs (expected 'source<TAB>target' lines)")
    return pairs


def write_pairs(path: str | os.PathLike[str], pairs: Iterable[tuple[str, str]]) -> None:
    """Write ``pairs`` as the tab-separated file :func:`read_pairs` reads."""
    checked = _check_pairs(list(pairs), "pairs")
    for i, (source, target) in enumerate(checked):
        if any(c in s for s in (source, target) for c in "\t\n\r"):
            raise ValueError(f"pairs[{i}] holds a tab or a line break, which TSV cannot store")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{source}\t{target}\n" for source, target in checked)


def _clip(text: str, size: int = 40) -> str:
    return text if len(text) <= size else text[:size] + "..."


def _check_pairs(pairs: Any, name: str) -> list[tuple[str, str]]:
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise TypeError(
            f"{name} must be a list of (source, target) string pairs, got {_checks.describe(pairs)}"
        )
    if not pairs:
        raise ValueError(f"{name} must hold at least one (source, target) pair, got none")
    for i, pair in enumerate(pairs):
        if (
            not isinstance(pair, (tuple, list))
            or len(pair) != 2
            or not all(isinstance(s, str) for s in pair)
        ):
            raise TypeError(
                f"{name}[{i}] must be a (source, target) pair of strings, "
                f"got {_checks.describe(pair)}"
            )
    return [(s, t) for s, t in pairs]


def _check_sources(sources: Any) -> list[str]:
    if isinstance(sources, str):
        raise TypeError(f"sources must be a list of strings, got one string {_clip(sources)!r}")
    if not isinstance(sources, Sequence) or not all(isinstance(s, str) for s in sources):
        raise TypeError(f"sources must be a list of strings, got {_checks.describe(sources)}")
    return list(sources)


@dataclass(frozen=True)
class Encoded:
    """One source encoded for the model: ``ids`` (in-vocabulary ids, ``<unk>`` for the rest),
    ``ext`` (the same with out-of-vocabulary tokens as ``V + j``, the copy mechanism's extended
    ids) and ``oov`` (those tokens, in order of first occurrence)."""

    ids: list[int]
    ext: list[int]
    oov: list[str]


class Vocabulary:
    """Token <-> id maps of one shared source/target vocabulary (specials first)."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def encode_source(self, pieces: Sequence[str]) -> Encoded:
        ids, ext, oov = [], [], []
        for piece in pieces:
            i = self.index.get(piece)
            if i is None:
                if piece not in oov:
                    oov.append(piece)
                ids.append(UNK_ID)
                ext.append(len(self.tokens) + oov.index(piece))
            else:
                ids.append(i)
                ext.append(i)
        return Encoded(ids, ext, oov)

    def encode_target(
        self, pieces: Sequence[str], oov: Sequence[str]
    ) -> tuple[list[int], list[int]]:
        """``(ids, ext)`` of a target followed by ``</s>``: an unknown token is ``<unk>`` in
        ``ids``, and in ``ext`` its extended id when the source holds it (what the copy
        mechanism is trained to point at)."""
        ids, ext = [], []
        for piece in pieces:
            i = self.index.get(piece)
            ids.append(UNK_ID if i is None else i)
            if i is None and piece in oov:
                ext.append(len(self.tokens) + list(oov).index(piece))
            else:
                ext.append(UNK_ID if i is None else i)
        return [*ids, EOS_ID], [*ext, EOS_ID]

    def decode(self, ids: Iterable[int], oov: Sequence[str]) -> list[str]:
        """Tokens of ``ids`` (extended ids map to ``oov``), up to the first ``</s>``."""
        out = []
        for i in ids:
            if i == EOS_ID:
                break
            out.append(self.tokens[i] if i < len(self.tokens) else oov[i - len(self.tokens)])
        return out


def _collate(items: list[dict[str, list[int]]]) -> dict[str, Tensor]:
    """Pad a list of encoded examples into the model's batch: ``src``, ``src_ext`` ``(B, S)``,
    ``src_len`` ``(B,)``, ``oov`` ``(B, max_oov)`` bool (which extended slots exist),
    ``tgt``/``tgt_ext`` ``(B, T)`` (the targets with ``</s>``, padded with ``<pad>``)."""
    B = len(items)
    S = max(len(it["src"]) for it in items)
    T = max((len(it["tgt"]) for it in items if "tgt" in it), default=0)
    n_oov = max(it["n_oov"][0] for it in items)
    batch = {
        "src": torch.full((B, S), PAD_ID, dtype=torch.long),
        "src_ext": torch.full((B, S), PAD_ID, dtype=torch.long),
        "src_len": torch.tensor([len(it["src"]) for it in items], dtype=torch.long),
        "oov": torch.zeros(B, n_oov, dtype=torch.bool),
    }
    if T:
        batch["tgt"] = torch.full((B, T), PAD_ID, dtype=torch.long)
        batch["tgt_ext"] = torch.full((B, T), PAD_ID, dtype=torch.long)
    for b, it in enumerate(items):
        batch["src"][b, : len(it["src"])] = torch.tensor(it["src"])
        batch["src_ext"][b, : len(it["src"])] = torch.tensor(it["src_ext"])
        batch["oov"][b, : it["n_oov"][0]] = True
        if T:
            batch["tgt"][b, : len(it["tgt"])] = torch.tensor(it["tgt"])
            batch["tgt_ext"][b, : len(it["tgt"])] = torch.tensor(it["tgt_ext"])
    return batch


# ---------------------------------------------------------------------- scheduled sampling
def teacher_forcing_ratio(
    schedule: str, step: int, *, k: float | None = None, c: float = 1e-4, minimum: float = 0.0
) -> float:
    """``eps_i``, the probability of feeding the reference token at update ``step`` (Bengio et
    al. 2015): ``'none'``: 1 (teacher forcing); ``'linear'``: ``max(minimum, k - c i)``;
    ``'exponential'``: ``max(minimum, k ** i)`` with ``0 < k < 1``; ``'inverse_sigmoid'``:
    ``max(minimum, k / (k + exp(i / k)))`` with ``k >= 1``. ``k`` defaults to
    :data:`DEFAULT_K` of the schedule."""
    _checks.choice("sampling_schedule", schedule, SCHEDULES)
    k = DEFAULT_K[schedule] if k is None else k
    if schedule == "none":
        return 1.0
    if schedule == "linear":
        eps = k - c * step
    elif schedule == "exponential":
        eps = k**step
    else:
        eps = k / (k + math.exp(min(step / k, 700.0)))
    return min(1.0, max(minimum, eps))


def _check_schedule(schedule: str, k: float | None, c: float, minimum: float) -> None:
    _checks.choice("sampling_schedule", schedule, SCHEDULES)
    if k is not None:
        k = _checks.real("sampling_k", k)
        if schedule == "exponential" and not 0.0 < k < 1.0:
            raise ValueError(f"sampling_k must be in (0, 1) for the exponential schedule, got {k}")
        if schedule == "inverse_sigmoid" and k < 1.0:
            raise ValueError(f"sampling_k must be >= 1 for the inverse_sigmoid schedule, got {k}")
        if schedule == "linear" and not 0.0 < k <= 1.0:
            raise ValueError(f"sampling_k must be in (0, 1] for the linear schedule, got {k}")
    if _checks.real("sampling_c", c) < 0.0:
        raise ValueError(f"sampling_c must be >= 0, got {c}")
    if not 0.0 <= _checks.real("sampling_min", minimum) <= 1.0:
        raise ValueError(f"sampling_min must be in [0, 1], got {minimum}")


# ---------------------------------------------------------------------- the model
class Seq2SeqModel(nn.Module):
    """Bidirectional LSTM encoder, attentional LSTM decoder, optional coverage and copy.

    ``forward(batch)`` returns the summed token NLL, the summed coverage loss and the token
    count of a teacher-forced (or scheduled-sampling) pass; :meth:`start` and :meth:`step` are
    the pieces :mod:`lstmkit.decode` searches with.
    """

    updates: Tensor

    def __init__(
        self,
        vocab_size: int,
        *,
        embedding_size: int,
        hidden_size: int,
        encoder_layers: int,
        decoder_layers: int,
        attention: str,
        attention_size: int,
        input_feeding: bool,
        coverage: bool,
        copy: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        H, E = hidden_size, embedding_size
        self.vocab_size, self.hidden_size = vocab_size, H
        self.decoder_layers, self.input_feeding = decoder_layers, input_feeding
        self.use_coverage, self.copy = coverage, copy
        self.src_embed = nn.Embedding(vocab_size, E, padding_idx=PAD_ID)
        self.tgt_embed = nn.Embedding(vocab_size, E, padding_idx=PAD_ID)
        self.encoder = LSTM(
            E, H, encoder_layers, batch_first=True, bidirectional=True, dropout=dropout
        )
        self.bridge = nn.Linear(4 * H, 2 * decoder_layers * H)  # [h_fwd; h_bwd; c_fwd; c_bwd]
        self.decoder = LSTM(E + (H if input_feeding else 0), H, decoder_layers, dropout=dropout)
        self.key_proj = nn.Linear(2 * H, H, bias=False) if attention == "dot" else None
        self.attention: BahdanauAttention | LuongAttention
        if attention == "bahdanau":
            self.attention = BahdanauAttention(
                H, 2 * H, attention_size, coverage=coverage, batch_first=True
            )
        elif attention == "dot":
            self.attention = LuongAttention(H, H, score="dot", batch_first=True)
        elif attention == "general":
            self.attention = LuongAttention(H, 2 * H, score="general", batch_first=True)
        else:
            self.attention = LuongAttention(
                H, 2 * H, score="concat", hidden_size=attention_size, coverage=coverage,
                batch_first=True,
            )  # fmt: skip
        self.combine = nn.Linear(3 * H, H)
        self.output = nn.Linear(H, vocab_size)
        self.copy_gate = nn.Linear(3 * H + E, 1) if copy else None
        self.dropout = nn.Dropout(dropout)
        # updates seen in training: drives scheduled sampling, and is saved with the weights so
        # that a resumed run continues the schedule where it was
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    # -------------------------------------------------------------- encoder
    def start(self, src: Tensor, src_len: Tensor, src_ext: Tensor, oov: Tensor) -> dict[str, Any]:
        """Encode a padded source batch and return the decoder's initial state, rows first (the
        layout :mod:`lstmkit.decode` reorders): ``h``, ``c`` ``(B, layers, H)``, ``feed``
        ``(B, H)``, the attention ``memory``, ``coverage`` ``(B, S)`` (with coverage), and the
        copy mechanism's ``src_ext`` ``(B, S)`` and ``oov`` ``(B, max_oov)``."""
        B, S = src.shape
        out, (h_n, c_n) = self.encoder(self.dropout(self.src_embed(src)), lengths=src_len.cpu())
        top = torch.cat([h_n[-2], h_n[-1], c_n[-2], c_n[-1]], dim=-1)  # top layer, both ways
        h0, c0 = torch.tanh(self.bridge(top)).view(B, 2, self.decoder_layers, -1).unbind(1)
        keys = out if self.key_proj is None else self.key_proj(out)
        state: dict[str, Any] = {
            "h": h0,
            "c": c0,
            "feed": out.new_zeros(B, self.hidden_size),
            "memory": self.attention.prepare(keys, out, lengths=src_len),
            "src_ext": src_ext,
            "oov": oov,
        }
        if self.use_coverage:
            state["coverage"] = out.new_zeros(B, S)
        return state

    # -------------------------------------------------------------- one decoder step
    def step(self, tokens: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any], Tensor]:
        """One decoder step: ``(log_probs (N, V + max_oov), new_state, attention (N, S))``.

        Extended (copied out-of-vocabulary) ids fed back as input become ``<unk>``. ``<pad>``,
        ``<s>`` and extended slots a sequence does not have get probability 0."""
        V = self.vocab_size
        embedded = self.dropout(self.tgt_embed(tokens.masked_fill(tokens >= V, UNK_ID)))
        x = torch.cat([embedded, state["feed"]], dim=-1) if self.input_feeding else embedded
        hx = (state["h"].transpose(0, 1).contiguous(), state["c"].transpose(0, 1).contiguous())
        out, (h, c) = self.decoder(x.unsqueeze(0), hx)
        query = out[0]
        memory: Memory = state["memory"]
        coverage = state.get("coverage")
        context, weights = self.attention(query, memory, coverage=coverage)
        feed = torch.tanh(self.combine(torch.cat([context, query], dim=-1)))
        logits = self.output(self.dropout(feed))
        oov: Tensor = state["oov"]
        if self.copy_gate is None:
            log_probs = torch.log_softmax(logits, dim=-1)
        else:
            gate_in = torch.cat([context, query, embedded], dim=-1)
            p_gen = torch.sigmoid(self.copy_gate(gate_in))
            vocab_part = p_gen * torch.softmax(logits, dim=-1)
            dist = torch.cat([vocab_part, vocab_part.new_zeros(len(tokens), oov.shape[1])], -1)
            dist = dist.scatter_add(1, state["src_ext"], (1.0 - p_gen) * weights)
            # clamped: a target the mixture gives (numerically) 0 must not make the loss inf
            log_probs = dist.clamp_min(1e-30).log()
        banned = torch.zeros_like(log_probs, dtype=torch.bool)
        banned[:, [PAD_ID, BOS_ID]] = True  # never generated
        banned[:, V:] = ~oov  # extended slots this sequence's source does not have
        log_probs = log_probs.masked_fill(banned, -math.inf)
        new_state = {**state, "h": h.transpose(0, 1), "c": c.transpose(0, 1), "feed": feed}
        if coverage is not None:
            new_state["coverage"] = coverage + weights
        return log_probs, new_state, weights

    # -------------------------------------------------------------- training pass
    def forward(
        self, batch: dict[str, Tensor], teacher_forcing: float = 1.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(nll, coverage, tokens)``: summed NLL of the targets (with ``</s>``), summed
        coverage loss over the target steps, and the number of target tokens. Each step's input
        is the reference token with probability ``teacher_forcing``, else a token drawn from the
        model's previous output distribution (scheduled sampling)."""
        state = self.start(batch["src"], batch["src_len"], batch["src_ext"], batch["oov"])
        target, target_ext = batch["tgt"], batch["tgt_ext"]
        mask = target != PAD_ID
        B, T = target.shape
        tokens = target.new_full((B,), BOS_ID)
        log_probs: Tensor | None = None
        nll = target.new_zeros((), dtype=torch.float32)
        cover = nll.clone()
        for t in range(T):
            if t > 0:
                tokens = target[:, t - 1]
                if teacher_forcing < 1.0 and log_probs is not None:
                    with torch.no_grad():
                        drawn = torch.multinomial(log_probs.detach().exp(), 1).squeeze(1)
                    use_model = torch.rand(B, device=tokens.device) >= teacher_forcing
                    tokens = torch.where(use_model, drawn, tokens)
            previous_coverage = state.get("coverage")
            log_probs, state, weights = self.step(tokens, state)
            picked = log_probs.gather(1, target_ext[:, t : t + 1]).squeeze(1)
            nll = nll - picked.masked_fill(~mask[:, t], 0.0).sum()
            if previous_coverage is not None:
                step_cover = coverage_loss(weights, previous_coverage)
                cover = cover + step_cover.masked_fill(~mask[:, t], 0.0).sum()
        return nll, cover, mask.sum()


# ---------------------------------------------------------------------- the estimator
@dataclass(frozen=True)
class Hypothesis:
    """One decoded output: its ``text``, its ``tokens`` and ``score`` (the search's ranking
    score: the log-probability, with the length and coverage penalties in beam search)."""

    text: str
    tokens: list[str]
    score: float


class Seq2Seq(Estimator):
    """An attentional encoder-decoder over tab-separated (source, target) pairs.

    Model: ``tokens`` (``'char'`` or ``'word'``), ``embedding_size``, ``hidden_size`` (per
    direction of the encoder, and of the decoder), ``encoder_layers``, ``decoder_layers``,
    ``attention`` (``'bahdanau'``, ``'dot'``, ``'general'``, ``'concat'``), ``attention_size``
    (hidden layer of the additive scores; default ``hidden_size``), ``input_feeding``,
    ``coverage`` (needs ``'bahdanau'`` or ``'concat'``) with ``coverage_weight`` (the loss's
    factor), ``copy`` (pointer-generator), ``dropout``. Vocabulary: ``min_count``,
    ``max_vocab``, ``vocab`` (set by ``fit``; given, it is used as it is). Training:
    ``batch_size``, ``sampling_schedule`` with ``sampling_k``, ``sampling_c``, ``sampling_min``
    (see :func:`teacher_forcing_ratio`). Decoding, the defaults of :meth:`predict`,
    :meth:`translate` and :meth:`evaluate`: ``decode`` (``'greedy'``, ``'beam'``,
    ``'sample'``), ``beam_size``, ``length_penalty``, ``alpha``, ``coverage_penalty``,
    ``no_repeat_ngram_size``, ``max_len`` (default: twice the source length plus 10). Every
    other keyword is a :class:`~lstmkit.train.TrainConfig` option.
    """

    task = "seq2seq"

    def __init__(
        self,
        tokens: str = "char",
        embedding_size: int = 64,
        hidden_size: int = 128,
        encoder_layers: int = 1,
        decoder_layers: int = 1,
        attention: str = "bahdanau",
        attention_size: int | None = None,
        input_feeding: bool = True,
        coverage: bool = False,
        coverage_weight: float = 1.0,
        copy: bool = False,
        dropout: float = 0.0,
        batch_size: int = 64,
        min_count: int = 1,
        max_vocab: int | None = None,
        vocab: list[str] | None = None,
        sampling_schedule: str = "none",
        sampling_k: float | None = None,
        sampling_c: float = 1e-4,
        sampling_min: float = 0.0,
        decode: str = "greedy",
        beam_size: int = 5,
        length_penalty: str = "none",
        alpha: float = 0.6,
        coverage_penalty: float = 0.0,
        no_repeat_ngram_size: int = 0,
        max_len: int | None = None,
        **train_options: Any,
    ) -> None:
        c = _checks
        self.tokens = c.choice("tokens", tokens, TOKENIZATIONS)
        self.embedding_size = c.positive_int("embedding_size", embedding_size)
        self.hidden_size = c.positive_int("hidden_size", hidden_size)
        self.encoder_layers = c.positive_int("encoder_layers", encoder_layers)
        self.decoder_layers = c.positive_int("decoder_layers", decoder_layers)
        self.attention = c.choice("attention", attention, ATTENTIONS)
        self.attention_size = (
            None if attention_size is None else c.positive_int("attention_size", attention_size)
        )
        if self.attention_size is not None and attention not in ("bahdanau", "concat"):
            raise ValueError(
                f"attention_size applies to attention='bahdanau' or 'concat' (the additive "
                f"scores), got attention={attention!r}"
            )
        self.input_feeding = c.boolean("input_feeding", input_feeding)
        self.coverage = c.boolean("coverage", coverage)
        if self.coverage and attention not in ("bahdanau", "concat"):
            raise ValueError(
                f"coverage=True needs attention='bahdanau' or 'concat' (an additive score to "
                f"feed the coverage into), got attention={attention!r}"
            )
        self.coverage_weight = c.real("coverage_weight", coverage_weight)
        if self.coverage_weight < 0:
            raise ValueError(f"coverage_weight must be >= 0, got {coverage_weight}")
        self.copy = c.boolean("copy", copy)
        self.dropout = c.probability("dropout", dropout)
        self.batch_size = c.positive_int("batch_size", batch_size)
        self.min_count = c.positive_int("min_count", min_count)
        self.max_vocab = None if max_vocab is None else _check_max_vocab(max_vocab)
        self.vocab = None if vocab is None else _check_vocab(vocab)
        _check_schedule(sampling_schedule, sampling_k, sampling_c, sampling_min)
        self.sampling_schedule = sampling_schedule
        self.sampling_k = None if sampling_k is None else float(sampling_k)
        self.sampling_c = float(sampling_c)
        self.sampling_min = float(sampling_min)
        self.decode = c.choice("decode", decode, DECODERS)
        self.beam_size = c.positive_int("beam_size", beam_size)
        self.length_penalty = c.choice("length_penalty", length_penalty, LENGTH_PENALTIES)
        self.alpha = c.real("alpha", alpha)
        self.coverage_penalty = c.real("coverage_penalty", coverage_penalty)
        self.no_repeat_ngram_size = c.positive_int(
            "no_repeat_ngram_size", no_repeat_ngram_size, allow_zero=True
        )
        self.max_len = None if max_len is None else c.positive_int("max_len", max_len)
        super().__init__(**train_options)

    def get_params(self) -> dict[str, Any]:
        names = [
            "tokens", "embedding_size", "hidden_size", "encoder_layers", "decoder_layers",
            "attention", "attention_size", "input_feeding", "coverage", "coverage_weight",
            "copy", "dropout", "batch_size", "min_count", "max_vocab", "vocab",
            "sampling_schedule", "sampling_k", "sampling_c", "sampling_min", "decode",
            "beam_size", "length_penalty", "alpha", "coverage_penalty", "no_repeat_ngram_size",
            "max_len",
        ]  # fmt: skip
        return {name: getattr(self, name) for name in names}

    def _vocabulary(self) -> Vocabulary:
        if self.vocab is None:
            raise ValueError(
                "this Seq2Seq has no vocabulary yet: call fit() (which builds it from the "
                "training pairs) or pass vocab="
            )
        return Vocabulary(self.vocab)

    def build_model(self) -> Seq2SeqModel:
        return Seq2SeqModel(
            len(self._vocabulary()),
            embedding_size=self.embedding_size,
            hidden_size=self.hidden_size,
            encoder_layers=self.encoder_layers,
            decoder_layers=self.decoder_layers,
            attention=self.attention,
            attention_size=self.attention_size or self.hidden_size,
            input_feeding=self.input_feeding,
            coverage=self.coverage,
            copy=self.copy,
            dropout=self.dropout,
        )

    # -------------------------------------------------------------- data
    def _encode_pairs(self, pairs: list[tuple[str, str]], name: str) -> list[dict[str, Any]]:
        vocab = self._vocabulary()
        items = []
        for i, (source, target) in enumerate(pairs):
            src, tgt = tokenize(source, self.tokens), tokenize(target, self.tokens)
            for side, pieces in (("source", src), ("target", tgt)):
                if not pieces:
                    raise ValueError(f"{name}[{i}]: the {side} is empty (no {self.tokens} token)")
            enc = vocab.encode_source(src)
            ids, ext = vocab.encode_target(tgt, enc.oov if self.copy else ())
            items.append(
                {
                    "src": enc.ids,
                    "src_ext": enc.ext if self.copy else enc.ids,
                    "n_oov": [len(enc.oov) if self.copy else 0],
                    "tgt": ids,
                    "tgt_ext": ext,
                }
            )
        return items

    def _loader(self, items: list[dict[str, Any]], *, shuffle: bool) -> DataLoader[Any]:
        sampler = BucketBatchSampler(
            [len(it["src"]) for it in items],
            self.batch_size,
            shuffle=shuffle,
            seed=self.train_config.seed,
        )
        return DataLoader(items, batch_sampler=sampler, collate_fn=_collate)  # type: ignore[arg-type]

    def fit(  # type: ignore[override]
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        val: Any = None,
        out: str | os.PathLike[str] | None = None,
        resume: bool = False,
    ) -> Seq2Seq:
        """Train on ``pairs`` (``(source, target)`` strings), validating (teacher-forced loss
        per token) on ``val`` (pairs, or the 1-tuple ``(pairs,)`` that ``lstmkit train``
        passes) after every epoch. Builds the vocabulary from ``pairs`` unless ``vocab`` was
        given."""
        checked = _check_pairs(pairs, "pairs")
        if isinstance(val, tuple) and len(val) == 1 and isinstance(val[0], list):
            val = val[0]
        val_pairs = None if val is None else _check_pairs(val, "val")
        if self.vocab is None:
            sequences = (tokenize(text, self.tokens) for pair in checked for text in pair)
            self.vocab = build_vocab(sequences, min_count=self.min_count, max_vocab=self.max_vocab)
        train = self._loader(self._encode_pairs(checked, "pairs"), shuffle=True)
        val_loader = None
        if val_pairs is not None:
            val_loader = self._loader(self._encode_pairs(val_pairs, "val"), shuffle=False)
        self._fit_model(train, val_loader, self._loss, out=out, resume=resume)
        return self

    def _loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        assert isinstance(model, Seq2SeqModel)
        ratio = 1.0
        if model.training:
            ratio = teacher_forcing_ratio(
                self.sampling_schedule,
                int(model.updates),
                k=self.sampling_k,
                c=self.sampling_c,
                minimum=self.sampling_min,
            )
            model.updates += 1
        nll, cover, count = model(batch, ratio)
        n = max(int(count), 1)
        return (nll + self.coverage_weight * cover) / n, n

    # -------------------------------------------------------------- decoding
    def translate(
        self,
        sources: Sequence[str],
        *,
        decode: str | None = None,
        beam_size: int | None = None,
        n_best: int = 1,
        length_penalty: str | None = None,
        alpha: float | None = None,
        coverage_penalty: float | None = None,
        no_repeat_ngram_size: int | None = None,
        max_len: int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
    ) -> list[list[Hypothesis]]:
        """The ``n_best`` best outputs of each source (``n_best > 1`` needs ``decode='beam'``).

        Options left ``None`` take the estimator's own; ``temperature``, ``top_k``, ``top_p``
        and ``seed`` apply to ``decode='sample'``. Unknown source tokens become ``<unk>``, or,
        with ``copy=True``, extended ids the output may copy. An empty source gives an empty
        output (and score 0)."""
        model = self._require_model()
        assert isinstance(model, Seq2SeqModel)
        sources = _check_sources(sources)
        options = self._decode_options(
            decode, beam_size, n_best, length_penalty, alpha, coverage_penalty,
            no_repeat_ngram_size, max_len,
        )  # fmt: skip
        vocab = self._vocabulary()
        pieces = [tokenize(s, self.tokens) for s in sources]
        results: list[list[Hypothesis]] = [[] for _ in sources]
        order = sorted((i for i in range(len(sources)) if pieces[i]), key=lambda i: len(pieces[i]))
        for i in range(len(sources)):
            if not pieces[i]:
                results[i] = [Hypothesis("", [], 0.0)]
        generator = torch.Generator().manual_seed(seed)
        chunk = max(self.batch_size, 64)
        device = next(model.parameters()).device
        for start in range(0, len(order), chunk):
            ids = order[start : start + chunk]
            encoded = [vocab.encode_source(pieces[i]) for i in ids]
            items = [
                {
                    "src": e.ids,
                    "src_ext": e.ext if self.copy else e.ids,
                    "n_oov": [len(e.oov) if self.copy else 0],
                }
                for e in encoded
            ]
            batch = {k: v.to(device) for k, v in _collate(items).items()}
            limit = options["max_len"] or 2 * int(batch["src_len"].max()) + 10
            with torch.no_grad():
                state = model.start(batch["src"], batch["src_len"], batch["src_ext"], batch["oov"])
                found = self._search(model, state, options, limit, temperature, top_k, top_p,
                                     generator)  # fmt: skip
            for row, i in enumerate(ids):
                oov = encoded[row].oov
                results[i] = [
                    Hypothesis(detokenize(toks := vocab.decode(seq, oov), self.tokens), toks, s)
                    for seq, s in found[row]
                ]
        return results

    def _decode_options(
        self,
        decode: str | None,
        beam_size: int | None,
        n_best: int,
        length_penalty: str | None,
        alpha: float | None,
        coverage_penalty: float | None,
        no_repeat_ngram_size: int | None,
        max_len: int | None,
    ) -> dict[str, Any]:
        c = _checks
        options = {
            "decode": c.choice("decode", self.decode if decode is None else decode, DECODERS),
            "beam_size": c.positive_int(
                "beam_size", self.beam_size if beam_size is None else beam_size
            ),
            "n_best": c.positive_int("n_best", n_best),
            "length_penalty": self.length_penalty if length_penalty is None else length_penalty,
            "alpha": self.alpha if alpha is None else c.real("alpha", alpha),
            "coverage_penalty": (
                self.coverage_penalty
                if coverage_penalty is None
                else c.real("coverage_penalty", coverage_penalty)
            ),
            "no_repeat_ngram_size": c.positive_int(
                "no_repeat_ngram_size",
                self.no_repeat_ngram_size if no_repeat_ngram_size is None else no_repeat_ngram_size,
                allow_zero=True,
            ),
            "max_len": self.max_len if max_len is None else c.positive_int("max_len", max_len),
        }
        c.choice("length_penalty", options["length_penalty"], LENGTH_PENALTIES)
        if options["n_best"] > 1 and options["decode"] != "beam":
            raise ValueError(
                f"n_best > 1 needs decode='beam' (greedy decoding and sampling give one output "
                f"per source), got n_best={n_best} with decode={options['decode']!r}"
            )
        return options

    def _search(
        self,
        model: Seq2SeqModel,
        state: dict[str, Any],
        options: dict[str, Any],
        limit: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        generator: torch.Generator,
    ) -> list[list[tuple[list[int], float]]]:
        common = {
            "bos": BOS_ID,
            "eos": EOS_ID,
            "max_len": limit,
            "no_repeat_ngram_size": options["no_repeat_ngram_size"],
        }
        if options["decode"] == "beam":
            beams = beam_search(
                model.step,
                state,
                beam_size=options["beam_size"],
                n_best=options["n_best"],
                length_penalty=options["length_penalty"],
                alpha=options["alpha"],
                coverage_penalty=options["coverage_penalty"],
                **common,
            )
            return [
                [
                    (beams.tokens[b, k, : beams.lengths[b, k]].tolist(), float(beams.scores[b, k]))
                    for k in range(beams.tokens.shape[1])
                    if math.isfinite(float(beams.scores[b, k]))
                ]
                for b in range(beams.tokens.shape[0])
            ]
        if options["decode"] == "greedy":
            out = greedy(model.step, state, **common)
        else:
            out = sample(
                model.step, state, temperature=temperature, top_k=top_k, top_p=top_p,
                generator=generator, **common,
            )  # fmt: skip
        return [
            [(out.tokens[b, : out.lengths[b]].tolist(), float(out.scores[b]))]
            for b in range(out.tokens.shape[0])
        ]

    def predict(self, sources: Sequence[str], **options: Any) -> list[str]:  # type: ignore[override]
        """The best output text of each source; ``options`` as in :meth:`translate`."""
        if options.get("n_best", 1) != 1:
            raise ValueError("predict returns one output per source: use translate() for n-best")
        return [hyps[0].text for hyps in self.translate(sources, **options)]

    def evaluate(self, pairs: Sequence[tuple[str, str]], **options: Any) -> dict[str, float]:  # type: ignore[override]
        """``exact_match`` (the share of outputs equal to the reference), corpus ``bleu`` (over
        characters for ``tokens='char'``) and ``chrf`` (sacrebleu, 0-100) and the count ``n``,
        decoding with the estimator's decoding settings (or ``options`` as in
        :meth:`translate`)."""
        import sacrebleu

        checked = _check_pairs(pairs, "pairs")
        hypotheses = self.predict([s for s, _ in checked], **options)
        references = [detokenize(tokenize(t, self.tokens), self.tokens) for _, t in checked]
        exact = sum(h == r for h, r in zip(hypotheses, references, strict=True))
        # character tokens: BLEU over characters (sacrebleu's 'char' tokenizer), as word n-grams
        # of a string like "1068" say nothing; words: sacrebleu's default '13a'
        tokenizer = "char" if self.tokens == "char" else "13a"
        bleu = sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenizer)
        return {
            "exact_match": exact / len(checked),
            "bleu": float(bleu.score),
            "chrf": float(sacrebleu.corpus_chrf(hypotheses, [references]).score),
            "n": len(checked),
        }

    def attention_weights(self, source: str, **options: Any) -> tuple[list[str], list[str], Tensor]:
        """``(source_tokens, output_tokens, weights)`` of the greedy output of one source, with
        ``weights[t, i]`` the attention of output step ``t`` on source token ``i``:
        ``(len(output) + 1, len(source))``, the last row for the step that produced ``</s>``
        (``len(output)`` rows when ``max_len`` cut the output first). What
        :func:`plot_attention` draws."""
        model = self._require_model()
        assert isinstance(model, Seq2SeqModel)
        if not isinstance(source, str):
            raise TypeError(f"source must be a string, got {_checks.describe(source)}")
        pieces = tokenize(source, self.tokens)
        if not pieces:
            raise ValueError("source is empty: there is nothing to attend to")
        vocab = self._vocabulary()
        enc = vocab.encode_source(pieces)
        item = {
            "src": enc.ids,
            "src_ext": enc.ext if self.copy else enc.ids,
            "n_oov": [len(enc.oov) if self.copy else 0],
        }
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in _collate([item]).items()}
        rows: list[Tensor] = []

        def recording_step(tokens: Tensor, state: dict[str, Any]) -> tuple[Tensor, Any, Tensor]:
            log_probs, new_state, weights = model.step(tokens, state)
            rows.append(weights[0].detach().cpu())
            return log_probs, new_state, weights

        limit = options.get("max_len") or self.max_len or 2 * len(pieces) + 10
        with torch.no_grad():
            state = model.start(batch["src"], batch["src_len"], batch["src_ext"], batch["oov"])
            out = greedy(recording_step, state, bos=BOS_ID, eos=EOS_ID, max_len=limit)
        generated = out.tokens[0, : out.lengths[0]].tolist()
        return pieces, vocab.decode(generated, enc.oov), torch.stack(rows[: len(generated)])


def plot_attention(
    source_tokens: Sequence[str],
    output_tokens: Sequence[str],
    weights: Tensor,
    *,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """A heat map of ``weights`` ``(T_out, S)``: one row per output token (plus a last row
    ``</s>`` when ``weights`` has one more row), one column per source token. A monotonic task
    shows a diagonal, reversal an anti-diagonal. Returns the figure (drawn into ``ax`` if given).
    """
    import matplotlib

    if ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    _checks.floating_tensor("weights", weights)
    rows = list(output_tokens)
    if weights.dim() != 2 or weights.shape[1] != len(source_tokens):
        raise ValueError(
            f"weights must have shape (T_out, {len(source_tokens)}) (one column per source "
            f"token), got {tuple(weights.shape)}"
        )
    if weights.shape[0] == len(rows) + 1:
        rows.append(EOS)
    elif weights.shape[0] != len(rows):
        raise ValueError(
            f"weights must have one row per output token ({len(rows)}, or {len(rows) + 1} with "
            f"</s>), got {weights.shape[0]}"
        )
    if ax is None:
        size = (max(4.0, 0.3 * len(source_tokens) + 1.5), max(3.0, 0.3 * len(rows) + 1.0))
        figure, ax = plt.subplots(figsize=size)
    else:
        figure = ax.figure  # type: ignore[assignment]
    image = ax.imshow(weights.detach().cpu().numpy(), cmap="viridis", vmin=0.0, vmax=1.0,
                      aspect="auto")  # fmt: skip
    ax.set_xticks(range(len(source_tokens)), [repr(t)[1:-1] for t in source_tokens])
    ax.set_yticks(range(len(rows)), [repr(t)[1:-1] if t != EOS else t for t in rows])
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    if title:
        ax.set_title(title)
    figure.colorbar(image, ax=ax, fraction=0.04)
    return figure


# ---------------------------------------------------------------------- command line
def _add_arguments(group: argparse._ActionsContainer) -> None:
    add = group.add_argument
    add("--data", metavar="FILE", help="training pairs, 'source<TAB>target' per line (required)")
    add("--valid", metavar="FILE", help="validation pairs (default: hold out --valid-fraction)")
    add("--valid-fraction", type=float, default=0.1, metavar="F",
        help="share of --data held out for validation when --valid is not given")  # fmt: skip
    add("--tokens", choices=TOKENIZATIONS, default="char", help="split into characters or words")
    add("--embedding-size", type=int, default=64, metavar="E", help="token embedding size")
    add("--hidden-size", type=int, default=128, metavar="H", help="LSTM units per direction")
    add("--encoder-layers", type=int, default=1, metavar="L", help="stacked encoder layers")
    add("--decoder-layers", type=int, default=1, metavar="L", help="stacked decoder layers")
    add("--attention", choices=ATTENTIONS, default="bahdanau", help="attention score")
    add("--attention-size", type=int, default=None, metavar="A",
        help="hidden layer of the additive scores (default: --hidden-size)")  # fmt: skip
    add("--input-feeding", action=argparse.BooleanOptionalAction, default=True,
        help="feed the previous attentional state to the decoder")  # fmt: skip
    add("--coverage", action="store_true", help="coverage in the score and the loss")
    add("--coverage-weight", type=float, default=1.0, metavar="W", help="coverage loss factor")
    add("--copy", action="store_true", help="pointer-generator copy mechanism")
    add("--dropout", type=float, default=0.0, metavar="P", help="dropout probability")
    add("--batch-size", type=int, default=64, metavar="B", help="pairs per batch")
    add("--min-count", type=int, default=1, metavar="N", help="rarer tokens become <unk>")
    add("--max-vocab", type=int, default=None, metavar="N", help="largest vocabulary")
    add("--sampling-schedule", choices=SCHEDULES, default="none",
        help="scheduled sampling (Bengio et al. 2015); none: teacher forcing")  # fmt: skip
    add("--sampling-k", type=float, default=None, metavar="K", help="schedule's k")
    add("--sampling-c", type=float, default=1e-4, metavar="C", help="linear schedule's slope")
    add("--sampling-min", type=float, default=0.0, metavar="E", help="lowest teacher forcing")
    _add_decode_arguments(group, with_defaults=True)


def _add_decode_arguments(group: argparse._ActionsContainer, *, with_defaults: bool) -> None:
    """The decoding flags; for ``translate`` they default to None (the saved model's own)."""

    def default(value: Any) -> Any:
        return value if with_defaults else None

    add = group.add_argument
    add("--decode", choices=DECODERS, default=default("greedy"), help="search")
    add("--beam-size", type=int, default=default(5), metavar="K", help="beam width")
    add("--length-penalty", choices=LENGTH_PENALTIES, default=default("none"),
        help="beam search length normalisation")  # fmt: skip
    add("--alpha", type=float, default=default(0.6), help="GNMT length penalty exponent")
    add("--coverage-penalty", type=float, default=default(0.0), metavar="BETA",
        help="GNMT coverage penalty")  # fmt: skip
    add("--no-repeat-ngram-size", type=int, default=default(0), metavar="N",
        help="block repeated n-grams")  # fmt: skip
    add("--max-len", type=int, default=None, metavar="T",
        help="most output tokens (default: 2 x source length + 10)")  # fmt: skip


def _make_data(args: argparse.Namespace) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    if not args.data:
        raise ValueError("--data FILE is required: the training pairs, 'source<TAB>target'")
    pairs = read_pairs(args.data)
    if args.valid:
        return (pairs,), (read_pairs(args.valid),)
    fraction = float(args.valid_fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--valid-fraction must be in (0, 1), got {fraction}")
    if len(pairs) < 2:
        raise ValueError(
            f"data file {args.data} holds {len(pairs)} pair: give --valid FILE, or at least 2 "
            "pairs to hold some out"
        )
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(args.seed))
    n_val = min(len(pairs) - 1, max(1, round(fraction * len(pairs))))
    held = set(order[:n_val].tolist())
    train = [p for i, p in enumerate(pairs) if i not in held]
    valid = [p for i, p in enumerate(pairs) if i in held]
    return (train,), (valid,)


def _translate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="the --out of `lstmkit train seq2seq`")
    parser.add_argument("--input", metavar="FILE", help="sources, one per line (default: stdin)")
    _add_decode_arguments(parser, with_defaults=False)
    parser.add_argument("--n-best", type=int, default=1, metavar="N",
                        help="print the N best (beam): 'line<TAB>score<TAB>text' rows")  # fmt: skip
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--top-k", type=int, default=None, help="sampling: keep the k best")
    parser.add_argument("--top-p", type=float, default=None, help="sampling: nucleus mass")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")


def _translate(args: argparse.Namespace) -> int:
    estimator = Seq2Seq.load(args.directory)
    if args.input:
        try:
            text = Path(args.input).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"--input {args.input}: cannot read it ({exc.strerror})") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"--input {args.input}: not UTF-8 text ({exc.reason})") from None
    else:
        text = sys.stdin.read()
    sources = text.splitlines()
    results = estimator.translate(
        sources,
        decode=args.decode,
        beam_size=args.beam_size,
        n_best=args.n_best,
        length_penalty=args.length_penalty,
        alpha=args.alpha,
        coverage_penalty=args.coverage_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        max_len=args.max_len,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    for line, hypotheses in enumerate(results):
        if args.n_best == 1:
            print(hypotheses[0].text)
        else:
            for h in hypotheses:
                print(f"{line}\t{h.score:.4f}\t{h.text}")
    return 0


register(
    TaskSpec(
        name="seq2seq",
        help="sequence to sequence with attention on tab-separated source/target pairs",
        estimator=Seq2Seq,
        add_arguments=_add_arguments,
        make_data=_make_data,
        read_data=lambda path: (read_pairs(path),),
    )
)
register_command(
    Command(
        name="translate",
        help="translate lines (stdin or --input) with a trained seq2seq model",
        add_arguments=_translate_arguments,
        run=_translate,
    )
)

__all__ = [
    "ATTENTIONS",
    "DECODERS",
    "SCHEDULES",
    "Hypothesis",
    "Seq2Seq",
    "Seq2SeqModel",
    "Vocabulary",
    "build_vocab",
    "detokenize",
    "plot_attention",
    "read_pairs",
    "teacher_forcing_ratio",
    "tokenize",
    "write_pairs",
]
