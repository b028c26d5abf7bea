"""Closed-form vocabulary mean and variance (builders.passes.common.VocabMoments) against a float64 oracle.

The du/ee passes no longer sum the logits and their squares over the vocabulary:
mean = x . W.sum(1) / d_vocab and variance = x^T cov(W) x. These check the closed forms,
folding included, against the dense float64 computation at a stated tolerance:
relative 1e-5 (fp32 inputs, fp32 Gram tiles accumulated in float64).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from builders.passes.common import vocab_moments, vocab_scores
from builders.passes.du import du_moments, du_pass
from builders.passes.ee import ee_moments
from tests.passes_fixtures import tiny_model, tiny_sae

RTOL = 1e-5


@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_moments_match_float64(offset):
    gen = torch.Generator().manual_seed(3)
    W = torch.randn(16, 997, generator=gen) + offset  # (d_model, d_vocab): 997 is not a multiple of the tile
    got = vocab_moments(W, tile=128)
    W64 = W.double().numpy()
    np.testing.assert_allclose(got.mean.numpy(), W64.mean(1), rtol=RTOL, atol=1e-9)
    want_cov = np.cov(W64, bias=True)  # population covariance of the columns
    np.testing.assert_allclose(got.cov.numpy(), want_cov, rtol=RTOL, atol=RTOL * np.abs(want_cov).max())


@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_vocab_scores_mean_and_std_are_the_dense_ones(offset):
    gen = torch.Generator().manual_seed(4)
    X = torch.randn(9, 16, generator=gen)  # (n, d_model)
    W = torch.randn(16, 997, generator=gen) + offset  # (d_model, d_vocab)
    r = vocab_scores(X, W, 4, block_rows=4, vocab_tile=100)
    L = X.double().numpy() @ W.double().numpy()  # (n, d_vocab) float64 oracle
    np.testing.assert_allclose(r.stats["mean"], L.mean(1), rtol=RTOL, atol=RTOL * np.abs(L).max())
    np.testing.assert_allclose(r.stats["std"], L.std(1), rtol=RTOL)
    z = (L.max(1) - L.mean(1)) / L.std(1)
    np.testing.assert_allclose(r.stats["top1_z"], z, rtol=1e-4)


@pytest.mark.parametrize("norm_kind", ["layernorm", "rmsnorm"])
def test_du_folding_with_cached_moments(norm_kind):
    """The moments are of raw W_U; the folding (gain, LayerNorm centring) lives in the directions."""
    m = tiny_model(norm_kind=norm_kind)
    sae = tiny_sae(m, d_sae=30)
    g = m.ln_final.gain.double()
    d = sae.W_dec.double()
    if norm_kind == "layernorm":
        d = d - d.mean(-1, keepdim=True)
    L = ((d * g) @ m.W_U.double()).numpy()  # (30, d_vocab)
    r = du_pass(m, sae, 0, 30, k=3, block_rows=8, vocab_tile=16, moments=du_moments(m))
    np.testing.assert_allclose(r.stats["mean"], L.mean(1), rtol=RTOL, atol=RTOL * np.abs(L).max())
    np.testing.assert_allclose(r.stats["std"], L.std(1), rtol=RTOL)


def test_ee_moments_are_those_of_the_embedding_rows():
    m = tiny_model()
    got = ee_moments(m)
    E = m.W_E.double().numpy()  # (d_vocab, d_model)
    np.testing.assert_allclose(got.mean.numpy(), E.mean(0), rtol=RTOL, atol=1e-9)
    want_cov = np.cov(E.T, bias=True)
    np.testing.assert_allclose(got.cov.numpy(), want_cov, rtol=RTOL, atol=RTOL * np.abs(want_cov).max())
