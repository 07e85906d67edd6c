"""`charnn sample --interactive`: writing with the model at the keyboard.

A session is driven through a real pseudo-terminal (the only way to test what a person sees);
its commands and pick mode are also checked in-process against a scripted reader.
"""

from __future__ import annotations

import io
import os
import select
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from charnn.app import load_checkpoint
from charnn.config import SampleConfig
from charnn.interactive import Session, Writer, unescape

pty = pytest.importorskip("pty")  # POSIX only; Windows has no pseudo-terminals to test with


class Terminal:
    """A charnn process on a pseudo-terminal: type keys, wait for text on the screen."""

    def __init__(self, *args: str | os.PathLike[str], env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: charnn itself
            os.environ.update(env)
            os.execv(sys.executable, [sys.executable, "-m", "charnn", *map(str, args)])
        self.screen = ""

    def expect(self, text: str, timeout: float = 120) -> str:
        """Read until ``text`` is on the screen (after what was already matched)."""
        end = time.monotonic() + timeout
        while text not in self.screen:
            if time.monotonic() > end:
                raise AssertionError(f"{text!r} never appeared; the screen:\n{self.screen[-3000:]}")
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"{text!r}: the session ended; the screen:\n{self.screen[-3000:]}")
                self.screen += chunk.decode("utf-8", "replace").replace("\r", "")
        seen, self.screen = self.screen.split(text, 1)
        return seen

    def type(self, keys: str | bytes) -> None:
        os.write(self.fd, keys if isinstance(keys, bytes) else keys.encode())

    def end_with_ctrl_d(self, timeout: float = 60) -> int:
        """Press Ctrl-D until the session ends, as a person would press it again: readline drops
        an end-of-file typed in the moment between the prompt and its taking over the terminal."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.type(b"\x04")
            try:
                return self.wait(timeout=2)
            except AssertionError:
                continue
        os.kill(self.pid, 9)
        raise AssertionError("Ctrl-D never ended the session")

    def wait(self, timeout: float = 60) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:  # drain, so the child never blocks on a full terminal (never block here)
                try:
                    os.read(self.fd, 65536)
                except OSError:
                    pass
        raise AssertionError("the session did not end")


@pytest.fixture
def terminal(
    trained_run: Path, tmp_path: Path, cli_env: Callable[..., dict[str, str]]
) -> Callable[..., Terminal]:
    env = cli_env({"CHARNN_CACHE": str(tmp_path / "cache"), "TERM": "xterm"})
    return lambda *args: Terminal("sample", "-c", trained_run, "--interactive", *args, env=env)


def test_a_session_continues_typed_text_as_sample_would(
    terminal: Callable[..., Terminal], trained_run: Path, run_cli: Callable[..., object], tmp_path: Path
) -> None:
    greedy = run_cli("sample", "-c", trained_run, "--temp", "0", "-n", "30", "--prime", "The ")
    expected = greedy.stdout[len("The ") :].rstrip("\n")  # type: ignore[attr-defined]
    term = terminal("--temp", "0", "-n", "30")
    term.expect("> ")
    term.type("The \r")
    assert expected in term.expect("\n> ")
    term.type(":show\r")
    term.expect("document 34 characters")  # what was typed plus the 30 continued
    term.expect("> ")  # readline drops a Ctrl-D typed before it reads: wait for the prompt
    assert term.end_with_ctrl_d() == 0  # Ctrl-D ends the session
    # Line history is kept in the cache directory for the next session (readline's up-arrow).
    assert "The " in (tmp_path / "cache" / "interactive_history").read_text()


def test_ctrl_c_stops_a_continuation_not_the_session(terminal: Callable[..., Terminal]) -> None:
    term = terminal("-n", "10000000", "--seed", "3")  # a continuation that would not end by itself
    term.expect("> ")
    term.type("A\r")
    time.sleep(1.0)
    term.type(b"\x03")
    term.expect("[stopped]")
    term.type(":show\r")
    term.expect("temp 1")  # the session is still there
    term.type(":quit\r")
    assert term.wait() == 0


def test_pick_mode_offers_the_likeliest_and_takes_the_one_chosen(terminal: Callable[..., Terminal]) -> None:
    term = terminal("--seed", "1")
    term.expect("> ")
    term.type(":pick 3\r")
    table = term.expect("pick> ")
    assert table.count("%") == 3
    first = table.split(" 1 ", 1)[1].split(" ", 1)[0]  # e.g. 'e'
    term.type("1\r")
    term.expect("pick> ")
    term.type(":show\r")
    term.expect("document 1 characters")
    assert first.startswith("'")
    term.expect("pick> ")
    assert term.end_with_ctrl_d() == 0  # Ctrl-D ends the session


def test_without_a_terminal_it_points_to_prompts(trained_run: Path, run_cli: Callable[..., object]) -> None:
    proc = run_cli("sample", "-c", trained_run, "--interactive", input="ROMEO:\n")
    assert proc.returncode == 2  # type: ignore[attr-defined]
    assert "needs a terminal" in proc.stderr and "--prompts" in proc.stderr  # type: ignore[attr-defined]
    assert proc.stdout == ""  # type: ignore[attr-defined]


@pytest.mark.parametrize("extra", [["--json"], ["--beam", "3"], ["--num-samples", "2"], ["--prompts", "-"]])
def test_options_without_meaning_at_the_keyboard_are_refused(
    trained_run: Path, run_cli: Callable[..., object], extra: list[str]
) -> None:
    proc = run_cli("sample", "-c", trained_run, "--interactive", *extra)
    assert proc.returncode == 2  # type: ignore[attr-defined]
    assert "--interactive cannot be combined with " + extra[0] in proc.stderr  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- in-process


def _session(trained_run: Path, lines: list[str], **config: object) -> tuple[Session, io.StringIO, list[str]]:
    out, said = io.StringIO(), []
    writer = Writer(load_checkpoint(str(trained_run)), SampleConfig(**config), out, echo=True)  # type: ignore[arg-type]
    feed = iter(lines)

    def read(_prompt: str) -> str:
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    session = Session(writer, read, said.append)
    session.run()
    return session, out, said


def test_commands_change_the_settings_and_bad_values_keep_the_session(trained_run: Path) -> None:
    session, _, said = _session(
        trained_run,
        [
            ":temp 0.5",
            ":length 7",
            ":topk 5",
            ":topp 0.9",
            ":seed 42",
            ":temp -1",
            ":length 2.5",
            ":topk x",
            ":temp off",
        ],
    )
    c = session.writer.config
    assert (c.temperature, c.length, c.top_k, c.top_p, c.seed) == (0.5, 7, 5, 0.9, 42)
    errors = [line for line in said if line.startswith("charnn: ")]
    assert len(errors) == 4, said
    assert "--temp" in errors[0] and "whole number" in errors[1] and "not a number" in errors[2]


def test_the_document_holds_typed_and_continued_text(trained_run: Path) -> None:
    session, out, _ = _session(trained_run, ["::colon\\nfirst", "", ":new", "The "], length=12, seed=5)
    # `::` types a leading colon; \n is a newline; an empty line continues; :new starts over.
    assert session.writer.document.startswith("The ") and len(session.writer.document) == 4 + 12
    assert out.getvalue().startswith(":colon\nfirst") and len(out.getvalue()) > len(":colon\nfirst") + 24


def test_the_same_seed_gives_the_same_session(trained_run: Path) -> None:
    lines = ["Once ", "", ":pick 4", "", "2", ""]
    first = _session(trained_run, lines, seed=9, length=20)[0].writer.document
    second = _session(trained_run, lines, seed=9, length=20)[0].writer.document
    assert first == second and len(first) == 5 + 40 + 3


def test_unescape() -> None:
    assert unescape(r"a\nb\tc\\d\x") == "a\nb\tc\\d\\x"
