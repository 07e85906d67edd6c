"""Samples while training (``--sample-every``): one per interval in RUN/samples.txt and on
stderr, the same prime and seed each time, and no effect on what the run computes."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import TINY_MODEL_ARGS

HEADER = re.compile(r"^=== step (\d+) \(seed (\d+)\) ===$", re.MULTILINE)


def _trainer(tmp_path: Path, corpus_text: str, out: str = "run", **train: object):
    from charnn.config import ModelConfig, TrainConfig
    from charnn.data import load_corpus
    from charnn.run_plan import RunPlan
    from charnn.train_records import NullReporter
    from charnn.trainer import Trainer

    (tmp_path / "c.txt").write_text(corpus_text)
    corpus = load_corpus([str(tmp_path / "c.txt")])
    config = TrainConfig(
        **{
            "batch_size": 4,
            "seq_len": 16,
            "warmup_steps": 0,
            "eval_every": 1000,
            "device": "cpu",
            "seed": 5,
            "steps": 12,
            **train,
        }
    )  # type: ignore[arg-type]
    model_config = ModelConfig(
        vocab_size=corpus.tokenizer.vocab_size, hidden=16, embed=8, layers=2, dropout=0.2
    )  # dropout: a consumed global RNG would change the weights
    return Trainer(RunPlan.fresh(corpus, model_config, config, tmp_path / out), NullReporter())


def test_samples_file_grows_by_one_sample_per_interval(tmp_path: Path, corpus_text: str) -> None:
    trainer = _trainer(tmp_path, corpus_text, sample_every=4)
    trainer.run()
    text = (tmp_path / "run" / "samples.txt").read_text()
    assert [int(m.group(1)) for m in HEADER.finditer(text)] == [4, 8, 12]
    assert {int(m.group(2)) for m in HEADER.finditer(text)} == {5}
    reports = trainer.reporter.samples
    assert [r.step for r in reports] == [4, 8, 12]
    assert all(len(r.text) == 200 and r.text in text for r in reports)
    assert all(r.seconds >= 0 for r in reports)


def test_sampling_leaves_training_untouched(tmp_path: Path, corpus_text: str) -> None:
    """Same weights, same carried hidden state and train mode with and without samples."""
    with_samples = _trainer(tmp_path, corpus_text, out="a", sample_every=3)
    with_samples.run()  # each trainer seeds torch's global RNG: build the second after the first ran
    without = _trainer(tmp_path, corpus_text, out="b", sample_every=0)
    without.run()
    assert with_samples.reporter.samples and not without.reporter.samples
    assert not (tmp_path / "b" / "samples.txt").exists()
    a, b = with_samples.model.state_dict(), without.model.state_dict()
    assert all(a[k].equal(b[k]) for k in a)
    assert with_samples.model.training == without.model.training


def test_same_weights_give_the_same_sample(tmp_path: Path, corpus_text: str) -> None:
    trainer = _trainer(tmp_path, corpus_text, sample_every=4)
    first = trainer.sampler.sample(trainer.model)
    assert trainer.sampler.sample(trainer.model) == first  # fixed seed and prime: comparable over time


def test_resume_keeps_appending_without_repeating_steps(
    tmp_path: Path, corpus_file: Path, cli_inprocess
) -> None:
    args = (
        *TINY_MODEL_ARGS,
        "--seq-len",
        "16",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--sample-every",
        "5",
        "--save-every",
        "10",
    )
    proc = cli_inprocess("train", corpus_file, "--out", tmp_path / "run", "--steps", "10", *args)
    assert proc.returncode == 0, proc.stderr
    assert "sample at step 5:" in proc.stderr and "sample at step 10:" in proc.stderr
    samples = tmp_path / "run" / "samples.txt"
    # As if the run had gone on past its last checkpoint (step 10) before a crash: a sample of step 15.
    with open(samples, "a") as fh:
        fh.write("=== step 15 (seed 1337) ===\nlost with the crash\n\n")
    proc = cli_inprocess("train", "--resume", "--out", tmp_path / "run", "--steps", "20")
    assert proc.returncode == 0, proc.stderr
    text = samples.read_text()
    assert [int(m.group(1)) for m in HEADER.finditer(text)] == [5, 10, 15, 20]
    assert "lost with the crash" not in text


def test_sample_text_is_printed_literally(tmp_path: Path) -> None:
    from rich.console import Console

    from charnn.console import TrainReporter
    from charnn.train_records import SampleReport

    console = Console(record=True, width=80, force_terminal=False)
    TrainReporter(console).sampled(SampleReport(7, "[bold]x[/] \x1b[31m", 0.01))
    shown = console.export_text()
    assert "sample at step 7:" in shown and "[bold]x[/]" in shown and "\x1b" not in shown
