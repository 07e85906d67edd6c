"""Exceptions that carry charnn's documented exit codes.

Library code raises these; the CLI turns them into a one-line message and the
exit code. Anything else that escapes is a bug (exit 1, traceback only with
``CHARNN_DEBUG=1``).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_DIVERGED = 4
EXIT_BUSY = 5
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class CharnnError(Exception):
    """Base class: a problem the user can act on, reported in one line."""

    exit_code = EXIT_ERROR


class ConfigError(CharnnError):
    """Impossible or contradictory options."""

    exit_code = EXIT_USAGE


class DataError(CharnnError):
    """A corpus or input text that cannot be used (missing, empty, binary, bad UTF-8...)."""

    exit_code = EXIT_BAD_INPUT


class VocabularyError(DataError):
    """Text holding characters a checkpoint's vocabulary lacks (resume suggests ``--init-from``)."""


def located(exc: CharnnError, where: str) -> CharnnError:
    """The same kind of error with ``where`` (a file, a line) in front of its message."""
    return type(exc)(f"{where}: {exc}")


class CheckpointError(CharnnError):
    """A checkpoint that is missing, corrupt, foreign, or not charnn's format."""

    exit_code = EXIT_BAD_INPUT


class DivergedError(CharnnError):
    """Training kept producing non-finite values even after recovery."""

    exit_code = EXIT_DIVERGED


class RunBusyError(CharnnError):
    """Another process holds the run directory's lock (it is training or saving there)."""

    exit_code = EXIT_BUSY


class Interrupted(CharnnError):
    """Stopped by SIGINT (130) or SIGTERM (143) after saving what could be saved."""

    def __init__(self, message: str, exit_code: int = EXIT_SIGINT) -> None:
        super().__init__(message)
        self.exit_code = exit_code
