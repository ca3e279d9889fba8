"""Language models: an AWD-LSTM-style recurrent LM, trained with truncated BPTT, that reports
perplexity (and bits per character), generates text token by token, and runs from the CLI::

    lstmkit train lm --data input.txt --tokens char --out runs/shakespeare
    lstmkit evaluate runs/shakespeare --data test.txt        # {"perplexity": ..., "bpc": ...}
    lstmkit generate runs/shakespeare --prompt "ROMEO:" --top-p 0.9

The file reads top to bottom:

1. the regularisers of Merity et al. (2018), AWD-LSTM: embedding dropout (whole word types),
   locked (variational) dropout with one mask per sequence; weight drop is the layers' own
   ``weight_drop`` option and NT-ASGD is ``TrainConfig(nt_asgd=...)``;
2. :class:`LanguageModel`: embedding, a stack of single-layer lstmkit ``LSTM``/``GRU`` (any
   variant, through ``cell_options``), an optional linear projection, and a full softmax (its
   weight optionally tied to the embedding, sharing storage) or
   ``torch.nn.AdaptiveLogSoftmaxWithLoss``;
3. the training objective (next-token NLL + activation regularisation AR + temporal AR TAR) in
   the form :class:`lstmkit.train.TBPTT` expects, over :func:`lstmkit.data.batchify` streams cut
   by :class:`lstmkit.data.BPTTWindows`;
4. evaluation with carried state and the optional neural cache of Grave et al. (2017);
5. :class:`LanguageModelEstimator` (task ``lm``) and the ``generate`` command.

Layers are stacked as separate one-layer modules rather than one ``num_layers`` module because
AWD-LSTM needs what a fused stack hides: a locked-dropout mask *between* layers, a last layer
whose width matches the embedding (for tying), and the last layer's raw output for TAR.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from ..data.readers import read_text
from ..data.streams import BPTTWindows, batchify
from ..data.tokenizers import KINDS, Tokenizer, tokenizer_from_dict, train_tokenizer
from ..decode import stream
from ..nn import GRU, LSTM, RNN
from ..train import TBPTT
from . import Command, Estimator, TaskSpec, register, register_command

CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
# Options the model itself decides: a language model reads left to right, one layer per module.
_RESERVED_CELL_OPTIONS = ("bidirectional", "batch_first", "num_layers", "weight_drop", "dropout")


# ---------------------------------------------------------------------- 1. regularisers
class LockedDropout(nn.Module):
    """Variational dropout over ``(T, B, D)``: one Bernoulli mask per sequence and feature,
    shared by every time step (Gal & Ghahramani 2016), scaled by ``1 / (1 - p)``. The identity
    in eval mode or with ``p = 0``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = _checks.probability("p", p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        mask = x.new_empty(1, *x.shape[1:]).bernoulli_(1.0 - self.p) / (1.0 - self.p)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def embedding_dropout(embedding: nn.Embedding, tokens: Tensor, p: float, training: bool) -> Tensor:
    """Look up ``tokens`` in ``embedding`` with whole rows (word types) dropped with probability
    ``p`` and the kept rows scaled by ``1 / (1 - p)``: every occurrence of a dropped word in the
    batch becomes zeros (Merity et al. 2018, after Gal & Ghahramani 2016)."""
    if not training or p == 0.0:
        return embedding(tokens)
    weight = embedding.weight
    mask = weight.new_empty(weight.shape[0], 1).bernoulli_(1.0 - p) / (1.0 - p)
    return F.embedding(tokens, weight * mask, embedding.padding_idx)


# ---------------------------------------------------------------------- 2. the model
def _transpose_state(state: Any) -> Any:
    """Swap the first two dimensions of every tensor of a (nested) state: torch's
    ``(layers, B, H)`` to the rows-first ``(B, layers, H)`` of :mod:`lstmkit.decode`, and back."""
    if isinstance(state, Tensor):
        return state.transpose(0, 1).contiguous()
    if isinstance(state, (tuple, list)):
        return type(state)(_transpose_state(s) for s in state)
    return state


class LanguageModel(nn.Module):
    """Embedding -> ``num_layers`` recurrent layers -> optional projection -> softmax.

    ``forward(tokens, state=None)`` takes ``tokens`` ``(T, B)`` int64 and returns the next-token
    log-probabilities ``(T, B, vocab_size)`` and the new state (a list with one entry per
    layer, each in the layer's own format: ``(h, c)`` for an LSTM, ``h`` for a GRU/RNN, with
    shape ``(1, B, H)``). :meth:`features` and :meth:`token_nll` are the two halves, which
    training and the neural cache use separately.

    With ``tie_weights`` the output layer multiplies by ``embedding.weight`` itself (Press & Wolf
    2017; Inan et al. 2017), so the two share storage and the state dict holds the matrix once;
    the last recurrent layer then has ``emb_size`` units unless ``projection`` maps to it.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        emb_size: int = 200,
        hidden_size: int = 200,
        num_layers: int = 2,
        cell: str = "lstm",
        cell_options: dict[str, Any] | None = None,
        projection: int = 0,
        tie_weights: bool = False,
        adaptive_cutoffs: Sequence[int] | None = None,
        dropout: float = 0.0,
        dropout_h: float = 0.0,
        dropout_i: float = 0.0,
        dropout_e: float = 0.0,
        weight_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.vocab_size = _checks.positive_int("vocab_size", vocab_size)
        emb_size = _checks.positive_int("emb_size", emb_size)
        hidden_size = _checks.positive_int("hidden_size", hidden_size)
        num_layers = _checks.positive_int("num_layers", num_layers)
        factory = CELLS[_checks.choice("cell", cell, tuple(CELLS))]
        options = _check_cell_options(cell_options)
        projection = _checks.positive_int("projection", projection, allow_zero=True)
        self.tie_weights = _checks.boolean("tie_weights", tie_weights)
        self.dropout_e = _checks.probability("dropout_e", dropout_e)
        if self.tie_weights and adaptive_cutoffs:
            raise ValueError(
                "tie_weights needs the full softmax: adaptive_cutoffs must be empty with "
                f"tie_weights=True, got {list(adaptive_cutoffs)}"
            )

        self.embedding = nn.Embedding(self.vocab_size, emb_size)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        # The top layer's width: what the softmax reads, unless a projection sits in between.
        top = emb_size if tie_weights and not projection else hidden_size
        layers: list[nn.Module] = []
        for k in range(num_layers):
            size = top if k == num_layers - 1 else hidden_size
            layer_input = emb_size if k == 0 else _output_size(layers[-1])
            layers.append(factory(layer_input, size, weight_drop=weight_drop, **options))
        self.layers = nn.ModuleList(layers)
        self.lock_i = LockedDropout(dropout_i)
        self.lock_h = LockedDropout(dropout_h)
        self.lock_o = LockedDropout(dropout)
        width = _output_size(layers[-1])
        self.projection = nn.Linear(width, projection) if projection else None
        self.feature_size = projection or width
        if self.tie_weights and self.feature_size != emb_size:
            raise ValueError(
                f"tie_weights needs features of emb_size = {emb_size} before the softmax, but "
                f"they have {self.feature_size} (projection={projection}, last layer output "
                f"{width}): set projection to {emb_size} or leave it 0"
            )
        self.adaptive: nn.AdaptiveLogSoftmaxWithLoss | None = None
        self.decoder_weight: nn.Parameter | None = None
        self.decoder_bias: nn.Parameter | None = None
        if adaptive_cutoffs:
            cutoffs = _check_cutoffs(adaptive_cutoffs, self.vocab_size)
            self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(
                self.feature_size, self.vocab_size, cutoffs, div_value=4.0
            )
        else:
            if not self.tie_weights:
                self.decoder_weight = nn.Parameter(torch.empty(self.vocab_size, self.feature_size))
                nn.init.uniform_(self.decoder_weight, -0.1, 0.1)
            self.decoder_bias = nn.Parameter(torch.zeros(self.vocab_size))

    @property
    def output_weight(self) -> Tensor:
        """The softmax weight ``(vocab_size, feature_size)``: the embedding itself when tied."""
        if self.adaptive is not None:
            raise ValueError("an adaptive softmax has no single output weight matrix")
        return self.embedding.weight if self.decoder_weight is None else self.decoder_weight

    def features(self, tokens: Tensor, state: Any = None) -> tuple[Tensor, Tensor, Tensor, Any]:
        """``(features, raw_top, dropped_top, new_state)``: the softmax input ``(T, B, F)``, the
        last layer's output before and after the output dropout (for TAR and AR)."""
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype != torch.long:
            raise TypeError(
                f"tokens must be an int64 tensor of shape (T, B), got {_checks.describe(tokens)}"
            )
        if state is not None and (
            not isinstance(state, (list, tuple)) or len(state) != len(self.layers)
        ):
            raise ValueError(
                f"state must be a list with one entry per layer ({len(self.layers)}) or None, "
                f"got {_checks.describe(state)}"
            )
        x = self.lock_i(embedding_dropout(self.embedding, tokens, self.dropout_e, self.training))
        new_state = []
        raw = x
        for k, layer in enumerate(self.layers):
            raw, layer_state = layer(x, None if state is None else state[k])
            new_state.append(layer_state)
            if k < len(self.layers) - 1:
                x = self.lock_h(raw)
        dropped = self.lock_o(raw)
        features = dropped if self.projection is None else self.projection(dropped)
        return features, raw, dropped, new_state

    def log_probs(self, features: Tensor) -> Tensor:
        """Next-token log-probabilities ``(..., vocab_size)`` from ``features`` ``(..., F)``."""
        if self.adaptive is not None:
            flat = self.adaptive.log_prob(features.reshape(-1, self.feature_size))
            return flat.view(*features.shape[:-1], self.vocab_size)
        logits = F.linear(features, self.output_weight, self.decoder_bias)
        return torch.log_softmax(logits, dim=-1)

    def token_nll(self, features: Tensor, targets: Tensor) -> Tensor:
        """The negative log-likelihood of every target, shape ``targets.shape``. The adaptive
        softmax computes only the targets' clusters, which is its whole point."""
        flat_features = features.reshape(-1, self.feature_size)
        flat_targets = targets.reshape(-1)
        if self.adaptive is not None:
            nll = -self.adaptive(flat_features, flat_targets).output
        else:
            logits = F.linear(flat_features, self.output_weight, self.decoder_bias)
            nll = F.cross_entropy(logits, flat_targets, reduction="none")
        return nll.view(targets.shape)

    def forward(self, tokens: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        features, _, _, new_state = self.features(tokens, state)
        return self.log_probs(features), new_state

    def reset_state(self, state: Any, mask: Tensor) -> Any:
        """``state`` with the streams where ``mask`` is True set back to each layer's initial
        state (for document boundaries in TBPTT)."""
        return [
            layer.reset_state(s, mask)  # type: ignore[operator]
            for layer, s in zip(self.layers, state, strict=True)
        ]

    def step(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        """One decoding step in the contract of :mod:`lstmkit.decode`: ``tokens`` ``(N,)``, the
        state rows first; returns ``(log_probs (N, V), new_state)``."""
        layers_state = None if state is None else _transpose_state(state)
        log_probs, new_state = self(tokens[None], layers_state)
        return log_probs[0], _transpose_state(new_state)


def _output_size(layer: nn.Module) -> int:
    proj = getattr(layer, "proj_size", 0)
    return int(proj) if proj else int(layer.hidden_size)  # type: ignore[arg-type]


def _check_cell_options(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise TypeError(
            "cell_options must be a dict of layer options (e.g. {'layer_norm': True}), "
            f"got {_checks.describe(options)}"
        )
    for key in _RESERVED_CELL_OPTIONS:
        if key in options:
            raise ValueError(
                f"cell_options may not set {key!r}: the language model decides it "
                "(one forward layer per module; use weight_drop / dropout_h for the dropouts)"
            )
    return dict(options)


def _check_cutoffs(cutoffs: Any, vocab_size: int) -> list[int]:
    if isinstance(cutoffs, (str, bytes)) or not isinstance(cutoffs, Sequence):
        raise TypeError(f"adaptive_cutoffs must be a list of ints, got {_checks.describe(cutoffs)}")
    values = [_checks.positive_int(f"adaptive_cutoffs[{i}]", c) for i, c in enumerate(cutoffs)]
    if values != sorted(set(values)) or values[-1] >= vocab_size:
        raise ValueError(
            f"adaptive_cutoffs must increase strictly and stay below the vocabulary size "
            f"{vocab_size}, got {values}"
        )
    return values


# ---------------------------------------------------------------------- 3. training objective
class _Objective(nn.Module):
    """What :class:`~lstmkit.train.TBPTT` runs: ``x`` ``(T, B, 2)`` holds the inputs and the
    targets, and the output ``(T, B, 3)`` holds per position the NLL, ``alpha`` times the mean
    square of the dropped top output (AR) and ``beta`` times the mean square change of the raw
    top output from the previous step (TAR; 0 at the first step). Computing the loss *inside*
    the module keeps the softmax's parameters in the forward (as DDP wants) and lets the
    adaptive softmax skip the full distribution. In eval mode AR and TAR are 0, so the
    validation loss is the plain NLL."""

    def __init__(self, model: LanguageModel, alpha: float, beta: float) -> None:
        super().__init__()
        self.model = model
        self.alpha = alpha
        self.beta = beta

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        inputs, targets = x[..., 0], x[..., 1]
        features, raw, dropped, new_state = self.model.features(inputs, state)
        nll = self.model.token_nll(features, targets)
        ar = torch.zeros_like(nll)
        tar = torch.zeros_like(nll)
        if self.training and self.alpha:
            ar = self.alpha * dropped.pow(2).mean(-1)
        if self.training and self.beta and raw.shape[0] > 1:
            change = (raw[1:] - raw[:-1]).pow(2).mean(-1)
            tar = torch.cat([torch.zeros_like(change[:1]), self.beta * change])
        return torch.stack([nll, ar, tar], dim=-1), new_state

    def reset_state(self, state: Any, mask: Tensor) -> Any:
        return self.model.reset_state(state, mask)


def _criterion(output: Tensor, target: Tensor) -> tuple[Tensor, int]:
    """Mean NLL + AR + TAR of a window (TAR averaged over the ``T - 1`` step pairs, as AWD-LSTM
    does), counted by target tokens."""
    loss = output[..., 0].mean() + output[..., 1].mean()
    if output.shape[0] > 1:
        loss = loss + output[1:, :, 2].mean()
    return loss, target.numel()


class LMWindows:
    """The training (or validation) data of :func:`lstmkit.train.fit`: consecutive BPTT windows
    over a batchified token stream, as ``(x, y)`` with ``x = stack([inputs, targets], -1)``.

    ``set_epoch(e)`` restarts the stream with the window lengths drawn from ``seed + e``, so that
    a resumed run replays exactly the windows of the interrupted epoch."""

    def __init__(self, data: Tensor, bptt: int, *, random_length: bool, seed: int) -> None:
        self.data = data
        self.bptt = bptt
        self.random_length = random_length
        self.seed = seed
        self.windows = self._make(0)

    def _make(self, epoch: int) -> BPTTWindows:
        return BPTTWindows(
            self.data, self.bptt, random_length=self.random_length, seed=self.seed + epoch
        )

    def set_epoch(self, epoch: int) -> None:
        self.windows = self._make(epoch)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for window in self.windows:
            yield torch.stack([window.inputs, window.targets], dim=-1), window.targets

    def __len__(self) -> int:
        return len(self.windows)  # TypeError with random lengths: fit then has no epoch length


# ---------------------------------------------------------------------- 4. evaluation
@torch.no_grad()
def stream_nll(
    model: LanguageModel,
    data: Tensor,
    bptt: int,
    *,
    cache_size: int = 0,
    cache_theta: float = 0.3,
    cache_lambda: float = 0.1,
) -> tuple[float, int]:
    """Summed NLL (nats) and count of the next-token predictions over the batchified stream
    ``data`` ``(N, B)``, in windows of ``bptt`` with the state carried, in eval mode.

    With ``cache_size > 0`` the prediction at ``t`` mixes in the neural cache of Grave et al.
    (2017): ``p = (1 - lambda) p_model + lambda p_cache`` where ``p_cache(w)`` is proportional to
    ``sum exp(theta * h_t . h_i)`` over the last ``cache_size`` positions ``i`` of the same
    stream whose next token was ``w`` (``h``: the softmax's input features). It needs no
    training and adapts to words repeated in a document."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    state: Any = None
    keys: Tensor | None = None  # (L, B, F)
    values: Tensor | None = None  # (L, B)
    try:
        for window in BPTTWindows(data, bptt):
            features, _, _, state = model.features(window.inputs, state)
            targets = window.targets
            if cache_size == 0:
                total += float(model.token_nll(features, targets).sum())
                count += targets.numel()
                continue
            log_probs = model.log_probs(features)
            for t in range(targets.shape[0]):
                h, y = features[t], targets[t]
                p = log_probs[t].exp()
                if keys is not None and values is not None:
                    scores = cache_theta * torch.einsum("lbf,bf->lb", keys, h)
                    weights = torch.softmax(scores, dim=0).t()  # (B, L)
                    p_cache = torch.zeros_like(p).scatter_add_(1, values.t(), weights)
                    p = (1.0 - cache_lambda) * p + cache_lambda * p_cache
                total -= float(p.gather(1, y[:, None]).clamp_min(1e-30).log().sum())
                count += y.numel()
                keys = h[None] if keys is None else torch.cat([keys, h[None]])[-cache_size:]
                values = y[None] if values is None else torch.cat([values, y[None]])[-cache_size:]
    finally:
        model.train(was_training)
    return total, count


# ---------------------------------------------------------------------- 5. the estimator
class LanguageModelEstimator(Estimator):
    """A recurrent language model over characters, words or subwords.

    Tokens: ``tokens`` (``'char'``, ``'word'``, ``'bpe'``, ``'unigram'``), ``min_count``,
    ``max_vocab`` (for the subwords: the number of pieces, default 1000), or a fitted
    ``tokenizer`` (its :meth:`~lstmkit.data.tokenizers.Tokenizer.to_dict`) to reuse.
    Model: see :class:`LanguageModel`. AWD-LSTM regularisation: ``dropout`` (output),
    ``dropout_h`` (between layers), ``dropout_i`` (input), ``dropout_e`` (embedding rows),
    ``weight_drop`` (DropConnect on the recurrent weights), ``alpha`` (AR), ``beta`` (TAR); for
    NT-ASGD pass ``optimizer='sgd', nt_asgd=n``. Data: ``batch_size`` streams, windows of
    ``bptt`` tokens (AWD-LSTM's random lengths with ``random_bptt``); evaluation on
    ``eval_batch_size`` streams, with the neural cache when ``cache_size > 0``. Every other
    keyword is a :class:`~lstmkit.train.TrainConfig` option.
    """

    task = "lm"

    def __init__(
        self,
        tokens: str = "char",
        min_count: int = 1,
        max_vocab: int | None = None,
        cell: str = "lstm",
        emb_size: int = 200,
        hidden_size: int = 200,
        num_layers: int = 2,
        cell_options: dict[str, Any] | None = None,
        projection: int = 0,
        tie_weights: bool = False,
        adaptive_cutoffs: list[int] | None = None,
        dropout: float = 0.0,
        dropout_h: float = 0.0,
        dropout_i: float = 0.0,
        dropout_e: float = 0.0,
        weight_drop: float = 0.0,
        alpha: float = 0.0,
        beta: float = 0.0,
        batch_size: int = 20,
        bptt: int = 35,
        random_bptt: bool = False,
        eval_batch_size: int = 10,
        cache_size: int = 0,
        cache_theta: float = 0.3,
        cache_lambda: float = 0.1,
        tokenizer: dict[str, Any] | None = None,
        **train_options: Any,
    ) -> None:
        self.tokens = _checks.choice("tokens", tokens, KINDS)
        self.min_count = _checks.positive_int("min_count", min_count)
        self.max_vocab = None if max_vocab is None else _checks.positive_int("max_vocab", max_vocab)
        self.cell = _checks.choice("cell", cell, tuple(CELLS))
        self.emb_size = _checks.positive_int("emb_size", emb_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.num_layers = _checks.positive_int("num_layers", num_layers)
        self.cell_options = _check_cell_options(cell_options) or None
        self.projection = _checks.positive_int("projection", projection, allow_zero=True)
        self.tie_weights = _checks.boolean("tie_weights", tie_weights)
        self.adaptive_cutoffs = (
            None if not adaptive_cutoffs else _check_cutoffs(adaptive_cutoffs, sys.maxsize)
        )
        self.dropout = _checks.probability("dropout", dropout)
        self.dropout_h = _checks.probability("dropout_h", dropout_h)
        self.dropout_i = _checks.probability("dropout_i", dropout_i)
        self.dropout_e = _checks.probability("dropout_e", dropout_e)
        self.weight_drop = _checks.probability("weight_drop", weight_drop)
        self.alpha = _non_negative("alpha", alpha)
        self.beta = _non_negative("beta", beta)
        self.batch_size = _checks.positive_int("batch_size", batch_size)
        self.bptt = _checks.positive_int("bptt", bptt)
        self.random_bptt = _checks.boolean("random_bptt", random_bptt)
        self.eval_batch_size = _checks.positive_int("eval_batch_size", eval_batch_size)
        self.cache_size = _checks.positive_int("cache_size", cache_size, allow_zero=True)
        self.cache_theta = _non_negative("cache_theta", cache_theta)
        self.cache_lambda = _checks.probability("cache_lambda", cache_lambda)
        self.tokenizer = tokenizer
        self.tokenizer_: Tokenizer | None = (
            None if tokenizer is None else tokenizer_from_dict(tokenizer, source="tokenizer")
        )
        super().__init__(**train_options)

    def get_params(self) -> dict[str, Any]:
        return {
            name: getattr(self, name)
            for name in (
                "tokens", "min_count", "max_vocab", "cell", "emb_size", "hidden_size",
                "num_layers", "cell_options", "projection", "tie_weights", "adaptive_cutoffs",
                "dropout", "dropout_h", "dropout_i", "dropout_e", "weight_drop", "alpha",
                "beta", "batch_size", "bptt", "random_bptt", "eval_batch_size", "cache_size",
                "cache_theta", "cache_lambda", "tokenizer",
            )
        }  # fmt: skip

    def _require_tokenizer(self) -> Tokenizer:
        if self.tokenizer_ is None:
            raise ValueError(
                "this LanguageModelEstimator has no vocabulary yet: call fit() (or pass a "
                "tokenizer) first"
            )
        return self.tokenizer_

    def build_model(self) -> LanguageModel:
        return LanguageModel(
            self._require_tokenizer().vocab_size,
            emb_size=self.emb_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            cell=self.cell,
            cell_options=self.cell_options,
            projection=self.projection,
            tie_weights=self.tie_weights,
            adaptive_cutoffs=self.adaptive_cutoffs,
            dropout=self.dropout,
            dropout_h=self.dropout_h,
            dropout_i=self.dropout_i,
            dropout_e=self.dropout_e,
            weight_drop=self.weight_drop,
        )

    # ------------------------------------------------------------------ data
    def _stream(self, text: Any, batch_size: int, what: str) -> Tensor:
        """``text`` encoded and batchified into ``batch_size`` streams (fewer if short)."""
        if not isinstance(text, str):
            raise TypeError(f"{what} must be a str, got {_checks.describe(text)}")
        if not text.strip():
            raise ValueError(f"{what} is empty (or only whitespace): there is nothing to model")
        ids = self._require_tokenizer().encode_tensor(text)
        if ids.numel() < 2:
            raise ValueError(
                f"{what} has {ids.numel()} token(s); a language model needs at least 2 "
                "(an input and its next token)"
            )
        return batchify(ids, max(1, min(batch_size, ids.numel() // 2)))

    def fit(  # type: ignore[override]
        self,
        text: str,
        *,
        val: str | Sequence[str] | None = None,
        out: str | os.PathLike[str] | None = None,
        resume: bool = False,
    ) -> LanguageModelEstimator:
        """Learn the vocabulary from ``text`` and train on it with TBPTT, validating on the
        text ``val`` (or ``(text,)``) after every epoch; ``out`` keeps checkpoints, ``log.csv``
        and the saved estimator, ``resume`` continues the run in ``out``.

        The vocabulary is learned only when the estimator has none: one given as ``tokenizer``,
        or learned by an earlier ``fit``, is kept, so that a resumed or continued run reads the
        text with the ids its weights were trained on."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {_checks.describe(text)}")
        if not text.strip():
            raise ValueError("the training text is empty (or only whitespace)")
        if self.tokenizer_ is None:
            self.tokenizer_ = train_tokenizer(
                text, self.tokens, min_count=self.min_count, max_size=self.max_vocab
            )
            self.tokenizer = self.tokenizer_.to_dict()
        train_data = self._stream(text, self.batch_size, "the training text")
        if train_data.shape[0] < 2:
            raise ValueError(
                f"the training text has {train_data.numel()} tokens: too few for "
                f"batch_size={self.batch_size} streams of at least 2 tokens"
            )
        train = LMWindows(
            train_data, self.bptt, random_length=self.random_bptt, seed=self.train_config.seed
        )
        val_windows = None
        if val is not None:
            val_text = val[0] if isinstance(val, (tuple, list)) and len(val) == 1 else val
            data = self._stream(val_text, self.eval_batch_size, "the validation text")
            val_windows = LMWindows(data, self.bptt, random_length=False, seed=0)

        self._fit_model(
            train,
            val_windows,
            # random window lengths: AWD-LSTM's learning rate scaled by seq_len / bptt
            TBPTT(_criterion, lr_length=self.bptt if self.random_bptt else None),
            out=out,
            resume=resume,
            objective=self._objective,
        )
        return self

    def _objective(self, model: nn.Module) -> nn.Module:
        """What training runs: the model inside :class:`_Objective` (NLL, AR and TAR)."""
        assert isinstance(model, LanguageModel)
        return _Objective(model, self.alpha, self.beta)

    def _lm(self) -> LanguageModel:
        model = self._require_model()
        assert isinstance(model, LanguageModel)
        return model

    # ------------------------------------------------------------------ results
    def evaluate(  # type: ignore[override]
        self, text: str, *, cache_size: int | None = None
    ) -> dict[str, float]:
        """``loss`` (nats per token), ``perplexity`` and ``tokens`` on ``text``; for character
        models also ``bpc`` (bits per character). With a neural cache (``cache_size``, default
        the estimator's) the same keys are computed with the cache mixed in."""
        model = self._lm()
        size = self.cache_size if cache_size is None else cache_size
        size = _checks.positive_int("cache_size", size, allow_zero=True)
        data = self._stream(text, self.eval_batch_size, "text")
        device = next(model.parameters()).device
        total, count = stream_nll(
            model,
            data.to(device),
            self.bptt,
            cache_size=size,
            cache_theta=self.cache_theta,
            cache_lambda=self.cache_lambda,
        )
        loss = total / count
        metrics: dict[str, float] = {
            "loss": loss,
            "perplexity": math.exp(min(loss, 700.0)),
            "tokens": count,
        }
        if self._require_tokenizer().kind == "char":
            metrics["bpc"] = loss / math.log(2.0)
        return metrics

    def predict(self, text: str) -> Tensor:  # type: ignore[override]
        """The log-probabilities ``(vocab_size,)`` of the token that follows ``text``."""
        model = self._lm()
        tokenizer = self._require_tokenizer()
        ids = [tokenizer.start_id, *tokenizer.encode(_prompt(text))]
        device = next(model.parameters()).device
        with torch.no_grad():
            log_probs, _ = model(torch.tensor(ids, device=device)[:, None])
        return log_probs[-1, 0].cpu()

    def stream(
        self,
        prompt: str = "",
        *,
        max_new_tokens: int = 200,
        greedy: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = 0,
    ) -> Iterator[str]:
        """Text pieces of the continuation of ``prompt``, one per generated token, as soon as
        each is chosen: the prompt is read once, then every token costs one recurrent step
        with the state carried (:func:`lstmkit.decode.stream`). Greedy, or sampled with
        ``temperature``, ``top_k`` and nucleus ``top_p`` from a generator seeded with ``seed``
        (None: unseeded). Characters or words of the prompt outside the vocabulary read as
        ``<unk>``."""
        model = self._lm()
        tokenizer = self._require_tokenizer()
        max_new_tokens = _checks.positive_int("max_new_tokens", max_new_tokens)
        _checks.boolean("greedy", greedy)
        # The text so far starts at a line break, as the training text does after its first line.
        ids = [tokenizer.start_id, *tokenizer.encode(_prompt(prompt))]
        device = next(model.parameters()).device
        generator = None
        if seed is not None:
            generator = torch.Generator(device=device).manual_seed(
                _checks.positive_int("seed", seed, allow_zero=True)
            )

        def step(tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
            return model.step(tokens, state)

        def new_ids() -> Iterator[int]:
            with torch.no_grad():
                yield from stream(
                    step,
                    None,
                    torch.tensor(ids, device=device),
                    max_new_tokens=max_new_tokens,
                    do_sample=not greedy,
                    temperature=temperature,
                    top_k=top_k,
                    top_p=top_p,
                    generator=generator,
                )

        # Decoding the prompt too gives the continuation its context (a word after a word needs
        # a space, after a line break none); the prompt's own pieces are skipped.
        pieces = tokenizer.decode_stream(chain(ids, new_ids()))
        for index, piece in enumerate(pieces):
            if index >= len(ids):
                yield piece

    def generate(self, prompt: str = "", **options: Any) -> str:
        """The continuation of ``prompt`` as one string (see :meth:`stream` for ``options``)."""
        return "".join(self.stream(prompt, **options))

    def save(self, directory: str | os.PathLike[str]) -> None:
        """``model.safetensors`` and ``config.json`` (which holds the vocabulary), plus the
        tokenizer alone as ``tokenizer.json`` for other tools."""
        super().save(directory)
        self._require_tokenizer().save(Path(directory) / "tokenizer.json")


def _prompt(text: Any) -> str:
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a str, got {_checks.describe(text)}")
    return text


def _non_negative(name: str, value: Any) -> float:
    number = _checks.real(name, value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite float >= 0, got {value}")
    return number


# ---------------------------------------------------------------------- command line
def split_validation(text: str, fraction: float, *, path: str = "--data") -> tuple[str, str]:
    """``(train, valid)``: the last ``fraction`` of ``text`` (cut at a line break when there is
    one in that part, so that no word is split) held out for validation."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--valid-fraction must be in (0, 1), got {fraction}")
    cut = int(len(text) * (1.0 - fraction))
    line_break = text.find("\n", cut)
    if 0 <= line_break < len(text) - 1:
        cut = line_break + 1
    train, valid = text[:cut], text[cut:]
    if not train.strip() or not valid.strip():
        raise ValueError(
            f"{path} is too short to hold out {fraction:.0%} for validation "
            f"({len(text)} characters): pass --valid FILE"
        )
    return train, valid


def _int_list(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated ints such as 2000,8000, got {value!r}"
        ) from None


def _json_dict(value: str) -> dict[str, Any]:
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {value!r}: {exc}") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {value!r}")
    return data


def _add_arguments(group: argparse._ActionsContainer) -> None:
    add = group.add_argument
    add("--data", metavar="FILE", help="training text (UTF-8), required")
    add("--valid", metavar="FILE", help="validation text (default: the last --valid-fraction)")
    add("--valid-fraction", type=float, default=0.1, metavar="F", help="held-out share of --data")
    add("--tokens", choices=KINDS, default="char", help="tokenizer")
    add("--min-count", type=int, default=1, metavar="N", help="rarer tokens become <unk>")
    add("--max-vocab", type=int, metavar="N", help="vocabulary size cap (subwords: pieces)")
    add("--cell", choices=tuple(CELLS), default="lstm", help="recurrent layer")
    add("--emb-size", type=int, default=200, metavar="E", help="embedding size")
    add("--hidden-size", type=int, default=200, metavar="H", help="hidden units per layer")
    add("--num-layers", type=int, default=2, metavar="L", help="stacked layers")
    add(
        "--cell-options",
        type=_json_dict,
        metavar="JSON",
        help='layer variant, e.g. {"layer_norm": true}',
    )
    add("--projection", type=int, default=0, metavar="P", help="linear projection before softmax")
    add("--tie-weights", action="store_true", help="share the embedding and softmax weights")
    add("--adaptive-cutoffs", type=_int_list, metavar="C1,C2", help="adaptive softmax clusters")
    for name, what in (
        ("dropout", "locked dropout on the top output"),
        ("dropout-h", "locked dropout between layers"),
        ("dropout-i", "locked dropout on the embedded input"),
        ("dropout-e", "embedding dropout (whole word types)"),
        ("weight-drop", "DropConnect on the recurrent weights"),
    ):
        add(f"--{name}", type=float, default=0.0, metavar="P", help=what)
    add("--alpha", type=float, default=0.0, help="activation regularisation (AR)")
    add("--beta", type=float, default=0.0, help="temporal activation regularisation (TAR)")
    add("--batch-size", type=int, default=20, metavar="B", help="parallel training streams")
    add("--bptt", type=int, default=35, metavar="T", help="TBPTT window length")
    add("--random-bptt", action="store_true", help="AWD-LSTM's random window lengths")
    add("--eval-batch-size", type=int, default=10, metavar="B", help="evaluation streams")
    add("--cache-size", type=int, default=0, metavar="N", help="neural cache at evaluation")
    add("--cache-theta", type=float, default=0.3, help="neural cache: flatness theta")
    add("--cache-lambda", type=float, default=0.1, help="neural cache: interpolation lambda")


def _make_data(args: argparse.Namespace) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    if not args.data:
        raise ValueError("--data FILE is required: the training text")
    text = read_text(args.data)
    if not text.strip():
        raise ValueError(f"--data {args.data} holds only whitespace: expected UTF-8 text")
    if args.valid:
        valid = read_text(args.valid)
    else:
        text, valid = split_validation(text, args.valid_fraction, path=f"--data {args.data}")
    return (text,), (valid,)


def _read_data(path: str) -> tuple[Any, ...]:
    return (read_text(path),)


register(
    TaskSpec(
        name="lm",
        help="language model over characters, words or subwords (AWD-LSTM regularisation)",
        estimator=LanguageModelEstimator,
        add_arguments=_add_arguments,
        make_data=_make_data,
        read_data=_read_data,
    )
)


def _add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="the --out of `lstmkit train lm`")
    parser.add_argument("--prompt", default="", help="text to continue (default: none)")
    parser.add_argument("--max-new-tokens", type=int, default=200, metavar="N")
    parser.add_argument("--greedy", action="store_true", help="most likely token every step")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, metavar="K", help="sample from the K most likely")
    parser.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling")


def _generate(args: argparse.Namespace) -> int:
    estimator = LanguageModelEstimator.load(args.directory)
    out = sys.stdout
    out.write(args.prompt)
    for piece in estimator.stream(
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        greedy=args.greedy,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    ):
        out.write(piece)
        out.flush()
    out.write("\n")
    return 0


register_command(
    Command(
        name="generate",
        help="continue a prompt with a trained language model, streamed token by token",
        add_arguments=_add_generate_arguments,
        run=_generate,
    )
)

__all__ = [
    "LMWindows",
    "LanguageModel",
    "LanguageModelEstimator",
    "LockedDropout",
    "embedding_dropout",
    "split_validation",
    "stream_nll",
]
