"""Opening, creating and migrating atlas files.

An atlas is one SQLite file, and one a stranger may have made, so it is
opened as Datasette opens a file it did not make:

- read-only unless a write is asked for (``mode=ro`` + ``query_only``), with
  ``trusted_schema=OFF``, SQLite's defensive flag, ``cell_size_check`` and a
  cap on the size of any one value;
- its schema objects compared with sae-atlas's own before any query runs
  (:mod:`atlas.schema_check`): a file whose tables are not sae-atlas's is
  refused, and a write never runs a trigger sae-atlas did not create;
- a deadline on every statement and a stop on ctrl-c (:mod:`atlas.interrupt`);
- a busy timeout, so writers from several processes wait their turn;
- no file created beside it by a read: a WAL-format file is read with
  ``immutable`` when it has no -wal log, and with a lock-free VFS plus
  exclusive locking mode (the wal-index then lives in heap memory, so no
  -shm is created) when it has a -wal log but no -shm.

An older schema is migrated only by :func:`migrate` (``sae-atlas migrate``),
never as a side effect of opening it.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import re
import sqlite3
import sys
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from atlas.errors import (
    AtlasError,
    ForeignSchema,
    NeedsMigration,
    NotAnAtlas,
    ReadOnlyAtlas,
    SchemaTooNew,
    StorageError,
    explain_sqlite_error,
)
from atlas.files import resolved_uri
from atlas.interrupt import Budget
from atlas.migrations import MIGRATIONS, SCHEMA_VERSION, run_step, schema_sql
from atlas.read import AtlasReader
from atlas.schema_check import SchemaReport, check_schema, expected
from atlas.write import AtlasWriter, utc_now

SQLITE_MAGIC = b"SQLite format 3\x00"

# Page cache of a writing connection (negative = KiB): index inserts of a build stay in
# memory instead of re-reading pages, about twice the insert rate of SQLite's 2 MB default.
WRITE_CACHE_KIB = -256 * 1024

# Deadline of one statement on a read-only connection. Generous: validate's integrity check of
# a 7 GB atlas is well inside it, while a query that never ends (a hostile schema) still stops.
READ_DEADLINE_S = 300.0
# How long a statement waits for another process's lock before giving up: writers take turns.
BUSY_TIMEOUT_S = 60.0
# Largest string, blob or row SQLite will hand back (SQLITE_LIMIT_LENGTH): nothing sae-atlas
# stores comes near it, and a planted gigabyte value fails as "too big" instead of filling memory.
MAX_VALUE_BYTES = 64 * 1024 * 1024
# Virtual-machine steps between two progress-handler calls (deadline and ctrl-c checks);
# about a millisecond of work, so a stop is prompt and the handler costs well under 1 %.
PROGRESS_STEPS = 20_000

SQLITE_DBCONFIG_DEFENSIVE = 1010
SQLITE_LIMIT_LENGTH = 0


def _version() -> str:
    from atlas import __version__

    return __version__


class AtlasConnection(sqlite3.Connection):
    """An sqlite3 connection whose statements each get a fresh deadline (``budget``).

    It also remembers its cursors, so that :meth:`close` can reset them: a read that
    failed halfway (a damaged row) leaves its cursor alive in the traceback, and a
    cursor mid-read keeps SQLite's read lock, which would block every later writer of
    the file for as long as this process runs (the TUI).
    """

    budget: Budget

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cursors: weakref.WeakSet[sqlite3.Cursor] = weakref.WeakSet()

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        self.budget.restart()
        cur = super().execute(sql, parameters)
        self._cursors.add(cur)
        return cur

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        self.budget.restart()
        return super().executemany(sql, parameters)

    def executescript(self, script: str, /) -> sqlite3.Cursor:
        self.budget.restart()
        return super().executescript(script)

    def close(self) -> None:
        for cur in list(self._cursors):
            try:
                cur.close()
            except sqlite3.Error:
                pass
        super().close()

    @property
    def deadline_s(self) -> float | None:
        return self.budget.deadline_s

    @deadline_s.setter
    def deadline_s(self, seconds: float | None) -> None:
        self.budget.deadline_s = seconds


def _authorize_read(action: int, arg1: str | None, arg2: str | None, db: str | None, source: str | None) -> int:
    # ATTACH could create files or reach other databases; fts3_tokenizer() reads and sets raw
    # pointers inside SQLite. Neither has a use on an atlas someone sent.
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() == "fts3_tokenizer":
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _authorize_write(action: int, arg1: str | None, arg2: str | None, db: str | None, source: str | None) -> int:
    # The fourth argument names the trigger (or view) a statement runs inside: beside the schema
    # check, a second lock that a write never runs a trigger sae-atlas did not create.
    if source is not None and source not in _known_sources():
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() == "fts3_tokenizer":
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _known_sources() -> frozenset[str]:
    """Names of the triggers and views sae-atlas defines (in any version)."""
    return frozenset(n for n, kinds in expected().kinds.items() if kinds & {"trigger", "view"})


def _is_wal_file(path: Path) -> bool:
    """Whether the file's header says WAL mode (read and write versions 2)."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(20)
    except OSError:
        return False
    return len(header) == 20 and 2 in header[18:20]


def _read_params(p: Path) -> tuple[dict[str, str], bool]:
    """URI parameters for reading ``p`` without creating files beside it, and whether to lock exclusively."""
    if not _is_wal_file(p):
        return {"mode": "ro"}, False
    wal, shm = Path(str(p) + "-wal"), Path(str(p) + "-shm")
    if not wal.exists():
        # Nothing to replay: `immutable` reads the file as it is and creates no -wal or -shm.
        return {"mode": "ro", "immutable": "1"}, False
    if shm.exists():
        return {"mode": "ro"}, False  # a live WAL database: read it through its own -shm
    # A -wal log without -shm: nobody has the file open (an open WAL file always has its -shm), e.g.
    # a copy someone sent. Exclusive locking mode keeps the wal-index in heap memory, so no -shm is
    # created; it needs a write lock, which a read-only descriptor cannot take, hence the VFS
    # without locks (a read-only connection on a file nobody else has open).
    return {"mode": "ro", "vfs": "win32-none" if os.name == "nt" else "unix-none"}, True


def connect(path: str | os.PathLike, *, readonly: bool = True, deadline_s: float | None = None) -> AtlasConnection:
    """A raw connection with the defensive settings; ``mode=ro`` plus ``query_only`` when read-only.

    Checks nothing about the schema: :func:`open_atlas` does.
    """
    p = Path(path)
    resolved = p.resolve().as_posix()
    params, exclusive = _read_params(p) if readonly else ({"mode": "rw"}, False)
    conn = sqlite3.connect(
        resolved_uri(resolved, params),
        uri=True,
        check_same_thread=False,
        isolation_level=None,
        timeout=BUSY_TIMEOUT_S,
        factory=AtlasConnection,
    )
    try:
        conn.budget = Budget(deadline_s)
        conn.set_progress_handler(conn.budget, PROGRESS_STEPS)
        conn.row_factory = sqlite3.Row
        if exclusive:
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")  # before the first read: heap-memory wal-index
        _set_defensive(conn, resolved)
        if hasattr(conn, "setlimit"):  # Python 3.11+
            conn.setlimit(SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
        conn.execute("PRAGMA cell_size_check = ON")  # corrupt b-tree cells are found, not followed
        if readonly:
            conn.execute("PRAGMA trusted_schema = OFF")
            conn.execute("PRAGMA query_only = ON")
            conn.set_authorizer(_authorize_read)
        else:
            # trusted_schema stays ON for writers: SQLite 3.40's JSON functions are not marked
            # innocuous and sae-atlas's CHECK constraints use json_valid(). open_atlas has
            # verified the schema is sae-atlas's own before a writer gets the connection.
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA cache_size = {WRITE_CACHE_KIB}")
            conn.set_authorizer(_authorize_write)
    except BaseException:
        conn.close()
        raise
    return conn


def _set_defensive(conn: sqlite3.Connection, resolved: str) -> bool:
    """Turn on SQLITE_DBCONFIG_DEFENSIVE (no writable_schema, no writes to FTS shadow tables ...).

    Python 3.12+ has ``Connection.setconfig``. On 3.10/3.11 the same C call is
    made through ctypes, on CPython for Linux only (the ``sqlite3 *`` handle
    sits right after the object header of a Connection; the variadic call is
    well defined on the System V ABIs), and only after SQLite confirms that the
    handle names this very file (``resolved``, the path the URI gave). Elsewhere
    it stays off; read connections are still ``mode=ro`` + ``query_only``
    behind an authorizer.
    """
    if hasattr(conn, "setconfig"):
        conn.setconfig(SQLITE_DBCONFIG_DEFENSIVE, True)
        return True
    api = _sqlite_api()
    if api is None:
        return False
    filename, db_config = api
    handle = ctypes.c_void_p.from_address(id(conn) + object.__basicsize__).value
    if not handle or filename(handle, b"main") != os.fsencode(resolved):
        return False
    out = ctypes.c_int(-1)
    rc = db_config(ctypes.c_void_p(handle), ctypes.c_int(SQLITE_DBCONFIG_DEFENSIVE), ctypes.c_int(1), ctypes.byref(out))
    return rc == 0 and out.value == 1


@functools.cache
def _sqlite_api() -> tuple[Any, Any] | None:
    """sqlite3_db_filename and sqlite3_db_config of the library Python's sqlite3 module uses (Linux CPython)."""
    if sys.implementation.name != "cpython" or not sys.platform.startswith("linux"):
        return None
    try:
        import _sqlite3

        lib = ctypes.CDLL(_sqlite3.__file__)
        filename = lib.sqlite3_db_filename
        filename.restype = ctypes.c_char_p
        filename.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        db_config = lib.sqlite3_db_config
        db_config.restype = ctypes.c_int
        return filename, db_config
    except (OSError, AttributeError):
        return None


def is_writable(path: Path) -> bool:
    """Whether the atlas file may be written.

    Permission bits count even for root (who bypasses them): a file someone
    marked read-only (chmod a-w) is treated as read-only. SQLite also needs
    the directory, for its rollback journal.
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return bool(mode & 0o222) and os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise NotAnAtlas(f"{path}: no such file")
    if path.is_dir():
        raise NotAnAtlas(f"{path}: is a directory, not an atlas file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as e:
        raise NotAnAtlas(f"{path}: cannot read ({e.strerror})") from None
    if head != SQLITE_MAGIC:
        raise NotAnAtlas(f"{path}: not an SQLite database, so not an atlas")


def _catalogue(conn: sqlite3.Connection, path: Path) -> tuple[int, list[tuple]]:
    """(user_version, sqlite_master rows) of an atlas connection, after checking it is one."""
    try:
        # one statement for the version, one for the catalogue: every command opens a file
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        cur = conn.cursor()
        cur.row_factory = None  # plain tuples: this runs on every open
        rows = cur.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    except sqlite3.DatabaseError as e:
        err = explain_sqlite_error(e)
        if isinstance(err, (NotAnAtlas, ForeignSchema)) or type(err).__name__ == "DamagedAtlas":
            raise NotAnAtlas(f"{path}: corrupt or unreadable SQLite file ({e})") from None
        raise explain_sqlite_error(e, what=str(path)) from None
    except UnicodeDecodeError:
        raise NotAnAtlas(f"{path}: corrupt SQLite file (its schema is not UTF-8 text)") from None
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path}: atlas schema version {version} is newer than this sae-atlas "
            f"supports ({SCHEMA_VERSION}): upgrade sae-atlas"
        )
    if not any(r[0] == "table" and r[1] == "atlas_info" for r in rows) or version < 1:
        raise NotAnAtlas(f"{path}: SQLite database without the atlas tables, not an atlas")
    return version, rows


def schema_version_of(conn: sqlite3.Connection, path: Path) -> int:
    """user_version of an atlas connection, after checking it is one."""
    return _catalogue(conn, path)[0]


class Atlas(AtlasReader, AtlasWriter):
    """An open atlas file: the read API (AtlasReader) and, if writable, the write API."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        readonly: bool,
        schema_version: int,
        schema: SchemaReport | None = None,
    ):
        self.conn = conn
        self.path = path
        self.readonly = readonly
        self.schema_version = schema_version
        self.schema = schema or SchemaReport()  # what the open-time check found (changed views, others)

    def __enter__(self) -> Atlas:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def interrupt(self) -> None:
        """Stop this atlas's running statement now (from any thread): it fails as interrupted."""
        self.conn.interrupt()

    def require_writable(self) -> None:
        if self.readonly:
            raise ReadOnlyAtlas(f"{self.path}: atlas is open read-only")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error. Nested use joins the outer one.

        IMMEDIATE takes the write lock at the start, so two processes writing at
        once queue on the busy timeout; a deferred BEGIN that reads first cannot
        upgrade its lock while another writer waits, and fails at once.
        """
        self.require_writable()
        if self.conn.in_transaction:
            yield self.conn
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            _rollback(self.conn)
            raise


def _rollback(conn: sqlite3.Connection) -> None:
    """ROLLBACK if a transaction is still open; SQLite has already rolled back after a full disk or I/O error."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the error that brought us here says what happened; this one would hide it


def open_atlas(
    path: str | os.PathLike,
    *,
    readonly: bool = True,
    deadline_s: float | None | str = "default",
    foreign_ok: bool = False,
) -> Atlas:
    """Open an existing atlas. Raises NotAnAtlas, ForeignSchema, SchemaTooNew, NeedsMigration, ReadOnlyAtlas.

    ``deadline_s``: the most one statement may run (None: no limit; default
    READ_DEADLINE_S when read-only, no limit for a writer, whose bulk loads
    may rightly run long). Ctrl-c stops a statement either way.
    ``foreign_ok`` (read-only only): open a file whose schema the check refuses
    anyway, its findings in ``atlas.schema`` (for `validate` and ad-hoc SQL,
    which inspect such a file rather than answer from it).
    """
    p = Path(path)
    _check_file(p)
    if not readonly and not is_writable(p):
        raise ReadOnlyAtlas(f"{p}: file is not writable (read-only file or directory)")
    if deadline_s == "default":
        deadline_s = READ_DEADLINE_S if readonly else None
    conn, version, report = _open_checked(
        p, readonly=readonly, writing=not readonly, deadline_s=deadline_s, refuse=not (readonly and foreign_ok)
    )
    try:
        if version < SCHEMA_VERSION and not readonly:
            raise NeedsMigration(
                f"{p}: atlas schema version {version} is older than {SCHEMA_VERSION}; "
                "run `sae-atlas migrate` to upgrade it before writing"
            )
    except Exception:
        conn.close()
        raise
    return Atlas(conn, p, readonly=readonly, schema_version=version, schema=report)


def _open_checked(
    p: Path,
    *,
    readonly: bool,
    writing: bool,
    deadline_s: float | None,
    refuse: bool = True,
    replaced: frozenset[str] = frozenset(),
) -> tuple[AtlasConnection, int, SchemaReport]:
    """A connection to an atlas whose schema passed the check (for writing, the stricter one)."""
    try:
        conn = connect(p, readonly=readonly, deadline_s=deadline_s)
    except sqlite3.Error as e:
        raise NotAnAtlas(f"{p}: cannot open ({e})") from None
    try:
        version, rows = _catalogue(conn, p)
        report = check_schema(conn, version, rows, schema_version=SCHEMA_VERSION, migrations=tuple(MIGRATIONS))
        if refuse:
            report.raise_if_refused(p, writing=writing, replaced=replaced)
    except sqlite3.Error as e:
        conn.close()
        raise explain_sqlite_error(e, what=str(p)) from None
    except BaseException:
        conn.close()
        raise
    return conn, version, report


def create_atlas(path: str | os.PathLike, *, provenance: dict | None = None, overwrite: bool = False) -> Atlas:
    """Create a new, empty atlas at the current schema version and open it writable."""
    p = Path(path)
    if p.exists():
        if not overwrite:
            raise FileExistsError(f"{p}: already exists")
        p.unlink()
    if not p.parent.is_dir():
        raise StorageError(f"{p.parent}: no such folder, so {p.name} cannot be created there")
    conn = sqlite3.connect(
        p, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S, factory=AtlasConnection
    )
    conn.budget = Budget(None)  # a new file of our own: no deadline, but ctrl-c still stops a statement
    conn.set_progress_handler(conn.budget, PROGRESS_STEPS)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA journal_mode = DELETE")  # one self-contained file to send around
    conn.execute(f"PRAGMA cache_size = {WRITE_CACHE_KIB}")
    conn.executescript("BEGIN;\n" + schema_sql() + "\nCOMMIT;")
    now = utc_now()
    conn.execute(
        "INSERT INTO atlas_info (id, schema_version, sae_atlas_version, created_at, provenance) VALUES (1, ?, ?, ?, ?)",
        (SCHEMA_VERSION, _version(), now, json.dumps(provenance or {}, sort_keys=True)),
    )
    conn.executemany(
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
        [(v, name, now) for v, name, _ in MIGRATIONS],
    )
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return Atlas(conn, p, readonly=False, schema_version=SCHEMA_VERSION)


def migrate(path: str | os.PathLike) -> list[tuple[int, str]]:
    """Bring an older atlas up to SCHEMA_VERSION, in one transaction. Returns what was applied.

    The file's schema is checked as for any write first: a migration runs
    statements on its tables, and must not fire a trigger sae-atlas did not create.
    """
    p = Path(path)
    _check_file(p)
    if not is_writable(p):
        raise ReadOnlyAtlas(f"{p}: file is not writable, cannot migrate")
    # A trigger of an older version that a pending migration drops is sae-atlas's own, not foreign.
    with open_atlas(p, readonly=True, foreign_ok=True) as old:
        pending = [sql for v, _, sql in MIGRATIONS if v > old.schema_version and isinstance(sql, str)]
    dropped = frozenset(m.group(2).lower() for sql in pending for m in _DROP_TRIGGER.finditer(sql))
    conn, version, _ = _open_checked(p, readonly=False, writing=True, deadline_s=None, replaced=dropped)
    try:
        todo = [(v, name, sql) for v, name, sql in MIGRATIONS if v > version]
        if not todo:
            return []
        now = utc_now()
        # SQLite's table-rebuild procedure: foreign keys off while a referenced table (schema 4's saes) is
        # renamed aside and made again, so no row cascades away; every reference is checked before COMMIT.
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for v, name, step in todo:
                run_step(conn, step)
                conn.execute(
                    "INSERT OR REPLACE INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (v, name, now),
                )
            conn.execute("UPDATE atlas_info SET schema_version = ?", (SCHEMA_VERSION,))
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            bad = conn.execute("PRAGMA foreign_key_check").fetchmany(1)
            if bad:
                raise AtlasError(f"{p}: migrating would break a reference ({tuple(bad[0])}); the file is unchanged")
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return [(v, name) for v, name, _ in todo]
    finally:
        conn.close()


_DROP_TRIGGER = re.compile(r"DROP\s+TRIGGER\s+(IF\s+EXISTS\s+)?[\"`\[]?(\w+)", re.I)


def _split_sql(sql: str) -> list[str]:
    """Split a migration script into complete statements (executescript would COMMIT)."""
    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
