"""The budget picks the model: which shape reaches the lowest validation bpc in the time (or steps,
or epochs) the run has, from a measured table and the throughput measured at start. Torch-free.

The table (``charnn/assets/budget_table.json``, made by ``benchmarks/budget_table.py``) holds,
per candidate shape, a curve of validation bpc against training tokens, ``bpc(N) = a + b *
(N / 1M) ** -c``, fitted to runs at fixed token budgets (deterministic for a seed, so the
machine's load does not enter), and its training speed relative to a reference shape, measured
side by side. At start charnn measures the reference's live speed (on CUDA: every candidate's,
since the CPU's ratios do not carry over), turns the budget into tokens per candidate and takes
the lowest predicted bpc. Shapes beyond the measured ones carry a curve from a joint fit over all
shapes (bpc from parameters and tokens) and are marked as extrapolated, as are budgets past the
largest measured token count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from charnn.errors import ConfigError
from charnn.regularisation import REGULARISE_FROM, regularisation_for

# Options that make a shape: typing any of them keeps today's defaults and skips the choice.
SHAPE_OPTIONS = ("layers", "hidden", "embed", "cell", "tie_weights")
# What a choice sets, per config: ModelConfig fields, TrainConfig fields. Typed options win.
MODEL_FIELDS = ("layers", "hidden", "embed", "dropout")
TRAIN_FIELDS = ("seq_len", "batch_size", "lr")
# Dropout once a run repeats its text a few times (epochs, dropout): not measured; a stated rule.
# From REGULARISE_FROM passes charnn.regularisation's measured plan decides (and drops dropout).
DROPOUT_BY_EPOCHS = ((4.0, 0.1),)


@dataclass(frozen=True)
class Candidate:
    """One shape the chooser may pick, with its quality curve and its speed."""

    name: str
    layers: int
    hidden: int
    embed: int
    seq_len: int
    batch_size: int
    lr: float
    speed: float  # CPU training chars/s relative to the reference shape
    a: float  # bpc(N) = a + b * (N / 1e6) ** -c
    b: float
    c: float
    max_tokens: float  # the largest token budget the curve was measured at; 0 = not measured
    devices: tuple[str, ...] = ("cpu", "cuda")

    @property
    def measured(self) -> bool:
        return self.max_tokens > 0

    def predict(self, tokens: float) -> float:
        return self.a + self.b * (max(tokens, 1.0) / 1e6) ** -self.c

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size


@dataclass(frozen=True)
class Table:
    reference: str
    candidates: tuple[Candidate, ...]
    source: str = ""  # how and where it was measured

    def by_name(self, name: str) -> Candidate:
        for c in self.candidates:
            if c.name == name:
                return c
        raise KeyError(name)


@dataclass(frozen=True)
class Budget:
    """What a run may spend. Any of the three may bound it; the first reached ends the run."""

    seconds: float | None = None
    steps: int | None = None
    epochs: float | None = None
    train_tokens: int = 1  # tokens in one pass over the training split
    device: str = "cpu"


@dataclass(frozen=True)
class Rates:
    """Live training speed: the reference's chars/s (CPU), or each candidate's (CUDA)."""

    reference: float | None = None
    per_candidate: dict[str, float] = field(default_factory=dict)

    def of(self, candidate: Candidate) -> float | None:
        if candidate.name in self.per_candidate:
            return self.per_candidate[candidate.name]
        return None if self.reference is None else self.reference * candidate.speed


@dataclass(frozen=True)
class Choice:
    """What the budget chose and why; stored in the run's metadata and metrics.jsonl."""

    shape: str
    model: dict[str, Any]  # ModelConfig fields the choice sets
    train: dict[str, Any]  # TrainConfig fields the choice sets
    tokens: float  # training tokens the budget buys for this shape
    chars_per_s: float | None  # the speed that conversion assumed (None: a token budget)
    predicted_bpc: float
    extrapolated: bool  # outside the measured table (shape or token count)
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "model": self.model,
            "train": self.train,
            "tokens": int(self.tokens),
            "chars_per_s": None if self.chars_per_s is None else round(self.chars_per_s),
            "predicted_bpc": round(self.predicted_bpc, 4),
            "extrapolated": self.extrapolated,
            "reason": self.reason,
        }


def load_table(data: dict[str, Any] | None = None) -> Table:
    """The packaged table, or one given as data (tests, the regenerating script)."""
    if data is None:
        text = resources.files("charnn").joinpath("assets/budget_table.json").read_text("utf-8")
        data = json.loads(text)
    cands = tuple(
        Candidate(
            name=str(c["name"]),
            layers=int(c["layers"]),
            hidden=int(c["hidden"]),
            embed=int(c["embed"]),
            seq_len=int(c["seq_len"]),
            batch_size=int(c["batch_size"]),
            lr=float(c["lr"]),
            speed=float(c["speed"]),
            a=float(c["a"]),
            b=float(c["b"]),
            c=float(c["c"]),
            max_tokens=float(c.get("max_tokens", 0)),
            devices=tuple(c.get("devices", ("cpu", "cuda"))),
        )
        for c in data["candidates"]
    )
    return Table(reference=str(data["reference"]), candidates=cands, source=str(data.get("source", "")))


def tokens_for(candidate: Candidate, budget: Budget, rate: float | None) -> float | None:
    """Training tokens the budget buys for this candidate: the least of its bounds."""
    bounds = []
    if budget.seconds is not None:
        if rate is None:
            return None
        bounds.append(budget.seconds * rate)
    if budget.steps is not None:
        bounds.append(float(budget.steps * candidate.tokens_per_step))
    if budget.epochs is not None:
        bounds.append(budget.epochs * budget.train_tokens)
    return min(bounds) if bounds else None


def eligible(table: Table, budget: Budget, rates: Rates) -> list[Candidate]:
    """The candidates for this device. A budget in tokens alone (no time) takes only measured
    shapes: with no clock to bound it, a shape the table merely extrapolates to could take hours."""
    device = "cuda" if budget.device == "cuda" else "cpu"
    cands = [c for c in table.candidates if device in c.devices]
    if budget.seconds is None:
        cands = [c for c in cands if c.measured]
    if device == "cuda":
        cands = [c for c in cands if c.name in rates.per_candidate] or cands
    return cands


def dropout_for(epochs: float) -> float:
    if epochs >= REGULARISE_FROM:
        return regularisation_for(epochs).dropout
    for at_least, p in DROPOUT_BY_EPOCHS:
        if epochs >= at_least:
            return p
    return 0.0


def choose(table: Table, budget: Budget, rates: Rates) -> Choice:
    """The candidate with the lowest predicted bpc for this budget (ties: the smaller model)."""
    best: tuple[float, float, Candidate] | None = None
    for cand in eligible(table, budget, rates):
        tokens = tokens_for(cand, budget, rates.of(cand))
        if tokens is None:
            continue
        pred = cand.predict(tokens)
        if best is None or pred < best[0] - 1e-9:
            best = (pred, tokens, cand)
    if best is None:
        raise ConfigError("no model shape fits this budget: give --layers/--hidden")
    pred, tokens, cand = best
    rate = rates.of(cand) if budget.seconds is not None else None
    epochs = tokens / max(1, budget.train_tokens)
    dropout = dropout_for(epochs)
    extrapolated = not cand.measured or tokens > cand.max_tokens * 1.5
    model = {"layers": cand.layers, "hidden": cand.hidden, "embed": cand.embed, "dropout": dropout}
    train = {"seq_len": cand.seq_len, "batch_size": cand.batch_size, "lr": cand.lr}
    reason = describe(cand, budget, tokens, rate, dropout, epochs, extrapolated)
    return Choice(cand.name, model, train, tokens, rate, pred, extrapolated, reason)


def describe(
    cand: Candidate,
    budget: Budget,
    tokens: float,
    rate: float | None,
    dropout: float,
    epochs: float,
    extrapolated: bool,
) -> str:
    """``5m at ~24k chars/s ≈ 7M characters → 1x512 LSTM, seq 64``."""
    if budget.seconds is not None and rate is not None:
        what = f"{duration(budget.seconds)} at ~{count(rate)} chars/s"
    elif budget.steps is not None:
        what = f"{budget.steps:,} steps"
    else:
        what = f"{budget.epochs:g} epochs"
    text = f"{what} ≈ {count(tokens)} characters ({epochs:.2g} epochs) → {cand.name} LSTM, seq {cand.seq_len}"
    text += f", batch {cand.batch_size}, lr {cand.lr:g}"
    if dropout:
        text += f", dropout {dropout:g}"
    if extrapolated:
        text += " (extrapolated beyond the measured table)"
    return text


def count(n: float) -> str:
    """4.2M, 24k, 512."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            v = n / size
            return f"{v:.1f}{unit}" if v < 10 else f"{v:.0f}{unit}"
    return f"{n:.0f}"


def duration(seconds: float) -> str:
    if seconds >= 3600:
        h, m = divmod(round(seconds / 60), 60)
        return f"{h}h{m:02d}m" if m else f"{h}h"
    if seconds >= 60:
        m, s = divmod(round(seconds), 60)
        return f"{m}m{s:02d}s" if s else f"{m}m"
    return f"{seconds:g}s"


def applies(
    typed_model: dict[str, Any], tokenizer_kind: str, fine_tune: bool, distributed: bool
) -> str | None:
    """Why the budget does not choose here (None: it does)."""
    typed = [f for f in SHAPE_OPTIONS if f in typed_model]
    if typed:
        return "shape options given"
    if tokenizer_kind != "char":
        return "the table is measured for characters"
    if fine_tune:
        return "a fine-tuned run keeps its parent's shape"
    if distributed:
        return "under torchrun every rank would measure its own speed"
    return None
