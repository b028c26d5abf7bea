"""Loaders for the SAE formats: each reads one released layout into a plain dict that
:func:`builders.saes.load_sae` checks and assembles into an SAEWeights.

A loader returns ``W_enc (d_in, d_sae)`` and ``W_dec (d_sae, d_out)`` already in their final
orientation, dtype and device (read by :class:`builders.sae_io.Safetensors` a block at a
time: never a second full-size copy), the small tensors, and what the files say about where
the dictionary reads (``hook_name``, or ``layer`` + ``site``), writes (``out_hook_name``,
``kind``) and how it encodes. ``opts`` carries the caller's overrides, the target
``device``/``dtype`` and ``hints`` (what a registry entry said: release, id, Neuronpedia id,
hooks, norm scaling factor).

Formats here: ``saelens`` (SAEs and SAELens transcoders / skip transcoders), ``gemma_scope``
(Gemma Scope 1 ``params.npz``, SAEs and transcoders), ``llama_scope``, ``kissane``,
``dictionary_learning``, ``sparsify`` and ``goodfire``. Gemma Scope 2 and circuit-tracer are in
:mod:`builders.transcoder_formats`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from builders.errors import CorruptWeights, LoadError
from builders.sae_io import Safetensors, need, read_json, read_npz, read_pt


def _target(opts: dict[str, Any]) -> dict[str, Any]:
    return {"device": opts.get("device"), "dtype": opts.get("dtype") or torch.float32}


# ------------------------------------------------------------------------ SAELens

_SAELENS_TRANSCODERS = (
    "transcoder",
    "skip_transcoder",
    "jumprelu_transcoder",
    "jumprelu_skip_transcoder",
    "topk_transcoder",
    "topk_skip_transcoder",
)


def load_saelens(folder: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """``cfg.json`` + ``sae_weights.safetensors``: the 6.x config (``metadata.hook_name``) and the
    older flat one (``hook_name``/``hook_point``, ``activation_fn(_str)``). Transcoders carry
    ``d_out``, ``metadata.hook_name_out`` and, for skip transcoders, ``W_skip (d_out, d_in)``."""
    hints = opts.get("hints") or {}
    cfg = {**read_json(folder / "cfg.json"), **(hints.get("config_overrides") or {})}
    weights_path = folder / "sae_weights.safetensors"
    st = Safetensors(weights_path)
    meta = cfg.get("metadata") or cfg.get("meta") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    hook_out = meta.get("hook_name_out") or cfg.get("hook_name_out")
    if meta.get("hook_head_index", cfg.get("hook_head_index", cfg.get("hook_point_head_index"))) is not None:
        raise LoadError(f"{folder}: single-head SAEs (hook_head_index set) are not supported")
    version = str(meta.get("sae_lens_version") or cfg.get("sae_lens_version") or "")
    pre6 = "metadata" not in cfg and not version.startswith(("6", "7"))

    arch_raw = str(cfg.get("architecture") or "standard")
    act = str(cfg.get("activation_fn") or cfg.get("activation_fn_str") or "relu")
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    kind = "transcoder" if arch_raw in _SAELENS_TRANSCODERS else "sae"
    if arch_raw in ("standard", "relu", "transcoder", "skip_transcoder"):
        arch = "topk" if act == "topk" else "relu"
    elif arch_raw in ("jumprelu", "gated", "topk"):
        arch = arch_raw
    elif arch_raw in ("jumprelu_transcoder", "jumprelu_skip_transcoder"):
        arch = "jumprelu"
    elif arch_raw in ("topk_transcoder", "topk_skip_transcoder"):  # SAELens' TopK transcoders; the example's
        arch = "topk"
    elif arch_raw in ("batchtopk", "matryoshka_batchtopk"):
        # BatchTopK SAEs are used at inference as JumpReLU with their learned threshold when saved with one.
        arch = "jumprelu" if ("threshold" in st or "log_threshold" in st) else "topk"
    else:
        raise LoadError(f"{folder}: SAELens architecture {arch_raw!r} is not one this loader reads")
    if kind == "transcoder" and not hook_out:
        raise CorruptWeights(f"{folder / 'cfg.json'}: a {arch_raw} without metadata.hook_name_out")

    tgt = _target(opts)
    out: dict[str, Any] = dict(
        W_enc=st.matrix("W_enc", **tgt),
        W_dec=st.matrix("W_dec", **tgt),
        b_dec=st.vector("b_dec"),
        architecture=arch,
        hook_name=hook,
        kind=kind,
        out_hook_name=hook_out if kind != "sae" else None,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", kind == "sae")),
        weight_files=[weights_path],
        neuronpedia_id=meta.get("neuronpedia_id") or cfg.get("neuronpedia_id"),
        release=None,
        sae_ref=folder.name,
        cfg_d_in=cfg.get("d_in"),
        cfg_d_sae=cfg.get("d_sae"),
        cfg_d_out=cfg.get("d_out"),
        meta={
            "sae_lens_version": version or None,
            "config_style": "pre-6" if pre6 else "6.x",
            "model_name": meta.get("model_name") or cfg.get("model_name"),
            "saelens_architecture": arch_raw,
        },
    )
    d_sae = out["W_enc"].shape[-1]
    out["b_enc"] = st.vector("b_enc") if "b_enc" in st else torch.zeros(d_sae)  # gated SAEs have no b_enc
    if arch == "jumprelu":
        out["threshold"] = st.vector("threshold") if "threshold" in st else st.vector("log_threshold").exp()
    if arch == "topk":
        if k is None:
            raise CorruptWeights(f"{folder / 'cfg.json'}: a topk SAE without k")
        out["k"] = int(k)
    if arch == "gated":
        for key in ("b_gate", "r_mag", "b_mag"):
            out[key] = st.vector(key)
    if "W_skip" in st:
        out["W_skip"] = st.matrix("W_skip", transpose=True, **tgt)  # stored (d_out, d_in), used as x @ W_skip.T
    elif arch_raw.endswith("skip_transcoder"):
        raise CorruptWeights(f"{weights_path}: a {arch_raw} without W_skip")
    if "scaling_factor" in st:
        sf = st.vector("scaling_factor")
        if not torch.allclose(sf, torch.ones_like(sf)):
            # SAELens multiplies feature activations by scaling_factor before decoding: fold into W_dec rows.
            out["W_dec"].mul_(sf[:, None].to(out["W_dec"]))
            out["meta"]["folded_finetuning_scaling_factor"] = True

    norm = cfg.get("normalize_activations")
    if isinstance(norm, bool):
        norm = "expected_average_only_in" if norm else None
    out["normalization"] = None if norm in (None, "none") else str(norm)
    factor = cfg.get("norm_scaling_factor") or cfg.get("scaling_factor") or hints.get("norm_scaling_factor")
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


# ------------------------------------------------------------------------ Gemma Scope 1

_GEMMA_RELEASE = re.compile(r"gemma-scope-[a-z0-9.-]*?-(res|att|mlp|transcoders)(?:-canonical)?(?=$|[/\\])")
_GEMMA_SITE = {"res": "resid_post", "att": "attn_z", "mlp": "mlp_out"}


def load_gemma_scope(path: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """``params.npz``; layer/width/L0 from the path, the site from the release (``-res``, ``-att``,
    ``-mlp``; ``-transcoders`` read ``ln2.hook_normalized`` and write ``hook_mlp_out``)."""
    t = {("W_" + k[2:] if k.startswith("w_") else k): v for k, v in read_npz(path).items()}
    text = path.resolve().as_posix() + "/" + str(path)  # the snapshot path, and the name the user gave
    release_m = _GEMMA_RELEASE.search(text.replace("models--google--", ""))
    layer_m = re.search(r"layer_(\d+)", str(path)) or re.search(r"layer_(\d+)", text)
    width_m = re.search(r"width_([0-9]+[km]?)", str(path))
    l0_m = re.search(r"average_l0_(\d+)", str(path))
    site, kind, hook_out = None, "sae", None
    group = (opts.get("hints") or {}).get("gemma_scope_group") or (release_m.group(1) if release_m else None)
    if group == "transcoders":
        kind, site = "transcoder", "ln2_normalized"
    elif group:
        site = _GEMMA_SITE[group]
    if "embedding" in str(path) and not layer_m:
        raise LoadError(f"{path}: Gemma Scope embedding SAEs (hook_embed) have no layer site")
    layer = int(layer_m.group(1)) if layer_m else None
    if kind == "transcoder" and layer is not None:
        hook_out = f"blocks.{layer}.hook_mlp_out"
    parts = [m.group(0) for m in (layer_m, width_m, l0_m) if m]
    release = release_m.group(0).rstrip("/") if release_m else None
    return dict(
        W_enc=need(t, "W_enc", path),
        W_dec=need(t, "W_dec", path),
        b_enc=need(t, "b_enc", path),
        b_dec=need(t, "b_dec", path),
        threshold=need(t, "threshold", path),
        architecture="jumprelu",
        apply_b_dec_to_input=False,
        layer=layer,
        site=site,
        weight_files=[path],
        release=release,
        sae_ref="/".join(parts) or None,
        kind=kind,
        out_hook_name=hook_out,
        meta={"width": width_m.group(1) if width_m else None, "average_l0": int(l0_m.group(1)) if l0_m else None},
    )


# ------------------------------------------------------------------------ Llama Scope


def load_llama_scope(folder: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """OpenMOSS: ``hyperparams.json`` + ``checkpoints/final.safetensors``, nn.Linear layouts."""
    hp_path = folder / "hyperparams.json"
    hp = read_json(hp_path)
    weights_path = folder / "checkpoints" / "final.safetensors"
    if not weights_path.is_file():
        found = sorted((folder / "checkpoints").glob("*.safetensors")) or sorted(folder.glob("*.safetensors"))
        weights_path = found[-1] if found else weights_path
    st = Safetensors(weights_path)
    hook_in, hook_out = hp.get("hook_point_in") or hp.get("hook_point"), hp.get("hook_point_out")
    if hook_out and hook_in and hook_out != hook_in:
        raise LoadError(f"{folder}: a Llama Scope transcoder ({hook_in} -> {hook_out}); only its SAEs are read")
    tgt = _target(opts)
    W_enc = st.matrix("encoder.weight", transpose=True, name="W_enc", **tgt)  # stored (d_sae, d_in)
    W_dec = st.matrix("decoder.weight", transpose=True, name="W_dec", **tgt)  # stored (d_in, d_sae)
    d_in, d_sae = W_enc.shape
    out: dict[str, Any] = dict(
        W_enc=W_enc,
        W_dec=W_dec,
        b_enc=st.vector("encoder.bias"),
        b_dec=st.vector("decoder.bias") if "decoder.bias" in st else torch.zeros(d_in),
        hook_name=hook_in,
        apply_b_dec_to_input=bool(hp.get("apply_decoder_bias_to_pre_encoder", False)),
        weight_files=[weights_path],
        release=folder.parent.name or None,
        sae_ref=folder.name,
        cfg_d_in=hp.get("d_model"),
        cfg_d_sae=hp.get("d_sae"),
        meta={"act_fn": hp.get("act_fn"), "norm_activation": hp.get("norm_activation")},
    )
    act = str(hp.get("act_fn", "jumprelu")).lower()
    if act == "topk":
        out["architecture"], out["k"] = "topk", int(hp["top_k"])
    elif act == "relu":
        out["architecture"] = "relu"
    elif act == "jumprelu":
        out["architecture"] = "jumprelu"
        if "log_jumprelu_threshold" in st:
            out["threshold"] = st.vector("log_jumprelu_threshold").exp()
        elif "jump_relu_threshold" in hp:
            threshold = float(hp["jump_relu_threshold"]) * torch.ones(d_sae)
            norms = W_dec.float().norm(dim=1)  # (d_sae,)
            if hp.get("sparsity_include_decoder_norm") and (norms - 1).abs().max() > 1e-2:
                # The gate is on pre * ||W_dec_i||: the same as pre > threshold / ||W_dec_i||.
                threshold = threshold / norms.cpu()
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
    registry_scale = (opts.get("hints") or {}).get("norm_scaling_factor")  # only when the files are silent
    if isinstance(scale, (int, float)):
        out["input_scale"] = float(scale)
    elif hp.get("norm_activation") == "dataset-wise" and isinstance(avg, (int, float)) and avg > 0:
        out["input_scale"] = math.sqrt(d_in) / float(avg)
    elif hp.get("norm_activation") == "dataset-wise" and isinstance(registry_scale, (int, float)):
        out["input_scale"] = float(registry_scale)
    elif hp.get("norm_activation") == "dataset-wise":
        raise CorruptWeights(f"{hp_path}: norm_activation is dataset-wise but no dataset_average_activation_norm")
    if out.get("input_scale", 1.0) != 1.0:
        out["normalization"] = f"dataset-wise: x * {out['input_scale']:.6g} before encoding"
        out["meta"]["norm_scaling_factor"] = out["input_scale"]
    return out


# ------------------------------------------------------------------------ Kissane


def kissane_cfg(path: Path) -> Path:
    return path.with_name(path.stem + "_cfg.json")


def load_kissane(path: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """Kissane et al. hook_z SAEs: ``<name>.pt`` + ``<name>_cfg.json``; b_dec subtracted first."""
    t = read_pt(path)
    cfg_path = kissane_cfg(path)
    cfg = read_json(cfg_path) if cfg_path.is_file() else {}
    out: dict[str, Any] = dict(
        W_enc=need(t, "W_enc", path),
        W_dec=need(t, "W_dec", path),
        b_enc=need(t, "b_enc", path),
        b_dec=need(t, "b_dec", path),
        architecture="relu",
        apply_b_dec_to_input=True,
        weight_files=[path],
        hook_name=cfg.get("act_name"),
        layer=cfg.get("layer"),
        cfg_d_in=cfg.get("act_size"),
        cfg_d_sae=cfg.get("dict_size"),
        release=path.parent.name or None,
        sae_ref=path.stem,
        meta={"model_name": cfg.get("model_name"), "config": cfg_path.name if cfg else None},
    )
    if out["hook_name"] is None and out["layer"] is not None:
        out["site"] = "attn_z"  # the release is all hook_z SAEs
    return out


# ------------------------------------------------------------------------ dictionary_learning

_DL_SITES = {"resid_post": "resid_post", "resid_pre": "resid_pre", "attn_out": "attn_out", "mlp_out": "mlp_out"}


def load_dictionary_learning(path: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """``ae.pt`` (``encoder.weight (d_sae, d_in)``, ``bias`` = b_dec; TopK, Gated, JumpReLU) +
    optional ``config.json`` (``trainer.layer``, ``trainer.submodule_name``)."""
    t = read_pt(path)
    cfg_path = path.parent / "config.json"
    trainer = (read_json(cfg_path).get("trainer") or {}) if cfg_path.is_file() else {}
    out: dict[str, Any] = dict(weight_files=[path], release=path.parent.parent.name or None, sae_ref=path.parent.name)
    dict_class = trainer.get("dict_class")
    thr = t.get("threshold")
    global_thr = thr is not None and thr.ndim == 0  # BatchTopK / Matryoshka: one learned threshold
    if "W_enc" in t and ("group_sizes" in t or global_thr):
        # MatryoshkaBatchTopKSAE: SAELens orientation, centres the input; at inference (its default
        # use_threshold=True) relu((x - b_dec) W_enc + b_enc) masked by the global threshold.
        out.update(
            W_enc=t["W_enc"],
            W_dec=need(t, "W_dec", path),
            b_enc=need(t, "b_enc", path),
            b_dec=need(t, "b_dec", path),
            apply_b_dec_to_input=True,
        )
        out.update(_batchtopk_activation(t, path))
    elif "W_enc" in t:  # JumpReluAutoEncoder stores SAELens orientation and does not centre the input
        out.update(
            W_enc=t["W_enc"],
            W_dec=need(t, "W_dec", path),
            b_enc=need(t, "b_enc", path),
            b_dec=need(t, "b_dec", path),
            threshold=need(t, "threshold", path),
            architecture="jumprelu",
            apply_b_dec_to_input=False,
        )
    else:
        enc = need(t, "encoder.weight", path)  # (d_sae, d_in)
        dec = need(t, "decoder.weight", path)  # (d_in, d_sae)
        b_dec = next((t[k] for k in ("bias", "b_dec", "decoder_bias") if k in t), None)
        if b_dec is None:
            raise CorruptWeights(f"{path}: missing the decoder bias ('bias', 'b_dec' or 'decoder_bias')")
        out.update(W_enc=enc.T, W_dec=dec.T, b_dec=b_dec, apply_b_dec_to_input=True)
        out["b_enc"] = t["encoder.bias"] if "encoder.bias" in t else torch.zeros(enc.shape[0])
        if "r_mag" in t:  # GatedAutoEncoder
            out.update(
                architecture="gated",
                r_mag=t["r_mag"],
                b_gate=need(t, "gate_bias", path),
                b_mag=need(t, "mag_bias", path),
            )
        elif dict_class == "BatchTopKSAE" and global_thr:  # run with its threshold by default, as JumpReLU
            out.update(_batchtopk_activation(t, path))
        elif "k" in t or trainer.get("k") is not None:  # AutoEncoderTopK (top-k at inference)
            out.update(architecture="topk", k=int(t["k"].item() if "k" in t else trainer["k"]))
        else:
            out["architecture"] = "relu"
    if trainer:
        out["layer"] = trainer.get("layer")
        sub = str(trainer.get("submodule_name") or "")
        site = next((s for prefix, s in _DL_SITES.items() if sub.startswith(prefix)), None)
        out["site"] = site or ("resid_post" if out["layer"] is not None else None)
        out["cfg_d_in"], out["cfg_d_sae"] = trainer.get("activation_dim"), trainer.get("dict_size")
        out["meta"] = {**out.get("meta", {}), "dict_class": dict_class, "lm_name": trainer.get("lm_name")}
    return out


def _batchtopk_activation(t: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """BatchTopK-trained dictionaries run as JumpReLU with their learned global threshold (a
    negative one means it was never set: then top-k)."""
    d_sae = need(t, "b_enc" if "b_enc" in t else "encoder.bias", path).shape[0]
    thr = float(need(t, "threshold", path))
    if thr >= 0:
        return {
            "architecture": "jumprelu",
            "threshold": torch.full((d_sae,), thr),
            "meta": {"saved_as": "BatchTopK, run as JumpReLU with its global threshold"},
        }
    return {"architecture": "topk", "k": int(need(t, "k", path).item())}


# ------------------------------------------------------------------------ sparsify (EleutherAI)

# A sparsify hookpoint is a PyTorch module name. Only those whose meaning is the same in every
# family are read: a decoder layer's output (the residual stream after it) and its MLP.
_SPARSIFY_HOOK = re.compile(
    r"^(?:model\.|transformer\.|gpt_neox\.|model\.language_model\.)?(?:layers|h)\.(\d+)(\.mlp)?$"
)


def load_sparsify(folder: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """``cfg.json`` + ``sae.safetensors`` per hookpoint folder (``layers.10``, ``layers.10.mlp``).

    ``encoder.weight (d_sae, d_in)``, ``encoder.bias``, ``W_dec (d_sae, d_in)``, ``b_dec``, optional
    ``W_skip (d_out, d_in)`` used as ``x @ W_skip.T``. TopK on ReLU pre-activations; ``x - b_dec``
    is encoded unless ``transcode`` (a transcoder reads a module's input and predicts its output)."""
    cfg_path, weights_path = folder / "cfg.json", folder / "sae.safetensors"
    cfg = read_json(cfg_path)
    st = Safetensors(weights_path)
    act = str(cfg.get("activation", "topk"))
    if act != "topk":
        raise LoadError(f"{cfg_path}: sparsify activation {act!r} is not one this loader reads (topk only)")
    transcode = bool(cfg.get("transcode"))
    m = _SPARSIFY_HOOK.match(folder.name)
    if not m:
        raise LoadError(
            f"{folder}: sparsify hookpoint {folder.name!r} is not one sae-atlas reads "
            "(layers.N: the residual stream after layer N; layers.N.mlp: its MLP)"
        )
    layer, mlp = int(m.group(1)), bool(m.group(2))
    if transcode and not mlp:
        raise LoadError(
            f"{folder}: a sparsify transcoder on {folder.name!r}; only MLP transcoders (layers.N.mlp) are read"
        )
    if mlp:
        hook, hook_out = (
            (f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.mlp.hook_out")
            if transcode
            else (f"blocks.{layer}.mlp.hook_out", None)
        )
    else:
        hook, hook_out = f"blocks.{layer}.hook_resid_post", None
    tgt = _target(opts)
    W_enc = st.matrix("encoder.weight", transpose=True, name="W_enc", **tgt)
    d_in, d_sae = W_enc.shape
    n = cfg.get("num_latents") or (d_in * int(cfg["expansion_factor"]) if cfg.get("expansion_factor") else None)
    out: dict[str, Any] = dict(
        W_enc=W_enc,
        W_dec=st.matrix("W_dec", **tgt),
        b_enc=st.vector("encoder.bias") if "encoder.bias" in st else torch.zeros(d_sae),
        b_dec=st.vector("b_dec") if "b_dec" in st else torch.zeros(d_in),
        architecture="topk",
        k=cfg.get("k"),
        hook_name=hook,
        kind="transcoder" if transcode else "sae",
        out_hook_name=hook_out,
        apply_b_dec_to_input=not transcode,
        weight_files=[weights_path],
        cfg_d_in=cfg.get("d_in"),
        cfg_d_sae=n or None,
        release=folder.parent.name or None,
        sae_ref=folder.name,
        meta={"normalize_decoder": cfg.get("normalize_decoder"), "hookpoint": folder.name},
    )
    if "W_skip" in st:
        out["W_skip"] = st.matrix("W_skip", transpose=True, **tgt)
    elif cfg.get("skip_connection"):
        raise CorruptWeights(f"{weights_path}: skip_connection is set but there is no W_skip")
    return out


# ------------------------------------------------------------------------ Goodfire


def load_goodfire(path: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """A single ``.pth``/``.pt`` state dict with nn.Linear layouts: ``encoder_linear.weight
    (d_sae, d_in)``, ``encoder_linear.bias``, ``decoder_linear.weight (d_in, d_sae)``,
    ``decoder_linear.bias``; ReLU, no ``b_dec`` subtraction. The layer is in the file name
    (``...-SAE-l19.pth``); the site is the residual stream after that layer. The same layout with
    ``encoder.*`` / ``decoder.*`` names (qresearch's DeepSeek-R1 SAE) reads the same way."""
    t = read_pt(path)
    prefix = "encoder_linear" if "encoder_linear.weight" in t else "encoder"
    dprefix = "decoder_linear" if prefix == "encoder_linear" else "decoder"
    enc = need(t, f"{prefix}.weight", path)  # (d_sae, d_in)
    dec = need(t, f"{dprefix}.weight", path)  # (d_in, d_sae)
    if enc.ndim != 2 or dec.ndim != 2:
        raise CorruptWeights(f"{path}: {prefix}.weight and {dprefix}.weight must be matrices")
    layer_m = re.search(r"(?:^|[-_.])l(?:ayer)?[-_]?(\d+)(?=\D*$)", path.stem)
    tgt = _target(opts)
    return dict(
        W_enc=enc.T.to(**tgt).contiguous(),
        W_dec=dec.T.to(**tgt).contiguous(),
        b_enc=t.get(f"{prefix}.bias", torch.zeros(enc.shape[0])),
        b_dec=need(t, f"{dprefix}.bias", path),
        architecture="relu",
        apply_b_dec_to_input=False,
        weight_files=[path],
        release=path.parent.name or None,
        sae_ref=path.name,
        layer=int(layer_m.group(1)) if layer_m else None,
        site="resid_post" if layer_m else None,
        meta={"state_dict_prefix": prefix},
    )
