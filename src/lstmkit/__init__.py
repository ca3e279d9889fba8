"""lstmkit: recurrent sequence models (LSTM, GRU, RNN) with every classic variant.

>>> from lstmkit import LSTM
>>> lstm = LSTM(8, 16, num_layers=2, peephole=True, layer_norm=True, zoneout=0.1)
"""

from .nn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__version__ = "0.1.0"

__all__ = ["GRU", "LSTM", "RNN", "GRUCell", "LSTMCell", "RNNCell", "__version__"]
