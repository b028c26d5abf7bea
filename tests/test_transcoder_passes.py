"""Transcoders and CLTs through the per-dictionary passes: du and ee against dense computations, attention
participation as for an SAE with the same decoder, a CLT's decoder spread, and a mixed build that validates."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from atlas import open_atlas
from atlas.maintenance import validate
from builders.build import BuildConfig, build_atlas
from tests.passes_fixtures import tiny_clt, tiny_model, tiny_sae, tiny_transcoder

K = 6


def config(**kw) -> BuildConfig:
    base = dict(
        top_k=K, qk_k=3, ov_k=3, neighbour_k=3, flow_k=2, n_random=64, unit_size=16, block_rows=8, vocab_tile=32,
        key_block=16, virtual_k=3, virtual_in_k=3, virtual_sample=8, virtual_baseline_samples=64 * 8,
        semantic=__import__("builders.passes.semantic", fromlist=["x"]).SemanticSettings(n_baseline=32),
    )  # fmt: skip
    base.update(kw)
    return BuildConfig(**base)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every pass over a residual SAE, a transcoder, a skip transcoder and a CLT; plus the transcoder's decoder
    as a resid_post SAE of the same layer (what attention reads is the same)."""
    m = tiny_model(n_layers=4)
    tc = tiny_transcoder(m, layer=1, d_sae=21, seed=31)
    twin = tiny_sae(m, site="resid_post", layer=1, d_sae=21, seed=32)
    twin.W_dec = tc.W_dec.clone()
    saes = [tiny_sae(m, site="resid_pre", layer=0, d_sae=17, seed=30), tc, twin,
            tiny_transcoder(m, layer=2, d_sae=19, seed=33, skip=True), tiny_clt(m, layer=1, d_sae=13, seed=34)]  # fmt: skip
    out = tmp_path_factory.mktemp("tc") / "mix.db"
    build_atlas(m, saes, out, config=config(), progress=False)
    return m, saes, out


def _tokens(path, sae: str, phase: str, sign: int) -> dict[int, list[tuple[int, float]]]:
    conn = sqlite3.connect(path)
    rows = conn.execute(
        "SELECT fn.idx, ts.token_id, ts.value FROM token_scores ts JOIN feature_names fn USING (feature_id) "
        "WHERE fn.sae = ? AND ts.phase = ? AND ts.sign = ? ORDER BY fn.idx, ts.rank",
        (sae, phase, sign),
    ).fetchall()
    conn.close()
    out: dict[int, list] = {}
    for idx, tok, val in rows:
        out.setdefault(idx, []).append((tok, val))
    return out


def _check_top(scores: np.ndarray, stored: dict[int, list], k: int) -> None:
    for f, row in enumerate(scores):
        order = np.lexsort((np.arange(len(row)), -row))[:k]
        assert [t for t, _ in stored[f]] == order.tolist(), f
        np.testing.assert_allclose([v for _, v in stored[f]], row[order], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sae", ["L1.tc", "L2.stc", "L1.clt"])
def test_du_is_the_decoder_through_the_final_norm_onto_the_unembedding(built, sae: str) -> None:
    m, saes, out = built
    s = {"L1.tc": saes[1], "L2.stc": saes[3], "L1.clt": saes[4]}[sae]
    W_dec = s.W_dec_layers.sum(1) if s.kind == "clt" else s.W_dec  # a CLT: the sum of its decoders; no W_skip
    logits = (W_dec.double().numpy() * m.ln_final.gain.double().numpy()) @ m.W_U.double().numpy()
    _check_top(logits, _tokens(out, sae, "du", 1), K)
    _check_top(-logits, {f: [(t, -v) for t, v in r] for f, r in _tokens(out, sae, "du", -1).items()}, K)


@pytest.mark.parametrize("sae", ["L1.tc", "L2.stc", "L1.clt"])
def test_ee_is_the_embedding_through_the_mlp_input_norm_onto_the_encoder(built, sae: str) -> None:
    m, saes, out = built
    s = {"L1.tc": saes[1], "L2.stc": saes[3], "L1.clt": saes[4]}[sae]
    gamma = m.layers[s.layer].ln2.gain.double().numpy()  # the norm the encoder reads through (mlp_in: after the gain)
    scores = m.embed_scale * (m.W_E.double().numpy() * gamma) @ s.W_enc.double().numpy()  # (d_vocab, d_sae)
    _check_top(scores.T, _tokens(out, sae, "ee", 1), K)


def test_attention_reads_a_transcoder_as_an_sae_with_its_decoder_at_resid_post(built) -> None:
    _, _, out = built
    conn = sqlite3.connect(out)

    def heads(sae: str) -> list[tuple]:
        return conn.execute(
            "SELECT fn.idx, hs.layer, hs.head, hs.role, hs.score, hs.percentile FROM head_scores_view hs "
            "JOIN feature_names fn USING (feature_id) WHERE fn.sae = ? ORDER BY 1, 2, 3, 4",
            (sae,),
        ).fetchall()

    tc, twin = heads("L1.tc"), heads("L1.res")
    assert tc and [r[:4] for r in tc] == [r[:4] for r in twin] and {r[1] for r in tc} == {2}
    np.testing.assert_allclose([r[4:] for r in tc], [r[4:] for r in twin], rtol=1e-5)
    assert heads("L1.clt") == []  # a CLT writes a different decoder at each layer: no one direction to score
    conn.close()


def test_clt_decoder_spread_is_its_per_layer_decoder_norms(built, runner) -> None:
    from atlas.cli import cli

    _, saes, out = built
    clt = saes[4]
    want = clt.W_dec_layers.double().norm(dim=-1).numpy()  # (d_sae, 3)
    with open_atlas(out) as atlas:
        assert [(s.name, s.sae_kind, s.write_layers) for s in atlas.saes() if s.sae_kind != "sae"] == [
            ("L1.clt", "clt", (1, 2, 3)),
            ("L1.tc", "transcoder", (1,)),
            ("L2.stc", "skip_transcoder", (2,)),
        ]
        for f in range(clt.d_sae):
            got = atlas.decoder_spread(atlas.resolve_feature(f"L1.clt/{f}"))
            assert [s.out_layer for s in got] == [1, 2, 3]
            np.testing.assert_allclose([s.norm for s in got], want[f], rtol=1e-6)
        assert atlas.decoder_spread(atlas.resolve_feature("L1.tc/0")) == []
    r = runner.invoke(cli, ["--db", str(out), "show", "L1.clt/0"])
    assert r.exit_code == 0 and "decoder spread" in r.output and "cross-layer transcoder" in r.output
    assert validate(out).ok


@pytest.mark.parametrize("layer", [11, 14, 17, 20])
def test_the_example_transcoders_load_as_topk_transcoders(layer: int) -> None:
    """examples/smollm2's transcoders (SAELens cfg, architecture topk_transcoder) read the MLP input after
    its norm's gain and write the MLP output of their layer."""
    from pathlib import Path

    from builders.saes import load_sae

    folder = Path(__file__).resolve().parent.parent / "examples" / "smollm2" / "dictionaries"
    s = load_sae(folder / f"layer_{layer}_transcoder")
    assert (s.kind, s.atlas_kind, s.architecture, s.k, s.site, s.out_site) == (
        "transcoder", "transcoder", "topk", 32, "mlp_in", "mlp_out",
    )  # fmt: skip
    assert (s.hook_name, s.out_hook_name, s.d_in, s.d_out) == (
        f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.hook_mlp_out", 576, 576,
    )  # fmt: skip


def test_export_and_merge_carry_baselines_spread_and_virtual_edges(built, runner, tmp_path) -> None:
    from atlas.cli import cli

    _, _, out = built

    def rows(path) -> dict[str, list]:
        conn = sqlite3.connect(path)
        got = {
            "baselines": conn.execute(
                "SELECT s.name, d.name, b.n_samples, b.p99, b.frac_above_p99 FROM virtual_baselines b "
                "JOIN saes s ON s.sae_id = b.src_sae_id JOIN saes d ON d.sae_id = b.dst_sae_id ORDER BY 1, 2"
            ).fetchall(),
            "spread": conn.execute(
                "SELECT fn.name, s.out_layer, s.norm FROM decoder_spread s JOIN feature_names fn USING (feature_id) "
                "ORDER BY 1, 2"
            ).fetchall(),
            "virtual": conn.execute(
                "SELECT kind, src, dst, score, rank, percentile FROM virtual_edges_view ORDER BY 1, 2, 3"
            ).fetchall(),
        }
        conn.close()
        return got

    tcs, clt, both = tmp_path / "tcs.db", tmp_path / "clt.db", tmp_path / "both.db"
    for names, path in ((["L1.tc", "L2.stc"], tcs), (["L1.clt"], clt)):
        args = ["--db", str(out), "export", str(path)] + [x for n in names for x in ("--sae", n)]
        assert runner.invoke(cli, args).exit_code == 0
    assert runner.invoke(cli, ["merge", str(clt), str(tcs), "-o", str(both)]).exit_code == 0
    want, got = rows(out), rows(both)
    keep = {"L1.tc", "L2.stc", "L1.clt"}

    def kept(r: tuple) -> bool:  # rows whose dictionaries were all exported together
        names = [x.split("/")[0] for x in r[:3] if isinstance(x, str) and x not in ("virtual", "virtual_in")]
        return set(names) <= {"L1.tc", "L2.stc"} or set(names) <= {"L1.clt"}

    assert got["spread"] == want["spread"] and len(got["spread"]) == 13 * 3
    assert (
        got["baselines"]
        == [r for r in want["baselines"] if kept(r)]
        == [r for r in want["baselines"] if r[:2] == ("L1.tc", "L2.stc")]
    )
    assert got["virtual"] == [r for r in want["virtual"] if kept(r)] and got["virtual"]
    assert keep == {r[0] for r in sqlite3.connect(both).execute("SELECT name FROM saes")}
