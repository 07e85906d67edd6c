"""Every option reads CHARNN_<COMMAND>_<FLAG> (derived from its flag, charnn.envvars), the docs
name exactly those variables, and a bad value is a usage error naming the variable."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from charnn import envvars
from charnn.cli import cli
from charnn.errors import EXIT_USAGE

DOC = Path(__file__).resolve().parent.parent / "docs" / "environment.md"


def _documented() -> list[tuple[str, str, list[str]]]:
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.fullmatch(r"\| `(charnn[\w -]*)` \| `(--[\w-]+)` \| (.*) \|", line)
        if m:
            rows.append((m.group(1), m.group(2), re.findall(r"`(\w+)`", m.group(3))))
    return rows


def _valid_text(option: click.Option) -> str:
    """A value the option accepts, as text in the environment."""
    kind = option.type
    if option.is_flag:
        return "1"
    if isinstance(kind, click.Choice):
        return str(kind.choices[-1])
    if isinstance(kind, (click.IntRange, click.FloatRange)):
        low = kind.min if kind.min is not None else 0
        return str(int(low) + 1 if isinstance(kind, click.IntRange) else low + 0.5)
    if getattr(kind, "name", "") in ("duration",):
        return "90s"
    return "x"


def _context(command_path: str) -> click.Context:
    ctx = click.Context(cli, info_name="charnn", auto_envvar_prefix="CHARNN")  # as charnn.cli.main runs it
    command: click.Command = cli
    for name in command_path.split()[1:]:
        assert isinstance(command, click.Group)
        command = command.commands[name]
        ctx = click.Context(command, info_name=name, parent=ctx)
    return ctx


def test_docs_list_every_option_with_the_variable_it_reads():
    assert envvars.table(cli) in DOC.read_text(encoding="utf-8")  # `make readme` regenerates it
    documented = _documented()
    assert len(documented) >= 60
    for command_path, flag, names in documented:
        ctx = _context(command_path)
        commands = [ctx.command]
        if isinstance(ctx.command, click.Group):  # a hidden default subcommand is named after its group
            hidden = [(n, c) for n, c in ctx.command.commands.items() if c.hidden]
            commands += [c for _, c in hidden]
        owner = next(
            c for c in commands if any(flag in p.opts for p in c.params if isinstance(p, click.Option))
        )
        if owner is not ctx.command:
            ctx = click.Context(owner, info_name=owner.name, parent=ctx)
        option = next(p for p in owner.params if isinstance(p, click.Option) and flag in p.opts)
        assert names[0] == envvars.variable(command_path.split()[1:], flag)
        for name in names:  # each documented variable alone is read, as the option's value
            with pytest.MonkeyPatch.context() as mp:
                for other in names:
                    mp.delenv(other, raising=False)
                mp.setenv(name, _valid_text(option))
                value, source = option.consume_value(ctx, {})
                assert source == click.core.ParameterSource.ENVIRONMENT, (command_path, flag, name)
                option.type_cast_value(ctx, value)


@pytest.mark.parametrize(
    ("variable", "args"),
    [
        ("CHARNN_SAMPLE_TEMP", ["sample", "-c", "nowhere"]),
        ("CHARNN_TRAIN_TIME", ["train", "nowhere.txt"]),
        ("CHARNN_RUNS_JSON", ["runs"]),
        ("CHARNN_SAMPLE_SEED", ["sample", "-c", "nowhere"]),
    ],
)
def test_bad_value_is_a_usage_error_naming_the_variable(run_cli, tmp_path, variable, args):
    proc = run_cli(*args, env={variable: "abc"}, cwd=tmp_path)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert variable in proc.stderr and "Traceback" not in proc.stderr


def test_readme_example_sample_temp_is_read(run_cli, trained_run):
    greedy = run_cli("sample", "-c", trained_run, "--temp", "0", "--length", "60", "--seed", "1")
    from_env = run_cli(
        "sample", "-c", trained_run, "--length", "60", "--seed", "2", env={"CHARNN_SAMPLE_TEMP": "0"}
    )
    assert greedy.returncode == from_env.returncode == 0
    assert from_env.stdout == greedy.stdout


def test_eval_reads_charnn_checkpoint(run_cli, trained_run, corpus_file, tmp_path):
    proc = run_cli("eval", corpus_file, "--json", env={"CHARNN_CHECKPOINT": str(trained_run)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert str(trained_run) in proc.stdout


def test_command_line_wins_over_environment(run_cli, trained_run):
    proc = run_cli(
        "sample", "-c", trained_run, "--length", "5", "--seed", "1", env={"CHARNN_SAMPLE_LENGTH": "9"}
    )
    assert proc.returncode == 0 and len(proc.stdout) == 5
    proc = run_cli("sample", "-c", trained_run, "--length", "5", env={"CHARNN_SAMPLE_SEED": "1"})
    again = run_cli("sample", "-c", trained_run, "--length", "5", "--seed", "1")
    assert proc.stdout == again.stdout


def test_embedded_use_reads_only_the_shared_names(trained_run):
    """charnn.train() and other embedders run the commands without charnn's entry point: the
    per-command variables are the command line's business, not the library's."""
    from click.testing import CliRunner

    result = CliRunner().invoke(
        cli, ["sample", "--length", "5", "--seed", "1"],
        env={"CHARNN_SAMPLE_LENGTH": "abc", "CHARNN_CHECKPOINT": str(trained_run)},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(result.stdout) == 5
