"""QK edges: which key-side feature a query-side feature attends to, through each head.

For head h of attention layer l, query-side feature i (SAE A) and key-side
feature j (SAE B), with x = g_ln1(l) * d (LayerNorm also centres; no fold when
``fold_norms`` is off) and d the residual-stream directions:

    score(i, j, h) = x_i @ W_Q[l][h] @ W_K[l][h]^T @ x_j * qk_scale

``qk_scale`` is the model's (1/sqrt(d_head), Gemma-2's query_pre_attn_scalar,
GPT-Neo 1.0). By default A = B = the SAE whose site layer l reads. For each
(i, h) the k features j with the largest |score| are kept, streaming over j,
so the all-pairs matrix never exists. ``cap`` optionally keeps only the
strongest ``cap`` edges of feature i across all heads (then re-ranks per head).

The key vectors of SAE B (:func:`qk_keys`) are a :class:`Columns`: kept
whole when ``cache`` (one decoder's worth of memory) or recomputed block by
block from the weights on every sweep (one block of memory, whatever d_sae).
Both give bit-identical edges.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from builders.errors import BuildError
from builders.passes.base import Context, EdgeRows, Pass, Rows, Step, Target, Unit
from builders.passes.common import (
    COMPUTE_DTYPE,
    Columns,
    attention_folding,
    chunks,
    fold_direction,
    resid_directions,
    stream_topk,
)
from builders.weights import ModelWeights, SAEWeights

if TYPE_CHECKING:
    from builders.settings import BuildConfig


def folded_dirs(
    model: ModelWeights, sae: SAEWeights, layer: int, start: int, end: int, *, fold_norms: bool
) -> torch.Tensor:
    d = resid_directions(model, sae, start, end, fold_norms=fold_norms, dtype=COMPUTE_DTYPE)  # (n, d_model)
    return fold_direction(d, model.layers[layer].ln1) if fold_norms else d


def qk_keys(
    model: ModelWeights, sae: SAEWeights, layer: int, *, fold_norms: bool, block: int = 8192, cache: bool = True
) -> Columns:
    """Key vectors of every feature of ``sae`` for every head: (H, d_head, d_sae), cached or streamed."""
    W_K = model.layers[layer].qk_weights()[1].to(COMPUTE_DTYPE)  # (H, d_model, d_head), k-norm gain folded

    @torch.inference_mode()
    def make(s: int, e: int) -> torch.Tensor:
        x = folded_dirs(model, sae, layer, s, e, fold_norms=fold_norms)  # (b, d_model)
        return torch.einsum("nm,hmd->hdn", x, W_K).contiguous()  # (H, d_head, b)

    return Columns(sae.d_sae, model.n_heads, model.d_head, make, block=block, cache=cache)


def edges_from_topk(
    vals: np.ndarray, ids: np.ndarray, start: int, *, cap: int | None = None, layer: int | None = None
) -> EdgeRows:
    """(n, H, k) signed scores and ids -> flat EdgeRows, optionally capped per source across heads."""
    n, H, k = vals.shape
    src = np.repeat(np.arange(start, start + n), H * k)
    head = np.tile(np.repeat(np.arange(H), k), n)
    dst = ids.reshape(-1)
    score = vals.reshape(-1)
    rank = np.tile(np.arange(k), n * H)
    if cap is not None and cap < H * k:
        mag = np.abs(vals).reshape(n, H * k)
        # strongest `cap` per source; ties -> earlier head, then earlier rank (stable sort)
        order = np.argsort(-mag, axis=1, kind="stable")[:, :cap]  # (n, cap)
        keep = np.zeros((n, H * k), dtype=bool)
        np.put_along_axis(keep, order, True, axis=1)
        keep = keep.reshape(-1)
        src, head, dst, score, rank = src[keep], head[keep], dst[keep], score[keep], rank[keep]
        # kept entries of one (src, head) keep their relative order: re-number ranks 0..m-1
        grp = src * H + head
        first = np.r_[0, np.flatnonzero(np.diff(grp)) + 1]
        counts = np.diff(np.r_[first, len(grp)])
        rank = np.arange(len(grp)) - np.repeat(first, counts)
    return EdgeRows(src, dst, head, score, rank, layer)


@torch.inference_mode()
def qk_pass(
    model: ModelWeights,
    q_sae: SAEWeights,
    layer: int,
    start: int,
    end: int,
    keys: Columns | torch.Tensor,
    *,
    k: int = 10,
    cap: int | None = None,
    fold_norms: bool = True,
    exclude_self: bool = False,
    block_rows: int = 256,
    key_block: int = 8192,
) -> EdgeRows:
    """QK edges of query features [start, end) of ``q_sae`` against ``keys`` (from :func:`qk_keys`).

    ``keys`` is swept once for the whole range (so streamed keys are computed
    once per call); ``key_block`` only applies to a plain (H, d_head, n) tensor.
    """
    if isinstance(keys, torch.Tensor):
        keys = Columns.from_tensor(keys, block=key_block)
    W_Q = model.layers[layer].qk_weights()[0].to(COMPUTE_DTYPE)  # (H, d_model, d_head), q-norm gain folded
    lefts, excludes = [], []
    for b0, b1 in chunks(start, end, block_rows):
        x = folded_dirs(model, q_sae, layer, b0, b1, fold_norms=fold_norms)  # (b, d_model)
        lefts.append(torch.einsum("nm,hmd->nhd", x, W_Q))  # (b, H, d_head)
        excludes.append(torch.arange(b0, b1, device=x.device))
    vals, ids = stream_topk(lefts, keys, k, scale=model.qk_scale, excludes=excludes if exclude_self else None)
    return edges_from_topk(vals, ids, start, cap=cap, layer=layer)


# ---------------------------------------------------------------- in a build


def pair_indices(cfg: BuildConfig, names: list[str]) -> list[tuple[int, int]]:
    """(query SAE, key SAE) indices: ``qk_pairs`` by name, else each SAE with itself."""
    if cfg.qk_pairs is None:
        return [(i, i) for i in range(len(names))]
    index = {n: i for i, n in enumerate(names)}
    for q, k in cfg.qk_pairs:
        if q not in index or k not in index:
            missing = q if q not in index else k
            raise BuildError(f"QK pair names an SAE not in this build: {missing} (have {', '.join(names)})")
    return [(index[q], index[k]) for q, k in cfg.qk_pairs]


def targets(ctx: Context) -> list[Target]:
    """The (query SAE, key SAE) pairs whose query SAE an attention layer reads."""
    return [Target(q, k) for q, k in pair_indices(ctx.cfg, ctx.names) if ctx.reads[q] is not None]


def _run(ctx: Context, u: Unit) -> Rows:
    cfg, m, qi, ki = ctx.cfg, ctx.model, u.sae, u.other
    layer = ctx.reads[qi]
    keys = ctx.columns(
        ("qk_keys", ki, layer),
        m.n_heads * m.d_head,
        lambda block, cache: qk_keys(m, ctx.saes[ki], layer, fold_norms=cfg.fold_norms, block=block, cache=cache),
    )
    e = qk_pass(
        m,
        ctx.saes[qi],
        layer,
        u.start,
        u.end,
        keys,
        k=cfg.qk_k,
        cap=cfg.qk_cap,
        fold_norms=cfg.fold_norms,
        exclude_self=cfg.qk_exclude_self and qi == ki,
        block_rows=ctx.block_rows,
    )
    return Rows(edges=e)


PASS = Pass(
    name="qk",
    order=50,
    help="QK edges: which key-side feature a query-side feature attends to, per head",
    reads="pair",
    targets=targets,
    steps=(Step("qk", _run),),
    writes=("edges",),
    edge_kind="qk",
    check=pair_indices,
    key_names_other=True,  # one query SAE may pair with several key SAEs (qk_pairs)
    conventions={"qk score": "x_i W_Q[h] W_K[h]^T x_j * qk_scale; top-k by |score| per (i, h)"},
    folding=attention_folding,
)
