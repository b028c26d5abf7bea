"""Head attribution for ``hook_z`` SAEs (Kissane et al. 2024).

A hook_z decoder row is the concatenation of one slice per head; head h's
share of the feature is ``||W_dec[f, h-slice]||^2 / ||W_dec[f]||^2`` (shares
sum to 1). Rows with share >= ``floor`` become head_scores with role
``attribution``; the largest gives ``features.top_head`` / ``top_head_share``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from builders.passes.base import Context, HeadRows, Pass, Rows, Step, Target, Unit
from builders.weights import SAEWeights


@dataclass
class Attribution:
    shares: np.ndarray  # (n, H), rows sum to 1 (0 for an all-zero row)
    top_head: np.ndarray  # (n,) int, ties -> smaller head index
    top_head_share: np.ndarray  # (n,)


@torch.inference_mode()
def attribution_pass(sae: SAEWeights, start: int, end: int, *, n_heads: int, d_head: int) -> Attribution:
    if sae.site != "attn_z":
        raise ValueError(f"head attribution needs a hook_z SAE, not {sae.site}")
    W = sae.W_dec[start:end].float()  # (n, H*d_head)
    sq = W.view(W.shape[0], n_heads, d_head).pow(2).sum(-1).double()  # (n, H)
    tot = sq.sum(-1, keepdim=True)  # (n, 1)
    shares = torch.where(tot > 0, sq / tot.clamp_min(1e-300), torch.zeros_like(sq)).cpu().numpy()
    top = shares.argmax(-1)  # first maximum -> smaller index on ties
    return Attribution(shares, top, shares[np.arange(len(top)), top])


def _run(ctx: Context, u: Unit) -> Rows:
    m, sae = ctx.model, ctx.saes[u.sae]
    r = attribution_pass(sae, u.start, u.end, n_heads=m.n_heads, d_head=m.d_head)
    f, h = np.nonzero(r.shares >= ctx.cfg.attribution_floor)
    heads = HeadRows(u.start + f, np.full(len(f), sae.layer), h, "attribution", r.shares[f, h])
    return Rows(features={"top_head": r.top_head, "top_head_share": r.top_head_share}, head_scores=[heads])


PASS = Pass(
    name="attribution",
    order=40,
    help="hook_z SAEs: each head's share of a feature (Kissane et al.)",
    reads="one",
    targets=lambda ctx: [Target(i) for i, s in enumerate(ctx.saes) if s.site == "attn_z"],
    steps=(Step("attribution", _run),),
    writes=("features", "head_scores"),
)
