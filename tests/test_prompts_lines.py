"""`sample --prompts`: a line --prime would refuse is reported and skipped; the rest go on."""

from __future__ import annotations

import json

from charnn.errors import EXIT_BAD_INPUT


def test_one_bad_line_does_not_abort_the_batch(run_cli, trained_run, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("The \n\u2603 snow\nAnd \n\u2604 comet\n", encoding="utf-8")  # 2, 4: unknown
    proc = run_cli(
        "sample", "-c", trained_run, "--prompts", prompts, "--json", "--length", "10", "--seed", "5"
    )
    assert proc.returncode == EXIT_BAD_INPUT
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["line"] for r in rows] == [1, 3] and [r["seed"] for r in rows] == [5, 7]
    assert "--prompts line 2" in proc.stderr and "--prompts line 4" in proc.stderr
    assert "2 of 4 lines could not be continued (line 2, 4)" in proc.stderr
    # The lines that were continued are what --prime gives with the line's own seed.
    alone = run_cli("sample", "-c", trained_run, "--prime", "And ", "--json", "--length", "10", "--seed", "7")
    assert json.loads(alone.stdout)["text"] == rows[1]["text"]


def test_all_good_lines_exit_zero(run_cli, trained_run, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("The \nAnd \n", encoding="utf-8")
    proc = run_cli("sample", "-c", trained_run, "--prompts", prompts, "--length", "5", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
