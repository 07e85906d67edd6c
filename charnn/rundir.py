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
:func:`resolve_checkpoint` finds either.

charnn touches only what it can prove is its own. ``latest/``/``best/`` are charnn's when they
hold the marker; ``.NAME.old/``/``.NAME.tmp/`` when they hold nothing but checkpoint files
(:func:`is_own_leftover`: a save killed while writing or deleting leaves a subset of them; a
checkpoint is deleted marker last, so a partly deleted one is either still marked or empty);
``metrics.jsonl``/``samples.txt`` when they begin the way charnn begins them. Anything else
under these names is the user's and is refused, ``--force`` or not: never renamed, replaced,
appended to or deleted. This module knows names and atomic swaps, not the format.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
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
        if not stat.S_ISREG(os.stat(path / MARKER).st_mode):  # a FIFO would block the open
            return False
        with open(path / MARKER, "rb") as fh:
            head = fh.read(_MARKER_LIMIT)
    except OSError:
        return False
    return _FORMAT_ENTRY in head


_MARKER_LIMIT = 64 << 20
_FORMAT_ENTRY = f'"format": "{FORMAT}"'.encode()
# What a save writes; the marker goes through a ".part" name so that a save killed while writing
# it never leaves a truncated marker (which could not be told from a user's file).
_CHECKPOINT_FILE = re.compile(r"meta\.json|meta\.json\.part|[A-Za-z0-9_]+\.safetensors")


def is_own_leftover(path: Path) -> bool:
    """Whether ``path`` (an aside or temporary name) is what a killed save of charnn's left: a
    real directory holding only regular files named like a checkpoint's (possibly none), its
    marker, if any, charnn's."""
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        entries = list(os.scandir(path))
    except OSError:
        return False
    names_ok = all(e.is_file(follow_symlinks=False) and _CHECKPOINT_FILE.fullmatch(e.name) for e in entries)
    # A marker there must be charnn's (a save writes it last and deletes it last).
    return names_ok and (not any(e.name == MARKER for e in entries) or is_checkpoint_dir(path))


def remove_checkpoint_dir(path: Path) -> None:
    """Delete one of charnn's checkpoint directories, its marker last: killed at any moment,
    what is left is still marked (whole or in part) or empty, and so still provably charnn's."""
    entries = sorted(os.scandir(path), key=lambda e: e.name == MARKER)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    os.rmdir(path)


def _remove_quietly(path: Path) -> None:
    """Drop the aside copy after a save; one left behind is removed by the next lock holder."""
    try:
        if path.exists():
            remove_checkpoint_dir(path)
    except OSError:
        pass


def _is_own_metrics(path: Path) -> bool:
    """A history charnn wrote: a regular file, empty or starting with a ``start`` row."""
    import json

    try:
        with open(path, "rb") as fh:
            first = fh.readline(1 << 20)
    except OSError:
        return False
    if not first.strip():
        return True
    try:
        row = json.loads(first)
    except ValueError:
        return False
    return isinstance(row, dict) and row.get("kind") == "start" and isinstance(row.get("step"), int)


def _is_own_samples(path: Path) -> bool:
    """Training samples charnn wrote: a regular file, empty or starting with a step header."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline(4096)
    except OSError:
        return False
    return not first or bool(_SAMPLE_HEADER.match(first.rstrip(b"\r\n")))


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
            try:
                with open(path, "r+b") as fh:
                    fh.truncate(cut)
            except OSError as exc:
                raise CharnnError(f"could not write {path}: {exc.strerror or exc}") from None

    # ------------------------------------------------------------------ atomic replacement

    def _refuse_foreign(self, path: Path, leftover: bool = False) -> None:
        """Refuse ``path`` unless it is absent or charnn's own: a checkpoint (``latest/``,
        ``best/`` are only ever whole ones), or for an aside or temporary name (``leftover``)
        what a killed save leaves (:func:`is_own_leftover`)."""
        if not (path.exists() or path.is_symlink()):
            return
        real_dir = path.is_dir() and not path.is_symlink()
        if not (real_dir and (is_checkpoint_dir(path) or (leftover and is_own_leftover(path)))):
            raise ConfigError(
                f"{path}: exists and is not a charnn checkpoint; charnn never replaces or removes it "
                "(move it away or choose another --out)"
            )

    def _refuse_foreign_file(self, name: str) -> None:
        path = self.path / name
        own = _is_own_metrics if name == METRICS else _is_own_samples
        if not (path.exists() or path.is_symlink()):
            return
        if path.is_symlink() or not path.is_file() or not own(path):
            raise ConfigError(
                f"{path}: exists and is not charnn's {name}; charnn never replaces or appends to it "
                "(move it away or choose another --out)"
            )

    def refuse_foreign(self) -> None:
        """Refuse a run directory where a name charnn writes holds something of the user's."""
        for which in (LATEST, BEST):
            target = self.path / which
            self._refuse_foreign(target)
            self._refuse_foreign(aside_path(target), leftover=True)
            self._refuse_foreign(tmp_path(target), leftover=True)
        for name in (METRICS, SAMPLES):
            self._refuse_foreign_file(name)

    def recover(self, which: str) -> None:
        """Finish or undo a save interrupted between its renames, drop a stale temporary
        directory. Called with the lock held, so no live save of this run exists."""
        target = self.path / which
        old, tmp = aside_path(target), tmp_path(target)
        self._refuse_foreign(old, leftover=True)
        self._refuse_foreign(tmp, leftover=True)
        if old.exists():
            if is_checkpoint_dir(old) and not is_checkpoint_dir(target):
                self._refuse_foreign(target)  # absent: the save was killed between its renames
                os.replace(old, target)
            else:  # the new copy is in place, or this is what a killed deletion left
                remove_checkpoint_dir(old)
        for stale in [tmp, *self.path.glob(f".{which}.tmp-*")]:  # -PID: left by charnn 0.1.0
            if is_own_leftover(stale):
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
                    if name == MARKER:  # whole or absent, never torn: written aside, then renamed
                        _write_file(tmp / f"{MARKER}.part", data)
                        os.replace(tmp / f"{MARKER}.part", tmp / MARKER)
                    else:
                        _write_file(tmp / name, data)
                _fsync_dir(tmp)
                old = aside_path(target)
                if target.exists():
                    os.replace(target, old)
                os.replace(tmp, target)
                _fsync_dir(self.path)
                _remove_quietly(old)
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
                    remove_checkpoint_dir(path)


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
        from charnn.locate import missing_checkpoint_hint

        hint = missing_checkpoint_hint(path) or " (train one with `charnn train`)"
        raise CheckpointError(f"{path}: no such checkpoint{hint}")
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
    from charnn.locate import missing_checkpoint_hint

    hint = missing_checkpoint_hint(path)
    raise CheckpointError(f"{path}: no checkpoint here (no {MARKER}, {BEST}/ or {LATEST}/){hint}")
