"""Where the bundled example atlas is: the one answer for the CLI and the TUI.

The repository keeps ``atlas.db.example`` once, at its top level, where the
README opens it. A checkout or an editable install finds it there; a wheel
(or ``pip install .``) carries a copy inside the package, put there at build
time by ``setup.py``. The bundled example is read-only for every command:
``is_bundled_example`` is how a command tells.
"""

from __future__ import annotations

import os
from pathlib import Path

BUNDLED_NAME = "atlas.db.example"
# Inside an installed package (see setup.py); not in git.
PACKAGED_DIR = "_bundled"


def bundled_candidates() -> tuple[Path, ...]:
    """Where the example may be, in the order it is looked for."""
    pkg = Path(__file__).resolve().parent
    return (pkg / PACKAGED_DIR / BUNDLED_NAME, pkg.parent / BUNDLED_NAME)


def bundled_example() -> Path | None:
    """The bundled example atlas, or None if this installation has none."""
    return next((p for p in bundled_candidates() if p.is_file()), None)


def is_bundled_example(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the bundled example (wherever this installation keeps it)."""
    try:
        resolved = Path(path).resolve()
    except OSError:
        return False
    return any(resolved == c for c in bundled_candidates())
