"""Fine-tuning (``train --init-from``): a new run from trained weights, with new characters
added to the vocabulary while every known character keeps its id and its weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_MODEL_ARGS, make_text
from safetensors.torch import load_file

NEW = "жЖ€"  # characters the generated corpus never uses
FT_ARGS = ("--seq-len", "16", "--batch-size", "4", "--device", "cpu", "--sample-every", "0")


def _new_text(tmp_path: Path) -> Path:
    """Text dominated by one new character, with a little of the old vocabulary."""
    path = tmp_path / "new.txt"
    lines = [("ж" * 6 + " ") * 4 + "Ж€" for _ in range(150)]
    path.write_text("\n".join(lines) + "\n" + make_text(lines=20, seed=3), encoding="utf-8")
    return path


def test_new_characters_get_new_rows_and_old_rows_stay_bit_identical(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from charnn.app import TrainRequest
    from charnn.checkpoint import load_checkpoint
    from charnn.run_plan import planned_run
    from charnn.train_records import NullReporter
    from charnn.trainer import Trainer

    parent = load_checkpoint(trained_run)  # best/
    old_chars = parent.tokenizer.chars
    request = TrainRequest(
        files=[str(_new_text(tmp_path))],
        out=str(tmp_path / "child"),
        init_from=str(trained_run),
        train={"steps": 5, "device": "cpu", "seq_len": 16},
    )
    with planned_run(request) as plan:
        trainer = Trainer(plan, NullReporter())  # step 0: nothing trained yet
    tok = trainer.corpus.tokenizer
    assert tok.chars[: len(old_chars)] == old_chars and sorted(tok.chars[len(old_chars) :]) == sorted(NEW)
    for i, char in enumerate(tok.chars):  # appended ids encode and decode like the old ones
        assert tok.encode(char).tolist() == [i] and tok.decode([i]) == char
    assert "3 new character(s) added to the vocabulary" in capsys.readouterr().err

    child = {k: v.detach() for k, v in trainer.model.state_dict().items()}
    v = len(old_chars)
    for name, weight in parent.torch_weights().items():
        if name in ("embed.weight", "head.weight", "head.bias"):
            assert child[name].shape[0] == v + len(NEW)
            assert child[name][:v].equal(weight), name
        else:
            assert child[name].equal(weight), name
    # New rows start like a fresh model's: unit-scale embeddings, zero output bias.
    assert child["embed.weight"][v:].std() > 0.3 and child["head.bias"][v:].eq(0).all()
    assert trainer.progress.step == 0 and not trainer.optimizer.state  # fresh optimizer


def test_fine_tuned_run_learns_the_new_characters(trained_run: Path, tmp_path: Path, cli_inprocess) -> None:
    new_text, child = _new_text(tmp_path), tmp_path / "child"
    proc = cli_inprocess(
        "train",
        new_text,
        "--init-from",
        trained_run,
        "-o",
        child,
        "--steps",
        "60",
        "--lr",
        "0.02",
        "--warmup",
        "0",
        *FT_ARGS,
    )
    assert proc.returncode == 0, proc.stderr
    assert "fine-tuning from" in proc.stderr and "new character(s)" in proc.stderr

    parent_meta = json.loads((trained_run / "best" / "meta.json").read_text())
    meta = json.loads((child / "latest" / "meta.json").read_text())
    assert meta["parent"]["path"] == str((trained_run / "best").resolve())
    assert meta["parent"]["step"] == parent_meta["progress"]["step"]
    assert meta["parent"]["model_sha256"] == parent_meta["files"]["model.safetensors"]
    old_chars = parent_meta["tokenizer"]["chars"]
    assert meta["tokenizer"]["chars"][: len(old_chars)] == old_chars
    assert meta["progress"]["step"] == 60  # a new run: its own step count
    embed = load_file(child / "latest" / "model.safetensors")["embed.weight"]
    assert embed.shape[0] == meta["model"]["vocab_size"] == len(old_chars) + len(NEW)

    proc = cli_inprocess("sample", "-c", child, "--seed", "1", "-n", "200")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("ж") > 20  # what the fine-tuned model writes now
    assert "parent" in cli_inprocess("info", "-c", child).stdout

    # The fine-tuned run resumes like any run and keeps its parent in the metadata.
    proc = cli_inprocess("train", "--resume", "--out", child, "--steps", "62")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((child / "latest" / "meta.json").read_text())["parent"] == meta["parent"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--resume",), "give one of them"),
        (("--hidden", "64"), "--hidden 64 (checkpoint has 32)"),
        (("--tokenizer", "sentencepiece"), "--tokenizer sentencepiece contradicts it"),
        (("--vocab-size", "300"), "drop --vocab-size"),
    ],
)
def test_contradicting_options_are_usage_errors(
    trained_run: Path, tmp_path: Path, cli_inprocess, extra: tuple[str, ...], message: str
) -> None:
    proc = cli_inprocess(
        "train", _new_text(tmp_path), "--init-from", trained_run, "-o", tmp_path / "child", *extra
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "child").exists()


def test_dropout_may_change_when_fine_tuning(trained_run: Path, tmp_path: Path, cli_inprocess) -> None:
    proc = cli_inprocess(
        "train",
        _new_text(tmp_path),
        "--init-from",
        trained_run,
        "-o",
        tmp_path / "child",
        "--dropout",
        "0.1",
        "--steps",
        "1",
        *FT_ARGS,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "child" / "latest" / "meta.json").read_text())["model"]["dropout"] == 0.1


def test_resume_on_new_text_points_at_init_from(
    trained_run_copy: Path, tmp_path: Path, cli_inprocess
) -> None:
    same_chars = tmp_path / "same.txt"
    same_chars.write_text(make_text(seed=7))
    for text in (same_chars, _new_text(tmp_path)):  # a changed corpus; one with unknown characters
        proc = cli_inprocess("train", text, "--resume", "--out", trained_run_copy, "--steps", "40")
        assert proc.returncode == 3, proc.stderr
        assert f"--init-from {trained_run_copy}" in proc.stderr, proc.stderr


def test_sentencepiece_keeps_its_tokenizer_and_uses_byte_fallback(
    corpus_file: Path, tmp_path: Path, cli_inprocess
) -> None:
    parent = tmp_path / "sp"
    proc = cli_inprocess(
        "train",
        corpus_file,
        "-o",
        parent,
        *TINY_MODEL_ARGS,
        "--tokenizer",
        "sentencepiece",
        "--vocab-size",
        "340",
        "--steps",
        "2",
        *FT_ARGS,
    )
    assert proc.returncode == 0, proc.stderr
    proc = cli_inprocess(
        "train",
        _new_text(tmp_path),
        "--init-from",
        parent,
        "-o",
        tmp_path / "child",
        "--steps",
        "2",
        *FT_ARGS,
    )
    assert proc.returncode == 0, proc.stderr
    assert "byte-fallback pieces" in proc.stderr
    before = json.loads((parent / "best" / "meta.json").read_text())
    after = json.loads((tmp_path / "child" / "latest" / "meta.json").read_text())
    assert after["tokenizer"] == before["tokenizer"] and after["model"] == before["model"]
