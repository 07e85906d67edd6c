"""Checkpoints are crash-safe and validated: SIGKILL at any moment of a save leaves a loadable
checkpoint, loading checks version/names/shapes/finiteness, and NaN is never written."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL_ARGS
from safetensors.torch import save as st_save

from charnn import checkpoint as ck
from charnn.checkpoint import (
    LATEST,
    CheckpointError,
    Counters,
    TrainingMeta,
    load_checkpoint,
    model_tensors,
    save_checkpoint,
)
from charnn.config import ModelConfig
from charnn.errors import CharnnError
from charnn.model import CharRNN
from charnn.tokenizer import CharTokenizer

TOKENIZER = CharTokenizer(list("\n abcdefgh"))


def tiny_model(seed: int = 0, **overrides: object) -> CharRNN:
    torch.manual_seed(seed)
    fields = {"vocab_size": TOKENIZER.vocab_size, "hidden": 8, "embed": 4, "layers": 1, **overrides}
    return CharRNN(ModelConfig(**fields))  # type: ignore[arg-type]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(torch.as_tensor(a[name]), torch.as_tensor(b[name])), name


# ---------------------------------------------------------------------------- round trip and validation


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = tiny_model(tie_weights=True, embed=8)
    save_checkpoint(
        tmp_path / "ck", model, TOKENIZER, TrainingMeta(progress=Counters(step=3)), {"x": torch.ones(2)}
    )
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.config == model.config and loaded.step == 3
    assert loaded.tokenizer.to_dict() == TOKENIZER.to_dict()
    assert_same_weights(loaded.weights, model_tensors(model))
    assert_same_weights(model_tensors(loaded.build_model()), model_tensors(model))
    assert torch.equal(loaded.train_state()["x"], torch.ones(2))


def test_saving_non_finite_weights_raises_and_keeps_the_old_checkpoint(tmp_path: Path) -> None:
    good = tiny_model()
    save_checkpoint(tmp_path / "ck", good, TOKENIZER)
    bad = tiny_model(seed=1)
    with torch.no_grad():
        bad.head.bias[0] = float("nan")
    with pytest.raises(CharnnError, match="non-finite"):
        save_checkpoint(tmp_path / "ck", bad, TOKENIZER)
    with pytest.raises(CharnnError, match="non-finite"):
        save_checkpoint(tmp_path / "ck", good, TOKENIZER, None, {"optim.0.m": torch.tensor([float("inf")])})
    assert_same_weights(load_checkpoint(tmp_path / "ck").weights, model_tensors(good))
    # No temporary leftovers (the run directory's lock file stays: see charnn.rundir).
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".lock") == ["ck"]


def _forge(directory: Path, tensors: dict[str, torch.Tensor], model_changes: dict | None = None) -> None:
    """Rewrite a checkpoint's weights/metadata with *valid* checksums, as a foreign tool could."""
    data = st_save(tensors)
    (directory / ck.MODEL_FILE).write_bytes(data)
    meta = json.loads((directory / ck.META).read_text())
    meta["files"][ck.MODEL_FILE] = ck._sha256(data)
    meta["model"].update(model_changes or {})
    meta["checksum"] = ck._meta_checksum(meta)
    (directory / ck.META).write_text(json.dumps(meta))


def test_loading_refuses_non_finite_weights_even_with_valid_checksums(tmp_path: Path) -> None:
    model = tiny_model()
    save_checkpoint(tmp_path / "ck", model, TOKENIZER)
    tensors = model_tensors(model)
    tensors["head.bias"][1] = float("inf")
    _forge(tmp_path / "ck", tensors)
    with pytest.raises(CheckpointError, match="not finite"):
        load_checkpoint(tmp_path / "ck")


def test_loading_checks_tensor_names_and_shapes_against_the_config(tmp_path: Path) -> None:
    model = tiny_model()
    save_checkpoint(tmp_path / "ck", model, TOKENIZER)
    tensors = model_tensors(model)
    _forge(tmp_path / "ck", {**tensors, "extra.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path / "ck")
    # A forged config claiming a huge model is refused from the shapes alone (nothing is allocated).
    _forge(tmp_path / "ck", tensors, {"hidden": 10**7})
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path / "ck")
    _forge(tmp_path / "ck", tensors, {"hidden": "8"})
    with pytest.raises(CheckpointError, match="bad model config"):
        load_checkpoint(tmp_path / "ck")


# ---------------------------------------------------------------------------- crash safety


def test_crash_between_renames_is_recovered(tmp_path: Path) -> None:
    """State after a kill between 'rename old aside' and 'rename new into place'."""
    run = tmp_path / "run"
    model = tiny_model()
    save_checkpoint(run / LATEST, model, TOKENIZER, TrainingMeta(progress=Counters(step=5)))
    (run / LATEST).rename(run / ".latest.old")
    (run / ".latest.tmp-999999999").mkdir()  # a save killed while writing (its pid is gone)
    assert load_checkpoint(run).step == 5  # run directory
    assert load_checkpoint(run / LATEST).step == 5  # the checkpoint's own (missing) path
    save_checkpoint(run / LATEST, tiny_model(seed=2), TOKENIZER, TrainingMeta(progress=Counters(step=6)))
    assert sorted(p.name for p in run.iterdir() if p.name != ".lock") == [LATEST]
    assert load_checkpoint(run).step == 6


_SAVE_LOOP = r"""
import sys, torch
from pathlib import Path
from charnn.checkpoint import Counters, TrainingMeta, save_checkpoint
from charnn.config import ModelConfig
from charnn.model import CharRNN
from charnn.tokenizer import CharTokenizer
tok = CharTokenizer(list("\n abcdefgh"))
model = CharRNN(ModelConfig(vocab_size=tok.vocab_size, hidden=64, embed=16, layers=2))
target, step = Path(sys.argv[1]), 0
while True:
    with torch.no_grad():  # every save has distinct contents that must match its own metadata
        for p in model.parameters():
            p.fill_(step % 7)
    meta = TrainingMeta(progress=Counters(step=step))
    save_checkpoint(target, model, tok, meta, {"state": torch.full((5000,), step)})
    if step == 0:
        print("ready", flush=True)
    step += 1
"""


def test_sigkill_during_save_loop_always_leaves_a_loadable_checkpoint(tmp_path: Path, cli_env) -> None:
    target = tmp_path / "run" / LATEST
    rng = random.Random(1234)
    last_step = -1
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", _SAVE_LOOP, str(target)], stdout=subprocess.PIPE, text=True, env=cli_env()
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.25))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        ckpt = load_checkpoint(target)  # may come from the .latest.old aside
        step = ckpt.step
        assert step >= 0
        for name, tensor in ckpt.weights.items():
            assert (tensor == step % 7).all(), f"{name} is not from the save of step {step}"
        assert torch.all(ckpt.train_state()["state"] == step)
        last_step = max(last_step, step)
    assert last_step > 0  # the loop really saved repeatedly while we were killing it


def test_sigkill_during_training_with_save_every_1(
    tmp_path: Path, corpus_file: Path, cli_command, cli_env
) -> None:
    out = tmp_path / "run"
    rng = random.Random(99)
    first = [
        "train",
        corpus_file,
        "--out",
        out,
        *TINY_MODEL_ARGS,
        "--steps",
        "100000",
        "--seq-len",
        "16",
        "--batch-size",
        "4",
        "--save-every",
        "1",
        "--eval-every",
        "100000",
        "--device",
        "cpu",
    ]
    steps = []
    for attempt in range(3):
        args = first if attempt == 0 else ["train", "--resume", "--out", out]
        proc = subprocess.Popen(
            cli_command(*args), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=cli_env()
        )
        try:
            assert proc.stderr is not None
            for line in proc.stderr:  # the first progress line comes after the first step
                if line.startswith("step "):
                    break
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        steps.append(load_checkpoint(out, prefer=LATEST).step)
    assert steps == sorted(steps) and steps[-1] > 0
