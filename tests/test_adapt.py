"""`--adapt` for eval and score: dynamic evaluation, a model that keeps learning as it reads.

Every token is predicted before the model learns from it; the figures are reported apart from
the static ones, and the checkpoint is never modified."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

RunCli = Callable[..., subprocess.CompletedProcess[str]]
# A habit the corpus never had: only a model that learns while reading can pick it up.
HABIT = "zebra quokka " * 150


def _digest(run: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in run.rglob("*")
        if p.is_file()
    }


def test_eval_adapt_learns_a_new_habit_and_reports_it_separately(
    trained_run_copy: Path, run_cli: RunCli, tmp_path: Path
) -> None:
    text = tmp_path / "habit.txt"
    text.write_text(HABIT)
    before = _digest(trained_run_copy)
    proc = run_cli("eval", "-c", trained_run_copy, text, "--adapt", "--adapt-lr", "0.1", "--json")
    assert proc.returncode == 0, proc.stderr
    static, adaptive = (json.loads(line) for line in proc.stdout.splitlines())
    assert "adaptive" not in static and adaptive["adaptive"] is True
    assert (
        (adaptive["chars"], adaptive["tokens"])
        == (static["chars"], static["tokens"])
        == (len(HABIT), len(HABIT))
    )
    assert adaptive["bpc"] < static["bpc"] - 0.5  # it learned the repetition as it read
    assert _digest(trained_run_copy) == before  # the checkpoint is never modified
    plain = run_cli("eval", "-c", trained_run_copy, text, "--adapt", "--adapt-lr", "0.1").stdout.splitlines()
    assert len(plain) == 2 and plain[1].endswith("(adaptive)") and not plain[0].endswith("(adaptive)")


def test_without_a_step_size_adapting_is_reading_in_order(
    trained_run: Path, run_cli: RunCli, tmp_path: Path
) -> None:
    """With a vanishing step the adaptive figure is the model's own, read once from the start:
    exactly what `score --whole` computes."""
    text = tmp_path / "t.txt"
    text.write_text("The cat sat on the mat.\nAnd the dog ran far away, " * 6)
    adaptive = json.loads(
        run_cli(
            "eval", "-c", trained_run, text, "--adapt", "--adapt-lr", "1e-12", "--json"
        ).stdout.splitlines()[1]
    )
    whole = json.loads(run_cli("score", "-c", trained_run, "--whole", "--json", text).stdout)
    assert adaptive["bpc"] == pytest.approx(whole["bpc"], rel=1e-5)


def test_score_adapt_gets_better_at_a_line_it_keeps_seeing(trained_run: Path, run_cli: RunCli) -> None:
    lines = "zebra quokka zebra quokka\n" * 12
    proc = run_cli("score", "-c", trained_run, "--adapt", "--adapt-lr", "0.1", "--json", "-", input=lines)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 12 and all(r["adaptive"] for r in rows)
    assert rows[-1]["logprob"] > rows[0]["logprob"] + 5  # nats: the same line, learned
    static = [
        json.loads(line)
        for line in run_cli("score", "-c", trained_run, "--json", "-", input=lines).stdout.splitlines()
    ]
    assert rows[0]["logprob"] == pytest.approx(
        static[0]["logprob"], rel=1e-5
    )  # the first line: nothing learned yet
    assert all("adaptive" not in r for r in static)


def test_the_page_compares_the_model_with_its_adaptive_self(
    trained_run: Path, run_cli: RunCli, tmp_path: Path
) -> None:
    text = tmp_path / "habit.txt"
    text.write_text(HABIT[:600])
    page = tmp_path / "page.html"
    proc = run_cli("eval", "-c", trained_run, text, "--adapt", "--html", page)
    assert proc.returncode == 0, proc.stderr
    html = page.read_text()
    assert "(adaptive)" in html and str(trained_run) in html


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--adapt-lr", "0.1"], "--adapt-lr only make(s) sense with --adapt"),
        (["--adapt", "--adapt-lr", "0"], "--adapt-lr"),
        (["--adapt", "--adapt-segment", "0"], "--adapt-segment"),
        (["--adapt", "--adapt-decay", "2"], "--adapt-decay"),
    ],
)
def test_bad_adapt_settings_are_usage_errors(
    trained_run: Path, run_cli: RunCli, tmp_path: Path, args: list[str], message: str
) -> None:
    text = tmp_path / "t.txt"
    text.write_text("hello there\n")
    for command in (["eval", "-c", trained_run, text], ["score", "-c", trained_run, text]):
        proc = run_cli(*command, *args)
        assert proc.returncode == 2 and message in proc.stderr and proc.stdout == ""


def test_html_with_adapt_takes_one_checkpoint(trained_run: Path, run_cli: RunCli, tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("hello there\n")
    proc = run_cli(
        "eval", "-c", trained_run, "-c", trained_run, text, "--adapt", "--html", tmp_path / "p.html"
    )
    assert proc.returncode == 2 and "adaptive self" in proc.stderr
