"""The one read-only SQL engine: ``sae-atlas sql`` and the TUI's SQL console both run through it.

Three locks, each enough on its own for writes: the file is opened with
``mode=ro``, the connection has ``PRAGMA query_only``, and an authorizer lets
through only reads (SELECT, reading columns, functions, recursive CTEs and a
short list of read-only PRAGMAs). The authorizer also stops what ``mode=ro``
does not cover: ATTACH (which can create files), PRAGMAs that change how the
connection reads (``writable_schema``), and ``fts3_tokenizer()``, which hands
out raw pointers.

One deadline (the connection's per-statement budget, see atlas.interrupt),
one error text (:func:`explain`), one JSON/CSV encoding of values
(:func:`atlas.output.plain`), and results that stream: a page, the first
``limit`` rows, or every row written as it is read (``--limit 0``, export).

A view sae-atlas defines that the file has changed is shadowed here by
sae-atlas's own definition (a TEMP view, which SQLite finds first), and the
caller gets a note saying so; ``main.NAME`` still reads the file's own.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from atlas.db import PROGRESS_STEPS, Atlas, AtlasConnection, open_atlas
from atlas.errors import AtlasError, BadQuery, QueryInterrupted, QueryTimeout, explain_sqlite_error
from atlas.interrupt import DEADLINE, Budget, stop_reason
from atlas.output import plain
from atlas.schema_check import SchemaReport, view_definitions

# PRAGMAs that only report, allowed without an argument (or as table-valued functions).
READ_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "user_version",
        "schema_version",
        "page_count",
        "page_size",
        "freelist_count",
        "encoding",
        "application_id",
        "compile_options",
        "function_list",
        "pragma_list",
        "collation_list",
        "module_list",
        "database_list",
        "data_version",
    }
)

# PRAGMAs in READ_PRAGMAS that would set a value when given an argument.
_SETTABLE_PRAGMAS = frozenset({"user_version", "schema_version", "application_id", "page_size", "encoding"})

# Functions no ad-hoc query needs and that reach outside the data: raw pointers, shared libraries.
DENIED_FUNCTIONS = frozenset({"fts3_tokenizer", "load_extension"})

_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE}

# Statements whose result can be wrapped as a subquery for LIMIT/OFFSET paging.
_PAGEABLE = re.compile(r"^\s*(select|with|values)\b", re.I)
_COMMENTS = re.compile(r"(--[^\n]*(\n|$))|(/\*.*?\*/)", re.S)


def authorize(action: int, arg1: str | None, arg2: str | None, db: str | None, source: str | None) -> int:
    """The authorizer of every ad-hoc query: reads only."""
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION:
        return sqlite3.SQLITE_DENY if (arg2 or "").lower() in DENIED_FUNCTIONS else sqlite3.SQLITE_OK
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
    notes: list[str] = field(default_factory=list)  # what the engine did that the user should know


def prepare(atlas: Atlas | sqlite3.Connection, *, timeout_s: float | None) -> list[str]:
    """Make ``atlas``'s connection an ad-hoc-SQL connection. Returns notes for the user.

    Views sae-atlas defines that the file changed are shadowed by sae-atlas's own
    definitions first (before the read-only authorizer goes on). A bare
    connection (no schema check to consult) gets the authorizer and deadline only.
    """
    conn = _conn(atlas)
    schema = atlas.schema if isinstance(atlas, Atlas) else SchemaReport()
    notes = []
    changed = [v for v in schema.changed_views if v in view_definitions()]
    if changed:
        conn.set_authorizer(None)
        conn.execute("PRAGMA query_only = OFF")  # the file stays mode=ro: only the temp schema is writable
        try:
            for name in changed:
                text = view_definitions()[name]
                conn.execute("CREATE TEMP VIEW IF NOT EXISTS " + text[len("CREATE VIEW ") :])
        finally:
            conn.execute("PRAGMA query_only = ON")
        notes.append(
            f"this atlas's {'views' if len(changed) > 1 else 'view'} {', '.join(changed)} "
            f"{'are' if len(changed) > 1 else 'is'} not sae-atlas's; queries read sae-atlas's definition "
            "(main.NAME reads the file's own)"
        )
    if schema.refused:
        notes.append("this file's schema is not sae-atlas's (" + "; ".join(schema.refused[:3]) + "): read as it is")
    conn.set_authorizer(authorize)
    if isinstance(conn, AtlasConnection):
        conn.deadline_s = timeout_s
    else:
        conn.set_progress_handler(Budget(timeout_s), PROGRESS_STEPS)
    return notes


def clean(sql: str) -> str:
    """Drop leading comments and trailing semicolons/whitespace."""
    s = sql.strip()
    while True:
        m = _COMMENTS.match(s)
        if not m:
            break
        s = s[m.end() :].lstrip()
    return s.rstrip().rstrip(";").rstrip()


def _check_text(sql: str) -> str:
    s = clean(sql)
    if not s:
        raise BadQuery("empty SQL")
    if _several_statements(s):
        raise BadQuery("bad SQL: one statement at a time, please: this has several")
    return s


def explain(e: BaseException, *, hint: str = "") -> AtlasError:
    """The one error text of ad-hoc SQL, for an exception raised while running or reading a query."""
    if isinstance(e, AtlasError):
        return e
    if isinstance(e, sqlite3.OperationalError) and str(e) == "interrupted":
        reason, seconds = stop_reason()
        if reason == DEADLINE:
            return QueryTimeout(f"query ran longer than {seconds:g} s and was stopped{hint}")
        err = explain_sqlite_error(e)
        return err if isinstance(err, QueryInterrupted) else QueryInterrupted("interrupted")
    msg = " ".join(str(e).split())
    if any(w in msg for w in ("not authorized", "authorization denied", "readonly", "read-only")):
        return BadQuery(f"refused: {msg} (sae-atlas sql only reads; use the label command or the library to write)")
    damaged = isinstance(e, sqlite3.DatabaseError) and not isinstance(
        e, sqlite3.OperationalError | sqlite3.ProgrammingError
    )
    if damaged or "Could not decode to UTF-8" in msg:
        return explain_sqlite_error(e)  # corrupt pages, bytes that are not text, a full disk: not the query's fault
    if isinstance(e, UnicodeDecodeError):
        return BadQuery(f"a value is not UTF-8 text ({e.reason} at byte {e.start}): the atlas looks damaged")
    return BadQuery(f"bad SQL: {msg}")


_QUERY_ERRORS = (sqlite3.Error, sqlite3.Warning, OverflowError, ValueError, UnicodeDecodeError)


@contextmanager
def stream_sql(
    path: str | os.PathLike,
    sql: str,
    params: dict[str, Any] | None = None,
    *,
    timeout_s: float | None = 30.0,
    hint: str = "",
) -> Iterator[tuple[list[str], Iterator[tuple[Any, ...]], list[str]]]:
    """Open ``path`` and run one read-only statement: yields (columns, row iterator, notes).

    The rows are read as they are consumed, so any number of them takes
    constant memory. Errors, also those met while reading rows, are BadQuery
    (one line), QueryTimeout or QueryInterrupted.
    """
    s = _check_text(sql)
    atlas = open_atlas(path, readonly=True, deadline_s=timeout_s, foreign_ok=True)
    try:
        notes = prepare(atlas, timeout_s=timeout_s)
        try:
            cur = _conn(atlas).execute(s, params or {})
        except _QUERY_ERRORS as e:
            raise explain(e, hint=hint) from None
        columns = [d[0] for d in cur.description or []]

        def rows() -> Iterator[tuple[Any, ...]]:
            try:
                for r in cur:
                    yield tuple(r)
            except _QUERY_ERRORS as e:
                raise explain(e, hint=hint) from None

        yield columns, rows(), notes
    finally:
        atlas.close()


def run_sql(
    path: str | os.PathLike,
    sql: str,
    params: dict[str, Any] | None = None,
    *,
    limit: int | None = 1000,
    timeout_s: float | None = 30.0,
    hint: str = " (see --timeout)",
) -> QueryResult:
    """Run one read-only statement on an atlas and return at most ``limit`` rows (None or 0: all).

    Raises BadQuery (one line) for SQL that SQLite rejects, that tries to
    write, or that runs past ``timeout_s``; NotAnAtlas/SchemaTooNew for the file.
    """
    with stream_sql(path, sql, params, timeout_s=timeout_s, hint=hint) as (columns, rows, notes):
        if not limit:
            return QueryResult(columns, list(rows), False, notes)
        got = [r for _, r in zip(range(limit + 1), rows, strict=False)]
        return QueryResult(columns, got[:limit], len(got) > limit, notes)


def run_page(
    atlas: Atlas | sqlite3.Connection, sql: str, *, offset: int = 0, limit: int = 200, timeout: float | None = 60.0
) -> tuple[list[str], list[tuple], bool]:
    """(columns, rows, more) for one page of a query, for the TUI console. Raises BadQuery and kin."""
    s = _check_text(sql)
    prepare(atlas, timeout_s=timeout)
    try:
        if _PAGEABLE.match(s):
            cur = _conn(atlas).execute(f"SELECT * FROM ({s}) LIMIT ? OFFSET ?", (limit + 1, offset))
            rows = cur.fetchmany(limit + 1)
        else:  # PRAGMA, EXPLAIN ...: run as is and show the asked page of its first rows
            cur = _conn(atlas).execute(s)
            rows = cur.fetchmany(offset + limit + 1)[offset:] if cur.description else []
    except _QUERY_ERRORS as e:
        raise explain(e) from None
    columns = [d[0] for d in cur.description] if cur.description else []
    return columns, [tuple(r) for r in rows[:limit]], len(rows) > limit


def export(atlas: Atlas | sqlite3.Connection, sql: str, path: str | Path, *, timeout: float | None = None) -> int:
    """Write every row of the query to ``path`` (.json: a list of objects; anything else: CSV).

    Streams (constant memory) into ``PATH.partial``, renamed at the end: never a
    half-written file under the name asked for. Returns the number of rows.
    """
    s = _check_text(sql)
    prepare(atlas, timeout_s=timeout)
    p = Path(path)
    tmp = p.with_name(p.name + ".partial")
    try:
        cur = _conn(atlas).execute(s)
        columns = [d[0] for d in cur.description] if cur.description else []
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            n = write_rows(fh, columns, (tuple(r) for r in cur), "json" if p.suffix.lower() == ".json" else "csv")
        tmp.replace(p)
    except _QUERY_ERRORS as e:
        tmp.unlink(missing_ok=True)
        raise explain(e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def write_rows(out: TextIO, columns: list[str], rows: Iterator[tuple[Any, ...]], fmt: str) -> int:
    """Write rows as they come, in ``json`` (array of objects), ``nl``, ``csv`` or ``tsv``. Returns the count.

    The same text :func:`atlas.output.render` gives for the whole list at once.
    """
    n = 0
    if fmt in ("csv", "tsv"):
        w = csv.writer(out, dialect="excel-tab" if fmt == "tsv" else "excel", lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([plain(v) for v in r])
            n += 1
        return n
    if fmt not in ("json", "nl"):
        raise ValueError(f"cannot stream format {fmt!r}")
    for r in rows:
        d = {c: plain(v) for c, v in zip(columns, r, strict=True)}
        if fmt == "nl":
            out.write(json.dumps(d, ensure_ascii=False) + "\n")
        else:
            out.write(
                ("[\n  " if n == 0 else ",\n  ") + json.dumps(d, indent=2, ensure_ascii=False).replace("\n", "\n  ")
            )
        n += 1
    if fmt == "json":
        out.write("\n]\n" if n else "[]\n")
    return n


def _conn(atlas: Atlas | sqlite3.Connection) -> sqlite3.Connection:
    return atlas.conn if isinstance(atlas, Atlas) else atlas


def _several_statements(s: str) -> bool:
    """True if a complete statement ends before the end of ``s`` (a ';' inside a string does not count)."""
    for i, ch in enumerate(s):
        if ch == ";" and sqlite3.complete_statement(s[: i + 1]) and s[i + 1 :].strip():
            return True
    return False
