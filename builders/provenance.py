"""What a build records about itself: every setting, the weights' sources and hashes, the conventions.

No timestamps here, so two builds of the same inputs record the same
provenance; the fingerprint over settings, model and SAEs is what a resumed
build and the shards of one build must share.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from typing import Any

import numpy as np
import torch

import atlas
from builders.passes import registry
from builders.settings import BuildConfig
from builders.weights import ModelWeights, SAEWeights

# Conventions every pass shares; each pass adds its own (Pass.conventions).
CONVENTIONS = {
    "decoder rows": "W_dec[f] / input_scale (model units); encoder columns W_enc[:, f] * input_scale",
    "reading attention layer": "resid_pre L -> L; any other site of layer L -> L + 1",
    "ties": "broken by the smaller token / feature / head index",
}

# Settings that change where and how a build runs, never what it writes: shards and resumes may differ in them.
HOW_NOT_WHAT = ("device", "cache_mb")


def versions() -> dict[str, str]:
    """Versions of the libraries that computed the numbers."""
    out = {"sae_atlas": atlas.__version__, "torch": torch.__version__, "numpy": np.__version__}
    out["python"] = platform.python_version()
    for mod in ("transformers", "safetensors", "gguf"):
        m = sys.modules.get(mod)
        if m is None:
            try:
                m = __import__(mod)
            except Exception:
                continue
        out[mod] = getattr(m, "__version__", "?")
    return out


def folding(fold: bool) -> dict[str, str]:
    """How norm gains enter each kind of direction (recorded, since fold_norms changes every number)."""
    out = {
        "hook_z residual direction": "sum_h d_f[h] @ W_O[h]" + (" * ln_attn_out.gain (Gemma-2)" if fold else ""),
        "never": "the data-dependent 1/rms scale; b_U; the final logit softcap (monotonic)",
    }
    for p in registry().values():
        if p.folding is not None:
            out.update(p.folding(fold))
    return out


def provenance(model: ModelWeights, saes: list[SAEWeights], names: list[str], cfg: BuildConfig) -> dict[str, Any]:
    """Everything that decides the numbers (no timestamps, so two builds agree)."""
    conventions = dict(CONVENTIONS)
    for p in registry().values():
        conventions.update(p.conventions)
    model_info = dict(
        source=model.source,
        source_kind=model.source_kind,
        architecture=model.architecture,
        sha256=model.sha256,
        dtype=model.dtype,
        notes=model.notes,
        qk_scale=model.qk_scale,
        embed_scale=model.embed_scale,
        norm_kind=model.norm_kind,
    )
    sae_info = [
        dict(
            name=n,
            source=s.source,
            source_format=s.source_format,
            sha256=s.sha256,
            hook_name=s.hook_name,
            site=s.site,
            layer=s.layer,
            d_in=s.d_in,
            d_sae=s.d_sae,
            architecture=s.architecture,
            normalization=s.normalization,
            input_scale=s.input_scale,
            release=s.release,
            sae_ref=s.sae_ref,
        )
        for n, s in zip(names, saes, strict=True)
    ]
    config = cfg.as_dict()
    fingerprint_src = json.dumps(
        {k: v for k, v in config.items() if k not in HOW_NOT_WHAT} | {"model": model_info, "saes": sae_info},
        sort_keys=True,
        default=str,
    )
    return {
        "build": {
            "config": config,
            "fingerprint": hashlib.sha256(fingerprint_src.encode()).hexdigest(),
            "device": str(model.device),
        },
        "model": model_info,
        "saes": sae_info,
        "folding": folding(cfg.fold_norms),
        "conventions": conventions,
        "versions": versions(),
    }
