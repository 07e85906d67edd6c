"""Whole-process training throughput with charnn's default threads, side by side with a bare loop.

Issue 17's throughput goal: with default threads, charnn trains at >= 0.95x a bare hand-written
loop run with torch's default threads on an idle machine, and beside one busy process within 15 %
of the best ``--threads`` choice. Each contender is its own process, timed from start to exit
(imports, corpus, the thread probe, training, saving), on the same text and model (2x256 LSTM,
embed 64, batch 16 x 128, AdamW), for the same training time:

    bare            torch.nn loop, torch's default threads (all cores)
    charnn          charnn train with default threads (measured at start)
    charnn -t N     charnn train --threads N, for every N from 1 to the cores

Throughput = characters trained / process seconds. Rounds interleave the contenders (the order
rotates each round); the table shows medians and the load average before each run. Modes:
``idle`` as the machine is, ``busy`` beside a busy-loop process this script starts. Run:

    .venv/bin/python benchmarks/threads.py [--seconds 60] [--rounds 3] [--modes idle busy] [CORPUS]
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

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = "/work/shared/corpora/tinyshakespeare.txt"
MODEL = ("--layers", "2", "--hidden", "256", "--embed", "64", "--batch-size", "16", "--seq-len", "128")


def bare_loop(corpus: str, seconds: float) -> None:
    """The hand-written loop (run in its own process): prints the characters it trained on."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    text = Path(corpus).read_text(encoding="utf-8")
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long)
    batch, seq = 16, 128
    torch.manual_seed(0)
    embed, rnn, head = (
        nn.Embedding(len(vocab), 64),
        nn.LSTM(64, 256, 2, batch_first=True),
        nn.Linear(256, len(vocab)),
    )
    params = [*embed.parameters(), *rnn.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-3)
    length = (len(data) - 1) // batch
    offsets = torch.arange(batch)[:, None] * length
    hidden, chars, start, step = None, 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        pos = (step * seq) % (length - seq - 1)
        chunk = data[offsets + pos + torch.arange(seq + 1)[None, :]]  # (B, T+1)
        out, hidden = rnn(embed(chunk[:, :-1]), hidden)
        loss = F.cross_entropy(head(out).flatten(0, 1), chunk[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        hidden = tuple(h.detach() for h in hidden)
        chars += batch * seq
        step += 1
    print(json.dumps({"chars": chars, "threads": torch.get_num_threads()}))


def run_one(name: str, corpus: str, seconds: float, work: Path) -> dict[str, float | str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["NO_COLOR"] = "1"
    load = os.getloadavg()[0]
    if name == "bare":
        argv = [sys.executable, __file__, "--bare", corpus, "--seconds", str(seconds)]
    else:
        out = work / name.replace(" ", "")
        argv = [sys.executable, "-m", "charnn", "train", corpus, "-o", str(out), "--force", *MODEL]
        argv += ["--time", f"{seconds}s", "--val-fraction", "0", "--sample-every", "0", "--device", "cpu"]
        if name.startswith("charnn -t"):
            argv += ["--threads", name.split()[-1]]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed: {proc.stderr[-2000:]}")
    if name == "bare":
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        chars, threads = result["chars"], str(result["threads"])
    else:
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        chars = max(r.get("chars", 0) for r in rows if r["kind"] == "progress")
        start_row = next(r for r in rows if r["kind"] == "start")
        threads = f"{start_row['threads']['count']} ({start_row['threads']['how']})"
    return {"name": name, "chars_per_s": chars / wall, "wall": wall, "load": load, "threads": threads}


def busy_process() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", nargs="?", default=DEFAULT_CORPUS)
    ap.add_argument("--seconds", type=float, default=60.0, help="training time per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["idle", "busy"], choices=["idle", "busy"])
    ap.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare:
        bare_loop(args.corpus, args.seconds)
        return
    from charnn.hardware import physical_cores

    cores = physical_cores()
    names = ["bare", "charnn", *(f"charnn -t {n}" for n in range(1, cores + 1))]
    print(f"{cores} cores; {args.seconds:g} s of training per run; load before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="charnn-threads-") as tmp:
        for mode in args.modes:
            results: dict[str, list[dict[str, float | str]]] = {n: [] for n in names}
            for r in range(args.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    busy = busy_process() if mode == "busy" else None
                    try:
                        time.sleep(1.0 if busy else 0.0)  # let the busy loop take its core
                        row = run_one(name, args.corpus, args.seconds, Path(tmp))
                    finally:
                        if busy is not None:
                            busy.kill()
                            busy.wait()
                    results[name].append(row)
                    print(
                        f"  {mode} round {r + 1}: {name:12s} {row['chars_per_s']:8,.0f} chars/s "
                        f"(wall {row['wall']:.1f} s, threads {row['threads']}, load {row['load']:.2f})",
                        flush=True,
                    )
            report(mode, results)


def report(mode: str, results: dict[str, list[dict[str, float | str]]]) -> None:
    median = {n: statistics.median(float(r["chars_per_s"]) for r in rows) for n, rows in results.items()}
    loads = [float(r["load"]) for rows in results.values() for r in rows]
    pinned = {n: v for n, v in median.items() if n.startswith("charnn -t")}
    best = max(pinned, key=lambda n: pinned[n])
    print(
        f"\n{mode}: medians of {len(results['bare'])} runs, load averages {min(loads):.2f}-{max(loads):.2f}"
    )
    for name, value in median.items():
        print(f"  {name:12s} {value:8,.0f} chars/s")
    print(
        f"  charnn default / bare loop        = {median['charnn'] / median['bare']:.2f}  (goal idle: >= 0.95)"
    )
    print(f"  charnn default / best ({best}) = {median['charnn'] / pinned[best]:.2f}  (goal busy: >= 0.85)\n")


if __name__ == "__main__":
    main()
