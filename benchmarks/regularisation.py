"""Regularisation and weight averaging over many epochs, emulated cheaply (issue 17 section 4).

A 20-minute run is about 30 passes over tiny Shakespeare. To see what many passes do without
paying for them, this trains charnn's model on a small slice of the corpus (``--train-kb``,
from its start) for 3, 10 and 30 epochs and validates on held-out text (``--val-kb`` from its
end), with and without each regulariser. Every run uses charnn's own parts (CharRNN with
dropout / weight-drop, build_optimizer's AdamW, StreamBatcher, Schedule, evaluate_stream,
WeightAverager) in a loop equal to the Trainer's step, so the numbers are what charnn does.

Each run also keeps several weight averages at once (they do not change training), each
validated beside the raw weights: EMA with decay 0.995 and 0.998, and SWA's equal mean, all
from half-way, plus SWA from 75 %.

Quality for a fixed number of steps and seed does not depend on the machine's load, so the
tables are deterministic (one torch thread). Results are appended as JSON lines to ``--out``
as each run ends; ``--only`` runs some configurations (to split the work between processes)::

    .venv/bin/python benchmarks/regularisation.py --out reg.jsonl [--only base,d.2] [--epochs 3,10,30]
    .venv/bin/python benchmarks/regularisation.py --table reg.jsonl
    .venv/bin/python benchmarks/regularisation.py --speed   # weight-drop's and EMA's cost per step

``--speed`` times training steps of the default 2x256 LSTM (batch 16 x 128) without
regularisation, with ``--weight-drop 0.25``, and with it plus an EMA update after each step,
interleaved round by round, and prints the medians and their ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from charnn.averaging import WeightAverager
from charnn.config import ModelConfig, TrainConfig
from charnn.data import StreamBatcher
from charnn.evaluate import evaluate_stream
from charnn.model import CharRNN, detach_hidden
from charnn.trainer import Schedule, build_optimizer

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "tinyshakespeare.txt"
if not CORPUS.exists():
    CORPUS = Path("/work/shared/corpora/tinyshakespeare.txt")


@dataclass(frozen=True)
class Setting:
    name: str
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


SETTINGS = [
    Setting("base"),
    Setting("d.1", {"dropout": 0.1}),
    Setting("d.25", {"dropout": 0.25}),
    Setting("w.25", {"weight_drop": 0.25}),
    Setting("w.5", {"weight_drop": 0.5}),
    Setting("wd.1", train={"weight_decay": 0.1}),
    Setting("w.25+wd.1", {"weight_drop": 0.25}, {"weight_decay": 0.1}),
    Setting("d.1+w.25+wd.1", {"dropout": 0.1, "weight_drop": 0.25}, {"weight_decay": 0.1}),
    Setting("d.25+w.5+wd.1", {"dropout": 0.25, "weight_drop": 0.5}, {"weight_decay": 0.1}),
]
# name -> (kind, start fraction, EMA decay)
AVERAGES = {
    "ema.995": ("ema", 0.5, 0.995),
    "ema.998": ("ema", 0.5, 0.998),
    "swa50": ("swa", 0.5, 0.0),
    "swa75": ("swa", 0.75, 0.0),
}


def slices(train_kb: int, val_kb: int) -> tuple[np.ndarray, np.ndarray, int]:
    text = CORPUS.read_text(encoding="utf-8")
    train, val = text[: train_kb * 1000], text[-val_kb * 1000 :]
    vocab = {c: i for i, c in enumerate(sorted(set(text)))}
    ids = [np.array([vocab[c] for c in part], dtype=np.int64) for part in (train, val)]
    return ids[0], ids[1], len(vocab)


def run(setting: Setting, epochs: float, args: argparse.Namespace) -> dict[str, Any]:
    train_ids, val_ids, vocab = slices(args.train_kb, args.val_kb)
    shape = {"layers": args.layers, "hidden": args.hidden, "embed": args.embed}
    mcfg = ModelConfig(vocab_size=vocab, **shape, **setting.model)
    tcfg = TrainConfig(
        batch_size=args.batch, seq_len=args.seq_len, warmup_steps=args.warmup, seed=args.seed, **setting.train
    )
    torch.manual_seed(tcfg.seed)
    model = CharRNN(mcfg)
    optimizer = build_optimizer(model, tcfg)
    batcher = StreamBatcher(train_ids, tcfg.batch_size, tcfg.seq_len, tcfg.seed)
    steps = batcher.steps_for_epochs(epochs)
    schedule = Schedule(tcfg, steps, None)
    averagers = {k: WeightAverager(kind, start, decay) for k, (kind, start, decay) in AVERAGES.items()}
    updates = dict.fromkeys(averagers, 0)
    lengths = np.ones(vocab, dtype=np.int64)
    evals = sorted({max(1, round(steps * i / args.evals)) for i in range(1, args.evals + 1)})
    curve: list[dict[str, Any]] = []
    hidden = None
    start = time.perf_counter()
    for step in range(steps):
        x_np, y_np, reset = batcher.batch(step)
        x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
        if reset or hidden is None:
            hidden = model.init_hidden(x.shape[0])
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr(step, 0.0, 1.0)
        model.train()
        logits, hidden = model(x, hidden)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        optimizer.step()
        hidden = detach_hidden(hidden)
        for k, av in averagers.items():
            # As the trainer counts --average-from: on the schedule's decay, after warm-up. The
            # tables in docs/regularisation.md were measured on (step + 1) / steps, the fraction
            # of the whole run, which starts averaging a few steps (warm-up's share) earlier.
            updates[k] = av.update(model, schedule.fraction(step + 1, 0.0), updates[k])
        if step + 1 in evals:
            row = {"step": step + 1, "raw": evaluate_stream(model, val_ids, lengths, context=0).bpc}
            for k, av in averagers.items():
                if av.ready:
                    with av.swapped_in(model):
                        row[k] = evaluate_stream(model, val_ids, lengths, context=0).bpc
            curve.append(row)
    seconds = time.perf_counter() - start
    best = {k: min(r[k] for r in curve if k in r) for k in ["raw", *AVERAGES] if any(k in r for r in curve)}
    return {
        "setting": setting.name,
        "epochs": epochs,
        "steps": steps,
        "chars": steps * batcher.batch_size * tcfg.seq_len,
        "final": curve[-1],
        "best": best,
        "curve": curve,
        "seconds": round(seconds, 1),
        "shape": shape,
        "train_kb": args.train_kb,
        "val_kb": args.val_kb,
        "seed": args.seed,
    }


def speed(rounds: int, steps: int) -> str:
    """Median seconds per training step, interleaved: plain, weight-drop, weight-drop + EMA."""
    import statistics

    kinds = ("plain", "weight-drop", "weight-drop+ema")
    models = {
        k: CharRNN(ModelConfig(vocab_size=65, weight_drop=0.0 if k == "plain" else 0.25)) for k in kinds
    }
    optimizers = {k: build_optimizer(m, TrainConfig()) for k, m in models.items()}
    averager = WeightAverager("ema", 0.0, 0.998)
    x = torch.randint(0, 65, (16, 128))
    y = torch.randint(0, 65, (16, 128))
    times: dict[str, list[float]] = {k: [] for k in kinds}
    updates = 0
    for r in range(rounds):
        for k in kinds if r % 2 else kinds[::-1]:
            model, opt = models[k], optimizers[k]
            model.train()
            start = time.perf_counter()
            for _ in range(steps):
                logits, _ = model(x)
                loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if k.endswith("ema"):
                    updates = averager.update(model, 1.0, updates)
            times[k].append((time.perf_counter() - start) / steps)
    base = statistics.median(times["plain"])
    return "\n".join(
        f"{k:16} {statistics.median(v) * 1000:7.1f} ms/step  x{statistics.median(v) / base:.3f}"
        for k, v in times.items()
    )


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = []
    for epochs in sorted({r["epochs"] for r in rows}):
        lines += [
            f"\n{epochs:g} epochs",
            "| setting | raw best | raw final | " + " | ".join(f"{k} best" for k in AVERAGES) + " |",
            "| --- | --- | --- | " + " | ".join("---" for _ in AVERAGES) + " |",
        ]
        for r in sorted((r for r in rows if r["epochs"] == epochs), key=lambda r: r["best"]["raw"]):
            cells = [r["best"]["raw"], r["final"]["raw"], *(r["best"].get(k, math.nan) for k in AVERAGES)]
            lines.append(f"| {r['setting']} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("regularisation.jsonl"))
    parser.add_argument("--table", type=Path, help="print the tables of a results file and exit")
    parser.add_argument("--speed", action="store_true", help="time weight-drop and EMA per step and exit")
    parser.add_argument("--only", default="", help="comma-separated setting names")
    parser.add_argument("--epochs", default="30,3")
    parser.add_argument("--train-kb", type=int, default=50)
    parser.add_argument("--val-kb", type=int, default=20)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--embed", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--evals", type=int, default=8, help="validations per run")
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    torch.set_num_threads(1)  # deterministic, and fair to the other processes on the machine
    if args.speed:
        print(speed(rounds=9, steps=3))
        return
    wanted = [s for s in SETTINGS if not args.only or s.name in args.only.split(",")]
    for epochs in (float(e) for e in args.epochs.split(",")):
        for setting in wanted:
            result = run(setting, epochs, args)
            with open(args.out, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(result) + "\n")
            best = result["best"]
            print(
                f"{setting.name:16} {epochs:4g} ep  raw {best['raw']:.4f}  "
                + "  ".join(f"{k} {v:.4f}" for k, v in best.items() if k != "raw")
                + f"  ({result['seconds']:.0f}s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
