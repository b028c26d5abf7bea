"""Embedding -> encoder (``ee``): which input tokens drive a feature directly.

Residual SAEs: scores ``embed_scale * W_E @ (g * e_f)`` where ``e_f`` is the
encoder column (model units) and ``g`` the gain of the norm that next reads the
SAE's site (:func:`builders.passes.common.site_reader_norm`) when
``fold_norms``. ``hook_z`` SAEs at layer L: the token reaches head h's slice
of the encoder through ``ln1(L)`` and ``W_V[h]``, so the scores are
``sum_h (embed_scale * W_E * g_ln1(L)) @ W_V[h] @ e_f[h]``; that is the same
product with the direction ``g_ln1(L) * sum_h W_V[h] @ e_f[h]`` (the ln1 gain is
folded only when ``fold_norms``). Same statistics as ``du``.
"""

from __future__ import annotations

import torch

from builders.passes import predicts
from builders.passes.base import Context, Pass, Rows, Step, Unit, each_sae
from builders.passes.common import (
    COMPUTE_DTYPE,
    VocabMoments,
    VocabScores,
    ee_fold,
    encoder_columns,
    vocab_moments,
    vocab_scores,
)
from builders.weights import ModelWeights, SAEWeights


def ee_directions(
    model: ModelWeights, sae: SAEWeights, start: int, end: int, *, fold_norms: bool = True
) -> torch.Tensor:
    """Directions whose product with W_E^T gives the ee scores: (n, d_model)."""
    e = encoder_columns(model, sae, start, end, COMPUTE_DTYPE)  # (n, d_in)
    return ee_fold(model, sae, e, fold_norms=fold_norms)


@torch.inference_mode()
def ee_pass(
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
    """Top-k driving tokens (both signs) and score statistics of features [start, end)."""
    dirs = ee_directions(model, sae, start, end, fold_norms=fold_norms)  # (n, d_model)
    W_Et = model.W_E.to(COMPUTE_DTYPE).T  # (d_model, d_vocab) view
    return vocab_scores(dirs, W_Et, k, block_rows=block_rows, vocab_tile=vocab_tile, moments=moments)


def ee_moments(model: ModelWeights) -> VocabMoments:
    """Mean and covariance of W_E's rows: every ee feature's score mean and variance in closed form."""
    return vocab_moments(model.W_E.to(COMPUTE_DTYPE).T)


def _run(ctx: Context, u: Unit) -> Rows:
    return predicts.vocab_rows(ctx, "ee", predicts.unit_scores(ctx, u, "ee", ee_pass), u.sae)


PASS = Pass(
    name="ee",
    order=20,
    help="embedding -> encoder: tokens that drive a feature directly, score statistics, reads_tokens",
    reads="one",
    targets=each_sae,
    steps=(Step("ee", _run),),
    writes=("features", "token_scores"),
    conventions=predicts.VOCAB_CONVENTIONS,
    criteria=predicts.criteria("ee"),
    folding=lambda fold: {
        "ee": (
            "embed_scale * W_E @ (g * e_f), g = gain of the norm that next reads the SAE's site; "
            "hook_z: g = ln1(L).gain, direction sum_h W_V[h] @ e_f[h]"
            if fold
            else "embed_scale * W_E @ e_f (no gain)"
        )
    },
)
