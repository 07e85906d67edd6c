"""The surprisal page: one self-contained HTML file showing how surprised a model is by each character.

The computation lives in ``charnn.evaluate``; this module only lays it out. Per-character data is
packed into typed columns (surprisal in milli-bits as uint16, top-k predictions as token ids and
probabilities in 1/255ths), compressed with zlib and embedded as base64; the page's script inflates
it with the browser's DecompressionStream and builds character spans chunk by chunk as they
scroll into view. No external resource is referenced, and a Content-Security-Policy forbids any.
"""

from __future__ import annotations

import base64
import html
import json
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from charnn.evaluate import CharSurprisal, line_bpc, surprising_passages

CHUNK_CHARS = 4096  # characters per lazily rendered chunk
SURPRISAL_THRESHOLDS = [0.5, 1, 2, 3, 4, 6, 8, 11]  # bits: shade classes s0..s8
DIFF_THRESHOLDS = [-4, -2, -1, -0.25, 0.25, 1, 2, 4]  # bits, B - A: shade classes d0..d8
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'"
)
ATTRIBUTION = {
    "char": "one token per character, so each character carries its own surprisal",
    "sentencepiece": (
        "subword tokens: a token's surprisal is spread evenly over the characters it spells, "
        "and its predictions are shown on each of them"
    ),
}


@dataclass(frozen=True)
class ModelReport:
    """One model's reading of the text."""

    name: str  # what the page calls it (the checkpoint path)
    kind: str  # tokenizer kind
    vocab: list[str]  # text of each token id
    surprisal: CharSurprisal


BITS_SCALE = 64  # surprisal stored in 1/64 bit (shown to 2 decimals), up to 1023.98 bits
PROB_STEPS = 50  # prediction probabilities stored in 2 % steps; those under 1 % round to 0 and are left out


def _milli(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values * 1000), 0, 65535).astype(np.uint16)


def _bit_planes(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Surprisal as high and low bytes of 1/64-bit units: two planes compress better than uint16."""
    units = np.clip(np.rint(bits * BITS_SCALE), 0, 65535).astype(np.uint16)
    return (units >> 8).astype(np.uint8), (units & 0xFF).astype(np.uint8)


class _Blob:
    """Typed sections packed back to back (4-byte aligned) for the page's typed-array views."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.sections: dict[str, tuple[int, int, str]] = {}
        self.size = 0

    def add(self, name: str, array: np.ndarray) -> None:
        kinds = {np.dtype(np.uint8): "u8", np.dtype(np.uint16): "u16", np.dtype(np.uint32): "u32"}
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        self.sections[name] = (self.size, int(array.size), kinds[array.dtype])
        pad = -len(data) % 4
        self.parts.append(data + b"\0" * pad)
        self.size += len(data) + pad

    def encoded(self) -> str:
        return base64.b64encode(zlib.compress(b"".join(self.parts), 9)).decode("ascii")


def _chunk_bounds(text: str, line_starts: np.ndarray) -> list[int]:
    """Chunk starts at line starts about every CHUNK_CHARS characters (a huge line is cut), then the end."""
    bounds = [0]
    for start in line_starts.tolist():
        if start - bounds[-1] >= CHUNK_CHARS:
            bounds.append(start)
    out = [0]
    for a, b in zip(bounds, bounds[1:] + [len(text)], strict=True):
        out.extend(range(a + 2 * CHUNK_CHARS, b, 2 * CHUNK_CHARS))  # cut lines longer than 2 chunks
        out.append(b)
    return sorted(set(out))


def _model_sections(blob: _Blob, j: int, model: ModelReport) -> dict[str, object]:
    cs = model.surprisal
    _, lbpc = line_bpc(cs.text, cs.bits)
    high, low = _bit_planes(cs.bits)
    blob.add(f"bh{j}", high)
    blob.add(f"bl{j}", low)
    blob.add(f"lbpc{j}", _milli(lbpc))
    if model.kind != "char":
        blob.add(f"tok{j}", cs.token_of_char.astype(np.uint32))
    top_ids, top_probs = cs.tokens.top_ids, cs.tokens.top_probs  # (N, k)
    quantised = np.rint(top_probs * PROB_STEPS).astype(np.uint8)
    ids = np.where(quantised > 0, top_ids, 0)  # ids of predictions too small to show compress away
    id_type = np.uint8 if len(model.vocab) <= 256 else np.uint16
    blob.add(f"ids{j}", ids.T.astype(id_type))  # column-major: all first choices, then all second...
    blob.add(f"p{j}", quantised.T.copy())
    return {
        "name": model.name,
        "kind": model.kind,
        "bpc": cs.bpc,
        "vocab": model.vocab,
        "k": int(top_ids.shape[1]),
        "tokens": int(top_ids.shape[0]),
    }


# Characters a page must never show raw: C0/C1 controls (but newline and tab), DEL, and the
# bidirectional formatting characters that reorder the text around them.
_HIDDEN = [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F]
_HIDDEN += [0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_MARKS = {c: chr(0x2400 + c) if c < 0x20 else "\u2421" if c == 0x7F else f"[U+{c:04X}]" for c in _HIDDEN}


def visible(text: str) -> str:
    """``text`` with control and bidi characters as visible marks (``␛``, ``[U+202E]``), as the
    page's script draws them too: a name or passage cannot reorder or hide what is around it."""
    return text.translate(_MARKS)


def _json_for_script(data: object) -> str:
    """JSON that cannot end its <script> element or open a comment inside it, and holds no raw
    control or bidi character (escaped: the script reads the same string)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for ch, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(ch, escaped)
    return text.translate({c: f"\\u{c:04x}" for c in _HIDDEN})


def _passages_html(text: str, bits: np.ndarray, count: int = 20) -> str:
    rows = []
    for start, end, total in surprising_passages(bits, width=40, count=count):
        snippet = visible(text[start:end].replace("\n", "\u21b5"))
        rows.append(
            f'<li><a href="#c{start}">{total / (end - start):.2f} bpc</a> '
            f"<code>{html.escape(snippet)}</code></li>"
        )
    return "\n".join(rows)


def _legend(compare: bool) -> str:
    if compare:
        edges = DIFF_THRESHOLDS
        labels = [f"< {edges[0]}"] + [f"{a:+g} to {b:+g}" for a, b in zip(edges, edges[1:], strict=False)]
        labels.append(f"> {edges[-1]:+g}")
        prefix, what = "d", "B − A, bits per character (blue: B less surprised; red: B more surprised)"
    else:
        edges = SURPRISAL_THRESHOLDS
        labels = [f"< {edges[0]}"] + [f"{a:g}–{b:g}" for a, b in zip(edges, edges[1:], strict=False)]
        labels.append(f"≥ {edges[-1]:g}")
        prefix, what = "s", "surprisal, bits (−log₂ p of the character)"
    swatches = "".join(
        f'<span class="sw {prefix}{i}">{html.escape(label)}</span>' for i, label in enumerate(labels)
    )
    return f'<div class="legend" aria-label="colour legend"><span>{what}:</span>{swatches}</div>'


def _models_table(models: list[ModelReport]) -> str:
    rows = []
    for j, m in enumerate(models):
        cs = m.surprisal
        tag = f"<b>{'AB'[j]}</b> " if len(models) == 2 else ""
        rows.append(
            f"<tr><td>{tag}<code>{html.escape(visible(m.name))}</code></td><td class=num>{cs.bpc:.4f}</td>"
            f"<td class=num>{len(cs.text):,}</td><td class=num>{len(cs.tokens.logprob):,}</td>"
            f"<td>{html.escape(m.kind)}</td></tr>"
        )
    head = "<tr><th>model</th><th>bpc</th><th>characters</th><th>tokens</th><th>tokenizer</th></tr>"
    return f'<table class="models">{head}{"".join(rows)}</table>'


def _attribution(models: list[ModelReport]) -> str:
    return "; ".join(sorted({ATTRIBUTION.get(m.kind, ATTRIBUTION["sentencepiece"]) for m in models}))


def _headline(models: list[ModelReport]) -> str:
    """The numbers above the text (static HTML: readable before the script runs)."""
    parts = [_models_table(models)]
    if len(models) == 2:
        a, b = models[0].surprisal, models[1].surprisal
        diff = b.bits - a.bits
        parts.append(
            f"<p>B − A: <b class=num>{diff.sum() / max(len(a.text), 1):+.4f} bpc</b>; B is less surprised "
            f"by {int((diff < 0).sum()):,} characters and more by {int((diff > 0).sum()):,}.</p>"
        )
    parts.append(
        "<p class=muted>Each character is predicted from everything before it (the text starts after a "
        "newline, as <code>charnn score</code> assumes). Attribution: "
        f"{html.escape(_attribution(models))}. The number left of each line is that line's bits per "
        "character. Hover a character, or click into the text and move with the arrow keys, Home and End, "
        "to see the model's top predictions; each character's title says the same in words.</p>"
    )
    return "\n".join(parts)


def _aside(models: list[ModelReport]) -> str:
    """The passage lists, each entry a link to its place in the text."""
    text = models[0].surprisal.text
    if len(models) == 2:
        diff = models[1].surprisal.bits - models[0].surprisal.bits
        return (
            "<h2>Where B is most worse than A</h2><p class=muted>40-character stretches; bpc of B − A.</p>"
            f"<ol class=passages>{_passages_html(text, diff, 10)}</ol>"
            "<h2>Where B is most better than A</h2><p class=muted>bpc of A − B.</p>"
            f"<ol class=passages>{_passages_html(text, -diff, 10)}</ol>"
        )
    return (
        "<h2>Most surprising passages</h2><p class=muted>40-character stretches with the most bits "
        "per character; each links to its place in the text.</p>"
        f"<ol class=passages>{_passages_html(text, models[0].surprisal.bits)}</ol>"
    )


def build_report(source_name: str, models: list[ModelReport]) -> str:
    """The whole page as one string. ``models``: one, or two to compare on the same text."""
    if not 1 <= len(models) <= 2:
        raise ValueError("a surprisal page shows one model or compares two")
    text = models[0].surprisal.text
    starts, _ = line_bpc(text, models[0].surprisal.bits)
    blob = _Blob()
    blob.add("text", np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8))
    blob.add("lines", starts.astype(np.uint32))
    meta = {
        "chars": len(text),
        "bounds": _chunk_bounds(text, starts),
        "models": [_model_sections(blob, j, m) for j, m in enumerate(models)],
        "thresholds": {"s": SURPRISAL_THRESHOLDS, "d": DIFF_THRESHOLDS},
        "scale": {"bits": BITS_SCALE, "prob": PROB_STEPS},
    }
    meta["sections"] = blob.sections
    assets = resources.files("charnn") / "assets"
    css = (assets / "report.css").read_text(encoding="utf-8")
    js = (assets / "report.js").read_text(encoding="utf-8")
    title = visible(f"surprisal: {source_name}" + (" (A vs B)" if len(models) == 2 else ""))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="charnn">
<title>{html.escape(title)}</title>
<style>{css}</style>
</head>
<body>
<header><h1>{html.escape(title)}</h1>
{_headline(models)}
{_legend(len(models) == 2)}
<p id="status" role="status">Loading the text and its per-character data…</p>
</header>
<div class="layout">
<main>
<div id="text" tabindex="0" role="document" aria-label="the text, one focusable element per character; \
arrow keys move between characters">
<noscript>The shaded text needs JavaScript; the summary above does not.</noscript></div>
</main>
<aside>{_aside(models)}</aside>
</div>
<div id="info" role="status" aria-live="polite"></div>
<script type="application/json" id="meta">{_json_for_script(meta)}</script>
<script type="application/octet-stream" id="data">{blob.encoded()}</script>
<script>{js}</script>
</body>
</html>
"""


def write_report(path: str | Path, page: str) -> None:
    """Write the page atomically (see :mod:`charnn.atomic`)."""
    from charnn.atomic import write_atomic

    write_atomic(path, page)
