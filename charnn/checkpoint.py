"""Checkpoints as data, never code: safetensors weights + JSON metadata, written atomically.

A checkpoint is a directory::

    meta.json                 format, version, model config, tokenizer, progress, metrics,
                              sha256 of each tensor file, and a checksum of itself
    model.safetensors         the network's weights
    train_state.safetensors   optimizer moments, RNG states, carried hidden state (resume only)

This module owns the format: what the files hold, how training state is packed into
them and unpacked, and the validation of every tensor on load. meta.json's fields are typed
records with one validating reader in :mod:`charnn.checkpoint_meta`. Where checkpoints live
and how one is replaced atomically is :mod:`charnn.rundir`'s job. Nothing is ever unpickled.

Loading and validation work on numpy arrays and never import torch, so ``charnn sample``
starts fast; the torch side (saving, building a model, resuming) converts validated arrays
to tensors and imports torch only there. Every path validates through ``load_checkpoint``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load

from charnn import __version__
from charnn.arch import TENSORS_PER_LAYER, hidden_shape, parameter_count, parameter_shapes, state_parts
from charnn.checkpoint_meta import (
    CheckpointMeta,
    CorpusRecord,
    Counters,
    Lineage,
    OptimizerRecord,
    ResumeMeta,
    RunRecord,
    TrainingMeta,
    encode_meta,
    meta_checksum,
    parse_meta,
    resume_meta,
)
from charnn.config import ModelConfig, TrainConfig
from charnn.errors import CharnnError, CheckpointError, ConfigError
from charnn.jsonrecord import clip as _clip
from charnn.jsonrecord import is_real as _is_real
from charnn.rundir import BEST, LATEST, RunDir, resolve_checkpoint
from charnn.rundir import MARKER as META
from charnn.tokenizer import Tokenizer

if TYPE_CHECKING:  # torch only where tensors are made: loading for sampling never imports it
    import torch

    from charnn.model import CharRNN, Hidden

__all__ = [
    "BEST",
    "LATEST",
    "META",
    "Checkpoint",
    "CheckpointMeta",
    "Counters",
    "TrainingMeta",
    "load_checkpoint",
    "load_meta",
    "save_checkpoint",
]

MAX_META_FILE = 64 << 20  # metadata is small JSON; a SentencePiece model inside it is well under this
MAX_TENSOR_FILE = 64 << 30  # bounds a forged size; real checkpoints of RNNs are far smaller
_meta_checksum = meta_checksum  # the name tests forge metadata with
MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_tensors(model: CharRNN) -> dict[str, torch.Tensor]:
    """The weights to store: CPU, contiguous, and without the tied head (it aliases the embedding)."""
    state = model.state_dict()
    if model.config.tie_weights:
        state.pop("head.weight")
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


# ---------------------------------------------------------------------------- saving


def _non_finite(arrays: dict[str, np.ndarray]) -> str | None:
    """The name of the first floating-point array holding NaN or inf, if any."""
    for name, array in arrays.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            return name
    return None


def _refuse_non_finite(tensors: dict[str, torch.Tensor]) -> None:
    # CPU float32/integer tensors (detached above): numpy views, no copies, one finiteness check.
    name = _non_finite({k: v.numpy() for k, v in tensors.items()})
    if name is not None:
        raise CharnnError(f"refusing to save a checkpoint with non-finite values in {name}")


def encode_checkpoint(
    model: CharRNN,
    tokenizer: Tokenizer,
    meta: TrainingMeta | None = None,
    train_state: dict[str, torch.Tensor] | None = None,
) -> dict[str, bytes]:
    """The files of a checkpoint, by name: weights, optional training state, checksummed metadata
    (``meta``: what a training checkpoint carries besides the model and tokenizer)."""
    from safetensors.torch import save as st_save

    tensors = model_tensors(model)
    _refuse_non_finite(tensors)
    files = {MODEL_FILE: st_save(tensors)}
    if train_state is not None:
        state = {k: v.detach().to("cpu").contiguous() for k, v in train_state.items()}
        _refuse_non_finite(state)  # NaN optimizer moments or hidden state would poison a resume
        files[STATE_FILE] = st_save(state)
    hashes = {name: _sha256(data) for name, data in files.items()}
    training = {n: getattr(meta, n) for n in TrainingMeta.__dataclass_fields__} if meta is not None else {}
    whole = CheckpointMeta(model=model.config, tokenizer=tokenizer, files=hashes, **training)
    files[META] = encode_meta(whole)
    return files


def save_checkpoint(
    target: Path,
    model: CharRNN,
    tokenizer: Tokenizer,
    meta: TrainingMeta | None = None,
    train_state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Atomically write a checkpoint directory at ``target`` (replacing the checkpoint there)."""
    target = Path(target)
    files = encode_checkpoint(model, tokenizer, meta, train_state)
    RunDir(target.parent).write(target.name, files)


# ---------------------------------------------------------------------------- loading


@dataclass
class Checkpoint:
    """A validated checkpoint: metadata plus numpy arrays (float32, finite, shapes checked)."""

    path: Path
    meta: CheckpointMeta
    weights: dict[str, np.ndarray]

    @property
    def config(self) -> ModelConfig:
        return self.meta.model

    @property
    def tokenizer(self) -> Tokenizer:
        return self.meta.tokenizer

    def torch_weights(self) -> dict[str, torch.Tensor]:
        """The validated weights as CPU tensors (sharing memory with the arrays)."""
        import torch

        return {k: torch.from_numpy(v) for k, v in self.weights.items()}

    def build_model(self) -> CharRNN:
        """An eval-mode CharRNN holding these weights. Built on the meta device and filled by
        assignment: a normal construction would first run the random init (orthogonal_ costs
        a QR per gate block, seconds for big models on a busy machine) only to overwrite it."""
        import torch

        from charnn.model import CharRNN

        with torch.device("meta"):
            model = CharRNN(self.config)
        missing, unexpected = model.load_state_dict(self.torch_weights(), strict=False, assign=True)
        assert not unexpected and set(missing) <= {"head.weight"}  # validated in load_checkpoint
        if self.config.tie_weights:
            model.head.weight = model.embed.weight
        model.eval()
        return model

    def train_state(self) -> dict[str, torch.Tensor]:
        import torch

        # Optimizer moments (2 per parameter), RNG and carried hidden state: bounded by the model.
        limit = 4 * 4 * parameter_count(self.config) + (64 << 20)
        data = _read_verified(self.path, STATE_FILE, self.meta.files, limit)
        arrays = _parse_safetensors(data, self.path / STATE_FILE)
        return {k: torch.from_numpy(v) for k, v in arrays.items()}

    @property
    def step(self) -> int:
        return self.meta.step


def _refuse_non_directory(path: Path) -> None:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:1] == b"\x80" or head == b"PK\x03\x04":
        raise CheckpointError(
            f"{path}: is a pickle / torch.save file; charnn never unpickles (it can run code). "
            "charnn checkpoints are directories of safetensors + JSON"
        )
    raise CheckpointError(f"{path}: not a charnn checkpoint (expected a checkpoint or run directory)")


def _read_verified(directory: Path, name: str, files: dict[str, str], limit: int = MAX_TENSOR_FILE) -> bytes:
    expected = files.get(name)
    if expected is None:
        raise CheckpointError(f"{directory}: metadata lists no {name}")
    data = read_bounded(directory / name, limit)
    if _sha256(data) != expected:
        raise _Torn(f"{directory / name}: checksum mismatch (truncated or corrupted file)")
    return data


def _parse_safetensors(data: bytes, where: Path) -> dict[str, np.ndarray]:
    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError, TypeError) as exc:  # TypeError: e.g. bf16
        raise CheckpointError(f"{where}: unreadable safetensors ({exc})") from None


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes. A device, FIFO or link to one
    (``/dev/zero``) or an oversized file is refused before anything is read into memory."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # before open: opening a FIFO waits for a writer
            raise CheckpointError(f"{path}: not a regular file")
        with open(path, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise CheckpointError(f"{path}: not a regular file")
            if info.st_size > limit:
                raise CheckpointError(f"{path}: {info.st_size:,} bytes, more than a checkpoint file can hold")
            data = fh.read(info.st_size + 1)  # a file that grows while we read is torn anyway
    except OSError as exc:
        raise _Torn(f"{path}: cannot read ({exc.strerror or exc})") from None
    return data


def load_meta(path: str | Path, prefer: str = LATEST) -> CheckpointMeta:
    """The validated metadata of a checkpoint (or a run's ``prefer`` checkpoint) without its
    weights: what ``charnn runs`` lists. Every field is checked as :func:`load_checkpoint` does."""
    directory = resolve_checkpoint(path, prefer)
    if directory.is_file():
        _refuse_non_directory(directory)
    return parse_meta(read_bounded(directory / META, MAX_META_FILE), directory)


def load_checkpoint(path: str | Path, prefer: str = BEST) -> Checkpoint:
    """Load and fully validate a checkpoint onto the CPU, whatever device trained it.

    A training run may replace the checkpoint while we read it (its save swaps whole
    directories), so a read that straddles a swap sees one file from each: a checksum mismatch
    is retried a few times before it is reported as corruption."""
    for _ in range(_ATTEMPTS - 1):
        try:
            return _load_once(path, prefer)
        except _Torn as exc:
            if _metadata_unchanged(path, prefer, exc.meta_raw):
                break  # nothing moved: the files really are damaged
    try:
        return _load_once(path, prefer)
    except _Torn as exc:
        raise CheckpointError(str(exc)) from None


_ATTEMPTS = 4


class _Torn(CheckpointError):
    """A file was unreadable or did not match its checksum: a torn read (a save replaced the
    checkpoint meanwhile) or real damage; :func:`load_checkpoint` tells them apart."""

    meta_raw: bytes | None = None  # the metadata the failed attempt had read


def _metadata_unchanged(path: str | Path, prefer: str, before: bytes | None) -> bool:
    """Whether the metadata that the failed attempt read is still the metadata on disk."""
    try:
        now = read_bounded(resolve_checkpoint(path, prefer) / META, MAX_META_FILE)
    except (OSError, CheckpointError):
        return False
    return now == before


def _load_once(path: str | Path, prefer: str) -> Checkpoint:
    directory = resolve_checkpoint(path, prefer)
    if directory.is_file():
        _refuse_non_directory(directory)
    raw = read_bounded(directory / META, MAX_META_FILE)
    try:
        return _validated(directory, parse_meta(raw, directory))
    except _Torn as exc:
        exc.meta_raw = raw
        raise


def _validated(directory: Path, meta: CheckpointMeta) -> Checkpoint:
    config = meta.model
    limit = min(4 * parameter_count(config) + (1 << 20), MAX_TENSOR_FILE)  # float32 weights + header
    weights = _parse_safetensors(
        _read_verified(directory, MODEL_FILE, meta.files, limit), directory / MODEL_FILE
    )
    rnn_tensors = sum(1 for name in weights if name.startswith("rnn."))
    if (
        rnn_tensors != TENSORS_PER_LAYER * config.layers
    ):  # first, so a forged layer count cannot make us loop for ages
        raise CheckpointError(
            f"{directory}: tensors do not match the model config ({config.layers} layers, "
            f"{rnn_tensors} recurrent tensors)"
        )
    expected = parameter_shapes(config)
    got = {k: tuple(v.shape) for k, v in weights.items()}
    if expected != got:
        diff = sorted(set(expected.items()) ^ set(got.items()))[:3]
        raise CheckpointError(f"{directory}: tensors do not match the model config (e.g. {diff})")
    bad = next((n for n, t in weights.items() if t.dtype != np.float32), None) or _non_finite(weights)
    if bad is not None:
        raise CheckpointError(f"{directory}: tensor {bad} is not finite float32")
    return Checkpoint(path=directory, meta=meta, weights=weights)


# ---------------------------------------------------------------------------- training state
#
# Besides the weights, a checkpoint written by training holds what resuming exactly needs:
#   meta.json   "train" (TrainConfig), "progress" (Counters), "corpus" (sources, sha256, sizes),
#               "optimizer" (hyperparameters of each parameter group)
#   train_state.safetensors
#               optim.{param index}.{exp_avg|exp_avg_sq|step}   AdamW moments
#               hidden.h / hidden.c                              carried TBPTT state (L, B, H)
#               rng.cpu, rng.cuda.{i}                            generator states
#               avg.{parameter name}                             the weight average (--average)


def train_config(ckpt: Checkpoint) -> TrainConfig:
    """The run's TrainConfig from a checkpoint (validated on load; refused here when absent)."""
    return check_training_meta(ckpt).train


def check_training_meta(ckpt: Checkpoint) -> ResumeMeta:
    """The metadata records resuming reads beyond the model (train, progress, corpus, optimizer):
    validated on load, and refused here when a checkpoint lacks one."""
    return resume_meta(ckpt.meta, ckpt.path / META)


def training_meta(
    config: TrainConfig,
    progress: Counters,
    corpus: CorpusRecord,
    optimizer: torch.optim.Optimizer,
    run: RunRecord | None = None,
    world_size: int = 1,
    parent: Lineage | None = None,
) -> TrainingMeta:
    """The metadata a training checkpoint carries beyond the model and tokenizer. ``run`` says how
    the run (or its latest resumption) was started: argv, charnn and torch versions, device."""
    groups = optimizer.state_dict()["param_groups"]
    return TrainingMeta(
        charnn_version=__version__,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        train=config,
        progress=Counters.from_json(progress.to_json()),  # a snapshot: the trainer goes on counting
        corpus=corpus,
        optimizer=OptimizerRecord(
            [{k: _json_value(v) for k, v in g.items() if k != "params"} for g in groups]
        ),
        world_size=world_size,
        run=run,
        parent=parent,
    )


def _json_value(value: Any) -> Any:
    """A hyperparameter as JSON holds it (AdamW's betas tuple as a list)."""
    return list(value) if isinstance(value, tuple) else value


def pack_train_state(
    optimizer: torch.optim.Optimizer,
    hidden: Hidden | None,
    average: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Optimizer moments, carried hidden state, RNG states and the weight average (already named
    ``avg.*``, :mod:`charnn.averaging`) as named tensors."""
    import torch

    from charnn.model import hidden_tensors

    tensors: dict[str, torch.Tensor] = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    for name, tensor in (hidden_tensors(hidden) if hidden is not None else {}).items():
        tensors[f"hidden.{name}"] = tensor
    for idx, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value)
    tensors.update(average or {})
    return tensors


def averaged_weights(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """The weight average of a training checkpoint (``avg.*``; checked by restore_train_state)."""
    return {k: v for k, v in ckpt.train_state().items() if k.startswith("avg.")}


def restore_train_state(
    ckpt: Checkpoint,
    model: CharRNN,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    batch: int | None = None,
) -> tuple[Counters, Hidden | None]:
    """Load weights, optimizer, RNG states into the given objects; return progress and hidden state.
    A checkpoint whose checksums pass but whose state does not fit (``batch``: the streams a
    carried hidden state must have, all ranks together) is refused as a bad checkpoint."""
    if ckpt.config != model.config:
        raise ConfigError("checkpoint model config differs from this run's")
    records = check_training_meta(ckpt)
    _check_train_state(ckpt, ckpt.train_state(), optimizer, batch)
    try:
        return _restore(ckpt, records, model, optimizer, device)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{ckpt.path}: training state cannot be resumed ({exc})") from None


def _restore(
    ckpt: Checkpoint,
    records: ResumeMeta,
    model: CharRNN,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> tuple[Counters, Hidden | None]:
    import torch

    from charnn.model import hidden_from_tensors

    model.load_state_dict(ckpt.torch_weights(), strict=False)  # tied head.weight is not stored
    tensors = ckpt.train_state()  # checked by _check_train_state
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    hidden: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        kind, _, rest = name.partition(".")
        if kind == "optim":
            idx, _, key = rest.partition(".")
            optim_state.setdefault(int(idx), {})[key] = tensor
        elif kind == "hidden":
            hidden[rest] = tensor.to(device)
    groups = optimizer.state_dict()["param_groups"]
    for group, stored in zip(groups, records.optimizer.param_groups, strict=True):
        saved = dict(stored)  # the checkpoint's record stays as read
        for key, value in stored.items():  # only the hyperparameters this optimizer has, of their kinds
            if key not in group or not _same_kind(value, group[key]):
                raise ValueError(f"optimizer.param_groups.{key} is {_clip(value)}")
            saved[key] = tuple(value) if isinstance(group[key], tuple) else value  # JSON made it a list
        group.update(saved)
    optimizer.load_state_dict({"state": optim_state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    carried = hidden_from_tensors(model.config.cell, hidden) if hidden else None
    return records.progress, carried


def _same_kind(value: Any, like: Any) -> bool:
    """Whether a hyperparameter read from JSON can stand for ``like`` (numbers for numbers,
    sequences of the same length for tuples such as AdamW's betas)."""
    if isinstance(like, (list, tuple)):
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(like)
            and all(_same_kind(v, w) for v, w in zip(value, like, strict=True))
        )
    if _is_real(like):
        return _is_real(value)
    return type(value) is type(like)


def _check_train_state(
    ckpt: Checkpoint,
    tensors: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    batch: int | None = None,
) -> None:
    """Every tensor of train_state.safetensors is one resuming expects, of the right shape,
    dtype and finiteness: a forged file with valid checksums is a bad checkpoint (exit 3)."""
    import torch

    where = ckpt.path / STATE_FILE
    config = ckpt.config
    params = [p for group in optimizer.param_groups for p in group["params"]]
    shapes = parameter_shapes(config)  # an average has the stored parameters' names and shapes
    for name, tensor in tensors.items():
        kind, _, rest = name.partition(".")
        problem = None
        if kind == "rng":
            if (
                tensor.dtype != torch.uint8
                or tensor.dim() != 1
                or not (rest == "cpu" or rest.startswith("cuda."))
            ):
                problem = "not a generator state"
        elif kind == "hidden":
            shape = tuple(tensor.shape)
            expected = hidden_shape(
                config, batch if batch is not None else (shape[1] if len(shape) == 3 else 0)
            )
            if rest not in state_parts(config.cell) or shape != expected:
                problem = f"shape {shape} is not ({expected[0]}, {batch or 'batch'}, {expected[2]})"
        elif kind == "optim":
            idx, _, key = rest.partition(".")
            if not idx.isdigit() or int(idx) >= len(params) or key not in ("exp_avg", "exp_avg_sq", "step"):
                problem = "not a parameter's optimizer state"
            elif key == "step" and tensor.numel() != 1:
                problem = "not a scalar"
            elif key == "step" and not (tensor.float() >= 0).all():
                problem = "a negative step count"
            elif key == "exp_avg_sq" and tensor.is_floating_point() and (tensor < 0).any():
                problem = "negative (a mean of squares)"
            elif key != "step" and tuple(tensor.shape) != tuple(params[int(idx)].shape):
                problem = f"shape {tuple(tensor.shape)}, the parameter's is {tuple(params[int(idx)].shape)}"
        elif kind == "avg":
            if rest not in shapes or tuple(tensor.shape) != shapes[rest] or tensor.dtype != torch.float32:
                problem = "not a float32 average of a parameter of this model"
        else:
            problem = "unknown"
        if problem is None and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            problem = "not finite"
        if problem:
            raise CheckpointError(f"{where}: tensor {name}: {problem}")
    if "rng.cpu" not in tensors:
        raise CheckpointError(f"{where}: no rng.cpu generator state")
