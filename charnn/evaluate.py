"""Measuring a model on text: loss and bits per character over a stream, and per-line scores.

Validation during training, and ``charnn eval`` / ``charnn score`` on inputs too long for
the numpy path (``charnn.metrics``, which holds the shared definitions), go through
``model.forward`` here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from charnn.metrics import LN2, EvalResult, LineScore, stream_layout, token_char_lengths
from charnn.model import CharRNN, detach_hidden

__all__ = ["EvalResult", "LineScore", "evaluate_stream", "score_lines", "token_char_lengths"]


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
    idx = stream_layout(len(ids), batch_size, seq_len)  # (B, L+1)
    streams, length = idx.shape[0], idx.shape[1] - 1
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
