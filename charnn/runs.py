"""What each CLI command does, as plain functions: load, check, run, write output.

The click layer parses options; these functions hold the behaviour (and are
callable from Python). Output rules: generated text and requested data go to
stdout, people-facing messages to stderr via ``charnn.console``.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from charnn.checkpoint import BEST, LATEST, load_checkpoint
from charnn.config import ModelConfig, SampleConfig, TokenizerConfig, TrainConfig
from charnn.console import TrainReporter, note
from charnn.data import Corpus, read_source, resolve_sources
from charnn.errors import ConfigError, DataError
from charnn.rundir import RunDir, resolve_checkpoint

# ---------------------------------------------------------------------------- train


def read_corpus(files: Sequence[str], tokenizer: Any, encoding_errors: str, cache_dir: str | None) -> Corpus:
    """The corpus through the on-disk cache of encoded corpora (memory-mapped ids), with a
    progress bar on stderr for big ones."""
    from charnn.console import ByteBar
    from charnn.corpus_cache import load_corpus_cached

    return load_corpus_cached(files, tokenizer, encoding_errors, cache_dir, progress=ByteBar)


@dataclass(frozen=True)
class TrainRequest:
    """A ``charnn train`` invocation: where, what, and the config fields the user gave
    (only those: on ``--resume`` the rest come from the checkpoint)."""

    files: list[str]
    out: str = "checkpoints"
    resume: str | None = None  # a run directory, or "" for ``out``
    force: bool = False
    encoding_errors: str = "strict"
    cache_dir: str | None = None  # the corpus cache (default: charnn.corpus_cache.default_cache_dir)
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields
    tokenizer: dict[str, Any] = field(default_factory=dict)  # TokenizerConfig fields
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields


def start_training(request: TrainRequest) -> dict[str, Any]:
    """Start a new run in ``request.out`` or continue one. The run directory's lock is held from
    before anything in it is read (resume) or written (new run) until the run ends.
    Under torchrun (see :mod:`charnn.distributed`) every rank trains; rank 0 alone holds the lock
    and writes."""
    from charnn.distributed import from_env

    group = from_env()
    if group.active:
        try:
            return _start_rank(request, group)
        finally:
            group.close()
    if request.resume is not None:
        run = RunDir(request.resume or request.out)
        resolve_checkpoint(run.path, LATEST)  # "no such checkpoint" before the lock creates anything
        with run.lock():
            return _run(_resumed_trainer(request, run))
    run = RunDir(request.out)
    _refuse_existing(run, request.force)  # before reading the corpus: fail fast
    trainer = _new_trainer(request, run)  # reads and encodes the corpus; writes nothing
    with run.lock():
        _refuse_existing(run, request.force)  # again: another run may have started meanwhile
        if request.force:
            run.remove(BEST)  # the old run's best must not outlive it
        return _run(trainer)


def _start_rank(request: TrainRequest, group: Any) -> dict[str, Any]:
    """One rank of a data-parallel run: rank 0 as a single process would, the others without
    the lock, the checks of the directory, or output."""
    run = RunDir(request.resume or request.out if request.resume is not None else request.out)
    if not group.is_writer:
        if request.resume is not None:
            return _run(_resumed_trainer(request, run, group))
        return _run(_new_trainer(request, run, group))
    if request.resume is not None:
        resolve_checkpoint(run.path, LATEST)
        with run.lock():
            return _run(_resumed_trainer(request, run, group))
    _refuse_existing(run, request.force)
    trainer = _new_trainer(request, run, group)
    with run.lock():
        _refuse_existing(run, request.force)
        if request.force:
            run.remove(BEST)
        return _run(trainer)


def _run(trainer: Any) -> dict[str, Any]:
    try:
        return trainer.run()  # type: ignore[no-any-return]
    finally:
        trainer.reporter.close()


def _refuse_existing(run: RunDir, force: bool) -> None:
    if run.holds_run() and not force:
        raise ConfigError(
            f"{run.path}/ already holds a run; continue it with --resume, pick another --out, "
            "or replace it with --force"
        )


def _reporter(group: Any) -> Any:
    from charnn.reporting import NullReporter

    return TrainReporter() if group is None or group.is_writer else NullReporter()


def _resumed_trainer(request: TrainRequest, run: RunDir, group: Any = None) -> Any:
    from charnn.distributed import SOLO
    from charnn.train import Trainer, check_resume_corpus, merge_resume, refuse_contradictions

    ckpt = load_checkpoint(run.path, prefer=LATEST)
    (group or SOLO).check_resume(ckpt.meta.get("world_size", 1))  # before reading the corpus
    refuse_contradictions(ckpt.config, request.model, request.model)
    kind = request.tokenizer.get("kind", ckpt.tokenizer.kind)
    if kind != ckpt.tokenizer.kind:
        raise ConfigError(
            f"resume options contradict the checkpoint: --tokenizer {kind} (run has {ckpt.tokenizer.kind})"
        )
    config = merge_resume(TrainConfig.from_dict(ckpt.meta["train"]), request.train)
    sources = list(request.files) or ckpt.meta.get("corpus", {}).get("sources", [])
    corpus = read_corpus(sources, ckpt.tokenizer, request.encoding_errors, request.cache_dir)
    check_resume_corpus(ckpt, corpus)
    _notes(corpus, group)
    kwargs = {"group": group} if group is not None else {}
    return Trainer(corpus, ckpt.config, config, run.path, _reporter(group), resume=ckpt, **kwargs)


def _notes(corpus: Corpus, group: Any) -> None:
    if group is None or group.is_writer:
        for text in corpus.notes:
            note(text)


def _new_trainer(request: TrainRequest, run: RunDir, group: Any = None) -> Any:
    from charnn.train import Trainer

    config = TrainConfig(**request.train)
    tokenizer = TokenizerConfig(**request.tokenizer)
    corpus = read_corpus(request.files, tokenizer, request.encoding_errors, request.cache_dir)
    _notes(corpus, group)
    model_config = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, **request.model)
    kwargs = {"group": group} if group is not None else {}
    return Trainer(corpus, model_config, config, run.path, _reporter(group), **kwargs)


# ---------------------------------------------------------------------------- sample


class _SampleWriter:
    """Streams sample 0 as it is generated; the others (and JSON lines) follow when done."""

    def __init__(self, out: TextIO, prime: str, separator: str) -> None:
        self.out, self.prime, self.separator = out, prime, separator
        self.streamed = 0  # characters of sample 0 already written
        self.last_flush = time.monotonic()
        self.started = False
        self.tail = ""

    def write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.tail = text[-1]

    def on_text(self, index: int, piece: str) -> None:
        if index != 0:
            return
        if not self.started:
            self.started = True
            self.write(self.prime)
        self.write(piece)
        self.streamed += len(piece)
        now = time.monotonic()
        if now - self.last_flush > 0.05:  # flush often enough for a reader, not per character
            self.out.flush()
            self.last_flush = now

    def finish(self, texts: list[str]) -> None:
        for i, text in enumerate(texts):
            if i == 0:
                if not self.started:
                    self.write(self.prime)
                self.write(text[self.streamed :])
            else:
                self.write(self.separator + self.prime + text)
        if self.out.isatty() and self.tail != "\n":
            self.write("\n")  # keep the shell prompt off the last line; pipes get the exact text
        self.out.flush()


def encode_prime(tokenizer: Any, text: str, what: str = "--prime") -> list[int]:
    if not text:
        return tokenizer.start_ids()
    try:
        return tokenizer.encode(text).tolist()
    except DataError as exc:
        raise DataError(f"{what}: {exc}") from None


def run_sampling(
    checkpoint: str,
    config: SampleConfig,
    prime: str,
    separator: str,
    as_json: bool,
    out: TextIO | None = None,
) -> None:
    import json

    import torch

    from charnn.sampling import generate
    from charnn.stepper import FastStepper

    out = out or sys.stdout
    ckpt = load_checkpoint(checkpoint)
    tokenizer = ckpt.tokenizer
    prime_ids = encode_prime(tokenizer, prime)
    stepper = FastStepper(ckpt.build_model())
    generator = torch.Generator()
    generator.manual_seed(config.seed if config.seed is not None else random.SystemRandom().getrandbits(63))
    if as_json:
        samples = generate(stepper, prime_ids, config, tokenizer, generator=generator)
        for i, s in enumerate(samples):
            row = {
                "sample": i,
                "prime": prime,
                "text": s.text,
                "logprob": s.logprob,
                "chars": len(s.text),
                "stopped_by": s.stopped_by,
            }
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        out.flush()
        return
    writer = _SampleWriter(out, prime, separator)
    samples = generate(stepper, prime_ids, config, tokenizer, on_text=writer.on_text, generator=generator)
    writer.finish([s.text for s in samples])


# ---------------------------------------------------------------------------- eval / score / info


def run_eval(
    checkpoint: str, files: Sequence[str], encoding_errors: str = "strict", cache_dir: str | None = None
) -> dict[str, Any]:
    from charnn.evaluate import evaluate_stream, token_char_lengths

    ckpt = load_checkpoint(checkpoint)
    corpus = read_corpus(files, ckpt.tokenizer, encoding_errors, cache_dir)
    if len(corpus.ids) < 2:
        raise DataError("need at least 2 tokens of text to evaluate")
    result = evaluate_stream(ckpt.build_model(), corpus.ids, token_char_lengths(ckpt.tokenizer))
    return {**result.to_dict(), "checkpoint": str(ckpt.path)}


def run_score(
    checkpoint: str,
    files: Sequence[str],
    context: str | None,
    encoding_errors: str = "strict",
    whole: bool = False,
) -> Iterator[dict[str, Any]]:
    """One row per input line (or per input with ``whole``): text, logprob (nats), bpc, chars."""
    import numpy as np

    from charnn.evaluate import score_lines, token_char_lengths

    ckpt = load_checkpoint(checkpoint)
    tokenizer = ckpt.tokenizer
    context_ids = encode_prime(tokenizer, context or "", "--context")
    sources, _ = resolve_sources(files)
    items: list[tuple[str, int, str]] = []  # (source, line number, text)
    for source in sources:
        text = read_source(source, encoding_errors)
        if whole:
            items.append((source, 0, text))
        else:
            items.extend((source, n, line) for n, line in enumerate(text.split("\n"), 1))
            if items and items[-1][2] == "" and text.endswith("\n"):
                items.pop()  # the empty "line" after a final newline
    encoded = []
    for source, n, text in items:
        try:
            encoded.append(tokenizer.encode(text) if text else np.zeros(0, dtype=np.int64))
        except DataError as exc:
            where = f"{source}:{n}" if n else source
            raise DataError(f"{where}: {exc}") from None
    scores = score_lines(ckpt.build_model(), context_ids, encoded, token_char_lengths(tokenizer))
    for (source, n, text), sc in zip(items, scores, strict=True):
        row: dict[str, Any] = {"source": "<stdin>" if source == "-" else source}
        if not whole:
            row["line"] = n
        yield {
            **row,
            "text": text,
            "logprob": sc.logprob,
            "bpc": sc.bpc,
            "chars": sc.chars,
            "tokens": sc.tokens,
        }


def checkpoint_info(checkpoint: str) -> dict[str, Any]:
    ckpt = load_checkpoint(checkpoint)
    meta, cfg = ckpt.meta, ckpt.config
    progress = meta.get("progress", {})
    val = progress.get("val") or {}
    params = sum(t.numel() for t in ckpt.weights.values())
    return {
        "path": str(ckpt.path),
        "format": f"{meta['format']} v{meta['version']}",
        "model": f"{cfg.layers}x{cfg.hidden} {cfg.cell}, embed {cfg.embed}, dropout {cfg.dropout}"
        + (", tied" if cfg.tie_weights else ""),
        "parameters": params,
        "tokenizer": f"{ckpt.tokenizer.kind}, {cfg.vocab_size} tokens",
        "step": progress.get("step"),
        "val_bpc": val.get("bpc"),
        "best_val_bpc": progress.get("best_val_bpc"),
        "skipped_steps": progress.get("skipped_steps"),
        "trained_seconds": round(progress.get("elapsed", 0.0), 1),
        "corpus": ", ".join(meta.get("corpus", {}).get("sources", [])),
        "created": meta.get("created"),
    }
