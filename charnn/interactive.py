"""``charnn sample --interactive``: writing with a model at the keyboard (no torch import).

One document grows as the session goes on::

    > ROMEO:                     typed text is added to the document ...
    ROMEO: What say'st thou ...  ... and the model continues it on stdout, streaming
    >                            an empty line: the model continues further
    > :temp 0.5                  short commands change the settings (:help lists them)
    > :pick 5                    pick mode: the 5 likeliest next characters or tokens
     1 ' ' 41.2%  2 'm' 12.0% ...  type a number to take one, Enter to let the model choose
    > :new                       start a new document

The model's text goes to stdout; prompts, tables and messages go to stderr. What you type or pick
is on the screen already, so it is written to stdout only when stdout is not a terminal (then
stdout receives the whole document, e.g. ``charnn sample -i | tee draft.txt``). Ctrl-C stops a
continuation (or clears the line being typed), not the session; Ctrl-D ends the session.
Every continuation re-reads the document's last ``CONTEXT_CHARS`` characters, so what the
model sees is exactly the text on the screen, however it was made.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from charnn.config import SampleConfig
from charnn.console import shown
from charnn.constraints import StreamState, TokenRules
from charnn.errors import CharnnError, ConfigError
from charnn.sampling import filter_logits, generate

if TYPE_CHECKING:
    from charnn.checkpoint import Checkpoint

CONTEXT_CHARS = 4096  # a continuation is primed from this much of the document's tail
HISTORY_LINES = 1000

HELP = """\
text          add the text to the document; the model continues it (\\n is a newline)
(empty line)  continue the document
::text        add text that starts with ':'
:temp F       temperature (0 = greedy)         :length N   characters per continuation
:topk N|off   keep the N likeliest             :topp F|off nucleus sampling
:seed N|new   reseed the draws                 :pick N|off pick mode: choose among the N likeliest
:new          start a new document             :show       settings and document length
:help         this list                        :quit       end (or Ctrl-D)
Ctrl-C stops a continuation."""


@dataclass(frozen=True)
class Choice:
    """One candidate of pick mode: a token, the text it adds and the model's probability."""

    token: int
    text: str
    prob: float


class Writer:
    """The model side of a session: the document and how to continue it."""

    def __init__(self, ckpt: Checkpoint, config: SampleConfig, out: TextIO, echo: bool) -> None:
        """``echo``: also write typed and picked text to ``out`` (when it is not the screen)."""
        from charnn.stepper import FastStepper

        self.tokenizer = ckpt.tokenizer
        self.stepper = FastStepper(ckpt.config, ckpt.weights)
        self.rules = TokenRules.for_tokenizer(self.tokenizer)
        self.config, self.out, self.echo = config, out, echo
        self.rng = np.random.default_rng(config.seed)
        self.document = ""

    def reseed(self, seed: int | None) -> None:
        self.config = dataclasses.replace(self.config, seed=seed)
        self.rng = np.random.default_rng(seed)

    def add(self, text: str) -> None:
        """Typed text joins the document."""
        self.tokenizer.encode(text)  # refuse what the model cannot read, before it is added
        self._write(text, self.echo)

    def _write(self, piece: str, show: bool = True) -> None:
        self.document += piece
        if show:
            self.out.write(piece)
            self.out.flush()

    def last_line(self, width: int = 72) -> str:
        """The end of the document's last line, for pick mode's context."""
        return self.document.rsplit("\n", 1)[-1][-width:]

    def _context(self) -> np.ndarray:
        tail = self.document[-CONTEXT_CHARS:]
        return np.asarray(self.tokenizer.encode(tail) if tail else self.tokenizer.start_ids())

    def continue_(self) -> None:
        """Stream ``config.length`` more characters; Ctrl-C leaves what was shown in the document."""
        generate(
            self.stepper,
            self._context(),
            self.config,
            self.tokenizer,
            on_text=lambda _i, piece: self._write(piece),
            rng=self.rng,
            rules=self.rules,
            heal=bool(self.document),
        )

    def choices(self, n: int) -> list[Choice]:
        """The ``n`` likeliest next tokens the tokenizer's rules allow, with raw probabilities."""
        logits, _ = self.stepper.prime(self._context()[None, :])  # (1, V)
        row = logits[0].astype(np.float64)
        allowed = self.rules.mask(StreamState(), 1 << 30)
        probs = np.exp(row - row.max())
        probs /= probs.sum()
        order = [int(i) for i in np.argsort(-np.where(allowed, probs, -1.0)) if allowed[i]][:n]
        return [Choice(i, self._piece(i), float(probs[i])) for i in order]

    def model_choice(self) -> Choice:
        """One token drawn with the session's temperature, top-k and top-p (greedy at 0)."""
        logits, _ = self.stepper.prime(self._context()[None, :])
        row = np.where(self.rules.mask(StreamState(), 1 << 30), logits[0], -np.inf)
        c = self.config
        if c.temp == 0:
            token = int(row.argmax())
        else:
            weights = np.exp(filter_logits(row[None, :] - row.max(), c.temp, c.top_k, c.top_p)[0])
            cumulative = np.cumsum(weights, dtype=np.float64)
            token = int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right"))
            token = min(token, len(row) - 1)
        return Choice(token, self._piece(token), 0.0)

    def take(self, choice: Choice) -> None:
        self._write(choice.text, self.echo)

    def _piece(self, token: int) -> str:
        decoder = self.tokenizer.stream_decoder()
        return decoder.feed(token) + decoder.flush()


def unescape(text: str) -> str:
    """``\\n``, ``\\t`` and ``\\\\`` in typed text; anything else is kept as typed."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


class Session:
    """The loop: read a line, act on it, until Ctrl-D or :quit."""

    def __init__(
        self,
        writer: Writer,
        read: Callable[[str], str],
        say: Callable[[str], None],
        again: Callable[[str, bool], None] = lambda _text, _typed: None,
    ) -> None:
        """``again(text, typed)`` puts text on the screen (erasing the line it was typed on) so that
        the continuation follows it; a no-op when stdout is not the screen."""
        self.writer, self.read, self.say, self.again = writer, read, say, again
        self.pick = 0  # 0: generation mode; N: pick mode with N candidates
        self._choices: list[Choice] = []

    def run(self, first: str = "") -> None:
        """The loop; ``first`` (the --prime) is handled as if typed."""
        self.say("charnn interactive: type text and Enter; :help lists the commands, Ctrl-D ends.")
        pending = first or None
        while True:
            try:
                if pending is None and self.pick:
                    self._show_choices()
                typed, line = pending is None, pending or ""
                if typed:
                    line = self.read("pick> " if self.pick else "> ")
                pending = None
            except KeyboardInterrupt:
                self.say("")
                continue
            except EOFError:
                self.say("")
                return
            try:
                if not self.handle(line, typed):
                    return
            except KeyboardInterrupt:
                self.say("\n[stopped]")
            except CharnnError as exc:  # a bad setting or untypable text: say so, keep the session
                self.say(f"charnn: {exc}")

    def handle(self, line: str, typed: bool = True) -> bool:
        """Act on one line (``typed``: at the prompt, not --prime); False ends the session."""
        if line.startswith(":") and not line.startswith("::"):
            return self._command(line[1:].split())
        text = unescape(line[1:] if line.startswith("::") else line)
        if self.pick:
            return self._pick(text)
        if text:
            self.writer.add(text)
        self.again(text, typed)  # an empty line: the prompt is erased and the model goes on
        self.writer.continue_()
        self.say("")
        return True

    def _pick(self, text: str) -> bool:
        if text.isdigit() and self._choices and 1 <= int(text) <= len(self._choices):
            self.writer.take(self._choices[int(text) - 1])
        elif text:
            self.writer.add(text)
        else:
            self.writer.take(self.writer.model_choice())
        return True

    def _show_choices(self) -> None:
        self._choices = self.writer.choices(self.pick)
        cells = [f"{k:>2} {c.text!r} {100 * c.prob:.1f}%" for k, c in enumerate(self._choices, 1)]
        self.say(f"…{shown(self.writer.last_line())}▏\n" + "   ".join(cells))

    def _command(self, words: list[str]) -> bool:
        name, args = (words[0].lower(), words[1:]) if words else ("help", [])
        if name in ("quit", "q", "exit"):
            return False
        if name == "new":
            self.writer.document = ""
            self.writer.out.write("\n")
            self.say("[new document]")
        elif name == "show":
            c = self.writer.config
            self.say(
                f"temp {c.temp:g}  length {c.length}  top-k {c.top_k or 'off'}  "
                f"top-p {c.top_p or 'off'}  seed {c.seed}  pick {self.pick or 'off'}  "
                f"document {len(self.writer.document)} characters"
            )
        elif name == "pick":
            self.pick = 0 if args[:1] == ["off"] else int(_number(args, name, default=5, lo=1, hi=50))
        elif name == "seed":
            self.writer.reseed(None if args[:1] == ["new"] else int(_number(args, name, lo=0, hi=2**63 - 1)))
        elif name in _SETTINGS:
            field, kind = _SETTINGS[name]
            off = args[:1] == ["off"]
            if off and field not in ("top_k", "top_p"):
                raise ConfigError(f":{name} cannot be off (only :topk and :topp can)")
            raw = None if off else _number(args, name)
            if kind is int and raw is not None and not isinstance(raw, int):
                raise ConfigError(f":{name} needs a whole number")
            changes: dict[str, Any] = {field: None if raw is None else kind(raw)}
            # SampleConfig validates the new value as it does for the command-line option.
            self.writer.config = dataclasses.replace(self.writer.config, **changes)
        else:
            self.say(HELP)
        return True


_SETTINGS: dict[str, tuple[str, type]] = {
    "temp": ("temperature", float),
    "t": ("temperature", float),
    "length": ("length", int),
    "len": ("length", int),
    "topk": ("top_k", int),
    "topp": ("top_p", float),
}


def _number(
    args: list[str], name: str, default: float | None = None, lo: float | None = None, hi: float | None = None
) -> float:
    """The command's one numeric argument (an int stays exact: its text is checked for int() below)."""
    if not args:
        if default is None:
            raise ConfigError(f":{name} needs a value")
        return default
    try:
        value = int(args[0]) if args[0].lstrip("-").isdigit() else float(args[0])
    except ValueError:
        raise ConfigError(f":{name}: not a number: {args[0]!r}") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f":{name} must be in [{lo}, {hi}]")
    return value


def _history_file() -> Path | None:
    from charnn.corpus_cache import default_cache_dir

    try:
        return default_cache_dir() / "interactive_history"
    except (OSError, RuntimeError):  # no home directory
        return None


def _line_reader(say: Callable[[str], None]) -> tuple[Callable[[str], str], Callable[[], None]]:
    """input() with line editing and a history file when readline exists (not on stock Windows)."""
    try:
        import readline
    except ImportError:
        readline = None  # type: ignore[assignment]
    path = _history_file()
    if readline is not None and path is not None:
        try:
            readline.read_history_file(path)
        except OSError:
            pass  # first session, or an unreadable file: start without history
        readline.set_history_length(HISTORY_LINES)

    def read(prompt: str) -> str:
        sys.stderr.write(prompt)
        sys.stderr.flush()
        return input()

    def save() -> None:
        if readline is not None and path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                readline.write_history_file(path)
            except OSError:
                say("charnn: could not save the input history (continuing)")

    return read, save


def run_interactive(checkpoint: str, config: SampleConfig, prime: str) -> None:
    """``charnn sample --interactive``: refuse without a terminal, then run the session."""
    if not sys.stdin.isatty():
        raise ConfigError(
            "--interactive needs a terminal on stdin; to continue many primes from a file, use --prompts FILE"
        )
    from charnn.app import load_checkpoint

    screen = sys.stdout.isatty() and sys.stderr.isatty()
    writer = Writer(load_checkpoint(checkpoint), config, sys.stdout, echo=not sys.stdout.isatty())

    def say(text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def again(text: str, typed: bool) -> None:
        """Erase the typed line (prompt included: it may have wrapped) and write the text back
        without its newline, so that the continuation flows on from it."""
        if typed:
            rows = (len("> ") + len(text)) // max(shutil.get_terminal_size().columns, 1) + 1
            sys.stderr.write("\x1b[1A\x1b[2K" * rows + "\r")
        sys.stderr.write(text)
        sys.stderr.flush()

    read, save = _line_reader(say)
    try:
        Session(writer, read, say, again if screen else lambda _text, _typed: None).run(prime)
    finally:
        save()
