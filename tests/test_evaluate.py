"""Evaluation agrees with direct computations through ``model.forward``: stream loss, bpc, line scores."""

from __future__ import annotations

import functools
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from charnn.config import ModelConfig
from charnn.evaluate import LN2, evaluate_stream, token_char_lengths
from charnn.model import CharRNN
from charnn.scoring import LineScore, score_lines
from charnn.stepper import FastStepper
from charnn.tokenizer import CharTokenizer, SentencePieceTokenizer, codepoints
from charnn.torch_stepper import TorchStepper

TEXT = "the cat sat on the mat.\nthe dog sat on the log!\n" * 6


@pytest.fixture(scope="module")
def tok() -> CharTokenizer:
    return CharTokenizer.from_codepoints(codepoints(TEXT))


@pytest.fixture(scope="module", params=["lstm", "gru"])
def model(request: pytest.FixtureRequest, tok: CharTokenizer) -> CharRNN:
    torch.manual_seed(0)
    m = CharRNN(ModelConfig(vocab_size=tok.vocab_size, cell=request.param, layers=2, hidden=24, embed=12))
    with torch.no_grad():  # random but non-trivial weights so predictions differ by position
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m.eval()


def direct_loss(model: CharRNN, ids: np.ndarray) -> float:
    """Mean next-token NLL over the whole sequence in one forward pass."""
    x = torch.from_numpy(ids.astype(np.int64))[None]
    with torch.no_grad():
        logits, _ = model(x[:, :-1])
    return F.cross_entropy(logits[0].double(), x[0, 1:]).item()


def test_stream_loss_equals_full_sequence_cross_entropy(model: CharRNN, tok: CharTokenizer) -> None:
    ids = tok.encode(TEXT)
    lengths = token_char_lengths(tok)
    result = evaluate_stream(model, ids, lengths, batch_size=1, seq_len=len(ids))
    expected = direct_loss(model, ids)
    assert result.tokens == result.chars == len(ids) - 1
    assert result.loss == pytest.approx(expected, rel=1e-5)
    assert result.bpc == pytest.approx(result.loss / math.log(2), rel=1e-9)  # char tokenizer: bpc = loss/ln 2
    assert result.to_dict() == {
        "loss": result.loss,
        "bpc": result.bpc,
        "bpt": result.bpt,
        "tokens": result.tokens,
        "chars": result.chars,
    }


@pytest.mark.parametrize("seq_len", [1, 7, 50])
def test_shorter_windows_carry_hidden_state(model: CharRNN, tok: CharTokenizer, seq_len: int) -> None:
    """With batch_size=1 the hidden state is carried across windows, so the loss is the same
    as one full pass up to float rounding, however short the windows are."""
    ids = tok.encode(TEXT)
    expected = direct_loss(model, ids)
    result = evaluate_stream(model, ids, token_char_lengths(tok), batch_size=1, seq_len=seq_len)
    assert result.tokens == len(ids) - 1
    assert result.loss == pytest.approx(expected, rel=1e-4)


def test_hidden_state_matters(model: CharRNN, tok: CharTokenizer) -> None:
    """Sanity check of the test above: resetting the state every window would give a different loss."""
    ids = tok.encode(TEXT)
    seq_len = 7
    total, count = 0.0, 0
    x = torch.from_numpy(ids.astype(np.int64))
    with torch.no_grad():
        for start in range(0, len(ids) - 1, seq_len):
            end = min(start + seq_len, len(ids) - 1)
            logits, _ = model(x[None, start:end])
            total += F.cross_entropy(logits[0], x[start + 1 : end + 1], reduction="sum").item()
            count += end - start
    assert abs(total / count - direct_loss(model, ids)) > 1e-3


def stream_sum(model: CharRNN, ids: np.ndarray, streams: int) -> float:
    """Total NLL when the n-1 targets are cut into ``streams`` contiguous runs of ceil length."""
    m = len(ids) - 1
    length = -(-m // streams)
    return sum(
        direct_loss(model, ids[s : min(s + length, m) + 1]) * (min(s + length, m) - s)
        for s in range(0, m, length)
    )


def test_parallel_streams_equal_per_stream_direct_losses(model: CharRNN, tok: CharTokenizer) -> None:
    """batch_size > 1 splits the text into contiguous streams that together predict every token;
    the loss is the token-weighted mean of each stream's own full-sequence loss."""
    ids = tok.encode(TEXT)
    B = 4
    result = evaluate_stream(model, ids, token_char_lengths(tok), batch_size=B, seq_len=16)
    assert result.tokens == len(ids) - 1
    assert result.loss == pytest.approx(stream_sum(model, ids, B) / (len(ids) - 1), rel=1e-4)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 120), batch_size=st.integers(1, 6), seq_len=st.integers(1, 40))
def test_stream_loss_property(n: int, batch_size: int, seq_len: int) -> None:
    """For any length/batch/window: the streams are contiguous, predict every token after the
    first, and the loss is the mean of each stream's own full-sequence loss."""
    tok = CharTokenizer.from_codepoints(codepoints(TEXT))
    ids = tok.encode((TEXT * 2)[:n])
    model = small_gru(tok.vocab_size)
    result = evaluate_stream(model, ids, token_char_lengths(tok), batch_size=batch_size, seq_len=seq_len)
    streams = max(1, min(batch_size, (n - 1) // seq_len))
    assert result.tokens == result.chars == n - 1
    assert result.loss == pytest.approx(stream_sum(model, ids, streams) / (n - 1), rel=1e-4)


@functools.lru_cache(maxsize=2)
def small_gru(vocab: int) -> CharRNN:
    torch.manual_seed(1)
    m = CharRNN(ModelConfig(vocab_size=vocab, cell="gru", layers=1, hidden=12, embed=6))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m.eval()


def test_evaluate_restores_training_mode(model: CharRNN, tok: CharTokenizer) -> None:
    model.train()
    try:
        evaluate_stream(model, tok.encode(TEXT), token_char_lengths(tok), batch_size=2, seq_len=10)
        assert model.training
    finally:
        model.eval()


def test_evaluate_needs_two_tokens(model: CharRNN, tok: CharTokenizer) -> None:
    with pytest.raises(ValueError):
        evaluate_stream(model, tok.encode("a"), token_char_lengths(tok))


@functools.lru_cache(maxsize=1)
def sp_and_text() -> tuple[SentencePieceTokenizer, str]:
    rng = random.Random(1)
    words = ["apple", "banana", "cherry", "date", "elderberry"]
    text = "\n".join(" ".join(rng.choice(words) for _ in range(6)) for _ in range(60)) + "\n"
    return SentencePieceTokenizer.train(text, vocab_size=300), text


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=50))
def test_subword_char_lengths_spell_any_text(text: str) -> None:
    """Per-token character counts add up to the text's length, also for characters the tokenizer
    never saw, which it spells as UTF-8 byte pieces (a character = its lead byte)."""
    sp, _ = sp_and_text()
    lengths = token_char_lengths(sp)
    ids = sp.encode(text)
    assert sp.decode(ids) == text
    assert int(lengths[ids].sum()) == len(text)


def test_subword_char_lengths_byte_pieces() -> None:
    sp, _ = sp_and_text()
    lengths = token_char_lengths(sp)
    ids = sp.encode("\u00e9\U0001f600")  # unseen: 2 + 4 byte pieces
    assert [sp.byte_value(int(i)) for i in ids] == list("\u00e9\U0001f600".encode())
    assert lengths[ids].tolist() == [1, 0, 1, 0, 0, 0]
    assert sp.byte_value(int(sp.encode("apple")[0])) is None


def test_bpc_counts_characters_for_subword_tokens() -> None:
    """For SentencePiece, bpc divides the total NLL by characters spelled, not by tokens."""
    sp, text = sp_and_text()
    lengths = token_char_lengths(sp)
    assert lengths.shape == (sp.vocab_size,)
    ids = sp.encode(text)
    assert int(lengths[ids].sum()) == len(text)  # pieces spell the text exactly
    torch.manual_seed(0)
    m = CharRNN(ModelConfig(vocab_size=sp.vocab_size, layers=1, hidden=16, embed=8)).eval()
    result = evaluate_stream(m, ids, lengths, batch_size=1, seq_len=len(ids))
    assert result.chars == int(lengths[ids[1:]].sum()) > result.tokens
    assert result.bpc == pytest.approx(result.loss * result.tokens / LN2 / result.chars, rel=1e-9)


def test_token_char_lengths_char_tokenizer(tok: CharTokenizer) -> None:
    lengths = token_char_lengths(tok)
    assert lengths.shape == (tok.vocab_size,) and (lengths == 1).all()


# ---------------------------------------------------------------------------- score_lines


def direct_logprob(model: CharRNN, context: list[int], line: np.ndarray) -> float:
    seq = torch.tensor(context + line.astype(np.int64).tolist())[None]
    with torch.no_grad():
        logits, _ = model(seq[:, :-1])
    logp = torch.log_softmax(logits[0].double(), dim=-1)
    c = len(context)
    return float(sum(logp[c - 1 + i, seq[0, c + i]] for i in range(len(line))))


def score_both(
    model: CharRNN, context: list[int], lines: list[np.ndarray], lengths: np.ndarray, batch_size: int = 1
) -> list[LineScore]:
    """score_lines over the torch stepper (batched) and the numpy one (line by line): they agree."""
    torch_scores = score_lines(TorchStepper(model), context, lines, lengths, batch_size=batch_size)
    numpy_scores = score_lines(FastStepper.from_model(model), context, lines, lengths)
    for a, b in zip(torch_scores, numpy_scores, strict=True):
        assert (a.tokens, a.chars) == (b.tokens, b.chars)
        assert a.logprob == pytest.approx(b.logprob, rel=1e-5, abs=1e-5)
    return torch_scores


def test_score_lines_equals_direct_computation(model: CharRNN, tok: CharTokenizer) -> None:
    rng = random.Random(3)
    alphabet = "".join(tok.chars)
    lines = [tok.encode("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))) for _ in range(9)]
    lines.insert(4, tok.encode(""))  # empty lines score 0
    context = tok.encode("the ").tolist()
    scores = score_both(model, context, lines, token_char_lengths(tok), batch_size=4)  # several batches
    assert len(scores) == len(lines)
    for line, sc in zip(lines, scores, strict=True):
        assert sc.tokens == sc.chars == len(line)
        assert sc.logprob == pytest.approx(direct_logprob(model, context, line), rel=1e-5, abs=1e-6)
        if len(line):
            assert sc.logprob < 0
            assert sc.bpc == pytest.approx(-sc.logprob / math.log(2) / len(line))
        else:
            assert sc.logprob == 0 and sc.bpc == 0


def test_score_lines_preserves_input_order(tok: CharTokenizer) -> None:
    """Scores come back in input order even though batches are sorted by length."""
    torch.manual_seed(0)
    m = CharRNN(ModelConfig(vocab_size=tok.vocab_size, layers=1, hidden=8, embed=8)).eval()
    lines = [tok.encode(s) for s in ("the cat", "a", "the dog sat on the mat", "cat")]
    context = tok.encode("\n").tolist()
    scores = score_both(m, context, lines, token_char_lengths(tok), batch_size=3)
    for line, sc in zip(lines, scores, strict=True):
        assert sc.tokens == len(line)
        assert sc.logprob == pytest.approx(direct_logprob(m, context, line), rel=1e-5, abs=1e-6)


def test_score_lines_only_empty_lines_with_one_token_context(model: CharRNN, tok: CharTokenizer) -> None:
    """Regression: a batch of only empty lines after a 1-token context (the CLI default, a newline)
    used to run the RNN on a zero-length input and crash."""
    lines = [tok.encode(""), tok.encode(""), tok.encode("the"), tok.encode("")]
    context = tok.encode("\n").tolist()
    scores = score_both(model, context, lines, token_char_lengths(tok), batch_size=2)
    assert [(s.logprob, s.tokens) for s in scores[:2]] == [(0.0, 0), (0.0, 0)]
    assert scores[3].logprob == 0.0
    assert scores[2].logprob == pytest.approx(direct_logprob(model, context, lines[2]), rel=1e-5)
    assert score_both(model, context, [tok.encode("")], token_char_lengths(tok))[0].logprob == 0.0


def test_score_lines_restores_training_mode(model: CharRNN, tok: CharTokenizer) -> None:
    model.train()
    try:
        score_lines(
            TorchStepper(model), tok.encode("\n").tolist(), [tok.encode("the")], token_char_lengths(tok)
        )
        assert model.training
    finally:
        model.eval()


def test_score_lines_needs_context(model: CharRNN, tok: CharTokenizer) -> None:
    with pytest.raises(ValueError):
        score_lines(TorchStepper(model), [], [tok.encode("the")], token_char_lengths(tok))
