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
import torch

from charnn.config import MAX_SEED, SampleConfig
from charnn.constraints import StreamState, TokenRules
from charnn.sampling import (
    Sample,
    StreamDecoding,
    _draw,
    _one_thread,
    _Streams,
    _Uniforms,
    filter_logits,
    generate,
    rules_for,
)
from charnn.stepper import FastStepper

BATCH_PROMPTS = 64  # prompts advanced together: a batch this wide costs a few single-row steps


def prompt_seed(seed: int, index: int) -> int:
    """The seed of prompt ``index`` (0-based) in a run seeded ``seed``."""
    return (seed + index) % (MAX_SEED + 1)


def sample_prompts(
    stepper: FastStepper,
    primes: Sequence[Sequence[int]],
    config: SampleConfig,
    decode: StreamDecoding,
    seeds: Sequence[int],
    heal: Sequence[bool] | None = None,
) -> list[list[Sample]]:
    """``config.num_samples`` continuations of each prime, as one batch; result ``i`` belongs to
    ``primes[i]`` and was drawn from the stream seeded ``seeds[i]``. The tokenizer's rules apply
    as in :func:`~charnn.sampling.generate` (lengths in characters, valid text); ``heal[i]``:
    regenerate the last subword piece of prime ``i``, as ``--prime`` does."""
    rules = rules_for(decode, stepper.vocab_size)
    heal = heal or [False] * len(primes)
    if config.beam is not None or config.length == 0:
        return [
            generate(stepper, ids, config, decode, generator=_generator(seed), rules=rules, heal=h)
            for ids, seed, h in zip(primes, seeds, heal, strict=True)
        ]
    healed = [rules.heal_prime(ids) if h else (list(ids), "") for ids, h in zip(primes, heal, strict=True)]
    with torch.inference_mode(), _one_thread():
        return _sample_batch(
            stepper,
            [ids for ids, _ in healed],
            config,
            decode,
            seeds,
            rules,
            [StreamState(heal=text) for _, text in healed],
        )


def _generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def _sample_batch(
    stepper: FastStepper,
    primes: Sequence[Sequence[int]],
    config: SampleConfig,
    decode: StreamDecoding,
    seeds: Sequence[int],
    rules: TokenRules,
    starts: Sequence[StreamState],
) -> list[list[Sample]]:
    k = config.num_samples
    primed = [stepper.prime(torch.tensor([list(ids)], dtype=torch.long)) for ids in primes]
    expand = np.repeat(np.arange(len(primes)), k)  # row -> prompt; each prompt's k rows together
    logits = np.concatenate([lg.numpy() for lg, _ in primed])[expand]  # (rows, V)
    state = np.concatenate([st for _, st in primed])[expand]
    streams = [_Uniforms(_generator(seed)) for seed in seeds]
    greedy, simple = config.temperature == 0, config.top_k is None and config.top_p is None
    inv_temp = 0.0 if greedy else 1.0 / config.temperature
    n = len(expand)
    decoding = _Streams(decode, rules, StreamState())  # decoders, character counts, stops
    decoding.open(n, config.stops, [starts[int(p)] for p in expand])
    rows = list(range(n))  # live batch row -> stream index
    pieces: list[list[str]] = [[] for _ in range(n)]
    ids: list[list[int]] = [[] for _ in range(n)]
    stopped_by = ["length"] * n
    logprob = np.zeros(n)
    while rows:
        top = logits.max(axis=1, keepdims=True)
        numerators = np.exp(logits - top)  # raw: the logprob is the model's
        masks = decoding.masks(rows, config.length)  # (rows, V) or None: what each row may draw
        draw = logits if masks is None else np.where(masks, logits, -np.inf)
        if greedy:
            nxt = draw.argmax(axis=1)
        else:
            u = _uniforms_for(streams, [int(expand[i]) for i in rows], simple)
            if simple:
                if masks is None and inv_temp == 1.0:
                    weights = numerators
                else:
                    weights = np.exp((draw - draw.max(axis=1, keepdims=True)) * inv_temp)
                nxt = _draw(weights.cumsum(axis=1, dtype=np.float64), u)
            else:
                filtered = filter_logits(
                    torch.from_numpy(draw), config.temperature, config.top_k, config.top_p
                )
                nxt = _draw(torch.softmax(filtered.double(), dim=-1).numpy().cumsum(axis=1), u)
        chosen = logits[np.arange(len(rows)), nxt].astype(np.float64)
        logprob[rows] += chosen - top[:, 0] - np.log(numerators.sum(axis=1, dtype=np.float64))
        keep = []
        for row, token in enumerate(nxt.tolist()):
            i = rows[row]
            piece, end = decoding.push(i, token, config.length)
            ids[i].append(token)
            pieces[i].append(piece)
            if end is not None:
                stopped_by[i] = end
            else:
                keep.append(row)
        if len(keep) < len(rows):
            rows, nxt, state = [rows[r] for r in keep], nxt[keep], stepper.reorder(state, np.array(keep))
        if not rows:
            break
        step_logits, state = stepper.step(nxt, state)  # numpy ids in, numpy logits (rows, V) out
        logits = np.asarray(step_logits)
    for i in range(n):  # a character cut short by the end of a stream (only without rules)
        pieces[i].append(decoding.flush(i))
    samples = [Sample(ids[i], "".join(pieces[i]), float(logprob[i]), stopped_by[i]) for i in range(n)]
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
