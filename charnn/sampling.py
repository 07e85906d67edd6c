"""Decoding: temperature / top-k / top-p sampling, greedy, and beam search.

Pure functions over a :class:`~charnn.stepper.FastStepper`: nothing here prints or
touches files. Text reaches the caller through ``on_text`` as it is generated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np
import torch

from charnn.config import SampleConfig
from charnn.constraints import StreamState, TokenRules
from charnn.errors import ConfigError
from charnn.stepper import FastStepper
from charnn.tokenizer import StreamDecoder

OnText = Callable[[int, str], None]


class StreamDecoding(Protocol):
    """What decoding needs of a tokenizer: a fresh incremental decoder per stream, which holds
    back the bytes of a partial UTF-8 character (every :class:`~charnn.tokenizer.Tokenizer` has one)."""

    def stream_decoder(self) -> StreamDecoder: ...


# A tokenizer (decoded through per-stream decoders), or a plain ``token id -> text`` callable.
Decode = Callable[[int], str] | StreamDecoding


def _stream_decoding(decode: Decode) -> StreamDecoding | None:
    return cast(StreamDecoding, decode) if hasattr(decode, "stream_decoder") else None


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
        new_tail, cut = self.find(tail, piece)
        return new_tail, cut is not None

    def find(self, tail: str, piece: str) -> tuple[str, int | None]:
        """The new tail, and where in ``piece`` the earliest stop string ends (None: no stop).

        A stop may begin in earlier pieces (the tail) and end in this one: a multi-character
        subword piece can hold the end of a stop string with more text after it, which is cut.
        """
        window = tail + piece
        ends = [window.find(stop) + len(stop) for stop in self.stops if stop in window]
        # The tail holds only keep = longest stop - 1 old characters, so every match is new.
        cut = min(ends) - len(tail) if ends else None
        return (window[-self.keep :] if self.keep else ""), cut


def generate(
    stepper: FastStepper,
    prime_ids: Sequence[int],
    config: SampleConfig,
    decode: Decode,
    on_text: OnText | None = None,
    generator: torch.Generator | None = None,
    rules: TokenRules | None = None,
    heal: bool = False,
) -> list[Sample]:
    """Continue ``prime_ids``: ``num_samples`` samples, or the best beam-search hypotheses.

    ``rules`` (from the tokenizer) make ``config.length`` count characters and keep samples
    valid text (see :mod:`charnn.constraints`); with ``heal`` the prime's last subword token is
    regenerated so the seam is tokenized as in training. Without rules every token is one
    character and every id may be drawn.

    ``decode`` turns ids into text: a plain ``id -> str`` callable, or a :class:`StreamDecoding`
    (e.g. a SentencePiece tokenizer) whose per-stream decoders hold back partial UTF-8 characters.
    Sampling/greedy streams ``on_text(i, piece)`` per token; beam search calls it once per
    result with the whole text. Beam mode ignores temperature, top-k and top-p (the CLI
    rejects those combinations). Draws use uniforms from ``generator``: same seed, same output.
    """
    if len(prime_ids) == 0:
        raise ConfigError("the prime text must not be empty")
    rules = rules or rules_for(decode, stepper.vocab_size)
    prime_ids, healing = rules.heal_prime(prime_ids) if heal else (list(prime_ids), "")
    start = StreamState(heal=healing)
    with torch.inference_mode(), _one_thread():
        logits, state = stepper.prime(torch.tensor([list(prime_ids)], dtype=torch.long))  # (1, V)
        if config.length == 0:
            return [Sample([], "", 0.0, "length") for _ in range(config.num_samples)]
        if config.beam is None:
            return _sample(
                stepper, logits.numpy(), state, config, _Streams(decode, rules, start), on_text, generator
            )
        results = _beam_search(stepper, logits, state, config, decode, rules, start)
    if on_text is not None:
        for i, sample in enumerate(results):
            on_text(i, sample.text)
    return results


def rules_for(decode: Decode, vocab_size: int) -> TokenRules:
    """A tokenizer's own rules; for a bare decode function, one character per token, all allowed."""
    if hasattr(decode, "char_lengths"):
        return TokenRules.for_tokenizer(decode)
    return TokenRules(np.ones(vocab_size, dtype=np.int64))


class _Streams:
    """Per-sample decoding: incremental decoders, the rules' state and the stop-string tail."""

    def __init__(self, decode: Decode, rules: TokenRules, start: StreamState) -> None:
        self.decode, self.rules, self.start = decode, rules, start

    def open(self, n: int, stops: Sequence[str], starts: Sequence[StreamState] | None = None) -> None:
        """``n`` streams, each from ``self.start`` (or from its own entry of ``starts``)."""
        streaming = _stream_decoding(self.decode)
        self.decoders = [streaming.stream_decoder() for _ in range(n)] if streaming else None
        plain = cast(Callable[[int], str], self.decode)
        self.feeds = [d.feed for d in self.decoders] if self.decoders else [plain] * n
        self.states = [(starts[i] if starts else self.start).copy() for i in range(n)]
        self.matcher = _StopMatcher(stops) if stops else None
        self.tails = [""] * n

    def masks(self, rows: Sequence[int], length: int) -> np.ndarray | None:
        """(rows, V) bool: what each live stream may draw next; None when anything goes."""
        if self.rules.trivial:
            return None
        states = self.states
        return np.stack([self.rules.mask(states[i], length - states[i].chars) for i in rows])

    def push(self, i: int, token: int, length: int) -> tuple[str, str | None]:
        """Feed ``token`` to stream ``i``: the text to show, and why the stream ends (or None)."""
        piece = self.feeds[i](token)
        state = self.states[i]
        if self.rules.trivial:
            state.chars += 1
        else:
            piece = self.rules.advance(state, token, piece)
        if self.matcher is not None:
            self.tails[i], cut = self.matcher.find(self.tails[i], piece)
            if cut is not None:
                return piece[:cut], "stop"
        return piece, ("length" if self.rules.finished(state, length) else None)

    def flush(self, i: int) -> str:
        return self.decoders[i].flush() if self.decoders else ""


def _draw_row(
    row: np.ndarray, draw: np.ndarray, greedy: bool, inv_temp: float, uniforms: _Uniforms
) -> tuple[int, float]:
    """One stream: (token drawn from the allowed logits ``draw``, its raw log-probability)."""
    top = float(row.max())
    numerators = np.exp(row - top)  # raw softmax numerators: the logprob is always raw
    if greedy:
        token = int(draw.argmax())
    else:
        if draw is row and inv_temp == 1.0:
            weights = numerators
        else:
            weights = np.exp((draw - float(draw.max())) * inv_temp)
        token = _draw_one(weights.cumsum(dtype=np.float64), uniforms.one())
    return token, float(row[token]) - top - math.log(numerators.sum(dtype=np.float64))


def _draw_rows(
    logits: np.ndarray, draw: np.ndarray, config: SampleConfig, inv_temp: float, uniforms: _Uniforms
) -> tuple[np.ndarray, np.ndarray]:
    """Several streams: tokens (rows,) drawn from the allowed logits ``draw``, raw log-probs (rows,)."""
    top_rows = logits.max(axis=1, keepdims=True)
    numerators = np.exp(logits - top_rows)
    if config.temperature == 0:
        nxt = draw.argmax(axis=1)  # (rows,)
    elif config.top_k is None and config.top_p is None:
        if draw is logits and inv_temp == 1.0:
            weights = numerators
        else:
            weights = np.exp((draw - draw.max(axis=1, keepdims=True)) * inv_temp)
        nxt = _draw(weights.cumsum(axis=1, dtype=np.float64), uniforms.take(len(logits)))
    else:
        filtered = filter_logits(torch.from_numpy(draw), config.temperature, config.top_k, config.top_p)
        weights = torch.softmax(filtered.double(), dim=-1).numpy()
        nxt = _draw(weights.cumsum(axis=1), uniforms.take(len(logits)))
    chosen = logits[np.arange(len(logits)), nxt].astype(np.float64)
    return nxt, chosen - top_rows[:, 0] - np.log(numerators.sum(axis=1, dtype=np.float64))


def _sample(
    stepper: FastStepper,
    logits: np.ndarray,
    state: np.ndarray,
    config: SampleConfig,
    streams: _Streams,
    on_text: OnText | None,
    generator: torch.Generator | None,
) -> list[Sample]:
    """All num_samples streams as one batch; finished rows are dropped from the batch.

    Works on numpy arrays throughout (stepper.step returns numpy logits for numpy ids). Each
    stream ends at ``config.length`` characters or a stop string; tokens the rules forbid are
    masked out of the draw, while logprobs stay those of the raw model.
    """
    n = config.num_samples
    expand = np.zeros(n, dtype=np.intp)
    logits, state = logits[expand], stepper.reorder(state, expand)  # (n, V)
    greedy = config.temperature == 0
    inv_temp = 0.0 if greedy else 1.0 / config.temperature
    simple = config.top_k is None and config.top_p is None
    streams.open(n, config.stops)
    uniforms = _Uniforms(generator)

    rows = list(range(n))  # batch row -> sample index
    ids: list[list[int]] = [[] for _ in range(n)]
    pieces: list[list[str]] = [[] for _ in range(n)]
    logprob = [0.0] * n
    stopped_by = ["length"] * n
    row_logprob = np.zeros(n)  # running sums for the live rows

    while rows:
        masks = streams.masks(rows, config.length)  # (rows, V) or None
        draw = logits if masks is None else np.where(masks, logits, -np.inf)
        if len(rows) == 1 and simple:  # single stream: scalar bookkeeping, fewer numpy calls
            token, lp = _draw_row(logits[0], draw[0], greedy, inv_temp, uniforms)
            row_logprob[0] += lp
            nxt = np.array([token])
        else:
            nxt, lps = _draw_rows(logits, draw, config, inv_temp, uniforms)
            row_logprob += lps

        done: list[int] = []
        for row, token in enumerate(nxt.tolist()):
            i = rows[row]
            piece, end = streams.push(i, token, config.length)
            ids[i].append(token)
            pieces[i].append(piece)
            if on_text is not None:
                on_text(i, piece)
            if end is not None:
                stopped_by[i] = end
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
        logits, state = stepper.step(nxt, state)
    for i in range(n):  # a character cut short by the end of a stream (only without rules)
        rest = streams.flush(i)
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
    text: str  # the text shown so far (healed prefix removed, cut after a stop string)
    tail: str  # the stop matcher's tail
    ended: str | None  # None while live, else "stop" or "length"
    rule: StreamState
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
    decode: Decode,
    rules: TokenRules,
    start: StreamState,
) -> list[Sample]:
    """Width-W beam search over tokens; finished hypotheses keep their slot and compete by
    normalised score.

    Each position: all allowed one-token extensions of the live hypotheses plus the finished
    ones are ranked by ``logprob / tokens**length_penalty`` and the best W stay. Live extensions
    share one token count, so among them this is plain top-W by log-prob (exact search when W
    covers every prefix), and with W=1 it is greedy decoding. A hypothesis ends at
    ``config.length`` characters or a stop string; the search ends when none is live.
    """
    width, alpha = config.beam or 1, config.length_penalty
    matcher = _StopMatcher(config.stops) if config.stops else None
    vocab = logits.shape[-1]
    streaming = _stream_decoding(decode)
    scratch = streaming.stream_decoder() if streaming else None
    plain = cast(Callable[[int], str], decode)

    def extend(hyp: _Hyp, token: int) -> _Hyp:
        pending: object
        if scratch is None:
            piece, pending = plain(token), None
        else:
            scratch.setstate(hyp.pending)
            piece, pending = scratch.feed(token), scratch.getstate()
        rule = hyp.rule.copy()
        piece = rules.advance(rule, token, piece)
        tail, ended = "", None
        if matcher is not None:
            tail, cut = matcher.find(hyp.tail, piece)
            if cut is not None:
                piece, ended = piece[:cut], "stop"
        if ended is None and rules.finished(rule, config.length):
            ended = "length"
        return _Hyp((token, hyp.path), hyp.length + 1, 0.0, hyp.text + piece, tail, ended, rule, pending)

    def norm(score: float, length: int) -> float:
        return score / length**alpha if alpha and length else score

    # One row per live hypothesis, aligned with state.
    live = [_Hyp(None, 0, 0.0, "", "", None, start.copy(), scratch.getstate() if scratch else None)]
    finished: list[_Hyp] = []
    # Every token writes a character or a UTF-8 byte of one (at most 4 per character).
    for t in range(4 * config.length + len(start.heal) + 4):
        scores = torch.tensor([h.score for h in live], dtype=torch.float64)
        logp = torch.log_softmax(logits.double(), dim=-1)  # (live, V), raw
        if not rules.trivial:
            allowed = np.stack([rules.mask(h.rule, config.length - h.rule.chars) for h in live])
            logp = logp.masked_fill(torch.from_numpy(~allowed), -math.inf)
        cand = (scores.unsqueeze(1) + logp).view(-1)  # (live*V,)
        top_scores, top_index = torch.topk(cand, min(width, cand.numel()))
        pool = [
            (norm(s, t + 1), s, int(k))
            for s, k in zip(top_scores.tolist(), top_index.tolist(), strict=True)
            if s > -math.inf
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
            child = extend(live[parent], token)
            child.score = score
            if child.ended:
                new_finished.append(child)
            else:
                new_live.append(child)
                parents.append(parent)
                tokens.append(token)
        live, finished = new_live, new_finished
        if not live:
            break
        state = stepper.reorder(state, torch.tensor(parents, dtype=torch.long))
        logits, state = stepper.step(torch.tensor(tokens, dtype=torch.long), state)

    ranked = sorted(finished + live, key=lambda h: norm(h.score, h.length), reverse=True)
    return [Sample(h.ids(), h.text, h.score, h.ended or "length") for h in ranked[: config.num_samples]]
