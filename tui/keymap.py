"""User keymaps: binding id -> keys, read from a TOML file.

Every binding in the app has an id (``card.back``, ``app.search`` ...); a
keymap file remaps it, e.g.::

    [keymap]
    "card.back" = "h,backspace"
    "app.sql" = "f3"

The default file is ``$XDG_CONFIG_HOME/sae-atlas/keymap.toml``
(``~/.config/sae-atlas/keymap.toml``); ``sae-atlas browse --keymap FILE`` picks another.
"""

from __future__ import annotations

import os
from pathlib import Path

from atlas.errors import AtlasError


class BadKeymap(AtlasError):
    """The keymap file cannot be read."""


def default_keymap_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sae-atlas" / "keymap.toml"


def load_keymap(path: str | os.PathLike | None) -> dict[str, str]:
    """The ``[keymap]`` table (or the top-level table) of a TOML file; {} if the default file is absent."""
    explicit = path is not None
    p = Path(path) if explicit else default_keymap_path()
    if not p.exists():
        if explicit:
            raise BadKeymap(f"{p}: no such keymap file")
        return {}
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise BadKeymap(f"{p}: reading a keymap needs Python 3.11 (tomllib)") from None
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise BadKeymap(f"{p}: cannot read keymap ({e})") from None
    table = data.get("keymap", data)
    bad = [k for k, v in table.items() if not isinstance(v, str)]
    if bad:
        raise BadKeymap(f'{p}: keymap values must be key strings like "ctrl+b"; bad: {", ".join(bad)}')
    return dict(table)
