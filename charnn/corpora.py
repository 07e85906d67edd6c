"""Known public-domain corpora: a registry file, a cache directory, and a careful downloader.

The registry (``charnn/assets/corpora.json``, package data read with importlib.resources so a
wheel carries it, or ``$CHARNN_CORPORA_REGISTRY``) lists
each corpus with its URL, size, sha256 and licence. ``fetch`` downloads into the cache under a
temporary name, resumes it with an HTTP Range request (or starts over when the server ignores
Range), checks the size and sha256, and only then renames it into place: the final name only ever
holds a complete, verified file. urllib only; no new dependency.

Every download is bounded: by the registry's size, else by :data:`MAX_UNSIZED`. A server that
announces more is refused before anything is written, one that sends more is cut off (and the
part discarded), and the free space of the cache is checked first. What arrived before a
dropped connection (a plain or a chunked transfer), a timeout or a stall is kept and the next
fetch resumes it; only a complete download whose sha256 differs is discarded. A server slower
than :data:`MIN_RATE` bytes/s over a ``--timeout`` window is given up on, like a silent one.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charnn import __version__
from charnn.errors import CharnnError, ConfigError, DataError

if TYPE_CHECKING:  # importlib.resources.abc is 3.11+; only the annotation needs it
    from importlib.resources.abc import Traversable

BUILTIN_PREFIX = "builtin:"
_CHUNK = 1 << 16
MAX_UNSIZED = 1 << 30  # bytes: the bound of a download whose size the registry does not give
MIN_RATE = 1024  # bytes/s over each --timeout window: slower is a stalled server
# python.org's macOS builds ship without trusted root certificates until this is run once.
TLS_HINT = (
    "this Python trusts no certificate authority: on macOS with python.org's Python run "
    "'Install Certificates.command' (in /Applications/Python 3.x), or set SSL_CERT_FILE"
)
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
Progress = Callable[[int, "int | None"], None]  # (bytes so far, total bytes or None)


@dataclass(frozen=True)
class CorpusEntry:
    name: str
    url: str
    size: int | None  # bytes; None when not recorded
    sha256: str | None  # None: the registry cannot vouch for the content
    language: str
    licence: str
    description: str

    @property
    def builtin(self) -> bool:
        return self.url.startswith(BUILTIN_PREFIX)

    @property
    def verified(self) -> bool:
        return self.sha256 is not None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def registry_path() -> Path | Traversable:
    """``$CHARNN_CORPORA_REGISTRY``, else the registry shipped inside the package."""
    override = os.environ.get("CHARNN_CORPORA_REGISTRY")
    if override:
        return Path(override)
    return resources.files("charnn") / "assets" / "corpora.json"


def _entry(raw: Any, where: Path | Traversable) -> CorpusEntry:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: each corpus must be an object")
    try:
        entry = CorpusEntry(**{k: raw[k] for k in CorpusEntry.__dataclass_fields__})
    except KeyError as exc:
        raise DataError(f"{where}: corpus {raw.get('name')!r} lacks {exc.args[0]!r}") from None
    ok = (
        isinstance(entry.name, str)
        and _NAME.fullmatch(entry.name)
        and isinstance(entry.url, str)
        and (entry.builtin or entry.url.startswith(("http://", "https://")))
        and (entry.size is None or (isinstance(entry.size, int) and entry.size >= 0))
        and (entry.sha256 is None or bool(re.fullmatch(r"[0-9a-f]{64}", str(entry.sha256))))
    )
    if not ok:
        raise DataError(f"{where}: malformed entry for corpus {raw.get('name')!r}")
    return entry


def load_registry(path: Path | Traversable | None = None) -> list[CorpusEntry]:
    path = path or registry_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"{path}: corpus registry not found (set CHARNN_CORPORA_REGISTRY)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable corpus registry ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != "charnn-corpora" or data.get("version") != 1:
        raise DataError(f"{path}: not a charnn corpus registry (format charnn-corpora, version 1)")
    return [_entry(raw, path) for raw in data.get("corpora", [])]


def find_entry(name: str, entries: list[CorpusEntry]) -> CorpusEntry:
    for entry in entries:
        if entry.name == name:
            return entry
    from charnn.locate import close_match

    guess = close_match(name, [e.name for e in entries])
    known = f"did you mean {guess}?" if guess else "known: " + ", ".join(e.name for e in entries)
    raise ConfigError(f"unknown corpus {name!r}; {known} (see 'charnn corpora')")


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """--cache-dir, else $CHARNN_CACHE, else $XDG_CACHE_HOME/charnn, else ~/.cache/charnn."""
    from charnn.corpus_cache import default_cache_dir

    return Path(override) if override else default_cache_dir()


def cached_path(entry: CorpusEntry, cache: Path) -> Path:
    return cache / f"{entry.name}.txt"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _open(url: str, offset: int, timeout: float) -> Any:
    """The response for ``url`` from byte ``offset`` (a Range request when offset > 0)."""
    headers = {"User-Agent": f"charnn/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _resumed(response: Any, offset: int) -> bool:
    """True when the server honoured our Range request from ``offset``."""
    if not offset or response.status != 206:
        return False
    return bool(re.match(rf"bytes {offset}-\d+/", response.headers.get("Content-Range", "")))


class _TooMuch(Exception):
    """The server sent more than the download's bound."""


class _TooSlow(Exception):
    """The server sent less than MIN_RATE bytes/s over a --timeout window."""


def _download(
    url: str, part: Path, timeout: float, progress: Progress | None, limit: int = MAX_UNSIZED
) -> None:
    """Append the rest of ``url`` to ``part`` (or rewrite it when the server ignores Range),
    never past ``limit`` bytes in all."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # our partial file is not a prefix of this one: start over
            part.unlink()
            return _download(url, part, timeout, progress, limit)
        raise CharnnError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    with response:
        if not _resumed(response, offset):
            offset = 0  # a full response: start the temporary file over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        if total is not None and total > limit:
            raise DataError(f"{url}: the server announces {total:,} bytes, more than the {limit:,} expected")
        _check_space(part.parent, (total if total is not None else 0) - offset)
        try:
            done = _receive(response, part, offset, total, limit, timeout, progress)
        except _TooMuch:
            part.unlink(missing_ok=True)
            raise DataError(
                f"{url}: the server sent more than the {limit:,} bytes expected; discarded"
            ) from None
    if total is not None and done < total:
        raise CharnnError(
            f"{url}: connection closed after {done:,} of {total:,} bytes; "
            "run the same command again to resume"
        )
    return None


def _receive(
    response: Any,
    part: Path,
    offset: int,
    total: int | None,
    limit: int,
    timeout: float,
    progress: Progress | None,
) -> int:
    """Write the body to ``part`` as it arrives; the bytes in ``part`` at the end. A dropped
    chunked transfer keeps what arrived; a server slower than MIN_RATE raises _TooSlow."""
    done = offset
    window = max(timeout, 1e-3)
    since, arrived = time.monotonic(), 0
    with open(part, "ab" if offset else "wb") as f:
        try:
            while chunk := response.read1(_CHUNK):  # what has arrived, not a full 64 KiB
                if done + len(chunk) > limit:
                    raise _TooMuch
                f.write(chunk)
                done += len(chunk)
                arrived += len(chunk)
                if progress:
                    progress(done, total)
                now = time.monotonic()
                if now - since >= window:
                    if arrived < MIN_RATE * (now - since):
                        f.flush()
                        raise _TooSlow(f"{arrived:,} bytes in {now - since:.1f}s")
                    since, arrived = now, 0
        except http.client.IncompleteRead as exc:  # a chunked transfer cut short
            if done + len(exc.partial) > limit:
                raise _TooMuch from None
            f.write(exc.partial)
            done += len(exc.partial)
            raise CharnnError(
                f"{response.url}: connection closed after {done:,} bytes; "
                "run the same command again to resume"
            ) from None
    return done


def _check_space(directory: Path, needed: int) -> None:
    """Refuse a download that cannot fit, before writing any of it."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return  # cannot tell: the write itself will say
    if needed > free:
        raise DataError(
            f"{directory}: not enough free space for the download ({needed:,} bytes needed, {free:,} free)"
        )


def refuse_unverifiable(entry: CorpusEntry, verify: bool) -> None:
    if verify and not entry.verified:
        raise DataError(
            f"corpus {entry.name!r} has no sha256 in the registry, so its download cannot be verified; "
            "pass --no-verify to fetch it anyway (charnn corpora fetch --no-verify NAME)"
        )


def fetch(
    entry: CorpusEntry,
    cache: Path,
    verify: bool = True,
    timeout: float = 60.0,
    progress: Progress | None = None,
) -> Path:
    """Download ``entry`` into ``cache`` (a no-op when it is already there) and return its path."""
    final = cached_path(entry, cache)
    if final.exists():
        return final
    refuse_unverifiable(entry, verify)
    cache.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    limit = entry.size if entry.size is not None else MAX_UNSIZED
    try:
        _download(entry.url, part, timeout, progress, limit)
    except _TooSlow as exc:
        raise CharnnError(
            f"{entry.url}: too slow ({exc}, under {MIN_RATE:,} bytes/s); "
            "what arrived is kept: run the same command again to resume"
        ) from None
    except TimeoutError:
        raise CharnnError(
            f"{entry.url}: timed out after {timeout:g}s without data; run the same command again to resume"
        ) from None
    except urllib.error.URLError as exc:
        reason = exc.reason if isinstance(exc.reason, str) else getattr(exc.reason, "strerror", None)
        if isinstance(exc.reason, TimeoutError):
            reason = f"timed out after {timeout:g}s"
        if isinstance(exc.reason, ssl.SSLCertVerificationError):
            reason = f"{exc.reason.verify_message or 'certificate verify failed'}; {TLS_HINT}"
        raise CharnnError(f"{entry.url}: cannot download ({reason or exc.reason})") from None
    except (OSError, http.client.HTTPException) as exc:
        raise CharnnError(
            f"{entry.url}: download failed ({exc}); run the same command again to resume"
        ) from None
    _check(entry, part, verify)
    os.replace(part, final)
    return final


def _check(entry: CorpusEntry, part: Path, verify: bool) -> None:
    """Keep a download that is short of the registry's size (a dropped connection the server did
    not announce: resumed next time); refuse an empty one; refuse (and discard) a whole one whose
    sha256 differs from the registry's."""
    size = part.stat().st_size
    if entry.size is not None and size < entry.size:
        raise CharnnError(
            f"{entry.url}: connection closed after {size:,} of {entry.size:,} bytes; "
            "run the same command again to resume"
        )
    if size == 0:
        part.unlink()
        raise DataError(f"{entry.url}: the server sent no data")
    if not verify:
        return
    digest = _sha256(part)
    if (entry.size is not None and size != entry.size) or digest != entry.sha256:
        part.unlink()
        raise DataError(
            f"{entry.name}: downloaded file does not match the registry (sha256 {digest}, {size:,} bytes; "
            f"expected {entry.sha256}, {entry.size if entry.size is not None else '?'} bytes); discarded"
        )


def resolve_names(files: list[str], fetcher: Callable[[CorpusEntry], Path]) -> list[str]:
    """Replace arguments that are registry names (and not existing paths) by their cached files."""
    if not any(f != "-" and not Path(f).exists() and _NAME.fullmatch(f) for f in files):
        return files
    try:
        entries = load_registry()
    except DataError:
        return files  # no usable registry: the missing path is reported as before
    names = {e.name: e for e in entries}
    out = []
    for f in files:
        entry = names.get(f) if f != "-" and not Path(f).exists() else None
        if entry is None:
            _refuse_near_miss(f, names)
            out.append(f)
        elif entry.builtin:
            out.append(entry.url)
        else:
            out.append(str(fetcher(entry)))
    return out


def _refuse_near_miss(name: str, names: dict[str, CorpusEntry]) -> None:
    """A missing path that is nearly a registry name is a typo of it: say which."""
    from charnn.locate import close_match

    if name == "-" or Path(name).exists() or not _NAME.fullmatch(name):
        return
    guess = close_match(name, names)
    if guess is not None:
        raise DataError(f"{name}: no such file or corpus; did you mean {guess}? (see 'charnn corpora')")


def corpora_table(rows: list[dict[str, Any]]) -> str:
    """``charnn corpora`` as aligned columns under a header. An entry without a sha256 is marked:
    its download cannot be checked, so it needs ``--no-verify``."""
    from charnn.console import shown

    header = ("name", "lang", "size", "checked", "cached", "description")
    body = []
    for row in rows:
        size = f"{row['size'] / 1e6:.1f} MB" if row["size"] else "?"
        builtin = row["url"].startswith(BUILTIN_PREFIX)
        checked = "sha256" if row["sha256"] else ("builtin" if builtin else "UNVERIFIED")
        body.append(
            (
                row["name"],
                row["language"],
                size,
                checked,
                "cached" if row["cached"] else "",
                shown(row["description"]),
            )
        )
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header) - 1)]
    lines = [
        "  ".join(
            [
                *(
                    c.rjust(w) if i == 2 else c.ljust(w)
                    for i, (c, w) in enumerate(zip(r, widths, strict=False))
                ),
                r[-1],
            ]
        )
        for r in [header, *body]
    ]
    if any(r[3] == "UNVERIFIED" for r in body):
        lines.append(
            "UNVERIFIED: the registry has no size or sha256 for it, so a download cannot be checked; "
            "fetch it with --no-verify"
        )
    return "\n".join(line.rstrip() for line in lines)
