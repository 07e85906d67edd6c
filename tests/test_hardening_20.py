"""Issue 20's adversarial findings, one section per defect class: a user's files under the
names charnn writes, exact resume around validation, a corpus cache that trusts nothing it
reads, unwritable places, bounded downloads, forged training state, hostile names, listings
that survive one bad run, and the smaller items. Each test failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_MODEL_ARGS

SHORT = (*TINY_MODEL_ARGS, "--steps", "3", "--seq-len", "16", "--batch-size", "4", "--device", "cpu")


def tree(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


# ---------------------------------------------------------------------------- 1. reserved names


@pytest.mark.parametrize("name", [".latest.old", ".latest.tmp", ".best.old", ".best.tmp"])
def test_a_users_folder_under_an_aside_name_survives_resume(
    name: str, trained_run_copy: Path, cli_inprocess
) -> None:
    mine = trained_run_copy / name
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    proc = cli_inprocess("train", "--resume", trained_run_copy, "--steps", "3")
    assert proc.returncode == 2, proc.stderr
    assert f"{name}: exists and is not a charnn checkpoint" in proc.stderr
    assert (mine / "notes.txt").read_text() == "my notes"


@pytest.mark.parametrize("name", [".best.old", ".latest.old"])
def test_a_users_aside_folder_in_a_fresh_out_is_neither_moved_nor_half_used(
    name: str, tmp_path: Path, corpus_file: Path, cli_inprocess
) -> None:
    out = tmp_path / "run"
    (out / name).mkdir(parents=True)
    (out / name / "meta.json").write_text('{"mine": true}')
    before = tree(out)
    proc = cli_inprocess("train", corpus_file, "--out", out, *SHORT)
    assert proc.returncode == 2, proc.stderr
    assert "not a charnn checkpoint" in proc.stderr
    assert tree(out) == before
    assert sorted(p.name for p in out.iterdir()) == [name]


@pytest.mark.parametrize("name", ["metrics.jsonl", "samples.txt"])
@pytest.mark.parametrize("force", [(), ("--force",)], ids=["plain", "force"])
def test_a_users_own_history_file_in_out_is_never_replaced(
    name: str, force: tuple[str, ...], tmp_path: Path, corpus_file: Path, cli_inprocess
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_text("my own measurements\n1 2 3\n")
    proc = cli_inprocess("train", corpus_file, "--out", out, *SHORT, *force)
    assert proc.returncode == 2, proc.stderr
    assert f"not charnn's {name}" in proc.stderr
    assert (out / name).read_text() == "my own measurements\n1 2 3\n"
    assert not (out / "latest").exists()


def test_a_save_killed_while_deleting_its_aside_copy_is_still_cleaned_up(
    trained_run_copy: Path, cli_inprocess
) -> None:
    # What a killed deletion leaves: some checkpoint files, the marker deleted last (or empty).
    old = trained_run_copy / ".latest.old"
    old.mkdir()
    (old / "train_state.safetensors").write_bytes(b"half")
    (trained_run_copy / ".latest.tmp").mkdir()
    proc = cli_inprocess("train", "--resume", trained_run_copy, "--steps", "6")
    assert proc.returncode == 0, proc.stderr
    assert not old.exists() and not (trained_run_copy / ".latest.tmp").exists()


def test_a_resumed_and_a_forced_run_accept_their_own_history(
    trained_run_copy: Path, corpus_file: Path, cli_inprocess
) -> None:
    proc = cli_inprocess("train", "--resume", trained_run_copy, "--steps", "6")
    assert proc.returncode == 0, proc.stderr
    proc = cli_inprocess("train", corpus_file, "--out", trained_run_copy, *SHORT, "--force")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (trained_run_copy / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["kind"] == "start" and rows[0]["step"] == 0


# ---------------------------------------------------------------------------- 2. exact resume

EXACT = (*TINY_MODEL_ARGS, "--dropout", "0.1", "--seq-len", "16", "--batch-size", "4", "--seed", "5")
EXACT += ("--warmup", "2", "--device", "cpu", "--sample-every", "1")


def _history(run: Path) -> dict[str, object]:
    """Everything an exact resume must reproduce: weights and training state, validations
    (step, bpc, best), the stop, and the training samples."""
    meta = json.loads((run / "latest" / "meta.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [(r["step"], r["bpc"], r["is_best"]) for r in rows if r["kind"] == "val"]
    return {
        "step": meta["progress"]["step"],
        "files": meta["files"],
        "stopped": meta["progress"].get("stopped_reason"),
        "vals": vals,
        "stops": [r["step"] for r in rows if r["kind"] == "stop"],
        "samples": (run / "samples.txt").read_text(),
        "best": json.loads((run / "best" / "meta.json").read_text())["files"],
    }


def _interrupt_at_validation(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """SIGINT arrives while step ``step`` is being validated (deterministically)."""
    import signal

    from charnn.trainer import Trainer

    evaluate = Trainer.evaluate

    def interrupted(self: Trainer):  # type: ignore[no-untyped-def]
        result = evaluate(self)
        if self.progress.step == step:
            signal.raise_signal(signal.SIGINT)
        return result

    monkeypatch.setattr(Trainer, "evaluate", interrupted)


@pytest.mark.parametrize(
    "options,at",
    [
        (("--steps", "7", "--eval-every", "1"), 3),
        (("--steps", "7", "--eval-every", "1"), 7),
        (("--steps", "30", "--eval-every", "2", "--patience", "2", "--min-delta", "5"), 2),
        (("--steps", "30", "--eval-every", "2", "--patience", "2", "--min-delta", "5"), 4),
        (("--steps", "30", "--eval-every", "2", "--patience", "2", "--min-delta", "5"), 6),
        (("--steps", "30", "--eval-every", "3", "--patience", "1", "--min-delta", "5"), 6),
    ],
    ids=["every-step", "every-step-last", "patience-first", "patience-stale", "patience-stop", "patience-1"],
)
def test_a_run_interrupted_in_validation_resumes_to_the_same_run(
    options: tuple[str, ...], at: int, tmp_path: Path, corpus_file: Path, cli_inprocess, monkeypatch
) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    proc = cli_inprocess("train", corpus_file, "--out", whole, *EXACT, *options)
    assert proc.returncode == 0, proc.stderr
    assert ("early stopping" in proc.stderr) == ("--patience" in options)
    with monkeypatch.context() as patch:
        _interrupt_at_validation(patch, at)
        proc = cli_inprocess("train", corpus_file, "--out", split, *EXACT, *options)
    assert proc.returncode == 130, proc.stderr
    assert f"stopped at step {at};" in proc.stderr
    proc = cli_inprocess("train", "--resume", split)
    assert proc.returncode == 0, proc.stderr
    assert _history(split) == _history(whole)


# ---------------------------------------------------------------------------- 3. the corpus cache


def _cached(corpus: Path, cache: Path):  # type: ignore[no-untyped-def]
    from charnn.corpus_cache import load_corpus_cached

    return load_corpus_cached([str(corpus)], cache_dir=cache)


def _same_as_memory(corpus: Path, cache: Path) -> None:
    import numpy as np

    from charnn.data import load_corpus

    got, want = _cached(corpus, cache), load_corpus([str(corpus)])
    assert got.tokenizer.to_dict() == want.tokenizer.to_dict()
    assert np.array_equal(np.asarray(got.ids), np.asarray(want.ids))
    assert got.sha256 == want.sha256


def _ids_entry(cache: Path) -> tuple[Path, Path]:
    (record,) = [p for p in cache.glob("ids-*.json")]
    return record.with_suffix(".bin"), record


def _forge(record: Path, **fields: object) -> None:
    data = json.loads(record.read_text())
    data.update(fields)
    record.write_text(json.dumps(data))


def test_ids_corrupted_with_the_mtime_restored_are_not_used(tmp_path: Path, corpus_file: Path) -> None:
    import os

    cache = tmp_path / "cache"
    _cached(corpus_file, cache)
    ids, _ = _ids_entry(cache)
    st = ids.stat()
    data = bytearray(ids.read_bytes())
    data[100] = (data[100] + 1) % 50
    ids.write_bytes(bytes(data))
    os.utime(ids, ns=(st.st_atime_ns, st.st_mtime_ns))
    _same_as_memory(corpus_file, cache)


def test_out_of_range_ids_with_a_matching_checksum_are_rebuilt(tmp_path: Path, corpus_file: Path) -> None:
    import hashlib

    cache = tmp_path / "cache"
    _cached(corpus_file, cache)
    ids, record = _ids_entry(cache)
    data = bytearray(ids.read_bytes())
    data[5] = 250  # far past the vocabulary
    ids.write_bytes(bytes(data))
    _forge(record, sha256=hashlib.sha256(bytes(data)).hexdigest())
    _same_as_memory(corpus_file, cache)


@pytest.mark.parametrize("dtype", ["|O", "<f4", "<u2", "|b1", "<V4", 7, None])
def test_a_forged_dtype_is_rebuilt_never_mapped(dtype: object, tmp_path: Path, corpus_file: Path) -> None:
    cache = tmp_path / "cache"
    _cached(corpus_file, cache)
    _, record = _ids_entry(cache)
    _forge(record, dtype=dtype)
    _same_as_memory(corpus_file, cache)


@pytest.mark.parametrize(
    "edit", ["extra-char", "lone-surrogate", "missing-char", "unsorted", "not-ints"], ids=str
)
def test_an_edited_vocabulary_record_is_scanned_again(edit: str, tmp_path: Path, corpus_file: Path) -> None:
    cache = tmp_path / "cache"
    _cached(corpus_file, cache)
    (record,) = cache.glob("src-*.json")
    cps = json.loads(record.read_text())["codepoints"]
    forged = {
        "extra-char": sorted([*cps, ord("\u263a")]),
        "lone-surrogate": sorted([*cps, 0xD800]),
        "missing-char": cps[1:],
        "unsorted": cps[::-1],
        "not-ints": [*cps[:-1], str(cps[-1])],
    }[edit]
    _forge(record, codepoints=forged)
    _same_as_memory(corpus_file, cache)
    _same_as_memory(corpus_file, cache)  # and the rebuilt record is good


def test_a_source_replaced_while_hashed_leaves_no_entry_under_the_old_text(
    tmp_path: Path, corpus_text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from charnn import corpus_cache
    from charnn.errors import DataError

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_text)
    cache = tmp_path / "cache"
    hash_file = corpus_cache._hash_file

    def replaced_after_hashing(path: Path, advance):  # type: ignore[no-untyped-def]
        result = hash_file(path, advance)
        path.write_text("a different text, arrived meanwhile\n")
        return result

    with monkeypatch.context() as patch:
        patch.setattr(corpus_cache, "_hash_file", replaced_after_hashing)
        with pytest.raises(DataError, match="changed while charnn was reading it"):
            _cached(corpus, cache)
    assert not list(cache.glob("ids-*.json")) and not list(cache.glob("src-*.json"))
    _same_as_memory(corpus, cache)  # the next run reads the new text


# ---------------------------------------------------------------------------- 4. unwritable places


def test_a_cache_dir_that_is_a_file_falls_back_to_memory(
    tmp_path: Path, corpus_file: Path, cli_inprocess, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("not a directory")
    # (--cache-dir FILE is refused as a usage error before anything runs; the environment's is not)
    monkeypatch.setenv("CHARNN_CACHE", str(blocker))
    proc = cli_inprocess("train", corpus_file, "--out", tmp_path / "run", *SHORT)
    assert proc.returncode == 0, proc.stderr
    assert f"{blocker}: cannot use the corpus cache" in proc.stderr
    assert "the corpus is read in memory" in proc.stderr


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EROFS", "EFBIG"])
def test_a_full_or_read_only_cache_falls_back_to_memory(
    errno_name: str, tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os
    import tempfile

    code = getattr(errno, errno_name)

    def refused(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refused)  # where the ids are written first
    corpus = _cached(corpus_file, tmp_path / "cache")
    assert any(os.strerror(code) in note and "read in memory" in note for note in corpus.notes)
    monkeypatch.undo()
    _same_as_memory(corpus_file, tmp_path / "cache")


def test_a_file_size_limit_on_the_cache_is_not_an_internal_error(
    tmp_path: Path, trained_run: Path, corpus_file: Path, cli_command, cli_env
) -> None:
    import resource
    import subprocess

    def limit() -> None:  # the ids (~9 KB) cannot be written; the cache records could
        resource.setrlimit(resource.RLIMIT_FSIZE, (4000, 4000))

    proc = subprocess.run(
        cli_command("eval", corpus_file, "-c", trained_run, "--cache-dir", tmp_path / "cache", "--json"),
        capture_output=True,
        text=True,
        env=cli_env(),
        preexec_fn=limit,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["bpc"] > 0


@pytest.mark.parametrize("resume", [False, True], ids=["new", "resume"])
def test_a_metrics_file_that_is_a_directory_is_one_line_naming_it(
    resume: bool, tmp_path: Path, trained_run_copy: Path, corpus_file: Path, cli_inprocess
) -> None:
    out = trained_run_copy if resume else tmp_path / "new"
    if resume:
        (out / "metrics.jsonl").unlink()
    (out / "metrics.jsonl").mkdir(parents=True)
    args = ("--resume", out, "--steps", "40") if resume else (corpus_file, "--out", out, *SHORT)
    proc = cli_inprocess("train", *args)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("charnn: error:")]
    assert len(errors) == 1 and str(out / "metrics.jsonl") in errors[0], proc.stderr
    assert "internal error" not in proc.stderr


def test_a_history_that_cannot_be_written_is_a_data_error_naming_it(tmp_path: Path) -> None:
    from charnn.errors import DataError
    from charnn.metrics import MetricsLog
    from charnn.metrics_rows import StartRow

    blocker = tmp_path / "file"
    blocker.write_text("x")
    log = MetricsLog(blocker / "metrics.jsonl")
    with pytest.raises(
        DataError, match=r"metrics\.jsonl: cannot write the run's history \(Not a directory\)"
    ):
        log.append(StartRow(step=0, elapsed=0.0))
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(DataError, match="dir.jsonl: cannot write"):
        MetricsLog(tmp_path / "dir.jsonl").rewind(0)


# ---------------------------------------------------------------------------- 5. bounded downloads

BODY = ("All the world's a stage, and all the men and women merely players.\n" * 40).encode()


def _serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sized: bool = True):  # type: ignore[no-untyped-def]
    """A local server (127.0.0.1) whose paths misbehave, and a registry naming each path."""
    import hashlib
    import re
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        seen: list[tuple[str, str | None]] = []

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.strip("/")
            rng = self.headers.get("Range")
            Handler.seen.append((path, rng))
            start = int(m[1]) if (m := re.fullmatch(r"bytes=(\d+)-", rng or "")) else 0
            if path == "huge":  # announces a terabyte
                self.send_response(200)
                self.send_header("Content-Length", str(10**12))
                self.end_headers()
                self.wfile.write(BODY)
            elif path == "endless":  # no length, never ends
                self.send_response(200)
                self.end_headers()
                try:
                    while True:
                        self.wfile.write(BODY)
                except OSError:
                    pass
            elif path == "chunked":  # first request: two chunks, then the connection drops
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                rest = BODY[start:]
                if start == 0:
                    half = rest[: len(rest) // 2]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(half), half))
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest))
            elif path == "drip":  # one byte every 20 ms
                self.send_response(200)
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                try:
                    for i in range(len(BODY)):
                        self.wfile.write(BODY[i : i + 1])
                        self.wfile.flush()
                        time.sleep(0.02)
                except OSError:
                    pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    sha = hashlib.sha256(BODY).hexdigest()
    corpora = [
        {
            "name": name,
            "url": f"{url}/{name}",
            "size": len(BODY) if sized else None,
            "sha256": sha if sized else None,
            "language": "en",
            "licence": "public domain",
            "description": name,
        }
        for name in ("huge", "endless", "chunked", "drip")
    ]
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"format": "charnn-corpora", "version": 1, "corpora": corpora}))
    monkeypatch.setenv("CHARNN_CORPORA_REGISTRY", str(registry))
    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path / "cache"))
    return httpd, Handler, tmp_path / "cache"


@pytest.fixture
def misbehaving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    httpd, handler, cache = _serve(tmp_path, monkeypatch)
    yield handler, cache
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def misbehaving_unsized(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from charnn import corpora

    monkeypatch.setattr(corpora, "MAX_UNSIZED", 10_000)
    httpd, handler, cache = _serve(tmp_path, monkeypatch, sized=False)
    yield handler, cache
    httpd.shutdown()
    httpd.server_close()


def _files(cache: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in cache.iterdir()} if cache.exists() else {}


def test_a_server_announcing_a_terabyte_is_refused_before_writing(misbehaving, cli_inprocess) -> None:
    _, cache = misbehaving
    proc = cli_inprocess("corpora", "fetch", "huge")
    assert proc.returncode == 3, proc.stderr
    assert f"announces 1,000,000,000,000 bytes, more than the {len(BODY):,} expected" in proc.stderr
    assert _files(cache) == {}


@pytest.mark.parametrize("verify", [(), ("--no-verify",)], ids=["sized", "unsized-cap"])
def test_an_endless_body_is_cut_off_at_the_bound(
    verify: tuple[str, ...], cli_inprocess, request: pytest.FixtureRequest
) -> None:
    _, cache = request.getfixturevalue("misbehaving_unsized" if verify else "misbehaving")
    proc = cli_inprocess("corpora", "fetch", "endless", *verify)
    assert proc.returncode == 3, proc.stderr
    bound = "10,000" if verify else f"{len(BODY):,}"
    assert f"sent more than the {bound} bytes expected; discarded" in proc.stderr
    assert _files(cache) == {}


def test_a_dropped_chunked_transfer_is_kept_and_resumed(misbehaving, cli_inprocess) -> None:
    handler, cache = misbehaving
    proc = cli_inprocess("corpora", "fetch", "chunked")
    assert proc.returncode == 1, proc.stderr
    assert f"connection closed after {len(BODY) // 2:,}" in proc.stderr and "resume" in proc.stderr
    assert _files(cache) == {"chunked.txt.part": len(BODY) // 2}
    proc = cli_inprocess("corpora", "fetch", "chunked")
    assert proc.returncode == 0, proc.stderr
    assert (cache / "chunked.txt").read_bytes() == BODY
    assert [r for p, r in handler.seen if p == "chunked"] == [None, f"bytes={len(BODY) // 2}-"]


def test_a_dropped_download_without_verification_is_not_saved_as_complete(
    misbehaving_unsized, cli_inprocess
) -> None:
    _, cache = misbehaving_unsized
    proc = cli_inprocess("corpora", "fetch", "chunked", "--no-verify")
    assert proc.returncode == 1, proc.stderr
    assert not (cache / "chunked.txt").exists()
    assert _files(cache) == {"chunked.txt.part": len(BODY) // 2}


def test_a_server_sending_a_byte_at_a_time_times_out_keeping_what_arrived(misbehaving, cli_inprocess) -> None:
    import time

    _, cache = misbehaving
    start = time.monotonic()
    proc = cli_inprocess("corpora", "fetch", "drip", "--timeout", "0.5")
    assert proc.returncode == 1, proc.stderr
    assert "too slow" in proc.stderr and "bytes/s" in proc.stderr
    assert time.monotonic() - start < 5
    assert 0 < _files(cache)["drip.txt.part"] < len(BODY)


def test_free_space_is_checked_before_downloading(misbehaving, cli_inprocess, monkeypatch) -> None:
    import shutil
    from collections import namedtuple

    _, cache = misbehaving
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 100, 100))
    proc = cli_inprocess("corpora", "fetch", "drip")
    assert proc.returncode == 3, proc.stderr
    assert f"not enough free space for the download ({len(BODY):,} bytes needed, 100 free)" in proc.stderr
    assert not (cache / "drip.txt").exists()


# ---------------------------------------------------------------------------- 6. forged training state


def _forge_state(run: Path, change) -> None:  # type: ignore[no-untyped-def]
    """Change latest/'s training state and reseal its checksums (a forgery that passes them)."""
    from safetensors.torch import load_file, save_file

    from charnn import checkpoint as ck

    state_file = run / "latest" / ck.STATE_FILE
    tensors = load_file(str(state_file))
    change(tensors)
    save_file(tensors, str(state_file))
    meta = json.loads((run / "latest" / "meta.json").read_text())
    meta["files"][ck.STATE_FILE] = ck._sha256(state_file.read_bytes())
    meta["checksum"] = ck._meta_checksum(meta)
    (run / "latest" / "meta.json").write_text(json.dumps(meta))


def _wider_hidden(t) -> None:  # type: ignore[no-untyped-def]
    import torch

    layers, batch, hidden = t["hidden.h"].shape
    t["hidden.h"] = torch.zeros(layers, batch + 3, hidden)


def _negate(suffix: str):  # type: ignore[no-untyped-def]
    def change(t) -> None:  # type: ignore[no-untyped-def]
        name = next(k for k in sorted(t) if k.endswith(suffix))
        t[name] = -t[name] - 1

    return change


@pytest.mark.parametrize(
    "forge,needle",
    [
        (_wider_hidden, "tensor hidden.h: shape"),
        (_negate(".exp_avg_sq"), "negative (a mean of squares)"),
        (_negate(".step"), "a negative step count"),
    ],
    ids=["hidden-batch", "negative-exp-avg-sq", "negative-step"],
)
def test_forged_training_state_is_a_bad_checkpoint_not_a_crash_or_divergence(
    forge, needle: str, trained_run_copy: Path, cli_inprocess
) -> None:
    _forge_state(trained_run_copy, forge)
    proc = cli_inprocess("train", "--resume", trained_run_copy, "--steps", "40")
    assert proc.returncode == 3, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("charnn: error:")]
    assert len(errors) == 1 and needle in errors[0] and "train_state.safetensors" in errors[0], proc.stderr


@pytest.mark.parametrize("command", ["info", "sample", "runs"])
def test_a_fifo_named_meta_json_does_not_hang(command: str, tmp_path: Path, run_process) -> None:
    import os

    run = tmp_path / "run" / "latest"
    run.mkdir(parents=True)
    os.mkfifo(run / "meta.json")
    args = {"info": ("info", "-c", run), "sample": ("sample", "-c", run), "runs": ("runs", tmp_path)}[command]
    proc = run_process(*args, timeout=30)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    if command != "runs":
        assert proc.returncode == 3, proc.stderr
        assert "meta.json: not a regular file" in proc.stderr


# ---------------------------------------------------------------------------- 7. hostile names

EVIL = "evil\x1b]0;pwned\x07\x1b[31m\nname"


def _no_raw_controls(text: str) -> None:
    for ch in ("\x1b", "\x07", "\u202e"):
        assert ch not in text, repr(text)


def test_runs_and_plot_escape_a_hostile_run_name(trained_run: Path, tmp_path: Path, cli_inprocess) -> None:
    import shutil

    shutil.copytree(trained_run, tmp_path / EVIL)
    listing = cli_inprocess("runs", tmp_path)
    assert listing.returncode == 0, listing.stderr
    _no_raw_controls(listing.stdout + listing.stderr)
    assert "evil\\x1b]0;pwned\\x07\\x1b[31m\\nname" in listing.stdout
    assert len(listing.stdout.splitlines()) == 2  # header and one row: the newline did not split it
    chart = cli_inprocess("plot", tmp_path / EVIL, "--width", "60")
    assert chart.returncode == 0, chart.stderr
    _no_raw_controls(chart.stdout + chart.stderr)
    info = cli_inprocess("info", "-c", tmp_path / EVIL)
    assert info.returncode == 0, info.stderr
    _no_raw_controls(info.stdout)


def test_undecodable_names_train_and_list_as_valid_utf8_json(
    tmp_path: Path, corpus_text: str, cli_inprocess, cli_command, cli_env
) -> None:
    import os
    import subprocess

    name = os.fsdecode(b"corpus-\xff\xfe.txt")
    (tmp_path / name).write_text(corpus_text)
    out = tmp_path / os.fsdecode(b"run-\xff")
    proc = cli_inprocess("train", tmp_path / name, "--out", out, *SHORT)
    assert proc.returncode == 0, proc.stderr
    (out / "metrics.jsonl").read_bytes().decode("utf-8")  # the history stays valid UTF-8
    for args in (("runs", tmp_path, "--json"), ("info", "-c", out, "--json")):
        done = subprocess.run(cli_command(*args), capture_output=True, env=cli_env(), timeout=60)
        assert done.returncode == 0, done.stderr
        rows = [json.loads(line) for line in done.stdout.decode("utf-8").splitlines()]
        assert rows and b"run-\xff" in os.fsencode(rows[0]["path"])  # escaped in JSON, the same name


def test_the_surprisal_page_shows_controls_and_bidi_as_marks(tmp_path: Path, cli_inprocess) -> None:
    from conftest import make_text

    hostile = "price: 100 \u202eUSD 999 to pay\u202c; bell\x07 esc\x1b[2J \u2066iso\u2069\n"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text(40) + hostile * 5)
    text = tmp_path / f"held{chr(0x202E)}out.txt"
    text.write_text(hostile)
    run = tmp_path / "run"
    assert cli_inprocess("train", corpus, "--out", run, *SHORT).returncode == 0
    page = tmp_path / "page.html"
    proc = cli_inprocess("eval", "-c", run, text, "--html", page)
    assert proc.returncode == 0, proc.stderr
    html = page.read_text(encoding="utf-8")
    for ch in ("\u202e", "\u202c", "\u2066", "\u2069", "\x07", "\x1b"):
        assert ch not in html, repr(ch)
    assert "[U+202E]" in html  # the title names the file with a visible mark
    from charnn.surprisal_page import visible

    assert visible("price: 100 \u202eUSD 999 to pay\u202c") == "price: 100 [U+202E]USD 999 to pay[U+202C]"
    assert visible("a\x1b[31mb\x07\tc\n") == "a\u241b[31mb\u2407\tc\n"
    from tests.test_report_browser import BROWSER, _chromium, _Dom

    if BROWSER is None:
        return  # the page's script is checked in a browser where one is installed
    dom = _Dom()
    dom.feed(_chromium(page, "#render-all", tmp_path, "--dump-dom").stdout)
    shown = "".join(dom.spans[i]["text"] for i in sorted(dom.spans))
    assert shown == visible(hostile), shown
    assert "[U+202E]USD 999" in shown and "\u2407" in shown and "\u241b[2J" in shown


# ---------------------------------------------------------------------------- 8. one bad run


@pytest.mark.parametrize(
    "field,value",
    [
        (("progress", "best_val_bpc"), "abc"),
        (("progress", "step"), [1, 2]),
        (("progress", "elapsed"), {"a": 1}),
        (("model", "cell"), "transformer"),
        (("corpus", "sources"), "not-a-list"),
        (("created",), 12),
        (("tokenizer",), None),
    ],
    ids=lambda v: str(v),
)
def test_one_forged_run_is_flagged_and_the_others_listed(
    field: tuple[str, ...], value: object, trained_run: Path, tmp_path: Path, cli_inprocess
) -> None:
    import shutil

    shutil.copytree(trained_run, tmp_path / "good")
    shutil.copytree(trained_run, tmp_path / "forged")
    meta_file = tmp_path / "forged" / "latest" / "meta.json"
    meta = json.loads(meta_file.read_text())
    node = meta
    for key in field[:-1]:
        node = node[key]
    node[field[-1]] = value
    meta_file.write_text(json.dumps(meta))
    for json_flag in ((), ("--json",)):
        proc = cli_inprocess("runs", tmp_path, *json_flag)
        assert proc.returncode == 0, proc.stderr
        assert "forged: skipped" in proc.stderr, proc.stderr
        listed = proc.stdout.splitlines()
        assert len(listed) == (1 if json_flag else 2) and "good" in listed[-1]


@pytest.mark.parametrize("value", [1e308, -1e308, -5.0, 1e20])
def test_plot_skips_absurd_values(value: float, trained_run: Path, tmp_path: Path, cli_inprocess) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    step = max(r["step"] for r in rows)
    forged = [
        {"kind": "progress", "step": step + 1, "elapsed": 1.0, "chars": 10, "loss": 1.0, "bpc": value},
        {"kind": "val", "step": step + 2, "elapsed": value, "chars": value, "loss": 1.0, "bpc": 2.0},
    ]
    with open(run / "metrics.jsonl", "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in forged)
    for axis in ("steps", "time", "chars"):
        proc = cli_inprocess("plot", run, "--x", axis, "--width", "60")
        assert proc.returncode == 0, proc.stderr
        assert "bpc" in proc.stdout and "e+" not in proc.stdout
    pytest.importorskip("matplotlib")
    proc = cli_inprocess("plot", run, "-o", tmp_path / "curves.png")
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------- 9. smaller items


def test_encoding_errors_apply_to_prompts(trained_run: Path, tmp_path: Path, cli_inprocess) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"The \xff day\nA\n")
    refused = cli_inprocess("sample", "-c", trained_run, "--prompts", prompts, "--length", "5")
    assert refused.returncode == 3 and "--encoding-errors" in refused.stderr, refused.stderr
    proc = cli_inprocess(
        "sample",
        "-c",
        trained_run,
        "--prompts",
        prompts,
        "--length",
        "5",
        "--encoding-errors",
        "ignore",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["prime"] for line in proc.stdout.splitlines()] == ["The  day", "A"]


def test_quiet_hides_the_corpus_caches_progress_lines(
    tmp_path: Path, corpus_file: Path, cli_inprocess, monkeypatch
) -> None:
    from charnn import corpus_cache

    monkeypatch.setattr(corpus_cache, "PROGRESS_BYTES", 0)  # a bar for every corpus
    loud = cli_inprocess(
        "train", corpus_file, "--out", tmp_path / "a", *SHORT, "--cache-dir", tmp_path / "c1"
    )
    assert "encoding corpus" in loud.stderr  # the lines exist
    quiet = cli_inprocess(
        "train", corpus_file, "--out", tmp_path / "b", *SHORT, "-q", "--cache-dir", tmp_path / "c2"
    )
    assert quiet.returncode == 0, quiet.stderr
    assert "corpus (" not in quiet.stderr, quiet.stderr
    assert quiet.stderr.count("\n") == 1  # the final line only


def test_subword_validation_lines_do_not_wrap_in_logs() -> None:
    import io

    from rich.console import Console

    from charnn.console import TrainReporter
    from charnn.train_records import EvalReport

    sink = io.StringIO()
    reporter = TrainReporter(console=Console(file=sink, width=80, force_terminal=False, no_color=True))
    reporter.evaluated(EvalReport(1250, 2.0123, 1.4567, True, bpt=4.2345, tokens=1_234_567, best_bpc=1.4567))
    lines = sink.getvalue().splitlines()
    assert len(lines) == 1 and len(lines[0]) > 80, lines
    assert "bits per token over 1,234,567 tokens" in lines[0] and lines[0].endswith("(best)")


def test_a_second_ctrl_c_at_once_still_says_where_the_run_stands(
    tmp_path: Path, corpus_file: Path, cli_command, cli_env
) -> None:
    import signal
    import subprocess
    import time

    from conftest import LONG_RUN

    out = tmp_path / "run"
    proc = subprocess.Popen(
        cli_command("train", corpus_file, "--out", out, *LONG_RUN),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if line.startswith("step "):
                break
        proc.send_signal(signal.SIGINT)
        time.sleep(0.005)  # apart enough not to merge into one signal, before the loop sees the first
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in rest
    assert "charnn: stopped" in rest and f"charnn train --resume {out}" in rest, rest


def test_score_of_a_long_line_holds_one_window_not_the_line(trained_run: Path) -> None:
    import tracemalloc

    import numpy as np

    from charnn.checkpoint import load_checkpoint
    from charnn.scoring import score_lines
    from charnn.torch_stepper import TorchStepper

    ckpt = load_checkpoint(trained_run)
    model = TorchStepper(ckpt.build_model())  # the torch engine long inputs go through
    lengths = ckpt.tokenizer.char_lengths()
    rng = np.random.default_rng(0)

    def peak(n: int) -> int:
        line = rng.integers(0, ckpt.config.vocab_size, n).astype(np.uint8)
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            (score,) = score_lines(model, [0], [line], lengths, budget=10_000)  # the lone-line path
            assert score.tokens == n
            return tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()

    small, large = peak(150_000), peak(600_000)
    growth = (large - small) / 450_000
    assert growth < 0.5, f"{growth:.1f} bytes per extra token"  # was ~16: an int64 copy, float64 log-probs
    # The windowed sum is the batched path's number.
    line = rng.integers(0, ckpt.config.vocab_size, 3000).astype(np.uint8)
    (a,) = score_lines(model, [0, 1], [line], lengths, budget=10_000_000)
    (b,) = score_lines(model, [0, 1], [line], lengths, budget=100)
    assert a.logprob == pytest.approx(b.logprob, rel=1e-6)


@pytest.mark.parametrize("args", [("sample", "--length", "200"), ("sample", "--json"), ("info",)])
def test_output_to_a_full_device_is_a_clean_error(
    args: tuple[str, ...], trained_run: Path, cli_command, cli_env
) -> None:
    import subprocess

    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            cli_command(*args, "-c", trained_run),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
            timeout=60,
        )
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip() == "charnn: error: stdout: cannot write the output (No space left on device)"


def test_the_second_ctrl_c_handler_writes_the_stopped_line_before_exiting(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal

    from charnn import trainer as train

    exits: list[int] = []

    class Exited(Exception):
        pass

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise Exited

    monkeypatch.setattr(os, "_exit", fake_exit)
    flags: dict[str, int] = {}
    with train._signal_flags(flags, "charnn: stopped at once; continue with: charnn train --resume run\n"):
        signal.raise_signal(signal.SIGINT)
        assert flags == {"signal": signal.SIGINT} and not exits
        with pytest.raises(Exited):
            signal.raise_signal(signal.SIGINT)
    assert exits == [130]
    assert "charnn: stopped at once; continue with: charnn train --resume run" in capfd.readouterr().err


def test_a_killed_torchrun_rank_is_a_clear_message_and_rank_0_keeps_its_step(
    tmp_path: Path, corpus_text: str
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "c.txt").write_text(corpus_text * 3)
    env = dict(os.environ, NO_COLOR="1", OMP_NUM_THREADS="1", CHARNN_DIST_TIMEOUT="60")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "CHARNN_DEBUG"):
        env.pop(var, None)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    argv += ["-m", "charnn", "train", "c.txt", "--out", "ddp", *TINY_MODEL_ARGS, "--seq-len", "16"]
    argv += ["--batch-size", "4", "--steps", "1000000", "--eval-every", "1000", "--device", "cpu"]
    proc = subprocess.Popen(
        argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.startswith("step "):
                break
        time.sleep(1.0)
        ranks = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
                ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == proc.pid and b"RANK=1" in environ:
                ranks.append(int(pid))
        assert len(ranks) == 1, ranks
        os.kill(ranks[0], signal.SIGKILL)
        rest = proc.stdout.read()
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "internal error" not in rest, rest
    (message,) = [line for line in rest.splitlines() if line.startswith("charnn: error:")]
    assert "another process of this torchrun run stopped" in message
    step = json.loads((tmp_path / "ddp" / "latest" / "meta.json").read_text())["progress"]["step"]
    assert f"holds step {step}" in message  # what latest/ holds, saved now or before
    if "saved now" in message:  # the loss was seen between steps: rank 0 kept the step it reached
        assert step > 0
    assert "--resume ddp" in message
