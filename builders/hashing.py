"""sha256 of weight files, streamed so a 5 GB checkpoint never sits in memory."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

_CHUNK = 1 << 22  # 4 MiB reads: large enough to keep hashlib at disk speed


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of one file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_files(paths: Iterable[str | Path]) -> str | None:
    """One hash for a set of weight files (e.g. a sharded checkpoint).

    A single file gets its own sha256, so it can be checked with ``sha256sum``.
    Several files get the sha256 of the lines ``"<name> <sha256>\\n"`` sorted by
    name: stable under renaming the folder, sensitive to any byte of any shard.
    No files gives None.
    """
    files = sorted(Path(p) for p in paths)
    if not files:
        return None
    if len(files) == 1:
        return sha256_file(files[0])
    lines = "".join(f"{p.name} {sha256_file(p)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()
