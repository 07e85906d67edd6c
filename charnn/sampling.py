"""Decoding: temperature / top-k / top-p sampling, greedy, and beam search.

Pure functions over any :class:`~charnn.stepper.Stepper`, in numpy (no torch import):
nothing here prints or touches files. Text reaches the caller through ``on_text`` as it is
generated. Random draws come from a seeded ``numpy.random.Generator``: same seed, same text.
A tokenizer's :class:`~charnn.constraints.TokenRules` say what may be drawn next (lengths in
characters, valid UTF-8, no unknown/control pieces, prime healing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from charnn.config import SampleConfig
from charnn.constraints import StreamState, TokenRules
from charnn.errors import ConfigError
from charnn.repetition import History, Repetition
from charnn.stepper import State, Stepper
from charnn.tokenizer import StreamDecoder

OnText = Callable[[int, str], None]


class StreamDecoding(Protocol):
    """What decoding needs of a tokenizer: a fresh incremental decoder per stream, which holds
    back the bytes of a partial UTF-8 character (every :class:`~charnn.tokenizer.Tokenizer` has one)."""

    def stream_decoder(self) -> StreamDecoder: ...


@dataclass
class Sample:
    """One generated continuation (the prime is not included). ``ids`` and ``text`` stay empty
    for a sample generate() was told not to keep (it was only streamed)."""

    ids: list[int]
    text: str
    logprob: float  # log p(text | prime) under the raw (unfiltered, untempered) model
    stopped_by: str  # "length" | "stop"


def filter_logits(
    logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None
) -> np.ndarray:
    """(N, V) -> (N, V) float64: divide by temperature, then keep the top-k, then the top-p nucleus.

    The result is shifted so each row's maximum is 0 (softmax is unchanged by a shift): then
    dividing by any temperature > 0, however tiny, cannot overflow to inf - inf = NaN; a
    temperature so small that every other token's weight underflows to 0 is greedy decoding.
    Removed tokens get -inf. The nucleus is the smallest set of most likely tokens whose
    probability reaches ``top_p`` (never empty). Temperature 0 (greedy) is the caller's job.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 here (0 means greedy), got {temperature}")
    x = np.asarray(logits, dtype=np.float64)
    out = x - x.max(axis=-1, keepdims=True)
    if temperature != 1.0:
        with np.errstate(over="ignore"):  # a tiny temperature sends the others to -inf: intended
            out /= temperature
    vocab = out.shape[-1]
    rows = np.arange(out.shape[0])[:, None]
    if top_k is not None and top_k < vocab:
        # Exactly k survivors (a `< kth value` mask would keep extra ties).
        keep = np.argpartition(-out, top_k - 1, axis=-1)[:, :top_k]
        kept = np.full_like(out, -math.inf)
        kept[rows, keep] = out[rows, keep]
        out = kept
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-out, axis=-1, kind="stable")
        sorted_logits = out[rows, order]
        probs = np.exp(sorted_logits - sorted_logits[:, :1])
        cumulative = probs.cumsum(axis=-1) / probs.sum(axis=-1, keepdims=True)
        # Drop a token when the tokens before it already reach p; the first one always stays.
        drop_sorted = np.zeros_like(cumulative, dtype=bool)
        drop_sorted[:, 1:] = cumulative[:, :-1] >= top_p
        drop = np.zeros_like(drop_sorted)
        drop[rows, order] = drop_sorted
        out[drop] = -math.inf
    return out


def raw_logprobs(logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """The model's log-probability of ``tokens`` (N,) under ``logits`` (N, V), float64 (N,)."""
    return log_softmax(logits)[np.arange(len(tokens)), tokens]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities (N, V) in float64."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


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
    """Uniforms in [0, 1) from a numpy Generator, drawn in blocks (one call per block). The
    stream of numbers does not depend on how they are taken, so a seed fixes the output."""

    def __init__(self, rng: np.random.Generator, block: int = 4096) -> None:
        self.rng, self.block = rng, block
        self.buffer = np.empty(0)
        self.values: list[float] = []  # the buffer as Python floats, for one() (no numpy scalar)
        self.pos = 0

    def one(self) -> float:
        if self.pos >= len(self.values):
            self.take(0)
        self.pos += 1
        return self.values[self.pos - 1]

    def take(self, n: int) -> np.ndarray:
        if self.pos + n >= len(self.buffer):
            rest = self.buffer[self.pos :]
            self.buffer = np.concatenate([rest, self.rng.random(max(self.block, n))])
            self.values, self.pos = self.buffer.tolist(), 0
        out = self.buffer[self.pos : self.pos + n]
        self.pos += n
        return out


class _StopMatcher:
    """Detects stop strings in streamed text by keeping only a short tail of each stream."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.keep = max((len(s) for s in self.stops), default=1) - 1  # chars a match may reach back

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
    stepper: Stepper,
    prime_ids: Sequence[int] | np.ndarray,
    config: SampleConfig,
    decode: StreamDecoding,
    on_text: OnText | None = None,
    rng: np.random.Generator | None = None,
    keep: Sequence[bool] | None = None,
    rules: TokenRules | None = None,
    heal: bool = False,
) -> list[Sample]:
    """Continue ``prime_ids``: ``num_samples`` samples, or the best beam-search hypotheses.

    ``decode`` (a tokenizer) turns ids into text through per-stream decoders, which hold back
    partial UTF-8 characters of byte-fallback pieces. ``rules`` (the tokenizer's, see
    :mod:`charnn.constraints`) make ``config.length`` count characters and keep samples valid
    text; with ``heal`` the prime's last subword token is regenerated so the seam is tokenized
    as in training. Without rules every token is one character and every id may be drawn.
    Sampling/greedy streams ``on_text(i, piece)`` per token; beam search calls it once per
    result with the whole text. Beam search takes no temperature, top-k or top-p
    (:class:`~charnn.config.SampleConfig` refuses those combinations). Draws use uniforms
    from ``rng``: same seed, same output.
    ``keep[i]`` False: sample i is only streamed, its ids and text are not collected, so an
    endless stream runs in constant memory (default: keep all).
    """
    if len(prime_ids) == 0:
        raise ConfigError("the prime text must not be empty")
    rules = rules or plain_rules(stepper.vocab_size)
    prime, healing = heal_prime(rules, prime_ids) if heal else (np.asarray(prime_ids), "")
    start = StreamState(heal=healing)
    logits, state = stepper.prime(prime[None, :])  # (1, V); ids keep their compact dtype
    if config.length == 0:
        return [Sample([], "", 0.0, "length") for _ in range(config.num_samples)]
    if config.beam is None:
        keep = [True] * config.num_samples if keep is None else list(keep)
        streams = _Streams(config, decode, rules, [start] * config.num_samples, on_text, keep)
        # Shifted logits times a huge 1/T overflow to -inf (weight 0) by design: no warning.
        n, picker = config.num_samples, _Picker(config, _Uniforms(rng or np.random.default_rng()))
        expand = np.zeros(n, dtype=np.intp)  # every sample starts from the prime's state
        with np.errstate(over="ignore"):
            return sample_rows(stepper, logits[expand], stepper.reorder(state, expand), picker, streams)
    results = _beam_search(stepper, logits, state, config, decode, rules, start)
    if on_text is not None:
        for i, sample in enumerate(results):
            on_text(i, sample.text)
    return results


def plain_rules(vocab_size: int) -> TokenRules:
    """Rules for a bare decoder: one character per token, every id allowed."""
    return TokenRules(np.ones(vocab_size, dtype=np.int64))


def heal_prime(rules: TokenRules, prime_ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, str]:
    """The prime without its last token and that token's text, when the rules heal it; only the
    last two ids are looked at, so a huge prime is not copied into a list."""
    prime = np.asarray(prime_ids)
    _, healing = rules.heal_prime([int(i) for i in prime[-2:]])
    return (prime[:-1] if healing else prime), healing


_F32_MAX = float(np.finfo(np.float32).max)


class _Picker:
    """Chooses the next token of each row from raw logits, and returns its raw log-probability
    (the model's, before temperature, filters or masks: what ``score`` computes for the text).

    ``allowed`` masks (what the rules permit) only restrict the draw. Greedy when the
    temperature is 0, and also when 1/T overflows float32 (T < 3e-39): any finite 1/T is
    safe, since logits are shifted so the top one is 0 (0 * 1/T = 0, the rest underflow to
    weight 0), so tiny temperatures tend to greedy and never produce NaN."""

    def __init__(self, config: SampleConfig, uniforms: _Uniforms | None) -> None:
        """``uniforms``: the stream draws come from; None when the caller always passes its own
        to :meth:`many` (batched prompts, one stream per prompt)."""
        t = config.temp
        self.greedy = t == 0 or 1.0 / t > _F32_MAX
        self.inv_temp = 0.0 if self.greedy else 1.0 / t
        self.config, self.uniforms = config, uniforms
        # Temperature alone is done inline; top-k/top-p go through filter_logits.
        self.filtered = not self.greedy and (config.top_k is not None or config.top_p is not None)

    def _stream(self) -> _Uniforms:
        if self.uniforms is None:
            raise ValueError("this picker draws only from uniforms passed to many()")
        return self.uniforms

    def one(self, row: np.ndarray, allowed: np.ndarray | None = None) -> tuple[int, float]:
        """A single stream (V,): scalar bookkeeping, as few numpy calls as possible."""
        if self.filtered:
            tokens, logprobs = self.many(row[None, :], allowed=None if allowed is None else allowed[None, :])
            return int(tokens[0]), float(logprobs[0])
        top = row.max()
        shifted = row - top  # float32, max 0
        numerators = np.exp(shifted)  # raw softmax numerators: the logprob is always raw
        total = float(numerators.sum(dtype=np.float64))
        if allowed is not None:
            shifted = np.where(allowed, shifted, -np.inf)
            shifted -= shifted.max()
        if self.greedy:
            token = int(shifted.argmax())
        elif self.inv_temp == 1.0:
            weights = numerators if allowed is None else np.exp(shifted)
            token = _draw_one(weights.cumsum(dtype=np.float64), self._stream().one())
        else:
            shifted = shifted * self.inv_temp
            token = _draw_one(np.exp(shifted).cumsum(dtype=np.float64), self._stream().one())
        return token, float(row[token] - top) - math.log(total)

    def many(
        self, logits: np.ndarray, uniforms: np.ndarray | None = None, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows (N, V) -> tokens (N,) and their raw log-probabilities (N,). ``uniforms`` (N,):
        the draws to use (default: the next N of this picker's stream); ``allowed`` (N, V)."""
        tops = logits.max(axis=1, keepdims=True)
        shifted = logits - tops
        totals = np.exp(shifted).sum(axis=1, dtype=np.float64)
        draw = shifted
        if allowed is not None:
            draw = np.where(allowed, shifted, -np.inf)
            draw -= draw.max(axis=1, keepdims=True)
        if self.greedy:
            tokens = draw.argmax(axis=1)
        else:
            if self.filtered:
                cfg = self.config
                weights = np.exp(filter_logits(draw, cfg.temp, cfg.top_k, cfg.top_p))
            else:
                weights = np.exp(draw * np.float32(self.inv_temp))
            u = self._stream().take(len(logits)) if uniforms is None else uniforms
            tokens = _draw(weights.cumsum(axis=1, dtype=np.float64), u)
        chosen = shifted[np.arange(len(logits)), tokens].astype(np.float64)
        return tokens, chosen - np.log(totals)


class _Streams:
    """Per-sample bookkeeping: decoding, the rules' state, stop strings, streaming, what is kept."""

    def __init__(
        self,
        config: SampleConfig,
        decode: StreamDecoding,
        rules: TokenRules,
        starts: Sequence[StreamState],
        on_text: OnText | None = None,
        keep: Sequence[bool] | None = None,
    ) -> None:
        """One stream per entry of ``starts`` (its rules' state at the start: a healed prime)."""
        n = len(starts)
        self.rules, self.length = rules, config.length
        self.decoders = [decode.stream_decoder() for _ in range(n)]
        self.feeds = [d.feed for d in self.decoders]
        self.states = [s.copy() for s in starts]
        self.matcher = _StopMatcher(config.stops) if config.stops else None
        self.tails = [""] * n
        self.on_text = on_text
        self.keep = [True] * n if keep is None else keep
        self.ids: list[list[int]] = [[] for _ in range(n)]
        self.pieces: list[list[str]] = [[] for _ in range(n)]
        self.stopped_by = ["length"] * n
        self.repetition = Repetition.from_config(config)  # None: no repetition rules
        self.histories = [self.repetition.start() for _ in range(n)] if self.repetition else []

    def draw_from(self, logits: np.ndarray, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """The logits to draw from and what each live stream may draw: the tokenizer's rules,
        then the repetition rules (which never touch the reported, raw log-probabilities)."""
        masks = self.masks(rows)
        if self.repetition is None:
            return logits, masks
        return self.repetition.apply(logits, [self.histories[i] for i in rows], masks)

    def masks(self, rows: Sequence[int]) -> np.ndarray | None:
        """(rows, V) bool: what each live stream may draw next; None when anything goes."""
        if self.rules.trivial:
            return None
        states, rules = self.states, self.rules
        return np.stack([rules.mask(states[i], self.length - states[i].chars) for i in rows])

    def emit(self, i: int, token: int) -> bool:
        """Sample i produced ``token``: stream and record its text; True when the sample ended
        (``length`` characters written, or a stop string, after which the piece is cut)."""
        piece = self.feeds[i](token)
        state = self.states[i]
        if self.rules.trivial:
            state.chars += 1
        else:
            piece = self.rules.advance(state, token, piece)
        ended = self.rules.finished(state, self.length)
        if self.matcher is not None:
            self.tails[i], cut = self.matcher.find(self.tails[i], piece)
            if cut is not None:
                piece, ended, self.stopped_by[i] = piece[:cut], True, "stop"
        if self.keep[i]:
            self.ids[i].append(token)
            self.pieces[i].append(piece)
        if self.histories:
            self.histories[i].add(token)
        if self.on_text is not None:
            self.on_text(i, piece)
        return ended

    def finish(self, logprob: Sequence[float]) -> list[Sample]:
        for i, decoder in enumerate(self.decoders):  # a character cut short (only without rules)
            rest = decoder.flush()
            if rest:
                if self.keep[i]:
                    self.pieces[i].append(rest)
                if self.on_text is not None:
                    self.on_text(i, rest)
        return [
            Sample(self.ids[i], "".join(self.pieces[i]), float(logprob[i]), self.stopped_by[i])
            for i in range(len(logprob))
        ]


Draws = Callable[[list[int]], np.ndarray]  # live rows (stream indices) -> one uniform per row


def sample_rows(
    stepper: Stepper,
    logits: np.ndarray,
    state: State,
    picker: _Picker,
    streams: _Streams,
    draws: Draws | None = None,
) -> list[Sample]:
    """The sampling loop, once for every caller: row i of ``logits`` (N, V) and ``state`` is
    stream i of ``streams``, and all live rows advance as one batch; finished rows are dropped.

    Each stream ends at ``config.length`` characters or a stop string; tokens the rules forbid
    are masked out of the draw, while logprobs stay those of the raw model. Uniforms come from
    the picker's own stream, or from ``draws`` (batched prompts: each prompt its own stream). With
    the picker's stream a lone live row runs on Python scalars (:meth:`_Picker.one`).
    """
    n = len(logits)
    rows = list(range(n))  # batch row -> sample index
    logprob = [0.0] * n
    single_logprob = 0.0
    while True:
        draw, masks = streams.draw_from(logits, rows)  # (rows, V), and (rows, V) or None
        penalised = draw is not logits  # the picker's log-probabilities are then not the raw ones
        if len(rows) == 1 and draws is None:  # single stream: Python scalars, no per-token arrays
            token, lp = picker.one(draw[0], None if masks is None else masks[0])
            single_logprob += float(raw_logprobs(logits, np.array([token]))[0]) if penalised else lp
            if streams.emit(rows[0], token):
                break
            nxt = np.array([token])
        else:
            u = None if draws is None or picker.greedy else draws(rows)
            nxt, lps = picker.many(draw, u, allowed=masks)
            if penalised:
                lps = raw_logprobs(logits, nxt)
            for row, i in enumerate(rows):
                logprob[i] += float(lps[row])
            done = {row for row, token in enumerate(nxt.tolist()) if streams.emit(rows[row], token)}
            if done:
                keep_rows = [row for row in range(len(rows)) if row not in done]
                rows = [rows[row] for row in keep_rows]
                if not rows:
                    break
                nxt, state = nxt[keep_rows], stepper.reorder(state, np.array(keep_rows, dtype=np.intp))
        logits, state = stepper.step(nxt, state)
    if draws is None and len(rows) == 1:
        logprob[rows[0]] += single_logprob
    return streams.finish(logprob)


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
    raw: float = 0.0  # cumulative raw log-prob (``score`` ranks: penalised when a penalty is set)
    history: History | None = None  # for the repetition rules

    def ids(self) -> list[int]:
        out: list[int] = []
        node = self.path
        while node is not None:
            out.append(node[0])
            node = node[1]
        return out[::-1]


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, best first; ties go to the lower index (deterministic)."""
    k = min(k, len(scores))
    index = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return index[np.lexsort((index, -scores[index]))]


class _Extender:
    """Extends beam hypotheses by one token: decoding, the rules' state, stop strings."""

    def __init__(self, config: SampleConfig, decode: StreamDecoding, rules: TokenRules) -> None:
        self.config, self.rules = config, rules
        self.matcher = _StopMatcher(config.stops) if config.stops else None
        self.scratch = decode.stream_decoder()
        self.repetition = Repetition.from_config(config)

    def root(self, start: StreamState) -> _Hyp:
        history = self.repetition.start() if self.repetition else None
        return _Hyp(None, 0, 0.0, "", "", None, start.copy(), self.scratch.getstate(), history=history)

    def masks(self, live: Sequence[_Hyp]) -> np.ndarray | None:
        """(live, V) bool: what each hypothesis may take next; None when anything goes."""
        if self.rules.trivial:
            return None
        length = self.config.length
        return np.stack([self.rules.mask(h.rule, length - h.rule.chars) for h in live])

    def scores(self, logits: np.ndarray, live: Sequence[_Hyp]) -> tuple[np.ndarray, np.ndarray]:
        """(live, V): raw log-probabilities, and those to rank by (penalised, -inf where a rule
        forbids the token)."""
        raw = log_softmax(logits)
        draw, allowed = logits, self.masks(live)
        if self.repetition is not None:
            draw, allowed = self.repetition.apply(logits, [h.history for h in live if h.history], allowed)
        rank = raw if draw is logits else log_softmax(draw)
        return raw, rank if allowed is None else np.where(allowed, rank, -np.inf)

    def extend(self, hyp: _Hyp, token: int, score: float, raw: float = 0.0) -> _Hyp:
        self.scratch.setstate(hyp.pending)
        piece, pending = self.scratch.feed(token), self.scratch.getstate()
        rule = hyp.rule.copy()
        piece = self.rules.advance(rule, token, piece)
        tail, ended = "", None
        if self.matcher is not None:
            tail, cut = self.matcher.find(hyp.tail, piece)
            if cut is not None:
                piece, ended = piece[:cut], "stop"
        if ended is None and self.rules.finished(rule, self.config.length):
            ended = "length"
        history = None
        if hyp.history is not None:
            history = hyp.history.copy()
            history.add(token)
        text = hyp.text + piece
        return _Hyp((token, hyp.path), hyp.length + 1, score, text, tail, ended, rule, pending, raw, history)


def _beam_search(
    stepper: Stepper,
    logits: np.ndarray,
    state: np.ndarray,
    config: SampleConfig,
    decode: StreamDecoding,
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
    vocab = logits.shape[-1]
    extender = _Extender(config, decode, rules)

    def norm(score: float, length: int) -> float:
        return score / length**alpha if alpha and length else score

    live = [extender.root(start)]  # one row per live hypothesis, aligned with state
    finished: list[_Hyp] = []
    # Every token writes a character or a UTF-8 byte of one (at most 4 per character).
    for t in range(4 * config.length + len(start.heal) + 4):
        raw, logp = extender.scores(logits, live)  # (live, V) each
        cand = (np.array([h.score for h in live])[:, None] + logp).ravel()  # (live*V,)
        top_index = _top(cand, width)
        pool = [
            (norm(s, t + 1), s, k)
            for s, k in zip(cand[top_index].tolist(), top_index.tolist(), strict=True)
            if s > -math.inf
        ]
        pool += [(norm(h.score, h.length), h.score, -1 - j) for j, h in enumerate(finished)]
        pool.sort(key=lambda item: item[0], reverse=True)  # stable: ties keep _top's order

        new_live: list[_Hyp] = []
        parents: list[int] = []
        new_finished: list[_Hyp] = []
        for _, score, k in pool[:width]:
            if k < 0:
                new_finished.append(finished[-1 - k])
                continue
            parent, token = divmod(k, vocab)
            child = extender.extend(live[parent], token, score, live[parent].raw + float(raw[parent, token]))
            if child.ended:
                new_finished.append(child)
            else:
                new_live.append(child)
                parents.append(parent)
        live, finished = new_live, new_finished
        if not live:
            break
        tokens = np.array([h.path[0] for h in live if h.path is not None], dtype=np.intp)
        state = stepper.reorder(state, np.array(parents, dtype=np.intp))
        logits, state = stepper.step(tokens, state)

    ranked = sorted(finished + live, key=lambda h: norm(h.score, h.length), reverse=True)
    return [Sample(h.ids(), h.text, h.raw, h.ended or "length") for h in ranked[: config.num_samples]]
