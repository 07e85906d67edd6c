"""``charnn plot``: training and validation bpc curves of one or more runs, from their metrics.jsonl.

Two renderers over the same :class:`Series`: :func:`text_chart` draws a compact character chart
with nothing beyond the standard library (any terminal, any pipe: one marker character per
series, so it stays readable without colour), and :func:`save_figure` draws a PNG or SVG with
matplotlib, which is imported only here and only when asked for (the ``plot`` extra).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charnn.console import shown
from charnn.errors import CharnnError, ConfigError, DataError
from charnn.metrics import METRICS, read_metrics
from charnn.metrics_rows import ProgressRow, ValRow

_X_FIELD = {"steps": "step", "time": "elapsed", "chars": "chars"}
# (train, val) markers per run: distinct shapes, so a chart without colour still tells them apart.
MARKERS = [("·", "●"), ("+", "▲"), ("x", "■"), ("-", "◆"), ("'", "★"), (":", "◎")]
COLORS = ["cyan", "magenta", "yellow", "green", "blue", "red"]


@dataclass(frozen=True)
class Series:
    run: str  # the run's name, printed literally
    kind: str  # "train" or "val"
    xs: list[float]
    ys: list[float]


def metrics_path(run: str) -> Path:
    """A run directory, a checkpoint inside one, or a metrics file itself -> the metrics file."""
    path = Path(run)
    if path.is_file():
        return path
    for candidate in (path / METRICS, path.parent / METRICS):
        if candidate.is_file():
            return candidate
    if not path.exists():
        raise DataError(f"{run}: no such run directory")
    raise DataError(
        f"{run}: no {METRICS} here (runs trained before charnn kept a history have none; "
        "`charnn info` still describes them)"
    )


def load_series(runs: list[str], x: str) -> list[Series]:
    """Train and validation bpc of each run against ``x`` (steps, time in seconds, or chars).
    Both are bits per character, whatever the tokenizer; each run is named by the shortest
    trailing part of its path that tells it from the others (``xa/run``, ``xb/run``)."""
    key = _X_FIELD[x]
    out = []
    paths = [metrics_path(run) for run in runs]
    names = run_labels([p.parent.resolve() if p.name == METRICS else p.resolve() for p in paths])
    for run, path, name in zip(runs, paths, names, strict=True):
        rows = read_metrics(path)
        for kind in ("train", "val"):
            wanted = ProgressRow if kind == "train" else ValRow
            points = [p for r in rows if isinstance(r, wanted) and (p := _point(r, key)) is not None]
            if points:
                out.append(Series(name, kind, [p[0] for p in points], [p[1] for p in points]))
        if not any(s.run == name for s in out):
            raise DataError(f"{run}: {path.name} holds no progress rows yet")
    return out


def _number(value: Any) -> bool:
    """A value worth plotting: a finite, non-negative number of a sane size. Steps, seconds,
    characters and bits per character are never negative, and a forged row's ±1e308 would
    make the axis range itself infinite: such points are skipped."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= PLOT_MAX
    )


PLOT_MAX = 1e15  # above any real step, second or character count, and any bpc


def run_labels(paths: list[Path]) -> list[str]:
    """For each path, its shortest trailing part that no other (different) path ends with:
    ``xa/run`` and ``xb/run`` for two runs named ``run`` (the same run twice keeps one name)."""
    parts = [p.parts for p in paths]
    labels = []
    for mine in parts:
        others = [q for q in parts if q != mine]
        depth = next(
            (d for d in range(1, len(mine) + 1) if all(q[-d:] != mine[-d:] for q in others)), len(mine)
        )
        labels.append("/".join(mine[-depth:]).lstrip("/") or str(Path(*mine)))
    return labels


def _point(row: ProgressRow | ValRow, key: str) -> tuple[float, float] | None:
    """(x, bpc) of a training or validation row; None where a measurement is missing (NaN)."""
    x: Any = getattr(row, key)
    bpc = row.char_bpc if isinstance(row, ProgressRow) else row.bpc
    if bpc is None or not _number(bpc) or not _number(x):
        return None
    return float(x), float(bpc)


def y_range(series: list[Series]) -> tuple[float, float]:
    """The bpc range worth showing: the first few percent of a run (bpc falling from ~6) would
    flatten everything after it, so the top is set by what follows them and validation."""
    x_max = max(max(s.xs) for s in series)
    shown = [
        y for s in series for x, y in zip(s.xs, s.ys, strict=True) if s.kind == "val" or x >= 0.05 * x_max
    ]
    shown = shown or [y for s in series for y in s.ys]
    low, high = min(shown), max(shown)
    pad = (high - low) * 0.05 or 0.05
    return low - pad, high + pad


def x_text(value: float, x: str) -> str:
    if x == "time":
        value = int(round(value))
        if value >= 3600:
            return f"{value // 3600}h{value % 3600 // 60:02d}m"
        return f"{value // 60}m{value % 60:02d}s"
    if value >= 1e6:
        return f"{value / 1e6:.3g}M"
    if value >= 1e4:
        return f"{value / 1e3:.3g}k"
    return f"{value:.0f}"


# ---------------------------------------------------------------------------- terminal


def text_chart(series: list[Series], x: str, width: int = 80, height: int = 16, color: bool = False) -> str:
    """The curves as lines of text: y axis in bpc on the left, ``x`` below, a legend last."""
    width = max(40, width)
    runs = list(dict.fromkeys(s.run for s in series))
    y_low, y_high = y_range(series)
    x_low = min(min(s.xs) for s in series)
    x_high = max(max(s.xs) for s in series)
    label_w = 6
    cols = width - label_w - 2
    grid: list[list[str]] = [[" "] * cols for _ in range(height)]

    def cell(xv: float, yv: float) -> tuple[int, int]:
        c = round((xv - x_low) / ((x_high - x_low) or 1) * (cols - 1))
        r = round((y_high - min(max(yv, y_low), y_high)) / ((y_high - y_low) or 1) * (height - 1))
        return r, c

    for s in sorted(series, key=lambda s: s.kind == "val"):  # validation drawn on top
        marker = MARKERS[runs.index(s.run) % len(MARKERS)][s.kind == "val"]
        if color:
            marker = f"\x1b[{_ansi(COLORS[runs.index(s.run) % len(COLORS)])}m{marker}\x1b[0m"
        points = list(zip(s.xs, s.ys, strict=True))
        for (x0, y0), (x1, y1) in zip(points, points[1:] or points, strict=False):
            (r0, c0), (r1, c1) = cell(x0, y0), cell(x1, y1)
            for c in range(c0, max(c0, c1) + 1):  # join the samples: one mark per column between
                t = (c - c0) / (c1 - c0) if c1 != c0 else 0.0
                grid[round(r0 + (r1 - r0) * t)][c] = marker
    lines = []
    labelled = {round(i * (height - 1) / 3) for i in range(4)}  # top, bottom and two between
    for r, row in enumerate(grid):
        label = f"{y_high - r * (y_high - y_low) / (height - 1):.2f}" if r in labelled else ""
        lines.append(f"{label:>{label_w}} ┤{''.join(row)}".rstrip())
    lines.append(" " * label_w + " └" + "─" * cols)
    left, right = x_text(x_low, x), x_text(x_high, x)
    middle = f"{x} →"
    gap = cols - len(left) - len(right)
    lines.append(" " * (label_w + 2) + left + middle.center(max(gap, len(middle) + 2)) + right)
    legend = []
    for i, run in enumerate(runs):
        train_m, val_m = MARKERS[i % len(MARKERS)]
        name = shown(run)  # a run directory's name may hold escape sequences or newlines
        legend.append(f"{train_m} {name} train  {val_m} {name} val")
    lines.append(" " * (label_w + 2) + "bpc; " + "   ".join(legend))
    return "\n".join(lines) + "\n"


def _literal(name: str) -> str:
    """A run name as matplotlib prints it: no mathtext ($), not hidden (a leading _ hides a label)."""
    name = shown(name).replace("$", r"\$")
    return "\u200b" + name if name.startswith("_") else name


def _ansi(name: str) -> str:
    return str(30 + ["black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"].index(name))


# ---------------------------------------------------------------------------- matplotlib


def save_figure(series: list[Series], x: str, out: Path) -> None:
    """Write the curves to ``out`` (.png or .svg) with matplotlib (the ``plot`` extra)."""
    suffix = out.suffix.lower()
    if suffix not in (".png", ".svg"):
        raise ConfigError(f"-o {out}: choose a .png or .svg file name")
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed, none used
        import matplotlib.pyplot as plt
    except ImportError:
        raise CharnnError("plot -o needs matplotlib: pip install 'charnn[plot]'") from None
    runs = list(dict.fromkeys(s.run for s in series))
    scale, unit = (60.0, "minutes") if x == "time" else (1.0, {"steps": "steps", "chars": "characters"}[x])
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for s in series:
        color = f"C{runs.index(s.run) % 10}"
        name = _literal(s.run)
        xs = [v / scale for v in s.xs]
        if s.kind == "train":
            ax.plot(xs, s.ys, color=color, alpha=0.35, linewidth=1, label=f"{name} train")
        else:
            ax.plot(xs, s.ys, color=color, marker="o", markersize=3, linewidth=1.6, label=f"{name} val")
    ax.set_ylim(*y_range(series))
    ax.set_xlabel(f"training {unit}" if x != "time" else "wall-clock time (minutes)")
    ax.set_ylabel("bits per character")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    try:
        fig.savefig(out, format=suffix[1:])
    except OSError as exc:
        raise CharnnError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
