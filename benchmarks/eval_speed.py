"""``charnn eval`` of 1 MB: the code before issue 20 against today's, side by side.

Issue 20's goal: eval of 1 MB at least 2x faster than before on the same machine. "Before" is
the real code of ``--old-commit`` (default bd354a0, the last commit before issue 20's work),
unpacked with ``git archive`` into a temporary directory and run from there; it left torch at
its default threads (a thread per core) whatever the machine was doing. Today's eval chooses
its threads (charnn.threads) and shows progress. Each version trains its own checkpoint (the
default 2x256 LSTM, 3 steps: speed does not depend on the weights) and evaluates the same text
as a whole process. Runs alternate old/new, the order flipping per round, in two modes:

    idle   the machine as it is (check the load average printed before each run)
    busy   beside --busy busy-loop processes (default 1) this script starts: the situation the
           issue measured (its 1.1 MB took 63 s with torch's default threads, 27 s with
           OMP_NUM_THREADS=1)

A run past --timeout is stopped and counted at the timeout, so a ratio built on it is a bound
(marked >=). Prints each run with the load average before it, then medians per mode. Run:

    .venv/bin/python benchmarks/eval_speed.py [--bytes 1000000] [--rounds 3] [--modes idle busy]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = "/work/shared/corpora/tinyshakespeare.txt"
OLD_COMMIT = "bd354a0"


def charnn(code: Path, *args: str, timeout: float | None = None) -> tuple[float, bool]:
    """(wall seconds, finished) of ``charnn ARGS`` run from the source tree ``code``."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(NO_COLOR="1", PYTHONPATH=str(code))
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "charnn", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=code,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, False
    if proc.returncode != 0:
        raise SystemExit(f"charnn {' '.join(args)} ({code}) failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - start, True


def unpack(commit: str, into: Path) -> Path:
    """The ``charnn`` package of ``commit`` (and its registry), unpacked under ``into``."""
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(
            into, members=[m for m in tar.getmembers() if m.name.split("/")[0] in ("charnn", "corpora")]
        )
    return into


def busy_processes(n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", nargs="?", default=DEFAULT_CORPUS)
    ap.add_argument("--bytes", type=int, default=1_000_000, help="evaluate the first N bytes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["idle", "busy"], choices=["idle", "busy"])
    ap.add_argument("--busy", type=int, default=1, help="busy-loop processes in the busy mode")
    ap.add_argument("--old-commit", default=OLD_COMMIT)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds before a run is stopped")
    args = ap.parse_args()
    times: dict[tuple[str, str], list[tuple[float, bool]]] = {}
    with tempfile.TemporaryDirectory(prefix="charnn-eval-speed-") as tmp:
        text = Path(tmp) / "text.txt"
        text.write_bytes(Path(args.corpus).read_bytes()[: args.bytes])
        trees = {"old": unpack(args.old_commit, Path(tmp) / "old"), "new": ROOT}
        for name, code in trees.items():
            charnn(
                code,
                "train",
                str(text),
                "-o",
                f"{tmp}/{name}-run",
                "--steps",
                "3",
                "--layers",
                "2",
                "--hidden",
                "256",
            )
        print(
            f"eval of {args.bytes:,} bytes; old = {args.old_commit}; busy = {args.busy};"
            f" load: {os.getloadavg()}"
        )
        for mode in args.modes:
            for r in range(args.rounds):
                for name in list(trees)[:: 1 if r % 2 == 0 else -1]:
                    busy = busy_processes(args.busy if mode == "busy" else 0)
                    try:
                        time.sleep(1.0 if busy else 0.0)  # let the busy loop take its core
                        load = os.getloadavg()[0]
                        wall, done = charnn(
                            trees[name], "eval", str(text), "-c", f"{tmp}/{name}-run", timeout=args.timeout
                        )
                    finally:
                        for proc in busy:
                            proc.kill()
                            proc.wait()
                    times.setdefault((mode, name), []).append((wall, done))
                    stopped = "" if done else f" (stopped at the {args.timeout:g} s timeout)"
                    print(
                        f"  {mode} round {r + 1}: {name}  {wall:7.1f} s{stopped}  load {load:.2f}", flush=True
                    )
    print()
    for mode in args.modes:
        old = statistics.median(t for t, _ in times[(mode, "old")])
        new = statistics.median(t for t, _ in times[(mode, "new")])
        bound = ">=" if not all(done for _, done in times[(mode, "old")]) else ""
        print(f"{mode}: medians old {old:.1f} s, new {new:.1f} s; new is {bound}{old / new:.2f}x faster")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
