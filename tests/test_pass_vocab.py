"""du / ee / predicts passes against a dense computation on tiny random weights."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as ss
import torch

from builders.passes.common import ChunkTopK, StreamingTopK, vocab_scores
from builders.passes.du import du_pass
from builders.passes.ee import ee_pass
from builders.passes.predicts import token_criterion
from tests.passes_fixtures import tiny_model, tiny_sae


def dense_stats(L: np.ndarray) -> dict[str, np.ndarray]:
    p = np.exp(L - L.max(1, keepdims=True))
    return {
        "max": L.max(1),
        "min": L.min(1),
        "mean": L.mean(1),
        "std": L.std(1),
        "skew": ss.skew(L, 1),
        "kurtosis": ss.kurtosis(L, 1),
        "entropy": ss.entropy(p, axis=1),
        "top1_z": (L.max(1) - L.mean(1)) / L.std(1),
    }


def check(r, L: np.ndarray, k: int) -> None:
    want = dense_stats(L)
    for name, v in want.items():
        np.testing.assert_allclose(r.stats[name], v, rtol=2e-4, atol=2e-5, err_msg=name)
    order = np.lexsort((np.broadcast_to(np.arange(L.shape[1]), L.shape), -L), axis=1)[:, :k]
    np.testing.assert_array_equal(r.top_ids, order)
    np.testing.assert_allclose(r.top_vals, np.take_along_axis(L, order, 1), rtol=1e-5, atol=1e-6)
    low = np.lexsort((np.broadcast_to(np.arange(L.shape[1]), L.shape), L), axis=1)[:, :k]
    np.testing.assert_array_equal(r.bot_ids, low)


def fold(x, norm):
    if norm.kind == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    return x * norm.gain


@pytest.mark.parametrize("norm_kind,gemma", [("rmsnorm", False), ("layernorm", False), ("rmsnorm", True)])
def test_du_matches_dense(norm_kind, gemma):
    m = tiny_model(norm_kind=norm_kind, gemma=gemma)
    sae = tiny_sae(m, d_sae=53)
    # unit of 5..50, blocks of 7 rows, tiles of 10 tokens: both chunkings are exercised
    r = du_pass(m, sae, 5, 50, k=6, block_rows=7, vocab_tile=10)
    L = (fold(sae.W_dec[5:50], m.ln_final) @ m.W_U).double().numpy()
    check(r, L, 6)


def test_du_hook_z_goes_through_W_O():
    m = tiny_model(gemma=True)
    sae = tiny_sae(m, site="attn_z", layer=1, d_sae=20)
    r = du_pass(m, sae, 0, 20, k=4, block_rows=6, vocab_tile=16)
    lw = m.layers[1]
    z = sae.W_dec.view(20, m.n_heads, m.d_head)
    resid = sum(z[:, h] @ lw.W_O[h] for h in range(m.n_heads)) * lw.ln_attn_out.gain
    check(r, (fold(resid, m.ln_final) @ m.W_U).double().numpy(), 4)


def test_du_without_folding_uses_raw_W_U():
    m = tiny_model()
    sae = tiny_sae(m)
    r = du_pass(m, sae, 0, sae.d_sae, k=3, fold_norms=False, block_rows=8, vocab_tile=32)
    check(r, (sae.W_dec @ m.W_U).double().numpy(), 3)


def test_planted_unembedding_direction_predicts_its_token():
    m = tiny_model(norm_kind="layernorm")
    sae = tiny_sae(m, d_sae=30)
    token = 42
    # a decoder row that, after the final norm gain, points along token 42's unembedding
    u = m.W_U[:, token] / m.ln_final.gain
    sae.W_dec[7] = 3 * (u - u.mean()) / (u - u.mean()).norm()
    r = du_pass(m, sae, 0, 30, k=5, block_rows=4, vocab_tile=8)
    assert r.top_ids[7, 0] == token
    crit = token_criterion(m, "du", n_random=256, block_rows=64, vocab_tile=32)
    assert crit.apply(r.stats["top1_z"])[7] == 1
    assert r.stats["top1_z"][7] > crit.tau


@pytest.mark.parametrize("site", ["resid_pre", "resid_post", "resid_mid"])
def test_ee_residual_matches_dense(site):
    m = tiny_model(gemma=True)
    sae = tiny_sae(m, site=site, layer=1, d_sae=25)
    sae.input_scale = 2.0
    r = ee_pass(m, sae, 3, 25, k=5, block_rows=4, vocab_tile=9)
    norm = {"resid_pre": m.layers[1].ln1, "resid_mid": m.layers[1].ln2, "resid_post": m.layers[2].ln1}[site]
    e = sae.W_enc[:, 3:25].T * 2.0 * norm.gain
    check(r, (m.embed_scale * m.W_E @ e.T).T.double().numpy(), 5)


def test_ee_hook_z_sums_heads_through_W_V():
    m = tiny_model()
    sae = tiny_sae(m, site="attn_z", layer=2, d_sae=18)
    r = ee_pass(m, sae, 0, 18, k=4, block_rows=5, vocab_tile=20)
    lw = m.layers[2]
    x = m.W_E * lw.ln1.gain  # (vocab, d_model)
    enc = sae.W_enc.view(m.n_heads, m.d_head, 18)
    S = sum(x @ lw.W_V[h] @ enc[h] for h in range(m.n_heads))  # (vocab, 18)
    check(r, S.T.double().numpy(), 4)


def test_streaming_topk_matches_sort_with_ties_by_index():
    torch.manual_seed(0)
    x = torch.randint(0, 6, (9, 103)).float()  # many ties
    st = StreamingTopK(7)
    for c0 in range(0, 103, 11):
        t = x[:, c0 : c0 + 11]
        st.update(t, c0, t.amax(1))
    v, i = st.result()
    xn = x.numpy()
    want = np.lexsort((np.broadcast_to(np.arange(103), xn.shape), -xn), axis=1)[:, :7]
    np.testing.assert_array_equal(v, np.take_along_axis(xn, want, 1))


@pytest.mark.parametrize("seed", range(12))
def test_chunk_topk_matches_a_full_sort(seed):
    """Chunk extremes + kept chunks give exactly the top-k of the whole row, whatever the tiling:
    ragged tiles, tiles narrower than a chunk, fewer chunks than k, ties, both directions."""
    rng = np.random.default_rng(seed)
    n, V = int(rng.integers(1, 30)), int(rng.integers(5, 2000))
    k = int(rng.integers(1, min(V, 40) + 1))
    tile = int(rng.choice([1, 7, 64, 100, 256, 4096]))
    chunk = int(rng.choice([4, 16, 64]))
    largest = bool(seed % 2)
    x = torch.from_numpy(rng.standard_normal((n, V)).astype(np.float32))
    distinct = seed % 3 != 0
    if not distinct:
        x = torch.round(x * 2) / 2  # many ties
    top = ChunkTopK(k, largest=largest, chunk=chunk)
    for c0 in range(0, V, tile):
        t = x[:, c0 : c0 + tile]
        ext = top.update(t, c0)
        assert torch.equal(ext, t.amax(1) if largest else t.amin(1))
    v, i = top.result()
    xn = x.numpy().astype(np.float64)
    order = np.sort(xn, axis=1)[:, ::-1] if largest else np.sort(xn, axis=1)
    np.testing.assert_array_equal(v, order[:, :k])  # the k best values, best first
    np.testing.assert_array_equal(np.take_along_axis(xn, i, 1), v)  # ids name those values
    assert all(len(set(row)) == k for row in i.tolist())  # no column twice
    if distinct:
        want = np.argsort(-xn if largest else xn, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(i, want)


def test_vocab_scores_large_offsets_are_stable():
    torch.manual_seed(1)
    X = torch.randn(4, 8)
    W = torch.randn(8, 300) + 50.0  # big common offset: moments must not cancel badly
    r = vocab_scores(X, W, 3, block_rows=3, vocab_tile=64)
    check(r, (X.double() @ W.double()).numpy(), 3)


def test_criterion_fixed_and_sql():
    m = tiny_model()
    c = token_criterion(m, "ee", z=5.0)
    assert c.sql() == "ee_top1_z >= 5.0"
    assert c.apply(np.array([4.9, 5.0, 7])).tolist() == [0, 1, 1]
    auto = token_criterion(m, "du", n_random=128, seed=3, block_rows=32, vocab_tile=40)
    again = token_criterion(m, "du", n_random=128, seed=3, block_rows=16, vocab_tile=97)
    assert auto.how == "random-quantile" and auto.tau == pytest.approx(again.tau, rel=1e-5)
