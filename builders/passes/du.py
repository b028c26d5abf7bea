"""Decoder -> unembedding (``du``): which tokens a feature promotes and suppresses.

For feature f with residual-stream direction ``d_f`` (``hook_z`` rows go
through ``W_O`` first, see :mod:`builders.passes.common`), the logit vector is
``(g_final * d_f) @ W_U`` where ``g_final = ln_final.gain`` (LayerNorm models
also centre ``d_f``) when ``fold_norms``, else ``d_f @ W_U`` as Neuronpedia
does. ``b_U`` and the final softcap are not applied: a direction has no bias,
and the softcap is monotonic so top-k order is unchanged.

Statistics over the whole vocabulary vector: max, min, mean, std (population),
skew, EXCESS kurtosis (0 for a normal), softmax entropy in nats and
``top1_z = (max - mean) / std``.
"""

from __future__ import annotations

import torch

from builders.passes import predicts
from builders.passes.base import Context, Pass, Rows, Step, Unit, each_sae
from builders.passes.common import (
    COMPUTE_DTYPE,
    VocabMoments,
    VocabScores,
    fold_direction,
    resid_directions,
    vocab_moments,
    vocab_scores,
)
from builders.weights import ModelWeights, SAEWeights


def du_directions(
    model: ModelWeights, sae: SAEWeights, start: int, end: int, *, fold_norms: bool = True
) -> torch.Tensor:
    """Directions whose product with W_U gives the du logits: (n, d_model)."""
    d = resid_directions(model, sae, start, end, fold_norms=fold_norms, dtype=COMPUTE_DTYPE)  # (n, d_model)
    return fold_direction(d, model.ln_final) if fold_norms else d


@torch.inference_mode()
def du_pass(
    model: ModelWeights,
    sae: SAEWeights,
    start: int,
    end: int,
    *,
    k: int = 20,
    fold_norms: bool = True,
    block_rows: int = 256,
    vocab_tile: int = 4096,
    moments: VocabMoments | None = None,
) -> VocabScores:
    """Top-k promoted / suppressed tokens and logit statistics of features [start, end)."""
    dirs = du_directions(model, sae, start, end, fold_norms=fold_norms)  # (n, d_model)
    W_U = model.W_U.to(COMPUTE_DTYPE)  # (d_model, d_vocab); no copy when already fp32
    return vocab_scores(dirs, W_U, k, block_rows=block_rows, vocab_tile=vocab_tile, moments=moments)


def du_moments(model: ModelWeights) -> VocabMoments:
    """Mean and covariance of W_U's columns: every du feature's logit mean and variance in closed form."""
    return vocab_moments(model.W_U.to(COMPUTE_DTYPE))


def _run(ctx: Context, u: Unit) -> Rows:
    return predicts.vocab_rows(ctx, "du", predicts.unit_scores(ctx, u, "du", du_pass), u.sae)


PASS = Pass(
    name="du",
    order=10,
    help="decoder -> unembedding: promoted/suppressed tokens, logit statistics, predicts_tokens",
    reads="one",
    targets=each_sae,
    steps=(Step("du", _run),),
    writes=("features", "token_scores"),
    conventions=predicts.VOCAB_CONVENTIONS,
    criteria=predicts.criteria("du"),
    folding=lambda fold: {
        "du": "d_f * ln_final.gain (LayerNorm: centred first)" if fold else "none: raw W_U (as Neuronpedia)"
    },
)
