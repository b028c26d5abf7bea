"""A small, fully deterministic atlas for the TUI's tests, snapshots and screenshots.

The synthetic builder stamps the current time on the atlas and its labels;
these are pinned here so that what the browser shows never changes between runs.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from atlas.synthetic import build_synthetic_atlas

FIXED_TIME = "2026-01-01T00:00:00+00:00"


def build_fixture_atlas(path: str | os.PathLike, *, n_features: int = 400, d_vocab: int = 300, **kw) -> Path:
    p = build_synthetic_atlas(path, n_features=n_features, d_vocab=d_vocab, **kw)
    conn = sqlite3.connect(p)
    try:
        with conn:
            conn.execute("UPDATE atlas_info SET created_at = ?", (FIXED_TIME,))
            conn.execute("UPDATE labels SET created_at = ?", (FIXED_TIME,))
    finally:
        conn.close()
    return p


async def settle(pilot) -> None:
    """Wait until no worker is pending or running twice in a row (an answer may start another worker).

    For pilot tests, snapshots and screenshots: ``pilot`` is what ``App.run_test`` yields.
    """
    quiet = 0
    for _ in range(200):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.02)
        busy = [w for w in pilot.app.workers if not w.is_finished]
        quiet = 0 if busy else quiet + 1
        if quiet >= 2:
            break
