"""Decoder-cosine neighbours within an SAE, and cross-SAE flow (Laptev et al. 2025).

* ``cosine``: for each feature, the k other features of the same SAE whose
  decoder rows (in the SAE's own space, so hook_z rows stay in z) have the
  largest cosine similarity (signed, not |cos|; the feature itself excluded).
* ``flow``: for each feature of an SAE, the k features of the next SAE in the
  forward pass (by site position) whose residual-stream decoder directions
  have the largest cosine: a data-free matching of features across depth.
  hook_z rows go through W_O first. Edges point forward (src earlier).
"""

from __future__ import annotations

import numpy as np
import torch

from builders.passes.common import chunks, compute_dtype, decoder_rows, resid_directions, topk_by_magnitude
from builders.passes.qk import EdgeRows
from builders.weights import ModelWeights, SAEWeights


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-30)


@torch.inference_mode()
def unit_decoders(model: ModelWeights, sae: SAEWeights, *, resid: bool, fold_norms: bool = True) -> torch.Tensor:
    """All unit decoder directions, (d_model_or_d_in, d_sae) (column per feature)."""
    dtype = compute_dtype(model)
    if resid:
        d = resid_directions(model, sae, 0, sae.d_sae, fold_norms=fold_norms, dtype=dtype)  # (d_sae, d_model)
    else:
        d = decoder_rows(model, sae, 0, sae.d_sae, dtype)  # (d_sae, d_in)
    return _unit(d).T.contiguous()


@torch.inference_mode()
def cosine_pass(
    model: ModelWeights,
    sae: SAEWeights,
    start: int,
    end: int,
    cols: torch.Tensor,
    *,
    k: int = 10,
    block_rows: int = 1024,
    key_block: int = 8192,
    resid: bool = False,
) -> EdgeRows:
    """Neighbours of [start, end) among ``cols`` (from :func:`unit_decoders` of the same SAE)."""
    parts_v, parts_i = [], []
    for b0, b1 in chunks(start, end, block_rows):
        if resid:
            rows = resid_directions(model, sae, b0, b1, fold_norms=True, dtype=cols.dtype)
        else:
            rows = decoder_rows(model, sae, b0, b1, cols.dtype)  # (b, d_in)
        left = _unit(rows)[:, None, :]  # (b, 1, d)
        excl = torch.arange(b0, b1, device=left.device)
        v, i = topk_by_magnitude(left, cols[None], k, key_block=key_block, exclude=excl, signed=True)
        parts_v.append(v[:, 0])
        parts_i.append(i[:, 0])
    return _edges(np.concatenate(parts_v), np.concatenate(parts_i), start)


@torch.inference_mode()
def flow_pass(
    model: ModelWeights,
    src: SAEWeights,
    start: int,
    end: int,
    dst_cols: torch.Tensor,
    *,
    k: int = 5,
    fold_norms: bool = True,
    block_rows: int = 1024,
    key_block: int = 8192,
) -> EdgeRows:
    """Flow matches of src features [start, end) among ``dst_cols`` (unit_decoders(dst, resid=True))."""
    parts_v, parts_i = [], []
    for b0, b1 in chunks(start, end, block_rows):
        d = resid_directions(model, src, b0, b1, fold_norms=fold_norms, dtype=dst_cols.dtype)  # (b, d_model)
        v, i = topk_by_magnitude(_unit(d)[:, None, :], dst_cols[None], k, key_block=key_block, signed=True)
        parts_v.append(v[:, 0])
        parts_i.append(i[:, 0])
    return _edges(np.concatenate(parts_v), np.concatenate(parts_i), start)


def _edges(vals: np.ndarray, ids: np.ndarray, start: int) -> EdgeRows:
    n, k = vals.shape
    return EdgeRows(
        src=np.repeat(np.arange(start, start + n), k), dst=ids.reshape(-1), head=None,
        score=vals.reshape(-1), rank=np.tile(np.arange(k), n),
    )  # fmt: skip
