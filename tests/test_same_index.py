"""Same-index cross-dictionary edges: counted against chance, flagged when far above, by validate and report."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
from click.testing import CliRunner

from atlas import create_atlas, open_atlas
from atlas.cli import cli
from atlas.same_index import ALPHA, RATIO, binomial_sf, same_index_check

D_SAE = (512, 512, 256)  # three resid_post dictionaries; the last one narrower (chance 1/256)


def _planted(path, same_frac: float, seed: int = 0):
    """Flow edges 0 -> 1 -> 2 (k = 2 per feature), a ``same_frac`` of them planted on the same index; a few
    cosine edges inside a dictionary (same dictionary: never counted, even with the same index)."""
    rng = np.random.default_rng(seed)
    atlas = create_atlas(path, overwrite=True)
    with atlas, atlas.transaction():
        mid = atlas.add_model(
            name="m", source="m", source_kind="synthetic", architecture="X", n_layers=3, d_model=16, n_heads=2,
            n_kv_heads=2, d_head=8, d_vocab=50, tied_embeddings=True, norm_kind="rmsnorm",
        )  # fmt: skip
        sids = [
            atlas.add_sae(
                model_id=mid,
                hook_name=f"blocks.{i}.hook_resid_post",
                site="resid_post",
                layer=i,
                d_in=16,
                d_sae=d,
                architecture="relu",
                source="x",
            )  # fmt: skip
            for i, d in enumerate(D_SAE)
        ]
        bases = [atlas.feature_id_base(s) for s in sids]
        planted = 0
        for a in range(2):
            n_src, n_dst = D_SAE[a], D_SAE[a + 1]
            src = np.repeat(np.arange(n_src), 2)
            dst = rng.integers(0, n_dst, len(src))
            plant = (rng.random(len(src)) < same_frac) & (src < n_dst)
            dst[plant] = src[plant]
            planted += int((dst == src).sum())
            atlas.add_edges("flow", bases[a] + src, bases[a + 1] + dst, rng.random(len(src)), np.tile([0, 1], n_src))
        idx = np.arange(50)
        atlas.add_edges("cosine", bases[0] + idx, bases[0] + idx, np.ones(50), np.zeros(50, int))
    return planted


def test_binomial_tail_matches_a_direct_sum():
    for k, n, p in [(0, 10, 0.3), (3, 10, 0.3), (9, 10, 0.3), (2, 3, 1 / 2048), (12, 400, 1 / 2048)]:
        q = Fraction(p)  # exact rational arithmetic: the oracle
        direct = float(sum(math.comb(n, j) * q**j * (1 - q) ** (n - j) for j in range(k, n + 1)))
        assert binomial_sf(k, n, p) == pytest.approx(direct, rel=1e-9, abs=1e-300)


def test_planted_same_index_edges_are_flagged(tmp_path):
    path = tmp_path / "planted.db"
    planted = _planted(path, same_frac=0.3)
    with open_atlas(path) as atlas:
        check = same_index_check(atlas.conn)
    assert [(g.kind, g.src_sae, g.dst_sae) for g in check.groups] == [
        ("flow", "L0.res", "L1.res"),
        ("flow", "L1.res", "L2.res"),
    ]  # the cosine edges stay inside one dictionary: not counted
    assert check.n_same == planted and check.n_edges == 2 * (512 + 512)
    g0, g1 = check.groups
    assert g0.chance == 1 / 512 and g1.chance == 1 / 256
    # only sources with an index that exists in the narrower destination can match it by chance
    assert g1.n_eligible == 2 * 256 and g1.expected == pytest.approx(2.0)
    assert check.expected == pytest.approx(2 * 512 / 512 + 2 * 256 / 256)
    assert all(g.flagged for g in check.groups) and "FAR ABOVE CHANCE in 2 of 2" in check.summary()


def test_random_edges_are_not_flagged(tmp_path):
    path = tmp_path / "random.db"
    _planted(path, same_frac=0.0, seed=1)
    with open_atlas(path) as atlas:
        check = same_index_check(atlas.conn)
    assert check.n_same <= 12  # chance: 4 expected over the two groups
    assert not check.flagged and "FAR ABOVE" not in check.summary()


def test_the_rule_needs_both_the_ratio_and_the_test(tmp_path):
    """A few same-index edges among few edges: far above chance by ratio, but not by the binomial test."""
    from atlas.same_index import SameIndexGroup

    few = SameIndexGroup(
        "flow", "a", "b", n_edges=3, n_eligible=3, n_same=1, chance=1 / 64, p_value=binomial_sf(1, 3, 1 / 64)
    )
    assert few.ratio > RATIO and few.p_value > ALPHA and not few.flagged
    # many edges, barely above chance: the test rejects chance, the ratio does not call it far above
    many = SameIndexGroup("flow", "a", "b", 10**6, 10**6, 1200, 1 / 1024, binomial_sf(1200, 10**6, 1 / 1024))
    assert many.p_value < ALPHA and many.ratio < RATIO and not many.flagged


def test_validate_warns_and_report_says_it(tmp_path):
    path = tmp_path / "planted.db"
    _planted(path, same_frac=0.3)
    runner = CliRunner()
    r = runner.invoke(cli, ["--db", str(path), "validate"])
    assert r.exit_code == 0, r.output  # a warning, not a failure
    assert "warn  same-index edges against chance:" in r.output and "FAR ABOVE CHANCE" in r.output
    assert r.output.strip().endswith("valid (1 warning)")
    d = json.loads(runner.invoke(cli, ["--db", str(path), "validate", "--json"]).output)
    (c,) = [c for c in d["checks"] if c["name"] == "same-index edges against chance"]
    assert c["ok"] is True and c["warn"] is True


def test_report_has_the_section_and_a_caveat(tmp_path):
    from tests.planted_atlas import build_planted_atlas

    path = tmp_path / "planted.db"
    build_planted_atlas(path, n_layers=3, d_sae=400)
    with open_atlas(path, readonly=False) as atlas, atlas.transaction():
        sids = [s.sae_id for s in sorted(atlas.saes(), key=lambda s: s.layer)]
        bases = [atlas.feature_id_base(s) for s in sids]
        idx = np.arange(400)
        for a in range(2):
            atlas.add_edges("flow", bases[a] + idx, bases[a + 1] + idx, np.ones(400), np.zeros(400, int))
    out = tmp_path / "rep"
    r = CliRunner().invoke(cli, ["report", str(path), "-o", str(out), "--no-figures", "--no-plots"])
    assert r.exit_code == 0, r.output
    md = (out / "report.md").read_text()
    assert "## Edges between dictionaries: same-index check" in md
    assert "| flow | L0.res → L1.res | 400 | 400 | 100.00% | 0.250% |" in md and "| **yes** |" in md
    assert "> Same-index edges: 800 of 800 cross-dictionary edges" in md  # and a caveat at the top
    js = json.loads((out / "report.json").read_text())["same_index"]
    assert js["n_same"] == 800 and js["n_flagged"] == 2 and js["chance"] == pytest.approx(1 / 400)


def test_validate_is_quiet_on_random_edges(tmp_path):
    path = tmp_path / "random.db"
    _planted(path, same_frac=0.0, seed=1)
    r = CliRunner().invoke(cli, ["--db", str(path), "validate"])
    assert r.exit_code == 0 and "ok    same-index edges against chance" in r.output
    assert r.output.strip().endswith(": valid")
