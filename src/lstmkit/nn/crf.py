r"""Linear-chain conditional random field (CRF) over per-position tag scores.

A CRF turns the emission scores of any encoder (a BiLSTM, a transformer, a linear layer over
features) into a distribution over whole tag sequences. With emissions :math:`E_t(y)`, transition
scores :math:`A(i, j)` and start and end scores :math:`s(y)`, :math:`e(y)`, a path
:math:`y_1 \dots y_L` scores

.. math::  S(y) = s(y_1) + \sum_{t=1}^{L} E_t(y_t) + \sum_{t=2}^{L} A(y_{t-1}, y_t) + e(y_L)

and :math:`p(y \mid E) = \exp(S(y) - \log Z)` with :math:`\log Z = \log \sum_{y'} \exp S(y')`.
``log Z`` comes from the forward algorithm in log space, the best path from Viterbi, the k best
paths from a k-best Viterbi, and per-position posteriors from forward-backward. Every recursion
loops over time only; batch and tags are vectorised.

Sequences are described by a boolean mask whose valid positions must be contiguous for each
sequence, so right padding, left padding and leading special tokens all work. Internally each
sequence is first shifted to start at step 0 (a gather, so gradients flow back), the recursions
run on right-aligned data and results are shifted back to the caller's positions.

Constrained decoding for the BIO (IOB2) and BIOES tagging schemes forbids transitions such as
``O -> I-PER``: see :func:`allowed_transitions`, :class:`TransitionConstraints` and
:meth:`CRF.from_tags`. The full write-up, with the equations, is ``docs/crf.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import _checks

START = "<start>"
"""Name of the virtual tag before the first position, in :func:`allowed_transitions`."""
END = "<end>"
"""Name of the virtual tag after the last position, in :func:`allowed_transitions`."""
PAD_TAG = -1
"""Tag id written at masked positions (and for missing n-best paths) in decoded tensors."""
ILLEGAL_TRAINING_SCORE = -1.0e4
"""Score given to a forbidden transition in the likelihood when ``constrain_training=True``.

It is finite on purpose: with ``-inf`` the forward algorithm's ``logsumexp`` over a state that no
legal path reaches has an undefined (NaN) gradient. ``exp(-1e4)`` underflows to exactly 0 in
float32 and float64, so forbidden paths still contribute nothing to ``log Z``. Decoding uses
``-inf``, which makes forbidden transitions impossible whatever the emission scores are."""
SCHEMES = ("BIO", "BIOES")
REDUCTIONS = ("sum", "mean", "none", "token_mean")
_SCHEME_PREFIXES = {"BIO": ("B", "I"), "BIOES": ("B", "I", "E", "S")}


# --------------------------------------------------------------------------------------------
# Tagging schemes and transition constraints
# --------------------------------------------------------------------------------------------


def _check_tag_names(tags: Any) -> tuple[str, ...]:
    if isinstance(tags, str) or not isinstance(tags, Sequence):
        raise TypeError(f"tags must be a list of tag names (str), got {_checks.describe(tags)}")
    names = tuple(tags)
    if not names:
        raise ValueError("tags must name at least one tag, got an empty list")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise TypeError(f"tags[{i}] must be a str, got {_checks.describe(name)}")
        if name in (START, END):
            raise ValueError(
                f"tags[{i}] is {name!r}, a name reserved for the virtual start/end tags"
            )
        if name in seen:
            raise ValueError(f"tags must be unique, got {name!r} at tags[{seen[name]}] and [{i}]")
        seen[name] = i
    return names


def _parse_scheme_tags(tags: Sequence[str], scheme: str) -> list[tuple[str, str]]:
    """Split each name into (prefix, entity type): ``'B-PER' -> ('B', 'PER')``, ``'O' -> ('O',
    '')``. The type may itself contain dashes (``'B-WORK-OF-ART'``)."""
    prefixes = _SCHEME_PREFIXES[scheme]
    parsed = []
    for i, name in enumerate(tags):
        if name == "O":
            parsed.append(("O", ""))
            continue
        prefix, dash, kind = name.partition("-")
        if not dash or prefix not in prefixes or not kind:
            expected = ", ".join(f"'{p}-<type>'" for p in prefixes)
            raise ValueError(
                f"tags[{i}] must be 'O' or one of {expected} for scheme {scheme!r}, got {name!r}"
            )
        parsed.append((prefix, kind))
    return parsed


def _transition_allowed(
    scheme: str, src: tuple[str, str] | None, dst: tuple[str, str] | None
) -> bool:
    """Whether ``src -> dst`` may occur; ``None`` stands for the virtual start (as ``src``) or end
    (as ``dst``) tag."""
    if scheme == "BIO":
        # I-X continues an entity of the same type; everything else may go anywhere.
        if dst is None or dst[0] in ("O", "B"):
            return True
        return src is not None and src[0] in ("B", "I") and src[1] == dst[1]
    # BIOES: B-X and I-X are inside an unfinished entity that only I-X or E-X may continue;
    # after start, O, E-Y and S-Y a new segment begins (O, B-X or S-X); the sentence may only end
    # outside an entity.
    inside = src is not None and src[0] in ("B", "I")
    if dst is None:
        return not inside
    if inside:
        assert src is not None
        return dst[0] in ("I", "E") and dst[1] == src[1]
    return dst[0] in ("O", "B", "S")


def allowed_transitions(tags: Sequence[str], scheme: str) -> list[tuple[str, str]]:
    """List every transition the ``scheme`` allows among ``tags``, by name.

    The virtual tags :data:`START` and :data:`END` stand before the first and after the last
    position. The order is ``(START, tag)`` pairs, then ``(tag, tag)`` pairs, then
    ``(tag, END)`` pairs, each in the order of ``tags``.

    Schemes:

    - ``'BIO'`` (IOB2): ``I-X`` may only follow ``B-X`` or ``I-X``; in particular a sequence may
      not start with ``I-X``. Tags ``O``, ``B-X``, ``I-X``.
    - ``'BIOES'``: ``B-X`` and ``I-X`` must be followed by ``I-X`` or ``E-X`` (the entity is not
      finished), and may not end the sequence; ``I-X`` and ``E-X`` may only follow ``B-X`` or
      ``I-X``. Tags ``O``, ``B-X``, ``I-X``, ``E-X``, ``S-X``.
    """
    names = _check_tag_names(tags)
    scheme = _checks.choice("scheme", scheme, SCHEMES)
    parsed = _parse_scheme_tags(names, scheme)
    pairs = [
        (START, names[j]) for j in range(len(names)) if _transition_allowed(scheme, None, parsed[j])
    ]
    pairs += [
        (names[i], names[j])
        for i in range(len(names))
        for j in range(len(names))
        if _transition_allowed(scheme, parsed[i], parsed[j])
    ]
    pairs += [
        (names[i], END) for i in range(len(names)) if _transition_allowed(scheme, parsed[i], None)
    ]
    return pairs


def _bool_tensor(name: str, value: Any, shape: tuple[int, ...]) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of dtype bool, got {_checks.describe(value)}"
        )
    if value.dtype != torch.bool:
        raise TypeError(f"{name} must have dtype torch.bool, got {value.dtype}")
    if tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
    return value


@dataclass(frozen=True, eq=False)
class TransitionConstraints:
    """Which transitions a CRF may use: ``transitions[i, j]`` allows tag ``i -> j``, ``start[j]``
    allows a sequence to begin with ``j`` and ``end[i]`` allows it to finish with ``i``.

    All three are boolean tensors (``True`` = allowed). Build them from a tagging scheme with
    :meth:`from_scheme`, from explicit named pairs with :meth:`from_pairs`, or directly.
    """

    transitions: Tensor
    start: Tensor
    end: Tensor

    def __post_init__(self) -> None:
        transitions = self.transitions
        if not isinstance(transitions, Tensor):
            raise TypeError(
                "transitions must be a (num_tags, num_tags) bool tensor, "
                f"got {_checks.describe(transitions)}"
            )
        if transitions.dim() != 2:
            raise ValueError(
                "transitions must be a (num_tags, num_tags) bool tensor, "
                f"got {_checks.describe(transitions)}"
            )
        k = transitions.shape[0]
        if k < 1:
            raise ValueError("transitions must describe at least one tag, got shape (0, 0)")
        _bool_tensor("transitions", transitions, (k, k))
        _bool_tensor("start", self.start, (k,))
        _bool_tensor("end", self.end, (k,))

    @property
    def num_tags(self) -> int:
        return int(self.transitions.shape[0])

    @classmethod
    def from_pairs(
        cls, tags: Sequence[str], pairs: Sequence[tuple[str, str]]
    ) -> TransitionConstraints:
        """Allow exactly the named ``(from, to)`` pairs; :data:`START` and :data:`END` name the
        virtual start and end tags. The inverse of :meth:`pairs`."""
        names = _check_tag_names(tags)
        index = {name: i for i, name in enumerate(names)}
        k = len(names)
        transitions = torch.zeros(k, k, dtype=torch.bool)
        start = torch.zeros(k, dtype=torch.bool)
        end = torch.zeros(k, dtype=torch.bool)
        for n, pair in enumerate(pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"pairs[{n}] must be a (from, to) pair of tag names, got {pair!r}")
            src, dst = pair
            if src == START and dst in index:
                start[index[dst]] = True
            elif dst == END and src in index:
                end[index[src]] = True
            elif src in index and dst in index:
                transitions[index[src], index[dst]] = True
            else:
                raise ValueError(
                    f"pairs[{n}] = {pair!r} must name tags from `tags` (or {START!r} as the "
                    f"source, {END!r} as the target); known tags: {list(names)}"
                )
        return cls(transitions, start, end)

    @classmethod
    def from_scheme(cls, tags: Sequence[str], scheme: str) -> TransitionConstraints:
        """The constraints of a tagging scheme (``'BIO'`` or ``'BIOES'``) over ``tags``; see
        :func:`allowed_transitions` for the rules."""
        return cls.from_pairs(tags, allowed_transitions(tags, scheme))

    def pairs(self, tags: Sequence[str] | None = None) -> list[tuple[str, str]]:
        """The allowed transitions by name, in :func:`allowed_transitions`' order. Without
        ``tags`` the tags are named by their ids (``'0'``, ``'1'``, ...)."""
        names = (
            tuple(str(i) for i in range(self.num_tags)) if tags is None else _check_tag_names(tags)
        )
        if len(names) != self.num_tags:
            raise ValueError(
                f"tags must name the {self.num_tags} tags of the constraints, got {len(names)}"
            )
        start = self.start.tolist()
        end = self.end.tolist()
        allowed = self.transitions.tolist()
        out = [(START, names[j]) for j in range(self.num_tags) if start[j]]
        out += [
            (names[i], names[j])
            for i in range(self.num_tags)
            for j in range(self.num_tags)
            if allowed[i][j]
        ]
        out += [(names[i], END) for i in range(self.num_tags) if end[i]]
        return out


# --------------------------------------------------------------------------------------------
# Decoding results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CRFDecoding:
    """Decoded tag paths.

    ``tags`` holds tag ids at the valid positions and :data:`PAD_TAG` (-1) at the masked ones, in
    the layout of the emissions without the tag dimension: ``(T, B)``, or ``(B, T)`` when
    ``batch_first``. The n-best decoder adds a leading rank dimension: ``tags[r]`` is the
    ``r``-th best path of every sequence (``r = 0`` is the best).

    ``scores`` are the unnormalised path scores ``S(y)``, shape ``(B,)`` (or ``(k, B)`` for the
    n-best); subtract :meth:`CRF.log_partition` for log-probabilities. A score of ``-inf`` marks
    a path that does not exist (a sequence with fewer than ``k`` paths, or no path satisfying the
    constraints); its tags are all :data:`PAD_TAG`. An empty sequence has one path, the empty
    one, with score 0.
    """

    tags: Tensor
    scores: Tensor
    batch_first: bool

    def to_lists(self) -> list[list[int]] | list[list[list[int]]]:
        """The paths as Python lists without padding: one list of tag ids per sequence for
        :meth:`CRF.decode`, and per sequence a list of its existing paths (best first) for
        :meth:`CRF.decode_nbest`. A sequence without any legal path (score ``-inf``) gives ``[]``
        from :meth:`CRF.decode` like an empty sequence; the scores tell them apart."""
        tags = self.tags
        if tags.dim() == 2:
            per_seq = tags if self.batch_first else tags.t()
            return [[t for t in row if t != PAD_TAG] for row in per_seq.tolist()]
        per_seq = tags.transpose(0, 1) if self.batch_first else tags.permute(2, 0, 1)  # B, k, T
        scores = self.scores.t().tolist()
        return [
            [
                [t for t in path if t != PAD_TAG]
                for path, score in zip(paths, seq_scores, strict=True)
                if score != -math.inf
            ]
            for paths, seq_scores in zip(per_seq.tolist(), scores, strict=True)
        ]


# --------------------------------------------------------------------------------------------
# Recursions on right-aligned, time-major data: emissions (T, B, K), lengths (B,)
# --------------------------------------------------------------------------------------------


def _forward_alphas(
    em: Tensor, lengths: Tensor, trans: Tensor, start: Tensor, keep: bool
) -> tuple[Tensor, list[Tensor]]:
    """alpha_t(j) = log of the summed scores of all prefixes that end in tag j at step t.
    Past a sequence's end alpha is carried unchanged, so the last alpha is each sequence's own."""
    alpha = start + em[0]
    history = [alpha] if keep else []
    for t in range(1, em.shape[0]):
        step = torch.logsumexp(alpha.unsqueeze(2) + trans, dim=1) + em[t]
        alpha = torch.where((t < lengths).unsqueeze(1), step, alpha)
        if keep:
            history.append(alpha)
    return alpha, history


def _backward_betas(em: Tensor, lengths: Tensor, trans: Tensor, end: Tensor) -> Tensor:
    """beta_t(i) = log of the summed scores of all suffixes after step t given tag i at t
    (including the end score); beta is the end score at and past each sequence's last step."""
    T, B, K = em.shape
    last = end.expand(B, K)
    beta = last
    betas = [beta]
    for t in range(T - 2, -1, -1):
        step = torch.logsumexp(trans + (em[t + 1] + beta).unsqueeze(1), dim=2)
        beta = torch.where((t + 1 < lengths).unsqueeze(1), step, last)
        betas.append(beta)
    betas.reverse()
    return torch.stack(betas)


def _path_scores(
    em: Tensor, tags: Tensor, lengths: Tensor, trans: Tensor, start: Tensor, end: Tensor
) -> Tensor:
    """S(y) of the given (already range-checked) tags; 0 for empty sequences."""
    T = em.shape[0]
    if T == 0:
        return em.new_zeros(em.shape[1])
    valid = torch.arange(T, device=em.device).unsqueeze(1) < lengths
    safe = tags.masked_fill(~valid, 0)
    zero = em.new_zeros(())
    emit = em.gather(2, safe.unsqueeze(2)).squeeze(2)
    score = torch.where(valid, emit, zero).sum(0)
    nonempty = lengths > 0
    score = score + torch.where(nonempty, start[safe[0]], zero)
    if T > 1:
        steps = trans[safe[:-1], safe[1:]]
        score = score + torch.where(valid[1:], steps, zero).sum(0)
    last = safe.gather(0, (lengths - 1).clamp(min=0).unsqueeze(0)).squeeze(0)
    return score + torch.where(nonempty, end[last], zero)


def _viterbi(
    em: Tensor, lengths: Tensor, trans: Tensor, start: Tensor, end: Tensor
) -> tuple[Tensor, Tensor]:
    """Best path (T, B) and its score (B,). Ties go to the smaller tag id at each back-pointer
    and at the last step, i.e. to the path that is smallest compared from its end backwards."""
    T, B, K = em.shape
    score = start + em[0]
    identity = torch.arange(K, device=em.device).expand(B, K)
    pointers = []
    for t in range(1, T):
        best, arg = (score.unsqueeze(2) + trans).max(dim=1)
        valid = (t < lengths).unsqueeze(1)
        score = torch.where(valid, best + em[t], score)
        pointers.append(torch.where(valid, arg, identity))
    best_score, tag = (score + end).max(dim=1)
    path = [tag]
    for pointer in reversed(pointers):
        tag = pointer.gather(1, tag.unsqueeze(1)).squeeze(1)
        path.append(tag)
    path.reverse()
    return torch.stack(path), best_score


def _nbest_viterbi(
    em: Tensor, lengths: Tensor, trans: Tensor, start: Tensor, end: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """The k best paths (T, B, k) and scores (B, k), best first; missing paths score -inf.

    For every tag j the k best partial paths ending in j are kept, as ``score[b, j, r]`` with
    rank r. The k best paths ending in j at step t extend, for each i, only the k best ending in
    i at step t-1 (any other prefix is beaten by k kept ones, whose extensions beat it), so
    keeping k per tag is exact.

    Ties follow :func:`_viterbi`'s rule (compare paths from the end backwards, smaller tag ids
    first) without extra bookkeeping: candidates are laid out in (previous tag i, previous rank r)
    order and sorted *stably* by score. Two candidates for tag j with equal scores and different
    i are ordered by i, which is their second-to-last tag; with the same i, equal totals mean
    equal prefix scores, and by induction the ranks r of equally scored prefixes are already in
    the tie order.
    """
    T, B, K = em.shape
    score = em.new_full((B, K, k), -math.inf)
    score[:, :, 0] = start + em[0]
    identity = torch.arange(K * k, device=em.device).expand(B, K * k)
    trans_rows = trans.repeat_interleave(k, dim=0)  # row i*k + r: transitions out of tag i
    pointers = []
    for t in range(1, T):
        # cand[b, i*k + r, j]: the r-th best path ending in i, extended with tag j
        cand = score.reshape(B, K * k, 1) + trans_rows + em[t].unsqueeze(1)
        top, prefix = cand.sort(dim=1, descending=True, stable=True)
        top, prefix = top[:, :k].transpose(1, 2), prefix[:, :k].transpose(1, 2)  # (B, K, k)
        valid = (t < lengths).view(B, 1)
        score = torch.where(valid.unsqueeze(2), top, score)
        pointers.append(torch.where(valid, prefix.reshape(B, K * k), identity))
    final = (score + end.view(1, K, 1)).reshape(B, K * k)
    best, flat = final.sort(dim=1, descending=True, stable=True)
    best, flat = best[:, :k], flat[:, :k]
    path = [flat // k]
    for pointer in reversed(pointers):
        flat = pointer.gather(1, flat)
        path.append(flat // k)
    path.reverse()
    return torch.stack(path), best


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Batch:
    """Validated input, time-major and right-aligned, plus what is needed to shift back."""

    em: Tensor  # (T_eff, B, K), T_eff = longest sequence
    tags: Tensor | None  # (T_eff, B)
    lengths: Tensor  # (B,)
    first: Tensor  # (B,) original index of each sequence's first valid step
    mask: Tensor  # (T, B) the caller's mask, time-major


class CRF(nn.Module):
    """Linear-chain CRF over emission scores of shape ``(T, B, num_tags)`` (``(B, T, num_tags)``
    with ``batch_first=True``).

    Parameters (named as in the ``pytorch-crf`` package, so its state dicts load unchanged):
    ``transitions[i, j]`` scores tag ``i`` followed by tag ``j``; ``start_transitions[j]`` and
    ``end_transitions[i]`` score the first and the last tag. They start at zero, so an untrained
    CRF is the per-position softmax of the emissions and the encoder's early training is not
    disturbed by random transition noise.

    ``forward`` returns the log-likelihood of the given tags (to maximise); :meth:`nll` is the
    loss (its negative). :meth:`decode` and :meth:`decode_nbest` return the best paths and
    :meth:`marginals` the posterior of each tag at each position.

    ``constraints`` forbids transitions: a :class:`TransitionConstraints`, or a scheme name
    (``'BIO'``, ``'BIOES'``) together with ``tags`` (the tag names, in id order). Decoding never
    emits a forbidden transition. With ``constrain_training=True`` the likelihood and the
    marginals also give forbidden transitions the score :data:`ILLEGAL_TRAINING_SCORE`, so the
    model is normalised over legal paths only.

    Masks are boolean, shaped like the emissions without the tag dimension, and may start
    anywhere (left padding, leading special tokens) as long as each sequence's valid positions are
    contiguous. A sequence with no valid position has log-likelihood 0 and decodes to an empty
    path.
    """

    _allowed_trans: Tensor | None
    _allowed_start: Tensor | None
    _allowed_end: Tensor | None

    def __init__(
        self,
        num_tags: int,
        *,
        batch_first: bool = False,
        constraints: TransitionConstraints | str | None = None,
        constrain_training: bool = False,
        tags: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.num_tags = _checks.positive_int("num_tags", num_tags)
        self.batch_first = _checks.boolean("batch_first", batch_first)
        self.constrain_training = _checks.boolean("constrain_training", constrain_training)
        self.tags: tuple[str, ...] | None = None
        if tags is not None:
            self.tags = _check_tag_names(tags)
            if len(self.tags) != self.num_tags:
                raise ValueError(
                    f"tags must name all num_tags={self.num_tags} tags, got {len(self.tags)} names"
                )
        self.scheme: str | None = None
        if isinstance(constraints, str):
            self.scheme = _checks.choice("constraints", constraints, SCHEMES)
            if self.tags is None:
                raise ValueError(
                    f"constraints={constraints!r} needs the tag names: pass tags=[...] "
                    "(or use CRF.from_tags)"
                )
            constraints = TransitionConstraints.from_scheme(self.tags, self.scheme)
        elif constraints is not None and not isinstance(constraints, TransitionConstraints):
            raise TypeError(
                "constraints must be None, a TransitionConstraints or a scheme name "
                f"({', '.join(map(repr, SCHEMES))}), got {_checks.describe(constraints)}"
            )
        if constraints is not None and constraints.num_tags != self.num_tags:
            raise ValueError(
                f"constraints must cover num_tags={self.num_tags} tags, "
                f"got constraints for {constraints.num_tags}"
            )
        if constrain_training and constraints is None:
            raise ValueError("constrain_training=True needs constraints, got constraints=None")
        self.constraints = constraints
        # Buffers follow .to(device) but are not saved: they derive from the constructor's
        # arguments, which a saved config records.
        allowed = (
            None
            if constraints is None
            else (constraints.transitions, constraints.start, constraints.end)
        )
        self.register_buffer(
            "_allowed_trans", None if allowed is None else allowed[0].clone(), False
        )
        self.register_buffer(
            "_allowed_start", None if allowed is None else allowed[1].clone(), False
        )
        self.register_buffer("_allowed_end", None if allowed is None else allowed[2].clone(), False)
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))
        self.start_transitions = nn.Parameter(torch.zeros(num_tags))
        self.end_transitions = nn.Parameter(torch.zeros(num_tags))

    @classmethod
    def from_tags(
        cls,
        tags: Sequence[str],
        scheme: str | None = "BIO",
        *,
        batch_first: bool = False,
        constrain_training: bool = False,
    ) -> CRF:
        """A CRF over the named ``tags`` (ids in list order), constrained by ``scheme``
        (``'BIO'``, ``'BIOES'``, or ``None`` for no constraints)."""
        names = _check_tag_names(tags)
        return cls(
            len(names),
            batch_first=batch_first,
            constraints=scheme,
            constrain_training=constrain_training,
            tags=names,
        )

    def reset_parameters(self) -> None:
        """Zero all scores (the initial state; see the class docstring for why)."""
        for p in (self.transitions, self.start_transitions, self.end_transitions):
            nn.init.zeros_(p)

    def extra_repr(self) -> str:
        parts = [f"num_tags={self.num_tags}"]
        if self.batch_first:
            parts.append("batch_first=True")
        if self.scheme is not None:
            parts.append(f"constraints={self.scheme!r}")
        elif self.constraints is not None:
            parts.append("constraints=TransitionConstraints(...)")
        if self.constrain_training:
            parts.append("constrain_training=True")
        return ", ".join(parts)

    def allowed_transitions(self) -> list[tuple[str, str]]:
        """The transitions this CRF may decode, by name (tag ids as strings when the CRF has no
        tag names); every transition when it has no constraints."""
        constraints = self.constraints
        if constraints is None:
            k = self.num_tags
            constraints = TransitionConstraints(
                torch.ones(k, k, dtype=torch.bool),
                torch.ones(k, dtype=torch.bool),
                torch.ones(k, dtype=torch.bool),
            )
        return constraints.pairs(self.tags)

    # ---- scores with constraints applied --------------------------------------------------

    def _scores(self, constrained: bool, fill: float) -> tuple[Tensor, Tensor, Tensor]:
        trans: Tensor = self.transitions
        start: Tensor = self.start_transitions
        end: Tensor = self.end_transitions
        a_trans, a_start, a_end = self._allowed_trans, self._allowed_start, self._allowed_end
        if constrained and a_trans is not None and a_start is not None and a_end is not None:
            trans = trans.masked_fill(~a_trans, fill)
            start = start.masked_fill(~a_start, fill)
            end = end.masked_fill(~a_end, fill)
        return trans, start, end

    def _training_scores(self) -> tuple[Tensor, Tensor, Tensor]:
        return self._scores(self.constrain_training, ILLEGAL_TRAINING_SCORE)

    def _decoding_scores(self) -> tuple[Tensor, Tensor, Tensor]:
        return self._scores(True, -math.inf)

    # ---- input handling ---------------------------------------------------------------------

    def _where(self, t: int, b: int) -> str:
        return f"[{b}, {t}]" if self.batch_first else f"[{t}, {b}]"

    def _prepare(self, emissions: Any, mask: Any, tags: Any = None) -> _Batch:
        em = _checks.floating_tensor("emissions", emissions)
        layout = "(B, T, num_tags)" if self.batch_first else "(T, B, num_tags)"
        if em.dim() != 3 or em.shape[2] != self.num_tags:
            raise ValueError(
                f"emissions must have shape {layout} with num_tags={self.num_tags}, "
                f"got {tuple(em.shape)}"
            )
        _checks.matches_parameters("emissions", em, self.transitions)
        if self.batch_first:
            em = em.transpose(0, 1)
        T, B, K = em.shape
        steps = "(B, T)" if self.batch_first else "(T, B)"
        expected = tuple(emissions.shape[:2])
        if mask is None:
            mask_tm = torch.ones(T, B, dtype=torch.bool, device=em.device)
        else:
            if not isinstance(mask, Tensor):
                raise TypeError(
                    f"mask must be a bool tensor of shape {steps}, got {_checks.describe(mask)}"
                )
            if mask.dtype != torch.bool:
                raise TypeError(
                    f"mask must have dtype torch.bool, got {mask.dtype}; convert it with .bool()"
                )
            if tuple(mask.shape) != expected:
                raise ValueError(
                    f"mask must have the shape {steps} = {expected} of emissions without the tag "
                    f"dimension, got {tuple(mask.shape)}"
                )
            if mask.device != em.device:
                raise ValueError(
                    f"mask must be on the emissions' device {em.device}, got {mask.device}"
                )
            mask_tm = mask.t() if self.batch_first else mask
        # each sequence must have a single run of valid positions
        if T:
            runs = mask_tm[0].long() + (mask_tm[1:] & ~mask_tm[:-1]).sum(0)
            bad = (runs > 1).nonzero()
            if bad.numel():
                b = int(bad[0, 0])
                valid_steps = mask_tm[:, b].nonzero().flatten().tolist()
                raise ValueError(
                    "mask must mark one contiguous run of valid positions per sequence (padding "
                    f"on the left and/or right only); sequence {b} has {int(runs[b])} separate "
                    f"runs, valid at steps {valid_steps}"
                )
        lengths = mask_tm.sum(0)
        first = (
            torch.where(lengths > 0, mask_tm.to(torch.uint8).argmax(0), 0)
            if T
            else torch.zeros(B, dtype=torch.long, device=em.device)
        )
        tags_tm = None
        if tags is not None:
            tags_tm = self._check_tags(tags, expected, mask_tm)
        t_eff = int(lengths.max()) if B else 0
        if bool((first == 0).all()):
            em = em[:t_eff]
            tags_tm = None if tags_tm is None else tags_tm[:t_eff]
        else:
            index = torch.arange(t_eff, device=em.device).unsqueeze(1) + first
            index = index.clamp(max=T - 1)
            em = em.gather(0, index.unsqueeze(2).expand(t_eff, B, K))
            tags_tm = None if tags_tm is None else tags_tm.gather(0, index)
        return _Batch(em, tags_tm, lengths, first, mask_tm)

    def _check_tags(self, tags: Any, expected: tuple[int, ...], mask_tm: Tensor) -> Tensor:
        steps = "(B, T)" if self.batch_first else "(T, B)"
        if not isinstance(tags, Tensor):
            raise TypeError(
                f"tags must be an integer tensor of shape {steps}, got {_checks.describe(tags)}"
            )
        if tags.is_floating_point() or tags.is_complex() or tags.dtype == torch.bool:
            raise TypeError(f"tags must be an integer tensor of tag ids, got dtype {tags.dtype}")
        if tuple(tags.shape) != expected:
            raise ValueError(
                f"tags must have the shape {steps} = {expected} of emissions without the tag "
                f"dimension, got {tuple(tags.shape)}"
            )
        if tags.device != mask_tm.device:
            raise ValueError(
                f"tags must be on the emissions' device {mask_tm.device}, got {tags.device}"
            )
        tags_tm = (tags.t() if self.batch_first else tags).long()
        bad = (mask_tm & ((tags_tm < 0) | (tags_tm >= self.num_tags))).nonzero()
        if bad.numel():
            t, b = int(bad[0, 0]), int(bad[0, 1])
            raise ValueError(
                f"tags must hold tag ids in [0, {self.num_tags}) at the positions the mask marks "
                f"valid; tags{self._where(t, b)} is {int(tags_tm[t, b])} (sequence {b}, step {t})"
            )
        return tags_tm

    def _restore(self, batch: _Batch, aligned: Tensor, fill: float | int) -> Tensor:
        """Shift right-aligned per-step values (T_eff, B, ...) back to the caller's positions
        (T, B, ...), with ``fill`` at masked positions, in the caller's layout."""
        mask = batch.mask
        T, B = mask.shape
        extra = aligned.shape[2:]
        shape = (T, B, *extra)
        if aligned.shape[0] == 0:
            out = aligned.new_full(shape, fill)
        else:
            index = torch.arange(T, device=mask.device).unsqueeze(1) - batch.first
            index = index.clamp(0, aligned.shape[0] - 1)
            index = index.view(T, B, *([1] * len(extra))).expand(shape)
            keep = mask.view(T, B, *([1] * len(extra)))
            out = torch.where(keep, aligned.gather(0, index), aligned.new_full((), fill))
        return out.transpose(0, 1) if self.batch_first else out

    # ---- likelihood -------------------------------------------------------------------------

    def log_partition(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """``log Z`` of each sequence, shape ``(B,)``; 0 for an empty sequence."""
        batch = self._prepare(emissions, mask)
        return self._log_partition(batch)

    def _log_partition(self, batch: _Batch) -> Tensor:
        if batch.em.shape[0] == 0:
            return batch.em.new_zeros(batch.em.shape[1])
        trans, start, end = self._training_scores()
        alpha, _ = _forward_alphas(batch.em, batch.lengths, trans, start, keep=False)
        log_z = torch.logsumexp(alpha + end, dim=1)
        return torch.where(batch.lengths > 0, log_z, log_z.new_zeros(()))

    def path_score(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """The unnormalised score ``S(y)`` of ``tags`` for each sequence, shape ``(B,)``."""
        batch = self._prepare(emissions, mask, tags)
        assert batch.tags is not None
        return _path_scores(batch.em, batch.tags, batch.lengths, *self._training_scores())

    def forward(
        self,
        emissions: Tensor,
        tags: Tensor,
        mask: Tensor | None = None,
        reduction: str = "sum",
    ) -> Tensor:
        """Log-likelihood ``log p(tags | emissions)`` (to maximise; :meth:`nll` is the loss).

        ``tags`` has the shape of ``mask``; tags at masked positions are ignored (any value,
        such as -100, is fine there). ``reduction``: ``'none'`` gives one value per sequence,
        ``'sum'`` their sum, ``'mean'`` their mean over the batch, ``'token_mean'`` the sum
        divided by the number of valid positions (0 when there are none).
        """
        reduction = _checks.choice("reduction", reduction, REDUCTIONS)
        batch = self._prepare(emissions, mask, tags)
        assert batch.tags is not None
        gold = _path_scores(batch.em, batch.tags, batch.lengths, *self._training_scores())
        llh = gold - self._log_partition(batch)
        if reduction == "none":
            return llh
        if reduction == "sum":
            return llh.sum()
        if reduction == "mean":
            return llh.mean() if llh.numel() else llh.sum()
        return llh.sum() / batch.lengths.sum().clamp(min=1).to(llh.dtype)

    def nll(
        self,
        emissions: Tensor,
        tags: Tensor,
        mask: Tensor | None = None,
        reduction: str = "mean",
    ) -> Tensor:
        """The training loss: the negative log-likelihood, by default averaged over the batch."""
        return -self.forward(emissions, tags, mask, reduction)

    def marginals(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Posterior ``p(y_t = j | emissions)`` by forward-backward, shaped like ``emissions``.

        Each valid position sums to 1 over tags; masked positions are 0. The distribution is the
        one the likelihood uses (constrained iff ``constrain_training``). Differentiable.
        """
        batch = self._prepare(emissions, mask)
        em = batch.em
        if em.shape[0] == 0:
            return self._restore(batch, em, 0.0)
        trans, start, end = self._training_scores()
        alpha, alphas = _forward_alphas(em, batch.lengths, trans, start, keep=True)
        log_z = torch.logsumexp(alpha + end, dim=1)
        betas = _backward_betas(em, batch.lengths, trans, end)
        probs = torch.exp(torch.stack(alphas) + betas - log_z.view(1, -1, 1))
        return self._restore(batch, probs, 0.0)

    # ---- decoding ---------------------------------------------------------------------------

    def decode(self, emissions: Tensor, mask: Tensor | None = None) -> CRFDecoding:
        """The best path of each sequence (Viterbi), under the constraints if any.

        Returns a :class:`CRFDecoding`: ``tags`` shaped like ``mask`` with :data:`PAD_TAG` at
        masked positions, ``scores`` of shape ``(B,)``. Among equally scored paths the one that
        is smaller compared from its last position backwards wins, as in :meth:`decode_nbest`.
        """
        batch = self._prepare(emissions, mask)
        em, lengths = batch.em, batch.lengths
        B = lengths.shape[0]
        if em.shape[0] == 0:
            aligned = torch.full((0, B), PAD_TAG, dtype=torch.long, device=em.device)
            return CRFDecoding(
                self._restore(batch, aligned, PAD_TAG), em.new_zeros(B), self.batch_first
            )
        path, scores = _viterbi(em, lengths, *self._decoding_scores())
        feasible = scores > -math.inf
        path = path.masked_fill(~feasible, PAD_TAG)
        scores = torch.where(lengths > 0, scores, scores.new_zeros(()))
        return CRFDecoding(self._restore(batch, path, PAD_TAG), scores, self.batch_first)

    def decode_nbest(
        self, emissions: Tensor, mask: Tensor | None = None, k: int = 5
    ) -> CRFDecoding:
        """The ``k`` best paths of each sequence, best first (exact k-best Viterbi), under the
        constraints if any.

        Returns a :class:`CRFDecoding` with ``tags`` of shape ``(k, *mask.shape)`` and ``scores``
        of shape ``(k, B)``. Sequences with fewer than ``k`` (legal) paths get ``-inf`` scores
        and all-:data:`PAD_TAG` paths for the missing ranks. Equal scores are ordered by
        comparing the paths from their last position backwards (smaller tag id first), which
        makes the order deterministic; ``decode_nbest(..., k=1)`` equals :meth:`decode`.
        """
        k = _checks.positive_int("k", k)
        batch = self._prepare(emissions, mask)
        em, lengths = batch.em, batch.lengths
        B = lengths.shape[0]
        empty = (lengths == 0).unsqueeze(1)
        if em.shape[0] == 0:
            paths = torch.full((0, B, k), PAD_TAG, dtype=torch.long, device=em.device)
            scores = em.new_full((B, k), -math.inf)
        else:
            paths, scores = _nbest_viterbi(em, lengths, *self._decoding_scores(), k)
        # an empty sequence has exactly one path: the empty one, with score 0
        rank0 = torch.arange(k, device=em.device).unsqueeze(0) == 0
        empty_scores = torch.full_like(scores, -math.inf).masked_fill(rank0, 0.0)
        scores = torch.where(empty, empty_scores, scores)
        missing = (scores == -math.inf) | empty
        paths = paths.masked_fill(missing.unsqueeze(0), PAD_TAG)
        tags = self._restore(batch, paths, PAD_TAG)  # (T, B, k) or (B, T, k)
        return CRFDecoding(tags.permute(2, 0, 1), scores.t(), self.batch_first)
