"""The training loop: teacher forcing with truncated BPTT, AdamW, warm-up then linear or cosine decay,
gradient clipping, periodic validation, atomic checkpoints, exact resume, and recovery
from non-finite steps. Reports progress through a :class:`~charnn.train_records.Reporter`; never prints.

A run is planned first (:mod:`charnn.run_plan`: configs, corpus, where the weights start, the run
directory), then :class:`Trainer` runs the plan. The loop (:meth:`Trainer.run`) reads top to
bottom; its parts are small named objects: :class:`Schedule` (learning rate), :class:`RunClock`
(wall time, when to stop), :class:`ThroughputMeter` (chars/s), :class:`DivergenceGuard` (what
non-finite steps mean), :class:`EvalSavePolicy` (when to validate and save), :class:`EarlyStop`
(``--patience``) and :class:`TrainingSampler` (``--sample-every``); ``--average``'s
:class:`~charnn.averaging.WeightAverager` is validated beside the raw weights
(:func:`record_validation`). Saving and restoring is the :class:`~charnn.checkpointer.Checkpointer`'s
job; checkpoint contents are :mod:`charnn.checkpoint`'s business, their place on disk
:mod:`charnn.rundir`'s.
"""

from __future__ import annotations

import math
import shlex
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from charnn.checkpoint import BEST, LATEST, Counters
from charnn.checkpointer import Checkpointer, all_finite
from charnn.config import SampleConfig, TrainConfig
from charnn.constraints import TokenRules
from charnn.data import Corpus, StreamBatcher, split_train_val
from charnn.distributed import Group
from charnn.errors import EXIT_SIGINT, EXIT_SIGTERM, CharnnError, ConfigError, DivergedError, Interrupted
from charnn.evaluate import EvalResult, evaluate_stream, token_char_lengths, token_extra_nats
from charnn.model import CharRNN, detach_hidden
from charnn.tokenizer import Tokenizer
from charnn.train_records import EvalReport, Reporter, RunInfo, RunSummary, SampleReport, StepReport

if TYPE_CHECKING:
    from charnn.run_plan import RunPlan

__all__ = ["DEFAULT_TIME", "Counters", "Trainer", "all_finite", "select_device"]

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


class StepLog:
    """What a progress line says about the steps: characters per second over a recent window
    (every rank's streams), and the loss per character of the batch's text, whatever the
    tokenizer, beside the loss per token."""

    def __init__(self, char_lengths: np.ndarray, tokens_per_step: int, world_size: int) -> None:
        self.char_lengths, self.tokens_per_step, self.world_size = char_lengths, tokens_per_step, world_size
        self.meter = ThroughputMeter()
        self.last_chars = 0  # characters the last step's targets spell

    def count(self, progress: Counters, targets: np.ndarray) -> None:
        """One step's targets (B, T): into the progress counters and the throughput."""
        chars = int(self.char_lengths[targets].sum())  # the text the targets spell
        self.last_chars = chars
        progress.tokens += int(targets.size)
        progress.chars += chars
        self.meter.add(chars * self.world_size)  # every rank's streams (theirs read alike)

    def report(
        self, progress: Counters, loss: float, total: int | None, fraction: float, lr: float, elapsed: float
    ) -> StepReport:
        """A finite step's report; its loss joins the moving average kept in the progress."""
        ema = progress.train_loss
        progress.train_loss = loss if ema is None else 0.95 * ema + 0.05 * loss
        chars_per_s = self.meter.rate()  # once: reading the rate may start a new window
        return StepReport(
            step=progress.step,
            total=total,
            fraction=fraction,
            loss=loss,
            bpc=loss * self.tokens_per_step / max(self.last_chars, 1) / math.log(2),
            bpt=loss / math.log(2),
            tok_per_s=chars_per_s * progress.tokens / max(1, progress.chars),
            lr=lr,
            skipped=progress.skipped_steps,
            elapsed=elapsed,
            tokens=progress.tokens,
            chars=progress.chars,
            chars_per_s=chars_per_s,
        )


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
    Its counter and reference live in :class:`Counters`, so they survive ``--resume``."""

    def __init__(self, patience: int | None, min_delta: float) -> None:
        self.patience, self.min_delta = patience or 0, min_delta

    def exhausted(self, progress: Counters) -> bool:
        """Whether the validations without improvement already reach ``--patience``."""
        return bool(self.patience) and progress.stale_evals >= self.patience

    def observe(self, progress: Counters, bpc: float) -> str | None:
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


def record_validation(
    progress: Counters, result: EvalResult, clock: RunClock, averaged: EvalResult | None = None
) -> EvalReport:
    """Note a validation in the progress (its numbers, and the best bpc when it improves on it)
    and say so. ``averaged``: the weight average's validation (``--average``), which counts
    for the best (and best/ takes the average) only when it beats the raw weights'."""
    progress.val = {**result.to_dict(), "step": progress.step}
    use_average = averaged is not None and better(averaged.bpc, result.bpc)
    kept = averaged if use_average and averaged is not None else result
    # NaN is never "best" (and a NaN best would make every later comparison false).
    best = progress.best_val_bpc
    is_best = math.isfinite(kept.bpc) and (best is None or kept.bpc < best)
    if is_best:
        progress.best_val_bpc, progress.best_averaged = kept.bpc, use_average
    return EvalReport(
        progress.step,
        result.loss,
        result.bpc,
        is_best,
        bpt=result.bpt,
        tokens=result.tokens,
        elapsed=clock.tick(progress),
        best_bpc=progress.best_val_bpc,
        averaged_bpc=None if averaged is None else averaged.bpc,
        best_averaged=is_best and use_average,
    )


def better(bpc: float, than: float) -> bool:
    """Whether ``bpc`` is finite and below ``than`` (or ``than`` is not finite)."""
    return math.isfinite(bpc) and (not math.isfinite(than) or bpc < than)


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


class RunClock:
    """The run's wall clock, validation and saves included (``--time 5m`` is five minutes),
    summed over resumes in ``progress.elapsed``; and whether the run's length is reached.

    Distributed, the ranks agree once per step on the slowest clock and on any pending signal
    (:meth:`agree`, one all-reduce), so that they all stop at the same step: a rank that stopped
    or validated alone would leave the others waiting in a collective."""

    def __init__(self, length: RunLength, group: Group) -> None:
        self.length, self.group = length, group
        self.last = time.perf_counter()
        self.agreed: float | None = None  # the elapsed time the ranks agreed on this step

    def restart(self) -> None:
        self.last = time.perf_counter()

    def tick(self, progress: Counters) -> float:
        """Advance ``progress.elapsed`` to now and return it."""
        now = time.perf_counter()
        progress.elapsed, self.last = progress.elapsed + now - self.last, now
        return progress.elapsed

    def agree(self, progress: Counters, signal: int) -> int:
        """The signal to act on now (the same on every rank)."""
        self.agreed, signal = self.group.agree(progress.elapsed, signal)
        return signal

    def done(self, progress: Counters) -> bool:
        elapsed = progress.elapsed if self.agreed is None else self.agreed
        return self.length.reached(progress.step, elapsed)


# ---------------------------------------------------------------------------- setting up


def setup_device(config: TrainConfig, group: Group, message: Callable[[str], None]) -> torch.device:
    """The device this process trains on (each rank its own GPU). Torch's CPU threads are settled
    later, once the model and the first batch exist to measure on (:meth:`RunPlan.settle_threads`)."""
    device = select_device(group.device(config.device))
    if config.device == "auto" and device.type == "cpu" and mps_available():
        message(MPS_NOTE)
    if config.precision == "bf16" and device.type != "cuda":
        raise ConfigError("--precision bf16 needs a CUDA device")
    return device


@dataclass(frozen=True)
class TrainingData:
    """The corpus as the loop reads it: this rank's training streams, the held-out text, and the
    per-character numbers every tokenizer is reported in."""

    batcher: StreamBatcher
    val_ids: np.ndarray  # held-out tokens, at most --eval-chars of them
    val_context: int  # the token before them: validation text is predicted from its first token on
    char_lengths: np.ndarray  # characters each token spells
    extra_nats: np.ndarray | None  # the unknown symbol's extra cost, per token id

    @classmethod
    def of(
        cls, corpus: Corpus, config: TrainConfig, group: Group, message: Callable[[str], None]
    ) -> TrainingData:
        char_lengths = token_char_lengths(corpus.tokenizer)
        train_ids, val_ids = split_train_val(corpus.ids, config.val_fraction, char_lengths=char_lengths)
        batcher = StreamBatcher(
            train_ids,
            config.batch_size,
            config.seq_len,
            config.seed,
            message,
            rank=group.rank,
            world=group.world_size,
        )
        extra = token_extra_nats(corpus.tokenizer)
        return cls(batcher, val_ids[: config.eval_chars], int(train_ids[-1]), char_lengths, extra)

    def validate(self, model: CharRNN, device: torch.device) -> list[float]:
        """Loss, bpc, tokens and characters of the held-out text (as numbers a group can share)."""
        result = evaluate_stream(
            model,
            self.val_ids,
            self.char_lengths,
            device=device,
            context=self.val_context,
            extra_nats=self.extra_nats,
        )
        return [result.loss, result.bpc, result.tokens, result.chars]


def build_model(plan: RunPlan, device: torch.device) -> CharRNN:
    """The plan's network on ``device``: initialised from ``--seed`` (the same on every rank), then
    given the parent's weights when fine-tuning (new vocabulary rows keep their fresh values)."""
    torch.manual_seed(plan.train.seed)
    model = CharRNN(plan.model).to(device)
    if plan.init_from is not None:
        from charnn.finetune import adopt_weights

        adopt_weights(model, plan.init_from)
    return model


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A batch on the training device; on CUDA through pinned memory, copied asynchronously."""
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def summarise(progress: Counters, result: EvalResult | None, out: Path) -> RunSummary:
    """How a run ended: where it stands, its last validation and its best."""
    return RunSummary(
        step=progress.step,
        elapsed=progress.elapsed,
        skipped_steps=progress.skipped_steps,
        val=result.to_dict() if result else None,
        best_val_bpc=progress.best_val_bpc,
        out=str(out),
        stopped_reason=progress.stopped_reason,
    )


def interrupted(saved_step: int, out: Path, signum: int) -> Interrupted:
    """A stop the user asked for: where the run stands and the command that continues it."""
    return Interrupted(
        f"stopped at step {saved_step}; saved {out / LATEST}; "
        f"continue with: charnn train --resume {shlex.quote(str(out))}",
        EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT,
    )


def last_words(out: Path) -> str:
    """What a second Ctrl-C says as it stops the process at once."""
    from charnn.console import shown

    shown_out = shown(str(out))
    return (
        f"charnn: stopped at once by a second Ctrl-C; {shown_out}/{LATEST} holds the last save; "
        f"continue with: charnn train --resume {shlex.quote(shown_out)}\n"
    )


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


# ---------------------------------------------------------------------------- the trainer


class Trainer:
    """Runs a :class:`~charnn.run_plan.RunPlan`: one training run over its corpus, with
    ``latest/`` and ``best/`` in its run directory.

    It owns the state every part acts on (model, optimizer, carried hidden state, progress) and
    the glue between them: :meth:`run` and the loop. Each part with an invariant of its own is a
    class above; checkpoint keeping is the :class:`~charnn.checkpointer.Checkpointer`; what
    differs between torchrun's ranks is asked of the process group.
    """

    def __init__(self, plan: RunPlan, reporter: Reporter) -> None:
        config, group = plan.train, plan.group
        self.plan, self.config, self.group, self.reporter = plan, config, group, reporter
        self.corpus, self.out = plan.corpus, plan.out
        self.device = setup_device(config, group, reporter.message)
        self.data = TrainingData.of(plan.corpus, config, group, reporter.message)
        streams = self.data.batcher.batch_size  # this rank's (fewer than asked on a short corpus)
        self.steps = StepLog(self.data.char_lengths, streams * config.seq_len, group.world_size)
        self.model = build_model(plan, self.device)
        group.init(self.device)
        self.net = group.wrap(self.model, self.device)  # what training steps run through (DDP)
        self.optimizer = build_optimizer(self.model, config)
        self.length = RunLength.of(config, self.data.batcher)
        # Threads: --threads, the run's recorded count, or measured now on this model and batch;
        # the plan then carries the count (checkpoints and --resume keep it) and how it was chosen.
        self.plan = plan = plan.settle_threads(self.model, self.data.batcher, self.device, self.length)
        self.config = config = plan.train
        self.schedule = Schedule(config, self.length.steps, self.length.seconds)
        self.clock = RunClock(self.length, group)
        self.guard = DivergenceGuard(config.max_bad_steps)
        self.policy = EvalSavePolicy(config.eval_every, config.save_every)
        self.stopper = EarlyStop(config.patience, config.min_delta)
        every = config.sample_every if group.is_writer else 0  # samples are rank 0's output
        self.sampler = TrainingSampler(every, plan.corpus.tokenizer, config.seed)
        self.keeper = Checkpointer(plan, self.model, self.optimizer, self.device, streams)
        self.progress, self.hidden = self.keeper.start()
        # A resumed run goes on until its (new) end, unless --patience still says stop: a run
        # interrupted as it stopped early resumes to the same stop, not past it.
        if plan.resume is not None and not self.stopper.exhausted(self.progress):
            self.progress.stopped_reason = None
        self._between_steps = False  # in the per-step all-reduce (for a rank lost there)

    def lr_at(self, step: int) -> float:
        return self.schedule.lr(step, self.progress.elapsed, self.progress.lr_scale)

    def done(self) -> bool:
        return self.clock.done(self.progress)

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Any]:
        with self.plan.claimed():  # rank 0 holds the run directory from before its first write
            return self._run()

    def _run(self) -> dict[str, Any]:
        self.reporter.start(self._info())
        flags: dict[str, int] = {}
        # Signals become flags before the first save, so Ctrl-C can never land inside one.
        with _signal_flags(flags, last_words(self.out) if self.group.is_writer else ""):
            try:
                result = self._loop(flags)
            except CharnnError:
                raise  # deliberate stops (signals, divergence, a failed save) have saved what they could
            except BaseException as exc:
                if self.group.active and lost_peer(exc):  # another rank died (killed, out of memory)
                    raise CharnnError(
                        self.keeper.after_lost_peer(self.progress, self._between_steps)
                    ) from None
                self.keeper.save_what_we_can(self.progress, self.hidden, self.reporter.message)
                raise
        if flags.get("signal"):  # arrived during the final validation, which has just saved
            raise interrupted(self.keeper.saved_step, self.out, flags["signal"])
        summary = summarise(self.progress, result, self.out)
        self.reporter.finish(summary)
        return summary.to_dict()

    def _loop(self, flags: dict[str, int]) -> EvalResult | None:
        if self.progress.step == 0:
            self.save(LATEST)  # claims the directory and gives divergence recovery a base
            self.keeper.forget_samples_after(0)  # a new run (--force) starts its own samples.txt
        self.clock.restart()
        while True:
            # Clock: wall time, validation and saves included (--time 5m is five minutes).
            self.clock.tick(self.progress)
            self._between_steps = True  # a rank lost in this all-reduce leaves this step whole
            signalled = self.clock.agree(self.progress, flags.get("signal", 0))
            self._between_steps = False
            if self.done() or self.progress.stopped_reason:
                break
            # Signals: stop between steps, after the last step's validation, save and sample,
            # so a resumed run goes on exactly as this one would have (never a step trained and
            # saved without the validation and sample due at it). Weights that overflowed since
            # the last check are not saved: latest/ stays the last good state.
            if signalled:
                if self.progress.step != self.keeper.saved_step and all_finite(self.model):
                    self.save(LATEST)
                raise interrupted(self.keeper.saved_step, self.out, signalled)
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
            if self.sampler.due(self.progress.step):
                self._sample()
        return self._final_eval()

    def train_step(self) -> float | None:
        """One TBPTT window. Returns the loss, or None when the step was skipped as non-finite."""
        x_np, y_np, reset = self.data.batcher.batch(self.progress.step)
        self.steps.count(self.progress, y_np)
        x = to_device(x_np, self.device)  # (B, T)
        y = to_device(y_np, self.device)  # (B, T)
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
                self.keeper.averager.after_step(self.model, self.progress, self.schedule)  # --average
                self.hidden = detach_hidden(hidden)
                return loss.item()
        # Non-finite: leave the weights alone and drop the (possibly poisoned) hidden state.
        self.progress.skipped_steps += 1
        self.hidden = None
        return None

    def _report_step(self, loss: float) -> None:
        prog = self.progress
        fraction, lr = self.length.fraction(prog.step, prog.elapsed), self.lr_at(prog.step)
        report = self.steps.report(prog, loss, self.length.steps, fraction, lr, self.clock.tick(prog))
        self.reporter.progress(report)

    def evaluate(self) -> EvalResult | None:
        """Validation on rank 0 (exactly a single process's result), shared with the other ranks."""
        if len(self.data.val_ids) < 1:
            return None
        values = self.group.shared(lambda: self.data.validate(self.model, self.device), 4)
        if values is None:
            return None
        return EvalResult(loss=values[0], bpc=values[1], tokens=int(values[2]), chars=int(values[3]))

    def _final_eval(self) -> EvalResult | None:
        """The end of the run validates, unless this very step was just validated (early stop,
        or a run resumed after it had finished): a step is never validated twice."""
        prog = self.progress
        saved = [prog.val.get(k) for k in ("loss", "bpc", "tokens", "chars")]  # None: missing or NaN
        if prog.val.get("step") == prog.step and len(self.data.val_ids) >= 2 and None not in saved:
            self.save(LATEST)
            loss, bpc, tokens, chars = (float(v or 0.0) for v in saved)
            return EvalResult(loss=loss, bpc=bpc, tokens=int(tokens), chars=int(chars))
        return self._eval_and_save(force_latest=True, final=True)

    def _eval_and_save(self, force_latest: bool, final: bool = False) -> EvalResult | None:
        prog = self.progress
        if len(self.data.val_ids) >= 2:
            self.reporter.validating(prog.step)
        result = self.evaluate()
        averaged = self.keeper.averager.scored(self.model, self.evaluate) if result is not None else None
        is_best = best_averaged = False
        if result is not None:
            report = record_validation(prog, result, self.clock, averaged)
            is_best, best_averaged = report.is_best, report.best_averaged
            self.reporter.evaluated(report)
            reason = None if final else self.stopper.observe(prog, report.kept_bpc)
            if reason:
                prog.stopped_reason = reason
                self.reporter.stopped(prog.step, prog.elapsed, reason)
        if force_latest or prog.step % self.config.save_every == 0 or is_best:
            self.save(LATEST)
        if is_best or (result is None and force_latest):
            self.save(BEST, averaged if best_averaged else None)
        return result

    def _sample(self) -> None:
        start = time.perf_counter()
        text = self.sampler.sample(self.model)
        self.keeper.append_sample(self.progress.step, text, f"(seed {self.sampler.seed})")
        self.reporter.sampled(SampleReport(self.progress.step, text, time.perf_counter() - start))

    def _recover(self) -> None:
        self.reporter.message(
            f"{self.config.max_bad_steps} non-finite steps in a row at step {self.progress.step}: "
            "restoring the last checkpoint and halving the learning rate"
        )
        self.progress, self.hidden = self.keeper.recover(self.progress)

    def save(self, which: str, averaged: EvalResult | None = None) -> None:
        self.guard.checkpointed()
        self.keeper.save(which, self.progress, self.hidden, averaged)

    def _info(self) -> RunInfo:
        return RunInfo(
            device=str(self.device),
            parameters=self.model.num_parameters(),
            train_tokens=len(self.data.batcher.data),
            val_tokens=len(self.data.val_ids),
            vocab=self.corpus.tokenizer.vocab_size,
            batch_size=self.data.batcher.batch_size,
            steps=self.length.steps,
            time_limit=self.length.seconds,
            default_length=self.length.default,
            start_step=self.progress.step,
            out=str(self.out),
            processes=self.group.world_size,
            elapsed=self.progress.elapsed,
            threads=self.plan.threads,
        )
