"""Hostile and damaged atlases, made from a clean synthetic one with plain sqlite3.

Each case is a function that changes a fresh copy of the clean atlas in
place. Three categories: ``hostile`` (schema objects that would run code or
answer in sae-atlas's place: triggers, views in place of tables, changed
views, foreign keys and generated columns that are not sae-atlas's),
``damaged`` (wrong types, NULLs, malformed JSON, bytes that are not UTF-8,
corrupt full-text indexes, values too large, a truncated file) and ``files``
(the shapes a file can arrive in: WAL with a -wal log but no -shm, WAL
without a log, extra objects of the user's own).

``RECURSIVE`` is a view body that never ends: any command that reads through
it without a deadline hangs.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

RECURSIVE = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"
CRITERIA = {
    "predicts_tokens": {"column": "du_top1_z", "tau": 6.0, "how": "random-quantile", "quantile": 0.99,
                        "n_random": 64},
    "reads_tokens": {"column": "ee_top1_z", "tau": 5.0, "how": "fixed"},
}  # fmt: skip
FEATURE = "L2.res/3"  # the feature the damage cases hit, and the one the commands look at


def _conn(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def _fid(c: sqlite3.Connection, name: str = FEATURE) -> int:
    sae, idx = name.split("/")
    return c.execute(
        "SELECT feature_id FROM features JOIN saes USING (sae_id) WHERE name = ? AND idx = ?", (sae, int(idx))
    ).fetchone()[0]


def _edit_schema(c: sqlite3.Connection, name: str, old: str, new: str) -> None:
    """Change the stored CREATE text of ``name`` (the table's rows are untouched; SQLite reloads the schema)."""
    (sql,) = c.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()
    assert old in sql, (name, old)
    c.execute("PRAGMA writable_schema = ON")
    c.execute("UPDATE sqlite_master SET sql = ? WHERE name = ?", (sql.replace(old, new), name))
    c.execute("PRAGMA writable_schema = OFF")
    version = c.execute("PRAGMA schema_version").fetchone()[0]
    c.execute(f"PRAGMA schema_version = {version + 1}")


def _force(p: Path, table: str, column: str, decl: str, value: object, where: str = "") -> None:
    """Store ``value`` in a NOT NULL column: drop the constraint from the stored text, write, put the text back."""
    c = _conn(p)
    (sql,) = c.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    _edit_schema(c, table, decl, decl.replace("NOT NULL", ""))
    c.close()
    c = _conn(p)
    c.execute("PRAGMA ignore_check_constraints = ON")
    c.execute(f"UPDATE {table} SET {column} = ? {where}", (value,))
    c.execute("PRAGMA writable_schema = ON")
    c.execute("UPDATE sqlite_master SET sql = ? WHERE name = ?", (sql, table))
    c.execute("PRAGMA writable_schema = OFF")
    version = c.execute("PRAGMA schema_version").fetchone()[0]
    c.execute(f"PRAGMA schema_version = {version + 1}")
    c.close()


# ------------------------------------------------------------------ hostile schemas
def trigger_empties_tables(p: Path) -> None:
    """The issue's case: a label write fires a trigger that empties token_scores and edges."""
    c = _conn(p)
    c.execute("CREATE TRIGGER evil AFTER INSERT ON labels BEGIN DELETE FROM token_scores; DELETE FROM edges; END")


def trigger_on_delete(p: Path) -> None:
    c = _conn(p)
    c.execute("CREATE TRIGGER evil_del AFTER DELETE ON labels BEGIN DELETE FROM features; END")


def changed_sae_atlas_trigger(p: Path) -> None:
    """sae-atlas's own trigger name, another body."""
    c = _conn(p)
    c.execute("DROP TRIGGER labels_ai")
    c.execute("CREATE TRIGGER labels_ai AFTER INSERT ON labels BEGIN DELETE FROM edges; END")


def view_in_place_of_saes(p: Path) -> None:
    """The issue's case: saes renamed, a view named saes runs a recursive CTE."""
    c = _conn(p)
    c.execute("PRAGMA legacy_alter_table = ON")  # keep the views' text pointing at 'saes'
    c.execute("ALTER TABLE saes RENAME TO saes_real")
    c.execute(f"CREATE VIEW saes AS SELECT s.* FROM saes_real s JOIN ({RECURSIVE}) r ON r.x = s.sae_id + 1e12")


def view_in_place_of_token_scores(p: Path) -> None:
    c = _conn(p)
    c.execute("PRAGMA legacy_alter_table = ON")
    c.execute("ALTER TABLE token_scores RENAME TO ts_real")
    c.execute(f"CREATE VIEW token_scores AS SELECT t.* FROM ts_real t, ({RECURSIVE}) r WHERE r.x < 0")


def poisoned_sae_summary(p: Path) -> None:
    """The issue's case: `stats` read the sae_summary view, which now never ends."""
    c = _conn(p)
    c.execute("DROP VIEW sae_summary")
    c.execute(
        "CREATE VIEW sae_summary AS SELECT s.sae_id, s.name, s.layer, s.site, s.d_sae, r.x AS n_features, "
        f"0 AS frac_predicts_tokens, 0 AS frac_reads_tokens, 0 AS attn_q_mean, 0 AS attn_k_mean, "
        f"0 AS attn_v_mean FROM saes s, ({RECURSIVE}) r"
    )


def poisoned_feature_names(p: Path) -> None:
    """A view other sae-atlas views read through."""
    c = _conn(p)
    c.execute("DROP VIEW feature_names")
    c.execute(f"CREATE VIEW feature_names AS SELECT x AS feature_id, 'x' AS name FROM ({RECURSIVE})")


def cascade_from_labels(p: Path) -> None:
    """features now declares a foreign key to labels with ON DELETE CASCADE: deleting a label deletes features."""
    c = _conn(p)
    _edit_schema(c, "features", "UNIQUE (sae_id, idx)", "UNIQUE (sae_id, idx), FOREIGN KEY (idx) REFERENCES labels "
                 "(label_id) ON DELETE CASCADE")  # fmt: skip


def generated_column(p: Path) -> None:
    """models gains a virtual generated column that builds a 100 MB string on every read."""
    c = _conn(p)
    _edit_schema(c, "models", "notes           TEXT", "notes           TEXT, evil TEXT GENERATED ALWAYS AS "
                 "(printf('%.*c', 100000000, 'x')) VIRTUAL")  # fmt: skip


def other_fts_tokenizer(p: Path) -> None:
    c = _conn(p)
    c.execute("DROP TABLE vocab_fts")
    c.execute("CREATE VIRTUAL TABLE vocab_fts USING fts5 (key, model_id UNINDEXED, token_id UNINDEXED)")
    c.execute("INSERT INTO vocab_fts (key, model_id, token_id) SELECT key, model_id, token_id FROM vocab")


def shadow_table_is_a_view(p: Path) -> None:
    c = _conn(p)
    c.execute("PRAGMA legacy_alter_table = ON")
    c.execute("ALTER TABLE labels_fts_data RENAME TO lfd_real")
    c.execute(f"CREATE VIEW labels_fts_data AS SELECT d.* FROM lfd_real d, ({RECURSIVE}) r WHERE r.x < 0")


# ------------------------------------------------------------------ damaged data
def text_d_vocab(p: Path) -> None:
    """The issue's case: browse crashed on a text d_vocab."""
    c = _conn(p)
    c.execute("UPDATE models SET d_vocab = 'many'")


def null_d_sae(p: Path) -> None:
    """The issue's case: browse crashed on a NULL d_sae (NOT NULL in the schema, so forced in)."""
    _force(p, "saes", "d_sae", "d_sae           INTEGER NOT NULL", None, "WHERE name = 'L2.res'")


def null_sae_name(p: Path) -> None:
    _force(p, "saes", "name", "name            TEXT    NOT NULL UNIQUE", None, "WHERE name = 'L6.res'")


def text_layer(p: Path) -> None:
    c = _conn(p)
    c.execute("PRAGMA ignore_check_constraints = ON")
    c.execute("UPDATE saes SET layer = 'deep' WHERE name = 'L2.res'")


def text_metric(p: Path) -> None:
    c = _conn(p)
    c.execute("UPDATE features SET du_top1_z = 'high', du_max = x'00ff' WHERE feature_id = ?", (_fid(c),))


def text_token_value(p: Path) -> None:
    c = _conn(p)
    c.execute("UPDATE token_scores SET value = 'strong' WHERE feature_id = ? AND rank = 0", (_fid(c),))


def null_edge_score(p: Path) -> None:
    fid = _fid(_conn(p))
    _force(p, "edges", "score", "score       REAL    NOT NULL", None, f"WHERE src_feature = {fid}")


def broken_label_evidence(p: Path) -> None:
    c = _conn(p)
    c.execute("PRAGMA ignore_check_constraints = ON")
    c.execute("UPDATE labels SET evidence = '{oops' WHERE feature_id = ?", (_fid(c),))


def text_label_score(p: Path) -> None:
    c = _conn(p)
    c.execute("UPDATE labels SET score = 'very' WHERE feature_id = ?", (_fid(c),))


def malformed_provenance(p: Path) -> None:
    c = _conn(p)
    c.execute("PRAGMA ignore_check_constraints = ON")
    c.execute("UPDATE atlas_info SET provenance = '{\"criteria\": '")


def provenance_array(p: Path) -> None:
    c = _conn(p)
    c.execute("UPDATE atlas_info SET provenance = '[1, 2, 3]'")


def criteria_wrong_types(p: Path) -> None:
    c = _conn(p)
    bad = {"criteria": {**CRITERIA, "predicts_tokens": {**CRITERIA["predicts_tokens"], "tau": "six"}}}
    c.execute("UPDATE atlas_info SET provenance = ?", (json.dumps(bad),))


def null_provenance(p: Path) -> None:
    _force(p, "atlas_info", "provenance", "provenance        TEXT    NOT NULL", None)


def not_utf8_text(p: Path) -> None:
    c = _conn(p)
    c.execute("UPDATE vocab SET display = CAST(x'80ff' AS TEXT) WHERE token_id < 50")
    c.execute("UPDATE labels SET text = CAST(x'c3' AS TEXT) WHERE feature_id = ?", (_fid(c),))


def blob_for_text(p: Path) -> None:
    c = _conn(p)
    c.execute("PRAGMA ignore_check_constraints = ON")
    c.execute("UPDATE saes SET site = x'72657369645f706f7374' WHERE name = 'L6.res'")
    c.execute("UPDATE labels SET text = x'00ff' WHERE feature_id = ?", (_fid(c),))


def corrupt_labels_fts(p: Path) -> None:
    c = _conn(p)
    c.execute("UPDATE labels_fts_data SET block = x'ffffffffffffffff' WHERE id > 10")


def corrupt_vocab_fts(p: Path) -> None:
    c = _conn(p)
    c.execute("UPDATE vocab_fts_data SET block = zeroblob(length(block)) WHERE id > 10")


HUGE_BYTES = 2_000_000  # a label this long is above the value cap the suite sets (HUGE_BYTES / 2)


def huge_label(p: Path) -> None:
    """A label above the value cap: reading it fails as 'too big' instead of filling memory."""
    c = _conn(p)
    c.execute(
        "UPDATE labels SET text = printf('%.*c', ?, 'x') WHERE label_id = "
        "(SELECT MIN(label_id) FROM labels WHERE feature_id = ?)",
        (HUGE_BYTES, _fid(c)),
    )


def big_provenance(p: Path) -> None:
    """Provenance of 400 kB (a long build log in it): under the cap, read and summarised."""
    c = _conn(p)
    c.execute("UPDATE atlas_info SET provenance = ?", (json.dumps({"notes": "n" * 400_000, "criteria": CRITERIA}),))


def dangling_model(p: Path) -> None:
    c = _conn(p)
    c.execute("PRAGMA foreign_keys = OFF")
    c.execute("UPDATE saes SET model_id = 99 WHERE name = 'L6.res'")


def no_atlas_info_row(p: Path) -> None:
    c = _conn(p)
    c.execute("DELETE FROM atlas_info")


def huge_integer(p: Path) -> None:
    c = _conn(p)
    c.execute("UPDATE saes SET d_sae = 9223372036854775807 WHERE name = 'L2.res'")


def truncated_file(p: Path) -> None:
    size = p.stat().st_size
    with open(p, "r+b") as fh:
        fh.truncate(size // 2)


# ------------------------------------------------------------------ file shapes
def wal_without_shm(p: Path) -> None:
    """WAL mode, committed rows only in the -wal log, no -shm (a copy of a file someone had open)."""
    c = _conn(p)
    c.execute("PRAGMA journal_mode = WAL")
    c.execute("PRAGMA wal_autocheckpoint = 0")
    c.execute("UPDATE atlas_info SET provenance = ?", (json.dumps({"criteria": CRITERIA, "in_wal": True}),))
    tmp = p.with_name(p.name + ".copy")
    shutil.copyfile(p, tmp)
    shutil.copyfile(Path(str(p) + "-wal"), Path(str(tmp) + "-wal"))
    c.close()
    os.replace(tmp, p)
    os.replace(Path(str(tmp) + "-wal"), Path(str(p) + "-wal"))
    Path(str(p) + "-shm").unlink(missing_ok=True)


def wal_no_log(p: Path) -> None:
    c = _conn(p)
    c.execute("PRAGMA journal_mode = WAL")
    c.close()


def user_objects(p: Path) -> None:
    """The user's own table, view and index beside sae-atlas's: read past."""
    c = _conn(p)
    c.execute("CREATE TABLE my_notes (feature TEXT, note TEXT)")
    c.execute("INSERT INTO my_notes VALUES ('L2.res/3', 'interesting')")
    c.execute("CREATE VIEW my_view AS SELECT name FROM saes")
    c.execute("CREATE INDEX my_idx ON features (du_max)")
    c.execute(f"CREATE VIEW my_slow_view AS {RECURSIVE}")


def partial_index_of_ours(p: Path) -> None:
    c = _conn(p)
    c.execute("DROP INDEX features_du_top1_z")
    c.execute("CREATE INDEX features_du_top1_z ON features (sae_id, du_top1_z) WHERE du_top1_z > 1e9")


CASES: dict[str, tuple[str, Callable[[Path], None]]] = {
    f.__name__: (cat, f)
    for cat, fns in (
        ("hostile", [trigger_empties_tables, trigger_on_delete, changed_sae_atlas_trigger, view_in_place_of_saes,
                     view_in_place_of_token_scores, poisoned_sae_summary, poisoned_feature_names,
                     cascade_from_labels, generated_column, other_fts_tokenizer, shadow_table_is_a_view]),
        ("damaged", [text_d_vocab, null_d_sae, null_sae_name, text_layer, text_metric, text_token_value,
                     null_edge_score, broken_label_evidence, text_label_score, malformed_provenance,
                     provenance_array, criteria_wrong_types, null_provenance, not_utf8_text, blob_for_text,
                     corrupt_labels_fts, corrupt_vocab_fts, huge_label, dangling_model,
                     no_atlas_info_row, huge_integer, truncated_file]),
        ("files", [wal_without_shm, wal_no_log, user_objects, partial_index_of_ours, big_provenance]),
    )
    for f in fns
}  # fmt: skip


USER_LABEL = "my own label"


def make_base(synthetic: Path, dest: Path) -> Path:
    """The clean atlas every case starts from: a verdict rule in its provenance (so criteria damage has
    something to hit), one user label (for `label --delete`) and SAE sha256s (so `merge` can succeed)."""
    shutil.copyfile(synthetic, dest)
    c = _conn(dest)
    c.execute("UPDATE atlas_info SET provenance = ?", (json.dumps({"synthetic": {"seed": 0}, "criteria": CRITERIA}),))
    c.execute("UPDATE saes SET sha256 = 'sha-' || name")
    c.execute(
        "INSERT INTO labels (feature_id, text, kind, source, created_at) VALUES (?, ?, 'free', 'user', "
        "'2026-01-01T00:00:00+00:00')",
        (_fid(c), USER_LABEL),
    )
    c.close()
    return dest


def user_label_id(path: Path) -> int:
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return c.execute("SELECT label_id FROM labels WHERE text = ?", (USER_LABEL,)).fetchone()[0]
    finally:
        c.close()


def make_case(name: str, base: Path, dest: Path) -> Path:
    """A copy of ``base`` (see make_base) at ``dest`` with case ``name`` applied. Returns ``dest``."""
    shutil.copyfile(base, dest)
    CASES[name][1](dest)
    return dest
