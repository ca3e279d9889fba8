"""The language-model task: model pieces, TBPTT state carry, decoding paths, the neural cache,
save/load, the CLI (`lstmkit train lm`, `lstmkit evaluate`, `lstmkit generate`) and bad input."""

from __future__ import annotations

import csv
import importlib
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from lstmkit.cli import main
from lstmkit.data.streams import batchify
from lstmkit.data.tokenizers import UNK
from lstmkit.tasks import Estimator
from lstmkit.tasks.language_model import (
    LanguageModel,
    LanguageModelEstimator,
    LMWindows,
    LockedDropout,
    _criterion,
    _Objective,
    embedding_dropout,
    split_validation,
    stream_nll,
)
from lstmkit.train import TBPTT

CYCLE = "abcd" * 150  # a deterministic sequence: a trained model must continue the cycle
QUICK: dict[str, Any] = {"progress": False, "tensorboard": False}


@pytest.fixture(scope="module")
def trained() -> LanguageModelEstimator:
    """A tiny character model that has learned the cycle a b c d (shared by the decoding and
    round-trip tests: training once keeps the file fast)."""
    estimator = LanguageModelEstimator(
        tokens="char", emb_size=8, hidden_size=16, num_layers=1, batch_size=4, bptt=10,
        max_epochs=6, lr=0.03, seed=0, **QUICK,
    )  # fmt: skip
    return estimator.fit(CYCLE, val=CYCLE[:80])


def _model(**options: object) -> LanguageModel:
    torch.manual_seed(0)
    sizes: dict[str, object] = {"emb_size": 6, "hidden_size": 8}
    return LanguageModel(11, **{**sizes, **options})  # type: ignore[arg-type]


# ---------------------------------------------------------------------- model pieces
def test_tied_weights_share_storage_and_are_saved_once() -> None:
    model = _model(tie_weights=True, num_layers=2)
    assert model.output_weight is model.embedding.weight
    assert model.output_weight.data_ptr() == model.embedding.weight.data_ptr()
    assert model.layers[-1].hidden_size == 6  # the top layer matches the embedding
    assert "decoder_weight" not in model.state_dict()
    with torch.no_grad():
        model.embedding.weight[3].fill_(0.5)
    assert torch.equal(model.output_weight[3], torch.full((6,), 0.5))
    untied = _model()
    assert untied.output_weight.data_ptr() != untied.embedding.weight.data_ptr()


def test_tied_weights_with_projection_and_their_errors() -> None:
    model = _model(tie_weights=True, projection=6, hidden_size=12)
    assert model.layers[-1].hidden_size == 12 and model.feature_size == 6
    with pytest.raises(ValueError, match=r"tie_weights needs features of emb_size = 6 .* have 4"):
        _model(tie_weights=True, projection=4)
    with pytest.raises(ValueError, match="tie_weights needs the full softmax"):
        _model(tie_weights=True, adaptive_cutoffs=[4])


@pytest.mark.parametrize("cutoffs", [None, [3, 7]])
def test_log_probs_are_normalised_and_match_token_nll(cutoffs: list[int] | None) -> None:
    model = _model(adaptive_cutoffs=cutoffs, hidden_size=32).eval()
    tokens = torch.randint(0, 11, (5, 3))
    targets = torch.randint(0, 11, (5, 3))
    features, _, _, _ = model.features(tokens)
    log_probs = model.log_probs(features)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(5, 3), atol=1e-5)
    expected = -log_probs.gather(-1, targets[..., None])[..., 0]
    assert torch.allclose(model.token_nll(features, targets), expected, atol=1e-5)


def test_cell_variants_and_gru() -> None:
    gru = _model(cell="gru", num_layers=2, cell_options={"layer_norm": True})
    assert type(gru.layers[0]).__name__ == "GRU"
    assert any("ln" in name or "norm" in name for name, _ in gru.layers[0].named_parameters())
    lstm = _model(cell_options={"proj_size": 4}, num_layers=2)
    assert lstm.layers[1].input_size == 4 and lstm.feature_size == 4
    log_probs, state = gru(torch.randint(0, 11, (4, 2)))
    assert log_probs.shape == (4, 2, 11) and len(state) == 2
    with pytest.raises(ValueError, match="cell_options may not set 'bidirectional'"):
        _model(cell_options={"bidirectional": True})
    with pytest.raises(TypeError, match="cell_options must be a dict"):
        _model(cell_options=["layer_norm"])


def test_weight_drop_reaches_every_layer() -> None:
    model = _model(num_layers=3, weight_drop=0.4)
    assert [layer.weight_drop for layer in model.layers] == [0.4, 0.4, 0.4]


def test_locked_dropout_shares_one_mask_over_time() -> None:
    dropout = LockedDropout(0.5).train()
    out = dropout(torch.ones(7, 3, 20))
    assert torch.equal(out, out[:1].expand_as(out))  # the same mask at every step
    assert set(out.unique().tolist()) <= {0.0, 2.0} and (out == 0).any()
    assert torch.equal(dropout.eval()(torch.ones(2, 2, 2)), torch.ones(2, 2, 2))


def test_embedding_dropout_drops_whole_word_types() -> None:
    embedding = torch.nn.Embedding(50, 4)
    # every word type of the vocabulary three times, scattered over a (T, B) batch
    tokens = torch.arange(50).repeat(3)[torch.randperm(150)].view(15, 10)
    out = embedding_dropout(embedding, tokens, 0.5, training=True)
    dropped = []
    for token in range(50):
        rows = out[tokens == token]
        assert torch.equal(rows, rows[:1].expand_as(rows))  # dropped or kept together
        scale = rows[0] / embedding.weight[token]
        if torch.allclose(scale, torch.zeros(4)):
            dropped.append(token)
        else:
            assert torch.allclose(scale, torch.full((4,), 2.0)), token
    # both happen: at p = 0.5, 50 types are all kept or all dropped with probability 2**-49
    assert 0 < len(dropped) < 50
    assert torch.equal(embedding_dropout(embedding, tokens, 0.5, training=False), embedding(tokens))


def test_ar_and_tar_terms_of_the_objective() -> None:
    model = _model(dropout=0.3)
    objective = _Objective(model, alpha=2.0, beta=3.0)
    x = torch.stack([torch.randint(0, 11, (6, 2)), torch.randint(0, 11, (6, 2))], dim=-1)
    torch.manual_seed(1)
    out, _ = objective.train()(x)
    torch.manual_seed(1)  # the same dropout masks
    features, raw, dropped, _ = model.train().features(x[..., 0])
    assert torch.allclose(out[..., 0], model.token_nll(features, x[..., 1]))
    assert torch.allclose(out[..., 1], 2.0 * dropped.pow(2).mean(-1))
    assert torch.equal(out[0, :, 2], torch.zeros(2))
    assert torch.allclose(out[1:, :, 2], 3.0 * (raw[1:] - raw[:-1]).pow(2).mean(-1))
    loss, count = _criterion(out, x[..., 1])
    expected = out[..., 0].mean() + out[..., 1].mean() + out[1:, :, 2].mean()
    assert torch.allclose(loss, expected) and count == 12
    evaluation, _ = objective.eval()(x)
    assert torch.equal(evaluation[..., 1:], torch.zeros(6, 2, 2))  # validation = plain NLL


# ---------------------------------------------------------------------- TBPTT state carry
def test_two_windows_with_carried_state_equal_one_window_over_both() -> None:
    model = _model(num_layers=2).eval()
    tokens = torch.randint(0, 11, (9, 3))
    whole, _ = model(tokens)
    first, state = model(tokens[:4])
    second, _ = model(tokens[4:], state)
    assert torch.allclose(torch.cat([first, second]), whole, atol=1e-6)
    fresh, _ = model(tokens[4:])
    assert not torch.allclose(fresh, whole[4:], atol=1e-3)  # the carried state matters


def test_tbptt_objective_carries_the_state_across_windows() -> None:
    model = _model(num_layers=2).eval()
    data = torch.randint(0, 11, (13, 2))
    objective = _Objective(model, 0.0, 0.0).eval()
    tbptt = TBPTT(_criterion)
    total, count = 0.0, 0
    for batch in LMWindows(data, 4, random_length=False, seed=0):
        loss, n = tbptt(objective, batch)
        total, count = total + float(loss.detach()) * n, count + n
    with torch.no_grad():
        features, _, _, _ = model.features(data[:-1])
        whole = model.token_nll(features, data[1:])
    assert count == whole.numel() and math.isclose(total / count, float(whole.mean()), rel_tol=1e-5)


def test_windows_cover_the_stream_and_replay_per_epoch() -> None:
    data = batchify(torch.arange(200), 4)
    windows = LMWindows(data, 7, random_length=True, seed=5)
    inputs = torch.cat([x[..., 0] for x, _ in windows])
    assert torch.equal(inputs, data[:-1])
    windows.set_epoch(3)
    lengths = [x.shape[0] for x, _ in windows]
    windows.set_epoch(3)
    assert [x.shape[0] for x, _ in windows] == lengths  # a resumed epoch replays its windows
    with pytest.raises(TypeError, match="random_length"):
        len(windows)
    assert len(LMWindows(data, 7, random_length=False, seed=0)) == 7


def test_evaluation_does_not_depend_on_the_window_length() -> None:
    model = _model()
    data = batchify(torch.randint(0, 11, (60,)), 3)
    short, n_short = stream_nll(model, data, 3)
    long, n_long = stream_nll(model, data, 100)
    assert n_short == n_long == 57 and math.isclose(short, long, rel_tol=1e-5)


# ---------------------------------------------------------------------- neural cache
def test_neural_cache_with_lambda_zero_is_the_model() -> None:
    model = _model()
    data = batchify(torch.randint(0, 11, (40,)), 2)
    plain, _ = stream_nll(model, data, 5)
    cached, _ = stream_nll(model, data, 5, cache_size=10, cache_lambda=0.0)
    assert math.isclose(plain, cached, rel_tol=1e-5)


def test_neural_cache_helps_on_repeated_text() -> None:
    # An untrained model is near uniform; the cache remembers which token followed a similar
    # state, and a periodic text repeats exactly.
    model = _model()
    data = batchify(torch.tensor([2, 9, 4, 7, 1] * 20), 1)
    plain, n = stream_nll(model, data, 10)
    cached, _ = stream_nll(model, data, 10, cache_size=50, cache_theta=1.0, cache_lambda=0.5)
    assert cached / n < plain / n - 0.3


# ---------------------------------------------------------------------- the trained model
def test_training_learns_the_cycle(trained: LanguageModelEstimator) -> None:
    metrics = trained.evaluate(CYCLE[:200])
    assert set(metrics) == {"loss", "perplexity", "tokens", "bpc"}
    assert metrics["perplexity"] < 1.5  # 4 symbols: chance is 4 (or more)
    assert math.isclose(metrics["bpc"], metrics["loss"] / math.log(2))
    assert math.isclose(metrics["perplexity"], math.exp(metrics["loss"]))
    history = trained.fit_result_.history  # type: ignore[union-attr]
    assert history[-1]["val_loss"] < history[0]["val_loss"]


def test_every_decoding_path_gives_valid_sequences(trained: LanguageModelEstimator) -> None:
    assert trained.generate("abc", max_new_tokens=9, greedy=True) == "dabcdabcd"
    tokenizer = trained.tokenizer_
    assert tokenizer is not None
    vocabulary = set(tokenizer.itos)  # type: ignore[attr-defined]
    for options in (
        {"temperature": 1.0},
        {"temperature": 0.5},
        {"top_k": 2},
        {"top_p": 0.9},
        {"temperature": 0.7, "top_k": 3, "top_p": 0.8},
    ):
        text = trained.generate("ab", max_new_tokens=12, **options)
        assert len(text) == 12 and set(text) <= vocabulary, options
    assert trained.generate("ab", max_new_tokens=8, top_k=1) == "cdabcdab"  # top-1 is greedy
    pieces = list(trained.stream("a", max_new_tokens=5, greedy=True))
    assert pieces == ["b", "c", "d", "a", "b"]  # one piece per token, as they come


def test_same_seed_same_generation(trained: LanguageModelEstimator) -> None:
    first = trained.generate("a", max_new_tokens=30, temperature=2.0, seed=7)
    assert trained.generate("a", max_new_tokens=30, temperature=2.0, seed=7) == first
    others = {trained.generate("a", max_new_tokens=30, temperature=2.0, seed=s) for s in range(4)}
    assert len(others) > 1


def test_prompt_with_unknown_characters_reads_as_unk(trained: LanguageModelEstimator) -> None:
    tokenizer = trained.tokenizer_
    assert tokenizer is not None and tokenizer.encode("aΩ") == [tokenizer.encode("a")[0], 0]
    assert torch.equal(trained.predict("xyz"), trained.predict("Ω!?"))  # all <unk>
    text = trained.generate("ab Ω", max_new_tokens=6, greedy=True)
    assert len(text) == 6 and UNK not in text


def test_save_load_round_trip(trained: LanguageModelEstimator, tmp_path: Path) -> None:
    trained.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {
        "model.safetensors", "config.json", "tokenizer.json"
    }  # fmt: skip
    for loaded in (LanguageModelEstimator.load(tmp_path), Estimator.load(tmp_path)):
        assert isinstance(loaded, LanguageModelEstimator)
        for seed in (0, 3):
            expected = trained.generate("dab", max_new_tokens=25, temperature=1.5, seed=seed)
            assert loaded.generate("dab", max_new_tokens=25, temperature=1.5, seed=seed) == expected
        assert loaded.evaluate(CYCLE[:100]) == trained.evaluate(CYCLE[:100])


# ---------------------------------------------------------------------- words, AWD options
def test_word_model_with_awd_regularisation_and_cache() -> None:
    text = "the cat sat on the mat\nthe dog sat on the log\n" * 12
    estimator = LanguageModelEstimator(
        tokens="word", emb_size=8, hidden_size=12, num_layers=2, tie_weights=True,
        dropout=0.2, dropout_h=0.2, dropout_i=0.1, dropout_e=0.1, weight_drop=0.2,
        alpha=1.0, beta=1.0, batch_size=4, bptt=6, random_bptt=True, cache_size=20,
        max_epochs=2, lr=0.01, **QUICK,
    )  # fmt: skip
    estimator.fit(text, val=(text[:200],))
    metrics = estimator.evaluate(text[:200])
    assert set(metrics) == {"loss", "perplexity", "tokens"}  # no bpc for words
    plain = estimator.evaluate(text[:200], cache_size=0)
    assert metrics["tokens"] == plain["tokens"] and metrics["loss"] != plain["loss"]
    continuation = estimator.generate("the cat", max_new_tokens=5, greedy=True)
    assert continuation.startswith(" ")  # a word after "cat" is separated by a space


def test_random_window_lengths_scale_the_learning_rate_by_seq_len_over_bptt(
    tmp_path: Path,
) -> None:
    """AWD-LSTM: each update's learning rate is lr * seq_len / bptt; log.csv records the rate
    each update used, and fixed windows keep the plain rate."""
    text = CYCLE[:400]
    options: dict[str, Any] = {
        "emb_size": 4, "hidden_size": 8, "num_layers": 1, "batch_size": 2, "bptt": 8,
        "optimizer": "sgd", "lr": 0.5, "max_epochs": 1, "log_every": 1, **QUICK,
    }  # fmt: skip
    LanguageModelEstimator(random_bptt=True, **options).fit(text, out=tmp_path / "random")
    with open(tmp_path / "random" / "log.csv", newline="") as f:
        rates = [float(row["lr"]) for row in csv.DictReader(f) if row["lr"]]
    windows = LMWindows(torch.zeros(200, 2), 8, random_length=True, seed=0)
    lengths = [w.seq_len for w in windows.windows]
    assert len(set(lengths)) > 1
    assert rates == pytest.approx([0.5 * n / 8 for n in lengths])
    LanguageModelEstimator(random_bptt=False, **options).fit(text, out=tmp_path / "fixed")
    with open(tmp_path / "fixed" / "log.csv", newline="") as f:
        assert {float(row["lr"]) for row in csv.DictReader(f) if row["lr"]} == {0.5}


def test_restore_best_ends_with_the_best_epochs_model(tmp_path: Path) -> None:
    """With ``restore_best`` the estimator (and the model it saves) is the one of the best
    validation check, not of the last epoch: its validation loss is the history's minimum."""
    text = "the cat sat on the mat. a dog ran. " * 20
    estimator = LanguageModelEstimator(
        emb_size=4, hidden_size=8, num_layers=1, batch_size=2, bptt=8, lr=0.3, max_epochs=5,
        restore_best=True, **QUICK,
    )  # fmt: skip
    estimator.fit(text[:500], val=text[500:700], out=tmp_path)
    result = estimator.fit_result_
    assert result is not None and result.restored
    losses = [h["val_loss"] for h in result.history]
    assert result.best_epoch == losses.index(min(losses)) + 1 < len(losses)  # not the last
    assert estimator.evaluate(text[500:700])["loss"] == pytest.approx(min(losses), rel=1e-5)
    loaded = LanguageModelEstimator.load(tmp_path)
    assert loaded.evaluate(text[500:700])["loss"] == pytest.approx(min(losses), rel=1e-5)


def test_resume_gives_the_weights_of_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lstmkit.tasks.language_model as lm_module

    updates: list[int] = []
    criterion = lm_module._criterion

    def counted(output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int]:
        if torch.is_grad_enabled():
            updates.append(1)
        return criterion(output, target)

    monkeypatch.setattr(lm_module, "_criterion", counted)
    text = CYCLE[:240]
    options: dict[str, Any] = {
        "emb_size": 4, "hidden_size": 8, "num_layers": 1, "batch_size": 2, "bptt": 8,
        "random_bptt": True, "dropout": 0.1, "lr": 0.01, **QUICK,
    }  # fmt: skip
    straight = LanguageModelEstimator(max_epochs=2, **options).fit(text, out=tmp_path / "a")
    both_epochs = len(updates)
    updates.clear()
    LanguageModelEstimator(max_epochs=1, **options).fit(text, out=tmp_path / "b")
    first_epoch = len(updates)
    updates.clear()
    resumed = LanguageModelEstimator(max_epochs=2, **options)
    resumed.fit(text, out=tmp_path / "b", resume=True)
    # training both epochs again from the start would give the same weights: count the
    # updates to see that the resumed run made only the second epoch's
    assert 0 < first_epoch < both_epochs and len(updates) == both_epochs - first_epoch
    for name, value in straight._lm().state_dict().items():
        assert torch.equal(value, resumed._lm().state_dict()[name]), name


# ---------------------------------------------------------------------- bad input
def test_bad_input_to_the_estimator() -> None:
    with pytest.raises(ValueError, match="training text is empty"):
        LanguageModelEstimator(**QUICK).fit("  \n")
    with pytest.raises(ValueError, match=r"vocabulary too small: .* 1 distinct characters"):
        LanguageModelEstimator(**QUICK).fit("aaaaaaaa")
    with pytest.raises(ValueError, match="tokens must be one of 'char', 'word'"):
        LanguageModelEstimator(tokens="bytes")
    with pytest.raises(ValueError, match="dropout_h must be a float in"):
        LanguageModelEstimator(dropout_h=1.5)
    with pytest.raises(ValueError, match="alpha must be a finite float >= 0, got -1"):
        LanguageModelEstimator(alpha=-1)
    with pytest.raises(ValueError, match="adaptive_cutoffs must increase strictly"):
        LanguageModelEstimator(adaptive_cutoffs=[5, 3])
    with pytest.raises(ValueError, match="not fitted"):
        LanguageModelEstimator(**QUICK).generate("a")


def test_bad_input_to_a_trained_model(trained: LanguageModelEstimator) -> None:
    with pytest.raises(ValueError, match="text has 1 token"):
        trained.evaluate("a")
    with pytest.raises(TypeError, match="prompt must be a str, got 3"):
        trained.generate(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int, got 0"):
        trained.generate("a", max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        trained.generate("a", top_p=1.5)


def test_split_validation_cuts_at_a_line_break() -> None:
    train, valid = split_validation("one two\nthree four\nfive six\nseven\n", 0.3)
    assert train + valid == "one two\nthree four\nfive six\nseven\n"
    assert train.endswith("\n") and valid == "seven\n"
    with pytest.raises(ValueError, match="too short to hold out 50%"):
        split_validation("a\n", 0.5)


# ---------------------------------------------------------------------- command line
def _one_line_error(capsys: pytest.CaptureFixture[str], pattern: str) -> None:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert re.search(pattern, err), err


def test_cli_train_evaluate_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "train.txt"
    data.write_text(CYCLE)
    out = tmp_path / "run"
    argv = [
        "train", "lm", "--data", str(data), "--out", str(out), "--tokens", "char",
        "--emb-size", "8", "--hidden-size", "16", "--num-layers", "1", "--batch-size", "4",
        "--bptt", "10", "--max-epochs", "6", "--lr", "0.03", "--no-progress", "--no-tensorboard",
    ]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["perplexity"] < 1.5 and "bpc" in metrics
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(data)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"loss", "perplexity", "tokens", "bpc"} and printed["perplexity"] < 1.5
    assert main(["generate", str(out), "--prompt", "abc", "--max-new-tokens", "8", "--greedy"]) == 0
    assert capsys.readouterr().out == "abcdabcdabc\n"
    assert (
        main(["generate", str(out), "--prompt", "ab", "--max-new-tokens", "5", "--top-k", "2"]) == 0
    )
    assert re.fullmatch(r"ab[abcd]{5}\n", capsys.readouterr().out)


def test_cli_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["train", "lm", "--data", str(empty), "--out", str(tmp_path / "a")]) == 2
    _one_line_error(capsys, r"empty\.txt is empty")
    single = tmp_path / "single.txt"
    single.write_text("a" * 40)
    assert main(["train", "lm", "--data", str(single), "--out", str(tmp_path / "b")]) == 2
    _one_line_error(capsys, "vocabulary too small")
    assert main(["train", "lm", "--out", str(tmp_path / "c")]) == 2
    _one_line_error(capsys, "--data FILE is required")
    assert main(["generate", str(tmp_path / "missing")]) == 2
    _one_line_error(capsys, "missing is not a directory")


# ---------------------------------------------------------------------- experiments
@pytest.mark.parametrize("name", ["lm_shakespeare", "lm_ptb"])
def test_experiment_quick_mode_beats_the_unigram_baseline(name: str, tmp_path: Path) -> None:
    experiments = Path(__file__).resolve().parents[1] / "experiments"
    sys.path.insert(0, str(experiments))
    try:
        module = importlib.import_module(name)
        summary = module.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    finally:
        sys.path.remove(str(experiments))
    assert summary["quick"] and summary["met"] is False  # a smoke run claims no target
    assert summary["valid"]["loss"] < summary["unigram_valid_nats"] - 0.5
    assert summary["val_history"][-1] < summary["val_history"][0]
    assert (tmp_path / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.skipif(
    not (Path(__file__).resolve().parents[2] / "shared" / "data" / "ptb").is_dir(),
    reason="needs ../shared/data/ptb",
)
def test_ptb_word_model_beats_the_unigram_model_after_two_short_epochs(tmp_path: Path) -> None:
    """Two short epochs over the start of real PTB (about 600 updates): far from the target,
    but clearly below the perplexity of the unigram distribution, i.e. it uses the context."""
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "ptb"
    train = (root / "ptb.train.txt").read_text()[:600_000]
    valid = (root / "ptb.valid.txt").read_text()[:60_000]
    estimator = LanguageModelEstimator(
        tokens="word", emb_size=128, hidden_size=128, tie_weights=True, batch_size=20,
        bptt=20, lr=3e-3, clip_norm=5.0, max_epochs=2, **QUICK,
    )  # fmt: skip
    estimator.fit(train, val=valid, out=tmp_path)
    tokenizer = estimator.tokenizer_
    assert tokenizer is not None
    counts = torch.bincount(tokenizer.encode_tensor(train), minlength=tokenizer.vocab_size)
    unigram = (counts.double() + 1).log() - (counts.sum() + tokenizer.vocab_size).double().log()
    valid_ids = tokenizer.encode_tensor(valid)
    unigram_perplexity = math.exp(-float(unigram[valid_ids].mean()))
    assert estimator.evaluate(valid)["perplexity"] < 0.8 * unigram_perplexity
