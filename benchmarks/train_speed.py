"""Training throughput: charnn's Trainer step vs a bare hand-written TBPTT loop, same model.

Prints tokens/s for both and their ratio (1.0 = charnn adds no overhead), plus
the memory of the encoded corpus against a Python list of ids. Run:

    .venv/bin/python benchmarks/train_speed.py [--cell lstm --hidden 256 --layers 2 --steps 20]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import torch
import torch.nn.functional as F

from charnn.config import ModelConfig, TrainConfig
from charnn.data import load_corpus
from charnn.model import CharRNN, detach_hidden
from charnn.run_plan import RunPlan
from charnn.train_records import NullReporter
from charnn.trainer import Trainer


def bare_loop(model: CharRNN, data: torch.Tensor, batch: int, seq_len: int, steps: int) -> float:
    """The classic loop: parallel streams, detached hidden state, AdamW, clipping."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    length = (len(data) - 1) // batch
    streams = data[: batch * length + 1]
    hidden = None
    start = time.perf_counter()
    for s in range(steps):
        off = (s * seq_len) % (length - seq_len - 1)
        idx = torch.arange(batch)[:, None] * length + off + torch.arange(seq_len + 1)[None, :]
        chunk = streams[idx]  # (B, T+1)
        logits, hidden = model(chunk[:, :-1], hidden)
        loss = F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        hidden = detach_hidden(hidden)
    return steps * batch * seq_len / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("corpus", nargs="*", help="text files (default: the built-in corpus)")
    args = ap.parse_args()

    tracemalloc.start()
    corpus = load_corpus(args.corpus)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    ids = corpus.ids
    list_bytes = (
        sys.getsizeof(list(range(0))) + 8 * len(ids) + 28 * min(len(ids), 256)
    )  # pointers + small ints
    print(
        f"corpus: {corpus.chars:,} chars -> {ids.nbytes:,} bytes as {ids.dtype} "
        f"({ids.nbytes / corpus.chars:.2f} B/char); a Python list of ids would take ~{list_bytes:,} bytes "
        f"({list_bytes / ids.nbytes:.0f}x); peak while encoding {peak / corpus.chars:.1f} B/char"
    )

    mcfg = ModelConfig(corpus.tokenizer.vocab_size, cell=args.cell, layers=args.layers, hidden=args.hidden)
    tcfg = TrainConfig(
        batch_size=args.batch_size, seq_len=args.seq_len, steps=10**9, val_fraction=0.0, device="cpu"
    )
    torch.manual_seed(0)
    bare = bare_loop(
        CharRNN(mcfg), torch.from_numpy(ids.astype("int64")), args.batch_size, args.seq_len, args.steps
    )
    trainer = Trainer(RunPlan.fresh(corpus, mcfg, tcfg, Path("/nonexistent-not-written")), NullReporter())
    trainer.train_step()  # warm-up (allocations, oneDNN primitive creation)
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step()
    ours = args.steps * trainer.data.batcher.batch_size * args.seq_len / (time.perf_counter() - start)
    print(
        f"{args.layers}x{args.hidden} {args.cell}, batch {args.batch_size}x{args.seq_len}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"  bare loop : {bare:10,.0f} tokens/s")
    print(f"  charnn    : {ours:10,.0f} tokens/s   ratio {ours / bare:.2f}")


if __name__ == "__main__":
    main()
