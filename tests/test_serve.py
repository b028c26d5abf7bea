"""`sae-atlas serve`: real Datasette on the atlas, with the metadata the atlas carries.

The metadata is checked against the schema (every table, view and column described, from
schema.sql's comments where it has them), every canned query is run against oracles read straight
from the file, and the real server is started on a free port: home page, a canned query with a
parameter, a feature's row page with its foreign keys followed, label and token search; then stopped.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from atlas.cli import cli
from atlas.datasette_metadata import build_metadata, canned_queries, schema_descriptions
from atlas.db import open_atlas
from atlas.migrations import schema_file_sql
from tests.conftest import query, sha256_of
from tests.neuronpedia_fixtures import activation, feature_row, link, write_export

START_DEADLINE_S = 90  # a loaded 2-core machine can take a while to import datasette


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read().decode("utf-8")


def _json(url: str) -> dict:
    return json.loads(_get(url))


@pytest.fixture
def full_atlas(synthetic_atlas: Path, tmp_path: Path) -> Path:
    """The synthetic atlas with a Neuronpedia import: agreement rows and activation examples."""
    link(synthetic_atlas)
    folder = write_export(
        tmp_path / "np",
        features=[[feature_row(i, [(" king", 2.0), ("x", 1.0)], []) for i in range(5)]],
        activations=[[activation(5, [" a", " b"], [0.0, 2.0])]],
    )
    r = CliRunner().invoke(cli, ["--db", str(synthetic_atlas), "import", "neuronpedia", str(folder),
                                 "--activations", "2"])  # fmt: skip
    assert r.exit_code == 0, r.output
    return synthetic_atlas


def _objects(path: Path) -> dict[str, list[str]]:
    """{table or view: columns} of the file (FTS5's hidden columns and shadow tables aside, as Datasette shows it)."""
    names = [r[0] for r in query(path, "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                                 "AND name NOT LIKE 'sqlite_%' AND name NOT GLOB '*_fts_*'")]  # fmt: skip
    return {n: [r[1] for r in query(path, f"PRAGMA table_xinfo({n})") if r[6] != 1] for n in names}


# ---------------------------------------------------------------- metadata
def test_every_table_view_and_column_has_a_title_or_description(full_atlas: Path) -> None:
    with open_atlas(full_atlas) as atlas:
        md = build_metadata(atlas)
    tables = md["databases"][full_atlas.stem]["tables"]
    objects = _objects(full_atlas)
    assert set(tables) == set(objects) and {"neuronpedia_view", "activation_examples", "vocab_fts"} <= set(tables)
    for name, cols in objects.items():
        meta = tables[name]
        assert meta["title"] and meta["description"], name
        assert set(meta["columns"]) == set(cols), name
        assert all(meta["columns"][c] for c in cols), (name, [c for c in cols if not meta["columns"][c]])
    assert tables["labels_view"]["fts_table"] == "labels_fts" and tables["labels_view"]["fts_pk"] == "label_id"
    assert tables["head_scores"]["units"] == {"percentile": "percent"} and "units" not in tables["features"]
    assert tables["saes"]["label_column"] == "name" and "kind" in tables["edges"]["facets"]


def test_descriptions_are_the_schema_comments() -> None:
    sql = schema_file_sql()
    d = schema_descriptions(sql)
    # read the comments with a plain regex, independently of the parser
    for table, column in (("features", "du_entropy"), ("saes", "neuronpedia_id"), ("activation_examples", "acts")):
        body = re.search(rf"CREATE TABLE IF NOT EXISTS {table} \((.*?)\n\);", sql, re.S).group(1)
        comment = re.search(rf"^\s*{column}\s+\w+[^\n]*?--\s*(.*)$", body, re.M).group(1).strip()
        assert d[table]["columns"][column] == " ".join(comment.split())
    assert d["features"]["columns"]["du_max"].endswith("decoder -> unembedding statistics over the whole logit vector")
    assert d["features"]["description"].startswith("One row per SAE latent")
    # a changed comment is a changed description: they cannot drift apart
    changed = sql.replace("-- entropy (nats) of softmax(logits)", "-- a new words for it")
    assert schema_descriptions(changed)["features"]["columns"]["du_entropy"] == "a new words for it"


def test_every_canned_query_answers_as_the_file_does(full_atlas: Path) -> None:
    import sqlite3

    with open_atlas(full_atlas) as atlas:
        queries = build_metadata(atlas)["databases"][full_atlas.stem]["queries"]
        top = [f.name for f in atlas.top("du_top1_z", limit=100)]
    assert set(queries) == set(canned_queries(set(_objects(full_atlas)))) and "virtual_neighbours" in queries
    params = {"feature": "L2.res/5", "token": " King ", "metric": "du_top1_z", "sae": "", "query": "punctuation",
              "text": "Kin"}  # fmt: skip
    conn = sqlite3.connect(f"file:{full_atlas}?mode=ro", uri=True)
    answers = {}
    for name, q in queries.items():
        names = set(re.findall(r":(\w+)", q["sql"]))
        answers[name] = conn.execute(q["sql"], {k: params[k] for k in names}).fetchall()
        assert q["title"] and q["description"], name
    conn.close()
    want = query(full_atlas, "SELECT DISTINCT feature FROM token_scores_view WHERE token_key = 'king' "
                 "AND phase = 'du' AND sign = 1")  # fmt: skip
    assert {r[0] for r in answers["promotes_token"]} == {r[0] for r in want} and want
    assert [r[0] for r in answers["feature"]] == ["L2.res/5"]
    assert (
        len(answers["feature_tokens"])
        == query(full_atlas, "SELECT COUNT(*) FROM token_scores WHERE feature_id = 5")[0][0]
    )
    assert [r[0] for r in answers["top_features"]] == top
    fts = query(full_atlas, "SELECT COUNT(*) FROM labels_fts WHERE labels_fts MATCH 'punctuation'")[0][0]
    assert len(answers["search_labels"]) == min(fts, 200) > 0
    assert len(answers["feature_examples"]) == 1 and answers["virtual_neighbours"] == []
    assert query(full_atlas, "SELECT COUNT(*) FROM neuronpedia_agreement") == [(5,)]
    assert len(answers["neuronpedia_agreement_by_sae"]) == 1
    want = query(full_atlas, "SELECT token_id FROM vocab WHERE instr(key, 'kin') > 0 ORDER BY key != 'kin', "
                 "length(key), token_id")  # fmt: skip
    assert [r[2] for r in answers["search_tokens"]] == [w[0] for w in want] and want
    promoted = query(full_atlas, "SELECT COUNT(*) FROM token_scores WHERE token_id = ? AND phase = 'du' AND sign = 1",
                     (want[0][0],))[0][0]  # fmt: skip
    assert answers["search_tokens"][0][4] == promoted


def test_print_metadata_is_the_metadata(runner: CliRunner, full_atlas: Path) -> None:
    r = runner.invoke(cli, ["serve", str(full_atlas), "--print-metadata"])
    assert r.exit_code == 0, r.output
    with open_atlas(full_atlas) as atlas:
        assert json.loads(r.stdout) == build_metadata(atlas)


# ---------------------------------------------------------------- refusals
def test_serve_refuses_what_the_atlas_library_refuses(
    runner: CliRunner, tmp_path: Path, full_atlas: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = tmp_path / "notes.db"
    text.write_text("not a database")
    r = runner.invoke(cli, ["serve", str(text)])
    assert r.exit_code == 1 and r.output.strip().count("\n") == 0 and "not an SQLite database" in r.output
    # whatever open_atlas refuses (engineer A's foreign schema objects, a newer schema ...) serve refuses
    import atlas.db

    def refuse(path, **kw):
        raise atlas.db.NotAnAtlas(f"{path}: holds a trigger this project did not create")

    monkeypatch.setattr(atlas.db, "open_atlas", refuse)
    r = runner.invoke(cli, ["serve", str(full_atlas)])
    assert r.exit_code == 1 and "holds a trigger this project did not create" in r.output
    monkeypatch.undo()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = runner.invoke(cli, ["serve", str(full_atlas), "--port", str(port)])
    assert r.exit_code == 1 and f"port {port} on 127.0.0.1 is in use" in r.output


def test_serve_refuses_changed_views_and_marks_objects_of_its_own(runner: CliRunner, full_atlas: Path) -> None:
    import sqlite3

    from atlas.datasette_metadata import FOREIGN

    conn = sqlite3.connect(full_atlas)
    conn.execute("CREATE VIEW my_notes AS SELECT 1 AS x")
    conn.commit()
    r = runner.invoke(cli, ["serve", str(full_atlas), "--print-metadata"])
    assert r.exit_code == 0, r.output
    mine = json.loads(r.stdout)["databases"][full_atlas.stem]["tables"]["my_notes"]
    assert mine["description"] == FOREIGN and mine["columns"] == {"x": FOREIGN}
    conn.execute("DROP VIEW features_view")
    conn.execute("CREATE VIEW features_view AS SELECT 'L2.res/0' AS name, 99.0 AS du_top1_z")  # a view that lies
    conn.commit()
    conn.close()
    r = runner.invoke(cli, ["serve", str(full_atlas)])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert "features_view differ from sae-atlas's own" in r.output


# ---------------------------------------------------------------- the real server
@pytest.fixture
def served(full_atlas: Path):
    pytest.importorskip("datasette")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from atlas.cli import cli; cli()", "serve", str(full_atlas), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_DEADLINE_S
    try:
        while True:
            try:
                _get(f"{base}/-/versions.json")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read().decode("utf-8", "replace") if proc.stdout else ""
                    pytest.fail(f"sae-atlas serve did not start (exit {proc.poll()}): {out[-2000:]}")
                time.sleep(0.2)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


def test_datasette_serves_the_atlas_read_only_with_its_metadata(served, full_atlas: Path) -> None:
    base, proc = served
    before = sha256_of(full_atlas)
    db = f"{base}/{full_atlas.stem}"
    home = _get(f"{base}/")
    assert f"sae-atlas: {full_atlas.name}" in home and full_atlas.stem in home
    with open_atlas(full_atlas) as atlas:
        assert _json(f"{base}/-/metadata.json") == build_metadata(atlas)  # Datasette took the atlas's metadata
    # a canned query with a parameter
    hits = _json(f"{db}/promotes_token.json?token=king&_shape=objects")["rows"]
    want = query(full_atlas, "SELECT feature, rank FROM token_scores_view WHERE token_key = 'king' AND phase = 'du' "
                 "AND sign = 1 ORDER BY rank, abs(value) DESC, feature_id")  # fmt: skip
    assert [(h["feature"], h["rank"]) for h in hits] == want and want
    # a feature's row page: the tables that point at it, each link followed
    row = _json(f"{db}/features/5.json?_extras=foreign_key_tables")
    links = {t["other_table"]: t for t in row["foreign_key_tables"] if t["column"] == "feature_id"}
    for table in ("token_scores", "head_scores", "labels", "neuronpedia_agreement", "activation_examples"):
        n = query(full_atlas, f"SELECT COUNT(*) FROM {table} WHERE feature_id = 5")[0][0]
        assert links[table]["count"] == n, table
        followed = _json(f"{base}{links[table]['link'].replace('?', '.json?', 1)}&_size=max&_shape=objects")
        assert len(followed["rows"]) == n and all(r["feature_id"] == 5 for r in followed["rows"])
    assert links["token_scores"]["count"] == 80
    labelled = _json(f"{db}/features.json?feature_id=5&_labels=on&_shape=objects")["rows"][0]
    assert labelled["sae_id"] == {"value": 1, "label": "L2.res"}  # the SAE's name, through label_column
    page = _get(f"{db}/features/5")
    assert "80 rows" in page and "from feature_id in token_scores" in page  # "Links from other tables"
    for html in ("features", "head_scores", "features_view", "neuronpedia_view", "activation_examples_view"):
        assert "<table" in _get(f"{db}/{html}"), html  # every page renders (a custom Pint unit once broke them)
    # search: labels (the FTS Datasette detects on labels) and tokens (vocab_fts, its own FTS table)
    found = _json(f"{db}/labels.json?_search=punctuation&_shape=objects&_size=max")["rows"]
    fts = query(full_atlas, "SELECT rowid FROM labels_fts WHERE labels_fts MATCH 'punctuation' ORDER BY rowid")
    assert sorted(r["label_id"] for r in found) == [r[0] for r in fts] and fts
    tokens = _json(f"{db}/vocab_fts.json?_search=king&_shape=objects&_size=max")["rows"]
    want = query(full_atlas, "SELECT token_id FROM vocab WHERE instr(key, 'king') > 0 ORDER BY token_id")
    assert sorted(t["token_id"] for t in tokens) == [w[0] for w in want] and want
    assert 'name="_search"' in _get(f"{db}/vocab_fts")  # the search box is offered
    found = _json(f"{db}/search_tokens.json?text=King&_shape=objects")["rows"]
    assert [t["token_id"] for t in found][: len(want)] != [] and {t["token_id"] for t in found} == {w[0] for w in want}
    # the file is served as it is: nothing written, nothing beside it
    assert sha256_of(full_atlas) == before
    assert not [p.name for p in full_atlas.parent.iterdir() if p.name.startswith(full_atlas.name + "-")]
    proc.terminate()
    assert proc.wait(timeout=30) in (0, -15)
