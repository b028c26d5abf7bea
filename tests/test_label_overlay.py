"""The label overlay: labels of an atlas the user may not write, kept beside it, never lost or hidden."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from atlas import open_atlas
from atlas.cli import cli
from atlas.labels import add_user_label, label_target
from atlas.overlay import LabelOverlay, OverlayError
from tests.conftest import query, sha256_of

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "atlas.db.example"


def ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_label_on_the_bundled_example_goes_to_the_overlay(runner: CliRunner, own_label_overlays: Path) -> None:
    """No --db: the bundled example. It is never written; the label is kept, found and searchable."""
    before = sha256_of(EXAMPLE)
    out = ok(runner.invoke(cli, ["label", "L26.res/260", "kings and queens", "--kind", "semantic"]))
    assert "in your label overlay" in out and "(the bundled example is read-only)" in out
    assert sha256_of(EXAMPLE) == before
    (overlay,) = own_label_overlays.iterdir()
    assert overlay.stat().st_size < 200_000  # a small file, not a copy of the atlas
    assert "kings and queens" in ok(runner.invoke(cli, ["show", "L26.res/260"]))
    found = json.loads(ok(runner.invoke(cli, ["search", "--label", "queens", "--json"])))
    assert [(r["feature"], r["stored_in"]) for r in found] == [("L26.res/260", "overlay")]
    assert "your label overlay" in ok(runner.invoke(cli, ["label", "--where"]))
    assert sha256_of(EXAMPLE) == before


def test_a_moved_or_migrated_copy_finds_the_same_overlay(
    runner: CliRunner, tmp_path: Path, own_label_overlays: Path
) -> None:
    ok(runner.invoke(cli, ["label", "L8.res/7", "my note"]))
    moved = tmp_path / "somewhere" / "else.db"
    moved.parent.mkdir()
    shutil.copyfile(EXAMPLE, moved)
    listed = json.loads(ok(runner.invoke(cli, ["label", "--list", "L8.res/7", "--db", str(moved), "--json"])))
    assert ("my note", "overlay") in [(r["text"], r["stored_in"]) for r in listed]
    upgraded = tmp_path / "mine.db"
    ok(runner.invoke(cli, ["migrate", "-o", str(upgraded)]))
    listed = json.loads(ok(runner.invoke(cli, ["label", "--list", "L8.res/7", "--db", str(upgraded), "--json"])))
    assert ("my note", "overlay") in [(r["text"], r["stored_in"]) for r in listed]
    # the upgraded copy is the user's own writable file: labels now go into it, and the output says so
    assert "in the atlas file" in ok(runner.invoke(cli, ["label", "L8.res/7", "in the file", "--db", str(upgraded)]))
    assert len(list(own_label_overlays.iterdir())) == 1


def test_export_and_merge_fold_the_overlay_in(runner: CliRunner, tmp_path: Path) -> None:
    ok(runner.invoke(cli, ["label", "L2.res/5", "early note", "--kind", "semantic"]))
    ok(runner.invoke(cli, ["label", "L26.res/9", "late note"]))
    whole = tmp_path / "whole.db"
    out = ok(runner.invoke(cli, ["export", "--sae", "L2.res", "--sae", "L26.res", "--with-overlay", str(whole)]))
    assert "folded 2 overlay labels in" in out
    rows = query(
        whole,
        "SELECT feature, text, kind, source FROM labels_view WHERE source = 'user' ORDER BY text",
    )
    assert rows == [("L2.res/5", "early note", "semantic", "user"), ("L26.res/9", "late note", "free", "user")]
    with open_atlas(whole) as atlas:  # a new atlas: its own identity, so no overlay shows twice
        assert [lab.stored_in for lab in atlas.labels(atlas.resolve_feature("L2.res/5")) if lab.source == "user"] == [
            "atlas"
        ]
    early, late, both = tmp_path / "early.db", tmp_path / "late.db", tmp_path / "both.db"
    out = ok(runner.invoke(cli, ["export", "--sae", "L2.res", "--with-overlay", str(early)]))
    assert "folded 1 overlay label in (1 of features not in it left out)" in out
    ok(runner.invoke(cli, ["export", "--sae", "L26.res", str(late)]))
    assert query(late, "SELECT COUNT(*) FROM labels WHERE source = 'user'") == [(0,)]  # not asked for
    out = ok(runner.invoke(cli, ["merge", str(early), str(late), "-o", str(both), "--with-overlay"]))
    assert query(both, "SELECT feature, text FROM labels_view WHERE source = 'user'") == [("L2.res/5", "early note")]


def test_export_refuses_to_write_over_the_bundled_example(runner: CliRunner) -> None:
    before = sha256_of(EXAMPLE)
    line = one_line_error(runner.invoke(cli, ["export", "--sae", "L2.res", "--force", str(EXAMPLE)]))
    assert "bundled example" in line
    assert "bundled example" in one_line_error(runner.invoke(cli, ["migrate"]))
    assert sha256_of(EXAMPLE) == before


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from atlas import open_atlas
    from atlas.labels import add_user_label
    path, tag, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    while not go.exists():
        time.sleep(0.005)
    for i in range(n):
        with open_atlas(path) as atlas:
            add_user_label(atlas, f"L2.res/{i % 7}", f"{tag} {i}")
    """
)


@pytest.mark.parametrize("where", ["overlay", "atlas"])
def test_two_processes_labelling_at_once_keep_every_label(
    where: str, synthetic_atlas: Path, tmp_path: Path, own_label_overlays: Path
) -> None:
    """Two real processes add labels at the same moment; every one of them is kept."""
    if where == "overlay":
        os.chmod(synthetic_atlas, 0o444)  # a read-only file: labels go to the overlay
    n = 40
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(synthetic_atlas), tag, str(n), str(go)], env=env)
        for tag in ("first", "second")
    ]
    time.sleep(1.0)  # both imported and waiting
    go.touch()
    try:
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
    finally:
        os.chmod(synthetic_atlas, 0o644)
        for p in procs:
            p.kill()
    with open_atlas(synthetic_atlas) as atlas:
        labels = [
            lab.text
            for i in range(7)
            for lab in atlas.labels(atlas.resolve_feature(f"L2.res/{i}"))
            if lab.source == "user" and lab.stored_in == where
        ]
    assert sorted(labels) == sorted(f"{tag} {i}" for tag in ("first", "second") for i in range(n))
    assert bool(list(own_label_overlays.iterdir())) == (where == "overlay")


def _overlay_with_a_label(synthetic_atlas: Path) -> tuple[LabelOverlay, Path]:
    os.chmod(synthetic_atlas, 0o444)
    try:
        with open_atlas(synthetic_atlas) as atlas:
            add_user_label(atlas, "L2.res/1", "mine")
            return atlas.overlay_store(), synthetic_atlas
    finally:
        os.chmod(synthetic_atlas, 0o644)


def test_a_damaged_overlay_is_one_clear_line(runner: CliRunner, synthetic_atlas: Path) -> None:
    overlay, _ = _overlay_with_a_label(synthetic_atlas)
    overlay.path.write_bytes(b"garbage" * 100)
    line = one_line_error(runner.invoke(cli, ["show", "L2.res/1", "--db", str(synthetic_atlas)]))
    assert str(overlay.path) in line and "move it away" in line


def test_an_overlay_of_another_atlas_or_with_foreign_triggers_is_refused(synthetic_atlas: Path) -> None:
    overlay, path = _overlay_with_a_label(synthetic_atlas)
    with sqlite3.connect(overlay.path) as c:
        c.execute("CREATE TRIGGER sneaky AFTER INSERT ON labels BEGIN DELETE FROM labels; END")
    with open_atlas(path) as atlas:
        assert [lab.text for lab in atlas.labels(atlas.resolve_feature("L2.res/1")) if lab.source == "user"] == ["mine"]
        with pytest.raises(OverlayError, match="did not put there"):
            atlas.overlay_store().add(2, "L2.res/1", "more")
    with sqlite3.connect(overlay.path) as c:
        c.execute("DROP TRIGGER sneaky")
        c.execute("UPDATE overlay_info SET atlas_id = ?", ("0" * 32,))
    with open_atlas(path) as atlas, pytest.raises(OverlayError, match="another atlas"):
        atlas.labels(atlas.resolve_feature("L2.res/1"))


def test_the_rule_is_predictable(synthetic_atlas: Path, tmp_path: Path) -> None:
    with open_atlas(synthetic_atlas) as atlas:
        assert label_target(atlas).where == "atlas"
        assert label_target(atlas, force_overlay="--overlay").where == "overlay"
    os.chmod(synthetic_atlas, 0o444)
    try:
        with open_atlas(synthetic_atlas) as atlas:
            t = label_target(atlas)
            assert (t.where, t.reason) == ("overlay", "the file is read-only")
    finally:
        os.chmod(synthetic_atlas, 0o644)
    with open_atlas(EXAMPLE) as atlas:
        t = label_target(atlas)
        assert (t.where, t.reason) == ("overlay", "the bundled example is read-only")
    copy = tmp_path / "v1-copy.db"
    shutil.copyfile(ROOT / "tests" / "data" / "example_v1.db", copy)  # a real v1 atlas (a slice of the old example)
    with open_atlas(copy) as atlas:
        t = label_target(atlas)
        assert t.where == "overlay" and "schema version 1" in t.reason
