"""What ``--sample-every`` costs: one training sample against the training steps between two.

Times the trainer's own step and its :class:`~charnn.trainer.TrainingSampler` (200 characters
through the fast CPU stepper, including the weight snapshot) on the same model, and prints
the share of training time that sampling takes at the default interval and at a few others.
Run:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_samples.py [--hidden 256 --layers 2 --steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

from charnn.config import ModelConfig, TrainConfig
from charnn.data import load_corpus
from charnn.run_plan import RunPlan
from charnn.train_records import NullReporter
from charnn.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="training steps timed")
    ap.add_argument("--samples", type=int, default=5, help="samples timed")
    ap.add_argument("corpus", nargs="*", help="text files (default: the built-in corpus)")
    args = ap.parse_args()

    corpus = load_corpus(args.corpus)
    mcfg = ModelConfig(corpus.tokenizer.vocab_size, cell=args.cell, layers=args.layers, hidden=args.hidden)
    tcfg = TrainConfig(batch_size=args.batch_size, seq_len=args.seq_len, steps=10**9, device="cpu")
    trainer = Trainer(RunPlan.fresh(corpus, mcfg, tcfg, "/nonexistent-never-written"), NullReporter())
    trainer.train_step()  # warm-up: first-call allocations
    step_times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        trainer.train_step()
        step_times.append(time.perf_counter() - start)
    sample_times = []
    for _ in range(args.samples):
        start = time.perf_counter()
        trainer.sampler.sample(trainer.model)
        sample_times.append(time.perf_counter() - start)
    step, sample = statistics.median(step_times), statistics.median(sample_times)
    print(
        f"{args.layers}x{args.hidden} {args.cell}, batch {args.batch_size}x{args.seq_len}: "
        f"train step {step * 1000:.1f} ms, one {trainer.sampler.config.length}-character sample "
        f"{sample * 1000:.1f} ms (= {sample / step:.2f} steps)"
    )
    for every in sorted({tcfg.sample_every, 100, 250, 5000}):
        share = sample / (sample + every * step)
        default = "  (default)" if every == tcfg.sample_every else ""
        print(f"  --sample-every {every:>5}: sampling is {share:.3%} of training time{default}")


if __name__ == "__main__":
    main()
