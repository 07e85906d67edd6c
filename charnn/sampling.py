"""Decoding: temperature / top-k / top-p sampling, greedy, and beam search.

Pure functions over a :class:`~charnn.stepper.FastStepper`: nothing here prints or
touches files. Text reaches the caller through ``on_text`` as it is generated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from charnn.config import SampleConfig
from charnn.errors import ConfigError
from charnn.stepper import FastStepper

OnText = Callable[[int, str], None]


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


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of probs (N, V) -> (N,).

    The same exponential race torch.multinomial(probs, 1) runs internally (identical
    draws for the same generator state), minus its validation reductions, which cost
    more than the draw itself at N=1. The probabilities come from softmax, so valid.
    """
    q = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return torch.div(probs, q, out=q).argmax(dim=-1)


@contextmanager
def _one_thread(enabled: bool) -> Iterator[None]:
    """Scope torch to one intra-op thread (restored afterwards) for single-stream decoding.

    A one-row step is a chain of matrix-vector products that a second thread cannot speed
    up (measured equal on an idle 2-core machine), while OpenMP's spin-waiting makes it 10x
    slower or worse whenever another process keeps the cores busy. Batches keep the default.
    """
    if not enabled:
        yield
        return
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
    decode: Callable[[int], str],
    on_text: OnText | None = None,
    generator: torch.Generator | None = None,
) -> list[Sample]:
    """Continue ``prime_ids``: ``num_samples`` samples, or the best beam-search hypotheses.

    Sampling/greedy streams ``on_text(i, piece)`` per token; beam search calls it once per
    result with the whole text. Beam mode ignores temperature, top-k and top-p (the CLI
    rejects those combinations).
    """
    if len(prime_ids) == 0:
        raise ConfigError("the prime text must not be empty")
    single_stream = (config.beam or config.num_samples) == 1
    with torch.inference_mode(), _one_thread(single_stream):
        logits, state = stepper.prime(torch.tensor([list(prime_ids)], dtype=torch.long))  # (1, V)
        if config.length == 0:
            return [Sample([], "", 0.0, "length") for _ in range(config.num_samples)]
        if config.beam is None:
            return _sample(stepper, logits, state, config, decode, on_text, generator)
        results = _beam_search(stepper, logits, state, config, decode)
    if on_text is not None:
        for i, sample in enumerate(results):
            on_text(i, sample.text)
    return results


def _sample(
    stepper: FastStepper,
    logits: torch.Tensor,
    state: tuple[torch.Tensor, ...],
    config: SampleConfig,
    decode: Callable[[int], str],
    on_text: OnText | None,
    generator: torch.Generator | None,
) -> list[Sample]:
    """All num_samples streams as one batch; finished rows are dropped from the batch."""
    n = config.num_samples
    expand = torch.zeros(n, dtype=torch.long)
    logits, state = logits.index_select(0, expand), stepper.reorder(state, expand)  # (n, V)
    greedy = config.temperature == 0
    plain = config.temperature == 1.0 and config.top_k is None and config.top_p is None
    matcher = _StopMatcher(config.stops) if config.stops else None

    rows = list(range(n))  # batch row -> sample index
    ids: list[list[int]] = [[] for _ in range(n)]
    pieces: list[list[str]] = [[] for _ in range(n)]
    tails = [""] * n
    logprob = [0.0] * n
    stopped_by = ["length"] * n
    row_logprob = torch.zeros(n, dtype=torch.float64)  # running sums for the live rows

    for t in range(config.length):
        if greedy:
            nxt = logits.argmax(dim=-1)  # (rows,)
        else:
            filtered = (
                logits if plain else filter_logits(logits, config.temperature, config.top_k, config.top_p)
            )
            nxt = _draw(torch.softmax(filtered, dim=-1), generator)
        row_logprob += torch.log_softmax(logits, dim=-1).gather(1, nxt.unsqueeze(1)).squeeze(1)

        done: list[int] = []
        for row, token in enumerate(nxt.tolist()):
            i = rows[row]
            piece = decode(token)
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
            sums = row_logprob.tolist()
            for row in done:
                logprob[rows[row]] = sums[row]
            done_rows = set(done)
            keep = [row for row in range(len(rows)) if row not in done_rows]
            index = torch.tensor(keep, dtype=torch.long)
            rows, row_logprob = [rows[row] for row in keep], row_logprob[index]
            if not rows:
                break
            nxt, state = nxt[index], stepper.reorder(state, index)
        if t == config.length - 1:
            break
        logits, state = stepper.step(nxt, state)
    for row, total in zip(rows, row_logprob.tolist(), strict=True):
        logprob[row] = total
    return [Sample(ids[i], "".join(pieces[i]), logprob[i], stopped_by[i]) for i in range(n)]


@dataclass
class _Hyp:
    """A beam hypothesis; ``path`` is a cons list (token, parent) so extending it is O(1)."""

    path: tuple | None
    length: int
    score: float  # cumulative raw log-prob
    tail: str
    finished: bool

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
    decode: Callable[[int], str],
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

    def norm(score: float, length: int) -> float:
        return score / length**alpha if alpha and length else score

    live = [_Hyp(None, 0, 0.0, "", False)]  # one row per live hypothesis, aligned with state
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
            tail, hit = matcher.feed(hyp.tail, decode(token)) if matcher else ("", False)
            child = _Hyp((token, hyp.path), t + 1, score, tail, hit)
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
        text = "".join(decode(i) for i in hyp_ids)
        results.append(Sample(hyp_ids, text, hyp.score, "stop" if hyp.finished else "length"))
    return results
