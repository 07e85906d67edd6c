"""`charnn sample` and `charnn score` through the real CLI: options a script would rely on."""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Callable
from pathlib import Path

RunCli = Callable[..., subprocess.CompletedProcess]


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_logprob_of_a_sample_equals_what_score_computes(
    run_cli: RunCli, trained_run: Path, tmp_path: Path
) -> None:
    res = run_cli("sample", "-c", trained_run, "--prime", "Th", "--length", "60", "--seed", "5", "--json")
    assert res.returncode == 0, res.stderr
    [row] = _json_lines(res.stdout)
    assert row["chars"] == len(row["text"]) == 60 and row["stopped_by"] == "length"
    text_file = tmp_path / "generated.txt"
    text_file.write_text(row["text"], encoding="utf-8")
    scored = run_cli("score", "-c", trained_run, "--whole", "--context", "Th", "--json", text_file)
    assert scored.returncode == 0, scored.stderr
    [score] = _json_lines(scored.stdout)
    assert math.isclose(score["logprob"], row["logprob"], rel_tol=1e-4, abs_tol=1e-3)
    assert row["logprob"] < 0


def test_prime_file_from_stdin_and_stop_is_kept(run_cli: RunCli, trained_run: Path) -> None:
    res = run_cli(
        "sample",
        "-c",
        trained_run,
        "--prime-file",
        "-",
        "--stop",
        " ",
        "--length",
        "300",
        "--seed",
        "2",
        "--json",
        input="The",
    )
    assert res.returncode == 0, res.stderr
    [row] = _json_lines(res.stdout)
    assert row["prime"] == "The"
    if row["stopped_by"] == "stop":
        assert row["text"].endswith(" ") and row["text"].count(" ") == 1  # cut at the first occurrence
    else:
        assert " " not in row["text"] and row["chars"] == 300


def test_num_samples_are_separated_and_reproducible(run_cli: RunCli, trained_run: Path) -> None:
    args = (
        "sample",
        "-c",
        trained_run,
        "-k",
        "3",
        "--length",
        "40",
        "--seed",
        "9",
        "--separator",
        "\n=====\n",
    )
    first, second = run_cli(*args), run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stderr == ""
    parts = first.stdout.split("\n=====\n")
    assert len(parts) == 3 and all(len(p) == 40 for p in parts)
    assert len(set(parts)) > 1


def test_beam_one_equals_greedy_and_beam_n_best(run_cli: RunCli, trained_run: Path) -> None:
    greedy = run_cli("sample", "-c", trained_run, "--temp", "0", "--length", "50", "--prime", "Th")
    beam1 = run_cli("sample", "-c", trained_run, "--beam", "1", "--length", "50", "--prime", "Th")
    assert greedy.returncode == beam1.returncode == 0
    assert greedy.stdout == beam1.stdout and greedy.stdout.startswith("Th")
    best = run_cli("sample", "-c", trained_run, "--beam", "4", "-k", "3", "--length", "20", "--json")
    rows = _json_lines(best.stdout)
    assert len(rows) == 3 and len({r["text"] for r in rows}) == 3
    assert [r["logprob"] for r in rows] == sorted((r["logprob"] for r in rows), reverse=True)


def test_beam_with_temperature_is_a_usage_error(run_cli: RunCli, trained_run: Path) -> None:
    res = run_cli("sample", "-c", trained_run, "--beam", "3", "--temp", "0.8")
    assert res.returncode == 2 and res.stdout == ""
    assert "--beam" in res.stderr and "Traceback" not in res.stderr and len(res.stderr.splitlines()) == 1


def test_score_lines_rank_real_text_above_noise(run_cli: RunCli, trained_run: Path, corpus_text: str) -> None:
    real = next(line for line in corpus_text.splitlines() if len(line) > 20)
    noise = "".join(sorted(real))  # same characters, nonsense order
    res = run_cli("score", "-c", trained_run, "--json", "-", input=f"{real}\n{noise}\n")
    assert res.returncode == 0, res.stderr
    rows = _json_lines(res.stdout)
    assert [r["text"] for r in rows] == [real, noise] and [r["line"] for r in rows] == [1, 2]
    assert rows[0]["logprob"] > rows[1]["logprob"]
    assert math.isclose(rows[0]["bpc"], -rows[0]["logprob"] / math.log(2) / len(real), rel_tol=1e-9)
