"""Checkpoint keeping for a training run: save, restore, recover, save what we can.

One :class:`Checkpointer` per run, over the plan's one :class:`~charnn.rundir.RunDir` (whose lock
the run holds from before its first save to after its last; each save re-enters it). What a
checkpoint holds is :mod:`charnn.checkpoint`'s business and where it lives :mod:`charnn.rundir`'s;
this module decides what goes in and comes out, and which rank writes: every rank takes part in
a save (the carried hidden state is gathered from all of them), rank 0 alone writes. The weight
average (``--average``, :class:`~charnn.averaging.WeightAverager`) is part of the state it keeps:
saved in train_state beside the optimizer's moments, restored and checked with them.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch

from charnn.averaging import WeightAverager
from charnn.checkpoint import (
    LATEST,
    Checkpoint,
    Counters,
    averaged_weights,
    encode_checkpoint,
    load_checkpoint,
    pack_train_state,
    restore_train_state,
    training_meta,
)
from charnn.checkpoint_meta import CorpusRecord, RunRecord
from charnn.metrics_rows import ThreadsRecord

if TYPE_CHECKING:
    from charnn.evaluate import EvalResult
    from charnn.model import CharRNN, Hidden
    from charnn.run_plan import RunPlan


def all_finite(model: torch.nn.Module) -> bool:
    """Whether every weight is finite (one device sync; checked only before saves)."""
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())


class Checkpointer:
    """Saves and restores one run's training state: weights, optimizer, progress, carried hidden
    state and RNG, in ``latest/`` and ``best/`` of the plan's run directory.

    ``saved_step`` is the step of the last save (or of the checkpoint the run started from):
    after an unexpected failure, only progress beyond it is worth saving.
    """

    def __init__(
        self,
        plan: RunPlan,
        model: CharRNN,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        batch_size: int,
    ) -> None:
        self.plan, self.rundir, self.group = plan, plan.rundir, plan.group
        self.model, self.optimizer, self.device, self.batch_size = model, optimizer, device, batch_size
        # --average's running average: the trainer folds steps into it and validates it; it is
        # kept here because it is part of the state a checkpoint saves and restores.
        self.averager = WeightAverager.of(plan.train)
        self.saved_step = -1
        from charnn.metrics import invocation

        # How this run (or its latest resumption) was started: command line, versions, device,
        # and torch's CPU threads with how they were chosen (charnn info shows them).
        threads = ThreadsRecord(**plan.threads.to_dict()) if plan.threads is not None else None
        self.run_meta = RunRecord(
            **(plan.invocation or invocation()).to_fields(), device=str(device), threads=threads
        )

    def start(self) -> tuple[Counters, Hidden | None]:
        """Where the run starts: the plan's checkpoint when resuming, else step 0."""
        if self.plan.resume is None:
            return Counters(), None
        return self.restore(self.plan.resume)

    def save(
        self, which: str, progress: Counters, hidden: Hidden | None, averaged: EvalResult | None = None
    ) -> None:
        """Write ``which`` (latest/ or best/) atomically. Every rank calls it; rank 0 writes.
        ``averaged``: write the weight average instead of the raw weights (best/, when the
        average validated better), with its validation as the checkpoint's ``progress.val``."""
        hidden = None if hidden is None else self.group.gather_hidden(hidden)  # all ranks
        self.saved_step = progress.step
        if not self.group.is_writer:
            return
        if averaged is not None:
            progress = dataclasses.replace(progress, val={**averaged.to_dict(), "step": progress.step})
        plan = self.plan
        corpus = CorpusRecord(
            plan.corpus.sources, plan.corpus.sha256, int(len(plan.corpus.ids)), plan.corpus.chars
        )
        meta = training_meta(
            plan.train, progress, corpus, self.optimizer, self.run_meta, self.group.world_size, plan.parent
        )
        state = pack_train_state(self.optimizer, hidden, self.averager.state())
        with self.averager.swapped_in(self.model) if averaged is not None else nullcontext():
            files = encode_checkpoint(self.model, plan.corpus.tokenizer, meta, state)
        self.rundir.write(which, files)

    def restore(self, ckpt: Checkpoint) -> tuple[Counters, Hidden | None]:
        """Load a checkpoint's state into the model and optimizer; its progress and this rank's
        streams of its hidden state. Samples of later steps are dropped: they will be taken again."""
        self.group.check_resume(ckpt.meta.processes)
        streams = self.batch_size * self.group.world_size  # a saved hidden state holds every rank's
        progress, hidden = restore_train_state(ckpt, self.model, self.optimizer, self.device, streams)
        self.averager.load(self.model, averaged_weights(ckpt), progress.average_updates, str(ckpt.path))
        self.saved_step = progress.step
        self.forget_samples_after(progress.step)
        return progress, self.group.own_hidden(hidden, self.batch_size)

    def recover(self, now: Counters) -> tuple[Counters, Hidden | None]:
        """Back to latest/ after a run of non-finite steps, at half the learning rate. The steps
        since the checkpoint are replayed; the counts of skipped steps and time spent are facts
        about this run and are not rolled back."""
        progress, hidden = self.restore(load_checkpoint(self.rundir.path, prefer=LATEST))
        progress.lr_scale = now.lr_scale * 0.5
        progress.skipped_steps = now.skipped_steps
        progress.elapsed = now.elapsed
        return progress, hidden

    def save_what_we_can(self, progress: Counters, hidden: Hidden | None, say: Callable[[str], None]) -> None:
        """After an unexpected failure: keep the progress since the last save, if it is sound.
        Not when distributed: a save gathers from every rank, and the others may be gone."""
        if self.group.active:
            return
        try:
            if progress.step > self.saved_step and all_finite(self.model):
                self.save(LATEST, progress, hidden)
                say(f"saved {self.rundir.path / LATEST} at step {progress.step} before stopping")
        except Exception:  # the original failure is what the user must see
            pass

    def after_lost_peer(self, progress: Counters, between_steps: bool) -> str:
        """After another rank died: keep this step when the loss came between steps (rank 0's
        weights and optimizer are every rank's; the other ranks' carried hidden states are
        gone, so the resumed run starts its streams afresh), and say how to go on."""
        saved = ""
        if self.group.is_writer and between_steps and progress.step != self.saved_step:
            try:
                if all_finite(self.model):
                    self.save(LATEST, progress, None)  # gathering the hidden state would need the lost rank
                    saved = " (saved now, without the ranks' carried hidden state)"
            except Exception:  # the lost rank is what the user must hear about
                pass
        out = self.rundir.path
        return (
            f"another process of this torchrun run stopped (killed, or failed: see its output); "
            f"{out / LATEST} holds step {self.saved_step}{saved}; continue with "
            f"torchrun ... charnn train --resume {shlex.quote(str(out))} "
            f"(the same number of processes)"
        )

    def forget_samples_after(self, step: int) -> None:
        """Drop training samples of steps after ``step`` from samples.txt (rank 0 writes it)."""
        if self.group.is_writer:
            self.rundir.trim_samples(step)

    def append_sample(self, step: int, text: str, note: str) -> None:
        if self.group.is_writer:
            self.rundir.append_sample(step, text, note)
