"""`sae-atlas browse` on bad files: one line, exit 1, before the app starts."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from click.testing import CliRunner

from atlas.cli import cli
from tui.testing import build_fixture_atlas


@pytest.fixture(scope="module")
def fixture_db(tmp_path_factory):
    return build_fixture_atlas(tmp_path_factory.mktemp("cli") / "fixture.db", n_features=40, d_vocab=200)


def bad_files(tmp_path, fixture_db):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)  # right magic, corrupt body
    plain = tmp_path / "plain.db"
    with sqlite3.connect(plain) as c:
        c.execute("CREATE TABLE t (x)")
    new = tmp_path / "new.db"
    shutil.copy(fixture_db, new)
    with sqlite3.connect(new) as c:
        c.execute("PRAGMA user_version = 99")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    return {
        "missing": (tmp_path / "missing.db", "no such file"),
        "corrupt": (junk, "corrupt"),
        "not an atlas": (plain, "not an atlas"),
        "too new": (new, "newer than this sae-atlas"),
        "text file": (text, "not an SQLite database"),
    }


def test_browse_bad_files_one_line_exit_1(tmp_path, fixture_db):
    for what, (path, msg) in bad_files(tmp_path, fixture_db).items():
        r = CliRunner().invoke(cli, ["browse", str(path)])
        assert r.exit_code == 1, what
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:") and msg in lines[0], (what, r.output)


def test_browse_bad_keymap_one_line(tmp_path, fixture_db):
    km = tmp_path / "k.toml"
    km.write_text("this is = = not toml")
    r = CliRunner().invoke(cli, ["browse", str(fixture_db), "--keymap", str(km)])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and "keymap" in r.output


def test_browse_help_has_example():
    r = CliRunner().invoke(cli, ["browse", "-h"])
    assert r.exit_code == 0 and "Example:" in r.output and "--read-only" in r.output


def test_browse_on_a_damaged_overview_exits_1_with_one_line(tmp_path, fixture_db, monkeypatch):
    """The issue: a text d_vocab crashed the overview with a traceback and exit 0."""
    from tui.app import SaeAtlasApp

    damaged = tmp_path / "damaged.db"
    shutil.copy(fixture_db, damaged)
    with sqlite3.connect(damaged) as c:
        c.execute("UPDATE models SET d_vocab = 'many'")
    c.close()
    real_run = SaeAtlasApp.run
    monkeypatch.setattr(SaeAtlasApp, "run", lambda self, **kw: real_run(self, headless=True, size=(100, 30)))
    r = CliRunner().invoke(cli, ["browse", str(damaged), "--no-history"])
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "d_vocab is text 'many'" in lines[0] and "Traceback" not in r.output, r.output
