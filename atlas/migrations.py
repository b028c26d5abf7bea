"""The schema's text and its ordered migrations, after sqlite-utils' migrations table.

``schema_sql()`` is the whole current schema: ``schema.sql`` plus the labels'
full-text index, which sqlite-utils declares (``enable_fts``) so that
sqlite-utils and Datasette recognise it. A new atlas is created from it at
``SCHEMA_VERSION`` directly; an older one is brought there by ``MIGRATIONS``.

A migration step is SQL text or a function of the connection; both run inside
the one transaction of ``atlas.db.migrate``. A later change to the schema adds
an entry ``(N, name, step)``, bumps ``SCHEMA_VERSION`` and edits ``schema.sql``;
a test checks that migrating gives exactly the schema a new atlas gets.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sqlite3
from collections.abc import Callable
from importlib import resources

SCHEMA_VERSION = 4

Step = str | Callable[[sqlite3.Connection], None] | None

# The labels' FTS objects, as sqlite-utils names them.
LABEL_FTS_OBJECTS = ("labels_fts", "labels_ai", "labels_ad", "labels_au")


def base_schema_sql() -> str:
    """Version 1's schema, frozen as it shipped: what every migration starts from (schema.sql is the newest)."""
    return resources.files("atlas").joinpath("schema_v1.sql").read_text(encoding="utf-8")


def schema_file_sql() -> str:
    """schema.sql as it is on disk."""
    return resources.files("atlas").joinpath("schema.sql").read_text(encoding="utf-8")


# The labels' FTS5 table and triggers, word for word as sqlite-utils' ``enable_fts(["text"],
# create_triggers=True)`` declares them (sqlite-utils 4), so that sqlite-utils and Datasette
# detect the index as their own. Kept as text: importing sqlite-utils costs 0.13 s (it pulls in
# numpy), more than a whole `sae-atlas show`. tests/test_schema_v2.py checks it against what the
# installed sqlite-utils declares (sqlite-utils 3 quotes [names]; the schema check ignores quoting).
LABEL_FTS_SQL = """CREATE VIRTUAL TABLE "labels_fts" USING FTS5 (
    "text",
    content="labels"
);
CREATE TRIGGER "labels_ai" AFTER INSERT ON "labels" BEGIN
  INSERT INTO "labels_fts" (rowid, "text") VALUES (new.rowid, new."text");
END;
CREATE TRIGGER "labels_ad" AFTER DELETE ON "labels" BEGIN
  INSERT INTO "labels_fts" ("labels_fts", rowid, "text") VALUES('delete', old.rowid, old."text");
END;
CREATE TRIGGER "labels_au" AFTER UPDATE ON "labels" BEGIN
  INSERT INTO "labels_fts" ("labels_fts", rowid, "text") VALUES('delete', old.rowid, old."text");
  INSERT INTO "labels_fts" (rowid, "text") VALUES (new.rowid, new."text");
END;
"""


def label_fts_sql() -> str:
    """The labels' FTS5 table and triggers, as sqlite-utils declares them (see LABEL_FTS_SQL)."""
    return LABEL_FTS_SQL


def sqlite_utils_label_fts_sql() -> str:
    """What the installed sqlite-utils' ``enable_fts`` declares for the labels (the oracle of LABEL_FTS_SQL)."""
    import sqlite_utils

    scratch = sqlite3.connect(":memory:")
    try:
        scratch.execute("CREATE TABLE labels (label_id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
        sqlite_utils.Database(scratch)["labels"].enable_fts(["text"], create_triggers=True)
        rows = dict(
            scratch.execute(
                f"SELECT name, sql FROM sqlite_master WHERE name IN ({', '.join('?' * len(LABEL_FTS_OBJECTS))})",
                LABEL_FTS_OBJECTS,
            ).fetchall()
        )
    finally:
        scratch.close()
    return "".join(rows[name] + ";\n" for name in LABEL_FTS_OBJECTS)


def schema_sql() -> str:
    """The whole current schema: schema.sql and the labels' FTS declared by sqlite-utils."""
    return schema_file_sql() + "\n" + label_fts_sql()


def view_statements() -> list[tuple[str, str]]:
    """(name, CREATE VIEW statement) of every view in schema.sql, in file order (later views use earlier ones)."""
    out = []
    for statement in split_sql(schema_file_sql()):
        m = re.match(r"(?:--[^\n]*\n\s*)*CREATE\s+VIEW\s+IF\s+NOT\s+EXISTS\s+(\w+)", statement, re.I)
        if m:
            out.append((m.group(1), statement))
    return out


def table_statement(name: str) -> str:
    """The CREATE TABLE statement of one table in schema.sql."""
    for statement in split_sql(schema_file_sql()):
        if re.match(rf"(?:--[^\n]*\n\s*)*CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+{name}\s*\(", statement, re.I):
            return statement
    raise KeyError(name)


def split_sql(sql: str) -> list[str]:
    """Split a script into complete statements (executescript would COMMIT a caller's transaction)."""
    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


def v1_atlas_id(conn: sqlite3.Connection, table: str = "atlas_info") -> str:
    """The identity of a version-1 atlas, which stores none: a hash of its atlas_info row.

    A v1 atlas is never written (it opens read-only until migrated), so its
    row, and this id, never change; migrating stores the same id, so labels
    kept in an overlay for the v1 file are found again after the migration.
    The row is hashed as the bytes stored, whatever they are.
    """
    row = conn.execute(
        "SELECT CAST(sae_atlas_version AS BLOB), CAST(created_at AS BLOB), CAST(provenance AS BLOB) "
        f"FROM {table} WHERE id = 1"
    ).fetchone()
    h = hashlib.sha256(b"sae-atlas v1 atlas_info\x1f")
    for part in row or ():
        h.update((part if isinstance(part, bytes) else b"") + b"\x1f")
    return h.hexdigest()[:32]


def drop_views(conn: sqlite3.Connection) -> None:
    """Drop schema.sql's views (they hold no data); a user's own views are left alone."""
    for name, _ in reversed(view_statements()):
        conn.execute(f"DROP VIEW IF EXISTS {name}")


def create_views(conn: sqlite3.Connection) -> None:
    for _, statement in view_statements():
        conn.execute(statement)


def _to_v2(conn: sqlite3.Connection) -> None:
    """atlas_info gains atlas_id; labels_fts in sqlite-utils' form; token_raw / token_key in token_scores_view."""
    drop_views(conn)  # first, so that no view stands in the way of the table changes
    conn.execute("ALTER TABLE atlas_info RENAME TO _atlas_info_v1")
    conn.execute(table_statement("atlas_info"))
    conn.execute(
        "INSERT INTO atlas_info (id, schema_version, sae_atlas_version, created_at, provenance, atlas_id) "
        "SELECT id, schema_version, sae_atlas_version, created_at, provenance, ? FROM _atlas_info_v1",
        (v1_atlas_id(conn, "_atlas_info_v1"),),
    )
    conn.execute("DROP TABLE _atlas_info_v1")
    for trigger in LABEL_FTS_OBJECTS[1:]:
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    conn.execute("DROP TABLE IF EXISTS labels_fts")
    for statement in split_sql(label_fts_sql()):
        conn.execute(statement)
    conn.execute("INSERT INTO labels_fts (labels_fts) VALUES ('rebuild')")
    create_views(conn)


# Schema 3's objects (Neuronpedia agreement, activation examples and their views), by name.
V3_TABLES = ("neuronpedia_agreement", "activation_examples")
V3_INDEXES = ("neuronpedia_agreement_pos",)
V3_VIEWS = ("neuronpedia_view", "activation_examples_view")


def _to_v3(conn: sqlite3.Connection) -> None:
    """Neuronpedia agreement and activation-example tables, neuronpedia_view and activation_examples_view.

    Only these objects, taken from schema.sql by name, so the step stands alone
    whatever other migrations come before or after it.
    """
    for name in V3_TABLES:
        conn.execute(table_statement(name))
    for name in V3_INDEXES:
        conn.execute(index_statement(name))
    views = dict(view_statements())
    for name in V3_VIEWS:
        conn.execute(views[name])


def index_statement(name: str) -> str:
    """The CREATE INDEX statement of one index in schema.sql."""
    for statement in split_sql(schema_file_sql()):
        if re.match(rf"(?:--[^\n]*\n\s*)*CREATE\s+INDEX\s+IF\s+NOT\s+EXISTS\s+{name}\s", statement, re.I):
            return statement
    raise KeyError(name)


# Schema 4's objects: saes and edges rebuilt (new columns and CHECK lists), two new tables, one new view.
V4_REBUILT = {"saes": ("saes_layer",), "edges": ("edges_src", "edges_dst")}  # table -> its indexes
V4_TABLES = ("virtual_baselines", "decoder_spread")
V4_VIEWS = ("virtual_edges_view",)


def _to_v4(conn: sqlite3.Connection) -> None:
    """Transcoders, CLTs and virtual weights: saes gains sae_kind / out_hook_name / out_site / out_layers /
    d_out and the transcoder sites; edges gains the virtual kinds and percentile; virtual_baselines,
    decoder_spread and virtual_edges_view are new.

    A CHECK list cannot be altered in place, so saes and edges are rebuilt: each renamed aside with
    legacy_alter_table on (features keeps referencing "saes" by name, not the renamed table), created
    again from schema.sql, filled with the old rows (new columns at their defaults), the old one dropped.
    As in _to_v3, only these objects are taken from schema.sql, by name.
    """
    drop_views(conn)  # views name the tables being rebuilt
    legacy = conn.execute("PRAGMA legacy_alter_table").fetchone()[0]
    conn.execute("PRAGMA legacy_alter_table = ON")
    try:
        for table, indexes in V4_REBUILT.items():
            old_cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            conn.execute(f"ALTER TABLE {table} RENAME TO _{table}_v3")
            conn.execute(table_statement(table))
            cols = ", ".join(old_cols)
            conn.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _{table}_v3")
            conn.execute(f"DROP TABLE _{table}_v3")  # its indexes go with it
            for name in indexes:
                conn.execute(index_statement(name))
    finally:
        conn.execute(f"PRAGMA legacy_alter_table = {int(bool(legacy))}")
    for name in V4_TABLES:
        conn.execute(table_statement(name))
    create_views(conn)


# (version, name, step run to go from version-1 to version). Version 1 is the base schema.
MIGRATIONS: list[tuple[int, str, Step]] = [
    (1, "initial schema", None),
    (2, "atlas identity, labels FTS as sqlite-utils declares it, raw token text in token_scores_view", _to_v2),
    (3, "Neuronpedia agreement and activation examples", _to_v3),
    (4, "transcoders and CLTs in saes, virtual edges with percentiles, virtual baselines, CLT decoder spread", _to_v4),
]

assert [v for v, _, _ in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))

# Versions whose data tables (all but atlas_info and the FTS objects) export and merge can
# copy rows out of as they are: the current ones, column for column, or a subset of them.
# A table a later version added (schema 3's, 4's) is simply absent from an older file:
# nothing to copy; a column schema 4 added to saes / edges takes its default (an SAE; no percentile).
SAME_DATA_TABLES = frozenset({1, 2, 3, 4})


@functools.lru_cache(maxsize=1)
def version_objects() -> dict[int, tuple[tuple[str, str, str, str], ...]]:
    """``sqlite_master`` rows (type, name, tbl_name, sql) of every schema version, oldest first.

    Built, not listed: version 1 from its frozen schema in an in-memory database,
    then each migration run on it in turn (a step may be a function, whose SQL
    cannot be read off). The schema check (atlas/schema_check.py) knows every
    object any version defined from this, so an older atlas is never mistaken
    for a foreign one; a test checks the last entry equals a new atlas's schema.
    """
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.executescript(base_schema_sql())
        out = {1: _master(conn)}
        for version, _, step in MIGRATIONS[1:]:
            conn.execute("BEGIN")
            run_step(conn, step)
            conn.execute("COMMIT")
            out[version] = _master(conn)
        return out
    finally:
        conn.close()


def _master(conn: sqlite3.Connection) -> tuple[tuple[str, str, str, str], ...]:
    rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
    return tuple(sorted(tuple(r) for r in rows))


def run_step(conn: sqlite3.Connection, step: Step) -> None:
    """Run one migration step on a connection that is inside a transaction."""
    if callable(step):
        step(conn)
    elif step:
        for statement in split_sql(step):
            conn.execute(statement)
