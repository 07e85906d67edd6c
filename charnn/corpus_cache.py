"""Corpora larger than memory: files are encoded by streaming into a cached, memory-mapped id file.

``load_corpus_cached`` gives the same :class:`~charnn.data.Corpus` as :func:`charnn.data.load_corpus`
(same ids, same ``sha256``, same notes and errors) without ever holding the whole text or a Python
list of ids: files are read in :data:`CHUNK_BYTES` pieces, decoded incrementally (a UTF-8 sequence
split across two pieces is joined; ``\\r\\n`` is kept as it is) and written as ids to a raw file
that training then reads through ``np.memmap``. Layout of the cache directory::

    <cache>/src-<content key>.json    what a first pass found: characters, vocabulary, id hash
    <cache>/ids-<ids key>.bin         the encoded corpus, raw ids in the tokenizer's dtype
    <cache>/ids-<ids key>.json        its record: dtype, length, sha256 of the ids, file size + mtime
    <cache>/<key>.lock                held while one process builds that entry

The content key hashes the bytes of every source file (streamed), their order and the
``--encoding-errors`` mode; the ids key adds the tokenizer (its ``to_dict``). A later run, a
``--resume`` or an ``eval`` of the same text finds the entry, hashes the files and checks the
entry. Entries are written to a temporary name and renamed into place (atomic), records last.

Nothing read from the cache is trusted (:meth:`CorpusCache._open`): an entry is used only when
its record's dtype is the tokenizer's, its file size matches, the sha256 of its ids (recorded
when it was built) matches the ids read now, and every id is in the vocabulary's range; a
vocabulary read from a record must be valid code points (no surrogates) and every one of them
must occur in the ids. Anything else is rebuilt, never an error. While encoding, the bytes read
are hashed again: a source that changed since it was hashed for the key is refused (no entry is
written under the old text's key). Concurrent runs take a file lock per entry, so one builds
while the other waits and then reuses it. A cache directory that cannot be written (read-only,
full, a file-size limit) is not an error: the corpus is loaded in memory instead, with a note.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from charnn.atomic import write_atomic
from charnn.config import TokenizerConfig
from charnn.data import BUILTIN_CORPUS, BinaryData, Corpus, load_corpus, resolve_sources
from charnn.errors import CharnnError, DataError, located
from charnn.tokenizer import CharTokenizer, Tokenizer, id_dtype, unique_codepoints

FORMAT = 1  # bump when the layout or the meaning of a key changes
CHUNK_BYTES = 4 << 20  # bytes read per piece: bounds the text and id temporaries (~40 MB)
PROGRESS_BYTES = 32 << 20  # corpora at least this big get a progress bar
_BOM = b"\xef\xbb\xbf"


class Bar(Protocol):
    """A progress display for one pass over the corpus (``charnn.console.ByteBar`` draws one)."""

    def advance(self, n: int) -> None: ...
    def close(self) -> None: ...


BarFactory = Callable[[str, int], Bar]  # (label, total bytes) -> a started bar


def default_cache_dir() -> Path:
    """``$CHARNN_CACHE``, else ``$XDG_CACHE_HOME/charnn``, else ``~/.cache/charnn``."""
    if os.environ.get("CHARNN_CACHE"):
        return Path(os.environ["CHARNN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "charnn"


class _NoBar:
    def advance(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------- streaming reads


@dataclass(frozen=True)
class _Source:
    name: str  # as the user gave it (for messages)
    path: Path
    sha256: str
    size: int
    empty: bool


def _hash_file(path: Path, advance: Callable[[int], None]) -> tuple[str, int, bool]:
    """sha256 of a file's bytes (streamed), its size, and whether it holds no text."""
    h = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as fh:
            while block := fh.read(CHUNK_BYTES):
                nul = block.find(b"\x00")
                if nul >= 0:  # binary (or an endless device like /dev/zero): refuse at once
                    raise BinaryData(
                        f"{path}: looks binary (NUL byte at offset {size + nul}); charnn trains on text"
                    )
                h.update(block)
                size += len(block)
                advance(len(block))
            if size == len(_BOM):
                fh.seek(0)
                empty = fh.read() == _BOM
            else:
                empty = size == 0
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return h.hexdigest(), size, empty


def _text_pieces(
    src: _Source, errors: str, split_lines: bool, digest: Any = None
) -> Iterator[tuple[str, int]]:
    """The file's text in pieces of about CHUNK_BYTES, with the bytes each consumed. A piece
    never ends inside a UTF-8 sequence; with ``split_lines`` it ends at a newline (for
    tokenizers whose encoding depends on the whole line)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)
    carry, offset = "", 0
    try:
        with src.path.open("rb") as fh:
            while True:
                block = fh.read(CHUNK_BYTES)
                if digest is not None:
                    digest.update(block)  # the bytes as read, to re-check the source's hash
                if offset == 0 and block.startswith(_BOM):
                    block, offset = block[3:], 3  # a byte-order mark is not part of the text
                nul = block.find(b"\x00")
                if nul >= 0:
                    raise BinaryData(
                        f"{src.name}: looks binary (NUL byte at offset {offset + nul}); charnn trains on text"
                    )
                pending = len(decoder.getstate()[0])
                try:
                    text = carry + decoder.decode(block, final=not block)
                except UnicodeDecodeError as exc:
                    raise DataError(
                        f"{src.name}: not valid UTF-8 at byte offset {offset - pending + exc.start} "
                        "(use --encoding-errors replace or ignore to go on)"
                    ) from None
                offset += len(block)
                if split_lines and block:
                    cut = text.rfind("\n") + 1
                    text, carry = text[:cut], text[cut:]
                if text:
                    yield text, len(block)
                elif block:
                    yield "", len(block)
                if not block:
                    return
    except OSError as exc:
        raise DataError(f"{src.name}: cannot read ({exc.strerror or exc})") from None


# ---------------------------------------------------------------------------- atomic files


def _write_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, data, durable=False)  # a lost record is rebuilt, never trusted half-written


def _read_json(path: Path) -> dict[str, Any] | None:
    """A record, or None when missing or unreadable (a torn or foreign file is never trusted)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([FORMAT, *parts], sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------- the cache


class CorpusCache:
    """One cache directory of encoded corpora (see the module docstring for its layout)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, progress: BarFactory | None = None):
        self.dir = Path(directory) if directory else default_cache_dir()
        self.progress = progress
        self._bars: list[Bar] = []

    def _lock(self, key: str) -> Any:
        from filelock import FileLock

        return FileLock(str(self.dir / f"{key}.lock"))

    # ------------------------------------------------------------------ the public entry

    def load(
        self,
        paths: Sequence[str],
        tokenizer: TokenizerConfig | Tokenizer | None = None,
        encoding_errors: str = "strict",
        val_fraction: float = 0.0,
        grow_vocab: bool = False,
    ) -> Corpus:
        """Like :func:`charnn.data.load_corpus`, with the ids memory-mapped from the cache.
        stdin, the built-in corpus, a new SentencePiece vocabulary (which trains on the text in
        memory), a capped character vocabulary and Unicode normalisation take the in-memory path
        (``val_fraction`` is only for those). ``grow_vocab``: a given character tokenizer gains
        the characters of this text it lacks (fine-tuning), as :func:`~charnn.data.load_corpus`
        grows it."""
        sources, notes = resolve_sources(paths)
        in_memory = functools.partial(
            load_corpus, paths, tokenizer, encoding_errors=encoding_errors, val_fraction=val_fraction
        )
        if "-" in sources or BUILTIN_CORPUS in sources or not _streamable(tokenizer):
            return in_memory(grow_vocab=grow_vocab)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            return self._load(sources, notes, paths, tokenizer, encoding_errors, grow_vocab)
        except OSError as exc:  # reading sources is a DataError already: this is the cache itself
            where = exc.filename or self.dir
            corpus = in_memory(grow_vocab=grow_vocab)
            corpus.notes.append(
                f"{where}: cannot use the corpus cache ({exc.strerror or exc}); the corpus is read in memory"
            )
            return corpus
        finally:
            for bar in self._bars:
                bar.close()
            self._bars.clear()

    def _load(
        self,
        sources: list[str],
        notes: list[str],
        paths: Sequence[str],
        tokenizer: TokenizerConfig | Tokenizer | None,
        encoding_errors: str,
        grow_vocab: bool = False,
    ) -> Corpus:
        files = self._hash_sources(sources, paths, notes)
        content_key = _key("content", encoding_errors, [f.sha256 for f in files])
        if tokenizer is None or isinstance(tokenizer, TokenizerConfig):
            tokenizer, ids, record = self._own_vocabulary(content_key, files, encoding_errors)
        else:
            if grow_vocab and isinstance(tokenizer, CharTokenizer):
                # The text's own characters (validated against its ids); extended() appends the
                # missing ones in code-point order, exactly as it does from the text in memory.
                own, _, _ = self._own_vocabulary(content_key, files, encoding_errors)
                tokenizer = tokenizer.extended(["".join(own.token_text(i) for i in range(own.vocab_size))])
            ids, record = self._ids(
                _key("ids", content_key, tokenizer.to_dict()), files, encoding_errors, tokenizer
            )
        return Corpus(
            tokenizer=tokenizer,
            ids=ids,
            chars=int(record["chars"]),
            sources=[f.name for f in files if not f.empty],  # what was read, as load_corpus records
            notes=notes,
            digest=str(record["sha256"]),
        )

    def _hash_sources(self, sources: list[str], paths: Sequence[str], notes: list[str]) -> list[_Source]:
        """Content hashes of the non-empty sources; the empty ones are refused or noted as
        :func:`~charnn.data.load_corpus` does."""
        sizes = [_size(Path(s)) for s in sources]
        advance = self._bar("hashing corpus", sum(sizes))
        files: list[_Source] = []
        for source in sources:
            try:
                digest, size, empty = _hash_file(Path(source), advance)
            except BinaryData as exc:
                if source in paths:
                    raise
                notes.append(f"{exc}: skipped")  # a file of a directory: binary past the first sniff
                continue
            if empty:
                if source in paths:
                    raise DataError(f"{source}: is empty")
                notes.append(f"{source}: empty, skipped")
            files.append(_Source(source, Path(source), digest, size, empty))
        if all(f.empty for f in files):
            raise DataError("the corpus is empty")
        return files

    def _bar(self, label: str, total: int) -> Callable[[int], None]:
        """A progress bar's ``advance`` for a pass over ``total`` bytes (big corpora only)."""
        if self.progress is None or total < PROGRESS_BYTES:
            return _NoBar().advance
        for bar in self._bars:
            bar.close()
        self._bars = [self.progress(label, total)]
        return self._bars[0].advance

    # ------------------------------------------------------------------ pass 1: the vocabulary

    def _own_vocabulary(
        self, key: str, files: list[_Source], errors: str
    ) -> tuple[Tokenizer, np.ndarray, dict[str, Any]]:
        """The corpus's own character vocabulary and its ids. A cached vocabulary must match
        the ids: every character of it occurs in them (an added one would give the model a
        character the corpus lacks) and encoding finds none missing; else it is scanned again."""
        tokenizer, cached = self._vocabulary(key, files, errors)
        if cached:
            try:
                ids, record = self._ids(_key("ids", key, tokenizer.to_dict()), files, errors, tokenizer)
                if _uses_every_id(ids, tokenizer.vocab_size):
                    return tokenizer, ids, record
            except DataError:
                pass  # a character missing from the record (or a real error: the scan says which)
            tokenizer, _ = self._vocabulary(key, files, errors, rescan=True)
        ids, record = self._ids(_key("ids", key, tokenizer.to_dict()), files, errors, tokenizer)
        return tokenizer, ids, record

    def _vocabulary(
        self, key: str, files: list[_Source], errors: str, rescan: bool = False
    ) -> tuple[Tokenizer, bool]:
        """The character vocabulary of the sources (a streaming first pass, cached), and
        whether it came from the cache."""
        path = self.dir / f"src-{key}.json"
        tokenizer = None if rescan else _char_tokenizer(_read_json(path), key)
        if tokenizer is not None:
            return tokenizer, True
        with self._lock(f"src-{key}"):
            record = None if rescan else _read_json(path)  # another process may have scanned meanwhile
            tokenizer = _char_tokenizer(record, key)
            if tokenizer is not None:
                return tokenizer, True
            record = self._scan(key, files, errors)
            tokenizer = CharTokenizer.from_codepoints(np.array(record["codepoints"], dtype=np.uint32))
            _write_atomic(path, json.dumps(record).encode())
        return tokenizer, False

    def _scan(self, key: str, files: list[_Source], errors: str) -> dict[str, Any]:
        advance = self._bar("reading corpus", sum(f.size for f in files))
        seen: list[np.ndarray] = []
        for piece in _pieces_with_joins(files, errors, split_lines=False, advance=advance):
            seen.append(unique_codepoints(piece))
            if len(seen) > 64:  # keep the list short
                seen = [np.unique(np.concatenate(seen))]
        uniques = np.unique(np.concatenate(seen)) if seen else np.zeros(0, dtype=np.uint32)
        return {"format": FORMAT, "key": key, "codepoints": [int(c) for c in uniques]}

    # ------------------------------------------------------------------ pass 2: the ids

    def _ids(
        self, key: str, files: list[_Source], errors: str, tokenizer: Tokenizer
    ) -> tuple[np.ndarray, dict[str, Any]]:
        found = self._open(key, tokenizer.vocab_size)
        if found is not None:
            return found
        with self._lock(f"ids-{key}"):
            found = self._open(key, tokenizer.vocab_size)  # another process may have built it meanwhile
            if found is not None:
                return found
            self._encode(key, files, errors, tokenizer)
            found = self._open(key, tokenizer.vocab_size, quiet=True)
        if found is None:
            raise CharnnError(f"{self.dir}: the corpus cache entry just written cannot be read back")
        return found

    def _open(
        self, key: str, vocab_size: int, quiet: bool = False
    ) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The cached ids, memory-mapped, or None when missing, torn, stale or forged: the
        record's dtype must be the vocabulary's, the file's size its length, the ids' sha256
        the recorded one and every id below ``vocab_size`` (one streaming pass)."""
        bin_path = self.dir / f"ids-{key}.bin"
        record = _read_json(self.dir / f"ids-{key}.json")
        if record is None or record.get("key") != key:
            return None
        dtype = id_dtype(vocab_size)
        tokens, chars = record.get("tokens"), record.get("chars")
        if record.get("dtype") != dtype.str or not (
            isinstance(tokens, int) and _count(tokens) and _count(chars)
        ):
            return None
        try:
            st = bin_path.stat()
            if not stat.S_ISREG(st.st_mode) or st.st_size != tokens * dtype.itemsize:
                return None  # torn or foreign: rebuild
            ids = np.memmap(bin_path, dtype=dtype, mode="r", shape=(tokens,))
            advance = _NoBar().advance if quiet else self._bar("checking cached corpus", st.st_size)
            digest, top = _check_ids(ids, advance)
        except (OSError, ValueError):
            return None
        if digest != record.get("sha256") or top >= vocab_size:
            return None  # changed since it was built (mtime or not), or forged: rebuild
        return ids, record

    def _encode(self, key: str, files: list[_Source], errors: str, tokenizer: Tokenizer) -> None:
        """Stream the sources through the tokenizer into ``ids-<key>.bin``, then its record."""
        bin_path = self.dir / f"ids-{key}.bin"
        split_lines = tokenizer.kind != "char"
        advance = self._bar("encoding corpus", sum(f.size for f in files))
        digest, tokens, chars = hashlib.sha256(), 0, 0
        dtype = id_dtype(tokenizer.vocab_size)
        fd, tmp = tempfile.mkstemp(prefix=f".ids-{key}.", suffix=".tmp", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as out:
                for name, piece in _named_pieces(files, errors, split_lines, advance):
                    try:
                        ids = tokenizer.encode(piece)
                    except DataError as exc:  # characters the tokenizer lacks: say where
                        raise located(exc, name) from None
                    data = ids.astype(dtype, copy=False).tobytes()
                    digest.update(data)
                    out.write(data)
                    tokens += len(ids)
                    chars += len(piece)
                out.flush()
                os.fsync(out.fileno())
            if tokens == 0:
                raise DataError("the corpus is empty")
            os.replace(tmp, bin_path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        record = {
            "format": FORMAT,
            "key": key,
            "dtype": dtype.str,
            "tokens": tokens,
            "chars": chars,
            "sha256": digest.hexdigest(),
            "sources": [f.name for f in files],
        }
        _write_atomic(self.dir / f"ids-{key}.json", json.dumps(record).encode())


def _streamable(tokenizer: TokenizerConfig | Tokenizer | None) -> bool:
    """Whether streaming gives exactly :func:`~charnn.data.load_corpus`'s ids: a plain character
    vocabulary to build, or a given tokenizer that does not normalise (normalisation could join
    characters across piece boundaries)."""
    if tokenizer is None:
        return True
    if isinstance(tokenizer, TokenizerConfig):
        return (
            tokenizer.kind == "char"
            and tokenizer.max_vocab is None
            and tokenizer.min_char_count is None
            and tokenizer.normalize in ("none", "", None)
            and tokenizer.source is None
        )
    return not tokenizer.to_dict().get("normalize")


def _char_tokenizer(record: dict[str, Any] | None, key: str) -> CharTokenizer | None:
    """The vocabulary a record holds, or None when it is missing, foreign or damaged: code
    points are unique, ascending, valid and not surrogates (UTF-8 text never decodes to one)."""
    if record is None or record.get("key") != key or not isinstance(record.get("codepoints"), list):
        return None
    cps = record["codepoints"]
    if not cps or not all(type(c) is int and 0 <= c <= 0x10FFFF and not 0xD800 <= c <= 0xDFFF for c in cps):
        return None
    if any(a >= b for a, b in zip(cps, cps[1:], strict=False)):
        return None
    try:
        return CharTokenizer.from_codepoints(np.array(cps, dtype=np.uint32))
    except (ValueError, TypeError, OverflowError, CharnnError):
        return None


def _count(value: Any) -> bool:
    return type(value) is int and value >= 1


def _check_ids(ids: np.ndarray, advance: Callable[[int], None]) -> tuple[str, int]:
    """sha256 of the ids' bytes and the largest id, in slices (``ids`` may be a memmap)."""
    h, top = hashlib.sha256(), 0
    step = max(1, CHUNK_BYTES // ids.itemsize)
    for start in range(0, len(ids), step):
        part = np.asarray(ids[start : start + step])
        h.update(part.tobytes())
        top = max(top, int(part.max()))
        advance(part.nbytes)
    return h.hexdigest(), top


def _uses_every_id(ids: np.ndarray, vocab_size: int) -> bool:
    """Whether every id of the vocabulary occurs (a corpus's own vocabulary has no others)."""
    seen = np.zeros(vocab_size, dtype=np.int64)
    step = max(1, CHUNK_BYTES // ids.itemsize)
    for start in range(0, len(ids), step):  # ids are in range (checked when opened): bincount fits
        seen += np.bincount(np.asarray(ids[start : start + step]), minlength=vocab_size)[:vocab_size]
    return bool(seen.all())


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _named_pieces(
    files: list[_Source], errors: str, split_lines: bool, advance: Callable[[int], None]
) -> Iterator[tuple[str, str]]:
    """(source name, text piece) for the whole corpus, joined as :func:`~charnn.data.load_corpus`
    joins documents: a newline after each file that lacks one, except the last source."""
    last = files[-1].name
    for src in files:
        if src.empty:
            continue
        tail = ""
        digest = hashlib.sha256()
        for piece, consumed in _text_pieces(src, errors, split_lines, digest):
            advance(consumed)
            if piece:
                tail = piece[-1]
                yield src.name, piece
        if digest.hexdigest() != src.sha256:  # replaced or edited since it was hashed for the key
            raise DataError(f"{src.name}: changed while charnn was reading it; run the command again")
        if tail and tail != "\n" and src.name != last:
            yield src.name, "\n"


def _pieces_with_joins(
    files: list[_Source], errors: str, split_lines: bool, advance: Callable[[int], None]
) -> Iterator[str]:
    for _, piece in _named_pieces(files, errors, split_lines, advance):
        yield piece


def load_corpus_cached(
    paths: Sequence[str],
    tokenizer: TokenizerConfig | Tokenizer | None = None,
    encoding_errors: str = "strict",
    cache_dir: str | os.PathLike[str] | None = None,
    progress: BarFactory | None = None,
    val_fraction: float = 0.0,
    grow_vocab: bool = False,
) -> Corpus:
    """:func:`charnn.data.load_corpus` through the corpus cache in ``cache_dir`` (default:
    :func:`default_cache_dir`)."""
    return CorpusCache(cache_dir, progress).load(paths, tokenizer, encoding_errors, val_fraction, grow_vocab)
