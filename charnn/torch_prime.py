"""A long prime through torch's fused recurrent modules, for the sampling path.

The numpy stepper feeds a prime position by position (one recurrent product per position
and layer in Python); torch's fused nn.LSTM/GRU/RNN runs a long sequence several times
faster once its import (about a second) is paid. ``charnn sample`` switches here only for
primes of at least ``TORCH_PRIME_MIN`` tokens (measured crossover, see the README), so
ordinary primes never import torch. Windows with the state carried keep memory bounded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from charnn.checkpoint import Checkpoint
from charnn.stepper import FastStepper, State

# Tokens. Measured on a 2-core EPYC (2x256 LSTM): numpy primes ~9k tok/s, torch's fused LSTM
# ~10.5k on one thread, and importing torch + building the model costs 1.5-4 s: torch only
# pays off past a few hundred thousand tokens.
TORCH_PRIME_MIN = 250_000
_WINDOW = 4096  # positions per forward pass


class TorchPrimedStepper:
    """A FastStepper whose prime() runs torch's fused modules; steps stay in numpy."""

    def __init__(self, stepper: FastStepper, ckpt: Checkpoint) -> None:
        self._stepper = stepper
        self._model = ckpt.build_model()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stepper, name)

    def prime(self, ids: Any, state: State | None = None) -> tuple[np.ndarray, State]:
        """Same contract as :meth:`FastStepper.prime`: ids (N, T) -> logits (N, V), state (N, S)."""
        import torch

        cfg = self._model.config
        ids = np.asarray(ids)
        n, L, H = ids.shape[0], cfg.layers, cfg.hidden
        hidden: Any = None
        if state is not None:  # (N, S) -> (L or 2L, N, H) blocks
            blocks = torch.from_numpy(np.ascontiguousarray(state)).view(n, -1, H).transpose(0, 1)
            lstm = cfg.cell == "lstm"
            hidden = (blocks[:L].contiguous(), blocks[L:].contiguous()) if lstm else blocks.contiguous()
        threads = torch.get_num_threads()
        # One intra-op thread: a second one gains nothing at batch 1 and collapses (20x slower,
        # measured) when other processes keep the cores busy.
        torch.set_num_threads(1)
        try:
            return self._run(torch, ids, hidden)
        finally:
            torch.set_num_threads(threads)

    def _run(self, torch: Any, ids: np.ndarray, hidden: Any) -> tuple[np.ndarray, State]:
        model, n = self._model, ids.shape[0]
        with torch.inference_mode():
            for start in range(0, ids.shape[1], _WINDOW):
                x = torch.from_numpy(ids[:, start : start + _WINDOW].astype(np.int64))  # (N, t)
                out, hidden = model.rnn(model.embed(x), hidden)  # (N, t, H)
            logits = model.head(out[:, -1])  # (N, V)
            blocks = torch.cat(hidden, dim=0) if isinstance(hidden, tuple) else hidden  # (L or 2L, N, H)
            new_state = np.ascontiguousarray(blocks.transpose(0, 1).reshape(n, -1).numpy(), dtype=np.float32)
        return logits.numpy().astype(np.float32), new_state
