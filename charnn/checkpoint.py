"""Checkpoints as data, never code: safetensors weights + JSON metadata, written atomically.

A checkpoint is a directory::

    meta.json                 format, version, model config, tokenizer, progress, metrics,
                              sha256 of each tensor file, and a checksum of itself
    model.safetensors         the network's weights
    train_state.safetensors   optimizer moments, RNG states, carried hidden state (resume only)

This module owns the format: what the files hold, how training state is packed into
them and unpacked, and the validation of every field on load. Where checkpoints live and
how one is replaced atomically is :mod:`charnn.rundir`'s job. Nothing is ever unpickled.

Loading and validation work on numpy arrays and never import torch, so ``charnn sample``
starts fast; the torch side (saving, building a model, resuming) converts validated arrays
to tensors and imports torch only there. Every path validates through ``load_checkpoint``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load

from charnn import __version__
from charnn.arch import TENSORS_PER_LAYER, hidden_shape, parameter_count, parameter_shapes, state_parts
from charnn.config import ModelConfig, TrainConfig
from charnn.errors import CharnnError, CheckpointError, ConfigError
from charnn.rundir import BEST, FORMAT, LATEST, RunDir, resolve_checkpoint
from charnn.rundir import MARKER as META
from charnn.tokenizer import Tokenizer, tokenizer_from_dict

if TYPE_CHECKING:  # torch only where tensors are made: loading for sampling never imports it
    import torch

    from charnn.model import CharRNN, Hidden

__all__ = ["BEST", "LATEST", "META", "Checkpoint", "load_checkpoint", "save_checkpoint"]

VERSION = 1
MAX_META_FILE = 64 << 20  # metadata is small JSON; a SentencePiece model inside it is well under this
MAX_TENSOR_FILE = 64 << 30  # bounds a forged size; real checkpoints of RNNs are far smaller
MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _meta_checksum(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "checksum"}
    return _sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


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
    meta: dict[str, Any],
    train_state: dict[str, torch.Tensor] | None = None,
) -> dict[str, bytes]:
    """The files of a checkpoint, by name: weights, optional training state, checksummed metadata."""
    from safetensors.torch import save as st_save

    tensors = model_tensors(model)
    _refuse_non_finite(tensors)
    files = {MODEL_FILE: st_save(tensors)}
    if train_state is not None:
        state = {k: v.detach().to("cpu").contiguous() for k, v in train_state.items()}
        _refuse_non_finite(state)  # NaN optimizer moments or hidden state would poison a resume
        files[STATE_FILE] = st_save(state)
    meta = dict(meta)
    meta.update(
        format=FORMAT,
        version=VERSION,
        model=model.config.to_dict(),
        tokenizer=tokenizer.to_dict(),
        files={name: _sha256(data) for name, data in files.items()},
    )
    meta["checksum"] = _meta_checksum(meta)
    files[META] = (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode()
    return files


def save_checkpoint(
    target: Path,
    model: CharRNN,
    tokenizer: Tokenizer,
    meta: dict[str, Any],
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
    meta: dict[str, Any]
    config: ModelConfig
    tokenizer: Tokenizer
    weights: dict[str, np.ndarray]

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
        data = _read_verified(self.path, STATE_FILE, self.meta, limit)
        arrays = _parse_safetensors(data, self.path / STATE_FILE)
        return {k: torch.from_numpy(v) for k, v in arrays.items()}

    @property
    def step(self) -> int:
        progress = self.meta.get("progress")
        step = progress.get("step", 0) if isinstance(progress, dict) else 0
        return step if isinstance(step, int) else 0


def _refuse_non_directory(path: Path) -> None:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:1] == b"\x80" or head == b"PK\x03\x04":
        raise CheckpointError(
            f"{path}: is a pickle / torch.save file; charnn never unpickles (it can run code). "
            "charnn checkpoints are directories of safetensors + JSON"
        )
    raise CheckpointError(f"{path}: not a charnn checkpoint (expected a checkpoint or run directory)")


def _read_verified(directory: Path, name: str, meta: dict[str, Any], limit: int = MAX_TENSOR_FILE) -> bytes:
    files = meta.get("files")
    expected = files.get(name) if isinstance(files, dict) else None
    if not isinstance(expected, str):
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


def read_meta(directory: Path) -> dict[str, Any]:
    return parse_meta(read_bounded(directory / META, MAX_META_FILE), directory)


def parse_meta(raw: bytes, directory: Path) -> dict[str, Any]:
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{directory / META}: not valid JSON ({exc})") from None
    except RecursionError:
        raise CheckpointError(f"{directory / META}: not valid JSON (nested too deeply)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{directory}: not a charnn checkpoint (format is not {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{directory}: checkpoint format version {meta.get('version')!r}; "
            f"this charnn reads version {VERSION}"
        )
    if meta.get("checksum") != _meta_checksum(meta):
        raise CheckpointError(f"{directory / META}: checksum mismatch (the metadata was edited or corrupted)")
    return meta


_CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "vocab_size": (int,),
    "cell": (str,),
    "layers": (int,),
    "hidden": (int,),
    "embed": (int,),
    "dropout": (int, float),
    "tie_weights": (bool,),
}


def _model_config(data: Any) -> ModelConfig:
    """ModelConfig from metadata, with types checked (the metadata is data, not trusted code)."""
    if not isinstance(data, dict):
        raise ConfigError("not a mapping")
    for key, types in _CONFIG_TYPES.items():
        value = data.get(key)
        if key in data and (not isinstance(value, types) or (bool not in types and isinstance(value, bool))):
            raise ConfigError(f"{key} is {value!r}")
    return ModelConfig.from_dict(data, stored_as="model")  # type: ignore[no-any-return]


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
        now = (resolve_checkpoint(path, prefer) / META).read_bytes()
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


def _validated(directory: Path, meta: dict[str, Any]) -> Checkpoint:
    try:
        config = _model_config(meta.get("model"))
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"{directory}: bad model config ({exc})") from None
    tokenizer = tokenizer_from_dict(meta.get("tokenizer"))
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(
            f"{directory}: tokenizer has {tokenizer.vocab_size} tokens but the model {config.vocab_size}"
        )
    limit = min(4 * parameter_count(config) + (1 << 20), MAX_TENSOR_FILE)  # float32 weights + header
    weights = _parse_safetensors(_read_verified(directory, MODEL_FILE, meta, limit), directory / MODEL_FILE)
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
    return Checkpoint(path=directory, meta=meta, config=config, tokenizer=tokenizer, weights=weights)


# ---------------------------------------------------------------------------- training state
#
# Besides the weights, a checkpoint written by training holds what resuming exactly needs:
#   meta.json   "train" (TrainConfig), "progress" (Progress), "corpus" (sources, sha256, sizes),
#               "optimizer" (hyperparameters of each parameter group)
#   train_state.safetensors
#               optim.{param index}.{exp_avg|exp_avg_sq|step}   AdamW moments
#               hidden.h / hidden.c                              carried TBPTT state (L, B, H)
#               rng.cpu, rng.cuda.{i}                            generator states


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
    tokens: int = 0  # tokens trained on (all steps, skipped ones included)
    chars: int = 0  # characters those tokens spell
    stale_evals: int = 0  # validations since the last improvement by --min-delta (early stopping)
    patience_best: float | None = None  # the val bpc that improvement is measured against
    stopped_reason: str | None = None  # why the run ended early, when it did

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_meta(cls, data: Any) -> Progress:
        """Progress from checkpoint metadata, every field checked (raises ValueError naming it)."""
        if not isinstance(data, dict):
            raise ValueError(f"progress is {type(data).__name__}, not a mapping")
        known = {f.name for f in dataclasses.fields(cls)}
        if set(data) - known:
            raise ValueError(f"progress has unknown fields {sorted(set(data) - known)}")
        for name in ("step", "optimizer_steps", "skipped_steps", "tokens", "chars", "stale_evals"):
            _want(data, name, lambda v: _is_int(v) and v >= 0, "a whole number >= 0")
        _want(data, "elapsed", lambda v: _is_real(v) and v >= 0, "a finite number >= 0")
        _want(data, "lr_scale", lambda v: _is_real(v) and v > 0, "a finite number > 0")
        _want(data, "stopped_reason", lambda v: v is None or isinstance(v, str), "null or text")
        for name in ("best_val_bpc", "train_loss", "patience_best"):
            _want(data, name, lambda v: v is None or _is_real(v), "null or a finite number")
        _want(
            data,
            "val",
            lambda v: isinstance(v, dict) and all(_is_real(x) for x in v.values()),
            "a mapping of numbers",
        )
        return cls(**data)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _want(data: dict[str, Any], name: str, ok: Any, what: str) -> None:
    if name in data and not ok(data[name]):
        raise ValueError(f"progress.{name} is {data[name]!r}, not {what}")


def train_config(ckpt: Checkpoint) -> TrainConfig:
    """The run's TrainConfig from a checkpoint; a bad one is the checkpoint's fault, not the user's."""
    try:
        return TrainConfig.from_dict(ckpt.meta.get("train"), stored_as="train")  # type: ignore[arg-type]
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{ckpt.path / META}: bad train config ({exc})") from None


def check_training_meta(ckpt: Checkpoint) -> None:
    """The metadata fields resuming reads, beyond the model: corpus, progress, optimizer."""
    meta = ckpt.meta
    corpus = meta.get("corpus")
    problems = []
    if not (
        isinstance(corpus, dict)
        and isinstance(corpus.get("sources"), list)
        and all(isinstance(x, str) for x in corpus["sources"])
        and isinstance(corpus.get("sha256"), str)
    ):
        problems.append(f"corpus is {_clip(corpus)}")
    try:
        Progress.from_meta(meta.get("progress"))
    except (ValueError, TypeError) as exc:
        problems.append(str(exc))
    groups = (
        meta.get("optimizer", {}).get("param_groups") if isinstance(meta.get("optimizer"), dict) else None
    )
    if not (isinstance(groups, list) and groups and all(isinstance(g, dict) for g in groups)):
        problems.append(f"optimizer.param_groups is {_clip(groups)}")
    if problems:
        raise CheckpointError(f"{ckpt.path / META}: cannot resume: {problems[0]}")


def _clip(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def training_meta(
    config: TrainConfig,
    progress: Progress,
    corpus: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata a training checkpoint carries beyond the model and tokenizer. ``run`` says how
    the run (or its latest resumption) was started: argv, charnn and torch versions, device."""
    groups = optimizer.state_dict()["param_groups"]
    extra = {"run": run} if run is not None else {}
    return {
        **extra,
        "charnn_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "train": config.to_dict(),
        "progress": progress.to_dict(),
        "corpus": corpus,
        "optimizer": {"param_groups": [{k: v for k, v in g.items() if k != "params"} for g in groups]},
    }


def pack_train_state(optimizer: torch.optim.Optimizer, hidden: Hidden | None) -> dict[str, torch.Tensor]:
    """Optimizer moments, carried hidden state and RNG states as named tensors."""
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
    return tensors


def restore_train_state(
    ckpt: Checkpoint, model: CharRNN, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[Progress, Hidden | None]:
    """Load weights, optimizer, RNG states into the given objects; return progress and hidden state.
    A checkpoint whose checksums pass but whose state does not fit is refused as a bad checkpoint."""
    if ckpt.config != model.config:
        raise ConfigError("checkpoint model config differs from this run's")
    check_training_meta(ckpt)
    _check_train_state(ckpt, ckpt.train_state(), optimizer)
    try:
        return _restore(ckpt, model, optimizer, device)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{ckpt.path}: training state cannot be resumed ({exc})") from None


def _restore(
    ckpt: Checkpoint, model: CharRNN, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[Progress, Hidden | None]:
    import torch

    from charnn.model import hidden_from_tensors

    meta = ckpt.meta
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
    for group, saved in zip(groups, meta["optimizer"]["param_groups"], strict=True):
        for key, value in saved.items():  # only the hyperparameters this optimizer has, of their kinds
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
    return Progress.from_meta(meta["progress"]), carried


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
    ckpt: Checkpoint, tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer
) -> None:
    """Every tensor of train_state.safetensors is one resuming expects, of the right shape,
    dtype and finiteness: a forged file with valid checksums is a bad checkpoint (exit 3)."""
    import torch

    where = ckpt.path / STATE_FILE
    config = ckpt.config
    params = [p for group in optimizer.param_groups for p in group["params"]]
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
            expected = hidden_shape(config, shape[1] if len(shape) == 3 else 0)  # (L, N, H)
            if rest not in state_parts(config.cell) or shape != expected:
                problem = f"shape {shape} is not ({expected[0]}, batch, {expected[2]})"
        elif kind == "optim":
            idx, _, key = rest.partition(".")
            if not idx.isdigit() or int(idx) >= len(params) or key not in ("exp_avg", "exp_avg_sq", "step"):
                problem = "not a parameter's optimizer state"
            elif key == "step" and tensor.numel() != 1:
                problem = "not a scalar"
            elif key != "step" and tuple(tensor.shape) != tuple(params[int(idx)].shape):
                problem = f"shape {tuple(tensor.shape)}, the parameter's is {tuple(params[int(idx)].shape)}"
        else:
            problem = "unknown"
        if problem is None and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            problem = "not finite"
        if problem:
            raise CheckpointError(f"{where}: tensor {name}: {problem}")
    if "rng.cpu" not in tensors:
        raise CheckpointError(f"{where}: no rng.cpu generator state")
