"""Small named exceptions. The CLI turns each into one line on stderr and exit 1.

An atlas is untrusted input (users send each other ``.db`` files), so damage
and hostility have names too: :class:`ForeignSchema` for schema objects
sae-atlas did not define, :class:`DamagedAtlas` for data of the wrong type or
shape, and :func:`explain_sqlite_error` for SQLite's own failures (disk full,
busy, corrupt) in words that say what happened and what to do.
"""

from __future__ import annotations

import sqlite3


class AtlasError(Exception):
    """Base class for every error the atlas library raises on bad input."""


class NotAnAtlas(AtlasError):
    """The file is missing, not SQLite, or SQLite without the atlas tables."""


class ForeignSchema(AtlasError):
    """The file's schema objects (tables, views, triggers) are not the ones sae-atlas defines."""


class DamagedAtlas(AtlasError):
    """A value in the atlas has the wrong type, is NULL where it may not be, or does not parse."""


class BadProvenance(DamagedAtlas):
    """``atlas_info.provenance`` is not a JSON object, or a part sae-atlas reads has the wrong shape."""


class SchemaTooNew(AtlasError):
    """The atlas was written by a newer sae-atlas."""


class NeedsMigration(AtlasError):
    """The atlas is older than this sae-atlas and must be migrated to be written."""


class ReadOnlyAtlas(AtlasError):
    """A write was asked of an atlas opened read-only (or of a read-only file)."""


class FeatureNotFound(AtlasError):
    """No feature matches the name or id given."""


class SAENotFound(AtlasError):
    """No SAE matches the name given."""


class BadQuery(AtlasError):
    """Ad-hoc SQL that SQLite rejected, or that tried to write."""


class QueryTimeout(BadQuery):
    """A query ran past its deadline and was stopped."""


class QueryInterrupted(AtlasError):
    """A query was stopped by the user (ctrl-c) or by the app quitting."""


class AtlasBusy(AtlasError):
    """Another process held the atlas's write lock for longer than sae-atlas waits."""


class StorageError(AtlasError):
    """The disk refused: full, a missing folder, an I/O error."""


# SQLite primary result codes (the low byte of an extended code).
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_NOMEM, SQLITE_READONLY, SQLITE_INTERRUPT = 5, 6, 7, 8, 9
SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_TOOBIG, SQLITE_NOTADB = 10, 11, 13, 14, 18, 26
SQLITE_READONLY_ROLLBACK = SQLITE_READONLY | (3 << 8)  # a hot journal that a read-only connection cannot undo
SQLITE_CORRUPT_VTAB = SQLITE_CORRUPT | (1 << 8)  # a virtual table (FTS5) found its own data damaged

DAMAGE_HINT = "the atlas looks damaged: `sae-atlas validate` checks it"


def sqlite_code(e: BaseException) -> int | None:
    """The extended SQLite result code of an exception (Python 3.11+ records it), else None."""
    code = getattr(e, "sqlite_errorcode", None)
    return code if isinstance(code, int) else None


def error_line(e: BaseException) -> str:
    """One plain line for any exception met while reading an atlas (for the TUI's messages)."""
    if isinstance(e, sqlite3.Error):
        e = explain_sqlite_error(e)
    if isinstance(e, UnicodeDecodeError):
        return f"text in the atlas is not valid UTF-8 ({e.reason} at byte {e.start}); {DAMAGE_HINT}"
    text = " ".join(str(e).split())
    return text if isinstance(e, AtlasError) and text else f"{type(e).__name__}: {text}".rstrip(": ")


def explain_sqlite_error(e: sqlite3.Error, *, what: str = "") -> AtlasError:
    """A named AtlasError with one plain line for an sqlite3 error (``what`` names the file or step).

    Only corruption suggests damage: a locked file is another writer, a full
    disk is the disk, and neither says anything about the atlas.
    """
    code = sqlite_code(e)
    primary = code & 0xFF if code is not None else None
    msg = " ".join(str(e).split())
    low = msg.lower()
    at = f"{what}: " if what else ""
    if primary == SQLITE_FULL or "database or disk is full" in low:
        return StorageError(f"{at}disk full: SQLite could not write ({msg}); free some space and run it again")
    if primary in (SQLITE_BUSY, SQLITE_LOCKED) or "database is locked" in low or "table is locked" in low:
        return AtlasBusy(
            f"{at}the atlas is busy: another process kept it locked while sae-atlas waited ({msg}); "
            "run it again when that process is done"
        )
    if primary == SQLITE_INTERRUPT or low == "interrupted":
        from atlas.interrupt import CTRL_C, DEADLINE, stop_reason

        reason, seconds = stop_reason()
        if reason == DEADLINE:
            return QueryTimeout(
                f"{at}a query ran longer than {seconds:g} s and was stopped: an atlas whose schema or size "
                "makes sae-atlas's own queries this slow is not one it can answer from"
            )
        return QueryInterrupted(f"{at}interrupted" + (" (ctrl-c)" if reason == CTRL_C else ""))
    if code == SQLITE_READONLY_ROLLBACK or "readonly_rollback" in low:
        return StorageError(
            f"{at}the atlas has an unfinished write (a hot -journal file beside it) that only a writable "
            "open can undo: open it once with a write (e.g. `sae-atlas migrate`) where the file is writable"
        )
    if primary == SQLITE_CANTOPEN or "unable to open database file" in low:
        if what.endswith("no such folder"):
            return StorageError(what)
        return StorageError(f"{at}cannot open the file: its folder does not exist or cannot be read ({msg})")
    if primary == SQLITE_TOOBIG or "string or blob too big" in low:
        return DamagedAtlas(f"{at}a value is larger than sae-atlas reads ({msg}); {DAMAGE_HINT}")
    if primary == SQLITE_NOMEM or "out of memory" in low:
        return StorageError(f"{at}out of memory ({msg})")
    if primary == SQLITE_IOERR or "disk i/o error" in low:
        return StorageError(f"{at}disk I/O error: the file or its disk cannot be read or written ({msg})")
    if "could not decode to utf-8" in low:  # the sqlite3 module met TEXT bytes that are not UTF-8
        column = msg.split("column ", 1)[1].split(" with text", 1)[0] if "column " in msg else "?"
        return DamagedAtlas(f"{at}text in the atlas is not valid UTF-8 (column {column}); {DAMAGE_HINT}")
    if code == SQLITE_CORRUPT_VTAB:
        return DamagedAtlas(f"{at}a full-text index of the atlas is damaged ({msg}); {DAMAGE_HINT}")
    if primary in (SQLITE_CORRUPT, SQLITE_NOTADB) or "malformed" in low or "not a database" in low:
        return DamagedAtlas(f"{at}SQLite error: {msg}; {DAMAGE_HINT}")
    if "fts5" in low or "fts" in low.split():
        return DamagedAtlas(f"{at}full-text index error: {msg}; {DAMAGE_HINT}")
    return DamagedAtlas(f"{at}SQLite error: {msg} (is the atlas damaged? `sae-atlas validate` checks it)")
