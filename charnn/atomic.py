"""Writing a file atomically: the one helper every module uses (metrics rewind, the corpus
cache's records, the surprisal page, exported checkpoints).

The data goes to a temporary file in the same directory (so the rename cannot cross file
systems), is flushed to disk, and is renamed over the target with ``os.replace`` (atomic on
POSIX and Windows): a reader sees the old file or the new one, never a torn one. The temporary
name is unique (``mkstemp``), so two writers never share one; it is removed if anything fails.
The new file gets the permissions a plain ``open`` would give (mkstemp's 0600 would hide a
page from a web server).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], data: bytes | str, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8, ``\\n`` line ends kept).
    ``durable``: fsync the file before the rename (a crash then leaves old or new, not empty)."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
