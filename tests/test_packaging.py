"""charnn as a package, not a checkout: package data, version, licence, changelog, the corpus
listing. (The wheel itself is built, installed and smoke-tested by .ci/wheel-smoke in CI.)"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pytest

import charnn
from charnn.corpora import load_registry, registry_path

tomllib = pytest.importorskip("tomllib")  # 3.11+
ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(charnn.__file__).resolve().parent


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_registry_is_package_data(monkeypatch):
    monkeypatch.delenv("CHARNN_CORPORA_REGISTRY", raising=False)
    path = Path(str(registry_path())).resolve()
    assert PACKAGE in path.parents  # inside the package, so a wheel carries it
    assert any(e.name == "tinyshakespeare" for e in load_registry())


def test_every_asset_is_declared_package_data():
    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["charnn"]
    for asset in (PACKAGE / "assets").iterdir():
        rel = asset.relative_to(PACKAGE).as_posix()
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), f"{rel} would be missing from the wheel"


def test_version_licence_and_changelog():
    project = _pyproject()["project"]
    major, minor, _ = (int(x) for x in project["version"].split("."))
    assert (major, minor) >= (0, 2)
    assert charnn.__version__ == project["version"]
    assert project["license"] == "MIT" and "MIT License" in (ROOT / "LICENSE").read_text()
    assert f"## {project['version']}" in (ROOT / "CHANGELOG.md").read_text()


def test_no_message_names_the_current_version_as_old():
    for source in PACKAGE.glob("*.py"):
        assert not re.search(r"charnn 0\.\d\.\d or earlier", source.read_text()), source


def test_corpora_listing_has_a_header_and_marks_unverified(run_cli):
    proc = run_cli("corpora")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["name", "lang", "size", "checked"]
    alice = next(line for line in lines if line.startswith("alice "))
    assert "UNVERIFIED" in alice and "--no-verify" in proc.stdout
    shakespeare = next(line for line in lines if line.startswith("tinyshakespeare "))
    assert "sha256" in shakespeare and "UNVERIFIED" not in shakespeare


def test_train_registry_name_uses_cache_dir(run_cli, corpus_text, tmp_path):
    """Bug: `charnn train NAME --cache-dir X` looked for (and downloaded) NAME in the default cache."""
    cache = tmp_path / "mycache"
    cache.mkdir()
    (cache / "tinyshakespeare.txt").write_text(corpus_text, encoding="utf-8")  # already fetched into X
    tiny = ["--hidden", "8", "--embed", "4", "--layers", "1", "--seq-len", "8", "--batch-size", "2"]
    proc = run_cli(
        "train",
        "tinyshakespeare",
        "--cache-dir",
        cache,
        "--steps",
        "2",
        "--out",
        tmp_path / "r",
        *tiny,
        env={"CHARNN_CORPORA_REGISTRY": ""},
    )
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "r" / "latest" / "meta.json").read_text())
    assert meta["corpus"]["sources"] == [str(cache / "tinyshakespeare.txt")]
