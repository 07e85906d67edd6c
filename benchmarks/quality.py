"""Quality per wall-clock minute: charnn's defaults against nanoGPT's baby GPT and a bare LSTM loop.

Every contender trains, one after the other on this machine, on exactly the same text - the first
90 % of tiny Shakespeare - for the same wall-clock budget of training (start-up and corpus
preparation not counted), and is scored in bits per character on the last 10 %:

- ``charnn``: ``charnn train --time T`` with its defaults, except ``--val-fraction 0`` (charnn's
  default 5 % hold-out would be cut from the training text; the held-out text is the last 10 %),
  then ``charnn eval``;
- ``baby-gpt``: nanoGPT's CPU recipe for this corpus (4 layers, 4 heads, 128 wide, context 64,
  batch 12, no dropout, AdamW lr 1e-3 -> 1e-4 cosine, betas (0.9, 0.99), weight decay 0.1, 100
  warm-up steps, clipping 1.0), written compactly here; its cosine runs over the budget's time;
  scored on non-overlapping 64-character windows, as it is trained;
- ``bare-lstm``: a bare PyTorch 2x256 LSTM (embedding 64), 32 parallel streams of 128 characters
  with the hidden state carried, Adam lr 2e-3, clipping 1.0; scored as one stream with its state.

Each contender runs with its own default threads (charnn its --threads default, the others
torch's), unless ``--threads N`` pins them all. Every budget runs each contender ``--reps`` times
(default 2) in interleaved order (reversed every other repetition) and reports the median, with
the 1-minute load average before and after each run beside it. Wall-clock quality needs an idle
machine: the script refuses to start when the load average is above 0.5, unless ``--force``.
Prints a table and writes JSON::

    .venv/bin/python benchmarks/quality.py --budgets 85s,5m,20m [--reps 2] [--json quality.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from charnn.config import parse_duration

CORPUS = next(
    (
        p / "shared" / "corpora" / "tinyshakespeare.txt"
        for p in Path(__file__).resolve().parents
        if (p / "shared" / "corpora" / "tinyshakespeare.txt").is_file()
    ),
    Path("tinyshakespeare.txt"),
)
LN2 = math.log(2)
IDLE_LOAD = 0.5  # 1-minute load average above which the machine counts as busy


def split(text: str) -> tuple[str, str]:
    cut = int(len(text) * 0.9)
    return text[:cut], text[cut:]


# ---------------------------------------------------------------------------- charnn


def run_charnn(train: Path, held: Path, budget: float, threads: int | None, work: Path) -> dict[str, float]:
    env = dict(os.environ, NO_COLOR="1")
    out = work / f"charnn-{budget:g}"
    argv = [sys.executable, "-m", "charnn"]
    train_cmd = [
        *argv,
        "train",
        str(train),
        "--out",
        str(out),
        "--force",
        "--time",
        f"{budget}s",
        "--val-fraction",
        "0",
        *(["--threads", str(threads)] if threads else []),
        "--cache-dir",
        str(work / "cache"),
    ]
    proc = subprocess.run(train_cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr)
    ev = subprocess.run(
        [*argv, "eval", str(held), "-c", str(out), "--json"], env=env, capture_output=True, text=True
    )
    if ev.returncode != 0:
        sys.exit(ev.stderr)
    info = json.loads(
        subprocess.run(
            [*argv, "info", "-c", str(out), "--json"], env=env, capture_output=True, text=True
        ).stdout
    )
    chosen = ((info.get("run") or {}).get("budget") or {}).get("reason")
    return {"val_bpc": json.loads(ev.stdout)["bpc"], "steps": info["step"], "chosen": chosen}


# ---------------------------------------------------------------------------- baby GPT (nanoGPT recipe)


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (
            z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v)
        )  # (B, h, T, d)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x))


class BabyGPT(nn.Module):
    def __init__(
        self, vocab: int, layers: int = 4, heads: int = 4, width: int = 128, context: int = 64
    ) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.blocks = nn.Sequential(*[Block(width, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied, as in nanoGPT
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.head(self.ln(self.blocks(self.tok(idx) + self.pos(pos))))


def run_gpt(train: torch.Tensor, held: torch.Tensor, vocab: int, budget: float) -> dict[str, float]:
    torch.manual_seed(1337)
    ctx, batch, warmup, lr, min_lr = 64, 12, 100, 1e-3, 1e-4
    model = BabyGPT(vocab, context=ctx)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.99),
    )

    def lr_at(step: int, frac: float) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(frac, 1.0)))

    steps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < budget:
        for g in opt.param_groups:
            g["lr"] = lr_at(steps, elapsed / budget)
        ix = torch.randint(len(train) - ctx - 1, (batch,))
        chunk = torch.stack([train[i : i + ctx + 1] for i in ix.tolist()])  # (B, ctx+1)
        loss = F.cross_entropy(model(chunk[:, :-1]).flatten(0, 1), chunk[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps += 1
    model.eval()
    n = (len(held) - 1) // ctx
    x = held[: n * ctx].view(n, ctx)
    y = held[1 : n * ctx + 1].view(n, ctx)
    total = 0.0
    with torch.no_grad():
        for i in range(0, n, 256):
            total += F.cross_entropy(
                model(x[i : i + 256]).flatten(0, 1), y[i : i + 256].flatten(), reduction="sum"
            ).item()
    return {"val_bpc": total / (n * ctx) / LN2, "steps": steps}


# ---------------------------------------------------------------------------- bare LSTM loop


class LSTMLM(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 64)
        self.rnn = nn.LSTM(64, 256, num_layers=2, batch_first=True)
        self.head = nn.Linear(256, vocab)

    def forward(self, x: torch.Tensor, h: object = None) -> tuple[torch.Tensor, object]:
        out, h = self.rnn(self.embed(x), h)
        return self.head(out), h


def run_lstm(train: torch.Tensor, held: torch.Tensor, vocab: int, budget: float) -> dict[str, float]:
    torch.manual_seed(1337)
    batch, seq = 32, 128
    model = LSTMLM(vocab)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    length = (len(train) - 1) // batch
    streams = torch.arange(batch)[:, None] * length
    h: object = None
    steps, pos, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < budget:
        if pos + seq + 1 > length:
            pos, h = 0, None
        chunk = train[streams + pos + torch.arange(seq + 1)[None, :]]  # (B, T+1)
        logits, h = model(chunk[:, :-1], h)
        loss = F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        h = tuple(t.detach() for t in h)  # type: ignore[union-attr]
        pos += seq
        steps += 1
    model.eval()
    total, h = 0.0, None
    with torch.no_grad():
        for i in range(0, len(held) - 1, 1024):
            x = held[i : min(i + 1024, len(held) - 1)][None]
            y = held[i + 1 : i + 1 + x.shape[1]][None]
            logits, h = model(x, h)
            total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
    return {"val_bpc": total / (len(held) - 1) / LN2, "steps": steps}


# ---------------------------------------------------------------------------- main


def load() -> float:
    return round(os.getloadavg()[0], 2)


def idle_check(force: bool) -> None:
    """Wall-clock quality needs the machine to itself: refuse (or, with --force, warn) when the
    1-minute load average says another process is running."""
    busy = load()
    if busy <= IDLE_LOAD:
        return
    message = (
        f"the machine is not idle (load average {busy:g} > {IDLE_LOAD:g}): figures will be low and noisy"
    )
    if not force:
        sys.exit(f"{message}; run again when it is idle, or give --force to measure anyway")
    print(f"warning: {message}", file=sys.stderr)


def order(names: list[str], rep: int) -> list[str]:
    """Interleaved: every other repetition runs the contenders in reverse, so none always goes
    first (on a warm cache) or last (after the others heated the machine)."""
    return names if rep % 2 == 0 else names[::-1]


def summarise(
    runs: list[dict[str, object]], names: list[str], budgets: list[float]
) -> list[dict[str, object]]:
    rows = []
    for budget in budgets:
        row: dict[str, object] = {"budget_s": budget}
        for name in names:
            mine = [r for r in runs if r["budget_s"] == budget and r["contender"] == name]
            if mine:
                row[name] = {
                    "val_bpc": statistics.median(float(r["val_bpc"]) for r in mine),  # type: ignore[arg-type]
                    "runs": [r["val_bpc"] for r in mine],
                    "load": [r["load_before"] for r in mine] + [mine[-1]["load_after"]],
                }
        rows.append(row)
    return rows


def report(rows: list[dict[str, object]], names: list[str], corpus: str, threads: str) -> None:
    print(f"\nval bpc on the last 10 % of {corpus} ({threads}); median of the repetitions; lower is better")
    print(f"{'budget':>8} " + " ".join(f"{n:>22}" for n in names) + "   charnn - best other")
    for row in rows:
        cells, bpcs = [], {}
        for n in names:
            r = row.get(n)
            if not isinstance(r, dict):
                cells.append(f"{'-':>22}")
                continue
            bpcs[n] = r["val_bpc"]
            cells.append(f"{r['val_bpc']:7.3f} (load {max(r['load']):4.1f})".rjust(22))
        others = [v for n, v in bpcs.items() if n != "charnn"]
        margin = f"{bpcs['charnn'] - min(others):+.3f}" if "charnn" in bpcs and others else ""
        print(f"{row['budget_s']:>7g}s " + " ".join(cells) + f"   {margin}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="85s,5m,20m", help="comma-separated training times")
    ap.add_argument("--corpus", default=str(CORPUS))
    ap.add_argument("--reps", type=int, default=2, help="repetitions of each contender (median reported)")
    ap.add_argument(
        "--threads", type=int, default=None, help="pin every contender to N threads (default: each its own)"
    )
    ap.add_argument("--only", default="charnn,baby-gpt,bare-lstm", help="contenders to run")
    ap.add_argument("--force", action="store_true", help="measure even when the machine is not idle")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    idle_check(args.force)
    budgets = [parse_duration(b) for b in args.budgets.split(",")]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    text = Path(args.corpus).read_text(encoding="utf-8")
    train_text, held_text = split(text)
    chars = sorted(set(train_text))
    if set(held_text) - set(chars):
        sys.exit("held-out text has characters the training text lacks")
    stoi = {c: i for i, c in enumerate(chars)}
    train_ids = torch.tensor([stoi[c] for c in train_text], dtype=torch.long)
    held_ids = torch.tensor([stoi[c] for c in held_text], dtype=torch.long)
    contenders: dict[str, Callable[[float, Path], dict[str, float]]] = {
        "charnn": lambda b, w: run_charnn(w / "train.txt", w / "held.txt", b, args.threads, w),
        "baby-gpt": lambda b, w: run_gpt(train_ids, held_ids, len(chars), b),
        "bare-lstm": lambda b, w: run_lstm(train_ids, held_ids, len(chars), b),
    }
    names = [c for c in args.only.split(",") if c]
    runs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="charnn-quality-") as tmp:
        work = Path(tmp)
        (work / "train.txt").write_text(train_text, encoding="utf-8")
        (work / "held.txt").write_text(held_text, encoding="utf-8")
        for budget in budgets:
            for rep in range(args.reps):
                for name in order(names, rep):
                    before = load()
                    result = contenders[name](budget, work)
                    run = {
                        "budget_s": budget,
                        "rep": rep,
                        "contender": name,
                        **result,
                        "load_before": before,
                        "load_after": load(),
                    }
                    runs.append(run)
                    print(f"  {json.dumps(run)}", file=sys.stderr, flush=True)
    rows = summarise(runs, names, budgets)
    threads = f"{args.threads} thread(s)" if args.threads else "each contender's default threads"
    report(rows, names, Path(args.corpus).name, threads)
    stamp = {
        "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps({**stamp, "results": rows, "runs": runs}))
    if args.json:
        Path(args.json).write_text(json.dumps({**stamp, "results": rows, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
