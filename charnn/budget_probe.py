"""The budget's live measurement and its hook into a new run: time a few training steps of the
reference shape (on CUDA: of every candidate) and apply :func:`charnn.budget.choose` to the
options the user did not type.

The probe runs before the run's clock starts (like reading the corpus, it is start-up), on
random tokens, with the thread count the run will use; it costs about a second on a CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from charnn.budget import (
    MODEL_FIELDS,
    TRAIN_FIELDS,
    Budget,
    Candidate,
    Choice,
    Rates,
    Table,
    choose,
    load_table,
)
from charnn.config import ModelConfig, TrainConfig
from charnn.model import CharRNN, detach_hidden

PROBE_SECONDS = 0.6  # timed, after one untimed warm-up step
PROBE_SLICES = 3  # timed separately; the fastest counts
PROBE_VOCAB = 65  # tiny Shakespeare's: the table's unit


def step_rate(cand: Candidate, device: torch.device, seconds: float = PROBE_SECONDS) -> float:
    """Training chars/s of ``cand`` (forward, backward, AdamW step) on random tokens."""
    gen = torch.Generator().manual_seed(0)
    model = CharRNN(
        ModelConfig(vocab_size=PROBE_VOCAB, layers=cand.layers, hidden=cand.hidden, embed=cand.embed)
    ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, PROBE_VOCAB, (cand.batch_size, cand.seq_len + 1), generator=gen).to(device)
    hidden = None

    def step() -> None:
        nonlocal hidden
        logits, hidden = model(x[:, :-1], hidden)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hidden = detach_hidden(hidden)

    step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    rates = []
    for _ in range(PROBE_SLICES):
        start, steps = time.perf_counter(), 0
        while steps < 1 or time.perf_counter() - start < seconds / PROBE_SLICES:
            step()
            steps += 1
            sync()
        rates.append(steps * cand.tokens_per_step / (time.perf_counter() - start))
    # The fastest slice: a moment's disturbance (a compiler, a page-in) is not what the run will
    # see for minutes, while a lasting load slows every slice alike. One 0.6 s slice once read
    # 27k chars/s where another, minutes later on the same machine, read 53k, and chose another shape.
    return max(rates)


def measure(table: Table, device: torch.device) -> Rates:
    """The reference's speed on a CPU; every candidate's on CUDA."""
    if device.type == "cuda":
        cands = [c for c in table.candidates if "cuda" in c.devices]
        return Rates(per_candidate={c.name: step_rate(c, device, 0.3) for c in cands})
    return Rates(reference=step_rate(table.by_name(table.reference), device))


@dataclass(frozen=True)
class Applied:
    model: dict[str, Any]  # ModelConfig fields, the user's over the choice's
    config: TrainConfig
    choice: Choice


def apply_choice(
    typed_model: dict[str, Any],
    typed_train: dict[str, Any],
    config: TrainConfig,
    train_tokens: int,
    device: torch.device,
    rates: Rates | None = None,
) -> Applied:
    """Choose for the budget in ``config`` and overlay what the user typed (which always wins)."""
    table = load_table()
    length_given = any(config_value is not None for config_value in (config.steps, config.epochs))
    seconds = config.time_limit
    if seconds is None and not length_given:
        from charnn.trainer import DEFAULT_TIME

        seconds = DEFAULT_TIME
    budget = Budget(
        seconds=seconds,
        steps=config.steps,
        epochs=config.epochs,
        train_tokens=train_tokens,
        device=device.type,
    )
    if rates is None and seconds is not None:
        if config.threads is not None and device.type == "cpu":
            torch.set_num_threads(
                config.threads
            )  # a pinned count; else torch's own (the trainer then measures)
        rates = measure(table, device)
    choice = choose(table, budget, rates or Rates())
    model = {**{k: v for k, v in choice.model.items() if k in MODEL_FIELDS}, **typed_model}
    train = {k: v for k, v in choice.train.items() if k in TRAIN_FIELDS and k not in typed_train}
    return Applied(model, config.replace(**train), choice)
