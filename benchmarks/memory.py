"""Memory and start-up on a big corpus: resident memory per corpus byte, and corpus preparation
time on the first (encode into the cache) and second (reuse it) run.

Builds a ~100 MB corpus (tiny Shakespeare repeated) in a temporary directory, then runs, each in
its own process with a private cache directory:

- ``charnn train`` for a few steps on a tiny corpus (64 KB) and on the big one, first and second
  run; peak resident memory (ru_maxrss of the child) of the big runs minus the tiny run's,
  divided by the corpus bytes, is the cost per byte of text;
- the corpus preparation ``charnn train`` does (``charnn.app.read_corpus``), timed alone, cold
  and with the cache warm.

Goal (issue 11): at most 1.5 bytes per corpus byte; under a second of preparation on the second run.

    .venv/bin/python benchmarks/memory.py [--mb 100] [--json out.json]
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

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "tinyshakespeare.txt"
TRAIN = ("--steps", "3", "--eval-every", "1000", "--eval-chars", "20000", "--device", "cpu", "--seed", "1")
PREPARE = (
    "import sys, time; from charnn.app import read_corpus; t = time.perf_counter(); "
    "c = read_corpus([sys.argv[1]], None, 'strict', sys.argv[2]); "
    "print(time.perf_counter() - t, len(c.ids))"
)


def _source_text() -> bytes:
    for path in (SHAKESPEARE, Path("/work/shared/corpora/tinyshakespeare.txt")):
        if path.is_file():
            return path.read_bytes()
    from charnn.data import builtin_text

    return builtin_text().encode()


def peak_rss(argv: list[str], env: dict[str, str]) -> tuple[int, float]:
    """(peak resident bytes, wall seconds) of a child process (Linux/macOS: ru_maxrss)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{stderr}")
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return usage.ru_maxrss * scale, wall


def prepare_seconds(corpus: Path, cache: Path, env: dict[str, str]) -> float:
    out = subprocess.run(
        [sys.executable, "-c", PREPARE, str(corpus), str(cache)], env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        sys.exit(out.stderr)
    return float(out.stdout.split()[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=100.0, help="size of the big corpus in MB")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    env = dict(os.environ, NO_COLOR="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    base = _source_text()
    with tempfile.TemporaryDirectory(prefix="charnn-mem-") as tmp:
        root = Path(tmp)
        tiny, big = root / "tiny.txt", root / "big.txt"
        tiny.write_bytes(base[: 64 << 10])
        with big.open("wb") as fh:
            target = int(args.mb * 1e6)
            while fh.tell() < target:
                fh.write(base)
        size = big.stat().st_size

        def train(corpus: Path, cache: str) -> tuple[int, float]:
            out = root / f"run-{corpus.stem}-{cache}"
            argv = [sys.executable, "-m", "charnn", "train", str(corpus), "--out", str(out), "--force"]
            return peak_rss([*argv, *TRAIN, "--cache-dir", str(root / cache)], env)

        train(tiny, "c-tiny")  # warm the tiny cache: the baseline is a cached run
        rss_tiny, _ = train(tiny, "c-tiny")
        rss_first, wall_first = train(big, "c-big")
        rss_second, wall_second = train(big, "c-big")
        prep_cold = prepare_seconds(big, root / "c-prep", env)
        prep_warm = prepare_seconds(big, root / "c-prep", env)

    per_byte_first = (rss_first - rss_tiny) / size
    per_byte_second = (rss_second - rss_tiny) / size
    rows = [
        ("tiny corpus (64 KB), cached", rss_tiny, None, None, None),
        (f"{size / 1e6:.0f} MB, first run (encodes)", rss_first, per_byte_first, prep_cold, wall_first),
        (f"{size / 1e6:.0f} MB, second run (cache)", rss_second, per_byte_second, prep_warm, wall_second),
    ]
    print(f"{'run':34} {'peak RSS':>10} {'B/corpus B':>11} {'prepare s':>10} {'train wall s':>13}")
    for name, rss, per, prep, wall in rows:
        per_s = f"{per:11.3f}" if per is not None else f"{'':11}"
        prep_s = f"{prep:10.2f}" if prep is not None else f"{'':10}"
        wall_s = f"{wall:13.1f}" if wall is not None else f"{'':13}"
        print(f"{name:34} {rss / 2**20:8.0f}MB {per_s} {prep_s} {wall_s}")
    print(
        f"goal: <= 1.5 B/corpus byte (first {per_byte_first:.3f}, second {per_byte_second:.3f}); "
        f"second-run preparation < 1 s ({prep_warm:.2f} s; {prep_cold / max(prep_warm, 1e-9):.0f}x faster "
        "than the first)"
    )
    result = {
        "corpus_bytes": size,
        "rss_tiny": rss_tiny,
        "rss_first": rss_first,
        "rss_second": rss_second,
        "bytes_per_corpus_byte_first": per_byte_first,
        "bytes_per_corpus_byte_second": per_byte_second,
        "prepare_first_s": prep_cold,
        "prepare_second_s": prep_warm,
    }
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
