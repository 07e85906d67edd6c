"""Fine-tuning: a new run that starts from another run's trained weights (``--init-from``).

The new run takes the parent's model shape and tokenizer, and everything else fresh: its
own optimizer, schedule, length, corpus and run directory. With the character tokenizer the
characters of the new text that the parent never saw are appended to the vocabulary; their
embedding and output rows start as a fresh model's would, while every known character keeps
its id and its rows bit for bit. A SentencePiece tokenizer is kept as it is: text it has no
pieces for is encoded through its byte fallback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from charnn.arch import PER_TOKEN
from charnn.checkpoint import MODEL_FILE, Checkpoint
from charnn.checkpoint_meta import Lineage
from charnn.config import ModelConfig, TokenizerConfig
from charnn.errors import ConfigError
from charnn.tokenizer import Tokenizer

if TYPE_CHECKING:  # torch only to copy weights: planning a fine-tuned run (charnn.run_plan) does not need it
    from charnn.model import CharRNN

# Model options that may differ from the parent's: they change how the weights are trained,
# not their shape.
ADJUSTABLE = ("dropout", "weight_drop")


def child_model_config(parent: Checkpoint, given: dict[str, Any], vocab_size: int) -> ModelConfig:
    """The parent's model shape with the grown vocabulary; contradicting options are refused."""
    saved = parent.config
    clashes = [
        f"--{k.replace('_', '-')} {v} (checkpoint has {getattr(saved, k)})"
        for k, v in given.items()
        if k not in ADJUSTABLE and v != getattr(saved, k)
    ]
    if clashes:
        raise ConfigError(
            "--init-from takes the model's shape from the checkpoint; these options contradict it: "
            + "; ".join(clashes)
        )
    adjusted = {k: v for k, v in given.items() if k in ADJUSTABLE}
    return saved.replace(vocab_size=vocab_size, **adjusted)


def check_tokenizer_options(parent: Checkpoint, given: dict[str, Any]) -> None:
    """The tokenizer comes from the checkpoint: ``--tokenizer``/``--vocab-size`` may only agree with it."""
    kind = parent.tokenizer.kind
    # "sentencepiece" is the old name of unigram; checkpoints store the new one.
    if "kind" in given and TokenizerConfig(kind=given["kind"]).kind != kind:
        raise ConfigError(
            f"--init-from keeps the checkpoint's tokenizer: --tokenizer {given['kind']} "
            f"contradicts it ({kind})"
        )
    size = given.get("vocab_size")
    if size is not None and (kind == "char" or size != parent.tokenizer.vocab_size):
        raise ConfigError(
            f"--init-from keeps the checkpoint's tokenizer ({kind}, {parent.tokenizer.vocab_size} tokens): "
            "drop --vocab-size"
        )


def adopt_weights(model: CharRNN, parent: Checkpoint) -> None:
    """Copy the parent's weights into ``model`` (same shape, vocabulary at least as large).
    Rows of tokens beyond the parent's vocabulary keep the fresh initialisation ``model`` has."""
    import torch

    known = parent.config.vocab_size
    params = dict(model.named_parameters())  # a tied head.weight is the embedding: listed once
    with torch.no_grad():
        for name, tensor in parent.torch_weights().items():
            target = params[name]
            if name in PER_TOKEN:  # rows of tokens the parent knew are copied, new rows stay fresh
                target[:known].copy_(tensor)  # (V_parent, ...) of (V, ...)
            else:
                target.copy_(tensor)


def lineage(parent: Checkpoint) -> Lineage:
    """What the child's metadata records about where its weights came from."""
    corpus = parent.meta.corpus
    return Lineage(
        path=str(parent.path.resolve()),
        step=parent.step,
        model_sha256=parent.meta.files.get(MODEL_FILE),
        corpus_sha256=corpus.sha256 if corpus is not None else None,
        vocab_size=parent.config.vocab_size,
    )


def describe_growth(parent: Tokenizer, child: Tokenizer, ids: np.ndarray) -> str | None:
    """One line for stderr about what the new text adds to (or needs of) the vocabulary."""
    if child.kind == "char":
        added = child.vocab_size - parent.vocab_size
        if not added:
            return None
        shown = "".join(child.token_text(i) for i in range(parent.vocab_size, child.vocab_size))
        more = "" if added <= 20 else " ..."
        return (
            f"--init-from: {added} new character(s) added to the vocabulary with fresh embedding and "
            f"output rows: {shown[:20]!r}{more}"
        )
    byte_ids = [i for i in range(child.vocab_size) if child.byte_value(i) is not None]
    fallback = int(np.isin(ids, byte_ids).sum()) if byte_ids else 0
    if not fallback:
        return None
    return (
        f"--init-from: {fallback:,} token(s) of the new text are byte-fallback pieces "
        "(characters the SentencePiece vocabulary has no piece for)"
    )
