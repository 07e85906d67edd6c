"""Repetition control (--repetition-penalty, --no-repeat-ngram) for sampling and beam search."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charnn.config import SampleConfig
from charnn.errors import ConfigError
from charnn.repetition import History, Repetition
from charnn.sampling import generate, plain_rules


def _ngrams(ids: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]


@given(st.lists(st.integers(0, 3), max_size=40), st.integers(1, 5))
@settings(max_examples=200, deadline=None)
def test_history_bans_exactly_the_tokens_that_repeat_an_ngram(tokens: list[int], n: int) -> None:
    history = History(n)
    for t in tokens:
        history.add(t)
    tail = tuple(tokens[len(tokens) - (n - 1) :]) if n > 1 else ()
    expected = {g[-1] for g in _ngrams(tokens, n) if g[:-1] == tail and len(tokens) >= n - 1}
    assert set(history.banned()) == expected
    assert history.copy().banned() == history.banned()


class _Decoder:
    class _D:
        def feed(self, token: int) -> str:
            return "ab c"[token] if token < 4 else "?"

        def flush(self) -> str:
            return ""

        def getstate(self) -> object:
            return None

        def setstate(self, state: object) -> None:
            pass

    def stream_decoder(self) -> _D:
        return self._D()


class _Loop:
    """A model that always predicts 'the next token of a b a b ...' very strongly: greedy and beam
    search repeat "ab" forever without repetition control."""

    vocab_size = 4

    def prime(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._logits(np.array([int(ids[0, -1])])), np.array([int(ids[0, -1])])

    def _logits(self, last: np.ndarray) -> np.ndarray:
        out = np.full((len(last), 4), -4.0, dtype=np.float32)
        out[np.arange(len(last)), 1 - (last % 2)] = 4.0  # a -> b -> a
        out[:, 2] = 0.0  # a space is the runner-up
        return out

    def step(self, ids: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids)
        return self._logits(ids), ids.copy()

    def reorder(self, state: np.ndarray, index: np.ndarray) -> np.ndarray:
        return state[index]


def _run(**kwargs: object) -> list:
    config = SampleConfig(length=12, **kwargs)  # type: ignore[arg-type]
    return generate(_Loop(), [1], config, _Decoder(), rng=np.random.default_rng(0), rules=plain_rules(4))


@pytest.mark.parametrize("mode", [{"temperature": 0}, {"beam": 3}, {"temperature": 0.7, "seed": 1}])
def test_no_repeat_ngram_breaks_the_loop(mode: dict) -> None:
    plain = _run(**mode)[0]
    assert plain.text.startswith("abab")  # the loop, without the rule
    fixed = _run(no_repeat_ngram=3, **mode)[0]
    assert len(set(_ngrams(fixed.ids, 3))) == len(_ngrams(fixed.ids, 3))  # no 3-gram twice
    assert fixed.text != plain.text


@pytest.mark.parametrize("mode", [{"temperature": 0}, {"beam": 2}])
def test_repetition_penalty_changes_the_choice_not_the_logprob(mode: dict) -> None:
    plain = _run(**mode)[0]
    fixed = _run(repetition_penalty=1e4, **mode)[0]
    assert " " in fixed.text and " " not in plain.text
    # The reported logprob is the raw model's: recompute it for the penalised text.
    stepper, ids, total = _Loop(), fixed.ids, 0.0
    logits, state = stepper.prime(np.array([[1]]))
    for t in ids:
        row = logits[0].astype(np.float64)
        total += row[t] - np.log(np.exp(row - row.max()).sum()) - row.max()
        logits, state = stepper.step(np.array([t]), state)
    assert fixed.logprob == pytest.approx(total)


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError):
        SampleConfig(repetition_penalty=0.5)
    with pytest.raises(ConfigError):
        SampleConfig(no_repeat_ngram=-1)
    assert Repetition.from_config(SampleConfig()) is None


def test_cli_sample_and_beam_with_repetition_control(run_cli, trained_run) -> None:
    for extra in (("--beam", "3"), ("--temp", "0.8", "--seed", "2")):
        proc = run_cli("sample", "-c", trained_run, "--length", "200", "--no-repeat-ngram", "8",
                       "--repetition-penalty", "1.3", "--json", *extra)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    text = json.loads(proc.stdout)["text"]
    grams = [text[i : i + 8] for i in range(len(text) - 7)]
    assert len(grams) == len(set(grams))


def test_prompts_with_repetition_control_match_prime(run_cli, trained_run, tmp_path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("The \nAnd \n")
    args = ("--length", "30", "--seed", "4", "--no-repeat-ngram", "5", "--json")
    batch = run_cli("sample", "-c", trained_run, "--prompts", prompts, *args)
    alone = run_cli("sample", "-c", trained_run, "--prime", "And ", *args[:2], "--seed", "5", *args[4:])
    assert batch.returncode == alone.returncode == 0, batch.stderr + alone.stderr
    assert json.loads(batch.stdout.splitlines()[1])["text"] == json.loads(alone.stdout)["text"]
