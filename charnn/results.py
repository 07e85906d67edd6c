"""The rows that ``charnn sample``, ``eval``, ``score`` and ``runs`` print, as typed records.

:mod:`charnn.app` and :mod:`charnn.run_catalog` build them, :mod:`charnn.cli` prints them: ``--json``
writes :meth:`~charnn.jsonrecord.JsonRecord.to_json` as one line, and the plain text is formatted
from the same fields. Field order is the key order of the JSON line. No torch import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from charnn.checkpoint_meta import MODEL_CONFIG, TRAIN_CONFIG, CorpusRecord, Lineage, RunRecord
from charnn.config import ModelConfig, TrainConfig
from charnn.jsonrecord import (
    FLAG,
    MEASURE,
    REAL,
    TEXT,
    WHOLE,
    JsonRecord,
    item,
    list_of,
    mapping_of,
    optional,
    record,
)


@dataclass(frozen=True, kw_only=True)
class SampleRow(JsonRecord):
    """One sample (``sample --json``); ``line`` is the prompt's line number under ``--prompts``."""

    OMIT_NONE = True
    line: int | None = item(optional(WHOLE), default=None)
    sample: int = item(WHOLE)  # which of --num-samples
    seed: int = item(WHOLE)
    prime: str = item(TEXT)
    text: str = item(TEXT)  # generated after the prime
    logprob: float = item(REAL)  # natural log of the text's probability under the model
    chars: int = item(WHOLE)
    stopped_by: str = item(TEXT)  # what ended it: "length" or "stop"

    def json_line(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False)


@dataclass(frozen=True, kw_only=True)
class EvalRow(JsonRecord):
    """One checkpoint's numbers on a text (``eval``)."""

    OMIT_NONE = True

    loss: float = item(REAL)  # nats per token
    bpc: float = item(REAL)  # bits per character of the text
    bpt: float = item(REAL)  # bits per token
    tokens: int = item(WHOLE)
    chars: int = item(WHOLE)
    tokenizer: str = item(TEXT)
    checkpoint: str = item(TEXT)
    adaptive: bool | None = item(optional(FLAG), default=None)  # --adapt's row: the model learned as it read

    def text(self, with_checkpoint: bool) -> str:
        where = f"  checkpoint {self.checkpoint}" if with_checkpoint else ""
        mode = "  (adaptive)" if self.adaptive else ""
        return (
            f"bpc {self.bpc:.4f}  bpt {self.bpt:.4f}  loss {self.loss:.4f}  chars {self.chars}  "
            f"tokens {self.tokens}{where}{mode}"
        )


@dataclass(frozen=True, kw_only=True)
class ScoreRow(JsonRecord):
    """One scored line, or one whole input with ``--whole`` (then ``line`` is absent)."""

    OMIT_NONE = True
    source: str = item(TEXT)  # the file ("<stdin>" for -)
    line: int | None = item(optional(WHOLE), default=None)
    text: str = item(TEXT)
    logprob: float = item(REAL)
    bpc: float = item(REAL)
    bpt: float = item(REAL)
    chars: int = item(WHOLE)
    tokens: int = item(WHOLE)
    adaptive: bool | None = item(optional(FLAG), default=None)  # scored by a model learning line by line

    def text_line(self) -> str:
        return f"{self.logprob:.4f}\t{self.bpc:.4f}\t{self.text}"


@dataclass(frozen=True)
class TokenizerSummary(JsonRecord):
    """A tokenizer's kind and size (never its vocabulary); ``info`` adds what is set of the rest."""

    OMIT_NONE = True
    kind: str = item(TEXT)
    vocab_size: int = item(WHOLE)
    unk: int | None = item(optional(WHOLE), default=None)  # rare characters the unknown symbol stands for
    normalize: str | None = item(optional(TEXT), default=None)  # Unicode normalisation (nfc, nfkc)


@dataclass(frozen=True, kw_only=True)
class RunRow(JsonRecord):
    """One run under a directory (``runs``), from its latest checkpoint's metadata."""

    name: str = item(TEXT)  # relative to the directory listed
    path: str = item(TEXT)
    best_val_bpc: float | None = item(optional(REAL), default=None)
    steps: int | None = item(optional(WHOLE), default=None)
    trained_seconds: float | None = item(optional(REAL), default=None)
    cell: str = item(TEXT)
    layers: int = item(WHOLE)
    hidden: int = item(WHOLE)
    parameters: int = item(WHOLE)
    tokenizer: TokenizerSummary = item(record(TokenizerSummary))
    corpus: list[str] = item(list_of(TEXT), default_factory=list)  # its sources
    date: str | None = item(optional(TEXT), default=None)  # when its latest checkpoint was written
    stopped_reason: str | None = item(optional(TEXT), default=None)


@dataclass(frozen=True, kw_only=True)
class InfoRow(JsonRecord):
    """What a checkpoint holds (``info``): numbers as numbers, the model config as an object, the
    tokenizer's kind and size; the training fields are null for a checkpoint saved outside training."""

    path: str = item(TEXT)
    format: str = item(TEXT)
    version: int = item(WHOLE)
    model: ModelConfig = item(MODEL_CONFIG)
    parameters: int = item(WHOLE)
    tokenizer: TokenizerSummary = item(record(TokenizerSummary))
    step: int | None = item(optional(WHOLE), default=None)
    optimizer_steps: int | None = item(optional(WHOLE), default=None)
    skipped_steps: int | None = item(optional(WHOLE), default=None)
    trained_seconds: float | None = item(optional(REAL), default=None)
    tokens_seen: int | None = item(optional(WHOLE), default=None)
    chars_seen: int | None = item(optional(WHOLE), default=None)
    val: dict[str, float | None] | None = item(
        optional(mapping_of(MEASURE)), default=None
    )  # the last validation
    val_bpc: float | None = item(optional(REAL), default=None)
    best_val_bpc: float | None = item(optional(REAL), default=None)
    stopped_reason: str | None = item(optional(TEXT), default=None)
    train: TrainConfig | None = item(optional(TRAIN_CONFIG), default=None)
    corpus: CorpusRecord | None = item(optional(record(CorpusRecord)), default=None)
    run: RunRecord | None = item(optional(record(RunRecord)), default=None)
    parent: Lineage | None = item(
        optional(record(Lineage)), default=None
    )  # where --init-from's weights came from
    charnn_version: str | None = item(optional(TEXT), default=None)
    created: str | None = item(optional(TEXT), default=None)
    val_bpt: float | None = item(optional(REAL), default=None)  # bits per token beside bits per character
    best_averaged: bool = item(FLAG, default=False)  # best_val_bpc is the weight average's (--average)

    def to_json(self) -> dict[str, Any]:
        # The metadata's own records keep meta.json's (sorted) key order, as info has always shown them.
        nested = ("model", "train", "corpus", "run", "parent")
        out = super().to_json()
        return {
            k: dict(sorted(v.items())) if k in nested and isinstance(v, dict) else v for k, v in out.items()
        }
