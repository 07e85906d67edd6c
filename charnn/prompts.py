"""Continuing many prompts at once (``charnn sample --prompts FILE``), batched through the stepper.

Each prompt is primed on its own (prompts differ in length), then all their streams advance
together, one stepper call per position for the whole batch. Prompt ``i`` (0-based, in file
order) draws from its own random stream seeded ``seed + i``, consumed exactly as a single
``--prime`` run consumes it, so its continuation is what ``--prime LINE --seed SEED+i`` gives
(up to floating-point rounding of the batched matrix products, which in rare cases can tip a
draw). Beam search is deterministic and runs prompt by prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from charnn.config import MAX_SEED, SampleConfig
from charnn.constraints import StreamState, TokenRules
from charnn.repetition import Repetition
from charnn.sampling import Sample, _Picker, _Streams, _Uniforms, generate, heal_prime, sample_rows
from charnn.stepper import Stepper
from charnn.tokenizer import Tokenizer

BATCH_PROMPTS = 64  # prompts advanced together: a batch this wide costs a few single-row steps


def prompt_seed(seed: int, index: int) -> int:
    """The seed of prompt ``index`` (0-based) in a run seeded ``seed``."""
    return (seed + index) % (MAX_SEED + 1)


def sample_prompts(
    stepper: Stepper,
    primes: Sequence[Sequence[int] | np.ndarray],
    config: SampleConfig,
    tokenizer: Tokenizer,
    seeds: Sequence[int],
    heal: Sequence[bool] | None = None,
) -> list[list[Sample]]:
    """``config.num_samples`` continuations of each prime, as one batch; result ``i`` belongs to
    ``primes[i]`` and was drawn from the stream seeded ``seeds[i]``. The tokenizer's rules apply
    as in :func:`~charnn.sampling.generate` (lengths in characters, valid text); ``heal[i]``:
    regenerate the last subword piece of prime ``i``, as ``--prime`` does."""
    rules = TokenRules.for_tokenizer(tokenizer)
    heal = heal or [False] * len(primes)
    if config.beam is not None or config.length == 0 or Repetition.from_config(config) is not None:
        # Prompt by prompt, as --prime: each is exactly what --prime LINE --seed SEED+i gives.
        return [
            generate(stepper, ids, config, tokenizer, rng=np.random.default_rng(seed), rules=rules, heal=h)
            for ids, seed, h in zip(primes, seeds, heal, strict=True)
        ]
    healed = [
        heal_prime(rules, ids) if h else (np.asarray(ids), "") for ids, h in zip(primes, heal, strict=True)
    ]
    starts = [StreamState(heal=text) for _, text in healed]
    with np.errstate(over="ignore"):  # tiny temperatures: weights underflow to 0 by design
        return _sample_batch(stepper, [ids for ids, _ in healed], config, tokenizer, seeds, rules, starts)


def _sample_batch(
    stepper: Stepper,
    primes: Sequence[Sequence[int] | np.ndarray],
    config: SampleConfig,
    decode: Tokenizer,
    seeds: Sequence[int],
    rules: TokenRules,
    starts: Sequence[StreamState],
) -> list[list[Sample]]:
    k = config.num_samples
    primed = [stepper.prime(np.asarray(ids)[None, :]) for ids in primes]
    expand = np.repeat(np.arange(len(primes)), k)  # row -> prompt; each prompt's k rows together
    logits = np.concatenate([lg for lg, _ in primed])[expand]  # (rows, V)
    state = np.concatenate([st for _, st in primed])[expand]
    streams = [_Uniforms(np.random.default_rng(seed)) for seed in seeds]
    picker = _Picker(config, None)  # the single-run rules (greedy for tiny temperatures too)
    decoding = _Streams(config, decode, rules, [starts[int(p)] for p in expand])  # text, chars, stops

    def draws(rows: list[int]) -> np.ndarray:
        return _uniforms_for(streams, [int(expand[i]) for i in rows], not picker.filtered)

    samples = sample_rows(stepper, logits, state, picker, decoding, draws)
    return [samples[p * k : (p + 1) * k] for p in range(len(primes))]


def _uniforms_for(streams: list[_Uniforms], prompt_of_row: list[int], simple: bool) -> np.ndarray:
    """One uniform per live row, each prompt's rows from its own stream, taken as a lone
    ``--prime`` run takes them (one value for a single simple stream, else a block per position)."""
    out = np.empty(len(prompt_of_row))
    start = 0
    while start < len(prompt_of_row):
        prompt = prompt_of_row[start]
        end = start
        while end < len(prompt_of_row) and prompt_of_row[end] == prompt:
            end += 1
        if simple and end - start == 1:
            out[start] = streams[prompt].one()
        else:
            out[start:end] = streams[prompt].take(end - start)
        start = end
    return out
