"""Shared fixtures: small synthetic atlases written by the tests themselves."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner

from atlas.synthetic import build_synthetic_atlas

# Small but in the real shape: 2 SAEs x 200 features, 20 tokens per phase and sign.
SYNTHETIC_KW = {"n_features": 400, "layers": (2, 6), "d_vocab": 1000, "seed": 0}


@pytest.fixture(autouse=True)
def own_label_overlays(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test gets an empty folder of label overlays: never the developer's own.

    Its own MonkeyPatch, so that a test's ``monkeypatch.undo()`` cannot undo it.
    """
    from atlas.overlay import OVERLAY_DIR_ENV

    path = tmp_path_factory.mktemp("overlays")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(OVERLAY_DIR_ENV, str(path))
        yield path


@pytest.fixture(scope="session")
def synthetic_atlas_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per session; never written to. Tests get copies (``synthetic_atlas``)."""
    path = tmp_path_factory.mktemp("atlas") / "master.db"
    build_synthetic_atlas(path, **SYNTHETIC_KW)
    return path


@pytest.fixture
def synthetic_atlas(synthetic_atlas_master: Path, tmp_path: Path) -> Path:
    """A fresh copy of a small synthetic atlas (2 SAEs, L2.res and L6.res, 200 features each) in tmp_path."""
    path = tmp_path / "atlas.db"
    shutil.copyfile(synthetic_atlas_master, path)
    return path


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def query(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Oracle reads straight from the file, independent of the atlas library."""
    conn = sqlite3.connect(f"file:{quote(Path(path).resolve().as_posix())}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()
