"""Environment variables for every option: ``CHARNN_<COMMAND>_<FLAG>``, derived here, in one place.

The name comes from the option's long flag as the user types it (``charnn sample --temp`` reads
``CHARNN_SAMPLE_TEMP``, ``charnn train --time`` reads ``CHARNN_TRAIN_TIME``), not from the Python
parameter behind it. A few options also read a short name shared by every command that has them
(``CHARNN_CHECKPOINT`` for ``-c``, ``CHARNN_DEVICE``, ``CHARNN_OUT``): the command's own variable
wins over the shared one, and the command line over both. A value that does not parse is a usage
error (exit 2) that names the variable, flags included (``CHARNN_RUNS_JSON=abc``).
:func:`assign` is applied once to the whole command tree by :mod:`charnn.cli`;
:func:`variables` lists what it assigned, for the docs and their test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import click

PREFIX = "CHARNN"
_TRUE = ("1", "true", "yes", "on", "y", "t")
_FALSE = ("0", "false", "no", "off", "n", "f")


def variable(command_path: list[str], flag: str) -> str:
    """``CHARNN_<COMMAND>_<FLAG>``: e.g. (["corpora", "fetch"], "--no-verify") ->
    ``CHARNN_CORPORA_FETCH_NO_VERIFY``."""
    parts = [PREFIX, *command_path, flag.lstrip("-")]
    return "_".join(p.upper().replace("-", "_") for p in parts)


def long_flag(option: click.Option) -> str:
    """The option's longest spelling (``--temp`` of ``-t/--temp``)."""
    return max(option.opts, key=len)


class EnvOption(click.Option):
    """A click option whose environment value is checked like a typed one, and whose errors
    name the variable when the value came from the environment. The derived variable is read
    only when charnn's own entry point runs the command (``charnn.cli.main`` sets click's
    ``auto_envvar_prefix``); embedded use (``charnn.train()``) reads only the shared names."""

    shared_envvars: tuple[str, ...] = ()

    def _names(self, ctx: click.Context | None) -> list[str]:
        names = [self.envvar] if isinstance(self.envvar, str) else list(self.envvar or ())
        if ctx is not None and ctx.auto_envvar_prefix is None:
            return [n for n in names if n in self.shared_envvars]
        return names

    def _variable_used(self, ctx: click.Context | None = None) -> str | None:
        return next((n for n in self._names(ctx) if os.environ.get(n)), None)

    def resolve_envvar_value(self, ctx: click.Context) -> str | None:
        name = self._variable_used(ctx)
        return os.environ[name] if name else None

    def get_error_hint(self, ctx: click.Context | None) -> str:
        source = ctx.get_parameter_source(self.name) if ctx is not None and self.name else None
        used = self._variable_used(ctx) if source == click.core.ParameterSource.ENVIRONMENT else None
        if used is not None:
            return f"environment variable {used}"
        return super().get_error_hint(ctx)

    def value_from_envvar(self, ctx: click.Context) -> Any:
        raw = self.resolve_envvar_value(ctx)
        if raw is not None and self.is_flag and raw.strip().lower() not in _TRUE + _FALSE:
            used = self._variable_used(ctx)
            raise click.BadParameter(
                f"{raw!r} is not one of {'/'.join(_TRUE[:4])} or {'/'.join(_FALSE[:4])}",
                ctx=ctx,
                param_hint=f"environment variable {used}",
            )
        return super().value_from_envvar(ctx)


def _commands(group: click.Command, path: list[str]) -> Iterator[tuple[list[str], click.Command]]:
    """(the path its variables are named after, command). A hidden subcommand is its group's
    default action (``charnn classify -m X`` runs ``classify apply``): named after the group."""
    yield path, group
    if isinstance(group, click.Group):
        for name, command in sorted(group.commands.items()):
            yield from _commands(command, path if command.hidden else [*path, name])


def _options(command: click.Command) -> Iterator[click.Option]:
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden and param.expose_value:
            if param.name not in ("help",):
                yield param


def assign(root: click.Group) -> None:
    """Give every option of every command its ``CHARNN_<COMMAND>_<FLAG>`` variable (first), keeping
    a shared short name it already had (second). The root group's own options (``--version``)
    are eager actions, not settings: they get none."""
    for path, command in _commands(root, []):
        if not path:
            continue
        for option in _options(command):
            shared = [option.envvar] if isinstance(option.envvar, str) else list(option.envvar or ())
            option.envvar = [variable(path, long_flag(option)), *shared]
            option.__class__ = EnvOption  # the same option, checked and named as above
            option.shared_envvars = tuple(shared)  # type: ignore[attr-defined]
            option.allow_from_autoenv = False  # only the names above, never a parameter-derived one


def variables(root: click.Group) -> list[tuple[str, str, list[str]]]:
    """(``charnn COMMAND``, flag, variables read in order) for every option, in --help order."""
    rows = []
    for path, command in _commands(root, []):
        for option in _options(command):
            if path and option.envvar:
                names = [option.envvar] if isinstance(option.envvar, str) else list(option.envvar)
                rows.append((" ".join(["charnn", *path]), long_flag(option), names))
    return rows


def table(root: click.Group) -> str:
    """Markdown table of every variable (docs/environment.md is generated from it)."""
    lines = ["| command | option | variable(s), first wins |", "| --- | --- | --- |"]
    for command, flag, names in variables(root):
        lines.append(f"| `{command}` | `{flag}` | {', '.join(f'`{n}`' for n in names)} |")
    return "\n".join(lines) + "\n"
