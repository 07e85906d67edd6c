"""The option schema: each option is declared once, on a config dataclass, and everything else
(the click option, its default in --help, validation, the option tables of docs/usage.md) follows from it."""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

import pytest
from click.testing import CliRunner

from charnn import cli as cli_mod
from charnn.config import (
    AdaptConfig,
    ModelConfig,
    SampleConfig,
    TokenizerConfig,
    TrainConfig,
    cli_opt,
    flag_of,
)
from charnn.docs import USAGE, options_table, render
from charnn.errors import ConfigError

TRAIN_CONFIGS = (ModelConfig, TokenizerConfig, TrainConfig)

# A valid, non-default command-line value for every declared field.
VALUES: dict[str, tuple[str, Any]] = {
    "cell": ("gru", "gru"),
    "layers": ("3", 3),
    "hidden": ("24", 24),
    "embed": ("24", 24),
    "dropout": ("0.25", 0.25),
    "weight_drop": ("0.3", 0.3),
    "tie_weights": ("", True),
    "kind": ("sentencepiece", "sentencepiece"),
    "vocab_size": ("300", 300),
    "max_vocab": ("50", 50),
    "min_char_count": ("2", 2),
    "normalize": ("nfc", "nfc"),
    "source": ("runs/other", "runs/other"),
    "batch_size": ("4", 4),
    "seq_len": ("9", 9),
    "lr": ("0.01", 0.01),
    "weight_decay": ("0.5", 0.5),
    "average": ("swa", "swa"),
    "average_from": ("0.75", 0.75),
    "ema_decay": ("0.99", 0.99),
    "warmup_steps": ("7", 7),
    "grad_clip": ("2", 2.0),
    "schedule": ("linear", "linear"),
    "beta2": ("0.95", 0.95),
    "steps": ("11", 11),
    "epochs": ("1.5", 1.5),
    "time_limit": ("1h30m", 5400.0),
    "decay_steps": ("13", 13),
    "eval_every": ("17", 17),
    "eval_chars": ("19", 19),
    "save_every": ("23", 23),
    "patience": ("4", 4),
    "min_delta": ("0.01", 0.01),
    "sample_every": ("29", 29),
    "val_fraction": ("0.2", 0.2),
    "seed": ("5", 5),
    "device": ("cpu", "cpu"),
    "threads": ("3", 3),
    "precision": ("bf16", "bf16"),
    "max_bad_steps": ("3", 3),
    "length": ("12", 12),
    "temperature": ("0.5", 0.5),
    "top_k": ("4", 4),
    "top_p": ("0.9", 0.9),
    "beam": ("3", 3),
    "length_penalty": ("0.5", 0.5),
    "repetition_penalty": ("1.5", 1.5),
    "no_repeat_ngram": ("6", 6),
    "num_samples": ("2", 2),
    "stops": ("xy", ("xy",)),
    "adapt": ("", True),
    "adapt_lr": ("0.5", 0.5),
    "adapt_decay": ("0.1", 0.1),
    "adapt_segment": ("7", 7),
}


def _declared(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if cli_opt(f) is not None]


def _argv(classes: tuple[type, ...], skip: tuple[str, ...] = ()) -> list[str]:
    argv = []
    for cls in classes:
        for f in _declared(cls):
            if f.name in skip:
                continue
            text, _ = VALUES[f.name]
            argv += [flag_of(f)] + ([text] if text else [])
    return argv


def test_every_train_option_reaches_its_config(monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[Any] = []
    monkeypatch.setattr("charnn.app.start_training", got.append)
    result = CliRunner().invoke(cli_mod.cli, ["train", "x.txt", *_argv(TRAIN_CONFIGS, skip=("steps",))])
    assert result.exit_code == 0, result.output
    (request,) = got
    sections = {ModelConfig: request.model, TokenizerConfig: request.tokenizer, TrainConfig: request.train}
    for cls, given in sections.items():
        expected = {f.name: VALUES[f.name][1] for f in _declared(cls) if f.name != "steps"}
        assert given == expected, cls.__name__


def test_options_left_at_their_default_are_not_reported_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[Any] = []
    monkeypatch.setattr("charnn.app.start_training", got.append)
    result = CliRunner().invoke(cli_mod.cli, ["train", "--resume", "--steps", "5"])
    assert result.exit_code == 0, result.output
    assert got[0].train == {"steps": 5} and got[0].model == {} and got[0].tokenizer == {}


def test_every_sample_option_reaches_the_sample_config(monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[SampleConfig] = []
    monkeypatch.setattr("charnn.app.run_sampling", lambda ckpt, config, *rest, **kw: got.append(config))
    argv = _argv((SampleConfig,), skip=("temperature", "top_k", "top_p"))  # those contradict --beam
    result = CliRunner().invoke(cli_mod.cli, ["sample", *argv])
    assert result.exit_code == 0, result.output
    expected = {f.name: VALUES[f.name][1] for f in _declared(SampleConfig)}
    expected.update(temperature=None, top_k=None, top_p=None)  # None: 1 unless given (SampleConfig.temp)
    assert dataclasses.asdict(got[0]) == {**expected, "seed": 5}


@pytest.mark.parametrize("command", ["eval", "score"])
def test_every_adapt_option_reaches_the_adapt_config(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[Any] = []
    target = "charnn.app.run_eval" if command == "eval" else "charnn.app.run_score"
    monkeypatch.setattr(target, lambda *args, **kw: got.append(kw["adapt"]) or [])
    result = CliRunner().invoke(cli_mod.cli, [command, "-", *_argv((AdaptConfig,))])
    assert result.exit_code == 0, result.output
    assert dataclasses.asdict(got[0]) == {f.name: VALUES[f.name][1] for f in _declared(AdaptConfig)}
    alone = CliRunner().invoke(cli_mod.cli, [command, "-", "--adapt-lr", "0.1"])
    assert isinstance(alone.exception, ConfigError)  # exit 2 through charnn's entry point
    assert "--adapt-lr only make(s) sense with --adapt" in str(alone.exception)


@pytest.mark.parametrize("command", sorted(cli_mod.cli.commands))
def test_every_option_has_a_home(command: str) -> None:
    """Each click parameter is a named argument of the command or a field of a config it takes:
    one declared and wired up nowhere would otherwise be silently ignored."""
    cmd = cli_mod.cli.commands[command]
    signature = inspect.signature(cmd.callback)  # type: ignore[arg-type]
    explicit = {name for name, p in signature.parameters.items() if p.kind is not p.VAR_KEYWORD}
    takes_options = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    fields = (
        {f.name for cls in (*TRAIN_CONFIGS, SampleConfig, AdaptConfig) for f in _declared(cls)}
        if takes_options
        else set()
    )
    homeless = {p.name for p in cmd.params} - explicit - fields
    assert not homeless


def test_an_option_without_a_home_is_an_error() -> None:
    with pytest.raises(TypeError, match="without a home: stray"):
        cli_mod._no_leftovers({"stray": 1})


def test_help_shows_the_dataclass_defaults() -> None:
    table = options_table("train")
    for cls in TRAIN_CONFIGS:
        for f in _declared(cls):
            if f.default not in (None, False):
                shown = f"{f.default:g}" if isinstance(f.default, float) else str(f.default)
                line = next(
                    line
                    for line in table.splitlines()
                    if flag_of(f) + " " in line or line.startswith(f"| `{flag_of(f)}`")
                )
                # The shape options the budget chooses (charnn.budget) name their fallback.
                assert f"| `{shown}` |" in line or f"| `by budget, else {shown}` |" in line


def test_usage_option_tables_match_help() -> None:
    """`make readme` regenerates them; this fails when --help and docs/usage.md disagree."""
    text = USAGE.read_text(encoding="utf-8")
    assert "<!-- options: train -->" in text and "<!-- options: sample -->" in text
    assert render(text) == text, "docs/usage.md option tables are stale: run `make readme`"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TrainConfig(seed=-1), "--seed must be in"),
        (lambda: TrainConfig(seed=2**64), "--seed must be in"),
        (lambda: TrainConfig(epochs=math.inf), "--epochs must be a finite number"),
        (lambda: TrainConfig(time_limit=1e30), "--time must be"),
        (lambda: TrainConfig(lr=math.nan), "--lr must be a finite number"),
        (lambda: TrainConfig(batch_size=0), "--batch-size must be"),
        (lambda: TrainConfig(device="tpu"), "--device must be one of auto, cpu, cuda, mps"),
        (lambda: TrainConfig(steps="10"), "--steps must be a whole number"),  # type: ignore[arg-type]
        (lambda: SampleConfig(length_penalty=math.nan), "--length-penalty must be a finite number"),
        (lambda: SampleConfig(temperature=-1.0), "--temp must be"),
        (lambda: ModelConfig(vocab_size=5, dropout=1.0), r"--dropout must be in \[0, 1\)"),
        (lambda: ModelConfig(vocab_size=5, tie_weights=True, embed=3, hidden=4), "--tie-weights needs"),
    ],
)
def test_the_library_refuses_what_the_cli_refuses(make: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--epochs", "inf"],
        ["train", "--time", "99999999h"],
        ["train", "--seed", "1" + "0" * 30],
        ["sample", "--length-penalty", "nan"],
        ["train", "--time", "soon"],
    ],
)
def test_absurd_values_are_usage_errors(argv: list[str], cli_inprocess) -> None:  # type: ignore[no-untyped-def]
    proc = cli_inprocess(*argv)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("charnn: error:") and len(proc.stderr.strip().splitlines()) == 1
