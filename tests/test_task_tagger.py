"""The sequence tagger: column and CoNLL-U readers, the model (char BiLSTM / CNN, casing, softmax
or CRF), the estimator's fit / predict / evaluate / save / load, span metrics, bad input, and the
`lstmkit train tagger`, `lstmkit tag` and `lstmkit evaluate` commands."""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lstmkit.cli import main
from lstmkit.data.columns import read_columns, read_conllu_tags, read_tagged
from lstmkit.nn.crf import allowed_transitions
from lstmkit.tasks import Estimator
from lstmkit.tasks.tagger import (
    CASINGS,
    UNK,
    TaggerEstimator,
    TaggerModel,
    _collate,
    build_vocab,
    casing,
    detect_scheme,
    format_conll,
    read_sentences,
    span_scores,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LSTMKIT_DATA", ROOT / ".." / "shared" / "data"))
TINY: dict[str, Any] = {
    "word_dim": 8,
    "char_dim": 4,
    "char_features": 8,
    "hidden_size": 8,
    "batch_size": 8,
    "progress": False,
    "tensorboard": False,
}

Sentence = list[tuple[str, str]]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine two threads of tiny matrix products spend
    most of their time waiting for each other (measured: 10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def future_context(n: int, seed: int) -> list[Sentence]:
    """Sentences where the tag of ``x`` is ``L`` before ``a``/``b`` and ``R`` otherwise: only a
    tagger that sees the next word can get every ``x`` right."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice("abcxx") for _ in range(rng.randint(3, 8))]
        out.append(
            [
                (w, ("L" if i + 1 < len(words) and words[i + 1] in "ab" else "R"))
                if w == "x"
                else (w, w.upper())
                for i, w in enumerate(words)
            ]
        )
    return out


def entities(n: int, seed: int) -> list[Sentence]:
    """BIO-tagged sentences: capitalised names (one or two words) are PER after 'met' and LOC
    after 'in'; everything else is O."""
    rng = random.Random(seed)
    names = ["Ann", "Bob", "Paris", "Rome", "Kim", "Oslo", "Lee"]
    out = []
    for _ in range(n):
        sentence: Sentence = []
        for _ in range(rng.randint(1, 3)):
            verb, kind = rng.choice([("met", "PER"), ("in", "LOC")])
            sentence.append((rng.choice(["we", "they", "he"]), "O"))
            sentence.append((verb, "O"))
            span = [rng.choice(names) for _ in range(rng.randint(1, 2))]
            sentence += [(w, ("B-" if i == 0 else "I-") + kind) for i, w in enumerate(span)]
        out.append(sentence)
    return out


def write_conllu(path: Path, sentences: list[Sentence]) -> Path:
    lines = []
    for sentence in sentences:
        lines.append("# sent")
        for i, (word, tag) in enumerate(sentence, start=1):
            lines.append(f"{i}\t{word}\t{word.lower()}\t{tag}\tX{tag}\t_\t0\tdep\t_\t_")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------- readers
def test_read_columns_conll2003_layout(tmp_path: Path) -> None:
    path = tmp_path / "ner.txt"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n"
        "Peter NNP B-NP B-PER\r\nBlackburn NNP I-NP I-PER\n\n\n-DOCSTART- -X- -X- O\n"
        "Bonn NNP B-NP B-LOC\n"
    )
    assert read_columns(path) == [
        [("EU", "B-ORG"), ("rejects", "O")],
        [("Peter", "B-PER"), ("Blackburn", "I-PER")],
        [("Bonn", "B-LOC")],
    ]
    assert read_columns(path, 0, 1)[0] == [("EU", "NNP"), ("rejects", "VBZ")]
    assert read_columns(path, 0, -2)[1] == [("Peter", "B-NP"), ("Blackburn", "I-NP")]
    tsv = tmp_path / "spaces.tsv"
    tsv.write_text("New York\tB-LOC\nis\tO\n")
    assert read_columns(tsv, delimiter="\t") == [[("New York", "B-LOC"), ("is", "O")]]
    assert read_tagged(tsv, tag_column=1, delimiter="\t") == read_columns(tsv, 0, 1, delimiter="\t")


def test_read_columns_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("EU NNP B-ORG\nrejects VBZ\n")
    with pytest.raises(ValueError, match=r"bad\.txt, line 2: expected 3 fields like line 1, got 2"):
        read_columns(path)
    path.write_text("EU B-ORG\n")
    with pytest.raises(ValueError, match=r"line 1: tag_column=5 is out of range: the line has 2"):
        read_columns(path, 0, 5)
    with pytest.raises(TypeError, match="token_column must be an int"):
        read_columns(path, "0")  # type: ignore[arg-type]
    path.write_text("\n\n-DOCSTART- O\n\n")
    with pytest.raises(ValueError, match="holds no sentences"):
        read_columns(path)
    path.write_text("a\tO\n\tO\n")
    with pytest.raises(ValueError, match=r"line 2: the token \(column 0\) is empty"):
        read_columns(path, delimiter="\t")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_columns(tmp_path / "missing.txt")


def test_read_conllu_tags_upos_and_xpos(tmp_path: Path) -> None:
    path = tmp_path / "a.conllu"
    path.write_text(
        "# text = Don't go.\n"
        "1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_\n"
        "1\tDo\tdo\tAUX\tVBP\t_\t0\troot\t_\t_\n"
        "2\tn't\tnot\tPART\tRB\t_\t1\tadvmod\t_\t_\n"
        "2.1\tgo\t_\t_\t_\t_\t_\t_\t_\t_\n"
        "3\tgo\tgo\tVERB\tVB\t_\t1\txcomp\t_\t_\n\n"
    )
    assert read_conllu_tags(path) == [[("Do", "AUX"), ("n't", "PART"), ("go", "VERB")]]
    assert read_conllu_tags(path, "xpos") == [[("Do", "VBP"), ("n't", "RB"), ("go", "VB")]]
    assert read_tagged(path, column="xpos") == read_conllu_tags(path, "xpos")
    with pytest.raises(ValueError, match="column must be one of 'upos', 'xpos', got 'lemma'"):
        read_conllu_tags(path, "lemma")


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("1\tDo\tdo\tAUX\n", r"line 1: expected 10 tab-separated fields .* got 4"),
        ("1\tDo\tdo\tAUX\tVBP\t_\t0\troot\t_\t_\n3\tgo\tgo\tVERB\tVB\t_\t1\tx\t_\t_\n",
         r"line 2: expected word ID 2 .* got 3"),
        ("# c\n\n1\tDo\tdo\tAUX\t_\t_\t0\troot\t_\t_\n", r"line 3: the XPOS field \(word 1\) is '_'"),
        ("x\tDo\tdo\tAUX\tVBP\t_\t0\troot\t_\t_\n", r"line 1: the ID must be a word index"),
    ],
)  # fmt: skip
def test_read_conllu_tags_malformed_line(tmp_path: Path, text: str, pattern: str) -> None:
    path = tmp_path / "bad.conllu"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ", " + pattern):
        read_conllu_tags(path, "xpos")


# ---------------------------------------------------------------------- small pieces
def test_casing_classes() -> None:
    names = {w: CASINGS[casing(w)] for w in ["dog", "NASA", "Paris", "iPhone", "1,000", "3.5",
                                             "A4", "--", "I", "x"]}  # fmt: skip
    assert names == {
        "dog": "lower", "NASA": "upper", "Paris": "title", "iPhone": "mixed", "1,000": "numeric",
        "3.5": "numeric", "A4": "has_digit", "--": "other", "I": "upper", "x": "lower",
    }  # fmt: skip


def test_detect_scheme() -> None:
    assert detect_scheme(["NOUN", "VERB", "PUNCT"]) == "none"
    assert detect_scheme(["O", "B-PER", "I-PER", "B-WORK-OF-ART"]) == "BIO"
    assert detect_scheme(["O", "S-LOC", "B-PER", "E-PER"]) == "BIOES"
    assert detect_scheme(["O"]) == "none"
    assert detect_scheme(["O", "B-X", "NOUN"]) == "none"


def test_build_vocab_is_deterministic_and_frequency_ordered() -> None:
    data = [[("the", "D"), ("cat", "N")], [("the", "D"), ("The", "D"), ("dog", "N")]]
    vocab = build_vocab(data)
    assert vocab["words"] == ["<pad>", "<unk>", "the", "The", "cat", "dog"]
    assert vocab["word_counts"] == [0, 0, 2, 1, 1, 1]
    assert vocab["tags"] == ["D", "N"]
    assert vocab["chars"][:2] == ["<pad>", "<unk>"] and "T" in vocab["chars"]
    lower = build_vocab(data, lowercase=True, min_count=2)
    assert lower["words"] == ["<pad>", "<unk>", "the"] and lower["word_counts"] == [0, 0, 3]


def test_span_scores_by_hand() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["O", "B-PER"]]
    scores = span_scores(gold, pred)  # 1 of 2 predicted spans right, 1 of 3 gold spans found
    assert scores == pytest.approx({"precision": 0.5, "recall": 1 / 3, "f1": 0.4})


def test_sentences_and_conll_output() -> None:
    assert read_sentences(["The dog  barks .", "Hi"]) == [["The", "dog", "barks", "."], ["Hi"]]
    with pytest.raises(ValueError, match=r"<stdin>, line 2: empty sentence"):
        read_sentences(["a b", "   ", "c"])
    with pytest.raises(ValueError, match="holds no sentences"):
        read_sentences([""])
    text = format_conll([["Hi", "."]], [["INTJ", "PUNCT"]])
    assert text == "Hi\tINTJ\n.\tPUNCT\n\n"
    conllu = format_conll([["Hi"]], [["UH"]], "conllu", "xpos")
    assert conllu == "1\tHi\t_\t_\tUH\t_\t_\t_\t_\t_\n\n"


# ---------------------------------------------------------------------- the model
@pytest.mark.parametrize(
    ("char_encoder", "cell", "output", "casing_on"),
    [("lstm", "lstm", "softmax", True), ("cnn", "gru", "crf", False), ("none", "rnn", "crf", True)],
)
def test_model_variants_handle_padding(
    char_encoder: str, cell: str, output: str, casing_on: bool
) -> None:
    """A sentence's scores do not depend on the padding its batch adds (for the backward
    direction and the character encoder, both of which read from the end)."""
    data = entities(20, seed=0)
    est = TaggerEstimator(
        **TINY, char_encoder=char_encoder, cell=cell, output=output, casing=casing_on,
        num_layers=2, dropout=0.2,
    )  # fmt: skip
    est.vocab = build_vocab(data)
    est._lookups()
    torch.manual_seed(0)
    model = est.build_model().eval()
    assert isinstance(model, TaggerModel)

    short = est._encode([t for t, _ in data[0]] + ["Zzyzx-Longword"])
    long = est._encode([t for t, _ in max(data, key=len)] * 2)
    with torch.no_grad():
        alone = model(_collate([short]))[0]
        padded = model(_collate([short, long]))[0, : len(short.words)]
        decoded = model.decode(_collate([short, long]))
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)
    assert (decoded[0, len(short.words) :] == -1).all() and (
        decoded[0, : len(short.words)] >= 0
    ).all()


def test_word_dropout_probability_and_unknown_words() -> None:
    data = [[("the", "D"), ("cat", "N")]] * 3 + [[("a", "D"), ("dog", "N")]]
    est = TaggerEstimator(**TINY, word_dropout=0.5, max_epochs=1)
    est.fit(data)
    model = est.model_
    assert isinstance(model, TaggerModel)
    counts = torch.tensor(est.vocab["word_counts"], dtype=torch.float)  # type: ignore[index]
    expected = 0.5 / (0.5 + counts)
    expected[:2] = 0
    torch.testing.assert_close(model.unk_probability, expected)
    encoded = est._encode(["the", "zebra"])
    assert encoded.words[0] != UNK and encoded.words[1] == UNK
    assert len(est.predict([["zebra", "qqq", "the"]])[0]) == 3  # unknown words still get tags


# ---------------------------------------------------------------------- learning
def test_crf_tagger_learns_spans_and_never_decodes_illegal_bio() -> None:
    train, test = entities(120, seed=3), entities(40, seed=4)
    est = TaggerEstimator(**TINY, output="crf", max_epochs=8, lr=3e-2, dropout=0.0)
    est.fit(train, val=test)
    assert est.scheme_ == "BIO"
    metrics = est.evaluate(test)
    assert set(metrics) >= {"accuracy", "precision", "recall", "f1", "tokens", "sentences"}
    assert metrics["f1"] > 0.95 and metrics["accuracy"] > 0.95
    legal = set(allowed_transitions(est.tags_, "BIO"))
    # random, unseen words everywhere: whatever the emissions, the path must stay legal
    rng = random.Random(0)
    noise = [[rng.choice(["Xq", "met", "in", "zz", "Rome"]) for _ in range(rng.randint(1, 9))]
             for _ in range(200)]  # fmt: skip
    for path in est.predict(noise):
        steps = ["<start>", *path, "<end>"]
        assert all((a, b) in legal for a, b in itertools.pairwise(steps)), path


def test_save_load_round_trip(tmp_path: Path) -> None:
    train = entities(40, seed=5)
    est = TaggerEstimator(**TINY, char_encoder="cnn", max_epochs=2, seed=7)
    est.fit(train, out=tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["task"] == "tagger" and config["params"]["vocab"]["tags"] == est.tags_
    again = Estimator.load(tmp_path / "run")
    assert isinstance(again, TaggerEstimator)
    sentences = [[t for t, _ in s] for s in entities(10, seed=6)] + [["Unseen", "words"]]
    assert again.predict(sentences) == est.predict(sentences)
    assert again.evaluate(train) == est.evaluate(train)
    for name, value in est.model_.state_dict().items():  # type: ignore[union-attr]
        assert torch.equal(value, again.model_.state_dict()[name]), name  # type: ignore[union-attr]


def test_same_seed_same_weights() -> None:
    train = entities(24, seed=8)
    a = TaggerEstimator(**TINY, max_epochs=1, seed=3).fit(train)
    b = TaggerEstimator(**TINY, max_epochs=1, seed=3).fit(train)
    for (name, x), y in zip(a.model_.state_dict().items(), b.model_.state_dict().values(),  # type: ignore[union-attr]
                            strict=True):  # fmt: skip
        assert torch.equal(x, y), name


# ---------------------------------------------------------------------- bad input
def test_bad_input_errors(tmp_path: Path) -> None:
    train = entities(16, seed=9)
    with pytest.raises(ValueError, match="not fitted"):
        TaggerEstimator(**TINY).predict([["a"]])
    est = TaggerEstimator(**TINY, max_epochs=1).fit(train)
    with pytest.raises(ValueError, match=r"sentences\[1\] is an empty sentence"):
        est.predict([["a"], []])
    with pytest.raises(TypeError, match=r"sentences must be a list of sentences"):
        est.predict("we met Ann")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"sentences\[0\]\[1\]: a token must be a non-empty str"):
        est.predict([["a", " b"]])
    with pytest.raises(
        ValueError,
        match=r"data: sentence 2, token 1 \('x'\) has the tag 'B-ORG', "
        r"which the model never saw in training; it knows 5 tags: B-LOC",
    ):
        est.evaluate([[("we", "O")], [("x", "B-ORG")]])
    bad = write_conllu(tmp_path / "dev.conllu", [[("x", "NOUN")]])
    with pytest.raises(ValueError, match=r"dev\.conllu: sentence 1, token 1 .* tag 'NOUN'"):
        est.evaluate(bad)
    with pytest.raises(TypeError, match=r"data\[0\]\[0\] must be a \(token, tag\) pair"):
        est.fit([["a", "b"]])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="char_features must be even"):
        TaggerEstimator(char_features=7)
    with pytest.raises(ValueError, match="output must be one of 'softmax', 'crf', got 'svm'"):
        TaggerEstimator(output="svm")


# ---------------------------------------------------------------------- command line
def _one_line_error(capsys: pytest.CaptureFixture[str], pattern: str) -> None:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert re.search(pattern, err), err


def test_cli_train_tag_evaluate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    train = write_conllu(tmp_path / "train.conllu", entities(60, seed=10))
    dev = write_conllu(tmp_path / "dev.conllu", entities(20, seed=11))
    out = tmp_path / "run"
    flags = ["--word-dim", "8", "--char-dim", "4", "--char-features", "8", "--hidden-size", "8",
             "--no-progress", "--no-tensorboard", "--max-epochs", "2", "--lr", "0.01"]  # fmt: skip
    code = main(["train", "tagger", "--data", str(train), "--valid", str(dev), "--column", "upos",
                 "--output", "crf", "--out", str(out), *flags])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "f1", "precision", "recall"} <= set(metrics)  # BIO tags: span scores
    config = json.loads((out / "config.json").read_text())
    assert config["params"]["column"] == "upos" and config["params"]["output"] == "crf"
    capsys.readouterr()

    assert main(["evaluate", str(out), "--data", str(dev)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == pytest.approx(metrics)

    monkeypatch.setattr(sys, "stdin", io.StringIO("we met Ann\nin Rome today\n"))
    assert main(["tag", str(out)]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert [line.split("\t")[0] for line in lines[:4]] == ["we", "met", "Ann", ""]
    assert lines[3] == "" and len(lines) == 3 + 1 + 3 + 1 + 1
    tags = TaggerEstimator.load(out).predict([["we", "met", "Ann"]])[0]
    assert [line.split("\t")[1] for line in lines[:3]] == tags

    monkeypatch.setattr(sys, "stdin", io.StringIO("we met Ann\n\nin Rome\n"))
    assert main(["tag", str(out)]) == 2
    _one_line_error(capsys, r"lstmkit tag: error: <stdin>, line 2: empty sentence")


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.conllu"
    bad.write_text("1\tDo\tdo\tAUX\tVBP\t_\t0\troot\t_\t_\n2\tgo\n")
    flags = ["--out", str(tmp_path / "run"), "--no-progress", "--no-tensorboard"]
    assert main(["train", "tagger", "--data", str(bad), *flags]) == 2
    _one_line_error(capsys, r"bad\.conllu, line 2: expected 10 tab-separated fields")
    assert main(["train", "tagger", *flags]) == 2
    _one_line_error(capsys, r"--data FILE is required")
    one = write_conllu(tmp_path / "one.conllu", entities(1, seed=0))
    assert main(["train", "tagger", "--data", str(one), *flags]) == 2
    _one_line_error(capsys, r"1 sentences: too few to hold out --valid-fraction 0.1")


def test_experiment_quick_bidirectional_wins() -> None:
    """Future context is the point of the BiLSTM: on data where the tag of ``x`` is fixed by the
    next word, the bidirectional tagger is exact and the left-to-right one cannot be."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "tagger_ewt.py"), "--quick"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    report = json.loads(result.stdout)
    bi, uni = report["results"]["bi"], report["results"]["uni"]
    # x is ~40% of the tokens and its tag a coin flip from the left: only bi can be exact
    assert bi["accuracy"] == 1.0
    assert uni["accuracy"] < 0.95


# ---------------------------------------------------------------------- real data (slow)
@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "ud_en_ewt").is_dir(), reason="no ud_en_ewt data")
def test_ewt_readers_and_a_short_run() -> None:
    folder = DATA / "ud_en_ewt"
    train = read_conllu_tags(folder / "en_ewt-ud-train.conllu")
    dev = read_conllu_tags(folder / "en_ewt-ud-dev.conllu")
    assert (len(train), len(dev)) == (12544, 2001)
    assert len(build_vocab(train)["tags"]) == 17
    xpos = read_conllu_tags(folder / "en_ewt-ud-dev.conllu", "xpos")
    assert [len(s) for s in xpos] == [len(s) for s in dev]
    # 250 updates on a third of train: far from converged, far above the majority tag (~17%)
    est = TaggerEstimator(max_epochs=2, lr=3e-3, max_time=5.0, progress=False, tensorboard=False)
    metrics = est.fit(train[:4000]).evaluate(dev)
    assert metrics["accuracy"] > 0.85, metrics
