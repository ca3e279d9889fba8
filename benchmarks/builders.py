"""The timed closures: for each :class:`~benchmarks.cases.Spec`, the modules and inputs are
built once, outside the timer, and a closure runs one call.

``fwd``: the module in ``eval()`` mode under ``torch.no_grad()``. ``fwd+bwd``: the module in
``train()`` mode, an input that requires grad, one forward and ``output.backward(grad)`` with a
fixed random ``grad`` of the output's shape; the parameter and input gradients are reset to
``None`` at the start of each call (so each call allocates its gradients, as a training step
after ``zero_grad(set_to_none=True)`` does). The final states are not used by the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

import lstmkit

from .cases import (
    BF16_ROW,
    CEILING_ROW,
    INT8_ROW,
    ROWS_BY_NAME,
    STREAM_INT8_ROW,
    STREAM_ROW,
    Row,
    Shape,
    Spec,
)
from .streaming import make_streaming_step

SEED = 0


class NotAvailable(Exception):
    """The implementation cannot run here (not built, not implemented, not installed)."""


@dataclass
class Prepared:
    fn: Callable[[], object]
    label: str
    note: str = ""
    memory: bool = True  # False where the allocations happen outside torch
    steps: int | None = None  # valid (time x batch) positions, for the FLOP count


_FAMILIES: dict[str, Any] = {"lstm": lstmkit.LSTM, "gru": lstmkit.GRU, "rnn": lstmkit.RNN}
_TORCH: dict[str, Any] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(SEED)


def random_lengths(shape: Shape) -> Tensor:
    """Per-sequence lengths, uniform in ``[max(1, T // 4), T]`` (fixed seed), int64 on the CPU."""
    low = max(1, shape.T // 4)
    return torch.randint(low, shape.T + 1, (shape.B,), generator=_generator())


def _input(shape: Shape, dtype: torch.dtype) -> Tensor:
    return torch.randn(shape.T, shape.B, shape.I, generator=_generator()).to(dtype)


def _grad_like(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    g = torch.Generator().manual_seed(SEED + 1)
    return torch.randn(shape, generator=g).to(dtype)


def _train_step(
    module: nn.Module, x: Tensor, run: Callable[[], Tensor], gy: Tensor
) -> Callable[[], None]:
    params = [p for p in module.parameters() if p.requires_grad]

    def fn() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        run().backward(gy)

    return fn


def _no_grad(run: Callable[[], object]) -> Callable[[], None]:
    def fn() -> None:
        with torch.no_grad():
            run()

    return fn


def auto_dispatch(module: Any, x: Tensor, lengths: Tensor | None = None) -> str:
    """Which backend ``backend='auto'`` runs for ``module`` on ``x``, in words (call it with the
    module in the mode it will run in: the torch hand-off depends on training-mode dropout)."""
    try:
        from lstmkit.backends import Regularisation, fused

        torch_path = getattr(module, "_torch_path", None)
        if torch_path is not None and torch_path(x, lengths):
            return "auto runs torch's own kernel (faster for this plain configuration)"
        if not fused.available():
            return "auto runs the reference loop: the fused extension is not built"
        reasons = set()
        for cell in module.cell_math:
            why = fused.unsupported(cell, Regularisation(), x)
            if why is not None:
                reasons.add(str(why))
        if reasons:
            return f"auto runs the reference loop: fused does not support {', '.join(reasons)}"
        return "auto runs fused"
    except Exception as err:  # the backends API is being worked on; never fail a row for it
        return f"auto dispatch unknown ({type(err).__name__}: {err})"


# --------------------------------------------------------------------------- layer rows
def _ours(row: Row, shape: Shape, mode: str, backend: str, dtype: torch.dtype) -> Prepared:
    if backend == "fused":
        from lstmkit.backends import fused

        if not fused.available():
            raise NotAvailable("the fused extension lstmkit._C is not built")
    torch.manual_seed(SEED)
    module = _FAMILIES[row.family](
        shape.I, shape.H, **row.kwargs(shape), backend=backend, dtype=dtype
    )
    x = _input(shape, dtype)
    lengths = random_lengths(shape) if row.packed else None
    steps = int(lengths.sum()) if lengths is not None else None
    module.train(mode != "fwd")
    with torch.set_grad_enabled(mode != "fwd"):  # as the timed call runs
        note = auto_dispatch(module, x, lengths) if backend == "auto" else ""
    if mode == "fwd":
        return Prepared(_no_grad(lambda: module(x, lengths=lengths)), "", note, steps=steps)
    x.requires_grad_(True)
    gy = _grad_like((shape.T, shape.B, module.output_size), dtype)
    fn = _train_step(module, x, lambda: module(x, lengths=lengths)[0], gy)
    return Prepared(fn, "", note, steps=steps)


def _torch(row: Row, shape: Shape, mode: str, dtype: torch.dtype) -> Prepared:
    torch.manual_seed(SEED)
    module = _TORCH[row.family](shape.I, shape.H, **row.torch_kwargs(shape), dtype=dtype)
    x = _input(shape, dtype)
    label = row.torch_label()
    directions = 2 if module.bidirectional else 1
    width = directions * (getattr(module, "proj_size", 0) or shape.H)
    if row.packed:
        lengths = random_lengths(shape)
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        data = packed.data.detach()
        if mode == "fwd+bwd":
            data.requires_grad_(True)
        inp = packed._replace(data=data)
        steps = int(lengths.sum())
        if mode == "fwd":
            module.eval()
            return Prepared(_no_grad(lambda: module(inp)), label, steps=steps)
        module.train()
        gy = _grad_like((data.shape[0], width), dtype)
        return Prepared(
            _train_step(module, data, lambda: module(inp)[0].data, gy), label, steps=steps
        )
    if mode == "fwd":
        module.eval()
        return Prepared(_no_grad(lambda: module(x)), label)
    module.train()
    x.requires_grad_(True)
    gy = _grad_like((shape.T, shape.B, width), dtype)
    return Prepared(_train_step(module, x, lambda: module(x)[0], gy), label)


def _onnxruntime(row: Row, shape: Shape, threads: int) -> Prepared:
    try:
        import onnxruntime as ort

        import lstmkit.onnx
    except ImportError as err:
        raise NotAvailable(f"onnx/onnxruntime not installed ({err})") from err
    torch.manual_seed(SEED)
    module = _FAMILIES[row.family](shape.I, shape.H, **row.kwargs(shape)).eval()
    model = lstmkit.onnx.export(module, lengths=row.packed, initial_state=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feeds = {"input": _input(shape, torch.float32).numpy()}
    steps = None
    if row.packed:
        lengths = random_lengths(shape)
        feeds["sequence_lens"] = lengths.to(torch.int32).numpy()
        steps = int(lengths.sum())
    return Prepared(
        lambda: session.run(None, feeds),
        "onnxruntime",
        "memory: onnxruntime allocates outside torch",
        memory=False,
        steps=steps,
    )


# --------------------------------------------------------------------------- special rows
def _gemm_ceiling(shape: Shape, mode: str) -> Prepared:
    """The GEMMs a plain LSTM needs, with ``torch.mm`` into preallocated outputs: the input
    projection, T recurrent GEMMs forward; for fwd+bwd also T recurrent GEMMs backward
    (``dgates_t @ W_hh``) and the weight- and input-gradient GEMMs over all steps."""
    T, B, I, H = shape.T, shape.B, shape.I, shape.H
    G = 4
    g = _generator()
    x = torch.randn(T * B, I, generator=g)
    w_ih = torch.randn(G * H, I, generator=g)
    w_hh = torch.randn(G * H, H, generator=g)
    h = torch.randn(B, H, generator=g)
    xp = torch.empty(T * B, G * H)
    gates = torch.empty(B, G * H)
    backward = mode == "fwd+bwd"
    if backward:
        dg = torch.randn(T * B, G * H, generator=g)
        hs = torch.randn(T * B, H, generator=g)
        dh = torch.empty(B, H)
        dw_ih = torch.empty(G * H, I)
        dw_hh = torch.empty(G * H, H)
        dx = torch.empty(T * B, I)
        dg_steps = [dg[t * B : (t + 1) * B] for t in range(T)]

    def fn() -> None:
        torch.mm(x, w_ih.t(), out=xp)
        for _ in range(T):
            torch.mm(h, w_hh.t(), out=gates)
        if backward:
            for t in reversed(range(T)):
                torch.mm(dg_steps[t], w_hh, out=dh)
            torch.mm(dg.t(), x, out=dw_ih)
            torch.mm(dg.t(), hs, out=dw_hh)
            torch.mm(dg, w_ih, out=dx)

    return Prepared(fn, "torch.mm")


def _stream(shape: Shape, impl: str) -> Prepared:
    I, H = shape.I, shape.H
    g = _generator()
    x = torch.randn(1, I, generator=g)
    torch.manual_seed(SEED)
    if impl == "floor":
        ref = nn.LSTMCell(I, H)
        weights = torch.cat([ref.weight_ih.detach(), ref.weight_hh.detach()], 1).contiguous()
        vec = torch.randn(I + H, generator=g)
        out = torch.empty(4 * H)
        return Prepared(lambda: torch.mv(weights, vec, out=out), "torch.mv floor")
    if impl in ("torch", "cell"):
        cell: nn.Module = nn.LSTMCell(I, H) if impl == "torch" else lstmkit.LSTMCell(I, H)
        state = [torch.zeros(1, H), torch.zeros(1, H)]

        def step() -> None:
            with torch.no_grad():
                h, c = cell(x, (state[0], state[1]))
            state[0], state[1] = h, c

        label = "nn.LSTMCell" if impl == "torch" else "lstmkit.LSTMCell"
        return Prepared(step, label)
    if impl == "auto":
        layer = lstmkit.LSTM(I, H).eval()
        x3 = x.unsqueeze(0)
        hx: list[Any] = [layer.initial_state(1)]

        def layer_step() -> None:
            with torch.no_grad():
                _, hx[0] = layer(x3, hx[0])

        return Prepared(layer_step, "lstmkit.LSTM T=1 (auto)", auto_dispatch(layer, x3))
    assert impl == "streaming"
    layer = lstmkit.LSTM(I, H).eval()
    try:
        stream_step, how = make_streaming_step(layer, x)
    except LookupError as err:
        raise NotAvailable(str(err)) from err
    return Prepared(stream_step, "lstmkit.streaming", how)


def _bf16(shape: Shape, impl: str) -> Prepared:
    row = ROWS_BY_NAME["lstm"]
    if impl == "torch":
        prepared = _torch(row, shape, "fwd+bwd", torch.bfloat16)
        prepared.label = "nn.LSTM bf16"
        return prepared
    prepared = _ours(row, shape, "fwd+bwd", impl, torch.bfloat16)
    prepared.label = f"{impl} bf16"
    return prepared


def _int8(shape: Shape, impl: str) -> Prepared:
    """``lstmkit.compress.quantize`` of the plain LSTM built as the ``lstm`` row builds it (same
    seed, so the same weights), in eval mode under ``torch.no_grad()``: ``reference`` with
    ``kernel='int8'`` (int8 products in the reference loop), ``auto`` with the default
    ``kernel='dequantize'`` (float weights rebuilt per call, then the auto backend)."""
    from lstmkit.compress import quantize

    torch.manual_seed(SEED)
    module = lstmkit.LSTM(shape.I, shape.H, backend=impl)
    kernel = "int8" if impl == "reference" else "dequantize"
    q = quantize(module, kernel=kernel)
    x = _input(shape, torch.float32)
    label = "int8 kernel, reference loop" if impl == "reference" else "int8 dequantize, auto"
    note = auto_dispatch(q, x) if impl == "auto" else ""
    return Prepared(_no_grad(lambda: q(x)), label, note)


def _stream_int8(shape: Shape) -> Prepared:
    """The streaming step of the ``stream-step`` row with int8 weight matrices."""
    from lstmkit.streaming import Streamer

    I, H = shape.I, shape.H
    x = torch.randn(1, I, generator=_generator())
    torch.manual_seed(SEED)
    streamer = Streamer(lstmkit.LSTM(I, H).eval(), weights="int8")

    def step() -> None:
        with torch.no_grad():
            streamer.step(x)

    step()
    return Prepared(step, "lstmkit.streaming int8", f"backend {streamer.backend!r}")


def build(spec: Spec, shape: Shape, threads: int) -> Prepared:
    """Build the closure of ``spec`` at ``shape`` (raises :class:`NotAvailable`)."""
    if spec.row == CEILING_ROW:
        return _gemm_ceiling(shape, spec.mode)
    if spec.row == STREAM_ROW:
        return _stream(shape, spec.impl)
    if spec.row == BF16_ROW:
        return _bf16(shape, spec.impl)
    if spec.row == INT8_ROW:
        return _int8(shape, spec.impl)
    if spec.row == STREAM_INT8_ROW:
        return _stream_int8(shape)
    row = ROWS_BY_NAME[spec.row]
    if spec.impl == "torch":
        return _torch(row, shape, spec.mode, torch.float32)
    if spec.impl == "onnxruntime":
        return _onnxruntime(row, shape, threads)
    prepared = _ours(row, shape, spec.mode, spec.impl, torch.float32)
    prepared.label = spec.impl
    return prepared
