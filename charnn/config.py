"""The option schema: validated, frozen configuration dataclasses (no torch import).

Every user-facing knob is declared exactly once, as a dataclass field whose metadata
(:func:`opt`) holds its command-line spelling, help text, choices and range. From that one
declaration come the click option (``charnn.cli`` builds it, default shown from the field),
the check in ``__post_init__`` (ranges, choices and finiteness are validated generically
here, so the library refuses impossible settings whether it is driven by the CLI or by
code), whether ``--resume`` may change it (``locked``), and the README's option tables
(``charnn.docs``). Checks raise :class:`~charnn.errors.ConfigError` (exit 2) with one line.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from charnn.arch import CELLS as CELL_SPECS
from charnn.errors import ConfigError

CELLS = tuple(CELL_SPECS)  # the cells are described in charnn.arch
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16")
SCHEDULES = ("linear", "cosine")
TOKENIZERS = ("char", "bpe", "unigram", "sentencepiece")  # sentencepiece: the old name for unigram
NORMALIZE = ("none", "nfc", "nfkc")
ENCODING_ERRORS = ("strict", "replace", "ignore")
AVERAGES = ("none", "ema", "swa")  # --average: no weight average, an exponential one, SWA's mean
MAX_SEED = 2**63 - 1  # torch and numpy seeds are 64-bit; a larger one cannot be honoured
MAX_SECONDS = 366 * 86400.0  # a year: beyond that a duration is a typo, and clocks lose precision
MAX_COUNT = 2**53  # steps, tokens, lengths: exact in a float64, far beyond any real run


@dataclass(frozen=True)
class Opt:
    """How one config field appears on the command line (the field's metadata under ``"cli"``)."""

    help: str
    flag: str | None = None  # default: --field-name
    short: str | None = None  # e.g. "-n"
    choices: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None  # text -> value, for values click cannot type (durations)
    default_text: str | None = None  # what --help shows as the default, when the field's default is None
    multiple: bool = False  # a repeatable option collected into a tuple
    locked: bool = False  # defines what a run computes: --resume must not change it
    envvar: str | None = None  # environment variable, besides the automatic CHARNN_COMMAND_OPTION


def opt(help: str, **kwargs: Any) -> dict[str, Opt]:
    """Field metadata declaring a command-line option: ``field(default=..., metadata=opt(...))``."""
    return {"cli": Opt(help, **kwargs)}


def cli_opt(f: dataclasses.Field[Any]) -> Opt | None:
    return f.metadata.get("cli")


def flag_of(f: dataclasses.Field[Any]) -> str:
    """The option a user types for field ``f`` (its name, for fields without one)."""
    o = cli_opt(f)
    if o is None:
        return f.name
    return o.flag or "--" + f.name.replace("_", "-")


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _range_text(o: Opt) -> str:
    if o.min is not None and o.max is not None:
        return f"in {'(' if o.min_open else '['}{_fmt(o.min)}, {_fmt(o.max)}{')' if o.max_open else ']'}"
    if o.min is not None:
        return f"{'>' if o.min_open else '>='} {_fmt(o.min)}"
    return f"{'<' if o.max_open else '<='} {_fmt(o.max or 0)}"


# Set while a config is rebuilt from stored data (a checkpoint): errors then name the stored
# field ("train.batch_size"), not a flag the user never typed.
_STORED_AS: contextvars.ContextVar[str | None] = contextvars.ContextVar("stored_as", default=None)


def _check_field(f: dataclasses.Field[Any], kind: Any, value: Any) -> None:
    """Generic checks from the declaration: type, finiteness, range, choices."""
    stored = _STORED_AS.get()
    name, o = (f"{stored}.{f.name}" if stored else flag_of(f)), cli_opt(f)
    if value is None:
        if type(None) in typing.get_args(kind):
            return
        raise ConfigError(f"{name} must be given")
    base = tuple(t for t in (typing.get_args(kind) or (kind,)) if t is not type(None))
    if bool in base:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return
    if int in base and float not in base and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if float in base:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value}")
    if o is None:
        return
    if o.choices is not None and value not in o.choices:
        raise ConfigError(f"{name} must be one of {', '.join(o.choices)}, got {value!r}")
    low_bad = o.min is not None and (value <= o.min if o.min_open else value < o.min)
    high_bad = o.max is not None and (value >= o.max if o.max_open else value > o.max)
    if low_bad or high_bad:
        raise ConfigError(f"{name} must be {_range_text(o)}, got {value}")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """A config class's resolved annotations, resolved once (it was most of a config's validation cost)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


class _Validated:
    """Mixin: check every field against its declaration, then the class's own cross-field rules."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            _check_field(f, hints[f.name], getattr(self, f.name))
        self.check()

    def check(self) -> None:
        """Rules that involve several fields (override)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any], stored_as: str | None = None) -> Any:
        """Rebuild from stored data; with ``stored_as`` (e.g. "train"), errors name stored fields."""
        if not isinstance(data, dict):
            raise ConfigError(f"{stored_as or cls.__name__} is not a mapping")
        token = _STORED_AS.set(stored_as)
        try:
            return cls(**_known_fields(cls, data))
        finally:
            _STORED_AS.reset(token)

    def replace(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class ModelConfig(_Validated):
    """Shape of the network; stored in every checkpoint."""

    vocab_size: int = field(metadata={"cli": None})
    cell: str = field(
        default="lstm",
        metadata=opt(
            "recurrent cell (`rnn` is the classic tanh RNN); built on torch.nn, so CUDA uses cuDNN",
            choices=CELLS,
        ),
    )
    layers: int = field(
        default=2, metadata=opt("recurrent layers", min=1, max=MAX_COUNT, default_text="by budget, else 2")
    )
    hidden: int = field(
        default=256,
        metadata=opt("hidden units per layer", min=1, max=MAX_COUNT, default_text="by budget, else 256"),
    )
    embed: int = field(
        default=64, metadata=opt("embedding size", min=1, max=MAX_COUNT, default_text="by budget, else 64")
    )
    dropout: float = field(
        default=0.0,
        metadata=opt(
            "dropout on the embeddings, between layers and before the output layer",
            min=0,
            max=1,
            max_open=True,
            default_text="by budget, else 0",
        ),
    )
    weight_drop: float = field(
        default=0.0,
        metadata=opt(
            "DropConnect on the recurrent weights, one mask per batch (saved weights are undropped; "
            "docs/regularisation.md)",
            min=0,
            max=1,
            max_open=True,
            default_text="by budget, else 0",
        ),
    )
    tie_weights: bool = field(
        default=False, metadata=opt("share embedding and output weights (needs --embed = --hidden)")
    )

    def check(self) -> None:
        _check(self.vocab_size >= 1, f"vocab_size must be >= 1, got {self.vocab_size}")
        _check(
            not self.tie_weights or self.embed == self.hidden,
            f"--tie-weights needs --embed equal to --hidden (got {self.embed} and {self.hidden})",
        )


@dataclass(frozen=True)
class TokenizerConfig(_Validated):
    """Which tokenizer a new run builds from its corpus (a resumed run keeps its own)."""

    kind: str = field(
        default="char",
        metadata=opt(
            "characters, or SentencePiece subwords (BPE or unigram) trained on the corpus; "
            "sentencepiece = unigram",
            flag="--tokenizer",
            choices=TOKENIZERS,
        ),
    )
    vocab_size: int = field(
        default=2000,
        metadata=opt("bpe/unigram vocabulary size, incl. 256 byte-fallback pieces", min=8, max=1_000_000),
    )
    max_vocab: int | None = field(
        default=None,
        metadata=opt(
            "char: keep the N-1 most frequent characters; the rest become one unknown symbol",
            min=2,
            max=1 << 32,
            default_text="all characters",
        ),
    )
    min_char_count: int | None = field(
        default=None,
        metadata=opt(
            "char: characters seen fewer than K times become the unknown symbol",
            min=1,
            max=MAX_COUNT,
            metavar="K",
            default_text="1",
        ),
    )
    normalize: str = field(
        default="none",
        metadata=opt(
            "Unicode normalisation of the corpus, stored with the tokenizer and applied to primes, "
            "eval and score text too",
            choices=NORMALIZE,
        ),
    )
    source: str | None = field(
        default=None,
        metadata=opt(
            "train with the tokenizer of this checkpoint (run directory or checkpoint), so models share "
            "one vocabulary",
            flag="--tokenizer-from",
            metavar="CKPT",
        ),
    )
    sample_sentences: int = field(default=200_000, metadata={"cli": None})  # lines SentencePiece samples
    seed: int = field(default=0, metadata={"cli": None})  # that sample's seed (a new run passes its own)

    def check(self) -> None:
        if self.kind == "sentencepiece":
            object.__setattr__(self, "kind", "unigram")
        _check(
            self.kind == "char" or (self.max_vocab is None and self.min_char_count is None),
            "--max-vocab and --min-char-count apply to --tokenizer char (subwords use --vocab-size)",
        )
        _check(self.sample_sentences >= 1, f"sample_sentences must be >= 1, got {self.sample_sentences}")

    @property
    def normalization(self) -> str | None:
        """The normalisation form, or None for none."""
        return None if self.normalize == "none" else self.normalize


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``5m``, ``90min``, ``2h``, ``1.5h``, ``1h30m``, ``2d`` or a bare number."""
    compact = text.strip().lower().replace(" ", "")
    if _NUMBER.fullmatch(compact):
        seconds = float(compact)
    elif compact and _DURATION.fullmatch(compact):
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(compact))
    else:
        raise ConfigError(f"cannot read duration {text!r}: use e.g. 90s, 5m, 1h30m, 2h")
    _check(seconds > 0, f"duration must be > 0, got {text!r}")
    _check(seconds <= MAX_SECONDS, f"duration must be at most a year, got {text!r}")
    return seconds


_UNIT_SECONDS = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hrs": 3600.0,
    "d": 86400.0,
}
_UNITS = "|".join(sorted(_UNIT_SECONDS, key=len, reverse=True))
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_PART = re.compile(rf"(\d+(?:\.\d+)?)({_UNITS})")
_DURATION = re.compile(rf"(?:\d+(?:\.\d+)?(?:{_UNITS}))+")


# One declaration for every command that runs torch on the CPU (train, eval, score).
THREADS = opt(
    "CPU threads for torch. Default: OMP_NUM_THREADS if set, else measured at start (each "
    "candidate count timed on the real work; the fewest within 5 % of the fastest win). train "
    "records the count and --resume reuses it; the count can change float rounding, so give N "
    "to repeat a run's weights exactly (docs/threads.md)",
    min=1,
    max=4096,
    default_text="measured",
)


@dataclass(frozen=True)
class TrainConfig(_Validated):
    """Everything about how a run trains; stored in checkpoints for exact resume."""

    batch_size: int = field(
        default=16,
        metadata=opt(
            "parallel streams per batch", min=1, max=1 << 20, locked=True, default_text="by budget, else 16"
        ),
    )
    seq_len: int = field(
        default=128,
        metadata=opt(
            "truncated-BPTT window length",
            min=1,
            max=1 << 20,
            locked=True,
            default_text="by budget, else 128",
        ),
    )
    lr: float = field(
        default=5e-3,
        metadata=opt(
            "peak learning rate (AdamW)",
            min=0,
            min_open=True,
            locked=True,
            default_text="by budget, else 0.005",
        ),
    )
    schedule: str = field(
        default="cosine",
        metadata=opt(
            "learning rate after the warm-up: linear to zero, or cosine to 10 %, ending exactly when "
            "the run's length (steps, epochs or time) ends",
            choices=SCHEDULES,
            locked=True,
        ),
    )
    min_lr_ratio: float = field(default=0.1, metadata={"cli": None, "locked": True})  # cosine's floor
    beta2: float = field(
        default=0.99,
        metadata=opt("Adam's second-moment decay", min=0, max=1, max_open=True, locked=True),
    )
    weight_decay: float = field(
        default=0.01,
        metadata=opt(
            "AdamW weight decay (matrices only)", min=0, locked=True, default_text="by budget, else 0.01"
        ),
    )
    average: str = field(
        default="none",
        metadata=opt(
            "keep an average of the weights over the end of the run (exponential, or SWA's equal "
            "mean), validated beside them; best/ takes it only when it validates better",
            choices=AVERAGES,
            locked=True,
            default_text="by budget, else none",
        ),
    )
    average_from: float = field(
        default=0.5,
        metadata=opt(
            "--average: start averaging after this fraction of the learning-rate decay",
            min=0,
            max=1,
            max_open=True,
            locked=True,
        ),
    )
    ema_decay: float = field(
        default=0.995,
        metadata=opt(
            "--average ema: the share of the average each step keeps",
            min=0,
            max=1,
            min_open=True,
            max_open=True,
            locked=True,
        ),
    )
    warmup_steps: int = field(
        default=50,
        metadata=opt(
            "linear warm-up steps, then the --schedule's decay",
            flag="--warmup",
            min=0,
            max=MAX_COUNT,
            locked=True,
        ),
    )
    grad_clip: float = field(default=1.0, metadata=opt("gradient-norm clipping, 0 = off", min=0, locked=True))
    steps: int | None = field(
        default=None,
        metadata=opt(
            "train for N steps (total for the run)",
            min=1,
            max=MAX_COUNT,
        ),
    )
    epochs: float | None = field(
        default=None, metadata=opt("train for F passes over the data", min=0, min_open=True, max=1e6)
    )
    time_limit: float | None = field(
        default=None,
        metadata=opt(
            "train for a time: 90s, 5m, 2h; with no --layers/--hidden/--embed/--cell, the length "
            "picks the model's shape (docs/budget.md)",
            flag="--time",
            metavar="DURATION",
            parse=parse_duration,
            min=0,
            min_open=True,
            max=MAX_SECONDS,
            default_text="5m",
        ),
    )
    decay_steps: int | None = field(
        default=None,
        metadata=opt("decay horizon in steps", min=1, max=MAX_COUNT, default_text="run length"),
    )
    eval_every: int = field(default=250, metadata=opt("validate every N steps", min=1, max=MAX_COUNT))
    eval_chars: int = field(
        default=200_000,
        metadata=opt("validate on the first N tokens of the held-out split", min=1, max=MAX_COUNT),
    )
    save_every: int = field(
        default=500,
        metadata=opt(
            "save latest/ every N steps (also on a better validation, on Ctrl-C/SIGTERM, at the end)",
            min=1,
            max=MAX_COUNT,
        ),
    )
    patience: int | None = field(
        default=None,
        metadata=opt(
            "early stopping: end the run after K validations without an improvement of --min-delta; 0 = off",
            min=0,
            max=MAX_COUNT,
            metavar="K",
            default_text="off",
        ),
    )
    min_delta: float = field(
        default=0.0,
        metadata=opt("early stopping: the val bpc drop that counts as an improvement", min=0, max=1e6),
    )
    sample_every: int = field(
        default=1000,
        metadata=opt(
            "print a short sample (same prime and seed each time) every N steps and append it to "
            "RUN/samples.txt; 0 = off",
            min=0,
            max=MAX_COUNT,
        ),
    )
    val_fraction: float = field(
        default=0.05,
        metadata=opt("held out from the end of the corpus", min=0, max=1, max_open=True, locked=True),
    )
    seed: int = field(
        default=1337,
        metadata=opt(
            "random seed: same seed, same command, same --threads: same weights (CPU)",
            min=0,
            max=MAX_SEED,
            locked=True,
        ),
    )
    device: str = field(
        default="auto",
        metadata=opt(
            "auto picks CUDA, else the CPU (MPS only when asked for: slower for RNNs)",
            choices=DEVICES,
            envvar="CHARNN_DEVICE",
        ),
    )
    threads: int | None = field(default=None, metadata=THREADS)
    precision: str = field(
        default="fp32", metadata=opt("bf16 autocast on CUDA", choices=PRECISIONS, locked=True)
    )
    max_bad_steps: int = field(
        default=10,
        metadata=opt(
            "non-finite steps in a row before restoring the last checkpoint with half the learning rate",
            min=1,
            max=MAX_COUNT,
        ),
    )

    @classmethod
    def from_dict(cls, data: dict[str, Any], stored_as: str | None = None) -> TrainConfig:
        if isinstance(data, dict) and data.get("extra") == {}:
            data = {k: v for k, v in data.items() if k != "extra"}  # written by charnn 0.1.0, always empty
        if isinstance(data, dict) and "schedule" not in data:
            data = {**data, "schedule": "cosine"}  # written before --schedule: those runs decayed by cosine
        return typing.cast(TrainConfig, super().from_dict(data, stored_as))

    @classmethod
    def locked_fields(cls) -> tuple[str, ...]:
        """Fields that define what a run computes: resuming with other values would silently make
        a different run, so ``--resume`` refuses them."""
        return tuple(
            f.name
            for f in dataclasses.fields(cls)
            if f.metadata.get("locked") or (cli_opt(f) is not None and cli_opt(f).locked)  # type: ignore[union-attr]
        )


@dataclass(frozen=True)
class AdaptConfig(_Validated):
    """Dynamic evaluation for ``eval`` and ``score`` (:mod:`charnn.adapt`): the model keeps
    learning, by SGD on its recurrent and output weights, from the text it has just scored."""

    adapt: bool = field(
        default=False,
        metadata=opt("keep learning from the text as it is scored (dynamic evaluation); reported separately"),
    )
    adapt_lr: float = field(
        default=0.02, metadata=opt("--adapt: SGD step size", min=0, min_open=True, max=10, metavar="F")
    )
    adapt_decay: float = field(
        default=0.0,
        metadata=opt("--adapt: pull toward the checkpoint's weights at each step", min=0, max=1, metavar="F"),
    )
    adapt_segment: int = field(
        default=50, metadata=opt("--adapt: tokens scored between two updates", min=1, max=1_000_000)
    )


@dataclass(frozen=True)
class SampleConfig(_Validated):
    """How to decode: one of sampling (temperature/top-k/top-p), greedy, or beam search."""

    length: int = field(
        default=500,
        metadata=opt(
            "characters to generate per sample, at most (any tokenizer)", short="-n", min=0, max=MAX_COUNT
        ),
    )
    temperature: float | None = field(
        default=None,  # None: 1 when sampling; beam search takes none (see check)
        metadata=opt(
            "temperature; 0 = greedy", flag="--temp", short="-t", min=0, metavar="T", default_text="1"
        ),
    )
    top_k: int | None = field(
        default=None, metadata=opt("sample only from the K most likely tokens", min=1, max=MAX_COUNT)
    )
    top_p: float | None = field(
        default=None,
        metadata=opt(
            "nucleus sampling: the smallest set of tokens with probability >= P", min=0, max=1, min_open=True
        ),
    )
    beam: int | None = field(
        default=None,
        metadata=opt("beam search of width W (most probable continuation)", min=1, max=4096, metavar="W"),
    )
    length_penalty: float = field(default=1.0, metadata=opt("beam ranking: logprob / length**P", min=0))
    repetition_penalty: float = field(
        default=1.0,
        metadata=opt(
            "divide the probability of each token the sample already holds by P; 1 = off (sampling and beam)",
            min=1,
            max=1e6,
            metavar="P",
        ),
    )
    no_repeat_ngram: int = field(
        default=0,
        metadata=opt(
            "never repeat a sequence of N tokens within a sample; 0 = off; a char model counts "
            "characters (try 12), subwords pieces (try 3) (sampling and beam)",
            min=0,
            max=1 << 20,
            metavar="N",
        ),
    )
    num_samples: int = field(
        default=1, metadata=opt("samples, generated as one batch", short="-k", min=1, max=65536)
    )
    stops: tuple[str, ...] = field(
        default=(),
        metadata=opt(
            "end a sample after this string (kept); repeatable",
            flag="--stop",
            multiple=True,
            metavar="STRING",
        ),
    )
    seed: int | None = field(
        default=None, metadata=opt("random seed for reproducible samples", min=0, max=MAX_SEED)
    )

    @property
    def temp(self) -> float:
        """The temperature in effect: 1 unless one was given."""
        return 1.0 if self.temperature is None else self.temperature

    def check(self) -> None:
        _check(all(self.stops), "--stop strings must not be empty")
        if self.beam is not None:
            _check(
                not (self.temperature or self.top_k or self.top_p),  # else silently ignored
                "--beam is deterministic search: it cannot be combined with --temp > 0, --top-k or --top-p",
            )
            _check(
                self.num_samples <= self.beam,
                f"--num-samples {self.num_samples} needs --beam of at least that width "
                f"(beam search returns its {self.beam} best)",
            )


@dataclass(frozen=True)
class ComputeConfig(_Validated):
    """How ``eval`` and ``score`` compute (their text and checkpoint are command arguments)."""

    threads: int | None = field(default=None, metadata=THREADS)


def _known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(sorted(map(str, unknown)))}")
    return dict(data)
