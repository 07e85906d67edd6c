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


# ---------------------------------------------------------------------------- 2. exact resume

EXACT = (*TINY_MODEL_ARGS, "--dropout", "0.1", "--seq-len", "16", "--batch-size", "4", "--seed", "5")
EXACT += ("--warmup", "2", "--device", "cpu", "--sample-every", "1")


def _history(run: Path) -> dict[str, object]:
    """Everything an exact resume must reproduce: weights and training state, validations
    (step, bpc, best), the stop, and the training samples."""
    meta = json.loads((run / "latest" / "meta.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [(r["step"], r["bpc"], r["is_best"]) for r in rows if r["kind"] == "val"]
    return {
        "step": meta["progress"]["step"],
        "files": meta["files"],
        "stopped": meta["progress"].get("stopped_reason"),
        "vals": vals,
        "stops": [r["step"] for r in rows if r["kind"] == "stop"],
        "samples": (run / "samples.txt").read_text(),
        "best": json.loads((run / "best" / "meta.json").read_text())["files"],
    }


def _interrupt_at_validation(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """SIGINT arrives while step ``step`` is being validated (deterministically)."""
    import signal

    from charnn.train import Trainer

    evaluate = Trainer.evaluate

    def interrupted(self: Trainer):  # type: ignore[no-untyped-def]
        result = evaluate(self)
        if self.progress.step == step:
            signal.raise_signal(signal.SIGINT)
        return result

    monkeypatch.setattr(Trainer, "evaluate", interrupted)


@pytest.mark.parametrize(
    "options,at",
    [
        (("--steps", "7", "--eval-every", "1"), 3),
        (("--steps", "7", "--eval-every", "1"), 7),
        (("--steps", "30", "--eval-every", "2", "--patience", "2", "--min-delta", "5"), 2),
        (("--steps", "30", "--eval-every", "2", "--patience", "2", "--min-delta", "5"), 4),
        (("--steps", "30", "--eval-every", "2", "--patience", "2", "--min-delta", "5"), 6),
        (("--steps", "30", "--eval-every", "3", "--patience", "1", "--min-delta", "5"), 6),
    ],
    ids=["every-step", "every-step-last", "patience-first", "patience-stale", "patience-stop", "patience-1"],
)
def test_a_run_interrupted_in_validation_resumes_to_the_same_run(
    options: tuple[str, ...], at: int, tmp_path: Path, corpus_file: Path, cli_inprocess, monkeypatch
) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    proc = cli_inprocess("train", corpus_file, "--out", whole, *EXACT, *options)
    assert proc.returncode == 0, proc.stderr
    assert ("early stopping" in proc.stderr) == ("--patience" in options)
    with monkeypatch.context() as patch:
        _interrupt_at_validation(patch, at)
        proc = cli_inprocess("train", corpus_file, "--out", split, *EXACT, *options)
    assert proc.returncode == 130, proc.stderr
    assert f"stopped at step {at};" in proc.stderr
    proc = cli_inprocess("train", "--resume", split)
    assert proc.returncode == 0, proc.stderr
    assert _history(split) == _history(whole)
