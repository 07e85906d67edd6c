"""Size and render time of the surprisal page (``charnn eval --html``) for a text.

    python benchmarks/surprisal_page.py -c RUN TEXT [--page existing.html]

Prints the text's size, the page's size and their ratio, the time to compute and write the page
(unless --page gives one already written), and, when chromium is installed, the time from
navigation to interactive and how many character spans exist right after loading (only the
chunks near the viewport are built) against the number of characters.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("text")
    parser.add_argument("-c", "--checkpoint", default="checkpoints")
    parser.add_argument("--page", help="measure this page instead of writing one")
    args = parser.parse_args()
    text_bytes = Path(args.text).stat().st_size
    chars = len(Path(args.text).read_text(encoding="utf-8"))
    page = Path(args.page) if args.page else Path(tempfile.mkdtemp()) / "page.html"
    if not args.page:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "charnn", "eval", "-c", args.checkpoint, args.text, "--html", str(page)],
            check=True,
        )
        print(f"compute + write: {time.perf_counter() - start:.1f} s for {chars:,} characters")
    size = page.stat().st_size
    print(f"text {text_bytes:,} bytes, page {size:,} bytes: page / text = {size / text_bytes:.2f}")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("no chromium: render time not measured")
        return 0
    with tempfile.TemporaryDirectory() as profile:
        start = time.perf_counter()
        dom = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=60000",
                "--window-size=1000,700",
                "--dump-dom",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        ).stdout
        wall = time.perf_counter() - start
    ready = re.search(r'data-ready-ms="(\d+)"', dom)
    spans = len(re.findall(r'<span id="c\d+"', dom))
    print(
        f"chromium: interactive after {ready[1] if ready else '?'} ms (page clock); "
        f"whole headless run {wall:.1f} s"
    )
    print(f"character spans after load: {spans:,} of {chars:,} characters ({spans / max(chars, 1):.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
