"""atlas.listing and the TUI's non-UI helpers, checked against brute-force SQL and numpy."""

from __future__ import annotations

import json

import pytest

from atlas import open_atlas
from atlas import query as sqlmod
from atlas.errors import BadQuery
from atlas.listing import (
    FeatureFilter,
    count_features,
    feature_page,
    indexed_metrics,
    table_counts,
    top_tokens,
)
from tui.history import History
from tui.keymap import BadKeymap, load_keymap
from tui.search import search_features
from tui.source import AtlasSource
from tui.testing import build_fixture_atlas


@pytest.fixture(scope="module")
def atlas_path(tmp_path_factory):
    return build_fixture_atlas(tmp_path_factory.mktemp("listing") / "fixture.db", n_features=600, layers=(1, 3, 5))


@pytest.fixture()
def conn(atlas_path):
    a = open_atlas(atlas_path)
    yield a.conn
    a.close()


def walk(conn, flt, limit):
    ids, cursor, pages = [], None, 0
    while True:
        page = feature_page(conn, flt, limit=limit, after=cursor)
        ids += [r.feature_id for r in page.rows]
        pages += 1
        if page.cursor is None:
            return ids, pages
        cursor = page.cursor


def brute(conn, where="1", params=(), order="f.feature_id"):
    return [
        r[0]
        for r in conn.execute(
            f"SELECT f.feature_id FROM features f JOIN saes s USING (sae_id) WHERE {where} ORDER BY {order}", params
        )
    ]


@pytest.mark.parametrize("descending", [True, False])
@pytest.mark.parametrize("metric", ["du_top1_z", "predicts_tokens", "du_entropy"])
def test_keyset_pages_match_a_full_sort_across_saes(conn, metric, descending):
    # predicts_tokens has huge ties (0/1): the feature_id tie-break must keep pages exact.
    d = "DESC" if descending else "ASC"
    expected = brute(conn, f"f.{metric} IS NOT NULL", order=f"f.{metric} {d}, f.feature_id {d}")
    got, pages = walk(conn, FeatureFilter(metric=metric, descending=descending), limit=37)
    assert got == expected
    assert pages == -(-len(expected) // 37) or pages == len(expected) // 37 + 1


def test_filters_sae_layer_label_kind_and_range(conn):
    sae2 = conn.execute("SELECT sae_id FROM saes WHERE layer = 3").fetchone()[0]
    flt = FeatureFilter(sae_ids=(sae2,), label_kind="semantic", metric="du_top1_z", lo=2.0, hi=9.0)
    expected = brute(
        conn,
        "f.sae_id = ? AND f.du_top1_z BETWEEN 2 AND 9 AND EXISTS "
        "(SELECT 1 FROM labels l WHERE l.feature_id = f.feature_id AND l.kind = 'semantic')",
        (sae2,),
        "f.du_top1_z DESC, f.feature_id DESC",
    )
    assert expected, "fixture should have matches"
    assert walk(conn, flt, 10)[0] == expected
    assert count_features(conn, flt) == len(expected)
    by_layer = FeatureFilter(layer=5, label_kind="unlabelled")
    expected = brute(conn, "s.layer = 5 AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.feature_id = f.feature_id)")
    assert walk(conn, by_layer, 50)[0] == expected
    # a range on another column than the sort
    flt = FeatureFilter(metric="attn_q_mean", range_metric="predicts_tokens", lo=1, hi=1, descending=False)
    expected = brute(conn, "f.predicts_tokens = 1", order="f.attn_q_mean, f.feature_id")
    assert walk(conn, flt, 25)[0] == expected


def test_rows_carry_names_tokens_and_labels(conn):
    page = feature_page(conn, FeatureFilter(), limit=5, tokens=3)
    r = page.rows[0]
    assert r.name == conn.execute("SELECT name FROM feature_names WHERE feature_id = ?", (r.feature_id,)).fetchone()[0]
    want = [
        t[0]
        for t in conn.execute(
            "SELECT token FROM token_scores_view WHERE feature_id = ? AND phase = 'du' AND sign = 1 ORDER BY rank LIMIT 3",
            (r.feature_id,),
        )
    ]
    assert list(r.top_tokens) == want
    assert top_tokens(conn, [r.feature_id], k=3)[r.feature_id] == want
    assert r.label == "synthetic feature 0 words" and r.label_kind == "semantic"  # label_every=3 labels idx 0


def test_bad_names_never_reach_sql(conn):
    with pytest.raises(BadQuery):
        feature_page(conn, FeatureFilter(metric="du_top1_z; DROP TABLE features"))
    with pytest.raises(BadQuery):
        feature_page(conn, FeatureFilter(label_kind="nonsense"))
    with pytest.raises(BadQuery):
        feature_page(conn, FeatureFilter(lo=1.0))  # a range with no metric


def test_table_counts_and_indexed_metrics(conn):
    counts = table_counts(conn)
    for t in ("features", "token_scores", "labels"):
        assert counts[t] == conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
    assert {"du_top1_z", "attn_q_mean"} <= indexed_metrics(conn)
    assert "du_entropy" not in indexed_metrics(conn)


def test_search_finds_tokens_labels_and_ids(atlas_path):
    with open_atlas(atlas_path) as a:
        hits = search_features(a, "paris")
        oracle = a.search_token("paris", phase="du", sign=1, limit=25)
        promotes = [h for h in hits if h.kind == "promotes"]
        assert [h.feature_id for h in promotes] == [h.feature_id for h in oracle] and promotes
        assert all(h.match.replace("␣", "").lower() == "paris" for h in promotes)
        assert {"promotes", "suppresses", "driven by"} <= {h.kind for h in hits}
        by_id = search_features(a, "L3.res/7")
        assert by_id[0].kind == "id" and by_id[0].feature_id == a.resolve_feature("L3.res/7")
        assert search_features(a, "#5")[0].feature_id == 5
        labels = [h for h in search_features(a, "punctuation") if h.kind == "label"]
        assert labels and all("punctuation" in h.match for h in labels)
        assert search_features(a, "   ") == []


def test_sql_pages_errors_and_export(conn, tmp_path):
    cols, rows, more = sqlmod.run_page(
        conn, "SELECT feature_id FROM features ORDER BY feature_id;", offset=0, limit=250
    )
    assert cols == ["feature_id"] and [r[0] for r in rows] == list(range(250)) and more
    _, rows, more = sqlmod.run_page(conn, "-- comment\nSELECT feature_id FROM features ORDER BY feature_id", offset=500)
    assert [r[0] for r in rows] == list(range(500, 600)) and not more
    _, rows, _ = sqlmod.run_page(conn, "PRAGMA table_info(saes)")
    assert any(r[1] == "d_sae" for r in rows)
    for bad, msg in (("SELEC 1", "syntax error"), ("DELETE FROM labels", "refused"), ("SELECT nope FROM saes", "no such column"),
                     ("SELECT 1; SELECT 2", "one statement"), ("ATTACH 'x.db' AS x", "not authorized"), ("", "empty")):  # fmt: skip
        with pytest.raises(BadQuery, match=msg):
            sqlmod.run_page(conn, bad)
    with pytest.raises(BadQuery, match="stopped"):
        sqlmod.run_page(
            conn, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c", timeout=0.2
        )
    n = sqlmod.export(conn, "SELECT name, layer FROM saes ORDER BY layer", tmp_path / "s.csv")
    assert n == 3 and (tmp_path / "s.csv").read_text().splitlines() == [
        "name,layer",
        "L1.res,1",
        "L3.res,3",
        "L5.res,5",
    ]
    sqlmod.export(conn, "SELECT name, layer FROM saes ORDER BY layer", tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text())[2] == {"name": "L5.res", "layer": 5}
    with pytest.raises(BadQuery):
        sqlmod.export(conn, "SELECT nope", tmp_path / "bad.csv")
    assert not (tmp_path / "bad.csv").exists()


def test_history_is_browser_like():
    h: History[int] = History()
    assert h.back() is None and h.current is None
    for x in (1, 2, 3):
        h.visit(x)
    assert h.back() == 2 and h.back() == 1 and h.back() is None
    assert h.forward() == 2
    h.visit(9)  # drops 3
    assert h.forward() is None and h.back() == 2 and h.forward() == 9 and len(h) == 3


def test_keymap_file(tmp_path):
    p = tmp_path / "keys.toml"
    p.write_text('[keymap]\n"card.back" = "h,backspace"\n')
    assert load_keymap(p) == {"card.back": "h,backspace"}
    p.write_text('[keymap]\n"card.back" = 3\n')
    with pytest.raises(BadKeymap):
        load_keymap(p)
    with pytest.raises(BadKeymap):
        load_keymap(tmp_path / "missing.toml")


def test_label_targets(atlas_path, monkeypatch):
    assert AtlasSource(atlas_path).label_target().where == "atlas"
    t = AtlasSource(atlas_path, force_readonly=True).label_target()
    assert (t.where, t.reason) == ("overlay", "opened with --read-only")
    monkeypatch.setattr("atlas.labels.is_bundled_example", lambda p: True)
    t = AtlasSource(atlas_path).label_target()
    assert (t.where, t.reason) == ("overlay", "the bundled example is read-only")


def test_label_search_ranks_small_answers_and_bounds_big_ones(conn, monkeypatch, atlas_path):
    """The one label search (atlas.read, used by the CLI and the browser): ranked by bm25 when few labels
    match, the first ones in label order when very many do, so a common word stays cheap."""
    import atlas.read as read

    oracle = [
        r[0]
        for r in conn.execute(
            "SELECT l.feature_id FROM labels_fts JOIN labels l ON l.label_id = labels_fts.rowid "
            "WHERE labels_fts MATCH ? ORDER BY labels_fts.rank LIMIT 25",
            ("feature 9 punctuation",),
        )
    ]
    with open_atlas(atlas_path) as a:
        assert [lab.feature_id for _, lab in a.search_labels("feature 9 punctuation", limit=25)] == oracle and oracle
        monkeypatch.setattr(read, "RANKED_LABEL_MATCHES", 5)  # "punctuation" matches ~100 labels here
        got = a.search_labels("punctuation", limit=10)
        assert len(got) == 10 and all("punctuation" in lab.text for _, lab in got)
        assert a.search_labels('bad "syntax') == []
