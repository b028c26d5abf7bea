""" "Directly predicts tokens" (and its ``ee`` mirror, "reads tokens").

Criterion, on stored statistics only, so anyone can re-threshold it in SQL:

    predicts_tokens = (du_top1_z >= tau_du)        reads_tokens = (ee_top1_z >= tau_ee)

``tau`` is either given (``BuildConfig.predicts_z``) or, by default, set from
a null distribution: the ``quantile`` (default 0.99) of ``top1_z`` over
``n_random`` seeded isotropic random unit directions in the residual stream,
sent through exactly the same path (same folding, same W_U or W_E). A feature
"predicts tokens" when its best token stands out from the rest of the
vocabulary more than it does for 99% of random directions. Nothing here is
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
    fold_direction,
    random_unit_directions,
    vocab_moments,
    vocab_scores,
)
from builders.weights import ModelWeights


@dataclass(frozen=True)
class TokenCriterion:
    column: str  # du_top1_z or ee_top1_z
    tau: float
    how: str  # "fixed" or "random-quantile"
    quantile: float | None
    n_random: int | None
    seed: int | None

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
    moments: VocabMoments | None = None,
) -> TokenCriterion:
    """The predicts (phase 'du') or reads (phase 'ee') criterion for this model."""
    column = f"{phase}_top1_z"
    if z is not None:
        return TokenCriterion(column, float(z), "fixed", None, None, None)
    dtype = COMPUTE_DTYPE
    r = random_unit_directions(n_random, model.d_model, seed + (0 if phase == "du" else 1), model.device).to(dtype)
    if phase == "du":
        dirs = fold_direction(r, model.ln_final) if fold_norms else r  # (n_random, d_model)
        W = model.W_U.to(dtype)  # (d_model, d_vocab)
    else:
        dirs = r * model.embed_scale  # isotropic already; the gain would only rescale axes of noise
        W = model.W_E.to(dtype).T  # (d_model, d_vocab)
    scores = vocab_scores(dirs, W, 1, block_rows=block_rows, vocab_tile=vocab_tile, moments=moments)
    tau = float(np.quantile(scores.stats["top1_z"], quantile))
    return TokenCriterion(column, round(tau, 6), "random-quantile", quantile, n_random, seed)


# ---------------------------------------------------------------- in a build


def criterion(ctx: Context, phase: str) -> TokenCriterion:
    """This build's predicts (``du``) or reads (``ee``) criterion, computed once."""
    cfg = ctx.cfg
    return ctx.cached(
        ("criterion", phase),
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
            moments=vocab_moments_of(ctx, phase),
        ),
    )


def vocab_moments_of(ctx: Context, phase: str) -> VocabMoments:
    """W_U's (du) or W_E's (ee) closed-form moments, computed once per build and shared by the passes."""
    if phase == "du":
        return ctx.cached(("vocab_moments", "du"), lambda: vocab_moments(ctx.model.W_U.to(COMPUTE_DTYPE)))
    return ctx.cached(("vocab_moments", "ee"), lambda: vocab_moments(ctx.model.W_E.to(COMPUTE_DTYPE).T))


VERDICT_COLUMN = {"du": "predicts_tokens", "ee": "reads_tokens"}


def vocab_rows(ctx: Context, phase: str, r: VocabScores) -> Rows:
    """A du or ee unit's rows: its statistics, the verdict column, and the top and bottom token lists."""
    cols = {f"{phase}_{k}": v for k, v in r.stats.items()}
    cols[VERDICT_COLUMN[phase]] = criterion(ctx, phase).apply(r.stats["top1_z"])
    return Rows(features=cols, token_scores={(phase, 1): (r.top_ids, r.top_vals), (phase, -1): (r.bot_ids, r.bot_vals)})


def criteria(phase: str) -> Callable[[Context], dict[str, dict[str, Any]]]:
    """The provenance["criteria"] entry of a du or ee build (the runner adds each SAE's fraction)."""
    return lambda ctx: {VERDICT_COLUMN[phase]: criterion(ctx, phase).as_dict()}


# what the vocabulary statistics mean, recorded with every du/ee build
VOCAB_CONVENTIONS = {
    "kurtosis": "excess (normal = 0)",
    "entropy": "of softmax(scores), nats",
    "top1_z": "(max - mean) / std over the whole vocabulary",
}
