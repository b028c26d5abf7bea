"""Attention participation, QK, OV and head attribution against dense computations and planted structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from builders.passes.attention import attention_baseline, attention_pass, depth_profile
from builders.passes.attribution import attribution_pass
from builders.passes.ov import ov_pass, ov_targets
from builders.passes.qk import edges_from_topk, qk_keys, qk_pass
from builders.weights import Norm
from tests.passes_fixtures import tiny_model, tiny_sae


def fold(x, norm):
    if norm.kind == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    return x * norm.gain


def test_attention_scores_and_percentiles_match_dense():
    m = tiny_model(norm_kind="layernorm")
    sae = tiny_sae(m, site="resid_pre", layer=1, d_sae=29)
    base = attention_baseline(m, [1, 2], n_random=200, seed=5)
    r = attention_pass(m, sae, 4, 29, [1, 2], base, block_rows=6)
    gen = torch.Generator().manual_seed(5)
    rnd = torch.randn(200, m.d_model, generator=gen)
    rnd = rnd / rnd.norm(dim=1, keepdim=True)
    u = sae.W_dec[4:29] / sae.W_dec[4:29].norm(dim=1, keepdim=True)
    for li, layer in enumerate([1, 2]):
        lw = m.layers[layer]
        for role, W in (("q", lw.W_Q), ("k", lw.W_K), ("v", lw.W_V)):
            raw = torch.stack([(fold(u, lw.ln1) @ W[h]).norm(dim=1) for h in range(m.n_heads)], 1)
            rr = torch.stack([(fold(rnd, lw.ln1) @ W[h]).norm(dim=1) for h in range(m.n_heads)], 1)
            score = (raw / rr.mean(0)).numpy()
            np.testing.assert_allclose(r.scores[role][:, li], score, rtol=1e-5)
            pct = 100 * ((rr / rr.mean(0)).numpy()[None] <= score[:, None]).mean(1)  # (n, H)
            np.testing.assert_allclose(r.percentiles[role][:, li], pct, atol=1e-9)
    prof = depth_profile(r.scores["q"][:, 0], r.percentiles["q"][:, 0], 75)
    assert prof["n"] == 25 * m.n_heads and prof["median"] == np.median(r.scores["q"][:, 0])


def test_gqa_heads_sharing_kv_get_equal_k_and_v_scores():
    m = tiny_model(n_heads=4, n_kv_heads=2)
    sae = tiny_sae(m, layer=0)
    r = attention_pass(m, sae, 0, sae.d_sae, [1], attention_baseline(m, [1], n_random=64))
    np.testing.assert_allclose(r.scores["k"][:, 0, 0], r.scores["k"][:, 0, 1])
    np.testing.assert_allclose(r.scores["v"][:, 0, 2], r.scores["v"][:, 0, 3])


def test_planted_query_direction_scores_top_percentile():
    m = tiny_model()
    sae = tiny_sae(m, site="resid_pre", layer=1, d_sae=12)
    lw = m.layers[1]
    # right singular direction of head 2's W_Q (after the gain): the most query-like direction there is
    A = lw.W_Q[2] * lw.ln1.gain[:, None]  # (d_model, d_head) acting on u
    v = torch.linalg.svd(A.T, full_matrices=False).Vh[0]
    sae.W_dec[3] = v
    r = attention_pass(m, sae, 0, 12, [1], attention_baseline(m, [1], n_random=500))
    assert r.percentiles["q"][3, 0, 2] == 100.0
    assert r.scores["q"][3, 0, 2] == r.scores["q"][:, 0, 2].max() > 1.5


def dense_qk(m, sae_q, sae_k, layer):
    lw = m.layers[layer]
    xq, xk = fold(sae_q.W_dec, lw.ln1), fold(sae_k.W_dec, lw.ln1)
    return np.stack([((xq @ lw.W_Q[h]) @ (xk @ lw.W_K[h]).T * m.qk_scale).numpy() for h in range(m.n_heads)], 1)


def test_qk_topk_matches_dense_and_streams_over_keys():
    m = tiny_model(norm_kind="layernorm")
    a, b = tiny_sae(m, layer=0, d_sae=31, seed=2), tiny_sae(m, layer=0, d_sae=45, seed=3)
    keys = qk_keys(m, b, 1, fold_norms=True, block=7, cache=False)  # streamed: 7 blocks, recomputed per sweep
    e = qk_pass(m, a, 1, 3, 31, keys, k=4, block_rows=5)
    S = dense_qk(m, a, b, 1)  # (31, H, 45)
    assert len(e) == 28 * m.n_heads * 4
    for src, h, dst, score, rank in zip(e.src, e.head, e.dst, e.score, e.rank, strict=True):
        row = S[src, h]
        order = np.lexsort((np.arange(45), -np.abs(row)))
        assert dst == order[rank]
        np.testing.assert_allclose(score, row[dst], rtol=1e-4, atol=1e-6)


def test_planted_qk_pair_is_mutual_top_edge():
    m = tiny_model(d_model=16, d_head=4, n_heads=4, n_kv_heads=4)
    lw = m.layers[1]
    h = 2
    g = lw.ln1.gain
    # W_Q maps e0 -> f0, e1 -> f1; W_K maps e1 -> f0, e0 -> f1: q(a).k(b) and q(b).k(a) are big, self-terms zero
    for W in (lw.W_Q, lw.W_K):
        W[h, :2] = 0
    lw.W_Q[h, 0, 0] = lw.W_Q[h, 1, 1] = 3.0
    lw.W_K[h, 1, 0] = lw.W_K[h, 0, 1] = 3.0
    sae = tiny_sae(m, site="resid_pre", layer=1, d_sae=40)
    a, b = 11, 27
    sae.W_dec[a] = torch.zeros(16).index_fill_(0, torch.tensor([0]), 2.0) / g
    sae.W_dec[b] = torch.zeros(16).index_fill_(0, torch.tensor([1]), 2.0) / g
    e = qk_pass(m, sae, 1, 0, 40, qk_keys(m, sae, 1, fold_norms=True), k=3, key_block=16)
    top = {(s, d) for s, hh, d, r in zip(e.src, e.head, e.dst, e.rank, strict=True) if hh == h and r == 0}
    assert (a, b) in top and (b, a) in top


def test_qk_cap_keeps_strongest_per_feature_and_reranks():
    vals = np.array([[[5.0, -1.0], [-4.0, 0.5], [3.0, 2.0]]])  # (1 feature, 3 heads, k=2)
    ids = np.array([[[1, 2], [3, 4], [5, 6]]])
    e = edges_from_topk(vals, ids, 10, cap=3, layer=0)
    assert sorted(zip(e.head.tolist(), e.dst.tolist(), e.rank.tolist(), strict=True)) == [
        (0, 1, 0),
        (1, 3, 0),
        (2, 5, 0),
    ]
    assert set(e.src.tolist()) == {10}


def test_ov_residual_and_hook_z_targets_match_dense():
    m = tiny_model(gemma=True)
    src = tiny_sae(m, layer=0, d_sae=23)
    tgt = tiny_sae(m, layer=1, d_sae=33, seed=4)
    zt = tiny_sae(m, site="attn_z", layer=1, d_sae=19, seed=5)
    lw = m.layers[1]
    x = fold(src.W_dec, lw.ln1)
    for target, dense in (
        (tgt, [(x @ lw.W_V[h] @ lw.W_O[h] * lw.ln_attn_out.gain) @ tgt.W_enc for h in range(m.n_heads)]),
        (zt, [x @ lw.W_V[h] @ zt.W_enc.view(m.n_heads, m.d_head, -1)[h] for h in range(m.n_heads)]),
    ):
        S = torch.stack(dense, 1).numpy()  # (23, H, n_t)
        e = ov_pass(m, src, 1, 0, 23, ov_targets(m, 1, target, fold_norms=True, block=8, cache=False), k=3)
        for s, h, d, score, rank in zip(e.src, e.head, e.dst, e.score, e.rank, strict=True):
            order = np.lexsort((np.arange(S.shape[2]), -np.abs(S[s, h])))
            assert d == order[rank]
            np.testing.assert_allclose(score, S[s, h, d], rtol=1e-4, atol=1e-6)


def test_planted_ov_pair():
    m = tiny_model(n_heads=4, n_kv_heads=4)
    lw = m.layers[1]
    src = tiny_sae(m, layer=0, d_sae=20)
    tgt = tiny_sae(m, layer=1, d_sae=30, seed=9)
    h = 1
    v = torch.randn(16)
    src.W_dec[4] = v / lw.ln1.gain
    out = v @ lw.W_V[h] @ lw.W_O[h]  # what head 1 writes for feature 4
    tgt.W_enc[:, 17] = 5 * out / out.norm()
    e = ov_pass(m, src, 1, 0, 20, ov_targets(m, 1, tgt, fold_norms=True), k=2)
    first = [d for s, hh, d, r in zip(e.src, e.head, e.dst, e.rank, strict=True) if s == 4 and hh == h and r == 0]
    assert first == [17]


def test_attribution_planted_single_head_and_shares():
    m = tiny_model()
    sae = tiny_sae(m, site="attn_z", layer=1, d_sae=10)
    sae.W_dec[6] = 0
    sae.W_dec[6, 2 * m.d_head : 3 * m.d_head] = torch.randn(m.d_head)
    r = attribution_pass(sae, 0, 10, n_heads=m.n_heads, d_head=m.d_head)
    assert r.top_head[6] == 2 and r.top_head_share[6] == 1.0
    np.testing.assert_allclose(r.shares.sum(1), 1.0)
    dense = (sae.W_dec.view(10, m.n_heads, m.d_head) ** 2).sum(-1)
    np.testing.assert_allclose(r.shares, (dense / dense.sum(1, keepdim=True)).numpy(), rtol=1e-6)


def assert_same_edges(e1, e2) -> None:
    """The same edges: ids, heads and ranks exactly; scores to float32 rounding. Streamed blocks and a
    cached matrix are products of different shapes, which a BLAS may sum in another order (AVX-512 vs
    AVX2 kernels, thread counts): a few ulps over a d_model-term dot product."""
    for f in ("src", "dst", "head", "rank"):
        np.testing.assert_array_equal(getattr(e1, f), getattr(e2, f))
    np.testing.assert_allclose(e1.score, e2.score, rtol=1e-5, atol=1e-6)


def test_streamed_and_cached_columns_give_the_same_edges():
    """The memory rule (cache the other side iff it fits, else stream it) changes no edge."""
    m = tiny_model(gemma=True)
    a, b = tiny_sae(m, layer=0, d_sae=37, seed=2), tiny_sae(m, layer=0, d_sae=45, seed=3)
    tgt, zt = tiny_sae(m, layer=1, d_sae=29, seed=4), tiny_sae(m, site="attn_z", layer=1, d_sae=19, seed=5)
    for block in (6, 45):
        streamed, cached = (qk_keys(m, b, 1, fold_norms=True, block=block, cache=c) for c in (False, True))
        assert not streamed.cached and cached.cached and cached.nbytes == 4 * m.n_heads * m.d_head * 45
        e1, e2 = (qk_pass(m, a, 1, 2, 37, keys, k=4, cap=9, block_rows=5) for keys in (streamed, cached))
        assert_same_edges(e1, e2)
        for target in (tgt, zt):
            e1, e2 = (
                ov_pass(m, a, 1, 0, 37, ov_targets(m, 1, target, fold_norms=True, block=block, cache=c), k=3)
                for c in (False, True)
            )
            assert_same_edges(e1, e2)
    # a streamed sweep recomputes each block once per call, not once per row block or head
    calls = []
    keys = qk_keys(m, b, 1, fold_norms=True, block=10, cache=False)
    make = keys._make
    keys._make = lambda c0, c1: calls.append(c0) or make(c0, c1)
    qk_pass(m, a, 1, 0, 37, keys, k=3, block_rows=4)
    assert calls == [0, 10, 20, 30, 40]


def test_qk_and_participation_fold_the_per_head_qk_norm_gains():
    """Qwen3/Gemma-3 normalise each head's query and key: the passes use W_Q, W_K times those gains."""
    m = tiny_model(seed=5)
    gen = torch.Generator().manual_seed(9)
    for lw in m.layers:
        lw.q_norm = Norm(kind="rmsnorm", weight=0.2 + 3 * torch.rand(m.d_head, generator=gen), bias=None, eps=1e-6)
        lw.k_norm = Norm(kind="rmsnorm", weight=0.2 + 3 * torch.rand(m.d_head, generator=gen), bias=None, eps=1e-6)
    sae = tiny_sae(m, layer=0, site="resid_post", d_sae=31, seed=2)
    lw = m.layers[1]
    x = fold(sae.W_dec, lw.ln1)
    Wq, Wk = lw.W_Q * lw.q_norm.gain, lw.W_K * lw.k_norm.gain
    dense = np.stack([((x @ Wq[h]) @ (x @ Wk[h]).T * m.qk_scale).numpy() for h in range(m.n_heads)], 1)
    e = qk_pass(m, sae, 1, 0, 31, qk_keys(m, sae, 1, fold_norms=True), k=3)
    for s, d, h, v in zip(e.src, e.dst, e.head, e.score, strict=True):
        assert v == pytest.approx(dense[s, h, d], rel=1e-4, abs=1e-6)  # fp32 matmul order differs
    top = np.argsort(-np.abs(dense), axis=2, kind="stable")[:, :, :3]
    got = {(int(s), int(h), int(d)) for s, d, h in zip(e.src, e.dst, e.head, strict=True)}
    assert got == {(s, h, int(top[s, h, r])) for s in range(31) for h in range(m.n_heads) for r in range(3)}
    # participation: ||W_Q[h] (g * u)|| with the q-norm gain in W_Q (raw scores, before the baseline)
    from builders.passes.attention import _raw

    u = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    raw = _raw(m, 1, u, True)
    want = torch.einsum("nm,hmd->nhd", fold(u, lw.ln1), Wq).norm(dim=-1)
    torch.testing.assert_close(raw["q"], want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(raw["q"], torch.einsum("nm,hmd->nhd", fold(u, lw.ln1), lw.W_Q).norm(dim=-1), rtol=1e-2)
