"""Weight averaging over the end of a run (``--average``): an exponential moving average or
SWA's equal-weight mean of the weights after every optimizer step from ``--average-from``.

Training always goes on with the raw weights; the average is a second copy that validation
scores beside them, and ``best/`` takes it only when it validates better (see
:func:`charnn.trainer.record_validation`). Both kinds start as the plain mean of the steps averaged so
far; ``ema`` then keeps a window of about ``1 / (1 - decay)`` steps, ``swa`` keeps them all.
Starting an EMA from one snapshot instead would let that snapshot dominate a short average
(0.999^250 = 78 % of it after 250 steps).

The average is part of the exact-resume state, kept by :class:`charnn.checkpointer.Checkpointer`:
its tensors go to ``train_state.safetensors`` as ``avg.<parameter name>`` (checked on load like
every tensor there) and the number of steps averaged to ``progress.average_updates``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol, TypeVar

import torch
from torch import nn

from charnn.errors import CheckpointError

if TYPE_CHECKING:
    from charnn.checkpoint_meta import Counters
    from charnn.config import TrainConfig

T = TypeVar("T")


class Horizon(Protocol):
    """How far a run's learning-rate decay has gone (:class:`charnn.trainer.Schedule`)."""

    def fraction(self, step: int, elapsed: float) -> float: ...


PREFIX = "avg."  # names of the average's tensors in train_state.safetensors


class WeightAverager:
    """The running average of a model's parameters (named as ``named_parameters`` names them:
    a tied output layer is the embedding, averaged once)."""

    def __init__(self, kind: str, start: float, decay: float) -> None:
        self.kind, self.start, self.decay = kind, start, decay
        self.average: dict[str, torch.Tensor] | None = None

    @classmethod
    def of(cls, config: TrainConfig) -> WeightAverager:
        """The averager ``--average``, ``--average-from`` and ``--ema-decay`` ask for."""
        return cls(config.average, config.average_from, config.ema_decay)

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    @property
    def ready(self) -> bool:
        """Whether there is an average to validate."""
        return self.average is not None

    def update(self, model: nn.Module, fraction: float, updates: int) -> int:
        """Fold the weights after an optimizer step into the average once ``fraction`` of the run
        is done; ``updates`` counts the steps averaged so far. Returns the new count."""
        if not self.enabled or fraction < self.start:
            return updates
        params = dict(model.named_parameters())
        with torch.no_grad():
            if self.average is None or updates == 0:
                self.average = {name: p.detach().clone() for name, p in params.items()}
                return 1
            # The mean of the first n steps is lerp(avg, w, 1/(n+1)); an EMA's share is 1 - decay.
            weight = 1.0 / (updates + 1)
            if self.kind == "ema":
                weight = max(weight, 1.0 - self.decay)
            names = list(self.average)
            torch._foreach_lerp_(
                [self.average[n] for n in names], [params[n].detach() for n in names], weight
            )
        return updates + 1

    def after_step(self, model: nn.Module, counters: Counters, horizon: Horizon) -> None:
        """Fold the weights after an optimizer step in, counting in ``counters.average_updates``;
        averaging starts at ``--average-from`` of the schedule's decay."""
        if self.enabled:
            fraction = horizon.fraction(counters.step, counters.elapsed)
            counters.average_updates = self.update(model, fraction, counters.average_updates)

    def scored(self, model: nn.Module, evaluate: Callable[[], T]) -> T | None:
        """``evaluate()`` with the average in the model (None before averaging has started)."""
        if self.average is None:
            return None
        with self.swapped_in(model):
            return evaluate()

    @contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """The model holds the average inside the block, its own weights again after it."""
        assert self.average is not None
        params = dict(model.named_parameters())
        with torch.no_grad():
            raw = {name: params[name].detach().clone() for name in self.average}
            for name, tensor in self.average.items():
                params[name].copy_(tensor)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, tensor in raw.items():
                    params[name].copy_(tensor)

    def state(self) -> dict[str, torch.Tensor]:
        """The tensors to checkpoint (none before averaging starts)."""
        return {PREFIX + name: t for name, t in (self.average or {}).items()}

    def load(self, model: nn.Module, tensors: dict[str, torch.Tensor], updates: int, where: str) -> None:
        """Restore the average from a checkpoint's ``avg.*`` tensors (names and shapes already
        checked against the model); the step count must agree with what is there."""
        average = {k[len(PREFIX) :]: v for k, v in tensors.items() if k.startswith(PREFIX)}
        names = {name for name, _ in model.named_parameters()}
        if updates and not self.enabled:
            raise CheckpointError(
                f"{where}: progress.average_updates is {updates} but the run does not average"
            )
        if bool(updates) != bool(average) or (average and set(average) != names):
            raise CheckpointError(
                f"{where}: progress.average_updates is {updates} but the checkpoint holds "
                f"{len(average)} of the {len(names)} averaged tensors"
            )
        device = next(model.parameters()).device
        self.average = {k: v.to(device).clone() for k, v in average.items()} if average else None
