"""What validating every metadata field costs: the typed reader against plain ``json.loads``.

Measures, side by side in one process (interleaved, median of --repeats rounds of --loops reads):

* ``json.loads`` of a real training checkpoint's meta.json (the old ``charnn runs`` did only this);
* ``parse_meta`` of the same bytes: format, version, checksum, then every field into typed
  records (ModelConfig, TrainConfig, the tokenizer, Counters, ...), which every command now does.

Both for a character-tokenizer checkpoint and, with ``--bpe``, a BPE one (its SentencePiece model is
rebuilt from the metadata: the dominant cost). Prints microseconds per read and the ratio. Run:

    .venv/bin/python benchmarks/meta_validation.py [--repeats 7] [--loops 200] [--bpe]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from charnn.checkpoint_meta import parse_meta


def train_tiny(out: Path, corpus: Path, tokenizer: str) -> Path:
    args = ["train", str(corpus), "-o", str(out), "--steps", "3", "--hidden", "16", "--layers", "1"]
    args += ["--embed", "8", "--seq-len", "16", "--batch-size", "2", "-q", "--tokenizer", tokenizer]
    if tokenizer != "char":
        args += ["--vocab-size", "300"]
    subprocess.run([sys.executable, "-m", "charnn", *args], check=True, stdout=subprocess.DEVNULL)
    return out / "latest"


def per_read(fn: object, loops: int) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - start) / loops * 1e6


def measure(checkpoint: Path, repeats: int, loops: int) -> tuple[float, float]:
    raw = (checkpoint / "meta.json").read_bytes()
    plain, typed = [], []
    for _ in range(repeats):  # interleaved, so machine load hits both alike
        plain.append(per_read(lambda: json.loads(raw), loops))
        typed.append(per_read(lambda: parse_meta(raw, checkpoint), loops))
    return statistics.median(plain), statistics.median(typed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--loops", type=int, default=200)
    parser.add_argument("--bpe", action="store_true", help="also a BPE checkpoint (trains a tokenizer)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} (1 min)")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text(
            "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(3000))
        )
        kinds = ["char", "bpe"] if args.bpe else ["char"]
        print(f"{'tokenizer':10} {'json.loads µs':>14} {'parse_meta µs':>14} {'ratio':>7}")
        for kind in kinds:
            checkpoint = train_tiny(Path(tmp) / kind, corpus, kind)
            plain, typed = measure(checkpoint, args.repeats, args.loops)
            print(f"{kind:10} {plain:14.1f} {typed:14.1f} {typed / plain:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
