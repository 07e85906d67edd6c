"""Start-up cost of the CLI, as a shell script pays it: time and peak memory per process.

Measures, side by side in one run (interleaved, best of --repeats each):

* ``python -c pass`` (the interpreter) and ``python -c "import numpy, safetensors.numpy"``
  (the floor for anything that reads a checkpoint into numpy: the baseline of the ratios);
* ``python -c "import click, rich"`` and ``python -c "import torch"`` (for scale);
* ``charnn --help``, ``charnn sample -c CKPT --length 1`` and ``--length 20000`` (a long
  stream: memory must not grow with the length);
* a shell loop running ``charnn sample -c CKPT --length 1`` 100 times (per iteration).

Peak memory is the child's maximum resident set (``getrusage(RUSAGE_CHILDREN)`` read in a
small wrapper process per measurement). Without ``--checkpoint`` it builds a 2x256 LSTM
checkpoint (vocabulary 65, random weights: start-up does not depend on training). Prints a
table with ratios and writes JSON (``--json-out``). POSIX only (a shell loop, getrusage). Run:

    .venv/bin/python benchmarks/startup.py [--checkpoint DIR] [--repeats 5] [--json-out startup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable
CHARNN = [PY, "-m", "charnn"]
# Runs argv[1:] and prints its wall time and the peak RSS (KiB on Linux) of its process tree.
WRAPPER = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter(); subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)\n"
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def measure(argv: list[str]) -> tuple[float, float]:
    """(seconds, peak MB) of one run of ``argv``."""
    out = subprocess.run([PY, "-c", WRAPPER, *argv], capture_output=True, text=True, check=True).stdout
    seconds, kib = out.split()
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20  # macOS reports bytes
    return float(seconds), int(kib) * scale


def make_checkpoint(directory: Path) -> Path:
    import torch

    from charnn.checkpoint import save_checkpoint
    from charnn.config import ModelConfig
    from charnn.model import CharRNN
    from charnn.tokenizer import CharTokenizer

    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=65, cell="lstm", layers=2, hidden=256, embed=64))
    save_checkpoint(directory, model, CharTokenizer([chr(48 + i) for i in range(65)]))
    return directory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="a 2x256 LSTM checkpoint (default: build one)")
    ap.add_argument("--repeats", type=int, default=5, help="runs per row; the fastest is shown")
    ap.add_argument("--loop", type=int, default=100, help="iterations of the shell loop")
    ap.add_argument("--json-out", type=Path, default=Path("startup.json"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or make_checkpoint(Path(tmp) / "ckpt")
        sample = [*CHARNN, "sample", "-c", str(ckpt), "--seed", "1", "--length"]
        rows: dict[str, list[str]] = {
            "python -c pass": [PY, "-c", "pass"],
            "import numpy, safetensors.numpy": [PY, "-c", "import numpy, safetensors.numpy"],
            "import click, rich": [PY, "-c", "import click, rich"],
            "import torch": [PY, "-c", "import torch"],
            "charnn --help": [*CHARNN, "--help"],
            "charnn sample --length 1": [*sample, "1"],
            "charnn sample --length 20000": [*sample, "20000"],
        }
        best = {name: (float("inf"), 0.0) for name in rows}
        for _ in range(args.repeats):  # interleaved: a burst of outside load hits every row alike
            for name, argv in rows.items():
                seconds, mb = measure(argv)
                best[name] = (min(best[name][0], seconds), max(best[name][1], mb))
        loop = f"for i in $(seq {args.loop}); do {shlex.join([*sample, '1'])} >/dev/null; done"
        start = time.perf_counter()
        subprocess.run(["sh", "-c", loop], check=True)
        loop_s = time.perf_counter() - start
    base = best["import numpy, safetensors.numpy"][0]
    print(f"{'command':<34}{'seconds':>9}{'vs numpy':>10}{'peak MB':>9}")
    for name, (seconds, mb) in best.items():
        print(f"{name:<34}{seconds:>9.3f}{seconds / base:>9.1f}x{mb:>9.0f}")
    per = loop_s / args.loop
    print(f"{'shell loop, per sample --length 1':<34}{per:>9.3f}{per / base:>9.1f}x{'':>9}")
    print(f"shell loop of {args.loop}: {loop_s:.1f} s in all")
    ratio = best["charnn sample --length 1"][0] / base
    print(
        f"goal: sample --length 1 <= 3x the numpy import ({ratio:.1f}x), "
        f"peak < 100 MB ({best['charnn sample --length 1'][1]:.0f} MB)"
    )
    result = {
        "rows": {name: {"seconds": s, "peak_mb": mb, "vs_numpy": s / base} for name, (s, mb) in best.items()},
        "loop": {"iterations": args.loop, "seconds": loop_s, "per_iteration": per},
        "python": sys.version.split()[0],
        "repeats": args.repeats,
    }
    args.json_out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
