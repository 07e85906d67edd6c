"""Finding what the user meant: the checkpoint behind ``-c``'s default, the runs below a path
that holds no checkpoint, and "did you mean" for a mistyped path or corpus name.

No torch import (``charnn sample`` stays torch-free). The default ``-c checkpoints`` is a
search: when ``./checkpoints`` holds no checkpoint itself, the newest run below it is used (and
named on stderr), so ``make demo`` (which trains into ``checkpoints/demo``) followed by a plain
``charnn sample`` works. A ``-c`` the user typed is never replaced: when it holds no checkpoint
the error lists the runs below it, or the close names beside it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path

DEFAULT_CHECKPOINTS = "checkpoints"  # -c's default: the default --out of `charnn train`
_SHOWN_RUNS = 5  # runs named in an error; more are counted


def close_match(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``name`` was most likely a typo of, or None."""
    found = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.75)
    return found[0] if found else None


def runs_below(path: Path) -> list[Path]:
    """Run directories below ``path`` (itself excluded), at any depth ``charnn runs`` looks."""
    from charnn.run_catalog import find_runs

    return [run for run in find_runs(path) if run != path]


def _age_key(run: Path) -> float:
    """When a run last saved: the newest mtime of its checkpoints' metadata (0 if unreadable)."""
    from charnn.rundir import BEST, LATEST, MARKER

    times = []
    for which in (LATEST, BEST):
        try:
            times.append((run / which / MARKER).stat().st_mtime)
        except OSError:
            pass
    return max(times, default=0.0)


def newest_run(path: Path) -> Path | None:
    """The run below ``path`` that saved last, or None when there is none."""
    runs = runs_below(path)
    return max(runs, key=lambda run: (_age_key(run), str(run))) if runs else None


def default_checkpoint(path: str = DEFAULT_CHECKPOINTS) -> str:
    """``-c``'s default: ``path`` when it holds a checkpoint (or does not exist: the error then
    says so), else the newest run below it, which is named on stderr."""
    from charnn.errors import CheckpointError
    from charnn.rundir import resolve_checkpoint

    where = Path(path)
    if not where.is_dir():
        return path
    try:
        resolve_checkpoint(where)
        return path
    except CheckpointError:
        pass
    run = newest_run(where)
    if run is None:
        return path
    from charnn.console import note

    note(f"using {run} (the newest run under {path}/; choose another with -c)")
    return str(run)


def missing_checkpoint_hint(path: Path) -> str:
    """What to say after "no checkpoint" for ``path``: the runs below it, or a close name."""
    if path.is_dir():
        runs = runs_below(path)
        if not runs:
            return ""
        shown = [f"{run}: use -c {run}" for run in runs[:_SHOWN_RUNS]]
        more = f" (and {len(runs) - _SHOWN_RUNS} more: charnn runs {path})" if len(runs) > _SHOWN_RUNS else ""
        return "; found: " + "; ".join(shown) + more
    parent = path.parent
    try:
        names = [p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return ""
    guess = close_match(path.name, names)
    if guess is None:
        return ""
    return f"; did you mean {os.path.join(str(parent), guess) if str(parent) != '.' else guess}?"
