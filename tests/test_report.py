"""The surprisal computation (evaluate.py) and the page built from it (surprisal_page.py), without a browser.

The browser checks are in ``test_report_browser.py``.
"""

from __future__ import annotations

import base64
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from charnn.config import ModelConfig
from charnn.evaluate import (
    LN2,
    char_surprisal,
    line_bpc,
    surprising_passages,
    token_char_lengths,
    token_surprisal,
)
from charnn.model import CharRNN
from charnn.scoring import score_lines
from charnn.surprisal_page import ModelReport, build_report
from charnn.tokenizer import CharTokenizer, codepoints
from charnn.torch_stepper import TorchStepper
from tests.test_evaluate import TEXT, small_gru, sp_and_text


def _direct(model: CharRNN, seq: np.ndarray) -> torch.Tensor:
    """log-softmax of one full forward pass over ``seq`` (the reference)."""
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(seq.astype(np.int64))[None, :-1])
    return torch.log_softmax(logits[0].double(), dim=-1)  # (len-1, V)


@pytest.mark.parametrize("seq_len", [1, 5, 64, 1000])
def test_token_surprisal_equals_one_full_pass(seq_len: int) -> None:
    tok = CharTokenizer.from_codepoints(codepoints(TEXT))
    ids = tok.encode(TEXT)
    model = small_gru(tok.vocab_size)
    start = tok.start_ids()
    got = token_surprisal(model, ids, start, top_k=3, seq_len=seq_len)
    logp = _direct(model, np.concatenate([start, ids]))
    expected = logp.gather(1, torch.from_numpy(ids.astype(np.int64))[:, None]).squeeze(1).numpy()
    np.testing.assert_allclose(got.logprob, expected, rtol=1e-4, atol=1e-5)
    top = logp.topk(3, dim=-1)
    np.testing.assert_array_equal(got.top_ids[:, 0], top.indices[:, 0].numpy())
    np.testing.assert_allclose(got.top_probs, top.values.exp().numpy(), atol=1e-5)


def test_token_surprisal_sums_to_the_score_of_the_whole_text() -> None:
    """The page and ``charnn score --whole`` (default context: a newline) agree on the total."""
    tok = CharTokenizer.from_codepoints(codepoints(TEXT))
    ids = tok.encode(TEXT)
    model = small_gru(tok.vocab_size)
    got = token_surprisal(model, ids, tok.start_ids(), seq_len=17)
    (whole,) = score_lines(TorchStepper(model), tok.start_ids(), [ids], token_char_lengths(tok))
    assert got.logprob.sum() == pytest.approx(whole.logprob, rel=1e-5)


def test_subword_surprisal_is_spread_over_the_characters_it_spells() -> None:
    sp, text = sp_and_text()
    sample = text[:300] + "€ ü\n"  # characters outside the pieces go through byte fallback
    ids = sp.encode(sample)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=sp.vocab_size, layers=1, hidden=16, embed=8)).eval()
    tokens = token_surprisal(model, ids, sp.start_ids(), seq_len=32)
    cs = char_surprisal(sp, ids, tokens)
    assert cs.text == sp.decode(ids) == sample
    assert len(cs.bits) == len(cs.token_of_char) == len(sample)
    assert cs.bits.sum() == pytest.approx(-tokens.logprob.sum() / LN2, rel=1e-9)
    assert np.all(np.diff(cs.token_of_char) >= 0) and cs.token_of_char.max() < len(ids)
    # Every character of one token carries the same share.
    for t in np.unique(cs.token_of_char):
        share = cs.bits[cs.token_of_char == t]
        assert np.allclose(share, share[0])


@settings(max_examples=40, deadline=None)
@given(text=st.text(alphabet="ab\n", min_size=1, max_size=60), width=st.integers(1, 12))
def test_line_bpc_and_passages(text: str, width: int) -> None:
    bits = np.arange(len(text), dtype=np.float64) % 7
    starts, bpc = line_bpc(text, bits)
    lines = text.split("\n")
    expected = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    assert len(starts) == len(expected) and starts[0] == 0
    for s, b, line in zip(starts, bpc, expected, strict=True):
        assert text[s : s + len(line)] == line
        assert b == pytest.approx(bits[s : s + len(line)].mean())
    passages = surprising_passages(bits, width=width, count=5)
    spans = sorted((a, z) for a, z, _ in passages)
    assert all(z1 <= a2 for (_, z1), (a2, _) in zip(spans, spans[1:], strict=False))  # no overlap
    totals = [t for _, _, t in passages]
    assert totals == sorted(totals, reverse=True)
    assert totals[0] == pytest.approx(
        max(bits[i : i + min(width, len(text))].sum() for i in range(len(text) - min(width, len(text)) + 1))
    )


NASTY = "a</script><script>alert(1)</script> & \"q\" 's' <!-- x\n<blink>\n"


def _nasty_report(tmp_path: Path, two: bool = False) -> tuple[str, str]:
    text = NASTY * 3
    tok = CharTokenizer.from_codepoints(codepoints(text))
    ids = tok.encode(text)
    vocab = [tok.token_text(i) for i in range(tok.vocab_size)]
    reports = []
    for seed in (0, 1)[: 2 if two else 1]:
        torch.manual_seed(seed)
        model = CharRNN(ModelConfig(vocab_size=tok.vocab_size, layers=1, hidden=8, embed=4)).eval()
        cs = char_surprisal(tok, ids, token_surprisal(model, ids, tok.start_ids()))
        reports.append(ModelReport(f"run{seed}</title>", "char", vocab, cs))
    return text, build_report("in<&>.txt", reports)


def _data(page: str) -> tuple[dict, bytes]:
    meta = json.loads(re.search(r'<script type="application/json" id="meta">(.*?)</script>', page, re.S)[1])
    blob = re.search(r'<script type="application/octet-stream" id="data">(.*?)</script>', page, re.S)[1]
    return meta, zlib.decompress(base64.b64decode(blob))


@pytest.mark.parametrize("two", [False, True])
def test_page_escapes_the_text_and_keeps_its_data(tmp_path: Path, two: bool) -> None:
    text, page = _nasty_report(tmp_path, two)
    assert page.count("<script") == 3 and page.count("</script>") == 3  # the text opened or closed none
    assert "<blink>" not in page and "in&lt;&amp;&gt;.txt" in page and "run0&lt;/title&gt;" in page
    meta, raw = _data(page)
    offset, size, kind = meta["sections"]["text"]
    assert raw[offset : offset + size].decode("utf-8") == text
    assert meta["chars"] == len(text) and meta["bounds"][0] == 0 and meta["bounds"][-1] == len(text)
    assert len(meta["models"]) == (2 if two else 1)
    offset, size, kind = meta["sections"]["bh0"]
    assert kind == "u8" and size == len(text)


def test_page_references_nothing_outside_itself(tmp_path: Path) -> None:
    _, page = _nasty_report(tmp_path)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\(|\bsrc\s*=", page, re.I)
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', page))


def test_eval_repeated_checkpoint_gives_one_row_each(
    trained_run: Path, corpus_text: str, tmp_path: Path, cli_inprocess
) -> None:
    held_out = tmp_path / "held.txt"
    held_out.write_text(corpus_text[-600:], encoding="utf-8")
    proc = cli_inprocess("eval", "-c", trained_run, "-c", trained_run / "latest", held_out, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [Path(r["checkpoint"]).name for r in rows] == ["best", "latest"]
    assert all(r["chars"] > 0 and r["bpc"] > 0 for r in rows)
    plain = cli_inprocess("eval", "-c", trained_run, "-c", trained_run / "latest", held_out)
    lines = plain.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("bpc ") and lines[1].endswith("latest")
    assert f"{rows[1]['bpc']:.4f}" in lines[1]


def test_eval_html_compares_two_and_refuses_three(
    trained_run: Path, corpus_text: str, tmp_path: Path, cli_inprocess
) -> None:
    held_out = tmp_path / "held.txt"
    held_out.write_text(corpus_text[-600:], encoding="utf-8")
    out = tmp_path / "ab.html"
    proc = cli_inprocess("eval", "-c", trained_run, "-c", trained_run / "latest", held_out, "--html", out)
    assert proc.returncode == 0, proc.stderr
    page = out.read_text(encoding="utf-8")
    meta, _ = _data(page)
    assert len(meta["models"]) == 2 and "B − A" in page and "d4" in page
    assert not list(tmp_path.glob(".ab.html.*"))  # no temporary file left behind
    three = cli_inprocess("eval", *["-c", trained_run] * 3, held_out, "--html", out)
    assert three.returncode == 2 and "compares two" in three.stderr
    unwritable = cli_inprocess("eval", "-c", trained_run, held_out, "--html", tmp_path / "no" / "x.html")
    assert unwritable.returncode == 1 and "cannot write the page" in unwritable.stderr


def test_parallel_parts_see_their_warmup_context() -> None:
    """A long text read as parallel parts: every target scored exactly once; with a warm-up as long
    as the text before each part, the numbers equal one sequential pass."""
    tok = CharTokenizer.from_codepoints(codepoints(TEXT))
    ids = tok.encode(TEXT * 4)  # ~1.1k tokens
    model = small_gru(tok.vocab_size)
    one = token_surprisal(model, ids, tok.start_ids(), top_k=2, seq_len=50)
    parts = token_surprisal(
        model, ids, tok.start_ids(), top_k=2, seq_len=50, streams=4, min_segment=200, warmup=len(ids)
    )
    np.testing.assert_allclose(parts.logprob, one.logprob, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(parts.top_ids[:, 0], one.top_ids[:, 0])
    short = token_surprisal(
        model, ids, tok.start_ids(), top_k=2, seq_len=50, streams=4, min_segment=200, warmup=30
    )
    assert np.isfinite(short.logprob).all() and (short.logprob <= 0).all()
    # A small GRU forgets quickly: 30 tokens of warm-up already give nearly the same numbers.
    assert np.abs(short.logprob - one.logprob).max() < 0.5


def test_packed_columns_decode_to_the_computed_numbers(tmp_path: Path) -> None:
    text = NASTY * 3
    tok = CharTokenizer.from_codepoints(codepoints(text))
    ids = tok.encode(text)
    torch.manual_seed(3)
    model = CharRNN(ModelConfig(vocab_size=tok.vocab_size, layers=1, hidden=8, embed=4)).eval()
    cs = char_surprisal(tok, ids, token_surprisal(model, ids, tok.start_ids(), top_k=3))
    meta, raw = _data(build_report("x", [ModelReport("m", "char", list(tok.chars), cs)]))

    def column(name: str) -> np.ndarray:
        offset, size, kind = meta["sections"][name]
        return np.frombuffer(
            raw, dtype={"u8": "<u1", "u16": "<u2", "u32": "<u4"}[kind], count=size, offset=offset
        )

    bits = ((column("bh0").astype(np.int64) << 8) | column("bl0")) / meta["scale"]["bits"]
    np.testing.assert_allclose(bits, cs.bits, atol=1 / 128 + 1e-9)
    n, k = len(ids), 3
    probs = column("p0").reshape(k, n).T / meta["scale"]["prob"]  # (n, k), column-major on the page
    top = column("ids0").reshape(k, n).T
    shown = probs > 0
    np.testing.assert_allclose(probs[shown], cs.tokens.top_probs[shown], atol=0.01 + 1e-6)
    np.testing.assert_array_equal(top[shown], cs.tokens.top_ids[shown])
    assert (cs.tokens.top_probs[~shown] < 0.01 + 1e-6).all()  # only predictions under 1 % are left out
