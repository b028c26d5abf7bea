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
