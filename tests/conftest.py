"""Shared fixtures for charnn's tests: a generated corpus, a CLI runner, a tiny trained run.

Everything is hermetic: corpora are generated text written under pytest's tmp
directories (no corpus files live in the repository), models are tiny, the
device is the CPU, and no test depends on the current directory.

Fixtures (see each docstring):

``corpus_text``      session  the generated training text (str, ~9 KB of English-like lines)
``corpus_file``      session  that text written to a file (Path)
``run_cli``          function call ``run_cli("train", ...)`` -> CompletedProcess: the CLI's ``main`` run in
                              this process (click's CliRunner isolation: stdin, stdout, stderr, env, cwd)
``run_process``      function the same in a real subprocess (``python -m charnn``), for what needs a
                              process: signals, pipes, closed streams, imports, exit on kill
``cli_command``      function ``cli_command("train", ...)`` -> argv list, for ``subprocess.Popen``
``cli_env``          function the environment the CLI subprocesses run with (dict)
``cli_inprocess``    function call ``cli_inprocess("info", ...)`` -> CompletedProcess, via ``charnn.cli.main``
                              in this process (no torch start-up cost; use for error paths)
``trained_run``      session  a run directory (latest/ + best/) trained with ``TINY_TRAIN_ARGS``;
                              READ-ONLY for tests - copy it (``trained_run_copy``) to modify it
``trained_run_copy`` function a private copy of ``trained_run`` under tmp_path
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# One intra-op thread for in-process torch work: on a small shared machine OpenMP's spinning
# threads make tiny models ~10x slower, not faster. Set before torch is first imported; a value
# already in the environment wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# The corpus cache (charnn.corpus_cache) goes to a private directory, never the user's ~/.cache;
# subprocesses inherit it through the environment.
_CACHE = tempfile.mkdtemp(prefix="charnn-test-cache-")
os.environ["CHARNN_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)

# A model small enough that a CLI training run takes a second or two on a laptop CPU.
TINY_MODEL_ARGS: tuple[str, ...] = ("--hidden", "32", "--embed", "16", "--layers", "1")
TINY_TRAIN_ARGS: tuple[str, ...] = (
    *TINY_MODEL_ARGS,
    "--steps",
    "30",
    "--seq-len",
    "32",
    "--batch-size",
    "8",
    "--eval-every",
    "15",
    "--seed",
    "1",
    "--device",
    "cpu",
)

# A run that only ends when it is stopped (signals, kills, a second writer), saving only when told.
LONG_RUN: tuple[str, ...] = (
    *TINY_MODEL_ARGS,
    "--steps",
    "1000000",
    "--seq-len",
    "16",
    "--batch-size",
    "4",
    "--eval-every",
    "1000000",
    "--save-every",
    "1000000",
    "--device",
    "cpu",
)

_WORDS = (
    "the a river stone light quick brown fox jumps over lazy dog mountain water tree bird song night "
    "day old new small great city road home under with from into about window garden letter morning "
    "evening silver quiet winter summer friend journey story paper candle harbour bridge"
).split()


class ScriptStepper:
    """A stepper whose logits always favour the next id of a fixed script by ``strength`` nats
    (greedy replays it), in numpy: decoding tests without a model."""

    def __init__(self, script: list[int], vocab: int, strength: float = 10.0) -> None:
        self.script, self.vocab_size, self.strength = script, vocab, strength

    def _logits(self, pos: Any) -> Any:
        import numpy as np

        out = np.zeros((len(pos), self.vocab_size), dtype=np.float32)
        out[np.arange(len(pos)), [self.script[min(int(p), len(self.script) - 1)] for p in pos]] = (
            self.strength
        )
        return out

    def prime(self, ids: Any, state: object = None) -> tuple[Any, Any]:
        import numpy as np

        pos = np.zeros(ids.shape[0])
        return self._logits(pos), pos

    def step(self, ids: object, state: Any) -> tuple[Any, Any]:
        return self._logits(state + 1), state + 1

    def reorder(self, state: Any, index: object) -> Any:
        import numpy as np

        return state[np.asarray(index)]


def make_text(lines: int = 200, seed: int = 0) -> str:
    """Deterministic English-like lines (capitalised, punctuated) for training and evaluation."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 12))]
        out.append(" ".join(words).capitalize() + rng.choice(".!?,;:"))
    return "\n".join(out) + "\n"


def _cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CHARNN_DEBUG", None)  # errors must be the user's one-liners, not tracebacks
    # No colour codes in captured output; one intra-op thread so parallel test processes on a
    # small machine do not fight (and so timings of repeated runs are comparable).
    env.update(NO_COLOR="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.update(extra or {})
    return env


def _cli_command(*args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "charnn", *map(str, args)]


def _run_cli(
    *args: str | os.PathLike[str],
    input: str | bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m charnn ARGS`` like a user would; text mode, stdout/stderr captured."""
    if isinstance(input, bytes):
        input = input.decode("utf-8", "surrogateescape")
    return subprocess.run(
        _cli_command(*args),
        input=input,
        capture_output=True,
        text=True,
        env=_cli_env(env),
        timeout=timeout,
        cwd=cwd,
    )


@pytest.fixture(scope="session")
def corpus_text() -> str:
    """The generated training text (~9 KB)."""
    return make_text()


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory, corpus_text: str) -> Path:
    """``corpus_text`` written to ``<session tmp>/corpus/corpus.txt``; do not modify it."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(corpus_text, encoding="utf-8")
    return path


def _run_inprocess(
    *args: str | os.PathLike[str],
    input: str | bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``charnn ARGS`` through ``charnn.cli.main`` in this process, isolated like a subprocess
    (own stdin/stdout/stderr, ``NO_COLOR=1``, ``CHARNN_DEBUG`` unset, ``cwd``); no torch start-up."""
    from click.testing import CliRunner

    from charnn.cli import main

    argv = [str(a) for a in args]
    here = os.getcwd()
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        isolation = CliRunner().isolation(
            input=input, env={"CHARNN_DEBUG": None, "NO_COLOR": "1", **(env or {})}
        )
        with isolation as (out, err, _):
            try:
                main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(here)
    decode = lambda b: b.getvalue().decode("utf-8", "replace")  # noqa: E731
    return subprocess.CompletedProcess(["charnn", *argv], code, decode(out), decode(err))


@pytest.fixture
def run_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_cli(*args, input=None, env=None, timeout=120, cwd=None)`` runs the CLI in this process,
    isolated like a subprocess, and returns a CompletedProcess (see ``_run_inprocess``)."""
    return _run_inprocess


@pytest.fixture
def run_process() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_process(*args, ...)``: like ``run_cli`` but a real ``python -m charnn`` subprocess."""
    return _run_cli


@pytest.fixture
def cli_command() -> Callable[..., list[str]]:
    """``cli_command(*args)`` -> the argv that runs the CLI, for tests that need ``Popen``."""
    return _cli_command


@pytest.fixture
def cli_env() -> Callable[..., dict[str, str]]:
    """``cli_env(extra=None)`` -> the environment ``run_cli`` uses, for ``Popen``."""
    return _cli_env


@pytest.fixture
def cli_inprocess(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cli_inprocess(*args)`` runs ``charnn.cli.main`` here (the same parsing, error mapping and
    exit codes as the subprocess) and returns a CompletedProcess with the captured output.
    ~100x cheaper than ``run_cli``; a subprocess is still the real thing for signals and crashes."""
    from charnn.cli import main

    def call(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
        monkeypatch.delenv("CHARNN_DEBUG", raising=False)
        capsys.readouterr()
        argv = [str(a) for a in args]
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["charnn", *argv], code, out, err)

    return call


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> Path:
    """A finished tiny run (``TINY_TRAIN_ARGS`` on ``corpus_file``): ``latest/`` and ``best/``.
    Shared by the whole session: never modify it, use ``trained_run_copy``."""
    out = tmp_path_factory.mktemp("trained") / "run"
    proc = _run_inprocess("train", corpus_file, "--out", out, *TINY_TRAIN_ARGS)
    assert proc.returncode == 0, proc.stderr
    assert (out / "latest" / "meta.json").is_file() and (out / "best" / "meta.json").is_file()
    return out


@pytest.fixture
def trained_run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A private, modifiable copy of ``trained_run`` at ``tmp_path / "run"``."""
    dest = tmp_path / "run"
    shutil.copytree(trained_run, dest)
    return dest
