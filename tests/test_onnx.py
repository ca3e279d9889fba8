"""lstmkit.onnx: import checked against the official ONNX node test cases, export checked by
running the exported graphs in onnxruntime against lstmkit itself."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import helper, numpy_helper  # noqa: E402

from lstmkit import GRU, LSTM, RNN  # noqa: E402
from lstmkit.onnx import export, load, module_from_node, run_like_onnx  # noqa: E402

CLASSES = {"LSTM": LSTM, "GRU": GRU, "RNN": RNN}

# ---------------------------------------------------------------------------- official cases
# Several of these use constant weights, so they cannot tell gate orders apart; the export grid
# below (random weights, checked in onnxruntime) does.
OFFICIAL = [
    "test_gru_batchwise",
    "test_gru_bidirectional",
    "test_gru_defaults",
    "test_gru_reverse",
    "test_gru_seq_length",
    "test_gru_with_initial_bias",
    "test_lstm_batchwise",
    "test_lstm_bidirectional",
    "test_lstm_defaults",
    "test_lstm_reverse",
    "test_lstm_with_initial_bias",
    "test_lstm_with_peepholes",
    "test_rnn_seq_length",
    "test_simple_rnn_batchwise",
    "test_simple_rnn_bidirectional",
    "test_simple_rnn_defaults",
    "test_simple_rnn_reverse",
    "test_simple_rnn_with_initial_bias",
]


@pytest.fixture(scope="module")
def official_cases() -> dict[str, Any]:
    """The ONNX backend node test cases of LSTM, GRU and RNN (collecting them takes seconds)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    return {c.name: c for c in cases if any(k in c.name for k in ("lstm", "gru", "rnn"))}


def test_there_are_exactly_18_official_recurrent_cases(official_cases: dict[str, Any]) -> None:
    assert sorted(official_cases) == OFFICIAL


@pytest.mark.parametrize("name", OFFICIAL)
def test_import_reproduces_official_onnx_case(official_cases: dict[str, Any], name: str) -> None:
    case = official_cases[name]
    graph = case.model.graph
    (node,) = graph.node
    assert len(case.data_sets) >= 1
    for inputs, expected in case.data_sets:
        values = dict(zip([i.name for i in graph.input], inputs, strict=True))
        module = module_from_node(node, values)
        # Run-time inputs by position: sequence_lens, initial_h, initial_c.
        names = [*node.input, "", "", "", "", ""]
        runtime = [values[n] if n else None for n in names[4:7]]
        got = run_like_onnx(
            module,
            values[node.input[0]],
            sequence_lens=runtime[0],
            initial_h=runtime[1],
            initial_c=runtime[2] if node.op_type == "LSTM" else None,
        )
        outputs = [o.name for o in graph.output]
        assert len(outputs) == len(expected) >= 1
        for out_name, want in zip(outputs, expected, strict=True):
            have = got[list(node.output).index(out_name)]
            assert have.shape == want.shape
            # The cases store rtol=1e-3, atol=1e-7; lstmkit matches much more tightly.
            np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6, err_msg=out_name)


# ---------------------------------------------------------------------------- export grid
T, B, INPUT, HIDDEN = 6, 3, 3, 4
LENGTHS = {"full": None, "unsorted": [4, 6, 2], "zero": [5, 0, 6]}

GRID: list[tuple[str, dict[str, Any], str, bool]] = [
    ("LSTM", {}, "full", True),
    ("LSTM", {}, "full", False),
    ("LSTM", {"num_layers": 2}, "unsorted", True),
    ("LSTM", {"bidirectional": True}, "zero", True),
    ("LSTM", {"bidirectional": True, "num_layers": 2, "batch_first": True}, "unsorted", False),
    ("LSTM", {"reverse": True}, "unsorted", True),
    ("LSTM", {"reverse": True, "batch_first": True, "num_layers": 2}, "zero", True),
    ("LSTM", {"peephole": True}, "unsorted", True),
    ("LSTM", {"peephole": True, "bidirectional": True, "num_layers": 2}, "zero", True),
    ("LSTM", {"coupled_gates": True}, "full", True),
    ("LSTM", {"coupled_gates": True, "peephole": True, "reverse": True}, "zero", True),
    ("LSTM", {"coupled_gates": True, "bidirectional": True, "batch_first": True}, "full", True),
    ("LSTM", {"bias": False, "num_layers": 2, "residual": True}, "full", True),
    (
        "LSTM",
        {"bidirectional": True, "bidirectional_merge": "sum", "num_layers": 2},
        "unsorted",
        True,
    ),
    (
        "LSTM",
        {"bidirectional": True, "bidirectional_merge": "mean", "num_layers": 2, "residual": True},
        "zero",
        False,
    ),
    ("LSTM", {"learn_initial_state": True, "num_layers": 2}, "zero", False),
    ("LSTM", {"learn_initial_state": True, "bidirectional": True}, "zero", True),
    (  # evaluation-mode regularisation is the identity and exports without any node
        "LSTM",
        dict(num_layers=2, dropout=0.3, input_dropout=0.2, recurrent_dropout=0.2, weight_drop=0.4),
        "full",
        True,
    ),
    ("GRU", {}, "full", True),
    ("GRU", {}, "unsorted", False),
    ("GRU", {"reset_after": False}, "full", True),
    ("GRU", {"reset_after": False, "bidirectional": True}, "zero", True),
    ("GRU", {"reverse": True, "batch_first": True}, "unsorted", True),
    ("GRU", {"bidirectional": True, "num_layers": 2}, "full", False),
    (
        "GRU",
        {"bidirectional": True, "bidirectional_merge": "sum", "num_layers": 2, "residual": True},
        "zero",
        True,
    ),
    ("GRU", {"learn_initial_state": True, "bidirectional": True}, "zero", False),
    ("GRU", {"bias": False, "num_layers": 2}, "unsorted", True),
    ("RNN", {}, "full", True),
    ("RNN", {"nonlinearity": "relu"}, "full", False),
    ("RNN", {"nonlinearity": "relu", "bidirectional": True}, "unsorted", True),
    ("RNN", {"reverse": True}, "zero", True),
    ("RNN", {"nonlinearity": "relu", "num_layers": 2, "residual": True}, "unsorted", True),
    (
        "RNN",
        {"bidirectional": True, "bidirectional_merge": "mean", "batch_first": True},
        "zero",
        True,
    ),
    ("RNN", {"learn_initial_state": True, "num_layers": 2, "batch_first": True}, "zero", False),
    ("RNN", {"bias": False}, "unsorted", True),
]


def _grid_id(case: tuple[str, dict[str, Any], str, bool]) -> str:
    family, kwargs, lengths, initial = case
    opts = "-".join(f"{k}={v}" for k, v in kwargs.items()) or "plain"
    return f"{family}-{opts}-{lengths}-{'h0' if initial else 'noh0'}"


def _make(family: str, seed: int = 0, **kwargs: Any) -> Any:
    """A module in eval mode with every parameter (learned initial state included) drawn from
    U(-0.6, 0.6), so that no gate block or bias is zero and gate-order mistakes show."""
    torch.manual_seed(seed)
    module = CLASSES[family](INPUT, HIDDEN, **kwargs).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.6, 0.6)
    return module


def _session(model: Any) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _states(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, tuple) else [out]


@pytest.mark.parametrize("case", GRID, ids=_grid_id)
def test_export_matches_lstmkit_in_onnxruntime(
    case: tuple[str, dict[str, Any], str, bool],
) -> None:
    family, kwargs, lengths_kind, initial_state = case
    module = _make(family, **kwargs)
    lengths = LENGTHS[lengths_kind]
    x = torch.randn(B, T, INPUT) if module.batch_first else torch.randn(T, B, INPUT)
    feeds = {"input": x.numpy()}
    hx = None
    if initial_state:
        lead = module.num_layers * module.num_directions
        comps = [torch.randn(lead, B, HIDDEN) for _ in module.cell_math[0].state_names]
        feeds.update({f"{n}0": c.numpy() for n, c in zip("hc", comps, strict=False)})
        hx = tuple(comps) if len(comps) == 2 else comps[0]
    if lengths is not None:
        feeds["sequence_lens"] = np.asarray(lengths, dtype=np.int32)

    model = export(module, lengths=lengths is not None, initial_state=initial_state)
    got = _session(model).run(None, feeds)
    with torch.no_grad():
        y, state = module(x, hx, lengths=None if lengths is None else torch.tensor(lengths))
    want = [y, *_states(state)]
    assert [o.name for o in model.graph.output] == ["output", "h_n", "c_n"][: len(want)]
    for have, ref in zip(got, want, strict=True):
        assert have.shape == tuple(ref.shape)
        np.testing.assert_allclose(have, ref.numpy(), rtol=1e-5, atol=1e-5)


def test_export_writes_one_standard_node_per_layer() -> None:
    cases = [
        (_make("LSTM", num_layers=2, bidirectional=True, coupled_gates=True), "LSTM"),
        (_make("GRU", num_layers=3, reverse=True, reset_after=False), "GRU"),
        (_make("RNN", nonlinearity="relu", bidirectional=True), "RNN"),
    ]
    for module, op in cases:
        nodes = [n for n in export(module).graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
        assert [n.op_type for n in nodes] == [op] * module.num_layers
        for n in nodes:
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            assert attrs["hidden_size"] == HIDDEN
            assert attrs.get("layout", 0) == 0
            if op == "LSTM":
                assert attrs["direction"] == b"bidirectional"
                assert attrs["input_forget"] == 1
            if op == "GRU":
                assert attrs["direction"] == b"reverse"
                assert attrs["linear_before_reset"] == 0
            if op == "RNN":
                assert attrs["activations"] == [b"Relu", b"Relu"]


def test_onnxruntime_input_forget_ignores_the_forget_block() -> None:
    """onnxruntime implements input_forget=1 as f = 1 - i: the forget rows of W, R, B and the
    forget peephole (zeros in the export) do not matter, so CIFG exports as one LSTM node."""
    module = _make("LSTM", coupled_gates=True, peephole=True)
    model = export(module)
    x = np.random.default_rng(0).standard_normal((T, B, INPUT)).astype(np.float32)
    h0 = np.full((1, B, HIDDEN), 0.3, dtype=np.float32)
    feeds = {"input": x, "h0": h0, "c0": -h0}
    before = _session(model).run(None, feeds)
    rng = np.random.default_rng(1)
    forget_blocks = {"W_l0": [2], "R_l0": [2], "B_l0": [2, 6], "P_l0": [2]}  # i o f c (x2 for B)
    changed = 0
    for init in model.graph.initializer:
        if init.name in forget_blocks:
            array = numpy_helper.to_array(init).copy()
            for k in forget_blocks[init.name]:
                rows = slice(k * HIDDEN, (k + 1) * HIDDEN)
                assert not array[0, rows].any()  # exported as zeros
                array[0, rows] = rng.standard_normal(array[0, rows].shape)
            init.CopyFrom(numpy_helper.from_array(array, init.name))
            changed += 1
    assert changed == 4
    after = _session(model).run(None, feeds)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_export_warns_in_training_mode_and_saves_to_path(tmp_path: Any) -> None:
    module = _make("GRU", num_layers=2, dropout=0.5).train()
    path = tmp_path / "gru.onnx"
    with pytest.warns(UserWarning, match="training mode"):
        model = export(module, path)
    assert module.training
    assert onnx.load(str(path)) == model
    onnx.checker.check_model(model, full_check=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oldest = export(module.eval(), opset=13)
    assert oldest.opset_import[0].version == 13
    feeds = {"input": np.ones((T, B, INPUT), np.float32), "h0": np.ones((2, B, HIDDEN), np.float32)}
    for a, b in zip(
        _session(oldest).run(None, feeds), _session(model).run(None, feeds), strict=True
    ):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("family", "kwargs", "option"),
    [
        ("LSTM", {"layer_norm": True}, "layer_norm"),
        ("GRU", {"layer_norm": True}, "layer_norm"),
        ("RNN", {"layer_norm": True}, "layer_norm"),
        ("LSTM", {"cell_clip": 3.0}, "cell_clip"),
        ("LSTM", {"proj_size": 2}, "proj_size"),
        ("LSTM", {"zoneout": 0.1}, "zoneout"),
        ("LSTM", {"zoneout": (0.0, 0.2)}, "zoneout"),
        ("GRU", {"zoneout": 0.1}, "zoneout"),
        ("RNN", {"zoneout": 0.1, "num_layers": 2}, "zoneout"),
    ],
)
def test_unexportable_option_raises_naming_it(
    family: str, kwargs: dict[str, Any], option: str
) -> None:
    module = CLASSES[family](INPUT, HIDDEN, **kwargs).eval()
    with pytest.raises(ValueError, match=f"cannot export {family} with {option}=") as err:
        export(module)
    assert "ONNX" in str(err.value)


def test_export_validates_its_arguments() -> None:
    with pytest.raises(TypeError, match=r"torch\.nn\.modules\.rnn\.LSTM.*from_torch"):
        export(torch.nn.LSTM(INPUT, HIDDEN))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"builtins\.str"):
        export("lstm")  # type: ignore[arg-type]
    module = _make("LSTM")
    with pytest.raises(TypeError, match="lengths"):
        export(module, lengths=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="initial_state"):
        export(module, initial_state=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="opset"):
        export(module, opset=12)
    with pytest.raises(TypeError, match="path"):
        export(module, 3)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- import
@pytest.mark.parametrize(
    ("family", "kwargs"),
    [
        ("LSTM", {"peephole": True, "bidirectional": True}),
        ("LSTM", {"coupled_gates": True, "peephole": True, "reverse": True}),
        ("GRU", {"reset_after": False, "batch_first": True}),
        ("GRU", {"bias": False, "bidirectional": True}),
        ("RNN", {"nonlinearity": "relu", "bidirectional": True}),
    ],
)
def test_load_of_export_reproduces_a_layer(family: str, kwargs: dict[str, Any]) -> None:
    module = _make(family, **kwargs)
    (loaded,) = load(export(module).SerializeToString(), batch_first=module.batch_first)
    assert type(loaded) is type(module)
    assert not loaded.training
    for key in ("batch_first", "bidirectional", "reverse"):
        assert getattr(loaded, key) == getattr(module, key)
    for key, value in module.cell_math[0].options().items():
        assert loaded.cell_math[0].options()[key] == value
    x = torch.randn(B, T, INPUT) if module.batch_first else torch.randn(T, B, INPUT)
    lengths = torch.tensor([5, 1, 6])
    with torch.no_grad():
        want = module(x, lengths=lengths)
        got = loaded(x, lengths=lengths)
    for a, b in zip([want[0], *_states(want[1])], [got[0], *_states(got[1])], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_load_of_stacked_export_chains_to_the_original(tmp_path: Any) -> None:
    module = _make("LSTM", num_layers=2, bidirectional=True, peephole=True)
    path = tmp_path / "lstm.onnx"
    export(module, path)
    layers = load(path)
    assert [type(m) for m in layers] == [LSTM, LSTM]
    assert [m.input_size for m in layers] == [INPUT, 2 * HIDDEN]
    x = torch.randn(T, B, INPUT)
    h0, c0 = torch.randn(4, B, HIDDEN), torch.randn(4, B, HIDDEN)
    with torch.no_grad():
        y, (h, c) = module(x, (h0, c0))
        y0, (h_a, c_a) = layers[0](x, (h0[:2], c0[:2]))
        y1, (h_b, c_b) = layers[1](y0, (h0[2:], c0[2:]))
    torch.testing.assert_close(y1, y, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat([h_a, h_b]), h, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat([c_a, c_b]), c, rtol=0, atol=1e-6)


def _lstm_node(**attrs: Any) -> tuple[Any, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    tensors = {
        "W": rng.standard_normal((1, 4 * HIDDEN, INPUT)).astype(np.float32),
        "R": rng.standard_normal((1, 4 * HIDDEN, HIDDEN)).astype(np.float32),
    }
    node = helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=HIDDEN, **attrs)
    return node, tensors


def test_module_from_node_rejects_what_lstmkit_cannot_reproduce() -> None:
    node, tensors = _lstm_node(clip=2.0)
    with pytest.raises(ValueError, match="clip"):
        module_from_node(node, tensors)
    node, tensors = _lstm_node(activations=["Sigmoid", "Relu", "Tanh"])
    with pytest.raises(ValueError, match="activations"):
        module_from_node(node, tensors)
    node, tensors = _lstm_node(activations=["Sigmoid", "Tanh", "Tanh"])
    assert isinstance(module_from_node(node, tensors), LSTM)
    rnn = helper.make_node("RNN", ["X", "W", "R"], ["Y"], hidden_size=HIDDEN, activations=["Relu"])
    rnn_tensors = {"W": tensors["W"][:, :HIDDEN], "R": tensors["R"][:, :HIDDEN]}
    assert module_from_node(rnn, rnn_tensors).nonlinearity == "relu"
    rnn.attribute[-1].CopyFrom(helper.make_attribute("activations", ["Sigmoid"]))
    with pytest.raises(ValueError, match="activations"):
        module_from_node(rnn, rnn_tensors)
    node, tensors = _lstm_node()
    with pytest.raises(ValueError, match=r"'R'.*no value"):
        module_from_node(node, {"W": tensors["W"]})
    node, tensors = _lstm_node()
    with pytest.raises(ValueError, match="shape"):
        module_from_node(node, {"W": tensors["W"], "R": tensors["W"]})
    with pytest.raises(ValueError, match="op_type 'Gemm'"):
        module_from_node(helper.make_node("Gemm", ["a", "b"], ["c"]), {})
    with pytest.raises(TypeError, match="NodeProto"):
        module_from_node("LSTM", tensors)  # type: ignore[arg-type]


def test_module_from_node_batch_first_overrides_layout() -> None:
    node, tensors = _lstm_node(layout=1)
    assert module_from_node(node, tensors).batch_first
    assert not module_from_node(node, tensors, batch_first=False).batch_first


def test_run_like_onnx_needs_one_layer_with_both_directions() -> None:
    x = np.zeros((T, B, INPUT), dtype=np.float32)
    with pytest.raises(ValueError, match="one-layer"):
        run_like_onnx(_make("GRU", num_layers=2), x)
    module = _make("GRU", bidirectional=True, bidirectional_merge="sum")
    with pytest.raises(ValueError, match="concat"):
        run_like_onnx(module, x)
    with pytest.raises(ValueError, match="initial_c"):
        run_like_onnx(_make("RNN"), x, initial_c=x)


def test_load_rejects_a_graph_without_recurrent_nodes() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    with pytest.raises(ValueError, match="no LSTM, GRU or RNN"):
        load(helper.make_model(graph))
    with pytest.raises(TypeError, match="model"):
        load(3)  # type: ignore[arg-type]
