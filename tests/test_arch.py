"""charnn.arch, the one description of the model, agrees with the real torch model for every cell
and shape: parameter names, shapes and count, gate order, and the state layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from charnn import arch
from charnn.checkpoint import model_tensors
from charnn.config import CELLS, ModelConfig
from charnn.model import CharRNN, hidden_from_tensors, hidden_tensors


def config_for(
    cell: str, layers: int, tie: bool, vocab: int = 11, hidden: int = 6, embed: int = 5
) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab,
        cell=cell,
        layers=layers,
        hidden=hidden,
        embed=hidden if tie else embed,
        tie_weights=tie,
    )


def test_the_options_offer_exactly_the_described_cells() -> None:
    assert CELLS == tuple(arch.CELLS)


@pytest.mark.parametrize("cell", tuple(arch.CELLS))
@pytest.mark.parametrize("layers,tie", [(1, False), (3, False), (2, True)])
def test_parameter_names_and_shapes_match_the_real_model(cell: str, layers: int, tie: bool) -> None:
    """The loader checks shapes without building a model; this table must be the model's."""
    config = config_for(cell, layers, tie)
    real = {k: tuple(v.shape) for k, v in model_tensors(CharRNN(config)).items()}
    assert arch.parameter_shapes(config) == real
    assert list(arch.parameter_shapes(config)) == list(real)  # state_dict order too


@settings(max_examples=25, deadline=None)
@given(
    cell=st.sampled_from(tuple(arch.CELLS)),
    layers=st.integers(1, 4),
    tie=st.booleans(),
    vocab=st.integers(1, 40),
    hidden=st.integers(1, 12),
    embed=st.integers(1, 12),
)
def test_parameter_count_equals_the_real_models(
    cell: str, layers: int, tie: bool, vocab: int, hidden: int, embed: int
) -> None:
    """The closed form (info, runs, load limits) = the sum over the shapes = torch's own count."""
    config = config_for(cell, layers, tie, vocab, hidden, embed)
    with torch.device("meta"):  # shapes only: no init, no memory
        model = CharRNN(config)
    count = arch.parameter_count(config)
    assert count == model.num_parameters()
    assert count == sum(int(np.prod(shape)) for shape in arch.parameter_shapes(config).values())


def test_parameter_count_is_closed_form_for_absurd_shapes() -> None:
    """A forged config's count costs no loop (checkpoint load limits use it before anything else)."""
    config = config_for("lstm", 10**15, False, vocab=10**6, hidden=10**4, embed=10)
    assert arch.parameter_count(config) > 10**23


def test_lstm_gate_order_is_torchs() -> None:
    """The forget gate's rows are where CharRNN's init puts its bias of 1, as arch says."""
    model = CharRNN(config_for("lstm", 2, False, hidden=8))
    rows = arch.CELLS["lstm"].gate_rows("f", 8)
    bias = model.rnn.bias_ih_l0.detach()
    assert torch.all(bias[rows] == 1) and int((bias == 1).sum()) == 8


@pytest.mark.parametrize("cell", tuple(arch.CELLS))
@pytest.mark.parametrize("layers", [1, 3])
def test_state_layout_round_trips_and_matches_the_blocks(cell: str, layers: int) -> None:
    config = config_for(cell, layers, False, hidden=4)
    parts = arch.state_parts(cell)
    assert parts == arch.PART_NAMES[: len(parts)]
    n = 3
    state = np.arange(n * arch.state_width(config), dtype=np.float32).reshape(n, -1)
    hidden = arch.state_to_hidden(config, state)
    assert [h.shape for h in hidden] == [arch.hidden_shape(config, n)] * len(parts)
    for p, part in enumerate(parts):
        for layer in range(layers):
            np.testing.assert_array_equal(hidden[p][layer], state[:, arch.block(config, part, layer)])
    np.testing.assert_array_equal(arch.hidden_to_state(config, hidden), state)
    assert arch.initial_state(config, n).shape == state.shape
    np.testing.assert_array_equal(arch.reorder_state(state, [2, 2, 0]), state[[2, 2, 0]])
    with pytest.raises(ValueError):
        arch.hidden_to_state(config, hidden + hidden)


@pytest.mark.parametrize("cell", tuple(arch.CELLS))
def test_torch_hidden_has_the_described_parts(cell: str) -> None:
    """CharRNN's hidden state and its checkpoint names follow arch's parts and shapes."""
    model = CharRNN(config_for(cell, 2, False))
    hidden = model.init_hidden(5)
    named = hidden_tensors(hidden)
    assert tuple(named) == arch.state_parts(cell)
    assert all(tuple(t.shape) == arch.hidden_shape(model.config, 5) for t in named.values())
    _, out = model(torch.zeros(5, 3, dtype=torch.long), hidden)
    assert tuple(hidden_tensors(out)) == arch.state_parts(cell)
    back = hidden_from_tensors(cell, named)
    assert type(back) is type(hidden)
