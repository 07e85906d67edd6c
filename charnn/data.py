"""Corpus loading and batching: files -> one compact id array -> TBPTT batches.

The corpus is checked (missing, empty, binary, bad UTF-8) and encoded once into
a numpy array of the smallest unsigned dtype (never a Python list of ids).
Batches come from ``B`` parallel streams through the training split; window
``w`` of every stream continues exactly where window ``w - 1`` ended, so the
trainer can carry the hidden state across windows (truncated BPTT).
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from charnn.config import TokenizerConfig
from charnn.errors import DataError, located
from charnn.tokenizer import CharTokenizer, SentencePieceTokenizer, Tokenizer, normalize_text

BUILTIN_CORPUS = "builtin:pydoc"
_SNIFF_BYTES = 8192
_READ_CHUNK = 1 << 20


@dataclass
class Corpus:
    """An encoded corpus: ids (N,) in a compact dtype, plus where it came from."""

    tokenizer: Tokenizer
    ids: np.ndarray
    chars: int
    sources: list[str]
    notes: list[str] = field(default_factory=list)
    digest: str | None = None  # sha256 of the ids when already known (the corpus cache stores it)

    @property
    def sha256(self) -> str:
        """sha256 of the ids' bytes (resume checks it), hashed in slices: ``ids`` may be a memmap
        bigger than memory, and ``tobytes()`` would copy it whole."""
        if self.digest is None:
            h = hashlib.sha256()
            step = 1 << 22
            for start in range(0, len(self.ids), step):
                h.update(np.ascontiguousarray(self.ids[start : start + step]).data)
            self.digest = h.hexdigest()
        return self.digest


def builtin_text() -> str:
    """Python's own documentation topics: ~465k characters shipped with CPython, no download."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip("\n") for key in sorted(topics)) + "\n"


def decode_bytes(raw: bytes, name: str, errors: str = "strict") -> str:
    """UTF-8 bytes -> text, refusing binary data and naming the byte offset of bad UTF-8."""
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise BinaryData(f"{name}: looks binary (NUL byte at offset {nul}); charnn trains on text")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte-order mark is not part of the text
    try:
        return raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{name}: not valid UTF-8 at byte offset {exc.start} "
            "(use --encoding-errors replace or ignore to go on)"
        ) from None


PRIME_MAX_BYTES = 16 << 20  # a prime beyond this is refused: reading is bounded whatever the file is


def read_prime_file(source: str, errors: str = "strict") -> str:
    """``--prime-file``: the bytes as they are (CRLF kept), decoded like a corpus, size-capped."""
    name = f"--prime-file {'<stdin>' if source == '-' else source}"
    if source == "-":
        raw = read_bytes(sys.stdin.buffer, name, PRIME_MAX_BYTES)
    else:
        try:
            with open(source, "rb") as fh:
                raw = read_bytes(fh, name, PRIME_MAX_BYTES)
        except OSError as exc:
            raise DataError(f"{name}: cannot read ({exc.strerror or exc})") from None
    return decode_bytes(raw, name, errors)


def _is_text_file(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return b"\x00" not in fh.read(_SNIFF_BYTES)
    except OSError as exc:  # e.g. an unreadable file inside a directory argument
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def resolve_sources(paths: Sequence[str]) -> tuple[list[str], list[str]]:
    """Expand the user's arguments into a list of sources (files, '-', builtin) plus notes."""
    if not paths:
        return [BUILTIN_CORPUS], []
    sources: list[str] = []
    notes: list[str] = []
    for arg in paths:
        if arg in ("-", BUILTIN_CORPUS):
            sources.append(arg)
            continue
        path = Path(arg)
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            text_files = [p for p in files if _is_text_file(p)]
            if len(text_files) < len(files):
                notes.append(f"{arg}: skipped {len(files) - len(text_files)} binary file(s)")
            if not text_files:
                raise DataError(f"{arg}: directory has no text files")
            sources.extend(str(p) for p in text_files)
        elif path.exists():
            sources.append(arg)
        else:
            raise DataError(f"{arg}: no such file or directory")
    return sources, notes


class BinaryData(DataError):
    """A NUL byte: the input is not text."""


def _text_limit() -> int:
    """How much text one input may hold in memory: a quarter of the machine's RAM (the encoded
    corpus and the text itself live side by side), 4 GiB where the OS does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) // 4
    except (AttributeError, ValueError, OSError):
        return 4 << 30


def read_bytes(stream: BinaryIO, name: str, limit: int | None = None) -> bytes:
    """All bytes of ``stream``, read in chunks and checked as they come: a binary input (a NUL
    byte, e.g. ``/dev/zero``) or one larger than ``limit`` (an endless pipe) is refused without
    first filling memory."""
    limit = _text_limit() if limit is None else limit
    chunks: list[bytes] = []
    total = 0
    while chunk := stream.read(_READ_CHUNK):
        nul = chunk.find(b"\x00")
        if nul >= 0:
            where = total + nul
            raise BinaryData(f"{name}: looks binary (NUL byte at offset {where}); charnn trains on text")
        total += len(chunk)
        if total > limit:
            size = f"{limit / 2**30:.1f} GiB" if limit >= 1 << 30 else f"{limit / 2**20:g} MiB"
            raise DataError(f"{name}: more than {size} of text; split it or use a smaller input")
        chunks.append(chunk)
    return b"".join(chunks)


def read_source(source: str, errors: str = "strict") -> str:
    if source == BUILTIN_CORPUS:
        return builtin_text()
    if source == "-":
        return decode_bytes(read_bytes(sys.stdin.buffer, "<stdin>"), "<stdin>", errors)
    try:
        with open(source, "rb") as fh:
            raw = read_bytes(fh, source)
    except OSError as exc:
        raise DataError(f"{source}: cannot read ({exc.strerror or exc})") from None
    return decode_bytes(raw, source, errors)


@dataclass
class CorpusTexts:
    """Corpus sources read into memory, not yet encoded (read once, encode with several tokenizers)."""

    sources: list[str]  # the sources that contributed text (what a resume must read again)
    names: list[str]  # the source of each text, for error messages
    texts: list[str]
    notes: list[str]


def read_corpus(paths: Sequence[str], encoding_errors: str = "strict") -> CorpusTexts:
    """Read every source of a corpus (stdin at most once), skipping empty or binary files found in
    directories."""
    sources, notes = resolve_sources(paths)
    texts: list[str] = []
    names: list[str] = []
    used: list[str] = []
    for source in sources:
        explicit = source in paths or source == "-"
        try:
            text = read_source(source, encoding_errors)
        except BinaryData as exc:
            if explicit:
                raise
            notes.append(f"{exc}: skipped")  # a file of a directory: binary past the first sniff
            continue
        if not text:
            if explicit:
                raise DataError(f"{'<stdin>' if source == '-' else source}: is empty")
            notes.append(f"{source}: empty, skipped")
            continue
        # Documents are joined on line boundaries so one file's last line does not run into the next.
        texts.append(text if text.endswith("\n") or source == sources[-1] else text + "\n")
        names.append("<stdin>" if source == "-" else source)
        used.append(source)
    if not texts:
        raise DataError("the corpus is empty")
    return CorpusTexts(sources=used, names=names, texts=texts, notes=notes)


def load_corpus(
    paths: Sequence[str] | CorpusTexts,
    tokenizer: str | Tokenizer | TokenizerConfig | None = None,
    encoding_errors: str = "strict",
    val_fraction: float = 0.0,
    grow_vocab: bool = False,
) -> Corpus:
    """Read and encode a corpus (``paths`` may be texts already read by :func:`read_corpus`).

    ``tokenizer`` is an existing tokenizer (resume, eval, ``--tokenizer-from``, fine-tuning), or
    how to build one (a :class:`TokenizerConfig`, or just its kind). Subword models learn from
    the training split only: the text before the last ``val_fraction`` of the characters.
    ``grow_vocab``: an existing character tokenizer gains the characters of this text it lacks,
    at the end of its vocabulary (fine-tuning).
    """
    read = paths if isinstance(paths, CorpusTexts) else read_corpus(paths, encoding_errors)
    texts, names = read.texts, read.names
    chars = sum(len(t) for t in texts)

    if tokenizer is None or isinstance(tokenizer, str):
        tokenizer = TokenizerConfig(kind=tokenizer or "char")
    if isinstance(tokenizer, TokenizerConfig):
        tokenizer = build_tokenizer(tokenizer, texts, val_fraction)
    elif grow_vocab and isinstance(tokenizer, CharTokenizer):
        tokenizer = tokenizer.extended(texts)
    parts = []
    for name, text in zip(names, texts, strict=True):
        try:
            parts.append(tokenizer.encode(text))
        except DataError as exc:  # e.g. characters a checkpoint's vocabulary lacks: say where
            raise located(exc, name) from None
    ids = np.concatenate(parts)
    return Corpus(
        tokenizer=tokenizer, ids=ids, chars=chars, sources=list(read.sources), notes=list(read.notes)
    )


def build_tokenizer(config: TokenizerConfig, texts: Sequence[str], val_fraction: float = 0.0) -> Tokenizer:
    """A new tokenizer for ``texts``. Characters come from the whole corpus (so validation never
    meets an unknown one); a SentencePiece model from a seeded sample of the training split."""
    texts = [normalize_text(t, config.normalization) for t in texts]
    if config.kind == "char":
        return CharTokenizer.build(texts, config.max_vocab, config.min_char_count, config.normalization)
    total = sum(len(t) for t in texts)
    keep = total - int(total * val_fraction) if val_fraction > 0 else total
    train_parts = []
    for text in texts:
        train_parts.append(text[:keep])
        keep -= len(train_parts[-1])
        if keep <= 0:
            break
    return SentencePieceTokenizer.train(
        "".join(train_parts),
        config.vocab_size,
        kind=config.kind,
        seed=config.seed,
        normalize=config.normalization,
        sample_sentences=config.sample_sentences,
    )


def split_train_val(
    ids: np.ndarray, val_fraction: float, min_val: int = 2, char_lengths: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out the last ``val_fraction`` of the corpus (views, no copies).

    With ``char_lengths`` (characters per token id) the fraction is of characters, so models with
    different tokenizers validate on the same text (up to one token at the boundary).
    """
    if val_fraction <= 0:
        return ids, ids[:0]
    if char_lengths is None or bool((char_lengths == 1).all()):
        n_val = max(min_val, int(len(ids) * val_fraction))
    else:
        n_val = max(min_val, len(ids) - _token_at_char_fraction(ids, char_lengths, 1.0 - val_fraction))
    if n_val >= len(ids) - 1:
        raise DataError(f"corpus of {len(ids)} tokens is too short to hold out a validation split")
    return ids[:-n_val], ids[-n_val:]


def _token_at_char_fraction(ids: np.ndarray, char_lengths: np.ndarray, fraction: float) -> int:
    """The first token index at which ``fraction`` of the characters have been spelled (chunked:
    no int64 copy of the whole corpus)."""
    chunk = 1 << 20
    sums = [int(char_lengths[ids[i : i + chunk]].sum()) for i in range(0, len(ids), chunk)]
    target = sum(sums) * fraction
    done = 0
    for k, part in enumerate(sums):
        if done + part >= target:
            running = np.cumsum(char_lengths[ids[k * chunk : (k + 1) * chunk]])
            return k * chunk + int(np.searchsorted(running, target - done, side="left")) + 1
        done += part
    return len(ids)


class StreamBatcher:
    """Parallel streams over ``data`` for truncated BPTT; a pure function of the step number.

    Stream ``b`` reads ``data[b*L : (b+1)*L + 1]``. Step ``s`` is window ``w = s % W``
    of epoch ``e = s // W``: inputs ``[start + w*T, start + (w+1)*T)`` and targets
    shifted by one. Each epoch after the first begins at a seeded offset in
    ``[0, T)`` so window boundaries move; hidden state resets at epoch starts.

    Data-parallel runs (``rank`` of ``world`` processes, see :mod:`charnn.distributed`) cut
    the training split into ``world * B`` streams; rank ``r`` owns the ``r``-th block of ``B``
    of them, so ranks never read the same text and together read exactly what one process
    with batch ``world * B`` reads (world = 2, B = 3 shown)::

        training split: |s0----|s1----|s2----|s3----|s4----|s5----|   6 streams of L tokens
                        '------ rank 0 ------'------ rank 1 ------'
        step s, window w: every stream reads [start + w*T, start + (w+1)*T] of its own part

    A checkpoint's hidden state holds all ``world * B`` streams in this order.
    """

    def __init__(
        self,
        data: np.ndarray,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        warn: Callable[[str], None] | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        n = len(data)
        if n - 1 < seq_len * world:
            raise DataError(
                f"corpus too short: {n} training tokens, need at least --seq-len + 1 = {seq_len + 1}"
                + (f" for each of {world} processes" if world > 1 else "")
            )
        streams = min(batch_size, (n - 1) // seq_len // world)  # per rank
        if streams < batch_size and warn:
            warn(f"corpus too small for {batch_size} streams of {seq_len}: using --batch-size {streams}")
        self.data = data
        self.batch_size = streams
        self.seq_len = seq_len
        self.seed = seed
        self.stream_len = (n - 1) // (streams * world)  # L
        per_stream = self.stream_len // seq_len
        # Leave one window of slack for the epoch offset when there is room for it.
        self.windows_per_epoch = per_stream - 1 if per_stream >= 2 else 1  # W
        self._slack = min(seq_len, self.stream_len - self.windows_per_epoch * seq_len + 1)
        self._offsets = (rank * streams + np.arange(streams, dtype=np.int64)) * self.stream_len  # (B,)
        self._arange = np.arange(seq_len + 1, dtype=np.int64)  # (T+1,)

    def epoch_offset(self, epoch: int) -> int:
        if epoch == 0 or self._slack <= 1:
            return 0
        return int(np.random.default_rng([self.seed, epoch]).integers(self._slack))

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, window) of a step."""
        return divmod(step, self.windows_per_epoch)

    def steps_for_epochs(self, epochs: float) -> int:
        return max(1, math.ceil(epochs * self.windows_per_epoch))

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """-> inputs (B, T), targets (B, T) as int64, and whether the hidden state must reset."""
        epoch, window = self.position(step)
        start = self.epoch_offset(epoch) + window * self.seq_len
        idx = self._offsets[:, None] + start + self._arange[None, :]  # (B, T+1)
        chunk = self.data[idx].astype(np.int64)
        return chunk[:, :-1], chunk[:, 1:], window == 0
