"""Everything people read goes to stderr through rich (stdout is for generated text and data).

rich honours ``NO_COLOR`` and drops live displays when stderr is not a terminal;
then progress is logged as plain lines every few seconds instead.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from charnn.reporting import EvalReport, RunInfo, RunSummary, StepReport

err = Console(stderr=True, highlight=False)


def error(message: str) -> None:
    err.print(f"[bold red]charnn: error:[/] {message}", markup=True, highlight=False, soft_wrap=True)


def note(message: str) -> None:
    err.print(f"[dim]charnn:[/] {message}", soft_wrap=True)


class ByteBar:
    """A transient progress bar over bytes on stderr (reading, hashing, encoding a big corpus);
    plain start/finish lines when stderr is not a terminal."""

    def __init__(self, label: str, total: int, console: Console = err) -> None:
        self.console, self.label, self.total = console, label, total
        self._progress: Progress | None = None
        if console.is_terminal:
            self._progress = Progress(
                TextColumn(label),
                BarColumn(bar_width=30),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(label, total=total)
        else:
            console.print(f"charnn: {label} ({total / 1e6:,.0f} MB)", soft_wrap=True)

    def advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class TrainReporter:
    """Progress bar (TTY) or periodic log lines (pipes, CI) for a training run."""

    def __init__(self, console: Console = err, log_every: float = 10.0) -> None:
        self.console = console
        self.live = console.is_terminal
        self.log_every = log_every
        self._last_log = 0.0
        self._progress: Progress | None = None
        self._task: Any = None
        self._fraction = 0.0

    def start(self, info: RunInfo) -> None:
        plan = f"{info.steps} steps" if info.steps else f"{_fmt_duration(info.time_limit or 0)}"
        if info.steps and info.time_limit:
            plan += f" or {_fmt_duration(info.time_limit)}"
        if info.default_length:
            plan += " (the default; set --time, --steps or --epochs)"
        resumed = f", resuming at step {info.start_step}" if info.start_step else ""
        per_rank = f" per process x {info.processes} processes" if info.processes > 1 else ""
        self.console.print(
            f"training {info.parameters:,} parameters on {info.device}: "
            f"{info.train_tokens:,} train / {info.val_tokens:,} val tokens, vocab {info.vocab}, "
            f"batch {info.batch_size}{per_rank}; until {plan}{resumed}; checkpoints in {info.out}/",
            soft_wrap=True,
        )
        if self.live:
            self._progress = Progress(
                TextColumn("step {task.fields[step]}"),
                BarColumn(bar_width=12),
                TextColumn("{task.percentage:>3.0f}%"),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=1.0, step=info.start_step, stats="")

    def progress(self, report: StepReport) -> None:
        text = f"loss {report.loss:.3f} bpc {report.bpc:.3f} {report.tok_per_s / 1000:.1f}k chars/s"
        if report.skipped:
            text += f" skipped {report.skipped}"
        self._fraction = report.fraction
        if self._progress is not None:  # the live line stays short enough for 80 columns
            self._progress.update(self._task, completed=report.fraction, step=report.step, stats=text)
        elif time.monotonic() - self._last_log >= self.log_every:
            self._last_log = time.monotonic()
            total = f"/{report.total}" if report.total else ""
            self.console.print(f"step {report.step}{total} ({report.fraction:.0%}) {text} lr {report.lr:.2e}")

    def evaluated(self, report: EvalReport) -> None:
        star = " [green](best)[/]" if report.is_best else ""
        self.console.print(
            f"step {report.step}: val loss {report.loss:.4f}, val bpc {report.bpc:.4f}{star}", markup=True
        )

    def message(self, text: str) -> None:
        self.console.print(f"[yellow]{text}[/]", markup=True, soft_wrap=True)

    def finish(self, summary: RunSummary) -> None:
        self.close()
        val = summary.val
        val_text = f", val bpc {val['bpc']:.4f}" if val else ""
        best = summary.best_val_bpc
        best_text = f" (best {best:.4f})" if best is not None else ""
        self.console.print(
            f"done: {summary.step} steps in {_fmt_duration(summary.elapsed)}{val_text}{best_text}; "
            f"sample with: charnn sample -c {summary.out}",
            soft_wrap=True,
        )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
