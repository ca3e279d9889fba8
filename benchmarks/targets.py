"""The issue's performance targets, evaluated on the measured results (never written by hand).

Each target applies to the results it selects (rows, shapes, modes, implementations) and
compares one metric with a threshold: ``ratio`` (median time / median time of the baseline
measured in the same run) or ``efficiency`` (GEMM-ceiling time / median time). A selected result
that could not be measured does not meet its target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .cases import BF16_ROW, STREAM_ROW

OURS = ("fused", "auto")
VARIANT_ROWS = (
    "lstm-2layer",
    "lstm-bidir",
    "lstm-peephole",
    "lstm-layernorm",
    "lstm-cifg",
    "lstm-zoneout",
    "lstm-recdrop",
    "lstm-weightdrop",
)


@dataclass(frozen=True)
class Target:
    id: str
    text: str
    rows: tuple[str, ...]
    impls: tuple[str, ...]
    threshold: float
    metric: str = "ratio"  # or "efficiency"
    shapes: tuple[str, ...] | None = None  # None: every shape
    modes: tuple[str, ...] | None = None  # None: both

    @property
    def op(self) -> str:
        return ">=" if self.metric == "efficiency" else "<="

    def needs(self) -> str:
        if self.metric == "efficiency":
            return f"eff ≥ {self.threshold:.0%}"
        return f"≤ {self.threshold:.1f}"

    def applies(self, result: dict[str, Any]) -> bool:
        return (
            result["row"] in self.rows
            and result["impl"] in self.impls
            and (self.shapes is None or result["shape"] in self.shapes)
            and (self.modes is None or result["mode"] in self.modes)
        )

    def evaluate(self, result: dict[str, Any]) -> dict[str, Any]:
        value = result.get(self.metric)
        if result.get("status") != "ok" or value is None:
            return {"id": self.id, "value": None, "met": False, "needs": self.needs()}
        met = value >= self.threshold if self.op == ">=" else value <= self.threshold
        return {"id": self.id, "value": value, "met": bool(met), "needs": self.needs()}


TARGETS: tuple[Target, ...] = (
    Target(
        "variants",
        "every LSTM variant, fwd+bwd at C2 and C3, vs plain nn.LSTM (2-layer and bidirectional "
        "vs nn.LSTM with the same layers and directions)",
        VARIANT_ROWS,
        OURS,
        1.3,
        shapes=("C2", "C3"),
        modes=("fwd+bwd",),
    ),
    Target("plain", "plain LSTM, all shapes, fwd and fwd+bwd, vs nn.LSTM", ("lstm",), OURS, 1.0),
    Target(
        "lengths",
        "variable lengths vs nn.LSTM on a PackedSequence",
        ("lstm-packed",),
        OURS,
        0.5,
    ),
    Target("proj", "proj_size vs nn.LSTM(proj_size=...)", ("lstm-proj",), OURS, 0.6),
    Target("gru", "GRU vs nn.GRU", ("gru",), OURS, 1.0),
    Target("ln-gru", "layer-normalised GRU vs nn.GRU", ("gru-layernorm",), OURS, 1.3),
    Target(
        "stream-cell",
        "streaming step, batch 1, H=128, no grad, vs an nn.LSTMCell call",
        (STREAM_ROW,),
        ("streaming",),
        0.3,
        shapes=("S128",),
    ),
    Target(
        "stream-floor",
        "streaming step, batch 1, H=256, I=256, vs one torch.mv over [W_ih W_hh]",
        (STREAM_ROW,),
        ("streaming",),
        1.3,
        shapes=("S256",),
    ),
    Target(
        "bf16",
        "bf16 training (fwd+bwd) at C1 vs our float32",
        (BF16_ROW,),
        OURS,
        0.6,
        shapes=("C1",),
    ),
    Target(
        "efficiency",
        "C1 fwd+bwd efficiency: GEMM-ceiling time / measured time",
        ("lstm",),
        OURS,
        0.75,
        metric="efficiency",
        shapes=("C1",),
        modes=("fwd+bwd",),
    ),
)


def evaluate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Attach ``targets`` (a list of evaluations) to every result and return the summary: one
    entry per target with its evaluations and whether all were met (``None`` if none
    applied)."""
    summary = []
    for target in TARGETS:
        evaluations = []
        for result in results:
            if target.applies(result):
                ev = target.evaluate(result)
                result.setdefault("targets", []).append(ev)
                evaluations.append(
                    {
                        **ev,
                        "row": result["row"],
                        "shape": result["shape"],
                        "mode": result["mode"],
                        "impl": result["impl"],
                    }
                )
        summary.append(
            {
                "id": target.id,
                "text": target.text,
                "metric": target.metric,
                "op": target.op,
                "threshold": target.threshold,
                "evaluated": len(evaluations),
                "met": all(e["met"] for e in evaluations) if evaluations else None,
                "evaluations": evaluations,
            }
        )
    for result in results:
        result.setdefault("targets", [])
    return summary
