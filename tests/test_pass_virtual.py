"""Virtual weights between dictionaries (residual SAEs, transcoders, a CLT, a hook_z SAE) against a dense numpy
computation and planted structure; the site order that decides which pairs have a path; bad pairs refused."""

from __future__ import annotations

import re
import sqlite3

import numpy as np
import pytest
import torch

from atlas import open_atlas
from atlas.maintenance import validate
from builders.build import BuildConfig, BuildError, build_atlas, merge_shards, plan_units, sae_names
from builders.passes.base import Context
from builders.passes.virtual import (
    dest_columns,
    has_path,
    pair_indices,
    virtual_baseline,
    virtual_pass,
    why_no_path,
)
from builders.passes.virtual_in import source_columns, source_norms, virtual_in_pass
from tests.passes_fixtures import tiny_clt, tiny_model, tiny_sae, tiny_transcoder

K = 4
SCORE_RTOL, SCORE_ATOL = 1e-4, 1e-6  # fp32 matmuls against a float64 oracle

# The forward-pass order, restated here independently of atlas.domain: a writer at p reaches a reader at q iff p < q.
_OFFSET = {"resid_pre": 0, "attn_z": 2, "attn_out": 2, "resid_mid": 4, "mlp_in": 5, "ln2_normalized": 5, "mlp_out": 6}
_OFFSET["resid_post"] = 8


def pos(site: str, layer: int) -> int:
    return 8 * layer + _OFFSET[site]


def mix(model):
    """A residual SAE, two transcoders, a CLT and a hook_z SAE, in one tiny model of 4 layers."""
    return [
        tiny_sae(model, site="resid_post", layer=0, d_sae=31, seed=11),
        tiny_transcoder(model, layer=1, d_sae=29, seed=12),
        tiny_transcoder(model, layer=2, d_sae=27, seed=13, skip=True),
        tiny_clt(model, layer=1, d_sae=23, seed=14),
        tiny_sae(model, site="attn_z", layer=2, d_sae=19, seed=15),
        tiny_sae(model, site="resid_mid", layer=3, d_sae=21, seed=16),
    ]


def config(**kw) -> BuildConfig:
    base = dict(
        passes="virtual,virtual_in", virtual_k=K, virtual_in_k=K, n_random=64, unit_size=10, block_rows=4,
        key_block=8, virtual_sample=12, virtual_baseline_samples=64 * 16,
    )  # fmt: skip
    base.update(kw)
    return BuildConfig(**base)


# ---------------------------------------------------------------- the dense oracle
def dense_rows(m, s, read: int) -> np.ndarray:
    """What features of ``s`` write into the residual stream before stream position ``read``: (d_sae, d_model)."""
    if s.kind == "clt":
        parts = [(pos("mlp_out", u), s.W_dec_layers[:, j].double().numpy()) for j, u in enumerate(s.write_layers)]
    elif s.kind == "transcoder":
        parts = [(pos("mlp_out", s.layer), s.W_dec.double().numpy())]  # W_skip maps the input, not a feature
    else:
        parts = [(pos(s.site, s.layer), s.W_dec.double().numpy())]
    d = sum(W for p, W in parts if p < read)
    if s.site == "attn_z":
        lw = m.layers[s.layer]
        d = np.einsum("nhd,hdm->nm", d.reshape(len(d), m.n_heads, m.d_head), lw.W_O.double().numpy())
        if lw.ln_attn_out is not None:
            d = d * lw.ln_attn_out.gain.double().numpy()
    return d


def dense_cols(m, s) -> np.ndarray:
    """Encoder columns as rows, through the norm the destination reads the residual stream by: (d_sae, d_model)."""
    e = s.W_enc.double().numpy().T
    if s.site in ("mlp_in", "ln2_normalized"):
        ln = m.layers[s.layer].ln2
        if s.site == "mlp_in":
            e = e * ln.gain.double().numpy()
        if ln.kind == "layernorm":
            e = e - e.mean(1, keepdims=True)
    return e


def dense_V(m, src, dst) -> np.ndarray:
    return dense_rows(m, src, pos(dst.site, dst.layer)) @ dense_cols(m, dst).T  # (d_src, d_dst)


def dense_topk(V: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k columns of largest |V| (ties by smaller id), and their signed values."""
    order = np.lexsort((np.broadcast_to(np.arange(V.shape[1]), V.shape), -np.abs(V)), axis=1)[:, :k]
    return order, np.take_along_axis(V, order, 1)


# ---------------------------------------------------------------- site order
@pytest.mark.parametrize(
    ("src", "dst", "path"),
    [
        (("resid_post", 0), ("mlp_in", 1), True),
        (("resid_post", 0), ("resid_pre", 1), False),  # the same point of the stream
        (("resid_pre", 1), ("mlp_in", 1), True),
        (("attn_z", 1), ("resid_mid", 1), True),
        (("attn_z", 1), ("resid_pre", 1), False),
        (("attn_out", 1), ("mlp_in", 1), True),
        (("resid_mid", 1), ("ln2_normalized", 1), True),
        (("mlp_out", 1), ("resid_post", 1), True),  # resid_post of L includes the MLP output of L
        (("mlp_out", 1), ("mlp_in", 1), False),
        (("tc", 1), ("mlp_in", 1), False),  # a transcoder does not feed itself
        (("tc", 1), ("resid_post", 1), True),
        (("tc", 1), ("resid_mid", 1), False),
        (("tc", 1), ("mlp_in", 2), True),
        (("resid_post", 2), ("mlp_in", 1), False),
        (("resid_pre", 0), ("attn_out", 2), False),  # reads a sublayer's output: no destination
        (("resid_pre", 0), ("attn_z", 2), False),
    ],
)
def test_site_order_decides_which_pairs_have_a_path(src, dst, path) -> None:
    m = tiny_model(n_layers=3)

    def make(site, layer):
        return tiny_transcoder(m, layer=layer) if site == "tc" else (
            tiny_transcoder(m, layer=layer, site=site) if site in ("mlp_in", "ln2_normalized")
            else tiny_sae(m, site=site, layer=layer)
        )  # fmt: skip

    s, d = make(*src), make(*dst)
    assert has_path(s, d) is path
    if not path:
        assert "\n" not in why_no_path(s, d, ("A", "B"))


def test_clt_sums_only_the_layers_written_before_the_reader() -> None:
    m = tiny_model(n_layers=4)
    clt = tiny_clt(m, layer=1)  # writes mlp_out of 1, 2, 3
    assert np.allclose(dense_rows(m, clt, pos("mlp_in", 2)), clt.W_dec_layers[:, 0].double().numpy())
    two = clt.W_dec_layers[:, :2].sum(1).double().numpy()
    assert np.allclose(dense_rows(m, clt, pos("resid_post", 2)), two)
    assert not has_path(clt, tiny_transcoder(m, layer=1))
    assert has_path(clt, tiny_sae(m, site="resid_pre", layer=2))


# ---------------------------------------------------------------- the pass against the oracle
@pytest.mark.parametrize("norm_kind", ["rmsnorm", "layernorm"])
def test_pure_pass_equals_the_dense_computation(norm_kind: str) -> None:
    m = tiny_model(n_layers=4, norm_kind=norm_kind)
    saes = mix(m)
    ctx = Context(m, saes, sae_names(saes), config())
    pairs = pair_indices(ctx)
    assert (0, 1) in pairs and (1, 2) in pairs and (3, 5) in pairs and (4, 5) in pairs
    assert (1, 3) not in pairs and (2, 1) not in pairs and (5, 4) not in pairs  # no path back; z is no destination
    for i, j in pairs:
        src, dst = saes[i], saes[j]
        V = dense_V(m, src, dst)
        base = virtual_baseline(m, src, dst, n_random=32, max_samples=32 * 8, n_real=5, seed=3)
        cols = dest_columns(m, dst, fold_norms=True, block=7, cache=False)
        e = virtual_pass(m, src, dst, 3, src.d_sae, cols, base, k=K, block_rows=4)
        ids, vals = dense_topk(V[3:], K)
        assert np.array_equal(e.src, np.repeat(np.arange(3, src.d_sae), K)), (i, j)
        assert np.array_equal(e.dst, ids.reshape(-1)), (i, j)
        np.testing.assert_allclose(e.score, vals.reshape(-1), rtol=SCORE_RTOL, atol=SCORE_ATOL)
        assert np.array_equal(e.rank, np.tile(np.arange(K), src.d_sae - 3))
        assert ((e.percentile >= 0) & (e.percentile <= 100)).all()
        # incoming: per destination feature, the strongest sources
        scols = source_columns(m, src, pos(dst.site, dst.layer), fold_norms=True, block=5, cache=True)
        norms = source_norms(m, src, pos(dst.site, dst.layer), fold_norms=True)
        np.testing.assert_allclose(
            norms, np.linalg.norm(dense_rows(m, src, pos(dst.site, dst.layer)), axis=1), rtol=1e-5
        )
        e_in = virtual_in_pass(m, src, dst, 0, dst.d_sae, scols, base, norms, k=K, block_rows=3)
        ids_in, vals_in = dense_topk(V.T, K)
        assert np.array_equal(e_in.src, np.repeat(np.arange(dst.d_sae), K)), (i, j)
        assert np.array_equal(e_in.dst, ids_in.reshape(-1)), (i, j)
        np.testing.assert_allclose(e_in.score, vals_in.reshape(-1), rtol=SCORE_RTOL, atol=SCORE_ATOL)


def test_baseline_is_random_unit_directions_through_the_same_columns() -> None:
    m = tiny_model(n_layers=4)
    src, dst = tiny_transcoder(m, layer=1), tiny_transcoder(m, layer=2, seed=9)
    base = virtual_baseline(m, src, dst, n_random=40, max_samples=10**6, n_real=src.d_sae, seed=5)
    gen = torch.Generator().manual_seed(5)
    r = torch.randn(40, m.d_model, generator=gen, dtype=torch.float32).double().numpy()
    r = r / np.linalg.norm(r, axis=1, keepdims=True)
    vals = np.abs(r @ dense_cols(m, dst).T).reshape(-1)
    assert base.stats["n_samples"] == vals.size == 40 * dst.d_sae
    for q, name in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p999")):
        assert base.stats[name] == pytest.approx(np.quantile(vals, q), rel=1e-4)
    assert base.stats["max"] == pytest.approx(vals.max(), rel=1e-4)
    real = np.abs(dense_V(m, src, dst)) / np.linalg.norm(dense_rows(m, src, pos("mlp_in", 2)), axis=1, keepdims=True)
    assert base.stats["n_pairs"] == real.size
    assert base.stats["frac_above_p99"] == pytest.approx((real > base.stats["p99"]).mean(), abs=1e-12)
    assert base.percentile(np.array([0.0]))[0] == 0.0 and base.percentile(np.array([1e9]))[0] == 100.0


def test_a_planted_connection_is_the_top_edge_with_a_high_percentile(tmp_path) -> None:
    m = tiny_model(n_layers=4)
    a, b = tiny_transcoder(m, layer=1, seed=21), tiny_transcoder(m, layer=2, seed=22)
    p = torch.randn(m.d_model, generator=torch.Generator().manual_seed(7))
    p = p / p.norm()
    a.W_dec[3] = p * a.W_dec[3].norm()  # a decoder row ...
    gamma = m.layers[2].ln2.gain
    b.W_enc[:, 5] = 1.5 * p / gamma * b.W_enc[:, 5].norm()  # ... aligned, through the gain, with a later encoder column
    out = build_atlas(m, [a, b], tmp_path / "planted.db", config=config(), progress=False)
    with open_atlas(out) as atlas:
        f, g = atlas.resolve_feature("L1.tc/3"), atlas.resolve_feature("L2.tc/5")
        top = atlas.edges(f, "out", kind="virtual")[0]
        assert (top.dst_feature, top.rank) == (g, 0) and top.percentile > 99.9
        top_in = [e for e in atlas.edges(g, "in", kind="virtual_in") if e.rank == 0]
        assert [e.src_feature for e in top_in] == [f] and top_in[0].percentile > 99.9
        V = dense_V(m, a, b)
        assert top.score == pytest.approx(V[3, 5], rel=SCORE_RTOL)
        assert abs(V[3, 5]) == np.abs(V).max()


# ---------------------------------------------------------------- in a build
def _edges(path, kind: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    rows = conn.execute(
        "SELECT fs.sae, fs.idx, fd.sae, fd.idx, e.score, e.rank, e.percentile FROM edges e "
        "JOIN feature_names fs ON fs.feature_id = e.src_feature JOIN feature_names fd ON fd.feature_id = e.dst_feature "
        "WHERE e.kind = ? ORDER BY e.edge_id",
        (kind,),
    ).fetchall()
    conn.close()
    return rows


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    m = tiny_model(n_layers=4)
    saes = mix(m)
    out = tmp_path_factory.mktemp("v") / "mix.db"
    build_atlas(m, saes, out, config=config(), progress=False)
    return m, saes, out


def test_stored_virtual_edges_equal_the_dense_computation(built) -> None:
    m, saes, out = built
    names = sae_names(saes)
    got = {"virtual": {}, "virtual_in": {}}
    for kind in got:
        for s, si, d, di, score, rank, pct in _edges(out, kind):
            got[kind].setdefault((s, d), []).append((si, di, score, rank))
            assert 0 <= pct <= 100
    pairs = pair_indices(Context(m, saes, names, config()))
    assert {(names[i], names[j]) for i, j in pairs} == set(got["virtual"]) == set(got["virtual_in"])
    for i, j in pairs:
        V = dense_V(m, saes[i], saes[j])
        ids, vals = dense_topk(V, K)
        rows = got["virtual"][(names[i], names[j])]
        assert [(r[0], r[1], r[3]) for r in rows] == [(f, int(ids[f, r]), r) for f in range(len(V)) for r in range(K)]
        np.testing.assert_allclose([r[2] for r in rows], vals.reshape(-1), rtol=SCORE_RTOL, atol=SCORE_ATOL)
        ids_in, vals_in = dense_topk(V.T, K)
        rows = got["virtual_in"][(names[i], names[j])]  # stored writer -> reader, ranked within the reader
        assert [(r[1], r[0], r[3]) for r in rows] == [
            (g, int(ids_in[g, r]), r) for g in range(V.shape[1]) for r in range(K)
        ]
        np.testing.assert_allclose([r[2] for r in rows], vals_in.reshape(-1), rtol=SCORE_RTOL, atol=SCORE_ATOL)
    with open_atlas(out) as atlas:
        baselines = {(b.src, b.dst): b for b in atlas.virtual_baselines()}
        assert set(baselines) == set(got["virtual"])
        assert all(b.p50 <= b.p90 <= b.p99 <= b.p999 <= b.max and b.n_pairs > 0 for b in baselines.values())
    assert validate(out).ok


def test_shards_merge_into_the_one_process_atlas(built, tmp_path) -> None:
    from tests.test_build import dump

    m, saes, out = built
    target = tmp_path / "sharded.db"
    for i in range(3):
        build_atlas(m, saes, target, config=config(), progress=False, shard=(i, 3))
    merge_shards(target)
    assert validate(target).ok
    a, b = dump(out), dump(target)
    for path, d in ((out, a), (target, b)):
        conn = sqlite3.connect(path)
        for t in ("virtual_baselines", "decoder_spread"):
            d[t] = conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
        conn.close()
    assert a["virtual_baselines"] and set(a) == set(b) and all(a[t] == b[t] for t in a), [t for t in a if a[t] != b[t]]


def test_an_explicit_pair_without_a_path_is_refused_in_one_line(tmp_path) -> None:
    m = tiny_model(n_layers=4)
    saes = mix(m)
    names = sae_names(saes)
    for pair, why in (
        (
            (names[2], names[1]),
            re.escape("no path from L2.stc (writes blocks.2.hook_mlp_out) to L1.tc (reads blocks.1.mlp.hook_in)"),
        ),
        ((names[0], names[4]), re.escape("L2.z reads blocks.2.attn.hook_z, a sublayer's output")),
        ((names[0], "nope"), "names a dictionary not in this build: nope"),
        ((names[1], names[1]), "no virtual weights into itself"),
    ):
        with pytest.raises(BuildError, match=why) as e:
            plan_units(m, saes, names, config(virtual_pairs=(pair,)))
        assert "\n" not in str(e.value)
    saes[1].meta["model_name"] = "HuggingFaceTB/SmolLM2-135M"
    saes[2].meta["model_name"] = "gemma-2-2b"
    with pytest.raises(BuildError, match="trained on different models"):
        plan_units(m, saes, names, config(virtual_pairs=((names[1], names[2]),)))
    units = plan_units(m, saes, names, config())  # every pair with a path, but not across models
    assert not [u for u in units if {u.sae, u.other} == {1, 2}]
    saes[2].meta["model_name"] = "smollm2-135m"  # the same model spelled without its owner
    assert [u for u in plan_units(m, saes, names, config()) if (u.sae, u.other) == (1, 2)]


def test_circuit_tracer_clt_files_give_its_direct_residual_path(tmp_path) -> None:
    """On circuit-tracer's own CLT files (W_enc_i: (d_sae, d_model) reading hook_resid_mid of i; W_dec_i:
    (d_sae, n_layers - i, d_model) writing hook_mlp_out of i, i+1, ...), V between a layer-i and a layer-j
    feature is its direct path: the decoders of i written into the MLP outputs of layers i..j-1 (added to
    the residual stream before resid_mid of j), dotted with W_enc_j. No norm: it reads the raw residual."""
    from builders.saes import load_sae
    from tests.builders_fixtures import write_circuit_tracer_clt

    n, d_model, d_sae = 4, 32, 16
    raw = write_circuit_tracer_clt(tmp_path / "clt", n_layers=n, d_model=d_model, d_sae=d_sae)
    m = tiny_model(n_layers=n, d_model=d_model)
    layers = [load_sae(tmp_path / "clt" / f"W_enc_{i}.safetensors") for i in range(n)]
    out = build_atlas(m, layers, tmp_path / "clt.db", config=config(virtual_k=d_sae), progress=False)
    got = {(s, si, d, di): score for s, si, d, di, score, _, _ in _edges(out, "virtual")}
    for i in range(n):
        for j in range(i + 1, n):
            W_dec = raw[i][f"W_dec_{i}"].double().numpy()  # (d_sae, n - i, d_model): output layers i..n-1
            V = W_dec[:, : j - i].sum(1) @ raw[j][f"W_enc_{j}"].double().numpy().T  # outputs i..j-1 reach j
            for f in range(d_sae):
                for g in range(d_sae):
                    assert got[(f"L{i}.clt", f, f"L{j}.clt", g)] == pytest.approx(V[f, g], rel=SCORE_RTOL, abs=1e-6)
    assert not [k for k in got if int(k[0][1]) >= int(k[2][1])]  # nothing into the same or an earlier layer
