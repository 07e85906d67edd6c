"""`charnn export RUN OUT`: the checkpoint to share (weights + metadata, no optimizer state),
validated like any checkpoint, taken by sample -c, info, eval and train --init-from."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import TINY_MODEL_ARGS

from charnn.errors import EXIT_BAD_INPUT, EXIT_USAGE

FAST = ("--seq-len", "16", "--batch-size", "4", "--device", "cpu", "--sample-every", "0")


def _size(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.iterdir())


def test_export_is_a_smaller_checkpoint_that_samples_the_same(run_cli, trained_run, tmp_path):
    out = tmp_path / "share" / "model"
    proc = run_cli("export", trained_run, out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "model.safetensors"]
    assert _size(out) < _size(trained_run / "best") / 2  # the optimizer state was 2/3 of it
    meta = json.loads((out / "meta.json").read_text())
    assert "optimizer" not in meta and meta["exported"]["from"].endswith("best")
    original = json.loads((trained_run / "best" / "meta.json").read_text())
    assert meta["files"]["model.safetensors"] == original["files"]["model.safetensors"]
    args = ("--length", "80", "--seed", "3", "--prime", "The ")
    shared, own = run_cli("sample", "-c", out, *args), run_cli("sample", "-c", trained_run, *args)
    assert shared.returncode == own.returncode == 0
    assert shared.stdout == own.stdout
    info = run_cli("info", "-c", out, "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["step"] == original["progress"]["step"]


def test_init_from_an_export(run_cli, trained_run, corpus_file, tmp_path):
    out = tmp_path / "model"
    assert run_cli("export", trained_run, out).returncode == 0
    child = tmp_path / "child"
    proc = run_cli("train", corpus_file, "--init-from", out, "-o", child, "--steps", "2", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((child / "latest" / "meta.json").read_text())["parent"]["step"] > 0


def test_export_cannot_be_resumed(run_cli, trained_run, tmp_path):
    out = tmp_path / "model"
    assert run_cli("export", trained_run, out).returncode == 0
    proc = run_cli("train", "--resume", out, "--steps", "50", *TINY_MODEL_ARGS)
    assert proc.returncode in (EXIT_USAGE, EXIT_BAD_INPUT) and "Traceback" not in proc.stderr


def test_an_edited_export_is_refused(run_cli, trained_run, tmp_path):
    out = tmp_path / "model"
    assert run_cli("export", trained_run, out).returncode == 0
    meta = json.loads((out / "meta.json").read_text())
    meta["model"]["hidden"] += 1
    (out / "meta.json").write_text(json.dumps(meta))
    proc = run_cli("sample", "-c", out, "--length", "5")
    assert proc.returncode == EXIT_BAD_INPUT and "checksum" in proc.stderr


def test_export_never_replaces_what_is_not_an_export(run_cli, trained_run, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert run_cli("export", trained_run, mine).returncode == EXIT_USAGE
    assert run_cli("export", trained_run, mine, "--force").returncode == EXIT_USAGE
    assert (mine / "notes.txt").read_text() == "keep me"
    out = tmp_path / "model"
    assert run_cli("export", trained_run, out).returncode == 0
    assert run_cli("export", trained_run, out).returncode == EXIT_USAGE  # exists
    assert run_cli("export", trained_run, out, "--force").returncode == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_export_of_nothing_is_a_checkpoint_error(run_cli, tmp_path):
    proc = run_cli("export", tmp_path / "nowhere", tmp_path / "out")
    assert proc.returncode == EXIT_BAD_INPUT and not (tmp_path / "out").exists()
