"""Older schema versions made from a new atlas, for migration tests: each undoes one migration."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from atlas.migrations import V4_REBUILT, V4_TABLES, V4_VIEWS, base_schema_sql, split_sql


def _v1_statement(kind: str, name: str) -> str:
    for statement in split_sql(base_schema_sql()):
        if re.match(rf"(?:--[^\n]*\n\s*)*CREATE\s+{kind}\s+IF\s+NOT\s+EXISTS\s+{name}\b", statement, re.I):
            return statement
    raise KeyError(name)


def as_v3(path: Path) -> Path:
    """The file as schema 3 left it: saes and edges as version 1 defined them (schema 4 rebuilt them),
    without schema 4's tables and view; every row of the rebuilt tables kept (their new columns dropped)."""
    conn = sqlite3.connect(path, isolation_level=None)  # foreign keys off: saes is rebuilt under features
    conn.execute("BEGIN")
    for view in V4_VIEWS:
        conn.execute(f"DROP VIEW {view}")
    for table in V4_TABLES:
        conn.execute(f"DROP TABLE {table}")
    conn.execute("PRAGMA legacy_alter_table = ON")
    for table, indexes in V4_REBUILT.items():
        conn.execute(f"ALTER TABLE {table} RENAME TO _{table}_v4")
        conn.execute(_v1_statement("TABLE", table))
        cols = ", ".join(r[1] for r in conn.execute(f"PRAGMA table_info({table})"))
        conn.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _{table}_v4")
        conn.execute(f"DROP TABLE _{table}_v4")
        for index in indexes:
            conn.execute(_v1_statement("INDEX", index))
    conn.execute("DELETE FROM schema_migrations WHERE version >= 4")
    conn.execute("UPDATE atlas_info SET schema_version = 3")
    conn.execute("PRAGMA user_version = 3")
    conn.execute("COMMIT")
    conn.close()
    return path
