"""The thread policy of :mod:`charnn.threads` applied to torch: training's probe, eval's tuner.

Training measures on throwaway passes (forward and backward of the run's first batch, the
gradients dropped and the random state restored), so the run's weights depend only on the count
it then uses. Eval and score measure on their own first windows: they change nothing but the
last bits of the numbers they print.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from charnn.checkpoint import Checkpoint, train_config
from charnn.config import TrainConfig
from charnn.distributed import Group
from charnn.threads import (
    ThreadChoice,
    Tuner,
    candidates,
    choose,
    free_cores,
    saturated,
    situation,
    worth_measuring,
)

PROBE_SHARE = 0.05  # a timed run spends at most this share of its time measuring
WARM_STEPS = 16  # time steps of the batch a warm-up pass runs
CLOCK: Callable[[], float] = time.perf_counter  # what the probe times with (tests fake it)


def apply(choice: ThreadChoice) -> None:
    if choice.count is not None and choice.count != torch.get_num_threads():
        torch.set_num_threads(choice.count)


def probe_pass(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], str]:
    """One training pass without the update: forward, loss, backward, gradient norm. Returns
    a function that fingerprints its result (called outside the timing)."""
    model.zero_grad(set_to_none=True)
    hidden = model.init_hidden(x.shape[0], x.device)  # type: ignore[operator]
    logits, _ = model(x, hidden)  # (B, T, V)
    loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))

    def fingerprint() -> str:
        digest = hashlib.blake2b(digest_size=16)
        for t in (loss.detach(), norm.detach(), *(p.grad for p in model.parameters() if p.grad is not None)):
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    return fingerprint


def training_threads(
    model: torch.nn.Module,
    batch: tuple[np.ndarray, np.ndarray],
    pinned: int | None,
    resumed: int | None,
    device: torch.device,
    steps: int | None,
    seconds: float | None,
) -> ThreadChoice:
    """The count a training run uses (see :mod:`charnn.threads`), already set in torch."""
    clock = CLOCK
    x, y = (torch.from_numpy(a).to(device) for a in batch)  # (B, T) each
    cap = PROBE_SHARE * seconds if seconds is not None else float("inf")

    def measure(tuner: Tuner) -> None:
        was_training, begun = model.training, clock()
        model.train()
        with torch.random.fork_rng(devices=[]):  # dropout draws here must not shift the run's
            while not tuner.settled and clock() - begun < cap:
                # Warm-ups on the first few time steps only: under heavy load one pass of a
                # spinning thread team over the whole batch can take seconds.
                warm = tuner.warming
                xs, ys = (x[:, :WARM_STEPS], y[:, :WARM_STEPS]) if warm else (x, y)
                torch.set_num_threads(tuner.next_count())
                start = clock()
                fingerprint = probe_pass(model, xs, ys)
                tuner.record(
                    clock() - start, xs.numel() / x.numel(), None if warm else fingerprint()
                )  # per pass
        model.zero_grad(set_to_none=True)
        model.train(was_training)

    choice = choose(
        situation(torch.get_num_threads),
        pinned,
        resumed,
        device.type,
        worth_measuring(steps, seconds),
        measure,
    )
    apply(choice)
    return choice


def eval_tuner(pinned: int | None) -> Tuner | None:
    """For eval and score on the CPU: a tuner that measures on the first windows, or None when
    the count is already settled (``--threads``, ``OMP_NUM_THREADS``, one core) and set."""
    where = situation(torch.get_num_threads)
    if pinned is not None:
        torch.set_num_threads(pinned)
        return None
    if where.environment_threads is not None:
        return None
    counts = candidates(where.cores, where.load, where.processes)
    if len(counts) == 1 or saturated(where):
        torch.set_num_threads(free_cores(where.cores, where.load, where.processes))
        return None
    return Tuner(counts)


def run_threads(
    model: torch.nn.Module,
    batcher: Any,
    config: TrainConfig,
    resume: Checkpoint | None,
    device: torch.device,
    length: Any,
    group: Group,
) -> ThreadChoice:
    """Training's hook: which count, from the options and the checkpoint; every rank of a
    ``torchrun`` run then takes rank 0's (they all measured, at once, as they will train)."""
    stored = train_config(resume).threads if resume is not None else None
    resumed = stored if stored is not None and config.threads == stored else None
    pinned = None if resumed is not None else config.threads
    inputs, targets, _ = batcher.batch(0)
    choice = training_threads(model, (inputs, targets), pinned, resumed, device, length.steps, length.seconds)
    if group.active and choice.count is not None:
        agreed = group.broadcast_floats([float(choice.count)], 1)
        if agreed is not None and int(agreed[0]) != choice.count:
            choice = dataclasses.replace(choice, count=int(agreed[0]), how=choice.how + " on rank 0")
            apply(choice)
    return choice
