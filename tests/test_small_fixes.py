"""Bugs found by reading (issue 18 §6), each with the test that failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import TINY_MODEL_ARGS

from charnn.errors import EXIT_USAGE

FAST = ("--seq-len", "16", "--batch-size", "4", "--device", "cpu", "--sample-every", "0")


def test_resume_refusal_names_the_warmup_flag(trained_run_copy: Path, cli_inprocess) -> None:
    proc = cli_inprocess("train", "--resume", "--out", trained_run_copy, "--warmup", "7", "--steps", "40")
    assert proc.returncode == EXIT_USAGE
    assert "--warmup 7 (run has" in proc.stderr and "--warmup-steps" not in proc.stderr


def test_fine_tuning_accepts_the_parents_own_subword_vocab_size(
    corpus_file: Path, tmp_path: Path, cli_inprocess
) -> None:
    parent = tmp_path / "sp"
    common = (*TINY_MODEL_ARGS, "--steps", "2", *FAST)
    proc = cli_inprocess(
        "train", corpus_file, "-o", parent, "--tokenizer", "unigram", "--vocab-size", "340", *common
    )
    assert proc.returncode == 0, proc.stderr
    child = tmp_path / "child"
    proc = cli_inprocess(
        "train", corpus_file, "--init-from", parent, "-o", child,
        "--tokenizer", "sentencepiece", "--vocab-size", "340", *common,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads((child / "latest" / "meta.json").read_text())["tokenizer"]["kind"] == "unigram"
    proc = cli_inprocess(
        "train", corpus_file, "--init-from", parent, "-o", tmp_path / "c2", "--vocab-size", "341"
    )
    assert proc.returncode == EXIT_USAGE and "drop --vocab-size" in proc.stderr


def test_beam_rule_lives_in_the_library() -> None:
    """A library caller's temperature was silently ignored with a beam (only the CLI refused it)."""
    import pytest

    from charnn.config import SampleConfig
    from charnn.errors import ConfigError

    for bad in ({"temperature": 0.5}, {"top_k": 3}, {"top_p": 0.9}):
        with pytest.raises(ConfigError, match="--beam is deterministic search"):
            SampleConfig(beam=2, **bad)
    assert SampleConfig(beam=2).beam == SampleConfig(beam=2, temperature=0).beam == 2
    assert SampleConfig().temp == 1.0 and SampleConfig(temperature=0.3).temp == 0.3


def test_dead_code_is_gone() -> None:
    import inspect

    from charnn import checkpoint, data, plotting, tokenizer

    assert not hasattr(checkpoint, "read_meta") and not hasattr(tokenizer, "canonical_kind")
    assert not hasattr(plotting, "X_AXES")
    assert "vocab_size" not in inspect.signature(data.load_corpus).parameters  # was never read


def test_one_atomic_write_helper() -> None:
    """metrics, the corpus cache's records and the surprisal page write through charnn.atomic
    (the cache's ids file is streamed to its own temporary file: not a whole-data write)."""
    from pathlib import Path

    import charnn

    package = Path(charnn.__file__).parent
    for module in ("metrics.py", "corpus_cache.py", "surprisal_page.py"):
        text = (package / module).read_text()
        assert "write_atomic" in text, module
        if module != "corpus_cache.py":
            assert "os.replace" not in text and "mkstemp" not in text, module


def test_write_atomic_replaces_and_cleans_up(tmp_path: Path) -> None:
    import pytest

    from charnn.atomic import write_atomic

    target = tmp_path / "f.txt"
    target.write_text("old")
    write_atomic(target, "new\n")
    assert target.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "f.txt", b"x")
    assert target.read_text() == "new\n"
