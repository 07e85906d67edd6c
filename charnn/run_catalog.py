"""Looking back at runs: what a checkpoint says about itself, and every run under a directory.

No torch import: ``charnn runs`` reads only each run's ``meta.json`` (the weights are not
loaded, every field is validated), so listing a directory of big runs is instant. ``charnn info``
validates the whole checkpoint first and then describes it with the same :func:`describe`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from charnn.arch import parameter_count
from charnn.checkpoint_meta import CheckpointMeta, Counters
from charnn.config import ModelConfig
from charnn.console import shown
from charnn.metrics_rows import ThreadsRecord
from charnn.results import InfoRow, RunRow, TokenizerSummary
from charnn.rundir import BEST, LATEST, RunDir, resolve_checkpoint

MAX_DEPTH = 6  # directories below DIR that `charnn runs` looks into
SKIP_DIRS = {"node_modules", "__pycache__", "site-packages", "venv"}  # besides hidden ones (.git, .venv)


def count_parameters(model: dict[str, Any]) -> int:
    """Parameters of a model config (as stored in meta.json), without building the model."""
    return parameter_count(ModelConfig.from_dict(model, stored_as="model"))


def describe(meta: CheckpointMeta, path: Path | str, parameters: int | None = None) -> InfoRow:
    """A checkpoint's validated metadata as ``info`` shows it; ``parameters`` when counted from the
    weights (else derived from the model config)."""
    from charnn.checkpoint_meta import FORMAT, VERSION

    tokenizer = meta.tokenizer
    unk = getattr(tokenizer, "unk", None)
    progress = meta.progress or Counters()
    val = progress.val or None
    trained = meta.progress is not None  # a checkpoint saved outside training has no counters
    return InfoRow(
        path=str(path),
        format=FORMAT,
        version=VERSION,
        model=meta.model,
        parameters=parameters if parameters is not None else count_parameters(meta.model.to_dict()),
        tokenizer=TokenizerSummary(
            tokenizer.kind, meta.model.vocab_size, unk or None, tokenizer.normalize or None
        ),
        step=progress.step if trained else None,
        optimizer_steps=progress.optimizer_steps if trained else None,
        skipped_steps=progress.skipped_steps if trained else None,
        trained_seconds=progress.elapsed if trained else None,
        tokens_seen=progress.tokens if trained else None,
        chars_seen=progress.chars if trained else None,
        val=val,
        val_bpc=val.get("bpc") if val else None,
        best_val_bpc=progress.best_val_bpc,
        stopped_reason=progress.stopped_reason,
        train=meta.train,
        corpus=meta.corpus,
        run=meta.run,
        parent=meta.parent,
        charnn_version=meta.charnn_version,
        created=meta.created,
        val_bpt=val.get("bpt") if val else None,
        best_averaged=progress.best_averaged,
    )


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def info_lines(info: InfoRow) -> list[str]:
    """``charnn info``'s text: one ``key value`` line per fact people look for."""
    model = info.model
    tied = ", tied" if model.tie_weights else ""
    rows: dict[str, object] = {
        "path": info.path,
        "format": f"{info.format} v{info.version}",
        "model": f"{model.cell} {model.layers}x{model.hidden}{tied}, embed {model.embed}, "
        f"dropout {model.dropout}" + (f", weight-drop {model.weight_drop}" if model.weight_drop else ""),
        "parameters": f"{info.parameters:,}",
        "tokenizer": _tokenizer_text(info.tokenizer),
        "step": info.step,
        "val_bpc": _bpc(info.val_bpc),
        "val_bpt": _bpc(info.val_bpt),
        "best_val_bpc": _bpc(info.best_val_bpc) + _averaged_text(info),
        "skipped_steps": info.skipped_steps,
        "trained": duration_text(info.trained_seconds),
        "corpus": ", ".join(info.corpus.sources if info.corpus is not None else []),
        "created": info.created,
    }
    if info.run is not None:
        run = info.run
        rows["command"] = " ".join(run.argv)
        rows["versions"] = f"charnn {run.charnn}, torch {run.torch}, device {run.device}"
        if run.budget is not None:  # the shape the budget chose (charnn.budget)
            rows["chosen"] = run.budget.reason
        if run.regularisation is not None:  # and the regularisation planned with it
            rows["regularised"] = run.regularisation.reason
    if info.train is not None and info.train.average != "none":
        train = info.train
        rows["averaging"] = f"{train.average} from {train.average_from:.0%} of the decay" + (
            f", decay {train.ema_decay:g}" if train.average == "ema" else ""
        )
    threads = threads_text(
        info.run.threads if info.run is not None else None,
        info.train.threads if info.train is not None else None,
    )
    if threads:
        rows["threads"] = threads
    if info.parent is not None:
        rows["parent"] = f"{info.parent.path} (step {info.parent.step})"
    if info.stopped_reason:
        rows["stopped"] = info.stopped_reason
    return [f"{key:16} {shown(str(value))}" for key, value in rows.items()]  # names escaped


def _averaged_text(info: InfoRow) -> str:
    if not info.best_averaged or info.train is None:
        return ""
    return f" (best/ holds the {info.train.average.upper()} weight average)"


def threads_text(record: ThreadsRecord | None, count: Any) -> str:
    """``2 (measured)``: the run's thread count and how it was chosen (only known words shown)."""
    from charnn.threads import HOWS

    if not isinstance(count, int) or isinstance(count, bool):
        return ""
    how = record.how if record is not None else None
    return f"{count} ({how})" if how in HOWS else str(count)


def _tokenizer_text(tokenizer: TokenizerSummary) -> str:
    text = f"{tokenizer.kind}, {tokenizer.vocab_size} tokens"
    if tokenizer.unk is not None:
        text += f" (one stands for {tokenizer.unk} rare characters)"
    if tokenizer.normalize:
        text += f", {tokenizer.normalize.upper()}-normalised"
    return text


# ---------------------------------------------------------------------------- charnn runs


def find_runs(root: Path, max_depth: int = MAX_DEPTH) -> Iterator[Path]:
    """Run directories under ``root`` (itself included) at any depth up to ``max_depth``, in a
    stable order; runs inside runs too. Hidden directories, virtual environments and
    node_modules are skipped; a run's own checkpoints are not entered."""
    root = Path(root)
    run = RunDir(root).holds_run()
    if run:
        yield root  # and on: `charnn train` into ./checkpoints does not hide checkpoints/demo
    if max_depth <= 0:
        return
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return
    for child in children:
        if child.name.startswith(".") or child.name in SKIP_DIRS or (child / "pyvenv.cfg").exists():
            continue
        if run and child.name in (LATEST, BEST):  # the run's own checkpoints
            continue
        yield from find_runs(child, max_depth - 1)


def run_row(run: Path, root: Path) -> RunRow:
    """One row of ``charnn runs``: the run's latest checkpoint metadata (steps, time) and best bpc."""
    from charnn.checkpoint import load_meta

    meta = load_meta(resolve_checkpoint(run, prefer=LATEST))
    progress, model = meta.progress, meta.model
    return RunRow(
        name=os.path.relpath(run, root) if run != root else run.resolve().name or str(run),
        path=str(run),
        best_val_bpc=progress.best_val_bpc if progress is not None else None,
        steps=progress.step if progress is not None else None,
        trained_seconds=progress.elapsed if progress is not None else None,
        cell=model.cell,
        layers=model.layers,
        hidden=model.hidden,
        parameters=count_parameters(model.to_dict()),
        tokenizer=TokenizerSummary(meta.tokenizer.kind, model.vocab_size),
        corpus=meta.corpus.sources if meta.corpus is not None else [],
        date=meta.created,
        stopped_reason=progress.stopped_reason if progress is not None else None,
    )


def list_runs(root: Path, warn: Callable[[str], None] | None = None) -> list[RunRow]:
    """Rows for every run under ``root``, best validation bpc first, runs never validated last.
    A run whose metadata does not validate is skipped with a warning (``warn``)."""
    from charnn.errors import CharnnError

    rows = []
    for run in find_runs(root):
        try:
            rows.append(run_row(run, root))
        except OSError as exc:
            if warn is not None:
                warn(f"{run}: skipped, unreadable metadata ({exc.strerror or exc})")
        except CharnnError as exc:  # a forged or damaged meta.json, a half-deleted run
            if warn is not None:
                warn(f"{run}: skipped ({exc})")
    rows.sort(key=lambda r: (r.best_val_bpc is None, r.best_val_bpc or 0.0, r.name))
    return rows


def runs_table(rows: list[RunRow]) -> str:
    """Plain aligned columns (stdout: the table is what `charnn runs` is asked for, like ls)."""
    header = ["run", "best bpc", "steps", "time", "model", "params", "tokenizer", "corpus", "date"]
    body = []
    for r in rows:
        bpc = r.best_val_bpc
        corpus = shown(", ".join(Path(s).name if s != "-" else "<stdin>" for s in r.corpus)) or "-"
        if len(corpus) > 32:
            corpus = corpus[:31] + "…"
        body.append(
            [
                shown(r.name),
                f"{bpc:.4f}" if bpc is not None else "-",
                str(r.steps),
                duration_text(r.trained_seconds),
                f"{r.cell} {r.layers}x{r.hidden}",
                _compact(r.parameters),
                shown(f"{r.tokenizer.kind} {r.tokenizer.vocab_size}"),
                corpus,
                shown(r.date or "-").replace("T", " ").rstrip("Z")[:16],
            ]
        )
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    right = {1, 2, 3, 5}
    lines = []
    for row in [header, *body]:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _bpc(value: float | None) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def _compact(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 10_000:
        return f"{n / 1e3:.0f}k"
    return str(n)
