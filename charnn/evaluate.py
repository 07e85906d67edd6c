"""Measuring a model on text: loss and bits per character over a stream, and per-line scores.

``charnn eval``, ``charnn score`` and validation during training all go through
``model.forward`` here; there is no second implementation of the forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from charnn.model import CharRNN, detach_hidden
from charnn.tokenizer import Tokenizer

LN2 = math.log(2.0)


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean negative log-likelihood per token, in nats
    bpc: float  # bits per character of the predicted text
    tokens: int  # tokens predicted
    chars: int  # characters those tokens spell

    def to_dict(self) -> dict[str, float | int]:
        return {"loss": self.loss, "bpc": self.bpc, "tokens": self.tokens, "chars": self.chars}


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


@torch.no_grad()
def evaluate_stream(
    model: CharRNN,
    ids: np.ndarray,
    char_lengths: np.ndarray,
    batch_size: int = 16,
    seq_len: int = 256,
    device: torch.device | str = "cpu",
) -> EvalResult:
    """Loss over ``ids`` read as ``batch_size`` parallel streams, hidden state carried across windows."""
    n = len(ids)
    if n < 2:
        raise ValueError("need at least 2 tokens to evaluate")
    streams = max(1, min(batch_size, (n - 1) // max(1, seq_len)))
    length = (n - 1) // streams  # tokens each stream predicts
    starts = np.arange(streams)[:, None] * length  # (B, 1)
    was_training = model.training
    model.eval()
    hidden = None
    total, chars = 0.0, 0
    # Window by window: ``ids`` may be a memory-mapped corpus far bigger than memory.
    for start in range(0, length, seq_len):
        end = min(start + seq_len, length)
        window = ids[starts + np.arange(start, end + 1)[None, :]].astype(np.int64)  # (B, t+1)
        data = torch.from_numpy(window).to(device)
        logits, hidden = model(data[:, :-1], hidden)  # (B, t, V)
        total += F.cross_entropy(logits.float().flatten(0, 1), data[:, 1:].flatten(), reduction="sum").item()
        chars += int(char_lengths[window[:, 1:]].sum())
        hidden = detach_hidden(hidden)
    model.train(was_training)
    tokens = streams * length
    return EvalResult(loss=total / tokens, bpc=total / LN2 / max(chars, 1), tokens=tokens, chars=chars)


@dataclass(frozen=True)
class LineScore:
    logprob: float  # natural-log probability of the line's tokens given the context
    tokens: int
    chars: int

    @property
    def bpc(self) -> float:
        return -self.logprob / LN2 / self.chars if self.chars else 0.0


@torch.no_grad()
def score_lines(
    model: CharRNN,
    context: Sequence[int],
    lines: Sequence[np.ndarray],
    char_lengths: np.ndarray,
    batch_size: int = 64,
) -> list[LineScore]:
    """log p(line | context) for each line, batched (sorted by length to limit padding)."""
    if not context:
        raise ValueError("score_lines needs a non-empty context")
    was_training = model.training
    model.eval()
    ctx = np.asarray(context, dtype=np.int64)
    scores: list[LineScore | None] = [None] * len(lines)
    order = sorted(range(len(lines)), key=lambda i: len(lines[i]))
    for first in range(0, len(order), batch_size):
        group = order[first : first + batch_size]
        if not any(len(lines[i]) for i in group):
            # Only empty lines (log p = 0): the RNN cannot run on the zero-length input
            # that a one-token context would leave.
            for i in group:
                scores[i] = LineScore(logprob=0.0, tokens=0, chars=0)
            continue
        width = len(ctx) + max(len(lines[i]) for i in group)
        seqs = np.zeros((len(group), width), dtype=np.int64)  # (B, C + Lmax), zero-padded
        for row, i in enumerate(group):
            seqs[row, : len(ctx) + len(lines[i])] = np.concatenate([ctx, lines[i].astype(np.int64)])
        x = torch.from_numpy(seqs)
        logits, _ = model(x[:, :-1])  # (B, W-1, V)
        logp = torch.log_softmax(logits.float(), dim=-1).gather(2, x[:, 1:, None]).squeeze(2)  # (B, W-1)
        for row, i in enumerate(group):
            n = len(lines[i])
            # Targets at positions C..C+n-1 are predicted from positions C-1..C+n-2.
            lp = float(logp[row, len(ctx) - 1 : len(ctx) - 1 + n].double().sum()) if n else 0.0
            chars = int(char_lengths[lines[i]].sum()) if n else 0
            scores[i] = LineScore(logprob=lp, tokens=n, chars=chars)
    model.train(was_training)
    return scores  # type: ignore[return-value]
