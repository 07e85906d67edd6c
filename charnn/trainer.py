"""The training loop: teacher forcing with truncated BPTT, AdamW, warm-up then linear or cosine decay,
gradient clipping, periodic validation, atomic checkpoints, exact resume, and recovery
from non-finite steps. Reports progress through a :class:`~charnn.train_records.Reporter`; never prints.

The loop (:meth:`Trainer.run`) reads top to bottom; its parts are small named objects:
:class:`Schedule` (learning rate), :class:`ThroughputMeter` (chars/s),
:class:`DivergenceGuard` (what non-finite steps mean), :class:`EvalSavePolicy`
(when to validate and save) and :class:`TrainingSampler` (``--sample-every``). Checkpoint
contents are :mod:`charnn.checkpoint`'s business, their place on disk :mod:`charnn.rundir`'s.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from charnn.checkpoint import (
    BEST,
    LATEST,
    Checkpoint,
    Progress,
    load_checkpoint,
    pack_train_state,
    restore_train_state,
    save_checkpoint,
    training_meta,
)
from charnn.checkpoint_meta import CorpusRecord, Lineage, RunRecord
from charnn.config import ModelConfig, SampleConfig, TrainConfig, flag_of
from charnn.constraints import TokenRules
from charnn.data import Corpus, StreamBatcher, split_train_val
from charnn.distributed import SOLO, Group
from charnn.errors import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    CharnnError,
    ConfigError,
    DataError,
    DivergedError,
    Interrupted,
)
from charnn.evaluate import EvalResult, evaluate_stream, token_char_lengths, token_extra_nats
from charnn.metrics_rows import Invocation, ThreadsRecord
from charnn.model import CharRNN, Hidden, detach_hidden
from charnn.rundir import RunDir
from charnn.tokenizer import Tokenizer
from charnn.torch_threads import run_threads
from charnn.train_records import EvalReport, Reporter, RunInfo, RunSummary, SampleReport, StepReport

__all__ = ["DEFAULT_TIME", "Progress", "Trainer", "merge_resume", "refuse_contradictions", "select_device"]

DEFAULT_TIME = 300.0  # seconds, when no --steps/--epochs/--time is given


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


MPS_NOTE = (
    "Apple GPU (MPS) found but not used: PyTorch's MPS recurrent kernels are slower than the CPU "
    "for models this size and wrong with 2+ layers and dropout (pytorch/pytorch#180744); "
    "--device mps uses it anyway"
)


def select_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else the CPU. Never MPS by itself (see :data:`MPS_NOTE`)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps: no MPS device is available")
    return torch.device(name)


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


# ---------------------------------------------------------------------------- the loop's parts


def build_optimizer(model: CharRNN, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; matrices decay, biases and the embedding (a lookup table, not a map) do not."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "embed" in n]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, config.beta2))


def autocast(precision: str) -> Any:
    """bf16 autocast on CUDA for ``--precision bf16``; nothing otherwise."""
    if precision == "bf16":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def all_finite(model: CharRNN) -> bool:
    """Whether every weight is finite (one device sync; checked only before saves)."""
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())


@dataclass(frozen=True)
class Schedule:
    """Linear warm-up over ``--warmup`` steps, then the ``--schedule``'s decay: linear to zero, or
    cosine to ``min_lr_ratio * lr``. The decay ends exactly when the run does: at ``--decay-steps``
    if given, else at whichever of the run's step count and time limit comes first."""

    config: TrainConfig
    total_steps: int | None
    time_limit: float | None

    def fraction(self, step: int, elapsed: float) -> float:
        """How far the decay has gone, 0 to 1."""
        cfg = self.config
        horizon = cfg.decay_steps or self.total_steps
        parts = [(step - cfg.warmup_steps) / max(1, horizon - cfg.warmup_steps)] if horizon else []
        if not cfg.decay_steps and (self.time_limit or not horizon):
            parts.append(elapsed / (self.time_limit or DEFAULT_TIME))
        return min(1.0, max([0.0, *parts]))

    def lr(self, step: int, elapsed: float, scale: float) -> float:
        cfg = self.config
        base = cfg.lr * scale
        if step < cfg.warmup_steps:
            return base * (step + 1) / cfg.warmup_steps
        frac = self.fraction(step, elapsed)
        if cfg.schedule == "linear":
            return base * (1 - frac)
        return base * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


@dataclass(frozen=True)
class RunLength:
    """How long the run is: ``--steps``, ``--epochs`` (in steps) and/or ``--time``; with none
    of them, the default time. The first limit reached ends the run."""

    steps: int | None
    seconds: float | None
    default: bool  # no length was given

    @classmethod
    def of(cls, config: TrainConfig, batcher: StreamBatcher) -> RunLength:
        steps = config.steps
        if steps is None and config.epochs is not None:
            steps = batcher.steps_for_epochs(config.epochs)
        given = config.steps is not None or config.epochs is not None or config.time_limit is not None
        return cls(steps, config.time_limit if given else DEFAULT_TIME, not given)

    def fraction(self, step: int, elapsed: float) -> float:
        parts = [step / self.steps] if self.steps else []
        parts += [elapsed / self.seconds] if self.seconds else []
        return min(1.0, max(parts)) if parts else 0.0

    def reached(self, step: int, elapsed: float) -> bool:
        return (self.steps is not None and step >= self.steps) or (
            self.seconds is not None and elapsed >= self.seconds
        )


class ThroughputMeter:
    """Characters per second over a window of about ``window`` seconds, so the rate follows changes."""

    def __init__(self, window: float = 2.0) -> None:
        self.window = window
        self.start, self.tokens = time.perf_counter(), 0

    def add(self, chars: int) -> None:
        self.tokens += chars

    def rate(self) -> float:
        now = time.perf_counter()
        rate = self.tokens / max(now - self.start, 1e-9)
        if now - self.start > self.window:
            self.start, self.tokens = now, 0
        return rate


class DivergenceGuard:
    """What non-finite steps mean.

    ``in_a_row`` counts consecutive non-finite steps. At ``max_bad`` of them the run recovers
    (restores latest/ with half the learning rate). ``recovered`` is true from a recovery until
    the next checkpoint of a good state: another ``max_bad`` in a row inside that window means
    the run has diverged for good.
    """

    def __init__(self, max_bad: int) -> None:
        self.max_bad = max_bad
        self.in_a_row = 0
        self.recovered = False

    def finite(self) -> None:
        self.in_a_row = 0

    def non_finite(self, weights_overflowed: bool = False) -> bool:
        """Count a bad step; True when the run must recover now. Overflowed weights cannot be
        stepped out of, so they recover at once."""
        self.in_a_row = self.max_bad if weights_overflowed else self.in_a_row + 1
        if self.in_a_row < self.max_bad:
            return False
        if self.recovered:
            raise DivergedError(
                f"training diverged: {self.in_a_row} non-finite steps in a row again after "
                "restoring the last checkpoint with a lower learning rate"
            )
        self.in_a_row, self.recovered = 0, True
        return True

    @property
    def in_bad_run(self) -> bool:
        return self.in_a_row > 0

    def checkpointed(self) -> None:
        self.recovered = False


class EvalSavePolicy:
    """When to validate and save: every ``eval_every`` / ``save_every`` steps, never the final
    step twice (the end of the run validates anyway). A due save or validation that falls in a
    run of bad steps is deferred to the next good step: latest/ must stay the last good state,
    or recovery would restore the trouble (and keep "recovering" forever)."""

    def __init__(self, eval_every: int, save_every: int) -> None:
        self.eval_every, self.save_every = eval_every, save_every
        self.pending_save = self.pending_eval = False

    def due(self, step: int, done: bool) -> tuple[bool, bool]:
        save = self.pending_save or step % self.save_every == 0
        evaluate = (self.pending_eval or step % self.eval_every == 0) and not done
        return save, evaluate

    def defer(self, save: bool, evaluate: bool) -> None:
        self.pending_save, self.pending_eval = save, evaluate

    def clear(self) -> None:
        self.pending_save = self.pending_eval = False


class EarlyStop:
    """``--patience K``: stop after K validations in a row without an improvement of at least
    ``--min-delta`` bits per character over the reference (the best bpc that counted as one).
    Its counter and reference live in :class:`Progress`, so they survive ``--resume``."""

    def __init__(self, patience: int | None, min_delta: float) -> None:
        self.patience, self.min_delta = patience or 0, min_delta

    def exhausted(self, progress: Progress) -> bool:
        """Whether the validations without improvement already reach ``--patience``."""
        return bool(self.patience) and progress.stale_evals >= self.patience

    def observe(self, progress: Progress, bpc: float) -> str | None:
        """Count one validation; the reason to stop now, or None."""
        if not math.isfinite(bpc):
            progress.stale_evals += 1
        elif progress.patience_best is None or bpc < progress.patience_best - self.min_delta:
            progress.patience_best, progress.stale_evals = bpc, 0
        else:
            progress.stale_evals += 1
        if self.patience and progress.stale_evals >= self.patience:
            delta = f" of at least {self.min_delta:g}" if self.min_delta else ""
            ref = f" on val bpc {progress.patience_best:.4f}" if progress.patience_best is not None else ""
            n = progress.stale_evals
            return (
                f"early stopping at step {progress.step}: {n} validation{'s' if n > 1 else ''} "
                f"without an improvement{delta}{ref} (--patience {self.patience})"
            )
        return None


class TrainingSampler:
    """A short sample every ``every`` steps (0 = never), always from the same prime (the
    tokenizer's start, a newline) with the same seed, so samples differ only by the weights.

    Uses the fast CPU stepper on a snapshot of the model: the model's train/eval mode, the
    trainer's carried hidden state and torch's global RNG are untouched (draws come from a
    private generator), so a run with samples trains exactly as one without. A sample due on a
    step inside a run of non-finite steps waits for the next good step.
    """

    def __init__(self, every: int, tokenizer: Tokenizer, seed: int, length: int = 200) -> None:
        self.every, self.tokenizer, self.seed = every, tokenizer, seed
        self.config = SampleConfig(length=length, seed=seed)
        self.prime_ids = tokenizer.start_ids()
        self.rules: TokenRules | None = None  # built at the first sample
        self.pending = False

    def due(self, step: int) -> bool:
        return self.every > 0 and (self.pending or step % self.every == 0)

    def defer(self, step: int) -> None:
        self.pending = self.due(step)

    def clear(self) -> None:
        self.pending = False

    def sample(self, model: CharRNN) -> str:
        from charnn.sampling import generate
        from charnn.stepper import FastStepper

        self.pending = False
        rng = np.random.default_rng(self.seed)
        stepper = FastStepper.from_model(model)  # a float32 CPU snapshot: the model itself is not touched
        if self.rules is None:  # lengths in characters, valid text, as `charnn sample` writes
            self.rules = TokenRules.for_tokenizer(self.tokenizer)
        samples = generate(stepper, self.prime_ids, self.config, self.tokenizer, rng=rng, rules=self.rules)
        return samples[0].text


@contextmanager
def _signal_flags(flags: dict[str, int], last_words: str = "") -> Iterator[dict[str, int]]:
    """First SIGINT/SIGTERM sets a flag checked between steps; a second SIGINT exits at once
    (saves are atomic, so that cannot leave a torn checkpoint), saying so first in
    ``last_words``: written straight to the file descriptor, as nothing else is safe here."""

    def handler(signum: int, frame: Any) -> None:
        if flags.get("signal") and signum == signal.SIGINT:
            import os

            try:
                os.write(2, last_words.encode("utf-8", "backslashreplace"))
            except OSError:
                pass
            os._exit(EXIT_SIGINT)
        flags["signal"] = signum

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield flags
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------------------- the trainer


class Trainer:
    """One training run over a corpus, writing ``latest/`` and ``best/`` under ``out``.

    Longer than the project's ~250-line guide (about 400), on purpose for now: it owns the state
    every part acts on (model, optimizer, carried hidden state, progress, the distributed
    context) and the glue between them; each part with an invariant of its own is already a
    class above (RunLength, Schedule, ThroughputMeter, DivergenceGuard, EvalSavePolicy, EarlyStop,
    TrainingSampler). The next split is the checkpoint keeping (save/restore/recover, ~70 lines).
    """

    def __init__(
        self,
        corpus: Corpus,
        model_config: ModelConfig,
        config: TrainConfig,
        out: Path,
        reporter: Reporter,
        resume: Checkpoint | None = None,
        parent: Lineage | None = None,
        invocation: Invocation | None = None,
        group: Group = SOLO,
    ) -> None:
        self.corpus, self.config, self.out, self.reporter = corpus, config, Path(out), reporter
        self.invocation = invocation  # command line and versions, for the metadata (run_meta)
        self.parent = parent  # where a fine-tuned run's weights came from (--init-from), for its metadata
        self.group = group
        self._agreed_elapsed: float | None = None
        self.device = select_device(group.device(config.device))
        if config.device == "auto" and self.device.type == "cpu" and mps_available():
            reporter.message(MPS_NOTE)
        if config.precision == "bf16" and self.device.type != "cuda":
            raise ConfigError("--precision bf16 needs a CUDA device")
        # Per-character numbers for every tokenizer: characters each token spells, UNK's extra cost.
        self.char_lengths = token_char_lengths(corpus.tokenizer)
        self.extra_nats = token_extra_nats(corpus.tokenizer)
        train_ids, self.val_ids = split_train_val(
            corpus.ids, config.val_fraction, char_lengths=self.char_lengths
        )
        self.val_ids = self.val_ids[: config.eval_chars]
        self.val_context = int(train_ids[-1])  # validation text is predicted from its first token on
        self.batcher = StreamBatcher(
            train_ids,
            config.batch_size,
            config.seq_len,
            config.seed,
            reporter.message,
            rank=group.rank,
            world=group.world_size,
        )
        self.last_chars = 0  # characters the last step's targets spell (for the bpc in the log)
        self.meter_tokens = self.batcher.batch_size * config.seq_len  # targets per step

        torch.manual_seed(config.seed)
        self.model = CharRNN(model_config).to(self.device)
        group.init(self.device)
        self.net = group.wrap(self.model, self.device)  # what training steps run through (DDP)
        self.optimizer = build_optimizer(self.model, config)
        self.length = RunLength.of(config, self.batcher)
        # Threads: --threads, the run's recorded count, or measured now (charnn.threads); stored
        # in the config so that checkpoints and --resume keep it.
        self.threads = run_threads(self.model, self.batcher, config, resume, self.device, self.length, group)
        self.config = config = config.replace(threads=self.threads.count)
        self.schedule = Schedule(config, self.length.steps, self.length.seconds)
        self.guard = DivergenceGuard(config.max_bad_steps)
        self.policy = EvalSavePolicy(config.eval_every, config.save_every)
        self.stopper = EarlyStop(config.patience, config.min_delta)
        self.sampler = TrainingSampler(config.sample_every, corpus.tokenizer, config.seed)
        self.rundir = RunDir(self.out)
        self.meter = ThroughputMeter()
        self.progress = Progress()
        self.hidden: Hidden | None = None
        self._clock = time.perf_counter()
        self._between_steps = False
        if resume is not None:
            self._restore(resume)
            # A resumed run goes on until its (new) end, unless --patience still says stop: a run
            # interrupted as it stopped early resumes to the same stop, not past it.
            if not self.stopper.exhausted(self.progress):
                self.progress.stopped_reason = None
        self._saved_step = self.progress.step if resume is not None else -1

    # ------------------------------------------------------------------ length

    @property
    def total_steps(self) -> int | None:
        return self.length.steps

    @property
    def time_limit(self) -> float | None:
        return self.length.seconds

    def fraction_done(self) -> float:
        return self.length.fraction(self.progress.step, self.progress.elapsed)

    def lr_at(self, step: int) -> float:
        return self.schedule.lr(step, self.progress.elapsed, self.progress.lr_scale)

    def done(self) -> bool:
        # Distributed: the clock the ranks agreed on this step, so they all stop at the same step.
        elapsed = self.progress.elapsed if self._agreed_elapsed is None else self._agreed_elapsed
        return self.length.reached(self.progress.step, elapsed)

    def _agree(self, flags: dict[str, int]) -> int:
        """The pending signal, and (distributed) the slowest rank's clock: the same on every rank
        (one all-reduce), because a rank that stopped or validated alone would leave the others
        waiting in a collective."""
        if not self.group.active:
            return flags.get("signal", 0)
        self._agreed_elapsed, signalled = self.group.agree(self.progress.elapsed, flags.get("signal", 0))
        return signalled

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Any]:
        self.reporter.start(self._info())
        flags: dict[str, int] = {}
        from charnn.console import shown

        out = shown(str(self.out))
        last_words = (
            f"charnn: stopped at once by a second Ctrl-C; {out}/{LATEST} holds the last save; "
            f"continue with: charnn train --resume {_shell_quote(out)}\n"
        )
        # Signals become flags before the first save, so Ctrl-C can never land inside one.
        with _signal_flags(flags, last_words if self.group.is_writer else ""):
            try:
                result = self._loop(flags)
            except CharnnError:
                raise  # deliberate stops (signals, divergence, a failed save) have saved what they could
            except BaseException as exc:
                if self.group.active and lost_peer(exc):  # another rank died (killed, out of memory)
                    raise CharnnError(self._peer_lost()) from None
                self._save_what_we_can()
                raise
        if flags.get("signal"):  # arrived during the final validation, which has just saved
            raise self._interrupted(flags["signal"])
        prog = self.progress
        summary = RunSummary(
            step=prog.step,
            elapsed=prog.elapsed,
            skipped_steps=prog.skipped_steps,
            val=result.to_dict() if result else None,
            best_val_bpc=prog.best_val_bpc,
            out=str(self.out),
            stopped_reason=prog.stopped_reason,
        )
        self.reporter.finish(summary)
        return summary.to_dict()

    def _loop(self, flags: dict[str, int]) -> EvalResult | None:
        if self.progress.step == 0:
            self.save(LATEST)  # claims the directory and gives divergence recovery a base
            if self.group.is_writer:
                self.rundir.trim_samples(0)  # a new run (--force) starts its own samples.txt
        self._clock = time.perf_counter()
        while True:
            # Clock: wall time, validation and saves included (--time 5m is five minutes).
            self._tick()
            self._between_steps = True  # a rank lost in this all-reduce leaves this step whole
            signalled = self._agree(flags)
            self._between_steps = False
            if self.done() or self.progress.stopped_reason:
                break
            # Signals: stop between steps, after the last step's validation, save and sample,
            # so a resumed run goes on exactly as this one would have (never a step trained and
            # saved without the validation and sample due at it).
            if signalled:
                self._save_on_signal()
                raise self._interrupted(signalled)
            # Step: one TBPTT window; None when it was skipped as non-finite.
            loss = self.train_step()
            save_due, eval_due = self.policy.due(self.progress.step, self.done())
            # Guard: a finite loss can still overflow the weights; check before anything is saved.
            stopping = self.done()
            overflowed = (save_due or eval_due or stopping) and not all_finite(self.model)
            if overflowed and loss is not None:
                self.progress.skipped_steps += 1
            if loss is None or overflowed:
                if self.guard.non_finite(overflowed):
                    self._recover()
                    self.policy.clear()
                    self.sampler.clear()
                    continue
            else:
                self.guard.finite()
                self._report_step(loss)
            # Validate and save, or defer both while a run of bad steps lasts.
            if self.guard.in_bad_run:
                self.policy.defer(save_due, eval_due)
                self.sampler.defer(self.progress.step)
                continue
            self.policy.clear()
            if eval_due:
                self._eval_and_save(force_latest=save_due)
            elif save_due:
                self.save(LATEST)
            # Sample: what the model writes now, beside the checkpoints and on stderr.
            if self.sampler.due(self.progress.step) and self.group.is_writer:
                self._sample()
        return self._final_eval()

    def _save_on_signal(self) -> None:
        """Save the step reached unless latest/ holds it already; weights that overflowed since
        the last check are not saved (latest/ stays the last good state)."""
        if self.progress.step != self._saved_step and all_finite(self.model):
            self.save(LATEST)

    def _interrupted(self, signum: int) -> Interrupted:
        """A stop the user asked for: where the run stands and the command that continues it."""
        return Interrupted(
            f"stopped at step {self._saved_step}; saved {self.out / LATEST}; "
            f"continue with: charnn train --resume {_shell_quote(str(self.out))}",
            EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT,
        )

    def _peer_lost(self) -> str:
        """After another rank died: keep this step when the loss came between steps (rank 0's
        weights and optimizer are every rank's; the other ranks' carried hidden states are
        gone, so the resumed run starts its streams afresh), and say how to go on."""
        saved = ""
        if self.group.is_writer and self._between_steps and self.progress.step != self._saved_step:
            try:
                if all_finite(self.model):
                    self.hidden = None  # gathering it would need the lost rank
                    self.save(LATEST)
                    saved = " (saved now, without the ranks' carried hidden state)"
            except Exception:  # the lost rank is what the user must hear about
                pass
        return (
            f"another process of this torchrun run stopped (killed, or failed: see its output); "
            f"{self.out / LATEST} holds step {self._saved_step}{saved}; continue with "
            f"torchrun ... charnn train --resume {_shell_quote(str(self.out))} "
            f"(the same number of processes)"
        )

    def _save_what_we_can(self) -> None:
        """After an unexpected failure: keep the progress since the last save, if it is sound.
        Not when distributed: a save gathers from every rank, and the others may be gone."""
        if self.group.active:
            return
        try:
            if self.progress.step > self._saved_step and all_finite(self.model):
                self.save(LATEST)
                self.reporter.message(
                    f"saved {self.out / LATEST} at step {self.progress.step} before stopping"
                )
        except Exception:  # the original failure is what the user must see
            pass

    def _to_device(self, array: Any) -> torch.Tensor:
        """A batch on the training device; on CUDA through pinned memory, copied asynchronously."""
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def train_step(self) -> float | None:
        """One TBPTT window. Returns the loss, or None when the step was skipped as non-finite."""
        x_np, y_np, reset = self.batcher.batch(self.progress.step)
        chars = int(self.char_lengths[y_np].sum())  # the text the targets spell
        self.last_chars = chars
        self.progress.tokens += int(y_np.size)
        self.progress.chars += chars
        self.meter.add(chars * self.group.world_size)  # every rank's streams (theirs read alike)
        x = self._to_device(x_np)  # (B, T)
        y = self._to_device(y_np)  # (B, T)
        if reset or self.hidden is None:
            self.hidden = self.model.init_hidden(x.shape[0], self.device)
        lr = self.lr_at(self.progress.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        with autocast(self.config.precision):
            logits, hidden = self.net(x, self.hidden)  # (B, T, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        self.progress.step += 1
        self.optimizer.zero_grad(set_to_none=True)
        # On the CPU a non-finite loss skips the backward pass. Distributed, every rank must join
        # the gradient all-reduce, so the skip is decided on the averaged gradients' norm (the same
        # on every rank); on CUDA too, so the step is queued whole before the one host sync.
        early = not (self.group.active or self.device.type == "cuda")
        if not early or math.isfinite(loss.item()):
            loss.backward()
            clip = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            finite = (
                torch.isfinite(norm) if self.group.active else torch.isfinite(norm) & torch.isfinite(loss)
            )
            if finite:
                self.optimizer.step()
                self.progress.optimizer_steps += 1
                self.hidden = detach_hidden(hidden)
                return loss.item()
        # Non-finite: leave the weights alone and drop the (possibly poisoned) hidden state.
        self.progress.skipped_steps += 1
        self.hidden = None
        return None

    def _report_step(self, loss: float) -> None:
        prog = self.progress
        ema = prog.train_loss
        prog.train_loss = loss if ema is None else 0.95 * ema + 0.05 * loss
        chars_per_s = self.meter.rate()  # once: reading the rate may start a new window
        self.reporter.progress(
            StepReport(
                step=prog.step,
                total=self.total_steps,
                fraction=self.fraction_done(),
                loss=loss,
                # Per character of the batch's text, whatever the tokenizer; per token beside it.
                bpc=loss * self.meter_tokens / max(self.last_chars, 1) / math.log(2),
                bpt=loss / math.log(2),
                tok_per_s=chars_per_s * prog.tokens / max(1, prog.chars),
                lr=self.lr_at(prog.step),
                skipped=prog.skipped_steps,
                elapsed=self._tick(),
                tokens=prog.tokens,
                chars=prog.chars,
                chars_per_s=chars_per_s,
            )
        )

    def evaluate(self) -> EvalResult | None:
        """Validation on rank 0 (exactly a single process's result), shared with the other ranks."""
        if len(self.val_ids) < 1:
            return None
        result = None
        if self.group.is_writer:
            result = evaluate_stream(
                self.model,
                self.val_ids,
                self.char_lengths,
                device=self.device,
                context=self.val_context,
                extra_nats=self.extra_nats,
            )
        if not self.group.active:
            return result
        values = self.group.broadcast_floats(
            None if result is None else [result.loss, result.bpc, result.tokens, result.chars], 4
        )
        if values is None:
            return None
        return EvalResult(loss=values[0], bpc=values[1], tokens=int(values[2]), chars=int(values[3]))

    def _tick(self) -> float:
        """Advance ``progress.elapsed`` to now (wall clock, summed over resumes) and return it."""
        now = time.perf_counter()
        self.progress.elapsed, self._clock = self.progress.elapsed + now - self._clock, now
        return self.progress.elapsed

    def _final_eval(self) -> EvalResult | None:
        """The end of the run validates, unless this very step was just validated (early stop,
        or a run resumed after it had finished): a step is never validated twice."""
        prog = self.progress
        saved = [prog.val.get(k) for k in ("loss", "bpc", "tokens", "chars")]  # None: missing or NaN
        if prog.val.get("step") == prog.step and len(self.val_ids) >= 2 and None not in saved:
            self.save(LATEST)
            loss, bpc, tokens, chars = (float(v or 0.0) for v in saved)
            return EvalResult(loss=loss, bpc=bpc, tokens=int(tokens), chars=int(chars))
        return self._eval_and_save(force_latest=True, final=True)

    def _eval_and_save(self, force_latest: bool, final: bool = False) -> EvalResult | None:
        prog = self.progress
        if len(self.val_ids) >= 2:
            self.reporter.validating(prog.step)
        result = self.evaluate()
        is_best = False
        if result is not None:
            prog.val = {**result.to_dict(), "step": prog.step}
            # NaN is never "best" (and a NaN best would make every later comparison false).
            best = prog.best_val_bpc
            is_best = math.isfinite(result.bpc) and (best is None or result.bpc < best)
            if is_best:
                prog.best_val_bpc = result.bpc
            report = EvalReport(
                prog.step,
                result.loss,
                result.bpc,
                is_best,
                bpt=result.bpt,
                tokens=result.tokens,
                elapsed=self._tick(),
                best_bpc=prog.best_val_bpc,
            )
            self.reporter.evaluated(report)
            reason = None if final else self.stopper.observe(prog, result.bpc)
            if reason:
                prog.stopped_reason = reason
                self.reporter.stopped(prog.step, prog.elapsed, reason)
        if force_latest or prog.step % self.config.save_every == 0 or is_best:
            self.save(LATEST)
        if is_best or (result is None and force_latest):
            self.save(BEST)
        return result

    def _sample(self) -> None:
        start = time.perf_counter()
        text = self.sampler.sample(self.model)
        self.rundir.append_sample(self.progress.step, text, f"(seed {self.sampler.seed})")
        self.reporter.sampled(SampleReport(self.progress.step, text, time.perf_counter() - start))

    def _recover(self) -> None:
        self.reporter.message(
            f"{self.config.max_bad_steps} non-finite steps in a row at step {self.progress.step}: "
            "restoring the last checkpoint and halving the learning rate"
        )
        old = self.progress
        self._restore(load_checkpoint(self.out, prefer=LATEST))
        # The steps since the checkpoint are replayed at the lower rate; the counts of skipped
        # steps and time spent are facts about this run and are not rolled back.
        self.progress.lr_scale = old.lr_scale * 0.5
        self.progress.skipped_steps = old.skipped_steps
        self.progress.elapsed = old.elapsed

    # ------------------------------------------------------------------ checkpoints

    def _info(self) -> RunInfo:
        return RunInfo(
            device=str(self.device),
            parameters=self.model.num_parameters(),
            train_tokens=len(self.batcher.data),
            val_tokens=len(self.val_ids),
            vocab=self.corpus.tokenizer.vocab_size,
            batch_size=self.batcher.batch_size,
            steps=self.total_steps,
            time_limit=self.time_limit,
            default_length=self.length.default,
            start_step=self.progress.step,
            out=str(self.out),
            processes=self.group.world_size,
            elapsed=self.progress.elapsed,
            threads=self.threads,
        )

    def save(self, which: str) -> None:
        corpus = CorpusRecord(
            self.corpus.sources, self.corpus.sha256, int(len(self.corpus.ids)), self.corpus.chars
        )
        hidden = None if self.hidden is None else self.group.gather_hidden(self.hidden)  # all ranks
        self.guard.checkpointed()
        self._saved_step = self.progress.step
        if not self.group.is_writer:
            return
        meta = training_meta(
            self.config,
            self.progress,
            corpus,
            self.optimizer,
            self.run_meta(),
            self.group.world_size,
            self.parent,
        )
        state = pack_train_state(self.optimizer, hidden)
        save_checkpoint(self.out / which, self.model, self.corpus.tokenizer, meta, state)

    def run_meta(self) -> RunRecord:
        """How this run (or its latest resumption) was started: command line, versions, device."""
        from charnn.metrics import invocation

        return RunRecord(
            **(self.invocation or invocation()).to_fields(),
            device=str(self.device),
            threads=ThreadsRecord(**self.threads.to_dict()),
        )

    def _restore(self, ckpt: Checkpoint) -> None:
        self.group.check_resume(ckpt.meta.processes)
        streams = self.batcher.batch_size * self.group.world_size  # a saved hidden state holds every rank's
        self.progress, hidden = restore_train_state(ckpt, self.model, self.optimizer, self.device, streams)
        self.hidden = self.group.own_hidden(hidden, self.batcher.batch_size)
        if self.group.is_writer:
            self.rundir.trim_samples(self.progress.step)  # the steps after it will be sampled again


def lost_peer(exc: BaseException) -> bool:
    """Whether a failure in a collective means another rank went away (gloo or NCCL)."""
    text = str(exc)
    dist_error = type(exc).__name__ in ("DistError", "DistBackendError", "DistNetworkError")
    return dist_error or (
        isinstance(exc, RuntimeError)
        and any(
            needle in text
            for needle in (
                "Connection reset by peer",
                "Connection closed by peer",
                "Broken pipe",
                "gloo",
                "NCCL",
            )
        )
    )


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


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
