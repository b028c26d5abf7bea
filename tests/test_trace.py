"""`sae-atlas trace` and atlas/trace.py on an atlas with planted virtual edges (tests/trace_fixtures.py).

Every expected tree here is read off the planted table by hand: nodes, their order, the depth and
percentile cuts, which repeated feature is marked seen, and each node's tokens.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from atlas import open_atlas
from atlas.cli import cli
from atlas.trace import NeedsVirtualEdges, trace
from tests.trace_fixtures import build_trace_atlas, driven_by, promoted


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    return build_trace_atlas(tmp_path_factory.mktemp("trace") / "planted.db")


@pytest.fixture()
def own(planted: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "own.db"
    shutil.copy(planted, dst)
    return dst


def _trace(path: Path, name: str, **kw):
    with open_atlas(path) as a:
        return trace(a.conn, a.resolve_feature(name), **kw)


def shape(tr) -> list[tuple]:
    return [(n.node, n.parent, n.depth, n.name, n.score, n.percentile, n.seen, n.cut) for n in tr.nodes]


def test_down_trace_is_the_planted_tree(planted: Path) -> None:
    tr = _trace(planted, "L1.res/0", direction="down", depth=2, top=3)
    assert shape(tr) == [
        (0, None, 0, "L1.res/0", None, None, False, None),
        (1, 0, 1, "L5.res/4", 0.8, 99.9, False, "no edges"),  # strongest by percentile, though not by score
        (2, 0, 1, "L3.res/2", 0.9, 99.5, False, None),
        (3, 0, 1, "L3.res/5", -0.7, 99.0, False, None),
        (4, 2, 2, "L5.res/4", 0.6, 98.0, True, "seen"),  # a diamond: L5/4 is expanded once, above
        (5, 2, 2, "L5.res/7", 0.5, 97.0, False, "depth"),
        (6, 3, 2, "L5.res/3", 0.4, 95.0, False, "depth"),
    ]
    # every node carries its top promoted tokens, the leaves' being the direct path to the logits
    assert [list(n.tokens) for n in tr.nodes] == [promoted(n.name) for n in tr.nodes]
    assert [n.pair for n in tr.nodes] == [None, "L1.res -> L5.res", "L1.res -> L3.res", "L1.res -> L3.res",
                                          "L3.res -> L5.res", "L3.res -> L5.res", "L3.res -> L5.res"]  # fmt: skip
    assert tr.note is None


def test_depth_top_and_percentile_cuts(planted: Path) -> None:
    one = _trace(planted, "L1.res/0", depth=1, top=3)
    assert [(n.name, n.cut) for n in one.nodes] == [
        ("L1.res/0", None), ("L5.res/4", "depth"), ("L3.res/2", "depth"), ("L3.res/5", "depth")
    ]  # fmt: skip
    high = _trace(planted, "L1.res/0", depth=3, top=3, min_percentile=99.2)
    assert [(n.name, n.cut) for n in high.nodes] == [
        ("L1.res/0", None), ("L5.res/4", "no edges"), ("L3.res/2", "no edges")  # L3/2's edges are below 99.2
    ]  # fmt: skip
    single = _trace(planted, "L1.res/0", depth=3, top=1)
    assert [n.name for n in single.nodes] == ["L1.res/0", "L5.res/4"]
    wide = _trace(planted, "L1.res/0", depth=1, top=5)  # ranks are per dictionary pair: all five candidates
    assert [(n.name, n.percentile) for n in wide.nodes[1:]] == [
        ("L5.res/4", 99.9), ("L3.res/2", 99.5), ("L3.res/5", 99.0), ("L3.res/1", 60.0), ("L5.res/6", 40.0)
    ]  # fmt: skip


def test_up_trace_follows_virtual_in_by_reader(planted: Path) -> None:
    tr = _trace(planted, "L5.res/4", direction="up", depth=3, top=2)
    assert shape(tr) == [
        (0, None, 0, "L5.res/4", None, None, False, None),
        (1, 0, 1, "L1.res/0", 0.8, 99.9, False, "no edges"),
        (2, 0, 1, "L3.res/2", 0.6, 98.0, False, None),
        (3, 2, 2, "L1.res/0", 0.9, 99.5, True, "seen"),
    ]
    assert [list(n.tokens) for n in tr.nodes] == [driven_by(n.name) for n in tr.nodes]  # input tokens going up
    # edges keep the forward direction: the writer is src
    assert [(e.src_feature, e.dst_feature, e.kind) for e in tr.edges][0] == (
        tr.nodes[1].feature_id, tr.nodes[0].feature_id, "virtual_in"
    )  # fmt: skip


def test_max_nodes_cuts_and_says_so(planted: Path) -> None:
    tr = _trace(planted, "L1.res/0", depth=2, top=3, max_nodes=3)
    assert [n.name for n in tr.nodes] == ["L1.res/0", "L5.res/4", "L3.res/2"]
    assert "cut at 3 nodes" in tr.note


def test_cli_tree_text(planted: Path) -> None:
    r = CliRunner().invoke(cli, ["--db", str(planted), "trace", "L1.res/0", "--depth", "2"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("L1.res/0  (#0)  layer 1 resid_post")
    assert lines[1] == "  promotes: p1_0a p1_0b p1_0c"
    tree = [line for line in lines if "─ " in line]
    assert tree == [
        "  ├─ L5.res/4  L5  +0.8000  p99.9  promotes: p5_4a p5_4b p5_4c",
        "  ├─ L3.res/2  L3  +0.9000  p99.5  promotes: p3_2a p3_2b p3_2c",
        "  │  ├─ L5.res/4  L5  +0.6000  p98.0  (seen)  promotes: p5_4a p5_4b p5_4c",
        "  │  └─ L5.res/7  L5  +0.5000  p97.0  promotes: p5_7a p5_7b p5_7c",
        "  └─ L3.res/5  L3  -0.7000  p99.0  promotes: p3_5a p3_5b p3_5c",
        "     └─ L5.res/3  L5  +0.4000  p95.0  promotes: p5_3a p5_3b p5_3c",
    ]


def test_cli_json_schema(planted: Path) -> None:
    r = CliRunner().invoke(cli, ["--db", str(planted), "trace", "L5.res/4", "--up", "--depth", "3", "--top", "2",
                                 "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert set(d) == {"root", "direction", "edge_kind", "depth", "top", "min_percentile", "token_list", "note",
                      "nodes", "edges"}  # fmt: skip
    assert (d["direction"], d["edge_kind"], d["token_list"]) == ("up", "virtual_in", "ee+")
    assert set(d["nodes"][0]) == {"node", "parent", "depth", "feature_id", "name", "sae", "layer", "site", "score",
                                  "percentile", "rank", "pair", "tokens", "seen", "cut"}  # fmt: skip
    assert [n["name"] for n in d["nodes"]] == ["L5.res/4", "L1.res/0", "L3.res/2", "L1.res/0"]
    assert set(d["edges"][0]) == {"src_feature", "dst_feature", "kind", "score", "percentile", "rank", "pair",
                                  "parent_node", "child_node"}  # fmt: skip
    assert [(e["parent_node"], e["child_node"], e["score"]) for e in d["edges"]] == [(0, 1, 0.8), (0, 2, 0.6),
                                                                                     (2, 3, 0.9)]  # fmt: skip


def test_feature_with_no_edges_says_so_and_shows_its_tokens(planted: Path) -> None:
    r = CliRunner().invoke(cli, ["--db", str(planted), "trace", "L1.res/7"])
    assert r.exit_code == 0, r.output
    assert "L1.res/7 has no virtual edges to later layers; its direct tokens are shown" in r.output
    assert "promotes: p1_7a p1_7b p1_7c" in r.output
    r = CliRunner().invoke(cli, ["--db", str(planted), "trace", "L1.res/0", "--min-percentile", "99.95"])
    assert "has no virtual edges to later layers at or above percentile 99.95" in r.output


@pytest.mark.parametrize("suffix", [".txt", ".svg", ".png"])
def test_out_file(planted: Path, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"tree{suffix}"
    r = CliRunner().invoke(cli, ["--db", str(planted), "trace", "L1.res/0", "--out", str(out)])
    assert r.exit_code == 0, r.output
    data = out.read_bytes()
    if suffix == ".txt":
        assert "L3.res/2  L3  +0.9000  p99.5" in data.decode()
    elif suffix == ".svg":
        assert b"<svg" in data[:1000]
    else:
        assert data[:8] == b"\x89PNG\r\n\x1a\n"


def _one_error_line(r) -> str:
    assert r.exit_code != 0, r.output
    assert "Traceback" not in r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1, r.output
    return lines[0]


def test_an_atlas_without_virtual_edges_is_told_what_to_build(own: Path) -> None:
    c = sqlite3.connect(own)
    with c:
        c.execute("DELETE FROM edges")
        c.execute("DELETE FROM virtual_baselines")
    c.close()
    line = _one_error_line(CliRunner().invoke(cli, ["--db", str(own), "trace", "L1.res/0"]))
    assert "trace needs an atlas built with the `virtual` pass" in line
    with open_atlas(own) as a, pytest.raises(NeedsVirtualEdges):
        trace(a.conn, 0)


def test_an_old_schema_is_told_what_to_build(own: Path) -> None:
    """A schema 3 file (no percentile column, no virtual kinds): one line, exit 1, and the file untouched."""
    from tests.schema_versions import as_v3

    c = sqlite3.connect(own)
    with c:
        c.execute("DELETE FROM edges WHERE kind IN ('virtual', 'virtual_in')")  # kinds a schema 3 file cannot hold
    c.close()
    as_v3(own)
    before = own.read_bytes()
    line = _one_error_line(CliRunner().invoke(cli, ["--db", str(own), "trace", "L1.res/0"]))
    assert "trace needs an atlas built with the `virtual` pass (schema 4 or later; this one is schema 3)" in line
    assert own.read_bytes() == before


@pytest.mark.parametrize(
    ("column", "value", "want"),
    [
        ("score", "'big'", "score is text 'big', not a number"),
        ("percentile", "'high'", "percentile is text 'high', not a number or NULL"),
        ("percentile", "250.0", "not a percentile between 0 and 100"),
        ("rank", "1.5", "rank is float 1.5, not an integer"),
        ("dst_feature", "'x'", "dst_feature is text 'x', not an integer"),
        ("dst_feature", "99999", "names feature #99999, which has no readable row"),
    ],
)
def test_damaged_edges_are_one_line(own: Path, column: str, value: str, want: str) -> None:
    c = sqlite3.connect(own, isolation_level=None)
    c.execute("PRAGMA ignore_check_constraints = ON")
    c.execute("PRAGMA foreign_keys = OFF")
    c.execute(f"UPDATE edges SET {column} = {value} WHERE kind = 'virtual' AND score = 0.9")
    c.close()
    line = _one_error_line(CliRunner().invoke(cli, ["--db", str(own), "trace", "L1.res/0"]))
    assert want in line


def test_null_score_is_one_line(own: Path) -> None:
    from tests.hostile_atlases import _force

    _force(own, "edges", "score", "score       REAL    NOT NULL", None, "WHERE kind = 'virtual' AND score = 0.9")
    line = _one_error_line(CliRunner().invoke(cli, ["--db", str(own), "trace", "L1.res/0"]))
    assert "score is NULL, not a number" in line


def test_usage_errors_are_one_line(planted: Path, tmp_path: Path) -> None:
    for args in (["L1.res/0", "--depth", "0"], ["L1.res/0", "--out", str(tmp_path / "x.pdf")], ["nope/1"]):
        line = _one_error_line(CliRunner().invoke(cli, ["--db", str(planted), "trace", *args]))
        assert line.startswith("Error:")
    r = CliRunner().invoke(cli, ["trace", "-h"])
    assert r.exit_code == 0 and "Example:" in r.output and "sae-atlas trace L11.tc/540" in r.output


# ---------------------------------------------------------------- bounded work on a big atlas
@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """Four SAEs with virtual edges between every pair: the shape of a real graph, big enough for plans to matter."""
    from atlas.synthetic import build_synthetic_atlas

    return build_synthetic_atlas(tmp_path_factory.mktemp("trace_big") / "big.db", n_features=12_000,
                                 layers=(1, 3, 5, 7), d_vocab=2000, k=8, n_head_scores=3, n_edges=4, label_every=0,
                                 n_virtual=8)  # fmt: skip


def _statements(conn: sqlite3.Connection, fn) -> list[str]:
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    try:
        fn()
    finally:
        conn.set_trace_callback(None)
    return seen


def _scans(conn: sqlite3.Connection, statements: list[str]) -> list[str]:
    """Every step of every SELECT's plan that reads a table or index from end to end."""
    out = []
    for s in statements:
        if s.lstrip().upper().startswith("SELECT"):
            out += [f"{r[3]}  <- {s[:80]}" for r in conn.execute("EXPLAIN QUERY PLAN " + s) if "SCAN" in r[3]]
    return out


@pytest.mark.parametrize("direction", ["down", "up"])
def test_trace_reads_by_index_in_a_bounded_number_of_queries(big: Path, direction: str) -> None:
    from atlas.trace import expand, root_stop

    with open_atlas(big) as a:
        first, last = a.conn.execute("SELECT MIN(feature_id), MAX(feature_id) FROM features").fetchone()
        root = first if direction == "down" else last
        depth = 3
        holder = {}
        stmts = _statements(a.conn, lambda: holder.update(tr=trace(a.conn, root, direction=direction, depth=depth,
                                                                   top=4)))  # fmt: skip
        tr = holder["tr"]
        assert max(n.depth for n in tr.nodes) == depth  # the tree really is three levels deep
        assert len(tr.nodes) > 20
        # per level: the frontier's edges, then the names of what they reach; the tokens once at the end
        assert len(stmts) <= 2 + 2 * depth + 1 + 1, stmts
        assert _scans(a.conn, stmts) == []
        # the browser: the root, then one level under a whole frontier, three queries whatever its width
        stmts = _statements(a.conn, lambda: root_stop(a.conn, root, direction))
        assert len(stmts) <= 4 and _scans(a.conn, stmts) == []
        frontier = [n.feature_id for n in tr.nodes if n.depth == 1]
        stmts = _statements(a.conn, lambda: holder.update(hops=expand(a.conn, frontier, direction, top=5)))
        assert len(stmts) == 3 and _scans(a.conn, stmts) == []
        end_layer = 7 if direction == "down" else 1  # the last dictionary has no edges onward
        assert set(holder["hops"]) == {n.feature_id for n in tr.nodes if n.depth == 1 and n.layer != end_layer}


# ---------------------------------------------------------------- the report's graph section
def test_graph_section_reads_the_planted_pairs(planted: Path, tmp_path: Path) -> None:
    from atlas import report_graph

    with open_atlas(planted) as a:
        section = report_graph.graph_section(a.conn)
    got = [(p.src, p.dst, p.distance, p.n_rank0, p.median_rank0_percentile, p.frac_rank0_above_p99, p.frac_above_p99)
           for p in section.pairs]  # fmt: skip
    assert got == [
        ("L1.res", "L3.res", 2, 1, 99.5, 1.0, 0.05),  # L1/0's strongest edge into L3 is L3/2
        ("L1.res", "L5.res", 4, 1, 99.9, 1.0, 0.05),
        ("L3.res", "L5.res", 2, 3, 95.0, 0.0, 0.05),  # rank-0 edges of L3/2, L3/5, L3/1: 98, 95, 30
    ]
    assert section.pairs[0].chance_rank0_percentile == pytest.approx(100 * 0.5 ** (1 / 8), abs=1e-9)
    assert section.pairs[0].enrichment == pytest.approx(5.0)
    assert section.by_distance() == [
        {"distance": 2, "pairs": 2, "median_frac_above_p99": 0.05, "median_rank0_percentile": 97.25},
        {"distance": 4, "pairs": 1, "median_frac_above_p99": 0.05, "median_rank0_percentile": 99.9},
    ]
    from atlas.report import Table

    tables = [Table(*t) for t in report_graph.table_rows(section)]
    md = "\n".join(report_graph.markdown(section, report_graph.plot(section, tmp_path), tables))
    assert "## Graph: how strongly features connect across layers" in md
    assert "5.0% at distance 2 (2 pairs); 5.0% at distance 4 (1 pair)" in md
    assert "| L3.res | L5.res | 2 | 64 | 5.0% | 5.0× | 3 | 95.00 | 91.70 | 0.0% |" in md
    assert (tmp_path / "graph_distance.png").read_bytes()[:4] == b"\x89PNG"
    assert "layer distance" in report_graph.terminal_plot(section, width=80)


def test_report_has_a_graph_section_only_with_virtual_edges(tmp_path: Path) -> None:
    from atlas.synthetic import build_synthetic_atlas

    for n_virtual, shown in ((0, False), (4, True)):
        db = build_synthetic_atlas(tmp_path / f"syn{n_virtual}.db", n_features=300, d_vocab=300, n_virtual=n_virtual)
        out = tmp_path / f"report{n_virtual}"
        r = CliRunner().invoke(cli, ["--db", str(db), "report", "-o", str(out), "--no-plots"])
        assert r.exit_code == 0, r.output
        md = (out / "report.md").read_text()
        assert ("## Graph: how strongly" in md) is shown
        assert (out / "graph_distance.png").exists() is shown
        graph = json.loads((out / "report.json").read_text())["graph"]
        assert (graph is not None) is shown
        if shown:
            assert [p["distance"] for p in graph["pairs"]] == [4]  # the synthetic SAEs sit at layers 2 and 6


@pytest.mark.parametrize(
    ("p", "shown"),
    [(None, "p?"), (100.0, "p100"), (99.9996156, "p99.9996"), (99.98293, "p99.98"), (99.5, "p99.5"), (99.9, "p99.9"),
     (60.0, "p60.0"), (0.0, "p0.0"), (99.99999999, "p>99.999999")],
)  # fmt: skip
def test_a_percentile_short_of_100_never_shows_as_100(p, shown) -> None:
    from atlas.trace import format_percentile

    assert format_percentile(p) == shown
