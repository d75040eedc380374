"""Chapter 2: the character tokenizer and BOS (SPEC section 3)."""

from __future__ import annotations

import pytest
from conftest import NAMES

from microgpt.data import load_docs
from microgpt.errors import UserError
from microgpt.tokenizer import Tokenizer, TokenizerError


def test_vocabulary_is_the_sorted_set_of_characters():
    tok = Tokenizer.from_docs(["banana", "cab", "zebra"])
    assert tok.chars == ["a", "b", "c", "e", "n", "r", "z"]
    assert tok.encode("abcenrz") == [0, 1, 2, 3, 4, 5, 6]


def test_bos_is_n_and_vocab_size_n_plus_one():
    tok = Tokenizer.from_docs(["hello", "world"])
    assert tok.chars == sorted(set("helloworld"))
    assert tok.BOS == len(tok.chars) == 7
    assert tok.vocab_size == 8


def test_names_vocabulary():
    tok = Tokenizer.from_docs(load_docs(NAMES))
    assert tok.chars == list("abcdefghijklmnopqrstuvwxyz")
    assert tok.BOS == 26
    assert tok.vocab_size == 27


def test_vocabulary_does_not_depend_on_document_order():
    docs = ["olivia", "emma", "ava"]
    assert Tokenizer.from_docs(docs).chars == Tokenizer.from_docs(docs[::-1]).chars


def test_round_trip():
    tok = Tokenizer.from_docs(["emma", "olivia", "ava"])
    for text in ("emma", "olivia", "", "vaiolem", "a"):
        assert tok.decode(tok.encode(text)) == text


def test_unicode_round_trip():
    docs = ["héllo wörld", "日本語", "ça va? 🙂", "naïve — café"]
    tok = Tokenizer.from_docs(docs)
    # One id per code point, ordered by code point.
    assert tok.chars == sorted(set("".join(docs)))
    assert tok.encode("🙂") == [len(tok.chars) - 1]
    for doc in docs:
        ids = tok.encode(doc)
        assert len(ids) == len(doc)
        assert tok.decode(ids) == doc


def test_decoding_bos_raises():
    tok = Tokenizer.from_docs(["abc"])
    with pytest.raises(TokenizerError, match=r"\b3\b"):
        tok.decode([0, tok.BOS, 1])


@pytest.mark.parametrize("bad", [-1, 4, 100])
def test_decoding_out_of_range_raises(bad):
    tok = Tokenizer.from_docs(["abc"])  # ids 0..2, BOS 3
    with pytest.raises(TokenizerError, match=str(bad)):
        tok.decode([0, bad])


def test_encoding_unknown_character_names_it():
    tok = Tokenizer.from_docs(["abc"])
    with pytest.raises(TokenizerError) as info:
        tok.encode("abXc")
    assert "X" in str(info.value)
    with pytest.raises(TokenizerError) as info:
        tok.encode("a€")
    assert "€" in str(info.value)


def test_tokenizer_error_is_a_user_error():
    # The command line turns UserError into a one-line message and exit code 2.
    assert issubclass(TokenizerError, UserError)
    assert issubclass(TokenizerError, ValueError)


def test_example_wraps_with_bos():
    tok = Tokenizer.from_docs(["emma", "olivia"])
    ids = tok.encode("emma")
    assert tok.example("emma") == [tok.BOS] + ids + [tok.BOS]
    assert tok.example("") == [tok.BOS, tok.BOS]
    # SPEC section 3: position p predicts token p+1, so the last target is BOS (end of document).
    ex = tok.example("emma")
    assert list(zip(ex[:-1], ex[1:]))[-1] == (ids[-1], tok.BOS)
