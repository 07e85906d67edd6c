"""Looking back at runs: what a checkpoint says about itself, and every run under a directory.

No torch import: ``charnn runs`` reads only each run's ``meta.json`` (the weights are not
loaded), so listing a directory of big runs is instant. ``charnn info`` validates the whole
checkpoint first and then describes it with the same :func:`describe`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from charnn.arch import parameter_count
from charnn.config import ModelConfig
from charnn.rundir import LATEST, MARKER, RunDir, resolve_checkpoint

MAX_DEPTH = 6  # directories below DIR that `charnn runs` looks into
SKIP_DIRS = {"node_modules", "__pycache__", "site-packages", "venv"}  # besides hidden ones (.git, .venv)


def count_parameters(model: dict[str, Any]) -> int:
    """Parameters of a model config (as stored in meta.json), without building the model."""
    return parameter_count(ModelConfig.from_dict(model, stored_as="model"))


def describe(meta: dict[str, Any], path: Path | str) -> dict[str, Any]:
    """A checkpoint's metadata as structured data: numbers as numbers, the model config as an
    object, the tokenizer's kind and size (never its vocabulary blob)."""
    model = dict(meta.get("model") or {})
    progress = meta.get("progress") or {}
    tokenizer = meta.get("tokenizer") or {}
    val = progress.get("val") or None
    return {
        "path": str(path),
        "format": meta.get("format"),
        "version": meta.get("version"),
        "model": model,
        "parameters": count_parameters(model) if model else None,
        "tokenizer": {"kind": tokenizer.get("kind"), "vocab_size": model.get("vocab_size")},
        "step": progress.get("step"),
        "optimizer_steps": progress.get("optimizer_steps"),
        "skipped_steps": progress.get("skipped_steps"),
        "trained_seconds": progress.get("elapsed"),
        "tokens_seen": progress.get("tokens"),
        "chars_seen": progress.get("chars"),
        "val": val,
        "val_bpc": val.get("bpc") if val else None,
        "best_val_bpc": progress.get("best_val_bpc"),
        "stopped_reason": progress.get("stopped_reason"),
        "train": meta.get("train"),
        "corpus": meta.get("corpus"),
        "run": meta.get("run"),
        "parent": meta.get("parent"),  # a fine-tuned run (--init-from): where its weights came from
        "charnn_version": meta.get("charnn_version"),
        "created": meta.get("created"),
    }


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def model_text(model: dict[str, Any]) -> str:
    if not model:
        return "-"
    text = f"{model.get('cell')} {model.get('layers')}x{model.get('hidden')}"
    return text + (", tied" if model.get("tie_weights") else "")


def info_lines(info: dict[str, Any]) -> list[str]:
    """``charnn info``'s text: one ``key value`` line per fact people look for."""
    model = info["model"]
    corpus = info.get("corpus") or {}
    run = info.get("run") or {}
    rows = {
        "path": info["path"],
        "format": f"{info['format']} v{info['version']}",
        "model": f"{model_text(model)}, embed {model.get('embed')}, dropout {model.get('dropout')}",
        "parameters": f"{info['parameters']:,}" if info["parameters"] is not None else "-",
        "tokenizer": _tokenizer_text(info["tokenizer"]),
        "step": info["step"],
        "val_bpc": _bpc(info["val_bpc"]),
        "val_bpt": _bpc(info.get("val_bpt")),
        "best_val_bpc": _bpc(info["best_val_bpc"]),
        "skipped_steps": info["skipped_steps"],
        "trained": duration_text(info["trained_seconds"]),
        "corpus": ", ".join(corpus.get("sources", [])),
        "created": info["created"],
    }
    if run:
        rows["command"] = " ".join(run.get("argv") or [])
        rows["versions"] = f"charnn {run.get('charnn')}, torch {run.get('torch')}, device {run.get('device')}"
    parent = info.get("parent")
    if isinstance(parent, dict):
        rows["parent"] = f"{parent.get('path')} (step {parent.get('step')})"
    if info.get("stopped_reason"):
        rows["stopped"] = info["stopped_reason"]
    return [f"{key:16} {value}" for key, value in rows.items()]


def _tokenizer_text(tokenizer: dict[str, Any]) -> str:
    text = f"{tokenizer['kind']}, {tokenizer['vocab_size']} tokens"
    if tokenizer.get("unk") is not None:
        text += f" (one stands for {tokenizer['unk']} rare characters)"
    if tokenizer.get("normalize"):
        text += f", {tokenizer['normalize'].upper()}-normalised"
    return text


# ---------------------------------------------------------------------------- charnn runs


def find_runs(root: Path, max_depth: int = MAX_DEPTH) -> Iterator[Path]:
    """Run directories under ``root`` (itself included), in a stable order. Hidden directories,
    virtual environments and node_modules are skipped; a run's own checkpoints are not entered."""
    root = Path(root)
    if RunDir(root).holds_run():
        yield root
        return
    if max_depth <= 0:
        return
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return
    for child in children:
        if child.name.startswith(".") or child.name in SKIP_DIRS or (child / "pyvenv.cfg").exists():
            continue
        yield from find_runs(child, max_depth - 1)


def run_row(run: Path, root: Path) -> dict[str, Any]:
    """One row of ``charnn runs``: the run's latest checkpoint metadata (steps, time) and best bpc."""
    ckpt = resolve_checkpoint(run, prefer=LATEST)
    with open(ckpt / MARKER, encoding="utf-8") as fh:
        meta = json.load(fh)
    info = describe(meta, ckpt)
    name = os.path.relpath(run, root) if run != root else run.resolve().name or str(run)
    corpus = info.get("corpus") or {}
    model = info["model"]
    return {
        "name": name,
        "path": str(run),
        "best_val_bpc": info["best_val_bpc"],
        "steps": info["step"],
        "trained_seconds": info["trained_seconds"],
        "cell": model.get("cell"),
        "layers": model.get("layers"),
        "hidden": model.get("hidden"),
        "parameters": info["parameters"],
        "tokenizer": info["tokenizer"],
        "corpus": corpus.get("sources", []),
        "date": info["created"],
        "stopped_reason": info["stopped_reason"],
    }


def list_runs(root: Path, warn: Any = None) -> list[dict[str, Any]]:
    """Rows for every run under ``root``, best validation bpc first, runs never validated last."""
    rows = []
    for run in find_runs(root):
        try:
            rows.append(run_row(run, root))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            if warn is not None:
                warn(f"{run}: skipped, unreadable metadata ({exc})")
        except Exception as exc:  # e.g. CheckpointError from a half-deleted run
            if warn is not None:
                warn(f"{run}: skipped ({exc})")
    rows.sort(key=lambda r: (r["best_val_bpc"] is None, r["best_val_bpc"] or 0.0, r["name"]))
    return rows


def runs_table(rows: list[dict[str, Any]]) -> str:
    """Plain aligned columns (stdout: the table is what `charnn runs` is asked for, like ls)."""
    header = ["run", "best bpc", "steps", "time", "model", "params", "tokenizer", "corpus", "date"]
    body = []
    for r in rows:
        bpc = r["best_val_bpc"]
        corpus = ", ".join(Path(s).name if s != "-" else "<stdin>" for s in r["corpus"]) or "-"
        if len(corpus) > 32:
            corpus = corpus[:31] + "…"
        tok = r["tokenizer"]
        body.append(
            [
                r["name"],
                f"{bpc:.4f}" if bpc is not None else "-",
                str(r["steps"]),
                duration_text(r["trained_seconds"]),
                f"{r['cell']} {r['layers']}x{r['hidden']}",
                _compact(r["parameters"]),
                f"{tok['kind']} {tok['vocab_size']}",
                corpus,
                (r["date"] or "-").replace("T", " ").rstrip("Z")[:16],
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
