"""Where the app's data comes from: one atlas path, opened afresh by each worker thread.

SQLite connections must not be shared between the UI thread and workers, so
the app holds only a path; every worker calls :meth:`AtlasSource.open` and
gets its own read-only connection (``mode=ro`` + ``query_only``). The user's
label overlay (atlas/overlay.py) is read with the atlas's own labels by the
library itself; where a new label goes is :func:`atlas.labels.label_target`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from atlas import open_atlas
from atlas.db import Atlas
from atlas.labels import LabelTarget, label_target

READ_ONLY_REASON = "opened with --read-only"


@dataclass
class AtlasSource:
    path: Path
    force_readonly: bool = False  # --read-only on the command line: labels go to the overlay
    schema_version: int = 0  # known after check()

    def check(self) -> None:
        """Raise NotAnAtlas / SchemaTooNew (one clear line) if the file cannot be browsed."""
        with open_atlas(self.path, readonly=True) as atlas:
            self.schema_version = atlas.schema_version

    def open(self) -> Atlas:
        """A new read-only Atlas for the calling thread; close it when done (it is a context manager)."""
        return open_atlas(self.path, readonly=True)

    @property
    def force_overlay(self) -> str | None:
        return READ_ONLY_REASON if self.force_readonly else None

    def label_target(self) -> LabelTarget:
        """Where a label typed in the browser goes (the file or the overlay), and why."""
        with self.open() as atlas:
            return label_target(atlas, force_overlay=self.force_overlay)
