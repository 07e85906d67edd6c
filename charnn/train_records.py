"""Typed records the trainer reports through, and the reporter protocol (no torch import).

The trainer never prints: it hands these records to a :class:`Reporter`. The console's
``TrainReporter`` draws them for people; :class:`NullReporter` keeps quiet (tests,
benchmarks, library use) and remembers the messages and samples.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from charnn.threads import ThreadChoice


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
    elapsed: float = 0.0  # seconds already trained (resume)
    threads: ThreadChoice | None = None  # the CPU threads torch computes with, and why


@dataclass(frozen=True)
class StepReport:
    """One finite training step."""

    step: int
    total: int | None
    fraction: float  # of the run done, by steps or time, whichever is further
    loss: float  # nats per token, this step's batch
    bpc: float  # bits per character of the batch's text (= bits per token for characters)
    tok_per_s: float
    lr: float
    skipped: int  # non-finite steps skipped so far
    bpt: float | None = None  # bits per token (equal to bpc for characters)
    elapsed: float = 0.0  # wall-clock seconds since the run began, summed over resumes
    tokens: int = 0  # tokens trained on so far (the whole run)
    chars: int = 0  # characters those tokens spell
    chars_per_s: float = 0.0


@dataclass(frozen=True)
class EvalReport:
    """One validation."""

    step: int
    loss: float
    bpc: float  # bits per character of the validation text
    is_best: bool
    bpt: float | None = None  # bits per token
    tokens: int = 0  # tokens predicted
    elapsed: float = 0.0
    best_bpc: float | None = None  # best so far, this one included
    averaged_bpc: float | None = None  # the weight average's (--average), once it has started
    best_averaged: bool = False  # the new best is the average's, and best/ now holds it

    @property
    def kept_bpc(self) -> float:
        """What best/ and early stopping count: the average's score when it beats the raw weights'."""
        avg = self.averaged_bpc
        if avg is not None and math.isfinite(avg) and (not math.isfinite(self.bpc) or avg < self.bpc):
            return avg
        return self.bpc


@dataclass(frozen=True)
class SampleReport:
    """A sample generated during training (``--sample-every``): same prime and seed every time."""

    step: int
    text: str
    seconds: float  # what generating it cost


@dataclass(frozen=True)
class RunSummary:
    """How a run ended."""

    step: int
    elapsed: float
    skipped_steps: int
    val: dict[str, Any] | None
    best_val_bpc: float | None
    out: str
    stopped_reason: str | None = None  # early stopping, when it ended the run

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Reporter(Protocol):
    def start(self, info: RunInfo) -> None: ...
    def progress(self, report: StepReport) -> None: ...
    def validating(self, step: int) -> None: ...
    def evaluated(self, report: EvalReport) -> None: ...
    def sampled(self, report: SampleReport) -> None: ...
    def message(self, text: str) -> None: ...
    def stopped(self, step: int, elapsed: float, reason: str) -> None: ...
    def finish(self, summary: RunSummary) -> None: ...
    def close(self) -> None:
        """Release what the reporter holds (live displays, files); called once, after ``finish``."""


@dataclass
class NullReporter:
    """Prints nothing; keeps the messages (recoveries, notes) for whoever asks."""

    messages: list[str] = field(default_factory=list)
    samples: list[SampleReport] = field(default_factory=list)

    def start(self, info: RunInfo) -> None:
        pass

    def progress(self, report: StepReport) -> None:
        pass

    def validating(self, step: int) -> None:
        pass

    def evaluated(self, report: EvalReport) -> None:
        pass

    def sampled(self, report: SampleReport) -> None:
        self.samples.append(report)

    def message(self, text: str) -> None:
        self.messages.append(text)

    def stopped(self, step: int, elapsed: float, reason: str) -> None:
        self.messages.append(reason)

    def finish(self, summary: RunSummary) -> None:
        pass

    def close(self) -> None:
        pass
