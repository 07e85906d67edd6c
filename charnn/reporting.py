"""Typed records the trainer reports through, and the reporter protocol (no torch import).

The trainer never prints: it hands these records to a :class:`Reporter`. The console's
``TrainReporter`` draws them for people; :class:`NullReporter` keeps quiet (tests,
benchmarks, library use) and remembers the messages.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class RunInfo:
    """What a run is about to do, reported once before the first step."""

    device: str
    parameters: int
    train_tokens: int
    val_tokens: int
    vocab: int
    batch_size: int
    steps: int | None  # the run's length in steps, when it has one
    time_limit: float | None  # seconds, when the run is bounded by time
    default_length: bool  # no --steps/--epochs/--time given: the default time applies
    start_step: int  # > 0 when resuming
    out: str
    processes: int = 1  # data-parallel ranks, each with batch_size streams


@dataclass(frozen=True)
class StepReport:
    """One finite training step."""

    step: int
    total: int | None
    fraction: float  # of the run done, by steps or time, whichever is further
    loss: float  # nats per token, this step's batch
    bpc: float
    tok_per_s: float
    lr: float
    skipped: int  # non-finite steps skipped so far


@dataclass(frozen=True)
class EvalReport:
    """One validation."""

    step: int
    loss: float
    bpc: float
    is_best: bool


@dataclass(frozen=True)
class RunSummary:
    """How a run ended."""

    step: int
    elapsed: float
    skipped_steps: int
    val: dict[str, Any] | None
    best_val_bpc: float | None
    out: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Reporter(Protocol):
    def start(self, info: RunInfo) -> None: ...
    def progress(self, report: StepReport) -> None: ...
    def evaluated(self, report: EvalReport) -> None: ...
    def message(self, text: str) -> None: ...
    def finish(self, summary: RunSummary) -> None: ...


@dataclass
class NullReporter:
    """Prints nothing; keeps the messages (recoveries, notes) for whoever asks."""

    messages: list[str] = field(default_factory=list)

    def start(self, info: RunInfo) -> None:
        pass

    def progress(self, report: StepReport) -> None:
        pass

    def evaluated(self, report: EvalReport) -> None:
        pass

    def message(self, text: str) -> None:
        self.messages.append(text)

    def finish(self, summary: RunSummary) -> None:
        pass

    def close(self) -> None:
        pass
