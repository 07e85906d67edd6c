"""Property tests: the char tokenizer round-trips any Unicode text (lone surrogates included),
and the checkpoint loader, fed damaged or forged copies of a real checkpoint, either loads
exactly the original model or raises CheckpointError - never anything else."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from charnn import checkpoint as ck
from charnn.checkpoint import CheckpointError, load_checkpoint
from charnn.errors import DataError
from charnn.tokenizer import CharTokenizer, codepoints, tokenizer_from_dict

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every code point, surrogates (category Cs) included.
ANY_TEXT = st.text(st.characters(exclude_categories=()), min_size=1)


@FUZZ
@given(text=ANY_TEXT)
@example(text="\ud800 lone \udfff surrogates, \U0010ffff, \x00 and \r\n")
def test_char_tokenizer_round_trips_any_text(text: str) -> None:
    tok = CharTokenizer.from_codepoints(codepoints(text))
    ids = tok.encode(text)
    assert len(ids) == len(text) and int(ids.max()) < tok.vocab_size
    assert tok.decode(ids) == text


@FUZZ
@given(text=st.text(st.characters(exclude_categories=("Cs",)), min_size=1))
def test_char_vocabulary_survives_checkpoint_json(text: str) -> None:
    tok = CharTokenizer.from_codepoints(codepoints(text))
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again.to_dict() == tok.to_dict() and again.decode(again.encode(text)) == text


def test_char_vocabulary_with_adjacent_lone_surrogates_survives_checkpoint_json() -> None:
    tok = CharTokenizer(["a", "\ud800", "\udfff"])
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again.to_dict() == tok.to_dict()


@FUZZ
@given(vocab_text=ANY_TEXT, text=ANY_TEXT)
def test_char_tokenizer_refuses_unknown_characters(vocab_text: str, text: str) -> None:
    tok = CharTokenizer.from_codepoints(codepoints(vocab_text))
    try:
        ids = tok.encode(text)
    except DataError as exc:
        assert set(text) - set(vocab_text) and "not in the model's vocabulary" in str(exc)
    else:
        assert set(text) <= set(vocab_text) and tok.decode(ids) == text


# ---------------------------------------------------------------------------- checkpoint loader


@pytest.fixture(scope="module")
def original(trained_run: Path) -> tuple[dict[str, bytes], ck.Checkpoint]:
    """The bytes of a real tiny checkpoint's files, and the checkpoint as loaded intact."""
    best = trained_run / "best"
    return {p.name: p.read_bytes() for p in best.iterdir()}, load_checkpoint(best)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory reused by every example (function-scoped tmp_path does not suit @given)."""
    return tmp_path_factory.mktemp("fuzz")


def _write(directory: Path, files: dict[str, bytes]) -> Path:
    target = Path(tempfile.mkdtemp(dir=directory))
    for name, data in files.items():
        (target / name).write_bytes(data)
    return target


def _damage(data: bytes, draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return data[: draw(st.integers(0, len(data) - 1))]
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        out[draw(st.integers(0, len(out) - 1))] ^= 1 << draw(st.integers(0, 7))
    return bytes(out)


@FUZZ
@given(data=st.data(), name=st.sampled_from([ck.META, ck.MODEL_FILE]))
def test_damaged_checkpoint_loads_identically_or_raises_checkpoint_error(
    original, scratch, data, name
) -> None:
    files, intact = original
    damaged = _damage(files[name], data.draw)
    directory = _write(scratch, {**files, name: damaged})
    try:
        ckpt = load_checkpoint(directory)
    except CheckpointError:
        return
    finally:
        shutil.rmtree(directory)
    # Loading succeeded, so it must be the original exactly (bits that changed nothing, if any).
    assert ckpt.config == intact.config
    assert ckpt.tokenizer.to_dict() == intact.tokenizer.to_dict()
    assert ckpt.weights.keys() == intact.weights.keys()
    assert all(np.array_equal(ckpt.weights[k], intact.weights[k]) for k in intact.weights)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
FORGEABLE = [
    ("format",),
    ("version",),
    ("model",),
    ("model", "vocab_size"),
    ("model", "cell"),
    ("model", "layers"),
    ("model", "hidden"),
    ("model", "embed"),
    ("model", "dropout"),
    ("model", "tie_weights"),
    ("model", "x"),
    ("tokenizer",),
    ("tokenizer", "kind"),
    ("tokenizer", "chars"),
    ("files",),
    ("files", ck.MODEL_FILE),
]


@FUZZ
@given(where=st.sampled_from(FORGEABLE), value=JSON_VALUES)
# Forgeries that once got past the loader: a huge model (allocation), a list where a mapping belongs.
@example(where=("model", "hidden"), value=10**7)
@example(where=("model", "layers"), value=2**60)
@example(where=("model",), value=["cell"])
@example(where=("files",), value=[1])
@example(where=("model", "hidden"), value=True)
@example(where=("model", "dropout"), value=True)
def test_forged_metadata_with_valid_checksum_never_crashes_the_loader(
    original, scratch, where, value
) -> None:
    """A checksum only proves the metadata is intact, not that it is sane: a hostile or foreign
    meta.json (re-checksummed) must still only ever give a usable model or a CheckpointError."""
    files, _ = original
    meta = json.loads(files[ck.META])
    node = meta
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    meta["checksum"] = ck._meta_checksum(meta)
    directory = _write(scratch, {**files, ck.META: json.dumps(meta).encode()})
    try:
        ckpt = load_checkpoint(directory)
        model = ckpt.build_model()  # whatever loads must also build
        # (a tied head is one parameter with the embedding, so this holds either way)
        assert model.num_parameters() == sum(t.size for t in ckpt.weights.values())
    except CheckpointError:
        pass
    finally:
        shutil.rmtree(directory)
