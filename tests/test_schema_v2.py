"""Schema version 2 (and on): a migrated v1 atlas is exactly a new atlas; identity, FTS form, raw-token views."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from atlas import SCHEMA_VERSION, create_atlas, migrate, open_atlas
from atlas.migrations import label_fts_sql, v1_atlas_id
from atlas.overlay import LabelOverlay, atlas_identity
from tests.conftest import query, sha256_of

EXAMPLE = (
    Path(__file__).resolve().parent / "data" / "example_v1.db"
)  # a slice of the schema-1 example atlas as it was written


def schema_of(path: Path) -> list[tuple]:
    """Every schema object as SQLite stores it (ANALYZE's statistics aside)."""
    return query(
        path,
        "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_stat%' ORDER BY type, name",
    )


@pytest.fixture(scope="module")
def migrated_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("v1") / "example-copy.db"
    shutil.copyfile(EXAMPLE, path)
    return path


def test_migrating_the_v1_example_gives_exactly_the_current_schema(migrated_example: Path, tmp_path: Path) -> None:
    before = sha256_of(EXAMPLE)
    with open_atlas(migrated_example) as old:
        assert old.schema_version == 1
        old_id = atlas_identity(old.conn)
        counts = old.counts()
    assert [v for v, _ in migrate(migrated_example)] == list(range(2, SCHEMA_VERSION + 1))
    fresh = tmp_path / "fresh.db"
    create_atlas(fresh).close()
    assert schema_of(migrated_example) == schema_of(fresh)
    for path in (migrated_example, fresh):
        assert query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        assert query(path, "SELECT version FROM schema_migrations ORDER BY version") == [
            (v,) for v in range(1, SCHEMA_VERSION + 1)
        ]
        assert query(path, "SELECT schema_version FROM atlas_info") == [(SCHEMA_VERSION,)]
    with open_atlas(migrated_example) as new:
        # the identity a v1 file is known by is stored, so its label overlay is found again
        assert new.info_row()["atlas_id"] == old_id == atlas_identity(new.conn)
        assert new.counts() == counts
        assert new.info_row()["provenance"] == open_atlas(EXAMPLE).info_row()["provenance"]
    assert sha256_of(EXAMPLE) == before  # the shipped file is never touched


def test_labels_fts_is_the_form_sqlite_utils_and_datasette_detect(migrated_example: Path, tmp_path: Path) -> None:
    from datasette.utils import detect_fts

    migrate(migrated_example)  # a no-op after the first test; that one may run in another xdist worker

    fresh = tmp_path / "fresh.db"
    create_atlas(fresh).close()
    for path in (migrated_example, fresh):
        db = sqlite_utils.Database(path)
        assert db["labels"].detect_fts() == "labels_fts"
        assert detect_fts(db.conn, "labels") == "labels_fts"
        db.close()
    # v1 declared it in a form neither tool recognises: that is what the migration fixes
    v1 = sqlite3.connect(f"file:{EXAMPLE}?mode=ro", uri=True)
    assert sqlite_utils.Database(v1)["labels"].detect_fts() is None and detect_fts(v1, "labels") is None
    v1.close()
    assert "content=" in label_fts_sql() and label_fts_sql().count("CREATE TRIGGER") == 3


def test_the_kept_fts_text_is_what_the_installed_sqlite_utils_declares() -> None:
    """LABEL_FTS_SQL is kept as text (importing sqlite-utils at run time costs 0.13 s); it must stay
    sqlite-utils' own declaration, up to the quoting that differs between its versions."""
    from atlas.migrations import sqlite_utils_label_fts_sql
    from atlas.schema_check import normalize_sql, split_statements

    kept = [normalize_sql(s) for s in split_statements(label_fts_sql())]
    assert kept == [normalize_sql(s) for s in split_statements(sqlite_utils_label_fts_sql())]


def test_the_migrated_fts_index_holds_every_label(migrated_example: Path) -> None:
    """The rebuilt index answers as a scan of the labels table does (the oracle)."""
    migrate(migrated_example)  # a no-op after the first test; that one may run in another xdist worker
    for word in ("king", "semantic", "punctuation"):
        hits = query(migrated_example, "SELECT rowid FROM labels_fts WHERE labels_fts MATCH ? ORDER BY rowid", (word,))
        scan = query(
            migrated_example,
            "SELECT label_id FROM labels WHERE (' ' || lower(text) || ' ') GLOB ? ORDER BY label_id",
            (f"*[^a-z0-9]{word}[^a-z0-9]*",),
        )
        assert hits == scan and len(hits) > 0, word
    db = sqlite_utils.Database(migrated_example)
    rows = list(db["labels"].search("king", columns=["label_id", "text"]))
    assert rows and all("king" in r["text"].lower() for r in rows)
    db.close()


def test_token_raw_and_token_key_match_what_a_user_types(synthetic_atlas: Path) -> None:
    raw, display, key = query(synthetic_atlas, "SELECT raw, display, key FROM vocab WHERE raw LIKE ' %' LIMIT 1")[0]
    assert display.startswith("␣") and raw.startswith(" ")
    by_display = query(
        synthetic_atlas, "SELECT feature, rank FROM token_scores_view WHERE token = ? ORDER BY 1, 2", (display,)
    )
    by_raw = query(
        synthetic_atlas, "SELECT feature, rank FROM token_scores_view WHERE token_raw = ? ORDER BY 1, 2", (raw,)
    )
    assert by_raw == by_display and len(by_raw) > 0
    by_key = query(synthetic_atlas, "SELECT DISTINCT token_raw FROM token_scores_view WHERE token_key = ?", (key,))
    assert (raw,) in by_key and all(r[0].strip().casefold() == key for r in by_key)


def test_new_atlases_get_their_own_identity_and_copies_share_it(tmp_path: Path) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    create_atlas(a).close()
    create_atlas(b).close()
    ids = [query(p, "SELECT atlas_id FROM atlas_info")[0][0] for p in (a, b)]
    assert ids[0] != ids[1] and all(len(i) == 32 for i in ids)
    moved = tmp_path / "elsewhere" / "renamed.db"
    moved.parent.mkdir()
    shutil.copyfile(a, moved)
    with open_atlas(moved) as atlas:
        assert atlas_identity(atlas.conn) == ids[0]
        assert LabelOverlay.of(atlas.conn).path.name == f"{ids[0]}.db"


def test_v1_identity_is_a_stable_hash_of_the_info_row() -> None:
    with open_atlas(EXAMPLE) as atlas:
        first = atlas_identity(atlas.conn)
        assert first == v1_atlas_id(atlas.conn) == atlas_identity(atlas.conn)
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE atlas_info (id INTEGER PRIMARY KEY, sae_atlas_version, created_at, provenance)")
    conn.execute("INSERT INTO atlas_info VALUES (1, '0.1.0', '2026-01-01', '{}')")
    one = atlas_identity(conn)
    conn.execute("UPDATE atlas_info SET provenance = '{\"x\": 1}'")
    assert atlas_identity(conn) != one and len(one) == 32 and one != first


@pytest.mark.parametrize("bad", ["../../etc/passwd", "", "ABCDEF", None, b"\x80\x81"])
def test_a_damaged_atlas_id_never_names_another_path(tmp_path: Path, bad: object) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE atlas_info (id INTEGER PRIMARY KEY, atlas_id)")
    conn.execute("INSERT INTO atlas_info VALUES (1, ?)", (bad,))
    ident = atlas_identity(conn)
    assert len(ident) == 32 and all(c in "0123456789abcdef" for c in ident)
    assert LabelOverlay(ident, tmp_path).path.parent == tmp_path


def test_every_versions_objects_are_built_from_the_migrations(tmp_path: Path) -> None:
    """The frozen v1 schema plus the migrations give exactly what a new atlas holds, and the schema
    check knows every object of every version (an older atlas is not mistaken for a foreign one)."""
    from atlas.db import create_atlas, open_atlas
    from atlas.migrations import SCHEMA_VERSION, version_objects

    versions = version_objects()
    assert sorted(versions) == list(range(1, SCHEMA_VERSION + 1))
    create_atlas(tmp_path / "new.db").close()
    conn = sqlite3.connect(tmp_path / "new.db")
    fresh = tuple(
        sorted(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))
    )
    conn.close()
    assert versions[SCHEMA_VERSION] == fresh
    with open_atlas(EXAMPLE) as old:  # a real v1 atlas (a slice of the old example): nothing foreign, nothing shadowed
        assert old.schema_version == 1
        assert (old.schema.refused, old.schema.write_refused, old.schema.changed_views) == ([], [], [])
