"""Which :class:`~charnn.stepper.Stepper` runs a command: numpy for short inputs, torch for long.

The one place that chooses. For a short input, importing torch (1-4 s, more under load)
costs more than the whole computation, so ``sample``, ``eval`` and ``score`` run the numpy
:class:`~charnn.stepper.FastStepper` and never import torch; past a measured crossover torch's
fused modules (:class:`~charnn.torch_stepper.TorchStepper`) win:

    command   input that decides          numpy            torch
    -------   --------------------------  ---------------  -------------------------------
    sample    prime tokens                < 250,000        >= 250,000: the prime only; the
                                                           steps stay in numpy (same state)
    eval      text tokens                 <= 10,000        > 10,000, or --html (surprisal)
    score     lines + context tokens      <= 10,000,       > 10,000, lines in batches of
                                          line by line     SCORE_BATCH (sorted by length)

Training (validation, samples) does not come through here: it holds its torch model already.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from charnn.stepper import FastStepper, State, Stepper

if TYPE_CHECKING:
    from charnn.checkpoint import Checkpoint
    from charnn.model import CharRNN

# Tokens. Measured on a 2-core EPYC (2x256 LSTM): numpy primes ~9k tok/s, torch's fused LSTM
# ~10.5k on one thread, and importing torch + building the model costs 1.5-4 s: torch only
# pays off past a few hundred thousand tokens.
TORCH_PRIME_MIN = 250_000
# Tokens (the lines, plus the context once). Measured on a 2-core EPYC with a 2x256 LSTM:
# torch's import and model build cost 1.4-2.5 s on a quiet machine (10 s under heavy load),
# the numpy recurrence runs ~9k tokens/s (~4.5k under load): numpy wins up to 13k-45k tokens.
NUMPY_MAX_TOKENS = 10_000
SCORE_BATCH = 64  # lines per torch batch in score (numpy scores line by line)


class PrimeElsewhere:
    """A stepper whose :meth:`prime` runs on another one over the same weights (the shared state
    layout lets the state move): a huge prime through torch, the steps in numpy."""

    def __init__(self, primer: Stepper, stepper: Stepper) -> None:
        self.primer, self.stepper = primer, stepper

    @property
    def vocab_size(self) -> int:
        return self.stepper.vocab_size

    def initial_state(self, n: int) -> State:
        return self.stepper.initial_state(n)

    def prime(self, ids: Any, state: State | None = None) -> tuple[np.ndarray, State]:
        return self.primer.prime(ids, state)

    def step(self, ids: Any, state: State) -> tuple[np.ndarray, State]:
        return self.stepper.step(ids, state)

    def forward(self, ids: Any, state: State | None = None) -> tuple[np.ndarray, State]:
        return self.stepper.forward(ids, state)

    def target_logprobs(self, ids: Any, targets: Any, state: State | None = None) -> tuple[np.ndarray, State]:
        return self.stepper.target_logprobs(ids, targets, state)

    def reorder(self, state: State, index: Any) -> State:
        return self.stepper.reorder(state, index)


def sampling_stepper(ckpt: Checkpoint, prime_tokens: int) -> Stepper:
    """numpy, or (a prime of TORCH_PRIME_MIN tokens or more) numpy steps after a torch prime."""
    stepper = FastStepper(ckpt.config, ckpt.weights)
    if prime_tokens < TORCH_PRIME_MIN:
        return stepper
    from charnn.torch_stepper import TorchStepper

    # One intra-op thread: a second one gains nothing at batch 1 and collapses (20x slower,
    # measured) when other processes keep the cores busy.
    return PrimeElsewhere(TorchStepper(ckpt.build_model(), threads=1), stepper)


def eval_stepper(
    ckpt: Checkpoint, tokens: int, model: CharRNN | None = None, fast: FastStepper | None = None
) -> Stepper:
    """For ``eval`` over ``tokens`` tokens; a ``model`` (for --html) or numpy stepper already
    built is used."""
    if model is None and tokens <= NUMPY_MAX_TOKENS:
        return fast or FastStepper(ckpt.config, ckpt.weights)
    from charnn.torch_stepper import TorchStepper

    return TorchStepper(model if model is not None else ckpt.build_model())


def score_stepper(ckpt: Checkpoint, tokens: int, fast: FastStepper | None = None) -> tuple[Stepper, int]:
    """For ``score`` over ``tokens`` tokens (lines and context): the stepper and its line batch
    (a numpy stepper ``fast`` already built is used)."""
    if tokens <= NUMPY_MAX_TOKENS:
        return fast or FastStepper(ckpt.config, ckpt.weights), 1
    return eval_stepper(ckpt, tokens), SCORE_BATCH
