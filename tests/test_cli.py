"""`sae-atlas` commands through CliRunner, checked against the atlas file itself."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import atlas.cli as cli_mod
import atlas.db as atlas_db
from atlas.cli import cli
from atlas.read import AtlasReader
from tests.conftest import query, sha256_of


def run(runner: CliRunner, db: Path | None, *args: str, **kw) -> Result:
    argv = [*args] + (["--db", str(db)] if db is not None else [])
    return runner.invoke(cli, argv, **kw)


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    assert result.exception is None
    return result.stdout


def one_line_error(result: Result, exit_code: int = 1) -> str:
    """A failure: exit code, exactly one line on stderr, no traceback, nothing raised out of click."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def feature_id(db: Path, name: str) -> int:
    sae, idx = name.split("/")
    return query(
        db, "SELECT feature_id FROM features JOIN saes USING (sae_id) WHERE name=? AND idx=?", (sae, int(idx))
    )[0][0]


# ---------------------------------------------------------------- help
COMMANDS = ["info", "show", "search", "top", "edges", "sql", "label", "validate", "export", "merge", "migrate", "stats"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_example(runner: CliRunner, command: str) -> None:
    for flag in ("-h", "--help"):
        out = ok(runner.invoke(cli, [command, flag]))
        assert "Example:" in out and f"sae-atlas {command}" in out.split("Example:")[1]


def test_group_help_lists_lazy_commands_without_importing(runner: CliRunner) -> None:
    out = ok(runner.invoke(cli, ["-h"]))
    for name in [*COMMANDS, "build", "browse", "report"]:
        assert f"  {name} " in out
    assert "Example:" in out


# ---------------------------------------------------------------- choosing the atlas
def test_db_from_env_and_options(runner: CliRunner, synthetic_atlas: Path, tmp_path: Path) -> None:
    out = ok(runner.invoke(cli, ["info"], env={"SAE_ATLAS_DB": str(synthetic_atlas)}))
    assert str(synthetic_atlas) in out
    out = ok(runner.invoke(cli, ["--db", str(synthetic_atlas), "info"]))
    assert str(synthetic_atlas) in out
    # the command's own --db wins over the group's and the environment's
    missing = tmp_path / "missing.db"
    r = runner.invoke(
        cli, ["--db", str(synthetic_atlas), "info", "--db", str(missing)], env={"SAE_ATLAS_DB": str(synthetic_atlas)}
    )
    assert "missing.db: no such file" in one_line_error(r)


def test_default_atlas_missing(runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SAE_ATLAS_DB", raising=False)
    monkeypatch.setattr("atlas.bundled.bundled_candidates", lambda: (tmp_path / "atlas.db.example",))
    line = one_line_error(runner.invoke(cli, ["info"]))
    assert "no bundled atlas.db.example" in line


# ---------------------------------------------------------------- bad files, for every command
def _bad_files(tmp_path: Path, good: Path) -> dict[str, tuple[Path, str]]:
    text = tmp_path / "text.db"
    text.write_text("not a database\n" * 20)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE x (y)")
    new = tmp_path / "new.db"
    new.write_bytes(good.read_bytes())
    with sqlite3.connect(new) as c:
        c.execute(f"PRAGMA user_version = {atlas_db.SCHEMA_VERSION + 1}")
    return {
        "missing": (tmp_path / "nope.db", "no such file"),
        "text": (text, "not an SQLite database"),
        "other": (other, "not an atlas"),
        "too_new": (new, "upgrade sae-atlas"),
    }


BAD_FILE_COMMANDS = [
    ["info"], ["show", "L2.res/1"], ["search", "--promotes", "the"], ["top", "du_max"], ["edges", "L2.res/1"],
    ["sql", "SELECT 1"], ["label", "L2.res/1", "hello"], ["label", "--list", "L2.res/1"], ["validate"], ["stats"],
    ["export", "--sae", "L2.res", "OUT"], ["migrate"],
]  # fmt: skip


@pytest.mark.parametrize("kind", ["missing", "text", "other", "too_new"])
def test_bad_files_one_line(runner: CliRunner, synthetic_atlas_master: Path, tmp_path: Path, kind: str) -> None:
    path, phrase = _bad_files(tmp_path, synthetic_atlas_master)[kind]
    before = sha256_of(path) if path.exists() else None
    for argv in BAD_FILE_COMMANDS:
        argv = [str(tmp_path / "out.db") if a == "OUT" else a for a in argv]
        line = one_line_error(run(runner, path, *argv))
        assert phrase in line and line.startswith("Error: "), (argv, line)
        assert (sha256_of(path) if path.exists() else None) == before
    assert not (tmp_path / "out.db").exists()
    # merge reads its inputs the same way
    line = one_line_error(
        runner.invoke(cli, ["merge", str(path), str(synthetic_atlas_master), "-o", str(tmp_path / "m.db")])
    )
    assert phrase in line


# ---------------------------------------------------------------- info
@pytest.mark.parametrize("damage", ["text", "blob"])
@pytest.mark.parametrize("argv", [["info"], ["show", "L2.res/3"]])
def test_bytes_that_are_not_utf8_are_one_line(
    runner: CliRunner, synthetic_atlas: Path, argv: list[str], damage: str
) -> None:
    """A damaged file can hold bytes that are not UTF-8, as TEXT (SQLite's decoder refuses them) or as a
    BLOB where text belongs (Python's does; found by test_damaged_atlas): a one-line error naming it."""
    with sqlite3.connect(synthetic_atlas) as c:
        c.execute("PRAGMA ignore_check_constraints = ON")
        if damage == "text":
            c.execute("UPDATE models SET architecture = CAST(X'80FF' AS TEXT)")
            c.execute("UPDATE vocab SET display = CAST(X'80' AS TEXT)")
        else:
            c.execute("UPDATE atlas_info SET provenance = ?", (b'{"criteria": "\x80"}',))
            c.execute("UPDATE labels SET evidence = ?", (b'{"why": "\x80"}',))
    result = runner.invoke(cli, [*argv, "--db", str(synthetic_atlas)])
    assert result.exit_code == 1, result.output
    line = result.output.strip()
    assert "\n" not in line and "UTF-8" in line and "validate" in line and "unexpected" not in line, line


def test_info(runner: CliRunner, synthetic_atlas: Path) -> None:
    out = ok(run(runner, synthetic_atlas, "info"))
    assert "model synthetic: Synthetic, 8 layers, d_model 64, 4 heads over 2 kv" in out
    assert "L2.res" in out and "L6.res" in out and "resid_post" in out
    n_tok = query(synthetic_atlas, "SELECT COUNT(*) FROM token_scores")[0][0]
    assert f"token_scores {n_tok:,}" in out
    assert "origin  synthetic atlas, generated rather than built from weights (seed 0)" in out
    d = json.loads(ok(run(runner, synthetic_atlas, "info", "--json")))
    assert [s["name"] for s in d["saes"]] == ["L2.res", "L6.res"]
    assert d["counts"]["edges"] == {"rows": query(synthetic_atlas, "SELECT COUNT(*) FROM edges")[0][0], "exact": True}
    assert d["file_bytes"] == synthetic_atlas.stat().st_size
    assert json.loads(ok(run(runner, synthetic_atlas, "info", "--provenance"))) == {"synthetic": {"seed": 0}}


# ---------------------------------------------------------------- show
def test_show_card(runner: CliRunner, synthetic_atlas: Path) -> None:
    fid = feature_id(synthetic_atlas, "L6.res/9")
    out = ok(run(runner, synthetic_atlas, "show", "L6.res/9", "-k", "5"))
    assert out.startswith(f"L6.res/9  (#{fid})  layer 6 resid_post")
    top5 = query(
        synthetic_atlas,
        "SELECT v.display, ts.value FROM token_scores ts JOIN vocab v USING (token_id) "
        "WHERE feature_id=? AND phase='du' AND sign=1 ORDER BY rank LIMIT 6",
        (fid,),
    )
    block = out.split("promotes (decoder -> unembedding, top +)\n")[1].split("\n\n")[0].splitlines()
    assert len(block) == 5
    for line, (token, value) in zip(block, top5, strict=False):
        assert line.split()[0] == token and f"{value:+.4f}" in line and "█" in line
    assert top5[5][0] not in [line.split()[0] for line in block]
    predicts = query(synthetic_atlas, "SELECT predicts_tokens FROM features WHERE feature_id=?", (fid,))[0][0]
    assert f"predicts tokens: {'yes' if predicts else 'no'}" in out
    for section in ("suppresses", "driven by", "heads (role", "qk edges out", "ov edges out", "neighbours out"):
        assert section in out
    by_id = ok(run(runner, synthetic_atlas, "show", f"#{fid}", "-k", "5"))
    assert by_id == out


def test_show_json_is_whole_card(runner: CliRunner, synthetic_atlas: Path) -> None:
    card = json.loads(ok(run(runner, synthetic_atlas, "show", "L2.res/3", "--json")))
    fid = card["feature"]["feature_id"]
    assert card["feature"]["name"] == "L2.res/3"
    assert len(card["promoted"]) == 20 and len(card["inputs_negative"]) == 20
    assert (
        len(card["edges_out"]) == query(synthetic_atlas, "SELECT COUNT(*) FROM edges WHERE src_feature=?", (fid,))[0][0]
    )
    assert (
        len(card["heads"])
        == query(synthetic_atlas, "SELECT COUNT(*) FROM head_scores WHERE feature_id=?", (fid,))[0][0]
    )
    assert [lab["text"] for lab in card["labels"]] == [
        r[0] for r in query(synthetic_atlas, "SELECT text FROM labels WHERE feature_id=?", (fid,))
    ]
    assert (
        card["feature"]["metrics"]["du_top1_z"]
        == query(synthetic_atlas, "SELECT du_top1_z FROM features WHERE feature_id=?", (fid,))[0][0]
    )


@pytest.mark.parametrize(
    "spec, phrase",
    [
        ("L2.res/999", "L2.res has no feature 999 (d_sae = 200)"),
        ("L9.x/1", "no SAE named 'L9.x'"),
        ("banana", "expected SAE/INDEX"),
        ("#123456", "no feature with id 123456"),
    ],
)
def test_show_unknown_feature(runner: CliRunner, synthetic_atlas: Path, spec: str, phrase: str) -> None:
    assert phrase in one_line_error(run(runner, synthetic_atlas, "show", spec))


# ---------------------------------------------------------------- search
def test_search_by_token(runner: CliRunner, synthetic_atlas: Path) -> None:
    rows = json.loads(
        ok(run(runner, synthetic_atlas, "search", "--promotes", "Paris", "--exact", "--limit", "500", "--json"))
    )
    want = query(
        synthetic_atlas,
        "SELECT COUNT(*) FROM token_scores ts JOIN vocab v USING (token_id) WHERE v.key='paris' AND phase='du' AND sign=1",
    )[0][0]
    assert len(rows) == want > 0
    assert {r["token"] for r in rows} <= {"Paris", "␣Paris"}
    assert [r["rank"] for r in rows] == sorted(r["rank"] for r in rows)
    supp = json.loads(ok(run(runner, synthetic_atlas, "search", "--suppresses", "paris", "--json")))
    assert supp and all(r["sign"] == -1 and r["value"] < 0 for r in supp)
    driven = json.loads(
        ok(run(runner, synthetic_atlas, "search", "--driven-by", " paris ", "--sae", "L6.res", "--json"))
    )
    assert driven and all(r["phase"] == "ee" and r["feature"].startswith("L6.res/") for r in driven)
    same = json.loads(
        ok(
            run(
                runner,
                synthetic_atlas,
                "search",
                "--token",
                "paris",
                "--phase",
                "ee",
                "--sign",
                "+1",
                "--sae",
                "L6.res",
                "--json",
            )
        )
    )
    assert same == driven
    top_rank = json.loads(
        ok(run(runner, synthetic_atlas, "search", "--promotes", "paris", "--max-rank", "2", "--json"))
    )
    assert all(r["rank"] <= 2 for r in top_rank) and len(top_rank) < len(rows)


def test_search_partial_exact_and_no_hits(runner: CliRunner, synthetic_atlas: Path) -> None:
    r = run(runner, synthetic_atlas, "search", "--promotes", "xyzzyq")
    assert r.exit_code == 0 and r.stdout == ""
    assert "no token in the vocabulary matches 'xyzzyq' (exactly or in part)" in r.stderr
    # no token is "ari": every hit is a partial match, marked so (tests/test_search.py: both kinds at once)
    rows = json.loads(ok(run(runner, synthetic_atlas, "search", "--promotes", "ari", "--json", "--limit", "1000")))
    assert rows and all("ari" in r["token"].lower() and r["match"] == "partial" for r in rows)
    oracle = query(
        synthetic_atlas,
        "SELECT COUNT(*) FROM token_scores ts JOIN vocab v USING (token_id) "
        "WHERE instr(v.key, 'ari') > 0 AND phase = 'du' AND sign = 1",
    )[0][0]
    assert len(rows) == oracle
    r = run(runner, synthetic_atlas, "search", "--promotes", "ari", "--exact")
    assert r.stdout == "" and "(exactly)" in r.stderr


def test_search_by_label_and_metric(runner: CliRunner, synthetic_atlas: Path) -> None:
    out = ok(run(runner, synthetic_atlas, "search", "--label", "punctuation", "--limit", "500", "--csv"))
    rows = list(csv.DictReader(io.StringIO(out)))
    n = query(synthetic_atlas, "SELECT COUNT(*) FROM labels WHERE text LIKE '%punctuation%'")[0][0]
    assert len(rows) == n > 0 and all("punctuation" in r["label"] for r in rows)
    rows = [
        json.loads(line)
        for line in ok(
            run(
                runner,
                synthetic_atlas,
                "search",
                "--metric",
                "du_top1_z",
                "--min",
                "8",
                "--max",
                "10",
                "--nl",
                "--limit",
                "1000",
            )
        ).splitlines()
    ]
    n = query(synthetic_atlas, "SELECT COUNT(*) FROM features WHERE du_top1_z BETWEEN 8 AND 10")[0][0]
    assert len(rows) == n > 0 and all(8 <= r["du_top1_z"] <= 10 for r in rows)


@pytest.mark.parametrize(
    "argv",
    [[], ["--promotes", "a", "--label", "b"], ["--min", "1"], ["--metric", "du_max", "--suppresses", "x"]],
)
def test_search_usage_errors(runner: CliRunner, synthetic_atlas: Path, argv: list[str]) -> None:
    r = run(runner, synthetic_atlas, "search", *argv)
    assert r.exit_code == 2 and "Traceback" not in r.output


# ---------------------------------------------------------------- top
def test_top(runner: CliRunner, synthetic_atlas: Path) -> None:
    out = ok(run(runner, synthetic_atlas, "top", "du_top1_z", "--limit", "5"))
    lines = out.splitlines()
    assert lines[0].split() == ["rank", "feature", "feature_id", "layer", "site", "du_top1_z"]
    want = query(
        synthetic_atlas, "SELECT feature_id, du_top1_z FROM features ORDER BY du_top1_z DESC, feature_id LIMIT 5"
    )
    assert [int(line.split()[2]) for line in lines[2:]] == [w[0] for w in want]
    assert lines[2].split()[-1] == f"{want[0][1]:.4f}"
    rows = json.loads(ok(run(runner, synthetic_atlas, "top", "du_skew", "--asc", "--layer", "6", "--json")))
    want = query(
        synthetic_atlas,
        "SELECT feature_id FROM features JOIN saes USING (sae_id) WHERE layer=6 ORDER BY du_skew ASC, feature_id LIMIT 20",
    )
    assert [r["feature_id"] for r in rows] == [w[0] for w in want]
    rows = json.loads(
        ok(run(runner, synthetic_atlas, "top", "attn_q_mean", "--sae", "L2.res", "--limit", "3", "--json"))
    )
    assert [r["rank"] for r in rows] == [1, 2, 3] and all(r["feature"].startswith("L2.res/") for r in rows)
    tsv = ok(run(runner, synthetic_atlas, "top", "ee_max", "--limit", "2", "--tsv")).splitlines()
    assert tsv[0].split("\t") == ["rank", "feature", "feature_id", "layer", "site", "ee_max"] and len(tsv) == 3


def test_top_bad_metric(runner: CliRunner, synthetic_atlas: Path) -> None:
    r = run(runner, synthetic_atlas, "top", "drop table")
    assert r.exit_code == 2 and "Invalid value for 'METRIC'" in r.stderr
    assert "no SAE named 'nope'" in one_line_error(run(runner, synthetic_atlas, "top", "du_max", "--sae", "nope"))


# ---------------------------------------------------------------- edges
def test_edges(runner: CliRunner, synthetic_atlas: Path) -> None:
    fid = feature_id(synthetic_atlas, "L2.res/4")
    rows = json.loads(ok(run(runner, synthetic_atlas, "edges", "L2.res/4", "--json")))
    n_out = query(synthetic_atlas, "SELECT COUNT(*) FROM edges WHERE src_feature=?", (fid,))[0][0]
    n_in = query(synthetic_atlas, "SELECT COUNT(*) FROM edges WHERE dst_feature=?", (fid,))[0][0]
    assert [r["direction"] for r in rows].count("out") == n_out
    assert [r["direction"] for r in rows].count("in") == n_in
    assert all(r["src"] == "L2.res/4" for r in rows if r["direction"] == "out")
    qk_in = json.loads(ok(run(runner, synthetic_atlas, "edges", "L2.res/4", "--in", "--kind", "qk", "--json")))
    want = query(synthetic_atlas, "SELECT COUNT(*) FROM edges WHERE dst_feature=? AND kind='qk'", (fid,))[0][0]
    assert len(qk_in) == want and all(r["kind"] == "qk" and r["head"].startswith("L") for r in qk_in)
    cos = json.loads(ok(run(runner, synthetic_atlas, "edges", "L2.res/4", "--out", "--kind", "cosine", "--json")))
    assert len(cos) == 4 and all(r["head"] is None for r in cos)


# ---------------------------------------------------------------- sql
def test_sql_read(runner: CliRunner, synthetic_atlas: Path) -> None:
    rows = json.loads(ok(run(runner, synthetic_atlas, "sql", "SELECT name, d_sae FROM saes ORDER BY name", "--json")))
    assert rows == [{"name": "L2.res", "d_sae": 200}, {"name": "L6.res", "d_sae": 200}]
    out = ok(
        run(
            runner,
            synthetic_atlas,
            "sql",
            "SELECT feature, token FROM token_scores_view WHERE feature = :f AND rank = 0 ORDER BY phase, sign",
            "-p",
            "f",
            "L2.res/1",
            "--csv",
        )
    )
    assert out.splitlines()[0] == "feature,token" and len(out.splitlines()) == 5
    out = ok(run(runner, synthetic_atlas, "sql", "SELECT text FROM labels_fts WHERE labels_fts MATCH 'words' LIMIT 2"))
    assert "synthetic feature" in out


def test_sql_limit_truncates(runner: CliRunner, synthetic_atlas: Path) -> None:
    r = run(runner, synthetic_atlas, "sql", "SELECT feature_id FROM token_scores", "--limit", "7", "--nl")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 7
    assert "showing the first 7 rows" in r.stderr
    r = run(runner, synthetic_atlas, "sql", "SELECT feature_id FROM features", "--limit", "0", "--nl")
    assert len(r.stdout.splitlines()) == 400 and r.stderr == ""


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO labels (feature_id, text, kind, source, created_at) VALUES (1, 'x', 'free', 'user', 'now')",
        "DELETE FROM features",
        "DROP TABLE labels",
        "UPDATE saes SET name = 'x'",
        "CREATE TABLE t (x)",
        "ATTACH DATABASE 'evil.db' AS evil",
        "PRAGMA writable_schema = ON",
        "PRAGMA user_version = 99",
        "PRAGMA journal_mode = WAL",
        "VACUUM",
        "VACUUM INTO 'copy.db'",
        "REINDEX",
        "ANALYZE",
        "INSERT INTO labels_fts (labels_fts) VALUES ('rebuild')",
        "SELECT load_extension('x')",
    ],
)
def test_sql_refuses_writes(
    runner: CliRunner, synthetic_atlas: Path, statement: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    before = sha256_of(synthetic_atlas)
    line = one_line_error(run(runner, synthetic_atlas, "sql", statement))
    assert "refused" in line or "bad SQL" in line
    assert sha256_of(synthetic_atlas) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atlas.db"]  # no evil.db, no copy.db, no journal


@pytest.mark.parametrize(
    "statement, phrase",
    [
        ("SELEC 1", "syntax error"),
        ("SELECT * FROM nope", "no such table"),
        ("SELECT 1; SELECT 2", "one statement"),
        ("", "empty SQL"),
        ("SELECT :x", "binding"),
    ],
)
def test_sql_bad(runner: CliRunner, synthetic_atlas: Path, statement: str, phrase: str) -> None:
    assert phrase in one_line_error(run(runner, synthetic_atlas, "sql", statement))


def test_sql_timeout(runner: CliRunner, synthetic_atlas: Path) -> None:
    forever = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c"
    assert "longer than 0.2 s" in one_line_error(run(runner, synthetic_atlas, "sql", forever, "--timeout", "0.2"))


# ---------------------------------------------------------------- label
def test_label_add_list_delete(runner: CliRunner, synthetic_atlas: Path, own_label_overlays: Path) -> None:
    """A writable atlas of one's own: the label goes into the file, and the output says so."""
    fid = feature_id(synthetic_atlas, "L6.res/11")
    out = ok(run(runner, synthetic_atlas, "label", "L6.res/11", "  capital cities ", "--kind", "semantic"))
    (label_id,) = query(synthetic_atlas, "SELECT label_id FROM labels WHERE feature_id=? AND source='user'", (fid,))[0]
    assert out.strip() == f"label {label_id} added to L6.res/11 in the atlas file {synthetic_atlas}"
    assert query(synthetic_atlas, "SELECT text, kind FROM labels WHERE label_id=?", (label_id,)) == [
        ("capital cities", "semantic")
    ]
    assert list(own_label_overlays.iterdir()) == []  # no overlay was made
    listed = json.loads(ok(run(runner, synthetic_atlas, "label", "--list", "L6.res/11", "--json")))
    assert listed[0]["id"] == label_id and listed[0]["source"] == "user" and listed[0]["stored_in"] == "atlas"
    found = json.loads(ok(run(runner, synthetic_atlas, "search", "--label", "capital", "--json")))
    assert [r["feature"] for r in found] == ["L6.res/11"]
    assert "user" in ok(run(runner, synthetic_atlas, "show", "L6.res/11")).split("\n")[1]
    out = ok(run(runner, synthetic_atlas, "label", "--delete", str(label_id)))
    assert out.strip() == f"deleted label {label_id} of L6.res/11 from the atlas file: capital cities"
    assert query(synthetic_atlas, "SELECT COUNT(*) FROM labels WHERE label_id=?", (label_id,)) == [(0,)]
    heuristic = query(synthetic_atlas, "SELECT label_id FROM labels WHERE source='heuristic' LIMIT 1")[0][0]
    assert "only user labels" in one_line_error(run(runner, synthetic_atlas, "label", "--delete", str(heuristic)))
    assert "no label with id 99999" in one_line_error(run(runner, synthetic_atlas, "label", "--delete", "99999"))


def test_label_read_only_file_goes_to_the_overlay(
    runner: CliRunner, synthetic_atlas: Path, own_label_overlays: Path
) -> None:
    before = sha256_of(synthetic_atlas)
    os.chmod(synthetic_atlas, 0o444)
    try:
        out = ok(run(runner, synthetic_atlas, "label", "L2.res/0", "hello"))
        assert "in your label overlay" in out and "(the file is read-only)" in out
        listed = json.loads(ok(run(runner, synthetic_atlas, "label", "--list", "L2.res/0", "--json")))
        assert [(r["text"], r["stored_in"]) for r in listed if r["source"] == "user"] == [("hello", "overlay")]
    finally:
        os.chmod(synthetic_atlas, 0o644)
    assert sha256_of(synthetic_atlas) == before
    assert [p.suffix for p in own_label_overlays.iterdir()] == [".db"]


def test_label_older_schema_goes_to_the_overlay_and_survives_migration(
    runner: CliRunner, synthetic_atlas: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nxt = atlas_db.SCHEMA_VERSION + 1
    monkeypatch.setattr(atlas_db, "SCHEMA_VERSION", nxt)
    monkeypatch.setattr("atlas.labels.SCHEMA_VERSION", nxt)
    monkeypatch.setattr(atlas_db, "MIGRATIONS", [*atlas_db.MIGRATIONS, (nxt, "next", "CREATE TABLE v_marker (x);")])
    before = sha256_of(synthetic_atlas)
    out = ok(run(runner, synthetic_atlas, "label", "L2.res/0", "hi"))
    assert "in your label overlay" in out and "sae-atlas migrate" in out
    assert sha256_of(synthetic_atlas) == before
    out = ok(run(runner, synthetic_atlas, "migrate"))
    assert f"migrated to schema version {nxt}: applied {nxt} (next)" in out
    assert query(synthetic_atlas, "PRAGMA user_version") == [(nxt,)]
    assert f"already at schema version {nxt}" in ok(run(runner, synthetic_atlas, "migrate"))
    assert "in the atlas file" in ok(run(runner, synthetic_atlas, "label", "L2.res/0", "mine now"))
    listed = json.loads(ok(run(runner, synthetic_atlas, "label", "--list", "L2.res/0", "--json")))
    assert [(r["text"], r["stored_in"]) for r in listed if r["source"] == "user"] == [
        ("hi", "overlay"),
        ("mine now", "atlas"),
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["label"],
        ["label", "L2.res/0"],
        ["label", "L2.res/0", "   "],
        ["label", "--list"],
        ["label", "--delete", "1", "L2.res/0"],
        ["label", "--where", "L2.res/0"],
        ["label", "L2.res/0", "x", "--kind", "bogus"],
    ],
)
def test_label_usage(runner: CliRunner, synthetic_atlas: Path, argv: list[str]) -> None:
    before = sha256_of(synthetic_atlas)
    r = run(runner, synthetic_atlas, *argv)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert sha256_of(synthetic_atlas) == before


# ---------------------------------------------------------------- validate, export, merge, stats
def test_validate_cli(runner: CliRunner, synthetic_atlas: Path) -> None:
    out = ok(run(runner, synthetic_atlas, "validate"))
    assert out.strip().endswith(": valid") and "FAIL" not in out
    with sqlite3.connect(synthetic_atlas) as c:
        c.execute("UPDATE saes SET d_sae = 5 WHERE name = 'L6.res'")
    r = run(runner, synthetic_atlas, "validate")
    assert r.exit_code == 1 and "FAIL  features match saes.d_sae: L6.res: d_sae 5 but 200 features" in r.stdout
    assert "INVALID (1 failed check)" in r.stdout
    d = json.loads(run(runner, synthetic_atlas, "validate", "--json").stdout)
    assert d["ok"] is False and [c["name"] for c in d["checks"] if not c["ok"]] == ["features match saes.d_sae"]


def test_export_and_merge_cli(runner: CliRunner, synthetic_atlas: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    assert "wrote" in ok(run(runner, synthetic_atlas, "export", "--sae", "L2.res", str(a)))
    ok(run(runner, synthetic_atlas, "export", "--sae", "L6.res", str(b)))
    assert "already exists" in one_line_error(run(runner, synthetic_atlas, "export", "--sae", "L6.res", str(b)))
    ok(run(runner, synthetic_atlas, "export", "--sae", "L6.res", str(b), "--force"))
    assert query(a, "SELECT name FROM saes") == [("L2.res",)]
    # the two halves share L2.res <-> L6.res edges only in the original; merging brings the features back
    m = tmp_path / "m.db"
    out = ok(runner.invoke(cli, ["merge", str(a), str(b), "-o", str(m)]))
    assert "2 SAEs, 400 features (added L6.res)" in out
    assert query(m, "SELECT COUNT(*) FROM features") == [(400,)]
    assert ok(run(runner, m, "validate")).strip().endswith("valid")
    with sqlite3.connect(b) as c:
        c.execute("UPDATE models SET d_model = 65")
    line = one_line_error(runner.invoke(cli, ["merge", str(a), str(b), "-o", str(tmp_path / "m2.db")]))
    assert "differs in d_model" in line and not (tmp_path / "m2.db").exists()
    assert runner.invoke(cli, ["merge", str(a), "-o", str(tmp_path / "m3.db")]).exit_code == 2


def test_stats_cli(runner: CliRunner, synthetic_atlas: Path) -> None:
    rows = json.loads(ok(run(runner, synthetic_atlas, "stats", "--json")))
    want = query(synthetic_atlas, "SELECT name, frac_predicts_tokens, attn_k_mean FROM sae_summary ORDER BY layer")
    assert [(r["sae"], r["predicts_tokens"], r["attn_k_mean"]) for r in rows] == want
    sem = query(
        synthetic_atlas,
        "SELECT COUNT(DISTINCT feature_id) FROM labels JOIN features USING (feature_id) JOIN saes USING (sae_id) "
        "WHERE name='L2.res' AND kind='semantic'",
    )[0][0]
    assert rows[0]["semantic"] == sem > 0


# ---------------------------------------------------------------- lazy commands, unexpected errors
def test_lazy_command_missing_module(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        cli_mod.LAZY_COMMANDS,
        "build",
        ("no_such_pkg_xyz.cli", "build", "Build.", "the build extra: pip install 'sae-atlas[build]'"),
    )
    line = one_line_error(runner.invoke(cli, ["build", "--anything", "x"]))
    assert line == "Error: sae-atlas build is not available in this installation (no_such_pkg_xyz.cli is missing)"


def test_lazy_command_missing_dependency(runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "fake_builders_cli.py").write_text("import torch_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(
        cli_mod.LAZY_COMMANDS,
        "build",
        ("fake_builders_cli", "build", "Build.", "the build extra: pip install 'sae-atlas[build]'"),
    )
    line = one_line_error(runner.invoke(cli, ["build"]))
    assert line.startswith("Error: sae-atlas build needs the build extra: pip install 'sae-atlas[build]'")
    assert "torch_that_is_not_installed" in line
    sys.modules.pop("fake_builders_cli", None)


def test_lazy_command_runs_when_present(runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "fake_report_mod.py").write_text(
        "import click\n@click.command()\n@click.argument('x')\ndef report(x):\n    click.echo('report ' + x)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli_mod.LAZY_COMMANDS, "report", ("fake_report_mod", "report", "Report.", "x"))
    assert ok(runner.invoke(cli, ["report", "hello"])).strip() == "report hello"
    sys.modules.pop("fake_report_mod", None)


def test_unexpected_error_is_one_line(
    runner: CliRunner, synthetic_atlas: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self, *a, **k):
        raise ZeroDivisionError("something deep\nwent wrong")

    monkeypatch.setattr(AtlasReader, "card", broken)
    monkeypatch.delenv("SAE_ATLAS_DEBUG", raising=False)
    line = one_line_error(run(runner, synthetic_atlas, "show", "L2.res/0"))
    assert (
        line
        == "Error: unexpected error: ZeroDivisionError: something deep went wrong (set SAE_ATLAS_DEBUG=1 for a traceback)"
    )
    r = runner.invoke(cli, ["show", "L2.res/0", "--db", str(synthetic_atlas)], env={"SAE_ATLAS_DEBUG": "1"})
    assert isinstance(r.exception, ZeroDivisionError)


def test_version(runner: CliRunner) -> None:
    import atlas

    assert ok(runner.invoke(cli, ["--version"])).strip() == f"sae-atlas, version {atlas.__version__}"


def test_sql_odd_values(runner: CliRunner, synthetic_atlas: Path) -> None:
    rows = json.loads(
        ok(run(runner, synthetic_atlas, "sql", "SELECT zeroblob(2) AS b, 1e999 AS big, NULL AS n", "--json"))
    )
    assert rows == [{"b": "x'0000'", "big": "inf", "n": None}]
    table = ok(run(runner, synthetic_atlas, "sql", "SELECT 'a' || char(10) || 'b' AS t, 0.000012 AS tiny"))
    assert table.splitlines()[2].split() == ["a↵b", "1.200e-05"]


def test_show_edges_per_kind(runner: CliRunner, synthetic_atlas: Path) -> None:
    fid = feature_id(synthetic_atlas, "L2.res/8")
    out = ok(run(runner, synthetic_atlas, "show", "L2.res/8", "--edges", "1"))
    for kind, title in (("qk", "qk edges out"), ("ov", "ov edges out"), ("cosine", "neighbours out")):
        block = out.split(title + "\n")[1].split("\n\n")[0].splitlines()
        (best,) = query(
            synthetic_atlas, "SELECT MAX(ABS(score)) FROM edges WHERE src_feature=? AND kind=?", (fid, kind)
        )[0]
        assert len(block) == 1 and f"{best:+9.4f}" in block[0]
