"""Build the two "other text" corpora of the quality goal from what a Debian machine has offline
(they are not committed; rebuild them with this script):

- ``python-stdlib.txt``: source code. The top-level ``*.py`` modules of the running Python's
  standard library (``sysconfig.get_paths()["stdlib"]``), in name order, concatenated up to
  ``--size`` bytes at a file boundary. Python Software Foundation License.
- ``fortunes-de.txt``: German prose and verse. The fortune files of Debian's ``fortunes-de``
  (``apt-get install fortunes-de``; GPL-2+, /usr/share/doc/fortunes-de/copyright), in name order,
  without the ``%`` separator lines, up to ``--size`` bytes.

Like tiny Shakespeare (1.1 MB), each is about 1.1 MB, so the same budgets mean the same passes.
``benchmarks/quality.py`` scores on the last 10 % with the vocabulary of the first 90 %: a
character of the last 10 % the first 90 % never has becomes ``?`` (counted in the output)::

    .venv/bin/python benchmarks/other_corpora.py --out /tmp/corpora
    .venv/bin/python benchmarks/quality.py --corpus /tmp/corpora/python-stdlib.txt --budgets 5m --force
"""

from __future__ import annotations

import argparse
import hashlib
import sysconfig
from collections.abc import Iterable
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes/de")


def gather(files: Iterable[Path], size: int, clean: bool = False) -> str:
    parts, total = [], 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        if clean:
            text = "\n".join(line for line in text.splitlines() if line.strip() != "%") + "\n"
        if total + len(text) > size and parts:
            break
        parts.append(text)
        total += len(text)
    return "".join(parts)


def held_vocabulary(text: str) -> tuple[str, int]:
    """Replace characters of the last 10 % that the first 90 % lacks."""
    cut = int(len(text) * 0.9)
    seen = set(text[:cut])
    tail = "".join(c if c in seen else "?" for c in text[cut:])
    return text[:cut] + tail, sum(c not in seen for c in text[cut:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=1_100_000, help="characters per corpus, about")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = {
        "python-stdlib.txt": gather(sorted(stdlib.glob("*.py")), args.size),
        "fortunes-de.txt": gather(
            sorted(p for p in FORTUNES.iterdir() if p.is_file() and p.suffix not in (".dat", ".u8")),
            args.size,
            clean=True,
        )
        if FORTUNES.is_dir()
        else "",
    }
    for name, text in sources.items():
        if not text:
            print(f"{name}: skipped ({FORTUNES} missing: apt-get install fortunes-de)")
            continue
        text, replaced = held_vocabulary(text)
        path = args.out / name
        path.write_text(text, encoding="utf-8")
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        print(
            f"{path}: {len(text):,} characters, {len(set(text))} distinct, "
            f"{replaced} replaced, sha256 {digest}"
        )


if __name__ == "__main__":
    main()
