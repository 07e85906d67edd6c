"""The thread policy (charnn.threads): decided from fake timings and loads, recorded, reused, pinned;
and the progress eval and score show. No test here depends on real timing."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL_ARGS
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from run_files import start_row

from charnn import threads, torch_threads
from charnn.console import WorkProgress
from charnn.threads import Pace, Situation, ThreadChoice, Tuner, candidates, choose, decide, free_cores


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------- the decision


def test_candidates_are_all_cores_the_free_ones_half_and_one() -> None:
    assert candidates(2, 0.1) == [2, 1]
    assert candidates(8, 0.2) == [8, 4, 1]
    assert candidates(8, 3.1) == [8, 5, 4, 1]
    assert candidates(8, None) == [8, 4, 1]
    assert candidates(1, 5.0) == [1]
    assert candidates(16, 0.0, processes=2) == [8, 4, 1]  # torchrun: a share per process
    assert free_cores(2, 1.0) == 1 and free_cores(2, 15.7) == 1 and free_cores(2, 0.4) == 2


def test_decide_prefers_fewer_threads_within_the_margin() -> None:
    assert decide({2: 0.10, 1: 0.17}) == 2  # idle: 2 threads 1.7x faster
    assert decide({2: 0.30, 1: 0.12}) == 1  # beside a busy process: 2 threads spin
    assert decide({2: 0.100, 1: 0.104}) == 1  # within 5 %: fewer threads lose less later
    assert decide({4: 0.10, 2: 0.12, 1: 0.2}) == 4
    with pytest.raises(ValueError):
        decide({})


def run_tuner(tuner: Tuner, cost: dict[int, float], prints: dict[int, str] | None = None) -> list[int]:
    """Feed the tuner fake seconds per pass; returns the counts it ran."""
    ran = []
    while not tuner.settled:
        n = tuner.next_count()
        ran.append(n)
        tuner.record(cost[n], fingerprint=(prints or {}).get(n, "same"))
    return ran


def test_tuner_warms_up_fewest_first_then_alternates() -> None:
    tuner = Tuner([2, 1])
    ran = run_tuner(tuner, {2: 0.1, 1: 0.17})
    assert ran == [1, 2, 2, 1, 1, 2, 2, 1]
    assert tuner.chosen == 2 and tuner.medians() == {2: 0.1, 1: 0.17}
    assert tuner.same_rounding is True


def test_tuner_drops_a_count_that_collapses_after_one_pass() -> None:
    tuner = Tuner([2, 1])
    ran = run_tuner(tuner, {2: 13.0, 1: 0.3})  # heavy load: the 2-thread team spins
    assert ran == [1, 2] and tuner.chosen == 1 and tuner.dropped == {2}


def test_the_first_pass_alone_never_drops_its_count() -> None:
    """The very first pass carries one-time costs; judged only after a second."""
    tuner = Tuner([2, 1])
    costs = iter([5.0, 0.1, 0.1, 0.15, 0.15, 0.1, 0.1, 0.15])
    while not tuner.settled:
        tuner.record(next(costs))
    assert 1 not in tuner.dropped and tuner.chosen == 2


def test_tuner_sees_whether_counts_round_alike() -> None:
    tuner = Tuner([2, 1])
    run_tuner(tuner, {2: 0.1, 1: 0.2}, prints={2: "a", 1: "b"})
    assert tuner.same_rounding is False


def test_tuner_cut_short_uses_the_fallback() -> None:
    tuner = Tuner([4, 2, 1])
    tuner.record(0.5)  # the warm-up of 1 only
    tuner.stop(fallback=2)
    assert tuner.chosen == 2 and not tuner.compared


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 64), min_size=1, max_size=4, unique=True),
    costs=st.lists(st.floats(1e-4, 100.0), min_size=64, max_size=64),
)
def test_tuner_always_settles_on_a_candidate(counts: list[int], costs: list[float]) -> None:
    tuner = Tuner(counts)
    for cost in costs:
        if tuner.settled:
            break
        tuner.record(cost)
    assert tuner.settled and tuner.chosen in counts and tuner.chosen not in tuner.dropped


IDLE = Situation(cores=2, load=0.2)


def test_choose_follows_the_policy_in_order() -> None:
    never = lambda tuner: pytest.fail("must not measure")  # noqa: E731
    assert choose(IDLE, pinned=3, resumed=2, measure=never) == ThreadChoice(3, "--threads", 2, 0.2)
    assert choose(IDLE, None, resumed=2, measure=never).how == "resumed"
    env = Situation(cores=2, load=0.2, environment_threads=4)
    assert choose(env, None, measure=never) == ThreadChoice(4, "OMP_NUM_THREADS", 2, 0.2)
    assert choose(IDLE, None, device="cuda", measure=never).count is None
    assert choose(Situation(cores=1, load=3.0), None, measure=never).how == "one core"
    short = choose(Situation(cores=2, load=1.4), None, long_enough=False, measure=never)
    assert (short.count, short.how) == (1, "load average")
    saturated = choose(Situation(cores=2, load=4.5), None, measure=never)
    assert (saturated.count, saturated.how) == (1, "load average")


def test_choose_measures_when_nothing_decides() -> None:
    busy = Situation(cores=2, load=1.1)
    choice = choose(busy, None, measure=lambda tuner: run_tuner(tuner, {2: 0.3, 1: 0.12}))
    assert (choice.count, choice.how, choice.same_rounding) == (1, "measured", True)
    assert choice.seconds == {2: 0.3, 1: 0.12}
    assert "threads 1 of 2 cores, measured" in choice.describe()
    assert json.loads(json.dumps(choice.to_dict()))["seconds"] == {"1": 0.12, "2": 0.3}


def test_short_runs_are_not_measured() -> None:
    assert not threads.worth_measuring(50, None)
    assert not threads.worth_measuring(None, 10.0)
    assert not threads.worth_measuring(10_000, 5.0)  # the time limit ends it first
    assert threads.worth_measuring(None, 300.0) and threads.worth_measuring(1000, None)


# ---------------------------------------------------------------------------- training


class FakeMachine:
    """A clock that advances by the cost of each probe pass at torch's current thread count."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cost: dict[int, float], load: float = 0.2) -> None:
        self.now, self.cost, self.passes = 0.0, cost, [] + []
        real = torch_threads.probe_pass

        def probe(model: Any, x: Any, y: Any) -> Any:
            self.passes.append(torch.get_num_threads())
            self.now += self.cost[torch.get_num_threads()]
            return real(model, x, y)

        monkeypatch.setattr(torch_threads, "probe_pass", probe)
        monkeypatch.setattr(torch_threads, "CLOCK", lambda: self.now)
        monkeypatch.setattr(torch_threads, "situation", lambda *a, **k: Situation(cores=2, load=load))


PROBED_RUN = (
    *TINY_MODEL_ARGS,
    "--seq-len",
    "8",
    "--batch-size",
    "2",
    "--eval-every",
    "1000",
    "--device",
    "cpu",
)


def test_training_measures_records_and_resume_reuses(
    tmp_path: Path, corpus_file: Path, run_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine = FakeMachine(monkeypatch, {2: 0.3, 1: 0.1})  # beside a busy process
    run = tmp_path / "run"
    proc = run_cli("train", corpus_file, "-o", run, "--steps", "300", *PROBED_RUN)
    assert proc.returncode == 0, proc.stderr
    assert machine.passes == [1, 2, 2, 1, 1, 2, 2, 1]
    assert "threads 1 of 2 cores, measured (2: 0.3 s, 1: 0.1 s per pass; load 0.2)" in proc.stderr
    start = start_row(run)
    assert start["threads"]["count"] == 1 and start["threads"]["how"] == "measured"
    meta = json.loads((run / "latest" / "meta.json").read_text())
    assert meta["train"]["threads"] == 1 and meta["run"]["threads"]["how"] == "measured"
    assert "threads          1 (measured)" in run_cli("info", "-c", run).stdout

    machine.cost = {2: 0.05, 1: 0.1}  # the machine is idle now: the run keeps its count anyway
    proc = run_cli("train", "--resume", run, "--steps", "310")
    assert proc.returncode == 0, proc.stderr
    resumed = {**start["threads"], "how": "resumed", "seconds": {}, "same_rounding": None}
    assert start_row(run)["threads"] == resumed
    assert "threads 1 (resumed)" in proc.stderr and len(machine.passes) == 8

    proc = run_cli("train", "--resume", run, "--steps", "320", "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    assert start_row(run)["threads"]["how"] == "--threads"
    assert json.loads((run / "latest" / "meta.json").read_text())["train"]["threads"] == 2


def test_the_probe_leaves_the_run_as_it_would_have_been(
    tmp_path: Path, corpus_file: Path, run_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Measured passes are thrown away: the weights equal a run pinned to the chosen count
    (with dropout, whose random draws the probe must not consume)."""
    args = ("--steps", "300", "--dropout", "0.3", "--save-every", "1000", *PROBED_RUN)
    pinned = run_cli("train", corpus_file, "-o", tmp_path / "pinned", "--threads", "1", *args)
    FakeMachine(monkeypatch, {2: 0.3, 1: 0.1})
    probed = run_cli("train", corpus_file, "-o", tmp_path / "probed", *args)
    assert pinned.returncode == probed.returncode == 0, probed.stderr
    weights = [(tmp_path / r / "latest" / "model.safetensors").read_bytes() for r in ("pinned", "probed")]
    assert weights[0] == weights[1]


def test_warm_up_passes_run_a_few_time_steps_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from charnn.config import ModelConfig
    from charnn.model import CharRNN

    lengths: list[int] = []
    now = [0.0]
    real = torch_threads.probe_pass

    def probe(model: Any, x: Any, y: Any) -> Any:
        lengths.append(x.shape[1])
        now[0] += {2: 0.1, 1: 0.2}[torch.get_num_threads()]
        return real(model, x, y)

    monkeypatch.setattr(torch_threads, "probe_pass", probe)
    monkeypatch.setattr(torch_threads, "CLOCK", lambda: now[0])
    monkeypatch.setattr(torch_threads, "situation", lambda *a, **k: IDLE)
    model = CharRNN(ModelConfig(10, hidden=8, embed=4, layers=1))
    batch = (np.zeros((2, 64), dtype=np.int64), np.ones((2, 64), dtype=np.int64))
    choice = torch_threads.training_threads(model, batch, None, None, torch.device("cpu"), None, 300.0)
    assert lengths == [16, 16, 64, 64, 64, 64, 64, 64]
    assert (choice.count, choice.how, choice.same_rounding) == (2, "measured", True)


def test_short_training_runs_go_by_the_load(
    tmp_path: Path, corpus_file: Path, run_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine = FakeMachine(monkeypatch, {2: 0.3, 1: 0.1}, load=1.3)
    proc = run_cli("train", corpus_file, "-o", tmp_path / "run", "--steps", "5", *PROBED_RUN)
    assert proc.returncode == 0, proc.stderr
    assert machine.passes == [] and start_row(tmp_path / "run")["threads"]["how"] == "load average"
    assert "threads 1 of 2 cores, by the load 1.3 (no time to measure)" in proc.stderr


# ---------------------------------------------------------------------------- eval and score


def test_pace_measures_on_the_work_then_keeps_the_choice() -> None:
    now = [0.0]
    cost = {2: 4.0, 1: 1.0}
    used: list[int] = []
    pace = Pace(Tuner([2, 1]), used.append, clock=lambda: now[0])
    for _ in range(12):
        with pace.window(units=10):
            now[0] += cost[pace.current or 1]
    assert used == [1, 2, 1] and pace.tuner is not None and pace.tuner.chosen == 1
    assert pace.current == 1


def test_progress_lines_every_ten_seconds_off_a_terminal() -> None:
    now = [0.0]
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, no_color=True, width=200)
    progress = WorkProgress("eval run/best", console=console, clock=lambda: now[0])
    pace = Pace(Tuner([1]), lambda n: None, progress, clock=lambda: now[0])
    pace.begin(100)
    for _ in range(10):
        with pace.window(10):
            now[0] += 4.0
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # at 12 s, 24 s and 36 s of 40 s
    assert lines[0].startswith("charnn: eval run/best: 30% (30/100 tokens, 1 thread) elapsed 12s eta 28s")


def test_eval_and_score_take_threads(run_cli: Any, trained_run: Path, tmp_path: Path) -> None:
    text = tmp_path / "long.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 300)  # > 10k tokens: torch
    proc = run_cli("eval", text, "-c", trained_run, "--threads", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tokens"] > 10_000
    proc = run_cli("score", text, "-c", trained_run, "--threads", "1", "--whole", "--json")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("eval", text, "-c", trained_run, "--threads", "0")
    assert proc.returncode == 2 and "--threads" in proc.stderr


def test_eval_measures_threads_on_its_windows(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from charnn.app import run_eval

    monkeypatch.setattr(torch_threads, "situation", lambda *a, **k: Situation(cores=2, load=0.1))
    counts: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", counts.append)
    text = tmp_path / "long.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 1000)
    (row,) = run_eval([str(trained_run)], [str(text)])
    assert row.tokens > 40_000 and counts[:2] == [1, 2]  # measured: fewest first, then more


def test_score_on_a_terminal_says_it_waits_for_stdin(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from charnn.app import run_score

    class Terminal(io.BytesIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(Terminal(b"the fox\n")))
    rows = list(run_score(str(trained_run), ["-"], None))
    assert len(rows) == 1
    assert "reading lines to score from the terminal (stdin)" in capsys.readouterr().err
