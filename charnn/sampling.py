"""Decoding: temperature / top-k / top-p sampling, greedy, and beam search.

Pure functions over a :class:`~charnn.stepper.FastStepper`: nothing here prints or
touches files. Text reaches the caller through ``on_text`` as it is generated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from charnn.config import SampleConfig
from charnn.errors import ConfigError
from charnn.stepper import FastStepper
from charnn.tokenizer import StreamDecoder

OnText = Callable[[int, str], None]


class StreamDecoding(Protocol):
    """What decoding needs of a tokenizer: a fresh incremental decoder per stream, which holds
    back the bytes of a partial UTF-8 character (every :class:`~charnn.tokenizer.Tokenizer` has one)."""

    def stream_decoder(self) -> StreamDecoder: ...


@dataclass
class Sample:
    """One generated continuation (the prime is not included)."""

    ids: list[int]
    text: str
    logprob: float  # log p(text | prime) under the raw (unfiltered, untempered) model
    stopped_by: str  # "length" | "stop"


def filter_logits(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> torch.Tensor:
    """(N, V) -> (N, V): divide by temperature, then keep the top-k, then the top-p nucleus.

    Removed tokens get -inf. The nucleus is the smallest set of most likely tokens whose
    probability reaches ``top_p`` (never empty). Temperature 0 (greedy) is the caller's job.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 here (0 means greedy), got {temperature}")
    out = logits / temperature if temperature != 1.0 else logits.clone()
    vocab = out.shape[-1]
    if top_k is not None and top_k < vocab:
        # Scatter exactly k survivors (a `< kth value` mask would keep extra ties).
        values, index = torch.topk(out, top_k, dim=-1)
        out = torch.full_like(out, -math.inf).scatter_(-1, index, values)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach p; the first one always stays.
        drop_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
        drop_sorted[:, 1:] = cumulative[:, :-1] >= top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        out = out.masked_fill(drop, -math.inf)
    return out


def _draw_one(cumulative: np.ndarray, u: float) -> int:
    """Inverse-CDF draw from one row of running sums (V,) of weights >= 0, with u in [0, 1).

    Returns the token k with ``C[k-1] <= u * C[V-1] < C[k]``, i.e. token k with probability
    ``weight_k / total``; zero-weight tokens (equal neighbouring sums) are never drawn.
    """
    total = cumulative[-1]
    token = int(cumulative.searchsorted(u * total, side="right"))
    if token >= len(cumulative):  # u * total rounded up to the total: the last live token
        token = int(np.argmax(cumulative >= total))
    return token


def _draw(cumulative: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """:func:`_draw_one` for every row: running sums (N, V), uniforms (N,) -> tokens (N,)."""
    if len(cumulative) == 1:
        return np.array([_draw_one(cumulative[0], float(uniforms[0]))])
    total = cumulative[:, -1]
    token = (cumulative <= (uniforms * total)[:, None]).sum(axis=1)
    if token.max() >= cumulative.shape[1]:
        token = np.minimum(token, np.argmax(cumulative >= total[:, None], axis=1))
    return token


class _Uniforms:
    """Uniforms in [0, 1) drawn from a torch.Generator in blocks (one torch call per block)."""

    def __init__(self, generator: torch.Generator | None, block: int = 4096) -> None:
        self.generator, self.block = generator, block
        self.buffer = np.empty(0)
        self.pos = 0

    def one(self) -> float:
        if self.pos >= len(self.buffer):
            self.take(0)
        self.pos += 1
        return float(self.buffer[self.pos - 1])

    def take(self, n: int) -> np.ndarray:
        if self.pos + n >= len(self.buffer):
            rest = self.buffer[self.pos :]
            fresh = torch.rand(max(self.block, n), dtype=torch.float64, generator=self.generator).numpy()
            self.buffer, self.pos = np.concatenate([rest, fresh]), 0
        out = self.buffer[self.pos : self.pos + n]
        self.pos += n
        return out


@contextmanager
def _one_thread() -> Iterator[None]:
    """Scope torch to one intra-op thread (restored afterwards) while decoding.

    The steps run in numpy; torch is left with the prime pass and small per-step ops (beam
    search's top-k, top-k/top-p filters), which a second thread cannot speed up, while OpenMP's
    spin-waiting makes them 10x slower or worse whenever another process keeps the cores busy.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _StopMatcher:
    """Detects stop strings in streamed text by keeping only a short tail of each stream."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.keep = max((len(s) for s in self.stops), default=1) - 1  # chars a match may reach back

    def feed(self, tail: str, piece: str) -> tuple[str, bool]:
        """Return the new tail and whether a stop string ends inside ``piece``."""
        window = tail + piece
        hit = any(stop in window for stop in self.stops)  # window holds only keep old chars: matches are new
        return (window[-self.keep :] if self.keep else ""), hit


def generate(
    stepper: FastStepper,
    prime_ids: Sequence[int],
    config: SampleConfig,
    decode: StreamDecoding,
    on_text: OnText | None = None,
    generator: torch.Generator | None = None,
) -> list[Sample]:
    """Continue ``prime_ids``: ``num_samples`` samples, or the best beam-search hypotheses.

    ``decode`` (a tokenizer) turns ids into text through per-stream decoders, which hold back
    partial UTF-8 characters of byte-fallback pieces.
    Sampling/greedy streams ``on_text(i, piece)`` per token; beam search calls it once per
    result with the whole text. Beam mode ignores temperature, top-k and top-p (the CLI
    rejects those combinations). Draws use uniforms from ``generator``: same seed, same output.
    """
    if len(prime_ids) == 0:
        raise ConfigError("the prime text must not be empty")
    with torch.inference_mode(), _one_thread():
        logits, state = stepper.prime(torch.tensor([list(prime_ids)], dtype=torch.long))  # (1, V)
        if config.length == 0:
            return [Sample([], "", 0.0, "length") for _ in range(config.num_samples)]
        if config.beam is None:
            return _sample(stepper, logits.numpy(), state, config, decode, on_text, generator)
        results = _beam_search(stepper, logits, state, config, decode)
    if on_text is not None:
        for i, sample in enumerate(results):
            on_text(i, sample.text)
    return results


def _sample(
    stepper: FastStepper,
    logits: np.ndarray,
    state: np.ndarray,
    config: SampleConfig,
    decode: StreamDecoding,
    on_text: OnText | None,
    generator: torch.Generator | None,
) -> list[Sample]:
    """All num_samples streams as one batch; finished rows are dropped from the batch.

    Works on numpy arrays throughout (stepper.step returns numpy logits for numpy ids).
    """
    n = config.num_samples
    expand = np.zeros(n, dtype=np.intp)
    logits, state = logits[expand], stepper.reorder(state, expand)  # (n, V)
    greedy = config.temperature == 0
    inv_temp = 0.0 if greedy else 1.0 / config.temperature
    # Temperature alone is done in numpy here; top-k/top-p go through filter_logits.
    simple = config.top_k is None and config.top_p is None
    matcher = _StopMatcher(config.stops) if config.stops else None
    decoders = [decode.stream_decoder() for _ in range(n)]
    feeds = [d.feed for d in decoders]
    uniforms = _Uniforms(generator)

    rows = list(range(n))  # batch row -> sample index
    ids: list[list[int]] = [[] for _ in range(n)]
    pieces: list[list[str]] = [[] for _ in range(n)]
    tails = [""] * n
    logprob = [0.0] * n
    stopped_by = ["length"] * n
    row_logprob = np.zeros(n)  # running sums for the live rows

    for t in range(config.length):
        if len(rows) == 1 and simple:  # single stream: scalar bookkeeping, fewer numpy calls
            row = logits[0]
            top = float(row.max())
            numerators = np.exp(row - top)  # raw softmax numerators: the logprob is always raw
            if greedy:
                token = int(row.argmax())
            else:
                weights = numerators if inv_temp == 1.0 else np.exp((row - top) * inv_temp)
                token = _draw_one(weights.cumsum(dtype=np.float64), uniforms.one())
            row_logprob[0] += float(row[token]) - top - math.log(numerators.sum(dtype=np.float64))
            nxt = np.array([token])
        else:
            top_rows = logits.max(axis=1, keepdims=True)
            numerators = np.exp(logits - top_rows)
            if greedy:
                nxt = logits.argmax(axis=1)  # (rows,)
            elif simple:
                weights = numerators if inv_temp == 1.0 else np.exp((logits - top_rows) * inv_temp)
                nxt = _draw(weights.cumsum(axis=1, dtype=np.float64), uniforms.take(len(rows)))
            else:
                filtered = filter_logits(
                    torch.from_numpy(logits), config.temperature, config.top_k, config.top_p
                )
                weights = torch.softmax(filtered.double(), dim=-1).numpy()
                nxt = _draw(weights.cumsum(axis=1), uniforms.take(len(rows)))
            chosen = logits[np.arange(len(rows)), nxt].astype(np.float64)
            row_logprob += chosen - top_rows[:, 0] - np.log(numerators.sum(axis=1, dtype=np.float64))

        done: list[int] = []
        for row, token in enumerate(nxt.tolist()):
            i = rows[row]
            piece = feeds[i](token)
            ids[i].append(token)
            pieces[i].append(piece)
            if on_text is not None:
                on_text(i, piece)
            if matcher is not None:
                tails[i], hit = matcher.feed(tails[i], piece)
                if hit:
                    stopped_by[i] = "stop"
                    done.append(row)
        if done:
            for row in done:
                logprob[rows[row]] = float(row_logprob[row])
            done_rows = set(done)
            keep = [row for row in range(len(rows)) if row not in done_rows]
            rows, row_logprob = [rows[row] for row in keep], row_logprob[keep]
            if not rows:
                break
            nxt, state = nxt[keep], stepper.reorder(state, np.array(keep, dtype=np.intp))
        if t == config.length - 1:
            break
        logits, state = stepper.step(nxt, state)
    for row, total in zip(rows, row_logprob.tolist(), strict=True):
        logprob[row] = total
    for i, decoder in enumerate(decoders):  # a character cut short by the end of a stream
        rest = decoder.flush()
        if rest:
            pieces[i].append(rest)
            if on_text is not None:
                on_text(i, rest)
    return [Sample(ids[i], "".join(pieces[i]), logprob[i], stopped_by[i]) for i in range(n)]


@dataclass
class _Hyp:
    """A beam hypothesis; ``path`` is a cons list (token, parent) so extending it is O(1)."""

    path: tuple | None
    length: int
    score: float  # cumulative raw log-prob
    tail: str
    finished: bool
    pending: object = None  # a StreamDecoder's state (bytes of an unfinished character)

    def ids(self) -> list[int]:
        out: list[int] = []
        node = self.path
        while node is not None:
            out.append(node[0])
            node = node[1]
        return out[::-1]


def _beam_search(
    stepper: FastStepper,
    logits: torch.Tensor,
    state: tuple[torch.Tensor, ...],
    config: SampleConfig,
    decode: StreamDecoding,
) -> list[Sample]:
    """Width-W beam search; finished hypotheses keep their slot and compete by normalised score.

    Each position: all one-token extensions of the live hypotheses plus the finished ones are
    ranked by ``logprob / length**length_penalty`` and the best W stay. Live extensions share
    one length, so among them this is plain top-W by log-prob (exact search when W covers every
    prefix), and with W=1 it is greedy decoding. Ends at ``config.length`` or when no beam is live.
    """
    width, alpha = config.beam or 1, config.length_penalty
    matcher = _StopMatcher(config.stops) if config.stops else None
    vocab = logits.shape[-1]
    scratch = decode.stream_decoder()

    def extend(hyp: _Hyp, token: int) -> tuple[str, object]:
        """The text ``token`` completes after ``hyp``, and the decoder state after it."""
        scratch.setstate(hyp.pending)
        return scratch.feed(token), scratch.getstate()

    def full_text(hyp_ids: list[int]) -> str:
        decoder = decode.stream_decoder()
        return "".join(decoder.feed(i) for i in hyp_ids) + decoder.flush()

    def norm(score: float, length: int) -> float:
        return score / length**alpha if alpha and length else score

    # One row per live hypothesis, aligned with state.
    live = [_Hyp(None, 0, 0.0, "", False, scratch.getstate() if scratch else None)]
    finished: list[_Hyp] = []
    for t in range(config.length):
        scores = torch.tensor([h.score for h in live], dtype=torch.float64)
        cand = (scores.unsqueeze(1) + torch.log_softmax(logits.double(), dim=-1)).view(-1)  # (live*V,)
        top_scores, top_index = torch.topk(cand, min(width, cand.numel()))
        pool = [
            (norm(s, t + 1), s, int(k)) for s, k in zip(top_scores.tolist(), top_index.tolist(), strict=True)
        ]
        pool += [(norm(h.score, h.length), h.score, -1 - j) for j, h in enumerate(finished)]
        pool.sort(key=lambda item: item[0], reverse=True)  # stable: ties keep topk's order

        new_live: list[_Hyp] = []
        parents: list[int] = []
        tokens: list[int] = []
        new_finished: list[_Hyp] = []
        for _, score, k in pool[:width]:
            if k < 0:
                new_finished.append(finished[-1 - k])
                continue
            parent, token = divmod(k, vocab)
            hyp = live[parent]
            tail, hit, pending = "", False, None
            if matcher:
                piece, pending = extend(hyp, token)
                tail, hit = matcher.feed(hyp.tail, piece)
            child = _Hyp((token, hyp.path), t + 1, score, tail, hit, pending)
            if hit:
                new_finished.append(child)
            else:
                new_live.append(child)
                parents.append(parent)
                tokens.append(token)
        live, finished = new_live, new_finished
        if not live or t == config.length - 1:
            break
        state = stepper.reorder(state, torch.tensor(parents, dtype=torch.long))
        logits, state = stepper.step(torch.tensor(tokens, dtype=torch.long), state)

    ranked = sorted(finished + live, key=lambda h: norm(h.score, h.length), reverse=True)
    results = []
    for hyp in ranked[: config.num_samples]:
        hyp_ids = hyp.ids()
        text = full_text(hyp_ids)
        results.append(Sample(hyp_ids, text, hyp.score, "stop" if hyp.finished else "length"))
    return results
