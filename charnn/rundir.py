"""The run directory (``--out``): the one owner of what lives beside the checkpoints.

::

    RUN/
      latest/              newest checkpoint; --resume continues from here
      best/                checkpoint with the best validation bpc; sample/eval default to it
      metrics.jsonl        the run's history: progress and validation rows (charnn.metrics)
      samples.txt          a short sample every --sample-every steps, each under "=== step N ... ==="
      .lock                held (filelock) by the one process writing this run
      .latest.old/         the previous latest/, only while a save swaps the two
      .latest.tmp/         a save being written (stale unless the lock's holder is writing it)

A save writes ``.NAME.tmp/`` (files fsynced), renames the current ``NAME/`` aside to
``.NAME.old/``, renames the new one into place and only then deletes the aside copy: a
crash at any moment leaves a complete checkpoint under the final or the aside name, and
:func:`resolve_checkpoint` finds either. Only a directory that holds a charnn checkpoint
is ever renamed or deleted: a user's own file or folder under one of these names is
refused, ``--force`` or not. This module knows names and atomic swaps, not the format.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from charnn.errors import CharnnError, CheckpointError, ConfigError, RunBusyError
from charnn.metrics import METRICS, MetricsLog

LATEST, BEST = "latest", "best"
MARKER = "meta.json"  # a checkpoint directory is one that holds this file
FORMAT = "charnn-checkpoint"  # the marker's "format" value
LOCK = ".lock"
SAMPLES = "samples.txt"
_SAMPLE_HEADER = re.compile(rb"^=== step (\d+)\b[^\n]*===$", re.MULTILINE)


def aside_path(target: Path) -> Path:
    """Where a save moves the previous checkpoint while it renames the new one into place."""
    return target.parent / f".{target.name}.old"


def tmp_path(target: Path) -> Path:
    return target.parent / f".{target.name}.tmp"


def is_checkpoint_dir(path: Path) -> bool:
    """Whether ``path`` is a directory whose marker says it is a charnn checkpoint. Only the
    ``format`` entry is looked for (validation is the loader's job): the marker can be large
    (a corpus of many files, a SentencePiece model) and a torn one is still ours."""
    try:
        with open(path / MARKER, "rb") as fh:
            head = fh.read(_MARKER_LIMIT)
    except OSError:
        return False
    return _FORMAT_ENTRY in head


_MARKER_LIMIT = 64 << 20
_FORMAT_ENTRY = f'"format": "{FORMAT}"'.encode()


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    """Make renames in ``path`` durable. Windows cannot open a directory for fsync: skip there."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RunDir:
    """A run directory: its lock, its checkpoints' names, and atomic replacement of them."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock: Any = None  # the held FileLock, while _depth > 0
        self._depth = 0

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def checkpoint(self, which: str) -> Path:
        return self.path / which

    def metrics(self) -> MetricsLog:
        """The run's history, ``metrics.jsonl`` (see :mod:`charnn.metrics`)."""
        return MetricsLog(self.path / METRICS)

    def holds_run(self) -> bool:
        """Whether a run (finished, or interrupted between a save's renames) lives here."""
        return any(
            is_checkpoint_dir(p)
            for name in (LATEST, BEST)
            for p in (self.path / name, aside_path(self.path / name))
        )

    # ------------------------------------------------------------------ the one-writer lock

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's lock; a second process gets :class:`RunBusyError` at once, never waits.
        Re-entrant on this object (the run holds it, each save takes it again). A run has one
        ``RunDir`` (its :class:`~charnn.run_plan.RunPlan`'s), so no other holder in this process
        needs reconciling: a second ``RunDir`` of the same path is refused like another process."""
        if self._depth == 0:
            self._lock = self._acquire()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._lock.release()
                self._lock = None

    def _acquire(self) -> Any:
        from filelock import FileLock, Timeout

        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CharnnError(f"could not save checkpoint in {self.path}: {exc.strerror or exc}") from None
        lock = FileLock(os.path.abspath(self.path / LOCK), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunBusyError(
                f"{self.path}: another charnn process is writing this run directory; "
                "wait for it to finish or choose another --out"
            ) from None
        except OSError as exc:
            raise CharnnError(f"{self.path}: cannot lock ({exc.strerror or exc})") from None
        return lock

    # ------------------------------------------------------------------ beside the checkpoints

    def append_sample(self, step: int, text: str, note: str = "") -> None:
        """Append one training sample under its step's header; flushed at once (a crash keeps it)."""
        header = f"=== step {step}{' ' + note if note else ''} ==="
        end = "\n" if text.endswith("\n") else "\n\n"  # a blank line after each sample
        entry = f"{header}\n{text}{end}"
        try:
            with open(self.path / SAMPLES, "ab") as fh:
                fh.write(entry.encode("utf-8", "replace"))
                fh.flush()
        except OSError as exc:
            raise CharnnError(f"could not write {self.path / SAMPLES}: {exc.strerror or exc}") from None

    def trim_samples(self, after_step: int) -> None:
        """Drop samples of steps after ``after_step``: a resumed (or recovered) run replays those
        steps from its checkpoint and samples them again, so the file never holds a step twice."""
        path = self.path / SAMPLES
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise CharnnError(f"could not read {path}: {exc.strerror or exc}") from None
        cut = next((m.start() for m in _SAMPLE_HEADER.finditer(data) if int(m.group(1)) > after_step), None)
        if cut is not None:
            with open(path, "r+b") as fh:
                fh.truncate(cut)

    # ------------------------------------------------------------------ atomic replacement

    def _refuse_foreign(self, path: Path, aside: bool = False) -> None:
        """Refuse ``path`` unless it is absent or charnn's own. An aside copy may be a checkpoint
        that a save was deleting when it was killed (its marker already gone): any real directory
        under that dot-name is charnn's. ``latest/``, ``best/`` are only ever whole checkpoints."""
        if not (path.exists() or path.is_symlink()):
            return
        real_dir = path.is_dir() and not path.is_symlink()
        if not (real_dir and (aside or is_checkpoint_dir(path))):
            raise ConfigError(
                f"{path}: exists and is not a charnn checkpoint; charnn never replaces or removes it "
                "(move it away or choose another --out)"
            )

    def refuse_foreign(self) -> None:
        """Refuse a run directory where a name charnn writes holds something of the user's."""
        for which in (LATEST, BEST):
            self._refuse_foreign(self.path / which)
            self._refuse_foreign(aside_path(self.path / which), aside=True)

    def recover(self, which: str) -> None:
        """Finish or undo a save interrupted between its renames, drop a stale temporary
        directory. Called with the lock held, so no live save of this run exists."""
        target = self.path / which
        old, tmp = aside_path(target), tmp_path(target)
        self._refuse_foreign(old, aside=True)
        if old.exists():
            if is_checkpoint_dir(target):
                shutil.rmtree(old)
            else:
                self._refuse_foreign(target)
                os.replace(old, target)
        for stale in [tmp, *self.path.glob(f".{which}.tmp-*")]:  # -PID: left by charnn 0.1.0
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)

    def write(self, which: str, files: dict[str, bytes]) -> Path:
        """Atomically make ``RUN/which/`` hold exactly ``files``; the old checkpoint is kept on any error."""
        target = self.path / which
        tmp = tmp_path(target)
        with self.lock():
            self.recover(which)
            self._refuse_foreign(target)
            try:
                tmp.mkdir()
                for name, data in files.items():
                    _write_file(tmp / name, data)
                _fsync_dir(tmp)
                old = aside_path(target)
                if target.exists():
                    os.replace(target, old)
                os.replace(tmp, target)
                _fsync_dir(self.path)
                shutil.rmtree(old, ignore_errors=True)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise CharnnError(
                    f"could not save checkpoint {target}: {exc.strerror or exc}; "
                    "the previous checkpoint is kept"
                ) from exc
        return target

    def remove(self, which: str) -> None:
        """Delete a checkpoint of this run (and its aside copy), e.g. the old best/ on --force."""
        with self.lock():
            for path, aside in ((self.path / which, False), (aside_path(self.path / which), True)):
                self._refuse_foreign(path, aside)
                if path.exists():
                    shutil.rmtree(path)


def resolve_checkpoint(path: str | Path, prefer: str = BEST) -> Path:
    """Map a user's path to one checkpoint directory: a checkpoint itself, or a run directory's
    ``best/`` (or ``latest/``), falling back to the other and to half-finished saves.

    A save renaming directories meanwhile can hide the checkpoint from one look (the new copy
    moves in between two checks), so a miss is looked at again before it is reported."""
    for _ in range(_RESOLVE_ATTEMPTS - 1):
        try:
            return _resolve_once(Path(path), prefer)
        except CheckpointError:
            time.sleep(0.01)
    return _resolve_once(Path(path), prefer)


_RESOLVE_ATTEMPTS = 3


def _resolve_once(path: Path, prefer: str) -> Path:
    if not path.exists():
        if (aside_path(path) / MARKER).exists():  # e.g. -c run/latest after a crash between renames
            return aside_path(path)
        raise CheckpointError(f"{path}: no such checkpoint (train one with `charnn train`)")
    if path.is_file():
        if path.name == MARKER or path.suffix == ".safetensors":
            return path.parent
        return path  # the caller refuses files that are not checkpoint directories
    if (path / MARKER).exists():
        return path
    order = [prefer, LATEST if prefer == BEST else BEST]
    for name in order:
        for candidate in (path / name, aside_path(path / name)):
            if (candidate / MARKER).exists():
                return candidate
    raise CheckpointError(f"{path}: no checkpoint here (no {MARKER}, {BEST}/ or {LATEST}/)")
