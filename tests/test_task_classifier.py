"""The sequence classifier: pooling and attention exactness, padding invariance (flat, CNN-LSTM
and hierarchical), learning text / numeric / multi-label tasks, save/load round trips, the
command line (train, predict, evaluate) and its one-line errors, and the experiments' quick
modes."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from lstmkit.cli import main
from lstmkit.tasks import Estimator
from lstmkit.tasks.classifier import (
    PAD,
    UNK,
    AdditiveAttention,
    ClassifierModel,
    Collate,
    SequenceClassifier,
    build_vocabulary,
    plot_attention,
    read_csv_table,
    split_sentences,
    tokenize,
)

ROOT = Path(__file__).resolve().parents[1]
QUIET: dict[str, Any] = {"progress": False, "tensorboard": False}
POS = ["good", "great", "fine", "nice"]
NEG = ["bad", "awful", "poor", "sad"]
FILLER = ["the", "movie", "was", "a", "plot", "and"]


def _texts(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Texts of filler words with one sentiment word at a random place: the label is that
    word's class, so a model must find the word wherever it stands."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        words = list(rng.choice(FILLER, size=int(rng.integers(2, 7))))
        label = "pos" if i % 2 == 0 else "neg"
        words.insert(
            int(rng.integers(0, len(words) + 1)), str(rng.choice(POS if i % 2 == 0 else NEG))
        )
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def _one_line_error(capsys: pytest.CaptureFixture[str], pattern: str) -> None:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert re.search(pattern, err), err


# ---------------------------------------------------------------------- text helpers
def test_tokenizers_sentences_and_vocabulary() -> None:
    assert tokenize("The  cat\tSAT.") == ["the", "cat", "sat."]
    assert tokenize("Ab c", "char", lowercase=False) == ["A", "b", "c"]
    assert split_sentences("One two. Three!  Four?\nFive\n\nsix") == [
        "One two.",
        "Three!",
        "Four?",
        "Five",
        "six",
    ]
    vocabulary = build_vocabulary([["b", "a", "b"], ["c", "a", "b"]], min_count=2)
    assert vocabulary == [PAD, UNK, "b", "a"]
    assert build_vocabulary([["x", "y", "z"]], max_size=4) == [PAD, UNK, "x", "y"]
    with pytest.raises(ValueError, match=r"tokenizer must be one of 'whitespace', 'char'"):
        tokenize("a", "bpe")


def test_additive_attention_is_a_masked_softmax_of_the_context_scores() -> None:
    attention = AdditiveAttention(4, 3)
    h = torch.randn(2, 5, 4)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    pooled, weights = attention(h, mask)
    scores = attention.context(torch.tanh(attention.project(h))).squeeze(-1)
    expected = torch.softmax(scores[1, :3], dim=0)
    torch.testing.assert_close(weights[1, :3], expected)
    assert torch.equal(weights[1, 3:], torch.zeros(2))  # padding gets exactly nothing
    torch.testing.assert_close(weights.sum(1), torch.ones(2))
    torch.testing.assert_close(pooled[1], (expected[:, None] * h[1, :3]).sum(0))


# ---------------------------------------------------------------------- padding invariance
def _built(estimator: SequenceClassifier) -> ClassifierModel:
    model = estimator.build_model().eval()
    assert isinstance(model, ClassifierModel)
    return model


def _numeric_model(**params: Any) -> tuple[SequenceClassifier, ClassifierModel]:
    estimator = SequenceClassifier(
        input_size=3, labels=[0, 1, 2], multi_label=False, hidden_size=5, attention_size=4, **params
    )
    torch.manual_seed(1)
    return estimator, _built(estimator)


@pytest.mark.parametrize("pooling", ["last", "mean", "max", "attention"])
@pytest.mark.parametrize("conv", [{}, {"conv_layers": 2, "conv_channels": 4, "conv_pool": 2}])
def test_a_sequence_scores_the_same_alone_and_in_a_padded_batch(
    pooling: str, conv: dict[str, int]
) -> None:
    _, model = _numeric_model(pooling=pooling, cell="gru", **conv)
    short, long = torch.randn(3, 3), torch.randn(7, 3)
    collate = Collate(hierarchical=False)
    together = model(collate([(short, None), (long, None)]))
    alone = model(collate([(short, None)]))
    torch.testing.assert_close(together[0], alone[0], rtol=1e-5, atol=1e-6)


def test_last_pooling_reads_the_forward_end_and_the_backward_start() -> None:
    _, model = _numeric_model(pooling="last", bidirectional=True)
    x = torch.randn(1, 4, 3)
    batch = {"x": x, "lengths": torch.tensor([4])}
    output, _ = model.encoder.rnn(x)
    vector = torch.cat([output[0, -1, :5], output[0, 0, 5:]])
    torch.testing.assert_close(model(batch)[0], model.head(vector))


def test_hierarchical_documents_score_the_same_alone_and_in_a_batch() -> None:
    estimator = SequenceClassifier(
        vocabulary=[PAD, UNK, "a", "b", "c"],
        labels=["x", "y"],
        multi_label=False,
        hierarchical=True,
        hidden_size=4,
        embedding_dim=3,
        attention_size=3,
    )
    model = _built(estimator)
    small = [torch.tensor([2, 3])]
    big = [torch.tensor([4, 2, 2, 3]), torch.tensor([3]), torch.tensor([2, 4, 4])]
    collate = Collate(hierarchical=True)
    scores, attention = model.attend(collate([(small, None), (big, None)]))
    alone, _ = model.attend(collate([(small, None)]))
    torch.testing.assert_close(scores[0], alone[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attention["sentences"].sum(1), torch.ones(2))
    assert torch.equal(attention["sentences"][0, 1:], torch.zeros(2))
    assert torch.equal(attention["words"][1, 1, 1:], torch.zeros(3))  # sentence of one word


# ---------------------------------------------------------------------- learning
@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[SequenceClassifier, Path]:
    texts, labels = _texts(96, seed=0)
    out = tmp_path_factory.mktemp("text")
    estimator = SequenceClassifier(
        hidden_size=12, embedding_dim=12, attention_size=8, dropout=0.0, max_epochs=8, lr=2e-2,
        batch_size=16, seed=0, **QUIET,
    )  # fmt: skip
    estimator.fit(texts, labels, val=_texts(24, seed=1), out=out)
    return estimator, out


def test_the_attention_model_learns_and_looks_at_the_sentiment_word(
    text_model: tuple[SequenceClassifier, Path], tmp_path: Path
) -> None:
    estimator, _ = text_model
    texts, labels = _texts(40, seed=2)
    metrics = estimator.evaluate(texts, labels)
    assert metrics["accuracy"] == 1.0 and metrics["macro_f1"] == 1.0 and metrics["n"] == 40
    assert estimator.predict(["the movie was great", "plot and awful"]) == ["pos", "neg"]
    items = estimator.attention(["the movie was great and the plot"])
    tokens, weights = items[0]["tokens"], items[0]["steps"]
    assert len(tokens) == len(weights) == 7
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))
    assert tokens[int(weights.argmax())] == "great"
    plot_attention(items, tmp_path / "heat.png", titles=["review"])
    assert (tmp_path / "heat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_save_and_load_round_trip_exactly(text_model: tuple[SequenceClassifier, Path]) -> None:
    estimator, out = text_model
    texts, _ = _texts(10, seed=3)
    again = Estimator.load(out)
    assert isinstance(again, SequenceClassifier)
    assert again.vocabulary == estimator.vocabulary and again.labels == ["neg", "pos"]
    assert torch.equal(again.predict_proba(texts), estimator.predict_proba(texts))
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "classifier" and config["params"]["multi_label"] is False


def test_unseen_words_become_unk_and_unseen_labels_are_refused(
    text_model: tuple[SequenceClassifier, Path],
) -> None:
    estimator, _ = text_model
    assert estimator.predict(["zzz qqq great"]) == ["pos"]
    with pytest.raises(
        ValueError, match=r"X\[1\]: unseen label 'meh'; the model knows 'neg', 'pos'"
    ):
        estimator.evaluate(["good", "fine"], ["pos", "meh"])
    with pytest.raises(ValueError, match=r"X\[0\]: the text has no tokens"):
        estimator.predict(["   "])
    with pytest.raises(ValueError, match=r"y must have one label per item of X: X has 2, y has 1"):
        estimator.evaluate(["good", "bad"], ["pos"])


def test_multi_label_and_numeric_cnn_lstm() -> None:
    rng = torch.Generator().manual_seed(0)
    X = torch.randn(160, 10, 2, generator=rng)
    # 'a' when the first feature sums to more than 0, 'b' when the second does: two
    # independent labels, so every subset of {a, b} occurs
    y = [[name for name, k in (("a", 0), ("b", 1)) if x[:, k].sum() > 0] for x in X]
    estimator = SequenceClassifier(
        hidden_size=16, conv_layers=1, conv_channels=8, conv_kernel=3, pooling="mean",
        dropout=0.0, max_epochs=12, lr=1e-2, seed=0, **QUIET,
    )  # fmt: skip
    estimator.fit(X[:128], y[:128])
    assert estimator.multi_label is True and estimator.labels == ["a", "b"]
    metrics = estimator.evaluate(X[128:], y[128:])
    assert set(metrics) == {"accuracy", "macro_f1", "micro_f1", "n"}
    assert metrics["micro_f1"] > 0.8, metrics
    predictions = estimator.predict(X[:4])
    assert all(isinstance(p, list) and set(p) <= {"a", "b"} for p in predictions)
    proba = estimator.predict_proba(X[:4])
    assert predictions == [
        [lab for lab, p in zip(["a", "b"], row, strict=True) if p >= 0.5] for row in proba
    ]


# ---------------------------------------------------------------------- bad input
def test_bad_parameters_and_inputs() -> None:
    with pytest.raises(
        ValueError, match=r"pooling must be one of 'last', 'mean', 'max', 'attention'"
    ):
        SequenceClassifier(pooling="sum")
    with pytest.raises(ValueError, match=r"conv_kernel must be odd .* got 4"):
        SequenceClassifier(conv_kernel=4)
    with pytest.raises(ValueError, match=r"hierarchical=True needs text input"):
        SequenceClassifier(hierarchical=True, **QUIET).fit(torch.randn(4, 3, 2), [0, 1, 0, 1])
    with pytest.raises(TypeError, match=r"X\[1\]: y mixes single labels and lists of labels"):
        SequenceClassifier().fit(["a", "b"], ["x", ["y"]])
    with pytest.raises(ValueError, match=r"y must hold at least two classes, got \['x'\]"):
        SequenceClassifier().fit(["a", "b"], ["x", "x"])
    estimator, _ = _numeric_model()
    estimator.model_ = estimator.build_model()
    with pytest.raises(ValueError, match=r"X\[0\] has 2 features, the model reads 3"):
        estimator.predict([np.zeros((4, 2))])
    with pytest.raises(ValueError, match=r"X\[0\]: step 1, feature 2 is nan: not finite"):
        estimator.predict([np.array([[0, 0, 0], [0, 0, np.nan]])])
    with pytest.raises(ValueError, match=r"pools by 'attention'|no weights"):
        _numeric_model(pooling="mean")[0].attention([np.zeros((2, 3))])


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("", r"data\.csv is empty: expected a header row naming the columns \('text', 'label'\)"),
        ("text,label\n", r"data\.csv has a header but no data rows"),
        (
            "review,label\ngood,pos\n",
            r"data\.csv has no column 'text' \(--text-column\); its columns are 'review', 'label'",
        ),
        ("text,label\ngood,pos\n  ,neg\n", r"data\.csv, line 3, column 'text': empty text"),
        ("text,label\ngood,pos\nbad,\n", r"data\.csv, line 3, column 'label': empty label"),
        (
            "text,label\ngood,pos,extra\n",
            r"data\.csv, line 2: expected 2 fields like the header, got 3",
        ),
    ],
)
def test_bad_csv_files_name_the_file_line_and_column(
    tmp_path: Path, content: str, pattern: str
) -> None:
    path = tmp_path / "data.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=pattern):
        read_csv_table(path, "text", "label")


def test_multi_label_cells_and_tsv(tmp_path: Path) -> None:
    path = tmp_path / "data.tsv"
    path.write_text("label\ttext\nsport|news\tgoal!\n\tnothing\n")
    table = read_csv_table(path, "text", "label", label_sep="|")
    assert table.X == ["goal!", "nothing"] and table.y == [["sport", "news"], []]
    assert table.where == [f"{path}, line 2", f"{path}, line 3"]


# ---------------------------------------------------------------------- command line
def _write_csv(path: Path, texts: list[str], labels: list[str]) -> None:
    lines = ["id,text,label"] + [
        f"{i},{t},{lab}" for i, (t, lab) in enumerate(zip(texts, labels, strict=True))
    ]
    path.write_text("\n".join(lines) + "\n")


def test_cli_train_predict_evaluate_on_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_csv(tmp_path / "train.csv", *_texts(80, seed=0))
    test_texts, test_labels = _texts(12, seed=5)
    _write_csv(tmp_path / "test.csv", test_texts, test_labels)
    out = tmp_path / "run"
    argv = [
        "train", "classifier", "--data", str(tmp_path / "train.csv"), "--text-column", "text",
        "--label-column", "label", "--out", str(out), "--hidden-size", "12", "--embedding-dim",
        "12", "--attention-size", "8", "--dropout", "0", "--max-epochs", "8", "--lr", "0.02",
        "--batch-size", "16", "--no-progress", "--no-tensorboard",
    ]  # fmt: skip
    assert main(argv) == 0
    assert set(json.loads((out / "metrics.json").read_text())) == {"accuracy", "macro_f1", "n"}
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(tmp_path / "test.csv")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 12 and metrics["accuracy"] == 1.0 and metrics["macro_f1"] == 1.0
    plot = tmp_path / "heat.png"
    argv = [
        "predict",
        str(out),
        "--data",
        str(tmp_path / "test.csv"),
        "--attention-plot",
        str(plot),
    ]
    assert main([*argv, "--examples", "3"]) == 0
    assert capsys.readouterr().out.split() == SequenceClassifier.load(out).predict(test_texts)
    assert plot.stat().st_size > 0
    assert main(["predict", str(out), "--data", str(tmp_path / "test.csv"), "--probabilities"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 12 and set(rows[0]["probabilities"]) == {"neg", "pos"}
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)

    # an unseen label at evaluation, a missing column, a missing file: one line each
    _write_csv(tmp_path / "odd.csv", ["good movie"], ["meh"])
    assert main(["evaluate", str(out), "--data", str(tmp_path / "odd.csv")]) == 2
    _one_line_error(
        capsys, r"^lstmkit evaluate: error: .*odd\.csv, line 2: unseen label 'meh'; the model knows"
    )
    (tmp_path / "nolabel.csv").write_text("text\ngood\n")
    assert main(["evaluate", str(out), "--data", str(tmp_path / "nolabel.csv")]) == 2
    _one_line_error(capsys, r"nolabel\.csv has no column 'label' \(--label-column\)")
    assert (
        main(["predict", str(out), "--data", str(tmp_path / "nolabel.csv")]) == 0
    )  # no labels needed
    assert len(capsys.readouterr().out.split()) == 1
    assert main(["predict", str(out), "--data", str(tmp_path / "missing.csv")]) == 2
    _one_line_error(capsys, r"^lstmkit predict: error: data file .*missing\.csv does not exist$")


def test_cli_numeric_npz_and_its_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6, 2)).astype(np.float32)
    y = (x[:, :, 0].sum(1) > 0).astype(np.int64)
    lengths = rng.integers(3, 7, size=60)
    np.savez(tmp_path / "train.npz", x=x, y=y, lengths=lengths)
    out = tmp_path / "run"
    argv = [
        "train", "classifier", "--data", str(tmp_path / "train.npz"), "--out", str(out),
        "--hidden-size", "6", "--pooling", "mean", "--conv-layers", "1", "--conv-channels", "4",
        "--conv-kernel", "3", "--max-epochs", "2", "--val-fraction", "0.25", "--no-progress",
        "--no-tensorboard",
    ]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((out / "metrics.json").read_text())["n"] == 15
    config = json.loads((out / "config.json").read_text())["params"]
    assert config["input_size"] == 2 and config["labels"] == [0, 1] and config["vocabulary"] is None
    capsys.readouterr()
    assert main(["predict", str(out), "--data", str(tmp_path / "train.npz")]) == 0
    assert capsys.readouterr().out.split() == [
        str(p) for p in SequenceClassifier.load(out).predict(str(tmp_path / "train.npz"))
    ]

    np.savez(tmp_path / "bad.npz", x=x, y=y, lengths=np.full(60, 9))
    assert main(["evaluate", str(out), "--data", str(tmp_path / "bad.npz")]) == 2
    _one_line_error(capsys, r"bad\.npz: lengths\[0\] is 9: every length must be in \[1, 6\]")
    np.savez(tmp_path / "nox.npz", inputs=x)
    assert main(["evaluate", str(out), "--data", str(tmp_path / "nox.npz")]) == 2
    _one_line_error(capsys, r"nox\.npz has no array 'x' \(N, T, F\); found \['inputs'\]")
    np.savez(tmp_path / "wide.npz", x=np.zeros((2, 6, 3)), y=np.array([0, 1]))
    assert main(["evaluate", str(out), "--data", str(tmp_path / "wide.npz")]) == 2
    _one_line_error(capsys, r"wide\.npz, item 0 has 3 features, the model reads 2")
    np.savez(tmp_path / "unseen.npz", x=x[:2], y=np.array([0, 7]))
    assert main(["evaluate", str(out), "--data", str(tmp_path / "unseen.npz")]) == 2
    _one_line_error(capsys, r"unseen\.npz, item 1: unseen label 7; the model knows 0, 1")


def test_cli_train_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["train", "classifier", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(base) == 2
    _one_line_error(capsys, r"^lstmkit train classifier: error: --data FILE is required")
    _write_csv(tmp_path / "t.csv", ["good", "bad"], ["pos", "neg"])
    assert main([*base, "--data", str(tmp_path / "t.csv"), "--text-column", "review"]) == 2
    _one_line_error(
        capsys, r"t\.csv has no column 'review' \(--text-column\); its columns are 'id'"
    )
    assert main([*base, "--data", str(tmp_path / "t.csv"), "--val-fraction", "0.9"]) == 2
    _one_line_error(capsys, r"has 2 items: too few to hold out 2 for validation")


# ---------------------------------------------------------------------- experiments
def _experiment(name: str) -> ModuleType:
    path = ROOT / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # the scripts import their shared classifier_common
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


@pytest.mark.parametrize("name", ["classifier_digits", "classifier_mnist1d"])
def test_experiments_quick_mode_learns_far_above_chance(name: str) -> None:
    """The quick runs are tiny, so only the direction is checked: ten classes, chance 10%."""
    result = _experiment(name).run(quick=True)
    assert result["quick"] is True
    assert result["test"]["accuracy"] > 0.2, result


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "target"), [("classifier_digits", 0.97), ("classifier_mnist1d", 0.94)]
)
def test_experiments_reach_their_targets(name: str, target: float) -> None:
    result = _experiment(name).run(quick=False)
    assert result["test"]["accuracy"] >= target, result
