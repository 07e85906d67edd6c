"""Corpus loading and TBPTT batching: compact arrays, file discovery, splits, window continuity."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charnn.data import (
    BUILTIN_CORPUS,
    StreamBatcher,
    builtin_text,
    load_corpus,
    resolve_sources,
    split_train_val,
)
from charnn.errors import DataError

# ---------------------------------------------------------------------------- load_corpus


def test_corpus_is_compact_numpy_array(tmp_path: Path) -> None:
    text = "hello world\nsecond line\n" * 20
    f = tmp_path / "a.txt"
    f.write_text(text, encoding="utf-8")
    corpus = load_corpus([str(f)])
    assert isinstance(corpus.ids, np.ndarray)
    assert corpus.ids.dtype == np.uint8
    assert corpus.ids.ndim == 1
    assert corpus.chars == len(text) == len(corpus.ids)
    assert corpus.tokenizer.decode(corpus.ids) == text
    assert corpus.sources == [str(f)]


def test_corpus_uses_uint16_for_large_alphabets(tmp_path: Path) -> None:
    text = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 400)) + "\n"
    f = tmp_path / "cjk.txt"
    f.write_text(text, encoding="utf-8")
    corpus = load_corpus([str(f)])
    assert corpus.ids.dtype == np.uint16
    assert corpus.tokenizer.decode(corpus.ids) == text


def test_files_are_joined_on_line_boundaries(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    corpus = load_corpus([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")])
    assert corpus.tokenizer.decode(corpus.ids) == "first\nsecond"


def test_directory_picks_text_files_and_skips_binaries(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("bbb\n", encoding="utf-8")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "a.md").write_text("aaa\n", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (tmp_path / ".hidden").write_text("hidden\n", encoding="utf-8")
    hid = tmp_path / ".git"
    hid.mkdir()
    (hid / "config").write_text("gitstuff\n", encoding="utf-8")

    sources, notes = resolve_sources([str(tmp_path)])
    assert sources == [str(tmp_path / "b.txt"), str(sub / "a.md")]
    assert any("skipped 1 binary" in n for n in notes)

    corpus = load_corpus([str(tmp_path)])
    assert corpus.tokenizer.decode(corpus.ids) == "bbb\naaa\n"
    assert set(corpus.tokenizer.chars) == {"a", "b", "\n"}


def test_directory_without_text_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02")
    with pytest.raises(DataError, match="no text files"):
        load_corpus([str(tmp_path)])


def test_unreadable_file_in_directory_is_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not an internal error: the file is named (tests run as root, so simulate EACCES)."""
    (tmp_path / "ok.txt").write_text("fine\n", encoding="utf-8")
    locked = tmp_path / "locked.txt"
    locked.write_text("secret\n", encoding="utf-8")
    real_open = Path.open

    def fake_open(self: Path, *args: object, **kwargs: object) -> object:
        if self.name == "locked.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", fake_open)
    with pytest.raises(DataError, match=r"locked\.txt: cannot read \(Permission denied\)"):
        load_corpus([str(tmp_path)])


def test_builtin_corpus_when_no_files_given() -> None:
    assert resolve_sources([]) == ([BUILTIN_CORPUS], [])
    corpus = load_corpus([])
    assert corpus.sources == [BUILTIN_CORPUS]
    assert corpus.ids.dtype == np.uint8
    assert corpus.chars == len(builtin_text()) > 100_000
    assert corpus.tokenizer.decode(corpus.ids[:200]) == builtin_text()[:200]


def test_stdin_source(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = io.TextIOWrapper(io.BytesIO(b"from stdin\n"), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", fake)
    corpus = load_corpus(["-"])
    assert corpus.tokenizer.decode(corpus.ids) == "from stdin\n"


def test_bad_inputs_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_corpus([str(tmp_path / "missing.txt")])
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        load_corpus([str(empty)])
    binary = tmp_path / "x.txt"
    binary.write_bytes(b"abc\x00def")
    with pytest.raises(DataError, match="binary"):
        load_corpus([str(binary)])
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(DataError, match="offset 3"):
        load_corpus([str(bad)])
    assert (
        load_corpus([str(bad)], encoding_errors="replace").tokenizer.decode(
            load_corpus([str(bad)], encoding_errors="replace").ids
        )
        == "caf\ufffd"
    )


def test_utf8_bom_is_dropped(tmp_path: Path) -> None:
    f = tmp_path / "bom.txt"
    f.write_bytes(b"\xef\xbb\xbfhi\n")
    assert load_corpus([str(f)]).tokenizer.decode(load_corpus([str(f)]).ids) == "hi\n"


def test_existing_tokenizer_is_reused(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("abcabc\n", encoding="utf-8")
    first = load_corpus([str(f)])
    g = tmp_path / "b.txt"
    g.write_text("cab\n", encoding="utf-8")
    second = load_corpus([str(g)], tokenizer=first.tokenizer)
    assert second.tokenizer is first.tokenizer
    g.write_text("cabz\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_corpus([str(f), str(g)], tokenizer=first.tokenizer)
    assert str(info.value).startswith(f"{g}: 1 character(s) not in the model's vocabulary: 'z'")


# ---------------------------------------------------------------------------- split


def test_val_split_is_the_end_of_the_corpus() -> None:
    ids = np.arange(1000, dtype=np.uint16)
    train, val = split_train_val(ids, 0.1)
    assert len(val) == 100
    np.testing.assert_array_equal(train, ids[:900])
    np.testing.assert_array_equal(val, ids[900:])
    assert np.shares_memory(train, ids) and np.shares_memory(val, ids)  # views, not copies


def test_val_split_edge_cases() -> None:
    ids = np.arange(50, dtype=np.uint8)
    train, val = split_train_val(ids, 0.0)
    assert len(train) == 50 and len(val) == 0
    _, val = split_train_val(ids, 0.001)
    assert len(val) == 2  # min_val
    with pytest.raises(DataError, match="too short"):
        split_train_val(np.arange(3, dtype=np.uint8), 0.5)


# ---------------------------------------------------------------------------- batching


def _check_windows(data: np.ndarray, batcher: StreamBatcher, steps: int) -> None:
    """Every batch is an exact slice of the data, and windows continue exactly within an epoch."""
    B, T, W, L = batcher.batch_size, batcher.seq_len, batcher.windows_per_epoch, batcher.stream_len
    prev = None
    for s in range(steps):
        x, y, reset = batcher.batch(s)
        assert x.shape == y.shape == (B, T)
        assert x.dtype == y.dtype == np.int64
        epoch, window = divmod(s, W)
        assert batcher.position(s) == (epoch, window)
        assert reset == (window == 0)
        start = batcher.epoch_offset(epoch) + window * T
        for b in range(B):
            lo = b * L + start
            np.testing.assert_array_equal(x[b], data[lo : lo + T])
            np.testing.assert_array_equal(y[b], data[lo + 1 : lo + T + 1])
            # Stream b never reads into stream b + 1's territory.
            assert lo + T <= (b + 1) * L <= len(data) - 1
        if prev is not None and not reset:
            px, py = prev
            np.testing.assert_array_equal(x[:, 0], py[:, -1])  # continues where the last window ended
            np.testing.assert_array_equal(x[:, 1:], data[np.arange(B)[:, None] * L + start + np.arange(1, T)])
        prev = (x, y)


def test_windows_continue_and_match_corpus_slices() -> None:
    data = np.arange(1003, dtype=np.int64) % 251  # distinct enough to catch an off-by-one
    batcher = StreamBatcher(data.astype(np.uint8), batch_size=4, seq_len=16, seed=7)
    assert batcher.stream_len == 250
    assert batcher.windows_per_epoch == 250 // 16 - 1
    _check_windows(data, batcher, steps=batcher.windows_per_epoch * 4 + 3)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 600),
    batch_size=st.integers(1, 9),
    seq_len=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_windows_property(n: int, batch_size: int, seq_len: int, seed: int) -> None:
    """For any corpus length/batch/window, batches are in bounds, exact slices, and continuous."""
    data = np.random.default_rng(seed).integers(0, 200, size=n).astype(np.uint8)
    if n - 1 < seq_len:
        with pytest.raises(DataError):
            StreamBatcher(data, batch_size, seq_len, seed)
        return
    batcher = StreamBatcher(data, batch_size, seq_len, seed)
    assert 1 <= batcher.batch_size <= batch_size
    _check_windows(data.astype(np.int64), batcher, steps=batcher.windows_per_epoch * 3 + 1)


def test_hidden_resets_exactly_at_epoch_starts() -> None:
    batcher = StreamBatcher(np.zeros(500, dtype=np.uint8), batch_size=2, seq_len=10)
    W = batcher.windows_per_epoch
    resets = [s for s in range(3 * W + 2) if batcher.batch(s)[2]]
    assert resets == [0, W, 2 * W, 3 * W]


def test_epoch_offsets_move_window_boundaries_deterministically() -> None:
    data = np.arange(2001, dtype=np.int64) % 256
    a = StreamBatcher(data.astype(np.uint8), batch_size=2, seq_len=32, seed=1)
    b = StreamBatcher(data.astype(np.uint8), batch_size=2, seq_len=32, seed=1)
    assert a.epoch_offset(0) == 0
    offsets = [a.epoch_offset(e) for e in range(1, 20)]
    assert all(0 <= o < 32 for o in offsets)
    assert len(set(offsets)) > 1  # boundaries really move between epochs
    assert offsets == [b.epoch_offset(e) for e in range(1, 20)]  # and depend only on (seed, epoch)
    for s in (0, 5, a.windows_per_epoch + 3):
        for u, v in zip(a.batch(s), b.batch(s), strict=True):
            np.testing.assert_array_equal(u, v)


def test_steps_for_epochs() -> None:
    batcher = StreamBatcher(np.zeros(1001, dtype=np.uint8), batch_size=4, seq_len=10)
    W = batcher.windows_per_epoch
    assert W == 250 // 10 - 1
    assert batcher.steps_for_epochs(1) == W
    assert batcher.steps_for_epochs(2) == 2 * W
    assert batcher.steps_for_epochs(0.5) == -(-W // 2)
    assert batcher.steps_for_epochs(1e-9) == 1


def test_corpus_too_short_raises_data_error() -> None:
    with pytest.raises(DataError, match="too short"):
        StreamBatcher(np.zeros(10, dtype=np.uint8), batch_size=2, seq_len=10)
    StreamBatcher(np.zeros(11, dtype=np.uint8), batch_size=2, seq_len=10)  # exactly enough


def test_too_few_tokens_for_all_streams_warns_and_shrinks() -> None:
    messages: list[str] = []
    batcher = StreamBatcher(np.zeros(50, dtype=np.uint8), batch_size=32, seq_len=10, warn=messages.append)
    assert batcher.batch_size == 4
    assert len(messages) == 1 and "--batch-size 4" in messages[0]
