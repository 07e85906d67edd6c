"""Measuring a torch model on text where only torch will do: validation during training (batched,
on the training device) and per-character surprisal for ``eval --html``.

``charnn eval`` and ``charnn score`` run over any stepper (``charnn.scoring``, which holds the
shared definitions: the stream layout, the result records).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from charnn.model import CharRNN, detach_hidden
from charnn.scoring import (
    LN2,
    EvalResult,
    LineScore,
    layout_result,
    stream_layout,
    token_char_lengths,
    token_extra_nats,
)
from charnn.threads import NO_PACE, Pace
from charnn.tokenizer import Tokenizer

__all__ = [
    "LN2",
    "EvalResult",
    "LineScore",
    "evaluate_stream",
    "token_char_lengths",
    "token_extra_nats",
]


@torch.no_grad()
def evaluate_stream(
    model: CharRNN,
    ids: np.ndarray,
    char_lengths: np.ndarray,
    batch_size: int = 16,
    seq_len: int = 256,
    device: torch.device | str = "cpu",
    context: int | None = None,
    extra_nats: np.ndarray | None = None,
) -> EvalResult:
    """Loss over every token of ``ids``, read as ``batch_size`` parallel streams.

    With ``context`` (e.g. a newline, or the last training token before the validation split)
    the first token is predicted too, so the loss covers the whole text; without it, all tokens
    after the first. The streams are :func:`~charnn.scoring.stream_layout`'s, each carrying its
    hidden state across windows. ``extra_nats`` (V,) is added per target.
    """
    layout = stream_layout(ids, batch_size, seq_len, context)
    length = layout.inputs.shape[1]
    x_all = torch.from_numpy(layout.inputs).to(device)  # (B, L)
    y_all = torch.from_numpy(layout.targets).to(device)  # (B, L), -1: padding (ignored)
    was_training = model.training
    model.eval()
    hidden = None
    total = 0.0
    for start in range(0, length, seq_len):
        x, y = x_all[:, start : start + seq_len], y_all[:, start : start + seq_len]  # (B, t)
        logits, hidden = model(x, hidden)  # (B, t, V)
        total += F.cross_entropy(
            logits.float().flatten(0, 1), y.flatten(), reduction="sum", ignore_index=-1
        ).item()
        hidden = detach_hidden(hidden)
    model.train(was_training)
    return layout_result(total, layout, char_lengths, extra_nats)


# ---------------------------------------------------------------------------- surprisal per character


@dataclass(frozen=True)
class TokenSurprisal:
    """What the model thought before each token of a text (the text's tokens are the targets)."""

    logprob: np.ndarray  # (N,) float64: ln p(token_i | start context, tokens before i)
    top_ids: np.ndarray  # (N, k) int64: the k most likely tokens at position i, most likely first
    top_probs: np.ndarray  # (N, k) float32: their probabilities


def _segments(n: int, streams: int, min_segment: int) -> np.ndarray:
    """Boundaries of up to ``streams`` equal parts of ``n`` targets, each at least ``min_segment`` long."""
    count = max(1, min(streams, n // max(1, min_segment)))
    return np.linspace(0, n, count + 1).round().astype(np.int64)  # (count + 1,)


@torch.no_grad()
def token_surprisal(
    model: CharRNN,
    ids: np.ndarray,
    start_ids: Sequence[int],
    top_k: int = 5,
    seq_len: int = 256,
    streams: int = 16,
    min_segment: int = 8192,
    warmup: int = 1024,
    device: torch.device | str = "cpu",
    pace: Pace = NO_PACE,
) -> TokenSurprisal:
    """Per-token log-probabilities and top-k predictions of ``ids``.

    The text is read after ``start_ids`` (a newline for the char tokenizer, as ``score``
    conditions on), so the first token is scored too. Windows of ``seq_len`` carry the hidden
    state, so memory is bounded by the window, not the text; the result is O(N * k).
    A text longer than ``2 * min_segment`` tokens is read as up to ``streams`` parallel parts
    (a batch), each after ``warmup`` tokens of the text before it, so every prediction sees at
    least ``warmup`` tokens of context (the whole text before it when there is one part).
    """
    n = len(ids)
    if n < 1 or not start_ids:
        raise ValueError("token_surprisal needs at least one token and a start context")
    k = max(1, min(top_k, model.config.vocab_size))
    seq = np.concatenate([np.asarray(start_ids, dtype=np.int64), ids.astype(np.int64)])  # (S + N,)
    context = len(start_ids) - 1  # input position that predicts ids[0]
    bounds = _segments(n, streams, min_segment)
    lo, hi = bounds[:-1], bounds[1:]  # (B,) targets each part reports
    first = np.where(lo == 0, 0, context + lo - warmup).clip(min=0)  # (B,) first input position read
    length = int((context + hi - first).max())  # positions each stream reads (shorter ones pad)
    logprob = np.empty(n, dtype=np.float64)
    top_ids = np.empty((n, k), dtype=np.int64)
    top_probs = np.empty((n, k), dtype=np.float32)
    was_training = model.training
    model.eval()
    hidden = None
    pace.begin(len(lo) * length)
    for start in range(0, length, seq_len):
        pos = first[:, None] + np.arange(start, min(start + seq_len, length))[None, :]  # (B, t)
        x = torch.from_numpy(seq[np.minimum(pos, len(seq) - 1)]).to(device)  # (B, t)
        y = torch.from_numpy(seq[np.minimum(pos + 1, len(seq) - 1)]).to(device)  # (B, t)
        with pace.window(x.numel()):
            logits, hidden = model(x, hidden)  # (B, t, V)
        hidden = detach_hidden(hidden)
        target = pos - context  # (B, t) index into ids predicted at each position
        keep = torch.from_numpy((target >= lo[:, None]) & (target < hi[:, None])).to(device)  # (B, t)
        if not keep.any():
            continue
        logp = torch.log_softmax(logits[keep].float(), dim=-1)  # (M, V)
        probs, top = logp.topk(k, dim=-1)  # (M, k)
        where = target[keep.cpu().numpy()]  # (M,)
        logprob[where] = logp.gather(1, y[keep][:, None]).squeeze(1).double().cpu().numpy()
        top_ids[where] = top.cpu().numpy()
        top_probs[where] = probs.exp().cpu().numpy()
    model.train(was_training)
    return TokenSurprisal(logprob=logprob, top_ids=top_ids, top_probs=top_probs)


@dataclass(frozen=True)
class CharSurprisal:
    """Surprisal attributed to each character of the text the tokens spell."""

    text: str
    bits: np.ndarray  # (C,) float64: bits charged to each character
    token_of_char: np.ndarray  # (C,) int64: the token whose prediction covers each character
    tokens: TokenSurprisal

    @property
    def bpc(self) -> float:
        return float(self.bits.sum()) / max(len(self.text), 1)


def char_surprisal(tokenizer: Tokenizer, ids: np.ndarray, tokens: TokenSurprisal) -> CharSurprisal:
    """Spread each token's surprisal evenly over the characters it spells.

    For the char tokenizer that is one token per character. For subwords a piece's bits are
    divided equally among its characters; byte-fallback pieces that complete no character yet
    hand their bits on to the character they eventually complete.
    """
    bits_per_token = -tokens.logprob / LN2
    if tokenizer.kind == "char":
        text = tokenizer.decode(ids)
        return CharSurprisal(text, bits_per_token.copy(), np.arange(len(ids), dtype=np.int64), tokens)
    decoder = tokenizer.stream_decoder()
    pieces: list[str] = []
    bits: list[np.ndarray] = []
    owner: list[np.ndarray] = []
    pending = 0.0  # bits of byte pieces whose character is not complete yet
    first_pending = -1  # the first token of those pieces
    for i, token_id in enumerate(ids.tolist()):
        piece = decoder.feed(int(token_id))
        if first_pending < 0:
            first_pending = i
        pending += bits_per_token[i]
        if piece:
            pieces.append(piece)
            bits.append(np.full(len(piece), pending / len(piece)))
            owner.append(np.full(len(piece), first_pending, dtype=np.int64))
            pending, first_pending = 0.0, -1
    tail = decoder.flush()
    if tail:  # an unfinished byte sequence at the end decodes as U+FFFD
        pieces.append(tail)
        bits.append(np.full(len(tail), pending / len(tail)))
        owner.append(np.full(len(tail), first_pending, dtype=np.int64))
    empty = np.zeros(0)
    return CharSurprisal(
        "".join(pieces),
        np.concatenate(bits) if bits else empty,
        np.concatenate(owner) if owner else empty.astype(np.int64),
        tokens,
    )


def line_bpc(text: str, bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start offset of each line, bits per character of that line including its newline)."""
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    newlines = np.flatnonzero(codes == 10)
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines + 1, [len(text)]])
    if len(starts) > 1 and starts[-1] == len(text):  # no empty last "line" after a final newline
        starts, ends = starts[:-1], ends[:-1]
    cumulative = np.concatenate([[0.0], np.cumsum(bits)])
    lengths = np.maximum(ends - starts, 1)
    return starts.astype(np.int64), (cumulative[ends] - cumulative[starts]) / lengths


def surprising_passages(bits: np.ndarray, width: int = 40, count: int = 20) -> list[tuple[int, int, float]]:
    """The ``count`` non-overlapping windows of ``width`` characters with the most bits.

    Returns (start, end, total bits) sorted by bits, most surprising first.
    """
    n = len(bits)
    if n == 0:
        return []
    width = min(width, n)
    cumulative = np.concatenate([[0.0], np.cumsum(bits)])
    sums = cumulative[width:] - cumulative[:-width]  # (n - width + 1,) bits of window at each start
    taken = np.zeros(n, dtype=bool)
    out: list[tuple[int, int, float]] = []
    for start in np.argsort(-sums, kind="stable"):
        start = int(start)
        if taken[start : start + width].any():
            continue
        taken[start : start + width] = True
        out.append((start, start + width, float(sums[start])))
        if len(out) == count:
            break
    return out
