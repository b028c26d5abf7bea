"""Where the app's data comes from: one atlas path, opened afresh by each worker thread.

SQLite connections must not be shared between the UI thread and workers, so
the app holds only a path; every worker calls :meth:`AtlasSource.open` and
gets its own read-only connection (``mode=ro`` + ``query_only``, the schema
checked, a deadline on every statement). The source remembers the atlases it
has open, so that quitting can stop a worker's query at once
(:meth:`AtlasSource.interrupt_all`): a worker thread cannot be killed, and
the app's event loop waits for its threads before the process ends.
"""

from __future__ import annotations

import os
import sqlite3
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from atlas import open_atlas
from atlas.db import Atlas, connect
from atlas.errors import QueryInterrupted
from atlas.schema_check import SchemaReport

BUNDLED_NAME = "atlas.db.example"


def bundled_atlas() -> Path:
    """The example atlas shipped at the repository root, next to the packages."""
    return Path(__file__).resolve().parent.parent / BUNDLED_NAME


@dataclass
class AtlasSource:
    path: Path
    force_readonly: bool = False  # --read-only on the command line
    schema: SchemaReport = field(default_factory=SchemaReport, repr=False, compare=False)  # from check()
    _open: weakref.WeakSet = field(default_factory=weakref.WeakSet, repr=False, compare=False)
    _closing: bool = field(default=False, repr=False, compare=False)

    def check(self) -> None:
        """Raise NotAnAtlas / ForeignSchema / SchemaTooNew (one clear line) if the file cannot be browsed."""
        with open_atlas(self.path, readonly=True) as atlas:
            self.schema = atlas.schema

    def open(self) -> Atlas:
        """A new read-only Atlas for the calling thread; close it when done (it is a context manager)."""
        return self._track(open_atlas(self.path, readonly=True))

    def open_writable(self) -> Atlas:
        return self._track(open_atlas(self.path, readonly=False))

    def _track(self, atlas: Atlas) -> Atlas:
        if self._closing:
            atlas.close()
            raise QueryInterrupted("the browser is closing")
        self._open.add(atlas)
        return atlas

    def interrupt_all(self) -> None:
        """Stop every running query of this source's atlases now, and open no more (the app is quitting)."""
        self._closing = True
        for atlas in list(self._open):
            try:
                atlas.interrupt()
            except sqlite3.ProgrammingError:
                pass  # closed meanwhile

    def readonly_reason(self) -> str | None:
        """Why labels cannot be written into this file, or None if they can."""
        if self.force_readonly:
            return "opened with --read-only"
        if self.path.resolve() == bundled_atlas():
            return "this is the bundled example atlas, shared by everyone who installs sae-atlas"
        if not os.access(self.path, os.W_OK):
            return "the file is read-only"
        if not os.access(self.path.resolve().parent, os.W_OK):
            return "its folder is read-only (SQLite must write a journal next to the file)"
        return None

    def default_copy_path(self) -> Path:
        """Where a writable copy goes by default: next to the file if possible, else the current folder."""
        stem = self.path.name.removesuffix(".example").removesuffix(".db")
        folder = self.path.resolve().parent
        if not os.access(folder, os.W_OK) or self.path.resolve() == bundled_atlas():
            folder = Path.cwd()
        candidate = folder / f"{stem}.labels.db"
        n = 2
        while candidate.exists():
            candidate = folder / f"{stem}.labels-{n}.db"
            n += 1
        return candidate

    def copy_to(self, dest: Path, progress: Callable[[int, int], None] | None = None) -> Path:
        """Copy the atlas to ``dest`` with SQLite's online backup (consistent even while it is read)."""
        dest = Path(dest)
        if dest.exists():
            raise FileExistsError(f"{dest}: already exists; choose another name")
        tmp = dest.with_name(dest.name + ".partial")
        src = connect(self.path, readonly=True)  # read as every read is: nothing created beside the file
        try:
            out = sqlite3.connect(tmp)
            try:
                src.backup(
                    out,
                    pages=4096,
                    progress=(lambda _s, left, total: progress(total - left, total)) if progress else None,
                )
            finally:
                out.close()
            os.replace(tmp, dest)  # nothing half-written under the final name
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            src.close()
        return dest
