""" "Directly predicts tokens" (and its ``ee`` mirror, "reads tokens").

Criterion, on stored statistics only, so anyone can re-threshold it in SQL:

    predicts_tokens = (du_top1_z >= tau_du)        reads_tokens = (ee_top1_z >= tau_ee)

``tau`` is either given (``BuildConfig.predicts_z``) or, by default, set
**per SAE** from a null distribution: the ``quantile`` (default 0.99) of
``top1_z`` over ``n_random`` seeded isotropic random unit directions of the
SAE's own space, sent through exactly the same path as its features: for
``du``, random directions of the space it writes into
(:func:`builders.passes.common.write_space`: a hook_z SAE's go through
``W_O``), then the final norm's gain and W_U; for ``ee``, random directions of
its input space through :func:`builders.passes.common.ee_fold` (the gain of the
norm that reads its site, or a hook_z SAE's ``W_V`` and ``ln1`` gain), then
W_E. A feature "predicts tokens" when its best token stands out from the rest
of the vocabulary more than it does for 99% of random directions of its space. Nothing here is
tuned towards a target fraction; the fraction per layer is an outcome,
reported by the build in provenance (``criteria``) and by the ``sae_summary``
view.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from builders.passes.base import Context, Rows
from builders.passes.common import (
    COMPUTE_DTYPE,
    VocabMoments,
    VocabScores,
    ee_fold,
    fold_direction,
    random_unit_directions,
    random_write_directions,
    read_space,
    vocab_moments,
    vocab_scores,
    write_space,
)
from builders.weights import ModelWeights, SAEWeights


@dataclass(frozen=True)
class TokenCriterion:
    column: str  # du_top1_z or ee_top1_z
    tau: float
    how: str  # "fixed" or "random-quantile"
    quantile: float | None
    n_random: int | None
    seed: int | None
    baseline: str | None = None  # what the random directions were (per SAE)

    def sql(self) -> str:
        return f"{self.column} >= {self.tau!r}"

    def apply(self, top1_z: np.ndarray) -> np.ndarray:
        return (np.asarray(top1_z) >= self.tau).astype(np.int64)

    def as_dict(self) -> dict:
        return dict(
            column=self.column,
            tau=self.tau,
            how=self.how,
            quantile=self.quantile,
            n_random=self.n_random,
            seed=self.seed,
            sql=self.sql(),
        )


@torch.inference_mode()
def token_criterion(
    model: ModelWeights,
    phase: str,
    *,
    z: float | None = None,
    quantile: float = 0.99,
    n_random: int = 1024,
    seed: int = 0,
    fold_norms: bool = True,
    block_rows: int = 256,
    vocab_tile: int = 4096,
    sae: SAEWeights | None = None,
    moments: VocabMoments | None = None,
) -> TokenCriterion:
    """The predicts (phase 'du') or reads (phase 'ee') criterion of ``sae``'s features.

    Without ``sae``: isotropic residual directions (a residual SAE's du baseline; for ee without the gain of
    any norm, which only suits a model whose norms have none).
    """
    column = f"{phase}_top1_z"
    if z is not None:
        return TokenCriterion(column, float(z), "fixed", None, None, None)
    dtype = COMPUTE_DTYPE
    seed_ = seed + (0 if phase == "du" else 1)
    if phase == "du":
        if sae is None:
            r, baseline = random_unit_directions(n_random, model.d_model, seed_, model.device).to(dtype), None
        else:
            r = random_write_directions(model, sae, n_random, seed_, fold_norms=fold_norms)  # (n_random, d_model)
            baseline = write_space(sae)[1]
        dirs = fold_direction(r, model.ln_final) if fold_norms else r  # as du.du_directions folds a feature's
        W = model.W_U.to(dtype)  # (d_model, d_vocab)
    else:
        if sae is None:
            r = random_unit_directions(n_random, model.d_model, seed_, model.device).to(dtype)  # (n_random, d_model)
            dirs, baseline = r * model.embed_scale, None
        else:
            r = random_unit_directions(n_random, sae.W_enc.shape[0], seed_, model.device).to(dtype)  # (n, d_in)
            dirs, baseline = ee_fold(model, sae, r, fold_norms=fold_norms), read_space(sae)  # as ee_directions
        W = model.W_E.to(dtype).T  # (d_model, d_vocab)
    scores = vocab_scores(dirs, W, 1, block_rows=block_rows, vocab_tile=vocab_tile, moments=moments)
    tau = float(np.quantile(scores.stats["top1_z"], quantile))
    return TokenCriterion(column, round(tau, 6), "random-quantile", quantile, n_random, seed, baseline)


# ---------------------------------------------------------------- in a build


def _space_key(ctx: Context, phase: str, i: int) -> str:
    """SAEs with the same key share a criterion: du by write space; ee by the site read (the gain differs)."""
    sae = ctx.saes[i]
    return write_space(sae)[0] if phase == "du" else f"{sae.site}:{sae.layer}:{sae.W_enc.shape[0]}"


def criterion(ctx: Context, phase: str, i: int) -> TokenCriterion:
    """SAE ``i``'s predicts (``du``) or reads (``ee``) criterion, computed once per space."""
    cfg = ctx.cfg
    return ctx.cached(
        ("criterion", phase, _space_key(ctx, phase, i)),
        lambda: token_criterion(
            ctx.model,
            phase,
            z=cfg.predicts_z if phase == "du" else cfg.reads_z,
            quantile=cfg.predicts_quantile,
            n_random=cfg.n_random,
            seed=cfg.seed,
            fold_norms=cfg.fold_norms,
            block_rows=ctx.block_rows,
            vocab_tile=ctx.vocab_tile,
            sae=ctx.saes[i],
            moments=vocab_moments_of(ctx, phase),
        ),
    )


def vocab_moments_of(ctx: Context, phase: str) -> VocabMoments:
    """W_U's (du) or W_E's (ee) closed-form moments, computed once per build and shared by the passes."""
    if phase == "du":
        return ctx.cached(("vocab_moments", "du"), lambda: vocab_moments(ctx.model.W_U.to(COMPUTE_DTYPE)))
    return ctx.cached(("vocab_moments", "ee"), lambda: vocab_moments(ctx.model.W_E.to(COMPUTE_DTYPE).T))


def unit_scores(
    ctx: Context, u: Any, phase: str, run: Callable[..., VocabScores], *, moments: bool = True
) -> VocabScores:
    """The du or ee scores of unit ``u`` (its SAE, features [start, end)) with the build's settings; ``run`` is
    :func:`builders.passes.du.du_pass` or :func:`builders.passes.ee.ee_pass`. ``moments``: the statistics' mean
    and variance in closed form (token lists are the same either way)."""
    cfg = ctx.cfg
    return run(
        ctx.model,
        ctx.saes[u.sae],
        u.start,
        u.end,
        k=cfg.top_k,
        fold_norms=cfg.fold_norms,
        block_rows=ctx.block_rows,
        vocab_tile=ctx.vocab_tile,
        moments=vocab_moments_of(ctx, phase) if moments else None,
    )


VERDICT_COLUMN = {"du": "predicts_tokens", "ee": "reads_tokens"}


def vocab_rows(ctx: Context, phase: str, r: VocabScores, i: int) -> Rows:
    """SAE ``i``'s du or ee unit's rows: its statistics, the verdict column, and the top and bottom token lists."""
    cols = {f"{phase}_{k}": v for k, v in r.stats.items()}
    cols[VERDICT_COLUMN[phase]] = criterion(ctx, phase, i).apply(r.stats["top1_z"])
    return Rows(features=cols, token_scores={(phase, 1): (r.top_ids, r.top_vals), (phase, -1): (r.bot_ids, r.bot_vals)})


def criteria(phase: str) -> Callable[[Context], dict[str, dict[str, Any]]]:
    """The provenance["criteria"] entry of a du or ee build (the runner adds each SAE's fraction)."""
    return lambda ctx: {VERDICT_COLUMN[phase]: per_sae_rule(ctx, phase)}


def per_sae_rule(ctx: Context, phase: str) -> dict[str, Any]:
    """One rule for the column: a fixed tau as before, else each SAE's tau and what its baseline was."""
    crits = {name: criterion(ctx, phase, i) for i, name in enumerate(ctx.names)}
    first = next(iter(crits.values()))
    if first.how == "fixed":
        return first.as_dict()
    column = first.column
    return dict(
        column=column,
        how="random-quantile per SAE",
        quantile=first.quantile,
        n_random=first.n_random,
        seed=first.seed,
        tau_by_sae={name: c.tau for name, c in crits.items()},
        baseline_by_sae={name: c.baseline for name, c in crits.items()},
        sql=f"{column} >= tau_by_sae[the feature's SAE]",
    )


# what the vocabulary statistics mean, recorded with every du/ee build
VOCAB_CONVENTIONS = {
    "kurtosis": "excess (normal = 0)",
    "entropy": "of softmax(scores), nats",
    "top1_z": "(max - mean) / std over the whole vocabulary",
}
