"""The surprisal page in a real browser: headless Chromium renders it from file:// and we read the DOM.

Checks: the rendered DOM holds the input text with one shaded element per character; the title
(hover) and the details panel (keyboard focus, via ``#cN``) of a character carry the same bits as
``charnn score`` computes for it; nothing in the page points outside it and the CSP forbids loads;
a screenshot is not blank. ``make test`` installs Debian's chromium first (tests/ensure_chromium.sh);
without a browser this module skips and says so.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TINY_MODEL_ARGS, make_text

NASTY = "He said \"</script><b>&amp;\" & 'left' <!-- -->\n"
EVAL_TEXT = make_text(8, seed=5) + NASTY + make_text(4, seed=6) + "é\tend"


def _browser() -> str | None:
    for name in (os.environ.get("CHARNN_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


BROWSER = _browser()
pytestmark = pytest.mark.skipif(
    BROWSER is None,
    reason="no chromium found and it could not be installed (make test runs tests/ensure_chromium.sh, "
    "which needs root and apt-get); the surprisal page was not tested in a browser",
)


def _chromium(page: Path, fragment: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = [
        BROWSER,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp / 'profile'}",
        "--virtual-time-budget=10000",
        *extra,
        page.as_uri() + fragment,
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


class _Dom(HTMLParser):
    """Character spans (id cN) with their class, title and text; every src/href; the panel's bits."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.spans: dict[int, dict[str, str]] = {}
        self.links: list[str] = []
        self.csp = ""
        self.panel_bits: list[float] = []
        self.ready_ms: float | None = None
        self._open: int | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.links += [a[k] for k in ("src", "href", "action", "poster") if k in a]
        if tag == "meta" and a.get("http-equiv", "").lower() == "content-security-policy":
            self.csp = a.get("content", "")
        if tag == "body" and "data-ready-ms" in a:
            self.ready_ms = float(a["data-ready-ms"])
        if "data-bits" in a:
            self.panel_bits.append(float(a["data-bits"]))
        if tag == "span" and re.fullmatch(r"c\d+", a.get("id", "")):
            self._open = int(a["id"][1:])
            self.spans[self._open] = {"class": a.get("class", ""), "title": a.get("title", ""), "text": ""}

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.spans[self._open]["text"] += data


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny model trained on text holding every character of EVAL_TEXT, and its page for EVAL_TEXT."""
    from charnn.cli import main

    tmp = tmp_path_factory.mktemp("browser")
    corpus = tmp / "corpus.txt"
    corpus.write_text(make_text(60) + EVAL_TEXT * 3, encoding="utf-8")
    run = tmp / "run"
    held_out = tmp / "held-out.txt"
    held_out.write_text(EVAL_TEXT, encoding="utf-8")
    out = tmp / "page.html"
    for argv in (
        [
            "train",
            str(corpus),
            "-o",
            str(run),
            *TINY_MODEL_ARGS,
            "--steps",
            "20",
            "--seq-len",
            "32",
            "--device",
            "cpu",
        ],
        ["eval", "-c", str(run), str(held_out), "--html", str(out)],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0, argv
    return out, run


def _score_bits(cli_inprocess: Callable[..., Any], run: Path, tmp: Path, i: int) -> float:
    """Bits of character i by ``charnn score --whole``: log p(text[:i+1]) - log p(text[:i])."""
    logprob = []
    for n in (i, i + 1):
        if n == 0:  # the empty text has probability 1 (and score refuses an empty file)
            logprob.append(0.0)
            continue
        f = tmp / f"prefix{n}.txt"
        f.write_text(EVAL_TEXT[:n], encoding="utf-8")
        proc = cli_inprocess("score", "-c", run, "--whole", "--json", f)
        assert proc.returncode == 0, proc.stderr
        logprob.append(json.loads(proc.stdout)["logprob"])
    return -(logprob[1] - logprob[0]) / math.log(2)


def test_rendered_dom_has_every_character_shaded_and_nothing_external(
    page: tuple[Path, Path], tmp_path: Path
) -> None:
    html_file, _ = page
    dom = _Dom()
    dom.feed(_chromium(html_file, "#render-all", tmp_path, "--dump-dom").stdout)
    assert dom.ready_ms is not None, "the page's script did not finish"
    assert sorted(dom.spans) == list(range(len(EVAL_TEXT))), "one element per character"
    assert "".join(dom.spans[i]["text"] for i in range(len(EVAL_TEXT))) == EVAL_TEXT
    assert all(re.search(r"\bs[0-8]\b", s["class"]) for s in dom.spans.values()), "every character shaded"
    assert "default-src 'none'" in dom.csp
    assert dom.links and all(link.startswith("#c") for link in dom.links), dom.links


def test_hover_and_focus_data_match_charnn_score(
    page: tuple[Path, Path], tmp_path: Path, cli_inprocess: Callable[..., Any]
) -> None:
    html_file, run = page
    start = EVAL_TEXT.index("</script>")
    for i in (0, start + 2, len(EVAL_TEXT) - 1):
        expected = _score_bits(cli_inprocess, run, tmp_path, i)
        dom = _Dom()
        dom.feed(_chromium(html_file, f"#c{i}", tmp_path, "--dump-dom").stdout)
        title = dom.spans[i]["title"]  # what hovering shows
        # Stored in 1/64 bit: the panel's exact value within 1/128 bit, the title's 2 decimals within 0.013.
        assert float(re.search(r"([0-9.]+) bits", title)[1]) == pytest.approx(expected, abs=0.013), title
        assert dom.panel_bits == [pytest.approx(expected, abs=1 / 128 + 1e-5)]  # the panel focus fills
        assert "expected" in title and "%" in title


def test_screenshot_is_not_blank(page: tuple[Path, Path], tmp_path: Path) -> None:
    html_file, _ = page
    shot = tmp_path / "shot.png"
    _chromium(html_file, "", tmp_path, "--hide-scrollbars", "--window-size=800,600", f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 15_000, "a blank page compresses to a few KB"


def test_page_total_matches_score_whole(page: tuple[Path, Path]) -> None:
    html_file, run = page
    from charnn.app import run_score

    (row,) = list(run_score(str(run), [str(html_file.parent / "held-out.txt")], None, whole=True))
    text = html_file.read_text(encoding="utf-8")
    assert f"<td class=num>{row.bpc:.4f}</td>" in text
    assert json.loads(re.search(r'id="meta">(.*?)</script>', text, re.S)[1])["chars"] == len(EVAL_TEXT)
