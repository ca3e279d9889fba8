"""The seq2seq task: data and vocabulary, the model's attention / coverage / copy mechanics,
scheduled sampling, every decoding path on a tiny trained model, save/load, the command line
(`lstmkit train seq2seq`, `lstmkit translate`, `lstmkit evaluate`) and bad input."""

from __future__ import annotations

import io
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import sacrebleu
import torch
from torch import Tensor

from lstmkit.cli import main
from lstmkit.decode import beam_search, greedy
from lstmkit.tasks import Estimator, get_task
from lstmkit.tasks.seq2seq import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIALS,
    UNK_ID,
    Seq2Seq,
    Seq2SeqModel,
    Vocabulary,
    _collate,
    build_vocab,
    detokenize,
    plot_attention,
    read_pairs,
    teacher_forcing_ratio,
    tokenize,
    write_pairs,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

QUIET: dict[str, Any] = {"progress": False, "tensorboard": False}


def reverse_pairs(n: int, seed: int, low: int = 2, high: int = 5) -> list[tuple[str, str]]:
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        length = int(torch.randint(low, high + 1, (1,), generator=g))
        digits = "".join(str(int(d)) for d in torch.randint(0, 6, (length,), generator=g))
        pairs.append((digits, digits[::-1]))
    return pairs


@pytest.fixture(scope="module")
def trained() -> Seq2Seq:
    """A tiny reversal model with coverage, trained for a few seconds: not good, but trained."""
    torch.set_num_threads(1)
    estimator = Seq2Seq(
        hidden_size=16, embedding_size=8, batch_size=32, attention="bahdanau", coverage=True,
        max_epochs=2, lr=1e-2, seed=0, **QUIET,
    )  # fmt: skip
    return estimator.fit(reverse_pairs(192, 0))


def _one_line_error(capsys: pytest.CaptureFixture[str], pattern: str) -> None:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert re.search(pattern, err), err


# ---------------------------------------------------------------------- data and vocabulary
def test_tsv_round_trip_skips_blank_lines(tmp_path: Path) -> None:
    pairs = [("12+3", "15"), ("a b", "b a"), ("x", "y y")]
    path = tmp_path / "pairs.tsv"
    write_pairs(path, pairs)
    assert read_pairs(path) == pairs
    path.write_text("12+3\t15\n\n   \na b\tb a\n", encoding="utf-8")
    assert read_pairs(path) == pairs[:2]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("1+1\t2\n2+2 4\n", r"pairs\.tsv, line 2: no tab; each line must be 'source<TAB>target'"),
        ("1+1\t2\t3\n", r"pairs\.tsv, line 1, column 6: a second tab"),
        ("1+1\t2\n\t4\n", r"line 2: the source \(column 1\) is empty"),
        ("1+1\t \n", r"line 1: the target \(column 2\) is empty"),
        ("", r"pairs\.tsv holds no pairs"),
        ("\n\n", r"pairs\.tsv holds no pairs"),
    ],
)
def test_tsv_errors_name_file_and_line(tmp_path: Path, text: str, pattern: str) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=pattern):
        read_pairs(path)


def test_tsv_not_utf8_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "latin.tsv"
    path.write_bytes(b"a\tb\ncaf\xe9\tx\n")
    with pytest.raises(ValueError, match=r"latin\.tsv, line 2: not UTF-8"):
        read_pairs(path)
    with pytest.raises(ValueError, match=r"missing\.tsv: cannot read it"):
        read_pairs(tmp_path / "missing.tsv")


def test_tokens_and_vocabulary() -> None:
    assert tokenize("ab c", "char") == ["a", "b", " ", "c"]
    assert tokenize(" ab  c ", "word") == ["ab", "c"]
    assert detokenize(["ab", "c"], "word") == "ab c" and detokenize(list("ab c"), "char") == "ab c"
    vocab = build_vocab([list("abca"), list("cb"), list("d")], min_count=2)
    assert vocab == [*SPECIALS, "a", "b", "c"]  # counts 2, 2, 2: first-seen order; d dropped
    assert build_vocab([list("aab")], max_vocab=5) == [*SPECIALS, "a"]
    with pytest.raises(ValueError, match=r"vocabulary is too small: no token occurs at least "
                       r"min_count=3 times \(the most frequent, 'a', occurs 2 times\)"):  # fmt: skip
        build_vocab([list("aab")], min_count=3)
    with pytest.raises(ValueError, match=r"max_vocab must be at least 5 .* got 4"):
        build_vocab([list("ab")], max_vocab=4)
    with pytest.raises(ValueError, match="no token at all"):
        build_vocab([[], []])


def test_vocabulary_extended_ids_for_copy() -> None:
    vocab = Vocabulary([*SPECIALS, "a", "b"])
    enc = vocab.encode_source(list("aXbYX"))
    assert enc.ids == [4, UNK_ID, 5, UNK_ID, UNK_ID]
    assert enc.ext == [4, 6, 5, 7, 6] and enc.oov == ["X", "Y"]
    ids, ext = vocab.encode_target(list("YZa"), enc.oov)
    assert ids == [UNK_ID, UNK_ID, 4, EOS_ID] and ext == [7, UNK_ID, 4, EOS_ID]
    assert vocab.decode([7, 4, 6, EOS_ID, 5], enc.oov) == ["Y", "a", "X"]


# ---------------------------------------------------------------------- scheduled sampling
def test_teacher_forcing_schedules() -> None:
    assert teacher_forcing_ratio("none", 10**6) == 1.0
    assert teacher_forcing_ratio("linear", 0) == 1.0
    assert teacher_forcing_ratio("linear", 2500, k=1.0, c=1e-4) == pytest.approx(0.75)
    assert teacher_forcing_ratio("linear", 10**6, c=1e-4, minimum=0.1) == 0.1
    assert teacher_forcing_ratio("exponential", 3, k=0.5) == 0.125
    assert teacher_forcing_ratio("inverse_sigmoid", 0, k=10.0) == pytest.approx(10 / 11)
    assert teacher_forcing_ratio("inverse_sigmoid", 10**9, k=10.0) < 1e-300  # no overflow
    for schedule in ("linear", "exponential", "inverse_sigmoid"):
        values = [teacher_forcing_ratio(schedule, i) for i in range(0, 100_000, 5000)]
        assert values == sorted(values, reverse=True) and values[0] > values[-1]
    with pytest.raises(ValueError, match=r"sampling_k must be in \(0, 1\) for the exponential"):
        Seq2Seq(sampling_schedule="exponential", sampling_k=1.5)
    with pytest.raises(ValueError, match="sampling_k must be >= 1 for the inverse_sigmoid"):
        Seq2Seq(sampling_schedule="inverse_sigmoid", sampling_k=0.5)
    with pytest.raises(ValueError, match="sampling_schedule must be one of"):
        Seq2Seq(sampling_schedule="cosine")


def _tiny_model(**options: Any) -> tuple[Seq2SeqModel, Vocabulary]:
    settings: dict[str, Any] = {
        "embedding_size": 6, "hidden_size": 8, "encoder_layers": 1, "decoder_layers": 1,
        "attention": "bahdanau", "attention_size": 8, "input_feeding": True, "coverage": False,
        "copy": False, "dropout": 0.0,
    }  # fmt: skip
    settings.update(options)
    vocab = Vocabulary([*SPECIALS, *"0123456789"])
    torch.manual_seed(0)
    return Seq2SeqModel(len(vocab), **settings), vocab


def _batch(vocab: Vocabulary, pairs: list[tuple[str, str]], copy: bool = False) -> dict[str, Any]:
    items = []
    for source, target in pairs:
        enc = vocab.encode_source(list(source))
        ids, ext = vocab.encode_target(list(target), enc.oov if copy else ())
        items.append(
            {"src": enc.ids, "src_ext": enc.ext if copy else enc.ids,
             "n_oov": [len(enc.oov) if copy else 0], "tgt": ids, "tgt_ext": ext}
        )  # fmt: skip
    return _collate(items)


def test_scheduled_sampling_feeds_model_tokens_and_counts_updates() -> None:
    model, vocab = _tiny_model()
    batch = _batch(vocab, [("1234", "4321"), ("567", "765")])
    torch.manual_seed(1)
    forced = model(batch, 1.0)
    torch.manual_seed(2)
    assert torch.equal(model(batch, 1.0)[0], forced[0])  # teacher forcing draws nothing
    torch.manual_seed(1)
    sampled = model(batch, 0.0)
    assert not torch.equal(sampled[0], forced[0]) and int(sampled[2]) == int(forced[2]) == 9
    estimator = Seq2Seq(hidden_size=8, embedding_size=4, batch_size=8, max_epochs=2,
                        sampling_schedule="linear", sampling_c=0.05, **QUIET)  # fmt: skip
    estimator.fit(reverse_pairs(24, 1))
    assert isinstance(estimator.model_, Seq2SeqModel)
    assert int(estimator.model_.updates) == estimator.fit_result_.steps == 6  # type: ignore[union-attr]


# ---------------------------------------------------------------------- attention, coverage, copy
@pytest.mark.parametrize("attention", ["bahdanau", "dot", "general", "concat"])
@pytest.mark.parametrize("input_feeding", [True, False])
def test_every_attention_trains_end_to_end(attention: str, input_feeding: bool) -> None:
    model, vocab = _tiny_model(attention=attention, input_feeding=input_feeding,
                               decoder_layers=2, encoder_layers=2)  # fmt: skip
    batch = _batch(vocab, [("12345", "54321"), ("67", "76")])
    nll, cover, count = model(batch)
    nll.backward()
    assert torch.isfinite(nll) and cover == 0 and count == 9
    assert model.encoder.weight_ih_l0.grad is not None
    assert model.encoder.weight_ih_l1_reverse.grad is not None
    state = model.start(batch["src"], batch["src_len"], batch["src_ext"], batch["oov"])
    _, _, weights = model.step(torch.full((2,), BOS_ID), state)
    assert (weights[1, 2:] == 0).all()  # padding gets no attention
    assert torch.allclose(weights.sum(-1), torch.ones(2))


class _FixedAttention(torch.nn.Module):
    """Stands in for the attention: one-hot on the position ``pick(t)`` at step ``t``."""

    def __init__(self, S: int, pick: Any) -> None:
        super().__init__()
        self.S, self.pick, self.t = S, pick, 0
        self.coverage = True

    def prepare(self, keys: Tensor, values: Tensor, *, lengths: Tensor) -> Any:
        from lstmkit.nn import Memory

        padding = torch.zeros(keys.shape[:2], dtype=torch.bool)
        return Memory(keys, values, padding)

    def forward(self, query: Tensor, memory: Any, coverage: Tensor) -> tuple[Tensor, Tensor]:
        weights = torch.zeros(query.shape[0], self.S)
        weights[:, self.pick(self.t)] = 1.0
        self.t += 1
        return torch.bmm(weights.unsqueeze(1), memory.values).squeeze(1), weights


def test_coverage_loss_zero_for_one_hot_new_positions() -> None:
    model, vocab = _tiny_model(coverage=True)
    batch = _batch(vocab, [("1234", "432")])  # 4 target steps with </s>, 4 source positions
    model.attention = _FixedAttention(4, lambda t: 3 - t)  # type: ignore[assignment]
    _, cover, _ = model(batch)
    assert cover.item() == 0.0  # every step attends a position not attended before
    model.attention = _FixedAttention(4, lambda t: 0)  # type: ignore[assignment]
    _, cover, _ = model(batch)
    assert cover.item() == 3.0  # steps 1-3 each overlap the coverage of position 0 by 1
    model.attention = _FixedAttention(4, lambda t: min(t, 2))  # type: ignore[assignment]
    _, cover, _ = model(batch)
    assert cover.item() == 1.0  # only the last step (</s>) attends again, to position 2


def test_coverage_needs_an_additive_score() -> None:
    with pytest.raises(ValueError, match="coverage=True needs attention='bahdanau' or 'concat'"):
        Seq2Seq(coverage=True, attention="dot")
    with pytest.raises(ValueError, match="attention_size applies to attention='bahdanau'"):
        Seq2Seq(attention="general", attention_size=8)


def test_copy_outputs_an_out_of_vocabulary_source_token() -> None:
    estimator = Seq2Seq(hidden_size=8, embedding_size=4, copy=True, vocab=[*SPECIALS, *"0123"])
    model = estimator.build_model()
    assert model.copy_gate is not None
    with torch.no_grad():  # p_gen = sigmoid(-50): the output distribution is the copy part only
        model.copy_gate.weight.zero_()
        model.copy_gate.bias.fill_(-50.0)
    estimator.model_ = model.eval()
    [hyps] = estimator.translate(["ZZQ"], max_len=3)
    assert hyps[0].tokens and set(hyps[0].tokens) <= {"Z", "Q"}
    assert set(estimator.predict(["Z1Z"], max_len=4)[0]) <= {"Z", "1"}
    # the extended slots are per sequence: a source without OOV tokens has none to point at
    vocab = Vocabulary(estimator.vocab or [])
    batch = _batch(vocab, [("0Z", "Z"), ("01", "1")], copy=True)
    assert batch["tgt_ext"][0, 0] == len(vocab)  # the target OOV token is the copied slot
    state = model.start(batch["src"], batch["src_len"], batch["src_ext"], batch["oov"])
    log_probs, _, _ = model.step(torch.full((2,), BOS_ID), state)
    assert log_probs.shape == (2, len(vocab) + 1)
    assert log_probs[1, -1] == -math.inf and log_probs[0, -1] > -1.0
    assert (log_probs[:, [PAD_ID, BOS_ID]] == -math.inf).all()
    nll, _, _ = model(batch)
    assert torch.isfinite(nll)


# ---------------------------------------------------------------------- decoding
def test_beam_of_one_equals_greedy(trained: Seq2Seq) -> None:
    model = trained.model_
    assert isinstance(model, Seq2SeqModel)
    vocab = Vocabulary(trained.vocab or [])
    batch = _batch(vocab, reverse_pairs(12, 5, 2, 8))
    with torch.no_grad():
        state = model.start(batch["src"], batch["src_len"], batch["src_ext"], batch["oov"])
        g = greedy(model.step, state, bos=BOS_ID, eos=EOS_ID, max_len=12)
        b = beam_search(model.step, state, bos=BOS_ID, eos=EOS_ID, beam_size=1, max_len=12)
    for i in range(12):
        n = int(g.lengths[i])
        assert int(b.lengths[i, 0]) == n
        assert b.tokens[i, 0, :n].tolist() == g.tokens[i, :n].tolist()
        assert float(b.log_probs[i, 0]) == pytest.approx(float(g.scores[i]), abs=1e-5)
    sources = [s for s, _ in reverse_pairs(12, 5, 2, 8)]
    assert trained.predict(sources, decode="beam", beam_size=1) == trained.predict(sources)


def _valid(estimator: Seq2Seq, hyps: list[Any], limit: int) -> None:
    allowed = set((estimator.vocab or [])[len(SPECIALS) :]) | {"<unk>"}
    for h in hyps:
        assert len(h.tokens) <= limit and set(h.tokens) <= allowed, h
        assert math.isfinite(h.score) and h.score <= 0.0
        assert h.text == "".join(h.tokens)


@pytest.mark.parametrize(
    "options",
    [
        {"decode": "greedy"},
        {"decode": "sample", "temperature": 0.7, "top_k": 3, "seed": 3},
        {"decode": "sample", "top_p": 0.8},
        {"decode": "beam", "beam_size": 4, "n_best": 3},
        {"decode": "beam", "beam_size": 3, "length_penalty": "average"},
        {"decode": "beam", "beam_size": 3, "length_penalty": "gnmt", "alpha": 0.8,
         "coverage_penalty": 0.3},
        {"decode": "beam", "beam_size": 3, "no_repeat_ngram_size": 2, "n_best": 2},
        {"decode": "greedy", "no_repeat_ngram_size": 1},
    ],
)  # fmt: skip
def test_every_decoding_path_gives_valid_sequences(
    trained: Seq2Seq, options: dict[str, Any]
) -> None:
    sources = ["0123", "54", "", "1122334455", "9"]  # '9' never seen in training: <unk>
    results = trained.translate(sources, max_len=14, **options)
    assert len(results) == len(sources) and results[2][0].text == ""
    n_best = options.get("n_best", 1)
    for i, hyps in enumerate(results):
        if i == 2:
            continue
        assert 1 <= len(hyps) <= n_best
        _valid(trained, hyps, 14)
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == len(hyps)  # n-best are distinct
        size = options.get("no_repeat_ngram_size", 0)
        if size:
            grams = [tuple(["<s>", *h.tokens][j : j + size]) for h in hyps
                     for j in range(len(h.tokens) + 2 - size)]  # fmt: skip
            per_hyp = [
                [tuple(["<s>", *h.tokens][j : j + size]) for j in range(len(h.tokens) + 2 - size)]
                for h in hyps
            ]
            assert grams and all(len(set(g)) == len(g) for g in per_hyp)


def test_sampling_is_seeded(trained: Seq2Seq) -> None:
    sources = ["0123", "4321", "55"] * 3
    first = trained.predict(sources, decode="sample", seed=7)
    assert trained.predict(sources, decode="sample", seed=7) == first
    # and the seed is what fixes the draws: other seeds give other samples
    others = [trained.predict(sources, decode="sample", seed=seed) for seed in (8, 9)]
    assert all(other != first for other in others)


def test_decoding_option_errors(trained: Seq2Seq) -> None:
    with pytest.raises(ValueError, match="n_best > 1 needs decode='beam'"):
        trained.translate(["12"], n_best=2)
    with pytest.raises(ValueError, match="n_best must be <= beam_size = 2, got 3"):
        trained.translate(["12"], decode="beam", beam_size=2, n_best=3)
    with pytest.raises(TypeError, match="sources must be a list of strings, got one string"):
        trained.predict("12")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="length_penalty must be one of"):
        trained.translate(["12"], decode="beam", length_penalty="long")


# ---------------------------------------------------------------------- estimator
def test_save_load_round_trip_gives_identical_translations(
    trained: Seq2Seq, tmp_path: Path
) -> None:
    trained.save(tmp_path)
    again = Estimator.load(tmp_path)
    assert isinstance(again, Seq2Seq) and again.get_params() == trained.get_params()
    sources = ["0123", "543", "12345", "0", "9z"]
    settings: list[dict[str, Any]] = [
        {},
        {"decode": "beam", "beam_size": 3, "n_best": 2},
        {"decode": "sample", "seed": 11},
    ]
    for options in settings:
        assert again.translate(sources, **options) == trained.translate(sources, **options)


def test_evaluate_reports_exact_match_bleu_chrf(trained: Seq2Seq) -> None:
    pairs = reverse_pairs(20, 9)
    predictions = trained.predict([s for s, _ in pairs])
    metrics = trained.evaluate(pairs)
    assert set(metrics) == {"exact_match", "bleu", "chrf", "n"} and metrics["n"] == 20
    assert (
        metrics["exact_match"]
        == sum(p == t for p, (_, t) in zip(predictions, pairs, strict=True)) / 20
    )
    # corpus BLEU over characters (a word BLEU of digit strings is 0 here) and chrF, as
    # sacrebleu computes them on the same outputs
    references = [t for _, t in pairs]
    bleu = sacrebleu.corpus_bleu(predictions, [references], tokenize="char").score
    chrf = sacrebleu.corpus_chrf(predictions, [references]).score
    assert 0.0 < bleu < 100.0 and 0.0 < chrf < 100.0  # neither trivially 0 nor perfect
    assert metrics["bleu"] == pytest.approx(bleu) and metrics["chrf"] == pytest.approx(chrf)
    unfitted = Seq2Seq(vocab=[*SPECIALS, "a"], hidden_size=4, embedding_size=2)
    with pytest.raises(ValueError, match="is not fitted"):
        unfitted.predict(["a"])


def test_attention_weights_and_plot(trained: Seq2Seq) -> None:
    source, output, weights = trained.attention_weights("01234")
    assert source == list("01234") and weights.shape == (len(output) + 1, 5)
    assert torch.allclose(weights.sum(-1), torch.ones(len(output) + 1))
    figure = plot_attention(source, output, weights, title="t")
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list("01234")
    assert [t.get_text() for t in ax.get_yticklabels()] == [*output, "</s>"]
    with pytest.raises(ValueError, match=r"weights must have shape \(T_out, 4\)"):
        plot_attention(list("0123"), output, weights)
    with pytest.raises(ValueError, match="source is empty"):
        trained.attention_weights("")


def test_bad_training_input() -> None:
    estimator = Seq2Seq(hidden_size=4, embedding_size=2, **QUIET)
    with pytest.raises(ValueError, match="pairs must hold at least one"):
        estimator.fit([])
    with pytest.raises(TypeError, match=r"pairs\[1\] must be a \(source, target\) pair"):
        estimator.fit([("a", "b"), ("a",)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"pairs\[0\]: the target is empty \(no word token\)"):
        Seq2Seq(tokens="word", **QUIET).fit([("a b", "  ")])
    with pytest.raises(ValueError, match="vocabulary is too small"):
        Seq2Seq(min_count=5, **QUIET).fit([("ab", "ba")])
    with pytest.raises(ValueError, match=r"vocab must start with the special tokens"):
        Seq2Seq(vocab=["a", "b"])
    with pytest.raises(ValueError, match="attention must be one of"):
        Seq2Seq(attention="multihead")
    with pytest.raises(TypeError, match="unknown training option"):
        Seq2Seq(learning_rate=0.1)


# ---------------------------------------------------------------------- command line
def test_cli_train_translate_evaluate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "train.tsv"
    write_pairs(data, reverse_pairs(64, 2))
    valid = tmp_path / "valid.tsv"
    write_pairs(valid, reverse_pairs(8, 3))
    out = tmp_path / "run"
    argv = ["train", "seq2seq", "--data", str(data), "--valid", str(valid), "--out", str(out),
            "--hidden-size", "8", "--embedding-size", "4", "--batch-size", "16",
            "--max-epochs", "1", "--attention", "general", "--copy", "--no-progress",
            "--no-tensorboard"]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"exact_match", "bleu", "chrf", "n"} and metrics["n"] == 8
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "seq2seq" and config["params"]["copy"] is True
    assert config["params"]["vocab"][:4] == list(SPECIALS)
    capsys.readouterr()

    estimator = Seq2Seq.load(out)
    monkeypatch.setattr(sys, "stdin", io.StringIO("0123\n54\n"))
    assert main(["translate", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == estimator.predict(["0123", "54"])
    (tmp_path / "in.txt").write_text("0123\n")
    assert main(["translate", str(out), "--input", str(tmp_path / "in.txt"), "--decode", "beam",
                 "--beam-size", "3", "--n-best", "2"]) == 0  # fmt: skip
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    best = estimator.translate(["0123"], decode="beam", beam_size=3, n_best=2)[0]
    assert rows == [["0", f"{h.score:.4f}", h.text] for h in best]

    assert main(["evaluate", str(out), "--data", str(valid)]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(metrics)

    bad = tmp_path / "bad.tsv"
    bad.write_text("12\t21\n34 43\n")
    assert main(["evaluate", str(out), "--data", str(bad)]) == 2
    _one_line_error(capsys, r"lstmkit evaluate: error: data file .*bad\.tsv, line 2: no tab")
    assert main(["translate", str(out), "--n-best", "2"]) == 2
    _one_line_error(capsys, r"n_best > 1 needs decode='beam'")


def test_cli_holds_out_validation_and_refuses_bad_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = get_task("seq2seq")
    data = tmp_path / "train.tsv"
    write_pairs(data, reverse_pairs(20, 4))
    args = type("Args", (), {"data": str(data), "valid": None, "valid_fraction": 0.25, "seed": 0})
    (train,), (val,) = spec.make_data(args)  # type: ignore[arg-type]
    assert len(train) == 15 and len(val) == 5
    assert sorted(train + val) == sorted(reverse_pairs(20, 4))
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    argv = ["train", "seq2seq", "--data", str(empty), "--out", str(tmp_path / "r"),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    _one_line_error(capsys, r"lstmkit train seq2seq: error: data file .*empty\.tsv holds no pairs")
    assert main(["train", "seq2seq", "--out", str(tmp_path / "r")]) == 2
    _one_line_error(capsys, r"--data FILE is required")


# ---------------------------------------------------------------------- docs and experiments
def test_docs_python_block_runs() -> None:
    text = (ROOT / "docs" / "seq2seq.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/seq2seq.md", "exec"), {})


def test_addition_experiment_quick_learns() -> None:
    import s2s_addition

    result = s2s_addition.run(quick=True, seed=0, max_minutes=1.0, out=None)
    assert result["best_val_loss"] < 0.95 * result["first_val_loss"]
    assert result["test"]["n"] == 60 and 0.0 <= result["test"]["exact_match"] <= 1.0


def test_reverse_experiment_quick_aligns(tmp_path: Path) -> None:
    import s2s_reverse

    result = s2s_reverse.run(quick=True, seed=0, max_minutes=1.0, plot=str(tmp_path / "a.png"))
    assert result["alignment"] > 2 * result["chance_alignment"]  # attention near anti-diagonal
    assert result["best_val_loss"] < result["first_val_loss"]
    assert (tmp_path / "a.png").stat().st_size > 1000
