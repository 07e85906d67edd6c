"""charnn: character-level recurrent language models, from the command line and from Python.

Importing this package is cheap (no torch): the CLI's ``--help`` must start fast, and the
Python API (:mod:`charnn.api`: ``load``, ``train``, ``Model``, ``Run``) is imported on first use.
The version is the installed distribution's (pyproject.toml is its one source).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from charnn.api import Model, Run, Score, load, train

__all__ = ["Model", "Run", "Score", "__version__", "load", "train"]

try:
    __version__ = version("charnn")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    """The API's names, imported when first used (PEP 562)."""
    if name in ("Model", "Run", "Score", "load", "train"):
        from charnn import api

        return getattr(api, name)
    raise AttributeError(f"module 'charnn' has no attribute {name!r}")
