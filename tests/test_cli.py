"""The ``charnn`` command line end to end, in subprocesses like a user runs it.

Covers the stdout/stderr contract (stdout carries only text or requested data),
exit codes, determinism under ``--seed``, pipes closed early, and stdin input.
Fixtures ``run_cli``, ``cli_command``, ``cli_env``, ``corpus_text``, ``corpus_file`` and
``trained_run`` come from ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

RunCli = Callable[..., subprocess.CompletedProcess]

# The sizes the issue asks for: a training run of a second or two.
TRAIN_ARGS = (
    "--hidden",
    "32",
    "--layers",
    "1",
    "--seq-len",
    "32",
    "--batch-size",
    "8",
    "--steps",
    "30",
    "--device",
    "cpu",
)


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _assert_one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("charnn: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


# ---------------------------------------------------------------------------- help / startup


def test_help_lists_commands(run_cli: RunCli) -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "sample", "eval", "score", "info"):
        assert command in proc.stdout
    for command in ("train", "sample", "eval", "score", "info"):
        sub = run_cli(command, "--help")
        assert sub.returncode == 0, sub.stderr
        assert "Usage:" in sub.stdout and command in sub.stdout


def test_version(run_cli: RunCli) -> None:
    from charnn import __version__

    proc = run_cli("--version")
    assert proc.returncode == 0
    assert __version__ in proc.stdout


def test_cli_import_and_help_do_not_import_torch(cli_env: Callable[..., dict]) -> None:
    """``charnn --help`` must start instantly: neither importing the CLI nor showing help loads torch."""
    code = (
        "import sys\n"
        "import charnn.cli\n"
        "after_import = sorted(m for m in ('torch', 'numpy') if m in sys.modules)\n"
        "try:\n"
        "    charnn.cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "after_help = sorted(m for m in ('torch', 'numpy') if m in sys.modules)\n"
        "print(repr((after_import, after_help)), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "([], [])"


def test_console_script_and_module_entry_points(run_process: RunCli, cli_env: Callable[..., dict]) -> None:
    """``python -m charnn`` (what run_process uses) and the installed ``charnn`` script both work."""
    assert run_process("--help").returncode == 0
    script = Path(sys.executable).parent / "charnn"
    if not script.exists():
        pytest.skip("no charnn console script next to this interpreter")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, env=cli_env(), timeout=60)
    assert proc.returncode == 0 and "sample" in proc.stdout


def test_usage_error_is_one_line_exit_2(run_cli: RunCli, tmp_path: Path) -> None:
    proc = run_cli("train", "--layers", "0", "--out", tmp_path / "run")
    assert proc.returncode == 2
    assert proc.stdout == ""
    _assert_one_line_error(proc)


# ---------------------------------------------------------------------------- train


def test_train_tiny_model(run_cli: RunCli, corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli("train", corpus_file, "--out", out, *TRAIN_ARGS, "--seed", "5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # progress and summary go to stderr
    assert "done: 30 steps" in proc.stderr
    for which in ("latest", "best"):
        assert (out / which / "meta.json").is_file()
        assert (out / which / "model.safetensors").is_file()
    meta = json.loads((out / "latest" / "meta.json").read_text())
    assert meta["progress"]["step"] == 30
    assert meta["model"]["hidden"] == 32 and meta["model"]["layers"] == 1
    assert meta["train"]["seq_len"] == 32 and meta["train"]["batch_size"] == 8
    assert math.isfinite(meta["progress"]["val"]["bpc"])


def test_train_refuses_to_overwrite_a_run(run_cli: RunCli, trained_run_copy: Path, corpus_file: Path) -> None:
    proc = run_cli("train", corpus_file, "--out", trained_run_copy, *TRAIN_ARGS)
    assert proc.returncode == 2
    assert "--resume" in _assert_one_line_error(proc)


def test_train_same_seed_is_bit_identical(run_cli: RunCli, corpus_file: Path, tmp_path: Path) -> None:
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        proc = run_cli("train", corpus_file, "--out", out, *TRAIN_ARGS, "--seed", "11")
        assert proc.returncode == 0, proc.stderr
    a, b = (_tensors(out / "latest" / "model.safetensors") for out in runs)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype
        assert a[name].equal(b[name]), name  # bit-identical, not just close
    samples = [run_cli("sample", "-c", out, "--length", "150", "--seed", "2") for out in runs]
    assert all(s.returncode == 0 for s in samples), samples[0].stderr
    assert samples[0].stdout == samples[1].stdout != ""


def test_train_from_stdin(run_cli: RunCli, corpus_text: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ("--hidden", "16", "--layers", "1", "--seq-len", "16", "--batch-size", "4", "--steps", "5")
    proc = run_cli("train", "-", "--out", out, *args, input=corpus_text)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    meta = json.loads((out / "latest" / "meta.json").read_text())
    assert meta["corpus"]["sources"] == ["-"]
    assert meta["corpus"]["chars"] == len(corpus_text)
    assert sorted(meta["tokenizer"]["chars"]) == sorted(set(corpus_text))


def test_train_directory_for_epochs(run_cli: RunCli, corpus_text: str, tmp_path: Path) -> None:
    """A directory argument trains on its text files (binaries skipped, with a note on stderr), and
    --epochs 2 runs exactly two passes of the batcher's windows."""
    import numpy as np

    from charnn.data import StreamBatcher, load_corpus, split_train_val

    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    half = corpus_text.index("\n", len(corpus_text) // 2) + 1  # split on a line boundary
    (data / "a.txt").write_text(corpus_text[:half], encoding="utf-8")
    (data / "sub" / "b.txt").write_text(corpus_text[half:], encoding="utf-8")
    (data / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(range(256)))
    out = tmp_path / "run"
    proc = run_cli(
        "train",
        data,
        "--out",
        out,
        "--hidden",
        "16",
        "--layers",
        "1",
        "--seq-len",
        "32",
        "--batch-size",
        "8",
        "--epochs",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "skipped 1 binary" in proc.stderr
    meta = json.loads((out / "latest" / "meta.json").read_text())
    assert len(meta["corpus"]["sources"]) == 2
    corpus = load_corpus([str(data)])
    assert corpus.chars == len(corpus_text)
    train_ids, _ = split_train_val(corpus.ids, meta["train"]["val_fraction"])
    batcher = StreamBatcher(train_ids, 8, 32)
    assert meta["progress"]["step"] == 2 * batcher.windows_per_epoch
    assert np.array_equal(corpus.ids, load_corpus([str(data / "a.txt"), str(data / "sub" / "b.txt")]).ids)


def test_train_without_files_uses_builtin_corpus(run_cli: RunCli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = (
        "--hidden",
        "8",
        "--embed",
        "8",
        "--layers",
        "1",
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        "--steps",
        "2",
        "--eval-chars",
        "200",
    )
    proc = run_cli("train", "--out", out, *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    meta = json.loads((out / "latest" / "meta.json").read_text())
    assert meta["corpus"]["sources"] == ["builtin:pydoc"]
    assert meta["corpus"]["chars"] > 100_000


def test_sentencepiece_run_end_to_end(
    run_cli: RunCli, corpus_file: Path, corpus_text: str, tmp_path: Path
) -> None:
    """Subword tokenizer through train, eval (bpc per character, also for unseen characters
    spelled as UTF-8 byte pieces) and sample."""
    out = tmp_path / "sp"
    proc = run_cli(
        "train",
        corpus_file,
        "--out",
        out,
        "--tokenizer",
        "sentencepiece",
        "--vocab-size",
        "400",
        "--hidden",
        "16",
        "--embed",
        "8",
        "--layers",
        "1",
        "--seq-len",
        "16",
        "--batch-size",
        "4",
        "--steps",
        "5",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    held_out = "\n" + corpus_text[-300:] + "caf\u00e9 \u20ac\n"  # the leading newline is its own piece
    ev = run_cli("eval", "-c", out, "-", "--json", input=held_out)
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["tokens"] < result["chars"]
    # Every character is predicted (the first from the start context), whatever pieces spell it.
    assert result["chars"] == len(held_out)
    assert result["bpt"] * result["tokens"] == pytest.approx(result["bpc"] * result["chars"])
    sample = run_cli("sample", "-c", out, "--length", "30", "--seed", "1")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout


def test_sentencepiece_vocab_too_small(run_cli: RunCli, corpus_file: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "train",
        corpus_file,
        "--out",
        tmp_path / "sp",
        "--tokenizer",
        "sentencepiece",
        "--vocab-size",
        "50",
        "--steps",
        "1",
    )
    assert proc.returncode == 3
    assert "--vocab-size 50 is too small" in _assert_one_line_error(proc)


def test_empty_stdin_is_bad_input(run_cli: RunCli, tmp_path: Path) -> None:
    proc = run_cli("train", "-", "--out", tmp_path / "run", "--steps", "1", input="")
    assert proc.returncode == 3
    assert "empty" in _assert_one_line_error(proc)


# ---------------------------------------------------------------------------- sample


def test_sample_is_only_corpus_text(run_cli: RunCli, trained_run: Path, corpus_text: str) -> None:
    proc = run_cli("sample", "-c", trained_run, "--length", "200", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) == 200  # no banner, no trailing newline added on a pipe
    assert set(proc.stdout) <= set(corpus_text)


def test_sample_seed_determinism(run_cli: RunCli, trained_run: Path) -> None:
    first, again, other = (
        run_cli("sample", "-c", trained_run, "--length", "200", "--seed", seed) for seed in ("3", "3", "4")
    )
    assert first.returncode == again.returncode == other.returncode == 0
    assert first.stdout == again.stdout
    assert first.stdout != other.stdout


def test_sample_prime_comes_first(run_cli: RunCli, trained_run: Path) -> None:
    proc = run_cli("sample", "-c", trained_run, "--length", "50", "--seed", "3", "--prime", "ab")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ab")
    assert len(proc.stdout) == 52


def test_sample_prime_with_unknown_characters(run_cli: RunCli, trained_run: Path, corpus_text: str) -> None:
    bad = "\u00e9\u20ac#"
    assert not set(bad) & set(corpus_text)
    proc = run_cli("sample", "-c", trained_run, "--length", "50", "--prime", "the " + bad)
    assert proc.returncode == 3
    assert proc.stdout == ""
    line = _assert_one_line_error(proc)
    for ch in bad:
        assert repr(ch) in line
    assert "'t'" not in line


def test_sample_json(run_cli: RunCli, trained_run: Path) -> None:
    proc = run_cli("sample", "-c", trained_run, "--length", "40", "--seed", "1", "-k", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["sample"] for r in rows] == [0, 1]
    assert all(len(r["text"]) <= 40 and r["logprob"] <= 0 for r in rows)


def test_sample_missing_checkpoint(run_cli: RunCli, tmp_path: Path) -> None:
    proc = run_cli("sample", "-c", tmp_path / "nope")
    assert proc.returncode == 3
    assert proc.stdout == ""
    _assert_one_line_error(proc)


def test_sample_into_closed_pipe(
    cli_command: Callable[..., list], cli_env: Callable[..., dict], trained_run: Path
) -> None:
    """A reader that stops early (``| head -c 100``) ends the sampler quietly with exit 0."""
    proc = subprocess.Popen(
        cli_command("sample", "-c", trained_run, "--length", "100000", "--seed", "3"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        head = proc.stdout.read(100)
        proc.stdout.close()
        rc = proc.wait(timeout=120)
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(head) == 100
    assert rc == 0
    assert stderr == b""


def test_sample_shell_pipeline_to_head(
    cli_command: Callable[..., list], cli_env: Callable[..., dict], trained_run: Path, tmp_path: Path
) -> None:
    """The same through a real shell pipeline; PIPESTATUS gives charnn's own exit status."""
    argv = " ".join(
        shlex.quote(a) for a in cli_command("sample", "-c", trained_run, "--length", "100000", "--seed", "3")
    )
    err = tmp_path / "stderr.txt"
    script = f'{argv} 2>{shlex.quote(str(err))} | head -c 100; echo " rc=${{PIPESTATUS[0]}}"'
    proc = subprocess.run(["bash", "-c", script], capture_output=True, env=cli_env(), timeout=120)
    out = proc.stdout.decode("utf-8", "replace")
    text, _, status = out.rpartition(" rc=")
    assert status.strip() == "0", (out, err.read_text())
    assert len(text.encode("utf-8")) == 100
    assert err.read_text() == ""


# ---------------------------------------------------------------------------- eval / score / info


def test_eval_json(run_cli: RunCli, trained_run: Path, corpus_text: str, tmp_path: Path) -> None:
    held_out = "\n".join(corpus_text.splitlines()[-30:]) + "\n"
    f = tmp_path / "held_out.txt"
    f.write_text(held_out, encoding="utf-8")
    proc = run_cli("eval", "-c", trained_run, f, "--json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert isinstance(result, dict)
    assert {"bpc", "loss", "chars", "tokens"} <= result.keys()
    assert 0 < result["bpc"] < 10
    assert result["bpc"] == pytest.approx(result["loss"] / math.log(2))
    assert result["tokens"] == result["chars"] == len(held_out)  # every character, the first too
    # stdin gives the same numbers as the file.
    again = run_cli("eval", "-c", trained_run, "-", "--json", input=held_out)
    assert again.returncode == 0, again.stderr
    assert {k: v for k, v in json.loads(again.stdout).items() if k != "checkpoint"} == {
        k: v for k, v in result.items() if k != "checkpoint"
    }


def test_eval_unknown_characters_is_bad_input(run_cli: RunCli, trained_run: Path) -> None:
    proc = run_cli("eval", "-c", trained_run, "-", "--json", input="the \u00e9t\u00e9\n")
    assert proc.returncode == 3
    assert proc.stdout == ""
    line = _assert_one_line_error(proc)
    assert repr("\u00e9") in line and "<stdin>" in line


def test_score_json(run_cli: RunCli, trained_run: Path) -> None:
    proc = run_cli("score", "-c", trained_run, "--json", input="the river\n\nold stone bridge\n")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["the river", "", "old stone bridge"]
    assert [r["line"] for r in rows] == [1, 2, 3]
    assert rows[1]["logprob"] == 0 and rows[0]["logprob"] < 0 and rows[2]["logprob"] < rows[0]["logprob"]


def test_score_blank_lines_with_default_context(run_cli: RunCli, trained_run: Path) -> None:
    """Regression: only blank lines with the default one-character context crashed (exit 1)."""
    proc = run_cli("score", "-c", trained_run, "--json", input="\n\n")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["text"], r["logprob"], r["chars"]) for r in rows] == [("", 0.0, 0), ("", 0.0, 0)]


def test_plain_outputs(run_cli: RunCli, trained_run: Path, tmp_path: Path) -> None:
    """Without --json: eval prints one summary line; score prints logprob<TAB>bpc<TAB>line;
    --whole scores each input as one text."""
    text = "the river\nold stone bridge\n"
    ev = run_cli("eval", "-c", trained_run, "-", input=text)
    assert ev.returncode == 0, ev.stderr
    assert ev.stdout.startswith("bpc ") and len(ev.stdout.splitlines()) == 1
    assert f"chars {len(text)}" in ev.stdout
    sc = run_cli("score", "-c", trained_run, input=text)
    assert sc.returncode == 0, sc.stderr
    rows = [line.split("\t") for line in sc.stdout.splitlines()]
    assert [r[2] for r in rows] == ["the river", "old stone bridge"]
    assert all(float(r[0]) < 0 < float(r[1]) for r in rows)
    f = tmp_path / "whole.txt"
    f.write_text(text, encoding="utf-8")
    whole = run_cli("score", "-c", trained_run, "--whole", "--json", f)
    assert whole.returncode == 0, whole.stderr
    (row,) = [json.loads(line) for line in whole.stdout.splitlines()]
    assert row["text"] == text and row["chars"] == len(text) and "line" not in row


def test_info_json(run_cli: RunCli, trained_run: Path) -> None:
    proc = run_cli("info", "-c", trained_run, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert isinstance(data, dict)
    assert data["step"] == 30
    # Structured: numbers as numbers, the model config as an object, no tokenizer blob.
    assert data["model"] == {
        "cell": "lstm",
        "layers": 1,
        "hidden": 32,
        "embed": 16,
        "dropout": 0.0,
        "weight_drop": 0.0,
        "tie_weights": False,
        "vocab_size": data["tokenizer"]["vocab_size"],
    }
    assert isinstance(data["parameters"], int) and data["parameters"] > 0
    assert data["tokenizer"] == {"kind": "char", "vocab_size": data["model"]["vocab_size"]}
    assert isinstance(data["best_val_bpc"], float) and isinstance(data["trained_seconds"], float)
    assert data["train"]["steps"] == 30 and data["corpus"]["tokens"] > 0
    assert "train" in data["run"]["argv"]
    assert data["run"]["device"] == "cpu" and data["run"]["torch"]
    assert Path(data["path"]).name == "best"
    plain = run_cli("info", "-c", trained_run)
    assert plain.returncode == 0 and "parameters" in plain.stdout
