"""What docs/platforms.md promises for Windows and macOS users, where it can be checked here."""

from __future__ import annotations

import ssl
import urllib.error
from pathlib import Path

import pytest

from charnn import corpora
from charnn.corpora import CorpusEntry
from charnn.errors import CharnnError


def test_missing_tls_roots_say_how_to_install_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """python.org's macOS Python has no root certificates until 'Install Certificates.command' runs."""
    failure = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    failure.verify_message = "unable to get local issuer certificate"

    def refuse(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError(failure)

    monkeypatch.setattr(corpora.urllib.request, "urlopen", refuse)
    entry = CorpusEntry("x", "https://example.invalid/x.txt", None, None, "en", "pd", "x")
    with pytest.raises(CharnnError, match="Install Certificates.command"):
        corpora.fetch(entry, tmp_path, verify=False)


def test_cache_location_follows_the_documented_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CHARNN_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert corpora.cache_dir() == Path.home() / ".cache" / "charnn"  # Windows: %USERPROFILE%\\.cache\\charnn
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert corpora.cache_dir() == tmp_path / "xdg" / "charnn"
    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path / "c"))
    assert corpora.cache_dir() == tmp_path / "c"
    assert corpora.cache_dir(tmp_path / "flag") == tmp_path / "flag"


def test_no_posix_only_calls_in_the_package() -> None:
    """Portable code: no os.kill (signal 0 is a kill on Windows) and no fork."""
    package = Path(corpora.__file__).parent
    for source in package.glob("*.py"):
        text = source.read_text()
        assert "os.kill(" not in text and "os.fork(" not in text, source
