"""Loss, bits per character and per-line scores, without torch: the numbers ``eval`` and
``score`` report, and their numpy implementation for short inputs.

For a short text, importing torch costs more than the whole computation, so ``charnn eval``
and ``charnn score`` run inputs of at most ``NUMPY_MAX_TOKENS`` tokens through the numpy
stepper (the same recurrence ``sample`` uses) and longer ones through torch
(``charnn.evaluate``). Both read the text the same way (``stream_layout``) and agree to
float32 rounding; windows with the carried state keep memory bounded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from charnn.sampling import log_softmax
from charnn.stepper import FastStepper
from charnn.tokenizer import Tokenizer

LN2 = math.log(2.0)
# Tokens (the lines, plus the context once). Measured on a 2-core EPYC with a 2x256 LSTM:
# torch's import and model build cost 1.4-2.5 s on a quiet machine (10 s under heavy load),
# the numpy recurrence runs ~9k tokens/s (~4.5k under load): numpy wins up to 13k-45k tokens.
NUMPY_MAX_TOKENS = 10_000


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


def _target_logprobs(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """logits (N, T, V), targets (N, T) -> log p(target) (N, T) in float64."""
    return np.take_along_axis(log_softmax(logits), targets[..., None].astype(np.intp), axis=-1)[..., 0]


def evaluate_stream_numpy(
    stepper: FastStepper,
    ids: np.ndarray,
    char_lengths: np.ndarray,
    batch_size: int = 16,
    seq_len: int = 256,
    context: int | None = None,
    extra_nats: np.ndarray | None = None,
) -> EvalResult:
    """:func:`charnn.evaluate.evaluate_stream` in numpy: same streams, windows and state."""
    layout = stream_layout(ids, batch_size, seq_len, context)
    length = layout.inputs.shape[1]
    state = None
    total = 0.0
    for start in range(0, length, seq_len):
        x, y = layout.inputs[:, start : start + seq_len], layout.targets[:, start : start + seq_len]
        logits, state = stepper.forward(x, state)  # (B, t, V)
        logp = _target_logprobs(logits, np.maximum(y, 0))  # (B, t)
        total -= float(logp[y >= 0].sum())  # padding targets do not count
    return layout_result(total, layout, char_lengths, extra_nats)


def score_lines_numpy(
    stepper: FastStepper,
    context: Sequence[int],
    lines: Sequence[np.ndarray],
    char_lengths: np.ndarray,
    extra_nats: np.ndarray | None = None,
) -> list[LineScore]:
    """:func:`charnn.evaluate.score_lines` in numpy: log p(line | context) for each line."""
    if len(context) == 0:
        raise ValueError("score_lines needs a non-empty context")
    ctx = np.asarray(context, dtype=np.intp)
    # The context's state is shared: feed all but its last token once.
    start = stepper.prime(ctx[None, :-1])[1] if len(ctx) > 1 else stepper.initial_state(1)
    scores = []
    for line in lines:
        n = len(line)
        if not n:
            scores.append(LineScore(logprob=0.0, tokens=0, chars=0))
            continue
        seq = np.concatenate([ctx[-1:], np.asarray(line, dtype=np.intp)])  # (n + 1,)
        logits, _ = stepper.forward(seq[None, :-1], start)  # (1, n, V): predicts line[0..n-1]
        logprob = float(_target_logprobs(logits, seq[None, 1:]).sum())
        if extra_nats is not None:  # the unknown symbol's share, as in evaluate_stream
            logprob -= float(extra_nats[line].sum())
        scores.append(LineScore(logprob=logprob, tokens=n, chars=int(char_lengths[line].sum())))
    return scores
