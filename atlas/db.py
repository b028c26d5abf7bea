"""Opening, creating and migrating atlas files.

An atlas is one SQLite file. It is opened read-only unless a write is asked
for; an older schema is migrated only by :func:`migrate` (``sae-atlas
migrate``), never as a side effect of opening it.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from atlas.errors import NeedsMigration, NotAnAtlas, ReadOnlyAtlas, SchemaTooNew
from atlas.files import file_uri
from atlas.migrations import MIGRATIONS, SCHEMA_VERSION, run_step, schema_sql
from atlas.read import AtlasReader
from atlas.write import AtlasWriter, utc_now

SQLITE_MAGIC = b"SQLite format 3\x00"

# Page cache of a writing connection (negative = KiB): index inserts of a build stay in
# memory instead of re-reading pages, about twice the insert rate of SQLite's 2 MB default.
WRITE_CACHE_KIB = -256 * 1024


def _version() -> str:
    from atlas import __version__

    return __version__


def _deny_attach(action: int, *args: object) -> int:
    # ATTACH could create files or reach other databases; ad-hoc SQL never needs it.
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _wal_without_log(path: Path) -> bool:
    """A WAL-format file with no -wal log beside it: nothing to read but the file itself."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(20)
    except OSError:
        return False
    return len(header) == 20 and 2 in header[18:20] and not Path(str(path) + "-wal").exists()


def connect(path: str | os.PathLike, *, readonly: bool = True) -> sqlite3.Connection:
    """A raw connection: ``mode=ro`` plus ``query_only`` when read-only."""
    p = Path(path)
    params = {"mode": "ro" if readonly else "rw"}
    if readonly and _wal_without_log(p):
        # Reading a WAL-mode file would create -wal and -shm files beside it; with
        # no log to replay, `immutable` reads the file as it is and creates nothing.
        params["immutable"] = "1"
    uri = file_uri(p, **params)
    conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    if not readonly:  # a read-only connection changes nothing, so has no keys to enforce
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA cache_size = {WRITE_CACHE_KIB}")
    else:
        conn.execute("PRAGMA query_only = ON")
        conn.set_authorizer(_deny_attach)
    return conn


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


def schema_version_of(conn: sqlite3.Connection, path: Path) -> int:
    """user_version of an atlas connection, after checking it is one."""
    try:
        # one statement: every command opens a file, so this is on the path of each
        version, has_info = conn.execute(
            "SELECT (SELECT user_version FROM pragma_user_version), "
            "EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'atlas_info')"
        ).fetchone()
    except sqlite3.DatabaseError as e:
        raise NotAnAtlas(f"{path}: corrupt or unreadable SQLite file ({e})") from None
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path}: atlas schema version {version} is newer than this sae-atlas "
            f"supports ({SCHEMA_VERSION}): upgrade sae-atlas"
        )
    if not has_info or version < 1:
        raise NotAnAtlas(f"{path}: SQLite database without the atlas tables, not an atlas")
    return version


class Atlas(AtlasReader, AtlasWriter):
    """An open atlas file: the read API (AtlasReader) and, if writable, the write API."""

    def __init__(self, conn: sqlite3.Connection, path: Path, *, readonly: bool, schema_version: int):
        self.conn = conn
        self.path = path
        self.readonly = readonly
        self.schema_version = schema_version

    def __enter__(self) -> Atlas:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def require_writable(self) -> None:
        if self.readonly:
            raise ReadOnlyAtlas(f"{self.path}: atlas is open read-only")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN ... COMMIT, or ROLLBACK on error. Nested use joins the outer one."""
        self.require_writable()
        if self.conn.in_transaction:
            yield self.conn
            return
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        except BaseException:
            if self.conn.in_transaction:  # SQLite ends it itself on some errors (a full disk)
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")


def open_atlas(path: str | os.PathLike, *, readonly: bool = True) -> Atlas:
    """Open an existing atlas. Raises NotAnAtlas, SchemaTooNew, NeedsMigration, ReadOnlyAtlas."""
    p = Path(path)
    _check_file(p)
    if not readonly and not is_writable(p):
        raise ReadOnlyAtlas(f"{p}: file is not writable (read-only file or directory)")
    try:
        conn = connect(p, readonly=readonly)
    except sqlite3.Error as e:
        raise NotAnAtlas(f"{p}: cannot open ({e})") from None
    try:
        version = schema_version_of(conn, p)
        if version < SCHEMA_VERSION and not readonly:
            raise NeedsMigration(
                f"{p}: atlas schema version {version} is older than {SCHEMA_VERSION}; "
                "run `sae-atlas migrate` to upgrade it before writing"
            )
    except Exception:
        conn.close()
        raise
    return Atlas(conn, p, readonly=readonly, schema_version=version)


def create_atlas(path: str | os.PathLike, *, provenance: dict | None = None, overwrite: bool = False) -> Atlas:
    """Create a new, empty atlas at the current schema version and open it writable."""
    p = Path(path)
    if p.exists():
        if not overwrite:
            raise FileExistsError(f"{p}: already exists")
        p.unlink()
    conn = sqlite3.connect(p, check_same_thread=False, isolation_level=None)
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
    """Bring an older atlas up to SCHEMA_VERSION, in one transaction. Returns what was applied."""
    p = Path(path)
    _check_file(p)
    if not is_writable(p):
        raise ReadOnlyAtlas(f"{p}: file is not writable, cannot migrate")
    conn = connect(p, readonly=False)
    try:
        version = schema_version_of(conn, p)
        todo = [(v, name, sql) for v, name, sql in MIGRATIONS if v > version]
        if not todo:
            return []
        now = utc_now()
        conn.execute("BEGIN")
        try:
            for v, name, step in todo:
                run_step(conn, step)
                conn.execute(
                    "INSERT OR REPLACE INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (v, name, now),
                )
            conn.execute("UPDATE atlas_info SET schema_version = ?", (SCHEMA_VERSION,))
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return [(v, name) for v, name, _ in todo]
    finally:
        conn.close()


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
