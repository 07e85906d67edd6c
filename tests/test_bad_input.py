"""Bad input, met the way a user meets it (the CLI in a subprocess): each case gets one
``charnn: error:`` line on stderr, no traceback, its documented exit code, and loses nothing.

Exit codes: 1 error (e.g. cannot write), 2 usage (impossible options), 3 bad data or checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL_ARGS

from charnn import checkpoint as ck
from charnn import rundir
from charnn.checkpoint import load_checkpoint
from charnn.metrics import METRICS

SHORT_RUN = (*TINY_MODEL_ARGS, "--steps", "2", "--seq-len", "16", "--batch-size", "4", "--device", "cpu")


def assert_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The documented exit code and exactly one error line (the last line of stderr), no traceback."""
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("charnn: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# ---------------------------------------------------------------------------- corpora (exit 3)


def test_missing_corpus_file(tmp_path: Path, run_cli) -> None:
    proc = run_cli("train", tmp_path / "nope.txt", "--out", tmp_path / "run", *SHORT_RUN)
    assert_error(proc, 3, "nope.txt", "no such file")
    assert not (tmp_path / "run").exists()


def test_directory_without_text_files(tmp_path: Path, run_cli) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "image.bin").write_bytes(b"\x89PNG\x00\x00\x01")
    proc = run_cli("train", tmp_path / "data", "--out", tmp_path / "run", *SHORT_RUN)
    assert_error(proc, 3, "no text files")
    assert not (tmp_path / "run").exists()


def test_empty_corpus_file(tmp_path: Path, run_cli) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    proc = run_cli("train", tmp_path / "empty.txt", "--out", tmp_path / "run", *SHORT_RUN)
    assert_error(proc, 3, "empty.txt", "is empty")
    assert not (tmp_path / "run").exists()


def test_corpus_shorter_than_one_window_keeps_the_run_it_would_replace(
    tmp_path: Path, trained_run_copy: Path, run_cli
) -> None:
    (tmp_path / "short.txt").write_text("hello there\n")
    before = {p: p.read_bytes() for p in trained_run_copy.rglob("*") if p.is_file()}
    # Even with --force, the old run is only replaced once the new one can really start.
    proc = run_cli(
        "train",
        tmp_path / "short.txt",
        "--out",
        trained_run_copy,
        *TINY_MODEL_ARGS,
        "--seq-len",
        "64",
        "--force",
    )
    assert_error(proc, 3, "too short")
    assert {p: p.read_bytes() for p in trained_run_copy.rglob("*") if p.is_file()} == before


def test_binary_corpus_file(tmp_path: Path, run_cli) -> None:
    (tmp_path / "data.bin").write_bytes(b"some text\x00\x01\x02 more")
    proc = run_cli("train", tmp_path / "data.bin", "--out", tmp_path / "run", *SHORT_RUN)
    assert_error(proc, 3, "data.bin", "binary", "offset 9")


def test_invalid_utf8_names_file_and_offset_and_replace_goes_on(
    tmp_path: Path, corpus_text: str, run_cli
) -> None:
    bad = tmp_path / "latin1.txt"
    raw = corpus_text.encode()
    bad.write_bytes(raw[:1000] + b"caf\xe9 au lait\n" + raw[1000:])
    proc = run_cli("train", bad, "--out", tmp_path / "run", *SHORT_RUN)
    assert_error(proc, 3, "latin1.txt", "not valid UTF-8 at byte offset 1003", "--encoding-errors")
    assert not (tmp_path / "run").exists()
    proc = run_cli("train", bad, "--out", tmp_path / "run", *SHORT_RUN, "--encoding-errors", "replace")
    assert proc.returncode == 0, proc.stderr
    assert "\ufffd" in load_checkpoint(tmp_path / "run").tokenizer.to_dict()["chars"]


# ---------------------------------------------------------------------------- checkpoints (exit 3)


def _rewrite_meta(directory: Path, **changes: object) -> None:
    """Change metadata fields and recompute its checksum, so only the change itself is wrong."""
    meta = json.loads((directory / "meta.json").read_text())
    for dotted, value in changes.items():
        *path, key = dotted.split("__")
        node = meta
        for part in path:
            node = node[part]
        node[key] = value
    meta["checksum"] = ck._meta_checksum(meta)
    (directory / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def test_truncated_checkpoint(trained_run_copy: Path, run_cli, cli_inprocess) -> None:
    best = trained_run_copy / "best"
    data = (best / "model.safetensors").read_bytes()
    (best / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_error(run_cli("info", "-c", best), 3, "checksum mismatch", "truncated")
    latest = trained_run_copy / "latest"
    meta = (latest / "meta.json").read_bytes()
    (latest / "meta.json").write_bytes(meta[: len(meta) // 3])
    assert_error(cli_inprocess("info", "-c", latest), 3, "not valid JSON")


def test_edited_meta_json(trained_run_copy: Path, run_cli) -> None:
    best = trained_run_copy / "best"
    text = (best / "meta.json").read_text()
    (best / "meta.json").write_text(text.replace('"dropout": 0.0', '"dropout": 0.5'))
    assert_error(run_cli("info", "-c", trained_run_copy), 3, "checksum mismatch", "edited")


def test_wrong_format_version(trained_run_copy: Path, run_cli) -> None:
    _rewrite_meta(trained_run_copy / "best", version=2)
    assert_error(run_cli("info", "-c", trained_run_copy), 3, "version 2", "reads version 1")


def test_tensor_shapes_that_do_not_match_the_config(
    trained_run_copy: Path, run_cli, corpus_file: Path
) -> None:
    _rewrite_meta(trained_run_copy / "best", model__hidden=64)
    assert_error(run_cli("eval", corpus_file, "-c", trained_run_copy), 3, "do not match the model config")


class _Trap:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


@pytest.mark.parametrize("zipfile", [True, False], ids=["torch-zip", "legacy-pickle"])
def test_pickle_checkpoint_is_refused_without_unpickling(
    tmp_path: Path, run_cli, cli_inprocess, zipfile: bool
) -> None:
    trap = tmp_path / "pwned"
    torch.save({"model": _Trap(str(trap))}, tmp_path / "model.pt", _use_new_zipfile_serialization=zipfile)
    assert_error(run_cli("sample", "-n", "5", "-c", tmp_path / "model.pt"), 3, "pickle", "never unpickles")
    for command in (("info",), ("score", "-"), ("eval", "-")):
        assert_error(cli_inprocess(*command, "-c", tmp_path / "model.pt"), 3, "pickle")
    assert not trap.exists()


# ---------------------------------------------------------------------------- cannot write (exit 1)


def _snapshot(run: Path) -> dict[Path, bytes]:
    """Every file of the run but its history: metrics.jsonl is an append-only log, and the rows of
    a session whose save failed are its abandoned tail (the next --resume drops them)."""
    return {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != METRICS}


def test_output_under_a_regular_file(tmp_path: Path, corpus_file: Path, run_cli) -> None:
    (tmp_path / "file.txt").write_text("not a directory\n")
    proc = run_cli("train", corpus_file, "--out", tmp_path / "file.txt" / "run", *SHORT_RUN)
    assert_error(proc, 1, "could not save checkpoint", "Not a directory")
    assert (tmp_path / "file.txt").read_text() == "not a directory\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories anyway")
def test_read_only_output_directory_keeps_the_old_checkpoint(trained_run_copy: Path, run_cli) -> None:
    before = _snapshot(trained_run_copy)
    os.chmod(trained_run_copy, 0o555)
    try:
        proc = run_cli("train", "--resume", "--out", trained_run_copy, "--steps", "32", "--save-every", "1")
    finally:
        os.chmod(trained_run_copy, 0o755)
    assert_error(proc, 1, "could not save checkpoint", "previous checkpoint is kept")
    assert _snapshot(trained_run_copy) == before


def test_file_size_limit_mid_save_keeps_the_old_checkpoint(
    trained_run_copy: Path, cli_command, cli_env
) -> None:
    """Works as root too: RLIMIT_FSIZE makes writes past 16 KB fail with EFBIG (Python ignores
    SIGXFSZ), i.e. the disk 'fills up' in the middle of writing model.safetensors."""
    before = _snapshot(trained_run_copy)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_384, 16_384))

    cmd = ["train", "--resume", "--out", str(trained_run_copy), "--steps", "32", "--save-every", "1"]
    proc = subprocess.run(
        cli_command(*cmd), capture_output=True, text=True, env=cli_env(), timeout=120, preexec_fn=limit
    )
    assert_error(proc, 1, "could not save checkpoint", "File too large", "previous checkpoint is kept")
    assert _snapshot(trained_run_copy) == before  # byte for byte, and no temporary leftovers
    assert load_checkpoint(trained_run_copy, prefer="latest").step == 30
    for line in (trained_run_copy / METRICS).read_text().splitlines():
        json.loads(line)  # the history stays whole JSON lines


def test_disk_full_mid_save_keeps_the_old_checkpoint(
    trained_run_copy: Path, cli_inprocess, monkeypatch
) -> None:
    """ENOSPC while writing the second file of a save, through the CLI's code path in-process."""
    before = _snapshot(trained_run_copy)
    real_open = open
    written = {"files": 0}

    class FullDisk:
        def __init__(self, path: Path, mode: str) -> None:
            self.fh = real_open(path, mode)

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def write(self, data: bytes) -> int:
            written["files"] += 1
            if written["files"] >= 2:
                self.fh.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.fh.write(data)

        def __getattr__(self, name: str) -> object:
            return getattr(self.fh, name)

    monkeypatch.setattr(rundir, "open", FullDisk, raising=False)  # shadows the builtin inside rundir.py
    proc = cli_inprocess("train", "--resume", "--out", trained_run_copy, "--steps", "32", "--save-every", "1")
    assert_error(proc, 1, "could not save checkpoint", "No space left on device", "checkpoint is kept")
    assert written["files"] == 2
    assert _snapshot(trained_run_copy) == before


# ---------------------------------------------------------------------------- impossible options (exit 2)


@pytest.mark.parametrize(
    "args",
    [
        ("train", "--hidden", "-5"),
        ("train", "--hidden", "0"),
        ("train", "--layers", "0"),
        ("train", "--seq-len", "0"),
        ("train", "--batch-size", "-1"),
        ("train", "--lr", "-1"),
        ("train", "--time", "soon"),
        ("train", "--tie-weights", "--embed", "8", "--hidden", "16"),
        ("sample", "--temp", "-1"),
        ("sample", "--top-p", "2"),
        ("sample", "--beam", "0"),
        ("sample", "--beam", "2", "--temp", "0.7"),
        ("sample", "--length", "-3"),
    ],
    ids=lambda a: " ".join(a),
)
def test_impossible_option_values_are_usage_errors(
    args: tuple[str, ...], tmp_path: Path, run_cli, corpus_file: Path
) -> None:
    run = tmp_path / "run"
    extra = ("-c", str(tmp_path)) if args[0] == "sample" else (str(corpus_file), "--out", str(run))
    proc = run_cli(*args, *extra)
    assert_error(proc, 2)
    assert not (tmp_path / "run").exists()
