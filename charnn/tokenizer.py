"""Tokenizers: characters (the default) or SentencePiece subwords (BPE or unigram), one interface.

Every tokenizer encodes straight into a compact numpy array (uint8 when the vocabulary
fits, uint16 up to 65,536 tokens, uint32 beyond), decodes back to exactly the text it
was given, and serialises to a plain JSON-able dict stored in checkpoints.

Shared conventions:

* ``normalize`` (``None``, ``"nfc"`` or ``"nfkc"``) is applied by ``encode`` to every text
  (corpus, primes, eval text); off by default, so what is decoded is what was read.
* ``char_lengths()`` gives the characters each token spells, so losses can be reported per
  character of the text whatever the tokenizer (a byte-fallback piece counts its character
  once, on its lead byte).
* ``never_emit()`` lists ids sampling must never produce (the unknown symbol, control pieces).
"""

from __future__ import annotations

import base64
import codecs
import math
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal, Protocol

import numpy as np

from charnn.errors import CheckpointError, DataError, VocabularyError

# Lone surrogates can appear in Python strings (e.g. from surrogateescape); keep them round-trippable.
_UTF32 = "utf-32-le"
_SURR = "surrogatepass"
_CHUNK = 1 << 18  # characters per encoding chunk: bounds the int64 temporaries
NORMALIZE_FORMS = ("nfc", "nfkc")
SUBWORD_KINDS = ("bpe", "unigram")
KINDS = ("char", *SUBWORD_KINDS)
ALIASES = {"sentencepiece": "unigram"}  # the old spelling: SentencePiece's default model type
UNK_TEXT = "\ufffd"  # how the unknown symbol decodes (sampling never emits it)
META_SPACE = "\u2581"  # SentencePiece's whitespace marker '▁'


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of a vocabulary."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def codepoints(text: str) -> np.ndarray:
    """Unicode code points of ``text`` as a uint32 array, without a Python list in between."""
    return np.frombuffer(text.encode(_UTF32, _SURR), dtype=np.uint32)


def unique_codepoints(text: str) -> np.ndarray:
    """Sorted distinct code points of ``text``, computed chunk by chunk to bound memory."""
    parts = [np.unique(codepoints(text[i : i + _CHUNK])) for i in range(0, len(text), _CHUNK)]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint32)


def codepoint_counts(texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """(distinct code points, how often each occurs) over ``texts``, chunk by chunk."""
    cps_parts, count_parts = [], []
    for text in texts:
        for i in range(0, len(text), _CHUNK):
            cps, counts = np.unique(codepoints(text[i : i + _CHUNK]), return_counts=True)
            cps_parts.append(cps)
            count_parts.append(counts)
    if not cps_parts:
        return np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=np.int64)
    cps, inverse = np.unique(np.concatenate(cps_parts), return_inverse=True)
    counts = np.bincount(inverse, weights=np.concatenate(count_parts), minlength=len(cps))
    return cps, counts.astype(np.int64)


def normalize_text(text: str, form: str | None) -> str:
    forms: dict[str, Literal["NFC", "NFKC"]] = {"nfc": "NFC", "nfkc": "NFKC"}
    return unicodedata.normalize(forms[form], text) if form else text


class StreamDecoder(Protocol):
    """Incremental decoding of one stream of generated ids (beam search forks its state)."""

    def feed(self, token_id: int) -> str: ...
    def flush(self) -> str: ...
    def getstate(self) -> object: ...
    def setstate(self, state: Any) -> None: ...


class Tokenizer(Protocol):
    """What every tokenizer implements, whole: sampling, evaluation and checkpoints use only this."""

    kind: str
    normalize: str | None

    @property
    def vocab_size(self) -> int: ...
    def encode(self, text: str) -> np.ndarray: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def token_text(self, token_id: int) -> str: ...
    def stream_decoder(self) -> StreamDecoder: ...
    def byte_value(self, token_id: int) -> int | None: ...
    def start_ids(self) -> list[int]: ...
    def char_lengths(self) -> np.ndarray: ...
    def never_emit(self) -> list[int]: ...
    def extra_nats(self) -> np.ndarray: ...
    def to_dict(self) -> dict[str, Any]: ...


class CharTokenizer:
    """One token per Unicode code point; the vocabulary is the sorted set seen in the corpus.

    With ``unk`` set (``--max-vocab``/``--min-char-count``) one extra id, the last, stands for
    every other character: ``unk`` is how many distinct characters it replaced in training.
    Without it, an unknown character is an error that names it.
    """

    kind = "char"

    def __init__(self, chars: Sequence[str], unk: int | None = None, normalize: str | None = None) -> None:
        if not chars and unk is None:
            raise DataError("empty vocabulary")
        if any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise CheckpointError("vocabulary entries must be distinct single characters")
        if unk is not None and (not isinstance(unk, int) or unk < 0):
            raise CheckpointError(f"bad unknown-symbol count {unk!r}")
        if normalize is not None and normalize not in NORMALIZE_FORMS:
            raise CheckpointError(f"unknown normalisation {normalize!r}")
        self.chars = list(chars)
        self.unk = unk
        self.normalize = normalize
        self.unk_id = len(self.chars) if unk is not None else None
        self._table = self.chars + [UNK_TEXT] if unk is not None else self.chars  # id -> text
        cps = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        self._order = np.argsort(cps, kind="stable")
        self._sorted_cps = cps[self._order]
        self._dtype = id_dtype(self.vocab_size)

    @classmethod
    def from_codepoints(cls, unique_codepoints: np.ndarray, normalize: str | None = None) -> CharTokenizer:
        return cls([chr(int(c)) for c in np.unique(unique_codepoints)], normalize=normalize)

    @classmethod
    def build(
        cls,
        texts: Sequence[str],
        max_vocab: int | None = None,
        min_count: int | None = None,
        normalize: str | None = None,
    ) -> CharTokenizer:
        """The vocabulary of ``texts`` (already normalised); with a limit, rare characters fold into UNK.

        ``max_vocab`` counts the unknown symbol: the ``max_vocab - 1`` most frequent characters
        stay (ties broken by code point). ``min_count`` drops characters seen fewer times.
        """
        cps, counts = codepoint_counts(texts)
        if max_vocab is None and min_count is None:
            return cls.from_codepoints(cps, normalize)
        keep = counts >= (min_count or 1)
        if max_vocab is not None:
            if max_vocab < 2:
                raise DataError(f"--max-vocab must be >= 2 (a character and UNK), got {max_vocab}")
            order = np.lexsort((cps, -counts))  # most frequent first, then by code point
            top = np.zeros(len(cps), dtype=bool)
            top[order[: max_vocab - 1]] = True
            keep &= top
        kept = [chr(int(c)) for c in cps[keep]]
        return cls(kept, unk=int((~keep).sum()), normalize=normalize)

    def extended(self, texts: Iterable[str]) -> CharTokenizer:
        """This vocabulary plus the characters of ``texts`` it lacks, appended in code-point order:
        every known character keeps its id (fine-tuning on new text, ``--init-from``). A vocabulary
        with an unknown symbol stays as it is (bounded): new characters read as that symbol."""
        if self.unk is not None:
            return self
        known = self._sorted_cps
        new = [unique_codepoints(normalize_text(t, self.normalize)) for t in texts]
        missing = np.setdiff1d(np.concatenate(new), known) if new else np.zeros(0, dtype=np.uint32)
        return CharTokenizer(self.chars + [chr(int(c)) for c in missing], normalize=self.normalize)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + (self.unk is not None)

    def encode(self, text: str) -> np.ndarray:
        """text -> ids (chars,) in the smallest dtype; unknown characters are UNK, or a DataError naming them.

        Works in chunks so the int64 temporaries of searchsorted stay small for big corpora.
        """
        text = normalize_text(text, self.normalize)
        out = np.empty(len(text), dtype=self._dtype)
        n_known = len(self._sorted_cps)
        for start in range(0, len(text), _CHUNK):
            cps = codepoints(text[start : start + _CHUNK])
            pos = np.minimum(np.searchsorted(self._sorted_cps, cps), max(n_known - 1, 0))
            known = self._sorted_cps[pos] == cps if n_known else np.zeros(len(cps), dtype=bool)
            ids = self._order[pos] if n_known else np.zeros(len(cps), dtype=np.int64)
            if not known.all():
                if self.unk_id is None:
                    raise self._unknown_error(text[start:])
                ids = np.where(known, ids, self.unk_id)
            out[start : start + len(cps)] = ids
        return out

    def _unknown_error(self, text: str) -> VocabularyError:
        """Name the unknown characters of all of ``text`` (not just the chunk that hit one)."""
        missing = [chr(int(c)) for c in np.setdiff1d(unique_codepoints(text), self._sorted_cps)]
        shown = ", ".join(repr(c) for c in missing[:10]) + (" ..." if len(missing) > 10 else "")
        return VocabularyError(f"{len(missing)} character(s) not in the model's vocabulary: {shown}")

    def decode(self, ids: Iterable[int]) -> str:
        table = self._table
        return "".join(table[int(i)] for i in ids)

    def token_text(self, token_id: int) -> str:
        return self._table[token_id]

    def start_ids(self) -> list[int]:
        """Context used when the user gives no prime: a newline, as at the start of a line."""
        return self.encode("\n").tolist() if "\n" in self.chars else [0]

    def char_lengths(self) -> np.ndarray:
        return np.ones(self.vocab_size, dtype=np.int64)

    def never_emit(self) -> list[int]:
        return [self.unk_id] if self.unk_id is not None else []

    def extra_nats(self) -> np.ndarray:
        """Nats to add to a token's loss so bpc stays honest: predicting UNK predicts one of the
        ``unk`` rare characters, taken as uniform over them, so it costs log(unk) more."""
        out = np.zeros(self.vocab_size)
        if self.unk_id is not None:
            out[self.unk_id] = math.log(max(self.unk or 0, 1))
        return out

    def stream_decoder(self) -> CharDecoder:
        """Every token is a whole character: decoding a stream is a table lookup."""
        return CharDecoder(self._table)

    def byte_value(self, token_id: int) -> int | None:
        """Characters are never single bytes of a longer UTF-8 sequence."""
        return None

    def to_dict(self) -> dict[str, Any]:
        # A list, not one string: JSON would merge an adjacent high + low surrogate into one character.
        data: dict[str, Any] = {"kind": self.kind, "chars": list(self.chars)}
        if self.unk is not None:
            data["unk"] = self.unk
        if self.normalize:
            data["normalize"] = self.normalize
        return data


class SentencePieceTokenizer:
    """Subword tokens (BPE or unigram) from a SentencePiece model trained on the corpus.

    Set up to be lossless: identity normalisation, no dummy prefix, spaces kept as they are,
    byte fallback for every character the model has no piece for, newlines a dedicated piece
    (text is encoded line by line, so layout survives). SentencePiece reads a literal ``▁``
    (U+2581) as its own space marker and would give back a space; charnn encodes that
    character as its three UTF-8 byte pieces instead and decodes pieces itself, so it
    round-trips too. The model is stored in the checkpoint.
    """

    def __init__(self, model_proto: bytes, kind: str = "unigram", normalize: str | None = None) -> None:
        import sentencepiece as spm

        if kind not in SUBWORD_KINDS:
            raise CheckpointError(f"unknown subword tokenizer {kind!r}")
        if normalize is not None and normalize not in NORMALIZE_FORMS:
            raise CheckpointError(f"unknown normalisation {normalize!r}")
        self.kind, self.normalize = kind, normalize
        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except Exception as exc:  # sentencepiece raises bare RuntimeError/OSError
            raise CheckpointError(f"invalid SentencePiece model: {exc}") from exc
        self._newline = self._sp.piece_to_id("\n")
        byte_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in META_SPACE.encode()]
        if self._newline == self._sp.unk_id() or any(not self._sp.is_byte(i) for i in byte_ids):
            raise CheckpointError("SentencePiece model lacks the newline piece or byte fallback")
        self._meta_ids = byte_ids  # a literal '▁' is spelled with its byte pieces
        self._dtype = id_dtype(self._sp.get_piece_size())
        # id -> its text, or its one byte for a byte piece (control pieces: "")
        self.pieces: list[str | bytes] = [self._piece(i) for i in range(self.vocab_size)]
        self._piece_bytes = [p if isinstance(p, bytes) else p.encode() for p in self.pieces]

    def _piece(self, i: int) -> str | bytes:
        sp = self._sp
        if sp.is_byte(i):
            return bytes((int(sp.id_to_piece(i)[1:-1], 16),))
        if sp.is_unknown(i):
            return UNK_TEXT
        if sp.is_control(i):
            return ""
        return sp.id_to_piece(i).replace(META_SPACE, " ")

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        kind: str = "unigram",
        seed: int = 0,
        normalize: str | None = None,
        sample_sentences: int = 200_000,
    ) -> SentencePieceTokenizer:
        """Train on ``text`` (already normalised): SentencePiece draws a seeded random sample of
        ``sample_sentences`` lines itself (``input_sentence_size`` + ``shuffle_input_sentence``)."""
        import io

        import sentencepiece as spm

        if not any(True for _ in _sentences(text)):
            raise DataError("corpus has no non-empty lines to train SentencePiece on")
        spm.set_random_generator_seed(seed)
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_sentences(text),
                model_writer=model,
                vocab_size=vocab_size,
                model_type=kind,
                input_sentence_size=sample_sentences,
                shuffle_input_sentence=True,
                max_sentence_length=1 << 14,
                character_coverage=1.0,
                byte_fallback=True,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                allow_whitespace_only_pieces=True,
                user_defined_symbols=["\n"],
                hard_vocab_limit=False,
                minloglevel=2,
            )
        except RuntimeError as exc:
            import re

            # e.g. "... Vocabulary size is smaller than required_chars. 300 vs 314. ..."
            small = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", str(exc))
            if small:
                raise DataError(
                    f"--vocab-size {vocab_size} is too small for this corpus: SentencePiece needs at least "
                    f"{small.group(2)} (256 byte-fallback pieces + every distinct character + specials)"
                ) from None
            raise DataError(f"SentencePiece training failed: {exc}") from exc
        return cls(model.getvalue(), kind, normalize)

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    def encode(self, text: str, lines_per_batch: int = 8192) -> np.ndarray:
        """text -> ids, a batch of lines at a time (SentencePiece encodes a batch on several threads)."""
        text = normalize_text(text, self.normalize)
        lines = text.split("\n")
        parts = []
        for first in range(0, len(lines), lines_per_batch):
            batch = lines[first : first + lines_per_batch]
            segments = [line.split(META_SPACE) for line in batch]
            flat = [seg for segs in segments for seg in segs if seg]
            encoded = iter(self._sp.encode(flat)) if flat else iter(())
            out: list[int] = []
            for n, segs in enumerate(segments):
                if first + n:
                    out.append(self._newline)
                for k, seg in enumerate(segs):
                    if k:
                        out.extend(self._meta_ids)
                    if seg:
                        out.extend(next(encoded))
            parts.append(np.asarray(out, dtype=self._dtype))
        return np.concatenate(parts)

    def decode(self, ids: Iterable[int]) -> str:
        table = self._piece_bytes
        return b"".join(table[int(i)] for i in ids).decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        return self.decode([token_id])

    def stream_decoder(self) -> PieceDecoder:
        """A fresh incremental decoder for one stream of generated ids (see :class:`PieceDecoder`)."""
        return PieceDecoder(self.pieces)

    def byte_value(self, token_id: int) -> int | None:
        """The byte a byte-fallback piece (``<0xC3>``) stands for, else None."""
        piece = self.pieces[int(token_id)]
        return piece[0] if isinstance(piece, bytes) else None

    def byte_values(self) -> np.ndarray:
        """(V,) the byte of each byte-fallback piece, -1 for every other piece."""
        return np.array([p[0] if isinstance(p, bytes) else -1 for p in self.pieces], dtype=np.int16)

    def char_lengths(self) -> np.ndarray:
        """Characters each piece spells; a byte piece counts 1 on a lead byte, 0 on a continuation."""
        return np.array(
            [(0 if 0x80 <= p[0] < 0xC0 else 1) if isinstance(p, bytes) else len(p) for p in self.pieces],
            dtype=np.int64,
        )

    def never_emit(self) -> list[int]:
        sp = self._sp
        return [i for i in range(self.vocab_size) if sp.is_control(i) or sp.is_unknown(i)]

    def extra_nats(self) -> np.ndarray:
        return np.zeros(self.vocab_size)

    def start_ids(self) -> list[int]:
        return [self._newline]

    def to_dict(self) -> dict[str, Any]:
        data = {"kind": self.kind, "model": base64.b64encode(self._proto).decode("ascii")}
        if self.normalize:
            data["normalize"] = self.normalize
        return data


def _sentences(text: str, max_chars: int = 4000) -> Iterator[str]:
    """Training sentences: the non-empty lines, cut at literal '▁' (never learnt as a piece) and
    into pieces of at most ``max_chars`` (SentencePiece skips over-long sentences)."""
    for line in text.split("\n"):
        for seg in line.split(META_SPACE):
            for i in range(0, len(seg), max_chars):
                yield seg[i : i + max_chars]


class CharDecoder:
    """The stream decoder of :class:`CharTokenizer`: stateless, each id is one character."""

    def __init__(self, chars: Sequence[str]) -> None:
        self._chars = chars

    def feed(self, token_id: int) -> str:
        return self._chars[token_id]

    def flush(self) -> str:
        return ""

    def getstate(self) -> None:
        return None

    def setstate(self, state: None) -> None:
        pass


class PieceDecoder:
    """Streams text token by token when some tokens are single UTF-8 bytes (byte-fallback pieces).

    ``feed(id)`` returns the text completed by that token: a byte piece is buffered until its
    character is whole, so ``<0xE2> <0x82> <0xAC>`` yields "", "", "€". A sequence cut short
    (by an ordinary piece, or by ``flush()`` at the end) becomes U+FFFD, as in a full decode.
    ``getstate``/``setstate`` save and restore the pending bytes (beam search forks streams).
    """

    def __init__(self, pieces: Sequence[str | bytes]) -> None:
        self.pieces = pieces  # token id -> its text, or its one byte for a byte piece
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        piece = self.pieces[token_id]
        if isinstance(piece, bytes):
            return self._utf8.decode(piece)
        return self.flush() + piece

    def flush(self) -> str:
        """Pending bytes of an unfinished character, as U+FFFD (empty when none)."""
        return self._utf8.decode(b"", final=True)

    def getstate(self) -> tuple[bytes, int]:
        return self._utf8.getstate()

    def setstate(self, state: tuple[bytes, int]) -> None:
        self._utf8.setstate(state)


def tokenizer_from_dict(data: Any) -> Tokenizer:
    """Rebuild a tokenizer from checkpoint metadata; anything malformed is a CheckpointError."""
    if not isinstance(data, dict):
        raise CheckpointError("checkpoint has no tokenizer")
    kind = data.get("kind")
    kind = ALIASES.get(kind, kind) if isinstance(kind, str) else kind
    normalize = data.get("normalize")
    try:
        chars = data.get("chars")
        if kind == "char" and isinstance(chars, list) and all(isinstance(c, str) for c in chars):
            return CharTokenizer(chars, unk=data.get("unk"), normalize=normalize)
        if kind in SUBWORD_KINDS and isinstance(data.get("model"), str):
            return SentencePieceTokenizer(base64.b64decode(data["model"], validate=True), kind, normalize)
    except (ValueError, DataError) as exc:
        raise CheckpointError(f"bad tokenizer in checkpoint: {exc}") from exc
    raise CheckpointError(f"unknown tokenizer in checkpoint: {kind!r}")
