"""FastStepper must reproduce the nn modules' logits exactly (to float32 rounding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from charnn.config import ModelConfig
from charnn.model import CharRNN
from charnn.stepper import FastStepper

VOCAB = 11
CELLS = ("lstm", "gru", "rnn")


def make_model(cell: str, layers: int, **kwargs: object) -> CharRNN:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=VOCAB, cell=cell, layers=layers, **{"hidden": 16, "embed": 8, **kwargs})
    model = CharRNN(config)
    with torch.no_grad():
        # Default init zeroes every bias; perturb all weights so bias handling (GRU's b_hn!) is exercised.
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def reference_logits(model: CharRNN, ids: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits, _ = model(ids)  # (N, T, V)
    model.train(was_training)
    return logits


def run_steps(stepper: FastStepper, ids: torch.Tensor, state: tuple) -> tuple[list[torch.Tensor], tuple]:
    outs = []
    with torch.inference_mode():
        for t in range(ids.shape[1]):
            logits, state = stepper.step(ids[:, t], state)
            outs.append(logits)
    return outs, state


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_step_matches_forward(cell: str, layers: int, batch: int) -> None:
    model = make_model(cell, layers)
    stepper = FastStepper(model)
    ids = torch.randint(0, VOCAB, (batch, 12))
    ref = reference_logits(model, ids)
    outs, _ = run_steps(stepper, ids, stepper.initial_state(batch))
    for t, logits in enumerate(outs):
        assert logits.shape == (batch, VOCAB)
        torch.testing.assert_close(logits, ref[:, t], atol=1e-5, rtol=0)


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_prime_then_step_matches_forward(cell: str, layers: int) -> None:
    model = make_model(cell, layers)
    stepper = FastStepper(model)
    ids = torch.randint(0, VOCAB, (2, 15))
    ref = reference_logits(model, ids)
    logits, state = stepper.prime(ids[:, :4])
    torch.testing.assert_close(logits, ref[:, 3], atol=1e-5, rtol=0)
    # A second prime continues from a stepper state.
    logits, state = stepper.prime(ids[:, 4:7], state)
    torch.testing.assert_close(logits, ref[:, 6], atol=1e-5, rtol=0)
    outs, _ = run_steps(stepper, ids[:, 7:], state)
    for t, logits in enumerate(outs, start=7):
        torch.testing.assert_close(logits, ref[:, t], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_and_tied_weights_in_train_mode(cell: str) -> None:
    model = make_model(cell, 2, hidden=12, embed=12, dropout=0.5, tie_weights=True)
    model.train()
    stepper = FastStepper(model)
    assert model.training  # the stepper must not flip the caller's mode
    ids = torch.randint(0, VOCAB, (2, 10))
    ref = reference_logits(model, ids)
    logits, state = stepper.prime(ids[:, :3])
    torch.testing.assert_close(logits, ref[:, 2], atol=1e-5, rtol=0)
    outs, _ = run_steps(stepper, ids[:, 3:], state)
    for t, logits in enumerate(outs, start=3):
        torch.testing.assert_close(logits, ref[:, t], atol=1e-5, rtol=0)
    assert model.training


@pytest.mark.parametrize("cell", CELLS)
def test_reorder_selects_and_duplicates_rows(cell: str) -> None:
    model = make_model(cell, 2)
    stepper = FastStepper(model)
    ids = torch.randint(0, VOCAB, (3, 6))
    _, state = stepper.prime(ids)
    index = torch.tensor([2, 0, 2, 2])
    moved = stepper.reorder(state, index)
    nxt = torch.tensor([1, 2, 3])
    with torch.inference_mode():
        logits, _ = stepper.step(nxt, state)
        moved_logits, _ = stepper.step(nxt[index], moved)
    torch.testing.assert_close(moved_logits, logits[index])


@pytest.mark.parametrize("cell", CELLS)
def test_state_is_not_modified_in_place_and_numpy_ids_give_numpy_logits(cell: str) -> None:
    stepper = FastStepper(make_model(cell, 2))
    for rows in (1, 2):
        _, state = stepper.prime(torch.randint(0, VOCAB, (rows, 5)))
        before = state.copy()
        with torch.inference_mode():
            logits, _ = stepper.step(torch.arange(1, rows + 1), state)
        assert np.array_equal(before, state)
        as_numpy, _ = stepper.step(np.arange(1, rows + 1), state)
        assert isinstance(as_numpy, np.ndarray) and np.array_equal(as_numpy, logits.numpy())


def test_stepper_is_a_snapshot() -> None:
    model = make_model("gru", 1)
    stepper = FastStepper(model)
    ids = torch.randint(0, VOCAB, (1, 5))
    before, _ = stepper.prime(ids)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    after, _ = stepper.prime(ids)
    assert torch.equal(before, after)
    assert stepper.vocab_size == VOCAB
