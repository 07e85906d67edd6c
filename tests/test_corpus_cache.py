"""The corpus cache: streamed encoding gives load_corpus's ids; entries are reused, and stale or
torn entries are rebuilt, never trusted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charnn import corpus_cache
from charnn.corpus_cache import CorpusCache, default_cache_dir, load_corpus_cached
from charnn.data import load_corpus
from charnn.errors import DataError


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces of 7 bytes, so UTF-8 sequences and \\r\\n pairs straddle piece boundaries."""
    monkeypatch.setattr(corpus_cache, "CHUNK_BYTES", 7)


def _same(a, b) -> None:  # type: ignore[no-untyped-def]
    assert a.tokenizer.to_dict() == b.tokenizer.to_dict()
    assert np.array_equal(np.asarray(a.ids), np.asarray(b.ids))
    assert a.ids.dtype == b.ids.dtype
    assert a.chars == b.chars
    assert a.sha256 == b.sha256
    assert a.notes == b.notes


@settings(max_examples=25, deadline=None)
@given(
    texts=st.lists(
        st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))),
        min_size=1,
        max_size=3,
    ),
    bom=st.booleans(),
)
def test_streamed_encoding_equals_load_corpus(
    tmp_path_factory: pytest.TempPathFactory, texts: list[str], bom: bool
) -> None:
    corpus_cache.CHUNK_BYTES, saved = 5, corpus_cache.CHUNK_BYTES
    try:
        d, cache = tmp_path_factory.mktemp("c"), tmp_path_factory.mktemp("cache")
        paths = []
        for i, text in enumerate(texts):
            p = d / f"{i}.txt"
            p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
            paths.append(str(p))
        try:
            expected = load_corpus([str(d)])
        except DataError as exc:
            with pytest.raises(DataError, match=str(exc).split(":")[-1].strip()[:20]):
                load_corpus_cached([str(d)], cache_dir=cache)
            return
        got = load_corpus_cached([str(d)], cache_dir=cache)
        _same(got, expected)
        _same(load_corpus_cached([str(d)], cache_dir=cache), expected)  # from the cache
    finally:
        corpus_cache.CHUNK_BYTES = saved


def test_crlf_and_multibyte_across_pieces(tmp_path: Path, small_chunks: None) -> None:
    f = tmp_path / "a.txt"
    f.write_bytes("héllo\r\nwörld ✓ 𝄞\r\n".encode() * 5)
    got = load_corpus_cached([str(f)], cache_dir=tmp_path / "c")
    assert isinstance(got.ids, np.memmap)
    _same(got, load_corpus([str(f)]))


def test_errors_match_load_corpus(tmp_path: Path, small_chunks: None) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abcdefghij\xffxyz")
    with pytest.raises(DataError, match="byte offset 10"):
        load_corpus_cached([str(bad)], cache_dir=tmp_path / "c")
    replaced = load_corpus_cached([str(bad)], encoding_errors="replace", cache_dir=tmp_path / "c")
    _same(replaced, load_corpus([str(bad)], encoding_errors="replace"))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"abcdefghijkl\x00")
    with pytest.raises(DataError, match="NUL byte at offset 12"):
        load_corpus_cached([str(binary)], cache_dir=tmp_path / "c")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        load_corpus_cached([str(empty)], cache_dir=tmp_path / "c")


def test_given_tokenizer_names_unknown_characters(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("abc\n")
    b.write_text("abz\n")
    first = load_corpus_cached([str(a)], cache_dir=tmp_path / "c")
    with pytest.raises(DataError, match=r"b\.txt: 1 character\(s\) not in the model's vocabulary: 'z'"):
        load_corpus_cached([str(b)], first.tokenizer, cache_dir=tmp_path / "c")


def _entry(cache: Path) -> tuple[Path, Path]:
    (record,) = cache.glob("ids-*.json")
    return record.with_suffix(".bin"), record


def test_reused_then_torn_and_stale_entries_rebuilt(tmp_path: Path, corpus_text: str) -> None:
    f = tmp_path / "a.txt"
    f.write_text(corpus_text)
    cache = tmp_path / "c"
    load_corpus_cached([str(f)], cache_dir=cache)
    first = load_corpus([str(f)])  # in memory: the damage below must not reach the reference
    ids_file, record = _entry(cache)
    stamp = ids_file.stat().st_mtime_ns
    load_corpus_cached([str(f)], cache_dir=cache)
    assert ids_file.stat().st_mtime_ns == stamp  # reused, not rewritten

    ids_file.write_bytes(ids_file.read_bytes()[:-10])  # torn: too short
    _same(load_corpus_cached([str(f)], cache_dir=cache), first)

    data = bytearray(ids_file.read_bytes())  # same size, other ids, newer file
    data[0] ^= 1
    ids_file.write_bytes(bytes(data))
    _same(load_corpus_cached([str(f)], cache_dir=cache), first)

    record.write_text("{not json")  # a torn record
    _same(load_corpus_cached([str(f)], cache_dir=cache), first)
    assert json.loads(_entry(cache)[1].read_text())["sha256"] == first.sha256


def test_changed_source_gets_a_new_entry(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("one text\n")
    cache = tmp_path / "c"
    before = load_corpus_cached([str(f)], cache_dir=cache)
    f.write_text("another text\n")
    after = load_corpus_cached([str(f)], cache_dir=cache)
    assert after.tokenizer.decode(np.asarray(after.ids)) == "another text\n"
    assert before.sha256 != after.sha256


def test_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("CHARNN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "charnn"


def test_progress_bar_for_big_corpora(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus_cache, "PROGRESS_BYTES", 10)
    seen: list[tuple[str, int]] = []
    advanced: list[int] = []

    class Bar:
        def __init__(self, label: str, total: int) -> None:
            seen.append((label, total))

        def advance(self, n: int) -> None:
            advanced.append(n)

        def close(self) -> None:
            pass

    f = tmp_path / "a.txt"
    f.write_text("x" * 100)
    CorpusCache(tmp_path / "c", progress=Bar).load([str(f)])
    assert [label for label, _ in seen] == ["hashing corpus", "reading corpus", "encoding corpus"]
    assert sum(advanced) == 300


def test_cli_train_then_eval_reuse_the_cache(cli_inprocess, corpus_file: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import TINY_TRAIN_ARGS

    cache = tmp_path / "cache"
    args = ("--cache-dir", cache, "--steps", "2")
    proc = cli_inprocess("train", corpus_file, "--out", tmp_path / "run", *TINY_TRAIN_ARGS, *args)
    assert proc.returncode == 0, proc.stderr
    (ids_file,) = cache.glob("ids-*.bin")
    stamp = ids_file.stat().st_mtime_ns
    proc = cli_inprocess("eval", corpus_file, "-c", tmp_path / "run", "--cache-dir", cache, "--json")
    assert proc.returncode == 0, proc.stderr
    proc = cli_inprocess("train", "--resume", tmp_path / "run", "--steps", "4", "--cache-dir", cache)
    assert proc.returncode == 0, proc.stderr
    assert [p.stat().st_mtime_ns for p in cache.glob("ids-*.bin")] == [stamp]


def test_concurrent_loads_build_one_good_entry(tmp_path: Path, corpus_text: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    f = tmp_path / "a.txt"
    f.write_text(corpus_text * 20)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: load_corpus_cached([str(f)], cache_dir=tmp_path / "c"), range(4)))
    expected = load_corpus([str(f)])
    for corpus in got:
        _same(corpus, expected)
    assert len(list((tmp_path / "c").glob("ids-*.bin"))) == 1
    assert not list((tmp_path / "c").glob(".*.tmp"))  # no temporary file left behind


def test_sentencepiece_pieces_end_on_lines(tmp_path: Path, corpus_text: str, small_chunks: None) -> None:
    from charnn.config import TokenizerConfig

    f = tmp_path / "a.txt"
    f.write_text(corpus_text)
    built = load_corpus([str(f)], TokenizerConfig(kind="sentencepiece", vocab_size=400))
    got = load_corpus_cached([str(f)], built.tokenizer, cache_dir=tmp_path / "c")
    _same(got, load_corpus([str(f)], built.tokenizer))
    # a new SentencePiece vocabulary trains on the text in memory, without the cache
    fresh = load_corpus_cached(
        [str(f)], TokenizerConfig(kind="sentencepiece", vocab_size=400), cache_dir=tmp_path / "d"
    )
    assert not isinstance(fresh.ids, np.memmap)
