"""Training speed per shape, as a ratio to the reference shape measured side by side.

For each repetition, every shape is timed right after the reference (1x256, seq 64, batch 32),
with the same code the run's start-up probe uses (:func:`charnn.budget_probe.step_rate`: forward,
backward and AdamW step on random tokens), so a ratio compares two figures taken seconds apart
under the same load. Prints one JSON row per measurement and a median ratio per shape and thread
count; ``benchmarks/budget_table.py --speed`` reads the rows::

    .venv/bin/python benchmarks/shape_speed.py --threads 2 1 --reps 2 --out speed.jsonl

The 2026-12 table was made from a first version of this survey on the idle 2-core machine
(load 0.5-1.5); see docs/budget.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from charnn.budget import Candidate, load_table
from charnn.budget_probe import step_rate

SHAPES = ["1x128", "1x256", "1x384", "1x512", "2x256", "2x384", "2x512", "3x512"]


def shape(name: str, reference: Candidate) -> Candidate:
    """``LxH`` at the reference's seq, batch and embedding."""
    layers, hidden = (int(x) for x in name.split("x"))
    return Candidate(
        name,
        layers,
        hidden,
        reference.embed,
        reference.seq_len,
        reference.batch_size,
        reference.lr,
        1.0,
        0.0,
        0.0,
        0.0,
        0.0,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="*", default=SHAPES)
    ap.add_argument("--threads", type=int, nargs="*", default=[torch.get_num_threads()])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0, help="timed per measurement")
    ap.add_argument("--out", type=Path, help="append JSON rows here")
    args = ap.parse_args()
    table = load_table()
    ref = table.by_name(table.reference)
    ratios: dict[tuple[str, int], list[float]] = {}
    for rep in range(args.reps):
        for name in args.shapes:
            for threads in args.threads:
                torch.set_num_threads(threads)
                r_ref = step_rate(ref, torch.device("cpu"), args.seconds)
                r = step_rate(shape(name, ref), torch.device("cpu"), args.seconds)
                row = {
                    "rep": rep,
                    "shape": name,
                    "threads": threads,
                    "chars_s": round(r),
                    "reference_chars_s": round(r_ref),
                    "ratio": round(r / r_ref, 4),
                    "load": round(os.getloadavg()[0], 2),
                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
                ratios.setdefault((name, threads), []).append(r / r_ref)
                print(json.dumps(row), flush=True)
                if args.out:
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
    for (name, threads), rs in sorted(ratios.items()):
        print(f"{name:>6} {threads} threads: {statistics.median(rs):.3f}x the reference")


if __name__ == "__main__":
    main()
