"""charnn: character-level recurrent language models from the command line.

Importing this package is cheap (no torch): the CLI's ``--help`` must start fast.
The version is the installed distribution's (pyproject.toml is its one source).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("charnn")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
