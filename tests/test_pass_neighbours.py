"""Decoder-cosine neighbours, flow and semantic labels against dense computations and planted lists."""

from __future__ import annotations

import numpy as np
import torch

from builders.passes.flow import flow_pass
from builders.passes.neighbours import cosine_pass, unit_decoders
from builders.passes.semantic import SemanticSettings, embed_baseline, is_word, semantic_pass
from tests.passes_fixtures import tiny_model, tiny_sae


def unit(x):
    return x / x.norm(dim=1, keepdim=True)


def test_cosine_neighbours_match_dense_and_exclude_self():
    m = tiny_model()
    sae = tiny_sae(m, d_sae=41)
    sae.W_dec[9] = sae.W_dec[30] * 2  # planted duplicate direction
    e = cosine_pass(m, sae, 0, 41, unit_decoders(m, sae, resid=False, block=9, cache=False), k=5, block_rows=8)
    C = (unit(sae.W_dec) @ unit(sae.W_dec).T).numpy()
    np.fill_diagonal(C, -np.inf)
    for s, d, score, r in zip(e.src, e.dst, e.score, e.rank, strict=True):
        assert s != d
        assert d == np.lexsort((np.arange(41), -C[s]))[r]
        np.testing.assert_allclose(score, C[s, d], rtol=1e-5, atol=1e-6)
    assert e.dst[(e.src == 9) & (e.rank == 0)][0] == 30


def test_flow_matches_dense_through_W_O_for_hook_z():
    m = tiny_model()
    z = tiny_sae(m, site="attn_z", layer=1, d_sae=15)
    res = tiny_sae(m, site="resid_post", layer=1, d_sae=22, seed=7)
    e = flow_pass(m, z, 0, 15, unit_decoders(m, res, resid=True, block=5, cache=False), k=3, block_rows=4)
    lw = m.layers[1]
    zr = sum(z.W_dec.view(15, m.n_heads, m.d_head)[:, h] @ lw.W_O[h] for h in range(m.n_heads))
    C = (unit(zr) @ unit(res.W_dec).T).numpy()
    for s, d, score, r in zip(e.src, e.dst, e.score, e.rank, strict=True):
        assert d == np.lexsort((np.arange(22), -C[s]))[r]
        np.testing.assert_allclose(score, C[s, d], rtol=1e-5, atol=1e-6)


def test_streamed_and_cached_unit_decoders_give_the_same_edges():
    """dst exactly; scores to float32 rounding (blocks and a cached matrix are products of different shapes)."""
    m = tiny_model(gemma=True)
    z = tiny_sae(m, site="attn_z", layer=1, d_sae=21)
    res = tiny_sae(m, site="resid_post", layer=1, d_sae=34, seed=7)
    for block in (4, 34):
        a, b = (
            cosine_pass(m, res, 3, 34, unit_decoders(m, res, resid=False, block=block, cache=c), k=4, block_rows=6)
            for c in (False, True)
        )
        np.testing.assert_array_equal(a.dst, b.dst)
        np.testing.assert_allclose(a.score, b.score, rtol=1e-5, atol=1e-6)
        a, b = (
            flow_pass(m, z, 0, 21, unit_decoders(m, res, resid=True, block=block, cache=c), k=3, block_rows=6)
            for c in (False, True)
        )
        np.testing.assert_array_equal(a.dst, b.dst)
        np.testing.assert_allclose(a.score, b.score, rtol=1e-5, atol=1e-6)


def test_semantic_labels_planted_lists():
    m = tiny_model(d_vocab=300)
    toks = m.tokens
    real = [" garden", " river", " queen", " window", " kitchen", " bottle", " forest", " letter", " music",
            " doctor", " winter", " castle", " pencil", " island", " mirror", " engine", " summer", " candle",
            " farmer", " planet"]  # fmt: skip
    words = list(range(100, 120))
    for i, w in zip(words, real, strict=True):
        toks[i] = w
    assert all(is_word(toks[i]) for i in words)
    punct = [i for i, t in enumerate(toks) if t.strip() and not any(c.isalnum() for c in t)]
    # a coherent list: the same whole words' embeddings made nearly parallel
    sem = words[:10]
    base_dir = torch.randn(m.d_model)
    for i in sem:
        m.W_E[i] = base_dir + 0.05 * torch.randn(m.d_model)
    incoherent = words[10:20]
    frag = [i for i, t in enumerate(toks) if t.strip().isalpha() and not t[:1].isspace() and not t[:1].isupper()][:10]
    # sub-word fragments after a space (" enthus") are not words either
    for i, w in zip(frag[:3], (" enthus", " opin", " strugg"), strict=True):
        toks[i] = w
    s = SemanticSettings()
    base = embed_baseline(m, s)
    pad = lambda ids: (ids * 10)[:10]  # noqa: E731
    du_ids = np.array([sem, incoherent, pad(punct), frag])
    rows = semantic_pass(m, {"du+": du_ids}, s, base)
    kinds = [r[1] for r in rows]
    assert kinds == ["semantic", "non_semantic", "non_semantic", "non_semantic"]
    assert rows[0][0].startswith("semantic: ") and rows[0][3]["du+"][3] > s.min_embed_z
    assert rows[2][0] == "non-semantic: punctuation"
    assert rows[3][0] == "non-semantic: sub-word fragments"
    assert rows[1][0] == "non-semantic: incoherent words"
    # word starts of one or two letters (" to", " of") are short function words, not fragments
    for i, w in zip(frag[:10], (" to", " of", " in", " at", " is", " it", " on", " by", " or", "I"), strict=True):
        toks[i] = w
    assert semantic_pass(m, {"du+": du_ids[3:4]}, s, base)[0][0] == "non-semantic: short function words"
    # a shared stem makes a word list semantic, through any of the four lists (here: the ee bottom list)
    stems = list(range(130, 134))  # outside every list above
    for i, w in zip(stems, (" running", " runner", " Runners", " runs"), strict=True):
        toks[i] = w
    lists = {"du+": du_ids[1:2], "ee-": np.array([stems + pad(punct)[:6]])}
    rows = semantic_pass(m, lists, s, base)
    word_frac, n_content, stem_frac, embed_z = rows[0][3]["ee-"]  # EVIDENCE_KEYS order
    assert stem_frac == 0.75 and word_frac == 0.4  # runs: stem "runs"
    assert rows[0][1] == "non_semantic"  # 4 words in 10 is below min_word_frac
    rows = semantic_pass(m, {"du+": du_ids[1:2], "ee-": np.array([stems + incoherent[:6]])}, s, base)
    assert rows[0][1] == "semantic" and rows[0][3]["ee-"][2] == 0.3  # stem_frac: 3 of 10 content words
    # one word in two cases is one content word: no shared stem
    for i, w in zip(stems, (" garden", " Garden", " river", " River"), strict=True):
        toks[i] = w
    rows = semantic_pass(m, {"du+": np.array([stems + pad(punct)[:1]])}, s, base)
    assert rows[0][3]["du+"][1:3] == [2, 0.0]  # n_content, stem_frac
