"""Tokenizers: characters (the default) or SentencePiece subwords, behind one interface.

Both encode straight into compact numpy arrays (uint8 when the vocabulary fits,
wider otherwise) and serialise to plain JSON-able dicts stored in checkpoints.
"""

from __future__ import annotations

import base64
import codecs
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from charnn.errors import CheckpointError, DataError

# Lone surrogates can appear in Python strings (e.g. from surrogateescape); keep them round-trippable.
_UTF32 = "utf-32-le"
_SURR = "surrogatepass"
_CHUNK = 1 << 18  # characters per encoding chunk: bounds the int64 temporaries


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


class StreamDecoder(Protocol):
    """Incremental decoding of one stream of generated ids (beam search forks its state)."""

    def feed(self, token_id: int) -> str: ...
    def flush(self) -> str: ...
    def getstate(self) -> object: ...
    def setstate(self, state: Any) -> None: ...


class Tokenizer(Protocol):
    """What every tokenizer implements, whole: sampling, evaluation and checkpoints use only this."""

    kind: str

    @property
    def vocab_size(self) -> int: ...
    def encode(self, text: str) -> np.ndarray: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def token_text(self, token_id: int) -> str: ...
    def stream_decoder(self) -> StreamDecoder: ...
    def byte_value(self, token_id: int) -> int | None: ...
    def start_ids(self) -> list[int]: ...
    def to_dict(self) -> dict[str, Any]: ...


class CharTokenizer:
    """One token per Unicode code point; the vocabulary is the sorted set seen in the corpus."""

    kind = "char"

    def __init__(self, chars: Sequence[str]) -> None:
        if not chars:
            raise DataError("empty vocabulary")
        if any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise CheckpointError("vocabulary entries must be distinct single characters")
        self.chars = list(chars)
        cps = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        self._order = np.argsort(cps, kind="stable")
        self._sorted_cps = cps[self._order]
        self._dtype = id_dtype(len(self.chars))

    @classmethod
    def from_codepoints(cls, unique_codepoints: np.ndarray) -> CharTokenizer:
        return cls([chr(int(c)) for c in np.unique(unique_codepoints)])

    def extended(self, texts: Iterable[str]) -> CharTokenizer:
        """This vocabulary plus the characters of ``texts`` it lacks, appended in code-point order:
        every known character keeps its id (fine-tuning on new text, ``--init-from``)."""
        known = self._sorted_cps
        new = [unique_codepoints(t) for t in texts]
        missing = np.setdiff1d(np.concatenate(new), known) if new else np.zeros(0, dtype=np.uint32)
        return CharTokenizer(self.chars + [chr(int(c)) for c in missing])

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """text -> ids (len(text),) in the smallest dtype; unknown characters raise DataError naming them.

        Works in chunks so the int64 temporaries of searchsorted stay small for big corpora.
        """
        out = np.empty(len(text), dtype=self._dtype)
        for start in range(0, len(text), _CHUNK):
            cps = codepoints(text[start : start + _CHUNK])
            pos = np.minimum(np.searchsorted(self._sorted_cps, cps), len(self._sorted_cps) - 1)
            known = self._sorted_cps[pos] == cps
            if not known.all():
                raise self._unknown_error(text[start:])
            out[start : start + len(cps)] = self._order[pos]
        return out

    def _unknown_error(self, text: str) -> DataError:
        """Name the unknown characters of all of ``text`` (not just the chunk that hit one)."""
        missing = [chr(int(c)) for c in np.setdiff1d(unique_codepoints(text), self._sorted_cps)]
        shown = ", ".join(repr(c) for c in missing[:10]) + (" ..." if len(missing) > 10 else "")
        return DataError(f"{len(missing)} character(s) not in the model's vocabulary: {shown}")

    def decode(self, ids: Iterable[int]) -> str:
        chars = self.chars
        return "".join(chars[int(i)] for i in ids)

    def token_text(self, token_id: int) -> str:
        return self.chars[token_id]

    def start_ids(self) -> list[int]:
        """Context used when the user gives no prime: a newline, as at the start of a line."""
        return self.encode("\n").tolist() if "\n" in self.chars else [0]

    def stream_decoder(self) -> CharDecoder:
        """Every token is a whole character: decoding a stream is a table lookup."""
        return CharDecoder(self.chars)

    def byte_value(self, token_id: int) -> int | None:
        """Characters are never single bytes of a longer UTF-8 sequence."""
        return None

    def to_dict(self) -> dict[str, Any]:
        # A list, not one string: JSON would merge an adjacent high + low surrogate into one character.
        return {"kind": self.kind, "chars": list(self.chars)}


class SentencePieceTokenizer:
    """Subword tokens from a SentencePiece model trained on the corpus (stored in the checkpoint).

    Newlines are a dedicated piece and text is encoded line by line, so layout
    survives; byte fallback covers characters unseen in training.
    """

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece as spm

        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except Exception as exc:  # sentencepiece raises bare RuntimeError/OSError
            raise CheckpointError(f"invalid SentencePiece model: {exc}") from exc
        self._newline = self._sp.piece_to_id("\n")
        self._dtype = id_dtype(self._sp.get_piece_size())
        self._piece_table: list[str | bytes] | None = None  # built by the first stream_decoder()

    @classmethod
    def train(cls, text: str, vocab_size: int, max_lines: int = 200_000) -> SentencePieceTokenizer:
        import io

        import sentencepiece as spm

        lines = [line for line in text.split("\n") if line][:max_lines]
        if not lines:
            raise DataError("corpus has no non-empty lines to train SentencePiece on")
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines),
                model_writer=model,
                vocab_size=vocab_size,
                model_type="unigram",
                character_coverage=1.0,
                byte_fallback=True,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
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
        return cls(model.getvalue())

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    def encode(self, text: str) -> np.ndarray:
        out: list[int] = []
        for i, line in enumerate(text.split("\n")):
            if i:
                out.append(self._newline)
            if line:
                out.extend(self._sp.encode(line))
        return np.asarray(out, dtype=self._dtype)

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def token_text(self, token_id: int) -> str:
        return self._sp.decode([int(token_id)])

    def stream_decoder(self) -> PieceDecoder:
        """A fresh incremental decoder for one stream of generated ids (see :class:`PieceDecoder`)."""
        if self._piece_table is None:
            self._piece_table = [
                self.token_text(i) if (byte := self.byte_value(i)) is None else bytes((byte,))
                for i in range(self.vocab_size)
            ]
        return PieceDecoder(self._piece_table)

    def byte_value(self, token_id: int) -> int | None:
        """The byte a byte-fallback piece (``<0xC3>``) stands for, else None."""
        if not self._sp.is_byte(int(token_id)):
            return None
        return int(self._sp.id_to_piece(int(token_id))[1:-1], 16)

    def start_ids(self) -> list[int]:
        return [self._newline]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": base64.b64encode(self._proto).decode("ascii")}


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
        self._pieces = pieces  # token id -> its text, or its one byte for a byte piece
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        piece = self._pieces[token_id]
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
    try:
        chars = data.get("chars")
        if kind == "char" and isinstance(chars, list) and all(isinstance(c, str) for c in chars):
            return CharTokenizer(chars)
        if kind == "sentencepiece" and isinstance(data.get("model"), str):
            return SentencePieceTokenizer(base64.b64decode(data["model"], validate=True))
    except (ValueError, DataError) as exc:
        raise CheckpointError(f"bad tokenizer in checkpoint: {exc}") from exc
    raise CheckpointError(f"unknown tokenizer in checkpoint: {kind!r}")
