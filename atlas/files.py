"""Writing an atlas file so that a failure says what happened and leaves nothing behind.

Every command that writes a new file (``build``, ``export``, ``merge``)
writes it under a temporary name beside the output and renames it at the
end. A process killed halfway cannot clean up after itself, so the next run
removes what a dead process left (:func:`remove_stale`); a full disk or a
missing folder end in one line that says so (:func:`storage_errors`), not in
SQLite's "unable to open database file".
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from atlas.errors import AtlasError

_SQLITE_FULL = getattr(sqlite3, "SQLITE_FULL", 13)
_SQLITE_CANTOPEN = getattr(sqlite3, "SQLITE_CANTOPEN", 14)


def file_uri(path: str | os.PathLike, **params: str) -> str:
    """An SQLite ``file:`` URI; the path is percent-encoded so ``#``, ``?`` or ``%`` in a name survive."""
    return resolved_uri(Path(path).resolve().as_posix(), params)


def resolved_uri(resolved: str, params: dict[str, str]) -> str:
    """:func:`file_uri` of a path already resolved (the hot path of every open resolves it once)."""
    uri = "file:" + quote(resolved, safe="/")
    return uri + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")


class DiskFull(AtlasError):
    """The disk (or the file system's quota) filled up while writing an atlas."""


class NoSuchFolder(AtlasError):
    """The folder an output should go into does not exist."""


def require_folder(out: str | os.PathLike) -> None:
    """Refuse an output whose folder is missing, before any work is done."""
    parent = Path(out).parent
    if not parent.is_dir():
        raise NoSuchFolder(f"{parent}: no such folder (create it first, or write the atlas elsewhere)")


def check_new_output(out: str | os.PathLike, *, overwrite: bool, flag: str) -> None:
    """``out`` may be written: its folder exists, it is not a folder, and it is new unless ``overwrite``.

    ``flag`` names the option that allows replacing it (``--force``, ``--overwrite``).
    """
    out = Path(out)
    if out.is_dir():
        raise AtlasError(f"{out}: is a directory")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (use {flag} to replace it)")
    require_folder(out)


def _is_full(e: BaseException) -> bool:
    if isinstance(e, sqlite3.Error):
        return getattr(e, "sqlite_errorcode", None) == _SQLITE_FULL or "database or disk is full" in str(e)
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def storage_errors(path: str | os.PathLike, *, then: str = "") -> Iterator[None]:
    """Turn a full disk and a vanished folder met while writing ``path`` into one clear line.

    ``then`` says how to go on (e.g. "free some space and rerun with --resume").
    """
    try:
        yield
    except (sqlite3.Error, OSError) as e:
        hint = f"; {then}" if then else ""
        if _is_full(e):
            raise DiskFull(f"{path}: disk full{hint}") from None
        folder_gone = not Path(path).parent.is_dir()
        cant_open = (
            getattr(e, "sqlite_errorcode", None) == _SQLITE_CANTOPEN or getattr(e, "errno", None) == errno.ENOENT
        )
        if folder_gone and cant_open:
            raise NoSuchFolder(f"{Path(path).parent}: no such folder") from None
        raise


# ---------------------------------------------------------------- temporary names
def temp_path(out: str | os.PathLike) -> Path:
    """Where this process writes ``out`` before renaming it: hidden, beside it, tagged with our pid."""
    out = Path(out)
    return out.with_name(f".{out.name}.tmp-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OSError:
        return True  # cannot tell: keep its file
    return True


def remove_stale(out: str | os.PathLike) -> list[Path]:
    """Remove ``.OUT.tmp-PID`` files (and their journals) beside ``out`` whose process is gone; returns them.

    A file of a live process is another run writing the same output: left alone.
    """
    out = Path(out)
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.tmp-(\d+)(-journal|-wal|-shm)?$")
    removed = []
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = pattern.match(p.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _remove_with_journal(path: Path) -> None:
    for p in (path, *(Path(f"{path}{suffix}") for suffix in ("-journal", "-wal", "-shm"))):
        p.unlink(missing_ok=True)


@contextmanager
def atomic_output(out: str | os.PathLike, *, overwrite: bool = False, flag: str = "--force") -> Iterator[Path]:
    """Yield a temporary path next to ``out``; rename it onto ``out`` only on success.

    Checks the output first (:func:`check_new_output`), removes what killed
    runs left, and turns a full disk or a vanished folder into one line.
    """
    out = Path(out)
    check_new_output(out, overwrite=overwrite, flag=flag)
    remove_stale(out)
    tmp = temp_path(out)
    _remove_with_journal(tmp)
    try:
        with storage_errors(out):
            yield tmp
            os.replace(tmp, out)
    finally:
        _remove_with_journal(tmp)
