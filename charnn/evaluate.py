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

from charnn.metrics import (
    LN2,
    EvalResult,
    LineScore,
    layout_result,
    stream_layout,
    token_char_lengths,
    token_extra_nats,
)
from charnn.model import CharRNN, detach_hidden

__all__ = [
    "LN2",
    "EvalResult",
    "LineScore",
    "evaluate_stream",
    "score_lines",
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
    after the first. The streams are :func:`~charnn.metrics.stream_layout`'s, each carrying its
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


@torch.no_grad()
def score_lines(
    model: CharRNN,
    context: Sequence[int],
    lines: Sequence[np.ndarray],
    char_lengths: np.ndarray,
    batch_size: int = 64,
    extra_nats: np.ndarray | None = None,
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
            if n and extra_nats is not None:  # the unknown symbol's share, as in evaluate_stream
                lp -= float(extra_nats[lines[i]].sum())
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
