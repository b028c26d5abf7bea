"""Loaders for the dictionaries of 2025-26: Gemma Scope 2 (SAEs, transcoders, skip transcoders,
cross-layer transcoders) and circuit-tracer's per-layer and cross-layer transcoders.

Same contract as :mod:`builders.sae_formats`: a plain dict with the tensors in their final
orientation (read a block at a time) and where the dictionary reads and writes.

* ``gemma_scope_2``: a folder (``resid_post/layer_12_width_16k_l0_big``, ``mlp_out_all/...``,
  ``attn_out/...``, ``transcoder/..._affine``, ``clt/...``) with ``params.safetensors`` (``w_enc
  (d_in, d_sae)``, ``w_dec (d_sae, d_out)``, ``b_enc``, ``b_dec``, ``threshold``, and with an affine
  skip connection ``affine_skip_connection (d_in, d_out)``, used as ``x @ A``) and
  ``config.json`` (``hf_hook_point_in``/``_out`` as transformers module names, ``type``,
  ``width``, ``l0``, ``affine_connection``, ``architecture: jump_relu``). A CLT's file for layer i
  has ``w_dec (d_sae, n_layers, d_out)``; it writes layers i.. (the earlier slots are dropped, as
  circuit-tracer does). Without ``config.json`` the hooks come from the folder's kind, as in
  SAELens. Crosscoders (several input layers) are refused.
* ``circuit_tracer``: ``layer_i.safetensors`` (``W_enc (d_sae, d_in)``, ``W_dec (d_sae, d_out)``,
  ``b_enc``, ``b_dec``, optional ``activation_function.threshold``, ``W_skip (d_out, d_in)`` used
  as ``x @ W_skip.T``, ``k``) with ``config.yaml`` beside it or at the repository root
  (``feature_input_hook``, ``feature_output_hook``, ``activation``, ``k``).
* ``circuit_tracer_clt``: ``W_enc_i.safetensors`` (``W_enc_i (d_sae, d_in)``, ``b_enc_i``,
  ``b_dec_i`` (the output bias at layer i), optional ``threshold_i``) and ``W_dec_i.safetensors``
  (``W_dec_i (d_sae, n_layers - i, d_out)``); one dictionary per layer i. Hooks from
  ``config.yaml``, else circuit-tracer's defaults (``hook_resid_mid`` -> ``hook_mlp_out``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from builders.errors import CorruptWeights, LoadError
from builders.sae_io import Safetensors, StoredTensor, block_rows, check_finite, read_json, read_yaml

# ------------------------------------------------------------------------ transformers module names

# Gemma-2/3 decoder layers: where each module's input or output sits in TransformerLens's terms.
_HF_POINTS = {
    "output": "hook_resid_post",
    "input": "hook_resid_pre",
    "pre_feedforward_layernorm.input": "hook_resid_mid",
    "pre_feedforward_layernorm.output": "mlp.hook_in",
    "post_feedforward_layernorm.output": "hook_mlp_out",
    "post_attention_layernorm.output": "hook_attn_out",
    "self_attn.o_proj.input": "attn.hook_z",
    "mlp.output": "mlp.hook_out",
}
_HF_HOOK = re.compile(r"^(?:model\.)?(?:language_model\.)?(?:model\.)?layers\.(\d+)\.(.+)$")


def hook_of_hf_point(point: str, where: Path) -> str:
    """``model.layers.5.pre_feedforward_layernorm.output`` -> ``blocks.5.mlp.hook_in`` (Gemma)."""
    m = _HF_HOOK.match(str(point).strip())
    if not m or m.group(2) not in _HF_POINTS:
        known = ", ".join(f"model.layers.L.{p}" for p in _HF_POINTS)
        raise LoadError(f"{where}: hook point {point!r} is not one sae-atlas reads ({known})")
    return f"blocks.{m.group(1)}.{_HF_POINTS[m.group(2)]}"


def _target(opts: dict[str, Any]) -> dict[str, Any]:
    return {"device": opts.get("device"), "dtype": opts.get("dtype") or torch.float32}


def _sum_decoders(stored: StoredTensor, tgt: dict[str, Any], name: str) -> torch.Tensor:
    """Sum of a CLT's per-layer decoders, ``(d_sae, d_out)``, a block of features at a time."""
    d_sae, n_out, d_out = stored.shape
    out = torch.empty(d_sae, d_out, **tgt)
    step = block_rows(n_out * d_out)
    for a in range(0, d_sae, step):
        block = stored.read(a, min(d_sae, a + step))  # (rows, n_out, d_out)
        check_finite(block, stored.path, name)
        out[a : a + block.shape[0]].copy_(block.sum(1))
    return out


# ------------------------------------------------------------------------ Gemma Scope 2

# Folder kind -> (reads, writes, kind) when config.json is missing (SAELens infers the same way).
_GS2_KINDS = {
    "resid_post": ("hook_resid_post", None, "sae"),
    "mlp_out": ("hook_mlp_out", None, "sae"),
    "attn_out": ("attn.hook_z", None, "sae"),
    "transcoder": ("mlp.hook_in", "hook_mlp_out", "transcoder"),
    "clt": ("mlp.hook_in", "hook_mlp_out", "clt"),
}
_GS2_FOLDER = re.compile(
    r"(?:^|/)(resid_post|mlp_out|attn_out|transcoder|clt|crosscoder)(?:_all)?/layer_([\d_]+?)_width_(\d+[km]?)_l0_(\w+?)(_affine)?/?$"
)


def gemma_scope_2_folder(path: Path | str) -> tuple[str, str, str, str, bool] | None:
    """``.../transcoder_all/layer_5_width_16k_l0_big_affine`` -> (kind, layers, width, l0, affine)."""
    m = _GS2_FOLDER.search(Path(path).as_posix())
    return None if m is None else (m.group(1), m.group(2), m.group(3), m.group(4), bool(m.group(5)))


def load_gemma_scope_2(folder: Path, opts: dict[str, Any]) -> dict[str, Any]:
    params = folder / "params.safetensors"
    cfg_path = folder / "config.json"
    cfg = read_json(cfg_path) if cfg_path.is_file() else {}
    named = gemma_scope_2_folder(folder) or gemma_scope_2_folder(opts.get("name") or "")
    if named and named[0] == "crosscoder" or str(cfg.get("type", "")).lower() == "crosscoder":
        raise LoadError(
            f"{folder}: a Gemma Scope 2 crosscoder reads several layers at once; sae-atlas does not read those"
        )
    if cfg.get("architecture", "jump_relu") != "jump_relu":
        raise LoadError(
            f"{cfg_path}: architecture {cfg.get('architecture')!r}; Gemma Scope 2 dictionaries are jump_relu"
        )
    st = Safetensors(params)
    enc_shape, dec_shape = st.shape("w_enc"), st.shape("w_dec")
    if len(enc_shape) != 2:
        raise LoadError(f"{params}: w_enc is {enc_shape}: a dictionary reading several layers (crosscoder) is not read")

    # Where it reads and writes: config.json first, else the folder's kind.
    layer = int(named[1]) if named and named[1].isdigit() else None
    if cfg.get("hf_hook_point_in"):
        hook = hook_of_hf_point(cfg["hf_hook_point_in"], cfg_path)
        out_point = cfg.get("hf_hook_point_out") or cfg["hf_hook_point_in"]
        hook_out = hook_of_hf_point(out_point, cfg_path)
        if layer is not None and int(hook.split(".")[1]) != layer:
            raise CorruptWeights(
                f"{cfg_path}: hf_hook_point_in is at layer {hook.split('.')[1]}, the folder says layer {layer}"
            )
    elif named:
        if layer is None:
            raise LoadError(f"{folder}: no config.json and no single layer in the folder name")
        reads, writes, _ = _GS2_KINDS[named[0]]
        hook, hook_out = f"blocks.{layer}.{reads}", f"blocks.{layer}.{writes or reads}"
    else:
        raise LoadError(
            f"{folder}: no config.json, and the folder is not named like Gemma Scope 2's (e.g. resid_post/layer_12_width_16k_l0_big)"
        )
    layer = int(hook.split(".")[1])
    clt = len(dec_shape) == 3
    kind = "clt" if clt else ("sae" if hook_out == hook else "transcoder")
    d_in, d_sae = enc_shape
    width = cfg.get("width")
    if width is not None and int(width) != d_sae:
        raise CorruptWeights(f"{cfg_path}: width {width} but w_enc is {enc_shape}")
    if cfg.get("affine_connection") and "affine_skip_connection" not in st:
        raise CorruptWeights(f"{params}: config.json says affine_connection but there is no affine_skip_connection")

    tgt = _target(opts)
    out: dict[str, Any] = dict(
        W_enc=st.matrix("w_enc", name="W_enc", **tgt),
        b_enc=st.vector("b_enc"),
        b_dec=st.vector("b_dec"),
        threshold=st.vector("threshold"),
        architecture="jumprelu",
        apply_b_dec_to_input=False,
        hook_name=hook,
        kind=kind,
        out_hook_name=None if kind == "sae" else hook_out,
        weight_files=[params],
        checked_files=[cfg_path] if cfg else [],
        cfg_d_sae=width,
        sae_ref="/".join(folder.parts[-2:]) if named else folder.name,
        meta={
            "l0": cfg.get("l0", named[3] if named else None),
            "width": named[2] if named else None,
            "model_name": cfg.get("model_name"),
            "gemma_scope_2_type": cfg.get("type") or (named[0] if named else None),
            "hf_hook_point_in": cfg.get("hf_hook_point_in"),
            "hf_hook_point_out": cfg.get("hf_hook_point_out"),
        },
    )
    if clt:
        if dec_shape[0] != d_sae or not layer < dec_shape[1]:
            raise CorruptWeights(
                f"{params}: w_dec is {dec_shape}; a CLT at layer {layer} needs ({d_sae}, n_layers > {layer}, d_out)"
            )
        stored = StoredTensor(params, "w_dec", (d_sae, dec_shape[1] - layer, dec_shape[2]), start=layer)
        out.update(
            W_dec=_sum_decoders(stored, tgt, "w_dec"), W_dec_layers=stored, out_layers=tuple(range(layer, dec_shape[1]))
        )
    else:
        out["W_dec"] = st.matrix("w_dec", name="W_dec", **tgt)
    if "affine_skip_connection" in st:
        out["W_skip"] = st.matrix("affine_skip_connection", name="W_skip", **tgt)  # used as x @ A
    return out


# ------------------------------------------------------------------------ circuit-tracer


def _ct_config(path: Path) -> tuple[dict[str, Any], Path | None]:
    """config.yaml beside the file, or in the folders above it (a repository's root)."""
    for folder in [path.parent, *path.parent.parents][:4]:
        cand = folder / "config.yaml"
        if cand.is_file():
            return read_yaml(cand), cand
        if folder.name and re.fullmatch(r"[0-9a-f]{40}", folder.name) and folder.parent.name == "snapshots":
            break  # the root of a cached hub snapshot
    return {}, None


def _ct_hooks(cfg: dict[str, Any], opts: dict[str, Any], layer: int, default: tuple[str, str] | None, where: Path):
    hints = opts.get("hints") or {}
    reads = cfg.get("feature_input_hook") or hints.get("feature_input_hook") or (default or (None, None))[0]
    writes = cfg.get("feature_output_hook") or hints.get("feature_output_hook") or (default or (None, None))[1]
    if not reads or not writes:
        raise LoadError(
            f"{where}: no config.yaml says which hooks this transcoder reads and writes "
            "(feature_input_hook, feature_output_hook); put circuit-tracer's config.yaml beside it"
        )
    return f"blocks.{layer}.{reads}", f"blocks.{layer}.{writes}"


def _activation(cfg: dict[str, Any], has_threshold: bool, k: Any, where: Path) -> tuple[str, int | None]:
    act = str(cfg.get("activation") or ("jump_relu" if has_threshold else "relu")).lower().replace("_", "")
    if act == "topk":
        if k is None:
            raise CorruptWeights(f"{where}: a topk transcoder without k")
        return "topk", int(k)
    if act == "jumprelu":
        if not has_threshold:
            raise CorruptWeights(f"{where}: a jump_relu transcoder without a threshold")
        return "jumprelu", None
    if act == "relu":
        return "relu", None
    raise LoadError(
        f"{where}: activation {cfg.get('activation')!r} is not one this loader reads (relu, jump_relu, topk)"
    )


def load_circuit_tracer(path: Path, opts: dict[str, Any]) -> dict[str, Any]:
    st = Safetensors(path)
    cfg, cfg_path = _ct_config(path)
    m = re.search(r"(\d+)(?=\D*$)", path.stem)
    layer = opts.get("layer") if opts.get("layer") is not None else (int(m.group(1)) if m else None)
    if layer is None:
        raise LoadError(f"{path}: no layer in the file name (layer_N.safetensors); pass layer=")
    hook, hook_out = _ct_hooks(cfg, opts, layer, None, path)
    k = cfg.get("k") if cfg.get("k") is not None else (int(st.get("k").item()) if "k" in st else None)
    thr_key = "activation_function.threshold"
    arch, k = _activation(cfg, thr_key in st, k, path)
    tgt = _target(opts)
    out: dict[str, Any] = dict(
        W_enc=st.matrix("W_enc", transpose=True, **tgt),
        W_dec=st.matrix("W_dec", **tgt),
        b_enc=st.vector("b_enc"),
        b_dec=st.vector("b_dec"),
        architecture=arch,
        k=k,
        apply_b_dec_to_input=False,
        hook_name=hook,
        kind="transcoder" if hook_out != hook else "sae",
        out_hook_name=hook_out if hook_out != hook else None,
        weight_files=[path],
        checked_files=[cfg_path] if cfg_path else [],
        sae_ref=path.name,
        meta={"model_name": cfg.get("model_name"), "config": str(cfg_path) if cfg_path else None},
    )
    if thr_key in st:
        out["threshold"] = st.vector(thr_key)
    if "W_skip" in st:
        out["W_skip"] = st.matrix("W_skip", transpose=True, **tgt)  # stored (d_out, d_in), used as x @ W_skip.T
    return out


def clt_files(folder: Path, layer: int) -> tuple[Path, Path]:
    return folder / f"W_enc_{layer}.safetensors", folder / f"W_dec_{layer}.safetensors"


def load_circuit_tracer_clt(path: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """``path`` is the folder; ``opts['layer']`` (or a W_enc_i / W_dec_i file name) picks the layer."""
    folder = path if path.is_dir() else path.parent
    m = None if path.is_dir() else re.fullmatch(r"W_(?:enc|dec)_(\d+)\.safetensors", path.name)
    layer = int(m.group(1)) if m else opts.get("layer")
    n_files = len(list(folder.glob("W_enc_*.safetensors")))
    if layer is None:
        raise LoadError(
            f"{folder}: a cross-layer transcoder ({n_files} layers here): name one layer, "
            f"e.g. {folder / 'W_enc_0.safetensors'}"
        )
    enc_path, dec_path = clt_files(folder, layer)
    enc, dec = Safetensors(enc_path), Safetensors(dec_path)
    dec_shape = dec.shape(f"W_dec_{layer}")
    if len(dec_shape) != 3:
        raise CorruptWeights(f"{dec_path}: W_dec_{layer} is {dec_shape}, expected (d_sae, n_layers - {layer}, d_out)")
    cfg, cfg_path = _ct_config(enc_path)
    hook, hook_out = _ct_hooks(cfg, opts, layer, ("hook_resid_mid", "hook_mlp_out"), enc_path)
    has_thr = f"threshold_{layer}" in enc
    arch, k = _activation(cfg, has_thr, cfg.get("k"), enc_path)
    tgt = _target(opts)
    stored = StoredTensor(dec_path, f"W_dec_{layer}", tuple(dec_shape))
    out: dict[str, Any] = dict(
        W_enc=enc.matrix(f"W_enc_{layer}", transpose=True, name="W_enc", **tgt),
        W_dec=_sum_decoders(stored, tgt, "W_dec"),
        W_dec_layers=stored,
        b_enc=enc.vector(f"b_enc_{layer}"),
        b_dec=enc.vector(f"b_dec_{layer}"),
        architecture=arch,
        k=k,
        apply_b_dec_to_input=False,
        hook_name=hook,
        kind="clt",
        out_hook_name=hook_out,
        out_layers=tuple(range(layer, layer + dec_shape[1])),
        weight_files=[enc_path, dec_path],
        checked_files=[cfg_path] if cfg_path else [],
        sae_ref=f"layer_{layer}",
        release=folder.name or None,
        meta={"model_name": cfg.get("model_name"), "b_dec": f"the CLT's output bias at layer {layer}"},
    )
    if has_thr:
        out["threshold"] = enc.vector(f"threshold_{layer}")
    return out
