"""The ``--quick`` mode of every experiment in ``experiments/``: each runs in-process on tiny
settings and must point the way its claim says (the full runs and their numbers are in
docs/experiments.md). Timings are recorded by the scripts but never asserted here."""

from __future__ import annotations

import importlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


@pytest.fixture(scope="module", autouse=True)
def _experiments_on_path() -> Iterator[None]:
    sys.path.insert(0, str(EXPERIMENTS))
    yield
    sys.path.remove(str(EXPERIMENTS))


def load(name: str) -> ModuleType:
    return importlib.import_module(name)


def run_quick(name: str, out: Path, *extra: str) -> dict[str, Any]:
    summary: dict[str, Any] = load(name).main(["--quick", "--out", str(out), *extra])
    written = json.loads((out / f"{name}.json").read_text())
    assert written["results"] == json.loads(json.dumps(summary["results"]))
    assert written["mode"] == "quick"
    assert written["wall_s"] > 0
    for figure in summary["figures"]:
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return summary["results"]


# ------------------------------------------------------------------------------ gradient flow
def test_gradient_flow_lstm_keeps_what_the_rnn_loses(tmp_path: Path) -> None:
    r = run_quick("claims_gradient_flow", tmp_path)
    claims = r["claims"]
    # at distance 50 the LSTM (forget bias 1) keeps orders of magnitude more gradient than a
    # vanilla RNN with torch's initialisation; a forget gate fixed at 1 more still
    assert claims["lstm_over_rnn_h_at_50"] > 1e4
    assert claims["lstm_f1_c_over_rnn_h_at_50"] > 1e6
    init = r["init"]
    f1, f05 = init["LSTM, f fixed at 1"], init["LSTM, f fixed at 0.5"]
    # f = 1: the cell-state gradient does not decay; f = 0.5: it decays geometrically
    assert f1["c_decay_per_step"] > 0.95
    assert f05["c_decay_per_step"] < 0.85
    assert f05["c"]["50"] < 1e-4 * f1["c"]["50"]


def test_fix_forget_gate_is_constant_and_survives_training() -> None:
    gf = load("claims_gradient_flow")
    from lstmkit import LSTM
    from lstmkit.diagnostics import trace

    torch.manual_seed(0)
    lstm = gf.fix_forget_gate(LSTM(2, 6, num_layers=2), 0.5)
    opt = torch.optim.Adam(lstm.parameters(), lr=0.1)
    x = torch.randn(7, 3, 2)
    for _ in range(3):
        opt.zero_grad()
        lstm(x)[0].square().sum().backward()
        opt.step()
    gates = trace(lstm.eval(), x).gates["f"]
    assert torch.equal(gates, torch.full_like(gates, 0.5))
    gf.check_forget_constant(gf.fix_forget_gate(LSTM(2, 4), 1.0), x, 1.0)
    with pytest.raises(ValueError, match=r"value must be 1\.0 or 0\.5, got 0\.3"):
        gf.fix_forget_gate(LSTM(2, 4), 0.3)
    with pytest.raises(RuntimeError, match=r"forget gate should be exactly 1\.0 everywhere"):
        gf.check_forget_constant(LSTM(2, 4), x, 1.0)


# ------------------------------------------------------------------------------ long memory
def test_long_memory_gated_layers_beat_the_memoryless_baseline(tmp_path: Path) -> None:
    r = run_quick("claims_long_memory", tmp_path)["adding"]["20"]
    assert r["baseline"] == pytest.approx(1 / 6)
    gated = [v["test_mse"] for k, v in r.items() if k.startswith(("GRU", "LSTM"))]
    # the best gated layer is far below the memoryless MSE, the vanilla RNN is not
    assert min(gated) < 0.05
    assert r["RNN"]["test_mse"] > 0.1


def test_long_memory_copy_task_runs_and_reports_its_anchor(tmp_path: Path) -> None:
    r = run_quick(
        "claims_long_memory", tmp_path, "--adding-T", "4", "--copy-T", "3", "--steps", "2"
    )
    copy = r["copy"]["3"]
    assert copy["baseline"] == pytest.approx(10 * math.log(8) / (3 + 20))
    assert set(copy) == {
        "baseline",
        "RNN",
        "GRU",
        "LSTM, forget bias 0",
        "LSTM, forget bias 1",
        "LSTM, chrono init",
    }
    for name, value in copy.items():
        if name != "baseline":
            assert 0.0 <= value["recall_accuracy"] <= 1.0
            assert math.isfinite(value["test_ce"])


def test_long_memory_models_selects_a_subset_with_the_full_runs_seeds(tmp_path: Path) -> None:
    extra = ("--adding-T", "6", "--copy-T", "--steps", "3")
    full = run_quick("claims_long_memory", tmp_path / "all", *extra)["adding"]["6"]
    some = run_quick(
        "claims_long_memory", tmp_path / "some", *extra, "--models", "lstm-chrono", "rnn"
    )["adding"]["6"]
    assert set(some) == {"baseline", "RNN", "LSTM, chrono init"}
    for name in ("RNN", "LSTM, chrono init"):  # same seed and batches: the same model
        assert some[name]["test_mse"] == full[name]["test_mse"]


def test_long_memory_a_length_keeps_its_seeds_in_any_selection(tmp_path: Path) -> None:
    """A job's seeds follow its (task, T), not its position in this run's list: running one
    length alone trains the same models as running it among others."""
    extra = ("--copy-T", "--steps", "3", "--models", "gru", "lstm-bias1")
    both = run_quick("claims_long_memory", tmp_path / "both", "--adding-T", "5", "7", *extra)
    alone = run_quick("claims_long_memory", tmp_path / "alone", "--adding-T", "7", *extra)
    assert set(alone["adding"]) == {"7"}
    for name in ("GRU", "LSTM, forget bias 1"):
        assert alone["adding"]["7"][name]["test_mse"] == both["adding"]["7"][name]["test_mse"]
    mod = load("claims_long_memory")
    assert mod.job_id("adding", 1000, quick=False) == 3  # its place in the full run
    assert mod.job_id("adding", 20, quick=True) == 0
    assert mod.job_id("adding", 7, False) != mod.job_id("copy", 7, False)


# ------------------------------------------------------------------------------ GRU vs LSTM
def test_gru_has_a_quarter_fewer_parameters(tmp_path: Path) -> None:
    r = run_quick("claims_gru_vs_lstm", tmp_path)
    gv = load("claims_gru_vs_lstm")
    assert set(r["parameters"]) == {f"I={I},H={H}" for I, H in gv.SIZES}
    for counts in r["parameters"].values():
        assert counts["ratio"] == 0.75 and counts["gru"] * 4 == counts["lstm"] * 3
    adding = r["tasks"]["adding"]
    lstm = next(v for k, v in adding.items() if k.startswith("LSTM"))
    matched = next(v for k, v in adding.items() if "parameter count" in k)
    assert abs(matched["parameters"] - lstm["parameters"]) / lstm["parameters"] < 0.02
    assert min(v["test_mse"] for k, v in adding.items() if k.startswith("GRU")) < 0.05


def test_matched_gru_hidden_size() -> None:
    gv = load("claims_gru_vs_lstm")
    from lstmkit import GRU, LSTM

    for I, H in [(2, 128), (10, 64), (300, 512)]:
        h = gv.matched_gru_hidden(I, H)
        lstm = sum(p.numel() for p in LSTM(I, H).parameters())
        counts = {k: sum(p.numel() for p in GRU(I, k).parameters()) for k in (h - 1, h, h + 1)}
        assert min(counts, key=lambda k: abs(counts[k] - lstm)) == h


# ------------------------------------------------------------------------------ variants
def test_variants_bidirectional_sees_the_future_and_layer_norm_converges(
    tmp_path: Path,
) -> None:
    r = run_quick("claims_variants", tmp_path)
    bi = r["bidirectional"]
    assert bi["unidirectional"]["accuracy"] < bi["chance"] + 0.05
    assert bi["bidirectional"]["accuracy"] > bi["chance"] + 0.15
    assert bi["bidirectional"]["parameters"] <= bi["unidirectional"]["parameters"]
    ln = r["layer_norm"]
    assert ln["layer norm"]["steps_to_threshold"] is not None
    none = ln["no layer norm"]["steps_to_threshold"]
    assert none is None or ln["layer norm"]["steps_to_threshold"] < none
    # both LSTMs learn to time the spike, far above a guess of the step (right once in T/2 =
    # 10); which of them is better is not asserted: the full run times every spike exactly
    # with and without peepholes (docs/experiments.md), so a quick-mode difference is noise
    for variant in ("no peepholes", "peepholes"):
        assert r["peephole"][variant]["exact_timing"] > 0.5, variant


def test_variant_tasks_are_what_they_say() -> None:
    va = load("claims_variants")
    x, y = next(va.lookahead_batches(4, 9, torch.Generator().manual_seed(0)))
    assert torch.equal(y[: -va.DELAY], x.argmax(-1)[va.DELAY :])
    assert (y[-va.DELAY :] == -100).all()
    x, y = next(va.spike_batches(5, 20, 7, torch.Generator().manual_seed(0)))
    assert torch.equal(y.argmax(0), x[:, :, 0].argmax(0) + 7)
    assert x.sum() == 5 and y.sum() == 5
    with pytest.raises(ValueError, match=r"delay must be < T - T//2 = 10, got 10"):
        next(va.spike_batches(2, 20, 10, torch.Generator()))


# ------------------------------------------------------------------------------ TBPTT, buckets
def test_tbptt_budget_and_bucketing_padding(tmp_path: Path) -> None:
    r = run_quick("claims_tbptt_bucketing", tmp_path)
    text, _ = load("_common").read_corpus(prefer_real=False, quick=True)
    uniform_bpc = math.log2(len(set(text[: r["characters"]])))
    assert set(r["tbptt"]) == {"2", "8", "32"}
    for window, entry in r["tbptt"].items():
        # the same number of training characters: ceil(tokens / (window x streams)) updates
        assert entry["updates"] == math.ceil(10_000 / (int(window) * 16))
        # every window length learns the next character: well below a uniform guess
        assert entry["val_bpc"] < uniform_bpc - 1.0, window
    b = r["bucketing"]
    assert b["10"]["padding_fraction"] < b["1"]["padding_fraction"] / 2
    assert b["50"]["padding_fraction"] < b["10"]["padding_fraction"]
    assert b["50"]["padded_positions"] < b["1"]["padded_positions"]


# ------------------------------------------------------------------------------ vs TCN, Transformer
def test_lstm_state_is_constant_while_the_kv_cache_grows(tmp_path: Path) -> None:
    r = run_quick("claims_lstm_tcn_transformer", tmp_path)
    for name in ("LSTM", "TCN", "Transformer"):
        assert r[name]["incremental_max_abs_diff"] < 1e-5
    lstm = r["LSTM"]["state_floats"]
    kv = r["Transformer"]["state_floats"]
    tcn = r["TCN"]["state_floats"]
    assert len(set(lstm.values())) == 1
    assert kv["256"] == 16 * kv["16"]
    assert tcn["256"] == tcn["64"] == r["TCN"]["receptive_field"] * 2
    # the TCN and the Transformer match or beat the LSTM, far below the memoryless MSE (the LSTM
    # alone, still near its plateau at 200 updates, would pass a test against the baseline)
    for name in ("TCN", "Transformer"):
        assert r[name]["test_mse"] < 0.05, name
        assert r[name]["test_mse"] <= r["LSTM"]["test_mse"], name


def test_state_floats_are_the_state_the_models_hold() -> None:
    """``state_numel`` (the numbers above) counts what the models really keep: the Streamer's
    h and c, the Transformer's key/value cache after prefill and after each step."""
    tt = load("claims_lstm_tcn_transformer")
    from lstmkit.streaming import Streamer

    x = torch.rand(40, 1, 2)
    lstm = tt.LSTMModel(24).eval()
    streamer = Streamer(lstm.rnn, 1, backend="torch")
    for n in range(1, 41):
        streamer.step(x[n - 1])
        if n in (1, 40):
            assert sum(s.numel() for s in streamer.get_state()) == lstm.state_numel(n) == 48
    transformer = tt.Transformer(d=16, layers=2, heads=2, max_len=64).eval()
    with torch.no_grad():
        caches = transformer.prefill(x[:16])
        assert sum(t.numel() for c in caches for t in c) == transformer.state_numel(16)
        for n in range(16, 40):
            transformer.step(x[n], caches)
        assert sum(t.numel() for c in caches for t in c) == transformer.state_numel(40)
    assert transformer.state_numel(40) == 2 * 2 * 16 * 40


def test_tcn_receptive_field_is_exact() -> None:
    tt = load("claims_lstm_tcn_transformer")
    tcn = tt.TCN(channels=4, levels=3).eval()
    with torch.no_grad():  # positive weights and inputs: every ReLU passes, nothing is masked
        for p in tcn.parameters():
            p.fill_(0.1)
    R = tcn.receptive_field
    assert R == 1 + 2 * 2 * (1 + 2 + 4)
    x = torch.rand(R + 5, 2, 2)
    changed = x.clone()
    changed[4] += 1.0  # the last output (step R + 4) sees steps 5 .. R + 4
    with torch.no_grad():
        assert torch.equal(tcn(x)[-1], tcn(changed)[-1])
        changed[5] += 1.0
        assert not torch.equal(tcn(x)[-1], tcn(changed)[-1])
        assert torch.equal(tcn.step(x), tcn(x)[-1])


# ------------------------------------------------------------------------------ regularisation
def test_regularisers_narrow_the_generalisation_gap(tmp_path: Path) -> None:
    r = run_quick("claims_regularisation", tmp_path / "all")
    none = r["none"]["gap_bpc"]
    for name in ("dropout", "variational dropout", "weight drop", "zoneout"):
        assert r[name]["gap_bpc"] < none, name
        # in eval mode the regularised model fits its training text less tightly
        assert r[name]["train_bpc"] > r["none"]["train_bpc"], name
    # --models trains a subset exactly as the full run does (same seed, same windows)
    some = run_quick("claims_regularisation", tmp_path / "some", "--models", "zoneout", "none")
    assert set(some) == {"corpus", "characters", "none", "zoneout"}
    for name in ("none", "zoneout"):
        assert some[name]["val_bpc"] == r[name]["val_bpc"], name
        assert some[name]["curve_bpc"] == r[name]["curve_bpc"], name
    assert [s for s, _ in r["none"]["curve_bpc"]] == list(range(4, 121, 4))  # every 120 // 25
    # --combine merges pieces into the full run's table, in the experiment's order
    run_quick("claims_regularisation", tmp_path / "dropout", "--models", "dropout")
    script = load("claims_regularisation")
    out = tmp_path / "combined"
    merged = script.main(
        ["--combine", str(tmp_path / "some"), str(tmp_path / "dropout"), "--out", str(out)]
    )
    assert merged["mode"] == "quick" and merged["settings"]["models"] == [
        "none",
        "dropout",
        "zoneout",
    ]
    assert list(merged["results"]) == [
        "corpus",
        "characters",
        "none",
        "dropout",
        "zoneout",
        "pieces",
    ]
    for name in ("none", "dropout", "zoneout"):
        assert merged["results"][name] == r[name] | {"train_s": merged["results"][name]["train_s"]}
    assert [p["models"] for p in merged["results"]["pieces"]] == [["none", "zoneout"], ["dropout"]]
    assert (out / "regularisation.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "claims_regularisation.json").read_text())["results"][
        "dropout"
    ] == json.loads(json.dumps(merged["results"]["dropout"]))


def test_combine_refuses_pieces_that_do_not_belong_together(tmp_path: Path) -> None:
    script = load("claims_regularisation")
    run_quick("claims_regularisation", tmp_path / "a", "--models", "none")
    run_quick("claims_regularisation", tmp_path / "b", "--models", "none", "--rate", "0.2")
    with pytest.raises(ValueError, match=r"only runs that differ in --models can be combined"):
        script.main(
            ["--combine", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")]
        )
    with pytest.raises(
        FileNotFoundError, match=r"--combine: .*nowhere.*claims_regularisation.json does not exist"
    ):
        script.main(["--combine", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")])
    # the same model with different numbers in two pieces
    summary = json.loads((tmp_path / "a" / "claims_regularisation.json").read_text())
    summary["results"]["none"]["val_bpc"] += 0.5
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "claims_regularisation.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError, match=r"model 'none' differs between pieces"):
        script.main(
            ["--combine", str(tmp_path / "a"), str(tmp_path / "d"), "--out", str(tmp_path / "c")]
        )
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "claims_regularisation.json").write_text(
        json.dumps(summary | {"experiment": "other"})
    )
    with pytest.raises(
        ValueError, match=r"holds experiment 'other', expected 'claims_regularisation'"
    ):
        script.main(["--combine", str(tmp_path / "e"), "--out", str(tmp_path / "c")])
    # nothing written on refusal
    assert not (tmp_path / "c" / "claims_regularisation.json").exists()


def test_common_rejects_bad_arguments(tmp_path: Path) -> None:
    common = load("_common")
    with pytest.raises(ValueError, match=r"--threads must be a positive int, got 0"):
        load("claims_variants").main(["--quick", "--out", str(tmp_path), "--threads", "0"])
    with pytest.raises(ValueError, match=r"data has 5 tokens, needs more than length \+ 1 = 9"):
        next(common.random_windows(torch.arange(5), 8, 2, torch.Generator()))
    assert common.steps_to_reach([(10, 0.5), (20, 0.05), (30, 0.01)], 0.05) == 20
    assert common.steps_to_reach([(10, 0.5)], 0.05) is None


# ------------------------------------------------------------------------------ compression
def test_compress_int8_is_nearly_free_and_fine_tuning_recovers_pruning(tmp_path: Path) -> None:
    r = run_quick("compress_lm", tmp_path)
    scores = r["scores"]
    base = scores["float32"]["val_bpc"]
    for kernel in ("dequantize", "int8"):  # int8 weights: within 0.02 bits per character
        assert abs(scores[f"int8 (kernel='{kernel}')"]["val_bpc"] - base) < 0.02
    assert r["lstm_matrix_bytes"]["float32"] == 4 * r["lstm_matrix_bytes"]["int8"]
    for pct, amount in (("50%", 0.5), ("80%", 0.8)):
        assert scores[f"pruned {pct}, no fine-tuning"]["lstm_sparsity"] == amount
        assert scores[f"pruned {pct} + fine-tuned"]["lstm_sparsity"] == amount
        assert scores[f"pruned {pct} gradually while fine-tuning"]["lstm_sparsity"] == amount
    int8 = r["lstm_matrix_bytes"]["int8"]
    assert scores["int8 (kernel='int8')"]["weight_bytes"]["matrices"] == int8
    one_shot = scores["pruned 80%, no fine-tuning"]["val_bpc"]
    assert one_shot > base + 0.1  # cutting 80% of the weights costs loss ...
    assert scores["pruned 50%, no fine-tuning"]["val_bpc"] < one_shot
    # ... fine-tuning with the masks recovers most of it, a gradual schedule at least as much
    tuned = scores["pruned 80% + fine-tuned"]["val_bpc"]
    assert tuned - base < 0.5 * (one_shot - base)
    assert scores["pruned 80% gradually while fine-tuning"]["val_bpc"] <= tuned
    # pruning and int8 combine: the pruned model's loss and sparsity survive quantization
    for pct, amount in (("50%", 0.5), ("80%", 0.8)):
        both = scores[f"pruned {pct} + fine-tuned, int8"]
        assert abs(both["val_bpc"] - scores[f"pruned {pct} + fine-tuned"]["val_bpc"]) < 0.02
        assert both["lstm_sparsity"] >= amount and both["weight_bytes"]["matrices"] == int8
