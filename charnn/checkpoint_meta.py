"""A checkpoint's ``meta.json`` as typed records: the one writer and the one validating reader.

The file is one JSON object (keys sorted, written by :func:`encode_meta`)::

    format, version, checksum     what it is, and a sha256 of the rest (edits and damage show)
    model                         ModelConfig: the network's shape
    tokenizer                     the tokenizer, whole (a SentencePiece model inside it)
    files                         sha256 of each tensor file
    charnn_version, created       who wrote it, when (UTC)
    train, progress, corpus,      what resuming needs: the run's TrainConfig, its counters, the
    optimizer, world_size         corpus it trains on, AdamW's hyperparameters, ranks
    run, parent                   how the run was started; where a fine-tuned run's weights came from

A checkpoint written outside training (tests, library callers) holds only the first four lines.
The field list, with what each field must hold, is generated into docs/checkpoint-format.md.

:func:`parse_meta` is the only reader: a checksum proves the file intact, not sane, so every field
is validated before anything uses it, and a forged value (``"corpus": 5`` with a valid checksum)
is a :class:`~charnn.errors.CheckpointError` (exit 3) for every command, never a crash later.
No torch import: ``charnn runs`` and ``charnn info`` read metadata without the weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charnn.config import ModelConfig, TrainConfig
from charnn.errors import CheckpointError, ConfigError
from charnn.jsonrecord import (
    FLAG,
    MEASURE,
    SCALAR,
    SHA256,
    TEXT,
    WHOLE,
    JsonRecord,
    Kind,
    RecordError,
    clip,
    item,
    list_of,
    mapping_of,
    optional,
    real,
    record,
    whole,
)
from charnn.metrics_rows import Invocation, ThreadsRecord
from charnn.rundir import FORMAT
from charnn.rundir import MARKER as META
from charnn.tokenizer import Tokenizer, tokenizer_from_dict

VERSION = 1


# ---------------------------------------------------------------------------- field kinds


def _model_config(data: Any, name: str) -> ModelConfig:
    """ModelConfig through its own validation (types, ranges, choices from the declarations)."""
    try:
        return ModelConfig.from_dict(data, stored_as=name)
    except (ConfigError, TypeError, ValueError) as exc:
        raise RecordError(f"bad model config ({exc})") from None


def _train_config(data: Any, name: str) -> TrainConfig:
    try:
        return TrainConfig.from_dict(data, stored_as=name)
    except (ConfigError, TypeError, ValueError) as exc:
        raise RecordError(f"bad train config ({exc})") from None


def _tokenizer(data: Any, name: str) -> Tokenizer:
    try:
        return tokenizer_from_dict(data)
    except CheckpointError as exc:
        raise RecordError(str(exc)) from None


def _mapping(value: Any) -> bool:
    return isinstance(value, dict)


MODEL_CONFIG = Kind("a mapping", _mapping, _model_config, lambda c: c.to_dict(), "`ModelConfig` fields")
TRAIN_CONFIG = Kind("a mapping", _mapping, _train_config, lambda c: c.to_dict(), "`TrainConfig` fields")
TOKENIZER = Kind("a mapping", _mapping, _tokenizer, lambda t: t.to_dict(), "the tokenizer (its `to_dict`)")


# ---------------------------------------------------------------------------- records


@dataclass
class Counters(JsonRecord):
    """Counters saved in every training checkpoint (mutable: the trainer advances them)."""

    step: int = item(WHOLE, default=0)  # batches consumed (including skipped ones)
    optimizer_steps: int = item(WHOLE, default=0)
    skipped_steps: int = item(WHOLE, default=0)
    elapsed: float = item(real(min=0), default=0.0)  # seconds of training, summed over resumes
    lr_scale: float = item(real(positive=True), default=1.0)  # halved at each recovery from divergence
    best_val_bpc: float | None = item(MEASURE, default=None)
    val: dict[str, float | None] = item(mapping_of(MEASURE), default_factory=dict)  # the last validation
    train_loss: float | None = item(MEASURE, default=None)
    tokens: int = item(WHOLE, default=0)  # tokens trained on (all steps, skipped ones included)
    chars: int = item(WHOLE, default=0)  # characters those tokens spell
    stale_evals: int = item(WHOLE, default=0)  # validations since the last improvement (early stopping)
    patience_best: float | None = item(MEASURE, default=None)  # what improvement is measured against
    stopped_reason: str | None = item(optional(TEXT), default=None)  # why the run ended early, when it did
    average_updates: int = item(
        WHOLE, default=0
    )  # optimizer steps folded into the weight average (--average)
    best_averaged: bool = item(FLAG, default=False)  # best_val_bpc (and best/) came from the averaged weights

    def to_dict(self) -> dict[str, Any]:
        return self.to_json()

    @classmethod
    def from_meta(cls, data: Any) -> Counters:
        """Counters from checkpoint metadata, every field checked (raises ValueError naming it)."""
        return cls.from_json(data, "progress")


@dataclass(frozen=True)
class CorpusRecord(JsonRecord):
    """The corpus a run trains on: what resume reads again, and the hash it must match."""

    OMIT_NONE = True
    sources: list[str] = item(list_of(TEXT))  # files as given ("-" for stdin)
    sha256: str = item(SHA256)  # of the encoded ids
    tokens: int | None = item(optional(WHOLE), default=None)
    chars: int | None = item(optional(WHOLE), default=None)


@dataclass(frozen=True)
class OptimizerRecord(JsonRecord):
    """AdamW's hyperparameters per parameter group (its moments are tensors in train_state)."""

    param_groups: list[dict[str, Any]] = item(list_of(mapping_of(SCALAR), non_empty=True))


@dataclass(frozen=True, kw_only=True)
class RunRecord(Invocation):
    """How a run (or its latest resumption) was started, and on which device."""

    device: str | None = item(optional(TEXT), default=None)
    threads: ThreadsRecord | None = item(optional(record(ThreadsRecord)), default=None)  # charnn.threads


@dataclass(frozen=True, kw_only=True)
class Lineage(JsonRecord):
    """Where a fine-tuned run's weights came from (``--init-from``)."""

    path: str = item(TEXT)
    step: int = item(WHOLE)
    model_sha256: str | None = item(optional(SHA256), default=None)
    corpus_sha256: str | None = item(optional(SHA256), default=None)
    vocab_size: int = item(whole(1))


@dataclass(frozen=True, kw_only=True)
class TrainingMeta(JsonRecord):
    """What a training checkpoint carries beyond the model and tokenizer (all absent otherwise)."""

    OMIT_NONE = True
    charnn_version: str | None = item(optional(TEXT), default=None)
    created: str | None = item(optional(TEXT), default=None)  # UTC, ISO 8601
    train: TrainConfig | None = item(optional(TRAIN_CONFIG), default=None)
    progress: Counters | None = item(optional(record(Counters)), default=None)
    corpus: CorpusRecord | None = item(optional(record(CorpusRecord)), default=None)
    optimizer: OptimizerRecord | None = item(optional(record(OptimizerRecord)), default=None)
    world_size: int | None = item(optional(whole(1)), default=None)  # data-parallel ranks
    run: RunRecord | None = item(optional(record(RunRecord)), default=None)
    parent: Lineage | None = item(optional(record(Lineage)), default=None)


@dataclass(frozen=True, kw_only=True)
class CheckpointMeta(TrainingMeta):
    """The whole of a validated meta.json (format, version and checksum are checked, not kept)."""

    model: ModelConfig = item(MODEL_CONFIG)
    tokenizer: Tokenizer = item(TOKENIZER)
    files: dict[str, str] = item(mapping_of(SHA256), default_factory=dict)  # file name -> sha256
    # Not stored: train options this charnn does not know (a newer one wrote them). Reading for
    # sampling or listing ignores them; resuming refuses, as it could not honour them.
    foreign_train: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.tokenizer.vocab_size != self.model.vocab_size:
            raise RecordError(
                f"tokenizer has {self.tokenizer.vocab_size} tokens but the model {self.model.vocab_size}"
            )

    @property
    def step(self) -> int:
        return self.progress.step if self.progress is not None else 0

    @property
    def processes(self) -> int:
        """Data-parallel ranks that wrote it (1 for checkpoints older than distributed training)."""
        return self.world_size or 1


@dataclass(frozen=True)
class ResumeMeta:
    """The records resuming needs, all present (see :func:`resume_meta`)."""

    train: TrainConfig
    progress: Counters
    corpus: CorpusRecord
    optimizer: OptimizerRecord


def resume_meta(meta: CheckpointMeta, where: Path) -> ResumeMeta:
    """The training records of ``meta``, or a CheckpointError naming the first one missing."""
    for name in ("train", "progress", "corpus", "optimizer"):
        if getattr(meta, name) is None:
            raise CheckpointError(f"{where}: cannot resume: the checkpoint has no {name} record")
    if meta.foreign_train:
        raise CheckpointError(
            f"{where}: cannot resume: trained with options this charnn does not know "
            f"({', '.join(meta.foreign_train)}); a newer charnn wrote it"
        )
    assert meta.train and meta.progress and meta.corpus and meta.optimizer  # for mypy: checked above
    progress = Counters.from_json(meta.progress.to_json())  # the trainer's own copy: it mutates it
    return ResumeMeta(meta.train, progress, meta.corpus, meta.optimizer)


# ---------------------------------------------------------------------------- bytes


def meta_checksum(data: dict[str, Any]) -> str:
    body = {k: v for k, v in data.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def encode_meta(meta: CheckpointMeta) -> bytes:
    """meta.json's bytes: the record, format and version, and the checksum over them."""
    data = meta.to_json()
    data.update(format=FORMAT, version=VERSION)
    data["checksum"] = meta_checksum(data)
    return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()


def parse_meta(raw: bytes, directory: Path) -> CheckpointMeta:
    """The validated metadata of the checkpoint in ``directory`` from meta.json's bytes."""
    where = directory / META
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError as exc:  # bad UTF-8, bad JSON, or a number of more than 4,300 digits
        raise CheckpointError(f"{where}: not valid JSON ({str(exc)[:200]})") from None
    except RecursionError:
        raise CheckpointError(f"{where}: not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{directory}: not a charnn checkpoint (format is not {FORMAT!r})")
    if data.get("version") != VERSION:
        raise CheckpointError(
            f"{directory}: checkpoint format version {clip(data.get('version'))}; "
            f"this charnn reads version {VERSION}"
        )
    if data.get("checksum") != meta_checksum(data):
        raise CheckpointError(f"{where}: checksum mismatch (the metadata was edited or corrupted)")
    train, foreign = data.get("train"), tuple[str, ...]()
    if isinstance(train, dict):
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        foreign = tuple(sorted(str(k) for k in train if k not in known))
        data = {**data, "train": {k: v for k, v in train.items() if k in known}}
    try:
        meta = CheckpointMeta.from_json(data)
        return dataclasses.replace(meta, foreign_train=foreign) if foreign else meta
    except RecordError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    except RecursionError:  # a forged tokenizer or config nested past Python's limit
        raise CheckpointError(f"{where}: nested too deeply") from None
