"""Tokenizers compared on one corpus: validation bits per character after the same time budget.

Trains ``charnn train CORPUS --time T --val-fraction 0.1 --tokenizer K [--vocab-size N]`` through
the real CLI, one run after another, every other option at its default, and prints each run's
steps, throughput and validation bpc (per character of the same held-out text) and bits per token.

    .venv/bin/python benchmarks/tokenizers.py ../shared/corpora/tinyshakespeare.txt --time 5m \\
        --runs char bpe:512 unigram:512 bpe:2000 unigram:2000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def train(corpus: str, duration: str, spec: str, out: Path) -> dict:
    kind, _, vocab = spec.partition(":")
    cmd = [
        sys.executable,
        "-m",
        "charnn",
        "train",
        corpus,
        "--time",
        duration,
        "--val-fraction",
        "0.1",
        "--tokenizer",
        kind,
        "--out",
        str(out),
        "--force",
    ]
    if vocab:
        cmd += ["--vocab-size", vocab]
    subprocess.run(cmd, check=True)
    meta = json.loads((out / "latest" / "meta.json").read_text())
    progress, corpus_meta = meta["progress"], meta["corpus"]
    val = progress["val"]
    chars_per_token = corpus_meta["chars"] / corpus_meta["tokens"]
    return {
        "run": spec,
        "vocab": meta["model"]["vocab_size"],
        "steps": progress["step"],
        "chars_per_s": progress["step"]
        * meta["train"]["batch_size"]
        * meta["train"]["seq_len"]
        * chars_per_token
        / progress["elapsed"],
        "val_bpc": val["bpc"],
        "val_bpt": val.get("bpt", val["bpc"]),
        "best_val_bpc": progress["best_val_bpc"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus")
    parser.add_argument("--time", default="5m")
    default_runs = ["char", "bpe:512", "unigram:512", "bpe:2000", "unigram:2000"]
    parser.add_argument("--runs", nargs="+", default=default_runs, help="KIND or KIND:VOCAB_SIZE")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.runs:
            rows.append(train(args.corpus, args.time, spec, Path(tmp) / spec.replace(":", "-")))
    header = f"{'run':14} {'vocab':>6} {'steps':>6} {'chars/s':>8} {'val bpc':>8} {'best':>8} {'bits/tok':>8}"
    print(header)
    for r in rows:
        print(
            f"{r['run']:14} {r['vocab']:6d} {r['steps']:6d} {r['chars_per_s']:8.0f} {r['val_bpc']:8.4f} "
            f"{r['best_val_bpc']:8.4f} {r['val_bpt']:8.4f}"
        )


if __name__ == "__main__":
    main()
