"""Issue 12: large alphabets, lossless subword tokenizers, clean subword sampling, comparable bpc.

Tokenizer round trips (Hypothesis), the unknown symbol, normalisation, SentencePiece's sample,
per-character bpc checked against an independent computation, and sampling over subwords:
lengths in characters, the prime seam, stops inside pieces, no U+FFFD from an untrained model.
"""

from __future__ import annotations

import functools
import json
import math
import random
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ScriptStepper
from hypothesis import given, settings
from hypothesis import strategies as st

from charnn.config import ModelConfig, SampleConfig, TokenizerConfig
from charnn.constraints import TokenRules
from charnn.data import build_tokenizer, split_train_val
from charnn.errors import ConfigError, DataError
from charnn.evaluate import LN2, evaluate_stream, token_char_lengths, token_extra_nats
from charnn.model import CharRNN
from charnn.sampling import generate
from charnn.stepper import FastStepper
from charnn.tokenizer import CharTokenizer, SentencePieceTokenizer, tokenizer_from_dict
from tests.conftest import TINY_MODEL_ARGS, make_text

TEXT = make_text(300, seed=3)
# Arbitrary Unicode without surrogates (UTF-8 corpora cannot hold them; the char tokenizer's
# surrogate handling is tested in test_tokenizer.py).
UNICODE = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)


@functools.lru_cache(maxsize=4)
def subword(kind: str, vocab: int = 400) -> SentencePieceTokenizer:
    tok = build_tokenizer(TokenizerConfig(kind=kind, vocab_size=vocab), [TEXT + "caf\u00e9\tx\r\n"])
    assert isinstance(tok, SentencePieceTokenizer) and tok.kind == kind
    return tok


def untrained(vocab: int, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    return CharRNN(ModelConfig(vocab_size=vocab, cell="gru", layers=1, hidden=16, embed=8)).eval()


# ---------------------------------------------------------------------------- round trips


@settings(max_examples=60, deadline=None)
@given(text=UNICODE)
def test_char_roundtrip_and_unseen_characters(text: str) -> None:
    tok = CharTokenizer.build([text or "x"])
    assert tok.decode(tok.encode(text)) == text
    other = CharTokenizer.build(["abc"])
    unseen = set(text) - set("abc")
    if unseen:  # without an unknown symbol, unseen characters are an error that names them
        with pytest.raises(DataError, match="not in the model's vocabulary"):
            other.encode(text)


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
@settings(max_examples=60, deadline=None)
@given(text=UNICODE)
def test_subword_roundtrip_of_arbitrary_unicode(kind: str, text: str) -> None:
    """Spaces, tabs, \\r\\n, controls, characters never seen in training (byte fallback) and a
    literal U+2581 all come back exactly."""
    tok = subword(kind)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert int(token_char_lengths(tok)[ids].sum()) == len(text)  # bpc counts the text's characters


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_subword_layout_and_meta_space_roundtrip(kind: str) -> None:
    tok = subword(kind)
    for text in [
        "  two  spaces ",
        "\ttab\t\r\nwindows\r\n",
        "\u2581 literal \u2581\u2581 marker\u2581",
        "\n\n\n",
        " ",
        "\u65e5\u672c\u8a9e \U0001f600",
        "a\u0301",
    ]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode("\u2581")) == "\u2581"  # SentencePiece alone gives back " "
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again.kind == kind and again.encode(TEXT).tolist() == tok.encode(TEXT).tolist()


def test_sentencepiece_alias_means_unigram() -> None:
    assert TokenizerConfig(kind="sentencepiece").kind == "unigram"
    legacy = {**subword("unigram").to_dict(), "kind": "sentencepiece"}  # a checkpoint from before
    assert tokenizer_from_dict(legacy).kind == "unigram"


def test_sentencepiece_learns_from_a_seeded_random_sample_not_the_first_lines() -> None:
    """The first 3000 lines use one alphabet, the last 3000 another: SentencePiece's own sampling
    (200 sentences here) sees both, where the first 200 lines would only show the first (and the
    second alphabet would be left to byte pieces)."""
    first = ["abad bead dab"] * 3000
    last = ["xyz zyx wxy"] * 3000
    config = TokenizerConfig(kind="bpe", vocab_size=300, sample_sentences=200, seed=5)
    tok = build_tokenizer(config, ["\n".join(first + last)])
    assert all(tok.byte_value(i) is None for i in tok.encode("xyz zyx wxy abad"))
    same = build_tokenizer(config, ["\n".join(first + last)])
    assert same.to_dict() == tok.to_dict()  # seeded: the same sample, the same model


# ---------------------------------------------------------------------------- large alphabets


def wide_text(distinct: int = 20_000, length: int = 60_000, seed: int = 0) -> str:
    """Mixed CJK ideographs, kana, hangul and emoji: ``distinct`` different characters."""
    blocks = (
        range(0x4E00, 0x9FFF),
        range(0x3041, 0x3097),
        range(0xAC00, 0xAC00 + 2000),
        range(0x1F300, 0x1F5FF),
    )
    pool = [chr(c) for block in blocks for c in block][:distinct]
    rng = random.Random(seed)
    body = pool + [rng.choice(pool) for _ in range(length - len(pool))]
    rng.shuffle(body)
    lines = ["".join(body[i : i + 40]) for i in range(0, len(body), 40)]
    return "\n".join(lines) + "\n"


def test_twenty_thousand_characters_train_and_sample_valid_utf8(cli_inprocess, tmp_path: Path) -> None:
    text = wide_text()
    corpus = tmp_path / "wide.txt"
    corpus.write_text(text, encoding="utf-8")
    tok = CharTokenizer.build([text])
    ids = tok.encode(text)
    assert tok.vocab_size == 20_001  # and the newline
    assert ids.dtype == np.uint16 and ids.nbytes == 2 * len(text)  # compact ids
    out = tmp_path / "run"
    proc = cli_inprocess(
        "train",
        corpus,
        "--out",
        out,
        *TINY_MODEL_ARGS,
        "--steps",
        "3",
        "--seq-len",
        "16",
        "--batch-size",
        "4",
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr
    size = sum(f.stat().st_size for f in (out / "latest").iterdir())
    per_char = (16 + 32 + 1) * 4 * 3  # embedding row, output row + bias; float32 weights + 2 Adam moments
    assert size < 20_001 * per_char + 2_000_000  # linear in the vocabulary, nothing quadratic
    sample = cli_inprocess("sample", "-c", out, "--length", "300", "--seed", "1")
    assert sample.returncode == 0, sample.stderr
    assert len(sample.stdout) == 300 and "\ufffd" not in sample.stdout
    sample.stdout.encode("utf-8")  # valid UTF-8 (no lone surrogates)


def test_max_vocab_and_min_char_count_fold_rare_characters_into_one_unknown_symbol() -> None:
    text = "aaaaabbbbcccdde"  # counts: a5 b4 c3 d2 e1
    tok = CharTokenizer.build([text], max_vocab=3)
    assert tok.chars == ["a", "b"] and tok.vocab_size == 3 and tok.unk == 3 and tok.unk_id == 2
    assert tok.encode("abcz").tolist() == [0, 1, 2, 2]  # rare and never-seen characters alike
    assert tok.decode([0, 2]) == "a\ufffd" and tok.never_emit() == [2]
    assert tok.extra_nats()[2] == pytest.approx(math.log(3))  # uniform over the 3 it stands for
    assert tokenizer_from_dict(json.loads(json.dumps(tok.to_dict()))).encode("abcz").tolist() == [0, 1, 2, 2]
    by_count = CharTokenizer.build([text], min_count=3)
    assert by_count.chars == ["a", "b", "c"] and by_count.unk == 2
    with pytest.raises(ConfigError):
        TokenizerConfig(kind="bpe", max_vocab=10)


def test_unknown_symbol_is_counted_honestly_and_never_sampled() -> None:
    """bpc charges an unknown character -log p(UNK) + log(M): computed here by hand."""
    tok = CharTokenizer.build([TEXT + "\u00e9\u00e8\u00ea"], min_count=2)  # the accents are rare
    assert tok.unk == 3
    model = untrained(tok.vocab_size)
    text = "Caf\u00e9 au lait\n"
    ids = tok.encode(text)
    start = tok.start_ids()[-1]
    result = evaluate_stream(
        model, ids, token_char_lengths(tok), context=start, extra_nats=token_extra_nats(tok)
    )
    seq = torch.tensor([[start, *ids.tolist()]])
    with torch.no_grad():
        logp = torch.log_softmax(model(seq[:, :-1])[0].double(), -1)[0]
    nats = -sum(float(logp[k, t]) for k, t in enumerate(ids.tolist())) + math.log(3)  # one é
    assert result.chars == len(text) and result.bpc == pytest.approx(nats / len(text) / LN2, rel=1e-5)
    stepper = FastStepper.from_model(model)
    config = SampleConfig(length=2000, seed=0)
    rules = TokenRules.for_tokenizer(tok)
    sample = generate(stepper, [start], config, tok, rng=np.random.default_rng(0), rules=rules)
    assert tok.unk_id not in sample[0].ids and "\ufffd" not in sample[0].text and len(sample[0].text) == 2000


def test_normalisation_is_off_by_default_and_stored_when_asked() -> None:
    decomposed = unicodedata.normalize("NFD", "caf\u00e9 na\u00efve\n")
    plain = build_tokenizer(TokenizerConfig(), [decomposed])
    assert plain.decode(plain.encode(decomposed)) == decomposed  # nothing changed
    nfc = build_tokenizer(TokenizerConfig(normalize="nfc"), [decomposed])
    assert "\u00e9" in nfc.chars and "\u0301" not in nfc.chars
    again = tokenizer_from_dict(json.loads(json.dumps(nfc.to_dict())))
    assert again.normalize == "nfc"
    assert again.decode(again.encode("cafe\u0301")) == "caf\u00e9"  # primes and eval text too
    sub = build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=400, normalize="nfkc"), [TEXT])
    assert sub.decode(sub.encode("\ufb01x")) == "fix"  # the ﬁ ligature under NFKC


# ---------------------------------------------------------------------------- comparable numbers


def direct_bits_per_char(model: CharRNN, tok, text: str) -> float:
    """Total nats of every token of ``text`` given the start context, / characters / ln 2."""
    seq = torch.tensor([[tok.start_ids()[-1], *tok.encode(text).tolist()]])
    with torch.no_grad():
        logits, _ = model(seq[:, :-1])
    nats = -torch.log_softmax(logits[0].double(), -1).gather(1, seq[0, 1:, None]).sum().item()
    return nats / len(text) / LN2


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_bpc_is_total_nats_over_the_characters_of_the_text(kind: str) -> None:
    """The same text under a char and a BPE model: eval's bpc equals the definition, computed
    independently with one forward pass, whatever the batching."""
    tok = CharTokenizer.build([TEXT]) if kind == "char" else subword("bpe")
    model = untrained(tok.vocab_size, seed=1)
    text = TEXT[:1500]
    ids = tok.encode(text)
    result = evaluate_stream(
        model, ids, token_char_lengths(tok), batch_size=3, seq_len=40, context=tok.start_ids()[-1]
    )
    assert result.tokens == len(ids) and result.chars == len(text)
    assert result.bpc == pytest.approx(direct_bits_per_char(model, tok, text), rel=2e-3)
    assert result.bpt == pytest.approx(result.bpc * len(text) / len(ids), rel=1e-9)


def test_validation_split_is_by_characters_for_subwords() -> None:
    tok = subword("bpe")
    ids = tok.encode(TEXT)
    train, val = split_train_val(ids, 0.1, char_lengths=token_char_lengths(tok))
    val_chars = int(token_char_lengths(tok)[val].sum())
    assert abs(val_chars - 0.1 * len(TEXT)) <= int(token_char_lengths(tok).max())
    assert tok.decode(train) + tok.decode(val) == TEXT


# ---------------------------------------------------------------------------- sampling over subwords


def pieces_of(tok: SentencePieceTokenizer, *texts: str) -> list[int]:
    out = []
    for text in texts:
        ids = tok.encode(text).tolist()
        assert len(ids) == 1, (text, ids)  # each text is one piece of this vocabulary
        out += ids
    return out


def test_prime_seam_keeps_exactly_one_space() -> None:
    """The prime's last piece is backed off and regenerated (healed): after "The day " (last
    piece "▁") the model's favourite "▁old" gives "The day old", not "The day  old"; after
    "The day" (last piece "ay") the space before "old" is not lost."""
    tok = subword("bpe")
    rules = TokenRules.for_tokenizer(tok)
    old_dog = pieces_of(tok, " old", " dog")
    for prime, expected in (("The day ", "old dog"), ("The day", " old dog")):
        ids = tok.encode(prime).tolist()
        kept, healed = rules.heal_prime(ids)
        assert kept == ids[:-1] and healed == tok.decode(ids[-1:])
        script = old_dog if expected.startswith("old") else [ids[-1], *old_dog]
        for beam in (None, 2):
            config = SampleConfig(length=len(expected), temperature=0, beam=beam)
            out = generate(
                ScriptStepper(script, tok.vocab_size, strength=20.0), ids, config, tok, rules=rules, heal=True
            )[0]
            assert out.text == expected and out.stopped_by == "length"
            assert tok.decode(kept + out.ids) == prime + expected  # the ids spell the whole text


def test_stop_string_spanning_two_tokens_cuts_inside_the_piece() -> None:
    tok = subword("bpe")
    script = pieces_of(tok, " old", " morning", " fox")
    stepper = ScriptStepper(script, tok.vocab_size, strength=20.0)
    for beam in (None, 2):
        config = SampleConfig(length=100, temperature=0, beam=beam, stops=("d mo",))
        out = generate(stepper, tok.start_ids(), config, tok, rules=TokenRules.for_tokenizer(tok))[0]
        assert (out.text, out.stopped_by) == (" old mo", "stop")


def test_length_counts_characters_under_bpe(cli_inprocess, tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "bpe"
    proc = cli_inprocess(
        "train",
        corpus,
        "--out",
        out,
        "--tokenizer",
        "bpe",
        "--vocab-size",
        "320",
        *TINY_MODEL_ARGS,
        "--steps",
        "3",
        "--seq-len",
        "16",
        "--batch-size",
        "4",
    )
    assert proc.returncode == 0, proc.stderr
    for n in (1, 37, 500):
        sample = cli_inprocess("sample", "-c", out, "--length", str(n), "--seed", str(n))
        assert sample.returncode == 0 and len(sample.stdout) == n, sample.stderr
    rows = cli_inprocess("sample", "-c", out, "--length", "50", "-k", "3", "--json", "--prime", "The ")
    for row in map(json.loads, rows.stdout.splitlines()):
        assert len(row["text"]) == row["chars"] == 50
    beam = cli_inprocess("sample", "-c", out, "--length", "40", "--beam", "3")
    assert beam.returncode == 0 and len(beam.stdout) == 40
    ev = json.loads(cli_inprocess("eval", "-c", out, corpus, "--json").stdout)
    assert ev["chars"] == len(TEXT) and ev["tokens"] < ev["chars"] and ev["bpt"] > ev["bpc"]
    reuse = cli_inprocess(
        "train",
        corpus,
        "--out",
        tmp_path / "again",
        "--tokenizer-from",
        out,
        *TINY_MODEL_ARGS,
        "--steps",
        "1",
        "--seq-len",
        "16",
        "--hidden",
        "8",
    )
    assert reuse.returncode == 0, reuse.stderr
    metas = [json.loads((d / "latest" / "meta.json").read_text()) for d in (out, tmp_path / "again")]
    assert metas[0]["tokenizer"] == metas[1]["tokenizer"]
    clash = cli_inprocess(
        "train", corpus, "--out", tmp_path / "x", "--tokenizer-from", out, "--tokenizer", "bpe"
    )
    assert clash.returncode == 2 and "--tokenizer-from" in clash.stderr


def test_untrained_bpe_model_writes_valid_text() -> None:
    """10,000 characters from random weights over byte-fallback pieces: exactly that many
    characters, valid UTF-8, no U+FFFD (byte pieces that cannot complete a character are masked)."""
    tok = subword("bpe")
    assert tok.byte_values().max() >= 0x80
    stepper = FastStepper.from_model(untrained(tok.vocab_size, seed=2))
    out = generate(
        stepper,
        tok.start_ids(),
        SampleConfig(length=10_000, temperature=1.5),
        tok,
        rng=np.random.default_rng(0),
        rules=TokenRules.for_tokenizer(tok),
    )[0]
    assert len(out.text) == 10_000 and "\ufffd" not in out.text
    assert tok.decode(out.ids) == out.text
    assert any(tok.byte_value(i) is not None and tok.byte_value(i) >= 0x80 for i in out.ids)  # it did try
    out.text.encode("utf-8")
