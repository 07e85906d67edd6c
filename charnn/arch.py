"""The model's architecture, described once and without torch: what every implementation reads.

charnn's network is embedding -> ``layers`` recurrent layers -> linear head. It is implemented
twice, by :class:`charnn.model.CharRNN` (torch's fused modules, for training) and by
:class:`charnn.stepper.FastStepper` (numpy, for sampling without torch). Everything else that
must know its structure reads it from here: the cells, their gate blocks, the names and shapes of
the stored parameters (checkpoint validation), the parameter count (``info``, ``runs``, load
limits), and the layout of the recurrent state in its two forms.

The recurrent state has two forms:

* **hidden** (torch, and checkpoints): one ``(L, N, H)`` array per state part, ``h`` (and ``c``
  for LSTM), as ``nn.LSTM/GRU/RNN`` take it; checkpoints store them as ``hidden.h``/``hidden.c``.
* **state** (the :class:`~charnn.stepper.Stepper` protocol): one float32 ``(N, S)`` array, a
  row per stream, so selecting, dropping or duplicating streams (beam search) is one row index::

        part h (every cell)                     part c (LSTM only)
        +---------+---------+-----+-----------+---------+-----+-----------+
  row n | h_0     | h_1     | ... | h_{L-1}   | c_0     | ... | c_{L-1}   |
        +---------+---------+-----+-----------+---------+-----+-----------+
         0        H         2H    (L-1)H      LH        (L+1)H            S = P*L*H

  Block ``(p, l)`` is ``state[:, (p*L + l)*H : (p*L + l + 1)*H] == hidden[p][l]`` (P parts).
  The h blocks of consecutive layers are adjacent, so ``[h_{l-1}, h_l]`` (layer l's input and
  own state) is one contiguous slice: the numpy stepper multiplies it by ``[W_ih | W_hh]`` at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # numpy is imported where it is used: config (and so `charnn --help`) reads CELLS
    import numpy as np


@dataclass(frozen=True)
class Cell:
    """One recurrent cell as torch.nn lays out its weights."""

    name: str
    gates: tuple[str, ...]  # gate blocks of W_ih / W_hh / biases, each H rows, in torch's order
    sigmoid: tuple[str, ...]  # the gates squashed by a sigmoid (the others by tanh)
    parts: tuple[str, ...]  # the recurrent state's parts: ("h",) or ("h", "c")
    doc: str

    @property
    def gate_count(self) -> int:
        return len(self.gates)

    def gate_rows(self, gate: str, hidden: int) -> slice:
        """Rows of gate ``gate`` in a (G*H, ...) weight or (G*H,) bias."""
        k = self.gates.index(gate)
        return slice(k * hidden, (k + 1) * hidden)


CELLS: dict[str, Cell] = {
    c.name: c
    for c in (
        # i, f, o: input, forget, output gates; g: the candidate cell state.
        Cell("lstm", ("i", "f", "g", "o"), ("i", "f", "o"), ("h", "c"), "long short-term memory"),
        # r, z: reset and update gates; n: the candidate state (r scales W_hn h + b_hn).
        Cell("gru", ("r", "z", "n"), ("r", "z"), ("h",), "gated recurrent unit"),
        Cell("rnn", ("h",), (), ("h",), "Elman RNN, h' = tanh(W_ih x + b_ih + W_hh h + b_hh)"),
    )
}

PART_NAMES = ("h", "c")  # every cell's state parts are a prefix of these (h first)

EMBED = "embed.weight"  # (V, E)
HEAD_WEIGHT = "head.weight"  # (V, H); absent from checkpoints when tied to the embedding
HEAD_BIAS = "head.bias"  # (V,)


class ModelShape(Protocol):
    """The fields of :class:`~charnn.config.ModelConfig` that fix the architecture."""

    @property
    def vocab_size(self) -> int: ...
    @property
    def cell(self) -> str: ...
    @property
    def layers(self) -> int: ...
    @property
    def hidden(self) -> int: ...
    @property
    def embed(self) -> int: ...
    @property
    def tie_weights(self) -> bool: ...


@dataclass(frozen=True)
class LayerNames:
    """The four stored tensors of recurrent layer ``l`` (torch.nn's names)."""

    w_ih: str  # (G*H, E) for layer 0, (G*H, H) above
    w_hh: str  # (G*H, H)
    b_ih: str  # (G*H,)
    b_hh: str  # (G*H,)


TENSORS_PER_LAYER = 4  # the fields of LayerNames
PER_TOKEN = (EMBED, HEAD_WEIGHT, HEAD_BIAS)  # tensors with one row (or entry) per token id


def layer_names(layer: int) -> LayerNames:
    return LayerNames(*(f"rnn.{kind}_l{layer}" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))


def parameter_shapes(config: ModelShape) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the stored tensors (as a checkpoint holds them: a tied head is not
    stored), in ``state_dict`` order, computed without building anything."""
    gh = CELLS[config.cell].gate_count * config.hidden
    v, e, h = config.vocab_size, config.embed, config.hidden
    shapes: dict[str, tuple[int, ...]] = {EMBED: (v, e)}
    for layer in range(config.layers):
        names = layer_names(layer)
        shapes[names.w_ih] = (gh, e if layer == 0 else h)
        shapes[names.w_hh] = (gh, h)
        shapes[names.b_ih] = (gh,)
        shapes[names.b_hh] = (gh,)
    if not config.tie_weights:
        shapes[HEAD_WEIGHT] = (v, h)
    shapes[HEAD_BIAS] = (v,)
    return shapes


def parameter_count(config: ModelShape) -> int:
    """The number of parameters, equal to the sum over :func:`parameter_shapes` (a test checks
    both against torch), in closed form: a forged layer count costs no loop."""
    gh, h, v, e = (
        CELLS[config.cell].gate_count * config.hidden,
        config.hidden,
        config.vocab_size,
        config.embed,
    )
    recurrent = gh * (e + h + 2) + (config.layers - 1) * gh * (2 * h + 2)
    return int(v * e + recurrent + (0 if config.tie_weights else v * h) + v)


# ---------------------------------------------------------------------------- the recurrent state


def state_parts(cell: str) -> tuple[str, ...]:
    """Names of the state's parts: ``("h", "c")`` for LSTM, ``("h",)`` otherwise."""
    return CELLS[cell].parts


def hidden_shape(config: ModelShape, batch: int) -> tuple[int, int, int]:
    """Shape of each part of the hidden state: (L, N, H)."""
    return (config.layers, batch, config.hidden)


def state_width(config: ModelShape) -> int:
    """S, the width of a state row: P parts x L layers x H."""
    return len(state_parts(config.cell)) * config.layers * config.hidden


def block(config: ModelShape, part: str, layer: int) -> slice:
    """Columns of the state holding part ``part`` of layer ``layer`` (see the diagram above)."""
    p = state_parts(config.cell).index(part)
    start = (p * config.layers + layer) * config.hidden
    return slice(start, start + config.hidden)


def initial_state(config: ModelShape, batch: int) -> np.ndarray:
    """The zero state of ``batch`` streams: (N, S) float32."""
    import numpy as np

    return np.zeros((batch, state_width(config)), dtype=np.float32)


def reorder_state(state: np.ndarray, index: object) -> np.ndarray:
    """Rows ``index`` of a state (a new array): selects, drops or duplicates streams."""
    import numpy as np

    return state[np.asarray(index, dtype=np.intp)]


def state_to_hidden(config: ModelShape, state: np.ndarray) -> tuple[np.ndarray, ...]:
    """(N, S) -> one contiguous (L, N, H) array per part, in :func:`state_parts` order."""
    import numpy as np

    n, parts = state.shape[0], len(state_parts(config.cell))
    blocks = np.ascontiguousarray(state, dtype=np.float32).reshape(n, parts * config.layers, config.hidden)
    blocks = blocks.transpose(1, 0, 2)  # (P*L, N, H)
    return tuple(
        np.ascontiguousarray(blocks[p * config.layers : (p + 1) * config.layers]) for p in range(parts)
    )


def hidden_to_state(config: ModelShape, hidden: Sequence[np.ndarray]) -> np.ndarray:
    """One (L, N, H) array per part -> the (N, S) float32 state."""
    import numpy as np

    if len(hidden) != len(state_parts(config.cell)):
        raise ValueError(
            f"a {config.cell} state has {len(state_parts(config.cell))} parts, got {len(hidden)}"
        )
    blocks = np.concatenate([np.asarray(h, dtype=np.float32) for h in hidden], axis=0)  # (P*L, N, H)
    return np.ascontiguousarray(blocks.transpose(1, 0, 2).reshape(blocks.shape[1], -1))
