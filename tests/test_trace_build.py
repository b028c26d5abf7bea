"""`sae-atlas trace` on an atlas the real build wrote: a planted chain of three transcoders is the trace.

A decoder row of L1.tc/3 is aligned, through layer 2's MLP-input gain, with the encoder column of
L2.tc/5, whose decoder row is aligned the same way with L3.tc/7's encoder column. The virtual passes
must make each the other's strongest edge, so the top-1 trace down from L1.tc/3 is the chain, and
the top-1 trace up from L3.tc/7 is the chain reversed; the du pass gives each node its tokens, which
must be the feature's own top promoted tokens as `show` reads them.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from atlas import open_atlas
from atlas.cli import cli
from builders.build import BuildConfig, build_atlas
from tests.passes_fixtures import tiny_model, tiny_transcoder


def _align(m, src, i: int, dst, j: int, layer: int, seed: int) -> None:
    p = torch.randn(m.d_model, generator=torch.Generator().manual_seed(seed))
    p = p / p.norm()
    src.W_dec[i] = p * src.W_dec[i].norm() * 3.0
    dst.W_enc[:, j] = 1.5 * p / m.layers[layer].ln2.gain * dst.W_enc[:, j].norm()


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    m = tiny_model(n_layers=4)
    a, b, c = (tiny_transcoder(m, layer=layer, seed=30 + layer) for layer in (1, 2, 3))
    _align(m, a, 3, b, 5, layer=2, seed=7)
    _align(m, b, 5, c, 7, layer=3, seed=8)
    config = BuildConfig(passes="du,virtual,virtual_in", virtual_k=4, virtual_in_k=4, n_random=64, unit_size=10,
                         block_rows=4, key_block=8, virtual_sample=12, virtual_baseline_samples=1024)  # fmt: skip
    return build_atlas(m, [a, b, c], tmp_path_factory.mktemp("chain") / "chain.db", config=config, progress=False)


def test_the_planted_chain_is_the_top_1_trace_both_ways(chain) -> None:
    r = CliRunner().invoke(cli, ["--db", str(chain), "trace", "L1.tc/3", "--top", "1", "--json"])
    assert r.exit_code == 0, r.output
    down = json.loads(r.output)
    assert [(n["name"], n["depth"]) for n in down["nodes"]] == [("L1.tc/3", 0), ("L2.tc/5", 1), ("L3.tc/7", 2)]
    assert all(n["percentile"] > 99 for n in down["nodes"][1:])
    with open_atlas(chain) as a:
        for n in down["nodes"]:
            want = [t.token for t in a.token_scores(n["feature_id"], "du", 1, limit=6)]
            assert n["tokens"] == want and want  # each node's own top promoted tokens
    r = CliRunner().invoke(cli, ["--db", str(chain), "trace", "L3.tc/7", "--up", "--top", "1", "--json"])
    assert r.exit_code == 0, r.output
    up = json.loads(r.output)
    assert [n["name"] for n in up["nodes"]] == ["L3.tc/7", "L2.tc/5", "L1.tc/3"]
    # the same two edges, stored writer -> reader whichever way the tree grew
    assert [(e["src_feature"], e["dst_feature"]) for e in up["edges"]] == [
        (e["src_feature"], e["dst_feature"]) for e in reversed(down["edges"])
    ]
