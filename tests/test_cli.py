"""The task/CLI contract: `lstmkit train adding` and `lstmkit evaluate`, YAML configs, one-line
errors, the estimator API, and exact resume after `kill -9`."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lstmkit.cli import _TRAIN_FLAGS, main
from lstmkit.tasks import Estimator, get_task, task_names
from lstmkit.tasks.adding import AddingRegressor, make_dataset, write_dataset
from lstmkit.train import TrainConfig, list_checkpoints
from lstmkit.train.checkpoint import load_safetensors

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--n-train", "64", "--n-val", "16", "--seq-len", "5", "--hidden-size", "4",
    "--batch-size", "16", "--no-progress", "--no-tensorboard",
]  # fmt: skip


def _train(out: Path, *extra: str) -> int:
    return main(["train", "adding", "--out", str(out), *TINY, *extra])


def _one_line_error(capsys: pytest.CaptureFixture[str], pattern: str) -> None:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert re.search(pattern, err), err


# ---------------------------------------------------------------------- train
def test_train_writes_the_contract_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _train(tmp_path, "--max-epochs", "2", "--seed", "3") == 0
    for name in ("config.json", "model.safetensors", "metrics.json", "log.csv"):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"mse", "mae", "baseline_mse", "n"} and metrics["n"] == 16
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["task"] == "adding"
    assert config["params"] == {"hidden_size": 4, "num_layers": 1, "cell": "lstm", "batch_size": 16}
    assert config["train"]["max_epochs"] == 2 and config["train"]["seed"] == 3
    with open(tmp_path / "log.csv", newline="") as f:
        val_rows = [r for r in csv.DictReader(f) if r["val_loss"]]
    assert len(val_rows) == 2
    assert float(val_rows[-1]["val_loss"]) == pytest.approx(metrics["mse"], rel=1e-5)
    assert "2 epochs, 8 steps (max_epochs)" in capsys.readouterr().out


def test_every_training_option_has_a_flag() -> None:
    assert set(_TRAIN_FLAGS) == set(TrainConfig.names())
    assert "adding" in task_names() and get_task("adding").estimator is AddingRegressor


def test_yaml_config_with_command_line_flags_winning(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "max-epochs: 1\nlr: 1e-2\nhidden_size: 6\ncell: gru\nclip_norm: 0.5\ntensorboard: false\n"
        f"out: {tmp_path / 'run'}\n"
    )
    data = ["--n-train", "64", "--n-val", "16", "--seq-len", "5", "--no-progress"]
    assert main(["train", "adding", *data, "--config", str(config), "--lr", "0.003"]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["params"]["hidden_size"] == 6 and saved["params"]["cell"] == "gru"
    assert saved["train"]["max_epochs"] == 1 and saved["train"]["clip_norm"] == 0.5
    assert saved["train"]["lr"] == 0.003  # the flag beat the file's 1e-2


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (
            "learning_rate: 0.1\n",
            r"--config .*bad\.yaml: unknown key 'learning_rate'; the keys are the flags' names: .*lr",
        ),
        ("lr: fast\n", r"--config .*bad\.yaml: key 'lr' must be a float, got 'fast'"),
        ("max_epochs: 2.5\n", r"key 'max_epochs' must be an int, got 2\.5"),
        ("deterministic: 1\n", r"key 'deterministic' must be true or false, got 1"),
        ("cell: lstmx\n", r"key 'cell' must be one of lstm, gru, rnn, got 'lstmx'"),
        ("lr: [1, 2]\n", r"key 'lr' must be a single value"),
        ("- lr\n", r"--config .*bad\.yaml must be a mapping of option names to values, got a list"),
        ("lr: 0.1\n  x: [\n", r"--config .*bad\.yaml: .* at line 2, column \d+"),
    ],
)
def test_bad_yaml_configs_give_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, pattern: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert _train(tmp_path / "run", "--config", str(config)) == 2
    _one_line_error(capsys, rf"^lstmkit train adding: error: .*{pattern}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (
            ["--lr", "abc"],
            r"^lstmkit train adding: error: argument --lr: invalid float value: 'abc'$",
        ),
        (["--optimizer", "rmsprop"], r"argument --optimizer: invalid choice: 'rmsprop'"),
        (["--bogus"], r"unrecognized arguments: --bogus"),
        (["--lr", "-1"], r"^lstmkit train adding: error: lr must be a positive float, got -1\.0$"),
        (["--hidden-size", "0"], r"hidden_size must be a positive int, got 0"),
        (["--n-train", "0"], r"--n-train must be a positive int, got 0"),
        (["--nt-asgd", "3"], r"nt_asgd .* needs optimizer='sgd', got optimizer='adam'"),
        (["--config", "/nonexistent.yaml"], r"--config /nonexistent\.yaml: cannot read it"),
    ],
)
def test_bad_flags_give_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], pattern: str
) -> None:
    try:
        code = _train(tmp_path / "run", *argv)
    except SystemExit as exc:  # argparse's own errors exit directly
        code = exc.code  # type: ignore[assignment]
    assert code == 2
    _one_line_error(capsys, pattern)


def test_missing_out_and_unknown_task(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "adding", *TINY]) == 2
    _one_line_error(
        capsys, r"--out DIR is required \(on the command line or as 'out:' in --config\)"
    )
    with pytest.raises(SystemExit) as exc:
        main(["train", "nosuchtask", "--out", "x"])
    assert exc.value.code == 2
    _one_line_error(capsys, r"argument TASK: invalid choice: 'nosuchtask'")


def test_resume_and_rerun_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train(tmp_path, "--resume") == 2
    _one_line_error(capsys, r"resume=True but .*checkpoints holds no checkpoint to resume from")
    assert _train(tmp_path, "--max-epochs", "1") == 0
    capsys.readouterr()
    assert _train(tmp_path, "--max-epochs", "1") == 2
    _one_line_error(capsys, r"already holds checkpoints of a run: pass --resume to continue it")
    assert _train(tmp_path, "--max-epochs", "1", "--resume", "--hidden-size", "5") == 2
    _one_line_error(
        capsys,
        r"^lstmkit train adding: error: cannot resume with different settings: --hidden-size is 5 here, 4 in .*run\.json$",
    )
    assert _train(tmp_path, "--resume", "--seq-len", "7", "--lr", "0.5") == 2
    _one_line_error(
        capsys, r"--lr is 0\.5 here, 0\.001 in .*run\.json; --seq-len is 7 here, 5 in .*run\.json$"
    )


def test_resume_needs_only_the_directory(tmp_path: Path) -> None:
    """The run's settings are saved in DIR/run.json: `--resume` alone continues the same run,
    and options that only bound it (here --max-epochs) may change."""
    assert _train(tmp_path, "--max-epochs", "1", "--cell", "gru", "--seed", "2") == 0
    assert main(["train", "adding", "--out", str(tmp_path), "--resume", "--max-epochs", "2"]) == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["params"]["cell"] == "gru" and config["train"]["seed"] == 2
    assert config["train"]["max_epochs"] == 2
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["task"] == "adding" and saved["args"]["max_epochs"] == 2


def test_errors_from_the_real_entry_point_have_no_traceback(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "lstmkit", "train", "adding", "--out", str(tmp_path), "--lr", "-1"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr == "lstmkit train adding: error: lr must be a positive float, got -1.0\n"


# ---------------------------------------------------------------------- evaluate
def test_evaluate_prints_the_metrics_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _train(tmp_path / "run", "--max-epochs", "1") == 0
    X, y = make_dataset(20, 7, seed=11)
    write_dataset(tmp_path / "test.safetensors", X, y)
    capsys.readouterr()
    assert (
        main(["evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "test.safetensors")]) == 0
    )
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    printed = json.loads(out)
    expected = AddingRegressor.load(tmp_path / "run").evaluate(X, y)
    assert printed == expected and printed["n"] == 20


@pytest.mark.parametrize(
    ("tensors", "pattern"),
    [
        (
            {"x": torch.zeros(3, 5, 2)},
            r"data file .*d\.safetensors has no tensor 'y'; an adding-problem file holds 'x' \(N, T, 2\) and 'y' \(N,\), found \['x'\]",
        ),
        (
            {"x": torch.zeros(3, 5, 3), "y": torch.zeros(3)},
            r"data file .*: X must have 2 features .* got shape \(3, 5, 3\)",
        ),
        (
            {"x": torch.zeros(3, 5, 2), "y": torch.zeros(4)},
            r"y must have one target per sequence of X: X has 3 sequences, y has 4 values",
        ),
        (
            {"x": torch.zeros(3, 5, 2), "y": torch.tensor([0.0, float("nan"), 1.0])},
            r"data file .*: y\[1\] is nan: not finite",
        ),
        (
            {"x": torch.zeros(3, 5, 2, dtype=torch.int64), "y": torch.zeros(3)},
            r"X must be a floating-point tensor of shape \(N, T, 2\), got a tensor of shape \(3, 5, 2\), dtype torch.int64",
        ),
    ],
)
def test_evaluate_rejects_bad_data_files(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tensors: dict[str, torch.Tensor],
    pattern: str,
) -> None:
    assert _train(tmp_path / "run", "--max-epochs", "1") == 0
    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / "d.safetensors"))
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "d.safetensors")]) == 2
    _one_line_error(capsys, rf"^lstmkit evaluate: error: .*{pattern}")


def test_evaluate_errors_for_missing_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(tmp_path), "--data", "x"]) == 2
    _one_line_error(
        capsys, r"config\.json does not exist: is .* the --out directory of a finished run\?"
    )
    assert _train(tmp_path / "run", "--max-epochs", "1") == 0
    capsys.readouterr()
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    assert (
        main(["evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "junk.safetensors")]) == 2
    )
    _one_line_error(capsys, r"data file .*junk\.safetensors is truncated or not a safetensors file")
    assert (
        main(["evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "none.safetensors")]) == 2
    )
    _one_line_error(capsys, r"data file .*none\.safetensors does not exist")


# ---------------------------------------------------------------------- the estimator API
def test_estimator_save_load_round_trip(tmp_path: Path) -> None:
    X, y = make_dataset(40, 6, seed=0)
    estimator = AddingRegressor(hidden_size=5, cell="rnn", max_epochs=1, lr=0.01, progress=False)
    with pytest.raises(
        ValueError,
        match=r"this AddingRegressor is not fitted: call fit\(\) or AddingRegressor\.load\(directory\) first",
    ):
        estimator.predict(X)
    estimator.fit(X[:32], y[:32], val=(X[32:], y[32:]))
    estimator.save(tmp_path)
    loaded = Estimator.load(tmp_path)
    assert isinstance(loaded, AddingRegressor)
    assert loaded.get_params() == estimator.get_params()
    assert loaded.train_config == estimator.train_config
    assert torch.equal(loaded.predict(X), estimator.predict(X))
    weights, metadata = load_safetensors(tmp_path / "model.safetensors")
    assert metadata == {"task": "adding"} and "rnn.weight_hh_l0" in weights


def test_estimator_rejects_bad_hyper_parameters_and_inputs() -> None:
    with pytest.raises(ValueError, match=r"cell must be one of 'lstm', 'gru', 'rnn', got 'cnn'"):
        AddingRegressor(cell="cnn")
    with pytest.raises(TypeError, match=r"unknown training option\(s\) 'epochs'"):
        AddingRegressor(epochs=3)
    with pytest.raises(ValueError, match=r"X must have shape \(N, T, 2\), got \(4, 2\)"):
        AddingRegressor().fit(torch.zeros(4, 2), torch.zeros(4))


def test_load_checks_the_files(tmp_path: Path) -> None:
    X, y = make_dataset(16, 4, seed=0)
    AddingRegressor(hidden_size=3, max_epochs=1, progress=False).fit(X, y, out=tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["params"]["hidden_size"] = 7
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"model\.safetensors does not fit the model described by config\.json"
    ):
        Estimator.load(tmp_path)
    config["task"] = "nosuchtask"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unknown task 'nosuchtask'; the tasks are adding"):
        Estimator.load(tmp_path)


# ---------------------------------------------------------------------- kill -9, then resume
def _kill_args(out: Path) -> list[str]:
    return [
        "train", "adding", "--out", str(out), "--seed", "4", "--deterministic",
        "--max-epochs", "3", "--n-train", "512", "--n-val", "32", "--seq-len", "8",
        "--hidden-size", "8", "--batch-size", "8", "--checkpoint-every", "5", "--log-every", "1",
        "--no-progress", "--no-tensorboard", "--schedule", "cosine", "--warmup-steps", "10",
        "--min-lr", "1e-4",
    ]  # fmt: skip


def test_kill_9_then_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "lstmkit", *_kill_args(killed)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list_checkpoints(killed / "checkpoints"):
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    time.sleep(0.05)  # land somewhere between checkpoints, maybe inside a write
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists(), "the run finished before the kill"

    resumed = subprocess.run(
        [*command, "--resume"], env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert main(_kill_args(tmp_path / "straight")) == 0

    a, _ = load_safetensors(killed / "model.safetensors")
    b, _ = load_safetensors(tmp_path / "straight" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    for name in ("metrics.json", "config.json"):
        assert (killed / name).read_text() == (tmp_path / "straight" / name).read_text()


def test_a_task_command_is_a_top_level_command(monkeypatch, capsys):
    """Commands registered by task modules (lstmkit tag, forecast ...) appear beside train and
    evaluate; their bad input ends in the same one-line error."""
    import lstmkit.tasks as tasks
    from lstmkit import cli

    def add_arguments(parser):
        parser.add_argument("--times", type=int, required=True)

    def run(args):
        if args.times < 0:
            raise ValueError(f"--times must be >= 0, got {args.times}")
        print("echo " * args.times)
        return 0

    monkeypatch.setattr(tasks, "_COMMANDS", {})
    tasks.register_command(tasks.Command("echo", "print echo", add_arguments, run))
    assert cli.main(["echo", "--times", "2"]) == 0
    assert capsys.readouterr().out.split() == ["echo", "echo"]
    assert cli.main(["echo", "--times", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "lstmkit echo: error: --times must be >= 0, got -1"
    with pytest.raises(ValueError, match="built in"):
        tasks.register_command(tasks.Command("train", "x", add_arguments, run))
