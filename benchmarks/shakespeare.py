"""Quality in a fixed time: charnn's defaults vs a hand-written 2x256 LSTM loop.

Trains ``charnn train CORPUS --time T --val-fraction 0.1`` through the real CLI,
then (with ``--baseline``) a plain hand-written loop for the same time, and
prints the validation bits per character of both on the last 10 % of the corpus.

    .venv/bin/python benchmarks/shakespeare.py ../shared/corpora/tinyshakespeare.txt --time 5m [--baseline]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from charnn.config import parse_duration


def run_charnn(corpus: str, duration: str, out: Path, extra: list[str]) -> float:
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
        "--out",
        str(out),
        "--force",
        *extra,
    ]
    subprocess.run(cmd, check=True)
    result = subprocess.run(
        [sys.executable, "-m", "charnn", "info", "-c", str(out), "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(json.loads(result.stdout)["best_val_bpc"])


def run_baseline(corpus: str, seconds: float) -> float:
    """A classic loop: 2x256 nn.LSTM, Adam 2e-3, batch 32 x 100, carried hidden state."""
    text = Path(corpus).read_text(encoding="utf-8")
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([lookup[c] for c in text], dtype=torch.long)
    n_val = len(data) // 10
    train, val = data[:-n_val], data[-n_val:]
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(len(chars), 64)
            self.rnn = nn.LSTM(64, 256, num_layers=2, batch_first=True)
            self.out = nn.Linear(256, len(chars))

        def forward(self, x: torch.Tensor, h: object = None) -> tuple[torch.Tensor, object]:
            y, h = self.rnn(self.emb(x), h)
            return self.out(y), h

    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    batch, seq = 32, 100
    length = (len(train) - 1) // batch
    hidden = None
    pos = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        if pos + seq + 1 > length:
            pos, hidden = 0, None
        idx = torch.arange(batch)[:, None] * length + pos + torch.arange(seq + 1)[None, :]
        chunk = train[idx]
        logits, hidden = net(chunk[:, :-1], hidden)
        loss = F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        hidden = tuple(h.detach() for h in hidden)
        pos += seq
    with torch.no_grad():
        logits, _ = net(val[None, :-1])
        return F.cross_entropy(logits[0], val[1:]).item() / math.log(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("--time", default="5m")
    ap.add_argument("--baseline", action="store_true", help="also run the hand-written loop")
    ap.add_argument("extra", nargs="*", help="extra charnn train options (after --)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ours = run_charnn(args.corpus, args.time, Path(tmp) / "run", args.extra)
    print(f"charnn defaults, {args.time}: val bpc {ours:.3f}")
    if args.baseline:
        base = run_baseline(args.corpus, parse_duration(args.time))
        print(
            f"hand-written 2x256 LSTM loop, {args.time}: val bpc {base:.3f} "
            f"(charnn/baseline {ours / base:.3f})"
        )


if __name__ == "__main__":
    main()
