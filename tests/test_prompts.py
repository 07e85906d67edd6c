"""Reproducible generation: the seed in every ``sample --json`` row, and ``sample --prompts``
(one result per line, batched, prompt i drawn with seed SEED + i)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

PROMPTS = ["The river", "", "Quiet winter road"]


def _rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_seed_in_json_reproduces_the_row(trained_run: Path, cli_inprocess) -> None:
    proc = cli_inprocess("sample", "-c", trained_run, "-n", "80", "-k", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc.stdout)
    assert len({r["seed"] for r in rows}) == 1 and isinstance(rows[0]["seed"], int)
    again = cli_inprocess(
        "sample", "-c", trained_run, "-n", "80", "-k", "2", "--json", "--seed", rows[0]["seed"]
    )
    assert _rows(again.stdout) == rows
    assert "seed" not in proc.stderr  # stderr is not a terminal here: no note


def test_drawn_seed_is_shown_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from charnn import console
    from charnn.app import sampling_seed
    from charnn.config import SampleConfig

    monkeypatch.setattr(type(console.err), "is_terminal", property(lambda self: True))
    monkeypatch.setattr(console, "stderr_is_terminal", lambda: True)  # capsys's stderr is no TTY
    seed = sampling_seed(SampleConfig())
    assert f"--seed {seed}" in capsys.readouterr().err
    assert sampling_seed(SampleConfig(seed=5)) == 5 and capsys.readouterr().err == ""


def test_prompts_give_one_result_each_equal_to_prime_with_its_seed(
    trained_run: Path, tmp_path: Path, cli_inprocess
) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    args = ("-c", trained_run, "-n", "60", "-k", "2", "--temp", "0.9", "--stop", ".", "--json")
    proc = cli_inprocess("sample", "--prompts", path, "--seed", "40", *args)
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc.stdout)
    assert [(r["line"], r["sample"], r["prime"], r["seed"]) for r in rows] == [
        (i + 1, j, p, 40 + i) for i, p in enumerate(PROMPTS) for j in range(2)
    ]
    for i, prompt in enumerate(PROMPTS):
        alone = cli_inprocess("sample", "--prime", prompt, "--seed", 40 + i, *args)
        assert alone.returncode == 0, alone.stderr
        expected = [{k: v for k, v in r.items() if k != "logprob"} for r in _rows(alone.stdout)]
        got = [{k: v for k, v in r.items() if k not in ("logprob", "line")} for r in rows[2 * i : 2 * i + 2]]
        assert got == expected
        assert [r["logprob"] for r in rows[2 * i : 2 * i + 2]] == pytest.approx(
            [r["logprob"] for r in _rows(alone.stdout)], rel=1e-5
        )


def test_prompts_text_mode_and_stdin(
    trained_run: Path, cli_inprocess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("\n".join(PROMPTS).encode())))
    proc = cli_inprocess(
        "sample", "-c", trained_run, "--prompts", "-", "-n", "30", "--seed", "3", "--separator", "\n---\n"
    )
    assert proc.returncode == 0, proc.stderr
    parts = proc.stdout.split("\n---\n")
    assert len(parts) == len(PROMPTS)
    for part, prompt in zip(parts, PROMPTS, strict=True):
        assert part.startswith(prompt) and len(part) == len(prompt) + 30


def test_many_prompts_are_batched_and_greedy_is_exact(
    trained_run: Path, tmp_path: Path, cli_inprocess
) -> None:
    prompts = [f"The {w}" for w in ("river", "stone", "light", "fox", "dog", "tree", "bird", "song")] * 9
    path = tmp_path / "p.txt"
    path.write_text("\n".join(prompts))  # no final newline: the last line still counts
    proc = cli_inprocess("sample", "-c", trained_run, "--prompts", path, "-n", "20", "--temp", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc.stdout)
    assert len(rows) == 72 and [r["line"] for r in rows] == list(range(1, 73))  # across two batches
    by_prompt: dict[str, set[str]] = {}
    for r in rows:
        by_prompt.setdefault(r["prime"], set()).add(r["text"])
    assert all(len(texts) == 1 for texts in by_prompt.values())  # greedy: same prompt, same text
    alone = cli_inprocess("sample", "-c", trained_run, "--prime", "The fox", "-n", "20", "--temp", "0")
    assert alone.stdout == "The fox" + by_prompt["The fox"].pop()


@pytest.mark.parametrize(
    ("content", "extra", "code", "message"),
    [
        (b"a\n", ("--prime", "x"), 2, "cannot be combined"),
        (b"", (), 3, "no prompts"),
        (b"\xff\xfe\n", (), 3, "not valid UTF-8"),
    ],
)
def test_bad_prompts(
    trained_run: Path,
    tmp_path: Path,
    cli_inprocess,
    content: bytes,
    extra: tuple[str, ...],
    code: int,
    message: str,
) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(content)
    proc = cli_inprocess("sample", "-c", trained_run, "--prompts", path, *extra)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
