"""Writing user labels: the one place the browser writes to an atlas.

A label is written through a short-lived writable connection of its own
(never the readers'), inside a transaction, so a failure leaves nothing
half-written and the typed text can be offered again.
"""

from __future__ import annotations

from atlas.db import utc_now
from atlas.types import Label
from tui.source import AtlasSource

USER_SOURCE = "user"


def save_user_label(source: AtlasSource, feature_id: int, text: str, kind: str = "free") -> Label:
    """Add the feature's user label, or replace the text of its newest one (a feature has one user label)."""
    text = text.strip()
    if not text:
        raise ValueError("a label needs some text")
    with source.open_writable() as atlas:
        with atlas.transaction() as conn:
            row = conn.execute(
                "SELECT label_id FROM labels WHERE feature_id = ? AND source = ? ORDER BY label_id DESC LIMIT 1",
                (feature_id, USER_SOURCE),
            ).fetchone()
            if row is None:
                label_id = atlas.add_label(feature_id, text, kind=kind, source=USER_SOURCE)
            else:
                label_id = row[0]
                conn.execute(
                    "UPDATE labels SET text = ?, kind = ?, created_at = ? WHERE label_id = ?",
                    (text, kind, utc_now(), label_id),
                )
        return next(lab for lab in atlas.labels(feature_id) if lab.label_id == label_id)


def user_label(source: AtlasSource, feature_id: int) -> Label | None:
    with source.open() as atlas:
        return next((lab for lab in atlas.labels(feature_id) if lab.source == USER_SOURCE), None)
