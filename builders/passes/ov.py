"""OV edges: what a source feature, moved by a head, writes into a downstream encoder.

For head h of attention layer l (the layer that reads the source SAE's site),
source feature j with x_j = g_ln1(l) * d_j (LayerNorm also centres), and
target encoder column e_k (model units):

    residual target (a later residual-stream SAE, or the attn_out SAE of layer l):
        score(j, k, h) = x_j @ W_V[l][h] @ W_O[l][h] @ (g_post * e_k)
        (g_post = Gemma-2's post-attention norm gain, folded when ``fold_norms``)
    hook_z target (the attn_z SAE of layer l): W_O is dropped and the value
    lands in head h's slice of the encoder:
        score(j, k, h) = x_j @ W_V[l][h] @ e_k[h-slice]

The k targets with the largest |score| are kept per (j, h), streaming over k.
The per-head read-outs of the targets (:func:`ov_targets`) are a
:class:`Columns`, kept whole when ``cache`` or recomputed block by block from
the target encoder on every sweep; both give bit-identical edges.
"""

from __future__ import annotations

import torch

from atlas.domain import RESIDUAL_SITES, stream_position
from builders.passes.base import Context, EdgeRows, Pass, Rows, Step, Target, Unit
from builders.passes.common import COMPUTE_DTYPE, Columns, attention_folding, chunks, encoder_columns, stream_topk
from builders.passes.qk import edges_from_topk, folded_dirs
from builders.weights import ModelWeights, SAEWeights

# Which SAE the OV edges point into (BuildConfig.ov_target): auto = the nearest later residual SAE, else the
# layer's attn_out, else its attn_z SAE; resid = only a residual one; z = only the layer's attn_z SAE.
OV_TARGETS = ("auto", "resid", "z")


def ov_targets(
    model: ModelWeights, layer: int, target: SAEWeights, *, fold_norms: bool, block: int = 8192, cache: bool = True
) -> Columns:
    """Per-head read-out of the target encoder: (H, d_head, d_sae_target), cached or streamed."""
    dtype = COMPUTE_DTYPE
    lw = model.layers[layer]
    H, dh = model.n_heads, model.d_head
    if target.site == "attn_z" and target.layer != layer:
        raise ValueError(f"a hook_z OV target must sit at layer {layer}, not {target.layer}")
    W_O = lw.W_O.to(dtype)  # (H, d_head, d_model)

    @torch.inference_mode()
    def make(s: int, e: int) -> torch.Tensor:
        E = encoder_columns(model, target, s, e, dtype)  # (b, d_in)
        if target.site == "attn_z":
            return E.view(-1, H, dh).permute(1, 2, 0).contiguous()  # (H, d_head, b)
        if fold_norms and lw.ln_attn_out is not None:
            E = E * lw.ln_attn_out.gain.to(E)  # (b, d_model)
        return torch.einsum("hdm,nm->hdn", W_O, E).contiguous()  # (H, d_head, b)

    return Columns(target.d_sae, H, dh, make, block=block, cache=cache)


@torch.inference_mode()
def ov_pass(
    model: ModelWeights,
    src_sae: SAEWeights,
    layer: int,
    start: int,
    end: int,
    targets: Columns | torch.Tensor,
    *,
    k: int = 10,
    cap: int | None = None,
    fold_norms: bool = True,
    block_rows: int = 256,
    key_block: int = 8192,
) -> EdgeRows:
    """OV edges of source features [start, end) against ``targets`` (from :func:`ov_targets`)."""
    if isinstance(targets, torch.Tensor):
        targets = Columns.from_tensor(targets, block=key_block)
    W_V = model.layers[layer].W_V.to(COMPUTE_DTYPE)  # (H, d_model, d_head)
    lefts = []
    for b0, b1 in chunks(start, end, block_rows):
        x = folded_dirs(model, src_sae, layer, b0, b1, fold_norms=fold_norms)  # (b, d_model)
        lefts.append(torch.einsum("nm,hmd->nhd", x, W_V))  # (b, H, d_head)
    vals, ids = stream_topk(lefts, targets, k)
    return edges_from_topk(vals, ids, start, cap=cap, layer=layer)


# ---------------------------------------------------------------- in a build


def target_index(saes: list[SAEWeights], layer: int, how: str) -> int | None:
    """Which SAE the OV edges of an SAE read by attention ``layer`` point into (see OV_TARGETS)."""
    after = stream_position("resid_mid", layer)  # the head output lands in resid_mid of `layer`
    resid = sorted(
        (stream_position(s.site, s.layer), i)
        for i, s in enumerate(saes)
        if s.site in RESIDUAL_SITES and stream_position(s.site, s.layer) >= after
    )
    same_layer = {s.site: i for i, s in enumerate(saes) if s.layer == layer and s.site in ("attn_out", "attn_z")}
    if how in ("auto", "resid") and resid:
        return resid[0][1]
    if how == "auto" and "attn_out" in same_layer:
        return same_layer["attn_out"]
    if how in ("auto", "z") and "attn_z" in same_layer:
        return same_layer["attn_z"]
    return None


def targets(ctx: Context) -> list[Target]:
    """(source SAE, target SAE) for every SAE read by an attention layer that has a target."""
    out = []
    for i, layer in enumerate(ctx.reads):
        t = None if layer is None else target_index(ctx.saes, layer, ctx.cfg.ov_target)
        if t is not None:
            out.append(Target(i, t))
    return out


def _run(ctx: Context, u: Unit) -> Rows:
    cfg, m, i, t = ctx.cfg, ctx.model, u.sae, u.other
    layer = ctx.reads[i]
    cols = ctx.columns(
        ("ov_targets", t, layer),
        m.n_heads * m.d_head,
        lambda block, cache: ov_targets(m, layer, ctx.saes[t], fold_norms=cfg.fold_norms, block=block, cache=cache),
    )
    e = ov_pass(
        m,
        ctx.saes[i],
        layer,
        u.start,
        u.end,
        cols,
        k=cfg.ov_k,
        cap=cfg.ov_cap,
        fold_norms=cfg.fold_norms,
        block_rows=ctx.block_rows,
    )
    return Rows(edges=e)


PASS = Pass(
    name="ov",
    order=60,
    help="OV edges: what a feature, moved by a head, writes into a later SAE's encoder",
    reads="pair",
    targets=targets,
    steps=(Step("ov", _run),),
    writes=("edges",),
    edge_kind="ov",
    conventions={"ov score": "x_j W_V[h] W_O[h] e_k (W_O dropped for a hook_z target); top-k by |score| per (j, h)"},
    folding=lambda fold: (
        attention_folding(fold)
        | {"ov residual target": "W_O[h] @ (ln_attn_out.gain * e_k) for Gemma-2" if fold else "W_O[h] @ e_k"}
    ),
)
