"""The numpy stepper's speed in this tree against another checkout of charnn, side by side.

For refactors that must not slow the sampler: ``git archive main | tar -x -C /tmp/base``, then

    .venv/bin/python benchmarks/stepper_ab.py /tmp/base [--repeats 7]

Each repeat runs one fresh process per tree, alternating (so a burst of outside load hits both
alike); every process builds the same seeded 2x256 LSTM (vocab 65) and times, through the API
both trees share: generate() with 1 stream, with 32 streams, beam 8, a 4,000-token prime and a
(16, 256) forward pass (eval's window). Prints the median of each figure per tree and the
ratio this/other (> 1: this tree is faster), with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import os, json, time
os.environ["OPENBLAS_NUM_THREADS"] = "1"
import numpy as np, torch
import charnn
from charnn.config import ModelConfig, SampleConfig
from charnn.model import CharRNN
from charnn.sampling import generate
from charnn.stepper import FastStepper
from charnn.tokenizer import CharTokenizer

torch.manual_seed(0)
tok = CharTokenizer([chr(48 + i) for i in range(65)])
model = CharRNN(ModelConfig(vocab_size=65, cell=CELL, layers=2, hidden=256, embed=64)).eval()
stepper = FastStepper.from_model(model)
ids = np.random.default_rng(0).integers(0, 65, (16, 256))

def rate(fn, units):
    start = time.perf_counter(); fn(); return units / (time.perf_counter() - start)

def gen(config):
    return lambda: generate(stepper, [0], config, tok, rng=np.random.default_rng(0))

gen(SampleConfig(length=50))()  # warm-up
out = {
    "1 stream, chars/s": rate(gen(SampleConfig(length=CHARS)), CHARS),
    "32 streams, chars/s": rate(gen(SampleConfig(length=CHARS // 4, num_samples=32)), 32 * (CHARS // 4)),
    "beam 8, positions/s": rate(gen(SampleConfig(length=CHARS // 4, beam=8)), CHARS // 4),
    "prime, tokens/s": rate(lambda: stepper.prime(ids[:1].repeat(16, axis=1)[:, :4000]), 4000),
    "forward 16x256, tokens/s": rate(lambda: stepper.forward(ids), ids.size),
}
print(json.dumps({"file": charnn.__file__, **out}))
"""


def run(tree: Path, cell: str, chars: int) -> dict[str, float]:
    code = CHILD.replace("CELL", repr(cell)).replace("CHARS", str(chars))
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-c", code]  # run in the tree: "-c" puts the working directory first on sys.path
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=True)
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    if not row.pop("file").startswith(str(tree)):
        raise SystemExit(f"{tree}: the child imported another charnn")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("other", type=Path, help="another charnn checkout (holding charnn/)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--chars", type=int, default=2000)
    args = ap.parse_args()
    here = Path(__file__).resolve().parent.parent
    trees = {"this": here, "other": args.other.resolve()}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    print(f"load average before: {os.getloadavg()}")
    for _ in range(args.repeats):
        for name, tree in trees.items():
            results[name].append(run(tree, args.cell, args.chars))
    print(f"load average after: {os.getloadavg()}")
    print(f"{args.cell} 2x256, medians of {args.repeats} interleaved runs; this = {here}")
    print(f"other = {args.other}")
    print(f"{'figure':<28}{'this':>12}{'other':>12}{'this/other':>12}")
    for key in results["this"][0]:
        a = statistics.median(r[key] for r in results["this"])
        b = statistics.median(r[key] for r in results["other"])
        print(f"{key:<28}{a:>12,.0f}{b:>12,.0f}{a / b:>12.3f}")


if __name__ == "__main__":
    main()
