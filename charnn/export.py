"""``charnn export RUN OUT``: the checkpoint to share, without what only resuming needs.

A run's checkpoint holds the weights, the metadata and ``train_state.safetensors`` (optimizer
moments, RNG and carried hidden state: about twice the weights). Sampling, evaluating, scoring
and fine-tuning (``--init-from``) need only the first two. The export is a checkpoint directory
like any other (``meta.json`` + ``model.safetensors``), so ``charnn sample -c OUT`` and ``charnn
train --init-from OUT`` take it and it is validated as any checkpoint is; it cannot be resumed.

The weights are copied byte for byte (their sha256 is the source's, so a fine-tuned child
records the same lineage); the metadata loses the optimizer's settings and gains an
``exported`` entry, and gets a new checksum. The directory appears whole or not at all: it is
written under a temporary name beside OUT, loaded back and validated, then renamed into place.
No torch import.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from charnn import __version__
from charnn.checkpoint import (
    MAX_META_FILE,
    MAX_TENSOR_FILE,
    META,
    MODEL_FILE,
    _meta_checksum,
    load_checkpoint,
    read_bounded,
)
from charnn.errors import CharnnError, CheckpointError, ConfigError
from charnn.rundir import is_checkpoint_dir

TRAINING_ONLY = ("optimizer",)  # metadata only a resume reads


def export_checkpoint(
    source: str | os.PathLike[str], out: str | os.PathLike[str], force: bool = False
) -> Path:
    """Write the shareable checkpoint of ``source`` (a run: its best/) to directory ``out``."""
    ckpt = load_checkpoint(Path(source))
    target = Path(out)
    _refuse_target(target, force)
    weights = read_bounded(ckpt.path / MODEL_FILE, MAX_TENSOR_FILE)
    expected = ckpt.meta.files[MODEL_FILE]
    raw = json.loads(read_bounded(ckpt.path / META, MAX_META_FILE))  # validated above, as typed records
    same = (
        isinstance(raw, dict)
        and isinstance(raw.get("files"), dict)
        and raw["files"].get(MODEL_FILE) == expected
    )
    if hashlib.sha256(weights).hexdigest() != expected or not same:
        raise CheckpointError(f"{ckpt.path}: the checkpoint changed while it was read (a save?); run again")
    files = {MODEL_FILE: weights, META: _exported_meta(raw, ckpt.path, expected)}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".export", dir=target.parent))
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide it from the people it is for
        load_checkpoint(tmp)  # validated like any checkpoint before it gets its name
        if target.exists():  # --force over an earlier export (checked above)
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as exc:
        raise CharnnError(f"{target}: cannot write the export ({exc.strerror or exc})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _refuse_target(target: Path, force: bool) -> None:
    if not (target.exists() or target.is_symlink()):
        return
    if not force:
        raise ConfigError(f"{target}: already exists; choose another name, or replace an export with --force")
    if target.is_symlink() or not is_checkpoint_dir(target) or (target / "latest").exists():
        raise ConfigError(f"{target}: exists and is not an exported checkpoint; charnn never replaces it")


def _exported_meta(meta: dict[str, Any], source: Path, model_sha256: str) -> bytes:
    out = {k: v for k, v in meta.items() if k not in (*TRAINING_ONLY, "files", "checksum")}
    out["files"] = {MODEL_FILE: model_sha256}
    out["exported"] = {
        "from": str(source),
        "charnn": __version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out["checksum"] = _meta_checksum(out)
    return (json.dumps(out, indent=1, sort_keys=True) + "\n").encode()
