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
    bpc: float  # bits per character of the predicted text
    tokens: int  # tokens predicted
    chars: int  # characters those tokens spell

    def to_dict(self) -> dict[str, float | int]:
        return {"loss": self.loss, "bpc": self.bpc, "tokens": self.tokens, "chars": self.chars}


@dataclass(frozen=True)
class LineScore:
    logprob: float  # natural-log probability of the line's tokens given the context
    tokens: int
    chars: int

    @property
    def bpc(self) -> float:
        return -self.logprob / LN2 / self.chars if self.chars else 0.0


def token_char_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """Characters per token id (all ones for the char tokenizer) to turn token losses into bpc."""
    if tokenizer.kind == "char":
        return np.ones(tokenizer.vocab_size, dtype=np.int64)

    def chars(token_id: int) -> int:
        byte = tokenizer.byte_value(token_id)
        if byte is not None:
            # Byte-fallback pieces spell UTF-8: a character is its lead byte; continuation bytes add none.
            return 0 if 0x80 <= byte < 0xC0 else 1
        return len(tokenizer.token_text(token_id))

    return np.array([chars(i) for i in range(tokenizer.vocab_size)], dtype=np.int64)


def stream_layout(n: int, batch_size: int, seq_len: int) -> np.ndarray:
    """How eval reads n tokens: as parallel streams, an index array (B, L+1) into the ids."""
    if n < 2:
        raise ValueError("need at least 2 tokens to evaluate")
    streams = max(1, min(batch_size, (n - 1) // max(1, seq_len)))
    length = (n - 1) // streams  # tokens each stream predicts
    return np.arange(streams)[:, None] * length + np.arange(length + 1)[None, :]


def _target_logprobs(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """logits (N, T, V), targets (N, T) -> log p(target) (N, T) in float64."""
    return np.take_along_axis(log_softmax(logits), targets[..., None].astype(np.intp), axis=-1)[..., 0]


def evaluate_stream_numpy(
    stepper: FastStepper, ids: np.ndarray, char_lengths: np.ndarray, batch_size: int = 16, seq_len: int = 256
) -> EvalResult:
    """:func:`charnn.evaluate.evaluate_stream` in numpy: same streams, windows and state."""
    idx = stream_layout(len(ids), batch_size, seq_len)
    data = ids[idx]  # (B, L+1)
    length = idx.shape[1] - 1
    state = None
    total = 0.0
    for start in range(0, length, seq_len):
        end = min(start + seq_len, length)
        logits, state = stepper.forward(data[:, start:end], state)  # (B, t, V)
        total -= float(_target_logprobs(logits, data[:, start + 1 : end + 1]).sum())
    tokens = idx.shape[0] * length
    chars = int(char_lengths[ids[idx[:, 1:]]].sum())
    return EvalResult(loss=total / tokens, bpc=total / LN2 / max(chars, 1), tokens=tokens, chars=chars)


def score_lines_numpy(
    stepper: FastStepper, context: Sequence[int], lines: Sequence[np.ndarray], char_lengths: np.ndarray
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
        scores.append(LineScore(logprob=logprob, tokens=n, chars=int(char_lengths[line].sum())))
    return scores
