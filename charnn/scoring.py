"""Loss, bits per character and per-line scores: the numbers ``eval`` and ``score`` report,
computed once over any :class:`~charnn.stepper.Stepper` (``charnn.routing`` picks numpy for
short inputs, torch for long ones). No torch import here.

Windows with the state carried keep memory bounded for any input: eval reads the text as
parallel streams (``stream_layout``), score feeds each line after a context primed once.
Validation during training runs the same layout through the torch model directly
(``charnn.evaluate.evaluate_stream``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from charnn.stepper import Stepper
from charnn.tokenizer import Tokenizer

LN2 = math.log(2.0)


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean negative log-likelihood per token, in nats
    bpc: float  # bits per character of the predicted text: total nats / characters / ln 2
    tokens: int  # tokens predicted
    chars: int  # characters those tokens spell

    @property
    def bpt(self) -> float:
        """Bits per token (equal to bpc for the char tokenizer)."""
        return self.loss / LN2

    def to_dict(self) -> dict[str, float | int]:
        return {
            "loss": self.loss,
            "bpc": self.bpc,
            "bpt": self.bpt,
            "tokens": self.tokens,
            "chars": self.chars,
        }


@dataclass(frozen=True)
class LineScore:
    logprob: float  # natural-log probability of the line's tokens given the context
    tokens: int
    chars: int

    @property
    def bpt(self) -> float:
        return -self.logprob / LN2 / self.tokens if self.tokens else 0.0

    @property
    def bpc(self) -> float:
        return -self.logprob / LN2 / self.chars if self.chars else 0.0


def token_char_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """Characters per token id (all ones for the char tokenizer) to turn token losses into bpc."""
    return tokenizer.char_lengths()


def token_extra_nats(tokenizer: Tokenizer) -> np.ndarray | None:
    """Nats each token costs on top of its model loss (the unknown symbol's share), or None."""
    extra = tokenizer.extra_nats()
    return extra if extra.any() else None


@dataclass(frozen=True)
class StreamLayout:
    """How eval reads a text: ``m`` targets as parallel streams of ``length`` positions.

    Stream ``b`` predicts targets ``[b*L, (b+1)*L)`` (the last one is shorter: its padding
    targets are -1), each from a zero state with the true preceding token as input.
    """

    inputs: np.ndarray  # (B, L) int64
    targets: np.ndarray  # (B, L) int64, -1 where padding
    predicted: np.ndarray  # (m,) the ids predicted, in text order


def stream_layout(ids: np.ndarray, batch_size: int, seq_len: int, context: int | None = None) -> StreamLayout:
    """Lay ``ids`` out as streams; with ``context`` (e.g. a newline) the first token is predicted too."""
    seq = ids if context is None else np.concatenate([np.asarray([context], dtype=ids.dtype), ids])
    m = len(seq) - 1  # targets
    if m < 1:
        raise ValueError("need at least 2 tokens to evaluate")
    streams = max(1, min(batch_size, m // max(1, seq_len)))
    length = -(-m // streams)  # L, ceil
    inputs = np.zeros(streams * length, dtype=np.int64)
    targets = np.full(streams * length, -1, dtype=np.int64)
    inputs[:m], targets[:m] = seq[:-1], seq[1:]
    return StreamLayout(inputs.reshape(streams, length), targets.reshape(streams, length), seq[1:])


def layout_result(
    total: float, layout: StreamLayout, char_lengths: np.ndarray, extra_nats: np.ndarray | None
) -> EvalResult:
    """The eval numbers from the summed model loss ``total`` (nats) over the layout's targets."""
    predicted = layout.predicted
    if extra_nats is not None:
        total += float(extra_nats[predicted].sum())
    m, chars = len(predicted), int(char_lengths[predicted].sum())
    return EvalResult(loss=total / m, bpc=total / LN2 / max(chars, 1), tokens=m, chars=chars)


def evaluate_text(
    stepper: Stepper,
    ids: np.ndarray,
    char_lengths: np.ndarray,
    batch_size: int = 16,
    seq_len: int = 256,
    context: int | None = None,
    extra_nats: np.ndarray | None = None,
) -> EvalResult:
    """Loss over every token of ``ids``, read as ``batch_size`` parallel streams.

    With ``context`` (e.g. a newline) the first token is predicted too, so the loss covers the
    whole text; without it, all tokens after the first. The streams are :func:`stream_layout`'s,
    each carrying its state across windows of ``seq_len``. ``extra_nats`` (V,) is added per target.
    """
    layout = stream_layout(ids, batch_size, seq_len, context)
    length = layout.inputs.shape[1]
    state = None
    total = 0.0
    for start in range(0, length, seq_len):
        x, y = layout.inputs[:, start : start + seq_len], layout.targets[:, start : start + seq_len]  # (B, t)
        logp, state = stepper.target_logprobs(x, np.maximum(y, 0), state)  # (B, t)
        total -= float(logp[y >= 0].sum())  # padding targets do not count
    return layout_result(total, layout, char_lengths, extra_nats)


def score_lines(
    stepper: Stepper,
    context: Sequence[int],
    lines: Sequence[np.ndarray],
    char_lengths: np.ndarray,
    batch_size: int = 1,
    extra_nats: np.ndarray | None = None,
    budget: int = 1 << 22,
    max_logits: int = 1 << 23,
) -> list[LineScore]:
    """log p(line | context) for each line.

    The context's state is computed once (all but its last token); each line is then fed after
    the context's last token, ``batch_size`` lines at a time (sorted by length to limit padding).
    Memory is bounded for any input: a batch holds at most ``budget`` padded tokens (a very long
    line goes alone), and runs in windows whose logits hold at most ``max_logits`` numbers.
    """
    if len(context) == 0:
        raise ValueError("score_lines needs a non-empty context")
    ctx = np.asarray(context, dtype=np.intp)
    start = stepper.prime(ctx[None, :-1])[1] if len(ctx) > 1 else stepper.initial_state(1)
    scores: list[LineScore] = [LineScore(logprob=0.0, tokens=0, chars=0)] * len(lines)  # empty lines stay
    order = sorted((i for i in range(len(lines)) if len(lines[i])), key=lambda i: len(lines[i]))
    for group in _batches(order, [len(line) + 1 for line in lines], batch_size, budget):
        width = max(len(lines[i]) for i in group)
        if len(group) == 1 and width + 1 > budget:  # one long line: windows, no copy as long as it
            (i,) = group
            scores[i] = _long_line(
                stepper, int(ctx[-1]), lines[i], start, char_lengths, extra_nats, max_logits
            )
            continue
        seqs = np.zeros(
            (len(group), width + 1), dtype=np.intp
        )  # (B, 1 + Lmax): context's last, line, padding
        seqs[:, 0] = ctx[-1]
        for row, i in enumerate(group):
            seqs[row, 1 : 1 + len(lines[i])] = lines[i]
        logp = _sequence_logprobs(stepper, seqs, stepper.reorder(start, np.zeros(len(group))), max_logits)
        for row, i in enumerate(group):
            line = lines[i]
            logprob = float(logp[row, : len(line)].sum())  # positions 0..n-1 predict line[0..n-1]
            if extra_nats is not None:  # the unknown symbol's share, as in evaluate_text
                logprob -= float(extra_nats[line].sum())
            scores[i] = LineScore(logprob=logprob, tokens=len(line), chars=int(char_lengths[line].sum()))
    return scores


LONG_LINE_WINDOW = 1 << 16  # tokens per window of a long line: a few MB of ids and log-probs


def _long_line(
    stepper: Stepper,
    first: int,
    line: np.ndarray,
    state: np.ndarray,
    char_lengths: np.ndarray,
    extra_nats: np.ndarray | None,
    max_logits: int,
) -> LineScore:
    """log p(line | context) of a line longer than the batch budget, window by window with the
    state carried: memory is one window's ids and log-probs, whatever the line's length (a 50 MB
    line included). ``first``: the context's last token, which predicts ``line[0]``."""
    n = len(line)
    window = max(1, min(LONG_LINE_WINDOW, max_logits // max(1, stepper.vocab_size)))
    total, previous = 0.0, first
    for a in range(0, n, window):
        b = min(a + window, n)
        targets = line[a:b].astype(np.intp)[None, :]  # (1, t)
        inputs = np.concatenate([[previous], line[a : b - 1]]).astype(np.intp)[None, :]  # (1, t)
        logp, state = stepper.target_logprobs(inputs, targets, state)
        total += float(logp.sum())
        previous = int(line[b - 1])
    if extra_nats is not None:
        total -= _table_sum(extra_nats, line)
    return LineScore(logprob=total, tokens=n, chars=int(_table_sum(char_lengths, line)))


def _table_sum(table: np.ndarray, ids: np.ndarray, chunk: int = 1 << 16) -> float:
    """``table[ids].sum()`` without a copy as long as ``ids``."""
    return float(sum(table[ids[a : a + chunk]].sum() for a in range(0, len(ids), chunk)))


def _batches(order: list[int], widths: list[int], size: int, budget: int) -> list[list[int]]:
    """Consecutive groups of ``order`` (sorted by width) of at most ``size`` items whose padded
    area (items x widest) stays within ``budget``; an item wider than the budget goes alone."""
    groups: list[list[int]] = []
    for i in order:
        if groups and len(groups[-1]) < size and (len(groups[-1]) + 1) * widths[i] <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _sequence_logprobs(stepper: Stepper, seqs: np.ndarray, state: np.ndarray, max_logits: int) -> np.ndarray:
    """(B, W) ids from ``state`` -> (B, W-1) float64 log p(seqs[:, t+1] | seqs[:, :t+1]), in
    windows small enough that one window's logits (B, t, V) hold at most ``max_logits`` numbers."""
    b, w = seqs.shape
    window = max(1, min(w - 1, max_logits // max(1, b * stepper.vocab_size)))
    out = np.empty((b, w - 1), dtype=np.float64)
    for start in range(0, w - 1, window):
        end = min(start + window, w - 1)
        out[:, start:end], state = stepper.target_logprobs(
            seqs[:, start:end], seqs[:, start + 1 : end + 1], state
        )
    return out
