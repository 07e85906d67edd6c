"""The rows of ``RUN/metrics.jsonl`` as typed records, shared by the writer and every reader.

One class per ``kind``; :meth:`~charnn.jsonrecord.JsonRecord.to_json` is what
:class:`~charnn.metrics.MetricsReporter` appends, :func:`parse_row` what ``charnn plot`` and
``charnn runs`` read back. Readers are tolerant, as a history file must be: a torn last line, a
row of a kind this charnn does not know, or a row with a known field of the wrong type is
skipped, never fatal, and keys a newer charnn added are ignored. Numbers that were NaN or
infinite are stored as null (JSON has neither), so a row's measurements are optional.
No torch import.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from charnn.jsonrecord import (
    FLAG,
    SCALAR,
    TEXT,
    JsonRecord,
    Kind,
    RecordError,
    is_whole,
    item,
    list_of,
    mapping_of,
    optional,
    real,
    record,
    whole,
)

# A measurement: a number, or null where it was NaN/inf (written so by _number below).
NUMBER = Kind(
    "a number or null",
    lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)),
    write=lambda v: v if v is None or math.isfinite(v) else None,
)
MEASURE = optional(NUMBER)


@dataclass(frozen=True, kw_only=True)
class BudgetRecord(JsonRecord):
    """The shape the budget chose for a new run (:class:`charnn.budget.Choice`), and why."""

    shape: str = item(TEXT)
    model: dict[str, Any] = item(mapping_of(SCALAR), default_factory=dict)  # ModelConfig fields set
    train: dict[str, Any] = item(mapping_of(SCALAR), default_factory=dict)  # TrainConfig fields set
    tokens: int = item(whole(0), default=0)  # training tokens the budget buys
    chars_per_s: float | None = item(MEASURE, default=None)  # the speed assumed (None: a token budget)
    predicted_bpc: float | None = item(MEASURE, default=None)
    extrapolated: bool = item(FLAG, default=False)
    reason: str = item(TEXT, default="")


@dataclass(frozen=True, kw_only=True)
class RegularisationRecord(JsonRecord):
    """The regularisation a budget-chosen run got from the passes over its text the budget plans
    (:func:`charnn.regularisation.plan`), and why. Only the fields it set are listed: typed
    options win and are not."""

    epochs: float | None = item(MEASURE, default=None)  # passes over the training text planned
    model: dict[str, Any] = item(mapping_of(SCALAR), default_factory=dict)  # ModelConfig fields set
    train: dict[str, Any] = item(mapping_of(SCALAR), default_factory=dict)  # TrainConfig fields set
    reason: str = item(TEXT, default="")


@dataclass(frozen=True, kw_only=True)
class ThreadsRecord(JsonRecord):
    """The thread count a run computes with and how it was chosen (:class:`charnn.threads.ThreadChoice`)."""

    count: int | None = item(optional(whole(1)), default=None)  # None: left to torch (a GPU)
    how: str = item(TEXT, default="")
    cores: int = item(whole(0), default=0)
    load: float | None = item(MEASURE, default=None)
    seconds: dict[str, Any] = item(mapping_of(SCALAR), default_factory=dict)  # candidate -> seconds per pass
    same_rounding: bool | None = item(optional(FLAG), default=None)


@dataclass(frozen=True, kw_only=True)
class Invocation(JsonRecord):
    """How a charnn process was started: command line and versions (also metrics' start row)."""

    argv: list[str] = item(list_of(TEXT), default_factory=list)
    charnn: str | None = item(optional(TEXT), default=None)
    torch: str | None = item(optional(TEXT), default=None)  # from its metadata: torch is not imported
    python: str | None = item(optional(TEXT), default=None)
    platform: str | None = item(optional(TEXT), default=None)
    budget: BudgetRecord | None = item(optional(record(BudgetRecord)), default=None)  # charnn.budget
    regularisation: RegularisationRecord | None = item(
        optional(record(RegularisationRecord)), default=None
    )  # charnn.regularisation: set with the budget's choice, when it regularises

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        if self.regularisation is None:  # runs the plan left alone keep their records as they were
            out.pop("regularisation", None)
        return out

    def to_fields(self) -> dict[str, Any]:
        """The invocation's fields by name, to build a record that extends it (RunRecord, StartRow)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Invocation)}


@dataclass(frozen=True, kw_only=True)
class MetricsRow(JsonRecord):
    """Every row: its kind, the step it belongs to and seconds since the run began (over resumes)."""

    KIND: ClassVar[str] = ""
    step: int = item(whole(0))
    elapsed: float = item(real(min=0), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.KIND, **super().to_json()}


@dataclass(frozen=True, kw_only=True)
class StartRow(Invocation, MetricsRow):
    """A run started or resumed: the command line and versions (:class:`Invocation`), then these."""

    KIND: ClassVar[str] = "start"
    device: str | None = item(optional(TEXT), default=None)
    parameters: int | None = item(optional(whole(0)), default=None)
    threads: ThreadsRecord | None = item(optional(record(ThreadsRecord)), default=None)  # charnn.threads
    time: str | None = item(optional(TEXT), default=None)  # UTC, ISO 8601


@dataclass(frozen=True, kw_only=True)
class ProgressRow(MetricsRow):
    """Training since the previous progress row: mean loss (nats/token) and bpc over its steps."""

    KIND: ClassVar[str] = "progress"
    tokens: int = item(whole(0), default=0)  # trained on so far (the whole run)
    chars: int = item(whole(0), default=0)  # characters those tokens spell
    loss: float | None = item(MEASURE, default=None)
    bpc: float | None = item(MEASURE, default=None)  # bits per character (before 0.2.0: per token)
    bpt: float | None = item(MEASURE, default=None)  # bits per token; absent in rows before 0.2.0
    lr: float | None = item(MEASURE, default=None)
    chars_per_s: float | None = item(MEASURE, default=None)

    @property
    def char_bpc(self) -> float | None:
        """Bits per character, also of an old row (no ``bpt``), whose ``bpc`` held bits per
        token: rescaled by the run's tokens per character so far (1 for characters)."""
        if self.bpc is None or self.bpt is not None or not (self.tokens > 0 and self.chars > 0):
            return self.bpc
        return self.bpc * self.tokens / self.chars


@dataclass(frozen=True, kw_only=True)
class ValRow(MetricsRow):
    """One validation, and the best so far (this one included)."""

    KIND: ClassVar[str] = "val"
    tokens: int = item(whole(0), default=0)
    chars: int = item(whole(0), default=0)
    loss: float | None = item(MEASURE, default=None)
    bpc: float | None = item(MEASURE, default=None)
    best_bpc: float | None = item(MEASURE, default=None)
    is_best: bool = item(FLAG, default=False)
    averaged_bpc: float | None = item(MEASURE, default=None)  # the weight average's (--average), once started
    best_averaged: bool = item(FLAG, default=False)  # the new best is the average's: best/ holds it

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        if self.averaged_bpc is None:  # rows of runs without --average stay as they were
            out.pop("averaged_bpc", None)
        if not self.best_averaged:
            out.pop("best_averaged", None)
        return out


@dataclass(frozen=True, kw_only=True)
class StopRow(MetricsRow):
    """The run stopped early (early stopping, a signal): why."""

    KIND: ClassVar[str] = "stop"
    reason: str = item(TEXT, default="")


@dataclass(frozen=True, kw_only=True)
class EndRow(MetricsRow):
    """The run finished."""

    KIND: ClassVar[str] = "end"
    best_bpc: float | None = item(MEASURE, default=None)
    stopped_reason: str | None = item(optional(TEXT), default=None)
    time: str | None = item(optional(TEXT), default=None)


ROWS: dict[str, type[MetricsRow]] = {
    cls.KIND: cls for cls in (StartRow, ProgressRow, ValRow, StopRow, EndRow)
}


def row_step(line: str) -> tuple[int, dict[str, Any]] | None:
    """The step and parsed object of a metrics line of any kind, known or not (None: torn or
    foreign). Rewinding keeps rows by this, so rows of a newer charnn survive a resume."""
    try:
        data = json.loads(line)
    except ValueError:
        return None  # a torn last line after a crash
    if not isinstance(data, dict) or not is_whole(data.get("step")) or "kind" not in data:
        return None
    return data["step"], data


def parse_row(data: dict[str, Any]) -> MetricsRow | None:
    """The typed row of a parsed line; None for a kind this charnn does not know or a bad field."""
    kind = data.get("kind")
    cls = ROWS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        return None
    try:
        return cls.from_json(data, cls.KIND)
    except RecordError:
        return None


def to_line(row: MetricsRow) -> str:
    """The row as one line of JSON (without the newline); NaN/inf become null, as JSON needs."""
    from charnn.console import json_line

    data = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.to_json().items()}
    return json_line(data)  # valid UTF-8 even with an undecodable file name in it
