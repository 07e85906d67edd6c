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

TORCH_PRIME_MIN = 20_000  # tokens; below this the numpy prime finishes before torch has loaded
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

        model, cfg = self._model, self._model.config
        ids = np.asarray(ids)
        n, L, H = ids.shape[0], cfg.layers, cfg.hidden
        hidden: Any = None
        if state is not None:  # (N, S) -> (L or 2L, N, H) blocks
            blocks = torch.from_numpy(np.ascontiguousarray(state)).view(n, -1, H).transpose(0, 1)
            hidden = (blocks[:L].contiguous(), blocks[L:].contiguous()) if cfg.cell == "lstm" else blocks.contiguous()
        with torch.inference_mode():
            for start in range(0, ids.shape[1], _WINDOW):
                x = torch.from_numpy(ids[:, start : start + _WINDOW].astype(np.int64))  # (N, t)
                out, hidden = model.rnn(model.embed(x), hidden)  # (N, t, H)
            logits = model.head(out[:, -1])  # (N, V)
            blocks = torch.cat(hidden, dim=0) if isinstance(hidden, tuple) else hidden  # (L or 2L, N, H)
            new_state = np.ascontiguousarray(blocks.transpose(0, 1).reshape(n, -1).numpy(), dtype=np.float32)
        return logits.numpy().astype(np.float32), new_state
