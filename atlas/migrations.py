"""Ordered schema migrations, after sqlite-utils' migrations table.

Version 1 is ``schema.sql`` itself. A later change to the schema adds an
entry ``(N, name, sql)`` here, bumps ``SCHEMA_VERSION`` and edits
``schema.sql`` so that a new atlas is created at version N directly.
"""

from __future__ import annotations

from importlib import resources

SCHEMA_VERSION = 1


def schema_sql() -> str:
    return resources.files("atlas").joinpath("schema.sql").read_text(encoding="utf-8")


# (version, name, SQL run to go from version-1 to version). Version 1 is the base schema.
MIGRATIONS: list[tuple[int, str, str | None]] = [
    (1, "initial schema", None),
]

assert [v for v, _, _ in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))
