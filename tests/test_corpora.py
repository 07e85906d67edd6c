"""``charnn corpora`` and ``charnn train NAME`` against a local HTTP server (127.0.0.1, a thread).

Nothing here touches the internet: the registry is a temporary file whose URLs point at the
local server, which can serve a good file, a corrupted one, drop the connection half-way, ignore
Range requests, or stall.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import TINY_MODEL_ARGS, make_text

DATA = make_text(120, seed=3).encode("utf-8")


class _Handler(BaseHTTPRequestHandler):
    """Paths: /good, /corrupt, /drop (first request cut half-way), /norange (cut, then ignores
    Range), /slow (stalls before answering)."""

    state: dict[str, list[str | None]] = {}  # path -> the Range header of each request

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.strip("/")
        seen = self.state.setdefault(path, [])
        seen.append(self.headers.get("Range"))
        if path == "slow":
            time.sleep(3)
        body = DATA if path != "corrupt" else DATA[:100] + b"X" + DATA[101:]
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match[1]) if match and path != "norange" else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if path in ("drop", "norange") and len(seen) == 1:
            self.wfile.write(body[: len(body) // 2])  # then the connection closes: a dropped download
            self.close_connection = True
            return
        self.wfile.write(body[start:])


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.state = {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def registry(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registry of the server's paths (all verified except 'unverified'); CHARNN_CACHE under tmp."""
    sha = hashlib.sha256(DATA).hexdigest()

    def entry(name: str, path: str, verified: bool = True) -> dict[str, object]:
        return {
            "name": name,
            "url": f"{server}/{path}",
            "size": len(DATA) if verified else None,
            "sha256": sha if verified else None,
            "language": "en",
            "licence": "public domain",
            "description": f"test corpus {name}",
        }

    corpora = [entry(n, n) for n in ("good", "corrupt", "drop", "norange", "slow")]
    corpora += [
        entry("unverified", "good", verified=False),
        {**entry("docs", "x"), "url": "builtin:pydoc", "sha256": None, "size": None},
    ]
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"format": "charnn-corpora", "version": 1, "corpora": corpora}))
    monkeypatch.setenv("CHARNN_CORPORA_REGISTRY", str(path))
    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_fetch_verifies_and_caches(registry: Path, cli_inprocess) -> None:
    proc = cli_inprocess("corpora", "fetch", "good")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(registry / "good.txt")
    assert (registry / "good.txt").read_bytes() == DATA
    assert sorted(p.name for p in registry.iterdir()) == ["good.txt"]  # no temporary file left
    again = cli_inprocess("corpora", "fetch", "good")
    assert again.returncode == 0 and len(_Handler.state["good"]) == 1  # served from the cache
    listing = [json.loads(line) for line in cli_inprocess("corpora", "--json").stdout.splitlines()]
    assert {r["name"]: r["cached"] for r in listing}["good"] == str(registry / "good.txt")
    assert {r["name"]: r["cached"] for r in listing}["drop"] is None


def test_corrupted_download_is_refused_and_discarded(registry: Path, cli_inprocess) -> None:
    proc = cli_inprocess("corpora", "fetch", "corrupt")
    assert proc.returncode == 3 and "does not match the registry" in proc.stderr
    assert not registry.exists() or not list(registry.iterdir())  # neither the final name nor a part


@pytest.mark.parametrize("path", ["drop", "norange"])
def test_dropped_connection_resumes_or_restarts(registry: Path, cli_inprocess, path: str) -> None:
    first = cli_inprocess("corpora", "fetch", path)
    assert first.returncode == 1 and "run the same command again to resume" in first.stderr, first.stderr
    assert not (registry / f"{path}.txt").exists()
    assert (registry / f"{path}.txt.part").stat().st_size == len(DATA) // 2
    second = cli_inprocess("corpora", "fetch", path)
    assert second.returncode == 0, second.stderr
    assert (registry / f"{path}.txt").read_bytes() == DATA
    assert _Handler.state[path] == [None, f"bytes={len(DATA) // 2}-"]  # the retry asked for the rest
    assert not (registry / f"{path}.txt.part").exists()


def test_slow_server_times_out(registry: Path, cli_inprocess) -> None:
    start = time.monotonic()
    proc = cli_inprocess("corpora", "fetch", "slow", "--timeout", "0.3")
    assert proc.returncode == 1 and "timed out after 0.3s" in proc.stderr, proc.stderr
    assert time.monotonic() - start < 2.5
    assert not (registry / "slow.txt").exists()


def test_unverified_entries_need_no_verify(registry: Path, cli_inprocess, tmp_path: Path) -> None:
    refused = cli_inprocess("corpora", "fetch", "unverified")
    assert refused.returncode == 3 and "--no-verify" in refused.stderr and "unverified" not in _Handler.state
    other = tmp_path / "elsewhere"
    ok = cli_inprocess("corpora", "fetch", "unverified", "--no-verify", "--cache-dir", other)
    assert ok.returncode == 0 and (other / "unverified.txt").read_bytes() == DATA


def test_unknown_name_and_builtin(registry: Path, cli_inprocess) -> None:
    unknown = cli_inprocess("corpora", "fetch", "nope")
    assert unknown.returncode == 2 and "unknown corpus 'nope'" in unknown.stderr
    builtin = cli_inprocess("corpora", "fetch", "docs")
    assert builtin.returncode == 0 and builtin.stdout.strip() == "builtin:pydoc"


def test_train_accepts_a_registry_name(registry: Path, cli_inprocess, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = cli_inprocess(
        "train",
        "good",
        "-o",
        out,
        *TINY_MODEL_ARGS,
        "--steps",
        "2",
        "--seq-len",
        "16",
        "--batch-size",
        "4",
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr
    assert (registry / "good.txt").read_bytes() == DATA
    meta = json.loads((out / "latest" / "meta.json").read_text())
    assert meta["corpus"]["sources"] == [str(registry / "good.txt")]
    refused = cli_inprocess("train", "corrupt", "-o", tmp_path / "run2", "--steps", "1")
    assert refused.returncode == 3 and not (tmp_path / "run2" / "latest").exists()


def test_real_registry_is_well_formed(monkeypatch: pytest.MonkeyPatch) -> None:
    from charnn.corpora import load_registry

    monkeypatch.delenv("CHARNN_CORPORA_REGISTRY", raising=False)
    entries = load_registry()
    assert len({e.name for e in entries}) == len(entries) >= 7
    assert len({e.language for e in entries}) >= 4
    shakespeare = next(e for e in entries if e.name == "tinyshakespeare")
    assert shakespeare.verified and shakespeare.size == 1115394
    assert any(e.builtin for e in entries)
