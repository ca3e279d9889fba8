"""What is measured: the shapes, the rows (one layer configuration each), the implementations
timed for each row, the baseline of each measurement and the FLOP count of each row.

A *measurement* is one (row, shape, mode, impl) :class:`Spec`. Its baseline is another spec,
measured in the same run; the ratio reported is ``median(spec) / median(baseline)``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MODES = ("fwd", "fwd+bwd")

#: Implementations of the layer rows, in the order they are measured.
LAYER_IMPLS = ("torch", "reference", "fused", "auto", "onnxruntime")
#: Every implementation name that can appear in a result.
ALL_IMPLS = (*LAYER_IMPLS, "cell", "streaming", "floor", "torch.mm")


@dataclass(frozen=True)
class Shape:
    """``T`` steps, batch ``B``, ``I`` input features, ``H`` hidden units."""

    name: str
    T: int
    B: int
    I: int
    H: int

    def dims(self) -> dict[str, int]:
        return {"T": self.T, "B": self.B, "I": self.I, "H": self.H}

    def describe(self) -> str:
        return f"T={self.T}, B={self.B}, I={self.I}, H={self.H}"


def _shapes(*rows: tuple[str, int, int, int, int]) -> dict[str, Shape]:
    return {name: Shape(name, T, B, I, H) for name, T, B, I, H in rows}


#: The issue's shapes (T, batch, input, hidden). C1 is the default of PyTorch's fastrnns.
SHAPES = _shapes(
    ("C1", 100, 64, 512, 512),
    ("C2", 50, 32, 128, 256),
    ("C3", 128, 64, 128, 128),
    ("C4", 100, 1, 256, 256),
    ("C5", 50, 64, 1024, 1024),
)
#: ``--quick``: the same names, tiny sizes (a smoke test of the harness; timings mean nothing).
QUICK_SHAPES = _shapes(
    ("C1", 6, 4, 16, 16),
    ("C2", 5, 3, 8, 12),
    ("C3", 7, 4, 8, 8),
    ("C4", 6, 1, 12, 12),
    ("C5", 4, 4, 24, 24),
)
#: The streaming step: batch 1, one time step, no grad.
STREAM_SHAPES = _shapes(("S128", 1, 1, 128, 128), ("S256", 1, 1, 256, 256))
QUICK_STREAM_SHAPES = _shapes(("S128", 1, 1, 16, 16), ("S256", 1, 1, 24, 24))


@dataclass(frozen=True)
class Row:
    """One configuration of a layer, measured at every selected C-shape in both modes.

    ``options`` are lstmkit constructor arguments (``proj=True`` adds ``proj_size=H // 2``);
    ``torch_options`` those of the ``torch.nn`` equivalent, or ``None`` when there is none, in
    which case the baseline is the ``torch`` measurement of ``baseline_row``.
    """

    name: str
    family: str
    description: str
    options: dict[str, Any] = field(default_factory=dict)
    torch_options: dict[str, Any] | None = None
    baseline_row: str = ""
    proj: bool = False
    packed: bool = False
    onnx: bool = False
    default_shapes: tuple[str, ...] | None = None  # None: every shape

    def runs_at(self, shape: str) -> bool:
        """Whether the default run (no ``--shapes``) measures this row at ``shape``."""
        return self.default_shapes is None or shape in self.default_shapes

    def kwargs(self, shape: Shape) -> dict[str, Any]:
        out = dict(self.options)
        if self.proj:
            out["proj_size"] = shape.H // 2
        return out

    def torch_kwargs(self, shape: Shape) -> dict[str, Any]:
        out = dict(self.torch_options or {})
        if self.proj:
            out["proj_size"] = shape.H // 2
        return out

    @property
    def baseline(self) -> str:
        return self.baseline_row or self.name

    @property
    def torch_class(self) -> str:
        return {"lstm": "nn.LSTM", "gru": "nn.GRU", "rnn": "nn.RNN"}[self.family]

    def torch_label(self) -> str:
        if self.packed:
            return f"{self.torch_class} on PackedSequence"
        opts = dict(self.torch_options or {})
        if self.proj:
            opts["proj_size"] = "H/2"
        inner = ", ".join(f"{k}={v}" for k, v in opts.items())
        return f"{self.torch_class}({inner})" if inner else self.torch_class


#: Where the rows without their own target at every shape run by default: the variant target
#: is at C2 and C3, and C4 is cheap. C1 and C5 for them would double the default run's time
#: (~20 minutes on 2 cores); ``--shapes C1,C5`` measures them there.
VARIANT_SHAPES = ("C2", "C3", "C4")


def _row(name: str, family: str, description: str, **kw: Any) -> Row:
    return Row(name, family, description, **kw)


def _variant(name: str, description: str, **kw: Any) -> Row:
    return Row(name, "lstm", description, default_shapes=VARIANT_SHAPES, **kw)


#: The layer rows, in report order. Rows without ``torch_options`` have no torch equivalent and
#: are compared with plain ``nn.LSTM``/``nn.GRU`` of the same shape (``baseline_row``).
LAYER_ROWS: tuple[Row, ...] = (
    _row("lstm", "lstm", "plain 1-layer LSTM", torch_options={}, onnx=True),
    _variant(
        "lstm-2layer",
        "2 stacked layers",
        options={"num_layers": 2},
        torch_options={"num_layers": 2},
        onnx=True,
    ),
    _variant(
        "lstm-bidir",
        "bidirectional, outputs concatenated",
        options={"bidirectional": True},
        torch_options={"bidirectional": True},
        onnx=True,
    ),
    _row(
        "lstm-packed",
        "lstm",
        "variable lengths, uniform in [T/4, T]: ours with lengths=, torch on a PackedSequence",
        torch_options={},
        packed=True,
        onnx=True,
    ),
    _row(
        "lstm-proj",
        "lstm",
        "projection proj_size=H/2 (Sak et al. 2014)",
        torch_options={},
        proj=True,
    ),
    _variant(
        "lstm-peephole",
        "peepholes",
        options={"peephole": True},
        baseline_row="lstm",
        onnx=True,
    ),
    _variant(
        "lstm-layernorm",
        "layer-normalised LSTM",
        options={"layer_norm": True},
        baseline_row="lstm",
    ),
    _variant(
        "lstm-cifg",
        "CIFG (coupled_gates=True): 3 gate blocks",
        options={"coupled_gates": True},
        baseline_row="lstm",
        onnx=True,
    ),
    _variant(
        "lstm-zoneout",
        "zoneout=0.1 (training: per-step masks; eval: its expectation)",
        options={"zoneout": 0.1},
        baseline_row="lstm",
    ),
    _variant(
        "lstm-recdrop",
        "recurrent_dropout=0.25 (identity at eval)",
        options={"recurrent_dropout": 0.25},
        baseline_row="lstm",
    ),
    _variant(
        "lstm-weightdrop",
        "weight_drop=0.25 on weight_hh (identity at eval)",
        options={"weight_drop": 0.25},
        baseline_row="lstm",
    ),
    _row("gru", "gru", "plain 1-layer GRU", torch_options={}, onnx=True),
    _row(
        "gru-layernorm",
        "gru",
        "layer-normalised GRU",
        options={"layer_norm": True},
        baseline_row="gru",
    ),
    _row("rnn", "rnn", "plain 1-layer tanh RNN", torch_options={}, onnx=True),
)
ROWS_BY_NAME = {r.name: r for r in LAYER_ROWS}

# Rows that are not one layer configuration over the C-shapes.
BF16_ROW = "lstm-bf16"
CEILING_ROW = "gemm-ceiling"
STREAM_ROW = "stream-step"
#: ``lstmkit.compress.quantize`` of the plain LSTM (inference), against the float32 LSTM.
INT8_ROW = "lstm-int8"
#: ``Streamer(..., weights='int8')``, against the float32 ``Streamer`` (the ``stream-step`` row).
STREAM_INT8_ROW = "stream-step-int8"
SPECIAL_ROWS = (BF16_ROW, CEILING_ROW, STREAM_ROW, INT8_ROW, STREAM_INT8_ROW)
STREAM_ROWS = (STREAM_ROW, STREAM_INT8_ROW)
ALL_ROWS = (*(r.name for r in LAYER_ROWS), *SPECIAL_ROWS)

#: Implementations of the streaming row; ``floor`` is one ``torch.mv`` over [W_ih W_hh].
STREAM_IMPLS = ("torch", "floor", "cell", "auto", "streaming")
BF16_IMPLS = ("torch", "fused", "auto")
#: ``reference``: ``quantize(kernel='int8')``, the int8 products in the reference loop (against
#: the float32 reference loop); ``auto``: ``quantize()`` (weights dequantised per call, then the
#: auto backend; against the float32 auto backend).
INT8_IMPLS = ("reference", "auto")


@dataclass(frozen=True)
class Spec:
    """One measurement: a row at a shape in a mode, run by one implementation."""

    row: str
    shape: str
    mode: str
    impl: str

    def describe(self) -> str:
        return f"{self.shape} {self.row} {self.mode} {self.impl}"


def baseline_of(spec: Spec) -> Spec | None:
    """The measurement ``spec`` is compared with, or ``None`` for a baseline itself."""
    if spec.row == CEILING_ROW:
        return None
    if spec.row in (BF16_ROW, INT8_ROW):  # against the same implementation in float32
        return Spec("lstm", spec.shape, spec.mode, spec.impl)
    if spec.row == STREAM_INT8_ROW:  # against the float32 streamer
        return Spec(STREAM_ROW, spec.shape, spec.mode, "streaming")
    if spec.row == STREAM_ROW:
        base = "torch" if spec.shape == "S128" else "floor"
        return None if spec.impl == base else Spec(spec.row, spec.shape, spec.mode, base)
    row = ROWS_BY_NAME[spec.row]
    if spec.impl == "torch" and row.torch_options is not None:
        return None
    return Spec(row.baseline, spec.shape, spec.mode, "torch")


def impls_of(row: str, mode: str) -> tuple[str, ...]:
    """The implementations measured for ``row`` in ``mode``."""
    if row == CEILING_ROW:
        return ("torch.mm",)
    if row == BF16_ROW:
        return BF16_IMPLS if mode == "fwd+bwd" else ()
    if row == STREAM_ROW:
        return STREAM_IMPLS if mode == "fwd" else ()
    if row == INT8_ROW:
        return INT8_IMPLS if mode == "fwd" else ()
    if row == STREAM_INT8_ROW:
        return ("streaming",) if mode == "fwd" else ()
    r = ROWS_BY_NAME[row]
    impls = ["torch"] if r.torch_options is not None else []
    impls += ["reference", "fused", "auto"]
    if r.onnx and mode == "fwd":
        impls.append("onnxruntime")
    return tuple(impls)


def default_impl(row: str, shape: str, impl: str) -> bool:
    """Whether the default run measures ``impl`` of ``row`` at ``shape``: the reference loop
    runs at C1 and C5 (seconds per call) for the plain ``lstm`` row and its int8 form only."""
    return impl != "reference" or row in ("lstm", INT8_ROW) or shape in VARIANT_SHAPES


def matches(name: str, patterns: Iterable[str]) -> bool:
    """``--filter`` matching: each pattern is a row name or a glob (``'lstm*'``)."""
    return any(fnmatch.fnmatchcase(name, pat) for pat in patterns)


def plan(
    shapes: Iterable[str],
    rows: Iterable[str],
    impls: Iterable[str] | None,
    *,
    explicit_shapes: bool = True,
    ceiling: bool = True,
) -> list[tuple[Spec, bool]]:
    """The ordered measurements: ``(spec, requested)``. Baselines a requested measurement needs
    are added before it with ``requested=False`` (they are measured and reported all the same).
    Without ``explicit_shapes``, a row runs only at its default shapes (:attr:`Row.runs_at`).
    With ``ceiling``, the GEMM ceiling is measured wherever the plain ``lstm`` row is, for the
    efficiency column."""
    shapes = list(shapes)
    rows = list(rows)
    wanted_impls = None if impls is None else set(impls)
    out: list[tuple[Spec, bool]] = []
    seen: dict[Spec, int] = {}

    def add(spec: Spec, requested: bool) -> None:
        base = baseline_of(spec)
        if base is not None:
            add(base, False)
        if spec in seen:
            if requested and not out[seen[spec]][1]:
                out[seen[spec]] = (spec, True)
            return
        seen[spec] = len(out)
        out.append((spec, requested))

    def add_row(row: str, shape: str) -> None:
        for mode in MODES:
            for impl in impls_of(row, mode):
                if wanted_impls is not None and impl not in wanted_impls:
                    continue
                if not explicit_shapes and not default_impl(row, shape, impl):
                    continue
                add(Spec(row, shape, mode, impl), True)

    for shape in shapes:
        for row in rows:
            if row in ROWS_BY_NAME and (explicit_shapes or ROWS_BY_NAME[row].runs_at(shape)):
                add_row(row, shape)
        lstm_here = "lstm" in rows and ROWS_BY_NAME["lstm"].runs_at(shape)
        if CEILING_ROW in rows or (ceiling and lstm_here):
            for mode in MODES:  # the efficiency column needs it, whatever --impls says
                add(Spec(CEILING_ROW, shape, mode, "torch.mm"), CEILING_ROW in rows)
        if BF16_ROW in rows and shape == "C1":
            add_row(BF16_ROW, shape)
        if INT8_ROW in rows:
            add_row(INT8_ROW, shape)
    for row in STREAM_ROWS:
        if row in rows:
            for shape in STREAM_SHAPES:
                add_row(row, shape)
    return out


# ---------------------------------------------------------------------------------- FLOPs
def gates(row: Row) -> int:
    """Gate blocks of the weight matrices: LSTM 4 (CIFG 3), GRU 3, RNN 1."""
    if row.family == "lstm":
        return 3 if row.options.get("coupled_gates") else 4
    return {"gru": 3, "rnn": 1}[row.family]


def forward_flops(row: Row, shape: Shape, steps: int) -> float:
    """GEMM FLOPs of one forward pass over ``steps`` (time x batch) valid positions.

    Per layer and direction: ``2 * steps * G * H * (I_l + R)`` (input and recurrent
    projections; ``R`` is ``proj_size`` with a projection, else ``H``) plus ``2 * steps * H * P``
    for the projection. ``I_l`` is ``I`` for the first layer and ``D * R`` after it. The
    pointwise work (gates, layer norm, masks) is not counted.
    """
    kw = row.kwargs(shape)
    layers = int(kw.get("num_layers", 1))
    directions = 2 if kw.get("bidirectional") else 1
    proj = int(kw.get("proj_size", 0))
    R = proj or shape.H
    G = gates(row)
    total = 0.0
    width = shape.I
    for _ in range(layers):
        per_direction = 2.0 * steps * G * shape.H * (width + R) + 2.0 * steps * shape.H * proj
        total += directions * per_direction
        width = directions * R
    return total


def mode_factor(mode: str) -> int:
    """fwd+bwd = 3 x forward: the backward does two GEMMs of the forward's size per forward
    GEMM (the gradient with respect to the input or state, and the weight gradient)."""
    return 1 if mode == "fwd" else 3


def lstm_flops(shape: Shape, mode: str, steps: int | None = None) -> float:
    """FLOPs of the plain LSTM at ``shape`` (also those of the GEMM ceiling)."""
    n = shape.T * shape.B if steps is None else steps
    return mode_factor(mode) * forward_flops(ROWS_BY_NAME["lstm"], shape, n)


def stream_flops(shape: Shape) -> float:
    """One LSTM step at batch ``B``: ``2 * B * 4H * (I + H)``."""
    return 2.0 * shape.B * 4 * shape.H * (shape.I + shape.H)
