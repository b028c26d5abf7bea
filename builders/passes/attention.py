"""Attention participation (Liu & Deng): how strongly a feature's direction feeds each head.

For feature f, its residual-stream direction ``d_f`` (hook_z rows through
``W_O``) is made a unit vector ``u_f = d_f / ||d_f||`` and folded through the
reading layer's input norm, ``x_f = g_ln1(l) * u_f`` (LayerNorm also centres).
For each head h of layer l and role X in {q, k, v}:

    raw_X[f, h]   = || x_f @ W_X[l][h] ||
    score_X[f, h] = raw_X[f, h] / mean_r raw_X[r, h]          ("normalised")
    pct_X[f, h]   = 100 * #{r : score_X[r, h] <= score_X[f, h]} / n_random

where r runs over ``n_random`` seeded random unit directions **of the space the
SAE writes into** (:func:`builders.passes.common.write_space`), sent to the
residual stream, normalised and folded exactly as ``d_f`` is: for a hook_z SAE,
isotropic hook_z directions through ``W_O`` (a hook_z feature can only write
inside the image of ``W_O``); for a residual SAE or a transcoder, isotropic
residual directions. A score of 1.0 is what a random direction of that space
gets on average, and the percentile is against that head's own random baseline.
The layers read are the SAE's reading layer and the next ``reach - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from atlas.domain import ATTENTION_ROLES as ROLES
from builders.passes.base import Context, HeadRows, Pass, Rows, Step, Unit, read_by_attention
from builders.passes.common import (
    COMPUTE_DTYPE,
    attention_folding,
    chunks,
    fold_direction,
    random_unit_directions,
    random_write_directions,
    resid_directions,
    write_space,
)
from builders.weights import ModelWeights, SAEWeights


@dataclass
class AttentionBaseline:
    """Per (layer, role): mean raw score (H,) and the sorted normalised random scores (H, n_random)."""

    mean_raw: dict[tuple[int, str], torch.Tensor]
    sorted_scores: dict[tuple[int, str], torch.Tensor]
    n_random: int
    seed: int
    space: str = "random unit residual-stream directions"  # what the random directions are (write_space)


@dataclass
class AttentionScores:
    layers: list[int]
    scores: dict[str, np.ndarray]  # role -> (n, n_layers_read, H) normalised
    percentiles: dict[str, np.ndarray]  # role -> (n, n_layers_read, H) in [0, 100]


def _raw(model: ModelWeights, layer: int, u: torch.Tensor, fold_norms: bool) -> dict[str, torch.Tensor]:
    """u: (n, d_model) unit directions -> role -> (n, H) raw norms."""
    lw = model.layers[layer]
    x = fold_direction(u, lw.ln1) if fold_norms else u  # (n, d_model)
    out = {}
    W_Q, W_K = lw.qk_weights()  # q/k norms' gains folded in (Qwen3, Gemma-3); see LayerWeights.qk_weights
    for role, W in (("q", W_Q), ("k", W_K), ("v", lw.W_V)):
        out[role] = torch.einsum("nm,hmd->nhd", x, W.to(x)).norm(dim=-1)  # (n, H)
    return out


def reading_layers(model: ModelWeights, first: int | None, reach: int) -> list[int]:
    if first is None:
        return []
    return list(range(first, min(first + reach, model.n_layers)))


@torch.inference_mode()
def attention_baseline(
    model: ModelWeights,
    layers: list[int],
    *,
    n_random: int = 1024,
    seed: int = 0,
    fold_norms: bool = True,
    sae: SAEWeights | None = None,
) -> AttentionBaseline:
    """Random baseline of every head of ``layers``: in the space ``sae`` writes into, else the residual stream."""
    if sae is None:
        r = random_unit_directions(n_random, model.d_model, seed, model.device).to(COMPUTE_DTYPE)  # (R, d_model)
        space = "random unit residual-stream directions"
    else:
        d = random_write_directions(model, sae, n_random, seed, fold_norms=fold_norms)  # (R, d_model)
        r = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-30)  # unit, as attention_pass makes d_f
        space = write_space(sae)[1]
    mean_raw, sorted_scores = {}, {}
    for layer in layers:
        for role, raw in _raw(model, layer, r, fold_norms).items():
            m = raw.mean(0)  # (H,)
            mean_raw[(layer, role)] = m
            sorted_scores[(layer, role)] = (raw / m).T.contiguous().sort(dim=1).values  # (H, R)
    return AttentionBaseline(mean_raw, sorted_scores, n_random, seed, space)


@torch.inference_mode()
def attention_pass(
    model: ModelWeights,
    sae: SAEWeights,
    start: int,
    end: int,
    layers: list[int],
    baseline: AttentionBaseline,
    *,
    fold_norms: bool = True,
    block_rows: int = 1024,
) -> AttentionScores:
    """Normalised q/k/v participation and percentiles of features [start, end) for each head of ``layers``."""
    n, H, L = end - start, model.n_heads, len(layers)
    scores = {role: np.zeros((n, L, H)) for role in ROLES}
    pct = {role: np.zeros((n, L, H)) for role in ROLES}
    for b0, b1 in chunks(start, end, block_rows):
        d = resid_directions(model, sae, b0, b1, fold_norms=fold_norms, dtype=COMPUTE_DTYPE)  # (b, d_model)
        u = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-30)  # (b, d_model)
        for li, layer in enumerate(layers):
            for role, raw in _raw(model, layer, u, fold_norms).items():
                s = raw / baseline.mean_raw[(layer, role)]  # (b, H)
                srt = baseline.sorted_scores[(layer, role)]  # (H, R)
                below = torch.searchsorted(srt, s.T.contiguous(), right=True).T  # (b, H)
                scores[role][b0 - start : b1 - start, li] = s.double().cpu().numpy()
                pct[role][b0 - start : b1 - start, li] = 100.0 * below.double().cpu().numpy() / baseline.n_random
    return AttentionScores(layers, scores, pct)


def depth_profile(
    scores: np.ndarray,
    percentiles: np.ndarray | None,
    threshold: float,
    *,
    n_above: int | None = None,
    overwrite: bool = False,
) -> dict[str, float]:
    """Summary of one (layer, role) over every (feature, head): n, mean, median, p75, frac_above.

    ``n_above`` (how many percentiles are >= threshold) may replace
    ``percentiles``. ``overwrite=True`` lets the median and P75 reorder a
    float64 ``scores`` in place instead of copying it.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if n_above is None:
        n_above = int((np.asarray(percentiles).reshape(-1) >= threshold).sum())
    mean = float(s.mean())  # before the selections below may reorder s
    median = float(np.median(s, overwrite_input=overwrite))
    p75 = float(np.percentile(s, 75, overwrite_input=overwrite))
    return dict(n=int(s.size), mean=mean, median=median, p75=p75, frac_above=n_above / s.size)


# ---------------------------------------------------------------- in a build


def _layers(ctx: Context, i: int) -> list[int]:
    return reading_layers(ctx.model, ctx.reads[i], ctx.cfg.reach)


def _baseline(ctx: Context, i: int) -> AttentionBaseline:
    """The random baseline of SAE ``i``'s write space, one per space for every layer its SAEs read."""
    cfg, key = ctx.cfg, write_space(ctx.saes[i])[0]
    same = [j for j in range(len(ctx.saes)) if write_space(ctx.saes[j])[0] == key]
    layers = sorted({layer for j in same for layer in _layers(ctx, j)})
    return ctx.cached(
        ("attn_baseline", key),
        lambda: attention_baseline(
            ctx.model, layers, n_random=cfg.n_random, seed=cfg.seed, fold_norms=cfg.fold_norms, sae=ctx.saes[i]
        ),
    )


def criteria(ctx: Context) -> dict[str, dict]:
    """provenance["criteria"]["attention_percentile"]: which random baseline each SAE's percentiles use."""
    cfg = ctx.cfg
    return {
        "attention_percentile": {
            "how": "random-baseline per write space",
            "n_random": cfg.n_random,
            "seed": cfg.seed,
            "baseline_by_sae": {
                ctx.names[i]: write_space(ctx.saes[i])[1] for i in range(len(ctx.saes)) if _layers(ctx, i)
            },
        }
    }


def _run(ctx: Context, u: Unit) -> Rows:
    """Per-feature means and maxima over the reading layer's heads, and the (feature, head) rows above the cut."""
    cfg = ctx.cfg
    layers = _layers(ctx, u.sae)
    base = _baseline(ctx, u.sae)
    r = attention_pass(ctx.model, ctx.saes[u.sae], u.start, u.end, layers, base, fold_norms=cfg.fold_norms)
    rows = Rows()
    for role in ROLES:
        rows.features[f"attn_{role}_mean"] = r.scores[role][:, 0].mean(1)
        rows.features[f"attn_{role}_max"] = r.scores[role][:, 0].max(1)
    keep = cfg.percentile if cfg.store_percentile is None else cfg.store_percentile
    for role in ROLES:
        f, li, h = np.nonzero(r.percentiles[role] >= keep)  # row-major: feature, layer, head
        if len(f):
            rows.head_scores.append(
                HeadRows(
                    u.start + f,
                    np.asarray(layers)[li],
                    h,
                    role,
                    r.scores[role][f, li, h],
                    r.percentiles[role][f, li, h],
                )
            )
    return rows


def _run_profile(ctx: Context, u: Unit) -> Rows:
    """Depth profiles over every (feature, head): the exact median needs every score, so they are kept,
    as fp32 (exact: the scores are fp32), d_sae * H * reach * 12 bytes; percentiles are only counted."""
    cfg, sae = ctx.cfg, ctx.saes[u.sae]
    layers, H = _layers(ctx, u.sae), ctx.model.n_heads
    scores = {(li, role): np.empty((sae.d_sae, H), np.float32) for li in range(len(layers)) for role in ROLES}
    above = dict.fromkeys(scores, 0)
    # blocks of attention_pass's own block_rows, so every number is the one a whole-SAE call gives
    for b0, b1 in chunks(0, sae.d_sae, 1024):
        base = _baseline(ctx, u.sae)
        r = attention_pass(ctx.model, sae, b0, b1, layers, base, fold_norms=cfg.fold_norms, block_rows=1024)
        for li, role in scores:
            scores[li, role][b0:b1] = r.scores[role][:, li]
            above[li, role] += int((r.percentiles[role][:, li] >= cfg.percentile).sum())
    rows = Rows()
    for li, layer in enumerate(layers):
        for role in ROLES:
            s = scores.pop((li, role)).astype(np.float64)  # (d_sae, H)
            prof = depth_profile(s, None, cfg.percentile, n_above=above[li, role], overwrite=True)
            rows.depth_profiles.append((layer, role, prof))
    return rows


PASS = Pass(
    name="attn",
    order=30,
    help="attention participation of every head of the reading layer(s), and depth profiles",
    reads="one",
    targets=read_by_attention,
    steps=(Step("attn", _run), Step("attn_profile", _run_profile, whole=True)),
    writes=("features", "head_scores", "depth_profiles"),
    conventions={
        "attention score": "||W_X[h] (g * u_f)|| / mean over random unit r of ||W_X[h] (g * r)||, u_f unit",
        "attention percentile": "100 * fraction of the head's random-direction scores <= the feature's",
        "attention baseline": "random unit directions of the space the SAE writes into (hook_z: through W_O)",
    },
    folding=attention_folding,
    criteria=criteria,
)
