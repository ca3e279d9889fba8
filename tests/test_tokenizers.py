"""Tokenizers of lstmkit.data.tokenizers: vocabularies, <unk>, round trips, save/load, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lstmkit.data.tokenizers import (
    EOS,
    UNK,
    CharTokenizer,
    SubwordTokenizer,
    WordTokenizer,
    load_tokenizer,
    tokenizer_from_dict,
    train_tokenizer,
)

TEXT = "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n"


# ---------------------------------------------------------------------- characters
def test_char_vocabulary_is_sorted_by_frequency_with_unk_first() -> None:
    tok = CharTokenizer.train("aaabbc")
    assert tok.itos == [UNK, "a", "b", "c"]
    assert tok.encode("cab") == [3, 1, 2]
    assert tok.decode([3, 1, 2]) == "cab"


def test_char_min_count_and_unknown_characters_map_to_unk() -> None:
    tok = CharTokenizer.train("aaabbc", min_count=2)
    assert tok.itos == [UNK, "a", "b"]
    assert tok.encode("abcz") == [1, 2, 0, 0]
    assert tok.decode(tok.encode("abcz")) == f"ab{UNK}{UNK}"


def test_char_round_trip_of_the_training_text() -> None:
    tok = CharTokenizer.train(TEXT)
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.start_id == tok.stoi["\n"]


def test_ties_are_broken_by_the_token_so_the_order_is_reproducible() -> None:
    assert CharTokenizer.train("ba").itos == [UNK, "a", "b"]
    assert CharTokenizer.train("ab").itos == [UNK, "a", "b"]


# ---------------------------------------------------------------------- words
def test_word_eos_at_every_line_break_but_not_at_an_open_last_line() -> None:
    tok = WordTokenizer.train("a b\nb c\n")
    assert tok.itos[:2] == [UNK, EOS]
    a, b, c = tok.stoi["a"], tok.stoi["b"], tok.stoi["c"]
    assert tok.encode("a b\nb c\n") == [a, b, tok.eos_id, b, c, tok.eos_id]
    assert tok.encode("a b") == [a, b]  # a prompt continues its sentence
    assert tok.decode(tok.encode("a b\nb c\n")) == "a b\nb c\n"


def test_word_min_count_max_size_and_literal_unk() -> None:
    tok = WordTokenizer.train(TEXT, min_count=2)
    assert set(tok.itos) == {UNK, EOS, "the", "cat", "sat", "on", "dog", "a"}
    assert tok.encode("the zebra <unk>") == [tok.stoi["the"], 0, 0]
    capped = WordTokenizer.train(TEXT, max_size=4)
    assert capped.itos == [UNK, EOS, "the", "a"]  # the 4 ids: specials and the 2 most frequent


def test_decode_stream_pieces_concatenate_to_decode() -> None:
    tok = WordTokenizer.train(TEXT)
    ids = tok.encode(TEXT)
    assert "".join(tok.decode_stream(ids)) == tok.decode(ids) == TEXT


# ---------------------------------------------------------------------- subwords
@pytest.mark.parametrize("algorithm", ["bpe", "unigram"])
def test_subword_round_trip_and_unknown_characters(algorithm: str) -> None:
    tok = SubwordTokenizer.train(TEXT * 5, algorithm=algorithm, vocab_size=40, min_count=2)
    assert tok.token(0) == UNK and 2 <= tok.vocab_size <= 40
    assert tok.decode(tok.encode(TEXT)) == TEXT
    ids = tok.encode("the cat Ω")
    assert ids[-1] == 0  # a character outside the alphabet
    assert tok.decode(tok.encode("the cat\nthe dog")) == "the cat\nthe dog"


def test_bpe_learns_merges() -> None:
    tok = SubwordTokenizer.train(TEXT * 5, vocab_size=60)
    assert len(tok.encode("the cat")) < len("the cat")


# ---------------------------------------------------------------------- save / load
@pytest.mark.parametrize("kind", ["char", "word", "bpe", "unigram"])
def test_save_load_round_trip(kind: str, tmp_path: Path) -> None:
    tok = train_tokenizer(TEXT * 3, kind, max_size=50 if kind in ("bpe", "unigram") else None)
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert type(again) is type(tok) and again.vocab_size == tok.vocab_size
    probe = "the cat sat\non a zebra"
    assert again.encode(probe) == tok.encode(probe)
    assert again.to_dict() == tok.to_dict()
    assert json.loads((tmp_path / "tokenizer.json").read_text())["format"] == "lstmkit-tokenizer"


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_empty_text_is_refused(kind: str) -> None:
    with pytest.raises(ValueError, match="text is empty"):
        train_tokenizer(" \n", kind)


def test_vocabulary_too_small() -> None:
    with pytest.raises(ValueError, match=r"vocabulary too small: .* 1 distinct characters"):
        CharTokenizer.train("aaaa")
    with pytest.raises(ValueError, match=r"vocabulary too small: .* 0 distinct words"):
        WordTokenizer.train("a b c", min_count=2)
    with pytest.raises(ValueError, match="vocabulary too small"):
        CharTokenizer.train("abc", max_size=2)


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(TypeError, match="text must be a str, got 3"):
        CharTokenizer.train(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind must be one of 'char', 'word'"):
        train_tokenizer(TEXT, "sentencepiece")
    with pytest.raises(ValueError, match="min_count must be a positive int, got 0"):
        WordTokenizer.train(TEXT, min_count=0)
    tok = CharTokenizer.train(TEXT)
    with pytest.raises(ValueError, match=r"ids\[1\] must be an id in \[0, "):
        tok.decode([1, 999])


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tok.json"
    with pytest.raises(ValueError, match=r"tok\.json does not exist"):
        load_tokenizer(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"tok\.json is not valid JSON"):
        load_tokenizer(path)
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match=r"tok\.json is not an lstmkit tokenizer"):
        load_tokenizer(path)
    with pytest.raises(ValueError, match=r"tokenizer: a vocabulary must start with '<unk>'"):
        tokenizer_from_dict({"format": "lstmkit-tokenizer", "kind": "char", "itos": ["a", "b"]})
