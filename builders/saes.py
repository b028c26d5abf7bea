"""Read sparse autoencoders from their released on-disk layouts into SAEWeights.

Formats (auto-detected from the path; ``fmt=`` forces one):

* ``saelens`` — a folder with ``cfg.json`` + ``sae_weights.safetensors``. Both the
  6.x config (``metadata.hook_name``, ``architecture``, ``k``,
  ``reshape_activations``) and the older flat one (``hook_name``/``hook_point``,
  ``hook_layer``, ``activation_fn_str``/``activation_fn``,
  ``activation_fn_kwargs.k``). Pre-6 configs default ``apply_b_dec_to_input``
  to true, as SAELens does. A ``scaling_factor`` tensor (SAELens'
  finetuning scaling) is folded into ``W_dec``'s rows.
* ``gemma_scope`` — ``params.npz`` (``W_enc, W_dec, b_enc, b_dec, threshold``),
  JumpReLU, no ``b_dec`` subtraction. Layer, width and L0 come from the path
  ``layer_12/width_16k/average_l0_82``; the site from the release folder name
  (``gemma-scope-2b-pt-res`` -> resid_post, ``-att`` -> attn.hook_z, ``-mlp`` ->
  mlp_out; Gemma Scope's attention SAEs read the concatenated z), or options.
* ``llama_scope`` — OpenMOSS Llama Scope: ``hyperparams.json`` +
  ``checkpoints/final.safetensors`` with nn.Linear layouts (``encoder.weight``
  is ``(d_sae, d_in)``: transposed here). Its activations were normalised
  dataset-wise to norm sqrt(d_model), so ``input_scale = sqrt(d_model) /
  dataset_average_activation_norm.in`` (or ``norm_scaling_factor`` when the
  file states it) and the scalar ``jump_relu_threshold`` applies to the scaled
  pre-activations; a per-feature ``log_jumprelu_threshold`` tensor wins when
  present. ``SAEWeights.fold_input_scale()`` gives the equivalent unscaled SAE.
  Assumption (documented, not verifiable offline): with
  ``sparsity_include_decoder_norm`` the gate is ``pre * ||W_dec_i|| >
  threshold``; the released inference checkpoints have unit decoder rows, so
  this only changes anything for checkpoints that do not.
* ``kissane`` — Kissane et al. attention-output SAEs: ``<name>.pt`` state dict
  (``W_enc, W_dec, b_enc, b_dec``) + ``<name>_cfg.json`` (``act_name``,
  ``layer``, ``act_size``, ``dict_size``); hook_z; ``b_dec`` subtracted first.
* ``dictionary_learning`` — ``ae.pt`` (``encoder.weight (d_sae, d_in)``,
  ``encoder.bias``, ``decoder.weight (d_in, d_sae)``, ``bias`` = b_dec; TopK,
  Gated and JumpReLU variants too) + optional ``config.json`` (``trainer.layer``,
  ``trainer.submodule_name``).

``.pt`` files are only ever opened with ``torch.load(weights_only=True)``.
Every loader checks shapes and finiteness and records the sha256 of the weight
file; a bad file is refused with one line naming it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from builders.device import resolve_device
from builders.errors import CorruptWeights, LoadError, SAEMismatch, UnknownSAEFormat
from builders.hashing import sha256_file
from builders.weights import SITES, ModelWeights, SAEWeights, hook_name_of, site_of_hook

SAE_FORMATS = ("saelens", "gemma_scope", "llama_scope", "kissane", "dictionary_learning")
_LAYOUTS = (
    "a SAELens folder (cfg.json + sae_weights.safetensors), Gemma Scope params.npz, "
    "a Llama Scope folder (hyperparams.json + checkpoints/final.safetensors), "
    "a Kissane <name>.pt + <name>_cfg.json, or a dictionary_learning ae.pt"
)


# ------------------------------------------------------------------------ file reading


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LoadError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptWeights(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CorruptWeights(f"{path}: expected a JSON object")
    return data


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise LoadError(f"{path}: file not found")
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # SafetensorError, OSError: truncated header or data
        raise CorruptWeights(f"{path}: truncated or corrupt safetensors file ({_short(e)})") from None


def _read_npz(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise LoadError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: torch.from_numpy(np.array(data[k])) for k in data.files}
    except Exception as e:  # BadZipFile, ValueError, EOFError, zlib.error
        raise CorruptWeights(f"{path}: truncated or corrupt .npz file ({_short(e)})") from None


def _read_pt(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise LoadError(f"{path}: file not found")
    try:
        # weights_only: never run code from a downloaded pickle.
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:
        raise CorruptWeights(f"{path}: truncated, corrupt or unsafe .pt file ({_short(e)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CorruptWeights(f"{path}: expected a state dict of tensors")
    return state


def _short(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:160] if lines else ''}"


def _need(tensors: dict[str, torch.Tensor], key: str, path: Path) -> torch.Tensor:
    if key not in tensors:
        raise CorruptWeights(f"{path}: missing tensor {key!r} (has {', '.join(sorted(tensors)) or 'none'})")
    return tensors[key]


# ------------------------------------------------------------------------ format loaders


def _load_saelens(folder: Path, opts: dict[str, Any]) -> dict[str, Any]:
    cfg = _read_json(folder / "cfg.json")
    weights_path = folder / "sae_weights.safetensors"
    t = _read_safetensors(weights_path)
    meta = cfg.get("metadata") or cfg.get("meta") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    if meta.get("hook_head_index", cfg.get("hook_head_index", cfg.get("hook_point_head_index"))) is not None:
        raise LoadError(f"{folder}: single-head SAEs (hook_head_index set) are not supported")
    version = str(meta.get("sae_lens_version") or cfg.get("sae_lens_version") or "")
    pre6 = "metadata" not in cfg and not version.startswith(("6", "7"))

    arch_raw = str(cfg.get("architecture") or "standard")
    act = str(cfg.get("activation_fn") or cfg.get("activation_fn_str") or "relu")
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    if arch_raw in ("standard", "relu"):
        arch = "topk" if act == "topk" else "relu"
    elif arch_raw in ("jumprelu", "gated", "topk"):
        arch = arch_raw
    elif arch_raw in ("batchtopk", "matryoshka_batchtopk"):
        # BatchTopK SAEs are used at inference as JumpReLU with their learned threshold when saved with one.
        arch = "jumprelu" if ("threshold" in t or "log_threshold" in t) else "topk"
    else:
        raise LoadError(f"{folder}: SAELens architecture {arch_raw!r} is not an SAE this loader reads")

    out: dict[str, Any] = dict(
        W_enc=_need(t, "W_enc", weights_path), W_dec=_need(t, "W_dec", weights_path),
        b_dec=_need(t, "b_dec", weights_path), architecture=arch, hook_name=hook,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)), weight_file=weights_path,
        neuronpedia_id=meta.get("neuronpedia_id") or cfg.get("neuronpedia_id"), release=None,
        sae_ref=folder.name, cfg_d_in=cfg.get("d_in"), cfg_d_sae=cfg.get("d_sae"),
        meta={"sae_lens_version": version or None, "config_style": "pre-6" if pre6 else "6.x",
              "model_name": meta.get("model_name") or cfg.get("model_name")},
    )  # fmt: skip
    d_sae = out["W_enc"].shape[-1]
    out["b_enc"] = t["b_enc"] if "b_enc" in t else torch.zeros(d_sae)  # gated SAEs have no b_enc
    if arch == "jumprelu":
        out["threshold"] = t["threshold"] if "threshold" in t else _need(t, "log_threshold", weights_path).exp()
    if arch == "topk":
        if k is None:
            raise CorruptWeights(f"{folder / 'cfg.json'}: a topk SAE without k")
        out["k"] = int(k)
    if arch == "gated":
        for key in ("b_gate", "r_mag", "b_mag"):
            out[key] = _need(t, key, weights_path)
    if "scaling_factor" in t and not torch.allclose(t["scaling_factor"], torch.ones_like(t["scaling_factor"])):
        # SAELens multiplies feature activations by scaling_factor before decoding: fold into W_dec rows.
        out["W_dec"] = out["W_dec"] * t["scaling_factor"][:, None]
        out["meta"]["folded_finetuning_scaling_factor"] = True

    norm = cfg.get("normalize_activations")
    if isinstance(norm, bool):
        norm = "expected_average_only_in" if norm else None
    out["normalization"] = None if norm in (None, "none") else str(norm)
    factor = cfg.get("norm_scaling_factor") or cfg.get("scaling_factor")
    if out["normalization"] == "expected_average_only_in" and isinstance(factor, (int, float)):
        out["input_scale"] = float(factor)
    elif out["normalization"]:
        # A per-token or data-estimated normalisation: directions are exact, encode() on raw activations is not.
        out["meta"]["encode_needs_normalization"] = out["normalization"]
    if cfg.get("reshape_activations") == "hook_z" and hook and not hook.endswith("attn.hook_z"):
        raise CorruptWeights(f"{folder / 'cfg.json'}: reshape_activations=hook_z but hook_name is {hook}")
    layer_cfg = cfg.get("hook_layer", cfg.get("hook_point_layer"))
    if layer_cfg is not None:
        out["meta"]["hook_layer"] = int(layer_cfg)
    return out


_GEMMA_RELEASE = re.compile(r"gemma-scope-[a-z0-9.-]*?-(res|att|mlp|transcoders)(?:-canonical)?(?=$|[/\\])")
_GEMMA_SITE = {"res": "resid_post", "att": "attn_z", "mlp": "mlp_out"}


def _load_gemma_scope(path: Path, opts: dict[str, Any]) -> dict[str, Any]:
    t = {("W_" + k[2:] if k.startswith("w_") else k): v for k, v in _read_npz(path).items()}
    text = path.resolve().as_posix()
    release_m = _GEMMA_RELEASE.search(text.replace("models--google--", ""))
    layer_m = re.search(r"layer_(\d+)", text)
    width_m = re.search(r"width_([0-9]+[km]?)", text)
    l0_m = re.search(r"average_l0_(\d+)", text)
    site = None
    if release_m:
        if release_m.group(1) == "transcoders":
            raise LoadError(f"{path}: Gemma Scope transcoders are not SAEs")
        site = _GEMMA_SITE[release_m.group(1)]
    if "embedding" in text and not layer_m:
        raise LoadError(f"{path}: Gemma Scope embedding SAEs (hook_embed) have no layer site")
    layer = int(layer_m.group(1)) if layer_m else None
    parts = [m.group(0) for m in (layer_m, width_m, l0_m) if m]
    release = release_m.group(0).rstrip("/") if release_m else None
    return dict(
        W_enc=_need(t, "W_enc", path), W_dec=_need(t, "W_dec", path), b_enc=_need(t, "b_enc", path),
        b_dec=_need(t, "b_dec", path), threshold=_need(t, "threshold", path), architecture="jumprelu",
        apply_b_dec_to_input=False, layer=layer, site=site, weight_file=path, release=release,
        sae_ref="/".join(parts) or None,
        meta={"width": width_m.group(1) if width_m else None, "average_l0": int(l0_m.group(1)) if l0_m else None},
    )  # fmt: skip


def _load_llama_scope(folder: Path, opts: dict[str, Any]) -> dict[str, Any]:
    hp_path = folder / "hyperparams.json"
    hp = _read_json(hp_path)
    weights_path = folder / "checkpoints" / "final.safetensors"
    if not weights_path.is_file():
        found = sorted((folder / "checkpoints").glob("*.safetensors")) or sorted(folder.glob("*.safetensors"))
        weights_path = found[-1] if found else weights_path
    t = _read_safetensors(weights_path)
    hook_in, hook_out = hp.get("hook_point_in") or hp.get("hook_point"), hp.get("hook_point_out")
    if hook_out and hook_in and hook_out != hook_in:
        raise LoadError(f"{folder}: a transcoder ({hook_in} -> {hook_out}), not an SAE")
    enc = _need(t, "encoder.weight", weights_path).float()  # (d_sae, d_in): nn.Linear layout
    dec = _need(t, "decoder.weight", weights_path).float()  # (d_in, d_sae)
    d_sae, d_in = enc.shape
    W_dec = dec.T  # (d_sae, d_in)
    out: dict[str, Any] = dict(
        W_enc=enc.T, W_dec=W_dec, b_enc=_need(t, "encoder.bias", weights_path),
        b_dec=t["decoder.bias"] if "decoder.bias" in t else torch.zeros(d_in), hook_name=hook_in,
        apply_b_dec_to_input=bool(hp.get("apply_decoder_bias_to_pre_encoder", False)), weight_file=weights_path,
        release=folder.parent.name or None, sae_ref=folder.name, cfg_d_in=hp.get("d_model"), cfg_d_sae=hp.get("d_sae"),
        meta={"act_fn": hp.get("act_fn"), "norm_activation": hp.get("norm_activation")},
    )  # fmt: skip
    act = str(hp.get("act_fn", "jumprelu")).lower()
    if act == "topk":
        out["architecture"], out["k"] = "topk", int(hp["top_k"])
    elif act == "relu":
        out["architecture"] = "relu"
    elif act == "jumprelu":
        out["architecture"] = "jumprelu"
        if "log_jumprelu_threshold" in t:
            out["threshold"] = t["log_jumprelu_threshold"].float().exp()
        elif "jump_relu_threshold" in hp:
            threshold = float(hp["jump_relu_threshold"]) * torch.ones(d_sae)
            norms = W_dec.norm(dim=1)  # (d_sae,)
            if hp.get("sparsity_include_decoder_norm") and (norms - 1).abs().max() > 1e-2:
                # The gate is on pre * ||W_dec_i||: the same as pre > threshold / ||W_dec_i||.
                threshold = threshold / norms
                out["meta"]["threshold_divided_by_decoder_norm"] = True
            out["threshold"] = threshold
            out["meta"]["jump_relu_threshold"] = float(hp["jump_relu_threshold"])
        else:
            raise CorruptWeights(f"{hp_path}: jumprelu without jump_relu_threshold or log_jumprelu_threshold")
    else:
        raise LoadError(f"{hp_path}: act_fn {act!r} is not one this loader reads")

    scale = hp.get("norm_scaling_factor")
    avg = hp.get("dataset_average_activation_norm")
    if isinstance(avg, dict):
        avg = avg.get("in", avg.get(hook_in))
    if isinstance(scale, (int, float)):
        out["input_scale"] = float(scale)
    elif hp.get("norm_activation") == "dataset-wise" and isinstance(avg, (int, float)) and avg > 0:
        out["input_scale"] = math.sqrt(d_in) / float(avg)
    elif hp.get("norm_activation") == "dataset-wise":
        raise CorruptWeights(f"{hp_path}: norm_activation is dataset-wise but no dataset_average_activation_norm")
    if out.get("input_scale", 1.0) != 1.0:
        out["normalization"] = f"dataset-wise: x * {out['input_scale']:.6g} before encoding"
        out["meta"]["norm_scaling_factor"] = out["input_scale"]
    return out


def _kissane_cfg(path: Path) -> Path:
    return path.with_name(path.stem + "_cfg.json")


def _load_kissane(path: Path, opts: dict[str, Any]) -> dict[str, Any]:
    t = _read_pt(path)
    cfg_path = _kissane_cfg(path)
    cfg = _read_json(cfg_path) if cfg_path.is_file() else {}
    out: dict[str, Any] = dict(
        W_enc=_need(t, "W_enc", path), W_dec=_need(t, "W_dec", path), b_enc=_need(t, "b_enc", path),
        b_dec=_need(t, "b_dec", path), architecture="relu", apply_b_dec_to_input=True, weight_file=path,
        hook_name=cfg.get("act_name"), layer=cfg.get("layer"), cfg_d_in=cfg.get("act_size"),
        cfg_d_sae=cfg.get("dict_size"), release=path.parent.name or None, sae_ref=path.stem,
        meta={"model_name": cfg.get("model_name"), "config": cfg_path.name if cfg else None},
    )  # fmt: skip
    if out["hook_name"] is None and out["layer"] is not None:
        out["site"] = "attn_z"  # the release is all hook_z SAEs
    return out


_DL_SITES = {"resid_post": "resid_post", "resid_pre": "resid_pre", "attn_out": "attn_out", "mlp_out": "mlp_out"}


def _load_dictionary_learning(path: Path, opts: dict[str, Any]) -> dict[str, Any]:
    t = _read_pt(path)
    cfg_path = path.parent / "config.json"
    trainer = (_read_json(cfg_path).get("trainer") or {}) if cfg_path.is_file() else {}
    out: dict[str, Any] = dict(weight_file=path, release=path.parent.parent.name or None, sae_ref=path.parent.name)
    if "W_enc" in t:  # JumpReluAutoEncoder stores SAELens orientation and does not centre the input
        out.update(W_enc=t["W_enc"], W_dec=_need(t, "W_dec", path), b_enc=_need(t, "b_enc", path),
                   b_dec=_need(t, "b_dec", path), threshold=_need(t, "threshold", path),
                   architecture="jumprelu", apply_b_dec_to_input=False)  # fmt: skip
    else:
        enc = _need(t, "encoder.weight", path)  # (d_sae, d_in)
        dec = _need(t, "decoder.weight", path)  # (d_in, d_sae)
        b_dec = next((t[k] for k in ("bias", "b_dec", "decoder_bias") if k in t), None)
        if b_dec is None:
            raise CorruptWeights(f"{path}: missing the decoder bias ('bias', 'b_dec' or 'decoder_bias')")
        out.update(W_enc=enc.T, W_dec=dec.T, b_dec=b_dec, apply_b_dec_to_input=True)
        out["b_enc"] = t["encoder.bias"] if "encoder.bias" in t else torch.zeros(enc.shape[0])
        if "r_mag" in t:  # GatedAutoEncoder
            out.update(architecture="gated", r_mag=t["r_mag"], b_gate=_need(t, "gate_bias", path),
                       b_mag=_need(t, "mag_bias", path))  # fmt: skip
        elif "k" in t or trainer.get("k") is not None:  # AutoEncoderTopK / BatchTopK
            out.update(architecture="topk", k=int(t["k"].item() if "k" in t else trainer["k"]))
        else:
            out["architecture"] = "relu"
    if trainer:
        out["layer"] = trainer.get("layer")
        sub = str(trainer.get("submodule_name") or "")
        site = next((s for prefix, s in _DL_SITES.items() if sub.startswith(prefix)), None)
        out["site"] = site or ("resid_post" if out["layer"] is not None else None)
        out["cfg_d_in"], out["cfg_d_sae"] = trainer.get("activation_dim"), trainer.get("dict_size")
        out["meta"] = {"dict_class": trainer.get("dict_class"), "lm_name": trainer.get("lm_name")}
    return out


_LOADERS = {
    "saelens": _load_saelens,
    "gemma_scope": _load_gemma_scope,
    "llama_scope": _load_llama_scope,
    "kissane": _load_kissane,
    "dictionary_learning": _load_dictionary_learning,
}


# ------------------------------------------------------------------------ detection


def detect_format(path: str | Path) -> tuple[str, Path]:
    """``(format, the path its loader takes)`` for a file or folder; UnknownSAEFormat if none fits."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LoadError(f"no such SAE file or folder: {path}")
    if p.is_dir():
        if (p / "cfg.json").is_file() and (p / "sae_weights.safetensors").is_file():
            return "saelens", p
        if (p / "hyperparams.json").is_file():
            return "llama_scope", p
        if (p / "params.npz").is_file():
            return "gemma_scope", p / "params.npz"
        if (p / "ae.pt").is_file():
            return "dictionary_learning", p / "ae.pt"
        kissane = [q for q in sorted(p.glob("*.pt")) if _kissane_cfg(q).is_file()]
        if len(kissane) == 1:
            return "kissane", kissane[0]
        raise UnknownSAEFormat(f"{p}: not an SAE folder; expected {_LAYOUTS}")
    name = p.name
    if name in ("cfg.json", "sae_weights.safetensors"):
        return "saelens", p.parent
    if name == "hyperparams.json":
        return "llama_scope", p.parent
    if (
        p.suffix == ".safetensors"
        and p.parent.name == "checkpoints"
        and (p.parent.parent / "hyperparams.json").is_file()
    ):
        return "llama_scope", p.parent.parent
    if p.suffix == ".npz":
        return "gemma_scope", p
    if p.suffix == ".pt":
        if _kissane_cfg(p).is_file():
            return "kissane", p
        if name == "ae.pt":
            return "dictionary_learning", p
        keys = _read_pt(p).keys()
        if "encoder.weight" in keys:
            return "dictionary_learning", p
        if "W_enc" in keys:
            return "kissane", p
    raise UnknownSAEFormat(f"{p}: unknown SAE file; expected {_LAYOUTS}")


def _canonical(fmt: str, path: Path) -> Path:
    """The path a loader takes, when the format was given explicitly."""
    if fmt in ("saelens", "llama_scope"):
        return path if path.is_dir() else (path.parent.parent if path.parent.name == "checkpoints" else path.parent)
    if path.is_dir():
        name = {"gemma_scope": "params.npz", "dictionary_learning": "ae.pt"}.get(fmt)
        if name:
            return path / name
        found = [q for q in sorted(path.glob("*.pt")) if _kissane_cfg(q).is_file()] or sorted(path.glob("*.pt"))
        if not found:
            raise LoadError(f"{path}: no .pt file in this folder")
        return found[0]
    return path


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
    """Load one SAE from a local file or folder (see the module docstring for the formats).

    ``hook_name`` (or ``layer`` and/or ``site``) override what the files say,
    for formats whose files do not record it. ``device`` is a
    :func:`builders.device.resolve_device` spec; by default the SAE stays on
    the CPU in fp32.
    """
    p = Path(path).expanduser()
    if not p.exists() and ":" in str(path) and not str(path).startswith(("/", ".", "~")):
        raise LoadError(f"{path}: hub references (release:sae_id) are not fetched; download the SAE and pass its path")
    if fmt is None:
        fmt, p = detect_format(p)
    elif fmt not in _LOADERS:
        raise UnknownSAEFormat(f"unknown SAE format {fmt!r}; formats: {', '.join(SAE_FORMATS)}")
    elif not p.exists():
        raise LoadError(f"no such SAE file or folder: {path}")
    else:
        p = _canonical(fmt, p)
    opts = {"layer": layer, "site": site, "hook_name": hook_name}
    raw = _LOADERS[fmt](p, opts)
    sae = _assemble(raw, fmt, source=str(path), opts=opts)
    if device is not None:
        dev, dtype = resolve_device(device)
        sae = sae.to(dev, dtype)
    return sae


def _assemble(raw: dict[str, Any], fmt: str, *, source: str, opts: dict[str, Any]) -> SAEWeights:
    wfile: Path = raw["weight_file"]
    # Where the SAE reads: explicit hook, then explicit layer/site, then what the files said.
    hook = opts["hook_name"] or raw.get("hook_name")
    if opts["hook_name"] is None and (opts["layer"] is not None or opts["site"] is not None):
        base_layer, base_site = (None, None)
        if hook:
            base_layer, base_site = _parse_hook(hook, wfile)
        lay = (
            opts["layer"] if opts["layer"] is not None else (base_layer if base_layer is not None else raw.get("layer"))
        )
        sit = opts["site"] or base_site or raw.get("site")
        hook = _hook_from(lay, sit, wfile)
    elif hook is None:
        hook = _hook_from(raw.get("layer"), raw.get("site"), wfile)
    layer, site = _parse_hook(hook, wfile)

    tensors = {k: raw.get(k) for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold", "r_mag", "b_mag", "b_gate")}
    tensors = {k: (None if v is None else v.detach().to(torch.float32).contiguous()) for k, v in tensors.items()}
    _check_tensors(tensors, wfile, raw.get("cfg_d_in"), raw.get("cfg_d_sae"))
    arch = raw["architecture"]
    if arch == "jumprelu" and tensors["threshold"] is None:
        raise CorruptWeights(f"{wfile}: a JumpReLU SAE without a threshold")
    if arch == "topk" and not (raw.get("k") or 0) > 0:
        raise CorruptWeights(f"{wfile}: a TopK SAE needs k > 0")
    return SAEWeights(
        **tensors, architecture=arch, hook_name=hook, site=site, layer=layer, source=source,
        source_format=fmt, k=raw.get("k"), apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input")),
        input_scale=float(raw.get("input_scale", 1.0)), normalization=raw.get("normalization"),
        release=raw.get("release"), sae_ref=raw.get("sae_ref"), neuronpedia_id=raw.get("neuronpedia_id"),
        sha256=sha256_file(wfile), meta={k: v for k, v in (raw.get("meta") or {}).items() if v is not None},
    )  # fmt: skip


def _parse_hook(hook: str, wfile: Path) -> tuple[int, str]:
    try:
        return site_of_hook(hook)
    except ValueError as e:
        raise SAEMismatch(f"{wfile}: {e}") from None


def _hook_from(layer: Any, site: Any, wfile: Path) -> str:
    if layer is None or site is None:
        missing = " and ".join(n for n, v in (("layer", layer), ("site", site)) if v is None)
        raise LoadError(f"{wfile}: the files do not say the SAE's {missing}; pass it (or hook_name=)")
    if site not in SITES:
        raise LoadError(f"{wfile}: unknown site {site!r}; sites are {', '.join(SITES)}")
    return hook_name_of(int(layer), site)


def _check_tensors(t: dict[str, torch.Tensor | None], wfile: Path, cfg_d_in: Any, cfg_d_sae: Any) -> None:
    W_enc, W_dec = t["W_enc"], t["W_dec"]
    if W_enc is None or W_dec is None or W_enc.ndim != 2:
        raise CorruptWeights(f"{wfile}: W_enc must be a matrix (d_in, d_sae)")
    d_in, d_sae = W_enc.shape
    want = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,), "threshold": (d_sae,), "r_mag": (d_sae,),
            "b_mag": (d_sae,), "b_gate": (d_sae,)}  # fmt: skip
    for name, shape in want.items():
        if t[name] is not None and tuple(t[name].shape) != shape:
            raise CorruptWeights(
                f"{wfile}: {name} is {tuple(t[name].shape)}, expected {shape} for W_enc {(d_in, d_sae)}"
            )
    if cfg_d_in is not None and int(cfg_d_in) != d_in or cfg_d_sae is not None and int(cfg_d_sae) != d_sae:
        raise CorruptWeights(f"{wfile}: config says d_in={cfg_d_in}, d_sae={cfg_d_sae}, weights are {d_in} x {d_sae}")
    for name, x in t.items():
        if x is not None and not bool(torch.isfinite(x).all()):
            raise CorruptWeights(f"{wfile}: {name} has NaN or inf values")


def check_sae_fits(sae: SAEWeights, model: ModelWeights) -> None:
    """Raise SAEMismatch (one line, naming the SAE's file) unless the SAE reads a hook this model has."""
    src = sae.source
    try:
        layer, site = site_of_hook(sae.hook_name)
    except ValueError as e:
        raise SAEMismatch(f"{src}: {e}") from None
    if layer >= model.n_layers:
        raise SAEMismatch(
            f"{src}: layer {layer} is past the model's depth ({model.n_layers} layers: 0..{model.n_layers - 1})"
        )
    if sae.hook_name not in model.hook_names:
        why = " (attention and MLP run in parallel: no resid_mid)" if model.parallel_attn_mlp else ""
        raise SAEMismatch(f"{src}: hook {sae.hook_name} does not exist in {model.architecture}{why}")
    if site == "attn_z":
        want, what = model.n_heads * model.d_head, f"n_heads*d_head = {model.n_heads}*{model.d_head}"
    else:
        want, what = model.d_model, "d_model"
    if sae.d_in != want:
        raise SAEMismatch(f"{src}: SAE d_in {sae.d_in} does not match the model's {what} = {want}")
