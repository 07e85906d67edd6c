"""The budget picks the model (charnn.budget, charnn.budget_probe) and the schedule ends at the
deadline (train.Schedule). No real timing: live speeds are given, not measured."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from run_files import start_row

from charnn import budget_probe
from charnn.budget import Budget, Candidate, Rates, choose, dropout_for, load_table
from charnn.config import TrainConfig

# Two measured shapes and one the table only extrapolates to. Curves: the big one is better
# per token, the small one three times faster.
TABLE: dict[str, Any] = {
    "reference": "small",
    "candidates": [
        dict(
            name="small",
            layers=1,
            hidden=8,
            embed=8,
            seq_len=16,
            batch_size=4,
            lr=0.01,
            speed=1.0,
            a=2.0,
            b=1.0,
            c=0.5,
            max_tokens=4e6,
        ),
        dict(
            name="big",
            layers=1,
            hidden=16,
            embed=8,
            seq_len=8,
            batch_size=4,
            lr=0.005,
            speed=1 / 3,
            a=1.5,
            b=1.0,
            c=0.5,
            max_tokens=2e7,
        ),
        dict(
            name="huge",
            layers=2,
            hidden=24,
            embed=8,
            seq_len=8,
            batch_size=4,
            lr=0.002,
            speed=1 / 30,
            a=1.0,
            b=1.0,
            c=0.5,
            max_tokens=0,
            devices=["cpu", "cuda"],
        ),
    ],
}


def table() -> Any:
    return load_table(TABLE)


def test_packaged_table_loads_and_predicts_falling_curves() -> None:
    t = load_table()
    assert t.by_name(t.reference).speed == pytest.approx(1.0, abs=0.05)
    for c in t.candidates:
        assert c.predict(1e6) > c.predict(1e7) > c.a  # more tokens, lower bpc, down to the floor


def test_short_budget_picks_the_fast_shape_long_budget_the_better_one() -> None:
    # 60 s at 10k chars/s: small gets 600k tokens (2 + 1.29), big 200k (1.5 + 2.24).
    short = choose(table(), Budget(seconds=60, train_tokens=10**6), Rates(reference=10_000))
    assert short.shape == "small" and short.tokens == pytest.approx(600_000)
    assert short.predicted_bpc == pytest.approx(2.0 + 0.6**-0.5)
    # An hour: small 36M (2.17), big 12M (1.79), huge 1.2M, extrapolated (1.91).
    long = choose(table(), Budget(seconds=3600, train_tokens=10**9), Rates(reference=10_000))
    assert long.shape == "big" and not long.extrapolated
    assert long.model == {"layers": 1, "hidden": 16, "embed": 8, "dropout": 0.0}
    assert long.train == {"seq_len": 8, "batch_size": 4, "lr": 0.005}


def test_a_faster_machine_buys_a_bigger_model_and_says_it_extrapolates() -> None:
    fast = choose(table(), Budget(seconds=3600 * 8, train_tokens=10**12), Rates(reference=10**6))
    assert fast.shape == "huge" and fast.extrapolated
    assert "extrapolated" in fast.reason


def test_the_reason_names_budget_speed_characters_and_shape() -> None:
    c = choose(table(), Budget(seconds=300, train_tokens=10**9), Rates(reference=24_000))
    assert c.reason.startswith("5m at ~")
    assert "chars/s ≈" in c.reason and "characters" in c.reason and f"→ {c.shape} LSTM, seq" in c.reason
    assert json.loads(json.dumps(c.as_dict()))["shape"] == c.shape


def test_steps_choose_by_tokens_among_measured_shapes_only() -> None:
    c = choose(table(), Budget(steps=1000, train_tokens=10**9), Rates())
    # small: 64k tokens (5.95); big: 32k tokens (7.09); huge is not measured: not a candidate.
    assert c.shape == "small" and c.tokens == 1000 * 16 * 4 and c.chars_per_s is None
    assert c.reason.startswith("1,000 steps")


def test_epochs_choose_by_tokens_and_repeated_text_brings_dropout() -> None:
    c = choose(table(), Budget(epochs=20, train_tokens=100_000), Rates())
    assert c.shape == "big" and c.tokens == 2_000_000
    # From 8 passes charnn.regularisation's measured plan decides: weight-drop, no dropout.
    assert c.model["dropout"] == dropout_for(20) == 0.0
    c = choose(table(), Budget(epochs=6, train_tokens=100_000), Rates())
    assert c.model["dropout"] == dropout_for(6) == 0.1 and "dropout 0.1" in c.reason
    assert dropout_for(1) == 0.0


def test_the_least_of_time_and_steps_bounds_the_tokens() -> None:
    c = choose(table(), Budget(seconds=3600, steps=10, train_tokens=10**9), Rates(reference=10_000))
    assert c.tokens == 10 * c.train["seq_len"] * c.train["batch_size"]


def test_cuda_uses_each_candidates_own_speed() -> None:
    # On the GPU the big shapes cost little more than the small one: the biggest wins.
    rates = Rates(per_candidate={"small": 2e6, "big": 1.9e6, "huge": 1.5e6})
    c = choose(table(), Budget(seconds=300, train_tokens=10**12, device="cuda"), rates)
    assert c.shape == "huge"


def test_typed_options_win_and_a_typed_shape_stops_the_choice() -> None:
    config = TrainConfig(steps=100)
    rates = Rates(reference=10_000)
    applied = budget_probe.apply_choice({}, {"lr": 0.1}, config.replace(lr=0.1), 10**6, _cpu(), rates)
    assert applied.config.lr == 0.1  # typed
    assert applied.config.seq_len == applied.choice.train["seq_len"]  # chosen
    from charnn.budget import applies

    assert applies({"hidden": 64}, "char", False, False) is not None
    assert applies({}, "bpe", False, False) is not None
    assert applies({}, "char", False, False) is None


def _cpu() -> Any:
    import torch

    return torch.device("cpu")


def test_the_probe_times_real_steps() -> None:
    cand = Candidate("t", 1, 8, 8, 8, 2, 0.01, 1.0, 2.0, 1.0, 0.5, 1.0)
    assert budget_probe.step_rate(cand, _cpu(), seconds=0.0) > 0


# ---------------------------------------------------------------------------- the CLI


@pytest.fixture
def tiny_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget_probe, "load_table", table)
    monkeypatch.setattr(budget_probe, "measure", lambda t, device: Rates(reference=10_000))


def test_cli_chooses_records_and_resume_keeps_the_choice(
    run_cli: Any, corpus_file: Path, tmp_path: Path, tiny_table: None
) -> None:
    out = tmp_path / "run"
    proc = run_cli("train", corpus_file, "--out", out, "--time", "1m", "--steps", "3", "--lr", "0.02")
    assert proc.returncode == 0, proc.stderr
    assert "→ small LSTM, seq 16" in proc.stderr  # 3 steps: small buys more tokens per step
    meta = json.loads((out / "latest" / "meta.json").read_text())
    assert meta["model"]["hidden"] == 8 and meta["train"]["seq_len"] == 16
    assert meta["train"]["lr"] == 0.02  # typed wins
    assert start_row(out)["budget"]["shape"] == "small"
    info = run_cli("info", "-c", out)
    assert "chosen" in info.stdout and "small LSTM" in info.stdout
    again = run_cli("train", "--resume", out, "--steps", "5")
    assert again.returncode == 0, again.stderr
    meta = json.loads((out / "latest" / "meta.json").read_text())
    assert meta["model"]["hidden"] == 8 and meta["train"]["seq_len"] == 16 and meta["progress"]["step"] == 5
    assert start_row(out)["budget"]["shape"] == "small"


def test_cli_typed_shape_is_honoured_exactly(
    run_cli: Any, corpus_file: Path, tmp_path: Path, tiny_table: None
) -> None:
    out = tmp_path / "run"
    proc = run_cli("train", corpus_file, "--out", out, "--steps", "2", "--hidden", "12", "--layers", "1")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "latest" / "meta.json").read_text())
    assert meta["model"]["hidden"] == 12 and meta["model"]["embed"] == 64  # today's defaults
    assert meta["train"]["seq_len"] == 128 and meta["train"]["batch_size"] == 16
    assert start_row(out).get("budget") is None and "→" not in proc.stderr


# ---------------------------------------------------------------------------- the schedule


def _schedule(**kw: Any) -> Any:
    from charnn.trainer import Schedule

    steps, seconds = kw.pop("steps", None), kw.pop("seconds", None)
    return Schedule(TrainConfig(lr=1.0, warmup_steps=10, **kw), steps, seconds)


@pytest.mark.parametrize("kind, floor", [("linear", 0.0), ("cosine", 0.1)])
def test_schedule_reaches_its_floor_exactly_at_the_last_step(kind: str, floor: float) -> None:
    s = _schedule(schedule=kind, steps=110)
    assert s.lr(9, 0, 1.0) == pytest.approx(1.0)  # end of warm-up: the peak
    assert s.lr(10, 0, 1.0) == pytest.approx(1.0)
    lrs = [s.lr(i, 0, 1.0) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-2] > floor and s.lr(110, 0, 1.0) == pytest.approx(floor, abs=1e-12)
    if kind == "linear":
        assert s.lr(60, 0, 1.0) == pytest.approx(0.5)


@pytest.mark.parametrize("kind, floor", [("linear", 0.0), ("cosine", 0.1)])
def test_schedule_reaches_its_floor_exactly_at_the_time_limit(kind: str, floor: float) -> None:
    s = _schedule(schedule=kind, seconds=300.0)
    assert s.lr(20, 150.0, 1.0) == pytest.approx(0.5 if kind == "linear" else 0.55)
    assert s.lr(20, 300.0, 1.0) == pytest.approx(floor, abs=1e-12)
    assert s.lr(20, 299.0, 1.0) > floor


def test_schedule_follows_whichever_bound_comes_first() -> None:
    s = _schedule(schedule="linear", steps=1010, seconds=100.0)
    assert s.lr(510, 10.0, 1.0) == pytest.approx(0.5)  # steps ahead of the clock
    assert s.lr(20, 75.0, 1.0) == pytest.approx(0.25)  # the clock ahead of the steps
    assert math.isclose(_schedule(schedule="linear", steps=1010, decay_steps=110).lr(60, 99.0, 1.0), 0.5)


def test_checkpoints_from_before_the_schedule_option_resume_with_cosine() -> None:
    import dataclasses

    data = dataclasses.asdict(TrainConfig())
    del data["schedule"]
    assert TrainConfig.from_dict(data).schedule == "cosine"
