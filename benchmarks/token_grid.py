"""Quality on tokens: val bpc of ``charnn train`` runs at fixed token budgets (fixed --steps and
seed, so each figure is deterministic and does not depend on the machine's load).

Every run trains on the first 90 % of tiny Shakespeare and is scored on the last 10 %
(``--val-fraction 0.1``, validated once, at the end), with its schedule set for its own length
(``--steps``). Two experiments:

- ``schedule``: schedule, warm-up, peak lr, Adam beta2 and gradient clip, one at a time around a
  base, on a small shape (1x128, seq 64, batch 16) at 1M tokens (and the two schedules again at 3M);
- ``lr``: 1x256 and 1x384 at 0.8M tokens with lr 1e-2 (the schedule experiment's best);
- ``shapes``: the candidate shapes of charnn/budget_table.json at 0.8M and 2.4M tokens,
  the points :mod:`benchmarks.budget_table` fits its curves to.

Rows go to a JSON-lines file; a row already there is not run again, so an interrupted grid
resumes, and two workers can share a file (``--part 0/2`` and ``--part 1/2``)::

    .venv/bin/python benchmarks/token_grid.py shapes --out .bench/shapes.jsonl [--part 0/2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CORPUS = next(
    (
        p / "shared" / "corpora" / "tinyshakespeare.txt"
        for p in Path(__file__).resolve().parents
        if (p / "shared" / "corpora" / "tinyshakespeare.txt").is_file()
    ),
    Path("tinyshakespeare.txt"),
)

# The base of the schedule experiment, then one change at a time.
SCHEDULE_BASE = dict(
    layers=1,
    hidden=128,
    embed=64,
    seq_len=64,
    batch_size=16,
    lr=5e-3,
    warmup=50,
    schedule="linear",
    beta2=0.99,
    grad_clip=1.0,
)
SCHEDULE_VARIANTS = [
    {},
    {"schedule": "cosine"},
    {"warmup": 0},
    {"warmup": 200},
    {"lr": 2e-3},
    {"lr": 1e-2},
    {"beta2": 0.999},
    {"beta2": 0.95},
    {"grad_clip": 0.25},
    {"grad_clip": 5.0},
    {"tokens": 3_000_000},  # does the schedule's ranking hold at three times the tokens?
    {"tokens": 3_000_000, "schedule": "cosine"},
]
SHAPES = [
    dict(layers=1, hidden=128, embed=64),
    dict(layers=1, hidden=256, embed=64),
    dict(layers=1, hidden=384, embed=64),
    dict(layers=1, hidden=512, embed=64),
]
SHAPE_COMMON = dict(
    seq_len=64, batch_size=16, lr=5e-3, warmup=50, schedule="linear", beta2=0.99, grad_clip=1.0
)
TOKENS = [800_000, 2_400_000]


def experiment(name: str) -> list[dict[str, object]]:
    """The runs of an experiment, cheapest budgets first so that a partial grid is useful."""
    if name == "lr":  # the schedule experiment found 1e-2 far ahead of 5e-3 for 1x128: larger shapes too?
        return [{**SHAPE_COMMON, **s, "lr": 1e-2, "tokens": TOKENS[0]} for s in SHAPES[1:3]]
    if name == "schedule":
        return [{**SCHEDULE_BASE, "tokens": 1_000_000, **v} for v in SCHEDULE_VARIANTS]
    return [{**SHAPE_COMMON, **s, "tokens": n} for n in TOKENS for s in SHAPES]


def key(run: dict[str, object]) -> str:
    return json.dumps(run, sort_keys=True)


def train(run: dict[str, object], work: Path, threads: int) -> dict[str, object]:
    steps = max(1, int(run["tokens"]) // (int(run["seq_len"]) * int(run["batch_size"])))
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in run.items() if k != "tokens"]
    cmd = [
        sys.executable,
        "-m",
        "charnn",
        "train",
        str(CORPUS),
        "--out",
        str(work / "run"),
        "--force",
        "--steps",
        str(steps),
        "--val-fraction",
        "0.1",
        "--eval-every",
        str(steps),
        "--save-every",
        str(steps),
        "--sample-every",
        "0",
        "--threads",
        str(threads),
        "--cache-dir",
        str(work / "cache"),
        *flags,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=dict(os.environ, NO_COLOR="1"), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(proc.stderr[-2000:])
    rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r.get("kind") == "val"][-1]
    return {
        **run,
        "steps": steps,
        "val_bpc": round(val["bpc"], 4),
        "train_s": val["elapsed"],
        "wall_s": round(wall, 1),
        "load": round(os.getloadavg()[0], 2),
        "threads": threads,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", choices=("schedule", "shapes", "lr"))
    ap.add_argument("--out", type=Path, required=True, help="JSON-lines results (appended; resumes)")
    ap.add_argument("--part", default="0/1", help="K/N: run every N-th run from the K-th")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", type=int, nargs="*", help="indices of the runs to do (after --part)")
    args = ap.parse_args()
    k, n = (int(x) for x in args.part.split("/"))
    done = set()
    if args.out.exists():
        done = {
            key({f: r[f] for f in r if f in experiment(args.experiment)[0]})
            for r in map(json.loads, args.out.read_text().splitlines())
        }
    runs = experiment(args.experiment)[k::n]
    if args.only is not None:
        runs = [runs[i] for i in args.only]
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            if key(run) in done:
                continue
            row = train(run, Path(tmp), args.threads)
            print(json.dumps(row), flush=True)
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
