"""Everything people read goes to stderr through rich (stdout is for generated text and data).

rich honours ``NO_COLOR``; the live bar is drawn only where rich can redraw a line
(``Console.is_interactive``: a terminal that is not ``TERM=dumb``), else progress is logged
as plain lines every few seconds, with elapsed time and ETA. Messages are never
read as rich markup, and names in them are shown literally (:func:`shown`). Losing
stderr (a closed pipe, ``2>&-``) silences the console and nothing else: training
goes on to its end and saves.

rich is imported on first use, not with this module: ``charnn sample`` prints nothing for
people when all goes well, and importing rich costs about a tenth of its start-up.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from charnn.train_records import EvalReport, RunInfo, RunSummary, SampleReport, StepReport

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

_err: Console | None = None


def stderr_console() -> Console:
    """The shared console on stderr (created, and rich imported, on first use)."""
    global _err
    if _err is None:
        from rich.console import Console

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

        _err = _StderrConsole(stderr=True, highlight=False)
    return _err


def stderr_is_terminal() -> bool:
    """Whether people read stderr (rich's answer), without importing rich when stderr is plainly
    not a terminal and nothing forces one: sampling into a pipe stays lean."""
    if not sys.stderr.isatty() and not any(os.environ.get(v) for v in ("FORCE_COLOR", "TTY_COMPATIBLE")):
        return False
    return stderr_console().is_terminal


def __getattr__(name: str) -> Any:  # ``charnn.console.err`` without importing rich up front
    if name == "err":
        return stderr_console()
    raise AttributeError(name)


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


def json_line(data: object) -> str:
    """``data`` as one line of JSON that is valid UTF-8: non-ASCII text kept readable, but a
    string that cannot be UTF-8 (a lone surrogate from an undecodable file name) makes the
    line escape it (``\\udcff``) instead of writing invalid bytes or failing."""
    import json

    text = json.dumps(data, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(data, ensure_ascii=True)
    return text


def error(message: str) -> None:
    from rich.text import Text

    stderr_console().print(Text.assemble(("charnn: error:", "bold red"), " ", shown(message)), soft_wrap=True)


def note(message: str) -> None:
    from rich.text import Text

    stderr_console().print(Text.assemble(("charnn:", "dim"), " ", shown(message)), soft_wrap=True)


def stopped(message: str) -> None:
    """A run the user stopped (Ctrl-C, SIGTERM): not an error, so not red."""
    from rich.text import Text

    stderr_console().print(Text.assemble(("charnn:", "yellow"), " ", shown(message)), soft_wrap=True)


# A model's text keeps its lines, but control characters (ESC, CR, ...) other than newline and
# tab become U+FFFD: it must not move the cursor or recolour the terminal.
_SAMPLE_CONTROLS = {c: "\ufffd" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if c not in (0x09, 0x0A)}


def bytes_bar(label: str, console: Console, width: int = 30) -> Progress:
    """A transient rich bar over bytes (size, speed, time left), labelled literally."""
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (BarColumn(bar_width=width), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    return Progress(TextColumn(escape(label)), *columns, console=console, transient=True)


class ByteBar:
    """A transient progress bar over bytes on stderr (reading, hashing, encoding a big corpus);
    plain start/finish lines when stderr is not a terminal."""

    def __init__(self, label: str, total: int, console: Console | None = None) -> None:
        console = console or stderr_console()
        self.console, self.label, self.total = console, label, total
        self._progress: Progress | None = None
        if console.is_terminal:
            self._progress = bytes_bar(label, console)
            self._progress.start()
            self._task = self._progress.add_task(label, total=total)
        else:
            console.print(f"charnn: {shown(label)} ({total / 1e6:,.0f} MB)", soft_wrap=True, markup=False)

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
    """Progress for a training run: a live bar where rich can redraw a line (an interactive
    terminal: not a pipe, not ``TERM=dumb``), else a plain line every ``log_every`` seconds with
    elapsed time and ETA. ``quiet``: nothing but warnings and the final line."""

    def __init__(self, console: Console | None = None, log_every: float = 10.0, quiet: bool = False) -> None:
        console = console or stderr_console()
        self.console = console
        self.quiet = quiet
        self.live = console.is_interactive and not quiet
        self.log_every = log_every
        self._last_log = -math.inf
        self._progress: Progress | None = None
        self._task: Any = None
        self._wall0 = time.monotonic()
        self._pace0: tuple[float, float] | None = None  # (time, fraction) at this session's first step
        self._stats = ""

    def start(self, info: RunInfo) -> None:
        self._wall0 = time.monotonic()
        self._pace0 = None
        if self.quiet:
            return
        plan = f"{info.steps} steps" if info.steps else f"{_fmt_duration(info.time_limit or 0)}"
        if info.steps and info.time_limit:
            plan += f" or {_fmt_duration(info.time_limit)}"
        if info.default_length:
            plan += " (the default; set --time, --steps or --epochs)"
        resumed = f", resuming at step {info.start_step}" if info.start_step else ""
        per_rank = f" per process x {info.processes} processes" if info.processes > 1 else ""
        threads = f"; {info.threads.describe()}" if info.threads is not None else ""
        self.console.print(
            f"training {info.parameters:,} parameters on {info.device}: "
            f"{info.train_tokens:,} train / {info.val_tokens:,} val tokens, vocab {info.vocab}, "
            f"batch {info.batch_size}{per_rank}; until {plan}{resumed}; checkpoints in {shown(info.out)}/"
            f"{threads}",
            soft_wrap=True,
            markup=False,
        )
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
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
            self._task = self._progress.add_task(f"step {info.start_step}", total=1.0, stats="")

    def eta(self, fraction: float) -> float | None:
        """Seconds left at this session's pace since its first step (start-up, the first step's
        warm-up and a resumed run's earlier part do not count)."""
        if self._pace0 is None:
            return None
        t0, f0 = self._pace0
        spent, done = time.monotonic() - t0, fraction - f0
        if done <= 0 or spent < 2:  # too early for a pace worth extrapolating
            return None
        return spent * (1 - fraction) / done

    def progress(self, report: StepReport) -> None:
        if self.quiet:
            return
        rate = report.chars_per_s or report.tok_per_s
        text = f"loss {report.loss:.3f} bpc {report.bpc:.3f} {rate / 1000:.1f}k chars/s"
        if report.bpt is not None and abs(report.bpt - report.bpc) > 1e-9:  # subwords: per token too
            text = text.replace(" bpc", f" bpt {report.bpt:.2f} bpc", 1)
        if report.skipped:
            text += f" skipped {report.skipped}"
        self._stats = text
        if self._pace0 is None:
            self._pace0 = (time.monotonic(), report.fraction)
        if self._progress is not None:  # the live line stays short enough for 80 columns
            self._progress.update(
                self._task, completed=report.fraction, description=f"step {report.step}", stats=text
            )
        elif time.monotonic() - self._last_log >= self.log_every:
            self._last_log = time.monotonic()
            total = f"/{report.total}" if report.total else ""
            eta = self.eta(report.fraction)
            self.console.print(
                f"step {report.step}{total} ({report.fraction:.0%}) {text} lr {report.lr:.2e} "
                f"elapsed {_fmt_duration(time.monotonic() - self._wall0)} "
                f"eta {_fmt_duration(eta) if eta is not None else '?'}",
                soft_wrap=True,
                markup=False,
            )

    def validating(self, step: int) -> None:
        if self._progress is not None:
            # The bar stays where training stopped; the stats say why it is not moving.
            self._progress.update(self._task, description=f"step {step}", stats="validating…")

    def evaluated(self, report: EvalReport) -> None:
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.update(self._task, description=f"step {report.step}", stats=self._stats)
        star = " [green](best)[/]" if report.is_best and not report.best_averaged else ""
        if report.averaged_bpc is not None:  # --average: the average's score beside the raw weights'
            star += f"; averaged weights {report.averaged_bpc:.4f}"
            star += " [green](best, kept in best/)[/]" if report.best_averaged else ""
        self.console.print(
            f"step {report.step}: val loss {report.loss:.4f}, val bpc {report.bpc:.4f}"
            + (
                f" (per character; {report.bpt:.4f} bits per token over {report.tokens:,} tokens)"
                if report.bpt is not None and abs(report.bpt - report.bpc) > 1e-9
                else ""
            )
            + star,
            markup=True,
            soft_wrap=True,  # one line per validation in logs, whatever its length
        )

    def sampled(self, report: SampleReport) -> None:
        if self.quiet:
            return
        # The model's text is shown literally (a Text, never markup), without control characters.
        from rich.text import Text

        body = report.text.translate(_SAMPLE_CONTROLS).rstrip("\n")
        self.console.print(Text(f"sample at step {report.step}:\n{body}", style="dim"), soft_wrap=True)

    def message(self, text: str) -> None:
        from rich.text import Text

        self.console.print(Text(shown(text), style="yellow"), soft_wrap=True)

    def stopped(self, step: int, elapsed: float, reason: str) -> None:
        self.message(reason)

    def finish(self, summary: RunSummary) -> None:
        self.close()
        val = summary.val
        val_text = f", val bpc {val['bpc']:.4f}" if val else ""
        best = summary.best_val_bpc
        best_text = f" (best {best:.4f})" if best is not None else ""
        wall = time.monotonic() - self._wall0
        total = f" ({_fmt_duration(summary.elapsed)} in all)" if summary.elapsed > wall + 1 else ""
        early = " (stopped early)" if summary.stopped_reason else ""
        self.console.print(
            f"done: {summary.step} steps in {_fmt_duration(wall)}{total}{early}{val_text}{best_text}; "
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
    name: str, url: str, console: Console | None = None
) -> Iterator[Callable[[int, int | None], None]]:
    """A progress callback ``(bytes so far, total or None)``: a live bar on a terminal, else a line
    at the start and one every 10 s."""
    from rich.markup import escape

    console = console or stderr_console()
    console.print(f"[dim]charnn:[/] fetching {escape(name)} from {escape(url)}", soft_wrap=True)
    if console.is_terminal:
        bar = bytes_bar(name, console, width=24)
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


class WorkProgress:
    """Progress through work of known size (eval, score, the surprisal page): a transient bar on
    an interactive terminal, shown once the work has taken ``delay`` seconds (quick work stays
    silent); else a plain line every ``log_every`` seconds with the share done, the time spent
    and left. ``clock`` is injectable for tests."""

    def __init__(
        self,
        label: str,
        unit: str = "tokens",
        console: Console | None = None,
        log_every: float = 10.0,
        delay: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console or stderr_console()
        self.label, self.unit, self.log_every, self.delay, self.clock = label, unit, log_every, delay, clock
        self.total, self.done = 0, 0
        self.live = self.console.is_interactive
        self._t0 = self._last = clock()
        self._bar: Progress | None = None
        self._task: Any = None
        self.note = ""  # shown after the count, e.g. the threads in use

    def start(self, total: int) -> None:
        self.total, self.done = max(1, total), 0
        self._t0 = self._last = self.clock()

    def advance(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if self.live:
            if self._bar is None and now - self._t0 >= self.delay:
                self._open_bar()
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done, total=self.total, stats=self.note)
        elif now - self._last >= self.log_every:
            self._last = now
            spent = now - self._t0
            share = min(1.0, self.done / self.total)
            left = _fmt_duration(spent * (1 - share) / share) if share > 0 else "?"
            note = f", {self.note}" if self.note else ""
            self.console.print(
                f"charnn: {shown(self.label)}: {share:.0%} ({self.done:,}/{self.total:,} {self.unit}{note}) "
                f"elapsed {_fmt_duration(spent)} eta {left}",
                soft_wrap=True,
                markup=False,
                highlight=False,
            )

    def _open_bar(self) -> None:
        from rich.markup import escape
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn(escape(self.label)),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn(self.unit),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.label, total=self.total, completed=self.done, stats=self.note)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def stdin_hint(what: str) -> None:
    """Say so when a command waits for text typed at a terminal (not piped in)."""
    try:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):
        interactive = False
    if interactive:
        end = "Ctrl-Z then Enter" if os.name == "nt" else "Ctrl-D"
        note(f"reading {what} from the terminal (stdin); end with {end}, or give FILES")
