"""Regularisation for long runs (issue 17 §4): weight-drop keeps the fused kernels, saved weights
undropped and the numpy stepper exact; dropout is off at eval; the weight average resumes exactly
and reaches best/ only when it validates better; forged averages are bad checkpoints; the options
are validated; and the plan, hooked into the budget's choice, regularises only budget-chosen runs
of many planned epochs, keeps typed options, and is recorded (meta.json, metrics, info)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL_ARGS
from run_files import start_row
from safetensors.torch import load_file, save_file

import charnn.checkpoint as ck
from charnn import budget_probe
from charnn.arch import parameter_shapes
from charnn.averaging import WeightAverager
from charnn.budget import Rates, dropout_for, load_table
from charnn.config import ModelConfig, TrainConfig
from charnn.errors import ConfigError
from charnn.evaluate import EvalResult
from charnn.model import CharRNN
from charnn.regularisation import NONE, REGULARISE_FROM, plan, regularisation_for
from charnn.stepper import FastStepper

VOCAB = 11


def _model(cell: str = "lstm", layers: int = 2, **kwargs: Any) -> CharRNN:
    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=VOCAB, cell=cell, layers=layers, hidden=12, embed=6, **kwargs))


# ---------------------------------------------------------------------------- weight-drop and dropout


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("with_hidden", [False, True])
def test_the_fused_kernel_call_matches_the_module(
    cell: str, with_hidden: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the mask made all ones, the direct kernel call is the nn module's forward exactly."""
    model = _model(cell)
    x = model.embed(torch.randint(0, VOCAB, (3, 7)))  # (B, T, E)
    hidden: Any = None
    if with_hidden:
        zeros = model.init_hidden(3)
        hidden = (
            tuple(torch.randn_like(h) for h in zeros) if isinstance(zeros, tuple) else torch.randn_like(zeros)
        )
    want, want_h = model.rnn(x, hidden)
    monkeypatch.setattr("charnn.model.F.dropout", lambda w, p, training: w)
    got, got_h = model.recurrent(x, hidden, 0.5)
    assert torch.equal(got, want)
    pairs = zip(
        got_h if isinstance(got_h, tuple) else (got_h,),
        want_h if isinstance(want_h, tuple) else (want_h,),
        strict=True,
    )
    assert all(torch.equal(a, b) for a, b in pairs)


def test_weight_drop_draws_a_mask_per_batch_and_never_touches_the_parameters() -> None:
    model = _model(weight_drop=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, VOCAB, (2, 9))
    model.train()
    a, _ = model(ids)
    b, _ = model(ids)
    assert not torch.equal(a, b)  # a new mask each call
    a.sum().backward()
    grad = model.rnn.weight_hh_l0.grad
    assert grad is not None and grad.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_dropout_and_weight_drop_are_off_at_eval() -> None:
    regularised = _model(dropout=0.5, weight_drop=0.5)
    plain = _model()
    plain.load_state_dict(regularised.state_dict())
    ids = torch.randint(0, VOCAB, (2, 9))
    regularised.eval(), plain.eval()
    with torch.no_grad():
        a, b, c = regularised(ids)[0], regularised(ids)[0], plain(ids)[0]
    assert torch.equal(a, b) and torch.equal(a, c)


def test_weight_drop_runs_the_same_fused_kernels() -> None:
    """Forward and backward go through the kernels nn.LSTM uses (oneDNN's RNN layer on CPU),
    not a per-time-step Python loop."""

    def kernels(weight_drop: float) -> set[str]:
        model = _model(weight_drop=weight_drop)
        model.train()
        with torch.profiler.profile() as prof:
            model(torch.randint(0, VOCAB, (2, 5)))[0].sum().backward()
        return {
            e.name
            for e in prof.events()
            if e.name.startswith("aten::") and ("rnn" in e.name or "lstm" in e.name)
        }

    plain = kernels(0.0)
    assert plain and kernels(0.5) == plain


def test_a_weight_dropped_run_saves_undropped_weights_the_numpy_stepper_matches(
    tmp_path: Path, corpus_file: Path, cli_inprocess: Any
) -> None:
    out = tmp_path / "run"
    args = ("--steps", "6", "--seq-len", "16", "--batch-size", "4", "--eval-every", "3", "--layers", "2")
    proc = cli_inprocess(
        "train",
        corpus_file,
        "-o",
        out,
        "--hidden",
        "16",
        "--embed",
        "8",
        *args,
        "--weight-drop",
        "0.5",
        "--dropout",
        "0.3",
    )
    assert proc.returncode == 0, proc.stderr
    ckpt = ck.load_checkpoint(out, prefer="latest")
    assert ckpt.config.weight_drop == 0.5 and ckpt.config.dropout == 0.3
    model = ckpt.build_model()  # eval mode: no dropout of either kind
    ids = torch.randint(0, ckpt.config.vocab_size, (2, 12))
    with torch.no_grad():
        want = model(ids)[0][:, -1].numpy()
    got, _ = FastStepper(ckpt.config, ckpt.weights).prime(ids.numpy())
    np.testing.assert_allclose(got, want, atol=1e-5)
    # The saved weights are the parameters (no mask baked in): zero entries would betray one.
    assert all((ckpt.weights[f"rnn.weight_hh_l{k}"] != 0).all() for k in range(2))


# ---------------------------------------------------------------------------- the weight average


def test_the_average_is_the_mean_then_an_ema_and_swapping_it_in_restores_the_weights() -> None:
    model = torch.nn.Linear(1, 1, bias=False)
    values = [1.0, 3.0, 5.0, 7.0]
    # swa: the mean of all. ema (decay 0.7): the mean while 1/(n+1) > 0.3 (of 1, 3, 5 = 3.0), then
    # a 0.3 share for each new step: 3.0 + 0.3 * (7 - 3.0).
    for kind, want in (("swa", 4.0), ("ema", 4.2)):
        averager = WeightAverager(kind, start=0.0, decay=0.7)
        n = 0
        for v in values:
            model.weight.data.fill_(v)
            n = averager.update(model, 1.0, n)
        assert n == 4 and averager.average is not None
        avg = averager.average["weight"].item()
        assert avg == pytest.approx(want)
        assert averager.scored(model, lambda: model.weight.item()) == pytest.approx(avg)
        assert model.weight.item() == 7.0  # swapped back
    late = WeightAverager("ema", start=0.5, decay=0.9)
    assert late.update(model, 0.4, 0) == 0 and not late.ready  # not before --average-from
    assert late.scored(model, lambda: 1) is None


AVG_ARGS = (
    *TINY_MODEL_ARGS,
    "--seq-len",
    "16",
    "--batch-size",
    "4",
    "--eval-every",
    "4",
    "--warmup",
    "2",
    "--average",
    "ema",
    "--ema-decay",
    "0.8",
    "--average-from",
    "0.25",
    "--weight-drop",
    "0.3",
    "--seed",
    "4",
    "--threads",
    "1",
)


def test_the_average_resumes_exactly(tmp_path: Path, corpus_file: Path, cli_inprocess: Any) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert cli_inprocess("train", corpus_file, "-o", whole, *AVG_ARGS, "--steps", "16").returncode == 0
    proc = cli_inprocess("train", corpus_file, "-o", split, *AVG_ARGS, "--steps", "10", "--decay-steps", "16")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((split / "latest" / "meta.json").read_text())
    assert meta["progress"]["average_updates"] > 0  # interrupted while averaging
    proc = cli_inprocess("train", "--resume", split, "--steps", "16")
    assert proc.returncode == 0, proc.stderr
    for which in ("latest", "best"):
        a = json.loads((whole / which / "meta.json").read_text())
        b = json.loads((split / which / "meta.json").read_text())
        assert a["files"] == b["files"], which  # weights, optimizer, RNG and the average, bit for bit
        assert a["progress"]["average_updates"] == b["progress"]["average_updates"] > 0
    state = load_file(whole / "latest" / ck.STATE_FILE)
    config = ck.load_checkpoint(whole, prefer="latest").config
    assert {k for k in state if k.startswith("avg.")} == {"avg." + k for k in parameter_shapes(config)}
    rows = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    assert any("averaged_bpc" in r for r in rows if r["kind"] == "val")


def _run_with_scripted_validation(tmp_path: Path, corpus_file: Path, averaged_better: bool) -> Any:
    """A tiny Trainer whose validation says the averaged weights are better (or worse) by 0.5."""
    from charnn.data import load_corpus
    from charnn.run_plan import RunPlan
    from charnn.train_records import NullReporter
    from charnn.trainer import Trainer

    corpus = load_corpus([str(corpus_file)])
    config = TrainConfig(
        batch_size=4,
        seq_len=16,
        steps=8,
        warmup_steps=2,  # averaging counts on the decay after warm-up: from step 4 (0.25 of 2..8)
        eval_every=4,
        average="swa",
        average_from=0.25,
        seed=1,
        threads=1,
    )
    mcfg = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, hidden=16, embed=8, layers=1)
    trainer = Trainer(RunPlan.fresh(corpus, mcfg, config, tmp_path / "run"), NullReporter())
    averager = trainer.keeper.averager

    def evaluate() -> EvalResult:
        # With the average swapped in, the model's weights are the average's.
        swapped = averager.ready and torch.equal(trainer.model.embed.weight, averager.average["embed.weight"])
        bpc = 3.0 - 0.01 * trainer.progress.step + ((-0.5 if averaged_better else 0.5) if swapped else 0.0)
        return EvalResult(loss=bpc, bpc=bpc, tokens=10, chars=10)

    trainer.evaluate = evaluate  # type: ignore[method-assign]
    trainer.run()
    return trainer


@pytest.mark.parametrize("averaged_better", [True, False])
def test_best_takes_the_average_only_when_it_validates_better(
    tmp_path: Path, corpus_file: Path, averaged_better: bool, cli_inprocess: Any
) -> None:
    trainer = _run_with_scripted_validation(tmp_path, corpus_file, averaged_better)
    best = ck.load_checkpoint(tmp_path / "run", prefer="best")
    latest = ck.load_checkpoint(tmp_path / "run", prefer="latest")
    average = {k: v.numpy() for k, v in trainer.keeper.averager.average.items()}
    raw = {k: v.detach().numpy() for k, v in trainer.model.named_parameters()}
    want = average if averaged_better else raw
    assert all(np.array_equal(best.weights[k], want[k]) for k in want)
    assert all(
        np.array_equal(latest.weights[k], raw[k]) for k in raw
    )  # training goes on with the raw weights
    progress = best.meta.progress
    assert progress is not None and progress.best_averaged is averaged_better
    assert progress.best_val_bpc == pytest.approx(2.92 - (0.5 if averaged_better else 0.0))
    assert progress.val["bpc"] == progress.best_val_bpc  # best/'s validation is its own weights'
    info = cli_inprocess("info", "-c", tmp_path / "run")
    assert info.returncode == 0, info.stderr
    assert ("best/ holds the SWA weight average" in info.stdout) is averaged_better
    assert "averaging" in info.stdout and "swa from 25%" in info.stdout
    as_json = json.loads(cli_inprocess("info", "-c", tmp_path / "run", "--json").stdout)
    assert as_json["best_averaged"] is averaged_better


def _forge_average(run: Path, change: Any) -> None:
    state_file = run / "latest" / ck.STATE_FILE
    tensors = load_file(str(state_file))
    meta = json.loads((run / "latest" / "meta.json").read_text())
    change(tensors, meta)
    save_file(tensors, str(state_file))
    meta["files"][ck.STATE_FILE] = ck._sha256(state_file.read_bytes())
    meta["checksum"] = ck._meta_checksum(meta)
    (run / "latest" / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda t, m: t.pop("avg.embed.weight"), "averaged tensors"),
        (lambda t, m: t.__setitem__("avg.embed.weight", torch.zeros(2, 2)), "avg.embed.weight"),
        (lambda t, m: t.__setitem__("avg.nothing", torch.zeros(2)), "avg.nothing"),
        (
            lambda t, m: t.__setitem__("avg.head.bias", torch.full_like(t["avg.head.bias"], float("nan"))),
            "avg.head.bias",
        ),
        (lambda t, m: m["progress"].__setitem__("average_updates", 0), "averaged tensors"),
        (lambda t, m: m["progress"].__setitem__("average_updates", -1), "progress.average_updates"),
        (lambda t, m: m["progress"].__setitem__("best_averaged", "yes"), "progress.best_averaged"),
        (lambda t, m: m["train"].__setitem__("average", "none"), "does not average"),
        (lambda t, m: m["train"].__setitem__("average", "mean"), "average"),
        (lambda t, m: m["train"].__setitem__("ema_decay", 1.5), "ema_decay"),
        (lambda t, m: m["model"].__setitem__("weight_drop", "x"), "weight_drop"),
        (lambda t, m: m["model"].__setitem__("weight_drop", 1.0), "weight_drop"),
    ],
    ids=[
        "missing",
        "shape",
        "unknown",
        "nan",
        "count-0",
        "count-negative",
        "best-averaged-str",
        "run-without-average",
        "average-kind",
        "ema-decay",
        "weight-drop-str",
        "weight-drop-1",
    ],
)
def test_a_forged_average_is_a_bad_checkpoint(
    tmp_path: Path, corpus_file: Path, cli_inprocess: Any, change: Any, needle: str
) -> None:
    run = tmp_path / "run"
    proc = cli_inprocess("train", corpus_file, "-o", run, *AVG_ARGS, "--steps", "8")
    assert proc.returncode == 0, proc.stderr
    shutil.rmtree(run / "best")
    _forge_average(run, change)
    proc = cli_inprocess("train", "--resume", run, "--steps", "12")
    assert proc.returncode == 3, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--weight-drop", "1"),
        ("--weight-drop", "-0.1"),
        ("--average", "mean"),
        ("--average-from", "1"),
        ("--ema-decay", "1"),
        ("--ema-decay", "0"),
    ],
)
def test_bad_regularisation_options_are_usage_errors(
    corpus_file: Path, cli_inprocess: Any, option: str, value: str
) -> None:
    proc = cli_inprocess("train", corpus_file, "-o", "never", option, value, "--steps", "1")
    assert proc.returncode == 2 and option in proc.stderr


def test_resume_refuses_another_averaging_or_weight_drop(
    tmp_path: Path, corpus_file: Path, cli_inprocess: Any
) -> None:
    run = tmp_path / "run"
    assert cli_inprocess("train", corpus_file, "-o", run, *AVG_ARGS, "--steps", "4").returncode == 0
    for option in (
        ("--average", "swa"),
        ("--weight-drop", "0.1"),
        ("--weight-decay", "0.3"),
        ("--ema-decay", "0.9"),
    ):
        proc = cli_inprocess("train", "--resume", run, "--steps", "8", *option)
        assert proc.returncode == 2 and "contradict" in proc.stderr, option


def test_fine_tuning_may_change_the_weight_drop(
    trained_run: Path, tmp_path: Path, corpus_file: Path, cli_inprocess: Any
) -> None:
    args = (
        "--steps",
        "2",
        "--seq-len",
        "16",
        "--batch-size",
        "4",
        "--weight-drop",
        "0.2",
        "--average",
        "ema",
    )
    proc = cli_inprocess("train", corpus_file, "--init-from", trained_run, "-o", tmp_path / "child", *args)
    assert proc.returncode == 0, proc.stderr
    child = ck.load_checkpoint(tmp_path / "child", prefer="latest")
    assert (
        child.config.weight_drop == 0.2 and child.meta.train is not None and child.meta.train.average == "ema"
    )


# ---------------------------------------------------------------------------- the plan


def test_the_plan_switches_on_from_eight_epochs_and_keeps_typed_options() -> None:
    assert regularisation_for(None) == regularisation_for(REGULARISE_FROM - 0.1) == NONE
    chosen = regularisation_for(REGULARISE_FROM)
    assert chosen.weight_drop == 0.25 and chosen.weight_decay == 0.1 and chosen.average == "ema"
    assert chosen.dropout == 0.0  # dropout lost in every measurement
    planned = plan({"dropout": 0.2}, {"average": "swa"}, 30.0)
    assert planned.model == {"weight_drop": 0.25}  # typed dropout is not planned
    assert planned.train == {"weight_decay": 0.1, "average_from": 0.5}
    assert planned.used.dropout == 0.2 and planned.used.average == "swa"
    note = planned.note()
    assert note.startswith("regularising for ~30 planned epochs") and "typed options kept" in note
    assert "--dropout 0.2" in note and "--average swa" in note
    assert not plan({}, {}, 2.0).active and plan({}, {}, 2.0).model == {}
    ModelConfig(vocab_size=3, **planned.model), TrainConfig(**planned.train)  # valid settings
    with pytest.raises(ConfigError):
        TrainConfig(average="mean")
    # The budget's unmeasured dropout rule stops where the measured plan starts.
    assert dropout_for(6) == 0.1 and dropout_for(REGULARISE_FROM) == 0.0


def _table() -> Any:
    """One measured small shape, so a budget-chosen run is quick."""
    cand = dict(name="small", layers=1, hidden=8, embed=8, seq_len=16, batch_size=4, lr=0.01, speed=1.0)
    return load_table(
        {"reference": "small", "candidates": [{**cand, "a": 2.0, "b": 1.0, "c": 0.5, "max_tokens": 4e6}]}
    )


@pytest.fixture
def small_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget_probe, "load_table", _table)
    monkeypatch.setattr(budget_probe, "measure", lambda t, device: Rates(reference=10_000))


def test_a_budget_run_of_many_epochs_is_regularised_says_so_and_resume_keeps_it(
    tmp_path: Path, corpus_file: Path, cli_inprocess: Any, small_table: None
) -> None:
    small = tmp_path / "small.txt"
    small.write_text(corpus_file.read_text()[:1200])
    out = tmp_path / "run"
    args = ("--batch-size", "8", "--seq-len", "32", "--eval-every", "20", "--warmup", "4", "--threads", "1")
    proc = cli_inprocess("train", small, "-o", out, *args, "--epochs", "12", "--average-from", "0.75")
    assert proc.returncode == 0, proc.stderr
    assert "→ small LSTM" in proc.stderr and "regularising for ~12 planned epochs" in proc.stderr
    assert "(typed options kept)" in proc.stderr and "--average ema from 75%" in proc.stderr
    ckpt = ck.load_checkpoint(out, prefer="latest")
    train = ckpt.meta.train
    assert train is not None and ckpt.meta.run is not None
    assert ckpt.config.weight_drop == 0.25 and ckpt.config.dropout == 0.0
    assert train.weight_decay == 0.1 and train.average == "ema" and train.average_from == 0.75  # typed wins
    record = ckpt.meta.run.regularisation
    assert record is not None and record.epochs == pytest.approx(12.0)
    assert record.model == {"dropout": 0.0, "weight_drop": 0.25}
    assert record.train == {"weight_decay": 0.1, "average": "ema"}  # not the typed --average-from
    assert start_row(out)["regularisation"]["train"]["average"] == "ema"
    vals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"val"' in x]
    assert "averaged_bpc" in vals[-1]  # the EMA is validated beside the raw weights
    info = cli_inprocess("info", "-c", out)
    assert "regularised" in info.stdout and "weight-drop 0.25" in info.stdout
    again = cli_inprocess("train", "--resume", out, "--epochs", "14")
    assert again.returncode == 0, again.stderr
    resumed = ck.load_checkpoint(out, prefer="latest")
    assert resumed.config.weight_drop == 0.25 and resumed.meta.run is not None
    assert resumed.meta.run.regularisation == record
    assert start_row(out)["regularisation"]["epochs"] == 12.0  # the resumed run's start row carries it


@pytest.mark.parametrize("extra", [("--epochs", "2"), ("--epochs", "12", "--hidden", "8", "--layers", "1")])
def test_short_runs_and_typed_shapes_are_not_regularised(
    tmp_path: Path, corpus_file: Path, cli_inprocess: Any, small_table: None, extra: tuple[str, ...]
) -> None:
    """Below 8 planned epochs, or with a shape typed (the budget does not choose), nothing changes:
    the run's records are those of a run before this feature (no new keys in metrics rows)."""
    small = tmp_path / "small.txt"
    small.write_text(corpus_file.read_text()[:1200])
    out = tmp_path / "run"
    proc = cli_inprocess(
        "train", small, "-o", out, "--batch-size", "8", "--seq-len", "32", "--threads", "1", *extra
    )
    assert proc.returncode == 0, proc.stderr
    assert "regularising" not in proc.stderr
    ckpt = ck.load_checkpoint(out, prefer="latest")
    assert ckpt.config.weight_drop == 0.0 and ckpt.meta.train is not None
    assert ckpt.meta.train.weight_decay == 0.01 and ckpt.meta.train.average == "none"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(
        "regularisation" not in r and "averaged_bpc" not in r and "best_averaged" not in r for r in rows
    )
    meta = json.loads((out / "latest" / "meta.json").read_text())
    assert "regularisation" not in meta["run"]
