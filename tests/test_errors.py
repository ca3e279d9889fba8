"""Bad input gets a clear error that names the argument, the expectation and what came."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from lstmkit import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell


def x(T: int = 5, B: int = 3, F: int = 4, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(T, B, F, dtype=dtype)


# ---------------------------------------------------------------------- forward inputs
def test_wrong_feature_size_names_input_size_and_both_sizes():
    m = LSTM(4, 6)
    with pytest.raises(ValueError, match=r"input must have 4 features \(input_size\).*got 7"):
        m(torch.randn(5, 3, 7))


def test_integer_input_is_a_type_error_naming_the_dtype():
    m = GRU(4, 6)
    with pytest.raises(TypeError, match=r"input must be a floating-point tensor.*torch\.int64"):
        m(torch.ones(5, 3, 4, dtype=torch.int64))


def test_non_tensor_input():
    with pytest.raises(TypeError, match=r"input must be a torch\.Tensor, got \[1, 2\] \(list\)"):
        RNN(4, 6)([1, 2])


def test_wrong_input_rank():
    with pytest.raises(ValueError, match=r"input must be 3-D .*got shape \(5,\)"):
        LSTM(4, 6)(torch.randn(5))


@pytest.mark.parametrize(
    ("hx", "pattern"),
    [
        (
            (torch.zeros(1, 3, 6), torch.zeros(1, 2, 6)),
            r"hx\[1\] \(c_0\) must have shape \(1, 3, 6\), got \(1, 2, 6\)",
        ),
        (
            (torch.zeros(2, 3, 6), torch.zeros(1, 3, 6)),
            r"hx\[0\] \(h_0\) must have shape \(1, 3, 6\), got \(2, 3, 6\)",
        ),
    ],
)
def test_lstm_hx_shape(hx, pattern):
    with pytest.raises(ValueError, match=pattern):
        LSTM(4, 6)(x(), hx)


def test_lstm_hx_must_be_a_pair():
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\) for LSTM, got a tensor"):
        LSTM(4, 6)(x(), torch.zeros(1, 3, 6))


def test_hx_shape_with_projection_uses_proj_size_for_h():
    m = LSTM(4, 6, proj_size=2)
    with pytest.raises(ValueError, match=r"hx\[0\] \(h_0\) must have shape \(1, 3, 2\)"):
        m(x(), (torch.zeros(1, 3, 6), torch.zeros(1, 3, 6)))


def test_hx_dtype_mismatch():
    with pytest.raises(
        TypeError, match=r"hx must have the input's dtype torch\.float32, got torch\.float64"
    ):
        GRU(4, 6)(x(), torch.zeros(1, 3, 6, dtype=torch.float64))


def test_hx_device_mismatch():
    with pytest.raises(ValueError, match=r"hx must be on the input's device cpu, got meta"):
        RNN(4, 6)(x(), torch.zeros(1, 3, 6, device="meta"))


def test_hx_wrong_shape_for_gru_and_unbatched():
    with pytest.raises(ValueError, match=r"hx must have shape \(2, 6\), got \(2, 1, 6\)"):
        GRU(4, 6, num_layers=2)(torch.randn(5, 4), torch.zeros(2, 1, 6))


# ---------------------------------------------------------------------- lengths
def test_lengths_longer_than_sequence():
    with pytest.raises(
        ValueError, match=r"lengths must be <= the sequence length 5 of input, got a length of 9"
    ):
        LSTM(4, 6)(x(), lengths=torch.tensor([5, 9, 1]))


def test_negative_lengths():
    with pytest.raises(ValueError, match=r"lengths must be >= 0, got a length of -1"):
        LSTM(4, 6)(x(), lengths=[5, -1, 1])


def test_lengths_wrong_count():
    with pytest.raises(ValueError, match=r"lengths must have shape \(3,\).*got \(2,\)"):
        GRU(4, 6)(x(), lengths=torch.tensor([5, 1]))


def test_float_lengths():
    with pytest.raises(
        TypeError, match=r"lengths must be an integer tensor, got dtype torch\.float32"
    ):
        GRU(4, 6)(x(), lengths=torch.tensor([5.0, 1.0, 2.0]))


def test_lengths_of_wrong_python_type():
    with pytest.raises(TypeError, match=r"lengths must hold ints, got \[5, 1\.5, 2\]"):
        RNN(4, 6)(x(), lengths=[5, 1.5, 2])


def test_lengths_on_the_wrong_device():
    lengths = torch.tensor([5, 1, 2], device="meta")
    with pytest.raises(
        ValueError, match=r"lengths must be on the CPU or on the input's device cpu, got meta"
    ):
        LSTM(4, 6)(x(), lengths=lengths)


def test_lengths_with_packed_sequence():
    packed = nn.utils.rnn.pack_padded_sequence(x(), [5, 4, 2], enforce_sorted=False)
    with pytest.raises(ValueError, match=r"lengths must be None when input is a PackedSequence"):
        LSTM(4, 6)(packed, lengths=[5, 4, 2])


def test_integer_packed_sequence():
    packed = nn.utils.rnn.pack_padded_sequence(torch.ones(5, 3, 4, dtype=torch.long), [5, 4, 2])
    with pytest.raises(TypeError, match=r"input must be a floating-point tensor"):
        GRU(4, 6)(packed)


# ---------------------------------------------------------------------- constructor options
@pytest.mark.parametrize(
    ("ctor", "kwargs", "error", "pattern"),
    [
        (GRU, {"proj_size": 2}, ValueError, r"proj_size is only supported by LSTM, not GRU"),
        (RNN, {"proj_size": 2}, ValueError, r"proj_size is only supported by LSTM, not RNN"),
        (
            LSTM,
            {"proj_size": 6},
            ValueError,
            r"proj_size must be smaller than hidden_size \(6\), got 6",
        ),
        (LSTM, {"proj_size": -1}, ValueError, r"proj_size must be a non-negative int, got -1"),
        (
            LSTM,
            {"bidirectional": True, "reverse": True},
            ValueError,
            r"reverse=True and bidirectional=True",
        ),
        (
            GRU,
            {"bidirectional_merge": "sum"},
            ValueError,
            r"bidirectional_merge='sum' needs bidirectional=True",
        ),
        (
            LSTM,
            {"bidirectional": True, "bidirectional_merge": "max"},
            ValueError,
            r"bidirectional_merge must be one of 'concat', 'sum', 'mean', got 'max'",
        ),
        (
            LSTM,
            {"residual": True},
            ValueError,
            r"residual=True .* needs num_layers >= 2, got num_layers=1",
        ),
        (LSTM, {"dropout": 1.5}, ValueError, r"dropout must be a float in \[0, 1\), got 1\.5"),
        (
            GRU,
            {"recurrent_dropout": "0.1"},
            TypeError,
            r"recurrent_dropout must be a float in \[0, 1\), got '0\.1'",
        ),
        (
            LSTM,
            {"zoneout": (0.1, 0.2, 0.3)},
            ValueError,
            r"zoneout must be a float or a tuple of 2 rates \(h, c\)",
        ),
        (
            GRU,
            {"zoneout": (0.1, 0.2)},
            ValueError,
            r"zoneout must be a float or a tuple of 1 rates \(h\)",
        ),
        (
            LSTM,
            {"zoneout": (0.1, 1.0)},
            ValueError,
            r"zoneout\[c\] must be a float in \[0, 1\), got 1\.0",
        ),
        (
            LSTM,
            {"init": "xavier"},
            ValueError,
            r"init must be one of 'default', 'torch', 'identity', got 'xavier'",
        ),
        (
            LSTM,
            {"init": "identity"},
            ValueError,
            r"init='identity' \(IRNN\) is for RNN and RNNCell only, got it for LSTM",
        ),
        (
            LSTM,
            {"chrono_init": 100, "forget_bias": 3.0},
            ValueError,
            r"forget_bias and chrono_init both set the forget-gate bias",
        ),
        (LSTM, {"forget_bias": "1"}, TypeError, r"forget_bias must be a float, got '1'"),
        (
            RNN,
            {"chrono_init": 100},
            ValueError,
            r"chrono_init sets gate biases and RNN has no gates",
        ),
        (LSTM, {"chrono_init": 100, "bias": False}, ValueError, r"chrono_init .* needs bias=True"),
        (LSTM, {"chrono_init": 1}, ValueError, r"chrono_init .* must be > 1, got 1"),
        (
            LSTM,
            {"cell_clip": -3.0},
            ValueError,
            r"cell_clip must be a positive float or None, got -3\.0",
        ),
        (LSTM, {"peephole": 1}, TypeError, r"peephole must be True or False, got 1 \(int\)"),
        (
            LSTM,
            {"backend": "cuda"},
            ValueError,
            r"backend must be one of 'auto', 'reference'.*, got 'cuda'",
        ),
        (GRU, {"reset_after": "yes"}, TypeError, r"reset_after must be True or False, got 'yes'"),
    ],
)
def test_constructor_options(ctor, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        ctor(4, 6, **kwargs)


def test_rnn_nonlinearity():
    with pytest.raises(
        ValueError, match=r"nonlinearity must be one of 'tanh', 'relu', got 'sigmoid'"
    ):
        RNN(4, 6, 1, "sigmoid")


@pytest.mark.parametrize(
    ("name", "value", "pattern"),
    [
        ("input_size", 0, r"input_size must be a positive int, got 0"),
        ("hidden_size", 2.5, r"hidden_size must be an int, got 2\.5 \(float\)"),
    ],
)
def test_sizes(name, value, pattern):
    kwargs = {"input_size": 4, "hidden_size": 6, name: value}
    with pytest.raises((ValueError, TypeError), match=pattern):
        LSTM(**kwargs)


def test_num_layers_bool_is_rejected():
    with pytest.raises(TypeError, match=r"num_layers must be an int, got True \(bool\)"):
        LSTM(4, 6, True)


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match=r"dropout applies between stacked layers"):
        LSTM(4, 6, dropout=0.5)


# ---------------------------------------------------------------------- state helpers
def test_reset_state_mask_errors():
    m = LSTM(4, 6)
    hx = m.initial_state(3)
    with pytest.raises(
        TypeError, match=r"mask must be a bool tensor of shape \(3,\), got a tensor .*torch\.int64"
    ):
        m.reset_state(hx, torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match=r"mask must have shape \(3,\), got \(2,\)"):
        m.reset_state(hx, torch.tensor([True, False]))
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\) for LSTM"):
        m.reset_state(hx[0], torch.tensor([True, False, True]))


def test_initial_state_batch_size():
    with pytest.raises(ValueError, match=r"batch_size must be a non-negative int, got -2"):
        GRU(4, 6).initial_state(-2)


# ---------------------------------------------------------------------- torch interop
def test_from_torch_wrong_module():
    with pytest.raises(
        TypeError, match=r"module must be a torch\.nn\.LSTM, got torch\.nn\.modules\.rnn\.GRU"
    ):
        LSTM.from_torch(nn.GRU(4, 6))


def test_from_torch_with_options_that_add_parameters():
    with pytest.raises(
        ValueError,
        match=r"from_torch options \['layer_norm'\] change the parameter set .*ln_cell_bias_l0",
    ):
        LSTM.from_torch(nn.LSTM(4, 6), layer_norm=True)
    converted = LSTM.from_torch(nn.LSTM(4, 6), recurrent_dropout=0.2)
    assert converted.recurrent_dropout == 0.2


def test_input_dtype_must_match_the_parameters():
    pattern = (
        r"input must have the module's parameter dtype torch\.float32, got torch\.float64; convert"
    )
    with pytest.raises(TypeError, match=pattern):
        LSTM(4, 6)(x(dtype=torch.float64))
    with pytest.raises(TypeError, match=pattern):
        GRUCell(4, 6)(torch.randn(2, 4, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts inside the products
        y, _ = GRU(4, 6)(x().bfloat16())
    assert y.shape == (5, 3, 6)


def test_input_device_must_match_the_parameters():
    with pytest.raises(ValueError, match=r"input must be on the module's device cpu, got meta"):
        RNN(4, 6)(torch.randn(5, 3, 4, device="meta"))


def test_to_torch_names_the_variant():
    with pytest.raises(ValueError, match=r"torch\.nn has no equivalent of peephole, layer_norm"):
        LSTM(4, 6, peephole=True, layer_norm=True).to_torch()


# ---------------------------------------------------------------------- cells
def test_cell_input_shape():
    with pytest.raises(
        ValueError, match=re.escape("input must have shape (batch, 4) or (4,), got (3, 5)")
    ):
        LSTMCell(4, 6)(torch.randn(3, 5))


def test_cell_hx_shape_and_type():
    cell = LSTMCell(4, 6)
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h, c\) for LSTMCell"):
        cell(torch.randn(3, 4), torch.zeros(3, 6))
    with pytest.raises(ValueError, match=re.escape("hx[1] (c) must have shape (3, 6), got (2, 6)")):
        cell(torch.randn(3, 4), (torch.zeros(3, 6), torch.zeros(2, 6)))
    with pytest.raises(TypeError, match=r"hx must have the input's dtype"):
        GRUCell(4, 6)(torch.randn(3, 4), torch.zeros(3, 6, dtype=torch.float64))


def test_cell_options():
    with pytest.raises(
        ValueError,
        match=r"init='identity' \(IRNN\) is for RNN and RNNCell only, got it for GRUCell",
    ):
        GRUCell(4, 6, init="identity")
    with pytest.raises(
        ValueError,
        match=r"chrono_init is the longest dependency T_max in steps and must be > 1, got 0\.5",
    ):
        LSTMCell(4, 6, chrono_init=0.5)
    with pytest.raises(ValueError, match=r"chrono_init sets gate biases and needs bias=True"):
        GRUCell(4, 6, bias=False, chrono_init=10.0)
    with pytest.raises(TypeError, match=r"forget_bias must be a float, got 'x'"):
        LSTMCell(4, 6, forget_bias="x")
    with pytest.raises(ValueError, match=r"nonlinearity must be one of 'tanh', 'relu', got 'gelu'"):
        RNNCell(4, 6, True, "gelu")
    with pytest.raises(TypeError, match=r"input must be a floating-point tensor"):
        RNNCell(4, 6)(torch.ones(2, 4, dtype=torch.int32))


# ---------------------------------------------------------------------- NaN is data, not an error
def test_nan_propagates_without_crashing():
    m = LSTM(4, 6, num_layers=2)
    inp = x()
    inp[2, 1, 0] = float("nan")
    y, (h, c) = m(inp)
    assert torch.isnan(c[:, 1]).all()
    assert torch.isnan(y[2:, 1]).all()
    assert not torch.isnan(y[:, 0]).any() and not torch.isnan(y[:2]).any()
    assert torch.isnan(h[:, 1]).all() and not torch.isnan(h[:, 0]).any()
