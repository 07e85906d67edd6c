"""charnn from Python: the same results, options and errors as the command line.

The first tests run a fresh interpreter, as a user's script or notebook would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import charnn
from charnn.errors import CheckpointError, ConfigError, DataError, Interrupted

RunCli = Callable[..., subprocess.CompletedProcess[str]]


def _python(code: str, cli_env: Callable[..., dict[str, str]], timeout: float = 120) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_load_and_sample_from_a_fresh_interpreter_match_the_cli_without_torch(
    trained_run: Path, run_cli: RunCli, cli_env: Callable[..., dict[str, str]]
) -> None:
    code = (
        "import json, sys, charnn\n"
        f"m = charnn.load({str(trained_run)!r})\n"
        "text = m.sample('Th', length=120, temperature=0.9, top_k=5, seed=4)\n"
        "streamed = ''.join(m.stream('Th', length=120, temperature=0.9, top_k=5, seed=4))\n"
        "print(json.dumps([text, streamed, 'torch' in sys.modules]))\n"
    )
    text, streamed, torch_loaded = json.loads(_python(code, cli_env))
    cli = run_cli(
        "sample", "-c", trained_run, "--prime", "Th", "-n", "120", "-t", "0.9", "--top-k", "5", "--seed", "4"
    )
    assert text == cli.stdout  # byte for byte (a pipe gets no closing newline)
    assert streamed == text[len("Th") :]
    assert not torch_loaded


def test_import_charnn_is_cheap(cli_env: Callable[..., dict[str, str]]) -> None:
    out = _python(
        "import sys, charnn; charnn.load; print('torch' in sys.modules, 'rich' in sys.modules)", cli_env
    )
    assert out.split() == ["False", "False"]


def test_stream_stops_when_the_reader_leaves(trained_run: Path) -> None:
    model = charnn.load(trained_run)
    start = time.monotonic()
    for i, _piece in enumerate(model.stream(length=10**9, seed=1)):
        if i == 50:
            break
    assert time.monotonic() - start < 30  # the endless generation ended with the loop


def test_beam_and_greedy_from_python(trained_run: Path, run_cli: RunCli) -> None:
    model = charnn.load(trained_run)
    beam = model.sample("A", length=30, beam=3)
    assert beam == run_cli("sample", "-c", trained_run, "--prime", "A", "-n", "30", "--beam", "3").stdout
    assert model.sample("A", length=30, temperature=0) == "".join(
        ["A", *model.stream("A", length=30, temperature=0)]
    )


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m: m.sample(tempreature=0.5), TypeError, "unknown sampling option(s): tempreature"),
        (lambda m: m.sample(temperature=-1), ConfigError, "--temp"),
        (lambda m: m.sample(beam=3, temperature=0.5), ConfigError, "deterministic search"),
        (lambda m: m.sample(num_samples=2), ConfigError, "once per sample"),
        (lambda m: m.sample("\x00\x01 never seen"), DataError, "prime"),
        (lambda m: m.score(""), ConfigError, "empty"),
        (lambda m: m.evaluate(), ConfigError, "at least one file"),
        (lambda m: m.evaluate("/nonexistent/held-out.txt"), DataError, "held-out.txt"),
    ],
)
def test_bad_calls_raise_the_typed_errors_the_cli_maps_to_exit_codes(
    trained_run: Path, call: Callable[[Any], Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=None) as info:
        call(charnn.load(trained_run))
    assert message in str(info.value)


def test_load_refuses_what_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError):
        charnn.load(tmp_path)


def test_score_and_evaluate_give_the_cli_numbers(trained_run: Path, run_cli: RunCli, tmp_path: Path) -> None:
    model = charnn.load(trained_run)
    text = "the cat sat on the mat\nand the dog"
    path = tmp_path / "held.txt"
    path.write_text(text)
    cli = json.loads(run_cli("score", "-c", trained_run, "--whole", "--json", path).stdout)
    score = model.score(text)
    assert (score.chars, score.tokens) == (cli["chars"], cli["tokens"])
    assert score.logprob == pytest.approx(cli["logprob"], abs=1e-9) and score.bpc == pytest.approx(cli["bpc"])
    row = json.loads(run_cli("eval", "-c", trained_run, "--json", path).stdout)
    got = model.evaluate(path)
    assert (got.bpc, got.loss, got.chars) == (row["bpc"], row["loss"], row["chars"])


def test_train_takes_the_cli_options_by_flag_name(corpus_file: Path, tmp_path: Path) -> None:
    options = dict(hidden=16, layers=1, embed=8, steps=12, seq_len=16, batch_size=4, seed=3)
    run = charnn.train(corpus_file, out=tmp_path / "run", **options)
    assert run.best.checkpoint.config.hidden == 16
    kinds = [row.KIND for row in run.history]
    assert kinds[0] == "start" and "end" in kinds
    again = charnn.train(corpus_file, out=tmp_path / "again", **options)
    assert again.latest.sample("a", length=40, seed=1) == run.latest.sample("a", length=40, seed=1)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"hiden": 16}, TypeError, "unknown option 'hiden'"),
        ({"hidden": 0}, ConfigError, "--hidden"),
        ({"time": "soon"}, ConfigError, "--time"),
        ({"cell": "transformer"}, ConfigError, "transformer"),
    ],
)
def test_train_refuses_bad_options_like_the_cli(
    corpus_file: Path, tmp_path: Path, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        charnn.train(corpus_file, out=tmp_path / "run", **options)
    assert message in str(info.value)
    assert not (tmp_path / "run" / "latest").exists()


def test_ctrl_c_stops_training_from_python_and_keeps_the_run(
    corpus_file: Path, tmp_path: Path, cli_env: Callable[..., dict[str, str]]
) -> None:
    out = tmp_path / "run"
    code = (
        "import charnn\n"
        "from charnn.errors import Interrupted\n"
        "try:\n"
        f"    charnn.train({str(corpus_file)!r}, out={str(out)!r}, hidden=16, layers=1, embed=8, "
        "steps=10**7, seq_len=16, batch_size=4, sample_every=0)\n"
        "except Interrupted as exc:\n"
        "    print('interrupted', exc.exit_code)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env()
    )
    deadline = time.monotonic() + 90
    # Training has begun once a progress row is written (a signal before the first step stops
    # at step 0: nothing trained is nothing to keep).
    while not (out / "metrics.jsonl").exists() or '"progress"' not in (out / "metrics.jsonl").read_text():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=90)
    assert stdout.split() == ["interrupted", "130"], stderr
    assert charnn.Run(out).latest.checkpoint.meta.step > 0
    assert Interrupted.__mro__[1].__name__ == "CharnnError"
