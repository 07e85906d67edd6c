"""A run's history: ``RUN/metrics.jsonl``, one JSON object per line, and the reporter that writes it.

Rows (every row has ``kind``, ``step`` and ``elapsed``, wall-clock seconds since the run began,
summed over resumes)::

    {"kind": "start", "step": 0, "argv": [...], "charnn": "0.1.0", "torch": "2.13.0", "device": "cpu", ...}
    {"kind": "progress", "step": 120, "elapsed": 31.2, "tokens": 245760, "chars": 245760,
     "loss": 1.71, "bpc": 2.47, "bpt": 2.47, "lr": 0.0049, "chars_per_s": 7900.0}
    {"kind": "val", "step": 250, "elapsed": 64.0, "tokens": 512000, "chars": 512000, "loss": 1.52,
     "bpc": 2.19, "best_bpc": 2.19, "is_best": true}
    {"kind": "stop", "step": 1500, "elapsed": 380.1, "reason": "early stopping: ..."}
    {"kind": "end", "step": 1500, "elapsed": 381.0, "best_bpc": 1.98}

Each kind is a typed record in :mod:`charnn.metrics_rows`, shared with the readers.

``loss``/``bpc``/``bpt`` of a progress row are the mean over the steps since the previous row (not
one noisy batch): ``loss`` in nats per token, ``bpt`` bits per token, ``bpc`` bits per character
(equal for the char tokenizer; a subword run's ``bpc`` is comparable with validation's). Rows
written before ``bpt`` existed held bits per token under ``bpc``: :func:`progress_bpc` reads them.
Progress rows are written at most once a second, and ever more sparsely as the run
grows (at most one per ``elapsed / 2000`` seconds), so a day-long run writes ~10k rows, not 10M;
the first step, every validated step and the last step always get one.

Crash safety: each row is appended and flushed whole. A torn last line (power cut) is skipped by
:func:`read_metrics`. On ``--resume`` the rows after the checkpoint's step belong to the abandoned
tail after the last save; :meth:`MetricsLog.rewind` drops them by rewriting the file atomically
(``charnn.atomic``) before the run appends again, so steps never repeat and none go missing.
No torch import: ``charnn runs`` and ``charnn plot`` read these files cheaply.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import IO

from charnn.atomic import write_atomic
from charnn.console import json_line
from charnn.errors import DataError
from charnn.metrics_rows import (
    EndRow,
    Invocation,
    MetricsRow,
    ProgressRow,
    StartRow,
    StopRow,
    ThreadsRecord,
    ValRow,
    parse_row,
    row_step,
    to_line,
)
from charnn.train_records import EvalReport, Reporter, RunInfo, RunSummary, SampleReport, StepReport

METRICS = "metrics.jsonl"
MIN_INTERVAL = 1.0  # seconds between progress rows, at least
SPARSITY = 2000.0  # ... and at least elapsed / SPARSITY: rows grow with log(time), not time


def read_metrics(path: str | os.PathLike[str]) -> list[MetricsRow]:
    """The valid rows of a metrics file, typed; torn, foreign or unknown lines are skipped, never fatal."""
    rows = []
    for _, data in _raw_rows(path):
        row = parse_row(data)
        if row is not None:
            rows.append(row)
    return rows


def _raw_rows(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, object]]]:
    """(step, object) of every line that is a row of some kind, this charnn's or a newer one's."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [parsed for line in fh if (parsed := row_step(line)) is not None]
    except FileNotFoundError:
        return []


class MetricsLog:
    """Append-only JSON-lines file with an atomic rewind."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fh: IO[str] | None = None

    def rewind(self, step: int) -> None:
        """Keep only the rows up to ``step`` (drops a torn line too); atomic."""
        self.close()
        if not self.path.exists():
            return
        try:
            keep = [data for row_step_, data in _raw_rows(self.path) if row_step_ <= step]
            write_atomic(self.path, "".join(json_line(data) + "\n" for data in keep))
        except OSError as exc:
            raise self._error(exc) from None

    def append(self, row: MetricsRow) -> None:
        line = to_line(row)
        try:
            if self._fh is None:
                self._fh = open(self.path, "a", encoding="utf-8")
            self._fh.write(line + "\n")
            self._fh.flush()  # whole rows reach the OS at once: a killed process loses at most this row
        except OSError as exc:
            raise self._error(exc) from None

    def _error(self, exc: OSError) -> DataError:
        """A history that cannot be written (a directory in its place, a full disk, a file-size
        limit) is the user's to fix: one line naming the file."""
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass
        return DataError(f"{self.path}: cannot write the run's history ({exc.strerror or exc})")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class MetricsReporter:
    """A :class:`~charnn.train_records.Reporter` that writes the history and forwards everything to
    ``inner`` (the console), so the trainer reports once and both see it."""

    def __init__(self, log: MetricsLog, inner: Reporter, start_row: Invocation | None = None) -> None:
        self.log, self.inner, self.start_row = log, inner, start_row or Invocation()
        self.last_step = -1
        self.last_time = -math.inf
        self._losses: list[float] = []
        self._bpcs: list[float] = []  # bits per character of the same steps
        self._pending: StepReport | None = None
        self._seen = (0, 0)  # tokens and chars at the last reported step

    def start(self, info: RunInfo) -> None:
        # A new run (step 0, e.g. --force) starts an empty history; a resumed one drops the
        # abandoned tail after the checkpoint it continues from.
        self.log.rewind(info.start_step if info.start_step > 0 else -1)
        self.last_step = info.start_step
        self.log.append(
            StartRow(
                step=info.start_step,
                elapsed=info.elapsed,
                **self.start_row.to_fields(),
                device=info.device,
                parameters=info.parameters,
                threads=ThreadsRecord(**info.threads.to_dict()) if info.threads is not None else None,
                time=_now(),
            )
        )
        self.inner.start(info)

    def progress(self, report: StepReport) -> None:
        if report.step <= self.last_step:  # divergence recovery replays steps from latest/
            self.log.rewind(report.step - 1)
            self._losses, self._bpcs, self._pending = [], [], None
        self.last_step = report.step
        self._seen = (report.tokens, report.chars)
        self._losses.append(report.loss)
        self._bpcs.append(report.bpc)
        self._pending = report
        due = max(MIN_INTERVAL, report.elapsed / SPARSITY)
        if report.step == 1 or report.elapsed - self.last_time >= due:
            self._flush_progress()
        self.inner.progress(report)

    def _flush_progress(self) -> None:
        report, losses = self._pending, self._losses
        if report is None or not losses:
            return
        loss = sum(losses) / len(losses)
        bpc = sum(self._bpcs) / len(self._bpcs)
        self.log.append(
            ProgressRow(
                step=report.step,
                elapsed=round(report.elapsed, 3),
                tokens=report.tokens,
                chars=report.chars,
                loss=loss,
                bpc=bpc,  # bits per character, as validation's
                bpt=loss / math.log(2),  # bits per token
                lr=report.lr,
                chars_per_s=round(report.chars_per_s, 1),
            )
        )
        self.last_time = report.elapsed
        self._losses, self._bpcs, self._pending = [], [], None

    def validating(self, step: int) -> None:
        self._flush_progress()  # the validated step's training row comes first
        self.inner.validating(step)

    def evaluated(self, report: EvalReport) -> None:
        self.log.append(
            ValRow(
                step=report.step,
                elapsed=round(report.elapsed, 3),
                tokens=self._seen[0],
                chars=self._seen[1],
                loss=report.loss,
                bpc=report.bpc,
                best_bpc=report.best_bpc,
                is_best=report.is_best,
                averaged_bpc=report.averaged_bpc,
                best_averaged=report.best_averaged,
            )
        )
        self.inner.evaluated(report)

    def sampled(self, report: SampleReport) -> None:
        self.inner.sampled(report)  # the text itself goes to RUN/samples.txt

    def message(self, text: str) -> None:
        self.inner.message(text)

    def stopped(self, step: int, elapsed: float, reason: str) -> None:
        self._flush_progress()
        self.log.append(StopRow(step=step, elapsed=round(elapsed, 3), reason=reason))
        self.inner.stopped(step, elapsed, reason)

    def finish(self, summary: RunSummary) -> None:
        self._flush_progress()
        self.log.append(
            EndRow(
                step=summary.step,
                elapsed=round(summary.elapsed, 3),
                best_bpc=summary.best_val_bpc,
                stopped_reason=summary.stopped_reason,
                time=_now(),
            )
        )
        self.inner.finish(summary)

    def close(self) -> None:
        self._flush_progress()
        self.log.close()
        self.inner.close()


def invocation(argv: list[str] | None = None) -> Invocation:
    """The command line (``argv``, else this process's) and versions (torch's from its metadata:
    no import)."""
    import platform
    import sys
    from importlib.metadata import PackageNotFoundError, version

    from charnn import __version__

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = None
    return Invocation(
        argv=list(argv if argv is not None else sys.argv),
        charnn=__version__,
        torch=torch_version,
        python=platform.python_version(),
        platform=platform.platform(terse=True),
    )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
