"""Schema 3 (Neuronpedia agreement and activation examples, and their views): a migrated v2 atlas is exactly a
new one, every view reads through the atlas's own defensive connection, and export / merge carry the new tables
(and still read a v2 atlas, which lacks them)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from atlas import SCHEMA_VERSION, create_atlas, migrate, open_atlas
from atlas.cli import cli
from atlas.migrations import V3_INDEXES, V3_TABLES, V3_VIEWS
from tests.conftest import query
from tests.neuronpedia_fixtures import activation, explanation, feature_row, link, write_export
from tests.schema_versions import as_v3
from tests.test_schema_v2 import schema_of


def as_v2(path: Path) -> Path:
    """The file as schema 2 left it: schema 3 only adds objects, so removing them gives the v2 file."""
    if query(path, "PRAGMA user_version") == [(4,)]:
        as_v3(path)
    conn = sqlite3.connect(path)
    for view in reversed(V3_VIEWS):
        conn.execute(f"DROP VIEW {view}")
    for index in V3_INDEXES:
        conn.execute(f"DROP INDEX {index}")
    for table in V3_TABLES:
        conn.execute(f"DROP TABLE {table}")
    conn.execute("DELETE FROM schema_migrations WHERE version >= 3")
    conn.execute("UPDATE atlas_info SET schema_version = 2")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def v2_atlas(synthetic_atlas: Path) -> Path:
    return as_v2(synthetic_atlas)


def test_migrating_v2_gives_exactly_the_v3_schema_and_keeps_every_row(v2_atlas: Path, tmp_path: Path) -> None:
    with open_atlas(v2_atlas) as old:
        assert old.schema_version == 2
        counts = old.counts()
    assert [v for v, _ in migrate(v2_atlas)] == list(range(3, SCHEMA_VERSION + 1))
    fresh = tmp_path / "fresh.db"
    create_atlas(fresh).close()
    assert schema_of(v2_atlas) == schema_of(fresh)
    assert query(v2_atlas, "SELECT version FROM schema_migrations ORDER BY version") == [
        (v,) for v in range(1, SCHEMA_VERSION + 1)
    ]
    with open_atlas(v2_atlas) as new:
        assert new.schema_version == SCHEMA_VERSION and new.counts() == counts


def test_every_view_reads_through_the_atlas_own_read_only_connection(synthetic_atlas: Path, tmp_path: Path) -> None:
    """trusted_schema is off for readers: a view over a virtual table (an FTS index) would fail to read."""
    _imported(synthetic_atlas, tmp_path)
    views = [r[0] for r in query(synthetic_atlas, "SELECT name FROM sqlite_master WHERE type = 'view'")]
    assert {"neuronpedia_view", "activation_examples_view"} <= set(views)
    with open_atlas(synthetic_atlas) as atlas:
        assert atlas.conn.execute("PRAGMA trusted_schema").fetchone()[0] == 0
        for view in views:
            atlas.conn.execute(f"PRAGMA table_xinfo({view})").fetchall()
            assert atlas.conn.execute(f"SELECT * FROM {view} LIMIT 3").fetchall() is not None, view
        url = tuple(
            atlas.conn.execute("SELECT neuronpedia_url FROM neuronpedia_view WHERE feature = 'L2.res/1'").fetchone()
        )
        assert url == ("https://www.neuronpedia.org/synth-model/2-res-synth/1",)


def test_a_v2_atlas_opens_read_only_and_labels_go_to_the_overlay(v2_atlas: Path, runner: CliRunner) -> None:
    r = runner.invoke(cli, ["--db", str(v2_atlas), "label", "L2.res/1", "mine"])
    assert r.exit_code == 0 and "label overlay" in r.output and "schema version 2" in r.output
    r = runner.invoke(cli, ["--db", str(v2_atlas), "show", "L2.res/1"])  # no schema 3 tables: no section, no error
    assert r.exit_code == 0 and "Neuronpedia" not in r.output


def _imported(atlas: Path, tmp_path: Path) -> Path:
    link(atlas)
    folder = write_export(
        tmp_path / "np",
        explanations=[[explanation(i, f"imported {i}") for i in range(3)]],
        features=[[feature_row(i, [("a", 2.0), ("b", 1.0)], []) for i in range(3)]],
        activations=[[activation(i, [" x", " y"], [0.5, 1.0 + i]) for i in range(3)]],
    )
    r = CliRunner().invoke(cli, ["--db", str(atlas), "import", "neuronpedia", str(folder), "--activations", "1"])
    assert r.exit_code == 0, r.output
    return atlas


_BY_NAME = {
    "neuronpedia_agreement": "SELECT fn.name, a.pos_shared, a.pos_str FROM neuronpedia_agreement a "
    "JOIN feature_names fn USING (feature_id) ORDER BY 1",
    "activation_examples": "SELECT fn.name, e.rank, e.tokens, e.acts FROM activation_examples e "
    "JOIN feature_names fn USING (feature_id) ORDER BY 1, 2",
}


def test_export_and_merge_carry_agreement_and_examples(synthetic_atlas: Path, tmp_path: Path) -> None:
    atlas = _imported(synthetic_atlas, tmp_path)
    runner = CliRunner()
    early, late, both = tmp_path / "early.db", tmp_path / "late.db", tmp_path / "both.db"
    for sae, out in (("L2.res", early), ("L6.res", late)):
        assert runner.invoke(cli, ["--db", str(atlas), "export", "--sae", sae, str(out)]).exit_code == 0
    assert runner.invoke(cli, ["merge", str(late), str(early), "-o", str(both)]).exit_code == 0
    for table, sql in _BY_NAME.items():
        want = query(atlas, sql)
        assert len(want) == 3, table
        assert query(early, sql) == want and query(late, sql) == [], table
        assert query(both, sql) == want, table  # renumbered feature ids, same features


def test_export_and_merge_still_read_a_v2_atlas(v2_atlas: Path, synthetic_atlas_master: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "from-v2.db"
    r = runner.invoke(cli, ["--db", str(v2_atlas), "export", "--sae", "L2.res", str(out)])
    assert r.exit_code == 0, r.output
    assert query(out, "SELECT COUNT(*) FROM neuronpedia_agreement") == [(0,)]
    first = as_v2(out)  # a v2 file holding L2.res; then a v3 one holding L6.res, with imported rows
    v3 = _imported(shutil.copyfile(synthetic_atlas_master, tmp_path / "v3.db"), tmp_path)
    late = tmp_path / "late.db"
    assert runner.invoke(cli, ["--db", str(v3), "export", "--sae", "L6.res", str(late)]).exit_code == 0
    merged = tmp_path / "m.db"
    r = runner.invoke(cli, ["merge", str(first), str(late), "-o", str(merged)])
    assert r.exit_code == 0, r.output
    # the first file's schema (2) is the merged one's: every row of the shared tables, no schema-3 tables
    assert query(merged, "SELECT name FROM saes ORDER BY name") == [("L2.res",), ("L6.res",)]
    assert query(merged, "PRAGMA user_version") == [(2,)]
    assert not query(merged, "SELECT 1 FROM sqlite_master WHERE name = 'neuronpedia_agreement'")
