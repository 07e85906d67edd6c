"""The recurrent model: output/hidden shapes for every cell and depth, tied weights, hidden helpers."""

from __future__ import annotations

import pytest
import torch

from charnn.config import ModelConfig
from charnn.errors import ConfigError
from charnn.model import CharRNN, detach_hidden, hidden_from_tensors, hidden_tensors

V, B, T = 37, 3, 11


def make(cell: str = "lstm", layers: int = 1, hidden: int = 16, embed: int = 8, **kw: object) -> CharRNN:
    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=V, cell=cell, layers=layers, hidden=hidden, embed=embed, **kw))


def _hidden_shapes(h: object) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in h] if isinstance(h, tuple) else [tuple(h.shape)]  # type: ignore[union-attr]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("tie", [False, True])
def test_forward_shapes(cell: str, layers: int, tie: bool) -> None:
    hidden = 16
    model = make(cell, layers, hidden=hidden, embed=hidden if tie else 8, tie_weights=tie)
    assert isinstance(model.rnn, {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell])
    assert model.rnn.num_layers == layers
    x = torch.randint(0, V, (B, T))
    logits, h = model(x)
    assert logits.shape == (B, T, V)
    assert logits.dtype == torch.float32
    expected = [(layers, B, hidden)] * (2 if cell == "lstm" else 1)
    assert _hidden_shapes(h) == expected
    assert _hidden_shapes(model.init_hidden(B)) == expected
    # Feeding the returned state back works and changes nothing about the shapes.
    logits2, h2 = model(x[:, :1], h)
    assert logits2.shape == (B, 1, V)
    assert _hidden_shapes(h2) == expected
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_tied_weights_share_storage(cell: str) -> None:
    model = make(cell, hidden=16, embed=16, tie_weights=True)
    assert model.head.weight is model.embed.weight
    untied = make(cell, hidden=16, embed=16)
    assert model.num_parameters() == untied.num_parameters() - V * 16
    # A gradient step on the head moves the embedding too.
    logits, _ = model(torch.randint(0, V, (2, 5)))
    logits.sum().backward()
    assert model.embed.weight.grad is not None


def test_tie_weights_needs_equal_sizes() -> None:
    with pytest.raises(ConfigError, match="tie-weights"):
        ModelConfig(vocab_size=V, hidden=16, embed=8, tie_weights=True)


def test_zero_hidden_equals_no_hidden() -> None:
    model = make("lstm", 2).eval()
    x = torch.randint(0, V, (B, T))
    a, _ = model(x)
    b, _ = model(x, model.init_hidden(B))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_carried_hidden_equals_full_sequence(cell: str) -> None:
    """Running in two chunks with the state carried gives the same logits as one pass (the TBPTT premise)."""
    model = make(cell, 2).eval()
    x = torch.randint(0, V, (B, T))
    full, _ = model(x)
    first, h = model(x[:, :5])
    second, _ = model(x[:, 5:], detach_hidden(h))
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, rtol=1e-5, atol=1e-5)


def test_lstm_forget_bias_and_batch_independence() -> None:
    model = make("lstm", 1, hidden=16)
    assert torch.all(model.rnn.bias_ih_l0[16:32] == 1.0)
    assert torch.all(model.rnn.bias_ih_l0[:16] == 0.0)
    model.eval()
    x = torch.randint(0, V, (B, T))
    batched, _ = model(x)
    single, _ = model(x[1:2])
    torch.testing.assert_close(batched[1:2], single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_hidden_tensors_roundtrip(cell: str) -> None:
    model = make(cell, 2)
    _, h = model(torch.randint(0, V, (B, T)))
    named = hidden_tensors(h)
    assert set(named) == ({"h", "c"} if cell == "lstm" else {"h"})
    back = hidden_from_tensors(cell, named)
    assert _hidden_shapes(back) == _hidden_shapes(h)
    detached = detach_hidden(h)
    assert all(not t.requires_grad for t in (detached if isinstance(detached, tuple) else (detached,)))


def test_dropout_only_in_training_mode() -> None:
    model = make("gru", 2, dropout=0.5)
    x = torch.randint(0, V, (B, T))
    model.eval()
    a, _ = model(x)
    b, _ = model(x)
    torch.testing.assert_close(a, b)
    model.train()
    torch.manual_seed(1)
    c, _ = model(x)
    assert not torch.allclose(a, c)
