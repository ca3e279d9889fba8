"""ONNX export and import for lstmkit's :class:`~lstmkit.LSTM`, :class:`~lstmkit.GRU` and
:class:`~lstmkit.RNN`.

:func:`export` writes one standard ONNX ``LSTM`` / ``GRU`` / ``RNN`` operator per layer (both
directions of a bidirectional layer in one node) and expresses everything around the recurrence
(direction merges, residual connections, the learned initial state, zero-length sequences) with
ordinary ONNX operators. :func:`module_from_node` and :func:`load` go the other way: they build
one-layer lstmkit modules from ONNX recurrent nodes. :func:`run_like_onnx` runs a one-layer
module with the inputs and outputs of an ONNX recurrent node.

``onnx`` is an optional dependency (``pip install lstmkit[onnx]``); this module is not imported by
``import lstmkit``. See ``docs/onnx.md`` for the mapping between lstmkit options and ONNX
attributes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any, TypeAlias

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from . import __version__, _checks
from .nn import GRU, LSTM, RNN

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "export",
    "load",
    "module_from_node",
    "run_like_onnx",
]

Module: TypeAlias = LSTM | GRU | RNN

#: Opset written when ``export(..., opset=None)``.
DEFAULT_OPSET = 17
#: Oldest opset accepted: Squeeze, Unsqueeze and ReduceSum take their axes as inputs from 13.
MIN_OPSET = 13

_OP_TYPES = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
_FAMILIES = {op: family for family, op in _OP_TYPES.items()}
_CLASSES: dict[str, type[LSTM] | type[GRU] | type[RNN]] = {"lstm": LSTM, "gru": GRU, "rnn": RNN}

# Gate blocks of the stacked weight matrices, one letter per block, in lstmkit's names: the
# candidate is "g" for the LSTM (ONNX calls it "c") and "n" for the GRU (ONNX calls it "h").
_TORCH_GATES = {"lstm": "ifgo", "gru": "rzn", "rnn": "g"}
_CIFG_GATES = "igo"  # coupled_gates=True: no forget block
_ONNX_GATES = {"lstm": "iofg", "gru": "zrn", "rnn": "g"}
_TORCH_PEEPHOLES = "ifo"
_CIFG_PEEPHOLES = "io"
_ONNX_PEEPHOLES = "iof"

# The activations lstmkit implements, per family, for one direction (lower case).
_DEFAULT_ACTIVATIONS = {"lstm": ("sigmoid", "tanh", "tanh"), "gru": ("sigmoid", "tanh")}
_RNN_ACTIVATIONS = {"tanh": "Tanh", "relu": "Relu"}

_COMMON_ATTRIBUTES = frozenset(
    {
        "activation_alpha",
        "activation_beta",
        "activations",
        "clip",
        "direction",
        "hidden_size",
        "layout",
    }
)
_FAMILY_ATTRIBUTES = {
    "lstm": frozenset({"input_forget"}),
    "gru": frozenset({"linear_before_reset"}),
    "rnn": frozenset(),
}


# ---------------------------------------------------------------------------- weights
def _regroup(array: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Re-stack the equal gate blocks of ``array`` (along axis 0) from order ``src`` to order
    ``dst``; a gate of ``dst`` missing from ``src`` becomes a zero block, a gate of ``src``
    missing from ``dst`` is dropped."""
    if array.shape[0] % len(src):
        raise ValueError(
            f"expected {len(src)} equal gate blocks along the first axis, got shape {array.shape}"
        )
    blocks = dict(zip(src, np.split(array, len(src)), strict=True))
    zero = np.zeros_like(blocks[src[0]])
    return np.concatenate([blocks.get(gate, zero) for gate in dst])


def _numpy(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to(device="cpu", dtype=torch.float32).numpy())


def _onnx_weights(module: Module, layer: int) -> dict[str, np.ndarray]:
    """W, R, B (and P) of one layer in ONNX gate order, directions stacked on axis 0."""
    cell = module.cell_math[layer]
    family = cell.family
    coupled = bool(getattr(cell, "coupled_gates", False))
    src = _CIFG_GATES if coupled else _TORCH_GATES[family]
    dst = _ONNX_GATES[family]
    gate_rows = len(dst) * cell.hidden_size
    out: dict[str, list[np.ndarray]] = {"W": [], "R": [], "B": []}
    peephole = bool(getattr(cell, "peephole", False))
    if peephole:
        out["P"] = []
    for direction in range(module.num_directions):
        p = module._params(layer, direction)
        out["W"].append(_regroup(_numpy(p["weight_ih"]), src, dst))
        out["R"].append(_regroup(_numpy(p["weight_hh"]), src, dst))
        if "bias_ih" in p:
            b_ih = _regroup(_numpy(p["bias_ih"]), src, dst)
            b_hh = _regroup(_numpy(p["bias_hh"]), src, dst)
            out["B"].append(np.concatenate([b_ih, b_hh]))
        else:
            out["B"].append(np.zeros(2 * gate_rows, dtype=np.float32))
        if peephole:
            p_src = _CIFG_PEEPHOLES if coupled else _TORCH_PEEPHOLES
            out["P"].append(_regroup(_numpy(p["weight_peephole"]), p_src, _ONNX_PEEPHOLES))
    return {name: np.stack(arrays) for name, arrays in out.items()}


# ---------------------------------------------------------------------------- export
class _GraphBuilder:
    """Collects nodes and initializers and hands out unique intermediate names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._used: set[str] = set()

    def name(self, hint: str) -> str:
        name, k = hint, 1
        while name in self._used:
            k += 1
            name = f"{hint}_{k}"
        self._used.add(name)
        return name

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def ints(self, hint: str, values: list[int]) -> str:
        return self.const(hint, np.asarray(values, dtype=np.int64))

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        (out,) = self.multi(op_type, inputs, [hint], **attrs)
        return out

    def multi(self, op_type: str, inputs: list[str], hints: list[str], **attrs: Any) -> list[str]:
        outputs = [self.name(h) for h in hints]
        while inputs and inputs[-1] == "":
            inputs = inputs[:-1]
        self.nodes.append(
            helper.make_node(op_type, inputs, outputs, name=self.name(f"{op_type}_node"), **attrs)
        )
        return outputs


def _check_module(module: Any, arg: str = "module") -> Module:
    if not isinstance(module, (LSTM, GRU, RNN)):
        hint = ""
        if isinstance(module, torch.nn.RNNBase):
            hint = f" (convert it first with lstmkit.{type(module).__name__}.from_torch)"
        raise TypeError(
            f"{arg} must be an lstmkit LSTM, GRU or RNN, got "
            f"{type(module).__module__}.{type(module).__name__}{hint}"
        )
    return module


def _check_exportable(module: Module) -> None:
    """Raise ``ValueError`` naming the first option that no ONNX operator can express."""
    name = type(module).__name__
    op = _OP_TYPES[module.cell_math[0].family]
    for cell in module.cell_math:
        options = cell.options()
        if options.get("layer_norm"):
            raise ValueError(
                f"cannot export {name} with layer_norm=True to ONNX: the ONNX {op} operator has "
                "no layer normalisation"
            )
        if options.get("proj_size"):
            raise ValueError(
                f"cannot export {name} with proj_size={options['proj_size']} to ONNX: the ONNX "
                "LSTM operator has no output projection (weight_hr)"
            )
        if options.get("cell_clip") is not None:
            raise ValueError(
                f"cannot export {name} with cell_clip={options['cell_clip']} to ONNX: the ONNX "
                "LSTM 'clip' attribute clips the gate pre-activations, not the cell state c_t, "
                "so the math would differ"
            )
        nonlinearity = options.get("nonlinearity")
        if nonlinearity is not None and nonlinearity not in _RNN_ACTIVATIONS:
            raise ValueError(
                f"cannot export {name} with nonlinearity={nonlinearity!r} to ONNX: only "
                f"{', '.join(map(repr, _RNN_ACTIVATIONS))} are supported"
            )
    if any(module.zoneout):
        raise ValueError(
            f"cannot export {name} with zoneout={module.zoneout} to ONNX: at evaluation zoneout "
            "blends the previous state into every step (rate * old + (1 - rate) * new), which "
            f"changes the recurrence and cannot be expressed by the ONNX {op} operator"
        )


def _check_opset(opset: Any) -> int:
    if opset is None:
        return DEFAULT_OPSET
    newest = onnx.defs.onnx_opset_version()
    value = _checks.positive_int("opset", opset)
    if not MIN_OPSET <= value <= newest:
        raise ValueError(
            f"opset must be between {MIN_OPSET} (Squeeze, Unsqueeze and ReduceSum take their axes "
            f"as an input from opset 13) and {newest} (the newest this onnx knows), got {value}"
        )
    return value


def _initial_state(g: _GraphBuilder, module: Module, initial_state: bool) -> list[str] | None:
    """Names of the initial state components in torch layout ``(L*D, batch, size)``: the graph
    inputs ``h0``/``c0``, the learned state broadcast to the batch, or ``None`` for zeros (the
    ONNX default)."""
    cell = module.cell_math[0]
    if initial_state:
        return [f"{name}0" for name in cell.state_names]
    if not module.learn_initial_state:
        return None
    # The learned state (L*D, 1, size) broadcast to (L*D, batch, size).
    batch_axis = 0 if module.batch_first else 1
    shape = g.op("Shape", ["input"], "input_shape")
    batch = g.op("Gather", [shape, g.ints("batch_axis", [batch_axis])], "batch_size")
    one = g.ints("one", [1])
    expand_to = g.op("Concat", [one, batch, one], "state_shape", axis=0)
    names = []
    for state_name in cell.state_names:
        rows = [
            _numpy(getattr(module, module._full_name(f"{state_name}0", layer, direction)))
            for layer in range(module.num_layers)
            for direction in range(module.num_directions)
        ]
        learned = g.const(f"learned_{state_name}0", np.stack(rows)[:, None, :])
        names.append(g.op("Expand", [learned, expand_to], f"{state_name}0_expanded"))
    return names


def _recurrent_node(
    g: _GraphBuilder,
    module: Module,
    layer: int,
    x: str,
    state0: list[str] | None,
    lengths: bool,
) -> tuple[str, list[str]]:
    """Add the ONNX LSTM/GRU/RNN node of one layer (time-major); return ``Y`` ``(T, D, B, H)``
    and the final state components ``(D, B, H)``."""
    cell = module.cell_math[layer]
    family = cell.family
    D = module.num_directions
    weights = {k: g.const(f"{k}_l{layer}", v) for k, v in _onnx_weights(module, layer).items()}
    layer_state = ["", ""]
    for k, full in enumerate(state0 or []):
        if module.num_layers == 1:
            layer_state[k] = full
        else:
            bounds = [g.ints("start", [layer * D]), g.ints("end", [(layer + 1) * D])]
            layer_state[k] = g.op(
                "Slice", [full, *bounds, g.ints("axes", [0])], f"{cell.state_names[k]}0_l{layer}"
            )
    if module.bidirectional:
        direction = "bidirectional"
    else:
        direction = "reverse" if module.reverse else "forward"
    attrs: dict[str, Any] = {"hidden_size": cell.hidden_size, "direction": direction}
    if family == "lstm" and getattr(cell, "coupled_gates", False):
        attrs["input_forget"] = 1
    if family == "gru":
        attrs["linear_before_reset"] = int(bool(getattr(cell, "reset_after", True)))
    nonlinearity = getattr(cell, "nonlinearity", "tanh")
    if family == "rnn" and nonlinearity != "tanh":
        attrs["activations"] = [_RNN_ACTIVATIONS[nonlinearity]] * D
    # Inputs by position: X, W, R, B, sequence_lens, initial_h, (initial_c, P for the LSTM).
    inputs = [x, weights["W"], weights["R"], weights["B"], "sequence_lens" if lengths else ""]
    inputs.append(layer_state[0])
    if family == "lstm":
        inputs += [layer_state[1], weights.get("P", "")]
    y, *finals = g.multi(
        _OP_TYPES[family],
        inputs,
        [f"Y_l{layer}", *(f"Y_{name}_l{layer}" for name in cell.state_names)],
        **attrs,
    )
    return y, finals


def _merge_directions(g: _GraphBuilder, module: Module, y: str, layer: int) -> str:
    """``Y`` ``(T, D, B, H)`` of one layer as the layer's output ``(T, B, features)``."""
    name = f"out_l{layer}"
    if module.num_directions == 1:
        return g.op("Squeeze", [y, g.ints("axes", [1])], name)
    if module.bidirectional_merge == "concat":
        y = g.op("Transpose", [y], f"Y_l{layer}_tbdh", perm=[0, 2, 1, 3])
        return g.op("Reshape", [y, g.ints("shape", [0, 0, -1])], name)
    total = g.op("ReduceSum", [y, g.ints("axes", [1])], name, keepdims=0)
    if module.bidirectional_merge == "sum":
        return total
    half = g.const("half", np.asarray(0.5, dtype=np.float32))
    return g.op("Mul", [total, half], f"{name}_mean")


def _final_state(
    g: _GraphBuilder,
    module: Module,
    finals: list[list[str]],
    state0: list[str] | None,
    lengths: bool,
) -> list[str]:
    """Stack the per-layer final states to ``(L*D, batch, size)``. Where a sequence has length
    zero, lstmkit returns the initial state and onnxruntime zeros: restore the initial state."""
    empty = None
    if lengths and state0 is not None:
        zero = g.const("zero", np.asarray(0, dtype=np.int32))
        empty = g.op("Equal", ["sequence_lens", zero], "empty")
        empty = g.op("Unsqueeze", [empty, g.ints("axes", [0, 2])], "empty_1b1")
    names = []
    for k, parts in enumerate(finals):
        state_name = module.cell_math[0].state_names[k]
        full = parts[0] if len(parts) == 1 else g.op("Concat", parts, f"{state_name}_n_", axis=0)
        if empty is not None and state0 is not None:
            full = g.op("Where", [empty, state0[k], full], f"{state_name}_n_kept")
        names.append(full)
    return names


def export(
    module: Module,
    path: str | os.PathLike[str] | None = None,
    *,
    lengths: bool = False,
    initial_state: bool = True,
    opset: int | None = None,
) -> onnx.ModelProto:
    """Export an lstmkit ``LSTM``, ``GRU`` or ``RNN`` (in its evaluation-mode behaviour) to ONNX.

    Graph inputs: ``input`` (``(sequence, batch, input_size)``, or ``(batch, sequence,
    input_size)`` with ``batch_first``, float32, both leading dims dynamic); ``sequence_lens``
    (int32 ``(batch,)``) when ``lengths=True``; ``h0`` (and ``c0`` for the LSTM) shaped like
    torch's ``hx``, ``(num_layers * num_directions, batch, hidden_size)``, when
    ``initial_state=True``. Without them the state starts at zero, or at the learned initial state
    with ``learn_initial_state=True``. Graph outputs: ``output``, ``h_n`` (and ``c_n``), as the
    module returns them; outputs past a sequence's length are zero and a zero length returns the
    initial state, as in lstmkit.

    Each layer is one ONNX ``LSTM``/``GRU``/``RNN`` node (``direction`` forward, reverse or
    bidirectional); direction merges, residual connections, the learned initial state and
    ``batch_first`` are ordinary ONNX operators. Weights are written as float32 initializers.
    Saves the model to ``path`` when given and returns it.

    Raises ``TypeError`` for anything but an lstmkit ``LSTM``/``GRU``/``RNN`` and ``ValueError``
    naming the option for ``layer_norm``, ``cell_clip``, ``proj_size`` and ``zoneout``, which the
    ONNX operators cannot express. Warns when the module is in training mode: the graph is always
    the evaluation-mode network (dropout of every kind is the identity there).
    """
    module = _check_module(module)
    lengths = _checks.boolean("lengths", lengths)
    initial_state = _checks.boolean("initial_state", initial_state)
    opset = _check_opset(opset)
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str, a path or None, got {_checks.describe(path)}")
    _check_exportable(module)
    if module.training:
        warnings.warn(
            f"exporting {type(module).__name__} in training mode: the ONNX graph is the "
            "evaluation-mode network (dropout, input_dropout, recurrent_dropout and weight_drop "
            "are the identity); call module.eval() first to silence this warning",
            stacklevel=2,
        )

    g = _GraphBuilder()
    for reserved in ("input", "sequence_lens", "h0", "c0", "output", "h_n", "c_n"):
        g.name(reserved)
    cell = module.cell_math[0]
    lead = module.num_layers * module.num_directions
    seq_dims: list[str | int] = (
        ["batch", "sequence"] if module.batch_first else ["sequence", "batch"]
    )
    inputs = [
        helper.make_tensor_value_info("input", TensorProto.FLOAT, [*seq_dims, module.input_size])
    ]
    if lengths:
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["batch"]))
    if initial_state:
        inputs += [
            helper.make_tensor_value_info(f"{name}0", TensorProto.FLOAT, [lead, "batch", size])
            for name, size in zip(cell.state_names, cell.state_sizes, strict=True)
        ]
    state0 = _initial_state(g, module, initial_state)

    # onnxruntime rejects layout=1 ("Batchwise recurrent operations (layout == 1) are not
    # supported"), so the nodes run time-major and batch_first is a Transpose at each end.
    x = "input"
    if module.batch_first:
        x = g.op("Transpose", [x], "input_time_major", perm=[1, 0, 2])
    finals: list[list[str]] = [[] for _ in cell.state_names]
    for layer in range(module.num_layers):
        y, layer_finals = _recurrent_node(g, module, layer, x, state0, lengths)
        for k, final in enumerate(layer_finals):
            finals[k].append(final)
        out = _merge_directions(g, module, y, layer)
        if module.residual and layer > 0:
            out = g.op("Add", [out, x], f"out_l{layer}_residual")
        x = out
    if module.batch_first:
        x = g.op("Transpose", [x], "output_batch_first", perm=[1, 0, 2])
    states = _final_state(g, module, finals, state0, lengths)

    g.nodes.append(helper.make_node("Identity", [x], ["output"], name="output"))
    outputs = [
        helper.make_tensor_value_info("output", TensorProto.FLOAT, [*seq_dims, module.output_size])
    ]
    for state, name, size in zip(states, cell.state_names, cell.state_sizes, strict=True):
        g.nodes.append(helper.make_node("Identity", [state], [f"{name}_n"], name=f"{name}_n"))
        outputs.append(
            helper.make_tensor_value_info(f"{name}_n", TensorProto.FLOAT, [lead, "batch", size])
        )

    graph = helper.make_graph(
        g.nodes,
        f"lstmkit_{type(module).__name__}",
        inputs,
        outputs,
        g.initializers,
        doc_string=repr(module),
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="lstmkit",
        producer_version=__version__,
        ir_version=helper.find_min_ir_version_for(opsets),
    )
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, os.fspath(path))
    return model


# ---------------------------------------------------------------------------- import
def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    attrs = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list):
            value = [v.decode() if isinstance(v, bytes) else v for v in value]
        attrs[attr.name] = value
    return attrs


def _input_tensor(
    node: onnx.NodeProto, tensors: Mapping[str, np.ndarray], index: int, role: str
) -> np.ndarray | None:
    names = list(node.input)
    name = names[index] if index < len(names) else ""
    if name == "":
        return None
    if name not in tensors:
        raise ValueError(
            f"the {role} input {name!r} of {node.op_type} node {node.name!r} has no value in "
            "tensors (weights must be constants: initializers or Constant nodes)"
        )
    return np.asarray(tensors[name])


def module_from_node(
    node: onnx.NodeProto,
    tensors: Mapping[str, np.ndarray],
    *,
    batch_first: bool | None = None,
) -> Module:
    """Build a one-layer lstmkit ``LSTM``/``GRU``/``RNN`` equivalent to an ONNX recurrent node.

    ``tensors`` maps input names to arrays and must hold the node's ``W`` and ``R`` (and ``B``,
    ``P`` where the node has them); ``sequence_lens``, ``initial_h`` and ``initial_c`` are
    run-time data and are not read. ``batch_first`` defaults to the node's ``layout``. The module
    is returned in eval mode, with float64 parameters if ``W`` is float64 and float32 otherwise.

    Raises ``ValueError`` naming the attribute for what lstmkit cannot reproduce: ``clip`` (it
    bounds gate pre-activations; lstmkit's ``cell_clip`` bounds the cell state) and
    ``activations`` other than the defaults (or ``Relu`` for ``RNN``).
    """
    if not isinstance(node, onnx.NodeProto):
        raise TypeError(f"node must be an onnx.NodeProto, got {_checks.describe(node)}")
    if not isinstance(tensors, Mapping):
        raise TypeError(
            f"tensors must be a mapping of name to array, got {_checks.describe(tensors)}"
        )
    if batch_first is not None:
        _checks.boolean("batch_first", batch_first)
    op = node.op_type
    if node.domain not in ("", "ai.onnx") or op not in _FAMILIES:
        raise ValueError(f"node must be an ONNX LSTM, GRU or RNN node, got op_type {op!r}")
    family = _FAMILIES[op]
    attrs = _attributes(node)
    unknown = set(attrs) - _COMMON_ATTRIBUTES - _FAMILY_ATTRIBUTES[family]
    if unknown:
        raise ValueError(f"unknown attribute(s) {', '.join(sorted(unknown))} on {op} node")
    if "clip" in attrs:
        raise ValueError(
            f"cannot import {op} with clip={attrs['clip']}: ONNX 'clip' clips the gate "
            "pre-activations, which lstmkit does not do (its cell_clip clips the cell state c_t)"
        )
    direction = attrs.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ValueError(
            f"direction must be 'forward', 'reverse' or 'bidirectional', got {direction!r}"
        )
    D = 2 if direction == "bidirectional" else 1
    layout = attrs.get("layout", 0)
    if layout not in (0, 1):
        raise ValueError(f"layout must be 0 or 1, got {layout!r}")

    W = _input_tensor(node, tensors, 1, "W")
    R = _input_tensor(node, tensors, 2, "R")
    if W is None or R is None:
        raise ValueError(f"{op} node {node.name!r} must have its W and R inputs")
    B = _input_tensor(node, tensors, 3, "B")
    P = _input_tensor(node, tensors, 7, "P") if family == "lstm" else None

    onnx_gates = _ONNX_GATES[family]
    G = len(onnx_gates)
    hidden = int(attrs["hidden_size"]) if "hidden_size" in attrs else int(R.shape[-1])
    if W.ndim != 3 or W.shape[:2] != (D, G * hidden):
        raise ValueError(
            f"W of {op} node {node.name!r} must have shape ({D}, {G * hidden}, input_size), "
            f"got {W.shape}"
        )
    input_size = W.shape[2]
    expected = {"R": (R, (D, G * hidden, hidden)), "B": (B, (D, 2 * G * hidden))}
    if P is not None:
        expected["P"] = (P, (D, 3 * hidden))
    for role, (array, shape) in expected.items():
        if array is not None and array.shape != shape:
            raise ValueError(
                f"{role} of {op} node {node.name!r} must have shape {shape}, got {array.shape}"
            )

    options: dict[str, Any] = {}
    activations = [a.lower() for a in attrs.get("activations", [])]
    if family == "rnn":
        chosen = set(activations) or {"tanh"}
        if len(activations) not in (0, D) or len(chosen) != 1 or not chosen <= {"tanh", "relu"}:
            raise ValueError(
                f"cannot import RNN with activations={attrs['activations']}: lstmkit supports "
                "Tanh or Relu, the same for both directions"
            )
        options["nonlinearity"] = chosen.pop()
    elif activations and activations != list(_DEFAULT_ACTIVATIONS[family]) * D:
        default = [a.capitalize() for a in _DEFAULT_ACTIVATIONS[family]] * D
        raise ValueError(
            f"cannot import {op} with activations={attrs['activations']}: lstmkit supports only "
            f"the defaults {default}"
        )
    torch_gates = _TORCH_GATES[family]
    peephole_order = _TORCH_PEEPHOLES
    if family == "lstm":
        coupled = bool(attrs.get("input_forget", 0))
        options.update(peephole=P is not None, coupled_gates=coupled)
        if coupled:
            torch_gates, peephole_order = _CIFG_GATES, _CIFG_PEEPHOLES
    if family == "gru":
        options["reset_after"] = bool(attrs.get("linear_before_reset", 0))

    dtype = torch.float64 if W.dtype == np.float64 else torch.float32
    module = _CLASSES[family](
        input_size,
        hidden,
        bias=B is not None,
        batch_first=bool(layout) if batch_first is None else batch_first,
        bidirectional=D == 2,
        reverse=direction == "reverse",
        init="torch",
        dtype=dtype,
        **options,
    )
    gate_rows = G * hidden
    with torch.no_grad():
        for d in range(D):
            values = {
                "weight_ih": _regroup(W[d], onnx_gates, torch_gates),
                "weight_hh": _regroup(R[d], onnx_gates, torch_gates),
            }
            if B is not None:
                values["bias_ih"] = _regroup(B[d, :gate_rows], onnx_gates, torch_gates)
                values["bias_hh"] = _regroup(B[d, gate_rows:], onnx_gates, torch_gates)
            if P is not None:
                values["weight_peephole"] = _regroup(P[d], _ONNX_PEEPHOLES, peephole_order)
            params = module._params(0, d)
            for name, value in values.items():
                params[name].copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return module.eval()


def load(
    model: str | os.PathLike[str] | bytes | onnx.ModelProto, *, batch_first: bool | None = None
) -> list[Module]:
    """The lstmkit modules equivalent to the ``LSTM``/``GRU``/``RNN`` nodes of an ONNX model, one
    one-layer module per node in graph order (see :func:`module_from_node`).

    ``batch_first`` defaults to each node's ``layout``. :func:`export` always writes time-major
    nodes (``layout=0``, with Transposes around them for ``batch_first`` modules), so pass
    ``batch_first=True`` to get batch-first modules back from such a graph.

    ``model`` is a path, serialized bytes or an ``onnx.ModelProto``. The nodes' weights must be
    initializers or ``Constant`` outputs; only the main graph is searched (not subgraphs of
    ``If``/``Loop``/``Scan``). The operators between the nodes (merges, residuals) are not
    imported: chain the modules yourself.
    """
    if isinstance(model, onnx.ModelProto):
        proto = model
    elif isinstance(model, (str, os.PathLike)):
        proto = onnx.load(os.fspath(model))
    elif isinstance(model, bytes):
        proto = onnx.load_from_string(model)
    else:
        raise TypeError(
            f"model must be a path, bytes or an onnx.ModelProto, got {_checks.describe(model)}"
        )
    graph = proto.graph
    tensors: dict[str, np.ndarray] = {
        init.name: numpy_helper.to_array(init) for init in graph.initializer
    }
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value":
                    tensors[node.output[0]] = numpy_helper.to_array(attr.t)
    nodes = [n for n in graph.node if n.op_type in _FAMILIES and n.domain in ("", "ai.onnx")]
    if not nodes:
        raise ValueError("the ONNX graph has no LSTM, GRU or RNN node")
    return [module_from_node(n, tensors, batch_first=batch_first) for n in nodes]


# ---------------------------------------------------------------------------- run
def _tensor(value: Any, dtype: torch.dtype, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(dtype)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value)).to(dtype)
    raise TypeError(f"{name} must be a numpy array or a tensor, got {_checks.describe(value)}")


def run_like_onnx(
    module: Module,
    X: Any,
    sequence_lens: Any = None,
    initial_h: Any = None,
    initial_c: Any = None,
) -> tuple[np.ndarray, ...]:
    """Run a one-layer ``module`` with the inputs of an ONNX recurrent node and return its
    outputs as that node does: ``(Y, Y_h)``, plus ``Y_c`` for the LSTM, as numpy arrays.

    Layouts follow the module's ``batch_first`` as ONNX ``layout`` does: ``X`` is ``(T, B, I)``
    (``(B, T, I)``), ``Y`` is ``(T, D, B, H)`` (``(B, T, D, H)``) and the states are ``(D, B, H)``
    (``(B, D, H)``). A missing initial state component is the module's own (zeros, or the learned
    state).
    """
    module = _check_module(module)
    if module.num_layers != 1:
        raise ValueError(
            f"run_like_onnx needs a one-layer module (one ONNX node), got num_layers="
            f"{module.num_layers}"
        )
    if module.bidirectional and module.bidirectional_merge != "concat":
        raise ValueError(
            "run_like_onnx needs bidirectional_merge='concat' to return both directions, got "
            f"{module.bidirectional_merge!r}"
        )
    cell = module.cell_math[0]
    if initial_c is not None and cell.family != "lstm":
        raise ValueError(f"initial_c is for LSTM only, got it for {type(module).__name__}")
    dtype = next(module.parameters()).dtype
    x = _tensor(X, dtype, "X")
    if x.dim() != 3:
        raise ValueError(f"X must be 3-D, got shape {tuple(x.shape)}")
    layout = 1 if module.batch_first else 0
    batch = x.shape[0] if layout else x.shape[1]
    given = (initial_h, initial_c)[: len(cell.state_names)]
    hx: Any = None
    if any(v is not None for v in given):
        default = module.initial_state(batch, dtype=dtype)
        default = list(default) if isinstance(default, tuple) else [default]
        comps = []
        for k, value in enumerate(given):
            if value is None:
                comps.append(default[k])
            else:
                t = _tensor(value, dtype, ("initial_h", "initial_c")[k])
                comps.append(t.transpose(0, 1) if layout else t)
        hx = tuple(comps) if len(comps) > 1 else comps[0]
    lens = None
    if sequence_lens is not None:
        lens = torch.as_tensor(np.asarray(sequence_lens), dtype=torch.int64)
    with torch.no_grad():
        y, state = module(x, hx, lengths=lens)
    D = module.num_directions
    H = cell.output_size
    y = y.reshape(*y.shape[:2], D, H)  # (T, B, D, H) or (B, T, D, H)
    if not layout:
        y = y.permute(0, 2, 1, 3)
    finals = list(state) if isinstance(state, tuple) else [state]
    if layout:
        finals = [f.transpose(0, 1) for f in finals]
    return tuple(t.detach().cpu().numpy() for t in (y, *finals))
