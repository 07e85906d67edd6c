"""Everything people read goes to stderr through rich (stdout is for generated text and data).

rich honours ``NO_COLOR`` and drops live displays when stderr is not a terminal;
then progress is logged as plain lines every few seconds instead. Messages are never
read as rich markup, and names in them are shown literally (:func:`shown`). Losing
stderr (a closed pipe, ``2>&-``) silences the console and nothing else: training
goes on to its end and saves.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from charnn.reporting import EvalReport, RunInfo, RunSummary, SampleReport, StepReport


class _StderrConsole(Console):
    """A console that goes quiet when its reader goes away instead of ending the process
    (rich's default answer to a broken pipe is ``SystemExit(1)``, which would lose a run)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True

    def _check_buffer(self) -> None:
        try:
            super()._check_buffer()
        except (OSError, ValueError):  # EIO, EBADF, a closed file object
            self.quiet = True
            del self._buffer[:]


err = _StderrConsole(stderr=True, highlight=False)

_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


def shown(text: str) -> str:
    """``text`` safe for one line of a terminal or log: control characters and lone surrogates
    (undecodable file names) become escapes; everything else is shown as it is."""
    text = text.translate(_CONTROL)
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def error(message: str) -> None:
    err.print(Text.assemble(("charnn: error:", "bold red"), " ", shown(message)), soft_wrap=True)


def note(message: str) -> None:
    err.print(Text.assemble(("charnn:", "dim"), " ", shown(message)), soft_wrap=True)


# A model's text keeps its lines, but control characters (ESC, CR, ...) other than newline and
# tab become U+FFFD: it must not move the cursor or recolour the terminal.
_SAMPLE_CONTROLS = {c: "\ufffd" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if c not in (0x09, 0x0A)}


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
        self.console.print(
            f"training {info.parameters:,} parameters on {info.device}: "
            f"{info.train_tokens:,} train / {info.val_tokens:,} val tokens, vocab {info.vocab}, "
            f"batch {info.batch_size}; until {plan}{resumed}; checkpoints in {shown(info.out)}/",
            soft_wrap=True,
            markup=False,
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
            line = f"step {report.step}{total} ({report.fraction:.0%}) {text} lr {report.lr:.2e}"
            self.console.print(line, markup=False)

    def evaluated(self, report: EvalReport) -> None:
        star = " [green](best)[/]" if report.is_best else ""
        self.console.print(
            f"step {report.step}: val loss {report.loss:.4f}, val bpc {report.bpc:.4f}{star}", markup=True
        )

    def sampled(self, report: SampleReport) -> None:
        # The model's text is shown literally (a Text, never markup), without control characters.
        body = report.text.translate(_SAMPLE_CONTROLS).rstrip("\n")
        self.console.print(Text(f"sample at step {report.step}:\n{body}", style="dim"), soft_wrap=True)

    def message(self, text: str) -> None:
        self.console.print(Text(shown(text), style="yellow"), soft_wrap=True)

    def finish(self, summary: RunSummary) -> None:
        self.close()
        val = summary.val
        val_text = f", val bpc {val['bpc']:.4f}" if val else ""
        best = summary.best_val_bpc
        best_text = f" (best {best:.4f})" if best is not None else ""
        self.console.print(
            f"done: {summary.step} steps in {_fmt_duration(summary.elapsed)}{val_text}{best_text}; "
            f"sample with: charnn sample -c {shlex.quote(shown(summary.out))}",
            soft_wrap=True,
            markup=False,
        )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


@contextmanager
def download_progress(
    name: str, url: str, console: Console = err
) -> Iterator[Callable[[int, int | None], None]]:
    """A progress callback ``(bytes so far, total or None)``: a live bar on a terminal, else a line
    at the start and one every 10 s."""
    console.print(f"[dim]charnn:[/] fetching {escape(name)} from {escape(url)}", soft_wrap=True)
    if console.is_terminal:
        bar = Progress(
            TextColumn(escape(name)),
            BarColumn(bar_width=24),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        task = bar.add_task("fetch", total=None)
        with bar:
            yield lambda done, total: bar.update(task, completed=done, total=total)
        return
    last = [time.monotonic()]

    def log(done: int, total: int | None) -> None:
        if time.monotonic() - last[0] >= 10:
            last[0] = time.monotonic()
            of = f" of {total / 1e6:.1f}" if total else ""
            console.print(f"[dim]charnn:[/] {escape(name)}: {done / 1e6:.1f}{of} MB", soft_wrap=True)

    yield log
