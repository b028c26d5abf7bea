"""atlas/stats.py recovers what planted atlases hold (tests/planted_atlas.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from atlas import open_atlas, stats
from atlas.errors import AtlasError
from tests.planted_atlas import PREDICTS_FRACTIONS, READS_FRACTIONS, SEMANTIC_SHIFT_LAYERS, build_planted_atlas


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = tmp_path_factory.mktemp("planted") / "planted.db"
    plant = build_planted_atlas(path)
    with open_atlas(path) as atlas:
        yield atlas, plant


@pytest.fixture(scope="module")
def swapped(tmp_path_factory):
    path = tmp_path_factory.mktemp("swapped") / "swapped.db"
    plant = build_planted_atlas(path, swap_qk=True, passes=("attention",))
    with open_atlas(path) as atlas:
        yield atlas, plant


# ---------------------------------------------------------------- experiment 1


def test_predicts_fractions_per_layer_are_recovered_in_depth_order(planted):
    atlas, plant = planted
    t = stats.predicts_by_layer(atlas)
    # SAEs were inserted in a scrambled order; rows come back by depth, none dropped.
    assert t.saes.layer.tolist() == plant.layers
    assert t.saes.name == [f"L{layer}.res" for layer in plant.layers]
    np.testing.assert_allclose(t.frac_predicts, PREDICTS_FRACTIONS[: len(plant.layers)])
    np.testing.assert_allclose(t.frac_reads, READS_FRACTIONS[: len(plant.layers)])
    both = [int((p & r).sum()) for p, r in zip(plant.predicts, plant.reads, strict=True)]
    either = [int((p | r).sum()) for p, r in zip(plant.predicts, plant.reads, strict=True)]
    assert t.n_both.tolist() == both
    np.testing.assert_allclose(t.jaccard, np.array(both) / np.array(either))
    assert t.overall["frac_predicts"] == pytest.approx(np.mean(PREDICTS_FRACTIONS[: len(plant.layers)]))
    assert t.overall["n_features"] == plant.d_sae * len(plant.layers)


def test_predicts_accepts_a_raw_connection(planted):
    atlas, _ = planted
    assert (
        stats.predicts_by_layer(atlas.conn).frac_predicts.tolist()
        == stats.predicts_by_layer(atlas).frac_predicts.tolist()
    )


def test_token_overlap_counts_shared_tokens_exactly(planted):
    atlas, plant = planted
    o = stats.token_overlap(atlas)
    assert not o.sampled
    # Feature i shares i % 4 tokens: 3 of every 4 share at least one, on average 1.5.
    np.testing.assert_allclose(o.frac_agree, 0.75)
    np.testing.assert_allclose(o.mean_shared, 1.5)
    np.testing.assert_allclose(o.chance_shared, plant.k_top**2 / plant.d_vocab)
    assert o.n_checked.tolist() == [plant.d_sae] * len(plant.layers)
    expected_pred = [
        ((s >= 1) & (p == 1)).sum() / (p == 1).sum() for s, p in zip(plant.shared, plant.predicts, strict=True)
    ]
    np.testing.assert_allclose(o.frac_agree_predicting, expected_pred)
    assert stats.token_overlap(atlas, min_shared=2).overall["frac_agree"] == pytest.approx(0.5)
    assert stats.token_overlap(atlas, min_shared=4).overall["n_agree"] == 0
    # Restricting to the top 0 ranks leaves no lists to compare.
    assert stats.token_overlap(atlas, top=0).overall["n_checked"] == 0


def test_token_overlap_sample_estimates_the_exact_fraction(planted):
    atlas, _ = planted
    o = stats.token_overlap(atlas, max_features=1000, seed=3, block=10)
    assert o.sampled and 0.3 < o.sample_fraction < 0.32
    assert 900 <= o.overall["n_checked"] <= 1100
    assert abs(o.overall["frac_agree"] - 0.75) < 4 * o.overall["se_agree"]


# ---------------------------------------------------------------- experiment 2


def test_depth_profiles_match_numpy_on_the_planted_scores(planted):
    atlas, plant = planted
    d = stats.depth_profiles(atlas)
    assert d.saes.layer.tolist() == plant.layers
    for role in stats.ROLES:
        prof = d.roles[role]
        planted_scores = getattr(plant, role)
        np.testing.assert_allclose(prof.mean, [x.mean() for x in planted_scores])
        np.testing.assert_allclose(prof.median, [np.median(x) for x in planted_scores])
        np.testing.assert_allclose(prof.p75, [np.percentile(x, 75) for x in planted_scores])
        assert prof.n.tolist() == [plant.d_sae] * len(plant.layers)
        # frac_above comes from the first attention layer each SAE reaches (layer + 1), not the second.
        np.testing.assert_allclose(prof.frac_above, [plant.frac_above[(layer, role)] for layer in plant.layers])
    assert d.shapes[("resid_post", "q")] == "flat"
    assert d.shapes[("resid_post", "k")] == "increasing"
    assert d.shapes[("resid_post", "v")] == "inverted-U"
    assert len(d.builder) == 2 * 3 * len(plant.layers)


def test_swapping_q_and_k_in_the_atlas_swaps_them_in_the_profiles(swapped):
    s, plant = stats.depth_profiles(swapped[0]), swapped[1]
    # plant.q holds the rising scores written to attn_q_mean, plant.k the flat ones.
    np.testing.assert_allclose(s.roles["q"].mean, [x.mean() for x in plant.q])
    np.testing.assert_allclose(s.roles["k"].mean, [x.mean() for x in plant.k])
    assert s.shapes[("resid_post", "q")] == "increasing"
    assert s.shapes[("resid_post", "k")] == "flat"
    # Without a depth_profiles table there is no baseline fraction, and it says so with NaN.
    assert np.isnan(s.roles["q"].frac_above).all()


def test_key_side_varies_more_than_query_side_when_planted(planted, swapped):
    (v,) = stats.qk_variability(stats.depth_profiles(planted[0]))
    assert v.series == "resid_post" and v.layers.tolist() == planted[1].layers
    assert v.cv_k > 0.3 > 0.05 > v.cv_q
    assert v.diff == pytest.approx(v.cv_k - v.cv_q)
    # 8 layers: 256 sign flips, and the planted profile is the most extreme one (and its mirror).
    assert v.exact and v.n_permutations == 256
    assert v.p_value == pytest.approx(2 / 256)
    assert v.ci95[0] > 0
    (w,) = stats.qk_variability(stats.depth_profiles(swapped[0]))
    assert w.diff < -0.3
    assert w.p_value == pytest.approx(2 / 256) and w.ci95[1] < 0


def test_variability_test_holds_its_size_under_the_null():
    # q and k layer means drawn from the same distribution: p < 0.05 about 5% of the time.
    rng = np.random.default_rng(1)
    ps = []
    for _ in range(300):
        mq, mk = rng.gamma(5.0, 1.0, (2, 10))
        t = stats._variability("s", np.arange(10), mq, mk, np.zeros(10), np.zeros(10), 2000, 10, 0)
        ps.append(t.p_value)
    assert 0.01 < np.mean(np.array(ps) < 0.05) < 0.10
    # Monte Carlo branch (more than 14 layers) on a clear difference.
    mq = np.ones(20) + rng.normal(0, 0.01, 20)
    mk = np.linspace(1, 3, 20)
    t = stats._variability("s", np.arange(20), mq, mk, np.zeros(20), np.zeros(20), 5000, 10, 0)
    assert not t.exact and t.n_permutations == 5000 and t.p_value < 0.001


@pytest.mark.parametrize(
    "values, shape",
    [
        ([3, 2, 1.2, 1, 1.2, 2, 3], "U-shaped"),
        ([1, 2, 2.8, 3, 2.8, 2, 1], "inverted-U"),
        ([1, 1.5, 2, 2.5, 3, 3.5, 4], "increasing"),
        ([4, 3.5, 3, 2.5, 2, 1.5, 1], "decreasing"),
        ([1, 1.01, 0.99, 1, 1.02, 0.98, 1], "flat"),
        ([1, 2], "increasing"),
        ([1], "n/a"),
        # zigzags: no shape is named across them (issue 18: the shipped report called the first "increasing")
        ([0.81, 0.97, 0.75, 0.92, 0.96], "no clear trend"),
        ([1, 2, 1, 2, 1, 2], "no clear trend"),
        ([1, 3, 2, 4, 3, 5], "no clear trend"),  # rises overall, but 2 of 5 steps fall by a third of the mean
        ([2, 1, 2, 1, 2, 1, 2], "no clear trend"),  # lowest point inside, but the arms zigzag: not a U
        # mostly monotone, one small step back (within tol): still a trend
        ([1, 1.5, 2, 1.98, 2.5, 3], "increasing"),
        # a step down between nearly level stretches: small wiggles within 5% are ties, not evidence against it
        ([1.075, 1.098, 0.927, 0.945], "decreasing"),
        # peaked
        ([1, 2, 3, 2, 1], "inverted-U"),
        ([1, 1.2, 1.4, 3, 1.3], "inverted-U"),
        ([3, 1, 3], "U-shaped"),
        # flat: within 5% of the mean, or spanning no more than 10% of it without a trend
        ([1, 1.06, 0.97, 1.02, 0.96, 1.04], "flat"),
        ([5, 5, 5], "flat"),
    ],
)
def test_profile_shape_names(values, shape):
    assert stats.profile_shape(np.arange(len(values)) * 3, np.array(values, dtype=float)) == shape
    # the layers' order, not the order of the rows, is what counts
    perm = np.random.default_rng(0).permutation(len(values))
    assert stats.profile_shape((np.arange(len(values)) * 3)[perm], np.array(values, dtype=float)[perm]) == shape


def test_kendall_tau_b_against_a_direct_count():
    x, y = np.arange(5.0), np.array([0.81, 0.97, 0.75, 0.92, 0.96])
    assert stats.kendall_tau_b(x, y) == pytest.approx((6 - 4) / 10)
    assert stats.kendall_tau_b(x, np.array([1.0, 1, 2, 2, 3])) == pytest.approx(8 / np.sqrt(10 * 8))
    # with a tolerance, differences within it are ties
    assert stats.kendall_tau_b(np.arange(4.0), np.array([1.0, 1.02, 0.8, 0.81]), tol=0.05) == pytest.approx(
        -4 / np.sqrt(6 * 4)
    )


# ---------------------------------------------------------------- experiment 3


def test_semantic_split_recovers_the_planted_shift(planted):
    atlas, plant = planted
    split = stats.semantic_split(atlas)
    assert split.n_labelled == sum(int(x.sum()) for x in plant.labelled)
    for role in stats.ROLES:
        rows = [r for r in split.rows if r.role == role]
        assert [r.layer for r in rows] == plant.layers
        for r, layer in zip(rows, plant.layers, strict=True):
            scores = getattr(plant, role)[layer]
            sem = scores[plant.semantic[layer] & plant.labelled[layer]]
            non = scores[~plant.semantic[layer] & plant.labelled[layer]]
            assert (r.n_sem, r.n_non) == (len(sem), len(non))
            assert r.mean_sem == pytest.approx(sem.mean()) and r.mean_non == pytest.approx(non.mean())
            assert r.median_sem == pytest.approx(np.median(sem)) and r.p75_non == pytest.approx(np.percentile(non, 75))
            shifted = role in ("q", "k") and layer in SEMANTIC_SHIFT_LAYERS
            if shifted:
                assert r.cliffs_delta > 0.4 and r.cohens_d > 0.8 and r.p_holm < 1e-6
                assert r.mean_sem > r.mean_non and r.median_sem > r.median_non and r.p75_sem > r.p75_non
            else:
                assert abs(r.cliffs_delta) < 0.25 and r.p_holm > 0.05
    pooled = {r.role: r for r in split.pooled}
    assert pooled["k"].cliffs_delta > 0 and pooled["k"].n_sem == sum(
        int((s & lab).sum()) for s, lab in zip(plant.semantic, plant.labelled, strict=True)
    )
    sem, non = split.values[("L5.res", "k")]
    assert len(sem) == len(non) == plant.d_sae // 4


# ---------------------------------------------------------------- the test statistics themselves


@pytest.mark.parametrize("n1, n2, ties", [(5, 7, False), (30, 45, True), (200, 150, True), (1000, 3, False)])
def test_mann_whitney_matches_scipy(n1, n2, ties):
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(n1 * 1000 + n2)
    x = rng.normal(0.3, 1.0, n1)
    y = rng.normal(0.0, 1.0, n2)
    if ties:
        x, y = np.round(x * 2) / 2, np.round(y * 2) / 2
    ours = stats.mann_whitney_u(x, y)
    ref = scipy_stats.mannwhitneyu(x, y, alternative="two-sided", method="asymptotic", use_continuity=True)
    assert ours.u == pytest.approx(ref.statistic)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
    ref_nc = scipy_stats.mannwhitneyu(x, y, alternative="two-sided", method="asymptotic", use_continuity=False)
    assert stats.mann_whitney_u(x, y, continuity=False).p_value == pytest.approx(ref_nc.pvalue, rel=1e-9)


def test_mann_whitney_edge_cases():
    assert stats.mann_whitney_u(np.ones(5), np.ones(4)).p_value == 1.0
    assert math.isnan(stats.mann_whitney_u(np.array([]), np.ones(4)).p_value)
    r = stats.mann_whitney_u(np.array([1.0, np.nan, 2.0]), np.array([0.0, np.nan]))
    assert (r.n1, r.n2, r.u) == (2, 1, 2.0)


def test_cliffs_delta_and_cohens_d_against_brute_force():
    rng = np.random.default_rng(5)
    x, y = np.round(rng.normal(0.5, 1, 40)), np.round(rng.normal(0, 1, 55))
    brute = np.sign(x[:, None] - y[None, :]).mean()
    mw = stats.mann_whitney_u(x, y)
    assert stats.cliffs_delta(mw.u, mw.n1, mw.n2) == pytest.approx(brute)
    pooled = math.sqrt(((len(x) - 1) * x.var(ddof=1) + (len(y) - 1) * y.var(ddof=1)) / (len(x) + len(y) - 2))
    assert stats.cohens_d(x, y) == pytest.approx((x.mean() - y.mean()) / pooled)


def test_holm_adjustment():
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1, then made monotone
    np.testing.assert_allclose(stats.holm(p), [0.04, 0.09, np.nan, 0.09, 0.5])


# ---------------------------------------------------------------- missing passes


def test_each_experiment_names_the_missing_pass(tmp_path):
    path = tmp_path / "bare.db"
    build_planted_atlas(path, n_layers=3, d_sae=20, passes=("labels",))
    with open_atlas(path) as atlas:
        with pytest.raises(stats.MissingPass, match="du/ee passes"):
            stats.predicts_by_layer(atlas)
        with pytest.raises(stats.MissingPass, match="du and ee pass"):
            stats.token_overlap(atlas)
        with pytest.raises(stats.MissingPass, match="attention pass"):
            stats.depth_profiles(atlas)
        with pytest.raises(stats.MissingPass, match="attention pass"):
            stats.semantic_split(atlas)
    path2 = tmp_path / "nolabels.db"
    build_planted_atlas(path2, n_layers=3, d_sae=20, passes=("attention",))
    with open_atlas(path2) as atlas:
        with pytest.raises(AtlasError, match="semantic-label pass"):
            stats.semantic_split(atlas)


def test_depth_profiles_fall_back_to_the_builders_table(tmp_path):
    # No per-feature attn_*_mean columns: mean/median/P75 come from depth_profiles (first layer reached).
    path = tmp_path / "depth_only.db"
    plant = build_planted_atlas(path, n_layers=4, d_sae=50, passes=("depth",))
    with open_atlas(path) as atlas:
        d = stats.depth_profiles(atlas)
    for role in stats.ROLES:
        np.testing.assert_allclose(d.roles[role].mean, [x.mean() for x in getattr(plant, role)])
        np.testing.assert_allclose(d.roles[role].p75, [np.percentile(x, 75) for x in getattr(plant, role)])
        assert d.roles[role].n.tolist() == [50 * 4] * 4  # (feature, head) pairs, as the builder counted them


def test_sign_flip_test_says_how_many_depths_it_needs():
    # exact: the identity and the all-swap give the same |statistic|, so p >= 2 / 2^L
    assert stats.sign_flip_min_p(5) == 2 / 32 and stats.sign_flip_min_p(6) == 2 / 64
    assert stats.sign_flip_depths_needed(0.05) == 6 and stats.sign_flip_depths_needed(0.01) == 8
    # with 5 layers, even q flat and k as far from it as can be: p = 2/32, and the test says it cannot be significant
    mq, mk = np.ones(5) + np.arange(5) * 1e-3, np.array([1, 4, 1, 4, 1.0])
    t = stats._variability("s", np.arange(5), mq, mk, np.zeros(5), np.zeros(5), 2000, 10, 0)
    assert t.p_value == pytest.approx(2 / 32) == t.min_p and not t.testable and not t.significant
    assert t.depths_needed == 6
    # 10 layers: the example's residual depths; the same contrast is significant
    mq, mk = np.ones(10) + np.arange(10) * 1e-3, np.tile([1, 4.0], 5)
    t = stats._variability("s", np.arange(10), mq, mk, np.zeros(10), np.zeros(10), 2000, 10, 0)
    assert t.min_p == 2 / 1024 and t.testable and t.significant and t.p_value == pytest.approx(2 / 1024)
    # sampled swaps (more than 14 layers): the observed statistic counts, so p is never 0
    t = stats._variability(
        "s", np.arange(20), np.ones(20), np.tile([1, 4.0], 10), np.zeros(20), np.zeros(20), 999, 10, 0
    )
    assert t.p_value == pytest.approx(1 / 1000) and t.min_p == pytest.approx(1 / 1000)
