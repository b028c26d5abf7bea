"""build_atlas end to end on tiny random weights: counts, validation, determinism, crash and resume."""

from __future__ import annotations

import json
import math
import sqlite3

import numpy as np
import pytest

from atlas import open_atlas
from atlas.files import DiskFull, NoSuchFolder
from atlas.maintenance import validate
from builders.build import BuildConfig, BuildError, build_atlas, merge_shards, plan_units, sae_names, shard_path
from tests.passes_fixtures import tiny_model, tiny_sae

K = 5


def setup():
    m = tiny_model(gemma=True, n_layers=3)
    saes = [
        tiny_sae(m, site="resid_pre", layer=0, d_sae=40, seed=1),
        tiny_sae(m, site="attn_z", layer=1, d_sae=24, seed=2),
        tiny_sae(m, site="resid_post", layer=1, d_sae=33, seed=3),
        tiny_sae(m, site="resid_post", layer=1, d_sae=50, seed=4),  # same site: names get the width
    ]
    return m, saes


def config(**kw):
    base = dict(
        top_k=K,
        qk_k=3,
        ov_k=3,
        neighbour_k=4,
        flow_k=2,
        n_random=128,
        unit_size=16,
        block_rows=8,
        vocab_tile=32,
        key_block=16,
        semantic=__import__("builders.passes.semantic", fromlist=["x"]).SemanticSettings(n_baseline=32),
    )
    base.update(kw)
    return BuildConfig(**base)


def dump(path) -> dict[str, list]:
    conn = sqlite3.connect(path)
    out = {}
    for table, cols in {
        "models": "*",
        "saes": "*",
        "features": "*",
        "vocab": "*",
        "heads": "*",
        "token_scores": "*",
        "head_scores": "*",
        "edges": "*",
        "depth_profiles": "*",
        "labels": "label_id, feature_id, text, kind, source, score, evidence",
        "build_units": "sae_id, pass, chunk_start, chunk_end",
    }.items():
        out[table] = conn.execute(f"SELECT {cols} FROM {table} ORDER BY 1, 2, 3").fetchall()
    out["provenance"] = json.loads(conn.execute("SELECT provenance FROM atlas_info").fetchone()[0])
    conn.close()
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    m, saes = setup()
    out = tmp_path_factory.mktemp("b") / "a.db"
    build_atlas(m, saes, out, config=config(), progress=False)
    return m, saes, out


def test_names_deduplicate():
    m, saes = setup()
    assert sae_names(saes) == ["L0.res_pre", "L1.z", "L1.res.33", "L1.res.50"]
    assert sae_names(saes, ("a", None, None, None))[0] == "a"


def test_build_counts_and_validates(built):
    m, saes, out = built
    assert validate(out).ok, [c for c in validate(out).checks if not c.ok]
    assert not out.with_name(out.name + ".partial").exists()
    with open_atlas(out) as a:
        c = a.conn
        n_feat = sum(s.d_sae for s in saes)
        assert c.execute("SELECT COUNT(*) FROM features").fetchone()[0] == n_feat
        assert c.execute("SELECT COUNT(*) FROM token_scores").fetchone()[0] == n_feat * K * 4
        assert (
            c.execute("SELECT COUNT(*) FROM features WHERE du_top1_z IS NULL OR ee_kurtosis IS NULL").fetchone()[0] == 0
        )
        assert c.execute("SELECT COUNT(*) FROM labels WHERE source = 'heuristic'").fetchone()[0] == n_feat
        # attention: every SAE is read by a layer (resid_pre 0 -> 0; layer-1 sites -> 2)
        assert c.execute("SELECT COUNT(*) FROM features WHERE attn_q_mean IS NULL").fetchone()[0] == 0
        assert c.execute("SELECT COUNT(*) FROM depth_profiles").fetchone()[0] == 4 * 3
        pct = c.execute("SELECT MIN(percentile) FROM head_scores WHERE role IN ('q','k','v')").fetchone()[0]
        assert pct >= 75
        # attribution: hook_z SAE only, shares sum to <= 1 and top_head set
        z_id = c.execute("SELECT sae_id FROM saes WHERE name = 'L1.z'").fetchone()[0]
        assert (
            c.execute("SELECT COUNT(*) FROM features WHERE sae_id = ? AND top_head IS NULL", (z_id,)).fetchone()[0] == 0
        )
        assert (
            c.execute("SELECT COUNT(*) FROM features WHERE sae_id != ? AND top_head IS NOT NULL", (z_id,)).fetchone()[0]
            == 0
        )
        # edges: cosine k per feature; qk: each SAE x heads x k; flow from the 3 earlier SAEs
        kinds = dict(c.execute("SELECT kind, COUNT(*) FROM edges GROUP BY kind").fetchall())
        assert kinds["cosine"] == n_feat * 4
        assert kinds["qk"] == n_feat * m.n_heads * 3
        assert kinds["flow"] == (n_feat - 50) * 2
        # ov: L0.res_pre -> layer 0 heads -> nearest later residual SAE (L1.res); the layer-1 SAEs are read by
        # layer 2, after which no residual SAE follows: no OV for them
        assert kinds["ov"] == 40 * m.n_heads * 3
        prov = a.provenance()
        assert prov["build"]["config"]["top_k"] == K and "du" in prov["folding"]
        assert set(prov["criteria"]) == {"predicts_tokens", "reads_tokens"}
        assert prov["criteria"]["predicts_tokens"]["sql"].startswith("du_top1_z >= ")
        frac = prov["criteria"]["predicts_tokens"]["fraction"]["L1.res.33"]
        stored = c.execute("SELECT AVG(predicts_tokens) FROM features JOIN saes USING (sae_id) WHERE name='L1.res.33'")
        assert frac == pytest.approx(stored.fetchone()[0])


def test_rows_match_the_pure_passes(built):
    """The atlas holds exactly what the pass functions return (ids mapped to feature ids)."""
    from builders.passes.du import du_pass

    m, saes, out = built
    r = du_pass(m, saes[2], 0, saes[2].d_sae, k=K, block_rows=8, vocab_tile=32)
    with open_atlas(out) as a:
        base = a.feature_id_base(a.sae("L1.res.33").sae_id)
        rows = a.conn.execute(
            "SELECT token_id FROM token_scores WHERE phase='du' AND sign=1 AND feature_id BETWEEN ? AND ? "
            "ORDER BY feature_id, rank",
            (base, base + saes[2].d_sae - 1),
        ).fetchall()
        np.testing.assert_array_equal(np.array(rows).reshape(-1, K), r.top_ids)
        z = a.conn.execute("SELECT du_top1_z FROM features WHERE sae_id = ? ORDER BY idx", (a.sae("L1.res.33").sae_id,))
        np.testing.assert_allclose([x[0] for x in z.fetchall()], r.stats["top1_z"])


def test_deterministic(built, tmp_path):
    m, saes, out = built
    again = build_atlas(m, saes, tmp_path / "b.db", config=config(), progress=False)
    assert dump(out) == dump(again)


def test_crash_then_resume_gives_identical_rows(built, tmp_path):
    m, saes, out = built
    target = tmp_path / "c.db"
    seen = []

    def crash(unit):
        seen.append(unit)
        if len(seen) == 7:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        build_atlas(m, saes, target, config=config(), progress=False, after_unit=crash)
    assert not target.exists()
    partial = target.with_name("c.db.partial")
    assert sqlite3.connect(partial).execute("SELECT COUNT(*) FROM build_units").fetchone()[0] == 7
    with pytest.raises(BuildError, match="other settings"):
        build_atlas(m, saes, target, config=config(top_k=K + 1), resume=True, progress=False)
    ran = []
    build_atlas(m, saes, target, config=config(), resume=True, progress=False, after_unit=ran.append)
    assert len(ran) == len(plan_units(m, saes, sae_names(saes), config())) - 7
    assert dump(out) == dump(target)


def test_streaming_the_other_side_gives_identical_rows(built, tmp_path):
    """cache_mb=0: no QK keys / OV targets / cosine columns are cached, all streamed: the same atlas."""
    m, saes, out = built
    streamed = build_atlas(m, saes, tmp_path / "s.db", config=config(cache_mb=0), progress=False)
    a, b = dump(out), dump(streamed)
    assert b["provenance"]["build"]["config"]["cache_mb"] == 0
    assert a["provenance"]["build"]["fingerprint"] == b["provenance"]["build"]["fingerprint"]
    del a["provenance"], b["provenance"]
    assert_same_rows(a, b)
    assert len(a["edges"]) > 1000


def assert_same_rows(a: dict[str, list], b: dict[str, list]) -> None:
    """Two dumps hold the same rows: ids, names, ranks and counts exactly, floats to float32 rounding
    (streamed and cached computations are products of different shapes; a BLAS may sum them in another
    order on another CPU or thread count)."""
    assert a.keys() == b.keys()
    for table in a:
        assert len(a[table]) == len(b[table]), table
        for ra, rb in zip(a[table], b[table], strict=True):
            assert len(ra) == len(rb), table
            for x, y in zip(ra, rb, strict=True):
                if isinstance(x, float) and isinstance(y, float):
                    assert math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6), (table, ra, rb)
                else:
                    assert x == y, (table, ra, rb)


def test_memory_budget_rules():
    cfg = config(memory_mb=64)
    assert cfg.cache_bytes() == 32 << 20 and config(cache_mb=0).cache_bytes() == 0
    # a streamed block of 768-wide columns with 256-row score tiles stays within half the budget
    cfg = BuildConfig(memory_mb=64)
    cols = cfg.key_columns(768, 256)
    assert cols < cfg.key_block and 4 * cols * (3 * 768 + 2 * 256) <= 32 << 20


def test_existing_output_and_bad_settings_are_refused(built, tmp_path):
    m, saes, out = built
    with pytest.raises(BuildError, match="already exists"):
        build_atlas(m, saes, out, config=config(), progress=False)
    with pytest.raises(BuildError, match="unknown pass"):
        config(passes="du,bogus")
    with pytest.raises(BuildError, match="QK pair"):
        build_atlas(m, saes, tmp_path / "x.db", config=config(qk_pairs=(("L0.res_pre", "nope"),)), progress=False)


def test_subset_of_passes_and_unfolded(tmp_path):
    m, saes = setup()
    out = build_atlas(
        m, saes[:1], tmp_path / "d.db", config=config(passes="du,semantic", fold_norms=False), progress=False
    )
    with open_atlas(out) as a:
        counts = {
            t: a.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("token_scores", "edges", "labels")
        }
        assert counts == {"token_scores": 40 * K * 2, "edges": 0, "labels": 40}
        assert "raw W_U" in a.provenance()["folding"]["du"]


def test_three_shards_merge_into_the_one_process_atlas(built, tmp_path):
    m, saes, out = built
    target = tmp_path / "sharded.db"
    ran = []
    for i in range(3):
        # shard 1 streams its other sides: cache_mb changes how, not what, so it may differ between shards
        cfg = config(cache_mb=0) if i == 1 else config()
        path = build_atlas(m, saes, target, config=cfg, progress=False, shard=(i, 3), after_unit=ran.append)
        assert path == shard_path(target, i, 3) == tmp_path / f"sharded.db.shard{i}-of-3.partial"
    units = plan_units(m, saes, sae_names(saes), config())
    assert sorted(map(repr, ran)) == sorted(map(repr, units))  # each unit ran once, in one shard
    assert merge_shards(target) == target
    assert not list(tmp_path.glob("sharded.db.*"))  # shards and the merge's partial are gone
    assert validate(target).ok
    a, b = dump(out), dump(target)
    b["provenance"]["build"]["config"]["cache_mb"] = None  # shard 0's copy, as recorded
    assert set(a) == set(b) and all(a[t] == b[t] for t in a), [t for t in a if a[t] != b[t]]


def test_merge_refuses_missing_incomplete_or_foreign_shards(tmp_path):
    m, saes = setup()
    saes = saes[:2]
    out = tmp_path / "x.db"
    with pytest.raises(BuildError, match="no shard files"):
        merge_shards(out)
    build_atlas(m, saes, out, config=config(), progress=False, shard=(0, 2))
    with pytest.raises(BuildError, match=r"missing: x\.db\.shard1-of-2\.partial"):
        merge_shards(out)

    # shard 1 killed after 2 units: incomplete until resumed
    def crash(unit, seen=[]):  # noqa: B006
        seen.append(unit)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_atlas(m, saes, out, config=config(), progress=False, shard=(1, 2), after_unit=crash)
    with pytest.raises(BuildError, match="shard1-of-2.partial: incomplete"):
        merge_shards(out)
    with pytest.raises(BuildError, match="other settings"):  # resuming a shard checks its settings too
        build_atlas(m, saes, out, config=config(top_k=K + 1), progress=False, shard=(1, 2), resume=True)
    build_atlas(m, saes, out, config=config(), progress=False, shard=(1, 2), resume=True)
    # a shard 1 built with other settings is refused, and nothing is written
    other = tmp_path / "o.db"
    build_atlas(m, saes, other, config=config(top_k=K + 1), progress=False, shard=(1, 2))
    good = shard_path(out, 1, 2).read_bytes()
    shard_path(out, 1, 2).write_bytes(shard_path(other, 1, 2).read_bytes())
    with pytest.raises(BuildError, match="shard1-of-2.partial: built with other settings"):
        merge_shards(out)
    assert not out.exists() and not (tmp_path / "x.db.merging.partial").exists()
    # stale shards of another count beside them
    build_atlas(m, saes, out, config=config(), progress=False, shard=(0, 3))
    with pytest.raises(BuildError, match="several counts"):
        merge_shards(out)
    shard_path(out, 0, 3).unlink()
    shard_path(out, 1, 2).write_bytes(good)
    merge_shards(out, 2)
    assert validate(out).ok
    with pytest.raises(BuildError, match="0 <= I < N"):
        build_atlas(m, saes, tmp_path / "y.db", config=config(), progress=False, shard=(2, 2))


def test_store_percentile_keeps_a_subset_of_head_rows_and_the_same_profiles(built, tmp_path):
    m, saes, default_out = built
    strict_out = tmp_path / "strict.db"
    build_atlas(m, saes, strict_out, config=config(passes=("attn",), store_percentile=95.0), progress=False)
    base = dump(default_out)
    strict = dump(strict_out)
    wanted = [r for r in base["head_scores"] if r[2] in ("q", "k", "v") and r[4] >= 95.0]
    assert wanted and len(wanted) < len([r for r in base["head_scores"] if r[2] in ("q", "k", "v")])
    assert sorted(strict["head_scores"]) == sorted(wanted)
    assert strict["depth_profiles"] == base["depth_profiles"]  # profiles still use the 75th percentile
    with pytest.raises(BuildError):
        config(store_percentile=50.0)  # stricter than --percentile or nothing


@pytest.mark.parametrize("content", [b"", b"SQLite format 3\x00" + b"\x00" * 84, b"not a database at all"])
def test_resume_starts_over_from_an_empty_or_unusable_partial(built, tmp_path, content):
    """A build killed right after it created OUT.partial leaves nothing to resume: --resume starts over."""
    m, saes, out = built
    target = tmp_path / "e.db"
    target.with_name("e.db.partial").write_bytes(content)
    notes = []
    build_atlas(m, saes, target, config=config(), resume=True, progress=False, say=notes.append)
    assert dump(out) == dump(target)
    assert len(notes) == 1 and "starting over" in notes[0]


def test_resume_starts_over_from_a_partial_killed_before_its_first_unit(built, tmp_path):
    m, saes, out = built
    target = tmp_path / "k.db"

    def crash(unit):
        raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        build_atlas(m, saes, target, config=config(top_k=K + 1), progress=False, after_unit=crash)
    partial = target.with_name("k.db.partial")
    # one finished unit, other settings: that is never discarded silently
    with pytest.raises(BuildError, match="other settings"):
        build_atlas(m, saes, target, config=config(), resume=True, progress=False)
    conn = sqlite3.connect(partial)
    conn.execute("DELETE FROM build_units")  # as if killed inside its first unit
    conn.commit()
    conn.close()
    notes = []
    build_atlas(m, saes, target, config=config(), resume=True, progress=False, say=notes.append)
    assert dump(out) == dump(target) and "no finished unit" in notes[0]


def _small_disk(monkeypatch, module, name, pages):
    """Make every atlas ``module.name`` creates as full as a disk of ``pages`` pages (SQLite's max_page_count)."""
    real = getattr(module, name)

    def create(*args, **kw):
        db = real(*args, **kw)
        conn = db.conn if hasattr(db, "conn") else db
        conn.execute(f"PRAGMA max_page_count = {pages}")
        return db

    monkeypatch.setattr(module, name, create)


def test_a_full_disk_says_so(built, tmp_path, monkeypatch):
    import builders.run

    m, saes, _ = built
    target = tmp_path / "full.db"
    _small_disk(monkeypatch, builders.run, "create_atlas", 60)
    with pytest.raises(DiskFull, match=r"full\.db\.partial: disk full; free some space, then rerun with --resume"):
        build_atlas(m, saes, target, config=config(), progress=False)
    assert not target.exists()


def test_an_output_in_a_missing_folder_says_so(built, tmp_path):
    m, saes, _ = built
    with pytest.raises(NoSuchFolder, match=r"missing: no such folder"):
        build_atlas(m, saes, tmp_path / "missing" / "a.db", config=config(), progress=False)


def test_provenance_records_what_the_shipped_atlas_records(built):
    """Each pass now states its own conventions and folding; together they are what the shipped atlas says."""
    from pathlib import Path

    _, _, out = built
    example = Path(__file__).resolve().parent.parent / "atlas.db.example"
    with open_atlas(example) as shipped_atlas:
        shipped = shipped_atlas.provenance()
    prov = dump(out)["provenance"]
    # issue 15's passes and settings (virtual weights, CLT spread) are newer than a shipped atlas may be
    new = {"virtual", "virtual_in", "spread"}

    def older(d: dict) -> dict:
        return {k: v for k, v in d.items() if k not in new and not k.startswith("virtual_")}

    assert older(prov["folding"]) == older(shipped["folding"])
    assert older(prov["conventions"]) == older(shipped["conventions"])
    assert set(older(prov["build"]["config"])) == set(older(shipped["build"]["config"]))  # no setting added or lost
