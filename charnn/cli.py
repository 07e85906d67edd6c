"""The ``charnn`` command line: thin click commands that delegate to the library.

Options of the config dataclasses are not written here: :func:`config_options` turns each
field declared with :func:`charnn.config.opt` into a click option named after the field,
with its default, choices and range, and :func:`take_config` hands the values back as that
config's fields. An option that no config and no command parameter takes is an error
(``_no_leftovers``), never silently ignored.

Heavy modules (torch, numpy) are imported inside commands so ``charnn --help`` starts
instantly. stdout carries only generated text or requested data; everything for people
goes to stderr. Errors become one line and an exit code (see ``charnn.errors``);
``CHARNN_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import click

from charnn import __version__, envvars
from charnn.config import (
    ENCODING_ERRORS,
    AdaptConfig,
    ComputeConfig,
    ModelConfig,
    Opt,
    SampleConfig,
    TokenizerConfig,
    TrainConfig,
    cli_opt,
    flag_of,
)
from charnn.console import json_line
from charnn.errors import (
    EXIT_BAD_INPUT,
    EXIT_ERROR,
    EXIT_SIGINT,
    EXIT_USAGE,
    CharnnError,
    ConfigError,
    DataError,
    Interrupted,
)

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C")
CKPT_HELP = (
    "a run directory (uses best/, else latest/) or one checkpoint directory (e.g. from charnn export); "
    "by default ./checkpoints, else the newest run below it"
)


# ---------------------------------------------------------------------------- options from the schema


class _Parsed(click.ParamType):
    """A value click cannot type by itself (a duration), read by the schema's own parser."""

    def __init__(self, parse: Callable[[str], Any], metavar: str | None) -> None:
        self.parse, self.name = parse, (metavar or "VALUE").lower()

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self.parse(value)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


class _IntRange(click.IntRange):
    def _describe_range(self) -> str:
        return _describe(self)


class _FloatRange(click.FloatRange):
    def _describe_range(self) -> str:
        return _describe(self)


def _describe(rng: click.IntRange | click.FloatRange) -> str:
    """Click's range text without the sanity caps (a year, 2**53...) that only refuse typos."""
    shown = [b if b is not None and abs(b) < 1e6 else None for b in (rng.min, rng.max)]
    if shown == [None, None]:
        return ""
    saved = rng.min, rng.max
    rng.min, rng.max = shown
    try:
        return click.FloatRange._describe_range(rng)  # type: ignore[arg-type]
    finally:
        rng.min, rng.max = saved


def _click_type(o: Opt, hint: Any) -> click.ParamType:
    if o.parse is not None:
        return _Parsed(o.parse, o.metavar)
    if o.choices is not None:
        return click.Choice(o.choices)
    base = [t for t in (typing.get_args(hint) or (hint,)) if t is not type(None)]
    if float in base:
        return _FloatRange(o.min, o.max, min_open=o.min_open, max_open=o.max_open)
    if int in base:
        return _IntRange(
            None if o.min is None else int(o.min),
            None if o.max is None else int(o.max),
            min_open=o.min_open,
            max_open=o.max_open,
        )
    return click.STRING


def _metavar(o: Opt, hint: Any) -> str | None:
    if o.metavar or o.choices:
        return o.metavar
    base = [t for t in (typing.get_args(hint) or (hint,)) if t is not type(None)]
    return "F" if float in base else "N" if int in base else "TEXT"


def _help(f: dataclasses.Field[Any], o: Opt) -> str:
    """The help text with the real default (the field's), as click's own ``[default: ...]``."""
    if o.default_text is not None:
        return f"{o.help}  [default: {o.default_text}]"
    if f.default is None or o.multiple or f.default is False or f.default is dataclasses.MISSING:
        return o.help
    value = f"{f.default:g}" if isinstance(f.default, float) else str(f.default)
    return f"{o.help}  [default: {value}]"


def config_options(cls: type, exclude: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Decorator: one click option per declared field of config dataclass ``cls``."""
    hints = typing.get_type_hints(cls)

    def decorate(func: F) -> F:
        for f in reversed(dataclasses.fields(cls)):
            o = cli_opt(f)
            if o is None or f.name in exclude:
                continue
            decls = [d for d in (o.short, flag_of(f)) if d] + [f.name]
            kwargs: dict[str, Any] = {"help": _help(f, o)}
            if bool in typing.get_args(hints[f.name]) or hints[f.name] is bool:
                kwargs.update(is_flag=True, default=f.default)
            else:
                kwargs.update(
                    type=_click_type(o, hints[f.name]),
                    metavar=_metavar(o, hints[f.name]),
                    multiple=o.multiple,
                    default=f.default if f.default is not dataclasses.MISSING else None,
                )
            if o.envvar:
                kwargs["envvar"] = o.envvar
            func = click.option(*decls, **kwargs)(func)
        return func

    return decorate


def take_config(ctx: click.Context, options: dict[str, Any], cls: type[C]) -> dict[str, Any]:
    """Remove ``cls``'s fields from ``options``; return those the user gave (command line or
    environment), not the defaults: on ``--resume`` only what was typed may change a run."""
    given = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if cli_opt(f) is None or f.name not in options:
            continue
        value = options.pop(f.name)
        source = ctx.get_parameter_source(f.name)
        if source is not None and source.name != "DEFAULT":
            given[f.name] = value
    return given


def _no_leftovers(options: dict[str, Any]) -> None:
    """Every option must have a home; one that reaches here was declared but never wired up."""
    if options:
        raise TypeError(f"options without a home: {', '.join(sorted(options))}")


def _checkpoint_default(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """``-c`` left at its default: the newest run below ./checkpoints when that holds none
    itself (see :mod:`charnn.locate`). A path the user gave is used as given."""
    source = ctx.get_parameter_source(param.name or "")
    if source is None or source.name != "DEFAULT" or ctx.resilient_parsing:
        return value
    from charnn.locate import default_checkpoint

    return tuple(default_checkpoint(v) for v in value) if param.multiple else default_checkpoint(value)


def checkpoint_option(multiple: bool = False, each: str = "") -> Callable[[F], F]:
    """``-c/--checkpoint`` (env ``CHARNN_CHECKPOINT``), declared here once for every command.
    With ``multiple``, repeatable: the command gives ``each`` (a block/row) per checkpoint (the
    env value then splits on the path separator, ``:``)."""
    help = CKPT_HELP + (f"; repeatable: {each}" if multiple else "")
    return click.option(
        "-c",
        "--checkpoint",
        "checkpoints" if multiple else "checkpoint",
        type=click.Path(),
        default=("checkpoints",) if multiple else "checkpoints",
        show_default=not multiple,
        multiple=multiple,
        metavar="PATH",
        envvar="CHARNN_CHECKPOINT",
        callback=_checkpoint_default,
        help=help + ("  [default: checkpoints]" if multiple else ""),
    )


_checkpoint_option = checkpoint_option()


def _encoding_errors_option(func: F) -> F:
    return click.option(
        "--encoding-errors",
        type=click.Choice(ENCODING_ERRORS),
        default="strict",
        show_default=True,
        help="what to do with invalid UTF-8 in the text",
    )(func)


def _cache_dir_option(func: F) -> F:
    """``--cache-dir``: one directory for downloaded corpora and encoded corpora alike."""
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False),
        default=None,
        metavar="DIR",
        help="cache for downloaded corpora (NAME.txt) and encoded corpora  "
        "[default: $CHARNN_CACHE, else $XDG_CACHE_HOME/charnn, else ~/.cache/charnn]",
    )(func)


def _json_option(help: str) -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=help)


class _StdoutClosed(Exception):
    """stdout's reader went away (``| head``). Not an OSError: click's main() turns an EPIPE
    OSError into exit 1 even with standalone_mode=False, and charnn promises exit 0."""


class _Group(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # The command line as typed, for a run's records (sys.argv is the host's when embedded).
        ctx.meta["charnn.argv"] = ["charnn", *args]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            raise _StdoutClosed() from exc


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``--version``: charnn's, and torch's with the devices it sees (torch is imported only here)."""
    if not value or ctx.resilient_parsing:
        return
    import platform

    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    click.echo(
        f"charnn {__version__} (torch {torch.__version__}, python {platform.python_version()}; "
        f"devices: {', '.join(devices)})"
    )
    ctx.exit()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show the version, torch's version and the devices it sees, and exit.",
)
def cli() -> None:
    """Train character-level RNN language models on any text and generate from them.

    \b
      charnn train corpus.txt            train (progress on stderr, checkpoints in ./checkpoints)
      charnn sample --temp 0.8           generated text on stdout, nothing else
      charnn eval held-out.txt --json    loss and bits per character
      charnn score lines.txt --json      per-line log-probabilities
      charnn info                        what a checkpoint holds
      charnn export RUN OUT              the checkpoint to share (no optimizer state)
      charnn runs                        every run under this directory, best first
      charnn plot RUN... [-o curves.png] learning curves
      charnn corpora                     public-domain corpora to fetch and train on
    """


# ---------------------------------------------------------------------------- train


@cli.command()
@click.argument("files", nargs=-1, type=click.Path())
@click.option(
    "-o",
    "--out",
    default="checkpoints",
    show_default=True,
    metavar="DIR",
    type=click.Path(file_okay=False),
    envvar="CHARNN_OUT",
    help="run directory; holds latest/, best/ and metrics.jsonl",
)
@click.option(
    "--resume",
    is_flag=False,
    flag_value="",
    default=None,
    type=click.Path(file_okay=False),
    metavar="[DIR]",
    help="continue the run in DIR (default: --out) from its latest checkpoint, exactly",
)
@click.option(
    "--init-from",
    type=click.Path(),
    metavar="PATH",
    help="start a new run (fine-tuning) from the weights of a run (its best/) or checkpoint: "
    "its model and tokenizer, new characters added; fresh optimizer and schedule",
)
@click.option("--force", is_flag=True, help="start a new run even if --out already holds one (replaces it)")
@click.option(
    "-q", "--quiet", is_flag=True, help="no progress on stderr: only warnings, errors and the final line"
)
@config_options(ModelConfig)
@config_options(TokenizerConfig)
@config_options(TrainConfig)
@_encoding_errors_option
@_cache_dir_option
@click.pass_context
def train(
    ctx: click.Context,
    files: tuple[str, ...],
    out: str,
    resume: str | None,
    init_from: str | None,
    force: bool,
    quiet: bool,
    encoding_errors: str,
    cache_dir: str | None,
    **options: Any,
) -> None:
    """Train a model on FILES (text files, directories, or - for stdin).

    With no FILES, trains on Python's documentation topics that ship with CPython. A FILE that
    is not a path but a name from 'charnn corpora' is fetched into the cache when needed.
    """
    from charnn.app import TrainRequest, start_training

    request = TrainRequest(
        files=list(files),
        out=out,
        resume=resume,
        init_from=init_from,
        force=force,
        quiet=quiet,
        argv=ctx.meta.get("charnn.argv"),
        encoding_errors=encoding_errors,
        cache_dir=cache_dir,
        model=take_config(ctx, options, ModelConfig),
        tokenizer=take_config(ctx, options, TokenizerConfig),
        train=take_config(ctx, options, TrainConfig),
    )
    _no_leftovers(options)
    start_training(request)


# ---------------------------------------------------------------------------- sample


@cli.command()
@_checkpoint_option
@config_options(SampleConfig)
@click.option("--prime", default=None, help="text to start from (printed first)")
@click.option(
    "--prime-file",
    metavar="FILE",
    help="read the prime from a file (- = stdin): its bytes as they are, at most 16 MiB",
)
@_encoding_errors_option
@click.option(
    "--prompts",
    type=click.Path(dir_okay=False, allow_dash=True),
    metavar="FILE",
    help="continue each line of FILE (- = stdin), batched; line i (from 0) uses seed --seed + i",
)
@click.option("--separator", default="\n\n", help="printed between samples  [default: '\\n\\n']")
@_json_option("one JSON object per sample per line")
@click.option(
    "-i",
    "--interactive",
    is_flag=True,
    help="write with the model at the keyboard: continue, change settings, pick the next character (:help)",
)
@click.pass_context
def sample(
    ctx: click.Context,
    checkpoint: str,
    prime: str | None,
    prime_file: str | None,
    encoding_errors: str,
    prompts: str | None,
    separator: str,
    as_json: bool,
    interactive: bool,
    **options: Any,
) -> None:
    """Generate text from a trained model; only the text goes to stdout."""
    given = take_config(ctx, options, SampleConfig)
    _no_leftovers(options)
    if interactive:
        _refuse_with_interactive(given, {"--prime-file": prime_file, "--prompts": prompts, "--json": as_json})
        from charnn.interactive import run_interactive

        run_interactive(checkpoint, SampleConfig(**given), prime or "")
        return
    if prime is not None and prime_file is not None:
        raise ConfigError("--prime and --prime-file cannot be combined")
    if prompts is not None and (prime is not None or prime_file is not None):
        raise ConfigError(
            "--prompts gives a prime per line: it cannot be combined with --prime or --prime-file"
        )
    config = SampleConfig(**given)
    if prompts is not None:
        from charnn.app import read_prompts, run_prompts

        run_prompts(checkpoint, config, read_prompts(prompts, encoding_errors), separator, as_json)
        return
    prime_name = "--prime"
    if prime_file is not None:
        from charnn.data import read_prime_file

        prime = read_prime_file(prime_file, encoding_errors)
        prime_name = f"--prime-file {'<stdin>' if prime_file == '-' else prime_file}"
    from charnn.app import run_sampling

    run_sampling(checkpoint, config, prime or "", separator, as_json, prime_name=prime_name)


def _refuse_with_interactive(given: dict[str, Any], others: dict[str, object]) -> None:
    """Options that make no sense in a keyboard session are usage errors, not silently ignored."""
    clashes = [flag for flag, value in others.items() if value]
    clashes += [
        flag for name, flag in (("beam", "--beam"), ("num_samples", "--num-samples")) if name in given
    ]
    if clashes:
        raise ConfigError(f"--interactive cannot be combined with {', '.join(clashes)}")


# ---------------------------------------------------------------------------- eval / score / info


@cli.command(name="eval")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@checkpoint_option(multiple=True, each="one result per checkpoint")
@_json_option("one JSON object per checkpoint per line")
@_encoding_errors_option
@_cache_dir_option
@click.option(
    "--html",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="also write a self-contained surprisal page (two -c: compare them)",
)
@click.option(
    "--top-k",
    type=click.IntRange(1, 20),
    default=3,
    show_default=True,
    help="predictions shown per character on the --html page",
)
@config_options(AdaptConfig)
@config_options(ComputeConfig)
@click.pass_context
def eval_(
    ctx: click.Context,
    files: tuple[str, ...],
    checkpoints: tuple[str, ...],
    as_json: bool,
    encoding_errors: str,
    cache_dir: str | None,
    html: str | None,
    top_k: int,
    **options: Any,
) -> None:
    """Loss and bits per character of the model(s) on FILES (- = stdin); --adapt adds the
    figures of a model that keeps learning from the text as it reads it."""
    from charnn.app import run_eval

    compute = ComputeConfig(**take_config(ctx, options, ComputeConfig))
    adapt = _adapt_config(ctx, options)
    rows = run_eval(
        list(checkpoints),
        list(files),
        encoding_errors,
        html=html,
        top_k=top_k,
        cache_dir=cache_dir,
        adapt=adapt,
        threads=compute.threads,
    )
    several = len(checkpoints) > 1
    for row in rows:
        click.echo(json.dumps(row.to_json()) if as_json else row.text(with_checkpoint=several))


def _adapt_config(ctx: click.Context, options: dict[str, Any]) -> AdaptConfig | None:
    """--adapt and its settings; the settings alone are a usage error (they would do nothing)."""
    given = take_config(ctx, options, AdaptConfig)
    _no_leftovers(options)
    config = AdaptConfig(**given)
    if not config.adapt:
        if given:
            flags = [flag_of(f) for f in dataclasses.fields(AdaptConfig) if f.name in given]
            raise ConfigError(f"{', '.join(flags)} only make(s) sense with --adapt")
        return None
    return config


@cli.command()
@click.argument("files", nargs=-1, type=click.Path())
@_checkpoint_option
@click.option("--context", default=None, help="text each line is conditioned on  [default: a newline]")
@click.option("--whole", is_flag=True, help="score each input as one text instead of line by line")
@_json_option("one JSON object per input line")
@_encoding_errors_option
@config_options(AdaptConfig)
@config_options(ComputeConfig)
@click.pass_context
def score(
    ctx: click.Context,
    files: tuple[str, ...],
    checkpoint: str,
    context: str | None,
    whole: bool,
    as_json: bool,
    encoding_errors: str,
    **options: Any,
) -> None:
    """Log-probability and bpc of each line of FILES (default: stdin), e.g. to rank candidates;
    with --adapt the model learns from each line after scoring it."""
    from charnn.app import run_score

    compute = ComputeConfig(**take_config(ctx, options, ComputeConfig))
    adapt = _adapt_config(ctx, options)
    rows = run_score(
        checkpoint,
        list(files) or ["-"],
        context,
        encoding_errors,
        whole,
        adapt=adapt,
        threads=compute.threads,
    )
    for row in rows:
        click.echo(json_line(row.to_json()) if as_json else row.text_line())


@cli.command()
@checkpoint_option(multiple=True, each="one block per checkpoint")
@_json_option("the metadata as JSON, one object per checkpoint per line")
def info(checkpoints: tuple[str, ...], as_json: bool) -> None:
    """Show what a checkpoint holds: model, vocabulary, progress, validation, how it was trained."""
    from charnn.app import checkpoint_info
    from charnn.run_catalog import info_lines

    for i, checkpoint in enumerate(checkpoints):
        data = checkpoint_info(checkpoint)
        if as_json:
            click.echo(json_line(data.to_json()))
        else:
            click.echo(("\n" if i else "") + "\n".join(info_lines(data)))


@cli.command()
@click.argument("run", type=click.Path())
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="replace an earlier export at OUT")
def export(run: str, out: str, force: bool) -> None:
    """Write the checkpoint to share: RUN's weights and metadata (its best/ for a run directory)
    without the optimizer state, as directory OUT. sample, eval, score, info and
    train --init-from take it; it cannot be resumed."""
    from charnn.console import note
    from charnn.export import export_checkpoint

    target = export_checkpoint(run, out, force=force)
    size = sum(f.stat().st_size for f in target.iterdir())
    shown = f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.0f} KB"
    note(f"wrote {target} ({shown}): share it; sample with: charnn sample -c {target}")


# ---------------------------------------------------------------------------- runs / plot


@cli.command()
@click.argument("directory", default=".", type=click.Path(exists=True, file_okay=False))
@_json_option("one JSON object per run per line")
def runs(directory: str, as_json: bool) -> None:
    """List every run under DIRECTORY (recursively, 6 levels; hidden directories and virtual
    environments skipped), best validation bpc first. The table is the requested output: stdout."""
    from pathlib import Path

    from charnn.console import note
    from charnn.run_catalog import list_runs, runs_table

    rows = list_runs(Path(directory), warn=note)
    if as_json:
        for row in rows:
            click.echo(json_line(row.to_json()))
    elif rows:
        click.echo(runs_table(rows))
    else:
        note(f"no runs under {directory}")


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    metavar="FILE",
    help="write a .png or .svg with matplotlib (pip install 'charnn[plot]') instead of a terminal chart",
)
@click.option(
    "--x",
    "x_axis",
    type=click.Choice(["steps", "time", "chars"]),
    default="steps",
    show_default=True,
    help="horizontal axis: training steps, wall-clock time, or characters trained on",
)
@click.option(
    "--width",
    type=click.IntRange(40, 1000),
    default=None,
    metavar="N",
    help="terminal chart width in columns  [default: the terminal's, at most 120]",
)
@click.option(
    "--height",
    type=click.IntRange(5, 200),
    default=16,
    show_default=True,
    metavar="N",
    help="terminal chart height in rows",
)
def plot(runs: tuple[str, ...], out: str | None, x_axis: str, width: int | None, height: int) -> None:
    """Train and validation bpc of RUNS (run directories) against steps, time or characters.

    Without -o, a character chart on stdout (works in any terminal or pipe).
    """
    import shutil
    from pathlib import Path

    from charnn.plotting import load_series, save_figure, text_chart

    series = load_series(list(runs), x_axis)
    if out is not None:
        save_figure(series, x_axis, Path(out))
        from charnn.console import note

        note(f"wrote {out}")
        return
    width = width or min(120, shutil.get_terminal_size((80, 24)).columns)
    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    click.echo(text_chart(series, x_axis, width=width, height=height, color=color), nl=False)


# ---------------------------------------------------------------------------- corpora


@cli.group(invoke_without_command=True)
@_json_option("one JSON object per corpus per line")
@_cache_dir_option
@click.pass_context
def corpora(ctx: click.Context, as_json: bool, cache_dir: str | None) -> None:
    """List known public-domain corpora (name, size, verified, cached, description).

    \b
      charnn corpora                       the list
      charnn corpora fetch tinyshakespeare download it into the cache (path on stdout)
      charnn train tinyshakespeare         fetch when needed, then train on it
    """
    if ctx.invoked_subcommand is not None:
        return
    from charnn.app import list_corpora

    rows = list_corpora(cache_dir)
    if as_json:
        for row in rows:
            click.echo(json_line(row))
    else:
        from charnn.corpora import corpora_table

        click.echo(corpora_table(rows))


@corpora.command()
@click.argument("name")
@_cache_dir_option
@click.option("--no-verify", is_flag=True, help="fetch a corpus whose registry entry has no sha256")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="seconds without data before giving up",
)
def fetch(name: str, cache_dir: str | None, no_verify: bool, timeout: float) -> None:
    """Download corpus NAME into the cache (resumable, sha256-checked); print its path."""
    from charnn.app import fetch_corpus

    click.echo(fetch_corpus(name, cache_dir, verify=not no_verify, timeout=timeout))


# ---------------------------------------------------------------------------- classify


class _ClassifyGroup(click.Group):
    """``charnn classify -m CLS FILES`` classifies; ``charnn classify train ...`` trains."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["apply", *args]  # the default subcommand: classifying is what classify does
        return super().parse_args(ctx, args)


@cli.group(cls=_ClassifyGroup)
def classify() -> None:
    """Tell texts apart with one character model per class (authorship, language, ...).

    \b
      charnn classify train DATA_DIR -o CLS       one model per subdirectory (the class is its name)
      charnn classify -m CLS [FILES|-]            the label and posteriors of each line
      charnn classify -m CLS --by file a.txt b.txt    ... of each file
      charnn classify -m CLS --eval LABELLED      accuracy, precision/recall, confusion matrix
      charnn classify -c en=runs/en -c fr=runs/fr -   members trained elsewhere
    """


@classify.command(name="train")
@click.argument("data_dir", type=click.Path())
@click.option("-o", "--out", required=True, metavar="DIR", help="the classifier directory to write")
@click.option("--force", is_flag=True, help="replace a classifier already in --out")
@click.option("-q", "--quiet", is_flag=True, help="no progress on stderr")
@_encoding_errors_option
@config_options(ModelConfig)
@config_options(TrainConfig)
@click.pass_context
def classify_train(
    ctx: click.Context,
    data_dir: str,
    out: str,
    force: bool,
    quiet: bool,
    encoding_errors: str,
    **options: Any,
) -> None:
    """Train one model per subdirectory of DATA_DIR (they share --time and one vocabulary)."""
    from charnn.classify import train_classifier
    from charnn.console import note, shown

    model, train = take_config(ctx, options, ModelConfig), take_config(ctx, options, TrainConfig)
    _no_leftovers(options)
    classes = train_classifier(data_dir, out, model, train, force, quiet, encoding_errors)
    note(f"classifier of {len(classes)} classes in {shown(out)}: charnn classify -m {_shell_word(out)} FILE")


@classify.command(name="apply", hidden=True)
@click.argument("files", nargs=-1, type=click.Path())
@click.option("-m", "--model", "classifier", metavar="DIR", help="a classifier from 'charnn classify train'")
@click.option(
    "-c",
    "--checkpoint",
    "members",
    multiple=True,
    metavar="LABEL=RUN",
    help="a member trained elsewhere; repeatable",
)
@click.option(
    "--by",
    type=click.Choice(["line", "file"]),
    default="line",
    show_default=True,
    help="classify each line or each file",
)
@click.option(
    "--prior",
    type=click.Choice(["uniform", "trained"]),
    default="uniform",
    show_default=True,
    help="class priors: equal, or from the training data",
)
@click.option(
    "--eval",
    "labelled",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="score against a directory laid out like DATA_DIR",
)
@_json_option("one JSON object per input (or the evaluation) on stdout")
@_encoding_errors_option
def classify_apply(
    files: tuple[str, ...],
    classifier: str | None,
    members: tuple[str, ...],
    by: str,
    prior: str,
    labelled: str | None,
    as_json: bool,
    encoding_errors: str,
) -> None:
    """Label each line (or file) of FILES (- = stdin) with the likeliest class."""
    from charnn import classify as cl

    if (classifier is None) == (not members):
        raise ConfigError("give a classifier with -m DIR, or its members with -c LABEL=RUN (at least 2)")
    model = cl.load_classifier(classifier) if classifier else cl.members_from_runs(members)
    log_prior = model.log_priors(prior, by)
    if labelled is not None:
        if files:
            raise ConfigError("--eval reads the labelled directory: give no FILES")
        result = cl.evaluate(model, labelled, by, log_prior, encoding_errors)
        click.echo(json.dumps(result.to_json()) if as_json else result.table())
        return
    for batch in cl.batches(cl.items(files, by, encoding_errors)):
        for verdict in model.classify(batch, log_prior):
            click.echo(cl.verdict_json(verdict) if as_json else cl.verdict_line(verdict))


def _shell_word(text: str) -> str:
    import shlex

    return shlex.quote(text)


# Every option reads CHARNN_<COMMAND>_<FLAG> (and its shared short name, if any): see charnn.envvars.
envvars.assign(cli)


# ---------------------------------------------------------------------------- entry point


class _GuardedStdout:
    """stdout that turns a failed write (``> /dev/full``, a full disk, a file-size limit) into a
    one-line data error; a closed pipe stays a BrokenPipeError (exit 0, like ``| head``)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.failed = False

    def _failed(self, exc: OSError) -> DataError:
        self.failed = True
        return DataError(f"stdout: cannot write the output ({exc.strerror or exc})")

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise self._failed(exc) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise self._failed(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _quiet_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def _terminate_like_interrupt() -> None:
    """SIGTERM outside the training loop (which saves first) ends quietly with exit 143."""
    import signal

    from charnn.errors import EXIT_SIGTERM

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted("terminated", EXIT_SIGTERM)

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. embedded use)
        pass


OUT_OF_MEMORY = "out of memory: try a smaller --batch-size, --hidden, --length or input"


def _is_allocation_failure(exc: BaseException) -> bool:
    """torch's own allocation failures: ``torch.OutOfMemoryError`` (CUDA) and the CPU allocator's
    ``RuntimeError: [enforce fail at alloc_cpu.cpp] ... DefaultCPUAllocator: can't allocate memory``."""
    name = type(exc).__name__
    text = str(exc)
    return name == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and ("DefaultCPUAllocator" in text or "out of memory" in text.lower())
    )


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the CLI, map failures to one line and an exit code."""
    # Before numpy loads (its OpenBLAS reads this once): sampling's one-row matrix products gain
    # nothing from a second thread and collapse when spin-waiting threads compete for busy cores.
    # Torch's own threads (training) are governed by OMP/MKL settings, deliberately left alone.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if sys.stdout is None:  # started with stdout closed (>&-): like a reader that went away
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    real_stdout, guarded = sys.stdout, _GuardedStdout(sys.stdout)
    if not _is_terminal(real_stdout):  # a terminal is never full; and input() needs the real one
        sys.stdout = guarded
    try:
        _main(argv, guarded)  # ends with sys.exit(code)
    finally:
        sys.stdout = real_stdout
        if argv is None:  # a real process (not called in-process), about to exit: its outcome is
            # reported, so a late Ctrl-C (two a few milliseconds apart) must not print a traceback
            # from a finaliser while the interpreter shuts down. (SIG_IGN would outlive an exec.)
            import signal

            signal.signal(signal.SIGINT, lambda signum, frame: None)


def _main(argv: list[str] | None, guarded: _GuardedStdout) -> None:
    from charnn.console import error, stopped

    debug = os.environ.get("CHARNN_DEBUG") == "1"
    code = 0
    _terminate_like_interrupt()
    try:
        result = cli.main(
            # The prefix marks charnn's own entry point: only then are CHARNN_<COMMAND>_<FLAG> read
            # (options never derive names from it: see charnn.envvars).
            args=argv,
            prog_name="charnn",
            standalone_mode=False,
            auto_envvar_prefix="CHARNN",
        )
        code = result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.NoArgsIsHelpError as exc:  # bare `charnn`: show the help, as --help does
        click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
        code = 0
    except click.UsageError as exc:
        command = f"charnn {exc.ctx.info_name}" if exc.ctx and exc.ctx.parent else "charnn"
        error(exc.format_message().replace("\n", " ") + f" (see '{command} --help')")
        code = EXIT_USAGE
    except click.ClickException as exc:  # e.g. a --prime-file that cannot be opened
        error(exc.format_message().replace("\n", " "))
        code = EXIT_BAD_INPUT if isinstance(exc, click.FileError) else exc.exit_code
    except (BrokenPipeError, _StdoutClosed):
        _quiet_stdout()
        code = 0
    except (KeyboardInterrupt, click.Abort):
        error("interrupted")
        code = EXIT_SIGINT
    except Interrupted as exc:  # the user stopped it: say where it stands, not a red error
        stopped(str(exc))
        code = exc.exit_code
    except CharnnError as exc:
        if debug:
            raise
        error(str(exc))
        code = exc.exit_code
    except MemoryError:
        if debug:
            raise
        error(OUT_OF_MEMORY)
        code = EXIT_ERROR
    except Exception as exc:
        if debug:
            raise
        if _is_allocation_failure(exc):
            error(OUT_OF_MEMORY)
        else:
            error(f"internal error: {type(exc).__name__}: {exc} (set CHARNN_DEBUG=1 for the traceback)")
        code = EXIT_ERROR
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        _quiet_stdout()
    except DataError as exc:  # the output could not be written (if not said already, say it)
        if code == 0:
            error(str(exc))
            code = exc.exit_code
    if guarded.failed:
        _quiet_stdout()  # what is still buffered must not fail again at exit
    sys.exit(code)
