"""Files on the Hugging Face hub, fetched into its normal cache, and read offline once there.

``hf://ORG/REPO/PATH[@REVISION]`` names any file or folder of a model repository. Every
download goes through ``huggingface_hub.hf_hub_download``: one file at a time (only the
files a dictionary needs), into the standard cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``,
else ``~/.cache/huggingface/hub``), with its progress bar; it writes ``blobs/<hash>.incomplete``
and renames it when whole, so an interrupted download is never read. With
``HF_HUB_OFFLINE=1`` (read at call time, so tests and users can set it late) nothing is
fetched: a cached file is read from ``snapshots/<commit>/...``, and a missing one ends in one
line that says it is not cached.

Errors are one line (LoadError): an unknown repository, revision or file, no network, offline
and not cached. The bytes of a cached file are checked against its blob name when it is read
(:func:`builders.sae_io.sha256_and_verify`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from builders.errors import LoadError

_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubRef:
    """A file or folder in a hub model repository."""

    repo_id: str  # ORG/REPO
    path: str  # inside the repository; "" for its root
    revision: str | None = None  # branch, tag or commit; None = main

    def uri(self, commit: str | None = None) -> str:
        """``hf://ORG/REPO/PATH@REV`` (pinned to ``commit`` when given)."""
        rev = commit or self.revision
        tail = f"/{self.path}" if self.path else ""
        return f"hf://{self.repo_id}{tail}" + (f"@{rev}" if rev else "")

    def child(self, name: str) -> HubRef:
        return HubRef(self.repo_id, f"{self.path}/{name}".strip("/"), self.revision)


def is_hub_uri(source: str) -> bool:
    return str(source).startswith("hf://")


def parse_hub_uri(source: str) -> HubRef:
    """``hf://ORG/REPO/PATH[@REVISION]`` -> HubRef; LoadError (one line) if malformed."""
    text = str(source)[len("hf://") :].strip()
    rev = None
    if "@" in text:
        text, rev = text.rsplit("@", 1)
        if not rev or "/" in rev and not rev.startswith("refs/"):
            raise LoadError(f"{source}: bad revision after '@' (a branch, tag or 40-hex commit)")
    parts = [p for p in text.split("/") if p]
    if len(parts) < 2 or not all(_REPO_PART.match(p) for p in parts[:2]) or any(p in (".", "..") for p in parts):
        raise LoadError(f"{source}: not a hub reference; use hf://ORG/REPO/PATH[@REVISION]")
    return HubRef("/".join(parts[:2]), "/".join(parts[2:]), rev)


# ------------------------------------------------------------------------ environment


def hub_cache_dir() -> Path:
    """The cache huggingface_hub uses, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def is_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to a true value, read now."""
    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _repo_dir(repo_id: str) -> Path:
    return hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def cached_commit(ref: HubRef) -> str | None:
    """The commit the cache has for this revision (``refs/<rev>``, or the commit itself)."""
    rev = ref.revision or "main"
    if _COMMIT.match(rev):
        return rev if (_repo_dir(ref.repo_id) / "snapshots" / rev).is_dir() else None
    refs = _repo_dir(ref.repo_id) / "refs" / rev
    try:
        commit = refs.read_text().strip()
    except OSError:
        return None
    return commit if _COMMIT.match(commit) else None


def cached_path(ref: HubRef) -> Path | None:
    """Where this file or folder is in the cache's snapshot, if it is there."""
    commit = cached_commit(ref)
    if commit is None:
        return None
    p = _repo_dir(ref.repo_id) / "snapshots" / commit / ref.path
    return p if p.exists() else None


# ------------------------------------------------------------------------ listing


def list_folder(ref: HubRef) -> tuple[list[str], bool]:
    """``(names, is_file)``: the files directly inside a folder (its name alone for a file).

    Online: the hub's listing. Offline: what the cache holds (only the files fetched before).
    """
    if is_offline():
        local = cached_path(ref)
        if local is None:
            raise _not_cached(ref)
        if local.is_file():
            return [local.name], True
        return sorted(p.name for p in local.iterdir() if p.is_file()), False
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi()
    try:
        if ref.path:
            info = api.get_paths_info(ref.repo_id, [ref.path], revision=ref.revision)
            if not info:
                raise LoadError(f"{ref.uri()}: no such file or folder in {ref.repo_id}")
            if isinstance(info[0], RepoFile):
                return [ref.path.rsplit("/", 1)[-1]], True
        entries = api.list_repo_tree(ref.repo_id, path_in_repo=ref.path or None, revision=ref.revision)
        return sorted(e.path.rsplit("/", 1)[-1] for e in entries if isinstance(e, RepoFile)), False
    except LoadError:
        raise
    except Exception as e:
        raise _hub_error(ref, e) from None


# ------------------------------------------------------------------------ fetching


def fetch(ref: HubRef, *, optional: bool = False) -> Path | None:
    """The local path of one hub file, downloaded into the cache if it is not there.

    ``optional``: None instead of an error when the file does not exist (or, offline, is not cached).
    """
    from huggingface_hub import hf_hub_download

    offline = is_offline()
    try:
        path = hf_hub_download(
            ref.repo_id, ref.path, revision=ref.revision, cache_dir=hub_cache_dir(), local_files_only=offline
        )
    except Exception as e:
        err = _hub_error(ref, e)
        if optional and isinstance(err, _Missing):
            return None
        raise err from None
    return Path(path)


def fetch_many(folder: HubRef, names: list[str], optional: tuple[str, ...] = ()) -> Path:
    """Fetch these files of one folder; returns the folder's path in the snapshot."""
    got = None
    for name in names:
        p = fetch(folder.child(name), optional=name in optional)
        if p is not None:
            got = p.parents[len(Path(name).parts) - 1]  # the folder, whatever subfolder the file is in
    if got is None:
        raise LoadError(f"{folder.uri()}: none of {', '.join(names)} is there")
    return got


def snapshot_commit(local: Path) -> str | None:
    """The commit of a path inside ``.../snapshots/<commit>/...``."""
    parts = Path(local).parts
    for i, part in enumerate(parts[:-1]):
        if part == "snapshots" and _COMMIT.match(parts[i + 1]):
            return parts[i + 1]
    return None


class _Missing(LoadError):
    """The file is not in the repository (or, offline, not in the cache)."""


def _not_cached(ref: HubRef) -> _Missing:
    return _Missing(
        f"{ref.uri()}: not in the Hugging Face cache ({hub_cache_dir()}) and HF_HUB_OFFLINE is set; "
        "run once online to fetch it"
    )


def _hub_error(ref: HubRef, e: BaseException) -> LoadError:
    """One line for whatever huggingface_hub raised."""
    from huggingface_hub import errors as E

    name = type(e).__name__
    if isinstance(e, E.RepositoryNotFoundError):
        return LoadError(
            f"{ref.uri()}: no repository {ref.repo_id} on the hub (or it is private: log in with `hf auth login`)"
        )
    if isinstance(e, E.GatedRepoError):
        return LoadError(f"{ref.uri()}: {ref.repo_id} is gated: accept its licence on the hub and log in")
    if isinstance(e, E.RevisionNotFoundError):
        return LoadError(f"{ref.uri()}: no revision {ref.revision!r} in {ref.repo_id}")
    if isinstance(e, E.EntryNotFoundError) and not isinstance(e, E.LocalEntryNotFoundError):
        return _Missing(f"{ref.uri()}: no such file in {ref.repo_id}")
    if isinstance(e, (E.LocalEntryNotFoundError, E.OfflineModeIsEnabled)):
        if is_offline():
            return _not_cached(ref)
        return _Missing(f"{ref.uri()}: cannot reach the hub and the file is not cached ({name})")
    if isinstance(e, OSError | ConnectionError | TimeoutError) or "Connect" in name or "Timeout" in name:
        return LoadError(f"{ref.uri()}: cannot reach the hub ({name}); set HF_HUB_OFFLINE=1 to use the cache only")
    text = str(e).strip().splitlines()
    return LoadError(f"{ref.uri()}: hub error ({name}: {text[0][:160] if text else ''})")
