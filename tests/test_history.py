"""A run's history and the commands that look back at runs: metrics.jsonl (across resume and
SIGKILL), early stopping, ``charnn runs``, ``charnn plot``, ``info --json`` with repeated ``-c``,
and the progress people see on a non-terminal."""

from __future__ import annotations

import io
import json
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import TINY_MODEL_ARGS, make_text

from charnn.checkpoint_meta import meta_checksum
from charnn.metrics import METRICS, MetricsLog, read_metrics
from charnn.metrics_rows import ProgressRow, ValRow

TINY = (*TINY_MODEL_ARGS, "--seq-len", "16", "--batch-size", "4", "--device", "cpu", "--seed", "1")


def _rows(run: Path, kind: str | None = None) -> list[dict]:
    lines = (run / METRICS).read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]  # every line is whole, valid JSON
    return [r for r in rows if kind is None or r["kind"] == kind]


def _strictly_increasing(values: list[int]) -> bool:
    return all(a < b for a, b in zip(values, values[1:], strict=False))


# ---------------------------------------------------------------------------- metrics.jsonl


def test_metrics_rows_continue_across_resume(tmp_path: Path, corpus_file: Path, cli_inprocess) -> None:
    out = tmp_path / "run"
    first = cli_inprocess("train", corpus_file, "--out", out, *TINY, "--steps", "20", "--eval-every", "10")
    assert first.returncode == 0, first.stderr
    rows = _rows(out)
    assert [r["kind"] for r in rows][:2] == ["start", "progress"] and rows[-1]["kind"] == "end"
    progress = _rows(out, "progress")
    assert progress[0]["step"] == 1 and progress[-1]["step"] == 20
    assert {"elapsed", "tokens", "chars", "loss", "bpc", "lr", "chars_per_s"} <= progress[-1].keys()
    assert progress[-1]["tokens"] == progress[-1]["chars"] == 20 * 4 * 16
    assert [r["step"] for r in _rows(out, "val")] == [10, 20]
    # A crash after the last save leaves an abandoned tail (and maybe a torn line): resume drops it.
    with open(out / METRICS, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"kind": "progress", "step": 27, "elapsed": 9.0, "bpc": 1.0}) + "\n")
        fh.write('{"kind": "progress", "st')
    assert read_metrics(out / METRICS)[-1].step == 27  # the torn line is skipped when read
    second = cli_inprocess("train", "--resume", out, "--steps", "40")
    assert second.returncode == 0, second.stderr
    rows = _rows(out)
    assert [r["step"] for r in rows if r["kind"] == "start"] == [0, 20]
    steps = [r["step"] for r in _rows(out, "progress")]
    assert _strictly_increasing(steps) and steps[-1] == 40 and 27 not in steps
    assert [r["step"] for r in _rows(out, "val")] == [10, 20, 30, 40]
    elapsed = [r["elapsed"] for r in _rows(out, "progress")]
    assert elapsed == sorted(elapsed)  # seconds since the run began, summed over both sessions


def test_metrics_survive_sigkill(
    tmp_path: Path, corpus_file: Path, cli_command, cli_env, cli_inprocess
) -> None:
    out = tmp_path / "run"
    cmd = cli_command(
        "train",
        corpus_file,
        "--out",
        out,
        *TINY,
        "--steps",
        "1000000",
        "--eval-every",
        "10",
        "--save-every",
        "25",
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env())
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            vals = [r for r in read_metrics(out / METRICS) if isinstance(r, ValRow)]
            if vals and vals[-1].step >= 30:
                break
            time.sleep(0.05)
        else:
            pytest.fail("training never reached step 30")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    saved = json.loads((out / "latest" / "meta.json").read_text())["progress"]["step"]
    # Rows past the last save (if the kill came after some) are the abandoned tail; resume drops them.
    assert read_metrics(out / METRICS)[-1].step >= saved
    resumed = cli_inprocess("train", "--resume", out, "--steps", str(saved + 20))
    assert resumed.returncode == 0, resumed.stderr
    rows = _rows(out)
    assert [r["step"] for r in rows if r["kind"] == "start"] == [0, saved]
    for kind in ("progress", "val"):
        steps = [r["step"] for r in rows if r["kind"] == kind]
        assert _strictly_increasing(steps), (kind, steps)
    assert rows[-1]["kind"] == "end" and rows[-1]["step"] == saved + 20


def test_metrics_log_rewind_is_atomic_and_drops_torn_lines(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / METRICS)
    for step in range(1, 6):
        log.append(ProgressRow(step=step, bpc=float("nan") if step == 3 else 1.0))
    log.close()
    with open(tmp_path / METRICS, "a", encoding="utf-8") as fh:
        fh.write('{"kind": "pro')
    log.rewind(4)
    assert [r.step for r in read_metrics(tmp_path / METRICS)] == [1, 2, 3, 4]
    assert _rows(tmp_path, "progress")[2]["bpc"] is None  # NaN written as null: still valid JSON
    assert not list(tmp_path.glob(".*.tmp"))


# ---------------------------------------------------------------------------- early stopping


def test_patience_stops_a_run_whose_validation_stalls(tmp_path: Path, cli_inprocess) -> None:
    # The training part is learnable English-like text; the held-out tail is random characters
    # from the same alphabet, which no amount of training predicts better.
    text = make_text(400)
    rng = random.Random(0)
    alphabet = sorted(set(text))
    noise = "".join(rng.choice(alphabet) for _ in range(len(text) // 3))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text + noise, encoding="utf-8")
    out = tmp_path / "run"
    proc = cli_inprocess(
        "train",
        corpus,
        "--out",
        out,
        *TINY,
        "--steps",
        "2000",
        "--eval-every",
        "10",
        "--eval-chars",
        "2000",
        "--val-fraction",
        "0.25",
        "--patience",
        "3",
        "--min-delta",
        "0.01",
    )
    assert proc.returncode == 0, proc.stderr
    assert "early stopping at step" in proc.stderr and "(stopped early)" in proc.stderr
    stop = _rows(out, "stop")
    assert len(stop) == 1 and stop[0]["step"] < 2000
    vals = _rows(out, "val")
    assert vals[-1]["step"] == stop[0]["step"]  # the last validation, not validated again at the end
    assert len({r["step"] for r in vals}) == len(vals)
    best_meta = json.loads((out / "latest" / "meta.json").read_text())
    assert best_meta["progress"]["stopped_reason"].startswith("early stopping")
    best_step = json.loads((out / "best" / "meta.json").read_text())["progress"]["step"]
    assert best_step == min(vals, key=lambda r: r["bpc"])["step"]  # best/ holds the model to use
    info = json.loads(cli_inprocess("info", "-c", out / "latest", "--json").stdout)
    assert info["stopped_reason"] == best_meta["progress"]["stopped_reason"]


def test_early_stop_counter_survives_resume() -> None:
    from charnn.checkpoint import Counters
    from charnn.trainer import EarlyStop

    stop = EarlyStop(patience=3, min_delta=0.1)
    prog = Counters()
    assert stop.observe(prog, 2.0) is None and prog.stale_evals == 0
    assert stop.observe(prog, 1.95) is None and prog.stale_evals == 1  # < min_delta: no improvement
    resumed = Counters(**json.loads(json.dumps(prog.to_dict())))  # through a checkpoint's JSON
    assert EarlyStop(3, 0.1).observe(resumed, 1.99) is None
    assert EarlyStop(3, 0.1).observe(resumed, float("nan")) is not None
    assert EarlyStop(None, 0.0).observe(Counters(stale_evals=99, patience_best=1.0), 2.0) is None  # off


# ---------------------------------------------------------------------------- runs / info


def test_runs_json_sorts_by_best_bpc(tmp_path: Path, trained_run: Path, cli_inprocess) -> None:
    root = tmp_path / "runs"
    names = {"b": 2.5, "a": 1.5, "c[bold]": 3.5}  # a name that looks like rich markup
    for name, bpc in names.items():
        dest = root / "group" / name
        shutil.copytree(trained_run, dest)
        for which in ("latest", "best"):  # runs reads metadata only; the weights are not loaded
            meta_file = dest / which / "meta.json"
            meta = json.loads(meta_file.read_text())
            meta["progress"]["best_val_bpc"] = bpc
            meta["checksum"] = meta_checksum(meta)  # runs validates metadata as every command does
            meta_file.write_text(json.dumps(meta))
    shutil.copytree(trained_run, root / ".hidden" / "run")  # hidden directories are skipped
    proc = cli_inprocess("runs", root, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["name"] for r in rows] == ["group/a", "group/b", "group/c[bold]"]
    assert [r["best_val_bpc"] for r in rows] == [1.5, 2.5, 3.5]
    assert rows[0]["steps"] == 30 and rows[0]["cell"] == "lstm" and isinstance(rows[0]["parameters"], int)
    assert rows[0]["tokenizer"]["kind"] == "char" and rows[0]["corpus"][0].endswith("corpus.txt")
    table = cli_inprocess("runs", root)
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["run", "best", "bpc"]
    assert [line.split()[0] for line in lines[1:]] == ["group/a", "group/b", "group/c[bold]"]  # literal


def test_info_accepts_several_checkpoints(trained_run: Path, cli_inprocess, monkeypatch) -> None:
    proc = cli_inprocess("info", "-c", trained_run, "-c", trained_run / "latest", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["best", "latest"]
    text = cli_inprocess("info", "-c", trained_run, "-c", trained_run / "latest")
    assert text.stdout.count("parameters") == 2
    monkeypatch.setenv("CHARNN_CHECKPOINT", str(trained_run / "latest"))
    from_env = cli_inprocess("info", "--json")
    assert Path(json.loads(from_env.stdout)["path"]).name == "latest"


# ---------------------------------------------------------------------------- plot


def test_plot_writes_a_png(trained_run: Path, tmp_path: Path, cli_inprocess) -> None:
    pytest.importorskip("matplotlib")
    target = tmp_path / "curves.png"
    proc = cli_inprocess("plot", trained_run, trained_run, "-o", target, "--x", "time")
    assert proc.returncode == 0, proc.stderr
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and target.stat().st_size > 5000
    svg = tmp_path / "curves.svg"
    assert cli_inprocess("plot", trained_run, "-o", svg).returncode == 0
    assert b"<svg" in svg.read_bytes()[:1000]
    bad = cli_inprocess("plot", trained_run, "-o", tmp_path / "curves.gif")
    assert bad.returncode == 2 and ".png or .svg" in bad.stderr


def test_plot_without_matplotlib_names_the_extra(
    trained_run: Path, tmp_path: Path, cli_inprocess, monkeypatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    proc = cli_inprocess("plot", trained_run, "-o", tmp_path / "x.png")
    assert proc.returncode == 1
    assert "pip install 'charnn[plot]'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_terminal_chart_on_a_non_tty(trained_run: Path, cli_inprocess) -> None:
    proc = cli_inprocess("plot", trained_run, "--width", "60", "--x", "chars")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "\x1b[" not in proc.stdout  # no colour codes in a pipe
    assert all(len(line) <= 60 for line in lines)
    assert sum("┤" in line for line in lines) == 16  # --height rows of plot
    assert "●" in proc.stdout and "·" in proc.stdout  # validation and training marks
    assert "run train" in lines[-1] and "run val" in lines[-1]
    assert "chars" in lines[-2]


def test_plot_of_a_directory_without_history(tmp_path: Path, cli_inprocess) -> None:
    proc = cli_inprocess("plot", tmp_path)
    assert proc.returncode == 3 and "metrics.jsonl" in proc.stderr


# ---------------------------------------------------------------------------- progress


def _report(step: int, fraction: float):
    from charnn.train_records import StepReport

    return StepReport(
        step=step,
        total=100,
        fraction=fraction,
        loss=1.0,
        bpc=1.44,
        tok_per_s=1000.0,
        lr=1e-3,
        skipped=0,
        elapsed=0.0,
        chars_per_s=1000.0,
    )


def test_non_tty_progress_has_elapsed_and_eta(monkeypatch) -> None:
    from rich.console import Console

    from charnn import console as console_module
    from charnn.train_records import RunInfo

    now = [1000.0]
    monkeypatch.setattr(console_module.time, "monotonic", lambda: now[0])
    monkeypatch.setenv("TERM", "dumb")
    buf = io.StringIO()
    # A terminal rich cannot redraw (TERM=dumb) gets the plain lines, not a silent live bar.
    reporter = console_module.TrainReporter(Console(file=buf, force_terminal=True, width=200), log_every=10)
    assert not reporter.live
    reporter.start(RunInfo("cpu", 10, 100, 10, 5, 4, 100, None, False, 0, "out"))
    reporter.progress(_report(1, 0.0))
    now[0] += 30
    reporter.progress(_report(25, 0.25))
    lines = buf.getvalue().splitlines()
    assert "elapsed 30s eta 1m30s" in lines[-1]  # 25 % in 30 s: 90 s to go
    reporter.validating(25)  # no bar, nothing to redraw
    assert "step 1/100" in lines[1] and "eta ?" in lines[1]


def test_live_bar_shows_validating_instead_of_a_frozen_bar(monkeypatch) -> None:
    from rich.console import Console

    from charnn.console import TrainReporter
    from charnn.train_records import RunInfo

    monkeypatch.setenv("TERM", "xterm")
    buf = io.StringIO()
    reporter = TrainReporter(Console(file=buf, force_terminal=True, force_interactive=True, width=100))
    assert reporter.live
    reporter.start(RunInfo("cpu", 10, 100, 10, 5, 4, 100, None, False, 0, "out"))
    reporter.progress(_report(90, 0.9))
    reporter.validating(90)
    reporter.close()  # the last frame drawn is the validating state
    frames = [f for f in buf.getvalue().replace("\r", "\n").splitlines() if "step 90" in f]
    assert frames and "validating…" in frames[-1]


def test_quiet_train_prints_only_the_final_line(tmp_path: Path, corpus_file: Path, cli_inprocess) -> None:
    proc = cli_inprocess("train", corpus_file, "--out", tmp_path / "run", *TINY, "--steps", "5", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("done: 5 steps") and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout == ""


def test_version_names_torch_and_devices(cli_inprocess) -> None:
    proc = cli_inprocess("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("charnn ") and "torch 2." in proc.stdout and "devices: cpu" in proc.stdout


def test_environment_variables_set_options(
    tmp_path: Path, corpus_file: Path, cli_inprocess, monkeypatch
) -> None:
    import torch

    monkeypatch.setenv("CHARNN_OUT", str(tmp_path / "from-env"))
    monkeypatch.setenv("CHARNN_TRAIN_SEQ_LEN", "8")  # the automatic CHARNN_<COMMAND>_<OPTION>
    proc = cli_inprocess("train", corpus_file, *TINY_MODEL_ARGS, "--steps", "2", "-q", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "from-env" / "latest" / "meta.json").read_text())
    assert meta["train"]["seq_len"] == 8
    if not torch.cuda.is_available():
        monkeypatch.setenv("CHARNN_DEVICE", "cuda")
        proc = cli_inprocess("train", corpus_file, "--out", tmp_path / "x", *TINY_MODEL_ARGS, "--steps", "2")
        assert proc.returncode == 2 and "--device cuda: no CUDA device" in proc.stderr
