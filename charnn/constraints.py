"""Which tokens may come next in a generated sample, so samples are exact and clean.

* ``--length`` counts characters for every tokenizer: a token that would overshoot the
  characters left is masked, so a sample ends at exactly ``length`` characters.
* Ids a tokenizer must never emit (the unknown symbol, SentencePiece's control pieces) are masked.
* Byte-fallback pieces are allowed only where they start or continue a valid UTF-8 character
  (right lead bytes, the right continuation ranges, never a cut-off character), so even an
  untrained model writes valid text: no U+FFFD, no broken UTF-8.
* Prime healing: the prime's last subword token is backed off and regenerated, constrained to
  spell that text first, so the model chooses the tokenization of the seam ("ROMEO: " then
  "▁the", not "▁" then "▁the" with a doubled space).

Pure numpy; the masks of each distinct state are computed once and cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from charnn.tokenizer import Tokenizer

_FULL = (0x80, 0xBF)
# Lead byte -> (continuation bytes, allowed range of the first continuation byte). RFC 3629.
_LEADS: dict[int, tuple[int, tuple[int, int]]] = {
    **{b: (1, _FULL) for b in range(0xC2, 0xE0)},
    0xE0: (2, (0xA0, 0xBF)),
    **{b: (2, _FULL) for b in (*range(0xE1, 0xED), 0xEE, 0xEF)},
    0xED: (2, (0x80, 0x9F)),  # no UTF-16 surrogates
    0xF0: (3, (0x90, 0xBF)),
    **{b: (3, _FULL) for b in range(0xF1, 0xF4)},
    0xF4: (3, (0x80, 0x8F)),  # nothing above U+10FFFF
}


@dataclass
class SampleState:
    """Where one generated sample stands."""

    chars: int = 0  # characters written so far (a multi-byte character counts at its lead byte)
    need: int = 0  # continuation bytes still owed to the current character
    lo: int = 0x80  # allowed range of the next continuation byte
    hi: int = 0xBF
    heal: str = ""  # text of the prime's backed-off token still to be spelled

    def copy(self) -> SampleState:
        return SampleState(self.chars, self.need, self.lo, self.hi, self.heal)


class TokenRules:
    """Masks and bookkeeping for one tokenizer (see the module docstring)."""

    def __init__(
        self,
        char_lengths: np.ndarray,
        never_emit: Sequence[int] = (),
        byte_values: np.ndarray | None = None,
        pieces: Sequence[Any] | None = None,
    ) -> None:
        self.lengths = np.asarray(char_lengths, dtype=np.int64)  # (V,)
        vocab = len(self.lengths)
        self.max_len = int(self.lengths.max()) if vocab else 1
        self.base = np.ones(vocab, dtype=bool)
        self.base[list(never_emit)] = False
        self.bytes = byte_values if byte_values is not None and (byte_values >= 0).any() else None
        self.pieces = pieces  # token id -> text (str) or one byte (bytes); enables prime healing
        self.trivial = self.max_len == 1 and bool(self.base.all()) and self.bytes is None
        self._cache: dict[tuple, np.ndarray] = {}

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer) -> TokenRules:
        """A tokenizer's rules, through its protocol (every tokenizer answers every call)."""
        lengths = tokenizer.char_lengths()
        values = [tokenizer.byte_value(i) for i in range(tokenizer.vocab_size)]
        byte_values = np.array([-1 if b is None else b for b in values], dtype=np.int16)
        pieces: list[str | bytes] | None = None
        if int(lengths.max(initial=0)) > 1:  # subword pieces: a seam worth healing
            pieces = [tokenizer.token_text(i) if b is None else bytes((b,)) for i, b in enumerate(values)]
        return cls(lengths, tokenizer.never_emit(), byte_values, pieces)

    # ------------------------------------------------------------------ masks

    def mask(self, state: SampleState, remaining: int) -> np.ndarray:
        """(V,) bool: the tokens allowed next with ``remaining`` characters left to write."""
        cut = min(max(remaining, 0), self.max_len)
        key = (state.need, state.lo, state.hi, cut, state.heal)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._build(state, cut)
        return found

    def _build(self, state: SampleState, cut: int) -> np.ndarray:
        lengths = self.lengths
        if state.heal:
            return self._heal_mask(state.heal, cut)
        if self.bytes is None:
            allowed = self.base.copy()
        elif state.need:
            b = self.bytes
            allowed = self.base & (b >= state.lo) & (b <= state.hi)
        else:
            b = self.bytes
            continuation = (b >= 0x80) & (b < 0xC0)
            bad_lead = (b == 0xC0) | (b == 0xC1) | (b >= 0xF5)
            allowed = self.base & ~continuation & ~bad_lead
        if cut < self.max_len:
            allowed &= lengths <= cut
        if not allowed.any():  # nothing short enough (cannot happen with byte fallback): any one
            allowed = self.base & (lengths <= max(cut, 1)) if cut else self.base.copy()
        return allowed

    def _heal_mask(self, heal: str, cut: int) -> np.ndarray:
        """Text pieces that spell a prefix of ``heal``, or all of it and then at most ``cut`` more."""
        allowed = np.zeros(len(self.lengths), dtype=bool)
        for i, piece in enumerate(self.pieces or ()):
            if isinstance(piece, str) and piece and self.base[i]:
                if heal.startswith(piece) or (piece.startswith(heal) and len(piece) - len(heal) <= cut):
                    allowed[i] = True
        return allowed

    # ------------------------------------------------------------------ bookkeeping

    def advance(self, state: SampleState, token: int, text: str) -> str:
        """Update ``state`` for ``token`` (which decoded to ``text``); returns the text to show."""
        if state.heal:  # healing pieces are whole text pieces (see _heal_mask)
            if text.startswith(state.heal):
                text, state.heal = text[len(state.heal) :], ""
            else:
                state.heal, text = state.heal[len(text) :], ""
            state.chars += len(text)
            return text
        state.chars += int(self.lengths[token])
        byte = int(self.bytes[token]) if self.bytes is not None else -1
        if byte < 0 or byte < 0x80:
            state.need = 0
        elif state.need:
            state.need, state.lo, state.hi = state.need - 1, *_FULL
        else:
            state.need, (state.lo, state.hi) = _LEADS.get(byte, (0, _FULL))
        return text

    @staticmethod
    def finished(state: SampleState, length: int) -> bool:
        return state.chars >= length and state.need == 0 and not state.heal

    def heal_prime(self, prime_ids: Sequence[int]) -> tuple[list[int], str]:
        """Back off the prime's last token when it is a text piece (subword tokenizers only):
        the model then regenerates that text in a tokenization of its own choosing."""
        ids = list(prime_ids)
        if self.pieces is None or len(ids) < 2:
            return ids, ""
        last = self.pieces[ids[-1]]
        if not isinstance(last, str) or not last or last == "\n":
            return ids, ""
        return ids[:-1], last
