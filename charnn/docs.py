"""The option tables of the docs, derived from the click commands (themselves derived from the
config dataclasses), so the docs cannot drift from ``--help``.

``python -m charnn.docs docs/usage.md docs/environment.md`` rewrites every block between
``<!-- options: COMMAND -->`` and ``<!-- /options -->`` in the files named, and the table of
environment variables between ``<!-- envvars -->`` and ``<!-- /envvars -->``; ``make readme``
runs it on both and tests check that they are up to date.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

USAGE = Path(__file__).resolve().parent.parent / "docs" / "usage.md"
_BLOCK = re.compile(r"(<!-- options: ([\w-]+) -->\n)(.*?)(<!-- /options -->)", re.S)
_ENV_BLOCK = re.compile(r"(<!-- envvars -->\n)(.*?)(<!-- /envvars -->)", re.S)
_DEFAULT = re.compile(r"\s*\[default: (.*?)\]$")


def _row(param: click.Option) -> str:
    names = "/".join(sorted(param.opts, key=len))
    metavar = "" if param.is_flag else f" {param.make_metavar(click.Context(click.Command('x')))}"
    metavar = metavar.replace("[", "").replace("]", "").replace("|", "\\|")
    meaning = param.help or ""
    default = ""
    found = _DEFAULT.search(meaning)
    if found:
        default, meaning = found.group(1), meaning[: found.start()]
    elif param.show_default and param.default not in (None, False, ()):
        default = str(param.default)
    if param.multiple:
        meaning += " (repeatable)" if "repeatable" not in meaning else ""
    default = default.replace("\n", "\\n")
    return f"| `{names}{metavar}` | {f'`{default}`' if default else ''} | {meaning} |"


def options_table(command: str) -> str:
    """Markdown table of ``charnn COMMAND``'s options, in ``--help`` order."""
    from charnn.cli import cli

    cmd = cli.commands[command]
    rows = [_row(p) for p in cmd.params if isinstance(p, click.Option) and not p.hidden]
    return "\n".join(["| option | default | meaning |", "| --- | --- | --- |", *rows]) + "\n"


def render(readme: str) -> str:
    """``readme`` with every options block regenerated."""
    from charnn import envvars
    from charnn.cli import cli

    readme = _BLOCK.sub(lambda m: m.group(1) + options_table(m.group(2)) + m.group(4), readme)
    return _ENV_BLOCK.sub(lambda m: m.group(1) + envvars.table(cli) + m.group(3), readme)


def main(argv: list[str]) -> int:
    for path in [Path(name) for name in argv] or [USAGE]:
        text = path.read_text(encoding="utf-8")
        new = render(text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"{path}: option tables updated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
