"""--threads and the device choice: what training asks of the machine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from charnn import hardware, trainer
from charnn.config import ModelConfig, TrainConfig
from charnn.data import load_corpus
from charnn.run_plan import RunPlan
from charnn.train_records import NullReporter


def test_physical_cores_counts_something() -> None:
    import os

    assert 1 <= hardware.physical_cores() <= (os.cpu_count() or 1)


def _trainer(tmp_path: Path, corpus_file: Path, **options: object) -> trainer.Trainer:
    corpus = load_corpus([str(corpus_file)])
    model = ModelConfig(corpus.tokenizer.vocab_size, hidden=8, embed=4, layers=1)
    config = TrainConfig(steps=1, **options)  # type: ignore[arg-type]
    return trainer.Trainer(RunPlan.fresh(corpus, model, config, tmp_path), NullReporter())


def test_threads_option_sets_torch_threads(tmp_path: Path, corpus_file: Path) -> None:
    before = torch.get_num_threads()
    try:
        _trainer(tmp_path, corpus_file, threads=2, device="cpu")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_auto_keeps_rnns_off_mps_and_says_so(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainer, "mps_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    made = _trainer(tmp_path, corpus_file)
    assert made.device.type == "cpu"
    assert any("--device mps uses it anyway" in m for m in made.reporter.messages)  # type: ignore[attr-defined]
