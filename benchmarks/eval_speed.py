"""``charnn eval`` of 1 MB: the old thread policy against the new one, side by side.

Issue 20's goal: eval of 1 MB at least 2x faster than before on the same machine. Before, eval
left torch at its default (a thread per core) whatever the machine was doing; now it measures
on its first windows (charnn.threads). Both run as whole processes on the same checkpoint (the
default 2x256 LSTM, trained a few steps: speed does not depend on the weights) and text,
interleaved, the order alternating per round:

    old    charnn eval --threads <cores>    (what torch's default gave)
    new    charnn eval                      (measured)

A run that exceeds --timeout is stopped and counted at the timeout, so its ratio is a lower
bound (marked >=); its whole time is also extrapolated from its last progress line. Prints
each run with the load average before it, then medians. Run:

    .venv/bin/python benchmarks/eval_speed.py [--bytes 1000000] [--rounds 3] [--timeout 600] [CORPUS]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = "/work/shared/corpora/tinyshakespeare.txt"


def charnn(*args: str, timeout: float | None = None) -> tuple[float, bool, str]:
    """(wall seconds, finished, stderr) of ``charnn ARGS``, OMP settings removed."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["NO_COLOR"] = "1"
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "charnn", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode("utf-8", "replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return time.perf_counter() - start, False, err
    if proc.returncode != 0:
        raise SystemExit(f"charnn {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - start, True, proc.stderr


def extrapolated(wall: float, stderr: str) -> float | None:
    """A stopped run's whole time, from its last progress line ("(N/M tokens"), if it printed one."""
    found = re.findall(r"\(([\d,]+)/([\d,]+) tokens", stderr)
    if not found:
        return None
    done, total = (int(x.replace(",", "")) for x in found[-1])
    return wall * total / max(done, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", nargs="?", default=DEFAULT_CORPUS)
    ap.add_argument("--bytes", type=int, default=1_000_000, help="evaluate the first N bytes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds before a run is stopped")
    args = ap.parse_args()
    from charnn.hardware import physical_cores

    cores = physical_cores()
    with tempfile.TemporaryDirectory(prefix="charnn-eval-speed-") as tmp:
        text = Path(tmp) / "text.txt"
        text.write_bytes(Path(args.corpus).read_bytes()[: args.bytes])
        run = Path(tmp) / "run"
        charnn("train", args.corpus, "-o", str(run), "--steps", "3", "--threads", "1", "--val-fraction", "0")
        contenders = {"old": ["--threads", str(cores)], "new": []}
        times: dict[str, list[tuple[float, bool]]] = {name: [] for name in contenders}
        print(f"{cores} cores; eval of {args.bytes:,} bytes; load before: {os.getloadavg()}")
        for r in range(args.rounds):
            for name in list(contenders)[:: 1 if r % 2 == 0 else -1]:
                load = os.getloadavg()[0]
                wall, done, err = charnn(
                    "eval", str(text), "-c", str(run), *contenders[name], timeout=args.timeout
                )
                times[name].append((wall, done))
                guess = None if done else extrapolated(wall, err)
                state = "" if done else f" (stopped at the {args.timeout:g} s timeout"
                state += f"; ~{guess:.0f} s by its progress)" if guess else ")" if not done else ""
                print(f"  round {r + 1}: {name}  {wall:7.1f} s{state}  load {load:.2f}", flush=True)
    old = statistics.median(t for t, _ in times["old"])
    new = statistics.median(t for t, _ in times["new"])
    bound = ">=" if not all(done for _, done in times["old"]) else ""
    print(f"\nmedians: old {old:.1f} s, new {new:.1f} s; new is {bound}{old / new:.2f}x faster (goal >= 2)")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
