"""SAELens's registry of pretrained dictionaries (``pretrained_saes.yaml``): names to hub files.

``RELEASE/SAE_ID`` or ``RELEASE:SAE_ID`` (as in ``SAE.from_pretrained(release, sae_id)``)
resolves to the release's hub repository, the SAE's path in it, its on-disk format (the
release's ``conversion_func``) and its Neuronpedia id.

Which registry file (first found):

1. ``$SAE_ATLAS_SAE_REGISTRY``, a path;
2. the registry of an installed ``sae-lens``, located without importing it (its import pulls
   in torch, transformer-lens and more);
3. the copy ``sae-atlas registry update`` keeps in ``$SAE_ATLAS_CACHE/saelens/`` (default
   ``~/.cache/sae-atlas``), fetched from the newest ``sae-lens`` wheel on PyPI;
4. the copy shipped with sae-atlas (``builders/data/saelens/``, SAELens's MIT licence beside it).

Needs pyyaml (transformers already depends on it). Imports neither torch nor sae_lens.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builders.errors import LoadError

REGISTRY_FILE = "pretrained_saes.yaml"
SHIPPED = Path(__file__).resolve().parent / "data" / "saelens" / REGISTRY_FILE
ENV_PATH = "SAE_ATLAS_SAE_REGISTRY"

# conversion_func -> sae-atlas format (builders.saes.SAE_FORMATS). None means SAELens's own layout.
CONVERSIONS: dict[str | None, str] = {
    None: "saelens",
    "sae_lens": "saelens",
    "gemma_2": "gemma_scope",
    "gemma_2_transcoder": "gemma_scope",
    "gemma_3": "gemma_scope_2",
    "llama_scope": "llama_scope",
    "connor_rob_hook_z": "kissane",
    "dictionary_learning_1": "dictionary_learning",
    "mwhanna_transcoder": "circuit_tracer",
    "mntss_clt_layer_transcoder": "circuit_tracer_clt",
    "sparsify": "sparsify",
    "goodfire": "goodfire",
    "deepseek_r1": "goodfire",  # the same nn.Linear state dict with encoder.* / decoder.* names
}


class RegistryUnavailable(LoadError):
    """No registry file could be found or read (as opposed to a name it does not have)."""


@dataclass(frozen=True)
class RegistryEntry:
    """One SAE of the registry, and what it says about it."""

    release: str
    sae_id: str
    repo_id: str
    path: str  # inside the repository: a folder or a file, depending on the format
    conversion: str | None  # the release's conversion_func
    neuronpedia_id: str | None = None
    model: str | None = None
    l0: float | None = None
    norm_scaling_factor: float | None = None
    config_overrides: dict[str, Any] = field(default_factory=dict)
    registry: str = ""  # which registry file said so (and its version)

    @property
    def fmt(self) -> str:
        if self.conversion not in CONVERSIONS:
            supported = ", ".join(sorted(k for k in CONVERSIONS if k))
            raise LoadError(
                f"{self.release}/{self.sae_id}: its format ({self.conversion}) is not one sae-atlas reads yet "
                f"(registry formats read: {supported}); its files are hf://{self.repo_id}/{self.path}"
            )
        return CONVERSIONS[self.conversion]


# ------------------------------------------------------------------------ which file


def cache_copy() -> Path:
    root = Path(os.environ.get("SAE_ATLAS_CACHE") or Path.home() / ".cache" / "sae-atlas")
    return root / "saelens" / REGISTRY_FILE


def installed_saelens_registry() -> Path | None:
    """The installed sae-lens's registry, found without importing sae_lens."""
    try:
        spec = importlib.util.find_spec("sae_lens")  # a top-level package: located, not executed
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        cand = Path(folder) / REGISTRY_FILE
        if cand.is_file():
            return cand
    return None


def registry_location() -> tuple[Path, str]:
    """``(path, where it comes from)`` of the registry in use."""
    env = os.environ.get(ENV_PATH)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise RegistryUnavailable(f"{ENV_PATH}={env}: no such file")
        return p, f"${ENV_PATH}"
    p = installed_saelens_registry()
    if p is not None:
        try:
            version = importlib.metadata.version("sae-lens")
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        return p, f"installed sae-lens {version}"
    if cache_copy().is_file():
        return cache_copy(), f"sae-atlas registry update ({_cached_version()})"
    if SHIPPED.is_file():
        return SHIPPED, "shipped with sae-atlas (sae-lens 6.54.12)"
    raise RegistryUnavailable(
        "no SAELens registry found: run `sae-atlas registry update` (needs the network) or pip install sae-lens"
    )


def _cached_version() -> str:
    try:
        return "sae-lens " + json.loads((cache_copy().parent / "SOURCE.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return "sae-lens ?"


_LOADED: dict[tuple[str, float], dict[str, Any]] = {}


def load_registry(path: Path | None = None) -> tuple[dict[str, Any], str]:
    """The registry as a dict ``release -> {repo_id, conversion_func, saes, ...}`` and its origin."""
    origin = str(path) if path is not None else ""
    if path is None:
        path, origin = registry_location()
    key = (str(path), path.stat().st_mtime)
    if key not in _LOADED:
        try:
            import yaml
        except ImportError:
            raise RegistryUnavailable("the SAELens registry is YAML: pip install pyyaml") from None
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 0.6 s instead of 3 s
        try:
            data = yaml.load(path.read_text(), Loader=loader)
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
            raise RegistryUnavailable(f"{path}: not a readable SAELens registry ({type(e).__name__})") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) and "saes" in v for v in data.values()):
            raise RegistryUnavailable(f"{path}: not a SAELens registry (expected release: {{repo_id, saes}})")
        _LOADED.clear()
        _LOADED[key] = data
    return _LOADED[key], f"{origin}: {path}"


# ------------------------------------------------------------------------ names


def split_name(name: str, releases: dict[str, Any]) -> tuple[str, str] | None:
    """``RELEASE/SAE_ID`` or ``RELEASE:SAE_ID`` -> (release, sae_id), if RELEASE is a release."""
    for sep in (":", "/"):
        if sep in name:
            release, sae_id = name.split(sep, 1)
            if release in releases:
                return release, sae_id
    return None


def resolve(name: str, *, registry: Path | None = None) -> RegistryEntry:
    """The registry entry for ``RELEASE/SAE_ID``; LoadError naming the nearest names otherwise."""
    data, origin = load_registry(registry)
    parts = split_name(name, data)
    if parts is None:
        head = name.replace(":", "/").split("/", 1)[0]
        near = difflib.get_close_matches(head, list(data), n=4, cutoff=0.5)
        hint = f"; nearest releases: {', '.join(near)}" if near else ""
        raise LoadError(f"{name}: not a file or folder, and {head!r} is not a release of the SAELens registry{hint}")
    release, sae_id = parts
    info = data[release]
    saes = {str(s.get("id")): s for s in info.get("saes") or [] if isinstance(s, dict)}
    if sae_id not in saes:
        near = difflib.get_close_matches(sae_id, list(saes), n=4, cutoff=0.4)
        hint = f"nearest: {', '.join(near)}" if near else f"it has {len(saes)}, e.g. {', '.join(list(saes)[:3])}"
        raise LoadError(f"{name}: release {release} has no SAE {sae_id!r}; {hint}")
    s = saes[sae_id]
    nsf = s.get("norm_scaling_factor")
    return RegistryEntry(
        release=release,
        sae_id=sae_id,
        repo_id=str(info["repo_id"]),
        path=str(s.get("path", "")),
        conversion=info.get("conversion_func"),
        neuronpedia_id=s.get("neuronpedia"),
        model=info.get("model"),
        l0=s.get("l0"),
        norm_scaling_factor=float(nsf) if isinstance(nsf, (int, float)) else None,
        config_overrides=dict(info.get("config_overrides") or {}),
        registry=origin,
    )


def releases(registry: Path | None = None) -> dict[str, Any]:
    return load_registry(registry)[0]


# ------------------------------------------------------------------------ update


def update_registry(*, version: str | None = None) -> tuple[Path, str]:
    """Fetch ``pretrained_saes.yaml`` (and SAELens's LICENSE) from the newest ``sae-lens`` wheel
    on PyPI into the cache copy; atomic: a failed update leaves the old copy. Needs the network."""
    target = cache_copy()
    target.parent.mkdir(parents=True, exist_ok=True)
    spec = f"sae-lens=={version}" if version else "sae-lens"
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", spec, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("sae_lens-*.whl"))
        if proc.returncode != 0 or not wheels:
            err = (proc.stderr or proc.stdout).strip().splitlines()
            raise LoadError(f"could not download {spec} with pip: {err[-1] if err else 'no wheel'}")
        wheel = wheels[0]
        got_version = wheel.name.split("-")[1]
        try:
            with zipfile.ZipFile(wheel) as zf:
                names = zf.namelist()
                reg = next(n for n in names if n.endswith("sae_lens/" + REGISTRY_FILE))
                lic = next((n for n in names if n.endswith(("/LICENSE", "/licenses/LICENSE"))), None)
                new = Path(tmp) / REGISTRY_FILE
                new.write_bytes(zf.read(reg))
                if lic:
                    (Path(tmp) / "LICENSE").write_bytes(zf.read(lic))
        except (zipfile.BadZipFile, StopIteration, KeyError) as e:
            raise LoadError(f"{wheel.name}: no {REGISTRY_FILE} inside ({type(e).__name__})") from None
        load_registry(new)  # refuse a file that does not parse
        digest = hashlib.sha256(new.read_bytes()).hexdigest()
        (Path(tmp) / "SOURCE.json").write_text(
            json.dumps({"version": got_version, "sha256": digest, "wheel": wheel.name})
        )
        for name in ("LICENSE", "SOURCE.json", REGISTRY_FILE):  # the registry last: its presence marks a whole copy
            if (Path(tmp) / name).is_file():
                os.replace(Path(tmp) / name, target.parent / name)
    return target, got_version


def describe() -> dict[str, Any]:
    """Which registry is used, and how big it is."""
    path, origin = registry_location()
    data, _ = load_registry(path)
    return {
        "path": str(path),
        "origin": origin,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "releases": len(data),
        "saes": sum(len(v.get("saes") or []) for v in data.values()),
    }
