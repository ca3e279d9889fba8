"""Public layers: the drop-in recurrent layers and cells, and the modules built around them
(CRF, GRU-D, attention)."""

from .attention import BahdanauAttention, LuongAttention, Memory, coverage_loss
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
    "BahdanauAttention",
    "GRUCell",
    "LSTMCell",
    "LuongAttention",
    "Memory",
    "RNNCell",
    "TransitionConstraints",
    "allowed_transitions",
    "coverage_loss",
    "grud_inputs",
    "time_gaps",
]
