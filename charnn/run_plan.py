"""Planning a training run: everything decided before its first step.

``charnn train`` starts a run three ways: a new run, ``--resume`` (continue one) and
``--init-from`` (fine-tune: a new run from another run's weights). :func:`planned_run` turns each
into one :class:`RunPlan`: the configs, the corpus (read by :func:`load_training_corpus`, the one
loader), where the weights and state start, the parent run, and the one
:class:`~charnn.rundir.RunDir` whose lock rank 0 holds while the run writes
(:meth:`RunPlan.claimed`). The :class:`~charnn.trainer.Trainer` runs the plan and never reads
options, checkpoints or the directory's layout itself::

    TrainRequest ──planned_run──▶ RunPlan ──Trainer(plan).run()──▶ claim RUN/, loop ──Checkpointer──▶ RUN/
    (the options)                 (configs, corpus, start,                    (save, restore,   latest/
                                   parent, RunDir, claim)                      recover)         best/

Planning reads checkpoints as numpy and never builds the run's model: the model's shape is
chosen here (:func:`choose_shape`) and built by the trainer. It imports torch only when the time
budget probes the machine to choose a shape. One decision waits for the model: torch's CPU
threads, which may be measured on it. The trainer's set-up asks the plan for them
(:meth:`RunPlan.settle_threads`, :mod:`charnn.threads`' policy) and runs the settled plan.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charnn import finetune, regularisation
from charnn.checkpoint import (
    BEST,
    LATEST,
    META,
    Checkpoint,
    check_training_meta,
    load_checkpoint,
    train_config,
)
from charnn.checkpoint_meta import Lineage
from charnn.config import ModelConfig, TokenizerConfig, TrainConfig, flag_of
from charnn.data import Corpus, StreamBatcher
from charnn.distributed import SOLO, Group
from charnn.errors import ConfigError, DataError, VocabularyError
from charnn.metrics_rows import BudgetRecord, Invocation, RegularisationRecord
from charnn.rundir import RunDir, resolve_checkpoint
from charnn.threads import ThreadChoice
from charnn.tokenizer import Tokenizer

if TYPE_CHECKING:
    import torch

    from charnn.app import TrainRequest
    from charnn.model import CharRNN
    from charnn.trainer import RunLength

__all__ = ["RunPlan", "choose_shape", "load_training_corpus", "planned_run"]


@dataclass(frozen=True)
class Claim:
    """What taking the run directory involves beyond its lock. A new run (fresh or fine-tuned)
    refuses a directory that holds a run unless ``force``, which removes the old run's best/.
    A resumed run's planning already holds the lock, and a plan built in code checks nothing."""

    new: bool = False
    force: bool = False
    fine_tune: bool = False  # only changes the refusal's advice


@dataclass(frozen=True)
class RunPlan:
    """A run, decided: what :class:`~charnn.trainer.Trainer` needs and nothing it must work out.

    A new run has neither ``resume`` nor ``init_from``: its model starts from ``--seed``.
    """

    corpus: Corpus
    model: ModelConfig
    train: TrainConfig
    rundir: RunDir  # the run's one RunDir: its lock, its saves, its samples
    group: Group = SOLO  # this process's place among torchrun's ranks
    resume: Checkpoint | None = None  # continue this checkpoint: weights, optimizer, progress, hidden state
    init_from: Checkpoint | None = None  # fine-tuning: this parent's weights, everything else fresh
    parent: Lineage | None = None  # where the weights came from (--init-from), in every checkpoint
    invocation: Invocation | None = None  # command line and versions, for the metadata
    claim: Claim = Claim()
    threads: ThreadChoice | None = None  # torch's CPU threads and why: settled by settle_threads

    @property
    def out(self) -> Path:
        return self.rundir.path

    def settle_threads(
        self, model: CharRNN, batcher: StreamBatcher, device: torch.device, length: RunLength
    ) -> RunPlan:
        """The plan with torch's CPU threads decided and set (:mod:`charnn.threads`): ``--threads``,
        else the count a resumed run recorded, else ``OMP_NUM_THREADS``, else measured on the
        run's first batch through ``model`` (built, so planning itself stays torch-free); under
        torchrun every rank takes rank 0's. The count goes into the train config (checkpoints and
        ``--resume`` keep it), the choice into the run's metadata and metrics."""
        from charnn.torch_threads import run_threads

        choice = run_threads(model, batcher, self.train, self.resume, device, length, self.group)
        return dataclasses.replace(self, train=self.train.replace(threads=choice.count), threads=choice)

    @classmethod
    def fresh(
        cls, corpus: Corpus, model: ModelConfig, train: TrainConfig, out: str | os.PathLike[str]
    ) -> RunPlan:
        """A new run on a corpus already in memory, in one process (library callers, tests,
        benchmarks): no options to read and no checks of the directory beyond its lock."""
        return cls(corpus, model, train, RunDir(out))

    @contextmanager
    def claimed(self) -> Iterator[None]:
        """Hold the run directory while the run writes to it (the trainer's first step): rank 0
        takes the lock (re-entering it when planning took it), then checks the directory again,
        as another process may have started a run there since it was planned."""
        claim = self.claim

        def check() -> None:
            if claim.new:
                _refuse_existing(self.rundir, claim.force, claim.fine_tune)
                if claim.force:
                    self.rundir.remove(BEST)  # the old run's best must not outlive it

        with holding(self.rundir, self.group, check):
            yield


def check_request(request: TrainRequest) -> None:
    """Options that contradict each other, refused before anything is read or fetched."""
    if request.resume is not None and request.init_from is not None:
        raise ConfigError(
            "--resume continues a run, --init-from starts a new one from trained weights: give one of them"
        )


@contextmanager
def planned_run(request: TrainRequest, group: Group = SOLO) -> Iterator[RunPlan]:
    """The plan of the run ``request`` asks for, valid until the block ends.

    Planning writes nothing. A resumed run's directory is locked before its checkpoint is read and
    stays locked until the block ends. A new or fine-tuned run reads and encodes its corpus
    unlocked (after a first check that the directory may take it), and :meth:`RunPlan.claimed`
    locks and checks it again only once the run is ready to write: a bad corpus, a corpus too
    short for one window or a missing device never leaves a directory behind, nor costs the run
    that ``--force`` would replace. Under torchrun rank 0 alone locks, checks and writes; the
    other ranks plan the same run without touching the directory."""
    check_request(request)
    from charnn.metrics import invocation

    inv = invocation(request.argv)
    if request.resume is not None:
        run = _run_to_resume(Path(request.resume or request.out))
        if group.is_writer:
            resolve_checkpoint(run.path, LATEST)  # "no such checkpoint" before the lock creates anything
        with holding(run, group, run.refuse_foreign):
            yield _resume_plan(request, run, group, inv)
        return
    run = RunDir(request.out)
    claim = Claim(new=True, force=request.force, fine_tune=request.init_from is not None)
    if group.is_writer:
        _refuse_existing(run, claim.force, claim.fine_tune)  # before reading the corpus: fail fast
    plan = (_fine_tune_plan if claim.fine_tune else _new_plan)(request, run, group, inv)
    yield dataclasses.replace(plan, claim=claim)


@contextmanager
def holding(run: RunDir, group: Group, check: Callable[[], None]) -> Iterator[None]:
    """The one lock path: rank 0 holds the run directory's lock and runs ``check`` under it; the
    other ranks never write there, so they neither lock nor check."""
    if not group.is_writer:
        yield
        return
    with run.lock():
        check()
        yield


# ---------------------------------------------------------------------------- the three starts


def _new_plan(request: TrainRequest, run: RunDir, group: Group, inv: Invocation) -> RunPlan:
    config = TrainConfig(**request.train)
    tokenizer = TokenizerConfig(**request.tokenizer)
    source: TokenizerConfig | Tokenizer = tokenizer.replace(
        seed=config.seed
    )  # a subword sample follows --seed
    if tokenizer.source is not None:
        others = sorted(set(request.tokenizer) - {"source"})
        if others:
            flags = ", ".join(flag_of(f) for f in dataclasses.fields(TokenizerConfig) if f.name in others)
            raise ConfigError(f"--tokenizer-from takes the whole tokenizer from the checkpoint: drop {flags}")
        source = load_checkpoint(tokenizer.source).tokenizer
    if request.vocabulary is not None:  # a ready tokenizer (classify's members share one)
        source = request.vocabulary
    # subwords learn from the training split only (val_fraction)
    corpus = load_training_corpus(request, group, source, val_fraction=config.val_fraction)
    _notes(group, corpus.notes)
    model, config, inv = choose_shape(request, corpus, config, group, inv)
    return RunPlan(corpus, model, config, run, group, invocation=inv)


def choose_shape(
    request: TrainRequest, corpus: Corpus, config: TrainConfig, group: Group, inv: Invocation
) -> tuple[ModelConfig, TrainConfig, Invocation]:
    """The model's shape for a new run, over the corpus' vocabulary, and the settings that go
    with it; the invocation with the choice recorded (a resumed run keeps it).

    The one place a new run's shape is decided: after the corpus is read (its vocabulary and size
    are known, and so is the run's length in ``config``) and before any model is built. The shape
    options given are taken as they are; with none typed, the time budget picks the shape (and
    the settings it was fitted with) from a token-fitted table and a short live probe of this
    machine (:mod:`charnn.budget`; the probe is the one part of planning that runs torch).
    When the tokens the budget buys make enough passes over the training text, the run is
    regularised too (:mod:`charnn.regularisation`; typed options win).
    Resumed and fine-tuned runs take their shape from their checkpoint."""
    from charnn.budget import applies

    vocab = corpus.tokenizer.vocab_size
    if applies(request.model, corpus.tokenizer.kind, False, group.active) is not None:
        return ModelConfig(vocab_size=vocab, **request.model), config, inv
    from charnn.budget_probe import apply_choice
    from charnn.trainer import select_device

    train_tokens = int(len(corpus.ids) * (1 - config.val_fraction))
    applied = apply_choice(request.model, request.train, config, train_tokens, select_device(config.device))
    model, config = applied.model, applied.config
    record: RegularisationRecord | None = None
    epochs = applied.choice.tokens / max(1, train_tokens)  # the passes the start-up line prints
    planned = regularisation.plan(request.model, request.train, epochs)
    if planned.active:  # many passes: regularised too (typed options are not in the plan)
        model, config = {**model, **planned.model}, config.replace(**planned.train)
        note = planned.note()
        record = RegularisationRecord(
            epochs=round(epochs, 3), model=planned.model, train=planned.train, reason=note
        )
    if not request.quiet:
        _notes(group, [applied.choice.reason, record.reason if record is not None else None])
    budget = BudgetRecord.from_json(applied.choice.as_dict())
    inv = dataclasses.replace(inv, budget=budget, regularisation=record)
    return ModelConfig(vocab_size=vocab, **model), config, inv


def _resume_plan(request: TrainRequest, run: RunDir, group: Group, inv: Invocation) -> RunPlan:
    ckpt = load_checkpoint(run.path, prefer=LATEST)
    records = check_training_meta(ckpt)
    group.check_resume(ckpt.meta.processes)  # before reading the corpus
    refuse_contradictions(ckpt.config, request.model, request.model)
    kind = TokenizerConfig(kind=request.tokenizer.get("kind", ckpt.tokenizer.kind)).kind  # sentencepiece
    if kind != ckpt.tokenizer.kind:
        raise ConfigError(
            f"resume options contradict the checkpoint: --tokenizer {kind} (run has {ckpt.tokenizer.kind})"
        )
    config = merge_resume(train_config(ckpt), request.train)
    sources = list(request.files) or records.corpus.sources
    try:
        corpus = load_training_corpus(request, group, ckpt.tokenizer, files=sources)
    except VocabularyError as exc:
        if not request.files:
            raise
        raise VocabularyError(f"{exc}; {init_from_hint(run.path)}") from None
    check_resume_corpus(ckpt, corpus)
    _notes(group, corpus.notes)
    parent = ckpt.meta.parent
    if ckpt.meta.run is not None and ckpt.meta.run.budget is not None:
        # The budget's choice (and the regularisation planned with it) stays the run's.
        inv = dataclasses.replace(
            inv, budget=ckpt.meta.run.budget, regularisation=ckpt.meta.run.regularisation
        )
    return RunPlan(corpus, ckpt.config, config, run, group, resume=ckpt, parent=parent, invocation=inv)


def _fine_tune_plan(request: TrainRequest, run: RunDir, group: Group, inv: Invocation) -> RunPlan:
    """A new run from the weights of ``request.init_from`` (its best/ for a run directory): the
    parent's shape and tokenizer (grown by new characters), a fresh optimizer and schedule."""
    assert request.init_from is not None
    parent = load_checkpoint(request.init_from)
    finetune.check_tokenizer_options(parent, request.tokenizer)
    finetune.child_model_config(parent, request.model, parent.config.vocab_size)  # refuse clashes early
    config = TrainConfig(**request.train)
    corpus = load_training_corpus(request, group, parent.tokenizer, grow_vocab=True)
    model = finetune.child_model_config(parent, request.model, corpus.tokenizer.vocab_size)
    grown = finetune.describe_growth(parent.tokenizer, corpus.tokenizer, corpus.ids)
    _notes(
        group,
        [
            *corpus.notes,
            f"fine-tuning from {parent.path} (step {parent.step}): fresh optimizer and schedule",
            grown,
        ],
    )
    lineage = finetune.lineage(parent)
    return RunPlan(corpus, model, config, run, group, init_from=parent, parent=lineage, invocation=inv)


# ---------------------------------------------------------------------------- the corpus


def load_training_corpus(
    request: TrainRequest,
    group: Group,
    tokenizer: TokenizerConfig | Tokenizer,
    files: Sequence[str] | None = None,
    val_fraction: float = 0.0,
    grow_vocab: bool = False,
) -> Corpus:
    """The one way a run reads its corpus (``files``, default the request's): through the
    on-disk cache of encoded corpora (memory-mapped ids), with a progress bar for big ones on
    rank 0's stderr (none with ``train -q``). ``tokenizer`` is how to build one (a new run) or the
    checkpoint's (resume; fine-tuning with ``grow_vocab``, which adds the text's new characters)."""
    from charnn.console import ByteBar
    from charnn.corpus_cache import load_corpus_cached

    return load_corpus_cached(
        request.files if files is None else files,
        tokenizer,
        request.encoding_errors,
        request.cache_dir,
        ByteBar if group.is_writer and not request.quiet else None,  # train -q: no bars
        val_fraction,
        grow_vocab,
    )


def _notes(group: Group, texts: Iterable[str | None]) -> None:
    """Lines for stderr, from rank 0 only (the other ranks report nothing)."""
    from charnn.console import note

    if group.is_writer:
        for text in texts:
            if text:
                note(text)


# ---------------------------------------------------------------------------- the run directory


def _run_to_resume(path: Path) -> RunDir:
    """``--resume`` takes a run directory; ``RUN/latest`` or ``RUN/best`` mean ``RUN``."""
    if (path / META).is_file():
        if path.name not in (LATEST, BEST):
            raise ConfigError(
                f"{path} is a single checkpoint, not a run directory: --resume continues a run "
                "(the directory holding latest/); to train on from this checkpoint start a new run"
            )
        return RunDir(path.parent)
    return RunDir(path)


def _refuse_existing(run: RunDir, force: bool, fine_tune: bool = False) -> None:
    run.refuse_foreign()  # a user's own latest/ or best/ is never replaced, --force or not
    if run.holds_run() and not force:
        if fine_tune:
            raise ConfigError(
                f"{run.path}/ already holds a run; give the fine-tuned run its own directory with "
                "-o/--out, or replace that run with --force"
            )
        raise ConfigError(
            f"{run.path}/ already holds a run; continue it with --resume, pick another --out, "
            "or replace it with --force"
        )


# ---------------------------------------------------------------------------- resuming


def refuse_contradictions(saved: object, given: dict[str, Any], fields: Iterable[str]) -> None:
    """Options given on ``--resume`` that define the run must agree with the checkpoint's."""
    flags = {f.name: flag_of(f) for f in dataclasses.fields(saved)}  # type: ignore[arg-type]
    clashes = [
        f"{flags.get(k, k)} {given[k]} (run has {getattr(saved, k)})"  # the flag as typed: --warmup
        for k in fields
        if k in given and given[k] != getattr(saved, k)
    ]
    if clashes:
        raise ConfigError("resume options contradict the checkpoint: " + "; ".join(clashes))


def merge_resume(saved: TrainConfig, given: dict[str, Any]) -> TrainConfig:
    """The run's config with the given lengths and bookkeeping options; the rest must agree."""
    locked = TrainConfig.locked_fields()
    refuse_contradictions(saved, given, locked)
    changes = {k: v for k, v in given.items() if k not in locked}
    if {"steps", "epochs", "time_limit"} & changes.keys():
        # A new length replaces the old one (lengths are totals for the whole run).
        changes = {"steps": None, "epochs": None, "time_limit": None, **changes}
    return saved.replace(**changes)


def check_resume_corpus(ckpt: Checkpoint, corpus: Corpus) -> None:
    saved = ckpt.meta.corpus.sha256 if ckpt.meta.corpus is not None else None
    if saved and saved != corpus.sha256:
        raise DataError(
            "the corpus differs from the one this run trained on (sha256 mismatch); "
            + init_from_hint(ckpt.path.parent)
        )


def init_from_hint(run: Path | str) -> str:
    """What to do instead of resuming on new text."""
    return f"to train this model on new text, start a new run from it: --init-from {run} -o NEW_RUN"
