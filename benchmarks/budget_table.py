"""Regenerate charnn/assets/budget_table.json: the budget chooser's table (see docs/budget.md).

Inputs:

- ``--quality``: rows of ``benchmarks/token_grid.py`` (val bpc of each candidate shape at fixed
  token budgets, tiny Shakespeare, first 90 % / last 10 %); rows with the grid's settings count,
  and per shape only those of its best learning rate;
- ``--speed``: rows of ``benchmarks/shape_speed.py`` (chars/s ratio to the reference, side by
  side), or of its first version (``layers``, ``hidden``, ``threads``, ``chars_s``, ``rep``).

Fit: one joint law over every shape at the grid's lr, ``bpc = E + A * P**-alpha + B *
(N/1M)**-beta`` (P recurrent+output parameters, N training tokens); then per measured shape, at
its best lr, its own ``a`` and ``b`` at the shared exponent ``c = beta`` (least squares over its
points; with a single token budget only ``a``, ``b`` from the law). Unmeasured shapes take the
joint law's curve and are marked with ``max_tokens = 0`` (extrapolated). Speeds: the median ratio
at ``--speed-threads`` threads; shapes without a measured speed get the FLOP ratio (marked)::

    .venv/bin/python benchmarks/budget_table.py --quality shapes.jsonl --speed speed.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "charnn" / "assets" / "budget_table.json"
REFERENCE = "1x256"
GRID_LR = 5e-3  # the learning rate every grid shape was run at (token_grid.py SHAPE_COMMON)
# The settings every grid row shares (benchmarks/token_grid.py SHAPE_COMMON), the lr aside.
GRID = {"seq_len": 64, "batch_size": 16, "warmup": 50, "schedule": "linear", "beta2": 0.99, "grad_clip": 1.0}
VOCAB = 65
# Candidates beyond the measured grid: (name, layers, hidden, seq, batch, lr, devices).
EXTRA = [
    ("2x512", 2, 512, 64, 32, 3e-3, ["cpu", "cuda"]),
    ("3x512", 3, 512, 64, 32, 3e-3, ["cpu", "cuda"]),
    ("2x768", 2, 768, 128, 64, 2e-3, ["cpu", "cuda"]),
    ("2x1024", 2, 1024, 128, 64, 2e-3, ["cpu", "cuda"]),
    ("3x1024", 3, 1024, 128, 64, 1.5e-3, ["cuda"]),
]


def params(layers: int, hidden: int, embed: int = 64) -> int:
    """Weights a step multiplies through per token (LSTM gates and the output layer)."""
    total = hidden * VOCAB
    for layer in range(layers):
        total += 4 * hidden * ((embed if layer == 0 else hidden) + hidden)
    return total


def fit_joint(rows: list[dict], floor: float) -> dict[str, float]:
    """Grid over E (at least ``floor``) and the exponents, least squares for A and B. A few
    points cannot place the asymptote E: the floor keeps it where this corpus's size puts it."""
    p = np.array([params(r["layers"], r["hidden"], r["embed"]) for r in rows], float)
    n = np.array([r["tokens"] / 1e6 for r in rows], float)
    y = np.array([r["val_bpc"] for r in rows], float)
    best = None
    grid = itertools.product(
        np.arange(floor, 2.6, 0.02), np.arange(0.05, 1.0, 0.025), np.arange(0.1, 1.0, 0.025)
    )
    for e, alpha, beta in grid:
        x = np.stack([p**-alpha, n**-beta], 1)
        coef, *_ = np.linalg.lstsq(x, y - e, rcond=None)
        if coef[0] < 0 or coef[1] < 0:
            continue
        err = float(np.sum((x @ coef + e - y) ** 2))
        if best is None or err < best[0] - 1e-12:
            best = (err, e, alpha, beta, coef)
    assert best is not None, "no fit with non-negative coefficients"
    err, e, alpha, beta, (a, b) = best
    return {"E": e, "A": a, "alpha": alpha, "B": b, "beta": beta, "rms": (err / len(rows)) ** 0.5}


def fit_shape(points: list[dict], c: float, b_law: float) -> tuple[float, float]:
    """``a`` and ``b`` at the shared exponent; with one token budget only ``a`` (``b`` from the law)."""
    n = np.array([r["tokens"] / 1e6 for r in points], float)
    y = np.array([r["val_bpc"] for r in points], float)
    if len(set(n.tolist())) < 2:
        return float(np.mean(y - b_law * n**-c)), b_law
    x = np.stack([np.ones_like(n), n**-c], 1)
    (a, b), *_ = np.linalg.lstsq(x, y, rcond=None)
    return float(a), float(b)


def speed_ratios(rows: list[dict], threads: int) -> dict[str, float]:
    """Median ratio to the reference per shape, at ``threads``."""
    ratios: dict[str, list[float]] = {}
    if rows and "ratio" in rows[0]:
        for r in rows:
            if r["threads"] == threads:
                ratios.setdefault(r["shape"], []).append(r["ratio"])
    else:  # the first survey: chars/s per (rep, shape), the reference in the same rep
        for r in rows:
            if r["threads"] != threads or r.get("seq", 64) != 64:
                continue
            ref = [
                q
                for q in rows
                if q["rep"] == r["rep"]
                and q["threads"] == threads
                and f"{q['layers']}x{q['hidden']}" == REFERENCE
                and q.get("seq", 64) == 64
            ]
            ratios.setdefault(f"{r['layers']}x{r['hidden']}", []).append(r["chars_s"] / ref[0]["chars_s"])
    return {k: statistics.median(v) for k, v in ratios.items()}


def grid_rows(rows: list[dict]) -> list[dict]:
    """Rows run with the grid's settings (any lr), so that the schedule experiment's rows for its
    small shape count too; per shape only its best learning rate: the lowest bpc at the smallest
    token budget every tried lr was run at (else the lr with the most rows)."""
    rows = [r for r in rows if all(r.get(k) == v for k, v in GRID.items()) and r.get("dropout", 0) == 0]
    by: dict[tuple[int, int], dict[float, list[dict]]] = {}
    for r in rows:
        by.setdefault((r["layers"], r["hidden"]), {}).setdefault(r["lr"], []).append(r)
    keep = []
    for lrs in by.values():
        common = set.intersection(*({r["tokens"] for r in pts} for pts in lrs.values()))
        if common:
            n = min(common)
            best = min(lrs, key=lambda lr: next(r["val_bpc"] for r in lrs[lr] if r["tokens"] == n))
        else:
            best = max(lrs, key=lambda lr: len(lrs[lr]))
        keep += lrs[best]
    return keep


def grid_rows_at(rows: list[dict], lr: float) -> list[dict]:
    return [
        r
        for r in rows
        if all(r.get(k) == v for k, v in GRID.items()) and r["lr"] == lr and not r.get("dropout")
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quality", type=Path, nargs="+", required=True)
    ap.add_argument("--speed", type=Path, required=True)
    ap.add_argument("--speed-threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--source", default="", help="where and when the inputs were measured")
    ap.add_argument(
        "--floor",
        type=float,
        default=1.9,
        help="least asymptote E (bpc): tiny Shakespeare's 1 MB caps what any model reaches on its last "
        "10 %% (nanoGPT's best baby GPT: 2.12)",
    )
    args = ap.parse_args()
    every = [json.loads(x) for q in args.quality for x in q.read_text().splitlines() if x.strip()]
    rows = grid_rows(every)
    speeds = speed_ratios(
        [json.loads(x) for x in args.speed.read_text().splitlines() if x.strip()], args.speed_threads
    )
    # The law (how bpc falls with tokens and parameters) from the grid's own lr, where every shape
    # has several token budgets; a shape whose best lr was tried at fewer budgets takes its
    # exponent and slope from here and its level from its own points.
    law = fit_joint([r for r in every if r in grid_rows_at(every, GRID_LR)], args.floor)
    ref_p = params(1, 256)
    cands = []
    shapes = sorted(
        {(r["layers"], r["hidden"], r["embed"], r["seq_len"], r["batch_size"], r["lr"]) for r in rows}
    )
    for layers, hidden, embed, seq, batch, lr in shapes:
        pts = [r for r in rows if (r["layers"], r["hidden"], r["lr"]) == (layers, hidden, lr)]
        a, b = fit_shape(pts, law["beta"], law["B"])
        name = f"{layers}x{hidden}"
        cands.append(
            dict(
                name=name,
                layers=layers,
                hidden=hidden,
                embed=embed,
                seq_len=seq,
                batch_size=batch,
                lr=lr,
                speed=round(speeds.get(name, ref_p / params(layers, hidden)), 4),
                speed_measured=name in speeds,
                a=round(a, 4),
                b=round(b, 4),
                c=round(law["beta"], 4),
                max_tokens=max(r["tokens"] for r in pts),
                points={str(r["tokens"]): r["val_bpc"] for r in pts},
            )
        )
    for name, layers, hidden, seq, batch, lr, devices in EXTRA:
        a = law["E"] + law["A"] * params(layers, hidden) ** -law["alpha"]
        cands.append(
            dict(
                name=name,
                layers=layers,
                hidden=hidden,
                embed=64,
                seq_len=seq,
                batch_size=batch,
                lr=lr,
                speed=round(speeds.get(name, ref_p / params(layers, hidden)), 4),
                speed_measured=name in speeds,
                a=round(a, 4),
                b=round(law["B"], 4),
                c=round(law["beta"], 4),
                max_tokens=0,
                devices=devices,
            )
        )
    table = {
        "reference": REFERENCE,
        "made": time.strftime("%Y-%m-%d", time.gmtime()),
        "source": args.source,
        "law": {k: round(v, 5) for k, v in law.items()},
        "speed_threads": args.speed_threads,
        "candidates": cands,
    }
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    print(json.dumps(law))
    for c in cands:
        print(
            f"{c['name']:>7} speed {c['speed']:.3f}{'' if c['speed_measured'] else ' (FLOPs)'}  "
            f"bpc(N) = {c['a']:.3f} + {c['b']:.3f} N^-{c['c']:.3f}  measured to {c['max_tokens']:.0f}"
        )


if __name__ == "__main__":
    main()
