"""Ad-hoc SQL that can only read: ``sae-atlas sql``.

Three locks, each enough on its own for writes: the file is opened with
``mode=ro``, the connection has ``PRAGMA query_only``, and an authorizer lets
through only reads (SELECT, reading columns, functions, recursive CTEs and a
short list of read-only PRAGMAs). The authorizer also stops what ``mode=ro``
does not cover: ATTACH (which can create files), and PRAGMAs that change how
the connection reads, such as ``writable_schema``.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from atlas.db import open_atlas
from atlas.errors import BadQuery

# PRAGMAs that only report, allowed without an argument (or as table-valued functions).
READ_PRAGMAS = frozenset(
    {
        "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
        "foreign_key_list", "user_version", "schema_version", "page_count", "page_size",
        "freelist_count", "encoding", "application_id", "compile_options", "function_list",
        "pragma_list", "collation_list", "module_list", "database_list", "data_version",
    }
)  # fmt: skip

_ALLOWED_ACTIONS = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,
}


# PRAGMAs in READ_PRAGMAS that would set a value when given an argument.
_SETTABLE_PRAGMAS = frozenset({"user_version", "schema_version", "application_id", "page_size", "encoding"})


def _authorize(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        if name in READ_PRAGMAS and not (arg2 is not None and name in _SETTABLE_PRAGMAS):
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_UPDATE and arg1 == "sqlite_master":
        # Not a write: SQLite asks this while a virtual table (FTS5, pragma_table_info)
        # declares its columns on first use. A real UPDATE of sqlite_master is
        # refused by SQLite itself, and mode=ro + query_only stop any write.
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool  # more rows existed than the limit


def run_sql(
    path: str | os.PathLike,
    sql: str,
    params: dict[str, Any] | None = None,
    *,
    limit: int | None = 1000,
    timeout_s: float | None = 30.0,
) -> QueryResult:
    """Run one read-only statement on an atlas and return at most ``limit`` rows.

    Raises BadQuery (one line) for SQL that SQLite rejects, that tries to
    write, or that runs past ``timeout_s``; NotAnAtlas/SchemaTooNew for the file.
    """
    if not sql.strip():
        raise BadQuery("empty SQL")
    atlas = open_atlas(path, readonly=True)
    conn = atlas.conn
    try:
        conn.set_authorizer(_authorize)
        deadline = None if not timeout_s else time.monotonic() + timeout_s
        if deadline is not None:
            # Called every ~10k virtual-machine steps; a non-zero return interrupts the query.
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            cur = conn.execute(sql, params or {})
            columns = [d[0] for d in cur.description or []]
            if limit is None or limit <= 0:
                rows = cur.fetchall()
                truncated = False
            else:
                rows = cur.fetchmany(limit + 1)
                truncated = len(rows) > limit
                rows = rows[:limit]
        except sqlite3.OperationalError as e:
            msg = str(e)
            if msg == "interrupted" and deadline is not None:
                raise BadQuery(f"query ran longer than {timeout_s:g} s and was stopped (see --timeout)") from None
            raise BadQuery(_explain(msg)) from None
        except (sqlite3.DatabaseError, sqlite3.ProgrammingError, sqlite3.Warning, OverflowError, ValueError) as e:
            raise BadQuery(_explain(str(e))) from None
        return QueryResult(columns, [tuple(r) for r in rows], truncated)
    finally:
        atlas.close()


def _explain(msg: str) -> str:
    msg = " ".join(msg.split())
    if any(w in msg for w in ("not authorized", "authorization denied", "readonly", "read-only")):
        return f"refused: {msg} (sae-atlas sql only reads; use the label command or the library to write)"
    return f"bad SQL: {msg}"
