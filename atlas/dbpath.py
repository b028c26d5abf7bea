"""Which atlas a command works on: its --db, the group's --db / $SAE_ATLAS_DB, then the bundled example.

Every command resolves it here, the lazy ones (``build``, ``browse``,
``report``) included, without importing the CLI module that lists them.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from atlas.bundled import bundled_example


def resolve_db_path(db: Path | str | None = None) -> Path:
    """The atlas a command works on: its --db, the group's --db / $SAE_ATLAS_DB, then atlas.db.example.

    The lazy commands (build, browse, report) resolve it the same way.
    """
    if db:
        return Path(db)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        root = ctx.find_root()
        group_db = (root.obj or {}).get("db") if isinstance(root.obj, dict) else None
        if group_db:
            return Path(group_db)
    env = os.environ.get("SAE_ATLAS_DB")
    if env:
        return Path(env)
    example = bundled_example()
    if example is None:
        raise click.ClickException(
            "no atlas given (--db PATH or SAE_ATLAS_DB) and this installation has no bundled atlas.db.example"
        )
    return example
