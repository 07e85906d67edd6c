"""Decoding maths and behaviour: filters, greedy, sampling statistics, stops, beam search."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from conftest import ScriptStepper

from charnn.config import ModelConfig, SampleConfig
from charnn.constraints import TokenRules
from charnn.errors import ConfigError
from charnn.model import CharRNN
from charnn.sampling import _draw, _draw_one, filter_logits, generate
from charnn.stepper import FastStepper

ALPHABET = "abcdefghijklmnop"
PRIME = [1, 2, 3]


def decode(i: int) -> str:
    return ALPHABET[i]


class Decoding:
    """The decoding side of a tokenizer, from an ``id -> text`` function."""

    def __init__(self, fn: Callable[[int], str]) -> None:
        self.fn = fn

    def incremental_decoder(self) -> Decoding:
        return self

    def feed(self, token_id: int) -> str:
        return self.fn(token_id)

    def flush(self) -> str:
        return ""

    def getstate(self) -> None:
        return None

    def setstate(self, state: None) -> None:
        pass


DECODE = Decoding(decode)


def make_stepper(vocab: int = 8, cell: str = "lstm", scale: float = 0.5) -> tuple[CharRNN, FastStepper]:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=vocab, cell=cell, layers=2, hidden=16, embed=8))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval(), FastStepper.from_model(model)


def model_logprob(model: CharRNN, prime: list[int], ids: list[int]) -> float:
    """log p(ids | prime) computed independently with one model.forward pass."""
    seq = torch.tensor([prime + ids])
    with torch.no_grad():
        logits, _ = model(seq[:, :-1])
    logp = torch.log_softmax(logits.double(), dim=-1)[0, len(prime) - 1 :]  # predicts ids
    return logp.gather(1, torch.tensor(ids)[:, None]).sum().item()


def run(stepper: FastStepper, seed: int = 0, prime: list[int] = PRIME, **kwargs: object) -> list:
    return generate(stepper, prime, SampleConfig(**kwargs), DECODE, rng=np.random.default_rng(seed))


# -- filter_logits ---------------------------------------------------------------------------------


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_temperature_scaling() -> None:
    logits = np.array([[2.0, 1.0, 0.0, -1.0]], dtype=np.float32)
    original = logits.copy()
    for temperature in (0.5, 1.0, 2.0):
        out = filter_logits(logits, temperature, None, None)
        np.testing.assert_allclose(out, (logits - 2.0) / temperature)  # shifted: the top one is 0
        expected = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
        np.testing.assert_allclose(softmax(out), expected, rtol=1e-6)
    assert np.array_equal(logits, original)  # input untouched
    # Lower temperature sharpens: the top token's probability grows monotonically.
    temps = (2.0, 1.0, 0.5, 0.1)
    tops = [softmax(filter_logits(logits, t, None, None))[0, 0] for t in temps]
    assert tops == sorted(tops) and tops[-1] > 0.99
    with pytest.raises(ValueError):
        filter_logits(logits, 0.0, None, None)


@pytest.mark.parametrize("temperature", [1e-320, 5e-324, 1e-45, 1e-38, 1e-20])
def test_tiny_temperatures_are_greedy_without_nan(temperature: float) -> None:
    """Logits / T used to overflow to inf - inf = NaN and emit token 0 for ever."""
    logits = np.array([[3.0, 1e4, -7.0, 9999.9], [-2.0, -1.0, -1.5, -3.0]], dtype=np.float32)
    out = filter_logits(logits, temperature, None, None)
    assert not np.isnan(out).any() and out[0, 1] == 0 and out[1, 1] == 0
    assert (softmax(out).argmax(axis=1) == [1, 1]).all()
    for k in (None, 2):
        kept = filter_logits(logits, temperature, k, 0.5)
        assert not np.isnan(kept).any() and (np.isfinite(kept).sum(axis=1) == 1).all()


@pytest.mark.parametrize("extra", [{}, {"top_k": 5}, {"top_p": 0.9}, {"num_samples": 3}])
@pytest.mark.parametrize("temperature", [1e-320, 1e-45, 1e-30])
def test_tiny_temperatures_generate_the_greedy_text(temperature: float, extra: dict) -> None:
    _, stepper = make_stepper()
    greedy = run(stepper, length=25, temperature=0)[0]
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no numpy warnings either
        samples = run(stepper, seed=4, length=25, temperature=temperature, **extra)
    assert all(s.ids == greedy.ids for s in samples)
    assert all(s.logprob == pytest.approx(greedy.logprob, abs=1e-6) for s in samples)


def test_top_k_keeps_exactly_the_k_best() -> None:
    logits = np.array([[0.1, 3.0, -2.0, 2.0, 1.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    out = filter_logits(logits, 1.0, 2, None)
    assert np.isinf(out).sum(axis=1).tolist() == [3, 3]
    assert np.flatnonzero(np.isfinite(out[0])).tolist() == [1, 3]
    assert np.flatnonzero(np.isfinite(out[1])).tolist() == [0, 1]
    np.testing.assert_allclose(out[np.isfinite(out)], [0.0, -1.0, 0.0, -1.0])
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.testing.assert_allclose(filter_logits(logits, 1.0, 99, None), shifted)


@pytest.mark.parametrize(
    ("top_p", "kept"),
    [(1e-6, {2}), (0.45, {2}), (0.75, {2, 0}), (0.85, {2, 0, 3}), (0.99, {2, 0, 3, 1}), (1.0, {0, 1, 2, 3})],
)
def test_top_p_keeps_the_smallest_nucleus(top_p: float, kept: set[int]) -> None:
    probs = np.array([[0.3, 0.05, 0.5, 0.15]])  # sorted: 2 (0.5), 0 (0.3), 3 (0.15), 1 (0.05)
    out = filter_logits(np.log(probs), 1.0, None, top_p)
    assert set(np.flatnonzero(np.isfinite(out[0])).tolist()) == kept


def test_filter_order_temperature_then_top_k_then_top_p() -> None:
    logits = np.log(np.array([[0.4, 0.3, 0.2, 0.1]]))
    # top-p alone at 0.5 needs two tokens (0.4 < 0.5) ...
    assert np.isfinite(filter_logits(logits, 1.0, None, 0.5)).sum() == 2
    # ... but after top-2 the renormalised top token has 4/7 >= 0.5, so one token survives.
    assert np.isfinite(filter_logits(logits, 1.0, 2, 0.5)).sum() == 1
    # Temperature comes first: at T=0.25 the top token alone exceeds 0.5 (0.4^4 dominates).
    assert np.isfinite(filter_logits(logits, 0.25, None, 0.5)).sum() == 1


def test_draw_inverts_the_cumulative_distribution() -> None:
    """_draw maps evenly spaced uniforms to tokens in exact proportion to their weights."""
    weights = np.array([[0.0, 1.0, 0.0, 2.0, 1.0, 0.0], [3.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    grid = (np.arange(4000) + 0.5) / 4000  # uniforms on a fine grid: counts are exact quarters
    tokens = np.stack([_draw(np.cumsum(weights, axis=1), np.array([u, u])) for u in grid])
    assert np.bincount(tokens[:, 0], minlength=6).tolist() == [0, 1000, 0, 2000, 1000, 0]
    assert np.bincount(tokens[:, 1], minlength=6).tolist() == [3000, 0, 0, 0, 0, 1000]
    # Zero-weight tokens are never drawn, even at the ends of [0, 1) (and a total rounded up).
    edges = np.array([0.0, np.nextafter(1.0, 0.0)])
    for row in weights:
        cum = np.tile(np.cumsum(row), (2, 1))
        assert all(row[k] > 0 for k in _draw(cum, edges))
        assert row[_draw_one(cum[0], 1.0)] > 0  # u == 1 cannot happen, but stays safe
    # The batched path agrees with the single-row one (searchsorted vs counting), zero weights included.
    rng = np.random.default_rng(0)
    cum = np.cumsum(rng.random((50, 7)) * (rng.random((50, 7)) > 0.3), axis=1) + 1e-3
    u = rng.random(50)
    assert _draw(cum, u).tolist() == [_draw_one(cum[r], u[r]) for r in range(50)]


# -- greedy equivalences ---------------------------------------------------------------------------


def test_greedy_top_k_1_top_p_tiny_and_beam_1_agree() -> None:
    _, stepper = make_stepper()
    greedy = run(stepper, length=25, temperature=0)[0]
    assert len(greedy.ids) == 25 and greedy.stopped_by == "length"
    assert run(stepper, seed=1, length=25, top_k=1)[0].ids == greedy.ids
    assert run(stepper, seed=2, length=25, top_p=1e-6)[0].ids == greedy.ids
    beam = run(stepper, length=25, beam=1)[0]
    assert beam.ids == greedy.ids
    assert beam.logprob == pytest.approx(greedy.logprob, abs=1e-6)


def test_beam_1_equals_greedy_with_stops() -> None:
    _, stepper = make_stepper()
    text = run(stepper, length=30, temperature=0)[0].text
    stop = text[10:12]
    greedy = run(stepper, length=30, temperature=0, stops=(stop,))[0]
    beam = run(stepper, length=30, beam=1, stops=(stop,))[0]
    assert greedy.text == text[: text.index(stop) + 2]
    assert (beam.ids, beam.stopped_by) == (greedy.ids, "stop") == (greedy.ids, greedy.stopped_by)


# -- logprob and sampling statistics ---------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_logprob_is_the_models_raw_logprob(cell: str) -> None:
    model, stepper = make_stepper(cell=cell)
    samples = run(stepper, length=20, temperature=0.7, top_k=5, top_p=0.9, num_samples=3)
    samples += run(stepper, length=12, beam=4, num_samples=2)
    for sample in samples:
        assert sample.logprob == pytest.approx(model_logprob(model, PRIME, sample.ids), abs=1e-4)


CHI2_CRITICAL_P001 = {7: 24.322}  # chi-square critical values at p = 0.001, by degrees of freedom


def assert_first_tokens_follow_softmax(
    temperature: float, draw: Callable[[FastStepper, int], list[int]], draws: int
) -> None:
    """Chi-square test: the first generated tokens are distributed as softmax(logits / T)."""
    vocab = 8
    model, stepper = make_stepper(vocab=vocab)
    with torch.no_grad():
        logits, _ = model(torch.tensor([PRIME]))
    expected = torch.softmax(logits[0, -1].double() / temperature, dim=-1) * draws
    assert expected.min() > 5  # the chi-square approximation needs it
    counts = torch.bincount(torch.tensor(draw(stepper, draws)), minlength=vocab).double()
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < CHI2_CRITICAL_P001[vocab - 1]


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_one_step_samples_follow_softmax(temperature: float) -> None:
    def batched(stepper: FastStepper, draws: int) -> list[int]:
        samples = run(stepper, seed=123, length=1, temperature=temperature, num_samples=draws)
        return [s.ids[0] for s in samples]

    assert_first_tokens_follow_softmax(temperature, batched, draws=40_000)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_single_stream_draws_follow_the_tempered_softmax(temperature: float) -> None:
    """The one-stream fast path (scalar bookkeeping) draws from the same distribution."""

    def one_at_a_time(stepper: FastStepper, draws: int) -> list[int]:
        return [run(stepper, seed=seed, length=1, temperature=temperature)[0].ids[0] for seed in range(draws)]

    assert_first_tokens_follow_softmax(temperature, one_at_a_time, draws=3000)


# -- batching, seeds, streaming --------------------------------------------------------------------


class SpyStepper:
    """Wraps a stepper and records the batch size of every step call."""

    def __init__(self, inner: FastStepper) -> None:
        self.inner = inner
        self.vocab_size = inner.vocab_size
        self.step_rows: list[int] = []
        self.prime_shapes: list[tuple[int, ...]] = []

    def prime(self, ids: np.ndarray, state: object = None) -> tuple:
        self.prime_shapes.append(tuple(ids.shape))
        return self.inner.prime(ids, state)

    def step(self, ids: torch.Tensor, state: tuple) -> tuple:
        self.step_rows.append(ids.shape[0])
        return self.inner.step(ids, state)

    def reorder(self, state: tuple, index: torch.Tensor) -> tuple:
        return self.inner.reorder(state, index)


def test_num_samples_run_as_one_batch_and_differ() -> None:
    _, stepper = make_stepper()
    spy = SpyStepper(stepper)
    samples = generate(
        spy,
        PRIME,
        SampleConfig(length=30, num_samples=4),
        DECODE,
        rng=np.random.default_rng(0),
    )
    assert spy.prime_shapes == [(1, len(PRIME))]  # the prime goes in once, in one pass
    assert spy.step_rows == [4] * 29  # the first token comes from prime's logits
    assert len({tuple(s.ids) for s in samples}) == 4
    assert all(len(s.ids) == 30 and len(s.text) == 30 for s in samples)


def test_same_seed_same_output() -> None:
    _, stepper = make_stepper()
    a = run(stepper, seed=7, length=40, num_samples=3, temperature=0.9, top_p=0.95)
    b = run(stepper, seed=7, length=40, num_samples=3, temperature=0.9, top_p=0.95)
    c = run(stepper, seed=8, length=40, num_samples=3, temperature=0.9, top_p=0.95)
    assert a == b
    assert a != c


def test_on_text_streams_each_sample_in_order() -> None:
    _, stepper = make_stepper()
    got: dict[int, list[str]] = {0: [], 1: [], 2: []}
    samples = generate(
        stepper,
        PRIME,
        SampleConfig(length=15, num_samples=3, stops=("a",)),
        DECODE,
        on_text=lambda i, piece: got[i].append(piece),
        rng=np.random.default_rng(3),
    )
    for i, sample in enumerate(samples):
        assert "".join(got[i]) == sample.text
        assert sample.text == "".join(decode(t) for t in sample.ids)


def test_length_zero_and_empty_prime() -> None:
    _, stepper = make_stepper()
    calls: list[tuple[int, str]] = []
    for extra in ({}, {"beam": 2}):
        out = generate(
            stepper,
            PRIME,
            SampleConfig(length=0, num_samples=2, **extra),
            DECODE,
            on_text=lambda i, p: calls.append((i, p)),
        )
        assert [(s.ids, s.text, s.logprob) for s in out] == [([], "", 0.0)] * 2
    assert all(piece == "" for _, piece in calls)
    with pytest.raises(ConfigError):
        generate(stepper, [], SampleConfig(length=5), DECODE)


# -- stops -----------------------------------------------------------------------------------------


def test_stop_cuts_at_first_occurrence_and_is_kept() -> None:
    _, stepper = make_stepper()
    text = run(stepper, length=40, temperature=0)[0].text
    stop = text[20:23]
    first = text.index(stop)
    cut = run(stepper, length=40, temperature=0, stops=("zzz", stop))[0]
    assert cut.text == text[: first + len(stop)]
    assert cut.stopped_by == "stop"
    # A stop that would only complete after the length limit does not count.
    short = run(stepper, length=first + 1, temperature=0, stops=(stop,))[0]
    assert (short.text, short.stopped_by) == (text[: first + 1], "length")


def test_sampled_rows_stop_independently() -> None:
    model, stepper = make_stepper()
    stops = ("ab", "hh")
    samples = run(stepper, seed=5, length=40, num_samples=8, stops=stops)
    assert {s.stopped_by for s in samples} == {"stop", "length"}  # finished rows leave a live batch
    for s in samples:
        if s.stopped_by == "stop":
            assert s.text.endswith(stops) and not any(stop in s.text[:-1] for stop in stops)
        else:
            assert len(s.ids) == 40 and not any(stop in s.text for stop in stops)
        assert s.logprob == pytest.approx(model_logprob(model, PRIME, s.ids), abs=1e-4)


# -- beam search -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("vocab", "length"), [(3, 4), (4, 3)])
def test_beam_search_matches_brute_force(vocab: int, length: int) -> None:
    model, stepper = make_stepper(vocab=vocab, scale=1.0)
    prime = [0, 1]
    seqs = [list(s) for s in itertools.product(range(vocab), repeat=length)]
    with torch.no_grad():
        logits, _ = model(torch.tensor([prime + s for s in seqs])[:, :-1])
    logp = torch.log_softmax(logits.double(), dim=-1)[:, len(prime) - 1 :]  # (S, length, V)
    scores = logp.gather(2, torch.tensor(seqs)[:, :, None]).sum(dim=(1, 2))
    best = torch.argsort(scores, descending=True)[:5].tolist()

    width = vocab ** (length - 1)
    beams = run(stepper, prime=prime, length=length, beam=width, num_samples=5)
    assert [b.ids for b in beams] == [seqs[i] for i in best]
    for b, i in zip(beams, best, strict=True):
        assert b.logprob == pytest.approx(scores[i].item(), abs=1e-5)
        assert b.stopped_by == "length"


def test_beam_results_are_distinct_and_ranked_by_normalised_score() -> None:
    model, stepper = make_stepper()
    for penalty in (0.0, 1.0, 2.0):
        beams = run(stepper, length=20, beam=6, num_samples=6, stops=("a", "cd"), length_penalty=penalty)
        assert len({tuple(b.ids) for b in beams}) == len(beams) == 6
        norm = [b.logprob / (len(b.ids) ** penalty) for b in beams]
        assert norm == sorted(norm, reverse=True)
        for b in beams:
            assert b.logprob == pytest.approx(model_logprob(model, PRIME, b.ids), abs=1e-4)
            assert (b.stopped_by == "stop") == b.text.endswith(("a", "cd"))
    assert math.isfinite(beams[0].logprob)


def test_a_failing_decoder_propagates() -> None:
    _, stepper = make_stepper()

    def boom(i: int) -> str:
        raise RuntimeError("decode failed")

    with pytest.raises(RuntimeError):
        generate(stepper, PRIME, SampleConfig(length=5), Decoding(boom))


def test_unkept_samples_are_streamed_but_not_collected() -> None:
    """keep=False: an endless stream holds no ids or text (constant memory), same output."""
    _, stepper = make_stepper()
    config = SampleConfig(length=300, num_samples=2, stops=("hh",))
    kept = generate(stepper, PRIME, config, DECODE, rng=np.random.default_rng(9))
    streamed: list[str] = []
    light = generate(
        stepper,
        PRIME,
        config,
        DECODE,
        rng=np.random.default_rng(9),
        keep=[False, True],
        on_text=lambda i, p: streamed.append(p) if i == 0 else None,
    )
    assert (light[0].ids, light[0].text) == ([], "")
    assert "".join(streamed) == kept[0].text and light[1] == kept[1]
    assert (light[0].logprob, light[0].stopped_by) == (kept[0].logprob, kept[0].stopped_by)


# -- streaming subword text ------------------------------------------------------------------------


def test_sentencepiece_byte_pieces_stream_whole_characters() -> None:
    pytest.importorskip("sentencepiece")
    from charnn.tokenizer import SentencePieceTokenizer

    tokenizer = SentencePieceTokenizer.train("\n".join(["the cat and the hat"] * 50), vocab_size=300)
    text = "é€😀"
    script = tokenizer.encode(text).tolist()
    assert len(script) == 9 and all(tokenizer.byte_value(i) is not None for i in script)  # 2 + 3 + 4 bytes
    stepper = ScriptStepper(script, tokenizer.vocab_size)

    def go(**kwargs: object) -> tuple[list, str]:
        streamed: list[str] = []
        config = SampleConfig(**{"temperature": 0, **kwargs})  # type: ignore[arg-type]
        rules = TokenRules.for_tokenizer(tokenizer)  # a caller with a tokenizer passes its rules
        on_text = lambda i, p: streamed.append(p)  # noqa: E731
        out = generate(stepper, PRIME, config, tokenizer, on_text=on_text, rules=rules)  # type: ignore[arg-type]
        return out, "".join(streamed)

    samples, streamed = go(length=3)  # --length counts characters: 3 characters, 9 byte pieces
    assert samples[0].ids == script and samples[0].text == streamed == text
    samples, streamed = go(length=9, stops=("€",))  # stops see whole characters
    assert (samples[0].text, streamed, samples[0].stopped_by) == ("é€", "é€", "stop")
    samples, streamed = go(length=2)  # never cut inside a character
    assert (samples[0].text, streamed, samples[0].stopped_by) == ("é€", "é€", "length")
    for stops in ((), ("😀",)):
        beams, streamed = go(length=3, beam=2, stops=stops)
        assert beams[0].ids == script and beams[0].text == streamed == text
    assert "".join(tokenizer.token_text(i) for i in script) != text  # what per-token decoding gave
