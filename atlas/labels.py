"""Where a user's label goes, and writing it there: one rule for the CLI and the TUI.

The rule, shown to the user with every label written:

* **into the atlas file** when you may write it: a file you own and can write
  (and its folder, for SQLite's journal), at the current schema, that is not
  the bundled example, and that you did not open with ``--read-only`` /
  ``--overlay``. A label then travels with the file (send it to a colleague,
  open it in Datasette);
* **otherwise into your label overlay** (:mod:`atlas.overlay`): the bundled
  example, a read-only file or folder, someone else's file, an atlas at an
  older schema (it opens read-only until ``sae-atlas migrate``). The atlas is
  never touched; the overlay is found again by the atlas's identity.

Either way the label is read back with the atlas's own labels, and
``export``/``merge --with-overlay`` fold overlay labels into a new atlas.
Writes take the write lock at once (``BEGIN IMMEDIATE``) and wait for each
other, so two processes labelling one atlas at once both keep their labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from atlas.bundled import is_bundled_example
from atlas.errors import AtlasError
from atlas.migrations import SCHEMA_VERSION
from atlas.overlay import LabelOverlay, _check_kind
from atlas.types import Label

USER_SOURCE = "user"


@dataclass(frozen=True)
class LabelTarget:
    """Where user labels of one atlas are written, and why (shown to the user)."""

    where: str  # "atlas" | "overlay"
    path: Path  # the file written: the atlas, or its overlay
    reason: str  # e.g. "the bundled example is read-only"

    def short(self) -> str:
        return "the atlas file" if self.where == "atlas" else f"your label overlay {self.path}"

    def describe(self) -> str:
        if self.where == "atlas":
            return f"in the atlas file {self.path}"
        return f"in your label overlay {self.path} ({self.reason})"


def overlay_reason(path: Path, schema_version: int, *, force_overlay: str | None = None) -> str | None:
    """Why labels of this atlas go to the overlay, or None when they go into the file."""
    if force_overlay:
        return force_overlay
    if is_bundled_example(path):
        return "the bundled example is read-only"
    if schema_version < SCHEMA_VERSION:
        return f"schema version {schema_version} opens read-only; `sae-atlas migrate` upgrades it"
    try:
        st = path.stat()
    except OSError as e:
        return f"cannot read the file's permissions ({e.strerror})"
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        return "the file belongs to another user"
    # Permission bits count even for root (who bypasses them): chmod a-w means read-only.
    if not (st.st_mode & 0o222 and os.access(path, os.W_OK)):
        return "the file is read-only"
    if not os.access(path.resolve().parent, os.W_OK | os.X_OK):
        return "its folder is read-only (SQLite writes a journal beside the file)"
    return None


def label_target(atlas, *, force_overlay: str | None = None) -> LabelTarget:
    """Where labels of the atlas open as ``atlas`` (an atlas.db.Atlas) go."""
    reason = overlay_reason(atlas.path, atlas.schema_version, force_overlay=force_overlay)
    if reason is None:
        return LabelTarget("atlas", atlas.path, "you can write the atlas file")
    return LabelTarget("overlay", atlas.overlay_store().path, reason)


def _writable(path: Path):
    """The atlas opened for a write: its schema checked, a busy timeout, BEGIN IMMEDIATE transactions."""
    from atlas.db import open_atlas

    return open_atlas(path, readonly=False)


def add_user_label(
    atlas, feature: str | int, text: str, kind: str = "free", *, force_overlay: str | None = None
) -> tuple[Label, str, LabelTarget]:
    """Add a label to a feature of ``atlas`` (open read-only) where the rule says.

    Returns the label, the feature's name and the target it went to.
    """
    text = _clean(text)
    _check_kind(kind)
    fid = atlas.resolve_feature(feature)
    name = atlas.feature_name(fid)
    target = label_target(atlas, force_overlay=force_overlay)
    if target.where == "overlay":
        return atlas.overlay_store().add(fid, name, text, kind, atlas_path=str(atlas.path)), name, target
    with _writable(atlas.path) as rw, rw.transaction():
        label_id = rw.add_label(fid, text, kind=kind, source=USER_SOURCE)
        label = rw.label(label_id)  # read back inside the transaction: a failed read writes nothing
    return label, name, target


def set_user_label(
    atlas, feature_id: int, text: str, kind: str = "free", *, force_overlay: str | None = None
) -> tuple[Label, LabelTarget]:
    """The browser's edit: replace the feature's newest user label where the rule says, or add one."""
    text = _clean(text)
    _check_kind(kind)
    name = atlas.feature_name(feature_id)
    target = label_target(atlas, force_overlay=force_overlay)
    if target.where == "overlay":
        label = atlas.overlay_store().set_user_label(feature_id, name, text, kind, atlas_path=str(atlas.path))
        return label, target
    from atlas.write import utc_now

    with _writable(atlas.path) as rw, rw.transaction():
        row = rw.conn.execute(
            "SELECT label_id FROM labels WHERE feature_id = ? AND source = ? ORDER BY label_id DESC LIMIT 1",
            (feature_id, USER_SOURCE),
        ).fetchone()
        if row is None:
            label_id = rw.add_label(feature_id, text, kind=kind, source=USER_SOURCE)
        else:
            label_id = row[0]
            rw.conn.execute(
                "UPDATE labels SET text = ?, kind = ?, created_at = ? WHERE label_id = ?",
                (text, kind, utc_now(), label_id),
            )
        label = rw.label(label_id)
    return label, target


def delete_user_label(atlas, label_id: int, *, force_overlay: str | None = None) -> tuple[str, str, LabelTarget]:
    """Delete one of your labels from where your labels go; returns (feature name, text, target)."""
    target = label_target(atlas, force_overlay=force_overlay)
    if target.where == "overlay":
        _, name, text = atlas.overlay_store().delete(label_id)
        return name, text, target
    with _writable(atlas.path) as rw, rw.transaction():
        fid, text, _ = rw.delete_label(label_id)
        name = rw.feature_name(fid)
    return name, text, target


def _clean(text: str) -> str:
    text = (text or "").strip()
    if not text:
        raise AtlasError("a label needs some text")
    return text


def fold_overlay(out: Path, labels: list[tuple[str, Label]]) -> tuple[int, int]:
    """Copy overlay labels into the new atlas ``out`` by feature name (export/merge renumber ids).

    Returns (labels folded, labels whose feature ``out`` does not hold). One transaction.
    """
    from atlas.db import open_atlas

    folded = skipped = 0
    with open_atlas(out, readonly=False) as dst:
        ids = dict(
            dst.conn.execute("SELECT s.name || '/' || f.idx, f.feature_id FROM features f JOIN saes s USING (sae_id)")
        )
        rows = []
        for name, lab in labels:
            fid = ids.get(name)
            if fid is None:
                skipped += 1
                continue
            rows.append((fid, lab.text, lab.kind, lab.source, lab.created_at))
        with dst.transaction() as conn:
            conn.executemany(
                "INSERT INTO labels (feature_id, text, kind, source, created_at) VALUES (?, ?, ?, ?, ?)", rows
            )
        folded = len(rows)
    return folded, skipped


def overlay_of(path: Path) -> LabelOverlay:
    """The overlay of the atlas at ``path`` (which need not exist yet)."""
    from atlas.db import open_atlas

    with open_atlas(path) as atlas:
        return atlas.overlay_store()


def with_overlay_labels(atlas, page):
    """A feature-list page (atlas.listing.Page) whose rows show the user's overlay label where there is one.

    The overlay holds user labels, which the list prefers over the file's (as
    listing.first_labels does for the file's own user labels).
    """
    import dataclasses

    mine = atlas.overlay_store().labels(r.feature_id for r in page.rows) if atlas.use_overlay else {}
    if not mine:
        return page
    rows = [
        dataclasses.replace(
            r, label=mine[r.feature_id][0].text, label_kind=mine[r.feature_id][0].kind, label_source="user"
        )
        if r.feature_id in mine
        else r
        for r in page.rows
    ]
    return dataclasses.replace(page, rows=rows)
