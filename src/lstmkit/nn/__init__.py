"""Public layers: the drop-in recurrent layers and cells, and the modules built around them
(CRF, GRU-D; attention arrives with the seq2seq task)."""

from .cells import GRUCell, LSTMCell, RNNCell
from .crf import CRF, TransitionConstraints, allowed_transitions
from .grud import GRUD, grud_inputs, time_gaps
from .layers import GRU, LSTM, RNN

__all__ = [
    "CRF",
    "GRU",
    "GRUD",
    "LSTM",
    "RNN",
    "GRUCell",
    "LSTMCell",
    "RNNCell",
    "TransitionConstraints",
    "allowed_transitions",
    "grud_inputs",
    "time_gaps",
]
