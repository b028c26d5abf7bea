"""Open a dictionary (SAE, transcoder, cross-layer transcoder) by path, hub reference or name.

``load_sae(source)`` takes:

* a local file or folder in any of :data:`SAE_FORMATS` (auto-detected; ``fmt=`` forces one);
* ``hf://ORG/REPO/PATH[@REVISION]``: any file or folder of a hub repository, fetched into the
  Hugging Face cache (only the files its format needs) and read offline once there;
* ``RELEASE/SAE_ID`` or ``RELEASE:SAE_ID``: a name from SAELens's registry
  (:mod:`builders.registry`), which gives the repository, path, format and Neuronpedia id.

The formats' loaders are in :mod:`builders.sae_formats` and :mod:`builders.transcoder_formats`;
this module detects the format, fetches, checks shapes, finiteness and the fit to a model, and
assembles an :class:`~builders.weights.SAEWeights`. Matrices are read a block at a time into
their final tensor on the target device and dtype (:mod:`builders.sae_io`). ``.pt``/``.pth``
files are only ever opened with ``torch.load(weights_only=True)``. Every refusal is one line
naming the file (LoadError and its subclasses).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from builders import hub, registry
from builders.device import resolve_device
from builders.errors import CorruptWeights, LoadError, SAEMismatch, UnknownSAEFormat
from builders.sae_formats import (
    kissane_cfg,
    load_dictionary_learning,
    load_gemma_scope,
    load_goodfire,
    load_kissane,
    load_llama_scope,
    load_saelens,
    load_sparsify,
)
from builders.sae_io import finite_blockwise, read_pt, sha256_and_verify
from builders.transcoder_formats import (
    gemma_scope_2_folder,
    load_circuit_tracer,
    load_circuit_tracer_clt,
    load_gemma_scope_2,
)
from builders.weights import READ_SITES, SITES, ModelWeights, SAEWeights, hook_name_of, site_of_hook

# The CLI derives --sae-format's choices from this tuple: keep its name.
# formats whose dictionary is a folder of files (the others are one file, or a file in a folder)
FOLDER_FORMATS = ("saelens", "sparsify", "gemma_scope_2", "llama_scope")

SAE_FORMATS = (
    "saelens",
    "gemma_scope",
    "llama_scope",
    "kissane",
    "dictionary_learning",
    "gemma_scope_2",
    "circuit_tracer",
    "circuit_tracer_clt",
    "sparsify",
    "goodfire",
)
_LOADERS: dict[str, Callable[[Path, dict[str, Any]], dict[str, Any]]] = {
    "saelens": load_saelens,
    "gemma_scope": load_gemma_scope,
    "llama_scope": load_llama_scope,
    "kissane": load_kissane,
    "dictionary_learning": load_dictionary_learning,
    "gemma_scope_2": load_gemma_scope_2,
    "circuit_tracer": load_circuit_tracer,
    "circuit_tracer_clt": load_circuit_tracer_clt,
    "sparsify": load_sparsify,
    "goodfire": load_goodfire,
}
_LAYOUTS = (
    "a SAELens folder (cfg.json + sae_weights.safetensors), Gemma Scope params.npz, a Gemma Scope 2 "
    "folder (params.safetensors + config.json), a Llama Scope folder (hyperparams.json + checkpoints/), "
    "a Kissane <name>.pt + <name>_cfg.json, a dictionary_learning ae.pt, a sparsify folder (cfg.json + "
    "sae.safetensors), a circuit-tracer layer_N.safetensors or W_enc_N/W_dec_N.safetensors, or a Goodfire .pth"
)


# ------------------------------------------------------------------------ layouts


def layout_of(names: set[str], *, layer: int | None = None, where: str = "") -> tuple[str, list[str], list[str]]:
    """``(format, files needed, files read if present)`` for a folder holding these file names."""
    if "cfg.json" in names and "sae_weights.safetensors" in names:
        return "saelens", ["cfg.json", "sae_weights.safetensors"], []
    if "cfg.json" in names and "sae.safetensors" in names:
        return "sparsify", ["cfg.json", "sae.safetensors"], []
    if "params.safetensors" in names:
        return "gemma_scope_2", ["params.safetensors"], ["config.json"]
    if "hyperparams.json" in names:
        return "llama_scope", ["hyperparams.json", "checkpoints/final.safetensors"], []
    if "params.npz" in names:
        return "gemma_scope", ["params.npz"], []
    if "ae.pt" in names:
        return "dictionary_learning", ["ae.pt"], ["config.json"]
    clt = sorted(int(m.group(1)) for n in names if (m := re.fullmatch(r"W_enc_(\d+)\.safetensors", n)))
    if clt:
        if layer is None:
            raise LoadError(
                f"{where}: a cross-layer transcoder (layers {clt[0]}..{clt[-1]}): name one layer, e.g. {where}/W_enc_{clt[0]}.safetensors"
            )
        return "circuit_tracer_clt", [f"W_enc_{layer}.safetensors", f"W_dec_{layer}.safetensors"], ["config.yaml"]
    plt = sorted(int(m.group(1)) for n in names if (m := re.fullmatch(r"layer_(\d+)\.safetensors", n)))
    if plt:
        if layer is None:
            raise LoadError(
                f"{where}: transcoders for layers {plt[0]}..{plt[-1]}: name one, e.g. {where}/layer_{plt[0]}.safetensors"
            )
        return "circuit_tracer", [f"layer_{layer}.safetensors"], ["config.yaml"]
    pts = sorted(n for n in names if n.endswith((".pt", ".pth")))
    kiss = [n for n in pts if n[: n.rfind(".")] + "_cfg.json" in names]
    if len(kiss) == 1:
        return "kissane", [kiss[0], kiss[0][: kiss[0].rfind(".")] + "_cfg.json"], []
    if len(pts) == 1:
        return "", [pts[0]], []  # decided from the keys once it is here
    raise UnknownSAEFormat(f"{where}: not a dictionary folder; expected {_LAYOUTS}")


def companions(name: str) -> tuple[list[str], list[str]]:
    """For one named file: ``(the files of its dictionary, files read if present)`` beside it."""
    stem = name[: name.rfind(".")] if "." in name else name
    if name in ("cfg.json", "sae_weights.safetensors"):
        return ["cfg.json", "sae_weights.safetensors"], []
    if name == "sae.safetensors":
        return ["cfg.json", "sae.safetensors"], []
    if name in ("params.safetensors", "config.json"):
        return ["params.safetensors"], ["config.json"]
    if name == "hyperparams.json":
        return ["hyperparams.json", "checkpoints/final.safetensors"], []
    if m := re.fullmatch(r"W_(?:enc|dec)_(\d+)\.safetensors", name):
        return [f"W_enc_{m.group(1)}.safetensors", f"W_dec_{m.group(1)}.safetensors"], ["config.yaml"]
    if name.endswith(".safetensors"):
        return [name], ["config.yaml"]
    if name.endswith((".pt", ".pth")):
        return [name], [stem + "_cfg.json", "config.json"]
    return [name], []


def detect_format(path: str | Path, *, layer: int | None = None) -> tuple[str, Path]:
    """``(format, the path its loader takes)`` for a local file or folder; UnknownSAEFormat if none fits."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LoadError(f"no such SAE file or folder: {path}")
    if p.is_dir():
        names = {q.name for q in p.iterdir() if q.is_file()}
        if gemma_scope_2_folder(p) and "params.safetensors" not in names:
            raise LoadError(f"{p}: a Gemma Scope 2 folder without params.safetensors")
        fmt, needed, _ = layout_of(names, layer=layer, where=str(p))
        if fmt in FOLDER_FORMATS:
            return fmt, p
        if fmt == "circuit_tracer_clt":
            return fmt, p / needed[0]
        return detect_format(p / needed[0], layer=layer) if not fmt else (fmt, p / needed[0])
    name = p.name
    if name in ("cfg.json", "sae_weights.safetensors") and (p.parent / "sae_weights.safetensors").exists():
        return "saelens", p.parent
    if name in ("cfg.json", "sae.safetensors") and (p.parent / "sae.safetensors").exists():
        return "sparsify", p.parent
    if name in ("params.safetensors", "config.json") and (p.parent / "params.safetensors").exists():
        return "gemma_scope_2", p.parent
    if name == "hyperparams.json":
        return "llama_scope", p.parent
    if (
        p.suffix == ".safetensors"
        and p.parent.name == "checkpoints"
        and (p.parent.parent / "hyperparams.json").is_file()
    ):
        return "llama_scope", p.parent.parent
    if re.fullmatch(r"W_(?:enc|dec)_\d+\.safetensors", name):
        return "circuit_tracer_clt", p
    if p.suffix == ".safetensors":
        from builders.sae_io import Safetensors

        # circuit-tracer's per-layer transcoder (any SingleLayerTranscoder.to_safetensors file)
        if {"W_enc", "W_dec", "b_enc", "b_dec"} <= set(Safetensors(p).keys()):
            return "circuit_tracer", p
        raise UnknownSAEFormat(f"{p}: a safetensors file of no known dictionary format; expected {_LAYOUTS}")
    if p.suffix == ".npz":
        return "gemma_scope", p
    if p.suffix in (".pt", ".pth"):
        if kissane_cfg(p).is_file():
            return "kissane", p
        if name == "ae.pt":
            return "dictionary_learning", p
        keys = read_pt(p).keys()
        if "encoder_linear.weight" in keys or (
            "encoder.weight" in keys and "decoder.bias" in keys and "bias" not in keys
        ):
            return "goodfire", p
        if "encoder.weight" in keys:
            return "dictionary_learning", p
        if "W_enc" in keys:
            return "kissane", p
        raise UnknownSAEFormat(
            f"{p}: a state dict with none of the known SAE tensors (has {', '.join(sorted(keys)[:6])})"
        )
    raise UnknownSAEFormat(f"{p}: unknown SAE file; expected {_LAYOUTS}")


def _canonical(fmt: str, path: Path) -> Path:
    """The path a loader takes, when the format was given explicitly."""
    if fmt in FOLDER_FORMATS:
        return path if path.is_dir() else (path.parent.parent if path.parent.name == "checkpoints" else path.parent)
    if path.is_dir():
        name = {"gemma_scope": "params.npz", "dictionary_learning": "ae.pt"}.get(fmt)
        if name:
            return path / name
        if fmt == "circuit_tracer_clt":
            return path
        pattern = "*.safetensors" if fmt == "circuit_tracer" else "*.pt*"
        found = [q for q in sorted(path.glob("*.pt")) if kissane_cfg(q).is_file()] or sorted(path.glob(pattern))
        if not found:
            raise LoadError(f"{path}: no {pattern} file in this folder")
        return found[0]
    return path


# ------------------------------------------------------------------------ sources


def _from_hub(ref: hub.HubRef, fmt: str | None, layer: int | None) -> tuple[Path, str | None]:
    """Fetch what a hub file or folder's dictionary needs; ``(local path, format or None)``."""
    names, is_file = hub.list_folder(ref)
    if is_file:
        folder = hub.HubRef(ref.repo_id, ref.path.rsplit("/", 1)[0] if "/" in ref.path else "", ref.revision)
        name = ref.path.rsplit("/", 1)[-1]
        needed, optional = companions(name)
        local = hub.fetch_many(folder, needed + optional, optional=tuple(optional))
        if name.startswith(("layer_", "W_enc_", "W_dec_")) and folder.path:  # circuit-tracer: config.yaml at the root
            hub.fetch(hub.HubRef(ref.repo_id, "config.yaml", ref.revision), optional=True)
        return local / name, fmt
    try:
        found, needed, optional = layout_of(set(names), layer=layer, where=ref.uri())
    except UnknownSAEFormat:
        if hub.is_offline():  # the cache holds only part of the folder (or a folder of nothing known)
            have = f" (it holds {', '.join(names[:4])})" if names else ""
            raise LoadError(
                f"{ref.uri()}: not a whole dictionary in the Hugging Face cache{have}, "
                "and HF_HUB_OFFLINE is set; run once online to fetch it"
            ) from None
        raise
    local = hub.fetch_many(ref, needed + optional, optional=tuple(optional))
    if found in ("circuit_tracer", "circuit_tracer_clt") and ref.path:
        hub.fetch(hub.HubRef(ref.repo_id, "config.yaml", ref.revision), optional=True)
    return (local if found in FOLDER_FORMATS else local / needed[0]), fmt or found or None


def _registry_files(entry: registry.RegistryEntry) -> tuple[hub.HubRef, list[str], list[str]]:
    """The folder and files a registry entry's format needs (no listing of the repository needed)."""
    fmt, path = entry.fmt, entry.path.strip("/")
    if fmt == "circuit_tracer_clt":
        return (
            hub.HubRef(entry.repo_id, ""),
            [f"W_enc_{path}.safetensors", f"W_dec_{path}.safetensors"],
            ["config.yaml"],
        )
    if fmt in ("circuit_tracer", "kissane", "goodfire"):
        folder, _, name = path.rpartition("/")
        needed, optional = companions(name)
        return hub.HubRef(entry.repo_id, folder), needed, optional
    names = {
        "saelens": ["cfg.json", "sae_weights.safetensors"],
        "sparsify": ["cfg.json", "sae.safetensors"],
        "gemma_scope": ["params.npz"],
        "gemma_scope_2": ["params.safetensors"],
        "dictionary_learning": ["ae.pt"],
        "llama_scope": ["hyperparams.json", "checkpoints/final.safetensors"],
    }[fmt]
    optional = {"gemma_scope_2": ["config.json"], "dictionary_learning": ["config.json"]}.get(fmt, [])
    return hub.HubRef(entry.repo_id, path), names, optional


# SAELens's own loaders say where these releases read and write when the files do not.
_REGISTRY_HOOKS = {"mwhanna_transcoder": ("mlp.hook_in", "hook_mlp_out")}


def _from_registry(entry: registry.RegistryEntry) -> tuple[Path, str, dict[str, Any]]:
    folder, needed, optional = _registry_files(entry)
    local = hub.fetch_many(folder, needed + optional, optional=tuple(optional))
    fmt = entry.fmt
    target = local if fmt in FOLDER_FORMATS else local / needed[0]
    hints: dict[str, Any] = {
        "release": entry.release,
        "sae_ref": entry.sae_id,
        "neuronpedia_id": entry.neuronpedia_id,
        "norm_scaling_factor": entry.norm_scaling_factor,
        "config_overrides": entry.config_overrides,
        "registry": f"{entry.release}/{entry.sae_id} ({entry.registry})",
        "model": entry.model,
        "l0": entry.l0,
    }
    if entry.conversion == "gemma_2_transcoder":
        hints["gemma_scope_group"] = "transcoders"
    if entry.conversion in _REGISTRY_HOOKS:
        hints["feature_input_hook"], hints["feature_output_hook"] = _REGISTRY_HOOKS[entry.conversion]
    try:  # SAELens ids that are hook names: the fallback when the files are silent
        site_of_hook(entry.sae_id)
        hints["hook_name"] = entry.sae_id
    except ValueError:
        pass
    if fmt == "circuit_tracer_clt":
        hints["layer"] = int(entry.path)
    return target, fmt, hints


def _is_name(source: str) -> bool:
    """Looks like ``RELEASE/SAE_ID`` or ``RELEASE:SAE_ID`` rather than a path."""
    return not source.startswith(("/", ".", "~")) and ("/" in source or ":" in source)


# ------------------------------------------------------------------------ public API


def load_sae(
    path: str | Path,
    *,
    fmt: str | None = None,
    layer: int | None = None,
    site: str | None = None,
    hook_name: str | None = None,
    device: str | torch.device | None = None,
) -> SAEWeights:
    """Load one dictionary from a local path, an ``hf://`` reference or a registry name.

    ``hook_name`` (or ``layer`` and/or ``site``) override where the files say it reads, for
    formats whose files do not record it; for a set of per-layer transcoders or a cross-layer
    transcoder, ``layer`` picks the layer. ``device`` is a :func:`builders.device.resolve_device`
    spec; the matrices are read straight onto it (by default the CPU, fp32).
    """
    source = str(path)
    if fmt is not None and fmt not in _LOADERS:
        raise UnknownSAEFormat(f"unknown SAE format {fmt!r}; formats: {', '.join(SAE_FORMATS)}")
    dev, dtype = resolve_device(device) if device is not None else (None, torch.float32)
    hints: dict[str, Any] = {}
    p = Path(source).expanduser()
    if hub.is_hub_uri(source):
        p, fmt = _from_hub(hub.parse_hub_uri(source), fmt, layer)
    elif not p.exists():
        if not _is_name(source):
            raise LoadError(f"no such SAE file or folder: {source}")
        try:
            entry = registry.resolve(source)
        except registry.RegistryUnavailable as e:
            raise LoadError(f"no such SAE file or folder: {source} (nor a registry name: {e})") from None
        p, fmt, hints = _from_registry(entry)
        layer = hints.pop("layer", layer)
    if fmt is None:
        fmt, p = detect_format(p, layer=layer)
    else:
        p = _canonical(fmt, p)
    opts = {"layer": layer, "site": site, "hook_name": hook_name, "device": dev, "dtype": dtype, "hints": hints}
    raw = _LOADERS[fmt](p, opts)
    return _assemble(raw, fmt, source=_source_name(source, p, hints), opts=opts)


def _source_name(source: str, local: Path, hints: dict[str, Any]) -> str:
    """What the atlas records as the source: a hub file pinned to its commit, else the path given."""
    commit = hub.snapshot_commit(local)
    if commit is None:
        return source
    parts = Path(local).parts
    i = parts.index(commit)
    repo = parts[i - 2].removeprefix("models--").replace("--", "/")
    return f"hf://{repo}/{'/'.join(parts[i + 1 :])}@{commit}"


_TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold", "r_mag", "b_mag", "b_gate", "W_skip")


def _assemble(raw: dict[str, Any], fmt: str, *, source: str, opts: dict[str, Any]) -> SAEWeights:
    files: list[Path] = raw["weight_files"]
    wfile = files[0]
    hints = opts.get("hints") or {}
    kind = raw.get("kind", "sae")
    # Where it reads: explicit hook, then explicit layer/site, then what the files said, then the registry.
    hook = opts["hook_name"] or raw.get("hook_name")
    if opts["hook_name"] is None and (opts["layer"] is not None or opts["site"] is not None) and kind == "sae":
        base_layer, base_site = _parse_hook(hook, wfile) if hook else (None, None)
        lay = (
            opts["layer"] if opts["layer"] is not None else (base_layer if base_layer is not None else raw.get("layer"))
        )
        hook = _hook_from(lay, opts["site"] or base_site or raw.get("site"), wfile)
    elif hook is None:
        if raw.get("layer") is None and raw.get("site") is None and hints.get("hook_name"):
            hook = hints["hook_name"]
        else:
            hook = _hook_from(raw.get("layer"), raw.get("site"), wfile)
    layer, site = _parse_hook(hook, wfile)
    if kind == "sae" and site not in SITES:
        raise SAEMismatch(f"{wfile}: an SAE on {hook}; sae-atlas reads SAEs at {', '.join(SITES)}")
    out_hook = raw.get("out_hook_name")
    if kind != "sae":
        if not out_hook:
            raise CorruptWeights(f"{wfile}: a {kind} that does not say which hook it writes")
        _parse_hook(out_hook, wfile)

    target = opts.get("dtype") or torch.float32
    tensors = {k: raw.get(k) for k in _TENSORS}
    for k, v in tensors.items():
        if v is not None and k not in ("W_enc", "W_dec", "W_skip"):
            tensors[k] = v.detach().to(device=opts.get("device"), dtype=target).contiguous()
        elif v is not None and (
            v.dtype != target or (opts.get("device") is not None and v.device != torch.device(opts["device"]))
        ):
            tensors[k] = v.detach().to(device=opts.get("device"), dtype=target).contiguous()
        elif v is not None and not v.is_contiguous():
            tensors[k] = v.contiguous()
    _check_tensors(tensors, wfile, raw, kind)
    arch = raw["architecture"]
    if arch == "jumprelu" and tensors["threshold"] is None:
        raise CorruptWeights(f"{wfile}: a JumpReLU dictionary without a threshold")
    if arch == "topk" and not (raw.get("k") or 0) > 0:
        raise CorruptWeights(f"{wfile}: a TopK dictionary needs k > 0")
    for extra in raw.get("checked_files") or []:
        sha256_and_verify(extra)  # a corrupt cached config is refused too
    meta = {k: v for k, v in (raw.get("meta") or {}).items() if v is not None}
    for key in ("registry", "model", "l0"):
        if hints.get(key) is not None:
            meta[f"registry_{key}"] = hints[key]
    return SAEWeights(
        **tensors,
        architecture=arch,
        hook_name=hook,
        site=site,
        layer=layer,
        source=source,
        source_format=fmt,
        k=raw.get("k"),
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input")),
        input_scale=float(raw.get("input_scale", 1.0)),
        normalization=raw.get("normalization"),
        release=hints.get("release") or raw.get("release"),
        sae_ref=hints.get("sae_ref") or raw.get("sae_ref"),
        neuronpedia_id=hints.get("neuronpedia_id") or raw.get("neuronpedia_id"),
        sha256=_sha256(files),
        meta=meta,
        kind=kind,
        out_hook_name=out_hook if kind != "sae" else None,
        out_layers=tuple(raw.get("out_layers") or ()),
        W_dec_layers=raw.get("W_dec_layers"),
        notes=_notes(source, fmt, hints),
    )


def _sha256(files: list[Path]) -> str:
    """One file: its sha256 (checked against the hub blob's name when cached); several: the sha256
    of their ``name sha256`` lines, as :func:`builders.hashing.sha256_files` does."""
    digests = [(Path(f).name, sha256_and_verify(f)) for f in files]
    if len(digests) == 1:
        return digests[0][1]
    lines = "".join(f"{n} {d}\n" for n, d in sorted(digests))
    return hashlib.sha256(lines.encode()).hexdigest()


def _notes(source: str, fmt: str, hints: dict[str, Any]) -> str | None:
    parts = []
    if hints.get("registry"):
        parts.append(f"SAELens registry {hints['registry']}")
    if source.startswith("hf://"):
        parts.append(f"read from {source} ({fmt})")
    return "; ".join(parts) or None


def _parse_hook(hook: str, wfile: Path) -> tuple[int, str]:
    try:
        return site_of_hook(hook)
    except ValueError as e:
        raise SAEMismatch(f"{wfile}: {e}") from None


def _hook_from(layer: Any, site: Any, wfile: Path) -> str:
    if layer is None or site is None:
        missing = " and ".join(n for n, v in (("layer", layer), ("site", site)) if v is None)
        raise LoadError(f"{wfile}: the files do not say the SAE's {missing}; pass it (or hook_name=)")
    if site not in READ_SITES:
        raise LoadError(f"{wfile}: unknown site {site!r}; sites are {', '.join(SITES)}")
    return hook_name_of(int(layer), site)


def _check_tensors(t: dict[str, torch.Tensor | None], wfile: Path, raw: dict[str, Any], kind: str) -> None:
    W_enc, W_dec = t["W_enc"], t["W_dec"]
    if W_enc is None or W_dec is None or W_enc.ndim != 2 or W_dec.ndim != 2:
        raise CorruptWeights(f"{wfile}: W_enc must be a matrix (d_in, d_sae) and W_dec (d_sae, d_out)")
    d_in, d_sae = W_enc.shape
    d_out = W_dec.shape[1] if kind != "sae" else d_in
    want = {
        "W_dec": (d_sae, d_out),
        "b_enc": (d_sae,),
        "b_dec": (d_out,),
        "threshold": (d_sae,),
        "r_mag": (d_sae,),
        "b_mag": (d_sae,),
        "b_gate": (d_sae,),
        "W_skip": (d_in, d_out),
    }
    for name, shape in want.items():
        if t[name] is not None and tuple(t[name].shape) != shape:
            raise CorruptWeights(
                f"{wfile}: {name} is {tuple(t[name].shape)}, expected {shape} for W_enc {(d_in, d_sae)}"
            )
    cfg = {
        "d_in": (raw.get("cfg_d_in"), d_in),
        "d_sae": (raw.get("cfg_d_sae"), d_sae),
        "d_out": (raw.get("cfg_d_out"), d_out),
    }
    bad = [f"{k}={c}" for k, (c, real) in cfg.items() if c is not None and int(c) != real]
    if bad:
        raise CorruptWeights(
            f"{wfile}: config says {', '.join(bad)}, but the weights are W_enc {(d_in, d_sae)}, W_dec {tuple(W_dec.shape)}"
        )
    if raw.get("apply_b_dec_to_input") and d_out != d_in:
        raise CorruptWeights(f"{wfile}: apply_b_dec_to_input with d_out {d_out} != d_in {d_in}")
    for name, x in t.items():
        if x is not None:
            finite_blockwise(x, wfile, name)


def check_sae_fits(sae: SAEWeights, model: ModelWeights) -> None:
    """Raise SAEMismatch (one line, naming the dictionary) unless it reads and writes hooks this model has."""
    src = sae.source
    try:
        layer, site = site_of_hook(sae.hook_name)
    except ValueError as e:
        raise SAEMismatch(f"{src}: {e}") from None
    hooks = [("reads", sae.hook_name)] + ([("writes", h) for h in sae.write_hooks] if sae.kind != "sae" else [])
    post_norm = any(lw.ln_mlp_out is not None for lw in model.layers)
    for verb, hook in hooks:
        at, _ = site_of_hook(hook)
        if at >= model.n_layers:
            raise SAEMismatch(
                f"{src}: layer {at} is past the model's depth ({model.n_layers} layers: 0..{model.n_layers - 1}); "
                f"it {verb} {hook}"
            )
        if hook.endswith(".mlp.hook_out") and post_norm:
            raise SAEMismatch(
                f"{src}: {verb} {hook}, the MLP's output before {model.architecture}'s post-feedforward norm; "
                "sae-atlas reads hook_mlp_out (after it)"
            )
        if hook not in model.hook_names:
            why = " (attention and MLP run in parallel: no resid_mid)" if model.parallel_attn_mlp else ""
            raise SAEMismatch(f"{src}: hook {hook} does not exist in {model.architecture}{why}")
    if sae.kind == "clt" and sae.write_layers[-1] != model.n_layers - 1:
        raise SAEMismatch(
            f"{src}: a cross-layer transcoder writing layers {sae.write_layers[0]}..{sae.write_layers[-1]}; "
            f"this model's last layer is {model.n_layers - 1}"
        )
    if site == "attn_z":
        want, what = model.n_heads * model.d_head, f"n_heads*d_head = {model.n_heads}*{model.d_head}"
    else:
        want, what = model.d_model, "d_model"
    if sae.d_in != want:
        raise SAEMismatch(f"{src}: SAE d_in {sae.d_in} does not match the model's {what} = {want}")
    if sae.kind != "sae" and sae.d_out != model.hook_d_in(sae.write_hooks[0]):
        raise SAEMismatch(
            f"{src}: d_out {sae.d_out} does not match the model's width {model.hook_d_in(sae.write_hooks[0])} at {sae.write_hooks[0]}"
        )
