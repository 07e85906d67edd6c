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
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charnn.config import TokenizerConfig
from charnn.errors import DataError
from charnn.tokenizer import CharTokenizer, SentencePieceTokenizer, Tokenizer, unique_codepoints

BUILTIN_CORPUS = "builtin:pydoc"
_SNIFF_BYTES = 8192


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
        raise DataError(f"{name}: looks binary (NUL byte at offset {nul}); charnn trains on text")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte-order mark is not part of the text
    try:
        return raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{name}: not valid UTF-8 at byte offset {exc.start} "
            "(use --encoding-errors replace or ignore to go on)"
        ) from None


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


def read_source(source: str, errors: str = "strict") -> str:
    if source == BUILTIN_CORPUS:
        return builtin_text()
    if source == "-":
        return decode_bytes(sys.stdin.buffer.read(), "<stdin>", errors)
    try:
        raw = Path(source).read_bytes()
    except OSError as exc:
        raise DataError(f"{source}: cannot read ({exc.strerror or exc})") from None
    return decode_bytes(raw, source, errors)


def load_corpus(
    paths: Sequence[str],
    tokenizer: TokenizerConfig | Tokenizer | None = None,
    encoding_errors: str = "strict",
) -> Corpus:
    """Read and encode a corpus. ``tokenizer``: how to build one from this text (default: characters),
    or an existing tokenizer (resume, eval)."""
    sources, notes = resolve_sources(paths)
    texts: list[str] = []
    names: list[str] = []  # the source of each text, for error messages
    for source in sources:
        text = read_source(source, encoding_errors)
        if not text:
            if source in paths or source == "-":
                raise DataError(f"{'<stdin>' if source == '-' else source}: is empty")
            notes.append(f"{source}: empty, skipped")
            continue
        # Documents are joined on line boundaries so one file's last line does not run into the next.
        texts.append(text if text.endswith("\n") or source == sources[-1] else text + "\n")
        names.append("<stdin>" if source == "-" else source)
    if not texts:
        raise DataError("the corpus is empty")
    chars = sum(len(t) for t in texts)

    if tokenizer is None or isinstance(tokenizer, TokenizerConfig):
        tokenizer = build_tokenizer(tokenizer or TokenizerConfig(), texts)
    parts = []
    for name, text in zip(names, texts, strict=True):
        try:
            parts.append(tokenizer.encode(text))
        except DataError as exc:  # e.g. characters a checkpoint's vocabulary lacks: say where
            raise DataError(f"{name}: {exc}") from None
    ids = np.concatenate(parts)
    return Corpus(tokenizer=tokenizer, ids=ids, chars=chars, sources=sources, notes=notes)


def build_tokenizer(config: TokenizerConfig, texts: Sequence[str]) -> Tokenizer:
    """A new tokenizer of ``config.kind`` fitted to ``texts``."""
    if config.kind == "sentencepiece":
        return SentencePieceTokenizer.train("".join(texts), config.vocab_size)
    uniques = np.unique(np.concatenate([unique_codepoints(t) for t in texts]))
    return CharTokenizer.from_codepoints(uniques)


def split_train_val(ids: np.ndarray, val_fraction: float, min_val: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Hold out the last ``val_fraction`` of the corpus (views, no copies)."""
    if val_fraction <= 0:
        return ids, ids[:0]
    n_val = max(min_val, int(len(ids) * val_fraction))
    if n_val >= len(ids) - 1:
        raise DataError(f"corpus of {len(ids)} tokens is too short to hold out a validation split")
    return ids[:-n_val], ids[-n_val:]


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
