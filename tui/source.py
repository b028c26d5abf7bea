"""Where the app's data comes from: one atlas path, opened afresh by each worker thread.

SQLite connections must not be shared between the UI thread and workers, so
the app holds only a path; every worker calls :meth:`AtlasSource.open` and
gets its own read-only connection (``mode=ro`` + ``query_only``, the schema
checked, a deadline on every statement). The source remembers the atlases it
has open, so that quitting can stop a worker's query at once
(:meth:`AtlasSource.interrupt_all`): a worker thread cannot be killed, and
the app's event loop waits for its threads before the process ends. The user's
label overlay (atlas/overlay.py) is read with the atlas's own labels by the
library itself; where a new label goes is :func:`atlas.labels.label_target`.
"""

from __future__ import annotations

import sqlite3
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from atlas import open_atlas
from atlas.db import Atlas
from atlas.errors import QueryInterrupted
from atlas.labels import LabelTarget, label_target
from atlas.schema_check import SchemaReport

READ_ONLY_REASON = "opened with --read-only"


@dataclass
class AtlasSource:
    path: Path
    force_readonly: bool = False  # --read-only on the command line: labels go to the overlay
    schema_version: int = 0  # known after check()
    schema: SchemaReport = field(default_factory=SchemaReport, repr=False, compare=False)  # from check()
    _open: weakref.WeakSet = field(default_factory=weakref.WeakSet, repr=False, compare=False)
    _closing: bool = field(default=False, repr=False, compare=False)

    def check(self) -> None:
        """Raise NotAnAtlas / ForeignSchema / SchemaTooNew (one clear line) if the file cannot be browsed."""
        with open_atlas(self.path, readonly=True) as atlas:
            self.schema_version = atlas.schema_version
            self.schema = atlas.schema

    def open(self) -> Atlas:
        """A new read-only Atlas for the calling thread; close it when done (it is a context manager)."""
        return self._track(open_atlas(self.path, readonly=True))

    @property
    def force_overlay(self) -> str | None:
        return READ_ONLY_REASON if self.force_readonly else None

    def label_target(self) -> LabelTarget:
        """Where a label typed in the browser goes (the file or the overlay), and why."""
        with self.open() as atlas:
            return label_target(atlas, force_overlay=self.force_overlay)

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
