"""Schema 4 (transcoders and CLTs in saes, virtual edges with percentiles, virtual_baselines, decoder_spread):
a migrated v3 atlas is exactly a new one and keeps every row, a v3 file still reads and merges, and the
write / read API round-trips the new rows (show prints a dictionary's kind and a CLT feature's spread)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from atlas import SCHEMA_VERSION, create_atlas, migrate, open_atlas
from atlas.cli import cli
from atlas.schema_check import check_schema
from tests.conftest import query
from tests.schema_versions import as_v3
from tests.test_schema_v2 import schema_of


@pytest.fixture
def v3_atlas(synthetic_atlas: Path) -> Path:
    return as_v3(synthetic_atlas)


def test_migrating_v3_gives_exactly_the_v4_schema_and_keeps_every_row(v3_atlas: Path, tmp_path: Path) -> None:
    assert SCHEMA_VERSION == 4
    saes = query(v3_atlas, "SELECT * FROM saes ORDER BY sae_id")
    edges = query(v3_atlas, "SELECT * FROM edges ORDER BY edge_id")
    with open_atlas(v3_atlas) as old:
        assert old.schema_version == 3 and old.readonly
        counts = old.counts()
    assert [v for v, _ in migrate(v3_atlas)] == [4]
    fresh = tmp_path / "fresh.db"
    create_atlas(fresh).close()
    assert schema_of(v3_atlas) == schema_of(fresh)
    with open_atlas(v3_atlas) as new:
        assert new.schema_version == 4 and new.counts() == counts and counts["edges"] > 0
        assert {s.sae_kind for s in new.saes()} == {"sae"}
    # old columns unchanged, new ones at their defaults; no reference broken, no feature cascaded away
    assert [r[:-5] for r in query(v3_atlas, "SELECT * FROM saes ORDER BY sae_id")] == saes
    assert {r[-5:] for r in query(v3_atlas, "SELECT * FROM saes")} == {("sae", None, None, None, None)}
    assert [r[:-1] for r in query(v3_atlas, "SELECT * FROM edges ORDER BY edge_id")] == edges
    assert query(v3_atlas, "PRAGMA foreign_key_check") == []


def test_a_v3_file_is_known_to_the_schema_check(v3_atlas: Path) -> None:
    conn = sqlite3.connect(v3_atlas)
    rep = check_schema(conn, 3)
    conn.close()
    assert (rep.refused, rep.write_refused, rep.changed_views, rep.other_objects) == ([], [], [], [])


def test_a_v3_file_reads(v3_atlas: Path, runner: CliRunner) -> None:
    r = runner.invoke(cli, ["--db", str(v3_atlas), "show", "L2.res/1"])
    assert r.exit_code == 0, r.output
    assert "transcoder" not in r.output and "decoder spread" not in r.output
    with open_atlas(v3_atlas) as atlas:
        assert atlas.virtual_baselines() == [] and atlas.decoder_spread(0) == []
        assert all(e.percentile is None for e in atlas.card("L2.res/1").edges_out)


def test_export_and_merge_read_a_v3_file(v3_atlas: Path, synthetic_atlas_master: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    early, late, both = tmp_path / "early.db", tmp_path / "late.db", tmp_path / "both.db"
    r = runner.invoke(cli, ["--db", str(v3_atlas), "export", "--sae", "L2.res", str(early)])
    assert r.exit_code == 0, r.output
    assert query(early, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert query(early, "SELECT DISTINCT sae_kind FROM saes") == [("sae",)]
    assert (
        runner.invoke(cli, ["--db", str(synthetic_atlas_master), "export", "--sae", "L6.res", str(late)]).exit_code == 0
    )
    r = runner.invoke(cli, ["merge", str(as_v3(late)), str(early), "-o", str(both)])
    assert r.exit_code == 0, r.output
    assert query(both, "SELECT name FROM saes ORDER BY name") == [("L2.res",), ("L6.res",)]


def _clt_and_transcoder(path: Path) -> tuple[int, int]:
    atlas = create_atlas(path)
    try:
        model_id = atlas.add_model(
            name="m", source="x", source_kind="synthetic", architecture="Llama", n_layers=4, d_model=8,
            n_heads=2, n_kv_heads=2, d_head=4, d_vocab=10, tied_embeddings=0, norm_kind="rmsnorm",
        )  # fmt: skip
        atlas.add_vocab(model_id, [f"t{i}" for i in range(10)])
        tc = atlas.add_sae(
            model_id=model_id, hook_name="blocks.1.mlp.hook_in", site="mlp_in", layer=1, d_in=8, d_sae=3,
            architecture="topk", k=2, source="tc", sae_kind="transcoder", out_hook_name="blocks.1.hook_mlp_out",
            out_site="mlp_out", d_out=8,
        )  # fmt: skip
        clt = atlas.add_sae(
            model_id=model_id, name="L2.clt", hook_name="blocks.2.mlp.hook_in", site="mlp_in", layer=2, d_in=8,
            d_sae=2, architecture="jumprelu", source="clt", sae_kind="clt", out_hook_name="blocks.2.hook_mlp_out",
            out_site="mlp_out", out_layers=[2, 3], d_out=8,
        )  # fmt: skip
        base_tc, base_clt = atlas.feature_id_base(tc), atlas.feature_id_base(clt)
        with atlas.transaction():
            atlas.add_decoder_spread(np.array([base_clt, base_clt + 1]), [2, 3], np.array([[3.0, 1.0], [0.5, 2.0]]))
            atlas.add_virtual_baseline(tc, clt, n_samples=1000, p50=0.1, p90=0.2, p99=0.3, p999=0.4, max=0.5)
            atlas.add_edges("virtual", np.array([base_tc]), np.array([base_clt]), np.array([-0.7]), np.array([0]),
                            percentiles=np.array([99.9]))  # fmt: skip
            atlas.add_edges("virtual_in", np.array([base_tc]), np.array([base_clt]), np.array([-0.7]), np.array([0]),
                            percentiles=np.array([99.9]))  # fmt: skip
        return tc, clt
    finally:
        atlas.close()


def test_write_and_read_transcoders_clts_spread_baselines_and_virtual_edges(tmp_path: Path, runner: CliRunner) -> None:
    path = tmp_path / "tc.db"
    tc, clt = _clt_and_transcoder(path)
    with open_atlas(path) as atlas:
        kinds = {s.name: (s.sae_kind, s.out_site, s.write_layers, s.d_out) for s in atlas.saes()}
        assert kinds == {"L1.tc": ("transcoder", "mlp_out", (1,), 8), "L2.clt": ("clt", "mlp_out", (2, 3), 8)}
        assert json.loads(atlas.sae("L2.clt").out_layers) == [2, 3]
        spread = atlas.decoder_spread(atlas.resolve_feature("L2.clt/1"))
        assert [(s.out_layer, s.norm) for s in spread] == [(2, 0.5), (3, 2.0)]
        (b,) = atlas.virtual_baselines()
        assert (b.src, b.dst, b.n_samples, b.p99, b.n_pairs) == ("L1.tc", "L2.clt", 1000, 0.3, None)
        assert atlas.virtual_baselines(src_sae_id=clt) == []
        out = atlas.edges(atlas.resolve_feature("L1.tc/0"), "out")
        assert [(e.kind, e.dst, e.score, e.rank, e.percentile) for e in out] == [
            ("virtual", "L2.clt/0", -0.7, 0, 99.9),
            ("virtual_in", "L2.clt/0", -0.7, 0, 99.9),
        ]
    assert query(path, "SELECT kind, src_layer, dst_layer, percentile FROM virtual_edges_view ORDER BY kind") == [
        ("virtual", 1, 2, 99.9),
        ("virtual_in", 1, 2, 99.9),
    ]
    r = runner.invoke(cli, ["--db", str(path), "show", "L2.clt/1"])
    assert r.exit_code == 0, r.output
    assert "cross-layer transcoder -> blocks.2.hook_mlp_out" in r.output
    spread_lines = [line for line in r.output.splitlines() if line.startswith("  L2 ") or line.startswith("  L3 ")]
    assert len(spread_lines) == 2 and spread_lines[1].count("█") == 12 and spread_lines[0].count("█") == 3
    r = runner.invoke(cli, ["--db", str(path), "show", "L1.tc/0"])
    assert (
        "transcoder -> blocks.1.hook_mlp_out" in r.output and "(99.9%)" in r.output and "decoder spread" not in r.output
    )
    # each kind from the side it is ranked for: virtual out of the writer, virtual_in into the reader
    assert r.output.count("virtual weights (percentile) out") == 1 and "virtual weights (percentile) in" not in r.output
    r = runner.invoke(cli, ["--db", str(path), "show", "L2.clt/0"])
    assert r.output.count("virtual weights (percentile) in") == 1 and "-0.7000  (99.9%)" in r.output
    r = runner.invoke(cli, ["--db", str(path), "validate"])
    assert r.exit_code == 0, r.output


def test_the_schema_refuses_an_unknown_kind_or_site(tmp_path: Path) -> None:
    path = tmp_path / "tc.db"
    _clt_and_transcoder(path)
    conn = sqlite3.connect(path)
    for sql in (
        "UPDATE saes SET sae_kind = 'crosscoder'",
        "UPDATE saes SET site = 'mlp_hidden'",
        "UPDATE saes SET out_layers = 'not json'",
        "UPDATE edges SET percentile = 101",
        "UPDATE edges SET kind = 'global'",
    ):
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(sql)
    conn.close()


def test_validate_finds_a_virtual_edge_against_the_stream(tmp_path: Path, runner: CliRunner) -> None:
    path = tmp_path / "tc.db"
    _clt_and_transcoder(path)
    atlas = open_atlas(path, readonly=False)
    try:
        clt, tc = atlas.resolve_feature("L2.clt/0"), atlas.resolve_feature("L1.tc/1")
        with atlas.transaction():  # the CLT reads layer 2: nothing it writes reaches the transcoder of layer 1
            atlas.add_edges("virtual", np.array([clt]), np.array([tc]), np.array([0.5]), np.array([0]))
    finally:
        atlas.close()
    r = runner.invoke(cli, ["--db", str(path), "validate"])
    assert r.exit_code == 1 and "no residual path for L2.clt -> L1.tc" in r.output, r.output


def test_the_tui_card_shows_a_clt_features_decoder_spread(tmp_path: Path) -> None:
    """The browser's card draws the spread as `show` prints it (bars scaled to the largest norm); not on a transcoder."""
    import asyncio

    from textual.widgets import Static

    from tui.app import make_app
    from tui.screens.feature_card import FeatureCardScreen
    from tui.testing import settle

    path = tmp_path / "tc.db"
    _clt_and_transcoder(path)
    with open_atlas(path) as atlas:
        clt_f, tc_f = atlas.resolve_feature("L2.clt/1"), atlas.resolve_feature("L1.tc/0")

    async def go() -> tuple[str, bool, bool]:
        app = make_app(path)
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot)
            app.open_feature(clt_f)
            await settle(pilot)
            card = app.screen
            assert isinstance(card, FeatureCardScreen)
            widget = card.query_one("#card-spread", Static)
            text, shown = str(widget.render()), widget.display
            card.show(tc_f)
            await settle(pilot)
            return text, shown, card.query_one("#card-spread", Static).display

    text, shown, shown_on_tc = asyncio.run(go())
    assert shown and not shown_on_tc
    rows = [line for line in text.splitlines() if line.startswith("  L")]
    assert [r.split()[0] for r in rows] == ["L2", "L3"]
    assert rows[0].count("█") == 6 and rows[1].count("█") == 24  # 0.5 and 2.0 of a 24-cell bar
