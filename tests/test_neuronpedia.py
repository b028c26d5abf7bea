"""`sae-atlas import neuronpedia` and `export --format neuronpedia` on exports in Neuronpedia's real layout.

Oracles: the labels, agreement values and examples are computed here from the rows the test wrote
(scipy's spearmanr for the rank correlation, slicing by hand for the windows) and read back straight
from the file; a failed import is checked by the file's sha256.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from scipy.stats import spearmanr

from atlas.cli import cli
from atlas.neuronpedia.agreement import compare
from tests.conftest import query, sha256_of
from tests.neuronpedia_fixtures import (
    MODEL,
    NP_ID,
    SOURCE,
    activation,
    du_lists,
    explanation,
    feature_row,
    link,
    write_export,
    write_jsonl,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "atlas.db.example"


def run(runner: CliRunner, atlas: Path, *args: str):
    return runner.invoke(cli, ["--db", str(atlas), *args])


def imported_labels(atlas: Path) -> list[tuple]:
    return query(
        atlas,
        "SELECT feature_id, text, source, kind FROM labels WHERE source LIKE 'import:neuronpedia:%' ORDER BY 1, 2, 3",
    )


# ---------------------------------------------------------------- explanations
def test_explanations_become_labels_that_search_finds_and_reimport_changes_nothing(
    runner: CliRunner, synthetic_atlas: Path, tmp_path: Path
) -> None:
    link(synthetic_atlas)
    rows = [explanation(i, f"mentions of rivers, variant {i}") for i in range(30)]
    rows.append(explanation(5, "bridges over water", "claude-3-5-haiku"))
    folder = write_export(tmp_path / "np", explanations=[rows[:20], rows[20:]])
    r = run(runner, synthetic_atlas, "import", "neuronpedia", str(folder))
    assert r.exit_code == 0, r.output
    assert "explanations: 31 matched (31 labels), 0 unmatched, 0 skipped" in r.stdout
    want = sorted(
        (int(x["index"]), x["description"], "import:neuronpedia:" + x["explanationModelName"], "free") for x in rows
    )  # fmt: skip  (L2.res is the first SAE: feature_id = index)
    assert imported_labels(synthetic_atlas) == want
    # the atlas's own label search (FTS over the file's labels) finds them
    s = run(runner, synthetic_atlas, "search", "--label", "bridges", "--json")
    assert [(h["feature"], h["source"]) for h in json.loads(s.stdout)] == [
        ("L2.res/5", "import:neuronpedia:claude-3-5-haiku")
    ]
    fts = query(synthetic_atlas, "SELECT rowid FROM labels_fts WHERE labels_fts MATCH 'rivers'")
    assert len(fts) == 30
    # importing again replaces what the first import brought: the same labels, once
    r2 = run(runner, synthetic_atlas, "import", "neuronpedia", str(folder))
    assert r2.exit_code == 0, r2.output
    assert imported_labels(synthetic_atlas) == want
    assert len(query(synthetic_atlas, "SELECT rowid FROM labels_fts WHERE labels_fts MATCH 'rivers'")) == 30


def test_a_repeated_explanation_is_imported_once(runner: CliRunner, synthetic_atlas: Path, tmp_path: Path) -> None:
    link(synthetic_atlas)
    row = explanation(3, "the word the")
    folder = write_export(tmp_path / "np", explanations=[[row, explanation(4, "x")], [row]])
    r = run(runner, synthetic_atlas, "import", "neuronpedia", str(folder))
    assert r.exit_code == 0, r.output
    assert "explanations: 2 matched (2 labels), 0 unmatched, 1 skipped" in r.stdout
    assert [t for _, t, _, _ in imported_labels(synthetic_atlas)] == ["the word the", "x"]


# ---------------------------------------------------------------- logit tables -> agreement
def _oracle(ours: list[str], theirs: list[str], top_n: int = 10) -> tuple[int, int, float | None]:
    a, b = ours[:top_n], theirs[:top_n]
    ra = {t: i for i, t in reversed(list(enumerate(a)))}
    rb = {t: i for i, t in reversed(list(enumerate(b)))}
    shared = [t for t in ra if t in rb]
    rho = spearmanr([ra[t] for t in shared], [rb[t] for t in shared])[0] if len(shared) >= 3 else None
    return min(len(ra), len(rb)), len(shared), rho


def test_agreement_with_du_matches_an_independent_oracle(
    runner: CliRunner, synthetic_atlas: Path, tmp_path: Path
) -> None:
    link(synthetic_atlas)
    rows, expected = [], {}
    for fid in range(9):
        pos, neg = du_lists(synthetic_atlas, fid)
        toks = [t for t, _ in pos]
        theirs = {
            0: toks,  # the same list
            1: toks[::-1],  # reversed
            2: toks[:5] + [f"zz-not-a-token-{i}" for i in range(5)],  # half replaced
            3: [f"zz-other-{i}" for i in range(10)],  # nothing shared
            4: [toks[i] for i in (3, 0, 7, 1, 9, 2, 8, 4, 6, 5)],  # shuffled
            5: toks[:2] + [f"zz-{i}" for i in range(8)],  # two shared: no rank correlation
            6: toks[2:] + toks[:2],  # rotated
            7: toks,
            8: [f"zz-front-{i}" for i in range(3)] + toks[:7],  # shared ranks 3..9 here, 0..6 there: rho is 1
        }[fid]
        values = [float(10 - i) for i in range(len(theirs))]
        if fid == 7:  # listed out of order: the values say the order (best first)
            order = [4, 1, 9, 0, 2, 8, 3, 7, 5, 6]
            theirs, values = [theirs[i] for i in order], [values[i] for i in order]
        rows.append(feature_row(fid, list(zip(theirs, values, strict=True)), neg))
        expected[fid] = (_oracle(toks, [t for _, t in sorted(zip(values, theirs, strict=True), reverse=True)]),
                         _oracle([t for t, _ in neg], [t for t, _ in neg]))  # fmt: skip
    folder = write_export(tmp_path / "np", features=[rows], gz=False)  # plain .jsonl is read too
    r = run(runner, synthetic_atlas, "import", "neuronpedia", str(folder))
    assert r.exit_code == 0, r.output
    assert "logit tables: 9 matched, 0 unmatched, 0 skipped" in r.stdout
    got = {
        f: ((pn, ps, pr), (nn, ns, nr))
        for f, pn, ps, pr, nn, ns, nr in query(
            synthetic_atlas,
            "SELECT feature_id, pos_n, pos_shared, pos_rank_corr, neg_n, neg_shared, neg_rank_corr "
            "FROM neuronpedia_agreement",
        )
    }
    assert set(got) == set(expected)
    for fid, want in expected.items():
        for (gn, gs, gr), (wn, ws, wr) in zip(got[fid], want, strict=True):
            assert (gn, gs) == (wn, ws), fid
            assert (gr is None) == (wr is None), fid
            if wr is not None:
                assert gr == pytest.approx(wr, abs=1e-12), fid
    assert got[0][0][1:] == (10, 1.0) and got[1][0][2] == pytest.approx(-1.0) and got[3][0][1:] == (0, None)
    assert got[8][0][1:] == (7, 1.0)
    stored = query(synthetic_atlas, "SELECT pos_str FROM neuronpedia_agreement WHERE feature_id = 7")[0][0]
    assert json.loads(stored) == [t for t, _ in du_lists(synthetic_atlas, 7)[0]]  # kept best first


def test_compare_counts_a_text_repeated_in_a_list_once() -> None:
    a = compare(["x", "y", "x", "z"], ["x", "y", "z"], top_n=10)
    assert (a.n, a.shared, a.rank_corr) == (3, 3, 1.0)
    assert compare([], ["x"]).n is None


# ---------------------------------------------------------------- round trip
def test_export_then_import_agrees_fully_on_every_feature(
    runner: CliRunner, synthetic_atlas: Path, tmp_path: Path
) -> None:
    out = tmp_path / "np-out"
    r = run(runner, synthetic_atlas, "export", "--format", "neuronpedia", "--labels", str(out))
    assert r.exit_code == 0, r.output
    folders = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*"))
    assert folders == ["synthetic/2-sae-atlas-res", "synthetic/6-sae-atlas-res"]
    for sae, folder in (("L2.res", folders[0]), ("L6.res", folders[1])):
        r = run(runner, synthetic_atlas, "import", "neuronpedia", str(out / folder), "--sae", sae)
        assert r.exit_code == 0, r.output
        assert "logit tables: 200 matched, 0 unmatched, 0 skipped" in r.stdout
    rows = query(
        synthetic_atlas,
        "SELECT COUNT(*), SUM(pos_shared = pos_n), SUM(neg_shared = neg_n), "
        "MIN(pos_rank_corr), MAX(pos_rank_corr), MIN(neg_rank_corr), MAX(neg_rank_corr) FROM neuronpedia_agreement",
    )
    assert rows == [(400, 400, 400, 1.0, 1.0, 1.0, 1.0)]  # overlap 1 and rank correlation 1 on every feature
    # n is the number of distinct texts among the top 10 (the synthetic vocabulary repeats a few)
    distinct = {
        (f, s): n for f, s, n in query(synthetic_atlas, "SELECT ts.feature_id, ts.sign, COUNT(DISTINCT v.raw) "
                                       "FROM token_scores ts JOIN vocab v USING (token_id) WHERE ts.phase = 'du' "
                                       "AND ts.rank < 10 GROUP BY 1, 2")
    }  # fmt: skip
    stored = query(synthetic_atlas, "SELECT feature_id, pos_n, neg_n FROM neuronpedia_agreement")
    assert all((pn, nn) == (distinct[(f, 1)], distinct[(f, -1)]) for f, pn, nn in stored)
    # the atlas's own labels went out as explanations and came back as imports, text for text
    own = query(synthetic_atlas, "SELECT feature_id, text FROM labels WHERE source = 'heuristic' ORDER BY 1, 2")
    back = query(synthetic_atlas, "SELECT feature_id, text FROM labels WHERE source = "
                 "'import:neuronpedia:sae-atlas:heuristic' ORDER BY 1, 2")  # fmt: skip
    assert back == own and own


def test_import_finds_the_source_folders_under_the_export_root(tmp_path: Path, runner: CliRunner) -> None:
    """`export --format neuronpedia OUT` writes OUT/<model>/<source>/: importing OUT itself finds the
    one source (--sae names its SAE), and with two sources asks for one of them."""
    from atlas.synthetic import build_synthetic_atlas

    one = build_synthetic_atlas(tmp_path / "one.db", n_features=30, layers=(3,), d_vocab=200, seed=2)
    out = tmp_path / "out"
    assert run(runner, one, "export", "--format", "neuronpedia", str(out)).exit_code == 0
    r = run(runner, one, "import", "neuronpedia", str(out), "--sae", "L3.res")
    assert r.exit_code == 0, r.output
    assert "logit tables: 30 matched, 0 unmatched, 0 skipped" in r.stdout
    two = build_synthetic_atlas(tmp_path / "two.db", n_features=30, layers=(2, 6), d_vocab=200, seed=2)
    out2 = tmp_path / "out2"
    assert run(runner, two, "export", "--format", "neuronpedia", str(out2)).exit_code == 0
    r = run(runner, two, "import", "neuronpedia", str(out2), "--sae", "L2.res")
    assert r.exit_code == 1 and "holds 2: give one of them" in r.output


def test_export_layout_batches_and_fields(tmp_path: Path, runner: CliRunner) -> None:
    from atlas.synthetic import build_synthetic_atlas

    atlas = build_synthetic_atlas(tmp_path / "big.db", n_features=2100, layers=(3,), d_vocab=500, seed=1)
    out = tmp_path / "out"
    r = run(runner, atlas, "export", "--format", "neuronpedia", "--model-id", "my-model", "--source-set", "res-x",
            str(out))  # fmt: skip
    assert r.exit_code == 0, r.output
    folder = out / "my-model" / "3-res-x"
    assert sorted(p.name for p in folder.iterdir()) == ["features", "model.jsonl", "source.jsonl", "sourceset.jsonl"]
    assert json.loads((folder / "source.jsonl").read_text())["id"] == "3-res-x"
    batches = sorted((folder / "features").iterdir())
    assert [p.name for p in batches] == ["batch-0.jsonl.gz", "batch-1.jsonl.gz", "batch-2.jsonl.gz"]
    rows = [json.loads(line) for p in batches for line in gzip.decompress(p.read_bytes()).decode().splitlines()]
    assert [len(gzip.decompress(p.read_bytes()).splitlines()) for p in batches] == [1024, 1024, 52]
    assert [r["index"] for r in rows] == [str(i) for i in range(2100)]
    assert {r["modelId"] for r in rows} == {"my-model"} and {r["layer"] for r in rows} == {"3-res-x"}
    for fid in (0, 1500, 2099):
        pos, neg = du_lists(atlas, fid)
        assert (rows[fid]["pos_str"], rows[fid]["neg_str"]) == ([t for t, _ in pos], [t for t, _ in neg])
        assert rows[fid]["pos_values"] == pytest.approx([v for _, v in pos], rel=1e-12)
        cos = query(atlas, "SELECT d.idx, e.score FROM edges e JOIN features d ON d.feature_id = e.dst_feature "
                    "WHERE e.src_feature = ? AND e.kind = 'cosine' ORDER BY e.rank", (fid,))  # fmt: skip
        assert rows[fid]["topkCosSimIndices"] == [c[0] for c in cos]
        assert rows[fid]["topkCosSimValues"] == pytest.approx([c[1] for c in cos])
    # an existing output is refused, --force replaces an export (and only an export)
    assert "already exists" in run(runner, atlas, "export", "--format", "neuronpedia", str(out)).output
    assert run(runner, atlas, "export", "--format", "neuronpedia", "--force", str(out)).exit_code == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    r = run(runner, atlas, "export", "--format", "neuronpedia", "--force", str(other))
    assert r.exit_code == 1 and (other / "keep.txt").read_text() == "mine"


# ---------------------------------------------------------------- activation examples
def _window(tokens: list[str], at: int, window: int) -> tuple[int, int]:
    """[start, end) of ``window`` tokens with at most 3/4 of them before ``at``, moved left at the end."""
    start = max(0, at - window * 3 // 4)
    end = min(len(tokens), start + window)
    return max(0, end - window), end


def test_activation_examples_keep_the_top_n_per_feature_trimmed_around_the_maximum(
    runner: CliRunner, synthetic_atlas: Path, tmp_path: Path
) -> None:
    link(synthetic_atlas)
    toks = [f" w{i}" for i in range(20)]

    def ex(idx: int, peak: float, at: int) -> dict:
        values = [0.0] * 20
        values[at] = peak
        values[max(0, at - 1)] = peak / 3 if at else peak
        return activation(idx, toks, [v + 1.0 / 7 if v else 0.0 for v in values])

    batch0 = [ex(0, 3.0, 15), ex(0, 9.0, 1), ex(0, 1.0, 10), ex(1, 2.0, 19), ex(1, 5.0, 5)]
    batch1 = [ex(0, 12.0, 19), ex(1, 0.5, 2), {**ex(2, 1.0, 4), "values": [1.0]}]  # the last: 20 tokens, 1 value
    folder = write_export(tmp_path / "np", activations=[batch0, batch1])
    r = run(runner, synthetic_atlas, "import", "neuronpedia", str(folder), "--activations", "2", "--window", "8")
    assert r.exit_code == 0, r.output
    assert "activations:  7 matched, 0 unmatched, 1 skipped; kept 4 examples" in r.stdout
    got = query(synthetic_atlas, "SELECT feature_id, rank, tokens, acts, max_value, max_index, source "
                "FROM activation_examples ORDER BY feature_id, rank")  # fmt: skip
    kept = {0: [batch1[0], batch0[1]], 1: [batch0[4], batch0[3]]}  # the two strongest, over both files
    assert [(g[0], g[1]) for g in got] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for g in got:
        row = kept[g[0]][g[1]]
        start, end = _window(row["tokens"], row["maxValueTokenIndex"], 8)
        assert json.loads(g[2]) == row["tokens"][start:end] and end - start == 8
        assert json.loads(g[3]) == pytest.approx(row["values"][start:end], rel=1e-3)
        assert g[4] == pytest.approx(row["maxValue"]) and g[5] == row["maxValueTokenIndex"] - start
        assert g[6] == "neuronpedia:" + NP_ID
    card = run(runner, synthetic_atlas, "show", "L2.res/0")
    assert "activation examples (neuronpedia:synth-model/2-res-synth" in card.stdout
    assert "« w19»" in card.stdout and " w12 w13" in card.stdout  # the window's text, active tokens marked
    # without --activations the files are left alone, and said so
    r = run(runner, synthetic_atlas, "import", "neuronpedia", str(folder))
    assert r.exit_code == 1 and "nothing imported" in r.output
    write_export(tmp_path / "np", explanations=[[explanation(1, "a label")]])
    r = run(runner, synthetic_atlas, "import", "neuronpedia", str(folder))
    assert r.exit_code == 0 and "2 files not read (--activations N imports them)" in r.stdout
    assert len(query(synthetic_atlas, "SELECT 1 FROM activation_examples")) == 4


# ---------------------------------------------------------------- bad inputs
def test_bad_rows_are_skipped_counted_and_reported_one_line_each(
    runner: CliRunner, synthetic_atlas: Path, tmp_path: Path
) -> None:
    link(synthetic_atlas)
    good = [explanation(i, f"good {i}") for i in range(4)]
    bad = [
        {**explanation(5, "other model"), "modelId": "gpt2-small"},
        explanation(250, "past d_sae"),
        {**explanation(6, "no index"), "index": "six"},
        {**explanation(7, ""), "description": ""},
    ]
    folder = write_export(tmp_path / "np")
    write_jsonl(folder / "explanations" / "batch-0.jsonl", good + bad, raw_lines=["{not json", "[1, 2]"])
    feats = [feature_row(0, [("a", 1.0)], []), {**feature_row(1, [], []), "pos_str": "not a list"}]
    write_jsonl(folder / "features" / "batch-0.jsonl", feats, gz=False)
    r = run(runner, synthetic_atlas, "import", "neuronpedia", str(folder))
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    assert "explanations: 4 matched (4 labels), 2 unmatched, 4 skipped" in r.stdout
    assert "logit tables: 1 matched, 0 unmatched, 1 skipped" in r.stdout
    problems = [line.strip() for line in r.stderr.splitlines()]
    want = {
        "lines that are not JSON": "explanations/batch-0.jsonl.gz:9",
        "lines that are not a JSON object": "explanations/batch-0.jsonl.gz:10",
        f"rows for another model or source than {NP_ID}": "explanations/batch-0.jsonl.gz:5 (gpt2-small/2-res-synth)",
        "rows with an index past d_sae of L2.res (200)": "explanations/batch-0.jsonl.gz:6 (index 250)",
        "rows without a valid feature index": "explanations/batch-0.jsonl.gz:7",
        "explanations without a description": "explanations/batch-0.jsonl.gz:8",
        "logit tables that are not lists of tokens with one value each": "features/batch-0.jsonl:2",
    }
    assert len(problems) == len(want)
    for what, first in want.items():
        assert f"1 {what} (first: {first})" in problems
    assert [t for _, t, _, _ in imported_labels(synthetic_atlas)] == [f"good {i}" for i in range(4)]


@pytest.mark.parametrize("damage", ["truncated", "not gzip"])
def test_an_unreadable_file_leaves_the_atlas_unchanged(
    runner: CliRunner, synthetic_atlas: Path, tmp_path: Path, damage: str
) -> None:
    link(synthetic_atlas)
    folder = write_export(
        tmp_path / "np",
        explanations=[[explanation(1, "first batch")], [explanation(2, "second batch")]],
        features=[[feature_row(0, [("a", 1.0)], [])]],
    )
    broken = folder / "explanations" / "batch-1.jsonl.gz"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"plain text, not gzip\n")
    before = sha256_of(synthetic_atlas)
    r = run(runner, synthetic_atlas, "import", "neuronpedia", str(folder))
    assert r.exit_code == 1 and "Traceback" not in r.output
    err = r.stderr.strip().splitlines()
    assert err[-1].startswith("Error: nothing imported: 1 file(s) could not be read")
    assert any("unreadable files" in line and "explanations/batch-1.jsonl.gz" in line for line in err)
    assert sha256_of(synthetic_atlas) == before
    # --skip-bad-files: that file's rows alone are left out
    r = run(runner, synthetic_atlas, "import", "neuronpedia", str(folder), "--skip-bad-files")
    assert r.exit_code == 0, r.output
    assert [t for _, t, _, _ in imported_labels(synthetic_atlas)] == ["first batch"]
    assert query(synthetic_atlas, "SELECT COUNT(*) FROM neuronpedia_agreement") == [(1,)]


def test_which_sae_the_rows_go_to(runner: CliRunner, synthetic_atlas: Path, tmp_path: Path) -> None:
    folder = write_export(tmp_path / "np", explanations=[[explanation(1, "one")]])
    before = sha256_of(synthetic_atlas)
    r = run(runner, synthetic_atlas, "import", "neuronpedia", str(folder))  # no SAE is linked to it
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert f"no SAE of the atlas is linked to {NP_ID}" in r.output and "--sae NAME" in r.output
    assert sha256_of(synthetic_atlas) == before
    link(synthetic_atlas, "L6.res", "synth-model/6-other")
    r = run(runner, synthetic_atlas, "import", "neuronpedia", str(folder), "--sae", "L6.res")
    assert r.exit_code == 1 and "L6.res is synth-model/6-other on Neuronpedia" in r.output
    r = run(runner, synthetic_atlas, "import", "neuronpedia", str(folder), "--sae", "L6.res", "--link")
    assert r.exit_code == 0 and f"L6.res is now linked to {NP_ID}" in r.stdout
    assert query(synthetic_atlas, "SELECT neuronpedia_id FROM saes WHERE name = 'L6.res'") == [(NP_ID,)]
    assert imported_labels(synthetic_atlas) == [(201, "one", "import:neuronpedia:gpt-4o-mini", "free")]


def test_a_bare_folder_takes_its_ids_from_its_rows(runner: CliRunner, synthetic_atlas: Path, tmp_path: Path) -> None:
    """A folder renamed on download, without model.jsonl / source.jsonl: its rows say what it holds."""
    folder = tmp_path / "download"
    rows = [explanation(1, "one"), {**explanation(2, "two"), "modelId": "gpt2-small"}]
    write_jsonl(folder / "explanations" / "batch-0.jsonl", rows)
    r = run(runner, synthetic_atlas, "import", "neuronpedia", str(folder), "--sae", "L2.res")
    assert r.exit_code == 0, r.output
    assert f"L2.res <- {NP_ID}" in r.stdout and "1 matched (1 labels), 1 unmatched" in r.stdout
    assert f"1 rows for another model or source than {NP_ID}" in r.stderr


def test_a_model_folder_of_several_sources(runner: CliRunner, synthetic_atlas: Path, tmp_path: Path) -> None:
    link(synthetic_atlas, "L2.res", f"{MODEL}/2-res")
    link(synthetic_atlas, "L6.res", f"{MODEL}/6-res")
    for source, text in (("2-res", "early"), ("6-res", "late"), ("9-res", "nowhere")):
        rows = [{**explanation(3, text), "layer": source}]
        write_export(tmp_path / "np", explanations=[rows], source=source)
    r = run(runner, synthetic_atlas, "import", "neuronpedia", str(tmp_path / "np" / MODEL))
    assert r.exit_code == 0, r.output
    assert [(f, t) for f, t, _, _ in imported_labels(synthetic_atlas)] == [(3, "early"), (203, "late")]
    assert "1 source folders no SAE of the atlas is linked to" in r.stderr


def test_an_atlas_you_may_not_write_is_refused(runner: CliRunner, synthetic_atlas: Path, tmp_path: Path) -> None:
    folder = write_export(tmp_path / "np", explanations=[[explanation(1, "one")]])
    before = sha256_of(EXAMPLE)
    r = run(runner, EXAMPLE, "import", "neuronpedia", str(folder), "--sae", "L2.res")
    assert r.exit_code == 1 and "the bundled example is read-only" in r.output and "migrate -o" in r.output
    assert sha256_of(EXAMPLE) == before
    os.chmod(synthetic_atlas, 0o444)
    try:
        r = run(runner, synthetic_atlas, "import", "neuronpedia", str(folder), "--sae", "L2.res")
        assert r.exit_code == 1 and "the file is read-only" in r.output
    finally:
        os.chmod(synthetic_atlas, 0o644)
    r = run(runner, synthetic_atlas, "import", "neuronpedia", str(tmp_path / "nothing-here"), "--sae", "L2.res")
    assert r.exit_code == 1 and "no such export folder" in r.output


# ---------------------------------------------------------------- the card
def test_show_prints_the_url_and_the_agreement(runner: CliRunner, synthetic_atlas: Path, tmp_path: Path) -> None:
    plain = run(runner, synthetic_atlas, "show", "L2.res/3")
    assert "Neuronpedia" not in plain.stdout  # nothing known: no section
    link(synthetic_atlas)
    pos, neg = du_lists(synthetic_atlas, 3)
    folder = write_export(tmp_path / "np", features=[[feature_row(3, pos[:10], neg[:4])]])
    assert run(runner, synthetic_atlas, "import", "neuronpedia", str(folder)).exit_code == 0
    out = run(runner, synthetic_atlas, "show", "L2.res/3").stdout
    assert f"Neuronpedia  https://www.neuronpedia.org/{MODEL}/{SOURCE}/3" in out
    assert "promoted   10/10 shared, rank corr +1.00" in out and "suppressed 4/4 shared, rank corr +1.00" in out
    data = json.loads(run(runner, synthetic_atlas, "show", "L2.res/3", "--json").stdout)
    assert data["neuronpedia"]["url"] == f"https://www.neuronpedia.org/{MODEL}/{SOURCE}/3"
    assert data["neuronpedia"]["agreement"]["pos_shared"] == 10
    other = run(runner, synthetic_atlas, "show", "L2.res/4").stdout  # linked, nothing imported: the URL alone
    assert f"https://www.neuronpedia.org/{MODEL}/{SOURCE}/4" in other and "agreement" not in other


def test_the_browser_card_shows_neuronpedia_and_copies_the_url(synthetic_atlas: Path, tmp_path: Path) -> None:
    import asyncio

    from textual.widgets import Static

    from tui.app import make_app
    from tui.screens.feature_card import FeatureCardScreen
    from tui.testing import settle

    link(synthetic_atlas)
    toks = [" the", " river", " flows"]
    folder = write_export(tmp_path / "np", activations=[[activation(3, toks, [0.0, 4.0, 1.0])]])
    assert CliRunner().invoke(cli, ["--db", str(synthetic_atlas), "import", "neuronpedia", str(folder),
                                    "--activations", "3"]).exit_code == 0  # fmt: skip
    url = f"https://www.neuronpedia.org/{NP_ID}/3"

    async def journey() -> None:
        app = make_app(synthetic_atlas)
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot)
            app.open_feature(3)
            await settle(pilot)
            card = app.screen
            assert isinstance(card, FeatureCardScreen)
            section = card.query_one("#card-neuronpedia", Static)
            text = str(section.render())
            assert section.display and url in text and " the river flows" in text
            assert card.check_action("copy_url", ()) is True
            await pilot.press("u")
            assert app.clipboard == url
            app.open_feature(250)  # an SAE with no Neuronpedia id: no section, no binding
            await settle(pilot)
            assert not card.query_one("#card-neuronpedia", Static).display
            assert card.check_action("copy_url", ()) is False

    asyncio.run(journey())


def test_the_copy_of_the_example_takes_an_export_of_itself(runner: CliRunner, tmp_path: Path) -> None:
    """The bundled example exports; its upgraded copy imports the export back in full."""
    mine = tmp_path / "mine.db"
    assert runner.invoke(cli, ["migrate", "-o", str(mine)], env={"SAE_ATLAS_DB": None}).exit_code == 0
    out = tmp_path / "np"
    r = runner.invoke(cli, ["export", "--format", "neuronpedia", "--sae", "L26.res", str(out)],
                      env={"SAE_ATLAS_DB": None})  # fmt: skip
    assert r.exit_code == 0, r.output
    (folder,) = list(out.glob("*/*"))
    r = run(runner, mine, "import", "neuronpedia", str(folder), "--sae", "L26.res")
    assert r.exit_code == 0, r.output
    # the example keeps 5 tokens per list (fewer distinct texts where byte tokens decode alike): full agreement
    n, top, full = query(mine, "SELECT COUNT(*), MAX(pos_n), SUM(pos_shared = pos_n AND neg_shared = neg_n) "
                         "FROM neuronpedia_agreement")[0]  # fmt: skip
    assert (n, top, full) == (2048, 5, 2048)  # L26.res has 2,048 latents
    shutil.rmtree(out)
