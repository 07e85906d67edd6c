"""Data-parallel training (charnn.distributed): 2 CPU ranks with gloo under torchrun train (and
fine-tune) like one process with twice the batch, write one run directory, and resume only with
the same world."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from charnn.data import StreamBatcher
from charnn.distributed import Group, from_env
from charnn.errors import ConfigError
from tests.conftest import TINY_MODEL_ARGS

ARGS = (*TINY_MODEL_ARGS, "--seq-len", "16", "--eval-every", "3", "--seed", "3", "--device", "cpu")


def _torchrun(*args: str | os.PathLike[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NO_COLOR="1", OMP_NUM_THREADS="1", CHARNN_DIST_TIMEOUT="60")
    env.pop("CHARNN_DEBUG", None)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "charnn",
        *map(str, args),
    ]
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def _close(a: Path, b: Path, prefix: str = "") -> None:
    x, y = load_file(str(a)), load_file(str(b))
    keys = [k for k in x if k.startswith(prefix)]
    assert keys and sorted(keys) == sorted(k for k in y if k.startswith(prefix))
    for k in keys:
        np.testing.assert_allclose(x[k], y[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, corpus_text: str) -> Path:
    """The same 6 steps by 2 ranks of batch 4 (``ddp``) and by 1 process of batch 8 (``solo``)."""
    root = tmp_path_factory.mktemp("ddp")
    (root / "c.txt").write_text(corpus_text * 3)
    proc = _torchrun("train", "c.txt", "--out", "ddp", "--batch-size", "4", "--steps", "6", *ARGS, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "per process x 2 processes" in proc.stderr
    assert proc.stderr.count("done:") == 1  # only rank 0 reports
    from charnn.cli import main

    with pytest.raises(SystemExit) as exc:
        main(
            [
                "train",
                str(root / "c.txt"),
                "--out",
                str(root / "solo"),
                "--batch-size",
                "8",
                "--steps",
                "6",
                *ARGS,
            ]
        )
    assert exc.value.code == 0
    return root


def test_two_ranks_of_batch_b_train_like_one_process_of_2b(runs: Path) -> None:
    names = sorted(p.name for p in (runs / "ddp").iterdir() if not p.name.startswith("."))
    assert names == ["best", "latest", "metrics.jsonl"]  # one run directory, written by rank 0 alone
    meta = json.loads((runs / "ddp" / "latest" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["progress"]["step"] == 6
    # torchrun's OMP_NUM_THREADS=1 decides the threads, recorded as the plan settled them
    assert meta["train"]["threads"] == 1 and meta["run"]["threads"]["how"] == "OMP_NUM_THREADS"
    _close(runs / "ddp" / "latest" / "model.safetensors", runs / "solo" / "latest" / "model.safetensors")
    # The checkpoint holds both ranks' streams, in the order one process holds them.
    _close(
        runs / "ddp" / "latest" / "train_state.safetensors",
        runs / "solo" / "latest" / "train_state.safetensors",
        prefix="hidden.",
    )


def test_fine_tuning_under_two_ranks_trains_like_one_process(runs: Path, corpus_text: str) -> None:
    """``--init-from`` under torchrun: every rank plans the same child (the parent's weights,
    the vocabulary grown by the new text's characters), and 2 ranks of batch 4 train it like
    one process of batch 8."""
    new = runs / "new.txt"
    new.write_text(("жЖ€ " * 30 + "\n") * 40 + corpus_text, encoding="utf-8")
    common = ("train", new, "--init-from", runs / "solo", "--steps", "4", *ARGS)
    proc = _torchrun(*common, "-o", runs / "ft-ddp", "--batch-size", "4", cwd=runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("fine-tuning from") == 1  # planned by both ranks, said by rank 0
    assert proc.stderr.count("3 new character(s)") == 1
    from charnn.cli import main

    with pytest.raises(SystemExit) as exc:
        main([*map(str, common), "-o", str(runs / "ft-solo"), "--batch-size", "8"])
    assert exc.value.code == 0
    ddp = json.loads((runs / "ft-ddp" / "latest" / "meta.json").read_text())
    solo = json.loads((runs / "ft-solo" / "latest" / "meta.json").read_text())
    assert ddp["world_size"] == 2 and ddp["progress"]["step"] == 4
    assert ddp["parent"] == solo["parent"] and ddp["parent"]["path"] == str(
        (runs / "solo" / "best").resolve()
    )
    assert ddp["tokenizer"] == solo["tokenizer"] and ddp["tokenizer"]["chars"][-3:] == sorted("жЖ€")
    _close(
        runs / "ft-ddp" / "latest" / "model.safetensors", runs / "ft-solo" / "latest" / "model.safetensors"
    )


def test_resume_needs_the_same_world_size(runs: Path, cli_inprocess, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    shutil.copytree(runs / "ddp", tmp_path / "ddp")
    proc = cli_inprocess("train", "--resume", tmp_path / "ddp", "--steps", "9")
    assert proc.returncode == 2
    assert "trained by 2 process(es) and is resumed by 1" in proc.stderr
    assert "torchrun --nproc-per-node 2" in proc.stderr


def test_a_rank_takes_its_streams_of_a_checkpoints_hidden_state() -> None:
    import torch

    hidden = (torch.arange(24.0).reshape(1, 6, 4), -torch.arange(24.0).reshape(1, 6, 4))  # (layers, 2*3, H)
    parts = [Group(r, 2, r).own_hidden(hidden, 3) for r in range(2)]
    for i in range(2):
        joined = torch.cat([p[i] for p in parts], dim=1)  # type: ignore[index]
        assert torch.equal(joined, hidden[i])
    assert Group().own_hidden(hidden, 6) is hidden


def test_ranks_own_disjoint_streams_that_make_up_the_big_batch() -> None:
    data = np.arange(10_000, dtype=np.int64)
    whole = StreamBatcher(data, 6, 8, seed=1)
    parts = [StreamBatcher(data, 3, 8, seed=1, rank=r, world=2) for r in range(2)]
    for step in (0, 5, whole.windows_per_epoch + 2):
        x, y, reset = whole.batch(step)
        xs = [p.batch(step) for p in parts]
        np.testing.assert_array_equal(np.concatenate([b[0] for b in xs]), x)
        np.testing.assert_array_equal(np.concatenate([b[1] for b in xs]), y)
        assert all(b[2] == reset for b in xs)
    assert not set(parts[0].batch(0)[0].ravel()) & set(parts[1].batch(0)[0].ravel())


def test_environment() -> None:
    assert from_env({}) == Group(0, 1, 0)
    assert from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Group(1, 4, 1)
    with pytest.raises(ConfigError):
        from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ConfigError):
        from_env({"WORLD_SIZE": "two"})
