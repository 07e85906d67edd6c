"""Issue 20's adversarial findings, one section per defect class: a user's files under the
names charnn writes, exact resume around validation, a corpus cache that trusts nothing it
reads, unwritable places, bounded downloads, forged training state, hostile names, listings
that survive one bad run, and the smaller items. Each test failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_MODEL_ARGS

SHORT = (*TINY_MODEL_ARGS, "--steps", "3", "--seq-len", "16", "--batch-size", "4", "--device", "cpu")


def tree(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


# ---------------------------------------------------------------------------- 1. reserved names


@pytest.mark.parametrize("name", [".latest.old", ".latest.tmp", ".best.old", ".best.tmp"])
def test_a_users_folder_under_an_aside_name_survives_resume(
    name: str, trained_run_copy: Path, cli_inprocess
) -> None:
    mine = trained_run_copy / name
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    proc = cli_inprocess("train", "--resume", trained_run_copy, "--steps", "3")
    assert proc.returncode == 2, proc.stderr
    assert f"{name}: exists and is not a charnn checkpoint" in proc.stderr
    assert (mine / "notes.txt").read_text() == "my notes"


@pytest.mark.parametrize("name", [".best.old", ".latest.old"])
def test_a_users_aside_folder_in_a_fresh_out_is_neither_moved_nor_half_used(
    name: str, tmp_path: Path, corpus_file: Path, cli_inprocess
) -> None:
    out = tmp_path / "run"
    (out / name).mkdir(parents=True)
    (out / name / "meta.json").write_text('{"mine": true}')
    before = tree(out)
    proc = cli_inprocess("train", corpus_file, "--out", out, *SHORT)
    assert proc.returncode == 2, proc.stderr
    assert "not a charnn checkpoint" in proc.stderr
    assert tree(out) == before
    assert sorted(p.name for p in out.iterdir()) == [name]


@pytest.mark.parametrize("name", ["metrics.jsonl", "samples.txt"])
@pytest.mark.parametrize("force", [(), ("--force",)], ids=["plain", "force"])
def test_a_users_own_history_file_in_out_is_never_replaced(
    name: str, force: tuple[str, ...], tmp_path: Path, corpus_file: Path, cli_inprocess
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_text("my own measurements\n1 2 3\n")
    proc = cli_inprocess("train", corpus_file, "--out", out, *SHORT, *force)
    assert proc.returncode == 2, proc.stderr
    assert f"not charnn's {name}" in proc.stderr
    assert (out / name).read_text() == "my own measurements\n1 2 3\n"
    assert not (out / "latest").exists()


def test_a_save_killed_while_deleting_its_aside_copy_is_still_cleaned_up(
    trained_run_copy: Path, cli_inprocess
) -> None:
    # What a killed deletion leaves: some checkpoint files, the marker deleted last (or empty).
    old = trained_run_copy / ".latest.old"
    old.mkdir()
    (old / "train_state.safetensors").write_bytes(b"half")
    (trained_run_copy / ".latest.tmp").mkdir()
    proc = cli_inprocess("train", "--resume", trained_run_copy, "--steps", "6")
    assert proc.returncode == 0, proc.stderr
    assert not old.exists() and not (trained_run_copy / ".latest.tmp").exists()


def test_a_resumed_and_a_forced_run_accept_their_own_history(
    trained_run_copy: Path, corpus_file: Path, cli_inprocess
) -> None:
    proc = cli_inprocess("train", "--resume", trained_run_copy, "--steps", "6")
    assert proc.returncode == 0, proc.stderr
    proc = cli_inprocess("train", corpus_file, "--out", trained_run_copy, *SHORT, "--force")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (trained_run_copy / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["kind"] == "start" and rows[0]["step"] == 0
