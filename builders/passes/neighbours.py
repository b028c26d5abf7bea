"""Decoder-cosine neighbours within an SAE (``cosine`` edges).

For each feature, the k other features of the same SAE whose decoder rows
(in the SAE's own space, so hook_z rows stay in z) have the largest cosine
similarity (signed, not |cos|; the feature itself excluded).

The unit decoder columns searched (:func:`unit_decoders`, shared with
:mod:`builders.passes.flow`) are a :class:`Columns`: kept whole when
``cache`` or recomputed block by block on every sweep (bit-identical rows
either way).
"""

from __future__ import annotations

import numpy as np
import torch

from builders.passes.base import Context, EdgeRows, Pass, Rows, Step, Unit, each_sae
from builders.passes.common import COMPUTE_DTYPE, Columns, chunks, decoder_rows, resid_directions, stream_topk
from builders.weights import ModelWeights, SAEWeights


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def unit_decoders(
    model: ModelWeights, sae: SAEWeights, *, resid: bool, fold_norms: bool = True, block: int = 8192, cache: bool = True
) -> Columns:
    """All unit decoder directions as columns, (1, d_model_or_d_in, d_sae), cached or streamed."""
    dtype = COMPUTE_DTYPE

    @torch.inference_mode()
    def make(s: int, e: int) -> torch.Tensor:
        if resid:
            d = resid_directions(model, sae, s, e, fold_norms=fold_norms, dtype=dtype)  # (b, d_model)
        else:
            d = decoder_rows(model, sae, s, e, dtype)  # (b, d_in)
        return unit_rows(d).T.contiguous()[None]  # (1, d, b)

    dim = model.d_model if resid else sae.d_in
    return Columns(sae.d_sae, 1, dim, make, block=block, cache=cache)


def as_columns(cols: Columns | torch.Tensor, key_block: int) -> Columns:
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
    cols = as_columns(cols, key_block)
    dtype = COMPUTE_DTYPE
    lefts, excludes = [], []
    for b0, b1 in chunks(start, end, block_rows):
        if resid:
            rows = resid_directions(model, sae, b0, b1, fold_norms=True, dtype=dtype)  # (b, d_model)
        else:
            rows = decoder_rows(model, sae, b0, b1, dtype)  # (b, d_in)
        lefts.append(unit_rows(rows)[:, None, :])  # (b, 1, d)
        excludes.append(torch.arange(b0, b1, device=rows.device))
    v, i = stream_topk(lefts, cols, k, excludes=excludes, signed=True)  # (n, 1, k)
    return cosine_edges(v[:, 0], i[:, 0], start)


def cosine_edges(vals: np.ndarray, ids: np.ndarray, start: int) -> EdgeRows:
    n, k = vals.shape
    return EdgeRows(
        src=np.repeat(np.arange(start, start + n), k),
        dst=ids.reshape(-1),
        head=None,
        score=vals.reshape(-1),
        rank=np.tile(np.arange(k), n),
    )


def _run(ctx: Context, u: Unit) -> Rows:
    m, sae = ctx.model, ctx.saes[u.sae]
    cols = ctx.columns(
        ("unit_dec", u.sae, False),
        sae.d_in,
        lambda block, cache: unit_decoders(m, sae, resid=False, block=block, cache=cache),
    )
    return Rows(edges=cosine_pass(m, sae, u.start, u.end, cols, k=ctx.cfg.neighbour_k))


PASS = Pass(
    name="neighbours",
    order=70,
    help="decoder-cosine neighbours of each feature within its SAE",
    reads="one",
    targets=each_sae,
    steps=(Step("neighbours", _run),),
    writes=("edges",),
    edge_kind="cosine",
    conventions={"cosine": "signed decoder cosine within an SAE (SAE space), self excluded"},
)
