"""Progress rows store bits per character and bits per token under honest names (old rows are
still read); plots name runs with the same leaf by their shortest unique path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import TINY_MODEL_ARGS

from charnn.metrics import read_metrics
from charnn.metrics_rows import ProgressRow
from charnn.plotting import load_series, run_labels

FAST = ("--seq-len", "16", "--batch-size", "4", "--device", "cpu", "--sample-every", "0")


def test_subword_progress_rows_hold_bpc_and_bpt(run_cli, corpus_file, tmp_path):
    run = tmp_path / "sub"
    proc = run_cli(
        "train", corpus_file, "-o", run, "--tokenizer", "unigram", "--vocab-size", "400",
        "--steps", "6", "--eval-every", "6", *TINY_MODEL_ARGS, *FAST,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    progress = [r for r in rows if r["kind"] == "progress"]
    assert progress and all("bpt" in r and "bpc" in r for r in progress)
    last = progress[-1]
    # A piece spells several characters: bits per character are well below bits per token.
    assert last["bpc"] < last["bpt"] / 1.3
    val = next(r for r in rows if r["kind"] == "val")
    assert abs(last["bpc"] - val["bpc"]) < abs(last["bpt"] - val["bpc"])  # comparable with validation
    train = next(s for s in load_series([str(run)], "steps") if s.kind == "train")
    assert train.ys[-1] == last["bpc"]
    typed = [r for r in read_metrics(run / "metrics.jsonl") if isinstance(r, ProgressRow)]
    assert typed and all(r.bpt is not None for r in typed)


def test_old_progress_rows_are_read_as_bits_per_character(tmp_path):
    old = {
        "kind": "progress",
        "step": 5,
        "elapsed": 1.0,
        "tokens": 100,
        "chars": 300,
        "loss": 4.0,
        "bpc": 6.0,
    }

    def bpc(data: dict) -> float | None:
        return ProgressRow.from_json(data, "progress").char_bpc

    assert bpc(old) == 2.0  # bits per token rescaled by chars per token
    assert bpc({**old, "chars": 100}) == 6.0  # characters: unchanged
    assert bpc({**old, "bpt": 6.0, "bpc": 2.5}) == 2.5  # new rows as written
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps(old) + "\n")
    assert load_series([str(run)], "steps")[0].ys == [2.0]


def test_runs_with_the_same_leaf_get_distinct_labels(run_cli, trained_run, tmp_path):
    for parent in ("xa", "xb"):
        shutil.copytree(trained_run, tmp_path / parent / "run")
    series = load_series([str(tmp_path / "xa" / "run"), str(tmp_path / "xb" / "run")], "steps")
    assert sorted({s.run for s in series}) == ["xa/run", "xb/run"]
    proc = run_cli("plot", tmp_path / "xa" / "run", tmp_path / "xb" / "run", "--width", "60")
    assert proc.returncode == 0 and "xa/run" in proc.stdout and "xb/run" in proc.stdout


def test_run_labels() -> None:
    assert run_labels([Path("/a/x/run"), Path("/a/y/run"), Path("/b/other")]) == ["x/run", "y/run", "other"]
    assert run_labels([Path("/p/q/run"), Path("/r/q/run")]) == ["p/q/run", "r/q/run"]
    assert run_labels([Path("/a/run"), Path("/a/run")]) == ["run", "run"]
