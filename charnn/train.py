"""The training loop: teacher forcing with truncated BPTT, AdamW, warm-up + cosine decay,
gradient clipping, periodic validation, atomic checkpoints, exact resume, and
recovery from non-finite steps. Reports progress through a ``Reporter``; never prints.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from charnn import __version__
from charnn.checkpoint import BEST, LATEST, Checkpoint, load_checkpoint, save_checkpoint
from charnn.config import ModelConfig, TrainConfig
from charnn.data import Corpus, StreamBatcher, split_train_val
from charnn.errors import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    CheckpointError,
    ConfigError,
    DataError,
    DivergedError,
    Interrupted,
)
from charnn.evaluate import EvalResult, evaluate_stream, token_char_lengths
from charnn.model import CharRNN, Hidden, detach_hidden, hidden_from_tensors, hidden_tensors

DEFAULT_TIME = 300.0  # seconds, when no --steps/--epochs/--time is given

# Options that define what a run computes: resuming with different values would
# silently make a different run, so it is refused.
LOCKED_FIELDS = (
    "batch_size", "seq_len", "lr", "min_lr_ratio", "weight_decay", "warmup_steps",
    "grad_clip", "val_fraction", "seed", "precision",
)


class Reporter(Protocol):
    def start(self, info: dict[str, Any]) -> None: ...
    def progress(self, step: int, total: int | None, fraction: float, stats: dict[str, float]) -> None: ...
    def evaluated(self, step: int, result: EvalResult, is_best: bool) -> None: ...
    def message(self, text: str) -> None: ...
    def finish(self, summary: dict[str, Any]) -> None: ...


def select_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
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
    refuse_contradictions(saved, given, LOCKED_FIELDS)
    changes = {k: v for k, v in given.items() if k not in LOCKED_FIELDS}
    if {"steps", "epochs", "time_limit"} & changes.keys():
        # A new length replaces the old one (lengths are totals for the whole run).
        changes = {"steps": None, "epochs": None, "time_limit": None, **changes}
    return saved.replace(**changes)


@dataclass
class Progress:
    """Counters saved in every checkpoint."""

    step: int = 0  # batches consumed (including skipped ones)
    optimizer_steps: int = 0
    skipped_steps: int = 0
    elapsed: float = 0.0  # seconds of training, summed over resumes
    lr_scale: float = 1.0  # halved at each recovery from divergence
    best_val_bpc: float | None = None
    val: dict[str, Any] = field(default_factory=dict)
    train_loss: float | None = None


@contextmanager
def _signal_flags(flags: dict[str, int]) -> Any:
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
    ) -> None:
        self.corpus, self.config, self.out, self.reporter = corpus, config, Path(out), reporter
        self.device = select_device(config.device)
        if config.precision == "bf16" and self.device.type != "cuda":
            raise ConfigError("--precision bf16 needs a CUDA device")
        train_ids, self.val_ids = split_train_val(corpus.ids, config.val_fraction)
        self.val_ids = self.val_ids[: config.eval_chars]
        self.batcher = StreamBatcher(
            train_ids, config.batch_size, config.seq_len, config.seed, reporter.message
        )
        self.char_lengths = token_char_lengths(corpus.tokenizer)

        torch.manual_seed(config.seed)
        self.model = CharRNN(model_config).to(self.device)
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
        self.progress = Progress()
        self.hidden: Hidden | None = None
        if resume is not None:
            self._restore(resume)

    # ------------------------------------------------------------------ schedule and length

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
        """Linear warm-up, then cosine decay to ``min_lr_ratio * lr`` over the decay horizon:
        ``--decay-steps`` if given, else the run's length in steps, else its length in time."""
        cfg = self.config
        base = cfg.lr * self.progress.lr_scale
        if step < cfg.warmup_steps:
            return base * (step + 1) / cfg.warmup_steps
        horizon = cfg.decay_steps or self.total_steps
        if horizon:
            frac = (step - cfg.warmup_steps) / max(1, horizon - cfg.warmup_steps)
        else:
            frac = self.progress.elapsed / (self.time_limit or DEFAULT_TIME)
        frac = min(1.0, max(0.0, frac))
        return base * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))

    def done(self) -> bool:
        total, limit = self.total_steps, self.time_limit
        return (total is not None and self.progress.step >= total) or (
            limit is not None and self.progress.elapsed >= limit
        )

    # ------------------------------------------------------------------ the loop

    def _autocast(self) -> Any:
        if self.config.precision == "bf16":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    def train_step(self) -> float | None:
        """One TBPTT window. Returns the loss, or None when the step was skipped as non-finite."""
        x_np, y_np, reset = self.batcher.batch(self.progress.step)
        x = torch.from_numpy(x_np).to(self.device)  # (B, T)
        y = torch.from_numpy(y_np).to(self.device)  # (B, T)
        if reset or self.hidden is None:
            self.hidden = self.model.init_hidden(x.shape[0], self.device)
        lr = self.lr_at(self.progress.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        with self._autocast():
            logits, hidden = self.model(x, self.hidden)  # (B, T, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        self.progress.step += 1
        self.optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if math.isfinite(loss_value):
            loss.backward()
            clip = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            if torch.isfinite(norm):
                self.optimizer.step()
                self.progress.optimizer_steps += 1
                self.hidden = detach_hidden(hidden)
                return loss_value
        # Non-finite: leave the weights alone and drop the (possibly poisoned) hidden state.
        self.progress.skipped_steps += 1
        self.hidden = None
        return None

    def evaluate(self) -> EvalResult | None:
        if len(self.val_ids) < 2:
            return None
        return evaluate_stream(self.model, self.val_ids, self.char_lengths, device=self.device)

    def run(self) -> dict[str, Any]:
        cfg = self.config
        self.reporter.start(self._info())
        # bad_in_a_row: consecutive non-finite steps. recovered: a recovery happened and no good step
        # has been checkpointed since, so another run of bad steps means the run has diverged.
        bad_in_a_row, recovered = 0, False
        pending_save = pending_eval = False  # deferred while a run of bad steps lasts
        window_start, window_tokens = time.perf_counter(), 0
        flags: dict[str, int] = {}
        # Signals become flags before the first save, so Ctrl-C can never land inside one.
        with _signal_flags(flags):
            if self.progress.step == 0:
                self.save(LATEST)  # claims the directory and gives divergence recovery a base
            clock = time.perf_counter()
            while True:
                prog = self.progress  # a recovery replaces it
                # Wall time, validation and saves included: --time 5m means five minutes on the clock.
                now = time.perf_counter()
                prog.elapsed, clock = prog.elapsed + now - clock, now
                if self.done():
                    break
                loss = self.train_step()
                window_tokens += self.batcher.batch_size * cfg.seq_len
                save_due = pending_save or prog.step % cfg.save_every == 0
                eval_due = (pending_eval or prog.step % cfg.eval_every == 0) and not self.done()
                stopping = bool(flags.get("signal")) or self.done()
                if (save_due or eval_due or stopping) and not self._finite():
                    # A finite step can still overflow the weights: never save those, recover at once.
                    if loss is not None:
                        prog.skipped_steps += 1
                    loss, bad_in_a_row = None, cfg.max_bad_steps - 1
                if loss is None:
                    bad_in_a_row += 1
                    if bad_in_a_row >= cfg.max_bad_steps:
                        if recovered:
                            raise DivergedError(
                                f"training diverged: {bad_in_a_row} non-finite steps in a row again after "
                                "restoring the last checkpoint with a lower learning rate"
                            )
                        self._recover()
                        bad_in_a_row, recovered = 0, True
                        pending_save = pending_eval = False
                        continue
                else:
                    bad_in_a_row = 0
                    ema = prog.train_loss
                    prog.train_loss = loss if ema is None else 0.95 * ema + 0.05 * loss
                    now = time.perf_counter()
                    stats = {
                        "loss": loss,
                        "bpc": loss / math.log(2),
                        "tok_per_s": window_tokens / max(now - window_start, 1e-9),
                        "lr": self.lr_at(prog.step),
                        "skipped": prog.skipped_steps,
                    }
                    if now - window_start > 2.0:
                        window_start, window_tokens = now, 0
                    self.reporter.progress(prog.step, self.total_steps, self.fraction_done(), stats)
                if flags.get("signal"):
                    self.save(LATEST)  # weights checked finite above
                    code = EXIT_SIGTERM if flags["signal"] == signal.SIGTERM else EXIT_SIGINT
                    raise Interrupted(f"interrupted at step {prog.step}; saved {self.out / LATEST}", code)
                if bad_in_a_row:
                    # No checkpoint in the middle of bad steps: latest/ must stay the last good state,
                    # or recovery would restore the trouble (and keep "recovering" forever).
                    pending_save, pending_eval = save_due, eval_due
                    continue
                pending_save = pending_eval = False
                if eval_due:
                    self._eval_and_save(force_latest=save_due)
                    recovered = False
                elif save_due:
                    self.save(LATEST)
                    recovered = False
            result = self._eval_and_save(force_latest=True)
        prog = self.progress
        summary = {
            "step": prog.step,
            "elapsed": prog.elapsed,
            "skipped_steps": prog.skipped_steps,
            "val": result.to_dict() if result else None,
            "best_val_bpc": prog.best_val_bpc,
            "out": str(self.out),
        }
        self.reporter.finish(summary)
        return summary

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
            self.reporter.evaluated(prog.step, result, is_best)
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

    def _info(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "parameters": self.model.num_parameters(),
            "train_tokens": len(self.batcher.data),
            "val_tokens": len(self.val_ids),
            "vocab": self.corpus.tokenizer.vocab_size,
            "batch_size": self.batcher.batch_size,
            "steps": self.total_steps,
            "time_limit": self.time_limit,
            "default_length": self.total_steps is None and self.config.time_limit is None,
            "start_step": self.progress.step,
            "out": str(self.out),
        }

    def save(self, which: str) -> None:
        prog = self.progress
        meta = {
            "charnn_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "train": self.config.to_dict(),
            "progress": {k: v for k, v in vars(prog).items()},
            "corpus": {
                "sources": self.corpus.sources,
                "sha256": self.corpus.sha256,
                "tokens": int(len(self.corpus.ids)),
                "chars": self.corpus.chars,
            },
            "optimizer": {"param_groups": [
                {k: v for k, v in g.items() if k != "params"}
                for g in self.optimizer.state_dict()["param_groups"]
            ]},
        }
        save_checkpoint(self.out / which, self.model, self.corpus.tokenizer, meta, self._train_state())

    def _train_state(self) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {"rng.cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            for i, state in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = state
        for name, tensor in (hidden_tensors(self.hidden) if self.hidden is not None else {}).items():
            tensors[f"hidden.{name}"] = tensor
        for idx, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value)
        return tensors

    def _restore(self, ckpt: Checkpoint) -> None:
        if ckpt.config != self.model.config:
            raise ConfigError("checkpoint model config differs from this run's")
        try:
            self._restore_state(ckpt)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            # Checksums passed, so this is a checkpoint from another tool or version: refuse it.
            raise CheckpointError(f"{ckpt.path}: training state cannot be resumed ({exc})") from None

    def _restore_state(self, ckpt: Checkpoint) -> None:
        meta = ckpt.meta
        self.model.load_state_dict(ckpt.torch_weights(), strict=False)  # tied head.weight is not stored
        tensors = ckpt.train_state()
        optim_state: dict[int, dict[str, torch.Tensor]] = {}
        hidden: dict[str, torch.Tensor] = {}
        for name, tensor in tensors.items():
            kind, _, rest = name.partition(".")
            if kind == "optim":
                idx, _, key = rest.partition(".")
                optim_state.setdefault(int(idx), {})[key] = tensor
            elif kind == "hidden":
                hidden[rest] = tensor.to(self.device)
        groups = self.optimizer.state_dict()["param_groups"]
        for group, saved in zip(groups, meta["optimizer"]["param_groups"], strict=True):
            group.update(saved)
        self.optimizer.load_state_dict({"state": optim_state, "param_groups": groups})
        self.hidden = hidden_from_tensors(self.model.config.cell, hidden) if hidden else None
        torch.set_rng_state(tensors["rng.cpu"])
        if torch.cuda.is_available():
            states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)
        self.progress = Progress(**meta["progress"])


def check_resume_corpus(ckpt: Checkpoint, corpus: Corpus) -> None:
    saved = ckpt.meta.get("corpus", {}).get("sha256")
    if saved and saved != corpus.sha256:
        raise DataError("the corpus differs from the one this run trained on (sha256 mismatch)")
