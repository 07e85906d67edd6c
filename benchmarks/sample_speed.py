"""Sampling speed on CPU: a bare nn.LSTM/GRU/RNN loop vs charnn's FastStepper, same weights.

Prints chars/s for: the bare loop (embedding + one module call per character + head +
multinomial, default threads and oneDNN flags) both with autograd on (torch's default) and
under inference_mode, FastStepper through generate() for one stream, 32 streams as one batch
(total chars/s), and beam search of width 8 (positions/s). Ratios are against the
inference_mode bare loop, the fair baseline. Then the CLI as a user runs it, measured from
outside: ``charnn sample -c CKPT --length N > /dev/null`` on a checkpoint of the same weights,
with the time of ``--length 1`` (start-up) subtracted, side by side with generate()'s one
stream and the ratio. Each figure is the best of --repeats runs, since results swing when
other processes keep the cores busy. OpenBLAS is pinned to one thread as the CLI does
(numpy must not be imported before that). Run:

    .venv/bin/python benchmarks/sample_speed.py [--hidden 256 --layers 2 --cell lstm --chars 2000]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as charnn.cli.main(); before numpy/torch load

import argparse  # noqa: E402
import contextlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from charnn.checkpoint import save_checkpoint  # noqa: E402
from charnn.config import ModelConfig, SampleConfig  # noqa: E402
from charnn.model import CharRNN  # noqa: E402
from charnn.sampling import generate  # noqa: E402
from charnn.stepper import FastStepper  # noqa: E402
from charnn.tokenizer import CharTokenizer  # noqa: E402

VOCAB = 65
DIGITS = CharTokenizer([chr(48 + i) for i in range(VOCAB)])  # ids decode to distinct characters


def bare_loop(model: CharRNN, chars: int, mode: Callable = torch.inference_mode) -> float:
    """The textbook sampler: one nn.LSTM/GRU/RNN call per character."""
    gen = torch.Generator().manual_seed(0)
    with mode():
        idx = torch.zeros(1, 1, dtype=torch.long)
        hidden = None
        start = time.perf_counter()
        for _ in range(chars):
            out, hidden = model.rnn(model.embed(idx), hidden)  # (1, 1, H)
            logits = model.head(out[:, -1])  # (1, V)
            idx = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen)  # (1, 1)
        return chars / (time.perf_counter() - start)


def fast(stepper: FastStepper, config: SampleConfig) -> float:
    """Generated chars/s through generate(), summed over streams (beam: positions/s)."""
    start = time.perf_counter()
    samples = generate(stepper, [0], config, DIGITS, rng=np.random.default_rng(0))
    elapsed = time.perf_counter() - start
    chars = len(samples[0].ids) if config.beam else sum(len(s.ids) for s in samples)
    return chars / elapsed


def cli_seconds(ckpt: Path, length: int) -> float:
    """Wall time of ``charnn sample -c CKPT --length N > /dev/null`` in a fresh process."""
    cmd = [sys.executable, "-m", "charnn", "sample", "-c", str(ckpt), "--length", str(length), "--seed", "1"]
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def cli_chars_per_s(ckpt: Path, chars: int) -> float:
    """The CLI's generation rate from outside: (time for N) - (time for 1), start-up cancelled."""
    return (chars - 1) / max(cli_seconds(ckpt, chars) - cli_seconds(ckpt, 1), 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="lstm", choices=("lstm", "gru", "rnn"))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--embed", type=int, default=64)
    ap.add_argument(
        "--chars", type=int, default=2000, help="chars per measurement (batch/beam: per stream / 4)"
    )
    ap.add_argument("--repeats", type=int, default=3, help="runs per figure; the best is shown")
    ap.add_argument("--cli-chars", type=int, default=20000, help="chars per CLI measurement")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = CharRNN(
        ModelConfig(
            vocab_size=VOCAB, cell=args.cell, layers=args.layers, hidden=args.hidden, embed=args.embed
        )
    ).eval()
    start = time.perf_counter()
    stepper = FastStepper.from_model(model)
    build_ms = (time.perf_counter() - start) * 1000

    short = max(args.chars // 4, 10)
    bare_loop(model, 50)  # warm-up (oneDNN primitive caches, allocator)
    fast(stepper, SampleConfig(length=50))
    runs: list[tuple[str, Callable[[], float]]] = [
        ("bare loop, inference_mode", lambda: bare_loop(model, args.chars)),
        ("bare loop, autograd on", lambda: bare_loop(model, args.chars, contextlib.nullcontext)),
        ("FastStepper, 1 stream", lambda: fast(stepper, SampleConfig(length=args.chars))),
        ("FastStepper, 32 streams", lambda: fast(stepper, SampleConfig(length=short, num_samples=32))),
        ("FastStepper, beam 8", lambda: fast(stepper, SampleConfig(length=short, beam=8))),
    ]
    best = [0.0] * len(runs)
    for _ in range(args.repeats):  # interleaved, so a burst of outside load hits every row alike
        for k, (_, run) in enumerate(runs):
            best[k] = max(best[k], run())
    rows = [(name, speed) for (name, _), speed in zip(runs, best, strict=True)]
    print(
        f"{args.cell} {args.layers}x{args.hidden} (embed {args.embed}, vocab {VOCAB}), "
        f"{torch.get_num_threads()} threads, stepper built in {build_ms:.0f} ms"
    )
    print(f"{'mode':<26}{'chars/s':>12}{'vs bare':>10}{'vs autograd':>13}")
    base, autograd = rows[0][1], rows[1][1]
    for name, speed in rows:
        print(f"{name:<26}{speed:>12,.0f}{speed / base:>9.1f}x{speed / autograd:>12.1f}x")
    compare_cli(model, stepper, args.cli_chars, args.repeats)


def compare_cli(model: CharRNN, stepper: FastStepper, chars: int, repeats: int) -> None:
    """The CLI (a fresh process, from outside) against generate()'s one stream, same weights."""
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        save_checkpoint(ckpt, model, DIGITS)
        step = cli = 0.0
        for _ in range(repeats):  # interleaved, best of each
            step = max(step, fast(stepper, SampleConfig(length=chars)))
            cli = max(cli, cli_chars_per_s(ckpt, chars))
    print(f"\n{'path, 1 stream, ' + str(chars) + ' chars':<40}{'chars/s':>12}")
    print(f"{'generate() (the step, in-process)':<40}{step:>12,.0f}")
    print(f"{'charnn sample > /dev/null (start-up out)':<40}{cli:>12,.0f}")
    print(f"CLI / step: {cli / step:.2f} (goal: at least 0.80)")


if __name__ == "__main__":
    main()
