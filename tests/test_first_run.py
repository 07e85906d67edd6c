"""The first run as a new user meets it: `make demo` trains into checkpoints/demo, then the
README's next command (`charnn sample --temp 0.8`, no -c) must work; a -c that holds no
checkpoint names the runs below it; typos get "did you mean"; `charnn runs` sees nested runs."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from charnn.errors import EXIT_BAD_INPUT, EXIT_USAGE


def _place(run: Path, where: Path) -> Path:
    shutil.copytree(run, where)
    return where


def test_sample_without_c_finds_the_demo_run(run_cli, trained_run, tmp_path):
    _place(trained_run, tmp_path / "checkpoints" / "demo")
    proc = run_cli("sample", "--temp", "0.8", "--length", "20", "--seed", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) >= 20
    assert "checkpoints/demo" in proc.stderr  # says which run it used


def test_default_takes_the_newest_run(run_cli, trained_run, tmp_path):
    old = _place(trained_run, tmp_path / "checkpoints" / "a")
    new = _place(trained_run, tmp_path / "checkpoints" / "b")
    past = time.time() - 3600
    for meta in new.glob("*/meta.json"):
        os.utime(meta, (past, past))
    proc = run_cli("info", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["path"].startswith(str(Path("checkpoints") / old.name))


def test_default_prefers_a_run_in_checkpoints_itself(run_cli, trained_run, tmp_path):
    _place(trained_run, tmp_path / "checkpoints")
    _place(trained_run, tmp_path / "checkpoints" / "demo")
    proc = run_cli("info", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "demo" not in json.loads(proc.stdout)["path"] and "using" not in proc.stderr


def test_explicit_c_without_checkpoint_lists_runs_below(run_cli, trained_run, tmp_path):
    _place(trained_run, tmp_path / "runs" / "demo")
    proc = run_cli("sample", "-c", "runs", "--length", "5", cwd=tmp_path)
    assert proc.returncode == EXIT_BAD_INPUT
    assert "found: runs/demo: use -c runs/demo" in proc.stderr


def test_mistyped_c_gets_did_you_mean(run_cli, trained_run, tmp_path):
    _place(trained_run, tmp_path / "checkpoints" / "demo")
    proc = run_cli("sample", "-c", "checkpoints/dmeo", "--length", "5", cwd=tmp_path)
    assert proc.returncode == EXIT_BAD_INPUT
    assert "did you mean checkpoints/demo?" in proc.stderr


def test_corpus_name_typo_gets_did_you_mean(run_cli, tmp_path):
    proc = run_cli("train", "tinyshakespear", "--steps", "1", cwd=tmp_path)
    assert proc.returncode == EXIT_BAD_INPUT
    assert "did you mean tinyshakespeare?" in proc.stderr


def test_corpora_fetch_typo_gets_did_you_mean(run_cli, tmp_path):
    proc = run_cli("corpora", "fetch", "alcie", "--cache-dir", str(tmp_path))
    assert proc.returncode == EXIT_USAGE
    assert "did you mean alice?" in proc.stderr


def test_runs_lists_runs_nested_in_a_run(run_cli, trained_run, tmp_path):
    _place(trained_run, tmp_path / "checkpoints")
    _place(trained_run, tmp_path / "checkpoints" / "demo")
    _place(trained_run, tmp_path / "checkpoints" / "x" / "y" / "deep")
    proc = run_cli("runs", "checkpoints", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = sorted(json.loads(line)["name"] for line in proc.stdout.splitlines())
    assert names == ["checkpoints", "demo", "x/y/deep"]
