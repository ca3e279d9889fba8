"""Checkpoints: exact round trips, atomic writes, corruption detection with fallback to the
previous checkpoint, and exact resume of an interrupted fit (TBPTT state, RNG, NT-ASGD)."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lstmkit
from lstmkit.train import (
    TBPTT,
    CheckpointError,
    fit,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    split_windows,
)
from lstmkit.train.checkpoint import (
    capture_rng,
    load_safetensors,
    pack,
    restore_rng,
    save_safetensors_atomic,
    unpack,
    write_json_atomic,
)

QUIET = {"progress": False, "tensorboard": False}


def _trained_adam() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = lstmkit.LSTM(3, 4, num_layers=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.95))
    for _ in range(3):
        out, _ = model(torch.randn(5, 2, 3))
        out.square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


# ---------------------------------------------------------------------- pack / unpack
def test_pack_unpack_round_trip_keeps_types_and_tensors() -> None:
    value = {
        "ints": {0: torch.arange(3), 7: {"step": torch.tensor(4.0)}},
        "tuple": (1, 2.5, "a", None, True),
        "floats": [float("inf"), -0.0, 1e-300],
        "$odd": "key",
    }
    tensors: dict[str, torch.Tensor] = {}
    data = pack(value, tensors)
    data = json.loads(json.dumps(data))  # it really is JSON
    back = unpack(data, tensors)
    assert set(back["ints"]) == {0, 7}
    assert torch.equal(back["ints"][0], torch.arange(3))
    assert torch.equal(back["ints"][7]["step"], torch.tensor(4.0))
    assert back["tuple"] == (1, 2.5, "a", None, True) and isinstance(back["tuple"], tuple)
    assert back["floats"][0] == float("inf") and back["floats"][2] == 1e-300
    assert back["$odd"] == "key"
    with pytest.raises(TypeError, match=r"cannot store object at /x in a checkpoint"):
        pack({"x": object()}, {})


# ---------------------------------------------------------------------- round trips
def test_checkpoint_round_trip_is_exact(tmp_path: Path) -> None:
    model, optimizer = _trained_adam()
    rng = capture_rng()
    path = save_checkpoint(
        tmp_path,
        1,
        model=model.state_dict(),
        state={"optimizer": optimizer.state_dict(), "epoch": 3},
        rank_state={"rng": rng},
    )
    expected = (torch.rand(4), np.random.rand(3), random.random())

    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    loaded = load_checkpoint(path)
    assert loaded.index == 1 and loaded.world_size == 1 and loaded.state["epoch"] == 3
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model[name], tensor)
    fresh = lstmkit.LSTM(3, 4, num_layers=2)
    fresh.load_state_dict(loaded.model)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1.0)
    fresh_opt.load_state_dict(loaded.state["optimizer"])
    saved, restored = optimizer.state_dict(), fresh_opt.state_dict()
    assert saved["param_groups"] == restored["param_groups"]  # lr, betas (a tuple), ...
    for pid, entries in saved["state"].items():
        for key, tensor in entries.items():
            assert torch.equal(restored["state"][pid][key], tensor)
    restore_rng(loaded.ranks[0]["rng"])
    again = (torch.rand(4), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_only_the_last_checkpoints_are_kept_and_leftovers_are_ignored(tmp_path: Path) -> None:
    for index in range(1, 5):
        save_checkpoint(tmp_path, index, model={"w": torch.full((2,), float(index))}, state={})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000003", "ckpt-00000004"]
    # a write killed half-way leaves a hidden temporary directory: never loaded, later removed
    (tmp_path / ".tmp-ckpt-00000005").mkdir()
    (tmp_path / ".tmp-ckpt-00000005" / "model.safetensors").write_bytes(b"partial")
    found = latest_checkpoint(tmp_path)
    assert found is not None and found.index == 4
    save_checkpoint(tmp_path, 5, model={"w": torch.zeros(2)}, state={}, keep=3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt-00000003", "ckpt-00000004", "ckpt-00000005"]


def test_no_checkpoint_gives_none(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None


# ---------------------------------------------------------------------- corruption
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_json(path: Path) -> None:
    document = json.loads(path.read_text())
    document["state"]["epoch"] = 99
    path.write_text(json.dumps(document))


DAMAGE: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "truncated weights": ("model.safetensors", _truncate, r"model\.safetensors is corrupt or truncated: sha256"),
    "flipped byte": ("state.safetensors", _flip_byte, r"state\.safetensors is corrupt or truncated: sha256"),
    "missing rank file": ("rank-0.safetensors", lambda p: p.unlink(), r"rank-0\.safetensors is missing"),
    "truncated json": ("checkpoint.json", _truncate, r"checkpoint\.json is not valid JSON"),
    "edited json": ("checkpoint.json", _edit_json, r"checkpoint\.json fails its digest check"),
}  # fmt: skip


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_latest_checkpoint_is_reported_and_the_previous_one_loads(
    tmp_path: Path, damage: str
) -> None:
    for index in (1, 2):
        save_checkpoint(
            tmp_path, index, model={"w": torch.full((3,), float(index))}, state={"epoch": index}
        )
    name, corrupt, message = DAMAGE[damage]
    corrupt(tmp_path / "ckpt-00000002" / name)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "ckpt-00000002")
    with pytest.warns(RuntimeWarning, match=rf"skipping a damaged checkpoint: .*{message}"):
        found = latest_checkpoint(tmp_path)
    assert found is not None and found.index == 1 and found.state["epoch"] == 1
    assert torch.equal(found.model["w"], torch.ones(3))


def test_when_every_checkpoint_is_damaged_the_error_lists_them(tmp_path: Path) -> None:
    for index in (1, 2):
        save_checkpoint(tmp_path, index, model={"w": torch.zeros(1)}, state={})
        _truncate(tmp_path / f"ckpt-{index:08d}" / "model.safetensors")
    with pytest.raises(
        CheckpointError, match=r"no loadable checkpoint in .*ckpt-00000002.*ckpt-00000001"
    ):
        latest_checkpoint(tmp_path)


def test_atomic_file_helpers(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    write_json_atomic(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    save_safetensors_atomic(tmp_path / "w.safetensors", {"w": torch.arange(4.0)}, {"k": "v"})
    tensors, metadata = load_safetensors(tmp_path / "w.safetensors")
    assert torch.equal(tensors["w"], torch.arange(4.0)) and metadata == {"k": "v"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "w.safetensors"]
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(
        CheckpointError, match=r"bad\.safetensors is truncated or not a safetensors file"
    ):
        load_safetensors(tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match=r"missing\.safetensors does not exist"):
        load_safetensors(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------------- exact resume of fit
class Crash(Exception):
    pass


class CrashAfter:
    """Wraps a loss or criterion and raises at its ``at``-th training call (a simulated kill)."""

    def __init__(self, inner: Callable[..., Any], at: int | None) -> None:
        self.inner, self.at, self.calls = inner, at, 0

    def __call__(self, *args: Any) -> Any:
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.at:
                raise Crash
        return self.inner(*args)


class DropTagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = lstmkit.LSTM(1, 8)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        out, state = self.rnn(x, state)
        return self.head(self.drop(out)), state


def _tbptt_run(out: Path, crash_at: int | None, resume: bool = False) -> tuple[nn.Module, int]:
    """The trained model and the number of training calls of the loss made in this run."""
    g = torch.Generator().manual_seed(0)
    stream = torch.randn(60, 4, 1, generator=g)
    target = torch.roll(stream, 2, dims=0)
    windows = [tuple(w) for w in split_windows([stream, target], 10)]
    torch.manual_seed(0)
    model = DropTagger()
    criterion = CrashAfter(F.mse_loss, crash_at)
    objective = TBPTT(criterion, k1=4, k2=7)
    fit(
        model,
        windows,
        loss=objective,
        val_data=windows[:2],
        max_epochs=3,
        schedule="cosine",
        warmup_steps=3,
        lr=0.01,
        checkpoint_every=4,
        log_every=1,
        seed=5,
        out=out,
        resume=resume,
        **QUIET,
    )
    return model, criterion.calls


def _loader_run(out: Path, crash_at: int | None, resume: bool = False) -> tuple[nn.Module, int]:
    """The trained model and the number of training calls of the loss made in this run."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 3, generator=g)
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8, shuffle=True)
    val = DataLoader(TensorDataset(x[:16], x[:16].sum(1, keepdim=True)), batch_size=8)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Dropout(0.3), nn.Linear(16, 1))

    def mse(m: nn.Module, b: Any) -> torch.Tensor:
        return F.mse_loss(m(b[0]), b[1])

    loss = CrashAfter(mse, crash_at)
    fit(
        model,
        data,
        loss=loss,
        val_data=val,
        optimizer="sgd",
        momentum=0.9,
        lr=0.01,
        nt_asgd=1,
        schedule="step",
        decay_after=2,
        max_epochs=5,
        checkpoint_every=4,
        log_every=1,
        seed=5,
        out=out,
        resume=resume,
        **QUIET,
    )
    return model, loss.calls


def _log_without_time(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(f)]


@pytest.mark.parametrize(("run", "crash_at"), [(_tbptt_run, 26), (_loader_run, 22)])
def test_an_interrupted_fit_resumes_exactly(
    tmp_path: Path, run: Callable[..., tuple[nn.Module, int]], crash_at: int
) -> None:
    reference, reference_calls = run(tmp_path / "reference", None)
    with pytest.raises(Crash):
        run(tmp_path / "resumed", crash_at)
    resumed, resumed_calls = run(tmp_path / "resumed", None, resume=True)
    # it continued from a checkpoint at most checkpoint_every=4 updates before the crash (one
    # loss call per update), not from the start: the same result either way, so count the calls
    done = crash_at - 1
    assert reference_calls - done <= resumed_calls <= reference_calls - done + 4
    for (name, a), b in zip(
        reference.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert _log_without_time(tmp_path / "resumed" / "log.csv") == _log_without_time(
        tmp_path / "reference" / "log.csv"
    )


def test_resume_falls_back_past_a_corrupt_checkpoint_and_still_ends_identically(
    tmp_path: Path,
) -> None:
    reference, reference_calls = _loader_run(tmp_path / "reference", None)
    with pytest.raises(Crash):
        _loader_run(tmp_path / "resumed", 30)
    newest = list_checkpoints(tmp_path / "resumed" / "checkpoints")[-1]
    _truncate(newest / "state.safetensors")
    with pytest.warns(RuntimeWarning, match=r"skipping a damaged checkpoint: .*state\.safetensors"):
        resumed, resumed_calls = _loader_run(tmp_path / "resumed", None, resume=True)
    # 29 updates were done; the newest checkpoint (at most 4 updates before) is damaged, so the
    # run continued from the one 4 updates before that: neither from it nor from the start
    done = 29
    assert reference_calls - done + 4 < resumed_calls <= reference_calls - done + 8
    for a, b in zip(reference.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resume_refuses_changed_settings_and_missing_checkpoints(tmp_path: Path) -> None:
    data = [(torch.randn(4, 3), torch.randn(4, 1))]

    def mse(m: nn.Module, b: Any) -> torch.Tensor:
        return F.mse_loss(m(b[0]), b[1])

    with pytest.raises(ValueError, match=r"resume=True but .*checkpoints holds no checkpoint"):
        fit(nn.Linear(3, 1), data, loss=mse, out=tmp_path, resume=True, **QUIET)
    fit(nn.Linear(3, 1), data, loss=mse, out=tmp_path, max_epochs=1, meta={"h": 3}, **QUIET)
    with pytest.raises(ValueError, match=r"already holds checkpoints of a run: pass resume=True"):
        fit(nn.Linear(3, 1), data, loss=mse, out=tmp_path, **QUIET)
    with pytest.raises(
        ValueError,
        match=r"the run's settings differ \(lr: 0\.1 here, 0\.001 in the checkpoint; h: 4 here, 3 in the checkpoint\)",
    ):
        fit(
            nn.Linear(3, 1),
            data,
            loss=mse,
            out=tmp_path,
            resume=True,
            lr=0.1,
            meta={"h": 4},
            **QUIET,
        )
    # bounds of the run may change: train one more epoch (one more update, not two from the start)
    updates: list[int] = []

    def counted(m: nn.Module, b: Any) -> torch.Tensor:
        if torch.is_grad_enabled():
            updates.append(1)
        return mse(m, b)

    result = fit(
        nn.Linear(3, 1),
        data,
        loss=counted,
        out=tmp_path,
        resume=True,
        max_epochs=2,
        meta={"h": 3},
        **QUIET,
    )
    assert result.epochs == 2 and result.steps == 2 and len(updates) == 1
