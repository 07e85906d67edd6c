"""Tokenizers: exact round-trips, compact id dtypes, unknown characters, checkpoint serialisation."""

from __future__ import annotations

import functools
import random
import string
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charnn import tokenizer as tokenizer_module
from charnn.errors import CheckpointError, DataError
from charnn.tokenizer import (
    CharTokenizer,
    SentencePieceTokenizer,
    codepoints,
    id_dtype,
    tokenizer_from_dict,
    unique_codepoints,
)

# Any Unicode text, including astral-plane characters and lone surrogates (codepoints() keeps them).
ANY_TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=200)
ASCII_TEXT = st.text(alphabet=string.printable, max_size=200)


def char_tokenizer_for(text: str) -> CharTokenizer:
    return CharTokenizer.from_codepoints(codepoints(text))


@functools.lru_cache(maxsize=1)
def sp_tokenizer() -> SentencePieceTokenizer:
    """A small SentencePiece model trained once per session on ASCII lines with irregular spacing."""
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "x", "yy", "the", "and", "of", "42", "(a)", "b.c"]
    lines = []
    for _ in range(400):
        sep = " " * rng.randint(1, 3)
        lines.append(sep.join(rng.choice(words) for _ in range(rng.randint(0, 8))) + " " * rng.randint(0, 2))
    return SentencePieceTokenizer.train("\n".join(lines), vocab_size=300)


# ---------------------------------------------------------------------------- char tokenizer


@settings(max_examples=150, deadline=None)
@given(ANY_TEXT)
def test_char_roundtrip_any_text(text: str) -> None:
    """decode(encode(t)) == t for arbitrary Unicode when the vocabulary is built from t itself."""
    if not text:
        return
    tok = char_tokenizer_for(text)
    ids = tok.encode(text)
    assert isinstance(ids, np.ndarray)
    assert ids.shape == (len(text),)
    assert tok.decode(ids) == text
    assert tok.decode(ids.tolist()) == text
    assert int(ids.max()) < tok.vocab_size


@settings(max_examples=50, deadline=None)
@given(ANY_TEXT.filter(bool))
def test_char_tokenizer_survives_to_dict(text: str) -> None:
    """The checkpoint form of the vocabulary rebuilds a tokenizer that encodes identically."""
    tok = char_tokenizer_for(text)
    again = tokenizer_from_dict(tok.to_dict())
    assert again.vocab_size == tok.vocab_size
    np.testing.assert_array_equal(again.encode(text), tok.encode(text))


def test_char_vocab_is_sorted_unique_codepoints() -> None:
    tok = char_tokenizer_for("hello, world\n")
    assert tok.chars == sorted(set("hello, world\n"))
    assert tok.encode("\n").tolist() == [0]  # '\n' sorts first
    assert tok.start_ids() == tok.encode("\n").tolist()


def test_char_encode_matches_vocab_positions() -> None:
    """Ids are positions in ``chars`` even when the vocabulary was not given sorted."""
    tok = CharTokenizer(["z", "a", "\u00e9", "\U0001f600", "\n"])
    text = "a\U0001f600z\n\u00e9a"
    assert tok.encode(text).tolist() == [tok.chars.index(c) for c in text]


@pytest.mark.parametrize(
    "size, dtype",
    [
        (1, np.uint8),
        (31, np.uint8),
        (256, np.uint8),
        (257, np.uint16),
        (300, np.uint16),
        (65536, np.uint16),
        (65537, np.uint32),
    ],
)
def test_id_dtype_is_smallest(size: int, dtype: type) -> None:
    assert id_dtype(size) == np.dtype(dtype)


def test_char_dtype_uint8_for_small_vocab() -> None:
    tok = char_tokenizer_for(string.printable)
    assert tok.vocab_size <= 256
    assert tok.encode(string.printable).dtype == np.uint8


def test_char_dtype_uint16_for_more_than_256_symbols() -> None:
    text = "".join(chr(c) for c in range(0x100, 0x100 + 300))
    tok = char_tokenizer_for(text)
    assert tok.vocab_size == 300
    ids = tok.encode(text)
    assert ids.dtype == np.uint16
    assert ids.tolist() == list(range(300))  # ids above 255 are not truncated
    assert tok.decode(ids) == text


def test_unknown_characters_raise_data_error_naming_them() -> None:
    tok = char_tokenizer_for("abc\n")
    with pytest.raises(DataError) as info:
        tok.encode("abXcY\u00e9")
    message = str(info.value)
    for ch in ("X", "Y", "\u00e9"):
        assert repr(ch) in message
    assert "3 character(s)" in message
    assert "'a'" not in message  # known characters are not blamed


def test_many_unknown_characters_are_summarised() -> None:
    tok = char_tokenizer_for("a")
    with pytest.raises(DataError, match=r"26 character\(s\).*\.\.\."):
        tok.encode(string.ascii_uppercase)


@settings(max_examples=100, deadline=None)
@given(ANY_TEXT.filter(bool), st.integers(1, 9))
def test_chunked_encoding_matches_whole(text: str, chunk: int) -> None:
    """Encoding in chunks (to bound memory) gives the same ids and vocabulary for any chunk size."""
    tok = char_tokenizer_for(text)
    whole = tok.encode(text)
    with mock.patch.object(tokenizer_module, "_CHUNK", chunk):
        np.testing.assert_array_equal(unique_codepoints(text), np.unique(codepoints(text)))
        np.testing.assert_array_equal(tok.encode(text), whole)
        assert tok.decode(tok.encode(text)) == text


def test_unknown_characters_in_later_chunks_are_all_named() -> None:
    """Characters past the first chunk with an unknown one are named too (real chunk size)."""
    n = tokenizer_module._CHUNK * 2 + 10
    text = list("ab" * (n // 2))
    text[5], text[tokenizer_module._CHUNK + 3], text[-1] = "X", "Y", "Z"
    tok = char_tokenizer_for("ab")
    with pytest.raises(DataError) as info:
        tok.encode("".join(text))
    assert str(info.value) == "3 character(s) not in the model's vocabulary: 'X', 'Y', 'Z'"
    long_text = "ab" * (tokenizer_module._CHUNK + 5)
    ids = tok.encode(long_text)
    assert ids.dtype == np.uint8 and len(ids) == len(long_text)
    assert ids[-4:].tolist() == [0, 1, 0, 1]


def test_char_tokenizer_rejects_bad_vocabularies() -> None:
    with pytest.raises(DataError):
        CharTokenizer([])
    with pytest.raises(CheckpointError):
        CharTokenizer(["a", "a"])
    with pytest.raises(CheckpointError):
        CharTokenizer(["ab"])


# ---------------------------------------------------------------------------- sentencepiece


def test_sentencepiece_roundtrips_layout() -> None:
    """Newlines, blank lines, repeated/leading/trailing spaces and unseen ASCII all survive."""
    tok = sp_tokenizer()
    samples = [
        "  two  spaces  ",
        "\n\nleading newlines",
        "trailing newline\n",
        "a\n  b\n   c   \n\n",
        "unseen ~chars {Q} #9 \t tab",
        " ",
        "\n",
        "",
    ]
    for text in samples:
        assert tok.decode(tok.encode(text)) == text, repr(text)


@settings(max_examples=100, deadline=None)
@given(ASCII_TEXT)
def test_sentencepiece_roundtrips_any_ascii(text: str) -> None:
    tok = sp_tokenizer()
    assert tok.decode(tok.encode(text)) == text


def test_sentencepiece_ids_dtype_and_serialisation() -> None:
    tok = sp_tokenizer()
    assert tok.vocab_size > 256  # byte fallback alone brings 256 pieces
    ids = tok.encode("alpha  beta\ngamma")
    assert ids.dtype == np.uint16
    again = tokenizer_from_dict(tok.to_dict())
    np.testing.assert_array_equal(again.encode("alpha  beta\ngamma"), ids)
    assert tok.start_ids() == tok.encode("\n").tolist()


def test_sentencepiece_vocab_too_small_says_how_big() -> None:
    """Byte fallback needs 256 pieces plus one per character: a too-small --vocab-size gets a
    one-line DataError giving the minimum (which then works), not SentencePiece's internals."""
    text = "\n".join([string.ascii_letters + string.digits + " .,;:!?"] * 5)
    with pytest.raises(DataError, match=r"^--vocab-size 100 is too small .* at least (\d+) ") as info:
        SentencePieceTokenizer.train(text, vocab_size=100)
    assert "\n" not in str(info.value)
    need = int(str(info.value).split("at least ")[1].split()[0])
    assert SentencePieceTokenizer.train(text, vocab_size=need).vocab_size >= need


def test_sentencepiece_needs_nonempty_lines() -> None:
    with pytest.raises(DataError):
        SentencePieceTokenizer.train("\n\n\n", vocab_size=50)


@pytest.mark.parametrize(
    "data",
    [
        None,
        {},
        {"kind": "bpe"},
        {"kind": "char", "chars": 5},
        {"kind": "sentencepiece", "model": "!!not base64!!"},
        {"kind": "sentencepiece", "model": "aGVsbG8="},
    ],
)
def test_tokenizer_from_bad_dict_is_checkpoint_error(data: object) -> None:
    with pytest.raises(CheckpointError):
        tokenizer_from_dict(data)  # type: ignore[arg-type]
