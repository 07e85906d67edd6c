"""What each CLI command does, as plain functions: load, check, run, write output.

The click layer parses options; these functions hold the behaviour (and are
callable from Python). Output rules: generated text and requested data go to
stdout, people-facing messages to stderr via ``charnn.console``.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from charnn.checkpoint import Checkpoint, load_checkpoint
from charnn.config import SampleConfig, TokenizerConfig
from charnn.console import TrainReporter, note, shown, stdin_hint
from charnn.data import Corpus, load_corpus, read_corpus, read_source, resolve_sources
from charnn.errors import CharnnError, ConfigError, DataError, located
from charnn.results import EvalRow, InfoRow, SampleRow, ScoreRow
from charnn.tokenizer import Tokenizer

if TYPE_CHECKING:  # torch-side types: this module imports torch only where a command needs it
    from charnn.config import AdaptConfig
    from charnn.corpora import CorpusEntry
    from charnn.metrics import MetricsReporter
    from charnn.model import CharRNN
    from charnn.run_plan import RunPlan
    from charnn.sampling import Sample
    from charnn.scoring import EvalResult
    from charnn.surprisal_page import ModelReport
    from charnn.train_records import NullReporter

# ---------------------------------------------------------------------------- train


def cached_corpus(
    files: Sequence[str],
    tokenizer: Tokenizer | TokenizerConfig,
    encoding_errors: str,
    cache_dir: str | None,
    val_fraction: float = 0.0,
    quiet: bool = False,
) -> Corpus:
    """The corpus through the on-disk cache of encoded corpora (memory-mapped ids), with a
    progress bar on stderr for big ones (none with ``quiet``: ``train -q``)."""
    from charnn.console import ByteBar
    from charnn.corpus_cache import load_corpus_cached

    bar = None if quiet else ByteBar
    return load_corpus_cached(files, tokenizer, encoding_errors, cache_dir, bar, val_fraction)


@dataclass(frozen=True)
class TrainRequest:
    """A ``charnn train`` invocation: where, what, and the config fields the user gave
    (only those: on ``--resume`` the rest come from the checkpoint)."""

    files: list[str]
    out: str = "checkpoints"
    resume: str | None = None  # a run directory, or "" for ``out``
    init_from: str | None = None  # a run or checkpoint directory: a new run from its weights
    force: bool = False
    encoding_errors: str = "strict"
    cache_dir: str | None = None  # the corpus cache (default: charnn.corpus_cache.default_cache_dir)
    quiet: bool = False  # no progress on stderr: errors and the final line only
    argv: list[str] | None = None  # the command line, for the run's records (default: sys.argv)
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields
    tokenizer: dict[str, Any] = field(default_factory=dict)  # TokenizerConfig fields
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    vocabulary: Any = None  # a ready tokenizer for a new run (classify's members share one)


def start_training(request: TrainRequest) -> dict[str, Any]:
    """Start a new run in ``request.out``, continue one (``--resume``) or fine-tune one
    (``--init-from``): plan it (:func:`charnn.run_plan.planned_run`, which holds the run
    directory's lock from before anything in it is read or written until the run ends), then
    run the plan (:class:`charnn.trainer.Trainer`). FILES that name registry corpora (and are not
    paths) are fetched first. Under torchrun (see :mod:`charnn.distributed`) every rank plans
    and trains; rank 0 alone holds the lock and writes."""
    from charnn.distributed import from_env
    from charnn.run_plan import check_request, planned_run

    check_request(request)
    group = from_env()
    try:
        if not group.active:  # under torchrun every rank would download: give paths there
            request = replace(request, files=resolve_corpus_names(list(request.files), request.cache_dir))
        with planned_run(request, group) as plan:  # torch-free: a refused run exits fast
            from charnn.trainer import Trainer

            reporter = _reporter(plan, request.quiet)
            try:
                return Trainer(plan, reporter).run()
            finally:
                reporter.close()
    finally:
        group.close()


def _reporter(plan: RunPlan, quiet: bool) -> MetricsReporter | NullReporter:
    """The console, teed into the run's metrics.jsonl. Ranks other than 0 of a torchrun run
    report nothing."""
    from charnn.metrics import MetricsReporter
    from charnn.train_records import NullReporter

    if not plan.group.is_writer:
        return NullReporter()
    return MetricsReporter(plan.rundir.metrics(), TrainReporter(quiet=quiet), start_row=plan.invocation)


# ---------------------------------------------------------------------------- sample


class _SampleWriter:
    """Streams sample 0 as it is generated (nothing of it is kept); the others follow when done."""

    def __init__(self, out: TextIO, prime: str, separator: str) -> None:
        self.out, self.prime, self.separator = out, prime, separator
        self.started = False
        self.tail = ""
        self.last_flush = time.monotonic()

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
        if piece:
            self.out.write(piece)
            self.tail = piece[-1]
        now = time.monotonic()
        if now - self.last_flush > 0.05:  # flush often enough for a reader, not per character
            self.out.flush()
            self.last_flush = now

    def finish(self, texts: list[str]) -> None:
        """``texts``: samples 1..k-1 (sample 0 was streamed)."""
        if not self.started:
            self.write(self.prime)
        for text in texts:
            self.write(self.separator + self.prime + text)
        if self.out.isatty() and self.tail != "\n":
            self.write("\n")  # keep the shell prompt off the last line; pipes get the exact text
        self.out.flush()


def encode_prime(tokenizer: Tokenizer, text: str, what: str = "--prime") -> np.ndarray:
    """Token ids of ``text`` (the tokenizer's start context when empty), as a compact array."""
    if not text:
        return np.asarray(tokenizer.start_ids())
    try:
        return tokenizer.encode(text)
    except DataError as exc:
        raise located(exc, what) from None


def _sample_row(sample: Sample, index: int, seed: int, prime: str, line: int | None = None) -> SampleRow:
    """The ``--json`` row of one sample (``line``: its --prompts line, from 1)."""
    return SampleRow(
        line=line,
        sample=index,
        seed=seed,
        prime=prime,
        text=sample.text,
        logprob=sample.logprob,
        chars=len(sample.text),
        stopped_by=sample.stopped_by,
    )


def run_sampling(
    checkpoint: str,
    config: SampleConfig,
    prime: str,
    separator: str,
    as_json: bool,
    out: TextIO | None = None,
    prime_name: str = "--prime",
) -> None:
    """Sample from a checkpoint to ``out`` (stdout). Torch is imported only for a huge prime.
    ``prime_name`` says where the prime came from, for errors."""
    from charnn.constraints import TokenRules
    from charnn.routing import sampling_stepper
    from charnn.sampling import generate

    out = out or sys.stdout
    ckpt = load_checkpoint(checkpoint)
    tokenizer = ckpt.tokenizer
    prime_ids = encode_prime(tokenizer, prime, prime_name)
    stepper = sampling_stepper(ckpt, len(prime_ids))
    seed = sampling_seed(config)
    rng = np.random.default_rng(seed)
    # Lengths in characters, valid text only; a prime's last subword piece is regenerated (healed).
    rules = TokenRules.for_tokenizer(tokenizer)
    heal = bool(prime)
    if as_json:
        samples = generate(stepper, prime_ids, config, tokenizer, rng=rng, rules=rules, heal=heal)
        for i, s in enumerate(samples):
            out.write(_sample_row(s, i, seed, prime).json_line() + "\n")
        out.flush()
        return
    writer = _SampleWriter(out, prime, separator)
    # Sample 0 is only streamed (constant memory however long); the others are printed at the end.
    keep = [i > 0 for i in range(config.num_samples)]
    samples = generate(
        stepper,
        prime_ids,
        config,
        tokenizer,
        on_text=writer.on_text,
        rng=rng,
        keep=keep,
        rules=rules,
        heal=heal,
    )
    writer.finish([s.text for s in samples[1:]])


def sampling_seed(config: SampleConfig) -> int:
    """``--seed``, or a fresh one; a fresh seed is shown on a terminal so any sample can be redone."""
    if config.seed is not None:
        return config.seed
    seed = random.SystemRandom().getrandbits(63)
    from charnn import console

    if console.stderr_is_terminal():  # a dim note: there for whoever wants the sample again
        from rich.text import Text

        text = Text(f"charnn: seed {seed} (repeat this sample with --seed {seed})", style="dim")
        console.stderr_console().print(text, soft_wrap=True)
    return seed


def run_prompts(
    checkpoint: str,
    config: SampleConfig,
    prompts: list[str],
    separator: str,
    as_json: bool,
    out: TextIO | None = None,
) -> None:
    """Continue each prompt (``sample --prompts``): prompt ``i`` uses seed ``SEED + i``; results
    are written in prompt order as each batch of prompts finishes. A line that ``--prime`` would
    refuse (a character the model does not know) is reported on stderr and skipped; the others
    are continued, and the command then fails naming the lines (exit 3)."""
    from charnn.prompts import BATCH_PROMPTS, prompt_seed, sample_prompts
    from charnn.routing import sampling_stepper

    out = out or sys.stdout
    ckpt = load_checkpoint(checkpoint)
    tokenizer = ckpt.tokenizer
    encoded: dict[int, np.ndarray] = {}  # line index (from 0) -> prime ids, for the lines that encode
    failed: list[int] = []
    for i, text in enumerate(prompts):
        try:
            encoded[i] = encode_prime(tokenizer, text, f"--prompts line {i + 1}")
        except DataError as exc:
            from charnn.console import error

            failed.append(i + 1)
            if len(failed) <= 20:  # the summary at the end counts the rest
                error(f"{exc}: skipped")
    lines = sorted(encoded)
    stepper = sampling_stepper(ckpt, max((len(p) for p in encoded.values()), default=0))
    seed = sampling_seed(config)
    first = True
    for start in range(0, len(lines), BATCH_PROMPTS):
        chunk = lines[start : start + BATCH_PROMPTS]
        seeds = [prompt_seed(seed, i) for i in chunk]  # a line's seed is fixed by its place in the file
        heal = [bool(prompts[i]) for i in chunk]  # as --prime heals its text
        batch = sample_prompts(stepper, [encoded[i] for i in chunk], config, tokenizer, seeds, heal)
        for index, samples, prompt_seed_ in zip(chunk, batch, seeds, strict=True):
            prompt = prompts[index]
            for j, s in enumerate(samples):
                if as_json:
                    out.write(_sample_row(s, j, prompt_seed_, prompt, line=index + 1).json_line() + "\n")
                else:
                    out.write(("" if first else separator) + prompt + s.text)
                first = False
        out.flush()
    if not as_json and out.isatty() and lines:
        out.write("\n")
    if failed:
        shown = ", ".join(map(str, failed[:20])) + (", ..." if len(failed) > 20 else "")
        raise DataError(
            f"--prompts: {len(failed)} of {len(prompts)} lines could not be continued (line {shown}); "
            "the others were"
        )


def read_prompts(source: str, errors: str = "strict") -> list[str]:
    """The lines of a prompts file (``-`` = stdin), without line ends; bounded in size; invalid
    UTF-8 handled as ``--encoding-errors`` says, as for a corpus or ``--prime-file``."""
    limit = 64 << 20
    name = "<stdin>" if source == "-" else source
    try:
        if source == "-":
            raw = sys.stdin.buffer.read(limit + 1)
        else:
            with open(source, "rb") as fh:
                raw = fh.read(limit + 1)
    except OSError as exc:
        raise DataError(f"--prompts {name}: cannot read ({exc.strerror or exc})") from None
    if len(raw) > limit:
        raise DataError(f"--prompts {name}: larger than {limit >> 20} MiB")
    try:
        text = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors)  # a byte-order mark is not a prompt
    except UnicodeDecodeError as exc:
        raise DataError(
            f"--prompts {name}: not valid UTF-8 at byte offset {exc.start} "
            "(use --encoding-errors replace or ignore to go on)"
        ) from None
    if not text:
        raise DataError(f"--prompts {name}: no prompts (the file is empty)")
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if text.endswith("\n"):
        lines.pop()  # the empty "line" after a final newline
    return lines


# ---------------------------------------------------------------------------- eval / score / info


class TorchThreads:
    """eval's and score's threads: settled once per command (on the first torch work), then kept."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads
        self.tuner: Any = None
        self.ready = False

    @contextlib.contextmanager
    def pace(self, label: str, torch_runs: bool, total: int = 0, unit: str = "tokens") -> Iterator[Any]:
        """A :class:`charnn.threads.Pace` with a progress display for work labelled ``label``;
        the do-nothing one when the work runs in numpy."""
        from charnn.threads import NO_PACE, Pace

        if not torch_runs:
            yield NO_PACE
            return
        import torch

        from charnn.console import WorkProgress
        from charnn.torch_threads import eval_tuner

        if not self.ready:
            self.tuner, self.ready = eval_tuner(self.threads), True
        progress = WorkProgress(shown(label), unit=unit)
        pace = Pace(self.tuner, torch.set_num_threads, progress)
        pace.begin(total)
        try:
            yield pace
        finally:
            progress.close()


def printable_path(path: str) -> str:
    """A file name as valid Unicode: bytes that are not UTF-8 (kept by the OS as lone surrogates)
    become ``\\xNN`` escapes, so JSON and terminals can carry it."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def run_eval(
    checkpoints: Sequence[str] | str,
    files: Sequence[str],
    encoding_errors: str = "strict",
    html: str | None = None,
    top_k: int = 3,
    cache_dir: str | None = None,
    adapt: AdaptConfig | None = None,
    threads: int | None = None,
) -> list[EvalRow]:
    """One result row per checkpoint on the same text (read once); ``html`` also writes the surprisal page.
    Short texts without ``html`` run in numpy (no torch import), the others in torch, with
    ``threads`` (None: measured on the first windows, see :mod:`charnn.threads`) and progress
    on stderr. Files (not stdin) are read through the corpus cache, memory-mapped, when no page
    is asked for."""
    if isinstance(checkpoints, str):
        checkpoints = [checkpoints]
    if html is not None and adapt is None and len(checkpoints) > 2:
        raise ConfigError("--html shows one checkpoint or compares two; got " + str(len(checkpoints)))
    if html is not None and adapt is not None and len(checkpoints) > 1:
        raise ConfigError(
            "--html with --adapt compares one checkpoint with its adaptive self; got " + str(len(checkpoints))
        )
    loaded = [load_checkpoint(c) for c in checkpoints]  # a bad checkpoint fails before stdin is read
    streamed = html is None and "-" not in files
    if "-" in files:
        stdin_hint("the text")
    texts = None if streamed else read_corpus(files, encoding_errors)
    rows: list[EvalRow] = []
    reports: list[ModelReport] = []
    tuning = TorchThreads(threads)
    for ckpt in loaded:
        if texts is None:
            corpus = cached_corpus(files, ckpt.tokenizer, encoding_errors, cache_dir)
        else:
            corpus = load_corpus(texts, tokenizer=ckpt.tokenizer)
        if len(corpus.ids) < 2:
            raise DataError("need at least 2 tokens of text to evaluate")
        model = ckpt.build_model() if html is not None else None  # the page needs torch anyway
        result = _evaluate(ckpt, model, corpus.ids, tuning)
        rows.append(_eval_row(ckpt, result))
        if html is not None:
            assert model is not None  # built above: the page needs torch's per-token numbers
            with tuning.pace(f"surprisal {ckpt.path}", True) as pace:
                reports.append(_model_report(ckpt, model, corpus.ids, top_k, pace))
        if adapt is not None:  # a different measurement: its own row, after the static one
            from charnn import adapt as dyn
            from charnn.scoring import token_char_lengths, token_extra_nats

            tok = ckpt.tokenizer
            lengths, extra = token_char_lengths(tok), token_extra_nats(tok)
            adaptive = dyn.adaptive_eval(
                ckpt.build_model(), corpus.ids, tok.start_ids(), lengths, extra, adapt
            )
            rows.append(_eval_row(ckpt, adaptive, adaptive=True))
            if html is not None:
                reports.append(_adaptive_report(ckpt, corpus.ids, top_k, adapt))
    if html is not None:
        from charnn.surprisal_page import build_report, write_report

        if len(reports) == 2 and reports[0].surprisal.text != reports[1].surprisal.text:
            raise DataError("the two checkpoints' tokenizers spell the text differently; cannot compare")
        name = ", ".join("<stdin>" if f == "-" else f for f in files)
        try:
            write_report(html, build_report(name, reports))
        except OSError as exc:
            raise CharnnError(f"{html}: cannot write the page ({exc.strerror or exc})") from None
        note(f"wrote {html}")
    return rows


def _eval_row(ckpt: Checkpoint, result: EvalResult, adaptive: bool | None = None) -> EvalRow:
    return EvalRow(
        loss=result.loss,
        bpc=result.bpc,
        bpt=result.bpt,
        tokens=result.tokens,
        chars=result.chars,
        tokenizer=ckpt.tokenizer.kind,
        checkpoint=str(ckpt.path),
        adaptive=adaptive,
    )


def _model_report(ckpt: Checkpoint, model: CharRNN, ids: np.ndarray, top_k: int, pace: Any) -> ModelReport:
    """Per-character surprisal of one checkpoint, ready for the page."""
    from charnn.evaluate import char_surprisal, token_surprisal
    from charnn.surprisal_page import ModelReport

    tokenizer = ckpt.tokenizer
    tokens = token_surprisal(model, ids, tokenizer.start_ids(), top_k=top_k, pace=pace)
    vocab = [tokenizer.token_text(i) for i in range(tokenizer.vocab_size)]
    return ModelReport(str(ckpt.path), tokenizer.kind, vocab, char_surprisal(tokenizer, ids, tokens))


def _adaptive_report(ckpt: Checkpoint, ids: np.ndarray, top_k: int, settings: AdaptConfig) -> ModelReport:
    """The page's data for the adapting model: it shows what the model learns as it reads."""
    from charnn.adapt import Adapter
    from charnn.evaluate import char_surprisal
    from charnn.surprisal_page import ModelReport

    tokenizer = ckpt.tokenizer
    tokens = Adapter(ckpt.build_model(), settings).read(ids, tokenizer.start_ids(), top_k=top_k)
    vocab = [tokenizer.token_text(i) for i in range(tokenizer.vocab_size)]
    name = f"{ckpt.path} (adaptive)"
    return ModelReport(name, tokenizer.kind, vocab, char_surprisal(tokenizer, ids, tokens))


def _evaluate(ckpt: Checkpoint, model: CharRNN | None, ids: np.ndarray, tuning: TorchThreads) -> EvalResult:
    """eval's numbers for one checkpoint, through ``model`` (torch) if given, else the stepper
    charnn.routing picks for the text's length; torch runs with ``tuning``'s threads.

    Every token is predicted, the first from the start context (a newline), so bpc is the
    total over the whole text divided by its characters, whatever the tokenizer."""
    from charnn.routing import eval_stepper
    from charnn.scoring import evaluate_text, token_char_lengths, token_extra_nats
    from charnn.stepper import FastStepper
    from charnn.threads import paced

    tokenizer = ckpt.tokenizer
    lengths, extra = token_char_lengths(tokenizer), token_extra_nats(tokenizer)
    context = tokenizer.start_ids()[-1]
    stepper = eval_stepper(ckpt, len(ids), model)
    with tuning.pace(f"eval {ckpt.path}", not isinstance(stepper, FastStepper), len(ids)) as pace:
        return evaluate_text(paced(stepper, pace), ids, lengths, context=context, extra_nats=extra)


def run_score(
    checkpoint: str,
    files: Sequence[str],
    context: str | None,
    encoding_errors: str = "strict",
    whole: bool = False,
    adapt: AdaptConfig | None = None,
    threads: int | None = None,
) -> Iterator[ScoreRow]:
    """One row per input line (or per input with ``whole``): text, logprob (nats), bpc, chars.
    Long inputs run in torch with ``threads`` (None: measured) and progress on stderr."""

    from charnn.routing import score_stepper
    from charnn.scoring import score_lines, token_char_lengths, token_extra_nats
    from charnn.stepper import FastStepper
    from charnn.threads import paced

    ckpt = load_checkpoint(checkpoint)
    tokenizer = ckpt.tokenizer
    context_ids = encode_prime(tokenizer, context or "", "--context").tolist()
    sources, _ = resolve_sources(files)
    if "-" in sources:
        stdin_hint("lines to score")
    items: list[tuple[str, int, str]] = []  # (source, line number, text)
    for source in sources:
        text = read_source(source, encoding_errors)
        if not text:
            raise DataError(f"{'<stdin>' if source == '-' else source}: is empty")
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
            raise located(exc, where) from None
    lengths, extra = token_char_lengths(tokenizer), token_extra_nats(tokenizer)
    # Short inputs in numpy (torch's import would cost more than the work), long ones in torch.
    if adapt is not None:  # the model learns from each line after scoring it (charnn.adapt)
        from charnn.adapt import adaptive_scores

        start = context_ids or tokenizer.start_ids()
        scores = adaptive_scores(ckpt.build_model(), start, encoded, lengths, extra, adapt)
    else:
        total = len(context_ids) + sum(len(e) + 1 for e in encoded)
        stepper, batch = score_stepper(ckpt, total)
        torch_runs = not isinstance(stepper, FastStepper)
        with TorchThreads(threads).pace(f"score {ckpt.path}", torch_runs, total) as pace:
            stepper = paced(stepper, pace)
            scores = score_lines(stepper, context_ids, encoded, lengths, batch_size=batch, extra_nats=extra)
    for (source, n, text), sc in zip(items, scores, strict=True):
        yield ScoreRow(
            source="<stdin>" if source == "-" else printable_path(source),
            line=None if whole else n,
            text=text,
            logprob=sc.logprob,
            bpc=sc.bpc,
            bpt=sc.bpt,
            chars=sc.chars,
            tokens=sc.tokens,
            adaptive=True if adapt is not None else None,
        )


def checkpoint_info(checkpoint: str) -> InfoRow:
    """What a fully validated checkpoint holds (see :func:`charnn.run_catalog.describe`)."""
    from charnn.run_catalog import describe

    ckpt = load_checkpoint(checkpoint)
    counted = sum(t.size for t in ckpt.weights.values())  # counted, not derived
    return describe(ckpt.meta, ckpt.path, parameters=int(counted))


# ---------------------------------------------------------------------------- corpora


def list_corpora(cache: str | None = None) -> list[dict[str, Any]]:
    """Registry entries with ``cached``: the path of the downloaded file, or None."""
    from charnn.corpora import cache_dir, cached_path, load_registry

    directory = cache_dir(cache)
    rows = []
    for entry in load_registry():
        path = cached_path(entry, directory)
        rows.append({**entry.to_dict(), "cached": str(path) if path.exists() else None})
    return rows


def fetch_corpus(name: str, cache: str | None = None, verify: bool = True, timeout: float = 60.0) -> str:
    """Download a registry corpus (progress on stderr); returns the cached path."""
    from charnn.corpora import cache_dir, find_entry, load_registry

    entry = find_entry(name, load_registry())
    if entry.builtin:
        note(f"{name} ships with Python; nothing to download (train on it with: charnn train {name})")
        return entry.url
    return _fetch_with_progress(entry, cache_dir(cache), verify, timeout)


def _fetch_with_progress(entry: CorpusEntry, directory: Path, verify: bool, timeout: float) -> str:
    from charnn.console import download_progress
    from charnn.corpora import cached_path, fetch, refuse_unverifiable

    if cached_path(entry, directory).exists():
        return str(cached_path(entry, directory))
    refuse_unverifiable(entry, verify)
    with download_progress(entry.name, entry.url) as progress:
        path = fetch(entry, directory, verify=verify, timeout=timeout, progress=progress)
    note(f"{entry.name}: saved {path}" + ("" if verify else " (not verified: the registry has no sha256)"))
    return str(path)


def resolve_corpus_names(files: list[str], cache: str | None = None) -> list[str]:
    """``charnn train NAME``: registry names (that are not paths) become their cached, verified
    files, downloaded into ``cache`` (``--cache-dir``) when needed."""
    from charnn.corpora import cache_dir, resolve_names

    directory = cache_dir(cache)
    return resolve_names(files, lambda entry: Path(_fetch_with_progress(entry, directory, True, 60.0)))
