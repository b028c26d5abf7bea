"""The label overlay: a user's labels for an atlas they cannot or should not write.

An atlas that may not be written (the bundled example, a read-only file, an
older schema, ``--read-only``) keeps its user's labels in a small SQLite file
of their own, in the user's data folder::

    $SAE_ATLAS_OVERLAY_DIR, else $XDG_DATA_HOME/sae-atlas/overlays, else ~/.local/share/sae-atlas/overlays
        <atlas_id>.db

The file is named after the atlas's identity (``atlas_info.atlas_id``, or for
a version-1 atlas, which stores none, a hash of its atlas_info row), never its
path: a copied or moved atlas finds the same overlay. The CLI and the TUI read
it with the atlas's own labels (``AtlasReader.labels`` and the label search
merge it in, each label saying where it is stored); ``export``/``merge``
``--with-overlay`` fold it into a new atlas. Where a label goes is decided in
:mod:`atlas.labels`.

The overlay is opened like any file from elsewhere: read-only to read, its
identity checked, ``trusted_schema`` off, no trigger but its own before a write.
Writers take the write lock at once (``BEGIN IMMEDIATE``) and wait for each
other (a busy timeout), so two processes labelling at once both keep their labels.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from atlas.domain import LABEL_KINDS
from atlas.errors import AtlasError
from atlas.migrations import label_fts_sql, split_sql, v1_atlas_id
from atlas.types import Label

OVERLAY_DIR_ENV = "SAE_ATLAS_OVERLAY_DIR"
OVERLAY_FORMAT = 1
# Seconds a writer waits for another to finish (each holds the lock for milliseconds).
BUSY_TIMEOUT_S = 30.0

_ATLAS_ID_RE = re.compile(r"[0-9a-f]{32}")

OVERLAY_SCHEMA = """
CREATE TABLE overlay_info (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    format     INTEGER NOT NULL,
    atlas_id   TEXT    NOT NULL,        -- the atlas these labels belong to
    atlas_path TEXT,                    -- where it was when this file was made (for people only)
    created_at TEXT    NOT NULL
);
CREATE TABLE labels (
    label_id   INTEGER PRIMARY KEY,
    feature_id INTEGER NOT NULL,        -- the atlas's feature_id
    feature    TEXT    NOT NULL,        -- its name (L14.res/3): export and merge renumber ids, names survive
    text       TEXT    NOT NULL,
    kind       TEXT    NOT NULL CHECK (kind IN ('semantic', 'non_semantic', 'free')),
    source     TEXT    NOT NULL DEFAULT 'user',
    created_at TEXT    NOT NULL
);
CREATE INDEX labels_feature ON labels (feature_id);
"""


class OverlayError(AtlasError):
    """The overlay file is damaged, not an overlay, or belongs to another atlas."""


def overlay_dir() -> Path:
    """Where overlays live: $SAE_ATLAS_OVERLAY_DIR, else the XDG data folder."""
    env = os.environ.get(OVERLAY_DIR_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sae-atlas" / "overlays"


def atlas_identity(conn: sqlite3.Connection) -> str:
    """The atlas's identity: 32 hex digits, whatever the file holds.

    A version-2 atlas stores it (``atlas_info.atlas_id``); a version-1 atlas
    is known by a hash of its atlas_info row. A damaged or hostile id is
    hashed into the same shape, so it can never name another path.
    """
    cur = conn.execute("SELECT * FROM atlas_info WHERE id = 1")
    columns = [d[0] for d in cur.description]
    cur.close()
    if "atlas_id" not in columns:
        return v1_atlas_id(conn)
    row = conn.execute("SELECT CAST(atlas_id AS BLOB) FROM atlas_info WHERE id = 1").fetchone()
    raw = row[0] if row else None
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else None
    if text is not None and _ATLAS_ID_RE.fullmatch(text):
        return text
    return hashlib.sha256(b"damaged atlas_id\x1f" + (raw or b"")).hexdigest()[:32]


def _now() -> str:
    from atlas.write import utc_now

    return utc_now()


def _file_uri(path: Path, mode: str) -> str:
    from atlas.files import file_uri

    return file_uri(path, mode=mode)


class LabelOverlay:
    """One atlas's overlay file (which may not exist yet: reading a missing one gives no labels)."""

    def __init__(self, atlas_id: str, directory: Path | None = None) -> None:
        if not _ATLAS_ID_RE.fullmatch(atlas_id):
            raise ValueError(f"not an atlas id: {atlas_id!r}")
        self.atlas_id = atlas_id
        self.path = (directory if directory is not None else overlay_dir()) / f"{atlas_id}.db"

    @classmethod
    def of(cls, conn: sqlite3.Connection) -> LabelOverlay:
        """The overlay of the atlas open on ``conn``."""
        return cls(atlas_identity(conn))

    def exists(self) -> bool:
        return self.path.is_file()

    # ------------------------------------------------------------ opening
    def _open(self, *, write: bool) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                _file_uri(self.path, "rw" if write else "ro"),
                uri=True,
                timeout=BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as e:
            raise OverlayError(f"label overlay {self.path}: cannot open ({e})") from None
        try:
            conn.execute("PRAGMA trusted_schema = OFF")
            if not write:
                conn.execute("PRAGMA query_only = ON")
            row = conn.execute("SELECT format, atlas_id FROM overlay_info WHERE id = 1").fetchone()
            if row is None or row[1] != self.atlas_id:
                raise OverlayError(f"label overlay {self.path} belongs to another atlas; move it away")
            if not isinstance(row[0], int) or row[0] > OVERLAY_FORMAT:
                raise OverlayError(f"label overlay {self.path} was written by a newer sae-atlas: upgrade sae-atlas")
            if write:
                self._check_objects(conn)
        except sqlite3.OperationalError as e:
            conn.close()
            if "locked" in str(e) or "busy" in str(e):
                raise OverlayError(
                    f"label overlay {self.path} is busy (another sae-atlas is writing it): try again"
                ) from None
            raise OverlayError(f"label overlay {self.path} is damaged or not an overlay ({e}); move it away") from None
        except sqlite3.DatabaseError as e:
            conn.close()
            raise OverlayError(f"label overlay {self.path} is damaged or not an overlay ({e}); move it away") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_objects(self, conn: sqlite3.Connection) -> None:
        """Before a write: the file holds only what this module creates, and its triggers are ours.

        The FTS triggers write into a virtual table, which SQLite allows only
        with trusted_schema on; it is turned on for this connection once the
        schema is known to be ours.
        """
        want = {_trigger_key(s) for s in split_sql(label_fts_sql()) if s.startswith("CREATE TRIGGER")}
        have = {_trigger_key(r[0]) for r in conn.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger'")}
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type != 'trigger'")}
        if (
            have != want
            or not names <= _OBJECTS
            or conn.execute("PRAGMA main.integrity_check(1)").fetchone()[0] != "ok"
        ):
            raise OverlayError(f"label overlay {self.path} holds things sae-atlas did not put there; move it away")
        conn.execute("PRAGMA trusted_schema = ON")

    def _create(self, atlas_path: str | None) -> None:
        """Make the file atomically: written aside, then linked into place (a concurrent maker's file wins)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("BEGIN")
                for statement in split_sql(OVERLAY_SCHEMA + label_fts_sql()):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO overlay_info (id, format, atlas_id, atlas_path, created_at) VALUES (1, ?, ?, ?, ?)",
                    (OVERLAY_FORMAT, self.atlas_id, atlas_path, _now()),
                )
                conn.execute("COMMIT")
            finally:
                conn.close()
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass  # another process made it first: use theirs
            except OSError:  # a file system without hard links
                if not self.path.exists():
                    os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection | None]:
        """A read-only connection, or None when there is no overlay yet."""
        if not self.exists():
            yield None
            return
        conn = self._open(write=False)
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def writing(self, atlas_path: str | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: writers queue instead of failing), creating the file if needed."""
        if not self.exists():
            self._create(atlas_path)
        conn = self._open(write=True)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as e:
            raise OverlayError(f"label overlay {self.path}: {e}") from None
        finally:
            conn.close()

    # ------------------------------------------------------------ reading
    def labels(self, feature_ids: Iterable[int]) -> dict[int, list[Label]]:
        """The overlay's labels of these features, newest first."""
        ids = sorted({int(i) for i in feature_ids})
        out: dict[int, list[Label]] = {}
        if not ids:
            return out
        with self.reading() as conn:
            if conn is None:
                return out
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM labels WHERE feature_id IN ({', '.join('?' * len(ids))}) "
                "ORDER BY feature_id, label_id DESC",
                ids,
            ).fetchall()
        for r in rows:
            out.setdefault(r[1], []).append(_label(r))
        return out

    def search(self, query: str, *, limit: int = 50) -> list[tuple[str, Label]]:
        """(feature name, label) of labels matching an FTS5 query (plain words AND-ed), best first."""
        with self.reading() as conn:
            if conn is None:
                return []
            sql = (
                f"SELECT l.feature, {_COLUMNS_L} FROM labels_fts JOIN labels l ON l.label_id = labels_fts.rowid "
                "WHERE labels_fts MATCH ? ORDER BY labels_fts.rank LIMIT ?"
            )
            try:
                rows = conn.execute(sql, (query, limit)).fetchall()
            except sqlite3.OperationalError:  # not FTS5 syntax: the words as a phrase
                rows = conn.execute(sql, ('"' + query.replace('"', '""') + '"', limit)).fetchall()
        return [(r[0], _label(r[1:])) for r in rows]

    def all_labels(self) -> list[tuple[str, Label]]:
        """Every label, oldest first, with its feature's name (for folding into another atlas)."""
        with self.reading() as conn:
            if conn is None:
                return []
            rows = conn.execute(f"SELECT feature, {_COLUMNS} FROM labels ORDER BY label_id").fetchall()
        return [(r[0], _label(r[1:])) for r in rows]

    def count(self) -> int:
        with self.reading() as conn:
            return 0 if conn is None else conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0]

    # ------------------------------------------------------------ writing
    def add(
        self, feature_id: int, feature: str, text: str, kind: str = "free", *, atlas_path: str | None = None
    ) -> Label:
        _check_kind(kind)
        with self.writing(atlas_path) as conn:
            cur = conn.execute(
                "INSERT INTO labels (feature_id, feature, text, kind, source, created_at) VALUES (?, ?, ?, ?, 'user', ?)",
                (feature_id, feature, text, kind, _now()),
            )
            row = conn.execute(f"SELECT {_COLUMNS} FROM labels WHERE label_id = ?", (cur.lastrowid,)).fetchone()
        return _label(row)

    def set_user_label(
        self, feature_id: int, feature: str, text: str, kind: str = "free", *, atlas_path: str | None = None
    ) -> Label:
        """Replace the text of the feature's newest user label, or add one (the browser's one label per feature)."""
        _check_kind(kind)
        with self.writing(atlas_path) as conn:
            row = conn.execute(
                "SELECT label_id FROM labels WHERE feature_id = ? AND source = 'user' ORDER BY label_id DESC LIMIT 1",
                (feature_id,),
            ).fetchone()
            if row is None:
                label_id = conn.execute(
                    "INSERT INTO labels (feature_id, feature, text, kind, source, created_at) "
                    "VALUES (?, ?, ?, ?, 'user', ?)",
                    (feature_id, feature, text, kind, _now()),
                ).lastrowid
            else:
                label_id = row[0]
                conn.execute(
                    "UPDATE labels SET text = ?, kind = ?, created_at = ? WHERE label_id = ?",
                    (text, kind, _now(), label_id),
                )
            out = conn.execute(f"SELECT {_COLUMNS} FROM labels WHERE label_id = ?", (label_id,)).fetchone()
        return _label(out)

    def delete(self, label_id: int) -> tuple[int, str, str]:
        """Delete one label; returns its (feature_id, feature name, text)."""
        if not self.exists():
            raise AtlasError(f"no label with id {label_id} in the label overlay (there is none yet)")
        with self.writing() as conn:
            row = conn.execute(
                "SELECT feature_id, feature, text FROM labels WHERE label_id = ?", (label_id,)
            ).fetchone()
            if row is None:
                raise AtlasError(f"no label with id {label_id} in the label overlay {self.path}")
            conn.execute("DELETE FROM labels WHERE label_id = ?", (label_id,))
        return int(row[0]), str(row[1]), str(row[2])


_COLUMNS = "label_id, feature_id, text, kind, source, created_at"
_OBJECTS = frozenset(
    {
        "overlay_info",
        "labels",
        "labels_feature",
        "labels_fts",
        "labels_fts_data",
        "labels_fts_idx",
        "labels_fts_docsize",
        "labels_fts_config",
        "sqlite_autoindex_labels_fts_idx_1",
        "sqlite_autoindex_labels_fts_config_1",
    }
)
_COLUMNS_L = "l.label_id, l.feature_id, l.text, l.kind, l.source, l.created_at"


def _label(r: tuple) -> Label:
    return Label(
        label_id=r[0],
        feature_id=r[1],
        text=r[2],
        kind=r[3],
        source=r[4],
        score=None,
        evidence=None,
        created_at=r[5],
        stored_in="overlay",
    )


def _trigger_key(sql: str | None) -> str:
    """A trigger's text without quoting and spacing (sqlite-utils 3 quotes [names], 4 "names")."""
    return " ".join(re.sub(r'[\[\]"`]', "", str(sql)).rstrip(";").split())


def _check_kind(kind: str) -> None:
    if kind not in LABEL_KINDS:
        raise AtlasError(f"unknown label kind {kind!r}; choose from {', '.join(LABEL_KINDS)}")
