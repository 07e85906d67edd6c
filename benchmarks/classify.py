"""charnn classify against the classic strong baseline: character n-gram tf-idf + logistic regression.

Two tasks built from public-domain text that Debian packages ship (install them first:
``apt-get install fortunes-it fortunes-de fortunes-es fortunes-min``):

- **authorship**: Italian fortune collections by three authors (Daniele Luttazzi, Paolo Tedeschi,
  Gino & Michele's "Formiche"); one item per fortune (its lines joined by spaces);
- **language**: short lines (20-100 characters) of English, German, Italian and Spanish fortunes.

Each task is split 80/20 per class with a fixed seed. charnn trains with ``classify train --time T``
(the whole budget, shared by the classes) and is scored with ``--eval``; the baseline
(scikit-learn, a benchmark-only dependency) fits ``TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4),
sublinear_tf=True)`` + ``LogisticRegression`` on the same items. Prints accuracy, training seconds and the
load average; ``--json`` writes the rows. ::

    .venv/bin/python benchmarks/classify.py --budgets 60s,3m [--json classify.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
AUTHORS = {"luttazzi": "luttazzi", "tedeschi": "paolotedeschi", "formiche": "formiche"}
LANGUAGES = {
    "en": ["fortunes", "literature", "riddles", "computer"],
    "de": ["de/zitate"],
    "it": ["italia"],
    "es": ["es/refranes.fortunes", "es/libertad.fortunes", "es/ciencia.fortunes", "es/literatura.fortunes"],
}


def fortunes(name: str) -> list[str]:
    path = FORTUNES / name
    if not path.is_file():
        sys.exit(f"{path} is missing: apt-get install fortunes-it fortunes-de fortunes-es fortunes-min")
    text = path.read_bytes().decode("utf-8", "replace")
    return [f.strip() for f in text.split("\n%\n") if f.strip()]


def split(items: list[str], seed: int = 0) -> tuple[list[str], list[str]]:
    items = sorted(set(items))
    random.Random(seed).shuffle(items)
    cut = int(len(items) * 0.8)
    return items[:cut], items[cut:]


def authorship() -> dict[str, list[str]]:
    return {label: [" ".join(f.split()) for f in fortunes(name)] for label, name in AUTHORS.items()}


def language(per_class: int = 4000) -> dict[str, list[str]]:
    out = {}
    for label, names in LANGUAGES.items():
        lines = [
            line.strip()
            for n in names
            if (FORTUNES / n).is_file()
            for f in fortunes(n)
            for line in f.split("\n")
        ]
        lines = [line for line in lines if 20 <= len(line) <= 100 and not line.startswith("--")]
        random.Random(1).shuffle(lines)
        out[label] = lines[:per_class]
    return out


def write_layout(root: Path, data: dict[str, list[str]]) -> None:
    for label, items in data.items():
        (root / label).mkdir(parents=True)
        (root / label / "items.txt").write_text("\n".join(items) + "\n", encoding="utf-8")


def baseline(train: dict[str, list[str]], test: dict[str, list[str]]) -> tuple[float, float]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    x = [t for items in train.values() for t in items]
    y = [label for label, items in train.items() for _ in items]
    start = time.perf_counter()
    model = make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True),
        LogisticRegression(max_iter=2000),
    )
    model.fit(x, y)
    seconds = time.perf_counter() - start
    tx = [t for items in test.values() for t in items]
    ty = [label for label, items in test.items() for _ in items]
    return float((model.predict(tx) == ty).mean()), seconds


def charnn(train_dir: Path, test_dir: Path, budget: str, work: Path) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "charnn", "classify"]
    out = work / f"cls-{budget}"
    start = time.perf_counter()
    subprocess.run(
        [*cmd, "train", str(train_dir), "-o", str(out), "--time", budget, "-q", "--force"], check=True
    )
    seconds = time.perf_counter() - start
    proc = subprocess.run(
        [*cmd, "-m", str(out), "--eval", str(test_dir), "--json"], check=True, capture_output=True
    )
    return json.loads(proc.stdout)["accuracy"], seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="60s,3m", help="charnn's training budgets, comma-separated")
    ap.add_argument("--tasks", default="authorship,language")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    rows = []
    for task in args.tasks.split(","):
        data = {"authorship": authorship, "language": language}[task]()
        parts = {label: split(items) for label, items in data.items()}
        train = {label: p[0] for label, p in parts.items()}
        test = {label: p[1] for label, p in parts.items()}
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            write_layout(work / "train", train)
            write_layout(work / "test", test)
            sizes = ", ".join(f"{label} {len(train[label])}/{len(test[label])}" for label in data)
            print(f"{task}: train/test items per class: {sizes}", flush=True)
            acc, secs = baseline(train, test)
            rows.append(
                dict(
                    task=task,
                    contender="tf-idf char 1-4 + logreg",
                    accuracy=acc,
                    seconds=secs,
                    load=os.getloadavg()[0],
                )
            )
            print(
                f"  baseline  accuracy {acc:.4f}  fit {secs:.1f}s  load {os.getloadavg()[0]:.1f}", flush=True
            )
            for budget in args.budgets.split(","):
                acc, secs = charnn(work / "train", work / "test", budget, work)
                rows.append(
                    dict(
                        task=task,
                        contender=f"charnn classify --time {budget}",
                        accuracy=acc,
                        seconds=secs,
                        load=os.getloadavg()[0],
                    )
                )
                print(
                    f"  charnn {budget:>5}  accuracy {acc:.4f}  train {secs:.1f}s  "
                    f"load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
