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
    idx = np.arange(streams)[:, None] * length + np.arange(length + 1)[None, :]  # (B, L+1)
    data = torch.from_numpy(ids[idx].astype(np.int64)).to(device)
    was_training = model.training
    model.eval()
    hidden = None
    total = 0.0
    for start in range(0, length, seq_len):
        end = min(start + seq_len, length)
        x = data[:, start:end]  # (B, t)
        y = data[:, start + 1 : end + 1]  # (B, t)
        logits, hidden = model(x, hidden)  # (B, t, V)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        hidden = detach_hidden(hidden)
    model.train(was_training)
    tokens = streams * length
    chars = int(char_lengths[ids[idx[:, 1:]]].sum())
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
    budget: int = 1 << 22,
) -> list[LineScore]:
    """log p(line | context) for each line, batched (sorted by length to limit padding).

    Memory is bounded for any input: a batch holds at most ``budget`` padded tokens (a very
    long line goes alone), and the model runs over it in windows with the hidden state
    carried, so logits exist for one window at a time (``--whole`` on a 1 MB text included).
    """
    if not context:
        raise ValueError("score_lines needs a non-empty context")
    was_training = model.training
    model.eval()
    ctx = np.asarray(context, dtype=np.int64)
    scores: list[LineScore | None] = [None] * len(lines)
    order = sorted(range(len(lines)), key=lambda i: len(lines[i]))
    for group in _batches(order, [len(ctx) + len(line) for line in lines], batch_size, budget):
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
        logp = _target_logprobs(model, torch.from_numpy(seqs))  # (B, W-1) float64
        for row, i in enumerate(group):
            n = len(lines[i])
            # Targets at positions C..C+n-1 are predicted from positions C-1..C+n-2.
            lp = float(logp[row, len(ctx) - 1 : len(ctx) - 1 + n].sum()) if n else 0.0
            chars = int(char_lengths[lines[i]].sum()) if n else 0
            scores[i] = LineScore(logprob=lp, tokens=n, chars=chars)
    model.train(was_training)
    return scores  # type: ignore[return-value]


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


@torch.no_grad()
def _target_logprobs(model: CharRNN, seqs: torch.Tensor, max_logits: int = 1 << 23) -> np.ndarray:
    """(B, W) ids -> (B, W-1) float64 log p(seqs[:, t+1] | seqs[:, :t+1]), computed in windows
    small enough that one window's logits (B, t, V) hold at most ``max_logits`` numbers."""
    b, w = seqs.shape
    window = max(1, min(w - 1, max_logits // max(1, b * model.config.vocab_size)))
    out = np.empty((b, w - 1), dtype=np.float64)
    hidden = None
    for start in range(0, w - 1, window):
        end = min(start + window, w - 1)
        logits, hidden = model(seqs[:, start:end], hidden)  # (B, t, V)
        logp = torch.log_softmax(logits.float(), dim=-1)
        out[:, start:end] = logp.gather(2, seqs[:, start + 1 : end + 1, None]).squeeze(2).double().numpy()
    return out
