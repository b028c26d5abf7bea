"""The atlas library: opening files, the read API against direct SQL, bulk writes."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import atlas.db as atlas_db
from atlas import (
    FeatureNotFound,
    NeedsMigration,
    NotAnAtlas,
    ReadOnlyAtlas,
    SchemaTooNew,
    create_atlas,
    migrate,
    open_atlas,
)
from atlas.synthetic import build_synthetic_atlas
from atlas.write import schema_indexes
from tests.conftest import query, sha256_of


# ---------------------------------------------------------------- opening
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotAnAtlas, match="no such file"):
        open_atlas(tmp_path / "nope.db")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(NotAnAtlas, match="directory"):
        open_atlas(tmp_path)


def test_not_sqlite(tmp_path: Path) -> None:
    p = tmp_path / "x.db"
    p.write_text("hello, I am a text file\n")
    with pytest.raises(NotAnAtlas, match="not an SQLite database"):
        open_atlas(p)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.db"
    p.write_bytes(b"")
    with pytest.raises(NotAnAtlas):
        open_atlas(p)


def test_sqlite_but_not_atlas(tmp_path: Path) -> None:
    p = tmp_path / "other.db"
    with sqlite3.connect(p) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(NotAnAtlas, match="without the atlas tables"):
        open_atlas(p)


def test_corrupt_sqlite(synthetic_atlas: Path) -> None:
    data = bytearray(synthetic_atlas.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # keep the magic, wreck the schema page
    synthetic_atlas.write_bytes(bytes(data))
    with pytest.raises(NotAnAtlas, match="corrupt"):
        open_atlas(synthetic_atlas)


def test_too_new(synthetic_atlas: Path) -> None:
    with sqlite3.connect(synthetic_atlas) as conn:
        conn.execute(f"PRAGMA user_version = {atlas_db.SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaTooNew, match="upgrade sae-atlas"):
        open_atlas(synthetic_atlas)


def test_readonly_by_default(synthetic_atlas: Path) -> None:
    with open_atlas(synthetic_atlas) as atlas:
        assert atlas.readonly
        with pytest.raises(ReadOnlyAtlas):
            atlas.add_label(0, "x")
        with pytest.raises(sqlite3.OperationalError):
            atlas.conn.execute("DELETE FROM labels")


def test_read_only_file_refuses_writer(synthetic_atlas: Path) -> None:
    os.chmod(synthetic_atlas, 0o444)
    try:
        with pytest.raises(ReadOnlyAtlas, match="not writable"):
            open_atlas(synthetic_atlas, readonly=False)
        with open_atlas(synthetic_atlas) as atlas:  # reading still works
            assert atlas.feature("L2.res/0").idx == 0
    finally:
        os.chmod(synthetic_atlas, 0o644)


def test_older_atlas_opens_read_only_until_migrated(synthetic_atlas: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Register a migration to the next version: the file on disk is then 'older'."""
    now, nxt = atlas_db.SCHEMA_VERSION, atlas_db.SCHEMA_VERSION + 1
    v_next = (nxt, "add a notes column to labels", "ALTER TABLE labels ADD COLUMN reviewer TEXT;")
    monkeypatch.setattr(atlas_db, "SCHEMA_VERSION", nxt)
    monkeypatch.setattr(atlas_db, "MIGRATIONS", [*atlas_db.MIGRATIONS, v_next])
    before = sha256_of(synthetic_atlas)
    with open_atlas(synthetic_atlas) as atlas:
        assert atlas.schema_version == now and atlas.readonly
        assert atlas.feature("L6.res/3").name == "L6.res/3"
    with pytest.raises(NeedsMigration, match="sae-atlas migrate"):
        open_atlas(synthetic_atlas, readonly=False)
    assert sha256_of(synthetic_atlas) == before  # opening never migrates

    assert migrate(synthetic_atlas) == [(nxt, "add a notes column to labels")]
    assert query(synthetic_atlas, "PRAGMA user_version") == [(nxt,)]
    assert query(synthetic_atlas, "SELECT schema_version FROM atlas_info") == [(nxt,)]
    assert (nxt,) in query(synthetic_atlas, "SELECT version FROM schema_migrations")
    assert "reviewer" in [r[1] for r in query(synthetic_atlas, "PRAGMA table_info(labels)")]
    with open_atlas(synthetic_atlas, readonly=False) as atlas:
        assert not atlas.readonly
    assert migrate(synthetic_atlas) == []  # idempotent


def test_failed_migration_rolls_back(synthetic_atlas: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = atlas_db.SCHEMA_VERSION
    bad = (now + 1, "broken", "ALTER TABLE labels ADD COLUMN ok TEXT;\nALTER TABLE no_such_table ADD COLUMN x TEXT;")
    monkeypatch.setattr(atlas_db, "SCHEMA_VERSION", now + 1)
    monkeypatch.setattr(atlas_db, "MIGRATIONS", [*atlas_db.MIGRATIONS, bad])
    with pytest.raises(sqlite3.OperationalError):
        migrate(synthetic_atlas)
    assert query(synthetic_atlas, "PRAGMA user_version") == [(now,)]
    assert "ok" not in [r[1] for r in query(synthetic_atlas, "PRAGMA table_info(labels)")]


# ---------------------------------------------------------------- reading
def test_feature_names(synthetic_atlas: Path) -> None:
    with open_atlas(synthetic_atlas) as atlas:
        f = atlas.feature("L6.res/17")
        (fid,) = query(
            synthetic_atlas, "SELECT feature_id FROM features JOIN saes USING (sae_id) WHERE name='L6.res' AND idx=17"
        )[0]
        assert f.feature_id == fid and f.layer == 6 and f.site == "resid_post"
        assert atlas.feature(f"#{fid}").name == "L6.res/17"
        assert atlas.feature(fid).name == "L6.res/17"
        for bad in ("L6.res/200", "L9.res/1", "nonsense", "#999999"):
            with pytest.raises(FeatureNotFound):
                atlas.feature(bad)


def test_card_matches_sql(synthetic_atlas: Path) -> None:
    with open_atlas(synthetic_atlas) as atlas:
        card = atlas.card("L2.res/30", k=20)
    fid = card.feature.feature_id
    promoted = query(
        synthetic_atlas,
        "SELECT token_id, value FROM token_scores WHERE feature_id=? AND phase='du' AND sign=1 ORDER BY rank",
        (fid,),
    )
    assert [(t.token_id, t.value) for t in card.promoted] == promoted and len(promoted) == 20
    assert all(t.value < 0 for t in card.suppressed)
    n_heads = query(synthetic_atlas, "SELECT COUNT(*) FROM head_scores WHERE feature_id=?", (fid,))[0][0]
    assert len(card.heads) == n_heads > 0
    n_out = query(synthetic_atlas, "SELECT COUNT(*) FROM edges WHERE src_feature=?", (fid,))[0][0]
    assert len(card.edges_out) == n_out == 16


def test_search_token_reverse_lookup(synthetic_atlas: Path) -> None:
    with open_atlas(synthetic_atlas) as atlas:
        hits = atlas.search_token("paris", limit=1000)
    ids = {r[0] for r in query(synthetic_atlas, "SELECT token_id FROM vocab WHERE key = 'paris'")}
    assert len(ids) == 2  # "Paris" and " Paris"
    expected = query(
        synthetic_atlas,
        f"SELECT feature_id, rank FROM token_scores WHERE phase='du' AND sign=1 AND token_id IN ({','.join(map(str, ids))})",
    )
    assert sorted((h.feature_id, h.rank) for h in hits) == sorted(expected)
    assert [h.rank for h in hits] == sorted(h.rank for h in hits)


def test_top_per_sae_merge_equals_full_scan(synthetic_atlas: Path) -> None:
    with open_atlas(synthetic_atlas) as atlas:
        assert "du_top1_z" in atlas.indexed_metrics()
        for asc in (False, True):
            got = [f.feature_id for f in atlas.top("du_top1_z", ascending=asc, limit=15, offset=3)]
            order = "ASC" if asc else "DESC"
            want = [
                r[0]
                for r in query(
                    synthetic_atlas,
                    f"SELECT feature_id FROM features WHERE du_top1_z IS NOT NULL ORDER BY du_top1_z {order}, feature_id LIMIT 15 OFFSET 3",
                )
            ]
            assert got == want
        in_layer = atlas.top("attn_k_mean", layer=6, lo=1.0, hi=2.0, limit=500)
        assert in_layer and all(f.layer == 6 and 1.0 <= f.metrics["attn_k_mean"] <= 2.0 for f in in_layer)
        n = query(
            synthetic_atlas,
            "SELECT COUNT(*) FROM features JOIN saes USING (sae_id) WHERE layer=6 AND attn_k_mean BETWEEN 1 AND 2",
        )[0][0]
        assert len(in_layer) == n


def test_table_counts_exact_and_estimated(synthetic_atlas: Path) -> None:
    with open_atlas(synthetic_atlas) as atlas:
        exact = atlas.counts()
        fast = atlas.table_counts()
        assert {t: n for t, (n, _) in fast.items()} == exact  # ANALYZE ran at the end of the build
        estimated = atlas.table_counts(exact_below=10_000)
    assert estimated["token_scores"] == (exact["token_scores"], False)
    assert estimated["saes"] == (2, True)


# ---------------------------------------------------------------- writing
def test_bulk_load_rebuilds_indexes(tmp_path: Path) -> None:
    p = build_synthetic_atlas(tmp_path / "a.db", n_features=60, layers=(1,), d_vocab=300)
    names = {r[0] for r in query(p, "SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")}
    assert {name for name, _ in schema_indexes()} <= names
    assert query(p, "PRAGMA foreign_key_check") == []
    assert query(p, "PRAGMA journal_mode") == [("delete",)]
    assert query(p, "SELECT COUNT(*) FROM sqlite_stat1")[0][0] > 0


def test_token_score_block_equals_per_list_writes(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    blocks = {(p, s): (rng.integers(0, 50, (5, 4)), rng.random((5, 4)) * s) for p in ("du", "ee") for s in (1, -1)}
    rows = {}
    for mode in ("block", "lists"):
        atlas = create_atlas(tmp_path / f"{mode}.db")
        with atlas, atlas.transaction():
            mid = atlas.add_model(
                name="m", source="m", source_kind="synthetic", architecture="x", n_layers=1, d_model=4, n_heads=1,
                n_kv_heads=1, d_head=4, d_vocab=50, tied_embeddings=False, norm_kind="rmsnorm",
            )  # fmt: skip
            sid = atlas.add_sae(
                model_id=mid,
                hook_name="h",
                site="resid_post",
                layer=0,
                d_in=4,
                d_sae=5,
                architecture="relu",
                source="s",
            )
            fids = np.arange(5) + atlas.feature_id_base(sid)
            if mode == "block":
                atlas.add_token_score_block(fids, blocks)
            else:
                for (p, s), (tok, val) in blocks.items():
                    atlas.add_token_scores(fids, p, s, tok, val)
        rows[mode] = query(tmp_path / f"{mode}.db", "SELECT * FROM token_scores ORDER BY 1, 2, 3, 4")
    assert rows["block"] == rows["lists"] and len(rows["block"]) == 80


def test_head_scores_role_array(synthetic_atlas: Path) -> None:
    with open_atlas(synthetic_atlas, readonly=False) as atlas, atlas.transaction():
        atlas.conn.execute("DELETE FROM head_scores WHERE feature_id = 0")
        atlas.add_head_scores(np.array([0, 0]), np.array([1, 2]), np.array(["q", "o"]), np.array([0.5, 0.25]))
    assert query(synthetic_atlas, "SELECT role, head_pk, score FROM head_scores WHERE feature_id=0 ORDER BY role") == [
        ("o", 2, 0.25),
        ("q", 1, 0.5),
    ]


def test_delete_label_user_only(synthetic_atlas: Path) -> None:
    with open_atlas(synthetic_atlas, readonly=False) as atlas:
        lid = atlas.add_label(5, "mine")
        heuristic = query(synthetic_atlas, "SELECT label_id FROM labels WHERE source='heuristic' LIMIT 1")[0][0]
        with pytest.raises(Exception, match="only user labels"):
            atlas.delete_label(heuristic)
        assert atlas.delete_label(lid) == (5, "mine", "user")
    assert query(synthetic_atlas, "SELECT COUNT(*) FROM labels WHERE label_id=?", (lid,)) == [(0,)]
    assert query(synthetic_atlas, "SELECT COUNT(*) FROM labels_fts WHERE labels_fts MATCH 'mine'") == [(0,)]


def test_wal_mode_atlas_read_without_side_files(synthetic_atlas: Path) -> None:
    with sqlite3.connect(synthetic_atlas) as conn:
        assert conn.execute("PRAGMA journal_mode = WAL").fetchone() == ("wal",)
    assert not Path(str(synthetic_atlas) + "-wal").exists()  # checkpointed and removed on close
    before = sha256_of(synthetic_atlas)
    with open_atlas(synthetic_atlas) as atlas:
        assert atlas.card("L2.res/1").promoted
    assert sha256_of(synthetic_atlas) == before
    assert sorted(p.name for p in synthetic_atlas.parent.iterdir()) == [synthetic_atlas.name]


@pytest.mark.parametrize("name", ["a#b.db", "what?.db", "100%.db", "sp ace.db"])
def test_odd_file_names(synthetic_atlas: Path, name: str) -> None:
    odd = synthetic_atlas.with_name(name)
    synthetic_atlas.rename(odd)
    with open_atlas(odd) as atlas:
        assert atlas.feature("L6.res/0").idx == 0
    with open_atlas(odd, readonly=False) as atlas:
        atlas.add_label(0, "ok")
    from atlas.maintenance import export_atlas

    export_atlas(odd, odd.with_name("out " + name), ["L2.res"])
    assert query(odd.with_name("out " + name), "SELECT COUNT(*) FROM saes") == [(1,)]


@pytest.mark.parametrize("limit", [1, 3, 5, 10, 25])
def test_search_token_limit_is_exact(synthetic_atlas: Path, limit: int) -> None:
    """The rank cut-off shortcut returns exactly the first `limit` rows of the full ordering."""
    ids = ",".join(str(r[0]) for r in query(synthetic_atlas, "SELECT token_id FROM vocab WHERE key = 'the'"))
    sql = (
        "SELECT feature_id, rank, value FROM token_scores JOIN features USING (feature_id) JOIN saes USING (sae_id) "
        f"WHERE phase='ee' AND sign=-1 AND token_id IN ({ids}) AND name LIKE ? "
        "ORDER BY rank, ABS(value) DESC, feature_id LIMIT ?"
    )
    with open_atlas(synthetic_atlas) as atlas:
        got = [(h.feature_id, h.rank, h.value) for h in atlas.search_token("the", phase="ee", sign=-1, limit=limit)]
        in_sae = [
            (h.feature_id, h.rank, h.value)
            for h in atlas.search_token("the", phase="ee", sign=-1, sae="L6.res", limit=limit)
        ]
    total = len(query(synthetic_atlas, sql, ("%", 10**6)))
    assert got == query(synthetic_atlas, sql, ("%", limit)) and len(got) == min(limit, total) > 0
    assert in_sae == query(synthetic_atlas, sql, ("L6.res", limit)) and in_sae


def test_edges_per_kind(synthetic_atlas: Path) -> None:
    with open_atlas(synthetic_atlas) as atlas:
        fid = atlas.resolve_feature("L6.res/40")
        for direction in ("out", "in"):
            everything = atlas.edges(fid, direction)
            kept = atlas.edges(fid, direction, per_kind=2)
            want = []
            for kind in sorted({e.kind for e in everything}):
                want += sorted((e for e in everything if e.kind == kind), key=lambda e: -abs(e.score))[:2]
            assert [(e.kind, e.src_feature, e.dst_feature, e.score) for e in kept] == [
                (e.kind, e.src_feature, e.dst_feature, e.score) for e in want
            ]
        assert len(atlas.edges(fid, "out", per_kind=2)) == 8  # 4 kinds x 2
        assert atlas.card(fid, edge_limit=0).edges_out == []
        # the card keeps the same strongest-per-kind edges, in both directions, with the same names
        card = atlas.card(fid, edge_limit=2)
        assert card.edges_out == atlas.edges(fid, "out", per_kind=2)
        assert card.edges_in == atlas.edges(fid, "in", per_kind=2) and card.edges_in


def test_card_tokens_are_the_top_k_of_each_list(synthetic_atlas: Path) -> None:
    with open_atlas(synthetic_atlas) as atlas:
        fid = atlas.resolve_feature("L6.res/40")
        full = atlas.token_scores(fid)
        card = atlas.card("L6.res/40", k=3)
        for got, phase, sign in (
            (card.promoted, "du", 1), (card.suppressed, "du", -1), (card.inputs, "ee", 1), (card.inputs_negative, "ee", -1)
        ):  # fmt: skip
            want = [t for t in full if t.phase == phase and t.sign == sign][:3]
            assert got == want and len(got) == 3


def test_feature_in_index_but_not_in_table_is_a_clear_error(tmp_path):
    """A damaged file whose index names a feature the join cannot read gives FeatureNotFound, not a TypeError."""
    import sqlite3

    from atlas import FeatureNotFound, open_atlas
    from atlas.synthetic import build_synthetic_atlas

    path = build_synthetic_atlas(tmp_path / "a.db", n_features=8, layers=(2,), d_vocab=64, label_every=0)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("UPDATE features SET sae_id = 999 WHERE idx = 1")  # the join to saes now finds nothing
    conn.commit()
    conn.close()
    with open_atlas(path) as atlas:
        fid = atlas.conn.execute("SELECT feature_id FROM features WHERE idx = 1").fetchone()[0]
        with pytest.raises(FeatureNotFound, match="damaged"):
            atlas.feature(fid)


def test_describe_criterion_reads_the_builders_provenance_entry():
    from atlas.read import describe_criterion

    crit = {"column": "du_top1_z", "tau": 6.270191, "how": "random-quantile", "quantile": 0.99, "n_random": 1024}
    assert describe_criterion(crit) == "du_top1_z >= 6.27 (99th percentile over 1024 random directions)"
    assert describe_criterion({"column": "ee_top1_z", "tau": 5.0, "how": "fixed"}) == "ee_top1_z >= 5"
    assert describe_criterion("free text") == "free text"
