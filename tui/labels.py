"""Writing user labels: the one place the browser writes.

A label goes where :mod:`atlas.labels` says (the atlas file when the user may
write it, else the user's label overlay), through a short-lived writable
connection of its own (never the readers'), inside a transaction, so a failure
leaves nothing half-written and the typed text can be offered again.
"""

from __future__ import annotations

from atlas.labels import USER_SOURCE, LabelTarget, set_user_label
from atlas.types import Label
from tui.source import AtlasSource


def save_user_label(source: AtlasSource, feature_id: int, text: str, kind: str = "free") -> tuple[Label, LabelTarget]:
    """Add the feature's user label, or replace the text of its newest one (a feature has one user label)."""
    with source.open() as atlas:
        return set_user_label(atlas, feature_id, text, kind, force_overlay=source.force_overlay)


def user_label(source: AtlasSource, feature_id: int) -> Label | None:
    with source.open() as atlas:
        return next((lab for lab in atlas.labels(feature_id) if lab.source == USER_SOURCE), None)
