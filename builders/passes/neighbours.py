"""Decoder-cosine neighbours within an SAE, and cross-SAE flow (Laptev et al. 2025).

* ``cosine``: for each feature, the k other features of the same SAE whose
  decoder rows (in the SAE's own space, so hook_z rows stay in z) have the
  largest cosine similarity (signed, not |cos|; the feature itself excluded).
* ``flow``: for each feature of an SAE, the k features of the next SAE in the
  forward pass (by site position) whose residual-stream decoder directions
  have the largest cosine: a data-free matching of features across depth.
  hook_z rows go through W_O first. Edges point forward (src earlier).

The unit decoder columns searched (:func:`unit_decoders`) are a
:class:`Columns`: kept whole when ``cache`` or recomputed block by block on
every sweep (bit-identical rows either way).
"""

from __future__ import annotations

import numpy as np
import torch

from builders.passes.common import Columns, chunks, compute_dtype, decoder_rows, resid_directions, stream_topk
from builders.passes.qk import EdgeRows
from builders.weights import ModelWeights, SAEWeights


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def unit_decoders(
    model: ModelWeights, sae: SAEWeights, *, resid: bool, fold_norms: bool = True, block: int = 8192, cache: bool = True
) -> Columns:
    """All unit decoder directions as columns, (1, d_model_or_d_in, d_sae), cached or streamed."""
    dtype = compute_dtype(model)

    @torch.inference_mode()
    def make(s: int, e: int) -> torch.Tensor:
        if resid:
            d = resid_directions(model, sae, s, e, fold_norms=fold_norms, dtype=dtype)  # (b, d_model)
        else:
            d = decoder_rows(model, sae, s, e, dtype)  # (b, d_in)
        return _unit(d).T.contiguous()[None]  # (1, d, b)

    dim = model.d_model if resid else sae.d_in
    return Columns(sae.d_sae, 1, dim, make, block=block, cache=cache)


def _as_columns(cols: Columns | torch.Tensor, key_block: int) -> Columns:
    """A plain (d, n) tensor of unit columns is wrapped as one head."""
    return cols if isinstance(cols, Columns) else Columns.from_tensor(cols[None], block=key_block)


@torch.inference_mode()
def cosine_pass(
    model: ModelWeights,
    sae: SAEWeights,
    start: int,
    end: int,
    cols: Columns | torch.Tensor,
    *,
    k: int = 10,
    block_rows: int = 1024,
    key_block: int = 8192,
    resid: bool = False,
) -> EdgeRows:
    """Neighbours of [start, end) among ``cols`` (from :func:`unit_decoders` of the same SAE)."""
    cols = _as_columns(cols, key_block)
    dtype = compute_dtype(model)
    lefts, excludes = [], []
    for b0, b1 in chunks(start, end, block_rows):
        if resid:
            rows = resid_directions(model, sae, b0, b1, fold_norms=True, dtype=dtype)  # (b, d_model)
        else:
            rows = decoder_rows(model, sae, b0, b1, dtype)  # (b, d_in)
        lefts.append(_unit(rows)[:, None, :])  # (b, 1, d)
        excludes.append(torch.arange(b0, b1, device=rows.device))
    v, i = stream_topk(lefts, cols, k, excludes=excludes, signed=True)  # (n, 1, k)
    return _edges(v[:, 0], i[:, 0], start)


@torch.inference_mode()
def flow_pass(
    model: ModelWeights,
    src: SAEWeights,
    start: int,
    end: int,
    dst_cols: Columns | torch.Tensor,
    *,
    k: int = 5,
    fold_norms: bool = True,
    block_rows: int = 1024,
    key_block: int = 8192,
) -> EdgeRows:
    """Flow matches of src features [start, end) among ``dst_cols`` (unit_decoders(dst, resid=True))."""
    dst_cols = _as_columns(dst_cols, key_block)
    lefts = []
    for b0, b1 in chunks(start, end, block_rows):
        d = resid_directions(model, src, b0, b1, fold_norms=fold_norms, dtype=compute_dtype(model))  # (b, d_model)
        lefts.append(_unit(d)[:, None, :])  # (b, 1, d_model)
    v, i = stream_topk(lefts, dst_cols, k, signed=True)  # (n, 1, k)
    return _edges(v[:, 0], i[:, 0], start)


def _edges(vals: np.ndarray, ids: np.ndarray, start: int) -> EdgeRows:
    n, k = vals.shape
    return EdgeRows(
        src=np.repeat(np.arange(start, start + n), k), dst=ids.reshape(-1), head=None,
        score=vals.reshape(-1), rank=np.tile(np.arange(k), n),
    )  # fmt: skip
