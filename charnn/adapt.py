"""Dynamic evaluation (Krause et al. 2017): the model keeps learning from the text it has just scored.

The text is read once, in order, in segments of ``segment`` tokens::

    segment 1: predict its tokens with θ₀ (recorded)  ->  SGD step on that segment's loss -> θ₁
    segment 2: predict its tokens with θ₁ (recorded)  ->  SGD step                        -> θ₂
    ...

Every token is predicted before the model has learned from it, so the figures are honest
predictions of the text; they are a different measurement from ``eval``'s (which reads the
text as parallel streams with fixed weights) and are reported separately. Only the recurrent
and output weights adapt (the embedding stays), each step also pulls the weights back toward
the checkpoint's by ``decay`` (θ += decay · (θ₀ − θ)), and the work happens on a private copy:
the checkpoint is never modified.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from charnn.config import AdaptConfig
from charnn.evaluate import TokenSurprisal
from charnn.model import CharRNN, detach_hidden
from charnn.scoring import LN2, EvalResult, LineScore


def _private_copy(model: CharRNN) -> CharRNN:
    """The same network with its own, writable weights (a checkpoint's arrays may be read-only)."""
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
    model.eval()  # no dropout: the predictions are the model's, only the weights move
    return model


def _adapted_parameters(model: CharRNN) -> list[torch.Tensor]:
    """Recurrent and output weights (with tied weights the output matrix is the embedding's)."""
    names = {n for n, _ in model.named_parameters()}
    chosen: list[torch.Tensor] = [p for n, p in model.named_parameters() if n.startswith(("rnn.", "head."))]
    if model.config.tie_weights and "head.weight" not in names:
        chosen.append(model.embed.weight)
    return chosen


class Adapter:
    """A private copy of a model that learns from each text it reads (see the module docstring)."""

    def __init__(self, model: CharRNN, settings: AdaptConfig) -> None:
        """``model`` is changed: pass one built for this (``Checkpoint.build_model()``)."""
        self.model = _private_copy(model)
        self.settings = settings
        self.params = _adapted_parameters(self.model)
        self.originals = [p.detach().clone() for p in self.params]

    def read(self, ids: np.ndarray, start_ids: Sequence[int], top_k: int = 0) -> TokenSurprisal:
        """Per-token log-probabilities of ``ids`` (after ``start_ids``, from a fresh state), each
        predicted before the model learns from its segment; the weights carry over to the next
        call. With ``top_k``, also the k likeliest tokens at each position (the surprisal page)."""
        seq = torch.from_numpy(np.concatenate([np.asarray(start_ids, np.int64), np.asarray(ids, np.int64)]))
        offset = len(start_ids) - 1  # input position that predicts ids[0]
        n, k = len(ids), max(0, min(top_k, self.model.config.vocab_size))
        logprob = np.empty(n, dtype=np.float64)
        top_ids = np.zeros((n, k), dtype=np.int64)
        top_probs = np.zeros((n, k), dtype=np.float32)
        hidden = None
        for a in range(offset, offset + n, self.settings.adapt_segment):
            b = min(a + self.settings.adapt_segment, offset + n)
            x, y = seq[a:b][None, :], seq[a + 1 : b + 1]  # (1, t), (t,)
            logits, hidden = self.model(x, hidden)  # (1, t, V)
            logp = F.log_softmax(logits[0].float(), dim=-1)  # (t, V)
            chosen = logp.gather(1, y[:, None]).squeeze(1)  # (t,)
            logprob[a - offset : b - offset] = chosen.detach().double().numpy()
            if k:
                probs, top = logp.detach().topk(k, dim=-1)  # (t, k)
                top_ids[a - offset : b - offset] = top.numpy()
                top_probs[a - offset : b - offset] = probs.exp().numpy()
            self._learn(-chosen.mean())
            hidden = detach_hidden(hidden)
        return TokenSurprisal(logprob=logprob, top_ids=top_ids, top_probs=top_probs)

    def _learn(self, loss: torch.Tensor) -> None:
        """One SGD step on the segment just scored, then the pull back toward the checkpoint."""
        self.model.zero_grad(set_to_none=True)
        loss.backward()
        lr, decay = self.settings.adapt_lr, self.settings.adapt_decay
        with torch.no_grad():
            for p, p0 in zip(self.params, self.originals, strict=True):
                if p.grad is not None:
                    p.sub_(p.grad, alpha=lr)
                if decay:
                    p.add_(p0 - p, alpha=decay)


def adaptive_eval(
    model: CharRNN,
    ids: np.ndarray,
    start_ids: Sequence[int],
    lengths: np.ndarray,
    extra_nats: np.ndarray | None,
    settings: AdaptConfig,
) -> EvalResult:
    """``eval``'s numbers for the whole text read once, in order, while the model adapts."""
    surprisal = Adapter(model, settings).read(ids, start_ids)
    total = -float(surprisal.logprob.sum()) + (
        float(extra_nats[ids].sum()) if extra_nats is not None else 0.0
    )
    chars = int(lengths[ids].sum())
    return EvalResult(loss=total / len(ids), bpc=total / LN2 / max(chars, 1), tokens=len(ids), chars=chars)


def adaptive_scores(
    model: CharRNN,
    context: Sequence[int],
    lines: Sequence[np.ndarray],
    lengths: np.ndarray,
    extra_nats: np.ndarray | None,
    settings: AdaptConfig,
) -> list[LineScore]:
    """``score``'s numbers, line after line in order: each line is read after ``context`` from a
    fresh state, as without --adapt, but with the weights learned from the lines before it."""
    adapter = Adapter(model, settings)
    scores = []
    for ids in lines:
        if len(ids) == 0:
            scores.append(LineScore(0.0, 0, 0))
            continue
        logprob = float(adapter.read(ids, context).logprob.sum())
        if extra_nats is not None:
            logprob -= float(extra_nats[ids].sum())
        scores.append(LineScore(logprob, len(ids), int(lengths[ids].sum())))
    return scores
