"""FastStepper (numpy) must reproduce the nn modules' logits exactly (to float32 rounding): single
steps, primes (in one window or several), and the state carried between them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import charnn.stepper
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


def run_steps(
    stepper: FastStepper, ids: torch.Tensor, state: np.ndarray
) -> tuple[list[torch.Tensor], np.ndarray]:
    outs = []
    for t in range(ids.shape[1]):
        logits, state = stepper.step(ids[:, t].numpy(), state)
        outs.append(torch.from_numpy(logits))
    return outs, state


def prime(
    stepper: FastStepper, ids: torch.Tensor, state: np.ndarray | None = None
) -> tuple[torch.Tensor, np.ndarray]:
    logits, state = stepper.prime(ids.numpy(), state)
    return torch.from_numpy(logits), state


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_step_matches_forward(cell: str, layers: int, batch: int) -> None:
    model = make_model(cell, layers)
    stepper = FastStepper.from_model(model)
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
    stepper = FastStepper.from_model(model)
    ids = torch.randint(0, VOCAB, (2, 15))
    ref = reference_logits(model, ids)
    logits, state = prime(stepper, ids[:, :4])
    torch.testing.assert_close(logits, ref[:, 3], atol=1e-5, rtol=0)
    # A second prime continues from a stepper state.
    logits, state = prime(stepper, ids[:, 4:7], state)
    torch.testing.assert_close(logits, ref[:, 6], atol=1e-5, rtol=0)
    outs, _ = run_steps(stepper, ids[:, 7:], state)
    for t, logits in enumerate(outs, start=7):
        torch.testing.assert_close(logits, ref[:, t], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_and_tied_weights_in_train_mode(cell: str) -> None:
    model = make_model(cell, 2, hidden=12, embed=12, dropout=0.5, tie_weights=True)
    model.train()
    stepper = FastStepper.from_model(model)
    assert model.training  # the stepper must not flip the caller's mode
    ids = torch.randint(0, VOCAB, (2, 10))
    ref = reference_logits(model, ids)
    logits, state = prime(stepper, ids[:, :3])
    torch.testing.assert_close(logits, ref[:, 2], atol=1e-5, rtol=0)
    outs, _ = run_steps(stepper, ids[:, 3:], state)
    for t, logits in enumerate(outs, start=3):
        torch.testing.assert_close(logits, ref[:, t], atol=1e-5, rtol=0)
    assert model.training


@pytest.mark.parametrize("cell", CELLS)
def test_reorder_selects_and_duplicates_rows(cell: str) -> None:
    model = make_model(cell, 2)
    stepper = FastStepper.from_model(model)
    ids = torch.randint(0, VOCAB, (3, 6))
    _, state = prime(stepper, ids)
    index = torch.tensor([2, 0, 2, 2])
    moved = stepper.reorder(state, index)
    nxt = np.array([1, 2, 3])
    logits, _ = stepper.step(nxt, state)
    moved_logits, _ = stepper.step(nxt[index.numpy()], moved)
    np.testing.assert_array_equal(moved_logits, logits[index.numpy()])


@pytest.mark.parametrize("cell", CELLS)
def test_state_is_not_modified_in_place(cell: str) -> None:
    stepper = FastStepper.from_model(make_model(cell, 2))
    for rows in (1, 2):
        _, state = prime(stepper, torch.randint(0, VOCAB, (rows, 5)))
        before = state.copy()
        logits, _ = stepper.step(np.arange(1, rows + 1), state)
        assert np.array_equal(before, state)
        again, _ = stepper.prime(np.arange(1, rows + 1)[:, None], state)
        assert np.array_equal(before, state)
        np.testing.assert_allclose(again, logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("window", [1, 3, 64])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_prime_in_windows_matches_forward(
    cell: str, layers: int, window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prime longer than the window runs window by window with the state carried."""
    monkeypatch.setattr(charnn.stepper, "PRIME_WINDOW", window)
    model = make_model(cell, layers)
    stepper = FastStepper.from_model(model)
    ids = torch.randint(0, VOCAB, (2, 40))
    ref = reference_logits(model, ids)
    logits, state = prime(stepper, ids[:, :37])
    torch.testing.assert_close(logits, ref[:, 36], atol=1e-5, rtol=0)
    outs, _ = run_steps(stepper, ids[:, 37:], state)
    for t, logits in enumerate(outs, start=37):
        torch.testing.assert_close(logits, ref[:, t], atol=1e-5, rtol=0)


def test_stepper_built_from_checkpoint_arrays_equals_the_model(tmp_path) -> None:
    """The sampling path builds the stepper from the checkpoint's numpy arrays, without torch."""
    from charnn.checkpoint import load_checkpoint, save_checkpoint
    from charnn.tokenizer import CharTokenizer

    model = make_model("lstm", 2, hidden=12, embed=12, tie_weights=True)
    save_checkpoint(tmp_path / "ck", model, CharTokenizer(list("abcdefghijk")))
    ckpt = load_checkpoint(tmp_path / "ck")
    ids = torch.randint(0, VOCAB, (1, 9))
    logits, _ = FastStepper(ckpt.config, ckpt.weights).prime(ids.numpy())
    expected = reference_logits(model, ids)[:, -1]
    torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(reference_logits(ckpt.build_model(), ids), reference_logits(model, ids))


def test_stepper_is_a_snapshot() -> None:
    model = make_model("gru", 1)
    stepper = FastStepper.from_model(model)
    ids = torch.randint(0, VOCAB, (1, 5))
    before, _ = prime(stepper, ids)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    after, _ = prime(stepper, ids)
    assert torch.equal(before, after)
    assert stepper.vocab_size == VOCAB


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_torch_prime_for_huge_primes_agrees_with_numpy(
    cell: str, layers: int, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The torch prime (used past TORCH_PRIME_MIN tokens) gives the numpy prime's logits and state,
    across its windows and from a carried state; steps continue identically from either."""
    import charnn.torch_prime
    from charnn.checkpoint import load_checkpoint, save_checkpoint
    from charnn.tokenizer import CharTokenizer
    from charnn.torch_prime import TorchPrimedStepper

    monkeypatch.setattr(charnn.torch_prime, "_WINDOW", 7)
    model = make_model(cell, layers)
    save_checkpoint(tmp_path / "ck", model, CharTokenizer(list("abcdefghijk")))
    ckpt = load_checkpoint(tmp_path / "ck")
    fast = FastStepper(ckpt.config, ckpt.weights)
    big = TorchPrimedStepper(fast, ckpt)
    ids = np.random.default_rng(1).integers(0, VOCAB, (2, 30))
    ref = reference_logits(model, torch.from_numpy(ids))
    a_logits, a_state = fast.prime(ids[:, :20])
    b_logits, b_state = big.prime(ids[:, :20])
    np.testing.assert_allclose(b_logits, ref[:, 19].numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(b_logits, a_logits, atol=1e-5, rtol=0)
    np.testing.assert_allclose(b_state, a_state, atol=1e-5, rtol=0)
    b_logits, b_state = big.prime(ids[:, 20:29], b_state)
    np.testing.assert_allclose(b_logits, ref[:, 28].numpy(), atol=1e-5, rtol=0)
    logits, _ = big.step(ids[:, 29], b_state)
    np.testing.assert_allclose(logits, ref[:, 29].numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_sample_json_logprob_equals_the_torch_model(cell: str, layers: int, tmp_path, cli_inprocess) -> None:
    """End to end: `charnn sample --json` (numpy prime, steps and draws) reports the torch model's
    log-probability of its text given the prime, to 1e-5."""
    import json

    from charnn.checkpoint import save_checkpoint
    from charnn.tokenizer import CharTokenizer

    model = make_model(cell, layers)
    tokenizer = CharTokenizer(list("abcdefghijk"))
    save_checkpoint(tmp_path / "ck", model, tokenizer)
    res = cli_inprocess(
        "sample",
        "-c",
        tmp_path / "ck",
        "--prime",
        "badge",
        "--length",
        "30",
        "--seed",
        "3",
        "--top-k",
        "6",
        "-k",
        "2",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    for row in map(json.loads, res.stdout.splitlines()):
        seq = torch.from_numpy(tokenizer.encode("badge" + row["text"]).astype(np.int64))[None]
        logits = reference_logits(model, seq[:, :-1]).double()
        logp = torch.log_softmax(logits, dim=-1)[0, 4:]  # the positions that predict the text
        expected = logp.gather(1, seq[0, 5:, None]).sum().item()
        assert row["logprob"] == pytest.approx(expected, abs=1e-5)
