"""Ad-hoc read-only SQL for the console: paged results and export to CSV or JSON.

The connection is always an atlas reader's (``mode=ro`` + ``query_only`` and
ATTACH denied), so a write fails inside SQLite with a clear message rather
than being caught by string matching here.
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from atlas.errors import BadQuery

# Statements whose result can be wrapped as a subquery for LIMIT/OFFSET paging.
_PAGEABLE = re.compile(r"^\s*(select|with|values)\b", re.I)
_COMMENTS = re.compile(r"(--[^\n]*\n)|(/\*.*?\*/)", re.S)


def clean(sql: str) -> str:
    """Drop leading comments and trailing semicolons/whitespace."""
    s = sql.strip()
    while True:
        m = _COMMENTS.match(s)
        if not m:
            break
        s = s[m.end() :].lstrip()
    return s.rstrip().rstrip(";").rstrip()


def _with_deadline(conn: sqlite3.Connection, seconds: float | None) -> None:
    if seconds is None:
        conn.set_progress_handler(None, 0)
        return
    end = time.monotonic() + seconds
    conn.set_progress_handler(lambda: 1 if time.monotonic() > end else 0, 10_000)


def run_page(
    conn: sqlite3.Connection, sql: str, *, offset: int = 0, limit: int = 200, timeout: float | None = 60.0
) -> tuple[list[str], list[tuple], bool]:
    """(columns, rows, more) for one page of a query. Raises BadQuery with SQLite's message."""
    s = clean(sql)
    if not s:
        raise BadQuery("empty query")
    if _several_statements(s):
        raise BadQuery("one statement at a time, please: this has several")
    _with_deadline(conn, timeout)
    try:
        if _PAGEABLE.match(s):
            cur = conn.execute(f"SELECT * FROM ({s}) LIMIT ? OFFSET ?", (limit + 1, offset))
            rows = cur.fetchmany(limit + 1)
        else:  # PRAGMA, EXPLAIN ...: run as is and show the first page only
            cur = conn.execute(s)
            rows = cur.fetchmany(offset + limit + 1)[offset:] if cur.description else []
    except sqlite3.OperationalError as e:
        if "interrupted" in str(e):
            raise BadQuery(
                f"query stopped ({'took over ' + str(int(timeout)) + ' s' if timeout else 'cancelled'})"
            ) from None
        raise BadQuery(str(e)) from None
    except (sqlite3.DatabaseError, sqlite3.Warning, sqlite3.ProgrammingError) as e:
        raise BadQuery(str(e)) from None
    finally:
        conn.set_progress_handler(None, 0)
    columns = [d[0] for d in cur.description] if cur.description else []
    more = len(rows) > limit
    return columns, [tuple(r) for r in rows[:limit]], more


def export(conn: sqlite3.Connection, sql: str, path: str | Path) -> int:
    """Write every row of the query to ``path`` (.json: a list of objects; anything else: CSV). Returns rows."""
    s = clean(sql)
    p = Path(path)
    tmp = p.with_name(p.name + ".partial")
    try:
        cur = conn.execute(s)
    except (sqlite3.DatabaseError, sqlite3.Warning, sqlite3.ProgrammingError) as e:
        raise BadQuery(str(e)) from None
    columns = [d[0] for d in cur.description] if cur.description else []
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            if p.suffix.lower() == ".json":
                fh.write("[")
                for row in cur:
                    fh.write(("," if n else "") + "\n" + json.dumps(dict(zip(columns, _jsonable(row), strict=True))))
                    n += 1
                fh.write("\n]\n")
            else:
                w = csv.writer(fh)
                w.writerow(columns)
                for row in cur:
                    w.writerow(tuple(row))
                    n += 1
        tmp.replace(p)  # never a half-written file under the name asked for
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def _several_statements(s: str) -> bool:
    """True if a complete statement ends before the end of ``s`` (a ';' inside a string does not count)."""
    for i, ch in enumerate(s):
        if ch == ";" and sqlite3.complete_statement(s[: i + 1]) and s[i + 1 :].strip():
            return True
    return False


def _jsonable(row: Any) -> list[Any]:
    return [v.hex() if isinstance(v, bytes) else v for v in tuple(row)]
