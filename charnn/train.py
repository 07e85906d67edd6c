"""The training loop: teacher forcing with truncated BPTT, AdamW, warm-up + cosine decay,
gradient clipping, periodic validation, atomic checkpoints, exact resume, and recovery
from non-finite steps. Reports progress through a :class:`~charnn.reporting.Reporter`; never prints.

The loop (:meth:`Trainer.run`) reads top to bottom; its parts are small named objects:
:class:`Schedule` (learning rate), :class:`ThroughputMeter` (chars/s),
:class:`DivergenceGuard` (what non-finite steps mean) and :class:`EvalSavePolicy`
(when to validate and save). Checkpoint contents are :mod:`charnn.checkpoint`'s business,
their place on disk :mod:`charnn.rundir`'s.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from charnn.config import ModelConfig, TrainConfig
from charnn.data import Corpus, StreamBatcher, split_train_val
from charnn.distributed import SOLO, Group
from charnn.errors import EXIT_SIGINT, EXIT_SIGTERM, ConfigError, DataError, DivergedError, Interrupted
from charnn.evaluate import EvalResult, evaluate_stream, token_char_lengths
from charnn.hardware import threads_for
from charnn.model import CharRNN, Hidden, detach_hidden
from charnn.reporting import EvalReport, Reporter, RunInfo, RunSummary, StepReport

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
    clashes = [
        f"--{k.replace('_', '-')} {given[k]} (run has {getattr(saved, k)})"
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
    return saved.replace(**changes)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- the loop's parts


@dataclass(frozen=True)
class Schedule:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr`` over the decay horizon:
    ``--decay-steps`` if given, else the run's length in steps, else its length in time."""

    config: TrainConfig
    total_steps: int | None
    time_limit: float | None

    def lr(self, step: int, elapsed: float, scale: float) -> float:
        cfg = self.config
        base = cfg.lr * scale
        if step < cfg.warmup_steps:
            return base * (step + 1) / cfg.warmup_steps
        horizon = cfg.decay_steps or self.total_steps
        if horizon:
            frac = (step - cfg.warmup_steps) / max(1, horizon - cfg.warmup_steps)
        else:
            frac = elapsed / (self.time_limit or DEFAULT_TIME)
        frac = min(1.0, max(0.0, frac))
        return base * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


class ThroughputMeter:
    """Tokens per second over a window of about ``window`` seconds, so the rate follows changes."""

    def __init__(self, window: float = 2.0) -> None:
        self.window = window
        self.start, self.tokens = time.perf_counter(), 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

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


@contextmanager
def _signal_flags(flags: dict[str, int]) -> Iterator[dict[str, int]]:
    """First SIGINT/SIGTERM sets a flag checked between steps; a second SIGINT exits at once
    (saves are atomic, so that cannot leave a torn checkpoint)."""

    def handler(signum: int, frame: Any) -> None:
        if flags.get("signal") and signum == signal.SIGINT:
            import os

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
    """One training run over a corpus, writing ``latest/`` and ``best/`` under ``out``."""

    def __init__(
        self,
        corpus: Corpus,
        model_config: ModelConfig,
        config: TrainConfig,
        out: Path,
        reporter: Reporter,
        resume: Checkpoint | None = None,
        group: Group = SOLO,
    ) -> None:
        self.corpus, self.config, self.out, self.reporter = corpus, config, Path(out), reporter
        self.group = group
        self.device = select_device(group.device(config.device))
        if config.device == "auto" and self.device.type == "cpu" and mps_available():
            reporter.message(MPS_NOTE)
        threads = threads_for(config.threads)
        if threads is not None:
            torch.set_num_threads(threads)
        if config.precision == "bf16" and self.device.type != "cuda":
            raise ConfigError("--precision bf16 needs a CUDA device")
        train_ids, self.val_ids = split_train_val(corpus.ids, config.val_fraction)
        self.val_ids = self.val_ids[: config.eval_chars]
        self.batcher = StreamBatcher(
            train_ids,
            config.batch_size,
            config.seq_len,
            config.seed,
            reporter.message,
            rank=group.rank,
            world=group.world_size,
        )
        self.char_lengths = token_char_lengths(corpus.tokenizer)

        torch.manual_seed(config.seed)
        self.model = CharRNN(model_config).to(self.device)
        group.init(self.device)
        self.net = group.wrap(self.model, self.device)  # what training steps run through (DDP)
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2 and "embed" not in n]
        no_decay = [p for n, p in self.model.named_parameters() if p.dim() < 2 or "embed" in n]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": config.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=config.lr,
            betas=(0.9, 0.99),
        )
        self.schedule = Schedule(config, self.total_steps, self.time_limit)
        self.guard = DivergenceGuard(config.max_bad_steps)
        self.policy = EvalSavePolicy(config.eval_every, config.save_every)
        self.meter = ThroughputMeter()
        self.progress = Progress()
        self.hidden: Hidden | None = None
        if resume is not None:
            self._restore(resume)

    # ------------------------------------------------------------------ length

    @property
    def total_steps(self) -> int | None:
        cfg = self.config
        if cfg.steps is not None:
            return cfg.steps
        if cfg.epochs is not None:
            return self.batcher.steps_for_epochs(cfg.epochs)
        return None

    @property
    def time_limit(self) -> float | None:
        cfg = self.config
        if cfg.time_limit is None and cfg.steps is None and cfg.epochs is None:
            return DEFAULT_TIME
        return cfg.time_limit

    def fraction_done(self) -> float:
        parts = []
        if self.total_steps:
            parts.append(self.progress.step / self.total_steps)
        if self.time_limit:
            parts.append(self.progress.elapsed / self.time_limit)
        return min(1.0, max(parts)) if parts else 0.0

    def lr_at(self, step: int) -> float:
        return self.schedule.lr(step, self.progress.elapsed, self.progress.lr_scale)

    def done(self) -> bool:
        total, limit = self.total_steps, self.time_limit
        return (total is not None and self.progress.step >= total) or (
            limit is not None and self.progress.elapsed >= limit
        )

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Any]:
        self.reporter.start(self._info())
        flags: dict[str, int] = {}
        # Signals become flags before the first save, so Ctrl-C can never land inside one.
        with _signal_flags(flags):
            if self.progress.step == 0:
                self.save(LATEST)  # claims the directory and gives divergence recovery a base
            clock = time.perf_counter()
            while True:
                # Clock: wall time, validation and saves included (--time 5m is five minutes).
                # Ranks agree on it and on signals, so all of them stop at the same step.
                now = time.perf_counter()
                elapsed, clock = self.progress.elapsed + now - clock, now
                self.progress.elapsed, signalled = self.group.agree(elapsed, flags.get("signal", 0))
                if self.done():
                    break
                # Step: one TBPTT window; None when it was skipped as non-finite.
                loss = self.train_step()
                self.meter.add(
                    self.batcher.batch_size * self.config.seq_len * self.group.world_size
                )  # all ranks
                save_due, eval_due = self.policy.due(self.progress.step, self.done())
                # Guard: a finite loss can still overflow the weights; check before anything is saved.
                stopping = bool(signalled) or self.done()
                overflowed = (save_due or eval_due or stopping) and not self._finite()
                if overflowed and loss is not None:
                    self.progress.skipped_steps += 1
                if loss is None or overflowed:
                    if self.guard.non_finite(overflowed):
                        self._recover()
                        self.policy.clear()
                        continue
                else:
                    self.guard.finite()
                    self._report_step(loss)
                # Signals: save what we have (weights checked finite above) and stop.
                if signalled:
                    self.save(LATEST)
                    code = EXIT_SIGTERM if signalled == signal.SIGTERM else EXIT_SIGINT
                    step = self.progress.step
                    raise Interrupted(f"interrupted at step {step}; saved {self.out / LATEST}", code)
                # Validate and save, or defer both while a run of bad steps lasts.
                if self.guard.in_bad_run:
                    self.policy.defer(save_due, eval_due)
                    continue
                self.policy.clear()
                if eval_due:
                    self._eval_and_save(force_latest=save_due)
                elif save_due:
                    self.save(LATEST)
            result = self._eval_and_save(force_latest=True)
        prog = self.progress
        summary = RunSummary(
            step=prog.step,
            elapsed=prog.elapsed,
            skipped_steps=prog.skipped_steps,
            val=result.to_dict() if result else None,
            best_val_bpc=prog.best_val_bpc,
            out=str(self.out),
        )
        self.reporter.finish(summary)
        return summary.to_dict()

    def _autocast(self) -> Any:
        if self.config.precision == "bf16":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _to_device(self, array: Any) -> torch.Tensor:
        """A batch on the training device; on CUDA through pinned memory, copied asynchronously."""
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def train_step(self) -> float | None:
        """One TBPTT window. Returns the loss, or None when the step was skipped as non-finite."""
        x_np, y_np, reset = self.batcher.batch(self.progress.step)
        x = self._to_device(x_np)  # (B, T)
        y = self._to_device(y_np)  # (B, T)
        if reset or self.hidden is None:
            self.hidden = self.model.init_hidden(x.shape[0], self.device)
        lr = self.lr_at(self.progress.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        with self._autocast():
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
        self.reporter.progress(
            StepReport(
                step=prog.step,
                total=self.total_steps,
                fraction=self.fraction_done(),
                loss=loss,
                bpc=loss / math.log(2),
                tok_per_s=self.meter.rate(),
                lr=self.lr_at(prog.step),
                skipped=prog.skipped_steps,
            )
        )

    def evaluate(self) -> EvalResult | None:
        """Validation on rank 0 (exactly a single process's result), shared with the other ranks."""
        if len(self.val_ids) < 2:
            return None
        result = None
        if self.group.is_writer:
            result = evaluate_stream(self.model, self.val_ids, self.char_lengths, device=self.device)
        if not self.group.active:
            return result
        values = self.group.broadcast_floats(
            None if result is None else [result.loss, result.bpc, result.tokens, result.chars], 4
        )
        if values is None:
            return None
        return EvalResult(loss=values[0], bpc=values[1], tokens=int(values[2]), chars=int(values[3]))

    def _eval_and_save(self, force_latest: bool) -> EvalResult | None:
        prog = self.progress
        result = self.evaluate()
        is_best = False
        if result is not None:
            prog.val = {**result.to_dict(), "step": prog.step}
            # NaN is never "best" (and a NaN best would make every later comparison false).
            best = prog.best_val_bpc
            is_best = math.isfinite(result.bpc) and (best is None or result.bpc < best)
            if is_best:
                prog.best_val_bpc = result.bpc
            self.reporter.evaluated(EvalReport(prog.step, result.loss, result.bpc, is_best))
        if force_latest or prog.step % self.config.save_every == 0 or is_best:
            self.save(LATEST)
        if is_best or (result is None and force_latest):
            self.save(BEST)
        return result

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

    def _finite(self) -> bool:
        """Whether every weight is finite (one device sync; checked only before saves)."""
        flags = [torch.isfinite(p).all() for p in self.model.parameters()]
        return bool(torch.stack(flags).all())

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
            default_length=self.total_steps is None and self.config.time_limit is None,
            start_step=self.progress.step,
            out=str(self.out),
            processes=self.group.world_size,
        )

    def save(self, which: str) -> None:
        corpus = {
            "sources": self.corpus.sources,
            "sha256": self.corpus.sha256,
            "tokens": int(len(self.corpus.ids)),
            "chars": self.corpus.chars,
        }
        hidden = None if self.hidden is None else self.group.gather_hidden(self.hidden)  # all ranks
        self.guard.checkpointed()
        if not self.group.is_writer:
            return
        meta = training_meta(self.config, self.progress, corpus, self.optimizer)
        meta["world_size"] = self.group.world_size
        state = pack_train_state(self.optimizer, hidden)
        save_checkpoint(self.out / which, self.model, self.corpus.tokenizer, meta, state)

    def _restore(self, ckpt: Checkpoint) -> None:
        self.group.check_resume(ckpt.meta.get("world_size", 1))
        self.progress, hidden = restore_train_state(ckpt, self.model, self.optimizer, self.device)
        self.hidden = self.group.own_hidden(hidden, self.batcher.batch_size)


def check_resume_corpus(ckpt: Checkpoint, corpus: Corpus) -> None:
    saved = ckpt.meta.get("corpus", {}).get("sha256")
    if saved and saved != corpus.sha256:
        raise DataError("the corpus differs from the one this run trained on (sha256 mismatch)")
