"""``sample --prompts``: prompts continued as one batch vs one ``--prime`` run after another.

Uses a freshly initialised model (speed does not depend on training) of the given shape with
a 100-character vocabulary, and prints both times, their ratio, and how many of the batched
continuations equal their one-by-one twins (the seed rule makes them equal up to rounding).
Run:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prompts_speed.py [--hidden 256 --layers 2 --prompts 64]
"""

from __future__ import annotations

import argparse
import time

import torch

from charnn.config import ModelConfig, SampleConfig
from charnn.model import CharRNN
from charnn.prompts import sample_prompts
from charnn.sampling import generate
from charnn.stepper import FastStepper
from charnn.tokenizer import CharTokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--length", type=int, default=200)
    args = ap.parse_args()

    tokenizer = CharTokenizer([chr(c) for c in range(32, 132)])
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(tokenizer.vocab_size, cell=args.cell, layers=args.layers, hidden=args.hidden))
    stepper = FastStepper(model.eval())
    primes = [tokenizer.encode(f"prompt {i}: ").tolist() for i in range(args.prompts)]
    config = SampleConfig(length=args.length)
    seeds = list(range(args.prompts))

    start = time.perf_counter()
    batched = sample_prompts(stepper, primes, config, tokenizer, seeds)
    t_batch = time.perf_counter() - start
    start = time.perf_counter()
    alone = []
    for ids, seed in zip(primes, seeds, strict=True):
        generator = torch.Generator()
        generator.manual_seed(seed)
        alone.append(generate(stepper, ids, config, tokenizer, generator=generator)[0].text)
    t_alone = time.perf_counter() - start
    same = sum(b[0].text == a for b, a in zip(batched, alone, strict=True))
    print(
        f"{args.prompts} prompts x {args.length} chars, {args.layers}x{args.hidden} {args.cell}: "
        f"batched {t_batch:.2f}s, one by one {t_alone:.2f}s ({t_alone / t_batch:.1f}x); "
        f"{same}/{args.prompts} continuations identical"
    )


if __name__ == "__main__":
    main()
