"""Incoming virtual weights (``virtual_in``): each feature's strongest direct-path inputs from an earlier dictionary.

The same V(f, g) as :mod:`builders.passes.virtual`, ranked the other way: for
each destination feature g, the ``virtual_in_k`` source features f with the
largest |V| (rank within g and the source dictionary). Units split the
destination's features; the source's summed decoder rows are the streamed
columns (memory bounded whatever d_sae). Edges are stored writer -> reader like
``virtual`` (``Pass.edges_reversed``); the percentile uses the pair's baseline.
"""

from __future__ import annotations

import numpy as np
import torch

from builders.passes.base import Context, EdgeRows, Pass, Rows, Step, Target, Unit
from builders.passes.common import Columns, chunks, stream_topk
from builders.passes.virtual import (
    Baseline,
    as_columns,
    baseline_of,
    check_pairs,
    dest_rows,
    pair_indices,
    read_point,
    source_rows,
    topk_edges,
)
from builders.weights import ModelWeights, SAEWeights


def source_columns(
    model: ModelWeights, src: SAEWeights, before: int, *, fold_norms: bool, block: int, cache: bool
) -> Columns:
    """The source's summed decoder rows (written before ``before``) as (1, d_model, d_sae) columns."""
    return as_columns(
        src.d_sae,
        model.d_model,
        lambda s, e: source_rows(model, src, s, e, before, fold_norms=fold_norms),
        block=block,
        cache=cache,
    )


@torch.inference_mode()
def source_norms(
    model: ModelWeights, src: SAEWeights, before: int, *, fold_norms: bool, block: int = 4096
) -> np.ndarray:
    """||summed decoder row|| of every source feature: (d_sae,)."""
    parts = [
        source_rows(model, src, s, e, before, fold_norms=fold_norms).norm(dim=-1).double().cpu().numpy()
        for s, e in chunks(0, src.d_sae, block)
    ]
    return np.concatenate(parts)


@torch.inference_mode()
def virtual_in_pass(
    model: ModelWeights,
    src: SAEWeights,
    dst: SAEWeights,
    start: int,
    end: int,
    cols: Columns,
    baseline: Baseline,
    src_norms: np.ndarray,
    *,
    k: int = 10,
    fold_norms: bool = True,
    block_rows: int = 256,
) -> EdgeRows:
    """Top-k |V(f, g)| over f for destination features g in [start, end): EdgeRows with src = g, dst = f."""
    lefts = [
        dest_rows(model, dst, b0, b1, fold_norms=fold_norms)[:, None, :]  # (b, 1, d_model)
        for b0, b1 in chunks(start, end, block_rows)
    ]
    v, i = stream_topk(lefts, cols, k)  # (n, 1, k) each
    v, i = v[:, 0], i[:, 0]
    norm = src_norms[i]  # (n, k)
    pct = baseline.percentile(np.abs(v) / np.where(norm > 0, norm, 1.0))
    return topk_edges(v, i, start, pct)


def targets(ctx: Context) -> list[Target]:
    """(destination, source): units split the destination's features."""
    return [Target(j, i) for i, j in pair_indices(ctx)]


def _run(ctx: Context, u: Unit) -> Rows:
    cfg, m, j, i = ctx.cfg, ctx.model, u.sae, u.other
    src, dst = ctx.saes[i], ctx.saes[j]
    read = read_point(dst)
    cols = ctx.columns(
        ("virtual_src", i, read, cfg.fold_norms),
        m.d_model,
        lambda block, cache: source_columns(m, src, read, fold_norms=cfg.fold_norms, block=block, cache=cache),
    )
    norms = ctx.cached(("virtual_src_norms", i, read), lambda: source_norms(m, src, read, fold_norms=cfg.fold_norms))
    e = virtual_in_pass(
        m,
        src,
        dst,
        u.start,
        u.end,
        cols,
        baseline_of(ctx, i, j),
        norms,
        k=cfg.virtual_in_k,
        fold_norms=cfg.fold_norms,
        block_rows=ctx.block_rows,
    )
    return Rows(edges=e)


PASS = Pass(
    name="virtual_in",
    order=83,
    help="incoming virtual weights: each feature's strongest direct-path inputs from every earlier dictionary",
    reads="pair",
    targets=targets,
    steps=(Step("virtual_in", _run),),
    writes=("edges",),
    edge_kind="virtual_in",
    key_names_other=True,  # one destination pairs with several sources
    check=check_pairs,
    edges_reversed=True,  # units split destinations; edges are stored source -> destination
    conventions={"virtual_in": "the virtual pass's V(f, g), top-k by |V| per (g, source dictionary)"},
)
