"""charnn from Python: load a model, sample, stream, score, evaluate, train.

::

    import charnn
    model = charnn.load("checkpoints")             # a run directory or a checkpoint; numpy, no torch
    text = model.sample("ROMEO:", length=300, temperature=0.8, seed=1)
    for piece in model.stream("ROMEO:", length=10_000):
        ...
    model.score("To be, or not to be")              # Score(logprob, bpc, chars, ...)
    model.evaluate("held_out.txt")                  # the numbers `charnn eval` prints
    run = charnn.train("corpus.txt", out="runs/x", time="2m", hidden=128)
    run.best, run.history

The functions call the same code as the commands, so the same seed gives the same text, option
values are checked by the same schema, and failures are the same typed exceptions
(:mod:`charnn.errors`) that the command line maps to exit codes. ``load``, ``sample``, ``stream``
and ``score`` of short texts never import torch.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from charnn.config import SampleConfig
from charnn.errors import CharnnError, ConfigError

if TYPE_CHECKING:
    from charnn.checkpoint import Checkpoint
    from charnn.metrics_rows import MetricsRow
    from charnn.results import EvalRow
    from charnn.scoring import LineScore

__all__ = ["Model", "Run", "load", "train"]

_SAMPLE_FIELDS = frozenset(f.name for f in dataclasses.fields(SampleConfig))


@dataclass(frozen=True)
class Score:
    """How likely a text is under the model: ``logprob`` in nats, ``bpc`` bits per character."""

    logprob: float
    bpc: float
    bpt: float
    chars: int
    tokens: int


class Model:
    """A trained model, loaded into numpy (torch only for long evaluations)."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        from charnn.stepper import FastStepper

        self.checkpoint = checkpoint
        self.path: Path = checkpoint.path
        self.tokenizer = checkpoint.tokenizer
        self._stepper = FastStepper(checkpoint.config, checkpoint.weights)

    def __repr__(self) -> str:
        c = self.checkpoint.config
        return f"<charnn.Model {c.layers}x{c.hidden} {c.cell} from {str(self.path)!r}>"

    # ------------------------------------------------------------------ generation

    def sample(self, prime: str = "", **options: Any) -> str:
        """The text ``charnn sample --prime PRIME`` prints with the same options: the prime, then
        its continuation. ``options`` are :class:`charnn.config.SampleConfig` fields
        (``length``, ``temperature``, ``top_k``, ``top_p``, ``beam``, ``seed``, ``stops``, ...)."""
        pieces: list[str] = []
        self._generate(prime, options, lambda piece: pieces.append(piece))
        return prime + "".join(pieces)

    def stream(self, prime: str = "", **options: Any) -> Iterator[str]:
        """The continuation of ``prime`` piece by piece as it is generated (the prime itself is
        not repeated); the pieces join into what :meth:`sample` returns after the prime. Memory
        stays constant however long; leaving the loop early stops the generation."""
        config = self._config(options)
        pieces: queue.Queue[str | BaseException | None] = queue.Queue(maxsize=256)
        stop = threading.Event()

        def put(item: str | BaseException | None) -> None:
            while not stop.is_set():
                try:
                    pieces.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue
            raise _Stopped

        def work() -> None:
            try:
                self._generate(prime, config, put)
                put(None)
            except _Stopped:
                pass
            except BaseException as exc:  # handed to the reader, who raises it
                try:
                    put(exc)
                except _Stopped:
                    pass

        worker = threading.Thread(target=work, name="charnn-stream", daemon=True)
        worker.start()
        try:
            while (item := pieces.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join()

    def _config(self, options: dict[str, Any] | SampleConfig) -> SampleConfig:
        if isinstance(options, SampleConfig):
            return options
        unknown = sorted(set(options) - _SAMPLE_FIELDS)
        if unknown:
            raise TypeError(
                f"unknown sampling option(s): {', '.join(unknown)}; "
                f"known: {', '.join(sorted(_SAMPLE_FIELDS))}"
            )
        config = SampleConfig(**options)  # validated like the command-line options
        if config.num_samples != 1:
            raise ConfigError("sample() and stream() make one text: call them once per sample")
        return config  # beam search with a temperature, top-k or top-p: SampleConfig refuses it

    def _generate(self, prime: str, options: dict[str, Any] | SampleConfig, on_piece: Any) -> None:
        from charnn.app import encode_prime
        from charnn.constraints import TokenRules
        from charnn.sampling import generate

        config = self._config(options)
        prime_ids = encode_prime(self.tokenizer, prime, "prime")
        rng = np.random.default_rng(config.seed)
        rules = TokenRules.for_tokenizer(self.tokenizer)
        generate(
            self._stepper,
            prime_ids,
            config,
            self.tokenizer,
            on_text=lambda i, piece: on_piece(piece) if i == 0 else None,
            rng=rng,
            keep=[False] if config.beam is None else None,  # streamed, not collected: constant memory
            rules=rules,
            heal=bool(prime),
        )

    # ------------------------------------------------------------------ measurement

    def score(self, text: str, context: str | None = None) -> Score:
        """Log-probability and bits per character of ``text`` (after ``context``, default the
        tokenizer's start: a newline), as ``charnn score --whole`` computes them."""
        from charnn.app import encode_prime

        if not text:
            raise ConfigError("score: the text is empty")
        context_ids = encode_prime(self.tokenizer, context or "", "context").tolist()
        line = _line_score(
            self.checkpoint, self._stepper, context_ids, np.asarray(self.tokenizer.encode(text))
        )
        return Score(line.logprob, line.bpc, line.bpt, line.chars, line.tokens)

    def evaluate(self, *files: str | Path, encoding_errors: str = "strict") -> EvalRow:
        """What ``charnn eval FILES`` prints for this model: loss, bpc, bpt, tokens, chars."""
        from charnn.app import run_eval

        if not files:
            raise ConfigError("evaluate: name at least one file")
        return run_eval([str(self.path)], [str(f) for f in files], encoding_errors)[0]


class _Stopped(Exception):
    """The reader of a stream went away."""


def _line_score(ckpt: Checkpoint, stepper: Any, context_ids: list[int], ids: np.ndarray) -> LineScore:
    from charnn.routing import score_stepper
    from charnn.scoring import score_lines, token_char_lengths, token_extra_nats

    lengths, extra = token_char_lengths(ckpt.tokenizer), token_extra_nats(ckpt.tokenizer)
    routed, batch = score_stepper(ckpt, len(context_ids) + len(ids) + 1, fast=stepper)
    return score_lines(routed, context_ids, [ids], lengths, batch_size=batch, extra_nats=extra)[0]


def load(path: str | Path = "checkpoints") -> Model:
    """A run directory (its best/, else latest/) or one checkpoint, validated like ``-c PATH``."""
    from charnn.checkpoint import load_checkpoint

    return Model(load_checkpoint(str(path)))


# ---------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Run:
    """A run directory after :func:`train`."""

    path: Path

    @property
    def best(self) -> Model:
        """The model with the best validation loss (latest/ when the run had no validation)."""
        return load(self.path)

    @property
    def latest(self) -> Model:
        from charnn.checkpoint import LATEST, load_checkpoint

        return Model(load_checkpoint(str(self.path), prefer=LATEST))

    @property
    def history(self) -> list[MetricsRow]:
        """The rows of the run's metrics.jsonl, oldest first."""
        from charnn.metrics import read_metrics
        from charnn.rundir import METRICS

        return list(read_metrics(self.path / METRICS))


def train(*files: str | Path, out: str | Path = "checkpoints", progress: bool = False, **options: Any) -> Run:
    """Train like ``charnn train FILES --out OUT``: ``options`` are the command's options by
    their flag names (``time="2m"``, ``hidden=128``, ``cell="gru"``, ``resume=True``, ...),
    converted and checked exactly as on the command line. Progress goes to stderr only with
    ``progress=True``. Ctrl-C saves the run and raises :class:`charnn.errors.Interrupted`."""
    from charnn.cli import cli

    command = cli.commands["train"]
    names = {p.name: p for p in command.params if p.name not in ("files", "out", "quiet")}
    flags = {_keyword(p): p for p in names.values()}
    args: list[str] = ["train", *map(str, files), "--out", str(out)]
    if not progress:
        args.append("--quiet")
    for key, value in options.items():
        param = flags.get(key) or names.get(key)
        if param is None:
            known = ", ".join(sorted(flags))
            raise TypeError(f"train() got an unknown option {key!r}; known: {known}")
        args += _arguments(param, value)
    _invoke(cli, args)
    return Run(Path(out))


def _keyword(param: Any) -> str:
    longest = max(param.opts, key=len)
    return longest.lstrip("-").replace("-", "_")


def _arguments(param: Any, value: Any) -> list[str]:
    flag = max(param.opts, key=len)
    if param.is_flag:
        return [flag] if value else []
    if value is None:
        return []
    if isinstance(value, (list, tuple)) and param.multiple:
        return [a for v in value for a in (flag, str(v))]
    return [flag, str(value)]


def _invoke(cli: Any, args: list[str]) -> None:
    import click

    try:
        cli.main(args, prog_name="charnn", standalone_mode=False)
    except click.UsageError as exc:
        raise ConfigError(exc.format_message()) from None
    except click.ClickException as exc:
        raise CharnnError(exc.format_message()) from None
