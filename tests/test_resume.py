"""Exact resume through the CLI: a run stopped at N and resumed to 2N is bit-identical to a
run of 2N, and resuming refuses anything that would silently make a different run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_MODEL_ARGS, make_text
from safetensors.torch import load_file

# Two layers with dropout so the restored RNG state matters; warm-up shorter than N so the
# schedule's decay phase spans the resume point.
RESUME_ARGS = (
    "--hidden",
    "24",
    "--embed",
    "8",
    "--layers",
    "2",
    "--dropout",
    "0.1",
    "--seq-len",
    "16",
    "--batch-size",
    "4",
    "--warmup",
    "3",
    "--eval-every",
    "5",
    "--seed",
    "3",
    "--device",
    "cpu",
)
N = 8


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path: Path, corpus_file: Path, run_cli) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    whole.mkdir(), split.mkdir()
    proc = run_cli("train", corpus_file, "--out", "run", *RESUME_ARGS, "--steps", 2 * N, cwd=whole)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(
        "train", corpus_file, "--out", "run", *RESUME_ARGS, "--steps", N, "--decay-steps", 2 * N, cwd=split
    )
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("train", "--resume", "--out", "run", "--steps", 2 * N, cwd=split)
    assert proc.returncode == 0, proc.stderr
    assert f"resuming at step {N}" in proc.stderr

    a = load_file(whole / "run" / "latest" / "model.safetensors")
    b = load_file(split / "run" / "latest" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape
        assert a[name].equal(b[name]), f"{name} differs after resume"
    meta_a = json.loads((whole / "run" / "latest" / "meta.json").read_text())
    meta_b = json.loads((split / "run" / "latest" / "meta.json").read_text())
    assert meta_a["progress"]["step"] == meta_b["progress"]["step"] == 2 * N
    assert meta_a["files"] == meta_b["files"]  # same weights and same optimizer/RNG/hidden state

    # Same relative checkpoint path from each directory, so the JSON (which names it) can match exactly.
    evals = [run_cli("eval", corpus_file, "-c", "run/latest", "--json", cwd=d) for d in (whole, split)]
    assert all(e.returncode == 0 for e in evals), [e.stderr for e in evals]
    assert evals[0].stdout == evals[1].stdout and json.loads(evals[0].stdout)["bpc"] > 0


def test_resume_with_contradictory_options_is_a_usage_error(
    trained_run_copy: Path, run_cli, cli_inprocess
) -> None:
    meta = (trained_run_copy / "latest" / "meta.json").read_bytes()
    proc = run_cli("train", "--resume", "--out", trained_run_copy, "--hidden", "64")
    results = [proc, cli_inprocess("train", "--resume", "--out", trained_run_copy, "--batch-size", "3")]
    for proc, option in zip(results, ("--hidden 64 (run has 32)", "--batch-size 3 (run has 8)"), strict=True):
        assert proc.returncode == 2, proc.stderr
        assert "contradict" in proc.stderr and option in proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert (trained_run_copy / "latest" / "meta.json").read_bytes() == meta  # nothing touched


def test_resume_on_another_corpus_is_refused(trained_run_copy: Path, tmp_path: Path, cli_inprocess) -> None:
    other = tmp_path / "other.txt"
    other.write_text(make_text(seed=7))
    proc = cli_inprocess("train", other, "--resume", "--out", trained_run_copy, "--steps", "40")
    assert proc.returncode == 3, proc.stderr
    assert "corpus differs" in proc.stderr


def test_resume_without_a_checkpoint_is_bad_input(
    tmp_path: Path, corpus_file: Path, run_cli, cli_inprocess
) -> None:
    proc = run_cli("train", corpus_file, "--resume", "--out", tmp_path / "nothing-here")
    assert proc.returncode == 3, proc.stderr
    assert "no such checkpoint" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = cli_inprocess("train", corpus_file, "--resume", tmp_path / "empty")
    assert proc.returncode == 3, proc.stderr
    assert "no checkpoint here" in proc.stderr


def test_fresh_train_into_an_existing_run_needs_force(
    trained_run_copy: Path, corpus_file: Path, run_cli, cli_inprocess
) -> None:
    meta = (trained_run_copy / "latest" / "meta.json").read_bytes()
    proc = run_cli("train", corpus_file, "--out", trained_run_copy, *TINY_MODEL_ARGS, "--steps", "3")
    assert proc.returncode == 2, proc.stderr
    assert "already holds a run" in proc.stderr and "--force" in proc.stderr
    assert (trained_run_copy / "latest" / "meta.json").read_bytes() == meta

    # A run whose save was interrupted between renames (only the aside is left) still counts.
    (trained_run_copy / "latest").rename(trained_run_copy / ".latest.old")
    (trained_run_copy / "best").rename(trained_run_copy / ".best.old")
    proc = cli_inprocess("train", corpus_file, "--out", trained_run_copy, *TINY_MODEL_ARGS, "--steps", "3")
    assert proc.returncode == 2, proc.stderr

    proc = run_cli(
        "train",
        corpus_file,
        "--out",
        trained_run_copy,
        *TINY_MODEL_ARGS,
        "--steps",
        "3",
        "--seq-len",
        "16",
        "--batch-size",
        "4",
        "--eval-every",
        "100",
        "--force",
    )
    assert proc.returncode == 0, proc.stderr
    info = cli_inprocess("info", "-c", trained_run_copy, "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["step"] == 3  # the new run, not the old best (step 30)


# ---------------------------------------------------------------------------- numerical faults
# Recovery is "resume from latest/ with a lower learning rate", so it lives with the resume tests.


def _poisoned_trainer(
    tmp_path: Path, corpus_text: str, bad_calls: dict[int, str], monkeypatch, **train: object
):
    """A tiny in-process Trainer whose training forward pass turns bad on chosen calls (1-based):
    'loss' makes the logits NaN, 'grad' keeps the loss finite but makes the gradient NaN.
    Every checkpoint written is checked finite as it is saved."""
    import torch

    import charnn.trainer as train_mod
    from charnn.checkpoint import load_checkpoint
    from charnn.config import ModelConfig, TrainConfig
    from charnn.data import load_corpus
    from charnn.run_plan import RunPlan
    from charnn.train_records import NullReporter

    (tmp_path / "c.txt").write_text(corpus_text)
    corpus = load_corpus([str(tmp_path / "c.txt")])
    config = TrainConfig(
        **{
            "batch_size": 4,
            "seq_len": 16,
            "warmup_steps": 0,
            "eval_every": 1000,
            "device": "cpu",
            "seed": 5,
            **train,
        }
    )  # type: ignore[arg-type]
    model_config = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, hidden=16, embed=8, layers=1)
    trainer = train_mod.Trainer(RunPlan.fresh(corpus, model_config, config, tmp_path / "run"), NullReporter())
    calls = {"n": 0}
    real_forward = trainer.model.forward

    def forward(idx, hidden=None):
        logits, hidden = real_forward(idx, hidden)
        if trainer.model.training:
            calls["n"] += 1
            kind = bad_calls.get(calls["n"])
            if kind == "loss":
                logits = logits * float("nan")
            elif kind == "grad":
                logits.register_hook(lambda g: torch.full_like(g, float("nan")))
        return logits, hidden

    monkeypatch.setattr(trainer.model, "forward", forward)
    saved: list[tuple[int, int]] = []  # (step, skipped_steps) of every checkpoint written
    real_save = trainer.keeper.save

    def checked_save(which, progress, hidden, averaged=None):
        real_save(which, progress, hidden, averaged)
        ckpt = load_checkpoint(tmp_path / "run" / which)  # validates every weight is finite
        assert all(torch.isfinite(t).all() for t in ckpt.train_state().values() if t.is_floating_point())
        saved.append((ckpt.step, ckpt.meta.progress.skipped_steps))

    monkeypatch.setattr(trainer.keeper, "save", checked_save)
    return trainer, saved


def test_non_finite_steps_are_skipped_then_recovered_with_a_lower_lr(
    tmp_path: Path, corpus_text: str, monkeypatch
) -> None:
    from charnn.checkpoint import load_checkpoint

    # Calls 5-7 bad: 5 and 6 are skipped (with a save due at 6, deferred), 7 makes three in a row:
    # restore latest/ (step 4) at half the learning rate and replay from there.
    trainer, saved = _poisoned_trainer(
        tmp_path,
        corpus_text,
        {5: "loss", 6: "grad", 7: "loss"},
        monkeypatch,
        steps=12,
        save_every=2,
        max_bad_steps=3,
    )
    summary = trainer.run()
    assert summary["step"] == 12 and summary["skipped_steps"] == 3
    assert any("restoring the last checkpoint" in m for m in trainer.reporter.messages)
    # Nothing was checkpointed in the middle of the bad steps (that would have become the recovery base).
    assert [skipped for _, skipped in saved] == [0, 0, 0] + [3] * (len(saved) - 3)
    meta = load_checkpoint(tmp_path / "run", prefer="latest").meta
    assert meta.progress.skipped_steps == 3
    assert meta.progress.lr_scale == 0.5
    assert trainer.lr_at(11) < trainer.config.lr * 0.5 + 1e-12


def test_bad_steps_again_after_recovery_raise_diverged(tmp_path: Path, corpus_text: str, monkeypatch) -> None:
    from charnn.errors import DivergedError

    trainer, saved = _poisoned_trainer(
        tmp_path,
        corpus_text,
        {n: "loss" for n in range(4, 100)},
        monkeypatch,
        steps=50,
        save_every=1,
        max_bad_steps=2,
    )
    with pytest.raises(DivergedError) as info:
        trainer.run()
    assert info.value.exit_code == 4
    assert max(step for step, _ in saved) == 3  # latest/ is still the last good step


def test_absurd_learning_rate_exits_4(tmp_path: Path, corpus_file: Path, run_cli) -> None:
    # lr 1e6 without clipping overflows the weights within ~10 steps on this corpus; saving every
    # step checks that no overflowed (inf/NaN) weights are ever written on the way.
    proc = run_cli(
        "train",
        corpus_file,
        "--out",
        tmp_path / "run",
        *TINY_MODEL_ARGS,
        "--steps",
        "200",
        "--seq-len",
        "16",
        "--batch-size",
        "4",
        "--lr",
        "1e6",
        "--grad-clip",
        "0",
        "--warmup",
        "0",
        "--max-bad-steps",
        "2",
        "--save-every",
        "1",
        "--device",
        "cpu",
    )
    assert proc.returncode == 4, proc.stderr
    assert "diverged" in proc.stderr and "Traceback" not in proc.stderr
    from charnn.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "run", prefer="latest").step > 0  # loadable, hence finite
