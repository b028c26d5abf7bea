"""Cross-SAE flow (Laptev et al. 2025): each feature's best matches in the next SAE along the forward pass.

For each feature of an SAE, the k features of the next SAE in the forward
pass (by stream position, :func:`atlas.domain.stream_position`) whose
residual-stream decoder directions have the largest cosine: a data-free
matching of features across depth. hook_z rows go through W_O first. Edges
point forward (src earlier). The next SAE's unit decoder directions are the
:class:`Columns` of :func:`builders.passes.neighbours.unit_decoders`.
"""

from __future__ import annotations

import torch

from atlas.domain import stream_position
from builders.passes.base import Context, EdgeRows, Pass, Rows, Step, Target, Unit
from builders.passes.common import COMPUTE_DTYPE, Columns, chunks, resid_directions, stream_topk
from builders.passes.neighbours import as_columns, cosine_edges, unit_decoders, unit_rows
from builders.weights import ModelWeights, SAEWeights


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
    dst_cols = as_columns(dst_cols, key_block)
    lefts = []
    for b0, b1 in chunks(start, end, block_rows):
        d = resid_directions(model, src, b0, b1, fold_norms=fold_norms, dtype=COMPUTE_DTYPE)  # (b, d_model)
        lefts.append(unit_rows(d)[:, None, :])  # (b, 1, d_model)
    v, i = stream_topk(lefts, dst_cols, k, signed=True)  # (n, 1, k)
    return cosine_edges(v[:, 0], i[:, 0], start)


def targets(ctx: Context) -> list[Target]:
    """(earlier, next) SAE pairs along the forward pass (SAEs only: transcoders and CLTs have virtual edges)."""
    saes = ctx.saes
    order = sorted(
        (i for i in range(len(saes)) if saes[i].kind == "sae"),
        key=lambda i: (stream_position(saes[i].site, saes[i].layer), i),
    )
    return [Target(a, b) for a, b in zip(order[:-1], order[1:], strict=True)]


def _run(ctx: Context, u: Unit) -> Rows:
    cfg, m, j = ctx.cfg, ctx.model, u.other
    cols = ctx.columns(
        ("unit_dec", j, True),
        m.d_model,
        lambda block, cache: unit_decoders(
            m, ctx.saes[j], resid=True, fold_norms=cfg.fold_norms, block=block, cache=cache
        ),
    )
    return Rows(edges=flow_pass(m, ctx.saes[u.sae], u.start, u.end, cols, k=cfg.flow_k, fold_norms=cfg.fold_norms))


PASS = Pass(
    name="flow",
    order=80,
    help="flow edges: each feature's best decoder matches in the next SAE along the forward pass",
    reads="pair",
    targets=targets,
    steps=(Step("flow", _run),),
    writes=("edges",),
    edge_kind="flow",
    conventions={"flow": "signed cosine of residual-stream decoder directions into the next SAE by site position"},
)
