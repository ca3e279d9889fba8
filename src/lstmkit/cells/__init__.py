"""The math of one recurrent step, one module per family. No time loop lives here."""

from .base import INIT_SCHEMES, CellMath, Params, State, layer_norm, resolve_init
from .gru import GRUMath
from .lstm import LSTMMath
from .rnn import NONLINEARITIES, RNNMath

__all__ = [
    "INIT_SCHEMES",
    "NONLINEARITIES",
    "CellMath",
    "GRUMath",
    "LSTMMath",
    "Params",
    "RNNMath",
    "State",
    "layer_norm",
    "resolve_init",
]
