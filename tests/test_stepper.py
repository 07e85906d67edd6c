"""Both implementations of the Stepper protocol, FastStepper (numpy) and TorchStepper (torch's fused
modules), must reproduce the nn modules' logits to float32 rounding (ATOL): single steps, primes (in
one window or several), forward, target log-probabilities and the state carried between them, for
every cell charnn.arch describes, 1-3 layers and batches of 1 and 3. A state from one continues in
the other (the layout is arch's)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import charnn.stepper
import charnn.torch_stepper
from charnn import arch
from charnn.config import ModelConfig
from charnn.model import CharRNN
from charnn.stepper import FastStepper, Stepper
from charnn.torch_stepper import TorchStepper

VOCAB = 11
CELLS = tuple(arch.CELLS)
ATOL = 1e-5  # float32 rounding of the two engines' different orders of summation
IMPLS = ("numpy", "torch")


def make_model(cell: str, layers: int, **kwargs: object) -> CharRNN:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=VOCAB, cell=cell, layers=layers, **{"hidden": 16, "embed": 8, **kwargs})
    model = CharRNN(config)
    with torch.no_grad():
        # Default init zeroes every bias; perturb all weights so bias handling (GRU's b_hn!) is exercised.
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def make_stepper(impl: str, model: CharRNN) -> Stepper:
    """A stepper over the model's weights; the torch one runs on a copy, so later changes to
    ``model`` cannot reach it (as FastStepper's snapshot)."""
    if impl == "numpy":
        return FastStepper.from_model(model)
    copy = CharRNN(model.config)
    copy.load_state_dict(model.state_dict())
    copy.train(model.training)
    return TorchStepper(copy)


def reference_logits(model: CharRNN, ids: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits, _ = model(ids)  # (N, T, V)
    model.train(was_training)
    return logits


def run_steps(
    stepper: Stepper, ids: torch.Tensor, state: np.ndarray
) -> tuple[list[torch.Tensor], np.ndarray]:
    outs = []
    for t in range(ids.shape[1]):
        logits, state = stepper.step(ids[:, t].numpy(), state)
        outs.append(torch.from_numpy(logits))
    return outs, state


def prime(
    stepper: Stepper, ids: torch.Tensor, state: np.ndarray | None = None
) -> tuple[torch.Tensor, np.ndarray]:
    logits, state = stepper.prime(ids.numpy(), state)
    return torch.from_numpy(logits), state


def close(a: Any, b: Any) -> None:
    torch.testing.assert_close(
        torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b)), atol=ATOL, rtol=0
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_step_forward_and_logprobs_match_the_model(cell: str, layers: int, batch: int, impl: str) -> None:
    model = make_model(cell, layers)
    stepper = make_stepper(impl, model)
    ids = torch.randint(0, VOCAB, (batch, 12))
    ref = reference_logits(model, ids)
    outs, state = run_steps(stepper, ids, stepper.initial_state(batch))
    for t, logits in enumerate(outs):
        assert logits.shape == (batch, VOCAB) and logits.dtype == torch.float32
        close(logits, ref[:, t])
    logits, forward_state = stepper.forward(ids.numpy())
    assert logits.shape == (batch, 12, VOCAB)
    close(logits, ref)
    close(forward_state, state)
    targets = np.roll(ids.numpy(), -1, axis=1)
    logp, _ = stepper.target_logprobs(ids.numpy()[:, :8], targets[:, :8])
    more, _ = stepper.target_logprobs(ids.numpy()[:, 8:], targets[:, 8:], _)
    expected = torch.log_softmax(ref.double(), -1).gather(2, torch.from_numpy(targets)[..., None])[..., 0]
    assert logp.dtype == np.float64
    close(np.concatenate([logp, more], axis=1), expected)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_prime_then_step_matches_forward(cell: str, layers: int, impl: str) -> None:
    model = make_model(cell, layers)
    stepper = make_stepper(impl, model)
    ids = torch.randint(0, VOCAB, (2, 15))
    ref = reference_logits(model, ids)
    logits, state = prime(stepper, ids[:, :4])
    close(logits, ref[:, 3])
    # A second prime continues from a stepper state.
    logits, state = prime(stepper, ids[:, 4:7], state)
    close(logits, ref[:, 6])
    outs, _ = run_steps(stepper, ids[:, 7:], state)
    for t, logits in enumerate(outs, start=7):
        close(logits, ref[:, t])


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_a_state_continues_in_the_other_implementation(cell: str, layers: int) -> None:
    """The state layout is arch's, not an engine's: prime in one, step in the other."""
    model = make_model(cell, layers)
    fast, slow = make_stepper("numpy", model), make_stepper("torch", model)
    ids = torch.randint(0, VOCAB, (3, 10))
    ref = reference_logits(model, ids)
    for first, second in ((fast, slow), (slow, fast)):
        _, state = prime(first, ids[:, :6])
        assert state.shape == (3, arch.state_width(model.config)) and state.dtype == np.float32
        outs, _ = run_steps(second, ids[:, 6:], state)
        for t, logits in enumerate(outs, start=6):
            close(logits, ref[:, t])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", CELLS)
def test_dropout_and_tied_weights_in_train_mode(cell: str, impl: str) -> None:
    model = make_model(cell, 2, hidden=12, embed=12, dropout=0.5, tie_weights=True)
    model.train()
    stepper = make_stepper(impl, model)
    ids = torch.randint(0, VOCAB, (2, 10))
    ref = reference_logits(model, ids)
    logits, state = prime(stepper, ids[:, :3])
    close(logits, ref[:, 2])
    outs, _ = run_steps(stepper, ids[:, 3:], state)
    for t, logits in enumerate(outs, start=3):
        close(logits, ref[:, t])
    assert model.training  # the stepper must not flip the caller's mode
    if isinstance(stepper, TorchStepper):
        assert stepper.model.training  # eval behaviour only while it runs


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", CELLS)
def test_reorder_selects_and_duplicates_rows(cell: str, impl: str) -> None:
    stepper = make_stepper(impl, make_model(cell, 2))
    ids = torch.randint(0, VOCAB, (3, 6))
    _, state = prime(stepper, ids)
    index = torch.tensor([2, 0, 2, 2])
    moved = stepper.reorder(state, index)
    nxt = np.array([1, 2, 3])
    logits, _ = stepper.step(nxt, state)
    moved_logits, _ = stepper.step(nxt[index.numpy()], moved)
    if impl == "numpy":  # up to 6 rows multiply row by row: the batch does not change the rounding
        np.testing.assert_array_equal(moved_logits, logits[index.numpy()])
    close(moved_logits, logits[index.numpy()])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", CELLS)
def test_state_is_not_modified_in_place(cell: str, impl: str) -> None:
    stepper = make_stepper(impl, make_model(cell, 2))
    for rows in (1, 2):
        _, state = prime(stepper, torch.randint(0, VOCAB, (rows, 5)))
        before = state.copy()
        logits, _ = stepper.step(np.arange(1, rows + 1), state)
        assert np.array_equal(before, state)
        again, _ = stepper.prime(np.arange(1, rows + 1)[:, None], state)
        assert np.array_equal(before, state)
        stepper.forward(np.arange(1, rows + 1)[:, None], state)
        assert np.array_equal(before, state)
        np.testing.assert_allclose(again, logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("window", [1, 3, 64])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_prime_in_windows_matches_forward(
    cell: str, layers: int, window: int, impl: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prime longer than the window runs window by window with the state carried."""
    monkeypatch.setattr(charnn.stepper, "PRIME_WINDOW", window)
    monkeypatch.setattr(charnn.torch_stepper, "PRIME_WINDOW", window)
    model = make_model(cell, layers)
    stepper = make_stepper(impl, model)
    ids = torch.randint(0, VOCAB, (2, 40))
    ref = reference_logits(model, ids)
    logits, state = prime(stepper, ids[:, :37])
    close(logits, ref[:, 36])
    outs, _ = run_steps(stepper, ids[:, 37:], state)
    for t, logits in enumerate(outs, start=37):
        close(logits, ref[:, t])


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
    close(logits, expected)
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
def test_huge_primes_go_through_torch_and_steps_stay_in_numpy(
    cell: str, layers: int, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sampling route past TORCH_PRIME_MIN tokens: torch primes (across its windows and from a
    carried state) to the numpy prime's logits and state, and the steps are numpy's own."""
    import charnn.routing
    from charnn.checkpoint import load_checkpoint, save_checkpoint
    from charnn.routing import PrimeElsewhere, sampling_stepper
    from charnn.tokenizer import CharTokenizer

    monkeypatch.setattr(charnn.torch_stepper, "PRIME_WINDOW", 7)
    monkeypatch.setattr(charnn.routing, "TORCH_PRIME_MIN", 20)
    model = make_model(cell, layers)
    save_checkpoint(tmp_path / "ck", model, CharTokenizer(list("abcdefghijk")))
    ckpt = load_checkpoint(tmp_path / "ck")
    fast = sampling_stepper(ckpt, 19)
    big = sampling_stepper(ckpt, 20)
    assert isinstance(fast, FastStepper) and isinstance(big, PrimeElsewhere)
    assert isinstance(big.primer, TorchStepper) and isinstance(big.stepper, FastStepper)
    assert big.vocab_size == VOCAB
    ids = np.random.default_rng(1).integers(0, VOCAB, (2, 30))
    ref = reference_logits(model, torch.from_numpy(ids))
    a_logits, a_state = fast.prime(ids[:, :20])
    b_logits, b_state = big.prime(ids[:, :20])
    close(b_logits, ref[:, 19])
    close(b_logits, a_logits)
    close(b_state, a_state)
    b_logits, b_state = big.prime(ids[:, 20:29], b_state)
    close(b_logits, ref[:, 28])
    logits, _ = big.step(ids[:, 29], b_state)
    np.testing.assert_array_equal(logits, big.stepper.step(ids[:, 29], b_state)[0])
    close(logits, ref[:, 29])


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


def test_routing_sends_short_inputs_to_numpy_and_long_ones_to_torch(tmp_path) -> None:
    """charnn.routing is the one place that picks an engine; a model built already is reused."""
    from charnn.checkpoint import load_checkpoint, save_checkpoint
    from charnn.routing import NUMPY_MAX_TOKENS, SCORE_BATCH, eval_stepper, score_stepper
    from charnn.tokenizer import CharTokenizer

    save_checkpoint(tmp_path / "ck", make_model("gru", 1), CharTokenizer(list("abcdefghijk")))
    ckpt = load_checkpoint(tmp_path / "ck")
    assert isinstance(eval_stepper(ckpt, NUMPY_MAX_TOKENS), FastStepper)
    assert isinstance(eval_stepper(ckpt, NUMPY_MAX_TOKENS + 1), TorchStepper)
    model = ckpt.build_model()
    built = eval_stepper(ckpt, 5, model)
    assert isinstance(built, TorchStepper) and built.model is model
    short, batch = score_stepper(ckpt, NUMPY_MAX_TOKENS)
    assert isinstance(short, FastStepper) and batch == 1  # line by line, as numpy always scored
    long, batch = score_stepper(ckpt, NUMPY_MAX_TOKENS + 1)
    assert isinstance(long, TorchStepper) and batch == SCORE_BATCH
