"""What a wheel carries: every package under atlas/, builders/ and tui/ (builders.passes ...), their data
files, and the bundled example; nothing from tests/, examples/ or benchmarks/. CI (.ci/run) builds and
installs the real wheel; this checks the declarations quickly, without building."""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

import pytest
from setuptools import find_packages

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("atlas", "builders", "tui")


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def test_every_package_of_the_three_rooms_is_installed_and_nothing_else() -> None:
    find = _config()["packages"]["find"]
    found = set(find_packages(str(ROOT), include=find["include"]))
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for room in ROOMS
        for p in (ROOT / room).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert on_disk <= found and "builders.passes" in found and "tui.screens" in found
    assert not {p for p in found if p.split(".")[0] not in ROOMS}, (
        "tests/examples/benchmarks are not packages to install"
    )


def test_every_data_file_the_code_reads_is_package_data() -> None:
    data = _config()["package-data"]
    shipped = {
        f.relative_to(ROOT).as_posix()
        for room in ROOMS
        for f in (ROOT / room).rglob("*")
        if f.is_file() and f.suffix not in (".py", ".pyc") and "__pycache__" not in f.parts
    }
    for path in shipped:
        room, rest = path.split("/", 1)
        assert any(fnmatch(rest, pattern) for pattern in data.get(room, [])), f"{path} would be left out of a wheel"


def test_the_build_hook_puts_the_example_where_bundled_example_looks() -> None:
    from atlas.bundled import PACKAGED_DIR, bundled_candidates

    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    assert '"atlas" / "_bundled"' in setup and PACKAGED_DIR == "_bundled"
    assert bundled_candidates()[0].parts[-3:] == ("atlas", "_bundled", "atlas.db.example")
    assert "include atlas.db.example" in (ROOT / "MANIFEST.in").read_text(encoding="utf-8")  # in the sdist too
