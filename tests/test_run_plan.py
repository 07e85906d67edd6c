"""Planning a run (charnn.run_plan): a new, a resumed and a fine-tuned run each become one
RunPlan, whose one RunDir is held through one lock path while the run lasts."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_text

from charnn.app import TrainRequest
from charnn.checkpoint import load_checkpoint
from charnn.errors import ConfigError, RunBusyError
from charnn.run_plan import planned_run
from charnn.rundir import RunDir

TINY = {"hidden": 8, "embed": 4, "layers": 1}


def test_a_new_run_is_planned_from_its_options_and_holds_its_directory(
    corpus_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    request = TrainRequest(files=[str(corpus_file)], out=str(out), model=TINY, train={"steps": 3, "seed": 4})
    with planned_run(request) as plan:
        assert plan.resume is None and plan.init_from is None and plan.parent is None
        assert plan.model.vocab_size == plan.corpus.tokenizer.vocab_size and plan.model.hidden == 8
        assert plan.train.steps == 3 and plan.out == out
        assert plan.invocation is not None and plan.invocation.argv
        assert not out.exists()  # planning writes nothing: the run claims the directory
        with plan.claimed():
            with plan.rundir.lock():  # re-entrant for the run's own RunDir: each save takes it again
                pass
            with pytest.raises(RunBusyError), RunDir(out).lock():  # any other holder is another writer
                pass
        with RunDir(out).lock():  # released when the run ends
            pass


def test_a_new_run_checks_its_directory_again_when_it_claims_it(
    trained_run: Path, corpus_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    request = TrainRequest(files=[str(corpus_file)], out=str(out), model=TINY)
    with planned_run(request) as plan:
        shutil.copytree(trained_run, out)  # another process started a run there meanwhile
        with pytest.raises(ConfigError, match="already holds a run"), plan.claimed():
            pass
    with planned_run(dataclasses.replace(request, force=True)) as plan:
        assert (out / "best").is_dir()  # planning writes nothing, --force included
        with plan.claimed():  # the old run's best/ goes once the new run holds the directory
            assert not (out / "best").exists() and (out / "latest").is_dir()


def test_a_resumed_run_is_locked_before_anything_is_read(trained_run_copy: Path, tmp_path: Path) -> None:
    request = TrainRequest(
        files=[str(tmp_path / "missing.txt")], resume=str(trained_run_copy), train={"steps": 40}
    )
    with RunDir(trained_run_copy).lock(), pytest.raises(RunBusyError):
        with planned_run(request):
            pass
    request = TrainRequest(files=[], resume=str(trained_run_copy), train={"steps": 40})
    with planned_run(request) as plan:
        ckpt = load_checkpoint(trained_run_copy, prefer="latest")
        assert plan.resume is not None and plan.resume.step == ckpt.step == 30
        assert plan.model == ckpt.config and plan.train.steps == 40 and plan.init_from is None
        assert ckpt.meta.corpus is not None and plan.corpus.sha256 == ckpt.meta.corpus.sha256


def test_a_fine_tuned_run_starts_from_the_parents_weights_and_grown_vocabulary(
    trained_run: Path, tmp_path: Path
) -> None:
    text = tmp_path / "new.txt"
    text.write_text("жЖ€\n" + make_text(lines=20, seed=3), encoding="utf-8")
    request = TrainRequest(files=[str(text)], out=str(tmp_path / "child"), init_from=str(trained_run))
    with planned_run(request) as plan:
        parent = load_checkpoint(trained_run)
        assert plan.init_from is not None and plan.init_from.path == parent.path and plan.resume is None
        assert plan.parent is not None and plan.parent.path == str(parent.path.resolve())
        assert plan.model == parent.config.replace(vocab_size=parent.config.vocab_size + 3)
        assert plan.corpus.tokenizer.chars[-3:] == sorted("жЖ€")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "new_text",
    ["abc\n", "Zürich, naïve café ~ \x01\n", "жЖ€ and \U0001f600 too\nand more ab"],
)
def test_growing_the_vocabulary_through_the_cache_matches_growing_it_in_memory(
    new_text: str, tmp_path: Path
) -> None:
    """Fine-tuning reads its corpus through the cache like every run; the grown vocabulary and
    the ids are the in-memory reader's, new characters after the old in code-point order."""
    from charnn.corpus_cache import load_corpus_cached
    from charnn.data import load_corpus
    from charnn.tokenizer import CharTokenizer

    parent = CharTokenizer(list("mab\n ,"))
    path = tmp_path / "new.txt"
    path.write_text(new_text, encoding="utf-8")
    cached = load_corpus_cached([str(path)], parent, cache_dir=tmp_path / "cache", grow_vocab=True)
    memory = load_corpus([str(path)], tokenizer=parent, grow_vocab=True)
    assert cached.tokenizer.chars == memory.tokenizer.chars  # type: ignore[attr-defined]
    assert cached.tokenizer.chars[:6] == parent.chars  # type: ignore[attr-defined]
    np.testing.assert_array_equal(np.asarray(cached.ids), memory.ids)
    assert cached.sha256 == memory.sha256


def test_planning_never_imports_torch(trained_run: Path, tmp_path: Path) -> None:
    """Planning reads options, corpora and checkpoints as numpy: a run refused while it is
    planned exits without loading torch, which only the trainer needs."""
    import subprocess
    import sys

    text = tmp_path / "new.txt"
    text.write_text("жЖ€\n" + make_text(lines=20, seed=3), encoding="utf-8")
    code = (
        "import sys\n"
        "from charnn.app import TrainRequest\n"
        "from charnn.run_plan import planned_run\n"
        f"request = TrainRequest(files=[{str(text)!r}], out={str(tmp_path / 'child')!r}, "
        f"init_from={str(trained_run)!r})\n"
        "with planned_run(request) as plan:\n"
        "    assert plan.model.vocab_size > plan.init_from.config.vocab_size\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_the_plan_settles_threads_and_a_rank_takes_rank_0s(corpus_file: Path, tmp_path: Path) -> None:
    """Threads are the plan's one decision that waits for the model: the count goes into the
    train config (checkpoints and --resume keep it), the choice into the plan (metadata, start
    row); under torchrun a rank takes rank 0's count, whatever its own options gave."""
    import torch

    from charnn.config import ModelConfig, TrainConfig
    from charnn.data import StreamBatcher, load_corpus
    from charnn.distributed import Group
    from charnn.run_plan import RunPlan
    from charnn.trainer import RunLength, build_model

    class SecondRank(Group):
        def broadcast_floats(self, values: list[float] | None, n: int) -> list[float] | None:
            return [3.0]  # rank 0 runs with 3 threads

    corpus = load_corpus([str(corpus_file)])
    model_config = ModelConfig(corpus.tokenizer.vocab_size, **TINY)  # type: ignore[arg-type]
    plan = RunPlan.fresh(corpus, model_config, TrainConfig(steps=2, threads=2), tmp_path / "run")
    batcher, cpu = StreamBatcher(corpus.ids, 2, 8), torch.device("cpu")
    model, length = build_model(plan, cpu), RunLength.of(plan.train, batcher)
    before = torch.get_num_threads()
    try:
        settled = plan.settle_threads(model, batcher, cpu, length)
        assert settled.train.threads == 2 and settled.threads is not None
        assert settled.threads.how == "--threads" and torch.get_num_threads() == 2
        second = dataclasses.replace(plan, group=SecondRank(1, 2, 1))
        rank1 = second.settle_threads(model, batcher, cpu, length)
        assert rank1.train.threads == 3 and torch.get_num_threads() == 3
        assert rank1.threads is not None and rank1.threads.how == "--threads on rank 0"
    finally:
        torch.set_num_threads(before)
