"""``charnn sample`` without torch: a real process must never import torch for everyday
sampling (char and SentencePiece models, every decoding mode, ordinary primes), and the
sampling-related bad input of issue 9 (prime files taken as bytes, bounded; tiny or
non-finite numbers) gets exact text or one error line and its exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TINY_MODEL_ARGS

RunCli = Callable[..., subprocess.CompletedProcess]

# Runs the CLI in a real process and reports, at exit, whether torch was ever imported.
_HOOK = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write('\\ntorch-imported=%s\\n' % ('torch' in sys.modules)))\n"
    "from charnn.cli import main\n"
    "main(sys.argv[1:])\n"
)


def sample_process(
    *args: str | os.PathLike[str], stdin: bytes | None = None, setup: str = ""
) -> subprocess.CompletedProcess:
    """``charnn sample ARGS`` in a real process (``setup``: Python run before the CLI)."""
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("CHARNN_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-c", setup + _HOOK, "sample", *map(str, args)],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=120,
    )


def torch_imported(proc: subprocess.CompletedProcess) -> bool:
    marker = [line for line in proc.stderr.decode().splitlines() if line.startswith("torch-imported=")]
    assert len(marker) == 1, proc.stderr
    return marker[0] == "torch-imported=True"


@pytest.fixture(scope="module")
def sp_run(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> Path:
    """A tiny run with a SentencePiece tokenizer."""
    out = tmp_path_factory.mktemp("sp") / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "charnn",
            "train",
            str(corpus_file),
            "--out",
            str(out),
            "--tokenizer",
            "sentencepiece",
            "--vocab-size",
            "400",
            *TINY_MODEL_ARGS,
            "--steps",
            "3",
            "--seq-len",
            "16",
            "--batch-size",
            "4",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    return out


MODES = [
    ("--seed", "1", "--prime", "The river ", "--length", "40"),
    ("--seed", "2", "--temp", "0.7", "--top-k", "5", "--top-p", "0.9", "-k", "3", "--stop", "e", "--json"),
    ("--beam", "3", "-k", "2", "--length", "12", "--prime", "A quiet"),
    ("--temp", "0", "--length", "30", "--stop", ".", "--stop", "!"),
]


@pytest.mark.parametrize("args", MODES, ids=["plain", "filters-json-k", "beam", "greedy-stops"])
def test_sample_never_imports_torch_for_a_char_model(trained_run: Path, args: tuple[str, ...]) -> None:
    proc = sample_process("-c", trained_run, *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout
    assert not torch_imported(proc)


def test_sample_never_imports_torch_for_a_sentencepiece_model_or_a_prime_file(
    sp_run: Path, tmp_path: Path
) -> None:
    prime = tmp_path / "prime.txt"
    prime.write_bytes(("The quiet river " * 200).encode())  # 3.2 KB: an ordinary prime
    for args in (
        ("--seed", "3", "--prime", "The quiet", "--length", "20", "--json"),
        ("--beam", "2", "--length", "5", "--prime-file", prime),
    ):
        proc = sample_process("-c", sp_run, *args)
        assert proc.returncode == 0, proc.stderr
        assert not torch_imported(proc)


def test_the_hook_sees_torch_when_it_is_imported(trained_run: Path) -> None:
    """The check above can fail: a prime past TORCH_PRIME_MIN tokens does import torch (the
    threshold is lowered here to keep the test fast), and samples the same text."""
    text = ("The river " * 30).encode()
    args = ("-c", trained_run, "--prime-file", "-", "--length", "30", "--seed", "1", "--json")
    big = sample_process(*args, stdin=text, setup="import charnn.routing as t; t.TORCH_PRIME_MIN = 100\n")
    assert big.returncode == 0, big.stderr
    assert torch_imported(big)
    small = sample_process(*args, stdin=text)
    assert not torch_imported(small)
    a, b = json.loads(big.stdout), json.loads(small.stdout)
    assert a["prime"] == text.decode() and a["text"] == b["text"]
    assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-4)


# ---------------------------------------------------------------------------- prime files


def test_prime_file_is_taken_byte_for_byte(trained_run: Path, sp_run: Path, tmp_path: Path) -> None:
    prime = tmp_path / "crlf.txt"
    prime.write_bytes(b"The river\r\nA stone\r\n")
    proc = sample_process("-c", sp_run, "--prime-file", prime, "--length", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"The river\r\nA stone\r\n"  # CRLF kept, nothing added on a pipe
    # A character model that never saw a CR says so (it used to be dropped silently).
    proc = sample_process("-c", trained_run, "--prime-file", prime, "--length", "0")
    assert proc.returncode == 3
    message = b": 1 character(s) not in the model's vocabulary: '\\r'"
    assert b"--prime-file " + bytes(prime) + message in proc.stderr


def test_prime_file_with_invalid_utf8(cli_inprocess, trained_run: Path, tmp_path: Path) -> None:
    prime = tmp_path / "bad.txt"
    prime.write_bytes(b"The r\xffiver")
    res = cli_inprocess("sample", "-c", trained_run, "--prime-file", prime, "--length", "0")
    assert res.returncode == 3
    assert "bad.txt: not valid UTF-8 at byte offset 5" in res.stderr and "Traceback" not in res.stderr
    res = cli_inprocess(
        "sample", "-c", trained_run, "--prime-file", prime, "--length", "0", "--encoding-errors", "ignore"
    )
    assert (res.returncode, res.stdout) == (0, "The river")


def test_prime_file_reading_is_bounded(
    cli_inprocess, trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.path.exists("/dev/zero"):  # an endless device: refused at its first chunk, not read for ever
        res = cli_inprocess("sample", "-c", trained_run, "--prime-file", "/dev/zero")
        assert res.returncode == 3 and "/dev/zero: looks binary (NUL byte at offset 0)" in res.stderr
    import charnn.data

    monkeypatch.setattr(charnn.data, "PRIME_MAX_BYTES", 1 << 20)
    big = tmp_path / "big.txt"
    big.write_bytes(b"The river " * (1 << 17))  # 1.25 MiB
    res = cli_inprocess("sample", "-c", trained_run, "--prime-file", big)
    assert res.returncode == 3 and "big.txt: more than 1 MiB of text" in res.stderr, res.stderr
    res = cli_inprocess("sample", "-c", trained_run, "--prime-file", tmp_path / "missing.txt")
    assert res.returncode == 3 and "missing.txt: cannot read" in res.stderr


# ---------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("extra", [(), ("--top-k", "5"), ("--top-p", "0.5"), ("-k", "2")])
@pytest.mark.parametrize("temp", ["1e-320", "1e-45", "4.9e-324"])
def test_tiny_temperatures_behave_as_greedy(
    cli_inprocess, trained_run: Path, temp: str, extra: tuple[str, ...]
) -> None:
    greedy = cli_inprocess("sample", "-c", trained_run, "--temp", "0", "--length", "40", "--json", *extra)
    tiny = cli_inprocess("sample", "-c", trained_run, "--temp", temp, "--length", "40", "--json", *extra)
    assert tiny.returncode == 0 and tiny.stderr == ""  # no numpy warning
    assert [json.loads(x)["text"] for x in tiny.stdout.splitlines()] == [
        json.loads(x)["text"] for x in greedy.stdout.splitlines()
    ]


@pytest.mark.parametrize(
    "args",
    [
        ("--length-penalty", "nan"),
        ("--length-penalty", "inf"),
        ("--temp", "nan"),
        ("--temp", "inf"),
        ("--top-p", "nan"),
        ("--seed", "-1"),
        ("--seed", str(2**64)),
    ],
)
def test_non_finite_numbers_and_bad_seeds_are_usage_errors(
    cli_inprocess, trained_run: Path, args: tuple[str, ...]
) -> None:
    res = cli_inprocess("sample", "-c", trained_run, *args)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("charnn: error: ") and len(res.stderr.strip().splitlines()) == 1


def test_same_seed_same_text_in_separate_processes(trained_run: Path) -> None:
    """Seeded numpy draws: reproducible across runs (no state from the process or torch)."""
    args = ("-c", trained_run, "--seed", "11", "--length", "50", "-k", "2", "--top-p", "0.9")
    first, second = sample_process(*args), sample_process(*args)
    assert first.returncode == 0 and first.stdout == second.stdout
    assert sample_process(*args[:2], "--seed", "12", *args[4:]).stdout != first.stdout


# ---------------------------------------------------------------------------- eval and score


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_numpy_eval_and_score_equal_the_torch_ones(cell: str) -> None:
    """eval and score over the numpy stepper, over the torch one, and training's validation
    (charnn.evaluate, torch directly) agree to float32 rounding."""
    import numpy as np
    import torch

    from charnn.config import ModelConfig
    from charnn.evaluate import evaluate_stream
    from charnn.model import CharRNN
    from charnn.scoring import evaluate_text, score_lines
    from charnn.stepper import FastStepper
    from charnn.torch_stepper import TorchStepper

    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=9, cell=cell, layers=2, hidden=16, embed=8)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    fast, slow = FastStepper.from_model(model), TorchStepper(model)
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 3, 9)  # tokens spelling 1 or 2 characters
    ids = rng.integers(0, 9, 700).astype(np.uint8)
    for seq_len in (32, 256):  # several windows with the state carried, and one
        a = evaluate_stream(model, ids, lengths, batch_size=4, seq_len=seq_len)
        for b in (evaluate_text(s, ids, lengths, batch_size=4, seq_len=seq_len) for s in (fast, slow)):
            assert (a.tokens, a.chars) == (b.tokens, b.chars)
            assert b.loss == pytest.approx(a.loss, abs=1e-5) and b.bpc == pytest.approx(a.bpc, abs=1e-5)
    lines = [rng.integers(0, 9, n).astype(np.uint8) for n in (5, 0, 1, 40)]
    for context in ([3], [1, 2, 3, 4]):
        for x, y in zip(
            score_lines(slow, context, lines, lengths, batch_size=3),
            score_lines(fast, context, lines, lengths),
            strict=True,
        ):
            assert (x.tokens, x.chars) == (y.tokens, y.chars)
            assert y.logprob == pytest.approx(x.logprob, abs=1e-4)


def test_short_score_and_eval_skip_torch_and_agree_with_the_torch_path(
    trained_run: Path, tmp_path: Path, cli_inprocess, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = tmp_path / "lines.txt"
    text.write_text("The river stone.\nA quiet night!\n", encoding="utf-8")
    env = {**os.environ, "NO_COLOR": "1"}
    for command in (("score", "--json"), ("eval", "--json")):
        proc = subprocess.run(
            [sys.executable, "-c", _HOOK, *command, "-c", str(trained_run), str(text)],
            capture_output=True,
            env=env,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert not torch_imported(proc)
        fast = cli_inprocess(*command, "-c", trained_run, text)
        import charnn.routing

        monkeypatch.setattr(charnn.routing, "NUMPY_MAX_TOKENS", 0)  # force the torch path
        slow = cli_inprocess(*command, "-c", trained_run, text)
        monkeypatch.undo()
        for a, b in zip(fast.stdout.splitlines(), slow.stdout.splitlines(), strict=True):
            a, b = json.loads(a), json.loads(b)
            for key in ("logprob", "loss", "bpc"):
                if key in a:
                    assert a[key] == pytest.approx(b[key], abs=1e-4)
        first = json.loads(fast.stdout.splitlines()[0])
        assert json.loads(proc.stdout.splitlines()[0]) == first  # the real process printed the same


def test_checkpoint_files_are_size_checked_before_reading(trained_run_copy: Path, cli_inprocess) -> None:
    """A weights file linked to an endless device, or bigger than the config allows, is refused
    before it is read (one check, shared by the numpy and the torch paths)."""
    weights = trained_run_copy / "best" / "model.safetensors"
    if os.path.exists("/dev/zero"):
        weights.unlink()
        weights.symlink_to("/dev/zero")
        res = cli_inprocess("sample", "-c", trained_run_copy / "best", "--length", "1")
        assert res.returncode == 3 and "model.safetensors: not a regular file" in res.stderr, res.stderr
    weights.unlink()
    weights.write_bytes(b"\0" * (4 << 20))  # a 32-hidden model stores far less than 4 MiB
    for command in (("sample", "--length", "1"), ("info",)):
        res = cli_inprocess(*command, "-c", trained_run_copy / "best")
        assert res.returncode == 3 and "more than a checkpoint file can hold" in res.stderr, res.stderr
