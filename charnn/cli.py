"""The ``charnn`` command line: thin click commands that delegate to the library.

Heavy modules (torch, numpy) are imported inside commands so ``charnn --help``
starts instantly. stdout carries only generated text or requested data;
everything for people goes to stderr. Errors become one line and an exit code
(see ``charnn.errors``); ``CHARNN_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from charnn import __version__
from charnn.errors import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_SIGINT, EXIT_USAGE, CharnnError, ConfigError

ENC_ERRORS = click.Choice(["strict", "replace", "ignore"])
POS_INT = click.IntRange(min=1)
NONNEG_INT = click.IntRange(min=0)
CKPT_HELP = "Checkpoint: a run directory (uses best/, else latest/) or one checkpoint directory."


def _given(ctx: click.Context, mapping: dict[str, str]) -> dict[str, Any]:
    """Options the user actually typed (not defaults), renamed to config field names."""
    out = {}
    for param, field in mapping.items():
        source = ctx.get_parameter_source(param)
        if source is not None and source.name not in ("DEFAULT",) and ctx.params[param] is not None:
            out[field] = ctx.params[param]
    return out


class _StdoutClosed(Exception):
    """stdout's reader went away (``| head``). Not an OSError: click's main() turns an EPIPE
    OSError into exit 1 even with standalone_mode=False, and charnn promises exit 0."""


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            raise _StdoutClosed() from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="charnn")
def cli() -> None:
    """Train character-level RNN language models on any text and generate from them.

    \b
      charnn train corpus.txt            train (progress on stderr, checkpoints in ./checkpoints)
      charnn sample --temp 0.8           generated text on stdout, nothing else
      charnn eval held-out.txt --json    loss and bits per character
      charnn score lines.txt --json      per-line log-probabilities
      charnn info                        what a checkpoint holds
      charnn corpora                     public-domain corpora to fetch and train on
    """


# ---------------------------------------------------------------------------- train

_MODEL_OPTS = {
    "cell": "cell",
    "layers": "layers",
    "hidden": "hidden",
    "embed": "embed",
    "dropout": "dropout",
    "tie_weights": "tie_weights",
}
_TRAIN_OPTS = {
    "batch_size": "batch_size",
    "seq_len": "seq_len",
    "lr": "lr",
    "weight_decay": "weight_decay",
    "warmup": "warmup_steps",
    "grad_clip": "grad_clip",
    "steps": "steps",
    "epochs": "epochs",
    "time_": "time_limit",
    "decay_steps": "decay_steps",
    "eval_every": "eval_every",
    "eval_chars": "eval_chars",
    "save_every": "save_every",
    "val_fraction": "val_fraction",
    "seed": "seed",
    "device": "device",
    "precision": "precision",
    "max_bad_steps": "max_bad_steps",
}


@cli.command()
@click.argument("files", nargs=-1, type=click.Path())
@click.option("-o", "--out", default="checkpoints", show_default=True, help="Run directory for checkpoints.")
@click.option(
    "--resume",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[DIR]",
    help="Continue the run in DIR (default: --out) from its latest checkpoint, exactly.",
)
@click.option("--force", is_flag=True, help="Start a new run even if --out already holds one (replaces it).")
@click.option("--cell", type=click.Choice(["lstm", "gru", "rnn"]), help="Recurrent cell.  [default: lstm]")
@click.option("--layers", type=POS_INT, help="Recurrent layers.  [default: 2]")
@click.option("--hidden", type=POS_INT, help="Hidden units per layer.  [default: 256]")
@click.option("--embed", type=POS_INT, help="Embedding size.  [default: 64]")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), help="Dropout.  [default: 0]")
@click.option("--tie-weights", is_flag=True, default=None, help="Share embedding and output weights.")
@click.option("--tokenizer", type=click.Choice(["char", "sentencepiece"]), default="char", show_default=True)
@click.option(
    "--vocab-size",
    type=click.IntRange(min=8),
    default=2000,
    show_default=True,
    help="SentencePiece vocabulary size.",
)
@click.option("--batch-size", type=POS_INT, help="Parallel streams per batch.  [default: 16]")
@click.option("--seq-len", type=POS_INT, help="TBPTT window length.  [default: 128]")
@click.option(
    "--lr", type=click.FloatRange(min=0, min_open=True), help="Peak learning rate.  [default: 5e-3]"
)
@click.option("--weight-decay", type=click.FloatRange(min=0), help="AdamW weight decay.  [default: 0.01]")
@click.option("--warmup", type=NONNEG_INT, help="Warm-up steps.  [default: 50]")
@click.option("--grad-clip", type=click.FloatRange(min=0), help="Gradient-norm clip, 0 = off.  [default: 1]")
@click.option("--steps", type=POS_INT, help="Train for N steps (total for the run).")
@click.option(
    "--epochs", type=click.FloatRange(min=0, min_open=True), help="Train for F passes over the data."
)
@click.option("--time", "time_", metavar="DURATION", help="Train for a time: 90s, 5m, 2h.  [default: 5m]")
@click.option("--decay-steps", type=POS_INT, help="Cosine decay horizon in steps.  [default: run length]")
@click.option("--eval-every", type=POS_INT, help="Validate every N steps.  [default: 250]")
@click.option("--eval-chars", type=POS_INT, help="Validate on at most N tokens.  [default: 200000]")
@click.option("--save-every", type=POS_INT, help="Save latest/ every N steps.  [default: 500]")
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    help="Held-out fraction from the end.  [default: 0.05]",
)
@click.option("--seed", type=int, help="Random seed.  [default: 1337]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), help="[default: auto]")
@click.option(
    "--precision", type=click.Choice(["fp32", "bf16"]), help="bf16 autocast (CUDA).  [default: fp32]"
)
@click.option(
    "--max-bad-steps",
    type=POS_INT,
    help="Non-finite steps in a row before restoring the last checkpoint.  [default: 10]",
)
@click.option(
    "--encoding-errors",
    type=ENC_ERRORS,
    default="strict",
    show_default=True,
    help="What to do with invalid UTF-8 in the corpus.",
)
@click.pass_context
def train(
    ctx: click.Context,
    files: tuple[str, ...],
    out: str,
    resume: str | None,
    force: bool,
    tokenizer: str,
    vocab_size: int,
    encoding_errors: str,
    time_: str | None,
    **_: Any,
) -> None:
    """Train a model on FILES (text files, directories, or - for stdin).

    With no FILES, trains on Python's documentation topics that ship with CPython. A FILE that
    is not a path but a name from 'charnn corpora' is fetched into the cache when needed.
    """
    from charnn.runs import start_training

    model_opts = _given(ctx, _MODEL_OPTS)
    train_opts = _given(ctx, _TRAIN_OPTS)
    if "time_limit" in train_opts:
        from charnn.config import parse_duration

        train_opts["time_limit"] = parse_duration(train_opts["time_limit"])
    start_training(
        files=list(files),
        out=out,
        resume=resume,
        force=force,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        encoding_errors=encoding_errors,
        model_opts=model_opts,
        train_opts=train_opts,
    )


# ---------------------------------------------------------------------------- sample


@cli.command()
@click.option("-c", "--checkpoint", default="checkpoints", show_default=True, help=CKPT_HELP)
@click.option(
    "-n",
    "--length",
    type=NONNEG_INT,
    default=500,
    show_default=True,
    help="Characters (tokens) to generate per sample, at most.",
)
@click.option(
    "-t",
    "--temp",
    type=click.FloatRange(min=0),
    default=None,
    help="Temperature; 0 = greedy.  [default: 1.0]",
)
@click.option("--top-k", type=POS_INT, help="Sample only from the K most likely tokens.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), help="Nucleus sampling mass P.")
@click.option("--beam", type=POS_INT, help="Beam search of width W (most probable continuation).")
@click.option(
    "--length-penalty",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Beam ranking: logprob / length**P.",
)
@click.option("--prime", default=None, help="Text to start from (printed first).")
@click.option(
    "--prime-file", type=click.File("r", encoding="utf-8"), help="Read the prime from a file (- = stdin)."
)
@click.option("--stop", "stops", multiple=True, help="End a sample after this string (kept). Repeatable.")
@click.option(
    "-k", "--num-samples", type=POS_INT, default=1, show_default=True, help="Samples, run as one batch."
)
@click.option("--separator", default="\n\n", show_default=repr("\n\n"), help="Printed between samples.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per sample per line.")
@click.option("--seed", type=int, help="Random seed for reproducible samples.")
@click.pass_context
def sample(
    ctx: click.Context,
    checkpoint: str,
    length: int,
    temp: float | None,
    top_k: int | None,
    top_p: float | None,
    beam: int | None,
    length_penalty: float,
    prime: str | None,
    prime_file: Any,
    stops: tuple[str, ...],
    num_samples: int,
    separator: str,
    as_json: bool,
    seed: int | None,
) -> None:
    """Generate text from a trained model; only the text goes to stdout."""
    if prime is not None and prime_file is not None:
        raise ConfigError("--prime and --prime-file cannot be combined")
    if beam is not None and ((temp is not None and temp > 0) or top_k or top_p):
        raise ConfigError(
            "--beam is deterministic search: it cannot be combined with --temp > 0, --top-k or --top-p"
        )
    if prime_file is not None:
        prime = prime_file.read()
    from charnn.config import SampleConfig
    from charnn.runs import run_sampling

    config = SampleConfig(
        length=length,
        temperature=1.0 if temp is None else temp,
        top_k=top_k,
        top_p=top_p,
        beam=beam,
        length_penalty=length_penalty,
        num_samples=num_samples,
        stops=stops,
        seed=seed,
    )
    run_sampling(checkpoint, config, prime or "", separator, as_json)


# ---------------------------------------------------------------------------- eval / score / info


@cli.command(name="eval")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option(
    "-c",
    "--checkpoint",
    "checkpoints",
    multiple=True,
    default=("checkpoints",),
    show_default=True,
    help=CKPT_HELP + " Repeatable: one result per checkpoint.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per checkpoint per line.")
@click.option("--encoding-errors", type=ENC_ERRORS, default="strict", show_default=True)
@click.option(
    "--html",
    type=click.Path(dir_okay=False),
    help="Also write a self-contained surprisal page (two -c: compare them).",
)
@click.option(
    "--top-k",
    type=click.IntRange(1, 20),
    default=3,
    show_default=True,
    help="Predictions shown per character on the --html page.",
)
def eval_(
    files: tuple[str, ...],
    checkpoints: tuple[str, ...],
    as_json: bool,
    encoding_errors: str,
    html: str | None,
    top_k: int,
) -> None:
    """Loss and bits per character of the model(s) on FILES (- = stdin)."""
    from charnn.runs import run_eval

    rows = run_eval(list(checkpoints), list(files), encoding_errors, html=html, top_k=top_k)
    for row in rows:
        if as_json:
            click.echo(json.dumps(row))
        else:
            where = f"  checkpoint {row['checkpoint']}" if len(rows) > 1 else ""
            click.echo(
                f"bpc {row['bpc']:.4f}  loss {row['loss']:.4f}  chars {row['chars']}  "
                f"tokens {row['tokens']}{where}"
            )


@cli.command()
@click.argument("files", nargs=-1, type=click.Path())
@click.option("-c", "--checkpoint", default="checkpoints", show_default=True, help=CKPT_HELP)
@click.option("--context", default=None, help="Text each line is conditioned on.  [default: a newline]")
@click.option("--whole", is_flag=True, help="Score each input as one text instead of line by line.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input line.")
@click.option("--encoding-errors", type=ENC_ERRORS, default="strict", show_default=True)
def score(
    files: tuple[str, ...],
    checkpoint: str,
    context: str | None,
    whole: bool,
    as_json: bool,
    encoding_errors: str,
) -> None:
    """Log-probability and bpc of each line of FILES (default: stdin), e.g. to rank candidates."""
    from charnn.runs import run_score

    for row in run_score(checkpoint, list(files) or ["-"], context, encoding_errors, whole):
        if as_json:
            click.echo(json.dumps(row, ensure_ascii=False))
        else:
            click.echo(f"{row['logprob']:.4f}\t{row['bpc']:.4f}\t{row['text']}")


@cli.command()
@click.option("-c", "--checkpoint", default="checkpoints", show_default=True, help=CKPT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON.")
def info(checkpoint: str, as_json: bool) -> None:
    """Show what a checkpoint holds: model, vocabulary, progress, validation."""
    from charnn.runs import checkpoint_info

    data = checkpoint_info(checkpoint)
    if as_json:
        click.echo(json.dumps(data, indent=1))
    else:
        for key, value in data.items():
            click.echo(f"{key:16} {value}")


# ---------------------------------------------------------------------------- corpora

CACHE_HELP = (
    "Download directory.  [default: $CHARNN_CACHE, else $XDG_CACHE_HOME/charnn, else ~/.cache/charnn]"
)


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per corpus per line.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help=CACHE_HELP)
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
    from charnn.runs import list_corpora

    for row in list_corpora(cache_dir):
        if as_json:
            click.echo(json.dumps(row, ensure_ascii=False))
        else:
            size = f"{row['size'] / 1e6:.1f} MB" if row["size"] else "?"
            builtin = row["url"].startswith("builtin:")
            verified = "sha256" if row["sha256"] else ("builtin" if builtin else "no")
            cached = "cached" if row["cached"] else ""
            click.echo(
                f"{row['name']:20} {row['language']:3} {size:>8}  {verified:8} {cached:7} "
                f"{row['description']}"
            )


@corpora.command()
@click.argument("name")
@click.option("--cache-dir", type=click.Path(file_okay=False), help=CACHE_HELP)
@click.option("--no-verify", is_flag=True, help="Fetch a corpus whose registry entry has no sha256.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds without data before giving up.",
)
def fetch(name: str, cache_dir: str | None, no_verify: bool, timeout: float) -> None:
    """Download corpus NAME into the cache (resumable, sha256-checked); print its path."""
    from charnn.runs import fetch_corpus

    click.echo(fetch_corpus(name, cache_dir, verify=not no_verify, timeout=timeout))


# ---------------------------------------------------------------------------- entry point


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

    from charnn.errors import EXIT_SIGTERM, Interrupted

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted("terminated", EXIT_SIGTERM)

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. embedded use)
        pass


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the CLI, map failures to one line and an exit code."""
    # Before numpy loads (its OpenBLAS reads this once): sampling's one-row matrix products gain
    # nothing from a second thread and collapse when spin-waiting threads compete for busy cores.
    # Torch's own threads (training) are governed by OMP/MKL settings, deliberately left alone.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from charnn.console import error

    debug = os.environ.get("CHARNN_DEBUG") == "1"
    code = 0
    _terminate_like_interrupt()
    try:
        result = cli.main(args=argv, prog_name="charnn", standalone_mode=False)
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
    except CharnnError as exc:
        if debug:
            raise
        error(str(exc))
        code = exc.exit_code
    except MemoryError:
        if debug:
            raise
        error("out of memory: try a smaller --batch-size, --hidden or corpus")
        code = EXIT_ERROR
    except Exception as exc:
        if debug:
            raise
        error(f"internal error: {type(exc).__name__}: {exc} (set CHARNN_DEBUG=1 for the traceback)")
        code = EXIT_ERROR
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
    sys.exit(code)
