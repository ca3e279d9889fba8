"""Decoding generic over a *step function*: greedy, sampling, beam search and streaming.

Language models and seq2seq decoders differ in what they carry (a recurrent state; a recurrent
state plus the encoder memory and the attention coverage), not in how a sequence is searched. So
every algorithm here sees a model only through one function:

``step(tokens, state) -> (log_probs, new_state)`` or ``(log_probs, new_state, attention)``

* ``tokens``: ``(N,)`` int64, the previous token of each of the ``N`` rows (rows are sequences,
  or ``sequences * beam_size`` hypotheses in beam search).
* ``state``: any pytree (nested tuples, named tuples, lists, dicts) of tensors whose FIRST
  dimension is ``N``, or ``None``. The algorithms reorder and repeat its rows with
  :func:`index_state` and :func:`repeat_state`; they never look inside.
* ``log_probs``: ``(N, V)``, the normalised log-probabilities of the next token
  (``log_softmax`` of the logits).
* ``attention`` (optional): ``(N, S)`` attention weights over the ``S`` source positions, which
  beam search's coverage penalty accumulates.

Plus the start token ``bos`` (an int, or one per sequence), the end token ``eos`` and
``max_len``. Every algorithm returns the generated tokens without the start token, their lengths
(``eos`` included when generated) and their scores. See ``docs/decoding.md``.

>>> import torch
>>> from lstmkit.decode import greedy
>>> table = torch.log_softmax(torch.randn(5, 5), dim=-1)   # a bigram "language model"
>>> out = greedy(lambda tok, state: (table[tok], state), None, bos=0, eos=4, max_len=10)
>>> out.tokens.shape[0], int(out.lengths[0]) <= 10
(1, True)
"""

from .beam import LENGTH_PENALTIES, BeamOutput, beam_search, coverage_score, length_divisor
from .sampling import DecodeOutput, filter_log_probs, greedy, sample, stream
from .state import index_state, map_state, repeat_state, state_batch_size

__all__ = [
    "LENGTH_PENALTIES",
    "BeamOutput",
    "DecodeOutput",
    "beam_search",
    "coverage_score",
    "filter_log_probs",
    "greedy",
    "index_state",
    "length_divisor",
    "map_state",
    "repeat_state",
    "sample",
    "state_batch_size",
    "stream",
]
