"""Validated configuration dataclasses (no torch import).

Each dataclass checks its own values in ``__post_init__`` and raises
:class:`~charnn.errors.ConfigError` (exit 2) with a one-line message, so the
library refuses impossible settings whether it is driven by the CLI or by code.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from charnn.errors import ConfigError

CELLS = ("lstm", "gru", "rnn")
GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # gate blocks per layer in torch.nn's weight layout
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16")
TOKENIZERS = ("char", "bpe", "unigram", "sentencepiece")  # sentencepiece: the old name for unigram
NORMALIZE = ("none", "nfc", "nfkc")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the network; stored in every checkpoint."""

    vocab_size: int
    cell: str = "lstm"
    layers: int = 2
    hidden: int = 256
    embed: int = 64
    dropout: float = 0.0
    tie_weights: bool = False

    def __post_init__(self) -> None:
        _check(self.vocab_size >= 1, f"vocab_size must be >= 1, got {self.vocab_size}")
        _check(self.cell in CELLS, f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        _check(self.layers >= 1, f"--layers must be >= 1, got {self.layers}")
        _check(self.hidden >= 1, f"--hidden must be >= 1, got {self.hidden}")
        _check(self.embed >= 1, f"--embed must be >= 1, got {self.embed}")
        _check(0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), got {self.dropout}")
        _check(
            not self.tie_weights or self.embed == self.hidden,
            f"--tie-weights needs --embed equal to --hidden (got {self.embed} and {self.hidden})",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**_known_fields(cls, data))


@dataclass(frozen=True)
class TokenizerConfig:
    """How a new run builds its tokenizer (``--tokenizer-from`` reuses a checkpoint's instead)."""

    kind: str = "char"
    vocab_size: int = 2000  # bpe / unigram: pieces, byte-fallback pieces included
    max_vocab: int | None = None  # char: the most frequent characters + one unknown symbol
    min_char_count: int | None = None  # char: rarer characters become the unknown symbol
    normalize: str | None = None  # None, "nfc" or "nfkc"
    sample_sentences: int = 200_000  # bpe / unigram: lines SentencePiece samples to train on
    seed: int = 0  # the sample's seed
    source: str | None = None  # --tokenizer-from: a checkpoint whose tokenizer to reuse

    def __post_init__(self) -> None:
        _check(self.kind in TOKENIZERS, f"--tokenizer must be one of char, bpe, unigram, got {self.kind!r}")
        if self.kind == "sentencepiece":
            object.__setattr__(self, "kind", "unigram")
        if self.normalize == "none":
            object.__setattr__(self, "normalize", None)
        _check(
            self.normalize in (None, "nfc", "nfkc"),
            f"--normalize must be one of {', '.join(NORMALIZE)}, got {self.normalize!r}",
        )
        _check(self.vocab_size >= 8, f"--vocab-size must be >= 8, got {self.vocab_size}")
        _check(
            self.max_vocab is None or self.max_vocab >= 2, f"--max-vocab must be >= 2, got {self.max_vocab}"
        )
        _check(
            self.min_char_count is None or self.min_char_count >= 1,
            f"--min-char-count must be >= 1, got {self.min_char_count}",
        )
        _check(
            self.kind == "char" or (self.max_vocab is None and self.min_char_count is None),
            "--max-vocab and --min-char-count apply to --tokenizer char (subwords use --vocab-size)",
        )
        _check(self.sample_sentences >= 1, f"sample_sentences must be >= 1, got {self.sample_sentences}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    """Everything about how a run trains; stored in checkpoints for exact resume."""

    batch_size: int = 16
    seq_len: int = 128
    lr: float = 5e-3
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    steps: int | None = None
    epochs: float | None = None
    time_limit: float | None = None  # seconds
    decay_steps: int | None = None
    eval_every: int = 250
    eval_chars: int = 200_000
    save_every: int = 500
    val_fraction: float = 0.05
    seed: int = 1337
    device: str = "auto"
    precision: str = "fp32"
    max_bad_steps: int = 10
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        _check(self.seq_len >= 1, f"--seq-len must be >= 1, got {self.seq_len}")
        _check(self.lr > 0, f"--lr must be > 0, got {self.lr}")
        _check(0.0 <= self.min_lr_ratio <= 1.0, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _check(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        _check(self.warmup_steps >= 0, f"--warmup must be >= 0, got {self.warmup_steps}")
        _check(self.grad_clip >= 0, f"--grad-clip must be >= 0 (0 turns it off), got {self.grad_clip}")
        _check(self.steps is None or self.steps >= 1, f"--steps must be >= 1, got {self.steps}")
        _check(self.epochs is None or self.epochs > 0, f"--epochs must be > 0, got {self.epochs}")
        _check(
            self.time_limit is None or self.time_limit > 0, f"--time must be > 0, got {self.time_limit}"
        )
        _check(
            self.decay_steps is None or self.decay_steps >= 1,
            f"--decay-steps must be >= 1, got {self.decay_steps}",
        )
        _check(self.eval_every >= 1, f"--eval-every must be >= 1, got {self.eval_every}")
        _check(self.eval_chars >= 1, f"--eval-chars must be >= 1, got {self.eval_chars}")
        _check(self.save_every >= 1, f"--save-every must be >= 1, got {self.save_every}")
        _check(
            0.0 <= self.val_fraction < 1.0, f"--val-fraction must be in [0, 1), got {self.val_fraction}"
        )
        _check(self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        _check(
            self.precision in PRECISIONS,
            f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
        )
        _check(self.max_bad_steps >= 1, f"--max-bad-steps must be >= 1, got {self.max_bad_steps}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return cls(**_known_fields(cls, data))

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class SampleConfig:
    """How to decode: one of sampling (temperature/top-k/top-p), greedy, or beam search."""

    length: int = 500
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    beam: int | None = None
    length_penalty: float = 1.0
    num_samples: int = 1
    stops: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        _check(self.length >= 0, f"--length must be >= 0, got {self.length}")
        _check(self.temperature >= 0, f"--temp must be >= 0 (0 means greedy), got {self.temperature}")
        _check(self.top_k is None or self.top_k >= 1, f"--top-k must be >= 1, got {self.top_k}")
        _check(
            self.top_p is None or 0.0 < self.top_p <= 1.0, f"--top-p must be in (0, 1], got {self.top_p}"
        )
        _check(self.beam is None or self.beam >= 1, f"--beam must be >= 1, got {self.beam}")
        _check(self.num_samples >= 1, f"--num-samples must be >= 1, got {self.num_samples}")
        _check(all(self.stops), "--stop strings must not be empty")
        if self.beam is not None:
            _check(
                self.num_samples <= self.beam,
                f"--num-samples {self.num_samples} needs --beam of at least that width "
                f"(beam search returns its {self.beam} best)",
            )


def _known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
    return dict(data)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Parse ``90s``, ``5m``, ``2h``, ``1.5h`` or a bare number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"cannot read duration {text!r}: use e.g. 90s, 5m, 2h")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    _check(seconds > 0, f"duration must be > 0, got {text!r}")
    return seconds
