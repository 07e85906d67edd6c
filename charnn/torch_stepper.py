"""The :class:`~charnn.stepper.Stepper` protocol over a torch :class:`~charnn.model.CharRNN`.

torch's fused nn.LSTM/GRU/RNN run a long sequence several times faster than the numpy
stepper's position-by-position Python loop, once torch's import (about a second) is paid:
``charnn.routing`` sends long primes, evals and scores here. States cross the boundary in the
shared numpy layout (``charnn.arch``: (N, S) float32 rows), converted to torch.nn's (L, N, H)
tensors per call, so a state primed here continues in :class:`~charnn.stepper.FastStepper`.
CPU only; the model runs in eval mode (no dropout) under ``inference_mode``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from charnn import arch
from charnn.model import CharRNN, Hidden
from charnn.stepper import State

PRIME_WINDOW = 4096  # positions per forward pass in prime(): bounds the (N, T, H) outputs


class TorchStepper:
    """Inference through a CharRNN's fused modules, states in the numpy layout."""

    def __init__(self, model: CharRNN, threads: int | None = None) -> None:
        """``threads``: torch's intra-op threads while this stepper runs (restored after each
        call); None leaves the setting alone."""
        self.model, self.config, self.threads = model, model.config, threads

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def initial_state(self, n: int) -> State:
        return arch.initial_state(self.config, n)

    def reorder(self, state: State, index: Any) -> State:
        return arch.reorder_state(state, index)

    def step(self, ids: Any, state: State) -> tuple[np.ndarray, State]:
        """ids (N,) -> logits (N, V) float32 and the new state."""
        logits, new = self.forward(np.asarray(ids)[:, None], state)
        return logits[:, 0], new

    def prime(self, ids: Any, state: State | None = None) -> tuple[np.ndarray, State]:
        """ids (N, T >= 1) in windows of PRIME_WINDOW -> logits (N, V) after the last position."""
        ids = np.asarray(ids)  # a huge prime stays in its compact dtype until its window
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"prime needs ids of shape (N, T >= 1), got {ids.shape}")
        model = self.model
        with self._running():
            hidden = self._hidden(state)
            for start in range(0, ids.shape[1], PRIME_WINDOW):
                x = torch.from_numpy(ids[:, start : start + PRIME_WINDOW].astype(np.int64))  # (N, t)
                out, hidden = model.rnn(model.embed(x), hidden)  # (N, t, H)
            assert hidden is not None  # T >= 1: the loop ran
            logits = model.head(out[:, -1])  # (N, V)
            return logits.numpy().astype(np.float32), self._state(hidden)

    def forward(self, ids: Any, state: State | None = None) -> tuple[np.ndarray, State]:
        """ids (N, T) -> logits (N, T, V) float32 and the new state."""
        with self._running():
            logits, hidden = self.model(self._ids(ids), self._hidden(state))  # (N, T, V)
            return logits.float().numpy(), self._state(hidden)

    def target_logprobs(self, ids: Any, targets: Any, state: State | None = None) -> tuple[np.ndarray, State]:
        """log p(targets | ids so far) (N, T): torch's float32 log-softmax, returned as float64."""
        with self._running():
            logits, hidden = self.model(self._ids(ids), self._hidden(state))  # (N, T, V)
            logp = torch.log_softmax(logits.float(), dim=-1).gather(2, self._ids(targets)[..., None])
            return logp.squeeze(2).double().numpy(), self._state(hidden)

    # -- conversions --------------------------------------------------------------------------------

    @staticmethod
    def _ids(ids: Any) -> torch.Tensor:
        return torch.from_numpy(np.asarray(ids).astype(np.int64))

    def _hidden(self, state: State | None) -> Hidden | None:
        """(N, S) -> torch.nn's hidden: (L, N, H), or an (h, c) pair of them for LSTM."""
        if state is None:
            return None
        parts = [torch.from_numpy(p) for p in arch.state_to_hidden(self.config, state)]
        return parts[0] if len(parts) == 1 else (parts[0], parts[1])

    def _state(self, hidden: Hidden) -> State:
        parts = hidden if isinstance(hidden, tuple) else (hidden,)
        return arch.hidden_to_state(self.config, [p.numpy() for p in parts])

    @contextmanager
    def _running(self) -> Iterator[None]:
        """Eval mode, no autograd, and the requested thread count, all restored afterwards."""
        was_training, threads = self.model.training, torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        self.model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.model.train(was_training)
            if self.threads is not None:
                torch.set_num_threads(threads)
